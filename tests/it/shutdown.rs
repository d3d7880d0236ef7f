//! Graceful shutdown: in-process (in-flight work, the batched drain) and for the real binary
//! on SIGTERM.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use courier::accounts::{Accounts, AccountsConfig};
use courier::clock::ManualClock;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::channels::CrashChannels;
use crate::support::devices::{Device, signup};
use crate::support::{Client, RECV_TIMEOUT, TestDb, TestServer, http, ok_reply, spawn_binary, test_config};

#[tokio::test]
async fn shutdown_finishes_in_flight_replies_then_closes_with_1001() {
    let mut server = TestServer::start_with(test_config(), |c| c.channel("crash:*", CrashChannels));
    let mut c = server.client().await;
    let mut idle = server.client().await;
    c.send(json!(["1", "1", "crash:sd", "phx_join", {}])).await;
    c.recv_json().await;
    c.recv_json().await;
    c.send(json!(["1", "2", "crash:sd", "slow", {"kept": true}])).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.begin_shutdown();
    assert_eq!(c.recv_json().await, ok_reply(Some("1"), "2", "crash:sd", json!({"kept": true})));
    assert_eq!(c.recv_close().await, (1001, "server shutting down".into()));
    assert_eq!(idle.recv_close().await, (1001, "server shutting down".into()));
    server.shutdown().await;
}

/// Seven sockets, batches of three 300 ms apart: they close oldest first, three, three, then
/// one, each batch after the one before, and shutdown ends well within its grace. Timings are
/// checked only from below (a batch is never released early), the machine may be slow.
#[tokio::test]
async fn shutdown_closes_sockets_in_batches_oldest_first() {
    const SOCKETS: usize = 7;
    let mut config = test_config();
    config.socket.shutdown_drain_batch = 3;
    config.socket.shutdown_drain_interval_ms = 300;
    config.socket.shutdown_grace_ms = 8_000;
    let grace = Duration::from_millis(config.socket.shutdown_grace_ms);
    let mut server = TestServer::start_with(config, |c| c);
    let (closes, mut closed) = tokio::sync::mpsc::unbounded_channel();
    for n in 0..SOCKETS {
        // Connected one after another: connection order is admission order.
        let mut client = server.client().await;
        client.join_ok("room:drain", "1").await;
        let closes = closes.clone();
        tokio::spawn(async move {
            let close = client.recv_close().await;
            let _ = closes.send((n, tokio::time::Instant::now(), close));
        });
    }
    drop(closes);
    let started = tokio::time::Instant::now();
    server.begin_shutdown();
    let mut order = Vec::new();
    while let Some((n, at, close)) = closed.recv().await {
        assert_eq!(close, (1001, "server shutting down".into()), "socket {n}");
        order.push((at, n));
    }
    assert_eq!(order.len(), SOCKETS, "every socket was closed");
    order.sort();
    let batches: Vec<Vec<usize>> = order
        .chunks(3)
        .map(|batch| {
            let mut members: Vec<usize> = batch.iter().map(|(_, n)| *n).collect();
            members.sort_unstable();
            members
        })
        .collect();
    assert_eq!(batches, vec![vec![0, 1, 2], vec![3, 4, 5], vec![6]], "closes by time: {order:?}");
    // The second batch is released an interval after the first, the third two.
    let first_close_of = |batch: usize| order[batch * 3].0 - started;
    assert!(first_close_of(1) >= Duration::from_millis(300), "{:?}", first_close_of(1));
    assert!(first_close_of(2) >= Duration::from_millis(600), "{:?}", first_close_of(2));
    server.shutdown().await;
    assert!(started.elapsed() < grace, "shutdown waited out its grace: {:?}", started.elapsed());
}

