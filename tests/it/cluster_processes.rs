//! Three real `courier` processes on one PostgreSQL database and one broker (Redis, then NATS),
//! each on an ephemeral port of 127.0.0.1, started once per engine and taken through the whole
//! cluster contract (see [`three_processes`], which reads as the list of promises): room
//! broadcasts; presence listed and changed across nodes; 1:1 messages between two users whose
//! devices are spread over all three nodes, their acks, a retry through another node,
//! receipts and typing; an admin disconnect on all three; a refused duplicate node name;
//! `courier-load` spread over the three; and one node killed with SIGKILL: its presences leave
//! everywhere within the node timeout, the others keep serving, its clients resume on another
//! node from their offsets, and its name is free again within the claim's TTL.
//! The skip rule is `cluster`'s: no broker or database server, a notice and a
//! pass, or a failure when `CI` is set.

#![cfg_attr(not(all(feature = "redis", feature = "nats")), allow(dead_code, unused_imports))]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Child;
use std::time::{Duration, Instant};

use courier::pubsub::ClusterConfig;
use serde_json::{Value, json};

use crate::cluster::{REDIS, View, keys_of, nats, redis, sees};
use crate::support::db::TestDb;
use crate::support::devices::{Device, message};
use crate::support::{Client, Frame, ok_reply};

const TOKEN: &str = "cluster-admin-secret";

/// The name claim's TTL in these tests: short, so the restart after a kill is quick.
const CLAIM_TTL_MS: u64 = 3_000;

/// How often a node tells the others it is alive, in these tests.
const HEARTBEAT_MS: u64 = 500;

/// How long a silent node's presences outlive it, in these tests: shorter than the default
/// 10 s, so the kill's leaves come quickly.
const NODE_TIMEOUT_MS: u64 = 3_000;

/// What a loaded machine may add to the node timeout before the dead node's leaves arrive.
const LEAVE_MARGIN: Duration = Duration::from_secs(4);

/// Longer than the inbox's gap wait (200 ms): a device that stays silent this long has been
/// sent nothing more.
const SETTLE_MS: u64 = 400;

/// One `courier` process; killed (and reaped) when dropped, so a failed test leaves none behind.
struct Node {
    child: Child,
    addr: std::net::SocketAddr,
    name: String,
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
             [presence]\nheartbeat_ms = {HEARTBEAT_MS}\nnode_timeout_ms = {NODE_TIMEOUT_MS}\n\
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
            Ok(addr) => Ok(Node { child, addr: addr.parse().expect("a socket address"), name: name.to_owned() }),
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

/// The whole contract over one start of three processes: each step is one promise.
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

    let mut watchers = presence_is_cluster_wide(&[&a, &b, c_ref]).await;
    let mut users = Users::spread(&[&a, &b, c_ref]).await;
    messages_reach_every_device_in_order(
        &mut users,
        "burst",
        15,
        &[("ana", "phone"), ("ana", "tablet"), ("ben", "phone")],
    )
    .await;
    a_retry_through_another_node_gets_the_original_ack(&mut users).await;
    receipts_reach_the_senders_devices_on_every_node(&mut users).await;
    typing_reaches_the_receivers_devices_on_other_nodes(&mut users).await;
    an_admin_disconnect_closes_the_users_sockets_on_every_node(&a, &b, c_ref).await;
    load_spreads_over_the_three(&a, &b, c_ref, test).await;

    // A fourth process given b's name is refused, and says why.
    let stderr = match cluster.try_start("courier@b").await {
        Ok(_) => panic!("a second courier@b started"),
        Err(stderr) => stderr,
    };
    assert!(stderr.contains("node name courier@b is already running on this cluster"), "{stderr}");
    assert!(!stderr.contains("(exited with exit status: 0)"), "a refused node exits non-zero: {stderr}");

    // c is killed (SIGKILL, no shutdown): its presences leave a's and b's views within the node
    // timeout, and a and b keep serving each other.
    let mut killed = c.take().expect("started");
    killed.child.kill().expect("SIGKILL");
    let _ = killed.child.wait();
    let killed_at = Instant::now();
    let left_in = the_dead_nodes_presences_leave_in_one_diff(&mut watchers, "courier@c").await;
    eprintln!("{test}: courier@c's presences left {left_in:?} after its kill");
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

