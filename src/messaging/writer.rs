//! The log writer: the one task that writes messages and receipts, in batches.
//!
//! Requests queue in a bounded channel. The writer takes everything queued (up to
//! `max_batch`), commits it in one transaction (group commit: one fsync for the batch, not one
//! per message), then answers each request and only then publishes the new `message` and
//! `receipt` events, in commit order. While a batch commits, the next one fills up. The writer
//! keeps its database connection between batches (`store::HeldWriter`), so no batch waits on
//! the pool's check-out test.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::MessagingError;
use super::log::{self, Write, Written};
use super::wire::{self, SIGNAL_REQUEST_PUSH};
use crate::clock::Clock;
use crate::pb;
use crate::pubsub::{Broadcast, Event, PubSub, SubscriberId, Topic};
use crate::store::{HeldWriter, Store};
use crate::task::{Batches, Worker};

/// How many requests may wait for the writer before senders wait too.
const QUEUE: usize = 16 * 1024;

/// One request to the writer.
pub(crate) struct Job {
    /// What to write.
    pub write: Write,
    /// The socket that asked; it does not get its own write back as an event.
    pub origin: Option<SubscriberId>,
    /// Where the outcome goes, once committed.
    pub reply: oneshot::Sender<Result<Written, MessagingError>>,
}

/// Starts the writer on the current runtime; it stops, after committing what is queued, when
/// its [`Worker`] is stopped or every sender is dropped.
pub(crate) fn start(
    store: Store,
    pubsub: PubSub,
    max_batch: usize,
    clock: Arc<dyn Clock>,
) -> (mpsc::Sender<Job>, Worker) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let worker = Worker::spawn(rx, move |jobs| run(store, pubsub, max_batch.max(1), clock, jobs));
    (tx, worker)
}

async fn run(store: Store, pubsub: PubSub, max_batch: usize, clock: Arc<dyn Clock>, mut jobs: Batches<Job>) {
    let mut store = store.held_writer();
    let mut batch = Vec::with_capacity(max_batch);
    while jobs.next(&mut batch, max_batch).await > 0 {
        let (writes, waiting): (Vec<Write>, Vec<_>) = batch.drain(..).map(|j| (j.write, (j.origin, j.reply))).unzip();
        let writes = Arc::new(writes);
        let now = clock.now_millis();
        let results = commit(&mut store, &writes, now).await;
        let stored = results.iter().filter(|r| matches!(r, Ok(w) if w.is_new_message())).count();
        crate::metrics::global().batch_committed(writes.len(), stored);
        let mut broadcasts = Vec::new();
        for ((write, (origin, reply)), result) in writes.iter().zip(waiting).zip(results) {
            // Built before the reply takes the result, published after every reply: a sender
            // hears "stored" before anyone is told about the message.
            if let Ok(written) = &result {
                broadcasts.extend(announcements(write, written, origin, clock.as_ref()));
            }
            let _ = reply.send(result);
        }
        in_commit_order(&mut broadcasts);
        for (broadcast, exclude) in broadcasts {
            pubsub.publish(broadcast, exclude);
        }
    }
    tracing::debug!("log writer stopped");
}

/// Orders a batch's announcements as the transaction wrote them: `log::apply` gives offsets to
/// regular messages before sealed ones and records receipts last, whatever the order of the
/// requests, so a user's messages go out by offset (a device that reads them live, like the
/// signal endpoint, sees its log's order) and receipts after them.
fn in_commit_order(broadcasts: &mut [(Arc<Broadcast>, Option<SubscriberId>)]) {
    // Offsets of different users are unrelated, but sorting them together keeps each user's
    // in order, which is all a topic sees. The sort is stable, so the rest keeps request order.
    broadcasts.sort_by_key(|(broadcast, _)| match &broadcast.event {
        Event::Message { offset, .. } => (0, *offset),
        _ => (1, 0),
    });
}

/// Commits the batch; if the transaction fails as a whole, retries each write on its own so
/// one bad write cannot fail its neighbours.
async fn commit(store: &mut HeldWriter, writes: &Arc<Vec<Write>>, now: i64) -> Vec<Result<Written, MessagingError>> {
    let all = Arc::clone(writes);
    match store.write(move |conn| log::apply(conn, &all, now)).await {
        Ok(results) => return results,
        Err(e) if writes.len() == 1 => {
            tracing::warn!(error = %e, "message log write failed");
            return vec![Err(MessagingError::from(e))];
        }
        Err(e) => tracing::warn!(error = %e, batch = writes.len(), "batch failed; retrying its writes one by one"),
    }
    let mut results = Vec::with_capacity(writes.len());
    for index in 0..writes.len() {
        let all = Arc::clone(writes);
        let one = store.write(move |conn| log::apply(conn, &all[index..=index], now)).await;
        results.push(match one {
            Ok(mut r) => r.pop().unwrap_or(Err(MessagingError::Unavailable)),
            Err(e) => Err(MessagingError::from(e)),
        });
    }
    results
}

