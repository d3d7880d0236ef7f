//! The seed-001 key directory: ed25519 logins ([`auth`]), addresses and their Courier users
//! ([`address`]), device registrations with their one-time prekeys, and the rule for telling a
//! device its prekeys run low. Sealed messages themselves are stored and delivered by
//! `crate::messaging` (the same per-user log as every other message); the endpoint that speaks
//! the protocol is `crate::transport::signal_socket`. SQL lives in `store::keys`; no transport
//! code lives here.
//!
//! Nothing here learns who sends a sealed message: anonymous requests carry no identity, and
//! none is logged.

pub mod address;
pub mod auth;
mod error;

use std::sync::Arc;

use serde::Deserialize;

pub use address::{Address, UserId};
pub use error::KeysError;

use crate::clock::Clock;
use crate::protocol::Payload;
use crate::pubsub::{Broadcast, Event, PubSub, Topic};
use crate::store::keys::{self as queries, RegistrationRow};
use crate::store::users::UserRow;
use crate::store::{Store, StoreError};

/// The event on `keys:<eid>` telling a device (`{"device": n}`) its one-time prekeys just
/// dropped below the threshold.
pub const EVENT_PREKEYS_LOW: &str = "prekeys_low";

/// How long a sign-in challenge of [`Keys::challenge`] may be answered, in milliseconds.
pub const CHALLENGE_TTL_MILLIS: i64 = 60_000;

/// The key directory's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// A device with fewer one-time prekeys than this is sent `preKeysLow`.
    pub prekeys_low_threshold: u32,
    /// The `keysRequested` of that `preKeysLow`.
    pub prekeys_requested: u32,
    /// Most one-time prekeys one `register` may carry.
    pub max_pre_keys_per_register: usize,
    /// Most one-time prekeys one device may have on file: registers that append past it are
    /// refused, so no device can fill the database a thousand keys at a time.
    pub max_pre_keys_per_device: usize,
    /// Longest signed prekey or one-time prekey, in bytes (real ones are tens of bytes).
    pub max_key_bytes: usize,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            prekeys_low_threshold: 10,
            prekeys_requested: 20,
            max_pre_keys_per_register: 1000,
            max_pre_keys_per_device: 2000,
            max_key_bytes: 1024,
        }
    }
}

/// One device's prekey bundle, as `requestPreKeys` hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The device.
    pub device: u32,
    /// Its registrationID.
    pub registration_id: u32,
    /// Its signed prekey.
    pub signed_pre_key: Vec<u8>,
    /// The one-time prekey this request took, if any were left.
    pub one_time_pre_key: Option<Vec<u8>>,
}

/// The key directory: cheap to clone, shared by every connection.
#[derive(Clone)]
pub struct Keys {
    store: Store,
    pubsub: PubSub,
    config: Arc<KeysConfig>,
    clock: Arc<dyn Clock>,
}

impl Keys {
    /// The directory on `store`, announcing low prekeys on `pubsub`.
    pub fn new(store: Store, pubsub: PubSub, config: KeysConfig, clock: Arc<dyn Clock>) -> Keys {
        Keys { store, pubsub, config: Arc::new(config), clock }
    }

    /// The settings in force.
    pub fn config(&self) -> &KeysConfig {
        &self.config
    }

    /// Makes sure the Courier user of a device that just proved its key exists. The account has
    /// no password (no password sign-in matches an empty hash) and no comparison key, so a
    /// password account whose name differs only in case cannot block it.
    pub async fn signed_in(&self, address: &Address) -> Result<(), KeysError> {
        let row = UserRow {
            id: uuid::Uuid::new_v4().to_string(),
            username: address.eid(),
            password_hash: String::new(),
            created_at: self.clock.now_millis(),
            username_key: None,
        };
        let eid = row.username.clone();
        let made = match self.store.write(move |conn| queries::ensure_user(conn, &row)).await {
            Ok(made) => made,
            // Two first logins of one user at once: the other made the account.
            Err(StoreError::AlreadyExists) => false,
            Err(e) => return Err(e.into()),
        };
        // An account an operator deleted stays a tombstone: its key signs in no more.
        if !made && !self.store.run(move |conn| crate::store::users::exists(conn, &eid)).await? {
            return Err(KeysError::UserDeleted);
        }
        Ok(())
    }

    /// A fresh sign-in challenge for `user`, good for one signed login within
    /// [`CHALLENGE_TTL_MILLIS`]: how a key user signs in where there is no signal connection to
    /// carry the challenge (`POST /api/keys/challenge`).
    pub async fn challenge(&self, user: &UserId) -> Result<[u8; auth::NONCE_BYTES], KeysError> {
        let nonce = auth::new_nonce();
        let (eid, expires_at) = (user.eid(), self.clock.now_millis().saturating_add(CHALLENGE_TTL_MILLIS));
        self.store.write(move |conn| queries::put_challenge(conn, &eid, &nonce, expires_at)).await?;
        Ok(nonce)
    }

    /// Checks a signed login answering one of [`Keys::challenge`]'s nonces, uses that nonce up
    /// and makes sure the user exists; resolves to the login's address.
    pub async fn sign_in(&self, response: &crate::pb::signal::AuthResponse) -> Result<Address, KeysError> {
        // The signature first: a forged login must not use up the real client's nonce.
        let (address, nonce) = auth::verify_signed(response)?;
        let (eid, now) = (address.eid(), self.clock.now_millis());
        if !self.store.write(move |conn| queries::take_challenge(conn, &eid, &nonce, now)).await? {
            return Err(KeysError::InvalidNonce);
        }
        self.signed_in(&address).await?;
        Ok(address)
    }

