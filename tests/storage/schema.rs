//! The hand-written `schema.rs` against the real migrated tables, and per-backend settings.

use courier::store::schema::{contacts, devices, invites, pending_messages, sessions, users};
use courier::store::{self, Backend, DbConnection, StoreError};
use diesel::prelude::*;

use crate::support::TestDb;

backend_tests!(schema_matches_migrations, reopening_applies_nothing, foreign_keys_are_enforced, sqlite_settings);

type SessionColumns = (Vec<u8>, String, Option<String>, i64, i64, Option<i64>);
type InviteColumns = (String, String, String, i64, Option<i64>, Option<i64>);
type UserColumns = (String, String, String, i64, Option<String>, Option<i64>);

async fn schema_matches_migrations(db: &TestDb) {
    let store = db.open();
    // Selecting every declared column with its declared type fails if a name or type drifted.
    let counts = store
        .run(|c| {
            let u: Vec<UserColumns> = users::table.select(users::all_columns).load(c)?;
            let d: Vec<(String, String, i64, i64)> = devices::table.select(devices::all_columns).load(c)?;
            let s: Vec<SessionColumns> = sessions::table.select(sessions::all_columns).load(c)?;
            let i: Vec<InviteColumns> = invites::table.select(invites::all_columns).load(c)?;
            let k: Vec<(String, String, i64)> = contacts::table.select(contacts::all_columns).load(c)?;
            let p: Vec<(i64, String, String, i64)> =
                pending_messages::table.select(pending_messages::all_columns).load(c)?;
            Ok([u.len(), d.len(), s.len(), i.len(), k.len(), p.len()])
        })
        .await
        .expect("every table and column in schema.rs exists with its declared type");
    assert_eq!(counts, [0; 6]);
}

async fn reopening_applies_nothing(db: &TestDb) {
    let store = db.open();
    let applied = store.run(store::migrations::run_pending).await.unwrap();
    assert!(applied.is_empty(), "migrations already ran at open: {applied:?}");
    let expected = if db.is_postgres() { Backend::Postgres } else { Backend::Sqlite };
    assert_eq!(store.backend(), expected);
}

/// Several nodes started at the same moment on an empty PostgreSQL database: each open migrates
/// or finds the work done, and none fails on the tables another is creating. PostgreSQL only:
/// several nodes need it (a broker with a SQLite file is refused at start).
#[tokio::test]
async fn nodes_opening_at_once_on_postgres_migrate_once() {
    let Some(db) = TestDb::postgres("nodes_opening_at_once_on_postgres_migrate_once") else { return };
    let opens: Vec<_> = (0..3)
        .map(|_| {
            let url = db.url.clone();
            std::thread::spawn(move || store::Store::open(&url).map(|_| ()))
        })
        .collect();
    for open in opens {
        open.join().expect("open thread").expect("every node's open succeeds");
    }
    let store = db.open();
    let applied = store.run(store::migrations::run_pending).await.unwrap();
    assert!(applied.is_empty(), "{applied:?}");
}

async fn foreign_keys_are_enforced(db: &TestDb) {
    let store = db.open();
    let row = store::sessions::SessionRow {
        token_hash: vec![0; 32],
        user_id: "no-such-user".into(),
        device_id: None,
        created_at: 0,
        expires_at: 1,
        revoked_at: None,
    };
    let err = store.run(move |c| store::sessions::insert(c, &row)).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Query(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::ForeignKeyViolation,
                _
            ))
        ),
        "{err:?}"
    );
}

#[derive(QueryableByName)]
struct Pragma {
    #[diesel(sql_type = diesel::sql_types::Text)]
    value: String,
}

async fn sqlite_settings(db: &TestDb) {
    let store = db.open();
    let settings = store
        .run(|c| match c {
            DbConnection::Sqlite(c) => {
                let mut read = |pragma: &str| -> Result<String, StoreError> {
                    Ok(diesel::sql_query(format!("SELECT CAST({pragma} AS TEXT) AS value"))
                        .get_result::<Pragma>(c)?
                        .value)
                };
                Ok(Some((
                    read("(SELECT journal_mode FROM pragma_journal_mode)")?,
                    read("(SELECT foreign_keys FROM pragma_foreign_keys)")?,
                    read("(SELECT timeout FROM pragma_busy_timeout)")?,
                )))
            }
            DbConnection::Pg(_) => Ok(None),
        })
        .await
        .unwrap();
    if let Some((journal, fks, busy)) = settings {
        assert_eq!(journal, "wal");
        assert_eq!(fks, "1");
        assert_eq!(busy, "10000");
    }
}
