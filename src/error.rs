//! The crate's one wire-error table, and the HTTP error every route answers with.
//!
//! Each module keeps its own `thiserror` enum (`AccountError`, `MessagingError`, the edge's and
//! the upgrade's refusals); each maps its variants to a [`Code`] here, and only here does a code
//! get its stable snake_case name, its HTTP status and its seed-002 `resp_code`. [`Error`] is what
//! HTTP handlers return: it implements actix-web's `ResponseError`, so every refusal is the same
//! JSON body `{"error", "reason", "resp_code"}` with its status (and `Retry-After` where one helps).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

/// Seed-002 status codes (0–6) plus Courier's own (7 and up) for failures the seed leaves open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RespCode {
    /// 0: the request succeeded.
    Success = 0,
    /// 1: the session token is unknown, expired or revoked.
    BadToken = 1,
    /// 2: the username is taken.
    UserInUse = 2,
    /// 3: the requested password hash is not offered.
    HashNotAvailable = 3,
    /// 4: the requested cipher is not offered.
    CipherNotAvailable = 4,
    /// 5: no user has that name.
    NoSuchUser = 5,
    /// 6: the password does not match.
    WrongPassword = 6,
    /// 7 (Courier): a field is missing its rules (length, characters).
    InvalidInput = 7,
    /// 8 (Courier): the thing referred to (an invite) does not exist.
    NotFound = 8,
    /// 9 (Courier): the request conflicts with existing state (already contacts).
    Conflict = 9,
    /// 10 (Courier): the session may not do this (not contacts, wrong `source`).
    Forbidden = 10,
    /// 11 (Courier): a quota is full (too many queued messages, too many sign-in attempts).
    LimitExceeded = 11,
    /// 12 (Courier): the server failed; details are logged, not sent.
    Internal = 12,
    /// 13 (Courier): the server is too busy hashing passwords; retry shortly.
    Busy = 13,
}

impl RespCode {
    /// The number sent as `resp_code`.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// Whether this code is one of the seed's own (0–6); Courier's extra codes carry a `reason`.
    pub fn is_seed_code(self) -> bool {
        self.as_u8() <= 6
    }
}

