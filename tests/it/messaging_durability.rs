//! Messaging durability, checked against the `user:<eid>` contract of the README:
//!
//! - many authenticated sockets (two of them devices of one user) pipeline `message` pushes at
//!   one inbox while its owner answers: every log stays 1..=N with no gap and no duplicate,
//!   every ack is for a message stored exactly once, and every conversation's `user_offset`s
//!   (the acks' `peer.offset`) are 1..=k;
//! - the real binary is SIGKILLed while messages are in flight and restarted on the same
//!   database: logs are still gap-free, every acked message is stored exactly once, and
//!   retrying every id stores the missing ones once and answers stored ones with their
//!   original `peer.offset`.
//!
//! Every wait is bounded by [`PHASE`]; nothing asserts on timing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use courier::store::Store;
use courier::store::messages::{self, MessageRow};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::on_both_backends;
use crate::support::db::TestDb;
use crate::support::{TestServer, http, spawn_binary, test_config};

/// The longest any one phase (connecting, a pipeline, a restart) may take.
const PHASE: Duration = Duration::from_secs(60);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

// ---------------------------------------------------------------------------------------------
// Wire helpers
// ---------------------------------------------------------------------------------------------

async fn signup(addr: SocketAddr, username: &str) -> String {
    let body = json!({"username": username, "password": "correct horse battery"}).to_string();
    let (status, body) = http(addr, "POST", "/api/signup", &[("Content-Type", "application/json")], &body).await;
    assert_eq!(status, 201, "signup {username}: {body}");
    serde_json::from_str::<Value>(&body).unwrap()["session"].as_str().expect("session token").to_owned()
}

/// An authenticated V2 socket of `device`.
async fn connect(addr: SocketAddr, token: &str, device: &str) -> Ws {
    let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0&token={token}&device={device}");
    let (ws, _) = tokio::time::timeout(PHASE, tokio_tungstenite::connect_async(url.as_str()))
        .await
        .unwrap_or_else(|_| panic!("connect {device} within {PHASE:?}"))
        .unwrap_or_else(|e| panic!("connect {device}: {e}"));
    ws
}

fn text(frame: &Value) -> WsMessage {
    WsMessage::text(frame.to_string())
}

/// Reads until the reply to `msg_ref`, skipping events; panics if the socket ends or after [`PHASE`].
async fn await_reply(ws: &mut Ws, msg_ref: &str) -> Value {
    let deadline = Instant::now() + PHASE;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no reply to ref {msg_ref} within {PHASE:?}"));
        match next {
            Some(Ok(WsMessage::Text(t))) => {
                let frame: Value = serde_json::from_str(t.as_str()).expect("the server sends JSON");
                if frame[3] == "phx_reply" && frame[1] == msg_ref {
                    return frame;
                }
            }
            Some(Ok(WsMessage::Close(c))) => panic!("socket closed while waiting for ref {msg_ref}: {c:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("socket failed while waiting for ref {msg_ref}: {e}"),
            None => panic!("socket ended while waiting for ref {msg_ref}"),
        }
    }
}

/// Sends one push on `user:<user>` (join_ref "j") and returns the reply's `{"status", "response"}`.
async fn request(ws: &mut Ws, user: &str, msg_ref: &str, event: &str, payload: Value) -> Value {
    ws.send(text(&json!(["j", msg_ref, format!("user:{user}"), event, payload]))).await.expect("send");
    await_reply(ws, msg_ref).await[4].clone()
}

/// Joins `user:<user>` with join_ref "j" and returns the ok reply's response.
async fn join_user(ws: &mut Ws, user: &str, params: Value) -> Value {
    ws.send(text(&json!(["j", "j", format!("user:{user}"), "phx_join", params]))).await.expect("send join");
    let reply = await_reply(ws, "j").await;
    assert_eq!(reply[4]["status"], "ok", "join user:{user}: {reply}");
    reply[4]["response"].clone()
}

fn message_push(sender: &str, msg_ref: &str, id: &str, to: &str) -> Value {
    let payload = base64::engine::general_purpose::STANDARD.encode(format!("{id} from {sender} to {to}"));
    json!(["j", msg_ref, format!("user:{sender}"), "message", {"id": id, "to": {"eid": to}, "payload": payload}])
}

