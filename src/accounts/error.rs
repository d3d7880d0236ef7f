//! `AccountError`, and which of the crate's error codes ([`crate::error::Code`]) each variant is.

use crate::error::Code;
pub use crate::error::RespCode;
use crate::store::StoreError;

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
        self.wire_code().resp_code()
    }

    /// A stable snake_case name for this error, used as `error` in HTTP bodies.
    pub fn code(&self) -> &'static str {
        self.wire_code().as_str()
    }

    /// The HTTP status this error maps to.
    pub fn http_status(&self) -> u16 {
        self.wire_code().http_status()
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

    /// The crate-level code of this error.
    pub fn wire_code(&self) -> Code {
        use AccountError::*;
        match self {
            BadToken => Code::BadToken,
            SessionExpired => Code::SessionExpired,
            SessionRevoked => Code::SessionRevoked,
            UserInUse => Code::UserInUse,
            HashNotAvailable(_) => Code::HashNotAvailable,
            CipherNotAvailable(_) => Code::CipherNotAvailable,
            NoSuchUser => Code::NoSuchUser,
            WrongPassword => Code::WrongPassword,
            InvalidInput { .. } => Code::InvalidInput,
            NoSuchInvite => Code::NoSuchInvite,
            AlreadyContacts => Code::AlreadyContacts,
            NotContacts => Code::NotContacts,
            SourceMismatch => Code::SourceMismatch,
            QueueFull => Code::QueueFull,
            RateLimited { .. } => Code::RateLimited,
            Busy => Code::Busy,
            MixedScript(_) => Code::MixedScriptUsername,
            Hashing(_) | Store(_) => Code::Internal,
        }
    }
}

impl From<AccountError> for crate::error::Error {
    fn from(err: AccountError) -> Self {
        if err.is_internal() {
            tracing::error!(error = %err, "accounts request failed");
        }
        let refused = crate::error::Error::new(err.wire_code(), err.public_reason());
        match err.retry_after_secs() {
            Some(secs) => refused.retry_after(secs),
            None => refused,
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
