//! The one error type of the key-directory boundary. Its variants are the seed-001 protocol's
//! error names (the original server's, kept so its clients understand them), each mapped to a
//! code of the crate's table, which holds the names.

use crate::error::Code;
use crate::messaging::MessagingError;
use crate::store::StoreError;

/// Why a key-directory or sealed-delivery request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The frame is not an envelope the server takes.
    #[error("{0}")]
    InvalidMessage(String),
    /// The login's signature does not verify with the key in its userID.
    #[error("the signature does not verify with the login's userID")]
    InvalidSignature,
    /// The login echoes a nonce the server did not issue for it (or one used up or expired).
    #[error("the nonce is not one this server issued for this login, or it was used or expired")]
    InvalidNonce,
    /// The connection is authenticated already.
    #[error("this connection is authenticated already")]
    AlreadyAuthenticated,
    /// A userID that is not 0x05 followed by a 32-byte ed25519 public key.
    #[error("{0}")]
    InvalidUserId(String),
    /// Key management on a connection that has not authenticated.
    #[error("this request needs an authenticated connection")]
    Unauthorized,
    /// An anonymous-only request (prekeys, sealed messages) on an authenticated connection.
    #[error("this request needs an anonymous connection")]
    AnonymousOnly,
    /// The key user's account was deleted by an operator.
    #[error("this user was deleted")]
    UserDeleted,
    /// The userID has no registered device.
    #[error("no device of this user is registered")]
    UnknownUser,
    /// The address is not a registered device.
    #[error("this device is not registered")]
    UnknownDevice,
    /// The database failed; nothing was changed, retry.
    #[error("storage unavailable, retry")]
    Storage(StoreError),
    /// Storing or acknowledging a sealed message failed.
    #[error("{}", .0.reason())]
    Messaging(MessagingError),
}

impl KeysError {
    /// The crate-level code of this error (`crate::error`'s table).
    pub fn code(&self) -> Code {
        match self {
            KeysError::InvalidMessage(_) => Code::InvalidMessage,
            KeysError::InvalidSignature => Code::InvalidSignature,
            KeysError::InvalidNonce => Code::InvalidNonce,
            KeysError::AlreadyAuthenticated => Code::AlreadyAuthenticated,
            KeysError::InvalidUserId(_) => Code::InvalidUserId,
            KeysError::Unauthorized => Code::Unauthorized,
            KeysError::AnonymousOnly => Code::AttemptedAnonymousOpOnAuthenticatedConnection,
            KeysError::UnknownUser => Code::UnknownUser,
            KeysError::UserDeleted => Code::NoSuchUser,
            KeysError::UnknownDevice => Code::UnknownDevice,
            KeysError::Storage(_) => Code::StorageUnavailable,
            KeysError::Messaging(e) => e.code(),
        }
    }

    /// The protocol's `Error.name`: the code's wire name.
    pub fn name(&self) -> &'static str {
        self.code().as_str()
    }
}

impl From<StoreError> for KeysError {
    fn from(err: StoreError) -> Self {
        KeysError::Storage(err)
    }
}

impl From<MessagingError> for KeysError {
    fn from(err: MessagingError) -> Self {
        match err {
            MessagingError::UnknownDevice => KeysError::UnknownDevice,
            other => KeysError::Messaging(other),
        }
    }
}

impl From<KeysError> for crate::error::Error {
    fn from(err: KeysError) -> Self {
        crate::error::Error::new(err.code(), err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_are_the_original_servers() {
        let cases = [
            (KeysError::InvalidMessage("x".into()), "invalid_message"),
            (KeysError::InvalidSignature, "invalid_signature"),
            (KeysError::InvalidNonce, "invalid_nonce"),
            (KeysError::AlreadyAuthenticated, "already_authenticated"),
            (KeysError::InvalidUserId("x".into()), "invalid_user_id"),
            (KeysError::Unauthorized, "unauthorized"),
            (KeysError::AnonymousOnly, "attempted_anonymous_op_on_authenticated_connection"),
            (KeysError::UnknownUser, "unknown_user"),
            (KeysError::UserDeleted, "no_such_user"),
            (KeysError::UnknownDevice, "unknown_device"),
            (KeysError::from(MessagingError::UnknownDevice), "unknown_device"),
            (KeysError::from(MessagingError::Busy), "busy"),
        ];
        for (err, name) in cases {
            assert_eq!(err.name(), name, "{err:?}");
        }
    }
}
