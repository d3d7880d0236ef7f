//! Messaging over real sockets (seeds 003/004 on `user:<eid>`): acks, fan-out to every device,
//! idempotent retries, storage failures, receipts, pull/history, catch-up with `after`, bad
//! input, and the protobuf encoding; on both backends.

use std::sync::Arc;

use courier::pb;
use prost::Message as _;
use serde_json::{Value, json};

use crate::on_both_backends;
use crate::support::db::TestDb;
use crate::support::devices::{Device, message, signup};
use crate::support::{Client, TestServer, test_config};

fn offsets(messages: &[Value]) -> Vec<i64> {
    messages.iter().map(|m| m["signal_offset"].as_i64().expect("signal_offset")).collect()
}

fn ids(messages: &[Value]) -> Vec<&str> {
    messages.iter().map(|m| m["id"].as_str().expect("id")).collect()
}

/// Runs SQL straight on the test database (failure injection, checks).
async fn sql(db: &TestDb, statements: &'static str) {
    let store = courier::store::Store::open(&db.url).expect("open test database");
    store
        .run(move |conn| {
            diesel::connection::SimpleConnection::batch_execute(conn, statements)?;
            Ok(())
        })
        .await
        .expect("statements run");
}

on_both_backends!(a_message_is_acked_then_reaches_every_other_device, fan_out);
async fn fan_out(db: Arc<TestDb>) {
    let server = TestServer::start_on(db, test_config(), |c| c);
    let (alice, bob) = (signup(&server, "alice").await, signup(&server, "bob").await);
    let (mut a_phone, joined) = Device::joined(&server, "alice", &alice, "phone", json!({})).await;
    assert_eq!(joined["last_offset"], 0);
    assert_eq!(joined["acked_offset"], 0);
    assert_eq!(
        joined["identity"],
        json!({"eid": "alice", "connection_resource_id": "phone", "node": "courier@localhost"})
    );
    let (mut a_laptop, _) = Device::joined(&server, "alice", &alice, "laptop", json!({})).await;
    let (mut b_phone, _) = Device::joined(&server, "bob", &bob, "phone", json!({})).await;
    let (mut b_tablet, _) = Device::joined(&server, "bob", &bob, "tablet", json!({})).await;

    let ack = a_phone.call_ok("message", message("m1", "bob", "hi bob")).await;
    assert_eq!(ack["message_id"], "m1");
    assert_eq!(ack["status_code"], 200);
    assert_eq!(ack["method"], 1);
    assert_eq!(ack["to"]["eid"], "alice");
    assert_eq!(ack["to"]["connection_resource_id"], "phone");
    assert_eq!(ack["from"]["eid"], "bob");
    assert_eq!(ack["peer"], json!({"from": "alice", "to": "bob", "offset": "1", "peer_offset": "0"}));
    assert!(ack["timestamp"].as_str().is_some_and(|t| t.parse::<i64>().unwrap() > 0), "{ack}");

    for device in [&mut b_phone, &mut b_tablet] {
        let m = device.event("message").await;
        assert_eq!(m["id"], "m1");
        assert_eq!(m["signal_type"], 3);
        assert_eq!(m["signal_offset"], 1);
        assert_eq!(m["user_offset"], 1);
        assert_eq!(m["from"]["eid"], "alice");
        assert_eq!(m["from"]["connection_resource_id"], "phone");
        assert_eq!(m["to"]["eid"], "bob");
        assert_eq!(m["payload"], message("m1", "bob", "hi bob")["payload"]);
        assert_eq!(m["signal_offset_state"], true);
        assert_eq!(m["signal_request"], 2);
        assert_eq!(m["signal_ack_state"], json!({"send": true, "received": false, "read": false}));
    }
    let copy = a_laptop.event("message").await;
    assert_eq!(
        (copy["id"].clone(), copy["signal_type"].clone(), copy["signal_offset"].clone()),
        (json!("m1"), json!(2), json!(1))
    );
    a_phone.expect_silence(150).await;

    // The reply takes the next user_offset of the same conversation and the next offset of
    // each log; the receiver has acknowledged nothing yet.
    let ack = b_phone.call_ok("message", message("r1", "alice", "hi alice")).await;
    assert_eq!(ack["peer"], json!({"from": "bob", "to": "alice", "offset": "2", "peer_offset": "0"}));
    for device in [&mut a_phone, &mut a_laptop] {
        let m = device.event("message").await;
        assert_eq!(
            (m["id"].clone(), m["signal_type"].clone(), m["signal_offset"].clone()),
            (json!("r1"), json!(3), json!(2))
        );
        assert_eq!(m["user_offset"], 2);
    }
    let copy = b_tablet.event("message").await;
    assert_eq!((copy["signal_type"].clone(), copy["signal_offset"].clone()), (json!(2), json!(2)));

    // A retry of a stored id, even from another device, gets the original ack and delivers nothing.
    let again = a_laptop.call_ok("message", message("m1", "bob", "hi bob")).await;
    assert_eq!(again["peer"]["offset"], "1");
    assert_eq!(again["message_id"], "m1");
    b_phone.expect_silence(150).await;
    b_tablet.expect_silence(0).await;
    a_phone.expect_silence(0).await;

    // A device joining later catches up with the whole log, in order.
    let (mut a_tablet, joined) = Device::joined(&server, "alice", &alice, "tablet", json!({})).await;
    assert_eq!((joined["last_offset"].clone(), joined["acked_offset"].clone()), (json!(2), json!(0)));
    let caught = a_tablet.messages(2).await;
    assert_eq!(ids(&caught), ["m1", "r1"]);
    assert_eq!(offsets(&caught), [1, 2]);
    assert_eq!((caught[0]["signal_type"].clone(), caught[1]["signal_type"].clone()), (json!(2), json!(3)));
    a_tablet.expect_silence(150).await;
}

