//! The key directory's queries (`store::keys`) on each backend: a register appends prekeys to a
//! registration with the same keys and replaces one with other keys, claims hand out the oldest
//! prekey and count down exactly (also when many claim one device at once), an unregister takes
//! the prekeys with it but leaves the sealed messages, key users are made once, and sealed
//! messages take their offsets from the same per-user log as every other message; sign-in
//! challenges are used once, by their own user, before they expire, and purged after.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use courier::accounts::HashAlgorithm;
use courier::keys::UserId;
use courier::messaging::MessagingError;
use courier::messaging::log::{self, Written};
use courier::store::keys::{self, Claimed, Registered, RegistrationRow, SealedRow};
use courier::store::messages;
use courier::store::users::{self, UserRow};
use courier::store::{DbConnection, Store, StoreError, StoreOptions, read_transaction, write_transaction};
use diesel::RunQueryDsl;

use crate::log_writer::append;
use crate::support::{PW, T0, TestDb, config};

backend_tests!(
    register_appends_with_the_same_keys_and_replaces_with_others,
    claims_hand_out_the_oldest_key_and_count_down,
    unregister_takes_the_prekeys_but_not_the_sealed_messages,
    ensure_user_makes_a_key_user_once,
    sealed_messages_share_the_receivers_log,
    concurrent_claims_never_hand_out_a_key_twice,
    sign_in_challenges_are_used_once_by_their_own_user_until_they_expire,
);

/// The eid of the key user whose public key is `seed` repeated, as `keys::Address::eid` names it.
fn eid(seed: u8) -> String {
    let mut id = [seed; 33];
    id[0] = courier::keys::address::USER_ID_TYPE;
    UserId::parse(&id).expect("a well-formed userID").eid()
}

/// The account a first ed25519 login makes (as `Keys::signed_in` fills it in).
fn key_user_row(username: &str) -> UserRow {
    UserRow {
        id: uuid::Uuid::new_v4().to_string(),
        username: username.to_owned(),
        password_hash: String::new(),
        created_at: T0,
        username_key: None,
    }
}

fn registration(username: &str, device: i64, registration_id: i64, signed_pre_key: &[u8], at: i64) -> RegistrationRow {
    RegistrationRow {
        username: username.to_owned(),
        device_id: device,
        registration_id,
        signed_pre_key: signed_pre_key.to_vec(),
        registered_at: at,
    }
}

/// Prekeys named `{tag}{i}`, so a claimed key says which register it came from.
fn pre_keys(tag: &str, range: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    range.map(|i| format!("{tag}{i}").into_bytes()).collect()
}

/// A store with the key users `users` (made by `ensure_user`, as a first login does).
async fn with_key_users(db: &TestDb, users: &[&str]) -> Store {
    let store = db.open();
    let rows: Vec<UserRow> = users.iter().map(|u| key_user_row(u)).collect();
    store
        .write(move |conn| rows.iter().try_for_each(|row| keys::ensure_user(conn, row).map(drop)))
        .await
        .expect("make the key users");
    store
}

fn claim_key(claimed: Option<Claimed>) -> (Option<Vec<u8>>, i64) {
    let claimed = claimed.expect("the device is registered");
    (claimed.one_time_pre_key, claimed.remaining)
}

