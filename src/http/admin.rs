//! Operator routes under `/admin` (bearer-token protected) and the public `/health` check.
//!
//! Every admin route checks the token before it reads the body, so an unauthenticated caller
//! learns nothing from the parser and cannot make the server buffer a body.

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::accounts::Accounts;
use crate::error::{Code, Error};
use crate::protocol::Payload;
use crate::pubsub::PubSub;
use crate::transport::Sockets;
use crate::transport::socket::DISCONNECT_EVENT;

/// What the admin routes need.
pub struct AdminState {
    /// The bearer token; `None` disables the admin routes.
    pub token: Option<String>,
    /// The pub/sub layer, for disconnect broadcasts.
    pub pubsub: PubSub,
    /// Live sockets.
    pub sockets: Arc<Sockets>,
    /// This node's name.
    pub node: String,
}

/// Mounts `/health` and `/admin/*`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .route("/admin/stats", web::get().to(stats))
        .route("/admin/sockets/disconnect", web::post().to(disconnect))
        .route("/admin/sessions/revoke", web::post().to(revoke_sessions))
        .route("/admin/users/delete", web::post().to(delete_user));
}

async fn health(state: web::Data<AdminState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok", "node": state.node }))
}

fn authorize(req: &HttpRequest, state: &AdminState) -> Result<(), Error> {
    let Some(expected) = state.token.as_deref() else {
        return Err(Error::new(Code::AdminDisabled, "set admin.token in the config to enable /admin"));
    };
    let presented =
        req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    // Compared in constant time (as passwords are), so the time taken reveals no matching prefix.
    let matches = presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(expected.as_bytes())));
    if matches { Ok(()) } else { Err(Error::new(Code::Unauthorized, "bad or missing admin token")) }
}

async fn stats(req: HttpRequest, state: web::Data<AdminState>) -> Result<HttpResponse, Error> {
    authorize(&req, &state)?;
    Ok(HttpResponse::Ok().json(json!({ "sockets": state.sockets.live(), "node": state.node })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectRequest {
    id: String,
}

/// Largest admin request body, in bytes.
const BODY_LIMIT: usize = 16 * 1024;

/// Reads and parses a JSON body, only ever called after [`authorize`]; errors are JSON 400/413.
async fn json_body<T: DeserializeOwned>(mut payload: web::Payload) -> Result<T, Error> {
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| Error::new(Code::BadRequest, format!("reading the body: {e}")))?;
        if body.len() + chunk.len() > BODY_LIMIT {
            return Err(Error::new(Code::BodyTooLarge, format!("request body exceeds {BODY_LIMIT} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| Error::new(Code::InvalidJson, e.to_string()))
}

/// Closes every socket whose socket id is `id` (code 1001), on every node.
async fn disconnect(
    req: HttpRequest,
    state: web::Data<AdminState>,
    payload: web::Payload,
) -> Result<HttpResponse, Error> {
    authorize(&req, &state)?;
    let body: DisconnectRequest = json_body(payload).await?;
    if body.id.is_empty() {
        return Err(Error::new(Code::BadRequest, "id must not be empty"));
    }
    state.pubsub.broadcast(&body.id, DISCONNECT_EVENT, Payload::empty());
    tracing::info!(socket_id = body.id, "disconnect broadcast");
    Ok(HttpResponse::Accepted().json(json!({ "disconnected": body.id })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsernameRequest {
    username: String,
}

/// Authorizes, then reads a `{"username"}` body.
async fn username_body(req: &HttpRequest, state: &AdminState, payload: web::Payload) -> Result<String, Error> {
    authorize(req, state)?;
    Ok(json_body::<UsernameRequest>(payload).await?.username)
}

/// Revokes every live session of a user; the sockets they authenticated close with 1001.
async fn revoke_sessions(
    req: HttpRequest,
    state: web::Data<AdminState>,
    accounts: web::Data<Accounts>,
    payload: web::Payload,
) -> Result<HttpResponse, Error> {
    let username = username_body(&req, &state, payload).await?;
    let revoked = accounts.revoke_sessions(&username).await?;
    tracing::info!(user = username, revoked, "sessions revoked");
    Ok(HttpResponse::Ok().json(json!({ "username": username, "revoked": revoked })))
}

/// Deletes a user (see `Accounts::delete_user`); the sockets their sessions opened close with 1001.
async fn delete_user(
    req: HttpRequest,
    state: web::Data<AdminState>,
    accounts: web::Data<Accounts>,
    payload: web::Payload,
) -> Result<HttpResponse, Error> {
    let username = username_body(&req, &state, payload).await?;
    let revoked = accounts.delete_user(&username).await?;
    tracing::info!(user = username, revoked, "user deleted");
    Ok(HttpResponse::Ok().json(json!({ "username": username, "deleted": true, "revoked": revoked })))
}
