//! Seed 002's JSON account protocol as a transport-free state machine.
//!
//! A [`JsonProtocolSession`] lives as long as one connection. The endpoint hands it each inbound
//! text frame and gets back an [`Outcome`]: frames to send back on this connection, in order,
//! and [`Effect`]s to perform (deliver a frame to another user, register this connection as a
//! subscriber, disconnect). It calls [`Accounts`] for everything durable and never touches a
//! socket, so the endpoint stays a thin loop and every frame can be tested here.

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::standards::{self, CIPHERS, PROTOCOL_VERSION, SERVER_NAME};
use super::{AccountError, Accounts, HashAlgorithm, RespCode, SessionInfo, validate};

/// What the endpoint must do beyond sending the replies.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// This connection now receives events for `username`; route `Deliver`s for them here.
    Subscribed {
        /// The subscribed user's id.
        user_id: String,
        /// The subscribed user's username (the `to` of deliveries).
        username: String,
        /// The session that subscribed: the connection ends when it does.
        session: SessionInfo,
    },
    /// Send `frame` to every connection subscribed as `to`.
    Deliver {
        /// Recipient username.
        to: String,
        /// The frame to send, with no session token in it.
        frame: Value,
        /// If `to` has no live connection, hand the frame to [`Accounts::queue_message`] so it
        /// is replayed on their next subscribe. False when the state is already durable (invites).
        queue_if_offline: bool,
    },
    /// Close the connection once the replies are sent.
    Disconnect,
}

/// The result of handling one inbound frame.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Frames for this connection, in order.
    pub replies: Vec<Value>,
    /// Side effects, in order.
    pub effects: Vec<Effect>,
}

impl Outcome {
    fn reply(frame: Value) -> Outcome {
        Outcome { replies: vec![frame], effects: Vec::new() }
    }

    fn error(reason: impl Into<String>) -> Outcome {
        Outcome::reply(error_frame(reason))
    }

    /// Whether the outcome asks for the connection to be closed.
    pub fn disconnects(&self) -> bool {
        self.effects.contains(&Effect::Disconnect)
    }
}

/// The protocol's frame for malformed or out-of-order input: `{"type":"error","reason":...}`.
pub fn error_frame(reason: impl Into<String>) -> Value {
    json!({ "type": "error", "reason": reason.into() })
}

const FRAME_TYPES: &[&str] = &[
    "identification",
    "protocol.standard",
    "signup",
    "signin",
    "subscribe",
    "invite.request",
    "invite.accept",
    "invite.reject",
    "message",
];

#[derive(Debug, Deserialize)]
#[serde(tag = "type")]
enum Inbound {
    #[serde(rename = "identification")]
    Identification {
        version: String,
        #[serde(default)]
        #[allow(dead_code)] // accepted for the seed's sake; the server has no use for it
        client: Option<String>,
    },
    #[serde(rename = "protocol.standard")]
    ProtocolStandard {
        #[serde(default)]
        standards: Option<String>,
    },
    #[serde(rename = "signup")]
    Signup {
        username: String,
        password: String,
        #[serde(default)]
        hash: Option<String>,
        #[serde(default)]
        cipher: Option<String>,
    },
    #[serde(rename = "signin")]
    Signin { username: String, password: String },
    #[serde(rename = "subscribe")]
    Subscribe { session: String },
    #[serde(rename = "invite.request")]
    InviteRequest(Routed),
    #[serde(rename = "invite.accept")]
    InviteAccept(Routed),
    #[serde(rename = "invite.reject")]
    InviteReject(Routed),
    #[serde(rename = "message")]
    Message {
        #[serde(flatten)]
        routed: Routed,
        nonce: String,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
struct Routed {
    session: String,
    source: String,
    dest: String,
}

/// `{"type": kind, "resp_code": code}` plus a `reason` for Courier's own codes (7+), so seed
/// frames keep exactly the seed's shape.
fn status_frame(kind: &str, err: Option<&AccountError>) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("type".into(), kind.into());
    let code = err.map_or(RespCode::Success, AccountError::resp_code);
    m.insert("resp_code".into(), code.as_u8().into());
    if let Some(e) = err.filter(|_| !code.is_seed_code()) {
        m.insert("reason".into(), e.public_reason().into());
    }
    m
}

fn log_if_internal(kind: &str, err: &AccountError) {
    if err.is_internal() {
        tracing::error!(frame = kind, error = %err, "accounts operation failed");
    }
}

/// One connection's progress through seed 002: identified, then (optionally) subscribed.
#[derive(Debug)]
pub struct JsonProtocolSession {
    accounts: Accounts,
    /// The client's address, for the per-address signup/sign-in limits.
    peer: Option<IpAddr>,
    identified: bool,
    subscription: Option<SessionInfo>,
}

impl JsonProtocolSession {
    /// A fresh session for a new connection whose address is not known.
    pub fn new(accounts: Accounts) -> JsonProtocolSession {
        JsonProtocolSession::with_peer(accounts, None)
    }

