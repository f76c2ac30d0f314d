//! The farmer role: accepts storage contracts, receives and checks uploads, signs storage
//! receipts, seals downloads, and runs its half of the mode-L chain (PROTOCOL.md 3.3):
//! TX2 under one reused nonce, the Groth16 proof under the renter's checked CRS, then TX2
//! and TX3 broadcast by the farmer itself, which is how it gets paid.
//!
//! Every peer message is handled under the contract's lock: open and verify the envelope,
//! check its sequence number, apply the step, store the new record (synced), and only then
//! reply. A rejected message changes nothing. An exact repeat of the last message gets the
//! stored reply again, so a renter whose connection broke can simply retry.
//!
//! Where to look: [`exchange`] (envelopes, sequence numbers, dispatch), [`upload`] (open,
//! upload, storage receipt), [`download`] (the download, one function per step), [`seal`]
//! (the sealed copy E), [`crs`] (one checked CRS per download, the proof), [`claim`] (TX2
//! and TX3 held back until safe, the watchtower), [`audit`] and [`bump`] (audits),
//! [`records`] (what is stored), [`server`] (HTTP), [`error`] (what the renter is told).

pub mod audit;
pub mod bump;
pub mod claim;
pub mod crs;
pub mod download;
pub mod error;
pub mod exchange;
pub mod ln_download;
pub mod records;
pub mod seal;
pub mod server;
pub mod upload;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bitcoin::consensus::encode::serialize_hex;
use bitcoin::secp256k1::{Keypair, SecretKey};
use bitcoin::{Amount, Transaction};
use dstore_protocol::keys::{derive_key, identity_keypair, Role};
use dstore_protocol::zk::Crs;
use serde_json::{json, Value};

use crate::bitcoind::Bitcoind;
use crate::config::DevFault;
use crate::db::{self, Db};
use crate::locks::ContractLocks;
use crate::storage::BlobStore;
use crate::tower_client::TowerClient;
use crate::wallet::PluginWallet;
pub use error::{FarmerError, UNKNOWN_CRS};
use records::{FarmedContract, FarmerPhase};

/// TX2's fee, taken from the price (the renter accepts up to its own maximum).
pub const TX2_FEE: Amount = Amount::from_sat(2_000);
/// TX3's fee, taken from the farmer's payout.
pub const TX3_FEE: Amount = Amount::from_sat(1_000);
/// T1 is this many blocks above the tip when a download is offered.
pub const REFUND_MARGIN: u32 = 144;
/// Δ, TX2's refund delay.
pub const PAYOUT_DELAY: u16 = 12;
/// How long the farmer promises to store a file (about a year of blocks).
pub const STORAGE_TERM: u32 = 52_560;

fn internal(e: impl std::fmt::Display) -> FarmerError {
    FarmerError::Internal(e.to_string())
}

/// What the farmer is configured with.
pub struct FarmerConfig {
    pub price_per_download: Amount,
    pub max_file_bytes: u64,
    /// Sealed copies and contract scratch files.
    pub work_dir: PathBuf,
    /// Checked CRSs, by hash.
    pub crs_dir: PathBuf,
    pub network: String,
    /// Test-only misbehaviour (see [`DevFault`]).
    pub dev_fault: Option<DevFault>,
    /// The watchtower that gets each claim (TX2 and TX3) on the chain (`--watchtower-url`).
    pub tower: Option<Arc<TowerClient>>,
    /// The least claim window and fee rates accepted in audit terms.
    pub audit_policy: dstore_protocol::audit::policy::AuditPolicy,
    /// TX2 waits for this many confirmations of TX1 (`--min-tx1-confirmations`).
    pub min_tx1_confirmations: u32,
    /// TX2 never goes out at or above T1 minus this (`--tx2-broadcast-margin-blocks`).
    pub tx2_broadcast_margin_blocks: u32,
    /// The advert's URL and the evidence board's limits (`--peer-url`, `--evidence-*`).
    pub market: crate::config::FarmerMarketSettings,
}

/// The farmer role's state.
pub struct Farmer {
    identity: Keypair,
    seed: [u8; 32],
    db: Arc<Db>,
    blobs: BlobStore,
    bitcoind: Arc<Bitcoind>,
    wallet: Arc<PluginWallet>,
    config: FarmerConfig,
    locks: ContractLocks,
    checked_crs: Mutex<HashMap<[u8; 32], Arc<Crs>>>,
    /// Verified fraud proofs anyone posted (`/dstore/v1/evidence`).
    board: crate::market::evidence::Board,
    /// The Lightning node mode-N downloads are invoiced through (None: mode N is off).
    lightning: Option<crate::ln::Lightning>,
}

/// A message's effect: the new record and the reply body.
struct Step<R> {
    record: FarmedContract,
    reply: R,
}

