//! The edge: what every TCP connection passes before actix-http parses it.
//!
//! It owns two things actix-http does not do the way Courier answers errors:
//! - **the connection limit.** Open connections are counted against a limit set below the
//!   process's file-descriptor limit. Past it, a connect is accepted and refused at once with a
//!   JSON 503, instead of waiting in the backlog while `accept()` fails with `EMFILE` and the
//!   accept loop backs off and logs an error per attempt.
//! - **the first request head.** It is read here, so an over-long URL or header block gets a
//!   JSON 414 or 431 (actix-http answers those with an empty body and logs them as errors), and a
//!   head that does not arrive in time gets a JSON 408. The bytes read are handed on unchanged.
//!
//! Later requests on a kept-alive connection are actix-http's alone; their parse errors are
//! answered by it, without a body (see [`crate::logging`] for how they are logged).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::error::{Code, Error};
use actix_codec::{AsyncRead, AsyncWrite, ReadBuf};
use bytes::{Buf, BytesMut};
use tokio::net::TcpStream;

use crate::logging::{self, Throttle};

/// Refusals that may be lingering at once; past it a refused connection is dropped unanswered,
/// so a flood of refused connects cannot itself use up the descriptors the limit keeps free.
const MAX_LINGERING_REFUSALS: usize = 32;

/// How long a refusal waits for its response to be written and for the client to finish sending.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// How much of what a refused client still sends is read (and discarded) before giving up.
const REFUSAL_DRAIN_BYTES: usize = 256 * 1024;

/// Descriptors the process keeps for itself under its limit: the database pool (a SQLite
/// connection holds three: the file, its WAL and its shared memory), the listener, the event
/// loops of the workers, log files, and the refusals in flight.
fn reserved_descriptors(database_pool: u32, workers: usize) -> u64 {
    64 + 3 * u64::from(database_pool) + 4 * workers as u64 + MAX_LINGERING_REFUSALS as u64
}

/// Raises the soft file-descriptor limit to the hard one, as Go and the JVM do at start, and
/// returns the connection limit that leaves the process its reserve under it.
pub fn connection_limit_from_fd_limit(database_pool: u32, workers: usize) -> usize {
    let soft = rlimit::increase_nofile_limit(u64::MAX).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "could not read or raise the file-descriptor limit");
        rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
    });
    let limit = soft.saturating_sub(reserved_descriptors(database_pool, workers)).max(1);
    usize::try_from(limit).unwrap_or(usize::MAX)
}

/// The edge's settings.
#[derive(Debug, Clone, Copy)]
pub struct EdgeLimits {
    /// Connections open at once (HTTP and WebSocket); past it, new ones get a 503.
    pub max_connections: usize,
    /// Longest first request head (request line and headers) read, in bytes.
    pub max_head_bytes: usize,
    /// How long a new connection may take to send its first request head.
    pub head_timeout: Duration,
}

/// The connection counter and admission rules, shared by every worker.
#[derive(Debug)]
pub struct Edge {
    limits: EdgeLimits,
    open: Arc<AtomicUsize>,
    lingering: AtomicUsize,
    at_limit: Throttle,
}

/// One counted connection; dropping it frees its place under the limit.
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection the edge let through: the stream, the bytes of its first request head (served to
/// actix-http before anything else is read), and its place under the limit.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    head: BytesMut,
    slot: Slot,
}

impl Conn {
    /// The raw stream, whatever of the head actix-http did not read, and the connection's slot:
    /// an upgraded socket keeps the slot for as long as it lives.
    pub fn into_parts(self) -> (TcpStream, BytesMut, Slot) {
        (self.stream, self.head, self.slot)
    }

    /// The stream, for its addresses.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.head.is_empty() {
            let n = self.head.len().min(buf.remaining());
            buf.put_slice(&self.head[..n]);
            self.head.advance(n);
            if self.head.is_empty() {
                self.head = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Why the edge answered a connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    AtLimit,
    UriTooLong,
    HeadTooLarge,
    HeadTimeout,
}

impl Refusal {
    fn code(self) -> Code {
        match self {
            Refusal::AtLimit => Code::Unavailable,
            Refusal::UriTooLong => Code::UriTooLong,
            Refusal::HeadTooLarge => Code::HeadersTooLarge,
            Refusal::HeadTimeout => Code::RequestTimeout,
        }
    }

