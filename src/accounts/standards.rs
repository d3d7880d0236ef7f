//! What the server advertises in seed 002's `identification` and `protocol.standard`.

use super::AccountsConfig;

/// Protocol version this server speaks (seed 002).
pub const PROTOCOL_VERSION: &str = "1.0.0";
/// Major version accepted from clients.
pub const PROTOCOL_MAJOR: u64 = 1;
/// Server software name sent in `identification`.
pub const SERVER_NAME: &str = "courier";
/// Ciphers clients may use between each other; the server only relays their output.
pub const CIPHERS: &[&str] = &["xchacha-poly1305", "aes256-gcm"];

/// Password hashes offered under `config`, strongest first.
pub fn hashes(config: &AccountsConfig) -> Vec<&'static str> {
    let mut hashes = vec!["argon2id"];
    if config.allow_sha256 {
        hashes.push("sha256");
    }
    hashes
}

/// Whether `version` ("1", "1.0", "1.2.3") has the supported major number.
pub fn version_supported(version: &str) -> bool {
    let mut parts = version.trim().split('.');
    let major_ok = parts.next().and_then(|m| m.parse::<u64>().ok()) == Some(PROTOCOL_MAJOR);
    major_ok && parts.all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        for ok in ["1", "1.0", "1.0.0", "1.7.12"] {
            assert!(version_supported(ok), "{ok}");
        }
        for bad in ["", "2.0.0", "0.9", "1.x", "v1.0.0", "1..0", "10.0.0"] {
            assert!(!version_supported(bad), "{bad}");
        }
    }

    #[test]
    fn sha256_is_advertised_only_when_enabled() {
        let mut c = AccountsConfig::default();
        assert_eq!(hashes(&c), ["argon2id"]);
        c.allow_sha256 = true;
        assert_eq!(hashes(&c), ["argon2id", "sha256"]);
    }
}
