//! `user:<eid>`: a user's own topic. Only sockets authenticated as `<eid>` may join; every
//! device of the user joins it. It carries the user's invites and contacts (seed 002 on the
//! Phoenix side); messaging builds on the same topic.

use futures_util::future::LocalBoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Channel, ChannelContext, ChannelFactory, HandleIn, JoinRequest, JoinResult, Joined, Reply};
use crate::accounts::{AccountError, Accounts};
use crate::protocol::Payload;
use crate::pubsub::PubSub;

/// The topic prefix this family serves.
pub const PREFIX: &str = "user:";

/// The Phoenix topic of a user.
pub fn user_topic(eid: &str) -> String {
    format!("{PREFIX}{eid}")
}

/// The pub/sub topic the seed-002 JSON connections of a user listen on.
pub fn json_topic(eid: &str) -> String {
    format!("json:{eid}")
}

/// Tells every connection of `to` about an account event (`{"type": ..., "source", "dest"}`):
/// seed-002 JSON connections get the frame as is, Phoenix sockets on `user:<to>` get it as an
/// event named after its `type` (invites only; seed-002 `message` frames are not Phoenix events).
pub fn notify_account_event(pubsub: &PubSub, to: &str, frame: &Value) {
    let Some(kind) = frame.get("type").and_then(Value::as_str) else { return };
    let payload = Payload::json(frame);
    if kind.starts_with("invite.") {
        pubsub.broadcast(&user_topic(to), kind, payload.clone());
    }
    pubsub.broadcast(&json_topic(to), kind, payload);
}

/// Joins `user:<eid>` topics for the authenticated user `<eid>`.
#[derive(Clone)]
pub struct UserChannels {
    accounts: Accounts,
}

impl UserChannels {
    /// Serves user topics backed by these accounts.
    pub fn new(accounts: Accounts) -> Self {
        UserChannels { accounts }
    }
}

impl ChannelFactory for UserChannels {
    fn join(&self, request: JoinRequest) -> LocalBoxFuture<'static, JoinResult> {
        let accounts = self.accounts.clone();
        Box::pin(async move {
            let eid = request.topic.strip_prefix(PREFIX).unwrap_or_default().to_owned();
            let identity = &request.socket.identity;
            if identity.user.as_deref() != Some(eid.as_str()) {
                return Err(Payload::reason("unauthorized"));
            }
            let invites = accounts.pending_invites(&eid).await.map_err(|e| Payload::reason(e.code()))?;
            let invites: Vec<Value> = invites.iter().map(|i| json!({"from": i.from, "at": i.created_at})).collect();
            let response = json!({
                "identity": {
                    "eid": eid,
                    "connection_resource_id": identity.device,
                    "node": request.pubsub.node(),
                },
                "invites": invites,
            });
            let channel = UserChannel { eid, accounts };
            Ok(Joined { channel: Box::new(channel), response: Payload::json(&response) })
        })
    }
}

/// One device's channel on its user's topic.
pub struct UserChannel {
    eid: String,
    accounts: Accounts,
}

/// The payload of the invite events: the other user.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvitePeer {
    dest: String,
}

fn error_reply(e: &AccountError) -> Reply {
    Reply::error(e.code())
}

impl UserChannel {
    fn invite(&self, kind: &'static str, payload: &Payload, pubsub: &PubSub) -> HandleIn {
        let peer = match payload.as_json_str().map(serde_json::from_str::<InvitePeer>) {
            Some(Ok(peer)) if !peer.dest.is_empty() => peer.dest,
            _ => return HandleIn::Reply(Reply::error("expected {\"dest\": username}")),
        };
        let (accounts, me, pubsub) = (self.accounts.clone(), self.eid.clone(), pubsub.clone());
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
                Err(e) => error_reply(&e),
            }
        }))
    }
}

impl Channel for UserChannel {
    fn handle_in(&mut self, event: &str, payload: Payload, ctx: &mut ChannelContext<'_>) -> HandleIn {
        match event {
            "invite.request" => self.invite("invite.request", &payload, ctx.pubsub),
            "invite.accept" => self.invite("invite.accept", &payload, ctx.pubsub),
            "invite.reject" => self.invite("invite.reject", &payload, ctx.pubsub),
            "contacts" => {
                let (accounts, me) = (self.accounts.clone(), self.eid.clone());
                HandleIn::Later(Box::pin(async move {
                    match accounts.contacts(&me).await {
                        Ok(contacts) => Reply::ok(Payload::json(&json!({ "contacts": contacts }))),
                        Err(e) => error_reply(&e),
                    }
                }))
            }
            _ => HandleIn::Reply(Reply::error("unknown event")),
        }
    }
}
