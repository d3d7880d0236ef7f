//! Typed configuration: defaults, then the TOML file, then command-line/env overrides, then
//! [`Config::validate`]. Tests build a [`Config`] in code.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::accounts::AccountsConfig;
use crate::keys::KeysConfig;
use crate::messaging::MessagingConfig;
use crate::presence::PresenceConfig;
use crate::pubsub::ClusterConfig;

/// Everything an operator can set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on (`--bind`, `COURIER_BIND`).
    pub bind: String,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// This node's name, reported in identities.
    pub node: String,
    /// `postgres://...` for PostgreSQL, anything else is a SQLite file path
    /// (`--database-url`, `DATABASE_URL`).
    pub database_url: String,
    /// Database connections in the pool.
    pub database_pool: u32,
    /// Static files served at `/` (skipped when the folder does not exist).
    pub static_dir: String,
    /// Connection limits and the first request head, at the edge (before HTTP parsing).
    pub http: HttpConfig,
    /// WebSocket and channel limits.
    pub socket: SocketConfig,
    /// The long-poll transport (`/socket/longpoll`).
    pub longpoll: LongPollConfig,
    /// Pub/sub registry settings.
    pub pubsub: PubSubConfig,
    /// Admin HTTP routes.
    pub admin: AdminConfig,
    /// Accounts, sessions and contacts.
    pub accounts: AccountsConfig,
    /// Message size, page sizes, the log writer's batch, and status signal limits.
    pub messaging: MessagingConfig,
    /// The presence tracker.
    pub presence: PresenceConfig,
    /// The seed-001 key directory (`/signal/websocket`).
    pub keys: KeysConfig,
    /// The broker that joins this node to others; without it the node runs alone.
    pub cluster: Option<ClusterConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: "127.0.0.1:4000".into(),
            workers: 0,
            node: "courier@localhost".into(),
            database_url: "courier.db".into(),
            database_pool: 8,
            static_dir: "priv/static".into(),
            http: HttpConfig::default(),
            socket: SocketConfig::default(),
            longpoll: LongPollConfig::default(),
            pubsub: PubSubConfig::default(),
            admin: AdminConfig::default(),
            accounts: AccountsConfig::default(),
            messaging: MessagingConfig::default(),
            presence: PresenceConfig::default(),
            keys: KeysConfig::default(),
            cluster: None,
        }
    }
}

/// What the edge enforces on every TCP connection (see `transport::edge`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Connections (HTTP and WebSocket) open at once; past it new ones get a JSON 503. 0 sets it
    /// from the file-descriptor limit, less what the process keeps for itself.
    pub max_connections: usize,
    /// Longest first request head (request line and headers) in bytes: a longer request line is
    /// a 414, longer headers a 431.
    pub max_head_bytes: usize,
    /// How long a new connection may take to send its first request head (then a 408).
    pub head_timeout_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { max_connections: 0, max_head_bytes: 32 * 1024, head_timeout_ms: 5_000 }
    }
}

/// Per-socket limits and timings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketConfig {
    /// A socket that sends nothing for this long is closed (Phoenix: 60 s).
    pub idle_timeout_ms: u64,
    /// Largest accepted WebSocket message; bigger ones close the socket with 1009.
    pub max_frame_bytes: usize,
    /// Channels one socket may join at once (Phoenix: 100).
    pub max_channels: usize,
    /// Longest accepted topic name, in bytes.
    pub max_topic_bytes: usize,
    /// Longest accepted event name, in bytes.
    pub max_event_bytes: usize,
    /// Frames queued for a socket before it counts as too slow and is closed.
    pub outbound_queue: usize,
    /// Bytes queued for a socket (and not yet written) before it counts as too slow and is closed.
    pub outbound_queue_bytes: usize,
    /// Sustained frames per second a socket may send.
    pub rate_per_sec: u32,
    /// Frames a socket may send in a burst above the sustained rate.
    pub rate_burst: u32,
    /// How long shutdown waits for sockets to finish in-flight work and close.
    pub shutdown_grace_ms: u64,
    /// Sockets open at once on the node, all endpoints; past it a connect gets a 503
    /// `node_full`. 0 derives it from the file-descriptor limit, below `http.max_connections`'s.
    pub max_connections: usize,
    /// Phoenix sockets one signed-in user may have open on the node; past it a 429
    /// `too_many_connections`. 0 for no limit.
    pub max_connections_per_user: usize,
    /// Replies a Phoenix socket may have pending (pushes still being worked on); a push past it
    /// gets an error reply `too_many_pending_replies` at once.
    pub max_pending_replies: usize,
    /// Sockets shutdown closes per batch, oldest first (Phoenix's drainer: 10,000).
    pub shutdown_drain_batch: usize,
    /// The time between two shutdown batches (Phoenix's drainer: 2 s).
    pub shutdown_drain_interval_ms: u64,
    /// Which web pages may open a socket (`true`: this server's own, `false`: any, or a list
    /// of origins; see `transport::origin`).
    pub check_origin: crate::transport::origin::OriginPolicy,
}

