//! V2 binary frames: kind 0 push (both directions, different headers), 1 reply, 2 broadcast.
//! Every header field is length-prefixed by one byte, so each is at most 255 bytes.

use bytes::{BufMut, Bytes, BytesMut};

use super::{DecodeError, EncodeError, Message, Outgoing, Payload};

const KIND_PUSH: u8 = 0;
const KIND_REPLY: u8 = 1;
const KIND_BROADCAST: u8 = 2;

pub(super) fn decode_push(data: Bytes) -> Result<Message, DecodeError> {
    const HEADER: usize = 5;
    if data.len() < HEADER {
        return Err(DecodeError::MalformedBinary("frame shorter than its 5-byte header"));
    }
    if data[0] != KIND_PUSH {
        return Err(DecodeError::MalformedBinary("clients may only send kind 0 (push)"));
    }
    let lens = [data[1], data[2], data[3], data[4]].map(usize::from);
    let fields_end = HEADER + lens.iter().sum::<usize>();
    if data.len() < fields_end {
        return Err(DecodeError::MalformedBinary("header lengths run past the end of the frame"));
    }
    let mut at = HEADER;
    let mut next = |len: usize, name: &'static str| -> Result<String, DecodeError> {
        let slice = &data[at..at + len];
        at += len;
        std::str::from_utf8(slice).map(str::to_owned).map_err(|_| DecodeError::MalformedBinary(name))
    };
    let join_ref = next(lens[0], "join_ref is not UTF-8")?;
    let msg_ref = next(lens[1], "ref is not UTF-8")?;
    let topic = next(lens[2], "topic is not UTF-8")?;
    let event = next(lens[3], "event is not UTF-8")?;
    Ok(Message {
        join_ref: non_empty(join_ref),
        msg_ref: non_empty(msg_ref),
        topic,
        event,
        payload: Payload::Binary(data.slice(fields_end..)),
    })
}

/// phoenix.js writes a missing join_ref as the text "null"; an empty field means the same.
fn non_empty(s: String) -> Option<String> {
    (!s.is_empty() && s != "null").then_some(s)
}

fn len_byte(s: &str, name: &'static str) -> Result<u8, EncodeError> {
    u8::try_from(s.len()).map_err(|_| EncodeError::FieldTooLong(name))
}

pub(super) fn encode(frame: &Outgoing<'_>, body: &Bytes) -> Result<Bytes, EncodeError> {
    let mut out;
    match *frame {
        Outgoing::Reply { join_ref, msg_ref, topic, status, .. } => {
            let (jr, r) = (join_ref.unwrap_or(""), msg_ref.unwrap_or(""));
            let header = [
                KIND_REPLY,
                len_byte(jr, "join_ref")?,
                len_byte(r, "ref")?,
                len_byte(topic, "topic")?,
                len_byte(status, "status")?,
            ];
            out = BytesMut::with_capacity(5 + jr.len() + r.len() + topic.len() + status.len() + body.len());
            out.put_slice(&header);
            for s in [jr, r, topic, status] {
                out.put_slice(s.as_bytes());
            }
        }
        Outgoing::Push { join_ref, topic, event, .. } => {
            out = push_header(join_ref.unwrap_or(""), topic, event, body.len())?;
        }
        Outgoing::Lifecycle { join_ref, topic, event, .. } => {
            out = push_header(join_ref, topic, event, body.len())?;
        }
        Outgoing::Broadcast { topic, event, .. } => {
            let header = [KIND_BROADCAST, len_byte(topic, "topic")?, len_byte(event, "event")?];
            out = BytesMut::with_capacity(3 + topic.len() + event.len() + body.len());
            out.put_slice(&header);
            out.put_slice(topic.as_bytes());
            out.put_slice(event.as_bytes());
        }
    }
    out.put_slice(body);
    Ok(out.freeze())
}

