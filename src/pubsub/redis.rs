//! The Redis broker: a node's broadcasts go out as `PUBLISH`es on one connection, in order and
//! pipelined, and come in on a second connection in subscribe mode, one channel per topic this
//! node listens to (`{namespace}:t:_{base64url(topic)}`). Both reconnect by themselves; the
//! subscriber re-subscribes every topic the node still has interest in. Redis delivers a
//! publisher its own broadcasts back when it listens to the topic too; [`Inbound`] drops them.
//!
//! What an interruption loses is made good from the database: a subscriber connection that
//! comes back has this node's inboxes re-read once it has re-subscribed, and a publisher that
//! had to drop broadcasts sends the other nodes a loss notice once Redis takes publishes again.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::cluster::{BrokerError, ClusterConfig};
use super::remote::{BrokerThread, Control, KeeperStop, LossNotice, Outbox, Outgoing, Running, backoff, topic_key};
use super::{Broadcast, Broker, Inbound, InterestTaken, topic};
use futures_util::future::BoxFuture;
use tokio::sync::oneshot;

/// Takes the name key for `ARGV[1]` (this incarnation's token) for `ARGV[2]` ms, or extends it
/// when it holds the token already: 1, or 0 when another incarnation holds it. One script, so
/// the check and the write cannot interleave with another node's.
const CLAIM: &str = "local holder = redis.call('GET', KEYS[1]) \
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end \
if holder then return 0 end \
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1";

/// Deletes the name key if this incarnation still holds it.
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// Most broadcasts sent to Redis in one pipeline.
const BATCH: usize = 256;

/// A broker over Redis pub/sub.
pub struct RedisBroker {
    node: String,
    namespace: String,
    client: redis::Client,
    settings: ClusterConfig,
    shared: Arc<Shared>,
    /// Set at start: the way to the subscriber task and the outbox the publisher drains.
    running: OnceLock<Running>,
    /// The name claim's keeper, once claimed.
    keeper: KeeperStop,
    thread: BrokerThread,
}

/// What the broker's tasks and its handle both see.
struct Shared {
    /// The channels this node has interest in: what a fresh subscriber connection subscribes.
    channels: Mutex<HashSet<String>>,
    subscriber_up: AtomicBool,
    publisher_up: AtomicBool,
}

impl RedisBroker {
    /// A broker for the node called `node`, on the Redis server `settings.broker` names. It
    /// connects once started.
    pub fn new(settings: &ClusterConfig, node: &str) -> Result<Self, BrokerError> {
        let client = redis::Client::open(settings.broker.as_str()).map_err(|e| BrokerError::BadUrl(e.to_string()))?;
        Ok(RedisBroker {
            node: node.to_owned(),
            namespace: settings.namespace.clone(),
            client,
            settings: settings.clone(),
            shared: Arc::new(Shared {
                channels: Mutex::new(HashSet::new()),
                subscriber_up: AtomicBool::new(false),
                publisher_up: AtomicBool::new(false),
            }),
            running: OnceLock::new(),
            keeper: KeeperStop::default(),
            thread: BrokerThread::start("courier-redis")?,
        })
    }

    fn channel(&self, topic: &str) -> String {
        topic_key(&self.namespace, ':', topic)
    }

