//! Integration tests: a real server on an ephemeral port, driven over real WebSockets.

mod support;

mod accounts;
mod admin;
mod auth_limits;
mod channel_lifecycle;
mod cluster;
mod cluster_order;
mod cluster_outage;
mod cluster_presence;
mod cluster_processes;
mod cluster_signals;
mod connect;
mod edge;
mod error_codes;
mod limits;
mod load;
mod longpoll;
mod messaging;
mod messaging_durability;
mod metrics;
mod offset_limit;
mod presence;
mod reads;
mod rooms;
mod sessions;
mod shutdown;
mod signal;
mod signals;
