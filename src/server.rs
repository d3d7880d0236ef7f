//! The composition root: builds the pub/sub layer, the channel router, the HTTP server and its
//! routes, and runs graceful shutdown. Concrete backends are chosen here and nowhere else.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::rc::Rc;

use actix_http::{HttpService, Protocol};
use actix_service::{
    IntoServiceFactory, Service, ServiceFactory, ServiceFactoryExt, fn_factory, fn_service, map_config,
};
use actix_web::dev::{AppConfig, ServerHandle};
use actix_web::{App, web};

use crate::accounts::{Accounts, LastSeen};
use crate::channels::auth::{AnnounceSessionEnds, SessionAuthenticator};
use crate::channels::presence::PresenceChannels;
use crate::channels::room::RoomChannels;
use crate::channels::user::UserChannels;
use crate::channels::{ChannelFactory, Router, SocketAuthenticator};
use crate::clock::{self, Clock};
use crate::config::Config;
use crate::http::admin::{self, AdminState};
use crate::http::health::HealthState;
use crate::keys::Keys;
use crate::messaging::Messaging;
use crate::messaging::signals::Signals;
use crate::presence::{Engine, Tracker};
use crate::pubsub::{Broker, LocalBroker, PubSub, TopicKind};
use crate::store::{Store, StoreOptions};
use crate::transport::admission::{self, AdmissionLimits, DrainPlan};
use crate::transport::edge::{self, Edge, EdgeLimits};
use crate::transport::json_socket::JsonEndpoint;
use crate::transport::longpoll::LongPollEndpoint;
use crate::transport::longpoll::token::TokenKey;
use crate::transport::signal_socket::SignalEndpoint;
use crate::transport::upgrade::{self, Upgrades};
use crate::transport::{Sockets, TransportState};

/// The channel families every Courier serves; leaving devices are reported to `last_seen`.
pub fn default_router(
    accounts: &Accounts,
    messaging: &Messaging,
    signals: &Signals,
    tracker: &Arc<dyn Tracker>,
    last_seen: &LastSeen,
    clock: &Arc<dyn Clock>,
    keys: &Keys,
) -> Router {
    let user = UserChannels::new(
        accounts.clone(),
        messaging.clone(),
        signals.clone(),
        Arc::clone(tracker),
        last_seen.clone(),
        keys.clone(),
    );
    Router::new()
        .channel(&TopicKind::Room.pattern(), RoomChannels::new(Arc::clone(tracker), Arc::clone(clock)))
        .channel(&TopicKind::User.pattern(), user)
        .channel(&TopicKind::Presence.pattern(), PresenceChannels::new(accounts.clone(), Arc::clone(tracker)))
}

/// A server being assembled: configuration plus the pluggable parts.
pub struct Courier {
    config: Config,
    extra_channels: Router,
    authenticator: Option<Arc<dyn SocketAuthenticator>>,
    broker: Option<Arc<dyn Broker>>,
    clock: Option<Arc<dyn Clock>>,
}

impl Courier {
    /// A server with the default channels, session-token sockets, the single-node broker and
    /// the wall clock.
    pub fn new(config: Config) -> Self {
        Courier { config, extra_channels: Router::new(), authenticator: None, broker: None, clock: None }
    }

    /// Replaces the wall clock every part of the server reads time from (tests pass a
    /// [`crate::clock::ManualClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Replaces the session-token socket authenticator.
    pub fn authenticator(mut self, authenticator: impl SocketAuthenticator) -> Self {
        self.authenticator = Some(Arc::new(authenticator));
        self
    }

    /// Adds a channel family (checked after the built-in ones).
    pub fn channel(mut self, pattern: &str, factory: impl ChannelFactory) -> Self {
        self.extra_channels = self.extra_channels.channel(pattern, factory);
        self
    }

