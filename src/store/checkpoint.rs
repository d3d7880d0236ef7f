//! SQLite's WAL checkpoints, mostly off the commit path: one thread per SQLite store copies the
//! WAL back into the database file every [`INTERVAL`], on a connection of its own.
//!
//! With SQLite's default, the commit that grew the WAL past 1,000 pages ran the whole checkpoint
//! and its fsync itself, which on the log writer was a stall for every message of the batch.
//! Commits now checkpoint only past [`AUTOCHECKPOINT_PAGES`], and by then this thread has
//! copied all but the last few pages: what is left for the commit is short, and it is what lets
//! the WAL start over from its beginning (a passive checkpoint alone cannot, while writes keep
//! coming), so the WAL stays near that size.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use diesel::connection::SimpleConnection;

use super::{DbConnection, StoreError};

/// How often the WAL is copied back.
const INTERVAL: Duration = Duration::from_millis(200);

/// WAL length (in pages) at which a commit checkpoints: 64 MiB of 4 KiB pages.
pub(crate) const AUTOCHECKPOINT_PAGES: u32 = 16 * 1024;

/// Runs checkpoints until dropped.
pub(crate) struct Checkpointer {
    // Dropping the sender is the stop signal: the thread's wait ends at once.
    _stop: mpsc::Sender<()>,
}

impl Checkpointer {
    /// Starts checkpointing on `conn`, a connection to the store's SQLite file.
    pub(crate) fn start(mut conn: DbConnection) -> Result<Checkpointer, StoreError> {
        let (stop, stopped) = mpsc::channel::<()>();
        std::thread::Builder::new()
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
        Ok(Checkpointer { _stop: stop })
    }
}
