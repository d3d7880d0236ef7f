//! Accounts (seed 002): users, passwords, sessions, devices, invites/contacts and the
//! pending-delivery queue for offline users, plus the transport-free JSON protocol state machine.
//!
//! This layer owns the rules (validation, hashing, expiry, who may message whom) and the limits
//! on what unauthenticated clients can make it do (concurrent password hashes, signup and
//! sign-in rates per address and per username). It reaches
//! the database only through `crate::store` query functions and never touches sockets or HTTP;
//! transports call [`Accounts`] or drive a [`JsonProtocolSession`].

mod config;
mod error;
mod hashing;
pub mod json_protocol;
mod last_seen;
mod limits;
pub mod password;
mod policy;
pub mod standards;
mod token;
pub mod validate;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{self, Clock};
use crate::store::{self, Store, StoreError};

pub use config::{AccountsConfig, ConfigError};
pub use error::{AccountError, RespCode};
pub use hashing::HashingStats;
pub use json_protocol::{Effect, JsonProtocolSession, Outcome};
pub use last_seen::LastSeen;
pub use password::HashAlgorithm;
pub use policy::{MessagePolicy, Unreachable};
pub use token::SessionToken;

/// A verified session: who holds the token and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The owner's stable id.
    pub user_id: String,
    /// The owner's username (the seed's `eid`).
    pub username: String,
    /// The device the session is bound to, if any.
    pub device_id: Option<String>,
    /// When the token stops being accepted (ms since the epoch).
    pub expires_at: i64,
    /// A public name for the session (not the token, nor its stored digest): sockets that it
    /// authenticated are told by this id when it ends.
    pub session_id: String,
    /// The stored digest, to look the session up again (see [`Accounts::session_live`]).
    pub digest: SessionDigest,
}

/// A session's stored digest: it finds the session without the token, so it is not printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionDigest(Vec<u8>);

impl std::fmt::Debug for SessionDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionDigest(..)")
    }
}

/// Told whenever a session ends before its expiry (sign-out, revocation), so the sockets that
/// the session authenticated can be closed; expiry itself each socket times on its own.
pub trait SessionEnds: Send + Sync + 'static {
    /// The session with this [`SessionInfo::session_id`] is no longer valid.
    fn ended(&self, session_id: &str);
}

/// A successful signup or sign-in: the new session and the account's username as stored
/// (which may differ from what was typed in case or width).
#[derive(Debug)]
pub struct SignedIn {
    /// The new session.
    pub token: SessionToken,
    /// The account's username (its `eid`).
    pub username: String,
}

/// An unanswered invite addressed to a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingInvite {
    /// Username of the requester.
    pub from: String,
    /// When the request was made (ms since the epoch).
    pub created_at: i64,
    /// When it was first handed out before, if it was (a client may have shown it already).
    pub previously_delivered_at: Option<i64>,
}

/// The accounts service: cheap to clone, shares the store, config and clock.
#[derive(Clone)]
pub struct Accounts {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    config: AccountsConfig,
    argon2: argon2::Params,
    clock: Arc<dyn Clock>,
    session_ends: std::sync::OnceLock<Arc<dyn SessionEnds>>,
    hashing: hashing::HashGate,
    limits: limits::AuthLimits,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("store", &self.inner.store)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Resolves a username to its id inside a store closure; `Ok(Err(NoSuchUser))` when absent.
fn user_id(conn: &mut store::DbConnection, username: &str) -> Result<Result<String, AccountError>, StoreError> {
    Ok(store::users::id_of(conn, username)?.ok_or(AccountError::NoSuchUser))
}

impl Accounts {
    /// Runs `f` on a blocking thread with the id of `username`; an unknown user is `NoSuchUser`.
    async fn with_user_id<T, F>(&self, username: String, f: F) -> Result<T, AccountError>
    where
        F: FnOnce(&mut store::DbConnection, &str) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        self.store()
            .run(move |conn| match user_id(conn, &username)? {
                Ok(id) => f(conn, &id).map(Ok),
                Err(e) => Ok(Err(e)),
            })
            .await?
    }

