//! Property tests of the V1/V2 JSON and V2 binary serializers: decoding never panics on any
//! input, and what the server encodes (or a client would) decodes back to the same fields.
//! `fuzz/` runs the same decoders under cargo-fuzz for far longer.

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::{Message, Outgoing, PHX_REPLY, Payload, Serializer, WireFrame};

/// Cases per property: enough to cover the shapes, few enough to keep `cargo test` quick.
fn config() -> ProptestConfig {
    ProptestConfig::with_cases(256)
}

/// Any JSON value without floats (whose text form need not round-trip digit for digit).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(".{0,6}", json_value(), 0..4).prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// Text that is mostly JSON punctuation, so the decoders get past the first byte.
fn jsonish() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        r#"[\[\]{}",:0-9a-z\\ ]{0,48}"#,
        "\\[(null|\"[a-z0-9]{0,3}\"|[0-9]|\\{\\}|,){0,12}\\]?"
    ]
}

/// A header field: any string of at most 255 bytes (binary frames prefix each with one byte).
fn field() -> impl Strategy<Value = String> {
    ".{0,40}".prop_filter("fits a length byte", |s| s.len() <= 255)
}

fn payload_value(payload: &Payload) -> Value {
    serde_json::from_str(payload.as_json_str().expect("a JSON payload")).expect("payload is JSON")
}

fn text(frame: WireFrame) -> String {
    match frame {
        WireFrame::Text(t) => t.to_string(),
        WireFrame::Binary(_) => panic!("expected a text frame"),
    }
}

/// A client's kind 0 push, laid out as phoenix.js writes it.
fn client_push(fields: [&str; 4], body: &[u8]) -> Bytes {
    let mut v = vec![0];
    v.extend(fields.iter().map(|f| u8::try_from(f.len()).expect("short field")));
    for f in fields {
        v.extend_from_slice(f.as_bytes());
    }
    v.extend_from_slice(body);
    Bytes::from(v)
}

/// Splits a server binary frame into its kind, its header fields and its body.
fn server_frame(frame: &[u8]) -> (u8, Vec<String>, Vec<u8>) {
    let fields = match frame[0] {
        0 => 3, // push: join_ref, topic, event
        1 => 4, // reply: join_ref, ref, topic, status
        2 => 2, // broadcast: topic, event
        kind => panic!("unknown kind {kind}"),
    };
    let lens: Vec<usize> = frame[1..=fields].iter().map(|&n| usize::from(n)).collect();
    let mut at = 1 + fields;
    let mut out = Vec::new();
    for len in lens {
        out.push(String::from_utf8(frame[at..at + len].to_vec()).expect("UTF-8 field"));
        at += len;
    }
    (frame[0], out, frame[at..].to_vec())
}

/// phoenix.js's binary join_ref "null" and an empty one both mean none.
fn binary_ref(s: &str) -> Option<String> {
    (!s.is_empty() && s != "null").then(|| s.to_owned())
}

