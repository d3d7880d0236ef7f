//! The bounded outbound queue of one socket and the task that drains it into the WebSocket.
//!
//! The socket actor never awaits a write: it `try_send`s into this queue. A client that does
//! not read fills the queue, and the socket is then closed as too slow instead of buffering
//! without bound or slowing the broadcasts to everyone else.
//!
//! The queue is bounded twice: in frames, and in bytes. Frames alone did not bound memory: a
//! thousand replies of 30 MB each fit in a thousand frames. Bytes are counted from the moment a
//! frame is queued until its write has finished, so the bound covers the batch being written as
//! well as what waits behind it. A slow consumer is closed by aborting the queue: what it has
//! not read is dropped at once, and only the close frame is still tried.
//!
//! The queue is a [`VecDeque`] shared with the writer task, which runs on the socket's own
//! thread, rather than a tokio channel: a bounded tokio channel allocates a block of 32 slots
//! when it is made (about 1.6 KB per socket, most of an idle socket's queue), and an unbounded
//! local channel keeps the capacity of its largest burst for good. This one holds nothing while
//! it is empty and gives a burst's memory back once the burst is written.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use actix_ws::{CloseCode, CloseReason, Message};
use bytes::Bytes;
use tokio::sync::oneshot;

use super::ws_io::{Closed, WsWriter};
use crate::protocol::WireFrame;

/// How long a close frame may wait behind frames a slow client has not read yet.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How much one socket may have queued and not yet written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Frames waiting to be written.
    pub frames: usize,
    /// Bytes of those frames plus the batch being written. One frame larger than this is still
    /// taken when nothing else is queued, so a large reply to a reading client goes out.
    pub bytes: usize,
}

enum Item {
    Frame(WireFrame),
    Pong(Bytes),
    Close(CloseReason),
}

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum QueueError {
    /// The queue is full: the client is not keeping up.
    Full,
    /// The writer has stopped (the connection is gone or closing).
    Closed,
}

impl Item {
    /// The bytes this item holds while queued.
    fn size(&self) -> usize {
        match self {
            Item::Frame(WireFrame::Text(text)) => text.len(),
            Item::Frame(WireFrame::Binary(data)) | Item::Pong(data) => data.len(),
            Item::Close(_) => 0,
        }
    }
}

/// What the socket and its writer task share (both on the socket's thread; no borrow is held
/// across an await).
#[derive(Default)]
struct Shared {
    items: VecDeque<Item>,
    /// Bytes queued and not yet written: those in `items` plus the batch being written.
    bytes: usize,
    /// The writer task, when it waits for an item.
    waiting: Option<Waker>,
    /// The socket dropped its [`Outbound`]: what is queued still goes out, then the writer ends.
    sender_gone: bool,
    /// The writer task ended: nothing more can be written.
    writer_gone: bool,
}

impl Shared {
    fn wake(&mut self) {
        if let Some(waker) = self.waiting.take() {
            waker.wake();
        }
    }
}

/// The sending side, owned by the socket's [`Link`](super::connection::Link).
pub struct Outbound {
    shared: Rc<RefCell<Shared>>,
    abort: Option<oneshot::Sender<CloseReason>>,
    max_frames: usize,
    max_bytes: usize,
}

impl Outbound {
    /// Starts the writer task for `session` within `limits`.
    pub fn start(session: WsWriter, limits: QueueLimits) -> Self {
        let (outbound, rx, abort) = Outbound::queue(limits);
        actix_web::rt::spawn(drain(session, rx, abort));
        outbound
    }

    /// The queue's two ends and the abort signal, before a writer task takes the receiving end.
    fn queue(limits: QueueLimits) -> (Self, Receiver, oneshot::Receiver<CloseReason>) {
        let shared = Rc::new(RefCell::new(Shared::default()));
        let (abort_tx, abort_rx) = oneshot::channel();
        let rx = Receiver { shared: Rc::clone(&shared) };
        let outbound =
            Outbound { shared, abort: Some(abort_tx), max_frames: limits.frames.max(1), max_bytes: limits.bytes };
        (outbound, rx, abort_rx)
    }

