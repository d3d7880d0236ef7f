//! The admin API under `/admin/api/`: the token, every route with its paging and bad input, the
//! reads matching what devices see, disconnects by user and by device, the OpenAPI document
//! walked path by path, and the binary's token from the environment or generated at start.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::on_both_backends;
use crate::support::devices::{Device, message, signup};
use crate::support::{Client, Frame, TestDb, TestServer, http, spawn_binary, test_config};

const TOKEN: &str = "admin-secret";

fn admin_server(db: Arc<TestDb>) -> TestServer {
    let mut config = test_config();
    config.admin.token = Some(TOKEN.into());
    TestServer::start_on(db, config, |c| c)
}

/// An admin call with the token: the status and the JSON body.
async fn admin(server: &TestServer, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let bearer = format!("Bearer {TOKEN}");
    let headers = [("Authorization", bearer.as_str()), ("Content-Type", "application/json")];
    let text = body.map(|b| b.to_string()).unwrap_or_default();
    let (status, reply) = http(server.addr, method, path, &headers, &text).await;
    let value = serde_json::from_str(&reply).unwrap_or_else(|_| panic!("{method} {path} answered {status} {reply:?}"));
    (status, value)
}

async fn heartbeat_ok(client: &mut Client) {
    client.send(json!([null, "hb", "phoenix", "heartbeat", {}])).await;
    // Pushes queued before the heartbeat come first.
    loop {
        match client.recv().await {
            Frame::Json(v) if v[1] == "hb" => break assert_eq!(v[4]["status"], "ok", "{v}"),
            Frame::Json(_) => continue,
            other => panic!("expected the heartbeat reply, got {other:?}"),
        }
    }
}