/// New listeners are paused at shutdown, but a kept-alive HTTP connection can still ask for an
/// upgrade while sockets drain: it is refused with a JSON 503.
#[tokio::test]
async fn a_connect_during_the_drain_gets_a_json_503() {
    let mut server = TestServer::start_with(test_config(), |c| c.channel("crash:*", CrashChannels));
    let mut http = TcpStream::connect(server.addr).await.expect("connect");
    http.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("request");
    let mut head = Vec::new();
    while !head.ends_with(b"}") {
        let byte = tokio::time::timeout(RECV_TIMEOUT, http.read_u8()).await.expect("answer in time").expect("read");
        head.push(byte);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    // A pending reply holds the drain open; the idle socket's close says the drain has begun.
    let mut busy = server.client().await;
    let mut idle = server.client().await;
    busy.send(json!(["1", "1", "crash:drain", "phx_join", {}])).await;
    assert_eq!(busy.recv_json().await[4]["status"], "ok");
    busy.recv_json().await;
    busy.send(json!(["1", "2", "crash:drain", "slow", {}])).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.begin_shutdown();
    assert_eq!(idle.recv_close().await, (1001, "server shutting down".into()));

    let upgrade = "GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
                   Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                   Sec-WebSocket-Version: 13\r\n\r\n";
    http.write_all(upgrade.as_bytes()).await.expect("upgrade request");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(RECV_TIMEOUT, http.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"error\":\"unavailable\"") && answer.contains("shutting down"), "{answer}");
    assert_eq!(busy.recv_json().await, ok_reply(Some("1"), "2", "crash:drain", json!({})));
    assert_eq!(busy.recv_close().await.0, 1001);
    server.shutdown().await;
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_exits_cleanly_and_never_logs_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, logs) = spawn_binary(dir.path().join("courier.db"), &[("RUST_LOG", "debug")]);
    let addr_parsed = addr.parse().unwrap();
    let body = json!({"username": "ivy", "password": "a long enough password"}).to_string();
    let (status, body) = http(addr_parsed, "POST", "/api/signup", &[("Content-Type", "application/json")], &body).await;
    assert_eq!(status, 201, "{body}");
    let token = serde_json::from_str::<serde_json::Value>(&body).unwrap()["session"].as_str().unwrap().to_owned();

    // Once in the query string (what most clients do) ...
    let url = format!("ws://{addr}/socket/websocket?token={token}&vsn=2.0.0");
    let mut by_query = Client::connect(&url).await;
    by_query.join_ok("room:bin", "1").await;
    // ... and once as phoenix.js's authToken subprotocol.
    let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD_NO_PAD, &token);
    let offer = format!("phoenix, base64url.bearer.phx.{encoded}");
    let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0");
    let (mut c, _) = Client::try_connect(&url, &[("Sec-WebSocket-Protocol", &offer)]).await.expect("connects");
    assert_eq!(c.join("user:ivy", "1").await[4]["status"], "ok");

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill runs");
    assert!(status.success());
    assert_eq!(c.recv_close().await, (1001, "server shutting down".into()));
    let exit = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().expect("binary exits");
    assert!(exit.success(), "exit status {exit}");

    let all: Vec<String> = logs.try_iter().collect();
    let text = all.join("\n");
    assert!(text.contains("socket connected"), "{text}");
    assert!(text.contains("joined"), "{text}");
    assert!(text.contains("server stopped"), "{text}");
    assert!(text.contains("user=\"ivy\"") || text.contains("user=ivy"), "{text}");
    assert!(!text.contains(&token), "the session token leaked into the logs");
    assert!(!text.contains(&encoded), "the encoded auth token leaked into the logs");
    assert_eq!(by_query.recv_close().await.0, 1001);
}

#[tokio::test]
async fn the_binary_reads_a_config_file_and_refuses_unknown_keys_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("courier.toml");
    std::fs::write(&config, "node = \"courier@test\"\n[admin]\ntoken = \"from-file\"\n").unwrap();
    let config_arg = config.to_string_lossy().into_owned();
    let (mut child, addr, _logs) =
        spawn_binary(dir.path().join("courier.db"), &[("COURIER_CONFIG", config_arg.as_str())]);
    let (status, body) =
        http(addr.parse().unwrap(), "GET", "/admin/api/stats", &[("Authorization", "Bearer from-file")], "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("courier@test"), "{body}");
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;

    std::fs::write(&config, "[socket]\nmax_chanels = 3\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["--bind", "127.0.0.1:0", "--config"])
        .arg(&config)
        .output()
        .expect("binary runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max_chanels"), "{stderr}");
}

#[test]
fn shutdown_stops_every_worker_actor_and_thread_behind_the_sockets() {
    let db = TestDb::sqlite();
    let mut config = test_config();
    config.database_url = db.url.clone();
    config.presence.shards = 2;
    actix_web::rt::System::new().block_on(async move {
        let server = courier::Courier::new(config).start().await.expect("server starts");
        let background = server.background();
        let all = [
            "last-seen writer",
            "message log writer",
            "signal relay",
            "presence tracker",
            "pubsub registry",
            "sqlite checkpointer",
        ];
        assert_eq!(background.running().await, all);
        server.shutdown().await.expect("clean shutdown");
        let mut left = background.running().await;
        for _ in 0..200 {
            if left.is_empty() {
                break;
            }
            actix_web::rt::time::sleep(Duration::from_millis(10)).await;
            left = background.running().await;
        }
        assert!(left.is_empty(), "still running after shutdown: {left:?}");
    });
}

#[tokio::test]
async fn a_device_that_leaves_at_shutdown_has_its_last_seen_written_by_the_servers_clock() {
    const T0: i64 = 1_700_000_000_000;
    let db = Arc::new(TestDb::sqlite());
    let clock = ManualClock::new(T0);
    let injected = clock.clone();
    let server = TestServer::start_on(Arc::clone(&db), test_config(), move |c| c.clock(Arc::new(injected)));
    let token = signup(&server, "alice").await;
    let (_phone, _) = Device::joined(&server, "alice", &token, "phone", json!({})).await;
    // The socket closes during shutdown, an hour after the join by the injected clock; the
    // last-seen writer is drained before the server stops.
    clock.advance(Duration::from_secs(3600));
    server.shutdown().await;
    let accounts = Accounts::new(db.open(), AccountsConfig::default()).expect("valid config");
    assert_eq!(accounts.last_seen("alice").await.expect("alice exists"), Some(T0 + 3_600_000));
}
