//! Long-poll session tokens: what lets a client's next request find its session, and nobody
//! else's.
//!
//! A token is `lp1.<id>.<mac>` (both parts URL-safe base64 without padding): the session's
//! random 128-bit id and an HMAC-SHA256 over this node's name, the id and a digest of the
//! connect params the session was opened with. The key is derived from the server's long-poll
//! secret, so a token cannot be made without it, and a token is only good together with the
//! same connect params: a token copied into a request with other params (another user's
//! credentials) does not verify. The id alone finds the session; the MAC is checked first, in
//! constant time.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// What every token starts with; a `token` param without it is an application's own (phoenix.js
/// sends connect params and the session token under the same name).
pub const TOKEN_PREFIX: &str = "lp1.";

type HmacSha256 = Hmac<Sha256>;

/// The id of one long-poll session, unique on this node.
pub type SessionId = u128;

/// Signs and checks the tokens of this node's long-poll sessions.
#[derive(Clone)]
pub struct TokenKey {
    key: [u8; 32],
    node: String,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey").field("node", &self.node).finish_non_exhaustive()
    }
}

/// Why a token was not taken.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not in the token format at all (an application's own `token` param, say).
    #[error("not a long-poll session token")]
    NotAToken,
    /// In the format, but not signed by this node for these connect params.
    #[error("the long-poll session token does not verify")]
    Invalid,
}

impl TokenKey {
    /// The key for `node`, derived from the server's long-poll `secret`.
    pub fn new(secret: &[u8], node: &str) -> Self {
        let mut derive = <HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC takes keys of any length");
        derive.update(b"courier long-poll session token v1");
        TokenKey { key: derive.finalize().into_bytes().into(), node: node.to_owned() }
    }

    /// The token of session `id`, opened with connect params whose digest is `params`.
    pub fn sign(&self, id: SessionId, params: &[u8; 32]) -> String {
        let mac = self.mac(id, params).finalize().into_bytes();
        format!("{TOKEN_PREFIX}{}.{}", URL_SAFE_NO_PAD.encode(id.to_be_bytes()), URL_SAFE_NO_PAD.encode(mac))
    }

    /// The session a token names, if this node signed it for connect params digesting to `params`.
    pub fn verify(&self, token: &str, params: &[u8; 32]) -> Result<SessionId, TokenError> {
        let rest = token.strip_prefix(TOKEN_PREFIX).ok_or(TokenError::NotAToken)?;
        let (id, mac) = rest.split_once('.').ok_or(TokenError::Invalid)?;
        let id: [u8; 16] =
            URL_SAFE_NO_PAD.decode(id).ok().and_then(|b| b.try_into().ok()).ok_or(TokenError::Invalid)?;
        let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| TokenError::Invalid)?;
        let id = SessionId::from_be_bytes(id);
        self.mac(id, params).verify_slice(&mac).map_err(|_| TokenError::Invalid)?;
        Ok(id)
    }

    fn mac(&self, id: SessionId, params: &[u8; 32]) -> HmacSha256 {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(&(self.node.len() as u64).to_be_bytes());
        mac.update(self.node.as_bytes());
        mac.update(&id.to_be_bytes());
        mac.update(params);
        mac
    }
}

/// A digest of connect params, independent of their order; each part is length-prefixed so no
/// two different lists digest alike.
pub fn params_digest<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> [u8; 32] {
    let mut pairs: Vec<(&str, &str)> = params.into_iter().collect();
    pairs.sort_unstable();
    let mut digest = Sha256::new();
    for (key, value) in pairs {
        for part in [key, value] {
            digest.update((part.len() as u64).to_be_bytes());
            digest.update(part.as_bytes());
        }
    }
    digest.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(pairs: &[(&str, &str)]) -> [u8; 32] {
        params_digest(pairs.iter().copied())
    }

    #[test]
    fn a_token_verifies_for_its_session_and_params_only() {
        let key = TokenKey::new(b"secret", "courier@a");
        let params = digest(&[("user", "ann"), ("vsn", "2.0.0")]);
        let token = key.sign(42, &params);
        assert!(token.starts_with(TOKEN_PREFIX));
        assert_eq!(key.verify(&token, &params), Ok(42));
        assert_eq!(key.verify(&token, &digest(&[("vsn", "2.0.0"), ("user", "ann")])), Ok(42), "order does not matter");
        assert_eq!(key.verify(&token, &digest(&[("user", "bob"), ("vsn", "2.0.0")])), Err(TokenError::Invalid));
        assert_eq!(TokenKey::new(b"other", "courier@a").verify(&token, &params), Err(TokenError::Invalid));
        assert_eq!(TokenKey::new(b"secret", "courier@b").verify(&token, &params), Err(TokenError::Invalid));
    }

    #[test]
    fn tampered_and_foreign_tokens_are_refused() {
        let key = TokenKey::new(b"secret", "n");
        let params = digest(&[]);
        let token = key.sign(7, &params);
        let (head, mac) = token.rsplit_once('.').expect("three parts");
        let other_id = key.sign(8, &params);
        let (other_head, _) = other_id.rsplit_once('.').expect("three parts");
        assert_eq!(key.verify(&format!("{other_head}.{mac}"), &params), Err(TokenError::Invalid), "id swapped");
        assert_eq!(key.verify(&format!("{head}.AAAA"), &params), Err(TokenError::Invalid));
        assert_eq!(key.verify("lp1.nonsense", &params), Err(TokenError::Invalid));
        assert_eq!(key.verify("SFMyNTY.abc.def", &params), Err(TokenError::NotAToken));
    }

    #[test]
    fn the_digest_keeps_keys_and_values_apart() {
        assert_ne!(digest(&[("ab", "c")]), digest(&[("a", "bc")]));
        assert_ne!(digest(&[("a", "")]), digest(&[]));
    }
}
