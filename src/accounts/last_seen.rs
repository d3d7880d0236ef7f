//! Last-seen times of devices, written in batches: when many devices leave at once (a server
//! restart, a network blip) their `devices.last_seen_at` updates share one transaction instead
//! of costing one commit (one fsync on SQLite) each and crowding out the message log writer.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::Accounts;
use crate::store;
use crate::task::Worker;

/// Updates queued before new ones are dropped (last-seen is best effort; nothing waits on it).
const QUEUE: usize = 16_384;
/// Updates written per transaction.
const BATCH: usize = 1_024;

/// A handle to the last-seen writer; cheap to clone.
#[derive(Clone)]
pub struct LastSeen {
    queue: mpsc::Sender<(String, String)>,
    writer: Arc<Worker>,
}

impl LastSeen {
    /// Starts the writer on the current runtime.
    pub fn start(accounts: Accounts) -> LastSeen {
        let (queue, pending) = mpsc::channel::<(String, String)>(QUEUE);
        let writer = Worker::spawn(pending, move |mut pending| async move {
            let mut batch = Vec::with_capacity(BATCH);
            while pending.next(&mut batch, BATCH).await > 0 {
                let updates = std::mem::take(&mut batch);
                let count = updates.len();
                if let Err(e) = accounts.touch_devices(updates).await {
                    tracing::warn!(count, error = %e, "last-seen times not recorded");
                }
            }
        });
        LastSeen { queue, writer: Arc::new(writer) }
    }

    /// Writes what is queued, then stops; later updates are dropped. Shutdown calls it once
    /// the sockets, whose leaving devices queue updates, have closed.
    pub async fn stop(&self) {
        self.writer.stop().await;
    }

    /// Whether the writer still runs.
    pub fn running(&self) -> bool {
        self.writer.running()
    }

    /// Records that `device` of `username` was online just now.
    pub fn record(&self, username: &str, device: &str) {
        if self.queue.try_send((username.to_owned(), device.to_owned())).is_err() {
            tracing::warn!(user = username, "last-seen queue full; update dropped");
        }
    }
}

impl Accounts {
    /// Sets `last_seen_at` to now for these `(username, device)` pairs, in one transaction;
    /// unknown users and invalid names are skipped.
    pub async fn touch_devices(&self, updates: Vec<(String, String)>) -> Result<(), super::AccountError> {
        let now = self.now_millis();
        let updates: Vec<(String, String)> = updates
            .into_iter()
            .filter(|(user, device)| {
                super::validate::username(user).is_ok() && super::validate::device_id(device).is_ok()
            })
            .collect();
        self.store()
            .write(move |conn| {
                for (user, device) in &updates {
                    if let Some(id) = store::users::id_of(conn, user)? {
                        store::devices::upsert(conn, &id, device, now)?;
                    }
                }
                Ok(())
            })
            .await?;
        Ok(())
    }
}
