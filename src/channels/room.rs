//! `room:*`: open chat rooms, like Phoenix's chat example. Anyone may join a named room; every
//! push except `ping` is relayed to the other members, and `ping` echoes its payload.

use futures_util::future::LocalBoxFuture;

use super::{Channel, ChannelContext, ChannelFactory, HandleIn, JoinRequest, JoinResult, Joined, Reply};
use crate::protocol::Payload;

/// The topic prefix this family serves.
pub const PREFIX: &str = "room:";

/// Joins `room:<name>` topics.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoomChannels;

impl ChannelFactory for RoomChannels {
    fn join(&self, request: JoinRequest) -> LocalBoxFuture<'static, JoinResult> {
        let name_is_empty = request.topic.strip_prefix(PREFIX).is_none_or(str::is_empty);
        Box::pin(async move {
            if name_is_empty {
                return Err(Payload::reason("room name must not be empty"));
            }
            Ok(Joined { channel: Box::new(RoomChannel), response: Payload::empty() })
        })
    }
}

/// A member's channel in one room.
pub struct RoomChannel;

impl Channel for RoomChannel {
    fn handle_in(&mut self, event: &str, payload: Payload, ctx: &mut ChannelContext<'_>) -> HandleIn {
        if event == "ping" {
            return HandleIn::Reply(Reply::ok(payload));
        }
        if !matches!(payload, Payload::Binary(_)) && !payload.is_object() {
            return HandleIn::Reply(Reply::error("payload must be an object"));
        }
        ctx.broadcast_from(event, payload);
        HandleIn::Reply(Reply::ok_empty())
    }
}
