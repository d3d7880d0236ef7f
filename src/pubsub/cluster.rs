//! The `[cluster]` settings: which broker joins this node to others (Redis or NATS, from the
//! URL's scheme, each behind its Cargo feature), the checks they pass, and making the broker.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::Broker;
use crate::store::Backend;

/// The `[cluster]` section: which broker joins this node to the others, and its timings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The broker's URL: `redis://host:port[/db]` or `nats://host:port` (`COURIER_BROKER`).
    pub broker: String,
    /// Prefixes every channel or subject, so two clusters can share one broker server.
    pub namespace: String,
    /// Broadcasts queued for the broker before new ones are dropped (and counted).
    pub publish_queue: usize,
    /// How long one connection attempt may take.
    pub connect_timeout_ms: u64,
    /// The longest pause between reconnection attempts (they start at 100 ms and double).
    pub reconnect_max_ms: u64,
    /// How often an idle connection is pinged, so a server that went silent is noticed.
    pub ping_interval_ms: u64,
    /// How long a node's claim on its name outlives its last refresh (Redis; refreshed every
    /// third of it): a node killed without a shutdown frees its name within this.
    pub node_claim_ttl_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            broker: String::new(),
            namespace: "courier".into(),
            publish_queue: 8192,
            connect_timeout_ms: 2_000,
            reconnect_max_ms: 5_000,
            ping_interval_ms: 5_000,
            node_claim_ttl_ms: 10_000,
        }
    }
}

/// Which kind of server a broker URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// Redis pub/sub (`redis://`).
    Redis,
    /// NATS core subjects (`nats://`).
    Nats,
}

/// Why the `[cluster]` settings were refused or a broker could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The URL's scheme names no broker Courier knows.
    #[error("cluster.broker must be a redis:// or nats:// URL, not {0:?}")]
    UnknownScheme(String),
    /// The broker's Cargo feature was left out of this build.
    #[error("this build has no {0} broker (build with the `{0}` feature)")]
    NotBuilt(&'static str),
    /// Nodes share their messages through the database, so it must be a server.
    #[error("several nodes need PostgreSQL: database_url is a SQLite file, which other nodes cannot share")]
    NeedsPostgres,
    /// A setting is out of range.
    #[error("cluster.{0} {1}")]
    Setting(&'static str, &'static str),
    /// The client refused the URL.
    #[error("cluster.broker is not a usable URL: {0}")]
    BadUrl(String),
    /// Another live node on the same broker server and namespace has this node's name.
    #[error(
        "node name {node} is already running on this cluster (broker namespace {namespace:?}); give each node its own `node` name, or stop the other one"
    )]
    NameTaken {
        /// The name both nodes were given.
        node: String,
        /// The namespace they share.
        namespace: String,
    },
    /// The broker's server could not settle whose the name is.
    #[error("claiming the node name {0} on the broker: {1}")]
    Claim(String, String),
    /// The broker's thread could not start.
    #[error("starting the broker's thread: {0}")]
    Thread(#[from] std::io::Error),
}

