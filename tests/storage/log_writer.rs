//! The log writer's batch (`messaging::log::apply`) on each backend: offsets reserved for many
//! logs and conversations at once come back gap-free and matched to the right rows, duplicates
//! are found within and across batches, and a batch of a shape seen before prepares no new
//! statement (diesel caches every statement on this path but PostgreSQL's lookup, planned per
//! run on purpose). On PostgreSQL the batch locks its logs first (one statement), the messages
//! take two statements, and the receipts one lock of their conversations and one per round.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use courier::accounts::{HashAlgorithm, MessagePolicy};
use courier::messaging::MessagingError;
use courier::messaging::log::{self, Append, Receipt, Write, Written};
use courier::messaging::wire;
use courier::pb;
use courier::store::messages::{self, MessageRow};
use courier::store::{Backend, DbConnection, StoreError, read_transaction, write_transaction};
use diesel::Connection;
use diesel::connection::InstrumentationEvent;

use crate::support::{PW, T0, TestDb, config};

backend_tests!(
    a_batch_over_many_conversations_is_gap_free_and_deduplicated,
    a_repeated_batch_shape_prepares_nothing_new,
    receipts_in_one_batch_act_as_if_one_after_another,
    one_id_sent_to_two_receivers_in_a_batch_acts_as_in_two_batches
);

const USERS: [&str; 5] = ["ann", "ben", "cat", "dan", "eve"];

async fn with_users(db: &TestDb) -> courier::store::Store {
    let accounts = db.accounts(config());
    for user in USERS {
        accounts.signup(user, PW, HashAlgorithm::Argon2id).await.expect("signup");
    }
    db.open()
}

/// A message from `sender` to `to` with the client id `id` (from a "phone", except eve's).
pub(crate) fn append(sender: &str, to: &str, id: &str) -> Write {
    Write::Append(Append {
        sender: sender.to_owned(),
        sender_device: Some("phone".to_owned()).filter(|_| sender != "eve"),
        policy: MessagePolicy::new(false),
        message: pb::Message {
            id: id.to_owned(),
            from: Some(wire::identity(sender, None)),
            to: Some(wire::identity(to, None)),
            timestamp: T0,
            payload: format!("{sender}->{to}:{id}").into_bytes(),
            ..pb::Message::default()
        },
    })
}

/// Every ordered pair of users, `rounds` times, each message with a fresh id.
fn all_pairs(rounds: usize, tag: &str) -> Vec<Write> {
    let mut writes = Vec::new();
    for round in 0..rounds {
        for from in USERS {
            for to in USERS.iter().filter(|&&to| to != from) {
                writes.push(append(from, to, &format!("{tag}-{round}-{from}-{to}")));
            }
        }
    }
    writes
}

fn apply(conn: &mut DbConnection, writes: &[Write]) -> Vec<Result<Written, MessagingError>> {
    write_transaction(conn, |c| log::apply(c, writes, T0 + 1)).expect("the batch commits")
}

fn appended(result: &Result<Written, MessagingError>) -> (&MessageRow, bool) {
    match result {
        Ok(Written::Appended(a)) => (&a.row, a.duplicate),
        other => panic!("expected a stored message, got {other:?}"),
    }
}

