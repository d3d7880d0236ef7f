//! Test support: a real Courier server on an ephemeral port (in its own actix system thread),
//! a WebSocket client speaking raw Phoenix frames, and a minimal HTTP client.

#![allow(dead_code)]

pub mod channels;
#[path = "../../common/test_db.rs"]
pub mod db;
pub mod devices;
pub mod signal;

pub use db::TestDb;

use std::net::SocketAddr;
use std::time::Duration;

use courier::{Config, Courier};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for a frame that should arrive.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// A Courier server running on its own thread.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The database URL the server uses (to restart on the same data).
    pub database_url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _db: Option<std::sync::Arc<db::TestDb>>,
}

/// A config for tests: ephemeral port, one worker, one registry shard, cheap password hashing.
pub fn test_config() -> Config {
    let mut config = Config { bind: "127.0.0.1:0".into(), workers: 1, ..Config::default() };
    config.pubsub.shards = 1;
    config.socket.shutdown_grace_ms = 3_000;
    config.accounts.argon2_memory_kib = 64;
    config.accounts.argon2_iterations = 1;
    config
}

impl TestServer {
    /// Starts a server with the default test config.
    pub fn start() -> Self {
        Self::start_with(test_config(), |c| c)
    }

    /// Starts a server with `config` on a fresh SQLite file, letting `build` plug in
    /// authenticators or channels.
    pub fn start_with(config: Config, build: impl FnOnce(Courier) -> Courier + Send + 'static) -> Self {
        Self::start_on(std::sync::Arc::new(db::TestDb::sqlite()), config, build)
    }

    /// Starts a server with `config` on `db`.
    pub fn start_on(
        db: std::sync::Arc<db::TestDb>,
        mut config: Config,
        build: impl FnOnce(Courier) -> Courier + Send + 'static,
    ) -> Self {
        config.database_url = db.url.clone();
        let database_url = config.database_url.clone();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = build(Courier::new(config)).start().await.expect("server starts");
                addr_tx.send(server.local_addr()).expect("test still waiting");
                let _ = stop_rx.await;
                server.shutdown().await.expect("clean shutdown");
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(30)).expect("server reports its address");
        TestServer { addr, database_url, stop: Some(stop_tx), thread: Some(thread), _db: Some(db) }
    }

    /// The WebSocket URL with this query string.
    pub fn url(&self, query: &str) -> String {
        format!("ws://{}/socket/websocket?{query}", self.addr)
    }

    /// Connects a V2 client.
    pub async fn client(&self) -> Client {
        Client::connect(&self.url("vsn=2.0.0")).await
    }

    /// Shuts down gracefully (as on SIGTERM) without waiting for it to finish.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts down gracefully and waits for the server thread to end.
    pub async fn shutdown(mut self) {
        self.begin_shutdown();
        if let Some(thread) = self.thread.take() {
            tokio::task::spawn_blocking(move || thread.join().expect("server thread ends cleanly"))
                .await
                .expect("join task");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.begin_shutdown();
        // Not joined: a test that already failed should not also hang here.
    }
}

/// What a client read.
#[derive(Debug, PartialEq)]
pub enum Frame {
    /// A JSON text frame.
    Json(Value),
    /// A binary frame.
    Binary(Vec<u8>),
    /// A close frame: code and reason.
    Close(u16, String),
}

/// A WebSocket client speaking raw frames.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Whether `presence_state`/`presence_diff` frames are returned; most tests are about
    /// something else and skip them.
    presence: bool,
}

/// Whether a JSON frame (V2 array or V1 object) carries a presence event.
fn is_presence_frame(frame: &Value) -> bool {
    let event = frame.get(3).or_else(|| frame.get("event")).and_then(Value::as_str);
    matches!(event, Some("presence_state" | "presence_diff"))
}

fn client_config() -> WebSocketConfig {
    WebSocketConfig::default().max_frame_size(Some(64 << 20)).max_message_size(Some(64 << 20))
}

impl Client {
    /// Connects or panics.
    pub async fn connect(url: &str) -> Client {
        Self::try_connect(url, &[]).await.unwrap_or_else(|e| panic!("connect {url}: {e}")).0
    }

