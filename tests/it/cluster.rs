//! Two nodes in one process sharing one database, joined three ways: by the in-process broker
//! (`pubsub::MemoryCluster`, on both backends), and over real Redis and NATS servers (on
//! PostgreSQL, as a cluster must be): what a socket on one node does reaches sockets on the
//! other. The Redis and NATS brokers also run the broker contract (`pubsub::conformance`), and
//! its reconnection check: Redis's subscriber connections killed, and for both a server of the
//! test's own stopped and started again. A node name is claimed by one broker at a time.
//!
//! The servers are `COURIER_TEST_REDIS` and `COURIER_TEST_NATS` (default: the local ports), and
//! the restart tests' binaries `COURIER_TEST_REDIS_SERVER` and `COURIER_TEST_NATS_SERVER`
//! (default: Debian's paths). A test whose server does not answer (or binary is missing) says
//! so and passes, or fails when `CI` is set. Each run
//! takes a namespace of its own, so parallel runs on one server do not hear each other.

// A build without a broker feature keeps the helpers its tests would use.
#![cfg_attr(not(all(feature = "redis", feature = "nats")), allow(dead_code, unused_imports))]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};

use courier::pubsub::conformance::{check_broker, check_reconnects};
use courier::pubsub::{Broadcast, Broker, ClusterConfig, Inbound, InterestTaken, MemoryCluster};
use serde_json::{Value, json};

use crate::on_both_backends;
use crate::support::db::{TestDb, on_ci};
use crate::support::devices::{Device, message, signup};
use crate::support::{Client, Frame, TestServer, error_reply, http, ok_reply, test_config};

/// Held by every test that uses Redis: the reconnection check kills every subscriber
/// connection on the server (Redis names no connection's channels to pick one by), which would
/// cost a test running beside it the broadcasts sent meanwhile.
pub(crate) static REDIS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How a test's nodes are joined.
pub(crate) enum Join {
    /// By an in-process hub.
    Memory(MemoryCluster),
    /// By the broker these `[cluster]` settings name, chosen by the server as in production.
    Broker(ClusterConfig),
}

/// A node called `name`, joined by `join`, on `db`.
pub(crate) fn node(db: &Arc<TestDb>, join: &Join, name: &str) -> TestServer {
    node_with(db, join, name, test_config())
}

/// A node called `name`, joined by `join`, on `db`, with the rest of `config`.
pub(crate) fn node_with(db: &Arc<TestDb>, join: &Join, name: &str, mut config: courier::Config) -> TestServer {
    config.node = name.into();
    match join {
        Join::Memory(cluster) => {
            let broker = cluster.broker(name);
            TestServer::start_on(Arc::clone(db), config, move |c| c.broker(broker))
        }
        Join::Broker(cluster) => {
            config.cluster = Some(cluster.clone());
            TestServer::start_on(Arc::clone(db), config, |c| c)
        }
    }
}

/// `[cluster]` settings for the server named by `env` (else `default`) under a fresh
/// namespace; `None` with a notice when it does not answer, or a failure when `CI` is set.
fn broker_server(env: &str, default: &str, test: &str) -> Option<ClusterConfig> {
    let url = std::env::var(env).unwrap_or_else(|_| default.to_owned());
    let authority = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let host_port = authority.split('/').next().unwrap_or_default();
    let host_port = host_port.rsplit_once('@').map_or(host_port, |(_, hp)| hp);
    let answers = std::net::ToSocketAddrs::to_socket_addrs(host_port)
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok());
    if answers {
        let namespace = format!("t{}", uuid::Uuid::new_v4().simple());
        return Some(ClusterConfig { broker: url, namespace, ..ClusterConfig::default() });
    }
    assert!(!on_ci(), "CI is set but the server at {url} ({env}) does not answer: {test} cannot run");
    eprintln!("skipping {test}: nothing answers at {url} (set {env} to point at a server)");
    None
}

pub(crate) fn redis(test: &str) -> Option<ClusterConfig> {
    broker_server("COURIER_TEST_REDIS", "redis://127.0.0.1:6379", test)
}

pub(crate) fn nats(test: &str) -> Option<ClusterConfig> {
    broker_server("COURIER_TEST_NATS", "nats://127.0.0.1:4222", test)
}

