//! Opening the coin toss's chosen half (PROTOCOL.md 5): the renter reveals (index, salt) of m of each audit's 2m candidates, the farmer checks them against its data, and the other m become the double-spend set.

use serde::{Deserialize, Serialize};

use super::book::KeptLock;
use super::candidates::{
    check_index, check_opening, Candidate, CandidateError, CandidateSecret, Lock,
};
use super::coin_toss::opened_positions;

/// Most candidates one audit may propose (2m).
pub const MAX_CANDIDATES_PER_AUDIT: usize = 128;

/// One revealed candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opening {
    pub audit: u32,
    pub position: u32,
    pub secret: CandidateSecret,
}

/// Why the farmer refuses the renter's openings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpeningError {
    #[error(
        "audit {0} must propose an even number (2 to 128) of candidates, like every other audit"
    )]
    BadCandidateCount(u32),
    #[error("the openings are not exactly the positions the coin toss chose")]
    WrongPositions,
    #[error("audit {audit}, candidate {position}: {source}")]
    Candidate {
        audit: u32,
        position: u32,
        source: CandidateError,
    },
}

/// Checks the shape of the proposed locks: every audit 2m candidates, 2 ≤ 2m ≤ 128.
pub fn check_shape(locks: &[Vec<Lock>]) -> Result<usize, OpeningError> {
    let per_audit = locks.first().map_or(0, Vec::len);
    for (audit, set) in locks.iter().enumerate() {
        let ok = set.len() == per_audit
            && per_audit >= 2
            && per_audit.is_multiple_of(2)
            && per_audit <= MAX_CANDIDATES_PER_AUDIT;
        if !ok {
            return Err(OpeningError::BadCandidateCount(audit as u32));
        }
    }
    Ok(per_audit)
}

/// The positions to open in each audit: half of each audit's candidates.
fn positions(seed: &[u8; 32], audit: usize, per_audit: usize) -> Vec<usize> {
    opened_positions(seed, audit as u32, per_audit, per_audit / 2)
}

/// The renter's openings for the toss outcome `seed`.
pub fn openings(candidates: &[Vec<Candidate>], seed: &[u8; 32]) -> Vec<Opening> {
    candidates
        .iter()
        .enumerate()
        .flat_map(|(audit, set)| {
            positions(seed, audit, set.len())
                .into_iter()
                .map(move |p| Opening {
                    audit: audit as u32,
                    position: p as u32,
                    secret: set[p].secret,
                })
        })
        .collect()
}

/// The double-spend sets: the candidates the toss did not open, in their original order.
pub fn kept<T: Copy>(proposed: &[Vec<T>], seed: &[u8; 32]) -> Vec<Vec<T>> {
    proposed
        .iter()
        .enumerate()
        .map(|(audit, set)| {
            let opened = positions(seed, audit, set.len());
            (0..set.len())
                .filter(|p| !opened.contains(p))
                .map(|p| set[p])
                .collect()
        })
        .collect()
}

/// The kept locks as the audit book holds them.
pub fn kept_locks(locks: &[Vec<Lock>], seed: &[u8; 32]) -> Vec<Vec<KeptLock>> {
    kept(locks, seed)
        .into_iter()
        .map(|set| set.into_iter().map(KeptLock).collect())
        .collect()
}

/// The farmer's check: the openings are exactly the chosen positions, every index is in
/// range, and every opened lock matches the segment the farmer stores (`read_segment`
/// returns segment `index`'s real bytes).
pub fn check_openings(
    locks: &[Vec<Lock>],
    seed: &[u8; 32],
    openings: &[Opening],
    segment_count: u64,
    mut read_segment: impl FnMut(u64) -> Vec<u8>,
) -> Result<(), OpeningError> {
    let per_audit = check_shape(locks)?;
    let expected: Vec<(u32, u32)> = (0..locks.len())
        .flat_map(|a| {
            positions(seed, a, per_audit)
                .into_iter()
                .map(move |p| (a as u32, p as u32))
        })
        .collect();
    let got: Vec<(u32, u32)> = openings.iter().map(|o| (o.audit, o.position)).collect();
    if expected != got {
        return Err(OpeningError::WrongPositions);
    }
    for opening in openings {
        let fail = |source| OpeningError::Candidate {
            audit: opening.audit,
            position: opening.position,
            source,
        };
        check_index(&opening.secret, segment_count).map_err(fail)?;
        let lock = &locks[opening.audit as usize][opening.position as usize];
        let segment = read_segment(opening.secret.segment_index);
        check_opening(lock, &opening.secret, &segment).map_err(fail)?;
    }
    Ok(())
}
