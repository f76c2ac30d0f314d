//! Multi-lane SHA-256 of whole Merkle leaves (x86_64 AVX2 / AVX-512F): 8 or 16 segments hashed at once, one per SIMD lane.
//!
//! Every leaf message has the same shape, 0x00 ‖ 4096-byte segment ‖ SHA-256 padding (65
//! blocks), so N leaves run the 64 rounds of each block side by side in the N 32-bit lanes
//! of one vector register. On CPUs without SHA-NI this is several times faster than one
//! stream at a time, and on AVX-512 CPUs it is faster than SHA-NI. Callers check the CPU
//! feature (see [`super::Sha256Impl::is_supported`]) before calling the `leaves` functions.
//! The output is plain SHA-256: the tests compare every lane with the `sha2` crate.
//! Our own because no maintained crate hashes several equal-length messages side by side
//! (`sha2` and `ring` hash one stream at a time).

use core::arch::x86_64::*;

// FIPS 180-4's constants, shared with the R1CS gadget's native reference.
use crate::zk::sha256_gadget::{IV as H0, K};

const SEG: usize = crate::merkle::SEGMENT_SIZE;

/// Leaf hashes of 16 full segments with AVX-512F, or None if this CPU lacks it.
pub(crate) fn leaves_x16(segments: [&[u8; SEG]; 16]) -> Option<[[u8; 32]; 16]> {
    // SAFETY: the CPU has the feature `avx512::leaves` is compiled for.
    std::arch::is_x86_feature_detected!("avx512f").then(|| unsafe { avx512::leaves(segments) })
}

/// Leaf hashes of 8 full segments with AVX2, or None if this CPU lacks it.
pub(crate) fn leaves_x8(segments: [&[u8; SEG]; 8]) -> Option<[[u8; 32]; 8]> {
    // SAFETY: the CPU has the feature `avx2::leaves` is compiled for.
    std::arch::is_x86_feature_detected!("avx2").then(|| unsafe { avx2::leaves(segments) })
}

/// Block `block` (0..65) of the leaf message 0x00 ‖ segment ‖ SHA-256 padding.
#[inline(always)]
fn message_block(segment: &[u8; SEG], block: usize) -> [u8; 64] {
    let mut bytes = [0u8; 64];
    match block {
        0 => bytes[1..].copy_from_slice(&segment[..63]),
        64 => {
            bytes[0] = segment[SEG - 1];
            bytes[1] = 0x80;
            bytes[56..].copy_from_slice(&((SEG as u64 + 1) * 8).to_be_bytes());
        }
        _ => bytes.copy_from_slice(&segment[64 * block - 1..64 * block + 63]),
    }
    bytes
}