impl Farmer {
    pub fn new(
        seed: [u8; 32],
        db: Arc<Db>,
        blobs: BlobStore,
        bitcoind: Arc<Bitcoind>,
        wallet: Arc<PluginWallet>,
        config: FarmerConfig,
    ) -> Result<Farmer, FarmerError> {
        std::fs::create_dir_all(&config.work_dir).map_err(internal)?;
        std::fs::create_dir_all(&config.crs_dir).map_err(internal)?;
        let board =
            crate::market::evidence::Board::open(db.clone(), &config.market).map_err(internal)?;
        Ok(Farmer {
            identity: identity_keypair(&seed).map_err(internal)?,
            board,
            seed,
            db,
            blobs,
            bitcoind,
            wallet,
            config,
            locks: ContractLocks::default(),
            checked_crs: Mutex::new(HashMap::new()),
            lightning: None,
        })
    }

    /// Sells mode-N downloads (PROTOCOL.md 4b) through `ln`'s invoices from now on.
    pub fn with_lightning(mut self, ln: Option<crate::ln::Lightning>) -> Farmer {
        self.lightning = ln;
        self
    }

    pub fn identity(&self) -> &Keypair {
        &self.identity
    }

    pub fn info(&self) -> Value {
        json!({
            "identity": self.identity.x_only_public_key().0,
            "network": self.config.network,
            "price_per_download_sat": self.config.price_per_download.to_sat(),
            "max_file_bytes": self.config.max_file_bytes,
            "advert": self.advert(),
            "lightning": self.lightning.as_ref().and_then(|ln| ln.advertised()),
        })
    }

    /// The farmer's signed advert. Its URL is `--peer-url`, else the latest announced
    /// one, else `http://<peer-bind>`; free_bytes is what the filesystem holding the
    /// farmer's work directory still has (uploads and sealed copies are written there).
    pub fn advert(&self) -> dstore_protocol::market::advert::SignedAdvert {
        let market = &self.config.market;
        let peer_url = market
            .peer_url
            .clone()
            .or_else(|| crate::market::announce::last_announced_url(&self.db))
            .unwrap_or_else(|| market.bind_url.clone());
        let terms = crate::market::advert::AdvertTerms {
            network: self.config.network.clone(),
            peer_url,
            price_per_download_sat: self.config.price_per_download.to_sat(),
            max_file_bytes: self.config.max_file_bytes,
            free_bytes: crate::market::advert::free_bytes(&self.config.work_dir),
            min_claim_window_blocks: u32::from(self.config.audit_policy.min_claim_window),
            lightning: self
                .lightning
                .as_ref()
                .and_then(|ln| ln.advertised())
                .map(|ln| dstore_protocol::market::advert::AdvertLightning {
                    node_id: ln.node_id,
                    address: ln.address,
                }),
        };
        crate::market::advert::signed_advert(&self.identity, terms)
    }

    /// The evidence board this farmer keeps.
    pub fn board(&self) -> &crate::market::evidence::Board {
        &self.board
    }

    /// The metadata store (bond records live there too).
    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    pub fn load(&self, id: &[u8; 32]) -> Result<Option<FarmedContract>, FarmerError> {
        self.db
            .get(&db::key(db::prefix::FARMED, id))
            .map_err(internal)
    }

    fn store(&self, record: &FarmedContract) -> Result<(), FarmerError> {
        self.db
            .put(&db::key(db::prefix::FARMED, &record.contract_id), record)
            .map_err(internal)
    }

    fn existing(&self, id: &[u8; 32]) -> Result<FarmedContract, FarmerError> {
        self.load(id)?
            .ok_or_else(|| FarmerError::UnknownContract(hex::encode(id)))
    }

    /// Every contract this farmer holds.
    pub fn list(&self) -> Result<Vec<FarmedContract>, FarmerError> {
        Ok(self
            .db
            .scan::<FarmedContract>(db::prefix::FARMED)
            .map_err(internal)?
            .into_iter()
            .map(|(_, record)| record)
            .collect())
    }

    async fn tip(&self) -> Result<u32, FarmerError> {
        let height = self
            .bitcoind
            .call("getblockcount", json!([]))
            .await
            .map_err(internal)?;
        height
            .as_u64()
            .map(|h| h as u32)
            .ok_or_else(|| internal("getblockcount is not a number"))
    }

    fn secret(&self, role: Role, index: u32) -> Result<SecretKey, FarmerError> {
        derive_key(&self.seed, role, index).map_err(internal)
    }

    /// Sends a transaction to bitcoind; one it already has is not an error.
    async fn broadcast(&self, tx: &Transaction) -> Result<(), FarmerError> {
        match self
            .bitcoind
            .call("sendrawtransaction", json!([serialize_hex(tx)]))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("already") => Ok(()),
            Err(e) => Err(internal(format!("broadcast {}: {e}", tx.compute_txid()))),
        }
    }

    /// After a restart: hands the watchtower the claims it does not hold yet, and applies
    /// the broadcast rule to every stored claim that was maybe never sent (broadcast now,
    /// left on hold for the claim watcher, or abandoned).
    pub async fn resume(&self) -> Result<(), FarmerError> {
        for mut record in self.list()? {
            self.resume_audits(&mut record).await;
            let Some(download) = &record.download else {
                continue;
            };
            if download.phase == FarmerPhase::Claimed
                && !download.tower_registered
                && self.config.tower.is_some()
            {
                self.register_claim(&mut record).await;
                if record.download.as_ref().is_some_and(|d| d.tower_registered) {
                    self.store(&record)?;
                }
            }
        }
        self.check_claims().await
    }
}
