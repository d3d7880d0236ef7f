//! What an unauthenticated client can make the server do, over the wire: the password-hashing
//! cap (503 `busy`), signup/sign-in rate limits (429 `rate_limited`, resp_code 11), sign-in
//! codes for short passwords, username keys and confusables, and admin routes that authorize
//! before they parse.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::on_both_backends;
use crate::support::db::TestDb;
use crate::support::{Client, TestServer, http, ok_reply, test_config};

const JSON: &[(&str, &str)] = &[("Content-Type", "application/json")];

async fn post(server: &TestServer, path: &str, body: Value) -> (u16, Value) {
    let (status, text) = http(server.addr, "POST", path, JSON, &body.to_string()).await;
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} answered non-JSON {text:?}: {e}")))
}

async fn signup(server: &TestServer, username: &str) -> (u16, Value) {
    post(server, "/api/signup", json!({"username": username, "password": "correct horse battery"})).await
}

async fn signin(server: &TestServer, username: &str, password: &str) -> (u16, Value) {
    post(server, "/api/signin", json!({"username": username, "password": password})).await
}

async fn json_client(server: &TestServer) -> Client {
    let mut c = Client::connect(&format!("ws://{}/json/websocket", server.addr)).await;
    c.send(json!({"type": "identification", "version": "1.0.0"})).await;
    assert_eq!(c.recv_json().await["resp_code"], 0);
    c
}

/// No rate limits, so tests of other rules are not cut short by them.
fn unlimited() -> courier::Config {
    let mut config = test_config();
    config.accounts.auth_per_address_per_min = 0;
    config.accounts.auth_per_username_per_min = 0;
    config
}

on_both_backends!(sign_in_does_not_apply_the_signup_password_policy, short_password_codes);
async fn short_password_codes(db: Arc<TestDb>) {
    let server = TestServer::start_on(db, unlimited(), |c| c);
    assert_eq!(signup(&server, "alice").await.0, 201);
    let (status, body) = signin(&server, "alice", "short").await;
    assert_eq!((status, body["error"].as_str()), (401, Some("wrong_password")), "{body}");
    let (status, body) = signin(&server, "nobody", "short").await;
    assert_eq!((status, body["error"].as_str()), (404, Some("no_such_user")), "{body}");
    let (status, body) = signin(&server, "alice", "").await;
    assert_eq!(status, 401, "{body}");

    let mut c = json_client(&server).await;
    c.send(json!({"type": "signin", "username": "alice", "password": "short"})).await;
    assert_eq!(c.recv_json().await, json!({"type": "signin", "resp_code": 6, "session": ""}));
    c.send(json!({"type": "signin", "username": "nobody", "password": "short"})).await;
    assert_eq!(c.recv_json().await, json!({"type": "signin", "resp_code": 5, "session": ""}));
}

on_both_backends!(usernames_compare_by_key_and_refuse_mixed_scripts, username_keys);
async fn username_keys(db: Arc<TestDb>) {
    let server = TestServer::start_on(db, unlimited(), |c| c);
    assert_eq!(signup(&server, "victim").await.0, 201);
    for variant in ["Victim", "VICTIM", "ｖｉｃｔｉｍ"] {
        let (status, body) = signup(&server, variant).await;
        assert_eq!((status, body["error"].as_str()), (409, Some("user_in_use")), "{variant}: {body}");
    }
    let (status, body) = signup(&server, "vісtim").await; // Cyrillic і and с
    assert_eq!((status, body["error"].as_str()), (400, Some("mixed_script_username")), "{body}");
    assert!(body["reason"].as_str().unwrap_or_default().contains("Cyrillic"), "{body}");

    // A case variant signs in to the existing account, under its stored name.
    let (status, body) = signin(&server, "VICTIM", "correct horse battery").await;
    assert_eq!((status, body["username"].as_str()), (200, Some("victim")), "{body}");
    let token = body["session"].as_str().unwrap().to_owned();
    let mut phoenix = Client::connect(&server.url(&format!("vsn=2.0.0&token={token}"))).await;
    phoenix.send(json!(["1", "1", "user:victim", "phx_join", {"mode": "pull"}])).await;
    let joined = phoenix.recv_json().await;
    assert_eq!(joined[4]["status"], "ok", "{joined}");

    let mut c = json_client(&server).await;
    c.send(json!({"type": "signup", "username": "Victim", "password": "secretpassword"})).await;
    assert_eq!(c.recv_json().await, json!({"type": "signup", "resp_code": 2, "session": ""}));
    c.send(json!({"type": "signup", "username": "vісtim", "password": "secretpassword"})).await;
    let reply = c.recv_json().await;
    assert_eq!(reply["resp_code"], 7, "{reply}");
    assert!(reply["reason"].as_str().unwrap_or_default().contains("scripts"), "{reply}");
}

