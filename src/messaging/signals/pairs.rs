//! What the signal relay keeps per (sender, receiver) pair, in a form the relays of several nodes
//! can agree on: the pair's token bucket ([`Buckets`]), its TYPING/RECORDING indicator
//! ([`Indicators`]), and the [`Note`] a relay sends the others for every signal it relays.
//!
//! **Buckets.** Every node keeps a bucket for every pair it hears of, and each bucket counts the
//! pair's signals relayed anywhere: the ones relayed here when they are admitted, the ones relayed
//! elsewhere when their note arrives. A note may push a bucket below empty (into debt), which is
//! what keeps the nodes together to the pair's rate: a bucket that could not go below empty would
//! forget the other nodes' signals exactly when the sender is busiest, and each node would admit
//! the full rate. The bucket is a GCRA (a theoretical arrival time per pair), as in `governor`,
//! with the same admission rule, so a node alone behaves as before.
//!
//! The bound: a node admits a signal when its own bucket allows it, and it has not yet heard of
//! what the others admitted during the last broker hop. Over any window of `t` seconds the
//! cluster relays at most `rate * t + burst + (nodes - 1) * (burst + rate * hop)` signals of one
//! pair: a burst split across the nodes within one hop can pass `burst` on each node once, after
//! which the pair gets its rate and not a multiple of it. A note lost by the broker lets one more
//! signal through.
//!
//! **Indicators.** Each change of a pair's indicator (made live by TYPING, RECORDING or RESUME,
//! ended by PAUSED or CANCELLED) carries a [`Stamp`]: the relaying node's time, at least one past
//! the last stamp it knew of for the pair, with the node's id breaking ties. Every node keeps the
//! change of the highest stamp it has heard of (an ended one too, until housekeeping), so all
//! nodes converge on the same latest change whatever order the notes arrive in. Only the node
//! that relayed the latest live change expires it after `typing_timeout`; it then notes the
//! expiry, which ends the indicator elsewhere only if no later change superseded it. The other
//! nodes keep a backup timer a grace period longer, so an indicator whose node died (or whose
//! expiry note was lost) still ends, with at worst a second PAUSED.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{STATUS_CANCELLED, STATUS_PAUSED, STATUS_RECORDING, STATUS_RESUME, STATUS_TYPING};
use crate::pb;
use crate::protocol::Payload;
use crate::pubsub::Event;

/// The event name of the notes on [`SIGNAL_SYNC`](crate::pubsub::topic::SIGNAL_SYNC).
const NOTE_EVENT: &str = "signal_note";

/// (sender, receiver).
pub(super) type Pair = (String, String);

/// One token bucket per pair that also counts the signals other nodes relayed (see the module
/// doc): a GCRA with the arrival time each pair's bucket is full again.
pub(super) struct Buckets {
    /// The time one token takes to come back.
    interval: Duration,
    /// How far ahead of now the full-again time may be while a signal is still admitted.
    tolerance: Duration,
    full_at: HashMap<Pair, Instant>,
}

impl Buckets {
    /// Buckets of `burst` tokens that refill at `rate` per second.
    pub(super) fn new(rate: NonZeroU32, burst: NonZeroU32) -> Self {
        let interval = (Duration::from_secs(1) / rate.get()).max(Duration::from_nanos(1));
        Buckets { interval, tolerance: interval * (burst.get() - 1), full_at: HashMap::new() }
    }

    /// Takes a token for a signal to relay here; `false` when the pair has none left.
    pub(super) fn admit(&mut self, pair: &Pair, now: Instant) -> bool {
        let full_at = self.full_at.get(pair).copied().unwrap_or(now);
        if full_at > now + self.tolerance {
            return false;
        }
        self.full_at.insert(pair.clone(), full_at.max(now) + self.interval);
        true
    }

    /// Counts a signal another node relayed, into debt if the bucket is empty.
    pub(super) fn count(&mut self, pair: Pair, now: Instant) {
        let full_at = self.full_at.entry(pair).or_insert(now);
        *full_at = (*full_at).max(now) + self.interval;
    }

