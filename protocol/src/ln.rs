//! Mode N (PROTOCOL.md 4b): sealing under a Lightning preimage, the farmer's signed transcript, the renter's invoice check and the mode-N fraud proof.
//!
//! **Sealing.** The farmer draws x (32 random bytes), sets H = SHA256(x) and streams
//! E = C ⊕ ChaCha20(SHA256("dstore/seal-ln" ‖ x ‖ download id), nonce 0). It signs (BIP340,
//! identity key) an [`LnTranscript`] over `tagged_hash("dstore/ln-transcript", contract id ‖
//! download id ‖ H ‖ root_E ‖ length ‖ price_msat ‖ farmer)` (integers big-endian) and
//! sends it with E and a BOLT11 invoice whose payment hash is H. The keystream, the Merkle
//! builder and the segment scan are the ones of mode L ([`crate::seal`]); only the key differs.
//!
//! **Renter.** [`verify_ln_transcript`] binds the transcript to the storage receipt and the
//! agreed price, [`check_ln_sealed_copy`] checks E against root_E and [`check_invoice`]
//! checks the invoice against the transcript, all before paying. A settled payment hands x
//! to the renter's node: [`check_preimage`], then [`unseal_ln`] and check root_C.
//!
//! **Fraud proof.** As in mode L, but the unsealing secret is x itself: the checker needs
//! SHA256(x) = H for the signed H. Soundness: an honest farmer's E_i unseals to C_i, whose
//! leaf is leaf i of the farmer-signed root_C.

use std::io::{Read, Write};
use std::str::FromStr;

use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{schnorr, Keypair, Message, PublicKey, XOnlyPublicKey, SECP256K1};
use lightning_invoice::{Bolt11Invoice, Currency};
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::hashing::{sha256, tagged_hash};
use crate::merkle::{
    leaf_hash, verify_leaf, verify_proof, Hash32, MerkleBuilder, MerkleCommitment, MerkleError,
    MerkleProof, MerkleTree, MerkleWriter,
};
use crate::receipt::{ReceiptError, StorageReceipt};
use crate::seal::{
    find_bad_segment_with_key, sealed_tree_matching, unseal_segment_with_key, xor_stream, SealError,
};

/// Why mode-N sealing, checking or unsealing failed.
#[derive(Debug, thiserror::Error)]
pub enum LnError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the data exceeds ChaCha20's keystream")]
    KeystreamExhausted,
    #[error("the transcript is signed by a different farmer")]
    WrongFarmer,
    #[error("the transcript signature does not verify")]
    BadSignature,
    #[error("the transcript is for another contract or download")]
    ContextMismatch,
    #[error(transparent)]
    Receipt(#[from] ReceiptError),
    #[error("transcript length {transcript} differs from {expected}")]
    LengthMismatch { transcript: u64, expected: u64 },
    #[error("transcript price {transcript} msat differs from the agreed {expected} msat")]
    PriceMismatch { transcript: u64, expected: u64 },
    #[error("the sealed copy does not match root_E")]
    RootMismatch,
    #[error("SHA256(preimage) is not the transcript's payment hash")]
    WrongPreimage,
    #[error(transparent)]
    Merkle(#[from] MerkleError),
}

impl From<SealError> for LnError {
    fn from(e: SealError) -> Self {
        match e {
            SealError::Io(e) => LnError::Io(e),
            SealError::RootMismatch => LnError::RootMismatch,
            SealError::Merkle(e) => LnError::Merkle(e),
            SealError::Receipt(e) => LnError::Receipt(e),
            SealError::WrongFarmer => LnError::WrongFarmer,
            SealError::BadSignature => LnError::BadSignature,
            SealError::ContextMismatch => LnError::ContextMismatch,
            SealError::LengthMismatch {
                transcript,
                expected,
            } => LnError::LengthMismatch {
                transcript,
                expected,
            },
            // The mode-N key is a hash, never a point: only the keystream limit remains.
            SealError::KeystreamExhausted | SealError::Key(_) | SealError::BadPoint => {
                LnError::KeystreamExhausted
            }
        }
    }
}

/// seal key = SHA256("dstore/seal-ln" ‖ x ‖ download id).
pub fn ln_seal_key(preimage: &[u8; 32], download_id: &[u8; 32]) -> [u8; 32] {
    sha256(&[b"dstore/seal-ln", preimage, download_id])
}

/// H = SHA256(x), the Lightning payment hash.
pub fn payment_hash(preimage: &[u8; 32]) -> [u8; 32] {
    sha256(&[preimage])
}

/// The farmer-signed description of one mode-N sealed copy E.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LnTranscript {
    pub contract_id: [u8; 32],
    pub download_id: [u8; 32],
    /// H = SHA256(x).
    pub payment_hash: [u8; 32],
    pub root_e: Hash32,
    pub length: u64,
    pub price_msat: u64,
    /// The farmer's identity key.
    pub farmer: XOnlyPublicKey,
    pub signature: schnorr::Signature,
}

