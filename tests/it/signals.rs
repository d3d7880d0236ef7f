//! Status signals over real sockets (seed 004 `Signal` on `user:<eid>`): fan-out to the
//! receiver's devices and the sender's other devices, TYPING that expires into PAUSED, an
//! explicit PAUSED that stops the expiry, rate limits, refusals, protobuf, and nothing stored.

use courier::pb;
use prost::Message as _;
use serde_json::{Value, json};

use crate::support::devices::{Device, signup};
use crate::support::{TestServer, test_config};

fn signal(id: &str, to: &str, status: i32) -> Value {
    json!({"id": id, "to": {"eid": to}, "status": status})
}

/// A server whose indicators expire after 300 ms and whose signal bucket holds 4.
fn server() -> TestServer {
    let mut config = test_config();
    config.messaging.typing_timeout_ms = 300;
    config.messaging.signal_rate_per_sec = 1;
    config.messaging.signal_burst = 4;
    TestServer::start_with(config, |c| c)
}

#[tokio::test]
async fn typing_reaches_every_device_but_the_senders_and_expires_into_paused() {
    let server = server();
    let (alice, bob) = (signup(&server, "alice").await, signup(&server, "bob").await);
    let (mut a_phone, _) = Device::joined(&server, "alice", &alice, "phone", json!({})).await;
    let (mut a_laptop, _) = Device::joined(&server, "alice", &alice, "laptop", json!({})).await;
    let (mut b_phone, _) = Device::joined(&server, "bob", &bob, "phone", json!({})).await;
    let (mut b_tablet, _) = Device::joined(&server, "bob", &bob, "tablet", json!({"mode": "pull"})).await;

    let response = a_phone.call_ok("signal", signal("t1", "bob", 4)).await;
    assert_eq!((response["type"].clone(), response["signal_type"].clone()), (json!(2), json!(1)), "{response}");
    assert_eq!(response["from"], json!({"eid": "alice", "connection_resource_id": "phone"}));
    assert!(response["timestamp"].as_str().is_some_and(|t| t.parse::<i64>().unwrap() > 0), "{response}");
    for device in [&mut b_phone, &mut b_tablet] {
        let s = device.event("signal").await;
        assert_eq!((s["id"].clone(), s["status"].clone(), s["signal_type"].clone()), (json!("t1"), json!(4), json!(3)));
        assert_eq!((s["type"].clone(), s["signal_offset"].clone()), (json!(1), json!(0)), "{s}");
        assert_eq!(s["from"]["connection_resource_id"], "phone");
    }
    let copy = a_laptop.event("signal").await;
    assert_eq!((copy["status"].clone(), copy["signal_type"].clone()), (json!(4), json!(2)));

    // Nobody sends PAUSED: it comes by itself, to both users' devices.
    for device in [&mut b_phone, &mut b_tablet, &mut a_laptop, &mut a_phone] {
        let paused = device.event("signal").await;
        assert_eq!((paused["id"].clone(), paused["status"].clone()), (json!("t1"), json!(5)), "{paused}");
    }

    // RECORDING then an explicit CANCELLED: no expiry follows.
    a_phone.call_ok("signal", signal("r1", "bob", 2)).await;
    a_phone.call_ok("signal", signal("r1", "bob", 6)).await;
    for device in [&mut b_phone, &mut b_tablet] {
        assert_eq!(device.event("signal").await["status"], 2);
        assert_eq!(device.event("signal").await["status"], 6);
    }
    assert_eq!(a_laptop.event("signal").await["status"], 2);
    assert_eq!(a_laptop.event("signal").await["status"], 6);
    for device in [&mut b_phone, &mut b_tablet, &mut a_laptop, &mut a_phone] {
        device.expect_silence(600).await;
    }

    // Signals are never stored: bob's log is still empty.
    let page = b_tablet.call_ok("pull", json!({"after": 0})).await;
    assert_eq!(page, json!({"messages": [], "last_offset": 0, "more": false}));
}

