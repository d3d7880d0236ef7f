//! Presence across nodes: [`ClusterTracker`] keeps this node's presences in a [`LocalTracker`]
//! and a replica of every other node's, so `presence_state` on any node lists them all.
//!
//! The design is Phoenix.Tracker's, simplified. Each node owns its own entries and is the only
//! one that ever publishes them, on the internal topic [`PRESENCE_SYNC`] (no client may join or
//! broadcast it). A local track is applied locally at once, as on a single node. At each diff
//! window a shard publishes a *delta*: the metas that joined and left on each topic that
//! changed, numbered by the shard's version. A receiver applies a delta only on top of the one
//! before it (joins first, then leaves, matched by `phx_ref`, as phoenix.js does), and announces
//! it to its own sockets as that topic's `presence_diff`; a diff never crosses the broker
//! itself. Every `heartbeat_ms` the node publishes a *heartbeat* with each shard's version; a
//! receiver that finds itself behind (a lost delta, a version gap, a node it never heard of)
//! *requests* that node's *full* state, which each shard publishes in order with its deltas,
//! after closing its open window so the state is exactly the one its version names. A node
//! starting up requests everyone's.
//!
//! Message shapes, as JSON in a `presence_sync` event (`kind` tells them apart):
//! - `delta`: `{node, shard, version, topics: [[topic, {"joins": S, "leaves": S}], ...]}`
//! - `full`: `{node, shard, version, part, parts, topics: [[topic, S], ...]}`
//! - `heartbeat`: `{node, versions: [v, ...]}`; `request`: `{node, target}`; `bye`: `{node}`
//!
//! where `S` is a `presence_state` shape, `{key: {"metas": [...]}}`. No message exceeds
//! `replication_part_bytes` (save one holding a single meta bigger than that): a window's
//! changes too big for one delta go out as several, each with a version of its own (all joins
//! before all leaves, so their order still gives the window's result), and a full state goes
//! out as `parts` parts of one version, a topic's metas spread over as many as need be. The
//! receiver applies a full state once every part of that version has arrived, all at once, so
//! no socket ever sees half of it; parts of a newer version replace an unfinished one.
//!
//! Whether a topic is occupied (a user online, for `presence:<eid>`) is decided here for the
//! whole cluster: the shards hand their diffs to the replicator instead of broadcasting them,
//! and every diff announced on this node, its own or another node's, carries an [`Occupancy`]
//! that counts this node's presences and every replica. A user with a device on each of two
//! nodes stays online when one leaves, and goes offline once the last one goes, wherever it was
//! (including its node going down).
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, Addr, ArbiterHandle, AsyncContext, Context, Handler, Message, MessageResult};
use futures_util::future::LocalBoxFuture;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::local::Replicated;
use super::state::Grouped;
use super::{Lease, LocalTracker, Meta, PresenceConfig, PresenceError, Snapshot, TopicPresence, Tracker};
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

/// Metas by key, borrowed from a shard: one side of a topic's share of an outgoing message.
type Keyed<'a> = Vec<(&'a str, Vec<&'a RawValue>)>;

/// Serializes [`Keyed`] as `{key: {"metas": [...]}}`.
struct KeyedMap<'a>(&'a Keyed<'a>);

impl Serialize for KeyedMap<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, metas) in self.0 {
            map.serialize_entry(key, &MetaList(metas))?;
        }
        map.end()
    }
}

/// `{"metas": [...]}`.
struct MetaList<'a>(&'a [&'a RawValue]);

impl Serialize for MetaList<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("metas", self.0)?;
        map.end()
    }
}

/// A delta's word on one topic, as sent.
#[derive(Serialize)]
struct DeltaTopic<'a> {
    joins: KeyedMap<'a>,
    leaves: KeyedMap<'a>,
}

/// A replication message as sent: the metas borrowed from the shard.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Outgoing<'a> {
    Delta { node: &'a str, shard: u32, version: u64, topics: Vec<(&'a str, DeltaTopic<'a>)> },
    Full { node: &'a str, shard: u32, version: u64, part: u32, parts: u32, topics: Vec<(&'a str, KeyedMap<'a>)> },
    Heartbeat { node: &'a str, versions: &'a [u64] },
    Request { node: &'a str, target: Option<&'a str> },
    Bye { node: &'a str },
}

/// A replication message as received from another node.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Incoming {
    /// What joined and left on each topic of one shard that changed in a window.
    Delta { node: String, shard: u32, version: u64, topics: Vec<(String, Change)> },
    /// One part of every topic of one shard (an answer to a request).
    Full { node: String, shard: u32, version: u64, part: u32, parts: u32, topics: Vec<(String, State)> },
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
    publish_encoded(pubsub, Payload::json(message));
}

/// Publishes an encoded replication message to every node.
fn publish_encoded(pubsub: &PubSub, message: Payload) {
    pubsub.publish(Broadcast::new(PRESENCE_SYNC, Event::raw(SYNC_EVENT, message)), None);
}

/// What a part spends besides its topics (kind, node aside, numbers, brackets), at most.
const PART_OVERHEAD: usize = 128;
/// What a topic spends in a part besides its name and metas: `["",{"joins":{},"leaves":{}}],`.
const TOPIC_OVERHEAD: usize = 32;
/// What a key spends besides its name and metas: `"":{"metas":[]},`.
const KEY_OVERHEAD: usize = 16;

/// The length of `s` as a JSON string, at most (every escape counted at its longest).
fn json_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// One topic's share of a part: the metas present (or joined), and those that left.
#[derive(Default)]
struct Share<'a> {
    joins: Keyed<'a>,
    leaves: Keyed<'a>,
}

