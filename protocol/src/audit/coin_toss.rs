//! The commit-reveal coin toss that picks which m of each audit's 2m candidates the renter must open (PROTOCOL.md 5, "bidirectional definition").
//!
//! Order of play, so that neither side can steer the choice:
//! 1. the renter sends every lock (N audits × 2m) — fixed from here on;
//! 2. the farmer sends `commit(nonce_F)`;
//! 3. the renter sends nonce_R in the clear;
//! 4. the farmer reveals nonce_F, which must match its commitment.
//!
//! The seed is tagged_hash("dstore/toss", contract id ‖ digest of the locks ‖ nonce_F ‖
//! nonce_R). The farmer chose nonce_F before seeing nonce_R, and the renter chose nonce_R
//! (and the locks) before seeing nonce_F, so neither can pick the outcome; the farmer can
//! only abort, before any money has moved.
//!
//! A renter with u unanswerable locks among an audit's 2m passes the opening only if all u
//! land in the unopened half: probability C(2m−u, m)/C(2m, m). That is 1/2 for u = 1 (and
//! the audits multiply: one bad lock in each of N audits survives with 2^−N), and
//! 1/C(2m, m) < 2^−m when half the locks are bad.

use serde::{Deserialize, Serialize};

use super::candidates::Lock;
use crate::hashing::{sha256, tagged_hash, uniform_below};

/// A commitment to a 32-byte toss nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TossCommitment(#[serde(with = "hex::serde")] pub [u8; 32]);

/// Why a toss step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TossError {
    #[error("the revealed nonce does not match its commitment")]
    CommitmentMismatch,
}

/// SHA256("dstore/toss-commit" ‖ nonce).
pub fn commit(nonce: &[u8; 32]) -> TossCommitment {
    TossCommitment(sha256(&[b"dstore/toss-commit", nonce]))
}

/// Checks a revealed nonce against its commitment.
pub fn check_reveal(commitment: &TossCommitment, nonce: &[u8; 32]) -> Result<(), TossError> {
    if commit(nonce) == *commitment {
        Ok(())
    } else {
        Err(TossError::CommitmentMismatch)
    }
}

/// A digest binding every lock of every audit, in order and grouped by audit.
pub fn locks_digest(locks: &[Vec<Lock>]) -> [u8; 32] {
    let mut bytes = Vec::with_capacity(8 + locks.iter().map(|a| 8 + 20 * a.len()).sum::<usize>());
    bytes.extend_from_slice(&(locks.len() as u64).to_be_bytes());
    for audit in locks {
        bytes.extend_from_slice(&(audit.len() as u64).to_be_bytes());
        audit.iter().for_each(|lock| bytes.extend_from_slice(lock));
    }
    sha256(&[b"dstore/toss-locks", &bytes])
}

/// The toss outcome.
pub fn seed(
    contract_id: &[u8; 32],
    locks_digest: &[u8; 32],
    farmer_nonce: &[u8; 32],
    renter_nonce: &[u8; 32],
) -> [u8; 32] {
    tagged_hash(
        "dstore/toss",
        &[contract_id, locks_digest, farmer_nonce, renter_nonce],
    )
}

/// Which `open` of audit `audit`'s `total` candidates the renter must open, ascending:
/// a Fisher–Yates shuffle driven by tagged hashes of the seed, whose first `open`
/// positions are taken.
pub fn opened_positions(seed: &[u8; 32], audit: u32, total: usize, open: usize) -> Vec<usize> {
    let mut positions: Vec<usize> = (0..total).collect();
    for i in 0..open.min(total) {
        let span = (total - i) as u64;
        let pick = i + uniform_below_for(seed, audit, i as u32, span) as usize;
        positions.swap(i, pick);
    }
    let mut opened = positions[..open.min(total)].to_vec();
    opened.sort_unstable();
    opened
}

fn uniform_below_for(seed: &[u8; 32], audit: u32, draw: u32, span: u64) -> u64 {
    let (audit, draw) = (audit.to_be_bytes(), draw.to_be_bytes());
    uniform_below("dstore/toss-draw", &[seed, &audit, &draw], span)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reveal_must_match_its_commitment() {
        let c = commit(&[1; 32]);
        check_reveal(&c, &[1; 32]).unwrap();
        assert_eq!(
            check_reveal(&c, &[2; 32]),
            Err(TossError::CommitmentMismatch)
        );
    }

    #[test]
    fn positions_are_distinct_sorted_and_depend_on_every_input() {
        let s = seed(&[1; 32], &[2; 32], &[3; 32], &[4; 32]);
        let p = opened_positions(&s, 0, 16, 8);
        assert_eq!(p.len(), 8);
        assert!(p.windows(2).all(|w| w[0] < w[1]));
        assert!(p.iter().all(|x| *x < 16));
        assert_ne!(p, opened_positions(&s, 1, 16, 8));
        let other = seed(&[1; 32], &[2; 32], &[3; 32], &[5; 32]);
        assert_ne!(p, opened_positions(&other, 0, 16, 8));
    }

    #[test]
    fn each_position_is_opened_about_half_the_time() {
        let mut counts = [0u32; 16];
        for n in 0u32..2000 {
            let s = seed(
                &[0; 32],
                &[0; 32],
                &n.to_be_bytes().repeat(8).try_into().unwrap(),
                &[0; 32],
            );
            for p in opened_positions(&s, 0, 16, 8) {
                counts[p] += 1;
            }
        }
        assert!(counts.iter().all(|c| (850..1150).contains(c)), "{counts:?}");
    }

    #[test]
    fn the_locks_digest_binds_order_and_grouping() {
        let a = vec![vec![[1u8; 20], [2u8; 20]]];
        let b = vec![vec![[2u8; 20], [1u8; 20]]];
        let c = vec![vec![[1u8; 20]], vec![[2u8; 20]]];
        assert_ne!(locks_digest(&a), locks_digest(&b));
        assert_ne!(locks_digest(&a), locks_digest(&c));
        let d = vec![vec![[1u8; 20]], vec![[2u8; 20], [3u8; 20]]];
        let e = vec![vec![[1u8; 20], [2u8; 20]], vec![[3u8; 20]]];
        assert_ne!(locks_digest(&d), locks_digest(&e));
    }
}
