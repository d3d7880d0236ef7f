//! Property tests of the seed-type decode path of `user:<eid>` ([`super::decode`]): any JSON or
//! protobuf payload is decoded or refused without a panic, and every `Message` and `Signal`
//! survives both encodings unchanged. `fuzz/` runs the same decoder under cargo-fuzz.

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::Value;

use super::{Encoding, decode};
use crate::pb;
use crate::protocol::Payload;

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(256)
}

fn identity() -> impl Strategy<Value = pb::Identity> {
    (".{0,12}", proptest::option::of(".{0,8}"), proptest::option::of(".{0,8}"))
        .prop_map(|(eid, connection_resource_id, node)| pb::Identity { eid, connection_resource_id, node })
}

fn ack_state() -> impl Strategy<Value = pb::SignalAckState> {
    (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(send, received, read)| pb::SignalAckState {
        send,
        received,
        read,
    })
}

fn message() -> impl Strategy<Value = pb::Message> {
    (
        (".{0,16}", any::<i32>(), any::<i32>(), proptest::option::of(identity()), proptest::option::of(identity())),
        (any::<i64>(), prop::collection::vec(any::<u8>(), 0..48), ".{0,8}", ".{0,24}", ".{0,24}"),
        (any::<i32>(), any::<bool>(), proptest::option::of(ack_state()), any::<i32>()),
    )
        .prop_map(|(a, b, c)| pb::Message {
            id: a.0,
            signal_offset: a.1,
            user_offset: a.2,
            from: a.3,
            to: a.4,
            timestamp: b.0,
            payload: b.1,
            encryption_type: b.2,
            encrypted: b.3,
            signature: b.4,
            signal_type: c.0,
            signal_offset_state: c.1,
            signal_ack_state: c.2,
            signal_request: c.3,
        })
}

fn signal() -> impl Strategy<Value = pb::Signal> {
    (
        (".{0,16}", any::<i32>(), any::<i32>(), any::<i32>(), any::<i64>(), proptest::option::of(identity())),
        (proptest::option::of(identity()), any::<i32>(), any::<i32>(), proptest::option::of(".{0,16}")),
        (any::<bool>(), proptest::option::of(ack_state())),
    )
        .prop_map(|(a, b, c)| pb::Signal {
            id: a.0,
            signal_offset: a.1,
            user_offset: a.2,
            status: a.3,
            timestamp: a.4,
            from: a.5,
            to: b.0,
            r#type: b.1,
            signal_type: b.2,
            error: b.3,
            signal_offset_state: c.0,
            signal_ack_state: c.1,
        })
}

/// JSON objects keyed mostly by the seed types' own field names, with values of any type, so
/// decoding gets past the field lookup into each field's parser.
fn seedish_json() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        prop::sample::select(vec![
            "id",
            "signal_offset",
            "user_offset",
            "from",
            "to",
            "timestamp",
            "payload",
            "encryption_type",
            "encrypted",
            "signature",
            "signal_type",
            "signal_offset_state",
            "signal_ack_state",
            "signal_request",
            "status",
            "type",
            "error",
            "eid",
            "connection_resource_id",
            "node",
            "send",
            "received",
            "read",
        ])
        .prop_map(str::to_owned),
        ".{0,6}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![".{0,10}", "[A-Za-z0-9+/=_-]{0,12}", "-?[0-9]{1,25}"].prop_map(Value::from),
    ];
    let value = leaf.prop_recursive(3, 16, 4, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map(".{0,4}", inner, 0..3).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    prop::collection::btree_map(key, value, 0..6).prop_map(|m| Value::Object(m.into_iter().collect()).to_string())
}

fn json_payload(text: &str) -> Option<Payload> {
    serde_json::value::RawValue::from_string(text.to_owned()).ok().map(Payload::Json)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn decoding_any_payload_never_panics(
        text in prop_oneof![seedish_json(), any::<String>()],
        bytes in prop::collection::vec(any::<u8>(), 0..96),
    ) {
        if let Some(payload) = json_payload(&text) {
            let _ = decode::<pb::Message>(&payload);
            let _ = decode::<pb::Signal>(&payload);
        }
        let payload = Payload::Binary(Bytes::from(bytes));
        let _ = decode::<pb::Message>(&payload);
        let _ = decode::<pb::Signal>(&payload);
    }

    #[test]
    fn whatever_decodes_re_encodes_to_itself(text in seedish_json(), bytes in prop::collection::vec(any::<u8>(), 0..96)) {
        let payloads = [json_payload(&text), Some(Payload::Binary(Bytes::from(bytes)))];
        for payload in payloads.iter().flatten() {
            if let Ok(m) = decode::<pb::Message>(payload) {
                for encoding in [Encoding::Json, Encoding::Protobuf] {
                    prop_assert_eq!(&decode::<pb::Message>(&encoding.encode(&m)).unwrap(), &m);
                }
            }
            if let Ok(s) = decode::<pb::Signal>(payload) {
                for encoding in [Encoding::Json, Encoding::Protobuf] {
                    prop_assert_eq!(&decode::<pb::Signal>(&encoding.encode(&s)).unwrap(), &s);
                }
            }
        }
    }

    #[test]
    fn messages_round_trip_in_both_encodings(m in message()) {
        for encoding in [Encoding::Json, Encoding::Protobuf] {
            let back: pb::Message = decode(&encoding.encode(&m)).expect("an encoded Message decodes");
            prop_assert_eq!(&back, &m, "{:?}", encoding);
        }
    }

    #[test]
    fn signals_round_trip_in_both_encodings(s in signal()) {
        for encoding in [Encoding::Json, Encoding::Protobuf] {
            let back: pb::Signal = decode(&encoding.encode(&s)).expect("an encoded Signal decodes");
            prop_assert_eq!(&back, &s, "{:?}", encoding);
        }
    }
}
