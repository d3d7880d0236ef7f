//! The lifecycle every WebSocket endpoint shares: one [`Connection`] actor per upgraded socket,
//! whatever protocol it speaks.
//!
//! It owns, through the session's [`Link`], the bounded outbound queue, the idle timer, pong
//! answers, the close handshake (echoing the client's close, or sending ours and waiting
//! `CLOSE_HANDSHAKE_GRACE` for the answer), the slow-consumer abort, and the drain at shutdown
//! once the socket's [`Admission`] is released (see [`super::admission`], which also keeps the
//! live count behind [`Sockets`]). What a message means belongs to the endpoint: its [`Session`]
//! handles text and binary messages and pub/sub deliveries, and lets go of its subscriptions
//! when the socket stops.

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::fut::future::FutureWrap;
use actix::{Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, StreamHandler, WrapFuture};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError};
use bytes::Bytes;
use bytestring::ByteString;
use futures_util::Stream;
use tokio::sync::oneshot;

use super::admission::{Admission, AdmissionLimits, AdmissionStats, Admissions, AdmitError, DrainPlan};
use super::longpoll::buffer::{PollAnswer, PollBuffer};
use super::writer::{Outbound, QueueError};
use super::ws_io::{self, WsWriter};
use crate::config::SocketConfig;
use crate::metrics;
use crate::protocol::WireFrame;
use crate::pubsub::{ConnectionId, Deliver, NodeId};

/// The event on a socket-id or session topic that force-closes the socket (Phoenix's `disconnect`).
pub const DISCONNECT_EVENT: &str = "disconnect";

/// After the server sends a close frame, how long it waits for the client's before dropping.
const CLOSE_HANDSHAKE_GRACE: Duration = Duration::from_secs(2);

/// How often a socket checks whether it has been idle for `idle`.
fn idle_check_interval(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_millis(25), Duration::from_secs(5))
}

/// The close code and reason for a client frame the reader could not take (RFC 6455 §7.4.1):
/// 1009 for a frame over the limit, 1007 for text that is not UTF-8, 1002 for the rest.
fn read_error_close(error: &ProtocolError) -> (CloseCode, &'static str) {
    match error {
        ProtocolError::Overflow => (CloseCode::Size, "frame too large"),
        ProtocolError::Io(e) if ws_io::is_invalid_utf8(e) => (CloseCode::Invalid, "text frame is not valid UTF-8"),
        _ => (CloseCode::Protocol, "websocket protocol error"),
    }
}

/// Live-socket bookkeeping shared by every worker and endpoint: admission under the limits,
/// connection ids and the drain at shutdown.
#[derive(Debug)]
pub struct Sockets {
    admissions: Arc<Admissions>,
    node: NodeId,
    next_id: AtomicU64,
}

impl Sockets {
    /// The bookkeeping of the sockets of the node process `node`, without socket limits.
    pub fn new(node: NodeId) -> Self {
        Sockets::with_limits(node, AdmissionLimits::default())
    }

    /// The bookkeeping of the sockets of the node process `node`, admitting under `limits`.
    pub fn with_limits(node: NodeId, limits: AdmissionLimits) -> Self {
        Sockets { admissions: Arc::new(Admissions::new(limits)), node, next_id: AtomicU64::new(1) }
    }

    /// Takes a place for a new socket of `user` (`None` when not signed in), to hold for the
    /// socket's lifetime; every transport calls it before it answers a handshake.
    pub fn admit(&self, user: Option<&str>) -> Result<Admission, AdmitError> {
        self.admissions.admit(user)
    }

    /// Refuses a connect at once when no socket could be admitted now (see
    /// [`Admissions::precheck`]); endpoints call it before authenticating.
    pub fn precheck(&self) -> Result<(), AdmitError> {
        self.admissions.precheck()
    }

    /// Sockets currently open (admitted and not yet closed).
    pub fn live(&self) -> usize {
        self.admissions.live()
    }

