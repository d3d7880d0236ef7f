//! The single-node tracker: topics hashed over shard actors, each on its own thread, each
//! owning the [`TopicPresence`] of its topics and broadcasting their diffs (under the cluster
//! tracker, handing them to its replicator instead, with a delta for the other nodes). A connection's lease
//! is a guard that, when dropped, tells every shard the connection is gone; each shard keeps
//! which of its topics a connection is on, so a departure costs its own presences only.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::{Actor, ActorContext, Addr, ArbiterHandle, AsyncContext, Context, Handler, Message, Recipient};
use futures_util::future::LocalBoxFuture;
use tokio::sync::oneshot;

use super::{Lease, Meta, Occupancy, PresenceConfig, PresenceError, Snapshot, TopicPresence, Tracker};
use crate::clock::Clock;
use crate::pubsub::{Broadcast, ConnectionId, Event, PubSub};
use crate::task::Stop;

type Answer<T> = oneshot::Sender<Result<T, PresenceError>>;

enum Command {
    Track {
        topic: String,
        key: String,
        owner: ConnectionId,
        meta: Meta,
        answer: Answer<String>,
    },
    Update {
        topic: String,
        key: String,
        owner: ConnectionId,
        meta: Meta,
        answer: Answer<String>,
    },
    Untrack {
        topic: String,
        key: String,
        owner: ConnectionId,
    },
    List {
        topic: String,
        answer: Answer<Snapshot>,
    },
    /// The connection's lease was dropped.
    Gone {
        owner: ConnectionId,
    },
    /// Another node asked for this node's whole state: publish the shard's.
    Resync,
}

impl Message for Command {
    type Result = ();
}

/// One tracker shard: the presences of the topics that hash to it.
struct Shard {
    /// Keyed by shared names, so the dirty set and the owners' lists point at the one copy.
    topics: HashMap<Arc<str>, TopicPresence>,
    /// Topics with changes not yet broadcast.
    dirty: HashSet<Arc<str>>,
    /// Which of this shard's topics each connection has presences on, and under how many keys.
    /// A list, not a map: a connection is on a few topics per shard, and a map per connection
    /// cost a few hundred bytes per socket more (measured with `courier-load idle --users`).
    owners: HashMap<ConnectionId, Vec<(Arc<str>, u32)>>,
    pubsub: PubSub,
    window: Duration,
    /// Stamps each diff's occupancy `at`.
    clock: Arc<dyn Clock>,
    /// Set when other nodes keep a replica of this shard's presences.
    replication: Option<Replication>,
}

/// How a shard tells other nodes about its presences (see [`super::cluster`]).
struct Replication {
    /// This shard's place among the node's shards, which numbers its versions.
    index: u32,
    /// Bumped at every delta; read by the heartbeat.
    version: Arc<AtomicU64>,
    /// The most bytes one replication message may hold.
    part_bytes: usize,
    /// Announces this shard's diffs to this node's sockets, knowing the other nodes' presences.
    replicator: Recipient<super::cluster::LocalDiffs>,
}

/// What a replicated shard needs from the cluster tracker that starts it.
pub(super) struct Replicated {
    /// The most bytes one replication message may hold.
    pub part_bytes: usize,
    /// Where the shards' diffs go instead of straight to the sockets.
    pub replicator: Recipient<super::cluster::LocalDiffs>,
}

impl Actor for Shard {
    type Context = Context<Self>;
}

impl Shard {
    /// Counts one presence of `owner` on `topic` gone (an untrack), forgetting what reaches 0.
    fn forget(&mut self, owner: &ConnectionId, topic: &str) {
        let Some(topics) = self.owners.get_mut(owner) else { return };
        if let Some(at) = topics.iter().position(|(t, _)| **t == *topic) {
            topics[at].1 = topics[at].1.saturating_sub(1);
            if topics[at].1 == 0 {
                topics.swap_remove(at);
            }
        }
        if topics.is_empty() {
            self.owners.remove(owner);
        }
    }

    /// The shard's own copy of `topic`'s name, if it has presences there.
    fn known(&self, topic: &str) -> Option<Arc<str>> {
        self.topics.get_key_value(topic).map(|(name, _)| Arc::clone(name))
    }

