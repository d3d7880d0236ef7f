//! A device's delivery state on its inbox topic: where it is in its log, and whether it is
//! reading stored messages or following live ones, so that pushes follow the log in offset
//! order without gap or duplicate, whatever order live publishes arrive in.
//!
//! The socket subscribes before the join reply, so every message committed after a page of
//! stored messages was read arrives live. Each page is read from one snapshot of the log, so it
//! has no hole, and says whether it reached that snapshot's end.
//!
//! - **Reading** (the catch-up after a join, or a gap fill): stored messages are pushed as
//!   pages come; live ones are held. When a page reaches the end of its snapshot, everything
//!   up to that snapshot's last offset has been seen (an offset the log could not return, such
//!   as a deleted user's message, is skipped), and the inbox goes live with what it holds.
//! - **Live**: a message at the next offset is pushed, followed by every held one that is now
//!   contiguous. One that arrives ahead of a gap is held; if the gap is still open after a short
//!   window, the inbox reads the log again from where it is.
//!
//! - **Resync**: live delivery to the node was interrupted (its broker reconnected, or another
//!   node's broadcasts were dropped on the way), so a message may be missing that no later one
//!   will reveal as a gap. A live inbox reads the log from its delivered mark at once; one
//!   that is reading already reads once more after this read, whose snapshot may predate what
//!   was lost. Receipts and signals are not in the log: those lost are not filled.
//!
//! A device's own sends never come back to its socket live, so they would look like gaps: the
//! channel reports each send's offset in the sender's log ([`Inbox::own_sent`]) when its ack
//! comes back, and the inbox steps over it. Held messages are bounded; past the bound they are
//! dropped and read back from storage, where they already are.

use std::collections::{BTreeMap, BTreeSet};

/// Live messages held past a gap, or during a read, before the inbox relies on reading them
/// back from storage instead.
const MAX_HELD: usize = 1024;

/// Own-send offsets remembered ahead of the delivered mark; past this the oldest is forgotten,
/// which only costs a read that pushes the device a message it sent.
const MAX_OWN: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The device asks for messages itself (`pull`); nothing is pushed.
    Pull,
    /// Stored messages are being pushed; live ones are held. `overflowed`: some were dropped
    /// after this read's snapshot may have been taken, so one more read is needed. `again`: a
    /// resync came during this read, which may have started before what was lost was stored,
    /// so one more read is needed too.
    Reading { overflowed: bool, again: bool },
    /// Live messages go out in order. `gap_timer`: the delivered mark when the gap timer was
    /// armed, if one is running.
    Live { gap_timer: Option<i64> },
}

/// Delivery state of one device on `user:<eid>`, holding live messages of type `T`.
#[derive(Debug)]
pub struct Inbox<T> {
    delivered: i64,
    /// This socket's own sends past `delivered`.
    own: BTreeSet<i64>,
    /// Live messages past `delivered` that wait for what comes before them.
    held: BTreeMap<i64, T>,
    phase: Phase,
}

impl<T> Inbox<T> {
    /// A push-mode device that has seen the log up to `after` and now reads the rest.
    pub fn catching_up(after: i64) -> Self {
        Inbox {
            delivered: after,
            own: BTreeSet::new(),
            held: BTreeMap::new(),
            phase: Phase::Reading { overflowed: false, again: false },
        }
    }

    /// A pull-mode device.
    pub fn pull() -> Self {
        Inbox { delivered: 0, own: BTreeSet::new(), held: BTreeMap::new(), phase: Phase::Pull }
    }

    /// The last offset pushed to the device (or stepped over).
    pub fn delivered(&self) -> i64 {
        self.delivered
    }

    /// Whether stored messages are being read.
    pub fn is_reading(&self) -> bool {
        matches!(self.phase, Phase::Reading { .. })
    }

    /// Takes a live message at `offset`; returns what to push now, in offset order.
    pub fn offer_live(&mut self, offset: i64, message: T) -> Vec<T> {
        if self.phase == Phase::Pull || offset <= self.delivered || self.held.contains_key(&offset) {
            return Vec::new();
        }
        if self.held.len() >= MAX_HELD {
            // Stored already: a read after this one's commit returns it.
            if let Phase::Reading { overflowed, .. } = &mut self.phase {
                *overflowed = true;
            }
            return Vec::new();
        }
        self.held.insert(offset, message);
        self.release()
    }

    /// Records that this socket's own send took `offset` in the log; returns what that unblocks.
    pub fn own_sent(&mut self, offset: i64) -> Vec<T> {
        if self.phase == Phase::Pull || offset <= self.delivered {
            return Vec::new();
        }
        if self.own.len() >= MAX_OWN {
            self.own.pop_first();
        }
        self.own.insert(offset);
        self.release()
    }

