//! The farmer role: accepts storage contracts, receives and checks uploads, signs storage
//! receipts, seals downloads, and runs its half of the mode-L chain (PROTOCOL.md 3.3):
//! TX2 under one reused nonce, the Groth16 proof under the renter's checked CRS, then TX2
//! and TX3 broadcast by the farmer itself, which is how it gets paid.
//!
//! Every peer message is handled under the contract's lock: open and verify the envelope,
//! check its sequence number, apply the step, store the new record (synced), and only then
//! reply. A rejected message changes nothing. An exact repeat of the last message gets the
//! stored reply again, so a renter whose connection broke can simply retry.

pub mod audit;
pub mod bump;
pub mod claim;
pub mod records;
pub mod server;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bitcoin::consensus::encode::serialize_hex;
use bitcoin::secp256k1::{Keypair, SecretKey, SECP256K1};
use bitcoin::{Amount, OutPoint, Transaction};
use dstore_protocol::audit::messages::{AuditOpenings, AuditProposal, AuditSwap, AuditToss};
use dstore_protocol::hashing::sha256;
use dstore_protocol::keys::{commit_key, derive_key, identity_keypair, verify_reveal, Role};
use dstore_protocol::messages::{
    ClaimPending, Claimed, CrsOffer, DownloadOffer, DownloadRequest, FarmerReveal, OpenAccepted,
    OpenRequest, ProofReady, RenterReveal, ResyncHint, Tx1Funded, Tx2RenterSig, Tx2Statement,
    Tx2Unsigned, Tx3RenterSig, UploadDone,
};
use dstore_protocol::nonce_reuse::farmer_sign_tx2;
use dstore_protocol::peer::{self, Expected, Opened, PeerError, PeerMessage, SequenceGuard};
use dstore_protocol::receipt::StorageReceipt;
use dstore_protocol::upload::UploadReceiver;
use dstore_protocol::watch::{Hold, Presigned, Registration, WatchRole};
use dstore_protocol::zk::{self, Crs, Statement};
use serde_json::{json, Value};

use crate::bitcoind::Bitcoind;
use crate::config::DevFault;
use crate::db::{self, Db};
use crate::jsonrpc::code;
use crate::locks::ContractLocks;
use crate::storage::BlobStore;
use crate::tower_client::TowerClient;
use crate::wallet::PluginWallet;
use crate::wire::ErrorBody;
use claim::ClaimOutcome;
use records::{FarmedContract, FarmedDownload, FarmerPhase, Payout};

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

/// The error code of [`FarmerError::UnknownCrs`]: the renter then sends the CRS bytes.
pub const UNKNOWN_CRS: i64 = -40;

