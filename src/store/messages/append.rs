//! Storing a batch of messages: the idempotency lookup by `(sender, client_id)`, offsets for
//! every new message (the sender's log, the receiver's log, the conversation), and the insert.
//!
//! On SQLite this is a run of cached one-row statements, and a round trip is a function call.
//! On PostgreSQL every round trip costs wake-ups on both sides, so a batch is two statements
//! whatever its size: one lookup, and one write that reserves the offsets and inserts the rows
//! (a third reads the conversations of messages stored before, when there are any).

use std::collections::{BTreeMap, HashMap, HashSet};

use diesel::pg::{Pg, PgConnection};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Binary, Nullable, Text};
use diesel::sqlite::{Sqlite, SqliteConnection};

use super::{ConversationRow, ConversationSql, MAX_OFFSET, MessageRow, MessageSql, conversation_key};
use crate::store::schema::{conversations, messages};
use crate::store::statement::Statement;
use crate::store::{DbConnection, Millis, StoreError};

/// A message for [`append`] to store; its offsets are handed out there.
#[derive(Debug, Clone, Copy)]
pub struct NewMessage<'a> {
    /// The sending user.
    pub sender: &'a str,
    /// The sender's id for the message.
    pub client_id: &'a str,
    /// The sending device, if the socket named one.
    pub sender_device: Option<&'a str>,
    /// The receiving user.
    pub receiver: &'a str,
    /// The client's creation time.
    pub sent_at: Millis,
    /// Plain content.
    pub payload: &'a [u8],
    /// The encryption scheme's name, or empty.
    pub encryption_type: &'a str,
    /// Base64 ciphertext, or empty.
    pub encrypted: &'a str,
    /// Base64 signature, or empty.
    pub signature: &'a str,
}

/// A message as [`append`] found or left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The stored row, with its offsets.
    pub row: MessageRow,
    /// How far the receiver has acknowledged the conversation as received.
    pub peer_received: i64,
    /// Stored by an earlier call: this one wrote nothing for it.
    pub existed: bool,
}

/// Stores `batch`, whose `(sender, client_id)` keys must be distinct, and returns what became
/// of each message, in batch order: `None` when its receiver is not a user (nothing is stored).
///
/// Offsets are handed out in batch order: messages that share a log or a conversation get
/// consecutive offsets in it, in the order they come. Logs and conversations are locked in
/// sorted order, so concurrent appends lock them alike. Runs inside the caller's transaction.
///
/// A batch that would take any log or conversation past [`MAX_OFFSET`] inserts no row and
/// fails with [`StoreError::LogFull`]; the caller's transaction then rolls the reservations
/// back, so none of the batch is stored.
pub fn append(
    conn: &mut DbConnection,
    batch: &[NewMessage<'_>],
    now: Millis,
) -> Result<Vec<Option<StoredMessage>>, StoreError> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    match conn {
        DbConnection::Sqlite(c) => append_sqlite(c, batch, now),
        DbConnection::Pg(c) => append_pg(c, batch, now),
    }
}

/// Where the new messages of a batch go: how many offsets each log and conversation needs
/// (sorted: the lock order), and each message's place among them.
///
/// A log or conversation that gets `n` new offsets ends at its new last offset `last`; the
/// message that is k-th of the `n` gets `last - n + k`, so each message carries `k - n`, a
/// delta from the last offset that the database hands back.
struct OffsetPlan<'a> {
    log_counts: Vec<(&'a str, i64)>,
    conversation_counts: Vec<((&'a str, &'a str), i64)>,
    /// Per new message, in order: the deltas in the sender's log, the receiver's log and the
    /// conversation.
    deltas: Vec<Deltas>,
}

#[derive(Debug, Clone, Copy)]
struct Deltas {
    sender: i64,
    receiver: i64,
    conversation: i64,
}

impl<'a> OffsetPlan<'a> {
    /// Plans `fresh` in order; the sender's offset comes before the receiver's.
    fn new(fresh: &[NewMessage<'a>]) -> Self {
        let mut logs: BTreeMap<&'a str, i64> = BTreeMap::new();
        let mut conversations: BTreeMap<(&'a str, &'a str), i64> = BTreeMap::new();
        let mut places = Vec::with_capacity(fresh.len());
        for m in fresh {
            let mut next = |user: &'a str| {
                let count = logs.entry(user).or_default();
                *count += 1;
                *count
            };
            let sender = next(m.sender);
            let receiver = next(m.receiver);
            let count = conversations.entry(conversation_key(m.sender, m.receiver)).or_default();
            *count += 1;
            places.push((sender, receiver, *count));
        }
        let deltas = fresh
            .iter()
            .zip(places)
            .map(|(m, (sender, receiver, conversation))| Deltas {
                sender: sender - logs[m.sender],
                receiver: receiver - logs[m.receiver],
                conversation: conversation - conversations[&conversation_key(m.sender, m.receiver)],
            })
            .collect();
        OffsetPlan {
            log_counts: logs.into_iter().collect(),
            conversation_counts: conversations.into_iter().collect(),
            deltas,
        }
    }
}

