//! Socket admission and the batched drain at shutdown: who may open a socket now, and in which
//! order open sockets are told to close when the node stops.
//!
//! Every socket (Phoenix, seed-002 JSON, signal; a long-poll session alike) holds one
//! [`Admission`] for its lifetime, taken from [`Admissions::admit`] (through
//! `Sockets::admit`) before its handshake is answered. The admission counts toward the node's
//! `socket.max_connections` and, for a signed-in socket, toward its user's
//! `socket.max_connections_per_user`; dropping it gives both places back, so a socket's places
//! are freed however it ends.
//!
//! No lock is global. The node count is one atomic, raised by compare-and-swap so it never
//! overshoots the limit. Per-user counts and the live admissions sit in [`SHARDS`] small
//! mutex-guarded maps, the user's picked by a hash of the name and the admission's by its
//! sequence number, so two connects rarely meet on a lock. A user's entry goes when its count
//! reaches zero, so the map holds only users with sockets open.
//!
//! The drain: each admission takes the next sequence number, so a lower number is an older
//! socket, and leaves a one-shot drain handle under that number. [`Admissions::drain`] refuses
//! new admissions, then every `shutdown_drain_interval_ms` takes the `shutdown_drain_batch`
//! lowest numbers out of the shards and fires their handles, which wakes exactly those
//! sockets and no others (a shared "everything below N" value would wake every open socket at
//! every batch). When another batch would no longer get an interval to close in before the
//! grace runs out, everything left is released at once, so no socket is dropped without its
//! 1001.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::{Code, Error};
use crate::logging::Throttle;
use crate::metrics;

/// How many locks the per-user counts and the drain handles are spread over.
const SHARDS: usize = 16;

/// How often the drainer looks whether every socket has closed.
const POLL: Duration = Duration::from_millis(20);

/// Why a socket was not admitted, as the `reason` label of the refusal metric gives it.
pub const REFUSAL_REASONS: [&str; 3] = ["node_full", "too_many_connections", "shutting_down"];

/// Why a socket was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    /// The node has `socket.max_connections` sockets open.
    #[error("this node has its {0} sockets open; retry shortly or connect to another node")]
    NodeFull(usize),
    /// The user has `socket.max_connections_per_user` sockets open on this node.
    #[error("this user has its {0} sockets open on this node; close one first")]
    TooManyConnections(usize),
    /// Shutdown has begun.
    #[error("the server is shutting down; connect to another node")]
    ShuttingDown,
}

impl AdmitError {
    /// The index of this refusal in [`REFUSAL_REASONS`].
    fn index(self) -> usize {
        match self {
            AdmitError::NodeFull(_) => 0,
            AdmitError::TooManyConnections(_) => 1,
            AdmitError::ShuttingDown => 2,
        }
    }
}

impl From<AdmitError> for Error {
    fn from(e: AdmitError) -> Error {
        let reason = e.to_string();
        match e {
            AdmitError::NodeFull(_) => Error::new(Code::NodeFull, reason).retry_after(1),
            AdmitError::TooManyConnections(_) => Error::new(Code::TooManyConnections, reason),
            AdmitError::ShuttingDown => Error::new(Code::Unavailable, reason).retry_after(1),
        }
    }
}

/// The limits admission enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Sockets open at once on the node, all endpoints.
    pub max_connections: usize,
    /// Sockets one signed-in user may have open on the node; 0 for no limit.
    pub max_connections_per_user: usize,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        AdmissionLimits { max_connections: usize::MAX, max_connections_per_user: 0 }
    }
}

/// How shutdown closes the sockets: `batch` at a time, `interval` apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainPlan {
    /// Sockets released per batch (at least one).
    pub batch: usize,
    /// The time between two batches.
    pub interval: Duration,
}

/// The socket limit the server picks when `socket.max_connections` is 0: the connection limit
/// the file-descriptor limit allows, less a tenth (at least 16) kept for plain HTTP, so a full
/// node still answers health checks, sign-ins and the admin API.
pub fn socket_limit_from_connection_limit(connections: usize) -> usize {
    connections.saturating_sub((connections / 10).max(16)).max(1)
}

/// What the admin stats report of admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionStats {
    /// Sockets admitted and not yet closed.
    pub live: usize,
    /// The node's limit.
    pub max_connections: usize,
    /// The per-user limit (0: none).
    pub max_connections_per_user: usize,
    /// Refusals since start, in [`REFUSAL_REASONS`]'s order.
    pub refused: [u64; REFUSAL_REASONS.len()],
}

