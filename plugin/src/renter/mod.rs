//! The renter role: `dstore-open` (key exchange, encryption, resumable upload, receipt)
//! and `dstore-download` (the mode-L chain of PROTOCOL.md 3.3: E checked against root_E
//! before any payment, TX1 from the plugin wallet, sig_R on TX2, the Groth16 proof checked
//! against the TX2 the renter signed, TX3 signed for txid = SHA256(D), then f extracted
//! from the broadcast TX2, E unsealed, C decrypted and checked against root_C), plus
//! refunds and fraud proofs. Downloads run as background jobs ([`driver`]) that wait for
//! TX1's confirmations and TX2 without holding up the RPC call, and resume after a restart.
//!
//! State is stored (synced) before each step that commits money or secrets: TX1 before it
//! is broadcast, TX3's signature before it is sent, a refund before it is broadcast.
//!
//! Where to look: [`open`] (open and upload), [`download`] (one function per step of the
//! download, driven by the stored phase), [`driver`] (the background job and the wait for
//! TX2), [`crs`] (the renter's CRS and the proof), [`unseal`] (extraction, unsealing,
//! decryption), [`fraud`] (fraud proofs), [`refund`] (`dstore-refund`), [`tower`] (the
//! watchtower registration), [`conversation`] (the signed message exchange with the
//! farmer), [`records`] (what is stored).

pub mod audit;
mod audit_job;
mod conversation;
mod crs;
mod download;
pub mod driver;
mod fraud;
mod ln_download;
mod open;
pub mod records;
mod refund;
mod refund_fees;
mod sent_log;
mod spender;
mod tower;
mod tx1_group;
mod unseal;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bitcoin::secp256k1::{Keypair, SecretKey};
use bitcoin::Amount;
use dstore_protocol::keys::{derive_key, identity_keypair, Role};
use dstore_protocol::zk::{Crs, Shape};
use serde_json::{json, Value};

use crate::bitcoind::Bitcoind;
use crate::config::DevFault;
use crate::db::{self, Db};
use crate::locks::ContractLocks;
use crate::progress::Tracker;
use crate::tower_client::TowerClient;
use crate::wallet::PluginWallet;
use crate::wire::{PeerCallError, PeerClient};
use records::{RentedContract, RentedDownload};

pub use fraud::verify_fraud_file;
pub use ln_download::DownloadMode;
pub(crate) use open::normalise_url;
pub use tx1_group::Prepared;
pub(crate) use unseal::partial_path;

/// Largest TX2 fee the renter accepts out of the price.
pub const MAX_TX2_FEE: Amount = Amount::from_sat(20_000);
/// Fee of the renter's refund transactions.
pub const REFUND_FEE: Amount = Amount::from_sat(1_000);
/// TX1 is funded only while T1 is at least this many blocks above the tip: the farmer
/// broadcasts TX2 only while the tip is more than its `--tx2-broadcast-margin-blocks`
/// (36 by default) below T1, and TX1's confirmations, the rest of the exchange and TX2's
/// own confirmation need blocks too (12 more). Closer to T1 the farmer might never
/// broadcast TX2, and the renter's money would sit in TX1 until T1 for nothing.
pub const MIN_T1_MARGIN_AT_FUNDING: u32 = 48;
/// Peer calls that make the farmer do heavy work (sealing, proving) get this long.
const SLOW_CALL: Duration = Duration::from_secs(900);
const QUICK_CALL: Duration = Duration::from_secs(60);
/// Names of the renter's refunds in its watchtower registration.
pub const TX1_REFUND_NAME: &str = "tx1-refund";
pub const TX2_REFUND_NAME: &str = "tx2-refund";

/// A CRS with its hash (its cache key on the farmer's side).
type HashedCrs = (Arc<Crs>, [u8; 32]);

