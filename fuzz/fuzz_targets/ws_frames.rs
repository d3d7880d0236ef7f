//! RFC 6455 client frames as `transport::ws_io::WsReader` assembles them into messages: masking,
//! extended lengths, fragmentation, control frames, the size limit, UTF-8 of text.
//!
//! Input: byte 0 picks the read size the bytes arrive in, byte 1 the size limit, the rest is
//! what the client wrote. The same bytes fed all at once must give the same messages.
#![no_main]

use std::sync::{Arc, OnceLock};

use actix_ws::AggregatedMessage;
use bytes::BytesMut;
use courier::transport::ws_io::WsReader;
use libfuzzer_sys::fuzz_target;
use tokio::net::TcpStream;

/// Messages taken from one input, so one input cannot run for long.
const MAX_MESSAGES: usize = 1024;

struct World {
    _runtime: tokio::runtime::Runtime,
    /// The reader never touches its socket on this path; it only needs one to exist.
    stream: Arc<TcpStream>,
    _peer: std::net::TcpStream,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        server.set_nonblocking(true).expect("nonblocking");
        let stream = {
            let _guard = runtime.enter();
            TcpStream::from_std(server).expect("register")
        };
        World { _runtime: runtime, stream: Arc::new(stream), _peer: client }
    })
}

/// What one message or the error ending the stream looks like, for comparing two runs.
fn describe(item: &Result<AggregatedMessage, actix_ws::ProtocolError>) -> String {
    format!("{item:?}")
}

/// Runs the reader over `bytes` arriving `chunk` bytes at a time; returns what it yielded.
fn run(bytes: &[u8], chunk: usize, max: usize) -> Vec<String> {
    let mut reader = WsReader::new(Arc::clone(&world().stream), BytesMut::new(), max);
    let mut out = Vec::new();
    for piece in bytes.chunks(chunk) {
        let mut next = reader.feed(piece);
        loop {
            match next {
                Ok(None) => break,
                Ok(Some(message)) => {
                    let size = match &message {
                        AggregatedMessage::Text(t) => t.len(),
                        AggregatedMessage::Binary(b) => b.len(),
                        _ => 0,
                    };
                    assert!(size <= max, "a {size}-byte message passed a {max}-byte limit");
                    let close = matches!(message, AggregatedMessage::Close(_));
                    out.push(describe(&Ok(message)));
                    // The stream ends after a close, as after an error.
                    if close || out.len() >= MAX_MESSAGES {
                        return out;
                    }
                }
                Err(e) => {
                    out.push(describe(&Err(e)));
                    return out;
                }
            }
            next = reader.feed(&[]);
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let [chunk, limit, bytes @ ..] = data else { return };
    let chunk = usize::from(*chunk).max(1);
    let max = [0, 1, 16, 125, 126, 200, 65_535, 65_536][usize::from(*limit) % 8];
    let pieces = run(bytes, chunk, max);
    let whole = run(bytes, bytes.len().max(1), max);
    assert_eq!(pieces, whole, "read in {chunk}-byte pieces vs all at once");
});
