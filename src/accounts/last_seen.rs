//! Last-seen times of devices, written in batches: when many devices leave at once (a server
//! restart, a network blip) their `devices.last_seen_at` updates share one transaction instead
//! of costing one commit (one fsync on SQLite) each and crowding out the message log writer.

use tokio::sync::mpsc;

use super::Accounts;
use crate::store;

/// Updates queued before new ones are dropped (last-seen is best effort; nothing waits on it).
const QUEUE: usize = 16_384;
/// Updates written per transaction.
const BATCH: usize = 1_024;

/// A handle to the last-seen writer; cheap to clone.
#[derive(Clone)]
pub struct LastSeen {
    queue: mpsc::Sender<(String, String)>,
}

impl LastSeen {
    /// Starts the writer on the current runtime.
    pub fn start(accounts: Accounts) -> LastSeen {
        let (queue, mut pending) = mpsc::channel::<(String, String)>(QUEUE);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while pending.recv_many(&mut batch, BATCH).await > 0 {
                let updates = std::mem::take(&mut batch);
                let count = updates.len();
                if let Err(e) = accounts.touch_devices(updates).await {
                    tracing::warn!(count, error = %e, "last-seen times not recorded");
                }
            }
        });
        LastSeen { queue }
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