async fn a_batch_over_many_conversations_is_gap_free_and_deduplicated(db: &TestDb) {
    let store = with_users(db).await;
    store
        .run(|conn| {
            let mut first = all_pairs(2, "a");
            // The same (sender, id) twice in one batch, and a recipient that does not exist.
            first.push(append("ann", "ben", "a-0-ann-ben"));
            first.push(append("ann", "nobody", "lost"));
            let results = apply(conn, &first);
            let n = first.len();
            assert!(matches!(results[n - 1], Err(MessagingError::UnknownRecipient)), "{:?}", results[n - 1]);
            let (original, dup) = appended(&results[0]);
            assert!(!dup);
            let (again, dup) = appended(&results[n - 2]);
            assert!(dup, "the second copy in one batch is a duplicate");
            assert_eq!(again, original, "and answers with the first copy's row");

            // Every row's three offsets match what the database now holds, and each log and
            // conversation is 1..=k with no gap.
            let mut conversation_offsets: BTreeMap<(String, String), Vec<i64>> = BTreeMap::new();
            for result in &results[..n - 2] {
                let (row, dup) = appended(result);
                assert!(!dup, "{} is new", row.client_id);
                let pair = messages::conversation_key(&row.sender, &row.receiver);
                conversation_offsets.entry((pair.0.to_owned(), pair.1.to_owned())).or_default().push(row.user_offset);
                let found = messages::find_stored(conn, &[(row.sender.as_str(), row.client_id.as_str())])?;
                assert_eq!(found, vec![row.clone()], "the returned row is the stored row");
            }
            for user in USERS {
                let offsets = read_transaction(conn, |s| messages::log_offsets(s, user))?;
                // 2 rounds × 4 peers × (sent + received) = 16 entries.
                assert_eq!(offsets, (1..=16).collect::<Vec<i64>>(), "{user}'s log");
                assert_eq!(
                    read_transaction(conn, |s| messages::log_state(s, user))?.last_offset,
                    16,
                    "{user}'s counter"
                );
            }
            assert_eq!(conversation_offsets.len(), 10, "every pair of five users");
            for (pair, mut offsets) in conversation_offsets {
                offsets.sort_unstable();
                assert_eq!(offsets, vec![1, 2, 3, 4], "conversation {pair:?}");
            }

            // A later batch: the old ids are duplicates with their original rows; new ids
            // continue every sequence.
            let first_rows: HashMap<(String, String), MessageRow> = results[..n - 2]
                .iter()
                .map(|r| appended(r).0)
                .map(|row| ((row.sender.clone(), row.client_id.clone()), row.clone()))
                .collect();
            let mut second = all_pairs(1, "a");
            second.extend(all_pairs(1, "b"));
            let results = apply(conn, &second);
            for result in &results[..20] {
                let (row, dup) = appended(result);
                assert!(dup, "{} was stored by the first batch", row.client_id);
                assert_eq!(Some(row), first_rows.get(&(row.sender.clone(), row.client_id.clone())));
            }
            let mut continued: BTreeMap<(String, String), Vec<i64>> = BTreeMap::new();
            for result in &results[20..] {
                let (row, dup) = appended(result);
                assert!(!dup);
                assert!((17..=24).contains(&row.sender_offset), "{row:?}");
                assert!((17..=24).contains(&row.receiver_offset), "{row:?}");
                let pair = messages::conversation_key(&row.sender, &row.receiver);
                continued.entry((pair.0.to_owned(), pair.1.to_owned())).or_default().push(row.user_offset);
            }
            for (pair, mut offsets) in continued {
                offsets.sort_unstable();
                assert_eq!(offsets, vec![5, 6], "conversation {pair:?} continues");
            }
            for user in USERS {
                assert_eq!(
                    read_transaction(conn, |s| messages::log_offsets(s, user))?,
                    (1..=24).collect::<Vec<i64>>(),
                    "{user}'s log"
                );
            }
            Ok::<_, StoreError>(())
        })
        .await
        .expect("store");
}

/// What a connection's instrumentation saw: statements run, and statements added to diesel's
/// prepared-statement cache.
#[derive(Default)]
struct Seen {
    run: Vec<String>,
    cached: Vec<String>,
}

