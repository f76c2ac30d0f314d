//! Encoding: C's bytes in, chunk i of every stripe out to shard writer i.

use std::io::{self, Read, Write};

use reed_solomon_simd::ReedSolomonEncoder;

use super::{from_datapath, into_io, ErasureError, ShardParams, CHUNK};
use crate::datapath::encrypt_and_commit_parallel;
use crate::merkle::MerkleCommitment;

/// Splits C, written into it, into N shard writers stripe by stripe: the data chunks of
/// a stripe go to writers 0..K as they are, the parity chunks to writers K..N. Holds one
/// stripe (K·S bytes) plus the codec's work space.
pub struct ShardEncoder<W: Write> {
    params: ShardParams,
    writers: Vec<W>,
    stripe: Vec<u8>,
    filled: usize,
    codec: Option<ReedSolomonEncoder>,
}

impl<W: Write> ShardEncoder<W> {
    /// An encoder writing shard i to `writers[i]`; there must be exactly N writers.
    pub fn new(params: ShardParams, writers: Vec<W>) -> Result<Self, ErasureError> {
        if writers.len() != params.shards() {
            return Err(ErasureError::WriterCount {
                got: writers.len(),
                expected: params.shards(),
            });
        }
        let codec = match params.parity() {
            0 => None,
            parity => Some(ReedSolomonEncoder::new(params.needed(), parity, CHUNK)?),
        };
        Ok(ShardEncoder {
            params,
            writers,
            stripe: vec![0; params.needed() * CHUNK],
            filled: 0,
            codec,
        })
    }

    /// Zero-pads and encodes the last partial stripe, flushes, and returns the writers in
    /// shard order.
    pub fn finish(mut self) -> Result<Vec<W>, ErasureError> {
        if self.filled > 0 {
            self.stripe[self.filled..].fill(0);
            self.emit_stripe()?;
        }
        for writer in &mut self.writers {
            writer.flush()?;
        }
        Ok(self.writers)
    }

    /// Writes the full stripe buffer's data and parity chunks and empties it.
    fn emit_stripe(&mut self) -> Result<(), ErasureError> {
        let needed = self.params.needed();
        for (chunk, writer) in self.stripe.chunks_exact(CHUNK).zip(&mut self.writers) {
            writer.write_all(chunk)?;
        }
        if let Some(codec) = &mut self.codec {
            for chunk in self.stripe.chunks_exact(CHUNK) {
                codec.add_original_shard(chunk)?;
            }
            let parity = codec.encode()?;
            for (chunk, writer) in parity.recovery_iter().zip(&mut self.writers[needed..]) {
                writer.write_all(chunk)?;
            }
        }
        self.filled = 0;
        Ok(())
    }
}

impl<W: Write> Write for ShardEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while !rest.is_empty() {
            let take = rest.len().min(self.stripe.len() - self.filled);
            self.stripe[self.filled..self.filled + take].copy_from_slice(&rest[..take]);
            self.filled += take;
            rest = &rest[take..];
            if self.filled == self.stripe.len() {
                self.emit_stripe().map_err(into_io)?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writers.iter_mut().try_for_each(|w| w.flush())
    }
}

/// The result of [`encrypt_and_shard`]: C's Merkle commitment (root_C, and C's length as
/// `commitment.length`) and the shard writers back in shard order.
#[derive(Debug)]
pub struct Sharded<W> {
    pub commitment: MerkleCommitment,
    pub writers: Vec<W>,
}

/// Encrypts `reader` once into C (datapath, `file_id` as the contract id), commits to C's
/// Merkle root and erasure-codes C into the N `writers`, all in one streaming pass:
/// encryption on the calling thread, hashing and encoding overlapped on a second one.
pub fn encrypt_and_shard<R: Read, W: Write + Send>(
    key: &[u8; 32],
    file_id: &[u8; 32],
    reader: R,
    params: ShardParams,
    writers: Vec<W>,
) -> Result<Sharded<W>, ErasureError> {
    let mut encoder = ShardEncoder::new(params, writers)?;
    let commitment =
        encrypt_and_commit_parallel(key, file_id, reader, &mut encoder).map_err(from_datapath)?;
    let writers = encoder.finish()?;
    Ok(Sharded {
        commitment,
        writers,
    })
}