fn push_header(join_ref: &str, topic: &str, event: &str, body_len: usize) -> Result<BytesMut, EncodeError> {
    let header = [KIND_PUSH, len_byte(join_ref, "join_ref")?, len_byte(topic, "topic")?, len_byte(event, "event")?];
    let mut out = BytesMut::with_capacity(4 + join_ref.len() + topic.len() + event.len() + body_len);
    out.put_slice(&header);
    for s in [join_ref, topic, event] {
        out.put_slice(s.as_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Serializer, WireFrame};

    fn client_push(join_ref: &str, msg_ref: &str, topic: &str, event: &str, body: &[u8]) -> Bytes {
        let mut v = vec![0, join_ref.len() as u8, msg_ref.len() as u8, topic.len() as u8, event.len() as u8];
        for s in [join_ref, msg_ref, topic, event] {
            v.extend_from_slice(s.as_bytes());
        }
        v.extend_from_slice(body);
        Bytes::from(v)
    }

    #[test]
    fn decodes_client_push() {
        let m = decode_push(client_push("12", "13", "room:bin", "ping", &[1, 2, 255])).unwrap();
        assert_eq!(m.join_ref.as_deref(), Some("12"));
        assert_eq!(m.msg_ref.as_deref(), Some("13"));
        assert_eq!(m.topic, "room:bin");
        assert_eq!(m.event, "ping");
        assert!(matches!(m.payload, Payload::Binary(ref b) if b.as_ref() == [1, 2, 255]));
    }

    #[test]
    fn null_join_ref_text_means_none() {
        let m = decode_push(client_push("null", "1", "t", "e", b"")).unwrap();
        assert_eq!(m.join_ref, None);
    }

    #[test]
    fn refuses_truncated_or_wrong_kind() {
        assert!(decode_push(Bytes::from_static(&[0, 1])).is_err());
        assert!(decode_push(Bytes::from_static(&[0, 9, 0, 0, 0, b'a'])).is_err());
        assert!(decode_push(Bytes::from_static(&[1, 0, 0, 0, 0])).is_err());
        assert!(decode_push(Bytes::from_static(&[0, 1, 0, 0, 0, 0xff])).is_err());
    }

    #[test]
    fn encodes_reply_push_and_broadcast_layouts() {
        let body = Payload::Binary(Bytes::from_static(&[9, 8]));
        let reply =
            Outgoing::Reply { join_ref: Some("1"), msg_ref: Some("22"), topic: "t", status: "ok", response: &body };
        assert_eq!(
            Serializer::V2.encode(&reply).unwrap(),
            WireFrame::Binary(Bytes::from_static(&[1, 1, 2, 1, 2, b'1', b'2', b'2', b't', b'o', b'k', 9, 8]))
        );
        let push = Outgoing::Push { join_ref: Some("1"), topic: "t", event: "e", payload: &body };
        assert_eq!(
            Serializer::V2.encode(&push).unwrap(),
            WireFrame::Binary(Bytes::from_static(&[0, 1, 1, 1, b'1', b't', b'e', 9, 8]))
        );
        let broadcast = Outgoing::Broadcast { topic: "t", event: "e", payload: &body };
        assert_eq!(
            Serializer::V2.encode(&broadcast).unwrap(),
            WireFrame::Binary(Bytes::from_static(&[2, 1, 1, b't', b'e', 9, 8]))
        );
    }

    #[test]
    fn long_fields_and_v1_are_refused() {
        let body = Payload::Binary(Bytes::new());
        let topic = "x".repeat(256);
        let b = Outgoing::Broadcast { topic: &topic, event: "e", payload: &body };
        assert_eq!(Serializer::V2.encode(&b), Err(EncodeError::FieldTooLong("topic")));
        assert_eq!(Serializer::V1.encode(&b), Err(EncodeError::BinaryNotSupported));
        assert_eq!(Serializer::V1.decode_binary(Bytes::new()).unwrap_err(), DecodeError::BinaryNotSupported);
    }
}
