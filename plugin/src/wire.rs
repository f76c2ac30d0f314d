//! The renter ↔ farmer transport: the farmer's HTTP paths, the signed-envelope exchange,
//! the authenticated bulk streams (ciphertext upload, sealed copy, CRS) and the renter's
//! client for all of them.
//!
//! Envelopes (PROTOCOL.md 7) go to `POST /dstore/v1/msg/<kind>` and the farmer answers
//! with its own signed envelope. Bulk data never travels in envelopes: a bulk request
//! carries an `x-dstore-auth` header, the renter identity's Schnorr signature over the
//! method, path and query, the SHA-256 of the body and the download it belongs to
//! ([`BulkRequest`]), so a header seen on the wire authorises no other bytes. An upload
//! goes in parts of [`UPLOAD_PART`] bytes, each signed, up to [`UPLOAD_WINDOW`] of them in
//! flight; an upload part's signed hash is its digest over its Merkle leaves
//! ([`BulkRequest::upload_part`]), every other body's is its SHA-256. Its content is also
//! bound later by a signed message (root_C in `upload_done`, the CRS hash in `crs_offer`).
//!
//! A refusal's `next_seq` (where the farmer's counter stands) is only believed when the
//! refusal carries a [`ResyncHint`] signed by the farmer for the refused envelope.

use std::path::Path;
use std::time::Duration;

use bitcoin::secp256k1::{schnorr, Keypair, Message, XOnlyPublicKey, SECP256K1};
use dstore_protocol::audit::merkle_audit::{parse_answer, MerkleAnswer, MAX_ANSWER_JSON_BYTES};
use dstore_protocol::audit::wire::{MerkleRequest, MERKLE_PATH};
use dstore_protocol::hashing::{sha256, tagged_hash};
use dstore_protocol::messages::ResyncHint;
use dstore_protocol::peer::{self, Expected, Opened, PeerError, PeerMessage, MAX_ENVELOPE_BYTES};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// The header carrying a bulk request's signature.
pub const AUTH_HEADER: &str = "x-dstore-auth";
/// Bytes per signed upload request (the farmer holds one part in memory to check it).
pub const UPLOAD_PART: usize = 4 << 20;
/// Upload parts a renter keeps in flight at once; the farmer waits for the parts before
/// one (up to this many parts ahead of what it stored) instead of refusing it.
pub const UPLOAD_WINDOW: usize = 4;
/// The farmer's error code for a bulk body that does not match its signed hash (a
/// transfer altered on the way: the renter sends the part again).
pub const BODY_MISMATCH: i64 = -41;

/// Largest JSON reply read from a farmer (the envelope limit).
const MAX_REPLY_BYTES: usize = MAX_ENVELOPE_BYTES;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Small JSON calls (`info`, upload status).
const QUICK_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest silence accepted in the middle of a reply.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A bulk transfer gets at least this long, plus its size at [`MIN_TRANSFER_RATE`].
const TRANSFER_FLOOR: Duration = Duration::from_secs(120);
/// The slowest transfer rate accepted, in bytes a second.
const MIN_TRANSFER_RATE: u64 = 256 * 1024;
/// The CRS upload (about 36.5 MB) may wait while the farmer checks it.
const CRS_TIMEOUT: Duration = Duration::from_secs(1_800);

pub fn info_path() -> String {
    "/dstore/v1/info".to_string()
}

pub fn message_path(kind: &str) -> String {
    format!("/dstore/v1/msg/{kind}")
}

pub fn upload_path(contract_id: &[u8; 32]) -> String {
    format!("/dstore/v1/upload/{}", hex::encode(contract_id))
}

pub fn sealed_path(contract_id: &[u8; 32]) -> String {
    format!("/dstore/v1/sealed/{}", hex::encode(contract_id))
}

pub fn crs_path(contract_id: &[u8; 32]) -> String {
    format!("/dstore/v1/crs/{}", hex::encode(contract_id))
}

