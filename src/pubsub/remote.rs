//! What the networked brokers (Redis, NATS) share: the safe mapping of a topic onto a channel
//! or subject name, the thread their client tasks run on, the bounded, ordered outbox a node's
//! broadcasts leave through (and the notice it has sent when some were lost), the commands
//! their subscriptions task follows, the stop handle of their node-name claim, and the backoff
//! between reconnection attempts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use super::{Broadcast, Inbound, InterestTaken};

/// The shortest time between two of a node's loss notices: a queue that stays full drops on
/// every burst, and each notice costs every other node one read per live inbox.
const NOTICE_EVERY: Duration = Duration::from_secs(1);

/// The name a broker carries `topic` under: `{namespace}{sep}t{sep}_` and the topic in
/// base64url. Phoenix topics hold `:` and any other character, while a NATS subject forbids
/// spaces and wildcards and splits on `.`; base64url's alphabet is safe in both, and the `_`
/// keeps the last token non-empty for the empty topic.
pub(crate) fn topic_key(namespace: &str, sep: char, topic: &str) -> String {
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(topic);
    format!("{namespace}{sep}t{sep}_{encoded}")
}

/// A current-thread tokio runtime on a thread of its own, for a broker's client tasks: the
/// registry's arbiters and the servers' actix systems come and go, a broker's connection must
/// not go with them. Dropping it stops the thread (which drops the runtime there, outside any
/// async context, where dropping a runtime is allowed).
pub(crate) struct BrokerThread {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl BrokerThread {
    /// Starts the thread, named `name`.
    pub(crate) fn start(name: &str) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new().name(name.into()).spawn(move || {
            let _ = runtime.block_on(stopped);
        })?;
        Ok(BrokerThread { handle, _stop: stop })
    }

    /// Runs `task` on the broker's thread.
    pub(crate) fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }
}

/// One broadcast on its way to the broker: the channel or subject, and the node-to-node bytes.
#[derive(Clone)]
pub(crate) struct Outgoing {
    /// The channel or subject ([`topic_key`]).
    pub key: String,
    /// What [`super::Inbound::encode`] made of the broadcast.
    pub bytes: Vec<u8>,
}

/// The bounded queue between the threads that broadcast and the one task that publishes, in
/// order: a caller never waits for the network, and what a full queue (or a broker that is
/// down) refuses is counted rather than held, and noted for a [`LossNotice`].
pub(crate) struct Outbox {
    queue: mpsc::Sender<Outgoing>,
    dropped: AtomicU64,
    /// Broadcasts were (or may have been) lost since the last loss notice went out.
    lost: AtomicBool,
    /// Wakes an idle publisher when `lost` is set, so the notice does not wait for a broadcast.
    wake: Notify,
}

impl Outbox {
    /// An outbox holding up to `capacity` broadcasts, and the receiving end for the publisher.
    pub(crate) fn new(capacity: usize) -> (Arc<Self>, mpsc::Receiver<Outgoing>) {
        let (queue, receiver) = mpsc::channel(capacity);
        let outbox = Outbox { queue, dropped: AtomicU64::new(0), lost: AtomicBool::new(false), wake: Notify::new() };
        (Arc::new(outbox), receiver)
    }

    /// Queues a broadcast, or drops it (counted) when the queue is full.
    pub(crate) fn push(&self, key: String, bytes: Vec<u8>) {
        if self.queue.try_send(Outgoing { key, bytes }).is_err() {
            self.dropped(1, "the publish queue is full");
        }
    }

    /// Counts `n` broadcasts that did not reach the broker. Logged at the first and at each
    /// power of two, so an outage leaves a handful of lines rather than one per broadcast.
    pub(crate) fn dropped(&self, n: u64, why: &str) {
        let total = self.dropped.fetch_add(n, Ordering::Relaxed) + n;
        crate::metrics::global().broker_publish_drops.inc_by(n);
        if (total - n + 1..=total).any(u64::is_power_of_two) {
            tracing::warn!(total, why, "broadcasts to other nodes dropped");
        }
        self.mark_lost();
    }

