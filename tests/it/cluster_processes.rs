//! Three real `courier` processes on one PostgreSQL database and one broker (Redis, then NATS),
//! each on an ephemeral port of 127.0.0.1: a room broadcast made on one node reaches the
//! members on the other two once; an admin disconnect sent to one node closes the user's sockets
//! on all three; a fourth process given a running node's name is refused at start; and after
//! one node is killed with SIGKILL the other two keep serving, and its name is free again within
//! the claim's TTL. `courier-load` spread over the three (fanout: subscribers on two nodes, the
//! publisher on the third; chat: each user's devices on different nodes) passes its checks.
//! The skip rule is `cluster`'s: no broker or database server, a notice and a
//! pass, or a failure when `CI` is set.

#![cfg_attr(not(all(feature = "redis", feature = "nats")), allow(dead_code, unused_imports))]

use std::process::Child;
use std::time::{Duration, Instant};

use courier::pubsub::ClusterConfig;
use serde_json::{Value, json};

use crate::cluster::{REDIS, nats, redis};
use crate::support::db::TestDb;
use crate::support::{Client, ok_reply};

const TOKEN: &str = "cluster-admin-secret";

/// The name claim's TTL in these tests: short, so the restart after a kill is quick.
const CLAIM_TTL_MS: u64 = 3_000;

/// One `courier` process; killed (and reaped) when dropped, so a failed test leaves none behind.
struct Node {
    child: Child,
    addr: std::net::SocketAddr,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What every process of one test shares: the database, the broker and a config file.
struct Cluster {
    db: TestDb,
    broker: String,
    config: tempfile::NamedTempFile,
}

impl Cluster {
    fn new(db: TestDb, cluster: &ClusterConfig) -> Self {
        let mut config = tempfile::NamedTempFile::new().expect("temp config");
        let toml = format!(
            "workers = 1\n[pubsub]\nshards = 1\n\
             [socket]\nshutdown_grace_ms = 2000\nrate_per_sec = 1000000\nrate_burst = 1000000\n\
             [accounts]\nargon2_memory_kib = 64\nargon2_iterations = 1\n\
             [cluster]\nnamespace = \"{}\"\nnode_claim_ttl_ms = {CLAIM_TTL_MS}\n",
            cluster.namespace
        );
        std::io::Write::write_all(&mut config, toml.as_bytes()).expect("config written");
        Cluster { db, broker: cluster.broker.clone(), config }
    }

    fn env<'a>(&'a self, name: &'a str) -> [(&'a str, &'a str); 4] {
        let config = self.config.path().to_str().expect("a UTF-8 temp path");
        [
            ("COURIER_BROKER", &self.broker),
            ("COURIER_NODE", name),
            ("COURIER_ADMIN_TOKEN", TOKEN),
            ("COURIER_CONFIG", config),
        ]
    }

    /// Starts the node called `name` and waits until its broker is up.
    async fn start(&self, name: &str) -> Node {
        let node = self.try_start(name).await.unwrap_or_else(|stderr| panic!("{name} did not start: {stderr}"));
        ready(&node).await;
        node
    }

    /// Starts the node called `name`: the node once it listens, or what it printed when it
    /// exited before that (bounded).
    async fn try_start(&self, name: &str) -> Result<Node, String> {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_courier"));
        cmd.args(["--bind", "127.0.0.1:0", "--database-url", &self.db.url])
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for (k, v) in self.env(name) {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("the binary runs");
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Reads to the end either way, so a node that runs never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut text = String::new();
            for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
                if let Some((_, rest)) = line.split_once("listening on ") {
                    let addr = rest.split_whitespace().next().unwrap_or_default().to_owned();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(Ok(addr));
                    }
                }
                if tx.is_some() {
                    text.push_str(&line);
                    text.push('\n');
                }
            }
            if let Some(tx) = tx.take() {
                let _ = tx.send(Err(text));
            }
        });
        let started = tokio::time::timeout(Duration::from_secs(30), rx).await.expect("the node starts or exits");
        match started.expect("the reader answers") {
            Ok(addr) => Ok(Node { child, addr: addr.parse().expect("a socket address") }),
            Err(text) => {
                let status = child.wait().expect("the node exited");
                Err(format!("{text}(exited with {status})"))
            }
        }
    }
}

