//! The `[cluster]` settings and what the networked brokers share: the choice of a broker from
//! its URL (Redis or NATS, each behind its Cargo feature), the safe mapping of a topic onto a
//! channel or subject name, the thread the brokers' client tasks run on, and the bounded,
//! ordered outbox a node's broadcasts leave through.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use super::{Broadcast, Broker, Inbound, InterestTaken};
use crate::store::Backend;

/// The `[cluster]` section: which broker joins this node to the others, and its timings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The broker's URL: `redis://host:port[/db]` or `nats://host:port` (`COURIER_BROKER`).
    pub broker: String,
    /// Prefixes every channel or subject, so two clusters can share one broker server.
    pub namespace: String,
    /// Broadcasts queued for the broker before new ones are dropped (and counted).
    pub publish_queue: usize,
    /// How long one connection attempt may take.
    pub connect_timeout_ms: u64,
    /// The longest pause between reconnection attempts (they start at 100 ms and double).
    pub reconnect_max_ms: u64,
    /// How often an idle connection is pinged, so a server that went silent is noticed.
    pub ping_interval_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            broker: String::new(),
            namespace: "courier".into(),
            publish_queue: 8192,
            connect_timeout_ms: 2_000,
            reconnect_max_ms: 5_000,
            ping_interval_ms: 5_000,
        }
    }
}

/// Which kind of server a broker URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// Redis pub/sub (`redis://`).
    Redis,
    /// NATS core subjects (`nats://`).
    Nats,
}

/// Why the `[cluster]` settings were refused or a broker could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The URL's scheme names no broker Courier knows.
    #[error("cluster.broker must be a redis:// or nats:// URL, not {0:?}")]
    UnknownScheme(String),
    /// The broker's Cargo feature was left out of this build.
    #[error("this build has no {0} broker (build with the `{0}` feature)")]
    NotBuilt(&'static str),
    /// Nodes share their messages through the database, so it must be a server.
    #[error("several nodes need PostgreSQL: database_url is a SQLite file, which other nodes cannot share")]
    NeedsPostgres,
    /// A setting is out of range.
    #[error("cluster.{0} {1}")]
    Setting(&'static str, &'static str),
    /// The client refused the URL.
    #[error("cluster.broker is not a usable URL: {0}")]
    BadUrl(String),
    /// The broker's thread could not start.
    #[error("starting the broker's thread: {0}")]
    Thread(#[from] std::io::Error),
}

impl ClusterConfig {
    /// Which broker the URL names, or why none.
    pub fn kind(&self) -> Result<BrokerKind, BrokerError> {
        let scheme = self.broker.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("redis") => Ok(BrokerKind::Redis),
            Some("nats") => Ok(BrokerKind::Nats),
            _ => Err(BrokerError::UnknownScheme(self.broker.clone())),
        }
    }

    /// Checks the settings, and that the database at `database_url` can be shared by nodes.
    pub fn validate(&self, database_url: &str) -> Result<BrokerKind, BrokerError> {
        let kind = self.check()?;
        if Backend::from_url(database_url) != Backend::Postgres {
            return Err(BrokerError::NeedsPostgres);
        }
        Ok(kind)
    }

    /// Checks the broker's own settings.
    fn check(&self) -> Result<BrokerKind, BrokerError> {
        let kind = self.kind()?;
        if !cfg!(feature = "redis") && kind == BrokerKind::Redis {
            return Err(BrokerError::NotBuilt("redis"));
        }
        if !cfg!(feature = "nats") && kind == BrokerKind::Nats {
            return Err(BrokerError::NotBuilt("nats"));
        }
        // A subject token and a channel segment both: no separator, space or wildcard in it.
        let namespace_ok = (1..=64).contains(&self.namespace.len())
            && self.namespace.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        let checks: [(&'static str, bool, &'static str); 5] = [
            ("namespace", namespace_ok, "must be 1..=64 of A-Z a-z 0-9 _ -"),
            ("publish_queue", self.publish_queue >= 16, "must be at least 16"),
            ("connect_timeout_ms", self.connect_timeout_ms >= 100, "must be at least 100"),
            ("reconnect_max_ms", self.reconnect_max_ms >= 100, "must be at least 100"),
            ("ping_interval_ms", self.ping_interval_ms >= 100, "must be at least 100"),
        ];
        match checks.into_iter().find(|(_, ok, _)| !ok) {
            Some((name, _, why)) => Err(BrokerError::Setting(name, why)),
            None => Ok(kind),
        }
    }

    /// The connect timeout as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The longest reconnection pause as a duration.
    pub fn reconnect_max(&self) -> Duration {
        Duration::from_millis(self.reconnect_max_ms)
    }

    /// The ping interval as a duration.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }

    /// The broker for the node called `node` (the server checks the database with
    /// [`validate`](Self::validate) first). It connects in the background: a server that is
    /// down at start is retried, and reported by [`Broker::connected`] meanwhile.
    pub async fn connect(&self, node: &str) -> Result<Arc<dyn Broker>, BrokerError> {
        match self.check()? {
            #[cfg(feature = "redis")]
            BrokerKind::Redis => Ok(Arc::new(super::redis::RedisBroker::new(self, node)?)),
            #[cfg(feature = "nats")]
            BrokerKind::Nats => Ok(Arc::new(super::nats::NatsBroker::connect(self, node).await?)),
            #[allow(unreachable_patterns)]
            _ => unreachable!("validate refuses a broker this build lacks"),
        }
    }
}

