//! Lightning peers as a discovery channel for farmers.
//!
//! `dstore-discover <node_id>` sends a connected Lightning peer a custom message of type
//! [`MSG_TYPE`] (0xD5A1 = 54689: odd, so a peer without dstore ignores it, and in the
//! experimental range 32768-65535). Its payload after the 2-byte type is one kind byte
//! and a body:
//!
//! | kind | body |
//! | --- | --- |
//! | 0x01 request | empty (anything after the kind byte is ignored) |
//! | 0x02 answer | UTF-8 JSON `{"farmer": bool, "network": "regtest", "peer_url": "http://…", "identity": "<x-only hex>"}` (the last two only from a farmer) |
//! | 0x03 advert | a farmer's signed advert, JSON (`SignedAdvert`, at most 8 KiB) |
//! | 0x04 evidence | a fraud proof, JSON (the evidence board's canonical bytes) |
//!
//! The `custommsg` hook answers requests and records answers; `dstore-peers` lists what
//! was learned. A farmer follows its answer with its signed advert and the proofs on its
//! evidence board that fit in one message ([`MAX_EVIDENCE_BODY`]). A received advert must
//! verify and a received proof must pass `check_evidence` before either is handed to the
//! market (`Market::accept_advert` / `accept_evidence`); anything else is logged and dropped. File data never travels this way: a renter uses the learned peer URL for
//! the HTTP peer endpoint as usual (and pins the identity on first contact, as always).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cln_plugin::{Error, Plugin};
use dstore_protocol::market::advert::SignedAdvert;
use dstore_protocol::market::evidence::check_evidence;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::app::App;

/// The custom message type (odd, experimental range).
pub const MSG_TYPE: u16 = 0xD5A1;
pub const KIND_REQUEST: u8 = 0x01;
pub const KIND_ANSWER: u8 = 0x02;
pub const KIND_ADVERT: u8 = 0x03;
pub const KIND_EVIDENCE: u8 = 0x04;
/// Largest answer body accepted.
const MAX_BODY: usize = 4096;
/// Largest advert body accepted (an advert is at most 4,096 bytes, plus its signature).
const MAX_ADVERT_BODY: usize = 8192;
/// Largest evidence body: a custom message carries at most 65,535 bytes, 3 of them ours.
pub const MAX_EVIDENCE_BODY: usize = 65_532;
/// The most board proofs a farmer sends after one answer.
const MAX_EVIDENCE_SENT: usize = 100;
/// How long `dstore-discover` waits for an answer by default.
const DEFAULT_TIMEOUT_SECS: u64 = 10;

/// What a peer said about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerInfo {
    pub farmer: bool,
    pub network: Option<String>,
    pub peer_url: Option<String>,
    pub identity: Option<String>,
    /// Increases with every answer recorded (to tell a fresh answer from an old one).
    pub seq: u64,
}

impl PeerInfo {
    fn json(&self, node_id: &str) -> Value {
        json!({
            "node_id": node_id,
            "farmer": self.farmer,
            "network": self.network,
            "peer_url": self.peer_url,
            "identity": self.identity,
        })
    }
}

/// The plugin's state in Core Lightning mode.
#[derive(Clone)]
pub struct State {
    pub app: Arc<App>,
    pub rpc_path: PathBuf,
    /// The peer URL this node announces when it is a farmer.
    pub announce_url: Option<String>,
    peers: Arc<Mutex<HashMap<String, PeerInfo>>>,
    learned: Arc<watch::Sender<u64>>,
}

impl State {
    pub fn new(app: Arc<App>, rpc_path: PathBuf, announce_url: Option<String>) -> Self {
        State {
            app,
            rpc_path,
            announce_url,
            peers: Arc::default(),
            learned: Arc::new(watch::channel(0).0),
        }
    }

