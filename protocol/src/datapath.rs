//! Streaming AES-256-GCM file encryption in 1 MiB chunks (STREAM construction, PROTOCOL.md 1.1).
//!
//! Chunk i of the plaintext (1 MiB, the last one possibly shorter, and possibly empty when
//! the whole plaintext is empty) is sealed with AES-256-GCM under:
//!
//! * nonce = contract_id[0..7] ‖ i as u32 big-endian ‖ last-chunk flag (0x01 last, 0x00 not)
//! * AAD   = the 32-byte contract id
//!
//! and written as ciphertext ‖ 16-byte tag. Dropping, reordering or appending chunks, or a
//! wrong key or contract id, makes decryption fail. Memory use is one chunk buffer whatever
//! the size. On an error the writer may already hold plaintext of earlier chunks: callers
//! must discard the output of a failed decryption.
//!
//! Encryption can feed the segment Merkle tree as it writes ([`encrypt_and_commit`]), and
//! [`encrypt_and_commit_parallel`] overlaps encryption and hashing on two threads. The
//! AES-GCM and SHA-256 implementations are the ones [`crate::cpu`] chose for this CPU; all
//! give the same bytes.

use std::io::{self, Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use ring::aead::{Aad, LessSafeKey, UnboundKey, AES_256_GCM};

use crate::cpu::{AesGcmImpl, DataPathImpl};
use crate::merkle::{
    full_leaf_hashes, Hash32, MerkleBuilder, MerkleCommitment, MerkleTree, MerkleWriter,
    SEGMENT_SIZE,
};

/// Plaintext bytes per chunk.
pub const CHUNK_SIZE: usize = 1 << 20;
/// Bytes of GCM tag appended to every chunk.
pub const TAG_SIZE: usize = 16;
/// Ciphertext bytes of a full chunk.
pub const SEALED_CHUNK_SIZE: usize = CHUNK_SIZE + TAG_SIZE;

/// Why encryption or decryption failed.
#[derive(Debug, thiserror::Error)]
pub enum DataPathError {
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("ciphertext is truncated")]
    Truncated,
    #[error("chunk {chunk} failed authentication (tampered, reordered, truncated, or wrong key/contract)")]
    Authentication { chunk: u32 },
    #[error("input exceeds 2^32 chunks")]
    TooLarge,
    #[error("the hashing thread failed")]
    Worker,
    #[error(transparent)]
    Merkle(#[from] crate::merkle::MerkleError),
}

/// The 12-byte nonce of chunk `index`.
pub fn chunk_nonce(contract_id: &[u8; 32], index: u32, last: bool) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[..7].copy_from_slice(&contract_id[..7]);
    nonce[7..11].copy_from_slice(&index.to_be_bytes());
    nonce[11] = u8::from(last);
    nonce
}

/// Ciphertext length for a plaintext of `plaintext_len` bytes (None on overflow).
pub fn ciphertext_len(plaintext_len: u64) -> Option<u64> {
    let chunks = plaintext_len.div_ceil(CHUNK_SIZE as u64).max(1);
    plaintext_len.checked_add(chunks.checked_mul(TAG_SIZE as u64)?)
}

/// Plaintext length for a well-formed ciphertext of `ciphertext_len` bytes.
pub fn plaintext_len(ciphertext_len: u64) -> Result<u64, DataPathError> {
    let sealed = SEALED_CHUNK_SIZE as u64;
    let chunks = ciphertext_len.div_ceil(sealed).max(1);
    let last = ciphertext_len - (chunks - 1) * sealed;
    if last < TAG_SIZE as u64 || (chunks > 1 && last == TAG_SIZE as u64) {
        return Err(DataPathError::Truncated);
    }
    Ok(ciphertext_len - chunks * TAG_SIZE as u64)
}

/// AES-256-GCM under one key, by the implementation chosen for this CPU.
enum ChunkCipher {
    Ring(Box<LessSafeKey>),
    RustCrypto(Box<Aes256Gcm>),
}

