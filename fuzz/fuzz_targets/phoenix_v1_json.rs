//! Phoenix V1 text frames (`vsn=1.0.0`): `{"topic","event","payload","ref"}` objects.
#![no_main]

use courier::protocol::{Outgoing, Serializer, WireFrame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The WebSocket layer only hands valid UTF-8 text frames to the serializer.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(msg) = Serializer::V1.decode_text(text) else { return };
    // Every decoded push is answered with a reply echoing its ref and topic; that reply must
    // encode and read back with the same fields.
    let reply = Outgoing::Reply {
        join_ref: msg.join_ref.as_deref(),
        msg_ref: msg.msg_ref.as_deref(),
        topic: &msg.topic,
        status: "error",
        response: &msg.payload,
    };
    let Ok(WireFrame::Text(encoded)) = Serializer::V1.encode(&reply) else {
        panic!("a JSON reply did not encode as text")
    };
    let back = Serializer::V1.decode_text(&encoded).expect("our own V1 reply decodes");
    assert_eq!(back.msg_ref, msg.msg_ref);
    assert_eq!(back.topic, msg.topic);
    assert_eq!(back.event, "phx_reply");
});