#[tokio::test]
async fn excess_and_malformed_signals_get_error_replies() {
    let server = server();
    let (alice, _bob) = (signup(&server, "alice").await, signup(&server, "bob").await);
    let (mut a, _) = Device::joined(&server, "alice", &alice, "phone", json!({})).await;

    // The bucket holds 4 signals to bob; the rest of a burst is refused, not queued.
    let mut replies = Vec::new();
    for i in 0..8 {
        let r = a.push("signal", signal(&format!("s{i}"), "bob", 1)).await;
        replies.push(r);
    }
    let mut statuses = Vec::new();
    for r in &replies {
        statuses.push(a.reply(r).await);
    }
    let ok = statuses.iter().filter(|r| r["status"] == "ok").count();
    assert!((4..=5).contains(&ok), "a burst of 4 (plus at most one refill): {statuses:?}");
    let refused = statuses.iter().find(|r| r["status"] == "error").expect("some are refused");
    assert_eq!(refused["response"]["status_code"], 429, "{refused}");
    assert!(refused["response"]["reason"].as_str().unwrap().contains("rate limited"), "{refused}");

    for (payload, code, why) in [
        (signal("x", "bob", 9), 400, "status"),
        (signal("x", "bob", 0), 400, "status"),
        (json!({"id": "x", "status": 4}), 400, "to.eid"),
        (signal("x", "alice", 4), 400, "another user"),
        (signal("x", "nobody", 4), 404, "unknown recipient"),
        (json!({"id": "x", "to": {"eid": "bob"}, "status": 4, "from": {"eid": "mallory"}}), 403, "from"),
        (json!({"to": {"eid": "bob"}, "status": 4, "colour": "red"}), 400, "colour"),
        (json!("typing"), 400, "bad JSON"),
    ] {
        let reply = a.call("signal", payload.clone()).await;
        assert_eq!(reply["status"], "error", "{payload} → {reply}");
        assert_eq!(reply["response"]["status_code"], code, "{payload} → {reply}");
        let reason = reply["response"]["reason"].as_str().unwrap();
        assert!(reason.contains(why), "{payload}: {reason:?} should mention {why}");
    }
}

#[tokio::test]
async fn signals_travel_as_protobuf_and_strangers_are_refused_when_contacts_are_required() {
    let mut config = test_config();
    config.accounts.require_contacts = true;
    let server = TestServer::start_with(config, |c| c);
    let (alice, bob) = (signup(&server, "alice").await, signup(&server, "bob").await);
    let (mut a, _) = Device::joined(&server, "alice", &alice, "phone", json!({"encoding": "protobuf"})).await;
    let (mut b, _) = Device::joined(&server, "bob", &bob, "phone", json!({"encoding": "protobuf"})).await;
    let typing = pb::Signal {
        id: "p1".into(),
        status: 4,
        to: Some(pb::Identity { eid: "bob".into(), ..Default::default() }),
        ..Default::default()
    };

    let r = a.push_binary("signal", &typing.encode_to_vec()).await;
    let refused = a.binary_reply(&r).await;
    let refused = pb::Signal::decode(refused.payload.as_slice()).expect("a Signal");
    assert_eq!((refused.r#type, refused.id.as_str()), (3, "p1"), "an ERROR signal");
    assert_eq!(refused.error.as_deref(), Some("not_contacts"));

    a.call_ok("invite.request", json!({"dest": "bob"})).await;
    b.call_ok("invite.accept", json!({"dest": "alice"})).await;
    let r = a.push_binary("signal", &typing.encode_to_vec()).await;
    let response = pb::Signal::decode(a.binary_reply(&r).await.payload.as_slice()).expect("a Signal");
    assert_eq!((response.r#type, response.signal_type, response.status), (2, 1, 4));
    let got = pb::Signal::decode(b.binary_event("signal").await.as_slice()).expect("a Signal");
    assert_eq!((got.id.as_str(), got.status, got.signal_type), ("p1", 4, 3));
    assert_eq!(got.from.map(|f| f.eid), Some("alice".into()));
}