    /// Forgets the pairs whose bucket is full again: a missing bucket is a full one.
    pub(super) fn forget_full(&mut self, now: Instant) {
        self.full_at.retain(|_, full_at| *full_at > now);
        self.full_at.shrink_to_fit();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.full_at.len()
    }
}

/// Orders the changes of one pair's indicator across nodes: the later time wins, and the
/// relaying node's id breaks a tie, so every node picks the same latest change.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(super) struct Stamp {
    /// Milliseconds since the epoch, as the relaying node's clock reads them (moved past any
    /// stamp it already knew of for the pair).
    at: i64,
    /// The relaying node's id.
    node: String,
}

/// What a relayed signal did to its pair, as the other nodes learn it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum Change {
    /// Nothing but a signal to count against the pair's bucket.
    Counted,
    /// The indicator is `signal` (a TYPING or RECORDING), live from `stamp` on.
    Live {
        /// When it went live.
        stamp: Stamp,
        /// What its expiry sends, as PAUSED.
        signal: Box<pb::Signal>,
    },
    /// A PAUSED or CANCELLED ended it.
    Ended {
        /// When.
        stamp: Stamp,
    },
    /// The live indicator of `stamp` ran out (not a relayed signal, so nothing to count).
    Expired {
        /// The stamp of the indicator that ran out.
        stamp: Stamp,
    },
}

impl Change {
    /// Whether the change stands for a relayed signal, which counts against the bucket.
    pub(super) fn counts(&self) -> bool {
        !matches!(self, Change::Expired { .. })
    }
}

/// What one node's relay tells the others about one pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Note {
    /// The node that relayed it (a node ignores its own).
    pub(super) node: String,
    /// The sender.
    pub(super) from: String,
    /// The receiver.
    pub(super) to: String,
    /// What happened.
    pub(super) change: Change,
}

impl Note {
    /// The broadcast event that carries the note (JSON, as the presence replicas' messages).
    pub(super) fn event(&self) -> Event {
        Event::raw(NOTE_EVENT, Payload::json(self))
    }

    /// The note an event from another node carries; `None` (logged) for anything else.
    pub(super) fn read(event: &Event) -> Option<Note> {
        let Event::Raw { payload: Payload::Json(raw), .. } = event else { return None };
        serde_json::from_str(raw.get()).inspect_err(|e| tracing::debug!(error = %e, "signal note refused")).ok()
    }
}

/// Where one pair's indicator stands.
enum State {
    /// Live; `generation` names the timer that may expire it.
    Live { signal: Box<pb::Signal>, generation: u64 },
    /// Ended or expired: kept so that an older change arriving late cannot revive it.
    Over,
}

struct Indicator {
    stamp: Stamp,
    state: State,
}

/// A timer the relay is to start for a live indicator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Arm {
    /// What the timer passes back to [`Indicators::expire`].
    pub(super) generation: u64,
    /// Whether this node relayed the live change (its timer runs `typing_timeout`) or heard of
    /// it (a backup timer, a grace period longer).
    pub(super) here: bool,
}

/// The latest indicator change of each pair, as this node knows it.
pub(super) struct Indicators {
    /// This node's id, stamped on the changes relayed here.
    node: String,
    entries: HashMap<Pair, Indicator>,
    generation: u64,
}

impl Indicators {
    /// No indicators yet, on the node `node`.
    pub(super) fn new(node: impl Into<String>) -> Self {
        Indicators { node: node.into(), entries: HashMap::new(), generation: 0 }
    }

    /// A stamp for a change relayed here at `now_ms`, later than any this node knows for `pair`.
    fn next_stamp(&self, pair: &Pair, now_ms: i64) -> Stamp {
        let at = match self.entries.get(pair) {
            Some(known) => now_ms.max(known.stamp.at.saturating_add(1)),
            None => now_ms,
        };
        Stamp { at, node: self.node.clone() }
    }

