//! The password-hashing gate: at most N argon2 computations at once (N = cores by default), on
//! the blocking pool, with a bounded queue and a deadline for the callers waiting their turn.
//!
//! Argon2 is slow and memory-hard by design, so a flood of signups or wrong-password sign-ins
//! would otherwise take every core and `argon2_memory_kib` per request. Here a request that
//! cannot get a slot in time is refused as [`AccountError::Busy`] instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::AccountError;

/// Counters of the gate since start, for tests and operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HashingStats {
    /// Hashes running now.
    pub running: usize,
    /// The most hashes that ever ran at once.
    pub peak: usize,
    /// Requests waiting for a slot now.
    pub waiting: usize,
    /// Requests refused as busy (queue full or deadline passed).
    pub refused: u64,
    /// Hashes completed.
    pub completed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    running: AtomicUsize,
    peak: AtomicUsize,
    waiting: AtomicUsize,
    refused: AtomicU64,
    completed: AtomicU64,
}

/// Admits password hashing work; cheap to share behind the accounts service.
#[derive(Debug)]
pub struct HashGate {
    slots: Arc<Semaphore>,
    max_waiting: usize,
    deadline: Duration,
    counters: Arc<Counters>,
}

/// Releases a waiter's place in the queue however its wait ends (slot, deadline, or the
/// caller's future dropped by a disconnecting client).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl HashGate {
    /// A gate of `slots` concurrent hashes, `max_waiting` queued callers who wait up to `deadline`.
    pub fn new(slots: usize, max_waiting: usize, deadline: Duration) -> HashGate {
        HashGate {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            max_waiting,
            deadline,
            counters: Arc::new(Counters::default()),
        }
    }

    /// Runs `f` on the blocking pool once a slot is free; `Busy` when none frees up in time.
    pub async fn run<T, F>(&self, f: F) -> Result<T, AccountError>
    where
        F: FnOnce() -> Result<T, AccountError> + Send + 'static,
        T: Send + 'static,
    {
        let permit = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => self.wait_for_slot().await?,
        };
        let counters = Arc::clone(&self.counters);
        // The permit moves into the blocking task: if the caller goes away mid-hash the work
        // still finishes on its thread, and the slot stays taken until it has.
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let now = counters.running.fetch_add(1, Ordering::AcqRel) + 1;
            counters.peak.fetch_max(now, Ordering::AcqRel);
            let result = f();
            counters.running.fetch_sub(1, Ordering::AcqRel);
            counters.completed.fetch_add(1, Ordering::Relaxed);
            result
        });
        task.await.map_err(|e| AccountError::Hashing(format!("hashing task failed: {e}")))?
    }

    async fn wait_for_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, AccountError> {
        let waiting = &self.counters.waiting;
        if waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(self.refuse());
        }
        let _place = Waiting(waiting);
        match tokio::time::timeout(self.deadline, Arc::clone(&self.slots).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; a closed one could not hash either.
            Ok(Err(_)) | Err(_) => Err(self.refuse()),
        }
    }

    fn refuse(&self) -> AccountError {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        AccountError::Busy
    }

    /// The counters now.
    pub fn stats(&self) -> HashingStats {
        let c = &self.counters;
        HashingStats {
            running: c.running.load(Ordering::Acquire),
            peak: c.peak.load(Ordering::Acquire),
            waiting: c.waiting.load(Ordering::Acquire),
            refused: c.refused.load(Ordering::Relaxed),
            completed: c.completed.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::mpsc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_runs_more_than_its_slots_and_refuses_past_the_queue() {
        let gate = Arc::new(HashGate::new(2, 3, Duration::from_secs(30)));
        // Each job blocks until released, so the gate's state is deterministic.
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
        let mut jobs = Vec::new();
        for _ in 0..5 {
            let (gate, rx) = (Arc::clone(&gate), Arc::clone(&release_rx));
            jobs.push(tokio::spawn(async move {
                gate.run(move || {
                    let _ = rx.lock().map(|rx| rx.recv());
                    Ok(())
                })
                .await
            }));
        }
        while gate.stats().running < 2 || gate.stats().waiting < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Two running, three queued: a sixth is refused at once.
        assert!(matches!(gate.run(|| Ok(())).await, Err(AccountError::Busy)));
        for _ in 0..5 {
            release_tx.send(()).unwrap();
        }
        for job in jobs {
            job.await.unwrap().unwrap();
        }
        let stats = gate.stats();
        assert_eq!((stats.peak, stats.completed, stats.refused, stats.running, stats.waiting), (2, 5, 1, 0, 0));
    }

    #[tokio::test]
    async fn a_waiter_past_its_deadline_is_busy() {
        let gate = Arc::new(HashGate::new(1, 8, Duration::from_millis(20)));
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let held = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move {
                gate.run(move || {
                    let _ = release_rx.recv();
                    Ok(())
                })
                .await
            })
        };
        while gate.stats().running < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(matches!(gate.run(|| Ok(())).await, Err(AccountError::Busy)));
        assert_eq!(gate.stats().waiting, 0, "the refused waiter left the queue");
        release_tx.send(()).unwrap();
        held.await.unwrap().unwrap();
        gate.run(|| Ok(())).await.unwrap();
    }
}
