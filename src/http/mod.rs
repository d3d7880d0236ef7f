//! HTTP endpoints that are not the WebSocket transport: operator routes (`admin`), the public
//! probes and metrics (`health`) and the browser-facing accounts API (`api`). Handlers only translate between HTTP and the
//! domain services; rules live in those services.

pub mod admin;
pub mod api;
pub mod health;
mod keys;

use actix_web::{HttpRequest, HttpResponse, ResponseError, web};

use crate::error::{Code, Error};

/// Largest JSON body the app-wide extractor accepts, in bytes.
pub const JSON_LIMIT: usize = 64 * 1024;

/// App-wide JSON extractor settings: bounded bodies, and errors as JSON bodies (400/413).
pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default().limit(JSON_LIMIT).error_handler(|err, _req| {
        let refused = Error::from_json_payload(&err, JSON_LIMIT);
        actix_web::error::InternalError::from_response(err, refused.error_response()).into()
    })
}

/// Fallback for unknown routes: a JSON 404.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    Error::new(Code::NotFound, format!("no route for {} {}", req.method(), req.path())).error_response()
}
