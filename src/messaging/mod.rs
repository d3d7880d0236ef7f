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
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};

pub use config::MessagingConfig;
pub use error::MessagingError;
use log::{Append, Receipt, Write, Written};
use wire::{SIGNAL_REQUEST_PULL, ack_state, log_message};

use crate::pb;
use crate::pubsub::{PubSub, SubscriberId};
use crate::store::messages::{self as queries, ConversationRow, MessageRow};
use crate::store::{Millis, Store};

/// The event that carries a `Message` to a device.
pub const EVENT_MESSAGE: &str = "message";
/// The event that carries a delivery or read `MessagePeerAckSignal`.
pub const EVENT_RECEIPT: &str = "receipt";

/// The topic of a user's inbox, joined by each of the user's devices.
pub fn user_topic(eid: &str) -> String {
    format!("user:{eid}")
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Attached to a live `message` broadcast: its offset in the topic owner's log, and the message.
#[derive(Debug)]
pub struct LiveMessage {
    /// The message's signal_offset in the log of the topic's user.
    pub offset: i64,
    /// The message as that user's devices get it.
    pub message: pb::Message,
}

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

/// A run of a user's log, oldest first.
#[derive(Debug, Clone)]
pub struct LogPage {
    /// `(signal_offset, message)` pairs.
    pub entries: Vec<(i64, pb::Message)>,
    /// The log's last signal_offset when the page was read.
    pub last_offset: i64,
}

/// The messaging service: cheap to clone, shared by every socket.
#[derive(Clone)]
pub struct Messaging {
    store: Store,
    jobs: mpsc::Sender<writer::Job>,
    config: Arc<MessagingConfig>,
    require_contacts: bool,
}

impl Messaging {
    /// Starts the log writer on the current runtime. With `require_contacts`, users may only
    /// message their contacts.
    pub fn start(store: Store, pubsub: PubSub, config: MessagingConfig, require_contacts: bool) -> Messaging {
        let jobs = writer::start(store.clone(), pubsub, config.max_batch);
        Messaging { store, jobs, config: Arc::new(config), require_contacts }
    }

    /// The limits in force.
    pub fn config(&self) -> &MessagingConfig {
        &self.config
    }

    /// Checks a client's message and fills in what the server decides (`from`, `timestamp`).
    pub fn prepare(&self, origin: &Origin, mut message: pb::Message) -> Result<pb::Message, MessagingError> {
        if message.id.is_empty() || message.id.len() > 128 || message.id.chars().any(char::is_control) {
            return Err(MessagingError::invalid("id must be 1..=128 bytes without control characters"));
        }
        let to = match &message.to {
            Some(to) if !to.eid.is_empty() => to.eid.clone(),
            _ => return Err(MessagingError::invalid("to.eid is required")),
        };
        if to == origin.eid {
            return Err(MessagingError::invalid("cannot send a message to yourself"));
        }
        if message.from.as_ref().is_some_and(|from| !from.eid.is_empty() && from.eid != origin.eid) {
            return Err(MessagingError::Forbidden("from does not match the socket's user".into()));
        }
        if message.payload.is_empty() && message.encrypted.is_empty() {
            return Err(MessagingError::invalid("a message needs a payload or encrypted content"));
        }
        if !message.encrypted.is_empty() && message.encryption_type.is_empty() {
            return Err(MessagingError::invalid("encrypted content needs an encryption_type"));
        }
        let size = message.payload.len() + message.encrypted.len() + message.signature.len();
        if size > self.config.max_payload_bytes {
            return Err(MessagingError::TooLarge(self.config.max_payload_bytes));
        }
        if message.timestamp < 0 {
            return Err(MessagingError::invalid("timestamp must not be negative"));
        }
        if message.timestamp == 0 {
            message.timestamp = now_millis();
        }
        message.from = Some(wire::identity(&origin.eid, origin.device.as_deref()));
        message.to = Some(wire::identity(&to, None));
        Ok(message)
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
        message: pb::Message,
    ) -> impl Future<Output = Result<pb::MessagePeerAckSignal, MessagingError>> + 'static {
        let append = Append {
            sender: origin.eid.clone(),
            sender_device: origin.device.clone(),
            require_contact: self.require_contacts,
            message,
        };
        let written = self.submit(Write::Append(append), Some(origin.connection));
        let origin = origin.clone();
        async move {
            let Written::Appended(appended) = written.await? else {
                return Err(MessagingError::Unavailable);
            };
            let row = &appended.row;
            Ok(pb::MessagePeerAckSignal {
                to: Some(pb::Identity {
                    eid: origin.eid.clone(),
                    connection_resource_id: origin.device.clone(),
                    node: Some(origin.node.clone()),
                }),
                from: Some(wire::identity(&row.receiver, None)),
                message_id: row.client_id.clone(),
                method: wire::METHOD_SENT,
                timestamp: now_millis(),
                status_code: 200,
                peer: Some(wire::peer(&row.sender, &row.receiver, row.user_offset, appended.peer_received)),
            })
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
                Written::Appended(_) => Err(MessagingError::Unavailable),
            }
        }
    }
    /// The log's end and this device's cursor.
    pub async fn device_state(&self, eid: &str, device: &str) -> Result<DeviceState, MessagingError> {
        let (eid, device) = (eid.to_owned(), device.to_owned());
        let state = self
            .store
            .run(move |conn| {
                let log = queries::log_state(conn, &eid)?;
                let acked = queries::cursor(conn, &eid, &device)?;
                Ok(DeviceState { last_offset: log.last_offset, acked_offset: acked })
            })
            .await?;
        Ok(state)
    }

    /// Up to `limit` entries of `eid`'s log after `after`, as `signal_request` delivers them.
    pub async fn read_log(
        &self,
        eid: &str,
        after: i64,
        limit: i64,
        signal_request: i32,
    ) -> Result<LogPage, MessagingError> {
        let eid = eid.to_owned();
        let page = self
            .store
            .run(move |conn| {
                let last_offset = queries::log_state(conn, &eid)?.last_offset;
                let rows = queries::log_after(conn, &eid, after, limit)?;
                let conversations = conversations_for(conn, &eid, rows.iter().map(|(_, r)| r))?;
                let entries = rows
                    .iter()
                    .map(|(offset, row)| {
                        let state = state_of(row, &conversations);
                        (*offset, log_message(row, &eid, *offset, state, signal_request))
                    })
                    .collect();
                Ok(LogPage { entries, last_offset })
            })
            .await?;
        Ok(page)
    }

    /// `pull`: the device asks for the next messages of its log.
    pub async fn pull(&self, eid: &str, after: i64, limit: i64) -> Result<LogPage, MessagingError> {
        self.check_page(after, limit)?;
        self.read_log(eid, after, limit, SIGNAL_REQUEST_PULL).await
    }

    /// `history`: one conversation, newest first, with user_offset below `before`.
    pub async fn history(
        &self,
        eid: &str,
        with: &str,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<pb::Message>, MessagingError> {
        self.check_page(before.unwrap_or(0), limit)?;
        let (eid, with) = (eid.to_owned(), with.to_owned());
        let messages = self
            .store
            .run(move |conn| {
                let rows = queries::history(conn, &eid, &with, before, limit)?;
                let conversations = conversations_for(conn, &eid, rows.iter())?;
                Ok(rows
                    .iter()
                    .map(|row| {
                        let offset = if row.receiver == eid { row.receiver_offset } else { row.sender_offset };
                        log_message(row, &eid, offset, state_of(row, &conversations), SIGNAL_REQUEST_PULL)
                    })
                    .collect())
            })
            .await?;
        Ok(messages)
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

/// The conversations of `eid` that `rows` belong to.
fn conversations_for<'a>(
    conn: &mut crate::store::DbConnection,
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
