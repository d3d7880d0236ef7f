//! The seed-001 endpoint `/signal/websocket` over a real WebSocket with a real ed25519 client:
//! seed 000's whole flow, every error name, atomic prekey hand-out, redelivery and `preKeysLow`,
//! on both backends.

use std::sync::Arc;

use courier::pb::signal as wire;
use courier::pb::signal::message::Payload as Body;

use crate::on_both_backends;
use crate::support::signal::{KeyUser, SignalClient, error_name};
use crate::support::{TestDb, TestServer, test_config};

fn keys(prefix: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("{prefix}-{i}").into_bytes()).collect()
}

on_both_backends!(the_seed_flow_runs_end_to_end, seed_flow);
async fn seed_flow(db: Arc<TestDb>) {
    let server = TestServer::start_on(db, test_config(), |c| c);
    let bob = KeyUser::random();

    // The recipient connects, authenticates and registers.
    let mut recipient = SignalClient::logged_in(&server, &bob, 1).await;
    recipient.register(4242, b"bob-signed-prekey", &keys("bob", 12)).await;

    // The sender connects, ignores the challenge, fetches the keys and sends.
    let mut sender = SignalClient::connect(&server).await;
    let bundles = sender.request_pre_keys(&bob.user_id, &[]).await.expect("bob is registered");
    assert_eq!(bundles.len(), 1);
    let bundle = &bundles[0];
    assert_eq!(bundle.address, Some(bob.address(1)));
    assert_eq!(bundle.registration_id, 4242);
    assert_eq!(bundle.signed_pre_key, b"bob-signed-prekey");
    assert_eq!(bundle.one_time_pre_key, b"bob-0", "the oldest one-time prekey goes first");
    let answer = sender.send_sealed(bob.address(1), b"sealed for bob").await;
    assert!(matches!(answer, Body::Ack(_)), "{answer:?}");

    // The recipient receives it and acks; it is not delivered again after a reconnect.
    let (sequence, body) = recipient.recv_inbound().await;
    assert_eq!(body, b"sealed for bob");
    recipient.ack(sequence).await;
    // A register round trip after the ack: the ack is handled before it.
    recipient.register(4242, b"bob-signed-prekey", &[]).await;
    recipient.raw.close().await;

    let mut again = SignalClient::logged_in(&server, &bob, 1).await;
    let answer = sender.send_sealed(bob.address(1), b"second").await;
    assert!(matches!(answer, Body::Ack(_)), "{answer:?}");
    let (_, body) = again.recv_inbound().await;
    assert_eq!(body, b"second", "the acknowledged message is not delivered again");
}

on_both_backends!(a_login_binds_only_a_valid_signature_over_this_connections_nonce, login_errors);
async fn login_errors(db: Arc<TestDb>) {
    let server = TestServer::start_on(db, test_config(), |c| c);
    let alice = KeyUser::random();
    let mallory = KeyUser::random();
    let mut client = SignalClient::connect(&server).await;

    // Signed by another key than the one in the userID.
    let mut forged = SignalClient::auth_response(&alice, 1, &client.nonce.clone());
    if let Body::AuthResponse(r) = &mut forged {
        let good = SignalClient::auth_response(&mallory, 1, &client.nonce.clone());
        let Body::AuthResponse(m) = good else { unreachable!() };
        r.signature = m.signature;
    }
    assert_eq!(error_name(&client.call(forged).await), "invalid_signature");

    // A nonce another connection was sent.
    let other = SignalClient::connect(&server).await;
    assert_ne!(other.nonce, client.nonce, "every connection has its own nonce");
    let replayed = SignalClient::auth_response(&alice, 1, &other.nonce);
    assert_eq!(error_name(&client.call(replayed).await), "invalid_nonce");

    // A malformed userID (wrong type byte), correctly signed otherwise.
    let mut odd = alice.clone();
    odd.user_id[0] = 0x07;
    let malformed = SignalClient::auth_response(&odd, 1, &client.nonce.clone());
    assert_eq!(error_name(&client.call(malformed).await), "invalid_user_id");

    // Still anonymous after the failures: an anonymous request works.
    let unknown = client.request_pre_keys(&alice.user_id, &[]).await.expect_err("no device yet");
    assert_eq!(unknown.name, "unknown_user");

    // Now the real login, then a second one.
    let answer = client.login(&alice, 1).await;
    assert!(matches!(answer.payload, Some(Body::Ack(_))), "{answer:?}");
    let second = SignalClient::auth_response(&alice, 2, &client.nonce.clone());
    assert_eq!(error_name(&client.call(second).await), "already_authenticated");
}

