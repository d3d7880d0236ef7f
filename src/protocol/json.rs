//! JSON text frames: V2 arrays `[join_ref, ref, topic, event, payload]` and V1 objects.

use bytestring::ByteString;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{DecodeError, Message, Outgoing, PHX_REPLY, Payload};

const V2_SHAPE: &str = "expected [join_ref, ref, topic, event, payload]";

pub(super) fn decode_v2(text: &str) -> Result<Message, DecodeError> {
    let items: Vec<&RawValue> =
        serde_json::from_str(text).map_err(|e| DecodeError::Malformed(format!("{V2_SHAPE}: {e}")))?;
    // Phoenix ignores elements past the fifth; fewer is a broken client.
    let [join_ref, msg_ref, topic, event, payload, ..] = items.as_slice() else {
        return Err(DecodeError::Malformed(format!("{V2_SHAPE}, got {} elements", items.len())));
    };
    Ok(Message {
        join_ref: field(join_ref, "join_ref")?,
        msg_ref: field(msg_ref, "ref")?,
        topic: field::<String>(topic, "topic")?,
        event: field::<String>(event, "event")?,
        payload: Payload::Json((*payload).to_owned()),
    })
}

fn field<'a, T: Deserialize<'a>>(raw: &'a RawValue, name: &str) -> Result<T, DecodeError> {
    serde_json::from_str(raw.get())
        .map_err(|_| DecodeError::Malformed(format!("{name} must be a string{}", nullable(name))))
}

fn nullable(name: &str) -> &'static str {
    if name.ends_with("ref") { " or null" } else { "" }
}

#[derive(Deserialize)]
struct V1Message {
    topic: String,
    event: String,
    payload: Box<RawValue>,
    #[serde(rename = "ref")]
    msg_ref: Option<String>,
    #[serde(default)]
    join_ref: Option<String>,
}

pub(super) fn decode_v1(text: &str) -> Result<Message, DecodeError> {
    let msg: V1Message = serde_json::from_str(text)
        .map_err(|e| DecodeError::Malformed(format!("expected {{topic, event, payload, ref}}: {e}")))?;
    Ok(Message {
        join_ref: msg.join_ref,
        msg_ref: msg.msg_ref,
        topic: msg.topic,
        event: msg.event,
        payload: Payload::Json(msg.payload),
    })
}

struct Buf(Vec<u8>);