    fn changed(&mut self, topic: &Arc<str>, ctx: &mut Context<Self>) {
        if self.dirty.is_empty() {
            // The first change after a quiet spell opens the window; everything that changes
            // until it closes goes out in one diff per topic.
            ctx.run_later(self.window, |shard, _| shard.flush());
        }
        if !self.dirty.contains(topic) {
            self.dirty.insert(Arc::clone(topic));
        }
    }

    fn flush(&mut self) {
        let at = self.clock.now_millis();
        let mut diffs = Vec::new();
        for topic in std::mem::take(&mut self.dirty) {
            let Some(presence) = self.topics.get_mut(&topic) else { continue };
            if let Some(diff) = presence.take_diff() {
                diffs.push((topic.to_string(), diff));
            }
            if presence.is_idle() && self.topics.remove(&topic).is_some() {
                crate::metrics::global().presence_topics.dec();
            }
        }
        let Some(replication) = &self.replication else {
            for (topic, diff) in diffs {
                let occupancy = Occupancy { was_occupied: diff.was_occupied, occupied: diff.occupied, at };
                let event = Event::PresenceDiff { diff: diff.payload, occupancy };
                self.pubsub.publish(Broadcast::new(topic, event), None);
            }
            return;
        };
        if diffs.is_empty() {
            return;
        }
        // The other nodes learn the changes from the deltas and announce them to their own
        // sockets; this node's sockets get the diffs from the replicator, which knows whether
        // another node still holds a presence on the topic.
        let changes: Vec<_> = diffs.iter().map(|(topic, diff)| (topic.as_str(), &diff.joins, &diff.leaves)).collect();
        let (index, bound) = (replication.index, replication.part_bytes);
        super::cluster::publish_deltas(&self.pubsub, index, &replication.version, bound, &changes);
        let local = diffs
            .into_iter()
            .map(|(topic, diff)| super::cluster::LocalDiff { topic, diff: diff.payload, occupied: diff.occupied, at })
            .collect();
        replication.replicator.do_send(super::cluster::LocalDiffs(local));
    }

    /// Publishes every topic of this shard for the nodes that asked.
    fn resync(&mut self) {
        if self.replication.is_none() {
            return;
        }
        // What changed in the open window goes out first, so the full state is exactly the
        // one its version names and the next delta starts from it.
        self.flush();
        let Some(replication) = &self.replication else { return };
        let version = replication.version.load(Ordering::SeqCst);
        let topics = self.topics.iter().map(|(topic, presence)| (&**topic, presence));
        super::cluster::publish_full(&self.pubsub, replication.index, version, replication.part_bytes, topics);
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        // A stopped shard's topics are gone with it, however it stopped.
        let topics = i64::try_from(self.topics.len()).unwrap_or(i64::MAX);
        crate::metrics::global().presence_topics.dec_by(topics);
    }
}

impl Handler<Command> for Shard {
    type Result = ();

