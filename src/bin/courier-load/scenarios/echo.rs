//! `echo`: sockets push `ping` on a room and await the replies, keeping several in flight each.
//! Plain Phoenix protocol, so it runs against any server whose room channel replies to `ping`
//! with its payload (Phoenix's generated channel does).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use super::{Stop, close, feed, flush, join_as_observer, join_within, open_all};
use crate::conn::{Frame, Ws, text_of};
use crate::report::{Errors, Latencies, Report};
use crate::{Ctx, LoadError, now_micros};

/// Options of `echo`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct Args {
    /// Sockets.
    #[arg(long, default_value_t = 100)]
    pub sockets: usize,
    /// Pings in flight per socket.
    #[arg(long, default_value_t = 16)]
    pub in_flight: usize,
    /// Seconds of traffic.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Bytes of filler in each ping's payload.
    #[arg(long, default_value_t = 32)]
    pub payload_bytes: usize,
    /// The topic every socket joins.
    #[arg(long, default_value = "room:echo")]
    pub topic: String,
}

struct Shared {
    round_trips: AtomicU64,
    latency: Latencies,
    errors: Errors,
}

/// Runs `echo`.
pub async fn run(ctx: &Ctx, args: Args) -> Result<Report, LoadError> {
    let shared =
        Arc::new(Shared { round_trips: AtomicU64::new(0), latency: Latencies::new(), errors: Errors::default() });
    let sockets = open_all(ctx, args.sockets, "connect", &shared.errors, |_| {
        join_as_observer(ctx.connector_handle(), args.topic.clone())
    })
    .await;

    let server_start = ctx.server_sample()?;
    let (stop_tx, stop) = Stop::new();
    let ping_body: Arc<str> = serde_json::json!({"body": "x".repeat(args.payload_bytes)}).to_string().into();
    let mut tasks = JoinSet::new();
    for (i, ws) in sockets {
        let (shared, stop, topic, body) =
            (Arc::clone(&shared), stop.clone(), args.topic.clone(), Arc::clone(&ping_body));
        let in_flight = args.in_flight.max(1);
        tasks.spawn(async move {
            if let Err(e) = pinger(i, ws, &topic, &body, in_flight, &shared, stop).await {
                shared.errors.count(format!("socket: {}", e.kind()));
            }
        });
    }
    let started = Instant::now();
    let duration = Duration::from_secs_f64(args.duration);
    ctx.timed_phase("echo", duration, || format!("{} round trips", shared.round_trips.load(Ordering::Relaxed))).await;
    let _ = stop_tx.send(true);
    let elapsed = started.elapsed().as_secs_f64();
    let round_trips = shared.round_trips.load(Ordering::Relaxed);
    let server = ctx.server_since(server_start)?;
    join_within(&mut tasks, Duration::from_secs(5)).await;

    let mut report = Report::new("echo", &ctx.urls, serde_json::to_value(&args).unwrap_or_default());
    report.duration_secs = elapsed;
    report.rate("round_trips", round_trips);
    report.latency("round_trip", &shared.latency);
    report.metric("sockets", args.sockets as f64);
    report.server = server;
    report.errors(&shared.errors);
    report.check("every socket joined", shared.errors.total() == 0, format!("{} errors", shared.errors.total()));
    report.check("round trips happened", round_trips > 0, format!("{round_trips} round trips"));
    Ok(report)
}

/// Keeps `in_flight` pings outstanding until stopped; replies come back in order on one socket.
async fn pinger(
    conn: usize,
    mut ws: Ws,
    topic: &str,
    body: &str,
    in_flight: usize,
    shared: &Shared,
    mut stop: Stop,
) -> Result<(), LoadError> {
    let mut next_ref: u64 = 2;
    let mut pending: VecDeque<(u64, u64)> = VecDeque::with_capacity(in_flight);
    let ping = |msg_ref: u64| Message::text(format!(r#"["1","{msg_ref}","{topic}","ping",{body}]"#));
    for _ in 0..in_flight {
        feed(&mut ws, ping(next_ref)).await?;
        pending.push_back((next_ref, now_micros()));
        next_ref += 1;
    }
    flush(&mut ws).await?;
    loop {
        let first = tokio::select! {
            _ = stop.wait() => break,
            next = ws.next() => next,
        };
        // Everything already read is answered before one flush, as a real client batches.
        let mut next = first;
        loop {
            if let Some(text) = text_of(next)? {
                let frame = Frame::parse(text.as_str())?;
                if frame.event() == "phx_reply" {
                    let msg_ref = frame.msg_ref().and_then(|r| r.parse::<u64>().ok());
                    let matched = pending.iter().position(|(r, _)| Some(*r) == msg_ref);
                    match matched {
                        None => shared.errors.count("reply to an unknown ref"),
                        Some(at) => {
                            if at != 0 {
                                shared.errors.count("reply out of order");
                            }
                            let (_, sent) = pending.remove(at).unwrap_or_default();
                            match frame.reply()? {
                                reply if reply.is_ok() => {
                                    shared.latency.record(conn, now_micros().saturating_sub(sent));
                                    if !stop.raised() {
                                        shared.round_trips.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                                reply => shared.errors.count(format!("error reply: {}", reply.reason())),
                            }
                        }
                    }
                    if matched.is_some() && !stop.raised() {
                        feed(&mut ws, ping(next_ref)).await?;
                        pending.push_back((next_ref, now_micros()));
                        next_ref += 1;
                    }
                }
            }
            match ws.next().now_or_never() {
                Some(more) => next = more,
                None => break,
            }
        }
        flush(&mut ws).await?;
    }
    close(ws).await;
    Ok(())
}
