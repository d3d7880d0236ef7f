//! Connections: the `DbConnection` enum chosen by URL, and the r2d2 manager that creates them
//! with the dialect's per-connection settings applied. Nothing here knows about tables.

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::r2d2::{ManageConnection, R2D2Connection};
use diesel::{Connection, PgConnection, SqliteConnection};

use super::StoreError;

/// One database connection, SQLite or PostgreSQL, decided by the URL at start-up.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    /// A bundled-SQLite file connection.
    Sqlite(SqliteConnection),
    /// A libpq connection.
    Pg(PgConnection),
}

/// Which database engine a URL selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file (the default).
    Sqlite,
    /// A PostgreSQL server (`postgres://` or `postgresql://`).
    Postgres,
}

impl Backend {
    /// Picks the backend from a database URL; anything that is not PostgreSQL is a SQLite path.
    pub fn from_url(url: &str) -> Backend {
        let lower = url.trim_start().to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }

    /// A short lowercase name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Turns a SQLite URL into what `sqlite3_open` expects; `sqlite://` is accepted as a prefix.
fn sqlite_path(url: &str) -> Result<&str, StoreError> {
    let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
    if path.trim().is_empty() {
        return Err(StoreError::InvalidUrl("empty SQLite path".into()));
    }
    Ok(path)
}

/// Opens one connection for `url`, applying the SQLite settings every connection needs.
pub(crate) fn establish(url: &str, busy_timeout: Duration) -> Result<DbConnection, StoreError> {
    match Backend::from_url(url) {
        Backend::Postgres => Ok(DbConnection::Pg(PgConnection::establish(url)?)),
        Backend::Sqlite => {
            let mut conn = SqliteConnection::establish(sqlite_path(url)?)?;
            conn.batch_execute(&super::dialect::sqlite_pragmas(busy_timeout))?;
            Ok(DbConnection::Sqlite(conn))
        }
    }
}

/// r2d2 manager that dispatches on the URL itself, rather than trying each backend in turn
/// as the derived `establish` does (which would hand a `postgres://` URL to SQLite first).
pub(crate) struct Manager {
    pub(crate) url: String,
    pub(crate) busy_timeout: Duration,
}

impl ManageConnection for Manager {
    type Connection = DbConnection;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<DbConnection, Self::Error> {
        establish(&self.url, self.busy_timeout).map_err(|err| match err {
            StoreError::Connect(e) => diesel::r2d2::Error::ConnectionError(e),
            StoreError::Query(e) => diesel::r2d2::Error::QueryError(e),
            other => diesel::r2d2::Error::ConnectionError(diesel::ConnectionError::BadConnection(other.to_string())),
        })
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), Self::Error> {
        conn.ping().map_err(diesel::r2d2::Error::QueryError)
    }

    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        // Also true when a panicking closure left a transaction open, so such a connection
        // is dropped instead of being handed to the next caller mid-transaction.
        conn.is_broken()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_is_chosen_by_scheme() {
        assert_eq!(Backend::from_url("postgres://u@h/db"), Backend::Postgres);
        assert_eq!(Backend::from_url("PostgreSQL://u@h/db"), Backend::Postgres);
        assert_eq!(Backend::from_url("./courier.db"), Backend::Sqlite);
        assert_eq!(Backend::from_url("sqlite://data/c.db"), Backend::Sqlite);
    }

    #[test]
    fn sqlite_prefix_is_stripped_and_empty_refused() {
        assert_eq!(sqlite_path("sqlite://a.db").ok(), Some("a.db"));
        assert_eq!(sqlite_path("sqlite:b.db").ok(), Some("b.db"));
        assert_eq!(sqlite_path("c.db").ok(), Some("c.db"));
        assert!(matches!(sqlite_path("sqlite://"), Err(StoreError::InvalidUrl(_))));
    }
}
