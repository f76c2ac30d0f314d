//! Fraud proofs (PROTOCOL.md 3.1, 4b step 4): when the unsealed data does not match root_C
//! after payment, the renter stores public evidence against the farmer; `dstore-verify-fraud`
//! checks such a file. A mode-N proof is stored as `{"mode": "ln", "proof": …}`; a file
//! without `mode` is a mode-L proof.

use std::path::Path;

use bitcoin::secp256k1::SecretKey;
use bitcoin::Transaction;
use dstore_protocol::ln::{
    build_ln_fraud_proof, check_ln_sealed_copy, find_bad_ln_segment, verify_ln_fraud_proof,
    LnFraudEvidence, LnFraudProof,
};
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
            let c_tree = ciphertext_tree(&leaves, length)?;
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
        let bytes = serde_json::to_vec_pretty(&proof).map_err(internal)?;
        self.store_fraud_proof(record, &bytes)
    }

    /// Finds a bad segment of mode-N download E (unsealed with x) and stores the mode-N
    /// fraud proof; returns a message naming it.
    pub(super) async fn ln_fraud_proof(
        &self,
        record: &mut RentedContract,
    ) -> Result<String, RenterError> {
        let d = current(record).clone();
        let ln = super::ln_download::ln_state(&d)?.clone();
        let transcript = ln.transcript.ok_or_else(|| internal("no transcript"))?;
        let preimage = ln.preimage.ok_or_else(|| internal("no preimage"))?;
        let receipt = record.receipt.ok_or_else(|| internal("no receipt"))?;
        let (sealed, leaves) = (
            self.sealed_file(&d.download_id),
            self.leaves_path(&record.contract_id),
        );
        let (length, download_id) = (record.ciphertext_length, d.download_id);
        let proof: LnFraudProof = tokio::task::spawn_blocking(move || {
            let c_tree = ciphertext_tree(&leaves, length)?;
            let open = || std::fs::File::open(&sealed).map(std::io::BufReader::new);
            let (index, segment) =
                find_bad_ln_segment(&preimage, &download_id, open().map_err(internal)?, &c_tree)
                    .map_err(internal)?
                    .ok_or_else(|| internal("root_C differs but no segment does"))?;
            let e_tree =
                check_ln_sealed_copy(&transcript, open().map_err(internal)?).map_err(internal)?;
            build_ln_fraud_proof(LnFraudEvidence {
                receipt: &receipt,
                transcript: &transcript,
                sealed_tree: &e_tree,
                ciphertext_tree: &c_tree,
                segment_index: index,
                sealed_segment: segment,
                preimage,
            })
            .map_err(internal)
        })
        .await
        .map_err(internal)??;
        let file = json!({"mode": "ln", "proof": proof});
        let bytes = serde_json::to_vec_pretty(&file).map_err(internal)?;
        self.store_fraud_proof(record, &bytes)
    }

    /// Writes proof file `bytes` for the latest download and stores it as `fraud`.
    fn store_fraud_proof(
        &self,
        record: &mut RentedContract,
        bytes: &[u8],
    ) -> Result<String, RenterError> {
        let d = current(record).clone();
        let path = self
            .fraud_dir
            .join(format!("{}.json", hex::encode(d.download_id)));
        crate::files::write_atomically(&path, bytes).map_err(internal)?;
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

/// C's Merkle tree from the leaves kept at upload (`length` bytes of C).
fn ciphertext_tree(leaves: &Path, length: u64) -> Result<MerkleTree, RenterError> {
    let leaf_bytes = std::fs::read(leaves).map_err(internal)?;
    let leaves = leaf_bytes
        .chunks_exact(32)
        .map(|c| c.try_into().expect("32-byte chunks"))
        .collect();
    MerkleTree::from_leaves(leaves, length).map_err(internal)
}

/// Checks a fraud proof file (mode L, or mode N: `{"mode": "ln", "proof": …}`); returns
/// what it proves.
pub fn verify_fraud_file(path: &Path) -> Result<Value, RenterError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| RenterError::Invalid(format!("{}: {e}", path.display())))?;
    if meta.len() > MAX_FRAUD_FILE {
        return Err(RenterError::Invalid(
            "the file is too large for a fraud proof".into(),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| RenterError::Invalid(e.to_string()))?;
    let file: Value = serde_json::from_slice(&bytes)
        .map_err(|e| RenterError::Invalid(format!("not a fraud proof: {e}")))?;
    match file.get("mode").map(|m| m.as_str()) {
        None => {}
        Some(Some("ln")) => return verify_ln_fraud_value(file),
        Some(_) => {
            return Err(RenterError::Invalid(
                "not a fraud proof: unknown mode (expected \"ln\" or none)".into(),
            ))
        }
    }
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

/// Checks a mode-N fraud proof file's JSON.
fn verify_ln_fraud_value(mut file: Value) -> Result<Value, RenterError> {
    let proof: LnFraudProof = serde_json::from_value(file["proof"].take())
        .map_err(|e| RenterError::Invalid(format!("not a mode-N fraud proof: {e}")))?;
    verify_ln_fraud_proof(&proof)
        .map_err(|e| RenterError::Invalid(format!("the fraud proof does not hold: {e}")))?;
    Ok(json!({
        "valid": true,
        "mode": "ln",
        "farmer": proof.receipt.farmer.to_string(),
        "contract_id": hex::encode(proof.receipt.contract_id),
        "download_id": hex::encode(proof.transcript.download_id),
        "segment": proof.segment_index,
        "payment_hash": hex::encode(proof.transcript.payment_hash),
    }))
}