on_both_backends!(each_kind_of_connection_gets_only_its_own_requests, wrong_kind);
async fn wrong_kind(db: Arc<TestDb>) {
    let server = TestServer::start_on(db, test_config(), |c| c);
    let alice = KeyUser::random();
    let mut anonymous = SignalClient::connect(&server).await;
    let register = wire::Register { registration_id: 1, signed_pre_key: b"spk".to_vec(), one_time_pre_keys: vec![] };
    assert_eq!(error_name(&anonymous.call(Body::Register(register.clone())).await), "unauthorized");
    assert_eq!(error_name(&anonymous.call(Body::Unregister(wire::Unregister {})).await), "unauthorized");

    let mut authenticated = SignalClient::logged_in(&server, &alice, 1).await;
    let request = wire::RequestPreKeys { user_id: alice.user_id.clone(), known_device_i_ds: vec![] };
    let name = "attempted_anonymous_op_on_authenticated_connection";
    assert_eq!(error_name(&authenticated.call(Body::RequestPreKeys(request)).await), name);
    let outbound = wire::OutboundMessage { to: Some(alice.address(1)), unidentified_sender_message: b"x".to_vec() };
    assert_eq!(error_name(&authenticated.call(Body::OutboundMessage(outbound)).await), name);
    assert!(matches!(authenticated.call(Body::Register(register)).await, Body::Ack(_)));
}

on_both_backends!(bad_envelopes_get_invalid_message_and_text_or_repeated_garbage_closes, bad_frames);
async fn bad_frames(db: Arc<TestDb>) {
    let server = TestServer::start_on(db, test_config(), |c| c);
    let alice = KeyUser::random();
    let mut client = SignalClient::connect(&server).await;

    // Garbage, an envelope without payload and a server-only message: each invalid_message.
    client.raw.send_binary(vec![0xff, 0xff, 0xff]).await;
    let answer = client.recv().await;
    assert!(matches!(&answer.payload, Some(Body::Error(e)) if e.name == "invalid_message"), "{answer:?}");
    client.raw.send_binary(courier_envelope(9, None)).await;
    let answer = client.recv().await;
    assert_eq!(answer.sequence, 9);
    assert!(matches!(&answer.payload, Some(Body::Error(e)) if e.name == "invalid_message"), "{answer:?}");
    let challenge = Body::AuthChallenge(wire::AuthChallenge { nonce: vec![1; 16] });
    assert_eq!(error_name(&client.call(challenge).await), "invalid_message");

    // The connection is still usable: it can even log in.
    let answer = client.login(&alice, 1).await;
    assert!(matches!(answer.payload, Some(Body::Ack(_))), "{answer:?}");

    // Garbage over and over closes with the malformed-input code.
    for _ in 0..2 {
        client.raw.send_binary(vec![0xff; 4]).await;
        let answer = client.recv().await;
        assert!(matches!(&answer.payload, Some(Body::Error(e)) if e.name == "invalid_message"));
    }
    client.raw.send_binary(vec![0xff; 4]).await;
    assert_eq!(client.raw.recv_close().await.0, 1011);

    // A text frame closes at once as unsupported data.
    let mut texting = SignalClient::connect(&server).await;
    texting.raw.send_text("{\"hello\": 1}").await;
    assert_eq!(texting.raw.recv_close().await.0, 1003);
}

fn courier_envelope(sequence: u32, payload: Option<Body>) -> Vec<u8> {
    use prost::Message as _;
    wire::Message { sequence, payload }.encode_to_vec()
}

