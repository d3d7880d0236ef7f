//! Sessions end their sockets: sign-out, an operator's revocation, user deletion and expiry close
//! every socket the session authenticated (1001, so clients re-authenticate), on both endpoints.

use std::sync::Arc;
use std::time::Duration;

use courier::channels::{
    ConnectError, ConnectRequest, SessionCheck, SessionGrant, SocketAuthenticator, SocketIdentity,
};
use courier::clock::SystemClock;
use futures_util::future::LocalBoxFuture;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;

use crate::on_both_backends;
use crate::support::db::TestDb;
use crate::support::devices::{message, signup};
use crate::support::{Client, Frame, TestServer, http, test_config};

async fn json_subscribed(server: &TestServer, token: &str) -> Client {
    let mut c = Client::connect(&format!("ws://{}/json/websocket", server.addr)).await;
    c.send(json!({"type": "identification", "version": "1.0.0", "client": "test"})).await;
    assert_eq!(c.recv_json().await["resp_code"], 0);
    c.send(json!({"type": "subscribe", "session": token})).await;
    assert_eq!(c.recv_json().await["resp_code"], 0);
    c
}

async fn join_inbox(c: &mut Client, topic: &str) {
    let reply = c.join(topic, "1").await;
    assert_eq!(reply[4]["status"], "ok", "{reply}");
}

async fn heartbeat_ok(c: &mut Client) {
    c.send(json!([null, "hb", "phoenix", "heartbeat", {}])).await;
    assert_eq!(c.recv_json().await[4]["status"], "ok");
}

on_both_backends!(sign_out_closes_the_sockets_of_that_session_only, sign_out);
async fn sign_out(db: Arc<TestDb>) {
    let server = TestServer::start_on(db, test_config(), |c| c);
    let token = signup(&server, "alice").await;
    signup(&server, "bob").await;
    let body = json!({"username": "alice", "password": "correct horse battery"}).to_string();
    let (status, other) =
        http(server.addr, "POST", "/api/signin", &[("Content-Type", "application/json")], &body).await;
    assert_eq!(status, 200, "{other}");
    let other_token = serde_json::from_str::<Value>(&other).unwrap()["session"].as_str().unwrap().to_owned();

    let mut phone = Client::connect(&server.url(&format!("vsn=2.0.0&token={token}&device=phone"))).await;
    join_inbox(&mut phone, "user:alice").await;
    let mut json_socket = json_subscribed(&server, &token).await;
    let mut laptop = Client::connect(&server.url(&format!("vsn=2.0.0&token={other_token}&device=laptop"))).await;
    join_inbox(&mut laptop, "user:alice").await;

    let bearer = format!("Bearer {token}");
    let (status, live) = http(server.addr, "GET", "/api/session", &[("Authorization", &bearer)], "").await;
    let live: Value = serde_json::from_str(&live).unwrap();
    assert_eq!(
        (status, live["username"].as_str(), live["device"].as_str()),
        (200, Some("alice"), Some("phone")),
        "{live}"
    );
    let (status, reply) = http(server.addr, "POST", "/api/signout", &[("Authorization", &bearer)], "").await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(phone.closed().await, (1001, "session ended".into()));
    let (status, ended) = http(server.addr, "GET", "/api/session", &[("Authorization", &bearer)], "").await;
    assert_eq!(status, 401, "a signed-out session: {ended}");
    assert!(ended.contains("session_revoked"), "{ended}");
    let (status, _) = http(server.addr, "GET", "/api/session", &[], "").await;
    assert_eq!(status, 401);
    assert_eq!(json_socket.closed().await, (1001, "session ended".into()));
    // The same user's other session is untouched.
    heartbeat_ok(&mut laptop).await;
    laptop.send(json!(["1", "2", "user:alice", "message", message("m1", "bob", "still here")])).await;
    let reply = laptop.recv_json().await;
    assert_eq!(reply[4]["status"], "ok", "{reply}");
}

