//! Messaging (seeds 003/004): sending, receipts, pull and history over each user's log.
//!
//! Every user has one log; each message the user sends or receives takes the log's next
//! `signal_offset`, and each conversation has its own `user_offset` sequence. A message is
//! stored once (by the [`writer`]'s group commit), acknowledged to its sender with a
//! `MessagePeerAckSignal`, then published on `user:<eid>` of both users. This module owns the
//! rules; SQL lives in `store::messages`, and the Phoenix side in `channels::user`. Status
//! signals (typing, recording, ...) go through [`signals`] and are never stored.

pub mod config;
mod error;
pub mod log;
pub mod signals;
pub mod wire;
mod writer;

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

pub use config::MessagingConfig;
pub use error::MessagingError;
use log::{Append, Receipt, SealedAppend, Write, Written};
use wire::{SIGNAL_REQUEST_PULL, ack_state, log_message};

use crate::accounts::MessagePolicy;
use crate::clock::Clock;
use crate::pb;
use crate::pubsub::{PubSub, SubscriberId};
use crate::store::messages::{self as queries, ConversationRow, MessageRow};
use crate::store::{Snapshot, Store};
use crate::task::Worker;

/// The event that carries a `Message` to a device.
pub const EVENT_MESSAGE: &str = crate::pubsub::event::MESSAGE;
/// The event that carries a delivery or read `MessagePeerAckSignal`.
pub const EVENT_RECEIPT: &str = crate::pubsub::event::RECEIPT;

/// Who is asking: a user, the device it speaks for, and its socket.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The authenticated user.
    pub eid: String,
    /// The device (`connection_resource_id`), if the socket named one.
    pub device: Option<String>,
    /// The socket, which does not get its own writes back as events.
    pub connection: SubscriberId,
    /// The node serving the socket, reported in the ack's `to`.
    pub node: String,
}

impl Origin {
    /// The key of this device's cursor (`""` for a socket without a device).
    pub fn device_key(&self) -> &str {
        self.device.as_deref().unwrap_or("")
    }
}

/// A device's view of its log when it joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceState {
    /// The log's last signal_offset.
    pub last_offset: i64,
    /// How far this device has acknowledged it.
    pub acked_offset: i64,
}

/// A client's message that passed [`Messaging::prepare`]: the only thing [`Messaging::send`]
/// stores, so no path can write a message that skipped the checks.
#[derive(Debug)]
pub struct Prepared(pb::Message);

/// What [`Messaging::send`] resolves to once the message is stored.
#[derive(Debug)]
pub struct Sent {
    /// The sender's ack, with the peer offsets.
    pub ack: pb::MessagePeerAckSignal,
    /// Where the message sits in the sender's own log; the sending socket never gets it back
    /// live, so its inbox needs to know the offset is taken.
    pub sender_offset: i64,
}

/// A run of a user's log, oldest first, with consecutive offsets.
#[derive(Debug, Clone)]
pub struct LogPage {
    /// `(signal_offset, message)` pairs.
    pub entries: Vec<(i64, pb::Message)>,
    /// The log's last signal_offset when the page was read.
    pub last_offset: i64,
    /// Whether the log goes on after the page (it was cut by `limit` or by bytes).
    pub more: bool,
}

/// A run of one conversation, newest first, with consecutive user_offsets.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// The messages.
    pub messages: Vec<pb::Message>,
    /// Whether older messages exist (the page was cut by `limit` or by bytes).
    pub more: bool,
}

/// A [`LogPage`] as `pull` answers it (and the admin API reads a log): the messages, the
/// log's end, and whether the log goes on after them.
#[derive(serde::Serialize)]
pub struct PullReply<'a> {
    messages: Vec<&'a pb::Message>,
    last_offset: i64,
    more: bool,
}

impl LogPage {
    /// The page in `pull`'s reply shape.
    pub fn reply(&self) -> PullReply<'_> {
        PullReply {
            messages: self.entries.iter().map(|(_, m)| m).collect(),
            last_offset: self.last_offset,
            more: self.more,
        }
    }
}

/// A [`HistoryPage`] as `history` answers it: the messages, and whether older ones exist.
#[derive(serde::Serialize)]
pub struct HistoryReply<'a> {
    messages: &'a [pb::Message],
    more: bool,
}

