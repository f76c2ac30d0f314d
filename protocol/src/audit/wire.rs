//! The auditor ↔ farmer requests (PROTOCOL.md 5), posted as JSON to the farmer's peer endpoint: the salt release of a confirmed candidate and an off-chain Merkle challenge.
//!
//! Both are unauthenticated on purpose: a release is self-checking (the farmer accepts it
//! only if HASH160(SHA256(tag ‖ salt ‖ its own segment)) is the confirmed candidate's lock),
//! and a Merkle challenge only asks for ciphertext segments and their paths, bounded by
//! [`super::merkle_audit`]'s limits. So a third-party auditor needs no key of its own.
//!
//! * `POST /dstore/v1/audit/reveal` with [`RevealRequest`] → [`RevealReply`]
//! * `POST /dstore/v1/audit/merkle` with [`MerkleRequest`] → `merkle_audit::MerkleAnswer`

use bitcoin::{BlockHash, Txid};
use serde::{Deserialize, Serialize};

use super::candidates::CandidateSecret;

/// Path of the salt release.
pub const REVEAL_PATH: &str = "/dstore/v1/audit/reveal";
/// Path of the Merkle challenge.
pub const MERKLE_PATH: &str = "/dstore/v1/audit/merkle";

/// Auditor → farmer: candidate j of audit i confirmed in `candidate_txid`; here is its
/// opening.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevealRequest {
    #[serde(with = "hex::serde")]
    pub contract_id: [u8; 32],
    pub audit: u32,
    pub candidate: u32,
    pub candidate_txid: Txid,
    pub secret: CandidateSecret,
}

/// Farmer → auditor: the claim it broadcast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevealReply {
    pub claim_txid: Txid,
}

/// Auditor → farmer: answer the challenge of `k` segments drawn from `block_hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MerkleRequest {
    #[serde(with = "hex::serde")]
    pub contract_id: [u8; 32],
    /// As bitcoind shows it; the challenge is drawn from its internal byte order
    /// (`BlockHash::to_byte_array`).
    pub block_hash: BlockHash,
    pub k: u32,
}