    /// A fresh session for a new connection from `peer`.
    pub fn with_peer(accounts: Accounts, peer: Option<IpAddr>) -> JsonProtocolSession {
        JsonProtocolSession { accounts, peer, identified: false, subscription: None }
    }

    /// Whether `identification` has succeeded.
    pub fn is_identified(&self) -> bool {
        self.identified
    }

    /// The subscribed user's username, once `subscribe` has succeeded.
    pub fn subscribed_user(&self) -> Option<&str> {
        self.subscription.as_ref().map(|s| s.username.as_str())
    }

    /// Handles one inbound text frame.
    pub async fn handle_text(&mut self, text: &str) -> Outcome {
        match serde_json::from_str::<Value>(text) {
            Ok(frame) => self.handle_frame(frame).await,
            Err(e) => Outcome::error(format!("frame is not valid JSON: {e}")),
        }
    }

    /// Handles one inbound frame already parsed as JSON.
    pub async fn handle_frame(&mut self, frame: Value) -> Outcome {
        let kind = match frame.as_object().map(|o| o.get("type")) {
            None => return Outcome::error("frame must be a JSON object"),
            Some(None) => return Outcome::error("missing field `type`"),
            Some(Some(Value::String(kind))) => kind.clone(),
            Some(Some(_)) => return Outcome::error("field `type` must be a string"),
        };
        if !FRAME_TYPES.contains(&kind.as_str()) {
            let shown: String = kind.chars().take(64).collect();
            return Outcome::error(format!("unknown frame type `{shown}`"));
        }
        let inbound: Inbound = match serde_json::from_value(frame) {
            Ok(inbound) => inbound,
            Err(e) => return Outcome::error(format!("invalid `{kind}` frame: {e}")),
        };
        if !self.identified && !matches!(inbound, Inbound::Identification { .. }) {
            return Outcome::error("send `identification` first");
        }
        match inbound {
            Inbound::Identification { version, .. } => self.identification(&version),
            Inbound::ProtocolStandard { standards } => self.protocol_standard(standards.as_deref()),
            Inbound::Signup { username, password, hash, cipher } => {
                self.signup(&username, &password, hash.as_deref(), cipher.as_deref()).await
            }
            Inbound::Signin { username, password } => self.signin(&username, &password).await,
            Inbound::Subscribe { session } => self.subscribe(&session).await,
            Inbound::InviteRequest(r) => self.invite("invite.request", r).await,
            Inbound::InviteAccept(r) => self.invite("invite.accept", r).await,
            Inbound::InviteReject(r) => self.invite("invite.reject", r).await,
            Inbound::Message { routed, nonce, message } => self.message(routed, nonce, message).await,
        }
    }

