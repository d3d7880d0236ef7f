//! Queries on the messaging tables: `messages`, `user_logs`, `conversations` and
//! `device_cursors`. Offsets are handed out here by row-locking upserts (`last + n`), so they
//! stay gap-free whoever writes; what an offset means is decided by `crate::messaging`.
//!
//! The log writer's two writes have their own modules: `append` (a batch of messages) and
//! `receipt`; `lock` holds the order in which a batch takes its row locks on PostgreSQL. On PostgreSQL, where a round trip is the cost, a batch of messages takes two
//! statements whatever its size, and a batch's receipts one statement per round.
//!
//! Every read of a log or a conversation takes a [`Snapshot`], so a page, the log's end and the
//! page's ack states are all read at one moment. A page used to be two SELECTs (received, then
//! sent) outside any transaction; a commit landing between them showed its sent rows but not
//! its received ones, and the page had a hole a client would step over for good.
//!
//! Why one snapshot is enough: the offsets of one log are reserved by an upsert that locks the
//! log's `user_logs` row until its transaction ends, so the transaction holding offset k+1 could
//! not take it before the one holding k had committed (or rolled back, leaving k to the next).
//! Later offsets of a log therefore always commit after earlier ones; on SQLite commits are
//! serial anyway (one writer at a time). A snapshot sees exactly the transactions committed
//! before it (PostgreSQL makes a commit visible before it releases its locks), so what it sees
//! of a log is a prefix `1..=last_offset` with no hole, and its `last_offset` is that prefix's
//! end. The same holds for a conversation's `user_offset`s through its `conversations` row, and
//! ack marks only move up, so a page's ack states are those of the moment the page shows.
//! Pages are also single statements (UNION ALL of both directions), which on their own are
//! consistent on both backends.

use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::serialize::ToSql;
use diesel::sql_types::{Array, BigInt, Binary, HasSqlType, Nullable, Text};
use diesel::sqlite::Sqlite;

use super::dialect::per_backend;
use super::schema::{conversations, device_cursors, messages, user_logs};
use super::statement::Statement;
use super::{DbConnection, Millis, Snapshot, StoreError};

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
mod lock;
mod receipt;

pub use append::{NewMessage, StoredMessage, append};
pub use lock::lock_logs;

/// The largest offset a log or conversation may hand out: seed 004's `Message` carries
/// `signal_offset` and `user_offset` as int32, and an offset past it could only be clipped
/// (two messages at one offset) on the wire. [`append`] refuses a batch that would pass it.
pub const MAX_OFFSET: i64 = i32::MAX as i64;
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

// Reads: each takes a `Snapshot`, so that what one request reads in several statements adds up.

/// The bytes of a row's content that a page's byte budget counts, over the columns of a
/// [`MessageRow`]: a lower bound of what the row encodes to (proto3 JSON writes every one of
/// them, and base64 only grows `payload`), so a page cut by it holds every row that a cut by the
/// encoded size would keep.
macro_rules! content_bytes {
    () => {
        "octet_length(payload) + octet_length(encrypted) + octet_length(signature) + \
         octet_length(encryption_type) + octet_length(client_id)"
    };
}

/// A page of a user's log: the first `limit` entries after an offset, received (`r`) and sent
/// (`s`), each read by its own unique index, then cut at `limit` rows and at the first row whose
/// running content size passes the budget (the first row always stays). The window runs over
/// narrow rows (offset, key, size) and only the rows that stay are joined back to their content:
/// a window over whole rows held all `limit` payloads in the database's memory (about 21 MB a
/// page of 500 ~48 KB messages, 470 MB for twenty pulls in flight). Binds: user, after, limit;
/// user, after, limit; limit, budget.
const LOG_PAGE: &str = concat!(
    "SELECT w.log_offset, ",
    message_columns!(m),
    " FROM (SELECT p.log_offset, p.sender, p.client_id, ROW_NUMBER() OVER (ORDER BY p.log_offset) AS n, ",
    "SUM(p.bytes) OVER (ORDER BY p.log_offset ROWS UNBOUNDED PRECEDING) AS run FROM (",
    "SELECT * FROM (SELECT receiver_offset AS log_offset, sender, client_id, ",
    content_bytes!(),
    " AS bytes FROM messages WHERE receiver = ? AND receiver_offset > ? ORDER BY receiver_offset LIMIT ?) AS r ",
    "UNION ALL ",
    "SELECT * FROM (SELECT sender_offset AS log_offset, sender, client_id, ",
    content_bytes!(),
    " AS bytes FROM messages WHERE sender = ? AND sender_offset > ? ORDER BY sender_offset LIMIT ?) AS s",
    ") AS p) AS w JOIN messages m ON m.sender = w.sender AND m.client_id = w.client_id ",
    "WHERE w.n <= ? AND (w.n = 1 OR w.run <= ?) ORDER BY w.log_offset"
);

