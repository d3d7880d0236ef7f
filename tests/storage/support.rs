//! Test databases (one temp SQLite file or one fresh PostgreSQL schema per test) and the macro
//! that turns one generic test into a SQLite and a PostgreSQL variant.

use std::sync::Arc;
use std::time::Duration;

use courier::accounts::{Accounts, AccountsConfig, Clock, ManualClock};
use courier::store::{Store, StoreOptions};
use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};

/// Environment variable naming the PostgreSQL server for the `pg` variants.
pub const PG_ENV: &str = "COURIER_TEST_PG";

/// A start time far from zero so "expired" never coincides with "unset".
pub const T0: i64 = 1_700_000_000_000;

/// One test's private database; dropping it deletes the file or schema.
pub struct TestDb {
    url: String,
    _dir: Option<tempfile::TempDir>,
    pg: Option<PgSchema>,
}

/// What a PostgreSQL test made on the server, dropped with the test.
struct PgSchema {
    admin_url: String,
    /// The statement that drops it: a schema, or a whole database.
    drop: String,
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
        Some(TestDb { url, _dir: None, pg: Some(PgSchema { admin_url, drop }) })
    }

    /// A fresh database on the `COURIER_TEST_PG` server whose default collation is ICU's
    /// `en-US` (as on many production servers), not the byte order of the `test` database; or
    /// `None` (with a notice) when unset.
    pub fn postgres_icu(test: &str) -> Option<TestDb> {
        let admin_url = admin_url(test)?;
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::establish(&admin_url).expect("connect to COURIER_TEST_PG");
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER icu ICU_LOCALE 'en-US' \
                 LOCALE 'C.UTF-8'"
            ))
            .expect("create an ICU test database");
        let (base, query) = admin_url.split_once('?').map_or((admin_url.as_str(), None), |(b, q)| (b, Some(q)));
        let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
        let url = match query {
            Some(q) => format!("{server}/{name}?{q}"),
            None => format!("{server}/{name}"),
        };
        let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        Some(TestDb { url, _dir: None, pg: Some(PgSchema { admin_url, drop }) })
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

    /// A connection to the PostgreSQL server as the tests' administrator, or `None` for SQLite.
    pub fn pg_admin(&self) -> Option<PgConnection> {
        self.pg.as_ref().map(|pg| PgConnection::establish(&pg.admin_url).expect("connect to COURIER_TEST_PG"))
    }

    /// The SQLite file's path, or `None` for PostgreSQL.
    pub fn sqlite_file(&self) -> Option<&str> {
        self.pg.is_none().then_some(self.url.as_str())
    }

    /// Whether this database is a PostgreSQL schema.
    pub fn is_postgres(&self) -> bool {
        self.pg.is_some()
    }

    /// Opens (or re-opens) a store on this database, running migrations.
    pub fn open(&self) -> Store {
        Store::open_with(&self.options()).expect("open test store")
    }

    /// An accounts service on a new store over this database.
    pub fn accounts(&self, config: AccountsConfig) -> Accounts {
        Accounts::new(self.open(), config).expect("valid test config")
    }

    /// An accounts service with a manual clock.
    pub fn accounts_at(&self, config: AccountsConfig, clock: &ManualClock) -> Accounts {
        let clock: Arc<dyn Clock> = Arc::new(clock.clone());
        Accounts::with_clock(self.open(), config, clock).expect("valid test config")
    }
}

/// The `COURIER_TEST_PG` server's URL, or `None` with a notice that `test` is skipped.
fn admin_url(test: &str) -> Option<String> {
    let url = std::env::var(PG_ENV).ok();
    if url.is_none() {
        eprintln!("skipping PostgreSQL variant of {test}: set {PG_ENV}=postgres://... to run it");
    }
    url
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

/// Defaults with a cheap argon2 cost, so debug-build tests stay fast.
pub fn config() -> AccountsConfig {
    AccountsConfig {
        argon2_memory_kib: 64,
        argon2_iterations: 1,
        // The strict rule is the one with paths to test; it is off by default.
        require_contacts: true,
        ..AccountsConfig::default()
    }
}

/// A password that passes validation.
pub const PW: &str = "secretpassword";

/// Writes each `async fn name(db: &TestDb)` listed as `sqlite::name` and `pg::name` tests.
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