/// Refuses a reservation that took `user`'s log (with `peer`: their conversation) to `last`,
/// past [`MAX_OFFSET`]. Called before any row of the batch is inserted.
fn check_room(user: &str, peer: Option<&str>, last: i64) -> Result<(), StoreError> {
    if last <= MAX_OFFSET {
        return Ok(());
    }
    // An operator's concern: this user can no longer send or receive until the log is dealt with.
    tracing::error!(user, peer, last, max = MAX_OFFSET, "message log full: refusing the batch");
    let log = match peer {
        None => format!("{user}'s message log"),
        Some(peer) => format!("the conversation of {user} and {peer}"),
    };
    Err(StoreError::LogFull { log })
}

/// The stored row of a new message, once its logs' and conversation's new last offsets are known.
fn new_row(
    m: &NewMessage<'_>,
    deltas: Deltas,
    last_log: &HashMap<String, i64>,
    last_conversation: &HashMap<(String, String), ConversationRow>,
    now: Millis,
) -> Result<(MessageRow, i64), StoreError> {
    let (a, b) = conversation_key(m.sender, m.receiver);
    let key = (a.to_owned(), b.to_owned());
    let log = |user: &str| {
        last_log.get(user).copied().ok_or_else(|| StoreError::Corrupt(format!("no offsets reserved in {user}'s log")))
    };
    let Some(conversation) = last_conversation.get(&key) else {
        return Err(StoreError::Corrupt(format!("no offsets reserved in conversation {key:?}")));
    };
    let row = MessageRow {
        sender: m.sender.to_owned(),
        client_id: m.client_id.to_owned(),
        sender_device: m.sender_device.map(str::to_owned),
        receiver: m.receiver.to_owned(),
        user_offset: conversation.last_user_offset + deltas.conversation,
        sender_offset: log(m.sender)? + deltas.sender,
        receiver_offset: log(m.receiver)? + deltas.receiver,
        sent_at: m.sent_at,
        stored_at: now,
        payload: m.payload.to_vec(),
        encryption_type: m.encryption_type.to_owned(),
        encrypted: m.encrypted.to_owned(),
        signature: m.signature.to_owned(),
    };
    Ok((row, conversation.acked_by(m.receiver).0))
}

/// What a batch's lookup found: which messages are new (by batch index), and the outcome
/// of every message already settled (unknown receiver, or stored before).
fn sort_out<'b, 'a>(
    batch: &'b [NewMessage<'a>],
    known: impl Fn(&str) -> bool,
    mut stored: impl FnMut(&NewMessage<'a>) -> Result<Option<StoredMessage>, StoreError>,
) -> Result<(Vec<Option<StoredMessage>>, Vec<usize>), StoreError> {
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut fresh = Vec::new();
    for (index, m) in batch.iter().enumerate() {
        if !known(m.receiver) {
            outcomes.push(None);
            continue;
        }
        let found = stored(m)?;
        if found.is_none() {
            fresh.push(index);
        }
        outcomes.push(found);
    }
    Ok((outcomes, fresh))
}

