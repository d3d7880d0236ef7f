//! Two log writers on one database at once, as two nodes of a cluster are: each commits
//! batches of messages in both directions between the same users, the same retried ids, and
//! receipts, concurrently, plus batches that write some users' logs and acknowledge others',
//! crossed between the writers (without the lock order these deadlock on PostgreSQL at once). No batch fails (on PostgreSQL a lock-order cycle would surface as a
//! deadlock error), every write is answered, a retried id is stored once with one row for both,
//! and every log is `1..=n` with no gap and no duplicate.

use std::collections::{BTreeMap, HashMap};

use courier::accounts::HashAlgorithm;
use courier::messaging::MessagingError;
use courier::messaging::log::{self, Receipt, Write, Written};
use courier::store::messages::{self, MessageRow};
use courier::store::{Store, StoreError, read_transaction};

use crate::log_writer::append;
use crate::support::{PW, T0, TestDb, config};

backend_tests!(two_writers_in_both_directions_neither_deadlock_nor_leave_gaps);

const USERS: [&str; 4] = ["ann", "ben", "cat", "dan"];
const ROUNDS: usize = 25;

/// One writer's run: `ROUNDS` batches, each with a message for every ordered pair of users
/// (walked forward by writer 0, backward by writer 1, so the two lock in opposite request
/// orders), a copy of a message the other writer sends too, and a receipt per user up to what
/// this writer has seen stored.
async fn writer(store: Store, me: usize) -> Vec<Result<Written, MessagingError>> {
    let mut pairs: Vec<(&str, &str)> =
        USERS.iter().flat_map(|&from| USERS.iter().filter(move |&&to| to != from).map(move |&to| (from, to))).collect();
    let shared = pairs.clone();
    if me == 1 {
        pairs.reverse();
    }
    let mut seen: HashMap<String, i64> = HashMap::new();
    let mut all = Vec::new();
    for round in 0..ROUNDS {
        let mut batch: Vec<Write> =
            pairs.iter().map(|&(from, to)| append(from, to, &format!("w{me}-{round}-{from}-{to}"))).collect();
        let (from, to) = shared[round % shared.len()];
        batch.push(append(from, to, &format!("both-{round}")));
        let mut users = USERS.to_vec();
        if me == 1 {
            users.reverse();
        }
        for user in users {
            if let Some(&up_to) = seen.get(user) {
                let device = format!("node{me}");
                batch.push(Write::Receipt(Receipt { user: user.to_owned(), device, up_to, read: round % 2 == 0 }));
            }
        }
        let results = commit(&store, batch, &format!("writer {me}'s batch {round}")).await;
        for result in &results {
            if let Ok(Written::Appended(a)) = result {
                let top = seen.entry(a.row.receiver.clone()).or_default();
                *top = (*top).max(a.row.receiver_offset);
            }
        }
        all.extend(results);

        // A batch whose messages and receipts are for different users, crossed between the
        // writers: 0 writes ann's and ben's logs and then receipts into cat's and dan's, 1 the
        // other way round. Locking step by step, each would hold what the other waits for.
        let (talk, ack) = if me == 0 { (["ann", "ben"], ["cat", "dan"]) } else { (["dan", "cat"], ["ben", "ann"]) };
        let mut crossed = vec![append(talk[0], talk[1], &format!("x{me}-{round}"))];
        for user in ack {
            if let Some(&up_to) = seen.get(user) {
                crossed.push(Write::Receipt(Receipt {
                    user: user.to_owned(),
                    device: format!("x{me}"),
                    up_to,
                    read: true,
                }));
            }
        }
        all.extend(commit(&store, crossed, &format!("writer {me}'s crossed batch {round}")).await);
    }
    all
}

/// Commits `batch` as the log writer does; any failure (a deadlock included) fails the test.
async fn commit(store: &Store, batch: Vec<Write>, what: &str) -> Vec<Result<Written, MessagingError>> {
    let n = batch.len();
    let results =
        store.write(move |c| log::apply(c, &batch, T0 + 1)).await.unwrap_or_else(|e| panic!("{what} failed: {e}"));
    assert_eq!(results.len(), n, "{what}: every write is answered");
    results
}

async fn two_writers_in_both_directions_neither_deadlock_nor_leave_gaps(db: &TestDb) {
    let accounts = db.accounts(config());
    for user in USERS {
        accounts.signup(user, PW, HashAlgorithm::Argon2id).await.expect("signup");
    }
    // Two stores, each with its own pool, like two nodes.
    let (first, second) = (db.open(), db.open());
    let (a, b) = tokio::join!(tokio::spawn(writer(first, 0)), tokio::spawn(writer(second, 1)));
    let (a, b) = (a.expect("writer 0 ran"), b.expect("writer 1 ran"));

    let mut rows: BTreeMap<(String, String), Vec<(MessageRow, bool)>> = BTreeMap::new();
    for result in a.iter().chain(&b) {
        match result {
            Ok(Written::Appended(x)) => rows
                .entry((x.row.sender.clone(), x.row.client_id.clone()))
                .or_default()
                .push((x.row.clone(), x.duplicate)),
            Ok(Written::Receipt(_)) => {}
            other => panic!("every write succeeds: {other:?}"),
        }
    }
    let per_writer = ROUNDS * USERS.len() * (USERS.len() - 1);
    assert_eq!(rows.len(), 2 * per_writer + ROUNDS + 2 * ROUNDS, "every id stored once");
    for ((_, id), copies) in &rows {
        if id.starts_with("both-") {
            assert_eq!(copies.len(), 2, "{id} was sent by both writers");
            assert_eq!(copies[0].0, copies[1].0, "{id}: the retry is answered with the original row");
            assert_eq!(copies.iter().filter(|(_, dup)| *dup).count(), 1, "{id}: one stored it, one found it");
        } else {
            assert_eq!(copies.len(), 1);
        }
    }
    let entries = |user: &str| rows.values().filter(|c| c[0].0.sender == user || c[0].0.receiver == user).count();
    let expected: HashMap<&str, i64> = USERS.iter().map(|&u| (u, entries(u) as i64)).collect();
    let store = db.open();
    store
        .run(move |conn| {
            for user in USERS {
                let expected = expected[user];
                let offsets = read_transaction(conn, |s| messages::log_offsets(s, user))?;
                assert_eq!(offsets, (1..=expected).collect::<Vec<i64>>(), "{user}'s log: no gap, no duplicate");
            }
            Ok::<_, StoreError>(())
        })
        .await
        .expect("store");
}
