//! Recording a receipt: a device acknowledges its user's log up to an offset. The device's
//! cursor moves forward, and when the log's own received (or read) mark moves too, every
//! conversation with a message in the newly acknowledged range is acknowledged up to the
//! newest such message of its sender. Marks and cursors never move back.
//!
//! SQLite runs the steps as cached statements, receipt by receipt. PostgreSQL runs the
//! receipts of a batch as one statement, or one per round when a user has several (each round
//! holds at most one receipt per user, in order): devices tend to acknowledge in bursts, and a
//! round trip per receipt held 100 of them up for 25 ms.

use std::collections::HashMap;

use diesel::pg::{Pg, PgConnection};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Text};
use diesel::sqlite::{Sqlite, SqliteConnection};

use serde::Deserialize;

use super::{ConversationRow, ConversationSql, LogRow, conversation_key};
use crate::store::schema::user_logs;
use crate::store::statement::Statement;
use crate::store::{DbConnection, Millis, StoreError};

/// What a receipt acknowledged in one conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedUpTo {
    /// The sender of the acknowledged messages.
    pub sender: String,
    /// The newest acknowledged message's user_offset.
    pub user_offset: i64,
    /// That message's client id.
    pub client_id: String,
    /// The conversation after the receipt (on PostgreSQL, after its round, which may include
    /// the other user's marks from a receipt later in the batch; this user's marks are exact).
    pub conversation: ConversationRow,
}

/// What [`record_receipts`] did with one receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptOutcome {
    /// `up_to` is past the end of the log, whose last offset is given; nothing changed.
    PastEnd {
        /// The log's last offset.
        last_offset: i64,
    },
    /// The receipt is recorded.
    Recorded {
        /// The device's cursor after the receipt.
        cursor: i64,
        /// The conversations whose acknowledgement moved forward, one per sender.
        acks: Vec<ReceivedUpTo>,
    },
}

/// One receipt: `device` of `username` has the log up to `up_to` (received, and read too when
/// `read`).
#[derive(Debug, Clone, Copy)]
pub struct ReceiptRequest<'a> {
    /// The acknowledging user.
    pub username: &'a str,
    /// The device whose cursor moves (`""` for none).
    pub device: &'a str,
    /// The log offset acknowledged, inclusive.
    pub up_to: i64,
    /// A read receipt rather than a received one.
    pub read: bool,
}

