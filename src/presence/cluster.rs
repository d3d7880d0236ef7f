//! Presence across nodes: [`ClusterTracker`] keeps this node's presences in a [`LocalTracker`]
//! and a replica of every other node's, so `presence_state` on any node lists them all.
//!
//! The design is Phoenix.Tracker's, simplified. Each node owns its own entries and is the only
//! one that ever publishes them, on the internal topic [`PRESENCE_SYNC`] (no client may join or
//! broadcast it). A local track is applied locally at once, as on a single node; at each diff
//! window a shard publishes, before its `presence_diff`s and through the same broker, a *delta*:
//! the whole state of each topic that changed, stamped with the shard's version. Because a
//! delta precedes its diffs on the broker, a node that lists a topic for a socket which missed a
//! diff has already applied the delta behind it. Every `heartbeat_ms` the node publishes a
//! *heartbeat* with each shard's version; a receiver that finds itself behind (a lost delta, or
//! a node it never heard of) *requests* that node's *full* state, which each shard publishes in
//! order with its deltas. A node starting up requests everyone's.
//!
//! Nodes are named by their [`NodeId`](crate::pubsub::NodeId) (name plus a random incarnation),
//! so a restarted node is a new peer whose state starts empty: the entries of its previous
//! process are never resurrected, since only the dead process could have published them. A peer
//! not heard from for `node_timeout_ms` (or that said goodbye at shutdown) is down: its entries
//! go, announced to this node's own sockets as one `presence_diff` per topic holding all of its
//! leaves. Every node does the same for its own sockets, so nothing is announced twice. What a
//! down peer sends for one more timeout is ignored, which keeps its stragglers from coming back;
//! after that its heartbeat readmits it (a healed partition), with its full state announced as
//! joins. This module owns the replicas and their wire messages; the entries stay the shards'.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, Addr, ArbiterHandle, AsyncContext, Context, Handler, Message, MessageResult};
use futures_util::future::LocalBoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{Lease, LocalTracker, Meta, PresenceConfig, PresenceError, Snapshot, Tracker};
use crate::clock::Clock;
use crate::protocol::Payload;
use crate::pubsub::topic::PRESENCE_SYNC;
use crate::pubsub::{Broadcast, ConnectionId, Deliver, Event, Occupancy, PubSub, SubscriberId};
use crate::task::Stop;

/// The event name of the replication messages on [`PRESENCE_SYNC`].
const SYNC_EVENT: &str = "presence_sync";
/// The replicator's id in this node's registry: far above any socket's sequence number.
const SUBSCRIBER: SubscriberId = u64::MAX - 1;

/// One node's presences on one topic, as in `presence_state`: `{key: {"metas": [...]}}`.
type State = Map<String, Value>;

