//! The messaging events of `user:<eid>`: `message`, `receipt`, `pull` and `history` from the
//! device, and the push-mode delivery of its log (catch-up, then live `message` and `receipt`
//! events) to it.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::UserChannel;
use crate::channels::{ChannelContext, HandleIn, Refusal, Reply};
use crate::error::Code;
use crate::messaging::signals::EVENT_SIGNAL;
use crate::messaging::wire::{self, Encoding, SIGNAL_REQUEST_PUSH};
use crate::messaging::{EVENT_MESSAGE, EVENT_RECEIPT, LogPage, MessagingError};
use crate::pb;
use crate::protocol::Payload;
use crate::pubsub::{Broadcast, Event};

/// How long a catch-up waits for the socket's outbound queue to drain before the next page.
const CATCH_UP_BACKOFF: Duration = Duration::from_millis(20);
/// How long a catch-up waits before reading again after a storage error.
const CATCH_UP_RETRY: Duration = Duration::from_secs(1);

/// The gap timer of the inbox fired.
pub struct GapTimer;

/// The offset in its user's log that this socket's send was stored at, from the send's ack.
pub struct OwnSent(i64);

/// A step of a push-mode catch-up, handed back to the channel by its task.
pub enum CatchUp {
    /// Time to read the next page (the outbound queue had no room before).
    Fetch,
    /// A page of the log was read.
    Page(Result<LogPage, MessagingError>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiptParams {
    up_to: i64,
    state: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PullParams {
    after: i64,
    limit: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryParams {
    with: String,
    before: Option<i64>,
    limit: Option<i64>,
}

/// Parses a JSON payload strictly; the error is a reply reason naming the event.
fn params<T: DeserializeOwned>(event: &str, payload: &Payload) -> Result<T, Reply> {
    let Some(text) = payload.as_json_str() else {
        return Err(Reply::error(Code::InvalidJson, &format!("{event} takes a JSON payload")));
    };
    serde_json::from_str(text).map_err(|e| Reply::error(Code::InvalidJson, &format!("bad {event} payload: {e}")))
}

/// The error reply to a `message` push: the reason and code plus seed 004's retry fields for
/// JSON clients; a `MessagePeerAckSignal` with the status code (stamped `now`) for protobuf ones.
fn send_error(encoding: Encoding, message_id: &str, error: &MessagingError, now: i64) -> Reply {
    match encoding {
        Encoding::Json => Reply::error_with(
            error.code(),
            &error.reason(),
            json!({ "status_code": error.status_code(), "message_id": message_id, "signal_offset_state": false }),
        ),
        Encoding::Protobuf => Reply::error_binary(
            error.code(),
            wire::protobuf(&pb::MessagePeerAckSignal {
                message_id: message_id.to_owned(),
                method: wire::METHOD_SENT,
                timestamp: now,
                status_code: error.status_code(),
                ..Default::default()
            }),
        ),
    }
}

/// The `id` of a JSON message that did not parse as a `Message`, so its error reply still
/// names the message the client should fix.
fn best_effort_id(payload: &Payload) -> String {
    let Some(text) = payload.as_json_str() else { return String::new() };
    let value: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    value.get("id").and_then(serde_json::Value::as_str).unwrap_or_default().to_owned()
}

impl UserChannel {
    pub(super) fn send_message(&self, payload: Payload) -> HandleIn {
        let arrived = std::time::Instant::now();
        let encoding = Encoding::of(&payload);
        let clock = Arc::clone(self.messaging.clock());
        let message: pb::Message = match wire::decode(&payload) {
            Ok(m) => m,
            Err(e) => return HandleIn::Reply(send_error(encoding, &best_effort_id(&payload), &e, clock.now_millis())),
        };
        let id = message.id.clone();
        let message = match self.messaging.prepare(&self.origin, message) {
            Ok(m) => m,
            Err(e) => return HandleIn::Reply(send_error(encoding, &id, &e, clock.now_millis())),
        };
        // Queued now, not when the reply future first runs, so pipelined sends keep their order.
        let stored = self.messaging.send(&self.origin, message);
        HandleIn::LaterThen(Box::pin(async move {
            match stored.await {
                Ok(sent) => {
                    crate::metrics::global().acked(arrived.elapsed());
                    (Reply::ok(encoding.encode(&sent.ack)), Box::new(OwnSent(sent.sender_offset)) as _)
                }
                Err(e) => (send_error(encoding, &id, &e, clock.now_millis()), Box::new(()) as _),
            }
        }))
    }

    pub(super) fn receipt(&self, payload: &Payload) -> HandleIn {
        let p: ReceiptParams = match params("receipt", payload) {
            Ok(p) => p,
            Err(reply) => return HandleIn::Reply(reply),
        };
        let read = match p.state.as_str() {
            "received" => false,
            "read" => true,
            _ => return HandleIn::Reply(Reply::error(Code::InvalidInput, "state must be \"received\" or \"read\"")),
        };
        let recorded = self.messaging.receipt(&self.origin, p.up_to, read);
        HandleIn::Later(Box::pin(async move {
            match recorded.await {
                Ok(cursor) => Reply::ok(Payload::json(&json!({ "acked_offset": cursor }))),
                Err(e) => Reply::from(Refusal::from(e)),
            }
        }))
    }

    pub(super) fn pull(&self, payload: &Payload) -> HandleIn {
        let p: PullParams = match params("pull", payload) {
            Ok(p) => p,
            Err(reply) => return HandleIn::Reply(reply),
        };
        let (messaging, eid) = (self.messaging.clone(), self.origin.eid.clone());
        let limit = p.limit.unwrap_or(messaging.config().default_page);
        HandleIn::Later(Box::pin(async move {
            match messaging.pull(&eid, p.after, limit).await {
                Ok(page) => Reply::ok(Payload::json(&page.reply())),
                Err(e) => Reply::from(Refusal::from(e)),
            }
        }))
    }

    pub(super) fn history(&self, payload: &Payload) -> HandleIn {
        let p: HistoryParams = match params("history", payload) {
            Ok(p) => p,
            Err(reply) => return HandleIn::Reply(reply),
        };
        if p.with.is_empty() {
            return HandleIn::Reply(Reply::error(Code::InvalidInput, "with must name a user"));
        }
        let (messaging, eid) = (self.messaging.clone(), self.origin.eid.clone());
        let limit = p.limit.unwrap_or(messaging.config().default_page);
        HandleIn::Later(Box::pin(async move {
            match messaging.history(&eid, &p.with, p.before, limit).await {
                Ok(page) => Reply::ok(Payload::json(&page.reply())),
                Err(e) => Reply::from(Refusal::from(e)),
            }
        }))
    }

    /// Reads the next catch-up page, or waits first if the client has not drained the last one.
    pub(super) fn fetch_next(&mut self, ctx: &mut ChannelContext<'_>) {
        let page = self.messaging.config().catch_up_page;
        // A page may hold up to `max_page_bytes` of messages; reading it only once the queue has
        // room for it keeps a catching-up device from being closed as a slow consumer.
        let page_bytes = self.messaging.config().max_page_bytes;
        if ctx.outbound_room < usize::try_from(page).unwrap_or(usize::MAX).saturating_mul(2)
            || ctx.outbound_room_bytes < page_bytes
        {
            ctx.spawn(Box::pin(async {
                tokio::time::sleep(CATCH_UP_BACKOFF).await;
                Box::new(CatchUp::Fetch) as _
            }));
            return;
        }
        let (messaging, eid, after) = (self.messaging.clone(), self.origin.eid.clone(), self.inbox.delivered());
        ctx.spawn(Box::pin(async move {
            Box::new(CatchUp::Page(messaging.read_log(&eid, after, page, SIGNAL_REQUEST_PUSH).await)) as _
        }));
    }

    pub(super) fn catch_up(&mut self, step: CatchUp, ctx: &mut ChannelContext<'_>) {
        let page = match step {
            CatchUp::Fetch => return self.fetch_next(ctx),
            CatchUp::Page(Ok(page)) => page,
            CatchUp::Page(Err(e)) => {
                tracing::warn!(user = self.origin.eid, error = %e, "catch-up read failed; retrying");
                ctx.spawn(Box::pin(async {
                    tokio::time::sleep(CATCH_UP_RETRY).await;
                    Box::new(CatchUp::Fetch) as _
                }));
                return;
            }
        };
        for (offset, message) in &page.entries {
            if self.inbox.offer_stored(*offset) {
                ctx.push(EVENT_MESSAGE, self.encoding.encode(message));
            }
        }
        if page.more {
            return self.fetch_next(ctx);
        }
        match self.inbox.finish_reading(page.last_offset) {
            Some(held) => {
                self.push_live(held, ctx);
                self.arm_gap_timer(ctx);
            }
            None => self.fetch_next(ctx),
        }
    }

    /// Pushes live messages the inbox released: JSON devices get the frame every subscriber
    /// shares, protobuf devices the message re-encoded.
    fn push_live(&self, released: Vec<Arc<Broadcast>>, ctx: &mut ChannelContext<'_>) {
        for broadcast in released {
            match (&broadcast.event, self.encoding) {
                (Event::Message { message, .. }, Encoding::Protobuf) => {
                    ctx.push(EVENT_MESSAGE, self.encoding.encode(message));
                }
                _ => ctx.forward(&broadcast),
            }
        }
    }

    /// Starts the gap timer if the inbox holds messages past a gap and none is running.
    fn arm_gap_timer(&mut self, ctx: &mut ChannelContext<'_>) {
        if self.inbox.gap_timer_due() {
            // `[messaging] gap_wait_ms`: publishes reorder by microseconds on one node and by a
            // broker's latency across nodes (two nodes committing one log's offsets moments
            // apart); a message lost on the way costs the device this long.
            let wait = Duration::from_millis(self.messaging.config().gap_wait_ms);
            ctx.spawn(Box::pin(async move {
                tokio::time::sleep(wait).await;
                Box::new(GapTimer) as _
            }));
        }
    }

    /// The gap timer fired: read the log if the gap is still open, or time the next one.
    pub(super) fn gap_timer(&mut self, ctx: &mut ChannelContext<'_>) {
        if self.inbox.gap_expired() {
            tracing::debug!(user = self.origin.eid, after = self.inbox.delivered(), "filling a gap from the log");
            return self.fetch_next(ctx);
        }
        self.arm_gap_timer(ctx);
    }

    /// This socket's send was stored at `offset` in its user's log.
    pub(super) fn own_sent(&mut self, OwnSent(offset): OwnSent, ctx: &mut ChannelContext<'_>) {
        let released = self.inbox.own_sent(offset);
        self.push_live(released, ctx);
        self.arm_gap_timer(ctx);
    }

    /// `handle_out` for the inbox topic: live messages go through the inbox; protobuf devices
    /// get seed types (messages, receipts, signals) re-encoded, JSON devices the shared frame.
    /// A resync (live delivery to this node was interrupted) has the inbox read its log again.
    pub(super) fn deliver_live(&mut self, broadcast: &Arc<Broadcast>, ctx: &mut ChannelContext<'_>) -> bool {
        let protobuf = self.encoding == Encoding::Protobuf;
        match &broadcast.event {
            Event::Message { offset, .. } => {
                let released = self.inbox.offer_live(*offset, Arc::clone(broadcast));
                self.push_live(released, ctx);
                self.arm_gap_timer(ctx);
                false
            }
            Event::Receipt(ack) if protobuf => {
                ctx.push(EVENT_RECEIPT, self.encoding.encode(ack));
                false
            }
            Event::Signal(signal) if protobuf => {
                ctx.push(EVENT_SIGNAL, self.encoding.encode(signal));
                false
            }
            Event::Resync => {
                if self.inbox.resync() {
                    tracing::debug!(
                        user = self.origin.eid,
                        after = self.inbox.delivered(),
                        "re-reading the log after an interruption"
                    );
                    self.fetch_next(ctx);
                }
                false
            }
            Event::Receipt(_) | Event::Signal(_) | Event::PresenceDiff { .. } | Event::Raw { .. } => true,
        }
    }
}
