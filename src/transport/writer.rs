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

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use actix_ws::{CloseCode, CloseReason, Message};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

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

/// The sending side, owned by the socket's [`Link`](super::connection::Link).
pub struct Outbound {
    tx: mpsc::Sender<Item>,
    abort: Option<oneshot::Sender<CloseReason>>,
    /// Bytes queued and not yet written, shared with the writer task (same thread).
    queued_bytes: Rc<Cell<usize>>,
    max_bytes: usize,
}

impl Outbound {
    /// Starts the writer task for `session` within `limits`.
    pub fn start(session: WsWriter, limits: QueueLimits) -> Self {
        let (tx, rx) = mpsc::channel(limits.frames.max(1));
        let (abort_tx, abort_rx) = oneshot::channel();
        let queued_bytes = Rc::new(Cell::new(0));
        actix_web::rt::spawn(drain(session, rx, abort_rx, Rc::clone(&queued_bytes)));
        Outbound { tx, abort: Some(abort_tx), queued_bytes, max_bytes: limits.bytes }
    }

    /// Queues a frame without waiting.
    pub fn send(&self, frame: WireFrame) -> Result<(), QueueError> {
        self.try_send(Item::Frame(frame))
    }

    /// How many more frames the queue can take right now.
    pub fn room(&self) -> usize {
        self.tx.capacity()
    }

    /// How many more bytes the queue can take right now.
    pub fn room_bytes(&self) -> usize {
        self.max_bytes.saturating_sub(self.queued_bytes.get())
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.get()
    }

    /// Queues a pong for a client ping.
    pub fn pong(&self, data: Bytes) -> Result<(), QueueError> {
        self.try_send(Item::Pong(data))
    }

    fn try_send(&self, item: Item) -> Result<(), QueueError> {
        let size = item.size();
        let queued = self.queued_bytes.get();
        if queued > 0 && queued.saturating_add(size) > self.max_bytes {
            return Err(QueueError::Full);
        }
        self.tx.try_send(item).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => QueueError::Full,
            mpsc::error::TrySendError::Closed(_) => QueueError::Closed,
        })?;
        self.queued_bytes.set(queued.saturating_add(size));
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
            let _ = self.tx.try_send(Item::Close(reason));
        }
    }

    /// Closes after the frames already queued; a full queue is skipped so the close still goes out.
    pub fn close(&mut self, code: CloseCode, description: &str) {
        let reason = CloseReason { code, description: Some(description.to_owned()) };
        if let Err(mpsc::error::TrySendError::Full(Item::Close(reason))) = self.tx.try_send(Item::Close(reason))
            && let Some(abort) = self.abort.take()
        {
            let _ = abort.send(reason);
        }
    }
}

/// Frames already waiting when a write starts go out with it, up to this many bytes: a burst of
/// replies or broadcasts costs one system call instead of one per frame.
const BATCH_BYTES: usize = 64 * 1024;

async fn drain(
    mut session: WsWriter,
    mut rx: mpsc::Receiver<Item>,
    abort: oneshot::Receiver<CloseReason>,
    queued_bytes: Rc<Cell<usize>>,
) {
    // Dropping the sender without aborting (the actor stopped) must not cut the queue short.
    let mut abort = Some(abort);
    loop {
        let first = tokio::select! {
            biased;
            reason = wait_abort(&mut abort) => {
                drop(rx);
                return close(session, reason).await;
            }
            item = rx.recv() => item,
        };
        let mut batch_bytes = 0;
        let Ok(then) = take_batch(&mut session, &mut rx, first, &mut batch_bytes) else { return };
        match write(&mut abort, session.flush()).await {
            Written::Ok => queued_bytes.set(queued_bytes.get().saturating_sub(batch_bytes)),
            Written::Gone => return,
            Written::Aborted(reason) => {
                // What the client has not read goes now; only the close frame is still tried.
                drop(rx);
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
fn take_batch(
    session: &mut WsWriter,
    rx: &mut mpsc::Receiver<Item>,
    first: Option<Item>,
    taken: &mut usize,
) -> Result<Then, Closed> {
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
            Ok(item) => Some(item),
            Err(mpsc::error::TryRecvError::Empty) => return Ok(Then::More),
            Err(mpsc::error::TryRecvError::Disconnected) => None,
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
