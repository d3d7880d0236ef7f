//! Presence (Phoenix.Presence semantics): who is on a topic, under which key, with which metas.
//!
//! Channels `track` a socket under a key with a meta map; every change reaches the topic's
//! subscribers as a `presence_diff` broadcast, coalesced per topic over a short window, and a
//! joining socket gets the whole `presence_state`. The engine sits behind the [`Tracker`] trait,
//! like pub/sub's broker, so a multi-node backend can replace [`LocalTracker`]; [`conformance`] is
//! the contract such a backend must pass, as a check that takes a factory. This module owns
//! presence state only; who may see a topic is the channels' business.
//!
//! Presences belong to a [`ConnectionId`], which names a socket across nodes. How the tracker
//! learns that a connection is gone is its own business too: each connection holds a [`Lease`]
//! the tracker gave it, and dropping the lease (the socket ended, or its actor crashed and was
//! dropped) makes the connection's presences leave. The local tracker acts on the drop; across
//! nodes, [`ClusterTracker`] replicates each node's presences to the others and drops those of
//! a node whose heartbeat stops, so a node that dies takes its presences with it.

mod cluster;
pub mod conformance;
mod local;
mod state;

use std::time::Duration;

use futures_util::future::LocalBoxFuture;
use serde::Deserialize;

pub use cluster::{ClusterTracker, Engine};
pub use local::LocalTracker;
pub use state::{Diff, TopicPresence};

use crate::error::Code;
use crate::protocol::Payload;
use crate::pubsub::ConnectionId;
pub use crate::pubsub::Occupancy;

/// The event that carries a topic's whole presence to a socket that just joined.
pub const PRESENCE_STATE: &str = "presence_state";
/// The broadcast event that carries presence changes.
pub const PRESENCE_DIFF: &str = crate::pubsub::event::PRESENCE_DIFF;

/// A presence's meta: a JSON object; `phx_ref` and `phx_ref_prev` are set by the tracker.
pub type Meta = serde_json::Map<String, serde_json::Value>;

/// A connection's hold on its presences, from [`Tracker::lease`]: while it is held they stay;
/// once it is dropped they all leave, even those the connection never untracked.
pub struct Lease {
    _release: Box<dyn Send>,
}

impl Lease {
    /// A lease whose end is `release` being dropped (a tracker's own guard type).
    pub fn new(release: impl Send + 'static) -> Self {
        Lease { _release: Box::new(release) }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lease")
    }
}

/// Why a presence call failed.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// This socket already has a presence under this key on this topic.
    #[error("already tracked")]
    AlreadyTracked,
    /// There is no presence to update.
    #[error("no presence")]
    NoPresence,
    /// The meta could not be encoded.
    #[error("invalid meta: {0}")]
    Invalid(String),
    /// The tracker is gone (the server is stopping).
    #[error("presence unavailable")]
    Unavailable,
}

impl PresenceError {
    /// The wire code: a bad meta is the client's; a missing or doubled presence is the
    /// server's own bookkeeping gone wrong, since channels track and untrack for the client.
    pub fn code(&self) -> Code {
        match self {
            PresenceError::Invalid(_) => Code::InvalidInput,
            PresenceError::Unavailable => Code::Unavailable,
            PresenceError::AlreadyTracked | PresenceError::NoPresence => Code::Internal,
        }
    }
}

/// A topic's presence as a joining socket gets it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The `presence_state` payload.
    pub state: Payload,
    /// How many keys are present.
    pub keys: usize,
}

/// A presence engine. Mutations are queued before the call returns, so a `track` followed by
/// an `untrack` from the same socket always apply in that order.
pub trait Tracker: Send + Sync + 'static {
    /// Opens `owner`'s lease; the connection holds it for as long as it lives and tracks only
    /// while it holds it.
    fn lease(&self, owner: &ConnectionId) -> Lease;
    /// Tracks `owner` under `key` on `topic`; resolves to the new `phx_ref`.
    fn track(
        &self,
        topic: &str,
        key: &str,
        owner: &ConnectionId,
        meta: Meta,
    ) -> LocalBoxFuture<'static, Result<String, PresenceError>>;
    /// Replaces the meta of `owner`'s presence under `key`; resolves to the new `phx_ref`.
    fn update(
        &self,
        topic: &str,
        key: &str,
        owner: &ConnectionId,
        meta: Meta,
    ) -> LocalBoxFuture<'static, Result<String, PresenceError>>;
    /// Removes `owner`'s presence under `key` (a no-op if there is none).
    fn untrack(&self, topic: &str, key: &str, owner: &ConnectionId);
    /// The topic's presences, for a socket already subscribed to its diffs.
    fn list(&self, topic: &str) -> LocalBoxFuture<'static, Result<Snapshot, PresenceError>>;
}

/// The smallest `replication_part_bytes`.
const MIN_PART_BYTES: usize = 16 * 1024;
/// The largest `replication_part_bytes`: NATS refuses messages over 1 MB unless told otherwise.
const MAX_PART_BYTES: usize = 8 * 1024 * 1024;

/// The `[presence]` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// Tracker shards, each on its own thread; topics are spread by hash.
    pub shards: usize,
    /// Changes to a topic within this window go out as one `presence_diff`.
    pub diff_window_ms: u64,
    /// With several nodes: how often a node tells the others it is alive, and its versions.
    pub heartbeat_ms: u64,
    /// With several nodes: a node not heard from for this long is down, its presences gone.
    pub node_timeout_ms: u64,
    /// With several nodes: the most bytes one replication message may hold; a bigger delta or
    /// full state goes out in parts (well below NATS's default 1 MB `max_payload`).
    pub replication_part_bytes: usize,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            shards: 1,
            diff_window_ms: 25,
            heartbeat_ms: 1_500,
            node_timeout_ms: 10_000,
            replication_part_bytes: 256 * 1024,
        }
    }
}

impl PresenceConfig {
    /// Checks the ranges; the error names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=64).contains(&self.shards) {
            return Err("shards must be 1..=64".into());
        }
        if self.diff_window_ms > 1_000 {
            return Err("diff_window_ms must be at most 1000".into());
        }
        if !(10..=60_000).contains(&self.heartbeat_ms) {
            return Err("heartbeat_ms must be 10..=60000".into());
        }
        // Two missed heartbeats at least, so one late beat on a busy node is not a death.
        if self.node_timeout_ms < 3 * self.heartbeat_ms || self.node_timeout_ms > 600_000 {
            return Err("node_timeout_ms must be at least 3 × heartbeat_ms and at most 600000".into());
        }
        // A floor keeps a big state from going out as thousands of tiny parts.
        if !(MIN_PART_BYTES..=MAX_PART_BYTES).contains(&self.replication_part_bytes) {
            return Err(format!("replication_part_bytes must be {MIN_PART_BYTES}..={MAX_PART_BYTES}"));
        }
        Ok(())
    }

    /// The heartbeat interval as a duration.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    /// The node timeout as a duration.
    pub fn node_timeout(&self) -> Duration {
        Duration::from_millis(self.node_timeout_ms)
    }

    /// The diff window as a duration.
    pub fn diff_window(&self) -> Duration {
        Duration::from_millis(self.diff_window_ms)
    }
}
