//! Live delivery across a broker outage: two nodes on one PostgreSQL database and a broker
//! server of the test's own, alice's device on node a and bob's on node b. While the broker is
//! out of reach, each sends the other messages (acked: the store is shared); once it is back,
//! each device gets every one of them, in offset order, none twice, although no later message
//! came to show it a gap. Two outages, for Redis and NATS each:
//!
//! - the server stops and starts again (both nodes reconnect, each re-reads its inboxes);
//! - only node a is cut off, through a relay the test severs, while b stays connected: a alone
//!   notices, re-reads its own inboxes, and its loss notice makes b re-read bob's.
//!
//! A missing server binary or database skips with a notice (and fails when `CI` is set).

// A build without a broker feature keeps the helpers its tests would use.
#![cfg_attr(not(all(feature = "redis", feature = "nats")), allow(dead_code, unused_imports))]

use std::sync::Arc;
use std::time::{Duration, Instant};

use courier::pubsub::ClusterConfig;
use serde_json::json;
use tokio::sync::watch;

use crate::cluster::{Join, OwnServer, node, ready};
use crate::support::db::TestDb;
use crate::support::devices::{Device, message, signup};
use crate::support::{TestServer, http};

/// Messages each user sends the other while the broker is out of reach.
const DURING: usize = 4;

/// `[cluster]` settings for `url` under `namespace`, retrying often so the test waits little.
fn settings(url: &str, namespace: &str) -> ClusterConfig {
    ClusterConfig {
        broker: url.to_owned(),
        namespace: namespace.to_owned(),
        reconnect_max_ms: 300,
        ..ClusterConfig::default()
    }
}

