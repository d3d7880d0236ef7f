//! The edge: the connection limit, the first request head, and what clients' mistakes write
//! into the log.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Client, RECV_TIMEOUT, TestServer, spawn_binary, spawn_binary_with_fd_limit, test_config};

/// A response read to its end: the status, the head, and the body as JSON.
struct Response {
    status: u16,
    head: String,
    body: Value,
}

/// Writes `request` and reads the response until the server closes.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write request");
    read_response(&mut stream).await
}

async fn read_response(stream: &mut TcpStream) -> Response {
    let mut raw = Vec::new();
    tokio::time::timeout(RECV_TIMEOUT, stream.read_to_end(&mut raw))
        .await
        .expect("the response and the close come in time")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head in {text:?}"));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("status in {head}"));
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("body {body:?} is not JSON: {e}"));
    Response { status, head: head.to_ascii_lowercase(), body }
}

#[tokio::test]
async fn a_100_kb_url_gets_a_json_414() {
    let server = TestServer::start();
    let request = format!("GET /health?{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100 * 1024));
    let response = exchange(server.addr, request.as_bytes()).await;
    assert_eq!(response.status, 414, "{}", response.head);
    assert!(response.head.contains("content-type: application/json"), "{}", response.head);
    assert_eq!(response.body["error"], "uri_too_long");
    assert!(response.body["reason"].as_str().is_some_and(|r| r.contains("32768")), "{}", response.body);
}

#[tokio::test]
async fn headers_past_the_head_limit_get_a_json_431_and_a_head_just_under_passes() {
    let server = TestServer::start();
    let request = format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(40 * 1024));
    let response = exchange(server.addr, request.as_bytes()).await;
    assert_eq!(response.status, 431, "{}", response.head);
    assert_eq!(response.body["error"], "headers_too_large");

    let request =
        format!("GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n", "b".repeat(30 * 1024));
    let response = exchange(server.addr, request.as_bytes()).await;
    assert_eq!(response.status, 200, "a 30 KiB head is within the limit: {}", response.head);
}

#[tokio::test]
async fn a_head_that_stalls_gets_a_json_408_and_a_silent_connection_is_just_closed() {
    let mut config = test_config();
    config.http.head_timeout_ms = 300;
    let server = TestServer::start_with(config, |c| c);
    let response = exchange(server.addr, b"GET /health HTTP/1.1\r\nHost:").await;
    assert_eq!(response.status, 408, "{}", response.head);
    assert_eq!(response.body["error"], "request_timeout");

    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    let mut raw = Vec::new();
    tokio::time::timeout(RECV_TIMEOUT, silent.read_to_end(&mut raw)).await.expect("closed in time").expect("read");
    assert!(raw.is_empty(), "a connection that sent nothing gets no response: {raw:?}");
}

#[tokio::test]
async fn past_the_connection_limit_a_connect_gets_a_json_503_and_a_freed_place_is_taken_again() {
    let mut config = test_config();
    config.http.max_connections = 3;
    let server = TestServer::start_with(config, |c| c);
    // Upgraded sockets keep their places: three of them fill the server.
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(server.client().await);
    }
    let response = exchange(server.addr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(response.status, 503, "{}", response.head);
    assert!(response.head.contains("retry-after: 1"), "{}", response.head);
    assert_eq!(response.body["error"], "unavailable");
    match Client::try_connect(&server.url("vsn=2.0.0"), &[]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        Err(e) => panic!("refused without a 503: {e}"),
        Ok(_) => panic!("a fourth connection was admitted"),
    }

    sockets.pop().expect("a socket").close().await;
    let deadline = Instant::now() + RECV_TIMEOUT;
    loop {
        match Client::try_connect(&server.url("vsn=2.0.0"), &[]).await {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("the closed socket's place was not freed: {e}"),
        }
    }
}

/// The handshake of a WebSocket on `path`, by hand, so frames no client library sends can follow.
async fn raw_websocket(addr: &str, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("handshake");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(RECV_TIMEOUT, stream.read_u8()).await.expect("101 in time").expect("read");
        head.push(byte);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    stream
}

/// Reads until the server closes; returns the first frame's close code, if it is a close.
async fn close_code(stream: &mut TcpStream) -> Option<u16> {
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(RECV_TIMEOUT, stream.read_to_end(&mut raw)).await;
    (raw.first() == Some(&0x88) && raw.len() >= 4).then(|| u16::from_be_bytes([raw[2], raw[3]]))
}

