//! Between stored rows and the seed types of `crate::pb`, and between those types and Phoenix
//! payloads: proto3 JSON (text frames) or protobuf (binary frames). Also the byte bounds of
//! the string fields a client sends in a `Message` or `Signal` (the README's bounds table):
//! a frame may be 1 MiB, and none of these should carry most of it.

use bytes::Bytes;
use serde::Serialize;

use super::MessagingError;
use crate::pb;
use crate::protocol::Payload;
use crate::store::messages::MessageRow;

/// `Message.signal_type` of a message in the log of the user who sent it (seed 004's DEVICE).
pub const SIGNAL_TYPE_DEVICE: i32 = 2;
/// `Message.signal_type` of a message in the log of the user who received it.
pub const SIGNAL_TYPE_RECEIVER: i32 = 3;
/// `Message.signal_request`: delivered because the device asked (pull).
pub const SIGNAL_REQUEST_PULL: i32 = 1;
/// `Message.signal_request`: delivered by the server on its own (push).
pub const SIGNAL_REQUEST_PUSH: i32 = 2;
/// `MessagePeerAckSignal.method`: stored by the server (✓).
pub const METHOD_SENT: i32 = 1;
/// `MessagePeerAckSignal.method`: acknowledged as received by a receiver's device (✓✓).
pub const METHOD_DELIVERED: i32 = 2;
/// `MessagePeerAckSignal.method`: read by the receiver.
pub const METHOD_READ: i32 = 3;

/// Longest `id` of a `Message` or `Signal`.
pub const MAX_ID_BYTES: usize = 128;
/// Longest `encryption_type` (a scheme's name); it also counts towards `max_payload_bytes`.
pub const MAX_ENCRYPTION_TYPE_BYTES: usize = 64;
/// Longest `eid` of an `Identity`: a username.
pub const MAX_EID_BYTES: usize = crate::accounts::validate::MAX_USERNAME_BYTES;
/// Longest `connection_resource_id` of an `Identity`: a device id.
pub const MAX_DEVICE_BYTES: usize = crate::accounts::validate::MAX_DEVICE_ID_BYTES;
/// Longest `node` of an `Identity`.
pub const MAX_NODE_BYTES: usize = 255;
/// Longest `error` of a `Signal` a client sends (the server drops it; it is bounded all the same).
pub const MAX_SIGNAL_ERROR_BYTES: usize = 256;

/// Refuses `value` (the field `name`) when it is longer than `max` bytes or, for names and
/// ids (`printable`), holds a control character.
pub fn check_text(name: &str, value: &str, max: usize, printable: bool) -> Result<(), MessagingError> {
    if value.len() > max {
        return Err(MessagingError::invalid(format!("{name} must be at most {max} bytes (got {})", value.len())));
    }
    if printable && value.chars().any(char::is_control) {
        return Err(MessagingError::invalid(format!("{name} must not contain control characters")));
    }
    Ok(())
}

/// Checks the bounds of an `Identity` a client sent as the field `name` (`from` or `to`).
pub fn check_identity(name: &str, identity: Option<&pb::Identity>) -> Result<(), MessagingError> {
    let Some(identity) = identity else { return Ok(()) };
    check_text(&format!("{name}.eid"), &identity.eid, MAX_EID_BYTES, true)?;
    if let Some(device) = &identity.connection_resource_id {
        check_text(&format!("{name}.connection_resource_id"), device, MAX_DEVICE_BYTES, true)?;
    }
    if let Some(node) = &identity.node {
        check_text(&format!("{name}.node"), node, MAX_NODE_BYTES, true)?;
    }
    Ok(())
}

/// How many bytes `value` takes as JSON, without keeping the encoding.
pub fn json_len<T: Serialize + ?Sized>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing to a counter cannot fail, and none of our types have non-string map keys.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// How a device exchanges seed types: proto3 JSON in text frames, or protobuf in binary ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Proto3 JSON with the proto field names.
    Json,
    /// The protobuf encoding, in V2 binary frames.
    Protobuf,
}

impl Encoding {
    /// The encoding a client used for this payload.
    pub fn of(payload: &Payload) -> Encoding {
        match payload {
            Payload::Json(_) => Encoding::Json,
            Payload::Binary(_) => Encoding::Protobuf,
        }
    }

    /// Encodes a seed type for a client using this encoding.
    pub fn encode<T: prost::Message + Serialize>(self, value: &T) -> Payload {
        match self {
            Encoding::Json => Payload::json(value),
            Encoding::Protobuf => Payload::Binary(protobuf(value)),
        }
    }
}

/// The protobuf encoding of a seed type.
pub fn protobuf<T: prost::Message>(value: &T) -> Bytes {
    Bytes::from(value.encode_to_vec())
}

/// Decodes a seed type from a client payload in either encoding.
pub fn decode<T>(payload: &Payload) -> Result<T, MessagingError>
where
    T: prost::Message + Default + serde::de::DeserializeOwned,
{
    match payload {
        Payload::Json(raw) => {
            serde_json::from_str(raw.get()).map_err(|e| MessagingError::invalid(format!("bad JSON: {e}")))
        }
        Payload::Binary(bytes) => {
            T::decode(bytes.as_ref()).map_err(|e| MessagingError::invalid(format!("bad protobuf: {e}")))
        }
    }
}