async fn register_appends_with_the_same_keys_and_replaces_with_others(db: &TestDb) {
    let user = eid(1);
    let store = with_key_users(db, &[&user]).await;
    store
        .write(move |conn| {
            let first = registration(&user, 1, 7, b"spk-a", T0);
            assert_eq!(
                keys::register(conn, &first, &pre_keys("a", 0..3))?,
                Registered { replaced: false, remaining: 3 },
                "a first registration replaces nothing"
            );
            // The same registration id and signed prekey: the new keys are added to the old.
            let again = registration(&user, 1, 7, b"spk-a", T0 + 1);
            assert_eq!(
                keys::register(conn, &again, &pre_keys("a", 3..5))?,
                Registered { replaced: false, remaining: 5 }
            );
            assert_eq!(keys::register(conn, &again, &[])?, Registered { replaced: false, remaining: 5 });
            let on_file = keys::registration(conn, &user, 1)?.expect("registered");
            assert_eq!((on_file.registration_id, on_file.signed_pre_key.as_slice()), (7, &b"spk-a"[..]));

            // Another device of the same user, which the replacements below must not touch.
            let other = registration(&user, 2, 9, b"spk-d", T0);
            assert_eq!(
                keys::register(conn, &other, &pre_keys("d", 0..2))?,
                Registered { replaced: false, remaining: 2 }
            );

            // A new registration id: the old prekeys are dropped, only the new ones remain.
            let new_id = registration(&user, 1, 8, b"spk-a", T0 + 2);
            assert_eq!(
                keys::register(conn, &new_id, &pre_keys("b", 0..1))?,
                Registered { replaced: true, remaining: 1 }
            );
            assert_eq!(keys::registration(conn, &user, 1)?, Some(new_id.clone()), "the new registration is on file");
            assert_eq!(claim_key(keys::claim(conn, &user, 1)?), (Some(b"b0".to_vec()), 0), "no old key survived");

            // A new signed prekey alone replaces too, even with no prekeys at all.
            let new_spk = registration(&user, 1, 8, b"spk-c", T0 + 3);
            assert_eq!(
                keys::register(conn, &new_spk, &pre_keys("c", 0..2))?,
                Registered { replaced: true, remaining: 2 }
            );
            let bare = registration(&user, 1, 8, b"spk-e", T0 + 4);
            assert_eq!(keys::register(conn, &bare, &[])?, Registered { replaced: true, remaining: 0 });
            assert_eq!(keys::registration(conn, &user, 1)?, Some(bare));

            assert_eq!(keys::remaining(conn, &user, 2)?, 2, "the other device kept its prekeys");
            let devices: Vec<(i64, i64)> =
                keys::registrations(conn, &user)?.iter().map(|r| (r.device_id, r.registration_id)).collect();
            assert_eq!(devices, [(1, 8), (2, 9)], "one registration per device, by device id");
            Ok::<_, StoreError>(())
        })
        .await
        .expect("store");
}

async fn claims_hand_out_the_oldest_key_and_count_down(db: &TestDb) {
    let (user, stranger) = (eid(2), eid(3));
    let store = with_key_users(db, &[&user, &stranger]).await;
    store
        .write(move |conn| {
            assert_eq!(keys::claim(conn, &user, 1)?, None, "no registration, no bundle");
            assert_eq!(keys::claim(conn, "nobody", 1)?, None);

            // Out of byte order on purpose: "oldest" is the order they were registered in.
            let row = registration(&user, 1, 11, b"spk", T0);
            let first: Vec<Vec<u8>> = ["k3", "k1", "k2"].iter().map(|k| k.as_bytes().to_vec()).collect();
            keys::register(conn, &row, &first)?;
            keys::register(conn, &row, &[b"k0".to_vec()])?;
            keys::register(conn, &registration(&user, 2, 12, b"spk-2", T0), &pre_keys("other", 0..4))?;

            let mut handed = Vec::new();
            for _ in 0..4 {
                let claimed = keys::claim(conn, &user, 1)?.expect("registered");
                assert_eq!(claimed.registration, row, "a claim returns the device's registration");
                handed.push((claimed.one_time_pre_key.expect("keys left"), claimed.remaining));
            }
            let expected: Vec<(Vec<u8>, i64)> =
                [("k3", 3), ("k1", 2), ("k2", 1), ("k0", 0)].iter().map(|(k, n)| (k.as_bytes().to_vec(), *n)).collect();
            assert_eq!(handed, expected);
            assert_eq!(keys::remaining(conn, &user, 1)?, 0);

            // Out of prekeys: still a bundle (registration and signed prekey), without a key.
            for _ in 0..2 {
                let empty = keys::claim(conn, &user, 1)?.expect("still registered");
                assert_eq!(empty, Claimed { registration: row.clone(), one_time_pre_key: None, remaining: 0 });
            }
            assert_eq!(keys::remaining(conn, &user, 2)?, 4, "claims on one device leave the others alone");
            assert_eq!(keys::claim(conn, &stranger, 2)?, None, "a device id is per user");

            // Refilled, the device hands out the new keys.
            keys::register(conn, &row, &[b"k9".to_vec()])?;
            assert_eq!(claim_key(keys::claim(conn, &user, 1)?), (Some(b"k9".to_vec()), 0));
            Ok::<_, StoreError>(())
        })
        .await
        .expect("store");
}

