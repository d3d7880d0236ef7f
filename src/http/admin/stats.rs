//! `GET /admin/api/stats`: what this node is doing now. Sockets, channels and topics are this
//! server's; the message, storage and queue figures are the process's metrics
//! (`crate::metrics`), the same a Prometheus scrape of `/metrics` reads.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::AdminState;
use crate::error::{Code, Error};

/// One topic family's share of the registry.
#[derive(Serialize, ToSchema)]
pub struct FamilyCounts {
    /// Live topics of the family.
    pub topics: usize,
    /// Live subscriptions to them.
    pub subscriptions: usize,
}

/// Messages through this process: totals, and per-second figures over the last minute.
#[derive(Serialize, ToSchema)]
pub struct MessageStats {
    /// Messages committed to logs since start.
    pub stored_total: u64,
    /// Message events queued to sockets since start.
    pub delivered_total: u64,
    /// Mean messages stored per second over the last minute.
    pub stored_per_sec: f64,
    /// Mean messages delivered per second over the last minute.
    pub delivered_per_sec: f64,
    /// Messages stored in each of the last (up to 60) seconds, oldest first.
    pub stored_last_minute: Vec<u64>,
    /// Messages delivered in each of the last (up to 60) seconds, oldest first.
    pub delivered_last_minute: Vec<u64>,
    /// Message pushes acknowledged, and their mean time from push to ack.
    pub acks: u64,
    /// Mean seconds from a message push to its ack.
    pub ack_seconds_mean: f64,
}

/// The log writer's group commits.
#[derive(Serialize, ToSchema)]
pub struct StorageStats {
    /// Transactions committed.
    pub batches: u64,
    /// Writes (messages, receipts) in them.
    pub batch_writes: u64,
    /// Mean writes per transaction.
    pub mean_batch: f64,
}

/// Socket admission on this node: its limits and what they refused since start.
#[derive(Serialize, ToSchema)]
pub struct SocketLimits {
    /// Sockets the node admits at once, all endpoints (`socket.max_connections`, resolved).
    pub max_connections: usize,
    /// Phoenix sockets one signed-in user may have open (`socket.max_connections_per_user`; 0: no limit).
    pub max_connections_per_user: usize,
    /// Connects refused with 503 `node_full`.
    pub refused_node_full: u64,
    /// Connects refused with 429 `too_many_connections`.
    pub refused_too_many_connections: u64,
    /// Connects refused with 503 because shutdown had begun.
    pub refused_shutting_down: u64,
    /// Pushes refused with `too_many_pending_replies` (the process's count).
    pub refused_pending_replies: u64,
}

/// This node's figures.
#[derive(Serialize, ToSchema)]
pub struct Stats {
    /// The node's name.
    pub node: String,
    /// The server's version.
    pub version: &'static str,
    /// Seconds since the server started.
    pub uptime_secs: u64,
    /// Open WebSocket connections, all endpoints.
    pub sockets: usize,
    /// The socket limits and their refusals.
    pub socket_limits: SocketLimits,
    /// Channels joined (subscriptions to `user:`, `presence:` and `room:` topics).
    pub joined_channels: usize,
    /// Live topics, all families.
    pub topics: usize,
    /// Users with at least one signed-in Phoenix socket on this node.
    pub users_online: usize,
    /// Topics and subscriptions per family (`user:`, `room:`, `session:`, ...).
    pub families: BTreeMap<String, FamilyCounts>,
    /// Open connections by transport (`phoenix`, `json`, `signal`).
    pub connections: BTreeMap<String, i64>,
    /// Messages stored and delivered.
    pub messages: MessageStats,
    /// The log writer's batches.
    pub storage: StorageStats,
    /// Topics with presences.
    pub presence_topics: i64,
    /// Frames refused by a full outbound queue.
    pub outbound_queue_overflows: u64,
    /// Sockets closed as too slow to read what they were sent.
    pub slow_consumer_closes: u64,
    /// Frames refused by the per-socket rate limit.
    pub rate_limited_frames: u64,
}

/// Families whose subscriptions are channel joins (the others are a socket's own control topics).
const CHANNEL_FAMILIES: [&str; 3] = ["user:", "presence:", "room:"];
/// The family of the topics every signed-in Phoenix socket listens on for a disconnect.
const USER_SOCKETS: &str = "users_socket:";

/// This node's figures.
#[utoipa::path(
    get, path = "/admin/api/stats", tag = "stats",
    responses(
        (status = 200, description = "This node's figures", body = Stats),
        (status = 401, description = "No or a wrong admin token", body = super::ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub(super) async fn stats(state: web::Data<AdminState>) -> Result<HttpResponse, Error> {
    let census = state.pubsub.census().await.map_err(|e| Error::new(Code::Internal, e.to_string()))?;
    let count = |family: &str| census.get(family).copied().unwrap_or_default();
    let m = crate::metrics::global().snapshot();
    let admission = state.sockets.admission_stats();
    let [refused_node_full, refused_too_many_connections, refused_shutting_down] = admission.refused;
    let mean_batch =
        if m.log_writer_batches == 0 { 0.0 } else { m.log_writer_batch_writes as f64 / m.log_writer_batches as f64 };
    let stats = Stats {
        node: state.node.clone(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: state.started.elapsed().as_secs(),
        sockets: admission.live,
        socket_limits: SocketLimits {
            max_connections: admission.max_connections,
            max_connections_per_user: admission.max_connections_per_user,
            refused_node_full,
            refused_too_many_connections,
            refused_shutting_down,
            refused_pending_replies: m.pending_reply_refusals,
        },
        joined_channels: CHANNEL_FAMILIES.iter().map(|f| count(f).1).sum(),
        topics: census.values().map(|c| c.0).sum(),
        users_online: count(USER_SOCKETS).0,
        families: census
            .iter()
            .map(|(family, &(topics, subscriptions))| (family.clone(), FamilyCounts { topics, subscriptions }))
            .collect(),
        connections: m.connections.iter().map(|(transport, &n)| ((*transport).to_owned(), n)).collect(),
        messages: MessageStats {
            stored_total: m.messages_stored,
            delivered_total: m.messages_delivered,
            stored_per_sec: m.messages_stored_rate,
            delivered_per_sec: m.messages_delivered_rate,
            stored_last_minute: m.messages_stored_per_second,
            delivered_last_minute: m.messages_delivered_per_second,
            acks: m.acks,
            ack_seconds_mean: m.ack_seconds_mean,
        },
        storage: StorageStats { batches: m.log_writer_batches, batch_writes: m.log_writer_batch_writes, mean_batch },
        presence_topics: m.presence_topics,
        outbound_queue_overflows: m.outbound_queue_overflows,
        slow_consumer_closes: m.slow_consumer_closes,
        rate_limited_frames: m.rate_limited_frames,
    };
    Ok(HttpResponse::Ok().json(stats))
}
