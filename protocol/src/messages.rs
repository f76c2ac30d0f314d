//! The renter ↔ farmer message catalogue for storage and mode-L downloads (PROTOCOL.md 1,
//! 3.3, 7), each a [`PeerMessage`] carried in a signed [`crate::peer`] envelope, with the
//! checks each side applies to the other's terms.
//!
//! Storage: [`OpenRequest`] → [`OpenAccepted`]; the ciphertext C is then streamed (not in
//! envelopes) and resumable from the farmer's byte count; [`UploadDone`] →
//! [`StorageReceipt`]. Download (one fresh key set per download, PROTOCOL.md 2):
//! [`DownloadRequest`] (renter's commitment) → [`DownloadOffer`] (farmer's commitment and
//! the contract terms) → [`RenterReveal`] → [`FarmerReveal`] (farmer's reveal and the seal
//! transcript; E is then streamed) → [`Tx1Funded`] → [`Tx2Unsigned`] → [`Tx2RenterSig`] →
//! [`Tx2Statement`] (D, r, template) → [`CrsOffer`] (its hash; the bytes follow as a stream
//! unless the farmer has checked that CRS before) → [`ProofReady`] → [`Tx3RenterSig`] →
//! [`Claimed`].

use bitcoin::secp256k1::PublicKey;
use bitcoin::{Amount, OutPoint, Transaction, Txid};
use serde::{Deserialize, Serialize};

use crate::keys::{KeyCommitment, KeyReveal};
use crate::merkle::Hash32;
use crate::peer::PeerMessage;
use crate::receipt::StorageReceipt;
use crate::seal::SealTranscript;
use crate::zk::Statement;

/// Smallest TX1 refund margin a renter accepts: blocks between "now" and T1, which must
/// cover the whole download exchange and TX2's confirmation.
pub const MIN_REFUND_MARGIN: u32 = 12;
/// Largest TX1 refund margin a renter accepts (its money is locked until then).
pub const MAX_REFUND_MARGIN: u32 = 4_032;
/// Bounds on Δ, the TX2 refund delay (blocks after TX2 confirms), so TX3 has time to
/// confirm and the renter's money is not locked for ever.
pub const MIN_PAYOUT_DELAY: u16 = 6;
pub const MAX_PAYOUT_DELAY: u16 = 2_016;

/// Why proposed terms are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TermsError {
    #[error("the file is {got} bytes; this farmer stores at most {max}")]
    TooLarge { got: u64, max: u64 },
    #[error("the download price {offered} is below the farmer's {asked}")]
    PriceTooLow { offered: Amount, asked: Amount },
    #[error("the download price {0} is below the dust limit")]
    PriceDust(Amount),
    #[error("T1 is {margin} blocks ahead; it must be {MIN_REFUND_MARGIN}..={MAX_REFUND_MARGIN}")]
    RefundMargin { margin: i64 },
    #[error("Δ = {0} blocks; it must be {MIN_PAYOUT_DELAY}..={MAX_PAYOUT_DELAY}")]
    PayoutDelay(u16),
    #[error("the offer changes the price the renter asked for")]
    PriceChanged,
    #[error(
        "the farmer stores the file only until height {expiry}; at least {required} is required"
    )]
    StorageTooShort { expiry: u32, required: u32 },
}

/// Renter: a storage expiry (in `OpenAccepted`, then in the receipt) must lie at least
/// `min_blocks` above `tip`, or the farmer could sign a term that ends before the file is
/// ever downloaded or audited and then drop the data within its rights.
pub fn check_storage_expiry(expiry: u32, tip: u32, min_blocks: u32) -> Result<(), TermsError> {
    let required = tip.saturating_add(min_blocks);
    if expiry < required {
        return Err(TermsError::StorageTooShort { expiry, required });
    }
    Ok(())
}

/// Smallest price that keeps TX1, TX2 and TX3 outputs above dust after fees.
pub const MIN_DOWNLOAD_PRICE: Amount = Amount::from_sat(10_000);

/// Renter → farmer: store a file of `file_length` ciphertext bytes, downloads at `price`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenRequest {
    pub file_length: u64,
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub download_price: Amount,
}

impl PeerMessage for OpenRequest {
    const KIND: &'static str = "open_request";
}

