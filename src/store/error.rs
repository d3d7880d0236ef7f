//! The one error type that leaves `store`: connection, pool, migration and query failures.

use diesel::result::{DatabaseErrorKind, Error as DieselError};

/// Everything that can go wrong below the `store` boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL names no backend Courier can open.
    #[error("invalid database url: {0}")]
    InvalidUrl(String),
    /// Establishing a connection failed.
    #[error("cannot connect to the database: {0}")]
    Connect(#[from] diesel::ConnectionError),
    /// No pooled connection became available in time.
    #[error("connection pool: {0}")]
    Pool(#[from] diesel::r2d2::PoolError),
    /// Embedded migrations could not be applied.
    #[error("migrations failed: {0}")]
    Migration(String),
    /// A unique key already holds this value.
    #[error("a row with this key already exists")]
    AlreadyExists,
    /// Any other query failure.
    #[error("query failed: {0}")]
    Query(DieselError),
    /// A stored value does not have the shape this version writes.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// A snapshot read was asked for inside another transaction.
    #[error("a snapshot read cannot run inside another transaction")]
    NestedSnapshot,
    /// Reserving offsets would take a log (or a conversation) past
    /// [`MAX_OFFSET`](crate::store::messages::MAX_OFFSET); the transaction stores none of its batch.
    #[error("{log} is full (offsets end at {max})", max = crate::store::messages::MAX_OFFSET)]
    LogFull {
        /// Which log: "bob's message log", or "the conversation of alice and bob".
        log: String,
    },
    /// The blocking task running the query panicked or was cancelled.
    #[error("database task failed: {0}")]
    TaskFailed(String),
}

impl From<DieselError> for StoreError {
    fn from(err: DieselError) -> Self {
        match err {
            // Callers decide what a duplicate means (user in use, invite exists); they need
            // to see it as a value, not as an opaque query failure.
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => StoreError::AlreadyExists,
            other => StoreError::Query(other),
        }
    }
}