    /// Notes that broadcasts may have been lost uncounted: a connection broke while the
    /// client still held some it had taken.
    pub(crate) fn mark_lost(&self) {
        self.lost.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Resolves once [`Outbox::mark_lost`] (or a drop) was called, or right away when one came
    /// since the last wait.
    pub(crate) async fn lost_some(&self) {
        self.wake.notified().await;
    }

    /// How many broadcasts were dropped so far.
    #[cfg(test)]
    pub(crate) fn dropped_total(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A publisher's notice to the other nodes that broadcasts of this node were lost (on
/// [`super::topic::RESYNC`]): sent once the broker takes publishes again, after what it took
/// before, and at most every [`NOTICE_EVERY`], however many were lost meanwhile.
pub(crate) struct LossNotice {
    notice: Outgoing,
    last: Option<Instant>,
}

impl LossNotice {
    /// The notice `bytes` ([`Inbound::resync_notice`]), under the broker's channel or subject `key`.
    pub(crate) fn new(key: String, bytes: Vec<u8>) -> Self {
        LossNotice { notice: Outgoing { key, bytes }, last: None }
    }

    /// When the next notice may go, if broadcasts were lost since the last one went.
    pub(crate) fn due(&self, outbox: &Outbox) -> Option<Instant> {
        self.due_at(outbox, Instant::now())
    }

    fn due_at(&self, outbox: &Outbox, now: Instant) -> Option<Instant> {
        if !outbox.lost.load(Ordering::SeqCst) {
            return None;
        }
        Some(self.last.map_or(now, |last| (last + NOTICE_EVERY).max(now)))
    }

    /// The notice to publish now, if one is due; the losses so far then count as told (a
    /// notice that fails to go out is a dropped broadcast, and so due again).
    pub(crate) fn take(&mut self, outbox: &Outbox) -> Option<Outgoing> {
        let now = Instant::now();
        if self.due_at(outbox, now)? > now {
            return None;
        }
        outbox.lost.store(false, Ordering::SeqCst);
        self.last = Some(now);
        Some(self.notice.clone())
    }
}

/// What a networked broker asks of its subscriptions task: one task, so the calls for one
/// topic stay in the order the registry made them.
pub(crate) enum Control {
    /// Subscribe the channel or subject, then answer; an answer dropped unsent (the server is
    /// down) resolves the subscribe too, since the broker subscribes it again on reconnection.
    Subscribe(String, oneshot::Sender<()>),
    /// Unsubscribe the channel or subject.
    Unsubscribe(String),
}

/// A started broker's side facing the registry: what it encodes with, the way to its
/// subscriptions task, and the outbox its publisher drains.
pub(crate) struct Running {
    inbound: Inbound,
    control: mpsc::UnboundedSender<Control>,
    outbox: Arc<Outbox>,
}

/// What a started broker's tasks take: the node's way in, the subscriptions task's commands,
/// and the publisher's end of the outbox.
pub(crate) struct Started {
    /// Where remote broadcasts go.
    pub inbound: Inbound,
    /// The subscribe and unsubscribe calls, in order.
    pub commands: mpsc::UnboundedReceiver<Control>,
    /// The outbox, for counting what the publisher drops.
    pub outbox: Arc<Outbox>,
    /// The broadcasts to publish, in order.
    pub queued: mpsc::Receiver<Outgoing>,
    /// What the publisher tells the other nodes after losses.
    pub notice: LossNotice,
}

impl Running {
    /// Fills `slot` at a broker's first start, with an outbox of `capacity` and loss notices
    /// under `notice_key`; the ends for its tasks, or `None` at a second start.
    pub(crate) fn start(
        slot: &OnceLock<Running>,
        inbound: Inbound,
        capacity: usize,
        notice_key: String,
    ) -> Option<Started> {
        let (control, commands) = mpsc::unbounded_channel();
        let (outbox, queued) = Outbox::new(capacity);
        let running = Running { inbound: inbound.clone(), control, outbox: Arc::clone(&outbox) };
        slot.set(running).ok()?;
        let notice = LossNotice::new(notice_key, inbound.resync_notice());
        Some(Started { inbound, commands, outbox, queued, notice })
    }

    /// Hands the subscriptions task a (un)subscribe of `key`; a subscribe resolves once the
    /// task answers.
    pub(crate) fn interest(&self, key: String, interested: bool) -> InterestTaken {
        if !interested {
            let _ = self.control.send(Control::Unsubscribe(key));
            return Box::pin(std::future::ready(()));
        }
        let (ack, taken) = oneshot::channel();
        let _ = self.control.send(Control::Subscribe(key, ack));
        Box::pin(async move {
            let _ = taken.await;
        })
    }

    /// Encodes `broadcast` (once, here) and queues it under `key`.
    pub(crate) fn publish(&self, key: String, broadcast: &Broadcast) {
        self.outbox.push(key, self.inbound.encode(broadcast));
    }
}

/// The way to a running name-claim keeper: [`KeeperStop::stop`] asks it to give the name back
/// and waits until it has (or the broker's thread is gone).
#[derive(Default)]
pub(crate) struct KeeperStop(std::sync::Mutex<Option<oneshot::Sender<oneshot::Sender<()>>>>);

impl KeeperStop {
    /// Records the keeper's end; a keeper set before is left to stop with the broker.
    pub(crate) fn set(&self, stop: oneshot::Sender<oneshot::Sender<()>>) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(stop);
    }

    /// Stops the keeper, if one runs, once it has released the name.
    pub(crate) fn stop(&self) -> InterestTaken {
        let keeper = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        Box::pin(async move {
            let Some(keeper) = keeper else { return };
            let (done, released) = oneshot::channel();
            if keeper.send(done).is_ok() {
                let _ = released.await;
            }
        })
    }
}

/// The pause before reconnection attempt `attempt` (0-based): 100 ms doubling up to `max`.
pub(crate) fn backoff(attempt: u32, max: Duration) -> Duration {
    Duration::from_millis(100).saturating_mul(1 << attempt.min(16)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_keys_are_safe_subject_tokens_and_distinct() {
        let topics = ["room:a", "room:a.b", "room:a b", "room:*", "room:>", "", "user:ünï/cödé"];
        let keys: std::collections::HashSet<String> = topics.iter().map(|t| topic_key("c1", '.', t)).collect();
        assert_eq!(keys.len(), topics.len());
        for key in &keys {
            let tokens: Vec<&str> = key.split('.').collect();
            assert_eq!(tokens.len(), 3, "{key}");
            assert_eq!(&tokens[..2], ["c1", "t"]);
            assert!(tokens[2].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{key}");
        }
        assert_eq!(topic_key("courier", ':', "room:a"), "courier:t:_cm9vbTph");
    }

    #[test]
    fn a_full_outbox_drops_and_counts_without_waiting() {
        let (outbox, mut queued) = Outbox::new(2);
        for n in 0..3u8 {
            outbox.push(format!("k{n}"), vec![n]);
        }
        assert_eq!(outbox.dropped_total(), 1);
        let kept: Vec<String> = std::iter::from_fn(|| queued.try_recv().ok()).map(|o| o.key).collect();
        assert_eq!(kept, ["k0", "k1"], "what fits keeps its order");
    }

    #[tokio::test]
    async fn a_loss_notice_is_due_after_drops_and_at_most_once_a_second() {
        let (outbox, _queued) = Outbox::new(16);
        let mut notice = LossNotice::new("k".into(), vec![1]);
        assert!(notice.due(&outbox).is_none() && notice.take(&outbox).is_none(), "nothing lost, nothing told");
        outbox.dropped(3, "test");
        tokio::time::timeout(Duration::from_millis(10), outbox.lost_some()).await.expect("an idle publisher wakes");
        assert_eq!(notice.take(&outbox).map(|n| (n.key, n.bytes)), Some(("k".into(), vec![1])));
        assert!(notice.take(&outbox).is_none(), "told once");
        outbox.mark_lost();
        let due = notice.due(&outbox).expect("lost again");
        assert!(due > Instant::now() + NOTICE_EVERY / 2, "held back until a second after the last");
        assert!(notice.take(&outbox).is_none());
        tokio::time::sleep_until(due).await;
        assert!(notice.take(&outbox).is_some());
        assert!(notice.due(&outbox).is_none());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let max = Duration::from_secs(1);
        let pauses: Vec<u128> = (0..6).map(|n| backoff(n, max).as_millis()).collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff(u32::MAX, max), max);
    }
}
