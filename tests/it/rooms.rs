//! `room:*` and the frame formats: what the Phoenix capture shows, frame for frame.

use serde_json::json;

use crate::support::{Client, Frame, TestServer, binary_push, error_reply, ok_reply};

#[tokio::test]
async fn heartbeat_is_answered_with_null_join_ref_and_the_same_ref() {
    let server = TestServer::start();
    let mut c = server.client().await;
    c.send(json!([null, "8", "phoenix", "heartbeat", {}])).await;
    assert_eq!(c.recv_json().await, ok_reply(None, "8", "phoenix", json!({})));
}

#[tokio::test]
async fn join_ping_and_broadcast_from_reach_the_other_member_only() {
    let server = TestServer::start();
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.join_ok("room:lobby", "5").await;
    b.join_ok("room:lobby", "5").await;

    a.send(json!(["5", "6", "room:lobby", "ping", {"hello": "world", "n": 1}])).await;
    assert_eq!(a.recv_json().await, ok_reply(Some("5"), "6", "room:lobby", json!({"hello": "world", "n": 1})));

    a.send(json!(["5", "7", "room:lobby", "new_msg", {"body": "hello from alice"}])).await;
    assert_eq!(a.recv_json().await, ok_reply(Some("5"), "7", "room:lobby", json!({})));
    assert_eq!(b.recv_json().await, json!([null, null, "room:lobby", "new_msg", {"body": "hello from alice"}]));
    a.expect_silence(200).await;
    b.expect_silence(100).await;
}

#[tokio::test]
async fn empty_room_name_is_refused_with_a_reason() {
    let server = TestServer::start();
    let mut c = server.client().await;
    let reply = c.join("room:", "1").await;
    assert_eq!(reply, error_reply(Some("1"), "1", "room:", "room name must not be empty", "invalid_topic"));
}

#[tokio::test]
async fn non_object_payloads_are_refused_but_not_fatal() {
    let server = TestServer::start();
    let mut c = server.client().await;
    c.join_ok("room:a", "1").await;
    c.send(json!(["1", "2", "room:a", "shout", "just a string"])).await;
    assert_eq!(
        c.recv_json().await,
        error_reply(Some("1"), "2", "room:a", "payload must be an object", "invalid_input")
    );
    c.send(json!([null, "3", "phoenix", "heartbeat", {}])).await;
    assert_eq!(c.recv_json().await, ok_reply(None, "3", "phoenix", json!({})));
}

#[tokio::test]
async fn binary_ping_round_trips_and_binary_broadcasts_use_kind_2() {
    let server = TestServer::start();
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.join_ok("room:bin", "1").await;
    b.join_ok("room:bin", "1").await;

    let body = [0u8, 1, 2, 254, 255];
    a.send_binary(binary_push("1", "2", "room:bin", "ping", &body)).await;
    let mut expected = vec![1, 1, 1, 8, 2];
    expected.extend_from_slice(b"12room:binok");
    expected.extend_from_slice(&body);
    assert_eq!(a.recv().await, Frame::Binary(expected));

    a.send_binary(binary_push("1", "3", "room:bin", "blob", &body)).await;
    assert_eq!(a.recv_json().await, ok_reply(Some("1"), "3", "room:bin", json!({})));
    let mut expected = vec![2, 8, 4];
    expected.extend_from_slice(b"room:binblob");
    expected.extend_from_slice(&body);
    assert_eq!(b.recv().await, Frame::Binary(expected));
}

#[tokio::test]
async fn v1_serializer_speaks_objects_without_join_ref() {
    let server = TestServer::start();
    let mut c = Client::connect(&server.url("vsn=1.0.0")).await;
    c.send(json!({"topic": "room:v1", "event": "phx_join", "payload": {}, "ref": "1"})).await;
    assert_eq!(
        c.recv_json().await,
        json!({"event": "phx_reply", "payload": {"response": {}, "status": "ok"}, "ref": "1", "topic": "room:v1"})
    );
    c.send(json!({"topic": "room:v1", "event": "ping", "payload": {"a": 1}, "ref": "2"})).await;
    assert_eq!(
        c.recv_json().await,
        json!({"event": "phx_reply", "payload": {"response": {"a": 1}, "status": "ok"}, "ref": "2", "topic": "room:v1"})
    );
}

