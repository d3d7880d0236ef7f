//! Rate limits on signup and sign-in, per client address and per username, with bounded memory.
//!
//! Each attempt takes one token from its address's bucket, then from its username's (the
//! comparison key, so `Alice` and `ALICE` share one). The maps only grow with keys seen
//! recently: entries whose bucket has refilled are dropped on a schedule, and when a map is
//! at `auth_max_tracked` anyway attempts are refused rather than added until entries refill.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::{AccountError, AccountsConfig};

/// How often refilled entries are swept out of the maps.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// One keyed bucket set with a size bound.
struct Bounded<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    max: usize,
    scope: &'static str,
}

impl<K: Hash + Eq + Clone> Bounded<K> {
    fn new(per_min: u32, burst: u32, max: usize, scope: &'static str) -> Option<Bounded<K>> {
        let per_min = NonZeroU32::new(per_min)?;
        let burst = NonZeroU32::new(burst).unwrap_or(per_min);
        let quota = Quota::per_minute(per_min).allow_burst(burst);
        Some(Bounded { limiter: RateLimiter::keyed(quota), max, scope })
    }

    fn check(&self, key: &K) -> Result<(), AccountError> {
        if self.limiter.len() >= self.max {
            self.limiter.retain_recent();
            if self.limiter.len() >= self.max {
                // Every tracked key is still cooling down: a flood of distinct keys. Refusing
                // until entries refill keeps memory bounded (the limiter cannot tell a known
                // key from a new one without inserting it).
                return Err(AccountError::RateLimited { scope: "on this server right now", retry_after_secs: 1 });
            }
        }
        self.limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            AccountError::RateLimited { scope: self.scope, retry_after_secs: wait.as_secs().max(1) }
        })
    }

    fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.limiter.len()
    }
}

/// The address key: IPv4 as is; IPv6 by its /64, the block one host or customer usually has, so
/// rotating through one's own addresses gains nothing.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

/// The signup/sign-in limits of one accounts service.
pub struct AuthLimits {
    by_address: Option<Bounded<IpAddr>>,
    by_username: Option<Bounded<String>>,
    last_sweep: Mutex<Instant>,
}

impl std::fmt::Debug for AuthLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLimits").field("tracked", &self.tracked()).finish()
    }
}

impl AuthLimits {
    /// Limits as `config` sets them; a zero rate turns that limit off.
    pub fn new(config: &AccountsConfig) -> AuthLimits {
        AuthLimits {
            by_address: Bounded::new(
                config.auth_per_address_per_min,
                config.auth_per_address_burst,
                config.auth_max_tracked,
                "from this address",
            ),
            by_username: Bounded::new(
                config.auth_per_username_per_min,
                config.auth_per_username_burst,
                config.auth_max_tracked,
                "for this username",
            ),
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    /// Takes one attempt for `address` (when known) and then for `username_key`.
    pub fn check(&self, address: Option<IpAddr>, username_key: &str) -> Result<(), AccountError> {
        self.sweep_if_due();
        if let (Some(limit), Some(ip)) = (&self.by_address, address) {
            limit.check(&address_key(ip))?;
        }
        if let Some(limit) = &self.by_username {
            limit.check(&username_key.to_owned())?;
        }
        Ok(())
    }

    fn sweep_if_due(&self) {
        // A poisoned lock only means a sweep panicked; sweeping again is still right.
        let mut last = self.last_sweep.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() < SWEEP_EVERY {
            return;
        }
        *last = Instant::now();
        drop(last);
        for limit in self.by_address.iter() {
            limit.sweep();
        }
        for limit in self.by_username.iter() {
            limit.sweep();
        }
    }

    /// Entries held now: (addresses, usernames).
    pub fn tracked(&self) -> (usize, usize) {
        (self.by_address.as_ref().map_or(0, Bounded::len), self.by_username.as_ref().map_or(0, Bounded::len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(per_min: u32, burst: u32, max: usize) -> AccountsConfig {
        AccountsConfig {
            auth_per_address_per_min: per_min,
            auth_per_address_burst: burst,
            auth_per_username_per_min: per_min,
            auth_per_username_burst: burst,
            auth_max_tracked: max,
            ..AccountsConfig::default()
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn per_address_then_per_username() {
        let limits = AuthLimits::new(&config(1, 3, 1000));
        for i in 0..3 {
            limits.check(ip("10.0.0.1"), &format!("user{i}")).unwrap();
        }
        let err = limits.check(ip("10.0.0.1"), "other").unwrap_err();
        assert!(matches!(err, AccountError::RateLimited { scope: "from this address", .. }), "{err:?}");
        assert!(err.retry_after_secs().unwrap() >= 1);
        // Another address still gets through, until the username's own burst is spent.
        limits.check(ip("10.0.0.2"), "victim").unwrap();
        limits.check(ip("10.0.0.3"), "victim").unwrap();
        limits.check(ip("10.0.0.4"), "victim").unwrap();
        let err = limits.check(ip("10.0.0.5"), "victim").unwrap_err();
        assert!(matches!(err, AccountError::RateLimited { scope: "for this username", .. }), "{err:?}");
    }

    #[test]
    fn ipv6_counts_by_its_64() {
        let limits = AuthLimits::new(&config(1, 2, 1000));
        limits.check(ip("2001:db8:1:2::1"), "a").unwrap();
        limits.check(ip("2001:db8:1:2:ffff::9"), "b").unwrap();
        assert!(limits.check(ip("2001:db8:1:2:1234::1"), "c").is_err());
        limits.check(ip("2001:db8:1:3::1"), "d").unwrap();
        assert_eq!(address_key("::ffff:10.1.2.3".parse().unwrap()), "10.1.2.3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn many_usernames_do_not_grow_the_map_past_its_bound() {
        let limits = AuthLimits::new(&AccountsConfig { auth_per_address_per_min: 0, ..config(1, 5, 100) });
        let mut refused = 0;
        for i in 0..10_000 {
            if limits.check(None, &format!("name{i}")).is_err() {
                refused += 1;
            }
        }
        assert_eq!(limits.tracked(), (0, 100));
        assert_eq!(refused, 10_000 - 100);
    }

    #[test]
    fn zero_rate_disables() {
        let limits = AuthLimits::new(&config(0, 0, 10));
        for _ in 0..100 {
            limits.check(ip("10.0.0.1"), "same").unwrap();
        }
        assert_eq!(limits.tracked(), (0, 0));
    }
}
