//! HTTP endpoints that are not the WebSocket transport: operator routes and health (`admin`)
//! and the browser-facing accounts API (`api`). Handlers only translate between HTTP and the
//! domain services; rules live in those services.

pub mod admin;
pub mod api;

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

/// Largest JSON body the app-wide extractor accepts, in bytes.
pub const JSON_LIMIT: usize = 64 * 1024;

/// App-wide JSON extractor settings: bounded bodies, and errors as JSON bodies (400/413).
pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default().limit(JSON_LIMIT).error_handler(|err, _req| {
        use actix_web::error::JsonPayloadError as E;
        let response = match &err {
            E::OverflowKnownLength { .. } | E::Overflow { .. } => HttpResponse::PayloadTooLarge().json(
                json!({ "error": "body_too_large", "reason": format!("request body exceeds {JSON_LIMIT} bytes") }),
            ),
            other => HttpResponse::BadRequest().json(json!({ "error": "invalid_json", "reason": other.to_string() })),
        };
        actix_web::error::InternalError::from_response(err, response).into()
    })
}

/// Fallback for unknown routes: a JSON 404.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    HttpResponse::NotFound()
        .json(json!({ "error": "not_found", "reason": format!("no route for {} {}", req.method(), req.path()) }))
}
