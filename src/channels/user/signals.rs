//! The `signal` event of `user:<eid>`: a device's status signal (typing, recording, ...) for
//! another user, relayed by [`crate::messaging::signals`].

use serde_json::json;

use super::UserChannel;
use crate::channels::{HandleIn, Reply};
use crate::messaging::MessagingError;
use crate::messaging::signals::TYPE_ERROR;
use crate::messaging::wire::{self, Encoding};
use crate::pb;
use crate::protocol::Payload;

/// The error reply to a `signal` push: the reason, code and status code for JSON clients; a
/// `Signal` of type ERROR carrying the reason for protobuf ones.
fn signal_error(encoding: Encoding, id: String, error: &MessagingError) -> Reply {
    match encoding {
        Encoding::Json => {
            Reply::error_with(error.code(), &error.reason(), json!({ "status_code": error.status_code() }))
        }
        Encoding::Protobuf => Reply::error_binary(
            error.code(),
            wire::protobuf(&pb::Signal { id, r#type: TYPE_ERROR, error: Some(error.reason()), ..Default::default() }),
        ),
    }
}

impl UserChannel {
    pub(super) fn send_signal(&self, payload: &Payload) -> HandleIn {
        let encoding = Encoding::of(payload);
        let signal: pb::Signal = match wire::decode(payload) {
            Ok(s) => s,
            Err(e) => return HandleIn::Reply(signal_error(encoding, String::new(), &e)),
        };
        let id = signal.id.clone();
        // Queued now, so a TYPING and the PAUSED right after it are relayed in that order.
        let relayed = self.signals.send(&self.origin, signal);
        HandleIn::Later(Box::pin(async move {
            match relayed.await {
                Ok(response) => Reply::ok(encoding.encode(&response)),
                Err(e) => signal_error(encoding, id, &e),
            }
        }))
    }
}