    /// Replaces the broker that carries broadcasts to other nodes (else `[cluster]` picks one,
    /// or the node runs alone).
    pub fn broker(mut self, broker: Arc<dyn Broker>) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Binds and starts serving. Must run inside an actix system.
    pub async fn start(self) -> io::Result<RunningServer> {
        let Courier { config, extra_channels, authenticator, broker, clock } = self;
        let clock = clock.unwrap_or_else(clock::system);
        let options = StoreOptions {
            url: config.database_url.clone(),
            pool_size: config.database_pool,
            ..StoreOptions::default()
        };
        // Opening runs the migrations; it blocks, so it runs off the async thread.
        let store = web::block(move || Store::open_with(&options))
            .await
            .map_err(io::Error::other)?
            .map_err(|e| io::Error::other(format!("opening the database: {e}")))?;
        tracing::info!(backend = ?store.backend(), "database ready");
        let accounts = Accounts::with_clock(store.clone(), config.accounts.clone(), Arc::clone(&clock))
            .map_err(io::Error::other)?;
        // Accounts made before username keys get theirs before anyone can sign up beside them.
        accounts.backfill_username_keys().await.map_err(|e| io::Error::other(format!("filling username keys: {e}")))?;
        let authenticator = authenticator.unwrap_or_else(|| Arc::new(SessionAuthenticator::new(accounts.clone())));
        // Presence and the signal relays' state are shared whenever a broker joins this node to others.
        let clustered = broker.is_some() || config.cluster.is_some();
        let broker: Arc<dyn Broker> = match (broker, &config.cluster) {
            (Some(broker), _) => broker,
            (None, Some(cluster)) => {
                cluster.validate(&config.database_url).map_err(io::Error::other)?;
                cluster.connect(&config.node).await.map_err(io::Error::other)?
            }
            (None, None) => Arc::new(LocalBroker::new(config.node.clone())),
        };
        // Before serving: two nodes of one name would take each other's connection ids and
        // admin targets, so the second is refused here.
        broker.claim().await.map_err(io::Error::other)?;
        let pubsub = PubSub::start(config.pubsub.shards, broker);
        accounts.notify_session_ends(Arc::new(AnnounceSessionEnds(pubsub.clone())));
        let store_handle = store.clone();
        let health =
            web::Data::new(HealthState { store: store.clone(), node: config.node.clone(), pubsub: pubsub.clone() });
        let policy = accounts.message_policy();
        let signals =
            Signals::start(store.clone(), pubsub.clone(), &config.messaging, policy, Arc::clone(&clock), clustered);
        let keys = Keys::new(store.clone(), pubsub.clone(), config.keys.clone(), Arc::clone(&clock));
        let messaging = Messaging::start(store, pubsub.clone(), config.messaging.clone(), policy, Arc::clone(&clock));
        let presence = Engine::start(&config.presence, pubsub.clone(), Arc::clone(&clock), clustered);
        let tracker: Arc<dyn Tracker> = presence.tracker();
        let last_seen = LastSeen::start(accounts.clone());
        let router =
            default_router(&accounts, &messaging, &signals, &tracker, &last_seen, &clock, &keys).merge(extra_channels);
        let background = Background {
            store: store_handle,
            accounts: accounts.clone(),
            last_seen,
            messaging: messaging.clone(),
            signals,
            tracker: presence,
            pubsub: pubsub.clone(),
        };
        let workers = match config.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let sockets = Arc::new(Sockets::with_limits(pubsub.node_id().clone(), socket_limits(&config, workers)));
        let transport = Arc::new(TransportState {
            router: Arc::new(router),
            pubsub: pubsub.clone(),
            authenticator,
            settings: Arc::new(config.socket.clone()),
            sockets: Arc::clone(&sockets),
        });
        let longpoll_secret = config.longpoll.secret.clone().map_or_else(
            || {
                tracing::info!(
                    "long-poll tokens are signed with a secret made at start (set longpoll.secret to choose one)"
                );
                rand::random::<[u8; 32]>().to_vec()
            },
            String::into_bytes,
        );
        let longpoll = web::Data::new(LongPollEndpoint::new(
            Arc::clone(&transport),
            config.longpoll.clone(),
            TokenKey::new(&longpoll_secret, &config.node),
        ));
        let admin_token = config.admin.token.clone().unwrap_or_else(|| {
            let token = admin::generate_token();
            // Straight to stderr, once, and not through tracing: log pipelines keep no copy.
            eprintln!("admin token (set admin.token or COURIER_ADMIN_TOKEN to choose one): {token}");
            token
        });
        let admin = web::Data::new(AdminState {
            token: admin_token,
            pubsub: pubsub.clone(),
            sockets: Arc::clone(&sockets),
            node: config.node.clone(),
            tracker: Arc::clone(&tracker),
            messaging: messaging.clone(),
            started: std::time::Instant::now(),
        });
        let json = Arc::new(JsonEndpoint {
            accounts: accounts.clone(),
            pubsub: pubsub.clone(),
            sockets: Arc::clone(&sockets),
            settings: Arc::new(config.socket.clone()),
        });
        let signal = Arc::new(SignalEndpoint {
            keys: keys.clone(),
            messaging: messaging.clone(),
            pubsub: pubsub.clone(),
            sockets: Arc::clone(&sockets),
            settings: Arc::new(config.socket.clone()),
        });
        let purge = spawn_session_purge(&accounts, &keys, &config.accounts);
        let sampler = crate::metrics::spawn_sampler();
        let accounts = web::Data::new(accounts);
        let keys = web::Data::new(keys);
        let static_dir = std::path::Path::new(&config.static_dir).is_dir().then(|| config.static_dir.clone());
        let upgrades = Upgrades::new()
            .endpoint("/socket/websocket", transport)
            .endpoint("/json/websocket", json)
            .endpoint("/signal/websocket", signal);
        let max_connections = match config.http.max_connections {
            0 => edge::connection_limit_from_fd_limit(config.database_pool, workers),
            n => n,
        };
        let edge = Arc::new(Edge::new(EdgeLimits {
            max_connections,
            max_head_bytes: config.http.max_head_bytes,
            head_timeout: Duration::from_millis(config.http.head_timeout_ms),
        }));
        let listener = std::net::TcpListener::bind(&config.bind)?;
        let addr = listener.local_addr()?;
        let server = actix_server::Server::build()
            .workers(workers)
            .disable_signals()
            .shutdown_timeout(2)
            .listen("courier", listener, move || {
                // The same paths as the upgrades, so a plain GET there says why it is no socket.
                let app = upgrades
                    .paths()
                    .fold(App::new(), |app, path| app.route(path, web::get().to(upgrade::not_upgraded)));
                let app = app
                    .app_data(admin.clone())
                    .app_data(health.clone())
                    .app_data(accounts.clone())
                    .app_data(keys.clone())
                    .app_data(longpoll.clone())
                    .app_data(crate::http::json_config())
                    .configure(admin::configure)
                    .configure(crate::http::health::configure)
                    .configure(crate::http::api::configure)
                    .configure(crate::transport::longpoll::configure);
                let app = match &static_dir {
                    Some(dir) => app.service(
                        actix_files::Files::new("/", dir)
                            .index_file("index.html")
                            .default_handler(web::to(crate::http::not_found)),
                    ),
                    None => app.default_service(web::to(crate::http::not_found)),
                };
                let upgrades = upgrades.clone();
                let http = HttpService::build()
                    .local_addr(addr)
                    // WebSocket handshakes leave the HTTP dispatcher (see `transport::upgrade`).
                    .upgrade(fn_factory(move || {
                        let upgrades = upgrades.clone();
                        async move {
                            Ok::<_, ()>(fn_service(move |(req, framed)| upgrades.clone().handle(req, framed)))
                        }
                    }))
                    .finish(map_config(
                        app.into_factory().map_err(|err| err.error_response()),
                        |_| AppConfig::default(),
                    ));
                behind_edge(Arc::clone(&edge), http)
            })?
            .run();
        let handle = server.handle();
        let task = actix_web::rt::spawn(server);
        tracing::info!(%addr, workers, max_connections, node = config.node, "listening on {addr}");
        Ok(RunningServer {
            addr,
            handle,
            task,
            sockets,
            background,
            purge,
            sampler,
            grace: config.socket.shutdown_grace(),
            drain: config.socket.drain_plan(),
        })
    }
}