    /// Connects with extra headers, returning the handshake response.
    pub async fn try_connect(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<(Client, tungstenite::handshake::client::Response), tungstenite::Error> {
        let mut request = url.into_client_request()?;
        for (name, value) in headers {
            let name = tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("header name");
            request.headers_mut().insert(name, HeaderValue::from_str(value).expect("header value"));
        }
        let (ws, response) =
            tokio_tungstenite::connect_async_with_config(request, Some(client_config()), false).await?;
        Ok((Client { ws, presence: false }, response))
    }

    /// Returns presence frames too from now on.
    pub fn see_presence(mut self) -> Self {
        self.presence = true;
        self
    }

    /// Sends a JSON value as a text frame.
    pub async fn send(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    /// Sends a JSON value; `false` when the server has already closed the connection.
    pub async fn try_send(&mut self, frame: Value) -> bool {
        self.ws.send(Message::text(frame.to_string())).await.is_ok()
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send text");
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, data: Vec<u8>) {
        self.ws.send(Message::binary(data)).await.expect("send binary");
    }

    /// Sends a text frame whose bytes are not valid UTF-8 (a broken client).
    pub async fn send_invalid_text(&mut self, data: Vec<u8>) {
        use tokio_tungstenite::tungstenite::protocol::frame::{
            Frame as RawFrame,
            coding::{Data, OpCode},
        };
        let frame = RawFrame::message(data, OpCode::Data(Data::Text), true);
        self.ws.send(Message::Frame(frame)).await.expect("send raw frame");
    }

    /// Sends `frames` and a close frame in one write, then drops the connection without
    /// waiting for the server's close, as a closing browser tab does.
    pub async fn send_and_vanish(mut self, frames: &[Value]) {
        for frame in frames {
            self.ws.feed(Message::text(frame.to_string())).await.expect("queue frame");
        }
        self.ws.feed(Message::Close(None)).await.expect("queue close");
        self.ws.flush().await.expect("one write");
    }

    /// Sends a client close frame.
    pub async fn close(&mut self) {
        let _ = self.ws.close(None).await;
    }

    /// The next data or close frame; panics after [`RECV_TIMEOUT`].
    pub async fn recv(&mut self) -> Frame {
        self.recv_within(RECV_TIMEOUT).await.unwrap_or_else(|| panic!("no frame within {RECV_TIMEOUT:?}"))
    }

    /// The next data or close frame, or `None` if nothing arrives in time.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()?;
            match next {
                Some(Ok(Message::Text(t))) => {
                    let frame: Value = serde_json::from_str(t.as_str()).expect("server sends JSON");
                    if !self.presence && is_presence_frame(&frame) {
                        continue;
                    }
                    return Some(Frame::Json(frame));
                }
                Some(Ok(Message::Binary(b))) => return Some(Frame::Binary(b.to_vec())),
                Some(Ok(Message::Close(c))) => {
                    return Some(c.map_or(Frame::Close(1005, String::new()), |c| {
                        Frame::Close(c.code.into(), c.reason.to_string())
                    }));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Some(Frame::Close(1006, e.to_string())),
                None => return Some(Frame::Close(1006, "stream ended".into())),
            }
        }
    }

    /// The next frame, which must be JSON.
    pub async fn recv_json(&mut self) -> Value {
        match self.recv().await {
            Frame::Json(v) => v,
            other => panic!("expected JSON, got {other:?}"),
        }
    }

    /// The next frame, which must be a close; returns its code and reason.
    pub async fn recv_close(&mut self) -> (u16, String) {
        match self.recv().await {
            Frame::Close(code, reason) => (code, reason),
            other => panic!("expected close, got {other:?}"),
        }
    }

    /// Skips data frames until a close arrives (within `wait`), returning it and the count skipped.
    pub async fn drain_until_close(&mut self, wait: Duration) -> Option<((u16, String), usize)> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut skipped = 0;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await? {
                Frame::Close(code, reason) => return Some(((code, reason), skipped)),
                _ => skipped += 1,
            }
        }
    }

    /// The close that ends this socket (skipping the frames before it), within a few seconds.
    pub async fn closed(&mut self) -> (u16, String) {
        self.drain_until_close(Duration::from_secs(5)).await.expect("the socket is closed").0
    }

    /// Asserts that nothing arrives for `ms` milliseconds.
    pub async fn expect_silence(&mut self, ms: u64) {
        if let Some(frame) = self.recv_within(Duration::from_millis(ms)).await {
            panic!("expected silence, got {frame:?}");
        }
    }

    /// Joins `topic` with join_ref = ref = `join_ref` and returns the reply.
    pub async fn join(&mut self, topic: &str, join_ref: &str) -> Value {
        self.send(serde_json::json!([join_ref, join_ref, topic, "phx_join", {}])).await;
        self.recv_json().await
    }

    /// Joins and asserts the reply is ok.
    pub async fn join_ok(&mut self, topic: &str, join_ref: &str) {
        let reply = self.join(topic, join_ref).await;
        assert_eq!(reply, ok_reply(Some(join_ref), join_ref, topic, serde_json::json!({})), "join {topic}");
    }
}