impl OpenRequest {
    /// Farmer: the request fits this farmer's limits.
    pub fn check(&self, max_file_bytes: u64, asked: Amount) -> Result<(), TermsError> {
        if self.file_length > max_file_bytes {
            return Err(TermsError::TooLarge {
                got: self.file_length,
                max: max_file_bytes,
            });
        }
        if self.download_price < MIN_DOWNLOAD_PRICE {
            return Err(TermsError::PriceDust(self.download_price));
        }
        if self.download_price < asked {
            return Err(TermsError::PriceTooLow {
                offered: self.download_price,
                asked,
            });
        }
        Ok(())
    }
}

/// Farmer → renter: accepted; send exactly `file_length` bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAccepted {
    pub file_length: u64,
    /// Block height until which the farmer will store C (goes into the receipt).
    pub expiry_height: u32,
}

impl PeerMessage for OpenAccepted {
    const KIND: &'static str = "open_accepted";
}

/// Farmer → renter, inside the error that refuses a message for its sequence number: the
/// number the farmer expects next, bound to the SHA-256 of the refused envelope so it can
/// be neither forged (it is signed) nor replayed onto another message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResyncHint {
    pub next_seq: u64,
    #[serde(with = "hex::serde")]
    pub refused: [u8; 32],
}

impl PeerMessage for ResyncHint {
    const KIND: &'static str = "resync_hint";
}

impl ResyncHint {
    /// The renter's next sequence number after this hint answered its message `seq`, sent
    /// as the envelope hashing to `sent`; `None` unless the hint is for that envelope and
    /// says exactly `seq + 1`. That is the only gap the protocol leaves: each message is
    /// recorded with its reply, so a crash loses at most the one reply in flight.
    pub fn resync_to(&self, seq: u64, sent: &[u8; 32]) -> Option<u64> {
        let allowed = seq.checked_add(1)?;
        (self.refused == *sent && self.next_seq == allowed).then_some(allowed)
    }
}

/// Renter → farmer: the upload is complete; this is what the renter computed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadDone {
    pub root_c: Hash32,
    pub length: u64,
}

impl PeerMessage for UploadDone {
    const KIND: &'static str = "upload_done";
}

impl PeerMessage for StorageReceipt {
    const KIND: &'static str = "storage_receipt";
}

/// Renter → farmer: start download `download_id` with the renter's key commitment and TX2
/// key R2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadRequest {
    pub download_id: [u8; 32],
    pub renter_commitment: KeyCommitment,
    pub renter_tx2_key: PublicKey,
}

impl PeerMessage for DownloadRequest {
    const KIND: &'static str = "download_request";
}

/// Farmer → renter: its commitment, TX2 key F2 and the contract terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadOffer {
    pub download_id: [u8; 32],
    pub farmer_commitment: KeyCommitment,
    pub farmer_tx2_key: PublicKey,
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub price: Amount,
    /// T1: TX1's refund height.
    pub refund_height: u32,
    /// Δ: TX2's refund delay.
    pub payout_delay: u16,
    /// Confirmations TX1 needs before the farmer broadcasts TX2 (0: the farmer did not
    /// say). Informational: the renter shows it while it waits for TX2.
    #[serde(default)]
    pub min_tx1_confirmations: u32,
}

impl PeerMessage for DownloadOffer {
    const KIND: &'static str = "download_offer";
}

impl DownloadOffer {
    /// Renter: the offer keeps the agreed price and sane timelocks at chain height `tip`.
    pub fn check(&self, agreed_price: Amount, tip: u32) -> Result<(), TermsError> {
        if self.price != agreed_price {
            return Err(TermsError::PriceChanged);
        }
        let margin = i64::from(self.refund_height) - i64::from(tip);
        if margin < i64::from(MIN_REFUND_MARGIN) || margin > i64::from(MAX_REFUND_MARGIN) {
            return Err(TermsError::RefundMargin { margin });
        }
        if !(MIN_PAYOUT_DELAY..=MAX_PAYOUT_DELAY).contains(&self.payout_delay) {
            return Err(TermsError::PayoutDelay(self.payout_delay));
        }
        Ok(())
    }
}

/// Renter → farmer: the renter's reveal (pubkey R, nonce, proof of possession).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenterReveal {
    pub reveal: KeyReveal,
}

impl PeerMessage for RenterReveal {
    const KIND: &'static str = "renter_reveal";
}

