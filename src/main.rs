//! The `courier` binary: command line → config → tracing → server.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use courier::{Config, Courier};

// glibc's malloc keeps a per-thread arena for every blocking thread that ever ran an argon2
// hash or a database batch, and rarely gives their pages back: 1,000 signups left the server at
// 1 GB, and a chat run held 700 MB. jemalloc returns freed pages to the system (a chat run now
// peaks under 100 MB) and keeps idle sockets as small as glibc did; mimalloc, also tried, cost
// 8 KB more per idle socket.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Courier: Phoenix Channels messaging server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Address to listen on, e.g. 127.0.0.1:4000.
    #[arg(long, env = "COURIER_BIND")]
    bind: Option<String>,
    /// Database: `postgres://...` or a SQLite file path (default `courier.db`).
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// This node's name (`node`); each node of a cluster needs its own, e.g. courier@a.
    #[arg(long, env = "COURIER_NODE")]
    node: Option<String>,
    /// A TOML config file; its values override the defaults.
    #[arg(long, env = "COURIER_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = match &cli.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(bind) = cli.bind {
        config.bind = bind;
    }
    if let Some(node) = cli.node {
        config.node = node;
    }
    if let Some(url) = cli.database_url {
        config.database_url = url;
    }
    // From the environment only: a flag would show the token to anyone who can list processes.
    if let Ok(token) = std::env::var("COURIER_ADMIN_TOKEN") {
        config.admin.token = Some(token);
    }
    if let Ok(secret) = std::env::var("COURIER_LONGPOLL_SECRET") {
        config.longpoll.secret = Some(secret);
    }
    // From the environment only, like the token: a broker URL may carry its password.
    if let Ok(broker) = std::env::var("COURIER_BROKER") {
        config.cluster.get_or_insert_with(Default::default).broker = broker;
    }
    config.validate()?;
    courier::logging::init(std::io::stderr().is_terminal());
    actix_web::rt::System::new().block_on(async move {
        let server = Courier::new(config).start().await.context("starting the server")?;
        server.run_until_signal().await.context("running the server")
    })
}
