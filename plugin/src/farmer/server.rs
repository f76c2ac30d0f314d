//! The farmer's peer endpoint (`--peer-bind`): HTTP/1.1 routes for signed envelopes and
//! the bulk streams (see [`crate::wire`]). An upload arrives in signed parts of a few MiB,
//! several in flight, each checked whole against the digest its signature covers before it
//! is stored, in offset order; the sealed copy is streamed from disk. A sequence refusal
//! carries a signed resync hint.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use super::{Farmer, FarmerError};
use crate::market::evidence::BoardError;
use crate::wire::{self, ErrorBody, UploadStatus, AUTH_HEADER};
use dstore_protocol::audit::wire::{MerkleRequest, RevealRequest};
use dstore_protocol::hashing::sha256;
use dstore_protocol::market::evidence::MAX_EVIDENCE_BYTES;
use dstore_protocol::peer::MAX_ENVELOPE_BYTES;

/// Largest upload part accepted in one request (the renter sends [`wire::UPLOAD_PART`]).
const MAX_UPLOAD_PART: usize = 2 * wire::UPLOAD_PART;
/// Largest CRS accepted (the real TX2 shape's compressed CRS is about 36.5 MB).
const MAX_CRS_BYTES: usize = 96 << 20;

type Body = BoxBody<Bytes, std::io::Error>;
type Reply = Response<Body>;

/// Serves the peer endpoint until `shutdown` resolves.
pub async fn serve(
    farmer: Arc<Farmer>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => break,
        };
        let Ok((stream, _)) = accepted else { continue };
        let farmer = farmer.clone();
        let service = hyper::service::service_fn(move |req| {
            let farmer = farmer.clone();
            async move { Ok::<_, Infallible>(route(&farmer, req).await) }
        });
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!("peer connection closed with error: {e}");
            }
        });
    }
}

async fn route(farmer: &Farmer, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().to_string();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let outcome = match (req.method().clone(), parts.as_slice()) {
        (Method::GET, ["dstore", "v1", "info"]) => Ok(json(&farmer.info())),
        (Method::POST, ["dstore", "v1", "msg", kind]) => {
            let kind = kind.to_string();
            message(farmer, &kind, req).await
        }
        (Method::GET, ["dstore", "v1", "upload", id]) => parse_id(id).and_then(|id| {
            let (received, expected) = farmer.upload_status(&id)?;
            Ok(json(&UploadStatus { received, expected }))
        }),
        (Method::PUT, ["dstore", "v1", "upload", id]) => match parse_id(id) {
            Ok(id) => upload(farmer, id, req).await,
            Err(e) => Err(e),
        },
        (Method::GET, ["dstore", "v1", "sealed", id]) => match parse_id(id) {
            Ok(id) => sealed(farmer, id, &req).await,
            Err(e) => Err(e),
        },
        (Method::POST, ["dstore", "v1", "audit", "reveal"]) => {
            match read_json::<RevealRequest>(req).await {
                Ok(request) => farmer.audit_reveal(request).await.map(|r| json(&r)),
                Err(e) => Err(e),
            }
        }
        (Method::POST, ["dstore", "v1", "audit", "merkle"]) => {
            match read_json::<MerkleRequest>(req).await {
                Ok(request) => farmer.merkle_answer(request).await.map(|r| json(&r)),
                Err(e) => Err(e),
            }
        }
        (Method::PUT, ["dstore", "v1", "crs", id]) => match parse_id(id) {
            Ok(id) => crs(farmer, id, req).await,
            Err(e) => Err(e),
        },
        (Method::POST, ["dstore", "v1", "evidence"]) => {
            Ok(board_reply(post_evidence(farmer, req).await))
        }
        (Method::GET, ["dstore", "v1", "evidence"]) => {
            Ok(board_reply(farmer.board().list().map(|items| json(&items))))
        }
        (Method::GET, ["dstore", "v1", "evidence", id]) => Ok(board_reply(evidence(farmer, id))),
        _ => Err(FarmerError::Invalid(format!("no such endpoint: {path}"))),
    };
    outcome.unwrap_or_else(|e| error(&e))
}

/// A small JSON request body (an auditor's release or challenge), size-limited.
async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<T, FarmerError> {
    const MAX_AUDIT_REQUEST_BYTES: usize = 4096;
    let bytes = Limited::new(req.into_body(), MAX_AUDIT_REQUEST_BYTES)
        .collect()
        .await
        .map_err(|_| {
            FarmerError::Peer(dstore_protocol::peer::PeerError::Oversized(
                MAX_AUDIT_REQUEST_BYTES + 1,
            ))
        })?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| FarmerError::Invalid(format!("malformed request: {e}")))
}

