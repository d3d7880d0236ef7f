//! The log writer's held connection (`store::HeldWriter`) and the conversation key's order on a
//! PostgreSQL server whose collation is not byte order.

use std::time::Duration;

use courier::accounts::HashAlgorithm;
use courier::messaging::log::{self, Written};
use courier::store::{Store, StoreError, StoreOptions, write_transaction};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::Integer;

use crate::log_writer::append;
use crate::support::{PW, T0, TestDb, config};

backend_tests!(a_pool_of_one_is_left_to_the_other_queries);

/// With a single pooled connection the writer must not keep it, or every other query waits for
/// the pool's timeout and fails.
async fn a_pool_of_one_is_left_to_the_other_queries(db: &TestDb) {
    let options = StoreOptions { pool_size: 1, connect_timeout: Duration::from_secs(1), ..db.options() };
    let store = Store::open_with(&options).expect("open");
    let mut writer = store.held_writer();
    writer.write(|_| Ok::<_, StoreError>(())).await.expect("the writer writes");
    let other = store.run(|conn| Ok(diesel::select(diesel::dsl::sql::<Integer>("1")).get_result::<i32>(conn)?)).await;
    assert_eq!(other.expect("another query gets the only connection"), 1);
    writer.write(|_| Ok::<_, StoreError>(())).await.expect("and the writer still writes");
}

/// A held connection the server closed while it sat idle is replaced, not used and failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_connection_the_server_closed_is_replaced() {
    let Some(db) = TestDb::postgres("a_held_connection_the_server_closed_is_replaced") else { return };
    let store = db.open();
    let mut writer = store.held_writer();
    let backend_pid = |conn: &mut courier::store::DbConnection| -> Result<i32, StoreError> {
        Ok(diesel::select(diesel::dsl::sql::<Integer>("pg_backend_pid()")).get_result(conn)?)
    };
    let first = writer.write(backend_pid).await.expect("first write");
    let mut admin = db.pg_admin().expect("PostgreSQL");
    admin.batch_execute(&format!("SELECT pg_terminate_backend({first})")).expect("terminate the writer's backend");
    // Past the idle time after which a held connection is tested before use.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let second = writer.write(backend_pid).await.expect("the write after the server closed the connection");
    assert_ne!(second, first, "a new connection");
}

/// Usernames may mix case. The server keys a conversation by byte order ('B' < 'a'); under an
/// ICU collation PostgreSQL orders 'alice' before 'Bob', and a CHECK in that collation refused
/// every message between the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_case_users_converse_under_an_icu_collation() {
    let Some(db) = TestDb::postgres_icu("mixed_case_users_converse_under_an_icu_collation") else { return };
    let accounts = db.accounts(config());
    for user in ["Bob", "alice"] {
        accounts.signup(user, PW, HashAlgorithm::Argon2id).await.expect("signup");
    }
    let store = db.open();
    let results = store
        .run(|conn| {
            let writes = [append("Bob", "alice", "b1"), append("alice", "Bob", "a1"), append("Bob", "alice", "b2")];
            write_transaction(conn, |c| log::apply(c, &writes, T0 + 1))
        })
        .await
        .expect("the batch commits");
    let offsets: Vec<i64> = results
        .iter()
        .map(|r| match r {
            Ok(Written::Appended(a)) => a.row.user_offset,
            other => panic!("expected a stored message, got {other:?}"),
        })
        .collect();
    assert_eq!(offsets, [1, 2, 3], "one conversation, in order");
}