    /// Queues a frame without waiting.
    pub fn send(&self, frame: WireFrame) -> Result<(), QueueError> {
        self.try_send(Item::Frame(frame))
    }

    /// How many more frames the queue can take right now.
    pub fn room(&self) -> usize {
        self.max_frames.saturating_sub(self.shared.borrow().items.len())
    }

    /// How many more bytes the queue can take right now.
    pub fn room_bytes(&self) -> usize {
        self.max_bytes.saturating_sub(self.queued_bytes())
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.shared.borrow().bytes
    }

    /// Queues a pong for a client ping.
    pub fn pong(&self, data: Bytes) -> Result<(), QueueError> {
        self.try_send(Item::Pong(data))
    }

    fn try_send(&self, item: Item) -> Result<(), QueueError> {
        self.push(item).map_err(|(error, _)| error)
    }

    /// Queues `item`, or hands it back with the reason it was not queued.
    fn push(&self, item: Item) -> Result<(), (QueueError, Item)> {
        let mut shared = self.shared.borrow_mut();
        if shared.writer_gone {
            return Err((QueueError::Closed, item));
        }
        let size = item.size();
        let full_in_bytes = shared.bytes > 0 && shared.bytes.saturating_add(size) > self.max_bytes;
        if full_in_bytes || shared.items.len() >= self.max_frames {
            return Err((QueueError::Full, item));
        }
        shared.items.push_back(item);
        shared.bytes = shared.bytes.saturating_add(size);
        shared.wake();
        Ok(())
    }

    /// Drops everything queued and closes: for a client that does not read, whose queue
    /// should not be kept alive while its close frame waits.
    pub fn abort(&mut self, code: CloseCode, description: &str) {
        let reason = CloseReason { code, description: Some(description.to_owned()) };
        if let Some(abort) = self.abort.take()
            && let Err(reason) = abort.send(reason)
        {
            // The writer is gone already; queue the close in case it is only between batches.
            let _ = self.try_send(Item::Close(reason));
        }
    }

    /// Closes after the frames already queued; a full queue is skipped so the close still goes out.
    pub fn close(&mut self, code: CloseCode, description: &str) {
        let reason = CloseReason { code, description: Some(description.to_owned()) };
        if let Err((QueueError::Full, Item::Close(reason))) = self.push(Item::Close(reason))
            && let Some(abort) = self.abort.take()
        {
            let _ = abort.send(reason);
        }
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        let mut shared = self.shared.borrow_mut();
        shared.sender_gone = true;
        shared.wake();
    }
}

/// The writer task's side of the queue.
struct Receiver {
    shared: Rc<RefCell<Shared>>,
}

/// What the queue had for the writer.
enum Next {
    Item(Item),
    /// Nothing queued right now.
    Empty,
    /// Nothing queued and the socket let go of the queue: nothing more will come.
    Ended,
}

