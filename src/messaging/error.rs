//! The one error type of the messaging boundary: its code in the crate's table, the HTTP-like
//! `status_code` seed 004's acks carry (the code's HTTP status), and the reason Phoenix error
//! replies carry.

use crate::accounts::Unreachable;
use crate::error::Code;
use crate::store::StoreError;

/// Why a messaging request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum MessagingError {
    /// The request is malformed: a missing or wrong field.
    #[error("{0}")]
    Invalid(String),
    /// The recipient is not a user.
    #[error("unknown recipient")]
    UnknownRecipient,
    /// A sealed message names a device that has no registration.
    #[error("unknown device")]
    UnknownDevice,
    /// The message's or signal's `from` is not the socket's user.
    #[error("from does not match the socket's user")]
    ForgedSender,
    /// The receiver is a stranger and contacts are required.
    #[error("not_contacts")]
    NotContacts,
    /// The message content is over the configured limit.
    #[error("payload too large (limit {0} bytes)")]
    TooLarge(usize),
    /// The database failed; nothing was stored and the client should retry with the same id.
    #[error("storage unavailable, retry")]
    Storage(StoreError),
    /// A log or conversation of the message is at the largest offset the wire carries; nothing
    /// was stored, and a retry fails alike.
    #[error("{log} is full (offsets end at {max}); nothing was stored", max = crate::store::messages::MAX_OFFSET)]
    LogFull {
        /// Which log: "bob's message log", or "the conversation of alice and bob".
        log: String,
    },
    /// Too many requests of this kind (status signals to one user); slow down.
    #[error("{0}")]
    RateLimited(String),
    /// The log writer's queue is full; retry shortly.
    #[error("server busy, retry")]
    Busy,
    /// The log writer is gone (the server is stopping).
    #[error("messaging unavailable, retry")]
    Unavailable,
}

impl MessagingError {
    /// Shorthand for [`MessagingError::Invalid`].
    pub fn invalid(why: impl Into<String>) -> Self {
        MessagingError::Invalid(why.into())
    }

    /// The crate-level code of this error (`crate::error`'s table).
    pub fn code(&self) -> Code {
        match self {
            MessagingError::Invalid(_) => Code::InvalidInput,
            MessagingError::ForgedSender => Code::SourceMismatch,
            MessagingError::NotContacts => Code::NotContacts,
            MessagingError::UnknownRecipient => Code::UnknownRecipient,
            MessagingError::UnknownDevice => Code::UnknownDevice,
            MessagingError::TooLarge(_) => Code::PayloadTooLarge,
            MessagingError::RateLimited(_) => Code::RateLimited,
            MessagingError::Storage(_) => Code::StorageUnavailable,
            MessagingError::LogFull { .. } => Code::LogFull,
            MessagingError::Busy => Code::Busy,
            MessagingError::Unavailable => Code::Unavailable,
        }
    }

    /// The HTTP-like status code of seed 004's `MessagePeerAckSignal.status_code`.
    pub fn status_code(&self) -> i32 {
        i32::from(self.code().http_status())
    }

    /// The `reason` of the error reply: the message, without internal details of storage errors.
    pub fn reason(&self) -> String {
        self.to_string()
    }
}

impl From<StoreError> for MessagingError {
    // A full log is the message's own refusal, not a database failure worth retrying.
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::LogFull { log } => MessagingError::LogFull { log },
            other => MessagingError::Storage(other),
        }
    }
}

impl From<Unreachable> for MessagingError {
    fn from(refused: Unreachable) -> Self {
        match refused {
            Unreachable::UnknownRecipient => MessagingError::UnknownRecipient,
            Unreachable::NotContacts => MessagingError::NotContacts,
        }
    }
}

impl From<MessagingError> for crate::error::Error {
    fn from(err: MessagingError) -> Self {
        crate::error::Error::new(err.code(), err.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_status_codes_are_the_table_statuses() {
        let cases = [
            (MessagingError::invalid("x"), 400),
            (MessagingError::ForgedSender, 403),
            (MessagingError::NotContacts, 403),
            (MessagingError::UnknownRecipient, 404),
            (MessagingError::TooLarge(1), 413),
            (MessagingError::RateLimited("slow".into()), 429),
            (MessagingError::Busy, 503),
            (MessagingError::Unavailable, 503),
            (MessagingError::Storage(StoreError::TaskFailed("x".into())), 503),
            (MessagingError::LogFull { log: "bob's message log".into() }, 507),
        ];
        for (err, status) in cases {
            assert_eq!(err.status_code(), status, "{err:?}");
        }
        assert_eq!(MessagingError::NotContacts.reason(), "not_contacts");
    }

    #[test]
    fn a_full_log_from_the_store_is_log_full_and_other_store_errors_storage() {
        let full = MessagingError::from(StoreError::LogFull { log: "bob's message log".into() });
        assert_eq!(full.code(), Code::LogFull);
        assert_eq!(full.reason(), "bob's message log is full (offsets end at 2147483647); nothing was stored");
        let failed = MessagingError::from(StoreError::TaskFailed("x".into()));
        assert_eq!(failed.code(), Code::StorageUnavailable);
    }
}
