//! The contract every [`Tracker`] keeps, as one async check that takes a factory: the local
//! tracker runs it in this crate's tests, and a Redis or NATS tracker runs the same function
//! against its own backend. Each step asserts what phoenix.js's `Presence` relies on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{Actor, Context, Handler};
use serde_json::{Value, json};

use super::{Meta, PresenceError, Tracker};
use crate::pubsub::{ConnectionId, Deliver, Event, LocalBroker, PubSub};

/// Builds the tracker under test, publishing its diffs through `pubsub`.
pub type TrackerFactory = dyn Fn(PubSub) -> Arc<dyn Tracker>;

/// How long a diff or a departure may take to show; generous, since the check only waits for
/// what must happen and never asserts a duration.
const PATIENCE: Duration = Duration::from_secs(10);

/// Records the presence diffs a topic's subscriber is delivered.
struct DiffProbe(Arc<Mutex<Vec<Value>>>);

impl Actor for DiffProbe {
    type Context = Context<Self>;
}

impl Handler<Deliver> for DiffProbe {
    type Result = ();
    fn handle(&mut self, Deliver(broadcast): Deliver, _: &mut Context<Self>) {
        if let Event::PresenceDiff { diff, .. } = &broadcast.event {
            let value = diff.as_json_str().and_then(|t| serde_json::from_str(t).ok()).unwrap_or(Value::Null);
            self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(value);
        }
    }
}

