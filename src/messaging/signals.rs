//! Status signals (seed 004 `Signal`: typing, recording, played, ...): relayed live to the
//! receiver's devices and the sender's other devices, never stored, never given an offset.
//!
//! One relay actor owns what signals need to remember: which (sender, receiver) pairs were
//! checked against the accounts (so a stranger cannot be spammed when contacts are required),
//! a token bucket per pair, and the TYPING/RECORDING indicators that turn into PAUSED by
//! themselves when the sender goes quiet or away. Signals of one pair are relayed in the order
//! they were sent, also while the pair's first check is running.
//!
//! On a node among several, every relay keeps a bucket and an indicator for each pair it hears
//! of, and tells the others about each signal it relays in a note on the internal topic
//! [`SIGNAL_SYNC`]: the note counts against their buckets and moves their indicators, so the
//! pair's rate and its one indicator hold across nodes (the bound and the ordering are in
//! [`pairs`]). A node alone publishes no notes.

mod pairs;

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message, WrapFuture};
use tokio::sync::oneshot;

use pairs::{Arm, Buckets, Change, Indicators, Note, Pair};

use super::wire::{self, SIGNAL_TYPE_DEVICE, SIGNAL_TYPE_RECEIVER};
use super::{MessagingConfig, MessagingError, Origin};
use crate::accounts::MessagePolicy;
use crate::clock::Clock;
use crate::pb;
use crate::pubsub::topic::SIGNAL_SYNC;
use crate::pubsub::{Broadcast, Deliver, Event, PubSub, SubscriberId, Topic};
use crate::store::Store;
use crate::task::Stop;

/// The event that carries a `Signal` to a device.
pub const EVENT_SIGNAL: &str = crate::pubsub::event::SIGNAL;

/// Seed 004 status codes.
pub const STATUS_CHATTING: i32 = 1;
/// Recording audio or video: an indicator that expires.
pub const STATUS_RECORDING: i32 = 2;
/// Typing: an indicator that expires.
pub const STATUS_TYPING: i32 = 4;
/// Typing or recording paused; what an expired indicator turns into.
pub const STATUS_PAUSED: i32 = 5;
/// The action was cancelled; clears the indicator.
pub const STATUS_CANCELLED: i32 = 6;
/// The action resumed; re-arms the indicator it paused.
pub const STATUS_RESUME: i32 = 7;
/// The highest status code (NOTIFICATION).
pub const STATUS_NOTIFICATION: i32 = 8;

/// `Signal.type`: sent by a client.
pub const TYPE_REQUEST: i32 = 1;
/// `Signal.type`: the server's answer to the sender.
pub const TYPE_RESPONSE: i32 = 2;
/// `Signal.type`: the server refused the signal (`error` says why).
pub const TYPE_ERROR: i32 = 3;
/// `Signal.signal_type` of the copy the sending device gets back.
pub const SIGNAL_TYPE_SENDER: i32 = 1;

/// How long a pair that passed the accounts check is trusted before it is checked again.
const AUTHORIZED_FOR: Duration = Duration::from_secs(30);
/// How often idle rate-limit buckets, stale checks and ended indicators are dropped.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);
/// How much longer than `typing_timeout` a node waits before it expires an indicator another
/// node relayed (whose own expiry should have come long before, unless that node died).
const BACKUP_GRACE: Duration = Duration::from_secs(1);
/// The relay's id in this node's registry: far above any socket's sequence number, and not
/// the presence replicator's.
const SUBSCRIBER: SubscriberId = u64::MAX - 2;

/// Relays status signals; cheap to clone.
#[derive(Clone)]
pub struct Signals {
    relay: Addr<SignalRelay>,
    clock: Arc<dyn Clock>,
}