    // c's devices were away all along; they come back on a and b.
    the_dead_nodes_devices_resume_on_the_others(&mut users, "courier@c", &[&a, &b]).await;
}

/// The room the presence checks use.
const PRESENCE_ROOM: &str = "room:presence";

/// One anonymous member of [`PRESENCE_ROOM`] and what it knows of the room's presence.
struct Watcher {
    client: Client,
    view: View,
    /// What the join's `presence_state` listed.
    state_keys: BTreeSet<String>,
    node: String,
}

/// Joins a presence-seeing anonymous socket on `node` to [`PRESENCE_ROOM`]; its view holds the
/// join's `presence_state`, and any diff that came before it applied after it, as phoenix.js
/// does (the socket's own join may be announced before its state is pushed).
async fn watch(node: &Node) -> Watcher {
    let mut client = Client::connect(&socket(node, "")).await.see_presence();
    client.join_ok(PRESENCE_ROOM, "1").await;
    let mut early = Vec::new();
    let state = loop {
        let frame = client.recv_json().await;
        assert_eq!(frame[2], PRESENCE_ROOM, "{frame}");
        match frame[3].as_str() {
            Some("presence_state") => break frame,
            Some("presence_diff") => early.push(frame),
            _ => panic!("a presence frame: {frame}"),
        }
    };
    let mut view = View::default();
    view.apply(&state);
    let state_keys = view.key_set();
    for diff in &early {
        view.apply(diff);
    }
    view.diffs.clear();
    Watcher { client, view, state_keys, node: node.name.clone() }
}

/// Reads each watcher's frames until its view is exactly `keys`, and then until nothing more
/// comes for [`SETTLE_MS`]: the view still is `keys`, and no diff is left unread.
async fn all_see(watchers: &mut [Watcher], keys: &BTreeSet<String>) {
    for w in watchers {
        sees(&mut w.client, &mut w.view, keys).await;
        while let Some(frame) = w.client.recv_within(Duration::from_millis(SETTLE_MS)).await {
            let Frame::Json(frame) = frame else { panic!("{} got {frame:?}", w.node) };
            w.view.apply(&frame);
        }
        assert_eq!(w.view.key_set(), *keys, "{} settled on another view", w.node);
    }
}

/// Reads `w`'s frames until its view holds `wanted[i]` keys of `nodes[i]`'s sockets (bounded).
async fn counts(w: &mut Watcher, nodes: &[&Node], wanted: &[usize]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let held = |view: &View| nodes.iter().map(|n| keys_of(&view.key_set(), &n.name).len()).collect::<Vec<_>>();
    while held(&w.view) != wanted {
        match w.client.recv_within(deadline.saturating_duration_since(tokio::time::Instant::now())).await {
            Some(Frame::Json(frame)) => w.view.apply(&frame),
            other => panic!("{} holds {:?} keys per node, not {wanted:?}; then {other:?}", w.node, held(&w.view)),
        }
    }
}