/// The admission state of one server, shared by every worker and endpoint.
#[derive(Debug)]
pub struct Admissions {
    limits: AdmissionLimits,
    live: AtomicUsize,
    next_seq: AtomicU64,
    /// Drain handles of the admissions not yet released, by sequence number.
    handles: [Mutex<BTreeMap<u64, oneshot::Sender<()>>>; SHARDS],
    /// Open sockets per signed-in user (only while a per-user limit is set).
    users: [Mutex<HashMap<Box<str>, usize>>; SHARDS],
    hasher: RandomState,
    /// Set when shutdown begins: no admission after it.
    closing: AtomicBool,
    /// Set once every handle is released; an admission racing the drain fires its own.
    all_released: AtomicBool,
    refused: [AtomicU64; REFUSAL_REASONS.len()],
    at_limit: Throttle,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps hold counts and handles only; a panic mid-update leaves nothing half-written.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Admissions {
    /// Admission under `limits`.
    pub fn new(limits: AdmissionLimits) -> Self {
        Admissions {
            limits,
            live: AtomicUsize::new(0),
            next_seq: AtomicU64::new(0),
            handles: std::array::from_fn(|_| Mutex::new(BTreeMap::new())),
            users: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: RandomState::new(),
            closing: AtomicBool::new(false),
            all_released: AtomicBool::new(false),
            refused: std::array::from_fn(|_| AtomicU64::new(0)),
            at_limit: Throttle::every(Duration::from_secs(10)),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> AdmissionLimits {
        self.limits
    }

    /// Sockets admitted and not yet closed.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// The figures the admin stats report.
    pub fn stats(&self) -> AdmissionStats {
        AdmissionStats {
            live: self.live(),
            max_connections: self.limits.max_connections,
            max_connections_per_user: self.limits.max_connections_per_user,
            refused: std::array::from_fn(|i| self.refused[i].load(Ordering::Relaxed)),
        }
    }

    /// Takes a place for a socket of `user` (`None`: not signed in, counted for the node only),
    /// or says why there is none. Hold the admission as long as the socket is open.
    pub fn admit(self: &Arc<Self>, user: Option<&str>) -> Result<Admission, AdmitError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(self.refuse(AdmitError::ShuttingDown, user));
        }
        let max = self.limits.max_connections;
        if self.live.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_err() {
            return Err(self.refuse(AdmitError::NodeFull(max), user));
        }
        let per_user = self.limits.max_connections_per_user;
        let user = match user {
            Some(user) if per_user > 0 => {
                let mut users = lock(self.user_shard(user));
                match users.get_mut(user) {
                    Some(open) if *open >= per_user => {
                        drop(users);
                        self.live.fetch_sub(1, Ordering::AcqRel);
                        return Err(self.refuse(AdmitError::TooManyConnections(per_user), Some(user)));
                    }
                    Some(open) => *open += 1,
                    None => {
                        users.insert(user.into(), 1);
                    }
                }
                Some(Box::from(user))
            }
            _ => None,
        };
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let (handle, drain) = oneshot::channel();
        {
            let mut handles = lock(self.handle_shard(seq));
            // Checked under the shard's lock, which the drainer takes after setting the flag:
            // either it finds this handle or this admission sees the flag.
            if self.all_released.load(Ordering::Acquire) {
                let _ = handle.send(());
            } else {
                handles.insert(seq, handle);
            }
        }
        metrics::global().socket_admitted();
        Ok(Admission { shared: Arc::clone(self), seq, user, drain: Some(drain) })
    }

    /// Refuses at once, as [`admit`](Self::admit) would, when shutdown has begun or the node is
    /// full, so an endpoint skips authenticating (a database read) a connect with no place
    /// anyway; `admit` still decides for the rest.
    pub fn precheck(&self) -> Result<(), AdmitError> {
        let max = self.limits.max_connections;
        if self.closing.load(Ordering::Acquire) {
            Err(self.refuse(AdmitError::ShuttingDown, None))
        } else if self.live() >= max {
            Err(self.refuse(AdmitError::NodeFull(max), None))
        } else {
            Ok(())
        }
    }

    fn refuse(&self, refusal: AdmitError, user: Option<&str>) -> AdmitError {
        self.refused[refusal.index()].fetch_add(1, Ordering::Relaxed);
        metrics::global().socket_refused(refusal.index());
        match refusal {
            AdmitError::NodeFull(limit) => {
                if let Some(suppressed) = self.at_limit.admit() {
                    tracing::warn!(limit, suppressed, "at the socket limit: refusing new sockets with 503");
                }
            }
            AdmitError::TooManyConnections(limit) => {
                if let Some(suppressed) = crate::logging::client_mistake() {
                    tracing::info!(user, limit, suppressed, "socket refused: the user has too many open");
                }
            }
            AdmitError::ShuttingDown => {}
        }
        refusal
    }

    fn user_shard(&self, user: &str) -> &Mutex<HashMap<Box<str>, usize>> {
        &self.users[(self.hasher.hash_one(user) as usize) % SHARDS]
    }

    fn handle_shard(&self, seq: u64) -> &Mutex<BTreeMap<u64, oneshot::Sender<()>>> {
        &self.handles[(seq % SHARDS as u64) as usize]
    }

    /// Open sockets of `user` on this node (0 when there is no per-user limit to count for).
    pub fn user_sockets(&self, user: &str) -> usize {
        lock(self.user_shard(user)).get(user).copied().unwrap_or(0)
    }

    /// Users with an entry in the per-user counts (each has a socket open).
    pub fn tracked_users(&self) -> usize {
        self.users.iter().map(|shard| lock(shard).len()).sum()
    }

    /// Refuses every admission from now on.
    pub fn stop_admitting(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// Stops admitting and releases every socket, current and racing, to drain at once.
    pub fn release_all(&self) {
        self.stop_admitting();
        self.all_released.store(true, Ordering::Release);
        for shard in &self.handles {
            let released = std::mem::take(&mut *lock(shard));
            for handle in released.into_values() {
                let _ = handle.send(());
            }
        }
    }

    /// Releases the `batch` oldest sockets not yet released; `false` when that was all of them
    /// (everything, racing admissions too, is then released).
    pub fn release_oldest(&self, batch: usize) -> bool {
        let batch = batch.max(1);
        // The batch + 1 lowest numbers are among every shard's batch + 1 lowest.
        let mut oldest: Vec<u64> = Vec::new();
        for shard in &self.handles {
            oldest.extend(lock(shard).keys().take(batch + 1).copied());
        }
        if oldest.len() <= batch {
            self.release_all();
            return false;
        }
        let (_, &mut first_kept, _) = oldest.select_nth_unstable(batch);
        for shard in &self.handles {
            let released = {
                let mut handles = lock(shard);
                let kept = handles.split_off(&first_kept);
                std::mem::replace(&mut *handles, kept)
            };
            for handle in released.into_values() {
                let _ = handle.send(());
            }
        }
        true
    }

    /// Shutdown's drain: refuses new sockets, releases the open ones oldest first by `plan`, and
    /// returns once every socket has closed or at `deadline`. The last batch that still leaves
    /// an interval before the deadline takes everything left.
    pub async fn drain(&self, plan: DrainPlan, deadline: Instant) {
        self.stop_admitting();
        let start = Instant::now();
        let last_release = deadline.saturating_duration_since(start).saturating_sub(plan.interval);
        let mut at = Duration::ZERO;
        loop {
            let more = if at + plan.interval > last_release {
                self.release_all();
                false
            } else {
                self.release_oldest(plan.batch)
            };
            if !more {
                break;
            }
            at += plan.interval;
            let next = start + at;
            while self.live() > 0 && Instant::now() < next {
                actix_web::rt::time::sleep(POLL.min(next.saturating_duration_since(Instant::now()))).await;
            }
        }
        while self.live() > 0 && Instant::now() < deadline {
            actix_web::rt::time::sleep(POLL).await;
        }
    }
}

/// One socket's place under the limits, held for the socket's lifetime; dropping it frees the
/// place (and its user's).
#[derive(Debug)]
pub struct Admission {
    shared: Arc<Admissions>,
    seq: u64,
    user: Option<Box<str>>,
    drain: Option<oneshot::Receiver<()>>,
}

impl Admission {
    /// The admission's sequence number: lower is older, and older sockets drain first.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Resolves when shutdown releases this socket to drain (at once if it already has). The
    /// signal can be taken once; later calls never resolve.
    pub fn drain_requested(&mut self) -> impl Future<Output = ()> + 'static {
        let drain = self.drain.take();
        async move {
            let fired = match drain {
                Some(drain) => drain.await.is_ok(),
                None => false,
            };
            if !fired {
                // Only this admission's drop ends the handle unfired, and then nobody listens.
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let shared = &self.shared;
        lock(shared.handle_shard(self.seq)).remove(&self.seq);
        if let Some(user) = &self.user {
            let mut users = lock(shared.user_shard(user));
            if let Some(open) = users.get_mut(&**user) {
                *open -= 1;
                if *open == 0 {
                    users.remove(&**user);
                }
            }
        }
        shared.live.fetch_sub(1, Ordering::AcqRel);
        metrics::global().socket_released();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Drain = std::pin::Pin<Box<dyn Future<Output = ()>>>;

    /// The indices of the drain signals that fired since the last look.
    fn released(drains: &mut [Option<Drain>]) -> Vec<usize> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut fired = Vec::new();
        for (i, slot) in drains.iter_mut().enumerate() {
            if slot.as_mut().is_some_and(|drain| drain.as_mut().poll(&mut cx).is_ready()) {
                *slot = None;
                fired.push(i);
            }
        }
        fired
    }

    fn admissions(max: usize, per_user: usize) -> Arc<Admissions> {
        Arc::new(Admissions::new(AdmissionLimits { max_connections: max, max_connections_per_user: per_user }))
    }

    #[test]
    fn the_node_limit_refuses_past_it_and_a_drop_frees_a_place() {
        let a = admissions(2, 0);
        let first = a.admit(None).expect("first");
        let _second = a.admit(Some("u")).expect("second");
        assert_eq!(a.admit(None).unwrap_err(), AdmitError::NodeFull(2));
        assert_eq!(a.precheck().unwrap_err(), AdmitError::NodeFull(2));
        assert_eq!(a.live(), 2);
        drop(first);
        assert_eq!(a.live(), 1);
        a.admit(None).expect("a freed place is taken");
        a.precheck().expect("room for one more");
        assert_eq!(a.stats().refused, [2, 0, 0]);
    }

    #[test]
    fn the_user_limit_counts_per_user_and_forgets_users_with_no_socket() {
        let a = admissions(10, 2);
        let a1 = a.admit(Some("alice")).expect("a1");
        let a2 = a.admit(Some("alice")).expect("a2");
        assert_eq!(a.admit(Some("alice")).unwrap_err(), AdmitError::TooManyConnections(2));
        let _b = a.admit(Some("bob")).expect("another user still connects");
        let _anon = a.admit(None).expect("anonymous sockets count for the node only");
        assert_eq!(a.live(), 4, "the refused one gave its node place back");
        assert_eq!(a.user_sockets("alice"), 2);
        drop(a1);
        let a3 = a.admit(Some("alice")).expect("a freed place is taken");
        drop((a2, a3));
        assert_eq!(a.user_sockets("alice"), 0);
        assert_eq!(a.tracked_users(), 1, "only bob is left in the map");
    }

    #[test]
    fn batches_release_the_oldest_first_and_the_last_takes_the_rest() {
        let a = admissions(100, 0);
        let mut all: Vec<Admission> = (0..40).map(|_| a.admit(None).expect("admitted")).collect();
        // Closed sockets leave holes in the numbers; a batch still releases `batch` live ones.
        all.retain(|adm| adm.seq() % 3 != 0);
        let mut drains: Vec<Option<Drain>> =
            all.iter_mut().map(|adm| Some(Box::pin(adm.drain_requested()) as Drain)).collect();
        assert!(released(&mut drains).is_empty());
        assert!(a.release_oldest(10));
        assert_eq!(released(&mut drains), (0..10).collect::<Vec<_>>(), "the ten oldest");
        assert!(a.release_oldest(10));
        assert_eq!(released(&mut drains), (10..20).collect::<Vec<_>>());
        assert!(!a.release_oldest(10), "six were left: the last batch");
        assert_eq!(released(&mut drains), (20..26).collect::<Vec<_>>());
        assert_eq!(a.admit(None).unwrap_err(), AdmitError::ShuttingDown);
    }

    #[test]
    fn refusals_map_to_the_table() {
        let e = Error::from(AdmitError::NodeFull(5));
        assert_eq!((e.code.http_status(), e.code.as_str(), e.retry_after), (503, "node_full", Some(1)));
        let e = Error::from(AdmitError::TooManyConnections(5));
        assert_eq!((e.code.http_status(), e.code.as_str()), (429, "too_many_connections"));
        assert_eq!(Error::from(AdmitError::ShuttingDown).code.http_status(), 503);
        assert_eq!(socket_limit_from_connection_limit(10_000), 9_000);
        assert_eq!(socket_limit_from_connection_limit(100), 84);
        assert_eq!(socket_limit_from_connection_limit(3), 1);
    }
}