#[tokio::test]
async fn client_mistakes_write_no_error_lines_and_are_logged_at_info() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut child, addr, logs) = spawn_binary(dir.path().join("courier.db"), &[("RUST_LOG", "info")]);
    let socket_addr: SocketAddr = addr.parse().expect("address");

    // A fragmented ping (a control frame without FIN).
    let mut ws = raw_websocket(&addr, "/socket/websocket?vsn=2.0.0").await;
    ws.write_all(&[0x09, 0x80 | 4, 1, 2, 3, 4, 0, 0, 0, 0]).await.expect("ping");
    assert_eq!(close_code(&mut ws).await, Some(1002));
    // A 100 KB URL.
    let request = format!("GET /?{} HTTP/1.1\r\nHost: x\r\n\r\n", "u".repeat(100 * 1024));
    assert_eq!(exchange(socket_addr, request.as_bytes()).await.status, 414);
    // A first request that is not HTTP, and a bad second request on a kept-alive connection:
    // both are actix-http's to answer.
    for request in
        [&b"NOT HTTP AT ALL\r\n\r\n"[..], b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /\x01 HTTP/1.1\r\n\r\n"]
    {
        let mut stream = TcpStream::connect(socket_addr).await.expect("connect");
        stream.write_all(request).await.expect("write");
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(RECV_TIMEOUT, stream.read_to_end(&mut raw)).await;
        assert!(String::from_utf8_lossy(&raw).contains(" 400 "), "{}", String::from_utf8_lossy(&raw));
    }
    // A malformed Phoenix frame, many times over.
    for _ in 0..100 {
        let mut client = Client::connect(&format!("ws://{addr}/socket/websocket?vsn=2.0.0")).await;
        client.send_text("[not json").await;
        assert_eq!(client.recv_close().await.0, 1011);
    }

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill runs");
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait()).await.expect("join").expect("binary exits");
    assert!(exit.success(), "exit status {exit}");
    let lines: Vec<String> = logs.try_iter().collect();
    let errors: Vec<&String> = lines.iter().filter(|l| l.contains(" ERROR ") || l.contains(" WARN ")).collect();
    assert!(errors.is_empty(), "client mistakes logged as errors or warnings: {errors:#?}");
    assert!(lines.iter().any(|l| l.contains(" INFO ") && l.contains("request refused at the edge")), "{lines:#?}");
    let malformed = lines.iter().filter(|l| l.contains("closing socket on malformed frame")).count();
    assert!((1..=100).contains(&malformed), "{malformed} malformed-frame lines");
}

#[tokio::test]
async fn at_the_descriptor_limit_connects_are_refused_at_once_and_logged_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 256 descriptors: the server keeps its reserve and admits the rest as connections, so
    // 300 sockets are more than it can hold, yet it never runs out of descriptors.
    let (mut child, addr, logs) = spawn_binary_with_fd_limit(256, dir.path().join("courier.db"), &[]);
    let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0");
    let mut open = Vec::new();
    let mut refused = 0;
    for attempt in 0..300 {
        match tokio::time::timeout(RECV_TIMEOUT, Client::try_connect(&url, &[])).await {
            Ok(Ok((client, _))) => open.push(client),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
                assert_eq!(response.status(), 503);
                refused += 1;
            }
            Ok(Err(e)) => panic!("connect {attempt} failed without an answer: {e}"),
            Err(_) => panic!("connect {attempt} hung (open {}, refused {refused})", open.len()),
        }
    }
    assert!(open.len() >= 64, "only {} sockets admitted under 256 descriptors", open.len());
    assert!(refused > 0, "every connect admitted");
    // The admitted sockets still work.
    for client in open.iter_mut().take(3) {
        client.join_ok("room:edge", "1").await;
    }
    drop(open);
    let deadline = Instant::now() + RECV_TIMEOUT;
    while Client::try_connect(&url, &[]).await.is_err() {
        assert!(Instant::now() < deadline, "places were not freed when the sockets left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    let lines: Vec<String> = logs.try_iter().collect();
    let errors: Vec<&String> = lines.iter().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // The socket limit sits below the connection limit (room is kept for plain HTTP), so
    // either may be the one that refuses; each logs once per interval.
    let limit_lines =
        lines.iter().filter(|l| l.contains("at the connection limit") || l.contains("at the socket limit")).count();
    assert!((1..=2).contains(&limit_lines), "{limit_lines} connection-limit lines: {lines:#?}");
}