fn append_sqlite(
    c: &mut SqliteConnection,
    batch: &[NewMessage<'_>],
    now: Millis,
) -> Result<Vec<Option<StoredMessage>>, StoreError> {
    let mut known: HashMap<&str, bool> = HashMap::new();
    for m in batch {
        if !known.contains_key(m.receiver) {
            known.insert(m.receiver, user_exists(c, m.receiver)?);
        }
    }
    let (mut outcomes, fresh) = sort_out(
        batch,
        |user| known.get(user).copied().unwrap_or(false),
        |m| {
            let Some(row) = messages::table
                .find((m.sender, m.client_id))
                .select(MessageRow::as_select())
                .get_result(c)
                .optional()?
            else {
                return Ok(None);
            };
            let (a, b) = conversation_key(&row.sender, &row.receiver);
            let peer_received = conversation_sqlite(c, a, b)?.acked_by(&row.receiver).0;
            Ok(Some(StoredMessage { row, peer_received, existed: true }))
        },
    )?;
    let new: Vec<NewMessage<'_>> = fresh.iter().map(|&i| batch[i]).collect();
    let plan = OffsetPlan::new(&new);

    let mut last_log: HashMap<String, i64> = HashMap::with_capacity(plan.log_counts.len());
    for &(user, n) in &plan.log_counts {
        let last: i64 = Statement::<Sqlite, BigInt>::new(concat!(
            "INSERT INTO user_logs (username, last_offset) VALUES (?, ?) ON CONFLICT (username) ",
            "DO UPDATE SET last_offset = user_logs.last_offset + excluded.last_offset RETURNING last_offset"
        ))
        .bind::<Text, _>(user)
        .bind::<BigInt, _>(n)
        .get_result(c)?;
        check_room(user, None, last)?;
        last_log.insert(user.to_owned(), last);
    }
    let mut last_conversation: HashMap<(String, String), ConversationRow> =
        HashMap::with_capacity(plan.conversation_counts.len());
    for &((a, b), n) in &plan.conversation_counts {
        let row: ConversationRow = Statement::<Sqlite, ConversationSql>::new(concat!(
            "INSERT INTO conversations (user_a, user_b, last_user_offset) VALUES (?, ?, ?) ",
            "ON CONFLICT (user_a, user_b) DO UPDATE ",
            "SET last_user_offset = conversations.last_user_offset + excluded.last_user_offset ",
            "RETURNING ",
            conversation_columns!()
        ))
        .bind::<Text, _>(a)
        .bind::<Text, _>(b)
        .bind::<BigInt, _>(n)
        .get_result(c)?;
        check_room(a, Some(b), row.last_user_offset)?;
        last_conversation.insert((a.to_owned(), b.to_owned()), row);
    }

    for (&index, &deltas) in fresh.iter().zip(&plan.deltas) {
        let (row, peer_received) = new_row(&batch[index], deltas, &last_log, &last_conversation, now)?;
        insert_sqlite(c, &row)?;
        outcomes[index] = Some(StoredMessage { row, peer_received, existed: false });
    }
    Ok(outcomes)
}

/// `store::users::exists` on the inner SQLite connection this path holds.
fn user_exists(c: &mut SqliteConnection, username: &str) -> Result<bool, StoreError> {
    let found: Option<String> =
        Statement::<Sqlite, Text>::new("SELECT username FROM users WHERE username = ? AND deleted_at IS NULL")
            .bind::<Text, _>(username)
            .get_result(c)
            .optional()?;
    Ok(found.is_some())
}

fn conversation_sqlite(c: &mut SqliteConnection, a: &str, b: &str) -> Result<ConversationRow, StoreError> {
    conversations::table
        .find((a, b))
        .select(ConversationRow::as_select())
        .get_result(c)
        .optional()?
        .ok_or_else(|| StoreError::Corrupt(format!("a stored message's conversation {a}/{b} is missing")))
}

fn insert_sqlite(c: &mut SqliteConnection, row: &MessageRow) -> Result<(), StoreError> {
    Statement::<Sqlite>::new(concat!(
        "INSERT INTO messages (",
        message_columns!(),
        ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
    Ok(())
}

/// Which receivers are users (a row with only `username`), and which messages are stored
/// (a row with only the message), in one round trip. Planned per run: with a cached plan, a
/// new database kept scanning all of `messages` (0.8 ms a batch after 10 s, and growing).
const LOOKUP_PG: &str = concat!(
    "SELECT username, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL ",
    "FROM users WHERE username = ANY(?) AND deleted_at IS NULL ",
    "UNION ALL SELECT NULL, ",
    message_columns!(),
    " FROM messages WHERE (sender, client_id) IN (SELECT * FROM unnest(?, ?))"
);

/// The conversation of each stored message, for its receiver's received mark.
const CONVERSATIONS_PG: &str = concat!(
    "SELECT ",
    conversation_columns!(c),
    " FROM conversations c JOIN unnest(?, ?) AS k(a, b) ON c.user_a = k.a AND c.user_b = k.b"
);

/// The write of a batch: both upserts reserve offsets (their input sorted by the caller, the
/// lock order), and the insert reads each log's and conversation's new last offset from a
/// JSON object built once, so every row costs a lookup instead of a join whose plan PostgreSQL
/// would choose from a guessed row count (a nested loop over 400 rows took 20 ms). The result
/// is each log's new last offset (`user_b` NULL) and each conversation's new row. When a new
/// last offset passes 2147483647 ([`MAX_OFFSET`]) the insert takes no row (`full`), and the
/// caller, seeing that offset in the result, fails the transaction.
const WRITE_PG: &str = concat!(
    "WITH logs AS (INSERT INTO user_logs (username, last_offset) SELECT * FROM unnest(?, ?) ",
    "ON CONFLICT (username) DO UPDATE SET last_offset = user_logs.last_offset + excluded.last_offset ",
    "RETURNING username, last_offset), ",
    "advanced AS (INSERT INTO conversations (user_a, user_b, last_user_offset) SELECT * FROM unnest(?, ?, ?) ",
    "ON CONFLICT (user_a, user_b) DO UPDATE ",
    "SET last_user_offset = conversations.last_user_offset + excluded.last_user_offset ",
    "RETURNING ",
    conversation_columns!(),
    "), ",
    "lasts AS (SELECT (SELECT jsonb_object_agg(username, last_offset) FROM logs) AS logs, ",
    "(SELECT jsonb_object_agg(user_a, per_b) FROM (SELECT user_a, jsonb_object_agg(user_b, last_user_offset) AS per_b ",
    "FROM advanced GROUP BY user_a) AS by_a) AS conversations, ",
    "(SELECT bool_or(last_offset > 2147483647) FROM logs) OR ",
    "(SELECT bool_or(last_user_offset > 2147483647) FROM advanced) AS full), ",
    "inserted AS (INSERT INTO messages (",
    message_columns!(),
    ") SELECT m.sender, m.client_id, m.sender_device, m.receiver, ",
    "(l.conversations -> m.key_a ->> m.key_b)::bigint + m.conversation_delta, ",
    "(l.logs ->> m.sender)::bigint + m.sender_delta, (l.logs ->> m.receiver)::bigint + m.receiver_delta, ",
    "m.sent_at, ?, m.payload, m.encryption_type, m.encrypted, m.signature ",
    "FROM lasts l, unnest(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) AS m(sender, client_id, sender_device, receiver, ",
    "key_a, key_b, sender_delta, receiver_delta, conversation_delta, sent_at, payload, encryption_type, encrypted, ",
    "signature) WHERE l.full IS NOT TRUE) ",
    "SELECT username, NULL, last_offset, 0, 0, 0, 0 FROM logs UNION ALL SELECT ",
    conversation_columns!(),
    " FROM advanced"
);

/// A row of [`LOOKUP_PG`]: a known username, or a stored message.
type LookupRow = (Option<String>, Option<MessageRow>);

/// A row of [`WRITE_PG`]: a log's username and new last offset with the rest zero, or a
/// conversation's row (the columns of a [`ConversationRow`]).
type LastRow = (String, Option<String>, i64, i64, i64, i64, i64);

fn append_pg(
    c: &mut PgConnection,
    batch: &[NewMessage<'_>],
    now: Millis,
) -> Result<Vec<Option<StoredMessage>>, StoreError> {
    let receivers: Vec<&str> = column(batch, |m| m.receiver);
    let found: Vec<LookupRow> = Statement::<Pg, (Nullable<Text>, Nullable<MessageSql>)>::new(LOOKUP_PG)
        .planned_per_run()
        .bind::<Array<Text>, _>(&receivers)
        .bind::<Array<Text>, _>(column(batch, |m| m.sender))
        .bind::<Array<Text>, _>(column(batch, |m| m.client_id))
        .load(c)?;
    let mut known: HashSet<String> = HashSet::new();
    let mut stored: HashMap<(String, String), MessageRow> = HashMap::new();
    for (user, row) in found {
        known.extend(user);
        if let Some(row) = row {
            stored.insert((row.sender.clone(), row.client_id.clone()), row);
        }
    }
    let conversations_of_stored: HashMap<(String, String), ConversationRow> = if stored.is_empty() {
        HashMap::new()
    } else {
        stored_conversations(c, &stored)?.into_iter().map(|c| ((c.user_a.clone(), c.user_b.clone()), c)).collect()
    };
    let (mut outcomes, fresh) = sort_out(
        batch,
        |user| known.contains(user),
        |m| {
            let Some(row) = stored.remove(&(m.sender.to_owned(), m.client_id.to_owned())) else { return Ok(None) };
            let (a, b) = conversation_key(&row.sender, &row.receiver);
            let Some(conversation) = conversations_of_stored.get(&(a.to_owned(), b.to_owned())) else {
                return Err(StoreError::Corrupt(format!("a stored message's conversation {a}/{b} is missing")));
            };
            let peer_received = conversation.acked_by(&row.receiver).0;
            Ok(Some(StoredMessage { row, peer_received, existed: true }))
        },
    )?;
    if fresh.is_empty() {
        return Ok(outcomes);
    }

    let new: Vec<NewMessage<'_>> = fresh.iter().map(|&i| batch[i]).collect();
    let plan = OffsetPlan::new(&new);
    let (users, log_ns): (Vec<&str>, Vec<i64>) = plan.log_counts.iter().copied().unzip();
    let (pairs, conversation_ns): (Vec<(&str, &str)>, Vec<i64>) = plan.conversation_counts.iter().copied().unzip();
    let (pair_a, pair_b): (Vec<&str>, Vec<&str>) = pairs.into_iter().unzip();
    let (key_a, key_b): (Vec<&str>, Vec<&str>) = new.iter().map(|m| conversation_key(m.sender, m.receiver)).unzip();
    let delta = |field: fn(&Deltas) -> i64| plan.deltas.iter().map(field).collect::<Vec<i64>>();
    let lasts: Vec<LastRow> =
        Statement::<Pg, (Text, Nullable<Text>, BigInt, BigInt, BigInt, BigInt, BigInt)>::new(WRITE_PG)
            .bind::<Array<Text>, _>(users)
            .bind::<Array<BigInt>, _>(log_ns)
            .bind::<Array<Text>, _>(pair_a)
            .bind::<Array<Text>, _>(pair_b)
            .bind::<Array<BigInt>, _>(conversation_ns)
            .bind::<BigInt, _>(now)
            .bind::<Array<Text>, _>(column(&new, |m| m.sender))
            .bind::<Array<Text>, _>(column(&new, |m| m.client_id))
            .bind::<Array<Nullable<Text>>, _>(column(&new, |m| m.sender_device))
            .bind::<Array<Text>, _>(column(&new, |m| m.receiver))
            .bind::<Array<Text>, _>(key_a)
            .bind::<Array<Text>, _>(key_b)
            .bind::<Array<BigInt>, _>(delta(|d| d.sender))
            .bind::<Array<BigInt>, _>(delta(|d| d.receiver))
            .bind::<Array<BigInt>, _>(delta(|d| d.conversation))
            .bind::<Array<BigInt>, _>(column(&new, |m| m.sent_at))
            .bind::<Array<Binary>, _>(column(&new, |m| m.payload))
            .bind::<Array<Text>, _>(column(&new, |m| m.encryption_type))
            .bind::<Array<Text>, _>(column(&new, |m| m.encrypted))
            .bind::<Array<Text>, _>(column(&new, |m| m.signature))
            .load(c)?;
    let mut last_log: HashMap<String, i64> = HashMap::new();
    let mut last_conversation: HashMap<(String, String), ConversationRow> = HashMap::new();
    for (user_a, user_b, last_user_offset, a_received, a_read, b_received, b_read) in lasts {
        check_room(&user_a, user_b.as_deref(), last_user_offset)?;
        match user_b {
            None => {
                last_log.insert(user_a, last_user_offset);
            }
            Some(user_b) => {
                let key = (user_a.clone(), user_b.clone());
                let row = ConversationRow { user_a, user_b, last_user_offset, a_received, a_read, b_received, b_read };
                last_conversation.insert(key, row);
            }
        }
    }
    for (&index, &deltas) in fresh.iter().zip(&plan.deltas) {
        let (row, peer_received) = new_row(&batch[index], deltas, &last_log, &last_conversation, now)?;
        outcomes[index] = Some(StoredMessage { row, peer_received, existed: false });
    }
    Ok(outcomes)
}

/// The conversations of messages stored before.
fn stored_conversations(
    c: &mut PgConnection,
    stored: &HashMap<(String, String), MessageRow>,
) -> Result<Vec<ConversationRow>, StoreError> {
    let (a, b): (Vec<&str>, Vec<&str>) =
        stored.values().map(|row| conversation_key(&row.sender, &row.receiver)).unzip();
    Ok(Statement::<Pg, ConversationSql>::new(CONVERSATIONS_PG)
        .bind::<Array<Text>, _>(a)
        .bind::<Array<Text>, _>(b)
        .load(c)?)
}

/// One field of every message, as an array bind.
fn column<'a, T>(batch: &[NewMessage<'a>], field: impl Fn(&NewMessage<'a>) -> T) -> Vec<T> {
    batch.iter().map(field).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_postgres_write_stops_at_max_offset_in_logs_and_conversations() {
        // concat! takes only literals, so the bound is written out in WRITE_PG; it must stay
        // MAX_OFFSET.
        let bound = format!("> {MAX_OFFSET})");
        assert_eq!(WRITE_PG.matches(&bound).count(), 2, "{WRITE_PG}");
        assert!(WRITE_PG.contains("WHERE l.full IS NOT TRUE"), "{WRITE_PG}");
    }
}
