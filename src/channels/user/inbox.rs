//! A device's delivery state on its inbox topic: where it is in its log, and whether it is
//! still catching up on stored messages or following live ones.
//!
//! The socket subscribes before the join reply, so every message committed after a page of
//! stored messages was read arrives live. Each page is read from one snapshot of the log, so it
//! has no hole, and says whether it reached that snapshot's end. Live messages are held back
//! until a page does (`more` false), then pushed if past the last offset pushed; after that they go
//! straight out. Past a bound, held messages are dropped and the catch-up reads once more:
//! they are stored, so the next page has them. Pushes thus follow the log without gap or
//! duplicate. (A device's own sends never come back to it live; it has them already.)

use crate::pubsub::Attachment;

/// Live messages held back during a catch-up before the inbox relies on reading them back.
const MAX_HELD: usize = 1024;

/// What to do with a live message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Push it now.
    Push,
    /// Do not push it now: it was pushed already, is held back, or the device pulls.
    Skip,
}

#[derive(Debug)]
enum Phase {
    /// The device asks for messages itself (`pull`); nothing is pushed.
    Pull,
    /// Stored messages are being pushed; live ones wait in `held`.
    CatchingUp { held: Vec<(i64, Attachment)>, overflowed: bool },
    /// Live messages go straight out.
    Live,
}

/// Delivery state of one device on `user:<eid>`.
#[derive(Debug)]
pub struct Inbox {
    delivered: i64,
    phase: Phase,
}

impl Inbox {
    /// A push-mode device that has seen the log up to `after` and now catches up.
    pub fn catching_up(after: i64) -> Self {
        Inbox { delivered: after, phase: Phase::CatchingUp { held: Vec::new(), overflowed: false } }
    }

    /// A pull-mode device.
    pub fn pull() -> Self {
        Inbox { delivered: 0, phase: Phase::Pull }
    }

    /// The last offset pushed to the device.
    pub fn delivered(&self) -> i64 {
        self.delivered
    }

    /// Whether stored messages are still being read.
    pub fn is_catching_up(&self) -> bool {
        matches!(self.phase, Phase::CatchingUp { .. })
    }

    /// Decides about a live message at `offset`.
    pub fn offer_live(&mut self, offset: i64, message: &Attachment) -> Offer {
        match &mut self.phase {
            Phase::Pull => Offer::Skip,
            Phase::CatchingUp { held, overflowed } => {
                if offset > self.delivered {
                    if held.len() < MAX_HELD {
                        held.push((offset, Attachment::clone(message)));
                    } else {
                        *overflowed = true;
                    }
                }
                Offer::Skip
            }
            Phase::Live if offset > self.delivered => {
                self.delivered = offset;
                Offer::Push
            }
            Phase::Live => Offer::Skip,
        }
    }

    /// Decides about a stored message at `offset` from a catch-up page.
    pub fn offer_stored(&mut self, offset: i64) -> Offer {
        if !self.is_catching_up() || offset <= self.delivered {
            return Offer::Skip;
        }
        self.delivered = offset;
        Offer::Push
    }

    /// Ends the catch-up after a page that reached the end of the log; returns the held live
    /// messages to push now, in order. If some were dropped for space, the catch-up goes on
    /// instead (`None`) and reads them from storage.
    pub fn finish_catch_up(&mut self) -> Option<Vec<(i64, Attachment)>> {
        let Phase::CatchingUp { held, overflowed } = &mut self.phase else { return Some(Vec::new()) };
        if std::mem::take(overflowed) {
            held.clear();
            return None;
        }
        let mut held = std::mem::take(held);
        held.retain(|(offset, _)| *offset > self.delivered);
        if let Some((last, _)) = held.last() {
            self.delivered = *last;
        }
        self.phase = Phase::Live;
        Some(held)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn tag(n: i64) -> Attachment {
        Arc::new(n)
    }

    fn offsets(items: &[(i64, Attachment)]) -> Vec<i64> {
        items.iter().map(|(o, _)| *o).collect()
    }

    #[test]
    fn live_messages_wait_for_the_catch_up_and_duplicates_are_dropped() {
        let mut inbox = Inbox::catching_up(2);
        // Live 5 and 6 arrive while stored 3..=5 are read.
        assert_eq!(inbox.offer_live(5, &tag(5)), Offer::Skip);
        assert_eq!(inbox.offer_live(6, &tag(6)), Offer::Skip);
        assert_eq!(inbox.offer_stored(2), Offer::Skip, "at or before `after`");
        for o in 3..=5 {
            assert_eq!(inbox.offer_stored(o), Offer::Push);
        }
        let held = inbox.finish_catch_up().expect("held messages follow on");
        assert_eq!(offsets(&held), vec![6], "5 came from storage already");
        assert_eq!(inbox.delivered(), 6);
        assert_eq!(inbox.offer_live(6, &tag(6)), Offer::Skip);
        assert_eq!(inbox.offer_live(7, &tag(7)), Offer::Push);
        assert_eq!(inbox.offer_stored(8), Offer::Skip, "no stored pushes once live");
    }

    #[test]
    fn own_sends_leave_gaps_that_are_not_waited_for() {
        let mut inbox = Inbox::catching_up(0);
        // Offset 2 was this device's own send: never live here.
        inbox.offer_live(3, &tag(3));
        assert_eq!(inbox.offer_stored(1), Offer::Push);
        assert_eq!(offsets(&inbox.finish_catch_up().unwrap()), vec![3]);
        assert_eq!(inbox.offer_live(5, &tag(5)), Offer::Push);
    }

    #[test]
    fn held_messages_are_bounded() {
        let mut inbox = Inbox::catching_up(0);
        for o in 1..=(MAX_HELD as i64 + 10) {
            inbox.offer_live(o, &tag(o));
        }
        assert!(inbox.finish_catch_up().is_none(), "overflow means read the rest from storage");
        assert!(inbox.is_catching_up());
        for o in 1..=(MAX_HELD as i64 + 10) {
            assert_eq!(inbox.offer_stored(o), Offer::Push);
        }
        inbox.offer_live(MAX_HELD as i64 + 11, &tag(0));
        assert_eq!(offsets(&inbox.finish_catch_up().unwrap()), vec![MAX_HELD as i64 + 11]);
    }

    #[test]
    fn pull_mode_pushes_nothing() {
        let mut inbox = Inbox::pull();
        assert_eq!(inbox.offer_live(1, &tag(1)), Offer::Skip);
        assert_eq!(inbox.offer_stored(1), Offer::Skip);
    }
}