    fn reason(self, limits: &EdgeLimits) -> String {
        match self {
            Refusal::AtLimit => "the server is at its connection limit; retry later".into(),
            Refusal::UriTooLong => format!("the request line exceeds {} bytes", limits.max_head_bytes),
            Refusal::HeadTooLarge => format!("the request head exceeds {} bytes", limits.max_head_bytes),
            Refusal::HeadTimeout => {
                format!("the request head did not arrive within {} ms", limits.head_timeout.as_millis())
            }
        }
    }

    /// The whole HTTP response: a JSON error body, and the connection closes after it.
    fn response(self, limits: &EdgeLimits) -> Vec<u8> {
        let code = self.code();
        let body = Error::new(code, self.reason(limits)).body().to_string();
        let retry = if self == Refusal::AtLimit { "retry-after: 1\r\n" } else { "" };
        let status = code.status();
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{retry}connection: close\r\n\r\n{body}",
            status.as_str(),
            status.canonical_reason().unwrap_or("Error"),
            body.len()
        )
        .into_bytes()
    }
}

/// What reading the first head came to.
enum Head {
    Complete(BytesMut),
    Refused(Refusal),
    /// The client closed, or its connection failed, before sending a whole head.
    Gone,
}

impl Edge {
    /// An edge with `limits`.
    pub fn new(limits: EdgeLimits) -> Edge {
        Edge {
            limits,
            open: Arc::new(AtomicUsize::new(0)),
            lingering: AtomicUsize::new(0),
            at_limit: Throttle::every(Duration::from_secs(10)),
        }
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Admits `stream` under the limit once its first request head is in, or answers and closes
    /// it itself; `None` when it was answered here.
    pub async fn admit(&self, stream: TcpStream) -> Option<Conn> {
        let Some(slot) = self.take_slot() else {
            if let Some(suppressed) = self.at_limit.admit() {
                tracing::warn!(
                    limit = self.limits.max_connections,
                    refused_since_last_report = suppressed + 1,
                    "at the connection limit: refusing new connections with 503"
                );
            }
            self.refuse(stream, Refusal::AtLimit).await;
            return None;
        };
        let mut buf = BytesMut::new();
        let read = read_head(&stream, &mut buf, self.limits.max_head_bytes);
        let head = match tokio::time::timeout(self.limits.head_timeout, read).await {
            Ok(head) => head,
            // A connection that never sent a byte is likely a browser's preconnect: it closes
            // silently, as actix-http would, so a request racing the close is retried, not failed.
            Err(_) if buf.is_empty() => Head::Gone,
            Err(_) => Head::Refused(Refusal::HeadTimeout),
        };
        match head {
            Head::Complete(head) => Some(Conn { stream, head, slot }),
            Head::Refused(refusal) => {
                if let Some(suppressed) = logging::client_mistake() {
                    tracing::info!(peer = ?stream.peer_addr().ok(), code = refusal.code().as_str(), suppressed, "request refused at the edge");
                }
                drop(slot);
                self.refuse(stream, refusal).await;
                None
            }
            Head::Gone => None,
        }
    }

    fn take_slot(&self) -> Option<Slot> {
        let max = self.limits.max_connections;
        self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| (open < max).then_some(open + 1)).ok()?;
        Some(Slot(Arc::clone(&self.open)))
    }