/// Runs one statement on either backend, as an operator's cleanup would.
fn execute(conn: &mut DbConnection, sql: &str) -> Result<usize, StoreError> {
    Ok(match conn {
        DbConnection::Sqlite(c) => diesel::sql_query(sql).execute(c)?,
        DbConnection::Pg(c) => diesel::sql_query(sql).execute(c)?,
    })
}

async fn unregister_takes_the_prekeys_but_not_the_sealed_messages(db: &TestDb) {
    let user = eid(4);
    let store = with_key_users(db, &[&user]).await;
    store
        .run(move |conn| {
            write_transaction(conn, |conn| {
                let phone = registration(&user, 1, 21, b"spk-1", T0);
                keys::register(conn, &phone, &pre_keys("p", 0..3))?;
                keys::register(conn, &registration(&user, 2, 22, b"spk-2", T0), &pre_keys("t", 0..2))?;
                assert_eq!(keys::append_sealed(conn, &user, 1, b"sealed-1", T0)?, Some(1));
                assert_eq!(keys::append_sealed(conn, &user, 1, b"sealed-2", T0)?, Some(2));

                assert!(keys::unregister(conn, &user, 1)?, "there was a registration");
                assert_eq!(keys::registration(conn, &user, 1)?, None);
                assert_eq!(keys::remaining(conn, &user, 1)?, 0, "its prekeys went with it");
                assert_eq!(keys::claim(conn, &user, 1)?, None);
                assert!(!keys::unregister(conn, &user, 1)?, "nothing left to unregister");
                assert_eq!(keys::remaining(conn, &user, 2)?, 2, "the other device is still registered");

                // An unregistered device takes no sealed messages, and no offset is spent on one.
                assert_eq!(keys::append_sealed(conn, &user, 1, b"sealed-3", T0)?, None);
                assert_eq!(keys::append_sealed(conn, &user, 2, b"sealed-4", T0)?, Some(3), "no gap in the log");

                // Registering the same keys again starts from nothing: the old prekeys are gone.
                let again = keys::register(conn, &phone, &pre_keys("q", 0..1))?;
                assert_eq!(again, Registered { replaced: false, remaining: 1 });
                assert_eq!(claim_key(keys::claim(conn, &user, 1)?), (Some(b"q0".to_vec()), 0));

                // The schema's cascade: deleting a registration row deletes its prekeys on its own.
                let sql = format!("DELETE FROM key_registrations WHERE username = '{user}' AND device_id = 2");
                assert_eq!(execute(conn, &sql)?, 1);
                assert_eq!(keys::remaining(conn, &user, 2)?, 0, "ON DELETE CASCADE took device 2's prekeys");
                Ok(())
            })?;

            let sealed = read_transaction(conn, |s| keys::sealed_in_log(s, &user, 0, 100))?;
            let kept: Vec<(i64, i64, &[u8])> =
                sealed.iter().map(|r| (r.receiver_offset, r.device_id, r.body.as_slice())).collect();
            assert_eq!(
                kept,
                [(1, 1, &b"sealed-1"[..]), (2, 1, &b"sealed-2"[..]), (3, 2, &b"sealed-4"[..])],
                "unregistering leaves the sealed messages in the log"
            );
            Ok::<_, StoreError>(())
        })
        .await
        .expect("store");
}

