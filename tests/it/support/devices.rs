//! A device of a user on its `user:<eid>` inbox: a real authenticated socket that keeps the
//! events it is not waiting for, so replies and pushes can be awaited in any order.

use std::collections::VecDeque;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use super::{Client, Frame, TestServer, http};

/// Signs a user up over HTTP and returns a session token.
pub async fn signup(server: &TestServer, username: &str) -> String {
    let body = json!({"username": username, "password": "correct horse battery"}).to_string();
    let (status, body) = http(server.addr, "POST", "/api/signup", &[("Content-Type", "application/json")], &body).await;
    assert_eq!(status, 201, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["session"].as_str().expect("session token").to_owned()
}

/// Base64 of a small JSON text body, as a `Message.payload`.
pub fn body(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(json!({"type": "text", "body": text}).to_string())
}

/// A message to `to` with this id and text.
pub fn message(id: &str, to: &str, text: &str) -> Value {
    json!({"id": id, "to": {"eid": to}, "payload": body(text)})
}

/// One binary frame from the server, split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryFrame {
    /// 0 push, 1 reply, 2 broadcast.
    pub kind: u8,
    /// The reply's ref (replies only).
    pub msg_ref: String,
    /// The event, or the reply's status.
    pub event: String,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

/// Splits a V2 binary frame (Phoenix's layout).
pub fn parse_binary(data: &[u8]) -> BinaryFrame {
    let kind = data[0];
    let (lens, mut at): (Vec<usize>, usize) = match kind {
        0 => (data[1..4].iter().map(|&b| b as usize).collect(), 4),
        1 => (data[1..5].iter().map(|&b| b as usize).collect(), 5),
        2 => (data[1..3].iter().map(|&b| b as usize).collect(), 3),
        k => panic!("unknown binary kind {k}"),
    };
    let mut fields = Vec::new();
    for len in lens {
        fields.push(String::from_utf8(data[at..at + len].to_vec()).expect("utf-8 header field"));
        at += len;
    }
    let payload = data[at..].to_vec();
    match kind {
        0 => BinaryFrame { kind, msg_ref: String::new(), event: fields[2].clone(), payload },
        1 => BinaryFrame { kind, msg_ref: fields[1].clone(), event: fields[3].clone(), payload },
        _ => BinaryFrame { kind, msg_ref: String::new(), event: fields[1].clone(), payload },
    }
}

/// One device joined to its user's inbox.
pub struct Device {
    /// The socket.
    pub client: Client,
    /// `user:<eid>`.
    pub topic: String,
    join_ref: String,
    next_ref: u64,
    /// Frames received while waiting for something else.
    stash: VecDeque<Frame>,
}

impl Device {
    /// Connects `device` of the user holding `token` (V2 serializer).
    pub async fn connect(server: &TestServer, token: &str, device: &str) -> Client {
        Client::connect(&server.url(&format!("vsn=2.0.0&token={token}&device={device}"))).await
    }

    /// Connects and joins `user:<eid>` with `params`; returns the device and the join reply.
    pub async fn join(server: &TestServer, eid: &str, token: &str, device: &str, params: Value) -> (Device, Value) {
        let client = Device::connect(server, token, device).await;
        Device::join_on(client, eid, params).await
    }

    /// Joins `user:<eid>` on an open socket.
    pub async fn join_on(client: Client, eid: &str, params: Value) -> (Device, Value) {
        let mut device =
            Device { client, topic: format!("user:{eid}"), join_ref: "1".into(), next_ref: 1, stash: VecDeque::new() };
        let topic = device.topic.clone();
        let reply = device.call_raw("phx_join", &topic, params).await;
        (device, reply)
    }

    /// Joins and asserts the reply is ok; returns its response.
    pub async fn joined(server: &TestServer, eid: &str, token: &str, device: &str, params: Value) -> (Device, Value) {
        let (device, reply) = Device::join(server, eid, token, device, params).await;
        assert_eq!(reply["status"], "ok", "join of user:{eid} failed: {reply}");
        let response = reply["response"].clone();
        (device, response)
    }

    fn take_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    /// Pushes `event` without waiting; returns its ref.
    pub async fn push(&mut self, event: &str, payload: Value) -> String {
        let msg_ref = self.take_ref();
        let frame = json!([self.join_ref, msg_ref, self.topic, event, payload]);
        self.client.send(frame).await;
        msg_ref
    }

    /// Pushes a binary payload without waiting; returns its ref.
    pub async fn push_binary(&mut self, event: &str, payload: &[u8]) -> String {
        let msg_ref = self.take_ref();
        let frame = super::binary_push(&self.join_ref, &msg_ref, &self.topic, event, payload);
        self.client.send_binary(frame).await;
        msg_ref
    }

    async fn call_raw(&mut self, event: &str, topic: &str, payload: Value) -> Value {
        let msg_ref = if event == "phx_join" { self.join_ref.clone() } else { self.take_ref() };
        self.client.send(json!([self.join_ref, msg_ref, topic, event, payload])).await;
        self.reply(&msg_ref).await
    }

    /// Pushes `event` and returns its reply payload (`{"status", "response"}`).
    pub async fn call(&mut self, event: &str, payload: Value) -> Value {
        let msg_ref = self.push(event, payload).await;
        self.reply(&msg_ref).await
    }

    /// Pushes `event`, asserts an ok reply and returns its response.
    pub async fn call_ok(&mut self, event: &str, payload: Value) -> Value {
        let reply = self.call(event, payload).await;
        assert_eq!(reply["status"], "ok", "{event} failed: {reply}");
        reply["response"].clone()
    }

    /// The first stashed or next received frame that is `wanted`, stashing the others.
    async fn take(&mut self, what: &str, wanted: impl Fn(&Frame) -> bool) -> Frame {
        if let Some(i) = self.stash.iter().position(&wanted) {
            return self.stash.remove(i).expect("position is in range");
        }
        loop {
            let frame = self.client.recv().await;
            if wanted(&frame) {
                return frame;
            }
            assert!(!matches!(frame, Frame::Close(..)), "socket closed while waiting for {what}: {frame:?}");
            self.stash.push_back(frame);
        }
    }

    /// Waits for the JSON reply to `msg_ref`, stashing everything else.
    pub async fn reply(&mut self, msg_ref: &str) -> Value {
        let wanted = |f: &Frame| matches!(f, Frame::Json(v) if v[3] == "phx_reply" && v[1] == msg_ref);
        match self.take(&format!("reply {msg_ref}"), wanted).await {
            Frame::Json(v) => v[4].clone(),
            other => unreachable!("{other:?}"),
        }
    }

    /// Waits for the binary reply to `msg_ref`, stashing everything else.
    pub async fn binary_reply(&mut self, msg_ref: &str) -> BinaryFrame {
        let wanted = |f: &Frame| matches!(f, Frame::Binary(b) if { let p = parse_binary(b); p.kind == 1 && p.msg_ref == msg_ref });
        match self.take(&format!("binary reply {msg_ref}"), wanted).await {
            Frame::Binary(b) => parse_binary(&b),
            other => unreachable!("{other:?}"),
        }
    }

    /// The next JSON `event` on this topic (oldest first), stashing other frames.
    pub async fn event(&mut self, event: &str) -> Value {
        match self.take(event, |f| matches!(f, Frame::Json(v) if v[3] == event)).await {
            Frame::Json(v) => v[4].clone(),
            other => unreachable!("{other:?}"),
        }
    }

    /// The next binary push of `event`.
    pub async fn binary_event(&mut self, event: &str) -> Vec<u8> {
        let wanted =
            |f: &Frame| matches!(f, Frame::Binary(b) if { let p = parse_binary(b); p.kind != 1 && p.event == event });
        match self.take(event, wanted).await {
            Frame::Binary(b) => parse_binary(&b).payload,
            other => unreachable!("{other:?}"),
        }
    }

    /// `n` message events, in the order they arrived.
    pub async fn messages(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.event("message").await);
        }
        out
    }

    /// Asserts nothing arrived and nothing arrives for `ms` milliseconds.
    pub async fn expect_silence(&mut self, ms: u64) {
        assert!(self.stash.is_empty(), "unexpected frames: {:?}", self.stash);
        if let Some(frame) = self.client.recv_within(Duration::from_millis(ms)).await {
            panic!("expected silence on {}, got {frame:?}", self.topic);
        }
    }
}
