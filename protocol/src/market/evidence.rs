//! Fraud evidence for the bulletin boards: a `seal::FraudProof` as JSON, checked before it is
//! stored or counted. A farmer with one verified proof is burned.
//!
//! The evidence id is the SHA-256 of the proof's canonical JSON ([`evidence_bytes`]), so the
//! same proof re-encoded (whitespace, field order) has one id and is stored once.

use bitcoin::secp256k1::XOnlyPublicKey;
use serde::{Deserialize, Serialize};

use super::MarketError;
use crate::hashing::sha256;
use crate::seal::{verify_fraud_proof, FraudProof};

/// Largest evidence body accepted (1 MiB).
pub const MAX_EVIDENCE_BYTES: usize = 1 << 20;

/// A fraud proof that verified, with what a board lists about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedEvidence {
    /// SHA-256 of [`evidence_bytes`] of the proof.
    pub id: [u8; 32],
    /// The proven-fraudulent farmer (the receipt's signer).
    pub farmer: XOnlyPublicKey,
    pub contract_id: [u8; 32],
    pub proof: FraudProof,
}

/// The canonical JSON of a proof: what boards store and serve, and what the id hashes.
pub fn evidence_bytes(proof: &FraudProof) -> Vec<u8> {
    serde_json::to_vec(proof).expect("a fraud proof always serialises")
}

/// The evidence id of a proof.
pub fn evidence_id(proof: &FraudProof) -> [u8; 32] {
    sha256(&[&evidence_bytes(proof)])
}

/// Size cap, JSON parse and `seal::verify_fraud_proof`.
pub fn check_evidence(bytes: &[u8]) -> Result<VerifiedEvidence, MarketError> {
    if bytes.len() > MAX_EVIDENCE_BYTES {
        return Err(MarketError::TooLarge {
            what: "evidence",
            size: bytes.len(),
            max: MAX_EVIDENCE_BYTES,
        });
    }
    let proof: FraudProof = serde_json::from_slice(bytes)
        .map_err(|e| MarketError::Unparseable(format!("fraud proof: {e}")))?;
    check_proof(proof)
}

/// `seal::verify_fraud_proof` on an already parsed proof.
pub fn check_proof(proof: FraudProof) -> Result<VerifiedEvidence, MarketError> {
    verify_fraud_proof(&proof).map_err(|e| MarketError::NotFraud(e.to_string()))?;
    Ok(VerifiedEvidence {
        id: evidence_id(&proof),
        farmer: proof.receipt.farmer,
        contract_id: proof.receipt.contract_id,
        proof,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::tests::sample_fraud_proof;

    #[test]
    fn genuine_evidence_is_accepted_with_a_canonical_id() {
        let (proof, farmer) = sample_fraud_proof(90);
        let compact = serde_json::to_vec(&proof).unwrap();
        let verified = check_evidence(&compact).unwrap();
        assert_eq!(verified.farmer, farmer);
        assert_eq!(verified.contract_id, proof.receipt.contract_id);
        assert_eq!(verified.id, sha256(&[&compact]));
        assert_eq!(verified.proof, proof);
        // The same proof re-encoded has the same id.
        let pretty = serde_json::to_vec_pretty(&proof).unwrap();
        assert_ne!(pretty, compact);
        assert_eq!(check_evidence(&pretty).unwrap().id, verified.id);
    }

    #[test]
    fn fake_evidence_is_refused() {
        let (proof, _) = sample_fraud_proof(91);
        let mut no_fraud = proof.clone();
        no_fraud.expected_leaf = [0; 32];
        let bytes = serde_json::to_vec(&no_fraud).unwrap();
        assert!(matches!(
            check_evidence(&bytes),
            Err(MarketError::NotFraud(_))
        ));
        let mut forged_receipt = proof;
        forged_receipt.receipt.expiry_height += 1;
        let bytes = serde_json::to_vec(&forged_receipt).unwrap();
        assert!(matches!(
            check_evidence(&bytes),
            Err(MarketError::NotFraud(_))
        ));
        for garbage in [&b""[..], b"{}", b"null", b"\xff\xfe", b"{\"receipt\":1}"] {
            assert!(matches!(
                check_evidence(garbage),
                Err(MarketError::Unparseable(_))
            ));
        }
    }

    #[test]
    fn oversized_evidence_is_refused_before_parsing() {
        let huge = vec![b' '; MAX_EVIDENCE_BYTES + 1];
        assert_eq!(
            check_evidence(&huge),
            Err(MarketError::TooLarge {
                what: "evidence",
                size: MAX_EVIDENCE_BYTES + 1,
                max: MAX_EVIDENCE_BYTES
            })
        );
    }
}
