//! The evidence board: verified fraud proofs anyone may post to a farmer's peer endpoint
//! (`POST /dstore/v1/evidence`) and anyone may read (`GET /dstore/v1/evidence[/<id>]`), the
//! pull of another farmer's board ([`pull_board`]), and `dstore-publish-fraud`.
//!
//! A proof is checked ([`check_evidence`]) before anything is stored and the board keeps
//! its canonical bytes ([`evidence_bytes`]), whose sha256 is its id: the same
//! proof posted twice, pretty-printed or compact, is stored once. The board refuses bodies
//! over [`MAX_EVIDENCE_BYTES`] before reading them whole, more than a global number of
//! POSTs per minute (HTTP 429), and new proofs once it holds its maximum (HTTP 507).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dstore_protocol::market::evidence::{
    check_evidence, evidence_bytes, VerifiedEvidence, MAX_EVIDENCE_BYTES,
};
use dstore_protocol::market::MarketError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::advert::{get_capped, http_client, join_url, FetchError};
use crate::app::App;
use crate::config::FarmerMarketSettings;
use crate::db::{Db, DbError};
use crate::jsonrpc::{code, RpcError};
use crate::methods::Params;

/// Summaries of the proofs on the board, by id.
const ITEM_PREFIX: &str = "evidence/item/";
/// The canonical proof bytes (as a JSON string), by id.
const PROOF_PREFIX: &str = "evidence/proof/";
/// The most proofs [`pull_board`] takes from one board in one pull.
pub const MAX_PULLED_PER_BOARD: usize = 1_000;
/// The largest board listing read (1,000 summaries of about 200 bytes, with room).
const MAX_LIST_BYTES: usize = 1 << 20;

/// Why the board refused a POST or a GET; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error("evidence of more than {max} bytes is refused")]
    Oversized { max: usize },
    #[error("too many evidence posts: at most {per_min} per minute, try again later")]
    RateLimited { per_min: u32 },
    #[error("the evidence board is full ({max} proofs)")]
    Full { max: u64 },
    #[error("refused evidence: {0}")]
    Invalid(#[from] MarketError),
    #[error("no evidence {0} on this board")]
    Unknown(String),
    #[error("evidence board store: {0}")]
    Store(#[from] DbError),
    #[error("the request was interrupted: {0}")]
    Interrupted(String),
}

impl BoardError {
    /// The HTTP status and the JSON error body (`{code, message}`, as the peer endpoint's).
    pub fn to_http(&self) -> (u16, Value) {
        let (status, code) = match self {
            BoardError::Oversized { .. } => (413, code::INVALID_REQUEST),
            BoardError::RateLimited { .. } => (429, code::MISC_ERROR),
            BoardError::Full { .. } => (507, code::MISC_ERROR),
            BoardError::Invalid(_) => (400, code::INVALID_PARAMETER),
            BoardError::Unknown(_) => (404, code::INVALID_ADDRESS_OR_KEY),
            BoardError::Store(_) => (500, code::INTERNAL_ERROR),
            BoardError::Interrupted(_) => (400, code::INVALID_REQUEST),
        };
        (status, json!({"code": code, "message": self.to_string()}))
    }
}

/// One proof on the board, as the listing shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoardItem {
    pub id: String,
    pub farmer: String,
    pub contract_id: String,
}

impl BoardItem {
    fn of(evidence: &VerifiedEvidence) -> BoardItem {
        BoardItem {
            id: hex::encode(evidence.id),
            farmer: evidence.farmer.to_string(),
            contract_id: hex::encode(evidence.contract_id),
        }
    }
}

/// A POST's outcome: the proof's summary and whether it was new here.
#[derive(Debug, Clone, Serialize)]
pub struct Posted {
    #[serde(flatten)]
    pub item: BoardItem,
    pub new: bool,
}

/// POSTs in the last minute, from everyone together.
struct RateWindow {
    per_min: u32,
    recent: VecDeque<Instant>,
}

impl RateWindow {
    /// Takes one POST slot, or says the minute's budget is spent.
    fn take(&mut self, now: Instant) -> Result<(), BoardError> {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.per_min as usize {
            return Err(BoardError::RateLimited {
                per_min: self.per_min,
            });
        }
        self.recent.push_back(now);
        Ok(())
    }
}

/// A farmer's evidence board, stored in its RocksDB under `evidence/`.
pub struct Board {
    db: Arc<Db>,
    max_items: u64,
    rate: Mutex<RateWindow>,
    /// Serialises check-and-insert (and holds the item count).
    stored: Mutex<u64>,
}

impl Board {
    /// The board in `db`, with the limits of `settings`.
    pub fn open(db: Arc<Db>, settings: &FarmerMarketSettings) -> Result<Board, BoardError> {
        let stored = db.scan::<BoardItem>(ITEM_PREFIX)?.len() as u64;
        Ok(Board {
            db,
            max_items: settings.evidence_max_items,
            rate: Mutex::new(RateWindow {
                per_min: settings.evidence_rate_per_min,
                recent: VecDeque::new(),
            }),
            stored: Mutex::new(stored),
        })
    }

