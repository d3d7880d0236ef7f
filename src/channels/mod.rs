//! Channel behaviour: what happens when a client joins a topic, pushes to it, and leaves.
//!
//! A channel lives inside its socket's actor (no process per channel as in Phoenix): the socket
//! routes each frame to the [`Channel`] joined on that topic, and turns the [`HandleIn`] it gets
//! back into replies, pushes, `phx_close` or `phx_error`. Channel families are registered on a
//! [`Router`] by topic pattern (`room:*`), each with a [`ChannelFactory`] that performs joins.

pub mod auth;
pub mod presence;
pub mod room;
pub mod socket;
pub mod user;

use std::any::Any;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::LocalBoxFuture;

use crate::accounts::AccountError;
use crate::error::Code;
use crate::messaging::MessagingError;
use crate::protocol::Payload;
use crate::pubsub::{Broadcast, PubSub, SubscriberId};
pub use socket::{
    AnonymousSockets, ConnectError, ConnectRequest, SessionCheck, SessionGrant, SocketAuthenticator, SocketIdentity,
    SocketInfo,
};

/// A reply to a client push: `{"status": "ok" | "error", "response": response}`. An error
/// reply can only be built with a [`Code`], which a JSON body carries as `code` beside
/// Phoenix's `reason`.
#[derive(Debug, Clone)]
pub struct Reply {
    code: Option<Code>,
    response: Payload,
}

impl Reply {
    /// An `ok` reply with this body.
    pub fn ok(response: Payload) -> Self {
        Reply { code: None, response }
    }

    /// An `ok` reply with `{}`.
    pub fn ok_empty() -> Self {
        Reply::ok(Payload::empty())
    }

    /// An `error` reply with `{"reason": reason, "code": code}`.
    pub fn error(code: Code, reason: &str) -> Self {
        Reply::error_with(code, reason, serde_json::Value::Null)
    }

    /// An `error` reply whose body is `extra` (a JSON object; anything else is left out) plus
    /// `reason` and `code`, which win over keys of the same name in `extra`.
    pub fn error_with(code: Code, reason: &str, extra: serde_json::Value) -> Self {
        let mut body = match extra {
            serde_json::Value::Object(fields) => fields,
            _ => serde_json::Map::new(),
        };
        body.insert("reason".into(), reason.into());
        body.insert("code".into(), code.as_str().into());
        Reply { code: Some(code), response: Payload::json(&body) }
    }

    /// An `error` reply whose body is a binary seed type that says `code` in its own field
    /// (`status_code`, `error`): protobuf has no place for the JSON `code` key.
    pub fn error_binary(code: Code, body: Bytes) -> Self {
        Reply { code: Some(code), response: Payload::Binary(body) }
    }

    /// `ok` or `error`.
    pub fn status(&self) -> &'static str {
        if self.code.is_some() { "error" } else { "ok" }
    }

    /// The code of an error reply; `None` for `ok`.
    pub fn code(&self) -> Option<Code> {
        self.code
    }

    /// The response body.
    pub fn response(&self) -> &Payload {
        &self.response
    }
}

/// A refused join or push: the code from the crate's table and the reason clients read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What went wrong, as the table names it.
    pub code: Code,
    /// Text for the client: Phoenix's own reasons ("unauthorized", "join crashed") or prose.
    pub reason: String,
}

impl Refusal {
    /// A refusal with `code` and `reason`.
    pub fn new(code: Code, reason: impl Into<String>) -> Self {
        Refusal { code, reason: reason.into() }
    }
}

impl From<Refusal> for Reply {
    fn from(refusal: Refusal) -> Self {
        Reply::error(refusal.code, &refusal.reason)
    }
}

impl From<MessagingError> for Refusal {
    fn from(e: MessagingError) -> Self {
        Refusal::new(e.code(), e.reason())
    }
}

impl From<crate::keys::KeysError> for Refusal {
    fn from(e: crate::keys::KeysError) -> Self {
        let reason = match &e {
            // Storage details are for the server's log.
            crate::keys::KeysError::Storage(_) => "storage unavailable, retry".to_owned(),
            other => other.to_string(),
        };
        Refusal::new(e.code(), reason)
    }
}