/// One part's topics.
type Part<'a> = Vec<(&'a str, Share<'a>)>;

/// Cuts a shard's metas into parts that each encode within `bound` bytes. Metas arrive grouped
/// by topic and by key; a topic or a key cut in two appears in both parts.
struct Packer<'a> {
    bound: usize,
    /// What an empty part costs.
    base: usize,
    done: Vec<Part<'a>>,
    current: Part<'a>,
    size: usize,
}

impl<'a> Packer<'a> {
    fn new(node: &str, bound: usize) -> Self {
        let base = PART_OVERHEAD + json_len(node);
        Packer { bound, base, done: Vec::new(), current: Vec::new(), size: base }
    }

    /// Adds `meta` under `key` on `topic`, as left or as joined (or present).
    fn push(&mut self, topic: &'a str, left: bool, key: &'a str, meta: &'a RawValue) {
        let meta_cost = meta.get().len() + 1;
        let key_cost = json_len(key) + KEY_OVERHEAD;
        let fresh = json_len(topic) + TOPIC_OVERHEAD + key_cost + meta_cost;
        let mut cost = match self.current.last() {
            Some((t, share)) if *t == topic => {
                let side = if left { &share.leaves } else { &share.joins };
                match side.last() {
                    Some((k, _)) if *k == key => meta_cost,
                    _ => key_cost + meta_cost,
                }
            }
            _ => fresh,
        };
        if self.size + cost > self.bound && !self.current.is_empty() {
            self.done.push(std::mem::take(&mut self.current));
            self.size = self.base;
            cost = fresh;
        }
        self.size += cost;
        if self.current.last().is_none_or(|(t, _)| *t != topic) {
            self.current.push((topic, Share::default()));
        }
        let Some((_, share)) = self.current.last_mut() else { return };
        let side = if left { &mut share.leaves } else { &mut share.joins };
        match side.last_mut() {
            Some((k, metas)) if *k == key => metas.push(meta),
            _ => side.push((key, vec![meta])),
        }
    }

    /// The parts, at least one (empty when nothing was pushed).
    fn finish(mut self) -> Vec<Part<'a>> {
        self.done.push(self.current);
        self.done
    }
}

/// A shard's deltas for one window: the metas that joined and left on each topic that changed,
/// in as many messages as `bound` takes, each bumping `version`.
pub(super) fn publish_deltas(
    pubsub: &PubSub,
    shard: u32,
    version: &AtomicU64,
    bound: usize,
    changes: &[(&str, &Grouped, &Grouped)],
) {
    for message in deltas(pubsub.node_id().as_str(), shard, version, bound, changes) {
        publish_encoded(pubsub, message);
    }
}

/// A shard's full state at `version`, in as many parts as `bound` takes.
pub(super) fn publish_full<'a>(
    pubsub: &PubSub,
    shard: u32,
    version: u64,
    bound: usize,
    topics: impl Iterator<Item = (&'a str, &'a TopicPresence)>,
) {
    for message in fulls(pubsub.node_id().as_str(), shard, version, bound, topics) {
        publish_encoded(pubsub, message);
    }
}

/// The delta messages of [`publish_deltas`], encoded.
fn deltas(
    node: &str,
    shard: u32,
    version: &AtomicU64,
    bound: usize,
    changes: &[(&str, &Grouped, &Grouped)],
) -> Vec<Payload> {
    let mut packer = Packer::new(node, bound);
    // All joins before all leaves: a meta that joined and left inside the window is gone once
    // every part is applied, even when the two landed in different parts.
    for left in [false, true] {
        for &(topic, joins, leaves) in changes {
            for (key, metas) in if left { leaves } else { joins } {
                for meta in metas {
                    packer.push(topic, left, key, meta);
                }
            }
        }
    }
    let parts = packer.finish().into_iter().filter(|part| !part.is_empty());
    parts
        .map(|part| {
            let number = version.fetch_add(1, Ordering::SeqCst) + 1;
            let topics = part
                .iter()
                .map(|(topic, share)| {
                    (*topic, DeltaTopic { joins: KeyedMap(&share.joins), leaves: KeyedMap(&share.leaves) })
                })
                .collect();
            Payload::json(&Outgoing::Delta { node, shard, version: number, topics })
        })
        .collect()
}

