//! The one backend-test harness both integration-test crates include: a private database per
//! test (a temp SQLite file, or a fresh schema or database on the PostgreSQL server named by
//! `COURIER_TEST_PG`, dropped afterwards) and the macros that turn one test body into a SQLite
//! and a PostgreSQL variant.
//!
//! Without `COURIER_TEST_PG` a PostgreSQL variant prints that it was skipped and passes, so
//! `cargo test` works on a machine with no database server; with `CI` set it fails instead, so
//! a CI run that lost its database cannot look green.

#![allow(dead_code)]

use std::time::Duration;

use courier::store::{Store, StoreOptions};
use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};

/// Names the PostgreSQL server for the PostgreSQL variants.
pub const PG_ENV: &str = "COURIER_TEST_PG";

/// One test's private database; dropping it deletes the file, schema or database.
pub struct TestDb {
    /// What a server's or store's `database_url` is set to.
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg: Option<PgSchema>,
}

/// What a PostgreSQL test made on the server, dropped with the test.
struct PgSchema {
    admin_url: String,
    /// The statement that drops it: a schema, or a whole database.
    drop: String,
    /// The database's name, when the test has a whole database of its own.
    database: Option<String>,
}

impl TestDb {
    /// A fresh SQLite file in a temp directory.
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = dir.path().join("courier-test.db").to_string_lossy().into_owned();
        TestDb { url, _dir: Some(dir), pg: None }
    }

    /// A fresh schema on the `COURIER_TEST_PG` server, or `None` (with a notice) when unset.
    pub fn postgres(test: &str) -> Option<TestDb> {
        let admin_url = admin_url(test)?;
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::establish(&admin_url).expect("connect to COURIER_TEST_PG");
        admin.batch_execute(&format!("CREATE SCHEMA {schema}")).expect("create test schema");
        // libpq's `options` sets search_path per connection, so every pooled connection (and
        // the migrations table) lands in this test's schema.
        let sep = if admin_url.contains('?') { '&' } else { '?' };
        let url = format!("{admin_url}{sep}options=-csearch_path%3D{schema}");
        let drop = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
        Some(TestDb { url, _dir: None, pg: Some(PgSchema { admin_url, drop, database: None }) })
    }

    /// A fresh database of its own on the `COURIER_TEST_PG` server, for a test that does to a
    /// whole database what others must not see (refusing its connections); or `None` (with a
    /// notice) when unset.
    pub fn postgres_database(test: &str) -> Option<TestDb> {
        Self::postgres_database_with(test, "")
    }

    /// A fresh database on the `COURIER_TEST_PG` server whose default collation is ICU's
    /// `en-US` (as on many production servers), not the byte order of the `test` database; or
    /// `None` (with a notice) when unset.
    pub fn postgres_icu(test: &str) -> Option<TestDb> {
        Self::postgres_database_with(
            test,
            " TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'",
        )
    }

    /// A fresh database made with `CREATE DATABASE <name><options>`.
    fn postgres_database_with(test: &str, options: &str) -> Option<TestDb> {
        let admin_url = admin_url(test)?;
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::establish(&admin_url).expect("connect to COURIER_TEST_PG");
        admin.batch_execute(&format!("CREATE DATABASE {name}{options}")).expect("create a test database");
        let (base, query) = admin_url.split_once('?').map_or((admin_url.as_str(), None), |(b, q)| (b, Some(q)));
        let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
        let url = match query {
            Some(q) => format!("{server}/{name}?{q}"),
            None => format!("{server}/{name}"),
        };
        let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        Some(TestDb { url, _dir: None, pg: Some(PgSchema { admin_url, drop, database: Some(name) }) })
    }

    /// The options [`open`](Self::open) uses.
    pub fn options(&self) -> StoreOptions {
        StoreOptions {
            url: self.url.clone(),
            pool_size: 4,
            connect_timeout: Duration::from_secs(10),
            busy_timeout: Duration::from_secs(10),
        }
    }

    /// Opens (or re-opens) a store on this database, running migrations.
    pub fn open(&self) -> Store {
        Store::open_with(&self.options()).expect("open test store")
    }

    /// A connection to the PostgreSQL server as the tests' administrator, or `None` for SQLite.
    pub fn pg_admin(&self) -> Option<PgConnection> {
        self.pg.as_ref().map(|pg| PgConnection::establish(&pg.admin_url).expect("connect to COURIER_TEST_PG"))
    }

    /// The name of the database of a [`postgres_database`](Self::postgres_database) (or ICU) test.
    pub fn pg_database(&self) -> Option<&str> {
        self.pg.as_ref().and_then(|pg| pg.database.as_deref())
    }

    /// The SQLite file's path, or `None` for PostgreSQL.
    pub fn sqlite_file(&self) -> Option<&str> {
        self.pg.is_none().then_some(self.url.as_str())
    }

    /// Whether this database is on PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.pg.is_some()
    }
}

/// The `COURIER_TEST_PG` server's URL; without it, `None` with a notice that `test` is
/// skipped, or a failure when `CI` is set.
fn admin_url(test: &str) -> Option<String> {
    match std::env::var(PG_ENV) {
        Ok(url) => Some(url),
        Err(_) if on_ci() => {
            panic!("CI is set but {PG_ENV} is not: the PostgreSQL variant of {test} cannot run")
        }
        Err(_) => {
            eprintln!("skipping the PostgreSQL variant of {test}: set {PG_ENV}=postgres://... to run it");
            None
        }
    }
}

/// Whether `CI` is set: then a test that cannot reach a server it needs fails instead of
/// skipping, so a CI run that lost a service cannot look green.
pub fn on_ci() -> bool {
    std::env::var_os("CI").is_some_and(|ci| !ci.is_empty())
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(pg) = &self.pg {
            match PgConnection::establish(&pg.admin_url) {
                Ok(mut admin) => {
                    if let Err(e) = admin.batch_execute(&pg.drop) {
                        eprintln!("could not clean up ({}): {e}", pg.drop);
                    }
                }
                Err(e) => eprintln!("could not clean up ({}): {e}", pg.drop),
            }
        }
    }
}

/// Runs `async fn $body(db: Arc<TestDb>)` as the tests `$name::sqlite` and `$name::postgres`
/// (for tests whose server keeps the database alive).
#[macro_export]
macro_rules! on_both_backends {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$body(std::sync::Arc::new($crate::support::TestDb::sqlite())).await;
            }

            #[tokio::test]
            async fn postgres() {
                if let Some(db) = $crate::support::TestDb::postgres(stringify!($name)) {
                    super::$body(std::sync::Arc::new(db)).await;
                }
            }
        }
    };
}

/// Writes each listed `async fn name(db: &TestDb)` as the tests `sqlite::name` and `pg::name`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::support::TestDb::sqlite();
                    super::$name(&db).await;
                }
            )*
        }
        mod pg {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = $crate::support::TestDb::postgres(stringify!($name)) else { return };
                    super::$name(&db).await;
                }
            )*
        }
    };
}