/// Presence across the three nodes: with members on each (two on the last), every node's view
/// lists all of them; a newcomer on any node gets a `presence_state` listing the members of all
/// three, and its join and leave reach the members on the other nodes as `presence_diff`s of
/// Phoenix's shape. Returns the members, for the kill's leaves.
async fn presence_is_cluster_wide(nodes: &[&Node; 3]) -> Vec<Watcher> {
    let mut watchers = Vec::new();
    for node in [nodes[0], nodes[1], nodes[2], nodes[2]] {
        watchers.push(watch(node).await);
    }
    counts(&mut watchers[0], nodes, &[1, 1, 2]).await;
    let members = watchers[0].view.key_set();
    all_see(&mut watchers, &members).await;

    for (i, node) in nodes.iter().enumerate() {
        let mut newcomer = watch(node).await;
        let state = &newcomer.state_keys;
        assert!(members.is_subset(state), "presence_state on {} lists every node's members: {state:?}", node.name);
        let mut with_newcomer = [1, 1, 2];
        with_newcomer[i] += 1;
        counts(&mut newcomer, nodes, &with_newcomer).await;
        let all = newcomer.view.key_set();
        let [key] = all.difference(&members).collect::<Vec<_>>()[..] else { panic!("one new key: {all:?}") };
        // Every member gets the newcomer's join and leave, those on the other nodes over the broker.
        let mut phx_ref = None;
        for w in watchers.iter_mut() {
            w.view.diffs.clear();
            sees(&mut w.client, &mut w.view, &all).await;
            let [diff] = &w.view.diffs[..] else { panic!("one join diff on {}: {:?}", w.node, w.view.diffs) };
            let meta = &diff["joins"][key]["metas"][0];
            assert!(meta["phx_ref"].is_string(), "{diff}");
            assert_eq!(meta["node"], json!(node.name), "the meta names the node: {diff}");
            assert_eq!(diff["leaves"], json!({}), "{diff}");
            phx_ref = Some(meta["phx_ref"].clone());
        }
        newcomer.client.close().await;
        for w in watchers.iter_mut() {
            w.view.diffs.clear();
            sees(&mut w.client, &mut w.view, &members).await;
            let [diff] = &w.view.diffs[..] else { panic!("one leave diff on {}: {:?}", w.node, w.view.diffs) };
            assert_eq!(diff["leaves"][key]["metas"][0]["phx_ref"], *phx_ref.as_ref().expect("joined"), "{diff}");
            assert_eq!(diff["joins"], json!({}), "{diff}");
        }
        all_see(&mut watchers, &members).await;
    }
    watchers
}

/// A node killed with SIGKILL: every watcher left on the other nodes gets one `presence_diff`
/// carrying all the dead node's leaves, within the node timeout plus a heartbeat and a margin.
/// Returns how long that took.
async fn the_dead_nodes_presences_leave_in_one_diff(watchers: &mut Vec<Watcher>, dead: &str) -> Duration {
    let killed_at = Instant::now();
    let before = watchers[0].view.key_set();
    let gone = keys_of(&before, dead);
    assert_eq!(gone.len(), 2, "{dead}'s members: {before:?}");
    let alive: BTreeSet<String> = before.difference(&gone).cloned().collect();
    watchers.retain(|w| w.node != dead);
    let waits = watchers.iter_mut().map(|w| {
        w.view.diffs.clear();
        sees(&mut w.client, &mut w.view, &alive)
    });
    futures_util::future::join_all(waits).await;
    let took = killed_at.elapsed();
    let bound = Duration::from_millis(NODE_TIMEOUT_MS + HEARTBEAT_MS) + LEAVE_MARGIN;
    assert!(took <= bound, "{dead}'s presences left after {took:?}, past {bound:?}");
    for w in watchers.iter_mut() {
        let [diff] = &w.view.diffs[..] else { panic!("one diff on {} for the dead node: {:?}", w.node, w.view.diffs) };
        let left: BTreeSet<String> = diff["leaves"].as_object().expect("leaves").keys().cloned().collect();
        assert_eq!(left, gone, "every presence of {dead} in the one diff: {diff}");
        assert_eq!(diff["joins"], json!({}), "{diff}");
        w.client.expect_silence(SETTLE_MS).await;
    }
    took
}

/// One device of one of the two users, the node it is on, and the `message` events it got.
struct Handset {
    device: Device,
    eid: &'static str,
    name: &'static str,
    node: String,
    got: Vec<Value>,
}

impl Handset {
    /// The last log offset this device was given (0 before any).
    fn last_offset(&self) -> i64 {
        self.got.last().map_or(0, |m| m["signal_offset"].as_i64().expect("signal_offset"))
    }
}

/// Two users whose three devices each sit on the three nodes, their session tokens, and the
/// last offset of each one's log.
struct Users {
    handsets: Vec<Handset>,
    tokens: BTreeMap<&'static str, String>,
    log_ends: BTreeMap<&'static str, i64>,
    /// The last user offset of their conversation.
    conversation_end: i64,
}

/// Which device of which user is on which node (by index in the node list).
const SPREAD: [(&str, &str, usize); 6] = [
    ("ana", "phone", 0),
    ("ana", "laptop", 1),
    ("ana", "tablet", 2),
    ("ben", "phone", 1),
    ("ben", "laptop", 2),
    ("ben", "tablet", 0),
];

