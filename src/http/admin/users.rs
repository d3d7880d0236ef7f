//! `/admin/api/users…`: list, create and delete accounts, revoke their sessions, see their
//! devices with cursors and online state, close their sockets, and read their logs exactly as
//! `pull` and `history` shape them.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use super::{AdminState, ErrorBody, PageQuery};
use crate::accounts::Accounts;
use crate::channels::auth::user_socket_id;
use crate::error::{Code, Error};
use crate::protocol::Payload;
use crate::pubsub::Topic;
use crate::transport::socket::DISCONNECT_EVENT;

/// One account in a listing.
#[derive(Serialize, ToSchema)]
pub struct UserSummary {
    /// The username (`eid`).
    pub username: String,
    /// When it was created (ms since the epoch).
    pub created_at: i64,
}

/// A page of accounts, by username.
#[derive(Serialize, ToSchema)]
pub struct UserPage {
    /// The accounts.
    pub users: Vec<UserSummary>,
    /// The `after` of the next page; absent on the last one.
    pub next: Option<String>,
}

/// `POST /admin/api/users` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// The username, by the signup rules.
    pub username: String,
    /// The password, by the signup rules (hashed with argon2id).
    pub password: String,
}

/// One device of a user.
#[derive(Serialize, ToSchema)]
pub struct DeviceInfo {
    /// The device name (the Phoenix `device` connect param).
    pub device: String,
    /// First seen (ms since the epoch).
    pub created_at: i64,
    /// Last connected or disconnected (ms since the epoch).
    pub last_seen_at: i64,
    /// The offset of the user's log the device has acknowledged.
    pub acked_offset: i64,
    /// Whether the device has a socket joined to `user:<eid>` now.
    pub online: bool,
}

/// A user's devices and the end of the user's log.
#[derive(Serialize, ToSchema)]
pub struct Devices {
    /// The username.
    pub username: String,
    /// The log's last offset.
    pub last_offset: i64,
    /// The devices, oldest first.
    pub devices: Vec<DeviceInfo>,
}

/// `POST /admin/api/users/{eid}/disconnect` body (optional).
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct DisconnectTarget {
    /// Only this device's sockets; all the user's when absent.
    pub device: Option<String>,
}

/// `?after=&limit=` of a log read.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Messages after this offset (default 0: from the start).
    #[serde(default)]
    pub after: i64,
    /// Page size (default and bounds: the messaging config's).
    pub limit: Option<i64>,
}

/// `?before=&limit=` of a conversation read.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Messages with a conversation offset below this (default: the newest).
    pub before: Option<i64>,
    /// Page size (default and bounds: the messaging config's).
    pub limit: Option<i64>,
}

/// A page of `Message`s in the Phoenix `pull` / `history` reply shape. Only describes what
/// `messaging::PullReply` and `HistoryReply` serialize, hence never built.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct MessagePage {
    /// The messages, proto3 JSON (`bytes` as base64, int64 as strings).
    #[schema(value_type = Vec<Object>)]
    messages: Vec<serde_json::Value>,
    /// The log's last offset when the page was read (log reads only).
    last_offset: Option<i64>,
    /// Whether more follow (newer for a log, older for a conversation).
    more: bool,
}

async fn existing(accounts: &Accounts, eid: &str) -> Result<(), Error> {
    if accounts.user_exists(eid).await? { Ok(()) } else { Err(Error::new(Code::NoSuchUser, format!("no user {eid}"))) }
}

