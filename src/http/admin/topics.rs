//! `/admin/api/topics…` and `/admin/api/broadcast`: the live topics with their subscriber
//! counts, any topic's presences, and a broadcast to any topic.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::{AdminState, ErrorBody, PageQuery};
use crate::error::{Code, Error};
use crate::protocol::{HEARTBEAT, PHX_CLOSE, PHX_ERROR, PHX_JOIN, PHX_LEAVE, PHX_REPLY, Payload};
use crate::transport::socket::DISCONNECT_EVENT;

/// The longest topic or event name a broadcast may carry (the socket's own limit).
const MAX_NAME_BYTES: usize = 255;
/// Events a broadcast may not fake: the protocol's own, presence's, and the socket-id disconnect.
const RESERVED_EVENTS: [&str; 9] = [
    PHX_JOIN,
    PHX_LEAVE,
    PHX_REPLY,
    PHX_ERROR,
    PHX_CLOSE,
    HEARTBEAT,
    crate::presence::PRESENCE_STATE,
    crate::presence::PRESENCE_DIFF,
    DISCONNECT_EVENT,
];

/// The families of the topics each socket listens on for its own sake (a session's end, a
/// disconnect by socket id) and the nodes' own, left out of the topic list unless its prefix
/// names them.
const CONTROL_FAMILIES: [&str; 3] = ["session:", "users_socket:", crate::pubsub::topic::INTERNAL_PREFIX];

/// One live topic.
#[derive(Serialize, ToSchema)]
pub struct TopicInfo {
    /// The topic.
    pub topic: String,
    /// Its live subscribers on this node.
    pub subscribers: usize,
}

/// A page of live topics, by name.
#[derive(Serialize, ToSchema)]
pub struct TopicPage {
    /// The topics.
    pub topics: Vec<TopicInfo>,
    /// The `after` of the next page; absent on the last one.
    pub next: Option<String>,
}

/// `POST /admin/api/broadcast` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BroadcastRequest {
    /// Any topic, e.g. `room:lobby`.
    pub topic: String,
    /// The event name; not one of the protocol's own.
    pub event: String,
    /// The payload, any JSON (default `{}`).
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    json!({})
}

/// The live topics with their subscriber counts, paged; sockets' control topics (`session:`,
/// `users_socket:`) only when the prefix names them.
#[utoipa::path(
    get, path = "/admin/api/topics", tag = "topics", params(PageQuery),
    responses(
        (status = 200, description = "A page of topics", body = TopicPage),
        (status = 400, description = "Bad paging", body = ErrorBody),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub(super) async fn list(state: web::Data<AdminState>, query: web::Query<PageQuery>) -> Result<HttpResponse, Error> {
    let limit = query.limit()?;
    // A socket's own control topics are noise in an operator's list, unless asked for by name.
    let hidden =
        if CONTROL_FAMILIES.iter().any(|f| query.prefix.starts_with(f)) { &[][..] } else { &CONTROL_FAMILIES[..] };
    let rows = state
        .pubsub
        .topics(&query.prefix, query.after.as_deref(), usize::try_from(limit).unwrap_or(usize::MAX), hidden)
        .await
        .map_err(|e| Error::new(Code::Internal, e.to_string()))?;
    let next = (rows.len() as i64 == limit).then(|| rows.last().map(|(t, _)| t.clone())).flatten();
    let topics = rows.into_iter().map(|(topic, subscribers)| TopicInfo { topic, subscribers }).collect();
    Ok(HttpResponse::Ok().json(TopicPage { topics, next }))
}

/// A topic's presences, in the `presence_state` shape (`{key: {"metas": [...]}}`).
#[utoipa::path(
    get, path = "/admin/api/topics/{topic}/presence", tag = "topics",
    params(("topic" = String, Path, description = "The topic, e.g. room:lobby (URL-encoded)")),
    responses(
        (status = 200, description = "The presence_state", body = Object),
        (status = 400, description = "An empty or overlong topic", body = ErrorBody),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub(super) async fn presence(state: web::Data<AdminState>, topic: web::Path<String>) -> Result<HttpResponse, Error> {
    check_name("topic", &topic)?;
    let snapshot = state.tracker.list(&topic).await.map_err(|e| Error::new(e.code(), e.to_string()))?;
    let body = snapshot.state.as_json_str().unwrap_or("{}").to_owned();
    Ok(HttpResponse::Ok().content_type("application/json").body(body))
}

/// Broadcasts an event to every subscriber of a topic.
#[utoipa::path(
    post, path = "/admin/api/broadcast", tag = "topics", request_body = BroadcastRequest,
    responses(
        (status = 202, description = "Sent; how many subscribers this node has", body = Object),
        (status = 400, description = "An empty, overlong or reserved name, or a body that is not a BroadcastRequest", body = ErrorBody),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub(super) async fn broadcast(
    state: web::Data<AdminState>,
    body: web::Json<BroadcastRequest>,
) -> Result<HttpResponse, Error> {
    check_name("topic", &body.topic)?;
    check_name("event", &body.event)?;
    if crate::pubsub::topic::is_internal(&body.topic) {
        return Err(Error::new(Code::InvalidInput, format!("{} is the nodes' own topic", body.topic)));
    }
    if RESERVED_EVENTS.contains(&body.event.as_str()) {
        return Err(Error::new(Code::InvalidEvent, format!("{} is reserved", body.event)));
    }
    let subscribers = state.pubsub.subscriber_count(&body.topic).await.unwrap_or(0);
    state.pubsub.broadcast(&body.topic, &body.event, Payload::json(&body.payload));
    tracing::info!(topic = body.topic, event = body.event, "operator broadcast");
    Ok(HttpResponse::Accepted().json(json!({ "topic": body.topic, "event": body.event, "subscribers": subscribers })))
}

fn check_name(what: &str, name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(Error::new(Code::InvalidInput, format!("{what} must be 1..={MAX_NAME_BYTES} bytes")));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::new(Code::InvalidInput, format!("{what} must not contain control characters")));
    }
    Ok(())
}