/// What `GET /dstore/v1/info` says about a farmer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FarmerInfo {
    pub identity: XOnlyPublicKey,
    pub network: String,
    pub price_per_download_sat: u64,
    pub max_file_bytes: u64,
    /// The farmer's Lightning node, when it sells downloads over Lightning (mode N).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lightning: Option<crate::ln::LnPeerInfo>,
}

/// An error as the farmer reports it (bitcoind's JSON-RPC error shape).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: i64,
    pub message: String,
    /// For a replayed or out-of-order message: the sequence number the farmer expects,
    /// so a renter that crashed before recording a reply can resynchronise.
    /// Only believed with `resync`; the renter's client clears it otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_seq: Option<u64>,
    /// The farmer's signed [`ResyncHint`] envelope for the refused message (JSON text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync: Option<String>,
}

/// What `GET /dstore/v1/upload/<id>` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadStatus {
    pub received: u64,
    pub expected: u64,
}

/// One upload part ready to send: where it starts, its bytes and their
/// [`dstore_protocol::merkle::part_digest`].
#[derive(Debug, Clone)]
pub struct UploadPart {
    pub offset: u64,
    pub bytes: bytes::Bytes,
    pub digest: [u8; 32],
}

impl UploadPart {
    /// The part of `bytes` at `offset`, its digest computed here (one pass over the bytes;
    /// call it off the async threads).
    pub fn new(offset: u64, bytes: Vec<u8>) -> Self {
        let leaves = dstore_protocol::merkle::part_leaves(&bytes);
        Self::with_leaves(offset, bytes, &leaves)
    }

    /// The part of `bytes` at `offset` whose leaves are `leaves` (computed by the caller
    /// from these bytes).
    pub fn with_leaves(offset: u64, bytes: Vec<u8>, leaves: &[[u8; 32]]) -> Self {
        let digest = dstore_protocol::merkle::part_digest(bytes.len() as u64, leaves);
        UploadPart {
            offset,
            bytes: bytes::Bytes::from(bytes),
            digest,
        }
    }
}

/// What a bulk request's signature covers: the method, the path and query, the SHA-256 of
/// the body (of nothing for a GET) and, for the sealed copy and the CRS, the download
/// they belong to (zeros for an upload). A header seen on the wire therefore authorises
/// only these exact bytes for this exact request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkRequest<'a> {
    pub method: &'a str,
    pub path_and_query: &'a str,
    pub body_sha256: [u8; 32],
    pub download_id: [u8; 32],
}

impl<'a> BulkRequest<'a> {
    /// A request carrying `body` (an upload part, a CRS) or nothing (a GET).
    pub fn new(
        method: &'a str,
        path_and_query: &'a str,
        body: &[u8],
        download_id: [u8; 32],
    ) -> Self {
        BulkRequest {
            method,
            path_and_query,
            body_sha256: sha256(&[body]),
            download_id,
        }
    }

    /// An upload part at `path_and_query`: the body's hash is the part's
    /// [`dstore_protocol::merkle::part_digest`] (over its Merkle leaves, which the farmer
    /// needs anyway), not a SHA-256 of its bytes, so neither side hashes a part twice.
    pub fn upload_part(path_and_query: &'a str, digest: [u8; 32]) -> Self {
        BulkRequest {
            method: "PUT",
            path_and_query,
            body_sha256: digest,
            download_id: [0; 32],
        }
    }

    fn message(&self) -> Message {
        Message::from_digest(tagged_hash(
            "dstore/bulk/v2",
            &[
                self.method.as_bytes(),
                &[0],
                self.path_and_query.as_bytes(),
                &[0],
                &self.body_sha256,
                &self.download_id,
            ],
        ))
    }
}