/// The broadcasts that tell the devices of the users involved what a committed write means,
/// each with the socket to leave out; receipts are stamped by `clock` as they go out.
fn announcements(
    write: &Write,
    written: &Written,
    origin: Option<SubscriberId>,
    clock: &dyn Clock,
) -> Vec<(Arc<Broadcast>, Option<SubscriberId>)> {
    let mut out = Vec::new();
    match (write, written) {
        (Write::Append(_), Written::Appended(appended)) if !appended.duplicate => {
            let row = &appended.row;
            let fresh = wire::ack_state(row.user_offset, (0, 0));
            for (owner, offset, exclude) in
                [(&row.receiver, row.receiver_offset, None), (&row.sender, row.sender_offset, origin)]
            {
                match wire::log_message(row, owner, offset, fresh, SIGNAL_REQUEST_PUSH) {
                    Ok(message) => {
                        out.push((Broadcast::new(Topic::user(owner), Event::Message { offset, message }), exclude));
                    }
                    // The store refuses offsets the wire cannot carry, so this is a broken invariant.
                    Err(e) => tracing::error!(user = %owner, offset, error = %e, "stored message not announced"),
                }
            }
        }
        (Write::Sealed(sealed), Written::Sealed(stored)) => {
            // The receiver's log only: a sealed message has no sender to tell.
            let message = wire::sealed_message(
                &sealed.receiver,
                sealed.device,
                &sealed.body,
                stored.offset,
                stored.stored_at,
                SIGNAL_REQUEST_PUSH,
            );
            let event = Event::Message { offset: stored.offset, message };
            out.push((Broadcast::new(Topic::user(&sealed.receiver), event), None));
        }
        (Write::Receipt(receipt), Written::Receipt(done)) => {
            let method = if receipt.read { wire::METHOD_READ } else { wire::METHOD_DELIVERED };
            let device = Some(receipt.device.as_str()).filter(|d| !d.is_empty());
            for ack in &done.acks {
                let signal = pb::MessagePeerAckSignal {
                    to: Some(wire::identity(&ack.sender, None)),
                    from: Some(wire::identity(&receipt.user, device)),
                    message_id: ack.client_id.clone(),
                    method,
                    timestamp: clock.now_millis(),
                    status_code: 200,
                    peer: Some(wire::peer(&ack.sender, &receipt.user, ack.user_offset, ack.acked)),
                };
                for (topic, exclude) in [(Topic::user(&ack.sender), None), (Topic::user(&receipt.user), origin)] {
                    out.push((Broadcast::new(topic, Event::Receipt(signal.clone())), exclude));
                }
            }
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(topic: &str, offset: i64) -> (Arc<Broadcast>, Option<SubscriberId>) {
        let message = pb::Message { signal_offset: offset as i32, ..pb::Message::default() };
        (Broadcast::new(topic, Event::Message { offset, message }), None)
    }

    fn receipt(topic: &str) -> (Arc<Broadcast>, Option<SubscriberId>) {
        (Broadcast::new(topic, Event::Receipt(pb::MessagePeerAckSignal::default())), None)
    }

    #[test]
    fn a_batch_goes_out_in_the_order_its_offsets_were_given() {
        // A receipt, a sealed message (given its offset after the regular ones) and two regular
        // messages, in request order.
        let mut out =
            vec![receipt("user:alice"), message("user:bob", 7), message("user:bob", 5), message("user:carol", 2)];
        in_commit_order(&mut out);
        let order: Vec<(String, Option<i64>)> = out
            .iter()
            .map(|(b, _)| {
                let offset = match &b.event {
                    Event::Message { offset, .. } => Some(*offset),
                    _ => None,
                };
                (b.topic.clone(), offset)
            })
            .collect();
        let bob: Vec<_> = order.iter().filter(|(t, _)| t == "user:bob").map(|(_, o)| *o).collect();
        assert_eq!(bob, vec![Some(5), Some(7)], "bob's log goes out by offset");
        assert_eq!(order.last(), Some(&("user:alice".to_owned(), None)), "receipts follow the messages");
    }
}