    fn identification(&mut self, version: &str) -> Outcome {
        if !standards::version_supported(version) {
            let shown: String = version.chars().take(32).collect();
            return Outcome::error(format!(
                "unsupported protocol version `{shown}`; this server speaks {PROTOCOL_VERSION}"
            ));
        }
        self.identified = true;
        Outcome::reply(json!({
            "type": "identification",
            "version": PROTOCOL_VERSION,
            "server": SERVER_NAME,
            "invitations": true,
            "resp_code": 0,
        }))
    }

    fn protocol_standard(&self, requested: Option<&str>) -> Outcome {
        let wanted: Vec<&str> = match requested {
            None => vec!["ciphers", "hashes"],
            Some(list) => list.split(',').map(str::trim).filter(|s| !s.is_empty()).collect(),
        };
        let mut m = status_frame("protocol.standard", None);
        if wanted.contains(&"ciphers") {
            m.insert("ciphers".into(), json!(CIPHERS));
        }
        if wanted.contains(&"hashes") {
            m.insert("hashes".into(), json!(standards::hashes(self.accounts.config())));
        }
        if !m.contains_key("ciphers") && !m.contains_key("hashes") {
            return Outcome::error("`standards` must name `ciphers` and/or `hashes`");
        }
        Outcome::reply(Value::Object(m))
    }

    async fn signup(&self, username: &str, password: &str, hash: Option<&str>, cipher: Option<&str>) -> Outcome {
        let result = async {
            if let Some(cipher) = cipher.filter(|c| !CIPHERS.contains(c)) {
                return Err(AccountError::CipherNotAvailable(cipher.chars().take(32).collect()));
            }
            let algorithm = HashAlgorithm::parse(hash.unwrap_or("argon2id"))?;
            self.accounts.signup_from(self.peer, username, password, algorithm).await
        }
        .await;
        Outcome::reply(session_reply("signup", result))
    }

    async fn signin(&self, username: &str, password: &str) -> Outcome {
        let result = self.accounts.signin_from(self.peer, username, password).await;
        Outcome::reply(session_reply("signin", result))
    }

    async fn subscribe(&mut self, token: &str) -> Outcome {
        if let Some(current) = &self.subscription {
            return Outcome::error(format!("already subscribed as `{}`", current.username));
        }
        let info = match self.accounts.verify_session(token).await {
            Ok(info) => info,
            Err(e) => {
                log_if_internal("subscribe", &e);
                let mut out = Outcome::reply(Value::Object(status_frame("subscribe", Some(&e))));
                // The seed closes the connection on a bad token; a server fault lets the client retry.
                if e.resp_code() == RespCode::BadToken {
                    out.effects.push(Effect::Disconnect);
                }
                return out;
            }
        };
        let mut out = Outcome::reply(Value::Object(status_frame("subscribe", None)));
        out.effects.push(Effect::Subscribed {
            user_id: info.user_id.clone(),
            username: info.username.clone(),
            session: info.clone(),
        });
        out.replies.extend(self.backlog(&info.username).await);
        self.subscription = Some(info);
        out
    }

