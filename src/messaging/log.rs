//! One group-commit batch, inside one transaction: idempotency by `(sender, id)`, offsets for
//! every new message (the receiver's log, the sender's log, the conversation), then receipts.
//!
//! A per-item problem (unknown recipient, `up_to` past the end) fails only that item; a
//! database error fails the whole batch, which the writer then retries item by item.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::MessagingError;
use crate::pb;
use crate::store::messages::{self, ConversationRow, MessageRow, conversation_key};
use crate::store::{DbConnection, Millis, StoreError};

/// A validated message to append (its `from`, `to.eid`, `id` and `timestamp` are set).
#[derive(Debug, Clone)]
pub struct Append {
    /// The sending user.
    pub sender: String,
    /// The sending device, if the socket named one.
    pub sender_device: Option<String>,
    /// Refuse the message unless the receiver is a contact of the sender.
    pub require_contact: bool,
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
}

/// Applies a batch on a connection that is inside a write transaction. Results are in the
/// order of `writes`.
pub fn apply(
    conn: &mut DbConnection,
    writes: &[Write],
    now: Millis,
) -> Result<Vec<Result<Written, MessagingError>>, StoreError> {
    let mut results: Vec<Option<Result<Written, MessagingError>>> = writes.iter().map(|_| None).collect();
    append_all(conn, writes, now, &mut results)?;
    for (index, write) in writes.iter().enumerate() {
        if let Write::Receipt(receipt) = write {
            results[index] = Some(record_receipt(conn, receipt, now)?.map(Written::Receipt));
        }
    }
    Ok(results.into_iter().map(|r| r.unwrap_or(Err(MessagingError::Unavailable))).collect())
}

fn append_all(
    conn: &mut DbConnection,
    writes: &[Write],
    now: Millis,
    results: &mut [Option<Result<Written, MessagingError>>],
) -> Result<(), StoreError> {
    let appends: Vec<(usize, &Append)> = writes
        .iter()
        .enumerate()
        .filter_map(|(i, w)| match w {
            Write::Append(a) => Some((i, a)),
            Write::Receipt(_) => None,
        })
        .collect();
    if appends.is_empty() {
        return Ok(());
    }

    let receivers: BTreeSet<&str> = appends.iter().map(|(_, a)| receiver_of(a)).collect();
    let receivers: Vec<&str> = receivers.into_iter().collect();
    let known: HashSet<String> = messages::existing_users(conn, &receivers)?.into_iter().collect();

    // Messages stored by earlier batches, by (sender, id).
    let keys: Vec<(&str, &str)> = appends.iter().map(|(_, a)| (a.sender.as_str(), a.message.id.as_str())).collect();
    let mut stored: HashMap<(String, String), MessageRow> = HashMap::new();
    for row in messages::find_stored(conn, &keys)? {
        stored.insert((row.sender.clone(), row.client_id.clone()), row);
    }

    // Which appends are new (the first of each (sender, id) not stored yet), and how many
    // offsets each log and conversation needs.
    let mut fresh: Vec<(usize, &Append)> = Vec::new();
    let mut first_in_batch: HashMap<(&str, &str), usize> = HashMap::new();
    let mut log_counts: BTreeMap<&str, i64> = BTreeMap::new();
    let mut conversation_counts: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for &(index, append) in &appends {
        let receiver = receiver_of(append);
        if !known.contains(receiver) {
            results[index] = Some(Err(MessagingError::UnknownRecipient));
            continue;
        }
        if append.require_contact && !messages::are_contacts(conn, &append.sender, receiver)? {
            results[index] = Some(Err(MessagingError::Forbidden("not_contacts".into())));
            continue;
        }
        let key = (append.sender.as_str(), append.message.id.as_str());
        if stored.contains_key(&(key.0.to_owned(), key.1.to_owned())) || first_in_batch.contains_key(&key) {
            continue;
        }
        first_in_batch.insert(key, index);
        fresh.push((index, append));
        *log_counts.entry(append.sender.as_str()).or_default() += 1;
        *log_counts.entry(receiver).or_default() += 1;
        *conversation_counts.entry(conversation_key(&append.sender, receiver)).or_default() += 1;
    }

    // Reserve offsets in a fixed (sorted) order so concurrent writers lock rows alike.
    let log_counts: Vec<(&str, i64)> = log_counts.into_iter().collect();
    let mut next_log: HashMap<&str, i64> = HashMap::with_capacity(log_counts.len());
    for (&(user, n), last) in log_counts.iter().zip(messages::advance_logs(conn, &log_counts)?) {
        next_log.insert(user, last - n + 1);
    }
    let conversation_counts: Vec<((&str, &str), i64)> = conversation_counts.into_iter().collect();
    let mut next_user_offset: HashMap<(&str, &str), i64> = HashMap::with_capacity(conversation_counts.len());
    let mut conversation_rows: HashMap<(String, String), ConversationRow> = HashMap::new();
    for (&(key, n), row) in conversation_counts.iter().zip(messages::advance_conversations(conn, &conversation_counts)?)
    {
        next_user_offset.insert(key, row.last_user_offset - n + 1);
        conversation_rows.insert((key.0.to_owned(), key.1.to_owned()), row);
    }

    let mut rows = Vec::with_capacity(fresh.len());
    for &(_, append) in &fresh {
        let receiver = receiver_of(append);
        let sender_offset = take_next(&mut next_log, append.sender.as_str())?;
        let receiver_offset = take_next(&mut next_log, receiver)?;
        let user_offset = take_next(&mut next_user_offset, conversation_key(&append.sender, receiver))?;
        let m = &append.message;
        let row = MessageRow {
            sender: append.sender.clone(),
            client_id: m.id.clone(),
            sender_device: append.sender_device.clone(),
            receiver: receiver.to_owned(),
            user_offset,
            sender_offset,
            receiver_offset,
            sent_at: m.timestamp,
            stored_at: now,
            payload: m.payload.clone(),
            encryption_type: m.encryption_type.clone(),
            encrypted: m.encrypted.clone(),
            signature: m.signature.clone(),
        };
        stored.insert((row.sender.clone(), row.client_id.clone()), row.clone());
        rows.push(row);
    }
    messages::insert_messages(conn, &rows)?;

    // Conversations that only saw duplicates still need their peer offsets for the acks.
    for &(index, append) in &appends {
        if matches!(results[index], Some(Err(_))) {
            continue;
        }
        let key = (append.sender.clone(), append.message.id.clone());
        let Some(row) = stored.get(&key).cloned() else {
            return Err(StoreError::Corrupt(format!("message {} of {} vanished mid-batch", key.1, key.0)));
        };
        let (a, b) = conversation_key(&row.sender, &row.receiver);
        let conversation = match conversation_rows.get(&(a.to_owned(), b.to_owned())) {
            Some(c) => c.clone(),
            None => {
                let found = messages::conversations_of(conn, &row.sender, &[row.receiver.as_str()])?;
                let Some(c) = found.into_iter().next() else {
                    return Err(StoreError::Corrupt(format!("conversation {a}/{b} missing")));
                };
                conversation_rows.insert((a.to_owned(), b.to_owned()), c.clone());
                c
            }
        };
        let duplicate = first_in_batch.get(&(append.sender.as_str(), append.message.id.as_str())) != Some(&index);
        let peer_received = conversation.acked_by(&row.receiver).0;
        results[index] = Some(Ok(Written::Appended(Appended { row, peer_received, duplicate })));
    }
    Ok(())
}

