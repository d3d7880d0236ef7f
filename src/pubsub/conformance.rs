//! The contract every multi-node [`Broker`] keeps, as one async check that takes a factory:
//! the in-process [`MemoryCluster`](super::MemoryCluster) runs it in this crate's tests, and a
//! Redis or NATS broker runs the same function against its own server. Each step asserts what
//! the channels rely on when their subscribers sit on different nodes.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix::{Actor, Addr, Context, Handler};
use futures_util::future::BoxFuture;

use super::{Broadcast, Broker, Deliver, Event, Occupancy, PubSub};
use crate::pb;
use crate::protocol::Payload;

/// Builds a broker for the node called `name`; every broker one factory builds must reach the
/// others (they are nodes of one cluster).
pub type BrokerFactory = dyn Fn(&str) -> Arc<dyn Broker>;

/// How long a broadcast may take to cross; generous, since the check only waits for what must
/// arrive and never asserts a duration.
const PATIENCE: Duration = Duration::from_secs(10);

/// Records what one subscriber is delivered, as `topic event-debug` lines.
struct Probe(Arc<Mutex<Vec<String>>>);

impl Actor for Probe {
    type Context = Context<Self>;
}

impl Handler<Deliver> for Probe {
    type Result = ();
    fn handle(&mut self, Deliver(broadcast): Deliver, _: &mut Context<Self>) {
        let line = format!("{} {:?}", broadcast.topic, broadcast.event);
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push(line);
    }
}