impl HistoryPage {
    /// The page in `history`'s reply shape.
    pub fn reply(&self) -> HistoryReply<'_> {
        HistoryReply { messages: &self.messages, more: self.more }
    }
}

/// The messaging service: cheap to clone, shared by every socket.
#[derive(Clone)]
pub struct Messaging {
    store: Store,
    jobs: mpsc::Sender<writer::Job>,
    writer: Arc<Worker>,
    config: Arc<MessagingConfig>,
    policy: MessagePolicy,
    clock: Arc<dyn Clock>,
}

impl Messaging {
    /// Starts the log writer on the current runtime. Messages are stored only where `policy`
    /// lets them go; timestamps the server sets are read from `clock`.
    pub fn start(
        store: Store,
        pubsub: PubSub,
        config: MessagingConfig,
        policy: MessagePolicy,
        clock: Arc<dyn Clock>,
    ) -> Messaging {
        let (jobs, writer) = writer::start(store.clone(), pubsub, config.max_batch, Arc::clone(&clock));
        Messaging { store, jobs, writer: Arc::new(writer), config: Arc::new(config), policy, clock }
    }

    /// Stops the log writer once it has committed (and announced) every queued write; later
    /// sends and receipts are refused as unavailable. Shutdown calls it after the sockets close.
    pub async fn stop(&self) {
        self.writer.stop().await;
    }

    /// Whether the log writer still runs.
    pub fn writer_running(&self) -> bool {
        self.writer.running()
    }

    /// The clock the server's timestamps come from.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The limits in force.
    pub fn config(&self) -> &MessagingConfig {
        &self.config
    }

    /// Checks a client's message and fills in what the server decides (`from`, `timestamp`).
    pub fn prepare(&self, origin: &Origin, mut message: pb::Message) -> Result<Prepared, MessagingError> {
        if message.id.is_empty() {
            return Err(MessagingError::invalid(format!("id must be 1..={} bytes", wire::MAX_ID_BYTES)));
        }
        wire::check_text("id", &message.id, wire::MAX_ID_BYTES, true)?;
        wire::check_identity("from", message.from.as_ref())?;
        wire::check_identity("to", message.to.as_ref())?;
        wire::check_text("encryption_type", &message.encryption_type, wire::MAX_ENCRYPTION_TYPE_BYTES, true)?;
        let to = match &message.to {
            Some(to) if !to.eid.is_empty() => to.eid.clone(),
            _ => return Err(MessagingError::invalid("to.eid is required")),
        };
        if to == origin.eid {
            return Err(MessagingError::invalid("cannot send a message to yourself"));
        }
        if message.from.as_ref().is_some_and(|from| !from.eid.is_empty() && from.eid != origin.eid) {
            return Err(MessagingError::ForgedSender);
        }
        if message.payload.is_empty() && message.encrypted.is_empty() {
            return Err(MessagingError::invalid("a message needs a payload or encrypted content"));
        }
        if !message.encrypted.is_empty() && message.encryption_type.is_empty() {
            return Err(MessagingError::invalid("encrypted content needs an encryption_type"));
        }
        let size =
            message.payload.len() + message.encrypted.len() + message.signature.len() + message.encryption_type.len();
        if size > self.config.max_payload_bytes {
            return Err(MessagingError::TooLarge(self.config.max_payload_bytes));
        }
        if message.timestamp < 0 {
            return Err(MessagingError::invalid("timestamp must not be negative"));
        }
        if message.timestamp == 0 {
            message.timestamp = self.clock.now_millis();
        }
        message.from = Some(wire::identity(&origin.eid, origin.device.as_deref()));
        message.to = Some(wire::identity(&to, None));
        Ok(Prepared(message))
    }

