//! The long-poll transport (`/socket/longpoll`) over raw HTTP: every status the protocol
//! answers, the session-token rules, idle expiry, one poll beside several POSTs, the Origin
//! and CORS rules, and the per-POST limits. phoenix.js itself drives it in tests/browser.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::channels::CrashChannels;
use crate::support::devices::signup;
use crate::support::{TestServer, ok_reply, test_config};

/// A config whose polls and idle timeout are short enough for tests.
fn config() -> courier::Config {
    let mut config = test_config();
    config.longpoll.window_ms = 300;
    config.longpoll.idle_timeout_ms = 1_000;
    config
}

/// An HTTP answer: status, headers (lower-case names) and body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request (the body is sent as given, the answer read whole).
async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.write_all(body).await.expect("write body");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut raw))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer { status, headers, body: body.to_owned() }
}

/// A raw long-poll client: its connect params and, once open, its session token.
struct LongPoll {
    addr: SocketAddr,
    params: String,
    token: String,
}

impl LongPoll {
    /// Opens a session with connect `params` (a query string without `vsn`).
    async fn open(server: &TestServer, params: &str) -> LongPoll {
        let params = if params.is_empty() { "vsn=2.0.0".to_owned() } else { format!("{params}&vsn=2.0.0") };
        let answer = request(server.addr, "GET", &format!("/socket/longpoll?{params}"), &[], b"").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let body = answer.json();
        assert_eq!(body["status"], 410, "a connect opens a session with 410: {body}");
        assert_eq!(body["messages"], json!([]));
        let token = body["token"].as_str().expect("a token").to_owned();
        LongPoll { addr: server.addr, params, token }
    }

    fn path(&self) -> String {
        format!("/socket/longpoll?{}&token={}", self.params, self.token)
    }

    /// One poll's JSON body.
    async fn poll(&self) -> Value {
        let answer = request(self.addr, "GET", &self.path(), &[], b"").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.json()
    }

    /// Posts frames, one per line; returns the JSON body.
    async fn post(&self, frames: &[Value]) -> Value {
        let body: Vec<String> = frames.iter().map(Value::to_string).collect();
        let answer = request(self.addr, "POST", &self.path(), &[], body.join("\n").as_bytes()).await;
        answer.json()
    }

    /// Polls until `n` frames have arrived (each decoded), failing on a poll that is not 200/204.
    async fn frames(&self, n: usize) -> Vec<Value> {
        let mut frames = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while frames.len() < n {
            assert!(tokio::time::Instant::now() < deadline, "only {frames:?} of {n} frames arrived");
            let body = self.poll().await;
            match body["status"].as_u64() {
                Some(200) => {
                    frames.extend(
                        body["messages"].as_array().expect("messages").iter().map(|m| {
                            serde_json::from_str::<Value>(m.as_str().expect("a string")).expect("a JSON frame")
                        }),
                    )
                }
                Some(204) => {}
                _ => panic!("unexpected poll answer {body}"),
            }
        }
        frames
    }

    /// Polls until a frame matches `wanted`, returning every frame up to it.
    async fn frames_until(&self, wanted: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut frames = Vec::new();
        while !frames.iter().any(&wanted) {
            frames.extend(self.frames(1).await);
        }
        frames
    }

    /// Polls until the session is gone (410), returning the frames that came before.
    async fn until_gone(&self) -> Vec<Value> {
        let mut frames = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            assert!(tokio::time::Instant::now() < deadline, "the session did not end");
            let body = self.poll().await;
            match body["status"].as_u64() {
                Some(200) => frames.extend(body["messages"].as_array().expect("messages").iter().cloned()),
                Some(204) => {}
                Some(410) => return frames,
                _ => panic!("unexpected poll answer {body}"),
            }
        }
    }
}

