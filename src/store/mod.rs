//! Storage: the only place that knows Diesel, SQL, the schema and the connection pool.
//!
//! It owns connections (`DbConnection`, SQLite or PostgreSQL by URL), the embedded migrations,
//! and one query module per table family (`users`, `sessions`, `devices`, `invites`,
//! `pending`, `messages`, `keys`). It must not know about protocols, HTTP or password rules: callers hand it plain
//! values and get plain rows back. Diesel is blocking, so every query runs on the blocking
//! thread pool through [`Store::run`], [`Store::read`] or [`Store::write`], never on an async
//! worker.
//!
//! A read that takes more than one statement and must add up (a page of a log and the log's
//! end, the page's ack states) runs through [`Store::read`]: its queries take a [`Snapshot`],
//! which only [`read_transaction`] hands out, so they cannot be run outside one by mistake.
//!
//! Lookups by a unique key use `get_result`, never `first`: `first` adds `LIMIT ?`, and SQLite
//! re-prepares a statement with a bound LIMIT on every execution, which defeats diesel's
//! statement cache (that re-preparing was 18% of the server's CPU under chat load).

mod checkpoint;
mod connection;
mod dialect;
mod error;
pub mod migrations;
pub mod schema;
mod statement;

pub mod devices;
pub mod invites;
pub mod keys;
pub mod messages;
pub mod pending;
pub mod sessions;
pub mod users;

use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::r2d2::{Pool, PooledConnection, R2D2Connection};

pub use connection::{Backend, DbConnection};
pub use error::StoreError;

use checkpoint::Checkpointer;
use connection::Manager;

/// How to open a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `postgres://...` for PostgreSQL; anything else is a SQLite file path (`sqlite://` optional).
    pub url: String,
    /// Most connections the pool keeps open.
    pub pool_size: u32,
    /// How long a caller waits for a free connection (and a new connection for its server).
    pub connect_timeout: Duration,
    /// How long SQLite waits on a locked database before giving up.
    pub busy_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            url: "./courier.db".to_owned(),
            pool_size: 8,
            connect_timeout: Duration::from_secs(10),
            busy_timeout: Duration::from_secs(5),
        }
    }
}

impl StoreOptions {
    /// Default options for the given URL.
    pub fn new(url: impl Into<String>) -> Self {
        StoreOptions { url: url.into(), ..StoreOptions::default() }
    }
}

/// Handle to the database: cheap to clone, shares one connection pool.
#[derive(Clone)]
pub struct Store {
    pool: Pool<Manager>,
    backend: Backend,
    /// SQLite only; stops at [`Store::stop_checkpoints`] or when the last clone is dropped.
    checkpointer: Option<Arc<Checkpointer>>,
}

impl std::fmt::Debug for Store {
    // The URL may carry a password, so only the backend is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("backend", &self.backend).finish_non_exhaustive()
    }
}

impl Store {
    /// Opens `url` with default options and applies pending migrations (blocking; call at start-up).
    pub fn open(url: &str) -> Result<Store, StoreError> {
        Store::open_with(&StoreOptions::new(url))
    }

    /// Opens a store with explicit options and applies pending migrations (blocking).
    pub fn open_with(options: &StoreOptions) -> Result<Store, StoreError> {
        let backend = Backend::from_url(&options.url);
        // One direct connection first: a bad URL or a down server then fails at once with the
        // driver's own message, instead of after the pool's timeout with a generic one.
        let mut first = connection::establish(&options.url, options.busy_timeout)?;
        let applied = migrations::run_pending(&mut first)?;
        if !applied.is_empty() {
            tracing::info!(backend = backend.name(), ?applied, "applied database migrations");
        }
        // The migrations' connection lives on as the checkpointer's.
        let checkpointer = match backend {
            Backend::Sqlite => Some(Arc::new(Checkpointer::start(first)?)),
            Backend::Postgres => {
                drop(first);
                None
            }
        };

        let manager = Manager { url: options.url.clone(), busy_timeout: options.busy_timeout };
        let pool = Pool::builder()
            .max_size(options.pool_size.max(1))
            .min_idle(Some(1))
            .connection_timeout(options.connect_timeout)
            // A local SQLite file does not go stale; a server connection can, so check it.
            .test_on_check_out(backend == Backend::Postgres)
            .build(manager)?;
        Ok(Store { pool, backend, checkpointer })
    }

    /// Ends SQLite's checkpoint thread (at shutdown, after the last writes); commits still
    /// checkpoint on their own past a long WAL. Nothing to do on PostgreSQL.
    pub async fn stop_checkpoints(&self) {
        let Some(checkpointer) = self.checkpointer.clone() else { return };
        if let Err(e) = tokio::task::spawn_blocking(move || checkpointer.stop()).await {
            tracing::warn!(error = %e, "stopping the checkpoint thread failed");
        }
    }

    /// Whether SQLite's checkpoint thread runs.
    pub fn checkpointing(&self) -> bool {
        self.checkpointer.as_ref().is_some_and(|c| c.running())
    }

