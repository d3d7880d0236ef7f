//! `courier-load`: drives a Courier server (or, for `idle`, `fanout` and `echo`, any Phoenix
//! Channels server) with many real WebSocket connections from one process, and reports
//! throughput, latency percentiles, errors, correctness checks and the server's RSS and CPU.
//!
//! ```text
//! courier-load [--url ws://127.0.0.1:4000/socket/websocket | --urls ws://a,ws://b,...] [--server-pid PID] [--json FILE] <scenario> ...
//! ```
//! With `--urls` the sockets are spread over several nodes of one cluster, round-robin.
//! The exit status is 0 when every check held, 1 when one failed, 2 when the run could not start.

mod accounts;
mod conn;
mod report;
mod scenarios;
mod server_stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::conn::Connector;
use crate::report::Report;
use crate::server_stats::{Sample, ServerProbe, ServerStats};

/// Why a connection or a run failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The run cannot start (bad URL, no accounts, unreadable pid).
    #[error("setup: {0}")]
    Setup(String),
    /// TCP connect or WebSocket upgrade failed.
    #[error("connect: {0}")]
    Connect(String),
    /// A join or push got an error reply.
    #[error("refused: {0}")]
    Refused(String),
    /// Nothing arrived in time.
    #[error("timeout: {0}")]
    Timeout(String),
    /// The server sent something unexpected.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The server closed the connection.
    #[error("connection closed")]
    Closed,
}

impl LoadError {
    /// A short label for the error table.
    pub fn kind(&self) -> &'static str {
        match self {
            LoadError::Setup(_) => "setup",
            LoadError::Connect(_) => "connect",
            LoadError::Refused(_) => "refused",
            LoadError::Timeout(_) => "timeout",
            LoadError::Protocol(_) => "protocol",
            LoadError::Closed => "closed",
        }
    }
}

#[derive(Debug, Parser)]
#[command(name = "courier-load", version, about = "Load scenarios for Courier and other Phoenix Channels servers")]
struct Cli {
    /// The server's WebSocket endpoint.
    #[arg(long, global = true, default_value = "ws://127.0.0.1:4000/socket/websocket")]
    url: String,
    /// Several nodes of one cluster, comma-separated: sockets are spread over them round-robin
    /// (replaces --url; sign-ups go to the first).
    #[arg(long, global = true, value_delimiter = ',')]
    urls: Vec<String>,
    /// Also write the report as JSON to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Report this process's RSS and CPU (read from /proc/<pid>).
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Connections per loopback source address (127.0.0.1, .2, ...).
    #[arg(long, global = true, default_value_t = 20_000)]
    per_source: usize,
    /// Connection handshakes in progress at once.
    #[arg(long, global = true, default_value_t = 200)]
    connect_concurrency: usize,
    /// Worker threads of this tool.
    #[arg(long, global = true, default_value_t = 2)]
    threads: usize,
    /// No progress bars.
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Sockets connect, join room topics (and, with --users, their user: inbox with presence), then hold.
    Idle(scenarios::idle::Args),
    /// Subscribers on one room topic; one publisher broadcasts at a set rate.
    Fanout(scenarios::fanout::Args),
    /// Long-poll sessions join a room and go quiet; server memory per session, between polls and with a poll held.
    Longpoll(scenarios::longpoll::Args),
    /// Sockets push `ping` and await the replies, several in flight each.
    Echo(scenarios::echo::Args),
    /// Users x devices exchange messages and receipts; checks every acked message reached every device once, in order.
    Chat(scenarios::chat::Args),
    /// `chat` while devices keep disconnecting and rejoining with `after`; checks no gap and no duplicate.
    Storm(scenarios::chat::StormArgs),
}

/// What every scenario gets.
pub struct Ctx {
    /// Opens connections.
    pub connector: Arc<Connector>,
    /// The first node's WebSocket URL (sign-ups and long-poll go there).
    pub url: String,
    /// Every node's URL, comma-separated, for the report.
    pub urls: String,
    /// The server's /proc reader.
    pub probe: Option<ServerProbe>,
    /// Whether to draw progress bars.
    pub progress: bool,
}

impl Ctx {
    /// A handle on the connector that a spawned task can own.
    pub fn connector_handle(&self) -> Arc<Connector> {
        Arc::clone(&self.connector)
    }

    /// The server's RSS and CPU now, when `--server-pid` was given.
    pub fn server_sample(&self) -> Result<Option<Sample>, LoadError> {
        self.probe.as_ref().map(ServerProbe::sample).transpose().map_err(LoadError::Setup)
    }

    /// What the server cost since `start` (a [`Ctx::server_sample`]).
    pub fn server_since(&self, start: Option<Sample>) -> Result<Option<ServerStats>, LoadError> {
        match (&self.probe, start) {
            (Some(probe), Some(start)) => probe.since(start).map(Some).map_err(LoadError::Setup),
            _ => Ok(None),
        }
    }

    /// A progress bar of `len` steps, hidden with --quiet or when stderr is not a terminal.
    pub fn bar(&self, len: u64, what: &str) -> ProgressBar {
        let target = if self.progress { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        let bar = ProgressBar::with_draw_target(Some(len), target);
        bar.set_style(
            ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {per_sec} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(what.to_owned());
        bar
    }

    /// A bar that counts the seconds of a timed phase and shows `status()` beside them.
    pub async fn timed_phase(&self, what: &str, duration: Duration, status: impl Fn() -> String) {
        let bar = self.bar(duration.as_secs().max(1), what);
        let end = Instant::now() + duration;
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(250).min(end.saturating_duration_since(Instant::now()))).await;
            bar.set_position(
                duration.as_secs().saturating_sub(end.saturating_duration_since(Instant::now()).as_secs()),
            );
            bar.set_message(format!("{what} {}", status()));
        }
        bar.finish_and_clear();
    }
}

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the tool started: one clock for senders and receivers in this process.
pub fn now_micros() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    now_micros();
    let runtime =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(cli.threads.max(1)).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("courier-load: cannot start a runtime: {e}");
                return ExitCode::from(2);
            }
        };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("courier-load: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<bool, LoadError> {
    let urls = if cli.urls.is_empty() { vec![cli.url.clone()] } else { cli.urls.clone() };
    let connector = Connector::new(&urls, cli.per_source, cli.connect_concurrency).await?;
    let probe = cli.server_pid.map(ServerProbe::new).transpose().map_err(LoadError::Setup)?;
    let ctx =
        Ctx { connector: Arc::new(connector), url: urls[0].clone(), urls: urls.join(","), probe, progress: !cli.quiet };
    let report: Report = match cli.scenario {
        Scenario::Idle(args) => scenarios::idle::run(&ctx, args).await?,
        Scenario::Fanout(args) => scenarios::fanout::run(&ctx, args).await?,
        Scenario::Echo(args) => scenarios::echo::run(&ctx, args).await?,
        Scenario::Longpoll(args) => scenarios::longpoll::run(&ctx, args).await?,
        Scenario::Chat(args) => scenarios::chat::run(&ctx, args, None).await?,
        Scenario::Storm(args) => scenarios::chat::run(&ctx, args.chat, Some(args.churn)).await?,
    };
    print!("{}", report.table());
    if let Some(path) = &cli.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| LoadError::Setup(e.to_string()))?;
        std::fs::write(path, json).map_err(|e| LoadError::Setup(format!("{}: {e}", path.display())))?;
    }
    Ok(report.passed)
}