/// Every error code Courier sends, on any surface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// The session token is unknown (or not a token).
    BadToken,
    /// The session's lifetime is over.
    SessionExpired,
    /// The session was signed out or revoked.
    SessionRevoked,
    /// The username (or one that normalizes to it) is taken.
    UserInUse,
    /// The requested password hash is not offered.
    HashNotAvailable,
    /// The requested cipher is not offered.
    CipherNotAvailable,
    /// No live user has that name.
    NoSuchUser,
    /// The password does not match.
    WrongPassword,
    /// A field breaks its rules.
    InvalidInput,
    /// A new username mixes scripts.
    MixedScriptUsername,
    /// No pending invite from that user.
    NoSuchInvite,
    /// The two users are contacts already.
    AlreadyContacts,
    /// Messages need an accepted invite first.
    NotContacts,
    /// The frame's sender is not the authenticated user.
    SourceMismatch,
    /// A message or signal names a receiver that is not a user.
    UnknownRecipient,
    /// The recipient's offline queue is full.
    QueueFull,
    /// Too many attempts or requests; retry later.
    RateLimited,
    /// Every password-hashing slot or the log writer's queue is taken; retry shortly.
    Busy,
    /// The server is at a limit or stopping; retry later.
    Unavailable,
    /// The database failed; nothing was changed, retry.
    StorageUnavailable,
    /// The cluster broker is not connected: broadcasts do not reach the other nodes.
    BrokerUnavailable,
    /// The server failed; details are logged, not sent.
    Internal,
    /// The request body is not JSON of the route's shape.
    InvalidJson,
    /// The request body is over the route's limit.
    BodyTooLarge,
    /// A message's content is over `max_payload_bytes`.
    PayloadTooLarge,
    /// The request is malformed in a way no field names.
    BadRequest,
    /// No route has this method and path.
    NotFound,
    /// The admin token is missing or wrong; a channel join that needs a signed-in socket.
    Unauthorized,
    /// A WebSocket upgrade that is not a valid handshake.
    BadHandshake,
    /// A WebSocket connect whose credentials are refused (403, as Phoenix refuses a connect); a
    /// join of another user's topic.
    Forbidden,
    /// A browser page from an origin `[socket] check_origin` does not allow.
    OriginNotAllowed,
    /// A WebSocket connect whose query string is not form encoding.
    BadQuery,
    /// A Phoenix connect with a `vsn` other than 1.0.0 and 2.0.0.
    UnsupportedVsn,
    /// A Phoenix connect offering subprotocols but not `phoenix`.
    UnsupportedSubprotocol,
    /// The request line is over `http.max_head_bytes`.
    UriTooLong,
    /// The request head is over `http.max_head_bytes`.
    HeadersTooLarge,
    /// The request head did not arrive within `http.head_timeout_ms`.
    RequestTimeout,
    /// A join or push names a topic no channel serves, or one the socket has not joined.
    UnmatchedTopic,
    /// A join's topic is malformed: over `socket.max_topic_bytes`, or an empty room or user name.
    InvalidTopic,
    /// A push's event is reserved, empty, over `socket.max_event_bytes`, or not one the channel takes.
    InvalidEvent,
    /// A join past `socket.max_channels` on one socket.
    TooManyChannels,
    /// A long-poll POST with more frames than `longpoll.max_frames_per_post`.
    TooManyFrames,
    /// A socket connect past `socket.max_connections` on this node.
    NodeFull,
    /// A socket connect past `socket.max_connections_per_user` for the signed-in user.
    TooManyConnections,
    /// A push while `socket.max_pending_replies` of the socket's replies are still pending.
    TooManyPendingReplies,
    /// A log or conversation is at the largest offset the wire carries (2^31 - 1); nothing was stored.
    LogFull,
    /// A signal-endpoint frame that is not a valid envelope.
    InvalidMessage,
    /// A signal login whose signature does not verify.
    InvalidSignature,
    /// A signal login echoing a nonce that is not the connection's.
    InvalidNonce,
    /// A second signal login on one connection.
    AlreadyAuthenticated,
    /// A signal userID that is not 0x05 and a 32-byte ed25519 key.
    InvalidUserId,
    /// A signal userID with no registered device.
    UnknownUser,
    /// A signal address that is not a registered device.
    UnknownDevice,
    /// An anonymous-only signal request on an authenticated connection (the original's name).
    AttemptedAnonymousOpOnAuthenticatedConnection,
}

impl Code {
    /// Every code, in the order of the README's table.
    pub const ALL: [Code; 54] = [
        Code::BadToken,
        Code::SessionExpired,
        Code::SessionRevoked,
        Code::UserInUse,
        Code::HashNotAvailable,
        Code::CipherNotAvailable,
        Code::NoSuchUser,
        Code::WrongPassword,
        Code::InvalidInput,
        Code::MixedScriptUsername,
        Code::NoSuchInvite,
        Code::AlreadyContacts,
        Code::NotContacts,
        Code::SourceMismatch,
        Code::UnknownRecipient,
        Code::QueueFull,
        Code::RateLimited,
        Code::Busy,
        Code::Unavailable,
        Code::StorageUnavailable,
        Code::BrokerUnavailable,
        Code::Internal,
        Code::InvalidJson,
        Code::BodyTooLarge,
        Code::PayloadTooLarge,
        Code::BadRequest,
        Code::NotFound,
        Code::Unauthorized,
        Code::BadHandshake,
        Code::Forbidden,
        Code::OriginNotAllowed,
        Code::BadQuery,
        Code::UnsupportedVsn,
        Code::UnsupportedSubprotocol,
        Code::UriTooLong,
        Code::HeadersTooLarge,
        Code::RequestTimeout,
        Code::UnmatchedTopic,
        Code::InvalidTopic,
        Code::InvalidEvent,
        Code::TooManyChannels,
        Code::TooManyFrames,
        Code::NodeFull,
        Code::TooManyConnections,
        Code::TooManyPendingReplies,
        Code::LogFull,
        Code::InvalidMessage,
        Code::InvalidSignature,
        Code::InvalidNonce,
        Code::AlreadyAuthenticated,
        Code::InvalidUserId,
        Code::UnknownUser,
        Code::UnknownDevice,
        Code::AttemptedAnonymousOpOnAuthenticatedConnection,
    ];

