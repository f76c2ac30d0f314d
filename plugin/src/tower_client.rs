//! The plugin's client for its dstore-watchtower (`--watchtower-url`): hands each download
//! contract to the tower (`tower-register`) and asks what the tower saw (`tower-status`),
//! over the tower's bitcoind-style JSON-RPC with HTTP Basic auth.
//!
//! Credentials come from `user:password@` in the URL or from the tower's cookie file, which
//! is read again at each call because the tower writes a new one at every start. Neither
//! the credentials nor the key the tower extracted ever reach a log line or an error
//! message: the URL is kept without its user info, and reqwest's errors are stripped of
//! their URL.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use bitcoin::address::NetworkUnchecked;
use bitcoin::consensus::encode::deserialize_hex;
use bitcoin::secp256k1::SecretKey;
use bitcoin::{Transaction, Txid};
use dstore_protocol::watch::Registration;
use serde_json::{json, Value};

/// How long to wait for the tower to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A registration makes the tower replay the blocks since the download started.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(60);
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest reply read from the tower (a status is a few kilobytes).
const MAX_REPLY_BYTES: usize = 4 << 20;
/// The tower's error code for an unknown watch id (bitcoind's RPC_INVALID_PARAMETER).
const UNKNOWN_WATCH: i64 = -8;

/// How the plugin authenticates to its tower.
#[derive(Clone, PartialEq, Eq)]
pub enum TowerAuth {
    /// The tower's cookie file (`__cookie__:<hex>`), read at each call.
    Cookie(PathBuf),
    /// `user:password@` from `--watchtower-url`.
    UserPass { user: String, password: String },
}

impl fmt::Debug for TowerAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TowerAuth::Cookie(path) => f.debug_tuple("Cookie").field(path).finish(),
            TowerAuth::UserPass { user, .. } => f
                .debug_struct("UserPass")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

/// Where the tower is and how to log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TowerSettings {
    /// `http://host:port`, without user info (safe to log).
    pub url: String,
    pub auth: TowerAuth,
}

impl TowerSettings {
    /// Resolves `--watchtower-url` and `--watchtower-cookie`. Credentials in the URL and a
    /// cookie file are exclusive; with neither, `default_cookie` (the tower's default
    /// cookie path) is used. Error messages never repeat the URL (it may hold a password).
    pub fn resolve(
        url: &str,
        cookie: Option<PathBuf>,
        default_cookie: impl FnOnce() -> Option<PathBuf>,
    ) -> Result<TowerSettings, String> {
        let with_scheme = if url.contains("://") {
            url.to_string()
        } else {
            format!("http://{url}")
        };
        let parsed = url::Url::parse(&with_scheme)
            .map_err(|e| format!("--watchtower-url is not a URL ({e})"))?;
        let scheme = parsed.scheme();
        if scheme != "http" && scheme != "https" {
            return Err(format!(
                "--watchtower-url must be https://[user:password@]host:port, not {scheme}://"
            ));
        }
        let Some(host) = parsed.host_str() else {
            return Err("--watchtower-url has no host".into());
        };
        if parsed.path() != "/" && !parsed.path().is_empty()
            || parsed.query().is_some()
            || parsed.fragment().is_some()
        {
            return Err("--watchtower-url must not have a path, query or fragment".into());
        }
        let user = percent_decode(parsed.username())?;
        let password = parsed.password().map(percent_decode).transpose()?;
        let auth = match (user.is_empty(), password) {
            (true, None) => {
                TowerAuth::Cookie(match cookie.or_else(default_cookie) {
                    Some(path) => path,
                    None => return Err(
                        "--watchtower-url needs --watchtower-cookie or user:password@ in the URL"
                            .into(),
                    ),
                })
            }
            (false, Some(password)) => {
                if cookie.is_some() {
                    return Err("give the watchtower's credentials either in --watchtower-url or as --watchtower-cookie, not both".into());
                }
                TowerAuth::UserPass { user, password }
            }
            _ => {
                return Err(
                    "--watchtower-url must carry both a user and a password, or neither".into(),
                )
            }
        };
        // The cookie, the registrations and the audit salts travel in this channel: in
        // clear only where no one else is on the path.
        if scheme == "http" && !is_loopback(&parsed) {
            return Err(format!(
                "--watchtower-url: plain http:// is only for a tower on this machine (127.0.0.1, ::1, localhost); reach {host} through https://"
            ));
        }
        let url = match parsed.port() {
            Some(port) => format!("{scheme}://{host}:{port}"),
            None => format!("{scheme}://{host}"),
        };
        Ok(TowerSettings { url, auth })
    }
}