    fn make_live(&mut self, pair: Pair, stamp: Stamp, signal: Box<pb::Signal>) -> u64 {
        self.generation += 1;
        let generation = self.generation;
        self.entries.insert(pair, Indicator { stamp, state: State::Live { signal, generation } });
        generation
    }

    fn newer(&self, pair: &Pair, stamp: &Stamp) -> bool {
        self.entries.get(pair).is_none_or(|known| *stamp > known.stamp)
    }

    /// Applies a signal relayed here at `now_ms`: what to tell the other nodes, and the timer
    /// to start if it made the indicator live. RESUME re-arms a live indicator (whichever node
    /// relayed it) and is only counted when there is none.
    pub(super) fn relayed(&mut self, pair: &Pair, signal: &pb::Signal, now_ms: i64) -> (Change, Option<Arm>) {
        let live = match signal.status {
            STATUS_TYPING | STATUS_RECORDING => Some(Box::new(signal.clone())),
            STATUS_RESUME => match self.entries.get(pair) {
                Some(Indicator { state: State::Live { signal, .. }, .. }) => Some(signal.clone()),
                _ => None,
            },
            STATUS_PAUSED | STATUS_CANCELLED => {
                let stamp = self.next_stamp(pair, now_ms);
                self.entries.insert(pair.clone(), Indicator { stamp: stamp.clone(), state: State::Over });
                return (Change::Ended { stamp }, None);
            }
            _ => None,
        };
        let Some(signal) = live else { return (Change::Counted, None) };
        let stamp = self.next_stamp(pair, now_ms);
        let generation = self.make_live(pair.clone(), stamp.clone(), signal.clone());
        (Change::Live { stamp, signal }, Some(Arm { generation, here: true }))
    }

    /// Applies another node's change; a live one gets a backup timer here.
    pub(super) fn heard(&mut self, pair: Pair, change: Change) -> Option<Arm> {
        match change {
            Change::Counted => None,
            Change::Live { stamp, signal } => {
                if !self.newer(&pair, &stamp) {
                    return None;
                }
                Some(Arm { generation: self.make_live(pair, stamp, signal), here: false })
            }
            Change::Ended { stamp } => {
                if self.newer(&pair, &stamp) {
                    self.entries.insert(pair, Indicator { stamp, state: State::Over });
                }
                None
            }
            Change::Expired { stamp } => {
                if let Some(known) = self.entries.get_mut(&pair).filter(|known| known.stamp == stamp) {
                    known.state = State::Over;
                }
                None
            }
        }
    }

    /// Ends the indicator a timer of `generation` was started for, if nothing changed it since:
    /// the signal its PAUSED is made from, and the note for the other nodes.
    pub(super) fn expire(&mut self, pair: &Pair, generation: u64) -> Option<(pb::Signal, Change)> {
        let known = self.entries.get_mut(pair)?;
        match &known.state {
            State::Live { generation: armed, .. } if *armed == generation => {}
            _ => return None,
        }
        let State::Live { signal, .. } = std::mem::replace(&mut known.state, State::Over) else { return None };
        Some((*signal, Change::Expired { stamp: known.stamp.clone() }))
    }

    /// Forgets ended indicators stamped before `before_ms`: by then no note about them can be
    /// in flight. Live ones stay until their timer.
    pub(super) fn forget_ended(&mut self, before_ms: i64) {
        self.entries.retain(|_, known| matches!(known.state, State::Live { .. }) || known.stamp.at >= before_ms);
        self.entries.shrink_to_fit();
    }

