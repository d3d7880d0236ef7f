//! One group-commit batch, inside one transaction: idempotency by `(sender, id)`, offsets for
//! every new message (the receiver's log, the sender's log, the conversation), then sealed
//! messages (the receiver's log only: they have no sender), then receipts.
//!
//! On PostgreSQL the batch first locks every user's log it touches, in one order
//! (`store::messages::lock_logs`), so batches committing on different nodes cannot deadlock.
//!
//! A per-item problem (unknown recipient, `up_to` past the end) fails only that item; a
//! database error, or a log the batch would take past the offset limit (`StoreError::LogFull`),
//! fails the whole batch, which the writer then retries item by item.

use std::collections::HashMap;

use super::MessagingError;
use crate::accounts::MessagePolicy;
use crate::pb;
use crate::store::messages::{self, MessageRow, NewMessage, ReceiptOutcome, ReceiptRequest};
use crate::store::{DbConnection, Millis, StoreError};

/// A validated message to append (its `from`, `to.eid`, `id` and `timestamp` are set).
#[derive(Debug, Clone)]
pub struct Append {
    /// The sending user.
    pub sender: String,
    /// The sending device, if the socket named one.
    pub sender_device: Option<String>,
    /// Who the sender may message.
    pub policy: MessagePolicy,
    /// The message as the client sent it, validated.
    pub message: pb::Message,
}

/// A device acknowledging its user's log up to an offset.
#[derive(Debug, Clone)]
pub struct Receipt {
    /// The acknowledging user (the messages' receiver).
    pub user: String,
    /// The device whose cursor moves (`""` when the socket named none).
    pub device: String,
    /// The signal_offset acknowledged, inclusive.
    pub up_to: i64,
    /// `read` rather than only `received`.
    pub read: bool,
}

/// A sealed message for one registered device: nothing about its sender is known or kept.
#[derive(Debug, Clone)]
pub struct SealedAppend {
    /// The receiving key user's eid.
    pub receiver: String,
    /// The receiving device (the protocol's deviceID).
    pub device: i64,
    /// The sealed bytes, opaque to the server.
    pub body: Vec<u8>,
}

/// A stored sealed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedStored {
    /// Its signal_offset in the receiver's log.
    pub offset: i64,
    /// When it was stored.
    pub stored_at: Millis,
}

/// One write of a batch.
// Messages are the common case; boxing them would cost an allocation each to save space on
// the rarer receipts.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Write {
    /// Store a message.
    Append(Append),
    /// Record a receipt.
    Receipt(Receipt),
    /// Store a sealed message.
    Sealed(SealedAppend),
}

/// A stored (or already stored) message.
#[derive(Debug, Clone)]
pub struct Appended {
    /// The stored row, with its offsets.
    pub row: MessageRow,
    /// The highest user_offset of this conversation the receiver has acknowledged as received.
    pub peer_received: i64,
    /// True when this `(sender, id)` was stored before: nothing new was written or delivered.
    pub duplicate: bool,
}

/// What a receipt changed in one conversation.
#[derive(Debug, Clone)]
pub struct ConversationAck {
    /// The user whose messages were acknowledged.
    pub sender: String,
    /// The id of the newest acknowledged message of that sender.
    pub client_id: String,
    /// Its user_offset.
    pub user_offset: i64,
    /// How far the receiver has now acknowledged the conversation (received, or read for reads).
    pub acked: i64,
}

/// A recorded receipt.
#[derive(Debug, Clone)]
pub struct Receipted {
    /// The device's cursor after the receipt.
    pub cursor: i64,
    /// The conversations whose acknowledgement moved forward.
    pub acks: Vec<ConversationAck>,
}

/// The outcome of one write.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Written {
    /// A message was stored (or found stored).
    Appended(Appended),
    /// A receipt was recorded.
    Receipt(Receipted),
    /// A sealed message was stored.
    Sealed(SealedStored),
}

impl Written {
    /// Whether this write stored a message that was not stored before.
    pub fn is_new_message(&self) -> bool {
        match self {
            Written::Appended(appended) => !appended.duplicate,
            Written::Sealed(_) => true,
            Written::Receipt(_) => false,
        }
    }
}

/// Applies a batch on a connection that is inside a write transaction. Results are in the
/// order of `writes`.
pub fn apply(
    conn: &mut DbConnection,
    writes: &[Write],
    now: Millis,
) -> Result<Vec<Result<Written, MessagingError>>, StoreError> {
    let mut results: Vec<Option<Result<Written, MessagingError>>> = writes.iter().map(|_| None).collect();
    // Before anything else, so that every later step's locks follow one global order and two
    // nodes' batches for the same users cannot deadlock (see `store::messages::lock_logs`).
    messages::lock_logs(conn, &users_of(writes))?;
    append_all(conn, writes, now, &mut results)?;
    append_sealed(conn, writes, now, &mut results)?;
    record_receipts(conn, writes, now, &mut results)?;
    Ok(results.into_iter().map(|r| r.unwrap_or(Err(MessagingError::Unavailable))).collect())
}

/// Every user whose log a batch may touch: both ends of each message, the receiver of each
/// sealed one, the user of each receipt.
fn users_of(writes: &[Write]) -> Vec<&str> {
    let mut users = Vec::with_capacity(writes.len() * 2);
    for write in writes {
        match write {
            Write::Append(append) => users.extend([append.sender.as_str(), receiver_of(append)]),
            Write::Receipt(receipt) => users.push(receipt.user.as_str()),
            Write::Sealed(sealed) => users.push(sealed.receiver.as_str()),
        }
    }
    users
}

