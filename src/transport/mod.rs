//! Transports: how frames reach channels. The WebSocket endpoint (`/socket/websocket`) upgrades
//! connections, authenticates them, and runs one [`socket::SocketSession`] actor per connection.
//! No SQL and no channel rules live here.

pub mod json_socket;
pub mod socket;
pub mod websocket;
pub mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::watch;

use crate::channels::{Router, SocketAuthenticator};
use crate::config::SocketConfig;
use crate::pubsub::PubSub;

/// Live-socket bookkeeping shared by every worker: counts and the shutdown signal.
#[derive(Debug)]
pub struct Sockets {
    live: AtomicUsize,
    next_id: AtomicU64,
    shutdown: watch::Sender<bool>,
}

impl Default for Sockets {
    fn default() -> Self {
        Sockets { live: AtomicUsize::new(0), next_id: AtomicU64::new(1), shutdown: watch::channel(false).0 }
    }
}

impl Sockets {
    /// Sockets currently open.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Tells every socket, current and future, to drain and close.
    pub fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }

    fn next_connection_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn opened(&self) {
        self.live.fetch_add(1, Ordering::Relaxed);
    }

    fn closed(&self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }

    fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

/// What the WebSocket endpoint needs, shared by all workers.
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
