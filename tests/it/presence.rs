//! Presence over real sockets: `presence_state` after a join and coalesced `presence_diff`s on
//! `room:*`, `user:<eid>` and `presence:<eid>`; sockets that leave, are killed or update their
//! meta; watchers' online/offline `status` and last-seen; who may watch; and a join storm.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::on_both_backends;
use crate::support::db::TestDb;
use crate::support::devices::{Device, signup};
use crate::support::{Client, Frame, TestServer, test_config};

/// A client's view of one topic's presence, merged as phoenix.js does: by `phx_ref`, with
/// diffs that arrive before the first `presence_state` held back and applied after it.
#[derive(Default, Debug)]
struct View {
    pending: Vec<Value>,
    /// key → metas by ref.
    keys: BTreeMap<String, BTreeMap<String, Value>>,
    states: usize,
    diffs: usize,
    /// How many metas of each key left, over the whole test.
    left: BTreeMap<String, usize>,
}

impl View {
    /// Applies a presence frame of `topic`; false for any other frame.
    fn apply(&mut self, topic: &str, frame: &Value) -> bool {
        if frame[2] != topic {
            return false;
        }
        let metas = |p: &Value| -> Vec<(String, Value)> {
            p["metas"]
                .as_array()
                .expect("metas")
                .iter()
                .map(|m| (m["phx_ref"].as_str().unwrap().to_owned(), m.clone()))
                .collect()
        };
        match frame[3].as_str() {
            Some("presence_state") => {
                self.states += 1;
                self.keys = frame[4]
                    .as_object()
                    .expect("state is an object")
                    .iter()
                    .map(|(k, p)| (k.clone(), metas(p).into_iter().collect()))
                    .collect();
                for diff in std::mem::take(&mut self.pending) {
                    self.apply(topic, &diff);
                }
            }
            Some("presence_diff") if self.states == 0 => {
                self.pending.push(frame.clone());
            }
            Some("presence_diff") => {
                self.diffs += 1;
                assert!(frame[1].is_null(), "diffs are not replies: {frame}");
                for (key, p) in frame[4]["joins"].as_object().expect("joins") {
                    self.keys.entry(key.clone()).or_default().extend(metas(p));
                }
                for (key, p) in frame[4]["leaves"].as_object().expect("leaves") {
                    let gone = metas(p);
                    *self.left.entry(key.clone()).or_default() += gone.len();
                    if let Some(refs) = self.keys.get_mut(key) {
                        for (r, _) in gone {
                            refs.remove(&r);
                        }
                        if refs.is_empty() {
                            self.keys.remove(key);
                        }
                    }
                }
            }
            _ => return false,
        }
        true
    }

    fn key_set(&self) -> BTreeSet<&str> {
        self.keys.keys().map(String::as_str).collect()
    }

    /// The only meta of `key`.
    fn meta(&self, key: &str) -> &Value {
        let metas = &self.keys[key];
        assert_eq!(metas.len(), 1, "{key} has one meta: {metas:?}");
        metas.values().next().unwrap()
    }
}

/// Reads frames into `view` until `done` holds (bounded); other frames go to `others`.
async fn until(
    client: &mut Client,
    topic: &str,
    view: &mut View,
    others: &mut Vec<Value>,
    done: impl Fn(&View) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done(view) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.recv_within(left).await {
            Some(Frame::Json(frame)) => {
                if !view.apply(topic, &frame) {
                    others.push(frame);
                }
            }
            other => panic!("waiting for presence on {topic}: got {other:?}; view {view:?}"),
        }
    }
}

/// Reads whatever arrives for `ms` into `view`.
async fn settle(client: &mut Client, topic: &str, view: &mut View, ms: u64) {
    while let Some(frame) = client.recv_within(Duration::from_millis(ms)).await {
        let Frame::Json(frame) = frame else { panic!("unexpected {frame:?}") };
        view.apply(topic, &frame);
    }
}

