//! Input rules for usernames, passwords and device ids, and the username comparison key.
//! Pure functions, no I/O.
//!
//! Usernames follow PRECIS (RFC 8265) in spirit: a new name is stored width-mapped and
//! compatibility-normalized (NFKC) with its case kept (the `eid` others see), and two names are
//! the same account when their *keys* match: NFKC, then lower case, then NFKC again. A new name
//! must also stay within one script, as UTS #39's "highly restrictive" level has it (Latin may
//! join Han with Hiragana/Katakana, Bopomofo or Hangul), so `vісtim` with a Cyrillic `і` cannot
//! sit beside `victim`.

use unicode_normalization::UnicodeNormalization;
use unicode_script::{Script, UnicodeScript};

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

/// Checks and normalizes a username for a new account: [`username`]'s rules on its NFKC form,
/// which also must not mix scripts, nor be a key user's eid (only an ed25519 login of that key
/// makes that account, see `crate::keys::address`). Returns the form to store.
pub fn new_username(raw: &str) -> Result<String, AccountError> {
    let normalized: String = raw.trim().nfkc().collect();
    let name = username(&normalized)?;
    if crate::keys::address::is_key_user_eid(&name) {
        return Err(AccountError::invalid("username", "is reserved for a signal key user"));
    }
    let scripts = scripts_of(&name);
    if !single_script(&scripts) {
        let names: Vec<&str> = scripts.iter().map(|s| s.full_name()).collect();
        return Err(AccountError::MixedScript(names.join(" and ")));
    }
    Ok(name)
}

/// The comparison key of a username: names with equal keys are one account.
pub fn username_key(name: &str) -> String {
    // Lowercasing can leave a string that is not in normal form (and NFKC can expose new
    // uppercase letters), so normalize on both sides.
    let folded = name.trim().nfkc().collect::<String>().to_lowercase();
    folded.nfkc().collect()
}

/// The scripts of a name's letters; digits, punctuation and marks (Common, Inherited) belong to all.
/// In order of first use.
fn scripts_of(name: &str) -> Vec<Script> {
    let mut scripts = Vec::new();
    for script in name.chars().map(|c| c.script()) {
        if !matches!(script, Script::Common | Script::Inherited | Script::Unknown) && !scripts.contains(&script) {
            scripts.push(script);
        }
    }
    scripts
}

/// UTS #39's "highly restrictive" script sets: one script, or Latin with the CJK companions.
fn single_script(scripts: &[Script]) -> bool {
    use Script::{Bopomofo, Han, Hangul, Hiragana, Katakana, Latin};
    if scripts.len() <= 1 {
        return true;
    }
    let within = |allowed: &[Script]| scripts.iter().all(|s| allowed.contains(s));
    within(&[Latin, Han, Hiragana, Katakana]) || within(&[Latin, Han, Bopomofo]) || within(&[Latin, Han, Hangul])
}

/// Checks a sign-in password fits the hashing bound; unlike [`password`] it sets no minimum,
/// since a short password is simply a wrong one.
pub fn signin_password(raw: &str) -> Result<(), AccountError> {
    if raw.len() > MAX_PASSWORD_BYTES {
        return Err(AccountError::invalid("password", format!("must be at most {MAX_PASSWORD_BYTES} bytes")));
    }
    Ok(())
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
    // The signal endpoint's devices keep their cursors under this prefix in the same log; a
    // Phoenix device of that name would move (or be moved by) theirs.
    if raw.starts_with(crate::messaging::wire::SEALED_DEVICE_PREFIX) {
        return Err(AccountError::invalid(
            "device",
            format!(
                "must not start with {:?}: those are signal-endpoint devices",
                crate::messaging::wire::SEALED_DEVICE_PREFIX
            ),
        ));
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
    fn keys_fold_case_width_and_compatibility_forms() {
        assert_eq!(username_key("Victim"), "victim");
        assert_eq!(username_key("VICTIM"), username_key("victim"));
        assert_eq!(username_key("ｖｉｃｔｉｍ"), "victim", "fullwidth letters are their ASCII twins");
        assert_eq!(username_key("ﬁona"), "fiona", "ligatures decompose");
        assert_eq!(username_key("Straße"), "straße");
        assert_eq!(username_key("e\u{301}lodie"), username_key("\u{e9}lodie"), "combining forms compose");
        assert_ne!(
            username_key("vісtim"),
            username_key("victim"),
            "Cyrillic letters stay distinct (refused at signup)"
        );
    }

    #[test]
    fn a_key_users_eid_cannot_be_signed_up() {
        let eid = format!("BQ{}", "A".repeat(42));
        assert!(crate::keys::address::is_key_user_eid(&eid));
        assert!(new_username(&eid).is_err());
        assert!(new_username(&format!("bq{}", "a".repeat(42))).is_ok(), "not a 0x05 userID");
    }

    #[test]
    fn new_usernames_are_normalized_and_single_script() {
        assert_eq!(new_username("  Alice ").unwrap(), "Alice");
        assert_eq!(new_username("ｂｏｂ").unwrap(), "bob");
        assert_eq!(new_username("e\u{301}lodie").unwrap(), "\u{e9}lodie");
        for ok in ["john doe", "Łukasz 日本", "Иван", "ελένη", "田中 さくら", "kim 김민준", "user_42@example"]
        {
            assert!(new_username(ok).is_ok(), "{ok:?}: {:?}", new_username(ok));
        }
        for mixed in ["vісtim", "pаypal", "Иван ivan", "αlpha"] {
            let err = new_username(mixed).unwrap_err();
            assert!(matches!(err, AccountError::MixedScript(_)), "{mixed:?}: {err:?}");
            assert_eq!(err.code(), "mixed_script_username");
        }
        assert!(new_username("vісtim").unwrap_err().to_string().contains("Cyrillic"));
        assert!(matches!(new_username("a/b"), Err(AccountError::InvalidInput { field: "username", .. })));
    }

    #[test]
    fn signin_passwords_have_no_minimum() {
        assert!(signin_password("").is_ok());
        assert!(signin_password("short").is_ok());
        assert!(signin_password(&"x".repeat(1025)).is_err());
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
        assert!(device_id("signal:1").is_err(), "signal-endpoint devices' names are reserved");
        assert!(device_id("signals").is_ok());
    }
}
