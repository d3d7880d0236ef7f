//! The Phoenix Channels wire format: messages, payloads and the V1/V2 serializers.
//!
//! Pure code: no I/O, no actors. Transport code decodes inbound frames into [`Message`]s here and
//! encodes [`Outgoing`] frames into [`WireFrame`]s; nothing else in the crate knows the layouts.

mod binary;
mod json;

use bytes::Bytes;
use bytestring::ByteString;
use serde_json::value::RawValue;

/// Reserved event: join a topic.
pub const PHX_JOIN: &str = "phx_join";
/// Reserved event: leave a topic.
pub const PHX_LEAVE: &str = "phx_leave";
/// Reserved event: a reply to a client push.
pub const PHX_REPLY: &str = "phx_reply";
/// Reserved event: the channel crashed; the client rejoins.
pub const PHX_ERROR: &str = "phx_error";
/// Reserved event: the channel ended; the client does not rejoin.
pub const PHX_CLOSE: &str = "phx_close";
/// The socket-level topic heartbeats travel on.
pub const PHOENIX_TOPIC: &str = "phoenix";
/// The heartbeat event on [`PHOENIX_TOPIC`].
pub const HEARTBEAT: &str = "heartbeat";

/// Whether a client may not send `event` to a channel itself (only the server emits it).
pub fn is_reserved_event(event: &str) -> bool {
    matches!(event, PHX_JOIN | PHX_LEAVE | PHX_REPLY | PHX_ERROR | PHX_CLOSE)
}

/// A message payload: JSON kept as raw text (so it is forwarded without re-encoding) or binary.
#[derive(Debug, Clone)]
pub enum Payload {
    /// A JSON value, exactly as received or produced.
    Json(Box<RawValue>),
    /// Raw bytes, carried in V2 binary frames.
    Binary(Bytes),
}

impl Payload {
    /// The empty JSON object `{}`.
    pub fn empty() -> Self {
        Payload::Json(raw_json("{}"))
    }

    /// Serializes any value into a JSON payload.
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Self {
        match serde_json::value::to_raw_value(value) {
            Ok(raw) => Payload::Json(raw),
            // Only maps with non-string keys fail to serialize; none of our types have them.
            Err(_) => Payload::empty(),
        }
    }

    /// True when the payload is a JSON object (what Phoenix requires of pushes).
    pub fn is_object(&self) -> bool {
        matches!(self, Payload::Json(raw) if raw.get().starts_with('{'))
    }

    /// The payload's size in bytes (JSON text or raw bytes), before framing.
    pub fn len(&self) -> usize {
        match self {
            Payload::Json(raw) => raw.get().len(),
            Payload::Binary(data) => data.len(),
        }
    }

    /// Whether the payload has no bytes at all (never true of JSON).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw JSON text, if this is a JSON payload.
    pub fn as_json_str(&self) -> Option<&str> {
        match self {
            Payload::Json(raw) => Some(raw.get()),
            Payload::Binary(_) => None,
        }
    }
}

fn raw_json(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_owned()).unwrap_or_else(|_| {
        // Callers pass literals that are valid JSON; fall back to null rather than panic.
        RawValue::from_string("null".to_owned()).expect("null is valid JSON")
    })
}

/// One decoded client frame (`Phoenix.Socket.Message`).
#[derive(Debug, Clone)]
pub struct Message {
    /// The join_ref of the channel the message belongs to, if any.
    pub join_ref: Option<String>,
    /// The client's reference for this push; replies echo it.
    pub msg_ref: Option<String>,
    /// The topic, e.g. `room:lobby`.
    pub topic: String,
    /// The event name.
    pub event: String,
    /// The payload.
    pub payload: Payload,
}

/// A frame the server sends, before serialization.
#[derive(Debug, Clone, Copy)]
pub enum Outgoing<'a> {
    /// A reply to a client push: `[join_ref, ref, topic, "phx_reply", {status, response}]`.
    Reply {
        /// The join_ref the request belonged to.
        join_ref: Option<&'a str>,
        /// The request's ref, echoed exactly.
        msg_ref: Option<&'a str>,
        /// The topic.
        topic: &'a str,
        /// `ok`, `error` or any other status string.
        status: &'a str,
        /// The response body.
        response: &'a Payload,
    },
    /// A push from one channel to its client: `[join_ref, null, topic, event, payload]`.
    Push {
        /// The channel's join_ref.
        join_ref: Option<&'a str>,
        /// The topic.
        topic: &'a str,
        /// The event.
        event: &'a str,
        /// The payload.
        payload: &'a Payload,
    },
    /// A broadcast, identical for every subscriber: `[null, null, topic, event, payload]`.
    Broadcast {
        /// The topic.
        topic: &'a str,
        /// The event.
        event: &'a str,
        /// The payload.
        payload: &'a Payload,
    },
    /// `phx_close` / `phx_error`: join_ref and ref both carry the channel's join_ref.
    Lifecycle {
        /// The channel's join_ref.
        join_ref: &'a str,
        /// The topic.
        topic: &'a str,
        /// [`PHX_CLOSE`] or [`PHX_ERROR`].
        event: &'a str,
        /// The payload (`{}` or `{"reason":"channel_crash"}`).
        payload: &'a Payload,
    },
}

