//! Queries on the messaging tables: `messages`, `user_logs`, `conversations` and
//! `device_cursors`. Offsets are handed out here by row-locking upserts (`last + n`), so they
//! stay gap-free whoever writes; what an offset means is decided by `crate::messaging`.
//!
//! The log writer's two writes have their own modules: `append` (a batch of messages) and
//! `receipt`. On PostgreSQL, where a round trip is the cost, a batch of messages takes two
//! statements whatever its size, and a batch's receipts one statement per round.

use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Binary, Nullable, Text};

use super::schema::{contacts, conversations, device_cursors, messages, user_logs, users};
use super::statement::Statement;
use super::{DbConnection, Millis, StoreError};

// Column lists and clauses that several statements share, as literals for `concat!`.

/// The columns of a [`MessageRow`], in its field order.
macro_rules! message_columns {
    () => {
        "sender, client_id, sender_device, receiver, user_offset, sender_offset, receiver_offset, sent_at, \
         stored_at, payload, encryption_type, encrypted, signature"
    };
    // The same columns of the row source `$t`.
    ($t:ident) => {
        concat!(
            stringify!($t),
            ".sender, ",
            stringify!($t),
            ".client_id, ",
            stringify!($t),
            ".sender_device, ",
            stringify!($t),
            ".receiver, ",
            stringify!($t),
            ".user_offset, ",
            stringify!($t),
            ".sender_offset, ",
            stringify!($t),
            ".receiver_offset, ",
            stringify!($t),
            ".sent_at, ",
            stringify!($t),
            ".stored_at, ",
            stringify!($t),
            ".payload, ",
            stringify!($t),
            ".encryption_type, ",
            stringify!($t),
            ".encrypted, ",
            stringify!($t),
            ".signature"
        )
    };
}

/// The columns of a [`ConversationRow`], in its field order.
macro_rules! conversation_columns {
    () => {
        "user_a, user_b, last_user_offset, a_received, a_read, b_received, b_read"
    };
    // The same columns of the row source `$t`.
    ($t:ident) => {
        concat!(
            stringify!($t),
            ".user_a, ",
            stringify!($t),
            ".user_b, ",
            stringify!($t),
            ".last_user_offset, ",
            stringify!($t),
            ".a_received, ",
            stringify!($t),
            ".a_read, ",
            stringify!($t),
            ".b_received, ",
            stringify!($t),
            ".b_read"
        )
    };
}

/// The SET list of a receipt on `conversations`, given a row source `k` with the `receiver`,
/// the newest acknowledged user_offset (`top`) and `is_read`: the receiver's marks only move up.
macro_rules! ack_marks {
    () => {
        concat!(
            "a_received = CASE WHEN k.receiver = user_a AND k.top > a_received THEN k.top ELSE a_received END, ",
            "a_read = CASE WHEN k.receiver = user_a AND k.is_read AND k.top > a_read THEN k.top ELSE a_read END, ",
            "b_received = CASE WHEN k.receiver = user_b AND k.top > b_received THEN k.top ELSE b_received END, ",
            "b_read = CASE WHEN k.receiver = user_b AND k.is_read AND k.top > b_read THEN k.top ELSE b_read END ",
        )
    };
}

mod append;
mod receipt;

pub use append::{NewMessage, StoredMessage, append};
pub use receipt::{ReceiptOutcome, ReceiptRequest, ReceivedUpTo, record_receipts};

/// The SQL types of a [`MessageRow`], in its field order.
type MessageSql = (Text, Text, Nullable<Text>, Text, BigInt, BigInt, BigInt, BigInt, BigInt, Binary, Text, Text, Text);
/// The SQL types of a [`ConversationRow`], in its field order.
type ConversationSql = (Text, Text, BigInt, BigInt, BigInt, BigInt, BigInt);

/// A stored message: written once, read from both users' logs.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = messages)]
pub struct MessageRow {
    /// The sending user.
    pub sender: String,
    /// The sender's own id for the message (the idempotency key, with `sender`).
    pub client_id: String,
    /// The device it was sent from, if the socket named one.
    pub sender_device: Option<String>,
    /// The receiving user.
    pub receiver: String,
    /// Position in the conversation of `sender` and `receiver`.
    pub user_offset: i64,
    /// Position in the sender's log.
    pub sender_offset: i64,
    /// Position in the receiver's log.
    pub receiver_offset: i64,
    /// The client's creation time.
    pub sent_at: Millis,
    /// When the server stored it.
    pub stored_at: Millis,
    /// Plain content (may be empty when `encrypted` is used).
    pub payload: Vec<u8>,
    /// The encryption scheme's name, or empty.
    pub encryption_type: String,
    /// Base64 ciphertext, or empty.
    pub encrypted: String,
    /// Base64 signature, or empty.
    pub signature: String,
}

/// A user's log counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = user_logs)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub struct LogRow {
    /// The last signal_offset handed out (0 for an empty log).
    pub last_offset: i64,
    /// How far any device acknowledged the log as received.
    pub received_offset: i64,
    /// How far any device acknowledged the log as read.
    pub read_offset: i64,
}

/// One conversation's counters; `a` is the lexically smaller username.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, serde::Deserialize)]
#[diesel(table_name = conversations)]
pub struct ConversationRow {
    /// The smaller username.
    pub user_a: String,
    /// The larger username.
    pub user_b: String,
    /// The last user_offset handed out.
    pub last_user_offset: i64,
    /// Highest user_offset `a` acknowledged as received.
    pub a_received: i64,
    /// Highest user_offset `a` acknowledged as read.
    pub a_read: i64,
    /// Highest user_offset `b` acknowledged as received.
    pub b_received: i64,
    /// Highest user_offset `b` acknowledged as read.
    pub b_read: i64,
}

