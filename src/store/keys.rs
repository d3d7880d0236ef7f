//! Queries on the key directory (`key_registrations`, `one_time_prekeys`) and on
//! `sealed_messages`, whose rows take their offsets from the same `user_logs` row as every
//! other message of the receiver's log.
//!
//! Handing out a one-time prekey is one `DELETE ... RETURNING` of the device's oldest key, after
//! the device's registration row is locked (`FOR UPDATE` on PostgreSQL; SQLite's write
//! transactions hold the database lock already), so two claims on one device are serial and never
//! see the same key, and the count each reads afterwards is exact. What a key or a sealed body
//! means is decided by `crate::keys`; here they are bytes.

use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Binary, Text};
use diesel::sqlite::Sqlite;

use super::messages::MAX_OFFSET;
use super::schema::{key_challenges, key_registrations, one_time_prekeys, sealed_messages, users};
use super::statement::Statement;
use super::users::UserRow;
use super::{DbConnection, Millis, Snapshot, StoreError};

/// Runs one statement text on either backend: `$make` builds it from `Statement::new`.
macro_rules! on_either {
    ($conn:expr, $st:ty, |$new:ident| $make:expr, $run:ident) => {
        match $conn {
            DbConnection::Sqlite(c) => {
                let $new = Statement::<Sqlite, $st>::new;
                $make.$run(c)
            }
            DbConnection::Pg(c) => {
                let $new = Statement::<Pg, $st>::new;
                $make.$run(c)
            }
        }
    };
}

/// One device's registration.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = key_registrations)]
pub struct RegistrationRow {
    /// The key user's eid.
    pub username: String,
    /// The protocol's deviceID.
    pub device_id: i64,
    /// The device's registrationID.
    pub registration_id: i64,
    /// The device's signed prekey.
    pub signed_pre_key: Vec<u8>,
    /// When these keys were registered (an append of prekeys leaves it).
    pub registered_at: Millis,
}

/// What [`register`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    /// Whether an existing registration with other keys was replaced (its prekeys dropped).
    pub replaced: bool,
    /// The device's one-time prekeys now on file.
    pub remaining: i64,
}

/// What [`claim`] handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The device's registration.
    pub registration: RegistrationRow,
    /// The one-time prekey now taken, if the device had any left.
    pub one_time_pre_key: Option<Vec<u8>>,
    /// The device's one-time prekeys left after this claim.
    pub remaining: i64,
}

/// Inserts `row` unless a user with its username exists; true when it was inserted.
/// `StoreError::AlreadyExists` when another user holds its comparison key.
pub fn ensure_user(conn: &mut DbConnection, row: &UserRow) -> Result<bool, StoreError> {
    let exists = users::table.filter(users::username.eq(&row.username)).count().get_result::<i64>(conn)? > 0;
    if exists {
        return Ok(false);
    }
    super::users::insert(conn, row)?;
    Ok(true)
}

/// Forgets a deleted user's key material and sealed mail, in the caller's write transaction:
/// registrations (their prekeys go with them), outstanding sign-in challenges, and the sealed
/// messages of its log, which only it could ever open.
pub fn forget_user(conn: &mut DbConnection, username: &str) -> Result<(), StoreError> {
    diesel::delete(one_time_prekeys::table.filter(one_time_prekeys::username.eq(username))).execute(conn)?;
    diesel::delete(key_registrations::table.filter(key_registrations::username.eq(username))).execute(conn)?;
    diesel::delete(key_challenges::table.filter(key_challenges::username.eq(username))).execute(conn)?;
    diesel::delete(sealed_messages::table.filter(sealed_messages::receiver.eq(username))).execute(conn)?;
    Ok(())
}

/// The registration of `(username, device)`, if any.
pub fn registration(
    conn: &mut DbConnection,
    username: &str,
    device: i64,
) -> Result<Option<RegistrationRow>, StoreError> {
    Ok(key_registrations::table
        .find((username, device))
        .select(RegistrationRow::as_select())
        .get_result(conn)
        .optional()?)
}

/// Every registered device of `username`, by device id.
pub fn registrations(conn: &mut DbConnection, username: &str) -> Result<Vec<RegistrationRow>, StoreError> {
    Ok(key_registrations::table
        .filter(key_registrations::username.eq(username))
        .order(key_registrations::device_id.asc())
        .select(RegistrationRow::as_select())
        .load(conn)?)
}

/// The one-time prekeys `(username, device)` has on file.
pub fn remaining(conn: &mut DbConnection, username: &str, device: i64) -> Result<i64, StoreError> {
    Ok(one_time_prekeys::table
        .filter(one_time_prekeys::username.eq(username).and(one_time_prekeys::device_id.eq(device)))
        .count()
        .get_result(conn)?)
}

