//! The public probes: `/healthz` (the process serves HTTP), `/readyz` (and its database answers)
//! and `/metrics` (Prometheus text). They take no token, so they say nothing a client could use:
//! a failed readiness check names no host or database, the log has the details.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::error::{Code, Error};
use crate::store::Store;

/// How long `/readyz` waits for a database connection before it answers 503.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// What the probes need.
pub struct HealthState {
    /// The store whose database `/readyz` asks.
    pub store: Store,
    /// This node's name.
    pub node: String,
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
    match state.store.ping(READY_TIMEOUT).await {
        Ok(()) => Ok(HttpResponse::Ok().json(json!({ "status": "ready", "node": state.node, "database": backend }))),
        Err(e) => {
            tracing::warn!(error = %e, backend, "readiness check: the database did not answer");
            let reason = format!("the {backend} database is not answering queries");
            Err(Error::new(Code::StorageUnavailable, reason).retry_after(1))
        }
    }
}

async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE))
        .body(crate::metrics::global().encode())
}