    /// Deletes the sign-in challenges that expired unanswered; returns how many.
    pub async fn purge_challenges(&self) -> Result<usize, KeysError> {
        let now = self.clock.now_millis();
        Ok(self.store.write(move |conn| queries::purge_challenges(conn, now)).await?)
    }

    /// Registers the device's keys (appending or replacing, see `store::keys::register`);
    /// resolves to its one-time prekeys now on file.
    pub async fn register(
        &self,
        address: &Address,
        registration_id: u32,
        signed_pre_key: Vec<u8>,
        pre_keys: Vec<Vec<u8>>,
    ) -> Result<i64, KeysError> {
        let config = &self.config;
        if pre_keys.len() > config.max_pre_keys_per_register {
            let max = config.max_pre_keys_per_register;
            return Err(KeysError::InvalidMessage(format!("at most {max} one-time prekeys per register")));
        }
        if signed_pre_key.is_empty() {
            return Err(KeysError::InvalidMessage("register needs a signedPreKey".into()));
        }
        let max_bytes = config.max_key_bytes;
        if signed_pre_key.len() > max_bytes || pre_keys.iter().any(|k| k.is_empty() || k.len() > max_bytes) {
            return Err(KeysError::InvalidMessage(format!("every prekey must be 1..={max_bytes} bytes")));
        }
        let max_on_file = i64::try_from(config.max_pre_keys_per_device).unwrap_or(i64::MAX);
        let row = RegistrationRow {
            username: address.eid(),
            device_id: i64::from(address.device),
            registration_id: i64::from(registration_id),
            signed_pre_key,
            registered_at: self.clock.now_millis(),
        };
        let adding = i64::try_from(pre_keys.len()).unwrap_or(i64::MAX);
        let registered = self
            .store
            .write(move |conn| {
                let kept = queries::kept_by_register(conn, &row)?;
                if kept.saturating_add(adding) > max_on_file {
                    return Ok(Err(kept));
                }
                queries::register(conn, &row, &pre_keys).map(Ok)
            })
            .await?;
        match registered {
            Ok(registered) => Ok(registered.remaining),
            Err(kept) => Err(KeysError::InvalidMessage(format!(
                "a device holds at most {max_on_file} one-time prekeys; it has {kept} and this adds {adding}"
            ))),
        }
    }

    /// Forgets the device's registration and prekeys (its sealed messages stay in the log).
    pub async fn unregister(&self, address: &Address) -> Result<(), KeysError> {
        let (eid, device) = (address.eid(), i64::from(address.device));
        self.store.write(move |conn| queries::unregister(conn, &eid, device)).await?;
        Ok(())
    }

    /// The device's one-time prekeys on file; `None` when it is not registered.
    pub async fn remaining(&self, address: &Address) -> Result<Option<i64>, KeysError> {
        let (eid, device) = (address.eid(), i64::from(address.device));
        let count = self
            .store
            .run(move |conn| match queries::registration(conn, &eid, device)? {
                Some(_) => Ok(Some(queries::remaining(conn, &eid, device)?)),
                None => Ok(None),
            })
            .await?;
        Ok(count)
    }

    /// The `keysRequested` to send a device with `remaining` one-time prekeys, if it is low.
    pub fn low(&self, remaining: i64) -> Option<u32> {
        (remaining < i64::from(self.config.prekeys_low_threshold)).then_some(self.config.prekeys_requested)
    }

    /// One bundle per registered device of `user` not in `known`, each taking one one-time
    /// prekey atomically; `UnknownUser` when the user has no registered device. A device this
    /// takes below the threshold is told so on `keys:<eid>` (once: only the claim that leaves
    /// exactly `threshold - 1` crosses it).
    pub async fn claim_bundles(&self, user: &UserId, known: &[u32]) -> Result<Vec<Bundle>, KeysError> {
        let eid = user.eid();
        let known = known.to_vec();
        let lookup = eid.clone();
        let claimed = self
            .store
            .write(move |conn| {
                let devices = queries::registrations(conn, &lookup)?;
                if devices.is_empty() {
                    return Ok(None);
                }
                let mut claimed = Vec::with_capacity(devices.len());
                for device in devices {
                    let Ok(id) = u32::try_from(device.device_id) else {
                        return Err(StoreError::Corrupt(format!("device id {} of {lookup}", device.device_id)));
                    };
                    if known.contains(&id) {
                        continue;
                    }
                    // Unregistered since the list was read is impossible inside this transaction.
                    if let Some(one) = queries::claim(conn, &lookup, device.device_id)? {
                        claimed.push((id, one));
                    }
                }
                Ok(Some(claimed))
            })
            .await?
            .ok_or(KeysError::UnknownUser)?;
        let threshold = i64::from(self.config.prekeys_low_threshold);
        let mut bundles = Vec::with_capacity(claimed.len());
        for (device, one) in claimed {
            if one.one_time_pre_key.is_some() && one.remaining == threshold - 1 {
                let payload = Payload::json(&serde_json::json!({ "device": device }));
                self.pubsub.publish(Broadcast::new(Topic::keys(&eid), Event::raw(EVENT_PREKEYS_LOW, payload)), None);
            }
            let registration_id = u32::try_from(one.registration.registration_id).map_err(|_| {
                StoreError::Corrupt(format!("registration id {} of {eid}", one.registration.registration_id))
            })?;
            bundles.push(Bundle {
                device,
                registration_id,
                signed_pre_key: one.registration.signed_pre_key,
                one_time_pre_key: one.one_time_pre_key,
            });
        }
        Ok(bundles)
    }
}