    /// Writes the refusal, half-closes, and reads what the client still sends for a moment, so
    /// the response is read rather than lost to a reset. Bounded in count, time and bytes.
    async fn refuse(&self, stream: TcpStream, refusal: Refusal) {
        if self.lingering.fetch_add(1, Ordering::AcqRel) >= MAX_LINGERING_REFUSALS {
            self.lingering.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let response = refusal.response(&self.limits);
        let _ = tokio::time::timeout(REFUSAL_LINGER, answer_and_drain(&stream, &response)).await;
        self.lingering.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn answer_and_drain(stream: &TcpStream, response: &[u8]) -> io::Result<()> {
    let mut written = 0;
    while written < response.len() {
        stream.writable().await?;
        match stream.try_write(&response[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write)?;
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < REFUSAL_DRAIN_BYTES {
        stream.readable().await?;
        match stream.try_read(&mut sink) {
            Ok(0) => break,
            Ok(n) => drained += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads until the first request head is complete (its blank line is in), or it passes
/// `max_bytes`.
async fn read_head(stream: &TcpStream, buf: &mut BytesMut, max_bytes: usize) -> Head {
    loop {
        if stream.readable().await.is_err() {
            return Head::Gone;
        }
        buf.reserve(4096);
        match stream.try_read_buf(buf) {
            Ok(0) => return Head::Gone,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return Head::Gone,
        }
        if let Some(verdict) = judge_head(buf, max_bytes) {
            return match verdict {
                Ok(()) => Head::Complete(std::mem::take(buf)),
                Err(refusal) => Head::Refused(refusal),
            };
        }
    }
}

/// `Some(Ok)` once `buf` holds a whole head within `max_bytes`, `Some(Err)` once it cannot,
/// `None` while more is needed. Leading blank lines are allowed before a request (RFC 9112 §2.2).
fn judge_head(buf: &[u8], max_bytes: usize) -> Option<Result<(), Refusal>> {
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(buf.len());
    let request = &buf[start..];
    let window = &request[..request.len().min(max_bytes)];
    if find(window, b"\r\n\r\n").is_some() || find(window, b"\n\n").is_some() {
        return Some(Ok(()));
    }
    if request.len() <= max_bytes {
        return None;
    }
    Some(Err(if window.contains(&b'\n') { Refusal::HeadTooLarge } else { Refusal::UriTooLong }))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_head_passes_and_a_partial_one_waits() {
        assert_eq!(judge_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 64), Some(Ok(())));
        assert_eq!(judge_head(b"\r\nGET / HTTP/1.1\r\n\r\nbody", 64), Some(Ok(())));
        assert_eq!(judge_head(b"GET / HTTP/1.1\r\nHost: a\r\n", 64), None);
        assert_eq!(judge_head(b"", 64), None);
    }

    #[test]
    fn a_long_request_line_is_414_and_long_headers_are_431() {
        let long_line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(100));
        assert_eq!(judge_head(long_line.as_bytes(), 64), Some(Err(Refusal::UriTooLong)));
        let long_headers = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(100));
        assert_eq!(judge_head(long_headers.as_bytes(), 64), Some(Err(Refusal::HeadTooLarge)));
    }

    #[test]
    fn a_head_that_ends_exactly_at_the_limit_passes() {
        let head = b"GET / HTTP/1.1\r\n\r\n";
        assert_eq!(judge_head(head, head.len()), Some(Ok(())));
        assert_eq!(judge_head(head, head.len() - 1), Some(Err(Refusal::HeadTooLarge)));
    }

    #[test]
    fn refusals_are_json_and_close_the_connection() {
        let limits = EdgeLimits { max_connections: 1, max_head_bytes: 64, head_timeout: Duration::from_secs(1) };
        let response = String::from_utf8(Refusal::AtLimit.response(&limits)).expect("utf-8");
        let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(head.contains("connection: close") && head.contains("retry-after: 1"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let body: serde_json::Value = serde_json::from_str(body).expect("json body");
        assert_eq!(body["error"], "unavailable");
    }

    #[test]
    fn the_reserve_grows_with_the_pool_and_the_workers() {
        assert!(reserved_descriptors(8, 2) < reserved_descriptors(32, 2));
        assert!(reserved_descriptors(8, 2) < reserved_descriptors(8, 16));
    }

    #[tokio::test]
    async fn slots_are_counted_and_freed() {
        let edge =
            Edge::new(EdgeLimits { max_connections: 2, max_head_bytes: 64, head_timeout: Duration::from_secs(1) });
        let a = edge.take_slot().expect("first");
        let b = edge.take_slot().expect("second");
        assert!(edge.take_slot().is_none(), "a third is past the limit");
        assert_eq!(edge.open_connections(), 2);
        drop(a);
        assert!(edge.take_slot().is_some(), "a freed slot is taken again");
        drop(b);
    }
}