async fn ensure_user_makes_a_key_user_once(db: &TestDb) {
    let accounts = db.accounts(config());
    accounts.signup("alice", PW, HashAlgorithm::Argon2id).await.expect("signup");
    accounts.signup("gone", PW, HashAlgorithm::Argon2id).await.expect("signup");
    accounts.delete_user("gone").await.expect("delete");
    let store = db.open();
    let (first, second) = (eid(5), eid(6));
    store
        .write(move |conn| {
            let row = key_user_row(&first);
            assert!(keys::ensure_user(conn, &row)?, "a new key user is made");
            assert_eq!(users::find_by_username(conn, &first)?, Some(row.clone()));
            // A second first login (another id) finds the account and changes nothing.
            assert!(!keys::ensure_user(conn, &key_user_row(&first))?);
            assert_eq!(users::find_by_username(conn, &first)?, Some(row), "the first account stays");
            // Key users have no comparison key, so any number of them fit beside each other.
            assert!(keys::ensure_user(conn, &key_user_row(&second))?);

            // A password account of that name is left as it is, hash and all.
            let alice = users::find_by_username(conn, "alice")?.expect("alice signed up");
            assert!(!keys::ensure_user(conn, &key_user_row("alice"))?);
            assert_eq!(users::find_by_username(conn, "alice")?, Some(alice));
            // A deleted account's name stays taken: no new account is made under it.
            assert!(!keys::ensure_user(conn, &key_user_row("gone"))?);
            assert_eq!(users::find_by_username(conn, "gone")?, None, "still a tombstone");
            Ok::<_, StoreError>(())
        })
        .await
        .expect("store");

    // Another name whose comparison key alice holds is refused, and nothing is inserted.
    let alice_key = store
        .run(|conn| Ok(users::find_by_username(conn, "alice")?.and_then(|u| u.username_key)))
        .await
        .expect("store")
        .expect("signup gives alice a comparison key");
    let clash = UserRow { username_key: Some(alice_key), ..key_user_row("Alice") };
    let refused = store.write(move |conn| keys::ensure_user(conn, &clash)).await;
    assert!(matches!(refused, Err(StoreError::AlreadyExists)), "{refused:?}");
    let found = store.run(|conn| users::find_by_username(conn, "Alice")).await.expect("store");
    assert_eq!(found, None);
}

/// The (sender, receiver) offsets of newly stored regular messages.
fn stored_rows(results: &[Result<Written, MessagingError>]) -> Vec<(i64, i64)> {
    results
        .iter()
        .map(|r| match r {
            Ok(Written::Appended(a)) if !a.duplicate => (a.row.sender_offset, a.row.receiver_offset),
            other => panic!("expected a newly stored message, got {other:?}"),
        })
        .collect()
}

