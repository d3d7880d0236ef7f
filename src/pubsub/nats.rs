//! The NATS broker: one core-NATS connection per node, a subject per topic this node listens to
//! (`{namespace}.t._{base64url(topic)}`), and no JetStream (pub/sub keeps nothing, like Redis's).
//! The client reconnects by itself and re-sends every live subscription; the connection is made
//! with `no_echo`, so the server never sends a node its own broadcasts back.
//!
//! What an interruption loses is made good from the database: once a new connection has its
//! subscriptions back, this node's inboxes are re-read, and after a reconnection (the old
//! connection may have taken broadcasts it never sent) the other nodes get a loss notice. A
//! subscription the client had to drop messages for (a slow consumer) re-reads them too.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use async_nats::connection::State;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};

use super::cluster::{BrokerError, ClusterConfig};
use super::remote::{BrokerThread, Control, KeeperStop, LossNotice, Outbox, Outgoing, Running, backoff, topic_key};
use super::{Broadcast, Broker, Inbound, InterestTaken, topic};
use futures_util::future::BoxFuture;

/// A broker over NATS core subjects.
pub struct NatsBroker {
    node: String,
    namespace: String,
    client: async_nats::Client,
    settings: ClusterConfig,
    /// Set at start: the way to the subscriptions task, and what the node encodes with.
    running: OnceLock<Running>,
    /// The name claim's answerer, once claimed.
    keeper: KeeperStop,
    /// What the client's events said of its connection so far.
    link: watch::Receiver<LinkEvents>,
    thread: BrokerThread,
}

/// Counts of the client's events that can cost this node broadcasts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct LinkEvents {
    /// Connections made (the first, then each reconnection).
    connected: u64,
    /// Times the client dropped messages of a subscription that it could not hand on fast enough.
    slow: u64,
}

impl NatsBroker {
    /// A broker for the node called `node`, on the NATS server `settings.broker` names. The
    /// connection is made in the background and retried until the server answers.
    pub async fn connect(settings: &ClusterConfig, node: &str) -> Result<Self, BrokerError> {
        let thread = BrokerThread::start("courier-nats")?;
        let max = settings.reconnect_max();
        let (events, link) = watch::channel(LinkEvents::default());
        let options = async_nats::ConnectOptions::new()
            .name(node)
            .no_echo()
            .retry_on_initial_connect()
            .connection_timeout(settings.connect_timeout())
            .ping_interval(settings.ping_interval())
            .reconnect_delay_callback(move |attempts| backoff(u32::try_from(attempts).unwrap_or(u32::MAX), max))
            .event_callback(move |event| {
                match event {
                    async_nats::Event::Connected => events.send_modify(|e| e.connected += 1),
                    async_nats::Event::SlowConsumer(_) => events.send_modify(|e| e.slow += 1),
                    _ => {}
                }
                async move {
                    match event {
                        async_nats::Event::Connected => tracing::info!("nats broker: connected"),
                        other => tracing::warn!(event = %other, "nats broker"),
                    }
                }
            });
        let url = settings.broker.clone();
        let client = thread
            .spawn(async move { options.connect(url).await })
            .await
            .map_err(|e| BrokerError::BadUrl(e.to_string()))?
            .map_err(|e| BrokerError::BadUrl(e.to_string()))?;
        Ok(NatsBroker {
            node: node.to_owned(),
            namespace: settings.namespace.clone(),
            client,
            settings: settings.clone(),
            running: OnceLock::new(),
            keeper: KeeperStop::default(),
            link,
            thread,
        })
    }

    fn subject(&self, topic: &str) -> String {
        topic_key(&self.namespace, '.', topic)
    }
}

impl Broker for NatsBroker {
    fn node(&self) -> &str {
        &self.node
    }

