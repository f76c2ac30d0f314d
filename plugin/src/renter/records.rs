//! What the renter stores per contract: the farmer, the file key K (secret), root_C, the
//! receipt, and each download's state, transactions and outcome.

use bitcoin::secp256k1::XOnlyPublicKey;
use bitcoin::{Amount, OutPoint, Transaction, Txid};
use dstore_protocol::contract::DownloadContract;
use dstore_protocol::keys::{KeyCommitment, KeyReveal};
use dstore_protocol::merkle::Hash32;
use dstore_protocol::peer::SequenceGuard;
use dstore_protocol::receipt::StorageReceipt;
use dstore_protocol::seal::SealTranscript;
use serde::{Deserialize, Serialize};

/// Where a contract's storage stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoragePhase {
    /// Encrypting the file into the local staging copy of C.
    Encrypting,
    /// Streaming C to the farmer.
    Uploading,
    /// The farmer's receipt is checked and stored.
    Stored,
    /// The farmer's storage term (in `OpenAccepted` or the receipt) was refused: nothing
    /// was paid, nothing is resumed, and the contract cannot be downloaded.
    Refused,
}

/// One rented file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RentedContract {
    #[serde(with = "hex::serde")]
    pub contract_id: [u8; 32],
    pub farmer_url: String,
    pub farmer: XOnlyPublicKey,
    /// K: the file key. Secret; the metadata store's files are 0600.
    #[serde(with = "hex::serde")]
    pub file_key: [u8; 32],
    pub source: String,
    pub plaintext_length: u64,
    pub ciphertext_length: u64,
    pub root_c: Option<Hash32>,
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub price: Amount,
    pub phase: StoragePhase,
    pub receipt: Option<StorageReceipt>,
    /// The next message number this renter sends.
    pub outbound: u64,
    /// The next message number expected from the farmer.
    pub inbound: SequenceGuard,
    pub downloads: Vec<RentedDownload>,
    /// What `dstore-open` asked for, kept so a resumed upload still sets the audits up.
    #[serde(default)]
    pub requested_audits: Option<AuditRequest>,
    /// The audit contract, when `dstore-open` asked for audits.
    #[serde(default)]
    pub audit: Option<RentedAudit>,
    /// The storage expiry the farmer signed in `OpenAccepted` (the receipt must not be
    /// shorter).
    #[serde(default)]
    pub accepted_expiry: Option<u32>,
    /// The last message sent and the farmer's reply, stored with the sequence numbers: a
    /// step re-run after a crash gets that reply again instead of sending the message twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reply: Option<LastReply>,
    /// Why the last upload resumed after a restart stopped (`dstore-status` shows it as
    /// `error`); cleared once a resumed upload gets through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_error: Option<String>,
}

/// The renter's last completed exchange with the farmer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastReply {
    /// The request's sequence number.
    pub seq: u64,
    /// The request's kind and SHA-256 of its body.
    pub kind: String,
    #[serde(with = "hex::serde")]
    pub request: [u8; 32],
    /// The farmer's reply body.
    pub reply: serde_json::Value,
}

/// Where a download stands, renter side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DownloadPhase {
    /// Commitments exchanged.
    Offered,
    /// Keys revealed; fetching and checking E.
    Fetching,
    /// TX1 signed and stored; about to be broadcast (or broadcast).
    Tx1Funded,
    /// The farmer's unsigned TX2 checked and stored; sig_R about to be sent (or sent).
    Tx2Signed,
    /// TX3 signed and sent: the farmer can now claim by broadcasting TX2.
    Tx3Signed,
    /// File written and checked.
    Done,
    /// The farmer's data was wrong after payment; a fraud proof is stored.
    Fraud,
    /// TX1 (or TX2) money returned.
    Refunded,
    /// Failed before any money moved.
    Failed,
    /// Mode N (PROTOCOL.md 4b): the download id is fixed; the farmer's offer is asked for.
    LnRequested,
    /// Mode N: the signed transcript and the invoice are stored; E is fetched and checked
    /// against root_E, then the invoice against the transcript.
    LnFetching,
    /// Mode N: the payment hash is stored and the invoice is being paid (maybe sent, maybe
    /// not: after a restart the Lightning node is asked, never paid twice).
    LnPaying,
    /// Mode N: the payment settled and x is stored; unsealing and checking root_C.
    LnPaid,
}

