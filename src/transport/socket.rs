//! The Phoenix socket session: one per connection of the Phoenix endpoint, run by a
//! [`Connection`](super::connection::Connection).
//!
//! It owns the connection's joined channels, its rate limit and its in-flight replies, and
//! implements Phoenix's socket rules: join/leave/duplicate-join, join_ref checks, the
//! unmatched-topic reply, the channel limit, socket-id and session disconnects, and what a
//! draining socket still finishes. Channel behaviour itself is delegated to [`crate::channels`];
//! the socket's lifecycle (close handshake, idle timeout, slow consumers, shutdown) is
//! [`super::connection`]'s.

use std::any::Any;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;

use actix::{ActorFutureExt, AsyncContext, Recipient};
use actix_ws::CloseCode;
use bytes::Bytes;
use bytestring::ByteString;
use futures_util::FutureExt;
use futures_util::future::LocalBoxFuture;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::TransportState;
use super::admission::Admission;
pub use super::connection::DISCONNECT_EVENT;
use super::connection::{Ctx, IntoConnection, Link, Session};
use super::ws_io::WsWriter;
use crate::channels::{
    Channel, ChannelContext, ChannelTask, Effects, Emit, HandleIn, JoinRequest, Joined, LeaveReason, OutboundRoom,
    Refusal, Reply, Router, SocketInfo, StopReason,
};
use crate::config::SocketConfig;
use crate::error::Code;
use crate::metrics;
use crate::protocol::{
    DecodeError, HEARTBEAT, Message, Outgoing, PHOENIX_TOPIC, PHX_CLOSE, PHX_ERROR, PHX_JOIN, PHX_LEAVE, PHX_REPLY,
    Payload, Serializer, WireFrame, is_reserved_event,
};
use crate::pubsub::event::MESSAGE;
use crate::pubsub::{Broadcast, Deliver, Event, PubSub};

/// The event name a frame carries, for the metrics.
fn outgoing_event<'a>(frame: &Outgoing<'a>) -> &'a str {
    match frame {
        Outgoing::Reply { .. } => PHX_REPLY,
        Outgoing::Push { event, .. } | Outgoing::Broadcast { event, .. } | Outgoing::Lifecycle { event, .. } => event,
    }
}

struct JoinedChannel {
    join_ref: String,
    channel: Box<dyn Channel>,
}

enum JoinFailure {
    Refused(Refusal),
    Crashed,
}

/// The Phoenix protocol behind one WebSocket connection.
pub struct SocketSession {
    info: Rc<SocketInfo>,
    serializer: Serializer,
    settings: Arc<SocketConfig>,
    router: Arc<Router>,
    pubsub: PubSub,
    channels: HashMap<String, JoinedChannel>,
    link: Link,
    limiter: DefaultDirectRateLimiter,
    in_flight: usize,
}

impl SocketSession {
    /// Prepares the session for an upgraded connection, writing to `writer` and holding its
    /// `admission`.
    pub fn new(
        info: Rc<SocketInfo>,
        serializer: Serializer,
        state: &TransportState,
        writer: WsWriter,
        admission: Admission,
    ) -> Self {
        let link = Link::new("phoenix", info.connection_id.subscriber(), writer, &state.settings, admission);
        SocketSession::with_link(info, serializer, state, link)
    }

    /// Prepares the session for a client reached through `link` (a long-poll session's).
    pub fn with_link(info: Rc<SocketInfo>, serializer: Serializer, state: &TransportState, link: Link) -> Self {
        let settings = Arc::clone(&state.settings);
        let rate = NonZeroU32::new(settings.rate_per_sec).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(settings.rate_burst).unwrap_or(NonZeroU32::MIN);
        SocketSession {
            link,
            info,
            serializer,
            limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            settings,
            router: Arc::clone(&state.router),
            pubsub: state.pubsub.clone(),
            channels: HashMap::new(),
            in_flight: 0,
        }
    }

    fn conn(&self) -> u64 {
        self.info.connection_id.subscriber()
    }