/// What an [`LnTranscript`] signs: every field but the signature.
struct LnTranscriptFields<'a> {
    contract_id: &'a [u8; 32],
    download_id: &'a [u8; 32],
    payment_hash: &'a [u8; 32],
    sealed: MerkleCommitment,
    price_msat: u64,
    farmer: &'a XOnlyPublicKey,
}

impl LnTranscriptFields<'_> {
    fn message(&self) -> Message {
        Message::from_digest(tagged_hash(
            "dstore/ln-transcript",
            &[
                self.contract_id,
                self.download_id,
                self.payment_hash,
                &self.sealed.root,
                &self.sealed.length.to_be_bytes(),
                &self.price_msat.to_be_bytes(),
                &self.farmer.serialize(),
            ],
        ))
    }
}

impl LnTranscript {
    /// root_E and length.
    pub fn sealed_commitment(&self) -> MerkleCommitment {
        MerkleCommitment {
            root: self.root_e,
            length: self.length,
        }
    }

    fn fields(&self) -> LnTranscriptFields<'_> {
        LnTranscriptFields {
            contract_id: &self.contract_id,
            download_id: &self.download_id,
            payment_hash: &self.payment_hash,
            sealed: self.sealed_commitment(),
            price_msat: self.price_msat,
            farmer: &self.farmer,
        }
    }

    /// Checks the signature by the transcript's own farmer key.
    pub fn verify_signature(&self) -> Result<(), LnError> {
        SECP256K1
            .verify_schnorr(&self.signature, &self.fields().message(), &self.farmer)
            .map_err(|_| LnError::BadSignature)
    }
}

/// Farmer: draws x, seals `ciphertext` into `sealed` (streaming) and signs the transcript.
/// Returns (x, transcript); x is the secret the invoice sells.
pub fn seal_ln(
    rng: &mut (impl RngCore + CryptoRng),
    contract_id: &[u8; 32],
    download_id: &[u8; 32],
    price_msat: u64,
    identity: &Keypair,
    ciphertext: impl Read,
    sealed: impl Write,
) -> Result<([u8; 32], LnTranscript), LnError> {
    let mut preimage = [0u8; 32];
    rng.fill_bytes(&mut preimage);
    let mut tee = MerkleWriter::new(sealed, MerkleBuilder::new());
    xor_stream(&ln_seal_key(&preimage, download_id), ciphertext, &mut tee)?;
    let commitment = tee.into_parts().1.finish();
    let farmer = identity.x_only_public_key().0;
    let hash = payment_hash(&preimage);
    let fields = LnTranscriptFields {
        contract_id,
        download_id,
        payment_hash: &hash,
        sealed: commitment,
        price_msat,
        farmer: &farmer,
    };
    let signature = SECP256K1.sign_schnorr_no_aux_rand(&fields.message(), identity);
    let transcript = LnTranscript {
        contract_id: *contract_id,
        download_id: *download_id,
        payment_hash: hash,
        root_e: commitment.root,
        length: commitment.length,
        price_msat,
        farmer,
        signature,
    };
    Ok((preimage, transcript))
}

/// Renter: checks a transcript is by `farmer`, for this contract and download, as long as
/// the receipt's data and for the agreed price.
pub fn verify_ln_transcript(
    transcript: &LnTranscript,
    farmer: &XOnlyPublicKey,
    contract_id: &[u8; 32],
    download_id: &[u8; 32],
    receipt: &StorageReceipt,
    price_msat: u64,
) -> Result<(), LnError> {
    if transcript.farmer != *farmer {
        return Err(LnError::WrongFarmer);
    }
    transcript.verify_signature()?;
    let same_context = transcript.contract_id == *contract_id
        && transcript.download_id == *download_id
        && receipt.contract_id == *contract_id;
    if !same_context {
        return Err(LnError::ContextMismatch);
    }
    receipt.verify(farmer)?;
    if transcript.length != receipt.length {
        return Err(LnError::LengthMismatch {
            transcript: transcript.length,
            expected: receipt.length,
        });
    }
    if transcript.price_msat != price_msat {
        return Err(LnError::PriceMismatch {
            transcript: transcript.price_msat,
            expected: price_msat,
        });
    }
    Ok(())
}

