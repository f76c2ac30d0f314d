//! A daemon's connection to bitcoind's JSON-RPC: typed calls and verbatim forwarding.
//!
//! Credentials come from the cookie file (re-read when bitcoind answers 401, since bitcoind
//! writes a new cookie at every start) or from a fixed user and password.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::config::BitcoindAuth;
use crate::jsonrpc::{code, RpcError};

/// A reply from bitcoind passed through untouched.
#[derive(Debug, Clone)]
pub struct RawReply {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum BitcoindError {
    #[error("bitcoind is unreachable at {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("cannot read bitcoind's cookie file {path}: {source}")]
    Cookie {
        path: String,
        source: std::io::Error,
    },
    #[error("bitcoind rejected our RPC credentials")]
    Unauthorized,
    #[error("bitcoind returned an unreadable reply: {0}")]
    BadReply(String),
    #[error("bitcoind error: {0}")]
    Rpc(RpcError),
}

impl BitcoindError {
    /// The JSON-RPC error a caller of the daemon sees for this failure.
    pub fn to_rpc_error(&self) -> RpcError {
        match self {
            BitcoindError::Rpc(e) => e.clone(),
            other => RpcError::new(code::CLIENT_NOT_CONNECTED, other.to_string()),
        }
    }
}

/// An async client for bitcoind's JSON-RPC.
#[derive(Debug)]
pub struct Bitcoind {
    http: reqwest::Client,
    url: String,
    auth: BitcoindAuth,
    /// The `Authorization` header value in use; refreshed from the cookie on 401.
    authorization: Mutex<Option<String>>,
}

impl Bitcoind {
    pub fn new(url: &str, auth: BitcoindAuth) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Bitcoind {
            http,
            url: url.trim_end_matches('/').to_string(),
            auth,
            authorization: Mutex::new(None),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn auth(&self) -> &BitcoindAuth {
        &self.auth
    }

    /// Calls `method` and returns its `result`, or bitcoind's error.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, BitcoindError> {
        let request = json!({"jsonrpc": "1.0", "id": "dstore", "method": method, "params": params});
        let body = Bytes::from(serde_json::to_vec(&request).unwrap_or_default());
        let reply = self.post("/", body).await?;
        let parsed: Value = serde_json::from_slice(&reply.body)
            .map_err(|e| BitcoindError::BadReply(format!("{method}: {e}")))?;
        match parsed.get("error") {
            Some(error) if !error.is_null() => Err(BitcoindError::Rpc(RpcError::new(
                error
                    .get("code")
                    .and_then(Value::as_i64)
                    .unwrap_or(code::MISC_ERROR),
                error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error"),
            ))),
            _ => Ok(parsed.get("result").cloned().unwrap_or(Value::Null)),
        }
    }

    /// Sends a request body to bitcoind at `path` and returns its reply unchanged.
    pub async fn forward(&self, path: &str, body: Bytes) -> Result<RawReply, BitcoindError> {
        self.post(path, body).await
    }

    async fn post(&self, path: &str, body: Bytes) -> Result<RawReply, BitcoindError> {
        let reply = self.post_once(path, body.clone(), false).await?;
        if reply.status != 401 || !matches!(self.auth, BitcoindAuth::Cookie(_)) {
            return Ok(reply);
        }
        // bitcoind may have restarted with a new cookie: read it again and retry once.
        let reply = self.post_once(path, body, true).await?;
        if reply.status == 401 {
            return Err(BitcoindError::Unauthorized);
        }
        Ok(reply)
    }

    async fn post_once(
        &self,
        path: &str,
        body: Bytes,
        refresh: bool,
    ) -> Result<RawReply, BitcoindError> {
        let authorization = self.authorization(refresh).await?;
        let url = format!("{}{}", self.url, path);
        let response = self
            .http
            .post(&url)
            .header("Authorization", authorization)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|source| self.unreachable(source))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response
            .bytes()
            .await
            .map_err(|source| self.unreachable(source))?;
        Ok(RawReply {
            status,
            content_type,
            body,
        })
    }

    fn unreachable(&self, source: reqwest::Error) -> BitcoindError {
        BitcoindError::Unreachable {
            url: self.url.clone(),
            source,
        }
    }

    async fn authorization(&self, refresh: bool) -> Result<String, BitcoindError> {
        let mut cached = self.authorization.lock().await;
        if let (Some(value), false) = (cached.as_ref(), refresh) {
            return Ok(value.clone());
        }
        let credentials = match &self.auth {
            BitcoindAuth::UserPass { user, password } => format!("{user}:{password}"),
            BitcoindAuth::Cookie(path) => std::fs::read_to_string(path)
                .map_err(|source| BitcoindError::Cookie {
                    path: path.display().to_string(),
                    source,
                })?
                .trim()
                .to_string(),
        };
        let value = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        );
        *cached = Some(value.clone());
        Ok(value)
    }
}
