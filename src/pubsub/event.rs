//! The closed set of events a broadcast carries, and their node-to-node encoding.
//!
//! Channels match on [`Event`] in `handle_out` instead of looking for side data, so a
//! broadcast that lacks what a receiver needs cannot exist. The same value crosses nodes as a
//! `courier.node.Broadcast` protobuf (`proto/node.proto`): a broker moves bytes, and the
//! receiving node rebuilds the typed event, so remote traffic takes the same paths as local.

use prost::Message as _;
use serde_json::value::RawValue;

use crate::pb;
use crate::pb::node::broadcast::Event as WireEvent;
use crate::protocol::Payload;

/// The event name of a stored message delivered to a user's devices.
pub const MESSAGE: &str = "message";
/// The event name of a receipt (a `MessagePeerAckSignal` with method delivered or read).
pub const RECEIPT: &str = "receipt";
/// The event name of a status signal.
pub const SIGNAL: &str = "signal";
/// The event name of a presence change (Phoenix's `presence_diff`).
pub const PRESENCE_DIFF: &str = "presence_diff";
/// The name of [`Event::Resync`], which no client ever sees.
pub const RESYNC: &str = "resync";

/// Whether a presence diff turned its topic on or off (a user coming online or going offline on
/// `presence:<eid>`), and when it went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occupancy {
    /// Whether the topic had a presence when the previous diff went out.
    pub was_occupied: bool,
    /// Whether it has one now.
    pub occupied: bool,
    /// When the diff went out (ms since the epoch).
    pub at: i64,
}

impl Occupancy {
    /// Whether this diff turned the topic on or off.
    pub fn changed(&self) -> bool {
        self.was_occupied != self.occupied
    }
}

/// What one broadcast says.
#[derive(Debug, Clone)]
pub enum Event {
    /// A stored message, as the devices of the topic's user get it.
    Message {
        /// Its `signal_offset` in the log of the topic's user.
        offset: i64,
        /// The message.
        message: pb::Message,
    },
    /// A receipt for messages the topic's user sent or read.
    Receipt(pb::MessagePeerAckSignal),
    /// A status signal for the topic's user.
    Signal(pb::Signal),
    /// A presence change on the topic.
    PresenceDiff {
        /// The `presence_diff` payload (`{"joins", "leaves"}`).
        diff: Payload,
        /// Whether the change turned the topic on or off.
        occupancy: Occupancy,
    },
    /// Live delivery to this node was interrupted, so a live inbox may miss messages that no
    /// later one will reveal as a gap: it reads its log again from its delivered mark. A node
    /// makes it for its own `user:` subscribers when its broker reconnects, or when another
    /// node's notice on [`super::topic::RESYNC`] (the only place it crosses nodes) says that
    /// node's broadcasts were dropped. Channels consume it; it never reaches a client.
    Resync,
    /// Any other event: a channel's own broadcast, an account notification, a disconnect.
    Raw {
        /// The event name.
        event: String,
        /// The payload, forwarded as is.
        payload: Payload,
    },
}

impl Event {
    /// A named event with an opaque payload.
    pub fn raw(event: impl Into<String>, payload: Payload) -> Self {
        Event::Raw { event: event.into(), payload }
    }

    /// The event name clients see.
    pub fn name(&self) -> &str {
        match self {
            Event::Message { .. } => MESSAGE,
            Event::Receipt(_) => RECEIPT,
            Event::Signal(_) => SIGNAL,
            Event::PresenceDiff { .. } => PRESENCE_DIFF,
            Event::Resync => RESYNC,
            Event::Raw { event, .. } => event,
        }
    }

    /// The payload a client that takes the shared frame gets; the seed types as proto3 JSON.
    pub(super) fn to_payload(&self) -> Payload {
        match self {
            Event::Message { message, .. } => Payload::json(message),
            Event::Receipt(ack) => Payload::json(ack),
            Event::Signal(signal) => Payload::json(signal),
            Event::PresenceDiff { diff, .. } => diff.clone(),
            Event::Resync => Payload::empty(),
            Event::Raw { payload, .. } => payload.clone(),
        }
    }

    /// The payload without building one, for the events that carry theirs ready-made.
    pub(super) fn ready_payload(&self) -> Option<&Payload> {
        match self {
            Event::PresenceDiff { diff, .. } => Some(diff),
            Event::Raw { payload, .. } => Some(payload),
            Event::Message { .. } | Event::Receipt(_) | Event::Signal(_) | Event::Resync => None,
        }
    }
}

