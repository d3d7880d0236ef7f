//! How Courier logs. ERROR and WARN are for the server's own faults and an operator's concerns;
//! what a client gets wrong is logged at INFO or below, and rate-limited, so no client can fill
//! the log at will. This module owns the two tools for that: [`Throttle`], which lets a kind of
//! line through within a budget and counts the rest, and [`ClientNoise`], a tracing layer that
//! keeps actix's own reports of client mistakes (a malformed request, a reset connection) out of
//! the log and holds its accept-loop errors to one line per interval.

use std::num::NonZeroU32;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// A budget for one kind of log line: [`admit`](Self::admit) says whether this one may be written.
#[derive(Debug)]
pub struct Throttle {
    budget: DefaultDirectRateLimiter,
    suppressed: AtomicU64,
}

impl Throttle {
    /// At most one line per `interval`.
    pub fn every(interval: Duration) -> Throttle {
        let quota = Quota::with_period(interval).unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN));
        Throttle { budget: RateLimiter::direct(quota), suppressed: AtomicU64::new(0) }
    }

    /// Lines at `per_second` on average, in bursts of up to `burst`.
    pub fn per_second(per_second: NonZeroU32, burst: NonZeroU32) -> Throttle {
        Throttle {
            budget: RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines suppressed since the last one admitted)` when this line may be written.
    pub fn admit(&self) -> Option<u64> {
        if self.budget.check().is_ok() {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// The budget all client-mistake lines share: 20 a second, in bursts of 50.
static CLIENT_MISTAKES: LazyLock<Throttle> = LazyLock::new(|| {
    Throttle::per_second(NonZeroU32::new(20).unwrap_or(NonZeroU32::MIN), NonZeroU32::new(50).unwrap_or(NonZeroU32::MIN))
});

/// Whether a line about a client's mistake may be written now: `Some(suppressed since the last)`.
pub fn client_mistake() -> Option<u64> {
    CLIENT_MISTAKES.admit()
}

/// Tracing layer that filters actix's reports of client mistakes; see the module doc.
#[derive(Debug)]
pub struct ClientNoise {
    accept_errors: Throttle,
}

impl Default for ClientNoise {
    fn default() -> Self {
        ClientNoise { accept_errors: Throttle::every(Duration::from_secs(10)) }
    }
}

/// What to do with one event.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Keep,
    /// A client's mistake reported by actix as an error: actix also logs it at trace level.
    Drop,
    /// An accept-loop error (e.g. out of file descriptors): one line per interval.
    Throttle,
}

/// Sorts an actix event by its target and message.
fn classify(target: &str, level: Level, message: &str) -> Verdict {
    if level != Level::ERROR {
        return Verdict::Keep;
    }
    if target.starts_with("actix_server::accept") && message.starts_with("Error accepting connection") {
        return Verdict::Throttle;
    }
    if !target.starts_with("actix_http") {
        return Verdict::Keep;
    }
    // actix-http's dispatcher reports every connection that ends in an error as "stream error:
    // <DispatchError>"; these kinds are the client's doing. Service, body, upgrade and internal
    // errors are the server's and stay.
    const CLIENT_CAUSED: [&str; 5] = [
        "stream error: I/O error",
        "stream error: request parse error",
        "stream error: request did not complete",
        "stream error: connection shutdown timeout",
        "stream error: handler dropped payload",
    ];
    // The frame codec's report of a fragmented control frame (Courier refuses those before the
    // codec sees them, but the codec is actix's) and the h1 response decoder's size limit.
    const CLIENT_FRAMES: [&str; 2] = ["Unfinished fragment", "MAX_BUFFER_SIZE unprocessed data reached"];
    if CLIENT_CAUSED.iter().chain(CLIENT_FRAMES.iter()).any(|prefix| message.starts_with(prefix)) {
        Verdict::Drop
    } else {
        Verdict::Keep
    }
}

/// Collects an event's `message` field.
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            use std::fmt::Write;
            let _ = write!(self.0, "{value:?}");
        }
    }
}

impl<S: Subscriber> Layer<S> for ClientNoise {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() != Level::ERROR || !meta.target().starts_with("actix_") {
            return true;
        }
        let mut message = Message::default();
        event.record(&mut message);
        match classify(meta.target(), *meta.level(), &message.0) {
            Verdict::Keep => true,
            Verdict::Drop => false,
            Verdict::Throttle => self.accept_errors.admit().is_some(),
        }
    }
}

/// Installs the binary's subscriber: `RUST_LOG` (default `info`) to stderr, through [`ClientNoise`].
pub fn init(ansi: bool) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(ClientNoise::default())
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi))
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_caused_actix_errors_are_dropped_and_server_faults_kept() {
        let dispatcher = "actix_http::h1::dispatcher";
        assert_eq!(classify(dispatcher, Level::ERROR, "stream error: request parse error: invalid URI"), Verdict::Drop);
        assert_eq!(classify(dispatcher, Level::ERROR, "stream error: I/O error: connection reset"), Verdict::Drop);
        assert_eq!(classify("actix_http::ws::codec", Level::ERROR, "Unfinished fragment Ping"), Verdict::Drop);
        assert_eq!(classify(dispatcher, Level::ERROR, "stream error: service error"), Verdict::Keep);
        assert_eq!(classify(dispatcher, Level::ERROR, "Upgrade handler error: boom"), Verdict::Keep);
        assert_eq!(classify(dispatcher, Level::WARN, "stream error: request parse error"), Verdict::Keep);
        assert_eq!(classify("courier::transport", Level::ERROR, "stream error: I/O error"), Verdict::Keep);
        assert_eq!(
            classify("actix_server::accept", Level::ERROR, "Error accepting connection: Too many open files"),
            Verdict::Throttle
        );
    }

    #[test]
    fn a_throttle_admits_its_burst_then_counts_what_it_suppresses() {
        let throttle = Throttle::per_second(NonZeroU32::MIN, NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
        assert_eq!(throttle.admit(), Some(0));
        assert_eq!(throttle.admit(), Some(0));
        assert_eq!(throttle.admit(), None);
        assert_eq!(throttle.admit(), None);
        assert_eq!(throttle.suppressed.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn once_per_interval_means_once() {
        let throttle = Throttle::every(Duration::from_secs(3600));
        assert!(throttle.admit().is_some());
        assert!(throttle.admit().is_none());
    }
}