impl ChunkCipher {
    fn new(choice: AesGcmImpl, key: &[u8; 32]) -> Self {
        match choice {
            AesGcmImpl::Ring => ChunkCipher::Ring(Box::new(LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, key).expect("AES-256 takes a 32-byte key"),
            ))),
            AesGcmImpl::RustCrypto => ChunkCipher::RustCrypto(Box::new(Aes256Gcm::new(key.into()))),
        }
    }

    /// Encrypts `chunk` in place; returns the tag. Fails only past GCM's length limit.
    fn seal(&self, nonce: [u8; 12], aad: &[u8], chunk: &mut [u8]) -> Option<[u8; TAG_SIZE]> {
        match self {
            ChunkCipher::Ring(key) => {
                let nonce = ring::aead::Nonce::assume_unique_for_key(nonce);
                let tag = key
                    .seal_in_place_separate_tag(nonce, Aad::from(aad), chunk)
                    .ok()?;
                tag.as_ref().try_into().ok()
            }
            ChunkCipher::RustCrypto(cipher) => cipher
                .encrypt_in_place_detached(Nonce::from_slice(&nonce), aad, chunk)
                .ok()
                .map(Into::into),
        }
    }

    /// Decrypts `body` in place if `tag` authenticates it; false (body unspecified) if not.
    fn open(&self, nonce: [u8; 12], aad: &[u8], body: &mut [u8], tag: &[u8]) -> bool {
        match self {
            ChunkCipher::Ring(key) => {
                let nonce = ring::aead::Nonce::assume_unique_for_key(nonce);
                let Ok(tag) = <[u8; TAG_SIZE]>::try_from(tag) else {
                    return false;
                };
                key.open_in_place_separate_tag(nonce, Aad::from(aad), tag.into(), body, 0..)
                    .is_ok()
            }
            ChunkCipher::RustCrypto(cipher) => cipher
                .decrypt_in_place_detached(
                    Nonce::from_slice(&nonce),
                    aad,
                    body,
                    Tag::from_slice(tag),
                )
                .is_ok(),
        }
    }
}

/// Reads until `buf` is full or the reader is exhausted; returns the bytes read.
pub(crate) fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads plaintext chunks with one byte of look-ahead, to know which chunk is the last.
struct ChunkReader<R> {
    reader: R,
    buf: Vec<u8>,
    filled: usize,
    started: bool,
    done: bool,
}

impl<R: Read> ChunkReader<R> {
    fn new(reader: R, chunk: usize) -> Self {
        ChunkReader {
            reader,
            buf: vec![0; chunk + 1],
            filled: 0,
            started: false,
            done: false,
        }
    }

    /// The next chunk and whether it is the last one; None after the last.
    fn next_chunk(&mut self) -> io::Result<Option<(&mut [u8], bool)>> {
        if self.done {
            return Ok(None);
        }
        let chunk = self.buf.len() - 1;
        if self.started {
            self.buf[0] = self.buf[chunk];
            self.filled = 1;
        }
        self.started = true;
        self.filled += read_full(&mut self.reader, &mut self.buf[self.filled..])?;
        let last = self.filled <= chunk;
        self.done = last;
        let len = self.filled.min(chunk);
        Ok(Some((&mut self.buf[..len], last)))
    }
}

/// Encrypts `reader` into `writer`; returns the ciphertext length.
pub fn encrypt_stream(
    key: &[u8; 32],
    contract_id: &[u8; 32],
    reader: impl Read,
    mut writer: impl Write,
) -> Result<u64, DataPathError> {
    let mut emit = |chunk: &[u8], tag: &[u8]| -> io::Result<()> {
        writer.write_all(chunk)?;
        writer.write_all(tag)
    };
    let aes_gcm = DataPathImpl::active().aes_gcm;
    encrypt_chunks(aes_gcm, key, contract_id, reader, &mut emit)
}

/// Receives each sealed chunk as (ciphertext, tag).
type ChunkSink<'a> = dyn FnMut(&[u8], &[u8]) -> io::Result<()> + 'a;

/// The encryption loop: seals each chunk in place and hands (ciphertext, tag) to `emit`.
fn encrypt_chunks(
    aes_gcm: AesGcmImpl,
    key: &[u8; 32],
    contract_id: &[u8; 32],
    reader: impl Read,
    emit: &mut ChunkSink<'_>,
) -> Result<u64, DataPathError> {
    let cipher = ChunkCipher::new(aes_gcm, key);
    let mut chunks = ChunkReader::new(reader, CHUNK_SIZE);
    let mut index: u32 = 0;
    let mut total = 0u64;
    while let Some((chunk, last)) = chunks.next_chunk()? {
        let nonce = chunk_nonce(contract_id, index, last);
        let tag = cipher
            .seal(nonce, contract_id, chunk)
            .ok_or(DataPathError::TooLarge)?;
        emit(chunk, &tag)?;
        total += (chunk.len() + TAG_SIZE) as u64;
        if !last {
            index = index.checked_add(1).ok_or(DataPathError::TooLarge)?;
        }
    }
    Ok(total)
}

