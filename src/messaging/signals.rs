//! Status signals (seed 004 `Signal`: typing, recording, played, ...): relayed live to the
//! receiver's devices and the sender's other devices, never stored, never given an offset.
//!
//! One relay actor owns what signals need to remember: which (sender, receiver) pairs were
//! checked against the accounts (so a stranger cannot be spammed when contacts are required),
//! a token bucket per pair, and the TYPING/RECORDING indicators that turn into PAUSED by
//! themselves when the sender goes quiet or away. Signals of one pair are relayed in the order
//! they were sent, also while the pair's first check is running.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message, WrapFuture};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::oneshot;

use super::wire::{self, SIGNAL_TYPE_DEVICE, SIGNAL_TYPE_RECEIVER};
use super::{MessagingConfig, MessagingError, Origin};
use crate::accounts::MessagePolicy;
use crate::clock::Clock;
use crate::pb;
use crate::pubsub::{Broadcast, Event, PubSub, SubscriberId, Topic};
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
/// How often idle rate-limit buckets and stale checks are dropped.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

/// (sender, receiver).
type Pair = (String, String);

/// Relays status signals; cheap to clone.
#[derive(Clone)]
pub struct Signals {
    relay: Addr<SignalRelay>,
    clock: Arc<dyn Clock>,
}

impl Signals {
    /// Starts the relay on the current arbiter; signal timestamps are read from `clock`.
    pub fn start(
        store: Store,
        pubsub: PubSub,
        config: &MessagingConfig,
        policy: MessagePolicy,
        clock: Arc<dyn Clock>,
    ) -> Signals {
        let rate = NonZeroU32::new(config.signal_rate_per_sec).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.signal_burst).unwrap_or(NonZeroU32::MIN);
        let relay = SignalRelay {
            store,
            pubsub,
            policy,
            clock: Arc::clone(&clock),
            typing_timeout: Duration::from_millis(config.typing_timeout_ms),
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            authorized: HashMap::new(),
            waiting: HashMap::new(),
            armed: HashMap::new(),
            generation: 0,
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
        ctx.stop();
    }
}

/// A live TYPING/RECORDING indicator; a newer signal of the pair bumps the generation, so the
/// timers of older ones find nothing to expire.
struct Armed {
    generation: u64,
    signal: pb::Signal,
}

struct SignalRelay {
    store: Store,
    pubsub: PubSub,
    /// Who may signal whom.
    policy: MessagePolicy,
    clock: Arc<dyn Clock>,
    typing_timeout: Duration,
    limiter: DefaultKeyedRateLimiter<Pair>,
    /// Pairs that passed the accounts check, until when.
    authorized: HashMap<Pair, Instant>,
    /// Signals of pairs whose check is running, in arrival order.
    waiting: HashMap<Pair, Vec<Relay>>,
    armed: HashMap<Pair, Armed>,
    generation: u64,
}

impl Actor for SignalRelay {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(HOUSEKEEPING_EVERY, |relay, _| {
            relay.limiter.retain_recent();
            relay.limiter.shrink_to_fit();
            let now = Instant::now();
            relay.authorized.retain(|_, until| *until > now);
        });
    }
}

impl Handler<Relay> for SignalRelay {
    type Result = ();

    fn handle(&mut self, relay: Relay, ctx: &mut Context<Self>) {
        if self.limiter.check_key(&relay.pair).is_err() {
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

    fn deliver(&mut self, relay: Relay, ctx: &mut Context<Self>) {
        let Relay { pair, from_socket, signal, answer } = relay;
        self.publish(&copy(&signal, TYPE_REQUEST, SIGNAL_TYPE_RECEIVER), &pair.1, None);
        self.publish(&copy(&signal, TYPE_REQUEST, SIGNAL_TYPE_DEVICE), &pair.0, Some(from_socket));
        let response = copy(&signal, TYPE_RESPONSE, SIGNAL_TYPE_SENDER);
        match signal.status {
            STATUS_TYPING | STATUS_RECORDING => self.arm(pair, signal, ctx),
            STATUS_RESUME => {
                if let Some(armed) = self.armed.remove(&pair) {
                    self.arm(pair, armed.signal, ctx);
                }
            }
            STATUS_PAUSED | STATUS_CANCELLED => {
                self.armed.remove(&pair);
            }
            _ => {}
        }
        let _ = answer.send(Ok(response));
    }

    fn arm(&mut self, pair: Pair, signal: pb::Signal, ctx: &mut Context<Self>) {
        self.generation += 1;
        let generation = self.generation;
        self.armed.insert(pair.clone(), Armed { generation, signal });
        ctx.run_later(self.typing_timeout, move |relay, _| relay.expire(&pair, generation));
    }

    /// Tells both users' devices that an indicator nobody cleared is over.
    fn expire(&mut self, pair: &Pair, generation: u64) {
        if self.armed.get(pair).is_none_or(|armed| armed.generation != generation) {
            return;
        }
        let Some(armed) = self.armed.remove(pair) else { return };
        let paused = pb::Signal { status: STATUS_PAUSED, timestamp: self.clock.now_millis(), ..armed.signal };
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
