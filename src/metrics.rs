//! The server's metrics: one process-wide [`Metrics`] (the one global Courier has: every part
//! of the server counts into it without being handed a handle), served at `/metrics` in
//! Prometheus text format and read by the admin stats route through [`Metrics::snapshot`].
//!
//! Counters and gauges are atomics. Labelled ones are resolved once, here, into fixed tables
//! of handles, so a frame costs one atomic add and never the label map's lock; label values
//! come from closed lists (an event a client makes up counts as `other`), so no client can grow
//! the number of series. The counters bumped for every frame or delivered message are
//! [`ShardedCounter`]s: one shared atomic would bounce its cache line between the worker
//! threads on every frame. Histograms take a lock and are recorded once per message or batch.

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};
use serde::Serialize;

/// The `Content-Type` of [`Metrics::encode`]'s output (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The transports a connection can use, as the `transport` label gives them.
pub const TRANSPORTS: [&str; 4] = ["phoenix", "longpoll", "json", "signal"];

/// Phoenix events counted under their own name; every other event counts as `other`.
pub const EVENTS: [&str; 25] = [
    "phx_join",
    "phx_leave",
    "phx_reply",
    "phx_close",
    "phx_error",
    "heartbeat",
    "message",
    "receipt",
    "signal",
    "pull",
    "history",
    "presence",
    "presence_state",
    "presence_diff",
    "status",
    "contacts",
    "invite.request",
    "invite.accept",
    "invite.reject",
    "keys.register",
    "keys.count",
    "keys.bundle",
    "ping",
    "disconnect",
    OTHER,
];

const OTHER: &str = "other";

/// The index of `event` in [`EVENTS`]; unknown events are `other`'s.
fn event_index(event: &str) -> usize {
    EVENTS.iter().position(|known| *known == event).unwrap_or(EVENTS.len() - 1)
}

/// The topic families a join is counted under.
pub const TOPIC_KINDS: [&str; 4] = ["room", "user", "presence", OTHER];

fn topic_index(topic: &str) -> usize {
    let family = topic.split_once(':').map_or("", |(family, _)| family);
    TOPIC_KINDS[..3].iter().position(|known| *known == family).unwrap_or(TOPIC_KINDS.len() - 1)
}

/// How a join ended, as the `outcome` label gives it.
const JOIN_OUTCOMES: [&str; 2] = ["ok", "refused"];

/// How much per-second history [`Metrics::snapshot`] keeps.
const HISTORY_SECONDS: usize = 60;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabel {
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JoinLabels {
    topic: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: &'static str,
}

/// How many cache lines a [`ShardedCounter`] spreads over; threads past this many share them.
const SHARDS: usize = 8;

/// One shard of a [`ShardedCounter`], alone on its cache line (128 bytes: adjacent-line
/// prefetching pairs 64-byte lines).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard(AtomicU64);

/// A counter each thread adds to on a cache line of its own, summed when read: as cheap as an
/// uncontended atomic add wherever it is bumped from.
#[derive(Debug, Clone)]
pub struct ShardedCounter {
    shards: Arc<[Shard; SHARDS]>,
}

impl Default for ShardedCounter {
    fn default() -> Self {
        ShardedCounter { shards: Arc::new(std::array::from_fn(|_| Shard::default())) }
    }
}

/// This thread's shard index, given out round-robin at its first count.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static INDEX: Cell<usize> = const { Cell::new(usize::MAX) });
    INDEX.with(|index| match index.get() {
        usize::MAX => {
            let mine = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
            index.set(mine);
            mine
        }
        mine => mine,
    })
}

impl ShardedCounter {
    /// Adds one.
    pub fn inc(&self) {
        self.shards[shard_index()].0.fetch_add(1, Ordering::Relaxed);
    }

