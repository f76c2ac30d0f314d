//! The renter's view of the farmer market (issue 17): a chain scanner, the farmer table in
//! RocksDB, announcements and bonds, adverts, the evidence board, and choosing a farmer.
//!
//! [`Market`] holds the scanner's records (in memory, mirrored from RocksDB by
//! [`store::MarketStore`]), the verified adverts and evidence, and runs two tasks:
//! [`scanner::follow_chain`] (blocks, reorgs) and [`Market::refresh_loop`] (adverts and
//! evidence boards, after each new block and every `--market-refresh-secs`).

pub mod advert;
pub mod announce;
pub mod evidence;
pub mod methods;
pub mod scanner;
pub mod store;
pub mod table;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bitcoin::secp256k1::XOnlyPublicKey;
use bitcoin::Block;
use dstore_protocol::market::advert::SignedAdvert;
use dstore_protocol::market::evidence::VerifiedEvidence;
use dstore_protocol::market::MarketError;
use tokio::sync::Notify;

use crate::config::MarketSettings;
use crate::db::{Db, DbError};
use store::{EvidenceRec, MarketState, MarketStore, Record, Tip};

/// The longest one advert fetch or one board pull may take (D's clients time out sooner).
/// How many announced URLs of one farmer the refresh tries.
const URLS_TRIED_PER_FARMER: usize = 4;
const FETCH_LIMIT: Duration = Duration::from_secs(10);
const PULL_LIMIT: Duration = Duration::from_secs(30);

