//! A seed-001 client for `/signal/websocket`: prost-encoded envelopes over a real WebSocket and
//! a real ed25519 key (ed25519-dalek) for the login.

use courier::pb::signal as wire;
use courier::pb::signal::message::Payload as Body;
use ed25519_dalek::{Signer, SigningKey};
use prost::Message as _;

use super::{Client, Frame, TestServer};

/// A user's key pair and its 33-byte userID.
#[derive(Clone)]
pub struct KeyUser {
    pub key: SigningKey,
    pub user_id: Vec<u8>,
}

impl KeyUser {
    /// A fresh random user.
    pub fn random() -> KeyUser {
        let key = SigningKey::from_bytes(&rand::random());
        let mut user_id = vec![0x05];
        user_id.extend_from_slice(key.verifying_key().as_bytes());
        KeyUser { key, user_id }
    }

    /// The address of `device` of this user.
    pub fn address(&self, device: u32) -> wire::Address {
        wire::Address { user_id: self.user_id.clone(), device_id: device }
    }

    /// The user's Courier eid: URL-safe base64 of the userID, no padding.
    pub fn eid(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&self.user_id)
    }
}

/// One connection to the signal endpoint.
pub struct SignalClient {
    pub raw: Client,
    next_sequence: u32,
    /// The nonce of the connection's challenge.
    pub nonce: Vec<u8>,
}

impl SignalClient {
    /// Connects and reads the challenge (which must come first, with sequence and nonce).
    pub async fn connect(server: &TestServer) -> SignalClient {
        SignalClient::connect_at(server.addr).await
    }

    /// Connects to the server at `addr` and reads the challenge.
    pub async fn connect_at(addr: std::net::SocketAddr) -> SignalClient {
        let raw = Client::connect(&format!("ws://{addr}/signal/websocket")).await;
        let mut client = SignalClient { raw, next_sequence: 0, nonce: Vec::new() };
        let first = client.recv().await;
        let Some(Body::AuthChallenge(challenge)) = first.payload else { panic!("expected a challenge, got {first:?}") };
        assert!(challenge.nonce.len() >= 16, "nonce of {} bytes", challenge.nonce.len());
        client.nonce = challenge.nonce;
        client
    }

    /// Connects and logs in as `device` of `user`, expecting the ack.
    pub async fn logged_in(server: &TestServer, user: &KeyUser, device: u32) -> SignalClient {
        SignalClient::logged_in_at(server.addr, user, device).await
    }

    /// Connects to the server at `addr` and logs in as `device` of `user`.
    pub async fn logged_in_at(addr: std::net::SocketAddr, user: &KeyUser, device: u32) -> SignalClient {
        let mut client = SignalClient::connect_at(addr).await;
        let response = client.login(user, device).await;
        assert!(matches!(response.payload, Some(Body::Ack(_))), "login answered {response:?}");
        client
    }

    /// Sends `payload` with the next sequence number; returns that sequence.
    pub async fn send(&mut self, payload: Body) -> u32 {
        self.next_sequence += 1;
        let sequence = self.next_sequence;
        self.send_as(sequence, payload).await;
        sequence
    }

    /// Sends `payload` with `sequence`.
    pub async fn send_as(&mut self, sequence: u32, payload: Body) {
        let bytes = wire::Message { sequence, payload: Some(payload) }.encode_to_vec();
        self.raw.send_binary(bytes).await;
    }

    /// The next envelope; panics on anything else.
    pub async fn recv(&mut self) -> wire::Message {
        match self.raw.recv().await {
            Frame::Binary(bytes) => wire::Message::decode(bytes.as_slice()).expect("the server sends envelopes"),
            other => panic!("expected a binary envelope, got {other:?}"),
        }
    }

    /// Sends `payload` and reads the one answer, which must carry the request's sequence.
    pub async fn call(&mut self, payload: Body) -> Body {
        let sequence = self.send(payload).await;
        let answer = self.recv().await;
        assert_eq!(answer.sequence, sequence, "a response carries its request's sequence: {answer:?}");
        answer.payload.expect("an answer has a payload")
    }

    /// An `AuthResponse` for `device` of `user`, signed over a login echoing `nonce`.
    pub fn auth_response(user: &KeyUser, device: u32, nonce: &[u8]) -> Body {
        let login = wire::Login { address: Some(user.address(device)), nonce: nonce.to_vec() }.encode_to_vec();
        let signature = user.key.sign(&login).to_bytes().to_vec();
        Body::AuthResponse(wire::AuthResponse { login, signature })
    }

    /// Answers the challenge as `device` of `user`; returns the server's answer.
    pub async fn login(&mut self, user: &KeyUser, device: u32) -> wire::Message {
        let response = SignalClient::auth_response(user, device, &self.nonce.clone());
        let sequence = self.send(response).await;
        let answer = self.recv().await;
        assert_eq!(answer.sequence, sequence);
        answer
    }

    /// Registers, expecting the ack.
    pub async fn register(&mut self, registration_id: u32, signed_pre_key: &[u8], pre_keys: &[Vec<u8>]) {
        let register = wire::Register {
            registration_id,
            signed_pre_key: signed_pre_key.to_vec(),
            one_time_pre_keys: pre_keys.to_vec(),
        };
        let answer = self.call(Body::Register(register)).await;
        assert!(matches!(answer, Body::Ack(_)), "register answered {answer:?}");
    }

    /// Asks for `user_id`'s prekeys: the bundles up to the end-of-list ack, or the error.
    pub async fn request_pre_keys(&mut self, user_id: &[u8], known: &[u32]) -> Result<Vec<wire::PreKey>, wire::Error> {
        let request = wire::RequestPreKeys { user_id: user_id.to_vec(), known_device_i_ds: known.to_vec() };
        let sequence = self.send(Body::RequestPreKeys(request)).await;
        let mut bundles = Vec::new();
        loop {
            let answer = self.recv().await;
            assert_eq!(answer.sequence, sequence, "{answer:?}");
            match answer.payload {
                Some(Body::PreKey(pre_key)) => bundles.push(pre_key),
                Some(Body::Ack(_)) => return Ok(bundles),
                Some(Body::Error(e)) => return Err(e),
                other => panic!("unexpected answer to requestPreKeys: {other:?}"),
            }
        }
    }

    /// Sends a sealed message; the server's answer.
    pub async fn send_sealed(&mut self, to: wire::Address, body: &[u8]) -> Body {
        let outbound = wire::OutboundMessage { to: Some(to), unidentified_sender_message: body.to_vec() };
        self.call(Body::OutboundMessage(outbound)).await
    }

    /// The next `inboundMessage`: its sequence and bytes.
    pub async fn recv_inbound(&mut self) -> (u32, Vec<u8>) {
        let msg = self.recv().await;
        match msg.payload {
            Some(Body::InboundMessage(body)) => (msg.sequence, body),
            other => panic!("expected an inboundMessage, got {other:?}"),
        }
    }

    /// Acknowledges the server's message `sequence`.
    pub async fn ack(&mut self, sequence: u32) {
        self.send_as(sequence, Body::Ack(wire::Ack {})).await;
    }
}

/// The error name of an answer, or a panic.
pub fn error_name(answer: &Body) -> &str {
    match answer {
        Body::Error(e) => &e.name,
        other => panic!("expected an error, got {other:?}"),
    }
}
