//! Queries on `users`: one row per account, keyed by a TEXT id, unique by username and by the
//! username's comparison key (computed by the accounts layer, which passes it in).
//!
//! A deleted account is a tombstone (`deleted_at` set, password hash wiped): every lookup that
//! means "this user exists" skips it, while its name and key stay taken, so no one can sign up
//! into the conversations its peers still hold.

use diesel::prelude::*;

use super::schema::{contacts, device_cursors, devices, invites, pending_messages, users};
use super::{DbConnection, Millis, StoreError};

/// A stored account.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = users)]
pub struct UserRow {
    /// Opaque stable id (a UUID string).
    pub id: String,
    /// The user's public name (the seed's `eid`), unique.
    pub username: String,
    /// A PHC-style string naming its own algorithm and salt.
    pub password_hash: String,
    /// When the account was created.
    pub created_at: Millis,
    /// The username's comparison key, unique; `None` only on an account made before keys
    /// whose key an older account holds.
    pub username_key: Option<String>,
}

/// Inserts a user; `StoreError::AlreadyExists` when the username, its key (or the id) is taken.
pub fn insert(conn: &mut DbConnection, row: &UserRow) -> Result<(), StoreError> {
    diesel::insert_into(users::table).values(row).execute(conn)?;
    Ok(())
}

/// The live user with this exact username, if any.
pub fn find_by_username(conn: &mut DbConnection, username: &str) -> Result<Option<UserRow>, StoreError> {
    Ok(live().filter(users::username.eq(username)).select(UserRow::as_select()).get_result(conn).optional()?)
}

/// Accounts that are not deleted.
fn live() -> diesel::dsl::Filter<users::table, diesel::dsl::IsNull<users::deleted_at>> {
    users::table.filter(users::deleted_at.is_null())
}

/// The user a sign-in names: the one with exactly this username, else the one holding `key`.
pub fn find_for_signin(conn: &mut DbConnection, username: &str, key: &str) -> Result<Option<UserRow>, StoreError> {
    if let Some(user) = find_by_username(conn, username)? {
        return Ok(Some(user));
    }
    Ok(live().filter(users::username_key.eq(key)).select(UserRow::as_select()).get_result(conn).optional()?)
}

/// Whether an account, live or deleted, holds this comparison key or has this exact username.
pub fn name_taken(conn: &mut DbConnection, username: &str, key: &str) -> Result<bool, StoreError> {
    let by_key = users::table.filter(users::username_key.eq(key)).select(users::id).get_result::<String>(conn);
    let by_name = users::table.filter(users::username.eq(username)).select(users::id).get_result::<String>(conn);
    Ok(by_key.optional()?.is_some() || by_name.optional()?.is_some())
}

/// Rows read per step of [`backfill_keys`].
const BACKFILL_PAGE: i64 = 500;

/// Gives every account without a key its key (`key_of(username)`), oldest account first; an
/// account whose key is already held keeps none. Returns (keys set, accounts left without).
pub fn backfill_keys(conn: &mut DbConnection, key_of: impl Fn(&str) -> String) -> Result<(usize, usize), StoreError> {
    let (mut set, mut clashing) = (0, 0);
    let mut after: Option<(Millis, String)> = None;
    loop {
        let mut query = users::table
            .filter(users::username_key.is_null())
            .select((users::created_at, users::id, users::username))
            .order((users::created_at, users::id))
            .limit(BACKFILL_PAGE)
            .into_boxed();
        if let Some((at, id)) = &after {
            query = query.filter(users::created_at.gt(*at).or(users::created_at.eq(*at).and(users::id.gt(id.clone()))));
        }
        let page: Vec<(Millis, String, String)> = query.load(conn)?;
        let Some(last) = page.last() else { break };
        after = Some((last.0, last.1.clone()));
        for (_, id, username) in page {
            let key = key_of(&username);
            // Checked rather than left to the unique index: on PostgreSQL a violation would
            // abort the surrounding work.
            let held = users::table.filter(users::username_key.eq(&key)).select(users::id).get_result::<String>(conn);
            if held.optional()?.is_some() {
                clashing += 1;
                continue;
            }
            diesel::update(users::table.filter(users::id.eq(&id))).set(users::username_key.eq(&key)).execute(conn)?;
            set += 1;
        }
    }
    Ok((set, clashing))
}