    /// A service on the wall clock; fails when `config` does not validate.
    pub fn new(store: Store, config: AccountsConfig) -> Result<Accounts, ConfigError> {
        Accounts::with_clock(store, config, clock::system())
    }

    /// A service reading time from `clock` (tests pass a [`crate::clock::ManualClock`]).
    pub fn with_clock(store: Store, config: AccountsConfig, clock: Arc<dyn Clock>) -> Result<Accounts, ConfigError> {
        config.validate()?;
        let argon2 =
            argon2::Params::new(config.argon2_memory_kib, config.argon2_iterations, config.argon2_parallelism, None)
                .map_err(|e| ConfigError { field: "argon2_*", reason: e.to_string() })?;
        let hashing = hashing::HashGate::new(
            config.hash_slots(),
            config.max_queued_hashes,
            Duration::from_millis(config.hash_queue_timeout_ms),
        );
        let limits = limits::AuthLimits::new(&config);
        let session_ends = std::sync::OnceLock::new();
        Ok(Accounts { inner: Arc::new(Inner { store, config, argon2, clock, session_ends, hashing, limits }) })
    }

    /// Sets who is told when a session ends early; the first call wins.
    pub fn notify_session_ends(&self, sink: Arc<dyn SessionEnds>) {
        let _ = self.inner.session_ends.set(sink);
    }

    fn session_ended(&self, session_id: &str) {
        if let Some(sink) = self.inner.session_ends.get() {
            sink.ended(session_id);
        }
    }

    /// The clock this service reads time from, for callers that must agree with it on expiry.
    pub fn clock(&self) -> Arc<dyn Clock> {
        Arc::clone(&self.inner.clock)
    }

    /// The configuration in force.
    pub fn config(&self) -> &AccountsConfig {
        &self.inner.config
    }

    /// Now, by this service's clock (ms since the epoch).
    pub fn now_millis(&self) -> i64 {
        self.inner.clock.now_millis()
    }

    fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Creates an account and returns a session for it (no client address: the per-address
    /// limit does not apply).
    pub async fn signup(
        &self,
        username: &str,
        password: &str,
        hash: HashAlgorithm,
    ) -> Result<SessionToken, AccountError> {
        Ok(self.signup_from(None, username, password, hash).await?.token)
    }

    /// Creates an account for a client at `client` and returns a session for it.
    pub async fn signup_from(
        &self,
        client: Option<IpAddr>,
        username: &str,
        password: &str,
        hash: HashAlgorithm,
    ) -> Result<SignedIn, AccountError> {
        let (username, token) = self.create(client, username, password, hash, true).await?;
        let token = token.ok_or(AccountError::Store(StoreError::Corrupt("signup made no session".into())))?;
        Ok(SignedIn { token, username })
    }

    /// Creates an account with no session (an operator's action); resolves to the stored name.
    /// The signup rules and the per-username limit apply; there is no client address to limit.
    pub async fn create_user(&self, username: &str, password: &str) -> Result<String, AccountError> {
        Ok(self.create(None, username, password, HashAlgorithm::Argon2id, false).await?.0)
    }

    /// Live accounts whose username starts with `prefix` and sorts after `after`, the first
    /// `limit` by username.
    pub async fn list_users(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<store::users::UserSummary>, AccountError> {
        let (prefix, after) = (prefix.to_owned(), after.map(str::to_owned));
        Ok(self.store().run(move |conn| store::users::page(conn, &prefix, after.as_deref(), limit)).await?)
    }

    /// A user's devices with when each was first and last seen, oldest first; `NoSuchUser` for
    /// an unknown (or deleted) user.
    pub async fn device_rows(&self, username: &str) -> Result<Vec<store::devices::DeviceRow>, AccountError> {
        let username = validate::username(username)?;
        self.with_user_id(username, store::devices::list).await
    }

    /// Checks and stores a new account, with a session when `with_session`; resolves to the
    /// stored name and that session's token.
    async fn create(
        &self,
        client: Option<IpAddr>,
        username: &str,
        password: &str,
        hash: HashAlgorithm,
        with_session: bool,
    ) -> Result<(String, Option<SessionToken>), AccountError> {
        let username = validate::new_username(username)?;
        let key = validate::username_key(&username);
        validate::password(password)?;
        if hash == HashAlgorithm::Sha256 && !self.inner.config.allow_sha256 {
            return Err(AccountError::HashNotAvailable(hash.name().to_owned()));
        }
        self.inner.limits.check(client, &key)?;
        // Checked before hashing so a taken name costs no argon2 work; the insert below still
        // catches the race where two signups pick the same free name.
        let (name, k) = (username.clone(), key.clone());
        if self.store().run(move |conn| store::users::name_taken(conn, &name, &k)).await? {
            return Err(AccountError::UserInUse);
        }
        let params = self.inner.argon2.clone();
        let pw = password.to_owned();
        let password_hash = self.inner.hashing.run(move || password::hash(hash, &pw, &params)).await?;

        let now = self.now_millis();
        let user = store::users::UserRow {
            id: uuid::Uuid::new_v4().to_string(),
            username: username.clone(),
            password_hash,
            created_at: now,
            username_key: Some(key),
        };
        let (token, session) = with_session.then(|| self.new_session(&user.id, now)).unzip();
        let result = self
            .store()
            .write(move |conn| {
                store::users::insert(conn, &user)?;
                match &session {
                    Some(session) => store::sessions::insert(conn, session),
                    None => Ok(()),
                }
            })
            .await;
        match result {
            Ok(()) => Ok((username, token)),
            Err(StoreError::AlreadyExists) => Err(AccountError::UserInUse),
            Err(e) => Err(e.into()),
        }
    }

    /// Checks a username and password and returns a new session (no client address).
    pub async fn signin(&self, username: &str, password: &str) -> Result<SessionToken, AccountError> {
        Ok(self.signin_from(None, username, password).await?.token)
    }

    /// Checks a username and password from a client at `client` and returns a new session.
    ///
    /// The name matches an account with exactly that username, else the one with the same
    /// comparison key (`ALICE` signs in as `alice`). The signup password rules do not apply:
    /// a short password is a wrong one.
    pub async fn signin_from(
        &self,
        client: Option<IpAddr>,
        username: &str,
        password: &str,
    ) -> Result<SignedIn, AccountError> {
        let username = validate::username(username)?;
        validate::signin_password(password)?;
        let key = validate::username_key(&username);
        self.inner.limits.check(client, &key)?;
        let user = self
            .store()
            .run(move |conn| store::users::find_for_signin(conn, &username, &key))
            .await?
            .ok_or(AccountError::NoSuchUser)?;
        let stored = user.password_hash.clone();
        let pw = password.to_owned();
        if !self.inner.hashing.run(move || password::verify(&stored, &pw)).await? {
            return Err(AccountError::WrongPassword);
        }
        let (token, session) = self.new_session(&user.id, self.now_millis());
        self.store().run(move |conn| store::sessions::insert(conn, &session)).await?;
        Ok(SignedIn { token, username: user.username })
    }

    /// Takes one sign-in attempt of `client` for `username` from the sign-in rate limits, for
    /// a sign-in that is not a password one (a key user's signed login, `crate::keys`).
    pub fn sign_in_attempt(&self, client: Option<IpAddr>, username: &str) -> Result<(), AccountError> {
        self.inner.limits.check(client, &validate::username_key(username))
    }

    /// A new session for `username`, whose identity the caller proved another way (an ed25519
    /// login checked by `crate::keys`); `NoSuchUser` when there is no such live account.
    pub async fn session_for(&self, username: &str) -> Result<SignedIn, AccountError> {
        let name = username.to_owned();
        let user_id =
            self.store().run(move |conn| store::users::id_of(conn, &name)).await?.ok_or(AccountError::NoSuchUser)?;
        let (token, session) = self.new_session(&user_id, self.now_millis());
        self.store().run(move |conn| store::sessions::insert(conn, &session)).await?;
        Ok(SignedIn { token, username: username.to_owned() })
    }

    /// Gives accounts made before comparison keys their key, oldest first (run at start-up).
    /// Returns how many got one and how many could not, because an older account holds it;
    /// those keep signing in by their exact username.
    pub async fn backfill_username_keys(&self) -> Result<(usize, usize), AccountError> {
        let (set, clashing) =
            self.store().run(|conn| store::users::backfill_keys(conn, validate::username_key)).await?;
        if clashing > 0 {
            tracing::warn!(
                clashing,
                "accounts whose username differs from an older one only by case or width keep no key"
            );
        }
        Ok((set, clashing))
    }

    /// The password-hashing gate's counters.
    pub fn hashing_stats(&self) -> HashingStats {
        self.inner.hashing.stats()
    }

    /// Rate-limit entries held now: (client addresses, usernames).
    pub fn rate_limit_entries(&self) -> (usize, usize) {
        self.inner.limits.tracked()
    }

    fn new_session(&self, user_id: &str, now: i64) -> (SessionToken, store::sessions::SessionRow) {
        let token = SessionToken::generate();
        let row = store::sessions::SessionRow {
            token_hash: token::digest(token.as_str()),
            user_id: user_id.to_owned(),
            device_id: None,
            created_at: now,
            expires_at: now.saturating_add(self.inner.config.session_ttl_millis()),
            revoked_at: None,
        };
        (token, row)
    }

    /// Looks a token up and says whose it is; unknown, expired and revoked are distinct errors.
    pub async fn verify_session(&self, token: &str) -> Result<SessionInfo, AccountError> {
        // Real tokens are 36-character UUIDs; anything far longer is not worth a lookup.
        if token.is_empty() || token.len() > 128 {
            return Err(AccountError::BadToken);
        }
        let digest = token::digest(token);
        let found = self.store().run(move |conn| store::sessions::find(conn, &digest)).await?;
        let (row, username) = found.ok_or(AccountError::BadToken)?;
        if row.revoked_at.is_some() {
            return Err(AccountError::SessionRevoked);
        }
        if self.now_millis() >= row.expires_at {
            return Err(AccountError::SessionExpired);
        }
        let session_id = token::session_id(&row.token_hash);
        Ok(SessionInfo {
            user_id: row.user_id,
            username,
            device_id: row.device_id,
            expires_at: row.expires_at,
            session_id,
            digest: SessionDigest(row.token_hash),
        })
    }

    /// Whether the session is still live: not signed out, revoked, expired, nor its user deleted.
    /// A socket asks once it listens for the session's end, so an end announced between its
    /// handshake and its subscription still closes it. A failed lookup counts as live (the
    /// socket is not closed for the database's fault).
    pub async fn session_live(&self, digest: &SessionDigest) -> bool {
        let digest = digest.0.clone();
        match self.store().run(move |conn| store::sessions::find(conn, &digest)).await {
            Ok(Some((row, _))) => row.revoked_at.is_none() && self.now_millis() < row.expires_at,
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %e, "session recheck failed; keeping the socket");
                true
            }
        }
    }