    /// Whether a gap timer should start now: live, holding messages past a gap, none running.
    pub fn gap_timer_due(&mut self) -> bool {
        match &mut self.phase {
            Phase::Live { gap_timer } if gap_timer.is_none() && !self.held.is_empty() => {
                *gap_timer = Some(self.delivered);
                true
            }
            _ => false,
        }
    }

    /// The gap timer fired: true when the same gap is still open and the log must be read
    /// (the inbox is then reading). A gap that moved on since gets a timer of its own.
    pub fn gap_expired(&mut self) -> bool {
        let Phase::Live { gap_timer } = &mut self.phase else { return false };
        let armed_at = gap_timer.take();
        if self.held.is_empty() || armed_at != Some(self.delivered) {
            return false;
        }
        self.phase = Phase::Reading { overflowed: false, again: false };
        true
    }

    /// Live delivery was interrupted: true when a read must start now (the inbox is then
    /// reading). A read under way is made to run once more instead; a pull device reads by
    /// itself. A gap timer still running finds the read started and does nothing, or at worst
    /// starts the next gap's read early.
    pub fn resync(&mut self) -> bool {
        match &mut self.phase {
            Phase::Pull => false,
            Phase::Reading { again, .. } => {
                *again = true;
                false
            }
            Phase::Live { .. } => {
                self.phase = Phase::Reading { overflowed: false, again: false };
                true
            }
        }
    }

    /// Decides about a stored message at `offset` from a page: true to push it.
    pub fn offer_stored(&mut self, offset: i64) -> bool {
        if !self.is_reading() || offset <= self.delivered {
            return false;
        }
        self.delivered = offset;
        // The device sent this one itself.
        !self.own.remove(&offset)
    }

    /// Ends a read after a page that reached the end of its snapshot, whose last offset was
    /// `last_offset`: every offset up to it has been offered, so what was not is skipped. Returns
    /// the held messages to push now, in order; `None` when held messages were dropped for
    /// space, or a resync came, and the read must go on.
    pub fn finish_reading(&mut self, last_offset: i64) -> Option<Vec<T>> {
        let Phase::Reading { overflowed, again } = self.phase else { return Some(Vec::new()) };
        self.delivered = self.delivered.max(last_offset);
        let delivered = self.delivered;
        self.held.retain(|offset, _| *offset > delivered);
        self.own.retain(|offset| *offset > delivered);
        if overflowed {
            self.held.clear();
        }
        if overflowed || again {
            self.phase = Phase::Reading { overflowed: false, again: false };
            return None;
        }
        self.phase = Phase::Live { gap_timer: None };
        Some(self.release())
    }