    /// The limits and refusal counts, for the admin stats.
    pub fn admission_stats(&self) -> AdmissionStats {
        self.admissions.stats()
    }

    /// Tells every socket, current and future, to drain and close, all at once.
    pub fn shut_down(&self) {
        self.admissions.release_all();
    }

    /// Refuses new sockets and drains the open ones in batches, oldest first (see
    /// [`Admissions::drain`]); returns once all have closed or at `deadline`.
    pub async fn drain(&self, plan: DrainPlan, deadline: Instant) {
        self.admissions.drain(plan, deadline).await;
    }

    /// A connection id no other socket, on any node, has had.
    pub(super) fn next_connection_id(&self) -> ConnectionId {
        ConnectionId::new(self.node.clone(), self.next_id.fetch_add(1, Ordering::Relaxed))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// Shutting down: no new messages are taken; the socket closes once in-flight work is done.
    Draining,
    /// A close frame is queued; nothing more is sent.
    Closing,
}

/// Where a socket's frames go: a WebSocket's writer task, or a long-poll session's buffer
/// that the client's polls empty.
enum Out {
    Socket(Outbound),
    Poll(PollBuffer),
}

impl Out {
    fn send(&mut self, frame: WireFrame) -> Result<(), QueueError> {
        match self {
            Out::Socket(outbound) => outbound.send(frame),
            Out::Poll(buffer) => buffer.send(frame),
        }
    }

    fn room(&self) -> usize {
        match self {
            Out::Socket(outbound) => outbound.room(),
            Out::Poll(buffer) => buffer.room(),
        }
    }

    fn room_bytes(&self) -> usize {
        match self {
            Out::Socket(outbound) => outbound.room_bytes(),
            Out::Poll(buffer) => buffer.room_bytes(),
        }
    }

    fn queued_bytes(&self) -> usize {
        match self {
            Out::Socket(outbound) => outbound.queued_bytes(),
            Out::Poll(buffer) => buffer.queued_bytes(),
        }
    }

    /// Whether a closing long-poll session has handed its client everything.
    fn drained(&self) -> bool {
        matches!(self, Out::Poll(buffer) if buffer.drained())
    }

    fn close(&mut self, code: CloseCode, reason: &str, drop_queued: bool) {
        match self {
            Out::Socket(outbound) if drop_queued => outbound.abort(code, reason),
            Out::Socket(outbound) => outbound.close(code, reason),
            Out::Poll(buffer) if drop_queued => buffer.abort(),
            Out::Poll(buffer) => buffer.close(),
        }
    }
}

/// A socket's side of the lifecycle: its outbound queue and where it stands in closing.
///
/// Owned by the session rather than by [`Connection`], so session code that sends or closes
/// needs only `&mut self`, as it would in an actor of its own.
pub struct Link {
    /// Which endpoint, for the logs.
    endpoint: &'static str,
    id: u64,
    out: Out,
    last_received: Instant,
    idle: Duration,
    /// The socket's place under the limits, freed when the session (and so the link) drops.
    admission: Admission,
    phase: Phase,
    close_reason: &'static str,
}

impl Link {
    /// Starts the outbound writer of connection `id` of `endpoint` on `writer`, within `settings`,
    /// holding the socket's `admission`.
    pub fn new(
        endpoint: &'static str,
        id: u64,
        writer: WsWriter,
        settings: &SocketConfig,
        admission: Admission,
    ) -> Self {
        let outbound = Outbound::start(writer, settings.queue_limits());
        Link::with_out(endpoint, id, Out::Socket(outbound), settings.idle_timeout(), admission)
    }

    /// The link of long-poll session `id` of `endpoint`, whose frames wait in `buffer` for the
    /// client's polls; it closes when not polled for `idle`.
    pub fn polled(endpoint: &'static str, id: u64, buffer: PollBuffer, idle: Duration, admission: Admission) -> Self {
        Link::with_out(endpoint, id, Out::Poll(buffer), idle, admission)
    }

