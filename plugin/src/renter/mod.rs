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

pub mod audit;
pub mod driver;
pub mod records;
mod refund_fees;
mod spender;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bitcoin::consensus::encode::serialize_hex;
use bitcoin::secp256k1::{Keypair, SecretKey, SECP256K1};
use bitcoin::{Amount, FeeRate, OutPoint, Transaction, Txid};
use dstore_protocol::contract::{txid_from_digest, DownloadContract, RefundDestination};
use dstore_protocol::datapath::{ciphertext_len, decrypt_stream, encrypt_and_build_tree};
use dstore_protocol::extract::extract_farmer_key;
use dstore_protocol::keys::{
    commit_key, derive_key, identity_keypair, joint_secret_key, verify_reveal, Role,
};
use dstore_protocol::merkle::{MerkleBuilder, MerkleCommitment, MerkleTree, MerkleWriter};
use dstore_protocol::messages::{
    check_storage_expiry, Claimed, CrsOffer, DownloadOffer, DownloadRequest, FarmerReveal,
    OpenAccepted, OpenRequest, ProofReady, RenterReveal, Tx1Funded, Tx2RenterSig, Tx2Statement,
    Tx2Unsigned, Tx3RenterSig, UploadDone,
};
use dstore_protocol::peer::PeerMessage;
use dstore_protocol::receipt::StorageReceipt;
use dstore_protocol::seal::{
    build_fraud_proof, check_sealed_copy, find_bad_segment, unseal, verify_fraud_proof,
    verify_transcript, FraudEvidence, FraudProof,
};
use dstore_protocol::watch::{ExtractSpec, Registration, WatchRole};
use dstore_protocol::zk::{self, Crs, Shape};
use rand::RngCore;
use serde_json::{json, Value};

use crate::bitcoind::Bitcoind;
use crate::config::DevFault;
use crate::db::{self, Db};
use crate::farmer::UNKNOWN_CRS;
use crate::locks::ContractLocks;
use crate::progress::{reporter, Tracker};
use crate::tower_client::TowerClient;
use crate::wallet::PluginWallet;
use crate::wire::{PeerCallError, PeerClient, BODY_MISMATCH};
use records::{DownloadPhase, RentedContract, RentedDownload, StoragePhase, TowerRecord};