    fn recipient(ctx: &mut Ctx<Self>) -> Recipient<Deliver> {
        ctx.address().recipient()
    }

    // ---- outbound -------------------------------------------------------------------------

    /// Sends a broadcast's shared frame, if this socket's serializer can carry it.
    fn forward(&mut self, ctx: &mut Ctx<Self>, broadcast: &Broadcast) {
        if let Some(frame) = broadcast.encoded(self.serializer) {
            let message = matches!(broadcast.event, Event::Message { .. });
            self.enqueue_counted(ctx, frame.clone(), broadcast.name(), message);
        }
    }

    fn send(&mut self, ctx: &mut Ctx<Self>, frame: Outgoing<'_>) {
        match self.serializer.encode(&frame) {
            Ok(wire) => {
                // Only user channels push `message` events themselves (catch-up, protobuf
                // devices); a room's `message` is a client's broadcast, which `forward` sends.
                let message = matches!(frame, Outgoing::Push { event: MESSAGE, .. });
                self.enqueue_counted(ctx, wire, outgoing_event(&frame), message);
            }
            Err(e) => tracing::debug!(conn = self.conn(), error = %e, "frame not sent"),
        }
    }

    /// Queues an encoded frame and, if it was queued, counts it as sent under `event` (and as
    /// a delivered message when it is one).
    fn enqueue_counted(&mut self, ctx: &mut Ctx<Self>, wire: WireFrame, event: &str, message: bool) {
        if self.enqueue(ctx, wire) {
            let metrics = metrics::global();
            metrics.push_sent(event);
            if message {
                metrics.messages_delivered.inc();
            }
        }
    }

    fn reply(
        &mut self,
        ctx: &mut Ctx<Self>,
        join_ref: Option<&str>,
        msg_ref: Option<&str>,
        topic: &str,
        reply: &Reply,
    ) {
        let frame = Outgoing::Reply { join_ref, msg_ref, topic, status: reply.status(), response: reply.response() };
        match self.serializer.encode(&frame) {
            Ok(wire) => self.enqueue_counted(ctx, wire, PHX_REPLY, false),
            Err(e) => {
                // The client still gets an answer it can read instead of a timeout.
                let fallback = Reply::error(Code::Internal, &e.to_string());
                let frame = Outgoing::Reply {
                    join_ref,
                    msg_ref,
                    topic,
                    status: fallback.status(),
                    response: fallback.response(),
                };
                self.send(ctx, frame);
            }
        }
    }

    fn lifecycle(&mut self, ctx: &mut Ctx<Self>, join_ref: &str, topic: &str, event: &str) {
        let payload = if event == PHX_ERROR {
            Payload::json(&serde_json::json!({ "reason": "channel_crash" }))
        } else {
            Payload::empty()
        };
        self.send(ctx, Outgoing::Lifecycle { join_ref, topic, event, payload: &payload });
    }

