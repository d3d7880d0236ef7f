//! An in-process cluster: several nodes of one process joined by a hub actor, for tests of
//! multi-node behaviour and as the broker the [`conformance`](super::conformance) check runs
//! on. It does what a Redis or NATS broker does, minus the network: it carries a node's encoded
//! broadcasts only to the nodes that declared interest in the topic, and like Redis's pub/sub it
//! echoes a publisher's own broadcasts back to it, which the node's [`Inbound`] drops.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use actix::{Actor, Addr, Context, Handler, Message};
use tokio::sync::oneshot;

use super::{Broadcast, Broker, Inbound, InterestTaken, NodeId};

/// A handle to one in-process cluster; every broker it makes reaches the others.
#[derive(Clone)]
pub struct MemoryCluster {
    hub: Addr<Hub>,
    system: actix::System,
}

impl MemoryCluster {
    /// Starts the hub on a thread of its own, so nodes running on other threads (each server
    /// with its own actix system) can share it; it runs until [`MemoryCluster::stop`].
    pub fn start() -> std::io::Result<Self> {
        let (started, hub) = std::sync::mpsc::channel();
        std::thread::Builder::new().name("memory-cluster".into()).spawn(move || {
            let runner = actix::System::new();
            runner.block_on(async {
                let _ = started.send((Hub::default().start(), actix::System::current()));
            });
            let _ = runner.run();
        })?;
        let (hub, system) = hub.recv().map_err(std::io::Error::other)?;
        Ok(MemoryCluster { hub, system })
    }

    /// Stops the hub's thread; brokers made by this cluster carry nothing afterwards.
    pub fn stop(&self) {
        self.system.stop();
    }

    /// A broker for a new node of this cluster, called `node`.
    pub fn broker(&self, node: &str) -> Arc<MemoryBroker> {
        Arc::new(MemoryBroker { node: node.to_owned(), hub: self.hub.clone(), inbound: OnceLock::new() })
    }
}

/// One node's broker in a [`MemoryCluster`].
pub struct MemoryBroker {
    node: String,
    hub: Addr<Hub>,
    /// Set once, at start; until then the node has no id and nothing to send.
    inbound: OnceLock<Inbound>,
}

impl Broker for MemoryBroker {
    fn node(&self) -> &str {
        &self.node
    }

    fn start(&self, inbound: Inbound) {
        if self.inbound.set(inbound.clone()).is_ok() {
            self.hub.do_send(Join(inbound));
        }
    }

    fn interest(&self, topic: &str, interested: bool) -> InterestTaken {
        let Some(inbound) = self.inbound.get() else { return Box::pin(std::future::ready(())) };
        let (ack, taken) = oneshot::channel();
        self.hub.do_send(Interest { node: inbound.node_id().clone(), topic: topic.to_owned(), interested, ack });
        Box::pin(async move {
            let _ = taken.await;
        })
    }

    fn publish(&self, broadcast: &Arc<Broadcast>) {
        if let Some(inbound) = self.inbound.get() {
            self.hub.do_send(Publish { topic: broadcast.topic.clone(), bytes: inbound.encode(broadcast) });
        }
    }
}

/// The hub: every member node and the topics each listens to.
#[derive(Default)]
struct Hub {
    members: HashMap<NodeId, Member>,
}

struct Member {
    inbound: Inbound,
    topics: HashSet<String>,
}

impl Actor for Hub {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "()")]
struct Join(Inbound);

#[derive(Message)]
#[rtype(result = "()")]
struct Interest {
    node: NodeId,
    topic: String,
    interested: bool,
    ack: oneshot::Sender<()>,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Publish {
    topic: String,
    bytes: Vec<u8>,
}

impl Handler<Join> for Hub {
    type Result = ();
    fn handle(&mut self, Join(inbound): Join, _: &mut Context<Self>) {
        let node = inbound.node_id().clone();
        self.members.insert(node, Member { inbound, topics: HashSet::new() });
    }
}

impl Handler<Interest> for Hub {
    type Result = ();
    fn handle(&mut self, msg: Interest, _: &mut Context<Self>) {
        if let Some(member) = self.members.get_mut(&msg.node) {
            if msg.interested {
                member.topics.insert(msg.topic);
            } else {
                member.topics.remove(&msg.topic);
            }
        }
        let _ = msg.ack.send(());
    }
}

impl Handler<Publish> for Hub {
    type Result = ();
    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) {
        for member in self.members.values().filter(|m| m.topics.contains(&msg.topic)) {
            if let Err(e) = member.inbound.deliver(&msg.bytes) {
                tracing::warn!(error = %e, node = %member.inbound.node_id(), "node broadcast refused");
            }
        }
    }
}