impl From<AccountError> for Refusal {
    // The snake_case name has always been the reason of an account refusal on a channel.
    fn from(e: AccountError) -> Self {
        Refusal::new(e.wire_code(), e.code())
    }
}

/// How a channel ends when it stops itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// A graceful end: the client gets `phx_close` and does not rejoin.
    Normal,
    /// A failure: the client gets `phx_error` and rejoins.
    Crash(String),
}

/// What a channel does with one client push.
pub enum HandleIn {
    /// Reply now.
    Reply(Reply),
    /// Send no reply (the client's push times out, as in Phoenix's `{:noreply, socket}`).
    NoReply,
    /// Reply when the future completes (storage, other actors); other frames keep flowing.
    Later(LocalBoxFuture<'static, Reply>),
    /// Like `Later`, then hand the second value to [`Channel::handle_info`] (if the channel is
    /// still joined), so the channel learns what the reply said.
    LaterThen(LocalBoxFuture<'static, (Reply, Box<dyn Any>)>),
    /// Stop the channel, after an optional final reply.
    Stop {
        /// Sent before `phx_close`/`phx_error`.
        reply: Option<Reply>,
        /// Decides between `phx_close` and `phx_error`.
        reason: StopReason,
    },
}

/// Why a channel's `terminate` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// The client sent `phx_leave`.
    Leave,
    /// A new join on the same topic replaced this channel.
    Replaced,
    /// The channel stopped itself or crashed.
    Stopped,
    /// The socket closed.
    SocketClosed,
}

/// Async work a channel started whose result comes back to its [`Channel::handle_info`]
/// (Phoenix's `send(self(), msg)`).
pub type ChannelTask = LocalBoxFuture<'static, Box<dyn Any>>;

/// One frame a channel callback sends its client.
pub enum Emit {
    /// An event of this channel's own: `[join_ref, null, topic, event, payload]`.
    Push(String, Payload),
    /// A broadcast forwarded as is, in the frame every subscriber shares (encoded once per
    /// serializer, however many channels forward it).
    Forward(Arc<Broadcast>),
}

/// What one channel callback asked the socket to do once it returns.
#[derive(Default)]
pub struct Effects {
    /// Frames for this channel's client, in order, sent before the callback's reply.
    pub frames: Vec<Emit>,
    /// Tasks whose results go to this channel's `handle_info`, if it is still joined then.
    pub tasks: Vec<ChannelTask>,
}

/// What a channel callback may use: its topic, its socket, pub/sub, and pushes to its client.
pub struct ChannelContext<'a> {
    /// The joined topic.
    pub topic: &'a str,
    /// This channel's join_ref.
    pub join_ref: &'a str,
    /// The socket the channel belongs to.
    pub socket: &'a SocketInfo,
    /// The pub/sub layer.
    pub pubsub: &'a PubSub,
    /// Frames the socket's outbound queue can still take before the client counts as slow.
    pub outbound_room: usize,
    /// Bytes the socket's outbound queue can still take before the client counts as slow.
    pub outbound_room_bytes: usize,
    effects: &'a mut Effects,
}

/// How much more a socket's outbound queue can take: frames and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboundRoom {
    /// Frames.
    pub frames: usize,
    /// Bytes.
    pub bytes: usize,
}

impl<'a> ChannelContext<'a> {
    /// Builds a context; what the callback asks for collects into `effects`.
    pub fn new(
        topic: &'a str,
        join_ref: &'a str,
        socket: &'a SocketInfo,
        pubsub: &'a PubSub,
        room: OutboundRoom,
        effects: &'a mut Effects,
    ) -> Self {
        ChannelContext {
            topic,
            join_ref,
            socket,
            pubsub,
            outbound_room: room.frames,
            outbound_room_bytes: room.bytes,
            effects,
        }
    }

    /// Pushes an event to this channel's client only (`[join_ref, null, topic, event, payload]`).
    pub fn push(&mut self, event: impl Into<String>, payload: Payload) {
        self.take_room(payload.len());
        self.effects.frames.push(Emit::Push(event.into(), payload));
    }