on_both_backends!(receipts_move_cursors_and_reach_every_device, receipts);
async fn receipts(db: Arc<TestDb>) {
    let server = TestServer::start_on(db, test_config(), |c| c);
    let (alice, bob) = (signup(&server, "alice").await, signup(&server, "bob").await);
    let (mut a_phone, _) = Device::joined(&server, "alice", &alice, "phone", json!({})).await;
    let (mut a_laptop, _) = Device::joined(&server, "alice", &alice, "laptop", json!({})).await;
    let (mut b_phone, _) = Device::joined(&server, "bob", &bob, "phone", json!({})).await;
    let (mut b_tablet, _) = Device::joined(&server, "bob", &bob, "tablet", json!({})).await;
    for id in ["m1", "m2"] {
        a_phone.call_ok("message", message(id, "bob", id)).await;
    }
    a_laptop.messages(2).await;
    b_phone.messages(2).await;
    b_tablet.messages(2).await;

    assert_eq!(b_phone.call_ok("receipt", json!({"up_to": 1, "state": "received"})).await, json!({"acked_offset": 1}));
    for device in [&mut a_phone, &mut a_laptop, &mut b_tablet] {
        let r = device.event("receipt").await;
        assert_eq!(r["method"], 2, "{r}");
        assert_eq!(r["message_id"], "m1");
        assert_eq!(r["status_code"], 200);
        assert_eq!(r["to"]["eid"], "alice");
        assert_eq!(r["from"]["eid"], "bob");
        assert_eq!(r["from"]["connection_resource_id"], "phone");
        assert_eq!(r["peer"], json!({"from": "alice", "to": "bob", "offset": "1", "peer_offset": "1"}));
    }
    b_phone.expect_silence(100).await;

    assert_eq!(b_tablet.call_ok("receipt", json!({"up_to": 2, "state": "read"})).await, json!({"acked_offset": 2}));
    for device in [&mut a_phone, &mut a_laptop, &mut b_phone] {
        let r = device.event("receipt").await;
        assert_eq!((r["method"].clone(), r["message_id"].clone()), (json!(3), json!("m2")), "{r}");
        assert_eq!(r["peer"]["peer_offset"], "2");
    }
    // A receipt that moves nothing tells nobody, and a cursor never goes back.
    assert_eq!(b_phone.call_ok("receipt", json!({"up_to": 0, "state": "received"})).await, json!({"acked_offset": 1}));
    a_phone.expect_silence(150).await;
    let r = b_phone.call("receipt", json!({"up_to": 3, "state": "read"})).await;
    assert_eq!(r["status"], "error");
    assert!(r["response"]["reason"].as_str().unwrap().contains("past the end of the log"), "{r}");

    // Acks show in the messages read back; the sender's new messages start unacknowledged.
    a_phone.call_ok("message", message("m3", "bob", "m3")).await;
    let page = a_laptop.call_ok("pull", json!({"after": 0})).await;
    let states: Vec<Value> =
        page["messages"].as_array().unwrap().iter().map(|m| m["signal_ack_state"].clone()).collect();
    assert_eq!(
        states,
        vec![
            json!({"send": true, "received": true, "read": true}),
            json!({"send": true, "received": true, "read": true}),
            json!({"send": true, "received": false, "read": false}),
        ]
    );
    // The next send's ack tells the sender how far bob has acknowledged.
    let ack = a_phone.call_ok("message", message("m4", "bob", "m4")).await;
    assert_eq!(ack["peer"], json!({"from": "alice", "to": "bob", "offset": "4", "peer_offset": "2"}));

    // A device that rejoins resumes after its own cursor.
    drop(b_phone);
    let (mut b_phone, joined) = Device::joined(&server, "bob", &bob, "phone", json!({})).await;
    assert_eq!((joined["last_offset"].clone(), joined["acked_offset"].clone()), (json!(4), json!(1)));
    assert_eq!(offsets(&b_phone.messages(3).await), [2, 3, 4]);
    b_phone.expect_silence(100).await;
}