/// The renter's `x-dstore-auth` header value for `request`: `<body sha256>.<signature>`,
/// both hex. The body's hash travels first so the farmer checks the signature before it
/// reads a byte of the body, then checks the body against the hash.
pub fn sign_bulk(identity: &Keypair, request: &BulkRequest<'_>) -> String {
    let signature = SECP256K1.sign_schnorr_no_aux_rand(&request.message(), identity);
    format!(
        "{}.{}",
        hex::encode(request.body_sha256),
        hex::encode(signature.serialize())
    )
}

/// The body hash an `x-dstore-auth` header claims (not yet verified).
pub fn claimed_body_hash(header: &str) -> Option<[u8; 32]> {
    let (hash, _) = header.split_once('.')?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hash, &mut out).ok()?;
    Some(out)
}

/// Checks a bulk request's header against `request` (whose `body_sha256` is the hash the
/// body must have) and `renter`'s key.
pub fn verify_bulk(renter: &XOnlyPublicKey, request: &BulkRequest<'_>, header: &str) -> bool {
    let Some((_, signature)) = header.split_once('.') else {
        return false;
    };
    if claimed_body_hash(header) != Some(request.body_sha256) {
        return false;
    }
    let Ok(bytes) = hex::decode(signature) else {
        return false;
    };
    let Ok(signature) = schnorr::Signature::from_slice(&bytes) else {
        return false;
    };
    SECP256K1
        .verify_schnorr(&signature, &request.message(), renter)
        .is_ok()
}

/// The sequence number a farmer-signed resynchronisation hint (`resync` in a refusal)
/// lets the renter jump to after it sent message `seq` of `contract_id` as `envelope`, or
/// `None` when the hint is missing, forged, for another message or asks for more than the
/// protocol allows (see [`ResyncHint::resync_to`]).
pub fn verified_resync(
    hint: &str,
    contract_id: [u8; 32],
    farmer: XOnlyPublicKey,
    seq: u64,
    envelope: &[u8],
) -> Option<u64> {
    let expected = Expected {
        contract_id,
        sender: Some(farmer),
    };
    let opened = peer::open::<ResyncHint>(hint.as_bytes(), &expected).ok()?;
    opened.body.resync_to(seq, &sha256(&[envelope]))
}

/// Why a call to the farmer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerCallError {
    #[error("cannot reach the farmer at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the farmer refused: {} (code {})", .0.message, .0.code)]
    Refused(ErrorBody),
    #[error("the farmer's reply is invalid: {0}")]
    BadReply(#[from] PeerError),
    #[error("the farmer's reply is malformed: {0}")]
    Malformed(String),
    #[error("the farmer's reply is larger than the {limit}-byte limit")]
    Oversized { limit: u64 },
    #[error("the farmer sent nothing for {0:?}: transfer abandoned")]
    Stalled(Duration),
    #[error("local file: {0}")]
    Io(#[from] std::io::Error),
}

/// The TLS setup every peer client shares (for `https://` farmer URLs). Building one loads
/// the system's root certificates, about 30 ms of CPU, which a renter would otherwise pay
/// for every call it makes to a farmer. None if it cannot be built: each client then
/// builds its own, as it did before.
fn shared_tls() -> Option<native_tls::TlsConnector> {
    static TLS: std::sync::OnceLock<Option<native_tls::TlsConnector>> = std::sync::OnceLock::new();
    TLS.get_or_init(|| native_tls::TlsConnector::new().ok())
        .clone()
}

/// The renter's connection to one farmer. Every reply is size-capped, redirects are never
/// followed (a farmer is one `http://host:port`), and bulk reads stop when the farmer goes
/// quiet for [`IDLE_TIMEOUT`] or exceeds a total time proportional to their size.
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    base: String,
    identity: Keypair,
}