/// Registers `row` with `pre_keys`, in the caller's write transaction: the keys are appended
/// when the registration on file has the same registration id and signed prekey, and the
/// whole registration (old prekeys included) is replaced otherwise.
pub fn register(
    conn: &mut DbConnection,
    row: &RegistrationRow,
    pre_keys: &[Vec<u8>],
) -> Result<Registered, StoreError> {
    let existing = registration(conn, &row.username, row.device_id)?;
    let same = existing.as_ref().is_some_and(|e| same_keys(e, row));
    let replaced = existing.is_some() && !same;
    if replaced {
        unregister(conn, &row.username, row.device_id)?;
    }
    if !same {
        diesel::insert_into(key_registrations::table).values(row).execute(conn)?;
    }
    for pre_key in pre_keys {
        diesel::insert_into(one_time_prekeys::table)
            .values((
                one_time_prekeys::username.eq(&row.username),
                one_time_prekeys::device_id.eq(row.device_id),
                one_time_prekeys::pre_key.eq(pre_key),
            ))
            .execute(conn)?;
    }
    Ok(Registered { replaced, remaining: remaining(conn, &row.username, row.device_id)? })
}

/// The one-time prekeys a [`register`] of `row` keeps from what is on file: all of them when
/// the registration on file has the same keys, none when it is replaced (or there is none).
pub fn kept_by_register(conn: &mut DbConnection, row: &RegistrationRow) -> Result<i64, StoreError> {
    match registration(conn, &row.username, row.device_id)? {
        Some(existing) if same_keys(&existing, row) => remaining(conn, &row.username, row.device_id),
        _ => Ok(0),
    }
}

fn same_keys(existing: &RegistrationRow, row: &RegistrationRow) -> bool {
    existing.registration_id == row.registration_id && existing.signed_pre_key == row.signed_pre_key
}

/// Deletes the registration of `(username, device)` and its prekeys; true when one existed.
pub fn unregister(conn: &mut DbConnection, username: &str, device: i64) -> Result<bool, StoreError> {
    diesel::delete(
        one_time_prekeys::table
            .filter(one_time_prekeys::username.eq(username).and(one_time_prekeys::device_id.eq(device))),
    )
    .execute(conn)?;
    let deleted = diesel::delete(key_registrations::table.find((username, device))).execute(conn)?;
    Ok(deleted > 0)
}

/// Records `nonce` as a sign-in challenge for `username` until `expires_at`, in the caller's
/// write transaction.
pub fn put_challenge(
    conn: &mut DbConnection,
    username: &str,
    nonce: &[u8],
    expires_at: Millis,
) -> Result<(), StoreError> {
    diesel::insert_into(key_challenges::table)
        .values((
            key_challenges::nonce.eq(nonce),
            key_challenges::username.eq(username),
            key_challenges::expires_at.eq(expires_at),
        ))
        .execute(conn)?;
    Ok(())
}

/// Uses up the challenge `nonce` of `username`, in the caller's write transaction: true when it
/// was issued to that user and had not expired at `now`. Only one caller's delete removes the
/// row, so a nonce signs in once.
pub fn take_challenge(conn: &mut DbConnection, username: &str, nonce: &[u8], now: Millis) -> Result<bool, StoreError> {
    let deleted = diesel::delete(
        key_challenges::table
            .find(nonce)
            .filter(key_challenges::username.eq(username).and(key_challenges::expires_at.gt(now))),
    )
    .execute(conn)?;
    Ok(deleted == 1)
}

/// Deletes the challenges expired at `now`; returns how many.
pub fn purge_challenges(conn: &mut DbConnection, now: Millis) -> Result<usize, StoreError> {
    Ok(diesel::delete(key_challenges::table.filter(key_challenges::expires_at.le(now))).execute(conn)?)
}

/// Takes the oldest one-time prekey of `(username, device)`, in the caller's write transaction;
/// `None` when the device is not registered.
pub fn claim(conn: &mut DbConnection, username: &str, device: i64) -> Result<Option<Claimed>, StoreError> {
    let registration = match conn {
        // The lock that makes claims on one device take turns (see the module doc).
        DbConnection::Pg(c) => key_registrations::table
            .find((username, device))
            .select(RegistrationRow::as_select())
            .for_update()
            .get_result(c)
            .optional()?,
        DbConnection::Sqlite(_) => registration(conn, username, device)?,
    };
    let Some(registration) = registration else { return Ok(None) };
    let taken: Option<Vec<u8>> = on_either!(
        &mut *conn,
        Binary,
        |new| new(concat!(
            "DELETE FROM one_time_prekeys WHERE id = (SELECT id FROM one_time_prekeys ",
            "WHERE username = ? AND device_id = ? ORDER BY id LIMIT 1) RETURNING pre_key"
        ))
        .bind::<Text, _>(username)
        .bind::<BigInt, _>(device),
        get_result
    )
    .optional()?;
    let remaining = remaining(conn, username, device)?;
    Ok(Some(Claimed { registration, one_time_pre_key: taken, remaining }))
}

