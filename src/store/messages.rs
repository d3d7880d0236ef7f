//! Queries on the messaging tables: `messages`, `user_logs`, `conversations` and
//! `device_cursors`. Offsets are handed out here by row-locking upserts (`last + n`), so they
//! stay gap-free whoever writes; what an offset means is decided by `crate::messaging`.

use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Binary, Bool, Nullable, Text};
use diesel::sqlite::Sqlite;

use super::dialect::per_backend;
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
}

/// The columns of a [`ConversationRow`], in its field order.
macro_rules! conversation_columns {
    () => {
        "user_a, user_b, last_user_offset, a_received, a_read, b_received, b_read"
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
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
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

/// Which of `usernames` exist.
pub fn existing_users(conn: &mut DbConnection, usernames: &[&str]) -> Result<Vec<String>, StoreError> {
    match conn {
        DbConnection::Sqlite(c) => {
            let mut found = Vec::with_capacity(usernames.len());
            for name in usernames {
                let row: Option<String> =
                    Statement::<Sqlite, Text>::new("SELECT username FROM users WHERE username = ?")
                        .bind::<Text, _>(*name)
                        .get_result(c)
                        .optional()?;
                found.extend(row);
            }
            Ok(found)
        }
        DbConnection::Pg(c) => Ok(Statement::<Pg, Text>::new("SELECT username FROM users WHERE username = ANY(?)")
            .bind::<Array<Text>, _>(usernames)
            .load(c)?),
    }
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

/// The stored messages among `keys`, each a `(sender, client_id)`, in no particular order.
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

/// Reserves offsets at the end of users' logs: `counts` pairs a username with how many it
/// needs. Returns each user's new last offset, in the order of `counts`.
///
/// Callers pass users in one fixed (sorted) order, so that concurrent writers lock rows alike.
pub fn advance_logs(conn: &mut DbConnection, counts: &[(&str, i64)]) -> Result<Vec<i64>, StoreError> {
    match conn {
        DbConnection::Sqlite(c) => {
            let mut lasts = Vec::with_capacity(counts.len());
            for &(user, n) in counts {
                lasts.push(
                    Statement::<Sqlite, BigInt>::new(concat!(
                        "INSERT INTO user_logs (username, last_offset) VALUES (?, ?) ON CONFLICT (username) ",
                        "DO UPDATE SET last_offset = user_logs.last_offset + excluded.last_offset RETURNING last_offset"
                    ))
                    .bind::<Text, _>(user)
                    .bind::<BigInt, _>(n)
                    .get_result(c)?,
                );
            }
            Ok(lasts)
        }
        DbConnection::Pg(c) => {
            let (users, ns): (Vec<&str>, Vec<i64>) = counts.iter().copied().unzip();
            let rows: Vec<(String, i64)> = Statement::<Pg, (Text, BigInt)>::new(concat!(
                "INSERT INTO user_logs (username, last_offset) SELECT * FROM unnest(?, ?) ON CONFLICT (username) ",
                "DO UPDATE SET last_offset = user_logs.last_offset + excluded.last_offset ",
                "RETURNING username, last_offset"
            ))
            .bind::<Array<Text>, _>(users)
            .bind::<Array<BigInt>, _>(ns)
            .load(c)?;
            in_order_of(counts, rows, |&(user, _)| user.to_owned(), |(user, _)| user.clone())
                .map(|rows| rows.into_iter().map(|(_, last)| last).collect())
        }
    }
}

/// Reserves user_offsets in conversations: `counts` pairs a conversation's key (as
/// [`conversation_key`] orders it) with how many it needs. Returns the updated rows, in the
/// order of `counts`; callers pass keys sorted, as for [`advance_logs`].
pub fn advance_conversations(
    conn: &mut DbConnection,
    counts: &[((&str, &str), i64)],
) -> Result<Vec<ConversationRow>, StoreError> {
    match conn {
        DbConnection::Sqlite(c) => {
            let mut rows = Vec::with_capacity(counts.len());
            for &((a, b), n) in counts {
                rows.push(
                    Statement::<Sqlite, ConversationSql>::new(concat!(
                        "INSERT INTO conversations (user_a, user_b, last_user_offset) VALUES (?, ?, ?) ",
                        "ON CONFLICT (user_a, user_b) DO UPDATE ",
                        "SET last_user_offset = conversations.last_user_offset + excluded.last_user_offset ",
                        "RETURNING ",
                        conversation_columns!()
                    ))
                    .bind::<Text, _>(a)
                    .bind::<Text, _>(b)
                    .bind::<BigInt, _>(n)
                    .get_result(c)?,
                );
            }
            Ok(rows)
        }
        DbConnection::Pg(c) => {
            let mut user_a = Vec::with_capacity(counts.len());
            let mut user_b = Vec::with_capacity(counts.len());
            let mut ns = Vec::with_capacity(counts.len());
            for &((a, b), n) in counts {
                user_a.push(a);
                user_b.push(b);
                ns.push(n);
            }
            let rows: Vec<ConversationRow> = Statement::<Pg, ConversationSql>::new(concat!(
                "INSERT INTO conversations (user_a, user_b, last_user_offset) SELECT * FROM unnest(?, ?, ?) ",
                "ON CONFLICT (user_a, user_b) DO UPDATE ",
                "SET last_user_offset = conversations.last_user_offset + excluded.last_user_offset ",
                "RETURNING ",
                conversation_columns!()
            ))
            .bind::<Array<Text>, _>(user_a)
            .bind::<Array<Text>, _>(user_b)
            .bind::<Array<BigInt>, _>(ns)
            .load(c)?;
            in_order_of(
                counts,
                rows,
                |&((a, b), _)| (a.to_owned(), b.to_owned()),
                |row| (row.user_a.clone(), row.user_b.clone()),
            )
        }
    }
}

/// Puts rows a set-based statement returned (in any order) in the order of the `asked` items
/// they answer; an item without its row means the database did not do what was asked.
fn in_order_of<A, R, K: std::hash::Hash + Eq + std::fmt::Debug>(
    asked: &[A],
    rows: Vec<R>,
    key_of_asked: impl Fn(&A) -> K,
    key_of_row: impl Fn(&R) -> K,
) -> Result<Vec<R>, StoreError> {
    let mut by_key: std::collections::HashMap<K, R> = rows.into_iter().map(|r| (key_of_row(&r), r)).collect();
    asked
        .iter()
        .map(|a| {
            let key = key_of_asked(a);
            by_key.remove(&key).ok_or_else(|| StoreError::Corrupt(format!("no row came back for {key:?}")))
        })
        .collect()
}

/// Stores messages whose offsets are already reserved.
pub fn insert_messages(conn: &mut DbConnection, rows: &[MessageRow]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    match conn {
        DbConnection::Sqlite(c) => {
            for row in rows {
                Statement::<Sqlite>::new(concat!(
                    "INSERT INTO messages (",
                    message_columns!(),
                    ") ",
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ))
                .bind::<Text, _>(row.sender.as_str())
                .bind::<Text, _>(row.client_id.as_str())
                .bind::<Nullable<Text>, _>(row.sender_device.as_deref())
                .bind::<Text, _>(row.receiver.as_str())
                .bind::<BigInt, _>(row.user_offset)
                .bind::<BigInt, _>(row.sender_offset)
                .bind::<BigInt, _>(row.receiver_offset)
                .bind::<BigInt, _>(row.sent_at)
                .bind::<BigInt, _>(row.stored_at)
                .bind::<Binary, _>(row.payload.as_slice())
                .bind::<Text, _>(row.encryption_type.as_str())
                .bind::<Text, _>(row.encrypted.as_str())
                .bind::<Text, _>(row.signature.as_str())
                .execute(c)?;
            }
            Ok(())
        }
        DbConnection::Pg(c) => {
            let column = |f: fn(&MessageRow) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
            let number = |f: fn(&MessageRow) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
            Statement::<Pg>::new(concat!(
                "INSERT INTO messages (",
                message_columns!(),
                ") ",
                "SELECT * FROM unnest(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .bind::<Array<Text>, _>(column(|r| &r.sender))
            .bind::<Array<Text>, _>(column(|r| &r.client_id))
            .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.sender_device.as_deref()).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(column(|r| &r.receiver))
            .bind::<Array<BigInt>, _>(number(|r| r.user_offset))
            .bind::<Array<BigInt>, _>(number(|r| r.sender_offset))
            .bind::<Array<BigInt>, _>(number(|r| r.receiver_offset))
            .bind::<Array<BigInt>, _>(number(|r| r.sent_at))
            .bind::<Array<BigInt>, _>(number(|r| r.stored_at))
            .bind::<Array<Binary>, _>(rows.iter().map(|r| r.payload.as_slice()).collect::<Vec<&[u8]>>())
            .bind::<Array<Text>, _>(column(|r| &r.encryption_type))
            .bind::<Array<Text>, _>(column(|r| &r.encrypted))
            .bind::<Array<Text>, _>(column(|r| &r.signature))
            .execute(c)?;
            Ok(())
        }
    }
}

/// A user's log counters (all zero for a user who never sent or received).
pub fn log_state(conn: &mut DbConnection, username: &str) -> Result<LogRow, StoreError> {
    Ok(user_logs::table.find(username).select(LogRow::as_select()).get_result(conn).optional()?.unwrap_or_default())
}

/// Sets how far `username`'s devices have acknowledged the log (received, read).
pub fn set_log_acks(conn: &mut DbConnection, username: &str, received: i64, read: i64) -> Result<(), StoreError> {
    per_backend!(conn, c => Statement::<_>::new("UPDATE user_logs SET received_offset = ?, read_offset = ? WHERE username = ?")
        .bind::<BigInt, _>(received)
        .bind::<BigInt, _>(read)
        .bind::<Text, _>(username)
        .execute(c))?;
    Ok(())
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

/// What a receipt acknowledged in one conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedUpTo {
    /// The sender of the acknowledged messages.
    pub sender: String,
    /// The newest acknowledged message's user_offset.
    pub user_offset: i64,
    /// That message's client id.
    pub client_id: String,
    /// The conversation after the receipt.
    pub conversation: ConversationRow,
}

/// Records that `receiver` acknowledged the messages at its log offsets in `(after, up_to]`
/// (received, and read too when `read`): each of their conversations is acknowledged up to
/// the newest such message of its sender, never back. One entry per sender.
pub fn ack_received(
    conn: &mut DbConnection,
    receiver: &str,
    after: i64,
    up_to: i64,
    read: bool,
) -> Result<Vec<ReceivedUpTo>, StoreError> {
    // A sender's messages to one receiver take user_offsets and receiver_offsets in the same
    // order (both are reserved under the same row locks), so the newest by either is one row.
    match conn {
        DbConnection::Sqlite(c) => {
            // SQLite fills the bare `client_id` from the row that holds the max().
            let tops: Vec<(String, i64, String)> = Statement::<Sqlite, (Text, BigInt, Text)>::new(concat!(
                "SELECT sender, max(user_offset), client_id FROM messages ",
                "WHERE receiver = ? AND receiver_offset > ? AND receiver_offset <= ? GROUP BY sender"
            ))
            .bind::<Text, _>(receiver)
            .bind::<BigInt, _>(after)
            .bind::<BigInt, _>(up_to)
            .load(c)?;
            let mut out = Vec::with_capacity(tops.len());
            for (sender, user_offset, client_id) in tops {
                let (a, b) = conversation_key(receiver, &sender);
                let conversation = Statement::<Sqlite, ConversationSql>::new(concat!(
                    "UPDATE conversations SET ",
                    ack_marks!(),
                    "FROM (SELECT ? AS key_a, ? AS key_b, ? AS receiver, ? AS top, ? AS is_read) AS k ",
                    "WHERE user_a = k.key_a AND user_b = k.key_b ",
                    "RETURNING ",
                    conversation_columns!()
                ))
                .bind::<Text, _>(a)
                .bind::<Text, _>(b)
                .bind::<Text, _>(receiver)
                .bind::<BigInt, _>(user_offset)
                .bind::<Bool, _>(read)
                .get_result(c)?;
                out.push(ReceivedUpTo { sender, user_offset, client_id, conversation });
            }
            Ok(out)
        }
        DbConnection::Pg(c) => {
            let tops: Vec<(String, i64, String)> = Statement::<Pg, (Text, BigInt, Text)>::new(concat!(
                "SELECT DISTINCT ON (sender) sender, user_offset, client_id FROM messages ",
                "WHERE receiver = ? AND receiver_offset > ? AND receiver_offset <= ? ",
                "ORDER BY sender, user_offset DESC"
            ))
            .bind::<Text, _>(receiver)
            .bind::<BigInt, _>(after)
            .bind::<BigInt, _>(up_to)
            .load(c)?;
            if tops.is_empty() {
                return Ok(Vec::new());
            }
            let mut keys_a = Vec::with_capacity(tops.len());
            let mut keys_b = Vec::with_capacity(tops.len());
            for (sender, _, _) in &tops {
                let (a, b) = conversation_key(receiver, sender);
                keys_a.push(a);
                keys_b.push(b);
            }
            let offsets: Vec<i64> = tops.iter().map(|(_, top, _)| *top).collect();
            let rows: Vec<ConversationRow> = Statement::<Pg, ConversationSql>::new(concat!(
                "UPDATE conversations SET ",
                ack_marks!(),
                "FROM (SELECT u.key_a, u.key_b, u.top, ?::text AS receiver, ?::boolean AS is_read ",
                "FROM unnest(?, ?, ?) AS u(key_a, key_b, top)) AS k ",
                "WHERE user_a = k.key_a AND user_b = k.key_b ",
                "RETURNING ",
                conversation_columns!()
            ))
            .bind::<Text, _>(receiver)
            .bind::<Bool, _>(read)
            .bind::<Array<Text>, _>(&keys_a)
            .bind::<Array<Text>, _>(&keys_b)
            .bind::<Array<BigInt>, _>(offsets)
            .load(c)?;
            let conversations = in_order_of(
                &tops,
                rows,
                |(sender, _, _)| {
                    let (a, b) = conversation_key(receiver, sender);
                    (a.to_owned(), b.to_owned())
                },
                |row| (row.user_a.clone(), row.user_b.clone()),
            )?;
            Ok(tops
                .into_iter()
                .zip(conversations)
                .map(|((sender, user_offset, client_id), conversation)| ReceivedUpTo {
                    sender,
                    user_offset,
                    client_id,
                    conversation,
                })
                .collect())
        }
    }
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

/// Moves a device's cursor forward to `offset` (never back); returns the resulting cursor.
pub fn advance_cursor(
    conn: &mut DbConnection,
    username: &str,
    device: &str,
    offset: i64,
    now: Millis,
) -> Result<i64, StoreError> {
    Ok(per_backend!(conn, c => Statement::<_, BigInt>::new(concat!(
        "INSERT INTO device_cursors (username, device_id, acked_offset, updated_at) VALUES (?, ?, ?, ?) ",
        "ON CONFLICT (username, device_id) DO UPDATE SET updated_at = excluded.updated_at, acked_offset = ",
        "CASE WHEN excluded.acked_offset > device_cursors.acked_offset THEN excluded.acked_offset ",
        "ELSE device_cursors.acked_offset END RETURNING acked_offset"
    ))
    .bind::<Text, _>(username)
    .bind::<Text, _>(device)
    .bind::<BigInt, _>(offset)
    .bind::<BigInt, _>(now)
    .get_result(c))?)
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