    /// The total over every thread.
    pub fn get(&self) -> u64 {
        self.shards.iter().map(|shard| shard.0.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Every metric the server keeps, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    /// `courier_messages_stored_total`: messages the log writer committed.
    pub messages_stored: Counter,
    /// `courier_messages_delivered_total`: message events queued to sockets.
    pub messages_delivered: ShardedCounter,
    /// `courier_message_ack_seconds`: from a `message` push arriving to its ack reply.
    pub ack_latency: Histogram,
    /// `courier_log_writer_batch_writes`: writes committed per log-writer transaction.
    pub batch_size: Histogram,
    /// `courier_channels`: channels joined on Phoenix sockets now.
    pub channels: Gauge,
    /// `courier_presence_topics`: topics with presences on this node.
    pub presence_topics: Gauge,
    /// `courier_outbound_queue_overflows_total`: items refused by a full outbound queue.
    pub outbound_overflows: Counter,
    /// `courier_slow_consumer_closes_total`: sockets closed because their queue was full.
    pub slow_consumer_closes: Counter,
    /// `courier_rate_limited_frames_total`: Phoenix frames refused by the per-socket rate limit.
    pub rate_limited_frames: Counter,
    /// `courier_sockets`: sockets admitted and open now, all endpoints.
    pub sockets: Gauge,
    /// `courier_socket_limit`: the node's socket limit (`socket.max_connections`, resolved).
    pub socket_limit: Gauge,
    /// `courier_pending_reply_refusals_total`: pushes refused at `socket.max_pending_replies`.
    pub pending_reply_refusals: Counter,
    /// `courier_socket_refusals_total{reason}`: socket connects refused, by
    /// `transport::admission::REFUSAL_REASONS`.
    socket_refusals: [Counter; crate::transport::admission::REFUSAL_REASONS.len()],
    /// `courier_broker_publish_drops_total`: broadcasts that did not reach the cluster broker.
    pub broker_publish_drops: Counter,
    // The labelled families' series, resolved once and indexed like the label lists above (the
    // families themselves live in the registry).
    /// `courier_connections{transport}`: WebSocket connections open now.
    by_transport: [Gauge; TRANSPORTS.len()],
    /// `courier_channel_joins_total{topic,outcome}`: channel joins answered.
    by_join: [[Counter; JOIN_OUTCOMES.len()]; TOPIC_KINDS.len()],
    /// `courier_pushes_received_total{event}`: Phoenix frames taken from clients.
    in_by_event: [ShardedCounter; EVENTS.len()],
    /// `courier_pushes_sent_total{event}`: Phoenix frames queued for clients.
    out_by_event: [ShardedCounter; EVENTS.len()],
    // What the snapshot reports of the histograms, which do not read back outside tests.
    acks: Counter,
    ack_seconds: Counter<f64>,
    batches: Counter,
    batch_writes: Counter,
    history: Mutex<VecDeque<Sample>>,
    started: Instant,
}

/// One second's totals, as the sampler saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    /// Seconds since the metrics were made.
    second: u64,
    stored: u64,
    delivered: u64,
}

/// What the admin stats route reports: current totals and gauges, and the last minute's rates.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsSnapshot {
    /// Open connections by transport.
    pub connections: BTreeMap<&'static str, i64>,
    /// Joins answered ok.
    pub joins_ok: u64,
    /// Joins refused (or crashed).
    pub joins_refused: u64,
    /// Phoenix frames received, by event (events never seen left out).
    pub pushes_received: BTreeMap<&'static str, u64>,
    /// Phoenix frames sent, by event (events never seen left out).
    pub pushes_sent: BTreeMap<&'static str, u64>,
    /// Messages committed to the log.
    pub messages_stored: u64,
    /// Message events queued to sockets.
    pub messages_delivered: u64,
    /// Messages stored in each of the last (up to 60) seconds, oldest first.
    pub messages_stored_per_second: Vec<u64>,
    /// Messages delivered in each of the last (up to 60) seconds, oldest first.
    pub messages_delivered_per_second: Vec<u64>,
    /// The mean of `messages_stored_per_second`.
    pub messages_stored_rate: f64,
    /// The mean of `messages_delivered_per_second`.
    pub messages_delivered_rate: f64,
    /// Log-writer transactions committed.
    pub log_writer_batches: u64,
    /// Writes in those transactions (the mean batch is this over `log_writer_batches`).
    pub log_writer_batch_writes: u64,
    /// Message pushes acknowledged.
    pub acks: u64,
    /// The mean ack latency in seconds (0 before the first ack).
    pub ack_seconds_mean: f64,
    /// Channels joined on Phoenix sockets.
    pub channels: i64,
    /// Topics with presences.
    pub presence_topics: i64,
    /// Items refused by a full outbound queue.
    pub outbound_queue_overflows: u64,
    /// Sockets closed as slow consumers.
    pub slow_consumer_closes: u64,
    /// Frames refused by the per-socket rate limit.
    pub rate_limited_frames: u64,
    /// Pushes refused at `socket.max_pending_replies`.
    pub pending_reply_refusals: u64,
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, all zero, registered under `courier_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("courier");
        let connections = Family::<TransportLabel, Gauge>::default();
        registry.register("connections", "WebSocket connections open now, by transport", connections.clone());
        let joins = Family::<JoinLabels, Counter>::default();
        registry.register("channel_joins", "Channel joins answered, by topic family and outcome", joins.clone());
        let pushes_in = Family::<EventLabel, ShardedCounter>::default();
        registry.register("pushes_received", "Phoenix frames received from clients, by event", pushes_in.clone());
        let pushes_out = Family::<EventLabel, ShardedCounter>::default();
        registry.register("pushes_sent", "Phoenix frames queued for clients, by event", pushes_out.clone());
        let messages_stored = Counter::default();
        registry.register("messages_stored", "Messages committed to the message log", messages_stored.clone());
        let messages_delivered = ShardedCounter::default();
        registry.register(
            "messages_delivered",
            "Message events queued to sockets (Phoenix, seed-002 JSON and signal)",
            messages_delivered.clone(),
        );
        // 0.5 ms to about 4 s: a commit is a few ms, a stalled one seconds.
        let ack_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register_with_unit(
            "message_ack",
            "Time from a message push arriving to its ack reply",
            Unit::Seconds,
            ack_latency.clone(),
        );
        // 1 to 1024 writes: max_batch is 512 by default.
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 11));
        registry.register("log_writer_batch_writes", "Writes committed per log-writer transaction", batch_size.clone());
        let channels = Gauge::default();
        registry.register("channels", "Channels joined on Phoenix sockets now", channels.clone());
        let presence_topics = Gauge::default();
        registry.register("presence_topics", "Topics with presences on this node", presence_topics.clone());
        let outbound_overflows = Counter::default();
        registry.register(
            "outbound_queue_overflows",
            "Frames and pongs refused because a socket's outbound queue was full",
            outbound_overflows.clone(),
        );
        let slow_consumer_closes = Counter::default();
        registry.register(
            "slow_consumer_closes",
            "Sockets closed because they did not read their frames fast enough",
            slow_consumer_closes.clone(),
        );
        let rate_limited_frames = Counter::default();
        registry.register(
            "rate_limited_frames",
            "Phoenix frames refused by the per-socket rate limit",
            rate_limited_frames.clone(),
        );
        let sockets = Gauge::default();
        registry.register("sockets", "Sockets admitted and open now, all endpoints", sockets.clone());
        let socket_limit = Gauge::default();
        registry.register("socket_limit", "Sockets the node admits at once", socket_limit.clone());
        let pending_reply_refusals = Counter::default();
        registry.register(
            "pending_reply_refusals",
            "Phoenix pushes refused because too many of the socket's replies were pending",
            pending_reply_refusals.clone(),
        );
        let refusals = Family::<ReasonLabel, Counter>::default();
        registry.register("socket_refusals", "Socket connects refused, by reason", refusals.clone());
        let socket_refusals = crate::transport::admission::REFUSAL_REASONS
            .map(|reason| refusals.get_or_create_owned(&ReasonLabel { reason }));
        let broker_publish_drops = Counter::default();
        registry.register(
            "broker_publish_drops",
            "Broadcasts for other nodes dropped: the broker's publish queue was full or its server unreachable",
            broker_publish_drops.clone(),
        );
        let by_transport = TRANSPORTS.map(|transport| connections.get_or_create_owned(&TransportLabel { transport }));
        let by_join = TOPIC_KINDS
            .map(|topic| JOIN_OUTCOMES.map(|outcome| joins.get_or_create_owned(&JoinLabels { topic, outcome })));
        let in_by_event = EVENTS.map(|event| pushes_in.get_or_create_owned(&EventLabel { event }));
        let out_by_event = EVENTS.map(|event| pushes_out.get_or_create_owned(&EventLabel { event }));
        Metrics {
            registry,
            messages_stored,
            messages_delivered,
            ack_latency,
            batch_size,
            channels,
            presence_topics,
            outbound_overflows,
            slow_consumer_closes,
            rate_limited_frames,
            sockets,
            socket_limit,
            pending_reply_refusals,
            socket_refusals,
            broker_publish_drops,
            by_transport,
            by_join,
            in_by_event,
            out_by_event,
            acks: Counter::default(),
            ack_seconds: Counter::default(),
            batches: Counter::default(),
            batch_writes: Counter::default(),
            history: Mutex::new(VecDeque::with_capacity(HISTORY_SECONDS + 1)),
            started: Instant::now(),
        }
    }

    /// The gauge of `transport` (an endpoint name from [`TRANSPORTS`]), if it is one.
    fn transport(&self, transport: &str) -> Option<&Gauge> {
        TRANSPORTS.iter().position(|known| *known == transport).map(|at| &self.by_transport[at])
    }

    /// A connection of `transport` opened.
    pub fn connection_opened(&self, transport: &str) {
        if let Some(gauge) = self.transport(transport) {
            gauge.inc();
        }
    }

    /// A connection of `transport` closed.
    pub fn connection_closed(&self, transport: &str) {
        if let Some(gauge) = self.transport(transport) {
            gauge.dec();
        }
    }

    /// A socket was admitted.
    pub fn socket_admitted(&self) {
        self.sockets.inc();
    }

    /// An admitted socket closed.
    pub fn socket_released(&self) {
        self.sockets.dec();
    }

    /// A socket connect was refused for `transport::admission::REFUSAL_REASONS[reason]`.
    pub fn socket_refused(&self, reason: usize) {
        if let Some(counter) = self.socket_refusals.get(reason) {
            counter.inc();
        }
    }

    /// A join of `topic` was answered, ok or not.
    pub fn join(&self, topic: &str, ok: bool) {
        self.by_join[topic_index(topic)][usize::from(!ok)].inc();
    }

    /// A Phoenix frame with `event` came in.
    pub fn push_received(&self, event: &str) {
        self.in_by_event[event_index(event)].inc();
    }

    /// A Phoenix frame with `event` was queued for a client.
    pub fn push_sent(&self, event: &str) {
        self.out_by_event[event_index(event)].inc();
    }

    /// A message push was acknowledged `elapsed` after it arrived.
    pub fn acked(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        self.ack_latency.observe(seconds);
        self.acks.inc();
        self.ack_seconds.inc_by(seconds);
    }

    /// The log writer committed a batch of `writes` writes, `stored` of them new messages.
    pub fn batch_committed(&self, writes: usize, stored: usize) {
        self.batch_size.observe(writes as f64);
        self.batches.inc();
        self.batch_writes.inc_by(writes as u64);
        self.messages_stored.inc_by(stored as u64);
    }

    /// A socket's outbound queue was full; `closing` when the socket is closed for it.
    pub fn overflowed(&self, closing: bool) {
        self.outbound_overflows.inc();
        if closing {
            self.slow_consumer_closes.inc();
        }
    }

    /// Everything registered, in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(8 * 1024);
        // Writing into a String does not fail; an encoder error would be a bug in a metric type.
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry) {
            tracing::error!(error = %e, "encoding the metrics failed");
        }
        text
    }

    /// Records this second's totals for the per-second rates; a second already recorded (two
    /// servers in one process both sample) is left as it is.
    pub fn sample(&self) {
        let second = self.started.elapsed().as_secs();
        let sample = Sample { second, stored: self.messages_stored.get(), delivered: self.messages_delivered.get() };
        let mut history = self.history.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if history.back().is_some_and(|last| last.second >= second) {
            return;
        }
        history.push_back(sample);
        while history.len() > HISTORY_SECONDS + 1 {
            history.pop_front();
        }
    }

    /// The current totals and gauges, and the rates of the last minute of samples.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let history: Vec<Sample> =
            self.history.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).iter().copied().collect();
        let (stored_per_second, stored_rate) = per_second(&history, |s| s.stored);
        let (delivered_per_second, delivered_rate) = per_second(&history, |s| s.delivered);
        let by_event = |counters: &[ShardedCounter; EVENTS.len()]| {
            EVENTS.iter().zip(counters).map(|(event, c)| (*event, c.get())).filter(|(_, n)| *n > 0).collect()
        };
        let acks = self.acks.get();
        MetricsSnapshot {
            connections: TRANSPORTS.iter().zip(&self.by_transport).map(|(t, g)| (*t, g.get())).collect(),
            joins_ok: self.by_join.iter().map(|by_outcome| by_outcome[0].get()).sum(),
            joins_refused: self.by_join.iter().map(|by_outcome| by_outcome[1].get()).sum(),
            pushes_received: by_event(&self.in_by_event),
            pushes_sent: by_event(&self.out_by_event),
            messages_stored: self.messages_stored.get(),
            messages_delivered: self.messages_delivered.get(),
            messages_stored_per_second: stored_per_second,
            messages_delivered_per_second: delivered_per_second,
            messages_stored_rate: stored_rate,
            messages_delivered_rate: delivered_rate,
            log_writer_batches: self.batches.get(),
            log_writer_batch_writes: self.batch_writes.get(),
            acks,
            ack_seconds_mean: if acks == 0 { 0.0 } else { self.ack_seconds.get() / acks as f64 },
            channels: self.channels.get(),
            presence_topics: self.presence_topics.get(),
            outbound_queue_overflows: self.outbound_overflows.get(),
            slow_consumer_closes: self.slow_consumer_closes.get(),
            rate_limited_frames: self.rate_limited_frames.get(),
            pending_reply_refusals: self.pending_reply_refusals.get(),
        }
    }
}

/// The per-second increase of `total` between consecutive samples (a missed second spreads its
/// count over the gap), and the mean rate over the whole window.
fn per_second(history: &[Sample], total: impl Fn(&Sample) -> u64) -> (Vec<u64>, f64) {
    let mut rates = Vec::with_capacity(HISTORY_SECONDS);
    for pair in history.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let seconds = b.second.saturating_sub(a.second).max(1);
        let increase = total(b).saturating_sub(total(a));
        for _ in 0..seconds {
            rates.push(increase / seconds);
        }
    }
    let excess = rates.len().saturating_sub(HISTORY_SECONDS);
    rates.drain(..excess);
    let rate = match (history.first(), history.last()) {
        (Some(first), Some(last)) if last.second > first.second => {
            total(last).saturating_sub(total(first)) as f64 / (last.second - first.second) as f64
        }
        _ => 0.0,
    };
    (rates, rate)
}

/// Samples the totals once a second, for [`Metrics::snapshot`]'s rates; the server starts it
/// and aborts it at shutdown.
pub fn spawn_sampler() -> actix_web::rt::task::JoinHandle<()> {
    actix_web::rt::spawn(async {
        let mut ticks = actix_web::rt::time::interval(Duration::from_secs(1));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            global().sample();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the series `name` (with its labels, as the text writes them).
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        let metrics = Metrics::new();
        metrics.connection_opened("phoenix");
        metrics.join("room:lobby", true);
        metrics.push_received("heartbeat");
        metrics.push_sent("message");
        metrics.messages_delivered.inc();
        metrics.acked(Duration::from_millis(3));
        metrics.batch_committed(4, 3);
        metrics.presence_topics.inc();
        metrics.channels.inc();
        metrics.overflowed(true);
        metrics.rate_limited_frames.inc();
        metrics.socket_admitted();
        metrics.socket_admitted();
        metrics.socket_released();
        metrics.socket_limit.set(1);
        metrics.socket_refused(0);
        metrics.socket_refused(99);
        metrics.pending_reply_refusals.inc();
        let text = metrics.encode();
        for series in [
            "courier_sockets",
            "courier_socket_limit",
            "courier_socket_refusals_total{reason=\"node_full\"}",
            "courier_pending_reply_refusals_total",
            "courier_connections{transport=\"phoenix\"}",
            "courier_channel_joins_total{topic=\"room\",outcome=\"ok\"}",
            "courier_pushes_received_total{event=\"heartbeat\"}",
            "courier_pushes_sent_total{event=\"message\"}",
            "courier_messages_delivered_total",
            "courier_message_ack_seconds_count",
            "courier_presence_topics",
            "courier_channels",
            "courier_outbound_queue_overflows_total",
            "courier_slow_consumer_closes_total",
            "courier_rate_limited_frames_total",
        ] {
            assert_eq!(value(&text, series), Some(1.0), "{series} in\n{text}");
        }
        assert_eq!(value(&text, "courier_socket_refusals_total{reason=\"shutting_down\"}"), Some(0.0));
        let refusal_series = text.lines().filter(|l| l.starts_with("courier_socket_refusals_total{")).count();
        assert_eq!(refusal_series, 3, "one series per reason, none for an unknown one");
        assert_eq!(value(&text, "courier_messages_stored_total"), Some(3.0));
        assert_eq!(value(&text, "courier_log_writer_batch_writes_sum"), Some(4.0));
        assert_eq!(value(&text, "courier_log_writer_batch_writes_bucket{le=\"4\"}"), Some(1.0));
        assert_eq!(value(&text, "courier_message_ack_seconds_bucket{le=\"0.004\"}"), Some(1.0));
        assert!(text.contains("# TYPE courier_message_ack_seconds histogram"), "{text}");
        assert!(!text.contains("# EOF"), "Prometheus text, not OpenMetrics: {text}");
    }

    #[test]
    fn unknown_events_and_topics_share_one_series() {
        let metrics = Metrics::new();
        for event in ["made-up", "another one", "phx_join", ""] {
            metrics.push_received(event);
        }
        metrics.join("nonsense", false);
        metrics.join("user:alice", false);
        metrics.connection_opened("carrier pigeon");
        let text = metrics.encode();
        assert_eq!(value(&text, "courier_pushes_received_total{event=\"other\"}"), Some(3.0));
        assert_eq!(value(&text, "courier_pushes_received_total{event=\"phx_join\"}"), Some(1.0));
        assert_eq!(value(&text, "courier_channel_joins_total{topic=\"other\",outcome=\"refused\"}"), Some(1.0));
        assert_eq!(value(&text, "courier_channel_joins_total{topic=\"user\",outcome=\"refused\"}"), Some(1.0));
        assert!(!text.contains("made-up") && !text.contains("pigeon"), "no label from a client: {text}");
        let series = text.lines().filter(|l| l.starts_with("courier_pushes_received_total{")).count();
        assert_eq!(series, EVENTS.len(), "the label set is fixed at start");
    }

    #[test]
    fn a_sharded_counter_adds_up_every_threads_counts() {
        let counter = ShardedCounter::default();
        std::thread::scope(|scope| {
            for _ in 0..(SHARDS + 3) {
                let counter = counter.clone();
                scope.spawn(move || (0..1000).for_each(|_| counter.inc()));
            }
        });
        assert_eq!(counter.get(), 1000 * (SHARDS as u64 + 3), "threads that share a shard lose nothing");
        assert_eq!(std::mem::align_of::<Shard>(), 128);
    }

    #[test]
    fn connections_go_up_and_down_by_transport() {
        let metrics = Metrics::new();
        metrics.connection_opened("json");
        metrics.connection_opened("json");
        metrics.connection_opened("signal");
        metrics.connection_closed("json");
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.connections.get("json"), Some(&1));
        assert_eq!(snapshot.connections.get("signal"), Some(&1));
        assert_eq!(snapshot.connections.get("phoenix"), Some(&0));
    }

    #[test]
    fn the_snapshot_has_totals_and_the_last_minutes_rates() {
        let metrics = Metrics::new();
        metrics.batch_committed(10, 10);
        metrics.push_sent("message");
        metrics.messages_delivered.inc();
        metrics.push_sent("phx_reply");
        metrics.acked(Duration::from_millis(2));
        metrics.acked(Duration::from_millis(4));
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.messages_stored, 10);
        assert_eq!(snapshot.messages_delivered, 1);
        assert_eq!(snapshot.pushes_sent.get("phx_reply"), Some(&1));
        assert_eq!(snapshot.pushes_sent.get("heartbeat"), None, "events never seen are left out");
        assert_eq!((snapshot.log_writer_batches, snapshot.log_writer_batch_writes), (1, 10));
        assert!((snapshot.ack_seconds_mean - 0.003).abs() < 1e-9);
        assert!(snapshot.messages_stored_per_second.is_empty(), "no samples yet");
        serde_json::to_value(&snapshot).expect("serializes");

        // Samples of seconds 0, 1 and 3 (second 2 missed): 10, then 20 over two seconds.
        let at = |second, stored, delivered| Sample { second, stored, delivered };
        let history = [at(0, 0, 0), at(1, 10, 5), at(3, 30, 5)];
        let (rates, mean) = per_second(&history, |s| s.stored);
        assert_eq!(rates, vec![10, 10, 10]);
        assert!((mean - 10.0).abs() < 1e-9);
        let (rates, _) = per_second(&history, |s| s.delivered);
        assert_eq!(rates, vec![5, 0, 0]);
    }

    #[test]
    fn the_history_keeps_one_sample_a_second_for_a_minute() {
        let metrics = Metrics::new();
        metrics.sample();
        metrics.sample();
        assert_eq!(metrics.history.lock().expect("history").len(), 1, "a second is sampled once");
        {
            let mut history = metrics.history.lock().expect("history");
            history.clear();
            for second in 0..100 {
                history.push_back(Sample { second, stored: second * 2, delivered: 0 });
            }
        }
        // The next real sample lands on second 0 again, which is older: ignored.
        metrics.sample();
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.messages_stored_per_second.len(), 99.min(HISTORY_SECONDS));
        assert!(snapshot.messages_stored_per_second.iter().all(|r| *r == 2));
        assert!((snapshot.messages_stored_rate - 2.0).abs() < 1e-9);
    }
}