/// The parts of [`publish_full`], encoded.
fn fulls<'a>(
    node: &str,
    shard: u32,
    version: u64,
    bound: usize,
    topics: impl Iterator<Item = (&'a str, &'a TopicPresence)>,
) -> Vec<Payload> {
    let mut packer = Packer::new(node, bound);
    for (topic, presence) in topics {
        for (key, meta) in presence.metas() {
            packer.push(topic, false, key, meta);
        }
    }
    let parts = packer.finish();
    let count = u32::try_from(parts.len()).unwrap_or(u32::MAX);
    (0u32..)
        .zip(&parts)
        .map(|(part, shares)| {
            let topics = shares.iter().map(|(topic, share)| (*topic, KeyedMap(&share.joins))).collect();
            Payload::json(&Outgoing::Full { node, shard, version, part, parts: count, topics })
        })
        .collect()
}

/// One diff of this node's shards, for the replicator to announce here.
pub(super) struct LocalDiff {
    /// The topic.
    pub topic: String,
    /// The `presence_diff` payload.
    pub diff: Payload,
    /// Whether this node still holds a presence on the topic.
    pub occupied: bool,
    /// When the diff went out (ms since the epoch).
    pub at: i64,
}

/// A shard's diffs of one window.
pub(super) struct LocalDiffs(pub Vec<LocalDiff>);

impl Message for LocalDiffs {
    type Result = ();
}

/// What changed on one topic: a delta's word on it, or a change of this node's replicas.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct Change {
    #[serde(default)]
    joins: State,
    #[serde(default)]
    leaves: State,
}

impl Change {
    fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty()
    }
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

/// The parts of one full state of one shard received so far.
struct Assembly {
    version: u64,
    parts: u32,
    got: BTreeMap<u32, Vec<(String, State)>>,
}

/// One other node, as its messages describe it.
struct Peer {
    /// Each shard's version, as applied here.
    versions: HashMap<u32, u64>,
    /// Each shard's topics with entries here.
    shard_topics: HashMap<u32, HashSet<String>>,
    /// Each shard's full state being received, part by part.
    assembling: HashMap<u32, Assembly>,
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
            assembling: HashMap::new(),
            last_seen: now,
            last_beat: Vec::new(),
            asked_at: None,
        }
    }

    fn version(&self, shard: u32) -> u64 {
        self.versions.get(&shard).copied().unwrap_or(0)
    }
}

/// The replicas of every other node's presences, and what this node's sockets were last told
/// of each topic's occupancy. Pure: the caller passes the time.
#[derive(Default)]
struct Replicas {
    peers: HashMap<String, Peer>,
    /// Topic → node → that node's state there.
    topics: HashMap<String, HashMap<String, State>>,
    /// Nodes declared down, and when: what they send for one more timeout is ignored.
    down: HashMap<String, Instant>,
    /// The topics where this node's own shards hold a presence.
    here: HashSet<String>,
    /// The topics last announced here as occupied (by any node).
    shown: HashSet<String>,
}

/// The metas of one key's presence, if it has the shape.
fn metas_mut(presence: &mut Value) -> Option<&mut Vec<Value>> {
    presence.get_mut("metas").and_then(Value::as_array_mut)
}