#[tokio::test]
async fn a_long_poll_session_joins_pushes_and_hears_broadcasts_and_presence() {
    let server = TestServer::start_with(config(), |c| c);
    let lp = LongPoll::open(&server, "").await;
    let empty = lp.poll().await;
    assert_eq!(empty, json!({"status": 204, "token": lp.token, "messages": []}), "an empty window");

    assert_eq!(lp.post(&[json!(["1", "1", "room:lp", "phx_join", {}])]).await, json!({"status": 200}));
    let frames = lp.frames(2).await;
    assert_eq!(frames[0], ok_reply(Some("1"), "1", "room:lp", json!({})));
    assert_eq!(frames[1][3], "presence_state");

    let mut ws = server.client().await.see_presence();
    ws.join_ok("room:lp", "9").await;
    // The WebSocket member's arrival reaches the long-poll member as a diff.
    let joined = lp.frames(1).await;
    assert_eq!(joined[0][3], "presence_diff", "{joined:?}");

    assert_eq!(lp.post(&[json!(["1", "2", "room:lp", "new_msg", {"body": "from lp"}])]).await["status"], 200);
    loop {
        let frame = ws.recv_json().await;
        if frame[3] == "new_msg" {
            assert_eq!(frame, json!([null, null, "room:lp", "new_msg", {"body": "from lp"}]));
            break;
        }
    }
    ws.send(json!(["9", "3", "room:lp", "new_msg", {"body": "from ws"}])).await;
    let from_ws = json!([null, null, "room:lp", "new_msg", {"body": "from ws"}]);
    let heard = lp.frames_until(|f| f == &from_ws).await;
    assert_eq!(heard.iter().filter(|f| **f == from_ws).count(), 1, "{heard:?}");
}

#[tokio::test]
async fn a_refused_connect_answers_403_and_opens_nothing() {
    let server = TestServer::start_with(config(), |c| c);
    let answer = request(server.addr, "GET", "/socket/longpoll?vsn=2.0.0&token=not-a-session", &[], b"").await;
    assert_eq!(answer.status, 200);
    let body = answer.json();
    assert_eq!(body["status"], 403, "{body}");
    assert_eq!(body["error"], "forbidden");
    assert!(body.get("token").is_none(), "a refused connect gets no session: {body}");

    // A signed-in user connects with the same params a WebSocket takes.
    let token = signup(&server, "lpuser").await;
    let lp = LongPoll::open(&server, &format!("token={token}")).await;
    assert_eq!(lp.post(&[json!([null, "1", "phoenix", "heartbeat", {}])]).await["status"], 200);
    assert_eq!(lp.frames(1).await[0], ok_reply(None, "1", "phoenix", json!({})));
}

#[tokio::test]
async fn forged_foreign_and_ended_tokens_get_410_never_a_stream() {
    let server = TestServer::start_with(config(), |c| c);
    let lp = LongPoll::open(&server, "user_hint=a").await;
    assert_eq!(lp.post(&[json!(["1", "1", "room:secret", "phx_join", {}])]).await["status"], 200);

    let mut forged = lp.token.clone();
    let last = forged.pop().expect("not empty");
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let tampered = LongPoll { addr: lp.addr, params: lp.params.clone(), token: forged };
    assert_eq!(tampered.poll().await, json!({"status": 410}));
    assert_eq!(tampered.post(&[json!([null, "1", "phoenix", "heartbeat", {}])]).await, json!({"status": 410}));

    // The token with other connect params (another client's credentials) does not verify.
    let elsewhere = LongPoll { addr: lp.addr, params: "user_hint=b&vsn=2.0.0".into(), token: lp.token.clone() };
    assert_eq!(elsewhere.poll().await, json!({"status": 410}));
    // A different session's token is that session's only.
    let other = LongPoll::open(&server, "user_hint=b").await;
    assert_eq!(other.poll().await["status"], 204, "its own session is empty");

    // The header form is taken too.
    let path = format!("/socket/longpoll?{}", lp.params);
    let by_header = request(lp.addr, "GET", &path, &[("x-phoenix-longpoll-token", &lp.token)], b"").await;
    let body = by_header.json();
    assert_eq!(body["status"], 200, "the join reply, by header: {body}");

    // After the session ends (idle), its token is gone for polls and posts alike.
    tokio::time::sleep(Duration::from_millis(1_800)).await;
    assert_eq!(lp.poll().await, json!({"status": 410}));
    assert_eq!(lp.post(&[json!([null, "2", "phoenix", "heartbeat", {}])]).await, json!({"status": 410}));
}

#[tokio::test]
async fn an_idle_session_is_closed_once_and_its_presence_leaves() {
    let server = TestServer::start_with(config(), |c| c);
    let lp = LongPoll::open(&server, "").await;
    lp.post(&[json!(["1", "1", "room:idle", "phx_join", {}])]).await;
    let joined = lp.frames(2).await;
    assert_eq!(joined[1][3], "presence_state");
    let key = joined[1][4].as_object().expect("state").keys().next().expect("its own presence").clone();

    let mut ws = server.client().await.see_presence();
    ws.join_ok("room:idle", "1").await;
    // No poll for longer than the idle timeout: the session ends and its presence leaves, once.
    let left = loop {
        let frame = ws.recv_json().await;
        if frame[3] == "presence_diff" && frame[4]["leaves"].as_object().is_some_and(|l| !l.is_empty()) {
            break frame;
        }
    };
    assert!(left[4]["leaves"].get(&key).is_some(), "{left}");
    ws.expect_silence(1_500).await;
    assert_eq!(lp.poll().await, json!({"status": 410}));
}