    fn record(&self, node_id: &str, mut info: PeerInfo) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        info.seq = *self.learned.borrow() + 1;
        let seq = info.seq;
        peers.insert(node_id.to_string(), info);
        // Under the lock, so the counter only grows and waiters see the answer.
        self.learned.send_replace(seq);
    }

    fn get(&self, node_id: &str) -> Option<PeerInfo> {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node_id)
            .cloned()
    }

    /// What a farmer sends after its answer: its signed advert, then the proofs on its
    /// evidence board that fit in one message (at most [`MAX_EVIDENCE_SENT`]).
    fn market_messages(&self) -> Vec<String> {
        let Some(farmer) = &self.app.farmer else {
            return Vec::new();
        };
        let advert = serde_json::to_vec(&farmer.advert()).unwrap_or_default();
        let mut msgs = vec![encode(KIND_ADVERT, &advert)];
        let board = farmer.board();
        let ids = board.list().unwrap_or_default();
        let proofs = ids
            .iter()
            .filter_map(|item| {
                let mut id = [0u8; 32];
                hex::decode_to_slice(&item.id, &mut id).ok()?;
                board.proof(&id).ok()
            })
            .filter(|bytes| bytes.len() <= MAX_EVIDENCE_BODY)
            .take(MAX_EVIDENCE_SENT);
        msgs.extend(proofs.map(|bytes| encode(KIND_EVIDENCE, &bytes)));
        msgs
    }

    /// Our own answer to a request.
    fn answer_body(&self) -> Value {
        let network = self.app.config.network.name();
        match (&self.app.farmer, &self.announce_url) {
            (Some(farmer), Some(url)) => json!({
                "farmer": true,
                "network": network,
                "peer_url": url,
                "identity": farmer.identity().x_only_public_key().0.to_string(),
            }),
            _ => json!({"farmer": false, "network": network}),
        }
    }
}

/// Encodes a message: type, kind, body.
pub fn encode(kind: u8, body: &[u8]) -> String {
    let mut bytes = MSG_TYPE.to_be_bytes().to_vec();
    bytes.push(kind);
    bytes.extend_from_slice(body);
    hex::encode(bytes)
}

/// A decoded message of ours.
#[derive(Debug, PartialEq)]
pub enum Message {
    Request,
    Answer(PeerInfo),
    /// A signed advert whose signature verified.
    Advert(Box<SignedAdvert>),
    /// A fraud proof's bytes, not yet checked (the check is CPU work for the hook's task).
    Evidence(Vec<u8>),
}

/// Decodes a `custommsg` payload: `Ok(None)` for another plugin's message type.
pub fn decode(payload_hex: &str) -> Result<Option<Message>, String> {
    let bytes = hex::decode(payload_hex).map_err(|e| format!("payload is not hex: {e}"))?;
    if bytes.len() < 2 {
        return Err(format!("payload of {} bytes has no type", bytes.len()));
    }
    if u16::from_be_bytes([bytes[0], bytes[1]]) != MSG_TYPE {
        return Ok(None);
    }
    let (&kind, body) = bytes[2..]
        .split_first()
        .ok_or("dstore message without a kind byte")?;
    match kind {
        KIND_REQUEST => Ok(Some(Message::Request)),
        KIND_ANSWER => {
            if body.len() > MAX_BODY {
                return Err(format!("answer of {} bytes is too large", body.len()));
            }
            let v: Value =
                serde_json::from_slice(body).map_err(|e| format!("answer is not JSON: {e}"))?;
            let farmer = v
                .get("farmer")
                .and_then(Value::as_bool)
                .ok_or("answer without a boolean farmer field")?;
            let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
            let info = PeerInfo {
                farmer,
                network: text("network"),
                peer_url: text("peer_url"),
                identity: text("identity"),
                seq: 0,
            };
            if farmer {
                let url = info.peer_url.as_deref().unwrap_or("");
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(format!("farmer answer with a bad peer_url '{url}'"));
                }
                let id = info.identity.as_deref().unwrap_or("");
                if id.len() != 64 || hex::decode(id).is_err() {
                    return Err(format!("farmer answer with a bad identity '{id}'"));
                }
            }
            Ok(Some(Message::Answer(info)))
        }
        KIND_ADVERT => decode_advert(body).map(|a| Some(Message::Advert(Box::new(a)))),
        KIND_EVIDENCE => {
            if body.len() > MAX_EVIDENCE_BODY {
                return Err(format!("evidence of {} bytes is too large", body.len()));
            }
            Ok(Some(Message::Evidence(body.to_vec())))
        }
        other => Err(format!("unknown dstore message kind {other:#04x}")),
    }
}