on_both_backends!(a_failed_store_is_reported_and_the_retry_lands_once, storage_failure);
async fn storage_failure(db: Arc<TestDb>) {
    let server = TestServer::start_on(Arc::clone(&db), test_config(), |c| c);
    let (alice, bob) = (signup(&server, "alice").await, signup(&server, "bob").await);
    let (mut a_phone, _) = Device::joined(&server, "alice", &alice, "phone", json!({})).await;
    let (mut b_phone, _) = Device::joined(&server, "bob", &bob, "phone", json!({})).await;

    // A real database failure: a trigger that refuses every new message.
    if db.url.starts_with("postgres") {
        sql(
            &db,
            "CREATE FUNCTION refuse_messages() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$ LANGUAGE plpgsql;
             CREATE TRIGGER refuse_messages BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION refuse_messages();",
        )
        .await;
    } else {
        sql(&db, "CREATE TRIGGER refuse_messages BEFORE INSERT ON messages BEGIN SELECT RAISE(ABORT, 'injected failure'); END;")
            .await;
    }
    let failed = a_phone.call("message", message("m1", "bob", "once")).await;
    assert_eq!(failed["status"], "error");
    let response = &failed["response"];
    assert_eq!(response["status_code"], 503, "{failed}");
    assert_eq!(response["signal_offset_state"], false);
    assert_eq!(response["message_id"], "m1");
    assert!(response["reason"].as_str().unwrap().contains("retry"), "{failed}");
    b_phone.expect_silence(150).await;

    if db.url.starts_with("postgres") {
        sql(&db, "DROP TRIGGER refuse_messages ON messages; DROP FUNCTION refuse_messages();").await;
    } else {
        sql(&db, "DROP TRIGGER refuse_messages;").await;
    }
    let ack = a_phone.call_ok("message", message("m1", "bob", "once")).await;
    assert_eq!(ack["peer"]["offset"], "1");
    assert_eq!(b_phone.event("message").await["signal_offset"], 1);
    let again = a_phone.call_ok("message", message("m1", "bob", "once")).await;
    assert_eq!(again["peer"]["offset"], "1");
    b_phone.expect_silence(150).await;
    let page = b_phone.call_ok("pull", json!({"after": 0})).await;
    assert_eq!(ids(page["messages"].as_array().unwrap()), ["m1"]);
    assert_eq!(page["last_offset"], 1);
}