async fn sealed_messages_share_the_receivers_log(db: &TestDb) {
    let accounts = db.accounts(config());
    for user in ["ann", "ben"] {
        accounts.signup(user, PW, HashAlgorithm::Argon2id).await.expect("signup");
    }
    let carl = eid(7);
    let store = with_key_users(db, &[&carl]).await;
    let now = T0 + 5;
    store
        .run(move |conn| {
            write_transaction(conn, |conn| {
                // ben is a password account with two key devices too: one log for everything.
                keys::register(conn, &registration("ben", 1, 31, b"spk-1", T0), &[])?;
                keys::register(conn, &registration("ben", 2, 32, b"spk-2", T0), &[])?;
                keys::register(conn, &registration(&carl, 1, 33, b"spk-c", T0), &[])?;
                Ok(())
            })?;
            // One transaction per write, as the log writer's batches would interleave them.
            let regular = |conn: &mut DbConnection, from: &str, to: &str, id: &str| {
                write_transaction(conn, |c| log::apply(c, &[append(from, to, id)], now)).map(|r| stored_rows(&r))
            };
            let sealed = |conn: &mut DbConnection, to: &str, device: i64, body: &[u8]| {
                write_transaction(conn, |c| keys::append_sealed(c, to, device, body, now))
            };
            assert_eq!(regular(conn, "ann", "ben", "m1")?, [(1, 1)]);
            assert_eq!(sealed(conn, "ben", 1, b"s1")?, Some(2));
            assert_eq!(sealed(conn, "ben", 2, b"s2")?, Some(3));
            assert_eq!(regular(conn, "ann", "ben", "m2")?, [(2, 4)]);
            assert_eq!(sealed(conn, "ben", 1, b"s3")?, Some(5));
            // ben's own sent message takes the next offset of his log as well.
            assert_eq!(regular(conn, "ben", "ann", "m3")?, [(6, 3)]);
            // carl has no log row yet: his first sealed message makes it.
            assert_eq!(sealed(conn, &carl, 1, b"c1")?, Some(1));

            read_transaction(conn, |snap| {
                assert_eq!(messages::log_offsets(snap, "ben")?, [1, 4, 6], "ben's regular messages");
                assert_eq!(messages::log_state(snap, "ben")?.last_offset, 6, "one counter for both kinds");
                assert_eq!(messages::log_offsets(snap, "ann")?, [1, 2, 3], "the sealed ones were ben's only");

                let row = |offset, device_id, body: &[u8]| SealedRow {
                    receiver: "ben".into(),
                    receiver_offset: offset,
                    device_id,
                    body: body.to_vec(),
                    stored_at: now,
                };
                let all = keys::sealed_in_log(snap, "ben", 0, 100)?;
                assert_eq!(all, [row(2, 1, b"s1"), row(3, 2, b"s2"), row(5, 1, b"s3")], "every device, by offset");
                let offsets = |rows: Vec<SealedRow>| rows.iter().map(|r| r.receiver_offset).collect::<Vec<_>>();
                assert_eq!(offsets(keys::sealed_in_log(snap, "ben", 2, 100)?), [3, 5]);
                assert_eq!(offsets(keys::sealed_in_log(snap, "ben", 0, 1)?), [2], "the limit keeps the oldest");
                assert!(keys::sealed_in_log(snap, "ann", 0, 100)?.is_empty(), "none for ann");
                assert_eq!(offsets(keys::sealed_in_log(snap, &carl, 0, 100)?), [1]);

                let for_one = keys::sealed_after(snap, "ben", 1, 0, 100)?;
                assert_eq!(for_one, [(2, b"s1".to_vec()), (5, b"s3".to_vec())], "device 1's, in offset order");
                assert_eq!(keys::sealed_after(snap, "ben", 2, 0, 100)?, [(3, b"s2".to_vec())], "device 2's only");
                assert_eq!(keys::sealed_after(snap, "ben", 1, 2, 100)?, [(5, b"s3".to_vec())]);
                assert_eq!(keys::sealed_after(snap, "ben", 1, 0, 1)?, [(2, b"s1".to_vec())]);
                assert!(keys::sealed_after(snap, "ben", 3, 0, 100)?.is_empty(), "no device 3");
                Ok(())
            })
        })
        .await
        .expect("store");
}

/// Claimers, and claims each makes one after another.
const CLAIMERS: usize = 8;
const CLAIMS_EACH: usize = 25;

