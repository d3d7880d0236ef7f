//! Session tokens: random UUIDs for the client, SHA-256 digests for the database.

use sha2::{Digest, Sha256};

/// A session token as handed to a client. `Debug` hides it so it never lands in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken(String);

impl SessionToken {
    /// A fresh random (v4 UUID) token.
    pub fn generate() -> SessionToken {
        SessionToken(uuid::Uuid::new_v4().to_string())
    }

    /// The token text to send to the client.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Gives up the token text.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionToken(<redacted>)")
    }
}

/// The digest stored for a token; lookups go by digest, so the token itself is never stored.
pub fn digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The public id of a session, from its stored digest: a second hash, so neither the token
/// nor the digest that looks it up can be learned from it (it names pub/sub topics).
pub fn session_id(digest: &[u8]) -> String {
    let id = Sha256::digest(digest);
    id.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_uuids_unique_and_redacted() {
        let a = SessionToken::generate();
        let b = SessionToken::generate();
        assert_ne!(a, b);
        assert!(uuid::Uuid::parse_str(a.as_str()).is_ok());
        assert!(!format!("{a:?}").contains(a.as_str()));
        assert_eq!(digest(a.as_str()).len(), 32);
        assert_ne!(digest(a.as_str()), digest(b.as_str()));
        let id = session_id(&digest(a.as_str()));
        assert_eq!(id.len(), 24);
        assert_ne!(id, session_id(&digest(b.as_str())));
    }
}
