//! `user:<eid>`: a user's inbox. Only sockets authenticated as `<eid>` may join; every device
//! of the user joins it. It carries the user's messages and receipts (seeds 003/004, through
//! [`crate::messaging`]), status signals, invites and contacts (seed 002 on the Phoenix side),
//! the presence of the user's devices, tracked under their device id here and on
//! `presence:<eid>` for watchers, and for key users the seed-001 key directory ([`keys`]).

mod inbox;
mod keys;
mod messages;
mod signals;

use std::any::Any;
use std::sync::Arc;

use futures_util::future::LocalBoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};

use super::presence::{base_meta, push_presence_state, track_and_list};
use super::{
    Channel, ChannelContext, ChannelFactory, HandleIn, JoinRequest, JoinResult, Joined, LeaveReason, Refusal, Reply,
};
use crate::accounts::{AccountError, Accounts, LastSeen};
use crate::error::Code;
use crate::keys::Keys;
use crate::messaging::signals::Signals;
use crate::messaging::wire::{Encoding, SIGNAL_REQUEST_PULL, SIGNAL_REQUEST_PUSH};
use crate::messaging::{Messaging, Origin};
use crate::presence::{Meta, Tracker};
use crate::protocol::{Payload, Serializer};
use crate::pubsub::{Broadcast, PubSub, Topic, TopicKind};
use inbox::Inbox;
use messages::{CatchUp, GapTimer, OwnSent};

/// Tells every connection of `to` about an account event (`{"type": ..., "source", "dest"}`):
/// seed-002 JSON connections get the frame as is, Phoenix sockets on `user:<to>` get it as an
/// event named after its `type` (invites only; seed-002 `message` frames are not Phoenix events).
pub fn notify_account_event(pubsub: &PubSub, to: &str, frame: &Value) {
    let Some(kind) = frame.get("type").and_then(Value::as_str) else { return };
    let payload = Payload::json(frame);
    if kind.starts_with("invite.") {
        pubsub.broadcast(Topic::user(to).as_str(), kind, payload.clone());
    }
    pubsub.broadcast(Topic::json(to).as_str(), kind, payload);
}

/// Joins `user:<eid>` topics for the authenticated user `<eid>`.
#[derive(Clone)]
pub struct UserChannels {
    accounts: Accounts,
    messaging: Messaging,
    signals: Signals,
    tracker: Arc<dyn Tracker>,
    last_seen: LastSeen,
    keys: Keys,
}

impl UserChannels {
    /// Serves user topics backed by these accounts, message logs, signal relay, tracker and key
    /// directory; devices that leave are reported to `last_seen`.
    pub fn new(
        accounts: Accounts,
        messaging: Messaging,
        signals: Signals,
        tracker: Arc<dyn Tracker>,
        last_seen: LastSeen,
        keys: Keys,
    ) -> Self {
        UserChannels { accounts, messaging, signals, tracker, last_seen, keys }
    }
}

/// The join payload: where to start, and how the device wants its messages.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinParams {
    /// Push the log after this offset (default: the device's cursor).
    after: Option<i64>,
    /// `push` (default) or `pull`.
    mode: Option<String>,
    /// `json` (default) or `protobuf` (binary frames, vsn 2.0.0 only).
    encoding: Option<String>,
}

/// What the join decided about delivery.
struct Delivery {
    pull: bool,
    encoding: Encoding,
}

fn parse_join(payload: &Payload, serializer: Serializer) -> Result<(Option<i64>, Delivery), Refusal> {
    let invalid = |reason: &str| Refusal::new(Code::InvalidInput, reason);
    let params: JoinParams = match payload.as_json_str() {
        Some(text) => {
            serde_json::from_str(text).map_err(|e| Refusal::new(Code::InvalidJson, format!("bad join payload: {e}")))?
        }
        None => return Err(Refusal::new(Code::InvalidJson, "join payload must be JSON")),
    };
    if params.after.is_some_and(|a| a < 0) {
        return Err(invalid("after must not be negative"));
    }
    let pull = match params.mode.as_deref() {
        None | Some("push") => false,
        Some("pull") => true,
        Some(_) => return Err(invalid("mode must be \"push\" or \"pull\"")),
    };
    let encoding = match params.encoding.as_deref() {
        None | Some("json") => Encoding::Json,
        Some("protobuf") if serializer == Serializer::V2 => Encoding::Protobuf,
        Some("protobuf") => return Err(invalid("protobuf encoding needs vsn 2.0.0 (binary frames)")),
        Some(_) => return Err(invalid("encoding must be \"json\" or \"protobuf\"")),
    };
    Ok((params.after, Delivery { pull, encoding }))
}

