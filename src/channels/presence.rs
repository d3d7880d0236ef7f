//! Presence on channels: the track-then-`presence_state` step every tracking channel runs
//! after its join, and `presence:<eid>`, where a user watches another user's devices come and
//! go plus a single online/offline `status` with the last-seen time.

use std::any::Any;
use std::sync::Arc;

use futures_util::future::LocalBoxFuture;
use serde_json::json;

use super::{Channel, ChannelContext, ChannelFactory, HandleIn, JoinRequest, JoinResult, Joined, Refusal, Reply};
use crate::accounts::Accounts;
use crate::error::Code;
use crate::presence::{Meta, PRESENCE_DIFF, PRESENCE_STATE, PresenceError, Snapshot, Tracker};
use crate::protocol::Payload;
use crate::pubsub::{Broadcast, Event, Topic, TopicKind};

/// The event that tells a watcher whether the user is online, and since when it is not.
pub const EVENT_STATUS: &str = "status";

/// The meta every tracked socket starts with: when it came online (`online_at`, by the
/// server's clock) and on which node.
pub fn base_meta(ctx: &ChannelContext<'_>, online_at: i64) -> Meta {
    let mut meta = Meta::new();
    meta.insert("online_at".into(), online_at.into());
    meta.insert("node".into(), ctx.pubsub.node().into());
    meta
}

/// A tracking channel's presence once its `track` and `list` are done, for its `handle_info`.
pub struct PresenceReady(Result<Snapshot, PresenceError>);

/// Tracks this socket under `key` on each of `topics`, then lists the first; the result comes
/// back to the channel's `handle_info` as a [`PresenceReady`]. The calls are queued before this
/// returns, so an untrack in `terminate` can never overtake them.
pub fn track_and_list(
    ctx: &mut ChannelContext<'_>,
    tracker: &Arc<dyn Tracker>,
    topics: &[&str],
    key: &str,
    meta: Meta,
) {
    let owner = ctx.socket.presence_owner(tracker);
    let tracks: Vec<_> = topics.iter().map(|topic| tracker.track(topic, key, owner, meta.clone())).collect();
    let listed = tracker.list(topics.first().copied().unwrap_or(ctx.topic));
    ctx.spawn(Box::pin(async move {
        let mut tracked = Ok(String::new());
        for track in tracks {
            tracked = tracked.and(track.await);
        }
        Box::new(PresenceReady(tracked.and(listed.await))) as Box<dyn Any>
    }));
}

/// Pushes the `presence_state` of a [`PresenceReady`]; returns the snapshot, or `None` if
/// `info` is something else. A failed track is logged and leaves the client without a state.
pub fn push_presence_state(info: &dyn Any, ctx: &mut ChannelContext<'_>) -> Option<Snapshot> {
    let PresenceReady(result) = info.downcast_ref::<PresenceReady>()?;
    match result {
        Ok(snapshot) => {
            ctx.push(PRESENCE_STATE, snapshot.state.clone());
            Some(snapshot.clone())
        }
        Err(e) => {
            tracing::warn!(topic = ctx.topic, error = %e, "presence not tracked");
            None
        }
    }
}

/// Joins `presence:<eid>`: oneself always; another user if they exist and, when contacts are
/// required, are a contact.
#[derive(Clone)]
pub struct PresenceChannels {
    accounts: Accounts,
    tracker: Arc<dyn Tracker>,
}

impl PresenceChannels {
    /// Serves presence topics from this tracker, checking watchers against these accounts.
    pub fn new(accounts: Accounts, tracker: Arc<dyn Tracker>) -> Self {
        PresenceChannels { accounts, tracker }
    }
}

impl ChannelFactory for PresenceChannels {
    fn join(&self, request: JoinRequest) -> LocalBoxFuture<'static, JoinResult> {
        let (accounts, tracker) = (self.accounts.clone(), Arc::clone(&self.tracker));
        Box::pin(async move {
            let Some(me) = request.socket.identity.user.clone() else {
                return Err(Refusal::new(Code::Unauthorized, "unauthorized"));
            };
            let eid = match Topic::parse(&request.topic) {
                Ok(topic) if topic.kind() == TopicKind::Presence => topic.name().to_owned(),
                _ => return Err(Refusal::new(Code::InvalidTopic, "presence topic must name a user")),
            };
            if eid != me {
                // The same rule as messaging: the user exists and, if required, is a contact.
                accounts.authorize_message(&me, &eid).await?;
            }
            let last_seen = accounts.last_seen(&eid).await?;
            let channel = WatchChannel { tracker, last_seen, shown_online: None };
            Ok(Joined { channel: Box::new(channel), response: Payload::json(&json!({ "last_seen": last_seen })) })
        })
    }
}

/// A watcher of one user's presence. It is not tracked itself.
struct WatchChannel {
    tracker: Arc<dyn Tracker>,
    last_seen: Option<i64>,
    /// The online state last pushed, so a diff that only confirms it pushes nothing.
    shown_online: Option<bool>,
}

impl WatchChannel {
    fn push_status(&mut self, online: bool, ctx: &mut ChannelContext<'_>) {
        if self.shown_online.replace(online) == Some(online) {
            return;
        }
        let last_seen = if online { None } else { self.last_seen };
        ctx.push(EVENT_STATUS, Payload::json(&json!({ "online": online, "last_seen": last_seen })));
    }
}

impl Channel for WatchChannel {
    fn after_join(&mut self, ctx: &mut ChannelContext<'_>) {
        let listed = self.tracker.list(ctx.topic);
        ctx.spawn(Box::pin(async move { Box::new(PresenceReady(listed.await)) as Box<dyn Any> }));
    }

    fn handle_in(&mut self, _event: &str, _payload: Payload, _ctx: &mut ChannelContext<'_>) -> HandleIn {
        HandleIn::Reply(Reply::error(Code::InvalidEvent, "presence topics take no pushes"))
    }

    fn handle_info(&mut self, info: Box<dyn Any>, ctx: &mut ChannelContext<'_>) {
        if let Some(snapshot) = push_presence_state(info.as_ref(), ctx) {
            self.push_status(snapshot.keys > 0, ctx);
        }
    }

    fn handle_out(&mut self, broadcast: &Arc<Broadcast>, ctx: &mut ChannelContext<'_>) -> bool {
        match &broadcast.event {
            Event::PresenceDiff { diff, occupancy } if occupancy.changed() => {
                if !occupancy.occupied && self.shown_online != Some(false) {
                    self.last_seen = Some(occupancy.at);
                }
                // The diff first, so a client that counts devices agrees with the status it gets.
                ctx.push(PRESENCE_DIFF, diff.clone());
                self.push_status(occupancy.occupied, ctx);
                false
            }
            // Inboxes' business only: no client hears of it.
            Event::Resync => false,
            Event::PresenceDiff { .. }
            | Event::Message { .. }
            | Event::Receipt(_)
            | Event::Signal(_)
            | Event::Raw { .. } => true,
        }
    }
}
