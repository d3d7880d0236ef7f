//! The one error type of the messaging boundary, with its HTTP-like `status_code` (as seed 004's
//! acks carry) and a stable reason for Phoenix error replies.

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
    /// The sender may not do this (a forged `from`, a stranger when contacts are required).
    #[error("{0}")]
    Forbidden(String),
    /// The message content is over the configured limit.
    #[error("payload too large (limit {0} bytes)")]
    TooLarge(usize),
    /// The database failed; nothing was stored and the client should retry with the same id.
    #[error("storage unavailable, retry")]
    Storage(#[from] StoreError),
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

    /// The HTTP-like status code of seed 004's `MessagePeerAckSignal.status_code`.
    pub fn status_code(&self) -> i32 {
        match self {
            MessagingError::Invalid(_) => 400,
            MessagingError::Forbidden(_) => 403,
            MessagingError::UnknownRecipient => 404,
            MessagingError::TooLarge(_) => 413,
            MessagingError::RateLimited(_) => 429,
            MessagingError::Storage(_) | MessagingError::Busy | MessagingError::Unavailable => 503,
        }
    }

    /// The `reason` of the error reply: the message, without internal details of storage errors.
    pub fn reason(&self) -> String {
        self.to_string()
    }
}
