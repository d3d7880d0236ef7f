//! Messaging limits: payload size, page sizes and bytes, the log writer's batch size, how long
//! a live message waits ahead of a gap, and the rate and expiry of status signals.

use serde::Deserialize;

/// The `[messaging]` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MessagingConfig {
    /// Largest `payload` + `encrypted` + `signature` + `encryption_type` of one message, in bytes.
    pub max_payload_bytes: usize,
    /// Largest `limit` a `pull` or `history` may ask for.
    pub max_page: i64,
    /// Most bytes of messages (as proto3 JSON) in one `pull`/`history` reply or catch-up page;
    /// a page always holds at least one message, so a larger one still gets through alone.
    pub max_page_bytes: usize,
    /// The `limit` of a `pull` or `history` that names none.
    pub default_page: i64,
    /// Messages read per step while a joining device catches up in push mode.
    pub catch_up_page: i64,
    /// Most writes (messages and receipts) committed in one transaction.
    pub max_batch: usize,
    /// Status signals one user may send to one other user per second, sustained.
    pub signal_rate_per_sec: u32,
    /// Status signals one user may send to one other user in a burst.
    pub signal_burst: u32,
    /// A TYPING or RECORDING with no PAUSED or CANCELLED after it turns into PAUSED after this.
    pub typing_timeout_ms: u64,
    /// How long a live message that arrived ahead of a missing offset is held for the missing
    /// one to arrive live before the gap is read from the database.
    pub gap_wait_ms: u64,
}

impl Default for MessagingConfig {
    fn default() -> Self {
        MessagingConfig {
            max_payload_bytes: 64 * 1024,
            max_page: 500,
            max_page_bytes: 512 * 1024,
            default_page: 100,
            catch_up_page: 200,
            max_batch: 512,
            signal_rate_per_sec: 5,
            signal_burst: 10,
            typing_timeout_ms: 10_000,
            gap_wait_ms: 200,
        }
    }
}

impl MessagingConfig {
    /// Checks the ranges; the error names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_payload_bytes == 0 {
            return Err("max_payload_bytes must be at least 1".into());
        }
        if self.max_page < 1 || !(1..=self.max_page).contains(&self.default_page) {
            return Err("max_page must be at least 1 and default_page within 1..=max_page".into());
        }
        if !(1..=(1 << 30)).contains(&self.max_page_bytes) {
            return Err("max_page_bytes must be 1..=1073741824".into());
        }
        if !(1..=10_000).contains(&self.catch_up_page) {
            return Err("catch_up_page must be 1..=10000".into());
        }
        if !(1..=10_000).contains(&self.max_batch) {
            return Err("max_batch must be 1..=10000".into());
        }
        if self.signal_rate_per_sec == 0 || self.signal_burst == 0 {
            return Err("signal_rate_per_sec and signal_burst must be at least 1".into());
        }
        if !(50..=600_000).contains(&self.typing_timeout_ms) {
            return Err("typing_timeout_ms must be 50..=600000".into());
        }
        if !(1..=60_000).contains(&self.gap_wait_ms) {
            return Err("gap_wait_ms must be 1..=60000".into());
        }
        Ok(())
    }
}
