//! Limits: idle timeout, frame size, malformed frames, rate limits, slow consumers, the node's
//! and each user's socket limits, and pending replies per socket.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;

use crate::support::channels::{CrashChannels, TestAuth};
use crate::support::{Client, RECV_TIMEOUT, TestServer, error_reply, http, ok_reply, reply, test_config};

#[tokio::test]
async fn a_silent_socket_is_closed_with_1001_but_heartbeats_keep_it_open() {
    let mut config = test_config();
    config.socket.idle_timeout_ms = 400;
    let server = TestServer::start_with(config, |c| c);
    let mut quiet = server.client().await;
    let mut chatty = server.client().await;
    for n in 0..6 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        chatty.send(json!([null, format!("{n}"), "phoenix", "heartbeat", {}])).await;
        assert_eq!(chatty.recv_json().await[4]["status"], "ok");
    }
    // 900 ms have passed: the quiet socket is gone, the chatty one is not.
    assert_eq!(quiet.recv_close().await, (1001, "idle timeout".into()));
    chatty.send(json!([null, "x", "phoenix", "heartbeat", {}])).await;
    assert_eq!(chatty.recv_json().await, ok_reply(None, "x", "phoenix", json!({})));
}

#[tokio::test]
async fn frames_over_the_limit_close_with_1009() {
    let mut config = test_config();
    config.socket.max_frame_bytes = 4096;
    let server = TestServer::start_with(config, |c| c);
    let mut c = server.client().await;
    let mut other = server.client().await;
    c.join_ok("room:big", "1").await;
    let big = "x".repeat(5000);
    c.send(json!(["1", "2", "room:big", "ping", {"big": big}])).await;
    assert_eq!(c.recv_close().await.0, 1009);
    other.send(json!([null, "1", "phoenix", "heartbeat", {}])).await;
    assert_eq!(other.recv_json().await[4]["status"], "ok");
}

#[tokio::test]
async fn default_limit_accepts_frames_just_under_one_mib() {
    let server = TestServer::start();
    let mut c = server.client().await;
    c.join_ok("room:big", "1").await;
    let big = "y".repeat(1_000_000);
    c.send(json!(["1", "2", "room:big", "ping", {"big": big}])).await;
    assert_eq!(c.recv_json().await[4]["response"]["big"].as_str().map(str::len), Some(1_000_000));
}

#[tokio::test]
async fn malformed_frames_close_with_1011_and_a_reason() {
    let server = TestServer::start();
    for bad in ["not json", r#"["1","1","room:a","phx_join"]"#, r#"[1,"1","room:a","phx_join",{}]"#, r#"{"a":1}"#] {
        let mut c = server.client().await;
        c.send_text(bad).await;
        assert_eq!(c.recv_close().await, (1011, "malformed frame".into()), "for {bad}");
    }
    let mut v1 = Client::connect(&server.url("vsn=1.0.0")).await;
    v1.send_binary(vec![0, 0, 0, 0, 0]).await;
    assert_eq!(v1.recv_close().await.0, 1003);
    let mut v2 = server.client().await;
    v2.send_binary(vec![0, 9, 9, 9, 9]).await;
    assert_eq!(v2.recv_close().await.0, 1011);
}

#[tokio::test]
async fn a_flooding_socket_is_rate_limited_and_others_are_not() {
    let mut config = test_config();
    config.socket.rate_per_sec = 5;
    config.socket.rate_burst = 5;
    let server = TestServer::start_with(config, |c| c);
    let mut flood = server.client().await;
    let mut calm = server.client().await;
    flood.join_ok("room:f", "1").await;
    for n in 0..30 {
        flood.send(json!(["1", format!("p{n}"), "room:f", "ping", {}])).await;
    }
    let mut limited = 0;
    for n in 0..30 {
        let reply = flood.recv_json().await;
        assert_eq!(reply[1], format!("p{n}"));
        if reply == error_reply(Some("1"), &format!("p{n}"), "room:f", "rate limited", "rate_limited") {
            limited += 1;
        }
    }
    assert!(limited >= 20, "only {limited} of 30 were limited");
    calm.join_ok("room:f", "1").await;
    calm.send(json!(["1", "2", "room:f", "ping", {}])).await;
    assert_eq!(calm.recv_json().await, ok_reply(Some("1"), "2", "room:f", json!({})));
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_and_the_others_get_everything() {
    let mut config = test_config();
    config.socket.outbound_queue = 16;
    config.socket.rate_per_sec = 10_000;
    config.socket.rate_burst = 10_000;
    let server = TestServer::start_with(config, |c| c);
    let mut slow = server.client().await;
    let mut fast = server.client().await;
    let mut sender = server.client().await;
    slow.join_ok("room:slow", "1").await;
    fast.join_ok("room:slow", "1").await;
    sender.join_ok("room:slow", "1").await;

    let chunk = "z".repeat(64 * 1024);
    let total = 400; // ~26 MB: far beyond the socket buffers of a reader that never reads
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < total {
            let frame = fast.recv_json().await;
            assert_eq!(frame[3], "blob");
            assert_eq!(frame[4]["n"], got);
            got += 1;
        }
        got
    });
    for n in 0..total {
        sender.send(json!(["1", format!("{n}"), "room:slow", "blob", {"n": n, "data": chunk}])).await;
        assert_eq!(sender.recv_json().await[4]["status"], "ok");
    }
    assert_eq!(reader.await.unwrap(), total);
    // The server gives up on the slow socket: it ends early, with a 1001 close frame when the
    // frame can still get through the full buffers, or with the connection dropped.
    let (closed, received) = slow.drain_until_close(Duration::from_secs(15)).await.expect("slow socket ends");
    assert_closed_as_slow(closed);
    assert!(received < total as usize, "the slow socket got everything ({received})");
}

