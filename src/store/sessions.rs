//! Queries on `sessions`: one row per issued token, keyed by the token's SHA-256 digest.

use diesel::prelude::*;

use super::schema::{sessions, users};
use super::{DbConnection, Millis, StoreError};

/// A stored session.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = sessions)]
pub struct SessionRow {
    /// SHA-256 of the token the client holds.
    pub token_hash: Vec<u8>,
    /// Owner.
    pub user_id: String,
    /// The device this session was opened from, when known.
    pub device_id: Option<String>,
    /// When it was issued.
    pub created_at: Millis,
    /// When it stops being accepted.
    pub expires_at: Millis,
    /// When it was signed out, if it was.
    pub revoked_at: Option<Millis>,
}

/// Inserts a new session.
pub fn insert(conn: &mut DbConnection, row: &SessionRow) -> Result<(), StoreError> {
    diesel::insert_into(sessions::table).values(row).execute(conn)?;
    Ok(())
}

/// The session with this digest and its owner's username; none when the owner is deleted (a
/// sign-in that raced the deletion may have stored a session after the revocation).
pub fn find(conn: &mut DbConnection, token_hash: &[u8]) -> Result<Option<(SessionRow, String)>, StoreError> {
    Ok(sessions::table
        .inner_join(users::table)
        .filter(sessions::token_hash.eq(token_hash))
        .filter(users::deleted_at.is_null())
        .select((SessionRow::as_select(), users::username))
        .get_result(conn)
        .optional()?)
}

/// Marks a session revoked at `now`; returns false when there was no unrevoked session.
pub fn revoke(conn: &mut DbConnection, token_hash: &[u8], now: Millis) -> Result<bool, StoreError> {
    let n = diesel::update(
        sessions::table.filter(sessions::token_hash.eq(token_hash)).filter(sessions::revoked_at.is_null()),
    )
    .set(sessions::revoked_at.eq(Some(now)))
    .execute(conn)?;
    Ok(n > 0)
}

/// Revokes every live session of `user_id` at `now`; returns their digests.
pub fn revoke_all_of(conn: &mut DbConnection, user_id: &str, now: Millis) -> Result<Vec<Vec<u8>>, StoreError> {
    let live = sessions::table
        .filter(sessions::user_id.eq(user_id))
        .filter(sessions::revoked_at.is_null())
        .filter(sessions::expires_at.gt(now));
    Ok(diesel::update(live)
        .set(sessions::revoked_at.eq(Some(now)))
        .returning(sessions::token_hash)
        .get_results(conn)?)
}

/// Records which device a session belongs to.
pub fn set_device(conn: &mut DbConnection, token_hash: &[u8], device_id: &str) -> Result<bool, StoreError> {
    let n = diesel::update(sessions::table.filter(sessions::token_hash.eq(token_hash)))
        .set(sessions::device_id.eq(Some(device_id)))
        .execute(conn)?;
    Ok(n > 0)
}

/// Deletes sessions that expired or were revoked before `before`; returns how many.
pub fn purge(conn: &mut DbConnection, before: Millis) -> Result<usize, StoreError> {
    Ok(diesel::delete(sessions::table.filter(sessions::expires_at.le(before).or(sessions::revoked_at.le(before))))
        .execute(conn)?)
}