/// One broker per node name, made from `cluster` as the server makes its own.
async fn brokers(cluster: &ClusterConfig, names: &[&str]) -> HashMap<String, Arc<dyn Broker>> {
    let mut brokers = HashMap::new();
    for name in names {
        brokers.insert((*name).to_owned(), cluster.connect(name).await.expect("the broker is made"));
    }
    brokers
}

/// Polls `/readyz` until it answers 200 (a networked broker connects in the background).
pub(crate) async fn ready(server: &TestServer) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http(server.addr, "GET", "/readyz", &[], "").await;
        let body: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("/readyz: {e}: {body}"));
        if status == 200 {
            return body;
        }
        assert!(std::time::Instant::now() < deadline, "/readyz still {status}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

on_both_backends!(rooms_and_messages_cross_nodes, over_memory);
async fn over_memory(db: Arc<TestDb>) {
    let cluster = MemoryCluster::start().expect("the hub starts");
    cross_nodes(db, &Join::Memory(cluster.clone())).await;
    cluster.stop();
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn rooms_and_messages_cross_nodes_over_redis() {
    let test = "rooms_and_messages_cross_nodes_over_redis";
    let _serial = REDIS.lock().await;
    over_broker(redis(test), test).await;
}

#[cfg(feature = "nats")]
#[tokio::test]
async fn rooms_and_messages_cross_nodes_over_nats() {
    let test = "rooms_and_messages_cross_nodes_over_nats";
    over_broker(nats(test), test).await;
}

/// The two-node scenario over the broker `cluster` names (if its server answers), on a
/// PostgreSQL database of its own.
#[cfg(any(feature = "redis", feature = "nats"))]
async fn over_broker(cluster: Option<ClusterConfig>, test: &str) {
    let Some(cluster) = cluster else { return };
    let Some(db) = TestDb::postgres(test) else { return };
    cross_nodes(Arc::new(db), &Join::Broker(cluster)).await;
}

async fn cross_nodes(db: Arc<TestDb>, join: &Join) {
    let (a, b) = (node(&db, join, "courier@a"), node(&db, join, "courier@b"));
    for server in [&a, &b] {
        assert_eq!(ready(server).await["broker"], "up");
    }

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
}

#[cfg(feature = "redis")]
#[actix::test]
async fn the_redis_broker_keeps_the_contract_and_resubscribes_after_a_kill() {
    let test = "the_redis_broker_keeps_the_contract";
    let Some(cluster) = redis(test) else { return };
    let _serial = REDIS.lock().await;
    let made = brokers(&cluster, &["conformance-a", "conformance-b"]).await;
    check_broker(&move |name| Arc::clone(&made[name])).await;

    let made = brokers(&cluster, &["reconnect-a", "reconnect-b"]).await;
    let url = cluster.broker.clone();
    let cut = move || -> futures_util::future::BoxFuture<'static, ()> {
        let url = url.clone();
        Box::pin(async move {
            let client = redis::Client::open(url).expect("a redis URL");
            let mut admin = client.get_multiplexed_async_connection().await.expect("an admin connection");
            let killed: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("pubsub")
                .query_async(&mut admin)
                .await
                .expect("killed");
            assert!(killed >= 1, "the subscriber connection was there to kill");
        })
    };
    check_reconnects(&move |name| Arc::clone(&made[name]), &cut).await;
}

#[cfg(feature = "nats")]
#[actix::test]
async fn the_nats_broker_keeps_the_contract() {
    let Some(cluster) = nats("the_nats_broker_keeps_the_contract") else { return };
    let made = brokers(&cluster, &["conformance-a", "conformance-b"]).await;
    check_broker(&move |name| Arc::clone(&made[name])).await;
}

/// PostgreSQL only: a node whose broker cannot reach its server is not ready, and says why.
#[cfg(feature = "redis")]
#[tokio::test]
async fn readyz_reports_a_broker_that_is_down() {
    let test = "readyz_reports_a_broker_that_is_down";
    let Some(db) = TestDb::postgres(test) else { return };
    // A port nothing listens on: the broker retries in the background and the node still starts.
    let cluster = ClusterConfig { broker: "redis://127.0.0.1:9".into(), ..ClusterConfig::default() };
    let server = node(&Arc::new(db), &Join::Broker(cluster), "courier@alone");
    let (status, body) = http(server.addr, "GET", "/readyz", &[], "").await;
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(status, 503, "{body}");
    assert_eq!((body["error"].clone(), body["broker"].clone()), (json!("broker_unavailable"), json!("down")), "{body}");
    server.shutdown().await;
}

/// A broker with a SQLite database is refused at start: other nodes could not share the file.
#[tokio::test]
async fn a_broker_on_sqlite_is_refused_at_start() {
    let mut config = test_config();
    let db = TestDb::sqlite();
    config.database_url = db.url.clone();
    config.cluster = Some(ClusterConfig { broker: "redis://127.0.0.1:6379".into(), ..ClusterConfig::default() });
    let refused = tokio::task::spawn_blocking(move || {
        actix_web::rt::System::new().block_on(async move { courier::Courier::new(config).start().await.err() })
    })
    .await
    .expect("the start ran");
    let err = refused.expect("refused").to_string();
    assert!(err.contains("several nodes need PostgreSQL"), "{err}");
}

/// A broker server of one test's own, on a free port, so the test can stop and restart it
/// without touching the shared one; stopped when dropped.
pub(crate) struct OwnServer {
    binary: String,
    args: Vec<String>,
    /// The port it listens on.
    pub(crate) port: u16,
    child: Option<std::process::Child>,
}

impl OwnServer {
    /// Starts `binary` (or the one `env` names) with `args` and the port after them; `None`
    /// with a notice when there is no such binary, or a failure when `CI` is set.
    fn start(env: &str, binary: &str, args: &[&str], test: &str) -> Option<OwnServer> {
        let binary = std::env::var(env).unwrap_or_else(|_| binary.into());
        if !std::path::Path::new(&binary).exists() {
            assert!(!on_ci(), "CI is set but {binary} is missing: {test} cannot run");
            eprintln!("skipping {test}: no {binary} (set {env})");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let args = args.iter().map(|a| (*a).to_owned()).chain([port.to_string()]).collect();
        let mut own = OwnServer { binary, args, port, child: None };
        own.up();
        Some(own)
    }

    /// Starts the server and waits until it takes connections.
    pub(crate) fn up(&mut self) {
        let child = std::process::Command::new(&self.binary)
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the server starts");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "{} on {} did not come up", self.binary, self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (this test's own child process).
    pub(crate) fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.down();
    }
}

/// A `redis-server` of the test's own (`COURIER_TEST_REDIS_SERVER`), and its URL.
#[cfg(feature = "redis")]
pub(crate) fn own_redis(test: &str) -> Option<(OwnServer, String)> {
    let args = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--port"];
    let server = OwnServer::start("COURIER_TEST_REDIS_SERVER", "/usr/bin/redis-server", &args, test)?;
    let url = format!("redis://127.0.0.1:{}", server.port);
    Some((server, url))
}

/// A `nats-server` of the test's own (`COURIER_TEST_NATS_SERVER`), and its URL.
#[cfg(feature = "nats")]
pub(crate) fn own_nats(test: &str) -> Option<(OwnServer, String)> {
    let server =
        OwnServer::start("COURIER_TEST_NATS_SERVER", "/usr/sbin/nats-server", &["-a", "127.0.0.1", "-p"], test)?;
    let url = format!("nats://127.0.0.1:{}", server.port);
    Some((server, url))
}

/// Runs the reconnection contract over brokers on `server` at `url`, the cut being the server
/// going away (until the brokers notice) and coming back on the same port.
async fn restarts(server: OwnServer, url: String) {
    let cluster = ClusterConfig { broker: url, namespace: "restart".into(), ..ClusterConfig::default() };
    let made = brokers(&cluster, &["reconnect-a", "reconnect-b"]).await;
    let watched: Vec<Arc<dyn Broker>> = made.values().cloned().collect();
    let server = Arc::new(std::sync::Mutex::new(server));
    let cut = move || -> futures_util::future::BoxFuture<'static, ()> {
        let (server, watched) = (Arc::clone(&server), watched.clone());
        Box::pin(async move {
            server.lock().unwrap_or_else(std::sync::PoisonError::into_inner).down();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while watched.iter().any(|b| b.connected()) {
                assert!(std::time::Instant::now() < deadline, "a broker did not notice its server go");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            server.lock().unwrap_or_else(std::sync::PoisonError::into_inner).up();
        })
    };
    check_reconnects(&move |name| Arc::clone(&made[name]), &cut).await;
}

/// The NATS server goes away and comes back: the brokers notice (`connected` turns false),
/// reconnect by themselves, re-subscribe, and delivery resumes.
#[cfg(feature = "nats")]
#[actix::test]
async fn the_nats_broker_resubscribes_after_its_server_restarts() {
    let test = "the_nats_broker_resubscribes_after_its_server_restarts";
    let Some((server, url)) = own_nats(test) else { return };
    restarts(server, url).await;
}

/// The same for Redis, whose publisher connection (which `CLIENT KILL TYPE pubsub` spares)
/// must come back too.
#[cfg(feature = "redis")]
#[actix::test]
async fn the_redis_broker_resubscribes_after_its_server_restarts() {
    let test = "the_redis_broker_resubscribes_after_its_server_restarts";
    let Some((server, url)) = own_redis(test) else { return };
    restarts(server, url).await;
}

/// A node whose broker server is down when it starts is not ready, and becomes ready once the
/// server is up, with nothing published meanwhile (a node out of rotation broadcasts nothing).
async fn connects_late(mut server: OwnServer, url: String) {
    server.down();
    let cluster = ClusterConfig { broker: url, namespace: "late".into(), ..ClusterConfig::default() };
    let made = brokers(&cluster, &["late"]).await;
    let node = courier::pubsub::PubSub::start(1, Arc::clone(&made["late"]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!node.broker_connected(), "no server, no connection");
    server.up();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !node.broker_connected() {
        assert!(std::time::Instant::now() < deadline, "the broker did not connect once its server was up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.stop();
}

#[cfg(feature = "redis")]
#[actix::test]
async fn a_redis_broker_started_before_its_server_connects_once_it_is_up() {
    let test = "a_redis_broker_started_before_its_server_connects_once_it_is_up";
    let Some((server, url)) = own_redis(test) else { return };
    connects_late(server, url).await;
}

#[cfg(feature = "nats")]
#[actix::test]
async fn a_nats_broker_started_before_its_server_connects_once_it_is_up() {
    let test = "a_nats_broker_started_before_its_server_connects_once_it_is_up";
    let Some((server, url)) = own_nats(test) else { return };
    connects_late(server, url).await;
}

/// A node's broker that can be cut from the others: once cut, nothing the node publishes
/// leaves it (heartbeats, deltas, diffs, its goodbye), which is what the other nodes see of a
/// process killed with SIGKILL.
struct Severable {
    inner: Arc<dyn Broker>,
    cut: Arc<AtomicBool>,
}

impl Broker for Severable {
    fn node(&self) -> &str {
        self.inner.node()
    }
    fn start(&self, inbound: Inbound) {
        self.inner.start(inbound);
    }
    fn interest(&self, topic: &str, interested: bool) -> InterestTaken {
        self.inner.interest(topic, interested)
    }
    fn publish(&self, broadcast: &Arc<Broadcast>) {
        if !self.cut.load(Ordering::SeqCst) {
            self.inner.publish(broadcast);
        }
    }
    fn connected(&self) -> bool {
        self.inner.connected()
    }
}

pub(crate) const ADMIN_TOKEN: &str = "presence-admin-token";

/// A node called `name` for the presence tests: fast heartbeats and a short node timeout, an
/// admin token, and a broker that `cut` severs.
pub(crate) async fn presence_node(db: &Arc<TestDb>, join: &Join, name: &str, cut: &Arc<AtomicBool>) -> TestServer {
    let mut config = test_config();
    config.node = name.into();
    config.admin.token = Some(ADMIN_TOKEN.into());
    config.presence.heartbeat_ms = 100;
    config.presence.node_timeout_ms = 1_500;
    let inner: Arc<dyn Broker> = match join {
        Join::Memory(cluster) => cluster.broker(name),
        Join::Broker(cluster) => {
            config.cluster = Some(cluster.clone());
            cluster.connect(name).await.expect("the broker is made")
        }
    };
    let broker: Arc<dyn Broker> = Arc::new(Severable { inner, cut: Arc::clone(cut) });
    TestServer::start_on(Arc::clone(db), config, move |c| c.broker(broker))
}

/// A topic's `presence_state` on `server`, as the admin API lists it.
pub(crate) async fn listed(server: &TestServer, topic: &str) -> BTreeSet<String> {
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let path = format!("/admin/api/topics/{}/presence", topic.replace(':', "%3A"));
    let (status, body) = http(server.addr, "GET", &path, &[("Authorization", bearer.as_str())], "").await;
    assert_eq!(status, 200, "{body}");
    let state: Value = serde_json::from_str(&body).expect("JSON");
    state.as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default()
}

/// Polls until `server` lists exactly `keys` on `topic`, within a generous bound.
async fn lists(server: &TestServer, topic: &str, keys: &BTreeSet<String>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = listed(server, topic).await;
        if now == *keys {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{topic} lists {now:?}, not {keys:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a phoenix.js client knows of one topic: the refs per key, from `presence_state` and
/// the `presence_diff`s after it, plus every diff as it came.
#[derive(Default)]
pub(crate) struct View {
    keys: BTreeMap<String, BTreeSet<String>>,
    pub(crate) diffs: Vec<Value>,
}

fn refs_by_key(state: &Value) -> impl Iterator<Item = (String, Vec<String>)> + '_ {
    state.as_object().into_iter().flatten().map(|(key, presence)| {
        let metas = presence["metas"].as_array().cloned().unwrap_or_default();
        (key.clone(), metas.iter().filter_map(|m| m["phx_ref"].as_str().map(str::to_owned)).collect())
    })
}

impl View {
    pub(crate) fn apply(&mut self, frame: &Value) {
        match frame[3].as_str() {
            Some("presence_state") => {
                self.keys = refs_by_key(&frame[4]).map(|(k, r)| (k, r.into_iter().collect())).collect();
            }
            Some("presence_diff") => {
                for (key, refs) in refs_by_key(&frame[4]["joins"]) {
                    self.keys.entry(key).or_default().extend(refs);
                }
                for (key, refs) in refs_by_key(&frame[4]["leaves"]) {
                    if let Some(held) = self.keys.get_mut(&key) {
                        held.retain(|r| !refs.contains(r));
                        if held.is_empty() {
                            self.keys.remove(&key);
                        }
                    }
                }
                self.diffs.push(frame[4].clone());
            }
            _ => {}
        }
    }

    pub(crate) fn key_set(&self) -> BTreeSet<String> {
        self.keys.keys().cloned().collect()
    }
}

/// Reads `client`'s frames into `view` until it shows exactly `keys`, within a generous bound.
pub(crate) async fn sees(client: &mut Client, view: &mut View, keys: &BTreeSet<String>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while view.key_set() != *keys {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.recv_within(left).await {
            Some(Frame::Json(frame)) => view.apply(&frame),
            other => panic!("the view is {:?}, not {keys:?}; then {other:?}", view.key_set()),
        }
    }
}

/// The anonymous presence keys of the sockets of the node called `node` in `state`.
pub(crate) fn keys_of(state: &BTreeSet<String>, node: &str) -> BTreeSet<String> {
    state.iter().filter(|k| k.starts_with(&format!("anonymous:{node}/"))).cloned().collect()
}

fn set(keys: &[&BTreeSet<String>]) -> BTreeSet<String> {
    keys.iter().flat_map(|k| k.iter().cloned()).collect()
}

/// Presence across two nodes: each lists the other's presences and hears its changes; a node
/// cut off (as if killed) has its presences leave the other within the node timeout, as one
/// diff per topic; the same node name started again brings nothing of the dead process back.
async fn presence_across_nodes(db: Arc<TestDb>, join: &Join) {
    let (cut_a, never) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let a = presence_node(&db, join, "courier@a", &cut_a).await;
    let b = presence_node(&db, join, "courier@b", &never).await;
    for server in [&a, &b] {
        assert_eq!(ready(server).await["broker"], "up");
    }
    let topic = "room:presence";

    // Two sockets on a, one on b, in one room: both nodes list all three.
    let mut on_a = Vec::new();
    for _ in 0..2 {
        let mut client = a.client().await;
        client.join_ok(topic, "1").await;
        on_a.push(client);
    }
    let mut on_a_other = a.client().await;
    on_a_other.join_ok("room:other", "1").await;
    let a_keys = keys_of(&listed(&a, topic).await, "courier@a");
    let a_other = keys_of(&listed(&a, "room:other").await, "courier@a");
    assert_eq!((a_keys.len(), a_other.len()), (2, 1), "a's own");
    lists(&b, topic, &a_keys).await;
    lists(&b, "room:other", &a_other).await;
    let mut on_b = b.client().await.see_presence();
    let mut b_other = b.client().await.see_presence();
    on_b.join_ok(topic, "1").await;
    b_other.join_ok("room:other", "1").await;
    let (mut view_b, mut view_b_other) = (View::default(), View::default());
    let first = on_b.recv_json().await;
    assert_eq!(first[3], "presence_state", "{first}");
    view_b.apply(&first);
    assert!(a_keys.is_subset(&view_b.key_set()), "b's presence_state lists a's presences: {first}");
    // b's own presence was tracked before its state was taken: in the state, or in a diff after.
    let b_keys = keys_of(&listed(&b, topic).await, "courier@b");
    assert_eq!(b_keys.len(), 1);
    let everyone = set(&[&a_keys, &b_keys]);
    sees(&mut on_b, &mut view_b, &everyone).await;
    lists(&a, topic, &everyone).await;
    let other_everyone = set(&[&a_other, &keys_of(&listed(&b, "room:other").await, "courier@b")]);
    sees(&mut b_other, &mut view_b_other, &other_everyone).await;

    // A change on a reaches b as a diff with Phoenix's shapes.
    let mut third = a.client().await;
    third.join_ok(topic, "1").await;
    let with_third = listed(&a, topic).await;
    assert_eq!(with_third.len(), 4);
    sees(&mut on_b, &mut view_b, &with_third).await;
    let joined = view_b.diffs.last().expect("a join diff").clone();
    let new_key = with_third.difference(&everyone).next().expect("the new key").clone();
    assert!(joined["joins"][&new_key]["metas"][0]["phx_ref"].is_string(), "{joined}");
    third.close().await;
    sees(&mut on_b, &mut view_b, &everyone).await;

    // a goes silent, as if killed: b drops its presences within the timeout, as one diff per
    // topic with all of them.
    cut_a.store(true, Ordering::SeqCst);
    view_b.diffs.clear();
    sees(&mut on_b, &mut view_b, &b_keys).await;
    let leaves: Vec<&Value> =
        view_b.diffs.iter().filter(|d| d["leaves"].as_object().is_some_and(|l| !l.is_empty())).collect();
    assert_eq!(leaves.len(), 1, "one diff for the dead node's presences: {leaves:?}");
    let left: BTreeSet<String> =
        leaves[0]["leaves"].as_object().map(|l| l.keys().cloned().collect()).unwrap_or_default();
    assert_eq!(left, a_keys, "every presence of a in the one diff");
    sees(&mut b_other, &mut view_b_other, &keys_of(&other_everyone, "courier@b")).await;
    lists(&b, topic, &b_keys).await;

    // a ends (nothing of its shutdown reaches b) and starts again under the same name: b lists
    // only what the new process tracks, and the new process lists b's presence and its own.
    drop(on_a);
    drop(on_a_other);
    a.shutdown().await;
    let a_again = presence_node(&db, join, "courier@a", &never).await;
    assert_eq!(ready(&a_again).await["broker"], "up");
    lists(&a_again, topic, &b_keys).await;
    let mut reborn = a_again.client().await;
    reborn.join_ok(topic, "1").await;
    let now_a = keys_of(&listed(&a_again, topic).await, "courier@a");
    assert_eq!(now_a.len(), 1);
    assert!(now_a.is_disjoint(&a_keys), "a new process, new keys");
    let after = set(&[&now_a, &b_keys]);
    lists(&b, topic, &after).await;
    lists(&a_again, topic, &after).await;
    sees(&mut on_b, &mut view_b, &after).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(listed(&b, topic).await, after, "nothing of the dead process came back");

    a_again.shutdown().await;
    lists(&b, topic, &b_keys).await;
    b.shutdown().await;
}

on_both_backends!(presence_crosses_nodes, presence_over_memory);
async fn presence_over_memory(db: Arc<TestDb>) {
    let cluster = MemoryCluster::start().expect("the hub starts");
    presence_across_nodes(db, &Join::Memory(cluster.clone())).await;
    cluster.stop();
}

/// The presence scenario over the broker `cluster` names, on a PostgreSQL database of its own.
#[cfg(any(feature = "redis", feature = "nats"))]
async fn presence_over_broker(cluster: Option<ClusterConfig>, test: &str) {
    let Some(cluster) = cluster else { return };
    let Some(db) = TestDb::postgres(test) else { return };
    presence_across_nodes(Arc::new(db), &Join::Broker(cluster)).await;
}

/// Two brokers given one node name on one server and namespace: the second's claim is refused
/// while the first holds it, and granted once the first gives it back (as at a shutdown).
async fn names_are_claimed(cluster: Option<ClusterConfig>) {
    let Some(cluster) = cluster else { return };
    let (first, second) = (brokers(&cluster, &["courier@same"]).await, brokers(&cluster, &["courier@same"]).await);
    let (first, second) = (&first["courier@same"], &second["courier@same"]);
    first.claim().await.expect("a free name is claimed");
    let refused = second.claim().await.expect_err("a held name is refused").to_string();
    assert!(refused.contains("node name courier@same is already running on this cluster"), "{refused}");
    first.release().await;
    second.claim().await.expect("a released name is free at once");
    second.release().await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn presence_crosses_nodes_over_redis() {
    let test = "presence_crosses_nodes_over_redis";
    let _serial = REDIS.lock().await;
    presence_over_broker(redis(test), test).await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn a_node_name_is_claimed_once_over_redis() {
    let _serial = REDIS.lock().await;
    names_are_claimed(redis("a_node_name_is_claimed_once_over_redis")).await;
}

#[cfg(feature = "nats")]
#[tokio::test]
async fn presence_crosses_nodes_over_nats() {
    let test = "presence_crosses_nodes_over_nats";
    presence_over_broker(nats(test), test).await;
}

/// The nodes' replication topic is closed: a client's join is refused as unmatched (even with a
/// channel that would match anything), and an operator can neither broadcast on it nor see it.
#[tokio::test]
async fn the_replication_topic_is_closed_to_clients_and_operators() {
    let cluster = MemoryCluster::start().expect("the hub starts");
    let db = Arc::new(TestDb::sqlite());
    let never = Arc::new(AtomicBool::new(false));
    let server = presence_node(&db, &Join::Memory(cluster.clone()), "courier@closed", &never).await;
    let mut client = server.client().await;
    client.send(json!(["1", "1", "$courier:presence", "phx_join", {}])).await;
    let refused = error_reply(None, "1", "$courier:presence", "unmatched topic", "unmatched_topic");
    assert_eq!(client.recv_json().await, refused);
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let headers = [("Authorization", bearer.as_str()), ("Content-Type", "application/json")];
    let body = json!({"topic": "$courier:presence", "event": "forged", "payload": {}}).to_string();
    let (status, reply) = http(server.addr, "POST", "/admin/api/broadcast", &headers, &body).await;
    assert_eq!(status, 400, "{reply}");
    let (status, page) = http(server.addr, "GET", "/admin/api/topics?prefix=", &headers[..1], "").await;
    assert_eq!(status, 200, "{page}");
    assert!(!page.contains("$courier:"), "the topic list hides the nodes' own: {page}");
    server.shutdown().await;
    cluster.stop();
}

#[cfg(feature = "nats")]
#[tokio::test]
async fn a_node_name_is_claimed_once_over_nats() {
    names_are_claimed(nats("a_node_name_is_claimed_once_over_nats")).await;
}
