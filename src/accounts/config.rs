//! `[accounts]` configuration: password hashing and its limits, sign-in rate limits, session
//! lifetime and contact rules.

use serde::Deserialize;

/// Settings for the accounts service, embedded in the main config as `[accounts]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccountsConfig {
    /// Offer the seed's `sha256` password hash. Off by default: salted SHA-256 is fast to brute-force.
    pub allow_sha256: bool,
    /// How long a session token is accepted after it is issued, in seconds.
    pub session_ttl_secs: u64,
    /// Only contacts (an accepted invite) may send each other messages. Off by default.
    pub require_contacts: bool,
    /// Most frames held for one offline user; further ones are refused.
    pub max_pending_messages: u32,
    /// Largest `nonce` + `message` payload of a seed-002 `message` frame, in bytes.
    pub max_message_bytes: usize,
    /// Argon2id memory cost in KiB.
    pub argon2_memory_kib: u32,
    /// Argon2id time cost (passes).
    pub argon2_iterations: u32,
    /// Argon2id lanes.
    pub argon2_parallelism: u32,
    /// Password hashes (argon2 hash or verify) computed at once; 0 means one per core. Each
    /// holds `argon2_memory_kib` of memory while it runs.
    pub max_concurrent_hashes: usize,
    /// Requests that may wait for a hashing slot; past it they are refused as busy at once.
    pub max_queued_hashes: usize,
    /// How long a request waits for a hashing slot before it is refused as busy.
    pub hash_queue_timeout_ms: u64,
    /// Signups and sign-ins one client address may start per minute (0: no limit) ...
    pub auth_per_address_per_min: u32,
    /// ... and in a burst.
    pub auth_per_address_burst: u32,
    /// Signups and sign-ins naming one username per minute (0: no limit) ...
    pub auth_per_username_per_min: u32,
    /// ... and in a burst.
    pub auth_per_username_burst: u32,
    /// Most addresses, and most usernames, whose attempts are remembered; past it new ones are
    /// refused until old entries have refilled, so a flood of names cannot grow memory.
    pub auth_max_tracked: usize,
    /// How often ended sessions are deleted from the database, in seconds; 0 never.
    pub session_purge_every_secs: u64,
    /// How long an ended session is kept before it is deleted, in seconds, so its token is
    /// still refused as `session_revoked`/`session_expired` (not `bad_token`) for that long.
    pub session_purge_grace_secs: u64,
}

impl Default for AccountsConfig {
    fn default() -> Self {
        AccountsConfig {
            allow_sha256: false,
            session_ttl_secs: 30 * 24 * 60 * 60,
            require_contacts: false,
            max_pending_messages: 1000,
            max_message_bytes: 64 * 1024,
            session_purge_every_secs: 60 * 60,
            session_purge_grace_secs: 24 * 60 * 60,
            // OWASP's suggested argon2id minimum (19 MiB, 2 passes, 1 lane).
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            max_concurrent_hashes: 0,
            max_queued_hashes: 64,
            hash_queue_timeout_ms: 2_000,
            auth_per_address_per_min: 60,
            auth_per_address_burst: 30,
            auth_per_username_per_min: 12,
            auth_per_username_burst: 6,
            auth_max_tracked: 100_000,
        }
    }
}

/// A setting in `[accounts]` that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("accounts.{field}: {reason}")]
pub struct ConfigError {
    /// The offending key.
    pub field: &'static str,
    /// Why it is refused.
    pub reason: String,
}

impl AccountsConfig {
    /// Checks the values deserialization cannot: ranges and the argon2 parameter rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, reason: &str| Err(ConfigError { field, reason: reason.to_owned() });
        if self.session_ttl_secs == 0 {
            return err("session_ttl_secs", "must be at least 1");
        }
        // Millisecond timestamps are i64; a TTL that overflows them would never expire.
        if self.session_ttl_secs > (i64::MAX as u64) / 1000 / 4 {
            return err("session_ttl_secs", "is too large");
        }
        if self.max_pending_messages == 0 {
            return err("max_pending_messages", "must be at least 1");
        }
        if self.max_message_bytes == 0 {
            return err("max_message_bytes", "must be at least 1");
        }
        if self.hash_queue_timeout_ms == 0 {
            return err("hash_queue_timeout_ms", "must be at least 1");
        }
        if self.auth_per_address_per_min > 0 && self.auth_per_address_burst == 0 {
            return err("auth_per_address_burst", "must be at least 1 when auth_per_address_per_min is set");
        }
        if self.auth_per_username_per_min > 0 && self.auth_per_username_burst == 0 {
            return err("auth_per_username_burst", "must be at least 1 when auth_per_username_per_min is set");
        }
        if self.auth_max_tracked == 0 {
            return err("auth_max_tracked", "must be at least 1");
        }
        argon2::Params::new(self.argon2_memory_kib, self.argon2_iterations, self.argon2_parallelism, None)
            .map(|_| ())
            .map_err(|e| ConfigError { field: "argon2_*", reason: e.to_string() })
    }

    /// Hashing slots in force: `max_concurrent_hashes`, or the number of cores when it is 0.
    pub fn hash_slots(&self) -> usize {
        match self.max_concurrent_hashes {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }

    /// The session lifetime in milliseconds.
    pub fn session_ttl_millis(&self) -> i64 {
        i64::try_from(self.session_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_conservative() {
        let c = AccountsConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert!(!c.allow_sha256);
        assert!(!c.require_contacts, "the issue makes contacts optional by default");
    }

    #[test]
    fn partial_table_keeps_defaults_and_unknown_keys_fail() {
        let c: AccountsConfig = toml::from_str("allow_sha256 = true\nsession_ttl_secs = 60").unwrap();
        assert!(c.allow_sha256);
        assert_eq!(c.session_ttl_secs, 60);
        assert_eq!(c.max_pending_messages, AccountsConfig::default().max_pending_messages);
        assert!(toml::from_str::<AccountsConfig>("allow_md5 = true").is_err());
    }

    #[test]
    fn bad_values_are_refused() {
        let c = AccountsConfig { session_ttl_secs: 0, ..AccountsConfig::default() };
        assert_eq!(c.validate().unwrap_err().field, "session_ttl_secs");
        let c = AccountsConfig { argon2_memory_kib: 1, ..AccountsConfig::default() };
        assert_eq!(c.validate().unwrap_err().field, "argon2_*");
        let c = AccountsConfig { auth_per_username_burst: 0, ..AccountsConfig::default() };
        assert_eq!(c.validate().unwrap_err().field, "auth_per_username_burst");
        let c = AccountsConfig { hash_queue_timeout_ms: 0, ..AccountsConfig::default() };
        assert_eq!(c.validate().unwrap_err().field, "hash_queue_timeout_ms");
    }

    #[test]
    fn hash_slots_default_to_the_cores() {
        assert!(AccountsConfig::default().hash_slots() >= 1);
        assert_eq!(AccountsConfig { max_concurrent_hashes: 3, ..AccountsConfig::default() }.hash_slots(), 3);
    }
}