    fn channels(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.shared.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Broker for RedisBroker {
    fn node(&self) -> &str {
        &self.node
    }

    fn start(&self, inbound: Inbound) {
        let capacity = self.settings.publish_queue;
        let Some(started) = Running::start(&self.running, inbound, capacity, self.channel(topic::RESYNC)) else {
            return;
        };
        let link =
            Link { client: self.client.clone(), shared: Arc::clone(&self.shared), settings: self.settings.clone() };
        self.thread.spawn(link.clone().subscribe(started.inbound, started.commands));
        self.thread.spawn(link.publish(started.outbox, started.queued, started.notice));
        // The other nodes' loss notices, for as long as the broker lives.
        drop(self.interest(topic::RESYNC, true));
    }

    fn interest(&self, topic: &str, interested: bool) -> InterestTaken {
        let Some(running) = self.running.get() else { return Box::pin(std::future::ready(())) };
        let channel = self.channel(topic);
        // The set first: a subscriber connection opened from here on subscribes what it holds.
        if interested {
            self.channels().insert(channel.clone());
        } else {
            self.channels().remove(&channel);
        }
        running.interest(channel, interested)
    }

    fn publish(&self, broadcast: &Arc<Broadcast>) {
        // Before start the node has no id to stamp on what it sends (and no publisher task).
        if let Some(running) = self.running.get() {
            running.publish(self.channel(&broadcast.topic), broadcast);
        }
    }

    fn connected(&self) -> bool {
        self.shared.subscriber_up.load(Ordering::Relaxed) && self.shared.publisher_up.load(Ordering::Relaxed)
    }

    fn claim(&self) -> BoxFuture<'static, Result<(), BrokerError>> {
        let claim = NameClaim {
            client: self.client.clone(),
            key: format!("{}:node:{}", self.namespace, self.node),
            token: uuid::Uuid::new_v4().simple().to_string(),
            node: self.node.clone(),
            namespace: self.namespace.clone(),
            settings: self.settings.clone(),
        };
        let (stop, stopped) = oneshot::channel();
        self.keeper.set(stop);
        let first = self.thread.spawn(claim.hold(stopped));
        let node = self.node.clone();
        Box::pin(async move { first.await.map_err(|e| BrokerError::Claim(node, e.to_string()))? })
    }

    fn release(&self) -> BoxFuture<'static, ()> {
        self.keeper.stop()
    }
}

/// This node's claim on its name: a key `{namespace}:node:{name}` holding a token of this
/// incarnation, set with a TTL and refreshed every third of it. A node that dies stops
/// refreshing, so its name is free again once the TTL lapses (`cluster.node_claim_ttl_ms`).
struct NameClaim {
    client: redis::Client,
    key: String,
    token: String,
    node: String,
    namespace: String,
    settings: ClusterConfig,
}

impl NameClaim {
    /// Claims the name, answers with the first attempt's outcome through the task's result, and
    /// keeps refreshing (on the broker's thread) until stopped. A Redis that cannot be reached
    /// at start does not stop the node (as with broadcasts, it joins once Redis is up): the
    /// claim is taken on the first refresh that reaches it.
    async fn hold(self, mut stopped: oneshot::Receiver<oneshot::Sender<()>>) -> Result<(), BrokerError> {
        let mut connection = self.connect().await;
        let first = self.refresh(&mut connection).await;
        match first {
            Some(true) => tracing::info!(node = self.node, key = self.key, "node name claimed"),
            Some(false) => {
                return Err(BrokerError::NameTaken { node: self.node, namespace: self.namespace });
            }
            None => tracing::warn!(
                node = self.node,
                "redis broker: cannot check the node name yet; claiming it once redis answers"
            ),
        }
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(self.settings.node_claim_ttl() / 3);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            let mut held = first == Some(true);
            let done = loop {
                tokio::select! {
                    done = &mut stopped => break done.ok(),
                    _ = ticks.tick() => {}
                }
                match self.refresh(&mut connection).await {
                    Some(now) if now != held => {
                        held = now;
                        if now {
                            tracing::info!(node = self.node, "node name claimed");
                        } else {
                            tracing::error!(
                                node = self.node,
                                "another node holds this node's name on the cluster (its claim lapsed while redis was out of reach); give each node its own name"
                            );
                        }
                    }
                    _ => {}
                }
            };
            if let Some(conn) = connection.as_mut() {
                let mut released = redis::cmd("EVAL");
                released.arg(RELEASE).arg(1).arg(&self.key).arg(&self.token);
                let _ = released.query_async::<i64>(conn).await;
            }
            if let Some(done) = done {
                let _ = done.send(());
            }
        });
        Ok(())
    }

    /// A connection for the claim, or `None` when Redis does not answer.
    async fn connect(&self) -> Option<redis::aio::MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.settings.connect_timeout()))
            .set_response_timeout(Some(self.settings.connect_timeout()));
        self.client.get_multiplexed_async_connection_with_config(&config).await.ok()
    }

    /// Takes or extends the claim: whether this node holds it, or `None` when Redis did not
    /// answer (the connection is dropped, and opened again next time).
    async fn refresh(&self, connection: &mut Option<redis::aio::MultiplexedConnection>) -> Option<bool> {
        if connection.is_none() {
            *connection = self.connect().await;
        }
        let conn = connection.as_mut()?;
        let ttl = self.settings.node_claim_ttl_ms;
        let mut claimed = redis::cmd("EVAL");
        claimed.arg(CLAIM).arg(1).arg(&self.key).arg(&self.token).arg(ttl);
        match claimed.query_async::<i64>(conn).await {
            Ok(held) => Some(held == 1),
            Err(e) => {
                tracing::debug!(error = %e, "redis broker: refreshing the node name claim failed");
                *connection = None;
                None
            }
        }
    }
}

