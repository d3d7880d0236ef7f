//! Publish/subscribe: the topic registry that fans broadcasts out to local sockets, the
//! [`Broker`] seam that carries broadcasts to other nodes, and the typed [`Event`] a broadcast
//! carries (with its node-to-node encoding, in [`event`]).
//!
//! Local fan-out always stays local (Phoenix's fastlane: a broadcast is encoded once per
//! serializer and the same bytes go to every subscriber). A [`Broker`] only moves broadcasts
//! between nodes; [`LocalBroker`] is the single-node implementation and a Redis or NATS one plugs
//! in behind the same trait. The registry tells the broker which topics this node listens to
//! (a topic's first subscriber and its last), and the broker hands what other nodes send to
//! [`Inbound`], which drops this node's own echoes and fans the rest out locally.
//!
//! Pub/sub keeps nothing for later, so a broker that loses its server loses what was sent
//! meanwhile. The messages among it are in the database, and the inboxes on `user:` topics
//! fill such losses from there: a broker whose connection comes back has this node's inboxes
//! re-read ([`Inbound::resync`]), and when this node's own broadcasts may have been lost (its
//! outbox dropped some, or its connection broke with some in flight) it publishes a notice on
//! [`topic::RESYNC`] that makes every other node do the same.
//! [`MemoryCluster`] joins nodes of one process, [`RedisBroker`] and [`NatsBroker`] join nodes
//! over a server (chosen from the `[cluster]` settings in [`cluster`]), and [`conformance`] is
//! the contract a broker keeps, as a check over a factory. Node and connection ids ([`NodeId`], [`ConnectionId`])
//! stay unique across nodes and restarts, and a networked broker claims its node's name
//! ([`Broker::claim`]) so that no two live nodes of one cluster share it.

pub mod cluster;
pub mod conformance;
pub mod event;
mod ids;
mod memory;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "redis")]
mod redis;
mod registry;
#[cfg(any(feature = "redis", feature = "nats"))]
mod remote;
pub mod topic;

use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, OnceLock};

use actix::{Actor, Addr, ArbiterHandle, MailboxError, Message, Recipient};
use futures_util::future::BoxFuture;

use crate::protocol::{Outgoing, Payload, Serializer, WireFrame};
pub use cluster::{BrokerError, ClusterConfig};
pub use event::{Event, EventDecodeError, Occupancy};
pub use ids::{ConnectionId, NodeId};
pub use memory::{MemoryBroker, MemoryCluster};
#[cfg(feature = "nats")]
pub use nats::NatsBroker;
#[cfg(feature = "redis")]
pub use redis::RedisBroker;
pub use registry::RegistryShard;
use registry::{Census, Publish, Resync, Subscribe, SubscriberCount, TopicPage, Unsubscribe};
pub use topic::{Topic, TopicError, TopicKind};

/// Identifies one subscriber (one socket connection) across the registry.
pub type SubscriberId = u64;

/// One broadcast on a topic, shared by every subscriber that receives it.
pub struct Broadcast {
    /// The topic.
    pub topic: String,
    /// What it says.
    pub event: Event,
    /// The shared payload of a typed event, built on first use.
    payload: OnceLock<Payload>,
    /// Encoded once per serializer on first use; `None` when a serializer cannot carry it.
    encoded: [OnceLock<Option<WireFrame>>; 2],
}

impl std::fmt::Debug for Broadcast {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broadcast").field("topic", &self.topic).field("event", &self.event).finish_non_exhaustive()
    }
}

impl Broadcast {
    /// Creates a broadcast, ready to share.
    pub fn new(topic: impl Into<String>, event: Event) -> Arc<Self> {
        Arc::new(Broadcast {
            topic: topic.into(),
            event,
            payload: OnceLock::new(),
            encoded: [OnceLock::new(), OnceLock::new()],
        })
    }

    /// The event name clients see.
    pub fn name(&self) -> &str {
        self.event.name()
    }