/// The metas of one key's presence, empty if it has not the shape.
fn metas_of(presence: &Value) -> &[Value] {
    presence.get("metas").and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn ref_of(meta: &Value) -> Option<&str> {
    meta.get("phx_ref").and_then(Value::as_str)
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

/// Applies a delta's word on a topic to one node's state there: the joins whose refs it lacks,
/// then the leaves by ref.
fn apply_change(state: &mut State, change: &Change) {
    for (key, presence) in &change.joins {
        let held = state.entry(key.clone()).or_insert_with(|| serde_json::json!({ "metas": [] }));
        if metas_mut(held).is_none() {
            *held = serde_json::json!({ "metas": [] });
        }
        let Some(metas) = metas_mut(held) else { continue };
        for meta in metas_of(presence) {
            if ref_of(meta).is_none_or(|r| !metas.iter().any(|m| ref_of(m) == Some(r))) {
                metas.push(meta.clone());
            }
        }
        if metas.is_empty() {
            state.remove(key);
        }
    }
    for (key, presence) in &change.leaves {
        let gone: HashSet<&str> = metas_of(presence).iter().filter_map(ref_of).collect();
        let Some(metas) = state.get_mut(key).and_then(metas_mut) else { continue };
        metas.retain(|m| ref_of(m).is_none_or(|r| !gone.contains(r)));
        if metas.is_empty() {
            state.remove(key);
        }
    }
}

/// The refs a state holds.
fn refs(state: &State) -> HashSet<String> {
    state.values().flat_map(metas_of).filter_map(|m| ref_of(m).map(str::to_owned)).collect()
}

/// The metas of `state` whose refs are not in `except`, keyed as in `state`.
fn without(state: &State, except: &HashSet<String>) -> State {
    let mut kept = State::new();
    for (key, presence) in state {
        let metas: Vec<Value> =
            metas_of(presence).iter().filter(|m| ref_of(m).is_none_or(|r| !except.contains(r))).cloned().collect();
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
                if version > have + 1 {
                    // A delta holds changes only: applied past a gap it would keep what the
                    // missed ones removed. The full state repairs the replica, and the deltas
                    // after it apply from there.
                    return self.ask(&node, now, ask_gap);
                }
                peer.versions.insert(shard, version);
                let mut changes: BTreeMap<String, Change> = BTreeMap::new();
                for (topic, change) in topics {
                    if change.is_empty() {
                        continue;
                    }
                    self.change(&node, shard, &topic, &change);
                    let told = changes.entry(topic).or_default();
                    merge_into(&mut told.joins, change.joins);
                    merge_into(&mut told.leaves, change.leaves);
                }
                if changes.is_empty() { Reaction::Nothing } else { Reaction::Announce(changes) }
            }
            Incoming::Full { node, shard, version, part, parts, topics } => {
                let peer = self.peers.entry(node.clone()).or_insert_with(|| Peer::new(now));
                peer.last_seen = now;
                // Versions are applied in order, so a replica at this version already holds it.
                if version <= peer.version(shard) || part >= parts {
                    return Reaction::Nothing;
                }
                let assembly =
                    peer.assembling.entry(shard).or_insert_with(|| Assembly { version, parts, got: BTreeMap::new() });
                if (assembly.version, assembly.parts) != (version, parts) {
                    *assembly = Assembly { version, parts, got: BTreeMap::new() };
                }
                assembly.got.insert(part, topics);
                if assembly.got.len() < usize::try_from(parts).unwrap_or(usize::MAX) {
                    return Reaction::Nothing;
                }
                let Some(assembly) = peer.assembling.remove(&shard) else { return Reaction::Nothing };
                let mut whole: BTreeMap<String, State> = BTreeMap::new();
                for (topic, state) in assembly.got.into_values().flatten() {
                    merge_into(whole.entry(topic).or_default(), state);
                }
                self.replace(&node, shard, version, whole)
            }
        }
    }

    /// Replaces `node`'s replica of one shard by its full state at `version`; the difference
    /// is what this node's sockets are told.
    fn replace(&mut self, node: &str, shard: u32, version: u64, whole: BTreeMap<String, State>) -> Reaction {
        let Some(peer) = self.peers.get_mut(node) else { return Reaction::Nothing };
        peer.versions.insert(shard, version);
        let old_topics = peer.shard_topics.remove(&shard).unwrap_or_default();
        let mut old: HashMap<String, State> = HashMap::new();
        for topic in old_topics {
            if let Some(state) = self.take(node, &topic) {
                old.insert(topic, state);
            }
        }
        let mut changes = BTreeMap::new();
        for (topic, state) in whole {
            let before = old.remove(&topic).unwrap_or_default();
            let change = Change { joins: without(&state, &refs(&before)), leaves: without(&before, &refs(&state)) };
            if !change.is_empty() {
                changes.insert(topic.clone(), change);
            }
            self.set(node, shard, topic, state);
        }
        for (topic, leaves) in old {
            changes.insert(topic, Change { joins: State::new(), leaves });
        }
        // A replica missing what the deltas said is repaired for this node's sockets too.
        if changes.is_empty() { Reaction::Nothing } else { Reaction::Announce(changes) }
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

    /// Applies a delta's word on `topic` to `node`'s state there.
    fn change(&mut self, node: &str, shard: u32, topic: &str, change: &Change) {
        let Some(peer) = self.peers.get_mut(node) else { return };
        let nodes = self.topics.entry(topic.to_owned()).or_default();
        let state = nodes.entry(node.to_owned()).or_default();
        apply_change(state, change);
        if !state.is_empty() {
            peer.shard_topics.entry(shard).or_default().insert(topic.to_owned());
            return;
        }
        nodes.remove(node);
        if nodes.is_empty() {
            self.topics.remove(topic);
        }
        if let Some(topics) = peer.shard_topics.get_mut(&shard) {
            topics.remove(topic);
        }
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

    /// Records whether this node's own shards hold a presence on `topic`.
    fn here(&mut self, topic: &str, occupied: bool) {
        if occupied {
            if !self.here.contains(topic) {
                self.here.insert(topic.to_owned());
            }
        } else {
            self.here.remove(topic);
        }
    }

    /// The occupancy of `topic` for the diff about to be announced here: whether the last one
    /// left it occupied, and whether any node (this one or a replica) holds a presence now.
    fn turn(&mut self, topic: &str) -> (bool, bool) {
        let occupied = self.here.contains(topic) || self.topics.contains_key(topic);
        let was_occupied = if occupied {
            let was = self.shown.contains(topic);
            if !was {
                self.shown.insert(topic.to_owned());
            }
            was
        } else {
            self.shown.remove(topic)
        };
        (was_occupied, occupied)
    }
}

/// Asks the replicator for the other nodes' states on a topic.
struct Remote(String);

impl Message for Remote {
    type Result = Vec<State>;
}

/// The actor that holds the replicas: it hears the other nodes, beats for this one, declares
/// silent nodes down, and announces every presence diff of this node.
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

    fn tick(&mut self, _: &mut Context<Self>) {
        let versions = self.local.versions();
        publish(&self.pubsub, &Outgoing::Heartbeat { node: self.me(), versions: &versions });
        let down = self.replicas.expire(Instant::now(), self.timeout);
        if !down.is_empty() {
            tracing::warn!(topics = down.len(), "presence: a node went silent; its presences left");
        }
        self.announce(down);
    }

    /// Tells this node's sockets of the replicas' changes, one diff per topic.
    fn announce(&mut self, changes: BTreeMap<String, Change>) {
        let at = self.clock.now_millis();
        for (topic, change) in changes {
            self.tell(topic, Payload::json(&change), at);
        }
    }

    /// Publishes one diff to this node's sockets, with the cluster's occupancy of its topic.
    fn tell(&mut self, topic: String, diff: Payload, at: i64) {
        let (was_occupied, occupied) = self.replicas.turn(&topic);
        let occupancy = Occupancy { was_occupied, occupied, at };
        self.pubsub.publish_local(Broadcast::new(topic, Event::PresenceDiff { diff, occupancy }));
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

    fn handle(&mut self, Deliver(broadcast): Deliver, _: &mut Context<Self>) {
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
            Reaction::Announce(changes) => self.announce(changes),
        }
    }
}

impl Handler<LocalDiffs> for Replicator {
    type Result = ();

    fn handle(&mut self, LocalDiffs(diffs): LocalDiffs, _: &mut Context<Self>) {
        for LocalDiff { topic, diff, occupied, at } in diffs {
            self.replicas.here(&topic, occupied);
            self.tell(topic, diff, at);
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
        // The replicator's address first: the shards hand it their diffs, and it needs the
        // shards for their versions and full states.
        let (sender, receiver) = actix::dev::channel::channel(16);
        let replicator = Addr::new(sender);
        let replicated =
            Replicated { part_bytes: config.replication_part_bytes, replicator: replicator.clone().recipient() };
        let local = LocalTracker::start_replicated(config, pubsub.clone(), Arc::clone(&clock), replicated);
        let arbiter = actix::Arbiter::new().handle();
        let (heartbeat, timeout, tracker) = (config.heartbeat(), config.node_timeout(), local.clone());
        arbiter.spawn_fn(move || {
            Context::with_receiver(receiver).run(Replicator {
                pubsub,
                local: tracker,
                replicas: Replicas::default(),
                heartbeat,
                timeout,
                clock,
            });
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
    use crate::pubsub::NodeId;

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

    /// A delta whose topics gain these joins.
    fn delta(node: &str, shard: u32, version: u64, topics: Vec<(&str, State)>) -> Incoming {
        let topics =
            topics.into_iter().map(|(t, joins)| (t.to_owned(), Change { joins, leaves: State::new() })).collect();
        Incoming::Delta { node: node.into(), shard, version, topics }
    }

    /// A delta whose topics lose these metas.
    fn leave(node: &str, shard: u32, version: u64, topics: Vec<(&str, State)>) -> Incoming {
        let topics =
            topics.into_iter().map(|(t, leaves)| (t.to_owned(), Change { joins: State::new(), leaves })).collect();
        Incoming::Delta { node: node.into(), shard, version, topics }
    }

    /// A full state in one part.
    fn full(node: &str, shard: u32, version: u64, topics: Vec<(&str, State)>) -> Incoming {
        let topics = topics.into_iter().map(|(t, s)| (t.to_owned(), s)).collect();
        Incoming::Full { node: node.into(), shard, version, part: 0, parts: 1, topics }
    }

    /// What the wire carries back, as a receiver parses it.
    fn parse(message: &Payload) -> Incoming {
        serde_json::from_str(message.as_json_str().unwrap()).unwrap()
    }

    fn merged(r: &Replicas, topic: &str) -> State {
        let mut all = State::new();
        for s in r.remote(topic) {
            merge_into(&mut all, s);
        }
        all
    }

    fn owner(seq: u64) -> ConnectionId {
        thread_local!(static NODE: NodeId = NodeId::new("test"));
        NODE.with(|node| ConnectionId::new(node.clone(), seq))
    }

    /// A topic with `n` presences, each with a meta of about `pad` bytes.
    fn crowd(n: u64, pad: usize) -> TopicPresence {
        let mut presence = TopicPresence::default();
        for i in 0..n {
            let mut meta = Meta::new();
            meta.insert("pad".into(), "x".repeat(pad).into());
            // A few keys with several metas, so keys are cut across parts too.
            presence.track(&format!("user{}", i / 3), &owner(i), meta).unwrap();
        }
        presence
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
        assert!(defaults.replication_part_bytes <= 512 * 1024, "well below NATS's 1 MB");
        let huge = PresenceConfig { replication_part_bytes: 64 << 20, ..PresenceConfig::default() };
        assert!(huge.validate().unwrap_err().contains("replication_part_bytes"));
    }

    #[test]
    fn the_wire_messages_parse_back_and_garbage_is_refused() {
        let mut presence = TopicPresence::default();
        presence.track("k", &owner(1), Meta::new()).unwrap();
        let diff = presence.take_diff().unwrap();
        let version = AtomicU64::new(6);
        let sent = deltas("n/1", 2, &version, 1 << 20, &[("room:a", &diff.joins, &diff.leaves)]);
        assert_eq!(sent.len(), 1);
        let Incoming::Delta { node, shard, version: v, topics } = parse(&sent[0]) else { panic!("not a delta") };
        assert_eq!((node.as_str(), shard, v), ("n/1", 2, 7));
        assert_eq!(version.load(Ordering::SeqCst), 7, "the shard's version moved with the delta");
        let expected: Value = serde_json::from_str(diff.payload.as_json_str().unwrap()).unwrap();
        assert_eq!(serde_json::to_value(&topics[0].1).unwrap(), expected, "a delta's topic is the diff itself");
        let parts = fulls("n/1", 2, 7, 1 << 20, [("room:a", &presence)].into_iter());
        let Incoming::Full { version, part, parts: count, topics, .. } = parse(&parts[0]) else { panic!("not a full") };
        assert_eq!((version, part, count), (7, 0, 1));
        assert_eq!(topics[0].1.keys().collect::<Vec<_>>(), ["k"]);
        let empty = fulls("n/1", 0, 0, 1 << 20, std::iter::empty());
        assert!(matches!(parse(&empty[0]), Incoming::Full { parts: 1, ref topics, .. } if topics.is_empty()));
        let back = parse(&Payload::json(&Outgoing::Request { node: "n/1", target: None }));
        assert!(matches!(back, Incoming::Request { target: None, .. }));
        assert!(matches!(parse(&Payload::json(&Outgoing::Bye { node: "n/1" })), Incoming::Bye { .. }));
        for garbage in [
            "{}",
            r#"{"kind":"delta"}"#,
            "[1]",
            r#"{"kind":"nope","node":"n"}"#,
            r#"{"kind":"full","node":"n","shard":0,"version":1,"topics":[]}"#,
        ] {
            assert!(serde_json::from_str::<Incoming>(garbage).is_err(), "{garbage}");
        }
    }

    #[test]
    fn a_big_full_state_goes_in_bounded_parts_applied_only_once_all_arrived() {
        let bound = 16 * 1024;
        let (big, small) = (crowd(600, 100), crowd(4, 10));
        let topics = [("room:big", &big), ("room:small", &small)];
        let parts = fulls("a/1", 0, 9, bound, topics.into_iter());
        let whole: usize = parts.iter().map(|p| p.as_json_str().unwrap().len()).sum();
        assert!(whole > 4 * bound, "the state is several bounds big: {whole}");
        assert!(parts.len() > 4);
        for part in &parts {
            let len = part.as_json_str().unwrap().len();
            assert!(len <= bound, "a part of {len} bytes over {bound}");
        }

        let (mut r, now) = (Replicas::default(), Instant::now());
        let (last, rest) = parts.split_last().unwrap();
        for part in rest {
            assert_eq!(r.apply(parse(part), "me/1", now, GAP), Reaction::Nothing);
            assert!(r.remote("room:big").is_empty(), "nothing shows before the last part");
        }
        // A repeated part changes nothing.
        assert_eq!(r.apply(parse(&rest[0]), "me/1", now, GAP), Reaction::Nothing);
        let Reaction::Announce(changes) = r.apply(parse(last), "me/1", now, GAP) else { panic!("announced") };
        assert_eq!(changes["room:big"].joins.len(), 200, "every key, in one diff");
        let metas: usize = merged(&r, "room:big").values().map(|p| metas_of(p).len()).sum();
        assert_eq!(metas, 600, "every meta, each once");
        assert_eq!(merged(&r, "room:small").len(), 2);
        assert_eq!(r.peers["a/1"].version(0), 9);
        // The same version again is already held.
        assert_eq!(r.apply(parse(&parts[0]), "me/1", now, GAP), Reaction::Nothing);
        assert!(r.peers["a/1"].assembling.is_empty());
    }

    #[test]
    fn an_unfinished_full_state_gives_way_to_a_newer_one() {
        let bound = 16 * 1024;
        let (old, new) = (crowd(300, 100), crowd(30, 100));
        let stale = fulls("a/1", 0, 3, bound, [("room:x", &old)].into_iter());
        let fresh = fulls("a/1", 0, 5, bound, [("room:y", &new)].into_iter());
        assert!(stale.len() > 1 && fresh.len() == 1);
        let (mut r, now) = (Replicas::default(), Instant::now());
        assert_eq!(r.apply(parse(&stale[0]), "me/1", now, GAP), Reaction::Nothing);
        assert!(matches!(r.apply(parse(&fresh[0]), "me/1", now, GAP), Reaction::Announce(_)));
        for part in &stale[1..] {
            assert_eq!(r.apply(parse(part), "me/1", now, GAP), Reaction::Nothing, "older than what is held");
        }
        assert!(r.remote("room:x").is_empty(), "no half of the old state");
        assert_eq!(merged(&r, "room:y").len(), 10);
    }

    #[test]
    fn a_big_window_goes_in_bounded_deltas_whose_order_keeps_its_result() {
        let bound = 16 * 1024;
        let mut presence = crowd(300, 100);
        presence.take_diff();
        let start = fulls("a/1", 0, 0, 1 << 20, [("room:x", &presence)].into_iter());
        // One window: 300 more join, the first 300 leave, and one joins and leaves again.
        for i in 300..600 {
            presence.track(&format!("late{i}"), &owner(i), Meta::new()).unwrap();
        }
        for i in 0..300 {
            presence.untrack(&format!("user{}", i / 3), &owner(i));
        }
        presence.track("brief", &owner(1_000), Meta::new()).unwrap();
        presence.untrack("brief", &owner(1_000));
        let diff = presence.take_diff().unwrap();
        let version = AtomicU64::new(0);
        let sent = deltas("a/1", 0, &version, bound, &[("room:x", &diff.joins, &diff.leaves)]);
        assert!(sent.len() > 1, "cut in parts");
        assert!(sent.iter().all(|m| m.as_json_str().unwrap().len() <= bound));
        assert_eq!(version.load(Ordering::SeqCst), sent.len() as u64, "a version each");

        // A replica that held the state before the window ends at the state after it.
        let (mut r, now) = (Replicas::default(), Instant::now());
        r.apply(Incoming::Heartbeat { node: "a/1".into(), versions: vec![0] }, "me/1", now, GAP);
        // A full state at 0 is empty in a real shard (version 0 had no delta): this one is
        // seeded by hand, as the state before the window.
        let Incoming::Full { topics, .. } = parse(&start[0]) else { panic!("not a full") };
        r.replace("a/1", 0, 0, topics.into_iter().collect());
        for message in &sent {
            r.apply(parse(message), "me/1", now, GAP);
        }
        let after = merged(&r, "room:x");
        let truth: State = serde_json::from_str(presence.snapshot().as_json_str().unwrap()).unwrap();
        assert_eq!(after.len(), 300);
        assert_eq!(refs(&after), refs(&truth), "the replica is the shard's state");
        assert!(!after.contains_key("brief"), "joined and left in the window: gone");
    }

    #[test]
    fn deltas_apply_in_version_order_and_a_gap_waits_for_the_full_state() {
        let (mut r, now) = (Replicas::default(), Instant::now());
        // A node never heard of, whose first delta is its first: applied.
        let first = r.apply(delta("a/1", 0, 1, vec![("room:x", one("alice", "ra"))]), "me/1", now, GAP);
        let Reaction::Announce(told) = first else { panic!("a delta is announced") };
        assert_eq!(told["room:x"], Change { joins: one("alice", "ra"), leaves: State::new() });
        r.apply(delta("b/1", 0, 1, vec![("room:x", one("alice", "rb"))]), "me/1", now, GAP);
        assert_eq!(merged(&r, "room:x")["alice"]["metas"].as_array().map(Vec::len), Some(2), "a meta from each node");
        // A join of a held ref is not doubled; a repeated version is ignored.
        r.apply(delta("a/1", 0, 2, vec![("room:x", one("alice", "ra"))]), "me/1", now, GAP);
        assert_eq!(
            r.apply(delta("a/1", 0, 2, vec![("room:x", one("ghost", "rg"))]), "me/1", now, GAP),
            Reaction::Nothing
        );
        assert_eq!(merged(&r, "room:x")["alice"]["metas"].as_array().map(Vec::len), Some(2));
        assert!(!merged(&r, "room:x").contains_key("ghost"));
        // Version 4 comes before 3: not applied, the full state is asked for.
        let early = r.apply(leave("a/1", 0, 4, vec![("room:x", one("alice", "ra"))]), "me/1", now, GAP);
        assert_eq!(early, Reaction::AskFor("a/1".into()));
        assert_eq!(r.peers["a/1"].version(0), 2);
        assert_eq!(r.apply(delta("a/1", 0, 5, vec![]), "me/1", now, GAP), Reaction::Nothing, "asked once per gap");
        // The full state at 5 replaces the shard's topics; the deltas after it apply.
        let repaired = r.apply(full("a/1", 0, 5, vec![("room:y", one("carol", "rc"))]), "me/1", now, GAP);
        let Reaction::Announce(changes) = repaired else { panic!("a repair is announced") };
        assert_eq!(changes["room:x"], Change { joins: State::new(), leaves: one("alice", "ra") });
        assert_eq!(changes["room:y"], Change { joins: one("carol", "rc"), leaves: State::new() });
        assert_eq!(r.remote("room:x"), vec![one("alice", "rb")], "b's stays");
        r.apply(leave("a/1", 0, 6, vec![("room:y", one("carol", "rc"))]), "me/1", now, GAP);
        assert!(r.remote("room:y").is_empty(), "the last leave takes the topic");
        assert!(r.peers["a/1"].shard_topics[&0].is_empty());
        // Own messages are ignored.
        assert_eq!(r.apply(delta("me/1", 0, 1, vec![("room:z", one("me", "r"))]), "me/1", now, GAP), Reaction::Nothing);
        assert!(r.remote("room:z").is_empty());
    }

    #[test]
    fn a_heartbeat_ahead_asks_for_the_full_state_once_per_gap() {
        let (mut r, now) = (Replicas::default(), Instant::now());
        let beat = |versions: Vec<u64>| Incoming::Heartbeat { node: "a/1".into(), versions };
        assert_eq!(r.apply(beat(vec![0]), "me/1", now, GAP), Reaction::AskFor("a/1".into()), "a new node");
        r.apply(delta("a/1", 0, 1, vec![("room:x", one("alice", "r1"))]), "me/1", now, GAP);
        // Delta 2 is lost: the heartbeat that counts it may outrun a delta, so only the next asks.
        assert_eq!(r.apply(beat(vec![2]), "me/1", now + GAP, GAP), Reaction::Nothing);
        assert_eq!(r.apply(beat(vec![2]), "me/1", now + GAP * 2, GAP), Reaction::AskFor("a/1".into()));
        assert_eq!(r.apply(beat(vec![2]), "me/1", now + GAP * 2, GAP), Reaction::Nothing, "asked once per gap");
        let request =
            |target: Option<&str>| Incoming::Request { node: "a/1".into(), target: target.map(str::to_owned) };
        assert_eq!(r.apply(request(None), "me/1", now, GAP), Reaction::SendOurs);
        assert_eq!(r.apply(request(Some("me/1")), "me/1", now, GAP), Reaction::SendOurs);
        assert_eq!(r.apply(request(Some("b/1")), "me/1", now, GAP), Reaction::Nothing);
    }

    #[test]
    fn a_topic_is_occupied_while_any_node_holds_a_presence_there() {
        let (mut r, now) = (Replicas::default(), Instant::now());
        let topic = "presence:alice";
        // alice's phone on this node, her laptop on a/1.
        r.here(topic, true);
        assert_eq!(r.turn(topic), (false, true), "she comes online");
        r.apply(delta("a/1", 0, 1, vec![(topic, one("laptop", "rl"))]), "me/1", now, GAP);
        assert_eq!(r.turn(topic), (true, true), "a second device changes nothing");
        // The phone leaves here: she stays online, so no offline and no last-seen.
        r.here(topic, false);
        assert_eq!(r.turn(topic), (true, true));
        // The phone comes back, then the laptop leaves a/1: still online.
        r.here(topic, true);
        assert_eq!(r.turn(topic), (true, true));
        r.apply(leave("a/1", 0, 2, vec![(topic, one("laptop", "rl"))]), "me/1", now, GAP);
        assert_eq!(r.turn(topic), (true, true));
        // The last device, here, leaves: offline.
        r.here(topic, false);
        assert_eq!(r.turn(topic), (true, false));
        // Only on a/1, which then dies: offline when its node goes.
        r.apply(delta("a/1", 0, 3, vec![(topic, one("laptop", "rl2"))]), "me/1", now, GAP);
        assert_eq!(r.turn(topic), (false, true));
        let down = r.expire(now + Duration::from_secs(11), Duration::from_secs(10));
        assert_eq!(down.keys().collect::<Vec<_>>(), [topic]);
        assert_eq!(r.turn(topic), (true, false));
        assert!(r.shown.is_empty() && r.here.is_empty(), "nothing kept for empty topics");
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

        // A late delta or full of the dead process is ignored; the same name restarted is a new
        // peer, whose state starts empty, so nothing of the old one comes back.
        let late = delta("a/1", 0, 2, vec![("room:x", one("alice", "r1"))]);
        assert_eq!(r.apply(late, "me/1", now + timeout * 2, GAP), Reaction::Nothing);
        let late = full("a/1", 0, 3, vec![("room:x", one("alice", "r1"))]);
        assert_eq!(r.apply(late, "me/1", now + timeout * 2, GAP), Reaction::Nothing);
        assert_eq!(r.remote("room:x"), vec![one("dave", "r5")]);
        let reborn = Incoming::Heartbeat { node: "a/2".into(), versions: vec![0] };
        assert_eq!(r.apply(reborn, "me/1", now + timeout * 2, GAP), Reaction::AskFor("a/2".into()));
        assert_eq!(r.apply(full("a/2", 0, 0, vec![]), "me/1", now + timeout * 2, GAP), Reaction::Nothing);
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
        let back = r.apply(full("a/1", 0, 2, vec![("room:x", one("alice", "r1"))]), "me/1", now + timeout * 4, GAP);
        assert!(matches!(back, Reaction::Announce(ref c) if c["room:x"].joins == one("alice", "r1")));
    }
}
