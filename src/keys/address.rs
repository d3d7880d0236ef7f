//! Seed-001 addresses and how they map onto Courier users.
//!
//! A userID is 33 bytes: the type byte 0x05, then the 32-byte ed25519 public key of its owner.
//! Its Courier user (the `eid`, the username whose log and `user:<eid>` topic it shares with any
//! other device of the user) is the URL-safe base64 of those 33 bytes without padding: 44
//! characters, all of them allowed in usernames. A deviceID stays a number here and in the
//! directory; in the user's message log the device goes by `signal:<deviceID>`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::KeysError;
use crate::pb::signal as wire;

/// The type byte every userID starts with.
pub const USER_ID_TYPE: u8 = 0x05;
/// Bytes of a userID: the type byte and a 32-byte public key.
pub const USER_ID_BYTES: usize = 33;

/// A well-formed userID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserId([u8; USER_ID_BYTES]);

impl UserId {
    /// Checks the length and the type byte (the key itself is checked where it is used).
    pub fn parse(bytes: &[u8]) -> Result<UserId, KeysError> {
        let id: [u8; USER_ID_BYTES] = bytes
            .try_into()
            .map_err(|_| KeysError::InvalidUserId(format!("a userID is {USER_ID_BYTES} bytes, not {}", bytes.len())))?;
        if id[0] != USER_ID_TYPE {
            return Err(KeysError::InvalidUserId(format!("a userID starts with 0x05, not {:#04x}", id[0])));
        }
        Ok(UserId(id))
    }

    /// The userID of the Courier user `eid`, if `eid` is one.
    pub fn from_eid(eid: &str) -> Option<UserId> {
        UserId::parse(&URL_SAFE_NO_PAD.decode(eid).ok()?).ok()
    }

    /// The Courier user this userID is.
    pub fn eid(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// The 33 bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The owner's ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        let mut key = [0; 32];
        key.copy_from_slice(&self.0[1..]);
        key
    }
}

/// One device of one user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    /// The user.
    pub user: UserId,
    /// The protocol's deviceID.
    pub device: u32,
}

impl Address {
    /// Checks a wire address.
    pub fn from_wire(address: &wire::Address) -> Result<Address, KeysError> {
        Ok(Address { user: UserId::parse(&address.user_id)?, device: address.device_id })
    }

    /// The wire form.
    pub fn to_wire(&self) -> wire::Address {
        wire::Address { user_id: self.user.as_bytes().to_vec(), device_id: self.device }
    }

    /// The user's eid.
    pub fn eid(&self) -> String {
        self.user.eid()
    }
}

/// Whether `name` is the eid of a key user, a name only an ed25519 login may take.
pub fn is_key_user_eid(name: &str) -> bool {
    UserId::from_eid(name).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_id_round_trips_through_its_eid() {
        let mut bytes = [9u8; 33];
        bytes[0] = 0x05;
        let id = UserId::parse(&bytes).expect("well formed");
        let eid = id.eid();
        assert_eq!(eid.len(), 44);
        assert!(eid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{eid}");
        assert_eq!(UserId::from_eid(&eid), Some(id.clone()));
        assert!(is_key_user_eid(&eid));
        assert!(!is_key_user_eid("alice"));
        assert_eq!(id.public_key(), [9u8; 32]);
    }

    #[test]
    fn malformed_user_ids_are_refused() {
        assert!(UserId::parse(&[0x05; 32]).is_err());
        assert!(UserId::parse(&[0x06; 33]).is_err());
        assert!(UserId::parse(&[]).is_err());
    }
}