/// An int64 (proto3 JSON string) or int32 (number) field.
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or_else(|_| panic!("not an integer: {v}")),
        Value::Number(n) => n.as_i64().unwrap_or_else(|| panic!("not an integer: {v}")),
        _ => panic!("not an integer: {v}"),
    }
}

/// Checks the ok reply (`{"status", "response"}`) to a `message` push and returns its `peer.offset`.
fn ack_offset(reply: &Value, sender: &str, id: &str, to: &str) -> i64 {
    assert_eq!(reply["status"], "ok", "message {id} of {sender} to {to}: {reply}");
    let ack = &reply["response"];
    assert_eq!(ack["message_id"], id, "{reply}");
    assert_eq!(ack["status_code"], 200, "{reply}");
    assert_eq!(ack["method"], 1, "{reply}");
    assert_eq!(ack["to"]["eid"], sender, "{reply}");
    assert_eq!(ack["from"]["eid"], to, "{reply}");
    assert_eq!(ack["peer"]["from"], sender, "{reply}");
    assert_eq!(ack["peer"]["to"], to, "{reply}");
    let offset = &ack["peer"]["offset"];
    assert!(offset.is_string(), "peer.offset is an int64, so a JSON string: {reply}");
    int(offset)
}

/// What one pipelined socket saw.
struct Outcome {
    /// Replies (`{"status", "response"}`) by index into the socket's messages.
    replies: HashMap<usize, Value>,
    /// How many pushes were written before the socket failed (all of them, normally).
    written: usize,
    /// Why the socket stopped before every reply arrived, if it did.
    cut: Option<String>,
}

/// Writes every message as fast as the socket takes them, without waiting for replies, while
/// reading replies (matched by ref) until each message has one, the socket ends, or `deadline`.
/// `on_ok` runs for each ok reply, as it arrives.
async fn pipeline(
    ws: Ws,
    sender: String,
    msgs: Vec<(String, String)>,
    deadline: Instant,
    on_ok: Arc<dyn Fn() + Send + Sync>,
) -> Outcome {
    let (mut sink, mut stream) = ws.split();
    let writer = async {
        let mut written = 0;
        for (i, (id, to)) in msgs.iter().enumerate() {
            if sink.send(text(&message_push(&sender, &format!("m{i}"), id, to))).await.is_err() {
                break;
            }
            written += 1;
        }
        written
    };
    let reader = async {
        let mut replies = HashMap::new();
        let cut = loop {
            if replies.len() == msgs.len() {
                break None;
            }
            let frame = match tokio::time::timeout_at(deadline, stream.next()).await {
                Err(_) => break Some(format!("{} of {} replies by the deadline", replies.len(), msgs.len())),
                Ok(Some(Ok(WsMessage::Text(t)))) => serde_json::from_str::<Value>(t.as_str()).expect("JSON"),
                Ok(Some(Ok(WsMessage::Close(c)))) => break Some(format!("closed: {c:?}")),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => break Some(format!("socket error: {e}")),
                Ok(None) => break Some("socket ended".into()),
            };
            if frame[3] != "phx_reply" {
                continue;
            }
            let index = frame[1].as_str().and_then(|r| r.strip_prefix('m')).and_then(|i| i.parse::<usize>().ok());
            let Some(index) = index.filter(|i| *i < msgs.len()) else { panic!("reply to an unknown ref: {frame}") };
            if frame[4]["status"] == "ok" {
                on_ok();
            }
            let previous = replies.insert(index, frame[4].clone());
            assert!(previous.is_none(), "two replies to ref m{index}: {previous:?} and {frame}");
        };
        (replies, cut)
    };
    let (written, (replies, cut)) = tokio::join!(tokio::time::timeout_at(deadline, writer), reader);
    Outcome { replies, written: written.unwrap_or(0), cut }
}

