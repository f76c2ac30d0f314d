//! What the farmer stores per contract: the renter, the offer, upload progress, the
//! receipt, the current download's state, and the payouts earned.

use bitcoin::secp256k1::{PublicKey, XOnlyPublicKey};
use bitcoin::{Amount, OutPoint, ScriptBuf, Transaction, Txid};
use dstore_protocol::contract::DownloadContract;
use dstore_protocol::keys::{KeyCommitment, KeyReveal};
use dstore_protocol::merkle::MerkleBuilder;
use dstore_protocol::messages::{ClaimPending, DownloadOffer, DownloadRequest, OpenRequest};
use dstore_protocol::nonce_reuse::Tx2Template;
use dstore_protocol::peer::SequenceGuard;
use dstore_protocol::receipt::StorageReceipt;
use dstore_protocol::seal::SealTranscript;
use dstore_protocol::upload::UploadCheckpoint;
use serde::{Deserialize, Serialize};

use super::FarmerError;

/// One stored file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FarmedContract {
    #[serde(with = "hex::serde")]
    pub contract_id: [u8; 32],
    /// The renter's identity key: every later message and bulk request is signed by it.
    pub renter: XOnlyPublicKey,
    pub file_length: u64,
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub price: Amount,
    pub expiry_height: u32,
    /// The next message number expected from the renter.
    pub inbound: SequenceGuard,
    /// The next message number this farmer sends.
    pub outbound: u64,
    pub upload: UploadCheckpoint,
    pub receipt: Option<StorageReceipt>,
    pub download: Option<FarmedDownload>,
    pub payouts: Vec<Payout>,
    /// Hash of the last message handled and its reply, to answer an exact retry.
    pub last_request: Option<[u8; 32]>,
    pub last_reply: Option<Vec<u8>>,
    /// The audit contract, once the renter proposed one.
    #[serde(default)]
    pub audit: Option<FarmedAudit>,
    /// TX1:0 of the first download that carried this farmer's lease record (issue 17): a
    /// contract without audits leases only its first TX1.
    #[serde(default)]
    pub leased_tx1: Option<OutPoint>,
    /// Mode-N downloads (PROTOCOL.md 4b), oldest first. Each holds its secret x.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ln_downloads: Vec<FarmedLnDownload>,
}

impl FarmedContract {
    pub fn new(
        contract_id: [u8; 32],
        renter: XOnlyPublicKey,
        request: &OpenRequest,
        expiry_height: u32,
    ) -> Self {
        FarmedContract {
            contract_id,
            renter,
            file_length: request.file_length,
            price: request.download_price,
            expiry_height,
            inbound: SequenceGuard::default(),
            outbound: 0,
            upload: UploadCheckpoint {
                expected_length: request.file_length,
                merkle: MerkleBuilder::new().checkpoint(),
            },
            receipt: None,
            download: None,
            payouts: Vec::new(),
            last_request: None,
            last_reply: None,
            audit: None,
            leased_tx1: None,
            ln_downloads: Vec::new(),
        }
    }

    /// The contract's current download if it is a mode-N one: the latest mode-N download,
    /// unless a mode-L download began after it.
    pub fn current_ln_download(&self) -> Option<&FarmedLnDownload> {
        let latest = self.ln_downloads.last()?;
        (latest.chain_download_before == self.download.as_ref().map(|d| d.download_id))
            .then_some(latest)
    }
}

/// Where the farmer's half of a mode-N download stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FarmedLnPhase {
    /// x and the transcript are stored (before any invoice exists); the invoice follows.
    LnInvoiced,
    /// The invoice is stored too and the offer went to the renter; the Lightning node
    /// settles the payment by revealing x.
    LnOffered,
}

/// The farmer's half of one mode-N download: x is secret until the renter pays the
/// invoice (the metadata store's directory is 0700); it is never logged.
#[derive(Clone, Serialize, Deserialize)]
pub struct FarmedLnDownload {
    #[serde(with = "hex::serde")]
    pub download_id: [u8; 32],
    pub phase: FarmedLnPhase,
    /// x: the invoice's payment hash is SHA256(x); E is sealed under a key derived from it.
    #[serde(with = "hex::serde")]
    pub preimage: [u8; 32],
    pub transcript: dstore_protocol::ln::LnTranscript,
    /// The BOLT11 invoice, once the Lightning node made it.
    #[serde(default)]
    pub invoice: Option<String>,
    /// The mode-L download that was the contract's latest when this one began: this one
    /// is the current download while that stays so.
    #[serde(default)]
    pub chain_download_before: Option<[u8; 32]>,
}

impl std::fmt::Debug for FarmedLnDownload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FarmedLnDownload")
            .field("download_id", &hex::encode(self.download_id))
            .field("phase", &self.phase)
            .field("invoice", &self.invoice.is_some())
            .finish_non_exhaustive()
    }
}

