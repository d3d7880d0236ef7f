//! A log at the wire's offset limit (seed 004 carries offsets as int32): the batch that would
//! take a user's log or a conversation past `MAX_OFFSET` is refused whole before any row is
//! inserted, the reservations roll back, and everything stored before still reads back.

use courier::accounts::HashAlgorithm;
use courier::error::Code;
use courier::messaging::MessagingError;
use courier::messaging::log::{self, Write, Written};
use courier::store::messages::{self, MAX_OFFSET, MessageRow};
use courier::store::{DbConnection, StoreError, read_transaction, write_transaction};
use diesel::RunQueryDsl;

use crate::log_writer::append;
use crate::support::{PW, T0, TestDb, config};

backend_tests!(
    a_send_past_the_offset_limit_is_refused_whole_and_the_log_reads_back,
    a_conversation_at_the_offset_limit_refuses_its_next_message
);

/// Runs `test` on a store connection once ann, ben and cat have signed up.
async fn with_users<F>(db: &TestDb, test: F)
where
    F: FnOnce(&mut DbConnection) -> Result<(), StoreError> + Send + 'static,
{
    let accounts = db.accounts(config());
    for user in ["ann", "ben", "cat"] {
        accounts.signup(user, PW, HashAlgorithm::Argon2id).await.expect("signup");
    }
    db.open().run(test).await.expect("the test's queries run");
}

/// Runs one UPDATE on either backend, as an operator (or years of traffic) would leave it.
fn execute(conn: &mut DbConnection, sql: &str) -> Result<usize, StoreError> {
    Ok(match conn {
        DbConnection::Sqlite(c) => diesel::sql_query(sql).execute(c)?,
        DbConnection::Pg(c) => diesel::sql_query(sql).execute(c)?,
    })
}

/// Applies `writes` as the log writer does, in one transaction; the transaction's own outcome.
fn try_apply(conn: &mut DbConnection, writes: &[Write]) -> Result<Vec<Result<Written, MessagingError>>, StoreError> {
    write_transaction(conn, |c| log::apply(c, writes, T0 + 1))
}

fn stored_row(result: &Result<Written, MessagingError>) -> MessageRow {
    match result {
        Ok(Written::Appended(a)) if !a.duplicate => a.row.clone(),
        other => panic!("expected a newly stored message, got {other:?}"),
    }
}

fn log_of(conn: &mut DbConnection, user: &str) -> Result<(Vec<i64>, i64), StoreError> {
    let offsets = read_transaction(conn, |s| messages::log_offsets(s, user))?;
    let last = read_transaction(conn, |s| messages::log_state(s, user))?.last_offset;
    Ok((offsets, last))
}

async fn a_send_past_the_offset_limit_is_refused_whole_and_the_log_reads_back(db: &TestDb) {
    with_users(db, |conn| {
        let first = stored_row(&try_apply(conn, &[append("ann", "ben", "m1")])?[0]);
        assert_eq!((first.sender_offset, first.receiver_offset), (1, 1));
        let updated =
            execute(conn, &format!("UPDATE user_logs SET last_offset = {} WHERE username = 'ben'", MAX_OFFSET - 1))?;
        assert_eq!(updated, 1, "ben has a log row");

        // Just below the limit: the last offset the wire carries is handed out.
        let last = stored_row(&try_apply(conn, &[append("ann", "ben", "m2")])?[0]);
        assert_eq!((last.sender_offset, last.receiver_offset, last.user_offset), (2, MAX_OFFSET, 2));

        // Past it: the whole batch fails, cat's message to ann (whose logs have room) too.
        let batch = [append("cat", "ann", "m3"), append("ann", "ben", "m4")];
        match try_apply(conn, &batch) {
            Err(StoreError::LogFull { log }) => assert_eq!(log, "ben's message log"),
            other => panic!("expected LogFull, got {other:?}"),
        }
        assert_eq!(messages::find_stored(conn, &[("cat", "m3"), ("ann", "m4")])?, vec![], "nothing stored");
        assert_eq!(log_of(conn, "ann")?, (vec![1, 2], 2), "ann's log as before");
        assert_eq!(log_of(conn, "ben")?, (vec![1, MAX_OFFSET], MAX_OFFSET), "ben's log as before");
        assert_eq!(log_of(conn, "cat")?, (vec![], 0), "cat's reservation rolled back");
        let stored = messages::find_stored(conn, &[("ann", "m1"), ("ann", "m2")])?;
        assert_eq!(stored, vec![first, last], "the earlier rows read back unchanged");

        // The writer then retries each write alone: cat's goes through, ann's is refused
        // again, as a message error the channel answers with `log_full`.
        let alone = stored_row(&try_apply(conn, &[append("cat", "ann", "m3")])?[0]);
        assert_eq!((alone.sender_offset, alone.receiver_offset), (1, 3));
        let refused = try_apply(conn, &[append("ann", "ben", "m4")]).expect_err("still full");
        assert_eq!(MessagingError::from(refused).code(), Code::LogFull);
        assert_eq!(log_of(conn, "ben")?, (vec![1, MAX_OFFSET], MAX_OFFSET));
        Ok(())
    })
    .await;
}

async fn a_conversation_at_the_offset_limit_refuses_its_next_message(db: &TestDb) {
    with_users(db, |conn| {
        stored_row(&try_apply(conn, &[append("ben", "ann", "m1")])?[0]);
        let sql =
            format!("UPDATE conversations SET last_user_offset = {MAX_OFFSET} WHERE user_a = 'ann' AND user_b = 'ben'");
        assert_eq!(execute(conn, &sql)?, 1, "ann and ben have a conversation row");
        match try_apply(conn, &[append("ann", "ben", "m2")]) {
            Err(StoreError::LogFull { log }) => assert_eq!(log, "the conversation of ann and ben"),
            other => panic!("expected LogFull, got {other:?}"),
        }
        assert_eq!(messages::find_stored(conn, &[("ann", "m2")])?, vec![], "nothing stored");
        assert_eq!(log_of(conn, "ann")?, (vec![1], 1), "ann's reservation rolled back");
        assert_eq!(log_of(conn, "ben")?, (vec![1], 1), "ben's reservation rolled back");
        // Another conversation of the same users' logs still has room.
        let other = stored_row(&try_apply(conn, &[append("ann", "cat", "m3")])?[0]);
        assert_eq!((other.sender_offset, other.user_offset), (2, 1));
        Ok(())
    })
    .await;
}