/// A replication message as sent: the states borrowed from the shard's encoded snapshots.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Outgoing<'a> {
    Delta { node: &'a str, shard: u32, version: u64, topics: Vec<(&'a str, &'a RawValue)> },
    Full { node: &'a str, shard: u32, version: u64, topics: Vec<(&'a str, &'a RawValue)> },
    Heartbeat { node: &'a str, versions: &'a [u64] },
    Request { node: &'a str, target: Option<&'a str> },
    Bye { node: &'a str },
}

/// A replication message as received from another node.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Incoming {
    /// The whole state of each topic of one shard that changed in a window.
    Delta { node: String, shard: u32, version: u64, topics: Vec<(String, State)> },
    /// Every topic of one shard (an answer to a request).
    Full { node: String, shard: u32, version: u64, topics: Vec<(String, State)> },
    /// The node is alive; each shard's version.
    Heartbeat { node: String, versions: Vec<u64> },
    /// `node` asks `target` (everyone when `None`) for its full state.
    Request { node: String, target: Option<String> },
    /// The node is shutting down.
    Bye { node: String },
}

impl Incoming {
    fn node(&self) -> &str {
        match self {
            Incoming::Delta { node, .. }
            | Incoming::Full { node, .. }
            | Incoming::Heartbeat { node, .. }
            | Incoming::Request { node, .. }
            | Incoming::Bye { node } => node,
        }
    }
}

/// Publishes `message` to every node (this one's replicator ignores its own).
fn publish(pubsub: &PubSub, message: &Outgoing<'_>) {
    let broadcast = Broadcast::new(PRESENCE_SYNC, Event::raw(SYNC_EVENT, Payload::json(message)));
    pubsub.publish(broadcast, None);
}

/// The states as the wire borrows them; a binary payload (never a snapshot) is left out.
fn borrowed(states: &[(String, Payload)]) -> Vec<(&str, &RawValue)> {
    fn raw(payload: &Payload) -> Option<&RawValue> {
        match payload {
            Payload::Json(raw) => Some(raw),
            Payload::Binary(_) => None,
        }
    }
    states.iter().filter_map(|(topic, state)| Some((topic.as_str(), raw(state)?))).collect()
}

/// A shard's delta: the new state of each topic that changed (empty when it has none left).
pub(super) fn publish_delta(pubsub: &PubSub, shard: u32, version: u64, states: Vec<(String, Payload)>) {
    let node = pubsub.node_id().as_str();
    publish(pubsub, &Outgoing::Delta { node, shard, version, topics: borrowed(&states) });
}

/// A shard's full state, at `version`.
pub(super) fn publish_full(pubsub: &PubSub, shard: u32, version: u64, states: Vec<(String, Payload)>) {
    let node = pubsub.node_id().as_str();
    publish(pubsub, &Outgoing::Full { node, shard, version, topics: borrowed(&states) });
}

/// What changed on one topic in this node's replicas, for its own sockets.
#[derive(Debug, Default, PartialEq)]
struct Change {
    joins: State,
    leaves: State,
}

/// What the replicator does after a message or a tick.
#[derive(Debug, PartialEq)]
enum Reaction {
    /// Nothing to do.
    Nothing,
    /// Ask this node for its full state.
    AskFor(String),
    /// Publish this node's full state.
    SendOurs,
    /// Announce these changes to this node's sockets, one diff per topic.
    Announce(BTreeMap<String, Change>),
}

/// One other node, as its messages describe it.
struct Peer {
    /// Each shard's version, as applied here.
    versions: HashMap<u32, u64>,
    /// Each shard's topics with entries here.
    shard_topics: HashMap<u32, HashSet<String>>,
    last_seen: Instant,
    /// The versions of the previous heartbeat: a delta may trail the heartbeat that counts it,
    /// so only a replica still behind those one beat later asks for the full state.
    last_beat: Vec<u64>,
    asked_at: Option<Instant>,
}

impl Peer {
    fn new(now: Instant) -> Self {
        Peer {
            versions: HashMap::new(),
            shard_topics: HashMap::new(),
            last_seen: now,
            last_beat: Vec::new(),
            asked_at: None,
        }
    }

    fn version(&self, shard: u32) -> u64 {
        self.versions.get(&shard).copied().unwrap_or(0)
    }
}

/// The replicas of every other node's presences. Pure: the caller passes the time.
#[derive(Default)]
struct Replicas {
    peers: HashMap<String, Peer>,
    /// Topic → node → that node's state there.
    topics: HashMap<String, HashMap<String, State>>,
    /// Nodes declared down, and when: what they send for one more timeout is ignored.
    down: HashMap<String, Instant>,
}

/// The metas of one key's presence, if it has the shape.
fn metas_mut(presence: &mut Value) -> Option<&mut Vec<Value>> {
    presence.get_mut("metas").and_then(Value::as_array_mut)
}

/// Adds `from`'s metas to `into`, key by key.
fn merge_into(into: &mut State, from: State) {
    for (key, mut presence) in from {
        match into.get_mut(&key).and_then(metas_mut) {
            Some(metas) => metas.extend(metas_mut(&mut presence).map(std::mem::take).unwrap_or_default()),
            None => {
                into.insert(key, presence);
            }
        }
    }
}

/// The refs a state holds.
fn refs(state: &State) -> HashSet<String> {
    state
        .values()
        .filter_map(|p| p.get("metas").and_then(Value::as_array))
        .flatten()
        .filter_map(|m| m.get("phx_ref").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

/// The metas of `state` whose refs are not in `except`, keyed as in `state`.
fn without(state: &State, except: &HashSet<String>) -> State {
    let mut kept = State::new();
    for (key, presence) in state {
        let metas: Vec<Value> = presence
            .get("metas")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|m| m.get("phx_ref").and_then(Value::as_str).is_none_or(|r| !except.contains(r)))
            .cloned()
            .collect();
        if !metas.is_empty() {
            kept.insert(key.clone(), serde_json::json!({ "metas": metas }));
        }
    }
    kept
}

impl Replicas {
    /// Applies one message from another node; `me` is this node's id, and a full state is asked
    /// of one node at most once per `ask_gap`.
    fn apply(&mut self, message: Incoming, me: &str, now: Instant, ask_gap: Duration) -> Reaction {
        if message.node() == me || self.down.contains_key(message.node()) {
            return Reaction::Nothing;
        }
        match message {
            Incoming::Request { target, .. } => {
                if target.as_deref().is_none_or(|t| t == me) {
                    Reaction::SendOurs
                } else {
                    Reaction::Nothing
                }
            }
            Incoming::Bye { node } => Reaction::Announce(self.remove(&[node], now)),
            Incoming::Heartbeat { node, versions } => {
                let known = self.peers.contains_key(&node);
                let peer = self.peers.entry(node.clone()).or_insert_with(|| Peer::new(now));
                peer.last_seen = now;
                let behind =
                    !known || peer.last_beat.iter().zip(0u32..).any(|(&beat, shard)| peer.version(shard) < beat);
                peer.last_beat = versions;
                if behind { self.ask(&node, now, ask_gap) } else { Reaction::Nothing }
            }
            Incoming::Delta { node, shard, version, topics } => {
                let peer = self.peers.entry(node.clone()).or_insert_with(|| Peer::new(now));
                peer.last_seen = now;
                let have = peer.version(shard);
                if version <= have {
                    return Reaction::Nothing;
                }
                peer.versions.insert(shard, version);
                for (topic, state) in topics {
                    self.set(&node, shard, topic, state);
                }
                // A delta replaces whole topics, so applying one past a gap is right for those;
                // the topics of the deltas missed come with the full state.
                if version == have + 1 { Reaction::Nothing } else { self.ask(&node, now, ask_gap) }
            }
            Incoming::Full { node, shard, version, topics } => {
                let peer = self.peers.entry(node.clone()).or_insert_with(|| Peer::new(now));
                peer.last_seen = now;
                if version < peer.version(shard) {
                    return Reaction::Nothing;
                }
                peer.versions.insert(shard, version);
                let old_topics = peer.shard_topics.remove(&shard).unwrap_or_default();
                let mut old: HashMap<String, State> = HashMap::new();
                for topic in old_topics {
                    if let Some(state) = self.take(&node, &topic) {
                        old.insert(topic, state);
                    }
                }
                let mut changes = BTreeMap::new();
                for (topic, state) in topics {
                    let before = old.remove(&topic).unwrap_or_default();
                    let change =
                        Change { joins: without(&state, &refs(&before)), leaves: without(&before, &refs(&state)) };
                    if !change.joins.is_empty() || !change.leaves.is_empty() {
                        changes.insert(topic.clone(), change);
                    }
                    self.set(&node, shard, topic, state);
                }
                for (topic, leaves) in old {
                    changes.insert(topic, Change { joins: State::new(), leaves });
                }
                // A replica missing what the deltas said is repaired for this node's sockets too.
                if changes.is_empty() { Reaction::Nothing } else { Reaction::Announce(changes) }
            }
        }
    }

    /// Asks `node` for its full state unless it was asked within `gap`.
    fn ask(&mut self, node: &str, now: Instant, gap: Duration) -> Reaction {
        let Some(peer) = self.peers.get_mut(node) else { return Reaction::Nothing };
        if peer.asked_at.is_some_and(|at| now.duration_since(at) < gap) {
            return Reaction::Nothing;
        }
        peer.asked_at = Some(now);
        Reaction::AskFor(node.to_owned())
    }

    /// Sets `node`'s state on `topic` (an empty one removes it).
    fn set(&mut self, node: &str, shard: u32, topic: String, state: State) {
        let Some(peer) = self.peers.get_mut(node) else { return };
        if state.is_empty() {
            if let Some(topics) = peer.shard_topics.get_mut(&shard) {
                topics.remove(&topic);
            }
            self.take(node, &topic);
        } else {
            peer.shard_topics.entry(shard).or_default().insert(topic.clone());
            self.topics.entry(topic).or_default().insert(node.to_owned(), state);
        }
    }

    /// Removes and returns `node`'s state on `topic`.
    fn take(&mut self, node: &str, topic: &str) -> Option<State> {
        let nodes = self.topics.get_mut(topic)?;
        let state = nodes.remove(node);
        if nodes.is_empty() {
            self.topics.remove(topic);
        }
        state
    }

    /// Declares `nodes` down: their entries go, as one change per topic holding all leaves.
    fn remove(&mut self, nodes: &[String], now: Instant) -> BTreeMap<String, Change> {
        let mut changes: BTreeMap<String, Change> = BTreeMap::new();
        for node in nodes {
            self.down.insert(node.clone(), now);
            let Some(peer) = self.peers.remove(node) else { continue };
            for topic in peer.shard_topics.into_values().flatten() {
                if let Some(state) = self.take(node, &topic) {
                    merge_into(&mut changes.entry(topic).or_default().leaves, state);
                }
            }
        }
        changes
    }

    /// Declares down the peers silent for longer than `timeout`, and forgets the down nodes
    /// that stayed silent for one more.
    fn expire(&mut self, now: Instant, timeout: Duration) -> BTreeMap<String, Change> {
        self.down.retain(|_, at| now.duration_since(*at) <= timeout);
        let silent: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, peer)| now.duration_since(peer.last_seen) > timeout)
            .map(|(node, _)| node.clone())
            .collect();
        self.remove(&silent, now)
    }

    /// The other nodes' states on `topic`.
    fn remote(&self, topic: &str) -> Vec<State> {
        self.topics.get(topic).map(|nodes| nodes.values().cloned().collect()).unwrap_or_default()
    }
}