/// The URL's host is this machine: 127.0.0.0/8, ::1 or `localhost`.
fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("--watchtower-url has a bad %-escape in its credentials")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "--watchtower-url credentials are not UTF-8".into())
}

/// Why a call to the tower failed. No variant carries a credential or a key.
#[derive(Debug, thiserror::Error)]
pub enum TowerError {
    #[error("the watchtower at {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("cannot read the watchtower's cookie file {path}: {reason}")]
    Cookie { path: String, reason: String },
    #[error("the watchtower at {0} rejected our credentials")]
    Unauthorized(String),
    #[error("the watchtower refused {method} (code {code}): {message}")]
    Refused {
        method: String,
        code: i64,
        message: String,
    },
    #[error("the watchtower sent an unreadable reply to {method}: {reason}")]
    BadReply { method: String, reason: String },
}

/// f and the TX2 it came from, as the tower extracted them.
#[derive(Debug, Clone)]
pub struct TowerKey {
    pub secret: SecretKey,
    pub tx2: Transaction,
}

/// What `tower-status` says about one watch.
#[derive(Debug, Clone)]
pub struct TowerStatus {
    pub tip_height: Option<u32>,
    /// Present once the tower saw TX2 spend TX1 and extracted f from it.
    pub key: Option<TowerKey>,
    /// Each registered transaction's name, txid and state ("waiting", "broadcast", ...).
    pub transactions: Vec<TowerTx>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TowerTx {
    pub name: String,
    pub txid: Option<Txid>,
    pub state: String,
}

impl TowerStatus {
    /// Reads a `tower-status` result; a key that does not parse is an error, not absent.
    pub fn from_json(value: &Value) -> Result<TowerStatus, String> {
        let key = match value.get("key") {
            None | Some(Value::Null) => None,
            Some(key) => {
                let secret = key["secret"]
                    .as_str()
                    .and_then(|s| s.parse::<SecretKey>().ok())
                    .ok_or("key.secret is not a secret key")?;
                let tx2 = key["tx2"]
                    .as_str()
                    .and_then(|h| deserialize_hex::<Transaction>(h).ok())
                    .ok_or("key.tx2 is not a transaction")?;
                Some(TowerKey { secret, tx2 })
            }
        };
        let transactions = value["transactions"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|t| TowerTx {
                        name: t["name"].as_str().unwrap_or_default().to_string(),
                        txid: t["txid"].as_str().and_then(|s| s.parse().ok()),
                        state: t["status"]["state"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(TowerStatus {
            tip_height: value["tip_height"].as_u64().map(|h| h as u32),
            key,
            transactions,
        })
    }

    /// The state of the registered transaction `name`, if the tower has it.
    pub fn state_of(&self, name: &str) -> Option<&str> {
        self.transactions
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.state.as_str())
    }
}

/// An async client for one dstore-watchtower.
#[derive(Debug)]
pub struct TowerClient {
    http: reqwest::Client,
    settings: TowerSettings,
}

impl TowerClient {
    pub fn new(settings: TowerSettings) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        TowerClient { http, settings }
    }

    /// The tower's URL, without credentials.
    pub fn url(&self) -> &str {
        &self.settings.url
    }

    /// Registers (or re-registers, adding transactions) a contract; returns the tower's
    /// verdict: "registered", "updated" or "unchanged".
    pub async fn register(&self, registration: &Registration) -> Result<String, TowerError> {
        let body = serde_json::to_value(registration).map_err(|e| TowerError::BadReply {
            method: "tower-register".into(),
            reason: format!("cannot encode the registration: {e}"),
        })?;
        let result = self
            .call("tower-register", json!([body]), REGISTER_TIMEOUT)
            .await?;
        Ok(result["result"]
            .as_str()
            .unwrap_or("registered")
            .to_string())
    }

    /// What the tower knows about watch `id`; `None` when it has no such watch.
    pub async fn status(&self, id: &[u8; 32]) -> Result<Option<TowerStatus>, TowerError> {
        match self
            .call("tower-status", json!([hex::encode(id)]), STATUS_TIMEOUT)
            .await
        {
            Ok(value) => {
                TowerStatus::from_json(&value)
                    .map(Some)
                    .map_err(|reason| TowerError::BadReply {
                        method: "tower-status".into(),
                        reason,
                    })
            }
            Err(TowerError::Refused { code, .. }) if code == UNKNOWN_WATCH => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The script of the tower's own key (`wallet_address` in `tower-getinfo`): a refund
    /// output paying it is an anchor the tower spends to bump the refund by CPFP.
    pub async fn wallet_script(&self) -> Result<bitcoin::ScriptBuf, TowerError> {
        let info = self
            .call("tower-getinfo", json!([]), STATUS_TIMEOUT)
            .await?;
        info["wallet_address"]
            .as_str()
            .and_then(|a| a.parse::<bitcoin::Address<NetworkUnchecked>>().ok())
            .map(|a| a.assume_checked().script_pubkey())
            .ok_or_else(|| TowerError::BadReply {
                method: "tower-getinfo".into(),
                reason: "no wallet_address".into(),
            })
    }

    /// The tower's status of watch `id` as it sent it (for sections the plugin shows as
    /// is, like `audits`); `None` when it has no such watch.
    pub async fn status_raw(&self, id: &[u8; 32]) -> Result<Option<Value>, TowerError> {
        match self
            .call("tower-status", json!([hex::encode(id)]), STATUS_TIMEOUT)
            .await
        {
            Ok(value) => Ok(Some(value)),
            Err(TowerError::Refused { code, .. }) if code == UNKNOWN_WATCH => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn call(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, TowerError> {
        let request =
            json!({"jsonrpc": "1.0", "id": "dstore-plugin", "method": method, "params": params});
        let unreachable = |e: reqwest::Error| TowerError::Unreachable {
            url: self.settings.url.clone(),
            reason: e.without_url().to_string(),
        };
        let mut reply = self
            .http
            .post(format!("{}/", self.settings.url))
            .header(reqwest::header::AUTHORIZATION, self.authorization()?)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(timeout)
            .body(serde_json::to_vec(&request).unwrap_or_default())
            .send()
            .await
            .map_err(unreachable)?;
        let status = reply.status().as_u16();
        if status == 401 || status == 403 {
            return Err(TowerError::Unauthorized(self.settings.url.clone()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = reply.chunk().await.map_err(unreachable)? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_REPLY_BYTES {
                return Err(TowerError::BadReply {
                    method: method.into(),
                    reason: "the reply is too large".into(),
                });
            }
        }
        decode_reply(method, status, &body)
    }

    /// The `Authorization` header value, from the URL's credentials or a fresh read of the
    /// cookie file.
    fn authorization(&self) -> Result<String, TowerError> {
        let credentials = match &self.settings.auth {
            TowerAuth::UserPass { user, password } => format!("{user}:{password}"),
            TowerAuth::Cookie(path) => std::fs::read_to_string(path)
                .map_err(|e| TowerError::Cookie {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?
                .trim()
                .to_string(),
        };
        Ok(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        ))
    }
}

/// A JSON-RPC reply in bitcoind's dialect: `result`, or `error` (legacy replies carry it
/// with HTTP 404 or 500).
fn decode_reply(method: &str, status: u16, body: &[u8]) -> Result<Value, TowerError> {
    let bad = |reason: String| TowerError::BadReply {
        method: method.into(),
        reason,
    };
    let parsed: Value =
        serde_json::from_slice(body).map_err(|_| bad(format!("HTTP {status}, not JSON-RPC")))?;
    match parsed.get("error") {
        Some(error) if !error.is_null() => Err(TowerError::Refused {
            method: method.into(),
            code: error["code"].as_i64().unwrap_or(-1),
            message: error["message"]
                .as_str()
                .unwrap_or("unknown error")
                .chars()
                .take(500)
                .collect(),
        }),
        _ if status != 200 => Err(bad(format!("HTTP {status}"))),
        _ => Ok(parsed.get("result").cloned().unwrap_or(Value::Null)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash;

    fn resolve(url: &str, cookie: Option<&str>) -> Result<TowerSettings, String> {
        TowerSettings::resolve(url, cookie.map(PathBuf::from), || {
            Some(PathBuf::from("/home/x/.dstore-watchtower/regtest/.cookie"))
        })
    }

    #[test]
    fn urls_with_and_without_credentials() {
        let s = resolve("http://127.0.0.1:18460", Some("/t/.cookie")).unwrap();
        assert_eq!(s.url, "http://127.0.0.1:18460");
        assert_eq!(s.auth, TowerAuth::Cookie("/t/.cookie".into()));
        let s = resolve("127.0.0.1:18460/", None).unwrap();
        assert_eq!(s.url, "http://127.0.0.1:18460");
        assert_eq!(
            s.auth,
            TowerAuth::Cookie("/home/x/.dstore-watchtower/regtest/.cookie".into()),
            "the tower's default cookie"
        );
        let s = resolve("https://alice:p%40ss:w@tower.example:18460", None).unwrap();
        assert_eq!(
            s.url, "https://tower.example:18460",
            "no credentials in the URL"
        );
        assert_eq!(
            s.auth,
            TowerAuth::UserPass {
                user: "alice".into(),
                password: "p@ss:w".into()
            }
        );
        assert!(
            !format!("{s:?}").contains("p@ss"),
            "Debug hides the password"
        );
        let s = resolve("http://[::1]:1", None).unwrap();
        assert_eq!(s.url, "http://[::1]:1");
        for local in [
            "http://localhost:1",
            "http://127.8.9.10:1",
            "https://127.0.0.1:1",
        ] {
            assert!(resolve(local, None).is_ok(), "{local}");
        }
    }

    #[test]
    fn plain_http_to_another_machine_is_refused() {
        for remote in [
            "http://tower.example:18460",
            "http://10.0.0.2:18460",
            "http://[2001:db8::1]:1",
            "192.0.2.7:18460",
            "http://localhost.evil.example:1",
        ] {
            let err = resolve(remote, Some("/c")).unwrap_err();
            assert!(err.contains("https://"), "{remote}: {err}");
        }
    }

    #[test]
    fn bad_tower_urls_are_refused_without_echoing_secrets() {
        for url in [
            "ftp://x:1",
            "http://",
            "http://u@h:1",
            "http://h:1/path",
            "http://h:1/?q=1",
            "not a url at all",
        ] {
            assert!(resolve(url, None).is_err(), "{url}");
        }
        let err = resolve("http://bob:hunter2@h:1", Some("/c")).unwrap_err();
        assert!(
            err.contains("not both") && !err.contains("hunter2"),
            "{err}"
        );
        let err = TowerSettings::resolve("http://h:1", None, || None).unwrap_err();
        assert!(err.contains("--watchtower-cookie"), "{err}");
    }

    #[test]
    fn replies_in_bitcoind_dialect() {
        let ok = decode_reply(
            "m",
            200,
            br#"{"result":{"result":"unchanged"},"error":null,"id":1}"#,
        );
        assert_eq!(ok.unwrap()["result"], "unchanged");
        let refused = decode_reply(
            "tower-status",
            500,
            br#"{"result":null,"error":{"code":-8,"message":"no watch"},"id":1}"#,
        );
        assert!(matches!(refused, Err(TowerError::Refused { code: -8, .. })));
        assert!(matches!(
            decode_reply("m", 500, b"<html>"),
            Err(TowerError::BadReply { .. })
        ));
        assert!(matches!(
            decode_reply("m", 502, br#"{"result":1}"#),
            Err(TowerError::BadReply { .. })
        ));
    }

    #[test]
    fn status_with_and_without_a_key() {
        let empty = TowerStatus::from_json(&json!({
            "id": "00", "role": "renter", "tip_height": 120, "key": null,
            "transactions": [{"name": "tx1-refund", "txid": Txid::from_byte_array([7; 32]).to_string(), "status": {"state": "waiting", "height": 300}}],
        }))
        .unwrap();
        assert!(empty.key.is_none());
        assert_eq!(empty.tip_height, Some(120));
        assert_eq!(empty.state_of("tx1-refund"), Some("waiting"));
        assert_eq!(empty.state_of("tx2-refund"), None);
        let tx = Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: bitcoin::absolute::LockTime::ZERO,
            input: vec![bitcoin::TxIn::default()],
            output: vec![bitcoin::TxOut {
                value: bitcoin::Amount::from_sat(1),
                script_pubkey: bitcoin::ScriptBuf::new(),
            }],
        };
        let secret = SecretKey::from_slice(&[3; 32]).unwrap();
        let keyed = TowerStatus::from_json(&json!({
            "key": {"secret": hex::encode(secret.secret_bytes()), "tx2_txid": tx.compute_txid().to_string(),
                    "tx2": bitcoin::consensus::encode::serialize_hex(&tx)},
            "transactions": [],
        }))
        .unwrap();
        let key = keyed.key.expect("a key");
        assert_eq!((key.secret, key.tx2), (secret, tx));
        assert!(TowerStatus::from_json(&json!({"key": {"secret": "zz", "tx2": ""}})).is_err());
    }

    /// One request against a fake tower on loopback: Basic auth from the cookie file read
    /// at call time, the JSON-RPC body, and an unknown watch read as `None`.
    #[tokio::test]
    async fn calls_carry_the_current_cookie() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let cookie = dir.path().join(".cookie");
        std::fs::write(&cookie, "__cookie__:first\n").unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            for reply in [
                r#"{"result":{"id":"x","result":"registered"},"error":null,"id":"dstore-plugin"}"#,
                r#"{"result":null,"error":{"code":-8,"message":"no watch"},"id":"dstore-plugin"}"#,
            ] {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = stream.read(&mut buf).await.unwrap();
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            break;
                        }
                    }
                }
                let status = if reply.contains("-8") {
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                    reply.len()
                );
                stream.write_all(response.as_bytes()).await.unwrap();
                seen.push(String::from_utf8_lossy(&request).to_string());
            }
            seen
        });
        let client = TowerClient::new(TowerSettings {
            url: format!("http://127.0.0.1:{port}"),
            auth: TowerAuth::Cookie(cookie.clone()),
        });
        let registration = Registration {
            id: [9; 32],
            role: dstore_protocol::watch::WatchRole::Renter,
            extract: None,
            transactions: vec![],
            watch_txids: vec![Txid::from_byte_array([1; 32])],
            rescan_from_height: Some(5),
            auditor: None,
        };
        assert_eq!(client.register(&registration).await.unwrap(), "registered");
        // The tower restarted with a new cookie.
        std::fs::write(&cookie, "__cookie__:second").unwrap();
        assert!(client.status(&[9; 32]).await.unwrap().is_none());
        let seen = server.await.unwrap();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert!(seen[0].contains(&b64("__cookie__:first")), "{}", seen[0]);
        assert!(
            seen[0].contains("\"tower-register\"") && seen[0].contains("\"rescan_from_height\":5")
        );
        assert!(seen[1].contains(&b64("__cookie__:second")), "{}", seen[1]);
        assert!(seen[1].contains(&hex::encode([9u8; 32])));
        // Nobody listens here any more.
        let err = client.status(&[9; 32]).await.unwrap_err();
        assert!(matches!(err, TowerError::Unreachable { .. }), "{err}");
    }
}