on_both_backends!(register_appends_or_replaces_and_requests_follow_the_directory, directory);
async fn directory(db: Arc<TestDb>) {
    let server = TestServer::start_on(db, test_config(), |c| c);
    let bob = KeyUser::random();
    let mut phone = SignalClient::logged_in(&server, &bob, 1).await;
    phone.register(7, b"spk-1", &keys("a", 1)).await;
    // Same registration: appended.
    phone.register(7, b"spk-1", &keys("b", 1)).await;
    let mut laptop = SignalClient::logged_in(&server, &bob, 2).await;
    laptop.register(8, b"spk-laptop", &[]).await;

    let mut sender = SignalClient::connect(&server).await;
    let one_time = |bundles: &[wire::PreKey], device: u32| {
        bundles
            .iter()
            .find(|b| b.address.as_ref().is_some_and(|a| a.device_id == device))
            .map(|b| b.one_time_pre_key.clone())
    };
    let first = sender.request_pre_keys(&bob.user_id, &[]).await.unwrap();
    assert_eq!(first.len(), 2, "one bundle per device");
    assert_eq!(one_time(&first, 1), Some(b"a-0".to_vec()));
    assert_eq!(one_time(&first, 2), Some(Vec::new()), "no one-time prekey left: empty");
    let second = sender.request_pre_keys(&bob.user_id, &[2]).await.unwrap();
    assert_eq!(second.len(), 1, "known devices are left out");
    assert_eq!(one_time(&second, 1), Some(b"b-0".to_vec()), "the appended key");

    // Another signed prekey: the registration (and its old prekeys) is replaced.
    phone.register(7, b"spk-2", &keys("c", 2)).await;
    phone.register(7, b"spk-1", &keys("d", 1)).await;
    let third = sender.request_pre_keys(&bob.user_id, &[2]).await.unwrap();
    assert_eq!(third[0].signed_pre_key, b"spk-1");
    assert_eq!(third[0].one_time_pre_key, b"d-0", "the c keys went with the replaced registration");

    // Unknown device, then unregister everything: unknown user.
    let answer = sender.send_sealed(bob.address(3), b"x").await;
    assert_eq!(error_name(&answer), "unknown_device");
    let answer = sender.send_sealed(KeyUser::random().address(1), b"x").await;
    assert_eq!(error_name(&answer), "unknown_device");
    assert!(matches!(phone.call(Body::Unregister(wire::Unregister {})).await, Body::Ack(_)));
    assert!(matches!(laptop.call(Body::Unregister(wire::Unregister {})).await, Body::Ack(_)));
    let gone = sender.request_pre_keys(&bob.user_id, &[]).await.expect_err("no device left");
    assert_eq!(gone.name, "unknown_user");
    let bad = sender.request_pre_keys(&bob.user_id[..10], &[]).await.expect_err("short userID");
    assert_eq!(bad.name, "invalid_user_id");
}

on_both_backends!(a_device_holds_a_bounded_number_of_bounded_prekeys, prekey_limits);
async fn prekey_limits(db: Arc<TestDb>) {
    let mut config = test_config();
    config.keys.max_pre_keys_per_register = 4;
    config.keys.max_pre_keys_per_device = 6;
    config.keys.max_key_bytes = 16;
    let server = TestServer::start_on(db, config, |c| c);
    let bob = KeyUser::random();
    let mut phone = SignalClient::logged_in(&server, &bob, 1).await;
    let register = |registration_id: u32, signed: &[u8], pre_keys: Vec<Vec<u8>>| {
        Body::Register(wire::Register { registration_id, signed_pre_key: signed.to_vec(), one_time_pre_keys: pre_keys })
    };
    let refused = |answer: Body| match answer {
        Body::Error(e) if e.name == "invalid_message" => e.description,
        other => panic!("expected invalid_message, got {other:?}"),
    };
    // Per register, per key, and empty keys (an empty one-time prekey reads as "none left").
    refused(phone.call(register(1, b"spk", keys("k", 5))).await);
    refused(phone.call(register(1, &[7; 17], keys("k", 1))).await);
    refused(phone.call(register(1, b"spk", vec![vec![7; 17]])).await);
    refused(phone.call(register(1, b"spk", vec![Vec::new()])).await);
    // Per device: appends stop at six, a replacement starts from none.
    phone.register(1, b"spk", &keys("a", 4)).await;
    let why = refused(phone.call(register(1, b"spk", keys("b", 3))).await);
    assert!(why.contains("at most 6"), "{why}");
    phone.register(1, b"spk", &keys("b", 2)).await;
    phone.register(2, b"spk-2", &keys("c", 4)).await;
    let mut sender = SignalClient::connect(&server).await;
    let bundles = sender.request_pre_keys(&bob.user_id, &[]).await.unwrap();
    assert_eq!(bundles[0].one_time_pre_key, b"c-0", "the replaced registration's keys are gone");
}

