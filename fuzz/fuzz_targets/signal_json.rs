//! Proto3 JSON `Signal` payloads of text frames on `user:<eid>` (`messaging::wire::decode`).
#![no_main]

use courier::messaging::wire::{self, Encoding};
use courier::pb;
use courier::protocol::Payload;
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

fuzz_target!(|data: &[u8]| {
    // The frame decoder hands the channel a payload that is already valid JSON.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(raw) = RawValue::from_string(text.to_owned()) else { return };
    let Ok(decoded) = wire::decode::<pb::Signal>(&Payload::Json(raw)) else { return };
    // Whatever was accepted is sent on in both encodings; each must read back the same.
    for encoding in [Encoding::Json, Encoding::Protobuf] {
        let back: pb::Signal = wire::decode(&encoding.encode(&decoded)).expect("a re-encoded Signal decodes");
        assert_eq!(back, decoded, "{encoding:?} round trip");
    }
});
