//! Reads of a log or a conversation under concurrent writes, page byte budgets, and the bounds
//! of `Message`/`Signal` string fields; on both backends where storage is involved.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use crate::on_both_backends;
use crate::support::db::TestDb;
use crate::support::devices::{Device, message, signup};
use crate::support::{TestServer, test_config};

/// Held by the tests that load the machine (both sides writing as fast as they can, the storm),
/// so that they do not starve each other's replies past the clients' timeouts on a small machine.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A server whose per-socket rate limits do not get in the way of a test that pushes hard.
fn unthrottled(db: Arc<TestDb>) -> TestServer {
    let mut config = test_config();
    config.socket.rate_per_sec = 1_000_000;
    config.socket.rate_burst = 1_000_000;
    TestServer::start_on(db, config, |c| c)
}

fn numbers(messages: &[Value], field: &str) -> Vec<i64> {
    messages.iter().map(|m| m[field].as_i64().unwrap_or_else(|| panic!("{field} in {m}"))).collect()
}

/// Sends `from` -> `to` messages in windows of pipelined pushes until `stop` is set, counting
/// the acked ones into `acked`; returns how many it sent.
async fn keep_sending(
    mut device: Device,
    from: &str,
    to: &str,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> usize {
    let mut sent = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut refs = Vec::new();
        for _ in 0..8 {
            sent += 1;
            refs.push(device.push("message", message(&format!("{from}-{sent}"), to, "x")).await);
        }
        for r in refs {
            let reply = device.reply(&r).await;
            assert_eq!(reply["status"], "ok", "{reply}");
            acked.fetch_add(1, Ordering::Relaxed);
        }
    }
    sent
}