    /// The payload of the shared frame (seed types as proto3 JSON), built once per broadcast.
    pub fn payload(&self) -> &Payload {
        match self.event.ready_payload() {
            Some(payload) => payload,
            None => self.payload.get_or_init(|| self.event.to_payload()),
        }
    }

    /// The frame for sockets using `serializer` (`[null, null, topic, event, payload]` in V2).
    pub fn encoded(&self, serializer: Serializer) -> Option<&WireFrame> {
        let slot = match serializer {
            Serializer::V1 => &self.encoded[0],
            Serializer::V2 => &self.encoded[1],
        };
        slot.get_or_init(|| {
            let frame = Outgoing::Broadcast { topic: &self.topic, event: self.name(), payload: self.payload() };
            serializer.encode(&frame).ok()
        })
        .as_ref()
    }

    /// The bytes a broker sends to other nodes (a `courier.node.Broadcast` from `origin`).
    pub fn to_node_bytes(&self, origin: &NodeId) -> Vec<u8> {
        event::encode(origin.as_str(), &self.topic, &self.event)
    }

    /// Rebuilds a broadcast another node sent, with the id of the node that made it.
    pub fn from_node_bytes(bytes: &[u8]) -> Result<(String, Arc<Self>), EventDecodeError> {
        let (origin, topic, event) = event::decode(bytes)?;
        Ok((origin, Broadcast::new(topic, event)))
    }
}

/// What the registry hands a subscriber for each broadcast on one of its topics.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Deliver(pub Arc<Broadcast>);

/// Resolves once a broker has taken up (or dropped) interest in a topic.
pub type InterestTaken = BoxFuture<'static, ()>;

/// Carries broadcasts between nodes. Implementations must be cheap to call on every broadcast.
///
/// The calls come from the registry: `start` once, before any other; `interest` from the
/// registry shard that owns the topic, so the calls for one topic never race each other;
/// `publish` from whichever thread broadcasts.
pub trait Broker: Send + Sync + 'static {
    /// The name of this node, as reported in identities.
    fn node(&self) -> &str;
    /// Hands the broker the way into this node: remote broadcasts go to [`Inbound::deliver`].
    fn start(&self, inbound: Inbound);
    /// This node gained its first subscriber on `topic` (`true`) or lost its last (`false`), so
    /// a broker need carry only the topics someone here listens to. The work starts at the
    /// call; the future resolves once broadcasts published elsewhere from then on will arrive
    /// (a subscribe waits for it; an unsubscribe does not).
    fn interest(&self, topic: &str, interested: bool) -> InterestTaken;
    /// Sends a broadcast that was just fanned out locally to every other node with interest in
    /// its topic (encode it with [`Inbound::encode`]).
    fn publish(&self, broadcast: &Arc<Broadcast>);
    /// Whether the broker reaches its server now (`/readyz` reports it); a broker with no
    /// server to lose is always connected.
    fn connected(&self) -> bool {
        true
    }
    /// Claims this node's name on the broker's cluster before the node serves, and keeps it
    /// while the broker lives: a second node of the same name (same server and namespace) is
    /// refused with [`BrokerError::NameTaken`]. A broker with no other nodes has no one to
    /// share a name with, so the default claims nothing.
    fn claim(&self) -> BoxFuture<'static, Result<(), BrokerError>> {
        Box::pin(std::future::ready(Ok(())))
    }
    /// Gives the name back at shutdown, so a restart need not wait for the claim to lapse.
    fn release(&self) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// The single-node broker: there are no other nodes to tell.
#[derive(Debug, Clone)]
pub struct LocalBroker {
    node: String,
}

impl LocalBroker {
    /// A broker for a node with this name.
    pub fn new(node: impl Into<String>) -> Self {
        LocalBroker { node: node.into() }
    }
}

impl Broker for LocalBroker {
    fn node(&self) -> &str {
        &self.node
    }
    fn start(&self, _inbound: Inbound) {}
    fn interest(&self, _topic: &str, _interested: bool) -> InterestTaken {
        Box::pin(std::future::ready(()))
    }
    fn publish(&self, _broadcast: &Arc<Broadcast>) {}
}

