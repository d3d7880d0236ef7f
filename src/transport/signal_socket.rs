//! `GET /signal/websocket`: the seed-001 key directory and sealed-sender protocol, one
//! protobuf `signal.Message` envelope per binary frame.
//!
//! This session owns the connection's side of the protocol: the challenge it sends first, the
//! address it is bound to after a login (for good), the sequence numbers of what it sends, the
//! requests each kind of connection may make, and the delivery of the bound device's sealed
//! messages (backlog after its cursor, then live ones, each acknowledged by sequence). The
//! rules behind the requests are `crate::keys`'s and storage is `crate::messaging`'s; the
//! socket's lifecycle (close handshake, idle timeout, slow consumers, shutdown) is
//! [`super::connection`]'s.
//!
//! Frames are handled one at a time (each request's store work is waited on before the next
//! frame is read), so responses leave in request order. Nothing about an anonymous connection
//! (peer address, connection id) is logged alongside its requests.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use actix::{ActorFutureExt, AsyncContext};
use actix_http::Request;
use actix_ws::CloseCode;
use bytes::Bytes;
use bytestring::ByteString;
use futures_util::future::LocalBoxFuture;
use prost::Message as _;

use super::connection::{Connection, Ctx, IntoConnection, Link, Session, Sockets};
use super::upgrade::{Accepted, Endpoint};
use crate::config::SocketConfig;
use crate::error::Error;
use crate::keys::{self, Address, Keys, KeysError, UserId};
use crate::messaging::Messaging;
use crate::messaging::wire::{sealed_device_key, sealed_parts};
use crate::pb::signal as wire;
use crate::pb::signal::message::Payload as Body;
use crate::protocol::WireFrame;
use crate::pubsub::{Deliver, Event, PubSub, Topic};

/// Frames in a row that are not envelopes before the connection is closed as malformed input.
pub const MAX_INVALID_IN_A_ROW: u32 = 3;
/// The close code for a text frame: the protocol is binary only (RFC 6455's 1003).
pub const CLOSE_TEXT: CloseCode = CloseCode::Unsupported;
/// The close code for binary garbage over and over: the Phoenix socket's code for malformed
/// input (1011).
pub const CLOSE_MALFORMED: CloseCode = CloseCode::Error;
/// Sealed messages read from the log at a time, and delivered without an ack before the next read.
const BACKLOG_PAGE: i64 = 100;
/// Live messages held while the backlog is read; past it they are read back from the log instead.
const MAX_HELD: usize = 1024;

/// What the signal endpoint needs, shared by all workers.
pub struct SignalEndpoint {
    /// The key directory.
    pub keys: Keys,
    /// Where sealed messages are stored and read.
    pub messaging: Messaging,
    /// The pub/sub layer.
    pub pubsub: PubSub,
    /// Live sockets and shutdown.
    pub sockets: Arc<Sockets>,
    /// The socket limits, shared with the other endpoints.
    pub settings: Arc<SocketConfig>,
}

impl Endpoint for SignalEndpoint {
    fn accept<'a>(self: Arc<Self>, req: &'a Request) -> LocalBoxFuture<'a, Result<Accepted, Error>> {
        Box::pin(std::future::ready(accept(req, self)))
    }
}

fn accept(req: &Request, state: Arc<SignalEndpoint>) -> Result<Accepted, Error> {
    super::upgrade::verify_handshake(req, &state.settings.check_origin)?;
    // A login binds an address later, by a frame: the socket counts toward the node's limit alone.
    let admission = state.sockets.admit(None)?;
    let response = super::upgrade::switching_protocols(req);
    Ok(Accepted {
        response,
        max_bytes: state.settings.max_frame_bytes,
        start: Box::new(move |reader, writer| {
            let id = state.sockets.next_connection_id().subscriber();
            let session = SignalSession {
                link: Link::new("signal", id, writer, &state.settings, admission),
                keys: state.keys.clone(),
                messaging: state.messaging.clone(),
                pubsub: state.pubsub.clone(),
                nonce: keys::auth::new_nonce(),
                next_sequence: 0,
                bound: None,
                invalid_in_a_row: 0,
                delivery: Delivery::default(),
            };
            Connection::start(session, reader);
        }),
    })
}