fn parse_id(text: &str) -> Result<[u8; 32], FarmerError> {
    let mut id = [0u8; 32];
    hex::decode_to_slice(text, &mut id)
        .map_err(|_| FarmerError::Invalid("a contract id is 64 hex digits".into()))?;
    Ok(id)
}

fn full(status: StatusCode, bytes: Vec<u8>) -> Reply {
    let body = Full::new(Bytes::from(bytes))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn json(value: &impl serde::Serialize) -> Reply {
    full(
        StatusCode::OK,
        serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec()),
    )
}

fn error(e: &FarmerError) -> Reply {
    let (status, body) = e.to_body();
    error_reply(e, status, &body)
}

fn error_reply(e: &FarmerError, status: u16, body: &ErrorBody) -> Reply {
    if status >= 500 {
        tracing::warn!("peer request failed: {e}");
    } else {
        tracing::info!("peer request refused: {e}");
    }
    full(
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        serde_json::to_vec(body).unwrap_or_default(),
    )
}

fn declared_length(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get(hyper::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The renter of contract `id` signed this bulk request: its method, path and query,
/// `download_id` and the body hash the header claims. Returns that hash: the caller
/// checks the body against it ([`check_body`]) before using a byte of it.
fn authorise(
    farmer: &Farmer,
    id: &[u8; 32],
    download_id: [u8; 32],
    req: &Request<Incoming>,
) -> Result<[u8; 32], FarmerError> {
    let renter = farmer.renter_of(id)?;
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or_default();
    let header = req
        .headers()
        .get(AUTH_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let body_sha256 = wire::claimed_body_hash(header).ok_or(FarmerError::Unauthorised)?;
    let request = wire::BulkRequest {
        method: req.method().as_str(),
        path_and_query,
        body_sha256,
        download_id,
    };
    if wire::verify_bulk(&renter, &request, header) {
        Ok(body_sha256)
    } else {
        Err(FarmerError::Unauthorised)
    }
}

/// A signed bulk body must hash to what its signature covers.
fn check_body(body: &[u8], signed: &[u8; 32]) -> Result<(), FarmerError> {
    if sha256(&[body]) == *signed {
        Ok(())
    } else {
        Err(FarmerError::BodyMismatch)
    }
}

async fn message(
    farmer: &Farmer,
    kind: &str,
    req: Request<Incoming>,
) -> Result<Reply, FarmerError> {
    let bytes = Limited::new(req.into_body(), MAX_ENVELOPE_BYTES)
        .collect()
        .await
        .map_err(|_| {
            FarmerError::Peer(dstore_protocol::peer::PeerError::Oversized(
                MAX_ENVELOPE_BYTES + 1,
            ))
        })?
        .to_bytes();
    match farmer.handle_message(kind, &bytes).await {
        Ok(reply) => Ok(full(StatusCode::OK, reply)),
        Err(e) => Ok(refusal(farmer, &e, &bytes)),
    }
}

/// A refused envelope's error; a sequence refusal carries the farmer's signed
/// [`dstore_protocol::messages::ResyncHint`] so the renter can tell it from a forgery.
fn refusal(farmer: &Farmer, e: &FarmerError, refused: &[u8]) -> Reply {
    let (status, mut body) = e.to_body();
    if let Some(next_seq) = body.next_seq {
        body.resync = farmer.resync_hint(refused, next_seq).ok();
    }
    error_reply(e, status, &body)
}

fn offset_of(req: &Request<Incoming>) -> Result<u64, FarmerError> {
    req.uri()
        .query()
        .and_then(|q| q.strip_prefix("offset="))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            FarmerError::Invalid("an upload needs ?offset=<bytes already stored>".into())
        })
}

async fn upload(
    farmer: &Farmer,
    id: [u8; 32],
    req: Request<Incoming>,
) -> Result<Reply, FarmerError> {
    if declared_length(&req).is_some_and(|len| len > MAX_UPLOAD_PART as u64) {
        return Err(FarmerError::Peer(
            dstore_protocol::peer::PeerError::Oversized(MAX_UPLOAD_PART + 1),
        ));
    }
    let signed = authorise(farmer, &id, [0; 32], &req)?;
    let offset = offset_of(&req)?;
    let (received, expected) = farmer.upload_status(&id)?;
    // A part ahead of the stored count (another of the renter's window is still on its
    // way) waits for its turn in `append_upload`; a replay is refused unread.
    super::upload::check_ahead(received, offset)?;
    if let Some(len) = declared_length(&req) {
        if offset.saturating_add(len) > expected {
            return Err(dstore_protocol::upload::UploadError::PastOffer {
                would: offset.saturating_add(len),
                limit: expected,
            }
            .into());
        }
    }
    // One part is checked whole against its signed digest before a byte of it is stored.
    let part = Limited::new(req.into_body(), MAX_UPLOAD_PART)
        .collect()
        .await
        .map_err(|e| FarmerError::Invalid(format!("upload part too large or interrupted: {e}")))?
        .to_bytes();
    let received = if part.is_empty() {
        if dstore_protocol::merkle::part_digest(0, &[]) != signed {
            return Err(FarmerError::BodyMismatch);
        }
        offset
    } else {
        farmer.append_upload(&id, offset, part, signed).await?
    };
    Ok(json(&UploadStatus { received, expected }))
}

async fn sealed(
    farmer: &Farmer,
    id: [u8; 32],
    req: &Request<Incoming>,
) -> Result<Reply, FarmerError> {
    let signed = authorise(farmer, &id, farmer.current_download_id(&id)?, req)?;
    check_body(&[], &signed)?;
    let path = farmer.current_sealed(&id)?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(super::internal)?;
    let length = file.metadata().await.map_err(super::internal)?.len();
    let flip_at =
        crate::dev_fault!(farmer.config.dev_fault, FlipSealedMidStream).then_some(length / 2);
    let stream = futures::stream::unfold((file, 0u64), move |(mut file, at)| async move {
        let mut buf = vec![0u8; 1 << 20];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                flip_in(&mut buf, at, flip_at);
                let next = at + n as u64;
                Some((Ok(Frame::data(Bytes::from(buf))), (file, next)))
            }
            Err(e) => Some((Err(e), (file, at))),
        }
    });
    let mut response = Response::new(StreamBody::new(stream).boxed());
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_LENGTH, length.into());
    Ok(response)
}

