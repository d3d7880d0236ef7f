//! Join, leave, duplicate join, join_ref rules, crashes: Phoenix 1.8 channel semantics.

use serde_json::json;

use crate::support::channels::CrashChannels;
use crate::support::{TestServer, error_reply, ok_reply, test_config};

fn crash_server() -> TestServer {
    TestServer::start_with(test_config(), |c| c.channel("crash:*", CrashChannels))
}

#[tokio::test]
async fn leave_replies_ok_then_closes_with_the_join_ref() {
    let server = TestServer::start();
    let mut c = server.client().await;
    c.join_ok("room:lobby", "5").await;
    c.send(json!(["5", "6", "room:lobby", "phx_leave", {}])).await;
    assert_eq!(c.recv_json().await, ok_reply(Some("5"), "6", "room:lobby", json!({})));
    assert_eq!(c.recv_json().await, json!(["5", "5", "room:lobby", "phx_close", {}]));
    // The channel is gone: pushes now get the unmatched-topic error.
    c.send(json!(["5", "7", "room:lobby", "ping", {}])).await;
    assert_eq!(c.recv_json().await, error_reply(None, "7", "room:lobby", "unmatched topic", "unmatched_topic"));
}

#[tokio::test]
async fn duplicate_join_replies_first_then_closes_the_old_join_ref() {
    let server = TestServer::start();
    let mut c = server.client().await;
    let mut other = server.client().await;
    c.join_ok("room:raw", "3").await;
    other.join_ok("room:raw", "1").await;
    c.send(json!(["5", "5", "room:raw", "phx_join", {}])).await;
    assert_eq!(c.recv_json().await, ok_reply(Some("5"), "5", "room:raw", json!({})));
    assert_eq!(c.recv_json().await, json!(["3", "3", "room:raw", "phx_close", {}]));
    // Still subscribed exactly once.
    other.send(json!(["1", "2", "room:raw", "hi", {}])).await;
    assert_eq!(other.recv_json().await[4]["status"], "ok");
    assert_eq!(c.recv_json().await, json!([null, null, "room:raw", "hi", {}]));
    c.expect_silence(150).await;
    // The old join_ref is stale now: dropped without a reply, as Phoenix 1.8 does.
    c.send(json!(["3", "6", "room:raw", "ping", {}])).await;
    c.expect_silence(200).await;
    c.send(json!(["5", "7", "room:raw", "ping", {"ok": 1}])).await;
    assert_eq!(c.recv_json().await, ok_reply(Some("5"), "7", "room:raw", json!({"ok": 1})));
}

#[tokio::test]
async fn null_join_ref_reaches_a_joined_channel() {
    let server = TestServer::start();
    let mut c = server.client().await;
    c.join_ok("room:n", "2").await;
    c.send(json!([null, "3", "room:n", "ping", {"v": true}])).await;
    assert_eq!(c.recv_json().await, ok_reply(Some("2"), "3", "room:n", json!({"v": true})));
}

#[tokio::test]
async fn stale_leave_is_ignored_without_a_reply() {
    let server = TestServer::start();
    let mut c = server.client().await;
    c.join_ok("room:s", "4").await;
    c.send(json!(["1", "5", "room:s", "phx_leave", {}])).await;
    c.expect_silence(200).await;
    c.send(json!(["4", "6", "room:s", "ping", {}])).await;
    assert_eq!(c.recv_json().await, ok_reply(Some("4"), "6", "room:s", json!({})));
}

#[tokio::test]
async fn unmatched_topics_get_phoenixs_replies() {
    let server = TestServer::start();
    let mut c = server.client().await;
    c.send(json!([null, "2", "room:nojoin", "ping", {}])).await;
    assert_eq!(c.recv_json().await, error_reply(None, "2", "room:nojoin", "unmatched topic", "unmatched_topic"));
    c.send(json!(["7", "7", "nochannel:x", "phx_join", {}])).await;
    assert_eq!(c.recv_json().await, error_reply(None, "7", "nochannel:x", "unmatched topic", "unmatched_topic"));
    c.send(json!(["9", "8", "room:never", "phx_leave", {}])).await;
    assert_eq!(c.recv_json().await, ok_reply(Some("9"), "8", "room:never", json!({})));
}

#[tokio::test]
async fn the_101st_channel_is_refused() {
    let server = TestServer::start();
    let mut c = server.client().await;
    for n in 0..100 {
        c.join_ok(&format!("room:mc-{n}"), &format!("{}", n + 1)).await;
    }
    let reply = c.join("room:mc-100", "101").await;
    assert_eq!(reply, error_reply(Some("101"), "101", "room:mc-100", "too many channels joined", "too_many_channels"));
    // Rejoining a topic already joined is a replacement, not a 101st channel.
    let reply = c.join("room:mc-0", "102").await;
    assert_eq!(reply, ok_reply(Some("102"), "102", "room:mc-0", json!({})));
    assert_eq!(c.recv_json().await, json!(["1", "1", "room:mc-0", "phx_close", {}]));
}