/// Why a renter operation failed. Each maps to one JSON-RPC error.
#[derive(Debug, thiserror::Error)]
pub enum RenterError {
    #[error("{0}")]
    Peer(#[from] PeerCallError),
    #[error("unknown contract {0}")]
    UnknownContract(String),
    #[error("invalid parameter: {0}")]
    Invalid(String),
    #[error("the farmer misbehaved: {0}")]
    Farmer(String),
    #[error("{0}")]
    Wallet(#[from] crate::wallet::WalletError),
    #[error("bitcoind: {0}")]
    Bitcoind(#[from] crate::bitcoind::BitcoindError),
    #[error("{0}")]
    Wait(String),
    /// The chain is too close to T1 to fund TX1; nothing was paid.
    #[error("{0}")]
    TooLate(String),
    /// The error an earlier background run of this download ended with.
    #[error("{0}")]
    Earlier(String),
    #[error("fraud: {0}")]
    Fraud(String),
    /// A mode-N payment failed or the Lightning node could not be asked.
    #[error("{0}")]
    Lightning(String),
    #[error("internal error: {0}")]
    Internal(String),
}

fn internal(e: impl std::fmt::Display) -> RenterError {
    RenterError::Internal(e.to_string())
}

fn farmer_fault(e: impl std::fmt::Display) -> RenterError {
    RenterError::Farmer(e.to_string())
}

/// The renter role's state.
pub struct Renter {
    seed: [u8; 32],
    identity: Keypair,
    db: Arc<Db>,
    wallet: Arc<PluginWallet>,
    bitcoind: Arc<Bitcoind>,
    work_dir: PathBuf,
    crs_dir: PathBuf,
    fraud_dir: PathBuf,
    pub progress: Arc<Tracker>,
    dev_fault: Option<DevFault>,
    /// The CRS in use, by shape, with its hash (loading and hashing it takes seconds).
    crs: tokio::sync::Mutex<std::collections::HashMap<Shape, HashedCrs>>,
    locks: ContractLocks,
    /// The watchtower each download is registered with (`--watchtower-url`).
    tower: Option<Arc<TowerClient>>,
    /// A third-party auditor that holds the audit salts instead of `tower`
    /// (`--auditor-url`).
    auditor: Option<Arc<TowerClient>>,
    /// The shortest storage term accepted (`--min-storage-blocks`).
    min_storage_blocks: u32,
    /// The download jobs running in the background, by contract.
    jobs: driver::Jobs,
    /// The audit setups running in the background (once TX_A is broadcast), by contract.
    audit_jobs: audit_job::AuditJobs,
    /// The Lightning node mode-N downloads are paid through (None: mode N is off).
    lightning: Option<crate::ln::Lightning>,
}

impl Renter {
    pub fn new(
        seed: [u8; 32],
        db: Arc<Db>,
        wallet: Arc<PluginWallet>,
        bitcoind: Arc<Bitcoind>,
        network_dir: &Path,
        crs_dir: PathBuf,
        dev_fault: Option<DevFault>,
    ) -> Result<Renter, RenterError> {
        let work_dir = network_dir.join("renter");
        let fraud_dir = network_dir.join("fraud");
        for dir in [&work_dir, &crs_dir, &fraud_dir] {
            std::fs::create_dir_all(dir).map_err(internal)?;
        }
        Ok(Renter {
            identity: identity_keypair(&seed).map_err(internal)?,
            seed,
            db,
            wallet,
            bitcoind,
            work_dir,
            crs_dir,
            fraud_dir,
            progress: Arc::new(Tracker::default()),
            dev_fault,
            crs: Default::default(),
            locks: ContractLocks::default(),
            tower: None,
            auditor: None,
            min_storage_blocks: crate::config::DEFAULT_MIN_STORAGE_BLOCKS,
            jobs: Default::default(),
            audit_jobs: Default::default(),
            lightning: None,
        })
    }

    /// Pays mode-N downloads (PROTOCOL.md 4b) through `ln` from now on.
    pub fn with_lightning(mut self, ln: Option<crate::ln::Lightning>) -> Renter {
        self.lightning = ln;
        self
    }

    /// Refuses storage terms shorter than `blocks` past the tip (`--min-storage-blocks`).
    pub fn with_min_storage_blocks(mut self, blocks: u32) -> Renter {
        self.min_storage_blocks = blocks;
        self
    }

    /// Registers every download with `tower` from now on.
    pub fn with_watchtower(mut self, tower: Option<Arc<TowerClient>>) -> Renter {
        self.tower = tower;
        self
    }

    /// Gives the audit salts to `auditor` instead of the renter's own tower.
    pub fn with_auditor(mut self, auditor: Option<Arc<TowerClient>>) -> Renter {
        self.auditor = auditor;
        self
    }

    pub fn load(&self, id: &[u8; 32]) -> Result<Option<RentedContract>, RenterError> {
        self.db
            .get(&db::key(db::prefix::RENTED, id))
            .map_err(internal)
    }

    fn existing(&self, id: &[u8; 32]) -> Result<RentedContract, RenterError> {
        self.load(id)?
            .ok_or_else(|| RenterError::UnknownContract(hex::encode(id)))
    }

    fn store(&self, record: &RentedContract) -> Result<(), RenterError> {
        self.db
            .put(&db::key(db::prefix::RENTED, &record.contract_id), record)
            .map_err(internal)
    }

    pub fn list(&self) -> Result<Vec<RentedContract>, RenterError> {
        Ok(self
            .db
            .scan::<RentedContract>(db::prefix::RENTED)
            .map_err(internal)?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    /// The metadata store (the file layer keeps its records next to the contracts').
    pub(crate) fn db(&self) -> &Arc<Db> {
        &self.db
    }

    /// The renter's staging directory.
    pub(crate) fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// A peer client for the farmer at `url`, signed with this renter's identity.
    pub(crate) fn peer(&self, url: &str) -> PeerClient {
        PeerClient::new(url, self.identity)
    }

    /// The bitcoind client (the file layer reads the tip for its shard probes).
    pub(crate) fn bitcoind(&self) -> &Arc<Bitcoind> {
        &self.bitcoind
    }

    fn secret(&self, role: Role, index: u32) -> Result<SecretKey, RenterError> {
        derive_key(&self.seed, role, index).map_err(internal)
    }

    async fn tip(&self) -> Result<u32, RenterError> {
        let height = self.bitcoind.call("getblockcount", json!([])).await?;
        height
            .as_u64()
            .map(|h| h as u32)
            .ok_or_else(|| internal("getblockcount is not a number"))
    }

    fn client(&self, record: &RentedContract) -> PeerClient {
        PeerClient::new(&record.farmer_url, self.identity)
    }
}

/// The download being run: the contract's latest.
fn current(record: &mut RentedContract) -> &mut RentedDownload {
    record
        .downloads
        .last_mut()
        .expect("a download was pushed before its steps run")
}

/// `base` with the fields of `extra` added (a JSON reply built in two parts).
fn merge(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    base
}

#[cfg(test)]
mod tests {
    use super::records::DownloadPhase;

    #[test]
    fn only_funded_downloads_lock_money() {
        use DownloadPhase::*;
        for phase in [Tx1Funded, Tx2Signed, Tx3Signed] {
            assert!(phase.money_locked(), "{phase:?}");
        }
        for phase in [Offered, Fetching, Done, Fraud, Refunded, Failed] {
            assert!(!phase.money_locked(), "{phase:?}");
        }
    }
}