/// The socket limits from `[socket]`, the node's derived from the descriptor limit when 0; both
/// are logged, with how many sockets the shutdown drain closes in batches within the grace.
fn socket_limits(config: &Config, workers: usize) -> AdmissionLimits {
    let s = &config.socket;
    let max_connections = match s.max_connections {
        0 => admission::socket_limit_from_connection_limit(edge::connection_limit_from_fd_limit(
            config.database_pool,
            workers,
        )),
        n => n,
    };
    let limits = AdmissionLimits { max_connections, max_connections_per_user: s.max_connections_per_user };
    let drained_in_batches = s.drain_capacity();
    tracing::info!(
        max_connections,
        max_connections_per_user = s.max_connections_per_user,
        drained_in_batches,
        "socket limits"
    );
    // Only for a limit an operator chose: the derived one is a ceiling few nodes ever reach.
    if s.max_connections != 0 && max_connections > drained_in_batches {
        tracing::warn!(
            max_connections,
            drained_in_batches,
            "a full node would not drain in batches within socket.shutdown_grace_ms: the sockets past \
             shutdown_drain_batch x (shutdown_grace_ms / shutdown_drain_interval_ms) close together at its end"
        );
    }
    crate::metrics::global().socket_limit.set(i64::try_from(max_connections).unwrap_or(i64::MAX));
    limits
}