/// The name a broker carries `topic` under: `{namespace}{sep}t{sep}_` and the topic in
/// base64url. Phoenix topics hold `:` and any other character, while a NATS subject forbids
/// spaces and wildcards and splits on `.`; base64url's alphabet is safe in both, and the `_`
/// keeps the last token non-empty for the empty topic.
pub(crate) fn topic_key(namespace: &str, sep: char, topic: &str) -> String {
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(topic);
    format!("{namespace}{sep}t{sep}_{encoded}")
}

/// A current-thread tokio runtime on a thread of its own, for a broker's client tasks: the
/// registry's arbiters and the servers' actix systems come and go, a broker's connection must
/// not go with them. Dropping it stops the thread (which drops the runtime there, outside any
/// async context, where dropping a runtime is allowed).
pub(crate) struct BrokerThread {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl BrokerThread {
    /// Starts the thread, named `name`.
    pub(crate) fn start(name: &str) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new().name(name.into()).spawn(move || {
            let _ = runtime.block_on(stopped);
        })?;
        Ok(BrokerThread { handle, _stop: stop })
    }

    /// Runs `task` on the broker's thread.
    pub(crate) fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }
}

/// One broadcast on its way to the broker: the channel or subject, and the node-to-node bytes.
pub(crate) struct Outgoing {
    /// The channel or subject ([`topic_key`]).
    pub key: String,
    /// What [`super::Inbound::encode`] made of the broadcast.
    pub bytes: Vec<u8>,
}

/// The bounded queue between the threads that broadcast and the one task that publishes, in
/// order: a caller never waits for the network, and what a full queue (or a broker that is
/// down) refuses is counted rather than held.
pub(crate) struct Outbox {
    queue: mpsc::Sender<Outgoing>,
    dropped: AtomicU64,
}

impl Outbox {
    /// An outbox holding up to `capacity` broadcasts, and the receiving end for the publisher.
    pub(crate) fn new(capacity: usize) -> (Arc<Self>, mpsc::Receiver<Outgoing>) {
        let (queue, receiver) = mpsc::channel(capacity);
        (Arc::new(Outbox { queue, dropped: AtomicU64::new(0) }), receiver)
    }

    /// Queues a broadcast, or drops it (counted) when the queue is full.
    pub(crate) fn push(&self, key: String, bytes: Vec<u8>) {
        if self.queue.try_send(Outgoing { key, bytes }).is_err() {
            self.dropped(1, "the publish queue is full");
        }
    }

    /// Counts `n` broadcasts that did not reach the broker. Logged at the first and at each
    /// power of two, so an outage leaves a handful of lines rather than one per broadcast.
    pub(crate) fn dropped(&self, n: u64, why: &str) {
        let total = self.dropped.fetch_add(n, Ordering::Relaxed) + n;
        crate::metrics::global().broker_publish_drops.inc_by(n);
        if (total - n + 1..=total).any(u64::is_power_of_two) {
            tracing::warn!(total, why, "broadcasts to other nodes dropped");
        }
    }