/// Polls `/readyz` until it reports the broker down: the node noticed the outage itself.
async fn not_ready(server: &TestServer) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = http(server.addr, "GET", "/readyz", &[], "").await;
        if status == 503 {
            assert!(body.contains("broker_unavailable"), "{body}");
            return;
        }
        assert!(Instant::now() < deadline, "/readyz still {status} with the broker out of reach: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `n` messages (ids `{prefix}-{k}`) from `from` to `to`, each acked; returns the
/// offsets they took in `to`'s log, from the acks.
async fn send(from: &mut Device, to: &str, prefix: &str, n: usize) -> Vec<i64> {
    let mut offsets = Vec::with_capacity(n);
    for k in 0..n {
        let ack = from.call_ok("message", message(&format!("{prefix}-{k}"), to, "sent in an outage")).await;
        let offset = ack["peer"]["offset"].as_str().and_then(|o| o.parse().ok());
        offsets.push(offset.unwrap_or_else(|| panic!("no peer offset in {ack}")));
    }
    offsets
}

/// Asserts that `device` gets the messages `{prefix}-0..` at `offsets`, in that order.
async fn receives(device: &mut Device, who: &str, prefix: &str, offsets: &[i64]) {
    let got = device.messages(offsets.len()).await;
    let seen: Vec<(String, i64)> = got
        .iter()
        .map(|m| (m["id"].as_str().unwrap_or_default().to_owned(), m["signal_offset"].as_i64().unwrap_or(-1)))
        .collect();
    let wanted: Vec<(String, i64)> =
        offsets.iter().enumerate().map(|(k, offset)| (format!("{prefix}-{k}"), *offset)).collect();
    assert_eq!(seen, wanted, "{who}: every message, in offset order");
}

/// A TCP relay to a broker server that the test can sever: severed, it closes every connection
/// through it and each new one at once, which is what a node sees of a network cut while the
/// server stays up for the others.
struct Relay {
    port: u16,
    severed: watch::Sender<bool>,
}

impl Relay {
    /// A relay on a free port to the server on `upstream`.
    async fn start(upstream: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port for the relay");
        let port = listener.local_addr().expect("bound").port();
        let (severed, watching) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut severed = watching.clone();
                if *severed.borrow() {
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = severed.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Relay { port, severed }
    }
}

/// How the test takes the broker away from the nodes, and gives it back.
enum Outage {
    /// The server itself stops: both nodes lose it.
    Server(OwnServer),
    /// Node a's relay is severed: only a loses it (the server stays up throughout).
    Relay { relay: Relay, _server: OwnServer },
}

impl Outage {
    fn begin(&mut self) {
        match self {
            Outage::Server(server) => server.down(),
            Outage::Relay { relay, .. } => {
                relay.severed.send_replace(true);
            }
        }
    }

    fn end(&mut self) {
        match self {
            Outage::Server(server) => server.up(),
            Outage::Relay { relay, .. } => {
                relay.severed.send_replace(false);
            }
        }
    }
}

/// The scenario: `a_url` and `b_url` are the nodes' ways to one server (the same, or a relay
/// for a), and `outage` takes it away and gives it back.
async fn no_gap_after(db: Arc<TestDb>, a_url: String, b_url: String, mut outage: Outage) {
    let namespace = format!("t{}", uuid::Uuid::new_v4().simple());
    let a = node(&db, &Join::Broker(settings(&a_url, &namespace)), "courier@a");
    let b = node(&db, &Join::Broker(settings(&b_url, &namespace)), "courier@b");
    for server in [&a, &b] {
        assert_eq!(ready(server).await["broker"], "up");
    }
    let (alice, bob) = (signup(&a, "alice").await, signup(&a, "bob").await);
    let (mut alice_phone, _) = Device::joined(&a, "alice", &alice, "phone", json!({})).await;
    let (mut bob_phone, _) = Device::joined(&b, "bob", &bob, "phone", json!({})).await;
    let before = send(&mut bob_phone, "alice", "before", 1).await;
    receives(&mut alice_phone, "alice", "before", &before).await;

    outage.begin();
    not_ready(&a).await;
    if matches!(outage, Outage::Server(_)) {
        not_ready(&b).await;
    } else {
        assert_eq!(ready(&b).await["broker"], "up", "only a is cut off");
    }
    let to_alice = send(&mut bob_phone, "alice", "to-alice", DURING).await;
    let to_bob = send(&mut alice_phone, "bob", "to-bob", DURING).await;
    outage.end();
    for server in [&a, &b] {
        assert_eq!(ready(server).await["broker"], "up");
    }

    // Nothing later arrives to show either device a gap: the fill comes from the resync.
    receives(&mut alice_phone, "alice", "to-alice", &to_alice).await;
    receives(&mut bob_phone, "bob", "to-bob", &to_bob).await;
    // Longer than the gap wait: no message comes a second time.
    alice_phone.expect_silence(400).await;
    bob_phone.expect_silence(50).await;
    // And live delivery goes on from there.
    let after = send(&mut bob_phone, "alice", "after", 1).await;
    receives(&mut alice_phone, "alice", "after", &after).await;
    assert!(after[0] > to_alice[DURING - 1], "{after:?} after {to_alice:?}");

    a.shutdown().await;
    b.shutdown().await;
}

/// Which outage a test stages.
#[derive(Clone, Copy)]
enum Staged {
    /// The server stops and starts again.
    Restart,
    /// Node a alone is cut off, through a relay; b reaches the server directly.
    CutOff,
}

/// Runs `staged` on a server of the test's own (`own`, else a skip) and a PostgreSQL database
/// of its own (else a skip).
async fn run(test: &str, own: fn(&str) -> Option<(OwnServer, String)>, staged: Staged) {
    let Some((server, url)) = own(test) else { return };
    let Some(db) = TestDb::postgres(test) else { return };
    let db = Arc::new(db);
    match staged {
        Staged::Restart => no_gap_after(db, url.clone(), url, Outage::Server(server)).await,
        Staged::CutOff => {
            let relay = Relay::start(server.port).await;
            let scheme = url.split_once("://").map_or("redis", |(scheme, _)| scheme);
            let a_url = format!("{scheme}://127.0.0.1:{}", relay.port);
            no_gap_after(db, a_url, url, Outage::Relay { relay, _server: server }).await;
        }
    }
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_leaves_no_gap_in_live_delivery() {
    run("a_redis_restart_leaves_no_gap_in_live_delivery", crate::cluster::own_redis, Staged::Restart).await;
}

#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_leaves_no_gap_in_live_delivery() {
    run("a_nats_restart_leaves_no_gap_in_live_delivery", crate::cluster::own_nats, Staged::Restart).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_redis_leaves_no_gap_on_either_node() {
    run("a_node_cut_off_from_redis_leaves_no_gap_on_either_node", crate::cluster::own_redis, Staged::CutOff).await;
}

#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_nats_leaves_no_gap_on_either_node() {
    run("a_node_cut_off_from_nats_leaves_no_gap_on_either_node", crate::cluster::own_nats, Staged::CutOff).await;
}
