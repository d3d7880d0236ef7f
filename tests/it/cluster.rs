//! Two nodes in one process, joined by the in-process broker (`pubsub::MemoryCluster`) and
//! sharing one database: what a socket on one node does reaches sockets on the other, as a
//! Redis or NATS broker will carry it between machines. On both backends.

use std::sync::Arc;

use courier::pubsub::MemoryCluster;
use serde_json::json;

use crate::on_both_backends;
use crate::support::db::TestDb;
use crate::support::devices::{Device, message, signup};
use crate::support::{TestServer, ok_reply, test_config};

/// A node called `name` of `cluster` on `db`.
fn node(db: &Arc<TestDb>, cluster: &MemoryCluster, name: &str) -> TestServer {
    let mut config = test_config();
    config.node = name.into();
    let broker = cluster.broker(name);
    TestServer::start_on(Arc::clone(db), config, move |c| c.broker(broker))
}

on_both_backends!(rooms_and_messages_cross_nodes, cross_nodes);
async fn cross_nodes(db: Arc<TestDb>) {
    let cluster = MemoryCluster::start().expect("the hub starts");
    let (a, b) = (node(&db, &cluster, "courier@a"), node(&db, &cluster, "courier@b"));

    // A room broadcast from a socket on a reaches the member on b, once; the sender gets none.
    let (mut on_a, mut on_b) = (a.client().await, b.client().await);
    on_a.join_ok("room:both", "1").await;
    on_b.join_ok("room:both", "1").await;
    on_a.send(json!(["1", "2", "room:both", "shout", {"body": "from a"}])).await;
    assert_eq!(on_a.recv_json().await, ok_reply(Some("1"), "2", "room:both", json!({})));
    let frame = loop {
        let frame = on_b.recv_json().await;
        if frame[3] != "presence_diff" && frame[3] != "presence_state" {
            break frame;
        }
    };
    assert_eq!(frame, json!([null, null, "room:both", "shout", {"body": "from a"}]));

    // A message sent on a is stored once and reaches the receiver's device on b live, with its
    // offset, and the sender's other device on b as its copy.
    let (alice, bob) = (signup(&a, "alice").await, signup(&a, "bob").await);
    let (mut a_phone, _) = Device::joined(&a, "alice", &alice, "phone", json!({})).await;
    let (mut a_laptop, _) = Device::joined(&b, "alice", &alice, "laptop", json!({})).await;
    let (mut b_phone, _) = Device::joined(&b, "bob", &bob, "phone", json!({})).await;
    for (n, id) in ["m1", "m2", "m3"].into_iter().enumerate() {
        let ack = a_phone.call_ok("message", message(id, "bob", "across")).await;
        assert_eq!(ack["peer"]["offset"], json!((n + 1).to_string()), "{ack}");
    }
    for (n, id) in ["m1", "m2", "m3"].into_iter().enumerate() {
        let m = b_phone.event("message").await;
        assert_eq!((m["id"].clone(), m["signal_offset"].clone()), (json!(id), json!(n + 1)), "{m}");
        assert_eq!(m["signal_type"], 3);
        let copy = a_laptop.event("message").await;
        assert_eq!((copy["id"].clone(), copy["signal_type"].clone()), (json!(id), json!(2)));
    }
    // Neither the sending socket nor the room's sender got its own broadcast back from the
    // broker (a node drops its own echoes), and nothing arrived twice.
    a_phone.expect_silence(150).await;
    b_phone.expect_silence(50).await;
    on_a.expect_silence(50).await;

    a.shutdown().await;
    b.shutdown().await;
    cluster.stop();
}