    /// Counts one POST against the per-minute budget (call before reading its body).
    pub fn admit_post(&self) -> Result<(), BoardError> {
        self.rate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(Instant::now())
    }

    /// Checks `body` and stores the proof unless it is already here.
    pub fn post(&self, body: &[u8]) -> Result<Posted, BoardError> {
        let (evidence, canonical) = canonical_evidence(body)?;
        self.insert(&evidence, &canonical)
    }

    /// Stores an already verified proof given with its canonical bytes.
    pub fn insert(
        &self,
        evidence: &VerifiedEvidence,
        canonical: &str,
    ) -> Result<Posted, BoardError> {
        let item = BoardItem::of(evidence);
        let mut stored = self.stored.lock().unwrap_or_else(|e| e.into_inner());
        if self
            .db
            .get::<BoardItem>(&format!("{ITEM_PREFIX}{}", item.id))?
            .is_some()
        {
            return Ok(Posted { item, new: false });
        }
        if *stored >= self.max_items {
            return Err(BoardError::Full {
                max: self.max_items,
            });
        }
        self.db
            .put(&format!("{PROOF_PREFIX}{}", item.id), &canonical)?;
        self.db.put(&format!("{ITEM_PREFIX}{}", item.id), &item)?;
        *stored += 1;
        tracing::info!(id = %item.id, farmer = %item.farmer, "evidence board: stored a fraud proof");
        Ok(Posted { item, new: true })
    }

    /// Every proof's summary, by id.
    pub fn list(&self) -> Result<Vec<BoardItem>, BoardError> {
        Ok(self
            .db
            .scan::<BoardItem>(ITEM_PREFIX)?
            .into_iter()
            .map(|(_, item)| item)
            .collect())
    }

    /// One proof's canonical bytes.
    pub fn proof(&self, id: &[u8; 32]) -> Result<Vec<u8>, BoardError> {
        let id = hex::encode(id);
        self.db
            .get::<String>(&format!("{PROOF_PREFIX}{id}"))?
            .map(String::into_bytes)
            .ok_or(BoardError::Unknown(id))
    }
}

/// Checks a proof and returns it with its canonical bytes, whose sha256 is its id.
pub fn canonical_evidence(body: &[u8]) -> Result<(VerifiedEvidence, String), MarketError> {
    let evidence = check_evidence(body)?;
    let canonical = String::from_utf8(evidence_bytes(&evidence.proof))
        .map_err(|e| MarketError::Unparseable(e.to_string()))?;
    Ok((evidence, canonical))
}

/// Reads another farmer's board: every proof on it that verifies (at most
/// [`MAX_PULLED_PER_BOARD`]); the others are logged and skipped.
pub async fn pull_board(url: &str) -> Result<Vec<VerifiedEvidence>, FetchError> {
    pull_board_skipping(url, |_| false).await
}

/// [`pull_board`], without downloading the proofs whose id `known` says are held already.
pub async fn pull_board_skipping(
    url: &str,
    known: impl Fn(&[u8; 32]) -> bool,
) -> Result<Vec<VerifiedEvidence>, FetchError> {
    let client = http_client()?;
    let listing = get_capped(
        &client,
        &join_url(url, "dstore/v1/evidence")?,
        MAX_LIST_BYTES,
    )
    .await?;
    let items: Vec<BoardItem> =
        serde_json::from_slice(&listing).map_err(|e| FetchError::Malformed(e.to_string()))?;
    let mut verified = Vec::new();
    for item in items.into_iter().take(MAX_PULLED_PER_BOARD) {
        let mut id = [0u8; 32];
        if hex::decode_to_slice(&item.id, &mut id).is_err() || known(&id) {
            continue;
        }
        match pull_one(&client, url, &id).await {
            Ok(evidence) => verified.push(evidence),
            Err(e) => tracing::info!(board = %url, id = %item.id, "evidence skipped: {e}"),
        }
    }
    Ok(verified)
}

/// One proof from a board, checked, and with the id it was listed under.
async fn pull_one(
    client: &reqwest::Client,
    url: &str,
    id: &[u8; 32],
) -> Result<VerifiedEvidence, FetchError> {
    let path = format!("dstore/v1/evidence/{}", hex::encode(id));
    let body = get_capped(client, &join_url(url, &path)?, MAX_EVIDENCE_BYTES).await?;
    let evidence = check_evidence(&body).map_err(FetchError::Invalid)?;
    if evidence.id != *id {
        return Err(FetchError::Mismatch(
            "the proof's bytes do not hash to the id it is listed under".into(),
        ));
    }
    Ok(evidence)
}