    /// While live, pushes everything contiguous with the delivered mark.
    fn release(&mut self) -> Vec<T> {
        let mut out = Vec::new();
        if !matches!(self.phase, Phase::Live { .. }) {
            return out;
        }
        loop {
            let next = self.delivered + 1;
            if self.own.remove(&next) {
                self.delivered = next;
            } else if let Some(message) = self.held.remove(&next) {
                self.delivered = next;
                out.push(message);
            } else {
                return out;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives an inbox the way the channel does, recording what reaches the device.
    struct Device {
        inbox: Inbox<i64>,
        pushed: Vec<i64>,
        timer: bool,
    }

    impl Device {
        fn live(delivered: i64) -> Self {
            let mut device = Device { inbox: Inbox::catching_up(delivered), pushed: Vec::new(), timer: false };
            device.read(&[], delivered);
            device
        }

        fn arm(&mut self) {
            if self.inbox.gap_timer_due() {
                assert!(!self.timer, "one gap timer at a time");
                self.timer = true;
            }
        }

        fn live_message(&mut self, offset: i64) {
            let ready = self.inbox.offer_live(offset, offset);
            self.pushed.extend(ready);
            self.arm();
        }

        fn own(&mut self, offset: i64) {
            let ready = self.inbox.own_sent(offset);
            self.pushed.extend(ready);
            self.arm();
        }

        /// The gap timer fires; returns whether the log is read.
        fn timer_fires(&mut self) -> bool {
            assert!(self.timer, "no timer was armed");
            self.timer = false;
            let read = self.inbox.gap_expired();
            self.arm();
            read
        }

        /// One page that reaches the end of a log whose last offset is `last`.
        fn read(&mut self, stored: &[i64], last: i64) {
            assert!(self.inbox.is_reading());
            for &offset in stored {
                if self.inbox.offer_stored(offset) {
                    self.pushed.push(offset);
                }
            }
            let held = self.inbox.finish_reading(last).expect("no overflow");
            self.pushed.extend(held);
            self.arm();
        }
    }

    #[test]
    fn live_messages_wait_for_the_catch_up_and_duplicates_are_dropped() {
        let mut d = Device { inbox: Inbox::catching_up(2), pushed: Vec::new(), timer: false };
        // Live 5 and 6 arrive while stored 3..=5 are read from a snapshot ending at 5.
        d.live_message(5);
        d.live_message(6);
        d.live_message(6);
        assert!(d.pushed.is_empty(), "nothing live goes out during the catch-up");
        assert!(!d.inbox.offer_stored(2), "at or before `after`");
        d.read(&[3, 4, 5], 5);
        assert_eq!(d.pushed, vec![3, 4, 5, 6], "5 came from storage, 6 from the held ones");
        assert_eq!(d.inbox.delivered(), 6);
        d.live_message(6);
        d.live_message(7);
        assert_eq!(d.pushed, vec![3, 4, 5, 6, 7]);
        assert!(!d.inbox.offer_stored(8), "no stored pushes once live");
        assert!(!d.timer);
    }

    #[test]
    fn a_message_ahead_of_a_gap_waits_for_the_one_before_it() {
        let mut d = Device::live(5);
        d.live_message(7);
        assert!(d.pushed.is_empty(), "7 is held until 6 is known");
        assert!(d.timer);
        d.live_message(6);
        assert_eq!(d.pushed, vec![6, 7], "offset order, though published 7 first");
        // The timer that was armed for the closed gap finds nothing to do.
        assert!(!d.timer_fires());
        assert!(!d.inbox.is_reading());
    }

    #[test]
    fn reordered_bursts_and_duplicates_come_out_once_in_order() {
        let mut d = Device::live(0);
        for offset in [3, 1, 2, 2, 6, 5, 1, 4, 6, 8, 7] {
            d.live_message(offset);
        }
        assert_eq!(d.pushed, (1..=8).collect::<Vec<_>>());
        assert_eq!(d.inbox.delivered(), 8);
    }

    #[test]
    fn two_nodes_committing_one_log_interleave_into_one_ordered_stream() {
        // Node a commits 1, 3, 5 and node b 2, 4, 6 of this log moments apart; this device
        // hears a's directly and b's late over the broker, and a re-sent 3 comes twice.
        let mut d = Device::live(0);
        for offset in [1, 3, 5, 3, 2, 4] {
            d.live_message(offset);
        }
        assert_eq!(d.pushed, vec![1, 2, 3, 4, 5], "held until the lower offsets came");
        // 6 never comes live (a lost broadcast) but 7 does: after the window, the log fills it.
        d.live_message(7);
        assert!(!d.timer_fires(), "the window armed for the gap at 2 has closed");
        assert!(d.timer_fires(), "the gap at 6 gets a window of its own, then a read");
        d.read(&[6, 7], 7);
        d.live_message(7);
        assert_eq!(d.pushed, (1..=7).collect::<Vec<_>>(), "each offset once, in order");
    }

    #[test]
    fn a_gap_still_open_after_the_window_is_filled_from_the_log() {
        let mut d = Device::live(5);
        d.live_message(8);
        d.live_message(9);
        assert!(d.timer_fires(), "6 and 7 never came live: read them");
        // While the log is read, 10 arrives live and is held.
        d.live_message(10);
        d.read(&[6, 7, 8, 9], 9);
        assert_eq!(d.pushed, vec![6, 7, 8, 9, 10]);
    }

    #[test]
    fn a_gap_the_database_cannot_fill_is_skipped_after_the_read() {
        // Offset 6 belongs to a message the log no longer returns (its sender was deleted).
        let mut d = Device::live(5);
        d.live_message(7);
        assert!(d.timer_fires());
        d.read(&[7], 7);
        assert_eq!(d.pushed, vec![7], "6 is skipped, 7 pushed once");
        d.live_message(8);
        assert_eq!(d.pushed, vec![7, 8], "and the stream goes on without waiting again");
        assert!(!d.timer);
    }

    #[test]
    fn a_gap_that_moved_on_gets_a_new_window_before_a_read() {
        let mut d = Device::live(5);
        d.live_message(7);
        d.live_message(6); // closes the first gap
        d.live_message(9); // opens another while the first timer still runs
        assert_eq!(d.pushed, vec![6, 7]);
        assert!(!d.timer_fires(), "the timer was armed for the first gap");
        assert!(d.timer, "the second gap gets a full window");
        assert!(d.timer_fires());
    }

    #[test]
    fn own_sends_are_stepped_over_once_their_ack_says_where_they_went() {
        let mut d = Device::live(5);
        // This socket's own send took 6; a peer's message at 7 arrives before the ack.
        d.live_message(7);
        assert!(d.pushed.is_empty());
        d.own(6);
        assert_eq!(d.pushed, vec![7]);
        // An ack that comes first leaves no gap at all.
        d.own(8);
        d.live_message(9);
        assert_eq!(d.pushed, vec![7, 9]);
        assert_eq!(d.inbox.delivered(), 9);
    }

    #[test]
    fn own_sends_read_back_during_a_catch_up_are_not_pushed() {
        let mut d = Device { inbox: Inbox::catching_up(0), pushed: Vec::new(), timer: false };
        d.own(2);
        d.read(&[1, 2, 3], 3);
        assert_eq!(d.pushed, vec![1, 3]);
    }

    #[test]
    fn held_messages_are_bounded_and_read_back_after_overflow() {
        let mut inbox = Inbox::catching_up(0);
        let past = MAX_HELD as i64 + 10;
        for o in 1..=past {
            inbox.offer_live(o, o);
        }
        for o in 1..=5 {
            assert!(inbox.offer_stored(o));
        }
        assert!(inbox.finish_reading(5).is_none(), "overflow means read the rest from storage");
        assert!(inbox.is_reading());
        for o in 6..=past {
            assert!(inbox.offer_stored(o));
        }
        inbox.offer_live(past + 1, past + 1);
        assert_eq!(inbox.finish_reading(past).unwrap(), vec![past + 1]);

        // Live, a gap that holds more than the bound drops the rest; the read fetches them.
        let mut d = Device::live(0);
        for o in 2..=(MAX_HELD as i64 + 10) {
            d.live_message(o);
        }
        assert!(d.pushed.is_empty());
        assert!(d.timer_fires());
        let stored: Vec<i64> = (1..=(MAX_HELD as i64 + 10)).collect();
        d.read(&stored, MAX_HELD as i64 + 10);
        assert_eq!(d.pushed, stored);
    }

    #[test]
    fn a_resync_while_live_reads_what_no_later_message_would_reveal() {
        // 6 and 7 were committed on another node while the broker was down: nothing live
        // after them, so no gap timer would ever fire.
        let mut d = Device::live(5);
        assert!(!d.timer);
        assert!(d.inbox.resync(), "live: read now");
        assert!(d.inbox.is_reading());
        // A message committed after the outage arrives live during the read and is held.
        d.live_message(8);
        d.read(&[6, 7], 7);
        assert_eq!(d.pushed, vec![6, 7, 8], "the lost ones from the log, then the held one");
        assert!(!d.inbox.is_reading());
        // A resync that finds nothing new costs a read and pushes nothing twice.
        assert!(d.inbox.resync());
        d.read(&[], 8);
        assert_eq!(d.pushed, vec![6, 7, 8]);
    }

    #[test]
    fn a_resync_during_a_read_makes_it_read_once_more() {
        let mut inbox = Inbox::catching_up(0);
        assert!(inbox.offer_stored(1));
        assert!(!inbox.resync(), "a read is under way: no second one beside it");
        assert!(!inbox.resync(), "several resyncs during one read are one more read");
        inbox.offer_live(4, 4);
        assert!(inbox.finish_reading(1).is_none(), "this read's snapshot may predate the loss");
        assert!(inbox.is_reading());
        for offset in [2, 3, 4] {
            assert!(inbox.offer_stored(offset));
        }
        inbox.offer_live(5, 5);
        assert_eq!(inbox.finish_reading(4), Some(vec![5]), "held 4 came from the log; 5 goes live");
        assert!(!inbox.is_reading());
        assert_eq!(inbox.delivered(), 5);
    }

    #[test]
    fn a_resync_while_a_gap_timer_runs_reads_at_once() {
        let mut d = Device::live(5);
        d.live_message(8);
        assert!(d.timer);
        assert!(d.inbox.resync(), "no need to wait out the window");
        d.read(&[6, 7, 8], 8);
        assert_eq!(d.pushed, vec![6, 7, 8]);
        assert!(!d.timer_fires(), "the stale timer finds the gap closed");
        assert!(!d.inbox.is_reading());
    }

    #[test]
    fn pull_mode_pushes_nothing() {
        let mut inbox = Inbox::pull();
        assert!(inbox.offer_live(1, 1).is_empty());
        assert!(inbox.own_sent(1).is_empty());
        assert!(!inbox.offer_stored(1));
        assert!(!inbox.gap_timer_due());
        assert!(!inbox.resync(), "a pull device reads by itself");
        assert!(!inbox.is_reading());
    }
}
