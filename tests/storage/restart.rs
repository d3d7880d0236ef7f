//! Closing and re-opening the store (a restart) keeps users, sessions, invites and queued frames.

use courier::accounts::{AccountError, HashAlgorithm};

use crate::support::{PW, TestDb, config};

backend_tests!(state_survives_reopen);

async fn state_survives_reopen(db: &TestDb) {
    let (alice_token, revoked_token) = {
        let accounts = db.accounts(config());
        let alice = accounts.signup("alice", PW, HashAlgorithm::Argon2id).await.unwrap();
        let bob = accounts.signup("bob", PW, HashAlgorithm::Argon2id).await.unwrap();
        accounts.invite_request("bob", "alice").await.unwrap();
        accounts.queue_message("alice", r#"{"type":"message","source":"bob"}"#).await.unwrap();
        accounts.register_device("alice", "phone").await.unwrap();
        accounts.signout(bob.as_str()).await.unwrap();
        (alice, bob)
        // The service and its pool are dropped here: every connection closes.
    };

    let accounts = db.accounts(config());
    assert!(accounts.user_exists("alice").await.unwrap());
    assert!(accounts.user_exists("bob").await.unwrap());
    assert_eq!(accounts.verify_session(alice_token.as_str()).await.unwrap().username, "alice");
    assert!(matches!(accounts.verify_session(revoked_token.as_str()).await, Err(AccountError::SessionRevoked)));
    accounts.signin("bob", PW).await.unwrap();
    let pending = accounts.pending_invites("alice").await.unwrap();
    assert_eq!(pending.iter().map(|p| p.from.as_str()).collect::<Vec<_>>(), ["bob"]);
    assert_eq!(accounts.take_pending("alice").await.unwrap(), [r#"{"type":"message","source":"bob"}"#]);
    assert_eq!(accounts.devices("alice").await.unwrap(), ["phone"]);
    accounts.invite_accept("alice", "bob").await.unwrap();
    assert!(accounts.are_contacts("alice", "bob").await.unwrap());
}
