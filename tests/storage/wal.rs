//! SQLite's WAL is copied back into the database file by the store's checkpointer thread: a
//! commit checkpoints only once the WAL reaches 64 MiB, so after a 2 MB write the file grows
//! only if the thread runs.

use std::time::{Duration, Instant};

use courier::store::StoreError;
use diesel::connection::SimpleConnection;

use crate::support::TestDb;

fn file_len(path: &str) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_pages_reach_the_database_file_before_any_commit_checkpoints() {
    let db = TestDb::sqlite();
    let store = db.open();
    let path = db.sqlite_file().expect("a SQLite file").to_owned();
    let before = file_len(&path);
    store
        .run(|conn| {
            conn.batch_execute(
                "CREATE TABLE filler (x BLOB NOT NULL);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
                 INSERT INTO filler SELECT randomblob(1000) FROM n;",
            )?;
            Ok::<_, StoreError>(())
        })
        .await
        .expect("write 2 MB");
    let autocheckpoint: i64 = store
        .run(|conn| {
            use diesel::RunQueryDsl;
            #[derive(diesel::QueryableByName)]
            struct Pages {
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                wal_autocheckpoint: i64,
            }
            let rows: Vec<Pages> = diesel::sql_query("PRAGMA wal_autocheckpoint").load(conn)?;
            Ok::<_, StoreError>(rows.first().map_or(-1, |p| p.wal_autocheckpoint))
        })
        .await
        .expect("read the pragma");
    assert_eq!(autocheckpoint, 16 * 1024, "pool connections leave early checkpoints to the checkpointer");

    let deadline = Instant::now() + Duration::from_secs(10);
    while file_len(&path) < before + 1_000_000 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = file_len(&path);
    assert!(after >= before + 1_000_000, "the database file grew from {before} only to {after} bytes");
}
