//! The operator API under `/admin/api/`: JSON in and out, every route behind
//! `Authorization: Bearer <admin token>` (checked by [`require_token`] before any handler or
//! body extractor runs, so an unauthenticated caller learns nothing from the parser and cannot
//! make the server buffer a body), described by an OpenAPI 3 document generated from the
//! handlers' own types ([`openapi`], public at `/admin/api/openapi.json`).
//!
//! Handlers only translate between HTTP and the services (accounts, messaging, pub/sub,
//! presence); the rules live there. Each submodule owns one group of routes.

pub mod openapi;
mod stats;
mod topics;
mod users;

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::{Next, from_fn};
use actix_web::{HttpRequest, ResponseError, web};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use crate::error::{Code, Error};
use crate::messaging::Messaging;
use crate::presence::Tracker;
use crate::pubsub::PubSub;
use crate::transport::Sockets;

/// What the admin routes need.
pub struct AdminState {
    /// The bearer token every `/admin/api/` request must present.
    pub token: String,
    /// The pub/sub layer: broadcasts, disconnects, the topic census.
    pub pubsub: PubSub,
    /// Live sockets.
    pub sockets: Arc<Sockets>,
    /// This node's name.
    pub node: String,
    /// The presence tracker, for a topic's presences and a user's online devices.
    pub tracker: Arc<dyn Tracker>,
    /// Logs and cursors.
    pub messaging: Messaging,
    /// When the server started, for `uptime`.
    pub started: Instant,
}

/// A fresh random admin token (32 bytes from the OS generator, URL-safe base64), for a server
/// started without one.
pub fn generate_token() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// Largest page any listing route returns.
pub const MAX_PAGE: i64 = 500;
/// The page size when none is asked for.
pub const DEFAULT_PAGE: i64 = 50;

/// Mounts the public OpenAPI document and the guarded `/admin/api/` routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    // Registered ahead of the guarded scope, which would otherwise claim the path.
    cfg.route("/admin/api/openapi.json", web::get().to(openapi::document)).service(
        web::scope("/admin/api")
            .wrap(from_fn(require_token))
            .app_data(web::QueryConfig::default().error_handler(|err, _| invalid_input("query string", err)))
            .app_data(web::PathConfig::default().error_handler(|err, _| invalid_input("path", err)))
            .route("/stats", web::get().to(stats::stats))
            .route("/users", web::get().to(users::list))
            .route("/users", web::post().to(users::create))
            .route("/users/{eid}", web::delete().to(users::delete))
            .route("/users/{eid}/sessions/revoke", web::post().to(users::revoke_sessions))
            .route("/users/{eid}/devices", web::get().to(users::devices))
            .route("/users/{eid}/disconnect", web::post().to(users::disconnect))
            .route("/users/{eid}/log", web::get().to(users::log))
            .route("/users/{eid}/conversations/{peer}", web::get().to(users::conversation))
            .route("/topics", web::get().to(topics::list))
            .route("/topics/{topic}/presence", web::get().to(topics::presence))
            .route("/broadcast", web::post().to(topics::broadcast))
            .default_service(web::to(crate::http::not_found)),
    );
}

/// A query string or path that does not parse, as the JSON 400 every refusal is.
fn invalid_input(part: &str, err: impl std::fmt::Display + std::fmt::Debug + 'static) -> actix_web::Error {
    let refused = Error::new(Code::InvalidInput, format!("{part}: {err}"));
    actix_web::error::InternalError::from_response(err, refused.error_response()).into()
}

/// Refuses any request without the admin token, before its handler (and its body) is touched.
async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let state = req.app_data::<web::Data<AdminState>>().cloned();
    match state {
        Some(state) if token_matches(req.request(), &state.token) => next.call(req).await,
        Some(_) => Err(Error::new(Code::Unauthorized, "bad or missing admin token").into()),
        None => Err(Error::new(Code::Internal, "admin state missing").into()),
    }
}

fn token_matches(req: &HttpRequest, expected: &str) -> bool {
    let presented =
        req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    // Compared in constant time (as passwords are), so the time taken reveals no matching prefix.
    presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(expected.as_bytes())))
}

/// `?prefix=&after=&limit=`: a page of a listing sorted by name.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Only names starting with this (case-sensitive).
    #[serde(default)]
    pub prefix: String,
    /// Only names sorting after this: the `next` of the previous page.
    pub after: Option<String>,
    /// Page size, 1..=500 (default 50).
    pub limit: Option<i64>,
}

impl PageQuery {
    /// The page size asked for, checked.
    pub fn limit(&self) -> Result<i64, Error> {
        let limit = self.limit.unwrap_or(DEFAULT_PAGE);
        if (1..=MAX_PAGE).contains(&limit) {
            Ok(limit)
        } else {
            Err(Error::new(Code::InvalidInput, format!("limit must be 1..={MAX_PAGE}")))
        }
    }
}

/// The error body every refusal carries (the crate's one table of codes).
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// The code, snake_case.
    pub error: String,
    /// Why, for people.
    pub reason: String,
    /// The seed-002 resp_code of the code.
    pub resp_code: u8,
}