    /// Forwards a broadcast to this channel's client in its shared frame, e.g. one that
    /// `handle_out` held back and releases later.
    pub fn forward(&mut self, broadcast: &Arc<Broadcast>) {
        self.take_room(broadcast.payload().len());
        self.effects.frames.push(Emit::Forward(Arc::clone(broadcast)));
    }

    /// Counts one more frame of about `bytes` against the room the callback was given.
    fn take_room(&mut self, bytes: usize) {
        self.outbound_room = self.outbound_room.saturating_sub(1);
        self.outbound_room_bytes = self.outbound_room_bytes.saturating_sub(bytes);
    }

    /// Runs `task` off the socket; its result is handed to this channel's `handle_info`.
    pub fn spawn(&mut self, task: ChannelTask) {
        self.effects.tasks.push(task);
    }

    /// Broadcasts to every subscriber of this topic, this client included.
    pub fn broadcast(&self, event: &str, payload: Payload) {
        self.pubsub.broadcast(self.topic, event, payload);
    }

    /// Broadcasts to every subscriber of this topic except this client.
    pub fn broadcast_from(&self, event: &str, payload: Payload) {
        self.pubsub.broadcast_from(self.subscriber(), self.topic, event, payload);
    }

    /// This socket's subscriber id in the registry.
    pub fn subscriber(&self) -> SubscriberId {
        self.socket.connection_id.subscriber()
    }
}

