//! Criterion micro-benchmarks of Courier's hot paths, one group each:
//!
//! - `frames`: Phoenix V2 frames, JSON text (`[join_ref, ref, topic, event, payload]`) and
//!   binary, decoded and encoded through `protocol::Serializer` (throughput in frame bytes);
//! - `message_json`: a filled-in `pb::Message` to and from proto3 JSON, and to and from
//!   protobuf for comparison, through the server's own `messaging::wire` entry points;
//! - `presence`: `TopicPresence` tracking a window of joins and taking the diff, an update
//!   (join + leave) and its diff, and the `presence_state` payload of 100 and 10,000 keys;
//! - `log_writer`: the group commit of 1, 64 and 512 messages (`Store::write` +
//!   `messaging::log::apply`, as the writer task does it) on a SQLite file in a temp dir;
//! - `signal`: decoding the `/signal/websocket` envelope (`pb::signal::Message`) of an
//!   `outboundMessage` with a 1 KiB sealed body, an `authResponse` and a `register` with 100
//!   one-time prekeys, as the endpoint decodes a binary frame (that decode is private to
//!   `transport::signal_socket`, so this calls the same prost `Message::decode` on the frame's
//!   `Bytes`; throughput in frame bytes); and one `requestPreKeys` claim through
//!   `Keys::claim_bundles` for a one-device user on a SQLite file in a temp dir, its prekeys
//!   topped up by `Keys::register` outside the timed claims.
//!
//! Run everything (about a minute and three quarters): `cargo bench --bench hot_paths`; one group:
//! `cargo bench --bench hot_paths -- presence`; each benchmark once, as CI does:
//! `cargo bench --bench hot_paths -- --test`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};

use courier::accounts::{Accounts, AccountsConfig, HashAlgorithm, MessagePolicy};
use courier::clock::{Clock, SystemClock};
use courier::keys::{Address, Keys, KeysConfig, UserId};
use courier::messaging::log::{self, Append, Write, Written};
use courier::messaging::wire::{self, Encoding, SIGNAL_REQUEST_PUSH};
use courier::pb;
use courier::pb::signal::message::Payload as SignalPayload;
use courier::presence::{Meta, TopicPresence};
use courier::protocol::{Outgoing, Payload, Serializer, WireFrame};
use courier::pubsub::{ConnectionId, LocalBroker, NodeId, PubSub};
use courier::store::messages::MessageRow;
use courier::store::{Store, StoreOptions};

/// What a client puts in `Message.payload`: a short chat line (73 bytes, 100 in base64).
const CHAT_BODY: &[u8] = br#"{"text":"Are we still on for lunch at noon? I can book the usual place."}"#;
/// An ed25519 signature in base64, as clients that sign fill `Message.signature`.
const SIGNATURE: &str = "q1Jx3Zx5sQ0mJ8oXo9F2mY1m8nJcV0c7oQmT2y8w2bqVw3aV1zP9kY5bH4cN7dR6eW2tU0sL3gK8fJ1hG5iD0A==";

/// A `message` push as a JSON client writes it: only the fields it sets (205 bytes), where
/// the server's own encoding would also spell out every default.
const CLIENT_MESSAGE_JSON: &str = concat!(
    r#"{"id":"c1a6e8f2-5b7d-4c3e-9a10-2f4b6d8e0a1c","to":{"eid":"bob"},"timestamp":"1700000000123","#,
    r#""payload":"eyJ0ZXh0IjoiQXJlIHdlIHN0aWxsIG9uIGZvciBsdW5jaCBhdCBub29uPyBJIGNhbiBib29rIHRoZSB1c3VhbCBwbGFjZS4ifQ=="}"#,
);

/// The message a client sends on `user:alice`, before the server fills in `from`.
fn client_message() -> pb::Message {
    pb::Message {
        id: "c1a6e8f2-5b7d-4c3e-9a10-2f4b6d8e0a1c".into(),
        to: Some(wire::identity("bob", None)),
        timestamp: 1_700_000_000_123,
        payload: CHAT_BODY.to_vec(),
        ..pb::Message::default()
    }
}

