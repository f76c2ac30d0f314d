//! The renter ↔ farmer transport: the farmer's HTTP paths, the signed-envelope exchange,
//! the authenticated bulk streams (ciphertext upload, sealed copy, CRS) and the renter's
//! client for all of them.
//!
//! Envelopes (PROTOCOL.md 7) go to `POST /dstore/v1/msg/<kind>` and the farmer answers
//! with its own signed envelope. Bulk data never travels in envelopes: a PUT of bulk data
//! carries an `x-dstore-auth` header, the renter identity's Schnorr signature over the
//! request's path and query, and its content is bound later by a signed message (root_C
//! in `upload_done`, the CRS hash in `crs_offer`).

use std::path::Path;
use std::time::Duration;

use bitcoin::secp256k1::{schnorr, Keypair, Message, XOnlyPublicKey, SECP256K1};
use bytes::Bytes;
use dstore_protocol::hashing::tagged_hash;
use dstore_protocol::peer::{self, Expected, Opened, PeerError, PeerMessage};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// The header carrying a bulk request's signature.
pub const AUTH_HEADER: &str = "x-dstore-auth";

/// Bytes per body chunk when streaming a file.
const STREAM_CHUNK: usize = 1 << 20;

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
}

/// An error as the farmer reports it (bitcoind's JSON-RPC error shape).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: i64,
    pub message: String,
    /// For a replayed or out-of-order message: the sequence number the farmer expects,
    /// so a renter that crashed before recording a reply can resynchronise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_seq: Option<u64>,
}

/// What `GET /dstore/v1/upload/<id>` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadStatus {
    pub received: u64,
    pub expected: u64,
}

fn bulk_message(path_and_query: &str) -> Message {
    Message::from_digest(tagged_hash("dstore/bulk", &[path_and_query.as_bytes()]))
}

/// The renter's signature authorising a bulk request to `path_and_query`.
pub fn sign_bulk(identity: &Keypair, path_and_query: &str) -> String {
    let signature = SECP256K1.sign_schnorr_no_aux_rand(&bulk_message(path_and_query), identity);
    hex::encode(signature.serialize())
}

/// Checks a bulk request's signature by `renter`.
pub fn verify_bulk(renter: &XOnlyPublicKey, path_and_query: &str, header: &str) -> bool {
    let Ok(bytes) = hex::decode(header) else {
        return false;
    };
    let Ok(signature) = schnorr::Signature::from_slice(&bytes) else {
        return false;
    };
    SECP256K1
        .verify_schnorr(&signature, &bulk_message(path_and_query), renter)
        .is_ok()
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
    #[error("local file: {0}")]
    Io(#[from] std::io::Error),
}

/// The renter's connection to one farmer.
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    base: String,
    identity: Keypair,
}