/// A subscriber and what it has seen.
struct Seen {
    probe: Addr<Probe>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Seen {
    fn start() -> Self {
        let lines = Arc::new(Mutex::new(Vec::new()));
        Seen { probe: Probe(Arc::clone(&lines)).start(), lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Waits until `n` lines arrived (false if they did not within [`PATIENCE`]).
    async fn count(&self, n: usize) -> bool {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while tokio::time::Instant::now() < deadline {
            if self.lines().len() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    /// Waits until a broadcast named `event` arrived (false if it did not within [`PATIENCE`]).
    async fn heard(&self, event: &str) -> bool {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while tokio::time::Instant::now() < deadline {
            if self.has(event) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    /// Whether a broadcast named `event` arrived.
    fn has(&self, event: &str) -> bool {
        let needle = format!("event: {event:?}");
        self.lines().iter().any(|l| l.contains(&needle))
    }
}

/// One event of every kind a node sends another.
fn every_kind() -> Vec<Event> {
    let message = pb::Message { id: "m-conformance".into(), payload: vec![0, 1, 255], ..Default::default() };
    vec![
        Event::Message { offset: 41, message },
        Event::Receipt(pb::MessagePeerAckSignal { message_id: "m-conformance".into(), ..Default::default() }),
        Event::Signal(pb::Signal { id: "s-conformance".into(), status: 1, ..Default::default() }),
        Event::PresenceDiff {
            diff: Payload::json(&serde_json::json!({"joins": {}, "leaves": {"bob": {"metas": []}}})),
            occupancy: Occupancy { was_occupied: true, occupied: false, at: 1_764_000_000_000 },
        },
        Event::raw("shout", Payload::json(&serde_json::json!({"body": "hi"}))),
        Event::raw("blob", Payload::Binary(bytes::Bytes::from_static(&[9, 0, 9]))),
    ]
}

/// Waits until both nodes' brokers report themselves connected (false if not within
/// [`PATIENCE`]): a networked broker connects in the background after start.
async fn connected(a: &PubSub, b: &PubSub) -> bool {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < deadline {
        if a.broker_connected() && b.broker_connected() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// Runs the whole contract against the brokers `factory` builds. Panics on the first breach.
pub async fn check_broker(factory: &BrokerFactory) {
    let a = PubSub::start(1, factory("conformance-a"));
    let b = PubSub::start(2, factory("conformance-b"));
    assert_ne!(a.node_id(), b.node_id(), "two nodes never share an id");
    assert!(connected(&a, &b).await, "both brokers connect once started");
    let topic = "room:conformance";
    let (here, there) = (Seen::start(), Seen::start());
    a.subscribe(topic, 1, here.probe.clone().recipient()).await.expect("subscribes on a");
    b.subscribe(topic, 1, there.probe.clone().recipient()).await.expect("subscribes on b");

    // Every kind of event crosses intact and in the order one node published it; the
    // publisher's own subscriber gets each once (an echo from the broker is not a second copy).
    let sent: Vec<String> = every_kind()
        .into_iter()
        .map(|event| {
            let broadcast = Broadcast::new(topic, event);
            let line = format!("{} {:?}", broadcast.topic, broadcast.event);
            a.publish(broadcast, None);
            line
        })
        .collect();
    assert!(there.count(sent.len()).await, "b got {:?} of {sent:?}", there.lines());
    assert_eq!(there.lines(), sent, "each event crosses once, intact, in publish order");
    // A marker through b's node shows a's echoes, if any, have come back by now.
    b.broadcast(topic, "marker", Payload::empty());
    assert!(here.count(sent.len() + 1).await, "a's subscriber hears b: {:?}", here.lines());
    let on_a = here.lines();
    assert_eq!(on_a[..sent.len()], sent[..], "the publisher's node delivers locally, once");
    assert_eq!(on_a.len(), sent.len() + 1, "no echo of a's own broadcasts: {on_a:?}");

    // Exclusion names a subscriber of the publishing node; other nodes' subscribers still get it.
    a.broadcast_from(1, topic, "from-a", Payload::empty());
    assert!(there.heard("from-a").await, "an exclusion on a does not reach b");

    // Interest follows subscriptions: once b has no subscriber left, a's broadcasts stop
    // reaching it; a new subscriber gets what is published after its subscribe resolved.
    b.unsubscribe(topic, 1);
    a.broadcast(topic, "unheard", Payload::empty());
    let late = Seen::start();
    b.subscribe(topic, 2, late.probe.clone().recipient()).await.expect("subscribes again");
    a.broadcast(topic, "heard", Payload::empty());
    assert!(late.heard("heard").await, "a subscriber that came back hears new broadcasts");
    // "unheard" was published before "heard" on the same topic by the same node, so had it
    // reached b it would have arrived first; the unsubscribed probe must not have it.
    assert!(!there.has("unheard"), "an unsubscribed probe heard: {:?}", there.lines());

    // A topic nobody on b listens to is not delivered there.
    a.broadcast("room:conformance-elsewhere", "elsewhere", Payload::empty());
    a.broadcast(topic, "after-elsewhere", Payload::empty());
    assert!(late.heard("after-elsewhere").await);
    assert!(!late.has("elsewhere") && !there.has("elsewhere"), "b heard a topic it has no subscriber on");

    // Any topic string crosses, and only to its own subscribers: a broker's channel or subject
    // names must not let separators, spaces or wildcards in a topic reach other topics.
    let (odd, plain) = ("room:a b.c*>/ünï", "room:a b");
    let (odd_there, plain_there) = (Seen::start(), Seen::start());
    b.subscribe(odd, 3, odd_there.probe.clone().recipient()).await.expect("subscribes to an odd topic");
    b.subscribe(plain, 4, plain_there.probe.clone().recipient()).await.expect("subscribes to its prefix");
    a.broadcast(odd, "odd", Payload::empty());
    a.broadcast(plain, "plain", Payload::empty());
    assert!(odd_there.heard("odd").await && plain_there.heard("plain").await, "odd topics cross");
    assert_eq!((odd_there.lines().len(), plain_there.lines().len()), (1, 1), "each topic hears only itself");
    a.stop();
    b.stop();
}

/// Cuts the connections of the brokers under test (say, `CLIENT KILL` on Redis).
pub type Cut = dyn Fn() -> BoxFuture<'static, ()>;

/// The reconnection contract, for a broker whose server connection a test can cut: after
/// `cut`, the broker reconnects by itself and re-subscribes the topics its node listens to, so
/// broadcasts reach that node again without anyone subscribing anew. Panics on a breach.
pub async fn check_reconnects(factory: &BrokerFactory, cut: &Cut) {
    let a = PubSub::start(1, factory("reconnect-a"));
    let b = PubSub::start(1, factory("reconnect-b"));
    assert!(connected(&a, &b).await, "both brokers connect once started");
    let topic = "room:reconnect";
    let there = Seen::start();
    b.subscribe(topic, 1, there.probe.clone().recipient()).await.expect("subscribes on b");
    a.broadcast(topic, "before", Payload::empty());
    assert!(there.heard("before").await, "delivery works before the cut");

    cut().await;
    // What is published while the connection is down is lost (pub/sub keeps nothing), so a
    // publishes until one arrives.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !there.has("after") && tokio::time::Instant::now() < deadline {
        a.broadcast(topic, "after", Payload::empty());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(there.has("after"), "delivery resumes after a reconnect: {:?}", there.lines());
    assert!(connected(&a, &b).await, "both brokers report themselves connected again");
    a.stop();
    b.stop();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::MemoryCluster;

    #[actix::test]
    async fn the_in_process_cluster_keeps_the_contract() {
        let cluster = MemoryCluster::start().expect("the hub starts");
        let brokers = cluster.clone();
        check_broker(&move |node| brokers.broker(node) as Arc<dyn Broker>).await;
        cluster.stop();
    }
}