/// `device` of the user holding `token`, joined to `user:<eid>` on `node` with `params`; the
/// join's response.
async fn device_on(node: &Node, eid: &str, token: &str, device: &str, params: Value) -> (Device, Value) {
    let client = Client::connect(&socket(node, &format!("&token={token}&device={device}"))).await;
    let (device, reply) = Device::join_on(client, eid, params).await;
    assert_eq!(reply["status"], "ok", "join of user:{eid} on {}: {reply}", node.name);
    (device, reply["response"].clone())
}

impl Users {
    /// Signs ana and ben up and joins their devices as [`SPREAD`] places them.
    async fn spread(nodes: &[&Node; 3]) -> Users {
        let mut tokens = BTreeMap::new();
        for (eid, node) in [("ana", nodes[0]), ("ben", nodes[1])] {
            tokens.insert(eid, signup(node, eid).await);
        }
        let mut handsets = Vec::new();
        for (eid, name, at) in SPREAD {
            let node = nodes[at];
            let (device, joined) = device_on(node, eid, &tokens[eid], name, json!({})).await;
            assert_eq!(joined["identity"], json!({"eid": eid, "connection_resource_id": name, "node": node.name}));
            handsets.push(Handset { device, eid, name, node: node.name.clone(), got: Vec::new() });
        }
        Users { handsets, tokens, log_ends: BTreeMap::from([("ana", 0), ("ben", 0)]), conversation_end: 0 }
    }

    fn index(&self, eid: &str, name: &str) -> usize {
        self.handsets.iter().position(|h| (h.eid, h.name) == (eid, name)).expect("a known device")
    }

    fn get(&mut self, eid: &str, name: &str) -> &mut Handset {
        let i = self.index(eid, name);
        &mut self.handsets[i]
    }

    /// These devices, all mutable, so they can send at once.
    fn several(&mut self, which: &[(&str, &str)]) -> Vec<&mut Handset> {
        let picked: Vec<&mut Handset> = self.handsets.iter_mut().filter(|h| which.contains(&(h.eid, h.name))).collect();
        assert_eq!(picked.len(), which.len(), "known devices: {which:?}");
        picked
    }
}

/// The other user of the two.
fn peer_of(eid: &str) -> &'static str {
    if eid == "ana" { "ben" } else { "ana" }
}

/// Sends `ids` from `from` to the other user, pipelined, and checks each ack's shape; the acks
/// in send order.
async fn burst(from: &mut Handset, ids: &[String]) -> Vec<Value> {
    let to = peer_of(from.eid);
    let mut refs = Vec::new();
    for id in ids {
        refs.push(from.device.push("message", message(id, to, id)).await);
    }
    let mut acks = Vec::new();
    for (id, msg_ref) in ids.iter().zip(refs) {
        let reply = from.device.reply(&msg_ref).await;
        assert_eq!(reply["status"], "ok", "{}'s {} sending {id}: {reply}", from.eid, from.name);
        let ack = reply["response"].clone();
        assert_eq!(
            (&ack["message_id"], &ack["status_code"], &ack["method"]),
            (&json!(id), &json!(200), &json!(1)),
            "{ack}"
        );
        let sender = json!({"eid": from.eid, "connection_resource_id": from.name, "node": from.node});
        assert_eq!(ack["to"], sender, "the ack names the sending device and its node: {ack}");
        assert_eq!(ack["from"]["eid"], to, "{ack}");
        assert!(ack["timestamp"].as_str().and_then(|t| t.parse::<i64>().ok()).is_some_and(|t| t > 0), "{ack}");
        assert_eq!((&ack["peer"]["from"], &ack["peer"]["to"]), (&json!(from.eid), &json!(to)), "{ack}");
        acks.push(ack);
    }
    acks
}

/// The user offset an ack gives its message.
fn user_offset(ack: &Value) -> i64 {
    ack["peer"]["offset"].as_str().and_then(|o| o.parse().ok()).unwrap_or_else(|| panic!("peer.offset: {ack}"))
}

