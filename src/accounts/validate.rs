//! Input rules for usernames, passwords and device ids. Pure functions, no I/O.

use super::AccountError;

/// Longest username, in bytes.
pub const MAX_USERNAME_BYTES: usize = 64;
/// Shortest password, in bytes.
pub const MIN_PASSWORD_BYTES: usize = 8;
/// Longest password, in bytes (bounds the hashing work one request can cause).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Longest device id, in bytes.
pub const MAX_DEVICE_ID_BYTES: usize = 128;

/// Trims `raw` and checks it is a username: 1..=64 bytes of letters, digits, space and `_.-@`.
pub fn username(raw: &str) -> Result<String, AccountError> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(AccountError::invalid("username", "must not be empty"));
    }
    if name.len() > MAX_USERNAME_BYTES {
        return Err(AccountError::invalid("username", format!("must be at most {MAX_USERNAME_BYTES} bytes")));
    }
    // Letters and digits of any script (the seed's "john doe" has a space); punctuation beyond
    // `_.-@` is refused so names stay readable and unambiguous in logs and UIs.
    if let Some(bad) = name.chars().find(|&c| !(c.is_alphanumeric() || matches!(c, ' ' | '_' | '.' | '-' | '@'))) {
        return Err(AccountError::invalid(
            "username",
            format!("may contain letters, digits, space and _.-@ only (found {bad:?})"),
        ));
    }
    Ok(name.to_owned())
}

/// Checks a password is 8..=1024 bytes; its content is otherwise free.
pub fn password(raw: &str) -> Result<(), AccountError> {
    if raw.len() < MIN_PASSWORD_BYTES {
        return Err(AccountError::invalid("password", format!("must be at least {MIN_PASSWORD_BYTES} bytes")));
    }
    if raw.len() > MAX_PASSWORD_BYTES {
        return Err(AccountError::invalid("password", format!("must be at most {MAX_PASSWORD_BYTES} bytes")));
    }
    Ok(())
}

/// Checks a device id is 1..=128 bytes with no control characters or surrounding spaces.
pub fn device_id(raw: &str) -> Result<(), AccountError> {
    if raw.is_empty() || raw.len() > MAX_DEVICE_ID_BYTES {
        return Err(AccountError::invalid("device", format!("must be 1..={MAX_DEVICE_ID_BYTES} bytes")));
    }
    if raw.trim() != raw || raw.chars().any(char::is_control) {
        return Err(AccountError::invalid("device", "must not contain control characters or surrounding spaces"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_usernames_are_accepted_and_trimmed() {
        assert_eq!(username("john doe").unwrap(), "john doe");
        assert_eq!(username("  alice ").unwrap(), "alice");
        assert_eq!(username("bob.smith-2_x@example").unwrap(), "bob.smith-2_x@example");
        assert_eq!(username("Łukasz 日本").unwrap(), "Łukasz 日本");
    }

    #[test]
    fn bad_usernames_are_refused() {
        for bad in ["", "   ", "a\u{0}b", "tab\there", "new\nline", "'; DROP TABLE users; --", "a/b", "emoji😀"] {
            assert!(matches!(username(bad), Err(AccountError::InvalidInput { field: "username", .. })), "{bad:?}");
        }
        assert!(username(&"a".repeat(64)).is_ok());
        assert!(username(&"a".repeat(65)).is_err());
        // 22 three-byte characters are 66 bytes: the limit is bytes, not characters.
        assert!(username(&"日".repeat(22)).is_err());
    }

    #[test]
    fn password_lengths() {
        assert!(password("1234567").is_err());
        assert!(password("12345678").is_ok());
        assert!(password(&"x".repeat(1024)).is_ok());
        assert!(password(&"x".repeat(1025)).is_err());
    }

    #[test]
    fn device_ids() {
        assert!(device_id("phone-1").is_ok());
        assert!(device_id("").is_err());
        assert!(device_id(" lead").is_err());
        assert!(device_id("a\u{7}").is_err());
        assert!(device_id(&"d".repeat(129)).is_err());
    }
}