/// Test-only fault: flips the byte at stream position `flip_at` if it lies in `buf`,
/// which starts at `at`.
fn flip_in(buf: &mut [u8], at: u64, flip_at: Option<u64>) {
    if let Some(i) = flip_at.and_then(|f| f.checked_sub(at)) {
        if let Some(byte) = buf.get_mut(i as usize) {
            tracing::warn!(
                "dev fault flip-sealed-mid-stream: byte {} of E flipped",
                at + i
            );
            *byte ^= 0x01;
        }
    }
}

async fn crs(farmer: &Farmer, id: [u8; 32], req: Request<Incoming>) -> Result<Reply, FarmerError> {
    let signed = authorise(farmer, &id, farmer.current_download_id(&id)?, &req)?;
    if declared_length(&req).is_some_and(|len| len > MAX_CRS_BYTES as u64) {
        return Err(FarmerError::Invalid("CRS too large".into()));
    }
    let bytes = Limited::new(req.into_body(), MAX_CRS_BYTES)
        .collect()
        .await
        .map_err(|_| FarmerError::Invalid("CRS too large or upload interrupted".into()))?
        .to_bytes();
    check_body(&bytes, &signed)?;
    farmer.receive_crs(&id, bytes.to_vec()).await?;
    Ok(json(&serde_json::json!({ "checked": true })))
}

/// An evidence board reply, or its error as `{code, message}` with the board's status.
fn board_reply(outcome: Result<Reply, BoardError>) -> Reply {
    outcome.unwrap_or_else(|e| {
        let (status, body) = e.to_http();
        if status >= 500 {
            tracing::warn!("evidence board: {e}");
        } else {
            tracing::info!("evidence board refused a request: {e}");
        }
        full(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            serde_json::to_vec(&body).unwrap_or_default(),
        )
    })
}

/// `POST /dstore/v1/evidence`: the rate budget first, then the size (a declared length over
/// the cap is refused unread), then the proof is checked off the async threads and stored.
async fn post_evidence(farmer: &Farmer, req: Request<Incoming>) -> Result<Reply, BoardError> {
    farmer.board().admit_post()?;
    let oversized = BoardError::Oversized {
        max: MAX_EVIDENCE_BYTES,
    };
    if declared_length(&req).is_some_and(|len| len > MAX_EVIDENCE_BYTES as u64) {
        return Err(oversized);
    }
    let body = match Limited::new(req.into_body(), MAX_EVIDENCE_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(oversized),
        Err(e) => return Err(BoardError::Interrupted(e.to_string())),
    };
    let (evidence, canonical) =
        tokio::task::spawn_blocking(move || crate::market::evidence::canonical_evidence(&body))
            .await
            .map_err(|e| BoardError::Interrupted(e.to_string()))??;
    farmer
        .board()
        .insert(&evidence, &canonical)
        .map(|posted| json(&posted))
}

/// `GET /dstore/v1/evidence/<id>`: the proof's canonical bytes.
fn evidence(farmer: &Farmer, id: &str) -> Result<Reply, BoardError> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(id, &mut bytes)
        .map_err(|_| BoardError::Unknown(id.chars().take(64).collect()))?;
    Ok(full(StatusCode::OK, farmer.board().proof(&bytes)?))
}