#[tokio::test]
async fn a_waiting_poll_and_several_posts_deliver_every_reply_once_in_post_order() {
    let server = TestServer::start_with(config(), |c| c);
    let lp = std::sync::Arc::new(LongPoll::open(&server, "").await);
    lp.post(&[json!(["1", "1", "room:busy", "phx_join", {}])]).await;
    lp.frames(2).await;

    let waiting = {
        let lp = std::sync::Arc::clone(&lp);
        tokio::spawn(async move { lp.poll().await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let posts: Vec<_> = (0..4)
        .map(|p| {
            let lp = std::sync::Arc::clone(&lp);
            tokio::spawn(async move {
                let frames: Vec<Value> =
                    (0..5).map(|i| json!(["1", format!("{p}-{i}"), "room:busy", "ping", {"p": p, "i": i}])).collect();
                lp.post(&frames).await
            })
        })
        .collect();
    for post in posts {
        assert_eq!(post.await.expect("post task"), json!({"status": 200}));
    }
    let first = waiting.await.expect("poll task");
    assert_eq!(first["status"], 200, "the waiting poll is answered: {first}");
    let reply_ref = |f: &Value| (f[3] == "phx_reply").then(|| f[1].as_str().unwrap_or("").to_owned());
    let mut refs: Vec<String> = first["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| reply_ref(&serde_json::from_str::<Value>(m.as_str().expect("string")).expect("frame")))
        .collect();
    while refs.len() < 20 {
        let more = lp.frames(1).await;
        refs.extend(more.iter().filter_map(reply_ref));
    }
    let late = lp.poll().await;
    assert_eq!(late["status"], 204, "nothing more: {late}");
    assert_eq!(refs.len(), 20, "every reply exactly once: {refs:?}");
    for p in 0..4 {
        let of_post: Vec<&String> = refs.iter().filter(|r| r.starts_with(&format!("{p}-"))).collect();
        let expected: Vec<String> = (0..5).map(|i| format!("{p}-{i}")).collect();
        assert_eq!(of_post, expected.iter().collect::<Vec<_>>(), "a POST's frames keep their order");
    }
}

#[tokio::test]
async fn long_poll_follows_the_origin_policy_with_cors() {
    let mut config = config();
    config.socket.check_origin = toml::Value::Array(vec!["https://app.example.com".into(), "//*.example.org".into()])
        .try_into()
        .expect("a valid list");
    let server = TestServer::start_with(config, |c| c);
    let connect = |origin: Option<&'static str>| {
        let addr = server.addr;
        async move {
            let headers: Vec<(&str, &str)> = origin.map(|o| ("Origin", o)).into_iter().collect();
            request(addr, "GET", "/socket/longpoll?vsn=2.0.0", &headers, b"").await
        }
    };
    for allowed in ["https://app.example.com", "https://chat.example.org"] {
        let answer = connect(Some(allowed)).await;
        assert_eq!(answer.json()["status"], 410, "{allowed}: {}", answer.body);
        assert_eq!(answer.header("access-control-allow-origin"), Some(allowed));
    }
    let refused = connect(Some("http://evil.example")).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json()["error"], "origin_not_allowed");
    assert_eq!(refused.json()["status"], 403, "phoenix.js stops on 403");
    assert_eq!(refused.header("access-control-allow-origin"), None, "a refused page may not read the answer");
    let native = connect(None).await;
    assert_eq!(native.json()["status"], 410, "no Origin: not a browser page, allowed");
    assert_eq!(native.header("access-control-allow-origin"), None);

    let preflight = |origin: &'static str| {
        let addr = server.addr;
        async move {
            let headers = [("Origin", origin), ("Access-Control-Request-Headers", "content-type, x-phoenix-authtoken")];
            request(addr, "OPTIONS", "/socket/longpoll", &headers, b"").await
        }
    };
    let ok = preflight("https://app.example.com").await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("access-control-allow-origin"), Some("https://app.example.com"));
    assert_eq!(ok.header("access-control-allow-headers"), Some("content-type, x-phoenix-authtoken"));
    assert_eq!(ok.header("access-control-allow-methods"), Some("get, post, options"));
    assert_eq!(ok.header("access-control-max-age"), Some("3600"));
    assert_eq!(preflight("https://evil.example").await.status, 403);

    // The same-host default: a page of this server is allowed, another host's is not.
    let server = TestServer::start_with(self::config(), |c| c);
    let own = format!("http://{}", server.addr);
    let same = request(server.addr, "GET", "/socket/longpoll?vsn=2.0.0", &[("Origin", &own)], b"").await;
    assert_eq!(same.json()["status"], 410);
    let foreign =
        request(server.addr, "GET", "/socket/longpoll?vsn=2.0.0", &[("Origin", "http://evil.example")], b"").await;
    assert_eq!(foreign.status, 403);
}

