//! `GET /socket/websocket`, the Phoenix endpoint: vsn negotiation, the `authToken` subprotocol,
//! authentication, and the [`SocketSession`]'s start once the connection is upgraded.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use actix_http::Request;
use actix_http::header::{self, HeaderMap, HeaderValue};
use actix_web::web;
use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use futures_util::future::LocalBoxFuture;

use super::TransportState;
use super::admission::Admission;
use super::connection::Connection;
use super::socket::SocketSession;
use super::upgrade::{Accepted, Endpoint};
use crate::channels::{ConnectError, ConnectRequest, SocketIdentity, SocketInfo};
use crate::error::{Code, Error};
use crate::protocol::Serializer;

/// The subprotocol phoenix.js offers (and requires echoed) when it sends an `authToken`.
const PHOENIX_SUBPROTOCOL: &str = "phoenix";
const BEARER_PREFIX: &str = "base64url.bearer.phx.";

impl Endpoint for TransportState {
    fn accept<'a>(self: Arc<Self>, req: &'a Request) -> LocalBoxFuture<'a, Result<Accepted, Error>> {
        Box::pin(accept(req, self))
    }
}

/// Checks a Phoenix client's handshake and authenticates it; the socket starts once the `101`
/// is out (see [`super::upgrade`]).
async fn accept(req: &Request, state: Arc<TransportState>) -> Result<Accepted, Error> {
    super::upgrade::verify_handshake(req, &state.settings.check_origin)?;
    let params = web::Query::<HashMap<String, String>>::from_query(req.uri().query().unwrap_or_default())
        .map_err(|_| Error::new(Code::BadQuery, "the query string is not valid form encoding"))?
        .into_inner();
    let serializer = negotiate(&params)?;
    let offered = offered_subprotocols(&req.head().headers);
    if !offered.is_empty() && !offered.iter().any(|p| p == PHOENIX_SUBPROTOCOL) {
        return Err(Error::new(Code::UnsupportedSubprotocol, "offer the \"phoenix\" subprotocol"));
    }
    let auth_token = match offered.iter().find_map(|p| p.strip_prefix(BEARER_PREFIX)) {
        None => None,
        // A token that was sent but cannot be read must not fall back to an anonymous socket.
        Some(encoded) => Some(
            decode_token(encoded)
                .ok_or_else(|| Error::new(Code::Forbidden, "the authToken subprotocol does not decode"))?,
        ),
    };
    let (request, identity, admission) = connect(&state, params, auth_token, req.peer_addr()).await?;
    let mut response = super::upgrade::switching_protocols(req);
    if !offered.is_empty() {
        response.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(PHOENIX_SUBPROTOCOL));
    }
    let info = SocketInfo::new(state.sockets.next_connection_id(), identity, request.params, serializer);
    let peer = request.peer;
    Ok(Accepted {
        response,
        max_bytes: state.settings.max_frame_bytes,
        start: Box::new(move |reader, writer| {
            tracing::info!(
                conn = info.connection_id.subscriber(),
                socket_id = info.identity.socket_id.as_deref(),
                user = info.identity.user.as_deref(),
                device = info.identity.device.as_deref(),
                vsn = ?serializer,
                ?peer,
                "socket connected"
            );
            let session = SocketSession::new(Rc::new(info), serializer, &state, writer, admission);
            Connection::start(session, reader);
        }),
    })
}

/// The serializer a connect's `vsn` asks for.
pub(super) fn negotiate(params: &HashMap<String, String>) -> Result<Serializer, Error> {
    Serializer::negotiate(params.get("vsn").map(String::as_str))
        .ok_or_else(|| Error::new(Code::UnsupportedVsn, "vsn must be 1.0.0 or 2.0.0"))
}

/// A Phoenix connect, for either transport: the auth token (if any) must agree with a `token`
/// param, the node must have room, the authenticator must accept, and the user must be under
/// their own limit. Returns the request, who it is and its place under the limits.
pub(super) async fn connect(
    state: &TransportState,
    params: HashMap<String, String>,
    auth_token: Option<String>,
    peer: Option<std::net::SocketAddr>,
) -> Result<(ConnectRequest, SocketIdentity, Admission), Error> {
    if let (Some(token), Some(query)) = (&auth_token, params.get("token"))
        && token != query
    {
        return Err(Error::new(Code::Forbidden, "the query token and the authToken differ"));
    }
    // A full or stopping node refuses before it spends a session lookup on the connect.
    state.sockets.precheck()?;
    let request = ConnectRequest { params, auth_token, peer };
    let identity = authenticate(state, &request).await?;
    // After authentication, so the user's own limit applies; a refusal frees both places.
    let admission = state.sockets.admit(identity.user.as_deref())?;
    Ok((request, identity, admission))
}

/// Runs the connect of `request` (Phoenix's `connect/3`): the identity, or the refusal to send.
async fn authenticate(state: &TransportState, request: &ConnectRequest) -> Result<SocketIdentity, Error> {
    match state.authenticator.connect(request).await {
        Ok(identity) => Ok(identity),
        Err(e @ ConnectError::Refused(_)) => {
            if let Some(suppressed) = crate::logging::client_mistake() {
                tracing::info!(peer = ?request.peer, reason = %e, suppressed, "socket refused");
            }
            Err(Error::new(Code::Forbidden, e.to_string()))
        }
        Err(e @ ConnectError::Unavailable(_)) => {
            tracing::warn!(peer = ?request.peer, reason = %e, "socket refused");
            Err(Error::new(Code::Unavailable, e.to_string()))
        }
    }
}

fn offered_subprotocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// phoenix.js sends `btoa(token)` without padding; accept either base64 alphabet, padded or not.
fn decode_token(encoded: &str) -> Option<String> {
    let lenient = GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let engines = [
        GeneralPurpose::new(&base64::alphabet::STANDARD, lenient),
        GeneralPurpose::new(&base64::alphabet::URL_SAFE, lenient),
    ];
    engines.iter().find_map(|engine| engine.decode(encoded).ok()).and_then(|bytes| String::from_utf8(bytes).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_tokens_in_both_alphabets_with_or_without_padding() {
        // btoa("a?b>") == "YT9iPg==" (standard) and "YT9iPg" without padding.
        assert_eq!(decode_token("YT9iPg").as_deref(), Some("a?b>"));
        assert_eq!(decode_token("YT9iPg==").as_deref(), Some("a?b>"));
        // "??>" encodes to "Pz8+" in standard and "Pz8-" in the URL alphabet.
        assert_eq!(decode_token("Pz8+").as_deref(), Some("??>"));
        assert_eq!(decode_token("Pz8-").as_deref(), Some("??>"));
        assert_eq!(decode_token("!!!"), None);
    }
}