on_both_backends!(pull_mode_and_history_page_through_the_log, pull_and_history);
async fn pull_and_history(db: Arc<TestDb>) {
    let server = TestServer::start_on(db, test_config(), |c| c);
    let (alice, bob) = (signup(&server, "alice").await, signup(&server, "bob").await);
    let (mut a_phone, _) = Device::joined(&server, "alice", &alice, "phone", json!({"mode": "pull"})).await;
    let (mut b_phone, _) = Device::joined(&server, "bob", &bob, "phone", json!({"mode": "pull"})).await;
    for i in 1..=5 {
        a_phone.call_ok("message", message(&format!("a{i}"), "bob", "x")).await;
        if i % 2 == 0 {
            b_phone.call_ok("message", message(&format!("b{i}"), "alice", "y")).await;
        }
    }
    // Pull mode pushes nothing.
    a_phone.expect_silence(150).await;
    b_phone.expect_silence(0).await;

    let first = b_phone.call_ok("pull", json!({"after": 0, "limit": 3})).await;
    assert_eq!(first["last_offset"], 7);
    let first = first["messages"].as_array().unwrap().clone();
    assert_eq!(offsets(&first), [1, 2, 3]);
    assert_eq!(ids(&first), ["a1", "a2", "b2"]);
    assert!(first.iter().all(|m| m["signal_request"] == 1));
    assert_eq!(first[2]["signal_type"], 2);
    let rest = b_phone.call_ok("pull", json!({"after": 3, "limit": 10})).await;
    assert_eq!(offsets(rest["messages"].as_array().unwrap()), [4, 5, 6, 7]);
    let none = b_phone.call_ok("pull", json!({"after": 7})).await;
    assert_eq!(none, json!({"messages": [], "last_offset": 7, "more": false}));

    let newest = b_phone.call_ok("history", json!({"with": "alice", "limit": 3})).await;
    let newest = newest["messages"].as_array().unwrap().clone();
    let user_offsets: Vec<i64> = newest.iter().map(|m| m["user_offset"].as_i64().unwrap()).collect();
    assert_eq!(user_offsets, [7, 6, 5]);
    assert_eq!(ids(&newest), ["a5", "b4", "a4"]);
    let older = b_phone.call_ok("history", json!({"with": "alice", "before": 5, "limit": 3})).await;
    assert_eq!(ids(older["messages"].as_array().unwrap()), ["a3", "b2", "a2"]);
    let oldest = b_phone.call_ok("history", json!({"with": "alice", "before": 2})).await;
    assert_eq!(ids(oldest["messages"].as_array().unwrap()), ["a1"]);
    // alice sees the same conversation with her own log's offsets.
    let hers = a_phone.call_ok("history", json!({"with": "bob", "limit": 1})).await;
    assert_eq!(hers["messages"][0]["id"], "a5");
    assert_eq!(hers["messages"][0]["signal_type"], 2);
    let empty = a_phone.call_ok("history", json!({"with": "nobody"})).await;
    assert_eq!(empty, json!({"messages": [], "more": false}));
}

on_both_backends!(a_catch_up_during_live_traffic_has_no_gap_and_no_duplicate, catch_up_under_traffic);
async fn catch_up_under_traffic(db: Arc<TestDb>) {
    let mut config = test_config();
    // Small pages, so the catch-up takes many steps while new messages arrive.
    config.messaging.catch_up_page = 7;
    let server = TestServer::start_on(db, config, |c| c);
    let (alice, bob) = (signup(&server, "alice").await, signup(&server, "bob").await);
    let (mut a_phone, _) = Device::joined(&server, "alice", &alice, "phone", json!({})).await;
    for i in 0..60 {
        a_phone.push("message", message(&format!("old{i}"), "bob", "x")).await;
    }
    let (mut a_laptop, _) = Device::joined(&server, "alice", &alice, "laptop", json!({})).await;
    // Wait for the 60 acks so they are stored, then keep sending while bob joins.
    a_laptop.messages(60).await;
    let sender = tokio::spawn(async move {
        for i in 0..60 {
            a_phone.call_ok("message", message(&format!("new{i}"), "bob", "y")).await;
        }
        a_phone
    });
    let (mut b_phone, joined) = Device::joined(&server, "bob", &bob, "phone", json!({"after": 0})).await;
    assert!(joined["last_offset"].as_i64().unwrap() >= 60, "{joined}");
    let got = b_phone.messages(120).await;
    assert_eq!(offsets(&got), (1..=120).collect::<Vec<i64>>());
    let mut expected: Vec<String> = (0..60).map(|i| format!("old{i}")).collect();
    expected.extend((0..60).map(|i| format!("new{i}")));
    assert_eq!(ids(&got), expected);
    sender.await.unwrap();
    b_phone.expect_silence(150).await;

    // `after` skips what the device already has.
    let (mut b_tablet, _) = Device::joined(&server, "bob", &bob, "tablet", json!({"after": 115})).await;
    assert_eq!(offsets(&b_tablet.messages(5).await), [116, 117, 118, 119, 120]);
    b_tablet.expect_silence(100).await;
}