/// Renter: checks received E against root_E and returns E's tree (for a fraud proof).
pub fn check_ln_sealed_copy(
    transcript: &LnTranscript,
    sealed: impl Read,
) -> Result<MerkleTree, LnError> {
    Ok(sealed_tree_matching(
        &transcript.sealed_commitment(),
        sealed,
    )?)
}

/// Renter: checks the preimage its node returned against the transcript's H.
pub fn check_preimage(transcript: &LnTranscript, preimage: &[u8; 32]) -> Result<(), LnError> {
    if payment_hash(preimage) != transcript.payment_hash {
        return Err(LnError::WrongPreimage);
    }
    Ok(())
}

/// Renter: unseals E into C with x; returns the byte count.
pub fn unseal_ln(
    preimage: &[u8; 32],
    download_id: &[u8; 32],
    sealed: impl Read,
    out: impl Write,
) -> Result<u64, LnError> {
    Ok(xor_stream(
        &ln_seal_key(preimage, download_id),
        sealed,
        out,
    )?)
}

/// Unseals one segment (its real bytes) at index `index`.
pub fn unseal_ln_segment(
    preimage: &[u8; 32],
    download_id: &[u8; 32],
    index: u64,
    segment: &[u8],
) -> Result<Vec<u8>, LnError> {
    Ok(unseal_segment_with_key(
        &ln_seal_key(preimage, download_id),
        index,
        segment,
    )?)
}

/// Renter: the first segment index (with its sealed bytes) whose unsealed leaf differs from
/// the C tree, or None if E unseals to C.
pub fn find_bad_ln_segment(
    preimage: &[u8; 32],
    download_id: &[u8; 32],
    sealed: impl Read,
    c_tree: &MerkleTree,
) -> Result<Option<(u64, Vec<u8>)>, LnError> {
    Ok(find_bad_segment_with_key(
        &ln_seal_key(preimage, download_id),
        sealed,
        c_tree,
    )?)
}

/// Why a BOLT11 invoice was refused before paying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvoiceError {
    #[error("not a valid BOLT11 invoice: {0}")]
    Parse(String),
    #[error("the invoice is for {found}, expected {expected}")]
    WrongNetwork { found: String, expected: String },
    #[error("the invoice's payment hash is not the transcript's")]
    WrongPaymentHash,
    #[error("the invoice has no amount")]
    NoAmount,
    #[error("the invoice asks {invoice} msat, the transcript says {expected} msat")]
    WrongAmount { invoice: u64, expected: u64 },
    #[error("the invoice is payable to {found}, expected {expected}")]
    WrongPayee { found: String, expected: String },
    #[error("the invoice expired at {expires_at} (now {now})")]
    Expired { expires_at: u64, now: u64 },
}

/// An invoice that passed [`check_invoice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckedInvoice {
    pub payment_hash: [u8; 32],
    pub amount_msat: u64,
    pub payee: PublicKey,
    pub expires_at_unix: u64,
}

/// BOLT11's currency for a network (testnet3 and testnet4 share `lntb`).
fn invoice_currency(network: bitcoin::Network) -> Currency {
    match network {
        bitcoin::Network::Bitcoin => Currency::Bitcoin,
        bitcoin::Network::Regtest => Currency::Regtest,
        bitcoin::Network::Signet => Currency::Signet,
        _ => Currency::BitcoinTestnet,
    }
}

