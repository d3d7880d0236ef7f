//! The seed-001 login: the challenge nonce a connection is sent, and the check of the client's
//! signed answer. Pure: no I/O, so every refusal is unit-tested here.

use ed25519_dalek::{Signature, VerifyingKey};
use prost::Message as _;
use subtle::ConstantTimeEq;

use super::KeysError;
use super::address::{Address, UserId};
use crate::pb::signal as wire;

/// Bytes of a challenge nonce (the seed asks for a nonce; at least 16 bytes keep it unguessable).
pub const NONCE_BYTES: usize = 32;

/// A fresh challenge nonce from the operating system's generator (through `rand`'s thread RNG).
pub fn new_nonce() -> [u8; NONCE_BYTES] {
    rand::random()
}

/// Checks an `AuthResponse` against the nonce this connection was sent: the login must parse,
/// name a well-formed userID, echo `nonce`, and be signed by the key inside that userID.
pub fn verify(nonce: &[u8], response: &wire::AuthResponse) -> Result<Address, KeysError> {
    let (address, echoed) = parse(response)?;
    if !bool::from(echoed.as_slice().ct_eq(nonce)) {
        return Err(KeysError::InvalidNonce);
    }
    check_signature(&address, response)?;
    Ok(address)
}

/// Checks that an `AuthResponse` is signed by the key inside the userID it names, and returns
/// that address with the nonce it echoes; whether the nonce is one the server issued is the
/// caller's to check (an HTTP sign-in looks it up in the store).
pub fn verify_signed(response: &wire::AuthResponse) -> Result<(Address, Vec<u8>), KeysError> {
    let (address, echoed) = parse(response)?;
    check_signature(&address, response)?;
    Ok((address, echoed))
}

fn parse(response: &wire::AuthResponse) -> Result<(Address, Vec<u8>), KeysError> {
    let login = wire::Login::decode(response.login.as_slice())
        .map_err(|e| KeysError::InvalidMessage(format!("login is not a Login: {e}")))?;
    let address = login.address.ok_or_else(|| KeysError::InvalidUserId("the login names no address".into()))?;
    Ok((Address::from_wire(&address)?, login.nonce))
}

fn check_signature(address: &Address, response: &wire::AuthResponse) -> Result<(), KeysError> {
    let signature = Signature::from_slice(&response.signature).map_err(|_| KeysError::InvalidSignature)?;
    verifying_key(&address.user)?.verify_strict(&response.login, &signature).map_err(|_| KeysError::InvalidSignature)
}

fn verifying_key(user: &UserId) -> Result<VerifyingKey, KeysError> {
    VerifyingKey::from_bytes(&user.public_key())
        .map_err(|_| KeysError::InvalidUserId("not an ed25519 public key".into()))
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};

    use super::*;

    fn signed(key: &SigningKey, user_id: Vec<u8>, nonce: &[u8]) -> wire::AuthResponse {
        let login = wire::Login { address: Some(wire::Address { user_id, device_id: 3 }), nonce: nonce.to_vec() }
            .encode_to_vec();
        let signature = key.sign(&login).to_bytes().to_vec();
        wire::AuthResponse { login, signature }
    }

    fn user_id(key: &SigningKey) -> Vec<u8> {
        let mut id = vec![0x05];
        id.extend_from_slice(key.verifying_key().as_bytes());
        id
    }

    #[test]
    fn a_signed_login_with_this_nonce_binds_its_address() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let nonce = new_nonce();
        let address = verify(&nonce, &signed(&key, user_id(&key), &nonce)).expect("verifies");
        assert_eq!(address.device, 3);
        assert_eq!(address.user.as_bytes(), user_id(&key).as_slice());
        assert_ne!(new_nonce(), nonce, "each connection gets its own nonce");
    }

    #[test]
    fn every_bad_login_is_refused_with_its_own_name() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let nonce = new_nonce();
        let name = |r: &wire::AuthResponse| verify(&nonce, r).err().map(|e| e.name());

        assert_eq!(name(&signed(&other, user_id(&key), &nonce)), Some("invalid_signature"));
        assert_eq!(name(&signed(&key, user_id(&key), b"not this connection's")), Some("invalid_nonce"));
        let mut short = user_id(&key);
        short.pop();
        assert_eq!(name(&signed(&key, short, &nonce)), Some("invalid_user_id"));
        let mut wrong_type = user_id(&key);
        wrong_type[0] = 0x06;
        assert_eq!(name(&signed(&key, wrong_type, &nonce)), Some("invalid_user_id"));
        let mut tampered = signed(&key, user_id(&key), &nonce);
        tampered.signature[0] ^= 1;
        assert_eq!(name(&tampered), Some("invalid_signature"));
        let truncated = wire::AuthResponse { signature: vec![0; 10], ..signed(&key, user_id(&key), &nonce) };
        assert_eq!(name(&truncated), Some("invalid_signature"));
        let garbage = wire::AuthResponse { login: vec![0xff, 0xff], signature: vec![] };
        assert_eq!(name(&garbage), Some("invalid_message"));

        let (address, echoed) = verify_signed(&signed(&key, user_id(&key), b"any nonce")).expect("signed");
        assert_eq!((address.device, echoed.as_slice()), (3, &b"any nonce"[..]));
        let signed_name = |r: &wire::AuthResponse| verify_signed(r).err().map(|e| e.name());
        assert_eq!(signed_name(&signed(&other, user_id(&key), &nonce)), Some("invalid_signature"));
        assert_eq!(signed_name(&tampered), Some("invalid_signature"));
    }
}