/// What both connection tasks need to reach Redis.
#[derive(Clone)]
struct Link {
    client: redis::Client,
    shared: Arc<Shared>,
    settings: ClusterConfig,
}

impl Link {
    /// The subscriber connection, for as long as the broker lives: connect, subscribe every
    /// channel of interest, then follow messages and commands until the connection breaks.
    async fn subscribe(self, inbound: Inbound, mut commands: mpsc::UnboundedReceiver<Control>) {
        let mut attempt = 0;
        // Whether broadcasts may have been missed: a connection lost, or a first one refused
        // (sockets join meanwhile).
        let mut interrupted = false;
        loop {
            let (mut sink, mut stream, channels) = match self.open().await {
                Ok(opened) => opened,
                Err(error) => {
                    if attempt == 0 {
                        tracing::warn!(error, "redis broker: cannot open the subscriber connection; retrying");
                    }
                    interrupted = true;
                    if !pause(backoff(attempt, self.settings.reconnect_max()), &mut commands).await {
                        return;
                    }
                    attempt = attempt.saturating_add(1);
                    continue;
                }
            };
            self.shared.subscriber_up.store(true, Ordering::Relaxed);
            if interrupted {
                // Re-subscribed: what is published from here on arrives, and the logs hold
                // what was published meanwhile.
                tracing::info!(channels, "redis broker: subscriber connection back; re-reading the live inboxes");
                inbound.resync();
            }
            attempt = 0;
            let mut pings = tokio::time::interval(self.settings.ping_interval());
            pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            pings.tick().await;
            let lost = loop {
                tokio::select! {
                    message = stream.next() => match message {
                        Some(message) => {
                            if let Err(e) = inbound.deliver(message.get_payload_bytes()) {
                                tracing::warn!(error = %e, channel = message.get_channel_name(), "redis broker: node broadcast refused");
                            }
                        }
                        None => break "the connection closed".to_owned(),
                    },
                    command = commands.recv() => match command {
                        None => return,
                        Some(Control::Subscribe(channel, ack)) => match sink.subscribe(&channel).await {
                            Ok(()) => { let _ = ack.send(()); }
                            Err(e) => break e.to_string(),
                        },
                        Some(Control::Unsubscribe(channel)) => if let Err(e) = sink.unsubscribe(&channel).await {
                            break e.to_string();
                        },
                    },
                    _ = pings.tick() => {
                        let ping = tokio::time::timeout(self.settings.connect_timeout(), sink.ping::<redis::Value>());
                        match ping.await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => break e.to_string(),
                            Err(_) => break "a ping went unanswered".to_owned(),
                        }
                    }
                }
            };
            self.shared.subscriber_up.store(false, Ordering::Relaxed);
            interrupted = true;
            tracing::warn!(error = lost, "redis broker: subscriber connection lost; reconnecting");
        }
    }

    /// A subscriber connection with every channel of interest subscribed (and how many).
    async fn open(&self) -> Result<(redis::aio::PubSubSink, redis::aio::PubSubStream, usize), String> {
        let connecting = tokio::time::timeout(self.settings.connect_timeout(), self.client.get_async_pubsub());
        let (mut sink, stream) =
            connecting.await.map_err(|_| "timed out".to_owned())?.map_err(|e| e.to_string())?.split();
        let channels: Vec<String> =
            self.shared.channels.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect();
        if !channels.is_empty() {
            sink.subscribe(&channels).await.map_err(|e| format!("re-subscribing: {e}"))?;
        }
        Ok((sink, stream, channels.len()))
    }

    /// The publisher connection: drains the outbox in order, a pipeline of `PUBLISH`es at a
    /// time. While Redis cannot be reached, what the outbox holds is dropped (and counted):
    /// pub/sub keeps nothing for later either, and a node must not stall its broadcasters. An
    /// idle connection is pinged, and a missing one retried, without waiting for a broadcast:
    /// a node that is not ready gets none to send, and must still become ready. Once
    /// broadcasts were dropped, the loss notice goes out on the first connection that takes
    /// publishes, behind what was queued before it.
    async fn publish(self, outbox: Arc<Outbox>, mut queued: mpsc::Receiver<Outgoing>, mut notice: LossNotice) {
        let mut connection = None;
        let mut last_attempt: Option<Instant> = None;
        let mut attempt = 0;
        let mut batch = Vec::with_capacity(BATCH);
        let mut pings = tokio::time::interval(self.settings.ping_interval());
        pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            connection = self.reconnect(connection, &mut last_attempt, &mut attempt).await;
            let retry = backoff(attempt, self.settings.reconnect_max());
            let due = connection.as_ref().and(notice.due(&outbox));
            tokio::select! {
                received = queued.recv_many(&mut batch, BATCH) => if received == 0 { return },
                _ = outbox.lost_some(), if connection.is_some() && due.is_none() => continue,
                _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {}
                _ = pings.tick(), if connection.is_some() => {
                    if let Some(conn) = connection.as_mut() {
                        let ping = redis::cmd("PING").query_async::<redis::Value>(conn).await;
                        if let Err(e) = ping {
                            self.lost(&e);
                            connection = None;
                        }
                    }
                    continue;
                }
                _ = tokio::time::sleep(retry), if connection.is_none() => continue,
            }
            let Some(conn) = connection.as_mut() else {
                outbox.dropped(batch.len() as u64, "redis is unreachable");
                batch.clear();
                continue;
            };
            let told = notice.take(&outbox);
            if batch.is_empty() && told.is_none() {
                continue;
            }
            let sent = batch.len() as u64 + u64::from(told.is_some());
            let mut pipe = redis::pipe();
            for Outgoing { key, bytes } in batch.drain(..).chain(told) {
                pipe.cmd("PUBLISH").arg(key).arg(bytes).ignore();
            }
            // No second try: Redis may have run part of the pipeline, and a broadcast must not
            // reach a node twice.
            if let Err(e) = pipe.query_async::<()>(conn).await {
                outbox.dropped(sent, "publishing to redis failed");
                self.lost(&e);
                connection = None;
            }
        }
    }

    /// Notes that the publisher connection broke.
    fn lost(&self, error: &redis::RedisError) {
        tracing::warn!(error = %error, "redis broker: publisher connection lost; reconnecting");
        self.shared.publisher_up.store(false, Ordering::Relaxed);
    }

    /// A fresh publisher connection, unless the last attempt was too recent to try again.
    async fn reconnect(
        &self,
        current: Option<redis::aio::MultiplexedConnection>,
        last_attempt: &mut Option<Instant>,
        attempt: &mut u32,
    ) -> Option<redis::aio::MultiplexedConnection> {
        if current.is_some() {
            return current;
        }
        if last_attempt.is_some_and(|at| at.elapsed() < backoff(*attempt, self.settings.reconnect_max())) {
            return None;
        }
        *last_attempt = Some(Instant::now());
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.settings.connect_timeout()))
            .set_response_timeout(Some(self.settings.connect_timeout()));
        match self.client.get_multiplexed_async_connection_with_config(&config).await {
            Ok(connection) => {
                self.shared.publisher_up.store(true, Ordering::Relaxed);
                *attempt = 0;
                Some(connection)
            }
            Err(e) => {
                if *attempt == 0 {
                    tracing::warn!(error = %e, "redis broker: cannot open the publisher connection; retrying");
                }
                *attempt = attempt.saturating_add(1);
                None
            }
        }
    }
}

/// Waits `pause` while answering commands as a connection that is down would: interest is
/// recorded already, so a subscribe resolves at once (the channel is subscribed on reconnect).
/// False when the broker is gone.
async fn pause(pause: Duration, commands: &mut mpsc::UnboundedReceiver<Control>) -> bool {
    let until = tokio::time::sleep(pause);
    tokio::pin!(until);
    loop {
        tokio::select! {
            _ = &mut until => return true,
            command = commands.recv() => if command.is_none() { return false },
        }
    }
}