impl DownloadPhase {
    /// Money is locked in TX1 or TX2 and not yet spent by a finished exchange.
    pub fn money_locked(self) -> bool {
        matches!(
            self,
            DownloadPhase::Tx1Funded | DownloadPhase::Tx2Signed | DownloadPhase::Tx3Signed
        )
    }

    /// A mode-N payment may be in flight or settled without the file written yet: the
    /// download goes on from its stored phase (also after a restart).
    pub fn ln_paying(self) -> bool {
        matches!(self, DownloadPhase::LnPaying | DownloadPhase::LnPaid)
    }
}

/// The renter's half of one download.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RentedDownload {
    #[serde(with = "hex::serde")]
    pub download_id: [u8; 32],
    /// R and R2 derive from the seed at this index.
    pub key_index: u32,
    pub phase: DownloadPhase,
    pub renter_commitment: KeyCommitment,
    pub renter_reveal: KeyReveal,
    pub farmer_commitment: Option<KeyCommitment>,
    pub contract: Option<DownloadContract>,
    pub transcript: Option<SealTranscript>,
    pub tx1: Option<Transaction>,
    pub tx1_outpoint: Option<OutPoint>,
    pub unsigned_tx2: Option<Transaction>,
    /// txid = SHA256(D), known once the proof verified.
    pub tx2_txid: Option<Txid>,
    pub tx3_txid: Option<Txid>,
    /// Chain height when the download started (where to look for TX2).
    pub start_height: u32,
    pub output: Option<String>,
    pub fraud_proof: Option<String>,
    pub refund_txid: Option<Txid>,
    pub error: Option<String>,
    /// What this download handed its watchtower (only with `--watchtower-url`).
    #[serde(default)]
    pub watchtower: Option<TowerRecord>,
    /// Confirmations the farmer said TX1 needs before it broadcasts TX2 (0: not said).
    #[serde(default)]
    pub min_tx1_confirmations: u32,
    /// The download went on in the background and no `dstore-download` call has returned
    /// its outcome yet: the next call returns it instead of buying another download.
    #[serde(default)]
    pub unreported: bool,
    /// The farmer's statement about its signed TX2, kept so that a resumed download does
    /// not ask for it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<dstore_protocol::zk::Statement>,
    /// TX3, unsigned, stored with phase `tx3_signed` before its signature leaves (the
    /// signature is deterministic: a resumed download sends the same one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx3: Option<Transaction>,
    /// The farmer's lease record for this download's TX1 (issue 17; only the first TX1 of
    /// a contract without audits gets one): TX1 carries it at index 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<dstore_protocol::market::lease::LeaseRecord>,
    /// A mode-N download's state (None: a mode-L download, whose fields above it uses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ln: Option<RentedLn>,
}

/// The renter's half of a mode-N download (PROTOCOL.md 4b).
#[derive(Clone, Serialize, Deserialize)]
pub struct RentedLn {
    /// The agreed price, in millisatoshis: the transcript and the invoice must say it.
    pub price_msat: u64,
    /// The farmer's Lightning node, as its info advertised it: the invoice's payee.
    pub payee: bitcoin::secp256k1::PublicKey,
    /// The farmer's signed transcript (root_E, H, length, price), once checked.
    #[serde(default)]
    pub transcript: Option<dstore_protocol::ln::LnTranscript>,
    #[serde(default)]
    pub invoice: Option<String>,
    /// H, stored before the invoice is paid.
    #[serde(default, with = "opt_hex32")]
    pub payment_hash: Option<[u8; 32]>,
    /// x, from the settled payment (SHA256(x) = H).
    #[serde(default, with = "opt_hex32")]
    pub preimage: Option<[u8; 32]>,
    /// What routing the payment cost, when the node says.
    #[serde(default)]
    pub fee_msat: Option<u64>,
}

impl std::fmt::Debug for RentedLn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RentedLn")
            .field("price_msat", &self.price_msat)
            .field("payment_hash", &self.payment_hash.map(hex::encode))
            .field("paid", &self.preimage.is_some())
            .finish_non_exhaustive()
    }
}

/// `Option<[u8; 32]>` as an optional hex string.
mod opt_hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(bytes) => s.serialize_some(&hex::encode(bytes)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 32]>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(&text, &mut bytes).map_err(serde::de::Error::custom)?;
        Ok(Some(bytes))
    }
}

