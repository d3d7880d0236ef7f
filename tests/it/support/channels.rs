//! Channels and an authenticator that exist only to exercise the socket's failure paths.

use std::time::Duration;

use courier::channels::auth::user_socket_id;
use courier::channels::{
    Channel, ChannelContext, ChannelFactory, ConnectError, ConnectRequest, HandleIn, JoinRequest, JoinResult, Joined,
    Refusal, Reply, SocketAuthenticator, SocketIdentity, StopReason,
};
use courier::error::Code;
use courier::protocol::Payload;
use futures_util::future::LocalBoxFuture;

/// Refuses connects with a `reject` param or a wrong auth token; `user_id=X` signs in as X with
/// the production socket id (so the admin API's disconnect reaches it) and `device=D` as its
/// device; the auth token `s3cret` authenticates as `tokenuser`.
pub struct TestAuth;

impl SocketAuthenticator for TestAuth {
    fn connect(&self, request: &ConnectRequest) -> LocalBoxFuture<'static, Result<SocketIdentity, ConnectError>> {
        let outcome = if request.params.contains_key("reject") {
            Err(ConnectError::Refused("rejected by test".into()))
        } else {
            match request.auth_token.as_deref() {
                Some("s3cret") => Ok(SocketIdentity {
                    socket_id: Some(user_socket_id("tokenuser")),
                    user: Some("tokenuser".into()),
                    device: None,
                    session: None,
                }),
                Some(_) => Err(ConnectError::Refused("bad token".into())),
                None => Ok(SocketIdentity {
                    socket_id: request.params.get("user_id").map(|id| user_socket_id(id)),
                    user: request.params.get("user_id").cloned(),
                    device: request.params.get("device").cloned(),
                    session: None,
                }),
            }
        };
        Box::pin(async move { outcome })
    }
}

/// `crash:*`: joins refuse, panic or take long on request; pushes panic, stop, fail or answer late.
pub struct CrashChannels;

impl ChannelFactory for CrashChannels {
    fn join(&self, request: JoinRequest) -> LocalBoxFuture<'static, JoinResult> {
        let params = request.payload.as_json_str().unwrap_or("{}").to_owned();
        if params.contains("panic_now") {
            panic!("join panicked on purpose");
        }
        Box::pin(async move {
            if params.contains("refuse") {
                return Err(Refusal::new(Code::Forbidden, "refused on purpose"));
            }
            if params.contains("panic_later") {
                panic!("join future panicked on purpose");
            }
            if params.contains("slow_join") {
                tokio::time::sleep(Duration::from_millis(1_500)).await;
            }
            Ok(Joined {
                channel: Box::new(CrashChannel),
                response: Payload::json(&serde_json::json!({"joined": true})),
            })
        })
    }
}

struct CrashChannel;

impl Channel for CrashChannel {
    fn after_join(&mut self, ctx: &mut ChannelContext<'_>) {
        ctx.push("welcome", Payload::json(&serde_json::json!({"topic": ctx.topic})));
    }

    fn handle_in(&mut self, event: &str, payload: Payload, _ctx: &mut ChannelContext<'_>) -> HandleIn {
        match event {
            "boom" => panic!("handle_in panicked on purpose"),
            "stop" => HandleIn::Stop { reply: Some(Reply::ok_empty()), reason: StopReason::Normal },
            "fail" => HandleIn::Stop { reply: None, reason: StopReason::Crash("failed on purpose".into()) },
            "silent" => HandleIn::NoReply,
            "slow" => HandleIn::Later(Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(400)).await;
                Reply::ok(payload)
            })),
            _ => HandleIn::Reply(Reply::error(Code::InvalidEvent, "unknown event")),
        }
    }
}