on_both_backends!(the_admin_api_manages_users_and_reads_what_devices_see, users_and_logs);
async fn users_and_logs(db: Arc<TestDb>) {
    let server = admin_server(db);
    let password = "correct horse battery";

    // Create: the signup rules, 409 for a taken name, 400 for a body of another shape.
    let (status, made) =
        admin(&server, "POST", "/admin/api/users", Some(json!({"username": "alice", "password": password}))).await;
    assert_eq!((status, made), (201, json!({"username": "alice"})));
    let (status, taken) =
        admin(&server, "POST", "/admin/api/users", Some(json!({"username": "alice", "password": password}))).await;
    assert_eq!((status, taken["error"].as_str()), (409, Some("user_in_use")));
    let (status, bad) =
        admin(&server, "POST", "/admin/api/users", Some(json!({"username": "", "password": password}))).await;
    assert_eq!(status, 400, "{bad}");
    let (status, extra) = admin(
        &server,
        "POST",
        "/admin/api/users",
        Some(json!({"username": "x1", "password": password, "admin": true})),
    )
    .await;
    assert_eq!(status, 400, "unknown fields are refused: {extra}");
    let bob = signup(&server, "bob").await;
    signup(&server, "albert").await;

    // List: prefix, paging by `next`, bounds.
    let (status, page) = admin(&server, "GET", "/admin/api/users?prefix=al", None).await;
    assert_eq!(status, 200, "{page}");
    let names: Vec<&str> = page["users"].as_array().unwrap().iter().map(|u| u["username"].as_str().unwrap()).collect();
    assert_eq!(names, ["albert", "alice"]);
    assert!(page["users"][0]["created_at"].as_i64().unwrap() > 0);
    let (_, first) = admin(&server, "GET", "/admin/api/users?limit=2", None).await;
    assert_eq!(first["next"], "alice", "{first}");
    let (_, second) = admin(&server, "GET", "/admin/api/users?limit=2&after=alice", None).await;
    assert_eq!(second["users"], json!([{"username": "bob", "created_at": second["users"][0]["created_at"]}]));
    for query in ["limit=0", "limit=501", "limit=x", "colour=red"] {
        let (status, refused) = admin(&server, "GET", &format!("/admin/api/users?{query}"), None).await;
        assert_eq!((status, refused["error"].as_str()), (400, Some("invalid_input")), "{query}: {refused}");
    }

    // Alice on two devices, bob writes to her.
    let (status, signed_in) = {
        let body = json!({"username": "alice", "password": password}).to_string();
        http(server.addr, "POST", "/api/signin", &[("Content-Type", "application/json")], &body).await
    };
    assert_eq!(status, 200, "{signed_in}");
    let alice: String = serde_json::from_str::<Value>(&signed_in).unwrap()["session"].as_str().unwrap().to_owned();
    let (mut phone, _) = Device::joined(&server, "alice", &alice, "phone", json!({})).await;
    let (mut laptop, _) = Device::joined(&server, "alice", &alice, "laptop", json!({})).await;
    let (mut bobs, _) = Device::joined(&server, "bob", &bob, "desk", json!({})).await;
    bobs.call_ok("message", message("m1", "alice", "hello")).await;
    phone.event("message").await;
    phone.call_ok("receipt", json!({"up_to": 1, "state": "read"})).await;

    // The process's metrics in the stats: at least what this test did (other tests share them).
    let (_, stats) = admin(&server, "GET", "/admin/api/stats", None).await;
    assert!(stats["messages"]["stored_total"].as_u64() >= Some(1), "{stats}");
    assert!(stats["messages"]["delivered_total"].as_u64() >= Some(1), "{stats}");
    assert!(stats["messages"]["acks"].as_u64() >= Some(1), "{stats}");
    assert!(stats["storage"]["batches"].as_u64() >= Some(1), "{stats}");
    assert!(stats["connections"]["phoenix"].as_i64() >= Some(3), "{stats}");
    assert!(stats["messages"]["stored_last_minute"].is_array(), "{stats}");
    assert_eq!(stats["users_online"], 2, "alice and bob are signed in here: {stats}");

    let (status, devices) = admin(&server, "GET", "/admin/api/users/alice/devices", None).await;
    assert_eq!(status, 200, "{devices}");
    assert_eq!(devices["last_offset"], 1);
    let by_name: BTreeMap<&str, &Value> =
        devices["devices"].as_array().unwrap().iter().map(|d| (d["device"].as_str().unwrap(), d)).collect();
    assert_eq!(by_name.keys().copied().collect::<Vec<_>>(), ["laptop", "phone"]);
    assert_eq!(
        (by_name["phone"]["acked_offset"].as_i64(), by_name["phone"]["online"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(
        (by_name["laptop"]["acked_offset"].as_i64(), by_name["laptop"]["online"].as_bool()),
        (Some(0), Some(true))
    );

    // Reads are exactly what the devices' pull and history answer.
    let pulled = laptop.call_ok("pull", json!({"after": 0})).await;
    let (status, log) = admin(&server, "GET", "/admin/api/users/alice/log?after=0", None).await;
    assert_eq!((status, &log), (200, &pulled));
    let history = laptop.call_ok("history", json!({"with": "bob"})).await;
    let (status, conversation) = admin(&server, "GET", "/admin/api/users/alice/conversations/bob", None).await;
    assert_eq!((status, &conversation), (200, &history));
    assert_eq!(conversation["messages"].as_array().map(Vec::len), Some(1));
    for (path, code) in [
        ("/admin/api/users/alice/log?after=-1", 400),
        ("/admin/api/users/alice/log?limit=100000", 400),
        ("/admin/api/users/nobody/log", 404),
        ("/admin/api/users/nobody/devices", 404),
        ("/admin/api/users/nobody/conversations/bob", 404),
    ] {
        let (status, refused) = admin(&server, "GET", path, None).await;
        assert_eq!(status, code, "{path}: {refused}");
        assert!(refused["error"].is_string(), "{refused}");
    }

    // Sockets' control topics stay out of the topic list unless asked for by prefix.
    let (_, all) = admin(&server, "GET", "/admin/api/topics", None).await;
    let listed: Vec<&str> = all["topics"].as_array().unwrap().iter().map(|t| t["topic"].as_str().unwrap()).collect();
    assert!(listed.contains(&"user:alice"), "{listed:?}");
    assert!(!listed.iter().any(|t| t.starts_with("session:") || t.starts_with("users_socket:")), "{listed:?}");
    let (_, control) = admin(&server, "GET", "/admin/api/topics?prefix=users_socket:", None).await;
    assert_eq!(
        control["topics"],
        json!([{"topic": "users_socket:alice", "subscribers": 2}, {"topic": "users_socket:bob", "subscribers": 1}])
    );

    // Disconnect one device, then the rest; both close with 1001 and may reconnect.
    let (status, refused) =
        admin(&server, "POST", "/admin/api/users/alice/disconnect", Some(json!({"device": "tablet"}))).await;
    assert_eq!((status, refused["error"].as_str()), (404, Some("unknown_device")), "{refused}");
    let (status, sent) =
        admin(&server, "POST", "/admin/api/users/alice/disconnect", Some(json!({"device": "laptop"}))).await;
    assert_eq!((status, sent["device"].as_str()), (202, Some("laptop")), "{sent}");
    assert_eq!(laptop.client.closed().await.0, 1001);
    heartbeat_ok(&mut phone.client).await;
    let (status, refused) =
        admin(&server, "POST", "/admin/api/users/alice/disconnect", Some(json!({"device": ""}))).await;
    assert_eq!(status, 400, "{refused}");
    let (status, refused) =
        admin(&server, "POST", "/admin/api/users/alice/disconnect", Some(json!({"everything": 1}))).await;
    assert_eq!(status, 400, "{refused}");
    let (status, _) = admin(&server, "POST", "/admin/api/users/alice/disconnect", None).await;
    assert_eq!(status, 202);
    assert_eq!(phone.client.closed().await.0, 1001);
    heartbeat_ok(&mut bobs.client).await;
    let (status, _) = admin(&server, "POST", "/admin/api/users/nobody/disconnect", None).await;
    assert_eq!(status, 404);

    // Revoke, delete.
    let (status, revoked) = admin(&server, "POST", "/admin/api/users/alice/sessions/revoke", None).await;
    assert_eq!((status, revoked["revoked"].as_u64()), (200, Some(1)), "{revoked}");
    let (status, deleted) = admin(&server, "DELETE", "/admin/api/users/bob", None).await;
    assert_eq!((status, deleted["deleted"].as_bool()), (200, Some(true)), "{deleted}");
    assert_eq!(bobs.client.closed().await.0, 1001);
    let (_, page) = admin(&server, "GET", "/admin/api/users?prefix=bob", None).await;
    assert_eq!(page["users"], json!([]), "a deleted user is not listed");
}

on_both_backends!(the_admin_api_lists_topics_and_presence_and_broadcasts, topics);
async fn topics(db: Arc<TestDb>) {
    let server = admin_server(db);
    let mut members = Vec::new();
    for n in 0..2 {
        let mut c = server.client().await;
        c.join_ok("room:lobby", &n.to_string()).await;
        members.push(c);
    }
    let mut observer = server.client().await;
    observer.send(json!(["9", "9", "room:news", "phx_join", {"presence": false}])).await;
    assert_eq!(observer.recv_json().await[4]["status"], "ok");

    let (status, page) = admin(&server, "GET", "/admin/api/topics?prefix=room:", None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        page["topics"],
        json!([{"topic": "room:lobby", "subscribers": 2}, {"topic": "room:news", "subscribers": 1}])
    );
    let (_, first) = admin(&server, "GET", "/admin/api/topics?prefix=room:&limit=1", None).await;
    assert_eq!(first["next"], "room:lobby");
    let (_, rest) = admin(&server, "GET", "/admin/api/topics?prefix=room:&after=room:lobby", None).await;
    assert_eq!(rest["topics"][0]["topic"], "room:news");

    let (status, present) = admin(&server, "GET", "/admin/api/topics/room:lobby/presence", None).await;
    assert_eq!(status, 200, "{present}");
    assert_eq!(present.as_object().map(|o| o.len()), Some(2), "two anonymous members: {present}");
    assert!(present.as_object().unwrap().values().all(|p| p["metas"].is_array()), "{present}");
    let (_, nobody) = admin(&server, "GET", "/admin/api/topics/room:empty/presence", None).await;
    assert_eq!(nobody, json!({}));

    let (status, stats) = admin(&server, "GET", "/admin/api/stats", None).await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["sockets"], 3);
    assert_eq!(stats["joined_channels"], 3);
    assert_eq!(stats["families"]["room:"], json!({"topics": 2, "subscriptions": 3}));
    assert_eq!(stats["version"], env!("CARGO_PKG_VERSION"));

    // A broadcast reaches every subscriber.
    let (status, sent) = admin(
        &server,
        "POST",
        "/admin/api/broadcast",
        Some(json!({"topic": "room:lobby", "event": "notice", "payload": {"text": "maintenance at noon"}})),
    )
    .await;
    assert_eq!((status, sent["subscribers"].as_u64()), (202, Some(2)), "{sent}");
    for member in &mut members {
        let frame = loop {
            let frame = member.recv_json().await;
            if frame[3] == "notice" {
                break frame;
            }
        };
        assert_eq!(frame, json!([null, null, "room:lobby", "notice", {"text": "maintenance at noon"}]));
    }
    for (body, code) in [
        (json!({"topic": "room:lobby", "event": "phx_reply"}), 400),
        (json!({"topic": "room:lobby", "event": "disconnect"}), 400),
        (json!({"topic": "", "event": "notice"}), 400),
        (json!({"topic": "room:lobby", "event": "x".repeat(256)}), 400),
        (json!({"topic": "room:lobby", "event": "notice", "extra": 1}), 400),
        (json!({"topic": "room:lobby"}), 400),
    ] {
        let (status, refused) = admin(&server, "POST", "/admin/api/broadcast", Some(body.clone())).await;
        assert_eq!(status, code, "{body}: {refused}");
        assert!(refused["error"].is_string(), "{refused}");
    }
    let bearer = format!("Bearer {TOKEN}");
    let headers = [("Authorization", bearer.as_str()), ("Content-Type", "application/json")];
    let (status, text) = http(server.addr, "POST", "/admin/api/broadcast", &headers, "{nope").await;
    assert_eq!(status, 400, "{text}");
    let huge = json!({"topic": "room:lobby", "event": "notice", "payload": {"text": "y".repeat(200_000)}}).to_string();
    let (status, text) = http(server.addr, "POST", "/admin/api/broadcast", &headers, &huge).await;
    assert_eq!(status, 413, "{text}");
    let (status, text) = http(server.addr, "GET", "/admin/api/no-such-route", &headers, "").await;
    assert_eq!(status, 404, "{text}");
}

/// Every path and method of the OpenAPI document answers 401 without the token (documented),
/// and with it a status the document lists for that operation.
#[tokio::test]
async fn every_route_in_the_openapi_document_answers_as_documented() {
    let server = admin_server(Arc::new(TestDb::sqlite()));
    let (status, text) = http(server.addr, "GET", "/admin/api/openapi.json", &[], "").await;
    assert_eq!(status, 200, "the document needs no token");
    let doc: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(doc["openapi"].as_str().map(|v| v.starts_with("3.")), Some(true), "{}", doc["openapi"]);
    assert!(doc["components"]["securitySchemes"]["admin_token"].is_object());

    signup(&server, "walker").await;
    signup(&server, "peer").await;
    signup(&server, "doomed").await;
    let mut member = server.client().await;
    member.join_ok("room:lobby", "1").await;

    // What to fill each operation with; an operation missing here fails the test.
    let params = BTreeMap::from([("eid", "walker"), ("peer", "peer"), ("topic", "room:lobby")]);
    let bodies: BTreeMap<(&str, &str), Value> = BTreeMap::from([
        (("post", "/admin/api/users"), json!({"username": "created", "password": "correct horse battery"})),
        (("post", "/admin/api/broadcast"), json!({"topic": "room:lobby", "event": "notice"})),
        (("post", "/admin/api/users/{eid}/disconnect"), json!({})),
        (("post", "/admin/api/users/{eid}/sessions/revoke"), Value::Null),
    ]);
    let mut walked = 0;
    // Deletion goes last so the other routes still find their user.
    let mut operations: Vec<(String, String, Value)> = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            operations.push((method.clone(), path.clone(), operation.clone()));
        }
    }
    operations.sort_by_key(|(method, _, _)| method == "delete");
    for (method, path, operation) in operations {
        let documented: Vec<u16> =
            operation["responses"].as_object().expect("responses").keys().filter_map(|k| k.parse().ok()).collect();
        let mut concrete = path.clone();
        for (name, value) in &params {
            concrete = concrete.replace(&format!("{{{name}}}"), if method == "delete" { "doomed" } else { value });
        }
        assert!(!concrete.contains('{'), "no value for a parameter of {path}");
        let body = match operation.get("requestBody") {
            Some(_) => {
                bodies.get(&(method.as_str(), path.as_str())).unwrap_or_else(|| panic!("no body for {method} {path}"))
            }
            None => &Value::Null,
        };
        let text = if body.is_null() { String::new() } else { body.to_string() };
        let verb = method.to_uppercase();

        let (status, reply) = http(server.addr, &verb, &concrete, &[("Content-Type", "application/json")], &text).await;
        assert_eq!(status, 401, "{verb} {concrete} without a token: {reply}");
        assert!(documented.contains(&401), "{verb} {path} does not document its 401");
        let bearer = format!("Bearer {TOKEN}");
        let headers = [("Authorization", bearer.as_str()), ("Content-Type", "application/json")];
        let (status, reply) = http(server.addr, &verb, &concrete, &headers, &text).await;
        assert!(
            documented.contains(&status),
            "{verb} {concrete} answered {status}, documented {documented:?}: {reply}"
        );
        assert!((200..300).contains(&status), "{verb} {concrete} with good input answered {status}: {reply}");
        serde_json::from_str::<Value>(&reply).unwrap_or_else(|_| panic!("{verb} {concrete}: not JSON: {reply}"));
        walked += 1;
    }
    assert!(walked >= 12, "the document lists only {walked} operations");
}

