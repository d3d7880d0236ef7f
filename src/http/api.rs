//! The browser-facing JSON accounts API: signup, signin, signout, the advertised protocol, and
//! (in `super::keys`) the key users' signed sign-in.
//!
//! Routes live under `/api` (see [`configure`]) and expect `web::Data<Accounts>` in app data.
//! Every error, including unreadable JSON, is a JSON body `{"error", "reason", "resp_code"}`
//! whose codes come from the crate's one table (`crate::error`).

use actix_web::http::header::AUTHORIZATION;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use serde::Deserialize;
use serde_json::json;

use crate::accounts::standards::{self, CIPHERS, PROTOCOL_VERSION, SERVER_NAME};
use crate::accounts::{AccountError, Accounts, HashAlgorithm};
use crate::error::{Code, Error};

/// Largest request body accepted, in bytes; the biggest legitimate one is a 1 KiB password.
const BODY_LIMIT: usize = 16 * 1024;

/// Mounts the routes under `/api`, with the key users' sign-in under `/api/keys`
/// (`super::keys`); needs `web::Data<Accounts>` and `web::Data<Keys>` registered on the app.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api")
            .app_data(web::JsonConfig::default().limit(BODY_LIMIT).error_handler(json_error))
            .app_data(web::PayloadConfig::new(BODY_LIMIT))
            .route("/signup", web::post().to(signup))
            .route("/signin", web::post().to(signin))
            .route("/signout", web::post().to(signout))
            .route("/session", web::get().to(session))
            .route("/protocol", web::get().to(protocol))
            .service(
                web::scope("/keys")
                    .route("/challenge", web::post().to(super::keys::challenge))
                    .route("/signin", web::post().to(super::keys::signin)),
            ),
    );
}

fn json_error(err: actix_web::error::JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let refused = Error::from_json_payload(&err, BODY_LIMIT);
    actix_web::error::InternalError::from_response(err, refused.error_response()).into()
}

/// `POST /api/signup` body.
#[derive(Debug, Deserialize)]
struct SignupBody {
    username: String,
    password: String,
    #[serde(default)]
    hash: Option<String>,
}

/// `POST /api/signin` body.
#[derive(Debug, Deserialize)]
struct SigninBody {
    username: String,
    password: String,
}

/// `POST /api/signout` body, when the token is not in `Authorization`.
#[derive(Debug, Deserialize)]
struct SignoutBody {
    session: String,
}

async fn signup(
    accounts: web::Data<Accounts>,
    req: HttpRequest,
    body: web::Json<SignupBody>,
) -> Result<HttpResponse, Error> {
    let body = body.into_inner();
    let algorithm = HashAlgorithm::parse(body.hash.as_deref().unwrap_or("argon2id"))?;
    let client = req.peer_addr().map(|a| a.ip());
    let done = accounts.signup_from(client, &body.username, &body.password, algorithm).await?;
    Ok(HttpResponse::Created().json(json!({ "session": done.token.as_str(), "username": done.username })))
}

async fn signin(
    accounts: web::Data<Accounts>,
    req: HttpRequest,
    body: web::Json<SigninBody>,
) -> Result<HttpResponse, Error> {
    let client = req.peer_addr().map(|a| a.ip());
    let done = accounts.signin_from(client, &body.username, &body.password).await?;
    Ok(HttpResponse::Ok().json(json!({ "session": done.token.as_str(), "username": done.username })))
}

/// The token from `Authorization: Bearer <token>`, if that header is present and well-formed.
fn bearer(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

async fn signout(accounts: web::Data<Accounts>, req: HttpRequest, body: web::Bytes) -> Result<HttpResponse, Error> {
    let token = match bearer(&req) {
        Some(token) => token,
        None if body.iter().all(u8::is_ascii_whitespace) => {
            return Err(AccountError::BadToken.into());
        }
        None => {
            serde_json::from_slice::<SignoutBody>(&body)
                .map_err(|e| {
                    Error::new(Code::InvalidJson, format!("request body is not valid JSON for this route: {e}"))
                })?
                .session
        }
    };
    accounts.signout(&token).await?;
    Ok(HttpResponse::Ok().json(json!({ "signed_out": true })))
}

/// `GET /api/session` (`Authorization: Bearer <session>`): whether the token is live, and whose,
/// so a page can tell a refused session from a server that is down before it opens a socket.
async fn session(accounts: web::Data<Accounts>, req: HttpRequest) -> Result<HttpResponse, Error> {
    let token = bearer(&req).ok_or(AccountError::BadToken)?;
    let info = accounts.verify_session(&token).await?;
    Ok(HttpResponse::Ok().json(json!({
        "username": info.username,
        "device": info.device_id,
        "expires_at": info.expires_at,
    })))
}

async fn protocol(accounts: web::Data<Accounts>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "version": PROTOCOL_VERSION,
        "server": SERVER_NAME,
        "invitations": true,
        "ciphers": CIPHERS,
        "hashes": standards::hashes(accounts.config()),
    }))
}
