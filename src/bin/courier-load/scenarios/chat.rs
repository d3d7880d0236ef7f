//! `chat` and `storm`: signed-up users, each with several devices on its `user:<eid>` inbox,
//! send each other messages at a set total rate (or as fast as acks come back) and receipts for
//! what they received. Afterwards every device's log is checked: every acked message addressed
//! to the user, or sent by one of the user's other devices, arrived exactly once, and offsets
//! only ever went up. `storm` runs the same traffic while some devices keep dropping their
//! connection and rejoining with `after`, which must leave no gap and no duplicate.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::{FutureExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use super::{Stop, close, feed, flush, join_within, open_all};
use crate::accounts::{Account, run_prefix, sign_up};
use crate::conn::{Connector, Frame, Ws, frame, join, text_of};
use crate::report::{Errors, Latencies, Report};
use crate::{Ctx, LoadError, now_micros};

/// Options of `chat`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct Args {
    /// Users to sign up.
    #[arg(long, default_value_t = 20)]
    pub users: usize,
    /// Devices (sockets) per user.
    #[arg(long, default_value_t = 2)]
    pub devices: usize,
    /// Messages per second from all devices together; 0 sends as fast as acks allow.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Messages awaiting their ack per device, when --rate is 0.
    #[arg(long, default_value_t = 4)]
    pub in_flight: usize,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Bytes of each message's payload (before base64).
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// How often a device sends a `received` receipt for what it got.
    #[arg(long, default_value_t = 250)]
    pub receipt_every_ms: u64,
    /// Seconds to wait for the last acks and deliveries after sending stops.
    #[arg(long, default_value_t = 15.0)]
    pub settle: f64,
}

/// How `storm` disturbs the devices.
#[derive(Debug, Clone, Copy, clap::Args, Serialize)]
pub struct Churn {
    /// Share of devices that keep disconnecting and rejoining.
    #[arg(long = "churn", default_value_t = 0.25)]
    pub fraction: f64,
    /// Mean milliseconds a churning device stays connected each time.
    #[arg(long, default_value_t = 1000)]
    pub connected_ms: u64,
}

/// Options of `storm`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct StormArgs {
    /// The chat traffic.
    #[command(flatten)]
    #[serde(flatten)]
    pub chat: Args,
    /// The disconnects.
    #[command(flatten)]
    #[serde(flatten)]
    pub churn: Churn,
}

/// Counters every device adds to.
struct Shared {
    accounts: Vec<Account>,
    args: Args,
    sent: AtomicU64,
    acked: AtomicU64,
    refused: AtomicU64,
    unanswered: AtomicU64,
    deliveries: AtomicU64,
    receipts: AtomicU64,
    receipt_events: AtomicU64,
    reconnects: AtomicU64,
    ack: Latencies,
    delivery: Latencies,
    errors: Errors,
}

impl Shared {
    fn answered(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
            + self.refused.load(Ordering::Relaxed)
            + self.unanswered.load(Ordering::Relaxed)
    }
}

/// What one device sent and saw; checked once the run is over.
#[derive(Default)]
struct DeviceLog {
    device: usize,
    /// Keys of messages this device sent, with their recipient user.
    sent: Vec<(u64, usize)>,
    /// Keys of its messages that were acked ok.
    acked: Vec<u64>,
    /// Keys of the messages it received, in arrival order.
    seen: Vec<u64>,
    /// Deliveries whose offset was not above the one before.
    disorder: u64,
    first_disorder: Option<String>,
}

enum Pending {
    Message { key: u64, sent_at: u64 },
    Receipt,
}

/// A message id carries its sender device and sequence number, so any device can check it.
fn message_key(device: usize, seq: u64) -> (u64, String) {
    (((device as u64) << 32) | seq, format!("m{device}-{seq}"))
}

fn parse_key(id: &str) -> Option<u64> {
    let (device, seq) = id.strip_prefix('m')?.split_once('-')?;
    Some((device.parse::<u64>().ok()? << 32) | seq.parse::<u64>().ok()?)
}

fn key_device(key: u64) -> usize {
    (key >> 32) as usize
}

