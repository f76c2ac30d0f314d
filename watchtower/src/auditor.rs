//! The auditor's I/O (PROTOCOL.md 5): salt releases and off-chain Merkle challenges posted
//! to the farmer's peer endpoint. Each request runs in its own task with a timeout, so a
//! slow or absent farmer never holds up block processing; the answers come back to the
//! tower as [`AuditorOutcome`]s, which it records and stores.
//!
//! A release is tried at most once per tip in a run (a restart tries again at once), and
//! never twice at the same time; so is a Merkle audit per watch. Nothing secret is logged,
//! and a farmer's error text has any salt it echoes redacted before it is kept.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use bitcoin::hashes::Hash;
use bitcoin::Txid;
use dstore_protocol::audit::merkle_audit::{parse_answer, verify_answer, MAX_ANSWER_JSON_BYTES};
use dstore_protocol::audit::wire::{
    MerkleRequest, RevealReply, RevealRequest, MERKLE_PATH, REVEAL_PATH,
};
use dstore_protocol::watch::auditor::{MerkleRecord, ReleaseDue};
use dstore_protocol::watch::registration::AuditorSpec;
use dstore_protocol::watch::WatchId;
use tokio::sync::mpsc;

use crate::store::Tip;

/// How long a salt release may take.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a Merkle challenge may take (the farmer reads its data once to answer).
pub const MERKLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest reply to a release.
const MAX_REVEAL_REPLY_BYTES: usize = 64 * 1024;

/// How often and how hard to run off-chain Merkle audits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditorSettings {
    /// Blocks between Merkle audits of a contract; 0 turns them off.
    pub merkle_every: u32,
    /// Segments per challenge.
    pub merkle_k: u32,
}

/// A finished request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditorOutcome {
    /// A salt release sent at `tip`: the claim's txid, or why it failed.
    Release {
        id: WatchId,
        due: ReleaseDue,
        tip: u32,
        result: Result<Txid, String>,
    },
    /// A Merkle audit.
    Merkle { id: WatchId, record: MerkleRecord },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Request {
    Release(WatchId, u32, u32),
    Merkle(WatchId),
}

/// Sends the auditor's requests and tracks which are in flight.
pub struct Auditor {
    http: reqwest::Client,
    pub settings: AuditorSettings,
    outcomes: mpsc::UnboundedSender<AuditorOutcome>,
    in_flight: Mutex<HashSet<Request>>,
    /// The tip of the last release try per candidate in this run.
    tried: Mutex<HashMap<Request, u32>>,
}

impl Auditor {
    /// An auditor and the receiving end of its outcomes.
    pub fn new(settings: AuditorSettings) -> (Auditor, mpsc::UnboundedReceiver<AuditorOutcome>) {
        let (outcomes, receiver) = mpsc::unbounded_channel();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        let auditor = Auditor {
            http,
            settings,
            outcomes,
            in_flight: Mutex::new(HashSet::new()),
            tried: Mutex::new(HashMap::new()),
        };
        (auditor, receiver)
    }

    /// Whether `due` may be tried at `tip`: not in flight, not tried at this tip yet.
    pub fn may_release(&self, id: &WatchId, due: &ReleaseDue, tip: u32) -> bool {
        let request = Request::Release(*id, due.audit, due.candidate);
        !lock(&self.in_flight).contains(&request) && lock(&self.tried).get(&request) != Some(&tip)
    }

    /// Whether a Merkle audit of watch `id` may start (none in flight).
    pub fn may_audit(&self, id: &WatchId) -> bool {
        self.settings.merkle_every > 0 && !lock(&self.in_flight).contains(&Request::Merkle(*id))
    }

    /// Posts the release (already recorded by the caller) in its own task.
    pub fn send_release(
        &self,
        id: WatchId,
        due: ReleaseDue,
        tip: u32,
        url: &str,
        request: RevealRequest,
    ) {
        let key = Request::Release(id, due.audit, due.candidate);
        lock(&self.in_flight).insert(key);
        lock(&self.tried).insert(key, tip);
        let (http, outcomes) = (self.http.clone(), self.outcomes.clone());
        let url = endpoint(url, REVEAL_PATH);
        tokio::spawn(async move {
            let salt = hex::encode(request.secret.salt);
            let result = release(&http, &url, &request)
                .await
                .map_err(|e| redact(&e, &salt));
            let _ = outcomes.send(AuditorOutcome::Release {
                id,
                due,
                tip,
                result,
            });
        });
    }

    /// Challenges the farmer of watch `id` with the segments `tip`'s hash picks, in its own
    /// task, and checks the answer against the spec's root_C.
    pub fn send_merkle(&self, id: WatchId, tip: Tip, spec: &AuditorSpec) {
        lock(&self.in_flight).insert(Request::Merkle(id));
        let (http, outcomes) = (self.http.clone(), self.outcomes.clone());
        let url = endpoint(&spec.farmer_url, MERKLE_PATH);
        let check = MerkleCheck {
            contract_id: spec.book.terms.contract_id,
            root_c: spec.root_c,
            length: spec.length,
            k: self.settings.merkle_k,
            tip,
        };
        tokio::spawn(async move {
            let result = check.run(&http, &url).await;
            let record = MerkleRecord {
                height: tip.height,
                block_hash: tip.hash,
                k: check.k,
                ok: result.is_ok(),
                unreachable: matches!(result, Err(MerkleError::Unreachable(_))),
                error: result.err().map(|e| e.to_string()),
            };
            let _ = outcomes.send(AuditorOutcome::Merkle { id, record });
        });
    }