on_both_backends!(pages_read_while_both_sides_write_have_no_hole, torn_reads);
async fn torn_reads(db: Arc<TestDb>) {
    let _heavy = HEAVY.lock().await;
    let server = unthrottled(db);
    let (alice, bob) = (signup(&server, "alice").await, signup(&server, "bob").await);
    let (a_phone, _) = Device::joined(&server, "alice", &alice, "phone", json!({"mode": "pull"})).await;
    let (b_phone, _) = Device::joined(&server, "bob", &bob, "phone", json!({"mode": "pull"})).await;
    let (mut reader, _) = Device::joined(&server, "alice", &alice, "reader", json!({"mode": "pull"})).await;

    // Alice both sends and receives, so her log interleaves both kinds of rows, and the writer's
    // batches hold both directions at once.
    // Runs until enough happened to show something, however slow the machine is today; the
    // deadline only bounds a server that stopped answering.
    let (stop, acked) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let senders = [
        tokio::spawn(keep_sending(a_phone, "alice", "bob", Arc::clone(&stop), Arc::clone(&acked))),
        tokio::spawn(keep_sending(b_phone, "bob", "alice", Arc::clone(&stop), Arc::clone(&acked))),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let (mut pages, mut holes, mut inconsistent) = (0usize, 0usize, 0usize);
    let mut first_bad = None::<String>;
    let mut last_offset = 0;
    while (pages < 300 || acked.load(Ordering::Relaxed) < 300) && tokio::time::Instant::now() < deadline {
        // Read near the end of the log, where the writes land.
        let after = (last_offset - 10).max(0);
        let page = reader.call_ok("pull", json!({"after": after, "limit": 40})).await;
        let offsets = numbers(page["messages"].as_array().expect("messages"), "signal_offset");
        let end = page["last_offset"].as_i64().expect("last_offset");
        let more = page["more"].as_bool();
        pages += 1;
        if !offsets.iter().zip(after + 1..).all(|(&o, want)| o == want) {
            holes += 1;
            first_bad.get_or_insert_with(|| format!("pull after {after}: {offsets:?}, last_offset {end}"));
        }
        // Read at one moment: the page ends at the log's end as that moment saw it, or says more.
        if !offsets.last().map_or(end == after, |&last| last <= end && (more == Some(true) || last == end)) {
            inconsistent += 1;
            first_bad
                .get_or_insert_with(|| format!("pull after {after}: {offsets:?}, last_offset {end}, more {more:?}"));
        }
        last_offset = end;

        let page = reader.call_ok("history", json!({"with": "bob", "limit": 40})).await;
        let user_offsets = numbers(page["messages"].as_array().expect("messages"), "user_offset");
        pages += 1;
        if user_offsets.windows(2).any(|w| w[1] != w[0] - 1) {
            holes += 1;
            first_bad.get_or_insert_with(|| format!("history: {user_offsets:?}"));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.await.expect("sender task");
    }
    let acked = acked.load(Ordering::Relaxed);
    eprintln!(
        "{pages} pages read while {acked} messages were stored: {holes} with a hole, {inconsistent} not matching last_offset"
    );
    assert!(acked > 100 && pages > 100, "too little happened to show anything: {acked} acked, {pages} pages");
    assert_eq!((holes, inconsistent), (0, 0), "of {pages} pages; first: {first_bad:?}");
}

/// A payload of `n` bytes, base64 for `Message.payload`.
fn big_payload(n: usize, fill: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode(vec![fill; n])
}

on_both_backends!(pages_of_large_messages_stop_at_the_byte_budget_and_say_more, byte_budget);
async fn byte_budget(db: Arc<TestDb>) {
    let server = unthrottled(db);
    let (alice, bob) = (signup(&server, "alice").await, signup(&server, "bob").await);
    let (mut a_phone, _) = Device::joined(&server, "alice", &alice, "phone", json!({"mode": "pull"})).await;
    let (mut b_phone, _) = Device::joined(&server, "bob", &bob, "phone", json!({"mode": "pull"})).await;
    const N: i64 = 20;
    for i in 1..=N {
        let m = json!({"id": format!("big{i}"), "to": {"eid": "bob"}, "payload": big_payload(60_000, i as u8)});
        a_phone.call_ok("message", m).await;
    }

    // 60 KB of payload is 80 KB of base64: a 512 KiB page holds six of them.
    let mut after = 0;
    let mut pages = Vec::new();
    loop {
        let page = b_phone.call_ok("pull", json!({"after": after, "limit": 500})).await;
        let offsets = numbers(page["messages"].as_array().expect("messages"), "signal_offset");
        assert!(!offsets.is_empty(), "a page makes progress: {page:?}");
        assert_eq!(offsets, (after + 1..after + 1 + offsets.len() as i64).collect::<Vec<_>>(), "no gap");
        let more = page["more"].as_bool().expect("more");
        after = *offsets.last().expect("not empty");
        pages.push(offsets.len());
        assert_eq!(more, after < N, "more until the end, page sizes so far {pages:?}");
        if !more {
            break;
        }
    }
    assert_eq!(after, N);
    eprintln!("pull pages of 60 KB messages under the default budget: {pages:?}");
    assert!(pages.len() >= 3 && pages[0] < 10, "cut by bytes, not by limit: {pages:?}");
    let end = b_phone.call_ok("pull", json!({"after": N, "limit": 500})).await;
    assert_eq!((end["messages"].as_array().map(Vec::len), end["more"].clone()), (Some(0), json!(false)));

    // History pages back through the same conversation.
    let mut before: Option<i64> = None;
    let mut seen = Vec::new();
    loop {
        let mut query = json!({"with": "alice", "limit": 500});
        if let Some(b) = before {
            query["before"] = json!(b);
        }
        let page = b_phone.call_ok("history", query).await;
        let user_offsets = numbers(page["messages"].as_array().expect("messages"), "user_offset");
        assert!(!user_offsets.is_empty() && user_offsets.len() < 10, "{user_offsets:?}");
        seen.extend(user_offsets.iter().copied());
        let oldest = *user_offsets.last().expect("not empty");
        assert_eq!(page["more"], json!(oldest > 1));
        if oldest == 1 {
            break;
        }
        before = Some(oldest);
    }
    assert_eq!(seen, (1..=N).rev().collect::<Vec<_>>(), "every message once, newest first");

    // A push-mode catch-up is cut into the same pages, and goes on until the end.
    let (mut b_tablet, _) = Device::joined(&server, "bob", &bob, "tablet", json!({"after": 0})).await;
    let pushed = b_tablet.messages(N as usize).await;
    assert_eq!(numbers(&pushed, "signal_offset"), (1..=N).collect::<Vec<_>>());
    b_tablet.expect_silence(200).await;

    // One message over the budget still goes out, alone.
    let mut config = test_config();
    config.messaging.max_page_bytes = 1_000;
    let small = TestServer::start_on(Arc::new(TestDb::sqlite()), config, |c| c);
    let carol = signup(&small, "carol").await;
    signup(&small, "dave").await;
    let (mut c_phone, _) = Device::joined(&small, "carol", &carol, "phone", json!({"mode": "pull"})).await;
    for i in 1..=3 {
        let m = json!({"id": format!("m{i}"), "to": {"eid": "dave"}, "payload": big_payload(2_000, 1)});
        c_phone.call_ok("message", m).await;
    }
    let page = c_phone.call_ok("pull", json!({"after": 0, "limit": 10})).await;
    assert_eq!(numbers(page["messages"].as_array().expect("messages"), "signal_offset"), [1]);
    assert_eq!(page["more"], true);
    let page = c_phone.call_ok("pull", json!({"after": 2, "limit": 10})).await;
    assert_eq!(numbers(page["messages"].as_array().expect("messages"), "signal_offset"), [3]);
    assert_eq!(page["more"], false, "{page}");
}

#[tokio::test]
async fn string_fields_of_messages_and_signals_are_bounded() {
    let server = TestServer::start();
    let (alice, _bob) = (signup(&server, "alice").await, signup(&server, "bob").await);
    let (mut phone, _) = Device::joined(&server, "alice", &alice, "phone", json!({"mode": "pull"})).await;
    let refused = |reply: &Value, code: i64, field: &str| {
        assert_eq!(reply["status"], "error", "{reply}");
        assert_eq!(reply["response"]["status_code"], code, "{reply}");
        let reason = reply["response"]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(field), "the reason names {field}: {reply}");
    };

    // A 900,000-byte encryption_type fits in a frame but is no scheme name.
    let mut m = message("e1", "bob", "hi");
    m["encryption_type"] = json!("x".repeat(900_000));
    m["encrypted"] = json!("aGk=");
    refused(&phone.call("message", m).await, 400, "encryption_type");
    // And it counts towards max_payload_bytes: 65,500 bytes of payload plus 64 are over 64 KiB.
    let m =
        json!({"id": "e2", "to": {"eid": "bob"}, "payload": big_payload(65_500, 7), "encryption_type": "x".repeat(64)});
    refused(&phone.call("message", m).await, 413, "payload too large");
    let m =
        json!({"id": "e3", "to": {"eid": "bob"}, "payload": big_payload(65_400, 7), "encryption_type": "x".repeat(64)});
    phone.call_ok("message", m).await;

    refused(&phone.call("message", message(&"i".repeat(129), "bob", "hi")).await, 400, "id");
    phone.call_ok("message", message(&"i".repeat(128), "bob", "hi")).await;
    refused(&phone.call("message", message("t1", &"b".repeat(65), "hi")).await, 400, "to.eid");
    let mut m = message("t2", "bob", "hi");
    m["from"] = json!({"eid": "alice", "connection_resource_id": "d".repeat(129)});
    refused(&phone.call("message", m).await, 400, "from.connection_resource_id");
    let mut m = message("t3", "bob", "hi");
    m["to"]["node"] = json!("n".repeat(256));
    refused(&phone.call("message", m).await, 400, "to.node");

    let signal = |extra: Value| {
        let mut s = json!({"to": {"eid": "bob"}, "status": 4});
        s.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
        s
    };
    refused(&phone.call("signal", signal(json!({"id": "s".repeat(129)}))).await, 400, "id");
    refused(&phone.call("signal", signal(json!({"error": "e".repeat(257)}))).await, 400, "error");
    refused(&phone.call("signal", signal(json!({"to": {"eid": "b".repeat(65)}}))).await, 400, "to.eid");
    phone.call_ok("signal", signal(json!({"id": "s".repeat(128)}))).await;
}

on_both_backends!(a_storm_at_1500_messages_a_second_leaves_no_gap, storm);
async fn storm(db: Arc<TestDb>) {
    let _heavy = HEAVY.lock().await;
    let mut config = test_config();
    config.socket.rate_per_sec = 1_000_000;
    config.socket.rate_burst = 1_000_000;
    config.workers = 2;
    let server = TestServer::start_on(db, config, |c| c);
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("report.json");
    // Half the devices drop and rejoin with `after` every 300 ms or so, while 1,500 messages a
    // second are offered; the tool checks every device got every acked message once, in order.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_courier-load"))
        .arg("--url")
        .arg(format!("ws://{}/socket/websocket", server.addr))
        .args(["--quiet", "--json"])
        .arg(&json)
        .args(["storm", "--users", "10", "--devices", "2", "--rate", "2000", "--duration", "3"])
        .args(["--churn", "0.5", "--connected-ms", "300"])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), output).await.expect("the storm ends").expect("runs");
    let printed = String::from_utf8_lossy(&output.stdout);
    let report: Value =
        std::fs::read_to_string(&json).ok().and_then(|text| serde_json::from_str(&text).ok()).unwrap_or(Value::Null);
    eprintln!(
        "storm: sent {}, acked {}, {} reconnects; checks {}",
        report["throughput"]["messages_sent"],
        report["throughput"]["messages_acked"],
        report["metrics"]["reconnects"],
        report["checks"]
    );
    assert!(
        output.status.success(),
        "the storm's checks failed:\n{printed}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report["throughput"]["messages_acked"]["count"].as_u64().is_some_and(|n| n > 100), "{report}");
    assert!(report["metrics"]["reconnects"].as_f64().is_some_and(|n| n >= 10.0), "{report}");
}

/// A catch-up of 12 MB to a device that reads late is paced by the outbound queue's bytes: the
/// device is not closed as a slow consumer, and gets every message in order.
#[tokio::test]
async fn a_large_catch_up_waits_for_room_in_the_queue_instead_of_overflowing_it() {
    let server = unthrottled(Arc::new(TestDb::sqlite()));
    let (alice, bob) = (signup(&server, "alice").await, signup(&server, "bob").await);
    let (mut a_phone, _) = Device::joined(&server, "alice", &alice, "phone", json!({"mode": "pull"})).await;
    const N: i64 = 150;
    for i in 1..=N {
        let m = json!({"id": format!("big{i}"), "to": {"eid": "bob"}, "payload": big_payload(60_000, i as u8)});
        a_phone.call_ok("message", m).await;
    }
    let (mut b_tablet, _) = Device::joined(&server, "bob", &bob, "tablet", json!({"after": 0})).await;
    // Not reading for a while fills the kernel's buffers; the rest must wait in the store.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pushed = b_tablet.messages(N as usize).await;
    assert_eq!(numbers(&pushed, "signal_offset"), (1..=N).collect::<Vec<_>>());
}