    /// The stable snake_case name sent as `error` (HTTP), `code` (channel error replies) and
    /// `reason` codes.
    pub fn as_str(self) -> &'static str {
        self.wire().0
    }

    /// The HTTP status.
    pub fn http_status(self) -> u16 {
        self.wire().1
    }

    /// The seed-002 `resp_code`.
    pub fn resp_code(self) -> RespCode {
        self.wire().2
    }

    // The one table: name, HTTP status, resp_code.
    fn wire(self) -> (&'static str, u16, RespCode) {
        use Code::*;
        match self {
            BadToken => ("bad_token", 401, RespCode::BadToken),
            SessionExpired => ("session_expired", 401, RespCode::BadToken),
            SessionRevoked => ("session_revoked", 401, RespCode::BadToken),
            UserInUse => ("user_in_use", 409, RespCode::UserInUse),
            HashNotAvailable => ("hash_not_available", 400, RespCode::HashNotAvailable),
            CipherNotAvailable => ("cipher_not_available", 400, RespCode::CipherNotAvailable),
            NoSuchUser => ("no_such_user", 404, RespCode::NoSuchUser),
            WrongPassword => ("wrong_password", 401, RespCode::WrongPassword),
            InvalidInput => ("invalid_input", 400, RespCode::InvalidInput),
            MixedScriptUsername => ("mixed_script_username", 400, RespCode::InvalidInput),
            NoSuchInvite => ("no_such_invite", 404, RespCode::NotFound),
            AlreadyContacts => ("already_contacts", 409, RespCode::Conflict),
            NotContacts => ("not_contacts", 403, RespCode::Forbidden),
            SourceMismatch => ("source_mismatch", 403, RespCode::Forbidden),
            UnknownRecipient => ("unknown_recipient", 404, RespCode::NoSuchUser),
            QueueFull => ("queue_full", 429, RespCode::LimitExceeded),
            RateLimited => ("rate_limited", 429, RespCode::LimitExceeded),
            Busy => ("busy", 503, RespCode::Busy),
            Unavailable => ("unavailable", 503, RespCode::Busy),
            StorageUnavailable => ("storage_unavailable", 503, RespCode::Internal),
            BrokerUnavailable => ("broker_unavailable", 503, RespCode::Internal),
            Internal => ("internal", 500, RespCode::Internal),
            InvalidJson => ("invalid_json", 400, RespCode::InvalidInput),
            BodyTooLarge => ("body_too_large", 413, RespCode::InvalidInput),
            PayloadTooLarge => ("payload_too_large", 413, RespCode::InvalidInput),
            BadRequest => ("bad_request", 400, RespCode::InvalidInput),
            NotFound => ("not_found", 404, RespCode::NotFound),
            Unauthorized => ("unauthorized", 401, RespCode::BadToken),
            BadHandshake => ("bad_handshake", 400, RespCode::InvalidInput),
            Forbidden => ("forbidden", 403, RespCode::Forbidden),
            OriginNotAllowed => ("origin_not_allowed", 403, RespCode::Forbidden),
            BadQuery => ("bad_query", 400, RespCode::InvalidInput),
            UnsupportedVsn => ("unsupported_vsn", 403, RespCode::InvalidInput),
            UnsupportedSubprotocol => ("unsupported_subprotocol", 403, RespCode::InvalidInput),
            UriTooLong => ("uri_too_long", 414, RespCode::InvalidInput),
            HeadersTooLarge => ("headers_too_large", 431, RespCode::InvalidInput),
            RequestTimeout => ("request_timeout", 408, RespCode::InvalidInput),
            UnmatchedTopic => ("unmatched_topic", 404, RespCode::NotFound),
            InvalidTopic => ("invalid_topic", 400, RespCode::InvalidInput),
            InvalidEvent => ("invalid_event", 400, RespCode::InvalidInput),
            TooManyChannels => ("too_many_channels", 429, RespCode::LimitExceeded),
            TooManyFrames => ("too_many_frames", 413, RespCode::LimitExceeded),
            NodeFull => ("node_full", 503, RespCode::Busy),
            TooManyConnections => ("too_many_connections", 429, RespCode::LimitExceeded),
            TooManyPendingReplies => ("too_many_pending_replies", 429, RespCode::LimitExceeded),
            LogFull => ("log_full", 507, RespCode::LimitExceeded),
            InvalidMessage => ("invalid_message", 400, RespCode::InvalidInput),
            InvalidSignature => ("invalid_signature", 401, RespCode::BadToken),
            InvalidNonce => ("invalid_nonce", 401, RespCode::BadToken),
            AlreadyAuthenticated => ("already_authenticated", 409, RespCode::Conflict),
            InvalidUserId => ("invalid_user_id", 400, RespCode::InvalidInput),
            UnknownUser => ("unknown_user", 404, RespCode::NoSuchUser),
            UnknownDevice => ("unknown_device", 404, RespCode::NotFound),
            AttemptedAnonymousOpOnAuthenticatedConnection => {
                ("attempted_anonymous_op_on_authenticated_connection", 403, RespCode::Forbidden)
            }
        }
    }

    /// The `http::StatusCode` of [`http_status`](Self::http_status).
    pub fn status(self) -> StatusCode {
        StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error on its way to an HTTP client: a code from the table and a reason for people.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {reason}")]
pub struct Error {
    /// What went wrong, as the table names it.
    pub code: Code,
    /// Text safe to show the client.
    pub reason: String,
    /// Sent as `Retry-After` (seconds), for refusals that pass.
    pub retry_after: Option<u64>,
}

impl Error {
    /// An error with `code` and `reason`.
    pub fn new(code: Code, reason: impl Into<String>) -> Error {
        Error { code, reason: reason.into(), retry_after: None }
    }

    /// The same error, telling the client to retry after `secs` seconds.
    pub fn retry_after(mut self, secs: u64) -> Error {
        self.retry_after = Some(secs);
        self
    }

    /// The JSON body every error response carries.
    pub fn body(&self) -> serde_json::Value {
        json!({ "error": self.code.as_str(), "reason": self.reason, "resp_code": self.code.resp_code().as_u8() })
    }

    /// A body that could not be read as JSON of the route's shape, as a 400 (or 413 past `limit`).
    pub fn from_json_payload(err: &actix_web::error::JsonPayloadError, limit: usize) -> Error {
        use actix_web::error::JsonPayloadError as E;
        match err {
            E::ContentType => Error::new(Code::InvalidJson, "expected Content-Type: application/json"),
            E::OverflowKnownLength { .. } | E::Overflow { .. } => {
                Error::new(Code::BodyTooLarge, format!("request body exceeds {limit} bytes"))
            }
            other => Error::new(Code::InvalidJson, format!("request body is not valid JSON for this route: {other}")),
        }
    }
}

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.code.status());
        if let Some(secs) = self.retry_after {
            response.insert_header((actix_web::http::header::RETRY_AFTER, secs.to_string()));
        }
        response.json(self.body())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_code_has_one_distinct_snake_case_name_and_an_error_status() {
        let names: HashSet<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), Code::ALL.len(), "two codes share a name");
        for code in Code::ALL {
            let name = code.as_str();
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{name} is not snake_case");
            assert!((400..600).contains(&code.http_status()), "{name}: {}", code.http_status());
            assert_ne!(code.resp_code(), RespCode::Success, "{name} says success");
        }
    }

    #[test]
    fn seed_codes_keep_their_numbers() {
        let seed = [
            (Code::BadToken, 1),
            (Code::UserInUse, 2),
            (Code::HashNotAvailable, 3),
            (Code::CipherNotAvailable, 4),
            (Code::NoSuchUser, 5),
            (Code::WrongPassword, 6),
        ];
        for (code, number) in seed {
            assert_eq!(code.resp_code().as_u8(), number, "{code}");
            assert!(code.resp_code().is_seed_code());
        }
        assert!(!Code::Busy.resp_code().is_seed_code());
    }

    #[test]
    fn the_response_is_the_table_row_as_json() {
        let response = Error::new(Code::RateLimited, "slow down").retry_after(3).error_response();
        assert_eq!(response.status().as_u16(), 429);
        assert_eq!(response.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("3"));
        let body = Error::new(Code::NotFound, "no route").body();
        assert_eq!(body, json!({"error": "not_found", "reason": "no route", "resp_code": 8}));
    }

    #[test]
    fn the_readme_lists_every_code() {
        let readme = include_str!("../README.md");
        for code in Code::ALL {
            let row = format!("| `{}` | {} | {} |", code.as_str(), code.http_status(), code.resp_code().as_u8());
            assert!(readme.contains(&row), "README's error table lacks the row {row}");
        }
    }
}