/// Where the farmer's half of a download stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FarmerPhase {
    /// Offer sent; waiting for the renter's reveal.
    Offered,
    /// E sealed and described; waiting for TX1.
    Revealed,
    /// Unsigned TX2 sent; waiting for sig_R.
    Tx2Offered,
    /// TX2 signed under one nonce (secret); waiting for the CRS.
    Tx2Signed,
    /// Proof sent; waiting for the renter's TX3 signature.
    Proved,
    /// TX2 and TX3 stored; TX2 is held back until TX1 has enough confirmations
    /// (`--min-tx1-confirmations`), and abandoned if the tip gets too close to T1.
    AwaitingTx1,
    /// TX2 and TX3 stored; broadcasting.
    Claiming,
    /// TX2 and TX3 broadcast.
    Claimed,
    /// A subverted CRS: this download's TX2 is never used.
    Aborted,
    /// The tip reached T1 minus `--tx2-broadcast-margin-blocks` before TX2 went out:
    /// TX2 is never broadcast (f stays secret); the renter refunds TX1 at T1.
    Abandoned,
}

impl FarmerPhase {
    /// The renter message this phase waits for, for error messages.
    pub fn expected_message(self) -> &'static str {
        match self {
            FarmerPhase::Offered => "expected the renter's reveal",
            FarmerPhase::Revealed => "expected TX1",
            FarmerPhase::Tx2Offered => "expected the renter's TX2 signature",
            FarmerPhase::Tx2Signed => "expected the CRS",
            FarmerPhase::Proved => "expected the renter's TX3 signature",
            _ => "no download is in flight",
        }
    }
}

/// The farmer's half of one download.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FarmedDownload {
    #[serde(with = "hex::serde")]
    pub download_id: [u8; 32],
    /// F and F2 derive from the seed at this index.
    pub key_index: u32,
    pub phase: FarmerPhase,
    pub renter_commitment: KeyCommitment,
    pub renter_tx2_key: PublicKey,
    pub farmer_reveal: KeyReveal,
    pub farmer_tx2_key: PublicKey,
    pub refund_height: u32,
    pub payout_delay: u16,
    pub contract: Option<DownloadContract>,
    pub transcript: Option<SealTranscript>,
    pub tx1_outpoint: Option<OutPoint>,
    pub unsigned_tx2: Option<Transaction>,
    /// The signed TX2: broadcasting it reveals f, so it leaves only with TX3.
    pub template: Option<Tx2Template>,
    /// The one CRS accepted for this download (uploaded and checked, or offered from
    /// the cache); any other CRS aborts the download.
    pub checked_crs: Option<[u8; 32]>,
    /// SHA-256 of the CRS bytes accepted by upload, so that re-sending the same bytes is
    /// an idempotent retry rather than a second CRS.
    #[serde(default)]
    pub crs_upload: Option<[u8; 32]>,
    pub payout_script: Option<ScriptBuf>,
    pub tx3: Option<Transaction>,
    /// The farmer's watchtower holds TX2 and TX3 (only with `--watchtower-url`).
    #[serde(default)]
    pub tower_registered: bool,
    /// While the claim is on hold: what the last check of the broadcast rule found.
    #[serde(default)]
    pub claim_check: Option<ClaimCheck>,
}

/// One check of the TX2 broadcast rule for a claim on hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimCheck {
    /// The tip height the rule was checked at.
    pub height: u32,
    pub pending: ClaimPending,
}

impl FarmedDownload {
    pub fn offered(
        key_index: u32,
        request: &DownloadRequest,
        offer: &DownloadOffer,
        reveal: KeyReveal,
    ) -> Self {
        FarmedDownload {
            download_id: request.download_id,
            key_index,
            phase: FarmerPhase::Offered,
            renter_commitment: request.renter_commitment,
            renter_tx2_key: request.renter_tx2_key,
            farmer_reveal: reveal,
            farmer_tx2_key: offer.farmer_tx2_key,
            refund_height: offer.refund_height,
            payout_delay: offer.payout_delay,
            contract: None,
            transcript: None,
            tx1_outpoint: None,
            unsigned_tx2: None,
            template: None,
            checked_crs: None,
            crs_upload: None,
            payout_script: None,
            tx3: None,
            tower_registered: false,
            claim_check: None,
        }
    }

    /// The download contract once the renter's key R is known.
    pub fn contract_with(
        &self,
        contract_id: [u8; 32],
        price: Amount,
        renter_key: PublicKey,
    ) -> DownloadContract {
        DownloadContract {
            contract_id,
            farmer_key: self.farmer_reveal.pubkey,
            renter_key,
            renter_tx2_key: self.renter_tx2_key,
            farmer_tx2_key: self.farmer_tx2_key,
            refund_height: self.refund_height,
            payout_delay: self.payout_delay,
            price,
            tx1_key_order: dstore_protocol::contract::Tx1KeyOrder::RenterFirst,
        }
    }