on_both_backends!(twenty_concurrent_requesters_never_share_a_one_time_prekey, concurrent_claims);
async fn concurrent_claims(db: Arc<TestDb>) {
    let server = Arc::new(TestServer::start_on(db, test_config(), |c| c));
    let bob = KeyUser::random();
    let mut phone = SignalClient::logged_in(&server, &bob, 1).await;
    phone.register(1, b"spk", &keys("k", 25)).await;

    let mut senders = Vec::new();
    for _ in 0..20 {
        senders.push(SignalClient::connect(&server).await);
    }
    let claims = senders.into_iter().map(|mut sender| {
        let user_id = bob.user_id.clone();
        tokio::spawn(async move {
            sender.request_pre_keys(&user_id, &[]).await.expect("bundle")[0].one_time_pre_key.clone()
        })
    });
    let mut taken = Vec::new();
    for claim in claims.collect::<Vec<_>>() {
        taken.push(claim.await.expect("requester task"));
    }
    let mut distinct = taken.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 20, "a key went out twice: {taken:?}");
    assert!(taken.iter().all(|k| !k.is_empty()), "25 keys for 20 requests: none runs dry");
    let mut last = SignalClient::connect(&server).await;
    let mut left = Vec::new();
    for _ in 0..6 {
        left.push(last.request_pre_keys(&bob.user_id, &[]).await.unwrap()[0].one_time_pre_key.clone());
    }
    assert_eq!(left.iter().filter(|k| !k.is_empty()).count(), 5, "exactly the 5 unclaimed keys were left");
    assert!(left[5].is_empty());
    assert!(left.iter().all(|k| k.is_empty() || !taken.contains(k)));
}

on_both_backends!(unacknowledged_messages_come_again_after_a_reconnect_in_order, redelivery);
async fn redelivery(db: Arc<TestDb>) {
    let server = TestServer::start_on(db, test_config(), |c| c);
    let bob = KeyUser::random();
    let mut phone = SignalClient::logged_in(&server, &bob, 1).await;
    phone.register(1, b"spk", &keys("k", 12)).await;
    let mut sender = SignalClient::connect(&server).await;
    for body in [b"one", b"two", b"six"] {
        assert!(matches!(sender.send_sealed(bob.address(1), body).await, Body::Ack(_)));
    }
    let (first, body) = phone.recv_inbound().await;
    assert_eq!(body, b"one");
    let (_, body) = phone.recv_inbound().await;
    assert_eq!(body, b"two");
    let (_, body) = phone.recv_inbound().await;
    assert_eq!(body, b"six");
    phone.ack(first).await;
    phone.register(1, b"spk", &[]).await;
    phone.raw.close().await;

    // Sent while the device is away: it comes after the unacknowledged ones, in log order.
    assert!(matches!(sender.send_sealed(bob.address(1), b"ten").await, Body::Ack(_)));
    let mut phone = SignalClient::logged_in(&server, &bob, 1).await;
    let mut bodies = Vec::new();
    let mut sequences = Vec::new();
    for _ in 0..3 {
        let (sequence, body) = phone.recv_inbound().await;
        sequences.push(sequence);
        bodies.push(body);
    }
    assert_eq!(bodies, vec![b"two".to_vec(), b"six".to_vec(), b"ten".to_vec()]);
    for sequence in sequences {
        phone.ack(sequence).await;
    }
    phone.register(1, b"spk", &[]).await;
    phone.raw.close().await;

    let mut phone = SignalClient::logged_in(&server, &bob, 1).await;
    assert!(matches!(sender.send_sealed(bob.address(1), b"new").await, Body::Ack(_)));
    let (_, body) = phone.recv_inbound().await;
    assert_eq!(body, b"new", "everything acknowledged stays delivered");
}

