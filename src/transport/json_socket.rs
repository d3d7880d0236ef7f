//! `GET /json/websocket`: the seed-002 JSON account protocol, one session per connection.
//!
//! Frames are handled one at a time by an [`JsonProtocolSession`]; this session only moves text
//! in and out, subscribes the connection to its user's `json:<eid>` topic after `subscribe`,
//! and carries out deliveries to other users through pub/sub. The socket's lifecycle (close
//! handshake, idle timeout, slow consumers, shutdown) is [`super::connection`]'s.

use std::sync::Arc;

use actix::{ActorFutureExt, AsyncContext, SpawnHandle};
use actix_http::Request;
use actix_ws::CloseCode;
use bytes::Bytes;
use bytestring::ByteString;
use futures_util::future::LocalBoxFuture;

use super::connection::{Connection, Ctx, DISCONNECT_EVENT, IntoConnection, Link, Session, Sockets};
use super::upgrade::{Accepted, Endpoint};
use crate::accounts::json_protocol::{Effect, JsonProtocolSession, Outcome, error_frame};
use crate::accounts::{Accounts, SessionInfo};
use crate::channels::auth::session_grant;
use crate::channels::socket::SessionGrant;
use crate::channels::user::notify_account_event;
use crate::config::SocketConfig;
use crate::error::Error;
use crate::protocol::WireFrame;
use crate::pubsub::{Deliver, PubSub, Topic};

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

impl Endpoint for JsonEndpoint {
    fn accept<'a>(self: Arc<Self>, req: &'a Request) -> LocalBoxFuture<'a, Result<Accepted, Error>> {
        Box::pin(std::future::ready(accept(req, self)))
    }
}

/// Checks a seed-002 JSON client's handshake; the connection starts once the `101` is out (see
/// [`super::upgrade`]). Authentication happens later, in the protocol's own frames.
fn accept(req: &Request, state: Arc<JsonEndpoint>) -> Result<Accepted, Error> {
    super::upgrade::verify_handshake(req, &state.settings.check_origin)?;
    // Signed in only later, by its frames: the socket counts toward the node's limit alone.
    let admission = state.sockets.admit(None)?;
    let response = super::upgrade::switching_protocols(req);
    let peer = req.peer_addr();
    Ok(Accepted {
        response,
        max_bytes: state.settings.max_frame_bytes,
        start: Box::new(move |reader, writer| {
            let id = state.sockets.next_connection_id().subscriber();
            let session = JsonSession {
                link: Link::new("json", id, writer, &state.settings, admission),
                protocol: Some(JsonProtocolSession::with_peer(state.accounts.clone(), peer.map(|p| p.ip()))),
                accounts: state.accounts.clone(),
                pubsub: state.pubsub.clone(),
                subscribed: None,
                session: None,
                expiry: None,
            };
            tracing::info!(conn = id, ?peer, "json socket connected");
            Connection::start(session, reader);
        }),
    })
}

struct JsonSession {
    link: Link,
    /// Taken out while a frame is being handled, so frames are handled strictly in order.
    protocol: Option<JsonProtocolSession>,
    accounts: Accounts,
    pubsub: PubSub,
    subscribed: Option<String>,
    /// The session that subscribed, and the timer that closes the connection at its expiry.
    session: Option<SessionGrant>,
    expiry: Option<SpawnHandle>,
}

impl JsonSession {
    fn id(&self) -> u64 {
        self.link.id()
    }

    fn send(&mut self, ctx: &mut Ctx<Self>, text: String) {
        self.enqueue(ctx, WireFrame::Text(ByteString::from(text)));
    }

    fn apply(&mut self, ctx: &mut Ctx<Self>, outcome: Outcome) {
        for reply in &outcome.replies {
            self.send(ctx, reply.to_string());
        }
        for effect in outcome.effects {
            match effect {
                Effect::Subscribed { username, session, .. } => {
                    self.watch_session(ctx, &session);
                    self.subscribe(ctx, username);
                }
                Effect::Deliver { to, frame, queue_if_offline } => self.deliver_to(ctx, to, frame, queue_if_offline),
                Effect::Disconnect => self.close(ctx, CloseCode::Policy, "bad session token"),
            }
        }
    }