/// A page of one conversation, newest first, below a user_offset: both directions, cut as
/// [`LOG_PAGE`] is, over narrow rows. Binds: me, with, before, limit; with, me, before, limit;
/// limit, budget.
const HISTORY_PAGE: &str = concat!(
    "SELECT ",
    message_columns!(m),
    " FROM (SELECT p.user_offset, p.sender, p.client_id, ROW_NUMBER() OVER (ORDER BY p.user_offset DESC) AS n, ",
    "SUM(p.bytes) OVER (ORDER BY p.user_offset DESC ROWS UNBOUNDED PRECEDING) AS run FROM (",
    "SELECT * FROM (SELECT user_offset, sender, client_id, ",
    content_bytes!(),
    " AS bytes FROM messages WHERE sender = ? AND receiver = ? AND user_offset < ? ORDER BY user_offset DESC LIMIT ?) AS x ",
    "UNION ALL ",
    "SELECT * FROM (SELECT user_offset, sender, client_id, ",
    content_bytes!(),
    " AS bytes FROM messages WHERE sender = ? AND receiver = ? AND user_offset < ? ORDER BY user_offset DESC LIMIT ?) AS y",
    ") AS p) AS w JOIN messages m ON m.sender = w.sender AND m.client_id = w.client_id ",
    "WHERE w.n <= ? AND (w.n = 1 OR w.run <= ?) ORDER BY w.user_offset DESC"
);

/// Every offset of a user's log, ascending. Binds: user, user.
const LOG_OFFSETS: &str = "SELECT receiver_offset AS o FROM messages WHERE receiver = ? \
     UNION ALL SELECT sender_offset AS o FROM messages WHERE sender = ? ORDER BY o";

/// One statement on either backend: `$make` is a function generic over the backend.
macro_rules! load_with {
    ($snap:expr, $make:expr) => {
        match $snap.conn() {
            DbConnection::Sqlite(c) => $make(Statement::<Sqlite, _>::new).load(c)?,
            DbConnection::Pg(c) => $make(Statement::<Pg, _>::new).load(c)?,
        }
    };
}

/// A user's log counters (all zero for a user who never sent or received).
pub fn log_state(snap: &mut Snapshot<'_>, username: &str) -> Result<LogRow, StoreError> {
    Ok(user_logs::table
        .find(username)
        .select(LogRow::as_select())
        .get_result(snap.conn())
        .optional()?
        .unwrap_or_default())
}

/// The log entries of `username` after `after`, oldest first: each is a message the user
/// received or sent, with its offset in this user's log. At most `limit` entries, and no more
/// than fit in `max_bytes` of content as [`content_bytes!`] counts it (but always the first).
pub fn log_after(
    snap: &mut Snapshot<'_>,
    username: &str,
    after: i64,
    limit: i64,
    max_bytes: i64,
) -> Result<Vec<(i64, MessageRow)>, StoreError> {
    fn make<'a, DB>(
        new: fn(&'static str) -> Statement<'a, DB, (BigInt, MessageSql)>,
        username: &'a str,
        after: i64,
        limit: i64,
        max_bytes: i64,
    ) -> Statement<'a, DB, (BigInt, MessageSql)>
    where
        DB: diesel::backend::Backend + HasSqlType<Text> + HasSqlType<BigInt>,
        &'a str: ToSql<Text, DB>,
        i64: ToSql<BigInt, DB>,
    {
        new(LOG_PAGE)
            .bind::<Text, _>(username)
            .bind::<BigInt, _>(after)
            .bind::<BigInt, _>(limit)
            .bind::<Text, _>(username)
            .bind::<BigInt, _>(after)
            .bind::<BigInt, _>(limit)
            .bind::<BigInt, _>(limit)
            .bind::<BigInt, _>(max_bytes)
    }
    Ok(load_with!(snap, |new| make(new, username, after, limit, max_bytes)))
}