on_both_backends!(bad_input_gets_a_reason_and_stores_nothing, bad_input);
async fn bad_input(db: Arc<TestDb>) {
    let server = TestServer::start_on(db, test_config(), |c| c);
    let (alice, _bob) = (signup(&server, "alice").await, signup(&server, "bob").await);
    let (mut a, _) = Device::joined(&server, "alice", &alice, "phone", json!({})).await;
    let too_big = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, vec![7u8; 64 * 1024 + 1]);
    let cases = [
        (json!({"id": "x", "to": {"eid": "nobody"}, "payload": "aGk="}), 404, "unknown recipient"),
        (json!({"id": "x", "payload": "aGk="}), 400, "to.eid is required"),
        (json!({"id": "", "to": {"eid": "bob"}, "payload": "aGk="}), 400, "id must be"),
        (json!({"id": "x", "to": {"eid": "bob"}}), 400, "payload or encrypted"),
        (json!({"id": "x", "to": {"eid": "alice"}, "payload": "aGk="}), 400, "yourself"),
        (
            json!({"id": "x", "to": {"eid": "bob"}, "from": {"eid": "bob"}, "payload": "aGk="}),
            403,
            "from does not match",
        ),
        (json!({"id": "x", "to": {"eid": "bob"}, "payload": too_big}), 413, "payload too large"),
        (json!({"id": "x", "to": {"eid": "bob"}, "payload": "aGk=", "colour": 1}), 400, "colour"),
        (json!({"id": "x", "to": {"eid": "bob"}, "payload": "aGk=", "timestamp": -5}), 400, "timestamp"),
        (json!({"id": "x", "to": {"eid": "bob"}, "encrypted": "Y2lwaGVy"}), 400, "encryption_type"),
        (json!("not an object"), 400, "bad JSON"),
    ];
    for (payload, code, reason) in cases {
        let reply = a.call("message", payload.clone()).await;
        assert_eq!(reply["status"], "error", "{payload} → {reply}");
        assert_eq!(reply["response"]["status_code"], code, "{payload} → {reply}");
        assert_eq!(reply["response"]["signal_offset_state"], false);
        assert!(reply["response"]["reason"].as_str().unwrap().contains(reason), "{payload} → {reply}");
        // The id is echoed even when the rest does not parse, so the client knows which failed.
        let id = payload.get("id").and_then(Value::as_str).unwrap_or_default();
        assert_eq!(reply["response"]["message_id"], id, "{payload} → {reply}");
    }
    let other_events = [
        ("receipt", json!({"up_to": -1, "state": "read"}), "must not be negative"),
        ("receipt", json!({"up_to": "5", "state": "read"}), "bad receipt payload"),
        ("receipt", json!({"up_to": 1, "state": "seen"}), "state must be"),
        ("receipt", json!({"up_to": 1}), "missing field `state`"),
        ("pull", json!({"after": -1}), "must not be negative"),
        ("pull", json!({"after": "x"}), "bad pull payload"),
        ("pull", json!({"after": 0, "limit": 501}), "limit must be 1..=500"),
        ("pull", json!({"after": 0, "limit": 0}), "limit must be 1..=500"),
        ("history", json!({"with": ""}), "with must name a user"),
        ("history", json!({"with": "bob", "before": -3}), "must not be negative"),
        ("history", json!({"with": "bob", "limit": 10_000}), "limit must be"),
        ("typing", json!({}), "unknown event"),
    ];
    for (event, payload, reason) in other_events {
        let reply = a.call(event, payload.clone()).await;
        assert_eq!(reply["status"], "error", "{event} {payload} → {reply}");
        assert!(reply["response"]["reason"].as_str().unwrap().contains(reason), "{event} {payload} → {reply}");
    }
    let page = a.call_ok("pull", json!({"after": 0})).await;
    assert_eq!(page, json!({"messages": [], "last_offset": 0, "more": false}), "nothing was stored");

    for (params, reason) in [
        (json!({"after": -1}), "must not be negative"),
        (json!({"after": 1}), "past the end of the log"),
        (json!({"mode": "sideways"}), "mode must be"),
        (json!({"encoding": "xml"}), "encoding must be"),
        (json!({"bogus": true}), "unknown field"),
    ] {
        let (_, reply) = Device::join(&server, "alice", &alice, "laptop", params.clone()).await;
        assert_eq!(reply["status"], "error", "{params} → {reply}");
        assert!(reply["response"]["reason"].as_str().unwrap().contains(reason), "{params} → {reply}");
    }
    let (_, reply) = Device::join(&server, "bob", &alice, "laptop", json!({})).await;
    assert_eq!(reply["response"], json!({"reason": "unauthorized", "code": "forbidden"}));
    // Binary frames need vsn 2.0.0, so a V1 socket cannot ask for protobuf.
    let mut v1 = Client::connect(&server.url(&format!("vsn=1.0.0&token={alice}&device=old"))).await;
    v1.send(json!({"topic": "user:alice", "event": "phx_join", "payload": {"encoding": "protobuf"}, "ref": "1"})).await;
    let reply = v1.recv_json().await;
    assert!(reply["payload"]["response"]["reason"].as_str().unwrap().contains("vsn 2.0.0"), "{reply}");
}

