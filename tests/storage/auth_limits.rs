//! Limits on unauthenticated work and the username comparison key, on every backend: the
//! hashing cap, rate limits, sign-in codes for short passwords, keys on new and existing
//! accounts.

use std::net::IpAddr;

use courier::accounts::{AccountError, AccountsConfig, HashAlgorithm};
use courier::store;

use crate::support::{PW, TestDb, config};

backend_tests!(
    sign_in_with_a_short_password_is_wrong_not_invalid,
    case_and_width_variants_are_one_account,
    accounts_from_before_keys_keep_signing_in,
    concurrent_hashes_never_exceed_the_slots,
    a_full_hashing_queue_is_busy,
    rate_limits_by_address_and_username,
);

fn unlimited() -> AccountsConfig {
    AccountsConfig { auth_per_address_per_min: 0, auth_per_username_per_min: 0, ..config() }
}

async fn sign_in_with_a_short_password_is_wrong_not_invalid(db: &TestDb) {
    let accounts = db.accounts(unlimited());
    accounts.signup("bob", PW, HashAlgorithm::Argon2id).await.unwrap();
    let err = accounts.signin("bob", "short").await.unwrap_err();
    assert!(matches!(err, AccountError::WrongPassword), "{err:?}");
    assert_eq!((err.resp_code().as_u8(), err.http_status()), (6, 401));
    let err = accounts.signin("nobody", "short").await.unwrap_err();
    assert!(matches!(err, AccountError::NoSuchUser), "{err:?}");
    assert_eq!((err.resp_code().as_u8(), err.http_status()), (5, 404));
    // The hashing bound still holds: an over-long password is refused without hashing.
    let err = accounts.signin("bob", &"p".repeat(1025)).await.unwrap_err();
    assert!(matches!(err, AccountError::InvalidInput { field: "password", .. }), "{err:?}");
}

async fn case_and_width_variants_are_one_account(db: &TestDb) {
    let accounts = db.accounts(unlimited());
    accounts.signup("Victim", PW, HashAlgorithm::Argon2id).await.unwrap();
    for variant in ["victim", "VICTIM", " vIcTiM ", "Ｖｉｃｔｉｍ"] {
        let err = accounts.signup(variant, PW, HashAlgorithm::Argon2id).await.unwrap_err();
        assert!(matches!(err, AccountError::UserInUse), "{variant}: {err:?}");
    }
    let err = accounts.signup("vісtim", PW, HashAlgorithm::Argon2id).await.unwrap_err();
    assert!(matches!(err, AccountError::MixedScript(_)), "{err:?}");

    let done = accounts.signin_from(None, "vICTIM", PW).await.unwrap();
    assert_eq!(done.username, "Victim", "the stored name, not the typed one");
    assert_eq!(accounts.verify_session(done.token.as_str()).await.unwrap().username, "Victim");
    assert!(matches!(accounts.signin("vісtim", PW).await, Err(AccountError::NoSuchUser)));

    // A fullwidth signup is stored in its NFKC form.
    let done = accounts.signup_from(None, "ｃａｒｏｌ", PW, HashAlgorithm::Argon2id).await.unwrap();
    assert_eq!(done.username, "carol");
    let row = db.open().run(|c| store::users::find_by_username(c, "carol")).await.unwrap().unwrap();
    assert_eq!(row.username_key.as_deref(), Some("carol"));
}

