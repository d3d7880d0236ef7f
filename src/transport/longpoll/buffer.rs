//! The outbound side of one long-poll session: frames wait here until the client's next poll
//! takes them, instead of being written to a socket.
//!
//! It keeps the WebSocket queue's bounds (frames and bytes, see [`QueueLimits`]) so a client
//! that stops polling fills it and is closed as too slow, exactly like one that stops reading.
//! At most one poll waits at a time: a newer poll answers the older one as empty, which is what a
//! client that retried a lost request expects. What a poll takes is handed back if its HTTP
//! request went away before the answer could be sent, so a frame is lost only with the session.

use std::collections::VecDeque;
use std::time::Duration;

use bytestring::ByteString;
use tokio::sync::oneshot;

use crate::protocol::WireFrame;
use crate::transport::writer::{QueueError, QueueLimits};

/// What a poll is answered with.
#[derive(Debug, PartialEq, Eq)]
pub enum PollAnswer {
    /// Frames, oldest first, each one serialized text frame.
    Messages(Vec<ByteString>),
    /// Nothing arrived within the window.
    Empty,
    /// The session has ended; nothing more will come.
    Gone,
}

/// One poll that waits for frames, and which poll it is (for its window's timer).
struct Waiting {
    answer: oneshot::Sender<PollAnswer>,
    generation: u64,
}

/// Frames waiting for the next poll of one long-poll session.
pub struct PollBuffer {
    frames: VecDeque<ByteString>,
    bytes: usize,
    limits: QueueLimits,
    window: Duration,
    waiting: Option<Waiting>,
    generation: u64,
    /// The session is closing: what is buffered is still handed out, nothing more is taken.
    closing: bool,
    /// An answer to the waiting poll is due at the end of the actor's current turn, so a burst
    /// of frames goes out in one response.
    flush_due: bool,
    /// Binary frames have no long-poll encoding (phoenix.js reads every message as JSON text).
    dropped_binary: u64,
    /// Runs when the session ends, to forget it (the session registry's entry).
    on_drop: Option<Box<dyn FnOnce()>>,
}

impl PollBuffer {
    /// An empty buffer within `limits`, whose polls wait up to `window`; `on_drop` runs when
    /// the session that owns it ends.
    pub fn new(limits: QueueLimits, window: Duration, on_drop: Box<dyn FnOnce()>) -> Self {
        PollBuffer {
            frames: VecDeque::new(),
            bytes: 0,
            limits: QueueLimits { frames: limits.frames.max(1), bytes: limits.bytes },
            window,
            waiting: None,
            generation: 0,
            closing: false,
            flush_due: false,
            dropped_binary: 0,
            on_drop: Some(on_drop),
        }
    }

    /// How long a poll waits for frames before it is answered empty.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Buffers a frame for the next poll; a text frame over the bounds is refused as `Full`.
    pub fn send(&mut self, frame: WireFrame) -> Result<(), QueueError> {
        if self.closing {
            return Err(QueueError::Closed);
        }
        let text = match frame {
            WireFrame::Text(text) => text,
            WireFrame::Binary(_) => {
                self.dropped_binary += 1;
                if self.dropped_binary == 1 {
                    tracing::debug!("binary frames are not sent over long-poll; dropping");
                }
                return Ok(());
            }
        };
        let full_in_bytes = self.bytes > 0 && self.bytes.saturating_add(text.len()) > self.limits.bytes;
        if full_in_bytes || self.frames.len() >= self.limits.frames {
            return Err(QueueError::Full);
        }
        self.bytes += text.len();
        self.frames.push_back(text);
        Ok(())
    }

    /// Whether a poll waits and has frames to take, and no answer is due yet: the caller
    /// schedules [`flush`](Self::flush) once per turn.
    pub fn wants_flush(&mut self) -> bool {
        let wanted = self.waiting.is_some() && !self.frames.is_empty() && !self.flush_due;
        self.flush_due |= wanted;
        wanted
    }

    /// Answers the waiting poll with everything buffered.
    pub fn flush(&mut self) {
        self.flush_due = false;
        if !self.frames.is_empty()
            && let Some(waiting) = self.waiting.take()
        {
            self.hand_out(waiting.answer);
        }
    }