/// Errors talking to the registry.
#[derive(Debug, thiserror::Error)]
pub enum PubSubError {
    /// The registry shard is gone (the server is shutting down).
    #[error("pubsub registry unavailable")]
    Unavailable(#[from] MailboxError),
}

/// This node's registry shards: the local half of pub/sub, which both [`PubSub`] and the
/// broker's [`Inbound`] fan out through.
#[derive(Clone)]
struct Fanout {
    shards: Arc<[Addr<RegistryShard>]>,
    hasher: RandomState,
}

impl Fanout {
    fn shard(&self, topic: &str) -> &Addr<RegistryShard> {
        let index = self.hasher.hash_one(topic) as usize % self.shards.len();
        &self.shards[index]
    }

    fn deliver(&self, broadcast: Arc<Broadcast>, exclude: Option<SubscriberId>) {
        self.shard(&broadcast.topic).do_send(Publish { broadcast, exclude });
    }

    /// Hands every live inbox on this node an [`Event::Resync`].
    fn resync(&self) {
        for shard in self.shards.iter() {
            shard.do_send(Resync { prefix: TopicKind::User.prefix() });
        }
    }
}

/// The way remote broadcasts enter this node, handed to the broker at start.
#[derive(Clone)]
pub struct Inbound {
    fanout: Fanout,
    node: NodeId,
}

impl Inbound {
    /// This node's id, which [`Inbound::encode`] stamps on what it sends.
    pub fn node_id(&self) -> &NodeId {
        &self.node
    }

    /// The bytes to send other nodes for a broadcast made here.
    pub fn encode(&self, broadcast: &Broadcast) -> Vec<u8> {
        broadcast.to_node_bytes(&self.node)
    }

    /// Fans bytes another node sent out to this node's subscribers. This node's own
    /// broadcasts, echoed back by a broker that delivers to every member, are dropped
    /// (`Ok(false)`): they were fanned out here when they were made. Another node's notice on
    /// [`topic::RESYNC`] has this node's inboxes re-read.
    pub fn deliver(&self, bytes: &[u8]) -> Result<bool, EventDecodeError> {
        let (origin, broadcast) = Broadcast::from_node_bytes(bytes)?;
        if origin == self.node.as_str() {
            return Ok(false);
        }
        if broadcast.topic == topic::RESYNC {
            tracing::info!(from = origin, "another node's broadcasts were lost; re-reading the live inboxes");
            self.fanout.resync();
        } else {
            self.fanout.deliver(broadcast, None);
        }
        Ok(true)
    }

    /// Has every live inbox on this node read its log again from where it is: live delivery
    /// to this node was interrupted (the broker's connection came back, or it dropped what it
    /// was handed), so messages may be missing that no later one will show as a gap. Call it
    /// once broadcasts published from then on are sure to arrive (the subscriptions are back).
    pub fn resync(&self) {
        self.fanout.resync();
    }

    /// The bytes of this node's notice to the others that some of its broadcasts were lost,
    /// for the broker to publish on [`topic::RESYNC`] once its server takes publishes again.
    pub fn resync_notice(&self) -> Vec<u8> {
        self.encode(&Broadcast::new(topic::RESYNC, Event::Resync))
    }
}

/// A cheap, cloneable handle to the registry shards and the broker.
#[derive(Clone)]
pub struct PubSub {
    fanout: Fanout,
    arbiters: Arc<[ArbiterHandle]>,
    broker: Arc<dyn Broker>,
    node: NodeId,
}

impl PubSub {
    /// Starts `shards` registry shards, each on its own arbiter thread, and starts `broker`.
    pub fn start(shards: usize, broker: Arc<dyn Broker>) -> Self {
        let (addrs, arbiters): (Vec<_>, Vec<_>) = (0..shards.max(1))
            .map(|_| {
                let arbiter = actix::Arbiter::new().handle();
                let broker = Arc::clone(&broker);
                (RegistryShard::start_in_arbiter(&arbiter, move |_| RegistryShard::new(broker)), arbiter)
            })
            .unzip();
        let node = NodeId::new(broker.node());
        let fanout = Fanout { shards: addrs.into(), hasher: RandomState::new() };
        broker.start(Inbound { fanout: fanout.clone(), node: node.clone() });
        PubSub { fanout, arbiters: arbiters.into(), broker, node }
    }

