//! `AccountError` and the single table mapping it to seed-002 `resp_code`s, stable snake_case
//! codes and HTTP statuses.

use crate::store::StoreError;

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

/// Everything an accounts operation can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The token matches no session (or is not a token at all).
    #[error("unknown session token")]
    BadToken,
    /// The session existed but its lifetime is over.
    #[error("session expired")]
    SessionExpired,
    /// The session was signed out.
    #[error("session revoked")]
    SessionRevoked,
    /// Another account already has this username.
    #[error("username already in use")]
    UserInUse,
    /// The requested password hash is unknown or disabled.
    #[error("hash `{0}` is not available")]
    HashNotAvailable(String),
    /// The requested cipher is not offered.
    #[error("cipher `{0}` is not available")]
    CipherNotAvailable(String),
    /// No account has this username.
    #[error("no such user")]
    NoSuchUser,
    /// The password does not match.
    #[error("wrong password")]
    WrongPassword,
    /// A field breaks its rules.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// There is no pending invite to answer.
    #[error("no pending invite from that user")]
    NoSuchInvite,
    /// The two users are contacts already.
    #[error("already contacts")]
    AlreadyContacts,
    /// Messages need an accepted invite first.
    #[error("not a contact")]
    NotContacts,
    /// The frame's `source` is not the subscribed user.
    #[error("source does not match the session's user")]
    SourceMismatch,
    /// The recipient's offline queue is full.
    #[error("too many messages are waiting for that user")]
    QueueFull,
    /// Too many signups or sign-ins from this address, or naming this username.
    #[error("too many attempts {scope}; retry in {retry_after_secs} s")]
    RateLimited {
        /// Which limit: "from this address", "for this username", ...
        scope: &'static str,
        /// When the next attempt may succeed, in whole seconds (at least 1).
        retry_after_secs: u64,
    },
    /// Every password-hashing slot stayed taken past the queue deadline, or the queue is full.
    #[error("the server is busy; retry shortly")]
    Busy,
    /// A new username mixes scripts (Latin with Cyrillic, ...), so it could pass for another.
    #[error("invalid username: mixes the {0} scripts; use letters of one script")]
    MixedScript(String),
    /// Password hashing itself failed.
    #[error("password hashing failed: {0}")]
    Hashing(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AccountError {
    /// Shorthand for an `InvalidInput` error.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        AccountError::InvalidInput { field, reason: reason.into() }
    }

    /// The seed-002 `resp_code` for this error.
    pub fn resp_code(&self) -> RespCode {
        self.wire().0
    }

    /// A stable snake_case name for this error, used as `error` in HTTP bodies.
    pub fn code(&self) -> &'static str {
        self.wire().1
    }

    /// The HTTP status this error maps to.
    pub fn http_status(&self) -> u16 {
        self.wire().2
    }

    /// Text safe to show a client: internal failures are not described.
    pub fn public_reason(&self) -> String {
        match self {
            AccountError::Store(_) | AccountError::Hashing(_) => "internal server error".to_owned(),
            other => other.to_string(),
        }
    }

    /// Seconds a client should wait before retrying (`Retry-After`), for refusals that pass.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            AccountError::RateLimited { retry_after_secs, .. } => Some(*retry_after_secs),
            AccountError::Busy => Some(1),
            _ => None,
        }
    }

    /// Whether this is the server's fault (worth logging as an error).
    pub fn is_internal(&self) -> bool {
        self.resp_code() == RespCode::Internal
    }

    // The one table: resp_code, snake_case code, HTTP status.
    fn wire(&self) -> (RespCode, &'static str, u16) {
        use AccountError::*;
        match self {
            BadToken => (RespCode::BadToken, "bad_token", 401),
            SessionExpired => (RespCode::BadToken, "session_expired", 401),
            SessionRevoked => (RespCode::BadToken, "session_revoked", 401),
            UserInUse => (RespCode::UserInUse, "user_in_use", 409),
            HashNotAvailable(_) => (RespCode::HashNotAvailable, "hash_not_available", 400),
            CipherNotAvailable(_) => (RespCode::CipherNotAvailable, "cipher_not_available", 400),
            NoSuchUser => (RespCode::NoSuchUser, "no_such_user", 404),
            WrongPassword => (RespCode::WrongPassword, "wrong_password", 401),
            InvalidInput { .. } => (RespCode::InvalidInput, "invalid_input", 400),
            NoSuchInvite => (RespCode::NotFound, "no_such_invite", 404),
            AlreadyContacts => (RespCode::Conflict, "already_contacts", 409),
            NotContacts => (RespCode::Forbidden, "not_contacts", 403),
            SourceMismatch => (RespCode::Forbidden, "source_mismatch", 403),
            QueueFull => (RespCode::LimitExceeded, "queue_full", 429),
            RateLimited { .. } => (RespCode::LimitExceeded, "rate_limited", 429),
            Busy => (RespCode::Busy, "busy", 503),
            MixedScript(_) => (RespCode::InvalidInput, "mixed_script_username", 400),
            Hashing(_) | Store(_) => (RespCode::Internal, "internal", 500),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_codes_match_the_seed() {
        assert_eq!(AccountError::BadToken.resp_code().as_u8(), 1);
        assert_eq!(AccountError::SessionExpired.resp_code().as_u8(), 1);
        assert_eq!(AccountError::SessionRevoked.resp_code().as_u8(), 1);
        assert_eq!(AccountError::UserInUse.resp_code().as_u8(), 2);
        assert_eq!(AccountError::HashNotAvailable("md5".into()).resp_code().as_u8(), 3);
        assert_eq!(AccountError::CipherNotAvailable("rot13".into()).resp_code().as_u8(), 4);
        assert_eq!(AccountError::NoSuchUser.resp_code().as_u8(), 5);
        assert_eq!(AccountError::WrongPassword.resp_code().as_u8(), 6);
        assert_eq!(RespCode::Success.as_u8(), 0);
    }

    #[test]
    fn http_statuses() {
        assert_eq!(AccountError::invalid("username", "empty").http_status(), 400);
        assert_eq!(AccountError::WrongPassword.http_status(), 401);
        assert_eq!(AccountError::BadToken.http_status(), 401);
        assert_eq!(AccountError::NoSuchUser.http_status(), 404);
        assert_eq!(AccountError::UserInUse.http_status(), 409);
        let internal = AccountError::Store(StoreError::TaskFailed("boom".into()));
        assert_eq!(internal.http_status(), 500);
        assert_eq!(internal.public_reason(), "internal server error");
        assert_eq!(AccountError::Busy.http_status(), 503);
        assert_eq!(AccountError::Busy.resp_code().as_u8(), 13);
        let limited = AccountError::RateLimited { scope: "from this address", retry_after_secs: 3 };
        assert_eq!((limited.http_status(), limited.code(), limited.resp_code().as_u8()), (429, "rate_limited", 11));
        assert_eq!(limited.retry_after_secs(), Some(3));
    }

    #[test]
    fn token_failures_are_distinct_codes() {
        let codes =
            [AccountError::BadToken.code(), AccountError::SessionExpired.code(), AccountError::SessionRevoked.code()];
        assert_eq!(codes, ["bad_token", "session_expired", "session_revoked"]);
    }
}
