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

use courier::pubsub::conformance::{check_broker, check_reconnects};
use courier::pubsub::{Broker, ClusterConfig, MemoryCluster};
use serde_json::{Value, json};

use crate::on_both_backends;
use crate::support::db::{TestDb, on_ci};
use crate::support::devices::{Device, message, signup};
use crate::support::{TestServer, http, ok_reply, test_config};

/// Held by every test that uses Redis: the reconnection check kills every subscriber
/// connection on the server (Redis names no connection's channels to pick one by), which would
/// cost a test running beside it the broadcasts sent meanwhile.
pub(crate) static REDIS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How a test's nodes are joined.
enum Join {
    /// By an in-process hub.
    Memory(MemoryCluster),
    /// By the broker these `[cluster]` settings name, chosen by the server as in production.
    Broker(ClusterConfig),
}

/// A node called `name`, joined by `join`, on `db`.
fn node(db: &Arc<TestDb>, join: &Join, name: &str) -> TestServer {
    let mut config = test_config();
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
async fn ready(server: &TestServer) -> Value {
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
struct OwnServer {
    binary: String,
    args: Vec<String>,
    port: u16,
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
    fn up(&mut self) {
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
    fn down(&mut self) {
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
fn own_redis(test: &str) -> Option<(OwnServer, String)> {
    let args = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--port"];
    let server = OwnServer::start("COURIER_TEST_REDIS_SERVER", "/usr/bin/redis-server", &args, test)?;
    let url = format!("redis://127.0.0.1:{}", server.port);
    Some((server, url))
}

/// A `nats-server` of the test's own (`COURIER_TEST_NATS_SERVER`), and its URL.
#[cfg(feature = "nats")]
fn own_nats(test: &str) -> Option<(OwnServer, String)> {
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
async fn a_node_name_is_claimed_once_over_redis() {
    let _serial = REDIS.lock().await;
    names_are_claimed(redis("a_node_name_is_claimed_once_over_redis")).await;
}

#[cfg(feature = "nats")]
#[tokio::test]
async fn a_node_name_is_claimed_once_over_nats() {
    names_are_claimed(nats("a_node_name_is_claimed_once_over_nats")).await;
}
