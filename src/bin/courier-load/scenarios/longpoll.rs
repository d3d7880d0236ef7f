//! `longpoll`: long-poll sessions connect, join a room and go quiet, as phoenix.js's `LongPoll`
//! does on a network without WebSocket. Reports what each session costs the server twice: with
//! no request of its client open (between polls), and with one poll held open per session, which
//! is where an idle phoenix.js client spends its time.
//!
//! HTTP is blocking (ureq) on a thread per held poll, with small stacks; the threads are this
//! tool's cost, not the server's, and the server's RSS is what the report reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::accounts::http_base;
use crate::report::{Errors, Report};
use crate::{Ctx, LoadError};

/// Options of `longpoll`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct Args {
    /// Sessions to open and hold (the server's `longpoll.idle_timeout_ms` must outlast the run).
    #[arg(long, default_value_t = 2000)]
    pub sessions: usize,
    /// Rooms the sessions are spread over (`room:lp-0`, ...), joined as observers.
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Threads opening sessions.
    #[arg(long, default_value_t = 8)]
    pub openers: usize,
    /// Seconds to let the server settle before each memory reading.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
}

/// One open session: its poll URL (connect params and token).
struct Session {
    poll_url: String,
}

/// Runs `longpoll`.
pub async fn run(ctx: &Ctx, args: Args) -> Result<Report, LoadError> {
    let endpoint = format!("{}/socket/longpoll", http_base(&ctx.url)?);
    let errors = Arc::new(Errors::default());
    let server_before = ctx.server_sample()?;
    let started = Instant::now();
    let sessions = open_sessions(&endpoint, &args, &errors).await;
    let open_secs = started.elapsed().as_secs_f64();
    let opened = sessions.len();

    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let quiet = ctx.server_sample()?;

    let stop = Arc::new(AtomicBool::new(false));
    let polls = Arc::new(AtomicU64::new(0));
    let mut holders = Vec::with_capacity(opened);
    for session in sessions {
        let (stop, polls, held_errors) = (Arc::clone(&stop), Arc::clone(&polls), Arc::clone(&errors));
        let spawned = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || hold(&session, &stop, &polls, &held_errors));
        match spawned {
            Ok(handle) => holders.push(handle),
            Err(e) => errors.count(format!("poll thread: {e}")),
        }
    }
    // Every holder's first poll is in, and waiting at the server.
    let deadline = Instant::now() + Duration::from_secs(30);
    while polls.load(Ordering::Relaxed) < holders.len() as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let held = ctx.server_sample()?;
    let server = ctx.server_since(server_before)?;
    stop.store(true, Ordering::Relaxed);
    let holders_left = tokio::task::spawn_blocking(move || {
        holders.into_iter().filter_map(|h| h.join().ok()).filter(|ended| !ended).count()
    })
    .await
    .unwrap_or(0);

    let mut report = Report::new("longpoll", &ctx.url, serde_json::to_value(&args).unwrap_or_default());
    report.duration_secs = open_secs;
    report.rate("sessions_opened", opened as u64);
    report.metric("sessions_held", opened as f64);
    if let (Some(before), Some(quiet), Some(held)) = (server_before, quiet, held) {
        let per = |after: u64| after.saturating_sub(before.rss_kib) as f64 * 1024.0 / opened.max(1) as f64;
        report.metric("server_rss_before_kib", before.rss_kib as f64);
        report.metric("server_rss_quiet_kib", quiet.rss_kib as f64);
        report.metric("server_rss_polled_kib", held.rss_kib as f64);
        report.metric("server_rss_per_quiet_session_bytes", per(quiet.rss_kib));
        report.metric("server_rss_per_polled_session_bytes", per(held.rss_kib));
    }
    report.server = server;
    report.errors(&errors);
    report.check("every session opened", opened == args.sessions, format!("{opened} of {}", args.sessions));
    report.check("every session kept polling", holders_left == 0, format!("{holders_left} lost their session"));
    Ok(report)
}

/// Opens `args.sessions` sessions from `args.openers` threads: connect, join, take the reply.
async fn open_sessions(endpoint: &str, args: &Args, errors: &Arc<Errors>) -> Vec<Session> {
    let openers = args.openers.max(1);
    let mut tasks = Vec::with_capacity(openers);
    for opener in 0..openers {
        let (endpoint, args, errors) = (endpoint.to_owned(), args.clone(), Arc::clone(errors));
        tasks.push(tokio::task::spawn_blocking(move || {
            let agent = ureq::Agent::new_with_defaults();
            (opener..args.sessions)
                .step_by(openers)
                .filter_map(|i| match open_one(&agent, &endpoint, &format!("room:lp-{}", i % args.rooms.max(1))) {
                    Ok(session) => Some(session),
                    Err(e) => {
                        errors.count(format!("open: {e}"));
                        None
                    }
                })
                .collect::<Vec<_>>()
        }));
    }
    let mut sessions = Vec::with_capacity(args.sessions);
    for task in tasks {
        if let Ok(opened) = task.await {
            sessions.extend(opened);
        }
    }
    sessions
}

fn open_one(agent: &ureq::Agent, endpoint: &str, room: &str) -> Result<Session, String> {
    let opened = get(agent, &format!("{endpoint}?vsn=2.0.0"))?;
    let token = match (opened["status"].as_u64(), opened["token"].as_str()) {
        (Some(410), Some(token)) => token.to_owned(),
        _ => return Err(format!("connect answered {opened}")),
    };
    let poll_url = format!("{endpoint}?vsn=2.0.0&token={token}");
    let join = serde_json::json!(["1", "1", room, "phx_join", {"presence": false}]).to_string();
    let posted = agent
        .post(&poll_url)
        .header("content-type", "application/x-ndjson")
        .send(join.as_bytes())
        .map_err(|e| e.to_string())
        .and_then(|mut r| r.body_mut().read_to_string().map_err(|e| e.to_string()))?;
    if !posted.contains("\"status\":200") {
        return Err(format!("join POST answered {posted}"));
    }
    let reply = get(agent, &poll_url)?;
    if reply["status"].as_u64() != Some(200) {
        return Err(format!("join reply poll answered {reply}"));
    }
    Ok(Session { poll_url })
}

fn get(agent: &ureq::Agent, url: &str) -> Result<Value, String> {
    let text = agent
        .get(url)
        .call()
        .map_err(|e| e.to_string())
        .and_then(|mut r| r.body_mut().read_to_string().map_err(|e| e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
}

/// Polls until stopped, as phoenix.js does; false if the session was lost.
fn hold(session: &Session, stop: &AtomicBool, polls: &AtomicU64, errors: &Errors) -> bool {
    let agent = ureq::Agent::new_with_defaults();
    while !stop.load(Ordering::Relaxed) {
        polls.fetch_add(1, Ordering::Relaxed);
        match get(&agent, &session.poll_url) {
            Ok(answer) if matches!(answer["status"].as_u64(), Some(200 | 204)) => {}
            Ok(answer) => {
                errors.count(format!("poll answered status {}", answer["status"]));
                return false;
            }
            Err(e) => {
                errors.count(format!("poll: {e}"));
                return false;
            }
        }
    }
    true
}