on_both_backends!(revoking_a_users_sessions_closes_all_their_sockets, revoke);
async fn revoke(db: Arc<TestDb>) {
    let mut config = test_config();
    config.admin.token = Some("admin-secret".into());
    let server = TestServer::start_on(db, config, |c| c);
    let token = signup(&server, "carol").await;
    let dave = signup(&server, "dave").await;
    let mut phone = Client::connect(&server.url(&format!("vsn=2.0.0&token={token}&device=phone"))).await;
    join_inbox(&mut phone, "user:carol").await;
    let mut json_socket = json_subscribed(&server, &token).await;
    let mut bystander = Client::connect(&server.url(&format!("vsn=2.0.0&token={dave}"))).await;

    let headers = [("Authorization", "Bearer admin-secret"), ("Content-Type", "application/json")];
    let (status, reply) = http(server.addr, "POST", "/admin/api/users/carol/sessions/revoke", &headers, "").await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(serde_json::from_str::<Value>(&reply).unwrap()["revoked"], 1);
    assert_eq!(phone.closed().await, (1001, "session ended".into()));
    assert_eq!(json_socket.closed().await, (1001, "session ended".into()));
    heartbeat_ok(&mut bystander).await;
    match Client::try_connect(&server.url(&format!("vsn=2.0.0&token={token}")), &[]).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), 403),
        other => panic!("a revoked token connected: {:?}", other.map(|_| ())),
    }
    let (status, reply) = http(server.addr, "POST", "/admin/api/users/nobody/sessions/revoke", &headers, "").await;
    assert_eq!(status, 404, "{reply}");
}

#[tokio::test]
async fn an_expired_session_closes_its_sockets_and_its_pushes_are_refused() {
    let mut config = test_config();
    config.accounts.session_ttl_secs = 1;
    let server = TestServer::start_with(config, |c| c);
    let token = signup(&server, "erin").await;
    signup(&server, "frank").await;
    let mut phone = Client::connect(&server.url(&format!("vsn=2.0.0&token={token}&device=phone"))).await;
    join_inbox(&mut phone, "user:erin").await;
    let mut json_socket = json_subscribed(&server, &token).await;
    let started = std::time::Instant::now();
    assert_eq!(phone.closed().await, (1001, "session expired".into()));
    assert_eq!(json_socket.closed().await, (1001, "session expired".into()));
    assert!(started.elapsed() < Duration::from_secs(3));

    // A socket that connected just before expiry and pushes just after is refused, whatever
    // the timer does: the push is answered with an error, not acked.
    let token = signup(&server, "gina").await;
    let mut late = Client::connect(&server.url(&format!("vsn=2.0.0&token={token}&device=phone"))).await;
    join_inbox(&mut late, "user:gina").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    late.send(json!(["1", "2", "user:gina", "message", message("late", "frank", "too late")])).await;
    match late.recv().await {
        Frame::Json(reply) => {
            assert_eq!(reply[4]["status"], "error", "{reply}");
            assert_eq!(reply[4]["response"]["reason"], "session_expired", "{reply}");
        }
        Frame::Close(code, reason) => assert_eq!((code, reason.as_str()), (1001, "session expired")),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn an_auth_token_that_does_not_decode_or_disagrees_with_the_query_is_refused() {
    let server = TestServer::start();
    let token = signup(&server, "hank").await;
    let refused = |query: String, offer: String| {
        let url = server.url(&query);
        async move {
            match Client::try_connect(&url, &[("Sec-WebSocket-Protocol", &offer)]).await {
                Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
                other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
            }
        }
    };
    assert_eq!(refused("vsn=2.0.0".into(), "phoenix, base64url.bearer.phx.!!!".into()).await, 403);
    use base64::Engine;
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&token);
    let other = signup(&server, "ivy").await;
    assert_eq!(
        refused(format!("vsn=2.0.0&token={other}"), format!("phoenix, base64url.bearer.phx.{encoded}")).await,
        403
    );
    // Agreeing tokens are fine.
    let offer = format!("phoenix, base64url.bearer.phx.{encoded}");
    let (mut c, _) =
        Client::try_connect(&server.url(&format!("vsn=2.0.0&token={token}")), &[("Sec-WebSocket-Protocol", &offer)])
            .await
            .expect("agreeing tokens connect");
    join_inbox(&mut c, "user:hank").await;
}

on_both_backends!(deleting_a_user_closes_their_sockets_and_keeps_their_name_taken, delete_user);
async fn delete_user(db: Arc<TestDb>) {
    let mut config = test_config();
    config.admin.token = Some("admin-secret".into());
    let server = TestServer::start_on(db, config, |c| c);
    let token = signup(&server, "ivan").await;
    let judy = signup(&server, "judy").await;
    let mut phone = Client::connect(&server.url(&format!("vsn=2.0.0&token={token}&device=phone"))).await;
    join_inbox(&mut phone, "user:ivan").await;
    let mut json_socket = json_subscribed(&server, &token).await;
    let mut bystander = Client::connect(&server.url(&format!("vsn=2.0.0&token={judy}&device=laptop"))).await;
    join_inbox(&mut bystander, "user:judy").await;

    let headers = [("Authorization", "Bearer admin-secret"), ("Content-Type", "application/json")];
    let delete = "/admin/api/users/ivan";
    let (status, reply) = http(server.addr, "DELETE", delete, &headers, "").await;
    assert_eq!(status, 200, "{reply}");
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!((reply["deleted"].as_bool(), reply["revoked"].as_u64()), (Some(true), Some(1)), "{reply}");
    assert_eq!(phone.closed().await, (1001, "session ended".into()));
    assert_eq!(json_socket.closed().await, (1001, "session ended".into()));
    heartbeat_ok(&mut bystander).await;

    match Client::try_connect(&server.url(&format!("vsn=2.0.0&token={token}")), &[]).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), 403),
        other => panic!("a deleted user's token connected: {:?}", other.map(|_| ())),
    }
    let signin = json!({"username": "ivan", "password": "correct horse battery"}).to_string();
    let (status, reply) =
        http(server.addr, "POST", "/api/signin", &[("Content-Type", "application/json")], &signin).await;
    assert_eq!(status, 404, "{reply}");
    let (status, reply) =
        http(server.addr, "POST", "/api/signup", &[("Content-Type", "application/json")], &signin).await;
    assert_eq!(status, 409, "the name stays taken: {reply}");
    bystander.send(json!(["1", "2", "user:judy", "message", message("to-ivan", "ivan", "hello?")])).await;
    let reply = bystander.recv_json().await;
    assert_eq!(reply[4]["status"], "error", "a message to a deleted user is refused: {reply}");
    let (status, reply) = http(server.addr, "DELETE", delete, &headers, "").await;
    assert_eq!(status, 404, "{reply}");
    let (status, _) = http(server.addr, "DELETE", delete, &[], "").await;
    assert_eq!(status, 401, "deletion needs the admin token");
}

