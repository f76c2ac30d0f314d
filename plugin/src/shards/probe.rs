//! The renter's free check that a farmer still holds its shard: an off-chain Merkle audit
//! (PROTOCOL.md 5) of the shard contract. The challenge is drawn from the current tip's
//! block hash, so the farmer cannot prepare it; the answer (the challenged segments with
//! their inclusion proofs) is verified against the root and length of the contract as the
//! renter's own record holds them. A farmer that deleted its blob still answers `/info`,
//! but cannot answer this: a verified wrong answer or a refusal means the shard is lost;
//! a transport failure or a timeout only means the farmer is unreachable.

use std::str::FromStr;

use bitcoin::hashes::Hash;
use bitcoin::BlockHash;
use dstore_protocol::audit::merkle_audit::{verify_answer, MerkleAnswer};
use dstore_protocol::audit::wire::MerkleRequest;
use dstore_protocol::merkle::MerkleCommitment;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{FileError, Files};
use crate::wire::{PeerCallError, PeerClient};

/// Segments challenged per probe (each answer carries them with their proofs: about
/// 8 × 4 KiB plus the paths).
pub const PROBE_SEGMENTS: u32 = 8;

/// The chain tip a probe's challenge is drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tip {
    pub height: u32,
    pub hash: BlockHash,
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The answer verified against the contract's root.
    Passed,
    /// The farmer refused, or answered and the answer is wrong: it does not hold the shard.
    Lost(String),
    /// No answer (cannot connect, timed out, cut off): not evidence of a loss.
    Unreachable(String),
}

/// A probe as the shard record keeps it and `dstore-status` shows it (`last_probe`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeRecord {
    /// The height of the block whose hash drew the challenge.
    pub height: u32,
    pub ok: bool,
    /// The probe got no answer (the farmer was not reached).
    #[serde(default)]
    pub unreachable: bool,
    pub error: Option<String>,
}

impl ProbeRecord {
    pub fn new(tip: Tip, outcome: &ProbeOutcome) -> ProbeRecord {
        let (ok, unreachable, error) = match outcome {
            ProbeOutcome::Passed => (true, false, None),
            ProbeOutcome::Lost(e) => (false, false, Some(e.clone())),
            ProbeOutcome::Unreachable(e) => (false, true, Some(e.clone())),
        };
        ProbeRecord {
            height: tip.height,
            ok,
            unreachable,
            error,
        }
    }
}

/// Challenges the farmer behind `client` on contract `contract_id` (whose data is
/// committed by `commitment`) with [`PROBE_SEGMENTS`] segments drawn from `tip`, and checks
/// the answer. Uses the peer client's size caps and timeouts.
pub async fn probe(
    client: &PeerClient,
    contract_id: [u8; 32],
    commitment: MerkleCommitment,
    tip: Tip,
) -> ProbeOutcome {
    let request = MerkleRequest {
        contract_id,
        block_hash: tip.hash,
        k: PROBE_SEGMENTS,
    };
    match client.merkle_audit(&request).await {
        Ok(answer) => check(contract_id, commitment, tip, &answer),
        Err(e) => classify(e),
    }
}

/// An answer to the probe of `tip` on `contract_id`: passed only when it verifies against
/// `commitment`.
fn check(
    contract_id: [u8; 32],
    commitment: MerkleCommitment,
    tip: Tip,
    answer: &MerkleAnswer,
) -> ProbeOutcome {
    let verified = verify_answer(
        &commitment.root,
        commitment.length,
        &contract_id,
        &tip.hash.to_byte_array(),
        PROBE_SEGMENTS as usize,
        answer,
    );
    match verified {
        Ok(()) => ProbeOutcome::Passed,
        Err(e) => ProbeOutcome::Lost(format!("its Merkle proof is wrong: {e}")),
    }
}

