//! `fanout`: subscribers on one room topic and one publisher pushing an event at a set rate;
//! the room relays it to every other member (Phoenix's `broadcast_from`). Measures deliveries
//! per second, publish→receive latency of each delivery, and publish→last receive per broadcast.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::Message;

use super::{Stop, close, join_as_observer, join_within, open_all};
use crate::conn::{Connector, Frame, HEARTBEAT_EVERY, Ws, heartbeat, text_of};
use crate::report::{Errors, Latencies, Report};
use crate::{Ctx, LoadError, now_micros};

/// The event the publisher pushes.
const EVENT: &str = "bench";

/// Options of `fanout`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct Args {
    /// Subscribers on the topic.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Broadcasts per second.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Bytes of filler in each broadcast.
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// The topic.
    #[arg(long, default_value = "room:fanout")]
    pub topic: String,
    /// The node the publisher connects to (`ws://...`), e.g. one no subscriber is on; else the
    /// next node in turn after the subscribers.
    #[arg(long)]
    pub publisher_url: Option<String>,
    /// Seconds to wait for the last deliveries after publishing stops.
    #[arg(long, default_value_t = 10.0)]
    pub settle: f64,
}

/// Per-broadcast bookkeeping, indexed by sequence number.
struct Shared {
    sent_at: Vec<AtomicU64>,
    received: Vec<AtomicU32>,
    last_received_at: Vec<AtomicU64>,
    deliveries: AtomicU64,
    last_delivery_at: AtomicU64,
    delivery: Latencies,
    errors: Errors,
}

#[derive(Deserialize)]
struct Stamp {
    t: u64,
    s: usize,
}

/// Runs `fanout`.
pub async fn run(ctx: &Ctx, args: Args) -> Result<Report, LoadError> {
    let broadcasts = (args.rate * args.duration).ceil().max(1.0) as usize;
    let shared = Arc::new(Shared {
        sent_at: (0..broadcasts).map(|_| AtomicU64::new(0)).collect(),
        received: (0..broadcasts).map(|_| AtomicU32::new(0)).collect(),
        last_received_at: (0..broadcasts).map(|_| AtomicU64::new(0)).collect(),
        deliveries: AtomicU64::new(0),
        last_delivery_at: AtomicU64::new(0),
        delivery: Latencies::new(),
        errors: Errors::default(),
    });
    let open = |_| join_as_observer(ctx.connector_handle(), args.topic.clone());
    let subscribers = open_all(ctx, args.subscribers, "subscribe", &shared.errors, open).await;
    let joined = subscribers.len();
    let publisher_on = match &args.publisher_url {
        Some(url) => Arc::new(Connector::new(std::slice::from_ref(url), 1, 1).await?),
        None => ctx.connector_handle(),
    };
    let open_publisher = |_| join_as_observer(Arc::clone(&publisher_on), args.topic.clone());
    let Some((_, publisher)) = open_all(ctx, 1, "publisher", &shared.errors, open_publisher).await.pop() else {
        return Err(LoadError::Setup("the publisher could not join".into()));
    };

    let (stop_tx, stop) = Stop::new();
    let mut tasks = JoinSet::new();
    for (i, ws) in subscribers {
        let (shared, stop) = (Arc::clone(&shared), stop.clone());
        tasks.spawn(async move {
            if let Err(e) = subscriber(i, ws, &shared, stop).await {
                shared.errors.count(format!("subscriber: {}", e.kind()));
            }
        });
    }

    let server_start = ctx.server_sample()?;
    let first_publish = now_micros();
    let publishing = tokio::spawn(publish(publisher, args.clone(), broadcasts, Arc::clone(&shared)));
    ctx.timed_phase("fanout", Duration::from_secs_f64(args.duration), || {
        format!("{} deliveries", shared.deliveries.load(Ordering::Relaxed))
    })
    .await;
    let sent = publishing.await.map_err(|e| LoadError::Setup(e.to_string()))?;
    let expected = (sent * joined) as u64;
    let settle_until = Instant::now() + Duration::from_secs_f64(args.settle);
    while shared.deliveries.load(Ordering::Relaxed) < expected && Instant::now() < settle_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let server = ctx.server_since(server_start)?;
    let _ = stop_tx.send(true);
    join_within(&mut tasks, Duration::from_secs(5)).await;

    let deliveries = shared.deliveries.load(Ordering::Relaxed);
    let window_micros = shared.last_delivery_at.load(Ordering::Relaxed).saturating_sub(first_publish).max(1);
    let to_last = Latencies::new();
    let mut complete = 0;
    let mut first_short = None;
    for seq in 0..sent {
        let got = shared.received[seq].load(Ordering::Relaxed) as usize;
        if got == joined {
            complete += 1;
            let at = shared.last_received_at[seq].load(Ordering::Relaxed);
            to_last.record(seq, at.saturating_sub(shared.sent_at[seq].load(Ordering::Relaxed)));
        } else if first_short.is_none() {
            first_short = Some((seq, got));
        }
    }

    let mut report = Report::new("fanout", &ctx.urls, serde_json::to_value(&args).unwrap_or_default());
    report.duration_secs = window_micros as f64 / 1e6;
    report.rate("deliveries", deliveries);
    report.rate("broadcasts", sent as u64);
    report.latency("publish_to_receive", &shared.delivery);
    report.latency("publish_to_last_receive", &to_last);
    report.metric("subscribers", joined as f64);
    report.server = server;
    report.errors(&shared.errors);
    report.check("every subscriber joined", joined == args.subscribers, format!("{joined} of {}", args.subscribers));
    let detail = match first_short {
        None => format!("{complete} broadcasts x {joined} subscribers = {deliveries} deliveries"),
        Some((seq, got)) => format!("{complete} of {sent} complete; broadcast {seq} reached {got} of {joined}"),
    };
    report.check("every broadcast reached every subscriber once", complete == sent && deliveries == expected, detail);
    let disorder = report.errors.get("broadcast out of order").copied().unwrap_or(0);
    report.check("broadcasts arrived in order", disorder == 0, format!("{disorder} out of order"));
    Ok(report)
}