/// Why an advert or a piece of evidence was not taken.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error(transparent)]
    Invalid(#[from] MarketError),
    #[error(transparent)]
    Store(#[from] DbError),
}

/// The market: records, settings, and the refresh trigger.
pub struct Market {
    store: MarketStore,
    state: RwLock<MarketState>,
    settings: MarketSettings,
    /// The network name adverts must name.
    network: String,
    /// The last advert fetch error per farmer (cleared by a verified advert).
    advert_errors: Mutex<HashMap<XOnlyPublicKey, String>>,
    refresh_now: Notify,
}

impl Market {
    /// Loads the market's records from the plugin's store.
    pub fn open(db: Arc<Db>, settings: MarketSettings, network: &str) -> Result<Self, DbError> {
        let store = MarketStore::new(db);
        let state = store.load()?;
        Ok(Market {
            store,
            state: RwLock::new(state),
            settings,
            network: network.to_string(),
            advert_errors: Mutex::new(HashMap::new()),
            refresh_now: Notify::new(),
        })
    }

    pub fn settings(&self) -> &MarketSettings {
        &self.settings
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, MarketState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, MarketState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The scanned tip.
    pub fn tip(&self) -> Option<Tip> {
        self.read().tip
    }

    /// Scans `block` at `height` (its parent must be the scanned tip) and commits it.
    pub fn apply_block(&self, height: u32, block: &Block) -> Result<(), DbError> {
        let settings = scanner::ScanSettings {
            min_bond_sat: self.settings.min_bond_sat,
        };
        let delta = scanner::scan_block(&self.read(), block, height, &settings);
        let tip = Tip {
            height,
            hash: block.block_hash(),
        };
        self.store
            .commit_block(tip, u64::from(block.header.time), &delta)?;
        let mut state = self.write();
        state.apply(&delta.changes);
        state.tip = Some(tip);
        Ok(())
    }

    /// Undoes the scanned tip's block (a reorg); returns the new tip.
    pub fn rollback_tip(&self) -> Result<Option<Tip>, DbError> {
        let Some(tip) = self.tip() else {
            return Ok(None);
        };
        let (undo, below) = self.store.rollback_tip(tip)?;
        let mut state = self.write();
        state.apply(&undo);
        state.tip = below;
        tracing::info!(height = tip.height, hash = %tip.hash, "market: block rolled back (reorg)");
        Ok(below)
    }

    /// The hash the scanner stored for `height`.
    pub fn block_hash(&self, height: u32) -> Result<Option<bitcoin::BlockHash>, DbError> {
        self.store.block_hash(height)
    }

    /// Median time of the scanned tip and the 10 blocks below it (the chain's "now").
    pub fn median_time(&self) -> u64 {
        let Some(tip) = self.tip() else { return 0 };
        let mut times = self
            .store
            .block_times(tip.height.saturating_sub(10), tip.height)
            .unwrap_or_default();
        times.sort_unstable();
        times.get(times.len() / 2).copied().unwrap_or(0)
    }

    /// Asks the refresh task to fetch adverts and boards now.
    pub fn request_refresh(&self) {
        self.refresh_now.notify_one();
    }

    /// Peer URLs of the farmers whose URL is verified, best score first.
    pub fn farmer_urls(&self) -> Vec<String> {
        self.table(table::Sort::Score)
            .farmers
            .into_iter()
            .filter_map(|f| f.peer_url)
            .collect()
    }

    /// The URLs the refresh reads each farmer's advert and board from: the URL its held
    /// advert names (if announced), then its other announced URLs, latest first, at most
    /// [`URLS_TRIED_PER_FARMER`] in all. Anyone can announce a farmer's identity with a bond
    /// gifted to its key and a URL of their own; trying more than the latest URL keeps such
    /// a gift from hiding the farmer's real endpoint.
    pub fn announced(&self) -> Vec<(XOnlyPublicKey, String)> {
        let state = self.read();
        let mut by_farmer: HashMap<XOnlyPublicKey, Vec<(u32, u32, &str)>> = HashMap::new();
        for record in state.records.values() {
            if let Record::Announcement(a) = record {
                by_farmer.entry(a.identity).or_default().push((
                    a.height,
                    a.tx_index,
                    a.peer_url.as_str(),
                ));
            }
        }
        let mut out = Vec::new();
        for (identity, mut announcements) in by_farmer {
            announcements.sort_unstable_by_key(|a| std::cmp::Reverse((a.0, a.1)));
            let held = state
                .adverts
                .get(&identity)
                .map(|a| a.advert.peer_url.as_str());
            let held = held.filter(|url| announcements.iter().any(|a| table::same_url(a.2, url)));
            let mut urls: Vec<&str> = held.into_iter().collect();
            for (_, _, url) in announcements {
                if urls.len() >= URLS_TRIED_PER_FARMER {
                    break;
                }
                if !urls.iter().any(|u| table::same_url(u, url)) {
                    urls.push(url);
                }
            }
            out.extend(urls.into_iter().map(|url| (identity, url.to_string())));
        }
        out
    }

    /// Every announced URL (what the refresh reads adverts and boards from).
    pub fn announced_urls(&self) -> Vec<String> {
        self.announced().into_iter().map(|(_, url)| url).collect()
    }

    /// Takes a signed advert: Ok(true) if kept, Ok(false) if ignored (unknown identity,
    /// another network, or older than the one held).
    pub fn accept_advert(&self, advert: SignedAdvert) -> Result<bool, AcceptError> {
        advert.verify()?;
        let identity = advert.advert.identity;
        if advert.advert.network != self.network {
            tracing::info!(farmer = %identity, network = %advert.advert.network, "market: ignoring an advert for another network");
            return Ok(false);
        }
        {
            let state = self.read();
            let known = state
                .identities
                .get(&store::prefix_of(&identity))
                .is_some_and(|ids| ids.contains(&identity));
            if !known {
                tracing::debug!(farmer = %identity, "market: ignoring an advert of an unannounced farmer");
                return Ok(false);
            }
            if let Some(held) = state.adverts.get(&identity) {
                if held.advert.issued_at > advert.advert.issued_at {
                    return Ok(false);
                }
            }
        }
        self.store.put_advert(&advert)?;
        self.write().adverts.insert(identity, advert);
        self.lock_errors().remove(&identity);
        Ok(true)
    }

    /// Takes a verified fraud proof: Ok(true) if it is new. Its farmer is burned.
    /// Proofs about identities no announcement names are ignored: anyone can mint valid
    /// proofs against throwaway identities of its own, and only a bonded farmer has a
    /// reputation to burn; such a proof is taken once its farmer announces (boards are
    /// pulled again).
    pub fn accept_evidence(&self, evidence: VerifiedEvidence) -> Result<bool, AcceptError> {
        {
            let state = self.read();
            if state.evidence.contains_key(&evidence.id) {
                return Ok(false);
            }
            let announced = state
                .identities
                .get(&store::prefix_of(&evidence.farmer))
                .is_some_and(|ids| ids.contains(&evidence.farmer));
            if !announced {
                tracing::debug!(farmer = %evidence.farmer, "market: ignoring evidence about an unannounced farmer");
                return Ok(false);
            }
        }
        let record = EvidenceRec {
            id: evidence.id,
            farmer: evidence.farmer,
            contract_id: evidence.contract_id,
        };
        self.store.put_evidence(&record)?;
        tracing::warn!(farmer = %record.farmer, evidence = %hex::encode(record.id), "market: farmer burned by a verified fraud proof");
        self.write().evidence.insert(record.id, record);
        Ok(true)
    }

    /// The farmer table, sorted.
    pub fn table(&self, sort: table::Sort) -> table::Table {
        let now = self.median_time();
        let errors = self.lock_errors().clone();
        table::build(&self.read(), &errors, now, sort)
    }

    fn lock_errors(&self) -> std::sync::MutexGuard<'_, HashMap<XOnlyPublicKey, String>> {
        self.advert_errors.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refreshes adverts and evidence boards after each new block and every
    /// `--market-refresh-secs`, until `shutdown`. Failures are logged, never fatal.
    pub async fn refresh_loop(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let period = Duration::from_secs(self.settings.refresh_secs);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(period) => {}
                _ = self.refresh_now.notified() => {}
            }
            self.refresh().await;
        }
    }

    /// One refresh of every announced farmer's advert and board, concurrently.
    pub async fn refresh(&self) {
        let jobs = self
            .announced()
            .into_iter()
            .map(|(identity, url)| self.refresh_one(identity, url));
        futures::future::join_all(jobs).await;
    }

    async fn refresh_one(&self, identity: XOnlyPublicKey, url: String) {
        let fetched = tokio::time::timeout(FETCH_LIMIT, advert::fetch_advert(&url)).await;
        let outcome = match fetched {
            Err(_) => Err(format!("{url}: no advert within {FETCH_LIMIT:?}")),
            Ok(Err(e)) => Err(format!("{url}: {e}")),
            Ok(Ok(signed)) if signed.advert.identity != identity => Err(format!(
                "{url}: the advert is signed by {}, not by the announced identity",
                signed.advert.identity
            )),
            Ok(Ok(signed)) => self
                .accept_advert(signed)
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        if let Err(reason) = outcome {
            tracing::info!(farmer = %identity, "market: advert refresh failed: {reason}");
            self.lock_errors().insert(identity, reason);
        }
        let known = |id: &[u8; 32]| self.read().evidence.contains_key(id);
        match tokio::time::timeout(PULL_LIMIT, evidence::pull_board_skipping(&url, known)).await {
            Err(_) => tracing::info!(%url, "market: evidence board pull timed out"),
            Ok(Err(e)) => tracing::info!(%url, "market: evidence board pull failed: {e}"),
            Ok(Ok(items)) => {
                for item in items {
                    if let Err(e) = self.accept_evidence(item) {
                        tracing::warn!(%url, "market: cannot keep evidence: {e}");
                    }
                }
            }
        }
    }
}
