//! Seed 002's JSON account-protocol frames (`GET /json/websocket`), through the real session
//! state machine over a SQLite store. The input is a connection: frames separated by newlines.
#![no_main]

use std::sync::OnceLock;

use courier::accounts::{Accounts, AccountsConfig, JsonProtocolSession};
use courier::store::Store;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Frames handled per input, so one input cannot run for long.
const MAX_FRAMES: usize = 8;

struct World {
    runtime: tokio::runtime::Runtime,
    accounts: Accounts,
    _dir: tempfile::TempDir,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        // On tmpfs when there is one: signups commit, and disk syncs would set the pace.
        let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).expect("tempdir");
        let url = dir.path().join("fuzz.db").to_string_lossy().into_owned();
        let store = Store::open(&url).expect("open store");
        let config = AccountsConfig {
            // Cheap hashing: the cost is not under test, the frame handling is.
            argon2_memory_kib: 64,
            argon2_iterations: 1,
            argon2_parallelism: 1,
            allow_sha256: true,
            ..AccountsConfig::default()
        };
        let accounts = Accounts::new(store, config).expect("accounts");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        World { runtime, accounts, _dir: dir }
    })
}

fuzz_target!(|data: &[u8]| {
    // The WebSocket layer only hands valid UTF-8 text frames to the session.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let world = world();
    world.runtime.block_on(async {
        let mut session = JsonProtocolSession::new(world.accounts.clone());
        for frame in text.split('\n').take(MAX_FRAMES) {
            let outcome = session.handle_text(frame).await;
            // Every frame is answered, and every answer is a typed frame.
            assert!(!outcome.replies.is_empty(), "no reply to {frame:?}");
            for reply in &outcome.replies {
                assert!(reply.get("type").is_some_and(Value::is_string), "untyped reply {reply} to {frame:?}");
            }
            if outcome.disconnects() {
                break;
            }
        }
    });
});