async fn a_repeated_batch_shape_prepares_nothing_new(db: &TestDb) {
    let store = with_users(db).await;
    let (seen, first_run, first_cached) = store
        .run(|conn| {
            let seen = Arc::new(Mutex::new(Seen::default()));
            let sink = Arc::clone(&seen);
            conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
                let mut seen = sink.lock().expect("instrumentation lock");
                match event {
                    InstrumentationEvent::StartQuery { query, .. } => {
                        let text = query.to_string();
                        seen.run.push(text.split(" -- binds:").next().unwrap_or_default().to_owned());
                    }
                    InstrumentationEvent::CacheQuery { sql, .. } => seen.cached.push(sql.to_owned()),
                    _ => {}
                }
            });
            let receipt = |user: &str, up_to| {
                Write::Receipt(Receipt { user: user.to_owned(), device: "phone".to_owned(), up_to, read: false })
            };
            let mut first = all_pairs(1, "x");
            first.push(append("ann", "ben", "x-0-ann-ben"));
            first.push(receipt("ben", 3));
            let results = apply(conn, &first);
            assert!(results.iter().all(Result::is_ok), "{results:?}");
            let (first_run, first_cached) = {
                let seen = seen.lock().expect("lock");
                (seen.run.len(), seen.cached.len())
            };

            let mut second = all_pairs(1, "y");
            second.push(append("ann", "ben", "y-0-ann-ben"));
            second.push(receipt("ben", 6));
            let results = apply(conn, &second);
            assert!(results.iter().all(Result::is_ok), "{results:?}");
            Ok::<_, StoreError>((seen, first_run, first_cached))
        })
        .await
        .expect("store");
    let seen = seen.lock().expect("lock");
    assert!(first_cached > 0, "the instrumentation sees statements being cached");
    assert_eq!(seen.cached[first_cached..], [] as [String; 0], "the second batch prepared statements again");
    // A statement diesel will not cache is prepared on every run and never shows up as cached.
    // PostgreSQL's lookup of receivers and stored ids is the one left out on purpose, to be
    // planned for its binds each time.
    let transaction_control = ["BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"];
    let planned_per_run = |sql: &str| store.backend() == Backend::Postgres && sql.starts_with("SELECT username, NULL");
    let uncached: Vec<&String> = seen.run[first_run..]
        .iter()
        .filter(|sql| !transaction_control.iter().any(|kw| sql.trim_start().starts_with(kw)))
        .filter(|sql| !seen.cached.contains(sql) && !planned_per_run(sql))
        .collect();
    let second_batch = &seen.run[first_run..];
    match store.backend() {
        // A cached statement per row and step: here a function call, not a round trip.
        Backend::Sqlite => assert!(second_batch.len() > 10, "the second batch ran its statements: {second_batch:?}"),
        // The logs locked in order, twenty messages in a lookup and a write, the receipts'
        // conversations locked in order, the receipt in one statement: seven round trips in
        // all, whatever the batch's size.
        Backend::Postgres => {
            let shape: Vec<&str> = second_batch.iter().map(|sql| sql.split(' ').next().unwrap_or_default()).collect();
            assert_eq!(shape, ["BEGIN", "INSERT", "SELECT", "WITH", "WITH", "WITH", "COMMIT"], "{second_batch:#?}");
            assert!(second_batch[1].starts_with("INSERT INTO user_logs"), "{}", second_batch[1]);
            assert!(second_batch[3].starts_with("WITH logs AS"), "{}", second_batch[3]);
            assert!(second_batch[4].contains("FOR UPDATE OF c"), "{}", second_batch[4]);
            assert!(second_batch[5].starts_with("WITH arg AS"), "{}", second_batch[5]);
        }
    }
    assert!(uncached.is_empty(), "statements run without diesel's cache: {uncached:#?}");
}

fn receipt(user: &str, device: &str, up_to: i64, read: bool) -> Write {
    Write::Receipt(Receipt { user: user.to_owned(), device: device.to_owned(), up_to, read })
}

/// (sender, user_offset, client_id, acked) of each conversation a receipt acknowledged.
fn acks_of(result: &Result<Written, MessagingError>) -> (i64, Vec<(String, i64, String, i64)>) {
    match result {
        Ok(Written::Receipt(r)) => {
            (r.cursor, r.acks.iter().map(|a| (a.sender.clone(), a.user_offset, a.client_id.clone(), a.acked)).collect())
        }
        other => panic!("expected a recorded receipt, got {other:?}"),
    }
}