/// Renter, before paying: the invoice parses (its signature included), is for `network`,
/// has the transcript's payment hash and exactly its price, is payable to `payee` when one
/// is given, and has not expired at `now_unix` (an invoice expiring exactly now is expired).
pub fn check_invoice(
    bolt11: &str,
    transcript: &LnTranscript,
    network: bitcoin::Network,
    payee: Option<&PublicKey>,
    now_unix: u64,
) -> Result<CheckedInvoice, InvoiceError> {
    let invoice =
        Bolt11Invoice::from_str(bolt11.trim()).map_err(|e| InvoiceError::Parse(e.to_string()))?;
    let expected_currency = invoice_currency(network);
    if invoice.currency() != expected_currency {
        return Err(InvoiceError::WrongNetwork {
            found: invoice.currency().to_string(),
            expected: expected_currency.to_string(),
        });
    }
    let hash = invoice.payment_hash().to_byte_array();
    if hash != transcript.payment_hash {
        return Err(InvoiceError::WrongPaymentHash);
    }
    let amount_msat = invoice
        .amount_milli_satoshis()
        .ok_or(InvoiceError::NoAmount)?;
    if amount_msat != transcript.price_msat {
        return Err(InvoiceError::WrongAmount {
            invoice: amount_msat,
            expected: transcript.price_msat,
        });
    }
    let invoice_payee = invoice.get_payee_pub_key();
    if let Some(expected) = payee.filter(|expected| **expected != invoice_payee) {
        return Err(InvoiceError::WrongPayee {
            found: invoice_payee.to_string(),
            expected: expected.to_string(),
        });
    }
    let expires_at_unix = invoice.expires_at().map_or(u64::MAX, |d| d.as_secs());
    if expires_at_unix <= now_unix {
        return Err(InvoiceError::Expired {
            expires_at: expires_at_unix,
            now: now_unix,
        });
    }
    Ok(CheckedInvoice {
        payment_hash: hash,
        amount_msat,
        payee: invoice_payee,
        expires_at_unix,
    })
}

/// Why a mode-N fraud proof was not accepted (or could not be built).
#[derive(Debug, thiserror::Error)]
pub enum LnFraudError {
    #[error("storage receipt: {0}")]
    Receipt(#[from] ReceiptError),
    #[error("mode-N transcript: {0}")]
    Transcript(#[from] LnError),
    #[error("receipt and transcript are by different farmers, contracts or lengths")]
    Unrelated,
    #[error("SHA256(preimage) is not the signed payment hash")]
    WrongPreimage,
    #[error("sealed segment is not in root_E: {0}")]
    SealedSegment(MerkleError),
    #[error("expected leaf is not in root_C: {0}")]
    ExpectedLeaf(MerkleError),
    #[error("the segment unseals correctly: no fraud")]
    NoFraud,
}

/// Public evidence that a farmer sold, over Lightning, a sealed copy that does not unseal to C.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LnFraudProof {
    pub receipt: StorageReceipt,
    pub transcript: LnTranscript,
    /// x, revealed by the settled payment.
    #[serde(with = "hex::serde")]
    pub preimage: [u8; 32],
    pub segment_index: u64,
    /// Segment i of E (real bytes, unpadded).
    #[serde(with = "hex::serde")]
    pub sealed_segment: Vec<u8>,
    pub sealed_proof: MerkleProof,
    /// Leaf i of C's tree.
    pub expected_leaf: Hash32,
    pub expected_proof: MerkleProof,
}

/// Everything a renter holds after a paid download failed to unseal, to build an [`LnFraudProof`].
pub struct LnFraudEvidence<'a> {
    pub receipt: &'a StorageReceipt,
    pub transcript: &'a LnTranscript,
    pub sealed_tree: &'a MerkleTree,
    pub ciphertext_tree: &'a MerkleTree,
    pub segment_index: u64,
    pub sealed_segment: Vec<u8>,
    pub preimage: [u8; 32],
}

/// Builds a mode-N fraud proof and checks it; an honest farmer's data gives `NoFraud`.
pub fn build_ln_fraud_proof(evidence: LnFraudEvidence<'_>) -> Result<LnFraudProof, LnFraudError> {
    let i = evidence.segment_index;
    let proof = LnFraudProof {
        receipt: *evidence.receipt,
        transcript: *evidence.transcript,
        preimage: evidence.preimage,
        segment_index: i,
        sealed_segment: evidence.sealed_segment,
        sealed_proof: evidence
            .sealed_tree
            .proof(i)
            .map_err(LnFraudError::SealedSegment)?,
        expected_leaf: evidence
            .ciphertext_tree
            .leaf(i)
            .map_err(LnFraudError::ExpectedLeaf)?,
        expected_proof: evidence
            .ciphertext_tree
            .proof(i)
            .map_err(LnFraudError::ExpectedLeaf)?,
    };
    verify_ln_fraud_proof(&proof)?;
    Ok(proof)
}

