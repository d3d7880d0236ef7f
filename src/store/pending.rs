//! Queries on `pending_messages`: frames held for users who were offline when they were sent.

use diesel::prelude::*;

use super::schema::pending_messages;
use super::{DbConnection, Millis, StoreError, write_transaction};

#[derive(Insertable)]
#[diesel(table_name = pending_messages)]
struct NewPending<'a> {
    user_id: &'a str,
    frame: &'a str,
    created_at: Millis,
}

/// Queues `frame` for `user_id` unless `limit` frames are already waiting; returns whether it was queued.
pub fn push(conn: &mut DbConnection, user_id: &str, frame: &str, now: Millis, limit: i64) -> Result<bool, StoreError> {
    // Count and insert in one write transaction so concurrent senders cannot overshoot the limit.
    write_transaction(conn, |conn| {
        let waiting: i64 =
            pending_messages::table.filter(pending_messages::user_id.eq(user_id)).count().get_result(conn)?;
        if waiting >= limit {
            return Ok(false);
        }
        diesel::insert_into(pending_messages::table)
            .values(NewPending { user_id, frame, created_at: now })
            .execute(conn)?;
        Ok(true)
    })
}

/// Removes and returns every frame queued for `user_id`, in the order they were queued.
pub fn take_all(conn: &mut DbConnection, user_id: &str) -> Result<Vec<String>, StoreError> {
    write_transaction(conn, |conn| {
        let rows: Vec<(i64, String)> = pending_messages::table
            .filter(pending_messages::user_id.eq(user_id))
            .order(pending_messages::id.asc())
            .select((pending_messages::id, pending_messages::frame))
            .load(conn)?;
        if let Some(&(last, _)) = rows.last() {
            // Bounded by the ids just read, so a frame queued meanwhile stays for next time.
            diesel::delete(
                pending_messages::table
                    .filter(pending_messages::user_id.eq(user_id))
                    .filter(pending_messages::id.le(last)),
            )
            .execute(conn)?;
        }
        Ok(rows.into_iter().map(|(_, frame)| frame).collect())
    })
}

/// How many frames wait for `user_id`.
pub fn count_for(conn: &mut DbConnection, user_id: &str) -> Result<i64, StoreError> {
    Ok(pending_messages::table.filter(pending_messages::user_id.eq(user_id)).count().get_result(conn)?)
}