impl ChannelFactory for UserChannels {
    fn join(&self, request: JoinRequest) -> LocalBoxFuture<'static, JoinResult> {
        let (accounts, messaging) = (self.accounts.clone(), self.messaging.clone());
        let (signals, tracker, last_seen) = (self.signals.clone(), Arc::clone(&self.tracker), self.last_seen.clone());
        let keys = self.keys.clone();
        Box::pin(async move {
            let eid = match Topic::parse(&request.topic) {
                Ok(topic) if topic.kind() == TopicKind::User => topic.name().to_owned(),
                // No one's inbox: refused below as anyone else's would be.
                _ => String::new(),
            };
            let socket = &request.socket;
            let identity = &socket.identity;
            match identity.user.as_deref() {
                Some(user) if user == eid => {}
                // Phoenix's reason either way; the code tells "sign in" from "not yours".
                Some(_) => return Err(Refusal::new(Code::Forbidden, "unauthorized")),
                None => return Err(Refusal::new(Code::Unauthorized, "unauthorized")),
            }
            let (after, delivery) = parse_join(&request.payload, socket.serializer)?;
            let origin = Origin {
                eid: eid.clone(),
                device: identity.device.clone(),
                connection: socket.connection_id.subscriber(),
                node: request.pubsub.node().to_owned(),
            };
            let invites = accounts.pending_invites(&eid).await?;
            let state = messaging.device_state(&eid, origin.device_key()).await?;
            let after = after.unwrap_or(state.acked_offset);
            if after > state.last_offset {
                let reason = format!("after {after} is past the end of the log (last_offset {})", state.last_offset);
                return Err(Refusal::new(Code::InvalidInput, reason));
            }
            let invites: Vec<Value> = invites.iter().map(|i| json!({"from": i.from, "at": i.created_at})).collect();
            let response = json!({
                "identity": {
                    "eid": eid,
                    "connection_resource_id": identity.device,
                    "node": origin.node,
                },
                "invites": invites,
                "last_offset": state.last_offset,
                "acked_offset": state.acked_offset,
            });
            let inbox = if delivery.pull { Inbox::pull() } else { Inbox::catching_up(after) };
            let channel = UserChannel {
                origin,
                accounts,
                messaging,
                signals,
                tracker,
                last_seen,
                keys,
                encoding: delivery.encoding,
                signal_request: if delivery.pull { SIGNAL_REQUEST_PULL } else { SIGNAL_REQUEST_PUSH },
                meta: Meta::new(),
                inbox,
            };
            Ok(Joined { channel: Box::new(channel), response: Payload::json(&response) })
        })
    }
}

/// One device's channel on its user's topic.
pub struct UserChannel {
    origin: Origin,
    accounts: Accounts,
    messaging: Messaging,
    signals: Signals,
    tracker: Arc<dyn Tracker>,
    last_seen: LastSeen,
    keys: Keys,
    encoding: Encoding,
    /// Seed 004's delivery mode of this device: 1 pull, 2 push.
    signal_request: i32,
    /// This device's presence meta, kept to apply `presence` updates to.
    meta: Meta,
    inbox: Inbox<Arc<Broadcast>>,
}

/// The payload of the `presence` event: what the device says about itself.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceUpdate {
    status: String,
}

/// Longest `status` a device may set on its presence.
const MAX_STATUS_BYTES: usize = 64;

/// The payload of the invite events: the other user.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvitePeer {
    dest: String,
}

fn error_reply(e: AccountError) -> Reply {
    Reply::from(Refusal::from(e))
}

impl UserChannel {
    /// Sets this device's `status` in its presence meta, here and on `presence:<eid>`.
    fn update_presence(&mut self, payload: &Payload, ctx: &ChannelContext<'_>) -> HandleIn {
        let update = match payload.as_json_str().map(serde_json::from_str::<PresenceUpdate>) {
            Some(Ok(u)) if !u.status.is_empty() && u.status.len() <= MAX_STATUS_BYTES => u,
            _ => {
                let reason = "expected {\"status\": a string of 1..=64 bytes}";
                return HandleIn::Reply(Reply::error(Code::InvalidInput, reason));
            }
        };
        self.meta.insert("status".into(), update.status.into());
        let (key, owner) = (self.origin.device_key(), &ctx.socket.connection_id);
        let here = self.tracker.update(ctx.topic, key, owner, self.meta.clone());
        let watched = self.tracker.update(Topic::presence(&self.origin.eid).as_str(), key, owner, self.meta.clone());
        HandleIn::Later(Box::pin(async move {
            match (here.await, watched.await) {
                (Ok(phx_ref), Ok(_)) => Reply::ok(Payload::json(&json!({ "phx_ref": phx_ref }))),
                (Err(e), _) | (_, Err(e)) => Reply::error(e.code(), &e.to_string()),
            }
        }))
    }