    fn start(&self, inbound: Inbound) {
        let capacity = self.settings.publish_queue;
        let Some(started) = Running::start(&self.running, inbound, capacity, self.subject(topic::RESYNC)) else {
            return;
        };
        // A subject no Courier subscribes to (its last token is not a topic key's `_...`).
        let confirm = format!("{}.confirm", self.namespace);
        let timeout = self.settings.connect_timeout();
        let client = self.client.clone();
        let watcher = Interruptions {
            client: client.clone(),
            inbound: started.inbound.clone(),
            outbox: Arc::clone(&started.outbox),
            confirm: confirm.clone(),
            confirm_within: timeout,
        };
        self.thread.spawn(watcher.follow(self.link.clone()));
        self.thread.spawn(subscriptions(client.clone(), started.inbound, started.commands, confirm, timeout));
        self.thread.spawn(publisher(client, started.outbox, started.queued, started.notice));
        // The other nodes' loss notices, for as long as the broker lives.
        drop(self.interest(topic::RESYNC, true));
    }

    fn interest(&self, topic: &str, interested: bool) -> InterestTaken {
        match self.running.get() {
            Some(running) => running.interest(self.subject(topic), interested),
            None => Box::pin(std::future::ready(())),
        }
    }

    fn publish(&self, broadcast: &Arc<Broadcast>) {
        // Before start the node has no id to stamp on what it sends (and no publisher task).
        if let Some(running) = self.running.get() {
            running.publish(self.subject(&broadcast.topic), broadcast);
        }
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    fn claim(&self) -> BoxFuture<'static, Result<(), BrokerError>> {
        // Not a topic key (whose last token starts with `_` after `t`): no broadcast lands here.
        let name = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &self.node);
        let subject = format!("{}.node._{name}", self.namespace);
        let (stop, stopped) = oneshot::channel();
        self.keeper.set(stop);
        let claim = claim(
            self.client.clone(),
            subject,
            self.node.clone(),
            self.namespace.clone(),
            self.settings.connect_timeout(),
            stopped,
        );
        let first = self.thread.spawn(claim);
        let node = self.node.clone();
        Box::pin(async move { first.await.map_err(|e| BrokerError::Claim(node, e.to_string()))? })
    }

    fn release(&self) -> BoxFuture<'static, ()> {
        self.keeper.stop()
    }
}

/// Claims the node's name: the live owner of a name answers requests on its control subject
/// for as long as its connection lasts. The claim subscribes first, then asks: the server
/// orders each connection's operations, so of two nodes starting at once at least one sees
/// the other (both may refuse; neither runs beside the other). The connection is `no_echo`,
/// so the ask never reaches this node's own answerer. A node that dies drops its connection,
/// and the server forgets its subscription at once (or, for a host that vanished, once the
/// server's pings go unanswered). A server that does not answer at start does not stop the
/// node: the subscription is sent when the client connects.
async fn claim(
    client: async_nats::Client,
    subject: String,
    node: String,
    namespace: String,
    within: std::time::Duration,
    mut stopped: oneshot::Receiver<oneshot::Sender<()>>,
) -> Result<(), BrokerError> {
    let failed = |e: &dyn std::fmt::Display| BrokerError::Claim(node.clone(), e.to_string());
    let mut answerer = client.subscribe(subject.clone()).await.map_err(|e| failed(&e))?;
    match tokio::time::timeout(within, client.request(subject, Bytes::new())).await {
        Ok(Ok(_)) => return Err(BrokerError::NameTaken { node, namespace }),
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
            tracing::info!(node, "node name claimed");
        }
        Ok(Err(e)) if client.connection_state() == State::Connected => return Err(failed(&e)),
        // A live owner answers at once; silence from a connected server is a node that hangs.
        Err(_) if client.connection_state() == State::Connected => {
            return Err(BrokerError::NameTaken { node, namespace });
        }
        _ => tracing::warn!(node, "nats broker: cannot check the node name yet; claiming it once nats answers"),
    }
    tokio::spawn(async move {
        let done = loop {
            tokio::select! {
                done = &mut stopped => break done.ok(),
                asked = answerer.next() => match asked {
                    Some(message) => if let Some(reply) = message.reply {
                        let _ = client.publish(reply, Bytes::from(node.clone())).await;
                    },
                    None => break None,
                },
            }
        };
        let _ = answerer.unsubscribe().await;
        let _ = client.flush().await;
        if let Some(done) = done {
            let _ = done.send(());
        }
    });
    Ok(())
}