/// Pulls `user`'s whole log (pages of 200) and returns its messages oldest first; checks the
/// signal_offsets are 1..=last_offset, in order.
async fn pull_all(ws: &mut Ws, user: &str) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::new();
    for page in 0.. {
        let after = all.len();
        let reply = request(ws, user, &format!("p{page}"), "pull", json!({"after": after, "limit": 200})).await;
        assert_eq!(reply["status"], "ok", "pull {user} after {after}: {reply}");
        let batch = reply["response"]["messages"].as_array().expect("messages").clone();
        let last = int(&reply["response"]["last_offset"]);
        for (i, m) in batch.iter().enumerate() {
            let offset = int(&m["signal_offset"]);
            assert_eq!(offset, (after + i + 1) as i64, "pull of {user} after {after}: offsets must follow on: {m}");
        }
        if batch.is_empty() {
            assert_eq!(all.len() as i64, last, "{user}: the pull ended before last_offset");
            break;
        }
        all.extend(batch);
    }
    all
}

// ---------------------------------------------------------------------------------------------
// Database checks
// ---------------------------------------------------------------------------------------------

/// What the database holds for some users: each user's log offsets (ascending), and each
/// sender's stored rows among the given client ids.
struct Snapshot {
    logs: BTreeMap<String, Vec<i64>>,
    rows: Vec<MessageRow>,
}

async fn snapshot(url: &str, users: &[String], ids_by_sender: &BTreeMap<String, Vec<String>>) -> Snapshot {
    let url = url.to_owned();
    let store = tokio::task::spawn_blocking(move || Store::open(&url)).await.unwrap().expect("open the store");
    let (users, ids_by_sender) = (users.to_vec(), ids_by_sender.clone());
    let work = store.run(move |conn| {
        let mut logs = BTreeMap::new();
        for user in &users {
            logs.insert(user.clone(), messages::log_offsets(conn, user)?);
        }
        let mut rows = Vec::new();
        for (sender, ids) in &ids_by_sender {
            for chunk in ids.chunks(200) {
                let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
                rows.extend(messages::find_sent(conn, sender, &chunk)?);
            }
        }
        Ok(Snapshot { logs, rows })
    });
    tokio::time::timeout(PHASE, work).await.expect("database read in time").expect("database read")
}

/// Panics unless `offsets` (sorted) is exactly 1..=len, naming the gaps and duplicates.
fn assert_gap_free(what: &str, offsets: &[i64]) {
    let expected: Vec<i64> = (1..=offsets.len() as i64).collect();
    if offsets == expected.as_slice() {
        return;
    }
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for o in offsets {
        *counts.entry(*o).or_default() += 1;
    }
    let top = offsets.iter().copied().max().unwrap_or(0);
    let missing: Vec<i64> = (1..=top).filter(|o| !counts.contains_key(o)).collect();
    let duplicated: Vec<(i64, usize)> = counts.into_iter().filter(|(_, n)| *n > 1).collect();
    panic!(
        "{what}: expected offsets 1..={} with no gap or duplicate; missing {missing:?}, duplicated (offset, times) \
         {duplicated:?}, out of range {:?}",
        offsets.len(),
        offsets.iter().filter(|o| **o < 1).collect::<Vec<_>>()
    );
}

/// The stored rows must hold each (sender, id) at most once; returns them by (sender, id).
fn rows_by_id(rows: &[MessageRow]) -> HashMap<(String, String), MessageRow> {
    let mut by_id = HashMap::new();
    for row in rows {
        let key = (row.sender.clone(), row.client_id.clone());
        if let Some(first) = by_id.insert(key, row.clone()) {
            panic!("message {} of {} is stored twice: {first:?} and {row:?}", row.client_id, row.sender);
        }
    }
    by_id
}

