//! Presence replication between two in-process nodes, past what one broker message holds and
//! across a user's devices: a room whose state is over a megabyte crosses NATS (whose default
//! `max_payload` is 1 MB) both as it grows and as one full state to a restarted node; and a
//! `presence:<eid>` watcher on either node sees a user go offline, with a last-seen time, only
//! when the user's last device leaves, wherever it was, or the node holding it dies.

// A build without the NATS feature keeps the helpers its test would use.
#![cfg_attr(not(feature = "nats"), allow(dead_code, unused_imports))]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use courier::pubsub::{ClusterConfig, MemoryCluster};
use serde_json::{Value, json};

use crate::cluster::{ADMIN_TOKEN, Join, keys_of, listed, nats, presence_node, ready};
use crate::on_both_backends;
use crate::support::db::TestDb;
use crate::support::devices::{Device, signup};
use crate::support::{Client, TestServer, http, test_config};

/// Sockets in the big room: with [`long_name`], about 1.2 MB of presence state.
const MEMBERS: usize = 240;

/// A node name long enough that each presence of its sockets (whose key and meta both hold
/// it) costs about 5 KB, so a few hundred sockets make a state over 1 MB; still short enough
/// for NATS's 4 KB control line, which carries the node's name claim subject.
fn long_name(node: &str) -> String {
    format!("courier@{node}-{}", "x".repeat(2_400))
}

/// A node on `cluster` whose sockets may be sent frames of a few megabytes.
fn roomy_node(db: &Arc<TestDb>, cluster: &ClusterConfig, name: &str) -> TestServer {
    let mut config = test_config();
    config.node = name.into();
    config.admin.token = Some(ADMIN_TOKEN.into());
    config.presence.heartbeat_ms = 100;
    config.presence.node_timeout_ms = 1_500;
    config.socket.outbound_queue = 16_384;
    config.socket.outbound_queue_bytes = 64 << 20;
    config.cluster = Some(cluster.clone());
    TestServer::start_on(Arc::clone(db), config, |c| c)
}

/// How many bytes `topic`'s presence state is on `server`, as the admin API lists it.
async fn state_bytes(server: &TestServer, topic: &str) -> usize {
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let path = format!("/admin/api/topics/{}/presence", topic.replace(':', "%3A"));
    let (status, body) = http(server.addr, "GET", &path, &[("Authorization", bearer.as_str())], "").await;
    assert_eq!(status, 200, "{body}");
    body.len()
}