    /// Queues a write for the log writer right away (so one socket's writes keep their order)
    /// and returns the future of its outcome.
    fn submit(
        &self,
        write: Write,
        origin: Option<SubscriberId>,
    ) -> impl Future<Output = Result<Written, MessagingError>> + 'static {
        let (reply, answer) = oneshot::channel();
        let queued = self.jobs.try_send(writer::Job { write, origin, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => MessagingError::Busy,
            mpsc::error::TrySendError::Closed(_) => MessagingError::Unavailable,
        });
        async move {
            queued?;
            answer.await.map_err(|_| MessagingError::Unavailable)?
        }
    }

    /// Stores a prepared message and resolves to the sender's `MessagePeerAckSignal` once it is
    /// durably stored. A retry of a stored `(sender, id)` gets the original offsets back. The
    /// message is queued before this returns: sends from one socket are stored in call order.
    pub fn send(
        &self,
        origin: &Origin,
        Prepared(message): Prepared,
    ) -> impl Future<Output = Result<Sent, MessagingError>> + 'static {
        let append =
            Append { sender: origin.eid.clone(), sender_device: origin.device.clone(), policy: self.policy, message };
        let written = self.submit(Write::Append(append), Some(origin.connection));
        let (origin, clock) = (origin.clone(), Arc::clone(&self.clock));
        async move {
            let Written::Appended(appended) = written.await? else {
                return Err(MessagingError::Unavailable);
            };
            let row = &appended.row;
            let ack = pb::MessagePeerAckSignal {
                to: Some(pb::Identity {
                    eid: origin.eid.clone(),
                    connection_resource_id: origin.device.clone(),
                    node: Some(origin.node.clone()),
                }),
                from: Some(wire::identity(&row.receiver, None)),
                message_id: row.client_id.clone(),
                method: wire::METHOD_SENT,
                timestamp: clock.now_millis(),
                status_code: 200,
                peer: Some(wire::peer(&row.sender, &row.receiver, row.user_offset, appended.peer_received)),
            };
            Ok(Sent { ack, sender_offset: row.sender_offset })
        }
    }

    /// Records that the origin device has `received` (or `read`) its log up to `up_to`;
    /// resolves to the device's cursor. Queued before this returns, like [`Messaging::send`].
    pub fn receipt(
        &self,
        origin: &Origin,
        up_to: i64,
        read: bool,
    ) -> impl Future<Output = Result<i64, MessagingError>> + 'static {
        let receipt = Receipt { user: origin.eid.clone(), device: origin.device_key().to_owned(), up_to, read };
        let written = (up_to >= 0).then(|| self.submit(Write::Receipt(receipt), Some(origin.connection)));
        async move {
            let Some(written) = written else {
                return Err(MessagingError::invalid("up_to must not be negative"));
            };
            match written.await? {
                Written::Receipt(done) => Ok(done.cursor),
                Written::Appended(_) | Written::Sealed(_) => Err(MessagingError::Unavailable),
            }
        }
    }
    /// Stores a sealed message for `device` of `receiver` and resolves to its signal_offset once
    /// it is durably stored (`UnknownDevice` when that device is not registered). Queued before
    /// this returns, like [`Messaging::send`]. Nothing about the sender is passed or kept.
    pub fn send_sealed(
        &self,
        receiver: &str,
        device: i64,
        body: Vec<u8>,
    ) -> impl Future<Output = Result<i64, MessagingError>> + 'static {
        let sealed = SealedAppend { receiver: receiver.to_owned(), device, body };
        let written = self.submit(Write::Sealed(sealed), None);
        async move {
            match written.await? {
                Written::Sealed(stored) => Ok(stored.offset),
                Written::Appended(_) | Written::Receipt(_) => Err(MessagingError::Unavailable),
            }
        }
    }

    /// Up to `limit` sealed messages for `device` of `eid` after signal_offset `after`, oldest
    /// first, as `(offset, body)`.
    pub async fn sealed_after(
        &self,
        eid: &str,
        device: i64,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Vec<u8>)>, MessagingError> {
        let eid = eid.to_owned();
        let rows =
            self.store.read(move |snap| crate::store::keys::sealed_after(snap, &eid, device, after, limit)).await?;
        Ok(rows)
    }

    /// Moves the cursor of `device_key` of `eid` up to `up_to` (never back); resolves to the cursor.
    /// For devices that acknowledge their own messages one by one (the signal endpoint's), which
    /// move no conversation's receipts.
    pub async fn advance_cursor(&self, eid: &str, device_key: &str, up_to: i64) -> Result<i64, MessagingError> {
        let (eid, device_key, now) = (eid.to_owned(), device_key.to_owned(), self.clock.now_millis());
        let cursor = self
            .store
            .write(move |conn| crate::store::keys::advance_cursor(conn, &eid, &device_key, up_to, now))
            .await?;
        Ok(cursor)
    }

    /// The log's end and this device's cursor, read at one moment.
    pub async fn device_state(&self, eid: &str, device: &str) -> Result<DeviceState, MessagingError> {
        let (eid, device) = (eid.to_owned(), device.to_owned());
        let state = self
            .store
            .read(move |snap| {
                let log = queries::log_state(snap, &eid)?;
                let acked = queries::cursor(snap, &eid, &device)?;
                Ok(DeviceState { last_offset: log.last_offset, acked_offset: acked })
            })
            .await?;
        Ok(state)
    }

    /// Up to `limit` entries of `eid`'s log after `after`, as `signal_request` delivers them,
    /// within the page byte budget; the page, its `last_offset` and its ack states are read
    /// from one snapshot, so the page is a run of consecutive offsets.
    pub async fn read_log(
        &self,
        eid: &str,
        after: i64,
        limit: i64,
        signal_request: i32,
    ) -> Result<LogPage, MessagingError> {
        let eid = eid.to_owned();
        let budget = self.config.max_page_bytes;
        let page = self
            .store
            .read(move |snap| {
                let last_offset = queries::log_state(snap, &eid)?.last_offset;
                let rows = queries::log_after(snap, &eid, after, limit, byte_hint(budget))?;
                // Sealed messages sit in the same log: the page merges the first `limit` of each
                // by offset. Past the last message read, more messages may follow that this read
                // did not fetch, so a sealed one beyond it waits for the next page.
                let sealed = crate::store::keys::sealed_in_log(snap, &eid, after, limit)?;
                let read_up_to = rows.last().map(|(offset, _)| *offset);
                let conversations = conversations_for(snap, &eid, rows.iter().map(|(_, r)| r))?;
                let mut fit = Budget::new(budget);
                let mut entries = Vec::with_capacity(rows.len() + sealed.len());
                let (mut rows, mut sealed) = (rows.iter().peekable(), sealed.iter().peekable());
                while entries.len() < usize::try_from(limit).unwrap_or(0) {
                    let next_row = rows.peek().map(|(offset, _)| *offset);
                    let sealed_next = sealed.next_if(|row| {
                        next_row.is_none_or(|offset| row.receiver_offset < offset)
                            && read_up_to.is_none_or(|end| row.receiver_offset < end)
                    });
                    let (offset, message) = if let Some(row) = sealed_next {
                        let offset = row.receiver_offset;
                        (
                            offset,
                            wire::sealed_message(&eid, row.device_id, &row.body, offset, row.stored_at, signal_request),
                        )
                    } else if let Some((offset, row)) = rows.next() {
                        match log_message(row, &eid, *offset, state_of(row, &conversations), signal_request) {
                            Ok(message) => (*offset, message),
                            // The read itself went fine; the row is what the client cannot be sent.
                            Err(e) => return Ok(Err(e)),
                        }
                    } else {
                        break;
                    };
                    if !fit.admit(&message) {
                        break;
                    }
                    entries.push((offset, message));
                }
                // The snapshot's log is 1..=last_offset without a hole: more exists exactly
                // when the page stopped short of its end.
                let more = entries.last().is_some_and(|(offset, _)| *offset < last_offset);
                Ok(Ok(LogPage { entries, last_offset, more }))
            })
            .await??;
        Ok(page)
    }

    /// `pull`: the device asks for the next messages of its log.
    pub async fn pull(&self, eid: &str, after: i64, limit: i64) -> Result<LogPage, MessagingError> {
        self.check_page(after, limit)?;
        self.read_log(eid, after, limit, SIGNAL_REQUEST_PULL).await
    }

    /// `history`: one conversation, newest first, with user_offset below `before`, within the
    /// page byte budget; read from one snapshot like [`Messaging::read_log`].
    pub async fn history(
        &self,
        eid: &str,
        with: &str,
        before: Option<i64>,
        limit: i64,
    ) -> Result<HistoryPage, MessagingError> {
        self.check_page(before.unwrap_or(0), limit)?;
        let (eid, with) = (eid.to_owned(), with.to_owned());
        let budget = self.config.max_page_bytes;
        let page = self
            .store
            .read(move |snap| {
                let rows = queries::history(snap, &eid, &with, before, limit, byte_hint(budget))?;
                let conversations = conversations_for(snap, &eid, rows.iter())?;
                let mut fit = Budget::new(budget);
                let mut messages = Vec::with_capacity(rows.len());
                let mut oldest = None;
                for row in &rows {
                    let offset = if row.receiver == eid { row.receiver_offset } else { row.sender_offset };
                    let message =
                        match log_message(row, &eid, offset, state_of(row, &conversations), SIGNAL_REQUEST_PULL) {
                            Ok(message) => message,
                            Err(e) => return Ok(Err(e)),
                        };
                    if !fit.admit(&message) {
                        break;
                    }
                    oldest = Some(row.user_offset);
                    messages.push(message);
                }
                // A conversation is 1..=last_user_offset in the snapshot: anything older than
                // the page's oldest message exists.
                Ok(Ok(HistoryPage { messages, more: oldest.is_some_and(|o| o > 1) }))
            })
            .await??;
        Ok(page)
    }

    fn check_page(&self, offset: i64, limit: i64) -> Result<(), MessagingError> {
        if offset < 0 {
            return Err(MessagingError::invalid("offsets must not be negative"));
        }
        if !(1..=self.config.max_page).contains(&limit) {
            return Err(MessagingError::invalid(format!("limit must be 1..={}", self.config.max_page)));
        }
        Ok(())
    }
}

