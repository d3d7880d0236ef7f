//! The offset limit over a real socket, on both backends: seed 004 carries offsets as int32, so
//! a message that would take a log past 2^31 - 1 is answered with a `log_full` error reply and
//! not stored, and the log still reads back as it was.

use std::sync::Arc;

use courier::store::DbConnection;
use courier::store::messages::MAX_OFFSET;
use diesel::RunQueryDsl;
use serde_json::{Value, json};

use crate::on_both_backends;
use crate::support::db::TestDb;
use crate::support::devices::{Device, message, signup};
use crate::support::{TestServer, test_config};

/// Moves `user`'s log counter to `last`, as years of traffic would.
async fn set_last_offset(db: &TestDb, user: &'static str, last: i64) {
    let sql = format!("UPDATE user_logs SET last_offset = {last} WHERE username = '{user}'");
    let updated = db
        .open()
        .run(move |conn| {
            Ok(match conn {
                DbConnection::Sqlite(c) => diesel::sql_query(&sql).execute(c)?,
                DbConnection::Pg(c) => diesel::sql_query(&sql).execute(c)?,
            })
        })
        .await
        .expect("the update runs");
    assert_eq!(updated, 1, "{user} has a log");
}

/// The ids and signal_offsets of a `pull` reply's messages, and its `last_offset`.
fn pulled(page: &Value) -> (Vec<(String, i64)>, i64) {
    let messages = page["messages"].as_array().expect("messages").iter();
    let entries = messages
        .map(|m| (m["id"].as_str().unwrap_or_default().to_owned(), m["signal_offset"].as_i64().unwrap_or(-1)))
        .collect();
    (entries, page["last_offset"].as_i64().unwrap_or(-1))
}

on_both_backends!(a_send_past_the_offset_limit_gets_log_full_and_stores_nothing, log_full);
async fn log_full(db: Arc<TestDb>) {
    let server = TestServer::start_on(Arc::clone(&db), test_config(), |c| c);
    let (alice, bob) = (signup(&server, "alice").await, signup(&server, "bob").await);
    let (mut phone, _) = Device::joined(&server, "alice", &alice, "phone", json!({"mode": "pull"})).await;
    phone.call_ok("message", message("m1", "bob", "first")).await;
    set_last_offset(&db, "bob", MAX_OFFSET - 1).await;

    let ack = phone.call_ok("message", message("m2", "bob", "the last that fits")).await;
    assert_eq!(ack["status_code"], 200, "{ack}");

    for attempt in ["first", "retry"] {
        let refused = phone.call("message", message("m3", "bob", "one too many")).await;
        assert_eq!(refused["status"], "error", "{attempt}: {refused}");
        let response = &refused["response"];
        assert_eq!(response["code"], "log_full", "{attempt}: {refused}");
        assert_eq!(response["status_code"], 507, "{attempt}: {refused}");
        assert_eq!(response["message_id"], "m3", "{attempt}: {refused}");
        assert_eq!(response["signal_offset_state"], false, "{attempt}: {refused}");
        assert_eq!(
            response["reason"], "bob's message log is full (offsets end at 2147483647); nothing was stored",
            "{attempt}: {refused}"
        );
    }

    let (mut reader, joined) = Device::joined(&server, "bob", &bob, "phone", json!({"mode": "pull"})).await;
    assert_eq!(joined["last_offset"], MAX_OFFSET, "{joined}");
    let page = reader.call_ok("pull", json!({"after": 0})).await;
    assert_eq!(pulled(&page), (vec![("m1".into(), 1), ("m2".into(), MAX_OFFSET)], MAX_OFFSET), "{page}");
    let page = phone.call_ok("pull", json!({"after": 0})).await;
    assert_eq!(pulled(&page), (vec![("m1".into(), 1), ("m2".into(), 2)], 2), "{page}");
}
