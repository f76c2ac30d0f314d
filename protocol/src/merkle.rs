//! Segment Merkle tree over ciphertext (PROTOCOL.md 1.2): streaming builder, inclusion proofs, verification.
//!
//! Data is cut into 4096-byte segments, the last one zero-padded. Hashes:
//!
//! * leaf  = SHA256(0x00 ‖ segment)             (segment always padded to 4096 bytes)
//! * node  = SHA256(0x01 ‖ left ‖ right)
//! * tree  = RFC 6962 shape: for n > 1 leaves split at k, the largest power of two < n;
//!   the tree of zero leaves is SHA256("") as in RFC 6962.
//! * root  = SHA256(0x02 ‖ tree ‖ length as u64 big-endian)
//!
//! The final 0x02 step makes the root commit to the true byte length, so a zero-padded
//! last segment cannot be confused with real zero bytes, and the empty input has a root too.
//!
//! Leaves, the hot path of encrypt+commit, are hashed by the implementation [`crate::cpu`]
//! chose for this CPU (several leaves at once in SIMD lanes, SHA-NI, ring or plain
//! assembly); nodes with the `sha2` crate. The naive reference in the tests uses plain
//! `sha2` calls, and every implementation is checked against it.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cpu::{DataPathImpl, Sha256Impl};

/// Size of one segment, the unit of Merkle leaves, audits and fraud proofs.
pub const SEGMENT_SIZE: usize = 4096;

/// A 32-byte SHA-256 value.
pub type Hash32 = [u8; 32];

/// Why a Merkle operation or proof check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    #[error("segment {index} is out of range for a tree of {count} segments")]
    IndexOutOfRange { index: u64, count: u64 },
    #[error("segment has {got} bytes, expected {expected}")]
    WrongSegmentLength { got: usize, expected: usize },
    #[error("{leaves} leaves do not describe {length} bytes")]
    LeafCountMismatch { leaves: u64, length: u64 },
    #[error("proof is for segment {proof} but segment {claimed} was claimed")]
    IndexMismatch { proof: u64, claimed: u64 },
    #[error("proof path has the wrong length")]
    BadPathLength,
    #[error("proof does not lead to the root")]
    RootMismatch,
    #[error("the builder checkpoint is inconsistent")]
    BadCheckpoint,
}

/// A [`MerkleBuilder`]'s whole state (without a leaf list): at most one partial segment
/// and 64 subtree roots, so a receiver can persist it and resume a broken upload without
/// re-reading what it already stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerkleCheckpoint {
    #[serde(with = "hex::serde")]
    pub partial: Vec<u8>,
    /// (subtree root, segments under it), largest first.
    pub stack: Vec<(Hash32, u64)>,
    pub length: u64,
}

/// The committed root and the true length of the data it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerkleCommitment {
    pub root: Hash32,
    pub length: u64,
}

/// An inclusion proof for one segment: sibling hashes from the leaf upwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerkleProof {
    pub index: u64,
    pub path: Vec<Hash32>,
}

/// Number of segments that `length` bytes occupy.
pub fn segment_count(length: u64) -> u64 {
    length.div_ceil(SEGMENT_SIZE as u64)
}

/// The number of real (unpadded) bytes in segment `index` of data of `length` bytes.
pub fn segment_len(length: u64, index: u64) -> Result<usize, MerkleError> {
    let count = segment_count(length);
    if index >= count {
        return Err(MerkleError::IndexOutOfRange { index, count });
    }
    let start = index * SEGMENT_SIZE as u64;
    Ok((length - start).min(SEGMENT_SIZE as u64) as usize)
}

/// Leaf hash of one segment given by its real bytes (at most 4096), zero-padded to 4096.
pub fn leaf_hash(segment: &[u8]) -> Result<Hash32, MerkleError> {
    if segment.len() > SEGMENT_SIZE {
        return Err(MerkleError::WrongSegmentLength {
            got: segment.len(),
            expected: SEGMENT_SIZE,
        });
    }
    Ok(leaf_hash_unchecked(segment))
}

fn leaf_hash_unchecked(segment: &[u8]) -> Hash32 {
    leaf_hash_with(DataPathImpl::active().sha256, segment)
}