    /// Frames that waited for `username` while offline: unanswered invites, then queued frames.
    async fn backlog(&self, username: &str) -> Vec<Value> {
        let mut frames = Vec::new();
        // A failure here leaves the backlog in the database for the next subscribe, so the
        // subscription itself still stands.
        match self.accounts.pending_invites(username).await {
            Ok(invites) => frames.extend(
                invites.into_iter().map(|i| json!({ "type": "invite.request", "source": i.from, "dest": username })),
            ),
            Err(e) => tracing::error!(error = %e, "could not load pending invites"),
        }
        match self.accounts.take_pending(username).await {
            Ok(queued) => {
                for text in queued {
                    match serde_json::from_str::<Value>(&text) {
                        Ok(frame) => frames.push(frame),
                        Err(e) => {
                            tracing::warn!(error = %e, "dropping a queued frame that is not JSON")
                        }
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "could not load queued frames"),
        }
        frames
    }

    /// Checks an authenticated frame: subscribed, token valid and the subscriber's, `source` is them.
    async fn authorize(&mut self, kind: &str, routed: &Routed) -> Result<(), Outcome> {
        let Some(subscribed) = &self.subscription else {
            return Err(Outcome::error(format!("`{kind}` needs a subscribed session; send `subscribe` first")));
        };
        // Re-checked on every frame so a sign-out or expiry takes effect mid-connection.
        let verified = match self.accounts.verify_session(&routed.session).await {
            Ok(info) if info.user_id == subscribed.user_id => Ok(()),
            Ok(_) => Err(AccountError::BadToken),
            Err(e) => Err(e),
        };
        if let Err(e) = verified {
            log_if_internal(kind, &e);
            let mut out = Outcome::reply(Value::Object(status_frame(kind, Some(&e))));
            if e.resp_code() == RespCode::BadToken {
                self.subscription = None;
                out.effects.push(Effect::Disconnect);
            }
            return Err(out);
        }
        if routed.source != subscribed.username {
            return Err(Outcome::reply(Value::Object(status_frame(kind, Some(&AccountError::SourceMismatch)))));
        }
        Ok(())
    }

    async fn invite(&mut self, kind: &'static str, routed: Routed) -> Outcome {
        if let Err(out) = self.authorize(kind, &routed).await {
            return out;
        }
        let dest = match validate::username(&routed.dest) {
            Ok(dest) => dest,
            Err(e) => return Outcome::reply(Value::Object(status_frame(kind, Some(&e)))),
        };
        let source = routed.source;
        let result = match kind {
            "invite.request" => self.accounts.invite_request(&source, &dest).await,
            "invite.accept" => self.accounts.invite_accept(&source, &dest).await,
            _ => self.accounts.invite_reject(&source, &dest).await,
        };
        if let Err(e) = result {
            log_if_internal(kind, &e);
            return Outcome::reply(Value::Object(status_frame(kind, Some(&e))));
        }
        let mut out = Outcome::reply(Value::Object(status_frame(kind, None)));
        out.effects.push(Effect::Deliver {
            to: dest.clone(),
            frame: json!({ "type": kind, "source": source, "dest": dest }),
            // A request is stored as an invite and re-sent on subscribe; an answer is not, so
            // an offline requester needs it queued.
            queue_if_offline: kind != "invite.request",
        });
        out
    }

    async fn message(&mut self, routed: Routed, nonce: String, message: String) -> Outcome {
        const KIND: &str = "message";
        if let Err(out) = self.authorize(KIND, &routed).await {
            return out;
        }
        let limit = self.accounts.config().max_message_bytes;
        if nonce.len().saturating_add(message.len()) > limit {
            let e = AccountError::invalid("message", format!("nonce and message exceed {limit} bytes"));
            return Outcome::reply(Value::Object(status_frame(KIND, Some(&e))));
        }
        let dest = match validate::username(&routed.dest) {
            Ok(dest) => dest,
            Err(e) => return Outcome::reply(Value::Object(status_frame(KIND, Some(&e)))),
        };
        if let Err(e) = self.accounts.authorize_message(&routed.source, &dest).await {
            log_if_internal(KIND, &e);
            return Outcome::reply(Value::Object(status_frame(KIND, Some(&e))));
        }
        let mut out = Outcome::reply(Value::Object(status_frame(KIND, None)));
        out.effects.push(Effect::Deliver {
            to: dest.clone(),
            frame: json!({
                "type": KIND,
                "source": routed.source,
                "dest": dest,
                "nonce": nonce,
                "message": message,
            }),
            queue_if_offline: true,
        });
        out
    }
}

/// The seed's `signup`/`signin` reply: `session` holds the token, or "" on failure.
fn session_reply(kind: &str, result: Result<super::SignedIn, AccountError>) -> Value {
    let (mut m, session) = match result {
        Ok(done) => (status_frame(kind, None), done.token.into_string()),
        Err(e) => {
            log_if_internal(kind, &e);
            (status_frame(kind, Some(&e)), String::new())
        }
    };
    m.insert("session".into(), session.into());
    Value::Object(m)
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