impl Signals {
    /// Starts the relay on the current arbiter; signal timestamps are read from `clock`. When
    /// `clustered`, the relay shares its buckets and indicators with the other nodes' relays.
    pub fn start(
        store: Store,
        pubsub: PubSub,
        config: &MessagingConfig,
        policy: MessagePolicy,
        clock: Arc<dyn Clock>,
        clustered: bool,
    ) -> Signals {
        let rate = NonZeroU32::new(config.signal_rate_per_sec).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.signal_burst).unwrap_or(NonZeroU32::MIN);
        let relay = SignalRelay {
            indicators: Indicators::new(pubsub.node_id().as_str()),
            store,
            pubsub,
            policy,
            clock: Arc::clone(&clock),
            typing_timeout: Duration::from_millis(config.typing_timeout_ms),
            buckets: Buckets::new(rate, burst),
            authorized: HashMap::new(),
            waiting: HashMap::new(),
            clustered,
        }
        .start();
        Signals { relay, clock }
    }

    /// Stops the relay: signals are never stored, so nothing is left to flush once the sockets
    /// that send them have closed; its timers and pending checks end with it.
    pub async fn stop(&self) {
        if self.relay.send(Stop).await.is_err() {
            tracing::debug!("signal relay already stopped");
        }
    }

    /// Whether the relay actor still runs.
    pub fn running(&self) -> bool {
        self.relay.connected()
    }

    /// Checks a client's signal, fills in what the server decides, and queues it for relay
    /// before returning; resolves to the sender's copy (`type` RESPONSE).
    pub fn send(
        &self,
        origin: &Origin,
        signal: pb::Signal,
    ) -> impl Future<Output = Result<pb::Signal, MessagingError>> + 'static {
        let queued = stamp(origin, signal, self.clock.now_millis()).map(|signal| {
            let (answer, reply) = oneshot::channel();
            let to = signal.to.as_ref().map(|to| to.eid.clone()).unwrap_or_default();
            self.relay.do_send(Relay {
                pair: (origin.eid.clone(), to),
                from_socket: origin.connection,
                signal,
                answer,
            });
            reply
        });
        async move {
            match queued {
                Ok(reply) => reply.await.unwrap_or(Err(MessagingError::Unavailable)),
                Err(e) => Err(e),
            }
        }
    }
}

/// Validates a client's signal and sets `from`, `timestamp` (to `now`) and `type`; offsets stay 0.
fn stamp(origin: &Origin, signal: pb::Signal, now: i64) -> Result<pb::Signal, MessagingError> {
    if !(STATUS_CHATTING..=STATUS_NOTIFICATION).contains(&signal.status) {
        return Err(MessagingError::invalid(format!(
            "status must be 1..=8 (CHATTING, RECORDING, PLAYED, TYPING, PAUSED, CANCELLED, RESUME, NOTIFICATION), got {}",
            signal.status
        )));
    }
    wire::check_identity("from", signal.from.as_ref())?;
    wire::check_identity("to", signal.to.as_ref())?;
    if let Some(error) = &signal.error {
        wire::check_text("error", error, wire::MAX_SIGNAL_ERROR_BYTES, false)?;
    }
    let Some(to) = signal.to.as_ref().filter(|to| !to.eid.is_empty()) else {
        return Err(MessagingError::invalid("to.eid is required"));
    };
    if to.eid == origin.eid {
        return Err(MessagingError::invalid("to must be another user"));
    }
    if signal.from.as_ref().is_some_and(|from| !from.eid.is_empty() && from.eid != origin.eid) {
        return Err(MessagingError::ForgedSender);
    }
    wire::check_text("id", &signal.id, wire::MAX_ID_BYTES, true)?;
    if !matches!(signal.r#type, 0 | TYPE_REQUEST) {
        return Err(MessagingError::invalid("type must be 1 (REQUEST) or absent"));
    }
    Ok(pb::Signal {
        id: signal.id,
        status: signal.status,
        timestamp: now,
        from: Some(wire::identity(&origin.eid, origin.device.as_deref())),
        to: Some(wire::identity(&to.eid, None)),
        r#type: TYPE_REQUEST,
        ..Default::default()
    })
}

/// The copy of `signal` one audience gets.
fn copy(signal: &pb::Signal, r#type: i32, signal_type: i32) -> pb::Signal {
    pb::Signal { r#type, signal_type, signal_offset_state: true, ..signal.clone() }
}

struct Relay {
    pair: Pair,
    from_socket: SubscriberId,
    signal: pb::Signal,
    answer: oneshot::Sender<Result<pb::Signal, MessagingError>>,
}

impl Message for Relay {
    type Result = ();
}

impl Handler<Stop> for SignalRelay {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        if self.clustered {
            self.pubsub.unsubscribe(SIGNAL_SYNC, SUBSCRIBER);
        }
        ctx.stop();
    }
}

