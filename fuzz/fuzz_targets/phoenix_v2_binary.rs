//! Phoenix V2 binary frames from clients: kind 0 push, `[0, len x4, join_ref, ref, topic, event, payload]`.
#![no_main]

use bytes::Bytes;
use courier::protocol::{Outgoing, Payload, Serializer, WireFrame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = Serializer::V2.decode_binary(Bytes::copy_from_slice(data)) else { return };
    let Payload::Binary(body) = &msg.payload else { panic!("a binary frame decoded to a JSON payload") };
    // The room channel's `ping` answers binary with binary: a kind 1 reply echoing the push's
    // fields, each of which came in with a one-byte length, so encoding cannot refuse them.
    let reply = Outgoing::Reply {
        join_ref: msg.join_ref.as_deref(),
        msg_ref: msg.msg_ref.as_deref(),
        topic: &msg.topic,
        status: "ok",
        response: &msg.payload,
    };
    let Ok(WireFrame::Binary(out)) = Serializer::V2.encode(&reply) else {
        panic!("a binary reply to a decoded push did not encode")
    };
    let (jr, r) = (msg.join_ref.as_deref().unwrap_or(""), msg.msg_ref.as_deref().unwrap_or(""));
    let header = [1, jr.len(), r.len(), msg.topic.len(), 2].map(|n| n as u8);
    assert_eq!(&out[..5], &header[..]);
    let fields = [jr, r, &msg.topic, "ok"].concat();
    assert_eq!(&out[5..5 + fields.len()], fields.as_bytes());
    assert_eq!(&out[5 + fields.len()..], &body[..]);
});
