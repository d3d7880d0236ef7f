//! The public probes: `/healthz` (the process serves HTTP), `/readyz` (its database answers and
//! its cluster broker, if any, is connected) and `/metrics` (Prometheus text). They take no token, so they say nothing a client could use:
//! a failed readiness check names no host or database, the log has the details.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::error::{Code, Error};
use crate::pubsub::PubSub;
use crate::store::Store;

/// How long `/readyz` waits for a database connection before it answers 503.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// What the probes need.
pub struct HealthState {
    /// The store whose database `/readyz` asks.
    pub store: Store,
    /// This node's name.
    pub node: String,
    /// Whose broker `/readyz` asks.
    pub pubsub: PubSub,
}

/// Mounts `/healthz`, `/readyz` and `/metrics`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    // `/health` is the path earlier versions served; probes already pointed at it keep working.
    cfg.route("/healthz", web::get().to(healthz))
        .route("/health", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics));
}

async fn healthz(state: web::Data<HealthState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok", "node": state.node }))
}

async fn readyz(state: web::Data<HealthState>) -> Result<HttpResponse, Error> {
    let backend = state.store.backend().name();
    if let Err(e) = state.store.ping(READY_TIMEOUT).await {
        tracing::warn!(error = %e, backend, "readiness check: the database did not answer");
        let reason = format!("the {backend} database is not answering queries");
        return Err(Error::new(Code::StorageUnavailable, reason).retry_after(1));
    }
    // A node cut off from the others would serve its sockets half a cluster: out of rotation
    // until the broker reconnects (the broker logs why at WARN). The body is the error table's,
    // plus the probe's own fields, so a dashboard reads `broker` either way.
    if !state.pubsub.broker_connected() {
        let reason = "the cluster broker is not connected: broadcasts do not reach the other nodes";
        let error = Error::new(Code::BrokerUnavailable, reason);
        let mut body = error.body();
        body["node"] = json!(state.node);
        body["database"] = json!(backend);
        body["broker"] = json!("down");
        return Ok(HttpResponse::build(error.code.status()).insert_header((header::RETRY_AFTER, "1")).json(body));
    }
    let ready = json!({ "status": "ready", "node": state.node, "database": backend, "broker": "up" });
    Ok(HttpResponse::Ok().json(ready))
}

async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE))
        .body(crate::metrics::global().encode())
}
