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
    use crate::contract::tests::{parties, tx1_outpoint};
    use crate::keys::joint_secret_key;
    use crate::merkle::{MerkleTree, SEGMENT_SIZE};
    use crate::nonce_reuse::farmer_sign_tx2;
    use crate::receipt::StorageReceipt;
    use crate::seal::{
        build_fraud_proof, check_sealed_copy, find_bad_segment, seal, FraudEvidence, SealContext,
    };
    use bitcoin::secp256k1::{Keypair, SecretKey, SECP256K1};
    use bitcoin::Amount;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// A genuine fraud proof: the farmer sealed data with segment 1 corrupted.
    fn fraud_proof(seed: u64) -> (FraudProof, XOnlyPublicKey) {
        let p = parties(seed);
        let mut rng = StdRng::seed_from_u64(seed);
        let identity = Keypair::from_secret_key(SECP256K1, &SecretKey::new(&mut rng));
        let c: Vec<u8> = (0..2 * SEGMENT_SIZE + 10)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let c_tree = MerkleTree::from_data(&c);
        let receipt =
            StorageReceipt::sign(&identity, p.contract.contract_id, c_tree.commitment(), 900);
        let context = SealContext {
            contract_id: p.contract.contract_id,
            download_id: [0x11; 32],
            renter_key: p.contract.renter_key,
            farmer_key: p.contract.farmer_key,
        };
        let unsigned = p
            .contract
            .unsigned_tx2(tx1_outpoint(), Amount::from_sat(1_000))
            .unwrap();
        let sig_r = p.contract.renter_sign_tx2(&unsigned, &p.r).unwrap();
        let tx2 = farmer_sign_tx2(&mut rng, &p.contract, &unsigned, &p.f, &sig_r)
            .unwrap()
            .tx;
        let mut lost = c.clone();
        lost[SEGMENT_SIZE + 3] ^= 0x55;
        let mut e = Vec::new();
        let transcript = seal(&mut rng, &context, &identity, &lost[..], &mut e).unwrap();
        let e_tree = check_sealed_copy(&transcript, &e[..]).unwrap();
        let j = joint_secret_key(&p.r, &p.f).unwrap();
        let (i, _) = find_bad_segment(&j, &transcript.ephemeral, &e[..], &c_tree)
            .unwrap()
            .unwrap();
        let start = i as usize * SEGMENT_SIZE;
        let proof = build_fraud_proof(FraudEvidence {
            receipt: &receipt,
            transcript: &transcript,
            sealed_tree: &e_tree,
            ciphertext_tree: &c_tree,
            segment_index: i,
            sealed_segment: e[start..(start + SEGMENT_SIZE).min(e.len())].to_vec(),
            renter_secret: p.r,
            tx2,
            tx2_input: 0,
        })
        .unwrap();
        (proof, identity.x_only_public_key().0)
    }

    #[test]
    fn genuine_evidence_is_accepted_with_a_canonical_id() {
        let (proof, farmer) = fraud_proof(90);
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
        let (proof, _) = fraud_proof(91);
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
