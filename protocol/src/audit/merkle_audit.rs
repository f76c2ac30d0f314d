//! Off-chain DStore Merkle audits (PROTOCOL.md 5): challenges from a block hash, the farmer's answer, its verification.
//!
//! Between paid audits the auditor challenges `k` segment indices derived from a block
//! hash and the contract id ([`challenge`]); the farmer answers with each challenged
//! segment and its inclusion proof against the contract's committed root
//! ([`MerkleAnswer`]); the auditor checks it with [`verify_answer`].
//!
//! The farmer builds the answer with an [`AnswerBuilder`] in one streaming pass over its
//! data (or over its stored leaf hashes), in memory that grows with `k · log n` and not
//! with the file: the pass forms every full aligned power-of-two subtree exactly once, as
//! [`MerkleBuilder`](crate::merkle::MerkleBuilder) does, and keeps those that are
//! siblings on a challenged segment's RFC 6962 path. The other siblings are right-edge
//! subtrees `[a, n)`, folded from the final stack at the end. The paths equal
//! [`MerkleTree::proof`](crate::merkle::MerkleTree::proof)'s exactly.

use std::collections::BTreeSet;
use std::io::{self, Write};

use serde::{Deserialize, Serialize};

use crate::hashing::tagged_hash;
use crate::merkle::{
    leaf_hash, node_hash, segment_count, segment_len, verify_proof, Hash32, MerkleError,
    MerkleProof, SEGMENT_SIZE,
};

/// Tag of the tagged hash that derives challenged indices.
pub const CHALLENGE_TAG: &str = "dstore/merkle-audit";

/// The most segments one challenge may ask for; [`challenge`] clamps `k` to it and
/// [`verify_answer`] refuses a larger `k`.
pub const MAX_CHALLENGE: usize = 256;

/// The longest inclusion path an answer may carry: a tree of at most 2^64 leaves.
pub const MAX_PATH_LEN: usize = 64;

/// Upper bound on one answer item's compact JSON: the segment in hex, a maximal path
/// (each hash a JSON array of up to 32 three-digit numbers), field names and punctuation.
const MAX_ITEM_JSON_BYTES: usize = 2 * SEGMENT_SIZE + MAX_PATH_LEN * (32 * 4 + 2) + 256;

/// The largest compact-JSON answer [`parse_answer`] accepts; every honest answer to a
/// challenge of at most [`MAX_CHALLENGE`] segments fits.
pub const MAX_ANSWER_JSON_BYTES: usize = MAX_CHALLENGE * MAX_ITEM_JSON_BYTES + 1024;

/// Why a Merkle audit challenge could not be answered, or an answer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleAuditError {
    #[error("a challenge of {k} segments exceeds the limit of {max}")]
    ChallengeTooLarge { k: usize, max: usize },
    #[error("the answer is for another contract")]
    WrongContract,
    #[error("the answer is for another block")]
    WrongBlock,
    #[error("the answer carries {got} items, at most {max} were challenged")]
    TooManyItems { got: usize, max: usize },
    #[error("the answer covers segments {got:?}, the challenge was {expected:?}")]
    WrongIndices { expected: Vec<u64>, got: Vec<u64> },
    #[error("the proof of segment {index} has {len} hashes, more than {max}")]
    PathTooLong { index: u64, len: usize, max: usize },
    #[error("segment {index} has {got} bytes, expected {expected}")]
    WrongSegmentLength {
        index: u64,
        got: usize,
        expected: usize,
    },
    #[error("the proof of segment {index} does not verify: {source}")]
    Proof { index: u64, source: MerkleError },
    #[error("the answer is {bytes} bytes, more than the limit of {max}")]
    AnswerTooLarge { bytes: usize, max: usize },
    #[error("the answer is not valid JSON: {0}")]
    Json(String),
    #[error("challenged indices must be ascending, distinct and below {count}: {indices:?}")]
    InvalidIndices { indices: Vec<u64>, count: u64 },
    #[error("the builder was fed {got} bytes, the data has {expected}")]
    LengthMismatch { expected: u64, got: u64 },
    #[error("the builder was fed {got} leaves, the data has {expected}")]
    LeafCountMismatch { expected: u64, got: u64 },
    #[error("the builder was fed both bytes and leaf hashes")]
    MixedInput,
    #[error("segment {index} is not challenged")]
    NotChallenged { index: u64 },
    #[error("segment {index} was not supplied")]
    MissingSegment { index: u64 },
    #[error("the supplied segment {index} does not hash to its leaf")]
    SegmentMismatch { index: u64 },
    #[error("the proof of segment {index} could not be completed")]
    IncompletePath { index: u64 },
}

/// One challenged segment with its inclusion proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerItem {
    pub index: u64,
    /// The segment's real bytes ([`segment_len`]: the last one is not padded).
    #[serde(with = "hex::serde")]
    pub segment: Vec<u8>,
    pub proof: MerkleProof,
}

