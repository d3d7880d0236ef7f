//! The embedded migration sets, one per dialect, applied at start-up.

use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use super::{DbConnection, StoreError};

/// SQLite migrations, compiled into the binary.
pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
/// PostgreSQL migrations, compiled into the binary.
pub const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// The PostgreSQL advisory lock nodes take around their migrations (an arbitrary constant:
/// "courier" in ASCII), so nodes starting at once on an empty database migrate one at a time.
const MIGRATION_LOCK: i64 = 0x0063_6f75_7269_6572;

/// Applies every pending migration for the connection's dialect; returns the versions applied.
pub fn run_pending(conn: &mut DbConnection) -> Result<Vec<String>, StoreError> {
    let applied = match conn {
        DbConnection::Sqlite(c) => {
            c.run_pending_migrations(SQLITE_MIGRATIONS).map(|v| v.iter().map(|m| m.to_string()).collect())
        }
        DbConnection::Pg(c) => {
            // Without it two nodes both create the first tables and one fails on a duplicate
            // type; with it the second finds nothing left to apply.
            use diesel::RunQueryDsl;
            let lock = format!("SELECT pg_advisory_lock({MIGRATION_LOCK})");
            diesel::sql_query(lock).execute(c).map_err(|e| StoreError::Migration(e.to_string()))?;
            let applied =
                c.run_pending_migrations(POSTGRES_MIGRATIONS).map(|v| v.iter().map(|m| m.to_string()).collect());
            let unlock = format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})");
            diesel::sql_query(unlock).execute(c).map_err(|e| StoreError::Migration(e.to_string()))?;
            applied
        }
    };
    applied.map_err(|e| StoreError::Migration(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::migration::MigrationSource;
    use diesel::pg::Pg;
    use diesel::sqlite::Sqlite;

    fn names<DB: diesel::backend::Backend>(source: &impl MigrationSource<DB>) -> Vec<String> {
        let migrations = source.migrations().expect("embedded migrations are readable");
        let mut names: Vec<String> = migrations.iter().map(|m| m.name().to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn both_dialects_have_the_same_versions() {
        let sqlite = names::<Sqlite>(&SQLITE_MIGRATIONS);
        let postgres = names::<Pg>(&POSTGRES_MIGRATIONS);
        assert!(!sqlite.is_empty(), "no SQLite migrations embedded");
        assert_eq!(sqlite, postgres, "migrations/sqlite and migrations/postgres differ");
    }

    #[test]
    fn directories_on_disk_match_too() {
        // Catches a directory added for one dialect before the embedded sets are rebuilt.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let list = |dialect: &str| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(root.join(dialect))
                .expect("migration dir exists")
                .filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let sqlite = list("sqlite");
        assert!(!sqlite.is_empty());
        assert_eq!(sqlite, list("postgres"));
    }
}