/// 400 broadcasts of 64 KiB are far fewer frames than the queue's 1,024 but 25 MiB: the
/// byte bound is what closes a socket that does not read them.
#[tokio::test]
async fn a_client_that_stops_reading_is_closed_by_queued_bytes_within_the_frame_limit() {
    let mut config = test_config();
    config.socket.rate_per_sec = 10_000;
    config.socket.rate_burst = 10_000;
    assert_eq!(config.socket.outbound_queue, 1024, "the default frame bound, which 400 frames stay under");
    let server = TestServer::start_with(config, |c| c);
    let mut slow = server.client().await;
    let mut sender = server.client().await;
    slow.join_ok("room:bytes", "1").await;
    sender.join_ok("room:bytes", "1").await;
    let chunk = "b".repeat(64 * 1024);
    let total = 400;
    for n in 0..total {
        sender.send(json!(["1", format!("{n}"), "room:bytes", "blob", {"n": n, "data": chunk}])).await;
        assert_eq!(sender.recv_json().await[4]["status"], "ok");
    }
    let (closed, received) = slow.drain_until_close(Duration::from_secs(15)).await.expect("slow socket ends");
    assert_closed_as_slow(closed);
    assert!(received < total, "the slow socket got everything ({received})");
}

/// A socket that pushes large pings and never reads their replies pins its own replies; the
/// byte bound closes it instead of buffering every reply.
#[tokio::test]
async fn a_socket_that_pings_and_never_reads_its_replies_is_closed() {
    let mut config = test_config();
    config.socket.rate_per_sec = 10_000;
    config.socket.rate_burst = 10_000;
    let server = TestServer::start_with(config, |c| c);
    let mut pinger = server.client().await;
    pinger.join_ok("room:pings", "1").await;
    let chunk = "p".repeat(500 * 1024);
    let total = 80; // 40 MB of replies, under the 1,024-frame bound
    for n in 0..total {
        if !pinger.try_send(json!(["1", format!("{n}"), "room:pings", "ping", {"data": chunk}])).await {
            break;
        }
    }
    let (closed, received) = pinger.drain_until_close(Duration::from_secs(15)).await.expect("pinger ends");
    assert_closed_as_slow(closed);
    assert!(received < total, "every reply was buffered for a socket that did not read ({received})");
    let mut other = server.client().await;
    other.send(json!([null, "1", "phoenix", "heartbeat", {}])).await;
    assert_eq!(other.recv_json().await[4]["status"], "ok");
}

/// A client that has written the whole over-size frame still reads the 1009 close: the server
/// drains what it sent instead of closing with unread bytes, which would send a reset that
/// overtakes the close frame.
#[tokio::test]
async fn the_1009_close_reaches_a_client_that_wrote_the_whole_frame() {
    let server = TestServer::start();
    let big = "x".repeat(3 * 1024 * 1024);
    for attempt in 0..20 {
        let mut c = server.client().await;
        // A reset while writing is what a browser reports instead of the close.
        let written = c.try_send(json!([null, "1", "phoenix", "heartbeat", {"big": big}])).await;
        assert!(written, "attempt {attempt}: the connection was reset while the frame was written");
        assert_eq!(c.recv_close().await.0, 1009, "attempt {attempt}");
    }
}