/// Deletes ended sessions every `session_purge_every_secs`, so the sessions table holds live
/// ones (and a grace of ended ones) rather than every sign-in ever made; key users' sign-in
/// challenges that expired unanswered go in the same round.
fn spawn_session_purge(
    accounts: &Accounts,
    keys: &Keys,
    config: &crate::accounts::AccountsConfig,
) -> Option<actix_web::rt::task::JoinHandle<()>> {
    let every = Duration::from_secs(config.session_purge_every_secs);
    if every.is_zero() {
        return None;
    }
    let (accounts, keys, grace) = (accounts.clone(), keys.clone(), config.session_purge_grace_secs);
    Some(actix_web::rt::spawn(async move {
        let mut ticks = actix_web::rt::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match accounts.purge_sessions(grace).await {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "ended sessions deleted"),
                Err(e) => tracing::warn!(error = %e, "deleting ended sessions failed; retrying next round"),
            }
            match keys.purge_challenges().await {
                Ok(0) => {}
                Ok(purged) => tracing::debug!(purged, "expired key sign-in challenges deleted"),
                Err(e) => tracing::warn!(error = %e, "deleting expired key challenges failed; retrying next round"),
            }
        }
    }))
}

/// Puts `http` behind the edge: each TCP connection is admitted (or answered) by [`Edge`] first.
fn behind_edge<F>(
    edge: Arc<Edge>,
    http: F,
) -> impl ServiceFactory<tokio::net::TcpStream, Config = (), Response = (), Error = F::Error, InitError = ()>
where
    F: ServiceFactory<(edge::Conn, Protocol, Option<SocketAddr>), Config = (), Response = (), InitError = ()> + 'static,
    F::Service: 'static,
{
    let http = Rc::new(http);
    fn_factory(move || {
        let (edge, http) = (Arc::clone(&edge), Rc::clone(&http));
        async move {
            let service = Rc::new(http.new_service(()).await?);
            Ok::<_, ()>(fn_service(move |io: tokio::net::TcpStream| {
                let (edge, service) = (Arc::clone(&edge), Rc::clone(&service));
                async move {
                    // Chat frames are small and latency-bound: without this, a frame written
                    // right after another waits for the client's delayed ACK (~40 ms).
                    let _ = io.set_nodelay(true);
                    let peer = io.peer_addr().ok();
                    match edge.admit(io).await {
                        Some(conn) => service.call((conn, Protocol::Http1, peer)).await,
                        None => Ok(()),
                    }
                }
            }))
        }
    })
}