/// A stored message as the server delivers it from bob's log: every field the mapping has.
fn delivered_message() -> pb::Message {
    let row = MessageRow {
        sender: "alice".into(),
        client_id: "c1a6e8f2-5b7d-4c3e-9a10-2f4b6d8e0a1c".into(),
        sender_device: Some("phone".into()),
        receiver: "bob".into(),
        user_offset: 1_207,
        sender_offset: 5_311,
        receiver_offset: 4_980,
        sent_at: 1_700_000_000_123,
        stored_at: 1_700_000_000_131,
        payload: CHAT_BODY.to_vec(),
        encryption_type: String::new(),
        encrypted: String::new(),
        signature: SIGNATURE.into(),
    };
    wire::log_message(
        &row,
        "bob",
        row.receiver_offset,
        wire::ack_state(row.user_offset, (1_206, 1_200)),
        SIGNAL_REQUEST_PUSH,
    )
    .expect("offsets within int32")
}

/// The `MessagePeerAckSignal` a sender gets in the reply to its `message` push.
fn sent_ack() -> pb::MessagePeerAckSignal {
    pb::MessagePeerAckSignal {
        to: Some(pb::Identity {
            eid: "alice".into(),
            connection_resource_id: Some("phone".into()),
            node: Some("courier-1".into()),
        }),
        from: Some(wire::identity("bob", None)),
        message_id: "c1a6e8f2-5b7d-4c3e-9a10-2f4b6d8e0a1c".into(),
        method: wire::METHOD_SENT,
        timestamp: 1_700_000_000_131,
        status_code: 200,
        peer: Some(wire::peer("alice", "bob", 1_207, 1_206)),
    }
}

/// A V2 binary client push (kind 0), laid out as phoenix.js writes it.
fn binary_push(join_ref: &str, msg_ref: &str, topic: &str, event: &str, body: &[u8]) -> Bytes {
    let lens = [join_ref, msg_ref, topic, event].map(|s| u8::try_from(s.len()).expect("header field fits a byte"));
    let mut frame = vec![0, lens[0], lens[1], lens[2], lens[3]];
    for s in [join_ref, msg_ref, topic, event] {
        frame.extend_from_slice(s.as_bytes());
    }
    frame.extend_from_slice(body);
    Bytes::from(frame)
}

fn frame_len(frame: &WireFrame) -> u64 {
    match frame {
        WireFrame::Text(t) => t.len() as u64,
        WireFrame::Binary(b) => b.len() as u64,
    }
}

fn bench_frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("frames");

    // Inbound: a chat `message` push from a V2 client, in both frame kinds.
    let text = format!(r#"["3","17","user:alice","message",{CLIENT_MESSAGE_JSON}]"#);
    let client_pb = prost::Message::encode_to_vec(&client_message());
    let binary = binary_push("3", "17", "user:alice", "message", &client_pb);
    // A frame that failed to decode would time the error path instead.
    let client_json = Serializer::V2.decode_text(&text).expect("text push decodes").payload;
    assert_eq!(wire::decode::<pb::Message>(&client_json).expect("client JSON is a Message"), client_message());
    Serializer::V2.decode_binary(binary.clone()).expect("binary push decodes");

    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function("v2_text/decode/push_message", |b| b.iter(|| Serializer::V2.decode_text(black_box(&text))));
    group.throughput(Throughput::Bytes(binary.len() as u64));
    group.bench_function("v2_binary/decode/push_message", |b| {
        b.iter(|| Serializer::V2.decode_binary(black_box(binary.clone())))
    });

    // Outbound: the reply to that push, the message delivered to the receiver's inbox, and a
    // room broadcast relaying the client's payload untouched, as room channels do.
    for (kind, encoding) in [("v2_text", Encoding::Json), ("v2_binary", Encoding::Protobuf)] {
        let ack = encoding.encode(&sent_ack());
        let delivered = encoding.encode(&delivered_message());
        let relayed = match encoding {
            Encoding::Json => client_json.clone(),
            Encoding::Protobuf => Payload::Binary(Bytes::from(client_pb.clone())),
        };
        let frames = [
            (
                "reply",
                Outgoing::Reply {
                    join_ref: Some("3"),
                    msg_ref: Some("17"),
                    topic: "user:alice",
                    status: "ok",
                    response: &ack,
                },
            ),
            (
                "push_message",
                Outgoing::Push { join_ref: Some("5"), topic: "user:bob", event: "message", payload: &delivered },
            ),
            ("broadcast", Outgoing::Broadcast { topic: "room:lobby", event: "message", payload: &relayed }),
        ];
        for (name, frame) in frames {
            let encoded = Serializer::V2.encode(&frame).expect("frame encodes");
            group.throughput(Throughput::Bytes(frame_len(&encoded)));
            group.bench_function(format!("{kind}/encode/{name}"), |b| {
                b.iter(|| Serializer::V2.encode(black_box(&frame)))
            });
        }
    }
    group.finish();
}