#[tokio::test]
async fn a_silent_json_socket_is_closed_with_1001() {
    let mut config = test_config();
    config.socket.idle_timeout_ms = 400;
    let server = TestServer::start_with(config, |c| c);
    let mut quiet = Client::connect(&format!("ws://{}/json/websocket", server.addr)).await;
    let mut chatty = Client::connect(&format!("ws://{}/json/websocket", server.addr)).await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        chatty.send(json!({"type": "identification", "version": "1.0.0", "client": "test"})).await;
        assert_eq!(chatty.recv_json().await["type"], "identification");
    }
    assert_eq!(quiet.recv_close().await, (1001, "idle timeout".into()));
    chatty.send(json!({"type": "identification", "version": "1.0.0", "client": "test"})).await;
    assert_eq!(chatty.recv_json().await["resp_code"], 0);
}

/// A slow socket ends with a 1001 close frame when the frame can still get through the full
/// buffers, or with the connection dropped.
fn assert_closed_as_slow(closed: (u16, String)) {
    match closed {
        (1001, reason) => assert!(reason.contains("slow consumer"), "{reason}"),
        (1006, _) => {}
        other => panic!("unexpected close {other:?}"),
    }
}

const ADMIN: &str = "limits-admin";

/// The status and JSON body of a refused WebSocket connect (with its `Retry-After`, if any, as
/// `body["retry_after_header"]`); panics when it is accepted.
async fn refused(url: &str) -> (u16, Value) {
    match Client::try_connect(url, &[]).await {
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default().into_owned();
            let mut body: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("refusal body {body:?}: {e}"));
            if let Some(retry_after) = response.headers().get("retry-after").and_then(|v| v.to_str().ok()) {
                body["retry_after_header"] = retry_after.into();
            }
            (response.status().as_u16(), body)
        }
        Err(e) => panic!("refused without an HTTP answer: {e}"),
        Ok(_) => panic!("{url} was admitted"),
    }
}

/// Connects to `url`, retrying while its place is still being freed.
async fn connect_once_freed(url: &str) -> Client {
    let deadline = Instant::now() + RECV_TIMEOUT;
    loop {
        match Client::try_connect(url, &[]).await {
            Ok((client, _)) => return client,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("the closed socket's place was not freed: {e}"),
        }
    }
}

async fn admin_stats(server: &TestServer) -> Value {
    let bearer = format!("Bearer {ADMIN}");
    let (status, body) = http(server.addr, "GET", "/admin/api/stats", &[("Authorization", &bearer)], "").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("stats are JSON")
}