on_both_backends!(pre_keys_low_is_pushed_at_login_and_once_per_drop, pre_keys_low);
async fn pre_keys_low(db: Arc<TestDb>) {
    let mut config = test_config();
    config.keys.prekeys_low_threshold = 3;
    config.keys.prekeys_requested = 7;
    let server = TestServer::start_on(db, config, |c| c);
    let bob = KeyUser::random();
    let mut phone = SignalClient::logged_in(&server, &bob, 1).await;
    phone.register(1, b"spk", &keys("k", 4)).await;

    let mut sender = SignalClient::connect(&server).await;
    // 4 → 3: not below the threshold yet; 3 → 2: below, pushed; 2 → 1: already below.
    for _ in 0..3 {
        sender.request_pre_keys(&bob.user_id, &[]).await.unwrap();
    }
    let low = phone.recv().await;
    assert!(matches!(low.payload, Some(Body::PreKeysLow(wire::PreKeysLow { keys_requested: 7 }))), "{low:?}");
    // The next frame is the marker's ack: no second push for the same drop.
    phone.register(1, b"spk", &[]).await;

    // At login, a device below the threshold is told at once (after the login's ack).
    phone.raw.close().await;
    let mut phone = SignalClient::logged_in(&server, &bob, 1).await;
    let low = phone.recv().await;
    assert!(matches!(low.payload, Some(Body::PreKeysLow(wire::PreKeysLow { keys_requested: 7 }))), "{low:?}");

    // Topped up above the threshold, a new drop is pushed again.
    phone.register(1, b"spk", &keys("more", 3)).await;
    for _ in 0..2 {
        sender.request_pre_keys(&bob.user_id, &[]).await.unwrap();
    }
    let low = phone.recv().await;
    assert!(matches!(low.payload, Some(Body::PreKeysLow(_))), "{low:?}");
}

on_both_backends!(a_phoenix_device_of_the_same_user_sees_sealed_messages_in_its_log, phoenix_view);
async fn phoenix_view(db: Arc<TestDb>) {
    use base64::Engine as _;
    use serde_json::{Value, json};

    use crate::support::Client;
    use crate::support::channels::TestAuth;
    use crate::support::devices::Device;

    // The test authenticator signs a Phoenix socket in as `user_id`: key users have no password.
    let server = TestServer::start_on(db, test_config(), |c| c.authenticator(TestAuth));
    let bob = KeyUser::random();
    let eid = bob.eid();
    let mut phone = SignalClient::logged_in(&server, &bob, 1).await;
    phone.register(1, b"spk", &keys("k", 12)).await;
    let mut sender = SignalClient::connect(&server).await;
    assert!(matches!(sender.send_sealed(bob.address(1), &[0, 1, 2, 250]).await, Body::Ack(_)));

    let client = Client::connect(&server.url(&format!("vsn=2.0.0&user_id={eid}"))).await;
    let (mut browser, reply) = Device::join_on(client, &eid, json!({})).await;
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(reply["response"]["last_offset"], 1, "the sealed message took the log's first offset");
    let stored = browser.event("message").await;
    assert!(matches!(stored.get("from"), None | Some(Value::Null)), "a sealed message names no sender: {stored}");
    assert_eq!(stored["encryption_type"], "sealed");
    assert_eq!(stored["encrypted"], base64::engine::general_purpose::STANDARD.encode([0, 1, 2, 250]));
    assert_eq!(stored["signal_offset"], 1);
    assert_eq!(stored["to"]["eid"], eid.as_str());

    // Live, and on the signal device too.
    assert!(matches!(sender.send_sealed(bob.address(1), b"live").await, Body::Ack(_)));
    let live = browser.event("message").await;
    assert_eq!(live["signal_offset"], 2);
    assert_eq!(live["encrypted"], base64::engine::general_purpose::STANDARD.encode(b"live"));
    assert!(matches!(live.get("from"), None | Some(Value::Null)), "{live}");
    let bodies = [phone.recv_inbound().await.1, phone.recv_inbound().await.1];
    assert_eq!(bodies, [vec![0, 1, 2, 250], b"live".to_vec()]);

    // A pull reads both back as a run of consecutive offsets.
    let page = browser.call_ok("pull", json!({"after": 0})).await;
    let offsets: Vec<i64> =
        page["messages"].as_array().unwrap().iter().map(|m| m["signal_offset"].as_i64().unwrap()).collect();
    assert_eq!(offsets, vec![1, 2]);
}