    fn invite(&self, kind: &'static str, payload: &Payload, pubsub: &PubSub) -> HandleIn {
        let peer = match payload.as_json_str().map(serde_json::from_str::<InvitePeer>) {
            Some(Ok(peer)) if !peer.dest.is_empty() => peer.dest,
            _ => return HandleIn::Reply(Reply::error(Code::InvalidInput, "expected {\"dest\": username}")),
        };
        let (accounts, me, pubsub) = (self.accounts.clone(), self.origin.eid.clone(), pubsub.clone());
        HandleIn::Later(Box::pin(async move {
            let result = match kind {
                "invite.request" => accounts.invite_request(&me, &peer).await,
                "invite.accept" => accounts.invite_accept(&me, &peer).await,
                _ => accounts.invite_reject(&me, &peer).await,
            };
            match result {
                Ok(()) => {
                    notify_account_event(&pubsub, &peer, &json!({"type": kind, "source": me, "dest": peer}));
                    Reply::ok_empty()
                }
                Err(e) => error_reply(e),
            }
        }))
    }
}

impl Channel for UserChannel {
    fn after_join(&mut self, ctx: &mut ChannelContext<'_>) {
        let mut meta = base_meta(ctx, self.messaging.clock().now_millis());
        meta.insert("signal_request".into(), self.signal_request.into());
        self.meta = meta.clone();
        let watched = Topic::presence(&self.origin.eid);
        let topic = ctx.topic.to_owned();
        track_and_list(ctx, &self.tracker, &[&topic, watched.as_str()], self.origin.device_key(), meta);
        if self.inbox.is_reading() {
            self.fetch_next(ctx);
        }
    }

    fn handle_in(&mut self, event: &str, payload: Payload, ctx: &mut ChannelContext<'_>) -> HandleIn {
        match event {
            "message" => self.send_message(payload),
            "signal" => self.send_signal(&payload),
            "presence" => self.update_presence(&payload, ctx),
            "receipt" => self.receipt(&payload),
            "pull" => self.pull(&payload),
            "history" => self.history(&payload),
            "invite.request" => self.invite("invite.request", &payload, ctx.pubsub),
            "invite.accept" => self.invite("invite.accept", &payload, ctx.pubsub),
            "invite.reject" => self.invite("invite.reject", &payload, ctx.pubsub),
            "contacts" => {
                let (accounts, me) = (self.accounts.clone(), self.origin.eid.clone());
                HandleIn::Later(Box::pin(async move {
                    match accounts.contacts(&me).await {
                        Ok(contacts) => Reply::ok(Payload::json(&json!({ "contacts": contacts }))),
                        Err(e) => error_reply(e),
                    }
                }))
            }
            _ => match keys::handle(&self.keys, &self.origin.eid, event, &payload) {
                Some(handled) => handled,
                None => HandleIn::Reply(Reply::error(Code::InvalidEvent, "unknown event")),
            },
        }
    }

    fn handle_info(&mut self, info: Box<dyn Any>, ctx: &mut ChannelContext<'_>) {
        if push_presence_state(info.as_ref(), ctx).is_some() {
            return;
        }
        let info = match info.downcast::<CatchUp>() {
            Ok(step) => return self.catch_up(*step, ctx),
            Err(info) => info,
        };
        let info = match info.downcast::<OwnSent>() {
            Ok(sent) => return self.own_sent(*sent, ctx),
            Err(info) => info,
        };
        if info.is::<GapTimer>() {
            self.gap_timer(ctx);
        }
    }

    fn handle_out(&mut self, broadcast: &Arc<Broadcast>, ctx: &mut ChannelContext<'_>) -> bool {
        self.deliver_live(broadcast, ctx)
    }

    fn terminate(&mut self, _reason: LeaveReason, ctx: &mut ChannelContext<'_>) {
        let key = self.origin.device_key();
        let owner = &ctx.socket.connection_id;
        self.tracker.untrack(ctx.topic, key, owner);
        self.tracker.untrack(Topic::presence(&self.origin.eid).as_str(), key, owner);
        // The device's last_seen_at is what a watcher of an offline user is told.
        if let Some(device) = &self.origin.device {
            self.last_seen.record(&self.origin.eid, device);
        }
    }
}