/// PostgreSQL records a batch's receipts set-based, a round per receipt of the same user; the
/// outcome must be what receipts one after another give (the SQLite path, receipt by receipt):
/// two users acknowledging one conversation in the same round both move their marks, a user's
/// second receipt sees the first, and a receipt past the end changes nothing.
async fn receipts_in_one_batch_act_as_if_one_after_another(db: &TestDb) {
    let store = with_users(db).await;
    store
        .run(|conn| {
            // ben's log: a1 1, a2 2, b1 3 (sent), c1 4, a3 5, b2 6 (sent); ann's: a1 1 (sent),
            // a2 2 (sent), b1 3, a3 4 (sent), b2 5. Conversation ann/ben: a1..b2 are 1..5.
            let messages = [("ann", "ben", "a1"), ("ann", "ben", "a2"), ("ben", "ann", "b1"), ("cat", "ben", "c1")];
            let mut writes: Vec<Write> = messages.iter().map(|&(from, to, id)| append(from, to, id)).collect();
            writes.push(append("ann", "ben", "a3"));
            writes.push(append("ben", "ann", "b2"));
            assert!(apply(conn, &writes).iter().all(Result::is_ok));

            let results = apply(
                conn,
                &[
                    receipt("ben", "phone", 4, false),
                    receipt("ann", "phone", 5, true),
                    receipt("ben", "laptop", 5, true),
                    receipt("ben", "phone", 1, false),
                    receipt("ann", "phone", 99, false),
                ],
            );
            let owned = |v: &[(&str, i64, &str, i64)]| -> Vec<(String, i64, String, i64)> {
                v.iter().map(|&(s, o, c, a)| (s.to_owned(), o, c.to_owned(), a)).collect()
            };
            assert_eq!(acks_of(&results[0]), (4, owned(&[("ann", 2, "a2", 2), ("cat", 1, "c1", 1)])));
            assert_eq!(acks_of(&results[1]), (5, owned(&[("ben", 5, "b2", 5)])));
            assert_eq!(acks_of(&results[2]), (5, owned(&[("ann", 4, "a3", 4), ("cat", 1, "c1", 1)])));
            assert_eq!(acks_of(&results[3]), (4, Vec::new()), "a cursor never goes back; nothing new is acked");
            match &results[4] {
                Err(MessagingError::Invalid(reason)) => assert!(reason.contains("last_offset 5"), "{reason}"),
                other => panic!("a receipt past the end is refused: {other:?}"),
            }

            let pair = read_transaction(conn, |s| messages::conversations_of(s, "ann", &["ben"]))?;
            let marks = |c: &messages::ConversationRow| (c.a_received, c.a_read, c.b_received, c.b_read);
            assert_eq!(pair.iter().map(marks).collect::<Vec<_>>(), [(5, 5, 4, 4)], "both users' marks moved");
            let other = read_transaction(conn, |s| messages::conversations_of(s, "ben", &["cat"]))?;
            assert_eq!(other.iter().map(marks).collect::<Vec<_>>(), [(1, 1, 0, 0)]);
            for (user, device, cursor) in [("ben", "phone", 4), ("ben", "laptop", 5), ("ann", "phone", 5)] {
                assert_eq!(read_transaction(conn, |s| messages::cursor(s, user, device))?, cursor, "{user}/{device}");
            }
            let ben = read_transaction(conn, |s| messages::log_state(s, "ben"))?;
            assert_eq!((ben.received_offset, ben.read_offset), (5, 5));
            let ann = read_transaction(conn, |s| messages::log_state(s, "ann"))?;
            assert_eq!((ann.received_offset, ann.read_offset), (5, 5));
            Ok::<_, StoreError>(())
        })
        .await
        .expect("store");
}

/// A client reusing an id for another receiver within one batch gets what two batches would
/// give: the copy whose receiver exists is stored once, the other is told its receiver is unknown
/// or, when the first copy was stored, that it is a duplicate.
async fn one_id_sent_to_two_receivers_in_a_batch_acts_as_in_two_batches(db: &TestDb) {
    let store = with_users(db).await;
    store
        .run(|conn| {
            let writes = [
                append("ann", "nobody", "x1"),
                append("ann", "ben", "x1"),
                append("ann", "ben", "x2"),
                append("ann", "nobody", "x2"),
                append("ann", "cat", "x2"),
            ];
            let results = apply(conn, &writes);
            assert!(matches!(results[0], Err(MessagingError::UnknownRecipient)), "{:?}", results[0]);
            let (x1, dup) = appended(&results[1]);
            assert!(!dup, "x1 is stored by its second copy, whose receiver exists");
            // Stored after the rest of the batch, so after x2 in ann's log.
            assert_eq!((x1.receiver.as_str(), x1.sender_offset), ("ben", 2));
            let (x2, dup) = appended(&results[2]);
            assert!(!dup);
            assert!(matches!(results[3], Err(MessagingError::UnknownRecipient)), "{:?}", results[3]);
            let (again, dup) = appended(&results[4]);
            assert!(dup, "x2 was stored for ben; the copy for cat is its duplicate");
            assert_eq!(again, x2);
            assert_eq!(
                read_transaction(conn, |s| messages::log_offsets(s, "ann"))?,
                [1, 2],
                "two messages stored, no gap"
            );
            Ok::<_, StoreError>(())
        })
        .await
        .expect("store");
}
