//! What a run measured: latency histograms, counters, checks and server cost, printed as a table
//! and written as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::server_stats::ServerStats;

/// Latency histograms hold microseconds from 1 µs to 10 minutes.
const MAX_MICROS: u64 = 600_000_000;
/// Many connections record at once; a few locks keep them from queueing on one.
const SHARDS: usize = 16;

/// A latency histogram that many tasks record into.
pub struct Latencies {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Latencies {
    /// An empty histogram with three significant figures.
    pub fn new() -> Self {
        let shards = (0..SHARDS)
            .map(|_| Mutex::new(Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("static bounds are valid")))
            .collect();
        Latencies { shards }
    }

    /// Records one latency; `key` (a connection index) picks the shard.
    pub fn record(&self, key: usize, micros: u64) {
        let mut shard = self.shards[key % SHARDS].lock().unwrap_or_else(|p| p.into_inner());
        shard.saturating_record(micros.clamp(1, MAX_MICROS));
    }

    /// Percentiles over everything recorded.
    pub fn summary(&self) -> LatencySummary {
        let mut all = Histogram::<u64>::new_with_bounds(1, MAX_MICROS, 3).expect("static bounds are valid");
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            // Same bounds on both sides, so adding cannot fail.
            let _ = all.add(&*shard);
        }
        LatencySummary::of(&all)
    }
}

/// Percentiles of one latency, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LatencySummary {
    /// Samples recorded.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
    /// Arithmetic mean.
    pub mean_ms: f64,
}

impl LatencySummary {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        if h.is_empty() {
            return LatencySummary { count: 0, p50_ms: 0.0, p90_ms: 0.0, p99_ms: 0.0, max_ms: 0.0, mean_ms: 0.0 };
        }
        LatencySummary {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

/// Errors by kind, counted from every connection.
#[derive(Default)]
pub struct Errors {
    by_kind: Mutex<BTreeMap<String, u64>>,
    total: AtomicU64,
}

impl Errors {
    /// Counts one error of `kind`.
    pub fn count(&self, kind: impl Into<String>) {
        self.total.fetch_add(1, Ordering::Relaxed);
        *self.by_kind.lock().unwrap_or_else(|p| p.into_inner()).entry(kind.into()).or_default() += 1;
    }

    /// Errors so far.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.by_kind.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A counted quantity and its rate over the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct Rate {
    /// How many.
    pub count: u64,
    /// Per second over the measured window.
    pub per_sec: f64,
}

/// One correctness check; a failed one fails the run.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it held.
    pub passed: bool,
    /// Counts behind the verdict, or the first counterexample.
    pub detail: String,
}

/// The report of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// The WebSocket endpoint driven.
    pub url: String,
    /// The scenario's parameters as given.
    pub params: serde_json::Value,
    /// Seconds over which rates are computed.
    pub duration_secs: f64,
    /// Counted things and their rates.
    pub throughput: BTreeMap<String, Rate>,
    /// Latency percentiles by what was timed.
    pub latency: BTreeMap<String, LatencySummary>,
    /// Other figures (connections, bytes per socket, ...).
    pub metrics: BTreeMap<String, f64>,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// All errors.
    pub errors_total: u64,
    /// Correctness checks.
    pub checks: Vec<Check>,
    /// The server's memory and CPU, when `--server-pid` was given.
    pub server: Option<ServerStats>,
    /// True when every check held.
    pub passed: bool,
}

impl Report {
    /// An empty report for `scenario`.
    pub fn new(scenario: &str, url: &str, params: serde_json::Value) -> Self {
        Report {
            scenario: scenario.into(),
            url: url.into(),
            params,
            duration_secs: 0.0,
            throughput: BTreeMap::new(),
            latency: BTreeMap::new(),
            metrics: BTreeMap::new(),
            errors: BTreeMap::new(),
            errors_total: 0,
            checks: Vec::new(),
            server: None,
            passed: true,
        }
    }

