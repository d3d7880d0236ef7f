//! Signup, signin, sessions, devices, validation and the offline queue, on every backend.

use std::time::Duration;

use courier::accounts::{AccountError, AccountsConfig, HashAlgorithm, RespCode};
use courier::clock::ManualClock;
use courier::store;
use sha2::Digest;

use crate::support::{PW, T0, TestDb, config};

backend_tests!(
    signup_then_verify,
    signup_user_in_use,
    signup_sha256_refused_when_disabled,
    signup_sha256_allowed_when_enabled,
    signin_codes,
    verify_good_expired_revoked_garbage,
    tokens_are_stored_only_as_digests,
    sql_looking_input_is_data,
    over_long_and_short_fields,
    devices_register_and_bind,
    concurrent_signups_pick_one_winner,
    pending_queue_in_order_and_bounded,
    purge_removes_ended_sessions,
    deleting_a_user_leaves_a_tombstone_and_ends_its_sessions,
);

async fn signup_then_verify(db: &TestDb) {
    let clock = ManualClock::new(T0);
    let accounts = db.accounts_at(config(), &clock);
    let token = accounts.signup("john doe", PW, HashAlgorithm::Argon2id).await.unwrap();
    let info = accounts.verify_session(token.as_str()).await.unwrap();
    assert_eq!(info.username, "john doe");
    assert!(!info.user_id.is_empty());
    assert_eq!(info.device_id, None);
    assert_eq!(info.expires_at, T0 + config().session_ttl_millis());
    assert!(accounts.user_exists("john doe").await.unwrap());
    assert!(accounts.user_exists("  john doe ").await.unwrap());
    assert!(!accounts.user_exists("jane").await.unwrap());

    let hash = accounts_hash(db, "john doe").await;
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains(PW));
}

async fn accounts_hash(db: &TestDb, name: &'static str) -> String {
    db.open().run(move |c| store::users::find_by_username(c, name)).await.unwrap().expect("user row").password_hash
}

async fn signup_user_in_use(db: &TestDb) {
    let accounts = db.accounts(config());
    accounts.signup("alice", PW, HashAlgorithm::Argon2id).await.unwrap();
    let err = accounts.signup("alice", "anotherpassword", HashAlgorithm::Argon2id).await.unwrap_err();
    assert!(matches!(err, AccountError::UserInUse), "{err:?}");
    assert_eq!(err.resp_code(), RespCode::UserInUse);
    assert_eq!(err.http_status(), 409);
    // Names are trimmed, so padding does not make a second account.
    let err = accounts.signup(" alice  ", PW, HashAlgorithm::Argon2id).await.unwrap_err();
    assert!(matches!(err, AccountError::UserInUse), "{err:?}");
}

async fn signup_sha256_refused_when_disabled(db: &TestDb) {
    let accounts = db.accounts(config());
    let err = accounts.signup("john doe", PW, HashAlgorithm::Sha256).await.unwrap_err();
    assert!(matches!(err, AccountError::HashNotAvailable(ref h) if h == "sha256"), "{err:?}");
    assert_eq!(err.resp_code().as_u8(), 3);
    assert!(!accounts.user_exists("john doe").await.unwrap(), "a refused signup must not create the user");
}

async fn signup_sha256_allowed_when_enabled(db: &TestDb) {
    let accounts = db.accounts(AccountsConfig { allow_sha256: true, ..config() });
    let token = accounts.signup("john doe", PW, HashAlgorithm::Sha256).await.unwrap();
    assert!(accounts.verify_session(token.as_str()).await.is_ok());
    let hash = accounts_hash(db, "john doe").await;
    assert!(hash.starts_with("$sha256$"), "{hash}");
    accounts.signin("john doe", PW).await.unwrap();
    let err = accounts.signin("john doe", "secretpassworx").await.unwrap_err();
    assert!(matches!(err, AccountError::WrongPassword), "{err:?}");
}

async fn signin_codes(db: &TestDb) {
    let accounts = db.accounts(config());
    let first = accounts.signup("bob", PW, HashAlgorithm::Argon2id).await.unwrap();
    let second = accounts.signin("bob", PW).await.unwrap();
    assert_ne!(first, second, "each signin issues a new session");
    assert_eq!(accounts.verify_session(second.as_str()).await.unwrap().username, "bob");

    let err = accounts.signin("nobody", PW).await.unwrap_err();
    assert!(matches!(err, AccountError::NoSuchUser), "{err:?}");
    assert_eq!((err.resp_code().as_u8(), err.http_status()), (5, 404));

    let err = accounts.signin("bob", "wrongpassword").await.unwrap_err();
    assert!(matches!(err, AccountError::WrongPassword), "{err:?}");
    assert_eq!((err.resp_code().as_u8(), err.http_status()), (6, 401));
}

