//! Snapshot reads (`Store::read`): every query of one read sees the database at one moment,
//! whatever commits meanwhile, and a read cannot be nested in another transaction.

use courier::accounts::HashAlgorithm;
use courier::messaging::log;
use courier::store::messages;
use courier::store::{StoreError, read_transaction, write_transaction};

use crate::log_writer::append;
use crate::support::{PW, T0, TestDb, config};

backend_tests!(a_snapshot_does_not_see_what_commits_after_its_first_read, a_snapshot_does_not_nest);

async fn a_snapshot_does_not_see_what_commits_after_its_first_read(db: &TestDb) {
    let accounts = db.accounts(config());
    for user in ["alice", "bob"] {
        accounts.signup(user, PW, HashAlgorithm::Argon2id).await.expect("signup");
    }
    let store = db.open();
    store.write(|c| log::apply(c, &[append("alice", "bob", "m1")], T0)).await.expect("first message");
    let writer = db.open();
    let runtime = tokio::runtime::Handle::current();
    let seen = store
        .read(move |snap| {
            let before = messages::log_state(snap, "alice")?.last_offset;
            // Both directions commit between this read's statements, as under load.
            let writes = [append("bob", "alice", "m2"), append("alice", "bob", "m3")];
            runtime.block_on(writer.write(move |c| log::apply(c, &writes, T0))).expect("a concurrent commit");
            let page = messages::log_after(snap, "alice", 0, 100, i64::MAX)?;
            let history = messages::history(snap, "alice", "bob", None, 100, i64::MAX)?;
            let conversation = messages::conversations_of(snap, "alice", &["bob"])?;
            Ok((before, page, history, conversation))
        })
        .await
        .expect("the read");
    let (before, page, history, conversation) = seen;
    assert_eq!(before, 1);
    assert_eq!(page.iter().map(|(o, _)| *o).collect::<Vec<_>>(), [1], "the page is of the snapshot's moment");
    assert_eq!(history.len(), 1);
    assert_eq!(conversation.iter().map(|c| c.last_user_offset).collect::<Vec<_>>(), [1]);

    let now = store.read(|snap| messages::log_after(snap, "alice", 0, 100, i64::MAX)).await.expect("read");
    assert_eq!(now.iter().map(|(o, _)| *o).collect::<Vec<_>>(), [1, 2, 3], "a new read sees the commit");
    // The content budget keeps the first row whatever its size, then stops before the total passes it.
    let one = store.read(|snap| messages::log_after(snap, "alice", 0, 100, 1)).await.expect("read");
    assert_eq!(one.len(), 1);
    let newest = store.read(|snap| messages::history(snap, "alice", "bob", None, 2, i64::MAX)).await.expect("read");
    assert_eq!(newest.iter().map(|m| m.user_offset).collect::<Vec<_>>(), [3, 2]);
}

async fn a_snapshot_does_not_nest(db: &TestDb) {
    let store = db.open();
    let nested = store
        .run(|conn| write_transaction(conn, |c| read_transaction(c, |snap| messages::log_state(snap, "alice"))))
        .await;
    assert!(matches!(nested, Err(StoreError::NestedSnapshot)), "{nested:?}");
    // The connection is usable afterwards: the refused read left no transaction behind.
    let state = store.read(|snap| messages::log_state(snap, "alice")).await.expect("a read after");
    assert_eq!(state.last_offset, 0);
}