/// Hands out the next reserved offset for `key`.
fn take_next<K: std::hash::Hash + Eq + std::fmt::Debug>(map: &mut HashMap<K, i64>, key: K) -> Result<i64, StoreError> {
    let Some(slot) = map.get_mut(&key) else {
        return Err(StoreError::Corrupt(format!("no offsets reserved for {key:?}")));
    };
    let offset = *slot;
    *slot += 1;
    Ok(offset)
}

fn receiver_of(append: &Append) -> &str {
    append.message.to.as_ref().map_or("", |to| to.eid.as_str())
}

fn record_receipt(
    conn: &mut DbConnection,
    receipt: &Receipt,
    now: Millis,
) -> Result<Result<Receipted, MessagingError>, StoreError> {
    let log = messages::log_state(conn, &receipt.user)?;
    if receipt.up_to > log.last_offset {
        return Ok(Err(MessagingError::invalid(format!(
            "up_to {} is past the end of the log (last_offset {})",
            receipt.up_to, log.last_offset
        ))));
    }
    let cursor = messages::advance_cursor(conn, &receipt.user, &receipt.device, receipt.up_to, now)?;
    let already = if receipt.read { log.read_offset } else { log.received_offset };
    let mut acks = Vec::new();
    if receipt.up_to > already {
        for acked in messages::ack_received(conn, &receipt.user, already, receipt.up_to, receipt.read)? {
            let (received, read) = acked.conversation.acked_by(&receipt.user);
            let acked_to = if receipt.read { read } else { received };
            acks.push(ConversationAck {
                sender: acked.sender,
                client_id: acked.client_id,
                user_offset: acked.user_offset,
                acked: acked_to,
            });
        }
        // The log row was read above, inside this same write transaction.
        let received = log.received_offset.max(receipt.up_to);
        let read = if receipt.read { log.read_offset.max(receipt.up_to) } else { log.read_offset };
        messages::set_log_acks(conn, &receipt.user, received, read)?;
    }
    Ok(Ok(Receipted { cursor, acks }))
}