    /// Revokes a live session (sign out); the token is refused from then on.
    pub async fn signout(&self, token: &str) -> Result<(), AccountError> {
        let info = self.verify_session(token).await?;
        let digest = token::digest(token);
        let now = self.now_millis();
        let revoked = self.store().run(move |conn| store::sessions::revoke(conn, &digest, now)).await?;
        // Lost a race with a concurrent sign-out of the same token.
        if !revoked {
            return Err(AccountError::SessionRevoked);
        }
        self.session_ended(&info.session_id);
        Ok(())
    }

    /// Revokes every live session of `username` (an operator's action) and closes the sockets
    /// they authenticated; returns how many sessions it revoked.
    pub async fn revoke_sessions(&self, username: &str) -> Result<usize, AccountError> {
        let username = validate::username(username)?;
        let now = self.now_millis();
        let revoked =
            self.with_user_id(username, move |conn, id| store::sessions::revoke_all_of(conn, id, now)).await?;
        for digest in &revoked {
            self.session_ended(&token::session_id(digest));
        }
        Ok(revoked.len())
    }

    /// Deletes `username` (an operator's action): its sessions are revoked and the sockets they
    /// authenticated closed, its devices, contacts, invites and queued frames deleted, and the
    /// account left as a tombstone, so the name stays taken and signs in no more. The messages
    /// it exchanged stay in its peers' logs. Returns how many sessions it revoked.
    pub async fn delete_user(&self, username: &str) -> Result<usize, AccountError> {
        let username = validate::username(username)?;
        let now = self.now_millis();
        let revoked = self
            .store()
            .write(move |conn| {
                let Some(id) = store::users::id_of(conn, &username)? else { return Ok(None) };
                store::users::delete(conn, &id, now)
            })
            .await?
            .ok_or(AccountError::NoSuchUser)?;
        for digest in &revoked {
            self.session_ended(&token::session_id(digest));
        }
        Ok(revoked.len())
    }

