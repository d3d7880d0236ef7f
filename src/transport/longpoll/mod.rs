//! `/socket/longpoll`: the Phoenix long-poll transport, for networks where WebSocket does not
//! get through (phoenix.js `transport: LongPoll`, or its `longPollFallbackMs`).
//!
//! A long-poll session is the same [`SocketSession`] a WebSocket gets, run by the same
//! [`Connection`] actor: same connect and authentication, channels, presence, limits, rate and
//! drain. Only the two ends differ. Frames for the client wait in a [`PollBuffer`] until a
//! `GET` takes them (held up to `longpoll.window_ms`); frames from the client arrive as `POST`
//! bodies of newline-separated frames, which go to the actor as one batch, so a POST's frames are
//! handled in order and never interleaved with another POST's.
//!
//! The protocol's outcome is the `status` field of a JSON body on an HTTP 200, as phoenix.js
//! reads it: `410` with a token opens a session (and, to a client that already holds a token,
//! means the session is gone), `200` carries messages, `204` is an empty window, `403` a refused
//! connect. Refusals outside the protocol (an Origin the policy refuses, a malformed request, a
//! node at its limits) carry their own HTTP status and the usual JSON error, with a `status`
//! phoenix.js acts on: 403 stops it, 500 makes it retry with backoff.
//!
//! Sessions are found by the id inside their signed token (see [`token`]); the table is only an
//! index from id to the session's actor address, locked for a lookup, never across an await.

pub mod buffer;
pub mod token;

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix::Addr;
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::AggregatedMessage;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use self::buffer::{PollAnswer, PollBuffer};
use self::token::{SessionId, TOKEN_PREFIX, TokenError, TokenKey};
use super::TransportState;
use super::connection::{Connection, Link, Poll};
use super::socket::SocketSession;
use crate::channels::SocketInfo;
use crate::config::LongPollConfig;
use crate::error::{Code, Error};

/// The header a client may send the session token in instead of `?token=`.
const SESSION_TOKEN_HEADER: &str = "x-phoenix-longpoll-token";
/// The header phoenix.js sends its `authToken` in on polls.
const AUTH_TOKEN_HEADER: &str = "x-phoenix-authtoken";
/// POST batches that may wait for the session to take them; a POST past this waits (up to the
/// window) instead of growing the queue.
const QUEUED_POSTS: usize = 4;
/// Shards of the session table, so concurrent requests rarely wait on each other's lookups.
const TABLE_SHARDS: usize = 16;

/// What the long-poll routes need, shared by all workers.
pub struct LongPollEndpoint {
    transport: Arc<TransportState>,
    config: LongPollConfig,
    key: TokenKey,
    sessions: Arc<SessionTable>,
}

impl LongPollEndpoint {
    /// The endpoint of `transport`'s sockets, signing tokens with `key`.
    pub fn new(transport: Arc<TransportState>, config: LongPollConfig, key: TokenKey) -> Self {
        LongPollEndpoint { transport, config, key, sessions: Arc::new(SessionTable::new()) }
    }
}

/// Registers the long-poll routes; `state` must be in the app's data.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/socket/longpoll")
            .route(web::get().to(poll))
            .route(web::post().to(post))
            .route(web::method(actix_web::http::Method::OPTIONS).to(preflight))
            .default_service(web::to(other_method)),
    );
}

/// One open session: how to reach its actor.
#[derive(Clone)]
struct Entry {
    session: Addr<Connection<SocketSession>>,
    posts: mpsc::Sender<Vec<AggregatedMessage>>,
    /// The `x-phoenix-authtoken` the session was opened with, digested: a poll must send it again.
    auth: [u8; 32],
}

/// The open sessions of this node, by id.
struct SessionTable {
    shards: Vec<Mutex<HashMap<SessionId, Entry>>>,
}

impl SessionTable {
    fn new() -> Self {
        SessionTable { shards: (0..TABLE_SHARDS).map(|_| Mutex::new(HashMap::new())).collect() }
    }

    fn shard(&self, id: SessionId) -> std::sync::MutexGuard<'_, HashMap<SessionId, Entry>> {
        // Ids are random, so their low bits spread evenly.
        self.shards[(id % TABLE_SHARDS as u128) as usize].lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, id: SessionId) -> Option<Entry> {
        self.shard(id).get(&id).cloned()
    }

    fn insert(&self, id: SessionId, entry: Entry) {
        self.shard(id).insert(id, entry);
    }

    fn remove(&self, id: SessionId) {
        self.shard(id).remove(&id);
    }
}