/// Polls `server`'s listing of `topic` until `done` accepts it, within a generous bound;
/// returns it. A failure tells what `done` says of the last listing (each key is kilobytes long).
async fn poll_listing(
    server: &TestServer,
    topic: &str,
    done: impl Fn(&BTreeSet<String>) -> Result<(), String>,
) -> BTreeSet<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = listed(server, topic).await;
        match done(&now) {
            Ok(()) => return now,
            Err(why) => assert!(std::time::Instant::now() < deadline, "{topic}: {why}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls until `server` lists exactly `keys` on `topic`.
async fn converges(server: &TestServer, topic: &str, keys: &BTreeSet<String>) {
    poll_listing(server, topic, |now| {
        let (missing, extra) = (keys.difference(now).count(), now.difference(keys).count());
        if (missing, extra) == (0, 0) { Ok(()) } else { Err(format!("{missing} keys missing, {extra} extra")) }
    })
    .await;
}

/// Polls until `server` lists `count` keys on `topic`; returns them.
async fn lists_count(server: &TestServer, topic: &str, count: usize) -> BTreeSet<String> {
    poll_listing(server, topic, |now| {
        if now.len() == count { Ok(()) } else { Err(format!("{} keys, not {count}", now.len())) }
    })
    .await
}

/// A room whose state is over 1 MB reaches the other node over NATS while it grows (deltas of
/// the joins only), reaches that node again as a whole once it restarts (a full state in
/// parts), and loses members there as they leave. With whole-topic deltas and a one-message
/// full state, NATS refuses the messages past 1 MB and the other node never catches up.
#[cfg(feature = "nats")]
#[tokio::test]
async fn a_room_state_over_a_megabyte_crosses_nats() {
    let test = "a_room_state_over_a_megabyte_crosses_nats";
    let Some(cluster) = nats(test) else { return };
    let Some(db) = TestDb::postgres(test) else { return };
    let db = Arc::new(db);
    let (name_a, name_b) = (long_name("a"), long_name("b"));
    let a = roomy_node(&db, &cluster, &name_a);
    let b = roomy_node(&db, &cluster, &name_b);
    for server in [&a, &b] {
        assert_eq!(ready(server).await["broker"], "up");
    }
    let topic = "room:big";
    let mut members = Vec::new();
    for _ in 0..MEMBERS {
        let mut client = a.client().await;
        client.join_ok(topic, "1").await;
        // Never read again: what it is sent (about 2 MB in all) waits in its queue, which this
        // node allows, instead of costing the test's one thread a parse of every frame.
        members.push(client);
    }
    let keys = lists_count(&a, topic, MEMBERS).await;
    let bytes = state_bytes(&a, topic).await;
    assert!(bytes > 1 << 20, "the state is over 1 MiB: {bytes} bytes");

    // Grown by deltas.
    converges(&b, topic, &keys).await;

    // A new process of b asks for a's full state, which comes in parts.
    b.shutdown().await;
    let b = roomy_node(&db, &cluster, &name_b);
    assert_eq!(ready(&b).await["broker"], "up");
    converges(&b, topic, &keys).await;
    let mut watcher = b.client().await.see_presence();
    watcher.join_ok(topic, "1").await;
    let state = loop {
        let frame = watcher.recv_json().await;
        if frame[3] == "presence_state" {
            break frame;
        }
    };
    let seen: BTreeSet<String> = state[4].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
    assert!(keys.is_subset(&seen), "a socket on b is handed every member of a ({} of {MEMBERS})", seen.len());

    // Members leave a: b follows. The watcher on b is a member too, listed on a first, so a's
    // count only goes down from here.
    let watcher_keys = keys_of(&listed(&b, topic).await, &name_b);
    assert_eq!(watcher_keys.len(), 1);
    converges(&a, topic, &keys.union(&watcher_keys).cloned().collect()).await;
    drop(members.drain(..MEMBERS / 2).collect::<Vec<_>>());
    let left = lists_count(&a, topic, MEMBERS - MEMBERS / 2 + 1).await;
    converges(&b, topic, &left).await;

    drop((watcher, members));
    a.shutdown().await;
    b.shutdown().await;
}

/// Milliseconds since the epoch, by this host's clock (the servers' too).
fn now_ms() -> i64 {
    courier::clock::system().now_millis()
}

/// A watcher of `presence:alice`: the keys it was told of, from `presence_state` and diffs.
struct Watcher {
    client: Client,
    keys: BTreeSet<String>,
}

impl Watcher {
    /// bob's `device` on `server`, joined to `presence:alice`, past its first status (offline).
    async fn join(server: &TestServer, token: &str, device: &str) -> Watcher {
        let mut client = Device::connect(server, token, device).await.see_presence();
        client.send(json!(["1", "1", "presence:alice", "phx_join", {}])).await;
        let reply = client.recv_json().await;
        assert_eq!(reply[4]["status"], "ok", "{reply}");
        let mut watcher = Watcher { client, keys: BTreeSet::new() };
        let first = watcher.until(|frame, _| frame[3] == "status").await;
        assert_eq!(first.last().map(|f| f[4]["online"].clone()), Some(json!(false)), "{first:?}");
        watcher
    }

    /// Reads frames until one (once applied) satisfies `done`; returns every frame read.
    async fn until(&mut self, done: impl Fn(&Value, &BTreeSet<String>) -> bool) -> Vec<Value> {
        let mut frames = Vec::new();
        loop {
            let frame = self.client.recv_json().await;
            match frame[3].as_str() {
                Some("presence_state") => {
                    self.keys = frame[4].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
                }
                Some("presence_diff") => {
                    let keys = |side: &str| -> Vec<String> {
                        frame[4][side].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default()
                    };
                    self.keys.extend(keys("joins"));
                    // One meta per device: a leave without a join of the same key is a departure.
                    for key in keys("leaves") {
                        if frame[4]["joins"].get(&key).is_none() {
                            self.keys.remove(&key);
                        }
                    }
                }
                _ => {}
            }
            let finished = done(&frame, &self.keys);
            frames.push(frame);
            if finished {
                return frames;
            }
        }
    }

    /// Reads until `done`, asserting that no `status` came meanwhile.
    async fn quietly_until(&mut self, what: &str, done: impl Fn(&Value, &BTreeSet<String>) -> bool) {
        let frames = self.until(done).await;
        let statuses: Vec<&Value> = frames.iter().filter(|f| f[3] == "status").collect();
        assert!(statuses.is_empty(), "{what}: the user's status must not change: {statuses:?}");
    }

    /// Reads until the next `status`; returns its payload and the keys known when it came.
    async fn status(&mut self) -> (Value, BTreeSet<String>) {
        let frames = self.until(|frame, _| frame[3] == "status").await;
        (frames.last().map(|f| f[4].clone()).unwrap_or_default(), self.keys.clone())
    }
}

fn device_set(devices: &[&str]) -> BTreeSet<String> {
    devices.iter().map(|d| (*d).to_owned()).collect()
}

/// alice has a device on each of two nodes, and bob watches her from both. A device leaving
/// while the other stays changes nothing of her status on either node (no offline, no
/// last-seen); the last one leaving makes her offline everywhere with the time it left; and
/// her last device's node dying does too, once the node timeout tells the other node.
async fn devices_on_two_nodes(db: Arc<TestDb>) {
    let hub = MemoryCluster::start().expect("the hub starts");
    let join = Join::Memory(hub.clone());
    let (never, cut_b) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let a = presence_node(&db, &join, "courier@a", &never).await;
    let b = presence_node(&db, &join, "courier@b", &cut_b).await;
    let (alice, bob) = (signup(&a, "alice").await, signup(&a, "bob").await);
    let mut on_a = Watcher::join(&a, &bob, "watch-a").await;
    let mut on_b = Watcher::join(&b, &bob, "watch-b").await;

    // The phone on a: online on both nodes.
    let (phone, _) = Device::joined(&a, "alice", &alice, "phone", json!({})).await;
    for watcher in [&mut on_a, &mut on_b] {
        let (status, keys) = watcher.status().await;
        assert_eq!(status["online"], true, "{status}");
        assert_eq!(keys, device_set(&["phone"]));
    }
    // The laptop on b, then the phone leaves: still online, on both nodes.
    let (mut laptop, _) = Device::joined(&b, "alice", &alice, "laptop", json!({})).await;
    for watcher in [&mut on_a, &mut on_b] {
        watcher.quietly_until("a second device", |_, keys| keys.contains("laptop")).await;
    }
    drop(phone);
    for watcher in [&mut on_a, &mut on_b] {
        watcher.quietly_until("the phone leaving", |_, keys| !keys.contains("phone")).await;
    }
    // Had the phone's leave turned her offline, that status would come before this diff.
    laptop.call_ok("presence", json!({"status": "away"})).await;
    for watcher in [&mut on_a, &mut on_b] {
        watcher
            .quietly_until("the phone leaving", |frame, _| {
                frame[3] == "presence_diff" && frame[4]["joins"]["laptop"]["metas"][0]["status"] == "away"
            })
            .await;
    }

    // The laptop, her last device, leaves: offline on both nodes, last seen as it left.
    let before = now_ms();
    drop(laptop);
    for watcher in [&mut on_a, &mut on_b] {
        let (status, keys) = watcher.status().await;
        assert_eq!(status["online"], false, "{status}");
        assert!(status["last_seen"].as_i64().is_some_and(|t| t >= before), "last seen when it left: {status}");
        assert!(keys.is_empty(), "the status follows the leave: {keys:?}");
    }

    // Again, then the phone leaves and b, holding the laptop, dies: offline on a once the
    // node timeout removes the laptop, not when the phone left.
    let (phone, _) = Device::joined(&a, "alice", &alice, "phone", json!({})).await;
    let (status, _) = on_a.status().await;
    assert_eq!(status["online"], true, "{status}");
    let (_laptop, _) = Device::joined(&b, "alice", &alice, "laptop", json!({})).await;
    on_a.quietly_until("a second device", |_, keys| keys.contains("laptop")).await;
    drop(phone);
    on_a.quietly_until("the phone leaving", |_, keys| !keys.contains("phone")).await;
    let cut_at = now_ms();
    cut_b.store(true, Ordering::SeqCst);
    let (status, keys) = on_a.status().await;
    assert_eq!(status["online"], false, "{status}");
    assert!(keys.is_empty(), "offline only once the laptop left with its node: {keys:?}");
    assert!(status["last_seen"].as_i64().is_some_and(|t| t >= cut_at), "last seen when its node went: {status}");

    drop((on_a, on_b));
    a.shutdown().await;
    b.shutdown().await;
    hub.stop();
}

on_both_backends!(a_user_is_offline_only_once_its_last_device_on_any_node_is_gone, devices_on_two_nodes);