on_both_backends!(phoenix_devices_use_the_directory_through_user_events, phoenix_directory);
async fn phoenix_directory(db: Arc<TestDb>) {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde_json::json;

    use crate::support::Client;
    use crate::support::channels::TestAuth;
    use crate::support::devices::Device;

    let server = TestServer::start_on(db, test_config(), |c| c.authenticator(TestAuth));
    let (bob, carol) = (KeyUser::random(), KeyUser::random());
    // A key user's Courier account is made by its first ed25519 login.
    for user in [&bob, &carol] {
        SignalClient::logged_in(&server, user, 1).await.raw.close().await;
    }
    let join = |user: &KeyUser| {
        let eid = user.eid();
        let url = server.url(&format!("vsn=2.0.0&user_id={eid}"));
        async move {
            let (device, reply) = Device::join_on(Client::connect(&url).await, &eid, json!({})).await;
            assert_eq!(reply["status"], "ok", "{reply}");
            device
        }
    };
    let mut bob_browser = join(&bob).await;
    let pre_keys: Vec<String> = (0..3).map(|i| STANDARD.encode(format!("pk-{i}"))).collect();
    let registered = bob_browser
        .call_ok(
            "keys.register",
            json!({"device": 5, "registration_id": 77, "signed_pre_key": STANDARD.encode("spk"), "one_time_pre_keys": pre_keys}),
        )
        .await;
    assert_eq!(registered, json!({"remaining": 3}));
    assert_eq!(bob_browser.call_ok("keys.count", json!({"device": 5})).await, json!({"remaining": 3}));
    let unknown = bob_browser.call("keys.count", json!({"device": 6})).await;
    assert_eq!(unknown["response"]["code"], "unknown_device", "{unknown}");

    // Carol's browser fetches Bob's bundle; the signal endpoint sees the same directory.
    let mut carol_browser = join(&carol).await;
    let fetched = carol_browser.call_ok("keys.bundle", json!({"user": bob.eid()})).await;
    assert_eq!(
        fetched["bundles"],
        json!([{"device": 5, "registration_id": 77, "signed_pre_key": STANDARD.encode("spk"), "one_time_pre_key": STANDARD.encode("pk-0")}])
    );
    let mut sender = SignalClient::connect(&server).await;
    let bundles = sender.request_pre_keys(&bob.user_id, &[]).await.unwrap();
    assert_eq!(bundles[0].one_time_pre_key, b"pk-1", "the same atomic hand-out: pk-0 is gone");
    assert_eq!(bob_browser.call_ok("keys.count", json!({"device": 5})).await, json!({"remaining": 1}));
    let nobody = carol_browser.call("keys.bundle", json!({"user": KeyUser::random().eid()})).await;
    assert_eq!(nobody["response"]["code"], "unknown_user", "{nobody}");
}

on_both_backends!(key_users_sign_in_over_http_and_connect_as_phoenix_devices, http_sign_in);
async fn http_sign_in(db: Arc<TestDb>) {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use ed25519_dalek::Signer;
    use prost::Message as _;
    use serde_json::{Value, json};
    use tokio_tungstenite::tungstenite;

    use crate::support::{Client, http};

    let server = TestServer::start_on(db, test_config(), |c| c);
    let post = |path: &'static str, body: Value| {
        let addr = server.addr;
        async move {
            let (status, text) =
                http(addr, "POST", path, &[("Content-Type", "application/json")], &body.to_string()).await;
            (status, serde_json::from_str::<Value>(&text).unwrap_or_else(|_| panic!("{path} answered {text}")))
        }
    };
    let challenge = |user: &KeyUser| {
        let body = json!({"user": user.eid()});
        async {
            let (status, reply) = post("/api/keys/challenge", body).await;
            assert_eq!(status, 200, "{reply}");
            assert_eq!(reply["expires_in_ms"], 60_000);
            STANDARD.decode(reply["nonce"].as_str().expect("a nonce")).expect("base64")
        }
    };
    let signed = |user: &KeyUser, signer: &KeyUser, device: u32, nonce: &[u8]| {
        let login = wire::Login { address: Some(user.address(device)), nonce: nonce.to_vec() }.encode_to_vec();
        let signature = signer.key.sign(&login).to_bytes();
        json!({"login": STANDARD.encode(&login), "signature": STANDARD.encode(signature)})
    };
    let (bob, mallory) = (KeyUser::random(), KeyUser::random());

    let nonce = challenge(&bob).await;
    assert!(nonce.len() >= 16);
    // A forgery is refused and does not use the nonce up; the real login then signs in.
    let (status, forged) = post("/api/keys/signin", signed(&bob, &mallory, 4, &nonce)).await;
    assert_eq!((status, forged["error"].as_str()), (401, Some("invalid_signature")), "{forged}");
    let (status, session) = post("/api/keys/signin", signed(&bob, &bob, 4, &nonce)).await;
    assert_eq!(status, 200, "{session}");
    assert_eq!((session["username"].as_str(), session["device"].as_u64()), (Some(bob.eid().as_str()), Some(4)));
    let token = session["session"].as_str().expect("a session token").to_owned();
    // A nonce signs in once, only for the user it was issued to, and only if issued at all.
    let (status, replay) = post("/api/keys/signin", signed(&bob, &bob, 4, &nonce)).await;
    assert_eq!((status, replay["error"].as_str()), (401, Some("invalid_nonce")), "{replay}");
    let mallorys = challenge(&mallory).await;
    let (_, borrowed) = post("/api/keys/signin", signed(&bob, &bob, 4, &mallorys)).await;
    assert_eq!(borrowed["error"], "invalid_nonce", "{borrowed}");
    let (_, invented) = post("/api/keys/signin", signed(&bob, &bob, 4, &[7; 32])).await;
    assert_eq!(invented["error"], "invalid_nonce", "{invented}");
    let (status, not_eid) = post("/api/keys/challenge", json!({"user": "alice"})).await;
    assert_eq!((status, not_eid["error"].as_str()), (400, Some("invalid_user_id")), "{not_eid}");
    let (status, garbage) = post("/api/keys/signin", json!({"login": "%%", "signature": ""})).await;
    assert_eq!(status, 400, "{garbage}");

    // The token is an ordinary session: a Phoenix device of bob joins his topic with it.
    let url = server.url(&format!("vsn=2.0.0&token={token}&device=web"));
    let mut browser = Client::connect(&url).await;
    browser.send(json!(["1", "1", format!("user:{}", bob.eid()), "phx_join", {}])).await;
    let joined = browser.recv_json().await;
    assert_eq!(joined[4]["status"], "ok", "{joined}");
    assert_eq!(joined[4]["response"]["identity"]["connection_resource_id"], "web");
    // Device names of the signal endpoint's devices are not for Phoenix sockets.
    match Client::try_connect(&server.url(&format!("vsn=2.0.0&token={token}&device=signal:4")), &[]).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), 403),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("a Phoenix socket took a signal device's name"),
    }
    // No password signs a key user in: it is a wrong password, not a server error.
    let (status, refused) =
        post("/api/signin", json!({"username": bob.eid(), "password": "correct horse battery"})).await;
    assert_eq!((status, refused["error"].as_str()), (401, Some("wrong_password")), "{refused}");
}