/// Farmer → renter: the farmer's reveal and the signed seal transcript of E (E follows as
/// a stream the renter checks against root_E before paying).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FarmerReveal {
    pub reveal: KeyReveal,
    pub transcript: SealTranscript,
    /// The farmer's lease record over this download's TX1:0 (issue 17), present for the
    /// first TX1 of a contract without audits: the renter puts it at TX1 index 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<crate::market::lease::LeaseRecord>,
}

impl PeerMessage for FarmerReveal {
    const KIND: &'static str = "farmer_reveal";
}

/// Renter → farmer: TX1 is broadcast; its contract output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tx1Funded {
    pub outpoint: OutPoint,
    /// TX1 itself (its txid is `outpoint.txid`), so the farmer can check the lease record
    /// it asked for sits right after TX1:0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx1: Option<bitcoin::Transaction>,
}

impl PeerMessage for Tx1Funded {
    const KIND: &'static str = "tx1_funded";
}

/// Farmer → renter: TX2 unsigned, for the renter's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tx2Unsigned {
    pub tx: Transaction,
}

impl PeerMessage for Tx2Unsigned {
    const KIND: &'static str = "tx2_unsigned";
}

/// Renter → farmer: sig_R on TX2 (legacy sighash, ALL), DER.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tx2RenterSig {
    #[serde(with = "hex::serde")]
    pub signature: Vec<u8>,
}

impl PeerMessage for Tx2RenterSig {
    const KIND: &'static str = "tx2_renter_sig";
}

/// Farmer → renter: the statement about its signed TX2 (D, r and the template; s hidden).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tx2Statement {
    pub statement: Statement,
}

impl PeerMessage for Tx2Statement {
    const KIND: &'static str = "tx2_statement";
}

/// Renter → farmer: the CRS to prove under, by hash (the compressed bytes follow as a
/// stream unless the farmer already checked this CRS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrsOffer {
    #[serde(with = "hex::serde")]
    pub crs_hash: [u8; 32],
}

impl PeerMessage for CrsOffer {
    const KIND: &'static str = "crs_offer";
}

/// Farmer → renter: the compressed Groth16 proof, and where TX3 pays the farmer (TX3
/// spends the farmer's own money, TX2:0, so the renter only checks it is well formed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofReady {
    #[serde(with = "hex::serde")]
    pub proof: Vec<u8>,
    pub payout_script: bitcoin::ScriptBuf,
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub tx3_fee: Amount,
}

impl PeerMessage for ProofReady {
    const KIND: &'static str = "proof_ready";
}

/// Renter → farmer: the renter's TX3 signature (BIP143, ALL), DER, for txid = SHA256(D).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tx3RenterSig {
    #[serde(with = "hex::serde")]
    pub signature: Vec<u8>,
}

impl PeerMessage for Tx3RenterSig {
    const KIND: &'static str = "tx3_renter_sig";
}

/// Farmer → renter: TX2 and TX3 are broadcast, or, with `pending`, stored and held back
/// until TX1 is deep enough (PROTOCOL.md 3.3: the renter must not learn f while it can
/// still take TX1 back).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claimed {
    pub tx2: Txid,
    pub tx3: Txid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<ClaimPending>,
}

/// Why a [`Claimed`] TX2 is not broadcast yet, and until when it may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimPending {
    /// Confirmations TX1 had when the farmer answered.
    pub tx1_confirmations: u32,
    /// Confirmations TX1 needs before TX2 goes out.
    pub min_tx1_confirmations: u32,
    /// From this tip height on TX2 is never broadcast: the download is abandoned and the
    /// renter refunds TX1 at T1.
    pub abandon_height: u32,
}

impl PeerMessage for Claimed {
    const KIND: &'static str = "claimed";
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::peer::{open, sign, Expected};
    use bitcoin::secp256k1::{Keypair, SecretKey, SECP256K1};

    #[test]
    fn resync_hints_allow_one_step_for_the_refused_envelope_only() {
        let sent = [7u8; 32];
        let hint = |next_seq| ResyncHint {
            next_seq,
            refused: sent,
        };
        assert_eq!(hint(6).resync_to(5, &sent), Some(6));
        for next in [0, 4, 5, 7, 1_000, u64::MAX] {
            assert_eq!(hint(next).resync_to(5, &sent), None, "{next}");
        }
        assert_eq!(hint(6).resync_to(5, &[8; 32]), None, "another envelope");
        assert_eq!(hint(u64::MAX).resync_to(u64::MAX, &sent), None);
    }

