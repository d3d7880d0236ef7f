//! The `/api` routes through `actix_web::test`, on every backend.

use actix_web::http::StatusCode;
use actix_web::http::header::{AUTHORIZATION, CONTENT_TYPE};
use actix_web::{App, test, web};
use courier::accounts::{Accounts, AccountsConfig};
use serde_json::{Value, json};

use crate::support::{PW, TestDb, config};

backend_tests!(
    signup_201_and_conflict_409,
    signin_200_401_404,
    signout_by_header_and_body,
    bad_json_is_a_400_json_body,
    protocol_lists_the_standards,
);

/// Sends `req` to an app with the API mounted and returns status and JSON body.
async fn call(accounts: &Accounts, req: test::TestRequest) -> (StatusCode, Value) {
    let app = test::init_service(
        App::new().app_data(web::Data::new(accounts.clone())).configure(courier::http::api::configure),
    )
    .await;
    let resp = test::call_service(&app, req.to_request()).await;
    let status = resp.status();
    let body = test::read_body(resp).await;
    let json = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {body:?}"));
    (status, json)
}

fn post(path: &str, body: Value) -> test::TestRequest {
    test::TestRequest::post().uri(path).set_json(body)
}

fn assert_error(got: &(StatusCode, Value), status: u16, code: &str, resp_code: u8) {
    assert_eq!(got.0.as_u16(), status, "{}", got.1);
    assert_eq!(got.1["error"], code, "{}", got.1);
    assert_eq!(got.1["resp_code"], resp_code, "{}", got.1);
    assert!(got.1["reason"].as_str().is_some_and(|r| !r.is_empty()), "{}", got.1);
}

async fn signup_201_and_conflict_409(db: &TestDb) {
    let accounts = db.accounts(config());
    let (status, body) = call(&accounts, post("/api/signup", json!({"username": "john doe", "password": PW}))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["username"], "john doe");
    let token = body["session"].as_str().expect("session");
    assert_eq!(accounts.verify_session(token).await.unwrap().username, "john doe");

    let got = call(&accounts, post("/api/signup", json!({"username": "john doe", "password": PW}))).await;
    assert_error(&got, 409, "user_in_use", 2);
    let got = call(&accounts, post("/api/signup", json!({"username": "jane", "password": "short"}))).await;
    assert_error(&got, 400, "invalid_input", 7);
    let got = call(&accounts, post("/api/signup", json!({"username": "jane", "password": PW, "hash": "sha256"}))).await;
    assert_error(&got, 400, "hash_not_available", 3);
}

async fn signin_200_401_404(db: &TestDb) {
    let accounts = db.accounts(config());
    call(&accounts, post("/api/signup", json!({"username": "bob", "password": PW}))).await;
    let (status, body) = call(&accounts, post("/api/signin", json!({"username": "bob", "password": PW}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(accounts.verify_session(body["session"].as_str().unwrap_or_default()).await.is_ok());
    let got = call(&accounts, post("/api/signin", json!({"username": "bob", "password": "wrongpassword"}))).await;
    assert_error(&got, 401, "wrong_password", 6);
    let got = call(&accounts, post("/api/signin", json!({"username": "nobody", "password": PW}))).await;
    assert_error(&got, 404, "no_such_user", 5);
}

async fn signout_by_header_and_body(db: &TestDb) {
    let accounts = db.accounts(config());
    let (_, body) = call(&accounts, post("/api/signup", json!({"username": "carol", "password": PW}))).await;
    let first = body["session"].as_str().unwrap_or_default().to_owned();
    let (_, body) = call(&accounts, post("/api/signin", json!({"username": "carol", "password": PW}))).await;
    let second = body["session"].as_str().unwrap_or_default().to_owned();

    let by_header =
        test::TestRequest::post().uri("/api/signout").insert_header((AUTHORIZATION, format!("Bearer {first}")));
    let (status, body) = call(&accounts, by_header).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["signed_out"], true);
    assert!(accounts.verify_session(&first).await.is_err());

    let (status, _) = call(&accounts, post("/api/signout", json!({"session": second}))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(accounts.verify_session(&second).await.is_err());

    let again = test::TestRequest::post().uri("/api/signout").insert_header((AUTHORIZATION, format!("Bearer {first}")));
    assert_error(&call(&accounts, again).await, 401, "session_revoked", 1);
    assert_error(&call(&accounts, post("/api/signout", json!({"session": "garbage"}))).await, 401, "bad_token", 1);
    assert_error(&call(&accounts, test::TestRequest::post().uri("/api/signout")).await, 401, "bad_token", 1);
}

async fn bad_json_is_a_400_json_body(db: &TestDb) {
    let accounts = db.accounts(config());
    let raw = |path: &str, body: &'static str| {
        test::TestRequest::post().uri(path).insert_header((CONTENT_TYPE, "application/json")).set_payload(body)
    };
    assert_error(&call(&accounts, raw("/api/signup", "{not json")).await, 400, "invalid_json", 7);
    assert_error(&call(&accounts, raw("/api/signin", r#"{"username": "x"}"#)).await, 400, "invalid_json", 7);
    assert_error(
        &call(&accounts, raw("/api/signup", r#"{"username": 5, "password": "secretpassword"}"#)).await,
        400,
        "invalid_json",
        7,
    );
    assert_error(&call(&accounts, raw("/api/signout", "{nope")).await, 400, "invalid_json", 7);
    let plain =
        test::TestRequest::post().uri("/api/signin").insert_header((CONTENT_TYPE, "text/plain")).set_payload("hi");
    assert_error(&call(&accounts, plain).await, 400, "invalid_json", 7);
    assert!(!accounts.user_exists("x").await.unwrap());
}

async fn protocol_lists_the_standards(db: &TestDb) {
    let accounts = db.accounts(config());
    let (status, body) = call(&accounts, test::TestRequest::get().uri("/api/protocol")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["version"], "1.0.0");
    assert_eq!(body["ciphers"], json!(["xchacha-poly1305", "aes256-gcm"]));
    assert_eq!(body["hashes"], json!(["argon2id"]));
    let with_sha = db.accounts(AccountsConfig { allow_sha256: true, ..config() });
    let (_, body) = call(&with_sha, test::TestRequest::get().uri("/api/protocol")).await;
    assert_eq!(body["hashes"], json!(["argon2id", "sha256"]));
}
