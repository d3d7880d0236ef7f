//! Property tests of the seed-002 frame decoder as the endpoint drives it
//! ([`JsonProtocolSession::handle_text`]): any text gets at least one reply and every reply is a
//! typed frame; each well-formed frame gets the reply of its own type (or the error the protocol
//! names for its state). `fuzz/` runs the same path under cargo-fuzz.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::{FRAME_TYPES, JsonProtocolSession, Outcome};
use crate::accounts::{Accounts, AccountsConfig};
use crate::store::Store;

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(128)
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    accounts: Accounts,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = dir.path().join("proptest.db").to_string_lossy().into_owned();
    let store = Store::open(&url).expect("open store");
    // Cheap hashing: the cost is not under test, the frame handling is.
    let config = AccountsConfig { argon2_memory_kib: 64, argon2_iterations: 1, ..AccountsConfig::default() };
    let accounts = Accounts::new(store, config).expect("accounts");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    Fixture { runtime, accounts, _dir: dir }
}

impl Fixture {
    /// Handles `frames` in order on one new connection, identified first if `identify`.
    fn connection(&self, identify: bool, frames: &[String]) -> Vec<(String, Outcome)> {
        self.runtime.block_on(async {
            let mut session = JsonProtocolSession::new(self.accounts.clone());
            if identify {
                let out = session.handle_frame(json!({"type": "identification", "version": "1.0.0"})).await;
                assert_eq!(out.replies[0]["resp_code"], 0);
            }
            let mut outcomes = Vec::new();
            for frame in frames {
                outcomes.push((frame.clone(), session.handle_text(frame).await));
            }
            outcomes
        })
    }
}

fn reply_type(reply: &Value) -> &str {
    reply.get("type").and_then(Value::as_str).unwrap_or_else(|| panic!("untyped reply {reply}"))
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        ".{0,16}".prop_map(Value::from),
        Just(json!([])),
        Just(json!({})),
    ]
}

/// Objects with a real frame type (or none) and fields the frames use, holding any scalar.
fn framelike() -> impl Strategy<Value = String> {
    let kind = prop_oneof![prop::sample::select(FRAME_TYPES.to_vec()).prop_map(Value::from), scalar()];
    let key = prop::sample::select(vec![
        "version",
        "client",
        "standards",
        "username",
        "password",
        "hash",
        "cipher",
        "session",
        "source",
        "dest",
        "nonce",
        "message",
        "extra",
    ]);
    (proptest::option::of(kind), prop::collection::btree_map(key, scalar(), 0..6)).prop_map(|(kind, fields)| {
        let mut m: Map<String, Value> = fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        if let Some(kind) = kind {
            m.insert("type".into(), kind);
        }
        Value::Object(m).to_string()
    })
}

/// A well-formed frame and the `type` of the first reply it must get on an identified,
/// unsubscribed connection.
fn well_formed() -> impl Strategy<Value = (Value, &'static str)> {
    let text = ".{0,24}";
    let routed = |kind: &'static str| {
        (text, text, text).prop_map(move |(session, source, dest)| {
            (json!({"type": kind, "session": session, "source": source, "dest": dest}), "error")
        })
    };
    prop_oneof![
        "1(\\.[0-9]{1,3}){0,2}".prop_map(|v| (json!({"type": "identification", "version": v}), "identification")),
        prop::sample::select(vec!["ciphers", "hashes", "ciphers,hashes", " hashes , ciphers "])
            .prop_map(|s| (json!({"type": "protocol.standard", "standards": s}), "protocol.standard")),
        ("[a-z]{3,12}", ".{8,20}")
            .prop_map(|(u, p)| (json!({"type": "signup", "username": u, "password": p}), "signup")),
        (text, text).prop_map(|(u, p)| (json!({"type": "signin", "username": u, "password": p}), "signin")),
        text.prop_map(|s| (json!({"type": "subscribe", "session": s}), "subscribe")),
        routed("invite.request"),
        routed("invite.accept"),
        routed("invite.reject"),
        (text, text, text, text).prop_map(|(session, dest, nonce, message)| {
            let frame = json!({"type": "message", "session": session, "source": "me", "dest": dest,
                               "nonce": nonce, "message": message});
            (frame, "error")
        }),
    ]
}

#[test]
fn any_text_gets_typed_replies() {
    let f = fixture();
    proptest!(config(), |(frames in prop::collection::vec(prop_oneof![any::<String>(), framelike()], 1..4), identify in any::<bool>())| {
        for (frame, outcome) in f.connection(identify, &frames) {
            prop_assert!(!outcome.replies.is_empty(), "no reply to {}", frame);
            for reply in &outcome.replies {
                reply_type(reply);
            }
            if !frame.trim_start().starts_with('{') {
                prop_assert_eq!(reply_type(&outcome.replies[0]), "error", "{}", frame);
            }
            if outcome.disconnects() {
                break;
            }
        }
    });
}

#[test]
fn well_formed_frames_get_their_own_reply() {
    let f = fixture();
    proptest!(config(), |((frame, expected) in well_formed(), extra in ".{0,8}")| {
        // Fields a frame does not use are ignored.
        let mut frame = frame;
        frame["x_unused"] = Value::from(extra);
        let text = frame.to_string();
        let outcomes = f.connection(true, std::slice::from_ref(&text));
        let reply = &outcomes[0].1.replies[0];
        prop_assert_eq!(reply_type(reply), expected, "{} -> {}", text, reply);
        if expected == "error" {
            // Routed frames on a connection that has not subscribed.
            prop_assert!(reply["reason"].as_str().is_some_and(|r| r.contains("subscribe")), "{}", reply);
        }
        if matches!(expected, "signup" | "signin") {
            prop_assert!(reply["session"].is_string(), "{}", reply);
        }
        // Before `identification`, only `identification` is answered in kind.
        let unidentified = &f.connection(false, std::slice::from_ref(&text))[0].1.replies[0];
        let before = if expected == "identification" { "identification" } else { "error" };
        prop_assert_eq!(reply_type(unidentified), before, "{}", unidentified);
    });
}
