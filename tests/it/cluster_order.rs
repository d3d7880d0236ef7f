//! Messages for one device committed on several nodes at once (issue 19): three nodes share one
//! database, the receiver has a device on each, and senders on every node send to it
//! concurrently. Each node's log writer commits its own offsets of the receiver's log, and the
//! live `message` events reach each device both from its own node and over the broker, so
//! they arrive out of order; every device must still get offsets `1..=n` exactly once, in
//! order. A retry of a message id through another node gets the original ack.

use std::sync::Arc;

use courier::pubsub::MemoryCluster;
use serde_json::{Value, json};

use crate::cluster::{Join, node, ready};
use crate::on_both_backends;
use crate::support::TestServer;
use crate::support::db::TestDb;
use crate::support::devices::{Device, message, signup};

/// Senders per node, and messages each sends.
const SENDERS_PER_NODE: usize = 2;
const MESSAGES_EACH: usize = 15;

on_both_backends!(many_senders_on_many_nodes_reach_every_device_in_order, over_memory);
async fn over_memory(db: Arc<TestDb>) {
    let cluster = MemoryCluster::start().expect("the hub starts");
    in_order_across_nodes(db, &Join::Memory(cluster.clone())).await;
    cluster.stop();
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn many_senders_on_many_nodes_reach_every_device_in_order_over_redis() {
    let test = "many_senders_on_many_nodes_reach_every_device_in_order_over_redis";
    let _serial = crate::cluster::REDIS.lock().await;
    let Some(cluster) = crate::cluster::redis(test) else { return };
    let Some(db) = TestDb::postgres(test) else { return };
    in_order_across_nodes(Arc::new(db), &Join::Broker(cluster)).await;
}

#[cfg(feature = "nats")]
#[tokio::test]
async fn many_senders_on_many_nodes_reach_every_device_in_order_over_nats() {
    let test = "many_senders_on_many_nodes_reach_every_device_in_order_over_nats";
    let Some(cluster) = crate::cluster::nats(test) else { return };
    let Some(db) = TestDb::postgres(test) else { return };
    in_order_across_nodes(Arc::new(db), &Join::Broker(cluster)).await;
}

/// Sends `MESSAGES_EACH` messages to `to`, pipelined, and returns their acks in send order.
async fn send_burst(mut sender: Device, name: String, to: &'static str) -> Vec<Value> {
    let mut refs = Vec::with_capacity(MESSAGES_EACH);
    for n in 0..MESSAGES_EACH {
        refs.push(sender.push("message", message(&format!("{name}-{n}"), to, "hi")).await);
    }
    let mut acks = Vec::with_capacity(refs.len());
    for msg_ref in refs {
        let reply = sender.reply(&msg_ref).await;
        assert_eq!(reply["status"], "ok", "{name}'s send failed: {reply}");
        acks.push(reply["response"].clone());
    }
    acks
}

async fn in_order_across_nodes(db: Arc<TestDb>, join: &Join) {
    let nodes: Vec<TestServer> =
        ["courier@a", "courier@b", "courier@c"].iter().map(|name| node(&db, join, name)).collect();
    for server in &nodes {
        assert_eq!(ready(server).await["broker"], "up");
    }
    let rita = signup(&nodes[0], "rita").await;
    let mut devices = Vec::new();
    for (server, device) in nodes.iter().zip(["phone", "tablet", "laptop"]) {
        devices.push(Device::joined(server, "rita", &rita, device, json!({})).await.0);
    }
    let mut senders = Vec::new();
    for (n, server) in nodes.iter().enumerate() {
        for k in 0..SENDERS_PER_NODE {
            let name = format!("s{n}x{k}");
            let token = signup(server, &name).await;
            senders.push((Device::joined(server, &name, &token, "phone", json!({})).await.0, name));
        }
    }

    // Every sender at once, each on its node.
    let bursts: Vec<_> =
        senders.into_iter().map(|(device, name)| tokio::spawn(send_burst(device, name, "rita"))).collect();
    let mut acked = 0;
    for burst in bursts {
        acked += burst.await.expect("the sender ran").len();
    }
    let total = nodes.len() * SENDERS_PER_NODE * MESSAGES_EACH;
    assert_eq!(acked, total, "every send is acked");

    for (device, name) in devices.iter_mut().zip(["phone", "tablet", "laptop"]) {
        let got = device.messages(total).await;
        let offsets: Vec<i64> = got.iter().map(|m| m["signal_offset"].as_i64().unwrap_or(-1)).collect();
        assert_eq!(offsets, (1..=total as i64).collect::<Vec<_>>(), "rita's {name}: 1..={total} once, in order");
        // Each sender's own messages keep their order within the log too.
        let mut ids: Vec<&str> = got.iter().filter_map(|m| m["id"].as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), total, "rita's {name}: every message, none twice");
        // Longer than the gap wait: nothing more is coming.
        device.expect_silence(400).await;
    }
    for server in nodes {
        server.shutdown().await;
    }
}

on_both_backends!(a_retry_through_another_node_gets_the_original_ack, retry_elsewhere);
async fn retry_elsewhere(db: Arc<TestDb>) {
    let cluster = MemoryCluster::start().expect("the hub starts");
    let join = Join::Memory(cluster.clone());
    let (a, b) = (node(&db, &join, "courier@a"), node(&db, &join, "courier@b"));
    let (alice, bob) = (signup(&a, "alice").await, signup(&a, "bob").await);
    let (mut phone, _) = Device::joined(&a, "alice", &alice, "phone", json!({})).await;
    let (mut laptop, _) = Device::joined(&b, "alice", &alice, "laptop", json!({})).await;
    let (mut inbox, _) = Device::joined(&b, "bob", &bob, "phone", json!({})).await;
    let first = phone.call_ok("message", message("once", "bob", "hello")).await;
    let m = inbox.event("message").await;
    assert_eq!((m["id"].clone(), m["signal_offset"].clone()), (json!("once"), json!(1)), "{m}");
    // The laptop saw its user's copy; the client then retries the same id from it, on b.
    let copy = laptop.event("message").await;
    assert_eq!(copy["id"], "once");
    let again = laptop.call_ok("message", message("once", "bob", "hello")).await;
    assert_eq!(again["message_id"], first["message_id"], "{again} vs {first}");
    assert_eq!(again["peer"], first["peer"], "the retry's ack carries the original offsets: {again} vs {first}");
    // And concurrently from both nodes: stored once, one ack for both.
    let (p, l) = tokio::join!(
        phone.call_ok("message", message("twice", "bob", "hi")),
        laptop.call_ok("message", message("twice", "bob", "hi"))
    );
    assert_eq!(p["peer"], l["peer"], "{p} vs {l}");
    let m = inbox.event("message").await;
    assert_eq!((m["id"].clone(), m["signal_offset"].clone()), (json!("twice"), json!(2)), "{m}");
    inbox.expect_silence(400).await;
    a.shutdown().await;
    b.shutdown().await;
    cluster.stop();
}
