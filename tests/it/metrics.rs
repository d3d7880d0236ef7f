//! The public probes and `/metrics`: `/healthz` and `/readyz` answer, the metrics move when
//! traffic flows, and `/readyz` turns 503 while the database refuses connections and recovers
//! once it takes them again.
//!
//! The metrics are one set per process, and the tests of this binary run side by side, so
//! these assert that series grew by at least what this test did, never exact values.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use serde_json::{Value, json};

use crate::support::devices::{Device, message, signup};
use crate::support::{Client, TestDb, TestServer, http, test_config};

/// Every series of a `/metrics` text (name with labels, as written) and its value.
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(server: &TestServer) -> HashMap<String, f64> {
    let (status, body) = http(server.addr, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("# TYPE courier_messages_stored_total counter"), "{body}");
    parse(&body)
}

fn get(metrics: &HashMap<String, f64>, series: &str) -> f64 {
    *metrics.get(series).unwrap_or_else(|| panic!("{series} missing from /metrics"))
}

async fn get_json(server: &TestServer, path: &str) -> (u16, Value) {
    let (status, body) = http(server.addr, "GET", path, &[], "").await;
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")))
}

#[tokio::test]
async fn probes_answer_and_metrics_move_with_traffic() {
    let server = TestServer::start();
    let (status, health) = get_json(&server, "/healthz").await;
    assert_eq!((status, health), (200, json!({"status": "ok", "node": "courier@localhost"})));
    let (status, ready) = get_json(&server, "/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready, json!({"status": "ready", "node": "courier@localhost", "database": "sqlite", "broker": "up"}));
    assert_eq!(get_json(&server, "/health").await.0, 200, "the old path still answers");

    let before = scrape(&server).await;
    let (alice, bob) = (signup(&server, "alice").await, signup(&server, "bob").await);
    let (mut a_phone, _) = Device::joined(&server, "alice", &alice, "phone", json!({})).await;
    let (mut b_phone, _) = Device::joined(&server, "bob", &bob, "phone", json!({})).await;
    a_phone.call_ok("message", message("m1", "bob", "hi bob")).await;
    assert_eq!(b_phone.event("message").await["id"], "m1");
    let mut room = server.client().await;
    room.join_ok("room:lobby", "1").await;
    // A made-up event name: counted, but under `other`, never as a label of its own.
    room.send(json!(["1", "2", "room:lobby", "made-up-event", {}])).await;
    room.recv_json().await;
    let after = scrape(&server).await;

    let grew = |series: &str, by: f64| {
        let (was, now) = (before.get(series).copied().unwrap_or(0.0), get(&after, series));
        assert!(now >= was + by, "{series}: {was} -> {now}, expected +{by}");
    };
    grew("courier_channel_joins_total{topic=\"user\",outcome=\"ok\"}", 2.0);
    grew("courier_channel_joins_total{topic=\"room\",outcome=\"ok\"}", 1.0);
    grew("courier_pushes_received_total{event=\"phx_join\"}", 3.0);
    grew("courier_pushes_received_total{event=\"message\"}", 1.0);
    grew("courier_pushes_received_total{event=\"other\"}", 1.0);
    grew("courier_pushes_sent_total{event=\"phx_reply\"}", 5.0);
    grew("courier_pushes_sent_total{event=\"message\"}", 1.0);
    grew("courier_messages_stored_total", 1.0);
    grew("courier_messages_delivered_total", 1.0);
    grew("courier_message_ack_seconds_count", 1.0);
    grew("courier_log_writer_batch_writes_count", 1.0);
    // Gauges: other tests' sockets come and go, but ours are open and tracked.
    assert!(get(&after, "courier_connections{transport=\"phoenix\"}") >= 3.0, "{after:?}");
    assert!(get(&after, "courier_presence_topics") >= 1.0, "{after:?}");
    assert!(get(&after, "courier_channels") >= 3.0, "{after:?}");
    assert!(after.keys().all(|series| !series.contains("made-up")), "a client's event is no label");
    for series in [
        "courier_connections{transport=\"json\"}",
        "courier_connections{transport=\"signal\"}",
        "courier_outbound_queue_overflows_total",
        "courier_slow_consumer_closes_total",
        "courier_rate_limited_frames_total",
        "courier_message_ack_seconds_bucket{le=\"+Inf\"}",
        "courier_log_writer_batch_writes_bucket{le=\"1\"}",
    ] {
        get(&after, series);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn frames_past_the_rate_limit_are_counted() {
    let mut config = test_config();
    config.socket.rate_per_sec = 1;
    config.socket.rate_burst = 1;
    let server = TestServer::start_with(config, |c| c);
    let before = scrape(&server).await;
    let mut client: Client = server.client().await;
    for n in 0..4 {
        client.send(json!([null, n.to_string(), "phoenix", "heartbeat", {}])).await;
        client.recv_json().await;
    }
    let after = scrape(&server).await;
    let series = "courier_rate_limited_frames_total";
    assert!(get(&after, series) >= get(&before, series) + 3.0, "{before:?} -> {after:?}");
    server.shutdown().await;
}

/// A socket that stops reading is closed as a slow consumer: its queue's overflow and the close
/// are both counted (400 broadcasts of 64 KiB, past the default 1 MiB byte bound and whatever
/// the kernel's buffers hold).
#[tokio::test]
async fn a_slow_consumer_close_is_counted() {
    let mut config = test_config();
    config.socket.rate_per_sec = 10_000;
    config.socket.rate_burst = 10_000;
    let server = TestServer::start_with(config, |c| c);
    let before = scrape(&server).await;
    let mut slow = server.client().await;
    let mut sender = server.client().await;
    slow.join_ok("room:slow", "1").await;
    sender.join_ok("room:slow", "1").await;
    let chunk = "s".repeat(64 * 1024);
    for n in 0..400 {
        sender.send(json!(["1", format!("{n}"), "room:slow", "blob", {"n": n, "data": chunk}])).await;
        assert_eq!(sender.recv_json().await[4]["status"], "ok");
    }
    slow.drain_until_close(Duration::from_secs(15)).await.expect("the slow socket is closed");
    let after = scrape(&server).await;
    for series in ["courier_slow_consumer_closes_total", "courier_outbound_queue_overflows_total"] {
        assert!(get(&after, series) >= get(&before, series) + 1.0, "{series}: {before:?} -> {after:?}");
    }
    server.shutdown().await;
}

/// Polls `/readyz` until it answers `status`, for at most `within`, running `between` before
/// each poll.
async fn ready_turns(server: &TestServer, status: u16, within: Duration, mut between: impl FnMut()) -> Value {
    let deadline = Instant::now() + within;
    loop {
        between();
        let (got, body) = get_json(server, "/readyz").await;
        if got == status {
            return body;
        }
        assert!(Instant::now() < deadline, "/readyz still {got} ({body}) after {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// PostgreSQL only: its own database, whose connections are refused and cut for a while (the
/// shared server stays up for the other tests). With `CI` set and no `COURIER_TEST_PG`, fails.
#[tokio::test]
async fn readyz_fails_while_the_database_refuses_connections_and_recovers() {
    let Some(db) = TestDb::postgres_database("readyz_fails_while_the_database_refuses_connections") else { return };
    let db = Arc::new(db);
    let name = db.pg_database().expect("a database of its own").to_owned();
    let server = TestServer::start_on(Arc::clone(&db), test_config(), |c| c);
    assert_eq!(get_json(&server, "/readyz").await.1["database"], "postgres");

    let mut admin = db.pg_admin().expect("PostgreSQL");
    admin.batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).expect("refuse connections");
    // Cut again before every poll: a connection the pool opened just before the ALTER can
    // register after one pass of pg_terminate_backend and live on.
    let terminate = format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'");
    let refused = ready_turns(&server, 503, Duration::from_secs(15), || {
        admin.batch_execute(&terminate).expect("cut the test database's connections");
    })
    .await;
    assert_eq!(refused["error"], "storage_unavailable", "{refused}");
    assert_eq!(refused["resp_code"], 12, "{refused}");
    assert_eq!(refused["reason"], "the postgres database is not answering queries");
    assert_eq!(get_json(&server, "/healthz").await.0, 200, "the process still serves");

    admin.batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).expect("allow connections again");
    let ready = ready_turns(&server, 200, Duration::from_secs(30), || {}).await;
    assert_eq!(ready["status"], "ready");
    server.shutdown().await;
}