/// Asks the replicator for the other nodes' states on a topic.
struct Remote(String);

impl Message for Remote {
    type Result = Vec<State>;
}

/// The actor that holds the replicas: it hears the other nodes, beats for this one, and
/// declares silent nodes down.
struct Replicator {
    pubsub: PubSub,
    local: LocalTracker,
    replicas: Replicas,
    heartbeat: Duration,
    timeout: Duration,
    clock: Arc<dyn Clock>,
}

impl Replicator {
    fn me(&self) -> &str {
        self.pubsub.node_id().as_str()
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let versions = self.local.versions();
        publish(&self.pubsub, &Outgoing::Heartbeat { node: self.me(), versions: &versions });
        let down = self.replicas.expire(Instant::now(), self.timeout);
        if !down.is_empty() {
            tracing::warn!(topics = down.len(), "presence: a node went silent; its presences left");
        }
        self.announce(down, ctx);
    }

    /// Tells this node's sockets, one diff per topic; whether the topic is still occupied
    /// counts this node's presences and the other replicas.
    fn announce(&mut self, changes: BTreeMap<String, Change>, ctx: &mut Context<Self>) {
        for (topic, change) in changes {
            let elsewhere = self.replicas.topics.contains_key(&topic);
            let (local, pubsub, clock) = (self.local.list(&topic), self.pubsub.clone(), Arc::clone(&self.clock));
            let was_occupied = elsewhere || !change.leaves.is_empty();
            ctx.spawn(actix::fut::wrap_future(async move {
                let here = local.await.is_ok_and(|s| s.keys > 0);
                let diff = Payload::json(&serde_json::json!({ "joins": change.joins, "leaves": change.leaves }));
                let occupancy = Occupancy {
                    was_occupied: was_occupied || here,
                    occupied: elsewhere || here,
                    at: clock.now_millis(),
                };
                pubsub.publish_local(Broadcast::new(topic, Event::PresenceDiff { diff, occupancy }));
            }));
        }
    }
}