/// The id of the live user with this username, if any.
pub fn id_of(conn: &mut DbConnection, username: &str) -> Result<Option<String>, StoreError> {
    Ok(live().filter(users::username.eq(username)).select(users::id).get_result(conn).optional()?)
}

/// Whether a user with this username exists.
pub fn exists(conn: &mut DbConnection, username: &str) -> Result<bool, StoreError> {
    Ok(id_of(conn, username)?.is_some())
}

/// One row of [`page`]: a live account's name and creation time.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct UserSummary {
    /// The username (`eid`).
    pub username: String,
    /// When the account was created.
    pub created_at: Millis,
}

/// Live accounts whose username starts with `prefix` (case-sensitively, on both backends) and
/// sorts after `after`, the first `limit` by username.
pub fn page(
    conn: &mut DbConnection,
    prefix: &str,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<UserSummary>, StoreError> {
    // Usernames are never empty, so "after nothing" is after "".
    let query = live()
        .filter(users::username.gt(after.unwrap_or("").to_owned()))
        .select((users::username, users::created_at))
        .order(users::username.asc())
        .limit(limit);
    if prefix.is_empty() {
        return Ok(query.load(conn)?);
    }
    // SQLite's LIKE ignores ASCII case and PostgreSQL's does not; SQLite's GLOB and
    // PostgreSQL's LIKE both match case-sensitively, each with its own wildcards escaped.
    Ok(match conn {
        DbConnection::Sqlite(c) => {
            let glob = diesel::dsl::sql::<diesel::sql_types::Bool>("username GLOB ")
                .bind::<diesel::sql_types::Text, _>(format!("{}*", escape_glob(prefix)));
            query.filter(glob).load(c)?
        }
        DbConnection::Pg(c) => {
            query.filter(users::username.like(format!("{}%", escape_like(prefix))).escape('\\')).load(c)?
        }
    })
}

fn escape_like(text: &str) -> String {
    text.chars().fold(String::with_capacity(text.len()), |mut out, c| {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
        out
    })
}

fn escape_glob(text: &str) -> String {
    text.chars().fold(String::with_capacity(text.len()), |mut out, c| {
        match c {
            '*' | '?' | '[' => {
                out.push('[');
                out.push(c);
                out.push(']');
            }
            _ => out.push(c),
        }
        out
    })
}

/// Number of live accounts.
pub fn count(conn: &mut DbConnection) -> Result<i64, StoreError> {
    Ok(live().count().get_result(conn)?)
}

/// Deletes the live account `user_id` at `now`, in the caller's transaction: revokes its
/// sessions (returning their digests, so the sockets they opened can be closed), deletes its
/// devices, contacts both ways, invites both ways and queued frames, and leaves a tombstone.
/// `None` when there is no such live account.
pub fn delete(conn: &mut DbConnection, user_id: &str, now: Millis) -> Result<Option<Vec<Vec<u8>>>, StoreError> {
    let tombstoned = diesel::update(live().filter(users::id.eq(user_id)))
        .set((users::deleted_at.eq(Some(now)), users::password_hash.eq("")))
        .execute(conn)?;
    if tombstoned == 0 {
        return Ok(None);
    }
    let revoked = super::sessions::revoke_all_of(conn, user_id, now)?;
    diesel::delete(devices::table.filter(devices::user_id.eq(user_id))).execute(conn)?;
    diesel::delete(contacts::table.filter(contacts::user_id.eq(user_id).or(contacts::contact_id.eq(user_id))))
        .execute(conn)?;
    diesel::delete(invites::table.filter(invites::from_user.eq(user_id).or(invites::to_user.eq(user_id))))
        .execute(conn)?;
    diesel::delete(pending_messages::table.filter(pending_messages::user_id.eq(user_id))).execute(conn)?;
    let username: String = users::table.find(user_id).select(users::username).get_result(conn)?;
    diesel::delete(device_cursors::table.filter(device_cursors::username.eq(&username))).execute(conn)?;
    super::keys::forget_user(conn, &username)?;
    Ok(Some(revoked))
}