    /// Marks `outcome`'s request as no longer in flight.
    pub fn finished(&self, outcome: &AuditorOutcome) {
        let key = match outcome {
            AuditorOutcome::Release { id, due, .. } => {
                Request::Release(*id, due.audit, due.candidate)
            }
            AuditorOutcome::Merkle { id, .. } => Request::Merkle(*id),
        };
        lock(&self.in_flight).remove(&key);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// `base` (without a trailing slash) followed by `path`.
fn endpoint(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

/// Replaces every occurrence of the salt's hex (either case) in `text`.
fn redact(text: &str, salt_hex: &str) -> String {
    text.replace(salt_hex, "<salt>")
        .replace(&salt_hex.to_uppercase(), "<salt>")
}

/// POSTs a release; the claim's txid on HTTP 200.
async fn release(
    http: &reqwest::Client,
    url: &str,
    request: &RevealRequest,
) -> Result<Txid, String> {
    let response = http
        .post(url)
        .timeout(RELEASE_TIMEOUT)
        .json(request)
        .send()
        .await
        .map_err(|e| format!("cannot reach the farmer: {e}"))?;
    let status = response.status();
    let body = read_limited(response, MAX_REVEAL_REPLY_BYTES).await?;
    if !status.is_success() {
        return Err(http_error(status, &body));
    }
    let reply: RevealReply = serde_json::from_slice(&body)
        .map_err(|e| format!("the farmer's reply is not a reveal reply: {e}"))?;
    Ok(reply.claim_txid)
}

/// Why a Merkle audit did not pass: only [`MerkleError::Wrong`] is a failure; the
/// protocol retries [`MerkleError::Unreachable`] with back-off.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    /// No answer: the farmer could not be reached, or timed out (also mid-reply).
    #[error("{0}")]
    Unreachable(String),
    /// The farmer answered, and the answer is wrong (an HTTP error, an unreadable or
    /// oversized reply, or one that does not verify against root_C).
    #[error("{0}")]
    Wrong(String),
}

/// What a Merkle audit checks the answer against.
struct MerkleCheck {
    contract_id: [u8; 32],
    root_c: [u8; 32],
    length: u64,
    k: u32,
    tip: Tip,
}

impl MerkleCheck {
    async fn run(&self, http: &reqwest::Client, url: &str) -> Result<(), MerkleError> {
        let request = MerkleRequest {
            contract_id: self.contract_id,
            block_hash: self.tip.hash,
            k: self.k,
        };
        let response = http
            .post(url)
            .timeout(MERKLE_TIMEOUT)
            .json(&request)
            .send()
            .await
            .map_err(|e| MerkleError::Unreachable(format!("cannot reach the farmer: {e}")))?;
        let status = response.status();
        let body = read_limited(response, MAX_ANSWER_JSON_BYTES)
            .await
            .map_err(|e| match e {
                ReadError::Transport(e) => MerkleError::Unreachable(e),
                ReadError::TooLarge(e) => MerkleError::Wrong(e),
            })?;
        if !status.is_success() {
            return Err(MerkleError::Wrong(http_error(status, &body)));
        }
        let answer = parse_answer(&body).map_err(|e| MerkleError::Wrong(e.to_string()))?;
        let block = self.tip.hash.to_byte_array();
        verify_answer(
            &self.root_c,
            self.length,
            &self.contract_id,
            &block,
            self.k as usize,
            &answer,
        )
        .map_err(|e| MerkleError::Wrong(e.to_string()))
    }
}

fn http_error(status: reqwest::StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    format!(
        "the farmer answered HTTP {}: {}",
        status.as_u16(),
        text.trim()
    )
}

/// Why a reply body could not be read.
#[derive(Debug)]
enum ReadError {
    /// The connection broke or timed out mid-body.
    Transport(String),
    /// More than allowed.
    TooLarge(String),
}

impl From<ReadError> for String {
    fn from(e: ReadError) -> String {
        match e {
            ReadError::Transport(e) | ReadError::TooLarge(e) => e,
        }
    }
}

/// The response body, refused past `max` bytes (and on a timeout mid-body).
async fn read_limited(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ReadError::Transport(format!("reading the farmer's reply: {e}")))?
    {
        if body.len() + chunk.len() > max {
            return Err(ReadError::TooLarge(format!(
                "the farmer's reply exceeds {max} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_redaction() {
        assert_eq!(
            endpoint("http://f:1/", REVEAL_PATH),
            "http://f:1/dstore/v1/audit/reveal"
        );
        assert_eq!(
            redact("bad salt ABCD and abcd", "abcd"),
            "bad salt <salt> and <salt>"
        );
    }
}
