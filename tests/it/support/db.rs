//! One database per test server: a temp SQLite file, or a fresh schema on the PostgreSQL
//! server named by `COURIER_TEST_PG` (dropped afterwards).

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};

/// Names the PostgreSQL server for the PostgreSQL variants.
pub const PG_ENV: &str = "COURIER_TEST_PG";

/// A database that lives as long as the test needs it.
pub struct TestDb {
    /// What the server's `database_url` is set to.
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_schema: Option<(String, String)>,
}

impl TestDb {
    /// A fresh SQLite file.
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = dir.path().join("courier.db").to_string_lossy().into_owned();
        TestDb { url, _dir: Some(dir), pg_schema: None }
    }

    /// A fresh PostgreSQL schema, or `None` with a printed notice when `COURIER_TEST_PG` is unset.
    pub fn postgres(test: &str) -> Option<TestDb> {
        let Ok(admin_url) = std::env::var(PG_ENV) else {
            eprintln!("skipping the PostgreSQL variant of {test}: set {PG_ENV}=postgres://... to run it");
            return None;
        };
        let schema = format!("it_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::establish(&admin_url).expect("connect to COURIER_TEST_PG");
        admin.batch_execute(&format!("CREATE SCHEMA {schema}")).expect("create schema");
        let sep = if admin_url.contains('?') { '&' } else { '?' };
        let url = format!("{admin_url}{sep}options=-csearch_path%3D{schema}");
        Some(TestDb { url, _dir: None, pg_schema: Some((admin_url, schema)) })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin_url, schema)) = &self.pg_schema
            && let Ok(mut admin) = PgConnection::establish(admin_url)
        {
            let _ = admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
        }
    }
}

/// Runs an async test body once per backend: SQLite always, PostgreSQL when configured.
#[macro_export]
macro_rules! on_both_backends {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$body(std::sync::Arc::new($crate::support::db::TestDb::sqlite())).await;
            }

            #[tokio::test]
            async fn postgres() {
                if let Some(db) = $crate::support::db::TestDb::postgres(stringify!($name)) {
                    super::$body(std::sync::Arc::new(db)).await;
                }
            }
        }
    };
}
