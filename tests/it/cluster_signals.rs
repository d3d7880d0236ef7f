//! Status signals on two nodes that share one PostgreSQL database, over Redis and over NATS:
//! alice has a device on each node, bob one on b. Each node's signal relay tells the other
//! about every signal it relays, so the pair's token bucket and its typing indicator hold
//! across the two: signals through both nodes share one rate, a TYPING through b keeps a's
//! older indicator from expiring (only b's expiry sends PAUSED), and a PAUSED through b ends
//! the indicator a armed (no stale PAUSED later).

#![cfg_attr(not(all(feature = "redis", feature = "nats")), allow(dead_code, unused_imports))]

use std::sync::Arc;
use std::time::{Duration, Instant};

use courier::pubsub::ClusterConfig;
use serde_json::{Value, json};

use crate::cluster::{Join, node_with, ready};
use crate::support::db::TestDb;
use crate::support::devices::{Device, signup};
use crate::support::{TestServer, test_config};

/// The pair's rate: one signal a second, after a burst of four.
const RATE_PER_SEC: u32 = 1;
const BURST: usize = 4;
/// How long an indicator nobody ends stays live.
const TYPING_TIMEOUT_MS: u64 = 2000;
/// Longer than a backup timer waits past the timeout (the relay's grace is 1 s).
const PAST_ANY_BACKUP_MS: u64 = 1500;

const CHATTING: i32 = 1;
const TYPING: i32 = 4;
const PAUSED: i32 = 5;

fn signal(id: &str, to: &str, status: i32) -> Value {
    json!({"id": id, "to": {"eid": to}, "status": status})
}

/// Alice's phone on a, her laptop on b, bob's phone on b.
struct Devices {
    phone: Device,
    laptop: Device,
    inbox: Device,
}

/// Two nodes joined by `cluster` on a database of their own, with a small signal rate and a
/// short typing timeout, and alice's and bob's devices on them; `None` when a server is missing.
async fn two_nodes(cluster: Option<ClusterConfig>, test: &str) -> Option<(TestServer, TestServer, Devices)> {
    let cluster = cluster?;
    let db = Arc::new(TestDb::postgres(test)?);
    let mut config = test_config();
    config.messaging.signal_rate_per_sec = RATE_PER_SEC;
    config.messaging.signal_burst = BURST as u32;
    config.messaging.typing_timeout_ms = TYPING_TIMEOUT_MS;
    let join = Join::Broker(cluster);
    let (a, b) = (node_with(&db, &join, "courier@a", config.clone()), node_with(&db, &join, "courier@b", config));
    for server in [&a, &b] {
        assert_eq!(ready(server).await["broker"], "up");
    }
    let (alice, bob) = (signup(&a, "alice").await, signup(&a, "bob").await);
    let (phone, _) = Device::joined(&a, "alice", &alice, "phone", json!({})).await;
    let (laptop, _) = Device::joined(&b, "alice", &alice, "laptop", json!({})).await;
    let (inbox, _) = Device::joined(&b, "bob", &bob, "phone", json!({})).await;
    Some((a, b, Devices { phone, laptop, inbox }))
}

/// The next signal `device` gets, as (id, status).
async fn next_signal(device: &mut Device) -> (String, i64) {
    let s = device.event("signal").await;
    (s["id"].as_str().unwrap_or_default().to_owned(), s["status"].as_i64().unwrap_or_default())
}