/// Checks a mode-N fraud proof without trusting the renter; Ok means the farmer is proven
/// to have sold a sealed copy that does not unseal to the data it acknowledged.
pub fn verify_ln_fraud_proof(proof: &LnFraudProof) -> Result<(), LnFraudError> {
    let (receipt, transcript, i) = (&proof.receipt, &proof.transcript, proof.segment_index);
    receipt.verify_signature()?;
    transcript.verify_signature()?;
    let related = receipt.farmer == transcript.farmer
        && receipt.contract_id == transcript.contract_id
        && receipt.length == transcript.length;
    if !related {
        return Err(LnFraudError::Unrelated);
    }
    if check_preimage(transcript, &proof.preimage).is_err() {
        return Err(LnFraudError::WrongPreimage);
    }
    verify_proof(
        &transcript.root_e,
        transcript.length,
        i,
        &proof.sealed_segment,
        &proof.sealed_proof,
    )
    .map_err(LnFraudError::SealedSegment)?;
    verify_leaf(
        &receipt.root_c,
        receipt.length,
        i,
        &proof.expected_leaf,
        &proof.expected_proof,
    )
    .map_err(LnFraudError::ExpectedLeaf)?;
    let unsealed = unseal_ln_segment(
        &proof.preimage,
        &transcript.download_id,
        i,
        &proof.sealed_segment,
    )?;
    if leaf_hash(&unsealed).map_err(LnFraudError::SealedSegment)? == proof.expected_leaf {
        return Err(LnFraudError::NoFraud);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::SEGMENT_SIZE;
    use bitcoin::hashes::sha256;
    use bitcoin::secp256k1::SecretKey;
    use lightning_invoice::{InvoiceBuilder, PaymentSecret};
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::time::Duration;

    const PRICE_MSAT: u64 = 1_234_000;
    const NOW: u64 = 1_700_000_000;

    struct Setup {
        identity: Keypair,
        contract_id: [u8; 32],
        download_id: [u8; 32],
        c: Vec<u8>,
        c_tree: MerkleTree,
        receipt: StorageReceipt,
    }

    fn setup(seed: u64, len: usize) -> Setup {
        let mut rng = StdRng::seed_from_u64(seed);
        let identity = Keypair::from_secret_key(SECP256K1, &SecretKey::new(&mut rng));
        let c: Vec<u8> = (0..len).map(|i| (i * 31 % 256) as u8).collect();
        let c_tree = MerkleTree::from_data(&c);
        let contract_id = [seed as u8; 32];
        let receipt = StorageReceipt::sign(&identity, contract_id, c_tree.commitment(), 1000);
        Setup {
            identity,
            contract_id,
            download_id: [0xdd; 32],
            c,
            c_tree,
            receipt,
        }
    }

    fn sealed(s: &Setup, data: &[u8], seed: u64) -> ([u8; 32], LnTranscript, Vec<u8>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut e = Vec::new();
        let (x, t) = seal_ln(
            &mut rng,
            &s.contract_id,
            &s.download_id,
            PRICE_MSAT,
            &s.identity,
            data,
            &mut e,
        )
        .unwrap();
        (x, t, e)
    }

    fn farmer(s: &Setup) -> XOnlyPublicKey {
        s.identity.x_only_public_key().0
    }

    #[test]
    fn ln_seal_unseal_round_trip() {
        for len in [0, 1, 4096, 10_000, 70_000] {
            let s = setup(70, len);
            let (x, t, e) = sealed(&s, &s.c, 1);
            assert_eq!(e.len(), len);
            assert_eq!(t.payment_hash, payment_hash(&x));
            verify_ln_transcript(
                &t,
                &farmer(&s),
                &s.contract_id,
                &s.download_id,
                &s.receipt,
                PRICE_MSAT,
            )
            .unwrap();
            check_ln_sealed_copy(&t, &e[..]).unwrap();
            check_preimage(&t, &x).unwrap();
            let mut c = Vec::new();
            assert_eq!(
                unseal_ln(&x, &s.download_id, &e[..], &mut c).unwrap(),
                len as u64
            );
            assert_eq!(c, s.c);
            assert_eq!(
                find_bad_ln_segment(&x, &s.download_id, &e[..], &s.c_tree).unwrap(),
                None
            );
            if len > 5000 {
                assert_eq!(
                    unseal_ln_segment(&x, &s.download_id, 1, &e[4096..8192]).unwrap(),
                    s.c[4096..8192]
                );
            }
        }
    }

    #[test]
    fn ln_each_download_draws_a_fresh_secret() {
        let s = setup(71, 9000);
        let (x1, t1, e1) = sealed(&s, &s.c, 2);
        let (x2, t2, e2) = sealed(&s, &s.c, 3);
        assert_ne!(x1, x2);
        assert_ne!(t1.payment_hash, t2.payment_hash);
        assert_ne!(e1, e2);
        // The same x under another download id gives another keystream.
        assert_ne!(ln_seal_key(&x1, &[1; 32]), ln_seal_key(&x1, &[2; 32]));
        let mut wrong = Vec::new();
        unseal_ln(&x2, &s.download_id, &e1[..], &mut wrong).unwrap();
        assert_ne!(wrong, s.c);
    }

    #[test]
    fn ln_tampered_transcript_field_breaks_the_signature() {
        let s = setup(72, 5000);
        let (_, t, _) = sealed(&s, &s.c, 4);
        t.verify_signature().unwrap();
        let tampered: Vec<LnTranscript> = vec![
            LnTranscript {
                contract_id: [9; 32],
                ..t
            },
            LnTranscript {
                download_id: [9; 32],
                ..t
            },
            LnTranscript {
                payment_hash: [9; 32],
                ..t
            },
            LnTranscript {
                root_e: [9; 32],
                ..t
            },
            LnTranscript {
                length: t.length + 1,
                ..t
            },
            LnTranscript {
                price_msat: t.price_msat - 1,
                ..t
            },
        ];
        for forged in tampered {
            assert!(matches!(
                forged.verify_signature(),
                Err(LnError::BadSignature)
            ));
        }
        let other = Keypair::from_secret_key(SECP256K1, &SecretKey::from_slice(&[7; 32]).unwrap());
        let mut foreign = t;
        foreign.farmer = other.x_only_public_key().0;
        assert!(matches!(
            foreign.verify_signature(),
            Err(LnError::BadSignature)
        ));
    }

    #[test]
    fn ln_transcript_must_match_receipt_context_and_price() {
        let s = setup(73, 100);
        let (_, t, _) = sealed(&s, &s.c, 5);
        let f = farmer(&s);
        let check = |t: &LnTranscript, download: &[u8; 32], price| {
            verify_ln_transcript(t, &f, &s.contract_id, download, &s.receipt, price)
        };
        assert!(matches!(
            check(&t, &[1; 32], PRICE_MSAT),
            Err(LnError::ContextMismatch)
        ));
        assert!(matches!(
            check(&t, &s.download_id, PRICE_MSAT + 1),
            Err(LnError::PriceMismatch { .. })
        ));
        let (_, short, _) = sealed(&s, &s.c[..50], 6);
        assert!(matches!(
            check(&short, &s.download_id, PRICE_MSAT),
            Err(LnError::LengthMismatch { .. })
        ));
        let other = Keypair::from_secret_key(SECP256K1, &SecretKey::from_slice(&[7; 32]).unwrap());
        assert!(matches!(
            verify_ln_transcript(
                &t,
                &other.x_only_public_key().0,
                &s.contract_id,
                &s.download_id,
                &s.receipt,
                PRICE_MSAT
            ),
            Err(LnError::WrongFarmer)
        ));
    }

    #[test]
    fn ln_tampered_sealed_copy_and_wrong_preimage_are_refused() {
        let s = setup(74, 9000);
        let (x, t, mut e) = sealed(&s, &s.c, 7);
        e[5000] ^= 1;
        assert!(matches!(
            check_ln_sealed_copy(&t, &e[..]),
            Err(LnError::RootMismatch)
        ));
        let mut other = x;
        other[0] ^= 1;
        assert!(matches!(
            check_preimage(&t, &other),
            Err(LnError::WrongPreimage)
        ));
    }

    fn evidence<'a>(
        s: &'a Setup,
        t: &'a LnTranscript,
        e_tree: &'a MerkleTree,
        e: &[u8],
        i: u64,
        x: [u8; 32],
    ) -> LnFraudEvidence<'a> {
        let start = i as usize * SEGMENT_SIZE;
        LnFraudEvidence {
            receipt: &s.receipt,
            transcript: t,
            sealed_tree: e_tree,
            ciphertext_tree: &s.c_tree,
            segment_index: i,
            sealed_segment: e[start..(start + SEGMENT_SIZE).min(e.len())].to_vec(),
            preimage: x,
        }
    }

    #[test]
    fn ln_fraud_proof_for_wrong_data_verifies() {
        let s = setup(75, 3 * SEGMENT_SIZE + 100);
        let mut lost = s.c.clone();
        lost[2 * SEGMENT_SIZE + 7] ^= 0xff;
        let (x, t, e) = sealed(&s, &lost, 8);
        let e_tree = check_ln_sealed_copy(&t, &e[..]).unwrap();
        let (i, _) = find_bad_ln_segment(&x, &s.download_id, &e[..], &s.c_tree)
            .unwrap()
            .unwrap();
        assert_eq!(i, 2);
        let proof = build_ln_fraud_proof(evidence(&s, &t, &e_tree, &e, i, x)).unwrap();
        verify_ln_fraud_proof(&proof).unwrap();
        let json = serde_json::to_string(&proof).unwrap();
        verify_ln_fraud_proof(&serde_json::from_str(&json).unwrap()).unwrap();
    }

    #[test]
    fn ln_no_fraud_proof_against_an_honest_farmer() {
        let s = setup(76, 3 * SEGMENT_SIZE + 100);
        let (x, t, e) = sealed(&s, &s.c, 9);
        let e_tree = check_ln_sealed_copy(&t, &e[..]).unwrap();
        for i in 0..4 {
            assert!(matches!(
                build_ln_fraud_proof(evidence(&s, &t, &e_tree, &e, i, x)),
                Err(LnFraudError::NoFraud)
            ));
        }
    }

    #[test]
    fn ln_fabricated_fraud_proofs_are_rejected() {
        let s = setup(77, 3 * SEGMENT_SIZE);
        let mut lost = s.c.clone();
        lost[0] ^= 1;
        let (x, t, e) = sealed(&s, &lost, 10);
        let e_tree = check_ln_sealed_copy(&t, &e[..]).unwrap();
        let genuine = build_ln_fraud_proof(evidence(&s, &t, &e_tree, &e, 0, x)).unwrap();

        // A preimage whose hash is not the signed H.
        let mut p = genuine.clone();
        p.preimage[5] ^= 1;
        assert!(matches!(
            verify_ln_fraud_proof(&p),
            Err(LnFraudError::WrongPreimage)
        ));

        // A flipped byte of E: not under root_E.
        let mut p = genuine.clone();
        p.sealed_segment[3] ^= 1;
        assert!(matches!(
            verify_ln_fraud_proof(&p),
            Err(LnFraudError::SealedSegment(_))
        ));

        // Wrong expected leaf.
        let mut p = genuine.clone();
        p.expected_leaf = [0; 32];
        assert!(matches!(
            verify_ln_fraud_proof(&p),
            Err(LnFraudError::ExpectedLeaf(_))
        ));

        // Receipt of another farmer.
        let mut p = genuine.clone();
        let other = Keypair::from_secret_key(SECP256K1, &SecretKey::from_slice(&[7; 32]).unwrap());
        p.receipt = StorageReceipt::sign(&other, s.contract_id, s.c_tree.commitment(), 1000);
        assert!(matches!(
            verify_ln_fraud_proof(&p),
            Err(LnFraudError::Unrelated)
        ));

        // Forged transcript field.
        let mut p = genuine;
        p.transcript.price_msat += 1;
        assert!(matches!(
            verify_ln_fraud_proof(&p),
            Err(LnFraudError::Transcript(LnError::BadSignature))
        ));
    }

    /// A real signed BOLT11 invoice by `node_key`.
    fn invoice(
        node_key: &SecretKey,
        currency: Currency,
        hash: [u8; 32],
        amount_msat: Option<u64>,
        created: u64,
        expiry_secs: u64,
    ) -> String {
        let builder = InvoiceBuilder::new(currency)
            .description("dstore download".into())
            .payment_hash(sha256::Hash::from_byte_array(hash))
            .payment_secret(PaymentSecret([42; 32]))
            .duration_since_epoch(Duration::from_secs(created))
            .expiry_time(Duration::from_secs(expiry_secs))
            .min_final_cltv_expiry_delta(144);
        let builder = match amount_msat {
            Some(msat) => builder.amount_milli_satoshis(msat),
            None => builder,
        };
        builder
            .build_signed(|digest| SECP256K1.sign_ecdsa_recoverable(digest, node_key))
            .unwrap()
            .to_string()
    }

    #[test]
    fn ln_invoice_matching_the_transcript_is_accepted() {
        let s = setup(78, 100);
        let (_, t, _) = sealed(&s, &s.c, 11);
        let node = SecretKey::from_slice(&[3; 32]).unwrap();
        let node_id = node.public_key(SECP256K1);
        let bolt11 = invoice(
            &node,
            Currency::Regtest,
            t.payment_hash,
            Some(PRICE_MSAT),
            NOW - 10,
            3600,
        );
        let checked =
            check_invoice(&bolt11, &t, bitcoin::Network::Regtest, Some(&node_id), NOW).unwrap();
        assert_eq!(
            checked,
            CheckedInvoice {
                payment_hash: t.payment_hash,
                amount_msat: PRICE_MSAT,
                payee: node_id,
                expires_at_unix: NOW - 10 + 3600,
            }
        );
        // Without an expected payee any node may be paid.
        check_invoice(&bolt11, &t, bitcoin::Network::Regtest, None, NOW).unwrap();
    }

    #[test]
    fn ln_every_invoice_mismatch_is_refused() {
        let s = setup(79, 100);
        let (_, t, _) = sealed(&s, &s.c, 12);
        let node = SecretKey::from_slice(&[3; 32]).unwrap();
        let node_id = node.public_key(SECP256K1);
        let regtest = bitcoin::Network::Regtest;
        let check = |bolt11: &str, network| check_invoice(bolt11, &t, network, Some(&node_id), NOW);
        let good = |currency| {
            invoice(
                &node,
                currency,
                t.payment_hash,
                Some(PRICE_MSAT),
                NOW - 10,
                3600,
            )
        };

        let other_hash = invoice(
            &node,
            Currency::Regtest,
            [8; 32],
            Some(PRICE_MSAT),
            NOW,
            3600,
        );
        assert_eq!(
            check(&other_hash, regtest),
            Err(InvoiceError::WrongPaymentHash)
        );
        for amount in [PRICE_MSAT - 1, PRICE_MSAT + 1, 2 * PRICE_MSAT] {
            let bolt11 = invoice(
                &node,
                Currency::Regtest,
                t.payment_hash,
                Some(amount),
                NOW,
                3600,
            );
            assert!(matches!(
                check(&bolt11, regtest),
                Err(InvoiceError::WrongAmount { .. })
            ));
        }
        let no_amount = invoice(&node, Currency::Regtest, t.payment_hash, None, NOW, 3600);
        assert_eq!(check(&no_amount, regtest), Err(InvoiceError::NoAmount));
        assert!(matches!(
            check(&good(Currency::Bitcoin), regtest),
            Err(InvoiceError::WrongNetwork { .. })
        ));
        assert!(matches!(
            check(&good(Currency::Regtest), bitcoin::Network::Signet),
            Err(InvoiceError::WrongNetwork { .. })
        ));
        check(&good(Currency::BitcoinTestnet), bitcoin::Network::Testnet4).unwrap();
        let stranger = SecretKey::from_slice(&[4; 32]).unwrap();
        let by_stranger = invoice(
            &stranger,
            Currency::Regtest,
            t.payment_hash,
            Some(PRICE_MSAT),
            NOW,
            3600,
        );
        assert!(matches!(
            check(&by_stranger, regtest),
            Err(InvoiceError::WrongPayee { .. })
        ));
        let expired = invoice(
            &node,
            Currency::Regtest,
            t.payment_hash,
            Some(PRICE_MSAT),
            NOW - 3600,
            3600,
        );
        assert_eq!(
            check(&expired, regtest),
            Err(InvoiceError::Expired {
                expires_at: NOW,
                now: NOW
            })
        );
        let valid = good(Currency::Regtest);
        for garbage in [
            "",
            "lnbcrt1garbage",
            "not an invoice",
            &valid[..valid.len() - 3],
        ] {
            assert!(matches!(
                check(garbage, regtest),
                Err(InvoiceError::Parse(_))
            ));
        }
        // A flipped character breaks the checksum or the signature.
        let mut flipped = valid.clone().into_bytes();
        let mid = flipped.len() / 2;
        flipped[mid] = if flipped[mid] == b'q' { b'p' } else { b'q' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert!(check(&flipped, regtest).is_err());
    }
}