#[tokio::test]
async fn the_binary_takes_its_admin_token_from_the_environment_or_makes_one_and_prints_it_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stats = |addr: String, token: String| async move {
        let bearer = format!("Bearer {token}");
        http(addr.parse().expect("address"), "GET", "/admin/api/stats", &[("Authorization", &bearer)], "").await.0
    };
    let stop = |mut child: std::process::Child| async move {
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        tokio::task::spawn_blocking(move || child.wait()).await.expect("join").expect("exits")
    };

    let (child, addr, _logs) =
        spawn_binary(dir.path().join("env.db"), &[("COURIER_ADMIN_TOKEN", "from-the-environment")]);
    assert_eq!(stats(addr.clone(), "from-the-environment".into()).await, 200);
    assert_eq!(stats(addr, "other".into()).await, 401);
    stop(child).await;

    let (child, addr, logs) = spawn_binary(dir.path().join("made.db"), &[("RUST_LOG", "debug")]);
    let printed = logs
        .recv_timeout(Duration::from_secs(10))
        .into_iter()
        .chain(logs.try_iter())
        .find_map(|line| {
            line.split_once("admin token").map(|(_, rest)| rest.rsplit(' ').next().unwrap_or("").to_owned())
        })
        .expect("the generated token is printed at start");
    assert!(printed.len() >= 32, "{printed:?}");
    assert_eq!(stats(addr.clone(), printed.clone()).await, 200);
    assert_eq!(stats(addr, format!("{printed}x")).await, 401);
    let exit = stop(child).await;
    assert!(exit.success(), "{exit}");
    let rest: Vec<String> = logs.try_iter().collect();
    assert!(!rest.iter().any(|l| l.contains(&printed)), "the token is printed once and never logged: {rest:#?}");
}