/// Largest TX2 fee the renter accepts out of the price.
pub const MAX_TX2_FEE: Amount = Amount::from_sat(20_000);
/// Fee of the renter's refund transactions.
pub const REFUND_FEE: Amount = Amount::from_sat(1_000);
/// How often a broken upload is resumed before `dstore-open` gives up.
const UPLOAD_ATTEMPTS: u32 = 5;
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
/// With audits, the storage term must outlast the last audit's claim window by this many
/// blocks (the audits are proposed after the upload, at a later tip).
const AUDIT_EXPIRY_MARGIN: u32 = 144;
/// Largest fraud-proof file `dstore-verify-fraud` reads.
const MAX_FRAUD_FILE: u64 = 16 << 20;

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
        })
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

    /// Sends the next message of `record`'s conversation and opens the farmer's reply,
    /// advancing both sequence numbers (the caller stores the record).
    async fn exchange<Q: PeerMessage, R: PeerMessage>(
        &self,
        record: &mut RentedContract,
        request: &Q,
        timeout: Duration,
    ) -> Result<R, RenterError> {
        let client = self.client(record);
        let mut attempt = 0;
        let opened = loop {
            let sent = client
                .exchange::<Q, R>(
                    record.contract_id,
                    record.outbound,
                    request,
                    record.farmer,
                    timeout,
                )
                .await;
            match sent {
                // The same bytes again: the farmer answers an exact retry with its reply.
                Err(PeerCallError::Unreachable { .. }) if attempt < 2 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                other => break other?,
            }
        };
        record.inbound = record
            .inbound
            .next(opened.seq)
            .map_err(|e| farmer_fault(format!("reply out of sequence: {e}")))?;
        record.outbound += 1;
        // The farmer has acted on this message: record that before anything else.
        self.store(record)?;
        Ok(opened.body)
    }

    /// Starts a new exchange (a download). If this renter crashed after the farmer acted
    /// on its last message but before it recorded the reply, both sequence numbers are
    /// one behind: the farmer says, in a hint it signs for the refused message, which
    /// number it expects, and the conversation resumes from there. Only that one step
    /// forward is accepted, and only when signed by the farmer.
    async fn exchange_resync<Q: PeerMessage, R: PeerMessage>(
        &self,
        record: &mut RentedContract,
        request: &Q,
        timeout: Duration,
    ) -> Result<R, RenterError> {
        match self.exchange(record, request, timeout).await {
            // `next_seq` survives only in a refusal the farmer signed for this very
            // message (see `wire::verified_resync`); anything else changes nothing.
            Err(RenterError::Peer(PeerCallError::Refused(e)))
                if e.next_seq.is_some() && e.next_seq == record.outbound.checked_add(1) =>
            {
                tracing::info!(from = record.outbound, to = ?e.next_seq, "resynchronising with the farmer");
                record.outbound = e.next_seq.unwrap_or(record.outbound);
                // The farmer answers each accepted message once, so its own counter
                // stands at the same number.
                record.inbound = dstore_protocol::peer::SequenceGuard {
                    next: record.outbound,
                };
                self.exchange(record, request, timeout).await
            }
            other => other,
        }
    }

    // ----- dstore-open -----------------------------------------------------------------

    /// Stores `file` with the farmer at `farmer_url`; returns the contract id.
    pub async fn open(
        &self,
        farmer_url: &str,
        file: &Path,
        price: Option<Amount>,
        audits: Option<records::AuditRequest>,
    ) -> Result<[u8; 32], RenterError> {
        if let Some(request) = &audits {
            request.check()?;
        }
        let meta = std::fs::metadata(file)
            .map_err(|e| RenterError::Invalid(format!("{}: {e}", file.display())))?;
        if !meta.is_file() {
            return Err(RenterError::Invalid(format!(
                "{} is not a file",
                file.display()
            )));
        }
        let farmer_url = normalise_url(farmer_url)?;
        let info = PeerClient::new(&farmer_url, self.identity).info().await?;
        let price = price.unwrap_or(Amount::from_sat(info.price_per_download_sat));
        let length = ciphertext_len(meta.len())
            .ok_or_else(|| RenterError::Invalid("file too large".into()))?;
        if length > info.max_file_bytes {
            return Err(RenterError::Invalid(format!(
                "the encrypted file is {length} bytes; this farmer stores at most {}",
                info.max_file_bytes
            )));
        }
        let mut contract_id = [0u8; 32];
        let mut file_key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut contract_id);
        rand::thread_rng().fill_bytes(&mut file_key);
        let mut record = RentedContract {
            contract_id,
            farmer_url,
            farmer: info.identity,
            file_key,
            source: file.display().to_string(),
            plaintext_length: meta.len(),
            ciphertext_length: length,
            root_c: None,
            price,
            phase: StoragePhase::Encrypting,
            receipt: None,
            outbound: 0,
            inbound: Default::default(),
            downloads: Vec::new(),
            requested_audits: audits,
            audit: None,
            accepted_expiry: None,
        };
        let id_hex = hex::encode(contract_id);
        let _guard = self.locks.lock(&contract_id).await;
        let mut outcome = self.run_open(&mut record).await;
        if outcome.is_ok() {
            outcome = self.open_audits(&mut record).await;
        }
        self.discard_staged(&record);
        self.progress.finish(&id_hex);
        outcome.map(|()| contract_id)
    }

    /// Plans and sets up the audit contract; a failure before TX_A is broadcast marks the
    /// audits failed (no money moved), a later one leaves the setup to resume at start.
    async fn open_audits(&self, record: &mut RentedContract) -> Result<(), RenterError> {
        let Some(request) = record.requested_audits else {
            return Ok(());
        };
        self.progress
            .phase(&hex::encode(record.contract_id), "audit setup", 0);
        if record.audit.is_none() {
            self.plan_audits(record, request).await?;
        }
        let outcome = self.setup_audits(record).await;
        if let (Err(e), Some(audit)) = (&outcome, record.audit.as_mut()) {
            audit.error = Some(e.to_string());
            if audit.phase < records::RentedAuditPhase::Swapping {
                audit.phase = records::RentedAuditPhase::Failed;
            }
            self.store(record)?;
        }
        outcome
    }

    /// The staged copy of C is kept until the upload is done and the audit candidates are
    /// chosen from it.
    fn discard_staged(&self, record: &RentedContract) {
        if record.phase == StoragePhase::Refused {
            let _ = std::fs::remove_file(self.staged_c(&record.contract_id));
            return;
        }
        if record.phase != StoragePhase::Stored {
            return;
        }
        let pending = record.audit.as_ref().is_some_and(|a| {
            a.phase < records::RentedAuditPhase::Swapping
                && a.phase != records::RentedAuditPhase::Failed
        });
        if !pending {
            let _ = std::fs::remove_file(self.staged_c(&record.contract_id));
        }
    }

    async fn run_open(&self, record: &mut RentedContract) -> Result<(), RenterError> {
        // Terms first: a farmer that refuses costs no encryption pass.
        let accepted: OpenAccepted = self
            .exchange(
                record,
                &OpenRequest {
                    file_length: record.ciphertext_length,
                    download_price: record.price,
                },
                QUICK_CALL,
            )
            .await?;
        if accepted.file_length != record.ciphertext_length {
            return Err(farmer_fault("it accepted a different length"));
        }
        self.check_term(record, accepted.expiry_height).await?;
        record.accepted_expiry = Some(accepted.expiry_height);
        self.store(record)?;
        self.finish_open(record).await
    }

    /// The farmer's storage expiry must leave `--min-storage-blocks` above the tip and,
    /// with audits, outlast the last audit's claim window (T_i + W) by a margin. A short
    /// term ends the contract here: marked refused and stored, before any upload or
    /// payment.
    async fn check_term(
        &self,
        record: &mut RentedContract,
        expiry: u32,
    ) -> Result<(), RenterError> {
        let tip = self.tip().await?;
        let audits = record.requested_audits.map_or(0, |r| {
            r.audits
                .saturating_mul(r.period)
                .saturating_add(u32::from(r.claim_window()))
                .saturating_add(AUDIT_EXPIRY_MARGIN)
        });
        let min_blocks = self.min_storage_blocks.max(audits);
        let mut outcome = check_storage_expiry(expiry, tip, min_blocks).map_err(farmer_fault);
        if outcome.is_ok() && record.accepted_expiry.is_some_and(|agreed| expiry < agreed) {
            outcome = Err(farmer_fault(format!(
                "the receipt's expiry {expiry} is before the {} it accepted",
                record.accepted_expiry.unwrap_or_default()
            )));
        }
        if let Err(e) = &outcome {
            tracing::warn!(contract = %hex::encode(record.contract_id), "storage term refused: {e}");
            record.phase = StoragePhase::Refused;
            self.store(record)?;
        }
        outcome
    }

    /// Encrypts (unless done), uploads (from where the farmer stands) and checks the
    /// receipt: the part of `dstore-open` that a restart resumes.
    async fn finish_open(&self, record: &mut RentedContract) -> Result<(), RenterError> {
        let id = record.contract_id;
        let id_hex = hex::encode(id);
        if record.phase == StoragePhase::Encrypting {
            self.progress
                .phase(&id_hex, "encrypting", record.plaintext_length);
            let tree = self.encrypt(record, Path::new(&record.source)).await?;
            if tree.length() != record.ciphertext_length {
                return Err(RenterError::Invalid(
                    "the file changed while it was read".into(),
                ));
            }
            record.root_c = Some(tree.root());
            record.phase = StoragePhase::Uploading;
            self.store(record)?;
        }
        let stored = MerkleCommitment {
            root: record.root_c.ok_or_else(|| internal("no root_C"))?,
            length: record.ciphertext_length,
        };
        self.upload(record).await?;
        self.progress
            .phase(&id_hex, "receipt", record.ciphertext_length);
        let done = UploadDone {
            root_c: stored.root,
            length: stored.length,
        };
        let receipt: StorageReceipt = self.exchange(record, &done, SLOW_CALL).await?;
        receipt
            .verify(&record.farmer)
            .map_err(|e| farmer_fault(format!("receipt: {e}")))?;
        if receipt.contract_id != id || receipt.commitment() != stored {
            return Err(farmer_fault("the receipt is for other data"));
        }
        self.check_term(record, receipt.expiry_height).await?;
        record.receipt = Some(receipt);
        record.phase = StoragePhase::Stored;
        self.store(record)?;
        tracing::info!(contract = %id_hex, bytes = record.ciphertext_length, "file stored");
        Ok(())
    }

    /// After a restart: finishes every upload a crash interrupted, in the background.
    pub fn resume_uploads(self: &Arc<Self>) -> Result<(), RenterError> {
        for record in self.list()? {
            if record.phase == StoragePhase::Refused {
                continue;
            }
            if record.phase == StoragePhase::Stored {
                if record.audit.is_some() {
                    self.resume_audit_in_background(record.contract_id);
                }
                continue;
            }
            let renter = self.clone();
            tokio::spawn(async move {
                let id = record.contract_id;
                let _guard = renter.locks.lock(&id).await;
                let Ok(Some(mut record)) = renter.load(&id) else {
                    return;
                };
                tracing::info!(contract = %hex::encode(id), "resuming an interrupted upload");
                let mut outcome = renter.finish_open(&mut record).await;
                if outcome.is_ok() {
                    outcome = renter.open_audits(&mut record).await;
                }
                if let Err(e) = outcome {
                    tracing::warn!(contract = %hex::encode(id), "resumed upload failed: {e}");
                }
                renter.discard_staged(&record);
                renter.progress.finish(&hex::encode(id));
            });
        }
        Ok(())
    }

    fn resume_audit_in_background(self: &Arc<Self>, id: [u8; 32]) {
        let renter = self.clone();
        tokio::spawn(async move {
            let _guard = renter.locks.lock(&id).await;
            let Ok(Some(mut record)) = renter.load(&id) else {
                return;
            };
            renter.resume_audits(&mut record).await;
            renter.discard_staged(&record);
        });
    }

    fn staged_c(&self, id: &[u8; 32]) -> PathBuf {
        self.work_dir.join(format!("{}.c", hex::encode(id)))
    }

    fn leaves_path(&self, id: &[u8; 32]) -> PathBuf {
        self.work_dir.join(format!("{}.leaves", hex::encode(id)))
    }

    /// Encrypts the file into the staged C and keeps C's Merkle leaves (for fraud proofs).
    async fn encrypt(
        &self,
        record: &RentedContract,
        file: &Path,
    ) -> Result<MerkleTree, RenterError> {
        let (key, id) = (record.file_key, record.contract_id);
        let (source, staged, leaves) = (
            file.to_path_buf(),
            self.staged_c(&id),
            self.leaves_path(&id),
        );
        tokio::task::spawn_blocking(move || {
            let input = std::io::BufReader::new(std::fs::File::open(&source)?);
            let output = std::io::BufWriter::new(std::fs::File::create(&staged)?);
            let tree = encrypt_and_build_tree(&key, &id, input, output)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let bytes: Vec<u8> = tree.leaves().iter().flatten().copied().collect();
            crate::farmer::write_atomically(&leaves, &bytes)?;
            Ok::<_, std::io::Error>(tree)
        })
        .await
        .map_err(internal)?
        .map_err(|e| RenterError::Invalid(format!("cannot encrypt {}: {e}", file.display())))
    }

    /// Streams the staged C, resuming from the farmer's count after a broken connection.
    async fn upload(&self, record: &RentedContract) -> Result<(), RenterError> {
        let id = record.contract_id;
        let id_hex = hex::encode(id);
        let client = self.client(record);
        self.progress
            .phase(&id_hex, "uploading", record.ciphertext_length);
        let mut last_error = None;
        for attempt in 0..UPLOAD_ATTEMPTS {
            let status = match client.upload_status(&id).await {
                Ok(status) => status,
                Err(e) => {
                    last_error = Some(e);
                    tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
                    continue;
                }
            };
            if status.received == record.ciphertext_length {
                return Ok(());
            }
            let sent = client
                .upload_from(
                    &id,
                    &self.staged_c(&id),
                    status.received,
                    reporter(&self.progress, &id_hex),
                )
                .await;
            match sent {
                Ok(status) if status.received == record.ciphertext_length => return Ok(()),
                Ok(_) => {}
                // A part altered on the way (its bytes do not match the signed hash):
                // nothing of it was stored, so it is simply sent again.
                Err(PeerCallError::Refused(e)) if e.code == BODY_MISMATCH => {
                    last_error = Some(PeerCallError::Refused(e));
                }
                Err(PeerCallError::Refused(e)) => return Err(PeerCallError::Refused(e).into()),
                Err(e) => last_error = Some(e),
            }
            tracing::info!(contract = %id_hex, "upload interrupted; resuming");
            tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
        }
        Err(last_error
            .map(RenterError::from)
            .unwrap_or_else(|| RenterError::Farmer("the upload never completed".into())))
    }

    // ----- dstore-download -------------------------------------------------------------

    /// Buys one download of `record`'s file for `output`: the exchange of PROTOCOL.md 3.3
    /// up to TX3's signature (the driver then waits for TX2 and finishes).
    async fn run_download(
        &self,
        record: &mut RentedContract,
        output: &Path,
        job: &driver::Job,
    ) -> Result<(), RenterError> {
        let id = record.contract_id;
        let id_hex = hex::encode(id);
        let receipt = record.receipt.ok_or_else(|| internal("no receipt"))?;
        self.progress.phase(&id_hex, "key exchange", 0);
        let tip = self.tip().await?;
        let key_index = self.db.next_key_index().map_err(internal)?;
        let (r, r2) = (
            self.secret(Role::Download, key_index)?,
            self.secret(Role::Tx2, key_index)?,
        );
        let mut download_id = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut download_id);
        let (commitment, reveal) = commit_key(&mut rand::thread_rng(), &r, &id);
        record.downloads.push(RentedDownload {
            download_id,
            key_index,
            phase: DownloadPhase::Offered,
            renter_commitment: commitment,
            renter_reveal: reveal,
            farmer_commitment: None,
            contract: None,
            transcript: None,
            tx1: None,
            tx1_outpoint: None,
            unsigned_tx2: None,
            tx2_txid: None,
            tx3_txid: None,
            start_height: tip,
            output: Some(output.display().to_string()),
            fraud_proof: None,
            refund_txid: None,
            error: None,
            watchtower: None,
            min_tx1_confirmations: 0,
            unreported: false,
        });
        self.store(record)?;
        job.set_download(download_id);

        // 1. Commitments, then reveals; the farmer's terms are checked.
        let request = DownloadRequest {
            download_id,
            renter_commitment: commitment,
            renter_tx2_key: r2.public_key(SECP256K1),
        };
        let offer: DownloadOffer = self.exchange_resync(record, &request, QUICK_CALL).await?;
        offer.check(record.price, tip).map_err(farmer_fault)?;
        if offer.download_id != download_id {
            return Err(farmer_fault("the offer is for another download"));
        }
        let d = current(record);
        d.farmer_commitment = Some(offer.farmer_commitment);
        d.min_tx1_confirmations = offer.min_tx1_confirmations;
        self.store(record)?;
        self.progress
            .phase(&id_hex, "sealing", record.ciphertext_length);
        let revealed: FarmerReveal = self
            .exchange(record, &RenterReveal { reveal }, SLOW_CALL)
            .await?;
        verify_reveal(&offer.farmer_commitment, &revealed.reveal, &id).map_err(farmer_fault)?;
        let contract = DownloadContract {
            contract_id: id,
            farmer_key: revealed.reveal.pubkey,
            renter_key: r.public_key(SECP256K1),
            renter_tx2_key: r2.public_key(SECP256K1),
            farmer_tx2_key: offer.farmer_tx2_key,
            refund_height: offer.refund_height,
            payout_delay: offer.payout_delay,
            price: record.price,
        };
        let transcript = revealed.transcript;
        verify_transcript(
            &transcript,
            &record.farmer,
            &contract.seal_context(download_id),
            &receipt,
        )
        .map_err(farmer_fault)?;
        if transcript.length != receipt.length {
            return Err(farmer_fault("the sealed copy's length differs from C's"));
        }
        let d = current(record);
        d.contract = Some(contract);
        d.transcript = Some(transcript);
        d.phase = DownloadPhase::Fetching;
        self.store(record)?;

        // 2. E is fetched and checked against root_E before any money moves.
        let sealed = self.sealed_file(&download_id);
        self.progress
            .phase(&id_hex, "downloading", transcript.length);
        self.client(record)
            .fetch_sealed(
                &id,
                &download_id,
                &sealed,
                transcript.length,
                reporter(&self.progress, &id_hex),
            )
            .await?;
        let path = sealed.clone();
        tokio::task::spawn_blocking(move || {
            check_sealed_copy(
                &transcript,
                std::io::BufReader::new(std::fs::File::open(&path)?),
            )
            .map(|_| ())
            .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .await
        .map_err(internal)?
        .map_err(|e| {
            farmer_fault(format!(
                "the sealed copy fails root_E ({e}); nothing was paid"
            ))
        })?;

        // 3. TX1, stored before it is broadcast, and only while T1 is far enough ahead.
        self.progress.phase(&id_hex, "funding TX1", 0);
        check_t1_margin(contract.refund_height, self.tip().await?)?;
        let tx1_output = contract.tx1_output().map_err(internal)?;
        let wallet = self.wallet.clone();
        let funded = tokio::task::spawn_blocking(move || wallet.fund_output(tx1_output, None))
            .await
            .map_err(internal)??;
        contract
            .check_tx1(&funded.tx, funded.vout, &funded.prevouts)
            .map_err(internal)?;
        let outpoint = OutPoint {
            txid: funded.tx.compute_txid(),
            vout: funded.vout,
        };
        let d = current(record);
        d.tx1 = Some(funded.tx.clone());
        d.tx1_outpoint = Some(outpoint);
        d.phase = DownloadPhase::Tx1Funded;
        self.store(record)?;
        // The watchtower holds TX1's refund (and watches for TX2) before TX1 exists.
        let last = record.downloads.len() - 1;
        self.sync_tower(record, last).await?;
        let wallet = self.wallet.clone();
        let tx1 = funded.tx.clone();
        tokio::task::spawn_blocking(move || wallet.broadcast(&tx1))
            .await
            .map_err(internal)??;

        // 4. TX2: check the farmer's unsigned TX2, sign it, get the statement about it.
        let unsigned: Tx2Unsigned = self
            .exchange(record, &Tx1Funded { outpoint }, QUICK_CALL)
            .await?;
        let unsigned = unsigned.tx;
        contract
            .check_unsigned_tx2(&unsigned, outpoint, MAX_TX2_FEE)
            .map_err(farmer_fault)?;
        let sig_r = contract.renter_sign_tx2(&unsigned, &r).map_err(internal)?;
        let d = current(record);
        d.unsigned_tx2 = Some(unsigned.clone());
        d.phase = DownloadPhase::Tx2Signed;
        self.store(record)?;
        let statement: Tx2Statement = self
            .exchange(
                record,
                &Tx2RenterSig {
                    signature: sig_r.to_vec(),
                },
                QUICK_CALL,
            )
            .await?;
        let statement = statement.statement;
        statement
            .check_against(&contract, &unsigned, &sig_r)
            .map_err(|e| farmer_fault(format!("the TX2 statement: {e}")))?;

        // 5. The proof, under this renter's own CRS.
        self.progress.phase(&id_hex, "proving", 0);
        let (crs, crs_hash) = self.crs_for(&statement.shape).await?;
        let proof = self.get_proof(record, &crs, crs_hash).await?;
        let verified = {
            let (crs, statement) = (crs.clone(), statement.clone());
            let proof_bytes = proof.proof.clone();
            tokio::task::spawn_blocking(move || {
                let proof = zk::deserialize_proof(&proof_bytes)?;
                zk::verify(&crs.vk, &statement, &proof)
            })
            .await
            .map_err(internal)?
        };
        verified
            .map_err(|e| farmer_fault(format!("the proof does not verify ({e}); not paying")))?;

        // 6. TX3 for txid = SHA256(D), stored as signed before the signature leaves.
        let tx2_txid = txid_from_digest(&statement.digest);
        let tx2_fee = record
            .price
            .checked_sub(unsigned.output[0].value)
            .ok_or_else(|| internal("TX2 pays more than the price"))?;
        let value = contract.tx2_value(tx2_fee).map_err(internal)?;
        let tx3 = contract
            .unsigned_tx3(tx2_txid, value, proof.tx3_fee, proof.payout_script.clone())
            .map_err(farmer_fault)?;
        let sig3 = contract.sign_tx3(&tx3, value, &r2).map_err(internal)?;
        let d = current(record);
        d.tx2_txid = Some(tx2_txid);
        d.phase = DownloadPhase::Tx3Signed;
        self.store(record)?;
        // The signature lets the farmer broadcast TX2: TX2's refund goes to the tower first.
        self.sync_tower(record, last).await?;
        self.progress.phase(&id_hex, "waiting for TX2", 0);
        let claimed = self
            .exchange::<_, Claimed>(
                record,
                &Tx3RenterSig {
                    signature: sig3.to_vec(),
                },
                SLOW_CALL,
            )
            .await;
        match &claimed {
            Ok(c) if c.tx2 == tx2_txid => current(record).tx3_txid = Some(c.tx3),
            Ok(_) => tracing::warn!("the farmer's claim names another TX2"),
            Err(e) => tracing::warn!("no claim from the farmer ({e}); watching the chain"),
        }
        self.store(record)?;
        Ok(())
    }

    /// Finishes the paid download at the end of `record` once TX2 is known: extracts f,
    /// unseals E, checks root_C, decrypts to `output`.
    async fn complete(
        &self,
        record: &mut RentedContract,
        r: &SecretKey,
        tx2: Transaction,
        output: &Path,
    ) -> Result<Value, RenterError> {
        let id = record.contract_id;
        let d = current(record).clone();
        let contract = d.contract.ok_or_else(|| internal("no contract"))?;
        let f = extract_farmer_key(
            &tx2,
            0,
            &contract.farmer_key,
            &id,
            Some(&contract.tx1_script_pubkey().map_err(internal)?),
        )
        .map_err(farmer_fault)?;
        let joint = joint_secret_key(r, &f).map_err(internal)?;
        self.progress
            .phase(&hex::encode(id), "decrypting", record.ciphertext_length);
        self.finish_download(record, &joint, r, tx2, output).await?;
        let _ = std::fs::remove_file(self.sealed_file(&d.download_id));
        let done = current(record).clone();
        Ok(done_json(record, &done))
    }

    fn sealed_file(&self, download_id: &[u8; 32]) -> PathBuf {
        self.work_dir
            .join(format!("{}.sealed", hex::encode(download_id)))
    }

    /// This renter's CRS for `shape` and its hash: generated once, kept on disk and in
    /// memory.
    async fn crs_for(&self, shape: &Shape) -> Result<HashedCrs, RenterError> {
        let mut cache = self.crs.lock().await;
        if let Some(found) = cache.get(shape) {
            return Ok(found.clone());
        }
        let crs = self.load_or_make_crs(shape).await?;
        let hashed = crs.clone();
        let hash = tokio::task::spawn_blocking(move || zk::crs_hash(&hashed))
            .await
            .map_err(internal)?;
        cache.insert(*shape, (crs.clone(), hash));
        Ok((crs, hash))
    }

    async fn load_or_make_crs(&self, shape: &Shape) -> Result<Arc<Crs>, RenterError> {
        let key = hex::encode(dstore_protocol::hashing::sha256(&[&serde_json::to_vec(
            shape,
        )
        .map_err(internal)?]));
        let path = self.crs_dir.join(format!("renter-{key}.crs"));
        let shape = *shape;
        let lock_path = self.crs_dir.join(format!("renter-{key}.lock"));
        let crs = tokio::task::spawn_blocking(move || {
            // One generation per shape even when several plugins share the cache.
            let lock = std::fs::File::create(&lock_path).map_err(internal)?;
            lock.lock().map_err(internal)?;
            if let Ok(bytes) = std::fs::read(&path) {
                if let Ok(crs) = zk::deserialize_trusted_crs(&bytes) {
                    return Ok(crs);
                }
            }
            tracing::info!("generating a CRS for this TX2 shape (once)");
            let crs = zk::setup(&shape, &mut rand::rngs::OsRng).map_err(internal)?;
            crate::farmer::write_atomically(&path, &zk::serialize_trusted_crs(&crs))
                .map_err(internal)?;
            Ok::<_, RenterError>(crs)
        })
        .await
        .map_err(internal)??;
        if crate::dev_fault!(self.dev_fault, SubvertCrs) {
            return Ok(Arc::new(subverted(crs)));
        }
        Ok(Arc::new(crs))
    }

    /// Offers the CRS by hash; sends its bytes first if the farmer has not checked it.
    async fn get_proof(
        &self,
        record: &mut RentedContract,
        crs: &Arc<Crs>,
        crs_hash: [u8; 32],
    ) -> Result<ProofReady, RenterError> {
        let offer = CrsOffer { crs_hash };
        match self
            .exchange::<_, ProofReady>(record, &offer, SLOW_CALL)
            .await
        {
            Err(RenterError::Peer(PeerCallError::Refused(e))) if e.code == UNKNOWN_CRS => {}
            other => return other,
        }
        let bytes = {
            let crs = crs.clone();
            tokio::task::spawn_blocking(move || zk::serialize_crs(&crs))
                .await
                .map_err(internal)?
        };
        let download_id = record
            .downloads
            .last()
            .map(|d| d.download_id)
            .ok_or_else(|| internal("no download"))?;
        self.client(record)
            .put_crs(&record.contract_id, &download_id, bytes)
            .await?;
        self.exchange(record, &offer, SLOW_CALL).await
    }

    /// Unseals E into C', checks it against root_C and decrypts it to `output`; on a
    /// mismatch, writes nothing there and stores a fraud proof instead.
    async fn finish_download(
        &self,
        record: &mut RentedContract,
        joint: &SecretKey,
        r: &SecretKey,
        tx2: Transaction,
        output: &Path,
    ) -> Result<(), RenterError> {
        let d = current(record).clone();
        let transcript = d.transcript.ok_or_else(|| internal("no transcript"))?;
        let receipt = record.receipt.ok_or_else(|| internal("no receipt"))?;
        let (key, id) = (record.file_key, record.contract_id);
        let sealed = self.sealed_file(&d.download_id);
        let unsealed = self
            .work_dir
            .join(format!("{}.c", hex::encode(d.download_id)));
        let joint_key = *joint;
        let (sealed_in, unsealed_out) = (sealed.clone(), unsealed.clone());
        let root_ok = tokio::task::spawn_blocking(move || {
            let input = std::io::BufReader::new(std::fs::File::open(&sealed_in)?);
            let out = std::io::BufWriter::new(std::fs::File::create(&unsealed_out)?);
            let mut tee = MerkleWriter::new(out, MerkleBuilder::new());
            unseal(&joint_key, &transcript.ephemeral, input, &mut tee)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let (mut out, builder) = tee.into_parts();
            std::io::Write::flush(&mut out)?;
            Ok::<_, std::io::Error>(builder.finish() == receipt.commitment())
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        if !root_ok {
            let _ = std::fs::remove_file(&unsealed);
            let proof = self.fraud_proof(record, joint, r, tx2).await?;
            return Err(RenterError::Fraud(proof));
        }
        let partial = partial_path(output);
        let (unsealed_in, partial_out) = (unsealed.clone(), partial.clone());
        let decrypted = tokio::task::spawn_blocking(move || {
            let input = std::io::BufReader::new(std::fs::File::open(&unsealed_in)?);
            let mut out = std::io::BufWriter::new(std::fs::File::create(&partial_out)?);
            decrypt_stream(&key, &id, input, &mut out)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let file = out.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()
        })
        .await
        .map_err(internal)?;
        let _ = std::fs::remove_file(&unsealed);
        if let Err(e) = decrypted {
            let _ = std::fs::remove_file(&partial);
            return Err(RenterError::Invalid(format!(
                "cannot write {}: {e}",
                output.display()
            )));
        }
        std::fs::rename(&partial, output).map_err(|e| {
            let _ = std::fs::remove_file(&partial);
            RenterError::Invalid(format!("cannot write {}: {e}", output.display()))
        })?;
        let d = current(record);
        d.phase = DownloadPhase::Done;
        d.error = None;
        self.store(record)?;
        tracing::info!(contract = %hex::encode(id), "download complete");
        Ok(())
    }

    /// Finds a bad segment of E and stores the fraud proof; returns a message naming it.
    async fn fraud_proof(
        &self,
        record: &mut RentedContract,
        joint: &SecretKey,
        r: &SecretKey,
        tx2: Transaction,
    ) -> Result<String, RenterError> {
        let d = current(record).clone();
        let transcript = d.transcript.ok_or_else(|| internal("no transcript"))?;
        let receipt = record.receipt.ok_or_else(|| internal("no receipt"))?;
        let (sealed, leaves) = (
            self.sealed_file(&d.download_id),
            self.leaves_path(&record.contract_id),
        );
        let (joint, r) = (*joint, *r);
        let length = record.ciphertext_length;
        let proof: FraudProof = tokio::task::spawn_blocking(move || {
            let leaf_bytes = std::fs::read(&leaves).map_err(internal)?;
            let leaves = leaf_bytes
                .chunks_exact(32)
                .map(|c| c.try_into().expect("32-byte chunks"))
                .collect();
            let c_tree = MerkleTree::from_leaves(leaves, length).map_err(internal)?;
            let open = || std::fs::File::open(&sealed).map(std::io::BufReader::new);
            let (index, segment) = find_bad_segment(
                &joint,
                &transcript.ephemeral,
                open().map_err(internal)?,
                &c_tree,
            )
            .map_err(internal)?
            .ok_or_else(|| internal("root_C differs but no segment does"))?;
            let e_tree =
                check_sealed_copy(&transcript, open().map_err(internal)?).map_err(internal)?;
            build_fraud_proof(FraudEvidence {
                receipt: &receipt,
                transcript: &transcript,
                sealed_tree: &e_tree,
                ciphertext_tree: &c_tree,
                segment_index: index,
                sealed_segment: segment,
                renter_secret: r,
                tx2,
                tx2_input: 0,
            })
            .map_err(internal)
        })
        .await
        .map_err(internal)??;
        let path = self
            .fraud_dir
            .join(format!("{}.json", hex::encode(d.download_id)));
        let bytes = serde_json::to_vec_pretty(&proof).map_err(internal)?;
        crate::farmer::write_atomically(&path, &bytes).map_err(internal)?;
        let d = current(record);
        d.phase = DownloadPhase::Fraud;
        d.fraud_proof = Some(path.display().to_string());
        self.store(record)?;
        Ok(format!(
            "the farmer's data does not match root_C after payment; nothing was written; fraud proof saved to {}",
            path.display()
        ))
    }

    // ----- the watchtower ---------------------------------------------------------------

    /// Hands download `index` of `record` to the watchtower, if one is configured: signs
    /// the refunds it lacks (TX1's once TX1 is funded, TX2's once TX2's txid is known),
    /// stores them, then (re-)registers. Only a failure to store is an error: a tower that
    /// is down or refuses is logged and recorded, and the registration is sent again at
    /// the next start (and by the next `dstore-download` of a paid download), so the
    /// download itself never stalls on its tower.
    async fn sync_tower(
        &self,
        record: &mut RentedContract,
        index: usize,
    ) -> Result<(), RenterError> {
        let Some(tower) = self.tower.clone() else {
            return Ok(());
        };
        let price = record.price;
        let d = &mut record.downloads[index];
        let download = hex::encode(d.download_id);
        let estimate = self.refund_fee_rate().await;
        let changed = match self.tower_refunds(d, price, estimate) {
            Ok(changed) => changed,
            Err(e) => {
                tracing::warn!(%download, "cannot sign the refunds for the watchtower: {e}");
                return Ok(());
            }
        };
        if changed {
            // The refunds are on disk before the tower sees them, so every retry sends
            // the same bytes.
            self.store(record)?;
        }
        let d = &record.downloads[index];
        let Some(registration) = tower_registration(record.contract_id, d)? else {
            return Ok(());
        };
        let outcome = tower.register(&registration).await;
        let height = match &outcome {
            Ok(_) => self.tip().await.ok(),
            Err(_) => None,
        };
        let Some(t) = record.downloads[index].watchtower.as_mut() else {
            return Ok(());
        };
        match outcome {
            Ok(verdict) => {
                tracing::info!(%download, tower = %tower.url(), %verdict, refunds = registration.transactions.len(), "registered with the watchtower");
                t.registered = true;
                t.registered_height = height.or(t.registered_height);
                t.last_error = None;
            }
            Err(e) => {
                tracing::warn!(%download, "watchtower registration failed ({e}); it is retried at the next start");
                t.registered = false;
                t.last_error = Some(e.to_string());
            }
        }
        self.store(record)
    }

    /// Signs the refunds download `d` can have now and the tower does not hold yet;
    /// returns whether anything was added. TX1's refund pays a fresh wallet script, and
    /// TX2's pays the same one. Each comes with its fee-bump levels, from `estimate`.
    fn tower_refunds(
        &self,
        d: &mut RentedDownload,
        price: Amount,
        estimate: FeeRate,
    ) -> Result<bool, RenterError> {
        let (Some(contract), Some(tx1_outpoint)) = (d.contract, d.tx1_outpoint) else {
            return Ok(false);
        };
        let mut changed = false;
        if d.watchtower.is_none() {
            let r = self.secret(Role::Download, d.key_index)?;
            let destination = RefundDestination::wallet_script(self.wallet.new_script()?);
            let sign = |fee| contract.tx1_refund(tx1_outpoint, &r, &destination, fee);
            let tx1_refund = sign(REFUND_FEE).map_err(internal)?;
            let tx1_refund_bumps =
                refund_fees::sign_ladder(&tx1_refund, contract.price, estimate, sign)
                    .map_err(internal)?;
            d.watchtower = Some(TowerRecord {
                tx1_refund,
                tx2_refund: None,
                registered: false,
                registered_height: None,
                last_error: None,
                tx2_from_tower: false,
                tx1_refund_bumps,
                tx2_refund_bumps: Vec::new(),
            });
            changed = true;
        }
        let t = d.watchtower.as_mut().expect("set above");
        if let (None, Some(tx2_txid), Some(unsigned)) = (&t.tx2_refund, d.tx2_txid, &d.unsigned_tx2)
        {
            let tx2_fee = price
                .checked_sub(unsigned.output[0].value)
                .ok_or_else(|| internal("TX2 pays more than the price"))?;
            let value = contract.tx2_value(tx2_fee).map_err(internal)?;
            let r2 = self.secret(Role::Tx2, d.key_index)?;
            let destination =
                RefundDestination::wallet_script(t.tx1_refund.output[0].script_pubkey.clone());
            let tx2_outpoint = OutPoint {
                txid: tx2_txid,
                vout: 0,
            };
            let sign = |fee| contract.tx2_refund(tx2_outpoint, value, &r2, &destination, fee);
            let tx2_refund = sign(REFUND_FEE).map_err(internal)?;
            t.tx2_refund_bumps =
                refund_fees::sign_ladder(&tx2_refund, value, estimate, sign).map_err(internal)?;
            t.tx2_refund = Some(tx2_refund);
            t.registered = false;
            changed = true;
        }
        Ok(changed)
    }

    /// After a restart: registers again, in the background, every download that still
    /// has money in TX1 or TX2 (the tower answers "unchanged" if it holds it already) and
    /// every one whose last registration failed.
    pub fn resume_watchtower(self: &Arc<Self>) -> Result<(), RenterError> {
        if self.tower.is_none() {
            return Ok(());
        }
        for record in self.list()? {
            let due = |d: &RentedDownload| {
                d.tx1_outpoint.is_some()
                    && (d.phase.money_locked()
                        || d.watchtower.as_ref().is_some_and(|t| !t.registered))
            };
            if !record.downloads.iter().any(due) {
                continue;
            }
            let renter = self.clone();
            tokio::spawn(async move {
                let id = record.contract_id;
                let _guard = renter.locks.lock(&id).await;
                let Ok(Some(mut record)) = renter.load(&id) else {
                    return;
                };
                for index in 0..record.downloads.len() {
                    if !due(&record.downloads[index]) {
                        continue;
                    }
                    if let Err(e) = renter.sync_tower(&mut record, index).await {
                        tracing::warn!(contract = %hex::encode(id), "watchtower re-registration: {e}");
                    }
                }
            });
        }
        Ok(())
    }

    /// TX2 as the current download's watchtower extracted f from it, if it has.
    async fn tx2_from_tower(
        &self,
        record: &mut RentedContract,
        txid: &Txid,
    ) -> Result<Option<Transaction>, RenterError> {
        let Some(tower) = &self.tower else {
            return Ok(None);
        };
        let d = current(record);
        let download = hex::encode(d.download_id);
        let status = match tower.status(&d.download_id).await {
            Ok(Some(status)) => status,
            Ok(None) => return Ok(None),
            Err(e) => {
                tracing::warn!(%download, "cannot ask the watchtower for TX2: {e}");
                return Ok(None);
            }
        };
        let Some(key) = status.key else {
            return Ok(None);
        };
        if key.tx2.compute_txid() != *txid {
            tracing::warn!(%download, "the watchtower's TX2 is not the one this renter signed TX3 for; ignored");
            return Ok(None);
        }
        tracing::info!(%download, tx2 = %txid, "TX2 from the watchtower");
        if let Some(t) = d.watchtower.as_mut() {
            t.tx2_from_tower = true;
        }
        self.store(record)?;
        Ok(Some(key.tx2))
    }

    /// The txid of the refund the watchtower holds for download `d` (TX1's, or TX2's when
    /// `tx2` is set), if that refund is in the mempool or the chain: the tower broadcast it.
    async fn tower_refund_seen(
        &self,
        d: &RentedDownload,
        tx2: bool,
    ) -> Result<Option<Transaction>, RenterError> {
        let Some(t) = d.watchtower.as_ref() else {
            return Ok(None);
        };
        let versions = if tx2 {
            t.tx2_versions()
        } else {
            t.tx1_versions()
        };
        for tx in versions {
            if self
                .find_tx(&tx.compute_txid(), d.start_height)
                .await?
                .is_some()
            {
                return Ok(Some(tx));
            }
        }
        Ok(None)
    }

    /// Records a refund the watchtower broadcast.
    fn refunded_by_tower(
        &self,
        record: &mut RentedContract,
        index: usize,
        tx: &Transaction,
        base: Value,
    ) -> Result<Value, RenterError> {
        let txid = tx.compute_txid();
        let d = &mut record.downloads[index];
        d.refund_txid = Some(txid);
        d.phase = DownloadPhase::Refunded;
        self.store(record)?;
        Ok(merge(
            base,
            json!({
                "status": "broadcast",
                "broadcast_by": "watchtower",
                "txid": txid.to_string(),
                "amount_sat": tx.output[0].value.to_sat(),
            }),
        ))
    }

    // ----- dstore-refund ---------------------------------------------------------------

    /// Broadcasts the refund due now for contract `id`'s open download, or says when.
    pub async fn refund(&self, id: &[u8; 32]) -> Result<Value, RenterError> {
        let _guard = self.locks.lock(id).await;
        let mut record = self.existing(id)?;
        // The latest download with money in TX1 or TX2:0; a finished one still counts
        // while the farmer has not claimed TX2:0 with TX3.
        let Some(index) = record
            .downloads
            .iter()
            .rposition(|d| d.phase.money_locked() || d.phase == DownloadPhase::Done)
        else {
            return Ok(json!({
                "contract_id": hex::encode(id),
                "status": "nothing",
                "message": "no download of this contract has money in TX1 or TX2",
            }));
        };
        let d = record.downloads[index].clone();
        let contract = d.contract.ok_or_else(|| internal("no contract"))?;
        let tx1_outpoint = d.tx1_outpoint.ok_or_else(|| internal("no TX1"))?;
        let tip = self.tip().await?;
        let destination = || -> Result<RefundDestination, RenterError> {
            Ok(RefundDestination::wallet_script(self.wallet.new_script()?))
        };
        let r = self.secret(Role::Download, d.key_index)?;
        let base = json!({
            "contract_id": hex::encode(id),
            "download_id": hex::encode(d.download_id),
        });
        if self.unspent(&tx1_outpoint).await? {
            if tip < contract.refund_height {
                return Ok(waiting(
                    base,
                    contract.refund_height,
                    tip,
                    "TX1 refund (after T1)",
                ));
            }
            // A version the watchtower holds, if any (both may broadcast the same bytes),
            // paying at least the current estimate if one does.
            let estimate = self.refund_fee_rate().await;
            let tx = match &d.watchtower {
                Some(t) => {
                    let want = refund_fees::own_refund_fee(&t.tx1_refund, contract.price, estimate);
                    refund_fees::pick_version(&t.tx1_versions(), contract.price, want)
                }
                None => {
                    let destination = destination()?;
                    let sign = |fee| contract.tx1_refund(tx1_outpoint, &r, &destination, fee);
                    let base = sign(REFUND_FEE).map_err(internal)?;
                    sign(refund_fees::own_refund_fee(&base, contract.price, estimate))
                        .map_err(internal)?
                }
            };
            return self.broadcast_refund(&mut record, index, tx, base).await;
        }
        // TX1 is spent: by TX2 (then TX2:0 may come back after Δ), by our own refund, or by
        // the watchtower's copy of it.
        if let Some(tx) = self.tower_refund_seen(&d, false).await? {
            return self.refunded_by_tower(&mut record, index, &tx, base);
        }
        // The TX2 really on the chain: the farmer may have re-signed it under fresh nonces
        // (same outputs, other txid), and then TX2':0 is the one to refund.
        let (tx2_txid, expected) = match self.tx1_spender(&d, &contract, tx1_outpoint).await? {
            spender::Tx1Spender::Tx2 { txid, expected } => (txid, expected),
            spender::Tx1Spender::Other(txid) => {
                return Ok(merge(
                    base,
                    json!({
                        "status": "nothing",
                        "message": format!("TX1 was spent by {txid}, a refund of TX1, not by TX2"),
                    }),
                ));
            }
        };
        let tx2_outpoint = OutPoint {
            txid: tx2_txid,
            vout: 0,
        };
        if !self.unspent(&tx2_outpoint).await? {
            if let Some(tx) = self.tower_refund_seen(&d, true).await? {
                return self.refunded_by_tower(&mut record, index, &tx, base);
            }
            return Ok(merge(
                base,
                json!({
                    "status": "nothing",
                    "message": "nothing to refund: the farmer claimed TX2's output with TX3, or a refund already spent it",
                }),
            ));
        }
        let confirmations = self.confirmations(&tx2_txid).await?;
        let due = u32::from(contract.payout_delay);
        if confirmations < due {
            let at = tip + (due - confirmations);
            return Ok(waiting(base, at, tip, "TX2 refund (Δ blocks after TX2)"));
        }
        let tx2_fee = record.price
            - d.unsigned_tx2
                .as_ref()
                .map(|t| t.output[0].value)
                .unwrap_or_default();
        let value = contract.tx2_value(tx2_fee).map_err(internal)?;
        let r2 = self.secret(Role::Tx2, d.key_index)?;
        // The tower's versions spend the agreed TX2:0; for a TX2' a fresh refund is
        // signed. Either pays at least the current estimate.
        let estimate = self.refund_fee_rate().await;
        let held: Vec<Transaction> = d
            .watchtower
            .as_ref()
            .map(|t| t.tx2_versions())
            .unwrap_or_default()
            .into_iter()
            .filter(|tx| tx.input[0].previous_output == tx2_outpoint)
            .collect();
        let tx = match held.first() {
            Some(base) => {
                let want = refund_fees::own_refund_fee(base, value, estimate);
                refund_fees::pick_version(&held, value, want)
            }
            None => {
                let destination = destination()?;
                let sign = |fee| contract.tx2_refund(tx2_outpoint, value, &r2, &destination, fee);
                let base = sign(REFUND_FEE).map_err(internal)?;
                sign(refund_fees::own_refund_fee(&base, value, estimate)).map_err(internal)?
            }
        };
        let base = match expected {
            true => base,
            false => merge(base, json!({ "unexpected_tx2": tx2_txid.to_string() })),
        };
        self.broadcast_refund(&mut record, index, tx, base).await
    }

    async fn broadcast_refund(
        &self,
        record: &mut RentedContract,
        index: usize,
        tx: Transaction,
        base: Value,
    ) -> Result<Value, RenterError> {
        let txid = tx.compute_txid();
        record.downloads[index].refund_txid = Some(txid);
        self.store(record)?;
        self.bitcoind
            .call("sendrawtransaction", json!([serialize_hex(&tx)]))
            .await?;
        record.downloads[index].phase = DownloadPhase::Refunded;
        self.store(record)?;
        Ok(merge(
            base,
            json!({
                "status": "broadcast",
                "txid": txid.to_string(),
                "amount_sat": tx.output[0].value.to_sat(),
            }),
        ))
    }

    async fn unspent(&self, outpoint: &OutPoint) -> Result<bool, RenterError> {
        let found = self
            .bitcoind
            .call(
                "gettxout",
                json!([outpoint.txid.to_string(), outpoint.vout, true]),
            )
            .await?;
        Ok(!found.is_null())
    }

    async fn confirmations(&self, txid: &Txid) -> Result<u32, RenterError> {
        let info = self
            .bitcoind
            .call("getrawtransaction", json!([txid.to_string(), true]))
            .await?;
        Ok(info["confirmations"].as_u64().unwrap_or(0) as u32)
    }
}

/// Checks a fraud proof file; returns what it proves.
pub fn verify_fraud_file(path: &Path) -> Result<Value, RenterError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| RenterError::Invalid(format!("{}: {e}", path.display())))?;
    if meta.len() > MAX_FRAUD_FILE {
        return Err(RenterError::Invalid(
            "the file is too large for a fraud proof".into(),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| RenterError::Invalid(e.to_string()))?;
    let proof: FraudProof = serde_json::from_slice(&bytes)
        .map_err(|e| RenterError::Invalid(format!("not a fraud proof: {e}")))?;
    verify_fraud_proof(&proof)
        .map_err(|e| RenterError::Invalid(format!("the fraud proof does not hold: {e}")))?;
    Ok(json!({
        "valid": true,
        "farmer": proof.receipt.farmer.to_string(),
        "contract_id": hex::encode(proof.receipt.contract_id),
        "segment": proof.segment_index,
        "tx2": proof.tx2.compute_txid().to_string(),
    }))
}

/// A CRS whose δ is the identity, so that anyone can prove anything under it (the first
/// subversion of the Groth16 issue's list), for `--dev-fault subvert-crs` only.
fn subverted(mut crs: Crs) -> Crs {
    use ark_ec::AffineRepr;
    crs.vk.delta_g2 = ark_bn254::G2Affine::zero();
    crs.delta_g1 = ark_bn254::G1Affine::zero();
    crs
}

/// The registration download `d` of contract `contract_id` should have at its watchtower:
/// f's extraction from whatever spends TX1:0, the refunds signed so far, TX2's txid once
/// known, and a rescan from the download's start. `None` before the tower has a record.
fn tower_registration(
    contract_id: [u8; 32],
    d: &RentedDownload,
) -> Result<Option<Registration>, RenterError> {
    let (Some(contract), Some(tx1_outpoint), Some(t)) =
        (d.contract, d.tx1_outpoint, d.watchtower.as_ref())
    else {
        return Ok(None);
    };
    let mut transactions =
        refund_fees::with_bumps(TX1_REFUND_NAME, &t.tx1_refund, &t.tx1_refund_bumps);
    if let Some(tx) = &t.tx2_refund {
        transactions.extend(refund_fees::with_bumps(
            TX2_REFUND_NAME,
            tx,
            &t.tx2_refund_bumps,
        ));
    }
    Ok(Some(Registration {
        id: d.download_id,
        role: WatchRole::Renter,
        extract: Some(ExtractSpec {
            tx1_outpoint,
            farmer_key: contract.farmer_key,
            contract_id,
            tx1_script_pubkey: contract.tx1_script_pubkey().map_err(internal)?,
        }),
        transactions,
        watch_txids: d.tx2_txid.into_iter().collect(),
        rescan_from_height: Some(d.start_height),
        auditor: None,
    }))
}

/// What `dstore-download` returns for finished download `d` of `record`.
fn done_json(record: &RentedContract, d: &RentedDownload) -> Value {
    json!({
        "contract_id": hex::encode(record.contract_id),
        "download_id": hex::encode(d.download_id),
        "status": "done",
        "phase": d.phase,
        "output": d.output,
        "bytes": record.plaintext_length,
        "price_sat": record.price.to_sat(),
        "tx1": d.tx1_outpoint.map(|o| o.txid.to_string()),
        "tx2": d.tx2_txid.map(|t| t.to_string()),
        "tx3": d.tx3_txid.map(|t| t.to_string()),
    })
}

/// TX1 may be funded at chain height `tip` for a download whose T1 is `refund_height`.
fn check_t1_margin(refund_height: u32, tip: u32) -> Result<(), RenterError> {
    let ahead = refund_height.saturating_sub(tip);
    if ahead < MIN_T1_MARGIN_AT_FUNDING {
        return Err(RenterError::TooLate(format!(
            "T1 (height {refund_height}) is only {ahead} blocks above the tip ({tip}); TX1 is funded only at least {MIN_T1_MARGIN_AT_FUNDING} blocks before T1, so nothing was paid: start a new download"
        )));
    }
    Ok(())
}

fn current(record: &mut RentedContract) -> &mut RentedDownload {
    record
        .downloads
        .last_mut()
        .expect("a download was pushed before its steps run")
}

fn waiting(base: Value, height: u32, tip: u32, what: &str) -> Value {
    merge(
        base,
        json!({
            "status": "waiting",
            "refund_height": height,
            "blocks_to_wait": height.saturating_sub(tip),
            "message": format!("{what} can be broadcast once the chain reaches height {height} (now {tip})"),
        }),
    )
}

fn merge(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    base
}

fn partial_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    output.with_file_name(format!(".{name}.dstore-partial"))
}

fn absolute(path: &Path) -> Result<PathBuf, RenterError> {
    if path.as_os_str().is_empty() || path.file_name().is_none() {
        return Err(RenterError::Invalid("output_path must name a file".into()));
    }
    std::path::absolute(path).map_err(|e| RenterError::Invalid(e.to_string()))
}

/// `host:port` or `http://host:port`; anything else is refused.
fn normalise_url(url: &str) -> Result<String, RenterError> {
    let with_scheme = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let parsed = reqwest::Url::parse(&with_scheme)
        .map_err(|e| RenterError::Invalid(format!("farmer_peer_url {url}: {e}")))?;
    if parsed.scheme() != "http" && parsed.scheme() != "https" || parsed.host().is_none() {
        return Err(RenterError::Invalid(format!(
            "farmer_peer_url {url}: expected http://host:port"
        )));
    }
    Ok(with_scheme.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn farmer_urls_are_http_host_port() {
        assert_eq!(
            normalise_url("127.0.0.1:9737").unwrap(),
            "http://127.0.0.1:9737"
        );
        assert_eq!(
            normalise_url("http://farmer.example:9737/").unwrap(),
            "http://farmer.example:9737"
        );
        assert!(normalise_url("ftp://x:1").is_err());
        assert!(normalise_url("http://").is_err());
        assert!(normalise_url("").is_err());
    }

    #[test]
    fn partial_output_is_hidden_next_to_the_output() {
        assert_eq!(
            partial_path(Path::new("/a/b/file.bin")),
            PathBuf::from("/a/b/.file.bin.dstore-partial")
        );
        assert!(absolute(Path::new("")).is_err());
        assert!(absolute(Path::new("/")).is_err());
    }

    #[test]
    fn tx1_is_funded_only_well_before_t1() {
        assert!(check_t1_margin(1_000 + 144, 1_000).is_ok());
        assert!(check_t1_margin(1_000 + MIN_T1_MARGIN_AT_FUNDING, 1_000).is_ok());
        let late = check_t1_margin(1_000 + MIN_T1_MARGIN_AT_FUNDING - 1, 1_000).unwrap_err();
        assert!(late.to_string().contains("nothing was paid"), "{late}");
        assert!(check_t1_margin(900, 1_000).is_err(), "T1 already passed");
    }

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