/// Decrypts `reader` into `writer`; returns the plaintext length.
pub fn decrypt_stream(
    key: &[u8; 32],
    contract_id: &[u8; 32],
    reader: impl Read,
    writer: impl Write,
) -> Result<u64, DataPathError> {
    decrypt_with_impl(
        DataPathImpl::active().aes_gcm,
        key,
        contract_id,
        reader,
        writer,
    )
}

/// [`decrypt_stream`] with the given AES-GCM implementation.
fn decrypt_with_impl(
    aes_gcm: AesGcmImpl,
    key: &[u8; 32],
    contract_id: &[u8; 32],
    reader: impl Read,
    mut writer: impl Write,
) -> Result<u64, DataPathError> {
    let cipher = ChunkCipher::new(aes_gcm, key);
    let mut chunks = ChunkReader::new(reader, SEALED_CHUNK_SIZE);
    let mut index: u32 = 0;
    let mut total = 0u64;
    while let Some((sealed, last)) = chunks.next_chunk()? {
        let body_len = sealed
            .len()
            .checked_sub(TAG_SIZE)
            .ok_or(DataPathError::Truncated)?;
        let (body, tag) = sealed.split_at_mut(body_len);
        let nonce = chunk_nonce(contract_id, index, last);
        if !cipher.open(nonce, contract_id, body, tag) {
            return Err(DataPathError::Authentication { chunk: index });
        }
        writer.write_all(body)?;
        total += body.len() as u64;
        if !last {
            index = index.checked_add(1).ok_or(DataPathError::TooLarge)?;
        }
    }
    Ok(total)
}

/// Encrypts and builds the ciphertext's Merkle commitment in the same pass.
pub fn encrypt_and_commit(
    key: &[u8; 32],
    contract_id: &[u8; 32],
    reader: impl Read,
    writer: impl Write,
) -> Result<MerkleCommitment, DataPathError> {
    encrypt_and_commit_with(DataPathImpl::active(), key, contract_id, reader, writer)
}

/// [`encrypt_and_commit`] with the given implementations.
fn encrypt_and_commit_with(
    choice: DataPathImpl,
    key: &[u8; 32],
    contract_id: &[u8; 32],
    reader: impl Read,
    writer: impl Write,
) -> Result<MerkleCommitment, DataPathError> {
    let builder = MerkleBuilder::new().with_sha256(choice.sha256);
    let mut tee = MerkleWriter::new(writer, builder);
    let mut emit = |chunk: &[u8], tag: &[u8]| -> io::Result<()> {
        tee.write_all(chunk)?;
        tee.write_all(tag)
    };
    encrypt_chunks(choice.aes_gcm, key, contract_id, reader, &mut emit)?;
    Ok(tee.into_parts().1.finish())
}

/// Encrypts and returns the ciphertext's full Merkle tree (leaf list, 32 bytes per
/// segment), which a renter keeps to be able to prove farmer fraud later (see `seal`).
pub fn encrypt_and_build_tree(
    key: &[u8; 32],
    contract_id: &[u8; 32],
    reader: impl Read,
    writer: impl Write,
) -> Result<MerkleTree, DataPathError> {
    let mut tee = MerkleWriter::new(writer, MerkleBuilder::recording_leaves());
    encrypt_stream(key, contract_id, reader, &mut tee)?;
    Ok(tee.into_parts().1.finish_tree()?)
}

/// Segment-aligned ciphertext block sent from the encrypting to the hashing thread, with
/// the leaf hashes of its first `leaves.len()` segments already computed by the encryptor.
struct Block {
    bytes: Vec<u8>,
    leaves: Vec<Hash32>,
}