    fn handle(&mut self, command: Command, ctx: &mut Context<Self>) {
        match command {
            Command::Track { topic, key, owner, meta, answer } => {
                let topic = self.known(&topic).unwrap_or_else(|| {
                    crate::metrics::global().presence_topics.inc();
                    Arc::from(topic)
                });
                let result = self.topics.entry(Arc::clone(&topic)).or_default().track(&key, &owner, meta);
                if result.is_ok() {
                    self.changed(&topic, ctx);
                    let topics = self.owners.entry(owner).or_default();
                    match topics.iter_mut().find(|(t, _)| *t == topic) {
                        Some((_, keys)) => *keys += 1,
                        None => {
                            // Exact growth: most lists hold one or two topics for their lifetime.
                            topics.reserve_exact(1);
                            topics.push((topic, 1));
                        }
                    }
                }
                let _ = answer.send(result);
            }
            Command::Update { topic, key, owner, meta, answer } => {
                let known = self.known(&topic);
                let result = match known.as_ref().and_then(|name| self.topics.get_mut(&**name)) {
                    Some(presence) => presence.update(&key, &owner, meta),
                    None => Err(PresenceError::NoPresence),
                };
                if let (Ok(_), Some(name)) = (&result, &known) {
                    self.changed(name, ctx);
                }
                let _ = answer.send(result);
            }
            Command::Untrack { topic, key, owner } => {
                let Some(topic) = self.known(&topic) else { return };
                if self.topics.get_mut(&topic).is_some_and(|p| p.untrack(&key, &owner)) {
                    self.changed(&topic, ctx);
                    self.forget(&owner, &topic);
                }
            }
            Command::Gone { owner } => {
                for (topic, _) in self.owners.remove(&owner).unwrap_or_default() {
                    if self.topics.get_mut(&topic).is_some_and(|p| p.remove_owner(&owner) > 0) {
                        self.changed(&topic, ctx);
                    }
                }
            }
            Command::Resync => self.resync(),
            Command::List { topic, answer } => {
                let snapshot = match self.topics.get_mut(topic.as_str()) {
                    Some(presence) => Snapshot { state: presence.snapshot(), keys: presence.key_count() },
                    None => Snapshot { state: crate::protocol::Payload::empty(), keys: 0 },
                };
                let _ = answer.send(Ok(snapshot));
            }
        }
    }
}

impl Handler<Stop> for Shard {
    type Result = ();

    /// Sends the diffs still inside their window, then ends the shard.
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        // The window's timer would die with the shard: what changed in it goes out now.
        self.flush();
        ctx.stop();
    }
}

/// The in-process [`Tracker`]: presence is exact on this node and invisible to others.
#[derive(Clone)]
pub struct LocalTracker {
    shards: Arc<[Addr<Shard>]>,
    arbiters: Arc<[ArbiterHandle]>,
    hasher: RandomState,
    /// Each shard's replication version; empty when nothing is replicated.
    versions: Arc<[Arc<AtomicU64>]>,
}

impl LocalTracker {
    /// Starts the shards, each on its own arbiter, broadcasting diffs through `pubsub` stamped
    /// by `clock`.
    pub fn start(config: &PresenceConfig, pubsub: PubSub, clock: Arc<dyn Clock>) -> Self {
        Self::start_shards(config, pubsub, clock, None)
    }

    /// Starts the shards as [`start`](Self::start) does, each also publishing its presences
    /// for other nodes' replicas (a delta of its changes at every diff window, its whole state
    /// on [`resync`](Self::resync)) and handing its diffs to the cluster's replicator.
    pub(super) fn start_replicated(
        config: &PresenceConfig,
        pubsub: PubSub,
        clock: Arc<dyn Clock>,
        replicated: Replicated,
    ) -> Self {
        Self::start_shards(config, pubsub, clock, Some(replicated))
    }

    fn start_shards(
        config: &PresenceConfig,
        pubsub: PubSub,
        clock: Arc<dyn Clock>,
        replicated: Option<Replicated>,
    ) -> Self {
        let count = config.shards.max(1);
        let versions: Vec<Arc<AtomicU64>> =
            if replicated.is_some() { (0..count).map(|_| Arc::new(AtomicU64::new(0))).collect() } else { Vec::new() };
        let (shards, arbiters): (Vec<Addr<Shard>>, Vec<ArbiterHandle>) = (0..count)
            .map(|index| {
                let arbiter = actix::Arbiter::new().handle();
                let (pubsub, window) = (pubsub.clone(), config.diff_window());
                let clock = Arc::clone(&clock);
                let replication =
                    versions.get(index).zip(replicated.as_ref()).map(|(version, replicated)| Replication {
                        index: u32::try_from(index).unwrap_or(u32::MAX),
                        version: Arc::clone(version),
                        part_bytes: replicated.part_bytes,
                        replicator: replicated.replicator.clone(),
                    });
                let shard = Shard::start_in_arbiter(&arbiter, move |_| Shard {
                    topics: HashMap::new(),
                    dirty: HashSet::new(),
                    owners: HashMap::new(),
                    pubsub,
                    window,
                    clock,
                    replication,
                });
                (shard, arbiter)
            })
            .unzip();
        LocalTracker {
            shards: shards.into(),
            arbiters: arbiters.into(),
            hasher: RandomState::new(),
            versions: versions.into(),
        }
    }

