//! The `code` of channel error replies: every `phx_reply` with `status: "error"` carries the
//! table's snake_case code beside Phoenix's `reason`, on joins, pushes and socket refusals.
//! The exact replies of rooms (`invalid_topic` for `room:`), of the socket's own limits and of
//! the crash channels are asserted, code included, where those features are tested.

use serde_json::{Value, json};

use crate::support::devices::{Device, message, signup};
use crate::support::{Client, TestServer, error_reply};

/// The `response` of an error reply, after checking that it is one.
fn refusal(reply: &Value) -> &Value {
    assert_eq!(reply[3], "phx_reply", "{reply}");
    assert_eq!(reply[4]["status"], "error", "{reply}");
    &reply[4]["response"]
}

#[tokio::test]
async fn unmatched_topics_say_unmatched_topic_on_join_and_on_push() {
    let server = TestServer::start();
    let mut c = server.client().await;
    c.send(json!(["1", "1", "nowhere:x", "phx_join", {}])).await;
    assert_eq!(c.recv_json().await, error_reply(None, "1", "nowhere:x", "unmatched topic", "unmatched_topic"));
    c.send(json!(["2", "2", "room:not-joined", "shout", {}])).await;
    assert_eq!(c.recv_json().await, error_reply(None, "2", "room:not-joined", "unmatched topic", "unmatched_topic"));
}

#[tokio::test]
async fn a_join_of_someone_elses_inbox_says_unauthorized_or_forbidden() {
    let server = TestServer::start();
    let (alice, _bob) = (signup(&server, "alice").await, signup(&server, "bob").await);
    let mut anonymous = server.client().await;
    let reply = anonymous.join("user:bob", "1").await;
    assert_eq!(refusal(&reply), &json!({"reason": "unauthorized", "code": "unauthorized"}));
    let mut other = Client::connect(&server.url(&format!("vsn=2.0.0&token={alice}"))).await;
    let reply = other.join("user:bob", "1").await;
    assert_eq!(refusal(&reply), &json!({"reason": "unauthorized", "code": "forbidden"}));
    let reply = anonymous.join("presence:bob", "2").await;
    assert_eq!(refusal(&reply), &json!({"reason": "unauthorized", "code": "unauthorized"}));
}

#[tokio::test]
async fn invalid_pushes_on_the_inbox_say_what_kind_of_invalid() {
    let server = TestServer::start();
    let (alice, _bob) = (signup(&server, "alice").await, signup(&server, "bob").await);
    let (mut phone, _) = Device::joined(&server, "alice", &alice, "phone", json!({})).await;

    // A message that does not decode keeps its ack fields and gains the code.
    let mut bad = message("m1", "bob", "hi");
    bad["colour"] = json!("blue");
    let reply = phone.call("message", bad).await;
    let response = &reply["response"];
    assert_eq!(reply["status"], "error", "{reply}");
    assert_eq!(response["code"], "invalid_input", "{reply}");
    assert_eq!((response["status_code"].as_i64(), response["message_id"].as_str()), (Some(400), Some("m1")));
    assert!(response["reason"].as_str().is_some_and(|r| r.contains("colour")), "{reply}");

    let cases = [
        ("message", json!({"id": "m2", "payload": "aGk="}), "invalid_input"),
        ("message", message("m3", "nobody", "hi"), "unknown_recipient"),
        ("pull", json!({"after": "soon"}), "invalid_json"),
        ("receipt", json!({"up_to": 0, "state": "seen"}), "invalid_input"),
        ("teleport", json!({}), "invalid_event"),
        ("signal", json!({"to": {"eid": "bob"}, "status": 99}), "invalid_input"),
    ];
    for (event, payload, code) in cases {
        let reply = phone.call(event, payload.clone()).await;
        assert_eq!(reply["status"], "error", "{event} {payload} → {reply}");
        assert_eq!(reply["response"]["code"], code, "{event} {payload} → {reply}");
        assert!(reply["response"]["reason"].as_str().is_some_and(|r| !r.is_empty()), "{reply}");
    }
}