struct SignalRelay {
    store: Store,
    pubsub: PubSub,
    /// Who may signal whom.
    policy: MessagePolicy,
    clock: Arc<dyn Clock>,
    typing_timeout: Duration,
    buckets: Buckets,
    /// Pairs that passed the accounts check, until when.
    authorized: HashMap<Pair, Instant>,
    /// Signals of pairs whose check is running, in arrival order.
    waiting: HashMap<Pair, Vec<Relay>>,
    /// The TYPING/RECORDING indicators; a newer change of a pair supersedes the timers of older ones.
    indicators: Indicators,
    /// Whether other nodes relay signals too, and hear of this node's on [`SIGNAL_SYNC`].
    clustered: bool,
}

impl Actor for SignalRelay {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(HOUSEKEEPING_EVERY, |relay, _| {
            let now = Instant::now();
            relay.buckets.forget_full(now);
            relay.authorized.retain(|_, until| *until > now);
            let kept_ms = HOUSEKEEPING_EVERY.as_millis() as i64;
            relay.indicators.forget_ended(relay.clock.now_millis().saturating_sub(kept_ms));
        });
        if self.clustered {
            let (pubsub, recipient) = (self.pubsub.clone(), ctx.address().recipient());
            ctx.spawn(
                async move {
                    if let Err(e) = pubsub.subscribe(SIGNAL_SYNC, SUBSCRIBER, recipient).await {
                        tracing::warn!(error = %e, "signal relay could not hear the other nodes");
                    }
                }
                .into_actor(self),
            );
        }
    }
}

impl Handler<Deliver> for SignalRelay {
    type Result = ();

    /// Applies another node's note: its signal counts against the pair's bucket here, and its
    /// change of the indicator supersedes what this node had.
    fn handle(&mut self, Deliver(broadcast): Deliver, ctx: &mut Context<Self>) {
        let Some(note) = Note::read(&broadcast.event) else { return };
        if note.node == self.pubsub.node_id().as_str() {
            return;
        }
        let pair = (note.from, note.to);
        if note.change.counts() {
            self.buckets.count(pair.clone(), Instant::now());
        }
        if let Some(arm) = self.indicators.heard(pair.clone(), note.change) {
            self.arm(pair, arm, ctx);
        }
    }
}

impl Handler<Relay> for SignalRelay {
    type Result = ();

    fn handle(&mut self, relay: Relay, ctx: &mut Context<Self>) {
        if !self.buckets.admit(&relay.pair, Instant::now()) {
            let why = format!("rate limited: too many signals to {}, slow down", relay.pair.1);
            let _ = relay.answer.send(Err(MessagingError::RateLimited(why)));
            return;
        }
        if self.authorized.get(&relay.pair).is_some_and(|until| *until > Instant::now()) {
            return self.deliver(relay, ctx);
        }
        if let Some(queue) = self.waiting.get_mut(&relay.pair) {
            queue.push(relay);
            return;
        }
        let (store, pair, policy) = (self.store.clone(), relay.pair.clone(), self.policy);
        self.waiting.insert(pair.clone(), vec![relay]);
        let check = async move {
            let (from, to) = (pair.0.clone(), pair.1.clone());
            (pair, store.run(move |conn| policy.check(conn, &from, &to)).await)
        };
        ctx.spawn(check.into_actor(self).map(|(pair, checked), relay, ctx| {
            let queue = relay.waiting.remove(&pair).unwrap_or_default();
            match checked {
                Ok(Ok(())) => {
                    relay.authorized.insert(pair, Instant::now() + AUTHORIZED_FOR);
                    for waiting in queue {
                        relay.deliver(waiting, ctx);
                    }
                }
                Ok(Err(refused)) => {
                    for waiting in queue {
                        // Every signal that waited on the check gets the same refusal.
                        let _ = waiting.answer.send(Err(refused.into()));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "signal authorization failed");
                    for waiting in queue {
                        let _ = waiting.answer.send(Err(MessagingError::Unavailable));
                    }
                }
            }
        }));
    }
}

impl SignalRelay {
    fn publish(&self, signal: &pb::Signal, topic_user: &str, exclude: Option<SubscriberId>) {
        let broadcast = Broadcast::new(Topic::user(topic_user), Event::Signal(signal.clone()));
        self.pubsub.publish(broadcast, exclude);
    }

