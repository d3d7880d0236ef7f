//! `GET /socket/websocket`: vsn negotiation, the `authToken` subprotocol, authentication, upgrade.

use std::collections::HashMap;
use std::rc::Rc;

use actix_web::error::PayloadError;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use futures_util::{FutureExt, StreamExt};
use serde_json::json;

use super::TransportState;
use super::socket::SocketSession;
use crate::channels::{ConnectError, ConnectRequest, SocketInfo};
use crate::protocol::Serializer;

/// The subprotocol phoenix.js offers (and requires echoed) when it sends an `authToken`.
const PHOENIX_SUBPROTOCOL: &str = "phoenix";
const BEARER_PREFIX: &str = "base64url.bearer.phx.";

/// Handles the WebSocket upgrade for Phoenix clients.
pub async fn upgrade(req: HttpRequest, body: web::Payload, state: web::Data<TransportState>) -> HttpResponse {
    if let Err(e) = actix_http::ws::verify_handshake(req.head()) {
        return error(HttpResponse::BadRequest(), "bad_handshake", &e.to_string());
    }
    let params = match web::Query::<HashMap<String, String>>::from_query(req.query_string()) {
        Ok(q) => q.into_inner(),
        Err(_) => return error(HttpResponse::BadRequest(), "bad_query", "the query string is not valid form encoding"),
    };
    let Some(serializer) = Serializer::negotiate(params.get("vsn").map(String::as_str)) else {
        return error(HttpResponse::Forbidden(), "unsupported_vsn", "vsn must be 1.0.0 or 2.0.0");
    };
    let offered = offered_subprotocols(&req);
    if !offered.is_empty() && !offered.iter().any(|p| p == PHOENIX_SUBPROTOCOL) {
        return error(HttpResponse::Forbidden(), "unsupported_subprotocol", "offer the \"phoenix\" subprotocol");
    }
    let auth_token = offered.iter().find_map(|p| p.strip_prefix(BEARER_PREFIX)).and_then(decode_token);

    let request = ConnectRequest { params, auth_token, peer: req.peer_addr() };
    let identity = match state.authenticator.connect(&request).await {
        Ok(identity) => identity,
        Err(e @ ConnectError::Refused(_)) => {
            tracing::info!(peer = ?request.peer, reason = %e, "socket refused");
            return error(HttpResponse::Forbidden(), "unauthorized", &e.to_string());
        }
        Err(e @ ConnectError::Unavailable(_)) => {
            tracing::warn!(peer = ?request.peer, reason = %e, "socket refused");
            return error(HttpResponse::ServiceUnavailable(), "unavailable", &e.to_string());
        }
    };

    let Some(body) = end_at_disconnect(&req, body) else {
        return error(HttpResponse::InternalServerError(), "internal", "the request body could not be taken");
    };
    let (mut response, session, stream) = match actix_ws::handle_with_protocols(&req, body, &[PHOENIX_SUBPROTOCOL]) {
        Ok(parts) => parts,
        Err(e) => return e.error_response(),
    };
    if !offered.is_empty() {
        response.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(PHOENIX_SUBPROTOCOL));
    }
    let info = SocketInfo::new(state.sockets.next_connection_id(), identity, request.params, serializer);
    tracing::info!(
        conn = info.connection_id,
        socket_id = info.identity.socket_id.as_deref(),
        user = info.identity.user.as_deref(),
        device = info.identity.device.as_deref(),
        vsn = ?serializer,
        peer = ?request.peer,
        "socket connected"
    );
    let stream = super::limit_messages(stream, state.settings.max_frame_bytes);
    SocketSession::new(Rc::new(info), serializer, &state, session).start_with(stream);
    response
}

/// Turns the connection dropping into a plain end of the byte stream.
///
/// actix-http reports a peer that closes its TCP connection as a payload error, and actix-ws
/// answers a payload error by discarding the bytes it has read but not yet decoded. A client
/// that sends a last push and closes at once (a tab closing right after "send") would lose that
/// push. Ending the stream instead lets the frames already received be handled first.
/// `None` never happens in practice: taking a payload is infallible and ready at once.
fn end_at_disconnect(req: &HttpRequest, body: web::Payload) -> Option<web::Payload> {
    let until_disconnect = body.scan((), |_, chunk| {
        std::future::ready(match chunk {
            Err(PayloadError::Incomplete(_)) => None,
            other => Some(other),
        })
    });
    let stream: actix_http::BoxedPayloadStream = Box::pin(until_disconnect);
    let mut payload = actix_http::Payload::Stream { payload: stream };
    web::Payload::from_request(req, &mut payload).now_or_never()?.ok()
}

fn offered_subprotocols(req: &HttpRequest) -> Vec<String> {
    req.headers()
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

fn error(mut builder: actix_web::HttpResponseBuilder, code: &str, reason: &str) -> HttpResponse {
    builder.json(json!({ "error": code, "reason": reason }))
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