/// Follows the subscribe and unsubscribe calls: each subject of interest has a reader task
/// that hands what arrives to `inbound`, and stops (dropping its subscription, which
/// unsubscribes it) when its stop handle here is dropped.
async fn subscriptions(
    client: async_nats::Client,
    inbound: Inbound,
    mut commands: mpsc::UnboundedReceiver<Control>,
    confirm: String,
    confirm_within: std::time::Duration,
) {
    let mut readers: HashMap<String, oneshot::Sender<()>> = HashMap::new();
    while let Some(command) = commands.recv().await {
        match command {
            Control::Unsubscribe(subject) => {
                readers.remove(&subject);
            }
            Control::Subscribe(subject, ack) => {
                let subscriber = match client.subscribe(subject.clone()).await {
                    Ok(subscriber) => subscriber,
                    Err(e) => {
                        tracing::warn!(error = %e, subject, "nats broker: subscribe refused");
                        continue;
                    }
                };
                let (stop, stopped) = oneshot::channel();
                readers.insert(subject, stop);
                tokio::spawn(read(subscriber, inbound.clone(), stopped));
                // The client's flush only writes its buffer out; the server's word that it has
                // the SUB is the answer to a later request on the same connection (it handles a
                // connection's operations in order). Nobody answers on `confirm`, so the answer
                // is the server's own "no responders". While the server is down that waits for
                // the reconnection, so the subscribe resolves after `confirm_within` anyway: the
                // client re-sends the subscription when it is back.
                let (client, confirm) = (client.clone(), confirm.clone());
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(confirm_within, client.request(confirm, Bytes::new())).await;
                    let _ = ack.send(());
                });
            }
        }
    }
}

/// Hands one subject's messages to `inbound` until `stopped`.
async fn read(mut subscriber: async_nats::Subscriber, inbound: Inbound, mut stopped: oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            message = subscriber.next() => match message {
                Some(message) => {
                    if let Err(e) = inbound.deliver(&message.payload) {
                        tracing::warn!(error = %e, subject = %message.subject, "nats broker: node broadcast refused");
                    }
                }
                None => return,
            },
        }
    }
}

/// What follows the client's connection events, to make good what they cost this node.
struct Interruptions {
    client: async_nats::Client,
    inbound: Inbound,
    outbox: Arc<Outbox>,
    confirm: String,
    confirm_within: std::time::Duration,
}

impl Interruptions {
    /// For as long as the client lives: after each connection (once its subscriptions are
    /// back) and each slow-consumer drop, this node's inboxes are re-read; after a
    /// reconnection, the other nodes are told as well.
    async fn follow(self, mut link: watch::Receiver<LinkEvents>) {
        let mut seen = *link.borrow_and_update();
        while link.changed().await.is_ok() {
            let now = *link.borrow_and_update();
            if now.connected > seen.connected {
                // The client re-sends its subscriptions before anything else on a new
                // connection, and the server handles a connection's operations in order: once
                // this request is answered, the server has them all.
                let asked = self.client.request(self.confirm.clone(), Bytes::new());
                let _ = tokio::time::timeout(self.confirm_within, asked).await;
                if seen.connected > 0 {
                    self.outbox.mark_lost();
                }
            }
            tracing::info!(?now, "nats broker: live delivery was interrupted; re-reading the live inboxes");
            self.inbound.resync();
            seen = now;
        }
    }
}

/// Publishes the outbox in order. The client queues what it cannot send while disconnected,
/// up to its own capacity; past that, the outbox fills and drops (counted). A loss notice goes
/// out when one is due, through the same client, so behind what was published before it.
async fn publisher(
    client: async_nats::Client,
    outbox: Arc<Outbox>,
    mut queued: mpsc::Receiver<Outgoing>,
    mut notice: LossNotice,
) {
    loop {
        let due = notice.due(&outbox);
        let next = tokio::select! {
            next = queued.recv() => match next {
                Some(next) => next,
                None => return,
            },
            _ = outbox.lost_some(), if due.is_none() => continue,
            _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                match notice.take(&outbox) {
                    Some(told) => told,
                    None => continue,
                }
            }
        };
        if let Err(e) = client.publish(next.key, Bytes::from(next.bytes)).await {
            outbox.dropped(1, "publishing to nats failed");
            tracing::debug!(error = %e, "nats broker: publish failed");
        }
    }
}