impl Actor for Replicator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let (pubsub, recipient) = (self.pubsub.clone(), ctx.address().recipient());
        ctx.spawn(actix::fut::wrap_future(async move {
            if let Err(e) = pubsub.subscribe(PRESENCE_SYNC, SUBSCRIBER, recipient).await {
                tracing::warn!(error = %e, "presence replication could not subscribe");
                return;
            }
            // Only once subscribed, so the answers find this node listening.
            publish(&pubsub, &Outgoing::Request { node: pubsub.node_id().as_str(), target: None });
        }));
        ctx.run_interval(self.heartbeat, Self::tick);
    }
}

impl Handler<Deliver> for Replicator {
    type Result = ();

    fn handle(&mut self, Deliver(broadcast): Deliver, ctx: &mut Context<Self>) {
        let Event::Raw { payload: Payload::Json(raw), .. } = &broadcast.event else { return };
        let message: Incoming = match serde_json::from_str(raw.get()) {
            Ok(message) => message,
            Err(e) => {
                tracing::debug!(error = %e, "presence replication message refused");
                return;
            }
        };
        let me = self.pubsub.node_id().clone();
        match self.replicas.apply(message, me.as_str(), Instant::now(), self.heartbeat) {
            Reaction::Nothing => {}
            Reaction::AskFor(node) => {
                publish(&self.pubsub, &Outgoing::Request { node: me.as_str(), target: Some(&node) });
            }
            Reaction::SendOurs => self.local.resync(),
            Reaction::Announce(changes) => self.announce(changes, ctx),
        }
    }
}