/// An offset (BIGINT in storage) as seed 004's int32 fields carry it, or `LogFull` naming `log`.
/// Never clipped, so no two messages show one offset: the store hands out nothing past
/// [`MAX_OFFSET`](crate::store::messages::MAX_OFFSET), and only a row stored before it did
/// could fail here.
pub fn offset32(offset: i64, log: impl FnOnce() -> String) -> Result<i32, MessagingError> {
    i32::try_from(offset).map_err(|_| MessagingError::LogFull { log: log() })
}

/// An identity with just a user (and optionally a device).
pub fn identity(eid: &str, device: Option<&str>) -> pb::Identity {
    pb::Identity { eid: eid.to_owned(), connection_resource_id: device.map(str::to_owned), node: None }
}

/// A stored message as it appears in `owner`'s log at `offset`; `LogFull` for a row whose
/// offsets the wire cannot carry.
pub fn log_message(
    row: &MessageRow,
    owner: &str,
    offset: i64,
    ack_state: pb::SignalAckState,
    signal_request: i32,
) -> Result<pb::Message, MessagingError> {
    let signal_offset = offset32(offset, || format!("{owner}'s message log"))?;
    let user_offset = offset32(row.user_offset, || format!("the conversation of {} and {}", row.sender, row.receiver))?;
    Ok(pb::Message {
        id: row.client_id.clone(),
        signal_offset,
        user_offset,
        from: Some(identity(&row.sender, row.sender_device.as_deref())),
        to: Some(identity(&row.receiver, None)),
        timestamp: row.sent_at,
        payload: row.payload.clone(),
        encryption_type: row.encryption_type.clone(),
        encrypted: row.encrypted.clone(),
        signature: row.signature.clone(),
        signal_type: if row.receiver == owner { SIGNAL_TYPE_RECEIVER } else { SIGNAL_TYPE_DEVICE },
        signal_offset_state: true,
        signal_ack_state: Some(ack_state),
        signal_request,
    })
}

/// The `encryption_type` of a sealed-sender message (seed 001): `encrypted` holds its bytes.
pub const ENCRYPTION_SEALED: &str = "sealed";
/// The prefix of a signal-endpoint device's name in its user's log (`signal:<deviceID>`): the
/// `connection_resource_id` of a sealed message's `to` and the device's cursor key.
pub const SEALED_DEVICE_PREFIX: &str = "signal:";

/// The name a signal-endpoint device goes by in its user's log.
pub fn sealed_device_key(device: i64) -> String {
    format!("{SEALED_DEVICE_PREFIX}{device}")
}

/// A sealed message as it appears in `receiver`'s log at `offset`: no `from`, the sealed bytes
/// as base64 in `encrypted`, and the device it is for in `to`. Offsets past the wire's int32
/// never reach here (the store refuses them), so they are clipped rather than refused.
pub fn sealed_message(
    receiver: &str,
    device: i64,
    body: &[u8],
    offset: i64,
    stored_at: i64,
    signal_request: i32,
) -> pb::Message {
    use base64::Engine as _;
    let device_key = sealed_device_key(device);
    pb::Message {
        id: format!("sealed:{offset}"),
        signal_offset: i32::try_from(offset).unwrap_or(i32::MAX),
        user_offset: 0,
        from: None,
        to: Some(identity(receiver, Some(&device_key))),
        timestamp: stored_at,
        payload: Vec::new(),
        encryption_type: ENCRYPTION_SEALED.to_owned(),
        encrypted: base64::engine::general_purpose::STANDARD.encode(body),
        signature: String::new(),
        signal_type: SIGNAL_TYPE_RECEIVER,
        signal_offset_state: true,
        signal_ack_state: Some(pb::SignalAckState { send: true, received: false, read: false }),
        signal_request,
    }
}

/// The device and sealed bytes of a message [`sealed_message`] made; `None` for any other.
pub fn sealed_parts(message: &pb::Message) -> Option<(i64, Vec<u8>)> {
    use base64::Engine as _;
    if message.encryption_type != ENCRYPTION_SEALED || message.from.is_some() {
        return None;
    }
    let device = message.to.as_ref()?.connection_resource_id.as_deref()?.strip_prefix(SEALED_DEVICE_PREFIX)?;
    let body = base64::engine::general_purpose::STANDARD.decode(&message.encrypted).ok()?;
    Some((device.parse().ok()?, body))
}

/// The ack state of a message whose receiver acknowledged its conversation up to these offsets.
pub fn ack_state(user_offset: i64, receiver_acked: (i64, i64)) -> pb::SignalAckState {
    pb::SignalAckState { send: true, received: user_offset <= receiver_acked.0, read: user_offset <= receiver_acked.1 }
}

