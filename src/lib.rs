//! Courier: a real-time messaging server speaking the Phoenix Channels protocol on actix.
//!
//! Data flows inward: `transport` (WebSocket framing, one actor per socket) → `protocol` (wire
//! codecs) → `channels` (per-topic behaviour) → `pubsub` (topic registry, broker). `server` wires
//! the pieces together; `http` holds the non-socket routes; `store` owns every SQL query and
//! `accounts` the users, sessions and invites built on it; `messaging` owns message logs,
//! offsets, receipts and status signals (who may message whom it asks `accounts`' one policy),
//! `presence` who is online on a topic, `keys` the seed-001 key directory (its sealed messages
//! live in `messaging`'s logs), and `pb` the wire types generated from `proto/`.
//! `transport::edge` admits every TCP connection before HTTP parsing; `logging` keeps what
//! clients get wrong out of the error log; `error` is the one table of error codes every
//! module's error enum maps into; `clock` is the one source of wall-clock time; `task` the
//! queue workers shutdown drains and stops; `metrics` the counters `/metrics` serves.

pub mod accounts;
pub mod channels;
pub mod clock;
pub mod config;
pub mod error;
pub mod http;
pub mod keys;
pub mod logging;
pub mod messaging;
pub mod metrics;
pub mod pb;
pub mod presence;
pub mod protocol;
pub mod pubsub;
pub mod server;
pub mod store;
pub mod task;
pub mod transport;

pub use config::Config;
pub use server::{Courier, RunningServer};