fn append_all(
    conn: &mut DbConnection,
    writes: &[Write],
    now: Millis,
    results: &mut [Option<Result<Written, MessagingError>>],
) -> Result<(), StoreError> {
    // The first write of each (sender, id) goes to the store; a later one in the same batch is
    // its duplicate and gets the same row. A later one naming another receiver is stored on its
    // own afterwards, exactly as if it came in a later batch.
    let mut batch: Vec<NewMessage<'_>> = Vec::new();
    let mut slot_of: Vec<(usize, usize)> = Vec::new();
    let mut first_in_batch: HashMap<(&str, &str), usize> = HashMap::new();
    let mut afterwards: Vec<(usize, NewMessage<'_>)> = Vec::new();
    for (index, write) in writes.iter().enumerate() {
        let Write::Append(append) = write else { continue };
        let receiver = receiver_of(append);
        if append.policy.screens_appends()
            && let Err(refused) = append.policy.check(conn, &append.sender, receiver)?
        {
            results[index] = Some(Err(refused.into()));
            continue;
        }
        let message = new_message(append);
        match first_in_batch.get(&(message.sender, message.client_id)) {
            Some(&slot) if batch.get(slot).is_some_and(|first| first.receiver == receiver) => {
                slot_of.push((index, slot));
            }
            Some(_) => afterwards.push((index, message)),
            None => {
                first_in_batch.insert((message.sender, message.client_id), batch.len());
                slot_of.push((index, batch.len()));
                batch.push(message);
            }
        }
    }
    if batch.is_empty() {
        return Ok(());
    }

    let stored = messages::append(conn, &batch, now)?;
    let mut answered = vec![false; stored.len()];
    for (index, slot) in slot_of {
        let (Some(outcome), Some(seen)) = (stored.get(slot), answered.get_mut(slot)) else {
            return Err(StoreError::Corrupt(format!(
                "the store answered {} of {} messages",
                stored.len(),
                batch.len()
            )));
        };
        results[index] = Some(appended(outcome.as_ref(), *seen));
        *seen = true;
    }
    for (index, message) in afterwards {
        let stored = messages::append(conn, &[message], now)?;
        results[index] = Some(appended(stored.first().and_then(Option::as_ref), false));
    }
    Ok(())
}

fn append_sealed(
    conn: &mut DbConnection,
    writes: &[Write],
    now: Millis,
    results: &mut [Option<Result<Written, MessagingError>>],
) -> Result<(), StoreError> {
    for (index, write) in writes.iter().enumerate() {
        let Write::Sealed(sealed) = write else { continue };
        let stored = crate::store::keys::append_sealed(conn, &sealed.receiver, sealed.device, &sealed.body, now)?;
        results[index] = Some(match stored {
            Some(offset) => Ok(Written::Sealed(SealedStored { offset, stored_at: now })),
            None => Err(MessagingError::UnknownDevice),
        });
    }
    Ok(())
}

/// The store's view of a message the client sent.
fn new_message(append: &Append) -> NewMessage<'_> {
    let m = &append.message;
    NewMessage {
        sender: &append.sender,
        client_id: &m.id,
        sender_device: append.sender_device.as_deref(),
        receiver: receiver_of(append),
        sent_at: m.timestamp,
        payload: &m.payload,
        encryption_type: &m.encryption_type,
        encrypted: &m.encrypted,
        signature: &m.signature,
    }
}

/// The outcome of an append from what the store made of it (`None`: unknown receiver); an
/// earlier copy in the same batch makes it a duplicate too.
fn appended(stored: Option<&messages::StoredMessage>, earlier_copy: bool) -> Result<Written, MessagingError> {
    match stored {
        None => Err(MessagingError::UnknownRecipient),
        Some(found) => Ok(Written::Appended(Appended {
            row: found.row.clone(),
            peer_received: found.peer_received,
            duplicate: found.existed || earlier_copy,
        })),
    }
}

fn receiver_of(append: &Append) -> &str {
    append.message.to.as_ref().map_or("", |to| to.eid.as_str())
}

fn record_receipts(
    conn: &mut DbConnection,
    writes: &[Write],
    now: Millis,
    results: &mut [Option<Result<Written, MessagingError>>],
) -> Result<(), StoreError> {
    let (indices, receipts): (Vec<usize>, Vec<&Receipt>) = writes
        .iter()
        .enumerate()
        .filter_map(|(i, w)| match w {
            Write::Receipt(r) => Some((i, r)),
            Write::Append(_) | Write::Sealed(_) => None,
        })
        .unzip();
    if receipts.is_empty() {
        return Ok(());
    }
    let requests: Vec<ReceiptRequest<'_>> = receipts
        .iter()
        .map(|r| ReceiptRequest { username: &r.user, device: &r.device, up_to: r.up_to, read: r.read })
        .collect();
    let outcomes = messages::record_receipts(conn, &requests, now)?;
    for ((index, receipt), outcome) in indices.into_iter().zip(receipts).zip(outcomes) {
        results[index] = Some(match outcome {
            ReceiptOutcome::PastEnd { last_offset } => Err(MessagingError::invalid(format!(
                "up_to {} is past the end of the log (last_offset {last_offset})",
                receipt.up_to
            ))),
            ReceiptOutcome::Recorded { cursor, acks } => Ok(Written::Receipt(Receipted {
                cursor,
                acks: acks
                    .into_iter()
                    .map(|acked| {
                        let (received, read) = acked.conversation.acked_by(&receipt.user);
                        ConversationAck {
                            sender: acked.sender,
                            client_id: acked.client_id,
                            user_offset: acked.user_offset,
                            acked: if receipt.read { read } else { received },
                        }
                    })
                    .collect(),
            })),
        });
    }
    Ok(())
}
