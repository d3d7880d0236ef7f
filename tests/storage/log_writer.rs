//! The log writer's batch (`messaging::log::apply`) on each backend: offsets reserved for many
//! logs and conversations at once come back gap-free and matched to the right rows, duplicates
//! are found within and across batches, and a batch of a shape seen before prepares no new
//! statement (diesel caches every statement on this path).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use courier::accounts::HashAlgorithm;
use courier::messaging::MessagingError;
use courier::messaging::log::{self, Append, Receipt, Write, Written};
use courier::messaging::wire;
use courier::pb;
use courier::store::messages::{self, MessageRow};
use courier::store::{DbConnection, StoreError, write_transaction};
use diesel::Connection;
use diesel::connection::InstrumentationEvent;

use crate::support::{PW, T0, TestDb, config};

backend_tests!(
    a_batch_over_many_conversations_is_gap_free_and_deduplicated,
    a_repeated_batch_shape_prepares_nothing_new
);

const USERS: [&str; 5] = ["ann", "ben", "cat", "dan", "eve"];

async fn with_users(db: &TestDb) -> courier::store::Store {
    let accounts = db.accounts(config());
    for user in USERS {
        accounts.signup(user, PW, HashAlgorithm::Argon2id).await.expect("signup");
    }
    db.open()
}

fn append(sender: &str, to: &str, id: &str) -> Write {
    Write::Append(Append {
        sender: sender.to_owned(),
        sender_device: Some("phone".to_owned()).filter(|_| sender != "eve"),
        require_contact: false,
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
                let offsets = messages::log_offsets(conn, user)?;
                // 2 rounds × 4 peers × (sent + received) = 16 entries.
                assert_eq!(offsets, (1..=16).collect::<Vec<i64>>(), "{user}'s log");
                assert_eq!(messages::log_state(conn, user)?.last_offset, 16, "{user}'s counter");
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
                assert_eq!(messages::log_offsets(conn, user)?, (1..=24).collect::<Vec<i64>>(), "{user}'s log");
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
    let transaction_control = ["BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"];
    let uncached: Vec<&String> = seen.run[first_run..]
        .iter()
        .filter(|sql| !transaction_control.iter().any(|kw| sql.trim_start().starts_with(kw)))
        .filter(|sql| !seen.cached.contains(sql))
        .collect();
    assert!(seen.run.len() > first_run + 10, "the second batch ran its statements: {:?}", &seen.run[first_run..]);
    assert!(uncached.is_empty(), "statements run without diesel's cache: {uncached:#?}");
}