/// An encoded frame, ready for the WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireFrame {
    /// A text frame.
    Text(ByteString),
    /// A binary frame.
    Binary(Bytes),
}

/// Why an inbound frame could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The text is not JSON, or not the shape the serializer expects.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A binary frame that is not a well-formed kind-0 push.
    #[error("malformed binary frame: {0}")]
    MalformedBinary(&'static str),
    /// V1 sockets have no binary frames.
    #[error("binary frames need vsn 2.0.0")]
    BinaryNotSupported,
}

/// Why an outgoing frame could not be encoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    /// V1 sockets have no binary frames.
    #[error("binary payloads need vsn 2.0.0")]
    BinaryNotSupported,
    /// A binary header field is over 255 bytes.
    #[error("{0} is over 255 bytes, too long for a binary frame")]
    FieldTooLong(&'static str),
}

/// The serializer a socket negotiated with its `vsn` connect parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Serializer {
    /// `vsn=1.0.0` (or no vsn): JSON objects, no join_ref on the way out, no binary.
    V1,
    /// `vsn=2.0.0`: JSON arrays and binary frames.
    V2,
}

impl Serializer {
    /// Picks the serializer for a `vsn` value: `~> 1.0.0` or `~> 2.0.0`, missing means 1.0.0.
    pub fn negotiate(vsn: Option<&str>) -> Option<Self> {
        let vsn = vsn.unwrap_or("1.0.0");
        let mut parts = vsn.split('.');
        let major = parts.next()?.parse::<u64>().ok()?;
        let minor = parts.next()?.parse::<u64>().ok()?;
        let patch_ok = parts.next().is_none_or(|p| p.parse::<u64>().is_ok());
        if !patch_ok || parts.next().is_some() || minor != 0 {
            return None;
        }
        match major {
            1 => Some(Serializer::V1),
            2 => Some(Serializer::V2),
            _ => None,
        }
    }

    /// Decodes one text frame.
    pub fn decode_text(self, text: &str) -> Result<Message, DecodeError> {
        match self {
            Serializer::V1 => json::decode_v1(text),
            Serializer::V2 => json::decode_v2(text),
        }
    }

    /// Decodes one binary frame (V2 only).
    pub fn decode_binary(self, data: Bytes) -> Result<Message, DecodeError> {
        match self {
            Serializer::V1 => Err(DecodeError::BinaryNotSupported),
            Serializer::V2 => binary::decode_push(data),
        }
    }

    /// Encodes one outgoing frame.
    pub fn encode(self, frame: &Outgoing<'_>) -> Result<WireFrame, EncodeError> {
        let payload = match frame {
            Outgoing::Reply { response, .. } => *response,
            Outgoing::Push { payload, .. }
            | Outgoing::Broadcast { payload, .. }
            | Outgoing::Lifecycle { payload, .. } => *payload,
        };
        match (self, payload) {
            (Serializer::V1, Payload::Binary(_)) => Err(EncodeError::BinaryNotSupported),
            (Serializer::V1, Payload::Json(_)) => Ok(WireFrame::Text(json::encode_v1(frame))),
            (Serializer::V2, Payload::Json(_)) => Ok(WireFrame::Text(json::encode_v2(frame))),
            (Serializer::V2, Payload::Binary(bytes)) => binary::encode(frame, bytes).map(WireFrame::Binary),
        }
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsn_negotiation_follows_phoenix_requirements() {
        assert_eq!(Serializer::negotiate(None), Some(Serializer::V1));
        assert_eq!(Serializer::negotiate(Some("1.0.0")), Some(Serializer::V1));
        assert_eq!(Serializer::negotiate(Some("2.0.0")), Some(Serializer::V2));
        assert_eq!(Serializer::negotiate(Some("2.0.7")), Some(Serializer::V2));
        assert_eq!(Serializer::negotiate(Some("2.0")), Some(Serializer::V2));
        assert_eq!(Serializer::negotiate(Some("2.1.0")), None);
        assert_eq!(Serializer::negotiate(Some("3.0.0")), None);
        assert_eq!(Serializer::negotiate(Some("banana")), None);
        assert_eq!(Serializer::negotiate(Some("")), None);
    }

    #[test]
    fn payload_object_detection() {
        assert!(Payload::empty().is_object());
        assert!(!Payload::json(&[1, 2]).is_object());
        assert!(!Payload::Binary(Bytes::from_static(b"{")).is_object());
        assert!(Payload::json(&serde_json::json!({"reason": "nope"})).is_object());
    }
}
