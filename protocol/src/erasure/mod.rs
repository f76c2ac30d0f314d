//! Erasure coding of a file's ciphertext C into N shards of which any K rebuild it (issue 18).
//!
//! C (the datapath ciphertext of the whole file, encrypted once under the file key with the
//! file id as contract id) is cut into stripes of K·[`CHUNK`] bytes, the last one
//! zero-padded. Each stripe's K data chunks get N−K parity chunks from `reed-solomon-simd`.
//! Shard i is chunk i of every stripe, concatenated: shards 0..K hold C itself, K..N parity,
//! and every shard is [`shard_len`] bytes. Each shard is then stored as an ordinary contract.
//!
//! Everything streams stripe by stripe: memory is O(N·S) whatever the file size. Pure: no
//! I/O beyond the `Read`/`Write` values the caller passes in.

mod decode;
mod encode;
mod params;
#[cfg(test)]
mod tests;

pub use decode::{decode_and_decrypt, decode_c, decrypt_and_check, rebuild, ShardDecoder};
pub use encode::{encrypt_and_shard, ShardEncoder, Sharded};
pub use params::{shard_len, stripes, ParamsError, ShardParams, CHUNK, MAX_SHARDS};

use std::io;

use crate::datapath::DataPathError;

/// Why encoding, decoding or rebuilding shards failed.
#[derive(Debug, thiserror::Error)]
pub enum ErasureError {
    #[error("bad shard parameters: {0}")]
    Params(#[from] ParamsError),
    #[error("got {got} shard writers, expected {expected}")]
    WriterCount { got: usize, expected: usize },
    #[error("got {got} shard slots, expected {expected} (one per shard, None if missing)")]
    ShardCount { got: usize, expected: usize },
    #[error("only {present} shards present, {needed} needed to decode")]
    TooFewShards { present: usize, needed: usize },
    #[error("shard {index} is shorter than its expected length")]
    ShardTooShort { index: usize },
    #[error("shard {index} is longer than its expected length")]
    ShardTooLong { index: usize },
    #[error("bad shard to rebuild: {index} (out of range or repeated, or writer count differs)")]
    BadWanted { index: usize },
    #[error("the decoded ciphertext does not match the file's Merkle root")]
    RootMismatch,
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    DataPath(#[from] DataPathError),
    #[error("reed-solomon codec: {0}")]
    Codec(#[from] reed_solomon_simd::Error),
}

/// An [`ErasureError`] carried through an `io::Error` (plain i/o errors stay as they are).
fn into_io(error: ErasureError) -> io::Error {
    match error {
        ErasureError::Io(e) => e,
        other => io::Error::other(other),
    }
}

/// Unwraps an [`ErasureError`] that travelled through the datapath inside an `io::Error`.
fn from_datapath(error: DataPathError) -> ErasureError {
    let DataPathError::Io(error) = error else {
        return ErasureError::DataPath(error);
    };
    if !error
        .get_ref()
        .is_some_and(|inner| inner.is::<ErasureError>())
    {
        return ErasureError::Io(error);
    }
    match error
        .into_inner()
        .map(|inner| inner.downcast::<ErasureError>())
    {
        Some(Ok(inner)) => *inner,
        _ => unreachable!("checked to hold an ErasureError"),
    }
}