/// Checks the logs are gap-free and hold exactly the stored rows, and each conversation's
/// user_offsets are 1..=k.
fn assert_consistent(snapshot: &Snapshot, stage: &str) {
    for (user, offsets) in &snapshot.logs {
        assert_gap_free(&format!("{stage}: the log of {user}"), offsets);
    }
    // Each row takes one offset in the sender's log and one in the receiver's.
    let mut from_rows: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    let mut conversations: BTreeMap<(&str, &str), Vec<i64>> = BTreeMap::new();
    for row in &snapshot.rows {
        from_rows.entry(&row.sender).or_default().push(row.sender_offset);
        from_rows.entry(&row.receiver).or_default().push(row.receiver_offset);
        conversations.entry(messages::conversation_key(&row.sender, &row.receiver)).or_default().push(row.user_offset);
    }
    for (user, offsets) in &mut from_rows {
        offsets.sort_unstable();
        assert_eq!(
            Some(offsets.as_slice()),
            snapshot.logs.get(*user).map(Vec::as_slice),
            "{stage}: the log of {user} holds messages this test did not send, or lost some"
        );
    }
    for ((a, b), offsets) in &mut conversations {
        offsets.sort_unstable();
        assert_gap_free(&format!("{stage}: the user_offsets of conversation {a}/{b}"), offsets);
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Many pipelined senders, one inbox
// ---------------------------------------------------------------------------------------------

/// One sending socket of the concurrency test.
struct Sender {
    user: String,
    device: String,
    msgs: Vec<(String, String)>,
}

on_both_backends!(pipelined_senders_keep_every_log_gap_free_and_store_each_message_once, many_senders_one_inbox);
async fn many_senders_one_inbox(db: Arc<TestDb>) {
    const PER_SOCKET: usize = 50;
    const SHARED: usize = 10;
    let started = std::time::Instant::now();
    let server = TestServer::start_on(Arc::clone(&db), test_config(), |c| c);
    let addr = server.addr;
    let others = ["alice", "carol", "dave", "erin", "frank", "gina", "hank", "ivan"];
    let mut tokens = HashMap::new();
    for user in others.iter().chain(["bob"].iter()) {
        tokens.insert(user.to_string(), signup(addr, user).await);
    }

    // Who sends what: every sender 50 to bob; alice from two devices at once, which also
    // both send the same 10 ids (one stored copy each, one ack offset); bob answers from his
    // desk, 5 to each sender, while they send.
    let mut senders: Vec<Sender> = Vec::new();
    for user in others {
        let devices: &[&str] = if user == "alice" { &["phone", "tablet"] } else { &["phone"] };
        for device in devices {
            let mut msgs: Vec<(String, String)> =
                (0..PER_SOCKET).map(|i| (format!("{user}-{device}-{i}"), "bob".to_owned())).collect();
            if user == "alice" {
                for k in 0..SHARED {
                    msgs.insert(k * 5, (format!("alice-shared-{k}"), "bob".to_owned()));
                }
            }
            senders.push(Sender { user: user.into(), device: device.to_string(), msgs });
        }
    }
    let bob_msgs: Vec<(String, String)> =
        (0..5 * others.len()).map(|i| (format!("bob-desk-{i}"), others[i % others.len()].to_owned())).collect();
    senders.push(Sender { user: "bob".into(), device: "desk".into(), msgs: bob_msgs });

    let distinct: BTreeSet<(String, String)> =
        senders.iter().flat_map(|s| s.msgs.iter().map(|(id, _)| (s.user.clone(), id.clone()))).collect();
    let bob_log_len = distinct.iter().filter(|(sender, _)| sender != "bob").count()
        + senders.iter().filter(|s| s.user == "bob").map(|s| s.msgs.len()).sum::<usize>();

    // bob's phone watches his log in push mode, joined before anything is sent.
    let mut bob_phone = connect(addr, &tokens["bob"], "phone").await;
    let joined = join_user(&mut bob_phone, "bob", json!({})).await;
    assert_eq!((int(&joined["last_offset"]), int(&joined["acked_offset"])), (0, 0), "{joined}");
    let watcher = tokio::spawn(watch_pushes(bob_phone, "bob", bob_log_len));

    // Every socket authenticated and joined first, then all pipelines at once.
    let mut sockets = Vec::new();
    for s in &senders {
        let mut ws = connect(addr, &tokens[&s.user], &s.device).await;
        join_user(&mut ws, &s.user, json!({"mode": "pull"})).await;
        sockets.push(ws);
    }
    let deadline = Instant::now() + PHASE;
    let tasks: Vec<_> = senders
        .iter()
        .zip(sockets)
        .map(|(s, ws)| tokio::spawn(pipeline(ws, s.user.clone(), s.msgs.clone(), deadline, Arc::new(|| {}))))
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("pipeline task"));
    }

    // Every push was answered ok, with a well-formed ack.
    let mut acks: HashMap<(String, String), Vec<(String, i64)>> = HashMap::new();
    for (s, outcome) in senders.iter().zip(&outcomes) {
        assert_eq!(outcome.cut, None, "{}/{}: every message must be answered", s.user, s.device);
        assert_eq!(outcome.written, s.msgs.len());
        for (i, (id, to)) in s.msgs.iter().enumerate() {
            let offset = ack_offset(&outcome.replies[&i], &s.user, id, to);
            acks.entry((s.user.clone(), id.clone())).or_default().push((s.device.clone(), offset));
        }
    }
    // The same id from two devices at once: one message, one offset for both acks.
    for ((sender, id), got) in &acks {
        let offsets: BTreeSet<i64> = got.iter().map(|(_, o)| *o).collect();
        assert_eq!(offsets.len(), 1, "{id} of {sender} acked with different peer.offsets: {got:?}");
    }
    // Per conversation, the acked peer.offsets of its distinct messages are exactly 1..=k.
    let mut per_conversation: BTreeMap<(String, String), Vec<i64>> = BTreeMap::new();
    let to_of: HashMap<(String, String), String> =
        senders.iter().flat_map(|s| s.msgs.iter().map(|(id, to)| ((s.user.clone(), id.clone()), to.clone()))).collect();
    for ((sender, id), got) in &acks {
        let (a, b) = messages::conversation_key(sender, &to_of[&(sender.clone(), id.clone())]);
        per_conversation.entry((a.to_owned(), b.to_owned())).or_default().push(got[0].1);
    }
    for ((a, b), offsets) in &mut per_conversation {
        offsets.sort_unstable();
        assert_gap_free(&format!("the acked peer.offsets of conversation {a}/{b}"), offsets);
    }

    // The database: gap-free logs, every acked message exactly once, at its acked offset.
    let mut users: Vec<String> = others.iter().map(|u| u.to_string()).collect();
    users.push("bob".into());
    let mut ids_by_sender: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (sender, id) in &distinct {
        ids_by_sender.entry(sender.clone()).or_default().push(id.clone());
    }
    let snap = snapshot(&server.database_url, &users, &ids_by_sender).await;
    assert_consistent(&snap, "after the pipelines");
    let stored = rows_by_id(&snap.rows);
    assert_eq!(stored.len(), distinct.len(), "every acked message is stored");
    for ((sender, id), got) in &acks {
        let row =
            stored.get(&(sender.clone(), id.clone())).unwrap_or_else(|| panic!("acked {id} of {sender} is not stored"));
        assert_eq!(row.user_offset, got[0].1, "{id} of {sender}: stored user_offset vs acked peer.offset");
    }
    assert_eq!(snap.logs["bob"].len(), bob_log_len);
    assert_eq!(snap.logs["alice"].len(), 2 * PER_SOCKET + SHARED + 5, "alice's two devices share one gap-free log");
    for user in &others[1..] {
        assert_eq!(snap.logs[*user].len(), PER_SOCKET + 5, "the log of {user}");
    }

    // bob's phone got his whole log pushed live: offsets 1..=N in order, each message once.
    let pushed = tokio::time::timeout(PHASE, watcher).await.expect("watcher ends").expect("watcher task");
    let pushed_offsets: Vec<i64> = pushed.iter().map(|(o, _, _)| *o).collect();
    assert_eq!(pushed_offsets, (1..=bob_log_len as i64).collect::<Vec<_>>(), "bob's pushed signal_offsets");
    let pushed_ids: BTreeSet<(String, String)> = pushed.iter().map(|(_, s, id)| (s.clone(), id.clone())).collect();
    assert_eq!(pushed_ids.len(), bob_log_len, "bob was pushed some message twice");

    // A pull of each log sees the same: alice (two devices) and bob (everyone).
    for (user, device) in [("bob", "tablet"), ("alice", "laptop")] {
        let mut ws = connect(addr, &tokens[user], device).await;
        join_user(&mut ws, user, json!({"mode": "pull"})).await;
        let log = pull_all(&mut ws, user).await;
        assert_eq!(log.len(), snap.logs[user].len(), "pull of {user}");
        let mut seen = BTreeSet::new();
        for m in &log {
            let key = (m["from"]["eid"].as_str().unwrap().to_owned(), m["id"].as_str().unwrap().to_owned());
            let row = stored.get(&key).unwrap_or_else(|| panic!("{user} pulled a message nobody sent: {m}"));
            let expected = if row.receiver == user { row.receiver_offset } else { row.sender_offset };
            assert_eq!(int(&m["signal_offset"]), expected, "{m}");
            assert_eq!(int(&m["user_offset"]), row.user_offset, "{m}");
            assert!(seen.insert(key), "{user} pulled a message twice: {m}");
        }
    }
    server.shutdown().await;
    eprintln!(
        "many_senders_one_inbox: {} sockets, {} pushes, {} distinct messages, bob's log {bob_log_len}, in {:?}",
        senders.len(),
        senders.iter().map(|s| s.msgs.len()).sum::<usize>(),
        distinct.len(),
        started.elapsed()
    );
}