#[tokio::test]
async fn room_members_see_each_other_and_every_kind_of_departure_once() {
    let server = TestServer::start();
    let mut clients = Vec::new();
    let mut views = Vec::new();
    for _ in 0..3 {
        let mut c = server.client().await.see_presence();
        c.send(json!(["1", "1", "room:lobby", "phx_join", {}])).await;
        let reply = c.recv_json().await;
        assert_eq!(reply[4]["status"], "ok", "{reply}");
        // The state comes after the join reply, pushed with the join's join_ref, and already
        // holds the joiner itself.
        let mut view = View::default();
        let mut others = Vec::new();
        until(&mut c, "room:lobby", &mut view, &mut others, |v| v.states == 1).await;
        assert!(others.is_empty(), "{others:?}");
        assert_eq!(view.keys.len(), clients.len() + 1);
        clients.push(c);
        views.push(view);
    }
    for (c, view) in clients.iter_mut().zip(views.iter_mut()) {
        until(c, "room:lobby", view, &mut Vec::new(), |v| v.keys.len() == 3).await;
    }
    let keys: Vec<String> = views[0].keys.keys().cloned().collect();
    assert!(keys.iter().all(|k| k.starts_with("anonymous:")), "{keys:?}");
    let meta = views[0].meta(&keys[0]).clone();
    assert!(meta["online_at"].as_i64().is_some_and(|t| t > 0), "{meta}");
    assert_eq!(meta["node"], "courier@localhost");
    assert_eq!(meta["phx_ref"].as_str().map(str::len), Some(16), "{meta}");

    // The second leaves its channel, the third's connection is killed (no close frame).
    assert_eq!(views[1].key_set(), views[0].key_set(), "every member sees the same keys");
    clients[1].send(json!(["1", "2", "room:lobby", "phx_leave", {}])).await;
    let third = clients.pop().unwrap();
    drop(third);
    let mut first = clients.remove(0);
    let view = &mut views[0];
    until(&mut first, "room:lobby", view, &mut Vec::new(), |v| v.keys.len() == 1).await;
    settle(&mut first, "room:lobby", view, 300).await;
    assert_eq!(view.keys.len(), 1, "{view:?}");
    assert_eq!(view.left.len(), 2, "two members left: {view:?}");
    assert!(view.left.values().all(|&n| n == 1), "each left exactly once: {view:?}");
}

