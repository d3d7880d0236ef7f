//! Everything that differs between SQLite and PostgreSQL: per-connection settings, how a write
//! or a snapshot read transaction begins, and the macro that compiles one statement per backend
//! where the derived multi-backend cannot express it (upserts in particular).

use std::time::Duration;

use diesel::QueryResult;
use diesel::connection::{AnsiTransactionManager, TransactionManager};

use super::checkpoint::AUTOCHECKPOINT_PAGES;
use super::{DbConnection, StoreError};

/// Settings every new SQLite connection gets.
///
/// busy_timeout goes first so that switching to WAL waits for other openers instead of
/// failing. foreign_keys is per connection in SQLite, so it must be set each time.
/// synchronous=FULL syncs the WAL at every commit, so an acknowledged message survives a power
/// loss too, not only a crash (NORMAL's promise); the log writer's group commit pays that one
/// fsync per batch rather than per message.
///
/// The log writer's index lookups touch pages all over the messages table: with SQLite's
/// default 2 MiB page cache they were read back from the kernel (`pread`) on nearly every
/// statement. A memory map serves them from the kernel's page cache without a copy, shared by
/// every connection, and a larger private cache keeps each connection's hot pages decoded.
///
/// Commits checkpoint the WAL only once it is 64 MiB long: the store's checkpointer thread does
/// the copying before that (see `super::checkpoint`).
pub(crate) fn sqlite_pragmas(busy_timeout: Duration) -> String {
    let millis = busy_timeout.as_millis().min(i32::MAX as u128);
    format!(
        "PRAGMA busy_timeout = {millis};
         PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA mmap_size = {MMAP_BYTES};
         PRAGMA cache_size = -{CACHE_KIB};
         PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES};"
    )
}

/// How much of a SQLite file each connection maps (a window of address space, not memory).
const MMAP_BYTES: u64 = 1 << 30;
/// Each SQLite connection's page cache, at most (filled only as pages are used).
const CACHE_KIB: u32 = 16 * 1024;

/// Begins a transaction that holds the write lock from its first statement.
///
/// SQLite's default deferred transaction starts as a reader; upgrading it to a writer after a
/// concurrent commit fails at once with SQLITE_BUSY (the busy timeout does not apply), so the
/// outermost write transaction there is `BEGIN IMMEDIATE`. PostgreSQL's row locks need no such
/// care. Nested calls become savepoints on both.
pub(crate) fn begin_write(conn: &mut DbConnection) -> QueryResult<()> {
    match conn {
        DbConnection::Sqlite(c) => {
            let depth = AnsiTransactionManager::transaction_manager_status_mut(c).transaction_depth()?;
            if depth.is_some() {
                AnsiTransactionManager::begin_transaction(c)
            } else {
                AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE")
            }
        }
        DbConnection::Pg(c) => AnsiTransactionManager::begin_transaction(c),
    }
}

/// Expands `$body` once per concrete connection type, with `$c` bound to the inner connection.
macro_rules! per_backend {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::store::DbConnection::Sqlite($c) => $body,
            $crate::store::DbConnection::Pg($c) => $body,
        }
    };
}

pub(crate) use per_backend;

/// Begins a read-only transaction whose queries all see one snapshot (see `super::Snapshot`).
/// Refused inside another transaction: a savepoint would not give the snapshot its own moment.
pub(crate) fn begin_read(conn: &mut DbConnection) -> Result<(), StoreError> {
    let depth =
        per_backend!(&mut *conn, c => AnsiTransactionManager::transaction_manager_status_mut(c).transaction_depth()?);
    if depth.is_some() {
        return Err(StoreError::NestedSnapshot);
    }
    match conn {
        // Deferred: the snapshot starts at the first read and never blocks the writer (WAL).
        DbConnection::Sqlite(c) => AnsiTransactionManager::begin_transaction_sql(c, "BEGIN")?,
        DbConnection::Pg(c) => {
            AnsiTransactionManager::begin_transaction_sql(c, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?
        }
    }
    Ok(())
}