#[tokio::test]
async fn protobuf_frames_carry_the_same_types() {
    let server = TestServer::start();
    let (alice, bob) = (signup(&server, "alice").await, signup(&server, "bob").await);
    let (mut a_phone, _) = Device::joined(&server, "alice", &alice, "phone", json!({"encoding": "protobuf"})).await;
    let (mut b_phone, _) = Device::joined(&server, "bob", &bob, "phone", json!({"encoding": "protobuf"})).await;
    let (mut b_web, _) = Device::joined(&server, "bob", &bob, "web", json!({})).await;

    let outgoing = pb::Message {
        id: "bin1".into(),
        to: Some(pb::Identity { eid: "bob".into(), ..Default::default() }),
        payload: b"\x00\x01binary".to_vec(),
        signature: "c2ln".into(),
        ..Default::default()
    };
    let msg_ref = a_phone.push_binary("message", &outgoing.encode_to_vec()).await;
    let reply = a_phone.binary_reply(&msg_ref).await;
    assert_eq!(reply.event, "ok");
    let ack = pb::MessagePeerAckSignal::decode(reply.payload.as_slice()).expect("a protobuf ack");
    assert_eq!((ack.message_id.as_str(), ack.status_code, ack.method), ("bin1", 200, 1));
    assert_eq!(ack.peer.as_ref().map(|p| p.offset), Some(1));

    let delivered = pb::Message::decode(b_phone.binary_event("message").await.as_slice()).expect("a protobuf message");
    assert_eq!((delivered.id.as_str(), delivered.signal_offset, delivered.signal_type), ("bin1", 1, 3));
    assert_eq!(delivered.payload, b"\x00\x01binary");
    assert_eq!(delivered.from.as_ref().map(|f| f.eid.as_str()), Some("alice"));
    // The JSON device gets the same message in proto3 JSON (bytes as base64).
    let json_copy = b_web.event("message").await;
    assert_eq!(json_copy["payload"], "AAFiaW5hcnk=");
    assert_eq!(json_copy["signature"], "c2ln");

    b_web.call_ok("receipt", json!({"up_to": 1, "state": "read"})).await;
    let receipt = pb::MessagePeerAckSignal::decode(a_phone.binary_event("receipt").await.as_slice()).unwrap();
    assert_eq!((receipt.method, receipt.message_id.as_str()), (3, "bin1"));

    // A binary message that is not a protobuf Message gets a binary error ack.
    let msg_ref = a_phone.push_binary("message", &[0xff, 0xff, 0xff]).await;
    let reply = a_phone.binary_reply(&msg_ref).await;
    assert_eq!(reply.event, "error");
    assert_eq!(pb::MessagePeerAckSignal::decode(reply.payload.as_slice()).unwrap().status_code, 400);
}

on_both_backends!(strangers_are_refused_when_contacts_are_required, contacts_required);
async fn contacts_required(db: Arc<TestDb>) {
    let mut config = test_config();
    config.accounts.require_contacts = true;
    let server = TestServer::start_on(db, config, |c| c);
    let (alice, bob) = (signup(&server, "alice").await, signup(&server, "bob").await);
    let (mut a, _) = Device::joined(&server, "alice", &alice, "phone", json!({})).await;
    let (mut b, _) = Device::joined(&server, "bob", &bob, "phone", json!({})).await;
    let refused = a.call("message", message("m1", "bob", "hello?")).await;
    assert_eq!(refused["response"]["status_code"], 403, "{refused}");
    assert_eq!(refused["response"]["reason"], "not_contacts");
    a.call_ok("invite.request", json!({"dest": "bob"})).await;
    b.event("invite.request").await;
    b.call_ok("invite.accept", json!({"dest": "alice"})).await;
    // The refused id was not stored, so it can be sent now.
    let ack = a.call_ok("message", message("m1", "bob", "hello?")).await;
    assert_eq!(ack["peer"]["offset"], "1");
    assert_eq!(b.event("message").await["id"], "m1");
}