#[tokio::test]
async fn a_post_past_its_limits_is_refused_whole_with_a_clear_error() {
    let mut config = config();
    config.longpoll.max_frames_per_post = 3;
    config.longpoll.max_post_bytes = 4096;
    config.socket.max_frame_bytes = 1024;
    let server = TestServer::start_with(config, |c| c);
    let lp = LongPoll::open(&server, "").await;
    let heartbeat = |r: usize| json!([null, r.to_string(), "phoenix", "heartbeat", {}]);

    let post = |body: Vec<u8>| {
        let (addr, path) = (lp.addr, lp.path());
        async move { request(addr, "POST", &path, &[], &body).await }
    };
    let lines = |frames: Vec<Value>| frames.iter().map(Value::to_string).collect::<Vec<_>>().join("\n").into_bytes();

    let too_many = post(lines((0..4).map(heartbeat).collect())).await;
    assert_eq!(too_many.status, 413);
    assert_eq!(too_many.json()["error"], "too_many_frames");
    assert_eq!(too_many.json()["status"], 500, "phoenix.js reconnects on it");
    let too_large = post(lines(vec![json!([null, "1", "phoenix", "heartbeat", {"pad": "x".repeat(2000)}])])).await;
    assert_eq!((too_large.status, too_large.json()["error"].clone()), (413, json!("body_too_large")));
    let body_over = post(vec![b'A'; 5000]).await;
    assert_eq!((body_over.status, body_over.json()["error"].clone()), (413, json!("body_too_large")));
    let garbage = post(b"[]\n%%%".to_vec()).await;
    assert_eq!((garbage.status, garbage.json()["error"].clone()), (400, json!("bad_request")));

    // Nothing of a refused POST was taken; the session still works.
    assert_eq!(lp.post(&[heartbeat(7)]).await, json!({"status": 200}));
    let frames = lp.frames(1).await;
    assert_eq!(frames, vec![ok_reply(None, "7", "phoenix", json!({}))], "only the accepted heartbeat was handled");

    let put = request(server.addr, "PUT", "/socket/longpoll", &[], b"").await;
    assert_eq!((put.status, put.json()["error"].clone()), (400, json!("bad_request")));
}

#[tokio::test]
async fn a_session_that_stops_polling_while_frames_pile_up_is_closed() {
    let mut config = config();
    config.socket.outbound_queue = 8;
    config.longpoll.idle_timeout_ms = 60_000;
    let server = TestServer::start_with(config, |c| c);
    let lp = LongPoll::open(&server, "").await;
    lp.post(&[json!(["1", "1", "room:flood", "phx_join", {}])]).await;
    lp.frames(2).await;
    let mut ws = server.client().await;
    ws.join_ok("room:flood", "1").await;
    for i in 0..20 {
        ws.send(json!(["1", i.to_string(), "room:flood", "new_msg", {"i": i}])).await;
    }
    // Too slow: what it had not taken is dropped and the session ends.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_gone = lp.until_gone().await;
    assert!(before_gone.len() < 20, "the overflowing frames were not all kept: {}", before_gone.len());
}

