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

use crate::accounts::Accounts;
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

fn authorize(req: &HttpRequest, state: &AdminState) -> Result<(), HttpResponse> {
    let Some(expected) = state.token.as_deref() else {
        return Err(HttpResponse::Forbidden()
            .json(json!({ "error": "admin_disabled", "reason": "set admin.token in the config to enable /admin" })));
    };
    let presented =
        req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    // Compared without an early exit so the time taken does not reveal a matching prefix.
    let matches = presented.is_some_and(|p| {
        p.len() == expected.len() && p.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    });
    if matches {
        Ok(())
    } else {
        Err(HttpResponse::Unauthorized()
            .json(json!({ "error": "unauthorized", "reason": "bad or missing admin token" })))
    }
}

async fn stats(req: HttpRequest, state: web::Data<AdminState>) -> HttpResponse {
    if let Err(denied) = authorize(&req, &state) {
        return denied;
    }
    HttpResponse::Ok().json(json!({ "sockets": state.sockets.live(), "node": state.node }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectRequest {
    id: String,
}

/// Largest admin request body, in bytes.
const BODY_LIMIT: usize = 16 * 1024;

/// Reads and parses a JSON body, only ever called after [`authorize`]; errors are JSON 400/413.
async fn json_body<T: DeserializeOwned>(mut payload: web::Payload) -> Result<T, HttpResponse> {
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            HttpResponse::BadRequest()
                .json(json!({ "error": "bad_request", "reason": format!("reading the body: {e}") }))
        })?;
        if body.len() + chunk.len() > BODY_LIMIT {
            return Err(HttpResponse::PayloadTooLarge().json(
                json!({ "error": "body_too_large", "reason": format!("request body exceeds {BODY_LIMIT} bytes") }),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body)
        .map_err(|e| HttpResponse::BadRequest().json(json!({ "error": "invalid_json", "reason": e.to_string() })))
}

/// Closes every socket whose socket id is `id` (code 1001), on every node.
async fn disconnect(req: HttpRequest, state: web::Data<AdminState>, payload: web::Payload) -> HttpResponse {
    if let Err(denied) = authorize(&req, &state) {
        return denied;
    }
    let body: DisconnectRequest = match json_body(payload).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    if body.id.is_empty() {
        return HttpResponse::BadRequest().json(json!({ "error": "bad_request", "reason": "id must not be empty" }));
    }
    state.pubsub.broadcast(&body.id, DISCONNECT_EVENT, Payload::empty());
    tracing::info!(socket_id = body.id, "disconnect broadcast");
    HttpResponse::Accepted().json(json!({ "disconnected": body.id }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsernameRequest {
    username: String,
}

/// Authorizes, then reads a `{"username"}` body.
async fn username_body(req: &HttpRequest, state: &AdminState, payload: web::Payload) -> Result<String, HttpResponse> {
    authorize(req, state)?;
    Ok(json_body::<UsernameRequest>(payload).await?.username)
}

fn account_error(e: &crate::accounts::AccountError) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(e.http_status())
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status).json(json!({ "error": e.code(), "reason": e.to_string() }))
}

/// Revokes every live session of a user; the sockets they authenticated close with 1001.
async fn revoke_sessions(
    req: HttpRequest,
    state: web::Data<AdminState>,
    accounts: web::Data<Accounts>,
    payload: web::Payload,
) -> HttpResponse {
    let username = match username_body(&req, &state, payload).await {
        Ok(username) => username,
        Err(refused) => return refused,
    };
    match accounts.revoke_sessions(&username).await {
        Ok(revoked) => {
            tracing::info!(user = username, revoked, "sessions revoked");
            HttpResponse::Ok().json(json!({ "username": username, "revoked": revoked }))
        }
        Err(e) => account_error(&e),
    }
}

/// Deletes a user (see `Accounts::delete_user`); the sockets their sessions opened close with 1001.
async fn delete_user(
    req: HttpRequest,
    state: web::Data<AdminState>,
    accounts: web::Data<Accounts>,
    payload: web::Payload,
) -> HttpResponse {
    let username = match username_body(&req, &state, payload).await {
        Ok(username) => username,
        Err(refused) => return refused,
    };
    match accounts.delete_user(&username).await {
        Ok(revoked) => {
            tracing::info!(user = username, revoked, "user deleted");
            HttpResponse::Ok().json(json!({ "username": username, "deleted": true, "revoked": revoked }))
        }
        Err(e) => account_error(&e),
    }
}