/// Why the farmer refused a request; each becomes one clear error for the renter.
#[derive(Debug, thiserror::Error)]
pub enum FarmerError {
    #[error("{0}")]
    Peer(#[from] PeerError),
    #[error("unknown contract {0}")]
    UnknownContract(String),
    #[error("contract {0} already exists")]
    ContractExists(String),
    #[error("{0}")]
    Terms(#[from] dstore_protocol::messages::TermsError),
    #[error("{0}")]
    Upload(#[from] dstore_protocol::upload::UploadError),
    #[error("out of order: {0}")]
    WrongPhase(&'static str),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("bad CRS: the farmer aborts this download ({0})")]
    CrsRejected(String),
    #[error("unknown CRS: send its bytes to the crs path first")]
    UnknownCrs,
    #[error("unauthorised bulk request")]
    Unauthorised,
    #[error("the request's body does not match the hash its signature covers")]
    BodyMismatch,
    #[error(
        "the tip reached height {0}, too close to T1 for TX2: the farmer abandons this download"
    )]
    Abandoned(u32),
    #[error("internal error: {0}")]
    Internal(String),
}

impl FarmerError {
    /// The error as the renter sees it, with a bitcoind-style code and an HTTP status.
    pub fn to_body(&self) -> (u16, ErrorBody) {
        let (status, code) = match self {
            FarmerError::UnknownContract(_) => (404, code::INVALID_ADDRESS_OR_KEY),
            FarmerError::UnknownCrs => (404, UNKNOWN_CRS),
            FarmerError::Unauthorised => (401, code::INVALID_REQUEST),
            FarmerError::BodyMismatch => (400, crate::wire::BODY_MISMATCH),
            FarmerError::Internal(_) => (500, code::INTERNAL_ERROR),
            FarmerError::Peer(PeerError::Oversized(_)) => (413, code::INVALID_REQUEST),
            FarmerError::Upload(dstore_protocol::upload::UploadError::PastOffer { .. }) => {
                (413, code::INVALID_PARAMETER)
            }
            FarmerError::Peer(_) => (400, code::INVALID_REQUEST),
            _ => (400, code::INVALID_PARAMETER),
        };
        let next_seq = match self {
            FarmerError::Peer(
                PeerError::Replayed { expected, .. } | PeerError::OutOfOrder { expected, .. },
            ) => Some(*expected),
            _ => None,
        };
        (
            status,
            ErrorBody {
                code,
                message: self.to_string(),
                next_seq,
                resync: None,
            },
        )
    }
}

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
        Ok(Farmer {
            identity: identity_keypair(&seed).map_err(internal)?,
            seed,
            db,
            blobs,
            bitcoind,
            wallet,
            config,
            locks: ContractLocks::default(),
            checked_crs: Mutex::new(HashMap::new()),
        })
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
        })
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

    /// Handles one envelope posted to `/dstore/v1/msg/<kind>`; returns the signed reply.
    pub async fn handle_message(&self, kind: &str, bytes: &[u8]) -> Result<Vec<u8>, FarmerError> {
        let (contract_id, _) = peer::peek(bytes)?;
        let _guard = self.locks.lock(&contract_id).await;
        let record = self.load(&contract_id)?;
        if let Some(reply) = record.as_ref().and_then(|r| r.repeat_reply(bytes)) {
            return Ok(reply);
        }
        match kind {
            OpenRequest::KIND => {
                if record.is_some() {
                    return Err(FarmerError::ContractExists(hex::encode(contract_id)));
                }
                let opened = open_first::<OpenRequest>(bytes, contract_id)?;
                let step = self.on_open(contract_id, &opened).await?;
                self.commit(step, opened.seq, bytes)
            }
            _ => {
                let record =
                    record.ok_or_else(|| FarmerError::UnknownContract(hex::encode(contract_id)))?;
                self.dispatch(kind, record, bytes).await
            }
        }
    }

    async fn dispatch(
        &self,
        kind: &str,
        record: FarmedContract,
        bytes: &[u8],
    ) -> Result<Vec<u8>, FarmerError> {
        macro_rules! step {
            ($ty:ty, $handler:ident) => {{
                let opened = record.open::<$ty>(bytes)?;
                let seq = opened.seq;
                let step = self.$handler(record, opened.body).await?;
                self.commit(step, seq, bytes)
            }};
        }
        match kind {
            UploadDone::KIND => step!(UploadDone, on_upload_done),
            DownloadRequest::KIND => step!(DownloadRequest, on_download_request),
            RenterReveal::KIND => step!(RenterReveal, on_renter_reveal),
            Tx1Funded::KIND => step!(Tx1Funded, on_tx1_funded),
            Tx2RenterSig::KIND => step!(Tx2RenterSig, on_tx2_renter_sig),
            CrsOffer::KIND => step!(CrsOffer, on_crs_offer),
            Tx3RenterSig::KIND => step!(Tx3RenterSig, on_tx3_renter_sig),
            AuditProposal::KIND => step!(AuditProposal, on_audit_proposal),
            AuditToss::KIND => step!(AuditToss, on_audit_toss),
            AuditOpenings::KIND => step!(AuditOpenings, on_audit_openings),
            AuditSwap::KIND => step!(AuditSwap, on_audit_swap),
            other => Err(FarmerError::Invalid(format!(
                "unknown message kind {}",
                other.chars().take(40).collect::<String>()
            ))),
        }
    }

    /// Stores the step's record with the advanced sequence numbers and the signed reply.
    fn commit<R: PeerMessage>(
        &self,
        step: Step<R>,
        seq: u64,
        request: &[u8],
    ) -> Result<Vec<u8>, FarmerError> {
        let mut record = step.record;
        record.inbound = SequenceGuard { next: seq + 1 };
        let reply = peer::sign(
            &self.identity,
            record.contract_id,
            record.outbound,
            &step.reply,
        )?;
        record.outbound += 1;
        record.last_request = Some(sha256(&[request]));
        record.last_reply = Some(reply.clone());
        self.store(&record)?;
        Ok(reply)
    }

    async fn on_open(
        &self,
        contract_id: [u8; 32],
        opened: &Opened<OpenRequest>,
    ) -> Result<Step<OpenAccepted>, FarmerError> {
        let request = &opened.body;
        request.check(self.config.max_file_bytes, self.config.price_per_download)?;
        let expiry_height = self.tip().await?.saturating_add(STORAGE_TERM);
        let record = FarmedContract::new(contract_id, opened.sender, request, expiry_height);
        // A leftover staging file of an earlier, refused attempt must not count.
        let _ = self.blobs.truncate_staged(&contract_id, 0);
        Ok(Step {
            record,
            reply: OpenAccepted {
                file_length: request.file_length,
                expiry_height,
            },
        })
    }

    /// Bytes received and expected for an upload (for resuming).
    pub fn upload_status(&self, id: &[u8; 32]) -> Result<(u64, u64), FarmerError> {
        let record = self.existing(id)?;
        Ok((record.upload.merkle.length, record.file_length))
    }

    /// Appends one batch of upload bytes at `offset`: checked against the offer, flushed
    /// to disk, then recorded with the new hash state.
    pub async fn append_upload(
        &self,
        id: &[u8; 32],
        offset: u64,
        data: &[u8],
    ) -> Result<u64, FarmerError> {
        let _guard = self.locks.lock(id).await;
        let mut record = self.existing(id)?;
        if record.receipt.is_some() {
            return Err(FarmerError::WrongPhase("the upload is already complete"));
        }
        let mut receiver = UploadReceiver::resume(record.upload.clone())?;
        receiver.check_chunk(offset, data.len())?;
        // The staging file may hold bytes past the last record (a crash mid-append).
        self.blobs
            .truncate_staged(id, receiver.received())
            .map_err(internal)?;
        self.blobs
            .append_staged(id, offset, data)
            .map_err(internal)?;
        receiver.accept(offset, data)?;
        record.upload = receiver.checkpoint();
        self.store(&record)?;
        Ok(receiver.received())
    }

    /// The farmer's signed [`ResyncHint`] for `refused`, an envelope of this contract's
    /// renter refused for its sequence number: the renter may believe `next_seq` only
    /// because it is signed, and only for that very envelope.
    pub fn resync_hint(&self, refused: &[u8], next_seq: u64) -> Result<String, FarmerError> {
        let (contract_id, _) = peer::peek(refused)?;
        let hint = ResyncHint {
            next_seq,
            refused: sha256(&[refused]),
        };
        let bytes = peer::sign(&self.identity, contract_id, next_seq, &hint)?;
        String::from_utf8(bytes).map_err(internal)
    }

    /// The id of contract `id`'s current download (what its sealed copy and CRS requests
    /// are signed for).
    pub fn current_download_id(&self, id: &[u8; 32]) -> Result<[u8; 32], FarmerError> {
        self.existing(id)?
            .download
            .as_ref()
            .map(|d| d.download_id)
            .ok_or(FarmerError::WrongPhase("no download is under way"))
    }

    /// The renter key a bulk request for contract `id` must be signed by.
    pub fn renter_of(
        &self,
        id: &[u8; 32],
    ) -> Result<bitcoin::secp256k1::XOnlyPublicKey, FarmerError> {
        Ok(self.existing(id)?.renter)
    }

    async fn on_upload_done(
        &self,
        mut record: FarmedContract,
        done: UploadDone,
    ) -> Result<Step<StorageReceipt>, FarmerError> {
        let receiver = UploadReceiver::resume(record.upload.clone())?;
        let stored = receiver.finish(&done.root_c, done.length)?;
        let id = record.contract_id;
        // A crash after the move into the object store leaves no staging file: the blob
        // is already in place.
        let moved = self.blobs.staged_len(&id).map_err(internal)? == 0
            && self.blobs.size(&id).await.ok() == Some(stored.length);
        if !moved {
            self.blobs
                .truncate_staged(&id, stored.length)
                .map_err(internal)?;
            self.blobs.commit(&id).await.map_err(internal)?;
        }
        let receipt = StorageReceipt::sign(&self.identity, id, stored, record.expiry_height);
        record.receipt = Some(receipt);
        tracing::info!(contract = %hex::encode(id), bytes = stored.length, "upload stored");
        Ok(Step {
            record,
            reply: receipt,
        })
    }

    async fn on_download_request(
        &self,
        mut record: FarmedContract,
        request: DownloadRequest,
    ) -> Result<Step<DownloadOffer>, FarmerError> {
        if record.receipt.is_none() {
            return Err(FarmerError::WrongPhase(
                "nothing is stored for this contract yet",
            ));
        }
        if record.download.as_ref().is_some_and(|d| d.in_flight()) {
            return Err(FarmerError::WrongPhase(
                "another download of this contract is in flight",
            ));
        }
        let key_index = self.db.next_key_index().map_err(internal)?;
        let f = self.secret(Role::Download, key_index)?;
        let f2 = self.secret(Role::Tx2, key_index)?;
        let (commitment, reveal) = commit_key(&mut rand::thread_rng(), &f, &record.contract_id);
        let offer = DownloadOffer {
            download_id: request.download_id,
            farmer_commitment: commitment,
            farmer_tx2_key: f2.public_key(SECP256K1),
            price: record.price,
            refund_height: self.tip().await?.saturating_add(REFUND_MARGIN),
            payout_delay: PAYOUT_DELAY,
            min_tx1_confirmations: self.config.min_tx1_confirmations,
        };
        record.download = Some(FarmedDownload::offered(key_index, &request, &offer, reveal));
        Ok(Step {
            record,
            reply: offer,
        })
    }

    fn secret(&self, role: Role, index: u32) -> Result<SecretKey, FarmerError> {
        derive_key(&self.seed, role, index).map_err(internal)
    }

    async fn on_renter_reveal(
        &self,
        mut record: FarmedContract,
        message: RenterReveal,
    ) -> Result<Step<FarmerReveal>, FarmerError> {
        let id = record.contract_id;
        let download = record.download_in(FarmerPhase::Offered)?;
        verify_reveal(&download.renter_commitment, &message.reveal, &id)
            .map_err(|e| FarmerError::Invalid(format!("renter reveal: {e}")))?;
        let contract = download.contract_with(id, record.price, message.reveal.pubkey);
        let context = contract.seal_context(download.download_id);
        let sealed_path = self.sealed_path(&download.download_id);
        let plain_path = self.config.work_dir.join(format!("{}.c", hex::encode(id)));
        self.copy_blob(&id, &plain_path).await?;
        if crate::dev_fault!(self.config.dev_fault, SealWrongData) {
            flip_first_byte(&plain_path).map_err(internal)?;
        }
        let identity = self.identity;
        let (plain, sealed) = (plain_path.clone(), sealed_path.clone());
        let transcript = tokio::task::spawn_blocking(move || {
            let input = std::io::BufReader::new(std::fs::File::open(&plain)?);
            let output = std::io::BufWriter::new(std::fs::File::create(&sealed)?);
            dstore_protocol::seal::seal(&mut rand::thread_rng(), &context, &identity, input, output)
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        let _ = std::fs::remove_file(&plain_path);
        if crate::dev_fault!(self.config.dev_fault, FlipSealedByte) {
            flip_first_byte(&sealed_path).map_err(internal)?;
        }
        let download = record.download.as_mut().expect("checked above");
        download.contract = Some(contract);
        download.transcript = Some(transcript);
        download.phase = FarmerPhase::Revealed;
        let reply = FarmerReveal {
            reveal: download.farmer_reveal,
            transcript,
        };
        Ok(Step { record, reply })
    }

    /// Where the sealed copy E of a download lives.
    pub fn sealed_path(&self, download_id: &[u8; 32]) -> PathBuf {
        self.config
            .work_dir
            .join(format!("{}.sealed", hex::encode(download_id)))
    }

    /// The sealed copy the renter may fetch now for contract `id`, if any.
    pub fn current_sealed(&self, id: &[u8; 32]) -> Result<PathBuf, FarmerError> {
        let record = self.existing(id)?;
        match &record.download {
            Some(d) if d.phase != FarmerPhase::Offered && d.phase != FarmerPhase::Aborted => {
                Ok(self.sealed_path(&d.download_id))
            }
            _ => Err(FarmerError::WrongPhase("no sealed copy is ready")),
        }
    }

    async fn copy_blob(&self, id: &[u8; 32], dest: &std::path::Path) -> Result<(), FarmerError> {
        use tokio::io::AsyncWriteExt;
        let size = self.blobs.size(id).await.map_err(internal)?;
        let mut out = tokio::fs::File::create(dest).await.map_err(internal)?;
        let mut at = 0u64;
        while at < size {
            let end = (at + (8 << 20)).min(size);
            let bytes = self.blobs.read_range(id, at..end).await.map_err(internal)?;
            out.write_all(&bytes).await.map_err(internal)?;
            at = end;
        }
        out.flush().await.map_err(internal)?;
        Ok(())
    }

    async fn on_tx1_funded(
        &self,
        mut record: FarmedContract,
        message: Tx1Funded,
    ) -> Result<Step<Tx2Unsigned>, FarmerError> {
        let download = record.download_in(FarmerPhase::Revealed)?;
        let contract = download.agreed()?;
        // Too close to T1, TX2 could never go out: refuse before anything is signed.
        self.refuse_if_late(&record).await?;
        if crate::dev_fault!(self.config.dev_fault, ExitAfterTx1) {
            tracing::warn!("dev fault exit-after-tx1: the farmer disappears");
            std::process::exit(1);
        }
        self.check_tx1_output(&message.outpoint, &contract.tx1_output().map_err(internal)?)
            .await?;
        let unsigned = contract
            .unsigned_tx2(message.outpoint, TX2_FEE)
            .map_err(internal)?;
        let download = record.download.as_mut().expect("checked above");
        download.tx1_outpoint = Some(message.outpoint);
        download.unsigned_tx2 = Some(unsigned.clone());
        download.phase = FarmerPhase::Tx2Offered;
        Ok(Step {
            record,
            reply: Tx2Unsigned { tx: unsigned },
        })
    }

    /// TX1's contract output exists (in the mempool or the chain) and pays as agreed.
    async fn check_tx1_output(
        &self,
        outpoint: &OutPoint,
        expected: &bitcoin::TxOut,
    ) -> Result<(), FarmerError> {
        let found = self
            .bitcoind
            .call(
                "gettxout",
                json!([outpoint.txid.to_string(), outpoint.vout, true]),
            )
            .await
            .map_err(internal)?;
        let script = found["scriptPubKey"]["hex"].as_str().unwrap_or_default();
        let value = found["value"]
            .as_f64()
            .and_then(|btc| Amount::from_btc(btc).ok());
        if script != expected.script_pubkey.to_hex_string() || value != Some(expected.value) {
            return Err(FarmerError::Invalid(format!(
                "TX1 output {outpoint} is unknown or does not pay the contract"
            )));
        }
        Ok(())
    }

    async fn on_tx2_renter_sig(
        &self,
        mut record: FarmedContract,
        message: Tx2RenterSig,
    ) -> Result<Step<Tx2Statement>, FarmerError> {
        let download = record.download_in(FarmerPhase::Tx2Offered)?;
        let contract = download.agreed()?;
        let unsigned = download
            .unsigned_tx2
            .clone()
            .ok_or(FarmerError::WrongPhase("no TX2"))?;
        let sig_r = bitcoin::ecdsa::Signature::from_slice(&message.signature)
            .map_err(|e| FarmerError::Invalid(format!("renter TX2 signature: {e}")))?;
        let f = self.secret(Role::Download, download.key_index)?;
        let template = farmer_sign_tx2(&mut rand::thread_rng(), &contract, &unsigned, &f, &sig_r)
            .map_err(|e| FarmerError::Invalid(format!("renter TX2 signature: {e}")))?;
        let (statement, _, _) = Statement::of(&template).map_err(internal)?;
        let download = record.download.as_mut().expect("checked above");
        download.template = Some(template);
        download.phase = FarmerPhase::Tx2Signed;
        Ok(Step {
            record,
            reply: Tx2Statement { statement },
        })
    }

    /// Checks the CRS the renter sent for contract `id`'s download. The farmer accepts
    /// exactly one CRS per download: a CRS that fails any check, or a second, different
    /// CRS, aborts the download for good, and so does a failed proof under the accepted
    /// one (see [`Farmer::on_crs_offer`]). The signed TX2 is then never proved about or
    /// broadcast, so a renter probing with crafted CRSs learns at most one bit of this
    /// download's one-time key, once. Re-sending the accepted bytes is an idempotent retry.
    pub async fn receive_crs(&self, id: &[u8; 32], bytes: Vec<u8>) -> Result<(), FarmerError> {
        let _guard = self.locks.lock(id).await;
        let record = self.existing(id)?;
        let download = record.download_in(FarmerPhase::Tx2Signed)?;
        let upload = sha256(&[&bytes]);
        if let Some(accepted) = download.checked_crs {
            if download.crs_upload != Some(upload) {
                return Err(self.abort_download(record, "a second CRS for this download"));
            }
            if self.checked(&accepted).await?.is_some() {
                return Ok(());
            }
        }
        let template = download.signed_tx2()?;
        let shape = zk::Shape::of(&template).map_err(internal)?;
        let checked = tokio::task::spawn_blocking(move || {
            zk::check_crs(&shape, &bytes, &mut rand::thread_rng())
        })
        .await
        .map_err(internal)?;
        let Ok(crs) = checked else {
            return Err(self.abort_download(record, "the CRS failed its check"));
        };
        let hash = zk::crs_hash(&crs);
        write_atomically(
            &self.checked_crs_path(&hash),
            &zk::serialize_trusted_crs(&crs),
        )
        .map_err(internal)?;
        self.checked_crs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hash, Arc::new(crs));
        let mut record = record;
        let download = record.download.as_mut().expect("checked above");
        download.checked_crs = Some(hash);
        download.crs_upload = Some(upload);
        self.store(&record)?;
        Ok(())
    }

    /// Aborts the current download of `record` for good (stored before answering) and
    /// returns the one error the renter sees, whatever went wrong: which of check, second
    /// CRS, proof or self-verification failed stays in this farmer's log.
    fn abort_download(&self, mut record: FarmedContract, why: &'static str) -> FarmerError {
        if let Some(download) = record.download.as_mut() {
            download.phase = FarmerPhase::Aborted;
            download.template = None;
        }
        if let Err(e) = self.store(&record) {
            return e;
        }
        tracing::warn!(contract = %hex::encode(record.contract_id), why, "CRS refused: download aborted");
        FarmerError::CrsRejected(zk::CrsRejected.to_string())
    }

    fn checked_crs_path(&self, hash: &[u8; 32]) -> PathBuf {
        self.config
            .crs_dir
            .join(format!("checked-{}.crs", hex::encode(hash)))
    }

    /// A CRS this farmer checked before: in memory, or reloaded from its own cache.
    async fn checked(&self, hash: &[u8; 32]) -> Result<Option<Arc<Crs>>, FarmerError> {
        if let Some(crs) = self
            .checked_crs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
        {
            return Ok(Some(crs.clone()));
        }
        let path = self.checked_crs_path(hash);
        let Ok(bytes) = tokio::fs::read(&path).await else {
            return Ok(None);
        };
        let crs = tokio::task::spawn_blocking(move || zk::deserialize_trusted_crs(&bytes))
            .await
            .map_err(internal)?;
        let Ok(crs) = crs else { return Ok(None) };
        if zk::crs_hash(&crs) != *hash {
            return Ok(None);
        }
        let crs = Arc::new(crs);
        self.checked_crs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(*hash, crs.clone());
        Ok(Some(crs))
    }

    /// Proves under the offered CRS, which must be this download's one CRS: the one
    /// uploaded for it, or (if none was) one this farmer checked before, which becomes
    /// the download's CRS. Any other CRS, and any failure of the proof or of its
    /// self-verification, aborts the download.
    async fn on_crs_offer(
        &self,
        mut record: FarmedContract,
        offer: CrsOffer,
    ) -> Result<Step<ProofReady>, FarmerError> {
        let download = record.download_in(FarmerPhase::Tx2Signed)?;
        if download
            .checked_crs
            .is_some_and(|accepted| accepted != offer.crs_hash)
        {
            return Err(self.abort_download(record, "a second CRS for this download"));
        }
        let template = download.signed_tx2()?;
        let crs = self
            .checked(&offer.crs_hash)
            .await?
            .ok_or(FarmerError::UnknownCrs)?;
        let proved = tokio::task::spawn_blocking(move || {
            let (statement, s1, s2) = Statement::of(&template)?;
            zk::prove(&crs, &statement, &s1, &s2, &mut rand::thread_rng())
        })
        .await;
        let Ok(Ok(proof)) = proved else {
            return Err(self.abort_download(record, "no verifying proof under this CRS"));
        };
        let payout_script = self.wallet.new_script().map_err(internal)?;
        let download = record.download.as_mut().expect("checked above");
        download.checked_crs = Some(offer.crs_hash);
        download.payout_script = Some(payout_script.clone());
        download.phase = FarmerPhase::Proved;
        Ok(Step {
            record,
            reply: ProofReady {
                proof: zk::serialize_proof(&proof),
                payout_script,
                tx3_fee: TX3_FEE,
            },
        })
    }

    async fn on_tx3_renter_sig(
        &self,
        mut record: FarmedContract,
        message: Tx3RenterSig,
    ) -> Result<Step<Claimed>, FarmerError> {
        let download = record.download_in(FarmerPhase::Proved)?;
        let contract = download.agreed()?;
        let template = download.signed_tx2()?;
        let payout = download
            .payout_script
            .clone()
            .ok_or(FarmerError::WrongPhase("no payout"))?;
        let value = contract.tx2_value(TX2_FEE).map_err(internal)?;
        let unsigned = contract
            .unsigned_tx3(template.txid, value, TX3_FEE, payout)
            .map_err(internal)?;
        let renter_sig = bitcoin::ecdsa::Signature::from_slice(&message.signature)
            .map_err(|e| FarmerError::Invalid(format!("renter TX3 signature: {e}")))?;
        contract
            .verify_tx3_signature(&unsigned, value, &contract.renter_tx2_key, &renter_sig)
            .map_err(|e| FarmerError::Invalid(format!("renter TX3 signature: {e}")))?;
        let f2 = self.secret(Role::Tx2, download.key_index)?;
        let farmer_sig = contract.sign_tx3(&unsigned, value, &f2).map_err(internal)?;
        let tx3 = contract
            .finalize_tx3(&unsigned, renter_sig, farmer_sig)
            .map_err(internal)?;
        let mut claimed = Claimed {
            tx2: template.txid,
            tx3: tx3.compute_txid(),
            pending: None,
        };
        // Too close to T1, TX2 could only reveal f late: abandon instead.
        self.refuse_if_late(&record).await?;
        let download = record.download.as_mut().expect("checked above");
        download.tx3 = Some(tx3);
        download.phase = FarmerPhase::AwaitingTx1;
        // Both transactions are on disk before either leaves this process.
        self.store(&record)?;
        if crate::dev_fault!(self.config.dev_fault, WithholdTx2) {
            tracing::warn!("dev fault withhold-tx2: keeping TX2 to itself");
            return Err(FarmerError::Internal("TX2 withheld".into()));
        }
        // The tower holds the claim, under the same broadcast rule, before it leaves this
        // process: should the farmer die now, the tower still gets TX2 and TX3 mined.
        if !crate::dev_fault!(self.config.dev_fault, WithholdTx3) {
            self.register_claim(&mut record).await;
        }
        // TX2 goes out now only if TX1 is deep enough; otherwise the claim watcher
        // broadcasts it at a later block, or abandons it (see [`claim`]).
        match self.advance_claim(&mut record).await {
            Ok(ClaimOutcome::Claimed) => {}
            Ok(ClaimOutcome::Pending(pending)) => {
                tracing::info!(contract = %hex::encode(record.contract_id), confirmations = pending.tx1_confirmations, needed = pending.min_tx1_confirmations, "claim stored; TX2 waits for TX1's confirmations");
                claimed.pending = Some(pending);
            }
            Ok(ClaimOutcome::Abandoned { height }) => return Err(FarmerError::Abandoned(height)),
            Err(e) if crate::dev_fault!(self.config.dev_fault, WithholdTx3) => return Err(e),
            Err(e) => {
                tracing::warn!("claim not broadcast yet ({e}); retried at the next block");
                let download = record.download.as_ref().expect("checked above");
                claimed.pending = Some(ClaimPending {
                    tx1_confirmations: 0,
                    min_tx1_confirmations: self.config.min_tx1_confirmations,
                    abandon_height: self.abandon_height(download),
                });
            }
        }
        Ok(Step {
            record,
            reply: claimed,
        })
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

    /// Hands the current download's claim (TX2 and TX3, both fully signed) to the
    /// watchtower, if one is configured. A failure is logged, never fatal: the farmer
    /// broadcasts the claim itself anyway, and the registration is retried at the next start.
    async fn register_claim(&self, record: &mut FarmedContract) {
        let Some(tower) = &self.config.tower else {
            return;
        };
        let Some(download) = record.download.as_mut() else {
            return;
        };
        // TX2 only once TX1 is deep enough and never at or after the abandon height.
        let hold = Hold {
            min_parent_confirmations: self.config.min_tx1_confirmations,
            never_from_height: Some(self.abandon_height(download)),
        };
        let (Some(template), Some(tx3)) = (&download.template, &download.tx3) else {
            return;
        };
        let registration = Registration {
            id: download.download_id,
            role: WatchRole::Farmer,
            extract: None,
            transactions: vec![
                Presigned::new("tx2", template.tx.clone()).held(hold),
                Presigned::new("tx3", tx3.clone()),
            ],
            watch_txids: Vec::new(),
            // The tip when the download was offered: the same on every retry, and early
            // enough that the tower sees a TX2 or TX3 already mined.
            rescan_from_height: Some(download.refund_height.saturating_sub(REFUND_MARGIN)),
            auditor: None,
        };
        let id = hex::encode(download.download_id);
        match tower.register(&registration).await {
            Ok(verdict) => {
                tracing::info!(download = %id, tower = %tower.url(), %verdict, "claim registered with the watchtower");
                download.tower_registered = true;
            }
            Err(e) => {
                tracing::warn!(download = %id, "watchtower registration of the claim failed ({e}); it is retried at the next start")
            }
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

/// Records a broadcast claim: the download is paid, and its payout is TX3's output.
fn mark_claimed(record: &mut FarmedContract) {
    let Some(download) = record.download.as_mut() else {
        return;
    };
    let (Some(template), Some(tx3)) = (&download.template, &download.tx3) else {
        return;
    };
    let payout = Payout {
        download_id: download.download_id,
        tx2: template.txid,
        tx3: tx3.compute_txid(),
        amount: tx3.output[0].value,
    };
    tracing::info!(tx2 = %payout.tx2, tx3 = %payout.tx3, "download paid: TX2 and TX3 broadcast");
    download.phase = FarmerPhase::Claimed;
    record.payouts.push(payout);
}

/// Flips the first byte of a file, if it has one (test-only faults).
fn flip_first_byte(path: &std::path::Path) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut byte = [0u8; 1];
    if file.read(&mut byte)? == 1 {
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&[byte[0] ^ 0x01])?;
    }
    Ok(())
}

/// Opens a first-contact envelope: the sender's key is whatever signed it.
fn open_first<B: PeerMessage>(
    bytes: &[u8],
    contract_id: [u8; 32],
) -> Result<Opened<B>, FarmerError> {
    let opened = peer::open::<B>(
        bytes,
        &Expected {
            contract_id,
            sender: None,
        },
    )?;
    SequenceGuard::default().next(opened.seq)?;
    Ok(opened)
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    // A temporary name of its own: several processes may write the same shared file (the
    // CRS cache) at once, and a common name would let one rename the other's file away.
    let tmp = path.with_extension(format!(
        "tmp.{}.{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let written = std::fs::File::create(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    let renamed = written.and_then(|()| std::fs::rename(&tmp, path));
    if renamed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    renamed
}

impl FarmedContract {
    /// Opens an envelope from this contract's renter and checks its sequence number.
    fn open<B: PeerMessage>(&self, bytes: &[u8]) -> Result<Opened<B>, FarmerError> {
        let opened = peer::open::<B>(
            bytes,
            &Expected {
                contract_id: self.contract_id,
                sender: Some(self.renter),
            },
        )?;
        self.inbound.next(opened.seq)?;
        Ok(opened)
    }

    /// The stored reply, if `request` repeats the last message exactly.
    fn repeat_reply(&self, request: &[u8]) -> Option<Vec<u8>> {
        (self.last_request == Some(sha256(&[request])))
            .then(|| self.last_reply.clone())
            .flatten()
    }

    /// The current download, which must be in `phase`.
    fn download_in(&self, phase: FarmerPhase) -> Result<&FarmedDownload, FarmerError> {
        match &self.download {
            Some(d) if d.phase == phase => Ok(d),
            Some(d) if d.phase == FarmerPhase::Aborted => {
                Err(FarmerError::WrongPhase("this download was aborted"))
            }
            Some(d) if d.phase == FarmerPhase::Abandoned => Err(FarmerError::WrongPhase(
                "this download was abandoned (too close to T1 for TX2)",
            )),
            _ => Err(FarmerError::WrongPhase(phase.expected_message())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_errors_tell_the_renter_where_to_resume() {
        let (status, body) = FarmerError::Peer(PeerError::Replayed {
            expected: 6,
            got: 5,
        })
        .to_body();
        assert_eq!((status, body.next_seq), (400, Some(6)));
        let (_, body) = FarmerError::Peer(PeerError::OutOfOrder {
            expected: 2,
            got: 9,
        })
        .to_body();
        assert_eq!(body.next_seq, Some(2));
        let (status, body) = FarmerError::UnknownCrs.to_body();
        assert_eq!((status, body.code, body.next_seq), (404, UNKNOWN_CRS, None));
        let (status, _) = FarmerError::Unauthorised.to_body();
        assert_eq!(status, 401);
    }
}