    /// Registers `device_id` for `username` (or refreshes when it was last seen).
    pub async fn register_device(&self, username: &str, device_id: &str) -> Result<(), AccountError> {
        let username = validate::username(username)?;
        validate::device_id(device_id)?;
        let device = device_id.to_owned();
        let now = self.now_millis();
        self.with_user_id(username, move |conn, id| store::devices::upsert(conn, id, &device, now)).await
    }

    /// Verifies `token`, registers `device_id` for its user and records it on the session.
    pub async fn bind_device(&self, token: &str, device_id: &str) -> Result<SessionInfo, AccountError> {
        validate::device_id(device_id)?;
        let mut info = self.verify_session(token).await?;
        let digest = token::digest(token);
        let (uid, device) = (info.user_id.clone(), device_id.to_owned());
        let now = self.now_millis();
        self.store()
            .write(move |conn| {
                store::devices::upsert(conn, &uid, &device, now)?;
                store::sessions::set_device(conn, &digest, &device)
            })
            .await?;
        info.device_id = Some(device_id.to_owned());
        Ok(info)
    }

    /// The device ids registered for `username`, oldest first.
    pub async fn devices(&self, username: &str) -> Result<Vec<String>, AccountError> {
        Ok(self.device_rows(username).await?.into_iter().map(|d| d.device_id).collect())
    }

    /// When `username` was last online: the latest time one of its devices connected or left
    /// (`None` before any device has).
    pub async fn last_seen(&self, username: &str) -> Result<Option<i64>, AccountError> {
        let username = validate::username(username)?;
        self.with_user_id(username, store::devices::last_seen).await
    }

    /// Whether an account has this username (a name that breaks the rules cannot exist).
    pub async fn user_exists(&self, username: &str) -> Result<bool, AccountError> {
        let Ok(username) = validate::username(username) else {
            return Ok(false);
        };
        Ok(self.store().run(move |conn| store::users::exists(conn, &username)).await?)
    }

    /// Records an invite from `from` to `to` (re-sending re-opens an answered one).
    pub async fn invite_request(&self, from: &str, to: &str) -> Result<(), AccountError> {
        let from = validate::username(from)?;
        let to = validate::username(to)?;
        if from == to {
            return Err(AccountError::invalid("dest", "cannot invite yourself"));
        }
        let now = self.now_millis();
        self.store()
            .run(move |conn| {
                let (from_id, to_id) = match (user_id(conn, &from)?, user_id(conn, &to)?) {
                    (Ok(f), Ok(t)) => (f, t),
                    (Err(e), _) | (_, Err(e)) => return Ok(Err(e)),
                };
                if store::invites::reach(conn, &from, &to)?.contacts {
                    return Ok(Err(AccountError::AlreadyContacts));
                }
                store::invites::upsert_pending(conn, &from_id, &to_id, now).map(Ok)
            })
            .await?
    }

    /// `by` accepts the pending invite from `from`; the two become contacts.
    pub async fn invite_accept(&self, by: &str, from: &str) -> Result<(), AccountError> {
        self.invite_respond(by, from, true).await
    }

    /// `by` rejects the pending invite from `from`.
    pub async fn invite_reject(&self, by: &str, from: &str) -> Result<(), AccountError> {
        self.invite_respond(by, from, false).await
    }

    async fn invite_respond(&self, by: &str, from: &str, accept: bool) -> Result<(), AccountError> {
        let by = validate::username(by)?;
        let from = validate::username(from)?;
        let now = self.now_millis();
        self.store()
            .run(move |conn| {
                let (by_id, from_id) = match (user_id(conn, &by)?, user_id(conn, &from)?) {
                    (Ok(b), Ok(f)) => (b, f),
                    (Err(e), _) | (_, Err(e)) => return Ok(Err(e)),
                };
                let answered = store::invites::respond(conn, &from_id, &by_id, accept, now)?;
                Ok(if answered { Ok(()) } else { Err(AccountError::NoSuchInvite) })
            })
            .await?
    }