/// Records `receipts` in order (a later receipt sees what an earlier one did) and returns each
/// one's outcome. Runs inside the caller's transaction.
pub fn record_receipts(
    conn: &mut DbConnection,
    receipts: &[ReceiptRequest<'_>],
    now: Millis,
) -> Result<Vec<ReceiptOutcome>, StoreError> {
    match conn {
        DbConnection::Sqlite(c) => {
            receipts.iter().map(|r| receipt_sqlite(c, r.username, r.device, r.up_to, r.read, now)).collect()
        }
        DbConnection::Pg(c) => receipts_pg(c, receipts, now),
    }
}

fn receipt_sqlite(
    c: &mut SqliteConnection,
    username: &str,
    device: &str,
    up_to: i64,
    read: bool,
    now: Millis,
) -> Result<ReceiptOutcome, StoreError> {
    let log: LogRow =
        user_logs::table.find(username).select(LogRow::as_select()).get_result(c).optional()?.unwrap_or_default();
    if up_to > log.last_offset {
        return Ok(ReceiptOutcome::PastEnd { last_offset: log.last_offset });
    }
    let cursor: i64 = Statement::<Sqlite, BigInt>::new(CURSOR)
        .bind::<Text, _>(username)
        .bind::<Text, _>(device)
        .bind::<BigInt, _>(up_to)
        .bind::<BigInt, _>(now)
        .get_result(c)?;
    let already = if read { log.read_offset } else { log.received_offset };
    if up_to <= already {
        return Ok(ReceiptOutcome::Recorded { cursor, acks: Vec::new() });
    }

    // A sender's messages to one receiver take user_offsets and receiver_offsets in the same
    // order (both are reserved under the same row locks), so the newest by either is one row.
    // SQLite fills the bare `client_id` from the row that holds the max().
    let tops: Vec<(String, i64, String)> = Statement::<Sqlite, (Text, BigInt, Text)>::new(concat!(
        "SELECT sender, max(user_offset), client_id FROM messages ",
        "WHERE receiver = ? AND receiver_offset > ? AND receiver_offset <= ? GROUP BY sender"
    ))
    .bind::<Text, _>(username)
    .bind::<BigInt, _>(already)
    .bind::<BigInt, _>(up_to)
    .load(c)?;
    let mut acks = Vec::with_capacity(tops.len());
    for (sender, user_offset, client_id) in tops {
        let (a, b) = conversation_key(username, &sender);
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
        .bind::<Text, _>(username)
        .bind::<BigInt, _>(user_offset)
        .bind::<Bool, _>(read)
        .get_result(c)?;
        acks.push(ReceivedUpTo { sender, user_offset, client_id, conversation });
    }
    // The log row was read above, inside this same write transaction.
    let received = log.received_offset.max(up_to);
    let read_to = if read { log.read_offset.max(up_to) } else { log.read_offset };
    Statement::<Sqlite>::new("UPDATE user_logs SET received_offset = ?, read_offset = ? WHERE username = ?")
        .bind::<BigInt, _>(received)
        .bind::<BigInt, _>(read_to)
        .bind::<Text, _>(username)
        .execute(c)?;
    Ok(ReceiptOutcome::Recorded { cursor, acks })
}

/// Moves a device's cursor forward (never back) and returns it.
const CURSOR: &str = concat!(
    "INSERT INTO device_cursors (username, device_id, acked_offset, updated_at) VALUES (?, ?, ?, ?) ",
    "ON CONFLICT (username, device_id) DO UPDATE SET updated_at = excluded.updated_at, acked_offset = ",
    "CASE WHEN excluded.acked_offset > device_cursors.acked_offset THEN excluded.acked_offset ",
    "ELSE device_cursors.acked_offset END RETURNING acked_offset"
);

/// A round of receipts, each of another user, as one PostgreSQL statement, taking the steps of
/// the SQLite path for every receipt at once: `log` reads each log's counters (zero without a
/// log) and what was acknowledged `already`; cursors and marks change only for an `up_to`
/// within its log, acknowledgements only past `already`. A conversation both of whose users
/// acknowledge in the round is updated once, with both users' marks (`marks`). The result is
/// one JSON document ([`RoundJson`]), so that rows of four shapes come back in one round trip.
///
/// `COLLATE "C"` compares bytes, as Rust's `str` ordering in [`conversation_key`] does.
const RECEIPTS_PG: &str = concat!(
    "WITH arg AS (SELECT * FROM unnest(?, ?, ?, ?) WITH ORDINALITY AS r(username, device, up_to, is_read, idx)), ",
    "log AS (SELECT a.*, coalesce(l.last_offset, 0) AS last_offset, ",
    "coalesce(CASE WHEN a.is_read THEN l.read_offset ELSE l.received_offset END, 0) AS already ",
    "FROM arg a LEFT JOIN user_logs l ON l.username = a.username), ",
    "moved AS (INSERT INTO device_cursors (username, device_id, acked_offset, updated_at) ",
    "SELECT username, device, up_to, ? FROM log WHERE up_to <= last_offset ORDER BY username, device ",
    "ON CONFLICT (username, device_id) DO UPDATE SET updated_at = excluded.updated_at, ",
    "acked_offset = GREATEST(device_cursors.acked_offset, excluded.acked_offset) ",
    "RETURNING username, acked_offset), ",
    "tops AS (SELECT g.idx, g.username AS receiver, g.is_read, t.sender, t.top, t.client_id, ",
    "CASE WHEN t.sender < g.username COLLATE \"C\" THEN t.sender ELSE g.username END AS key_a, ",
    "CASE WHEN t.sender < g.username COLLATE \"C\" THEN g.username ELSE t.sender END AS key_b ",
    "FROM log g CROSS JOIN LATERAL (SELECT DISTINCT ON (m.sender) m.sender, m.user_offset AS top, m.client_id ",
    "FROM messages m WHERE m.receiver = g.username AND m.receiver_offset > g.already ",
    "AND m.receiver_offset <= g.up_to ORDER BY m.sender, m.user_offset DESC) AS t ",
    "WHERE g.up_to <= g.last_offset), ",
    "marks AS (SELECT key_a, key_b, ",
    "coalesce(max(top) FILTER (WHERE receiver = key_a), 0) AS a_received, ",
    "coalesce(max(top) FILTER (WHERE receiver = key_a AND is_read), 0) AS a_read, ",
    "coalesce(max(top) FILTER (WHERE receiver = key_b), 0) AS b_received, ",
    "coalesce(max(top) FILTER (WHERE receiver = key_b AND is_read), 0) AS b_read ",
    "FROM tops GROUP BY key_a, key_b), ",
    "acked AS (UPDATE conversations c SET a_received = GREATEST(c.a_received, k.a_received), ",
    "a_read = GREATEST(c.a_read, k.a_read), b_received = GREATEST(c.b_received, k.b_received), ",
    "b_read = GREATEST(c.b_read, k.b_read) FROM marks k WHERE c.user_a = k.key_a AND c.user_b = k.key_b ",
    "RETURNING ",
    conversation_columns!(c),
    "), ",
    "marked AS (UPDATE user_logs u SET received_offset = GREATEST(u.received_offset, g.up_to), ",
    "read_offset = CASE WHEN g.is_read THEN GREATEST(u.read_offset, g.up_to) ELSE u.read_offset END ",
    "FROM log g WHERE u.username = g.username AND g.up_to <= g.last_offset AND g.up_to > g.already) ",
    "SELECT json_build_object(",
    "'logs', (SELECT coalesce(json_agg(json_build_object('idx', idx, 'last_offset', last_offset)), '[]') FROM log), ",
    "'cursors', (SELECT coalesce(json_agg(json_build_object('username', username, 'cursor', acked_offset)), '[]') ",
    "FROM moved), ",
    "'tops', (SELECT coalesce(json_agg(json_build_object('idx', idx, 'sender', sender, 'user_offset', top, ",
    "'client_id', client_id, 'user_a', key_a, 'user_b', key_b)), '[]') FROM tops), ",
    "'conversations', (SELECT coalesce(json_agg(a), '[]') FROM acked a))::text"
);

/// What [`RECEIPTS_PG`] returns.
#[derive(Debug, Deserialize)]
struct RoundJson {
    /// Every receipt's log end, by its 1-based place in the round.
    logs: Vec<LogJson>,
    /// The cursors that moved, by user (a round has one receipt per user).
    cursors: Vec<CursorJson>,
    /// The newest acknowledged message of each sender, per receipt.
    tops: Vec<TopJson>,
    /// The acknowledged conversations, after the round.
    conversations: Vec<ConversationRow>,
}

#[derive(Debug, Deserialize)]
struct LogJson {
    idx: usize,
    last_offset: i64,
}

#[derive(Debug, Deserialize)]
struct CursorJson {
    username: String,
    cursor: i64,
}

#[derive(Debug, Deserialize)]
struct TopJson {
    idx: usize,
    sender: String,
    user_offset: i64,
    client_id: String,
    user_a: String,
    user_b: String,
}

/// Splits receipts into rounds in which each user appears once: a user's k-th receipt goes
/// to round k, so a user's receipts keep their order.
fn rounds(receipts: &[ReceiptRequest<'_>]) -> Vec<Vec<usize>> {
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (index, receipt) in receipts.iter().enumerate() {
        let round = seen.entry(receipt.username).or_insert(0);
        if rounds.len() <= *round {
            rounds.push(Vec::new());
        }
        rounds[*round].push(index);
        *round += 1;
    }
    rounds
}

fn receipts_pg(
    c: &mut PgConnection,
    receipts: &[ReceiptRequest<'_>],
    now: Millis,
) -> Result<Vec<ReceiptOutcome>, StoreError> {
    // Every conversation of the batch's receipts at once, in order, before any round takes one.
    super::lock::lock_receipt_conversations(c, receipts.iter().map(|r| (r.username, r.up_to, r.read)))?;
    let mut outcomes: Vec<Option<ReceiptOutcome>> = vec![None; receipts.len()];
    for round in rounds(receipts) {
        let batch: Vec<ReceiptRequest<'_>> = round.iter().map(|&i| receipts[i]).collect();
        let json: String = Statement::<Pg, Text>::new(RECEIPTS_PG)
            .bind::<Array<Text>, _>(batch.iter().map(|r| r.username).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(batch.iter().map(|r| r.device).collect::<Vec<_>>())
            .bind::<Array<BigInt>, _>(batch.iter().map(|r| r.up_to).collect::<Vec<_>>())
            .bind::<Array<Bool>, _>(batch.iter().map(|r| r.read).collect::<Vec<_>>())
            .bind::<BigInt, _>(now)
            .get_result(c)?;
        let result: RoundJson = serde_json::from_str(&json)
            .map_err(|e| StoreError::Corrupt(format!("a receipt round's result does not parse: {e}")))?;
        let cursors: HashMap<String, i64> = result.cursors.into_iter().map(|c| (c.username, c.cursor)).collect();
        let conversations: HashMap<(String, String), ConversationRow> =
            result.conversations.into_iter().map(|c| ((c.user_a.clone(), c.user_b.clone()), c)).collect();
        let mut acks: HashMap<usize, Vec<ReceivedUpTo>> = HashMap::new();
        for top in result.tops {
            let Some(conversation) = conversations.get(&(top.user_a, top.user_b)) else {
                return Err(StoreError::Corrupt(format!("no conversation came back for {}'s messages", top.sender)));
            };
            acks.entry(top.idx).or_default().push(ReceivedUpTo {
                sender: top.sender,
                user_offset: top.user_offset,
                client_id: top.client_id,
                conversation: conversation.clone(),
            });
        }
        for log in result.logs {
            let Some(&index) = log.idx.checked_sub(1).and_then(|place| round.get(place)) else {
                return Err(StoreError::Corrupt(format!("a receipt round answered for place {}", log.idx)));
            };
            let outcome = match cursors.get(receipts[index].username) {
                None => ReceiptOutcome::PastEnd { last_offset: log.last_offset },
                Some(&cursor) => {
                    let mut acks = acks.remove(&log.idx).unwrap_or_default();
                    acks.sort_by(|a, b| a.sender.cmp(&b.sender));
                    ReceiptOutcome::Recorded { cursor, acks }
                }
            };
            outcomes[index] = Some(outcome);
        }
    }
    outcomes.into_iter().map(|o| o.ok_or_else(|| StoreError::Corrupt("a receipt got no outcome".into()))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_holds_one_receipt_per_user_and_a_users_receipts_keep_their_order() {
        let receipt = |username| ReceiptRequest { username, device: "", up_to: 1, read: false };
        let receipts = [receipt("ann"), receipt("ben"), receipt("ann"), receipt("cat"), receipt("ann"), receipt("ben")];
        assert_eq!(rounds(&receipts), vec![vec![0, 1, 3], vec![2, 5], vec![4]]);
        assert!(rounds(&[]).is_empty());
    }
}