/// (a) A burst through a empties the pair's bucket on b too: what b admits after it is only
/// what the bucket refilled meanwhile.
async fn one_rate_across_nodes(mut d: Devices) {
    let started = Instant::now();
    for i in 0..BURST {
        d.phone.call_ok("signal", signal(&format!("a{i}"), "bob", CHATTING)).await;
    }
    // The relay of a sends its notes ahead of the signals, so b has them once bob's phone,
    // on b, has the signals; a moment more covers b's relay taking them in.
    for i in 0..BURST {
        assert_eq!(next_signal(&mut d.inbox).await, (format!("a{i}"), i64::from(CHATTING)));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut admitted_on_b = 0;
    for i in 0..BURST {
        let reply = d.laptop.call("signal", signal(&format!("b{i}"), "bob", CHATTING)).await;
        if reply["status"] == "ok" {
            admitted_on_b += 1;
        } else {
            assert_eq!(reply["response"]["status_code"], 429, "{reply}");
        }
    }
    // The bucket refills one token per 1/rate: that much may pass, however slow the machine.
    let refilled = (started.elapsed().as_secs_f64() * f64::from(RATE_PER_SEC)).floor() as usize;
    assert!(
        admitted_on_b <= refilled,
        "b admitted {admitted_on_b} of {BURST} after a's burst; the bucket refilled {refilled} in {:?}",
        started.elapsed()
    );
    if refilled >= BURST {
        eprintln!("one_rate_across_nodes: the machine took {:?}, so the bound held trivially", started.elapsed());
    }
}

/// (b) TYPING through a, then through b well before a's timeout: a's timer sends nothing, and
/// b's sends the one PAUSED, for b's signal.
async fn typing_elsewhere_keeps_the_indicator_live(mut d: Devices) {
    d.phone.call_ok("signal", signal("t1", "bob", TYPING)).await;
    assert_eq!(next_signal(&mut d.inbox).await, ("t1".into(), i64::from(TYPING)));
    assert_eq!(next_signal(&mut d.laptop).await, ("t1".into(), i64::from(TYPING)), "the phone's copy");
    tokio::time::sleep(Duration::from_millis(TYPING_TIMEOUT_MS / 4)).await;
    d.laptop.call_ok("signal", signal("t2", "bob", TYPING)).await;
    assert_eq!(next_signal(&mut d.inbox).await, ("t2".into(), i64::from(TYPING)));
    assert_eq!(next_signal(&mut d.phone).await, ("t2".into(), i64::from(TYPING)), "the laptop's copy");
    // a's timer runs out first; the first PAUSED either device sees must be b's, for t2.
    for device in [&mut d.inbox, &mut d.phone, &mut d.laptop] {
        assert_eq!(next_signal(device).await, ("t2".into(), i64::from(PAUSED)), "b's expiry, not a's");
    }
    for device in [&mut d.inbox, &mut d.phone, &mut d.laptop] {
        device.expect_silence(PAST_ANY_BACKUP_MS).await;
    }
}

/// (c) TYPING through a, PAUSED through b: a's armed indicator is ended, so a sends no PAUSED
/// of its own later.
async fn paused_elsewhere_ends_the_indicator(mut d: Devices) {
    d.phone.call_ok("signal", signal("t1", "bob", TYPING)).await;
    assert_eq!(next_signal(&mut d.inbox).await, ("t1".into(), i64::from(TYPING)));
    assert_eq!(next_signal(&mut d.laptop).await, ("t1".into(), i64::from(TYPING)));
    d.laptop.call_ok("signal", signal("p1", "bob", PAUSED)).await;
    assert_eq!(next_signal(&mut d.inbox).await, ("p1".into(), i64::from(PAUSED)));
    assert_eq!(next_signal(&mut d.phone).await, ("p1".into(), i64::from(PAUSED)));
    for device in [&mut d.inbox, &mut d.phone, &mut d.laptop] {
        device.expect_silence(TYPING_TIMEOUT_MS + PAST_ANY_BACKUP_MS).await;
    }
}

/// A test per broker for one scenario: two fresh nodes, the scenario, a clean shutdown.
macro_rules! over_redis_and_nats {
    ($scenario:ident) => {
        mod $scenario {
            #[cfg(feature = "redis")]
            #[tokio::test]
            async fn over_redis() {
                let test = concat!(stringify!($scenario), "_over_redis");
                let _serial = crate::cluster::REDIS.lock().await;
                let Some((a, b, devices)) = super::two_nodes(crate::cluster::redis(test), test).await else { return };
                super::$scenario(devices).await;
                a.shutdown().await;
                b.shutdown().await;
            }

            #[cfg(feature = "nats")]
            #[tokio::test]
            async fn over_nats() {
                let test = concat!(stringify!($scenario), "_over_nats");
                let Some((a, b, devices)) = super::two_nodes(crate::cluster::nats(test), test).await else { return };
                super::$scenario(devices).await;
                a.shutdown().await;
                b.shutdown().await;
            }
        }
    };
}

over_redis_and_nats!(one_rate_across_nodes);
over_redis_and_nats!(typing_elsewhere_keeps_the_indicator_live);
over_redis_and_nats!(paused_elsewhere_ends_the_indicator);
