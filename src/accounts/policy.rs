//! Who may message whom: the one rule that message sends, status signals, seed-002 `message`
//! frames and presence watches all ask, over one store query ([`store::invites::reach`]).
//!
//! The sender is always the caller's authenticated user, so the rule asks about the recipient
//! only: it must be a live user and, when contacts are required, one of the sender's contacts.

use crate::store::invites::Reach;
use crate::store::{self, DbConnection, StoreError};

/// The rule in force: whether users may only message their contacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessagePolicy {
    require_contacts: bool,
}

/// Why a message (or signal, or watch) from one user to another is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// The recipient is not a live user.
    UnknownRecipient,
    /// Contacts are required and the recipient is not one.
    NotContacts,
}

impl MessagePolicy {
    /// The rule with contacts required or not.
    pub fn new(require_contacts: bool) -> Self {
        MessagePolicy { require_contacts }
    }

    /// Whether a stored message needs [`MessagePolicy::check`] before its append. Without
    /// required contacts the only rule is that the recipient exists, which the append's own
    /// statement enforces, so the group commit spends no query per message on it.
    pub fn screens_appends(self) -> bool {
        self.require_contacts
    }

    /// Whether `from` may message `to`, read inside the caller's store closure.
    pub fn check(self, conn: &mut DbConnection, from: &str, to: &str) -> Result<Result<(), Unreachable>, StoreError> {
        Ok(self.decide(store::invites::reach(conn, from, to)?))
    }

    /// The decision itself, on what the store found.
    pub fn decide(self, reach: Reach) -> Result<(), Unreachable> {
        if !reach.recipient {
            return Err(Unreachable::UnknownRecipient);
        }
        if self.require_contacts && !reach.contacts {
            return Err(Unreachable::NotContacts);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recipient_must_exist_and_be_a_contact_only_when_required() {
        let reach = |recipient, contacts| Reach { recipient, contacts };
        let (open, closed) = (MessagePolicy::new(false), MessagePolicy::new(true));
        assert_eq!(open.decide(reach(true, false)), Ok(()));
        assert_eq!(open.decide(reach(false, false)), Err(Unreachable::UnknownRecipient));
        assert_eq!(closed.decide(reach(true, true)), Ok(()));
        assert_eq!(closed.decide(reach(true, false)), Err(Unreachable::NotContacts));
        // A missing user cannot be a contact: unknown wins, as every path told them apart.
        assert_eq!(closed.decide(reach(false, true)), Err(Unreachable::UnknownRecipient));
        assert!(closed.screens_appends() && !open.screens_appends());
    }
}