/// Leaf hash of one segment of at most 4096 bytes with the implementation `sha256`.
/// Multi-lane choices hash a single leaf with the `sha2` crate.
fn leaf_hash_with(sha256: Sha256Impl, segment: &[u8]) -> Hash32 {
    const ZEROS: [u8; SEGMENT_SIZE] = [0; SEGMENT_SIZE];
    let padding = &ZEROS[segment.len()..];
    match sha256 {
        Sha256Impl::Ring => {
            let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
            hasher.update(&[0x00]);
            hasher.update(segment);
            hasher.update(padding);
            let mut out = [0u8; 32];
            out.copy_from_slice(hasher.finish().as_ref());
            out
        }
        #[cfg(target_arch = "x86_64")]
        Sha256Impl::Scalar => scalar_leaf_hash(segment),
        _ => {
            let mut hasher = Sha256::new();
            hasher.update([0x00]);
            hasher.update(segment);
            hasher.update(padding);
            hasher.finalize().into()
        }
    }
}

/// Leaf hash with the plain x86-64 assembly compression function (no SHA-NI, no SIMD).
#[cfg(target_arch = "x86_64")]
fn scalar_leaf_hash(segment: &[u8]) -> Hash32 {
    const BLOCKS: usize = 65;
    let mut message = [[0u8; 64]; BLOCKS];
    let bytes = message.as_flattened_mut();
    bytes[1..1 + segment.len()].copy_from_slice(segment);
    bytes[SEGMENT_SIZE + 1] = 0x80;
    let bits = (SEGMENT_SIZE as u64 + 1) * 8;
    bytes[BLOCKS * 64 - 8..].copy_from_slice(&bits.to_be_bytes());
    let mut state: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    sha2_asm::compress256(&mut state, &message);
    let mut out = [0u8; 32];
    for (word, bytes) in state.iter().zip(out.chunks_exact_mut(4)) {
        bytes.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// Leaf hashes of `segments` (a whole number of full 4096-byte segments), in order, with
/// the implementation `sha256`: multi-lane choices hash 8 or 16 leaves per pass.
pub(crate) fn full_leaf_hashes(sha256: Sha256Impl, segments: &[u8], mut push: impl FnMut(Hash32)) {
    debug_assert_eq!(segments.len() % SEGMENT_SIZE, 0);
    let mut segments = segments.chunks_exact(SEGMENT_SIZE);
    #[cfg(target_arch = "x86_64")]
    match sha256.lanes() {
        16 => hash_in_lanes::<16>(&mut segments, &mut push, lanes::leaves_x16),
        8 => hash_in_lanes::<8>(&mut segments, &mut push, lanes::leaves_x8),
        _ => {}
    }
    for segment in segments {
        push(leaf_hash_with(sha256, segment));
    }
}

#[cfg(target_arch = "x86_64")]
use crate::cpu::sha256_lanes as lanes;

/// A segment from `chunks_exact(SEGMENT_SIZE)` as an array reference.
#[cfg(target_arch = "x86_64")]
fn full(segment: &[u8]) -> &[u8; SEGMENT_SIZE] {
    segment
        .try_into()
        .expect("chunks_exact gives full segments")
}

/// Hashes `N` segments per pass while at least `N / 4` are left (a short last batch is
/// filled up with repeats of its first segment, whose hashes are dropped), leaving the
/// rest in `segments`. Stops at once if the CPU lacks the feature (`hash_n` gives None).
#[cfg(target_arch = "x86_64")]
fn hash_in_lanes<const N: usize>(
    segments: &mut std::slice::ChunksExact<'_, u8>,
    push: &mut impl FnMut(Hash32),
    hash_n: fn([&[u8; SEGMENT_SIZE]; N]) -> Option<[Hash32; N]>,
) {
    while segments.len() >= (N / 4).max(1) {
        let first = full(segments.clone().next().expect("a segment is left"));
        let mut batch = [first; N];
        let mut count = 0;
        for (slot, segment) in batch.iter_mut().zip(segments.by_ref()) {
            *slot = full(segment);
            count += 1;
        }
        let Some(hashes) = hash_n(batch) else {
            for segment in &batch[..count] {
                push(leaf_hash_with(Sha256Impl::ShaNi, segment.as_slice()));
            }
            return;
        };
        hashes[..count].iter().for_each(|hash| push(*hash));
    }
}

/// The leaf hashes of `part`'s own segments (cut from its first byte, the last one
/// zero-padded), in one pass over its bytes. An upload part's signed digest
/// ([`part_digest`]) and the receiver's tree ([`MerkleBuilder::push_part`]) both take them,
/// so neither side hashes the part's bytes twice.
pub fn part_leaves(part: &[u8]) -> Vec<Hash32> {
    let sha256 = DataPathImpl::active().sha256;
    let mut leaves = Vec::with_capacity(part.len().div_ceil(SEGMENT_SIZE));
    let aligned = part.len() - part.len() % SEGMENT_SIZE;
    full_leaf_hashes(sha256, &part[..aligned], |leaf| leaves.push(leaf));
    if aligned < part.len() {
        leaves.push(leaf_hash_with(sha256, &part[aligned..]));
    }
    leaves
}

/// The digest of an upload part of `length` bytes from its [`part_leaves`]:
/// SHA256(0x03 ‖ length as u64 big-endian ‖ leaves). It binds the part's bytes as firmly as
/// a SHA-256 of them (a second preimage would need one for a leaf or for this hash), and
/// costs 32 bytes per 4096 once the leaves exist.
pub fn part_digest(length: u64, leaves: &[Hash32]) -> Hash32 {
    let mut hasher = Sha256::new();
    hasher.update([0x03]);
    hasher.update(length.to_be_bytes());
    for leaf in leaves {
        hasher.update(leaf);
    }
    hasher.finalize().into()
}

/// Interior node hash.
pub fn node_hash(left: &Hash32, right: &Hash32) -> Hash32 {
    let mut hasher = Sha256::new();
    hasher.update([0x01]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The tree hash of zero leaves: SHA256 of the empty string (RFC 6962).
pub fn empty_tree_hash() -> Hash32 {
    Sha256::digest([]).into()
}

/// Binds a tree hash to the true data length: SHA256(0x02 ‖ tree ‖ length_be).
pub fn commit_root(tree_hash: &Hash32, length: u64) -> Hash32 {
    let mut hasher = Sha256::new();
    hasher.update([0x02]);
    hasher.update(tree_hash);
    hasher.update(length.to_be_bytes());
    hasher.finalize().into()
}

/// Largest power of two strictly smaller than `n` (n ≥ 2): RFC 6962's split point.
fn split_point(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// RFC 6962 tree hash over a leaf list (recursive definition).
pub fn tree_hash(leaves: &[Hash32]) -> Hash32 {
    match leaves.len() {
        0 => empty_tree_hash(),
        1 => leaves[0],
        n => {
            let k = split_point(n);
            node_hash(&tree_hash(&leaves[..k]), &tree_hash(&leaves[k..]))
        }
    }
}

/// Streaming Merkle builder: feed bytes (it is a `Write`), get the committed root.
///
/// Memory is one segment buffer plus a stack of at most 64 subtree roots; optionally it
/// also records the leaf list (32 bytes per segment) so proofs can be made later.
#[derive(Debug, Clone)]
pub struct MerkleBuilder {
    partial: Vec<u8>,
    stack: Vec<(Hash32, u64)>,
    length: u64,
    leaves: Option<Vec<Hash32>>,
    sha256: Sha256Impl,
}

impl Default for MerkleBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl MerkleBuilder {
    /// A builder that keeps only O(log n) state.
    pub fn new() -> Self {
        MerkleBuilder {
            partial: Vec::with_capacity(SEGMENT_SIZE),
            stack: Vec::new(),
            length: 0,
            leaves: None,
            sha256: DataPathImpl::active().sha256,
        }
    }

    /// A builder hashing leaves with `sha256` instead of the process's choice (tests and
    /// the cross-checks of every implementation).
    pub(crate) fn with_sha256(mut self, sha256: Sha256Impl) -> Self {
        self.sha256 = sha256;
        self
    }

    /// A builder that also records every leaf hash, for [`MerkleBuilder::finish_tree`].
    pub fn recording_leaves() -> Self {
        MerkleBuilder {
            leaves: Some(Vec::new()),
            ..Self::new()
        }
    }

    /// Bytes consumed so far.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// The builder's state, to persist and [`MerkleBuilder::resume`] later. The leaf list
    /// of a recording builder is not part of it.
    pub fn checkpoint(&self) -> MerkleCheckpoint {
        MerkleCheckpoint {
            partial: self.partial.clone(),
            stack: self.stack.clone(),
            length: self.length,
        }
    }

    /// A builder in the state of `checkpoint`, which is checked for consistency: the
    /// partial segment is the length's remainder, and the subtree sizes are the distinct
    /// powers of two, largest first, that add up to the full segments.
    pub fn resume(checkpoint: MerkleCheckpoint) -> Result<MerkleBuilder, MerkleError> {
        let MerkleCheckpoint {
            partial,
            stack,
            length,
        } = checkpoint;
        let segment = SEGMENT_SIZE as u64;
        if partial.len() as u64 != length % segment {
            return Err(MerkleError::BadCheckpoint);
        }
        let sizes_ok = stack.iter().all(|(_, size)| size.is_power_of_two())
            && stack.windows(2).all(|w| w[0].1 > w[1].1);
        let full: Option<u64> = stack
            .iter()
            .try_fold(0u64, |acc, (_, size)| acc.checked_add(*size));
        if !sizes_ok || full != Some(length / segment) {
            return Err(MerkleError::BadCheckpoint);
        }
        let mut buffer = Vec::with_capacity(SEGMENT_SIZE);
        buffer.extend_from_slice(&partial);
        Ok(MerkleBuilder {
            partial: buffer,
            stack,
            length,
            leaves: None,
            sha256: DataPathImpl::active().sha256,
        })
    }

    /// Feeds more data.
    pub fn update(&mut self, mut data: &[u8]) {
        self.length += data.len() as u64;
        if !self.partial.is_empty() {
            let take = (SEGMENT_SIZE - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() < SEGMENT_SIZE {
                return;
            }
            let leaf = leaf_hash_with(self.sha256, &self.partial);
            self.partial.clear();
            self.push_leaf(leaf);
        }
        let aligned = data.len() - data.len() % SEGMENT_SIZE;
        full_leaf_hashes(self.sha256, &data[..aligned], |leaf| self.push_leaf(leaf));
        self.partial.extend_from_slice(&data[aligned..]);
    }

    /// Feeds `part` whose [`part_leaves`] are `leaves` (computed by the caller from these
    /// very bytes): the leaves of its full segments are taken as they are and only a short
    /// last segment is kept as bytes, so the part is not hashed again. Starting mid-segment
    /// (the bytes so far are not a whole number of segments) it falls back to
    /// [`MerkleBuilder::update`]. `leaves` of the wrong count are refused, changing nothing.
    pub fn push_part(&mut self, part: &[u8], leaves: &[Hash32]) -> Result<(), MerkleError> {
        let count = part.len().div_ceil(SEGMENT_SIZE);
        if leaves.len() != count {
            return Err(MerkleError::LeafCountMismatch {
                leaves: leaves.len() as u64,
                length: part.len() as u64,
            });
        }
        if !self.partial.is_empty() {
            self.update(part);
            return Ok(());
        }
        let full = part.len() / SEGMENT_SIZE;
        for leaf in &leaves[..full] {
            self.push_full_segment_leaf(*leaf);
        }
        let tail = &part[full * SEGMENT_SIZE..];
        self.length += tail.len() as u64;
        self.partial.extend_from_slice(tail);
        Ok(())
    }

    /// Adds a precomputed leaf hash for a full segment (used by the parallel pipeline).
    pub(crate) fn push_full_segment_leaf(&mut self, leaf: Hash32) {
        self.length += SEGMENT_SIZE as u64;
        self.push_leaf(leaf);
    }

    fn push_leaf(&mut self, leaf: Hash32) {
        if let Some(leaves) = self.leaves.as_mut() {
            leaves.push(leaf);
        }
        let mut node = (leaf, 1u64);
        while let Some(&(top, size)) = self.stack.last() {
            if size != node.1 {
                break;
            }
            self.stack.pop();
            node = (node_hash(&top, &node.0), size * 2);
        }
        self.stack.push(node);
    }

    fn flush_partial(&mut self) {
        if !self.partial.is_empty() {
            let leaf = leaf_hash_with(self.sha256, &self.partial);
            self.partial.clear();
            self.push_leaf(leaf);
        }
    }

    fn fold_stack(&self) -> Hash32 {
        let mut nodes = self.stack.iter().rev();
        let Some(&(mut acc, _)) = nodes.next() else {
            return empty_tree_hash();
        };
        for (left, _) in nodes {
            acc = node_hash(left, &acc);
        }
        acc
    }

    /// Finishes and returns the committed root with the length.
    pub fn finish(mut self) -> MerkleCommitment {
        self.flush_partial();
        MerkleCommitment {
            root: commit_root(&self.fold_stack(), self.length),
            length: self.length,
        }
    }

    /// Finishes and returns the full tree; only for builders made by
    /// [`MerkleBuilder::recording_leaves`] (otherwise the leaf list is empty and this fails
    /// for non-empty data).
    pub fn finish_tree(mut self) -> Result<MerkleTree, MerkleError> {
        self.flush_partial();
        let leaves = self.leaves.take().unwrap_or_default();
        MerkleTree::from_leaves(leaves, self.length)
    }
}

impl Write for MerkleBuilder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A `Write` adapter that passes bytes on to `inner` and hashes them into a Merkle builder.
#[derive(Debug)]
pub struct MerkleWriter<W> {
    inner: W,
    builder: MerkleBuilder,
}

impl<W: Write> MerkleWriter<W> {
    /// Wraps `inner`, hashing with `builder`.
    pub fn new(inner: W, builder: MerkleBuilder) -> Self {
        MerkleWriter { inner, builder }
    }

    /// Returns the inner writer and the builder.
    pub fn into_parts(self) -> (W, MerkleBuilder) {
        (self.inner, self.builder)
    }
}

impl<W: Write> Write for MerkleWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.builder.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A full leaf list with its data length, for making inclusion proofs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerkleTree {
    leaves: Vec<Hash32>,
    length: u64,
}

impl MerkleTree {
    /// Builds a tree from leaf hashes; their count must match `length`.
    pub fn from_leaves(leaves: Vec<Hash32>, length: u64) -> Result<Self, MerkleError> {
        let count = leaves.len() as u64;
        if count != segment_count(length) {
            return Err(MerkleError::LeafCountMismatch {
                leaves: count,
                length,
            });
        }
        Ok(MerkleTree { leaves, length })
    }

    /// Builds a tree over in-memory data.
    pub fn from_data(data: &[u8]) -> Self {
        let sha256 = DataPathImpl::active().sha256;
        let aligned = data.len() - data.len() % SEGMENT_SIZE;
        let mut leaves = Vec::with_capacity(data.len().div_ceil(SEGMENT_SIZE));
        full_leaf_hashes(sha256, &data[..aligned], |leaf| leaves.push(leaf));
        if aligned < data.len() {
            leaves.push(leaf_hash_with(sha256, &data[aligned..]));
        }
        MerkleTree {
            leaves,
            length: data.len() as u64,
        }
    }

    /// The data length.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// The leaf hashes.
    pub fn leaves(&self) -> &[Hash32] {
        &self.leaves
    }

    /// The leaf hash of segment `index`.
    pub fn leaf(&self, index: u64) -> Result<Hash32, MerkleError> {
        let count = self.leaves.len() as u64;
        usize::try_from(index)
            .ok()
            .and_then(|i| self.leaves.get(i).copied())
            .ok_or(MerkleError::IndexOutOfRange { index, count })
    }

    /// The committed root (length-bound).
    pub fn root(&self) -> Hash32 {
        commit_root(&tree_hash(&self.leaves), self.length)
    }

    /// Root and length together.
    pub fn commitment(&self) -> MerkleCommitment {
        MerkleCommitment {
            root: self.root(),
            length: self.length,
        }
    }

    /// The inclusion proof of segment `index`.
    pub fn proof(&self, index: u64) -> Result<MerkleProof, MerkleError> {
        self.leaf(index)?;
        let path = audit_path(index as usize, &self.leaves);
        Ok(MerkleProof { index, path })
    }
}

/// RFC 6962 PATH(m, D[n]) from the leaf upwards.
fn audit_path(index: usize, leaves: &[Hash32]) -> Vec<Hash32> {
    let n = leaves.len();
    if n <= 1 {
        return Vec::new();
    }
    let k = split_point(n);
    let (mut path, sibling) = if index < k {
        (audit_path(index, &leaves[..k]), tree_hash(&leaves[k..]))
    } else {
        (audit_path(index - k, &leaves[k..]), tree_hash(&leaves[..k]))
    };
    path.push(sibling);
    path
}

/// Checks that `segment` (its real bytes) is segment `index` of the data committed by
/// `root` and `length`.
pub fn verify_proof(
    root: &Hash32,
    length: u64,
    index: u64,
    segment: &[u8],
    proof: &MerkleProof,
) -> Result<(), MerkleError> {
    let expected = segment_len(length, index)?;
    if segment.len() != expected {
        return Err(MerkleError::WrongSegmentLength {
            got: segment.len(),
            expected,
        });
    }
    verify_leaf(root, length, index, &leaf_hash_unchecked(segment), proof)
}

/// Checks that `leaf` is the leaf hash at `index` of the tree committed by `root`, `length`.
pub fn verify_leaf(
    root: &Hash32,
    length: u64,
    index: u64,
    leaf: &Hash32,
    proof: &MerkleProof,
) -> Result<(), MerkleError> {
    if proof.index != index {
        return Err(MerkleError::IndexMismatch {
            proof: proof.index,
            claimed: index,
        });
    }
    let count = segment_count(length);
    if index >= count {
        return Err(MerkleError::IndexOutOfRange { index, count });
    }
    let tree = root_from_path(index, count, leaf, &proof.path)?;
    if commit_root(&tree, length) != *root {
        return Err(MerkleError::RootMismatch);
    }
    Ok(())
}

/// RFC 9162 2.1.3.2: recompute the tree hash from a leaf and its path.
fn root_from_path(
    index: u64,
    count: u64,
    leaf: &Hash32,
    path: &[Hash32],
) -> Result<Hash32, MerkleError> {
    let (mut fnode, mut snode) = (index, count - 1);
    let mut acc = *leaf;
    for sibling in path {
        if snode == 0 {
            return Err(MerkleError::BadPathLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            acc = node_hash(sibling, &acc);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            acc = node_hash(&acc, sibling);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(MerkleError::BadPathLength);
    }
    Ok(acc)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    /// Naive recursive reference: pad, hash every segment, recurse on halves.
    pub(crate) fn naive_root(data: &[u8]) -> Hash32 {
        fn mth(leaves: &[Hash32]) -> Hash32 {
            if leaves.is_empty() {
                return Sha256::digest([]).into();
            }
            if leaves.len() == 1 {
                return leaves[0];
            }
            let mut k = 1;
            while k * 2 < leaves.len() {
                k *= 2;
            }
            let mut h = Sha256::new();
            h.update([1]);
            h.update(mth(&leaves[..k]));
            h.update(mth(&leaves[k..]));
            h.finalize().into()
        }
        let leaves: Vec<Hash32> = data
            .chunks(SEGMENT_SIZE)
            .map(|c| {
                let mut padded = c.to_vec();
                padded.resize(SEGMENT_SIZE, 0);
                let mut h = Sha256::new();
                h.update([0]);
                h.update(&padded);
                h.finalize().into()
            })
            .collect();
        let mut h = Sha256::new();
        h.update([2]);
        h.update(mth(&leaves));
        h.update((data.len() as u64).to_be_bytes());
        h.finalize().into()
    }

    fn streamed_root(data: &[u8], piece: usize) -> MerkleCommitment {
        let mut builder = MerkleBuilder::new();
        for chunk in data.chunks(piece.max(1)) {
            builder.update(chunk);
        }
        builder.finish()
    }

    /// Parts fed by their leaves give the same root, checkpoint and recorded tree as
    /// the bytes fed whole, aligned or not, including a short last part and a part that
    /// starts mid-segment (which falls back to hashing the bytes).
    #[test]
    fn parts_fed_by_their_leaves_give_the_same_root_and_checkpoints() {
        let d = data(37 * SEGMENT_SIZE + 123);
        for cuts in [
            vec![0, 8 * SEGMENT_SIZE, 16 * SEGMENT_SIZE, d.len()],
            vec![0, 5 * SEGMENT_SIZE + 7, 9 * SEGMENT_SIZE, d.len()],
            vec![0, d.len()],
            vec![0, 0, SEGMENT_SIZE, d.len()],
        ] {
            let mut by_leaves = MerkleBuilder::recording_leaves();
            for w in cuts.windows(2) {
                let part = &d[w[0]..w[1]];
                by_leaves.push_part(part, &part_leaves(part)).unwrap();
                let mut by_bytes = MerkleBuilder::new();
                by_bytes.update(&d[..w[1]]);
                assert_eq!(by_leaves.checkpoint(), by_bytes.checkpoint(), "{cuts:?}");
            }
            let tree = by_leaves.finish_tree().unwrap();
            assert_eq!(tree.root(), naive_root(&d), "{cuts:?}");
            assert_eq!(tree, MerkleTree::from_data(&d));
        }
    }

    #[test]
    fn part_leaves_and_digests_bind_the_bytes_and_the_length() {
        let part = data(3 * SEGMENT_SIZE + 5);
        let leaves = part_leaves(&part);
        assert_eq!(leaves, MerkleTree::from_data(&part).leaves());
        let digest = part_digest(part.len() as u64, &leaves);
        let mut changed = part.clone();
        changed[SEGMENT_SIZE + 1] ^= 1;
        assert_ne!(
            part_digest(part.len() as u64, &part_leaves(&changed)),
            digest
        );
        // A zero byte appended pads to the same last leaf: only the length tells them apart.
        let mut longer = part.clone();
        longer.push(0);
        assert_eq!(part_leaves(&longer), leaves);
        assert_ne!(part_digest(longer.len() as u64, &leaves), digest);
        assert!(part_leaves(&[]).is_empty());
        // Leaves of the wrong count are refused and change nothing.
        let mut builder = MerkleBuilder::new();
        assert!(builder.push_part(&part, &leaves[..2]).is_err());
        assert_eq!(builder.length(), 0);
    }

    #[test]
    fn builder_matches_naive_for_0_to_70_segments() {
        for segments in 0..=70usize {
            for extra in [0usize, 1] {
                let len = (segments * SEGMENT_SIZE).saturating_sub(extra);
                let d = data(len);
                let expected = naive_root(&d);
                assert_eq!(
                    streamed_root(&d, 1000).root,
                    expected,
                    "n={segments} len={len}"
                );
                assert_eq!(streamed_root(&d, 8192).root, expected);
                assert_eq!(MerkleTree::from_data(&d).root(), expected);
            }
        }
    }

    #[test]
    fn root_commits_to_length() {
        // Same padded segment, different true length.
        let a = streamed_root(&[1, 2, 3], 10);
        let b = streamed_root(&[1, 2, 3, 0], 10);
        assert_ne!(a.root, b.root);
        let empty = MerkleBuilder::new().finish();
        assert_eq!(empty.length, 0);
        assert_eq!(empty.root, commit_root(&empty_tree_hash(), 0));
    }

    #[test]
    fn every_proof_verifies_for_many_sizes() {
        for segments in 1..=37usize {
            let d = data(segments * SEGMENT_SIZE - 5);
            let tree = MerkleTree::from_data(&d);
            let root = tree.root();
            for (i, seg) in d.chunks(SEGMENT_SIZE).enumerate() {
                let proof = tree.proof(i as u64).unwrap();
                verify_proof(&root, d.len() as u64, i as u64, seg, &proof).unwrap();
            }
        }
    }

    #[test]
    fn bad_proofs_are_rejected() {
        let d = data(13 * SEGMENT_SIZE + 100);
        let len = d.len() as u64;
        let tree = MerkleTree::from_data(&d);
        let root = tree.root();
        let seg = &d[5 * SEGMENT_SIZE..6 * SEGMENT_SIZE];
        let proof = tree.proof(5).unwrap();
        verify_proof(&root, len, 5, seg, &proof).unwrap();

        let mut flipped = seg.to_vec();
        flipped[17] ^= 1;
        assert_eq!(
            verify_proof(&root, len, 5, &flipped, &proof),
            Err(MerkleError::RootMismatch)
        );

        let mut wrong_index = proof.clone();
        wrong_index.index = 6;
        assert!(verify_proof(&root, len, 6, seg, &wrong_index).is_err());
        assert!(verify_proof(&root, len, 6, seg, &proof).is_err());

        let mut short = proof.clone();
        short.path.pop();
        assert_eq!(
            verify_proof(&root, len, 5, seg, &short),
            Err(MerkleError::BadPathLength)
        );
        let mut long = proof.clone();
        long.path.push([0; 32]);
        assert_eq!(
            verify_proof(&root, len, 5, seg, &long),
            Err(MerkleError::BadPathLength)
        );

        let other_root = MerkleTree::from_data(&data(100)).root();
        assert_eq!(
            verify_proof(&other_root, len, 5, seg, &proof),
            Err(MerkleError::RootMismatch)
        );
        assert!(verify_proof(&root, len + 1, 5, seg, &proof).is_err());
        assert!(verify_proof(&root, len, 99, seg, &proof).is_err());
    }

    #[test]
    fn last_segment_must_be_exact_length() {
        let d = data(2 * SEGMENT_SIZE + 10);
        let tree = MerkleTree::from_data(&d);
        let proof = tree.proof(2).unwrap();
        let last = &d[2 * SEGMENT_SIZE..];
        verify_proof(&tree.root(), d.len() as u64, 2, last, &proof).unwrap();
        let mut padded = last.to_vec();
        padded.push(0);
        assert!(verify_proof(&tree.root(), d.len() as u64, 2, &padded, &proof).is_err());
    }

    #[test]
    fn recording_builder_gives_tree() {
        let d = data(9 * SEGMENT_SIZE + 1);
        let mut builder = MerkleBuilder::recording_leaves();
        builder.write_all(&d).unwrap();
        let tree = builder.finish_tree().unwrap();
        assert_eq!(tree, MerkleTree::from_data(&d));
        assert!(MerkleTree::from_leaves(vec![[0; 32]], 5000).is_err());
    }

    #[test]
    fn checkpoints_resume_to_the_same_root() {
        let data: Vec<u8> = (0..(5 * SEGMENT_SIZE + 1234))
            .map(|i| (i * 7) as u8)
            .collect();
        let whole = {
            let mut b = MerkleBuilder::new();
            b.update(&data);
            b.finish()
        };
        for cut in [0, 1, SEGMENT_SIZE, 3 * SEGMENT_SIZE + 5, data.len()] {
            let mut first = MerkleBuilder::new();
            first.update(&data[..cut]);
            let cp = first.checkpoint();
            let json = serde_json::to_string(&cp).unwrap();
            let cp: MerkleCheckpoint = serde_json::from_str(&json).unwrap();
            let mut resumed = MerkleBuilder::resume(cp).unwrap();
            resumed.update(&data[cut..]);
            assert_eq!(resumed.finish(), whole, "cut at {cut}");
        }
    }

    #[test]
    fn inconsistent_checkpoints_are_refused() {
        let mut b = MerkleBuilder::new();
        b.update(&vec![1u8; 3 * SEGMENT_SIZE + 10]);
        let good = b.checkpoint();
        let mut bad = good.clone();
        bad.length += 1;
        assert_eq!(
            MerkleBuilder::resume(bad).unwrap_err(),
            MerkleError::BadCheckpoint
        );
        let mut bad = good.clone();
        bad.stack.reverse();
        assert_eq!(
            MerkleBuilder::resume(bad).unwrap_err(),
            MerkleError::BadCheckpoint
        );
        let mut bad = good.clone();
        bad.stack[0].1 = 3;
        assert_eq!(
            MerkleBuilder::resume(bad).unwrap_err(),
            MerkleError::BadCheckpoint
        );
        let mut bad = good.clone();
        bad.stack.push(([0; 32], u64::MAX));
        assert_eq!(
            MerkleBuilder::resume(bad).unwrap_err(),
            MerkleError::BadCheckpoint
        );
        let mut bad = good;
        bad.partial.push(0);
        assert_eq!(
            MerkleBuilder::resume(bad).unwrap_err(),
            MerkleError::BadCheckpoint
        );
    }

    /// Lengths around every boundary: segments, lane batches (8 and 16 leaves, and the
    /// quarter-batch threshold), 1 MiB chunks.
    const ODD_LENGTHS: [usize; 16] = [
        0,
        1,
        4095,
        4096,
        4097,
        3 * 4096,
        4 * 4096 + 7,
        8 * 4096,
        16 * 4096 - 1,
        16 * 4096 + 1,
        37 * 4096 + 100,
        (1 << 20) - 1,
        1 << 20,
        (1 << 20) + 1,
        3 * (1 << 20) + 5000,
        (1 << 20) + 31 * 4096,
    ];

    #[test]
    fn every_sha256_impl_gives_the_reference_leaves_and_roots() {
        for choice in Sha256Impl::ALL.into_iter().filter(|c| c.is_supported()) {
            for len in ODD_LENGTHS {
                let bytes = data(len);
                let expected = naive_root(&bytes);
                for piece in [len.max(1), 4096, 5000, 65536 + 3] {
                    let mut builder = MerkleBuilder::new().with_sha256(choice);
                    bytes.chunks(piece).for_each(|p| builder.update(p));
                    let got = builder.finish();
                    assert_eq!(got.root, expected, "{choice}, len {len}, piece {piece}");
                    assert_eq!(got.length, len as u64);
                }
            }
        }
    }

    #[test]
    fn every_sha256_impl_hashes_each_leaf_like_sha2() {
        let bytes = data(41 * SEGMENT_SIZE);
        let reference: Vec<Hash32> = bytes
            .chunks(SEGMENT_SIZE)
            .map(|s| {
                Sha256::new()
                    .chain_update([0])
                    .chain_update(s)
                    .finalize()
                    .into()
            })
            .collect();
        for choice in Sha256Impl::ALL.into_iter().filter(|c| c.is_supported()) {
            for count in 0..=41 {
                let mut got = Vec::new();
                full_leaf_hashes(choice, &bytes[..count * SEGMENT_SIZE], |h| got.push(h));
                assert_eq!(got, reference[..count], "{choice}, {count} leaves");
            }
            for len in [0, 1, 100, 4095, 4096] {
                let mut padded = bytes[..len].to_vec();
                padded.resize(SEGMENT_SIZE, 0);
                let expected: Hash32 = Sha256::new()
                    .chain_update([0])
                    .chain_update(&padded)
                    .finalize()
                    .into();
                assert_eq!(leaf_hash_with(choice, &bytes[..len]), expected, "{choice}");
            }
        }
    }
}