    /// Closes the connection when `session` ends (sign-out, revocation) or expires.
    fn watch_session(&mut self, ctx: &mut Ctx<Self>, session: &SessionInfo) {
        let grant = session_grant(&self.accounts, session);
        if let Some(previous) = self.session.replace(grant.clone()) {
            self.pubsub.unsubscribe(&previous.topic, self.id());
        }
        if let Some(timer) = self.expiry.take() {
            ctx.cancel_future(timer);
        }
        self.expiry = Some(ctx.run_later(grant.remaining(), |act, ctx| {
            tracing::info!(conn = act.id(), "closing json socket: its session expired");
            act.close(ctx, CloseCode::Away, "session expired");
        }));
        let (pubsub, recipient, id) = (self.pubsub.clone(), ctx.address().recipient::<Deliver>(), self.id());
        // Asked again once subscribed: an end announced before the subscription still counts.
        ctx.wait(
            async move {
                if let Err(e) = pubsub.subscribe(&grant.topic, id, recipient).await {
                    tracing::warn!(conn = id, error = %e, "json session subscription failed");
                }
                grant.recheck().await
            }
            .into_connection(self)
            .map(|live, act, ctx| {
                if !live {
                    tracing::info!(conn = act.id(), "closing json socket: its session ended before it listened");
                    act.close(ctx, CloseCode::Away, "session ended");
                }
            }),
        );
    }

    fn subscribe(&mut self, ctx: &mut Ctx<Self>, username: String) {
        if let Some(previous) = self.subscribed.replace(username.clone()) {
            self.pubsub.unsubscribe(Topic::json(&previous).as_str(), self.id());
        }
        let (pubsub, recipient, id) = (self.pubsub.clone(), ctx.address().recipient::<Deliver>(), self.id());
        ctx.wait(
            async move {
                if let Err(e) = pubsub.subscribe(Topic::json(&username).as_str(), id, recipient).await {
                    tracing::warn!(conn = id, error = %e, "json subscribe failed");
                }
            }
            .into_connection(self),
        );
    }

    fn deliver_to(&mut self, ctx: &mut Ctx<Self>, to: String, frame: serde_json::Value, queue_if_offline: bool) {
        let (pubsub, accounts, id) = (self.pubsub.clone(), self.accounts.clone(), self.id());
        ctx.spawn(
            async move {
                let online = pubsub.subscriber_count(Topic::json(&to).as_str()).await.unwrap_or(0) > 0;
                if !online
                    && queue_if_offline
                    && let Err(e) = accounts.queue_message(&to, &frame.to_string()).await
                {
                    tracing::warn!(conn = id, error = %e, "could not queue a frame for an offline user");
                }
                notify_account_event(&pubsub, &to, &frame);
            }
            .into_connection(self),
        );
    }
}

impl Session for JsonSession {
    fn link(&mut self) -> &mut Link {
        &mut self.link
    }

    fn text(&mut self, ctx: &mut Ctx<Self>, text: ByteString) {
        let Some(mut protocol) = self.protocol.take() else { return };
        let handled = async move {
            let outcome = protocol.handle_text(&text).await;
            (protocol, outcome)
        };
        // Waited on: the next frame is not read until this one's replies are out.
        ctx.wait(handled.into_connection(self).map(|(protocol, outcome), act, ctx| {
            act.protocol = Some(protocol);
            act.apply(ctx, outcome);
        }));
    }

    fn binary(&mut self, ctx: &mut Ctx<Self>, _data: Bytes) {
        self.send(ctx, error_frame("binary frames are not part of this protocol").to_string());
    }

    fn deliver(&mut self, Deliver(broadcast): Deliver, ctx: &mut Ctx<Self>) {
        if self.session.as_ref().is_some_and(|s| s.topic == broadcast.topic) {
            if broadcast.name() == DISCONNECT_EVENT {
                tracing::info!(conn = self.id(), "closing json socket: its session ended");
                self.close(ctx, CloseCode::Away, "session ended");
            }
            return;
        }
        if let Some(text) = broadcast.payload().as_json_str()
            && self.enqueue(ctx, WireFrame::Text(ByteString::from(text.to_owned())))
            && broadcast.name() == "message"
        {
            crate::metrics::global().messages_delivered.inc();
        }
    }

    fn stopped(&mut self) {
        if let Some(username) = &self.subscribed {
            self.pubsub.unsubscribe(Topic::json(username).as_str(), self.id());
        }
        if let Some(session) = &self.session {
            self.pubsub.unsubscribe(&session.topic, self.id());
        }
    }
}