/// Appends a sealed message for `(receiver, device)` to the receiver's log, in the caller's
/// write transaction, and returns its signal_offset; `None` when that device is not registered.
pub fn append_sealed(
    conn: &mut DbConnection,
    receiver: &str,
    device: i64,
    body: &[u8],
    now: Millis,
) -> Result<Option<i64>, StoreError> {
    if registration(conn, receiver, device)?.is_none() {
        return Ok(None);
    }
    let offset: i64 = on_either!(
        &mut *conn,
        BigInt,
        |new| new(concat!(
            "INSERT INTO user_logs (username, last_offset) VALUES (?, 1) ON CONFLICT (username) ",
            "DO UPDATE SET last_offset = user_logs.last_offset + 1 RETURNING last_offset"
        ))
        .bind::<Text, _>(receiver),
        get_result
    )?;
    if offset > MAX_OFFSET {
        return Err(StoreError::LogFull { log: format!("{receiver}'s message log") });
    }
    diesel::insert_into(sealed_messages::table)
        .values((
            sealed_messages::receiver.eq(receiver),
            sealed_messages::receiver_offset.eq(offset),
            sealed_messages::device_id.eq(device),
            sealed_messages::body.eq(body),
            sealed_messages::stored_at.eq(now),
        ))
        .execute(conn)?;
    Ok(Some(offset))
}

/// Up to `limit` sealed messages for `(receiver, device)` after signal_offset `after`, oldest
/// first, as `(offset, body)`.
pub fn sealed_after(
    snap: &mut Snapshot<'_>,
    receiver: &str,
    device: i64,
    after: i64,
    limit: i64,
) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
    Ok(sealed_messages::table
        .filter(sealed_messages::receiver.eq(receiver))
        .filter(sealed_messages::device_id.eq(device))
        .filter(sealed_messages::receiver_offset.gt(after))
        .order(sealed_messages::receiver_offset.asc())
        .limit(limit)
        .select((sealed_messages::receiver_offset, sealed_messages::body))
        .load(snap.conn())?)
}

/// A stored sealed message: where it sits in its receiver's log and for which device.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = sealed_messages)]
pub struct SealedRow {
    /// The receiving key user's eid.
    pub receiver: String,
    /// Its signal_offset in the receiver's log.
    pub receiver_offset: i64,
    /// The device it is for.
    pub device_id: i64,
    /// The sealed bytes.
    pub body: Vec<u8>,
    /// When it was stored.
    pub stored_at: Millis,
}

/// The first `limit` sealed messages of `receiver`'s log (every device) after signal_offset
/// `after`, oldest first.
pub fn sealed_in_log(
    snap: &mut Snapshot<'_>,
    receiver: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<SealedRow>, StoreError> {
    Ok(sealed_messages::table
        .filter(sealed_messages::receiver.eq(receiver))
        .filter(sealed_messages::receiver_offset.gt(after))
        .order(sealed_messages::receiver_offset.asc())
        .limit(limit)
        .select(SealedRow::as_select())
        .load(snap.conn())?)
}

/// Moves the cursor of `(username, device_key)` up to `up_to` (never down), in its own
/// statement; returns the cursor.
pub fn advance_cursor(
    conn: &mut DbConnection,
    username: &str,
    device_key: &str,
    up_to: i64,
    now: Millis,
) -> Result<i64, StoreError> {
    on_either!(
        conn,
        BigInt,
        |new| new(concat!(
            "INSERT INTO device_cursors (username, device_id, acked_offset, updated_at) VALUES (?, ?, ?, ?) ",
            "ON CONFLICT (username, device_id) DO UPDATE SET updated_at = excluded.updated_at, acked_offset = ",
            "CASE WHEN excluded.acked_offset > device_cursors.acked_offset THEN excluded.acked_offset ",
            "ELSE device_cursors.acked_offset END RETURNING acked_offset"
        ))
        .bind::<Text, _>(username)
        .bind::<Text, _>(device_key)
        .bind::<BigInt, _>(up_to)
        .bind::<BigInt, _>(now),
        get_result
    )
    .map_err(StoreError::from)
}