#[tokio::test]
async fn shutdown_ends_a_long_poll_session_and_answers_its_waiting_poll() {
    let mut server = TestServer::start_with(config(), |c| c);
    let lp = LongPoll::open(&server, "").await;
    lp.post(&[json!(["1", "1", "room:bye", "phx_join", {}])]).await;
    lp.frames_until(|f| f[3] == "presence_diff").await;
    let addr = server.addr;
    let waiting = {
        let path = lp.path();
        tokio::spawn(async move { request(addr, "GET", &path, &[], b"").await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.begin_shutdown();
    let answer = waiting.await.expect("poll task");
    assert_eq!(answer.json(), json!({"status": 410}), "a draining session's poll hears it is gone");
}

#[tokio::test]
async fn long_poll_connects_count_toward_the_socket_limits() {
    let mut config = config();
    config.socket.max_connections = 2;
    config.socket.max_connections_per_user = 1;
    let server = TestServer::start_with(config, |c| c);
    let token = signup(&server, "lpcap").await;
    let first = LongPoll::open(&server, &format!("token={token}")).await;

    // The user's one place is taken by the long-poll session: a WebSocket of theirs is refused,
    // and so is a second long-poll session, with 429 and a status phoenix.js retries on.
    let path = format!("/socket/longpoll?token={token}&vsn=2.0.0");
    let per_user = request(server.addr, "GET", &path, &[], b"").await;
    assert_eq!(per_user.status, 429, "{}", per_user.body);
    assert_eq!(per_user.json()["error"], "too_many_connections");
    assert_eq!(per_user.json()["status"], 500);

    // An anonymous session takes the node's second place; the third connect finds the node full.
    let _anonymous = LongPoll::open(&server, "").await;
    let full = request(server.addr, "GET", "/socket/longpoll?vsn=2.0.0", &[], b"").await;
    assert_eq!(full.status, 503, "{}", full.body);
    assert_eq!(full.json()["error"], "node_full");
    assert_eq!(full.json()["status"], 500);
    assert!(full.header("retry-after").is_some());

    // Everything connected keeps working; once the first session idles out, its places are free.
    assert_eq!(first.post(&[json!([null, "1", "phoenix", "heartbeat", {}])]).await["status"], 200);
    assert_eq!(first.frames(1).await[0], ok_reply(None, "1", "phoenix", json!({})));
    tokio::time::sleep(Duration::from_millis(1_800)).await;
    assert_eq!(first.poll().await, json!({"status": 410}));
    LongPoll::open(&server, &format!("token={token}")).await;
}

#[tokio::test]
async fn a_post_the_session_cannot_take_within_the_window_is_408() {
    let server = TestServer::start_with(config(), |c| c.channel("crash:*", CrashChannels));
    let lp = LongPoll::open(&server, "").await;
    // The session handles nothing else until a join is decided (as Phoenix does), so while this
    // one takes 1.5 s the POSTs after it queue, and the one past the queue waits out the window.
    assert_eq!(lp.post(&[json!(["1", "1", "crash:slow", "phx_join", {"slow_join": true}])]).await["status"], 200);
    let mut answers = Vec::new();
    for r in 0..6 {
        answers.push(lp.post(&[json!([null, format!("hb{r}"), "phoenix", "heartbeat", {}])]).await["status"].clone());
    }
    assert!(answers.contains(&json!(408)), "a POST waited out the window: {answers:?}");
    assert_eq!(answers[0], 200, "{answers:?}");
    // What was taken is handled once the join is decided; what got 408 was not taken.
    let frames = lp.frames_until(|f| f[3] == "phx_reply" && f[2] == "crash:slow").await;
    let taken = answers.iter().filter(|a| **a == 200).count();
    let mut replies = frames.iter().filter(|f| f[2] == "phoenix").count();
    while replies < taken {
        replies += lp.frames(1).await.iter().filter(|f| f[2] == "phoenix").count();
    }
    assert_eq!(replies, taken, "every taken heartbeat is answered, once");
    assert_eq!(lp.poll().await["status"], 204);
}

#[tokio::test]
async fn the_auth_token_header_authenticates_and_each_poll_must_repeat_it() {
    let server = TestServer::start_with(config(), |c| c);
    let token = signup(&server, "lpheader").await;
    let header = [("x-phoenix-authtoken", token.as_str())];
    let opened = request(server.addr, "GET", "/socket/longpoll?vsn=2.0.0", &header, b"").await.json();
    assert_eq!(opened["status"], 410, "{opened}");
    let session = opened["token"].as_str().expect("a session token");
    let path = format!("/socket/longpoll?vsn=2.0.0&token={session}");
    let join = json!(["1", "1", "user:lpheader", "phx_join", {}]).to_string();
    assert_eq!(request(server.addr, "POST", &path, &[], join.as_bytes()).await.json()["status"], 200);
    let reply = request(server.addr, "GET", &path, &header, b"").await.json();
    assert_eq!(reply["status"], 200, "{reply}");
    let first: Value = serde_json::from_str(reply["messages"][0].as_str().expect("a frame")).expect("JSON");
    assert_eq!(first[4]["status"], "ok", "the header's user joins their own topic: {first}");
    let without = request(server.addr, "GET", &path, &[], b"").await.json();
    assert_eq!(without, json!({"status": 410}), "a poll without the session's auth token is not its own");
    let refused =
        request(server.addr, "GET", "/socket/longpoll?vsn=2.0.0", &[("x-phoenix-authtoken", "nope")], b"").await;
    assert_eq!(refused.json()["status"], 403);
}
