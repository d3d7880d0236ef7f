//! Signing up the users a scenario needs, over Courier's HTTP API (`POST /api/signup`).

use std::sync::Arc;

use serde::Deserialize;

use crate::LoadError;

/// Signups in flight at once: each costs the server a password hash.
const SIGNUP_CONCURRENCY: usize = 4;

/// A signed-up user.
#[derive(Debug, Clone)]
pub struct Account {
    /// The username (the user's eid).
    pub eid: String,
    /// A session token for `token=` on connect.
    pub token: String,
}

/// The `http://host:port` that serves the API for a `ws://host:port/...` socket URL.
pub fn http_base(ws_url: &str) -> Result<String, LoadError> {
    let rest = ws_url.strip_prefix("ws://").ok_or_else(|| LoadError::Setup(format!("{ws_url}: not ws://")))?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    Ok(format!("http://{authority}"))
}

/// Signs up `count` users named `<prefix>u0`, `<prefix>u1`, ... and returns them in order.
pub async fn sign_up(ws_url: &str, prefix: &str, count: usize) -> Result<Vec<Account>, LoadError> {
    let endpoint: Arc<str> = format!("{}/api/signup", http_base(ws_url)?).into();
    let agent = ureq::Agent::new_with_defaults();
    let limit = Arc::new(tokio::sync::Semaphore::new(SIGNUP_CONCURRENCY));
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let (endpoint, agent, limit) = (Arc::clone(&endpoint), agent.clone(), Arc::clone(&limit));
        let eid = format!("{prefix}u{i}");
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await.map_err(|_| LoadError::Setup("signup stopped".into()))?;
            tokio::task::spawn_blocking(move || sign_up_one(&agent, &endpoint, eid))
                .await
                .map_err(|e| LoadError::Setup(e.to_string()))?
        }));
    }
    let mut accounts = Vec::with_capacity(count);
    for task in tasks {
        accounts.push(task.await.map_err(|e| LoadError::Setup(e.to_string()))??);
    }
    Ok(accounts)
}

fn sign_up_one(agent: &ureq::Agent, endpoint: &str, eid: String) -> Result<Account, LoadError> {
    #[derive(Deserialize)]
    struct Session {
        session: String,
    }
    let body = serde_json::json!({"username": eid, "password": "load-test password"});
    let mut response = agent
        .post(endpoint)
        .config()
        .http_status_as_error(false)
        .build()
        .send_json(&body)
        .map_err(|e| LoadError::Setup(format!("signup {eid}: {e}")))?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().map_err(|e| LoadError::Setup(format!("signup {eid}: {e}")))?;
    if status != 201 {
        return Err(LoadError::Setup(format!("signup {eid}: HTTP {status}: {text}")));
    }
    let session: Session =
        serde_json::from_str(&text).map_err(|e| LoadError::Setup(format!("signup {eid}: {e}: {text}")))?;
    Ok(Account { eid, token: session.session })
}

/// A run-unique prefix, so repeated runs against one database do not collide.
pub fn run_prefix() -> String {
    format!("ld{:08x}", rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_base_follows_the_socket_url() {
        assert_eq!(http_base("ws://127.0.0.1:4000/socket/websocket").unwrap(), "http://127.0.0.1:4000");
        assert_eq!(http_base("ws://localhost:9?x=1").unwrap(), "http://localhost:9");
        assert!(http_base("wss://x/").is_err());
    }
}