on_both_backends!(a_users_devices_see_each_other_and_watchers_see_online_and_last_seen, user_presence);
async fn user_presence(db: Arc<TestDb>) {
    let server = TestServer::start_on(db, test_config(), |c| c);
    let (alice, bob) = (signup(&server, "alice").await, signup(&server, "bob").await);
    let topic = "user:alice";
    let phone = Device::connect(&server, &alice, "phone").await.see_presence();
    let (mut phone, _) = Device::join_on(phone, "alice", json!({})).await;
    let mut phone_view = View::default();
    until(&mut phone.client, topic, &mut phone_view, &mut Vec::new(), |v| v.key_set().contains("phone")).await;
    assert_eq!(phone_view.meta("phone")["signal_request"], 2);

    let laptop = Device::connect(&server, &alice, "laptop").await.see_presence();
    let (mut laptop, _) = Device::join_on(laptop, "alice", json!({"mode": "pull"})).await;
    let mut laptop_view = View::default();
    let both = |v: &View| v.key_set() == BTreeSet::from(["laptop", "phone"]);
    until(&mut laptop.client, topic, &mut laptop_view, &mut Vec::new(), both).await;
    until(&mut phone.client, topic, &mut phone_view, &mut Vec::new(), both).await;
    assert_eq!(phone_view.meta("laptop")["signal_request"], 1, "pull mode shows in the meta");

    // bob watches alice: the devices, then one online/offline status.
    let mut watcher = Device::connect(&server, &bob, "phone").await.see_presence();
    watcher.send(json!(["7", "7", "presence:alice", "phx_join", {}])).await;
    let reply = watcher.recv_json().await;
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    let connected_at = reply[4]["response"]["last_seen"].as_i64().expect("alice's devices connected");
    let mut watch_view = View::default();
    let mut statuses = Vec::new();
    until(&mut watcher, "presence:alice", &mut watch_view, &mut statuses, both).await;
    assert_eq!(watch_view.meta("laptop")["signal_request"], 1);
    if statuses.is_empty() {
        statuses.push(watcher.recv_json().await);
    }
    assert_eq!(statuses[0][3], "status");
    assert_eq!(statuses[0][4], json!({"online": true, "last_seen": null}));

    // A meta update: the same key joins with the new meta and leaves with the old one.
    let update = laptop.call_ok("presence", json!({"status": "away"})).await;
    let new_ref = update["phx_ref"].as_str().expect("new phx_ref").to_owned();
    until(&mut phone.client, topic, &mut phone_view, &mut Vec::new(), |v| {
        v.meta("laptop")["phx_ref"] == new_ref.as_str()
    })
    .await;
    assert_eq!(phone_view.meta("laptop")["status"], "away");
    assert!(phone_view.meta("laptop")["phx_ref_prev"].is_string());
    assert_eq!(phone_view.left.get("laptop"), Some(&1), "the old meta left");
    let bad = laptop.call("presence", json!({"status": ""})).await;
    assert_eq!(bad["status"], "error", "{bad}");

    // Both devices go: the watcher sees them leave, then offline with a last-seen time.
    drop(phone);
    drop(laptop);
    let mut statuses = Vec::new();
    until(&mut watcher, "presence:alice", &mut watch_view, &mut statuses, |v| v.keys.is_empty()).await;
    while statuses.is_empty() {
        statuses.push(watcher.recv_json().await);
    }
    assert_eq!(statuses.len(), 1, "{statuses:?}");
    assert_eq!(statuses[0][4]["online"], false);
    assert!(statuses[0][4]["last_seen"].as_i64().is_some_and(|t| t >= connected_at), "{statuses:?}");

    // A later watcher (alice herself, on a socket without a device, so connecting records
    // nothing) learns from storage when her devices left, not just when they connected. The
    // leave times are written in the background, so this asks again until they are in.
    let mut own = Client::connect(&server.url(&format!("vsn=2.0.0&token={alice}"))).await;
    let mut stored = None;
    for attempt in 1..=50 {
        let r = attempt.to_string();
        own.send(json!([r, r, "presence:alice", "phx_join", {}])).await;
        let reply = loop {
            let frame = own.recv_json().await;
            if frame[3] == "phx_reply" && frame[1] == r.as_str() {
                break frame;
            }
        };
        assert_eq!(reply[4]["status"], "ok", "{reply}");
        // Rejoining replaces the previous attempt's channel; its phx_close (with the old
        // join_ref) may come before or after the new channel's status.
        let status = loop {
            let frame = own.recv_json().await;
            if frame[3] == "phx_close" && frame[0] != r.as_str() {
                continue;
            }
            break frame;
        };
        assert_eq!((status[3].clone(), status[4]["online"].clone()), (json!("status"), json!(false)), "{status}");
        stored = reply[4]["response"]["last_seen"].as_i64();
        if stored.is_some_and(|t| t > connected_at) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stored.is_some_and(|t| t > connected_at), "leave times stored: {stored:?} vs {connected_at}");

    // Who may not watch.
    let mut anonymous = server.client().await;
    for (topic, reason) in [("presence:alice", "unauthorized")] {
        anonymous.send(json!(["1", "1", topic, "phx_join", {}])).await;
        assert_eq!(anonymous.recv_json().await[4]["response"]["reason"], reason);
    }
    for (topic, reason) in [("presence:nobody", "no_such_user"), ("presence:", "presence topic must name a user")] {
        own.send(json!(["2", "2", topic, "phx_join", {}])).await;
        // The attempts above replaced one another; a late phx_close of theirs may still come.
        let reply = loop {
            let frame = own.recv_json().await;
            if frame[3] != "phx_close" {
                break frame;
            }
        };
        assert_eq!(reply[4]["response"]["reason"], reason, "{reply}");
    }
}

