//! The shared backend harness (`tests/common/test_db.rs`: a private database per test and the
//! `backend_tests!` macro) plus what the storage tests add to it: accounts services over a test
//! database and their settings.

use std::sync::Arc;

use courier::accounts::{Accounts, AccountsConfig};
use courier::clock::{Clock, ManualClock};

#[macro_use]
#[path = "../common/test_db.rs"]
mod test_db;

pub use test_db::*;

/// A start time far from zero so "expired" never coincides with "unset".
pub const T0: i64 = 1_700_000_000_000;

impl TestDb {
    /// An accounts service on a new store over this database.
    pub fn accounts(&self, config: AccountsConfig) -> Accounts {
        Accounts::new(self.open(), config).expect("valid test config")
    }

    /// An accounts service with a manual clock.
    pub fn accounts_at(&self, config: AccountsConfig, clock: &ManualClock) -> Accounts {
        let clock: Arc<dyn Clock> = Arc::new(clock.clone());
        Accounts::with_clock(self.open(), config, clock).expect("valid test config")
    }
}

/// Defaults with a cheap argon2 cost, so debug-build tests stay fast.
pub fn config() -> AccountsConfig {
    AccountsConfig {
        argon2_memory_kib: 64,
        argon2_iterations: 1,
        // The strict rule is the one with paths to test; it is off by default.
        require_contacts: true,
        ..AccountsConfig::default()
    }
}

/// A password that passes validation.
pub const PW: &str = "secretpassword";