/// Same result as [`encrypt_and_commit`], with encryption and hashing overlapped on two
/// threads: the calling thread encrypts and hashes a share of each block's segments, a
/// scoped worker hashes the rest and writes. Memory: a few 1 MiB buffers.
pub fn encrypt_and_commit_parallel<W: Write + Send>(
    key: &[u8; 32],
    contract_id: &[u8; 32],
    reader: impl Read,
    writer: W,
) -> Result<MerkleCommitment, DataPathError> {
    encrypt_and_commit_parallel_with(DataPathImpl::active(), key, contract_id, reader, writer)
}

/// [`encrypt_and_commit_parallel`] with the given implementations.
fn encrypt_and_commit_parallel_with<W: Write + Send>(
    choice: DataPathImpl,
    key: &[u8; 32],
    contract_id: &[u8; 32],
    reader: impl Read,
    writer: W,
) -> Result<MerkleCommitment, DataPathError> {
    const IN_FLIGHT: usize = 3;
    std::thread::scope(|scope| {
        let (full_tx, full_rx) = sync_channel::<Block>(IN_FLIGHT);
        let (free_tx, free_rx) = sync_channel::<Vec<u8>>(IN_FLIGHT + 2);
        let builder = MerkleBuilder::new().with_sha256(choice.sha256);
        let worker = scope.spawn(move || hash_and_write(full_rx, free_tx, writer, builder));
        let pipe = Pipe {
            choice,
            full_tx: &full_tx,
            free_rx: &free_rx,
        };
        let produced = produce_blocks(key, contract_id, reader, &pipe);
        drop(full_tx);
        let written = worker.join().map_err(|_| DataPathError::Worker)?;
        produced?;
        written
    })
}

/// Share (in 1/16ths) of each block's segments hashed by the encrypting thread, chosen so
/// AES-GCM plus this share takes about as long as the remaining share plus writing.
const ENCRYPTOR_HASH_SIXTEENTHS: usize = 6;

/// The encrypting side's ends of the pipeline.
struct Pipe<'a> {
    choice: DataPathImpl,
    full_tx: &'a SyncSender<Block>,
    free_rx: &'a Receiver<Vec<u8>>,
}

fn produce_blocks(
    key: &[u8; 32],
    contract_id: &[u8; 32],
    reader: impl Read,
    pipe: &Pipe<'_>,
) -> Result<(), DataPathError> {
    let mut pending: Vec<u8> = Vec::with_capacity(SEALED_CHUNK_SIZE + SEGMENT_SIZE);
    let mut emit = |chunk: &[u8], tag: &[u8]| -> io::Result<()> {
        pending.extend_from_slice(chunk);
        pending.extend_from_slice(tag);
        let aligned = pending.len() - pending.len() % SEGMENT_SIZE;
        send_block(&mut pending, aligned, pipe)
    };
    encrypt_chunks(pipe.choice.aes_gcm, key, contract_id, reader, &mut emit)?;
    let rest = pending.len();
    send_block(&mut pending, rest, pipe)?;
    Ok(())
}

/// Moves the first `len` bytes of `pending` into a block (hashing the encryptor's share of
/// its full segments) and sends it.
fn send_block(pending: &mut Vec<u8>, len: usize, pipe: &Pipe<'_>) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let mut bytes = pipe.free_rx.try_recv().unwrap_or_default();
    bytes.clear();
    bytes.extend_from_slice(&pending[..len]);
    pending.drain(..len);
    let full_segments = len / SEGMENT_SIZE;
    let mine = full_segments * ENCRYPTOR_HASH_SIXTEENTHS / 16;
    let mut leaves = Vec::with_capacity(mine);
    full_leaf_hashes(pipe.choice.sha256, &bytes[..mine * SEGMENT_SIZE], |leaf| {
        leaves.push(leaf)
    });
    pipe.full_tx
        .send(Block { bytes, leaves })
        .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "hashing thread stopped"))
}