    /// The agreed download contract (known once the renter revealed R).
    pub fn agreed(&self) -> Result<DownloadContract, FarmerError> {
        self.contract
            .ok_or(FarmerError::WrongPhase("no download contract yet"))
    }

    /// The TX2 this farmer signed under one nonce.
    pub fn signed_tx2(&self) -> Result<Tx2Template, FarmerError> {
        self.template
            .clone()
            .ok_or(FarmerError::WrongPhase("no signed TX2 yet"))
    }

    /// A download whose claim is stored (on hold or being broadcast): it must finish
    /// before another starts. Any earlier phase may be abandoned by the renter (its TX2
    /// never leaves the farmer).
    pub fn in_flight(&self) -> bool {
        matches!(self.phase, FarmerPhase::AwaitingTx1 | FarmerPhase::Claiming)
    }
}

/// One paid download.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Payout {
    #[serde(with = "hex::serde")]
    pub download_id: [u8; 32],
    pub tx2: Txid,
    pub tx3: Txid,
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub amount: Amount,
}

/// Where the farmer's half of the audit setup stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FarmedAuditPhase {
    /// Keys, toss commitment and stake script sent; waiting for TX_A.
    Accepted,
    /// TX_A (with the stake) checked and every RF_i signed; waiting for TX_A's
    /// confirmations and the renter's nonce.
    Funded,
    /// Toss decided; waiting for the openings.
    Tossed,
    /// Refunds signed; swapping candidate signatures.
    Swapping,
    /// Every candidate signed by both.
    Complete,
}

impl FarmedAuditPhase {
    /// The renter message this phase waits for, for error messages.
    pub fn expected_message(self) -> &'static str {
        match self {
            FarmedAuditPhase::Accepted => "expected TX_A (audit funding)",
            FarmedAuditPhase::Funded => "expected the renter's toss nonce",
            FarmedAuditPhase::Tossed => "expected the audit openings",
            FarmedAuditPhase::Swapping => "expected a swap step",
            FarmedAuditPhase::Complete => "the audit setup is complete",
        }
    }
}

/// The farmer's half of a contract's audits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FarmedAudit {
    /// Fa and Fc derive from the seed (role Audit) at these indices.
    pub funding_key_index: u32,
    pub claim_key_index: u32,
    pub proposal: dstore_protocol::audit::messages::AuditProposal,
    /// Committed before the renter's nonce was known; revealed after.
    #[serde(with = "hex::serde")]
    pub farmer_nonce: [u8; 32],
    pub seed: Option<[u8; 32]>,
    /// Before the toss the book has no kept locks (only RF_i can be built); the openings
    /// complete it.
    pub book: Option<dstore_protocol::audit::book::AuditBook>,
    pub swap: dstore_protocol::audit::swap::FarmerSwap,
    pub phase: FarmedAuditPhase,
    pub claims: Vec<AuditClaim>,
    /// Where TX_A pays the stake (a script of this farmer's wallet).
    #[serde(default)]
    pub stake_script: Option<ScriptBuf>,
    /// TX_A as the renter sent it (unsigned), once checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub funding_tx: Option<Transaction>,
    /// Why the renter's openings failed (a planted lock caught): the stake is kept and
    /// the setup goes no further.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caught: Option<String>,
    /// The farmer's tower holds the candidates (only with `--watchtower-url`).
    pub tower_registered: bool,
}

/// A claim of a confirmed candidate, stored before it was broadcast.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditClaim {
    pub audit: u32,
    pub candidate: u32,
    pub candidate_txid: Txid,
    pub claim: Transaction,
    /// Another candidate of the same audit confirmed: this claim's candidate conflicts
    /// with it and can never confirm, so the claim is no longer broadcast.
    #[serde(default)]
    pub superseded: bool,
    /// The tip height when the claim was broadcast (or first seen unconfirmed by the
    /// fee bumper, for a claim stored before this field existed).
    #[serde(default)]
    pub broadcast_height: Option<u32>,
    /// CPFP children of the claim, oldest first; each later one replaces the one before.
    #[serde(default)]
    pub bumps: Vec<ClaimBump>,
}

/// A CPFP child that pays for a stuck audit claim, stored before it was broadcast.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimBump {
    pub txid: Txid,
    /// The package (claim plus child) fee rate aimed at, sat/vB.
    pub package_sat_vb: u64,
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub fee: Amount,
    /// The tip height when it was made.
    pub height: u32,
    pub tx: Transaction,
}