impl ConversationRow {
    /// How far `user` has acknowledged this conversation: (received, read).
    pub fn acked_by(&self, user: &str) -> (i64, i64) {
        if user == self.user_a { (self.a_received, self.a_read) } else { (self.b_received, self.b_read) }
    }
}

/// Orders a pair of usernames the way `conversations` keys them.
pub fn conversation_key<'a>(x: &'a str, y: &'a str) -> (&'a str, &'a str) {
    if x <= y { (x, y) } else { (y, x) }
}

/// Whether `contact` is among `username`'s contacts.
pub fn are_contacts(conn: &mut DbConnection, username: &str, contact: &str) -> Result<bool, StoreError> {
    let id_of = |name: &str| users::table.filter(users::username.eq(name.to_owned())).select(users::id);
    let found: i64 = contacts::table
        .filter(contacts::user_id.eq_any(id_of(username)))
        .filter(contacts::contact_id.eq_any(id_of(contact)))
        .count()
        .get_result(conn)?;
    Ok(found > 0)
}

/// The stored messages among `keys`, each a `(sender, client_id)`, in no particular order (for
/// checks and tests; the log writer looks messages up in [`append`]).
pub fn find_stored(conn: &mut DbConnection, keys: &[(&str, &str)]) -> Result<Vec<MessageRow>, StoreError> {
    match conn {
        DbConnection::Sqlite(c) => {
            let mut found = Vec::new();
            for &key in keys {
                found.extend(messages::table.find(key).select(MessageRow::as_select()).get_result(c).optional()?);
            }
            Ok(found)
        }
        DbConnection::Pg(c) => {
            let (senders, ids): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
            Ok(Statement::<Pg, MessageSql>::new(concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages ",
                "WHERE (sender, client_id) IN (SELECT * FROM unnest(?, ?))"
            ))
            .bind::<Array<Text>, _>(senders)
            .bind::<Array<Text>, _>(ids)
            .load(c)?)
        }
    }
}

/// A user's log counters (all zero for a user who never sent or received).
pub fn log_state(conn: &mut DbConnection, username: &str) -> Result<LogRow, StoreError> {
    Ok(user_logs::table.find(username).select(LogRow::as_select()).get_result(conn).optional()?.unwrap_or_default())
}

/// The log entries of `username` after `after`, oldest first, at most `limit`: each is a
/// message the user received or sent, with its offset in this user's log.
pub fn log_after(
    conn: &mut DbConnection,
    username: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<(i64, MessageRow)>, StoreError> {
    let received: Vec<MessageRow> = messages::table
        .filter(messages::receiver.eq(username).and(messages::receiver_offset.gt(after)))
        .order(messages::receiver_offset.asc())
        .limit(limit)
        .select(MessageRow::as_select())
        .load(conn)?;
    let sent: Vec<MessageRow> = messages::table
        .filter(messages::sender.eq(username).and(messages::sender_offset.gt(after)))
        .order(messages::sender_offset.asc())
        .limit(limit)
        .select(MessageRow::as_select())
        .load(conn)?;
    let mut entries: Vec<(i64, MessageRow)> = received
        .into_iter()
        .map(|m| (m.receiver_offset, m))
        .chain(sent.into_iter().map(|m| (m.sender_offset, m)))
        .collect();
    entries.sort_by_key(|(offset, _)| *offset);
    entries.truncate(usize::try_from(limit).unwrap_or(0));
    Ok(entries)
}

/// One conversation's messages with user_offset below `before` (all when `None`), newest first.
pub fn history(
    conn: &mut DbConnection,
    me: &str,
    with: &str,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<MessageRow>, StoreError> {
    let before = before.unwrap_or(i64::MAX);
    let mut rows = Vec::new();
    for (sender, receiver) in [(me, with), (with, me)] {
        let part: Vec<MessageRow> = messages::table
            .filter(messages::sender.eq(sender).and(messages::receiver.eq(receiver)))
            .filter(messages::user_offset.lt(before))
            .order(messages::user_offset.desc())
            .limit(limit)
            .select(MessageRow::as_select())
            .load(conn)?;
        rows.extend(part);
    }
    rows.sort_by_key(|m| std::cmp::Reverse(m.user_offset));
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    Ok(rows)
}

/// The conversations `username` has with each of `others` (missing ones are left out).
pub fn conversations_of(
    conn: &mut DbConnection,
    username: &str,
    others: &[&str],
) -> Result<Vec<ConversationRow>, StoreError> {
    let mut rows = Vec::with_capacity(others.len());
    for other in others {
        let (a, b) = conversation_key(username, other);
        if let Some(row) =
            conversations::table.find((a, b)).select(ConversationRow::as_select()).get_result(conn).optional()?
        {
            rows.push(row);
        }
    }
    Ok(rows)
}

/// How far `device` of `username` has acknowledged the log (0 for a new device).
pub fn cursor(conn: &mut DbConnection, username: &str, device: &str) -> Result<i64, StoreError> {
    Ok(device_cursors::table
        .find((username, device))
        .select(device_cursors::acked_offset)
        .get_result(conn)
        .optional()?
        .unwrap_or(0))
}

/// Every offset in `username`'s log, ascending (for consistency checks and tests).
pub fn log_offsets(conn: &mut DbConnection, username: &str) -> Result<Vec<i64>, StoreError> {
    let mut offsets: Vec<i64> =
        messages::table.filter(messages::receiver.eq(username)).select(messages::receiver_offset).load(conn)?;
    let sent: Vec<i64> =
        messages::table.filter(messages::sender.eq(username)).select(messages::sender_offset).load(conn)?;
    offsets.extend(sent);
    offsets.sort_unstable();
    Ok(offsets)
}
