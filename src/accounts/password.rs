//! Password hashing: argon2id (the default) and the seed's salted SHA-256 (opt-in).
//! Pure CPU work with no I/O; callers run it off the async workers because argon2 is slow by design.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AccountError;

/// A password hash a client may ask for at signup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgorithm {
    /// Argon2id, memory-hard; always offered.
    Argon2id,
    /// Salted SHA-256; only when `allow_sha256` is on.
    Sha256,
}

impl HashAlgorithm {
    /// The seed's name for it.
    pub fn name(self) -> &'static str {
        match self {
            HashAlgorithm::Argon2id => "argon2id",
            HashAlgorithm::Sha256 => "sha256",
        }
    }

    /// Parses the seed's name; anything unknown is `HashNotAvailable`.
    pub fn parse(name: &str) -> Result<HashAlgorithm, AccountError> {
        match name {
            "argon2id" => Ok(HashAlgorithm::Argon2id),
            "sha256" => Ok(HashAlgorithm::Sha256),
            other => Err(AccountError::HashNotAvailable(other.chars().take(32).collect())),
        }
    }
}

const SALT_LEN: usize = 16;
const SHA256_PREFIX: &str = "$sha256$";

fn random_salt() -> [u8; SALT_LEN] {
    let mut salt = [0u8; SALT_LEN];
    rand::rng().fill_bytes(&mut salt);
    salt
}

fn salted_sha256(salt: &[u8], password: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password);
    h.finalize().into()
}

/// Hashes `password` into a self-describing string (`$argon2id$...` or `$sha256$salt$digest`).
pub fn hash(algorithm: HashAlgorithm, password: &str, params: &Params) -> Result<String, AccountError> {
    let salt = random_salt();
    match algorithm {
        HashAlgorithm::Argon2id => {
            let salt = SaltString::encode_b64(&salt).map_err(|e| AccountError::Hashing(e.to_string()))?;
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| AccountError::Hashing(e.to_string()))
        }
        HashAlgorithm::Sha256 => {
            let digest = salted_sha256(&salt, password.as_bytes());
            Ok(format!("{SHA256_PREFIX}{}${}", STANDARD_NO_PAD.encode(salt), STANDARD_NO_PAD.encode(digest)))
        }
    }
}

/// Checks `password` against a string made by [`hash`], in constant time for the comparison.
pub fn verify(stored: &str, password: &str) -> Result<bool, AccountError> {
    if stored.is_empty() {
        // A key user's account: only an ed25519 login signs it in, so no password matches.
        return Ok(false);
    }
    if let Some(rest) = stored.strip_prefix(SHA256_PREFIX) {
        let corrupt = || AccountError::Hashing("stored sha256 hash is malformed".to_owned());
        let (salt_b64, digest_b64) = rest.split_once('$').ok_or_else(corrupt)?;
        let salt = STANDARD_NO_PAD.decode(salt_b64).map_err(|_| corrupt())?;
        let expected = STANDARD_NO_PAD.decode(digest_b64).map_err(|_| corrupt())?;
        let actual = salted_sha256(&salt, password.as_bytes());
        return Ok(bool::from(actual.as_slice().ct_eq(expected.as_slice())));
    }
    let parsed = PasswordHash::new(stored).map_err(|e| AccountError::Hashing(e.to_string()))?;
    // The stored string carries its own algorithm and cost; the verifier reads them from it.
    match Argon2::default().verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(e) => Err(AccountError::Hashing(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> Params {
        Params::new(64, 1, 1, None).unwrap()
    }

    #[test]
    fn an_account_without_a_password_matches_none() {
        assert!(!verify("", "").unwrap());
        assert!(!verify("", "correct horse").unwrap());
    }

    #[test]
    fn argon2id_round_trip() {
        let h = hash(HashAlgorithm::Argon2id, "correct horse", &cheap()).unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify(&h, "correct horse").unwrap());
        assert!(!verify(&h, "correct horsf").unwrap());
    }

    #[test]
    fn sha256_is_salted_and_round_trips() {
        let a = hash(HashAlgorithm::Sha256, "secretpassword", &cheap()).unwrap();
        let b = hash(HashAlgorithm::Sha256, "secretpassword", &cheap()).unwrap();
        assert!(a.starts_with("$sha256$"));
        assert_ne!(a, b, "two hashes of one password must differ by salt");
        assert!(verify(&a, "secretpassword").unwrap());
        assert!(!verify(&a, "secretpassworD").unwrap());
    }

    #[test]
    fn malformed_stored_hashes_are_errors_not_matches() {
        assert!(verify("$sha256$nodollar", "x").is_err());
        assert!(verify("$sha256$!!!$!!!", "x").is_err());
        assert!(verify("plaintext", "plaintext").is_err());
    }

    #[test]
    fn names() {
        assert_eq!(HashAlgorithm::parse("argon2id").unwrap(), HashAlgorithm::Argon2id);
        assert_eq!(HashAlgorithm::parse("sha256").unwrap().name(), "sha256");
        assert!(matches!(HashAlgorithm::parse("md5"), Err(AccountError::HashNotAvailable(n)) if n == "md5"));
    }
}
