//! Connect: vsn negotiation, the authenticator, the authToken subprotocol, socket ids, admin.

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;

use crate::support::channels::TestAuth;
use crate::support::{Client, TestServer, http, test_config};

fn auth_server() -> TestServer {
    let mut config = test_config();
    config.admin.token = Some("admin-secret".into());
    TestServer::start_with(config, |c| c.authenticator(TestAuth))
}

async fn refused_status(url: &str, headers: &[(&str, &str)]) -> u16 {
    match Client::try_connect(url, headers).await {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected the connect to be refused"),
    }
}

#[tokio::test]
async fn unknown_vsn_is_refused_with_403() {
    let server = TestServer::start();
    assert_eq!(refused_status(&server.url("vsn=3.0.0"), &[]).await, 403);
    assert_eq!(refused_status(&server.url("vsn=garbage"), &[]).await, 403);
}

#[tokio::test]
async fn refused_connect_is_403_and_params_reach_the_authenticator() {
    let server = auth_server();
    assert_eq!(refused_status(&server.url("vsn=2.0.0&reject=1"), &[]).await, 403);
    let mut c = Client::connect(&server.url("vsn=2.0.0&user_id=alice")).await;
    c.join_ok("room:x", "1").await;
}

#[tokio::test]
async fn auth_token_subprotocol_is_decoded_and_phoenix_is_echoed() {
    let server = auth_server();
    // phoenix.js: btoa("s3cret") without padding.
    let offer = "phoenix, base64url.bearer.phx.czNjcmV0";
    let (mut c, response) = Client::try_connect(&server.url("vsn=2.0.0"), &[("Sec-WebSocket-Protocol", offer)])
        .await
        .expect("token accepted");
    assert_eq!(response.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap()), Some("phoenix"));
    c.join_ok("room:t", "1").await;

    let bad = "phoenix, base64url.bearer.phx.d3Jvbmc";
    assert_eq!(refused_status(&server.url("vsn=2.0.0"), &[("Sec-WebSocket-Protocol", bad)]).await, 403);
    assert_eq!(refused_status(&server.url("vsn=2.0.0"), &[("Sec-WebSocket-Protocol", "graphql-ws")]).await, 403);
}

#[tokio::test]
async fn admin_routes_need_the_token_and_bad_bodies_get_json_errors() {
    let server = auth_server();
    let (status, body) = http(server.addr, "GET", "/admin/api/stats", &[], "").await;
    assert_eq!(status, 401);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"], "unauthorized");

    let _c = server.client().await;
    let (status, body) =
        http(server.addr, "GET", "/admin/api/stats", &[("Authorization", "Bearer admin-secret")], "").await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["sockets"], 1);

    let headers = [("Authorization", "Bearer admin-secret"), ("Content-Type", "application/json")];
    let (status, body) = http(server.addr, "POST", "/admin/api/broadcast", &headers, "{nope").await;
    assert_eq!(status, 400);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"], "invalid_json");

    let (status, body) = http(server.addr, "GET", "/no/such/route", &[], "").await;
    assert_eq!(status, 404);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"], "not_found");
}

#[tokio::test]
async fn without_a_configured_token_admin_takes_only_the_generated_one_and_health_answers() {
    let server = TestServer::start();
    for token in ["Bearer x", "Bearer ", ""] {
        let (status, _) = http(server.addr, "GET", "/admin/api/stats", &[("Authorization", token)], "").await;
        assert_eq!(status, 401, "{token:?}");
    }
    let (status, body) = http(server.addr, "GET", "/health", &[], "").await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["status"], "ok");
}

#[tokio::test]
async fn a_plain_get_on_the_socket_path_is_a_400_with_a_reason() {
    let server = TestServer::start();
    let (status, body) = http(server.addr, "GET", "/socket/websocket?vsn=2.0.0", &[], "").await;
    assert_eq!(status, 400);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"], "bad_handshake");
}

#[tokio::test]
async fn the_static_index_is_served_at_the_root() {
    let mut config = test_config();
    config.static_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/priv/static").into();
    let server = TestServer::start_with(config, |c| c);
    let (status, body) = http(server.addr, "GET", "/", &[], "").await;
    assert_eq!(status, 200);
    assert!(body.contains("<h1>Courier</h1>"), "{body}");
    let (status, body) = http(server.addr, "GET", "/missing.html", &[], "").await;
    assert_eq!(status, 404);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"], "not_found");
}

/// An upgrade request as a browser sends it, with `extra` bytes right after the head in the
/// same write.
fn upgrade_request(method: &str, path: &str, extra: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .into_bytes();
    request.extend_from_slice(extra);
    request
}

/// A masked client text frame (payloads under 126 bytes).
fn masked_text(payload: &str) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let len = u8::try_from(payload.len()).ok().filter(|n| *n < 126).expect("a short payload");
    let mut frame = vec![0x81, 0x80 | len];
    frame.extend_from_slice(&mask);
    frame.extend(payload.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Writes `request` on a new connection and reads until the server closes it.
async fn until_closed(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write request");
    let mut response = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("the server closes the connection after answering")
        .expect("read");
    String::from_utf8_lossy(&response).into_owned()
}

fn json_body(response: &str) -> Value {
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("a JSON body ({e}): {response}"))
}