    /// The name of this node.
    pub fn node(&self) -> &str {
        self.broker.node()
    }

    /// Whether the broker reaches the other nodes now.
    pub fn broker_connected(&self) -> bool {
        self.broker.connected()
    }

    /// This process's id: the node's name and its incarnation.
    pub fn node_id(&self) -> &NodeId {
        &self.node
    }

    /// Subscribes `recipient` to `topic`; resolves once the registry (and, for a topic new to
    /// this node, the broker) has recorded it, so a broadcast made anywhere after this returns
    /// reaches the subscriber.
    pub async fn subscribe(
        &self,
        topic: &str,
        subscriber: SubscriberId,
        recipient: Recipient<Deliver>,
    ) -> Result<(), PubSubError> {
        let msg = Subscribe { topic: topic.to_owned(), subscriber, recipient };
        if let Some(interest) = self.fanout.shard(topic).send(msg).await? {
            interest.await;
        }
        Ok(())
    }

    /// Removes a subscription; a no-op if there is none.
    pub fn unsubscribe(&self, topic: &str, subscriber: SubscriberId) {
        self.fanout.shard(topic).do_send(Unsubscribe { topic: topic.to_owned(), subscriber });
    }

    /// Broadcasts to every subscriber of `topic`, on every node.
    pub fn broadcast(&self, topic: &str, event: &str, payload: Payload) {
        self.publish(Broadcast::new(topic, Event::raw(event, payload)), None);
    }

    /// Broadcasts to every subscriber of `topic` except `from` (Phoenix's `broadcast_from`).
    pub fn broadcast_from(&self, from: SubscriberId, topic: &str, event: &str, payload: Payload) {
        self.publish(Broadcast::new(topic, Event::raw(event, payload)), Some(from));
    }

    /// Publishes a prepared broadcast to every subscriber of its topic (but `exclude`), on every node.
    pub fn publish(&self, broadcast: Arc<Broadcast>, exclude: Option<SubscriberId>) {
        self.broker.publish(&broadcast);
        self.fanout.deliver(broadcast, exclude);
    }

    /// Fans a broadcast out to this node's subscribers only: for news every node learns by
    /// itself (another node went down), which each announces to its own sockets.
    pub fn publish_local(&self, broadcast: Arc<Broadcast>) {
        self.fanout.deliver(broadcast, None);
    }

    /// How many live subscribers `topic` has on this node.
    pub async fn subscriber_count(&self, topic: &str) -> Result<usize, PubSubError> {
        Ok(self.fanout.shard(topic).send(SubscriberCount { topic: topic.to_owned() }).await?)
    }

    /// This node's topics starting with `prefix` and sorting after `after`, but none starting
    /// with one of `hidden`, the first `limit` in order, each with its live subscriber count
    /// (an operator's listing, not a hot path).
    pub async fn topics(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        hidden: &'static [&'static str],
    ) -> Result<Vec<(String, usize)>, PubSubError> {
        let mut all = Vec::new();
        for shard in self.fanout.shards.iter() {
            let page = TopicPage { prefix: prefix.to_owned(), after: after.map(str::to_owned), limit, hidden };
            all.extend(shard.send(page).await?);
        }
        all.sort_unstable();
        all.truncate(limit);
        Ok(all)
    }