/// The renter's registration of one download with its watchtower. The signed refunds are
/// kept so that every re-registration sends the same bytes (the tower refuses a different
/// transaction under a name it already holds).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TowerRecord {
    /// TX1:0 back to the wallet after T1; its output script is the refund destination.
    pub tx1_refund: Transaction,
    /// TX2:0 back to the wallet Δ blocks after TX2 (known once TX3 is signed).
    pub tx2_refund: Option<Transaction>,
    /// The tower accepted everything above (false: not yet, retried at the next start).
    pub registered: bool,
    /// Chain height when the tower last accepted the registration.
    pub registered_height: Option<u32>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// TX2 (and so f) came from the tower's extraction rather than from bitcoind.
    #[serde(default)]
    pub tx2_from_tower: bool,
    /// TX1's refund again at rising fees, for the tower to broadcast when it is stuck.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tx1_refund_bumps: Vec<Transaction>,
    /// The same for TX2's refund.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tx2_refund_bumps: Vec<Transaction>,
}

impl TowerRecord {
    /// TX1's refund and its bump levels, cheapest first.
    pub fn tx1_versions(&self) -> Vec<Transaction> {
        let mut all = vec![self.tx1_refund.clone()];
        all.extend(self.tx1_refund_bumps.iter().cloned());
        all
    }

    /// TX2's refund and its bump levels, cheapest first (empty before TX2's refund).
    pub fn tx2_versions(&self) -> Vec<Transaction> {
        let mut all: Vec<Transaction> = self.tx2_refund.iter().cloned().collect();
        all.extend(self.tx2_refund_bumps.iter().cloned());
        all
    }
}

/// What `dstore-open` asked for: N audits every P blocks, A satoshis each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRequest {
    pub audits: u32,
    pub period: u32,
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub amount: Amount,
}

/// Where the renter's half of the audit setup stands (in order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RentedAuditPhase {
    /// Candidates chosen; the proposal is next.
    Planned,
    /// The farmer accepted, committed to its toss nonce and named its stake script; TX_A
    /// (with the stake) is built and stored before it is sent to the farmer.
    Proposed,
    /// Every RF_i signed by the farmer and checked; TX_A not broadcast yet.
    Booked,
    /// The RF_i are with the tower and TX_A (with the stake) is broadcast: money moved.
    /// The setup waits for TX_A's confirmations, then sends the toss.
    Funded,
    /// The toss is decided.
    Tossed,
    /// Every RF_ij signed by the farmer and checked; swapping candidate signatures.
    Swapping,
    /// Every candidate signed by both and handed to the tower.
    Complete,
    /// The setup ended without a complete swap: before TX_A was broadcast nothing moved;
    /// later (e.g. a renter caught at the openings) the stake is the farmer's and RF_i
    /// return the O_i at T_i + W.
    Failed,
}

/// The renter's half of a contract's audits. The candidates hold the salts: secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RentedAudit {
    pub request: AuditRequest,
    /// Ra and Rc derive from the seed (role Audit) at these indices.
    pub funding_key_index: u32,
    pub claim_key_index: u32,
    /// 2m candidates per audit, with their secret (index, salt).
    pub candidates: Vec<Vec<dstore_protocol::audit::candidates::Candidate>>,
    #[serde(with = "hex::serde")]
    pub renter_nonce: [u8; 32],
    /// Where refunds and reclaims pay (a wallet script).
    pub destination: bitcoin::ScriptBuf,
    pub proposal: Option<dstore_protocol::audit::messages::AuditProposal>,
    pub accepted: Option<dstore_protocol::audit::messages::AuditAccepted>,
    pub seed: Option<[u8; 32]>,
    /// TX_A, signed, stored before it is sent to the farmer and before it is broadcast.
    pub funding_tx: Option<Transaction>,
    /// Before the toss: the book without kept locks (only RF_i); then the full book.
    pub book: Option<dstore_protocol::audit::book::AuditBook>,
    /// The farmer's refund signatures in the book's `refund_ids` order (RF_i, then RF_ij).
    pub refund_signatures: Option<Vec<Vec<bitcoin::secp256k1::ecdsa::Signature>>>,
    pub swap: dstore_protocol::audit::swap::RenterSwap,
    pub phase: RentedAuditPhase,
    /// The tower holds every refund of the stored book (the RF_i before TX_A was
    /// broadcast; the RF_ij and reclaims before the swap).
    pub tower_registered: bool,
    /// The tower (and auditor) hold every candidate signed by both.
    pub candidates_registered: bool,
    pub error: Option<String>,
    /// What the setup waits for (TX_A's confirmations), shown by `dstore-status`.
    #[serde(default)]
    pub waiting_for: Option<String>,
}