fn bench_message_json(c: &mut Criterion) {
    let mut group = c.benchmark_group("message_json");
    let message = delivered_message();
    let json = Encoding::Json.encode(&message);
    let protobuf = Encoding::Protobuf.encode(&message);
    // Both encodings must round-trip, or the decode benches would time an error.
    assert_eq!(wire::decode::<pb::Message>(&json).expect("JSON decodes"), message);
    assert_eq!(wire::decode::<pb::Message>(&protobuf).expect("protobuf decodes"), message);

    // Per message rather than per byte: the two encodings differ in size, and the question
    // is how many messages a second each one costs.
    group.throughput(Throughput::Elements(1));
    group.bench_function("proto3_json/encode", |b| b.iter(|| Encoding::Json.encode(black_box(&message))));
    group.bench_function("proto3_json/decode", |b| b.iter(|| wire::decode::<pb::Message>(black_box(&json))));
    group.bench_function("protobuf/encode", |b| b.iter(|| Encoding::Protobuf.encode(black_box(&message))));
    group.bench_function("protobuf/decode", |b| b.iter(|| wire::decode::<pb::Message>(black_box(&protobuf))));
    group.finish();
}

/// The meta a room channel tracks a socket with.
fn presence_meta(i: usize) -> Meta {
    let mut meta = Meta::new();
    meta.insert("online_at".into(), (1_700_000_000_000_i64 + i as i64).into());
    meta.insert("node".into(), "courier-1".into());
    meta.insert("device".into(), format!("device-{}", i % 3).into());
    meta
}

/// One key (user) and one socket per index, like a room where everyone has one device.
struct Members {
    keys: Vec<String>,
    owners: Vec<ConnectionId>,
}

impl Members {
    fn new(n: usize) -> Members {
        let node = NodeId::new("courier-1");
        Members {
            keys: (0..n).map(|i| format!("user{i:05}")).collect(),
            owners: (0..n).map(|i| ConnectionId::new(node.clone(), i as u64)).collect(),
        }
    }

    /// A topic with every member tracked and the join diff already sent.
    fn topic(&self) -> TopicPresence {
        let mut topic = TopicPresence::default();
        for (i, (key, owner)) in self.keys.iter().zip(&self.owners).enumerate() {
            topic.track(key, owner, presence_meta(i)).expect("track");
        }
        topic.take_diff().expect("joins to send");
        topic
    }
}