/// 150 wrong-password sign-ins at once against one hashing slot and no queue: each either
/// hashed (401) or was refused at once (503 `busy`), never more than one hash ran, and a
/// connected socket's heartbeat is answered meanwhile.
#[tokio::test]
async fn a_sign_in_flood_is_capped_and_connected_sockets_stay_answered() {
    let mut config = unlimited();
    config.accounts.max_concurrent_hashes = 1;
    config.accounts.max_queued_hashes = 0;
    // A real hash cost, so requests overlap while one runs.
    config.accounts.argon2_memory_kib = 8 * 1024;
    let server = TestServer::start_with(config, |c| c);
    assert_eq!(signup(&server, "target").await.0, 201);
    let mut socket = server.client().await;

    let addr = server.addr;
    let flood: Vec<_> = (0..150)
        .map(|i| {
            tokio::spawn(async move {
                let body = json!({"username": "target", "password": format!("wrong password {i}")}).to_string();
                http(addr, "POST", "/api/signin", JSON, &body).await
            })
        })
        .collect();
    socket.send(json!([null, "hb", "phoenix", "heartbeat", {}])).await;
    assert_eq!(socket.recv_json().await, ok_reply(None, "hb", "phoenix", json!({})));

    let (mut wrong, mut busy) = (0, 0);
    for task in flood {
        let (status, text) = task.await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap();
        match status {
            401 => wrong += 1,
            503 => {
                assert_eq!(body["error"], "busy", "{body}");
                assert_eq!(body["resp_code"], 13, "{body}");
                busy += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(busy > 0 && wrong > 0, "wrong {wrong}, busy {busy}");
    // And the server still signs in once the flood is over.
    assert_eq!(signin(&server, "target", "correct horse battery").await.0, 200);
}

#[tokio::test]
async fn signups_and_sign_ins_are_rate_limited_per_address() {
    let mut config = test_config();
    config.accounts.auth_per_address_per_min = 1;
    config.accounts.auth_per_address_burst = 3;
    config.accounts.auth_per_username_per_min = 0;
    let server = TestServer::start_with(config, |c| c);
    assert_eq!(signup(&server, "one").await.0, 201);
    assert_eq!(signin(&server, "one", "correct horse battery").await.0, 200);
    assert_eq!(signin(&server, "two", "whatever").await.0, 404);
    let (status, body) = signup(&server, "three").await;
    assert_eq!((status, body["error"].as_str(), body["resp_code"].as_u64()), (429, Some("rate_limited"), Some(11)));
    assert!(body["reason"].as_str().unwrap_or_default().contains("from this address"), "{body}");
    let (status, _) = signin(&server, "one", "correct horse battery").await;
    assert_eq!(status, 429);
}

#[tokio::test]
async fn sign_ins_are_rate_limited_per_username_on_both_endpoints() {
    let mut config = test_config();
    config.accounts.auth_per_address_per_min = 0;
    config.accounts.auth_per_username_per_min = 1;
    config.accounts.auth_per_username_burst = 3;
    let server = TestServer::start_with(config, |c| c);
    assert_eq!(signup(&server, "victim").await.0, 201);
    assert_eq!(signin(&server, "victim", "guess one").await.0, 401);
    assert_eq!(signin(&server, "Victim", "guess two").await.0, 401);
    let (status, body) = signin(&server, "VICTIM", "guess three").await;
    assert_eq!(status, 429, "the case variant counts against the same account: {body}");
    assert!(body["reason"].as_str().unwrap_or_default().contains("for this username"), "{body}");
    // Other users are not affected.
    assert_eq!(signup(&server, "bystander").await.0, 201);

    let mut c = json_client(&server).await;
    c.send(json!({"type": "signin", "username": "victim", "password": "correct horse battery"})).await;
    let reply = c.recv_json().await;
    assert_eq!((reply["resp_code"].as_u64(), reply["session"].as_str()), (Some(11), Some("")), "{reply}");
    assert!(reply["reason"].as_str().unwrap_or_default().contains("retry in"), "{reply}");
}

#[tokio::test]
async fn admin_routes_authorize_before_parsing_the_body() {
    let mut config = test_config();
    config.admin.token = Some("s3cret".into());
    let server = TestServer::start_with(config, |c| c);
    let path = "/admin/api/broadcast";
    for headers in [JSON.to_vec(), vec![("Content-Type", "application/json"), ("Authorization", "Bearer wrong")]] {
        let (status, text) = http(server.addr, "POST", path, &headers, "{bad").await;
        let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!((status, body["error"].as_str()), (401, Some("unauthorized")), "{body}");
    }
    let authorized = [("Content-Type", "application/json"), ("Authorization", "Bearer s3cret")];
    let (status, text) = http(server.addr, "POST", path, &authorized, "{bad").await;
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_json")), "{body}");
    let (status, text) = http(server.addr, "POST", path, &authorized, r#"{"topic": "room:x", "event": "news"}"#).await;
    assert_eq!(status, 202, "{text}");
}
