//! Opening connections and speaking Phoenix's V2 JSON frames over them. A connector may
//! name several nodes of one cluster: sockets go to them round-robin, by the order they open,
//! unless a scenario picks the node ([`Connector::connect_on`]).
//!
//! One source address has about 28,000 ephemeral ports, so loopback connections are spread over
//! `127.0.0.1`, `127.0.0.2`, ... (all of 127.0.0.0/8 is local on Linux).

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::LoadError;

/// A client WebSocket.
pub type Ws = WebSocketStream<TcpStream>;

/// How long a connect (TCP + upgrade) may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// phoenix.js's heartbeat interval; the server closes sockets that send nothing for 60 s.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(30);

/// Opens WebSocket connections to one server or several nodes, spreading them over loopback
/// source addresses.
pub struct Connector {
    /// Each node's URL and address, in the order given.
    nodes: Vec<(String, SocketAddr)>,
    per_source: usize,
    opened: AtomicUsize,
    in_progress: Semaphore,
}

impl Connector {
    /// A connector for `urls` (`ws://host:port/path` each), with at most `concurrency`
    /// handshakes at once.
    pub async fn new(urls: &[String], per_source: usize, concurrency: usize) -> Result<Self, LoadError> {
        let mut nodes = Vec::with_capacity(urls.len());
        for url in urls {
            nodes.push((url.clone(), resolve(url).await?));
        }
        if nodes.is_empty() {
            return Err(LoadError::Setup("no server URL".into()));
        }
        Ok(Connector {
            nodes,
            per_source: per_source.max(1),
            opened: AtomicUsize::new(0),
            in_progress: Semaphore::new(concurrency.max(1)),
        })
    }

    /// Connects with `query` appended to the URL (`vsn=2.0.0` is added), on the next node in
    /// turn.
    pub async fn connect(&self, query: &str) -> Result<Ws, LoadError> {
        self.connect_to(None, query).await
    }

    /// Connects on node `node` (modulo the node count), whatever the turn.
    pub async fn connect_on(&self, node: usize, query: &str) -> Result<Ws, LoadError> {
        self.connect_to(Some(node), query).await
    }

    async fn connect_to(&self, node: Option<usize>, query: &str) -> Result<Ws, LoadError> {
        let _permit = self.in_progress.acquire().await.map_err(|_| LoadError::Setup("connector closed".into()))?;
        let index = self.opened.fetch_add(1, Ordering::Relaxed);
        let (url, server) = &self.nodes[node.unwrap_or(index) % self.nodes.len()];
        tokio::time::timeout(CONNECT_TIMEOUT, self.open(url, *server, index, query))
            .await
            .map_err(|_| LoadError::Connect("timed out".into()))?
    }

    async fn open(&self, url: &str, server: SocketAddr, index: usize, query: &str) -> Result<Ws, LoadError> {
        let socket = TcpSocket::new_v4().map_err(|e| LoadError::Connect(e.to_string()))?;
        // The first block keeps the kernel's own choice of 127.0.0.1: a bind before connect must
        // pick a port without knowing the destination, which is slower and skips ports that only
        // other destinations use.
        if let IpAddr::V4(ip) = server.ip()
            && ip.is_loopback()
            && index >= self.per_source
        {
            socket
                .bind(SocketAddr::new(IpAddr::V4(source_address(index, self.per_source)), 0))
                .map_err(|e| LoadError::Connect(format!("bind: {e}")))?;
        }
        let stream = socket.connect(server).await.map_err(|e| LoadError::Connect(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let separator = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{separator}vsn=2.0.0{}{query}", if query.is_empty() { "" } else { "&" });
        let request = url.into_client_request().map_err(|e| LoadError::Setup(e.to_string()))?;
        let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(client_config()))
            .await
            .map_err(|e| LoadError::Connect(e.to_string()))?;
        Ok(ws)
    }
}

/// The address a `ws://host:port/path` URL names.
async fn resolve(url: &str) -> Result<SocketAddr, LoadError> {
    let authority = url
        .strip_prefix("ws://")
        .ok_or_else(|| LoadError::Setup(format!("{url}: only ws:// URLs are supported")))?
        .split(['/', '?'])
        .next()
        .unwrap_or_default();
    tokio::net::lookup_host(authority)
        .await
        .map_err(|e| LoadError::Setup(format!("{authority}: {e}")))?
        .next()
        .ok_or_else(|| LoadError::Setup(format!("{authority}: no address")))
}

/// Small read buffers: tens of thousands of idle clients must not cost gigabytes here either.
fn client_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(8 * 1024).max_message_size(Some(64 << 20))
}

/// `127.0.0.1` for the first `per_source` connections, then `127.0.0.2`, and so on.
fn source_address(index: usize, per_source: usize) -> Ipv4Addr {
    let n = (index / per_source) as u32 % ((1 << 24) - 2);
    Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 1)) + n)
}

/// A V2 text frame `[join_ref, ref, topic, event, payload]`.
pub fn frame(
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload: &impl Serialize,
) -> Message {
    let text = serde_json::to_string(&(join_ref, msg_ref, topic, event, payload))
        .expect("tuples of strings and serializable payloads always encode");
    Message::text(text)
}