    /// Which engine this store talks to.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Runs `f` with a pooled connection on the blocking thread pool, outside any transaction.
    pub async fn run<F, T>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get()?;
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::TaskFailed(e.to_string()))?
    }

    /// Checks that the database answers a trivial query: at most `timeout` waiting for a pooled
    /// connection (a server that refuses connections fails then), at most twice that in all.
    pub async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        let pool = self.pool.clone();
        let probe = tokio::task::spawn_blocking(move || {
            let mut conn = pool.get_timeout(timeout)?;
            conn.ping().map_err(StoreError::from)
        });
        // The query itself has no timeout of its own: a hung server must not hang the caller.
        match tokio::time::timeout(timeout * 2, probe).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(StoreError::TaskFailed(e.to_string())),
            Err(_) => Err(StoreError::TaskFailed(format!("no answer within {} ms", (timeout * 2).as_millis()))),
        }
    }

    /// Runs `f` inside a write transaction on the blocking pool; commits on `Ok`, rolls back on `Err`.
    pub async fn write<F, T>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        self.run(move |conn| write_transaction(conn, f)).await
    }

    /// Runs `f` on one consistent snapshot of the database, on the blocking pool (see [`Snapshot`]).
    pub async fn read<F, T>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut Snapshot<'_>) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        self.run(move |conn| read_transaction(conn, f)).await
    }

    /// A writer that keeps one pooled connection across its writes, for a caller that writes
    /// all the time (the log writer).
    pub fn held_writer(&self) -> HeldWriter {
        HeldWriter { store: self.clone(), held: None }
    }
}

/// How long a held connection may sit unused before it is tested again, as a check-out from the
/// pool would: the server may have closed it meanwhile (a restart, an idle timeout).
const HELD_IDLE_TEST: Duration = Duration::from_secs(1);

/// Writes on a connection kept between calls. Checking a connection out of the pool tests it
/// first, which on PostgreSQL is a round trip per batch; a held connection is tested only after
/// sitting idle. After a failed write the connection goes back to the pool, which drops it if it
/// is broken, and the next write checks out a tested one. With a pool of one connection nothing
/// is held, or every other query would wait on the writer.
pub struct HeldWriter {
    store: Store,
    /// The connection, and when it last finished a write.
    held: Option<(PooledConnection<Manager>, Instant)>,
}

impl HeldWriter {
    /// Runs `f` inside a write transaction on the blocking pool; commits on `Ok`, rolls back on `Err`.
    pub async fn write<F, T>(&mut self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let pool = self.store.pool.clone();
        let hold = pool.max_size() >= 2;
        let held = self.held.take();
        let (kept, result) = tokio::task::spawn_blocking(move || {
            let held = held.and_then(|(mut conn, last_used)| {
                (last_used.elapsed() < HELD_IDLE_TEST || conn.ping().is_ok()).then_some(conn)
            });
            let mut conn = match held.map_or_else(|| pool.get(), Ok) {
                Ok(conn) => conn,
                Err(e) => return (None, Err(StoreError::from(e))),
            };
            let result = write_transaction(&mut conn, f);
            ((hold && result.is_ok()).then(|| (conn, Instant::now())), result)
        })
        .await
        .map_err(|e| StoreError::TaskFailed(e.to_string()))?;
        self.held = kept;
        result
    }
}

/// Runs `f` in a write transaction (`BEGIN IMMEDIATE` on SQLite); commits on `Ok`, rolls back on `Err`.
pub fn write_transaction<F, T>(conn: &mut DbConnection, f: F) -> Result<T, StoreError>
where
    F: FnOnce(&mut DbConnection) -> Result<T, StoreError>,
{
    dialect::begin_write(conn)?;
    let result = f(conn);
    end_transaction(conn, result)
}

/// A connection inside a read-only transaction: every query made through it sees the database
/// as one moment left it, whatever commits meanwhile.
///
/// On SQLite that is a deferred `BEGIN`: in WAL mode its snapshot is fixed by its first read
/// and writers go on meanwhile. On PostgreSQL it is `BEGIN ISOLATION LEVEL REPEATABLE READ READ
/// ONLY`, whose snapshot is taken by its first statement (under the default READ COMMITTED each
/// statement would see a newer database than the one before it). It costs PostgreSQL two round
/// trips (BEGIN, COMMIT), SQLite none.
pub struct Snapshot<'c> {
    conn: &'c mut DbConnection,
}

impl Snapshot<'_> {
    /// The connection, for the queries of the snapshot's own readers.
    pub(crate) fn conn(&mut self) -> &mut DbConnection {
        self.conn
    }
}

/// Runs `f` on a [`Snapshot`] of `conn`, which must not be inside a transaction already (an
/// outer transaction would decide what `f` sees); ends the read transaction either way.
pub fn read_transaction<F, T>(conn: &mut DbConnection, f: F) -> Result<T, StoreError>
where
    F: FnOnce(&mut Snapshot<'_>) -> Result<T, StoreError>,
{
    dialect::begin_read(conn)?;
    let result = f(&mut Snapshot { conn: &mut *conn });
    end_transaction(conn, result)
}

/// Commits the transaction `conn` is in on `Ok`, rolls it back on `Err`.
fn end_transaction<T>(conn: &mut DbConnection, result: Result<T, StoreError>) -> Result<T, StoreError> {
    let end = match (&result, &mut *conn) {
        (Ok(_), DbConnection::Sqlite(c)) => AnsiTransactionManager::commit_transaction(c),
        (Ok(_), DbConnection::Pg(c)) => AnsiTransactionManager::commit_transaction(c),
        (Err(_), DbConnection::Sqlite(c)) => AnsiTransactionManager::rollback_transaction(c),
        (Err(_), DbConnection::Pg(c)) => AnsiTransactionManager::rollback_transaction(c),
    };
    match (result, end) {
        (Ok(value), Ok(())) => Ok(value),
        (Ok(_), Err(commit_err)) => Err(commit_err.into()),
        // The caller's error explains more than a failed rollback; a connection whose rollback
        // failed is reported broken by the manager and leaves the pool.
        (Err(err), _) => Err(err),
    }
}

/// Milliseconds since the Unix epoch, as stored in every time column.
pub type Millis = i64;