/// A signed advert body: size-capped, parsed, and its signature verified.
fn decode_advert(body: &[u8]) -> Result<SignedAdvert, String> {
    if body.len() > MAX_ADVERT_BODY {
        return Err(format!("advert of {} bytes is too large", body.len()));
    }
    let advert: SignedAdvert =
        serde_json::from_slice(body).map_err(|e| format!("advert is not JSON: {e}"))?;
    advert
        .verify()
        .map_err(|e| format!("advert refused: {e}"))?;
    Ok(advert)
}

/// The `custommsg` hook: answers requests, records answers, always lets lightningd go on.
pub async fn hook(plugin: Plugin<State>, params: Value) -> Result<Value, Error> {
    if let Err(e) = handle(plugin.state(), &params) {
        tracing::error!("custommsg: {e}");
    }
    Ok(json!({"result": "continue"}))
}

fn handle(state: &State, params: &Value) -> Result<(), String> {
    let peer_id = params
        .get("peer_id")
        .and_then(Value::as_str)
        .ok_or("custommsg without a peer_id")?
        .to_string();
    let payload = params
        .get("payload")
        .and_then(Value::as_str)
        .ok_or("custommsg without a payload")?;
    match decode(payload)? {
        None => Ok(()),
        Some(Message::Request) => {
            let mut msgs = vec![encode(
                KIND_ANSWER,
                state.answer_body().to_string().as_bytes(),
            )];
            msgs.extend(state.market_messages());
            let rpc_path = state.rpc_path.clone();
            tokio::spawn(async move {
                for msg in msgs {
                    let params = json!({"node_id": peer_id, "msg": msg});
                    if let Err(e) = call(&rpc_path, "sendcustommsg", params).await {
                        tracing::warn!(peer = %peer_id, "cannot answer a discovery request: {e}");
                        return;
                    }
                }
                tracing::info!(peer = %peer_id, "answered a dstore discovery request");
            });
            Ok(())
        }
        Some(Message::Advert(advert)) => {
            let accepted = state.app.market.accept_advert(*advert);
            tracing::info!(peer = %peer_id, ?accepted, "received a signed advert");
            Ok(())
        }
        Some(Message::Evidence(bytes)) => {
            let app = state.app.clone();
            tokio::spawn(async move {
                let checked = tokio::task::spawn_blocking(move || check_evidence(&bytes)).await;
                match checked {
                    Ok(Ok(evidence)) => {
                        let accepted = app.market.accept_evidence(evidence);
                        tracing::info!(peer = %peer_id, ?accepted, "received a fraud proof");
                    }
                    Ok(Err(e)) => {
                        tracing::error!(peer = %peer_id, "custommsg: refused evidence: {e}")
                    }
                    Err(e) => tracing::error!("custommsg: evidence check failed: {e}"),
                }
            });
            Ok(())
        }
        Some(Message::Answer(info)) => {
            tracing::info!(peer = %peer_id, farmer = info.farmer, "learned a dstore peer");
            state.record(&peer_id, info);
            Ok(())
        }
    }
}

/// `dstore-discover node_id [timeout_secs]`.
pub async fn discover(state: &State, params: &Value) -> Result<Value, (i64, String)> {
    let usage = || {
        (
            -1,
            "usage: dstore-discover node_id [timeout_secs]".to_string(),
        )
    };
    let (node_id, timeout) = match params {
        Value::Array(items) if !items.is_empty() && items.len() <= 2 => {
            (items[0].clone(), items.get(1).cloned())
        }
        Value::Object(map) => {
            if let Some(k) = map.keys().find(|k| *k != "node_id" && *k != "timeout_secs") {
                return Err((-8, format!("Unknown named parameter {k}")));
            }
            (
                map.get("node_id").cloned().ok_or_else(usage)?,
                map.get("timeout_secs").cloned(),
            )
        }
        _ => return Err(usage()),
    };
    let node_id = node_id
        .as_str()
        .filter(|s| s.len() == 66 && hex::decode(s).is_ok())
        .ok_or((-3, "node_id must be a 33-byte hex node id".to_string()))?
        .to_lowercase();
    let timeout = match timeout {
        None | Some(Value::Null) => DEFAULT_TIMEOUT_SECS,
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or((-3, "timeout_secs must be a whole number".into()))?,
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| (-3, "timeout_secs must be a whole number".to_string()))?,
        Some(_) => return Err((-3, "timeout_secs must be a whole number".into())),
    };
    let mut learned = state.learned.subscribe();
    let before = *learned.borrow_and_update();
    let msg = encode(KIND_REQUEST, &[]);
    call(
        &state.rpc_path,
        "sendcustommsg",
        json!({"node_id": node_id, "msg": msg}),
    )
    .await
    .map_err(|e| (-1, format!("sendcustommsg to {node_id}: {e}")))?;
    let wait = async {
        loop {
            if let Some(info) = state.get(&node_id).filter(|i| i.seq > before) {
                return info;
            }
            if learned.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(timeout), wait).await {
        Ok(info) => Ok(info.json(&node_id)),
        Err(_) => Err((
            -1,
            format!("no dstore answer from {node_id} within {timeout} s"),
        )),
    }
}