impl ClusterConfig {
    /// Which broker the URL names, or why none.
    pub fn kind(&self) -> Result<BrokerKind, BrokerError> {
        let scheme = self.broker.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("redis") => Ok(BrokerKind::Redis),
            Some("nats") => Ok(BrokerKind::Nats),
            _ => Err(BrokerError::UnknownScheme(self.broker.clone())),
        }
    }

    /// Checks the settings, and that the database at `database_url` can be shared by nodes.
    pub fn validate(&self, database_url: &str) -> Result<BrokerKind, BrokerError> {
        let kind = self.check()?;
        if Backend::from_url(database_url) != Backend::Postgres {
            return Err(BrokerError::NeedsPostgres);
        }
        Ok(kind)
    }

    /// Checks the broker's own settings.
    fn check(&self) -> Result<BrokerKind, BrokerError> {
        let kind = self.kind()?;
        if !cfg!(feature = "redis") && kind == BrokerKind::Redis {
            return Err(BrokerError::NotBuilt("redis"));
        }
        if !cfg!(feature = "nats") && kind == BrokerKind::Nats {
            return Err(BrokerError::NotBuilt("nats"));
        }
        // A subject token and a channel segment both: no separator, space or wildcard in it.
        let namespace_ok = (1..=64).contains(&self.namespace.len())
            && self.namespace.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        let checks: [(&'static str, bool, &'static str); 6] = [
            ("namespace", namespace_ok, "must be 1..=64 of A-Z a-z 0-9 _ -"),
            ("publish_queue", self.publish_queue >= 16, "must be at least 16"),
            ("connect_timeout_ms", self.connect_timeout_ms >= 100, "must be at least 100"),
            ("reconnect_max_ms", self.reconnect_max_ms >= 100, "must be at least 100"),
            ("ping_interval_ms", self.ping_interval_ms >= 100, "must be at least 100"),
            ("node_claim_ttl_ms", self.node_claim_ttl_ms >= 1_000, "must be at least 1000"),
        ];
        match checks.into_iter().find(|(_, ok, _)| !ok) {
            Some((name, _, why)) => Err(BrokerError::Setting(name, why)),
            None => Ok(kind),
        }
    }

    /// The connect timeout as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The longest reconnection pause as a duration.
    pub fn reconnect_max(&self) -> Duration {
        Duration::from_millis(self.reconnect_max_ms)
    }

    /// How long a node's name claim outlives its last refresh.
    pub fn node_claim_ttl(&self) -> Duration {
        Duration::from_millis(self.node_claim_ttl_ms)
    }

    /// The ping interval as a duration.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }

    /// The broker for the node called `node` (the server checks the database with
    /// [`validate`](Self::validate) first). It connects in the background: a server that is
    /// down at start is retried, and reported by [`Broker::connected`] meanwhile.
    #[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(unused_variables))]
    pub async fn connect(&self, node: &str) -> Result<Arc<dyn Broker>, BrokerError> {
        match self.check()? {
            #[cfg(feature = "redis")]
            BrokerKind::Redis => Ok(Arc::new(super::redis::RedisBroker::new(self, node)?)),
            #[cfg(feature = "nats")]
            BrokerKind::Nats => Ok(Arc::new(super::nats::NatsBroker::connect(self, node).await?)),
            #[allow(unreachable_patterns)]
            _ => unreachable!("validate refuses a broker this build lacks"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(broker: &str) -> ClusterConfig {
        ClusterConfig { broker: broker.into(), ..ClusterConfig::default() }
    }

    const PG: &str = "postgres://u@h/db";

    #[test]
    fn a_broker_left_out_of_the_build_is_refused() {
        for (url, built) in [("redis://h", cfg!(feature = "redis")), ("nats://h", cfg!(feature = "nats"))] {
            let checked = cluster(url).validate(PG);
            assert_eq!(checked.is_ok(), built, "{url}: {checked:?}");
            if let Err(e) = checked {
                assert!(e.to_string().contains("build with the"), "{e}");
            }
        }
    }

    // Checks that accept a URL need its broker in the build.
    #[cfg(all(feature = "redis", feature = "nats"))]
    #[test]
    fn the_scheme_picks_the_broker_and_an_unknown_one_is_refused() {
        assert_eq!(cluster("redis://127.0.0.1:6379").validate(PG).unwrap(), BrokerKind::Redis);
        assert_eq!(cluster("NATS://127.0.0.1:4222").validate(PG).unwrap(), BrokerKind::Nats);
        for url in ["kafka://h:9092", "127.0.0.1:6379", ""] {
            let err = cluster(url).validate(PG).unwrap_err().to_string();
            assert!(err.contains("redis:// or nats://"), "{url}: {err}");
        }
    }

    #[cfg(all(feature = "redis", feature = "nats"))]
    #[test]
    fn a_broker_needs_postgres_and_settings_in_range() {
        let err = cluster("redis://h").validate("courier.db").unwrap_err().to_string();
        assert!(err.contains("several nodes need PostgreSQL"), "{err}");
        assert!(cluster("nats://h").validate("postgresql://u@h/db").is_ok());
        for namespace in ["", "a.b", "a b", "a*", "x>", &"n".repeat(65)] {
            let c = ClusterConfig { namespace: namespace.into(), ..cluster("nats://h") };
            assert!(c.validate(PG).unwrap_err().to_string().contains("cluster.namespace"), "{namespace:?}");
        }
        let c = ClusterConfig { publish_queue: 1, ..cluster("nats://h") };
        assert!(c.validate(PG).unwrap_err().to_string().contains("cluster.publish_queue"));
    }
}