async fn publish(mut ws: Ws, args: Args, broadcasts: usize, shared: Arc<Shared>) -> usize {
    let pad = "x".repeat(args.payload_bytes);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate.max(0.001)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut sent = 0;
    let mut answered = 0;
    'publishing: for seq in 0..broadcasts {
        loop {
            tokio::select! {
                _ = tick.tick() => break,
                // Replies are read so the publisher's socket never backs up.
                next = ws.next() => {
                    if count_reply(next, &mut answered, &shared).is_err() {
                        shared.errors.count("publisher: closed");
                        break 'publishing;
                    }
                }
            }
        }
        let t = now_micros();
        shared.sent_at[seq].store(t, Ordering::Relaxed);
        let text = format!(r#"["1","{}","{}","{EVENT}",{{"t":{t},"s":{seq},"pad":"{pad}"}}]"#, seq + 2, args.topic);
        if ws.send(Message::text(text)).await.is_err() {
            shared.errors.count("publisher: send failed");
            break;
        }
        sent += 1;
    }
    // A push is the server's once it is answered. Closing before that (a backlogged server may
    // not have read the last pushes yet) would lose them with the connection.
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.settle);
    while answered < sent {
        let Ok(next) = tokio::time::timeout_at(deadline, ws.next()).await else { break };
        if count_reply(next, &mut answered, &shared).is_err() {
            break;
        }
    }
    if answered < sent {
        shared.errors.count("publisher: pushes unanswered");
    }
    close(ws).await;
    sent
}

/// Counts one frame the publisher got: every reply answers a push (an error reply is also
/// counted as an error); fails only once the connection is closed.
fn count_reply(
    next: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    answered: &mut usize,
    shared: &Shared,
) -> Result<(), LoadError> {
    let Some(text) = text_of(next)? else { return Ok(()) };
    let Ok(frame) = Frame::parse(&text) else {
        shared.errors.count("publisher: bad frame");
        return Ok(());
    };
    if frame.event() == "phx_reply" {
        *answered += 1;
        match frame.reply() {
            Ok(reply) if reply.is_ok() => {}
            Ok(reply) => shared.errors.count(format!("publisher: push refused: {}", reply.reason())),
            Err(_) => shared.errors.count("publisher: bad reply"),
        }
    }
    Ok(())
}

async fn subscriber(conn: usize, mut ws: Ws, shared: &Shared, mut stop: Stop) -> Result<(), LoadError> {
    let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
    beat.tick().await;
    let mut beats = 0u64;
    let mut last_seq: Option<usize> = None;
    loop {
        let next = tokio::select! {
            _ = stop.wait() => break,
            _ = beat.tick() => {
                beats += 1;
                ws.send(heartbeat(beats)).await.map_err(|e| LoadError::Protocol(e.to_string()))?;
                continue;
            }
            next = ws.next() => next,
        };
        let Some(text) = text_of(next)? else { continue };
        let frame = Frame::parse(text.as_str())?;
        if frame.event() != EVENT {
            continue;
        }
        let now = now_micros();
        let stamp: Stamp =
            serde_json::from_str(frame.4.get()).map_err(|e| LoadError::Protocol(format!("bad broadcast: {e}")))?;
        let (Some(received), Some(last_at)) = (shared.received.get(stamp.s), shared.last_received_at.get(stamp.s))
        else {
            shared.errors.count("broadcast with an unknown sequence number");
            continue;
        };
        if last_seq.is_some_and(|last| stamp.s <= last) {
            shared.errors.count("broadcast out of order");
        }
        last_seq = Some(stamp.s);
        received.fetch_add(1, Ordering::Relaxed);
        last_at.fetch_max(now, Ordering::Relaxed);
        shared.last_delivery_at.fetch_max(now, Ordering::Relaxed);
        shared.deliveries.fetch_add(1, Ordering::Relaxed);
        shared.delivery.record(conn, now.saturating_sub(stamp.t));
    }
    close(ws).await;
    Ok(())
}
