//! Fixed SQL statements with typed binds that diesel prepares once per connection and reuses.
//!
//! Diesel refuses to cache upserts, `UPDATE`s, `IN (...)` lists and multi-row inserts, so on the
//! log writer's path every such statement was parsed again per execution (13% of its time on
//! SQLite) and cost PostgreSQL an extra round trip. A [`Statement`] is plain SQL whose `?`s
//! are its binds; diesel writes each as the backend's placeholder (`?` or `$n`) and caches the
//! prepared statement by its text.

use std::marker::PhantomData;

use diesel::RunQueryDsl;
use diesel::backend::Backend;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::result::{Error as DieselError, QueryResult};
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};

/// One bind value with the SQL type it is sent as.
trait Bind<DB: Backend> {
    fn push<'b>(&'b self, out: &mut AstPass<'_, 'b, DB>) -> QueryResult<()>;
}

struct Typed<ST, T> {
    value: T,
    sql_type: PhantomData<fn() -> ST>,
}

impl<DB, ST, T> Bind<DB> for Typed<ST, T>
where
    DB: Backend + HasSqlType<ST>,
    T: ToSql<ST, DB>,
{
    fn push<'b>(&'b self, out: &mut AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_bind_param::<ST, T>(&self.value)
    }
}

/// A fixed statement and its binds; `ST` is the SQL type of the rows it returns, if any.
pub(crate) struct Statement<'a, DB: Backend, ST = Untyped> {
    sql: &'static str,
    binds: Vec<Box<dyn Bind<DB> + 'a>>,
    planned_per_run: bool,
    row: PhantomData<fn() -> ST>,
}

impl<'a, DB: Backend, ST> Statement<'a, DB, ST> {
    /// A statement whose `?`s are filled, in order, by the [`bind`](Self::bind) calls.
    pub(crate) fn new(sql: &'static str) -> Self {
        Statement { sql, binds: Vec::new(), planned_per_run: false, row: PhantomData }
    }

    /// Leaves the statement out of diesel's cache, so that the database plans it for its
    /// binds on every run. For a lookup whose best plan depends on how many keys it gets and
    /// on how large the table has grown: PostgreSQL fixes a cached statement's plan at its
    /// sixth run, guessing ten elements per array, and on a new database that plan scans the
    /// whole table for good. On PostgreSQL an uncached statement is still one round trip.
    pub(crate) fn planned_per_run(mut self) -> Self {
        self.planned_per_run = true;
        self
    }

    /// Binds the next `?` to `value`, sent as SQL type `BT`.
    pub(crate) fn bind<BT: 'a, T: ToSql<BT, DB> + 'a>(mut self, value: T) -> Self
    where
        DB: HasSqlType<BT>,
    {
        self.binds.push(Box::new(Typed { value, sql_type: PhantomData::<fn() -> BT> }));
        self
    }
}

impl<DB: Backend, ST> QueryFragment<DB> for Statement<'_, DB, ST> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        if self.planned_per_run {
            out.unsafe_to_cache_prepared();
        }
        let mut parts = self.sql.split('?');
        out.push_sql(parts.next().unwrap_or_default());
        let mut binds = self.binds.iter();
        for part in parts {
            let Some(bind) = binds.next() else { return Err(mismatch(self.sql, self.binds.len())) };
            bind.push(&mut out)?;
            out.push_sql(part);
        }
        if binds.next().is_some() {
            return Err(mismatch(self.sql, self.binds.len()));
        }
        Ok(())
    }
}

fn mismatch(sql: &str, binds: usize) -> DieselError {
    DieselError::QueryBuilderError(format!("{binds} binds do not fit the placeholders of: {sql}").into())
}

// Not a static id: the cache key is then the SQL text, which is fixed per statement.
impl<DB: Backend, ST> QueryId for Statement<'_, DB, ST> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<DB: Backend, ST: 'static> Query for Statement<'_, DB, ST> {
    type SqlType = ST;
}

impl<Conn, DB: Backend, ST> RunQueryDsl<Conn> for Statement<'_, DB, ST> {}

#[cfg(test)]
mod tests {
    use diesel::connection::SimpleConnection;
    use diesel::prelude::*;
    use diesel::sql_types::{BigInt, Text};
    use diesel::sqlite::Sqlite;

    use super::*;

    fn memory() -> SqliteConnection {
        let mut conn = SqliteConnection::establish(":memory:").expect("in-memory SQLite");
        conn.batch_execute("CREATE TABLE t (k TEXT PRIMARY KEY, n BIGINT NOT NULL)").expect("table");
        conn
    }

    #[test]
    fn binds_fill_placeholders_in_order_and_rows_load() {
        let mut conn = memory();
        for (k, n) in [("a", 1_i64), ("b", 2)] {
            let inserted = Statement::<Sqlite>::new("INSERT INTO t (k, n) VALUES (?, ?)")
                .bind::<Text, _>(k)
                .bind::<BigInt, _>(n)
                .execute(&mut conn)
                .expect("insert");
            assert_eq!(inserted, 1);
        }
        let rows: Vec<(String, i64)> =
            Statement::<Sqlite, (Text, BigInt)>::new("SELECT k, n FROM t WHERE n >= ? ORDER BY k")
                .bind::<BigInt, _>(2_i64)
                .load(&mut conn)
                .expect("select");
        assert_eq!(rows, vec![("b".to_owned(), 2)]);
    }

    #[test]
    fn a_bind_count_that_does_not_fit_is_an_error_not_a_panic() {
        let mut conn = memory();
        let too_few =
            Statement::<Sqlite>::new("INSERT INTO t (k, n) VALUES (?, ?)").bind::<Text, _>("a").execute(&mut conn);
        assert!(matches!(too_few, Err(DieselError::QueryBuilderError(_))), "{too_few:?}");
        let too_many = Statement::<Sqlite>::new("DELETE FROM t WHERE k = ?")
            .bind::<Text, _>("a")
            .bind::<Text, _>("b")
            .execute(&mut conn);
        assert!(matches!(too_many, Err(DieselError::QueryBuilderError(_))), "{too_many:?}");
    }
}