impl Default for SocketConfig {
    fn default() -> Self {
        SocketConfig {
            idle_timeout_ms: 60_000,
            max_frame_bytes: 1024 * 1024,
            max_channels: 100,
            max_topic_bytes: 255,
            max_event_bytes: 255,
            outbound_queue: 1024,
            outbound_queue_bytes: 1024 * 1024,
            rate_per_sec: 200,
            rate_burst: 400,
            shutdown_grace_ms: 10_000,
            max_connections: 0,
            max_connections_per_user: 100,
            max_pending_replies: 100,
            shutdown_drain_batch: 10_000,
            shutdown_drain_interval_ms: 2_000,
            check_origin: crate::transport::origin::OriginPolicy::default(),
        }
    }
}

impl SocketConfig {
    /// The outbound queue's bounds.
    pub fn queue_limits(&self) -> crate::transport::writer::QueueLimits {
        crate::transport::writer::QueueLimits { frames: self.outbound_queue, bytes: self.outbound_queue_bytes }
    }

    /// The idle timeout as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// The shutdown grace period as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// How shutdown releases the sockets.
    pub fn drain_plan(&self) -> crate::transport::admission::DrainPlan {
        crate::transport::admission::DrainPlan {
            batch: self.shutdown_drain_batch,
            interval: Duration::from_millis(self.shutdown_drain_interval_ms),
        }
    }

    /// Sockets the drain can close one batch at a time within the grace (the batches released
    /// while another interval still fits before it ends); the rest are released together.
    pub fn drain_capacity(&self) -> usize {
        let batches = match self.shutdown_drain_interval_ms {
            0 => u64::MAX,
            interval => self.shutdown_grace_ms / interval,
        };
        self.shutdown_drain_batch.saturating_mul(usize::try_from(batches).unwrap_or(usize::MAX))
    }
}

/// The long-poll transport: Phoenix's timings, and the secret its session tokens are signed with.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LongPollConfig {
    /// How long a poll is held open waiting for frames (Phoenix: 10 s).
    pub window_ms: u64,
    /// A session not polled for this long is closed and its channels end (Phoenix: 1.5 windows).
    pub idle_timeout_ms: u64,
    /// Frames one POST may carry (Phoenix: 100); more is a 413 `too_many_frames`.
    pub max_frames_per_post: usize,
    /// Bytes one POST body may hold; more is a 413 `body_too_large`.
    pub max_post_bytes: usize,
    /// Signs session tokens (at least 32 bytes; env `COURIER_LONGPOLL_SECRET`). Unset: a random
    /// one is made at start, which is enough, since sessions live in this process only.
    pub secret: Option<String>,
}

impl std::fmt::Debug for LongPollConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LongPollConfig")
            .field("window_ms", &self.window_ms)
            .field("idle_timeout_ms", &self.idle_timeout_ms)
            .field("max_frames_per_post", &self.max_frames_per_post)
            .field("max_post_bytes", &self.max_post_bytes)
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Default for LongPollConfig {
    fn default() -> Self {
        LongPollConfig {
            window_ms: 10_000,
            idle_timeout_ms: 15_000,
            max_frames_per_post: 100,
            max_post_bytes: 8 * 1024 * 1024,
            secret: None,
        }
    }
}