    /// Takes a poll: answered at once when frames wait or the session is ending, else kept
    /// (answering an older waiting poll as empty). Returns the generation to pass to
    /// [`window_over`](Self::window_over) when the poll was kept.
    pub fn poll(&mut self, answer: oneshot::Sender<PollAnswer>) -> Option<u64> {
        if !self.frames.is_empty() {
            self.hand_out(answer);
            return None;
        }
        if self.closing {
            let _ = answer.send(PollAnswer::Gone);
            return None;
        }
        if let Some(older) = self.waiting.take() {
            let _ = older.answer.send(PollAnswer::Empty);
        }
        self.generation += 1;
        self.waiting = Some(Waiting { answer, generation: self.generation });
        Some(self.generation)
    }

    /// The window of poll `generation` is over: it is answered empty if it still waits.
    /// Returns whether it did.
    pub fn window_over(&mut self, generation: u64) -> bool {
        if self.waiting.as_ref().is_some_and(|w| w.generation == generation)
            && let Some(waiting) = self.waiting.take()
        {
            let _ = waiting.answer.send(PollAnswer::Empty);
            return true;
        }
        false
    }

    /// Whether the session is closing and its client has taken everything there was.
    pub fn drained(&self) -> bool {
        self.closing && self.frames.is_empty()
    }

    /// Whether a poll is waiting (a session being polled is not idle).
    pub fn polled(&self) -> bool {
        self.waiting.is_some()
    }

    /// Takes no more frames; what is buffered still goes to the next poll, then polls hear `Gone`.
    pub fn close(&mut self) {
        self.closing = true;
        if let Some(waiting) = self.waiting.take() {
            if self.frames.is_empty() {
                let _ = waiting.answer.send(PollAnswer::Gone);
            } else {
                self.hand_out(waiting.answer);
            }
        }
    }

    /// Drops what is buffered and takes no more: for a client that stopped polling.
    pub fn abort(&mut self) {
        self.frames = VecDeque::new();
        self.bytes = 0;
        self.close();
    }

    /// How many more frames the buffer takes right now.
    pub fn room(&self) -> usize {
        self.limits.frames.saturating_sub(self.frames.len())
    }

    /// How many more bytes the buffer takes right now.
    pub fn room_bytes(&self) -> usize {
        self.limits.bytes.saturating_sub(self.bytes)
    }

    /// Bytes buffered and not yet polled.
    pub fn queued_bytes(&self) -> usize {
        self.bytes
    }

    /// Sends everything buffered to `answer`; if the poll's request is gone, keeps it for the next.
    fn hand_out(&mut self, answer: oneshot::Sender<PollAnswer>) {
        let frames: Vec<ByteString> = std::mem::take(&mut self.frames).into();
        let bytes = std::mem::take(&mut self.bytes);
        if let Err(PollAnswer::Messages(frames)) = answer.send(PollAnswer::Messages(frames)) {
            self.frames = frames.into();
            self.bytes = bytes;
        }
    }
}