/// The farmer's answer to the challenge of `block_hash` on contract `contract_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerkleAnswer {
    #[serde(with = "hex::serde")]
    pub contract_id: [u8; 32],
    #[serde(with = "hex::serde")]
    pub block_hash: [u8; 32],
    /// One item per challenged index, ascending.
    pub items: Vec<AnswerItem>,
}

/// The segment indices challenged by `block_hash` on contract `contract_id`: `k` distinct
/// indices in ascending order (all of them if the data has at most `k` segments; none
/// for empty data). `k` is clamped to [`MAX_CHALLENGE`].
///
/// Candidate `c` (c = 0, 1, …) is the first 8 bytes, big-endian, of
/// `tagged_hash("dstore/merkle-audit", contract_id ‖ block_hash ‖ c as u64 big-endian)`;
/// values at or above the largest multiple of `segment_count` are rejected (no modulo
/// bias), the rest are reduced modulo `segment_count`, and repeats are skipped.
pub fn challenge(
    contract_id: &[u8; 32],
    block_hash: &[u8; 32],
    segment_count: u64,
    k: usize,
) -> Vec<u64> {
    let k = k.min(MAX_CHALLENGE);
    if segment_count <= k as u64 {
        return (0..segment_count).collect();
    }
    let mut chosen = BTreeSet::new();
    let mut counter = 0u64;
    while chosen.len() < k {
        if let Some(index) = unbiased_index(contract_id, block_hash, counter, segment_count) {
            chosen.insert(index);
        }
        counter += 1;
    }
    chosen.into_iter().collect()
}

/// Candidate `counter` of [`challenge`], or `None` if it falls in the biased tail.
fn unbiased_index(
    contract_id: &[u8; 32],
    block_hash: &[u8; 32],
    counter: u64,
    segment_count: u64,
) -> Option<u64> {
    let digest = tagged_hash(
        CHALLENGE_TAG,
        &[contract_id, block_hash, &counter.to_be_bytes()],
    );
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let value = u64::from_be_bytes(first);
    let unbiased_limit = u64::MAX - (u64::MAX % segment_count);
    (value < unbiased_limit).then_some(value % segment_count)
}

/// Checks that `answer` answers the challenge of `k` segments that `block_hash` sets on
/// contract `contract_id`, whose data has `length` bytes committed by `root`: same
/// contract and block, exactly the challenged indices in order, each segment of its true
/// length, each proof leading to `root`.
pub fn verify_answer(
    root: &Hash32,
    length: u64,
    contract_id: &[u8; 32],
    block_hash: &[u8; 32],
    k: usize,
    answer: &MerkleAnswer,
) -> Result<(), MerkleAuditError> {
    if k > MAX_CHALLENGE {
        return Err(MerkleAuditError::ChallengeTooLarge {
            k,
            max: MAX_CHALLENGE,
        });
    }
    if answer.contract_id != *contract_id {
        return Err(MerkleAuditError::WrongContract);
    }
    if answer.block_hash != *block_hash {
        return Err(MerkleAuditError::WrongBlock);
    }
    let expected = challenge(contract_id, block_hash, segment_count(length), k);
    check_indices(&expected, &answer.items)?;
    answer
        .items
        .iter()
        .try_for_each(|item| verify_item(root, length, item))
}

/// The answer's items must be exactly the challenged indices, in order.
fn check_indices(expected: &[u64], items: &[AnswerItem]) -> Result<(), MerkleAuditError> {
    if items.len() > expected.len() {
        return Err(MerkleAuditError::TooManyItems {
            got: items.len(),
            max: expected.len(),
        });
    }
    let got: Vec<u64> = items.iter().map(|item| item.index).collect();
    if got != expected {
        return Err(MerkleAuditError::WrongIndices {
            expected: expected.to_vec(),
            got,
        });
    }
    Ok(())
}

/// One item: bounded path, segment of the true length, proof leading to `root`.
fn verify_item(root: &Hash32, length: u64, item: &AnswerItem) -> Result<(), MerkleAuditError> {
    let index = item.index;
    if item.proof.path.len() > MAX_PATH_LEN {
        return Err(MerkleAuditError::PathTooLong {
            index,
            len: item.proof.path.len(),
            max: MAX_PATH_LEN,
        });
    }
    let expected = segment_len(length, index).map_err(|source| proof_error(index, source))?;
    if item.segment.len() != expected {
        return Err(MerkleAuditError::WrongSegmentLength {
            index,
            got: item.segment.len(),
            expected,
        });
    }
    verify_proof(root, length, index, &item.segment, &item.proof)
        .map_err(|source| proof_error(index, source))
}

fn proof_error(index: u64, source: MerkleError) -> MerkleAuditError {
    MerkleAuditError::Proof { index, source }
}