/// The ids each sender (a user and a device) sent.
type Sent = [((&'static str, &'static str), Vec<String>)];

/// Every device of both users gets each message of `sent` live, in `signal_offset` order, with
/// no gap or duplicate: the next `sent` entries of its user's log for a device that sent
/// nothing, all but its own for one that did. The devices of one user agree on each message's
/// offset, and nothing more follows.
async fn every_device_gets(users: &mut Users, sent: &Sent) {
    let (handsets, ends) = (&mut users.handsets, &mut users.log_ends);
    let total: usize = sent.iter().map(|(_, ids)| ids.len()).sum();
    let sender_of: BTreeMap<&str, (&str, &str)> =
        sent.iter().flat_map(|(from, ids)| ids.iter().map(move |id| (id.as_str(), *from))).collect();
    let mut offset_of: BTreeMap<(&str, String), i64> = BTreeMap::new();
    for h in handsets.iter_mut() {
        let own: BTreeSet<&str> = sent
            .iter()
            .filter(|(from, _)| *from == (h.eid, h.name))
            .flat_map(|(_, ids)| ids.iter().map(String::as_str))
            .collect();
        let start = ends[h.eid];
        let new = h.device.messages(total - own.len()).await;
        let offsets: Vec<i64> = new.iter().map(|m| m["signal_offset"].as_i64().expect("signal_offset")).collect();
        let ids: BTreeSet<&str> = new.iter().map(|m| m["id"].as_str().expect("id")).collect();
        let expected: BTreeSet<&str> = sender_of.keys().copied().filter(|id| !own.contains(id)).collect();
        assert_eq!(ids, expected, "{}'s {} on {} gets each message once, its own never", h.eid, h.name, h.node);
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{}'s {}: in offset order: {offsets:?}", h.eid, h.name);
        assert!(offsets.iter().all(|o| *o > start), "{}'s {}: after {start}: {offsets:?}", h.eid, h.name);
        if own.is_empty() {
            let whole: Vec<i64> = (start + 1..=start + total as i64).collect();
            assert_eq!(offsets, whole, "{}'s {} on {}: no gap, no duplicate", h.eid, h.name, h.node);
        }
        for m in &new {
            let id = m["id"].as_str().expect("id");
            let (from_eid, from_device) = sender_of[id];
            assert_eq!(m["from"]["eid"], from_eid, "{m}");
            assert_eq!(m["from"]["connection_resource_id"], from_device, "{m}");
            assert_eq!(
                m["signal_type"],
                if from_eid == h.eid { 2 } else { 3 },
                "a copy of the user's own is type 2: {m}"
            );
            let offset = m["signal_offset"].as_i64().expect("signal_offset");
            let known = *offset_of.entry((h.eid, id.to_owned())).or_insert(offset);
            assert_eq!(known, offset, "{}'s devices agree on {id}'s offset", h.eid);
        }
        h.got.extend(new);
    }
    // The offsets of each log are the next run: a sending device's skips are exactly its own sends.
    for (eid, end) in ends.iter_mut() {
        let mut offsets: Vec<i64> = offset_of.iter().filter(|((e, _), _)| e == eid).map(|(_, o)| *o).collect();
        offsets.sort_unstable();
        assert_eq!(offsets, (*end + 1..=*end + total as i64).collect::<Vec<_>>(), "{eid}'s log");
        *end += total as i64;
    }
    for h in handsets.iter_mut() {
        h.device.expect_silence(SETTLE_MS).await;
    }
}

/// The `senders` (on different nodes) send `n` messages each to the other user, all at once:
/// each gets its acks, whose user offsets are the conversation's next run, and every other
/// device of both users gets the messages live, in order (see [`every_device_gets`]). The
/// acks, by sender.
async fn messages_reach_every_device_in_order(
    users: &mut Users,
    tag: &str,
    n: usize,
    senders: &[(&'static str, &'static str)],
) -> Vec<Vec<Value>> {
    let sent: Vec<_> = senders
        .iter()
        .map(|&(eid, name)| ((eid, name), (0..n).map(|i| format!("{tag}-{eid}-{name}-{i}")).collect::<Vec<_>>()))
        .collect();
    let bursts = users.several(senders).into_iter().map(|h| {
        let ids = &sent.iter().find(|(from, _)| *from == (h.eid, h.name)).expect("a sender").1;
        burst(h, ids)
    });
    let acks = futures_util::future::join_all(bursts).await;
    let mut offsets: Vec<i64> = acks.iter().flatten().map(user_offset).collect();
    offsets.sort_unstable();
    let end = users.conversation_end;
    let next: Vec<i64> = (end + 1..=end + (n * senders.len()) as i64).collect();
    assert_eq!(offsets, next, "one user offset per message, the conversation's next, no gap");
    users.conversation_end = *next.last().unwrap_or(&end);
    every_device_gets(users, &sent).await;
    acks
}