impl Handler<Remote> for Replicator {
    type Result = MessageResult<Remote>;

    fn handle(&mut self, Remote(topic): Remote, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.replicas.remote(&topic))
    }
}

impl Handler<Stop> for Replicator {
    type Result = ();

    /// Says goodbye, so the others drop this node's replica now instead of after a timeout.
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        publish(&self.pubsub, &Outgoing::Bye { node: self.me() });
        self.pubsub.unsubscribe(PRESENCE_SYNC, SUBSCRIBER);
        ctx.stop();
    }
}

/// The [`Tracker`] of a node among several: this node's presences in a [`LocalTracker`], the
/// others' in replicas, listed together.
#[derive(Clone)]
pub struct ClusterTracker {
    local: LocalTracker,
    replicator: Addr<Replicator>,
    arbiter: ArbiterHandle,
}

impl ClusterTracker {
    /// Starts the local shards and the replicator (on its own arbiter), replicating through
    /// `pubsub`'s broker.
    pub fn start(config: &PresenceConfig, pubsub: PubSub, clock: Arc<dyn Clock>) -> Self {
        let local = LocalTracker::start_replicated(config, pubsub.clone(), Arc::clone(&clock));
        let arbiter = actix::Arbiter::new().handle();
        let (heartbeat, timeout, tracker) = (config.heartbeat(), config.node_timeout(), local.clone());
        let replicator = Replicator::start_in_arbiter(&arbiter, move |_| Replicator {
            pubsub,
            local: tracker,
            replicas: Replicas::default(),
            heartbeat,
            timeout,
            clock,
        });
        ClusterTracker { local, replicator, arbiter }
    }

    /// Stops the shards (publishing their last diffs and deltas), then says goodbye.
    pub async fn stop(&self) {
        self.local.stop().await;
        if self.replicator.send(Stop).await.is_err() {
            tracing::debug!("presence replicator already stopped");
        }
        self.arbiter.stop();
    }

    /// Whether a shard or the replicator still runs.
    pub fn running(&self) -> bool {
        self.local.running() || self.replicator.connected()
    }
}

impl Tracker for ClusterTracker {
    fn lease(&self, owner: &ConnectionId) -> Lease {
        self.local.lease(owner)
    }