/// The address a connection logged in as, and its names in Courier.
struct Bound {
    address: Address,
    eid: String,
    device_key: String,
}

/// The bound device's sealed messages on their way out.
#[derive(Default)]
struct Delivery {
    /// Sent and not acknowledged: offset → the sequence it went out with.
    unacked: BTreeMap<i64, u32>,
    /// The same, by sequence.
    by_sequence: HashMap<u32, i64>,
    /// The highest offset sent.
    sent_up_to: i64,
    /// The cursor last written: every message of this device up to it is acknowledged.
    cursor: i64,
    /// Whether the log is being read (live messages are held meanwhile).
    reading: bool,
    /// Whether the log must be read again before going live (a full page, or held overflow).
    read_again: bool,
    /// Whether the backlog is not read to its end yet (waiting for acks to read on).
    behind: bool,
    /// Live messages that came while the log was read.
    held: BTreeMap<i64, Vec<u8>>,
}

struct SignalSession {
    link: Link,
    keys: Keys,
    messaging: Messaging,
    pubsub: PubSub,
    nonce: [u8; keys::auth::NONCE_BYTES],
    next_sequence: u32,
    bound: Option<Bound>,
    invalid_in_a_row: u32,
    delivery: Delivery,
}

impl SignalSession {
    fn id(&self) -> u64 {
        self.link.id()
    }

    /// The next sequence of a message the server starts (not a response).
    fn take_sequence(&mut self) -> u32 {
        self.next_sequence = self.next_sequence.wrapping_add(1);
        self.next_sequence
    }

    /// Queues one envelope, telling whether it was.
    fn send(&mut self, ctx: &mut Ctx<Self>, sequence: u32, payload: Body) -> bool {
        let frame = wire::Message { sequence, payload: Some(payload) }.encode_to_vec();
        self.enqueue(ctx, WireFrame::Binary(Bytes::from(frame)))
    }

    fn ack(&mut self, ctx: &mut Ctx<Self>, sequence: u32) {
        self.send(ctx, sequence, Body::Ack(wire::Ack {}));
    }

    fn error(&mut self, ctx: &mut Ctx<Self>, sequence: u32, err: &KeysError) {
        let description = match err {
            // Storage details are for the server's log, not the client.
            KeysError::Storage(e) => {
                tracing::warn!(error = %e, "signal request failed on storage");
                "storage unavailable, retry".to_owned()
            }
            other => other.to_string(),
        };
        self.send(ctx, sequence, Body::Error(wire::Error { name: err.name().to_owned(), description }));
    }

    fn request(&mut self, ctx: &mut Ctx<Self>, msg: wire::Message) {
        let sequence = msg.sequence;
        let Some(payload) = msg.payload else {
            return self.error(ctx, sequence, &KeysError::InvalidMessage("the envelope carries no payload".into()));
        };
        match payload {
            Body::Ack(_) => self.acked(ctx, sequence),
            // A client's report on something the server sent; nothing to answer.
            Body::Error(_) => {}
            Body::AuthResponse(response) => self.login(ctx, sequence, &response),
            Body::Register(register) => match self.bound_address() {
                Some(address) => self.register(ctx, sequence, address, register),
                None => self.error(ctx, sequence, &KeysError::Unauthorized),
            },
            Body::Unregister(_) => match self.bound_address() {
                Some(address) => {
                    let keys = self.keys.clone();
                    self.answer(ctx, sequence, async move { keys.unregister(&address).await });
                }
                None => self.error(ctx, sequence, &KeysError::Unauthorized),
            },
            Body::RequestPreKeys(request) if self.bound.is_none() => self.request_pre_keys(ctx, sequence, request),
            Body::OutboundMessage(outbound) if self.bound.is_none() => self.outbound(ctx, sequence, outbound),
            Body::RequestPreKeys(_) | Body::OutboundMessage(_) => {
                self.error(ctx, sequence, &KeysError::AnonymousOnly);
            }
            Body::AuthChallenge(_) | Body::PreKey(_) | Body::PreKeysLow(_) | Body::InboundMessage(_) => {
                let err = KeysError::InvalidMessage("only the server sends this message".into());
                self.error(ctx, sequence, &err);
            }
        }
    }