/// Polls `/readyz` until the node reports itself ready (its broker connects in the background).
async fn ready(node: &Node) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = crate::support::http(node.addr, "GET", "/readyz", &[], "").await;
        if status == 200 {
            let body: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("/readyz: {e}: {body}"));
            assert_eq!(body["broker"], "up", "{body}");
            return;
        }
        assert!(Instant::now() < deadline, "/readyz still {status}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn socket(node: &Node, query: &str) -> String {
    format!("ws://{}/socket/websocket?vsn=2.0.0{query}", node.addr)
}

/// The next frame that is not presence (the client skips those unless asked).
async fn next_broadcast(client: &mut Client) -> Value {
    client.recv_json().await
}

/// A room broadcast from a member on `from` reaches each of `to`'s members exactly once.
async fn room_crosses(from: &Node, to: &[&Node], topic: &str) {
    let mut sender = Client::connect(&socket(from, "")).await;
    sender.join_ok(topic, "1").await;
    let mut members = Vec::new();
    for node in to {
        let mut member = Client::connect(&socket(node, "")).await;
        member.join_ok(topic, "1").await;
        members.push(member);
    }
    sender.send(json!(["1", "2", topic, "shout", {"body": "hello"}])).await;
    assert_eq!(sender.recv_json().await, ok_reply(Some("1"), "2", topic, json!({})));
    for member in &mut members {
        assert_eq!(next_broadcast(member).await, json!([null, null, topic, "shout", {"body": "hello"}]));
    }
    for member in &mut members {
        member.expect_silence(300).await;
    }
    sender.expect_silence(50).await;
}

/// Signs `username` up on `node` and returns its session token.
async fn signup(node: &Node, username: &str) -> String {
    let body = json!({"username": username, "password": "correct horse battery"}).to_string();
    let (status, body) =
        crate::support::http(node.addr, "POST", "/api/signup", &[("Content-Type", "application/json")], &body).await;
    assert_eq!(status, 201, "{body}");
    let body: Value = serde_json::from_str(&body).expect("a JSON signup reply");
    body["session"].as_str().expect("a session token").to_owned()
}

async fn three_processes(cluster: Option<ClusterConfig>, test: &str) {
    let Some(cluster) = cluster else { return };
    let Some(db) = TestDb::postgres(test) else { return };
    let cluster = Cluster::new(db, &cluster);
    let (a, b) = (cluster.start("courier@a").await, cluster.start("courier@b").await);
    let mut c = Some(cluster.start("courier@c").await);
    let c_ref = c.as_ref().expect("started");

    // A broadcast from each node reaches the other two, once.
    room_crosses(&a, &[&b, c_ref], "room:from-a").await;
    room_crosses(c_ref, &[&a, &b], "room:from-c").await;

    // The user's sockets on all three nodes close on one admin disconnect sent to b.
    let token = signup(&a, "alice").await;
    let mut sockets = Vec::new();
    for (node, device) in [(&a, "phone"), (&b, "laptop"), (c_ref, "tablet")] {
        sockets.push(Client::connect(&socket(node, &format!("&token={token}&device={device}"))).await);
    }
    // The sockets' disconnect topics are subscribed at connect; a heartbeat answered on each
    // shows the connect finished before the disconnect goes out.
    for s in &mut sockets {
        s.send(json!([null, "h", "phoenix", "heartbeat", {}])).await;
        assert_eq!(s.recv_json().await, ok_reply(None, "h", "phoenix", json!({})));
    }
    let bearer = format!("Bearer {TOKEN}");
    let (status, reply) = crate::support::http(
        b.addr,
        "POST",
        "/admin/api/users/alice/disconnect",
        &[("Authorization", bearer.as_str())],
        "",
    )
    .await;
    assert_eq!(status, 202, "{reply}");
    for s in &mut sockets {
        assert_eq!(s.closed().await.0, 1001);
    }

    // A fourth process given b's name is refused, and says why.
    let stderr = match cluster.try_start("courier@b").await {
        Ok(_) => panic!("a second courier@b started"),
        Err(stderr) => stderr,
    };
    assert!(stderr.contains("node name courier@b is already running on this cluster"), "{stderr}");
    assert!(!stderr.contains("(exited with exit status: 0)"), "a refused node exits non-zero: {stderr}");

    // c is killed (SIGKILL, no shutdown): a and b keep serving each other.
    let mut killed = c.take().expect("started");
    killed.child.kill().expect("SIGKILL");
    let _ = killed.child.wait();
    let killed_at = Instant::now();
    room_crosses(&b, &[&a], "room:after-kill").await;

    // And its name is free again within the claim's TTL (at once over NATS, whose server drops
    // the dead connection's subscriptions): a restart of c rejoins.
    let deadline = killed_at + Duration::from_millis(CLAIM_TTL_MS) + Duration::from_secs(5);
    let c = loop {
        match cluster.try_start("courier@c").await {
            Ok(node) => break node,
            Err(stderr) if Instant::now() < deadline && stderr.contains("already running") => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(stderr) => panic!("courier@c could not restart after a kill: {stderr}"),
        }
    };
    eprintln!("{test}: courier@c restarted {:?} after its kill", killed_at.elapsed());
    ready(&c).await;
    room_crosses(&c, &[&a, &b], "room:after-restart").await;
}