#[tokio::test]
async fn an_unanswered_key_challenge_expires() {
    use std::time::Duration;

    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use courier::clock::ManualClock;
    use serde_json::{Value, json};

    use crate::support::http;

    let clock = ManualClock::new(1_700_000_000_000);
    let injected = clock.clone();
    let server = TestServer::start_on(Arc::new(TestDb::sqlite()), test_config(), move |c| c.clock(Arc::new(injected)));
    let bob = KeyUser::random();
    let headers = [("Content-Type", "application/json")];
    let body = json!({"user": bob.eid()}).to_string();
    let (status, reply) = http(server.addr, "POST", "/api/keys/challenge", &headers, &body).await;
    assert_eq!(status, 200, "{reply}");
    let reply: Value = serde_json::from_str(&reply).expect("JSON");
    let nonce = STANDARD.decode(reply["nonce"].as_str().expect("a nonce")).expect("base64");

    clock.advance(Duration::from_secs(61));
    let Body::AuthResponse(response) = SignalClient::auth_response(&bob, 1, &nonce) else { unreachable!() };
    let signin = json!({"login": STANDARD.encode(&response.login), "signature": STANDARD.encode(&response.signature)});
    let (status, reply) = http(server.addr, "POST", "/api/keys/signin", &headers, &signin.to_string()).await;
    assert_eq!(status, 401, "{reply}");
    assert!(reply.contains("invalid_nonce"), "{reply}");
}

