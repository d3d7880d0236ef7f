//! Queries on the messaging tables: `messages`, `user_logs`, `conversations` and
//! `device_cursors`. Offsets are handed out here by row-locking upserts (`last + n`), so they
//! stay gap-free whoever writes; what an offset means is decided by `crate::messaging`.

use diesel::dsl::max;
use diesel::prelude::*;
use diesel::upsert::excluded;

use super::dialect::per_backend;
use super::schema::{contacts, conversations, device_cursors, messages, user_logs, users};
use super::{DbConnection, Millis, StoreError};

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
    Ok(users::table.filter(users::username.eq_any(usernames)).select(users::username).load(conn)?)
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

/// The messages `sender` already stored under any of `client_ids`.
pub fn find_sent(conn: &mut DbConnection, sender: &str, client_ids: &[&str]) -> Result<Vec<MessageRow>, StoreError> {
    Ok(messages::table
        .filter(messages::sender.eq(sender).and(messages::client_id.eq_any(client_ids)))
        .select(MessageRow::as_select())
        .load(conn)?)
}

/// Reserves `n` offsets at the end of `username`'s log; returns the new last offset.
pub fn advance_log(conn: &mut DbConnection, username: &str, n: i64) -> Result<i64, StoreError> {
    let values = (
        user_logs::username.eq(username),
        user_logs::last_offset.eq(n),
        user_logs::received_offset.eq(0),
        user_logs::read_offset.eq(0),
    );
    Ok(per_backend!(conn, c => diesel::insert_into(user_logs::table)
        .values(values)
        .on_conflict(user_logs::username)
        .do_update()
        .set(user_logs::last_offset.eq(user_logs::last_offset + excluded(user_logs::last_offset)))
        .returning(user_logs::last_offset)
        .get_result::<i64>(c))?)
}

/// Reserves `n` user_offsets in the conversation of `x` and `y`; returns the updated row.
pub fn advance_conversation(conn: &mut DbConnection, x: &str, y: &str, n: i64) -> Result<ConversationRow, StoreError> {
    let (a, b) = conversation_key(x, y);
    let values = (
        conversations::user_a.eq(a),
        conversations::user_b.eq(b),
        conversations::last_user_offset.eq(n),
        conversations::a_received.eq(0),
        conversations::a_read.eq(0),
        conversations::b_received.eq(0),
        conversations::b_read.eq(0),
    );
    Ok(per_backend!(conn, c => diesel::insert_into(conversations::table)
        .values(values)
        .on_conflict((conversations::user_a, conversations::user_b))
        .do_update()
        .set(conversations::last_user_offset.eq(conversations::last_user_offset + excluded(conversations::last_user_offset)))
        .returning(ConversationRow::as_returning())
        .get_result(c))?)
}

/// Stores messages whose offsets are already reserved.
pub fn insert_messages(conn: &mut DbConnection, rows: &[MessageRow]) -> Result<(), StoreError> {
    // Kept well under SQLite's bound-parameter limit (13 per row).
    for chunk in rows.chunks(500) {
        per_backend!(conn, c => diesel::insert_into(messages::table).values(chunk).execute(c))?;
    }
    Ok(())
}

/// A user's log counters (all zero for a user who never sent or received).
pub fn log_state(conn: &mut DbConnection, username: &str) -> Result<LogRow, StoreError> {
    Ok(user_logs::table.find(username).select(LogRow::as_select()).first(conn).optional()?.unwrap_or_default())
}

/// Sets how far `username`'s devices have acknowledged the log (received, read).
pub fn set_log_acks(conn: &mut DbConnection, username: &str, received: i64, read: i64) -> Result<(), StoreError> {
    diesel::update(user_logs::table.find(username))
        .set((user_logs::received_offset.eq(received), user_logs::read_offset.eq(read)))
        .execute(conn)?;
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
            conversations::table.find((a, b)).select(ConversationRow::as_select()).first(conn).optional()?
        {
            rows.push(row);
        }
    }
    Ok(rows)
}

/// For messages `receiver` got at log offsets in `(after, up_to]`: each sender with the highest
/// user_offset among them and that message's client id.
pub fn received_range(
    conn: &mut DbConnection,
    receiver: &str,
    after: i64,
    up_to: i64,
) -> Result<Vec<(String, i64, String)>, StoreError> {
    let in_range = messages::receiver
        .eq(receiver)
        .and(messages::receiver_offset.gt(after))
        .and(messages::receiver_offset.le(up_to));
    let tops: Vec<(String, Option<i64>)> = messages::table
        .filter(in_range)
        .group_by(messages::sender)
        .select((messages::sender, max(messages::user_offset)))
        .load(conn)?;
    let mut out = Vec::with_capacity(tops.len());
    for (sender, top) in tops {
        let Some(top) = top else { continue };
        let client_id: String = messages::table
            .filter(messages::sender.eq(&sender).and(messages::receiver.eq(receiver)))
            .filter(messages::user_offset.eq(top))
            .select(messages::client_id)
            .first(conn)?;
        out.push((sender, top, client_id));
    }
    Ok(out)
}

/// Records that `receiver` acknowledged its conversation with `sender` up to `user_offset`
/// (received, and read too when `read`); never moves back. Returns the updated row.
pub fn ack_conversation(
    conn: &mut DbConnection,
    receiver: &str,
    sender: &str,
    user_offset: i64,
    read: bool,
) -> Result<ConversationRow, StoreError> {
    let (a, b) = conversation_key(receiver, sender);
    let key = conversations::table.find((a, b));
    let mut row: ConversationRow = key.select(ConversationRow::as_select()).first(conn)?;
    let receiver_is_a = receiver == row.user_a;
    let (received, read_mark) =
        if receiver_is_a { (&mut row.a_received, &mut row.a_read) } else { (&mut row.b_received, &mut row.b_read) };
    *received = (*received).max(user_offset);
    if read {
        *read_mark = (*read_mark).max(user_offset);
    }
    diesel::update(key)
        .set((
            conversations::a_received.eq(row.a_received),
            conversations::a_read.eq(row.a_read),
            conversations::b_received.eq(row.b_received),
            conversations::b_read.eq(row.b_read),
        ))
        .execute(conn)?;
    Ok(row)
}

/// How far `device` of `username` has acknowledged the log (0 for a new device).
pub fn cursor(conn: &mut DbConnection, username: &str, device: &str) -> Result<i64, StoreError> {
    Ok(device_cursors::table
        .find((username, device))
        .select(device_cursors::acked_offset)
        .first(conn)
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
    let current = cursor(conn, username, device)?;
    let next = current.max(offset);
    let values = (
        device_cursors::username.eq(username),
        device_cursors::device_id.eq(device),
        device_cursors::acked_offset.eq(next),
        device_cursors::updated_at.eq(now),
    );
    per_backend!(conn, c => diesel::insert_into(device_cursors::table)
        .values(values)
        .on_conflict((device_cursors::username, device_cursors::device_id))
        .do_update()
        .set((device_cursors::acked_offset.eq(next), device_cursors::updated_at.eq(now)))
        .execute(c))?;
    Ok(next)
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