fn bench_presence(c: &mut Criterion) {
    let mut group = c.benchmark_group("presence");

    for n in [100, 1_000] {
        let members = Members::new(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("track_window_then_diff", n), &members, |b, members| {
            b.iter_batched(
                || (0..n).map(presence_meta).collect::<Vec<Meta>>(),
                |metas| {
                    let mut topic = TopicPresence::default();
                    for ((key, owner), meta) in members.keys.iter().zip(&members.owners).zip(metas) {
                        topic.track(key, owner, meta).expect("track");
                    }
                    let diff = topic.take_diff();
                    // Returned so that freeing the topic is not timed.
                    (topic, diff)
                },
                BatchSize::LargeInput,
            )
        });
    }

    for n in [100, 10_000] {
        let members = Members::new(n);
        let mut topic = members.topic();
        let mut next = 0;
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new("update_then_diff", n), |b| {
            b.iter_batched(
                || presence_meta(n / 2),
                |meta| {
                    next = (next + 1) % n;
                    topic.update(&members.keys[next], &members.owners[next], meta).expect("update");
                    topic.take_diff()
                },
                BatchSize::SmallInput,
            )
        });

        // The encoding is cached until the next diff, so each timed snapshot follows an
        // untimed change + diff that drops the cache, as happens once per diff window.
        group.throughput(Throughput::Elements(n as u64));
        if n > 1_000 {
            group.sample_size(20);
        }
        group.bench_function(BenchmarkId::new("presence_state", n), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for i in 0..iters {
                    let k = i as usize % n;
                    topic.update(&members.keys[k], &members.owners[k], presence_meta(k)).expect("update");
                    topic.take_diff().expect("a diff to send");
                    let start = Instant::now();
                    let state = topic.snapshot();
                    timed += start.elapsed();
                    black_box(state);
                }
                timed
            })
        });
        group.sample_size(100);
    }
    group.finish();
}

/// A SQLite store in a temp dir with `users` accounts, each with a `phone` device.
struct LogDb {
    store: Store,
    users: Vec<String>,
    _dir: tempfile::TempDir,
}

/// A store on a new SQLite file in `dir`, opened as tests/storage open theirs (opening runs the
/// migrations).
fn temp_store(dir: &tempfile::TempDir) -> Store {
    let url = dir.path().join("courier-bench.db").to_string_lossy().into_owned();
    Store::open_with(&StoreOptions {
        url,
        pool_size: 2,
        connect_timeout: Duration::from_secs(10),
        busy_timeout: Duration::from_secs(10),
    })
    .expect("open bench store")
}

impl LogDb {
    fn new(rt: &tokio::runtime::Runtime, users: usize) -> LogDb {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = temp_store(&dir);
        // A cheap argon2 cost, as the storage tests use: signup speed is not measured here.
        let config = AccountsConfig { argon2_memory_kib: 64, argon2_iterations: 1, ..AccountsConfig::default() };
        let accounts = Accounts::new(store.clone(), config).expect("valid accounts config");
        let users: Vec<String> = (0..users).map(|i| format!("user{i:02}")).collect();
        rt.block_on(async {
            for name in &users {
                accounts.signup(name, "secretpassword", HashAlgorithm::Argon2id).await.expect("signup");
                accounts.register_device(name, "phone").await.expect("register device");
            }
        });
        LogDb { store, users, _dir: dir }
    }

    /// `size` new messages (never-seen ids) spread over many conversations, as a busy
    /// server's queue holds them: a batch of one sender to one receiver would touch only two
    /// logs and one conversation row.
    fn batch(&self, seq: &AtomicU64, size: usize) -> Arc<Vec<Write>> {
        let u = self.users.len() as u64;
        let writes = (0..size)
            .map(|_| {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let sender = &self.users[(n % u) as usize];
                let receiver = &self.users[((n % u + 1 + (n / u) % (u - 1)) % u) as usize];
                let message = pb::Message {
                    id: format!("bench-{n:010}"),
                    from: Some(wire::identity(sender, Some("phone"))),
                    to: Some(wire::identity(receiver, None)),
                    timestamp: 1_700_000_000_000 + n as i64,
                    payload: CHAT_BODY.to_vec(),
                    ..pb::Message::default()
                };
                // Contacts are not required, as in the default config.
                Write::Append(Append {
                    sender: sender.clone(),
                    sender_device: Some("phone".into()),
                    policy: MessagePolicy::new(false),
                    message,
                })
            })
            .collect();
        Arc::new(writes)
    }

