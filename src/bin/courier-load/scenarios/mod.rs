//! The scenarios. Each opens its connections, runs its traffic for a while, and returns a
//! [`Report`](crate::report::Report) with its counts, latencies and checks.

pub mod chat;
pub mod echo;
pub mod fanout;
pub mod idle;
pub mod longpoll;

use std::future::Future;
use std::time::Duration;

use futures_util::SinkExt;
use tokio::sync::watch;
use tokio::task::JoinSet;

use std::sync::Arc;

use crate::conn::{Connector, Ws, join};
use crate::report::Errors;
use crate::{Ctx, LoadError};

/// The join payload of a room observer: Courier neither tracks it nor sends it presence, which
/// is what a plain Phoenix room does too (it ignores the key).
pub fn observer() -> serde_json::Value {
    serde_json::json!({"presence": false})
}

/// Connects an anonymous socket and joins `topic` as a room observer.
pub async fn join_as_observer(connector: Arc<Connector>, topic: String) -> Result<Ws, LoadError> {
    let mut ws = connector.connect("").await?;
    join(&mut ws, &topic, "1", &observer()).await?;
    Ok(ws)
}

/// Runs `open(i)` for `0..n` concurrently (the connector bounds the handshakes), counting
/// failures into `errors`; returns the successes with their index, in index order.
pub async fn open_all<T, F, Fut>(ctx: &Ctx, n: usize, what: &str, errors: &Errors, open: F) -> Vec<(usize, T)>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T, LoadError>> + Send + 'static,
{
    let bar = ctx.bar(n as u64, what);
    let mut set = JoinSet::new();
    for i in 0..n {
        let fut = open(i);
        set.spawn(async move { (i, fut.await) });
    }
    let mut opened = Vec::with_capacity(n);
    while let Some(done) = set.join_next().await {
        bar.inc(1);
        match done {
            Ok((i, Ok(t))) => opened.push((i, t)),
            Ok((_, Err(e))) => errors.count(format!("{what}: {}", e.kind())),
            Err(_) => errors.count(format!("{what}: task failed")),
        }
    }
    bar.finish_and_clear();
    opened.sort_by_key(|(i, _)| *i);
    opened
}

/// A stop signal shared by every connection task of a run.
#[derive(Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// A signal and the switch that raises it.
    pub fn new() -> (watch::Sender<bool>, Stop) {
        let (tx, rx) = watch::channel(false);
        (tx, Stop(rx))
    }

    /// Resolves once the run is stopping.
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Whether the run is stopping.
    pub fn raised(&self) -> bool {
        *self.0.borrow()
    }
}

/// Closes a connection politely, not waiting long for a server that is gone.
pub async fn close(mut ws: Ws) {
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
}

/// Waits for tasks to end, giving up on the rest after `grace`.
pub async fn join_within<T: 'static>(set: &mut JoinSet<T>, grace: Duration) -> Vec<T> {
    let mut done = Vec::new();
    let deadline = tokio::time::Instant::now() + grace;
    while let Ok(Some(next)) = tokio::time::timeout_at(deadline, set.join_next()).await {
        if let Ok(value) = next {
            done.push(value);
        }
    }
    set.abort_all();
    done
}

/// `Ws::flush` with errors mapped.
pub async fn flush(ws: &mut Ws) -> Result<(), LoadError> {
    ws.flush().await.map_err(|e| LoadError::Protocol(e.to_string()))
}

/// `Ws::feed` with errors mapped: queued, written on the next flush.
pub async fn feed(ws: &mut Ws, msg: tokio_tungstenite::tungstenite::Message) -> Result<(), LoadError> {
    ws.feed(msg).await.map_err(|e| LoadError::Protocol(e.to_string()))
}