/// Authenticates every socket with a session that has already ended by the time it listens.
struct EndedBeforeListening;

impl SocketAuthenticator for EndedBeforeListening {
    fn connect(&self, _request: &ConnectRequest) -> LocalBoxFuture<'static, Result<SocketIdentity, ConnectError>> {
        let ended: SessionCheck = Arc::new(|| Box::pin(std::future::ready(false)));
        let session = SessionGrant {
            topic: "session:ended-in-between".into(),
            expires_at: i64::MAX,
            clock: Arc::new(SystemClock),
            still_live: Some(ended),
        };
        let identity =
            SocketIdentity { socket_id: None, user: Some("kim".into()), device: None, session: Some(session) };
        Box::pin(std::future::ready(Ok(identity)))
    }
}

#[tokio::test]
async fn a_session_that_ended_between_the_handshake_and_the_subscription_still_closes_its_socket() {
    let server = TestServer::start_with(test_config(), |c| c.authenticator(EndedBeforeListening));
    let mut c = server.client().await;
    assert_eq!(c.closed().await, (1001, "session ended".into()));
}

on_both_backends!(ended_sessions_are_deleted_on_schedule_and_live_ones_kept, scheduled_purge);
async fn scheduled_purge(db: Arc<TestDb>) {
    let mut config = test_config();
    config.accounts.session_purge_every_secs = 1;
    config.accounts.session_purge_grace_secs = 0;
    let server = TestServer::start_on(Arc::clone(&db), config, |c| c);
    let ended = signup(&server, "olga").await;
    let live = signup(&server, "pete").await;
    let auth = format!("Bearer {ended}");
    let (status, reply) = http(server.addr, "POST", "/api/signout", &[("Authorization", auth.as_str())], "").await;
    assert_eq!(status, 200, "{reply}");

    let store = courier::store::Store::open(&db.url).expect("open test database");
    let count_sessions = || {
        store.run(|c| {
            use courier::store::schema::sessions;
            use diesel::prelude::*;
            let n: i64 = match c {
                courier::store::DbConnection::Sqlite(c) => sessions::table.count().get_result(c)?,
                courier::store::DbConnection::Pg(c) => sessions::table.count().get_result(c)?,
            };
            Ok(n)
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while count_sessions().await.unwrap() > 1 {
        assert!(std::time::Instant::now() < deadline, "the signed-out session was never deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The live session survives the purge and still authenticates.
    let mut c = crate::support::Client::connect(&server.url(&format!("vsn=2.0.0&token={live}"))).await;
    c.send(json!([null, "1", "phoenix", "heartbeat", {}])).await;
    assert_eq!(c.recv_json().await[4]["status"], "ok");
}