    /// Runs one callback of the channel joined on `topic` (under `catch_unwind`), then sends the
    /// pushes it made and starts the tasks it spawned. `None` when the topic is not joined.
    fn run_callback<R>(
        &mut self,
        ctx: &mut Ctx<Self>,
        topic: &str,
        callback: impl FnOnce(&mut dyn Channel, &mut ChannelContext<'_>) -> R,
    ) -> Option<std::thread::Result<R>> {
        let SocketSession { channels, info, pubsub, link, .. } = self;
        let joined = channels.get_mut(topic)?;
        let join_ref = joined.join_ref.clone();
        let mut effects = Effects::default();
        let outcome = {
            let mut cctx = ChannelContext::new(
                topic,
                &join_ref,
                info,
                pubsub,
                OutboundRoom { frames: link.room(), bytes: link.room_bytes() },
                &mut effects,
            );
            std::panic::catch_unwind(AssertUnwindSafe(|| callback(joined.channel.as_mut(), &mut cctx)))
        };
        let Effects { frames, tasks } = effects;
        for frame in frames {
            match frame {
                Emit::Push(event, payload) => {
                    let frame = Outgoing::Push { join_ref: Some(&join_ref), topic, event: &event, payload: &payload };
                    self.send(ctx, frame);
                }
                Emit::Forward(broadcast) => self.forward(ctx, &broadcast),
            }
        }
        for task in tasks {
            self.start_task(ctx, topic, &join_ref, task);
        }
        Some(outcome)
    }

    /// Replies when `future` completes, then hands its info, if any, to the channel's
    /// `handle_info` when the same join is still there.
    fn reply_later(
        &mut self,
        ctx: &mut Ctx<Self>,
        topic: String,
        join_ref: String,
        msg_ref: Option<String>,
        future: LocalBoxFuture<'static, (Reply, Option<Box<dyn Any>>)>,
    ) {
        self.in_flight += 1;
        let future = AssertUnwindSafe(future).catch_unwind().into_connection(self);
        ctx.spawn(future.map(move |result, act, ctx| {
            act.in_flight -= 1;
            match result {
                Ok((reply, info)) => {
                    act.reply(ctx, Some(&join_ref), msg_ref.as_deref(), &topic, &reply);
                    if let Some(info) = info {
                        act.hand_info(ctx, &topic, &join_ref, info);
                    }
                }
                Err(_) if act.channels.get(&topic).is_some_and(|c| c.join_ref == join_ref) => {
                    act.crash_channel(ctx, &topic, "handle_in future panicked");
                }
                Err(_) => {}
            }
            act.finish_drain_if_idle(ctx);
        }));
    }

    /// Runs a channel's task off the actor; its result goes to `handle_info` if the same join
    /// of the topic is still there when it completes.
    fn start_task(&mut self, ctx: &mut Ctx<Self>, topic: &str, join_ref: &str, task: ChannelTask) {
        let (topic, join_ref) = (topic.to_owned(), join_ref.to_owned());
        let task = AssertUnwindSafe(task).catch_unwind().into_connection(self);
        ctx.spawn(task.map(move |result, act, ctx| match result {
            Ok(info) => act.hand_info(ctx, &topic, &join_ref, info),
            Err(_) if act.is_same_join(&topic, &join_ref) => act.crash_channel(ctx, &topic, "channel task panicked"),
            Err(_) => {}
        }));
    }

    /// Whether the channel joined on `topic` is still the join `join_ref` named, on an open socket.
    fn is_same_join(&self, topic: &str, join_ref: &str) -> bool {
        self.channels.get(topic).is_some_and(|c| c.join_ref == join_ref) && !self.link.is_closing()
    }

    /// Hands a task's or a reply's info to the channel's `handle_info`, if the same join of
    /// `topic` is still there; a panic there crashes the channel.
    fn hand_info(&mut self, ctx: &mut Ctx<Self>, topic: &str, join_ref: &str, info: Box<dyn Any>) {
        if !self.is_same_join(topic, join_ref) {
            return;
        }
        let outcome = self.run_callback(ctx, topic, |channel, cctx| channel.handle_info(info, cctx));
        if matches!(outcome, Some(Err(_))) {
            self.crash_channel(ctx, topic, "handle_info panicked");
        }
    }

    // ---- inbound --------------------------------------------------------------------------

    fn inbound(&mut self, ctx: &mut Ctx<Self>, decoded: Result<Message, DecodeError>) {
        let msg = match decoded {
            Ok(msg) => msg,
            Err(DecodeError::BinaryNotSupported) => {
                return self.close(ctx, CloseCode::Unsupported, "binary frames need vsn 2.0.0");
            }
            Err(e) => {
                if let Some(suppressed) = crate::logging::client_mistake() {
                    tracing::info!(conn = self.conn(), error = %e, suppressed, "closing socket on malformed frame");
                }
                return self.close(ctx, CloseCode::Error, "malformed frame");
            }
        };
        if self.info.identity.session.as_ref().is_some_and(|s| s.expired()) {
            // The expiry timer may not have fired yet; the session's rights end now all the same.
            let reply = Reply::error(Code::SessionExpired, "session_expired");
            self.reply(ctx, msg.join_ref.as_deref(), msg.msg_ref.as_deref(), &msg.topic, &reply);
            return self.close(ctx, CloseCode::Away, "session expired");
        }
        if self.limiter.check().is_err() {
            metrics::global().rate_limited_frames.inc();
            let reply = Reply::error(Code::RateLimited, "rate limited");
            return self.reply(ctx, msg.join_ref.as_deref(), msg.msg_ref.as_deref(), &msg.topic, &reply);
        }
        self.handle_message(ctx, msg);
    }

    fn handle_message(&mut self, ctx: &mut Ctx<Self>, msg: Message) {
        let Message { join_ref, msg_ref, topic, event, payload } = msg;
        metrics::global().push_received(&event);
        if topic == PHOENIX_TOPIC && event == HEARTBEAT {
            return self.reply(ctx, None, msg_ref.as_deref(), &topic, &Reply::ok_empty());
        }
        if event == PHX_JOIN {
            return self.join(ctx, join_ref, msg_ref, topic, payload);
        }
        let Some(channel_join_ref) = self.channels.get(&topic).map(|c| c.join_ref.clone()) else {
            // Phoenix answers a leave of an unknown topic with ok, and anything else with an error.
            let (jr, reply) = if event == PHX_LEAVE {
                (join_ref.as_deref(), Reply::ok_empty())
            } else {
                (None, Reply::error(Code::UnmatchedTopic, "unmatched topic"))
            };
            return self.reply(ctx, jr, msg_ref.as_deref(), &topic, &reply);
        };
        if join_ref.as_deref().is_some_and(|jr| jr != channel_join_ref) {
            // A push for an earlier join of this topic: Phoenix drops it without a reply.
            tracing::debug!(conn = self.conn(), topic, event, "dropping message with stale join_ref");
            return;
        }
        let reject = if event == PHX_LEAVE {
            self.reply(ctx, Some(&channel_join_ref), msg_ref.as_deref(), &topic, &Reply::ok_empty());
            return self.end_channel(ctx, &topic, LeaveReason::Leave, PHX_CLOSE);
        } else if is_reserved_event(&event) {
            Some("reserved event")
        } else if event.is_empty() {
            Some("event name must not be empty")
        } else if event.len() > self.settings.max_event_bytes {
            Some("event name too long")
        } else {
            None
        };
        if let Some(reason) = reject {
            let reply = Reply::error(Code::InvalidEvent, reason);
            return self.reply(ctx, Some(&channel_join_ref), msg_ref.as_deref(), &topic, &reply);
        }
        self.dispatch(ctx, topic, channel_join_ref, msg_ref, event, payload);
    }

    fn dispatch(
        &mut self,
        ctx: &mut Ctx<Self>,
        topic: String,
        join_ref: String,
        msg_ref: Option<String>,
        event: String,
        payload: Payload,
    ) {
        if self.in_flight >= self.settings.max_pending_replies {
            // Refused before the channel sees it: the work would only queue behind the rest.
            metrics::global().pending_reply_refusals.inc();
            // `status_code` too, where a message ack keeps its code (the table's HTTP column).
            let code = Code::TooManyPendingReplies;
            let status = serde_json::json!({ "status_code": code.http_status() });
            let reply = Reply::error_with(code, "too many pending replies", status);
            return self.reply(ctx, Some(&join_ref), msg_ref.as_deref(), &topic, &reply);
        }
        let Some(outcome) = self.run_callback(ctx, &topic, |channel, cctx| channel.handle_in(&event, payload, cctx))
        else {
            return;
        };
        match outcome {
            Err(_) => self.crash_channel(ctx, &topic, "handle_in panicked"),
            Ok(HandleIn::Reply(reply)) => self.reply(ctx, Some(&join_ref), msg_ref.as_deref(), &topic, &reply),
            Ok(HandleIn::NoReply) => {}
            Ok(HandleIn::Later(future)) => {
                let future = future.map(|reply| (reply, None));
                self.reply_later(ctx, topic, join_ref, msg_ref, Box::pin(future));
            }
            Ok(HandleIn::LaterThen(future)) => {
                let future = future.map(|(reply, info)| (reply, Some(info)));
                self.reply_later(ctx, topic, join_ref, msg_ref, Box::pin(future));
            }
            Ok(HandleIn::Stop { reply, reason }) => {
                if let Some(reply) = reply {
                    self.reply(ctx, Some(&join_ref), msg_ref.as_deref(), &topic, &reply);
                }
                match reason {
                    StopReason::Normal => self.end_channel(ctx, &topic, LeaveReason::Stopped, PHX_CLOSE),
                    StopReason::Crash(why) => {
                        tracing::warn!(conn = self.conn(), topic, reason = %why, "channel stopped with an error");
                        self.end_channel(ctx, &topic, LeaveReason::Stopped, PHX_ERROR);
                    }
                }
            }
        }
    }

    fn join(
        &mut self,
        ctx: &mut Ctx<Self>,
        join_ref: Option<String>,
        msg_ref: Option<String>,
        topic: String,
        payload: Payload,
    ) {
        let Some(channel_join_ref) = join_ref.clone().or_else(|| msg_ref.clone()) else {
            return self.reply(ctx, None, None, &topic, &Reply::error(Code::BadRequest, "join needs a ref"));
        };
        if topic.len() > self.settings.max_topic_bytes {
            metrics::global().join(&topic, false);
            let reply = Reply::error(Code::InvalidTopic, "topic too long");
            return self.reply(ctx, join_ref.as_deref(), msg_ref.as_deref(), &topic, &reply);
        }
        // The nodes' own topics are refused as if no channel matched, whatever the router says.
        let route = if crate::pubsub::topic::is_internal(&topic) { None } else { self.router.route(&topic).cloned() };
        let Some(factory) = route else {
            if let Some(suppressed) = crate::logging::client_mistake() {
                tracing::info!(conn = self.conn(), topic, suppressed, "join refused: unmatched topic");
            }
            metrics::global().join(&topic, false);
            let reply = Reply::error(Code::UnmatchedTopic, "unmatched topic");
            return self.reply(ctx, None, msg_ref.as_deref(), &topic, &reply);
        };
        if !self.channels.contains_key(&topic) && self.channels.len() >= self.settings.max_channels {
            metrics::global().join(&topic, false);
            let reply = Reply::error(Code::TooManyChannels, "too many channels joined");
            return self.reply(ctx, join_ref.as_deref(), msg_ref.as_deref(), &topic, &reply);
        }
        // A duplicate join replaces the old channel first; its phx_close goes out after the new
        // join's reply, so the client (which already tracks the new join_ref) ignores it.
        let replaced = self.channels.remove(&topic).map(|mut old| {
            metrics::global().channels.dec();
            self.terminate(&topic, &mut old, LeaveReason::Replaced);
            old.join_ref
        });

        let request =
            JoinRequest { topic: topic.clone(), payload, socket: Rc::clone(&self.info), pubsub: self.pubsub.clone() };
        let joining = std::panic::catch_unwind(AssertUnwindSafe(|| factory.join(request)));
        let (pubsub, recipient, subscriber, sub_topic) =
            (self.pubsub.clone(), Self::recipient(ctx), self.conn(), topic.clone());
        let joined = async move {
            let future = joining.map_err(|_| JoinFailure::Crashed)?;
            let joined = match AssertUnwindSafe(future).catch_unwind().await {
                Err(_) => return Err(JoinFailure::Crashed),
                Ok(Err(reason)) => return Err(JoinFailure::Refused(reason)),
                Ok(Ok(joined)) => joined,
            };
            // Subscribed before the reply, so no broadcast after the ok is missed.
            pubsub.subscribe(&sub_topic, subscriber, recipient).await.map_err(|_| JoinFailure::Crashed)?;
            Ok::<Joined, JoinFailure>(joined)
        };
        // Like Phoenix, the socket handles nothing else until the join is decided, so frames and
        // broadcasts that arrive meanwhile are written after the join reply.
        ctx.wait(joined.into_connection(self).map(move |result, act, ctx| {
            let (jr, mr) = (join_ref.as_deref(), msg_ref.as_deref());
            metrics::global().join(&topic, result.is_ok());
            match result {
                Ok(joined) => {
                    tracing::info!(conn = act.conn(), topic, join_ref = channel_join_ref, "joined");
                    act.channels
                        .insert(topic.clone(), JoinedChannel { join_ref: channel_join_ref, channel: joined.channel });
                    metrics::global().channels.inc();
                    act.reply(ctx, jr, mr, &topic, &Reply::ok(joined.response));
                    if let Some(old) = replaced {
                        act.lifecycle(ctx, &old, &topic, PHX_CLOSE);
                    }
                    act.after_join(ctx, &topic);
                }
                Err(failure) => {
                    if replaced.is_some() {
                        act.pubsub.unsubscribe(&topic, act.conn());
                    }
                    let refusal = match failure {
                        JoinFailure::Refused(refusal) => refusal,
                        JoinFailure::Crashed => Refusal::new(Code::Internal, "join crashed"),
                    };
                    tracing::info!(
                        conn = act.conn(),
                        topic,
                        code = %refusal.code,
                        reason = refusal.reason,
                        "join refused"
                    );
                    let reply = Reply::from(refusal);
                    act.reply(ctx, jr, mr, &topic, &reply);
                    if let Some(old) = replaced {
                        act.lifecycle(ctx, &old, &topic, PHX_CLOSE);
                    }
                }
            }
        }));
    }

    fn after_join(&mut self, ctx: &mut Ctx<Self>, topic: &str) {
        let outcome = self.run_callback(ctx, topic, |channel, cctx| channel.after_join(cctx));
        if matches!(outcome, Some(Err(_))) {
            self.crash_channel(ctx, topic, "after_join panicked");
        }
    }

    fn terminate(&self, topic: &str, joined: &mut JoinedChannel, reason: LeaveReason) {
        // Pushes and tasks of a channel that is ending go nowhere.
        let mut effects = Effects::default();
        let mut cctx = ChannelContext::new(
            topic,
            &joined.join_ref,
            &self.info,
            &self.pubsub,
            OutboundRoom::default(),
            &mut effects,
        );
        // A channel that panics while terminating is gone either way.
        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| joined.channel.terminate(reason, &mut cctx)));
    }

    /// Removes a channel and tells the client with `phx_close` (graceful) or `phx_error` (crash).
    fn end_channel(&mut self, ctx: &mut Ctx<Self>, topic: &str, reason: LeaveReason, event: &str) {
        let Some(mut joined) = self.channels.remove(topic) else { return };
        metrics::global().channels.dec();
        self.terminate(topic, &mut joined, reason);
        self.pubsub.unsubscribe(topic, self.conn());
        tracing::info!(conn = self.conn(), topic, reason = ?reason, event, "channel ended");
        self.lifecycle(ctx, &joined.join_ref, topic, event);
    }

    fn crash_channel(&mut self, ctx: &mut Ctx<Self>, topic: &str, why: &str) {
        tracing::error!(conn = self.conn(), topic, why, "channel crashed");
        self.end_channel(ctx, topic, LeaveReason::Stopped, PHX_ERROR);
    }
}

