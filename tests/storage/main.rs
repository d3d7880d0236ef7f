//! Storage and accounts integration tests. Every test runs on SQLite (a temp file) and, when
//! `COURIER_TEST_PG` is set (e.g. `postgres://postgres@127.0.0.1/test`), on PostgreSQL in a
//! schema of its own; without it the PostgreSQL variants print a notice and pass, or fail when
//! `CI` is set.

#[macro_use]
mod support;

mod accounts;
mod auth_limits;
mod cross_writers;
mod held_writer;
mod http_api;
mod invites;
mod keys;
mod log_full;
mod log_writer;
mod reads;
mod restart;
mod schema;
mod wal;