/// The heartbeat phoenix.js sends.
pub fn heartbeat(msg_ref: u64) -> Message {
    frame(None, Some(&msg_ref.to_string()), "phoenix", "heartbeat", &serde_json::json!({}))
}

/// A V2 text frame from the server, borrowing from its text; the scenarios know which join and
/// topic a socket is on, so those two are skipped.
#[derive(Debug, Deserialize)]
pub struct Frame<'a>(
    pub IgnoredAny,
    #[serde(borrow)] pub Option<Cow<'a, str>>,
    pub IgnoredAny,
    #[serde(borrow)] pub Cow<'a, str>,
    #[serde(borrow)] pub &'a RawValue,
);

impl<'a> Frame<'a> {
    /// Parses a text frame.
    pub fn parse(text: &'a str) -> Result<Self, LoadError> {
        serde_json::from_str(text).map_err(|e| LoadError::Protocol(format!("bad frame: {e}")))
    }

    /// The frame's ref, when it has one.
    pub fn msg_ref(&self) -> Option<&str> {
        self.1.as_deref()
    }

    /// The event name.
    pub fn event(&self) -> &str {
        &self.3
    }

    /// A `phx_reply`'s status and response.
    pub fn reply(&self) -> Result<Reply<'a>, LoadError> {
        serde_json::from_str(self.4.get()).map_err(|e| LoadError::Protocol(format!("bad reply: {e}")))
    }
}

/// The payload of a `phx_reply`.
#[derive(Debug, Deserialize)]
pub struct Reply<'a> {
    /// `ok` or `error`.
    #[serde(borrow)]
    pub status: Cow<'a, str>,
    /// What the channel replied.
    #[serde(borrow)]
    pub response: &'a RawValue,
}

impl Reply<'_> {
    /// True for `status: "ok"`.
    pub fn is_ok(&self) -> bool {
        self.status == "ok"
    }

    /// The reason of an error reply, or the whole response.
    pub fn reason(&self) -> String {
        #[derive(Deserialize)]
        struct Reason {
            reason: String,
        }
        serde_json::from_str::<Reason>(self.response.get())
            .map(|r| r.reason)
            .unwrap_or_else(|_| self.response.get().to_owned())
    }
}

/// The text of what `ws.next()` gave: `None` for a frame to skip (ping, pong, binary), an
/// error once the connection is closed or broken.
pub fn text_of(
    next: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> Result<Option<Utf8Bytes>, LoadError> {
    match next {
        Some(Ok(Message::Text(text))) => Ok(Some(text)),
        Some(Ok(Message::Close(_))) | None => Err(LoadError::Closed),
        Some(Ok(_)) => Ok(None),
        Some(Err(e)) => Err(LoadError::Protocol(e.to_string())),
    }
}

/// Reads frames until the reply to `msg_ref`; other frames are passed to `other`.
pub async fn await_reply(
    ws: &mut Ws,
    msg_ref: &str,
    timeout: Duration,
    mut other: impl FnMut(&Frame<'_>),
) -> Result<Result<Box<RawValue>, String>, LoadError> {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| LoadError::Timeout(format!("no reply to ref {msg_ref}")))?;
        let Some(text) = text_of(next)? else { continue };
        let frame = Frame::parse(text.as_str())?;
        if frame.event() == "phx_reply" && frame.msg_ref() == Some(msg_ref) {
            let reply = frame.reply()?;
            return Ok(if reply.is_ok() { Ok(reply.response.to_owned()) } else { Err(reply.reason()) });
        }
        other(&frame);
    }
}

/// Joins `topic` with `payload` (join_ref = ref = `join_ref`); an error reply is [`LoadError::Refused`].
pub async fn join(
    ws: &mut Ws,
    topic: &str,
    join_ref: &str,
    payload: &impl Serialize,
) -> Result<Box<RawValue>, LoadError> {
    use futures_util::SinkExt;
    ws.send(frame(Some(join_ref), Some(join_ref), topic, "phx_join", payload))
        .await
        .map_err(|e| LoadError::Protocol(e.to_string()))?;
    await_reply(ws, join_ref, Duration::from_secs(30), |_| {})
        .await?
        .map_err(|reason| LoadError::Refused(format!("{topic}: {reason}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_roll_over_per_block() {
        assert_eq!(source_address(0, 100), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_address(99, 100), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_address(100, 100), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_address(300 * 100, 100), Ipv4Addr::new(127, 0, 1, 45));
    }

    #[test]
    fn frames_round_trip() {
        let Message::Text(text) = frame(Some("1"), Some("2"), "room:a", "ping", &serde_json::json!({"x": 1})) else {
            panic!("text frame expected");
        };
        assert_eq!(text.as_str(), r#"["1","2","room:a","ping",{"x":1}]"#);
        let reply = r#"["1","2","room:a","phx_reply",{"status":"error","response":{"reason":"nope"}}]"#;
        let parsed = Frame::parse(reply).expect("parses");
        assert_eq!((parsed.msg_ref(), parsed.event()), (Some("2"), "phx_reply"));
        let reply = parsed.reply().expect("reply");
        assert!(!reply.is_ok());
        assert_eq!(reply.reason(), "nope");
        assert!(Frame::parse("[1,2]").is_err());
    }
}