/// A failed call: no answer is "unreachable", any answer that is not a proof is "lost".
fn classify(error: PeerCallError) -> ProbeOutcome {
    match error {
        PeerCallError::Unreachable { .. } | PeerCallError::Stalled(_) | PeerCallError::Io(_) => {
            ProbeOutcome::Unreachable(error.to_string())
        }
        PeerCallError::Refused(_)
        | PeerCallError::BadReply(_)
        | PeerCallError::Malformed(_)
        | PeerCallError::Oversized { .. } => ProbeOutcome::Lost(format!(
            "its farmer cannot prove it holds the shard: {error}"
        )),
    }
}

impl Files {
    /// The chain tip, read in one call (height and hash of the same block).
    pub(super) async fn tip(&self) -> Result<Tip, FileError> {
        let info = self
            .renter
            .bitcoind()
            .call("getblockchaininfo", json!([]))
            .await
            .map_err(|e| FileError::Internal(format!("cannot read the chain tip: {e}")))?;
        let height = info["blocks"].as_u64().and_then(|h| u32::try_from(h).ok());
        let hash = info["bestblockhash"]
            .as_str()
            .and_then(|h| BlockHash::from_str(h).ok());
        match (height, hash) {
            (Some(height), Some(hash)) => Ok(Tip { height, hash }),
            _ => Err(FileError::Internal(format!(
                "getblockchaininfo gave no tip: {info}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dstore_protocol::audit::merkle_audit::AnswerBuilder;
    use dstore_protocol::merkle::MerkleTree;

    fn tip(byte: u8) -> Tip {
        Tip {
            height: 7,
            hash: BlockHash::from_byte_array([byte; 32]),
        }
    }

    fn answer(data: &[u8], contract_id: [u8; 32], tip: Tip) -> MerkleAnswer {
        let block = tip.hash.to_byte_array();
        let k = PROBE_SEGMENTS as usize;
        let mut builder =
            AnswerBuilder::for_challenge(&contract_id, &block, data.len() as u64, k).unwrap();
        builder.update(data);
        builder.finish(contract_id, block).unwrap()
    }

    #[test]
    fn only_an_answer_from_the_stored_data_for_this_tip_passes() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let commitment = MerkleTree::from_data(&data).commitment();
        let id = [4; 32];
        let honest = answer(&data, id, tip(1));
        assert_eq!(check(id, commitment, tip(1), &honest), ProbeOutcome::Passed);
        // Prepared for another block, or for another contract: refused.
        assert!(matches!(
            check(id, commitment, tip(2), &honest),
            ProbeOutcome::Lost(_)
        ));
        assert!(matches!(
            check([5; 32], commitment, tip(1), &honest),
            ProbeOutcome::Lost(_)
        ));
        // Built from other bytes (a farmer that kept something else).
        let mut other = data.clone();
        other.iter_mut().for_each(|b| *b ^= 1);
        let forged = answer(&other, id, tip(1));
        assert!(matches!(
            check(id, commitment, tip(1), &forged),
            ProbeOutcome::Lost(_)
        ));
        // Fewer segments than challenged.
        let mut short = honest.clone();
        short.items.pop();
        assert!(matches!(
            check(id, commitment, tip(1), &short),
            ProbeOutcome::Lost(_)
        ));
    }

    #[test]
    fn a_refusal_is_a_loss_and_no_answer_is_only_unreachable() {
        let refused = PeerCallError::Refused(crate::wire::ErrorBody {
            code: -1,
            message: "no blob stored".into(),
            next_seq: None,
            resync: None,
        });
        assert!(matches!(classify(refused), ProbeOutcome::Lost(_)));
        assert!(matches!(
            classify(PeerCallError::Malformed("HTTP 500".into())),
            ProbeOutcome::Lost(_)
        ));
        let gone = PeerCallError::Unreachable {
            url: "http://127.0.0.1:1".into(),
            reason: "connection refused".into(),
        };
        assert!(matches!(classify(gone), ProbeOutcome::Unreachable(_)));
        let stalled = PeerCallError::Stalled(std::time::Duration::from_secs(30));
        let record = ProbeRecord::new(tip(1), &classify(stalled));
        assert!(!record.ok && record.unreachable && record.error.is_some());
        let passed = ProbeRecord::new(tip(1), &ProbeOutcome::Passed);
        assert_eq!((passed.height, passed.ok, passed.error), (7, true, None));
    }
}
