//! The topics Courier itself names: one typed [`Topic`] per family (`user:`, `presence:`,
//! `room:`, `session:`, `json:`, `keys:`), built by its constructors and read back by [`Topic::parse`],
//! so no module spells a prefix or splits a topic string on its own. It sits in `pubsub`, the
//! lowest layer that carries topics, so messaging, presence, channels and accounts all reach it.

use std::fmt;

/// The prefix of the topics nodes talk to each other on (the presence replicas'
/// [`PRESENCE_SYNC`], the signal relays' [`SIGNAL_SYNC`], the delivery notices' [`RESYNC`]): no
/// client may join them and no operator may broadcast on them.
pub const INTERNAL_PREFIX: &str = "$courier:";

/// The topic the presence trackers of a cluster replicate their entries on.
pub const PRESENCE_SYNC: &str = "$courier:presence";

/// The topic the signal relays of a cluster share their rate-limit counts and typing
/// indicators on.
pub const SIGNAL_SYNC: &str = "$courier:signals";

/// The topic a node tells the others on that some of its broadcasts were lost on the way
/// (its broker reconnected, or its outbox dropped some), so their live inboxes read their logs
/// again. Every node's broker listens to it from the start; no registry subscriber holds it.
pub const RESYNC: &str = "$courier:resync";

/// Whether `topic` is one of the nodes' own ([`INTERNAL_PREFIX`]), closed to clients.
pub fn is_internal(topic: &str) -> bool {
    topic.starts_with(INTERNAL_PREFIX)
}

/// A family of topics, told apart by the prefix before the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicKind {
    /// `user:<eid>`: a user's inbox, joined by each of the user's devices.
    User,
    /// `presence:<eid>`: where watchers see a user's devices come and go.
    Presence,
    /// `room:<name>`: an open chat room.
    Room,
    /// `session:<id>`: where a session's end is announced to the sockets it authenticated.
    Session,
    /// `json:<eid>`: what a user's seed-002 JSON connections listen on.
    Json,
    /// `keys:<eid>`: where a key user's authenticated signal connections hear about their
    /// one-time prekeys running low.
    Keys,
}

impl TopicKind {
    /// Every family, in the order [`Topic::parse`] tries them.
    pub const ALL: [TopicKind; 6] =
        [TopicKind::User, TopicKind::Presence, TopicKind::Room, TopicKind::Session, TopicKind::Json, TopicKind::Keys];

    /// The prefix of this family's topics, colon included.
    pub fn prefix(self) -> &'static str {
        match self {
            TopicKind::User => "user:",
            TopicKind::Presence => "presence:",
            TopicKind::Room => "room:",
            TopicKind::Session => "session:",
            TopicKind::Json => "json:",
            TopicKind::Keys => "keys:",
        }
    }

    /// The router pattern that matches every topic of this family (`user:*`).
    pub fn pattern(self) -> String {
        format!("{}*", self.prefix())
    }
}

/// Why a string is not one of Courier's topics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The string has none of the known prefixes.
    #[error("unknown topic family")]
    Unknown,
    /// The prefix is there but nothing follows it.
    #[error("{} topic names nothing", .0.prefix())]
    EmptyName(TopicKind),
}

/// One of Courier's own topics: a family and a non-empty name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topic {
    kind: TopicKind,
    /// The whole topic, prefix included, so it lends itself as `&str` without rebuilding.
    text: String,
}

impl Topic {
    fn new(kind: TopicKind, name: &str) -> Topic {
        Topic { kind, text: format!("{}{name}", kind.prefix()) }
    }

    /// `user:<eid>`.
    pub fn user(eid: &str) -> Topic {
        Topic::new(TopicKind::User, eid)
    }

    /// `presence:<eid>`.
    pub fn presence(eid: &str) -> Topic {
        Topic::new(TopicKind::Presence, eid)
    }

    /// `room:<name>`.
    pub fn room(name: &str) -> Topic {
        Topic::new(TopicKind::Room, name)
    }

    /// `session:<id>`.
    pub fn session(session_id: &str) -> Topic {
        Topic::new(TopicKind::Session, session_id)
    }

    /// `json:<eid>`.
    pub fn json(eid: &str) -> Topic {
        Topic::new(TopicKind::Json, eid)
    }

    /// `keys:<eid>`.
    pub fn keys(eid: &str) -> Topic {
        Topic::new(TopicKind::Keys, eid)
    }

    /// Reads a topic string: a known prefix followed by a name that is not empty.
    pub fn parse(text: &str) -> Result<Topic, TopicError> {
        let kind = TopicKind::ALL.into_iter().find(|k| text.starts_with(k.prefix())).ok_or(TopicError::Unknown)?;
        if text.len() == kind.prefix().len() {
            return Err(TopicError::EmptyName(kind));
        }
        Ok(Topic { kind, text: text.to_owned() })
    }

    /// The family.
    pub fn kind(&self) -> TopicKind {
        self.kind
    }

    /// What follows the prefix: the user, room or session named.
    pub fn name(&self) -> &str {
        &self.text[self.kind.prefix().len()..]
    }

    /// The whole topic as subscribers and clients see it.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl From<Topic> for String {
    fn from(topic: Topic) -> String {
        topic.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_constructor_round_trips_through_parse() {
        let built = [
            (Topic::user("alice"), TopicKind::User, "user:alice"),
            (Topic::presence("bob"), TopicKind::Presence, "presence:bob"),
            (Topic::room("lobby:east"), TopicKind::Room, "room:lobby:east"),
            (Topic::session("s1"), TopicKind::Session, "session:s1"),
            (Topic::json("карл"), TopicKind::Json, "json:карл"),
            (Topic::keys("BQab"), TopicKind::Keys, "keys:BQab"),
        ];
        for (topic, kind, text) in built {
            assert_eq!(topic.as_str(), text);
            assert_eq!(topic.to_string(), text);
            assert_eq!(topic.kind(), kind);
            assert!(kind.pattern().starts_with(kind.prefix()));
            let parsed = Topic::parse(text).expect("a built topic parses");
            assert_eq!(parsed, topic);
            assert_eq!(format!("{}{}", kind.prefix(), parsed.name()), text);
            assert_eq!(String::from(parsed), text);
        }
        assert_eq!(Topic::room("lobby:east").name(), "lobby:east", "only the first colon is the family's");
    }

    #[test]
    fn parse_rejects_unknown_families_and_empty_names() {
        for unknown in ["", "phoenix", "users_socket:alice", "User:alice", "rooms:x", ":alice"] {
            assert_eq!(Topic::parse(unknown), Err(TopicError::Unknown), "{unknown:?}");
        }
        for kind in TopicKind::ALL {
            assert_eq!(Topic::parse(kind.prefix()), Err(TopicError::EmptyName(kind)));
        }
        assert_eq!(TopicError::EmptyName(TopicKind::Room).to_string(), "room: topic names nothing");
    }

    #[test]
    fn the_nodes_topics_are_internal_and_no_family_of_courier() {
        for internal in [PRESENCE_SYNC, SIGNAL_SYNC, RESYNC] {
            assert!(is_internal(internal));
            assert_eq!(Topic::parse(internal), Err(TopicError::Unknown));
        }
        assert!(!is_internal("room:$courier:presence") && !is_internal("presence:x"));
    }
}