/// A message ana's phone (on a) sent is retried from ana's laptop (on b): the retry's ack is
/// the original's (same id, same offsets), nobody gets the message again, and ben's log holds
/// it once.
async fn a_retry_through_another_node_gets_the_original_ack(users: &mut Users) {
    let first =
        messages_reach_every_device_in_order(users, "retried", 1, &[("ana", "phone")]).await.remove(0).remove(0);
    let id = first["message_id"].as_str().expect("an id").to_owned();
    let laptop_node = users.get("ana", "laptop").node.clone();
    assert_ne!(laptop_node, users.get("ana", "phone").node, "the retry goes through another node");
    let again = users.get("ana", "laptop").device.call_ok("message", message(&id, "ben", &id)).await;
    assert_eq!((&again["message_id"], &again["peer"]), (&first["message_id"], &first["peer"]), "{again} vs {first}");
    for h in &mut users.handsets {
        h.device.expect_silence(SETTLE_MS).await;
    }
    let page = users.get("ben", "phone").device.call_ok("pull", json!({"after": 0, "limit": 500})).await;
    assert_eq!(page["more"], false, "{page}");
    let stored = page["messages"].as_array().expect("messages").iter().filter(|m| m["id"] == json!(id)).count();
    assert_eq!(stored, 1, "stored once: {page}");
}

/// ben's laptop (on c) says it received its log, then ben's tablet (on a) that it read it: each
/// `receipt` reaches all of ana's devices (on a, b and c) and ben's other devices, naming the
/// last of ana's messages it covers.
async fn receipts_reach_the_senders_devices_on_every_node(users: &mut Users) {
    for (device, state, method) in [("laptop", "received", 2), ("tablet", "read", 3)] {
        let up_to = users.log_ends["ben"];
        let reader = users.get("ben", device);
        let last = reader.got.iter().rev().find(|m| m["from"]["eid"] == "ana").expect("a message from ana").clone();
        let covered = last["user_offset"].to_string();
        let reply = reader.device.call_ok("receipt", json!({"up_to": up_to, "state": state})).await;
        assert_eq!(reply, json!({"acked_offset": up_to}));
        for h in users.handsets.iter_mut().filter(|h| (h.eid, h.name) != ("ben", device)) {
            let r = h.device.event("receipt").await;
            let on = format!("{}'s {} on {}", h.eid, h.name, h.node);
            assert_eq!(
                (&r["method"], &r["message_id"], &r["status_code"]),
                (&json!(method), &last["id"], &json!(200)),
                "{on}: {r}"
            );
            assert_eq!(r["from"]["eid"], "ben", "{on}: {r}");
            assert_eq!(r["from"]["connection_resource_id"], device, "{on}: {r}");
            assert_eq!(r["to"]["eid"], "ana", "{on}: {r}");
            assert_eq!(
                r["peer"],
                json!({"from": "ana", "to": "ben", "offset": covered, "peer_offset": covered}),
                "{on}: {r}"
            );
        }
        for h in &mut users.handsets {
            h.device.expect_silence(SETTLE_MS).await;
        }
    }
}