    fn track(
        &self,
        topic: &str,
        key: &str,
        owner: &ConnectionId,
        meta: Meta,
    ) -> LocalBoxFuture<'static, Result<String, PresenceError>> {
        self.local.track(topic, key, owner, meta)
    }

    fn update(
        &self,
        topic: &str,
        key: &str,
        owner: &ConnectionId,
        meta: Meta,
    ) -> LocalBoxFuture<'static, Result<String, PresenceError>> {
        self.local.update(topic, key, owner, meta)
    }

    fn untrack(&self, topic: &str, key: &str, owner: &ConnectionId) {
        self.local.untrack(topic, key, owner);
    }

    fn list(&self, topic: &str) -> LocalBoxFuture<'static, Result<Snapshot, PresenceError>> {
        let local = self.local.list(topic);
        let remote = self.replicator.send(Remote(topic.to_owned()));
        Box::pin(async move {
            let local = local.await?;
            let remote = remote.await.map_err(|_| PresenceError::Unavailable)?;
            if remote.is_empty() {
                return Ok(local);
            }
            let mut state: State =
                local.state.as_json_str().and_then(|t| serde_json::from_str(t).ok()).unwrap_or_default();
            for other in remote {
                merge_into(&mut state, other);
            }
            Ok(Snapshot { keys: state.len(), state: Payload::json(&state) })
        })
    }
}

/// The tracker a server runs: the local one alone, or the cluster's when a broker joins nodes.
#[derive(Clone)]
pub enum Engine {
    /// One node.
    Local(LocalTracker),
    /// One node of several.
    Cluster(ClusterTracker),
}

impl Engine {
    /// Starts the cluster tracker when `clustered`, else the local one.
    pub fn start(config: &PresenceConfig, pubsub: PubSub, clock: Arc<dyn Clock>, clustered: bool) -> Self {
        if clustered {
            Engine::Cluster(ClusterTracker::start(config, pubsub, clock))
        } else {
            Engine::Local(LocalTracker::start(config, pubsub, clock))
        }
    }

    /// The engine as the channels use it.
    pub fn tracker(&self) -> Arc<dyn Tracker> {
        match self {
            Engine::Local(local) => Arc::new(local.clone()),
            Engine::Cluster(cluster) => Arc::new(cluster.clone()),
        }
    }

    /// Stops it (see [`LocalTracker::stop`]).
    pub async fn stop(&self) {
        match self {
            Engine::Local(local) => local.stop().await,
            Engine::Cluster(cluster) => cluster.stop().await,
        }
    }

