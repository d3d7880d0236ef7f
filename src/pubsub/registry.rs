//! A registry shard: topic → subscribers, for the topics that hash to it.

use std::collections::HashMap;
use std::sync::Arc;

use actix::{Actor, Context, Handler, Message, Recipient};

use super::{Broadcast, Deliver, SubscriberId};

/// One shard of the topic registry; owns the subscriber sets of its topics.
#[derive(Default)]
pub struct RegistryShard {
    topics: HashMap<String, HashMap<SubscriberId, Recipient<Deliver>>>,
}

impl Actor for RegistryShard {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Subscribe {
    pub topic: String,
    pub subscriber: SubscriberId,
    pub recipient: Recipient<Deliver>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Unsubscribe {
    pub topic: String,
    pub subscriber: SubscriberId,
}

#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Publish {
    pub broadcast: Arc<Broadcast>,
    pub exclude: Option<SubscriberId>,
}

#[derive(Message)]
#[rtype(result = "usize")]
pub(super) struct SubscriberCount {
    pub topic: String,
}

impl Handler<Subscribe> for RegistryShard {
    type Result = ();
    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) {
        self.topics.entry(msg.topic).or_default().insert(msg.subscriber, msg.recipient);
    }
}

impl Handler<Unsubscribe> for RegistryShard {
    type Result = ();
    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        if let Some(subscribers) = self.topics.get_mut(&msg.topic) {
            subscribers.remove(&msg.subscriber);
            if subscribers.is_empty() {
                self.topics.remove(&msg.topic);
            }
        }
    }
}

impl Handler<Publish> for RegistryShard {
    type Result = ();
    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) {
        let Some(subscribers) = self.topics.get_mut(&msg.broadcast.topic) else { return };
        // A socket whose actor stopped without unsubscribing (it crashed) is dropped here, so
        // every broadcast reaches each live subscriber exactly once and dead ones cost nothing.
        subscribers.retain(|id, recipient| {
            if !recipient.connected() {
                return false;
            }
            if Some(*id) != msg.exclude {
                recipient.do_send(Deliver(Arc::clone(&msg.broadcast)));
            }
            true
        });
        if subscribers.is_empty() {
            self.topics.remove(&msg.broadcast.topic);
        }
    }
}

impl Handler<SubscriberCount> for RegistryShard {
    type Result = usize;
    fn handle(&mut self, msg: SubscriberCount, _: &mut Context<Self>) -> usize {
        self.topics.get(&msg.topic).map_or(0, |s| s.values().filter(|r| r.connected()).count())
    }
}