/// Collects `expected` `message` events of `user:<user>` as (signal_offset, from, id), then
/// keeps reading briefly to catch any extra (duplicate) push; bounded by [`PHASE`].
async fn watch_pushes(mut ws: Ws, user: &'static str, expected: usize) -> Vec<(i64, String, String)> {
    let deadline = Instant::now() + PHASE;
    let mut got = Vec::new();
    loop {
        let wait = if got.len() >= expected { Instant::now() + Duration::from_millis(300) } else { deadline };
        let frame = match tokio::time::timeout_at(wait.min(deadline), ws.next()).await {
            Err(_) if got.len() >= expected => return got,
            Err(_) => panic!("{user}'s push device got {} of {expected} messages within {PHASE:?}", got.len()),
            Ok(Some(Ok(WsMessage::Text(t)))) => serde_json::from_str::<Value>(t.as_str()).expect("JSON"),
            Ok(Some(Ok(_))) => continue,
            Ok(other) => panic!("{user}'s push device lost its socket after {} messages: {other:?}", got.len()),
        };
        if frame[2] == format!("user:{user}") && frame[3] == "message" {
            let m = &frame[4];
            got.push((
                int(&m["signal_offset"]),
                m["from"]["eid"].as_str().unwrap_or_default().to_owned(),
                m["id"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. SIGKILL of the real binary mid-batch
// ---------------------------------------------------------------------------------------------

/// The real `courier` binary; killed (SIGKILL) and reaped when dropped.
struct Binary {
    child: Arc<Mutex<Child>>,
    addr: SocketAddr,
    logs: std::sync::mpsc::Receiver<String>,
}

impl Binary {
    /// Starts the binary on an ephemeral port with this database and config file.
    fn start(database_url: &str, config: &std::path::Path) -> Binary {
        let config = config.to_string_lossy();
        let env = [("COURIER_CONFIG", config.as_ref()), ("RUST_LOG", "warn,courier::server=info")];
        let (child, addr, logs) = spawn_binary(database_url, &env);
        let addr = addr.parse().expect("socket address");
        Binary { child: Arc::new(Mutex::new(child)), addr, logs }
    }

    /// SIGKILL, now (safe to call twice).
    fn kill(child: &Mutex<Child>) {
        let _ = child.lock().unwrap().kill();
    }

    /// Waits (bounded) for the process to exit and returns its status.
    async fn wait(&self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.lock().unwrap().try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything logged so far.
    fn drain_logs(&self) -> Vec<String> {
        self.logs.try_iter().collect()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

mod binary_killed_mid_batch_keeps_acked_messages_and_gap_free_logs {
    use crate::support::db::TestDb;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite() {
        super::kill_mid_batch(TestDb::sqlite()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres() {
        if let Some(db) = TestDb::postgres("binary_killed_mid_batch_keeps_acked_messages_and_gap_free_logs") {
            super::kill_mid_batch(db).await;
        }
    }
}

async fn kill_mid_batch(db: TestDb) {
    const PER_SOCKET: usize = 500;
    const KILL_AFTER_ACKS: usize = 200;
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    // Rate limits out of the way (the clients send as fast as the sockets take frames), and
    // cheap password hashing for the sign-ups.
    let config = dir.path().join("courier.toml");
    let toml = "[socket]\nrate_per_sec = 1000000\nrate_burst = 1000000\n\n\
                [accounts]\nargon2_memory_kib = 64\nargon2_iterations = 1\n";
    std::fs::write(&config, toml).unwrap();

    let first = Binary::start(&db.url, &config);
    let senders = ["ann", "cid", "dan", "eve"];
    let receivers = ["bob", "zoe"];
    let mut tokens = HashMap::new();
    for user in senders.iter().chain(receivers.iter()) {
        tokens.insert(user.to_string(), signup(first.addr, user).await);
    }
    // ann sends from two devices; every socket alternates between bob and zoe.
    let mut plans: Vec<Sender> = Vec::new();
    for user in senders {
        let devices: &[&str] = if user == "ann" { &["a", "b"] } else { &["a"] };
        for device in devices {
            let msgs = (0..PER_SOCKET)
                .map(|i| (format!("{user}-{device}-{i}"), receivers[i % receivers.len()].to_owned()))
                .collect();
            plans.push(Sender { user: user.into(), device: device.to_string(), msgs });
        }
    }
    let mut sockets = Vec::new();
    for p in &plans {
        let mut ws = connect(first.addr, &tokens[&p.user], &p.device).await;
        join_user(&mut ws, &p.user, json!({"mode": "pull"})).await;
        sockets.push(ws);
    }

    // Send everything; the 200th ok ack, wherever it arrives, SIGKILLs the server at once.
    let acks_seen = Arc::new(AtomicUsize::new(0));
    let on_ok: Arc<dyn Fn() + Send + Sync> = {
        let (acks_seen, child) = (Arc::clone(&acks_seen), Arc::clone(&first.child));
        Arc::new(move || {
            if acks_seen.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER_ACKS {
                Binary::kill(&child);
            }
        })
    };
    let deadline = Instant::now() + PHASE;
    let tasks: Vec<_> = plans
        .iter()
        .zip(sockets)
        .map(|(p, ws)| tokio::spawn(pipeline(ws, p.user.clone(), p.msgs.clone(), deadline, Arc::clone(&on_ok))))
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("pipeline task"));
    }
    assert!(
        acks_seen.load(Ordering::SeqCst) >= KILL_AFTER_ACKS,
        "the kill never fired: only {} ok acks arrived; cuts: {:?}",
        acks_seen.load(Ordering::SeqCst),
        outcomes.iter().map(|o| &o.cut).collect::<Vec<_>>()
    );
    let status = first.wait(PHASE).await.expect("the killed binary exits");
    assert!(!status.success(), "the binary was killed, not stopped: {status}");
    let first_logs = first.drain_logs();
    drop(first);

    // What the clients know: acked ids (with their peer.offset) and everything else.
    let mut acked: HashMap<(String, String), i64> = HashMap::new();
    let mut refused = Vec::new();
    let (mut written, mut in_flight) = (0, 0);
    for (p, outcome) in plans.iter().zip(&outcomes) {
        written += outcome.written;
        in_flight += outcome.written - outcome.replies.len();
        for (i, reply) in &outcome.replies {
            let (id, to) = &p.msgs[*i];
            if reply["status"] == "ok" {
                acked.insert((p.user.clone(), id.clone()), ack_offset(reply, &p.user, id, to));
            } else {
                // The one refusal the contract allows for a valid message: storage unavailable.
                assert_eq!(reply["response"]["status_code"], 503, "{id} of {}: {reply}", p.user);
                refused.push(id.clone());
            }
        }
    }

    // Restart on the same database; before any retry, the database must hold every acked
    // message exactly once, at its acked offset, in gap-free logs.
    let second = Binary::start(&db.url, &config);
    let users: Vec<String> = senders.iter().chain(receivers.iter()).map(|u| u.to_string()).collect();
    let mut ids_by_sender: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in &plans {
        ids_by_sender.entry(p.user.clone()).or_default().extend(p.msgs.iter().map(|(id, _)| id.clone()));
    }
    let before = snapshot(&db.url, &users, &ids_by_sender).await;
    assert_consistent(&before, "after the SIGKILL");
    let stored_before = rows_by_id(&before.rows);
    for ((sender, id), offset) in &acked {
        let row = stored_before.get(&(sender.clone(), id.clone())).unwrap_or_else(|| {
            panic!("{id} of {sender} was acked (peer.offset {offset}) but is not stored after the kill")
        });
        assert_eq!(row.user_offset, *offset, "{id} of {sender}: stored user_offset vs acked peer.offset");
    }

    // Each client retries: its un-acked ids first, then the acked ones.
    let mut retries = Vec::new();
    for p in &plans {
        let (mut unacked, mut done): (Vec<_>, Vec<_>) =
            p.msgs.iter().cloned().partition(|(id, _)| !acked.contains_key(&(p.user.clone(), id.clone())));
        unacked.append(&mut done);
        let mut ws = connect(second.addr, &tokens[&p.user], &p.device).await;
        join_user(&mut ws, &p.user, json!({"mode": "pull"})).await;
        retries.push((unacked, ws));
    }
    let deadline = Instant::now() + PHASE;
    let tasks: Vec<_> = plans
        .iter()
        .zip(retries)
        .map(|(p, (msgs, ws))| {
            let order = msgs.clone();
            (order, tokio::spawn(pipeline(ws, p.user.clone(), msgs, deadline, Arc::new(|| {}))))
        })
        .collect();
    let mut final_acks: HashMap<(String, String), i64> = HashMap::new();
    for (p, (order, task)) in plans.iter().zip(tasks) {
        let outcome = task.await.expect("retry task");
        assert_eq!(outcome.cut, None, "{}/{}: every retry must be answered", p.user, p.device);
        for (i, (id, to)) in order.iter().enumerate() {
            let offset = ack_offset(&outcome.replies[&i], &p.user, id, to);
            let key = (p.user.clone(), id.clone());
            if let Some(original) = acked.get(&key) {
                assert_eq!(
                    offset, *original,
                    "the retry of acked {id} of {} must return the original peer.offset",
                    p.user
                );
            }
            if let Some(row) = stored_before.get(&key) {
                assert_eq!(
                    offset, row.user_offset,
                    "the retry of stored {id} of {} must return its stored offset",
                    p.user
                );
            }
            final_acks.insert(key, offset);
        }
    }

    // Everything is now stored exactly once, at the offset its (last) ack named.
    let after = snapshot(&db.url, &users, &ids_by_sender).await;
    assert_consistent(&after, "after the retries");
    let stored = rows_by_id(&after.rows);
    let planned: usize = plans.iter().map(|p| p.msgs.len()).sum();
    assert_eq!(stored.len(), planned, "every message is stored once retried");
    for ((sender, id), offset) in &final_acks {
        assert_eq!(stored[&(sender.clone(), id.clone())].user_offset, *offset, "{id} of {sender}");
    }
    for user in &receivers {
        let expected = plans.iter().flat_map(|p| &p.msgs).filter(|(_, to)| to == user).count();
        assert_eq!(after.logs[*user].len(), expected, "the log of {user}");
    }

    // And bob sees the same over the wire.
    let mut bob = connect(second.addr, &tokens["bob"], "phone").await;
    join_user(&mut bob, "bob", json!({"mode": "pull"})).await;
    let log = pull_all(&mut bob, "bob").await;
    let mut seen = BTreeSet::new();
    for m in &log {
        let key = (m["from"]["eid"].as_str().unwrap().to_owned(), m["id"].as_str().unwrap().to_owned());
        assert!(stored.contains_key(&key), "bob pulled a message nobody sent: {m}");
        assert!(seen.insert(key), "bob pulled a message twice: {m}");
    }
    assert_eq!(log.len(), after.logs["bob"].len());

    // A clean stop, bounded.
    let pid = second.child.lock().unwrap().id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let stopped = second.wait(PHASE).await;
    let second_logs = second.drain_logs();
    assert!(stopped.is_some_and(|s| s.success()), "the restarted binary stops cleanly on SIGTERM: {stopped:?}");

    let stored_unacked = stored_before.len() - acked.len();
    eprintln!(
        "kill_mid_batch ({}): {planned} planned, {written} written before the kill, {} acked ({} counted by the \
         trigger), {in_flight} unanswered, {} refused, {stored_unacked} stored but never acked, {} stored before \
         the retries; {:?} in all",
        if db.url.starts_with("postgres") { "postgres" } else { "sqlite" },
        acked.len(),
        acks_seen.load(Ordering::SeqCst),
        refused.len(),
        stored_before.len(),
        started.elapsed()
    );
    for line in first_logs.iter().chain(&second_logs).filter(|l| l.contains("WARN") || l.contains("ERROR")) {
        eprintln!("  server: {line}");
    }
}
