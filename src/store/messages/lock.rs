//! The lock order of the log writer's transaction on PostgreSQL, so that two nodes writing for
//! the same users at once cannot deadlock.
//!
//! A batch locks rows in three tables: `user_logs` (offsets, receipt marks), `conversations`
//! (user_offsets, ack marks) and `device_cursors`. Each step locked its own rows in sorted
//! order, but a batch runs several steps (messages, sealed messages, receipt rounds) and
//! those orders did not compose: a batch holding bob's log for a message and waiting on carol's
//! for a receipt deadlocks with one holding carol's and waiting on bob's. The order is now:
//!
//! 1. [`lock_logs`], first in the transaction: every `user_logs` row the batch will touch,
//!    sorted by username (a missing row is created, at offset 0, so that it is locked too).
//!    No other step then waits on a log, and every step below holds the logs of the users it
//!    writes for.
//! 2. Messages lock conversations, but only of users whose both logs the batch holds: no other
//!    transaction can be touching those conversations.
//! 3. [`lock_receipt_conversations`], before the first receipt round: every conversation the
//!    receipts may move, sorted by `(user_a, user_b)`. Two batches acknowledging the two sides
//!    of one conversation hold different logs, so these are the only locks that two batches
//!    can both want while each holds something; taking them at once, in order, closes the cycle.
//! 4. Device cursors belong to the receipt's user, whose log the batch holds.
//!
//! SQLite has one writer at a time, so there is nothing to order there.

use std::collections::BTreeMap;

use diesel::pg::{Pg, PgConnection};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Text};

use crate::store::statement::Statement;
use crate::store::{DbConnection, StoreError};

/// Locks (creating when missing) the `user_logs` rows of those of `users` that are users, in
/// byte order; a no-op on SQLite. Call it first in the write transaction.
pub fn lock_logs(conn: &mut DbConnection, users: &[&str]) -> Result<(), StoreError> {
    let DbConnection::Pg(c) = conn else { return Ok(()) };
    if users.is_empty() {
        return Ok(());
    }
    let mut sorted: Vec<&str> = users.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    lock_logs_pg(c, &sorted)
}

/// The upsert with a no-op update locks an existing row like `FOR UPDATE` and creates a missing
/// one (which `FOR UPDATE` could not lock); rows are taken in the `ORDER BY`'s order.
const LOCK_LOGS_PG: &str = concat!(
    "INSERT INTO user_logs (username, last_offset) ",
    "SELECT u.username, 0 FROM users u WHERE u.username = ANY(?) ORDER BY u.username COLLATE \"C\" ",
    "ON CONFLICT (username) DO UPDATE SET last_offset = user_logs.last_offset"
);

fn lock_logs_pg(c: &mut PgConnection, sorted: &[&str]) -> Result<(), StoreError> {
    Statement::<Pg>::new(LOCK_LOGS_PG).bind::<Array<Text>, _>(sorted).execute(c)?;
    Ok(())
}

/// Every conversation the receipts of `users` up to `up_to` (each user's highest) may move,
/// locked in `(user_a, user_b)` byte order: the conversations with each sender of a message in
/// the user's log past its received mark (its read mark, when one receipt is a read), which
/// is the range the receipts themselves scan. The logs must be locked already ([`lock_logs`]),
/// so that set cannot grow meanwhile.
const LOCK_CONVERSATIONS_PG: &str = concat!(
    "WITH arg AS (SELECT * FROM unnest(?, ?, ?) AS r(username, up_to, is_read)), ",
    "keys AS (SELECT DISTINCT ",
    "CASE WHEN m.sender < a.username COLLATE \"C\" THEN m.sender ELSE a.username END AS key_a, ",
    "CASE WHEN m.sender < a.username COLLATE \"C\" THEN a.username ELSE m.sender END AS key_b ",
    "FROM arg a JOIN user_logs l ON l.username = a.username ",
    "JOIN messages m ON m.receiver = a.username ",
    "AND m.receiver_offset > CASE WHEN a.is_read THEN l.read_offset ELSE l.received_offset END ",
    "AND m.receiver_offset <= a.up_to) ",
    "SELECT count(*) FROM (SELECT 1 FROM conversations c JOIN keys k ON c.user_a = k.key_a AND c.user_b = k.key_b ",
    "ORDER BY c.user_a COLLATE \"C\", c.user_b COLLATE \"C\" FOR UPDATE OF c) AS locked"
);

/// Locks the conversations the receipts `(user, up_to, read)` may move, in order; PostgreSQL
/// only (the receipt path calls it there, before its first round).
pub(super) fn lock_receipt_conversations<'a>(
    c: &mut PgConnection,
    receipts: impl IntoIterator<Item = (&'a str, i64, bool)>,
) -> Result<(), StoreError> {
    // One row per user, its highest up_to and whether any is a read: the lock covers every
    // round of the batch.
    let mut per_user: BTreeMap<&'a str, (i64, bool)> = BTreeMap::new();
    for (user, up_to, read) in receipts {
        let top = per_user.entry(user).or_insert((up_to, read));
        *top = (top.0.max(up_to), top.1 || read);
    }
    if per_user.is_empty() {
        return Ok(());
    }
    let users: Vec<&str> = per_user.keys().copied().collect();
    let up_tos: Vec<i64> = per_user.values().map(|v| v.0).collect();
    let reads: Vec<bool> = per_user.values().map(|v| v.1).collect();
    let _locked: i64 = Statement::<Pg, BigInt>::new(LOCK_CONVERSATIONS_PG)
        .bind::<Array<Text>, _>(users)
        .bind::<Array<BigInt>, _>(up_tos)
        .bind::<Array<Bool>, _>(reads)
        .get_result(c)?;
    Ok(())
}
