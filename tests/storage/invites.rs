//! Invites and contacts on every backend.

use courier::accounts::{AccountError, Accounts, AccountsConfig, HashAlgorithm};
use courier::clock::ManualClock;

use crate::support::{PW, T0, TestDb, config};

backend_tests!(
    request_then_accept_makes_contacts,
    reject_does_not_make_contacts,
    invite_errors,
    pending_invites_are_marked_delivered,
    messages_need_contacts_when_required,
);

async fn users(accounts: &Accounts, names: &[&str]) {
    for name in names {
        accounts.signup(name, PW, HashAlgorithm::Argon2id).await.unwrap();
    }
}

async fn request_then_accept_makes_contacts(db: &TestDb) {
    let accounts = db.accounts(config());
    users(&accounts, &["alice", "bob", "carol"]).await;
    accounts.invite_request("bob", "alice").await.unwrap();
    assert!(!accounts.are_contacts("alice", "bob").await.unwrap(), "a request alone is not a contact");
    accounts.invite_accept("alice", "bob").await.unwrap();
    assert!(accounts.are_contacts("alice", "bob").await.unwrap());
    assert!(accounts.are_contacts("bob", "alice").await.unwrap(), "contacts are symmetric");
    assert!(!accounts.are_contacts("alice", "carol").await.unwrap());
    assert_eq!(accounts.contacts("bob").await.unwrap(), ["alice"]);
    assert_eq!(accounts.contacts("alice").await.unwrap(), ["bob"]);
    assert!(accounts.contacts("carol").await.unwrap().is_empty());
    assert!(accounts.pending_invites("alice").await.unwrap().is_empty(), "an answered invite is not pending");
}

async fn reject_does_not_make_contacts(db: &TestDb) {
    let accounts = db.accounts(config());
    users(&accounts, &["alice", "bob"]).await;
    accounts.invite_request("bob", "alice").await.unwrap();
    accounts.invite_reject("alice", "bob").await.unwrap();
    assert!(!accounts.are_contacts("alice", "bob").await.unwrap());
    assert!(accounts.contacts("alice").await.unwrap().is_empty());
    assert!(accounts.pending_invites("alice").await.unwrap().is_empty());
    // Asking again re-opens the request, and it can then be accepted.
    accounts.invite_request("bob", "alice").await.unwrap();
    let pending = accounts.pending_invites("alice").await.unwrap();
    assert_eq!(pending.iter().map(|p| p.from.as_str()).collect::<Vec<_>>(), ["bob"]);
    accounts.invite_accept("alice", "bob").await.unwrap();
    assert!(accounts.are_contacts("bob", "alice").await.unwrap());
}

async fn invite_errors(db: &TestDb) {
    let accounts = db.accounts(config());
    users(&accounts, &["alice", "bob"]).await;
    let err = accounts.invite_request("bob", "bob").await.unwrap_err();
    assert!(matches!(err, AccountError::InvalidInput { field: "dest", .. }), "{err:?}");
    let err = accounts.invite_request("bob", "nobody").await.unwrap_err();
    assert!(matches!(err, AccountError::NoSuchUser), "{err:?}");
    let err = accounts.invite_accept("alice", "bob").await.unwrap_err();
    assert!(matches!(err, AccountError::NoSuchInvite), "{err:?}");
    assert_eq!(err.http_status(), 404);
    // The invite goes bob → alice, so bob cannot accept it on alice's behalf.
    accounts.invite_request("bob", "alice").await.unwrap();
    let err = accounts.invite_accept("bob", "alice").await.unwrap_err();
    assert!(matches!(err, AccountError::NoSuchInvite), "{err:?}");
    accounts.invite_accept("alice", "bob").await.unwrap();
    let err = accounts.invite_request("alice", "bob").await.unwrap_err();
    assert!(matches!(err, AccountError::AlreadyContacts), "{err:?}");
    let err = accounts.invite_reject("alice", "bob").await.unwrap_err();
    assert!(matches!(err, AccountError::NoSuchInvite), "{err:?}");
}

async fn pending_invites_are_marked_delivered(db: &TestDb) {
    let clock = ManualClock::new(T0);
    let accounts = db.accounts_at(config(), &clock);
    users(&accounts, &["alice", "bob", "carol"]).await;
    accounts.invite_request("bob", "alice").await.unwrap();
    clock.advance(std::time::Duration::from_secs(1));
    accounts.invite_request("carol", "alice").await.unwrap();

    let first = accounts.pending_invites("alice").await.unwrap();
    assert_eq!(first.iter().map(|p| p.from.as_str()).collect::<Vec<_>>(), ["bob", "carol"]);
    assert_eq!(first[0].created_at, T0);
    assert!(first.iter().all(|p| p.previously_delivered_at.is_none()));

    clock.advance(std::time::Duration::from_secs(1));
    let second = accounts.pending_invites("alice").await.unwrap();
    assert_eq!(second.len(), 2, "unanswered invites are offered again");
    assert!(second.iter().all(|p| p.previously_delivered_at == Some(T0 + 1000)));
    assert!(accounts.pending_invites("bob").await.unwrap().is_empty());
}

async fn messages_need_contacts_when_required(db: &TestDb) {
    let accounts = db.accounts(config());
    users(&accounts, &["alice", "bob"]).await;
    let err = accounts.authorize_message("alice", "bob").await.unwrap_err();
    assert!(matches!(err, AccountError::NotContacts), "{err:?}");
    let err = accounts.authorize_message("alice", "nobody").await.unwrap_err();
    assert!(matches!(err, AccountError::NoSuchUser), "{err:?}");
    accounts.invite_request("alice", "bob").await.unwrap();
    accounts.invite_accept("bob", "alice").await.unwrap();
    accounts.authorize_message("alice", "bob").await.unwrap();
    accounts.authorize_message("bob", "alice").await.unwrap();

    let open = db.accounts(AccountsConfig { require_contacts: false, ..config() });
    open.signup("carol", PW, HashAlgorithm::Argon2id).await.unwrap();
    open.authorize_message("carol", "alice").await.unwrap();
}