async fn verify_good_expired_revoked_garbage(db: &TestDb) {
    let clock = ManualClock::new(T0);
    let accounts = db.accounts_at(AccountsConfig { session_ttl_secs: 1, ..config() }, &clock);
    let expiring = accounts.signup("carol", PW, HashAlgorithm::Argon2id).await.unwrap();
    assert!(accounts.verify_session(expiring.as_str()).await.is_ok());

    clock.advance(Duration::from_millis(999));
    assert!(accounts.verify_session(expiring.as_str()).await.is_ok(), "still inside the TTL");
    clock.advance(Duration::from_millis(1));
    let err = accounts.verify_session(expiring.as_str()).await.unwrap_err();
    assert!(matches!(err, AccountError::SessionExpired), "{err:?}");

    let revoked = accounts.signin("carol", PW).await.unwrap();
    accounts.signout(revoked.as_str()).await.unwrap();
    let err = accounts.verify_session(revoked.as_str()).await.unwrap_err();
    assert!(matches!(err, AccountError::SessionRevoked), "{err:?}");
    let err = accounts.signout(revoked.as_str()).await.unwrap_err();
    assert!(matches!(err, AccountError::SessionRevoked), "{err:?}");

    let long = "x".repeat(10_000);
    for garbage in ["", "not-a-token", "31dccf07-a1be-432a-af62-d5eabea2e71b", long.as_str()] {
        let err = accounts.verify_session(garbage).await.unwrap_err();
        assert!(matches!(err, AccountError::BadToken), "{garbage:.20}: {err:?}");
        assert_eq!(err.resp_code().as_u8(), 1);
    }
    assert!(matches!(accounts.signout("not-a-token").await, Err(AccountError::BadToken)));
}

async fn tokens_are_stored_only_as_digests(db: &TestDb) {
    let accounts = db.accounts(config());
    let token = accounts.signup("dave", PW, HashAlgorithm::Argon2id).await.unwrap();
    let store = db.open();
    let raw = token.as_str().as_bytes().to_vec();
    let digest = sha2::Sha256::digest(token.as_str().as_bytes()).to_vec();
    let (by_raw, by_digest) =
        store.run(move |c| Ok((store::sessions::find(c, &raw)?, store::sessions::find(c, &digest)?))).await.unwrap();
    assert!(by_raw.is_none(), "the token itself must not be a key");
    let (row, username) = by_digest.expect("session stored under its SHA-256");
    assert_eq!(username, "dave");
    assert_eq!(row.token_hash.len(), 32);
}

async fn sql_looking_input_is_data(db: &TestDb) {
    let accounts = db.accounts(config());
    accounts.signup("victim", PW, HashAlgorithm::Argon2id).await.unwrap();

    // Quote and semicolon break the username rules, so this one is refused outright...
    let err = accounts.signup("'; DROP TABLE users; --", PW, HashAlgorithm::Argon2id).await.unwrap_err();
    assert!(matches!(err, AccountError::InvalidInput { field: "username", .. }), "{err:?}");
    // ...while these pass the rules and must be stored verbatim as plain data.
    let sneaky_name = "DROP TABLE users --";
    let sneaky_password = "'); DROP TABLE sessions; --";
    accounts.signup(sneaky_name, sneaky_password, HashAlgorithm::Argon2id).await.unwrap();
    accounts.signin(sneaky_name, sneaky_password).await.unwrap();
    assert!(accounts.user_exists("victim").await.unwrap());
    assert!(!accounts.user_exists("'; DROP TABLE users; --").await.unwrap());

    let store = db.open();
    let (count, row) = store
        .run(move |c| Ok((store::users::count(c)?, store::users::find_by_username(c, sneaky_name)?)))
        .await
        .unwrap();
    assert_eq!(count, 2, "both tables survive and hold exactly the two accounts");
    assert_eq!(row.map(|r| r.username).as_deref(), Some(sneaky_name));
    accounts.signin("victim", PW).await.unwrap();
}