/// The V2 reply frame Phoenix sends.
pub fn reply(join_ref: Option<&str>, msg_ref: &str, topic: &str, status: &str, response: Value) -> Value {
    serde_json::json!([join_ref, msg_ref, topic, "phx_reply", {"response": response, "status": status}])
}

/// An ok reply.
pub fn ok_reply(join_ref: Option<&str>, msg_ref: &str, topic: &str, response: Value) -> Value {
    reply(join_ref, msg_ref, topic, "ok", response)
}

/// An error reply with `{"reason": reason, "code": code}`.
pub fn error_reply(join_ref: Option<&str>, msg_ref: &str, topic: &str, reason: &str, code: &str) -> Value {
    reply(join_ref, msg_ref, topic, "error", serde_json::json!({ "reason": reason, "code": code }))
}

/// Sends one HTTP/1.1 request and returns the status and body.
pub async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    http_bytes(addr, method, path, headers, body.as_bytes()).await
}

/// Like [`http`], with a body that need not be UTF-8.
pub async fn http_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut request = request.into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request).await.expect("write request");
    let mut response = Vec::new();
    tokio::time::timeout(RECV_TIMEOUT, stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, dechunk(&body))
}

/// Joins a chunked body, if it is one.
fn dechunk(body: &str) -> String {
    if serde_json::from_str::<Value>(body).is_ok() {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    if out.is_empty() { body.to_string() } else { out }
}

/// Starts the real binary on an ephemeral port and returns it with its address.
pub fn spawn_binary(
    database: impl AsRef<std::ffi::OsStr>,
    extra_env: &[(&str, &str)],
) -> (std::process::Child, String, std::sync::mpsc::Receiver<String>) {
    spawn_command(std::process::Command::new(env!("CARGO_BIN_EXE_courier")), database, extra_env)
}

/// Like [`spawn_binary`], with the file-descriptor limit (soft and hard) set to `nofile`
/// (util-linux's `prlimit`, which execs the binary in its own process).
pub fn spawn_binary_with_fd_limit(
    nofile: u64,
    database: impl AsRef<std::ffi::OsStr>,
    extra_env: &[(&str, &str)],
) -> (std::process::Child, String, std::sync::mpsc::Receiver<String>) {
    let mut cmd = std::process::Command::new("prlimit");
    cmd.arg(format!("--nofile={nofile}:{nofile}")).arg("--").arg(env!("CARGO_BIN_EXE_courier"));
    spawn_command(cmd, database, extra_env)
}

fn spawn_command(
    mut cmd: std::process::Command,
    database: impl AsRef<std::ffi::OsStr>,
    extra_env: &[(&str, &str)],
) -> (std::process::Child, String, std::sync::mpsc::Receiver<String>) {
    cmd.args(["--bind", "127.0.0.1:0", "--database-url"])
        .arg(database)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .env("NO_COLOR", "1");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("binary starts");
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    // One reader keeps every line, those before "listening on" included, and spots the address.
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            if let Some((_, rest)) = line.split_once("listening on ") {
                let _ = addr_tx.send(rest.split_whitespace().next().unwrap_or_default().to_string());
            }
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(30)).expect("binary logs its address");
    (child, addr, rx)
}

/// Builds a V2 binary push frame as phoenix.js does.
pub fn binary_push(join_ref: &str, msg_ref: &str, topic: &str, event: &str, body: &[u8]) -> Vec<u8> {
    let mut v = vec![0, join_ref.len() as u8, msg_ref.len() as u8, topic.len() as u8, event.len() as u8];
    for s in [join_ref, msg_ref, topic, event] {
        v.extend_from_slice(s.as_bytes());
    }
    v.extend_from_slice(body);
    v
}