/// `dstore-publish-fraud <file> ( "farmer_urls" )`.
pub(crate) async fn publish_fraud(app: &Arc<App>, args: &Params<'_>) -> Result<Value, RpcError> {
    let path = args.required_string(0)?;
    let urls = match args.string(1)? {
        Some(list) => parse_url_list(&list)?,
        None => app.market.farmer_urls(),
    };
    let bytes = read_proof(&path).await?;
    let (evidence, canonical) = tokio::task::spawn_blocking(move || canonical_evidence(&bytes))
        .await
        .map_err(|e| RpcError::new(code::INTERNAL_ERROR, format!("check task failed: {e}")))?
        .map_err(|e| {
            RpcError::new(
                code::INVALID_PARAMETER,
                format!("{path}: not a valid fraud proof: {e}"),
            )
        })?;
    let item = BoardItem::of(&evidence);
    if let Some(farmer) = &app.farmer {
        if let Err(e) = farmer.board().insert(&evidence, &canonical) {
            tracing::warn!("own evidence board: {e}");
        }
    }
    app.market
        .accept_evidence(evidence)
        .map_err(|e| RpcError::new(code::MISC_ERROR, format!("storing the evidence: {e}")))?;
    let (published, failed) = post_everywhere(&urls, canonical).await;
    tracing::info!(id = %item.id, farmer = %item.farmer, published = published.len(), failed = failed.len(), "published a fraud proof");
    Ok(json!({
        "id": item.id,
        "farmer": item.farmer,
        "contract_id": item.contract_id,
        "published": published,
        "failed": failed,
    }))
}

/// The comma-separated URL list of `dstore-publish-fraud`; each must be http(s).
fn parse_url_list(list: &str) -> Result<Vec<String>, RpcError> {
    list.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            join_url(u, "")
                .map(|_| u.trim_end_matches('/').to_string())
                .map_err(|e| RpcError::new(code::INVALID_PARAMETER, e.to_string()))
        })
        .collect()
}

async fn read_proof(path: &str) -> Result<Vec<u8>, RpcError> {
    let unreadable = |e: &dyn std::fmt::Display| {
        RpcError::new(code::INVALID_PARAMETER, format!("cannot read {path}: {e}"))
    };
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| unreadable(&e))?;
    if meta.len() > MAX_EVIDENCE_BYTES as u64 {
        return Err(unreadable(&format!("more than {MAX_EVIDENCE_BYTES} bytes")));
    }
    tokio::fs::read(path).await.map_err(|e| unreadable(&e))
}

/// POSTs the proof to every board at once; returns where it was taken and where not.
async fn post_everywhere(urls: &[String], canonical: String) -> (Vec<String>, Vec<Value>) {
    let Ok(client) = http_client() else {
        let failed = urls
            .iter()
            .map(|u| json!({"url": u, "error": "no HTTP client"}))
            .collect();
        return (Vec::new(), failed);
    };
    let posts = urls.iter().map(|url| {
        let (client, body) = (client.clone(), canonical.clone());
        async move { (url.clone(), post_one(&client, url, body).await) }
    });
    let mut published = Vec::new();
    let mut failed = Vec::new();
    for (url, outcome) in futures::future::join_all(posts).await {
        match outcome {
            Ok(()) => published.push(url),
            Err(e) => failed.push(json!({"url": url, "error": e.to_string()})),
        }
    }
    (published, failed)
}

async fn post_one(client: &reqwest::Client, url: &str, body: String) -> Result<(), FetchError> {
    let response = client
        .post(join_url(url, "dstore/v1/evidence")?)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| FetchError::Http(e.without_url().to_string()))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or(text);
    Err(FetchError::Refused {
        status: status.as_u16(),
        message: message.chars().take(300).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_window_refuses_past_its_budget_and_recovers() {
        let mut window = RateWindow {
            per_min: 2,
            recent: VecDeque::new(),
        };
        let start = Instant::now();
        assert!(window.take(start).is_ok());
        assert!(window.take(start).is_ok());
        assert!(matches!(
            window.take(start + Duration::from_secs(30)),
            Err(BoardError::RateLimited { per_min: 2 })
        ));
        assert!(window.take(start + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn garbage_is_refused_and_nothing_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(dir.path()).unwrap());
        let settings = FarmerMarketSettings {
            peer_url: None,
            bind_url: "http://127.0.0.1:9".into(),
            evidence_rate_per_min: 30,
            evidence_max_items: 10,
        };
        let board = Board::open(db, &settings).unwrap();
        for body in [&b"{not json"[..], b"{}", b"[]", b""] {
            assert!(matches!(board.post(body), Err(BoardError::Invalid(_))));
        }
        assert!(board.list().unwrap().is_empty());
        assert!(matches!(board.proof(&[1; 32]), Err(BoardError::Unknown(_))));
    }
}