#[derive(Deserialize)]
struct Delivered {
    id: String,
    signal_offset: serde_json::Value,
    payload: String,
}

impl Delivered {
    /// `int64` offsets may be JSON numbers or strings under the proto3 JSON mapping.
    fn offset(&self) -> Option<i64> {
        match &self.signal_offset {
            serde_json::Value::Number(n) => n.as_i64(),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// The send time the sender wrote at the start of the payload.
    fn sent_at(&self) -> Option<u64> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(&self.payload).ok()?;
        let text = std::str::from_utf8(&bytes).ok()?;
        text.split(':').next()?.parse().ok()
    }
}

/// Runs `chat` (no `churn`) or `storm`.
pub async fn run(ctx: &Ctx, args: Args, churn: Option<Churn>) -> Result<Report, LoadError> {
    if args.users < 2 || args.devices == 0 {
        return Err(LoadError::Setup("chat needs at least 2 users and 1 device each".into()));
    }
    let accounts = sign_up(&ctx.url, &run_prefix(), args.users).await?;
    let shared = Arc::new(Shared {
        accounts,
        args: args.clone(),
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        unanswered: AtomicU64::new(0),
        deliveries: AtomicU64::new(0),
        receipts: AtomicU64::new(0),
        receipt_events: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        ack: Latencies::new(),
        delivery: Latencies::new(),
        errors: Errors::default(),
    });
    let total_devices = args.users * args.devices;
    let sockets = open_all(ctx, total_devices, "connect", &shared.errors, |device| {
        let account = shared.accounts[device / args.devices].clone();
        open_device(ctx.connector_handle(), account, device, args.devices, None)
    })
    .await;
    let joined = sockets.len();

    let (stop_sending_tx, stop_sending) = Stop::new();
    let (stop_all_tx, stop_all) = Stop::new();
    let churners = churn.map_or(0, |c| (c.fraction.clamp(0.0, 1.0) * total_devices as f64).round() as usize);
    let server_start = ctx.server_sample()?;
    let mut tasks = JoinSet::new();
    for (device, ws) in sockets {
        let churn = churn.filter(|_| device < churners);
        let mut run = DeviceRun::new(device, Arc::clone(&shared), churn, stop_sending.clone(), stop_all.clone());
        let connector = ctx.connector_handle();
        tasks.spawn(async move { run.run(ws, connector).await });
    }

    let started = Instant::now();
    ctx.timed_phase(if churn.is_some() { "storm" } else { "chat" }, Duration::from_secs_f64(args.duration), || {
        format!("{} acked", shared.acked.load(Ordering::Relaxed))
    })
    .await;
    let _ = stop_sending_tx.send(true);
    let send_secs = started.elapsed().as_secs_f64();
    let acked_in_window = shared.acked.load(Ordering::Relaxed);
    let server = ctx.server_since(server_start)?;
    settle(&shared, Duration::from_secs_f64(args.settle)).await;
    let _ = stop_all_tx.send(true);
    let logs = join_within(&mut tasks, Duration::from_secs(10)).await;

    let mut report = Report::new(
        if churn.is_some() { "storm" } else { "chat" },
        &ctx.urls,
        serde_json::json!({"chat": args, "churn": churn}),
    );
    report.duration_secs = send_secs;
    report.rate("messages_acked", acked_in_window);
    report.rate("messages_sent", shared.sent.load(Ordering::Relaxed));
    report.rate("deliveries", shared.deliveries.load(Ordering::Relaxed));
    report.rate("receipts_acked", shared.receipts.load(Ordering::Relaxed));
    report.rate("receipt_events", shared.receipt_events.load(Ordering::Relaxed));
    report.latency("ack", &shared.ack);
    report.latency("delivery", &shared.delivery);
    report.metric("devices", joined as f64);
    report.metric("churning_devices", churners as f64);
    report.metric("reconnects", shared.reconnects.load(Ordering::Relaxed) as f64);
    report.metric("unanswered_at_disconnect", shared.unanswered.load(Ordering::Relaxed) as f64);
    report.server = server;
    report.errors(&shared.errors);
    report.check("every device joined", joined == total_devices, format!("{joined} of {total_devices}"));
    report.check("every device's task finished", logs.len() == joined, format!("{} of {joined}", logs.len()));
    let (sent, acked, refused) = (
        shared.sent.load(Ordering::Relaxed),
        shared.acked.load(Ordering::Relaxed),
        shared.refused.load(Ordering::Relaxed),
    );
    if churn.is_none() {
        report.check("every message acked ok", sent == acked, format!("{sent} sent, {acked} acked, {refused} refused"));
    }
    check_logs(&mut report, &logs, args.devices, churn.is_some());
    Ok(report)
}

/// Waits until every sent message is answered and deliveries stop, or `limit` passes.
async fn settle(shared: &Shared, limit: Duration) {
    let until = Instant::now() + limit;
    let mut last = (u64::MAX, u64::MAX);
    let mut quiet_since = Instant::now();
    while Instant::now() < until {
        let now = (shared.answered(), shared.deliveries.load(Ordering::Relaxed));
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if now.0 >= shared.sent.load(Ordering::Relaxed) && quiet_since.elapsed() >= Duration::from_millis(500) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The delivery checks over every device's log.
fn check_logs(report: &mut Report, logs: &[DeviceLog], devices_per_user: usize, churned: bool) {
    let user_of = |device: usize| device / devices_per_user;
    let mut recipient = HashMap::new();
    for log in logs {
        recipient.extend(log.sent.iter().copied());
    }
    // Acked messages by the user whose log they must appear in: the recipient and the sender.
    let mut to_user: HashMap<usize, Vec<u64>> = HashMap::new();
    let mut from_user: HashMap<usize, Vec<u64>> = HashMap::new();
    for log in logs {
        for &key in &log.acked {
            if let Some(&to) = recipient.get(&key) {
                to_user.entry(to).or_default().push(key);
                from_user.entry(user_of(log.device)).or_default().push(key);
            }
        }
    }
    let (mut expected, mut missing, mut duplicates, mut unexpected, mut disorder) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut first_missing, mut first_unexpected, mut first_disorder) = (None, None, None);
    for log in logs {
        let user = user_of(log.device);
        let seen: HashSet<u64> = log.seen.iter().copied().collect();
        duplicates += (log.seen.len() - seen.len()) as u64;
        disorder += log.disorder;
        if first_disorder.is_none() {
            first_disorder.clone_from(&log.first_disorder);
        }
        let wanted = to_user
            .get(&user)
            .into_iter()
            .flatten()
            .chain(from_user.get(&user).into_iter().flatten().filter(|&&key| key_device(key) != log.device));
        for &key in wanted {
            expected += 1;
            if !seen.contains(&key) {
                missing += 1;
                first_missing
                    .get_or_insert_with(|| format!("device {} lacks m{}-{}", log.device, key_device(key), key as u32));
            }
        }
        for &key in &seen {
            let from = key_device(key);
            let belongs = recipient.get(&key).is_some_and(|&to| to == user || user_of(from) == user);
            // Its own messages reach a device only through a catch-up after a reconnect.
            let own_echo = from == log.device && !churned;
            if !belongs || own_echo {
                unexpected += 1;
                first_unexpected.get_or_insert_with(|| format!("device {} got m{}-{}", log.device, from, key as u32));
            }
        }
    }
    let detail = |n: u64, first: Option<String>| match first {
        Some(example) => format!("{n} (first: {example})"),
        None => n.to_string(),
    };
    report.check(
        "every acked message reached every device of both users",
        missing == 0 && expected > 0,
        format!("{expected} deliveries expected, missing {}", detail(missing, first_missing)),
    );
    report.check("no message delivered twice to a device", duplicates == 0, format!("{duplicates} duplicates"));
    report.check("offsets only go up on every device", disorder == 0, detail(disorder, first_disorder));
    report.check("devices got only their user's messages", unexpected == 0, detail(unexpected, first_unexpected));
}

/// Connects device `device` of the run (`devices` per user) for `account` and joins its inbox,
/// after `after` when resuming. The run's device number picks the node, so a user's devices sit
/// on different nodes (when there are as many), and a device rejoins the node it left.
async fn open_device(
    connector: Arc<Connector>,
    account: Account,
    device: usize,
    devices: usize,
    after: Option<i64>,
) -> Result<Ws, LoadError> {
    let device_no = device % devices.max(1);
    let query = format!("token={}&device=d{device_no}", account.token);
    let mut ws = connector.connect_on(device, &query).await?;
    let params = match after {
        Some(after) => serde_json::json!({ "after": after }),
        None => serde_json::json!({}),
    };
    join(&mut ws, &format!("user:{}", account.eid), "1", &params).await?;
    Ok(ws)
}

/// One device for the whole run, across reconnects.
struct DeviceRun {
    device: usize,
    user: usize,
    topic: String,
    shared: Arc<Shared>,
    churn: Option<Churn>,
    stop_sending: Stop,
    stop_all: Stop,
    log: DeviceLog,
    pending: HashMap<u64, Pending>,
    in_flight: usize,
    next_ref: u64,
    seq: u64,
    last_offset: i64,
    receipted: i64,
    rng: StdRng,
    padding: String,
}

enum Ended {
    Stopped,
    Dropped,
}

impl DeviceRun {
    fn new(device: usize, shared: Arc<Shared>, churn: Option<Churn>, stop_sending: Stop, stop_all: Stop) -> Self {
        let user = device / shared.args.devices;
        let topic = format!("user:{}", shared.accounts[user].eid);
        let padding = "x".repeat(shared.args.payload_bytes.saturating_sub(16));
        DeviceRun {
            device,
            user,
            topic,
            shared,
            churn,
            stop_sending,
            stop_all,
            log: DeviceLog { device, ..DeviceLog::default() },
            pending: HashMap::new(),
            in_flight: 0,
            next_ref: 1,
            seq: 0,
            last_offset: 0,
            receipted: 0,
            rng: StdRng::from_rng(&mut rand::rng()),
            padding,
        }
    }

    async fn run(&mut self, mut ws: Ws, connector: Arc<Connector>) -> DeviceLog {
        loop {
            let ended = match self.connected(&mut ws).await {
                Ok(ended) => ended,
                Err(e) => {
                    if !self.stop_all.raised() {
                        self.shared.errors.count(format!("device socket: {}", e.kind()));
                    }
                    Ended::Dropped
                }
            };
            let lost = self.pending.drain().filter(|(_, p)| matches!(p, Pending::Message { .. })).count();
            self.shared.unanswered.fetch_add(lost as u64, Ordering::Relaxed);
            self.in_flight = 0;
            match ended {
                Ended::Stopped => {
                    close(ws).await;
                    break;
                }
                Ended::Dropped if self.stop_all.raised() => break,
                Ended::Dropped => {}
            }
            // Half the churn closes politely, half vanishes as a lost network would.
            if self.rng.random_bool(0.5) {
                close(ws).await;
            } else {
                drop(ws);
            }
            match self.rejoin(&connector).await {
                Some(next) => ws = next,
                None => break,
            }
        }
        std::mem::take(&mut self.log)
    }

    /// Reconnects, resuming after the last offset seen; `None` once the run is over.
    async fn rejoin(&mut self, connector: &Arc<Connector>) -> Option<Ws> {
        let account = self.shared.accounts[self.user].clone();
        let (device, devices) = (self.device, self.shared.args.devices);
        loop {
            if self.stop_all.raised() {
                return None;
            }
            let opening = open_device(Arc::clone(connector), account.clone(), device, devices, Some(self.last_offset));
            match opening.await {
                Ok(ws) => {
                    self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
                    return Some(ws);
                }
                Err(e) => {
                    self.shared.errors.count(format!("rejoin: {}", e.kind()));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Runs one connection until the run stops or the connection ends.
    async fn connected(&mut self, ws: &mut Ws) -> Result<Ended, LoadError> {
        let args = self.shared.args.clone();
        let total_devices = (args.users * args.devices) as f64;
        let open_loop = args.rate > 0.0;
        let period = Duration::from_secs_f64(if open_loop { total_devices / args.rate } else { 3600.0 });
        let first_send = tokio::time::Instant::now() + period.mul_f64(self.rng.random::<f64>());
        let mut send_tick = tokio::time::interval_at(first_send, period);
        send_tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut receipt_tick = tokio::time::interval(Duration::from_millis(args.receipt_every_ms.max(1)));
        let churn_at = self.churn.map(|c| {
            let ms = c.connected_ms as f64 * self.rng.random_range(0.5..1.5);
            tokio::time::Instant::now() + Duration::from_millis(ms as u64)
        });
        if !open_loop {
            while self.in_flight < args.in_flight.max(1) && !self.stop_sending.raised() {
                self.send_message(ws).await?;
            }
            flush(ws).await?;
        }
        loop {
            let next = tokio::select! {
                _ = self.stop_all.wait() => return Ok(Ended::Stopped),
                _ = send_tick.tick(), if open_loop && !self.stop_sending.raised() => {
                    self.send_message(ws).await?;
                    flush(ws).await?;
                    continue;
                }
                _ = receipt_tick.tick() => {
                    self.send_receipt(ws).await?;
                    continue;
                }
                _ = sleep_until(churn_at), if churn_at.is_some() && !self.stop_sending.raised() => {
                    return Ok(Ended::Dropped);
                }
                next = ws.next() => next,
            };
            let mut next = next;
            loop {
                match text_of(next) {
                    Ok(Some(text)) if !self.on_frame(ws, text.as_str(), open_loop).await? => {
                        return Ok(Ended::Dropped);
                    }
                    Ok(_) => {}
                    Err(LoadError::Closed) => return Ok(Ended::Dropped),
                    Err(e) => return Err(e),
                }
                match ws.next().now_or_never() {
                    Some(more) => next = more,
                    None => break,
                }
            }
            flush(ws).await?;
        }
    }

    /// Handles one frame; false when the channel was closed under the device.
    async fn on_frame(&mut self, ws: &mut Ws, text: &str, open_loop: bool) -> Result<bool, LoadError> {
        let frame = Frame::parse(text)?;
        match frame.event() {
            "phx_reply" => {
                let Some(pending) = frame.msg_ref().and_then(|r| r.parse().ok()).and_then(|r| self.pending.remove(&r))
                else {
                    return Ok(true);
                };
                let reply = frame.reply()?;
                match pending {
                    Pending::Message { key, sent_at } => {
                        self.in_flight -= 1;
                        if reply.is_ok() {
                            self.shared.ack.record(self.device, now_micros().saturating_sub(sent_at));
                            self.shared.acked.fetch_add(1, Ordering::Relaxed);
                            self.log.acked.push(key);
                        } else {
                            self.shared.refused.fetch_add(1, Ordering::Relaxed);
                            self.shared.errors.count(format!("message refused: {}", reply.reason()));
                        }
                        if !open_loop && !self.stop_sending.raised() {
                            self.send_message(ws).await?;
                        }
                    }
                    Pending::Receipt if reply.is_ok() => {
                        self.shared.receipts.fetch_add(1, Ordering::Relaxed);
                    }
                    Pending::Receipt => self.shared.errors.count(format!("receipt refused: {}", reply.reason())),
                }
            }
            "message" => {
                let delivered: Delivered = serde_json::from_str(frame.4.get())
                    .map_err(|e| LoadError::Protocol(format!("bad message event: {e}")))?;
                self.on_message(&delivered);
            }
            "receipt" => {
                self.shared.receipt_events.fetch_add(1, Ordering::Relaxed);
            }
            "phx_error" | "phx_close" => {
                self.shared.errors.count(format!("channel ended: {}", frame.event()));
                return Ok(false);
            }
            _ => {}
        }
        Ok(true)
    }

    fn on_message(&mut self, delivered: &Delivered) {
        let Some(key) = parse_key(&delivered.id) else {
            self.shared.errors.count("message with a foreign id");
            return;
        };
        let Some(offset) = delivered.offset() else {
            self.shared.errors.count("message without signal_offset");
            return;
        };
        if offset <= self.last_offset {
            self.log.disorder += 1;
            self.log.first_disorder.get_or_insert_with(|| {
                format!("device {} got offset {offset} after {}", self.device, self.last_offset)
            });
        } else {
            self.last_offset = offset;
        }
        self.log.seen.push(key);
        self.shared.deliveries.fetch_add(1, Ordering::Relaxed);
        if let Some(sent_at) = delivered.sent_at() {
            self.shared.delivery.record(self.device, now_micros().saturating_sub(sent_at));
        }
    }

    async fn send_message(&mut self, ws: &mut Ws) -> Result<(), LoadError> {
        let users = self.shared.accounts.len();
        let pick = self.rng.random_range(0..users - 1);
        let to = if pick >= self.user { pick + 1 } else { pick };
        self.seq += 1;
        let (key, id) = message_key(self.device, self.seq);
        let body = format!("{}:{}", now_micros(), self.padding);
        let payload = serde_json::json!({
            "id": id,
            "to": {"eid": self.shared.accounts[to].eid},
            "payload": base64::engine::general_purpose::STANDARD.encode(body),
        });
        let msg_ref = self.take_ref();
        feed(ws, frame(Some("1"), Some(&msg_ref.to_string()), &self.topic, "message", &payload)).await?;
        self.pending.insert(msg_ref, Pending::Message { key, sent_at: now_micros() });
        self.in_flight += 1;
        self.log.sent.push((key, to));
        self.shared.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn send_receipt(&mut self, ws: &mut Ws) -> Result<(), LoadError> {
        if self.last_offset <= self.receipted {
            return Ok(());
        }
        self.receipted = self.last_offset;
        let msg_ref = self.take_ref();
        let payload = serde_json::json!({"up_to": self.receipted, "state": "received"});
        feed(ws, frame(Some("1"), Some(&msg_ref.to_string()), &self.topic, "receipt", &payload)).await?;
        self.pending.insert(msg_ref, Pending::Receipt);
        flush(ws).await
    }

    fn take_ref(&mut self) -> u64 {
        self.next_ref += 1;
        self.next_ref
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_carry_device_and_sequence() {
        let (key, id) = message_key(17, 42);
        assert_eq!(id, "m17-42");
        assert_eq!(parse_key(&id), Some(key));
        assert_eq!(key_device(key), 17);
        assert_eq!(parse_key("x17-42"), None);
        assert_eq!(parse_key("m17"), None);
    }

    fn log(device: usize, sent: &[(u64, usize)], seen: &[u64]) -> DeviceLog {
        DeviceLog {
            device,
            sent: sent.to_vec(),
            acked: sent.iter().map(|(k, _)| *k).collect(),
            seen: seen.to_vec(),
            ..DeviceLog::default()
        }
    }

    #[test]
    fn the_checks_find_a_missing_and_a_duplicate_delivery() {
        // Two users with two devices each: devices 0, 1 are user 0; 2, 3 are user 1.
        let (a, _) = message_key(0, 1);
        let good = [log(0, &[(a, 1)], &[]), log(1, &[], &[a]), log(2, &[], &[a]), log(3, &[], &[a])];
        let mut report = Report::new("chat", "ws://x", serde_json::json!({}));
        check_logs(&mut report, &good, 2, false);
        assert!(report.passed, "{}", report.table());

        let bad = [log(0, &[(a, 1)], &[]), log(1, &[], &[a]), log(2, &[], &[a, a]), log(3, &[], &[])];
        let mut report = Report::new("chat", "ws://x", serde_json::json!({}));
        check_logs(&mut report, &bad, 2, false);
        let failed: Vec<&str> = report.checks.iter().filter(|c| !c.passed).map(|c| c.name.as_str()).collect();
        assert_eq!(
            failed,
            ["every acked message reached every device of both users", "no message delivered twice to a device"]
        );
    }

    #[test]
    fn an_echo_to_the_sender_is_unexpected_unless_it_reconnected() {
        let (a, _) = message_key(0, 1);
        let logs = [log(0, &[(a, 1)], &[a]), log(1, &[], &[a]), log(2, &[], &[a]), log(3, &[], &[a])];
        let mut report = Report::new("chat", "ws://x", serde_json::json!({}));
        check_logs(&mut report, &logs, 2, false);
        assert!(!report.passed);
        let mut report = Report::new("storm", "ws://x", serde_json::json!({}));
        check_logs(&mut report, &logs, 2, true);
        assert!(report.passed, "{}", report.table());
    }
}
