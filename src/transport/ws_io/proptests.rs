//! Property tests of [`WsReader`]'s frame assembly, through [`WsReader::feed`]: any bytes, read
//! in any sizes, give the same messages as when read at once and never one over the limit; a
//! client's messages, fragmented and interleaved with pings, come out whole and in order.
//! `fuzz/` runs the same path under cargo-fuzz.

use std::sync::Arc;

use actix_codec::Encoder;
use actix_http::ws::{Codec, Item, Message, ProtocolError};
use actix_ws::AggregatedMessage;
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tokio::net::TcpStream;

use super::WsReader;

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(256)
}

/// A server-side stream for readers that are only fed, never polled; plus what keeps it open.
struct Io {
    _runtime: tokio::runtime::Runtime,
    stream: Arc<TcpStream>,
    _peer: std::net::TcpStream,
}

fn io() -> Io {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let peer = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    server.set_nonblocking(true).expect("nonblocking");
    let stream = {
        let _guard = runtime.enter();
        TcpStream::from_std(server).expect("register")
    };
    Io { _runtime: runtime, stream: Arc::new(stream), _peer: peer }
}

/// Everything the reader yields for `bytes` arriving `chunk` bytes at a time, up to the end of
/// the stream (a close or an error).
fn read_all(io: &Io, bytes: &[u8], chunk: usize, max: usize) -> Vec<Result<AggregatedMessage, String>> {
    let mut reader = WsReader::new(Arc::clone(&io.stream), BytesMut::new(), max);
    let mut out = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        let mut next = reader.feed(piece);
        loop {
            match next {
                Ok(None) => break,
                Ok(Some(message)) => {
                    let close = matches!(message, AggregatedMessage::Close(_));
                    out.push(Ok(message));
                    if close {
                        return out;
                    }
                }
                Err(e) => {
                    out.push(Err(describe(&e)));
                    return out;
                }
            }
            next = reader.feed(&[]);
        }
    }
    out
}

fn describe(e: &ProtocolError) -> String {
    format!("{e:?}")
}

fn size(message: &AggregatedMessage) -> usize {
    match message {
        AggregatedMessage::Text(t) => t.len(),
        AggregatedMessage::Binary(b) => b.len(),
        _ => 0,
    }
}

/// One client message: text or binary, sent in `pieces` fragments with a ping after the first.
#[derive(Debug, Clone)]
struct Sent {
    text: bool,
    data: Vec<u8>,
    pieces: usize,
    ping: bool,
}

fn sent() -> impl Strategy<Value = Sent> {
    let data = prop_oneof![
        ".{0,40}".prop_map(|s| (true, s.into_bytes())),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(|b| (false, b))
    ];
    (data, 1usize..5, any::<bool>()).prop_map(|((text, data), pieces, ping)| Sent { text, data, pieces, ping })
}

/// The masked frames a client writes for `messages`, and the messages the server must read.
fn client_bytes(messages: &[Sent]) -> (BytesMut, Vec<AggregatedMessage>) {
    let mut codec = Codec::new().client_mode().max_size(usize::MAX);
    let mut out = BytesMut::new();
    let mut expected = Vec::new();
    let mut encode = |m: Message, out: &mut BytesMut| codec.encode(m, out).expect("encode");
    for m in messages {
        let whole = Bytes::from(m.data.clone());
        let done = if m.text {
            AggregatedMessage::Text(whole.clone().try_into().expect("UTF-8"))
        } else {
            AggregatedMessage::Binary(whole.clone())
        };
        if m.pieces == 1 {
            encode(
                if m.text {
                    Message::Text(String::from_utf8(m.data.clone()).expect("UTF-8").into())
                } else {
                    Message::Binary(whole)
                },
                &mut out,
            );
            expected.push(done);
            continue;
        }
        // Fragment boundaries may split a UTF-8 character: only the whole message must be text.
        let step = m.data.len().div_ceil(m.pieces).max(1);
        let mut parts: Vec<Bytes> = m.data.chunks(step).map(Bytes::copy_from_slice).collect();
        while parts.len() < 2 {
            parts.push(Bytes::new());
        }
        let last = parts.len() - 1;
        for (i, part) in parts.into_iter().enumerate() {
            let item = match i {
                0 if m.text => Item::FirstText(part),
                0 => Item::FirstBinary(part),
                i if i == last => Item::Last(part),
                _ => Item::Continue(part),
            };
            encode(Message::Continuation(item), &mut out);
            if i == 0 && m.ping {
                encode(Message::Ping(Bytes::from_static(b"p")), &mut out);
                expected.push(AggregatedMessage::Ping(Bytes::from_static(b"p")));
            }
        }
        expected.push(done);
    }
    (out, expected)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes_in_any_read_sizes_decode_alike(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            // Masked headers with small lengths, so frames actually complete.
            prop::collection::vec((0u8..16, any::<bool>(), 0u8..130, prop::collection::vec(any::<u8>(), 0..40)), 0..6)
                .prop_map(|frames| frames.into_iter().flat_map(|(op, fin, len, rest)| {
                    let mut f = vec![op | if fin { 0x80 } else { 0 }, 0x80 | len.min(127)];
                    f.extend(rest);
                    f
                }).collect()),
        ],
        chunk in 1usize..40,
        max in prop::sample::select(vec![0usize, 1, 16, 125, 126, 65_536]),
    ) {
        let io = io();
        let pieces = read_all(&io, &bytes, chunk, max);
        let whole = read_all(&io, &bytes, bytes.len(), max);
        for message in pieces.iter().flatten() {
            prop_assert!(size(message) <= max, "{} bytes passed a {max}-byte limit", size(message));
        }
        prop_assert_eq!(pieces, whole);
    }

    #[test]
    fn client_messages_come_out_whole_and_in_order(messages in prop::collection::vec(sent(), 0..6), chunk in 1usize..64) {
        let io = io();
        let (bytes, expected) = client_bytes(&messages);
        let got = read_all(&io, &bytes, chunk, 65_536);
        prop_assert_eq!(got, expected.into_iter().map(Ok).collect::<Vec<_>>());
    }
}

/// Inputs the properties above once found: a frame whose first two bytes are refused by the
/// codec (an unknown opcode; reserved bits) but whose declared length is over the limit was an
/// `Overflow` when read whole and the codec's error when read byte by byte.
#[test]
fn header_errors_do_not_depend_on_read_sizes() {
    let io = io();
    for bytes in [&[11u8, 254, 1, 0][..], &[144, 127, 0, 0, 0, 0, 0, 1, 0, 1]] {
        let whole = read_all(&io, bytes, bytes.len(), 0);
        assert_eq!(read_all(&io, bytes, 1, 0), whole, "{bytes:?}");
        assert!(!whole.is_empty() && whole.iter().all(Result::is_err), "{whole:?}");
    }
}