/// One conversation's messages with user_offset below `before` (all when `None`), newest first:
/// at most `limit`, and no more than fit in `max_bytes` of content (but always the first).
pub fn history(
    snap: &mut Snapshot<'_>,
    me: &str,
    with: &str,
    before: Option<i64>,
    limit: i64,
    max_bytes: i64,
) -> Result<Vec<MessageRow>, StoreError> {
    fn make<'a, DB>(
        new: fn(&'static str) -> Statement<'a, DB, MessageSql>,
        (me, with): (&'a str, &'a str),
        before: i64,
        limit: i64,
        max_bytes: i64,
    ) -> Statement<'a, DB, MessageSql>
    where
        DB: diesel::backend::Backend + HasSqlType<Text> + HasSqlType<BigInt>,
        &'a str: ToSql<Text, DB>,
        i64: ToSql<BigInt, DB>,
    {
        new(HISTORY_PAGE)
            .bind::<Text, _>(me)
            .bind::<Text, _>(with)
            .bind::<BigInt, _>(before)
            .bind::<BigInt, _>(limit)
            .bind::<Text, _>(with)
            .bind::<Text, _>(me)
            .bind::<BigInt, _>(before)
            .bind::<BigInt, _>(limit)
            .bind::<BigInt, _>(limit)
            .bind::<BigInt, _>(max_bytes)
    }
    let before = before.unwrap_or(i64::MAX);
    Ok(load_with!(snap, |new| make(new, (me, with), before, limit, max_bytes)))
}

/// The conversations `username` has with each of `others` (missing ones are left out), in one
/// statement.
pub fn conversations_of(
    snap: &mut Snapshot<'_>,
    username: &str,
    others: &[&str],
) -> Result<Vec<ConversationRow>, StoreError> {
    if others.is_empty() {
        return Ok(Vec::new());
    }
    // The key puts the smaller name first, so `username` is user_a with the larger others.
    let (larger, smaller): (Vec<&str>, Vec<&str>) =
        others.iter().copied().partition(|other| conversation_key(username, other).0 == username);
    let mine = conversations::user_a
        .eq(username)
        .and(conversations::user_b.eq_any(larger))
        .or(conversations::user_b.eq(username).and(conversations::user_a.eq_any(smaller)));
    Ok(per_backend!(snap.conn(), c => conversations::table.filter(mine).select(ConversationRow::as_select()).load(c)?))
}

/// How far `device` of `username` has acknowledged the log (0 for a new device).
pub fn cursor(snap: &mut Snapshot<'_>, username: &str, device: &str) -> Result<i64, StoreError> {
    Ok(device_cursors::table
        .find((username, device))
        .select(device_cursors::acked_offset)
        .get_result(snap.conn())
        .optional()?
        .unwrap_or(0))
}

/// Every offset in `username`'s log, ascending (for consistency checks and tests).
pub fn log_offsets(snap: &mut Snapshot<'_>, username: &str) -> Result<Vec<i64>, StoreError> {
    fn make<'a, DB>(new: fn(&'static str) -> Statement<'a, DB, BigInt>, username: &'a str) -> Statement<'a, DB, BigInt>
    where
        DB: diesel::backend::Backend + HasSqlType<Text> + HasSqlType<BigInt>,
        &'a str: ToSql<Text, DB>,
    {
        new(LOG_OFFSETS).bind::<Text, _>(username).bind::<Text, _>(username)
    }
    Ok(load_with!(snap, |new| make(new, username)))
}