    /// Each shard's replication version, for the heartbeat.
    pub(super) fn versions(&self) -> Vec<u64> {
        self.versions.iter().map(|v| v.load(Ordering::SeqCst)).collect()
    }

    /// Has every shard publish its whole state (another node asked for it).
    pub(super) fn resync(&self) {
        for shard in self.shards.iter() {
            shard.do_send(Command::Resync);
        }
    }

    /// Publishes every pending diff, stops the shards, then their arbiter threads. Shutdown
    /// calls it after the sockets (whose leaving untracks) have closed and before pub/sub stops.
    pub async fn stop(&self) {
        for shard in self.shards.iter() {
            // Behind every command already queued, so none of them is lost.
            if shard.send(Stop).await.is_err() {
                tracing::debug!("tracker shard already stopped");
            }
        }
        for arbiter in self.arbiters.iter() {
            arbiter.stop();
        }
    }

    /// Whether any shard still runs.
    pub fn running(&self) -> bool {
        self.shards.iter().any(Addr::connected)
    }

    fn shard(&self, topic: &str) -> &Addr<Shard> {
        &self.shards[self.hasher.hash_one(topic) as usize % self.shards.len()]
    }

    /// Queues `command` now (`do_send` ignores mailbox capacity, so order is kept) and waits
    /// for its answer.
    fn ask<T: 'static>(
        &self,
        topic: &str,
        command: impl FnOnce(Answer<T>) -> Command,
    ) -> LocalBoxFuture<'static, Result<T, PresenceError>> {
        let (answer, reply) = oneshot::channel();
        self.shard(topic).do_send(command(answer));
        Box::pin(async move { reply.await.unwrap_or(Err(PresenceError::Unavailable)) })
    }
}

/// A local lease: its drop is the connection's departure, told to every shard.
struct LocalLease {
    owner: ConnectionId,
    shards: Arc<[Addr<Shard>]>,
}

impl Drop for LocalLease {
    fn drop(&mut self) {
        for shard in self.shards.iter() {
            shard.do_send(Command::Gone { owner: self.owner.clone() });
        }
    }
}

impl Tracker for LocalTracker {
    fn lease(&self, owner: &ConnectionId) -> Lease {
        Lease::new(LocalLease { owner: owner.clone(), shards: Arc::clone(&self.shards) })
    }

