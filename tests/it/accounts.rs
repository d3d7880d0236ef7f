//! Accounts over the wire: the seed-002 JSON socket, the HTTP API, session-token sockets, and
//! invites exchanged between a seed-002 client and a Phoenix client, on both backends.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;

use crate::on_both_backends;
use crate::support::db::TestDb;
use crate::support::{Client, Frame, TestServer, error_reply, http, ok_reply, test_config};

async fn signup(server: &TestServer, username: &str) -> String {
    let body = json!({"username": username, "password": "correct horse battery"}).to_string();
    let (status, body) = http(server.addr, "POST", "/api/signup", &[("Content-Type", "application/json")], &body).await;
    assert_eq!(status, 201, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["session"].as_str().expect("session token").to_owned()
}

async fn json_client(server: &TestServer) -> Client {
    let mut c = Client::connect(&format!("ws://{}/json/websocket", server.addr)).await;
    c.send(json!({"type": "identification", "version": "1.0.0", "client": "test"})).await;
    let reply = c.recv_json().await;
    assert_eq!(reply["type"], "identification");
    assert_eq!(reply["resp_code"], 0);
    assert_eq!(reply["invitations"], true);
    c
}

async fn refused_status(url: &str) -> u16 {
    match Client::try_connect(url, &[]).await {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected the connect to be refused"),
    }
}

on_both_backends!(seed_client_and_phoenix_client_exchange_an_invite, invite_exchange);
async fn invite_exchange(db: Arc<TestDb>) {
    let server = TestServer::start_on(db, test_config(), |c| c);
    let bob_token = signup(&server, "bob").await;
    let mut bob = Client::connect(&server.url(&format!("vsn=2.0.0&token={bob_token}&device=phone"))).await;
    bob.send(json!(["1", "1", "user:bob", "phx_join", {}])).await;
    let joined = bob.recv_json().await;
    assert_eq!(joined[4]["status"], "ok", "{joined}");
    assert_eq!(
        joined[4]["response"]["identity"],
        json!({"eid": "bob", "connection_resource_id": "phone", "node": "courier@localhost"})
    );

    // alice speaks the seed-002 protocol, frame for frame.
    let mut alice = json_client(&server).await;
    alice.send(json!({"type": "signup", "username": "alice", "password": "secretpassword", "hash": "argon2id"})).await;
    let signed_up = alice.recv_json().await;
    assert_eq!(signed_up["type"], "signup");
    assert_eq!(signed_up["resp_code"], 0);
    let alice_token = signed_up["session"].as_str().unwrap().to_owned();
    alice.send(json!({"type": "subscribe", "session": alice_token})).await;
    assert_eq!(alice.recv_json().await, json!({"type": "subscribe", "resp_code": 0}));

    alice.send(json!({"type": "invite.request", "session": alice_token, "source": "alice", "dest": "bob"})).await;
    assert_eq!(alice.recv_json().await["resp_code"], 0);
    assert_eq!(
        bob.recv_json().await,
        json!([null, null, "user:bob", "invite.request", {"type": "invite.request", "source": "alice", "dest": "bob"}])
    );

    bob.send(json!(["1", "2", "user:bob", "invite.accept", {"dest": "alice"}])).await;
    assert_eq!(bob.recv_json().await, ok_reply(Some("1"), "2", "user:bob", json!({})));
    assert_eq!(alice.recv_json().await, json!({"type": "invite.accept", "source": "bob", "dest": "alice"}));

    bob.send(json!(["1", "3", "user:bob", "contacts", {}])).await;
    assert_eq!(bob.recv_json().await, ok_reply(Some("1"), "3", "user:bob", json!({"contacts": ["alice"]})));
    // Accepting twice is refused with a reason.
    bob.send(json!(["1", "4", "user:bob", "invite.accept", {"dest": "alice"}])).await;
    assert_eq!(bob.recv_json().await[4]["status"], "error");
}

on_both_backends!(phoenix_invites_reach_phoenix_users_and_bad_ones_get_reasons, phoenix_invites);
async fn phoenix_invites(db: Arc<TestDb>) {
    let server = TestServer::start_on(db, test_config(), |c| c);
    let carol_token = signup(&server, "carol").await;
    let dave_token = signup(&server, "dave").await;
    let mut carol = Client::connect(&server.url(&format!("vsn=2.0.0&token={carol_token}"))).await;
    let mut dave = Client::connect(&server.url(&format!("vsn=2.0.0&token={dave_token}"))).await;
    carol.send(json!(["1", "1", "user:carol", "phx_join", {}])).await;
    assert_eq!(carol.recv_json().await[4]["status"], "ok");
    dave.send(json!(["1", "1", "user:dave", "phx_join", {}])).await;
    assert_eq!(dave.recv_json().await[4]["status"], "ok");

    carol.send(json!(["1", "2", "user:carol", "invite.request", {"dest": "nobody"}])).await;
    assert_eq!(carol.recv_json().await, error_reply(Some("1"), "2", "user:carol", "no_such_user", "no_such_user"));
    carol.send(json!(["1", "3", "user:carol", "invite.request", {"who": "dave"}])).await;
    assert_eq!(
        carol.recv_json().await,
        error_reply(Some("1"), "3", "user:carol", "expected {\"dest\": username}", "invalid_input")
    );
    carol.send(json!(["1", "4", "user:carol", "invite.request", {"dest": "dave"}])).await;
    assert_eq!(carol.recv_json().await, ok_reply(Some("1"), "4", "user:carol", json!({})));
    assert_eq!(dave.recv_json().await[3], "invite.request");
    dave.send(json!(["1", "2", "user:dave", "invite.reject", {"dest": "carol"}])).await;
    assert_eq!(dave.recv_json().await, ok_reply(Some("1"), "2", "user:dave", json!({})));
    assert_eq!(
        carol.recv_json().await,
        json!([null, null, "user:carol", "invite.reject", {"type": "invite.reject", "source": "dave", "dest": "carol"}])
    );
    dave.send(json!(["1", "3", "user:dave", "contacts", {}])).await;
    assert_eq!(dave.recv_json().await, ok_reply(Some("1"), "3", "user:dave", json!({"contacts": []})));
}

on_both_backends!(session_tokens_gate_sockets_and_user_topics, token_rules);
async fn token_rules(db: Arc<TestDb>) {
    let mut config = test_config();
    config.accounts.session_ttl_secs = 1;
    let server = TestServer::start_on(db, config, |c| c);
    let token = signup(&server, "erin").await;
    signup(&server, "frank").await;

    assert_eq!(refused_status(&server.url("vsn=2.0.0&token=not-a-real-token")).await, 403);
    assert_eq!(refused_status(&server.url("vsn=2.0.0&token=%27%3B%20DROP%20TABLE%20users%3B%20--")).await, 403);

    // Anonymous sockets may join public topics only.
    let mut anon = server.client().await;
    anon.join_ok("room:public", "1").await;
    assert_eq!(
        anon.join("user:erin", "2").await,
        error_reply(Some("2"), "2", "user:erin", "unauthorized", "unauthorized")
    );

    // An authenticated socket may join its own topic only.
    let mut erin = Client::connect(&server.url(&format!("vsn=2.0.0&token={token}"))).await;
    assert_eq!(
        erin.join("user:frank", "1").await,
        error_reply(Some("1"), "1", "user:frank", "unauthorized", "forbidden")
    );
    assert_eq!(erin.join("user:erin", "2").await[4]["status"], "ok");

    // Expired: the TTL is one second.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(refused_status(&server.url(&format!("vsn=2.0.0&token={token}"))).await, 403);

    // Revoked: a fresh session, signed out over HTTP, no longer connects.
    let body = json!({"username": "frank", "password": "correct horse battery"}).to_string();
    let (status, body) = http(server.addr, "POST", "/api/signin", &[("Content-Type", "application/json")], &body).await;
    assert_eq!(status, 200, "{body}");
    let fresh = serde_json::from_str::<Value>(&body).unwrap()["session"].as_str().unwrap().to_owned();
    Client::connect(&server.url(&format!("vsn=2.0.0&token={fresh}"))).await;
    let bearer = format!("Bearer {fresh}");
    let (status, _) = http(server.addr, "POST", "/api/signout", &[("Authorization", &bearer)], "").await;
    assert_eq!(status, 200);
    assert_eq!(refused_status(&server.url(&format!("vsn=2.0.0&token={fresh}"))).await, 403);
}

on_both_backends!(users_sessions_and_pending_invites_survive_a_restart, restart);
async fn restart(db: Arc<TestDb>) {
    let server = TestServer::start_on(Arc::clone(&db), test_config(), |c| c);
    let gina = signup(&server, "gina").await;
    let hank = signup(&server, "hank").await;
    let mut g = Client::connect(&server.url(&format!("vsn=2.0.0&token={gina}"))).await;
    assert_eq!(g.join("user:gina", "1").await[4]["status"], "ok");
    g.send(json!(["1", "2", "user:gina", "invite.request", {"dest": "hank"}])).await;
    assert_eq!(g.recv_json().await[4]["status"], "ok");
    server.shutdown().await;

    let server = TestServer::start_on(db, test_config(), |c| c);
    let mut h = Client::connect(&server.url(&format!("vsn=2.0.0&token={hank}"))).await;
    let joined = h.join("user:hank", "1").await;
    assert_eq!(joined[4]["status"], "ok", "{joined}");
    let invites = joined[4]["response"]["invites"].as_array().expect("invites listed").clone();
    assert_eq!(invites.len(), 1);
    assert_eq!(invites[0]["from"], "gina");
    let body = json!({"username": "gina", "password": "correct horse battery"}).to_string();
    let (status, _) = http(server.addr, "POST", "/api/signin", &[("Content-Type", "application/json")], &body).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_json_socket_answers_bad_frames_with_error_frames() {
    let server = TestServer::start();
    let mut c = json_client(&server).await;
    c.send_text("not json").await;
    let reply = c.recv_json().await;
    assert_eq!(reply["type"], "error");
    assert!(reply["reason"].as_str().is_some_and(|r| !r.is_empty()));
    c.send(json!({"type": "teleport"})).await;
    assert_eq!(c.recv_json().await["type"], "error");
    c.send_binary(vec![1, 2, 3]).await;
    assert_eq!(c.recv_json().await["type"], "error");
    c.send(json!({"type": "subscribe", "session": "31dccf07-a1be-432a-af62-d5eabea2e71b"})).await;
    assert_eq!(c.recv_json().await, json!({"type": "subscribe", "resp_code": 1}));
    // A wrong token also disconnects, as the seed says.
    assert!(matches!(c.recv().await, Frame::Close(..)));
}

#[tokio::test]
async fn invalid_utf8_is_refused_cleanly_everywhere() {
    let server = TestServer::start();
    let body = b"{\"username\":\"\xff\xfe\",\"password\":\"correct horse battery\"}";
    let (status, reply) =
        crate::support::http_bytes(server.addr, "POST", "/api/signup", &[("Content-Type", "application/json")], body)
            .await;
    assert_eq!(status, 400, "{reply}");
    assert!(serde_json::from_str::<Value>(&reply).unwrap()["reason"].is_string(), "{reply}");

    let (status, reply) = http(
        server.addr,
        "GET",
        "/socket/websocket?vsn=2.0.0&token=%FF%FE",
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        "",
    )
    .await;
    assert_eq!(status, 400, "{reply}");

    let mut json_socket = json_client(&server).await;
    json_socket.send_invalid_text(b"{\"type\":\"\xff\"}".to_vec()).await;
    // RFC 6455 §7.4.1: 1007 for a text message whose data is not UTF-8.
    assert!(matches!(json_socket.recv().await, Frame::Close(1007, _)));

    let mut phoenix = server.client().await;
    phoenix.send_invalid_text(b"[null,\"1\",\"phoenix\",\"\xff\",{}]".to_vec()).await;
    assert!(matches!(phoenix.recv().await, Frame::Close(1007, _)));
    // Nothing else was disturbed.
    let token = signup(&server, "valid").await;
    assert!(!token.is_empty());
}

on_both_backends!(seed_messages_reach_online_users_and_wait_for_offline_ones, seed_messages);
async fn seed_messages(db: Arc<TestDb>) {
    let server = TestServer::start_on(db, test_config(), |c| c);
    let alice_token = signup(&server, "alice").await;
    let bob_token = signup(&server, "bob").await;
    let mut alice = json_client(&server).await;
    alice.send(json!({"type": "subscribe", "session": alice_token})).await;
    assert_eq!(alice.recv_json().await["resp_code"], 0);

    // bob is offline: the message waits for his subscribe.
    let frame = json!({"type": "message", "session": alice_token, "source": "alice", "dest": "bob", "nonce": "n1", "message": "m1"});
    alice.send(frame).await;
    assert_eq!(alice.recv_json().await["resp_code"], 0);
    let mut bob = json_client(&server).await;
    bob.send(json!({"type": "subscribe", "session": bob_token})).await;
    assert_eq!(bob.recv_json().await, json!({"type": "subscribe", "resp_code": 0}));
    let queued = bob.recv_json().await;
    assert_eq!(queued, json!({"type": "message", "source": "alice", "dest": "bob", "nonce": "n1", "message": "m1"}));

    // bob is online now: delivered live, and never with the sender's session token.
    alice
        .send(json!({"type": "message", "session": alice_token, "source": "alice", "dest": "bob", "nonce": "n2", "message": "m2"}))
        .await;
    assert_eq!(alice.recv_json().await["resp_code"], 0);
    let live = bob.recv_json().await;
    assert_eq!(live["message"], "m2");
    assert!(!live.to_string().contains(&alice_token));
    // Impersonation is refused.
    alice
        .send(json!({"type": "message", "session": alice_token, "source": "bob", "dest": "alice", "nonce": "n", "message": "x"}))
        .await;
    assert_ne!(alice.recv_json().await["resp_code"], 0);
    bob.expect_silence(150).await;
}
