//! `GET /json/websocket`: the seed-002 JSON account protocol, one actor per connection.
//!
//! Frames are handled one at a time by an [`JsonProtocolSession`]; this actor only moves text
//! in and out, subscribes the connection to its user's `json:<eid>` topic after `subscribe`,
//! and carries out deliveries to other users through pub/sub.

use std::sync::Arc;
use std::time::Instant;

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, SpawnHandle, StreamHandler, WrapFuture,
};
use actix_http::Request;
use actix_web::web;
use actix_ws::{AggregatedMessage, CloseCode, ProtocolError};
use bytestring::ByteString;

use super::socket::DISCONNECT_EVENT;
use super::upgrade::Accepted;
use super::writer::{Outbound, QueueError};
use super::{CLOSE_HANDSHAKE_GRACE, Sockets};
use crate::accounts::json_protocol::{Effect, JsonProtocolSession, Outcome, error_frame};
use crate::accounts::{Accounts, SessionInfo};
use crate::channels::auth::session_grant;
use crate::channels::socket::SessionGrant;
use crate::channels::user::{json_topic, notify_account_event};
use crate::config::SocketConfig;
use crate::error::{Code, Error};
use crate::protocol::WireFrame;
use crate::pubsub::{Deliver, PubSub};

/// What the JSON endpoint needs, shared by all workers.
pub struct JsonEndpoint {
    /// The accounts service.
    pub accounts: Accounts,
    /// The pub/sub layer.
    pub pubsub: PubSub,
    /// Live sockets and shutdown.
    pub sockets: Arc<Sockets>,
    /// The socket limits (frame size, outbound queue, idle timeout), shared with the Phoenix endpoint.
    pub settings: Arc<SocketConfig>,
}

/// Checks a seed-002 JSON client's handshake; the connection starts once the `101` is out (see
/// [`super::upgrade`]). Authentication happens later, in the protocol's own frames.
pub fn accept(req: &Request, state: &web::Data<JsonEndpoint>) -> Result<Accepted, Error> {
    if let Err(e) = actix_http::ws::verify_handshake(req.head()) {
        return Err(Error::new(Code::BadHandshake, e.to_string()));
    }
    let response = actix_http::ws::handshake_response(req.head()).finish().drop_body();
    let state = web::Data::clone(state);
    let peer = req.peer_addr();
    Ok(Accepted {
        response,
        max_bytes: state.settings.max_frame_bytes,
        start: Box::new(move |reader, writer| {
            let connection = JsonConnection {
                id: state.sockets.next_connection_id(),
                protocol: Some(JsonProtocolSession::with_peer(state.accounts.clone(), peer.map(|p| p.ip()))),
                accounts: state.accounts.clone(),
                pubsub: state.pubsub.clone(),
                sockets: Arc::clone(&state.sockets),
                outbound: Outbound::start(writer, state.settings.queue_limits()),
                settings: Arc::clone(&state.settings),
                last_received: Instant::now(),
                subscribed: None,
                session: None,
                expiry: None,
                closing: false,
            };
            tracing::info!(conn = connection.id, ?peer, "json socket connected");
            JsonConnection::create(move |ctx| {
                ctx.add_stream(reader);
                connection
            });
        }),
    })
}

struct JsonConnection {
    id: u64,
    /// Taken out while a frame is being handled, so frames are handled strictly in order.
    protocol: Option<JsonProtocolSession>,
    accounts: Accounts,
    pubsub: PubSub,
    sockets: Arc<Sockets>,
    outbound: Outbound,
    settings: Arc<SocketConfig>,
    last_received: Instant,
    subscribed: Option<String>,
    /// The session that subscribed, and the timer that closes the connection at its expiry.
    session: Option<SessionGrant>,
    expiry: Option<SpawnHandle>,
    closing: bool,
}

impl JsonConnection {
    fn send(&mut self, ctx: &mut Context<Self>, text: String) {
        if self.closing {
            return;
        }
        match self.outbound.send(WireFrame::Text(ByteString::from(text))) {
            Ok(()) => {}
            Err(QueueError::Full) => {
                if !self.closing {
                    tracing::info!(conn = self.id, "closing slow json socket");
                    self.closing = true;
                    self.outbound.abort(CloseCode::Away, "slow consumer: outbound queue full");
                    ctx.run_later(CLOSE_HANDSHAKE_GRACE, |_, ctx| ctx.stop());
                }
            }
            Err(QueueError::Closed) => ctx.stop(),
        }
    }

    fn close(&mut self, ctx: &mut Context<Self>, code: CloseCode, reason: &str) {
        if !self.closing {
            self.closing = true;
            self.outbound.close(code, reason);
            ctx.run_later(CLOSE_HANDSHAKE_GRACE, |_, ctx| ctx.stop());
        }
    }

    fn handle_text(&mut self, ctx: &mut Context<Self>, text: ByteString) {
        let Some(mut protocol) = self.protocol.take() else { return };
        let handled = async move {
            let outcome = protocol.handle_text(&text).await;
            (protocol, outcome)
        };
        // Waited on: the next frame is not read until this one's replies are out.
        ctx.wait(handled.into_actor(self).map(|(protocol, outcome), act, ctx| {
            act.protocol = Some(protocol);
            act.apply(ctx, outcome);
        }));
    }

    fn apply(&mut self, ctx: &mut Context<Self>, outcome: Outcome) {
        for reply in &outcome.replies {
            self.send(ctx, reply.to_string());
        }
        for effect in outcome.effects {
            match effect {
                Effect::Subscribed { username, session, .. } => {
                    self.watch_session(ctx, &session);
                    self.subscribe(ctx, username);
                }
                Effect::Deliver { to, frame, queue_if_offline } => self.deliver(ctx, to, frame, queue_if_offline),
                Effect::Disconnect => self.close(ctx, CloseCode::Policy, "bad session token"),
            }
        }
    }

