//! Protobuf `Message` payloads of V2 binary frames on `user:<eid>` (`messaging::wire::decode`).
#![no_main]

use bytes::Bytes;
use courier::messaging::wire::{self, Encoding};
use courier::pb;
use courier::protocol::Payload;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let payload = Payload::Binary(Bytes::copy_from_slice(data));
    let Ok(decoded) = wire::decode::<pb::Message>(&payload) else { return };
    // Whatever was accepted is sent on in both encodings; each must read back the same.
    for encoding in [Encoding::Json, Encoding::Protobuf] {
        let back: pb::Message = wire::decode(&encoding.encode(&decoded)).expect("a re-encoded Message decodes");
        assert_eq!(back, decoded, "{encoding:?} round trip");
    }
});