fn message_fields(m: &Message) -> (Option<&str>, Option<&str>, &str, &str) {
    (m.join_ref.as_deref(), m.msg_ref.as_deref(), &m.topic, &m.event)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn text_decoders_never_panic(text in jsonish()) {
        for serializer in [Serializer::V1, Serializer::V2] {
            let _ = serializer.decode_text(&text);
        }
    }

    #[test]
    fn binary_decoder_never_panics(
        data in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            // A kind 0 header with small lengths, so the field checks are reached.
            (prop::collection::vec(0u8..8, 4), prop::collection::vec(any::<u8>(), 0..40))
                .prop_map(|(lens, rest)| [vec![0], lens, rest].concat()),
        ]
    ) {
        let _ = Serializer::V2.decode_binary(Bytes::from(data.clone()));
        prop_assert!(Serializer::V1.decode_binary(Bytes::from(data)).is_err());
    }

    #[test]
    fn v2_client_frames_decode_to_their_fields(
        join_ref in proptest::option::of(field()),
        msg_ref in proptest::option::of(field()),
        topic in field(),
        event in field(),
        payload in json_value(),
    ) {
        let frame = json!([join_ref, msg_ref, topic, event, payload]).to_string();
        let m = Serializer::V2.decode_text(&frame).expect("a well-formed V2 frame decodes");
        prop_assert_eq!(message_fields(&m), (join_ref.as_deref(), msg_ref.as_deref(), topic.as_str(), event.as_str()));
        prop_assert_eq!(payload_value(&m.payload), payload);
    }

    #[test]
    fn v1_client_frames_decode_to_their_fields(
        join_ref in proptest::option::of(field()),
        msg_ref in proptest::option::of(field()),
        topic in field(),
        event in field(),
        payload in json_value(),
    ) {
        let frame = json!({"topic": topic, "event": event, "payload": payload, "ref": msg_ref, "join_ref": join_ref});
        let m = Serializer::V1.decode_text(&frame.to_string()).expect("a well-formed V1 frame decodes");
        prop_assert_eq!(message_fields(&m), (join_ref.as_deref(), msg_ref.as_deref(), topic.as_str(), event.as_str()));
        prop_assert_eq!(payload_value(&m.payload), payload);
    }

    #[test]
    fn v2_server_frames_read_back(
        join_ref in proptest::option::of(field()),
        msg_ref in proptest::option::of(field()),
        topic in field(),
        event in field(),
        status in field(),
        body in json_object(),
    ) {
        let payload = Payload::json(&body);
        let (jr, r) = (join_ref.as_deref(), msg_ref.as_deref());
        let reply = Outgoing::Reply { join_ref: jr, msg_ref: r, topic: &topic, status: &status, response: &payload };
        let m = Serializer::V2.decode_text(&text(Serializer::V2.encode(&reply).unwrap())).unwrap();
        prop_assert_eq!(message_fields(&m), (jr, r, topic.as_str(), PHX_REPLY));
        prop_assert_eq!(payload_value(&m.payload), json!({"response": body, "status": status}));

        let push = Outgoing::Push { join_ref: jr, topic: &topic, event: &event, payload: &payload };
        let m = Serializer::V2.decode_text(&text(Serializer::V2.encode(&push).unwrap())).unwrap();
        prop_assert_eq!(message_fields(&m), (jr, None, topic.as_str(), event.as_str()));
        prop_assert_eq!(payload_value(&m.payload), body.clone());

        let broadcast = Outgoing::Broadcast { topic: &topic, event: &event, payload: &payload };
        let m = Serializer::V2.decode_text(&text(Serializer::V2.encode(&broadcast).unwrap())).unwrap();
        prop_assert_eq!(message_fields(&m), (None, None, topic.as_str(), event.as_str()));

        let lifecycle = Outgoing::Lifecycle { join_ref: &status, topic: &topic, event: &event, payload: &payload };
        let m = Serializer::V2.decode_text(&text(Serializer::V2.encode(&lifecycle).unwrap())).unwrap();
        prop_assert_eq!(message_fields(&m), (Some(status.as_str()), Some(status.as_str()), topic.as_str(), event.as_str()));
    }

    #[test]
    fn v1_server_frames_read_back(
        join_ref in proptest::option::of(field()),
        msg_ref in proptest::option::of(field()),
        topic in field(),
        event in field(),
        body in json_object(),
    ) {
        let payload = Payload::json(&body);
        let reply = Outgoing::Reply {
            join_ref: join_ref.as_deref(), msg_ref: msg_ref.as_deref(), topic: &topic, status: "ok", response: &payload,
        };
        let m = Serializer::V1.decode_text(&text(Serializer::V1.encode(&reply).unwrap())).unwrap();
        // V1 objects carry no join_ref.
        prop_assert_eq!(message_fields(&m), (None, msg_ref.as_deref(), topic.as_str(), PHX_REPLY));
        prop_assert_eq!(payload_value(&m.payload), json!({"response": body, "status": "ok"}));

        let push = Outgoing::Push { join_ref: join_ref.as_deref(), topic: &topic, event: &event, payload: &payload };
        let m = Serializer::V1.decode_text(&text(Serializer::V1.encode(&push).unwrap())).unwrap();
        prop_assert_eq!(message_fields(&m), (None, None, topic.as_str(), event.as_str()));
        prop_assert_eq!(payload_value(&m.payload), body);
    }

    #[test]
    fn binary_client_pushes_decode_to_their_fields(
        join_ref in field(),
        msg_ref in field(),
        topic in field(),
        event in field(),
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let frame = client_push([&join_ref, &msg_ref, &topic, &event], &body);
        let m = Serializer::V2.decode_binary(frame).expect("a well-formed push decodes");
        prop_assert_eq!(m.join_ref, binary_ref(&join_ref));
        prop_assert_eq!(m.msg_ref, binary_ref(&msg_ref));
        prop_assert_eq!((m.topic.as_str(), m.event.as_str()), (topic.as_str(), event.as_str()));
        prop_assert!(matches!(m.payload, Payload::Binary(ref b) if b.as_ref() == body.as_slice()));
    }

    #[test]
    fn binary_server_frames_read_back(
        join_ref in field(),
        msg_ref in field(),
        topic in field(),
        event in field(),
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let payload = Payload::Binary(Bytes::from(body.clone()));
        let binary = |frame: &Outgoing<'_>| match Serializer::V2.encode(frame) {
            Ok(WireFrame::Binary(b)) => server_frame(&b),
            other => panic!("expected a binary frame, got {other:?}"),
        };
        let reply = Outgoing::Reply {
            join_ref: Some(&join_ref), msg_ref: Some(&msg_ref), topic: &topic, status: &event, response: &payload,
        };
        prop_assert_eq!(binary(&reply), (1, vec![join_ref.clone(), msg_ref, topic.clone(), event.clone()], body.clone()));
        let push = Outgoing::Push { join_ref: Some(&join_ref), topic: &topic, event: &event, payload: &payload };
        prop_assert_eq!(binary(&push), (0, vec![join_ref, topic.clone(), event.clone()], body.clone()));
        let broadcast = Outgoing::Broadcast { topic: &topic, event: &event, payload: &payload };
        prop_assert_eq!(binary(&broadcast), (2, vec![topic, event], body));
    }
}