/// The peer offsets of a conversation, from the original sender's point of view.
pub fn peer(sender: &str, receiver: &str, offset: i64, peer_offset: i64) -> pb::Peer {
    pb::Peer { from: sender.to_owned(), to: receiver.to_owned(), offset, peer_offset }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod sealed_tests {
    use super::*;

    #[test]
    fn a_sealed_message_names_no_sender_and_carries_its_bytes_back() {
        let message = sealed_message("AAAA", 7, &[0, 1, 255], 12, 99, SIGNAL_REQUEST_PUSH);
        assert_eq!(message.from, None);
        assert_eq!(message.encryption_type, "sealed");
        assert_eq!(message.encrypted, "AAH/");
        assert_eq!(message.signal_offset, 12);
        assert_eq!(message.to.as_ref().and_then(|t| t.connection_resource_id.as_deref()), Some("signal:7"));
        assert_eq!(sealed_parts(&message), Some((7, vec![0, 1, 255])));
        let plain = pb::Message { encryption_type: "sealed".into(), ..message.clone() };
        let with_sender = pb::Message { from: Some(identity("alice", None)), ..plain };
        assert_eq!(sealed_parts(&with_sender), None, "a message with a sender is no sealed one");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> MessageRow {
        MessageRow {
            sender: "alice".into(),
            client_id: "m1".into(),
            sender_device: Some("phone".into()),
            receiver: "bob".into(),
            user_offset: 7,
            sender_offset: 3,
            receiver_offset: 9,
            sent_at: 1_700_000_000_000,
            stored_at: 1_700_000_000_001,
            payload: b"{\"body\":\"hi\"}".to_vec(),
            encryption_type: String::new(),
            encrypted: String::new(),
            signature: String::new(),
        }
    }

    #[test]
    fn proto3_json_uses_proto_names_string_int64_and_base64_bytes() {
        let m = log_message(&row(), "bob", 9, ack_state(7, (0, 0)), SIGNAL_REQUEST_PUSH).unwrap();
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["id"], "m1");
        assert_eq!(json["signal_offset"], 9);
        assert_eq!(json["user_offset"], 7);
        assert_eq!(json["timestamp"], "1700000000000");
        assert_eq!(json["payload"], "eyJib2R5IjoiaGkifQ==");
        assert_eq!(json["from"]["eid"], "alice");
        assert_eq!(json["from"]["connection_resource_id"], "phone");
        assert_eq!(json["signal_type"], SIGNAL_TYPE_RECEIVER);
        assert_eq!(json["signal_offset_state"], true);
        assert_eq!(json["signal_ack_state"], serde_json::json!({"send": true, "received": false, "read": false}));
        assert_eq!(json["signal_request"], 2);
        // Round trip through both encodings.
        let back: pb::Message = decode(&Payload::json(&m)).unwrap();
        assert_eq!(back, m);
        let back: pb::Message = decode(&Encoding::Protobuf.encode(&m)).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn the_sender_log_copy_is_a_device_message() {
        let m = log_message(&row(), "alice", 3, ack_state(7, (7, 0)), SIGNAL_REQUEST_PULL).unwrap();
        assert_eq!((m.signal_type, m.signal_offset), (SIGNAL_TYPE_DEVICE, 3));
        assert_eq!(m.signal_ack_state, Some(pb::SignalAckState { send: true, received: true, read: false }));
    }

    #[test]
    fn offsets_past_int32_are_refused_never_clipped() {
        let max = crate::store::messages::MAX_OFFSET;
        let m = log_message(&row(), "bob", max, ack_state(7, (0, 0)), SIGNAL_REQUEST_PUSH).unwrap();
        assert_eq!(m.signal_offset, i32::MAX);
        let err = log_message(&row(), "bob", max + 1, ack_state(7, (0, 0)), SIGNAL_REQUEST_PUSH).unwrap_err();
        assert_eq!(err.code(), crate::error::Code::LogFull);
        assert!(err.reason().starts_with("bob's message log is full"), "{}", err.reason());
        let far = MessageRow { user_offset: max + 1, ..row() };
        let err = log_message(&far, "bob", 9, ack_state(7, (0, 0)), SIGNAL_REQUEST_PUSH).unwrap_err();
        assert!(err.reason().starts_with("the conversation of alice and bob is full"), "{}", err.reason());
    }

    #[test]
    fn json_input_accepts_numbers_or_strings_and_refuses_unknown_fields() {
        let ok: pb::Message =
            decode(&Payload::json(&serde_json::json!({"id": "x", "timestamp": 5, "payload": "aGk="}))).unwrap();
        assert_eq!((ok.timestamp, ok.payload.as_slice()), (5, b"hi".as_slice()));
        let ok: pb::Message = decode(&Payload::json(&serde_json::json!({"timestamp": "6"}))).unwrap();
        assert_eq!(ok.timestamp, 6);
        let err = decode::<pb::Message>(&Payload::json(&serde_json::json!({"idd": "x"}))).unwrap_err();
        assert!(err.reason().contains("idd"), "{}", err.reason());
        let err = decode::<pb::Message>(&Payload::Binary(Bytes::from_static(&[0xff, 0xff]))).unwrap_err();
        assert!(err.reason().starts_with("bad protobuf"), "{}", err.reason());
    }
}