/// Every series of a `/metrics` scrape and its value.
async fn scrape(server: &TestServer) -> HashMap<String, f64> {
    let (status, body) = http(server.addr, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn heartbeat_ok(client: &mut Client) {
    client.send(json!([null, "hb", "phoenix", "heartbeat", {}])).await;
    assert_eq!(client.recv_json().await, ok_reply(None, "hb", "phoenix", json!({})));
}

#[tokio::test]
async fn past_the_node_socket_limit_a_connect_gets_a_json_503_and_a_closed_socket_frees_its_place() {
    let mut config = test_config();
    config.socket.max_connections = 3;
    config.admin.token = Some(ADMIN.into());
    let server = TestServer::start_with(config, |c| c);
    let before = scrape(&server).await;
    // JSON sockets count toward the node's limit beside Phoenix ones.
    let mut first = server.client().await;
    let mut second = server.client().await;
    let json_url = format!("ws://{}/json/websocket", server.addr);
    let _json = Client::connect(&json_url).await;

    let (status, body) = refused(&server.url("vsn=2.0.0")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "node_full", "{body}");
    assert_eq!(body["resp_code"], 13, "{body}");
    assert_eq!(body["retry_after_header"], "1", "{body}");
    assert!(body["reason"].as_str().is_some_and(|r| r.contains('3')), "the reason names the limit: {body}");
    assert_eq!(refused(&json_url).await.0, 503);
    assert_eq!(refused(&format!("ws://{}/signal/websocket", server.addr)).await.0, 503);
    // Plain HTTP still gets through a full node.
    assert_eq!(http(server.addr, "GET", "/healthz", &[], "").await.0, 200);
    // What is connected keeps working.
    heartbeat_ok(&mut first).await;

    let stats = admin_stats(&server).await;
    assert_eq!(stats["sockets"], 3, "{stats}");
    assert_eq!(stats["socket_limits"]["max_connections"], 3, "{stats}");
    assert_eq!(stats["socket_limits"]["max_connections_per_user"], 100, "the default: {stats}");
    assert_eq!(stats["socket_limits"]["refused_node_full"], 3, "{stats}");
    assert_eq!(stats["socket_limits"]["refused_too_many_connections"], 0, "{stats}");
    let after = scrape(&server).await;
    let refusals = |m: &HashMap<String, f64>| m.get("courier_socket_refusals_total{reason=\"node_full\"}").copied();
    assert!(refusals(&after) >= refusals(&before).map(|n| n + 3.0), "{after:?}");
    assert!(after.contains_key("courier_socket_limit"), "{after:?}");
    assert!(after.get("courier_sockets").is_some_and(|n| *n >= 3.0), "{after:?}");

    second.close().await;
    let mut again = connect_once_freed(&server.url("vsn=2.0.0")).await;
    heartbeat_ok(&mut again).await;
    assert_eq!(refused(&server.url("vsn=2.0.0")).await.0, 503, "full again");
    let stats = admin_stats(&server).await;
    assert_eq!((stats["sockets"].as_u64(), stats["socket_limits"]["refused_node_full"].as_u64()), (Some(3), Some(4)));
}

#[tokio::test]
async fn past_the_per_user_limit_a_connect_gets_a_json_429_while_other_users_still_connect() {
    let mut config = test_config();
    config.socket.max_connections_per_user = 2;
    config.admin.token = Some(ADMIN.into());
    let server = TestServer::start_with(config, |c| c.authenticator(TestAuth));
    let alice = server.url("vsn=2.0.0&user_id=alice");
    let mut a1 = Client::connect(&alice).await;
    let mut a2 = Client::connect(&alice).await;

    let (status, body) = refused(&alice).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "too_many_connections", "{body}");
    assert_eq!(body["resp_code"], 11, "{body}");
    assert_eq!(body.get("retry_after_header"), None, "waiting does not help: {body}");
    // Another user, and anonymous sockets, are not held to alice's count.
    let mut bob = Client::connect(&server.url("vsn=2.0.0&user_id=bob")).await;
    let _bob2 = Client::connect(&server.url("vsn=2.0.0&user_id=bob")).await;
    let _anonymous = [server.client().await, server.client().await, server.client().await];
    heartbeat_ok(&mut bob).await;
    heartbeat_ok(&mut a2).await;
    let stats = admin_stats(&server).await;
    assert_eq!(stats["socket_limits"]["refused_too_many_connections"], 1, "{stats}");
    assert_eq!(stats["socket_limits"]["refused_node_full"], 0, "{stats}");
    assert_eq!(stats["sockets"], 7, "{stats}");

    a1.close().await;
    let mut a3 = connect_once_freed(&alice).await;
    heartbeat_ok(&mut a3).await;
    assert_eq!(refused(&alice).await.0, 429, "alice is at her limit again");
}

#[tokio::test]
async fn a_push_past_the_pending_replies_limit_gets_an_error_at_once_and_others_go_on() {
    let mut config = test_config();
    config.socket.max_pending_replies = 2;
    let server = TestServer::start_with(config, |c| c.channel("crash:*", CrashChannels));
    let mut c = server.client().await;
    c.send(json!(["1", "1", "crash:pending", "phx_join", {}])).await;
    assert_eq!(c.recv_json().await[4]["status"], "ok");
    assert_eq!(c.recv_json().await[3], "welcome");
    // Each "slow" push answers 400 ms later; the third finds two pending.
    for r in ["s1", "s2", "s3"] {
        c.send(json!(["1", r, "crash:pending", "slow", {"r": r}])).await;
    }
    let body = json!({"reason": "too many pending replies", "code": "too_many_pending_replies", "status_code": 429});
    let too_many = reply(Some("1"), "s3", "crash:pending", "error", body);
    assert_eq!(c.recv_json().await, too_many, "refused before the pending ones are answered");
    let mut answered = [c.recv_json().await, c.recv_json().await];
    answered.sort_by_key(|reply| reply[1].as_str().map(str::to_owned));
    assert_eq!(answered[0], ok_reply(Some("1"), "s1", "crash:pending", json!({"r": "s1"})));
    assert_eq!(answered[1], ok_reply(Some("1"), "s2", "crash:pending", json!({"r": "s2"})));
    // With nothing pending, slow pushes are taken again.
    c.send(json!(["1", "s4", "crash:pending", "slow", {"r": "s4"}])).await;
    assert_eq!(c.recv_json().await, ok_reply(Some("1"), "s4", "crash:pending", json!({"r": "s4"})));
}