/// Accounts made before keys, two of them differing only by case: the older one takes the key,
/// both still sign in by their exact names, and nobody can sign up as a third variant.
async fn accounts_from_before_keys_keep_signing_in(db: &TestDb) {
    let accounts = db.accounts(unlimited());
    let hash =
        courier::accounts::password::hash(HashAlgorithm::Argon2id, PW, &argon2::Params::new(64, 1, 1, None).unwrap())
            .unwrap();
    let legacy = |id: &str, username: &str, created_at: i64| store::users::UserRow {
        id: id.into(),
        username: username.into(),
        password_hash: hash.clone(),
        created_at,
        username_key: None,
    };
    let rows = [legacy("id-old", "Victim", 1), legacy("id-new", "victim", 2), legacy("id-solo", "Solo", 3)];
    db.open()
        .write(move |c| {
            for row in &rows {
                store::users::insert(c, row)?;
            }
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(accounts.backfill_username_keys().await.unwrap(), (2, 1));
    assert_eq!(accounts.backfill_username_keys().await.unwrap(), (0, 1), "idempotent");

    let who = |name: &'static str| {
        let accounts = accounts.clone();
        async move { accounts.verify_session(accounts.signin(name, PW).await.unwrap().as_str()).await.unwrap().user_id }
    };
    assert_eq!(who("Victim").await, "id-old");
    assert_eq!(who("victim").await, "id-new", "an exact name wins over the key");
    assert_eq!(who("VICTIM").await, "id-old", "a variant finds the key's holder");
    assert_eq!(who("solo").await, "id-solo");
    let err = accounts.signup("VicTim", PW, HashAlgorithm::Argon2id).await.unwrap_err();
    assert!(matches!(err, AccountError::UserInUse), "{err:?}");
}

async fn concurrent_hashes_never_exceed_the_slots(db: &TestDb) {
    let accounts = db.accounts(AccountsConfig {
        max_concurrent_hashes: 2,
        max_queued_hashes: 1000,
        hash_queue_timeout_ms: 600_000,
        // Enough work per hash that 150 of them overlap.
        argon2_memory_kib: 1024,
        ..unlimited()
    });
    accounts.signup("target", PW, HashAlgorithm::Argon2id).await.unwrap();
    let tasks: Vec<_> = (0..150)
        .map(|i| {
            let accounts = accounts.clone();
            tokio::spawn(async move { accounts.signin("target", &format!("wrong password {i}")).await })
        })
        .collect();
    for task in tasks {
        let err = task.await.unwrap().unwrap_err();
        assert!(matches!(err, AccountError::WrongPassword), "{err:?}");
    }
    let stats = accounts.hashing_stats();
    assert_eq!((stats.completed, stats.refused, stats.running, stats.waiting), (151, 0, 0, 0));
    assert!(stats.peak <= 2, "{stats:?}");
}

async fn a_full_hashing_queue_is_busy(db: &TestDb) {
    let accounts = db.accounts(AccountsConfig {
        max_concurrent_hashes: 1,
        max_queued_hashes: 0,
        argon2_memory_kib: 4096,
        ..unlimited()
    });
    accounts.signup("target", PW, HashAlgorithm::Argon2id).await.unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let accounts = accounts.clone();
            tokio::spawn(async move { accounts.signin("target", &format!("wrong password {i}")).await })
        })
        .collect();
    let mut busy = 0;
    for task in tasks {
        match task.await.unwrap() {
            Err(AccountError::WrongPassword) => {}
            Err(e @ AccountError::Busy) => {
                assert_eq!((e.http_status(), e.resp_code().as_u8(), e.code()), (503, 13, "busy"));
                busy += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(busy > 0, "50 sign-ins at once against one slot and no queue");
    assert_eq!(accounts.hashing_stats().refused, busy);
    assert_eq!(accounts.hashing_stats().peak, 1);
}

async fn rate_limits_by_address_and_username(db: &TestDb) {
    let accounts = db.accounts(AccountsConfig {
        auth_per_address_per_min: 1,
        auth_per_address_burst: 3,
        auth_per_username_per_min: 1,
        auth_per_username_burst: 2,
        ..config()
    });
    let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
    accounts.signup_from(ip("192.0.2.1"), "alice", PW, HashAlgorithm::Argon2id).await.unwrap();
    accounts.signin_from(ip("192.0.2.1"), "alice", PW).await.unwrap();
    // The username's burst (2) is spent, whichever address asks and however it is spelled.
    let err = accounts.signin_from(ip("192.0.2.2"), "ALICE", PW).await.unwrap_err();
    assert!(matches!(err, AccountError::RateLimited { scope: "for this username", .. }), "{err:?}");
    assert_eq!((err.http_status(), err.resp_code().as_u8()), (429, 11));
    // The first address has 1 attempt left of its 3 (the refused one above was another's).
    accounts.signup_from(ip("192.0.2.1"), "bob", PW, HashAlgorithm::Argon2id).await.unwrap();
    let err = accounts.signup_from(ip("192.0.2.1"), "carol", PW, HashAlgorithm::Argon2id).await.unwrap_err();
    assert!(matches!(err, AccountError::RateLimited { scope: "from this address", .. }), "{err:?}");
    assert!(!accounts.user_exists("carol").await.unwrap());
    assert_eq!(accounts.rate_limit_entries(), (2, 2), "carol was refused before her name was counted");
}
