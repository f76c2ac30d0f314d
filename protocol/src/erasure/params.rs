//! Shard parameters (N shards, any K rebuild) and the lengths they imply.

use serde::{Deserialize, Serialize};

/// Most shards one file may have.
pub const MAX_SHARDS: u8 = 32;
/// Bytes of one chunk (S): a stripe is K·S bytes of C, and each shard gets one chunk per stripe.
pub const CHUNK: usize = 256 * 1024;

/// Why shard parameters were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    #[error("needed (K) must be at least 1")]
    NeededZero,
    #[error("needed (K={needed}) exceeds shards (N={shards})")]
    NeededAboveShards { needed: u64, shards: u64 },
    #[error("shards (N={shards}) exceeds the maximum of {max}")]
    TooManyShards { shards: u64, max: u8 },
}

/// N shards of which any K rebuild the file; always valid (checked on construction and on
/// deserialisation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawShardParams")]
pub struct ShardParams {
    shards: u8,
    needed: u8,
}

/// The unchecked serde form of [`ShardParams`].
#[derive(Deserialize)]
struct RawShardParams {
    shards: u64,
    needed: u64,
}

impl TryFrom<RawShardParams> for ShardParams {
    type Error = ParamsError;

    fn try_from(raw: RawShardParams) -> Result<Self, ParamsError> {
        check(raw.shards, raw.needed)
    }
}

fn check(shards: u64, needed: u64) -> Result<ShardParams, ParamsError> {
    if shards > u64::from(MAX_SHARDS) {
        return Err(ParamsError::TooManyShards {
            shards,
            max: MAX_SHARDS,
        });
    }
    if needed == 0 {
        return Err(ParamsError::NeededZero);
    }
    if needed > shards {
        return Err(ParamsError::NeededAboveShards { needed, shards });
    }
    Ok(ShardParams {
        shards: shards as u8,
        needed: needed as u8,
    })
}

impl ShardParams {
    /// Checked parameters: refuses K = 0, K > N and N > [`MAX_SHARDS`].
    pub fn new(shards: u64, needed: u64) -> Result<Self, super::ErasureError> {
        Ok(check(shards, needed)?)
    }

    /// N, the number of shards.
    pub fn shards(&self) -> usize {
        usize::from(self.shards)
    }

    /// K, the number of shards any of which rebuild the file (also the data shards 0..K).
    pub fn needed(&self) -> usize {
        usize::from(self.needed)
    }

    /// N − K, the number of parity shards (indices K..N).
    pub fn parity(&self) -> usize {
        self.shards() - self.needed()
    }

    /// Bytes of C in one stripe (K·S).
    pub(crate) fn stripe_bytes(&self) -> u64 {
        (self.needed() * CHUNK) as u64
    }
}

/// Number of stripes C of `c_len` bytes occupies (the last one zero-padded).
pub fn stripes(c_len: u64, params: ShardParams) -> u64 {
    c_len.div_ceil(params.stripe_bytes())
}

/// Length of every shard of C of `c_len` bytes: one chunk per stripe.
pub fn shard_len(c_len: u64, params: ShardParams) -> u64 {
    stripes(c_len, params) * CHUNK as u64
}