#[tokio::test]
async fn an_upgrade_anywhere_but_a_socket_endpoint_is_a_404_and_the_connection_closes() {
    let server = TestServer::start();
    for (method, path) in [("GET", "/no/such/socket"), ("POST", "/socket/websocket?vsn=2.0.0"), ("GET", "/health")] {
        let response = until_closed(server.addr, &upgrade_request(method, path, b"")).await;
        assert!(response.starts_with("HTTP/1.1 404"), "{method} {path}: {response}");
        assert_eq!(json_body(&response)["error"], "not_found", "{method} {path}");
    }
}

#[tokio::test]
async fn a_refused_upgrade_says_why_in_json_and_closes() {
    let server = TestServer::start();
    let response = until_closed(server.addr, &upgrade_request("GET", "/socket/websocket?vsn=3.0.0", b"")).await;
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    assert_eq!(json_body(&response)["error"], "unsupported_vsn");
    let old_version = String::from_utf8(upgrade_request("GET", "/socket/websocket?vsn=2.0.0", b""))
        .expect("ASCII")
        .replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    let response = until_closed(server.addr, old_version.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert_eq!(json_body(&response)["error"], "bad_handshake");
}

#[tokio::test]
async fn a_frame_written_together_with_the_handshake_is_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start();
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    let heartbeat = masked_text(r#"[null,"7","phoenix","heartbeat",{}]"#);
    stream.write_all(&upgrade_request("GET", "/socket/websocket?vsn=2.0.0", &heartbeat)).await.expect("write");

    // The 101 head, then one unmasked text frame with the heartbeat's reply.
    let mut received = Vec::new();
    let reply = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "the server closed before replying: {}", String::from_utf8_lossy(&received));
            received.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&received);
            let Some(head_end) = text.find("\r\n\r\n") else { continue };
            assert!(text.starts_with("HTTP/1.1 101"), "{text}");
            let frame = &received[head_end + 4..];
            if frame.len() >= 2 && frame.len() >= 2 + usize::from(frame[1] & 0x7f) {
                assert_eq!(frame[0], 0x81, "a final text frame");
                let len = usize::from(frame[1]);
                return serde_json::from_slice::<Value>(&frame[2..2 + len]).expect("a JSON frame");
            }
        }
    })
    .await
    .expect("a reply to the heartbeat sent with the handshake");
    assert_eq!(reply, json!([null, "7", "phoenix", "phx_reply", {"status": "ok", "response": {}}]));
}

/// The Origin matrix on a real upgrade: the server's own host, an allowed list with a wildcard,
/// a foreign page, none at all, and the check turned off; the signal and JSON endpoints too.
#[tokio::test]
async fn upgrades_follow_the_origin_policy() {
    async fn status(server: &TestServer, path: &str, origin: Option<&str>) -> u16 {
        let url = format!("ws://{}{path}", server.addr);
        let headers: Vec<(&str, &str)> = origin.map(|o| ("Origin", o)).into_iter().collect();
        match Client::try_connect(&url, &headers).await {
            Ok(_) => 101,
            Err(tungstenite::Error::Http(response)) => {
                let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default().into_owned();
                assert!(body.contains("origin_not_allowed"), "a refusal says why: {body}");
                response.status().as_u16()
            }
            Err(other) => panic!("{path} with {origin:?}: {other}"),
        }
    }
    let phoenix = "/socket/websocket?vsn=2.0.0";

    let same_host = TestServer::start();
    let own = format!("http://{}", same_host.addr);
    let own_host_other_port = format!("https://{}:1", same_host.addr.ip());
    for (origin, expected) in [
        (None, 101),
        (Some(own.as_str()), 101),
        (Some(own_host_other_port.as_str()), 101),
        (Some("http://evil.example"), 403),
        (Some("null"), 403),
    ] {
        assert_eq!(status(&same_host, phoenix, origin).await, expected, "{origin:?}");
    }
    for path in ["/signal/websocket", "/json/websocket"] {
        assert_eq!(status(&same_host, path, Some("http://evil.example")).await, 403, "{path}");
        assert_eq!(status(&same_host, path, None).await, 101, "{path}");
    }

    let mut config = test_config();
    config.socket.check_origin = toml::Value::Array(vec!["https://app.example.com".into(), "//*.example.org".into()])
        .try_into()
        .expect("a valid list");
    let listed = TestServer::start_with(config, |c| c);
    for (origin, expected) in [
        (Some("https://app.example.com"), 101),
        (Some("http://app.example.com"), 403),
        (Some("https://example.org"), 101),
        (Some("http://chat.eu.example.org:8080"), 101),
        (Some(own.as_str()), 403),
        (None, 101),
    ] {
        assert_eq!(status(&listed, phoenix, origin).await, expected, "{origin:?}");
    }

    let mut config = test_config();
    config.socket.check_origin = courier::transport::origin::OriginPolicy::Any;
    let open = TestServer::start_with(config, |c| c);
    assert_eq!(status(&open, phoenix, Some("http://evil.example")).await, 101);
}