impl Drop for PollBuffer {
    fn drop(&mut self) {
        if let Some(waiting) = self.waiting.take() {
            let _ = waiting.answer.send(PollAnswer::Gone);
        }
        if let Some(forget) = self.on_drop.take() {
            forget();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use bytes::Bytes;

    use super::*;

    fn buffer(frames: usize, bytes: usize) -> PollBuffer {
        PollBuffer::new(QueueLimits { frames, bytes }, Duration::from_secs(10), Box::new(|| {}))
    }

    fn text(s: &str) -> WireFrame {
        WireFrame::Text(ByteString::from(s.to_owned()))
    }

    #[test]
    fn a_poll_takes_everything_buffered_at_once() {
        let mut buffer = buffer(10, 1_000);
        buffer.send(text("a")).expect("room");
        buffer.send(text("b")).expect("room");
        let (tx, mut rx) = oneshot::channel();
        assert_eq!(buffer.poll(tx), None, "answered at once");
        assert_eq!(rx.try_recv(), Ok(PollAnswer::Messages(vec!["a".into(), "b".into()])));
        assert_eq!(buffer.queued_bytes(), 0);
    }

    #[test]
    fn a_waiting_poll_is_answered_by_a_flush_or_its_window() {
        let mut buffer = buffer(10, 1_000);
        let (tx, mut rx) = oneshot::channel();
        let generation = buffer.poll(tx).expect("nothing buffered: the poll waits");
        assert!(buffer.polled());
        buffer.send(text("a")).expect("room");
        assert!(buffer.wants_flush());
        assert!(!buffer.wants_flush(), "one flush per turn");
        buffer.flush();
        assert_eq!(rx.try_recv(), Ok(PollAnswer::Messages(vec!["a".into()])));
        assert!(!buffer.window_over(generation), "an answered poll's window is no longer watched");

        let (tx, mut rx) = oneshot::channel();
        let generation = buffer.poll(tx).expect("waits");
        assert!(buffer.window_over(generation));
        assert_eq!(rx.try_recv(), Ok(PollAnswer::Empty));
    }

    #[test]
    fn a_newer_poll_answers_the_older_one_empty() {
        let mut buffer = buffer(10, 1_000);
        let (old_tx, mut old_rx) = oneshot::channel();
        let old = buffer.poll(old_tx).expect("waits");
        let (tx, _rx) = oneshot::channel();
        buffer.poll(tx).expect("waits");
        assert_eq!(old_rx.try_recv(), Ok(PollAnswer::Empty));
        assert!(!buffer.window_over(old), "the older window no longer answers the newer poll");
        assert!(buffer.polled());
    }

    #[test]
    fn frames_of_a_poll_whose_request_went_away_wait_for_the_next() {
        let mut buffer = buffer(10, 1_000);
        let (tx, rx) = oneshot::channel();
        buffer.poll(tx).expect("waits");
        drop(rx);
        buffer.send(text("kept")).expect("room");
        buffer.flush();
        let (tx, mut rx) = oneshot::channel();
        assert_eq!(buffer.poll(tx), None);
        assert_eq!(rx.try_recv(), Ok(PollAnswer::Messages(vec!["kept".into()])));
    }

    #[test]
    fn the_buffer_is_bounded_in_frames_and_bytes_and_skips_binary() {
        let mut buffer = buffer(2, 100);
        buffer.send(WireFrame::Binary(Bytes::from_static(b"\x00"))).expect("dropped, not refused");
        assert_eq!(buffer.room(), 2);
        buffer.send(text(&"x".repeat(60))).expect("room");
        assert_eq!(buffer.send(text(&"x".repeat(60))), Err(QueueError::Full), "over the bytes");
        buffer.send(text("y")).expect("room");
        assert_eq!(buffer.send(text("z")), Err(QueueError::Full), "over the frames");
    }

    #[test]
    fn a_closing_session_hands_out_what_is_buffered_then_is_gone() {
        let mut buffer = buffer(10, 1_000);
        buffer.send(text("last")).expect("room");
        buffer.close();
        assert_eq!(buffer.send(text("more")), Err(QueueError::Closed));
        let (tx, mut rx) = oneshot::channel();
        buffer.poll(tx);
        assert_eq!(rx.try_recv(), Ok(PollAnswer::Messages(vec!["last".into()])));
        let (tx, mut rx) = oneshot::channel();
        buffer.poll(tx);
        assert_eq!(rx.try_recv(), Ok(PollAnswer::Gone));

        let mut aborted = self::buffer(10, 1_000);
        aborted.send(text("unread")).expect("room");
        aborted.abort();
        let (tx, mut rx) = oneshot::channel();
        aborted.poll(tx);
        assert_eq!(rx.try_recv(), Ok(PollAnswer::Gone), "an aborted session's frames are dropped");
    }

    #[test]
    fn dropping_the_buffer_answers_the_poll_and_forgets_the_session() {
        let forgotten = Rc::new(Cell::new(false));
        let flag = Rc::clone(&forgotten);
        let mut buffer = PollBuffer::new(
            QueueLimits { frames: 4, bytes: 100 },
            Duration::from_secs(1),
            Box::new(move || flag.set(true)),
        );
        let (tx, mut rx) = oneshot::channel();
        buffer.poll(tx).expect("waits");
        drop(buffer);
        assert_eq!(rx.try_recv(), Ok(PollAnswer::Gone));
        assert!(forgotten.get());
    }
}
