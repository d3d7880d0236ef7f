//! Transports: how frames reach channels. [`edge`] admits every TCP connection (the connection
//! limit, the first request head) before actix-http parses it; [`admission`] admits every
//! socket (the node's and each user's socket limits) and drains them at shutdown; [`upgrade`] takes upgraded
//! connections out of the HTTP server and hands each to the [`upgrade::Endpoint`] registered at
//! its path. Every socket, whichever endpoint accepted it, runs as one
//! [`connection::Connection`] actor over [`ws_io`]'s framing and [`writer`]'s queue; the endpoint
//! supplies its [`connection::Session`]: the Phoenix one ([`websocket`] accepts,
//! [`socket::SocketSession`] speaks it) the seed-002 JSON one ([`json_socket`]) or the
//! seed-001 key-directory one ([`signal_socket`]). [`longpoll`] runs the Phoenix session over
//! HTTP polls instead of a WebSocket, on the same actor. No SQL and
//! no channel rules live here.

pub mod admission;
pub mod connection;
pub mod edge;
pub mod json_socket;
pub mod longpoll;
pub mod origin;
pub mod signal_socket;
pub mod socket;
pub mod upgrade;
pub mod websocket;
pub mod writer;
pub mod ws_io;

use std::sync::Arc;

pub use connection::Sockets;

use crate::channels::{Router, SocketAuthenticator};
use crate::config::SocketConfig;
use crate::pubsub::PubSub;

/// What the Phoenix endpoint (`/socket/websocket`) needs, shared by all workers.
pub struct TransportState {
    /// Channel families by topic pattern.
    pub router: Arc<Router>,
    /// The pub/sub layer.
    pub pubsub: PubSub,
    /// Accepts or refuses connects.
    pub authenticator: Arc<dyn SocketAuthenticator>,
    /// Per-socket limits.
    pub settings: Arc<SocketConfig>,
    /// Live sockets and shutdown.
    pub sockets: Arc<Sockets>,
}