/// Parses a compact-JSON answer, refusing bodies over [`MAX_ANSWER_JSON_BYTES`] before
/// parsing them.
pub fn parse_answer(json: &[u8]) -> Result<MerkleAnswer, MerkleAuditError> {
    if json.len() > MAX_ANSWER_JSON_BYTES {
        return Err(MerkleAuditError::AnswerTooLarge {
            bytes: json.len(),
            max: MAX_ANSWER_JSON_BYTES,
        });
    }
    serde_json::from_slice(json).map_err(|e| MerkleAuditError::Json(e.to_string()))
}

/// A node of the RFC 6962 tree over `n` leaves, as the leaf range `[lo, hi)` it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Span {
    lo: u64,
    hi: u64,
}

impl Span {
    /// Whether the span is a complete, aligned power-of-two subtree, which the streaming
    /// pass forms; the other nodes of the tree are the right-edge suffixes `[a, n)`.
    fn is_complete_subtree(self) -> bool {
        let size = self.hi - self.lo;
        size.is_power_of_two() && self.lo.is_multiple_of(size)
    }
}

/// Largest power of two strictly smaller than `n` (n ≥ 2): RFC 6962's split point.
fn split_point(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// The sibling spans on the RFC 6962 path of leaf `index` among `n`, from the leaf up.
fn sibling_spans(index: u64, n: u64) -> Vec<Span> {
    let (mut lo, mut hi) = (0, n);
    let mut spans = Vec::new();
    while hi - lo > 1 {
        let mid = lo + split_point(hi - lo);
        if index < mid {
            spans.push(Span { lo: mid, hi });
            hi = mid;
        } else {
            spans.push(Span { lo, hi: mid });
            lo = mid;
        }
    }
    spans.reverse();
    spans
}

/// Where a sibling hash goes: item `item`, path position `level`.
#[derive(Debug, Clone, Copy)]
struct Slot {
    item: usize,
    level: usize,
}

/// A challenged segment being answered.
#[derive(Debug)]
struct Pending {
    index: u64,
    leaf: Option<Hash32>,
    segment: Option<Vec<u8>>,
    path: Vec<Option<Hash32>>,
}

/// Streaming builder of the inclusion proofs of a few segments, in one pass over the data
/// (it is a `Write`, cutting 4096-byte segments) or over its leaf hashes
/// ([`AnswerBuilder::push_leaf`]), with memory O(k · log n) whatever the data size.
///
/// Complete, aligned power-of-two subtrees are formed in increasing order of (end, size),
/// so the wanted ones are matched against a list sorted the same way with one cursor.
/// The other siblings, right-edge suffixes `[a, n)`, are folded from the final stack in `finish`.
#[derive(Debug)]
pub struct AnswerBuilder {
    length: u64,
    leaf_count: u64,
    pending: Vec<Pending>,
    /// Index into `pending` of the next challenged segment to arrive.
    next_pending: usize,
    /// Wanted complete subtrees, sorted by (hi, size).
    wanted: Vec<(Span, Slot)>,
    next_wanted: usize,
    /// Wanted right-edge suffixes `[a, n)` that are not complete subtrees, folded from
    /// the final stack.
    right_edge: Vec<(Span, Slot)>,
    /// Complete subtrees not yet merged: (hash, size), largest first.
    stack: Vec<(Hash32, u64)>,
    partial: Vec<u8>,
    bytes_fed: u64,
    leaves_pushed: bool,
}

impl AnswerBuilder {
    /// A builder for the proofs of `indices` (ascending, distinct, below the segment count,
    /// at most [`MAX_CHALLENGE`]) in data of `length` bytes.
    pub fn new(length: u64, indices: Vec<u64>) -> Result<Self, MerkleAuditError> {
        let n = segment_count(length);
        check_builder_indices(&indices, n)?;
        let mut wanted = Vec::new();
        let mut right_edge = Vec::new();
        let mut pending = Vec::with_capacity(indices.len());
        for (item, &index) in indices.iter().enumerate() {
            let spans = sibling_spans(index, n);
            for (level, &span) in spans.iter().enumerate() {
                let target = if span.is_complete_subtree() {
                    &mut wanted
                } else {
                    &mut right_edge
                };
                target.push((span, Slot { item, level }));
            }
            pending.push(Pending {
                index,
                leaf: None,
                segment: None,
                path: vec![None; spans.len()],
            });
        }
        wanted.sort_by_key(|(span, _)| (span.hi, span.hi - span.lo));
        Ok(AnswerBuilder {
            length,
            leaf_count: 0,
            pending,
            next_pending: 0,
            wanted,
            next_wanted: 0,
            right_edge,
            stack: Vec::new(),
            partial: Vec::with_capacity(SEGMENT_SIZE),
            bytes_fed: 0,
            leaves_pushed: false,
        })
    }

    /// A builder for the challenge of `k` segments that `block_hash` sets on `contract_id`
    /// over data of `length` bytes.
    pub fn for_challenge(
        contract_id: &[u8; 32],
        block_hash: &[u8; 32],
        length: u64,
        k: usize,
    ) -> Result<Self, MerkleAuditError> {
        if k > MAX_CHALLENGE {
            return Err(MerkleAuditError::ChallengeTooLarge {
                k,
                max: MAX_CHALLENGE,
            });
        }
        let indices = challenge(contract_id, block_hash, segment_count(length), k);
        Self::new(length, indices)
    }

    /// The segment indices being proven, ascending.
    pub fn indices(&self) -> Vec<u64> {
        self.pending.iter().map(|p| p.index).collect()
    }

    /// Feeds the next data bytes (the challenged segments' bytes are kept).
    pub fn update(&mut self, mut data: &[u8]) {
        self.bytes_fed += data.len() as u64;
        if !self.partial.is_empty() {
            let take = (SEGMENT_SIZE - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() < SEGMENT_SIZE {
                return;
            }
            self.flush_partial();
        }
        let mut segments = data.chunks_exact(SEGMENT_SIZE);
        for segment in &mut segments {
            self.absorb_segment(segment);
        }
        self.partial.extend_from_slice(segments.remainder());
    }

    /// Feeds the next leaf hash, for a farmer that stored its leaves; the challenged
    /// segments are then given with [`AnswerBuilder::add_segment`]. Cannot be mixed with
    /// feeding bytes.
    pub fn push_leaf(&mut self, leaf: Hash32) -> Result<(), MerkleAuditError> {
        if self.bytes_fed > 0 {
            return Err(MerkleAuditError::MixedInput);
        }
        self.leaves_pushed = true;
        self.absorb_leaf(leaf);
        Ok(())
    }

    /// Supplies the real bytes of challenged segment `index` (leaf-hash input); checked
    /// against its leaf in `finish`.
    pub fn add_segment(&mut self, index: u64, segment: Vec<u8>) -> Result<(), MerkleAuditError> {
        let pending = self
            .pending
            .iter_mut()
            .find(|p| p.index == index)
            .ok_or(MerkleAuditError::NotChallenged { index })?;
        pending.segment = Some(segment);
        Ok(())
    }

    /// Finishes and returns the answer to the challenge of `block_hash` on `contract_id`:
    /// every proven segment with its bytes and proof.
    pub fn finish(
        self,
        contract_id: [u8; 32],
        block_hash: [u8; 32],
    ) -> Result<MerkleAnswer, MerkleAuditError> {
        let length = self.length;
        let pending = self.finish_pending()?;
        let items = pending
            .into_iter()
            .map(|p| answer_item(p, length))
            .collect::<Result<_, _>>()?;
        Ok(MerkleAnswer {
            contract_id,
            block_hash,
            items,
        })
    }

    /// Finishes and returns the proofs only (no segment bytes needed).
    pub fn finish_proofs(self) -> Result<Vec<MerkleProof>, MerkleAuditError> {
        let pending = self.finish_pending()?;
        pending.into_iter().map(completed_proof).collect()
    }

    /// Flushes the last segment, checks the input size and fills the right-edge siblings.
    fn finish_pending(mut self) -> Result<Vec<Pending>, MerkleAuditError> {
        if self.leaves_pushed && self.bytes_fed > 0 {
            return Err(MerkleAuditError::MixedInput);
        }
        if !self.leaves_pushed && self.bytes_fed != self.length {
            return Err(MerkleAuditError::LengthMismatch {
                expected: self.length,
                got: self.bytes_fed,
            });
        }
        self.flush_partial();
        let expected = segment_count(self.length);
        if self.leaf_count != expected {
            return Err(MerkleAuditError::LeafCountMismatch {
                expected,
                got: self.leaf_count,
            });
        }
        self.fill_right_edge();
        Ok(self.pending)
    }

    fn flush_partial(&mut self) {
        if !self.partial.is_empty() {
            let segment = std::mem::take(&mut self.partial);
            self.absorb_segment(&segment);
            self.partial = segment;
            self.partial.clear();
        }
    }

    /// Hashes one segment (its real bytes) and keeps it if it is challenged.
    fn absorb_segment(&mut self, segment: &[u8]) {
        if let Some(pending) = self.pending.get_mut(self.next_pending) {
            if pending.index == self.leaf_count {
                pending.segment = Some(segment.to_vec());
            }
        }
        let leaf = leaf_hash(segment).expect("segments are cut at SEGMENT_SIZE bytes");
        self.absorb_leaf(leaf);
    }

    /// Pushes a leaf onto the stack, merging equal-sized subtrees, and records every
    /// formed subtree that is a wanted sibling.
    fn absorb_leaf(&mut self, leaf: Hash32) {
        if let Some(pending) = self.pending.get_mut(self.next_pending) {
            if pending.index == self.leaf_count {
                pending.leaf = Some(leaf);
                self.next_pending += 1;
            }
        }
        self.leaf_count += 1;
        let end = self.leaf_count;
        let mut node = (leaf, 1u64);
        self.record_subtree(end, node);
        while let Some(&(left, size)) = self.stack.last() {
            if size != node.1 {
                break;
            }
            self.stack.pop();
            node = (node_hash(&left, &node.0), size * 2);
            self.record_subtree(end, node);
        }
        self.stack.push(node);
    }

    /// Fills the slots wanting the subtree of `size` leaves that ends at leaf `end`.
    fn record_subtree(&mut self, end: u64, (hash, size): (Hash32, u64)) {
        let key = (end, size);
        while let Some(&(span, slot)) = self.wanted.get(self.next_wanted) {
            if (span.hi, span.hi - span.lo) > key {
                break;
            }
            if (span.hi, span.hi - span.lo) == key {
                self.pending[slot.item].path[slot.level] = Some(hash);
            }
            self.next_wanted += 1;
        }
    }

    /// Fills the siblings `[a, n)` from the final stack: folding it from the right gives
    /// the hash of every suffix that starts at a stack entry.
    fn fill_right_edge(&mut self) {
        let mut suffixes = Vec::with_capacity(self.stack.len());
        let mut start = self.leaf_count;
        let mut acc: Option<Hash32> = None;
        for &(hash, size) in self.stack.iter().rev() {
            start -= size;
            let folded = match acc {
                None => hash,
                Some(right) => node_hash(&hash, &right),
            };
            acc = Some(folded);
            suffixes.push((start, folded));
        }
        for &(span, slot) in &self.right_edge {
            if let Some(&(_, hash)) = suffixes.iter().find(|(lo, _)| *lo == span.lo) {
                self.pending[slot.item].path[slot.level] = Some(hash);
            }
        }
    }
}

impl Write for AnswerBuilder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Indices for a builder: at most [`MAX_CHALLENGE`], strictly ascending, below `count`.
fn check_builder_indices(indices: &[u64], count: u64) -> Result<(), MerkleAuditError> {
    if indices.len() > MAX_CHALLENGE {
        return Err(MerkleAuditError::ChallengeTooLarge {
            k: indices.len(),
            max: MAX_CHALLENGE,
        });
    }
    let ascending = indices.windows(2).all(|w| w[0] < w[1]);
    let in_range = indices.last().is_none_or(|&last| last < count);
    if !(ascending && in_range) {
        return Err(MerkleAuditError::InvalidIndices {
            indices: indices.to_vec(),
            count,
        });
    }
    Ok(())
}

/// The proof of a pending segment whose every sibling was found.
fn completed_proof(pending: Pending) -> Result<MerkleProof, MerkleAuditError> {
    let index = pending.index;
    let path = pending
        .path
        .into_iter()
        .collect::<Option<Vec<Hash32>>>()
        .ok_or(MerkleAuditError::IncompletePath { index })?;
    Ok(MerkleProof { index, path })
}

/// The answer item of a pending segment: its bytes, of the true length and matching the
/// leaf that was fed, and its proof.
fn answer_item(mut pending: Pending, length: u64) -> Result<AnswerItem, MerkleAuditError> {
    let index = pending.index;
    let segment = pending
        .segment
        .take()
        .ok_or(MerkleAuditError::MissingSegment { index })?;
    let expected = segment_len(length, index).map_err(|source| proof_error(index, source))?;
    if segment.len() != expected {
        return Err(MerkleAuditError::WrongSegmentLength {
            index,
            got: segment.len(),
            expected,
        });
    }
    let leaf = leaf_hash(&segment).map_err(|source| proof_error(index, source))?;
    if pending.leaf != Some(leaf) {
        return Err(MerkleAuditError::SegmentMismatch { index });
    }
    Ok(AnswerItem {
        index,
        segment,
        proof: completed_proof(pending)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::MerkleTree;
    use proptest::prelude::*;

    const CONTRACT: [u8; 32] = [7; 32];
    const BLOCK: [u8; 32] = [9; 32];

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i * 31 + i / SEGMENT_SIZE) as u8 ^ seed)
            .collect()
    }

    /// The answer built by streaming `data` in pieces of `piece` bytes.
    fn streamed_answer(data: &[u8], k: usize, piece: usize) -> MerkleAnswer {
        let len = data.len() as u64;
        let mut builder = AnswerBuilder::for_challenge(&CONTRACT, &BLOCK, len, k).unwrap();
        for chunk in data.chunks(piece.max(1)) {
            builder.write_all(chunk).unwrap();
        }
        builder.finish(CONTRACT, BLOCK).unwrap()
    }

    /// The answer built from the leaf hashes plus the challenged segments.
    fn leaf_answer(data: &[u8], k: usize) -> MerkleAnswer {
        let tree = MerkleTree::from_data(data);
        let len = data.len() as u64;
        let mut builder = AnswerBuilder::for_challenge(&CONTRACT, &BLOCK, len, k).unwrap();
        for leaf in tree.leaves() {
            builder.push_leaf(*leaf).unwrap();
        }
        for index in builder.indices() {
            let start = index as usize * SEGMENT_SIZE;
            let end = (start + SEGMENT_SIZE).min(data.len());
            builder
                .add_segment(index, data[start..end].to_vec())
                .unwrap();
        }
        builder.finish(CONTRACT, BLOCK).unwrap()
    }

    /// An honest answer over a 37.5-segment file, its root and length.
    fn honest() -> (Vec<u8>, Hash32, u64, MerkleAnswer) {
        let d = data(37 * SEGMENT_SIZE + 2048, 0);
        let root = MerkleTree::from_data(&d).root();
        let answer = streamed_answer(&d, 8, 1000);
        let len = d.len() as u64;
        (d, root, len, answer)
    }

    fn verify(root: &Hash32, len: u64, answer: &MerkleAnswer) -> Result<(), MerkleAuditError> {
        verify_answer(root, len, &CONTRACT, &BLOCK, 8, answer)
    }

    #[test]
    fn challenge_is_deterministic_sorted_distinct_and_bounded() {
        let a = challenge(&CONTRACT, &BLOCK, 1000, 16);
        assert_eq!(a, challenge(&CONTRACT, &BLOCK, 1000, 16));
        assert_eq!(a.len(), 16);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert!(a.iter().all(|&i| i < 1000));
        assert_ne!(a, challenge(&CONTRACT, &[10; 32], 1000, 16));
        assert_ne!(a, challenge(&[8; 32], &BLOCK, 1000, 16));
        assert_eq!(challenge(&CONTRACT, &BLOCK, 5, 16), vec![0, 1, 2, 3, 4]);
        assert!(challenge(&CONTRACT, &BLOCK, 0, 16).is_empty());
        assert_eq!(challenge(&CONTRACT, &BLOCK, u64::MAX, 10_000).len(), 256);
        assert_eq!(challenge(&CONTRACT, &BLOCK, 257, 256).len(), 256);
    }

    #[test]
    fn honest_answers_verify() {
        let (_, root, len, answer) = honest();
        assert_eq!(answer.items.len(), 8);
        verify(&root, len, &answer).unwrap();
        for len in [0usize, 1, 4096, 4097, 3 * 4096 + 5] {
            let d = data(len, 3);
            let root = MerkleTree::from_data(&d).root();
            let answer = streamed_answer(&d, 8, 4096);
            verify(&root, len as u64, &answer).unwrap();
        }
    }

    #[test]
    fn write_and_push_leaf_give_the_same_answer() {
        for len in [0usize, 1, 4096, 4097, 20 * 4096, 37 * 4096 + 11] {
            let d = data(len, 1);
            let streamed = streamed_answer(&d, 8, 777);
            assert_eq!(streamed, leaf_answer(&d, 8), "len {len}");
            assert_eq!(streamed, streamed_answer(&d, 8, 1 << 20), "len {len}");
        }
    }

    #[test]
    fn a_flipped_byte_is_rejected() {
        let (_, root, len, mut answer) = honest();
        answer.items[3].segment[100] ^= 1;
        let index = answer.items[3].index;
        assert_eq!(
            verify(&root, len, &answer),
            Err(MerkleAuditError::Proof {
                index,
                source: MerkleError::RootMismatch
            })
        );
    }

    #[test]
    fn a_wrong_index_is_rejected() {
        let (_, root, len, mut answer) = honest();
        answer.items[0].index += 1;
        assert!(matches!(
            verify(&root, len, &answer),
            Err(MerkleAuditError::WrongIndices { .. })
        ));
        let (_, _, _, mut answer) = honest();
        answer.items.pop();
        assert!(matches!(
            verify(&root, len, &answer),
            Err(MerkleAuditError::WrongIndices { .. })
        ));
        let (_, _, _, mut answer) = honest();
        answer.items.swap(0, 1);
        assert!(matches!(
            verify(&root, len, &answer),
            Err(MerkleAuditError::WrongIndices { .. })
        ));
    }

    #[test]
    fn a_proof_index_other_than_the_item_is_rejected() {
        let (_, root, len, mut answer) = honest();
        answer.items[2].proof.index += 1;
        let index = answer.items[2].index;
        assert!(matches!(
            verify(&root, len, &answer),
            Err(MerkleAuditError::Proof {
                index: i,
                source: MerkleError::IndexMismatch { .. }
            }) if i == index
        ));
    }

    #[test]
    fn a_short_path_is_rejected() {
        let (_, root, len, mut answer) = honest();
        answer.items[5].proof.path.pop();
        let index = answer.items[5].index;
        assert_eq!(
            verify(&root, len, &answer),
            Err(MerkleAuditError::Proof {
                index,
                source: MerkleError::BadPathLength
            })
        );
    }

    #[test]
    fn another_files_answer_is_rejected() {
        let (d, root, len, _) = honest();
        let other = data(d.len(), 0x55);
        let answer = streamed_answer(&other, 8, 4096);
        let index = answer.items[0].index;
        assert_eq!(
            verify(&root, len, &answer),
            Err(MerkleAuditError::Proof {
                index,
                source: MerkleError::RootMismatch
            })
        );
    }

    #[test]
    fn another_contracts_answer_is_rejected() {
        let (_, root, len, mut answer) = honest();
        answer.contract_id = [8; 32];
        assert_eq!(
            verify(&root, len, &answer),
            Err(MerkleAuditError::WrongContract)
        );
        let (_, _, _, answer) = honest();
        assert_eq!(
            verify_answer(&root, len, &[8; 32], &BLOCK, 8, &answer),
            Err(MerkleAuditError::WrongContract)
        );
    }

    #[test]
    fn a_wrong_block_is_rejected() {
        let (_, root, len, mut answer) = honest();
        answer.block_hash = [10; 32];
        assert_eq!(
            verify(&root, len, &answer),
            Err(MerkleAuditError::WrongBlock)
        );
        let (_, _, _, answer) = honest();
        assert_eq!(
            verify_answer(&root, len, &CONTRACT, &[10; 32], 8, &answer),
            Err(MerkleAuditError::WrongBlock)
        );
    }

    #[test]
    fn oversized_answers_are_rejected() {
        let (_, root, len, mut answer) = honest();
        answer.items.push(answer.items[0].clone());
        assert_eq!(
            verify(&root, len, &answer),
            Err(MerkleAuditError::TooManyItems { got: 9, max: 8 })
        );
        let (_, _, _, mut answer) = honest();
        let index = answer.items[1].index;
        answer.items[1].proof.path = vec![[0; 32]; MAX_PATH_LEN + 1];
        assert!(matches!(
            verify(&root, len, &answer),
            Err(MerkleAuditError::PathTooLong { index: i, .. }) if i == index
        ));
        let (_, _, _, mut answer) = honest();
        let index = answer.items[1].index;
        answer.items[1].segment.push(0);
        assert_eq!(
            verify(&root, len, &answer),
            Err(MerkleAuditError::WrongSegmentLength {
                index,
                got: SEGMENT_SIZE + 1,
                expected: SEGMENT_SIZE
            })
        );
        assert_eq!(
            verify_answer(&root, len, &CONTRACT, &BLOCK, MAX_CHALLENGE + 1, &answer),
            Err(MerkleAuditError::ChallengeTooLarge {
                k: MAX_CHALLENGE + 1,
                max: MAX_CHALLENGE
            })
        );
        let huge = vec![b' '; MAX_ANSWER_JSON_BYTES + 1];
        assert!(matches!(
            parse_answer(&huge),
            Err(MerkleAuditError::AnswerTooLarge { .. })
        ));
    }

    #[test]
    fn answers_round_trip_through_json_within_the_limit() {
        let (_, root, len, answer) = honest();
        let json = serde_json::to_vec(&answer).unwrap();
        let parsed = parse_answer(&json).unwrap();
        assert_eq!(parsed, answer);
        verify(&root, len, &parsed).unwrap();
        assert!(matches!(parse_answer(b"{"), Err(MerkleAuditError::Json(_))));
        // The largest answer the verifier accepts: MAX_CHALLENGE full segments with
        // MAX_PATH_LEN-hash paths, every byte 255 (the longest JSON numbers).
        let item = AnswerItem {
            index: u64::MAX,
            segment: vec![255; SEGMENT_SIZE],
            proof: MerkleProof {
                index: u64::MAX,
                path: vec![[255; 32]; MAX_PATH_LEN],
            },
        };
        let biggest = MerkleAnswer {
            contract_id: [255; 32],
            block_hash: [255; 32],
            items: vec![item; MAX_CHALLENGE],
        };
        let json = serde_json::to_vec(&biggest).unwrap();
        assert!(json.len() <= MAX_ANSWER_JSON_BYTES, "{}", json.len());
        assert_eq!(parse_answer(&json).unwrap(), biggest);
    }

    #[test]
    fn builder_misuse_is_reported() {
        let d = data(3 * SEGMENT_SIZE, 0);
        assert!(matches!(
            AnswerBuilder::new(d.len() as u64, vec![2, 1]),
            Err(MerkleAuditError::InvalidIndices { .. })
        ));
        assert!(matches!(
            AnswerBuilder::new(d.len() as u64, vec![3]),
            Err(MerkleAuditError::InvalidIndices { .. })
        ));
        assert!(matches!(
            AnswerBuilder::for_challenge(&CONTRACT, &BLOCK, 1, MAX_CHALLENGE + 1),
            Err(MerkleAuditError::ChallengeTooLarge { .. })
        ));

        let mut short = AnswerBuilder::new(d.len() as u64, vec![1]).unwrap();
        short.update(&d[..100]);
        assert_eq!(
            short.finish_proofs(),
            Err(MerkleAuditError::LengthMismatch {
                expected: d.len() as u64,
                got: 100
            })
        );

        let mut mixed = AnswerBuilder::new(d.len() as u64, vec![1]).unwrap();
        mixed.update(&d[..100]);
        assert_eq!(mixed.push_leaf([0; 32]), Err(MerkleAuditError::MixedInput));

        let tree = MerkleTree::from_data(&d);
        let mut leaves = AnswerBuilder::new(d.len() as u64, vec![1]).unwrap();
        leaves.push_leaf(tree.leaves()[0]).unwrap();
        assert_eq!(
            leaves.finish_proofs(),
            Err(MerkleAuditError::LeafCountMismatch {
                expected: 3,
                got: 1
            })
        );

        let fed = |builder: &mut AnswerBuilder| {
            for leaf in tree.leaves() {
                builder.push_leaf(*leaf).unwrap();
            }
        };
        let mut missing = AnswerBuilder::new(d.len() as u64, vec![1]).unwrap();
        fed(&mut missing);
        assert_eq!(
            missing.finish(CONTRACT, BLOCK),
            Err(MerkleAuditError::MissingSegment { index: 1 })
        );
        let mut wrong = AnswerBuilder::new(d.len() as u64, vec![1]).unwrap();
        fed(&mut wrong);
        assert_eq!(
            wrong.add_segment(2, d[..SEGMENT_SIZE].to_vec()),
            Err(MerkleAuditError::NotChallenged { index: 2 })
        );
        wrong.add_segment(1, d[..SEGMENT_SIZE].to_vec()).unwrap();
        assert_eq!(
            wrong.finish(CONTRACT, BLOCK),
            Err(MerkleAuditError::SegmentMismatch { index: 1 })
        );
    }

    /// Every index of every tree up to 70 leaves, all at once (once a failure: n = 12,
    /// index 8, whose sibling [10, 12) ends at the last leaf but is a complete subtree).
    #[test]
    fn every_index_of_small_trees_matches() {
        for n in 0u64..=70 {
            let leaves: Vec<Hash32> = (0..n)
                .map(|i| crate::hashing::sha256(&[&i.to_be_bytes()]))
                .collect();
            let length = n * SEGMENT_SIZE as u64;
            let tree = MerkleTree::from_leaves(leaves.clone(), length).unwrap();
            let indices: Vec<u64> = (0..n).collect();
            let mut builder = AnswerBuilder::new(length, indices.clone()).unwrap();
            for leaf in &leaves {
                builder.push_leaf(*leaf).unwrap();
            }
            let expected: Vec<MerkleProof> =
                indices.iter().map(|&i| tree.proof(i).unwrap()).collect();
            assert_eq!(builder.finish_proofs().unwrap(), expected, "n = {n}");
        }
    }

    /// Lengths around the interesting boundaries, and arbitrary ones.
    fn length() -> impl Strategy<Value = usize> {
        prop_oneof![
            Just(0usize),
            Just(1),
            Just(4096),
            Just(4097),
            Just(8192),
            Just(16 * 4096),
            Just(16 * 4096 + 1),
            0usize..(70 * SEGMENT_SIZE),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Streamed paths equal `MerkleTree::proof`'s for random lengths and index sets.
        #[test]
        fn streamed_proofs_equal_the_trees(
            len in length(),
            picks in proptest::collection::vec(any::<u64>(), 0..20),
            piece in 1usize..10_000,
        ) {
            let d = data(len, 7);
            let tree = MerkleTree::from_data(&d);
            let n = segment_count(len as u64);
            let indices: Vec<u64> = if n == 0 {
                Vec::new()
            } else {
                picks.iter().map(|p| p % n).collect::<BTreeSet<_>>().into_iter().collect()
            };
            let mut builder = AnswerBuilder::new(len as u64, indices.clone()).unwrap();
            for chunk in d.chunks(piece) {
                builder.update(chunk);
            }
            let proofs = builder.finish_proofs().unwrap();
            let expected: Vec<MerkleProof> =
                indices.iter().map(|&i| tree.proof(i).unwrap()).collect();
            prop_assert_eq!(proofs, expected);
        }

        /// The same over many leaves (up to 5000) given as hashes.
        #[test]
        fn leaf_proofs_equal_the_trees(
            n in 0u64..5000,
            picks in proptest::collection::vec(any::<u64>(), 0..40),
        ) {
            let leaves: Vec<Hash32> = (0..n)
                .map(|i| crate::hashing::sha256(&[&i.to_be_bytes()]))
                .collect();
            let length = n * SEGMENT_SIZE as u64;
            let tree = MerkleTree::from_leaves(leaves.clone(), length).unwrap();
            let indices: Vec<u64> = if n == 0 {
                Vec::new()
            } else {
                picks.iter().map(|p| p % n).collect::<BTreeSet<_>>().into_iter().collect()
            };
            let mut builder = AnswerBuilder::new(length, indices.clone()).unwrap();
            for leaf in &leaves {
                builder.push_leaf(*leaf).unwrap();
            }
            let proofs = builder.finish_proofs().unwrap();
            let expected: Vec<MerkleProof> =
                indices.iter().map(|&i| tree.proof(i).unwrap()).collect();
            prop_assert_eq!(proofs, expected);
        }
    }
}
