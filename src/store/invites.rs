//! Queries on `invites` and `contacts`: contact requests between users and the symmetric
//! contact relation an accepted request creates.

use diesel::dsl::exists;
use diesel::prelude::*;

use super::dialect::per_backend;
use super::schema::{contacts, invites, users};
use super::{DbConnection, Millis, StoreError, write_transaction};

/// Where an invite stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteStatus {
    /// Sent, not yet answered.
    Pending,
    /// Answered yes; the two users are contacts.
    Accepted,
    /// Answered no.
    Rejected,
}

impl InviteStatus {
    /// The value stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            InviteStatus::Pending => "pending",
            InviteStatus::Accepted => "accepted",
            InviteStatus::Rejected => "rejected",
        }
    }

    /// Parses a stored `status` value.
    pub fn parse(s: &str) -> Result<InviteStatus, StoreError> {
        match s {
            "pending" => Ok(InviteStatus::Pending),
            "accepted" => Ok(InviteStatus::Accepted),
            "rejected" => Ok(InviteStatus::Rejected),
            other => Err(StoreError::Corrupt(format!("unknown invite status `{other}`"))),
        }
    }
}

#[derive(Insertable)]
#[diesel(table_name = invites)]
struct NewInvite<'a> {
    from_user: &'a str,
    to_user: &'a str,
    status: &'a str,
    created_at: Millis,
    delivered_at: Option<Millis>,
    responded_at: Option<Millis>,
}

#[derive(Insertable)]
#[diesel(table_name = contacts)]
struct NewContact<'a> {
    user_id: &'a str,
    contact_id: &'a str,
    created_at: Millis,
}

/// An unanswered invite addressed to someone, as handed out on subscribe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingInvite {
    /// Username of the requester.
    pub from_username: String,
    /// When the request was (last) made.
    pub created_at: Millis,
    /// When it was first handed out before this call, if it had been.
    pub delivered_at: Option<Millis>,
}

/// Records a pending invite from `from_id` to `to_id`, re-opening an earlier answered one.
pub fn upsert_pending(conn: &mut DbConnection, from_id: &str, to_id: &str, now: Millis) -> Result<(), StoreError> {
    let row = NewInvite {
        from_user: from_id,
        to_user: to_id,
        status: InviteStatus::Pending.as_str(),
        created_at: now,
        delivered_at: None,
        responded_at: None,
    };
    // Asking again is a fresh request: it must be delivered again and answered again.
    per_backend!(conn, c => diesel::insert_into(invites::table)
        .values(&row)
        .on_conflict((invites::from_user, invites::to_user))
        .do_update()
        .set((
            invites::status.eq(InviteStatus::Pending.as_str()),
            invites::created_at.eq(now),
            invites::delivered_at.eq(None::<Millis>),
            invites::responded_at.eq(None::<Millis>),
        ))
        .execute(c))?;
    Ok(())
}

/// The status of the invite from `from_id` to `to_id`, if one exists.
pub fn status(conn: &mut DbConnection, from_id: &str, to_id: &str) -> Result<Option<InviteStatus>, StoreError> {
    let raw: Option<String> = invites::table
        .filter(invites::from_user.eq(from_id))
        .filter(invites::to_user.eq(to_id))
        .select(invites::status)
        .get_result(conn)
        .optional()?;
    raw.map(|s| InviteStatus::parse(&s)).transpose()
}

/// Answers the pending invite from `from_id` to `to_id`; accepting also makes them contacts.
/// Returns false when there was no pending invite.
pub fn respond(
    conn: &mut DbConnection,
    from_id: &str,
    to_id: &str,
    accept: bool,
    now: Millis,
) -> Result<bool, StoreError> {
    let new_status = if accept { InviteStatus::Accepted } else { InviteStatus::Rejected };
    write_transaction(conn, |conn| {
        let n = diesel::update(
            invites::table
                .filter(invites::from_user.eq(from_id))
                .filter(invites::to_user.eq(to_id))
                .filter(invites::status.eq(InviteStatus::Pending.as_str())),
        )
        .set((invites::status.eq(new_status.as_str()), invites::responded_at.eq(Some(now))))
        .execute(conn)?;
        if n == 0 {
            return Ok(false);
        }
        if accept {
            let rows = [
                NewContact { user_id: from_id, contact_id: to_id, created_at: now },
                NewContact { user_id: to_id, contact_id: from_id, created_at: now },
            ];
            for row in &rows {
                per_backend!(&mut *conn, c => diesel::insert_into(contacts::table)
                    .values(row)
                    .on_conflict_do_nothing()
                    .execute(c))?;
            }
        }
        Ok(true)
    })
}

/// Every unanswered invite to `to_id`, oldest first, marking first-time ones delivered at `now`.
pub fn take_pending_for(conn: &mut DbConnection, to_id: &str, now: Millis) -> Result<Vec<PendingInvite>, StoreError> {
    write_transaction(conn, |conn| {
        let rows: Vec<(String, Millis, Option<Millis>)> = invites::table
            .inner_join(users::table.on(users::id.eq(invites::from_user)))
            .filter(invites::to_user.eq(to_id))
            .filter(invites::status.eq(InviteStatus::Pending.as_str()))
            .order((invites::created_at.asc(), users::username.asc()))
            .select((users::username, invites::created_at, invites::delivered_at))
            .load(conn)?;
        diesel::update(
            invites::table
                .filter(invites::to_user.eq(to_id))
                .filter(invites::status.eq(InviteStatus::Pending.as_str()))
                .filter(invites::delivered_at.is_null()),
        )
        .set(invites::delivered_at.eq(Some(now)))
        .execute(conn)?;
        Ok(rows
            .into_iter()
            .map(|(from_username, created_at, delivered_at)| PendingInvite { from_username, created_at, delivered_at })
            .collect())
    })
}

/// What the store knows about one user reaching another: the facts
/// `accounts::MessagePolicy` decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reach {
    /// The recipient is a live user.
    pub recipient: bool,
    /// The recipient is among the sender's contacts (contacts are symmetric).
    pub contacts: bool,
}

/// Whether `to` is a live user and a contact of `from`, both by username, in one statement.
pub fn reach(conn: &mut DbConnection, from: &str, to: &str) -> Result<Reach, StoreError> {
    let live_id = |name: &str| {
        users::table.filter(users::username.eq(name.to_owned())).filter(users::deleted_at.is_null()).select(users::id)
    };
    let recipient = exists(live_id(to));
    let contact = exists(
        contacts::table
            .filter(contacts::user_id.eq_any(live_id(from)))
            .filter(contacts::contact_id.eq_any(live_id(to))),
    );
    let (recipient, contacts) = diesel::select((recipient, contact)).get_result(conn)?;
    Ok(Reach { recipient, contacts })
}

/// Usernames of `user_id`'s contacts, sorted.
pub fn contacts_of(conn: &mut DbConnection, user_id: &str) -> Result<Vec<String>, StoreError> {
    Ok(contacts::table
        .inner_join(users::table.on(users::id.eq(contacts::contact_id)))
        .filter(contacts::user_id.eq(user_id))
        .order(users::username.asc())
        .select(users::username)
        .load(conn)?)
}