impl Session for SocketSession {
    fn link(&mut self) -> &mut Link {
        &mut self.link
    }

    fn started(&mut self, ctx: &mut Ctx<Self>) {
        let session = self.info.identity.session.clone();
        let control_topics: Vec<String> =
            self.info.identity.socket_id.iter().cloned().chain(session.as_ref().map(|s| s.topic.clone())).collect();
        if !control_topics.is_empty() {
            let (pubsub, recipient, conn) = (self.pubsub.clone(), Self::recipient(ctx), self.conn());
            let recheck = session.clone();
            // Waited on, so a disconnect broadcast right after connect is not missed; then the
            // session is asked once more, for an end announced before the subscription.
            ctx.wait(
                async move {
                    for topic in control_topics {
                        if let Err(e) = pubsub.subscribe(&topic, conn, recipient.clone()).await {
                            tracing::warn!(conn, error = %e, "socket control subscription failed");
                        }
                    }
                    match recheck {
                        Some(grant) => grant.recheck().await,
                        None => true,
                    }
                }
                .into_connection(self)
                .map(|live, act, ctx| {
                    if !live {
                        tracing::info!(conn = act.conn(), "closing socket: its session ended before it listened");
                        act.close(ctx, CloseCode::Away, "session ended");
                    }
                }),
            );
        }
        if let Some(session) = session {
            ctx.run_later(session.remaining(), |act, ctx| {
                tracing::info!(conn = act.conn(), "closing socket: its session expired");
                act.close(ctx, CloseCode::Away, "session expired");
            });
        }
    }