/// A request's parts the protocol reads.
struct Parsed {
    /// The session token, from the header or the last `token` param in the token format.
    session_token: Option<String>,
    /// The connect params (every param but the session token; a repeated key keeps its last value).
    params: HashMap<String, String>,
    /// A digest of those params, which the session token is bound to.
    params_digest: [u8; 32],
    /// A digest of the `x-phoenix-authtoken` header (empty when absent).
    auth_digest: [u8; 32],
    /// The `x-phoenix-authtoken` header.
    auth_token: Option<String>,
}

fn parse(req: &HttpRequest) -> Result<Parsed, Error> {
    let mut pairs: Vec<(String, String)> = serde_urlencoded::from_str(req.query_string())
        .map_err(|_| Error::new(Code::BadQuery, "the query string is not valid form encoding"))?;
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut session_token = header(SESSION_TOKEN_HEADER).filter(|t| !t.is_empty());
    if session_token.is_none()
        && let Some(at) = pairs.iter().rposition(|(k, v)| k == "token" && v.starts_with(TOKEN_PREFIX))
    {
        session_token = Some(pairs.remove(at).1);
    }
    let params_digest = token::params_digest(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let auth_token = header(AUTH_TOKEN_HEADER);
    let auth_digest = Sha256::digest(auth_token.as_deref().unwrap_or_default().as_bytes()).into();
    Ok(Parsed { session_token, params: pairs.into_iter().collect(), params_digest, auth_digest, auth_token })
}

/// A protocol answer: HTTP 200, the outcome in `status`.
fn answer(req: &HttpRequest, body: serde_json::Value) -> HttpResponse {
    let mut response = HttpResponse::Ok();
    cors(&mut response, req);
    response.insert_header((header::CACHE_CONTROL, "no-store")).json(body)
}

/// A refusal with its own HTTP status; `status` tells phoenix.js to stop (403) or retry (500).
fn refuse(req: &HttpRequest, error: &Error) -> HttpResponse {
    let client_status = match error.code {
        Code::Forbidden | Code::OriginNotAllowed | Code::UnsupportedVsn => 403,
        _ => 500,
    };
    let mut body = error.body();
    body["status"] = json!(client_status);
    let mut response = HttpResponse::build(error.code.status());
    if let Some(secs) = error.retry_after {
        response.insert_header((header::RETRY_AFTER, secs.to_string()));
    }
    if error.code != Code::OriginNotAllowed {
        cors(&mut response, req);
    }
    response.insert_header((header::CACHE_CONTROL, "no-store")).json(body)
}

/// Lets a page on an allowed origin read the answer (every handler checks the origin first):
/// the origin is echoed rather than `*`, since which origins may is the policy's choice.
fn cors(response: &mut actix_web::HttpResponseBuilder, req: &HttpRequest) {
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        response.insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()));
        response.insert_header((header::VARY, "Origin"));
    }
}

/// Refuses a request from a page whose Origin the policy does not allow.
fn check_origin(req: &HttpRequest, state: &LongPollEndpoint) -> Result<(), Error> {
    super::upgrade::check_origin(req.headers(), &state.transport.settings.check_origin)
}

/// `GET`: a poll of an open session, or the connect that opens one.
async fn poll(req: HttpRequest, state: web::Data<LongPollEndpoint>) -> HttpResponse {
    if let Err(e) = check_origin(&req, &state) {
        return refuse(&req, &e);
    }
    let parsed = match parse(&req) {
        Ok(parsed) => parsed,
        Err(e) => return refuse(&req, &e),
    };
    let Some(token) = parsed.session_token.clone() else {
        return match connect(&req, &state, parsed).await {
            Ok(token) => answer(&req, json!({ "status": 410, "token": token, "messages": [] })),
            Err(e) if e.code == Code::Forbidden => answer(&req, refused_body(&e)),
            Err(e) => refuse(&req, &e),
        };
    };
    let Some(entry) = find(&state, &token, &parsed) else { return gone(&req) };
    if !constant_time_eq(&entry.auth, &parsed.auth_digest) {
        return gone(&req);
    }
    let (tx, rx) = oneshot::channel();
    entry.session.do_send(Poll(tx));
    // The session owns the window; this bound only covers a session that stopped mid-poll.
    let waited = actix_web::rt::time::timeout(state.config.window() + Duration::from_secs(5), rx).await;
    match waited {
        Ok(Ok(PollAnswer::Messages(frames))) => {
            let messages: Vec<&str> = frames.iter().map(|f| &**f).collect();
            answer(&req, json!({ "status": 200, "token": token, "messages": messages }))
        }
        Ok(Ok(PollAnswer::Empty)) | Err(_) => answer(&req, json!({ "status": 204, "token": token, "messages": [] })),
        Ok(Ok(PollAnswer::Gone)) | Ok(Err(_)) => gone(&req),
    }
}