impl PeerClient {
    /// A client for the farmer at `base` (`http://host:port`), signing as `identity`.
    pub fn new(base: &str, identity: Keypair) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .expect("a TLS-less reqwest client always builds");
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
            reason: e.to_string(),
        }
    }

    async fn checked(&self, response: reqwest::Response) -> Result<Bytes, PeerCallError> {
        let status = response.status();
        let body = response.bytes().await.map_err(|e| self.unreachable(e))?;
        if status.is_success() {
            return Ok(body);
        }
        Err(match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(error) => PeerCallError::Refused(error),
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
            .timeout(Duration::from_secs(30))
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
    /// reply of kind `R`, signed by `farmer` (`None` only before the farmer is known).
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
            .body(envelope)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let body = self.checked(response).await?;
        let expected = Expected {
            contract_id,
            sender: Some(farmer),
        };
        Ok(peer::open(&body, &expected)?)
    }

    /// How many bytes of the upload the farmer holds.
    pub async fn upload_status(
        &self,
        contract_id: &[u8; 32],
    ) -> Result<UploadStatus, PeerCallError> {
        self.get_json(&upload_path(contract_id)).await
    }

    /// Streams `file` from byte `offset` to its end as the next part of the upload;
    /// `progress` is told the absolute position after each chunk is handed to the socket.
    pub async fn upload_from(
        &self,
        contract_id: &[u8; 32],
        file: &Path,
        offset: u64,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<UploadStatus, PeerCallError> {
        let path_and_query = format!("{}?offset={offset}", upload_path(contract_id));
        let mut reader = tokio::fs::File::open(file).await?;
        let total = reader.metadata().await?.len();
        reader.seek(std::io::SeekFrom::Start(offset)).await?;
        let progress = std::sync::Arc::new(progress);
        let stream = futures::stream::unfold((reader, offset), move |(mut reader, pos)| {
            let progress = progress.clone();
            let mut buf = vec![0u8; STREAM_CHUNK];
            async move {
                match reader.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        progress(pos + n as u64);
                        Some((
                            Ok::<_, std::io::Error>(Bytes::from(buf)),
                            (reader, pos + n as u64),
                        ))
                    }
                    Err(e) => Some((Err(e), (reader, pos))),
                }
            }
        });
        let response = self
            .http
            .put(self.url(&path_and_query))
            .header(AUTH_HEADER, sign_bulk(&self.identity, &path_and_query))
            .header("content-length", total - offset)
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let body = self.checked(response).await?;
        serde_json::from_slice(&body).map_err(|e| PeerCallError::Malformed(e.to_string()))
    }

    /// Downloads the sealed copy E of the current download into `dest`; returns its length.
    /// Reads at most `limit` bytes (the length the signed transcript announced).
    pub async fn fetch_sealed(
        &self,
        contract_id: &[u8; 32],
        dest: &Path,
        limit: u64,
        progress: impl Fn(u64),
    ) -> Result<u64, PeerCallError> {
        let path = sealed_path(contract_id);
        let mut response = self
            .http
            .get(self.url(&path))
            .header(AUTH_HEADER, sign_bulk(&self.identity, &path))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if !response.status().is_success() {
            return Err(self.checked(response).await.unwrap_err());
        }
        let mut out = tokio::fs::File::create(dest).await?;
        let mut written = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(|e| self.unreachable(e))? {
            written += chunk.len() as u64;
            if written > limit {
                return Err(PeerCallError::Malformed(format!(
                    "the sealed copy is longer than the {limit} bytes announced"
                )));
            }
            out.write_all(&chunk).await?;
            progress(written);
        }
        out.sync_all().await?;
        Ok(written)
    }

    /// Sends the compressed CRS for contract `contract_id`'s current download.
    pub async fn put_crs(&self, contract_id: &[u8; 32], crs: Vec<u8>) -> Result<(), PeerCallError> {
        let path = crs_path(contract_id);
        let response = self
            .http
            .put(self.url(&path))
            .header(AUTH_HEADER, sign_bulk(&self.identity, &path))
            .timeout(Duration::from_secs(1_800))
            .body(crs)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.checked(response).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::secp256k1::SecretKey;

    #[test]
    fn bulk_signatures_bind_the_path_and_query() {
        let renter = Keypair::from_secret_key(SECP256K1, &SecretKey::from_slice(&[3; 32]).unwrap());
        let other = Keypair::from_secret_key(SECP256K1, &SecretKey::from_slice(&[4; 32]).unwrap());
        let key = renter.x_only_public_key().0;
        let path = format!("{}?offset=0", upload_path(&[1; 32]));
        let sig = sign_bulk(&renter, &path);
        assert!(verify_bulk(&key, &path, &sig));
        assert!(!verify_bulk(
            &key,
            &format!("{}?offset=1", upload_path(&[1; 32])),
            &sig
        ));
        assert!(!verify_bulk(&key, &path, &sign_bulk(&other, &path)));
        assert!(!verify_bulk(&key, &path, "zz"));
        assert!(!verify_bulk(&key, &path, ""));
    }
}
