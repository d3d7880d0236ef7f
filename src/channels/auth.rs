//! The production socket authenticator: a session token (from `token=` or phoenix.js's
//! `authToken` subprotocol) and an optional `device` param identify the user and device.

use std::sync::Arc;

use futures_util::future::LocalBoxFuture;

use super::socket::{ConnectError, ConnectRequest, SessionCheck, SessionGrant, SocketAuthenticator, SocketIdentity};
use crate::accounts::{Accounts, SessionEnds, SessionInfo};
use crate::protocol::Payload;
use crate::pubsub::{PubSub, Topic};
use crate::transport::socket::DISCONNECT_EVENT;

/// The socket id every socket of `username` shares; a `disconnect` on it closes them all.
pub fn user_socket_id(username: &str) -> String {
    format!("users_socket:{username}")
}

/// How a socket authenticated by `info` learns that the session ended or expired.
pub fn session_grant(accounts: &Accounts, info: &SessionInfo) -> SessionGrant {
    let (checker, digest) = (accounts.clone(), info.digest.clone());
    let still_live: SessionCheck = Arc::new(move || {
        let (accounts, digest) = (checker.clone(), digest.clone());
        Box::pin(async move { accounts.session_live(&digest).await })
    });
    SessionGrant {
        topic: Topic::session(&info.session_id).into(),
        expires_at: info.expires_at,
        clock: accounts.clock(),
        still_live: Some(still_live),
    }
}

/// Announces ended sessions through pub/sub, so their sockets close on every node.
pub struct AnnounceSessionEnds(pub PubSub);

impl SessionEnds for AnnounceSessionEnds {
    fn ended(&self, session_id: &str) {
        self.0.broadcast(Topic::session(session_id).as_str(), DISCONNECT_EVENT, Payload::empty());
    }
}

/// Accepts anonymous sockets and sockets with a live session token; refuses bad tokens.
#[derive(Clone)]
pub struct SessionAuthenticator {
    accounts: Accounts,
}

impl SessionAuthenticator {
    /// Authenticates against these accounts.
    pub fn new(accounts: Accounts) -> Self {
        SessionAuthenticator { accounts }
    }
}

impl SocketAuthenticator for SessionAuthenticator {
    fn connect(&self, request: &ConnectRequest) -> LocalBoxFuture<'static, Result<SocketIdentity, ConnectError>> {
        let token = request.auth_token.clone().or_else(|| request.params.get("token").cloned());
        let device = request.params.get("device").cloned();
        let accounts = self.accounts.clone();
        Box::pin(async move {
            let Some(token) = token.filter(|t| !t.is_empty()) else {
                // No credentials: an anonymous socket, limited to public topics by the channels.
                return Ok(SocketIdentity::default());
            };
            let session = match &device {
                Some(device) => accounts.bind_device(&token, device).await,
                None => accounts.verify_session(&token).await,
            };
            match session {
                Ok(info) => Ok(SocketIdentity {
                    socket_id: Some(user_socket_id(&info.username)),
                    session: Some(session_grant(&accounts, &info)),
                    user: Some(info.username),
                    device: info.device_id,
                }),
                Err(e) if e.http_status() >= 500 => Err(ConnectError::Unavailable(e.code().to_owned())),
                Err(e) => Err(ConnectError::Refused(e.code().to_owned())),
            }
        })
    }
}