/// A refused connect, the way Phoenix answers it.
fn refused_body(error: &Error) -> serde_json::Value {
    let mut body = error.body();
    body["status"] = json!(403);
    body
}

/// The session is gone (or never was this client's): phoenix.js reconnects without a token.
fn gone(req: &HttpRequest) -> HttpResponse {
    answer(req, json!({ "status": 410 }))
}

/// The open session `token` names, if it verifies for these connect params.
fn find(state: &LongPollEndpoint, token: &str, parsed: &Parsed) -> Option<Entry> {
    match state.key.verify(token, &parsed.params_digest) {
        Ok(id) => state.sessions.get(id),
        Err(TokenError::Invalid | TokenError::NotAToken) => {
            tracing::debug!("long-poll request with a token that does not verify");
            None
        }
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    subtle::ConstantTimeEq::ct_eq(&a[..], &b[..]).into()
}

/// Authenticates a connect and starts its session; returns the session's token.
async fn connect(req: &HttpRequest, state: &LongPollEndpoint, parsed: Parsed) -> Result<String, Error> {
    let transport = &state.transport;
    let serializer = super::websocket::negotiate(&parsed.params)?;
    let (request, identity, admission) =
        super::websocket::connect(transport, parsed.params, parsed.auth_token, req.peer_addr()).await?;
    let id: SessionId = rand::random();
    let info = SocketInfo::new(transport.sockets.next_connection_id(), identity, request.params, serializer);
    let conn = info.connection_id.subscriber();
    let sessions = Arc::clone(&state.sessions);
    let buffer = PollBuffer::new(
        transport.settings.queue_limits(),
        state.config.window(),
        Box::new(move || sessions.remove(id)),
    );
    let link = Link::polled("longpoll", conn, buffer, state.config.idle_timeout(), admission);
    tracing::info!(
        conn,
        socket_id = info.identity.socket_id.as_deref(),
        user = info.identity.user.as_deref(),
        device = info.identity.device.as_deref(),
        vsn = ?serializer,
        peer = ?request.peer,
        "long-poll session opened"
    );
    let session = SocketSession::with_link(Rc::new(info), serializer, transport, link);
    let (posts, batches) = mpsc::channel(QUEUED_POSTS);
    let reader = futures_util::stream::unfold(batches, |mut batches| async move {
        batches
            .recv()
            .await
            .map(|batch: Vec<AggregatedMessage>| (futures_util::stream::iter(batch.into_iter().map(Ok)), batches))
    })
    .flatten();
    let session = Connection::start(session, reader);
    // Nothing has run on the actor yet (it starts on this thread once this handler yields), so
    // its end cannot have removed the entry before it is inserted.
    state.sessions.insert(id, Entry { session, posts, auth: parsed.auth_digest });
    Ok(state.key.sign(id, &parsed.params_digest))
}

/// `POST`: up to `longpoll.max_frames_per_post` frames for an open session, one per line.
async fn post(req: HttpRequest, body: web::Payload, state: web::Data<LongPollEndpoint>) -> HttpResponse {
    if let Err(e) = check_origin(&req, &state) {
        return refuse(&req, &e);
    }
    let parsed = match parse(&req) {
        Ok(parsed) => parsed,
        Err(e) => return refuse(&req, &e),
    };
    let Some(entry) = parsed.session_token.as_deref().and_then(|token| find(&state, token, &parsed)) else {
        return gone(&req);
    };
    let body = match read_body(body, state.config.max_post_bytes).await {
        Ok(body) => body,
        Err(e) => return refuse(&req, &e),
    };
    let frames = match frames(&body, state.config.max_frames_per_post, state.transport.settings.max_frame_bytes) {
        Ok(frames) => frames,
        Err(e) => return refuse(&req, &e),
    };
    if frames.is_empty() {
        return answer(&req, json!({ "status": 200 }));
    }
    match actix_web::rt::time::timeout(state.config.window(), entry.posts.send(frames)).await {
        Ok(Ok(())) => answer(&req, json!({ "status": 200 })),
        Ok(Err(_)) => gone(&req),
        // The session did not take the batch within the window: it is stuck behind earlier work.
        Err(_) => answer(&req, json!({ "status": 408 })),
    }
}

/// Reads a POST body of at most `limit` bytes.
async fn read_body(mut payload: web::Payload, limit: usize) -> Result<Bytes, Error> {
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| Error::new(Code::BadRequest, format!("the body could not be read: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(Error::new(Code::BodyTooLarge, format!("a long-poll POST may hold {limit} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Splits a POST body into frames: a line starting with `[` is a text frame, any other is the
/// base64 of a binary frame. All or nothing: one bad line refuses the whole POST.
fn frames(body: &Bytes, max_frames: usize, max_frame_bytes: usize) -> Result<Vec<AggregatedMessage>, Error> {
    let lines: Vec<&[u8]> = body.split(|b| *b == b'\n').filter(|line| !line.is_empty()).collect();
    if lines.len() > max_frames {
        return Err(Error::new(
            Code::TooManyFrames,
            format!("a long-poll POST may hold {max_frames} frames; it held {}", lines.len()),
        ));
    }
    lines
        .into_iter()
        .map(|line| {
            let frame = if line.first() == Some(&b'[') {
                let text = ByteString::try_from(body.slice_ref(line))
                    .map_err(|_| Error::new(Code::BadRequest, "a text frame is not valid UTF-8"))?;
                AggregatedMessage::Text(text)
            } else {
                let data = base64::engine::general_purpose::STANDARD
                    .decode(line)
                    .map_err(|_| Error::new(Code::BadRequest, "a line is neither a text frame nor base64"))?;
                AggregatedMessage::Binary(Bytes::from(data))
            };
            let size = match &frame {
                AggregatedMessage::Text(text) => text.len(),
                AggregatedMessage::Binary(data) => data.len(),
                _ => 0,
            };
            if size > max_frame_bytes {
                return Err(Error::new(
                    Code::BodyTooLarge,
                    format!("a frame is over socket.max_frame_bytes ({max_frame_bytes})"),
                ));
            }
            Ok(frame)
        })
        .collect()
}

/// `OPTIONS`: the CORS preflight of a cross-origin page.
async fn preflight(req: HttpRequest, state: web::Data<LongPollEndpoint>) -> HttpResponse {
    if let Err(e) = check_origin(&req, &state) {
        return refuse(&req, &e);
    }
    let mut response = HttpResponse::Ok();
    cors(&mut response, &req);
    if let Some(asked) = request_headers(req.headers()) {
        response.insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, asked));
    }
    response
        .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "get, post, options"))
        .insert_header((header::ACCESS_CONTROL_MAX_AGE, "3600"))
        .finish()
}