/// Nothing about an anonymous sender reaches the log, at any level, or the store: the sender
/// connects from its own loopback address (127.0.0.2) to the real binary logging at TRACE, and
/// neither that address nor its port appears in any line; the stored row has no column for it.
#[tokio::test]
async fn a_sealed_sender_leaves_no_trace_in_the_log_or_the_store() {
    use std::process::Command;

    use futures_util::{SinkExt as _, StreamExt as _};
    use prost::Message as _;
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    use crate::support::spawn_binary;

    let dir = tempfile::tempdir().expect("tempdir");
    let database = dir.path().join("courier.db");
    let (mut child, addr, logs) = spawn_binary(&database, &[("RUST_LOG", "trace")]);
    let server_addr: std::net::SocketAddr = addr.parse().expect("address");
    let bob = KeyUser::random();

    // Bob's phone logs in and registers, over an ordinary test client.
    let mut phone = SignalClient::logged_in_at(server_addr, &bob, 1).await;
    phone.register(1, b"spk", &keys("k", 12)).await;

    // The sender, from 127.0.0.2.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.2:0".parse().expect("address")).expect("bind 127.0.0.2");
    let stream = socket.connect(server_addr).await.expect("connect from 127.0.0.2");
    let sender_port = stream.local_addr().expect("local address").port();
    let (mut sender, _) =
        tokio_tungstenite::client_async(format!("ws://{addr}/signal/websocket"), stream).await.expect("handshake");
    let challenge = sender.next().await.expect("a frame").expect("readable");
    assert!(matches!(challenge, WsMessage::Binary(_)), "{challenge:?}");
    let outbound = wire::OutboundMessage { to: Some(bob.address(1)), unidentified_sender_message: b"sealed".to_vec() };
    let envelope = wire::Message { sequence: 1, payload: Some(Body::OutboundMessage(outbound)) };
    sender.send(WsMessage::Binary(envelope.encode_to_vec().into())).await.expect("send");
    let answer = match sender.next().await.expect("a frame").expect("readable") {
        WsMessage::Binary(bytes) => wire::Message::decode(bytes.as_ref()).expect("an envelope"),
        other => panic!("expected the ack, got {other:?}"),
    };
    assert!(matches!(answer.payload, Some(Body::Ack(_))), "{answer:?}");
    assert_eq!(phone.recv_inbound().await.1, b"sealed");
    sender.close(None).await.expect("close");

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill runs");
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait()).await.expect("join").expect("binary exits");
    assert!(exit.success(), "exit status {exit}");
    let lines: Vec<String> = logs.try_iter().collect();
    assert!(lines.iter().any(|l| l.contains("TRACE")), "the log ran at TRACE: {} lines", lines.len());
    let port = format!(":{sender_port}");
    let naming: Vec<&String> = lines.iter().filter(|l| l.contains("127.0.0.2") || l.contains(&port)).collect();
    assert!(naming.is_empty(), "log lines name the anonymous sender: {naming:#?}");

    // The stored row: receiver, offset, device, body and time, nothing else; and the address
    // is nowhere in the database's files.
    #[derive(diesel::QueryableByName)]
    struct Column {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
    }
    use diesel::{Connection as _, RunQueryDsl as _};
    let mut conn = diesel::SqliteConnection::establish(&database.to_string_lossy()).expect("open the database");
    let columns: Vec<Column> = diesel::sql_query("SELECT name FROM pragma_table_info('sealed_messages') ORDER BY cid")
        .load(&mut conn)
        .expect("columns");
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["receiver", "receiver_offset", "device_id", "body", "stored_at"]);
    drop(conn);
    for entry in std::fs::read_dir(dir.path()).expect("list") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("read");
        assert!(!bytes.windows(9).any(|w| w == b"127.0.0.2"), "{} holds the sender's address", path.display());
    }
}

on_both_backends!(a_deleted_key_user_signs_in_no_more_and_takes_no_sealed_mail, deleted_key_user);
async fn deleted_key_user(db: Arc<TestDb>) {
    use crate::support::http;

    let mut config = test_config();
    config.admin.token = Some("admin-secret".into());
    let server = TestServer::start_on(db, config, |c| c);
    let bob = KeyUser::random();
    let mut phone = SignalClient::logged_in(&server, &bob, 1).await;
    phone.register(1, b"spk", &keys("k", 3)).await;
    let mut sender = SignalClient::connect(&server).await;
    assert!(matches!(sender.send_sealed(bob.address(1), b"before").await, Body::Ack(_)));

    let path = format!("/admin/api/users/{}", bob.eid());
    let (status, reply) = http(server.addr, "DELETE", &path, &[("Authorization", "Bearer admin-secret")], "").await;
    assert_eq!(status, 200, "{reply}");
    // Its registrations went with it: nothing more can be sent to it, nor its keys fetched.
    assert_eq!(error_name(&sender.send_sealed(bob.address(1), b"after").await), "unknown_device");
    let gone = sender.request_pre_keys(&bob.user_id, &[]).await.expect_err("no device left");
    assert_eq!(gone.name, "unknown_user");
    // And its key signs in no more.
    let mut again = SignalClient::connect(&server).await;
    let answer = again.login(&bob, 1).await;
    assert!(matches!(&answer.payload, Some(Body::Error(e)) if e.name == "no_such_user"), "{answer:?}");
}
