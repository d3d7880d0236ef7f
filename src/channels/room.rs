//! `room:*`: open chat rooms, like Phoenix's chat example. Anyone may join a named room; every
//! push except `ping` is relayed to the other members, and `ping` echoes its payload. Members
//! are tracked with presence: by user name when the socket is signed in, else per connection.
//! A join with `{"presence": false}` is an observer: not tracked, and sent no presence frames,
//! so a 10,000-viewer broadcast room costs no presence state or diffs.

use std::any::Any;
use std::sync::Arc;

use futures_util::future::LocalBoxFuture;

use super::presence::{base_meta, push_presence_state, track_and_list};
use super::{
    Channel, ChannelContext, ChannelFactory, HandleIn, JoinRequest, JoinResult, Joined, LeaveReason, Refusal, Reply,
};
use crate::clock::Clock;
use crate::error::Code;
use crate::presence::Tracker;
use crate::protocol::Payload;
use crate::pubsub::{Broadcast, Event, Topic, TopicKind};

/// Joins `room:<name>` topics.
#[derive(Clone)]
pub struct RoomChannels {
    tracker: Arc<dyn Tracker>,
    clock: Arc<dyn Clock>,
}

impl RoomChannels {
    /// Rooms whose members are tracked by `tracker`, online since a time read from `clock`.
    pub fn new(tracker: Arc<dyn Tracker>, clock: Arc<dyn Clock>) -> Self {
        RoomChannels { tracker, clock }
    }
}

impl ChannelFactory for RoomChannels {
    fn join(&self, request: JoinRequest) -> LocalBoxFuture<'static, JoinResult> {
        let name_is_empty = !Topic::parse(&request.topic).is_ok_and(|topic| topic.kind() == TopicKind::Room);
        let identity = &request.socket.identity;
        let key = match &identity.user {
            Some(user) => user.clone(),
            None => format!("anonymous:{}", request.socket.connection_id),
        };
        let tracked = wants_presence(&request.payload);
        let channel = RoomChannel {
            tracker: Arc::clone(&self.tracker),
            clock: Arc::clone(&self.clock),
            key,
            device: identity.device.clone(),
            tracked: tracked.unwrap_or(true),
        };
        Box::pin(async move {
            if name_is_empty {
                return Err(Refusal::new(Code::InvalidTopic, "room name must not be empty"));
            }
            tracked.map_err(|reason| Refusal::new(Code::InvalidInput, reason))?;
            Ok(Joined { channel: Box::new(channel), response: Payload::empty() })
        })
    }
}

/// The join payload's `presence` flag: absent means tracked. Other keys are ignored, as Phoenix
/// rooms ignore what they do not use.
fn wants_presence(payload: &Payload) -> Result<bool, &'static str> {
    let Some(json) = payload.as_json_str() else { return Ok(true) };
    #[derive(serde::Deserialize)]
    struct JoinParams {
        presence: Option<serde_json::Value>,
    }
    match serde_json::from_str::<JoinParams>(json).map(|p| p.presence) {
        Ok(None) | Err(_) => Ok(true),
        Ok(Some(serde_json::Value::Bool(tracked))) => Ok(tracked),
        Ok(Some(_)) => Err("presence must be true or false"),
    }
}

/// A member's channel in one room.
pub struct RoomChannel {
    tracker: Arc<dyn Tracker>,
    clock: Arc<dyn Clock>,
    key: String,
    device: Option<String>,
    /// False for an observer, who is neither tracked nor sent presence frames.
    tracked: bool,
}

impl Channel for RoomChannel {
    fn after_join(&mut self, ctx: &mut ChannelContext<'_>) {
        if !self.tracked {
            return;
        }
        let mut meta = base_meta(ctx, self.clock.now_millis());
        if let Some(device) = &self.device {
            meta.insert("device".into(), device.clone().into());
        }
        let topic = ctx.topic.to_owned();
        track_and_list(ctx, &self.tracker, &[&topic], &self.key, meta);
    }

    fn handle_in(&mut self, event: &str, payload: Payload, ctx: &mut ChannelContext<'_>) -> HandleIn {
        if event == "ping" {
            return HandleIn::Reply(Reply::ok(payload));
        }
        if !matches!(payload, Payload::Binary(_)) && !payload.is_object() {
            return HandleIn::Reply(Reply::error(Code::InvalidInput, "payload must be an object"));
        }
        ctx.broadcast_from(event, payload);
        HandleIn::Reply(Reply::ok_empty())
    }

    fn handle_out(&mut self, broadcast: &Arc<Broadcast>, _ctx: &mut ChannelContext<'_>) -> bool {
        // An untracked observer of a room does not follow who comes and goes.
        self.tracked || !matches!(broadcast.event, Event::PresenceDiff { .. })
    }

    fn handle_info(&mut self, info: Box<dyn Any>, ctx: &mut ChannelContext<'_>) {
        push_presence_state(info.as_ref(), ctx);
    }

    fn terminate(&mut self, _reason: LeaveReason, ctx: &mut ChannelContext<'_>) {
        if self.tracked {
            self.tracker.untrack(ctx.topic, &self.key, &ctx.socket.connection_id);
        }
    }
}