impl Buf {
    fn with_capacity(n: usize) -> Self {
        Buf(Vec::with_capacity(n))
    }
    fn raw(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }
    fn string(&mut self, s: &str) {
        // Writing into a Vec cannot fail, and a &str always serializes.
        let _ = serde_json::to_writer(&mut self.0, s);
    }
    fn opt(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.string(s),
            None => self.raw("null"),
        }
    }
    fn reply_body(&mut self, status: &str, response: &str) {
        self.raw(r#"{"response":"#);
        self.raw(response);
        self.raw(r#","status":"#);
        self.string(status);
        self.raw("}");
    }
    fn finish(self) -> ByteString {
        // Every piece written is valid UTF-8, so this never fails; an empty frame is the fallback.
        String::from_utf8(self.0).map(ByteString::from).unwrap_or_default()
    }
}

fn json_of(payload: &Payload) -> &str {
    payload.as_json_str().unwrap_or("null")
}

pub(super) fn encode_v2(frame: &Outgoing<'_>) -> ByteString {
    let mut b = Buf::with_capacity(64 + frame_payload_len(frame));
    b.raw("[");
    match *frame {
        Outgoing::Reply { join_ref, msg_ref, topic, status, response } => {
            b.opt(join_ref);
            b.raw(",");
            b.opt(msg_ref);
            b.raw(",");
            b.string(topic);
            b.raw(",");
            b.string(PHX_REPLY);
            b.raw(",");
            b.reply_body(status, json_of(response));
        }
        Outgoing::Push { join_ref, topic, event, payload } => {
            b.opt(join_ref);
            b.raw(",null,");
            b.string(topic);
            b.raw(",");
            b.string(event);
            b.raw(",");
            b.raw(json_of(payload));
        }
        Outgoing::Broadcast { topic, event, payload } => {
            b.raw("null,null,");
            b.string(topic);
            b.raw(",");
            b.string(event);
            b.raw(",");
            b.raw(json_of(payload));
        }
        Outgoing::Lifecycle { join_ref, topic, event, payload } => {
            b.string(join_ref);
            b.raw(",");
            b.string(join_ref);
            b.raw(",");
            b.string(topic);
            b.raw(",");
            b.string(event);
            b.raw(",");
            b.raw(json_of(payload));
        }
    }
    b.raw("]");
    b.finish()
}

/// V1 objects carry no join_ref; keys are sorted as Phoenix's encoder writes them.
pub(super) fn encode_v1(frame: &Outgoing<'_>) -> ByteString {
    let mut b = Buf::with_capacity(64 + frame_payload_len(frame));
    let (msg_ref, topic, event) = match *frame {
        Outgoing::Reply { msg_ref, topic, .. } => (msg_ref, topic, PHX_REPLY),
        Outgoing::Push { topic, event, .. } | Outgoing::Broadcast { topic, event, .. } => (None, topic, event),
        Outgoing::Lifecycle { join_ref, topic, event, .. } => (Some(join_ref), topic, event),
    };
    b.raw(r#"{"event":"#);
    b.string(event);
    b.raw(r#","payload":"#);
    match *frame {
        Outgoing::Reply { status, response, .. } => b.reply_body(status, json_of(response)),
        Outgoing::Push { payload, .. } | Outgoing::Broadcast { payload, .. } | Outgoing::Lifecycle { payload, .. } => {
            b.raw(json_of(payload))
        }
    }
    b.raw(r#","ref":"#);
    b.opt(msg_ref);
    b.raw(r#","topic":"#);
    b.string(topic);
    b.raw("}");
    b.finish()
}

fn frame_payload_len(frame: &Outgoing<'_>) -> usize {
    let payload = match frame {
        Outgoing::Reply { response, .. } => *response,
        Outgoing::Push { payload, .. } | Outgoing::Broadcast { payload, .. } | Outgoing::Lifecycle { payload, .. } => {
            *payload
        }
    };
    payload.as_json_str().map_or(0, str::len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{PHX_CLOSE, Serializer, WireFrame};

    fn text(frame: WireFrame) -> String {
        match frame {
            WireFrame::Text(t) => t.to_string(),
            WireFrame::Binary(_) => panic!("expected text"),
        }
    }

    #[test]
    fn decodes_v2_join_exactly() {
        let m = decode_v2(r#"["5","5","room:lobby","phx_join",{"a":1}]"#).unwrap();
        assert_eq!(m.join_ref.as_deref(), Some("5"));
        assert_eq!(m.msg_ref.as_deref(), Some("5"));
        assert_eq!(m.topic, "room:lobby");
        assert_eq!(m.event, "phx_join");
        assert_eq!(m.payload.as_json_str(), Some(r#"{"a":1}"#));
    }

    #[test]
    fn v2_ignores_extra_elements_and_accepts_null_refs() {
        let m = decode_v2(r#"[null,"8","phoenix","heartbeat",{},"extra"]"#).unwrap();
        assert_eq!(m.join_ref, None);
        assert_eq!(m.msg_ref.as_deref(), Some("8"));
    }

    #[test]
    fn v2_refuses_bad_shapes_with_reasons() {
        assert!(matches!(decode_v2("not json"), Err(DecodeError::Malformed(_))));
        let short = decode_v2(r#"["1","1","t","e"]"#).unwrap_err();
        assert!(short.to_string().contains("got 4 elements"), "{short}");
        let numeric = decode_v2(r#"[1,"1","t","e",{}]"#).unwrap_err();
        assert!(numeric.to_string().contains("join_ref must be a string or null"), "{numeric}");
        let topic = decode_v2(r#"["1","1",7,"e",{}]"#).unwrap_err();
        assert!(topic.to_string().contains("topic must be a string"), "{topic}");
        assert!(decode_v2(r#"{"topic":"x"}"#).is_err());
    }

    #[test]
    fn decodes_v1_objects() {
        let m = decode_v1(r#"{"topic":"room:v1","event":"phx_join","payload":{},"ref":"1"}"#).unwrap();
        assert_eq!(m.topic, "room:v1");
        assert_eq!(m.msg_ref.as_deref(), Some("1"));
        assert_eq!(m.join_ref, None);
        assert!(decode_v1(r#"{"topic":"room:v1","payload":{},"ref":"1"}"#).is_err());
    }

    #[test]
    fn encodes_v2_frames_like_the_capture() {
        let response = Payload::empty();
        let reply = Outgoing::Reply {
            join_ref: Some("5"),
            msg_ref: Some("5"),
            topic: "room:lobby",
            status: "ok",
            response: &response,
        };
        assert_eq!(
            text(Serializer::V2.encode(&reply).unwrap()),
            r#"["5","5","room:lobby","phx_reply",{"response":{},"status":"ok"}]"#
        );
        let payload = Payload::json(&serde_json::json!({"body": "hi \"there\""}));
        let broadcast = Outgoing::Broadcast { topic: "room:lobby", event: "new_msg", payload: &payload };
        assert_eq!(
            text(Serializer::V2.encode(&broadcast).unwrap()),
            r#"[null,null,"room:lobby","new_msg",{"body":"hi \"there\""}]"#
        );
        let push =
            Outgoing::Push { join_ref: Some("5"), topic: "room:lobby", event: "presence_state", payload: &response };
        assert_eq!(text(Serializer::V2.encode(&push).unwrap()), r#"["5",null,"room:lobby","presence_state",{}]"#);
        let close = Outgoing::Lifecycle { join_ref: "3", topic: "room:raw", event: PHX_CLOSE, payload: &response };
        assert_eq!(text(Serializer::V2.encode(&close).unwrap()), r#"["3","3","room:raw","phx_close",{}]"#);
    }

    #[test]
    fn encodes_v1_frames_like_the_capture() {
        let response = Payload::json(&serde_json::json!({"a": 1}));
        let reply = Outgoing::Reply {
            join_ref: Some("1"),
            msg_ref: Some("2"),
            topic: "room:v1",
            status: "ok",
            response: &response,
        };
        assert_eq!(
            text(Serializer::V1.encode(&reply).unwrap()),
            r#"{"event":"phx_reply","payload":{"response":{"a":1},"status":"ok"},"ref":"2","topic":"room:v1"}"#
        );
        let broadcast = Outgoing::Broadcast { topic: "room:v1", event: "presence_diff", payload: &response };
        assert_eq!(
            text(Serializer::V1.encode(&broadcast).unwrap()),
            r#"{"event":"presence_diff","payload":{"a":1},"ref":null,"topic":"room:v1"}"#
        );
    }

    #[test]
    fn escapes_topics_and_events() {
        let p = Payload::empty();
        let b = Outgoing::Broadcast { topic: "room:\"q\"\n", event: "e\\", payload: &p };
        let t = text(Serializer::V2.encode(&b).unwrap());
        let back: serde_json::Value = serde_json::from_str(&t).unwrap();
        assert_eq!(back[2], "room:\"q\"\n");
        assert_eq!(back[3], "e\\");
    }
}
