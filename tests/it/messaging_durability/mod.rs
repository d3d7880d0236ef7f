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
use courier::store::messages::{self, MessageRow};
use courier::store::{Store, read_transaction};
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
            logs.insert(user.clone(), read_transaction(conn, |s| messages::log_offsets(s, user))?);
        }
        let mut rows = Vec::new();
        for (sender, ids) in &ids_by_sender {
            let keys: Vec<(&str, &str)> = ids.iter().map(|id| (sender.as_str(), id.as_str())).collect();
            rows.extend(messages::find_stored(conn, &keys)?);
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

mod concurrency;
mod crash;