    fn bound_address(&self) -> Option<Address> {
        self.bound.as_ref().map(|b| b.address.clone())
    }

    /// Waits on `work` (the next frame is read after it), then acks `sequence` or sends its error.
    fn answer(
        &mut self,
        ctx: &mut Ctx<Self>,
        sequence: u32,
        work: impl std::future::Future<Output = Result<(), KeysError>> + 'static,
    ) {
        ctx.wait(work.into_connection(self).map(move |result, act, ctx| match result {
            Ok(()) => act.ack(ctx, sequence),
            Err(e) => act.error(ctx, sequence, &e),
        }));
    }

    // ---- authentication -----------------------------------------------------------------

    fn login(&mut self, ctx: &mut Ctx<Self>, sequence: u32, response: &wire::AuthResponse) {
        if self.bound.is_some() {
            return self.error(ctx, sequence, &KeysError::AlreadyAuthenticated);
        }
        let address = match keys::auth::verify(&self.nonce, response) {
            Ok(address) => address,
            Err(e) => return self.error(ctx, sequence, &e),
        };
        let (keys, pubsub, id, recipient) =
            (self.keys.clone(), self.pubsub.clone(), self.id(), ctx.address().recipient::<Deliver>());
        let eid = address.eid();
        let signed_in = {
            let (address, eid) = (address.clone(), eid.clone());
            async move {
                keys.signed_in(&address).await?;
                // Subscribed before the backlog is read, so nothing committed meanwhile is missed.
                for topic in [Topic::user(&eid), Topic::keys(&eid)] {
                    pubsub
                        .subscribe(topic.as_str(), id, recipient.clone())
                        .await
                        .map_err(|e| KeysError::InvalidMessage(format!("cannot listen for messages: {e}")))?;
                }
                Ok::<_, KeysError>(())
            }
        };
        ctx.wait(signed_in.into_connection(self).map(move |result, act, ctx| {
            if let Err(e) = result {
                return act.error(ctx, sequence, &e);
            }
            let device_key = sealed_device_key(i64::from(address.device));
            act.bound = Some(Bound { address: address.clone(), eid, device_key });
            act.ack(ctx, sequence);
            act.check_low_at_login(ctx, address);
            act.delivery.reading = true;
            act.read_backlog(ctx, true);
        }));
    }