impl LongPollConfig {
    /// The poll window as a duration.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }

    /// The idle timeout as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    fn validate(&self) -> Result<(), String> {
        if self.window_ms < 50 || self.idle_timeout_ms < 100 {
            return Err("window_ms must be at least 50 and idle_timeout_ms at least 100".into());
        }
        if self.max_frames_per_post == 0 || self.max_post_bytes < 1024 {
            return Err("max_frames_per_post must be at least 1 and max_post_bytes at least 1024".into());
        }
        if self.secret.as_ref().is_some_and(|s| s.len() < 32) {
            return Err("secret must be at least 32 bytes (leave it out to get a random one)".into());
        }
        Ok(())
    }
}

/// Pub/sub registry settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PubSubConfig {
    /// Registry shards, each on its own thread.
    pub shards: usize,
}

impl Default for PubSubConfig {
    fn default() -> Self {
        PubSubConfig { shards: 2 }
    }
}

/// Admin routes are off unless a token is set; requests must send `Authorization: Bearer <token>`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// The admin bearer token.
    pub token: Option<String>,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The cause.
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid setting {0}: {1}")]
    Invalid(&'static str, String),
}

impl Config {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: shown, source })
    }

    /// Checks ranges that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.socket;
        let checks: [(&'static str, bool, &str); 13] = [
            ("bind", self.bind.parse::<std::net::SocketAddr>().is_ok(), "must be an IP:port address"),
            (
                "admin.token",
                self.admin.token.as_deref().is_none_or(|t| !t.trim().is_empty() && !t.chars().any(char::is_control)),
                "must not be empty or hold control characters (leave it out to get a random one)",
            ),
            (
                "http.max_head_bytes",
                (1024..=60 * 1024).contains(&self.http.max_head_bytes),
                "must be 1024..=61440 (a URL longer than 64 KiB is refused by the HTTP parser itself)",
            ),
            ("http.head_timeout_ms", self.http.head_timeout_ms >= 100, "must be at least 100"),
            ("socket.idle_timeout_ms", s.idle_timeout_ms >= 100, "must be at least 100"),
            ("socket.max_frame_bytes", s.max_frame_bytes >= 1024, "must be at least 1024"),
            ("socket.max_channels", s.max_channels >= 1, "must be at least 1"),
            ("socket.max_pending_replies", s.max_pending_replies >= 1, "must be at least 1"),
            ("socket.shutdown_drain_batch", s.shutdown_drain_batch >= 1, "must be at least 1"),
            (
                "socket.max_topic_bytes",
                (1..=255).contains(&s.max_topic_bytes),
                "must be 1..=255 (binary frames carry one length byte)",
            ),
            ("socket.outbound_queue", s.outbound_queue >= 8, "must be at least 8"),
            ("socket.outbound_queue_bytes", s.outbound_queue_bytes >= 64 * 1024, "must be at least 65536"),
            (
                "socket.rate_per_sec",
                s.rate_per_sec >= 1 && s.rate_burst >= 1,
                "rate_per_sec and rate_burst must be at least 1",
            ),
        ];
        for (name, ok, why) in checks {
            if !ok {
                return Err(ConfigError::Invalid(name, why.into()));
            }
        }
        if self.messaging.max_page_bytes.saturating_mul(2) > s.outbound_queue_bytes {
            // A catch-up page is read only once the queue has room for it, and a pull reply must
            // fit beside what is already queued.
            return Err(ConfigError::Invalid(
                "messaging.max_page_bytes",
                "must be at most half of socket.outbound_queue_bytes".into(),
            ));
        }
        if !(1..=255).contains(&s.max_event_bytes) {
            return Err(ConfigError::Invalid("socket.max_event_bytes", "must be 1..=255".into()));
        }
        if self.database_url.is_empty() || self.database_pool == 0 {
            return Err(ConfigError::Invalid("database_url", "needs a URL or path and a pool of at least 1".into()));
        }
        self.longpoll.validate().map_err(|e| ConfigError::Invalid("longpoll", e))?;
        self.messaging.validate().map_err(|e| ConfigError::Invalid("messaging", e))?;
        self.presence.validate().map_err(|e| ConfigError::Invalid("presence", e))?;
        if let Some(cluster) = &self.cluster {
            cluster.validate(&self.database_url).map_err(|e| ConfigError::Invalid("cluster", e.to_string()))?;
        }
        self.accounts.validate().map_err(|e| ConfigError::Invalid("accounts", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_phoenix() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.bind, "127.0.0.1:4000");
        assert_eq!(c.socket.idle_timeout_ms, 60_000);
        assert_eq!(c.socket.max_channels, 100);
        assert_eq!(c.socket.max_frame_bytes, 1 << 20);
    }

    #[test]
    fn file_overrides_defaults_and_unknown_keys_are_refused() {
        let c: Config = toml::from_str("bind = \"0.0.0.0:9\"\n[socket]\nmax_channels = 3\n").unwrap();
        assert_eq!(c.bind, "0.0.0.0:9");
        assert_eq!(c.socket.max_channels, 3);
        assert_eq!(c.socket.idle_timeout_ms, 60_000);
        let err = toml::from_str::<Config>("[socket]\nmax_chanels = 3\n").unwrap_err();
        assert!(err.to_string().contains("max_chanels"), "{err}");
    }

    #[cfg(all(feature = "redis", feature = "nats"))]
    #[test]
    fn a_cluster_section_is_read_and_checked() {
        let c: Config = toml::from_str("database_url = \"postgres://u@h/db\"\n[cluster]\nbroker = \"nats://127.0.0.1:4222\"\nnamespace = \"blue\"\n").unwrap();
        let cluster = c.cluster.as_ref().expect("the section is read");
        assert_eq!((cluster.broker.as_str(), cluster.namespace.as_str()), ("nats://127.0.0.1:4222", "blue"));
        assert_eq!(cluster.publish_queue, 8192, "unset keys keep their defaults");
        c.validate().unwrap();
        assert!(Config::default().cluster.is_none(), "no section, no broker: the node runs alone");
        let on_sqlite = Config { database_url: "courier.db".into(), ..c.clone() };
        let err = on_sqlite.validate().unwrap_err().to_string();
        assert!(err.contains("several nodes need PostgreSQL"), "{err}");
        let mut unknown = c.clone();
        unknown.cluster.as_mut().unwrap().broker = "amqp://h".into();
        let err = unknown.validate().unwrap_err().to_string();
        assert!(err.contains("cluster") && err.contains("redis:// or nats://"), "{err}");
        let err = toml::from_str::<Config>("[cluster]\nbrokr = \"redis://h\"\n").unwrap_err();
        assert!(err.to_string().contains("brokr"), "{err}");
    }

    #[test]
    fn socket_limits_default_to_phoenix_drain_and_sensible_caps() {
        let s = SocketConfig::default();
        assert_eq!((s.shutdown_drain_batch, s.shutdown_drain_interval_ms), (10_000, 2_000));
        assert_eq!((s.max_connections, s.max_connections_per_user, s.max_pending_replies), (0, 100, 100));
        // 10 s of grace at 2 s apart: five batches of 10,000 drain in order.
        assert_eq!(s.drain_capacity(), 50_000);
        let mut c = Config::default();
        c.socket.shutdown_drain_batch = 0;
        assert!(c.validate().unwrap_err().to_string().contains("shutdown_drain_batch"));
        let mut c = Config::default();
        c.socket.max_pending_replies = 0;
        assert!(c.validate().unwrap_err().to_string().contains("max_pending_replies"));
    }

    #[test]
    fn validation_names_the_bad_setting() {
        let c = Config { bind: "nope".into(), ..Config::default() };
        assert!(c.validate().unwrap_err().to_string().contains("bind"));
        let mut c = Config::default();
        c.socket.max_topic_bytes = 300;
        assert!(c.validate().unwrap_err().to_string().contains("max_topic_bytes"));
        // The HTTP parser refuses URLs over 64 KiB itself, with an empty body: the edge's head
        // limit must stay under that to answer them.
        let mut c = Config::default();
        c.http.max_head_bytes = 64 * 1024;
        assert!(c.validate().unwrap_err().to_string().contains("http.max_head_bytes"));
    }
}