/// Runs `courier-load` with `args`; its exit output and JSON report.
async fn load(args: &[String]) -> (std::process::Output, Value) {
    crate::load::courier_load(args).await
}

/// Asserts a `courier-load` run passed every check with no error.
fn passed((output, report): &(std::process::Output, Value)) {
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "failed:\n{printed}\n{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!((report["passed"].as_bool(), report["errors_total"].as_u64()), (Some(true), Some(0)), "{report}");
}

async fn load_over_three(cluster: Option<ClusterConfig>, test: &str) {
    let Some(cluster) = cluster else { return };
    let Some(db) = TestDb::postgres(test) else { return };
    let cluster = Cluster::new(db, &cluster);
    let nodes = [cluster.start("courier@a").await, cluster.start("courier@b").await, cluster.start("courier@c").await];
    let [a, b, c] = nodes.each_ref().map(|n| format!("ws://{}/socket/websocket", n.addr));

    let fanout = load(&[
        "--urls".into(),
        format!("{a},{b}"),
        "fanout".into(),
        "--publisher-url".into(),
        c.clone(),
        "--subscribers".into(),
        "10".into(),
        "--rate".into(),
        "20".into(),
        "--duration".into(),
        "1".into(),
    ])
    .await;
    passed(&fanout);
    assert_eq!(fanout.1["throughput"]["deliveries"]["count"], 200, "{}", fanout.1);

    let urls = format!("{a},{b},{c}");
    let chat = ["chat", "--users", "3", "--devices", "3", "--rate", "60", "--duration", "1.5"];
    let (output, report) = load(&[["--urls".to_owned(), urls].as_slice(), &chat.map(String::from)].concat()).await;
    // Nodes writing one conversation's logs at once take their row locks in one order (see
    // store::messages::lock), so no send or receipt is refused and every check holds.
    let printed = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{test}: chat over three nodes:\n{printed}");
    let errors = report["errors"].as_object().expect("an error table");
    assert!(errors.is_empty(), "{test}: {printed}");
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn courier_load_spreads_over_three_processes_over_redis() {
    let test = "courier_load_spreads_over_three_processes_over_redis";
    let _serial = REDIS.lock().await;
    load_over_three(redis(test), test).await;
}

#[cfg(feature = "nats")]
#[tokio::test]
async fn courier_load_spreads_over_three_processes_over_nats() {
    let test = "courier_load_spreads_over_three_processes_over_nats";
    load_over_three(nats(test), test).await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn three_processes_over_redis() {
    let test = "three_processes_over_redis";
    let _serial = REDIS.lock().await;
    three_processes(redis(test), test).await;
}

#[cfg(feature = "nats")]
#[tokio::test]
async fn three_processes_over_nats() {
    let test = "three_processes_over_nats";
    three_processes(nats(test), test).await;
}