    /// Tells the other nodes' relays what a signal (or an expiry) did to `pair`; the relay's
    /// own subscription is excluded, so only the broker carries it.
    fn note(&self, pair: &Pair, change: Change) {
        if !self.clustered {
            return;
        }
        let note =
            Note { node: self.pubsub.node_id().as_str().to_owned(), from: pair.0.clone(), to: pair.1.clone(), change };
        let broadcast = Broadcast::new(SIGNAL_SYNC, note.event());
        self.pubsub.publish(broadcast, Some(SUBSCRIBER));
    }

    fn deliver(&mut self, relay: Relay, ctx: &mut Context<Self>) {
        let Relay { pair, from_socket, signal, answer } = relay;
        let (change, arm) = self.indicators.relayed(&pair, &signal, self.clock.now_millis());
        // Ahead of the copies, so a node whose devices see the signal has most likely counted it.
        self.note(&pair, change);
        self.publish(&copy(&signal, TYPE_REQUEST, SIGNAL_TYPE_RECEIVER), &pair.1, None);
        self.publish(&copy(&signal, TYPE_REQUEST, SIGNAL_TYPE_DEVICE), &pair.0, Some(from_socket));
        if let Some(arm) = arm {
            self.arm(pair, arm, ctx);
        }
        let _ = answer.send(Ok(copy(&signal, TYPE_RESPONSE, SIGNAL_TYPE_SENDER)));
    }

    /// Starts the timer of a live indicator: `typing_timeout` if it was relayed here, a grace
    /// period more if another node relayed it (and will expire it itself).
    fn arm(&mut self, pair: Pair, arm: Arm, ctx: &mut Context<Self>) {
        let after = if arm.here { self.typing_timeout } else { self.typing_timeout + BACKUP_GRACE };
        ctx.run_later(after, move |relay, _| relay.expire(&pair, arm.generation));
    }

    /// Tells both users' devices that an indicator nobody cleared is over, and the other nodes
    /// that it was.
    fn expire(&mut self, pair: &Pair, generation: u64) {
        let Some((signal, expired)) = self.indicators.expire(pair, generation) else { return };
        self.note(pair, expired);
        let paused = pb::Signal { status: STATUS_PAUSED, timestamp: self.clock.now_millis(), ..signal };
        self.publish(&copy(&paused, TYPE_REQUEST, SIGNAL_TYPE_RECEIVER), &pair.1, None);
        self.publish(&copy(&paused, TYPE_REQUEST, SIGNAL_TYPE_DEVICE), &pair.0, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The time the tests stamp signals at.
    const T: i64 = 1_700_000_000_123;

    fn origin() -> Origin {
        Origin { eid: "alice".into(), device: Some("phone".into()), connection: 1, node: "n".into() }
    }

    fn signal(status: i32, to: Option<&str>) -> pb::Signal {
        pb::Signal { status, to: to.map(|t| wire::identity(t, None)), ..Default::default() }
    }

    #[test]
    fn stamping_fills_the_server_fields_and_refuses_bad_signals() {
        let s =
            stamp(&origin(), pb::Signal { id: "t1".into(), signal_offset: 9, ..signal(4, Some("bob")) }, T).unwrap();
        assert_eq!((s.r#type, s.signal_offset, s.user_offset), (TYPE_REQUEST, 0, 0));
        assert_eq!(s.from, Some(wire::identity("alice", Some("phone"))));
        assert_eq!(s.timestamp, T, "the server's clock sets the timestamp");
        for (bad, why) in [
            (signal(0, Some("bob")), "status"),
            (signal(9, Some("bob")), "status"),
            (signal(4, None), "to.eid"),
            (signal(4, Some("")), "to.eid"),
            (signal(4, Some("alice")), "another user"),
            (pb::Signal { r#type: TYPE_ERROR, ..signal(4, Some("bob")) }, "type"),
            (pb::Signal { id: "x".repeat(129), ..signal(4, Some("bob")) }, "id"),
        ] {
            let e = stamp(&origin(), bad, T).unwrap_err();
            assert_eq!(e.status_code(), 400);
            assert!(e.reason().contains(why), "{} should mention {why}", e.reason());
        }
        let forged = pb::Signal { from: Some(wire::identity("mallory", None)), ..signal(4, Some("bob")) };
        assert_eq!(stamp(&origin(), forged, T).unwrap_err().status_code(), 403);
    }
}