fn request_headers(headers: &HeaderMap) -> Option<HeaderValue> {
    headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned()
}

/// Any other method: Phoenix answers 400.
async fn other_method(req: HttpRequest) -> HttpResponse {
    use actix_web::ResponseError;
    Error::new(Code::BadRequest, format!("long-poll takes GET, POST and OPTIONS, not {}", req.method()))
        .error_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_post_body_splits_into_text_and_binary_frames() {
        let body = Bytes::from_static(b"[null,\"1\",\"phoenix\",\"heartbeat\",{}]\nAAEC\n");
        let frames = frames(&body, 100, 1024).expect("valid");
        assert_eq!(frames.len(), 2);
        assert!(matches!(&frames[0], AggregatedMessage::Text(t) if t.starts_with("[null")));
        assert!(matches!(&frames[1], AggregatedMessage::Binary(b) if b.as_ref() == [0, 1, 2]));
    }

    #[test]
    fn a_post_past_its_limits_is_refused_whole() {
        let many = Bytes::from(vec!["[]"; 101].join("\n"));
        assert_eq!(frames(&many, 100, 1024).map(|f| f.len()).unwrap_err().code, Code::TooManyFrames);
        let large = Bytes::from(format!("[\"{}\"]", "x".repeat(2000)));
        assert_eq!(frames(&large, 100, 1024).map(|f| f.len()).unwrap_err().code, Code::BodyTooLarge);
        let bad = Bytes::from_static(b"[]\n!!not base64!!");
        assert_eq!(frames(&bad, 100, 1024).map(|f| f.len()).unwrap_err().code, Code::BadRequest);
    }
}