    fn with_out(endpoint: &'static str, id: u64, out: Out, idle: Duration, admission: Admission) -> Self {
        Link {
            endpoint,
            id,
            out,
            last_received: Instant::now(),
            idle,
            admission,
            phase: Phase::Open,
            close_reason: "connection closed",
        }
    }

    /// The connection id, as the logs give it.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether a close frame is queued already; nothing more goes out.
    pub fn is_closing(&self) -> bool {
        self.phase == Phase::Closing
    }

    /// How many more frames the outbound queue can take right now.
    pub fn room(&self) -> usize {
        self.out.room()
    }

    /// How many more bytes the outbound queue can take right now.
    pub fn room_bytes(&self) -> usize {
        self.out.room_bytes()
    }

    /// Queues a frame, telling whether it was; a client too slow to take it is closed (what it
    /// has not read is dropped).
    pub fn send<S: Session>(&mut self, ctx: &mut Ctx<S>, frame: WireFrame) -> bool {
        if self.is_closing() {
            return false;
        }
        match self.out.send(frame) {
            Ok(()) => {
                if let Out::Poll(buffer) = &mut self.out
                    && buffer.wants_flush()
                {
                    // At the end of this turn, so every frame this turn queues goes in one answer.
                    ctx.spawn(
                        actix::fut::ready(()).map(|(), act: &mut Connection<S>, ctx| act.0.link().flush_poll(ctx)),
                    );
                }
                return true;
            }
            Err(QueueError::Full) => {
                let queued_bytes = self.out.queued_bytes();
                tracing::info!(conn = self.id, endpoint = self.endpoint, queued_bytes, "closing slow socket");
                metrics::global().overflowed(true);
                self.end(ctx, CloseCode::Away, "slow consumer: outbound queue full", true);
            }
            Err(QueueError::Closed) => ctx.stop(),
        }
        false
    }

    /// Queues a close frame after everything already queued, then stops shortly after.
    pub fn close<S: Session>(&mut self, ctx: &mut Ctx<S>, code: CloseCode, reason: &'static str) {
        self.end(ctx, code, reason, false);
    }

    fn end<S: Session>(&mut self, ctx: &mut Ctx<S>, code: CloseCode, reason: &'static str, drop_queued: bool) {
        if self.is_closing() {
            return;
        }
        self.phase = Phase::Closing;
        self.close_reason = reason;
        self.out.close(code, reason, drop_queued);
        if self.out.drained() {
            // A long-poll session with nothing left for its client has no close handshake to wait for.
            return ctx.stop();
        }
        // A client that never answers the close frame (or never polls for the rest) must not
        // hold the socket open.
        ctx.run_later(CLOSE_HANDSHAKE_GRACE, |_, ctx| ctx.stop());
    }

    /// Answers the client's close with its own code, as RFC 6455 asks; the actor stops next.
    fn echo_close(&mut self, reason: Option<CloseReason>) {
        if !self.is_closing() {
            self.phase = Phase::Closing;
            self.close_reason = "client closed";
            self.out.close(reason.map_or(CloseCode::Normal, |r| r.code), "", false);
        }
    }

    fn close_if_idle<S: Session>(&mut self, ctx: &mut Ctx<S>) {
        // A long-poll client whose poll is waiting is there, however long ago it sent anything.
        let polled = matches!(&self.out, Out::Poll(buffer) if buffer.polled());
        if !self.is_closing() && !polled && self.last_received.elapsed() >= self.idle {
            tracing::info!(conn = self.id, endpoint = self.endpoint, "closing idle socket");
            self.close(ctx, CloseCode::Away, "idle timeout");
        }
    }

