//! Names that stay unique across nodes: this process's [`NodeId`] and each socket's
//! [`ConnectionId`].
//!
//! A node's configured name is for people (it shows in identities and presence metas) and two
//! processes may share it by mistake or across a restart; the node id adds a random incarnation
//! to it, so a connection id from a node that restarted never names a socket of the new
//! process, and a broker can tell a node's own broadcasts from another's.

use std::fmt;
use std::sync::Arc;

use super::SubscriberId;

/// One running process of a node: its configured name plus a random incarnation.
#[derive(Debug, Clone, Eq)]
pub struct NodeId(Arc<str>);

impl std::hash::Hash for NodeId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // By the text, as equality falls back to it.
        self.0.hash(state);
    }
}

impl PartialEq for NodeId {
    fn eq(&self, other: &Self) -> bool {
        // Ids of one process share their text, so the pointer answers almost every comparison.
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl NodeId {
    /// A fresh incarnation of the node called `name`.
    pub fn new(name: &str) -> Self {
        let incarnation = uuid::Uuid::new_v4().as_fields().0;
        NodeId(format!("{name}/{incarnation:08x}").into())
    }

    /// The id as text (`<name>/<incarnation>`).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One socket connection, unique across nodes and restarts: the node id and a per-process
/// sequence number. The sequence number alone is the socket's [`SubscriberId`] in this node's
/// registry, which never sees another node's sockets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConnectionId {
    node: NodeId,
    seq: SubscriberId,
}

impl ConnectionId {
    /// The `seq`th connection of `node`.
    pub fn new(node: NodeId, seq: SubscriberId) -> Self {
        ConnectionId { node, seq }
    }

    /// The node the connection is on.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The connection's id in its own node's registry.
    pub fn subscriber(&self) -> SubscriberId {
        self.seq
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.node, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restarted_node_names_its_sockets_differently() {
        let (before, after) = (NodeId::new("courier@a"), NodeId::new("courier@a"));
        assert_ne!(before, after, "each start is a new incarnation");
        assert!(before.as_str().starts_with("courier@a/"));
        let (old, new) = (ConnectionId::new(before, 1), ConnectionId::new(after, 1));
        assert_ne!(old, new);
        assert_ne!(old.to_string(), new.to_string());
        assert_eq!(new.subscriber(), 1);
        assert!(new.to_string().ends_with("/1"));
    }
}
