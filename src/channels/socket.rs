//! Socket-level identity: who is connecting (Phoenix's `connect/3` and `id/1`).
//!
//! The transport parses connect params and the `authToken` subprotocol, then asks a
//! [`SocketAuthenticator`] whether to accept the socket and who it is.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::future::LocalBoxFuture;

use crate::clock::Clock;
use crate::presence::{Lease, Tracker};
use crate::protocol::Serializer;
use crate::pubsub::ConnectionId;

/// What a connecting client presented.
#[derive(Debug, Clone, Default)]
pub struct ConnectRequest {
    /// The query-string params (`vsn` included), as Phoenix passes them to `connect/3`.
    pub params: HashMap<String, String>,
    /// The token from the `base64url.bearer.phx.*` subprotocol, decoded.
    pub auth_token: Option<String>,
    /// The peer's address.
    pub peer: Option<SocketAddr>,
}

/// Who an accepted socket is.
#[derive(Debug, Clone, Default)]
pub struct SocketIdentity {
    /// The socket id (Phoenix's `id/1`): a `disconnect` broadcast on this topic closes the socket.
    pub socket_id: Option<String>,
    /// The authenticated user (`eid`), or `None` for an anonymous socket.
    pub user: Option<String>,
    /// The device (`connection_resource_id`) the socket speaks for.
    pub device: Option<String>,
    /// The session that authenticated the socket; the socket ends when it does.
    pub session: Option<SessionGrant>,
}

/// The session behind an authenticated socket: how the socket hears that it ended, and when it
/// expires by the accounts' clock.
#[derive(Clone)]
pub struct SessionGrant {
    /// The topic on which the session's end is announced (a `disconnect` event).
    pub topic: String,
    /// When the session expires (ms since the epoch, by `clock`).
    pub expires_at: i64,
    /// The clock the accounts decide expiry by.
    pub clock: Arc<dyn Clock>,
    /// Asks whether the session is still live; the socket asks once it listens on `topic`.
    pub still_live: Option<SessionCheck>,
}

/// A check of whether a session is still live (see [`SessionGrant::still_live`]).
pub type SessionCheck = Arc<dyn Fn() -> LocalBoxFuture<'static, bool> + Send + Sync>;

impl SessionGrant {
    /// Whether the session has expired.
    pub fn expired(&self) -> bool {
        self.clock.now_millis() >= self.expires_at
    }

    /// How long until the session expires (zero once it has).
    pub fn remaining(&self) -> std::time::Duration {
        let left = self.expires_at.saturating_sub(self.clock.now_millis());
        std::time::Duration::from_millis(u64::try_from(left).unwrap_or(0))
    }

    /// Whether the session is still live, by `still_live` (live when there is no check).
    pub fn recheck(&self) -> LocalBoxFuture<'static, bool> {
        match &self.still_live {
            Some(check) => check(),
            None => Box::pin(std::future::ready(true)),
        }
    }
}

impl std::fmt::Debug for SessionGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionGrant").field("topic", &self.topic).field("expires_at", &self.expires_at).finish()
    }
}

/// Why a connect was refused (answered with HTTP 403).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The credentials were missing, wrong or expired.
    #[error("{0}")]
    Refused(String),
    /// Authentication could not be decided (e.g. the database is down).
    #[error("authentication unavailable: {0}")]
    Unavailable(String),
}

/// Decides whether a socket may connect, and who it is.
pub trait SocketAuthenticator: Send + Sync + 'static {
    /// Accepts or refuses a connect.
    fn connect(&self, request: &ConnectRequest) -> LocalBoxFuture<'static, Result<SocketIdentity, ConnectError>>;
}

/// Accepts every socket as anonymous.
#[derive(Debug, Clone, Copy, Default)]
pub struct AnonymousSockets;

impl SocketAuthenticator for AnonymousSockets {
    fn connect(&self, _: &ConnectRequest) -> LocalBoxFuture<'static, Result<SocketIdentity, ConnectError>> {
        Box::pin(async { Ok(SocketIdentity::default()) })
    }
}

/// A connected socket, as channels see it.
#[derive(Debug)]
pub struct SocketInfo {
    /// Unique across nodes and restarts; its sequence number is the socket's id in this node's
    /// pub/sub registry.
    pub connection_id: ConnectionId,
    /// Who the socket is.
    pub identity: SocketIdentity,
    /// The connect params (never logged: they may hold tokens).
    pub params: HashMap<String, String>,
    /// The wire format the client chose (`vsn`); only V2 carries binary payloads.
    pub serializer: Serializer,
    /// The presence leases this socket holds, one per tracker it tracked with; they drop with
    /// the socket, so its presences leave even if it crashes.
    leases: RefCell<Vec<(usize, Lease)>>,
}

impl SocketInfo {
    /// Describes a newly accepted connection.
    pub fn new(
        connection_id: ConnectionId,
        identity: SocketIdentity,
        params: HashMap<String, String>,
        serializer: Serializer,
    ) -> Self {
        SocketInfo { connection_id, identity, params, serializer, leases: RefCell::new(Vec::new()) }
    }

    /// This socket as the owner of presences on `tracker`, taking a lease from it on first use,
    /// so its presences leave when it does.
    pub fn presence_owner(&self, tracker: &Arc<dyn Tracker>) -> &ConnectionId {
        // The tracker's address tells trackers apart; the vector almost always holds one.
        let key = Arc::as_ptr(tracker).cast::<()>() as usize;
        let mut leases = self.leases.borrow_mut();
        if !leases.iter().any(|(k, _)| *k == key) {
            // Most sockets only ever hold one lease; a default push would allocate room for four.
            leases.reserve_exact(1);
            leases.push((key, tracker.lease(&self.connection_id)));
        }
        &self.connection_id
    }
}