/// The 16 big-endian message words of one block per lane, word-major: `[t][lane]`.
#[inline(always)]
fn transposed_words<const N: usize>(blocks: &[[u8; 64]; N]) -> [[u32; N]; 16] {
    let mut words = [[0u32; N]; 16];
    for (lane, bytes) in blocks.iter().enumerate() {
        for (t, word) in bytes.chunks_exact(4).enumerate() {
            words[t][lane] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
    }
    words
}

/// One SHA-256 round on every lane, with the message schedule from round 16 on. `$s`
/// is the working state `[a..h]`, `$w` the rolling 16-word schedule; `$t` a literal, so
/// every index is a constant and the state and schedule stay in registers.
macro_rules! sha_round {
    ($s:ident, $w:ident, $k:ident, $t:literal) => {{
        const T: usize = $t;
        if T >= 16 {
            let w15 = $w[(T + 1) % 16];
            let w2 = $w[(T + 14) % 16];
            let s0 = xor3(ror::<7>(w15), ror::<18>(w15), shr::<3>(w15));
            let s1 = xor3(ror::<17>(w2), ror::<19>(w2), shr::<10>(w2));
            $w[T % 16] = add(add($w[T % 16], s0), add($w[(T + 9) % 16], s1));
        }
        let [a, b, c, d, e, f, g, h] = $s;
        let s1 = xor3(ror::<6>(e), ror::<11>(e), ror::<25>(e));
        let t1 = add(add(add(h, s1), add(ch(e, f, g), $w[T % 16])), $k[T]);
        let s0 = xor3(ror::<2>(a), ror::<13>(a), ror::<22>(a));
        let t2 = add(s0, maj(a, b, c));
        $s = [add(t1, t2), a, b, c, add(d, t1), e, f, g];
    }};
}

/// The 64 rounds, unrolled.
macro_rules! sha_rounds {
    ($s:ident, $w:ident, $k:ident) => {
        sha_rounds!(@ $s, $w, $k; ROUNDS)
    };
    (@ $s:ident, $w:ident, $k:ident; ROUNDS) => {
        sha_rounds!(@ $s, $w, $k; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63)
    };
    (@ $s:ident, $w:ident, $k:ident; $($t:literal)*) => {
        $( sha_round!($s, $w, $k, $t); )*
    };
}

/// The compression function and the leaf loop, written once over per-ISA helpers `add`,
/// `xor3`, `shr`, `ror`, `ch`, `maj`, `load` and the vector type `V` of the module that
/// invokes it.
macro_rules! lane_hasher {
    ($feat:literal, $n:literal, $set1:ident) => {
        #[target_feature(enable = $feat)]
        #[inline]
        fn compress(state: &mut [V; 8], mut w: [V; 16], k: &[V; 64]) {
            let mut s = *state;
            sha_rounds!(s, w, k);
            for j in 0..8 {
                state[j] = add(state[j], s[j]);
            }
        }

        /// Leaf hashes of full segments, one per lane.
        #[target_feature(enable = $feat)]
        pub fn leaves(segs: [&[u8; SEG]; $n]) -> [[u8; 32]; $n] {
            let mut k = [$set1(0); 64];
            for (vector, constant) in k.iter_mut().zip(K) {
                *vector = $set1(constant as i32);
            }
            let mut state = [$set1(0); 8];
            for (vector, initial) in state.iter_mut().zip(H0) {
                *vector = $set1(initial as i32);
            }
            for block in 0..65 {
                let mut blocks = [[0u8; 64]; $n];
                for (bytes, segment) in blocks.iter_mut().zip(segs) {
                    *bytes = message_block(segment, block);
                }
                let words = transposed_words(&blocks);
                let mut w = [$set1(0); 16];
                for (vector, lanes) in w.iter_mut().zip(words) {
                    *vector = load(lanes);
                }
                compress(&mut state, w, &k);
            }
            // SAFETY: V and [u32; N] have the same size and every bit pattern is valid for both.
            let words: [[u32; $n]; 8] = unsafe { core::mem::transmute(state) };
            let mut out = [[0u8; 32]; $n];
            for (lane, hash) in out.iter_mut().enumerate() {
                for (j, word) in words.iter().enumerate() {
                    hash[4 * j..4 * j + 4].copy_from_slice(&word[lane].to_be_bytes());
                }
            }
            out
        }
    };
}

/// 8 lanes of 256-bit AVX2 registers.
mod avx2 {
    use super::*;
    type V = __m256i;
    #[target_feature(enable = "avx2")]
    #[inline]
    fn add(a: V, b: V) -> V {
        _mm256_add_epi32(a, b)
    }
    #[target_feature(enable = "avx2")]
    #[inline]
    fn xor3(a: V, b: V, c: V) -> V {
        _mm256_xor_si256(_mm256_xor_si256(a, b), c)
    }
    #[target_feature(enable = "avx2")]
    #[inline]
    fn shr<const N: i32>(a: V) -> V {
        _mm256_srli_epi32::<N>(a)
    }
    #[target_feature(enable = "avx2")]
    #[inline]
    fn ror<const N: i32>(a: V) -> V {
        _mm256_or_si256(
            _mm256_srli_epi32::<N>(a),
            _mm256_sll_epi32(a, _mm_cvtsi32_si128(32 - N)),
        )
    }
    #[target_feature(enable = "avx2")]
    #[inline]
    fn ch(e: V, f: V, g: V) -> V {
        _mm256_xor_si256(_mm256_and_si256(e, f), _mm256_andnot_si256(e, g))
    }
    #[target_feature(enable = "avx2")]
    #[inline]
    fn maj(a: V, b: V, c: V) -> V {
        _mm256_or_si256(
            _mm256_and_si256(a, b),
            _mm256_and_si256(c, _mm256_or_si256(a, b)),
        )
    }
    #[target_feature(enable = "avx2")]
    #[inline]
    fn load(x: [u32; 8]) -> V {
        // SAFETY: same size, plain data
        unsafe { core::mem::transmute(x) }
    }
    lane_hasher!("avx2", 8, _mm256_set1_epi32);
}
/// 16 lanes of 512-bit AVX-512F registers (rotates and three-input logic in one instruction).
mod avx512 {
    use super::*;
    type V = __m512i;
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn add(a: V, b: V) -> V {
        _mm512_add_epi32(a, b)
    }
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn xor3(a: V, b: V, c: V) -> V {
        _mm512_ternarylogic_epi32::<0x96>(a, b, c)
    }
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn shr<const N: u32>(a: V) -> V {
        _mm512_srli_epi32::<N>(a)
    }
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn ror<const N: i32>(a: V) -> V {
        _mm512_ror_epi32::<N>(a)
    }
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn ch(e: V, f: V, g: V) -> V {
        _mm512_ternarylogic_epi32::<0xCA>(e, f, g)
    }
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn maj(a: V, b: V, c: V) -> V {
        _mm512_ternarylogic_epi32::<0xE8>(a, b, c)
    }
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn load(x: [u32; 16]) -> V {
        // SAFETY: same size, plain data
        unsafe { core::mem::transmute(x) }
    }
    lane_hasher!("avx512f", 16, _mm512_set1_epi32);
}
