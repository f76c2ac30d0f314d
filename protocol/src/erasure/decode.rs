//! Decoding: C streamed back from any K shards, decryption checked against root_C, and
//! rebuilding lost shards for repair.

use std::io::{self, Read, Write};

use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

use super::{from_datapath, into_io, stripes, ErasureError, ShardParams, CHUNK};
use crate::datapath::{decrypt_stream, read_full};
use crate::merkle::{MerkleBuilder, MerkleCommitment};

/// Reads C back stripe by stripe from K of the N shards (the lowest present indices, so
/// data shards are preferred and a file whose data shards are all present needs no
/// decoding). Implements `Read`, yielding exactly `c_len` bytes. Holds one stripe, the
/// parity chunks it reads, and the codec's work space.
pub struct ShardDecoder<R: Read> {
    params: ShardParams,
    used: Vec<usize>,
    readers: Vec<R>,
    stripe: Vec<u8>,
    parity: Vec<u8>,
    codec: Option<ReedSolomonDecoder>,
    stripes_left: u64,
    tails_checked: bool,
    /// Bytes of C not yet loaded into the stripe buffer.
    unloaded: u64,
    /// Read position and end of C's bytes in the current stripe buffer.
    pos: usize,
    end: usize,
}

impl<R: Read> ShardDecoder<R> {
    /// A decoder of C (`c_len` bytes) from `shards[i]` = shard i's bytes, None if missing;
    /// exactly N slots. Only the K used readers are kept (the others are dropped unread).
    pub fn new(
        params: ShardParams,
        c_len: u64,
        shards: Vec<Option<R>>,
    ) -> Result<Self, ErasureError> {
        let (used, readers) = choose_shards(params, shards)?;
        let parity_used = used.iter().filter(|&&i| i >= params.needed()).count();
        let codec = match parity_used {
            0 => None,
            _ => Some(ReedSolomonDecoder::new(
                params.needed(),
                params.parity(),
                CHUNK,
            )?),
        };
        Ok(ShardDecoder {
            params,
            used,
            readers,
            stripe: vec![0; params.needed() * CHUNK],
            parity: vec![0; parity_used * CHUNK],
            codec,
            stripes_left: stripes(c_len, params),
            tails_checked: false,
            unloaded: c_len,
            pos: 0,
            end: 0,
        })
    }

    /// The K shard indices this decoder reads, ascending.
    pub fn used_shards(&self) -> &[usize] {
        &self.used
    }

    /// The next full stripe (K·S bytes, padding included), None after the last one (once
    /// every used shard was checked to end exactly there).
    fn next_stripe(&mut self) -> Result<Option<&[u8]>, ErasureError> {
        if self.stripes_left == 0 {
            self.check_tails()?;
            return Ok(None);
        }
        self.read_chunks()?;
        self.restore_missing_data()?;
        self.stripes_left -= 1;
        Ok(Some(&self.stripe))
    }

    /// Reads this stripe's chunk of every used shard: data chunks straight into their
    /// place in the stripe, parity chunks into the parity buffer.
    fn read_chunks(&mut self) -> Result<(), ErasureError> {
        let needed = self.params.needed();
        let mut parity_slots = self.parity.chunks_exact_mut(CHUNK);
        let mut data_slots = self.stripe.chunks_exact_mut(CHUNK).enumerate();
        for (&index, reader) in self.used.iter().zip(&mut self.readers) {
            let slot = if index < needed {
                data_slots.find(|(i, _)| *i == index).map(|(_, s)| s)
            } else {
                parity_slots.next()
            };
            let slot = slot.expect("one slot per used shard");
            if read_full(reader, slot)? < CHUNK {
                return Err(ErasureError::ShardTooShort { index });
            }
        }
        Ok(())
    }

    /// Recovers the stripe's missing data chunks from the parity chunks read.
    fn restore_missing_data(&mut self) -> Result<(), ErasureError> {
        let Some(codec) = &mut self.codec else {
            return Ok(());
        };
        let needed = self.params.needed();
        let mut parity_chunks = self.parity.chunks_exact(CHUNK);
        for &index in &self.used {
            if index < needed {
                let chunk = &self.stripe[index * CHUNK..(index + 1) * CHUNK];
                codec.add_original_shard(index, chunk)?;
            } else {
                let chunk = parity_chunks
                    .next()
                    .expect("one parity chunk per used parity shard");
                codec.add_recovery_shard(index - needed, chunk)?;
            }
        }
        let restored = codec.decode()?;
        for (index, chunk) in restored.restored_original_iter() {
            self.stripe[index * CHUNK..(index + 1) * CHUNK].copy_from_slice(chunk);
        }
        Ok(())
    }

    /// Checks that every used shard ends exactly after its last chunk.
    fn check_tails(&mut self) -> Result<(), ErasureError> {
        if self.tails_checked {
            return Ok(());
        }
        for (&index, reader) in self.used.iter().zip(&mut self.readers) {
            if read_full(reader, &mut [0u8; 1])? != 0 {
                return Err(ErasureError::ShardTooLong { index });
            }
        }
        self.tails_checked = true;
        Ok(())
    }
}

