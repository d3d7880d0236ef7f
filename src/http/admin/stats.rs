//! `GET /admin/api/stats`: what this node is doing now.

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
    /// Channels joined (subscriptions to `user:`, `presence:` and `room:` topics).
    pub joined_channels: usize,
    /// Live topics, all families.
    pub topics: usize,
    /// Users with at least one signed-in Phoenix socket on this node.
    pub users_online: usize,
    /// Topics and subscriptions per family (`user:`, `room:`, `session:`, ...).
    pub families: BTreeMap<String, FamilyCounts>,
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
    let stats = Stats {
        node: state.node.clone(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: state.started.elapsed().as_secs(),
        sockets: state.sockets.live(),
        joined_channels: CHANNEL_FAMILIES.iter().map(|f| count(f).1).sum(),
        topics: census.values().map(|c| c.0).sum(),
        users_online: count(USER_SOCKETS).0,
        families: census
            .iter()
            .map(|(family, &(topics, subscriptions))| (family.clone(), FamilyCounts { topics, subscriptions }))
            .collect(),
    };
    Ok(HttpResponse::Ok().json(stats))
}
