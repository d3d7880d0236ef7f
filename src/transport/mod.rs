//! Transports: how frames reach channels. [`edge`] admits every TCP connection (the connection
//! limit, the first request head) before actix-http parses it; [`upgrade`] takes upgraded
//! connections out of the HTTP server; the WebSocket endpoint (`/socket/websocket`) authenticates them and runs one
//! [`socket::SocketSession`] actor per connection over [`ws_io`]'s framing. No SQL and no channel
//! rules live here.

pub mod edge;
pub mod json_socket;
pub mod socket;
pub mod upgrade;
pub mod websocket;
pub mod writer;
pub mod ws_io;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use actix_ws::{CloseCode, ProtocolError};
use tokio::sync::watch;

use crate::channels::{Router, SocketAuthenticator};
use crate::config::SocketConfig;
use crate::pubsub::PubSub;

/// After the server sends a close frame, how long it waits for the client's before dropping.
const CLOSE_HANDSHAKE_GRACE: Duration = Duration::from_secs(2);

/// How often a socket checks whether it has been idle for `idle`.
fn idle_check_interval(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_millis(25), Duration::from_secs(5))
}

/// The close code and reason for a client frame the reader could not take (RFC 6455 §7.4.1):
/// 1009 for a frame over the limit, 1007 for text that is not UTF-8, 1002 for the rest.
fn read_error_close(error: &ProtocolError) -> (CloseCode, &'static str) {
    match error {
        ProtocolError::Overflow => (CloseCode::Size, "frame too large"),
        ProtocolError::Io(e) if ws_io::is_invalid_utf8(e) => (CloseCode::Invalid, "text frame is not valid UTF-8"),
        _ => (CloseCode::Protocol, "websocket protocol error"),
    }
}

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