    /// Answers the waiting poll with what is buffered (scheduled by [`send`](Self::send)).
    fn flush_poll<S: Session>(&mut self, ctx: &mut Ctx<S>) {
        if let Out::Poll(buffer) = &mut self.out {
            buffer.flush();
            self.last_received = Instant::now();
        }
        self.stop_if_drained(ctx);
    }

    fn stop_if_drained<S: Session>(&mut self, ctx: &mut Ctx<S>) {
        if self.out.drained() {
            ctx.stop();
        }
    }

    /// Takes a client's poll; a waiting one is answered empty when its window is over.
    fn poll<S: Session>(&mut self, ctx: &mut Ctx<S>, answer: oneshot::Sender<PollAnswer>) {
        self.last_received = Instant::now();
        let Out::Poll(buffer) = &mut self.out else {
            let _ = answer.send(PollAnswer::Gone);
            return;
        };
        let waits = buffer.poll(answer);
        self.stop_if_drained(ctx);
        let Out::Poll(buffer) = &mut self.out else { return };
        if let Some(generation) = waits {
            ctx.run_later(buffer.window(), move |act, _| {
                let link = act.0.link();
                if let Out::Poll(buffer) = &mut link.out
                    && buffer.window_over(generation)
                {
                    link.last_received = Instant::now();
                }
            });
        }
    }

    /// Closes a draining socket; the session calls it once its in-flight work is done.
    fn finish_drain<S: Session>(&mut self, ctx: &mut Ctx<S>) {
        if self.phase == Phase::Draining {
            self.close(ctx, CloseCode::Away, "server shutting down");
        }
    }
}

/// The actix context of a session's [`Connection`].
pub type Ctx<S> = Context<Connection<S>>;

/// What one endpoint's socket does with what it receives; the lifecycle around it is [`Connection`]'s.
pub trait Session: Sized + Unpin + 'static {
    /// The session's link to its client.
    fn link(&mut self) -> &mut Link;

    /// Runs once the actor is up, after the idle timer is set and before shutdown is watched.
    fn started(&mut self, _ctx: &mut Ctx<Self>) {}

    /// One whole text message, while the socket is open.
    fn text(&mut self, ctx: &mut Ctx<Self>, text: ByteString);

    /// One whole binary message, while the socket is open.
    fn binary(&mut self, ctx: &mut Ctx<Self>, data: Bytes);

    /// A pub/sub delivery, unless the socket is closing (arguments in `Handler::handle`'s order).
    fn deliver(&mut self, msg: Deliver, ctx: &mut Ctx<Self>);

    /// Whether work is in flight that a draining socket must finish before it closes.
    fn busy(&self) -> bool {
        false
    }

    /// Runs once the actor has stopped, before the socket stops counting as live (its
    /// admission drops with the session).
    fn stopped(&mut self) {}

    /// Queues a frame for the client, telling whether it was (see [`Link::send`]).
    fn enqueue(&mut self, ctx: &mut Ctx<Self>, frame: WireFrame) -> bool {
        self.link().send(ctx, frame)
    }

    /// Closes the socket with `code` after what is queued (see [`Link::close`]).
    fn close(&mut self, ctx: &mut Ctx<Self>, code: CloseCode, reason: &'static str) {
        self.link().close(ctx, code, reason);
    }

    /// Closes a draining socket once nothing is [`busy`](Self::busy) any more.
    fn finish_drain_if_idle(&mut self, ctx: &mut Ctx<Self>) {
        if !self.busy() {
            self.link().finish_drain(ctx);
        }
    }
}

/// The actor behind one WebSocket connection of any endpoint.
///
/// It dereferences to its session so that the callbacks actix hands `&mut Connection<S>` (timers,
/// futures run on the actor) read as session code.
pub struct Connection<S>(S);

impl<S: Session> Connection<S> {
    /// Starts the actor for `session`, reading client messages from `reader`.
    pub fn start<R>(session: S, reader: R) -> actix::Addr<Self>
    where
        R: Stream<Item = Result<AggregatedMessage, ProtocolError>> + 'static,
    {
        Connection::create(move |ctx| {
            ctx.add_stream(reader);
            Connection(session)
        })
    }

