//! A registry shard: topic → subscribers, for the topics that hash to it. It is also where the
//! broker hears which topics this node listens to: a topic's first subscriber and its last
//! leaving (by unsubscribe or by dying) are told to the broker from here, in order.

use std::collections::HashMap;
use std::sync::Arc;

use actix::{Actor, Context, Handler, Message, Recipient};

use super::{Broadcast, Broker, Deliver, Event, InterestTaken, SubscriberId};

/// One shard of the topic registry; owns the subscriber sets of its topics.
pub struct RegistryShard {
    topics: HashMap<String, HashMap<SubscriberId, Recipient<Deliver>>>,
    broker: Arc<dyn Broker>,
}

impl RegistryShard {
    /// An empty shard that tells `broker` when its topics gain or lose this node's interest.
    pub(super) fn new(broker: Arc<dyn Broker>) -> Self {
        RegistryShard { topics: HashMap::new(), broker }
    }

    /// Forgets a topic that has no subscribers left, and tells the broker.
    fn drop_if_empty(&mut self, topic: &str) {
        if self.topics.get(topic).is_some_and(HashMap::is_empty) {
            self.topics.remove(topic);
            // Nothing waits for an unsubscribe, so the broker's acknowledgement is not awaited.
            drop(self.broker.interest(topic, false));
        }
    }
}

impl Actor for RegistryShard {
    type Context = Context<Self>;
}

/// Resolves to the broker's acknowledgement when the topic is new to this node.
#[derive(Message)]
#[rtype(result = "Option<InterestTaken>")]
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

/// Hands every live subscriber of the shard's topics that start with `prefix` an
/// [`Event::Resync`] on its topic.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Resync {
    pub prefix: &'static str,
}

#[derive(Message)]
#[rtype(result = "usize")]
pub(super) struct SubscriberCount {
    pub topic: String,
}

/// The shard's topics that start with `prefix` and sort after `after`, the first `limit` of
/// them in order, each with its live subscriber count.
#[derive(Message)]
#[rtype(result = "Vec<(String, usize)>")]
pub(super) struct TopicPage {
    pub prefix: String,
    pub after: Option<String>,
    pub limit: usize,
    /// Families left out of the page (topics starting with any of these).
    pub hidden: &'static [&'static str],
}

impl Handler<TopicPage> for RegistryShard {
    type Result = Vec<(String, usize)>;
    fn handle(&mut self, msg: TopicPage, _: &mut Context<Self>) -> Vec<(String, usize)> {
        // A scan, not an index: this serves an operator's page, never a client's request.
        let mut page: Vec<(String, usize)> = self
            .topics
            .iter()
            .filter(|(topic, _)| {
                topic.starts_with(&msg.prefix)
                    && msg.after.as_ref().is_none_or(|a| topic.as_str() > a.as_str())
                    && !msg.hidden.iter().any(|h| topic.starts_with(h))
            })
            .map(|(topic, subscribers)| (topic.clone(), subscribers.values().filter(|r| r.connected()).count()))
            .collect();
        page.sort_unstable();
        page.truncate(msg.limit);
        page
    }
}

/// The shard's topics and live subscriptions, counted per topic family (the text up to and
/// including the first `:`; the whole topic when it has none).
#[derive(Message)]
#[rtype(result = "Vec<(String, usize, usize)>")]
pub(super) struct Census;

impl Handler<Census> for RegistryShard {
    type Result = Vec<(String, usize, usize)>;
    fn handle(&mut self, _: Census, _: &mut Context<Self>) -> Vec<(String, usize, usize)> {
        let mut families: HashMap<&str, (usize, usize)> = HashMap::new();
        for (topic, subscribers) in &self.topics {
            let family = topic.find(':').map_or(topic.as_str(), |colon| &topic[..=colon]);
            let counts = families.entry(family).or_default();
            counts.0 += 1;
            counts.1 += subscribers.values().filter(|r| r.connected()).count();
        }
        families
            .into_iter()
            .map(|(family, (topics, subscriptions))| (family.to_owned(), topics, subscriptions))
            .collect()
    }
}

impl Handler<Subscribe> for RegistryShard {
    type Result = Option<InterestTaken>;
    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) -> Option<InterestTaken> {
        let new_topic = !self.topics.contains_key(&msg.topic);
        let interest = new_topic.then(|| self.broker.interest(&msg.topic, true));
        self.topics.entry(msg.topic).or_default().insert(msg.subscriber, msg.recipient);
        interest
    }
}

impl Handler<Unsubscribe> for RegistryShard {
    type Result = ();
    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        if let Some(subscribers) = self.topics.get_mut(&msg.topic) {
            subscribers.remove(&msg.subscriber);
            self.drop_if_empty(&msg.topic);
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
        self.drop_if_empty(&msg.broadcast.topic);
    }
}

impl Handler<SubscriberCount> for RegistryShard {
    type Result = usize;
    fn handle(&mut self, msg: SubscriberCount, _: &mut Context<Self>) -> usize {
        self.topics.get(&msg.topic).map_or(0, |s| s.values().filter(|r| r.connected()).count())
    }
}

impl Handler<Resync> for RegistryShard {
    type Result = ();
    fn handle(&mut self, msg: Resync, _: &mut Context<Self>) {
        // A scan: it runs once per broker interruption, not per broadcast.
        for (topic, subscribers) in self.topics.iter().filter(|(topic, _)| topic.starts_with(msg.prefix)) {
            let broadcast = Broadcast::new(topic.as_str(), Event::Resync);
            for recipient in subscribers.values().filter(|r| r.connected()) {
                recipient.do_send(Deliver(Arc::clone(&broadcast)));
            }
        }
    }
}