fn hash_and_write<W: Write>(
    full_rx: Receiver<Block>,
    free_tx: SyncSender<Vec<u8>>,
    writer: W,
    mut builder: MerkleBuilder,
) -> Result<MerkleCommitment, DataPathError> {
    let mut writer = writer;
    for block in full_rx {
        writer.write_all(&block.bytes)?;
        let hashed = block.leaves.len() * SEGMENT_SIZE;
        for leaf in block.leaves {
            builder.push_full_segment_leaf(leaf);
        }
        builder.update(&block.bytes[hashed..]);
        let _ = free_tx.try_send(block.bytes);
    }
    Ok(builder.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];
    const CONTRACT: [u8; 32] = [9; 32];
    const MIB: usize = 1 << 20;

    fn plaintext(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
            .collect()
    }

    fn encrypt(p: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let n = encrypt_stream(&KEY, &CONTRACT, p, &mut out).unwrap();
        assert_eq!(n, out.len() as u64);
        out
    }

    fn decrypt(c: &[u8]) -> Result<Vec<u8>, DataPathError> {
        decrypt_stream_with(&KEY, &CONTRACT, c)
    }

    fn decrypt_stream_with(
        key: &[u8; 32],
        contract: &[u8; 32],
        c: &[u8],
    ) -> Result<Vec<u8>, DataPathError> {
        let mut out = Vec::new();
        decrypt_stream(key, contract, c, &mut out)?;
        Ok(out)
    }

    #[test]
    fn round_trips_at_boundary_sizes() {
        for len in [
            0,
            1,
            4095,
            4096,
            MIB - 1,
            MIB,
            MIB + 1,
            2 * MIB,
            3 * MIB + 5,
        ] {
            let p = plaintext(len);
            let c = encrypt(&p);
            assert_eq!(
                c.len() as u64,
                ciphertext_len(len as u64).unwrap(),
                "len {len}"
            );
            assert_eq!(plaintext_len(c.len() as u64).unwrap(), len as u64);
            assert_eq!(decrypt(&c).unwrap(), p, "len {len}");
        }
    }

    #[test]
    fn empty_plaintext_is_one_tagged_chunk() {
        assert_eq!(encrypt(&[]).len(), TAG_SIZE);
        assert!(matches!(decrypt(&[]), Err(DataPathError::Truncated)));
    }

    #[test]
    fn tampering_is_detected() {
        let c = encrypt(&plaintext(MIB + 10));
        let mut flipped = c.clone();
        flipped[MIB + 20] ^= 1;
        assert!(matches!(
            decrypt(&flipped),
            Err(DataPathError::Authentication { chunk: 1 })
        ));
        let mut tag_flipped = c.clone();
        tag_flipped[SEALED_CHUNK_SIZE - 1] ^= 0x80;
        assert!(matches!(
            decrypt(&tag_flipped),
            Err(DataPathError::Authentication { chunk: 0 })
        ));
    }

    #[test]
    fn truncation_is_detected() {
        let c = encrypt(&plaintext(2 * MIB + 10));
        // Drop the last chunk entirely: the new last chunk was not sealed as last.
        assert!(decrypt(&c[..2 * SEALED_CHUNK_SIZE]).is_err());
        assert!(decrypt(&c[..SEALED_CHUNK_SIZE]).is_err());
        assert!(decrypt(&c[..c.len() - 1]).is_err());
        assert!(decrypt(&c[..10]).is_err());
    }

    #[test]
    fn reordering_and_extension_are_detected() {
        let c = encrypt(&plaintext(3 * MIB));
        let mut swapped = Vec::new();
        swapped.extend_from_slice(&c[SEALED_CHUNK_SIZE..2 * SEALED_CHUNK_SIZE]);
        swapped.extend_from_slice(&c[..SEALED_CHUNK_SIZE]);
        swapped.extend_from_slice(&c[2 * SEALED_CHUNK_SIZE..]);
        assert!(decrypt(&swapped).is_err());
        let mut extended = c.clone();
        extended.extend_from_slice(&c[..SEALED_CHUNK_SIZE]);
        assert!(decrypt(&extended).is_err());
        let mut extra_byte = c.clone();
        extra_byte.push(0);
        assert!(decrypt(&extra_byte).is_err());
    }

    #[test]
    fn wrong_key_or_contract_fails() {
        let c = encrypt(&plaintext(100));
        assert!(decrypt_stream_with(&[8; 32], &CONTRACT, &c).is_err());
        let mut other = CONTRACT;
        other[31] ^= 1; // outside the nonce prefix: only the AAD differs
        assert!(decrypt_stream_with(&KEY, &other, &c).is_err());
    }

    #[test]
    fn commit_variants_agree_with_tree_of_ciphertext() {
        for len in [0, 5000, MIB, 2 * MIB + 3] {
            let p = plaintext(len);
            let c = encrypt(&p);
            let expected = MerkleTree::from_data(&c).commitment();
            let mut out1 = Vec::new();
            assert_eq!(
                encrypt_and_commit(&KEY, &CONTRACT, &p[..], &mut out1).unwrap(),
                expected
            );
            let mut out2 = Vec::new();
            assert_eq!(
                encrypt_and_commit_parallel(&KEY, &CONTRACT, &p[..], &mut out2).unwrap(),
                expected
            );
            let mut out3 = Vec::new();
            let tree = encrypt_and_build_tree(&KEY, &CONTRACT, &p[..], &mut out3).unwrap();
            assert_eq!(tree.commitment(), expected);
            assert_eq!(out1, c);
            assert_eq!(out2, c);
            assert_eq!(out3, c);
        }
    }

    #[test]
    fn nonce_layout() {
        let n = chunk_nonce(&CONTRACT, 0x01020304, true);
        assert_eq!(&n[..7], &CONTRACT[..7]);
        assert_eq!(&n[7..], &[1, 2, 3, 4, 1]);
    }

    #[test]
    fn plaintext_len_rejects_impossible_lengths() {
        assert!(plaintext_len(15).is_err());
        assert!(plaintext_len(SEALED_CHUNK_SIZE as u64 + 16).is_err());
        assert_eq!(
            plaintext_len(SEALED_CHUNK_SIZE as u64 + 17).unwrap(),
            MIB as u64 + 1
        );
    }

    /// Every implementation choice this CPU supports.
    fn every_choice() -> Vec<DataPathImpl> {
        use crate::cpu::Sha256Impl;
        Sha256Impl::ALL
            .into_iter()
            .filter(|c| c.is_supported())
            .flat_map(|sha256| AesGcmImpl::ALL.map(|aes_gcm| DataPathImpl { sha256, aes_gcm }))
            .collect()
    }

    #[test]
    fn every_impl_gives_the_same_ciphertext_and_root() {
        for len in [
            0,
            1,
            4095,
            4096,
            4097,
            MIB - 1,
            MIB,
            MIB + 1,
            3 * MIB + 5,
            4 * MIB + 17 * 4096,
        ] {
            let p = plaintext(len);
            // The reference: the aes-gcm crate and the naive sha2 tree of the tests.
            let mut reference = Vec::new();
            let mut emit = |chunk: &[u8], tag: &[u8]| -> io::Result<()> {
                reference.extend_from_slice(chunk);
                reference.extend_from_slice(tag);
                Ok(())
            };
            encrypt_chunks(AesGcmImpl::RustCrypto, &KEY, &CONTRACT, &p[..], &mut emit).unwrap();
            let root = crate::merkle::tests::naive_root(&reference);
            for choice in every_choice() {
                let mut serial = Vec::new();
                let c1 =
                    encrypt_and_commit_with(choice, &KEY, &CONTRACT, &p[..], &mut serial).unwrap();
                let mut parallel = Vec::new();
                let c2 = encrypt_and_commit_parallel_with(
                    choice,
                    &KEY,
                    &CONTRACT,
                    &p[..],
                    &mut parallel,
                )
                .unwrap();
                for (c, out) in [(c1, &serial), (c2, &parallel)] {
                    assert_eq!(c.root, root, "{choice}, len {len}");
                    assert_eq!(c.length, reference.len() as u64, "{choice}, len {len}");
                    assert!(*out == reference, "{choice}, len {len}: ciphertext differs");
                }
                let mut back = Vec::new();
                decrypt_with_impl(choice.aes_gcm, &KEY, &CONTRACT, &serial[..], &mut back).unwrap();
                assert!(back == p, "{choice}, len {len}: round trip");
            }
        }
    }

    #[test]
    fn every_aes_impl_rejects_a_flipped_bit() {
        let c = encrypt(&plaintext(MIB + 10));
        for aes_gcm in AesGcmImpl::ALL {
            let mut flipped = c.clone();
            flipped[MIB + 20] ^= 1;
            let got = decrypt_with_impl(aes_gcm, &KEY, &CONTRACT, &flipped[..], io::sink());
            assert!(
                matches!(got, Err(DataPathError::Authentication { chunk: 1 })),
                "{aes_gcm}"
            );
        }
    }
}