/// ben's phone (on b) says it is typing, then that it paused: both signals reach ana's devices
/// on a, b and c as the receiver's (`signal_type` 3) and ben's other devices, on c and a, as
/// copies (2).
async fn typing_reaches_the_receivers_devices_on_other_nodes(users: &mut Users) {
    for status in [4, 5] {
        let typist = users.get("ben", "phone");
        let signal = json!({"id": format!("typing-{status}"), "to": {"eid": "ana"}, "status": status});
        let response = typist.device.call_ok("signal", signal).await;
        assert_eq!((&response["type"], &response["signal_type"]), (&json!(2), &json!(1)), "{response}");
        for h in users.handsets.iter_mut().filter(|h| (h.eid, h.name) != ("ben", "phone")) {
            let s = h.device.event("signal").await;
            let on = format!("{}'s {} on {}", h.eid, h.name, h.node);
            let signal_type = if h.eid == "ana" { 3 } else { 2 };
            assert_eq!((&s["status"], &s["signal_type"]), (&json!(status), &json!(signal_type)), "{on}: {s}");
            assert_eq!(s["from"], json!({"eid": "ben", "connection_resource_id": "phone"}), "{on}: {s}");
        }
    }
    // Nothing more; the explicit PAUSED stopped ben's typing timer, so no expiry comes later.
    for h in &mut users.handsets {
        h.device.expect_silence(SETTLE_MS).await;
    }
}

/// The user's sockets on all three nodes close on one admin disconnect sent to the second.
async fn an_admin_disconnect_closes_the_users_sockets_on_every_node(a: &Node, b: &Node, c: &Node) {
    let token = signup(a, "alice").await;
    let mut sockets = Vec::new();
    for (node, device) in [(a, "phone"), (b, "laptop"), (c, "tablet")] {
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
}

/// After `dead` was killed: ana and ben, on the live nodes, send to each other while the dead
/// node's devices are away; those devices reconnect to a live node, rejoin `user:<eid>` after
/// the last offset they were given, and get exactly what they missed, in order; then messages
/// reach every device live again.
async fn the_dead_nodes_devices_resume_on_the_others(users: &mut Users, dead: &str, live: &[&Node; 2]) {
    let away: Vec<usize> = (0..users.handsets.len()).filter(|&i| users.handsets[i].node == dead).collect();
    assert_eq!(away.len(), 2, "one device of each user was on {dead}");
    let mut gone: Vec<Handset> = Vec::new();
    for &i in away.iter().rev() {
        gone.push(users.handsets.remove(i));
    }
    messages_reach_every_device_in_order(users, "while-away", 3, &[("ana", "phone"), ("ben", "phone")]).await;

    for (n, mut h) in gone.into_iter().enumerate() {
        let sibling =
            users.handsets.iter().find(|s| s.eid == h.eid && s.name != "phone").expect("a device that sent nothing");
        let after = h.last_offset();
        let missed: Vec<Value> =
            sibling.got.iter().filter(|m| m["signal_offset"].as_i64() > Some(after)).cloned().collect();
        assert!(!missed.is_empty(), "{}'s {} missed something", h.eid, h.name);
        let node = live[n % live.len()];
        let (device, joined) = device_on(node, h.eid, &users.tokens[h.eid], h.name, json!({"after": after})).await;
        assert_eq!(joined["last_offset"], users.log_ends[h.eid], "{joined}");
        h.device = device;
        h.node = node.name.clone();
        let caught = h.device.messages(missed.len()).await;
        let key = |m: &Value| (m["id"].clone(), m["signal_offset"].clone(), m["signal_type"].clone());
        assert_eq!(
            caught.iter().map(key).collect::<Vec<_>>(),
            missed.iter().map(key).collect::<Vec<_>>(),
            "{}'s {} on {}: exactly what it missed, in order",
            h.eid,
            h.name,
            h.node
        );
        h.device.expect_silence(SETTLE_MS).await;
        h.got.extend(caught);
        users.handsets.push(h);
    }
    let all_three = [("ana", "phone"), ("ana", "tablet"), ("ben", "phone")];
    messages_reach_every_device_in_order(users, "after-resume", 3, &all_three).await;
}

/// `courier-load` spread over the three: fanout with subscribers on two nodes and the
/// publisher on the third, and chat with each user's devices on different nodes, pass every
/// check with no error.
async fn load_spreads_over_the_three(a: &Node, b: &Node, c: &Node, test: &str) {
    let [a, b, c] = [a, b, c].map(|n| format!("ws://{}/socket/websocket", n.addr));
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