    /// Closes the connection when `session` ends (sign-out, revocation) or expires.
    fn watch_session(&mut self, ctx: &mut Context<Self>, session: &SessionInfo) {
        let grant = session_grant(&self.accounts, session);
        if let Some(previous) = self.session.replace(grant.clone()) {
            self.pubsub.unsubscribe(&previous.topic, self.id);
        }
        if let Some(timer) = self.expiry.take() {
            ctx.cancel_future(timer);
        }
        self.expiry = Some(ctx.run_later(grant.remaining(), |act, ctx| {
            tracing::info!(conn = act.id, "closing json socket: its session expired");
            act.close(ctx, CloseCode::Away, "session expired");
        }));
        let (pubsub, recipient, id) = (self.pubsub.clone(), ctx.address().recipient::<Deliver>(), self.id);
        // Asked again once subscribed: an end announced before the subscription still counts.
        ctx.wait(
            async move {
                if let Err(e) = pubsub.subscribe(&grant.topic, id, recipient).await {
                    tracing::warn!(conn = id, error = %e, "json session subscription failed");
                }
                grant.recheck().await
            }
            .into_actor(self)
            .map(|live, act, ctx| {
                if !live {
                    tracing::info!(conn = act.id, "closing json socket: its session ended before it listened");
                    act.close(ctx, CloseCode::Away, "session ended");
                }
            }),
        );
    }

    fn subscribe(&mut self, ctx: &mut Context<Self>, username: String) {
        if let Some(previous) = self.subscribed.replace(username.clone()) {
            self.pubsub.unsubscribe(&json_topic(&previous), self.id);
        }
        let (pubsub, recipient, id) = (self.pubsub.clone(), ctx.address().recipient::<Deliver>(), self.id);
        ctx.wait(
            async move {
                if let Err(e) = pubsub.subscribe(&json_topic(&username), id, recipient).await {
                    tracing::warn!(conn = id, error = %e, "json subscribe failed");
                }
            }
            .into_actor(self),
        );
    }

    fn deliver(&mut self, ctx: &mut Context<Self>, to: String, frame: serde_json::Value, queue_if_offline: bool) {
        let (pubsub, accounts, id) = (self.pubsub.clone(), self.accounts.clone(), self.id);
        ctx.spawn(
            async move {
                let online = pubsub.subscriber_count(&json_topic(&to)).await.unwrap_or(0) > 0;
                if !online
                    && queue_if_offline
                    && let Err(e) = accounts.queue_message(&to, &frame.to_string()).await
                {
                    tracing::warn!(conn = id, error = %e, "could not queue a frame for an offline user");
                }
                notify_account_event(&pubsub, &to, &frame);
            }
            .into_actor(self),
        );
    }
}

impl Actor for JsonConnection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.sockets.opened();
        let idle = self.settings.idle_timeout();
        ctx.run_interval(super::idle_check_interval(idle), move |act, ctx| {
            if !act.closing && act.last_received.elapsed() >= idle {
                tracing::info!(conn = act.id, "closing idle json socket");
                act.close(ctx, CloseCode::Away, "idle timeout");
            }
        });
        ctx.spawn(
            self.sockets
                .shutdown_requested()
                .into_actor(self)
                .map(|_, act, ctx| act.close(ctx, CloseCode::Away, "server shutting down")),
        );
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(username) = &self.subscribed {
            self.pubsub.unsubscribe(&json_topic(username), self.id);
        }
        if let Some(session) = &self.session {
            self.pubsub.unsubscribe(&session.topic, self.id);
        }
        self.sockets.closed();
        tracing::info!(conn = self.id, "json socket closed");
    }
}

impl StreamHandler<Result<AggregatedMessage, ProtocolError>> for JsonConnection {
    fn handle(&mut self, item: Result<AggregatedMessage, ProtocolError>, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        self.last_received = Instant::now();
        match item {
            Ok(AggregatedMessage::Text(text)) => self.handle_text(ctx, text),
            Ok(AggregatedMessage::Binary(_)) => {
                self.send(ctx, error_frame("binary frames are not part of this protocol").to_string());
            }
            Ok(AggregatedMessage::Ping(data)) => {
                let _ = self.outbound.pong(data);
            }
            Ok(AggregatedMessage::Pong(_)) => {}
            Ok(AggregatedMessage::Close(reason)) => {
                self.closing = true;
                self.outbound.close(reason.map_or(CloseCode::Normal, |r| r.code), "");
                ctx.stop();
            }
            Err(e) => {
                let (code, reason) = super::read_error_close(&e);
                tracing::debug!(conn = self.id, error = %e, "closing json socket on a websocket error");
                self.close(ctx, code, reason);
            }
        }
    }
}

impl Handler<Deliver> for JsonConnection {
    type Result = ();

    fn handle(&mut self, Deliver(broadcast): Deliver, ctx: &mut Context<Self>) {
        if self.session.as_ref().is_some_and(|s| s.topic == broadcast.topic) {
            if broadcast.name() == DISCONNECT_EVENT {
                tracing::info!(conn = self.id, "closing json socket: its session ended");
                self.close(ctx, CloseCode::Away, "session ended");
            }
            return;
        }
        if let Some(text) = broadcast.payload().as_json_str() {
            self.send(ctx, text.to_owned());
        }
    }
}
