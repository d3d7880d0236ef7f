//! The server's resident memory and CPU time, read from `/proc/<pid>` (Linux only).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Clock ticks per second of `/proc/<pid>/stat` times; `USER_HZ` is 100 on every Linux ABI.
const TICKS_PER_SEC: f64 = 100.0;

/// One reading.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Resident set, KiB.
    pub rss_kib: u64,
    /// User + system CPU, in clock ticks.
    pub cpu_ticks: u64,
    /// When it was read.
    pub at: Instant,
}

/// What the server cost over the measured part of a run.
#[derive(Debug, Clone, Serialize)]
pub struct ServerStats {
    /// The server's pid.
    pub pid: u32,
    /// RSS when measuring started, KiB.
    pub rss_start_kib: u64,
    /// RSS when it ended, KiB.
    pub rss_end_kib: u64,
    /// Highest RSS seen in between (sampled every 200 ms), KiB.
    pub rss_peak_kib: u64,
    /// CPU seconds the server used in between.
    pub cpu_secs: f64,
    /// Average CPU use in between (100 = one core).
    pub cpu_percent: f64,
}

/// Reads `/proc/<pid>` and tracks the peak RSS in the background.
pub struct ServerProbe {
    pid: u32,
    peak_kib: Arc<AtomicU64>,
}

impl ServerProbe {
    /// A probe of `pid`; fails when the process cannot be read.
    pub fn new(pid: u32) -> Result<Self, String> {
        let probe = ServerProbe { pid, peak_kib: Arc::new(AtomicU64::new(0)) };
        probe.sample()?;
        let (pid, peak) = (probe.pid, Arc::clone(&probe.peak_kib));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                match read(pid) {
                    Ok(s) => {
                        peak.fetch_max(s.rss_kib, Ordering::Relaxed);
                    }
                    Err(_) => return,
                }
            }
        });
        Ok(probe)
    }

    /// Reads RSS and CPU now.
    pub fn sample(&self) -> Result<Sample, String> {
        let s = read(self.pid)?;
        self.peak_kib.fetch_max(s.rss_kib, Ordering::Relaxed);
        Ok(s)
    }

    /// Resets the peak to the current RSS, so a phase's peak excludes earlier ones.
    pub fn reset_peak(&self) {
        if let Ok(s) = read(self.pid) {
            self.peak_kib.store(s.rss_kib, Ordering::Relaxed);
        }
    }

    /// The cost between `start` and now.
    pub fn since(&self, start: Sample) -> Result<ServerStats, String> {
        let end = self.sample()?;
        let secs = end.at.duration_since(start.at).as_secs_f64().max(1e-9);
        let cpu_secs = end.cpu_ticks.saturating_sub(start.cpu_ticks) as f64 / TICKS_PER_SEC;
        Ok(ServerStats {
            pid: self.pid,
            rss_start_kib: start.rss_kib,
            rss_end_kib: end.rss_kib,
            rss_peak_kib: self.peak_kib.load(Ordering::Relaxed).max(end.rss_kib),
            cpu_secs,
            cpu_percent: 100.0 * cpu_secs / secs,
        })
    }
}

fn read(pid: u32) -> Result<Sample, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("pid {pid}: {e}"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("pid {pid}: {e}"))?;
    Ok(Sample { rss_kib: parse_rss_kib(&status)?, cpu_ticks: parse_cpu_ticks(&stat)?, at: Instant::now() })
}

fn parse_rss_kib(status: &str) -> Result<u64, String> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .ok_or_else(|| "no VmRSS line in /proc/<pid>/status".to_string())
}

/// `utime + stime`, fields 14 and 15; counted after the `)` that ends the command name, which
/// may itself hold spaces.
fn parse_cpu_ticks(stat: &str) -> Result<u64, String> {
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).ok_or("malformed /proc/<pid>/stat")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after_name starts at field 3 (state), so field n is at index n - 3.
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    match (field(14), field(15)) {
        (Some(user), Some(system)) => Ok(user + system),
        _ => Err("malformed /proc/<pid>/stat".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let status = "Name:\tcourier\nVmPeak:\t  900 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_rss_kib(status), Ok(12345));
        let stat = "42 (cour ier) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 1000";
        assert_eq!(parse_cpu_ticks(stat), Ok(300));
        assert!(parse_rss_kib("Name: x\n").is_err());
    }

    #[tokio::test]
    async fn reads_its_own_process() {
        let probe = ServerProbe::new(std::process::id()).expect("own /proc entry");
        let start = probe.sample().expect("sample");
        assert!(start.rss_kib > 0);
        let stats = probe.since(start).expect("stats");
        assert!(stats.rss_peak_kib >= stats.rss_end_kib);
    }
}