    fn text(&mut self, ctx: &mut Ctx<Self>, text: ByteString) {
        let decoded = self.serializer.decode_text(&text);
        self.inbound(ctx, decoded);
    }

    fn binary(&mut self, ctx: &mut Ctx<Self>, data: Bytes) {
        let decoded = self.serializer.decode_binary(data);
        self.inbound(ctx, decoded);
    }

    fn busy(&self) -> bool {
        self.in_flight > 0
    }

    fn stopped(&mut self) {
        let topics: Vec<String> = self.channels.keys().cloned().collect();
        for topic in topics {
            if let Some(mut joined) = self.channels.remove(&topic) {
                metrics::global().channels.dec();
                self.terminate(&topic, &mut joined, LeaveReason::SocketClosed);
                self.pubsub.unsubscribe(&topic, self.conn());
            }
        }
        if let Some(socket_id) = &self.info.identity.socket_id {
            self.pubsub.unsubscribe(socket_id, self.conn());
        }
        if let Some(session) = &self.info.identity.session {
            self.pubsub.unsubscribe(&session.topic, self.conn());
        }
    }

    fn deliver(&mut self, Deliver(broadcast): Deliver, ctx: &mut Ctx<Self>) {
        if self.info.identity.socket_id.as_deref() == Some(broadcast.topic.as_str()) {
            if broadcast.name() == DISCONNECT_EVENT
                && disconnect_applies(broadcast.payload(), &self.info.identity.device)
            {
                tracing::info!(conn = self.conn(), "disconnect requested for socket id");
                self.close(ctx, CloseCode::Away, "disconnected");
            }
            return;
        }
        if self.info.identity.session.as_ref().is_some_and(|s| s.topic == broadcast.topic) {
            if broadcast.name() == DISCONNECT_EVENT {
                tracing::info!(conn = self.conn(), "closing socket: its session ended");
                self.close(ctx, CloseCode::Away, "session ended");
            }
            return;
        }
        let Some(forward) =
            self.run_callback(ctx, &broadcast.topic, |channel, cctx| channel.handle_out(&broadcast, cctx))
        else {
            return;
        };
        match forward {
            Ok(true) => self.forward(ctx, &broadcast),
            Ok(false) => {}
            Err(_) => self.crash_channel(ctx, &broadcast.topic, "handle_out panicked"),
        }
    }
}

/// Whether a `disconnect` on the socket id closes a socket of `device`: every socket when the
/// payload names no device (`{}` or empty), else only that device's. A disconnect is rare, so
/// the payload is parsed only then.
pub fn disconnect_applies(payload: &Payload, device: &Option<String>) -> bool {
    #[derive(serde::Deserialize)]
    struct Target {
        device: Option<String>,
    }
    let target = payload.as_json_str().and_then(|text| serde_json::from_str::<Target>(text).ok());
    match target.and_then(|t| t.device) {
        Some(wanted) => device.as_deref() == Some(wanted.as_str()),
        None => true,
    }
}
