//! Many pipelined senders, one inbox: gap-free logs, each message stored once.

use super::*;

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