#[tokio::test]
async fn with_contacts_required_only_contacts_and_oneself_may_watch() {
    let mut config = test_config();
    config.accounts.require_contacts = true;
    let server = TestServer::start_with(config, |c| c);
    let (alice, bob) = (signup(&server, "alice").await, signup(&server, "bob").await);
    let mut stranger = Device::connect(&server, &bob, "phone").await;
    stranger.send(json!(["1", "1", "presence:alice", "phx_join", {}])).await;
    assert_eq!(stranger.recv_json().await[4]["response"]["reason"], "not_contacts");
    stranger.send(json!(["2", "2", "presence:bob", "phx_join", {}])).await;
    assert_eq!(stranger.recv_json().await[4]["status"], "ok");

    // Once they are contacts, bob may watch alice.
    let (mut a, _) = Device::joined(&server, "alice", &alice, "phone", json!({})).await;
    let (mut b, _) = Device::joined(&server, "bob", &bob, "laptop", json!({})).await;
    a.call_ok("invite.request", json!({"dest": "bob"})).await;
    b.call_ok("invite.accept", json!({"dest": "alice"})).await;
    stranger.send(json!(["3", "3", "presence:alice", "phx_join", {}])).await;
    let reply = loop {
        let frame = stranger.recv_json().await;
        if frame[3] == "phx_reply" && frame[1] == "3" {
            break frame;
        }
    };
    assert_eq!(reply[4]["status"], "ok", "{reply}");
}

/// 10,000 channel joins with presence at once: 100 sockets each join the same 100 rooms,
/// pipelining every join. All are accepted and every member ends with every other in view.
#[tokio::test]
async fn ten_thousand_concurrent_joins_with_presence_all_succeed_and_converge() {
    const SOCKETS: usize = 100;
    const ROOMS: usize = 100;
    // Each socket is sent thousands of frames in a second or two and all 100 clients read on
    // one test thread; on a loaded machine that thread falls behind, and the default 1,024-frame
    // queue would close a socket as a slow consumer (tested elsewhere) before it converged.
    let mut config = test_config();
    config.socket.outbound_queue = 16_384;
    config.socket.outbound_queue_bytes = 16 * 1024 * 1024;
    let server = TestServer::start_with(config, |c| c);
    let mut clients = Vec::new();
    for _ in 0..SOCKETS {
        clients.push(server.client().await.see_presence());
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                for room in 0..ROOMS {
                    let r = (room + 1).to_string();
                    c.send(json!([r, r, format!("room:storm{room}"), "phx_join", {}])).await;
                }
                let mut views: Vec<View> = (0..ROOMS).map(|_| View::default()).collect();
                let (mut ok, mut errors) = (0, Vec::new());
                let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
                while ok + errors.len() < ROOMS || views.iter().any(|v| v.keys.len() < SOCKETS) {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let frame = match c.recv_within(left).await {
                        Some(Frame::Json(frame)) => frame,
                        other => {
                            let short: Vec<usize> = views.iter().map(|v| v.keys.len()).filter(|&n| n < SOCKETS).collect();
                            panic!("storm stalled: {ok} joined, {} errors, rooms short of members: {short:?}; got {other:?}", errors.len());
                        }
                    };
                    let room: usize = frame[2].as_str().and_then(|t| t.strip_prefix("room:storm")).unwrap().parse().unwrap();
                    match frame[3].as_str() {
                        Some("phx_reply") if frame[4]["status"] == "ok" => ok += 1,
                        Some("phx_reply") => errors.push(frame),
                        _ => assert!(views[room].apply(frame[2].as_str().unwrap(), &frame), "{frame}"),
                    }
                }
                let diffs: usize = views.iter().map(|v| v.diffs).sum();
                (ok, errors, diffs)
            })
        })
        .collect();
    let (mut joined, mut diffs) = (0, 0);
    for task in tasks {
        let (ok, errors, d) = task.await.expect("client task");
        assert!(errors.is_empty(), "join errors: {errors:?}");
        joined += ok;
        diffs += d;
    }
    assert_eq!(joined, SOCKETS * ROOMS);
    // Without coalescing each member would get one diff per later join (about 5,000 per room);
    // printed for the record, the exact count depends on how the joins fall into windows.
    println!("{joined} joins; {diffs} presence_diff frames delivered in total");
}