    fn track(
        &self,
        topic: &str,
        key: &str,
        owner: &ConnectionId,
        meta: Meta,
    ) -> LocalBoxFuture<'static, Result<String, PresenceError>> {
        let (t, key, owner) = (topic.to_owned(), key.to_owned(), owner.clone());
        self.ask(topic, |answer| Command::Track { topic: t, key, owner, meta, answer })
    }

    fn update(
        &self,
        topic: &str,
        key: &str,
        owner: &ConnectionId,
        meta: Meta,
    ) -> LocalBoxFuture<'static, Result<String, PresenceError>> {
        let (t, key, owner) = (topic.to_owned(), key.to_owned(), owner.clone());
        self.ask(topic, |answer| Command::Update { topic: t, key, owner, meta, answer })
    }

    fn untrack(&self, topic: &str, key: &str, owner: &ConnectionId) {
        let owner = owner.clone();
        self.shard(topic).do_send(Command::Untrack { topic: topic.to_owned(), key: key.to_owned(), owner });
    }

    fn list(&self, topic: &str) -> LocalBoxFuture<'static, Result<Snapshot, PresenceError>> {
        let t = topic.to_owned();
        self.ask(topic, |answer| Command::List { topic: t, answer })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use actix::{Actor, Context, Handler};
    use serde_json::{Value, json};

    use super::*;
    use crate::clock::ManualClock;
    use crate::pubsub::{Deliver, LocalBroker};

    /// Records the presence diffs it is delivered, with their occupancy.
    struct Probe(Arc<Mutex<Vec<(Value, Occupancy)>>>);

    impl Actor for Probe {
        type Context = Context<Self>;
    }

    impl Handler<Deliver> for Probe {
        type Result = ();
        fn handle(&mut self, Deliver(b): Deliver, _: &mut Context<Self>) {
            let Event::PresenceDiff { diff, occupancy } = &b.event else { panic!("not a diff: {b:?}") };
            let payload = serde_json::from_str(diff.as_json_str().unwrap_or("null")).unwrap_or(Value::Null);
            self.0.lock().unwrap().push((payload, *occupancy));
        }
    }

    async fn wait_for(seen: &Arc<Mutex<Vec<(Value, Occupancy)>>>, n: usize) -> Vec<(Value, Occupancy)> {
        for _ in 0..250 {
            if seen.lock().unwrap().len() >= n {
                break;
            }
            actix::clock::sleep(Duration::from_millis(10)).await;
        }
        seen.lock().unwrap().clone()
    }

    fn keys(v: &Value) -> Vec<&str> {
        v.as_object().map(|m| m.keys().map(String::as_str).collect()).unwrap_or_default()
    }

    #[actix::test]
    async fn coalesces_a_burst_into_one_diff_and_cleans_up_after_dead_sockets() {
        let pubsub = PubSub::start(1, Arc::new(LocalBroker::new("n")));
        let config = PresenceConfig { shards: 2, diff_window_ms: 40, ..PresenceConfig::default() };
        let clock = ManualClock::new(1_700_000_000_000);
        let tracker = LocalTracker::start(&config, pubsub.clone(), Arc::new(clock.clone()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let probe = Probe(Arc::clone(&seen)).start();
        pubsub.subscribe("room:t", 99, probe.recipient()).await.unwrap();

        let owners: Vec<ConnectionId> = (0..50).map(|i| ConnectionId::new(pubsub.node_id().clone(), i)).collect();
        let leases: Vec<Lease> = owners.iter().map(|owner| tracker.lease(owner)).collect();
        let tracks: Vec<_> = owners
            .iter()
            .enumerate()
            .map(|(i, owner)| tracker.track("room:t", &format!("user{i}"), owner, Meta::new()))
            .collect();
        for t in tracks {
            t.await.unwrap();
        }
        // Every track was queued before the list, so the state holds all of them.
        let snapshot = tracker.list("room:t").await.unwrap();
        assert_eq!(snapshot.keys, 50);
        let diffs = wait_for(&seen, 1).await;
        assert_eq!(diffs.len(), 1, "fifty joins inside one window are one diff");
        assert_eq!(keys(&diffs[0].0["joins"]).len(), 50);
        assert!(diffs[0].1.changed() && diffs[0].1.occupied);
        assert_eq!(diffs[0].1.at, 1_700_000_000_000, "the injected clock stamps the diff");

        // An update is a join of the new meta and a leave of the old one, in one diff.
        assert!(matches!(
            tracker.track("room:t", "user0", &owners[0], Meta::new()).await,
            Err(PresenceError::AlreadyTracked)
        ));
        let mut meta = Meta::new();
        meta.insert("status".into(), json!("away"));
        let new_ref = tracker.update("room:t", "user0", &owners[0], meta).await.unwrap();
        let diffs = wait_for(&seen, 2).await;
        let update = &diffs[1].0;
        assert_eq!(update["joins"]["user0"]["metas"][0]["phx_ref"], json!(new_ref));
        assert_eq!(update["joins"]["user0"]["metas"][0]["status"], json!("away"));
        assert_eq!(
            update["leaves"]["user0"]["metas"][0]["phx_ref"],
            update["joins"]["user0"]["metas"][0]["phx_ref_prev"]
        );
        assert!(!diffs[1].1.changed());

        // Forty sockets die without untracking (their leases drop); the others untrack, one of
        // them twice, and then end too.
        clock.advance(Duration::from_secs(5));
        let mut leases = leases.into_iter();
        drop(leases.by_ref().take(40).collect::<Vec<_>>());
        for (i, owner) in owners.iter().enumerate().skip(40) {
            tracker.untrack("room:t", &format!("user{i}"), owner);
        }
        tracker.untrack("room:t", "user49", &owners[49]);
        drop(leases);
        let mut left = std::collections::BTreeSet::new();
        for _ in 0..100 {
            let diffs = wait_for(&seen, 3).await;
            left = diffs[2..].iter().flat_map(|(d, _)| keys(&d["leaves"]).into_iter().map(str::to_owned)).collect();
            if left.len() == 50 {
                break;
            }
            actix::clock::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(left.len(), 50, "every presence left");
        let diffs = seen.lock().unwrap().clone();
        let leave_count: usize = diffs[2..]
            .iter()
            .flat_map(|(d, _)| d["leaves"].as_object().unwrap().values().map(|p| p["metas"].as_array().unwrap().len()))
            .sum();
        assert_eq!(leave_count, 50, "each presence left exactly once");
        let last = diffs.last().unwrap().1;
        assert!(last.changed() && !last.occupied);
        assert_eq!(last.at, 1_700_000_005_000, "the offline time is the clock's, not the host's");
        assert_eq!(tracker.list("room:t").await.unwrap().keys, 0);
        assert!(matches!(
            tracker.update("room:t", "user0", &owners[0], Meta::new()).await,
            Err(PresenceError::NoPresence)
        ));
        pubsub.stop();
    }

    #[actix::test]
    async fn a_dropped_lease_takes_the_keys_an_untrack_left() {
        let pubsub = PubSub::start(1, Arc::new(LocalBroker::new("n")));
        let config = PresenceConfig { shards: 3, diff_window_ms: 5, ..PresenceConfig::default() };
        let tracker = LocalTracker::start(&config, pubsub.clone(), crate::clock::system());
        let node = pubsub.node_id().clone();
        let (me, other) = (ConnectionId::new(node.clone(), 1), ConnectionId::new(node, 2));
        let (mine, theirs) = (tracker.lease(&me), tracker.lease(&other));
        for (topic, key) in [("room:a", "k1"), ("room:a", "k2"), ("room:b", "k1")] {
            tracker.track(topic, key, &me, Meta::new()).await.unwrap();
        }
        tracker.track("room:a", "k3", &other, Meta::new()).await.unwrap();
        tracker.untrack("room:a", "k1", &me);
        assert_eq!(tracker.list("room:a").await.unwrap().keys, 2, "k2 and the other's k3");
        drop(mine);
        let mut left = (usize::MAX, usize::MAX);
        for _ in 0..250 {
            left = (tracker.list("room:a").await.unwrap().keys, tracker.list("room:b").await.unwrap().keys);
            if left == (1, 0) {
                break;
            }
            actix::clock::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(left, (1, 0), "only the other connection's presence stays");
        drop(theirs);
        pubsub.stop();
    }

    #[actix::test]
    async fn stopping_publishes_the_open_window_and_ends_every_shard() {
        let pubsub = PubSub::start(1, Arc::new(LocalBroker::new("n")));
        // A window far longer than the test: only the stop can send this diff.
        let config = PresenceConfig { shards: 3, diff_window_ms: 60_000, ..PresenceConfig::default() };
        let tracker = LocalTracker::start(&config, pubsub.clone(), crate::clock::system());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let probe = Probe(Arc::clone(&seen)).start();
        pubsub.subscribe("room:s", 99, probe.recipient()).await.unwrap();
        let owner = ConnectionId::new(pubsub.node_id().clone(), 1);
        let _lease = tracker.lease(&owner);
        tracker.track("room:s", "u", &owner, Meta::new()).await.unwrap();
        assert!(tracker.running());
        assert!(seen.lock().unwrap().is_empty(), "the window is still open");

        tracker.stop().await;
        let diffs = wait_for(&seen, 1).await;
        assert_eq!(diffs.len(), 1, "the pending diff went out at the stop");
        assert_eq!(keys(&diffs[0].0["joins"]), vec!["u"]);
        for _ in 0..250 {
            if !tracker.running() {
                break;
            }
            actix::clock::sleep(Duration::from_millis(10)).await;
        }
        assert!(!tracker.running(), "every shard ended");
        assert!(matches!(tracker.list("room:s").await, Err(PresenceError::Unavailable)));
        pubsub.stop();
    }
}
