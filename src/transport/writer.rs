//! The bounded outbound queue of one socket and the task that drains it into the WebSocket.
//!
//! The socket actor never awaits a write: it `try_send`s into this queue. A client that does
//! not read fills the queue, and the socket is then closed as too slow instead of buffering
//! without bound or slowing the broadcasts to everyone else.

use std::time::Duration;

use actix_ws::{CloseCode, CloseReason, Message};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::ws_io::{Closed, WsWriter};
use crate::protocol::WireFrame;

/// How long a close frame may wait behind frames a slow client has not read yet.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

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

/// The sending side, owned by the socket actor.
pub struct Outbound {
    tx: mpsc::Sender<Item>,
    abort: Option<oneshot::Sender<CloseReason>>,
}

impl Outbound {
    /// Starts the writer task for `session` with room for `capacity` queued frames.
    pub fn start(session: WsWriter, capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity);
        let (abort_tx, abort_rx) = oneshot::channel();
        actix_web::rt::spawn(drain(session, rx, abort_rx));
        Outbound { tx, abort: Some(abort_tx) }
    }

    /// Queues a frame without waiting.
    pub fn send(&self, frame: WireFrame) -> Result<(), QueueError> {
        self.try_send(Item::Frame(frame))
    }

    /// How many more frames the queue can take right now.
    pub fn room(&self) -> usize {
        self.tx.capacity()
    }

    /// Queues a pong for a client ping.
    pub fn pong(&self, data: Bytes) -> Result<(), QueueError> {
        self.try_send(Item::Pong(data))
    }

    fn try_send(&self, item: Item) -> Result<(), QueueError> {
        self.tx.try_send(item).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => QueueError::Full,
            mpsc::error::TrySendError::Closed(_) => QueueError::Closed,
        })
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

async fn drain(mut session: WsWriter, mut rx: mpsc::Receiver<Item>, abort: oneshot::Receiver<CloseReason>) {
    // Dropping the sender without aborting (the actor stopped) must not cut the queue short.
    let mut abort = Some(abort);
    loop {
        let first = tokio::select! {
            biased;
            reason = wait_abort(&mut abort) => return close(session, reason).await,
            item = rx.recv() => item,
        };
        let Ok(then) = take_batch(&mut session, &mut rx, first) else { return };
        match write(&mut abort, session.flush()).await {
            Written::Ok => {}
            Written::Gone => return,
            Written::Aborted(reason) => return close(session, reason).await,
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

/// Encodes `first` and whatever else is already queued (up to [`BATCH_BYTES`]) for one write.
fn take_batch(session: &mut WsWriter, rx: &mut mpsc::Receiver<Item>, first: Option<Item>) -> Result<Then, Closed> {
    let mut next = first;
    loop {
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