    fn check_low_at_login(&mut self, ctx: &mut Ctx<Self>, address: Address) {
        let keys = self.keys.clone();
        ctx.spawn(async move { keys.remaining(&address).await }.into_connection(self).map(|result, act, ctx| {
            match result {
                // Only a registered device has prekeys to top up; one that is not registers next.
                Ok(Some(remaining)) => {
                    if let Some(requested) = act.keys.low(remaining) {
                        act.push_low(ctx, requested);
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(conn = act.id(), error = %e, "prekey count at login failed"),
            }
        }));
    }

    fn push_low(&mut self, ctx: &mut Ctx<Self>, keys_requested: u32) {
        let sequence = self.take_sequence();
        self.send(ctx, sequence, Body::PreKeysLow(wire::PreKeysLow { keys_requested }));
    }

    // ---- key management (authenticated) ------------------------------------------------

    fn register(&mut self, ctx: &mut Ctx<Self>, sequence: u32, address: Address, register: wire::Register) {
        let keys = self.keys.clone();
        let work = async move {
            keys.register(&address, register.registration_id, register.signed_pre_key, register.one_time_pre_keys)
                .await
                .map(|_| ())
        };
        self.answer(ctx, sequence, work);
    }

    // ---- anonymous requests -------------------------------------------------------------

    fn request_pre_keys(&mut self, ctx: &mut Ctx<Self>, sequence: u32, request: wire::RequestPreKeys) {
        let user = match UserId::parse(&request.user_id) {
            Ok(user) => user,
            Err(e) => return self.error(ctx, sequence, &e),
        };
        let keys = self.keys.clone();
        let claimed = {
            let user = user.clone();
            async move { keys.claim_bundles(&user, &request.known_device_i_ds).await }
        };
        ctx.wait(claimed.into_connection(self).map(move |result, act, ctx| match result {
            Ok(bundles) => {
                for bundle in bundles {
                    let pre_key = wire::PreKey {
                        address: Some(Address { user: user.clone(), device: bundle.device }.to_wire()),
                        registration_id: bundle.registration_id,
                        signed_pre_key: bundle.signed_pre_key,
                        one_time_pre_key: bundle.one_time_pre_key.unwrap_or_default(),
                    };
                    act.send(ctx, sequence, Body::PreKey(pre_key));
                }
                // The end of the list: the seed leaves it implicit, Courier says it with an ack.
                act.ack(ctx, sequence);
            }
            Err(e) => act.error(ctx, sequence, &e),
        }));
    }

    fn outbound(&mut self, ctx: &mut Ctx<Self>, sequence: u32, outbound: wire::OutboundMessage) {
        let address = match outbound.to.as_ref().map(Address::from_wire) {
            Some(Ok(address)) => address,
            Some(Err(e)) => return self.error(ctx, sequence, &e),
            None => return self.error(ctx, sequence, &KeysError::InvalidUserId("the message names no address".into())),
        };
        let max = self.messaging.config().max_payload_bytes;
        if outbound.unidentified_sender_message.len() > max {
            let err = KeysError::Messaging(crate::messaging::MessagingError::TooLarge(max));
            return self.error(ctx, sequence, &err);
        }
        let stored =
            self.messaging.send_sealed(&address.eid(), i64::from(address.device), outbound.unidentified_sender_message);
        self.answer(ctx, sequence, async move { stored.await.map(|_| ()).map_err(KeysError::from) });
    }

    // ---- delivery (authenticated) -------------------------------------------------------

    /// Reads the next page of the bound device's sealed messages after what was sent (or, on
    /// `first`, after its stored cursor).
    fn read_backlog(&mut self, ctx: &mut Ctx<Self>, first: bool) {
        let Some(bound) = &self.bound else { return };
        let (messaging, eid, device, device_key) =
            (self.messaging.clone(), bound.eid.clone(), i64::from(bound.address.device), bound.device_key.clone());
        let after = self.delivery.sent_up_to;
        self.delivery.read_again = false;
        let read = async move {
            let after = if first { messaging.device_state(&eid, &device_key).await?.acked_offset } else { after };
            let page = messaging.sealed_after(&eid, device, after, BACKLOG_PAGE).await?;
            Ok::<_, crate::messaging::MessagingError>((after, page))
        };
        ctx.spawn(read.into_connection(self).map(move |result, act, ctx| {
            let (after, page) = match result {
                Ok(read) => read,
                Err(e) => {
                    tracing::warn!(conn = act.id(), error = %e, "reading sealed messages failed");
                    return act.close(ctx, CloseCode::Again, "storage unavailable");
                }
            };
            if first {
                act.delivery.cursor = after;
                act.delivery.sent_up_to = act.delivery.sent_up_to.max(after);
            }
            let full = page.len() as i64 == BACKLOG_PAGE;
            for (offset, body) in page {
                act.deliver_one(ctx, offset, body);
            }
            act.delivery.reading = false;
            if full || act.delivery.read_again {
                act.delivery.behind = true;
                act.read_on_if_acked(ctx);
            } else {
                act.delivery.behind = false;
                for (offset, body) in std::mem::take(&mut act.delivery.held) {
                    act.deliver_one(ctx, offset, body);
                }
            }
        }));
    }

    /// Goes on reading the backlog once the client has acknowledged what it was sent, so a
    /// long backlog never fills the outbound queue.
    fn read_on_if_acked(&mut self, ctx: &mut Ctx<Self>) {
        let d = &mut self.delivery;
        if d.behind && !d.reading && d.unacked.is_empty() {
            d.reading = true;
            d.held.clear();
            self.read_backlog(ctx, false);
        }
    }

    fn deliver_one(&mut self, ctx: &mut Ctx<Self>, offset: i64, body: Vec<u8>) {
        if offset <= self.delivery.sent_up_to {
            return;
        }
        let sequence = self.take_sequence();
        self.delivery.sent_up_to = offset;
        self.delivery.unacked.insert(offset, sequence);
        self.delivery.by_sequence.insert(sequence, offset);
        if self.send(ctx, sequence, Body::InboundMessage(body)) {
            crate::metrics::global().messages_delivered.inc();
        }
    }

    fn live(&mut self, ctx: &mut Ctx<Self>, offset: i64, body: Vec<u8>) {
        let d = &mut self.delivery;
        if d.reading || d.behind {
            if d.held.len() < MAX_HELD {
                d.held.insert(offset, body);
            } else {
                // Dropped here, read back from the log in order.
                d.read_again = true;
            }
            return;
        }
        self.deliver_one(ctx, offset, body);
    }

    /// An `ack` from the client: of an `inboundMessage` it was sent, or of nothing (ignored).
    fn acked(&mut self, ctx: &mut Ctx<Self>, sequence: u32) {
        let Some(offset) = self.delivery.by_sequence.remove(&sequence) else { return };
        self.delivery.unacked.remove(&offset);
        // Everything up to just before the oldest unacknowledged message is acknowledged.
        let cursor = match self.delivery.unacked.keys().next() {
            Some(oldest) => oldest - 1,
            None => self.delivery.sent_up_to,
        };
        if cursor > self.delivery.cursor
            && let Some(bound) = &self.bound
        {
            self.delivery.cursor = cursor;
            let (messaging, eid, device_key) = (self.messaging.clone(), bound.eid.clone(), bound.device_key.clone());
            ctx.spawn(
                async move { messaging.advance_cursor(&eid, &device_key, cursor).await }.into_connection(self).map(
                    |result, act, _| {
                        if let Err(e) = result {
                            tracing::warn!(conn = act.id(), error = %e, "sealed-message cursor not stored");
                        }
                    },
                ),
            );
        }
        self.read_on_if_acked(ctx);
    }
}

impl Session for SignalSession {
    fn link(&mut self) -> &mut Link {
        &mut self.link
    }

    fn started(&mut self, ctx: &mut Ctx<Self>) {
        let sequence = self.take_sequence();
        let nonce = self.nonce.to_vec();
        self.send(ctx, sequence, Body::AuthChallenge(wire::AuthChallenge { nonce }));
    }

    fn text(&mut self, ctx: &mut Ctx<Self>, _text: ByteString) {
        self.close(ctx, CLOSE_TEXT, "text frames are not part of this protocol");
    }

    fn binary(&mut self, ctx: &mut Ctx<Self>, data: Bytes) {
        match wire::Message::decode(data) {
            Ok(msg) => {
                self.invalid_in_a_row = 0;
                self.request(ctx, msg);
            }
            Err(e) => {
                self.invalid_in_a_row += 1;
                if self.invalid_in_a_row >= MAX_INVALID_IN_A_ROW {
                    return self.close(ctx, CLOSE_MALFORMED, "malformed frame");
                }
                let err = KeysError::InvalidMessage(format!("not a signal.Message envelope: {e}"));
                self.error(ctx, 0, &err);
            }
        }
    }

    fn deliver(&mut self, Deliver(broadcast): Deliver, ctx: &mut Ctx<Self>) {
        let Some(bound) = &self.bound else { return };
        let device = i64::from(bound.address.device);
        match &broadcast.event {
            Event::Message { offset, message } => {
                if let Some((to, body)) = sealed_parts(message)
                    && to == device
                {
                    self.live(ctx, *offset, body);
                }
            }
            Event::Raw { event, payload } if event == keys::EVENT_PREKEYS_LOW => {
                let for_device = payload
                    .as_json_str()
                    .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
                    .and_then(|v| v["device"].as_i64());
                if for_device == Some(device) {
                    let requested = self.keys.config().prekeys_requested;
                    self.push_low(ctx, requested);
                }
            }
            // Live delivery to this node was interrupted: read the log again after what was
            // sent, once the client has acknowledged it (as a backlog is read on).
            Event::Resync => {
                if self.delivery.reading {
                    self.delivery.read_again = true;
                } else {
                    self.delivery.behind = true;
                    self.read_on_if_acked(ctx);
                }
            }
            _ => {}
        }
    }

    fn stopped(&mut self) {
        if let Some(bound) = &self.bound {
            self.pubsub.unsubscribe(Topic::user(&bound.eid).as_str(), self.link.id());
            self.pubsub.unsubscribe(Topic::keys(&bound.eid).as_str(), self.link.id());
        }
    }
}