    #[test]
    fn storage_expiry_needs_the_minimum_term() {
        assert!(check_storage_expiry(1_100, 100, 1_000).is_ok());
        assert_eq!(
            check_storage_expiry(101, 100, 1_000),
            Err(TermsError::StorageTooShort {
                expiry: 101,
                required: 1_100
            })
        );
        assert!(check_storage_expiry(u32::MAX, u32::MAX, 10).is_ok());
    }

    fn key(seed: u8) -> Keypair {
        Keypair::from_secret_key(SECP256K1, &SecretKey::from_slice(&[seed; 32]).unwrap())
    }

    fn offer(price: u64, refund_height: u32, payout_delay: u16) -> DownloadOffer {
        DownloadOffer {
            download_id: [1; 32],
            farmer_commitment: KeyCommitment([2; 32]),
            farmer_tx2_key: key(3).public_key(),
            price: Amount::from_sat(price),
            refund_height,
            payout_delay,
            min_tx1_confirmations: 1,
        }
    }

    #[test]
    fn farmer_checks_open_requests() {
        let ask = Amount::from_sat(50_000);
        let req = |len, price| OpenRequest {
            file_length: len,
            download_price: Amount::from_sat(price),
        };
        assert_eq!(req(1 << 20, 50_000).check(1 << 20, ask), Ok(()));
        assert!(matches!(
            req((1 << 20) + 1, 50_000).check(1 << 20, ask),
            Err(TermsError::TooLarge { .. })
        ));
        assert!(matches!(
            req(10, 40_000).check(1 << 20, ask),
            Err(TermsError::PriceTooLow { .. })
        ));
        assert!(matches!(
            req(10, 500).check(1 << 20, Amount::ZERO),
            Err(TermsError::PriceDust(_))
        ));
    }

    #[test]
    fn renter_checks_download_offers() {
        let price = Amount::from_sat(100_000);
        assert_eq!(offer(100_000, 1_144, 12).check(price, 1_000), Ok(()));
        assert_eq!(
            offer(100_001, 1_144, 12).check(price, 1_000),
            Err(TermsError::PriceChanged)
        );
        for t1 in [
            0,
            999,
            1_000,
            1_011,
            1_000 + MAX_REFUND_MARGIN + 1,
            u32::MAX,
        ] {
            assert!(
                matches!(
                    offer(100_000, t1, 12).check(price, 1_000),
                    Err(TermsError::RefundMargin { .. })
                ),
                "T1 {t1}"
            );
        }
        for delta in [0, MIN_PAYOUT_DELAY - 1, MAX_PAYOUT_DELAY + 1, u16::MAX] {
            assert_eq!(
                offer(100_000, 1_144, delta).check(price, 1_000),
                Err(TermsError::PayoutDelay(delta))
            );
        }
    }

    #[test]
    fn messages_round_trip_through_signed_envelopes() {
        let farmer = key(4);
        let id = [5; 32];
        let expected = Expected {
            contract_id: id,
            sender: Some(farmer.x_only_public_key().0),
        };
        let o = offer(100_000, 1_144, 12);
        let bytes = sign(&farmer, id, 7, &o).unwrap();
        assert_eq!(open::<DownloadOffer>(&bytes, &expected).unwrap().body, o);
        let c = Claimed {
            tx2: Txid::from_raw_hash(bitcoin::hashes::Hash::all_zeros()),
            tx3: Txid::from_raw_hash(bitcoin::hashes::Hash::all_zeros()),
            pending: Some(ClaimPending {
                tx1_confirmations: 0,
                min_tx1_confirmations: 3,
                abandon_height: 1_108,
            }),
        };
        let bytes = sign(&farmer, id, 8, &c).unwrap();
        assert_eq!(open::<Claimed>(&bytes, &expected).unwrap().body, c);
        // A message of one kind never opens as another.
        assert!(open::<DownloadOffer>(&bytes, &expected).is_err());
        let p = ProofReady {
            proof: vec![0xab; 128],
            payout_script: bitcoin::ScriptBuf::new(),
            tx3_fee: Amount::from_sat(1_000),
        };
        let bytes = sign(&farmer, id, 9, &p).unwrap();
        assert!(String::from_utf8(bytes.clone())
            .unwrap()
            .contains(&"ab".repeat(128)));
        assert_eq!(open::<ProofReady>(&bytes, &expected).unwrap().body, p);
    }
}
