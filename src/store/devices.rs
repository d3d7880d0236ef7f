//! Queries on `devices`: the devices a user has connected from, keyed by (user, device id).

use diesel::prelude::*;

use super::dialect::per_backend;
use super::schema::devices;
use super::{DbConnection, Millis, StoreError};

/// A stored device.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = devices)]
pub struct DeviceRow {
    /// Owner.
    pub user_id: String,
    /// The client's own device identifier (the Phoenix `device` connect param).
    pub device_id: String,
    /// First seen.
    pub created_at: Millis,
    /// Last connected or disconnected.
    pub last_seen_at: Millis,
}

/// Registers a device, or refreshes `last_seen_at` if it is already known.
pub fn upsert(conn: &mut DbConnection, user_id: &str, device_id: &str, now: Millis) -> Result<(), StoreError> {
    let row =
        DeviceRow { user_id: user_id.to_owned(), device_id: device_id.to_owned(), created_at: now, last_seen_at: now };
    per_backend!(conn, c => diesel::insert_into(devices::table)
        .values(&row)
        .on_conflict((devices::user_id, devices::device_id))
        .do_update()
        .set(devices::last_seen_at.eq(now))
        .execute(c))?;
    Ok(())
}

/// A user's devices, oldest first.
pub fn list(conn: &mut DbConnection, user_id: &str) -> Result<Vec<DeviceRow>, StoreError> {
    Ok(devices::table
        .filter(devices::user_id.eq(user_id))
        .order((devices::created_at.asc(), devices::device_id.asc()))
        .select(DeviceRow::as_select())
        .load(conn)?)
}

/// The latest `last_seen_at` of a user's devices, if it has any.
pub fn last_seen(conn: &mut DbConnection, user_id: &str) -> Result<Option<Millis>, StoreError> {
    Ok(devices::table
        .filter(devices::user_id.eq(user_id))
        .select(diesel::dsl::max(devices::last_seen_at))
        .first::<Option<Millis>>(conn)?)
}