#[tokio::test]
async fn reserved_and_oversized_events_and_topics_are_refused_with_reasons() {
    let server = TestServer::start();
    let mut c = server.client().await;
    c.join_ok("room:r", "1").await;
    c.send(json!(["1", "2", "room:r", "phx_reply", {}])).await;
    assert_eq!(c.recv_json().await, error_reply(Some("1"), "2", "room:r", "reserved event", "invalid_event"));
    c.send(json!(["1", "3", "room:r", "e".repeat(256), {}])).await;
    assert_eq!(c.recv_json().await, error_reply(Some("1"), "3", "room:r", "event name too long", "invalid_event"));
    c.send(json!(["1", "4", "room:r", "", {}])).await;
    assert_eq!(
        c.recv_json().await,
        error_reply(Some("1"), "4", "room:r", "event name must not be empty", "invalid_event")
    );
    let long_topic = format!("room:{}", "t".repeat(300));
    let reply = c.join(&long_topic, "5").await;
    assert_eq!(reply, error_reply(Some("5"), "5", &long_topic, "topic too long", "invalid_topic"));
}

#[tokio::test]
async fn a_panicking_channel_errors_with_channel_crash_and_the_socket_survives() {
    let server = crash_server();
    let mut c = server.client().await;
    c.send(json!(["1", "1", "crash:a", "phx_join", {}])).await;
    assert_eq!(c.recv_json().await, ok_reply(Some("1"), "1", "crash:a", json!({"joined": true})));
    assert_eq!(c.recv_json().await, json!(["1", null, "crash:a", "welcome", {"topic": "crash:a"}]));
    c.join_ok("room:side", "2").await;

    c.send(json!(["1", "3", "crash:a", "boom", {}])).await;
    assert_eq!(c.recv_json().await, json!(["1", "1", "crash:a", "phx_error", {"reason": "channel_crash"}]));
    c.send(json!(["2", "4", "room:side", "ping", {}])).await;
    assert_eq!(c.recv_json().await, ok_reply(Some("2"), "4", "room:side", json!({})));
    // The client rejoins after phx_error, as phoenix.js does.
    c.send(json!(["5", "5", "crash:a", "phx_join", {}])).await;
    assert_eq!(c.recv_json().await, ok_reply(Some("5"), "5", "crash:a", json!({"joined": true})));
}

#[tokio::test]
async fn a_channel_that_stops_sends_phx_close_or_phx_error() {
    let server = crash_server();
    let mut c = server.client().await;
    c.send(json!(["1", "1", "crash:s", "phx_join", {}])).await;
    c.recv_json().await;
    c.recv_json().await;
    c.send(json!(["1", "2", "crash:s", "stop", {}])).await;
    assert_eq!(c.recv_json().await, ok_reply(Some("1"), "2", "crash:s", json!({})));
    assert_eq!(c.recv_json().await, json!(["1", "1", "crash:s", "phx_close", {}]));

    c.send(json!(["3", "3", "crash:s", "phx_join", {}])).await;
    c.recv_json().await;
    c.recv_json().await;
    c.send(json!(["3", "4", "crash:s", "fail", {}])).await;
    assert_eq!(c.recv_json().await, json!(["3", "3", "crash:s", "phx_error", {"reason": "channel_crash"}]));
}

#[tokio::test]
async fn refused_and_crashed_joins_get_error_replies_and_nothing_else() {
    let server = crash_server();
    let mut c = server.client().await;
    c.send(json!(["1", "1", "crash:j", "phx_join", {"refuse": true}])).await;
    assert_eq!(c.recv_json().await, error_reply(Some("1"), "1", "crash:j", "refused on purpose", "forbidden"));
    c.send(json!(["2", "2", "crash:j", "phx_join", {"panic_now": true}])).await;
    assert_eq!(c.recv_json().await, error_reply(Some("2"), "2", "crash:j", "join crashed", "internal"));
    c.send(json!(["3", "3", "crash:j", "phx_join", {"panic_later": true}])).await;
    assert_eq!(c.recv_json().await, error_reply(Some("3"), "3", "crash:j", "join crashed", "internal"));
    c.expect_silence(150).await;
    // None of them left a channel behind.
    c.send(json!(["3", "4", "crash:j", "ping", {}])).await;
    assert_eq!(c.recv_json().await, error_reply(None, "4", "crash:j", "unmatched topic", "unmatched_topic"));
}

#[tokio::test]
async fn slow_replies_do_not_block_other_pushes() {
    let server = crash_server();
    let mut c = server.client().await;
    c.send(json!(["1", "1", "crash:slow", "phx_join", {}])).await;
    c.recv_json().await;
    c.recv_json().await;
    c.send(json!(["1", "2", "crash:slow", "slow", {"n": 1}])).await;
    c.send(json!([null, "3", "phoenix", "heartbeat", {}])).await;
    assert_eq!(c.recv_json().await, ok_reply(None, "3", "phoenix", json!({})));
    assert_eq!(c.recv_json().await, ok_reply(Some("1"), "2", "crash:slow", json!({"n": 1})));
}
