//! The composition root: builds the pub/sub layer, the channel router, the HTTP server and its
//! routes, and runs graceful shutdown. Concrete backends are chosen here and nowhere else.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer, web};

use crate::channels::room::RoomChannels;
use crate::channels::{AnonymousSockets, ChannelFactory, Router, SocketAuthenticator};
use crate::config::Config;
use crate::http::admin::{self, AdminState};
use crate::pubsub::{Broker, LocalBroker, PubSub};
use crate::transport::{Sockets, TransportState, websocket};

/// The channel families every Courier serves.
pub fn default_router() -> Router {
    Router::new().channel("room:*", RoomChannels)
}

/// A server being assembled: configuration plus the pluggable parts.
pub struct Courier {
    config: Config,
    router: Router,
    authenticator: Arc<dyn SocketAuthenticator>,
    broker: Option<Arc<dyn Broker>>,
}

impl Courier {
    /// A server with the default channels, anonymous sockets and the single-node broker.
    pub fn new(config: Config) -> Self {
        Courier { config, router: default_router(), authenticator: Arc::new(AnonymousSockets), broker: None }
    }

    /// Replaces the socket authenticator.
    pub fn authenticator(mut self, authenticator: impl SocketAuthenticator) -> Self {
        self.authenticator = Arc::new(authenticator);
        self
    }

    /// Adds a channel family (checked after the ones already routed).
    pub fn channel(mut self, pattern: &str, factory: impl ChannelFactory) -> Self {
        self.router = self.router.channel(pattern, factory);
        self
    }

    /// Replaces the broker that carries broadcasts to other nodes.
    pub fn broker(mut self, broker: Arc<dyn Broker>) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Binds and starts serving. Must run inside an actix system.
    pub async fn start(self) -> io::Result<RunningServer> {
        let Courier { config, router, authenticator, broker } = self;
        let broker = broker.unwrap_or_else(|| Arc::new(LocalBroker::new(config.node.clone())));
        let pubsub = PubSub::start(config.pubsub.shards, broker);
        let sockets = Arc::new(Sockets::default());
        let transport = web::Data::new(TransportState {
            router: Arc::new(router),
            pubsub: pubsub.clone(),
            authenticator,
            settings: Arc::new(config.socket.clone()),
            sockets: Arc::clone(&sockets),
        });
        let admin = web::Data::new(AdminState {
            token: config.admin.token.clone(),
            pubsub: pubsub.clone(),
            sockets: Arc::clone(&sockets),
            node: config.node.clone(),
        });
        let workers = match config.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let server = HttpServer::new(move || {
            App::new()
                .app_data(transport.clone())
                .app_data(admin.clone())
                .app_data(crate::http::json_config())
                .route("/socket/websocket", web::get().to(websocket::upgrade))
                .configure(admin::configure)
                .default_service(web::to(crate::http::not_found))
        })
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(2)
        .bind(&config.bind)?;
        let addr = server.addrs().first().copied().ok_or_else(|| io::Error::other("no address bound"))?;
        let server = server.run();
        let handle = server.handle();
        let task = actix_web::rt::spawn(server);
        tracing::info!(%addr, workers, node = config.node, "listening on {addr}");
        Ok(RunningServer { addr, handle, task, sockets, pubsub, grace: config.socket.shutdown_grace() })
    }
}

/// A started server.
pub struct RunningServer {
    addr: SocketAddr,
    handle: ServerHandle,
    task: actix_web::rt::task::JoinHandle<io::Result<()>>,
    sockets: Arc<Sockets>,
    pubsub: PubSub,
    grace: Duration,
}

impl RunningServer {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The pub/sub layer, for in-process publishers.
    pub fn pubsub(&self) -> &PubSub {
        &self.pubsub
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

    /// Stops accepting, lets every socket finish its in-flight work and close with 1001, then stops.
    pub async fn shutdown(self) -> io::Result<()> {
        self.handle.pause().await;
        self.sockets.shut_down();
        let deadline = Instant::now() + self.grace;
        while self.sockets.live() > 0 && Instant::now() < deadline {
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
        if self.sockets.live() > 0 {
            tracing::warn!(remaining = self.sockets.live(), "shutdown grace period over; dropping sockets");
        }
        self.handle.stop(true).await;
        let result = self.task.await.unwrap_or_else(|e| Err(io::Error::other(e)));
        self.pubsub.stop();
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