impl Receiver {
    /// The next item, waiting for one; `None` once the queue is empty and the socket let go.
    async fn recv(&self) -> Option<Item> {
        poll_fn(|cx| match self.try_recv() {
            Next::Item(item) => Poll::Ready(Some(item)),
            Next::Ended => Poll::Ready(None),
            Next::Empty => {
                self.shared.borrow_mut().waiting = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    fn try_recv(&self) -> Next {
        let mut shared = self.shared.borrow_mut();
        match shared.items.pop_front() {
            Some(item) => Next::Item(item),
            None if shared.sender_gone => Next::Ended,
            None => Next::Empty,
        }
    }

    /// Counts `bytes` written, and gives the queue's memory back once it is empty, so an idle
    /// socket holds none of its last burst.
    fn written(&self, bytes: usize) {
        let mut shared = self.shared.borrow_mut();
        shared.bytes = shared.bytes.saturating_sub(bytes);
        if shared.items.is_empty() && shared.items.capacity() > 0 {
            shared.items = VecDeque::new();
        }
    }

    /// Drops what the client has not read yet and takes no more (the queue was aborted): the
    /// socket hears `Closed` from then on, as if the writer were already gone.
    fn discard(&self) {
        let mut shared = self.shared.borrow_mut();
        shared.writer_gone = true;
        shared.items = VecDeque::new();
        shared.bytes = 0;
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut shared = self.shared.borrow_mut();
        shared.writer_gone = true;
        shared.items = VecDeque::new();
    }
}

/// Frames already waiting when a write starts go out with it, up to this many bytes: a burst of
/// replies or broadcasts costs one system call instead of one per frame.
const BATCH_BYTES: usize = 64 * 1024;

async fn drain(mut session: WsWriter, rx: Receiver, abort: oneshot::Receiver<CloseReason>) {
    // Dropping the sender without aborting (the actor stopped) must not cut the queue short.
    let mut abort = Some(abort);
    loop {
        let first = tokio::select! {
            biased;
            reason = wait_abort(&mut abort) => {
                rx.discard();
                return close(session, reason).await;
            }
            item = rx.recv() => item,
        };
        let mut batch_bytes = 0;
        let Ok(then) = take_batch(&mut session, &rx, first, &mut batch_bytes) else { return };
        match write(&mut abort, session.flush()).await {
            Written::Ok => rx.written(batch_bytes),
            Written::Gone => return,
            Written::Aborted(reason) => {
                // What the client has not read goes now; only the close frame is still tried.
                rx.discard();
                return close(session, reason).await;
            }
        }
        match then {
            Then::More => {}
            // The actor is gone without closing: the peer went away first.
            Then::Stop => return,
            Then::Close(reason) => return close(session, reason).await,
        }
    }
}

/// Sends the close frame, giving up after [`CLOSE_WRITE_TIMEOUT`] on a client that reads nothing.
async fn close(session: WsWriter, reason: CloseReason) {
    let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, session.close(Some(reason))).await;
}

/// What the writer does once the batch is written.
enum Then {
    More,
    Stop,
    Close(CloseReason),
}

/// Encodes `first` and whatever else is already queued (up to [`BATCH_BYTES`]) for one write,
/// adding the queued sizes of what it took to `taken`.
fn take_batch(session: &mut WsWriter, rx: &Receiver, first: Option<Item>, taken: &mut usize) -> Result<Then, Closed> {
    let mut next = first;
    loop {
        if let Some(item) = &next {
            *taken += item.size();
        }
        match next {
            None => return Ok(Then::Stop),
            Some(Item::Close(reason)) => return Ok(Then::Close(reason)),
            Some(Item::Frame(WireFrame::Text(text))) => session.queue(Message::Text(text))?,
            Some(Item::Frame(WireFrame::Binary(data))) => session.queue(Message::Binary(data))?,
            Some(Item::Pong(data)) => session.queue(Message::Pong(data))?,
        }
        if session.buffered() >= BATCH_BYTES {
            return Ok(Then::More);
        }
        next = match rx.try_recv() {
            Next::Item(item) => Some(item),
            Next::Empty => return Ok(Then::More),
            Next::Ended => None,
        };
    }
}

/// Resolves with the abort reason; never resolves once the sender is gone without one.
async fn wait_abort(abort: &mut Option<oneshot::Receiver<CloseReason>>) -> CloseReason {
    if let Some(rx) = abort.as_mut() {
        if let Ok(reason) = rx.await {
            return reason;
        }
        *abort = None;
    }
    std::future::pending().await
}

enum Written {
    Ok,
    Gone,
    Aborted(CloseReason),
}

/// Waits for one write, unless an abort arrives first (a write can block on a client that stopped reading).
async fn write<F>(abort: &mut Option<oneshot::Receiver<CloseReason>>, write: F) -> Written
where
    F: std::future::Future<Output = Result<(), Closed>>,
{
    tokio::select! {
        biased;
        reason = wait_abort(abort) => Written::Aborted(reason),
        result = write => if result.is_ok() { Written::Ok } else { Written::Gone },
    }
}

#[cfg(test)]
mod tests {
    use bytestring::ByteString;

    use super::*;

    fn text(n: usize) -> WireFrame {
        WireFrame::Text(ByteString::from("x".repeat(n)))
    }

    fn limits(frames: usize, bytes: usize) -> QueueLimits {
        QueueLimits { frames, bytes }
    }

    #[test]
    fn the_queue_is_bounded_in_frames_and_in_bytes() {
        let (outbound, rx, _abort) = Outbound::queue(limits(2, 1_000));
        outbound.send(text(10)).expect("room");
        outbound.send(text(10)).expect("room");
        assert_eq!(outbound.room(), 0);
        assert_eq!(outbound.send(text(1)), Err(QueueError::Full), "two frames fill it");
        assert!(matches!(rx.try_recv(), Next::Item(_)));
        assert_eq!(outbound.room(), 1, "a frame taken by the writer frees its slot");
        assert_eq!(outbound.queued_bytes(), 20, "its bytes count until written");
        rx.written(10);
        assert_eq!(outbound.queued_bytes(), 10);

        let (outbound, _rx, _abort) = Outbound::queue(limits(100, 100));
        outbound.send(text(500)).expect("one frame over the byte bound goes when nothing waits");
        assert_eq!(outbound.send(text(1)), Err(QueueError::Full));
        assert_eq!(outbound.room_bytes(), 0);
    }

    #[test]
    fn an_emptied_queue_gives_its_memory_back() {
        let (outbound, rx, _abort) = Outbound::queue(limits(1_000, 1 << 20));
        for _ in 0..500 {
            outbound.send(text(1)).expect("room");
        }
        let mut taken = 0;
        while let Next::Item(item) = rx.try_recv() {
            taken += item.size();
        }
        assert!(rx.shared.borrow().items.capacity() >= 500);
        rx.written(taken);
        assert_eq!(rx.shared.borrow().items.capacity(), 0, "an idle socket holds none of its burst");
        assert_eq!(outbound.queued_bytes(), 0);
    }

    #[test]
    fn the_writer_drains_what_was_queued_before_the_socket_let_go() {
        let (outbound, rx, _abort) = Outbound::queue(limits(10, 1_000));
        outbound.send(text(3)).expect("room");
        drop(outbound);
        assert!(matches!(rx.try_recv(), Next::Item(_)), "queued frames still go out");
        assert!(matches!(rx.try_recv(), Next::Ended));
    }

    #[test]
    fn a_gone_writer_refuses_frames_and_a_full_queue_still_closes() {
        let (mut outbound, rx, mut abort) = Outbound::queue(limits(1, 1_000));
        outbound.send(text(1)).expect("room");
        outbound.close(CloseCode::Normal, "bye");
        let reason = abort.try_recv().expect("a full queue closes through the abort signal");
        assert_eq!(reason.description.as_deref(), Some("bye"));
        drop(rx);
        assert_eq!(outbound.send(text(1)), Err(QueueError::Closed));
    }

    #[test]
    fn an_aborted_queue_drops_what_waits_and_takes_nothing_more() {
        let (outbound, rx, _abort) = Outbound::queue(limits(10, 1_000));
        outbound.send(text(3)).expect("room");
        rx.discard();
        assert!(matches!(rx.try_recv(), Next::Empty), "unread frames are dropped at once");
        assert_eq!(outbound.queued_bytes(), 0);
        assert_eq!(
            outbound.send(text(1)),
            Err(QueueError::Closed),
            "the socket stops as it did with a dropped receiver"
        );
    }

    #[actix_web::test]
    async fn the_writer_wakes_for_a_frame_sent_while_it_waits() {
        let (outbound, rx, _abort) = Outbound::queue(limits(10, 1_000));
        let waiting = actix_web::rt::spawn(async move { rx.recv().await.map(|item| item.size()) });
        actix_web::rt::task::yield_now().await;
        outbound.send(text(7)).expect("room");
        assert_eq!(waiting.await.expect("writer task"), Some(7));
    }
}