    /// Every unanswered invite to `username`, oldest first; marks them delivered.
    ///
    /// Unanswered invites are returned on every call (a client may not have kept one it saw),
    /// with `previously_delivered_at` telling which ones it was already given.
    pub async fn pending_invites(&self, username: &str) -> Result<Vec<PendingInvite>, AccountError> {
        let username = validate::username(username)?;
        let now = self.now_millis();
        let rows = self.with_user_id(username, move |conn, id| store::invites::take_pending_for(conn, id, now)).await?;
        Ok(rows
            .into_iter()
            .map(|r| PendingInvite {
                from: r.from_username,
                created_at: r.created_at,
                previously_delivered_at: r.delivered_at,
            })
            .collect())
    }

    /// Whether `a` and `b` are contacts.
    pub async fn are_contacts(&self, a: &str, b: &str) -> Result<bool, AccountError> {
        let a = validate::username(a)?;
        let b = validate::username(b)?;
        self.store()
            .run(move |conn| {
                if let (Err(e), _) | (_, Err(e)) = (user_id(conn, &a)?, user_id(conn, &b)?) {
                    return Ok(Err(e));
                }
                Ok(Ok(store::invites::reach(conn, &a, &b)?.contacts))
            })
            .await?
    }

    /// Usernames of `username`'s contacts, sorted.
    pub async fn contacts(&self, username: &str) -> Result<Vec<String>, AccountError> {
        let username = validate::username(username)?;
        self.with_user_id(username, store::invites::contacts_of).await
    }

    /// The rule for who may message whom, as configured; messaging and signals check by it too.
    pub fn message_policy(&self) -> MessagePolicy {
        MessagePolicy::new(self.inner.config.require_contacts)
    }

    /// Checks `from` may send a `message` to `to`, by [`Accounts::message_policy`].
    pub async fn authorize_message(&self, from: &str, to: &str) -> Result<(), AccountError> {
        let from = validate::username(from)?;
        let to = validate::username(to)?;
        let policy = self.message_policy();
        let decided = self.store().run(move |conn| policy.check(conn, &from, &to)).await?;
        decided.map_err(|refused| match refused {
            Unreachable::UnknownRecipient => AccountError::NoSuchUser,
            Unreachable::NotContacts => AccountError::NotContacts,
        })
    }

    /// Holds `frame_json` for `to` until they subscribe; refused when their queue is full.
    pub async fn queue_message(&self, to: &str, frame_json: &str) -> Result<(), AccountError> {
        let to = validate::username(to)?;
        // The frame is whatever the protocol layer built around a size-checked payload; this
        // bound only stops a caller from parking unbounded blobs in the database.
        if frame_json.len() > self.inner.config.max_message_bytes.saturating_mul(2).saturating_add(4096) {
            return Err(AccountError::invalid("message", "frame is too large to queue"));
        }
        let frame = frame_json.to_owned();
        let now = self.now_millis();
        let limit = i64::from(self.inner.config.max_pending_messages);
        let queued = self.with_user_id(to, move |conn, id| store::pending::push(conn, id, &frame, now, limit)).await?;
        if queued { Ok(()) } else { Err(AccountError::QueueFull) }
    }

    /// Removes and returns the frames queued for `username`, oldest first.
    pub async fn take_pending(&self, username: &str) -> Result<Vec<String>, AccountError> {
        let username = validate::username(username)?;
        self.with_user_id(username, store::pending::take_all).await
    }

    /// Deletes sessions that ended (expired or revoked) more than `grace_secs` ago; returns how many.
    pub async fn purge_sessions(&self, grace_secs: u64) -> Result<usize, AccountError> {
        let grace = i64::try_from(grace_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let before = self.now_millis().saturating_sub(grace);
        Ok(self.store().run(move |conn| store::sessions::purge(conn, before)).await?)
    }
}