    /// Adds a count and its rate over `duration_secs` (set that first).
    pub fn rate(&mut self, name: &str, count: u64) {
        let per_sec = if self.duration_secs > 0.0 { count as f64 / self.duration_secs } else { 0.0 };
        self.throughput.insert(name.into(), Rate { count, per_sec });
    }

    /// Adds a latency summary.
    pub fn latency(&mut self, name: &str, latencies: &Latencies) {
        self.latency.insert(name.into(), latencies.summary());
    }

    /// Adds a figure.
    pub fn metric(&mut self, name: &str, value: f64) {
        self.metrics.insert(name.into(), value);
    }

    /// Adds a check.
    pub fn check(&mut self, name: &str, passed: bool, detail: impl Into<String>) {
        self.passed &= passed;
        self.checks.push(Check { name: name.into(), passed, detail: detail.into() });
    }

    /// Copies the error counts in.
    pub fn errors(&mut self, errors: &Errors) {
        self.errors = errors.snapshot();
        self.errors_total = errors.total();
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "scenario {}  ({})  {:.1} s", self.scenario, self.url, self.duration_secs);
        let _ = writeln!(out, "params   {}", self.params);
        if !self.throughput.is_empty() {
            let _ = writeln!(out, "\n{:<28} {:>14} {:>14}", "throughput", "count", "per second");
            for (name, rate) in &self.throughput {
                let _ = writeln!(out, "{name:<28} {:>14} {:>14.0}", rate.count, rate.per_sec);
            }
        }
        if !self.latency.is_empty() {
            let _ = writeln!(
                out,
                "\n{:<28} {:>10} {:>9} {:>9} {:>9} {:>9}",
                "latency (ms)", "samples", "p50", "p90", "p99", "max"
            );
            for (name, l) in &self.latency {
                let _ = writeln!(
                    out,
                    "{name:<28} {:>10} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                    l.count, l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
                );
            }
        }
        if !self.metrics.is_empty() {
            let _ = writeln!(out);
            for (name, value) in &self.metrics {
                let _ = writeln!(out, "{name:<28} {value:>14.1}");
            }
        }
        if let Some(server) = &self.server {
            let _ = writeln!(
                out,
                "\nserver pid {}: RSS {} KiB -> {} KiB (peak {} KiB), CPU {:.0}% ({:.1} s)",
                server.pid,
                server.rss_start_kib,
                server.rss_end_kib,
                server.rss_peak_kib,
                server.cpu_percent,
                server.cpu_secs
            );
        }
        let _ = writeln!(out, "\nerrors   {}", self.errors_total);
        for (kind, n) in &self.errors {
            let _ = writeln!(out, "  {kind:<40} {n}");
        }
        for check in &self.checks {
            let verdict = if check.passed { "ok  " } else { "FAIL" };
            let _ = writeln!(out, "check {verdict} {}: {}", check.name, check.detail);
        }
        let _ = writeln!(out, "{}", if self.passed { "PASSED" } else { "FAILED" });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_merge_across_shards() {
        let l = Latencies::new();
        for i in 1..=100u64 {
            l.record(i as usize, i * 1000);
        }
        let s = l.summary();
        assert_eq!(s.count, 100);
        assert!((s.p50_ms - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 0.1, "{s:?}");
    }

    #[test]
    fn a_failed_check_fails_the_report() {
        let mut r = Report::new("x", "ws://x", serde_json::json!({}));
        r.check("a", true, "");
        assert!(r.passed);
        r.check("b", false, "one missing");
        assert!(!r.passed);
        assert!(r.table().contains("FAIL b: one missing"));
    }

    #[test]
    fn rates_use_the_window() {
        let mut r = Report::new("x", "ws://x", serde_json::json!({}));
        r.duration_secs = 2.0;
        r.rate("frames", 100);
        assert_eq!(r.throughput["frames"].per_sec, 50.0);
    }
}
