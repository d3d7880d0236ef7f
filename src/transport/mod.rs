//! Transports: how frames reach channels. [`upgrade`] takes upgraded connections out of the HTTP
//! server; the WebSocket endpoint (`/socket/websocket`) authenticates them and runs one
//! [`socket::SocketSession`] actor per connection over [`ws_io`]'s framing. No SQL and no channel
//! rules live here.

pub mod json_socket;
pub mod socket;
pub mod upgrade;
pub mod websocket;
pub mod writer;
pub mod ws_io;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::channels::{Router, SocketAuthenticator};
use crate::config::SocketConfig;
use crate::pubsub::PubSub;

/// After the server sends a close frame, how long it waits for the client's before dropping.
const CLOSE_HANDSHAKE_GRACE: Duration = Duration::from_secs(2);

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

    /// Resolves once shutdown is requested (at once if it already was).
    fn shutdown_requested(&self) -> impl std::future::Future<Output = ()> + 'static {
        let mut signal = self.shutdown.subscribe();
        async move {
            let _ = signal.wait_for(|down| *down).await;
        }
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