/// Why bytes from another node are not a broadcast.
#[derive(Debug, thiserror::Error)]
pub enum EventDecodeError {
    /// Not a `courier.node.Broadcast`.
    #[error("not a node broadcast: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// A required part is missing.
    #[error("node broadcast without {0}")]
    Missing(&'static str),
    /// A JSON payload that does not parse.
    #[error("node broadcast with invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Encodes a broadcast on `topic`, made on node `origin`, for other nodes.
pub(super) fn encode(origin: &str, topic: &str, event: &Event) -> Vec<u8> {
    let wire = match event {
        Event::Message { offset, message } => {
            WireEvent::Message(pb::node::LiveMessage { offset: *offset, message: Some(message.clone()) })
        }
        Event::Receipt(ack) => WireEvent::Receipt(ack.clone()),
        Event::Signal(signal) => WireEvent::Signal(signal.clone()),
        Event::PresenceDiff { diff, occupancy } => WireEvent::PresenceDiff(pb::node::PresenceDiff {
            diff_json: diff.as_json_str().unwrap_or("{}").to_owned(),
            was_occupied: occupancy.was_occupied,
            occupied: occupancy.occupied,
            at: occupancy.at,
        }),
        Event::Resync => WireEvent::Resync(pb::node::Resync {}),
        Event::Raw { event, payload } => WireEvent::Raw(pb::node::Raw {
            event: event.clone(),
            payload: Some(match payload {
                Payload::Json(raw) => pb::node::raw::Payload::Json(raw.get().to_owned()),
                Payload::Binary(bytes) => pb::node::raw::Payload::Binary(bytes.to_vec()),
            }),
        }),
    };
    pb::node::Broadcast { topic: topic.to_owned(), origin: origin.to_owned(), event: Some(wire) }.encode_to_vec()
}

/// Decodes what [`encode`] made: the origin node, the topic and the event.
pub(super) fn decode(bytes: &[u8]) -> Result<(String, String, Event), EventDecodeError> {
    let wire = pb::node::Broadcast::decode(bytes)?;
    let event = match wire.event.ok_or(EventDecodeError::Missing("an event"))? {
        WireEvent::Message(live) => Event::Message {
            offset: live.offset,
            message: live.message.ok_or(EventDecodeError::Missing("the message"))?,
        },
        WireEvent::Receipt(ack) => Event::Receipt(ack),
        WireEvent::Signal(signal) => Event::Signal(signal),
        WireEvent::PresenceDiff(diff) => Event::PresenceDiff {
            diff: Payload::Json(RawValue::from_string(diff.diff_json)?),
            occupancy: Occupancy { was_occupied: diff.was_occupied, occupied: diff.occupied, at: diff.at },
        },
        WireEvent::Resync(_) => Event::Resync,
        WireEvent::Raw(raw) => {
            let payload = match raw.payload.ok_or(EventDecodeError::Missing("a payload"))? {
                pb::node::raw::Payload::Json(text) => Payload::Json(RawValue::from_string(text)?),
                pb::node::raw::Payload::Binary(bytes) => Payload::Binary(bytes.into()),
            };
            Event::Raw { event: raw.event, payload }
        }
    };
    Ok((wire.origin, wire.topic, event))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> pb::Message {
        pb::Message {
            id: "m1".into(),
            signal_offset: 7,
            from: Some(pb::Identity { eid: "alice".into(), connection_resource_id: Some("phone".into()), node: None }),
            payload: b"hi".to_vec(),
            ..Default::default()
        }
    }

    fn every_kind() -> Vec<Event> {
        vec![
            Event::Message { offset: 7, message: message() },
            Event::Receipt(pb::MessagePeerAckSignal { message_id: "m1".into(), method: 3, ..Default::default() }),
            Event::Signal(pb::Signal { id: "s1".into(), status: 2, error: Some("x".into()), ..Default::default() }),
            Event::PresenceDiff {
                diff: Payload::json(&serde_json::json!({"joins": {"a": {}}, "leaves": {}})),
                occupancy: Occupancy { was_occupied: false, occupied: true, at: 1_700_000_000_000 },
            },
            Event::Resync,
            Event::raw("shout", Payload::json(&serde_json::json!({"body": "x"}))),
            Event::raw("bin", Payload::Binary(bytes::Bytes::from_static(&[0, 159, 255]))),
        ]
    }

    /// Payloads compare by their text or bytes (`RawValue` has no `PartialEq` of its own).
    fn same(a: &Event, b: &Event) -> bool {
        let text = |e: &Event| match e.to_payload() {
            Payload::Json(raw) => raw.get().as_bytes().to_vec(),
            Payload::Binary(bytes) => bytes.to_vec(),
        };
        a.name() == b.name() && text(a) == text(b) && format!("{a:?}") == format!("{b:?}")
    }

    #[test]
    fn every_event_survives_the_node_encoding() {
        for event in every_kind() {
            let bytes = encode("n1/0000abcd", "user:bob", &event);
            let (origin, topic, back) = decode(&bytes).expect("decodes");
            assert_eq!((origin.as_str(), topic.as_str()), ("n1/0000abcd", "user:bob"));
            assert!(same(&event, &back), "{event:?} came back as {back:?}");
        }
    }

    #[test]
    fn typed_events_are_named_and_carried_as_proto3_json() {
        let event = Event::Message { offset: 7, message: message() };
        assert_eq!(event.name(), MESSAGE);
        let text = event.to_payload().as_json_str().unwrap().to_owned();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["id"], "m1");
        assert_eq!(value["payload"], "aGk=", "bytes are base64 in proto3 JSON");
        assert!(event.ready_payload().is_none(), "built on demand, not carried twice");
        assert_eq!(Event::raw("e", Payload::empty()).ready_payload().map(Payload::len), Some(2));
    }

    #[test]
    fn malformed_node_bytes_are_refused_not_trusted() {
        assert!(matches!(decode(&[0xff, 0xff, 0xff]), Err(EventDecodeError::Protobuf(_))));
        let empty = pb::node::Broadcast { topic: "t".into(), origin: "n".into(), event: None }.encode_to_vec();
        assert!(matches!(decode(&empty), Err(EventDecodeError::Missing(_))));
        let bad_json = pb::node::Broadcast {
            topic: "t".into(),
            origin: "n".into(),
            event: Some(WireEvent::Raw(pb::node::Raw {
                event: "e".into(),
                payload: Some(pb::node::raw::Payload::Json("{not json".into())),
            })),
        }
        .encode_to_vec();
        assert!(matches!(decode(&bad_json), Err(EventDecodeError::Json(_))));
        let no_message = pb::node::Broadcast {
            topic: "t".into(),
            origin: "n".into(),
            event: Some(WireEvent::Message(pb::node::LiveMessage { offset: 1, message: None })),
        }
        .encode_to_vec();
        assert!(matches!(decode(&no_message), Err(EventDecodeError::Missing("the message"))));
    }
}
