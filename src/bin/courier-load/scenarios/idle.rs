//! `idle`: sockets connect, join a room (and, with `--users`, their `user:` inbox, which tracks
//! presence), then hold with phoenix.js's heartbeat. Reports the connect+join rate and how much
//! server memory each held socket costs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use super::{Stop, close, join_within, observer, open_all};
use crate::accounts::{Account, run_prefix, sign_up};
use crate::conn::{HEARTBEAT_EVERY, Ws, heartbeat, join};
use crate::report::{Errors, Latencies, Report};
use crate::{Ctx, LoadError, now_micros};

/// Options of `idle`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct Args {
    /// Sockets to open and hold.
    #[arg(long, default_value_t = 1000)]
    pub sockets: usize,
    /// Rooms the sockets are spread over (`room:idle-0`, `room:idle-1`, ...).
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Be tracked with presence in the room (by default sockets join as observers).
    #[arg(long)]
    pub room_presence: bool,
    /// Sign up this many users; socket i authenticates as user i % users and also joins its inbox.
    #[arg(long, default_value_t = 0)]
    pub users: usize,
    /// Seconds to hold once every socket is in.
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
    /// Seconds to let the server settle before the memory readings.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
}

/// Runs `idle`.
pub async fn run(ctx: &Ctx, args: Args) -> Result<Report, LoadError> {
    let errors = Arc::new(Errors::default());
    let accounts: Arc<Vec<Account>> =
        Arc::new(if args.users > 0 { sign_up(&ctx.url, &run_prefix(), args.users).await? } else { Vec::new() });
    let server_before = ctx.server_sample()?;
    let join_latency = Arc::new(Latencies::new());
    let started = Instant::now();
    let sockets = open_all(ctx, args.sockets, "connect", &errors, |i| {
        let account = (!accounts.is_empty()).then(|| accounts[i % accounts.len()].clone());
        let query = account.as_ref().map(|a| format!("token={}&device=d{i}", a.token)).unwrap_or_default();
        let (connector, latency) = (ctx.connector_handle(), Arc::clone(&join_latency));
        let (room, tracked) = (format!("room:idle-{}", i % args.rooms.max(1)), args.room_presence);
        async move {
            let begun = now_micros();
            let mut ws = connector.connect(&query).await?;
            let room_params = if tracked { serde_json::json!({}) } else { observer() };
            join(&mut ws, &room, "1", &room_params).await?;
            if let Some(account) = account {
                join(&mut ws, &format!("user:{}", account.eid), "2", &serde_json::json!({})).await?;
            }
            latency.record(i, now_micros().saturating_sub(begun));
            Ok(ws)
        }
    })
    .await;
    let connect_secs = started.elapsed().as_secs_f64();
    let held = sockets.len();

    let frames = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop) = Stop::new();
    let mut tasks = JoinSet::new();
    for (_, ws) in sockets {
        let (stop, frames, errors) = (stop.clone(), Arc::clone(&frames), Arc::clone(&errors));
        tasks.spawn(async move {
            if let Err(e) = hold(ws, &frames, stop).await {
                errors.count(format!("held socket: {}", e.kind()));
            }
        });
    }
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let in_use = ctx.server_sample()?;
    ctx.timed_phase("holding", Duration::from_secs_f64(args.hold), || format!("{held} sockets")).await;
    let server = ctx.server_since(server_before)?;
    let _ = stop_tx.send(true);
    join_within(&mut tasks, Duration::from_secs(10)).await;

    let mut report = Report::new("idle", &ctx.urls, serde_json::to_value(&args).unwrap_or_default());
    report.duration_secs = connect_secs;
    report.rate("sockets_joined", held as u64);
    report.latency("connect_and_join", &join_latency);
    report.metric("sockets_held", held as f64);
    report.metric("frames_received_while_holding", frames.load(Ordering::Relaxed) as f64);
    if let (Some(before), Some(in_use)) = (server_before, in_use) {
        let grown = in_use.rss_kib.saturating_sub(before.rss_kib) as f64 * 1024.0;
        report.metric("server_rss_before_kib", before.rss_kib as f64);
        report.metric("server_rss_held_kib", in_use.rss_kib as f64);
        report.metric("server_rss_per_socket_bytes", grown / held.max(1) as f64);
    }
    report.server = server;
    report.errors(&errors);
    let lost = report.errors.iter().filter(|(k, _)| k.starts_with("held socket")).map(|(_, n)| n).sum::<u64>();
    report.check("every socket joined", held == args.sockets, format!("{held} of {}", args.sockets));
    report.check("every socket stayed up while held", lost == 0, format!("{lost} dropped"));
    Ok(report)
}

/// Reads (and drops) whatever arrives and sends heartbeats until stopped.
async fn hold(mut ws: Ws, frames: &AtomicU64, mut stop: Stop) -> Result<(), LoadError> {
    let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
    beat.tick().await;
    let mut beats = 0u64;
    loop {
        tokio::select! {
            _ = stop.wait() => break,
            _ = beat.tick() => {
                beats += 1;
                ws.send(heartbeat(beats)).await.map_err(|e| LoadError::Protocol(e.to_string()))?;
            }
            next = ws.next() => match next {
                Some(Ok(Message::Close(_))) | None => return Err(LoadError::Closed),
                Some(Ok(_)) => { frames.fetch_add(1, Ordering::Relaxed); }
                Some(Err(e)) => return Err(LoadError::Protocol(e.to_string())),
            },
        }
    }
    close(ws).await;
    Ok(())
}