    fn begin_drain(&mut self, ctx: &mut Ctx<S>) {
        let link = self.0.link();
        if link.phase == Phase::Open {
            link.phase = Phase::Draining;
            self.0.finish_drain_if_idle(ctx);
        }
    }
}

impl<S> Deref for Connection<S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.0
    }
}

impl<S> DerefMut for Connection<S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.0
    }
}

impl<S: Session> Actor for Connection<S> {
    type Context = Ctx<S>;

    fn started(&mut self, ctx: &mut Ctx<S>) {
        let link = self.0.link();
        metrics::global().connection_opened(link.endpoint);
        let shutdown = link.admission.drain_requested();
        ctx.run_interval(idle_check_interval(link.idle), |act, ctx| act.0.link().close_if_idle(ctx));
        self.0.started(ctx);
        ctx.spawn(shutdown.into_actor(self).map(|_, act, ctx| act.begin_drain(ctx)));
    }

    fn stopped(&mut self, _ctx: &mut Ctx<S>) {
        self.0.stopped();
        let link = self.0.link();
        metrics::global().connection_closed(link.endpoint);
        tracing::info!(conn = link.id, endpoint = link.endpoint, reason = link.close_reason, "socket closed");
    }
}

impl<S: Session> StreamHandler<Result<AggregatedMessage, ProtocolError>> for Connection<S> {
    fn handle(&mut self, item: Result<AggregatedMessage, ProtocolError>, ctx: &mut Ctx<S>) {
        let link = self.0.link();
        let msg = match item {
            Ok(msg) => msg,
            Err(e) => {
                let (code, reason) = read_error_close(&e);
                tracing::debug!(conn = link.id, endpoint = link.endpoint, error = %e, "closing socket on a websocket error");
                return link.close(ctx, code, reason);
            }
        };
        link.last_received = Instant::now();
        let open = link.phase == Phase::Open;
        match msg {
            AggregatedMessage::Text(text) if open => self.0.text(ctx, text),
            AggregatedMessage::Binary(data) if open => self.0.binary(ctx, data),
            // Draining or closing: messages that start new work are no longer taken.
            AggregatedMessage::Text(_) | AggregatedMessage::Binary(_) => {}
            AggregatedMessage::Ping(data) => {
                if let Out::Socket(outbound) = &link.out
                    && outbound.pong(data) == Err(QueueError::Full)
                {
                    metrics::global().overflowed(false);
                }
            }
            AggregatedMessage::Pong(_) => {}
            AggregatedMessage::Close(reason) => {
                link.echo_close(reason);
                ctx.stop();
            }
        }
    }
}

impl<S: Session> Handler<Deliver> for Connection<S> {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Ctx<S>) {
        if !self.0.link().is_closing() {
            self.0.deliver(msg, ctx);
        }
    }
}

/// A long-poll client's poll: answered with the frames buffered for it, at once or when some
/// arrive within the window; empty when the window ends; `Gone` once the session has ended.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Poll(pub oneshot::Sender<PollAnswer>);

impl<S: Session> Handler<Poll> for Connection<S> {
    type Result = ();

    fn handle(&mut self, Poll(answer): Poll, ctx: &mut Ctx<S>) {
        self.0.link().poll(ctx, answer);
    }
}

/// `into_actor` for a session's futures: they run on the [`Connection`] that owns the session,
/// which `into_actor(self)` inside a session method cannot name.
pub trait IntoConnection: Future + Sized {
    /// Wraps the future to run on `session`'s connection actor.
    fn into_connection<S: Session>(self, _session: &S) -> FutureWrap<Self, Connection<S>> {
        actix::fut::wrap_future(self)
    }
}

impl<F: Future> IntoConnection for F {}