/// Polls `condition` until it holds or [`PATIENCE`] runs out; false in the second case.
async fn eventually(mut condition: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

fn meta(status: &str) -> Meta {
    let mut meta = Meta::new();
    meta.insert("status".into(), json!(status));
    meta
}

/// The keys and metas of a topic as its `presence_state` says.
async fn state(tracker: &Arc<dyn Tracker>, topic: &str) -> Value {
    let snapshot = tracker.list(topic).await.expect("list answers");
    serde_json::from_str(snapshot.state.as_json_str().unwrap_or("null")).expect("presence_state is JSON")
}

/// Runs the whole contract against the tracker `factory` builds. Panics on the first breach.
pub async fn check_tracker(factory: &TrackerFactory) {
    let pubsub = PubSub::start(1, Arc::new(LocalBroker::new("conformance@node")));
    let tracker = factory(pubsub.clone());
    let topic = "room:conformance";
    let diffs = Arc::new(Mutex::new(Vec::new()));
    let probe = DiffProbe(Arc::clone(&diffs)).start();
    pubsub.subscribe(topic, u64::MAX, probe.recipient()).await.expect("subscribes");

    // Track: a fresh phx_ref, visible in the state and announced as a join.
    let owner = |seq| ConnectionId::new(pubsub.node_id().clone(), seq);
    let (owner_a, owner_b, owner_c) = (owner(1), owner(2), owner(3));
    let lease_a = tracker.lease(&owner_a);
    let ref_a = tracker.track(topic, "alice", &owner_a, meta("here")).await.expect("tracks");
    assert!(!ref_a.is_empty(), "a phx_ref is never empty");
    let listed = state(&tracker, topic).await;
    assert_eq!(listed["alice"]["metas"][0]["phx_ref"], json!(ref_a));
    assert_eq!(listed["alice"]["metas"][0]["status"], json!("here"));
    let joined = eventually(async || diffs.lock().unwrap().iter().any(|d| d["joins"]["alice"].is_object())).await;
    assert!(joined, "a track is announced as a presence_diff join");

    // The same owner under the same key twice is refused; another owner adds a second meta.
    assert!(matches!(tracker.track(topic, "alice", &owner_a, Meta::new()).await, Err(PresenceError::AlreadyTracked)));
    let lease_b = tracker.lease(&owner_b);
    let ref_b = tracker.track(topic, "alice", &owner_b, meta("tablet")).await.expect("a second device of one key");
    assert_ne!(ref_a, ref_b, "every presence has its own phx_ref");
    assert_eq!(state(&tracker, topic).await["alice"]["metas"].as_array().map(Vec::len), Some(2));

    // Update: a new phx_ref whose phx_ref_prev is the old one; an unknown presence is an error.
    let ref_a2 = tracker.update(topic, "alice", &owner_a, meta("away")).await.expect("updates");
    assert_ne!(ref_a2, ref_a);
    let listed = state(&tracker, topic).await;
    let updated = listed["alice"]["metas"].as_array().and_then(|m| m.iter().find(|m| m["phx_ref"] == json!(ref_a2)));
    let updated = updated.expect("the updated meta is listed");
    assert_eq!(updated["status"], json!("away"));
    assert_eq!(updated["phx_ref_prev"], json!(ref_a));
    assert!(matches!(tracker.update(topic, "nobody", &owner_a, Meta::new()).await, Err(PresenceError::NoPresence)));

    // Untrack, twice: the second is a no-op. Calls from one socket apply in call order.
    tracker.untrack(topic, "alice", &owner_a);
    tracker.untrack(topic, "alice", &owner_a);
    let listed = state(&tracker, topic).await;
    assert_eq!(listed["alice"]["metas"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed["alice"]["metas"][0]["phx_ref"], json!(ref_b));
    // Changes inside one diff window may coalesce (the update's join and the untrack cancel
    // out), so the leave names whichever of the device's refs a client last saw.
    let left = eventually(async || {
        diffs.lock().unwrap().iter().any(|d| {
            let metas = d["leaves"]["alice"]["metas"].as_array().cloned().unwrap_or_default();
            metas.iter().any(|m| m["phx_ref"] == json!(ref_a2) || m["phx_ref"] == json!(ref_a))
        })
    })
    .await;
    assert!(left, "an untrack is announced as a presence_diff leave");

    let lease_c = tracker.lease(&owner_c);
    let tracked = tracker.track(topic, "carol", &owner_c, Meta::new());
    tracker.untrack(topic, "carol", &owner_c);
    let _ = tracked.await;
    assert!(state(&tracker, topic).await.get("carol").is_none(), "track then untrack leaves nothing");

    // A connection that ends without untracking (its socket died and dropped its lease) leaves
    // from every topic it was on, and only it does.
    let other_topic = "room:conformance-2";
    tracker.track(other_topic, "bob", &owner_b, Meta::new()).await.expect("tracks on a second topic");
    tracker.track(other_topic, "carol", &owner_c, Meta::new()).await.expect("tracks a survivor");
    drop(lease_b);
    let gone = eventually(async || {
        state(&tracker, topic).await.get("alice").is_none() && state(&tracker, other_topic).await.get("bob").is_none()
    })
    .await;
    assert!(gone, "the presences of a connection whose lease dropped leave");
    assert!(state(&tracker, other_topic).await["carol"].is_object(), "other connections stay");
    assert_eq!(tracker.list("room:never-tracked").await.expect("list answers").keys, 0);
    drop((lease_a, lease_c));
    pubsub.stop();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::{ClusterTracker, LocalTracker, PresenceConfig};

    #[actix::test]
    async fn the_local_tracker_keeps_the_contract() {
        let config = PresenceConfig { shards: 2, diff_window_ms: 5, ..PresenceConfig::default() };
        check_tracker(&move |pubsub| {
            Arc::new(LocalTracker::start(&config, pubsub, crate::clock::system())) as Arc<dyn Tracker>
        })
        .await;
    }

    #[actix::test]
    async fn the_cluster_tracker_keeps_the_contract() {
        let config = PresenceConfig {
            shards: 2,
            diff_window_ms: 5,
            heartbeat_ms: 50,
            node_timeout_ms: 500,
            ..PresenceConfig::default()
        };
        check_tracker(&move |pubsub| {
            Arc::new(ClusterTracker::start(&config, pubsub, crate::clock::system())) as Arc<dyn Tracker>
        })
        .await;
    }
}