    /// This node's topics and live subscriptions per topic family (`user:`, `room:`, ...), as
    /// `family → (topics, subscriptions)`.
    pub async fn census(&self) -> Result<std::collections::BTreeMap<String, (usize, usize)>, PubSubError> {
        let mut families = std::collections::BTreeMap::<String, (usize, usize)>::new();
        for shard in self.fanout.shards.iter() {
            for (family, topics, subscriptions) in shard.send(Census).await? {
                let counts = families.entry(family).or_default();
                counts.0 += topics;
                counts.1 += subscriptions;
            }
        }
        Ok(families)
    }

    /// Gives the node's name back to the cluster (at server shutdown, after the last broadcast).
    pub async fn release_name(&self) {
        self.broker.release().await;
    }

    /// Stops the registry arbiters (at server shutdown).
    pub fn stop(&self) {
        for arbiter in self.arbiters.iter() {
            arbiter.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use actix::{Actor, Context, Handler};

    use super::*;

    /// Records what it is delivered.
    struct Probe(Arc<Mutex<Vec<String>>>);

    impl Actor for Probe {
        type Context = Context<Self>;
    }

    impl Handler<Deliver> for Probe {
        type Result = ();
        fn handle(&mut self, Deliver(b): Deliver, _: &mut Context<Self>) {
            self.0.lock().unwrap().push(format!("{}:{}", b.topic, b.name()));
        }
    }

    /// Counts what it is asked to send to other nodes.
    struct CountingBroker(Mutex<Vec<String>>);

    impl Broker for CountingBroker {
        fn node(&self) -> &str {
            "test@node"
        }
        fn start(&self, _inbound: Inbound) {}
        fn interest(&self, topic: &str, interested: bool) -> InterestTaken {
            self.0.lock().unwrap().push(format!("{}{topic}", if interested { "+" } else { "-" }));
            Box::pin(std::future::ready(()))
        }
        fn publish(&self, b: &Arc<Broadcast>) {
            self.0.lock().unwrap().push(b.name().to_owned());
        }
    }

    /// Polls until `seen` holds `n` entries (bounded), then returns them sorted: topics on
    /// different shards are delivered in no particular order relative to each other.
    async fn wait_for(seen: &Arc<Mutex<Vec<String>>>, n: usize) -> Vec<String> {
        for _ in 0..250 {
            if seen.lock().unwrap().len() >= n {
                break;
            }
            actix::clock::sleep(std::time::Duration::from_millis(20)).await;
        }
        let mut got = seen.lock().unwrap().clone();
        got.sort();
        got
    }

    #[actix::test]
    async fn fans_out_once_per_subscriber_honours_exclusion_and_drops_dead_subscribers() {
        let broker = Arc::new(CountingBroker(Mutex::new(Vec::new())));
        let pubsub = PubSub::start(2, broker.clone());
        let (seen_a, seen_b) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
        let a = Probe(Arc::clone(&seen_a)).start();
        let b = Probe(Arc::clone(&seen_b)).start();
        pubsub.subscribe("room:x", 1, a.clone().recipient()).await.unwrap();
        // Subscribing twice is one subscription.
        pubsub.subscribe("room:x", 1, a.clone().recipient()).await.unwrap();
        pubsub.subscribe("room:x", 2, b.clone().recipient()).await.unwrap();
        pubsub.subscribe("room:y", 2, b.clone().recipient()).await.unwrap();

        pubsub.broadcast("room:x", "one", Payload::empty());
        pubsub.broadcast_from(1, "room:x", "two", Payload::empty());
        pubsub.broadcast("room:y", "three", Payload::empty());
        assert_eq!(wait_for(&seen_b, 3).await, vec!["room:x:one", "room:x:two", "room:y:three"]);
        assert_eq!(wait_for(&seen_a, 1).await, vec!["room:x:one"]);
        let told = broker.0.lock().unwrap().clone();
        assert_eq!(told, vec!["+room:x", "+room:y", "one", "two", "three"], "interest once per topic, then publishes");
        assert_eq!(pubsub.node(), "test@node");

        pubsub.unsubscribe("room:x", 2);
        // A subscriber whose actor stopped without unsubscribing is dropped at the next broadcast.
        a.send(StopProbe).await.unwrap();
        for _ in 0..250 {
            if !a.connected() {
                break;
            }
            actix::clock::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(pubsub.subscriber_count("room:x").await.unwrap(), 0);
        pubsub.broadcast("room:x", "four", Payload::empty());
        // A broadcast on b's other topic, sent after "four" through the same shard order, marks
        // when "four" would have arrived had b still been subscribed to room:x.
        pubsub.subscribe("room:x", 3, b.clone().recipient()).await.unwrap();
        pubsub.broadcast("room:x", "five", Payload::empty());
        assert_eq!(wait_for(&seen_b, 4).await, vec!["room:x:five", "room:x:one", "room:x:two", "room:y:three"]);
        // The dead subscriber was room:x's last, so the broker heard the topic go and come back.
        let told = broker.0.lock().unwrap().clone();
        assert_eq!(told[5..], ["four", "-room:x", "+room:x", "five"]);
        pubsub.stop();
    }

    #[derive(actix::Message)]
    #[rtype(result = "()")]
    struct StopProbe;

    impl Handler<StopProbe> for Probe {
        type Result = ();
        fn handle(&mut self, _: StopProbe, ctx: &mut Context<Self>) {
            actix::ActorContext::stop(ctx);
        }
    }

    /// Keeps the way in it was handed, as a networked broker does.
    #[derive(Default)]
    struct CapturingBroker(Mutex<Option<Inbound>>);

    impl Broker for CapturingBroker {
        fn node(&self) -> &str {
            "test@capture"
        }
        fn start(&self, inbound: Inbound) {
            *self.0.lock().unwrap() = Some(inbound);
        }
        fn interest(&self, _topic: &str, _interested: bool) -> InterestTaken {
            Box::pin(std::future::ready(()))
        }
        fn publish(&self, _b: &Arc<Broadcast>) {}
    }

    #[actix::test]
    async fn a_resync_reaches_every_inbox_here_and_another_nodes_notice_does_too() {
        let broker = Arc::new(CapturingBroker::default());
        let pubsub = PubSub::start(3, broker.clone());
        let inbound = broker.0.lock().unwrap().clone().expect("started");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let probe = Probe(Arc::clone(&seen)).start();
        for (n, topic) in ["user:a", "user:b", "room:x", "presence:a"].into_iter().enumerate() {
            pubsub.subscribe(topic, n as u64, probe.clone().recipient()).await.unwrap();
        }
        inbound.resync();
        assert_eq!(wait_for(&seen, 2).await, vec!["user:a:resync", "user:b:resync"], "inbox topics only");

        seen.lock().unwrap().clear();
        assert!(!inbound.deliver(&inbound.resync_notice()).unwrap(), "its own notice, echoed, is dropped");
        let notice = Broadcast::new(topic::RESYNC, Event::Resync).to_node_bytes(&NodeId::new("test@other"));
        assert!(inbound.deliver(&notice).unwrap());
        assert_eq!(wait_for(&seen, 2).await, vec!["user:a:resync", "user:b:resync"]);
        actix::clock::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(seen.lock().unwrap().len(), 2, "one resync per inbox per notice, and none for the echo");
        pubsub.stop();
    }

    #[test]
    fn broadcasts_encode_once_per_serializer() {
        let b = Broadcast::new("room:a", Event::raw("e", Payload::json(&serde_json::json!({"k": 1}))));
        let first = b.encoded(Serializer::V2).cloned();
        assert_eq!(first, Some(WireFrame::Text(r#"[null,null,"room:a","e",{"k":1}]"#.into())));
        assert!(std::ptr::eq(b.encoded(Serializer::V2).unwrap(), b.encoded(Serializer::V2).unwrap()));
        let binary = Broadcast::new("room:a", Event::raw("e", Payload::Binary(bytes::Bytes::from_static(b"x"))));
        assert!(binary.encoded(Serializer::V1).is_none());
        assert!(binary.encoded(Serializer::V2).is_some());
    }
}
