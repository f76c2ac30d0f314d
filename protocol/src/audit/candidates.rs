//! Audit candidates (PROTOCOL.md 5, [fix] hidden salted targets): x = SHA256("dstore/audit" ‖ salt ‖ segment), lock H = HASH160(x).
//!
//! The seed hash-locked raw file pieces, which lets a farmer hash every piece it holds, see
//! which ones the locks point at, and delete the rest. Here each lock hides a segment index
//! and a 32-byte salt chosen by the renter, so a lock says nothing about which segment it
//! asks for until the auditor releases (index, salt) for the one candidate that confirmed.
//! The preimage x is 32 bytes: standard as a witness element and miniscript-sane.
//!
//! [`unsalted_preimage`] is the seed's construction (no salt) and exists only so the tests
//! can run the prediction attack against it.

use bitcoin::hashes::{hash160, Hash};
use rand::{CryptoRng, Rng, RngCore};
use serde::{Deserialize, Serialize};

use crate::hashing::sha256;
use crate::merkle::SEGMENT_SIZE;

/// Domain tag of every audit preimage.
pub const AUDIT_TAG: &[u8] = b"dstore/audit";

/// A HASH160 lock on a candidate's output.
pub type Lock = [u8; 20];

/// What the renter (auditor) keeps secret about one candidate until it is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidateSecret {
    /// The segment of C this candidate challenges.
    pub segment_index: u64,
    /// The renter's 32-byte salt.
    #[serde(with = "hex::serde")]
    pub salt: [u8; 32],
}

/// One candidate: its secret opening and its public lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub secret: CandidateSecret,
    #[serde(with = "hex::serde")]
    pub lock: Lock,
}

/// Why a candidate's opening does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CandidateError {
    #[error("segment {index} is out of range for {count} segments")]
    SegmentOutOfRange { index: u64, count: u64 },
    #[error("segment has {0} bytes, more than a segment holds")]
    OversizedSegment(usize),
    #[error("the opening of segment {0} does not match its lock")]
    LockMismatch(u64),
}

/// x = SHA256("dstore/audit" ‖ salt ‖ segment), the segment zero-padded to 4096 bytes.
pub fn preimage(salt: &[u8; 32], segment: &[u8]) -> [u8; 32] {
    let padding = [0u8; SEGMENT_SIZE];
    let pad = SEGMENT_SIZE.saturating_sub(segment.len());
    sha256(&[AUDIT_TAG, salt, segment, &padding[..pad]])
}

/// The seed's unsalted lock preimage, SHA256("dstore/audit" ‖ segment): predictable from
/// the data alone. Only for demonstrating the attack the salt stops.
pub fn unsalted_preimage(segment: &[u8]) -> [u8; 32] {
    let padding = [0u8; SEGMENT_SIZE];
    let pad = SEGMENT_SIZE.saturating_sub(segment.len());
    sha256(&[AUDIT_TAG, segment, &padding[..pad]])
}

/// H = HASH160(x).
pub fn lock(preimage: &[u8; 32]) -> Lock {
    hash160::Hash::hash(preimage).to_byte_array()
}

/// Draws `count` fresh (segment index, salt) pairs over data of `segment_count` segments.
/// Indices are uniform and independent; salts are 32 random bytes each.
pub fn choose_secrets<R: RngCore + CryptoRng>(
    rng: &mut R,
    segment_count: u64,
    count: usize,
) -> Vec<CandidateSecret> {
    if segment_count == 0 {
        return Vec::new();
    }
    (0..count)
        .map(|_| {
            let mut salt = [0u8; 32];
            rng.fill_bytes(&mut salt);
            CandidateSecret {
                segment_index: rng.gen_range(0..segment_count),
                salt,
            }
        })
        .collect()
}

/// The candidate of `secret` over `segment` (its real bytes, at most 4096).
pub fn candidate(secret: CandidateSecret, segment: &[u8]) -> Candidate {
    Candidate {
        secret,
        lock: lock(&preimage(&secret.salt, segment)),
    }
}

/// The farmer's check of an opened candidate against the segment it stores; on success it
/// returns x, the preimage that claims the candidate's output.
pub fn check_opening(
    lock_expected: &Lock,
    secret: &CandidateSecret,
    segment: &[u8],
) -> Result<[u8; 32], CandidateError> {
    if segment.len() > SEGMENT_SIZE {
        return Err(CandidateError::OversizedSegment(segment.len()));
    }
    let x = preimage(&secret.salt, segment);
    if lock(&x) == *lock_expected {
        Ok(x)
    } else {
        Err(CandidateError::LockMismatch(secret.segment_index))
    }
}

/// Rejects an index past the data.
pub fn check_index(secret: &CandidateSecret, segment_count: u64) -> Result<(), CandidateError> {
    if secret.segment_index < segment_count {
        Ok(())
    } else {
        Err(CandidateError::SegmentOutOfRange {
            index: secret.segment_index,
            count: segment_count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn an_opening_checks_against_the_right_segment_only() {
        let mut rng = StdRng::seed_from_u64(1);
        let secret = choose_secrets(&mut rng, 10, 1)[0];
        let segment = vec![7u8; 100];
        let c = candidate(secret, &segment);
        let x = check_opening(&c.lock, &secret, &segment).unwrap();
        assert_eq!(lock(&x), c.lock);
        let mut other = segment.clone();
        other[3] ^= 1;
        assert_eq!(
            check_opening(&c.lock, &secret, &other),
            Err(CandidateError::LockMismatch(secret.segment_index))
        );
    }

    #[test]
    fn short_segments_are_zero_padded() {
        let salt = [9u8; 32];
        let mut padded = vec![5u8; 10];
        padded.resize(SEGMENT_SIZE, 0);
        assert_eq!(preimage(&salt, &[5u8; 10]), preimage(&salt, &padded));
    }

    #[test]
    fn salted_locks_differ_for_the_same_segment_but_unsalted_ones_do_not() {
        let mut rng = StdRng::seed_from_u64(2);
        let secrets = choose_secrets(&mut rng, 1, 2);
        let segment = [1u8; SEGMENT_SIZE];
        assert_ne!(
            candidate(secrets[0], &segment).lock,
            candidate(secrets[1], &segment).lock
        );
        assert_eq!(unsalted_preimage(&segment), unsalted_preimage(&segment));
    }

    #[test]
    fn indices_stay_in_range_and_empty_data_has_no_candidates() {
        let mut rng = StdRng::seed_from_u64(3);
        assert!(choose_secrets(&mut rng, 0, 5).is_empty());
        for s in choose_secrets(&mut rng, 3, 100) {
            check_index(&s, 3).unwrap();
        }
        let far = CandidateSecret {
            segment_index: 3,
            salt: [0; 32],
        };
        assert!(check_index(&far, 3).is_err());
    }
}