/// The byte budget as the store's content cut takes it.
fn byte_hint(budget: usize) -> i64 {
    i64::try_from(budget).unwrap_or(i64::MAX)
}

/// What is left of a page's byte budget, counted in messages as proto3 JSON (the larger of the
/// two encodings); the first message is always admitted, so every page makes progress.
struct Budget {
    left: usize,
    first: bool,
}

impl Budget {
    fn new(bytes: usize) -> Self {
        Budget { left: bytes, first: true }
    }

    /// Takes `message` out of the budget if it fits (or is the page's first).
    fn admit(&mut self, message: &pb::Message) -> bool {
        let size = wire::json_len(message);
        if size > self.left && !self.first {
            return false;
        }
        self.left = self.left.saturating_sub(size);
        self.first = false;
        true
    }
}

/// The conversations of `eid` that `rows` belong to.
fn conversations_for<'a>(
    conn: &mut Snapshot<'_>,
    eid: &str,
    rows: impl Iterator<Item = &'a MessageRow>,
) -> Result<Vec<ConversationRow>, crate::store::StoreError> {
    let mut others: Vec<&str> =
        rows.map(|r| if r.receiver == eid { r.sender.as_str() } else { r.receiver.as_str() }).collect();
    others.sort_unstable();
    others.dedup();
    queries::conversations_of(conn, eid, &others)
}

