//! The key directory on `user:<eid>`, for Phoenix devices of key users: `keys.register`,
//! `keys.count` and `keys.bundle`, the same rules (and the same atomic one-time prekey hand-out)
//! as the signal endpoint's `register` and `requestPreKeys`. Bytes travel as standard base64.
//!
//! Unlike the signal endpoint's anonymous connection, a `keys.bundle` here comes from a signed-in
//! user: the server can tell who fetched whose keys.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::json;

use super::super::{HandleIn, Refusal, Reply};
use crate::error::Code;
use crate::keys::{Address, Keys, KeysError, UserId};
use crate::protocol::Payload;

/// `keys.register`: a device of the channel's user and its key material.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterParams {
    device: u32,
    registration_id: u32,
    signed_pre_key: String,
    #[serde(default)]
    one_time_pre_keys: Vec<String>,
}

/// `keys.count`: a device of the channel's user.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CountParams {
    device: u32,
}

/// `keys.bundle`: whose keys, and the devices already known.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleParams {
    user: String,
    #[serde(default)]
    known_device_ids: Vec<u32>,
}

fn parse<T: serde::de::DeserializeOwned>(payload: &Payload, shape: &str) -> Result<T, Reply> {
    payload
        .as_json_str()
        .and_then(|text| serde_json::from_str(text).ok())
        .ok_or_else(|| Reply::error(Code::InvalidInput, &format!("expected {shape}")))
}

fn bytes(field: &str, text: &str) -> Result<Vec<u8>, Reply> {
    STANDARD.decode(text).map_err(|_| Reply::error(Code::InvalidInput, &format!("{field} must be base64")))
}

fn key_user(eid: &str) -> Result<UserId, Reply> {
    UserId::from_eid(eid)
        .ok_or_else(|| Reply::from(Refusal::from(KeysError::InvalidUserId(format!("{eid} is not a key user's eid")))))
}

fn refused(e: KeysError) -> Reply {
    Reply::from(Refusal::from(e))
}

/// Handles one `keys.*` event of the user `eid`; `None` for any other event.
pub(super) fn handle(keys: &Keys, eid: &str, event: &str, payload: &Payload) -> Option<HandleIn> {
    let handled = match event {
        "keys.register" => register(keys, eid, payload),
        "keys.count" => count(keys, eid, payload),
        "keys.bundle" => bundle(keys, payload),
        _ => return None,
    };
    Some(handled.unwrap_or_else(HandleIn::Reply))
}

fn register(keys: &Keys, eid: &str, payload: &Payload) -> Result<HandleIn, Reply> {
    let shape = "{\"device\", \"registration_id\", \"signed_pre_key\", \"one_time_pre_keys\"}";
    let params: RegisterParams = parse(payload, shape)?;
    let address = Address { user: key_user(eid)?, device: params.device };
    let signed_pre_key = bytes("signed_pre_key", &params.signed_pre_key)?;
    let pre_keys = params.one_time_pre_keys.iter().map(|k| bytes("one_time_pre_keys", k)).collect::<Result<_, _>>()?;
    let keys = keys.clone();
    Ok(HandleIn::Later(Box::pin(async move {
        match keys.register(&address, params.registration_id, signed_pre_key, pre_keys).await {
            Ok(remaining) => Reply::ok(Payload::json(&json!({ "remaining": remaining }))),
            Err(e) => refused(e),
        }
    })))
}

fn count(keys: &Keys, eid: &str, payload: &Payload) -> Result<HandleIn, Reply> {
    let params: CountParams = parse(payload, "{\"device\"}")?;
    let address = Address { user: key_user(eid)?, device: params.device };
    let keys = keys.clone();
    Ok(HandleIn::Later(Box::pin(async move {
        match keys.remaining(&address).await {
            Ok(Some(remaining)) => Reply::ok(Payload::json(&json!({ "remaining": remaining }))),
            Ok(None) => refused(KeysError::UnknownDevice),
            Err(e) => refused(e),
        }
    })))
}

fn bundle(keys: &Keys, payload: &Payload) -> Result<HandleIn, Reply> {
    let params: BundleParams = parse(payload, "{\"user\", \"known_device_ids\"}")?;
    let user = key_user(&params.user)?;
    let keys = keys.clone();
    Ok(HandleIn::Later(Box::pin(async move {
        match keys.claim_bundles(&user, &params.known_device_ids).await {
            Ok(bundles) => {
                let bundles: Vec<_> = bundles
                    .iter()
                    .map(|b| {
                        json!({
                            "device": b.device,
                            "registration_id": b.registration_id,
                            "signed_pre_key": STANDARD.encode(&b.signed_pre_key),
                            "one_time_pre_key": b.one_time_pre_key.as_ref().map(|k| STANDARD.encode(k)),
                        })
                    })
                    .collect();
                Reply::ok(Payload::json(&json!({ "bundles": bundles })))
            }
            Err(e) => refused(e),
        }
    })))
}