#[tokio::test]
async fn missing_vsn_means_v1_and_v1_and_v2_members_share_a_room() {
    let server = TestServer::start();
    let mut v1 = Client::connect(&server.url("")).await;
    let mut v2 = server.client().await;
    v1.send(json!({"topic": "room:mixed", "event": "phx_join", "payload": {}, "ref": "1"})).await;
    assert_eq!(v1.recv_json().await["payload"]["status"], "ok");
    v2.join_ok("room:mixed", "1").await;
    v2.send(json!(["1", "2", "room:mixed", "say", {"x": 1}])).await;
    assert_eq!(v2.recv_json().await, ok_reply(Some("1"), "2", "room:mixed", json!({})));
    assert_eq!(v1.recv_json().await, json!({"event": "say", "payload": {"x": 1}, "ref": null, "topic": "room:mixed"}));
}

#[tokio::test]
async fn a_broadcast_reaches_each_of_many_subscribers_exactly_once() {
    let server = TestServer::start();
    let mut members = Vec::new();
    for _ in 0..20 {
        let mut c = server.client().await;
        c.join_ok("room:many", "1").await;
        members.push(c);
    }
    let mut sender = server.client().await;
    sender.join_ok("room:many", "1").await;
    for n in 0..5 {
        sender.send(json!(["1", format!("r{n}"), "room:many", "tick", {"n": n}])).await;
        assert_eq!(sender.recv_json().await[4]["status"], "ok");
    }
    for member in &mut members {
        for n in 0..5 {
            assert_eq!(member.recv_json().await, json!([null, null, "room:many", "tick", {"n": n}]));
        }
        member.expect_silence(50).await;
    }
}

#[tokio::test]
async fn a_push_sent_right_before_the_connection_drops_is_still_relayed() {
    let server = TestServer::start();
    let mut listener = server.client().await;
    listener.join_ok("room:last", "1").await;
    // The push, the close frame and the TCP FIN reach the server together; whether the server
    // reads the FIN in the same read as the push is timing, so it is tried many times.
    for n in 0..20 {
        let mut leaving = server.client().await;
        leaving.join_ok("room:last", "1").await;
        leaving.send_and_vanish(&[json!(["1", "2", "room:last", "bye", {"n": n}])]).await;
        assert_eq!(listener.recv_json().await, json!([null, null, "room:last", "bye", {"n": n}]));
    }
}

/// Reads frames until one with `event`, skipping the rest.
async fn next_event(client: &mut Client, event: &str) -> serde_json::Value {
    loop {
        let frame = client.recv_json().await;
        if frame[3] == event {
            return frame;
        }
    }
}

#[tokio::test]
async fn an_observer_is_not_tracked_and_gets_no_presence_but_does_get_broadcasts() {
    let server = TestServer::start();
    let mut member = server.client().await.see_presence();
    member.join_ok("room:show", "1").await;
    next_event(&mut member, "presence_state").await;
    next_event(&mut member, "presence_diff").await;

    let mut observer = server.client().await.see_presence();
    observer.send(json!(["1", "1", "room:show", "phx_join", {"presence": false}])).await;
    assert_eq!(observer.recv_json().await, ok_reply(Some("1"), "1", "room:show", json!({})));
    // A tracked member joining after the observer sees two members: the first one and itself.
    let mut late = server.client().await.see_presence();
    late.join_ok("room:show", "1").await;
    let state = next_event(&mut late, "presence_state").await;
    assert_eq!(state[4].as_object().map(|members| members.len()), Some(2), "{state}");

    member.send(json!(["1", "2", "room:show", "news", {"n": 1}])).await;
    assert_eq!(observer.recv_json().await, json!([null, null, "room:show", "news", {"n": 1}]));
    observer.expect_silence(200).await;

    let mut bad = server.client().await;
    bad.send(json!(["1", "1", "room:show", "phx_join", {"presence": "no"}])).await;
    assert_eq!(
        bad.recv_json().await,
        error_reply(Some("1"), "1", "room:show", "presence must be true or false", "invalid_input")
    );
}