impl<R: Read> Read for ShardDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.end {
            if self.next_stripe().map_err(into_io)?.is_none() {
                return Ok(0);
            }
            let end = self.unloaded.min(self.stripe.len() as u64) as usize;
            self.unloaded -= end as u64;
            (self.pos, self.end) = (0, end);
        }
        let n = buf.len().min(self.end - self.pos);
        buf[..n].copy_from_slice(&self.stripe[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The K lowest present shard indices and their readers.
fn choose_shards<R>(
    params: ShardParams,
    shards: Vec<Option<R>>,
) -> Result<(Vec<usize>, Vec<R>), ErasureError> {
    if shards.len() != params.shards() {
        return Err(ErasureError::ShardCount {
            got: shards.len(),
            expected: params.shards(),
        });
    }
    let present = shards.iter().filter(|s| s.is_some()).count();
    if present < params.needed() {
        return Err(ErasureError::TooFewShards {
            present,
            needed: params.needed(),
        });
    }
    Ok(shards
        .into_iter()
        .enumerate()
        .filter_map(|(i, s)| s.map(|r| (i, r)))
        .take(params.needed())
        .unzip())
}

/// Writes C (exactly `c_len` bytes) decoded from any K of the shards into `writer`.
pub fn decode_c<R: Read, W: Write>(
    params: ShardParams,
    c_len: u64,
    shards: Vec<Option<R>>,
    mut writer: W,
) -> Result<(), ErasureError> {
    let mut decoder = ShardDecoder::new(params, c_len, shards)?;
    let mut left = c_len;
    while let Some(stripe) = decoder.next_stripe()? {
        let take = left.min(stripe.len() as u64) as usize;
        writer.write_all(&stripe[..take])?;
        left -= take as u64;
    }
    writer.flush()?;
    Ok(())
}

/// Hashes everything read through it into a Merkle builder.
struct HashingReader<R> {
    inner: R,
    builder: MerkleBuilder,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.builder.update(&buf[..n]);
        Ok(n)
    }
}

/// Decrypts C from `reader` with the file key into `writer`, hashing C on the way, and
/// fails with [`ErasureError::RootMismatch`] unless C's root and length match `root_c`.
/// Returns the plaintext length. On any error the writer may already hold plaintext:
/// write to a temporary file and keep it only on `Ok`.
pub fn decrypt_and_check<R: Read, W: Write>(
    key: &[u8; 32],
    file_id: &[u8; 32],
    root_c: &MerkleCommitment,
    reader: R,
    mut writer: W,
) -> Result<u64, ErasureError> {
    let mut hashing = HashingReader {
        inner: reader,
        builder: MerkleBuilder::new(),
    };
    let plaintext_len =
        decrypt_stream(key, file_id, &mut hashing, &mut writer).map_err(from_datapath)?;
    if hashing.builder.finish() != *root_c {
        return Err(ErasureError::RootMismatch);
    }
    writer.flush()?;
    Ok(plaintext_len)
}

/// Decodes C from any K shards, decrypts it and checks root_C in one streaming pass (no
/// copy of C is kept); C's length is `root_c.length`. Same error contract as
/// [`decrypt_and_check`].
pub fn decode_and_decrypt<R: Read, W: Write>(
    key: &[u8; 32],
    file_id: &[u8; 32],
    params: ShardParams,
    root_c: &MerkleCommitment,
    shards: Vec<Option<R>>,
    writer: W,
) -> Result<u64, ErasureError> {
    let decoder = ShardDecoder::new(params, root_c.length, shards)?;
    decrypt_and_check(key, file_id, root_c, decoder, writer)
}

/// Regenerates shards `wanted[j]` into `writers[j]` from any K present shards, byte for
/// byte as the encoder wrote them (for repair). Returns the writers.
pub fn rebuild<R: Read, W: Write>(
    params: ShardParams,
    c_len: u64,
    shards: Vec<Option<R>>,
    wanted: &[usize],
    mut writers: Vec<W>,
) -> Result<Vec<W>, ErasureError> {
    check_wanted(params, wanted, writers.len())?;
    let needed = params.needed();
    let mut codec = match wanted.iter().any(|&i| i >= needed) {
        true => Some(ReedSolomonEncoder::new(needed, params.parity(), CHUNK)?),
        false => None,
    };
    let mut decoder = ShardDecoder::new(params, c_len, shards)?;
    while let Some(stripe) = decoder.next_stripe()? {
        for (&index, writer) in wanted.iter().zip(&mut writers) {
            if index < needed {
                writer.write_all(&stripe[index * CHUNK..(index + 1) * CHUNK])?;
            }
        }
        let Some(codec) = &mut codec else { continue };
        for chunk in stripe.chunks_exact(CHUNK) {
            codec.add_original_shard(chunk)?;
        }
        let parity = codec.encode()?;
        for (&index, writer) in wanted.iter().zip(&mut writers) {
            if let Some(chunk) = index.checked_sub(needed).and_then(|p| parity.recovery(p)) {
                writer.write_all(chunk)?;
            }
        }
    }
    for writer in &mut writers {
        writer.flush()?;
    }
    Ok(writers)
}

/// Wanted shard indices must be in range, distinct, and one per writer.
fn check_wanted(params: ShardParams, wanted: &[usize], writers: usize) -> Result<(), ErasureError> {
    if writers != wanted.len() {
        return Err(ErasureError::WriterCount {
            got: writers,
            expected: wanted.len(),
        });
    }
    for (position, &index) in wanted.iter().enumerate() {
        if index >= params.shards() || wanted[..position].contains(&index) {
            return Err(ErasureError::BadWanted { index });
        }
    }
    Ok(())
}
