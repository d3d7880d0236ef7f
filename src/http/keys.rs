//! Sign-in for key users where no signal connection carries the challenge (a Phoenix-channel
//! client, a browser): `POST /api/keys/challenge` hands out a nonce for an eid, and
//! `POST /api/keys/signin` trades the signed `Login` for an ordinary session token, which the
//! Phoenix socket then takes like any other. Mounted by [`super::api::configure`]; needs
//! `web::Data<Keys>` and `web::Data<Accounts>` in app data.

use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::json;

use crate::accounts::Accounts;
use crate::error::{Code, Error};
use crate::keys::{CHALLENGE_TTL_MILLIS, Keys, KeysError, UserId};
use crate::pb::signal::AuthResponse;

/// `POST /api/keys/challenge` body: the eid that will sign in.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ChallengeBody {
    user: String,
}

/// `POST /api/keys/signin` body: the serialized `signal.Login` and its ed25519 signature, both
/// standard base64.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SigninBody {
    login: String,
    signature: String,
}

pub(super) async fn challenge(
    keys: web::Data<Keys>,
    accounts: web::Data<Accounts>,
    req: HttpRequest,
    body: web::Json<ChallengeBody>,
) -> Result<HttpResponse, Error> {
    let user = UserId::from_eid(&body.user)
        .ok_or_else(|| KeysError::InvalidUserId(format!("{} is not a key user's eid", body.user)))?;
    // Every challenge is a row until it is used or expires: the sign-in limits bound how fast
    // one client, or anyone asking for one eid, can add them.
    accounts.sign_in_attempt(req.peer_addr().map(|a| a.ip()), &body.user)?;
    let nonce = keys.challenge(&user).await?;
    Ok(HttpResponse::Ok().json(json!({ "nonce": STANDARD.encode(nonce), "expires_in_ms": CHALLENGE_TTL_MILLIS })))
}

pub(super) async fn signin(
    keys: web::Data<Keys>,
    accounts: web::Data<Accounts>,
    body: web::Json<SigninBody>,
) -> Result<HttpResponse, Error> {
    let decode = |field: &str, text: &str| {
        STANDARD.decode(text).map_err(|_| Error::new(Code::InvalidInput, format!("{field} must be standard base64")))
    };
    let response =
        AuthResponse { login: decode("login", &body.login)?, signature: decode("signature", &body.signature)? };
    let address = keys.sign_in(&response).await?;
    let done = accounts.session_for(&address.eid()).await?;
    Ok(HttpResponse::Ok().json(json!({
        "session": done.token.as_str(),
        "username": done.username,
        "device": address.device,
    })))
}
