//! The real binary SIGKILLed mid-batch and restarted on the same database.

use super::*;

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
    // Rate limits and the pending-replies bound out of the way (the clients send as fast as the
    // sockets take frames, all 500 before the first ack), and cheap password hashing for the
    // sign-ups.
    let config = dir.path().join("courier.toml");
    let toml = "[socket]\nrate_per_sec = 1000000\nrate_burst = 1000000\nmax_pending_replies = 1000\n\n\
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