    /// What the writer task does with a batch: one write transaction around `log::apply`.
    async fn commit(&self, writes: &Arc<Vec<Write>>) -> Vec<Result<Written, courier::messaging::MessagingError>> {
        let all = Arc::clone(writes);
        let now = SystemClock.now_millis();
        self.store.write(move |conn| log::apply(conn, &all, now)).await.expect("batch commits")
    }
}

fn bench_log_writer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let mut group = c.benchmark_group("log_writer");
    // Each iteration is a real commit with an fsync (synchronous=FULL): few, long samples.
    group.sampling_mode(SamplingMode::Flat).sample_size(10).warm_up_time(Duration::from_secs(1));
    let seq = AtomicU64::new(0);

    for size in [1, 64, 512] {
        // A fresh file per size, so one size's rows do not slow the next one's inserts.
        let db = LogDb::new(&rt, 16);
        let check = db.batch(&seq, 4);
        let results = rt.block_on(db.commit(&check));
        assert!(
            results.iter().all(|r| matches!(r, Ok(Written::Appended(a)) if !a.duplicate)),
            "a sanity batch was not stored as new messages: {results:?}"
        );

        group.throughput(Throughput::Elements(size as u64));
        group.bench_function(BenchmarkId::new("commit_batch", size), |b| {
            b.iter_batched(
                || db.batch(&seq, size),
                |writes| {
                    let results = rt.block_on(db.commit(&writes));
                    // Returned so that freeing the batch is not timed.
                    (writes, results)
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

/// The sealed body of the benchmark's `outboundMessage`: 1 KiB, a short text once sealed and
/// padded.
const SEALED_BODY_BYTES: usize = 1024;
/// One-time prekeys in the benchmark's `register`.
const REGISTER_PRE_KEYS: usize = 100;

/// The userID of a key user: the type byte, then a 32-byte public key (filler here: decoding
/// and claiming never check the key).
fn signal_user_id(fill: u8) -> Vec<u8> {
    let mut id = vec![fill; courier::keys::address::USER_ID_BYTES];
    id[0] = courier::keys::address::USER_ID_TYPE;
    id
}

/// The client envelopes the `decode` benchmarks read, each as the binary frame the endpoint
/// receives. Sizes are the protocol's: 33-byte userIDs and prekeys (type byte + curve25519
/// key), a 32-byte nonce, 64-byte signatures.
fn signal_frames() -> Vec<(&'static str, pb::signal::Message)> {
    use pb::signal as s;
    let to = s::Address { user_id: signal_user_id(0x11), device_id: 1 };
    let login =
        s::Login { address: Some(s::Address { user_id: signal_user_id(0x22), device_id: 3 }), nonce: vec![0x3c; 32] };
    let outbound = s::OutboundMessage { to: Some(to), unidentified_sender_message: vec![0xa5; SEALED_BODY_BYTES] };
    let auth = s::AuthResponse { login: prost::Message::encode_to_vec(&login), signature: vec![0x5a; 64] };
    // A signed prekey as clients upload it: the key and its 64-byte signature.
    let register = s::Register {
        registration_id: 4_242,
        signed_pre_key: [signal_user_id(0x33), vec![0x44; 64]].concat(),
        one_time_pre_keys: (0..REGISTER_PRE_KEYS).map(|i| signal_user_id(i as u8)).collect(),
    };
    let envelope = |sequence, payload| s::Message { sequence, payload: Some(payload) };
    vec![
        ("outbound_message_1k", envelope(7, SignalPayload::OutboundMessage(outbound))),
        ("auth_response", envelope(1, SignalPayload::AuthResponse(auth))),
        ("register_100_prekeys", envelope(2, SignalPayload::Register(register))),
    ]
}

/// One-time prekeys a refill registers: the endpoint's default most per `register`.
const REFILL_PRE_KEYS: usize = 1_000;

/// A key user with one registered device on a SQLite file, and the directory over it.
struct SignalDb {
    keys: Keys,
    pubsub: PubSub,
    address: Address,
    /// One-time prekeys left on file, tracked here so refills stay out of the timed claims.
    left: usize,
    refills: usize,
    _dir: tempfile::TempDir,
}

impl SignalDb {
    fn new(sys: &actix::SystemRunner) -> SignalDb {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = temp_store(&dir);
        // The registry's arbiters need the actix system; the claim publishes `prekeys_low` on it
        // once per refill, as the server does when a device runs low.
        let pubsub = PubSub::start(1, Arc::new(LocalBroker::new("courier-bench")));
        let keys = Keys::new(store, pubsub.clone(), KeysConfig::default(), Arc::new(SystemClock));
        let user = UserId::parse(&signal_user_id(0x77)).expect("a well-formed userID");
        let address = Address { user, device: 1 };
        sys.block_on(keys.signed_in(&address)).expect("the key user is made");
        let mut db = SignalDb { keys, pubsub, address, left: 0, refills: 0, _dir: dir };
        db.refill(sys);
        db
    }

    /// Appends `REFILL_PRE_KEYS` new prekeys to the device's registration (same ids: appended).
    fn refill(&mut self, sys: &actix::SystemRunner) {
        let batch = self.refills;
        self.refills += 1;
        let pre_keys = (0..REFILL_PRE_KEYS).map(|i| format!("prekey-{batch:06}-{i:04}").into_bytes()).collect();
        let on_file = sys
            .block_on(self.keys.register(&self.address, 4_242, b"signed-pre-key".to_vec(), pre_keys))
            .expect("refill");
        self.left = usize::try_from(on_file).expect("a count");
    }

    /// One `requestPreKeys` claim, as the endpoint makes it for an anonymous sender.
    fn claim(&mut self, sys: &actix::SystemRunner) -> Vec<courier::keys::Bundle> {
        let bundles = sys.block_on(self.keys.claim_bundles(&self.address.user, &[])).expect("claim");
        self.left -= 1;
        bundles
    }
}

fn bench_signal(c: &mut Criterion) {
    let mut group = c.benchmark_group("signal");
    for (name, message) in signal_frames() {
        let frame = Bytes::from(prost::Message::encode_to_vec(&message));
        // A frame that failed to decode would time the error path instead.
        let decoded: pb::signal::Message = prost::Message::decode(frame.clone()).expect("the frame decodes");
        assert_eq!(decoded, message);
        group.throughput(Throughput::Bytes(frame.len() as u64));
        // The endpoint is handed each frame as `Bytes`, so the clone is a reference count.
        group.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| <pb::signal::Message as prost::Message>::decode(black_box(frame.clone())))
        });
    }

    let sys = actix::System::new();
    let mut db = SignalDb::new(&sys);
    let bundles = db.claim(&sys);
    assert!(
        matches!(bundles.as_slice(), [b] if b.device == 1 && b.registration_id == 4_242 && b.one_time_pre_key.is_some()),
        "a sanity claim did not hand out one key: {bundles:?}"
    );
    // Each claim is a write transaction with an fsync: few, long samples, as for `log_writer`.
    group.sampling_mode(SamplingMode::Flat).sample_size(20);
    group.throughput(Throughput::Elements(1));
    group.bench_function("claim_bundles/one_device", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                if db.left == 0 {
                    db.refill(&sys);
                }
                let start = Instant::now();
                let bundles = db.claim(&sys);
                timed += start.elapsed();
                // Checked outside the timing: a claim that found no key would time less work.
                assert!(bundles.first().is_some_and(|b| b.one_time_pre_key.is_some()), "no key claimed");
            }
            timed
        })
    });
    group.finish();
    db.pubsub.stop();
}

criterion_group! {
    name = hot_paths;
    // Short windows: these are regression checks, and the whole run should stay under two minutes.
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = bench_frames, bench_message_json, bench_presence, bench_log_writer, bench_signal
}
criterion_main!(hot_paths);
