//! SQLite's WAL checkpoints, mostly off the commit path: one thread per SQLite store copies the
//! WAL back into the database file every [`INTERVAL`], on a connection of its own.
//!
//! With SQLite's default, the commit that grew the WAL past 1,000 pages ran the whole checkpoint
//! and its fsync itself, which on the log writer was a stall for every message of the batch.
//! Commits now checkpoint only past [`AUTOCHECKPOINT_PAGES`], and by then this thread has
//! copied all but the last few pages: what is left for the commit is short, and it is what lets
//! the WAL start over from its beginning (a passive checkpoint alone cannot, while writes keep
//! coming), so the WAL stays near that size.

use std::sync::Mutex;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use diesel::connection::SimpleConnection;

use super::{DbConnection, StoreError};

/// How often the WAL is copied back.
const INTERVAL: Duration = Duration::from_millis(200);

/// WAL length (in pages) at which a commit checkpoints: 64 MiB of 4 KiB pages.
pub(crate) const AUTOCHECKPOINT_PAGES: u32 = 16 * 1024;

/// Runs checkpoints until stopped or dropped.
pub(crate) struct Checkpointer {
    // Dropping the sender is the stop signal: the thread's wait ends at once.
    stop: Mutex<Option<mpsc::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Checkpointer {
    /// Starts checkpointing on `conn`, a connection to the store's SQLite file.
    pub(crate) fn start(mut conn: DbConnection) -> Result<Checkpointer, StoreError> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(INTERVAL) {
                    // Passive: copies what no reader still needs, and never blocks a writer.
                    if let Err(e) = conn.batch_execute("PRAGMA wal_checkpoint(PASSIVE)") {
                        tracing::warn!(error = %e, "WAL checkpoint failed");
                    }
                }
            })
            .map_err(|e| StoreError::TaskFailed(format!("could not start the checkpoint thread: {e}")))?;
        Ok(Checkpointer { stop: Mutex::new(Some(stop)), thread: Mutex::new(Some(thread)) })
    }

    /// Ends the thread and waits for it (blocking: a checkpoint under way finishes first).
    pub(crate) fn stop(&self) {
        drop(self.stop.lock().ok().and_then(|mut stop| stop.take()));
        let thread = self.thread.lock().ok().and_then(|mut thread| thread.take());
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::warn!("the checkpoint thread panicked");
        }
    }

    /// Whether the thread still runs.
    pub(crate) fn running(&self) -> bool {
        self.thread.lock().is_ok_and(|thread| thread.as_ref().is_some_and(|t| !t.is_finished()))
    }
}