    /// Whether `pair`'s indicator is live here, and with which signal id.
    #[cfg(test)]
    fn live_id(&self, pair: &Pair) -> Option<&str> {
        match &self.entries.get(pair)?.state {
            State::Live { signal, .. } => Some(signal.id.as_str()),
            State::Over => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000;

    fn pair() -> Pair {
        ("alice".into(), "bob".into())
    }

    fn signal(id: &str, status: i32) -> pb::Signal {
        pb::Signal { id: id.into(), status, ..Default::default() }
    }

    fn buckets(rate: u32, burst: u32) -> Buckets {
        Buckets::new(NonZeroU32::new(rate).unwrap(), NonZeroU32::new(burst).unwrap())
    }

    #[test]
    fn a_bucket_admits_a_burst_then_the_rate_as_governor_does() {
        let mut b = buckets(2, 3);
        let start = Instant::now();
        let admitted = (0..5).filter(|_| b.admit(&pair(), start)).count();
        assert_eq!(admitted, 3, "the burst");
        assert!(!b.admit(&pair(), start + Duration::from_millis(499)), "a token takes 1/rate to come back");
        assert!(b.admit(&pair(), start + Duration::from_millis(500)));
        assert!(!b.admit(&pair(), start + Duration::from_millis(500)));
        assert!(b.admit(&("alice".into(), "carol".into()), start), "each pair has its own bucket");
        b.forget_full(start + Duration::from_secs(1));
        assert_eq!(b.len(), 1, "carol's one token came back, bob's four have not");
        b.forget_full(start + Duration::from_secs(2));
        assert_eq!(b.len(), 0, "full buckets are forgotten");
        assert_eq!((0..5).filter(|_| b.admit(&pair(), start + Duration::from_secs(2))).count(), 3);
    }

    #[test]
    fn the_other_nodes_signals_count_into_debt_so_two_nodes_keep_one_rate() {
        let start = Instant::now();
        let mut alone = buckets(2, 3);
        for _ in 0..3 {
            alone.count(pair(), start);
        }
        assert!(!alone.admit(&pair(), start), "another node's burst empties this node's bucket");

        // Two nodes, each admitting whenever it can for 10 s, each hearing of the other's signals
        // 1 ms later: together they keep to the rate, plus one burst each.
        let (mut a, mut b) = (buckets(2, 3), buckets(2, 3));
        let mut in_flight: Vec<(Instant, bool)> = Vec::new();
        let mut relayed = 0;
        for step in 0..10_000u64 {
            let now = start + Duration::from_millis(step);
            let (arrived, later): (Vec<_>, Vec<_>) = in_flight.into_iter().partition(|(at, _)| *at <= now);
            in_flight = later;
            for (_, to_a) in arrived {
                if to_a { a.count(pair(), now) } else { b.count(pair(), now) }
            }
            for (bucket, to_a) in [(&mut a, false), (&mut b, true)] {
                if bucket.admit(&pair(), now) {
                    relayed += 1;
                    in_flight.push((now + Duration::from_millis(1), to_a));
                }
            }
        }
        assert!(relayed <= 2 * 10 + 3 + 3 + 1, "{relayed} relayed in 10 s at 2/s");
        assert!(relayed >= 2 * 10, "{relayed}: the pair still gets its rate");
    }

    #[test]
    fn the_latest_live_change_is_expired_by_its_own_node_only() {
        let (mut a, mut b) = (Indicators::new("a"), Indicators::new("b"));
        let (change, arm) = a.relayed(&pair(), &signal("t1", STATUS_TYPING), T0);
        assert_eq!(arm, Some(Arm { generation: 1, here: true }));
        let backup = b.heard(pair(), change).expect("a backup timer");
        assert!(!backup.here);
        assert_eq!(b.live_id(&pair()), Some("t1"));

        // The user types on b before a's timer runs out: a's timer finds nothing to expire.
        let (change, b_arm) = b.relayed(&pair(), &signal("t2", STATUS_TYPING), T0 + 5);
        assert!(b.expire(&pair(), backup.generation).is_none(), "the backup timer was superseded");
        assert!(a.heard(pair(), change).is_some());
        assert!(a.expire(&pair(), 1).is_none(), "a's own timer was superseded");

        let (paused, note) = b.expire(&pair(), b_arm.unwrap().generation).expect("b's timer expires t2");
        assert_eq!(paused.id, "t2");
        assert!(!note.counts(), "an expiry is no signal to count");
        assert!(a.heard(pair(), note).is_none());
        assert_eq!((a.live_id(&pair()), b.live_id(&pair())), (None, None));
    }

    #[test]
    fn an_end_elsewhere_disarms_and_late_or_stale_notes_change_nothing() {
        let (mut a, mut b) = (Indicators::new("a"), Indicators::new("b"));
        let (typing, arm) = a.relayed(&pair(), &signal("t1", STATUS_TYPING), T0);
        b.heard(pair(), typing.clone());
        let (ended, _) = b.relayed(&pair(), &signal("p1", STATUS_PAUSED), T0);
        assert!(matches!(&ended, Change::Ended { stamp } if stamp.at == T0 + 1), "past what b knew: {ended:?}");
        a.heard(pair(), ended.clone());
        assert!(a.expire(&pair(), arm.unwrap().generation).is_none(), "no stale PAUSED from a");

        // The TYPING arriving again (or late, after the PAUSED) does not revive it.
        assert!(b.heard(pair(), typing.clone()).is_none());
        assert_eq!(b.live_id(&pair()), None);

        // Concurrent changes (neither node had heard of the other's): both nodes pick the same.
        let (mut c, mut d) = (Indicators::new("c"), Indicators::new("d"));
        let (on_c, _) = c.relayed(&pair(), &signal("t", STATUS_TYPING), T0);
        let (on_d, _) = d.relayed(&pair(), &signal("p", STATUS_CANCELLED), T0);
        c.heard(pair(), on_d);
        d.heard(pair(), on_c);
        assert_eq!((c.live_id(&pair()), d.live_id(&pair())), (None, None), "d's stamp wins the tie");

        // An expiry note for an indicator that was superseded ends nothing.
        let (live, _) = a.relayed(&pair(), &signal("t3", STATUS_TYPING), T0 + 10);
        b.heard(pair(), live);
        let old = Change::Expired { stamp: Stamp { at: T0, node: "a".into() } };
        b.heard(pair(), old);
        assert_eq!(b.live_id(&pair()), Some("t3"));
        b.forget_ended(i64::MAX);
        assert_eq!(b.live_id(&pair()), Some("t3"), "housekeeping keeps live indicators");
        a.forget_ended(i64::MAX);
        assert_eq!(a.entries.len(), 1);
    }

    #[test]
    fn resume_rearms_a_live_indicator_wherever_it_was_relayed() {
        let (mut a, mut b) = (Indicators::new("a"), Indicators::new("b"));
        let (typing, a_arm) = a.relayed(&pair(), &signal("r1", STATUS_RECORDING), T0);
        b.heard(pair(), typing);
        let (resumed, b_arm) = b.relayed(&pair(), &signal("x", STATUS_RESUME), T0 + 1);
        assert!(matches!(&resumed, Change::Live { signal, .. } if signal.id == "r1"), "{resumed:?}");
        assert_eq!(b_arm.map(|arm| arm.here), Some(true), "b now owns the expiry");
        a.heard(pair(), resumed);
        assert!(a.expire(&pair(), a_arm.unwrap().generation).is_none());

        // With nothing live, RESUME is only counted, and other statuses too.
        let (mut lone, played) = (Indicators::new("a"), signal("v", 3));
        assert_eq!(lone.relayed(&pair(), &signal("x", STATUS_RESUME), T0), (Change::Counted, None));
        assert_eq!(lone.relayed(&pair(), &played, T0), (Change::Counted, None));
        assert!(Change::Counted.counts());
    }

    #[test]
    fn notes_survive_the_wire() {
        let mut a = Indicators::new("a");
        let typing =
            pb::Signal { from: Some(pb::Identity { eid: "alice".into(), ..Default::default() }), ..signal("t", 4) };
        let (change, _) = a.relayed(&pair(), &typing, T0);
        let note = Note { node: "a".into(), from: "alice".into(), to: "bob".into(), change };
        assert_eq!(Note::read(&note.event()), Some(note));
        let bogus = serde_json::json!({"node": "a", "from": "x", "to": "y", "change": {"kind": "bogus"}});
        assert_eq!(Note::read(&Event::raw(NOTE_EVENT, Payload::json(&bogus))), None);
        assert_eq!(Note::read(&Event::Signal(typing)), None, "not a note");
    }
}
