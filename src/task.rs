//! Queue workers the server stops at shutdown: a task that drains a bounded queue in batches
//! and, once told to stop, refuses new work, finishes what is already queued, then ends. The
//! log writer and the last-seen writer run on it, so shutdown loses none of their queued writes.
//! Actors that shutdown ends take the one [`Stop`] message.

use std::future::Future;
use std::sync::Mutex;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Asks an actor to end (at shutdown); each actor's handler sends what it still holds first.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Stop;

/// The batches of one queue, as its worker reads them.
pub struct Batches<T> {
    queue: mpsc::Receiver<T>,
    stop: watch::Receiver<bool>,
    stopping: bool,
}

impl<T> Batches<T> {
    /// Waits for up to `max` queued items and appends them to `batch`; 0 once the queue is
    /// stopped (or every sender is gone) and nothing is left in it.
    pub async fn next(&mut self, batch: &mut Vec<T>, max: usize) -> usize {
        loop {
            tokio::select! {
                taken = self.queue.recv_many(batch, max) => return taken,
                // A dropped handle counts as a stop too: nobody could stop the worker any more.
                _ = self.stop.changed(), if !self.stopping => {
                    self.stopping = true;
                    // Closed, not dropped: senders are refused from now on and what is queued
                    // still drains.
                    self.queue.close();
                }
            }
        }
    }
}

/// The handle that stops a worker.
pub struct Worker {
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
    /// Set once the task has returned, so `running` needs no runtime.
    done: watch::Receiver<bool>,
}

impl Worker {
    /// Spawns `run` on the current runtime over the batches of `queue`.
    pub fn spawn<T, F, Fut>(queue: mpsc::Receiver<T>, run: F) -> Worker
    where
        T: Send + 'static,
        F: FnOnce(Batches<T>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (stop, stop_rx) = watch::channel(false);
        let (done_tx, done) = watch::channel(false);
        let work = run(Batches { queue, stop: stop_rx, stopping: false });
        let task = tokio::spawn(async move {
            work.await;
            let _ = done_tx.send(true);
        });
        Worker { stop, task: Mutex::new(Some(task)), done }
    }

    /// Stops taking work, lets the worker finish what is queued, and waits until it has.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().map(|mut task| task.take()).unwrap_or_default();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            tracing::warn!(error = %e, "a queue worker failed before it stopped");
        }
    }

    /// Whether the worker's task has not returned yet.
    pub fn running(&self) -> bool {
        !*self.done.borrow()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn stopping_drains_what_is_queued_then_refuses_new_work() {
        let (tx, rx) = mpsc::channel::<usize>(64);
        let seen = Arc::new(AtomicUsize::new(0));
        let (gate_tx, gate_rx) = tokio::sync::oneshot::channel::<()>();
        let counted = Arc::clone(&seen);
        let worker = Worker::spawn(rx, move |mut batches| async move {
            // Held until the queue is full and the stop requested, so the drain is what counts them.
            let _ = gate_rx.await;
            let mut batch = Vec::new();
            while batches.next(&mut batch, 4).await > 0 {
                counted.fetch_add(batch.drain(..).count(), Ordering::SeqCst);
            }
        });
        for n in 0..10 {
            tx.try_send(n).expect("room in the queue");
        }
        assert!(worker.running());
        let stopping = worker.stop();
        let _ = gate_tx.send(());
        stopping.await;
        assert_eq!(seen.load(Ordering::SeqCst), 10, "every queued item was handled");
        assert!(!worker.running());
        assert!(tx.try_send(11).is_err(), "a stopped queue takes nothing more");
    }
}