async fn over_long_and_short_fields(db: &TestDb) {
    let accounts = db.accounts(config());
    let invalid = |r: Result<_, AccountError>, field: &str| match r {
        Err(AccountError::InvalidInput { field: f, .. }) if f == field => {}
        other => panic!("expected invalid {field}, got {other:?}"),
    };
    invalid(accounts.signup(&"a".repeat(65), PW, HashAlgorithm::Argon2id).await.map(|_| ()), "username");
    invalid(accounts.signup("", PW, HashAlgorithm::Argon2id).await.map(|_| ()), "username");
    invalid(accounts.signup("tab\tname", PW, HashAlgorithm::Argon2id).await.map(|_| ()), "username");
    invalid(accounts.signup("erin", "1234567", HashAlgorithm::Argon2id).await.map(|_| ()), "password");
    invalid(accounts.signup("erin", &"p".repeat(1025), HashAlgorithm::Argon2id).await.map(|_| ()), "password");
    invalid(accounts.signin(&"a".repeat(65), PW).await.map(|_| ()), "username");
    assert!(!accounts.user_exists("erin").await.unwrap());

    // The limits themselves are allowed.
    accounts.signup(&"a".repeat(64), &"p".repeat(1024), HashAlgorithm::Argon2id).await.unwrap();
    accounts.signup("erin", "12345678", HashAlgorithm::Argon2id).await.unwrap();
    invalid(accounts.register_device("erin", &"d".repeat(129)).await, "device");
    let err = AccountError::invalid("username", "x");
    assert_eq!((err.resp_code().as_u8(), err.http_status()), (7, 400));
}

async fn devices_register_and_bind(db: &TestDb) {
    let accounts = db.accounts(config());
    let token = accounts.signup("frank", PW, HashAlgorithm::Argon2id).await.unwrap();
    accounts.register_device("frank", "laptop").await.unwrap();
    accounts.register_device("frank", "laptop").await.unwrap();
    let info = accounts.bind_device(token.as_str(), "phone").await.unwrap();
    assert_eq!(info.device_id.as_deref(), Some("phone"));
    assert_eq!(accounts.verify_session(token.as_str()).await.unwrap().device_id.as_deref(), Some("phone"));
    let mut devices = accounts.devices("frank").await.unwrap();
    devices.sort();
    assert_eq!(devices, ["laptop", "phone"], "registering twice keeps one row");
    assert!(matches!(accounts.register_device("ghost", "laptop").await, Err(AccountError::NoSuchUser)));
    assert!(matches!(accounts.bind_device("bogus", "phone").await, Err(AccountError::BadToken)));
}

async fn concurrent_signups_pick_one_winner(db: &TestDb) {
    let accounts = db.accounts(config());
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let accounts = accounts.clone();
            tokio::spawn(async move { accounts.signup("race", PW, HashAlgorithm::Argon2id).await })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(_) => ok += 1,
            Err(AccountError::UserInUse) => {}
            Err(other) => panic!("unexpected error: {other:?}"),
        }
    }
    assert_eq!(ok, 1);
}