    /// Whether any part still runs.
    pub fn running(&self) -> bool {
        match self {
            Engine::Local(local) => local.running(),
            Engine::Cluster(cluster) => cluster.running(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const GAP: Duration = Duration::from_millis(100);

    fn state(v: Value) -> State {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("test states are objects"),
        }
    }

    fn one(key: &str, phx_ref: &str) -> State {
        state(json!({ key: {"metas": [{"phx_ref": phx_ref}]} }))
    }

    fn delta(node: &str, shard: u32, version: u64, topics: Vec<(&str, State)>) -> Incoming {
        let topics = topics.into_iter().map(|(t, s)| (t.to_owned(), s)).collect();
        Incoming::Delta { node: node.into(), shard, version, topics }
    }

    /// What the wire carries back, as a receiver parses it.
    fn round_trip(message: &Outgoing<'_>) -> Incoming {
        serde_json::from_str(Payload::json(message).as_json_str().unwrap()).unwrap()
    }

    #[test]
    fn the_timings_are_checked() {
        let defaults = PresenceConfig::default();
        assert!(defaults.validate().is_ok());
        assert!(defaults.node_timeout() <= Duration::from_secs(15), "the default bound is under 15 s");
        let tight = PresenceConfig { heartbeat_ms: 1_000, node_timeout_ms: 2_000, ..PresenceConfig::default() };
        assert!(tight.validate().unwrap_err().contains("node_timeout_ms"));
        let fast = PresenceConfig { heartbeat_ms: 1, ..PresenceConfig::default() };
        assert!(fast.validate().unwrap_err().contains("heartbeat_ms"));
    }

    #[test]
    fn the_wire_messages_parse_back_and_garbage_is_refused() {
        let states = vec![("room:a".to_owned(), Payload::json(&one("k", "r1")))];
        let back = round_trip(&Outgoing::Delta { node: "n/1", shard: 2, version: 7, topics: borrowed(&states) });
        let Incoming::Delta { node, shard, version, topics } = back else { panic!("not a delta") };
        assert_eq!((node.as_str(), shard, version), ("n/1", 2, 7));
        assert_eq!(topics, vec![("room:a".to_owned(), one("k", "r1"))]);
        let back = round_trip(&Outgoing::Request { node: "n/1", target: None });
        assert!(matches!(back, Incoming::Request { target: None, .. }));
        assert!(matches!(round_trip(&Outgoing::Bye { node: "n/1" }), Incoming::Bye { .. }));
        for garbage in ["{}", r#"{"kind":"delta"}"#, "[1]", r#"{"kind":"nope","node":"n"}"#] {
            assert!(serde_json::from_str::<Incoming>(garbage).is_err(), "{garbage}");
        }
    }

    #[test]
    fn replicas_merge_nodes_per_topic_and_follow_deltas() {
        let (mut r, now) = (Replicas::default(), Instant::now());
        // A node never heard of: its first delta is applied, and its full state asked for.
        let first = r.apply(delta("a/1", 0, 3, vec![("room:x", one("alice", "ra"))]), "me/1", now, GAP);
        assert_eq!(first, Reaction::AskFor("a/1".into()));
        assert_eq!(
            r.apply(delta("b/1", 0, 1, vec![("room:x", one("alice", "rb"))]), "me/1", now, GAP),
            Reaction::Nothing
        );
        let mut merged = State::new();
        for s in r.remote("room:x") {
            merge_into(&mut merged, s);
        }
        assert_eq!(merged["alice"]["metas"].as_array().map(Vec::len), Some(2), "one key, a meta from each node");
        // The next delta replaces the topic; an old or repeated one is ignored; an empty state
        // removes the node from the topic.
        r.apply(delta("b/1", 0, 2, vec![("room:x", one("bob", "rb2"))]), "me/1", now, GAP);
        r.apply(delta("b/1", 0, 2, vec![("room:x", one("ghost", "rg"))]), "me/1", now, GAP);
        let bs: Vec<State> = r.remote("room:x").into_iter().filter(|s| s.contains_key("bob")).collect();
        assert_eq!(bs, vec![one("bob", "rb2")]);
        r.apply(delta("b/1", 0, 3, vec![("room:x", State::new())]), "me/1", now, GAP);
        assert_eq!(r.remote("room:x"), vec![one("alice", "ra")]);
        // Own messages are ignored.
        assert_eq!(r.apply(delta("me/1", 0, 9, vec![("room:y", one("me", "r"))]), "me/1", now, GAP), Reaction::Nothing);
        assert!(r.remote("room:y").is_empty());
    }

    #[test]
    fn a_gap_or_a_heartbeat_ahead_asks_for_the_full_state_which_repairs_the_replica() {
        let (mut r, now) = (Replicas::default(), Instant::now());
        let beat = |versions: Vec<u64>| Incoming::Heartbeat { node: "a/1".into(), versions };
        assert_eq!(r.apply(beat(vec![0]), "me/1", now, GAP), Reaction::AskFor("a/1".into()), "a new node");
        r.apply(delta("a/1", 0, 1, vec![("room:x", one("alice", "r1"))]), "me/1", now, GAP);
        // Delta 2 is lost: the heartbeat that counts it may outrun a delta, so only the next asks.
        assert_eq!(r.apply(beat(vec![2]), "me/1", now + GAP, GAP), Reaction::Nothing);
        assert_eq!(r.apply(beat(vec![2]), "me/1", now + GAP * 2, GAP), Reaction::AskFor("a/1".into()));
        assert_eq!(r.apply(beat(vec![2]), "me/1", now + GAP * 2, GAP), Reaction::Nothing, "asked once per gap");
        // The full state replaces the shard's topics; the difference is announced here.
        let full = Incoming::Full {
            node: "a/1".into(),
            shard: 0,
            version: 2,
            topics: vec![("room:z".into(), one("carol", "r3"))],
        };
        let Reaction::Announce(changes) = r.apply(full, "me/1", now, GAP) else { panic!("a repair is announced") };
        assert_eq!(changes["room:x"], Change { joins: State::new(), leaves: one("alice", "r1") });
        assert_eq!(changes["room:z"], Change { joins: one("carol", "r3"), leaves: State::new() });
        assert!(r.remote("room:x").is_empty());
        assert_eq!(r.remote("room:z"), vec![one("carol", "r3")]);
        let again = Incoming::Full {
            node: "a/1".into(),
            shard: 0,
            version: 2,
            topics: vec![("room:z".into(), one("carol", "r3"))],
        };
        assert_eq!(r.apply(again, "me/1", now, GAP), Reaction::Nothing, "a full state already held changes nothing");
        let request =
            |target: Option<&str>| Incoming::Request { node: "a/1".into(), target: target.map(str::to_owned) };
        assert_eq!(r.apply(request(None), "me/1", now, GAP), Reaction::SendOurs);
        assert_eq!(r.apply(request(Some("me/1")), "me/1", now, GAP), Reaction::SendOurs);
        assert_eq!(r.apply(request(Some("b/1")), "me/1", now, GAP), Reaction::Nothing);
    }

    #[test]
    fn a_silent_node_leaves_with_one_change_per_topic_and_its_stragglers_are_ignored() {
        let (mut r, now) = (Replicas::default(), Instant::now());
        let timeout = Duration::from_secs(10);
        let mut two = one("alice", "r1");
        two.extend(one("bob", "r2"));
        r.apply(delta("a/1", 0, 1, vec![("room:x", two.clone()), ("room:y", one("alice", "r3"))]), "me/1", now, GAP);
        // A topic lives in one shard of its node; the node's other shards hold other topics.
        r.apply(delta("a/1", 1, 1, vec![("room:z", one("carol", "r4"))]), "me/1", now, GAP);
        r.apply(delta("b/1", 0, 1, vec![("room:x", one("dave", "r5"))]), "me/1", now, GAP);
        assert!(r.expire(now + timeout, timeout).is_empty(), "silent for exactly the timeout is not down yet");
        r.apply(Incoming::Heartbeat { node: "b/1".into(), versions: vec![1] }, "me/1", now + timeout, GAP);
        let down = r.expire(now + timeout + GAP, timeout);
        assert_eq!(down.keys().collect::<Vec<_>>(), ["room:x", "room:y", "room:z"], "one change per topic");
        assert_eq!(down["room:x"], Change { joins: State::new(), leaves: two }, "all of the node's leaves there");
        assert_eq!(down["room:z"].leaves, one("carol", "r4"), "from every shard");
        assert_eq!(r.remote("room:x"), vec![one("dave", "r5")], "the live node stays");
        assert!(r.remote("room:y").is_empty());

        // A late delta of the dead process is ignored; the same name restarted is a new peer,
        // whose state starts empty, so nothing of the old one comes back.
        let late = delta("a/1", 0, 2, vec![("room:x", one("alice", "r1"))]);
        assert_eq!(r.apply(late, "me/1", now + timeout * 2, GAP), Reaction::Nothing);
        assert_eq!(r.remote("room:x"), vec![one("dave", "r5")]);
        let reborn = Incoming::Heartbeat { node: "a/2".into(), versions: vec![0] };
        assert_eq!(r.apply(reborn, "me/1", now + timeout * 2, GAP), Reaction::AskFor("a/2".into()));
        assert_eq!(r.remote("room:x"), vec![one("dave", "r5")]);

        // A goodbye is a departure at once.
        let Reaction::Announce(bye) = r.apply(Incoming::Bye { node: "b/1".into() }, "me/1", now, GAP) else {
            panic!("a goodbye announces its leaves")
        };
        assert_eq!(bye["room:x"].leaves, one("dave", "r5"));
        assert!(r.remote("room:x").is_empty());
        // Once the down node stayed silent for another timeout it may come back (a healed
        // partition), announced by its full state.
        r.expire(now + timeout * 4, timeout);
        let healed = Incoming::Heartbeat { node: "a/1".into(), versions: vec![2] };
        assert_eq!(r.apply(healed, "me/1", now + timeout * 4, GAP), Reaction::AskFor("a/1".into()));
    }
}