/// A stored message's ack state, from its conversation's acknowledgements.
fn state_of(row: &MessageRow, conversations: &[ConversationRow]) -> pb::SignalAckState {
    let (a, b) = queries::conversation_key(&row.sender, &row.receiver);
    let acked =
        conversations.iter().find(|c| c.user_a == a && c.user_b == b).map_or((0, 0), |c| c.acked_by(&row.receiver));
    ack_state(row.user_offset, acked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::pubsub::LocalBroker;

    const T: i64 = 1_700_000_000_000;

    #[actix::test]
    async fn the_injected_clock_stamps_messages_that_carry_no_timestamp() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = dir.path().join("clock.db").to_string_lossy().into_owned();
        let store = Store::open(&url).expect("store opens");
        let pubsub = PubSub::start(1, Arc::new(LocalBroker::new("n")));
        let clock = ManualClock::new(T);
        let messaging = Messaging::start(
            store,
            pubsub.clone(),
            MessagingConfig::default(),
            MessagePolicy::new(false),
            Arc::new(clock.clone()),
        );
        let origin = Origin { eid: "alice".into(), device: None, connection: 1, node: "n".into() };
        let message = |timestamp| pb::Message {
            id: "m1".into(),
            to: Some(wire::identity("bob", None)),
            payload: b"hi".to_vec(),
            timestamp,
            ..Default::default()
        };
        let Prepared(stamped) = messaging.prepare(&origin, message(0)).expect("valid message");
        assert_eq!(stamped.timestamp, T);
        clock.advance(std::time::Duration::from_millis(1_500));
        let Prepared(later) = messaging.prepare(&origin, message(0)).expect("valid message");
        assert_eq!(later.timestamp, T + 1_500, "the server's time moves with its clock");
        let Prepared(kept) = messaging.prepare(&origin, message(42)).expect("valid message");
        assert_eq!(kept.timestamp, 42, "a client's own timestamp is kept");
        pubsub.stop();
    }
}