impl PeerClient {
    /// A client for the farmer at `base` (`http://host:port`), signing as `identity`.
    pub fn new(base: &str, identity: Keypair) -> Self {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(tls) = shared_tls() {
            builder = builder.use_preconfigured_tls(tls);
        }
        let http = builder
            .build()
            .expect("a reqwest client with static settings always builds");
        PeerClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            identity,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn unreachable(&self, e: reqwest::Error) -> PeerCallError {
        PeerCallError::Unreachable {
            url: self.base.clone(),
            reason: e.without_url().to_string(),
        }
    }

    /// Reads a reply body of at most `limit` bytes, each read within [`IDLE_TIMEOUT`].
    async fn read_capped(
        &self,
        mut response: reqwest::Response,
        limit: usize,
    ) -> Result<Vec<u8>, PeerCallError> {
        let too_big = PeerCallError::Oversized {
            limit: limit as u64,
        };
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_big);
        }
        let mut body = Vec::new();
        while let Some(chunk) = idle(response.chunk())
            .await?
            .map_err(|e| self.unreachable(e))?
        {
            if body.len() + chunk.len() > limit {
                return Err(too_big);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// The body of a successful reply, or the farmer's refusal. A refusal's sequence
    /// hints are never trusted here: only [`PeerClient::exchange`] checks a signed one.
    async fn checked(&self, response: reqwest::Response) -> Result<Vec<u8>, PeerCallError> {
        self.checked_within(response, MAX_REPLY_BYTES).await
    }

    /// [`PeerClient::checked`] with a reply of at most `limit` bytes.
    async fn checked_within(
        &self,
        response: reqwest::Response,
        limit: usize,
    ) -> Result<Vec<u8>, PeerCallError> {
        let status = response.status();
        let body = self.read_capped(response, limit).await?;
        if status.is_success() {
            return Ok(body);
        }
        Err(match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(mut error) => {
                error.next_seq = None;
                PeerCallError::Refused(error)
            }
            Err(_) => PeerCallError::Malformed(format!("HTTP {status}")),
        })
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, PeerCallError> {
        let response = self
            .http
            .get(self.url(path))
            .timeout(QUICK_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let body = self.checked(response).await?;
        serde_json::from_slice(&body).map_err(|e| PeerCallError::Malformed(e.to_string()))
    }

    /// The farmer's identity and terms.
    pub async fn info(&self) -> Result<FarmerInfo, PeerCallError> {
        self.get_json(&info_path()).await
    }

    /// Sends `request` as message `seq` of contract `contract_id` and opens the farmer's
    /// reply of kind `R`, signed by `farmer`. A refusal keeps a `next_seq` only when the
    /// farmer signed a resynchronisation hint for this very envelope ([`verified_resync`]).
    pub async fn exchange<Q: PeerMessage, R: PeerMessage>(
        &self,
        contract_id: [u8; 32],
        seq: u64,
        request: &Q,
        farmer: XOnlyPublicKey,
        timeout: Duration,
    ) -> Result<Opened<R>, PeerCallError> {
        let envelope = peer::sign(&self.identity, contract_id, seq, request)?;
        let response = self
            .http
            .post(self.url(&message_path(Q::KIND)))
            .header("content-type", "application/json")
            .timeout(timeout)
            .body(envelope.clone())
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let body = match self.checked(response).await {
            Err(PeerCallError::Refused(mut error)) => {
                error.next_seq = error
                    .resync
                    .take()
                    .and_then(|hint| verified_resync(&hint, contract_id, farmer, seq, &envelope));
                return Err(PeerCallError::Refused(error));
            }
            other => other?,
        };
        let expected = Expected {
            contract_id,
            sender: Some(farmer),
        };
        Ok(peer::open(&body, &expected)?)
    }

    /// The farmer's answer to an off-chain Merkle challenge (`POST` [`MERKLE_PATH`]): read
    /// up to the largest honest answer, parsed but not verified (the caller checks it
    /// against the contract's root with `merkle_audit::verify_answer`).
    pub async fn merkle_audit(
        &self,
        request: &MerkleRequest,
    ) -> Result<MerkleAnswer, PeerCallError> {
        let response = self
            .http
            .post(self.url(MERKLE_PATH))
            .timeout(QUICK_TIMEOUT)
            .json(request)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let body = self.checked_within(response, MAX_ANSWER_JSON_BYTES).await?;
        parse_answer(&body).map_err(|e| PeerCallError::Malformed(e.to_string()))
    }

    /// How many bytes of the upload the farmer holds.
    pub async fn upload_status(
        &self,
        contract_id: &[u8; 32],
    ) -> Result<UploadStatus, PeerCallError> {
        self.get_json(&upload_path(contract_id)).await
    }

    /// Sends `file` from byte `offset` to its end as the next parts of the upload, one
    /// signed PUT per [`UPLOAD_PART`] bytes (each signature binds its part's digest), up to
    /// [`UPLOAD_WINDOW`] of them in flight; `progress` is told the absolute position after
    /// each part the farmer stored.
    pub async fn upload_from(
        &self,
        contract_id: &[u8; 32],
        file: &Path,
        offset: u64,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<UploadStatus, PeerCallError> {
        let mut reader = tokio::fs::File::open(file).await?;
        let total = reader.metadata().await?.len();
        reader.seek(std::io::SeekFrom::Start(offset)).await?;
        let (parts_tx, parts_rx) = tokio::sync::mpsc::channel(UPLOAD_WINDOW);
        let reading = async move {
            let mut at = offset;
            while at < total {
                let len = (total - at).min(UPLOAD_PART as u64) as usize;
                let mut part = vec![0u8; len];
                reader.read_exact(&mut part).await?;
                let part = tokio::task::spawn_blocking(move || UploadPart::new(at, part))
                    .await
                    .map_err(std::io::Error::other)?;
                if parts_tx.send(part).await.is_err() {
                    break;
                }
                at += len as u64;
            }
            Ok::<_, PeerCallError>(())
        };
        let sending = self.put_parts(contract_id, parts_rx, progress);
        let (read, sent) = tokio::join!(reading, sending);
        let sent = sent?;
        read?;
        Ok(sent.unwrap_or(UploadStatus {
            received: offset,
            expected: total,
        }))
    }

    /// Sends the parts `parts` hands over, keeping up to [`UPLOAD_WINDOW`] PUTs in flight
    /// (the farmer takes each in offset order and answers once it is durable), until the
    /// channel ends or a PUT fails; `progress` gets each count the farmer reports. Returns
    /// the last status, None if nothing was sent.
    pub async fn put_parts(
        &self,
        contract_id: &[u8; 32],
        parts: tokio::sync::mpsc::Receiver<UploadPart>,
        progress: impl Fn(u64),
    ) -> Result<Option<UploadStatus>, PeerCallError> {
        use futures::StreamExt;
        // Each PUT owns its client handle (a clone shares the connection pool), so the
        // stream's futures borrow nothing and callers' tasks stay Send.
        let id = *contract_id;
        let puts = futures::stream::unfold(parts, move |mut parts| {
            let client = self.clone();
            async move {
                let part = parts.recv().await?;
                Some((async move { client.put_part(&id, part).await }, parts))
            }
        })
        .buffered(UPLOAD_WINDOW);
        futures::pin_mut!(puts);
        let mut last = None;
        while let Some(status) = puts.next().await {
            let status = status?;
            progress(status.received);
            last = Some(status);
        }
        Ok(last)
    }

    /// Sends `part` (one signed PUT); the farmer's count after it.
    pub async fn put_part(
        &self,
        contract_id: &[u8; 32],
        part: UploadPart,
    ) -> Result<UploadStatus, PeerCallError> {
        let path_and_query = format!("{}?offset={}", upload_path(contract_id), part.offset);
        let auth = sign_bulk(
            &self.identity,
            &BulkRequest::upload_part(&path_and_query, part.digest),
        );
        let response = self
            .http
            .put(self.url(&path_and_query))
            .header(AUTH_HEADER, auth)
            .timeout(transfer_timeout(part.bytes.len() as u64))
            .body(part.bytes)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let body = self.checked(response).await?;
        serde_json::from_slice(&body).map_err(|e| PeerCallError::Malformed(e.to_string()))
    }

    /// Downloads the sealed copy E of download `download_id` into `dest`; returns its
    /// length. Reads at most `limit` bytes (the length the signed transcript announced),
    /// gives up when the farmer is silent for [`IDLE_TIMEOUT`] or the whole transfer takes
    /// longer than its size allows, so a stalling farmer cannot hold the caller for ever.
    /// Every chunk is also handed to `tap` as it arrives (so E is hashed while it is
    /// received); a closed `tap` is ignored.
    pub async fn fetch_sealed(
        &self,
        contract_id: &[u8; 32],
        download_id: &[u8; 32],
        dest: &Path,
        limit: u64,
        progress: impl Fn(u64),
        tap: tokio::sync::mpsc::Sender<bytes::Bytes>,
    ) -> Result<u64, PeerCallError> {
        let deadline = transfer_timeout(limit);
        tokio::time::timeout(
            deadline,
            self.fetch_sealed_within(contract_id, download_id, dest, limit, progress, tap),
        )
        .await
        .map_err(|_| PeerCallError::Stalled(deadline))?
    }

    async fn fetch_sealed_within(
        &self,
        contract_id: &[u8; 32],
        download_id: &[u8; 32],
        dest: &Path,
        limit: u64,
        progress: impl Fn(u64),
        tap: tokio::sync::mpsc::Sender<bytes::Bytes>,
    ) -> Result<u64, PeerCallError> {
        let path = sealed_path(contract_id);
        let auth = sign_bulk(
            &self.identity,
            &BulkRequest::new("GET", &path, &[], *download_id),
        );
        let mut response = idle(
            self.http
                .get(self.url(&path))
                .header(AUTH_HEADER, auth)
                .send(),
        )
        .await?
        .map_err(|e| self.unreachable(e))?;
        if !response.status().is_success() {
            return Err(self
                .checked(response)
                .await
                .err()
                .unwrap_or_else(|| PeerCallError::Malformed("a refusal without an error".into())));
        }
        if response.content_length().is_some_and(|n| n > limit) {
            return Err(PeerCallError::Oversized { limit });
        }
        let mut out = tokio::fs::File::create(dest).await?;
        let mut written = 0u64;
        while let Some(chunk) = idle(response.chunk())
            .await?
            .map_err(|e| self.unreachable(e))?
        {
            written += chunk.len() as u64;
            if written > limit {
                return Err(PeerCallError::Oversized { limit });
            }
            // The hashing thread may have stopped (it only stops at the end): ignored.
            let _ = tap.send(chunk.clone()).await;
            out.write_all(&chunk).await?;
            progress(written);
        }
        out.sync_all().await?;
        Ok(written)
    }

    /// Sends the compressed CRS for download `download_id` of contract `contract_id`.
    pub async fn put_crs(
        &self,
        contract_id: &[u8; 32],
        download_id: &[u8; 32],
        crs: Vec<u8>,
    ) -> Result<(), PeerCallError> {
        let path = crs_path(contract_id);
        let auth = sign_bulk(
            &self.identity,
            &BulkRequest::new("PUT", &path, &crs, *download_id),
        );
        let response = self
            .http
            .put(self.url(&path))
            .header(AUTH_HEADER, auth)
            .timeout(CRS_TIMEOUT)
            .body(crs)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.checked(response).await.map(|_| ())
    }
}

/// `future`, or [`PeerCallError::Stalled`] when it does not finish within [`IDLE_TIMEOUT`].
async fn idle<T>(future: impl std::future::Future<Output = T>) -> Result<T, PeerCallError> {
    tokio::time::timeout(IDLE_TIMEOUT, future)
        .await
        .map_err(|_| PeerCallError::Stalled(IDLE_TIMEOUT))
}

/// The longest a bulk transfer of `bytes` may take: a floor, plus the time at the slowest
/// rate accepted.
pub fn transfer_timeout(bytes: u64) -> Duration {
    TRANSFER_FLOOR + Duration::from_secs(bytes / MIN_TRANSFER_RATE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::secp256k1::SecretKey;

    fn key(seed: u8) -> Keypair {
        Keypair::from_secret_key(SECP256K1, &SecretKey::from_slice(&[seed; 32]).unwrap())
    }

    #[test]
    fn bulk_signatures_bind_method_path_body_and_download() {
        let (renter, other) = (key(3), key(4));
        let pk = renter.x_only_public_key().0;
        let path = format!("{}?offset=0", upload_path(&[1; 32]));
        let request = BulkRequest::new("PUT", &path, b"part", [0; 32]);
        let header = sign_bulk(&renter, &request);
        assert!(verify_bulk(&pk, &request, &header));
        assert_eq!(claimed_body_hash(&header), Some(sha256(&[b"part"])));
        let moved = format!("{}?offset=1", upload_path(&[1; 32]));
        for changed in [
            BulkRequest::new("PUT", &moved, b"part", [0; 32]),
            BulkRequest::new("PUT", &path, b"other bytes", [0; 32]),
            BulkRequest::new("GET", &path, b"part", [0; 32]),
            BulkRequest::new("PUT", &path, b"part", [9; 32]),
        ] {
            assert!(!verify_bulk(&pk, &changed, &header), "{changed:?}");
        }
        assert!(!verify_bulk(&pk, &request, &sign_bulk(&other, &request)));
        let (hash, sig) = header.split_once('.').unwrap();
        let forged_hash = format!("{}.{sig}", hex::encode(sha256(&[b"other bytes"])));
        let body_of_forgery = BulkRequest::new("PUT", &path, b"other bytes", [0; 32]);
        assert!(!verify_bulk(&pk, &body_of_forgery, &forged_hash));
        for junk in ["", "zz", hash, sig, "..", &format!("{hash}.zz")] {
            assert!(!verify_bulk(&pk, &request, junk), "{junk}");
        }
    }

    #[test]
    fn only_a_farmer_signed_hint_for_this_envelope_resyncs_one_step() {
        let (renter, farmer, stranger) = (key(3), key(5), key(6));
        let id = [2; 32];
        let fpk = farmer.x_only_public_key().0;
        let sent = peer::sign(
            &renter,
            id,
            4,
            &ResyncHint {
                next_seq: 0,
                refused: [0; 32],
            },
        )
        .unwrap();
        let hint = |by: &Keypair, contract, next_seq, refused: &[u8]| {
            let body = ResyncHint {
                next_seq,
                refused: sha256(&[refused]),
            };
            String::from_utf8(peer::sign(by, contract, next_seq, &body).unwrap()).unwrap()
        };
        assert_eq!(
            verified_resync(&hint(&farmer, id, 5, &sent), id, fpk, 4, &sent),
            Some(5)
        );
        let refused = [
            hint(&stranger, id, 5, &sent),
            hint(&farmer, [3; 32], 5, &sent),
            hint(&farmer, id, 5, b"another envelope"),
            hint(&farmer, id, 1_000, &sent),
            hint(&farmer, id, 3, &sent),
            "{\"next_seq\":5}".to_string(),
            String::new(),
        ];
        for bad in refused {
            assert_eq!(verified_resync(&bad, id, fpk, 4, &sent), None, "{bad}");
        }
    }

    #[test]
    fn transfer_time_grows_with_size_from_a_floor() {
        assert_eq!(transfer_timeout(0), TRANSFER_FLOOR);
        assert!(transfer_timeout(4 << 30) > Duration::from_secs(3_600));
    }
}