/// Accounts by username, paged.
#[utoipa::path(
    get, path = "/admin/api/users", tag = "users", params(PageQuery),
    responses(
        (status = 200, description = "A page of accounts", body = UserPage),
        (status = 400, description = "Bad paging", body = ErrorBody),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub(super) async fn list(accounts: web::Data<Accounts>, query: web::Query<PageQuery>) -> Result<HttpResponse, Error> {
    let limit = query.limit()?;
    let rows = accounts.list_users(&query.prefix, query.after.as_deref(), limit).await?;
    let next = (rows.len() as i64 == limit).then(|| rows.last().map(|r| r.username.clone())).flatten();
    let users = rows.into_iter().map(|r| UserSummary { username: r.username, created_at: r.created_at }).collect();
    Ok(HttpResponse::Ok().json(UserPage { users, next }))
}

/// Creates an account (no session).
#[utoipa::path(
    post, path = "/admin/api/users", tag = "users", request_body = NewUser,
    responses(
        (status = 201, description = "Created; the stored username", body = UserSummary),
        (status = 400, description = "The username or password breaks the signup rules", body = ErrorBody),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 409, description = "The username is taken", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub(super) async fn create(accounts: web::Data<Accounts>, body: web::Json<NewUser>) -> Result<HttpResponse, Error> {
    let username = accounts.create_user(&body.username, &body.password).await?;
    tracing::info!(user = username, "user created by an operator");
    Ok(HttpResponse::Created().json(json!({ "username": username })))
}

/// Deletes a user: sessions revoked and their sockets closed (1001), devices, contacts, invites
/// and queued frames deleted; the name stays taken.
#[utoipa::path(
    delete, path = "/admin/api/users/{eid}", tag = "users", params(("eid" = String, Path, description = "The username")),
    responses(
        (status = 200, description = "Deleted", body = Object),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub(super) async fn delete(
    state: web::Data<AdminState>,
    accounts: web::Data<Accounts>,
    eid: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let revoked = accounts.delete_user(&eid).await?;
    // Sockets signed in by a session close through the session's end; this reaches the rest.
    state.pubsub.broadcast(&user_socket_id(&eid), DISCONNECT_EVENT, Payload::empty());
    tracing::info!(user = eid.as_str(), revoked, "user deleted");
    Ok(HttpResponse::Ok().json(json!({ "username": eid.as_str(), "deleted": true, "revoked": revoked })))
}

/// Revokes every live session of a user; the sockets they authenticated close with 1001.
#[utoipa::path(
    post, path = "/admin/api/users/{eid}/sessions/revoke", tag = "users",
    params(("eid" = String, Path, description = "The username")),
    responses(
        (status = 200, description = "How many sessions were revoked", body = Object),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub(super) async fn revoke_sessions(
    accounts: web::Data<Accounts>,
    eid: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let revoked = accounts.revoke_sessions(&eid).await?;
    tracing::info!(user = eid.as_str(), revoked, "sessions revoked");
    Ok(HttpResponse::Ok().json(json!({ "username": eid.as_str(), "revoked": revoked })))
}

/// A user's devices with their cursors and whether each is online.
#[utoipa::path(
    get, path = "/admin/api/users/{eid}/devices", tag = "users",
    params(("eid" = String, Path, description = "The username")),
    responses(
        (status = 200, description = "The devices", body = Devices),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub(super) async fn devices(
    state: web::Data<AdminState>,
    accounts: web::Data<Accounts>,
    eid: web::Path<String>,
) -> Result<HttpResponse, Error> {
    // An unknown user is device_rows' NoSuchUser.
    let rows = accounts.device_rows(&eid).await?;
    let present =
        state.tracker.list(Topic::user(&eid).as_str()).await.map_err(|e| Error::new(e.code(), e.to_string()))?;
    let online: serde_json::Map<String, serde_json::Value> =
        present.state.as_json_str().and_then(|text| serde_json::from_str(text).ok()).unwrap_or_default();
    let mut last_offset = 0;
    let mut devices = Vec::with_capacity(rows.len());
    for row in rows {
        let cursor = state.messaging.device_state(&eid, &row.device_id).await?;
        last_offset = cursor.last_offset;
        devices.push(DeviceInfo {
            online: online.contains_key(&row.device_id),
            device: row.device_id,
            created_at: row.created_at,
            last_seen_at: row.last_seen_at,
            acked_offset: cursor.acked_offset,
        });
    }
    Ok(HttpResponse::Ok().json(Devices { username: eid.into_inner(), last_offset, devices }))
}

/// Closes every Phoenix socket of a user, or of one of its devices, with 1001 (clients
/// reconnect). Seed-002 JSON sockets end with their sessions (`sessions/revoke`).
#[utoipa::path(
    post, path = "/admin/api/users/{eid}/disconnect", tag = "users",
    params(("eid" = String, Path, description = "The username")),
    request_body(content = DisconnectTarget, description = "Optional: one device only"),
    responses(
        (status = 202, description = "The disconnect went out", body = Object),
        (status = 400, description = "A body that is not a DisconnectTarget", body = ErrorBody),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 404, description = "No such user, or no such device of the user", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub(super) async fn disconnect(
    state: web::Data<AdminState>,
    accounts: web::Data<Accounts>,
    eid: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, Error> {
    let target: DisconnectTarget = if body.iter().all(u8::is_ascii_whitespace) {
        DisconnectTarget::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| Error::new(Code::InvalidJson, e.to_string()))?
    };
    if target.device.as_deref().is_some_and(str::is_empty) {
        return Err(Error::new(Code::InvalidInput, "device must not be empty"));
    }
    existing(&accounts, &eid).await?;
    if let Some(device) = &target.device
        && !accounts.device_rows(&eid).await?.iter().any(|d| d.device_id == *device)
    {
        return Err(Error::new(Code::UnknownDevice, format!("{eid} has no device {device}")));
    }
    let payload = match &target.device {
        Some(device) => Payload::json(&json!({ "device": device })),
        None => Payload::empty(),
    };
    state.pubsub.broadcast(&user_socket_id(&eid), DISCONNECT_EVENT, payload);
    tracing::info!(user = eid.as_str(), device = target.device.as_deref(), "disconnect broadcast");
    Ok(HttpResponse::Accepted().json(json!({ "disconnected": eid.as_str(), "device": target.device })))
}

/// A page of a user's log, as `pull` answers it.
#[utoipa::path(
    get, path = "/admin/api/users/{eid}/log", tag = "users",
    params(("eid" = String, Path, description = "The username"), LogQuery),
    responses(
        (status = 200, description = "`{messages, last_offset, more}`", body = MessagePage),
        (status = 400, description = "A negative offset or a limit out of range", body = ErrorBody),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub(super) async fn log(
    state: web::Data<AdminState>,
    accounts: web::Data<Accounts>,
    eid: web::Path<String>,
    query: web::Query<LogQuery>,
) -> Result<HttpResponse, Error> {
    existing(&accounts, &eid).await?;
    let limit = query.limit.unwrap_or(state.messaging.config().default_page);
    let page = state.messaging.pull(&eid, query.after, limit).await?;
    Ok(HttpResponse::Ok().json(page.reply()))
}

/// A page of one conversation, newest first, as `history` answers it.
#[utoipa::path(
    get, path = "/admin/api/users/{eid}/conversations/{peer}", tag = "users",
    params(
        ("eid" = String, Path, description = "The username"),
        ("peer" = String, Path, description = "The other user"),
        HistoryQuery,
    ),
    responses(
        (status = 200, description = "`{messages, more}`", body = MessagePage),
        (status = 400, description = "A negative offset or a limit out of range", body = ErrorBody),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub(super) async fn conversation(
    state: web::Data<AdminState>,
    accounts: web::Data<Accounts>,
    path: web::Path<(String, String)>,
    query: web::Query<HistoryQuery>,
) -> Result<HttpResponse, Error> {
    let (eid, peer) = path.into_inner();
    existing(&accounts, &eid).await?;
    let limit = query.limit.unwrap_or(state.messaging.config().default_page);
    let page = state.messaging.history(&eid, &peer, query.before, limit).await?;
    Ok(HttpResponse::Ok().json(page.reply()))
}
