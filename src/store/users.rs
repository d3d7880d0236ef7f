//! Queries on `users`: one row per account, keyed by a TEXT id, unique by username.

use diesel::prelude::*;

use super::schema::users;
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
}

/// Inserts a user; `StoreError::AlreadyExists` when the username (or id) is taken.
pub fn insert(conn: &mut DbConnection, row: &UserRow) -> Result<(), StoreError> {
    diesel::insert_into(users::table).values(row).execute(conn)?;
    Ok(())
}

/// The user with this exact username, if any.
pub fn find_by_username(conn: &mut DbConnection, username: &str) -> Result<Option<UserRow>, StoreError> {
    Ok(users::table.filter(users::username.eq(username)).select(UserRow::as_select()).get_result(conn).optional()?)
}

/// The id of the user with this username, if any.
pub fn id_of(conn: &mut DbConnection, username: &str) -> Result<Option<String>, StoreError> {
    Ok(users::table.filter(users::username.eq(username)).select(users::id).get_result(conn).optional()?)
}

/// Whether a user with this username exists.
pub fn exists(conn: &mut DbConnection, username: &str) -> Result<bool, StoreError> {
    Ok(id_of(conn, username)?.is_some())
}

/// Number of accounts.
pub fn count(conn: &mut DbConnection) -> Result<i64, StoreError> {
    Ok(users::table.count().get_result(conn)?)
}