/// What runs behind the sockets: the queue workers, actors and arbiter threads the server
/// started, which shutdown stops once the sockets have closed. A clone is a probe of them.
#[derive(Clone)]
pub struct Background {
    store: Store,
    accounts: Accounts,
    last_seen: LastSeen,
    messaging: Messaging,
    signals: Signals,
    tracker: Engine,
    pubsub: PubSub,
}

impl Background {
    /// Stops every part in an order that loses no queued work: hashes in flight finish, the
    /// writers commit what the closed sockets queued (and announce it), the signal relay ends,
    /// the tracker shards publish their last diffs, then pub/sub's registry stops, and last
    /// SQLite's checkpoint thread.
    async fn stop(&self, deadline: Instant) {
        while self.accounts.hashing_stats().running > 0 && Instant::now() < deadline {
            actix_web::rt::time::sleep(Duration::from_millis(10)).await;
        }
        self.last_seen.stop().await;
        self.messaging.stop().await;
        self.signals.stop().await;
        self.tracker.stop().await;
        self.pubsub.stop();
        self.pubsub.release_name().await;
        self.store.stop_checkpoints().await;
    }

    /// The parts still running, by name; empty once shutdown is over (pub/sub's registry
    /// threads end a moment after it returns).
    pub async fn running(&self) -> Vec<&'static str> {
        let hashing = self.accounts.hashing_stats().running > 0;
        // The registry answers only while its arbiter threads run.
        let registry = self.pubsub.subscriber_count("background:probe").await.is_ok();
        [
            ("password hashing", hashing),
            ("last-seen writer", self.last_seen.running()),
            ("message log writer", self.messaging.writer_running()),
            ("signal relay", self.signals.running()),
            ("presence tracker", self.tracker.running()),
            ("pubsub registry", registry),
            ("sqlite checkpointer", self.store.checkpointing()),
        ]
        .into_iter()
        .filter_map(|(name, running)| running.then_some(name))
        .collect()
    }
}

/// A started server.
pub struct RunningServer {
    addr: SocketAddr,
    handle: ServerHandle,
    task: actix_web::rt::task::JoinHandle<io::Result<()>>,
    sockets: Arc<Sockets>,
    background: Background,
    /// The scheduled session purge, stopped at shutdown.
    purge: Option<actix_web::rt::task::JoinHandle<()>>,
    /// The metrics' once-a-second sampler, stopped at shutdown.
    sampler: actix_web::rt::task::JoinHandle<()>,
    grace: Duration,
    drain: DrainPlan,
}

impl RunningServer {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The pub/sub layer, for in-process publishers.
    pub fn pubsub(&self) -> &PubSub {
        &self.background.pubsub
    }

    /// A probe of the workers, actors and threads behind the sockets (see [`Background`]).
    pub fn background(&self) -> Background {
        self.background.clone()
    }

    /// Sockets currently open.
    pub fn live_sockets(&self) -> usize {
        self.sockets.live()
    }

    /// Waits for ctrl-c or SIGTERM, then shuts down gracefully.
    pub async fn run_until_signal(self) -> io::Result<()> {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        self.shutdown().await
    }

    /// Stops accepting, releases the sockets in batches, oldest first, each to finish its
    /// in-flight work and close with 1001 (see `transport::admission`), stops the HTTP workers,
    /// then everything behind the sockets (see [`Background`]).
    pub async fn shutdown(self) -> io::Result<()> {
        if let Some(purge) = self.purge {
            purge.abort();
            // An abort lands at the task's next await; waiting makes sure no purge outlives us.
            let _ = purge.await;
        }
        self.sampler.abort();
        let _ = self.sampler.await;
        self.handle.pause().await;
        let deadline = Instant::now() + self.grace;
        self.sockets.drain(self.drain, deadline).await;
        if self.sockets.live() > 0 {
            tracing::warn!(remaining = self.sockets.live(), "shutdown grace period over; dropping sockets");
        }
        self.handle.stop(true).await;
        let result = self.task.await.unwrap_or_else(|e| Err(io::Error::other(e)));
        self.background.stop(deadline).await;
        tracing::info!("server stopped");
        result
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