async fn pending_queue_in_order_and_bounded(db: &TestDb) {
    let accounts = db.accounts(AccountsConfig { max_pending_messages: 3, ..config() });
    accounts.signup("gina", PW, HashAlgorithm::Argon2id).await.unwrap();
    for i in 0..3 {
        accounts.queue_message("gina", &format!(r#"{{"n":{i}}}"#)).await.unwrap();
    }
    let err = accounts.queue_message("gina", r#"{"n":3}"#).await.unwrap_err();
    assert!(matches!(err, AccountError::QueueFull), "{err:?}");
    assert_eq!(accounts.take_pending("gina").await.unwrap(), [r#"{"n":0}"#, r#"{"n":1}"#, r#"{"n":2}"#]);
    assert!(accounts.take_pending("gina").await.unwrap().is_empty(), "taken means gone");
    accounts.queue_message("gina", r#"{"n":4}"#).await.unwrap();
    assert_eq!(accounts.take_pending("gina").await.unwrap(), [r#"{"n":4}"#]);
    assert!(matches!(accounts.queue_message("ghost", "{}").await, Err(AccountError::NoSuchUser)));
}

async fn purge_removes_ended_sessions(db: &TestDb) {
    let clock = ManualClock::new(T0);
    let accounts = db.accounts_at(AccountsConfig { session_ttl_secs: 60, ..config() }, &clock);
    let old = accounts.signup("hank", PW, HashAlgorithm::Argon2id).await.unwrap();
    let revoked = accounts.signin("hank", PW).await.unwrap();
    accounts.signout(revoked.as_str()).await.unwrap();
    clock.advance(Duration::from_secs(61));
    let live = accounts.signin("hank", PW).await.unwrap();
    assert_eq!(accounts.purge_sessions(0).await.unwrap(), 2);
    assert!(matches!(accounts.verify_session(old.as_str()).await, Err(AccountError::BadToken)));
    assert!(accounts.verify_session(live.as_str()).await.is_ok());
}

async fn deleting_a_user_leaves_a_tombstone_and_ends_its_sessions(db: &TestDb) {
    let accounts = db.accounts(config());
    let token = accounts.signup("mallory", PW, HashAlgorithm::Argon2id).await.unwrap();
    let second = accounts.signin("mallory", PW).await.unwrap();
    accounts.signup("trent", PW, HashAlgorithm::Argon2id).await.unwrap();
    accounts.register_device("mallory", "phone").await.unwrap();
    accounts.invite_request("mallory", "trent").await.unwrap();
    accounts.invite_accept("trent", "mallory").await.unwrap();
    accounts.signup("peggy", PW, HashAlgorithm::Argon2id).await.unwrap();
    accounts.signup("victor", PW, HashAlgorithm::Argon2id).await.unwrap();
    accounts.invite_request("peggy", "mallory").await.unwrap();
    accounts.invite_request("mallory", "victor").await.unwrap();
    accounts.queue_message("mallory", "{}").await.unwrap();
    let info = accounts.verify_session(token.as_str()).await.unwrap();
    assert!(accounts.session_live(&info.digest).await);
    let before = db.open().run(store::users::count).await.unwrap();

    assert_eq!(accounts.delete_user("mallory").await.unwrap(), 2, "both live sessions revoked");
    assert!(!accounts.session_live(&info.digest).await, "a deleted user's session is not live");
    for t in [&token, &second] {
        assert!(accounts.verify_session(t.as_str()).await.is_err());
    }
    assert!(!accounts.user_exists("mallory").await.unwrap());
    assert!(matches!(accounts.signin("mallory", PW).await, Err(AccountError::NoSuchUser)));
    // The name and its key stay taken.
    for name in ["mallory", "MALLORY"] {
        let err = accounts.signup(name, PW, HashAlgorithm::Argon2id).await.unwrap_err();
        assert!(matches!(err, AccountError::UserInUse), "{name}: {err:?}");
    }
    assert!(!accounts.are_contacts("trent", "mallory").await.unwrap_or(false));
    assert!(accounts.contacts("trent").await.unwrap().is_empty(), "contacts go both ways");
    assert!(accounts.pending_invites("victor").await.unwrap().is_empty(), "invites from the deleted user go");
    assert!(matches!(accounts.devices("mallory").await, Err(AccountError::NoSuchUser)));
    assert!(matches!(accounts.delete_user("mallory").await, Err(AccountError::NoSuchUser)), "deleted once");
    assert_eq!(db.open().run(store::users::count).await.unwrap(), before - 1);
    let tombstones = count_rows(
        db,
        "SELECT COUNT(*) AS n FROM users WHERE username = 'mallory' AND password_hash = '' AND deleted_at IS NOT NULL",
    )
    .await;
    let invites_to_her = count_rows(
        db,
        "SELECT COUNT(*) AS n FROM invites WHERE to_user IN (SELECT id FROM users WHERE username = 'mallory')",
    )
    .await;
    assert_eq!(invites_to_her, 0, "invites to the deleted user go");
    let wiped = tombstones;
    assert_eq!(wiped, 1, "the tombstone keeps the name and wipes the password hash");
}

/// The single `n` a `SELECT COUNT(*) AS n ...` returns, on either backend.
async fn count_rows(db: &TestDb, sql: &'static str) -> i64 {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let found = db
        .open()
        .run(move |c| match c {
            store::DbConnection::Sqlite(c) => Ok(diesel::sql_query(sql).get_result::<Count>(c)?),
            store::DbConnection::Pg(c) => Ok(diesel::sql_query(sql).get_result::<Count>(c)?),
        })
        .await
        .unwrap();
    found.n
}