    /// How many broadcasts were dropped so far.
    #[cfg(test)]
    pub(crate) fn dropped_total(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// What a networked broker asks of its subscriptions task: one task, so the calls for one
/// topic stay in the order the registry made them.
pub(crate) enum Control {
    /// Subscribe the channel or subject, then answer; an answer dropped unsent (the server is
    /// down) resolves the subscribe too, since the broker subscribes it again on reconnection.
    Subscribe(String, oneshot::Sender<()>),
    /// Unsubscribe the channel or subject.
    Unsubscribe(String),
}

/// A started broker's side facing the registry: what it encodes with, the way to its
/// subscriptions task, and the outbox its publisher drains.
pub(crate) struct Running {
    inbound: Inbound,
    control: mpsc::UnboundedSender<Control>,
    outbox: Arc<Outbox>,
}

/// What a started broker's tasks take: the node's way in, the subscriptions task's commands,
/// and the publisher's end of the outbox.
pub(crate) struct Started {
    /// Where remote broadcasts go.
    pub inbound: Inbound,
    /// The subscribe and unsubscribe calls, in order.
    pub commands: mpsc::UnboundedReceiver<Control>,
    /// The outbox, for counting what the publisher drops.
    pub outbox: Arc<Outbox>,
    /// The broadcasts to publish, in order.
    pub queued: mpsc::Receiver<Outgoing>,
}

impl Running {
    /// Fills `slot` at a broker's first start, with an outbox of `capacity`; the ends for its
    /// tasks, or `None` at a second start.
    pub(crate) fn start(slot: &OnceLock<Running>, inbound: Inbound, capacity: usize) -> Option<Started> {
        let (control, commands) = mpsc::unbounded_channel();
        let (outbox, queued) = Outbox::new(capacity);
        let running = Running { inbound: inbound.clone(), control, outbox: Arc::clone(&outbox) };
        slot.set(running).ok()?;
        Some(Started { inbound, commands, outbox, queued })
    }

    /// Hands the subscriptions task a (un)subscribe of `key`; a subscribe resolves once the
    /// task answers.
    pub(crate) fn interest(&self, key: String, interested: bool) -> InterestTaken {
        if !interested {
            let _ = self.control.send(Control::Unsubscribe(key));
            return Box::pin(std::future::ready(()));
        }
        let (ack, taken) = oneshot::channel();
        let _ = self.control.send(Control::Subscribe(key, ack));
        Box::pin(async move {
            let _ = taken.await;
        })
    }

    /// Encodes `broadcast` (once, here) and queues it under `key`.
    pub(crate) fn publish(&self, key: String, broadcast: &Broadcast) {
        self.outbox.push(key, self.inbound.encode(broadcast));
    }
}

/// The pause before reconnection attempt `attempt` (0-based): 100 ms doubling up to `max`.
pub(crate) fn backoff(attempt: u32, max: Duration) -> Duration {
    Duration::from_millis(100).saturating_mul(1 << attempt.min(16)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(broker: &str) -> ClusterConfig {
        ClusterConfig { broker: broker.into(), ..ClusterConfig::default() }
    }

    const PG: &str = "postgres://u@h/db";

    #[test]
    fn the_scheme_picks_the_broker_and_an_unknown_one_is_refused() {
        assert_eq!(cluster("redis://127.0.0.1:6379").validate(PG).unwrap(), BrokerKind::Redis);
        assert_eq!(cluster("NATS://127.0.0.1:4222").validate(PG).unwrap(), BrokerKind::Nats);
        for url in ["kafka://h:9092", "127.0.0.1:6379", ""] {
            let err = cluster(url).validate(PG).unwrap_err().to_string();
            assert!(err.contains("redis:// or nats://"), "{url}: {err}");
        }
    }

    #[test]
    fn a_broker_needs_postgres_and_settings_in_range() {
        let err = cluster("redis://h").validate("courier.db").unwrap_err().to_string();
        assert!(err.contains("several nodes need PostgreSQL"), "{err}");
        assert!(cluster("nats://h").validate("postgresql://u@h/db").is_ok());
        for namespace in ["", "a.b", "a b", "a*", "x>", &"n".repeat(65)] {
            let c = ClusterConfig { namespace: namespace.into(), ..cluster("nats://h") };
            assert!(c.validate(PG).unwrap_err().to_string().contains("cluster.namespace"), "{namespace:?}");
        }
        let c = ClusterConfig { publish_queue: 1, ..cluster("nats://h") };
        assert!(c.validate(PG).unwrap_err().to_string().contains("cluster.publish_queue"));
    }

    #[test]
    fn topic_keys_are_safe_subject_tokens_and_distinct() {
        let topics = ["room:a", "room:a.b", "room:a b", "room:*", "room:>", "", "user:ünï/cödé"];
        let keys: std::collections::HashSet<String> = topics.iter().map(|t| topic_key("c1", '.', t)).collect();
        assert_eq!(keys.len(), topics.len());
        for key in &keys {
            let tokens: Vec<&str> = key.split('.').collect();
            assert_eq!(tokens.len(), 3, "{key}");
            assert_eq!(&tokens[..2], ["c1", "t"]);
            assert!(tokens[2].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{key}");
        }
        assert_eq!(topic_key("courier", ':', "room:a"), "courier:t:_cm9vbTph");
    }

    #[test]
    fn a_full_outbox_drops_and_counts_without_waiting() {
        let (outbox, mut queued) = Outbox::new(2);
        for n in 0..3u8 {
            outbox.push(format!("k{n}"), vec![n]);
        }
        assert_eq!(outbox.dropped_total(), 1);
        let kept: Vec<String> = std::iter::from_fn(|| queued.try_recv().ok()).map(|o| o.key).collect();
        assert_eq!(kept, ["k0", "k1"], "what fits keeps its order");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let max = Duration::from_secs(1);
        let pauses: Vec<u128> = (0..6).map(|n| backoff(n, max).as_millis()).collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff(u32::MAX, max), max);
    }
}