async fn concurrent_claims_never_hand_out_a_key_twice(db: &TestDb) {
    // Enough connections for every claimer to hold one: the claims really overlap.
    let options = StoreOptions { pool_size: CLAIMERS as u32, connect_timeout: Duration::from_secs(30), ..db.options() };
    let store = Store::open_with(&options).expect("open");
    let claims = CLAIMERS * CLAIMS_EACH;
    // Fewer keys than claims (some claims find none), and more (some keys are left).
    for (seed, on_file) in [(8u8, claims - 50), (9u8, claims + 50)] {
        let user = eid(seed);
        let (row, name) = (key_user_row(&user), user.clone());
        let registered = store
            .write(move |conn| {
                keys::ensure_user(conn, &row)?;
                keys::register(conn, &registration(&name, 1, 41, b"spk", T0), &pre_keys("key-", 0..on_file))
            })
            .await
            .expect("register");
        assert_eq!(registered.remaining, i64::try_from(on_file).expect("small"));

        let claimers: Vec<_> = (0..CLAIMERS)
            .map(|_| {
                let (store, user) = (store.clone(), user.clone());
                tokio::spawn(async move {
                    let mut got = Vec::with_capacity(CLAIMS_EACH);
                    for _ in 0..CLAIMS_EACH {
                        let user = user.clone();
                        got.push(store.write(move |conn| keys::claim(conn, &user, 1)).await?);
                    }
                    Ok::<_, StoreError>(got)
                })
            })
            .collect();
        let mut handed = Vec::new();
        let mut remaining_after = Vec::new();
        for claimer in claimers {
            let got = claimer.await.expect("claimer task").expect("every claim commits");
            let mut last_index = None;
            for claimed in got {
                let (key, remaining) = claim_key(claimed);
                let Some(key) = key else {
                    assert_eq!(remaining, 0, "a claim that found no key found none left");
                    continue;
                };
                let index: usize = std::str::from_utf8(&key)
                    .ok()
                    .and_then(|k| k.strip_prefix("key-"))
                    .and_then(|i| i.parse().ok())
                    .unwrap_or_else(|| panic!("a key that was never registered: {key:?}"));
                // One claimer's claims are serial, and each takes the oldest key left.
                assert!(last_index < Some(index), "key {index} after key {last_index:?} in one claimer");
                last_index = Some(index);
                handed.push(index);
                remaining_after.push(remaining);
            }
        }
        let expected = on_file.min(claims);
        let distinct: HashSet<usize> = handed.iter().copied().collect();
        assert_eq!(distinct.len(), handed.len(), "no key handed out twice");
        assert_eq!(handed.len(), expected, "{on_file} keys, {claims} claims");
        // The oldest keys went first, and every claim read its own exact count afterwards.
        assert_eq!(distinct, (0..expected).collect::<HashSet<usize>>());
        let counts: BTreeSet<i64> = remaining_after.iter().copied().collect();
        assert_eq!(counts.len(), remaining_after.len(), "each count seen once");
        let first_count = i64::try_from(on_file).expect("small") - 1;
        let last_count = i64::try_from(on_file - expected).expect("small");
        assert_eq!(counts, (last_count..=first_count).collect::<BTreeSet<i64>>());
        let left = store.run(move |conn| keys::remaining(conn, &user, 1)).await.expect("store");
        assert_eq!(left, last_count, "what is left on file");
    }
}

async fn sign_in_challenges_are_used_once_by_their_own_user_until_they_expire(db: &TestDb) {
    let store = db.open();
    let (bob, carol) = (eid(7), eid(8));
    let taken = store
        .write(move |conn| {
            keys::put_challenge(conn, &bob, b"nonce-1", T0 + 60_000)?;
            keys::put_challenge(conn, &bob, b"nonce-2", T0 + 60_000)?;
            keys::put_challenge(conn, &bob, b"stale", T0 + 10)?;
            Ok([
                keys::take_challenge(conn, &carol, b"nonce-1", T0)?, // another user's nonce
                keys::take_challenge(conn, &bob, b"nonce-1", T0)?,   // its own: once ...
                keys::take_challenge(conn, &bob, b"nonce-1", T0)?,   // ... and no more
                keys::take_challenge(conn, &bob, b"stale", T0 + 10)?, // expired at its deadline
                keys::take_challenge(conn, &bob, b"never", T0)?,
            ])
        })
        .await
        .expect("challenges");
    assert_eq!(taken, [false, true, false, false, false]);
    // nonce-2 is live, "stale" expired (a failed take leaves it for the purge).
    let purged = store.write(|conn| keys::purge_challenges(conn, T0 + 30_000)).await.expect("purge");
    assert_eq!(purged, 1);
    let bob = eid(7);
    let left = store.write(move |conn| keys::take_challenge(conn, &bob, b"nonce-2", T0 + 30_000)).await.expect("take");
    assert!(left, "a purge keeps live challenges");
}