/// `dstore-peers`: every answer recorded, by node id.
pub fn peers(state: &State) -> Value {
    let peers = state.peers.lock().unwrap_or_else(|e| e.into_inner());
    let mut list: Vec<_> = peers.iter().collect();
    list.sort_by(|a, b| a.0.cmp(b.0));
    json!({"peers": list.into_iter().map(|(id, info)| info.json(id)).collect::<Vec<_>>()})
}

/// One call to lightningd's JSON-RPC socket.
pub async fn call(rpc_path: &Path, method: &str, params: Value) -> Result<Value, String> {
    let mut rpc = cln_rpc::ClnRpc::new(rpc_path)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", rpc_path.display()))?;
    rpc.call_raw::<Value, Value>(method, &params)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_bad_ones_are_refused() {
        assert_eq!(encode(KIND_REQUEST, &[]), "d5a101");
        assert_eq!(decode("d5a101").unwrap(), Some(Message::Request));
        assert_eq!(decode("1234ff").unwrap(), None, "another plugin's type");
        let body = json!({"farmer": true, "network": "regtest", "peer_url": "http://127.0.0.1:9", "identity": "ab".repeat(32)});
        let Some(Message::Answer(info)) =
            decode(&encode(KIND_ANSWER, body.to_string().as_bytes())).unwrap()
        else {
            panic!()
        };
        assert_eq!(info.peer_url.as_deref(), Some("http://127.0.0.1:9"));
        for bad in [
            "zz",
            "d5",
            "d5a1",
            "d5a109",
            &encode(KIND_ANSWER, b"not json"),
            &encode(KIND_ANSWER, br#"{"farmer":true,"peer_url":"ftp://x"}"#),
        ] {
            assert!(decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn adverts_must_verify_and_evidence_is_size_capped() {
        use bitcoin::secp256k1::{Keypair, SecretKey, SECP256K1};
        let key = Keypair::from_secret_key(SECP256K1, &SecretKey::from_slice(&[7; 32]).unwrap());
        let terms = crate::market::advert::AdvertTerms {
            network: "regtest".into(),
            peer_url: "http://127.0.0.1:9".into(),
            price_per_download_sat: 1,
            max_file_bytes: 2,
            free_bytes: 3,
            min_claim_window_blocks: 6,
            lightning: None,
        };
        let advert = crate::market::advert::signed_advert(&key, terms);
        let body = serde_json::to_vec(&advert).unwrap();
        let Some(Message::Advert(got)) = decode(&encode(KIND_ADVERT, &body)).unwrap() else {
            panic!()
        };
        assert_eq!(*got, advert);
        let mut forged = advert.clone();
        forged.advert.price_per_download_sat = 0;
        let body = serde_json::to_vec(&forged).unwrap();
        assert!(
            decode(&encode(KIND_ADVERT, &body)).is_err(),
            "bad signature"
        );
        assert!(decode(&encode(KIND_ADVERT, b"{}")).is_err());
        assert_eq!(
            decode(&encode(KIND_EVIDENCE, b"{}")).unwrap(),
            Some(Message::Evidence(b"{}".to_vec())),
            "checked by the hook's task, not here"
        );
        let huge = vec![b' '; MAX_EVIDENCE_BODY + 1];
        assert!(decode(&encode(KIND_EVIDENCE, &huge)).is_err());
    }
}
