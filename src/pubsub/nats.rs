//! The NATS broker: one core-NATS connection per node, a subject per topic this node listens to
//! (`{namespace}.t._{base64url(topic)}`), and no JetStream (pub/sub keeps nothing, like Redis's).
//! The client reconnects by itself and re-sends every live subscription; the connection is made
//! with `no_echo`, so the server never sends a node its own broadcasts back.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use async_nats::connection::State;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};

use super::cluster::{BrokerError, ClusterConfig};
use super::remote::{BrokerThread, Control, KeeperStop, Outbox, Outgoing, Running, backoff, topic_key};
use super::{Broadcast, Broker, Inbound, InterestTaken};
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
    thread: BrokerThread,
}

impl NatsBroker {
    /// A broker for the node called `node`, on the NATS server `settings.broker` names. The
    /// connection is made in the background and retried until the server answers.
    pub async fn connect(settings: &ClusterConfig, node: &str) -> Result<Self, BrokerError> {
        let thread = BrokerThread::start("courier-nats")?;
        let max = settings.reconnect_max();
        let options = async_nats::ConnectOptions::new()
            .name(node)
            .no_echo()
            .retry_on_initial_connect()
            .connection_timeout(settings.connect_timeout())
            .ping_interval(settings.ping_interval())
            .reconnect_delay_callback(move |attempts| backoff(u32::try_from(attempts).unwrap_or(u32::MAX), max))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("nats broker: connected"),
                    other => tracing::warn!(event = %other, "nats broker"),
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
        let Some(started) = Running::start(&self.running, inbound, self.settings.publish_queue) else { return };
        // A subject no Courier subscribes to (its last token is not a topic key's `_...`).
        let confirm = format!("{}.confirm", self.namespace);
        let timeout = self.settings.connect_timeout();
        let client = self.client.clone();
        self.thread.spawn(subscriptions(client.clone(), started.inbound, started.commands, confirm, timeout));
        self.thread.spawn(publisher(client, started.outbox, started.queued));
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

/// Publishes the outbox in order. The client queues what it cannot send while disconnected,
/// up to its own capacity; past that, the outbox fills and drops (counted).
async fn publisher(client: async_nats::Client, outbox: Arc<Outbox>, mut queued: mpsc::Receiver<Outgoing>) {
    while let Some(Outgoing { key, bytes }) = queued.recv().await {
        if let Err(e) = client.publish(key, Bytes::from(bytes)).await {
            outbox.dropped(1, "publishing to nats failed");
            tracing::debug!(error = %e, "nats broker: publish failed");
        }
    }
}
