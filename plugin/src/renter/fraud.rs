//! Fraud proofs (PROTOCOL.md 3.1): when the unsealed data does not match root_C after
//! payment, the renter stores public evidence against the farmer; `dstore-verify-fraud`
//! checks such a file.

use std::path::Path;

use bitcoin::secp256k1::SecretKey;
use bitcoin::Transaction;
use dstore_protocol::merkle::MerkleTree;
use dstore_protocol::seal::{
    build_fraud_proof, check_sealed_copy, find_bad_segment, verify_fraud_proof, FraudEvidence,
    FraudProof,
};
use serde_json::{json, Value};

use super::records::{DownloadPhase, RentedContract};
use super::{current, internal, Renter, RenterError};

/// Largest fraud-proof file `dstore-verify-fraud` reads.
const MAX_FRAUD_FILE: u64 = 16 << 20;

impl Renter {
    /// Finds a bad segment of E and stores the fraud proof; returns a message naming it.
    pub(super) async fn fraud_proof(
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
        crate::files::write_atomically(&path, &bytes).map_err(internal)?;
        let d = current(record);
        d.phase = DownloadPhase::Fraud;
        d.fraud_proof = Some(path.display().to_string());
        self.store(record)?;
        Ok(format!(
            "the farmer's data does not match root_C after payment; nothing was written; fraud proof saved to {}",
            path.display()
        ))
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