/// One joined channel.
pub trait Channel: 'static {
    /// Runs right after the join reply was sent (Phoenix's `:after_join`), e.g. to push state.
    fn after_join(&mut self, _ctx: &mut ChannelContext<'_>) {}

    /// Handles a client push of a non-reserved event.
    fn handle_in(&mut self, event: &str, payload: Payload, ctx: &mut ChannelContext<'_>) -> HandleIn;

    /// Receives the result of a task started with [`ChannelContext::spawn`].
    fn handle_info(&mut self, _info: Box<dyn Any>, _ctx: &mut ChannelContext<'_>) {}

    /// Decides whether a broadcast on this topic goes to the client (Phoenix's `intercept`).
    fn handle_out(&mut self, _broadcast: &Arc<Broadcast>, _ctx: &mut ChannelContext<'_>) -> bool {
        true
    }

    /// Runs once when the channel ends, whatever the reason.
    fn terminate(&mut self, _reason: LeaveReason, _ctx: &mut ChannelContext<'_>) {}
}

/// A join request for one topic.
pub struct JoinRequest {
    /// The topic being joined.
    pub topic: String,
    /// The join payload (channel params).
    pub payload: Payload,
    /// The joining socket.
    pub socket: Rc<SocketInfo>,
    /// The pub/sub layer.
    pub pubsub: PubSub,
}

/// A successful join: the channel and the body of the ok reply.
pub struct Joined {
    /// The channel that will handle this topic's pushes.
    pub channel: Box<dyn Channel>,
    /// The join reply's `response`.
    pub response: Payload,
}

/// A join outcome: the channel, or why it was refused (the error reply's `code` and `reason`).
pub type JoinResult = Result<Joined, Refusal>;

/// Performs joins for one family of topics.
pub trait ChannelFactory: Send + Sync + 'static {
    /// Decides a join; may do I/O (accounts, storage) before answering.
    fn join(&self, request: JoinRequest) -> LocalBoxFuture<'static, JoinResult>;
}

/// A topic pattern: `room:*` matches every topic starting with `room:`; anything else is exact.
#[derive(Debug, Clone)]
enum TopicPattern {
    Prefix(String),
    Exact(String),
}

impl TopicPattern {
    fn parse(pattern: &str) -> Self {
        match pattern.strip_suffix('*') {
            Some(prefix) => TopicPattern::Prefix(prefix.to_owned()),
            None => TopicPattern::Exact(pattern.to_owned()),
        }
    }

    fn matches(&self, topic: &str) -> bool {
        match self {
            TopicPattern::Prefix(prefix) => topic.starts_with(prefix.as_str()),
            TopicPattern::Exact(exact) => topic == exact,
        }
    }
}

/// Maps topics to channel factories; the first matching pattern wins.
#[derive(Clone, Default)]
pub struct Router {
    routes: Vec<(TopicPattern, Arc<dyn ChannelFactory>)>,
}

impl Router {
    /// An empty router: every join is an "unmatched topic".
    pub fn new() -> Self {
        Router::default()
    }

    /// Routes topics matching `pattern` to `factory`.
    pub fn channel(mut self, pattern: &str, factory: impl ChannelFactory) -> Self {
        self.routes.push((TopicPattern::parse(pattern), Arc::new(factory)));
        self
    }

    /// Appends `other`'s routes after this router's.
    pub fn merge(mut self, other: Router) -> Self {
        self.routes.extend(other.routes);
        self
    }

    /// The factory for `topic`, if any pattern matches.
    pub fn route(&self, topic: &str) -> Option<&Arc<dyn ChannelFactory>> {
        self.routes.iter().find(|(pattern, _)| pattern.matches(topic)).map(|(_, factory)| factory)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;
    impl ChannelFactory for Nothing {
        fn join(&self, _: JoinRequest) -> LocalBoxFuture<'static, JoinResult> {
            Box::pin(async { Err(Refusal::new(Code::Forbidden, "no")) })
        }
    }

    fn body(reply: &Reply) -> serde_json::Value {
        serde_json::from_str(reply.response().as_json_str().expect("a JSON body")).expect("valid JSON")
    }

    #[test]
    fn an_error_reply_carries_the_reason_and_the_code() {
        let reply = Reply::error(Code::UnmatchedTopic, "unmatched topic");
        assert_eq!((reply.status(), reply.code()), ("error", Some(Code::UnmatchedTopic)));
        assert_eq!(body(&reply), serde_json::json!({"reason": "unmatched topic", "code": "unmatched_topic"}));
    }

    #[test]
    fn extra_fields_go_beside_reason_and_code_without_replacing_them() {
        let extra = serde_json::json!({"status_code": 400, "code": "forged", "reason": "forged"});
        let reply = Reply::error_with(Code::InvalidInput, "id is missing", extra);
        assert_eq!(
            body(&reply),
            serde_json::json!({"status_code": 400, "reason": "id is missing", "code": "invalid_input"})
        );
        let not_an_object = Reply::error_with(Code::Internal, "x", serde_json::json!([1]));
        assert_eq!(body(&not_an_object), serde_json::json!({"reason": "x", "code": "internal"}));
    }

    #[test]
    fn an_ok_reply_has_no_code_and_a_binary_error_keeps_its_bytes() {
        let ok = Reply::ok_empty();
        assert_eq!((ok.status(), ok.code()), ("ok", None));
        assert_eq!(ok.response().as_json_str(), Some("{}"));
        let binary = Reply::error_binary(Code::PayloadTooLarge, Bytes::from_static(b"\x08\x01"));
        assert_eq!((binary.status(), binary.code()), ("error", Some(Code::PayloadTooLarge)));
        assert!(matches!(binary.response(), Payload::Binary(b) if b.as_ref() == b"\x08\x01"));
    }

    #[test]
    fn refusals_of_the_module_errors_keep_their_reasons_and_take_their_codes() {
        let reply = Reply::from(Refusal::from(AccountError::NoSuchUser));
        assert_eq!(body(&reply), serde_json::json!({"reason": "no_such_user", "code": "no_such_user"}));
        let reply = Reply::from(Refusal::from(MessagingError::invalid("bad JSON: x")));
        assert_eq!(body(&reply), serde_json::json!({"reason": "bad JSON: x", "code": "invalid_input"}));
    }

    #[test]
    fn router_matches_prefix_and_exact_patterns() {
        let router = Router::new().channel("room:*", Nothing).channel("lobby", Nothing);
        assert!(router.route("room:lobby").is_some());
        assert!(router.route("room:").is_some());
        assert!(router.route("lobby").is_some());
        assert!(router.route("lobby:x").is_none());
        assert!(router.route("rooms").is_none());
    }
}
