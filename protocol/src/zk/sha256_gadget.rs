//! SHA-256 as a hand-written R1CS gadget over BN254's scalar field, with its native reference.
//!
//! ark-crypto-primitives' `Sha256Gadget` spends about 41,400 constraints per 64-byte block
//! because every word operation goes through `UInt32` (bit-wise XOR gadgets and a full
//! bit decomposition after every addition). This gadget keeps the same semantics at
//! 15,463 constraints per block (see [`constraints_per_compression`]). The bit-lane
//! tricks live in `lanes.rs`, each with its soundness argument and an exhaustive
//! wrong-witness test; the word-level structure is here:
//!
//! * **Packed words, lazy carries.** A 32-bit word is a linear combination `Σ 2^i·bit_i`
//!   or an unreduced sum of such words with a tracked upper bound. Additions are free;
//!   a sum is reduced modulo 2^32 only when its bits are needed (inputs of Σ, σ, Ch, Maj),
//!   with one decomposition into 32 + ⌈log₂ carry⌉ bits whose top bit is the remainder
//!   (n constraints for n bits, no packing constraint). W₆₂, W₆₃ and the chaining words
//!   d and h are never decomposed.
//! * **Three-input XOR in one constraint** (Σ0, Σ1, σ0, σ1): the parity o of
//!   s = x + y + z satisfies `(4o − 2s + 1)(2s − 3) = −3`, linear in o with a coefficient
//!   that never vanishes on bits. Majority is `(s − o)/2`, so a lone Maj lane costs one
//!   constraint too.
//! * **Truncated Σ1.** Its top lane is the raw sum x + y + z, off by 2^32·maj: nothing,
//!   modulo 2^32. The e sum it feeds absorbs the extra 2^32 without a wider carry.
//! * **Two-input XOR lanes in pairs** (the SHR lanes of σ0 and σ1): the sum
//!   2^j(x ⊕ y) + 2^k(x' ⊕ y') needs xy + 2^(k−j)·x'y', a rank-2 quadratic form, which one
//!   product of two linear forms gives (with a square root of −2^(k−j)). A step has 13
//!   such lanes; the odd one out is paired with the next step's (below).
//! * **Schedule steps in pairs.** W_t and W_{t+1} (t = 16, 18, …, 60) are reduced by one
//!   fused sum S_t + λ·S_{t+1} like a round pair's, so each step's unpaired two-input lane
//!   shares one constraint with the other step's (weights 2^j and λ·2^k).
//! * **Round pairs.** Rounds t and t + 1 share inputs: Ch_t reads (E_t, E_{t−1}, E_{t−2})
//!   and Ch_{t+1} reads (E_{t+1}, E_t, E_{t−1}), and Maj likewise on A. One constraint per
//!   lane yields the packed value Ch_t + λ·Ch_{t+1} (λ = 2^40; Ch is quadratic, and the
//!   packed quadratic form factors once squares are added for free on bits), and one per
//!   lane the packed Maj_t + λ·Maj_{t+1} (Maj is cubic, but affine on each of the two
//!   halves a = b and a ≠ b: a two-root constraint whose false root is 2^100 away).
//!   The packed lanes cannot be split into bits, and need not be: each register's two
//!   new values are reduced by one **fused sum** S_t + λ·S_{t+1} = (E_{t+1} + 2^32·C_t) +
//!   λ·(E_{t+2} + 2^32·C_{t+1}), sound because each round's residue is below λ/2, and
//!   the false Maj root cannot hide in a residue that small. All 64 rounds run in pairs.
//! * **A from the reduced E.** A_{t+1} = E_{t+1} − d + Σ0 + Maj (mod 2^32) sums four
//!   words instead of seven (T1 + Σ0 + Maj): two carry bits instead of three.
//! * **Feed-forward inside the last pair.** Round 63's sums also add the block's input
//!   words H_e and H_a, so the pair's own decomposition yields the next state's e and a
//!   (H + v) directly: no second reduction of two wide unreduced sums after the block.
//! * **Carry-chain chaining.** The next state's b, c, f, g are sums of two words with
//!   bits; `lanes::add_bits` adds them in 32 constraints (each lane's carry is the
//!   previous lane's majority, a linear combination) instead of a 33-bit decomposition.
//! * **Digest check without bits**: the final `H + v ≡ D (mod 2^32)` is `(H + v − D)/2^32`
//!   range-checked to its few carry bits.
//!
//! **Prior art.** One-constraint XOR3 and Maj lanes come from Clean
//! (Verified-zkEVM/clean#395); round-pair packing of Ch and Maj, fused pair sums, the
//! truncated Σ and the carry-chain addition from the zk.golf record (ported in
//! aptos-labs/keyless-zk-proofs#124). The relations here are our own derivations (a
//! symmetric parity relation, a different Ch factorisation, paired two-input lanes and
//! their pairing across schedule steps, the feed-forward fused into the last pair), each
//! argued in `lanes.rs`.
//!
//! **What the public figures count** (read from the circuits themselves). zk.golf's
//! 15,168 is `Sha256compressionZkGolf()` in aptos-labs/keyless-zk-proofs#124
//! (`circuit/templates/helpers/sha/ZkGolfSha256Compression.circom`): its inputs `hin`
//! (256 state bits) and `inp` (512 message bits) are taken as bits *without* booleanity
//! constraints inside (circomlib's convention: the caller pins them), and its output is
//! all 256 bits of H + v (`CarryAdd32`, 32 constraints per word). It is 48 schedule steps
//! × 92 (W₆₂ and W₆₃ decomposed too) + 32 round pairs × 328 + 8 × 32 = 4,416 + 10,496 +
//! 256. Clean's 17,824 (Verified-zkEVM/clean#395, `Clean/Gadgets/SHA256/SHA256Compress.lean`)
//! has the same convention: its `Assumptions` are that the state and message words are
//! already `Normalized` (bits), and its output is eight `Add32` words in bits. Neither
//! counts the message's booleanity; both produce all eight output words as bits.
//!
//! **Accounting** (one more block, as [`constraints_per_compression`] measures it: the
//! block's 512 message-bit booleanity constraints and the chaining included): 15,463,
//! against 15,559 before the schedule pairs, the fed-forward last pair and the carry
//! chains, 25,526 for the previous design and 41,392 for ark-crypto-primitives'.
//! Per round of a pair: Σ1 31, Σ0 32, Ch 16 and Maj 16, the new e (32 + 3 carry bits)
//! and a (32 + 2): 164, so 10,168 for rounds 0…61; rounds 62 and 63 as the last pair
//! 331 (W₆₂ and W₆₃ unreduced and H_e added widen both e sums to 4 carry bits, H_a − H_e
//! widens the last a to 3): 10,499. Round 0 of a chained block pays 1 or 2 carry bits
//! more for the lazy d and h (1 in the measured block, whose d and h come from the IV).
//! Schedule: 48 × (51 parity lanes + 7 paired two-input constraints) − 23 (one odd lane
//! per step pair) + 46 × 34 decomposition bits = 4,325. Message bits 512. Chaining 124:
//! four carry chains of 32 for b, c, f, g, less one free lane each because the measured
//! first block's H is the constant IV (128 from a variable state, as in TX2); e and a
//! come out of the last pair reduced. The measured block's digest check pays 2 carry
//! bits more than the first block's (its d and h are wider). 10,499 + 1 + 4,325 + 512 +
//! 124 + 2 = 15,463; a chained block of TX2 costs 10,499 + 4,325 + 512 + 128 = 15,464 plus 1 or 2. Counted like zk.golf
//! (no message booleanity; all eight output words as bits from bit inputs, so d and h
//! as two more carry chains, chaining from a variable state, no lazy-word extras):
//! 15,463 − 512 + 2 × 32 + 4 − 1 − 2 = 15,016, against its 15,168.
//!
//! **Where the ≤ 15,000 goal stands (not met: 15,463).** By our own count, what remains
//! is close to what these tricks allow: a Ch lane cannot pack three rounds (the packed
//! quadratic form then needs rank 3, and one product of two linear forms has rank 2),
//! Maj of three rounds is no longer affine on two halves of the cube, a three-input XOR
//! lane is a cubic and takes one constraint (and cannot share a constraint linear in its
//! output with a two-input lane: that needs an affine form times the packed value to be
//! affine on the cube, and the cross terms have degree 3 or 4; nor with another
//! three-input lane: for a constraint linear in the packed value v = 2^i·p + 2^j·q,
//! (v + ℓ)·L must be affine on the cube with L affine and nonzero there; the degree-4
//! terms allow L no input but one the lanes share, x, and cancelling the cubic terms then
//! makes L = c·(1 − x), zero where x = 1 (disjoint lanes leave L constant and the cubics
//! standing); with two roots, as Maj's lanes have, v² holds 2^(i+j+1)·pq, of degree 5 or
//! 6, which no product of two affine forms cancels), σ1's ten
//! two-input lanes form two paths (bits 7−9−…−17 and 8−10−…−18) whose three consecutive
//! products already need rank 3, every bit a σ, Σ, Ch or Maj reads must be pinned by one
//! booleanity constraint, and every sum's carry range is already tight (four words in an
//! a or schedule sum: 2 bits; a truncated Σ0 would need a third). W₀ is the one message
//! word no σ reads, but its two uses are fused sums, where an unconstrained W₀ could
//! absorb λ times the other round's residue: it needs its range anyway. Going lower needs
//! range checks cheaper than one constraint per bit, which plain R1CS does not offer.
//!
//! Every gate computes its value natively alongside (the `val` fields), so synthesis is
//! also witness generation; [`sha256_native`] / [`compress_native`] are the plain
//! reference implementation the tests compare against.

use ark_bn254::Fr;
use ark_ff::{Field, One};
use ark_relations::r1cs::{ConstraintSystemRef, SynthesisError, Variable};

mod lanes;

use lanes::{
    add_bits, alloc_bits, ch_pair, close_pair, combination, const_lc, decompose, maj_pair, pack,
    pow2, push_scaled, xor2_pair, xor2_pair_across, Lc, Xor2Lane, MAX_PAIR_BITS, PAIR_SHIFT,
};
pub use lanes::{ch, maj3, xor, xor3, Bit};

/// SHA-256 initial hash value.
pub const IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// SHA-256 round constants.
pub const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

// ---------------------------------------------------------------------------------------
// Native reference
// ---------------------------------------------------------------------------------------

/// One SHA-256 compression of `block` into `state` (FIPS 180-4, 6.2.2).
pub fn compress_native(state: &mut [u32; 8], block: &[u8; 64]) {
    let mut w = [0u32; 64];
    for (t, chunk) in block.chunks_exact(4).enumerate() {
        w[t] = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    for t in 16..64 {
        let s0 = w[t - 15].rotate_right(7) ^ w[t - 15].rotate_right(18) ^ (w[t - 15] >> 3);
        let s1 = w[t - 2].rotate_right(17) ^ w[t - 2].rotate_right(19) ^ (w[t - 2] >> 10);
        w[t] = s1
            .wrapping_add(w[t - 7])
            .wrapping_add(s0)
            .wrapping_add(w[t - 16]);
    }
    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
    for t in 0..64 {
        let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
        let ch = (e & f) ^ (!e & g);
        let t1 = h
            .wrapping_add(s1)
            .wrapping_add(ch)
            .wrapping_add(K[t])
            .wrapping_add(w[t]);
        let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
        let maj = (a & b) ^ (a & c) ^ (b & c);
        let t2 = s0.wrapping_add(maj);
        h = g;
        g = f;
        f = e;
        e = d.wrapping_add(t1);
        d = c;
        c = b;
        b = a;
        a = t1.wrapping_add(t2);
    }
    for (s, v) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
        *s = s.wrapping_add(v);
    }
}

/// SHA-256 padding of a `len`-byte message: 0x80, zeros, 64-bit big-endian bit length.
pub fn padding(len: usize) -> Vec<u8> {
    let pad_zeros = (55usize.wrapping_sub(len % 64)) % 64;
    let mut out = Vec::with_capacity(pad_zeros + 9);
    out.push(0x80);
    out.resize(1 + pad_zeros, 0);
    out.extend_from_slice(&((len as u64) * 8).to_be_bytes());
    out
}

/// Midstate after compressing the whole blocks of `prefix` (whose length must be a
/// multiple of 64) from the IV.
pub fn midstate_native(prefix: &[u8]) -> [u32; 8] {
    debug_assert_eq!(prefix.len() % 64, 0);
    let mut state = IV;
    for block in prefix.chunks_exact(64) {
        let block: &[u8; 64] = block.try_into().expect("64-byte chunk");
        compress_native(&mut state, block);
    }
    state
}

/// Full SHA-256 through [`compress_native`].
pub fn sha256_native(msg: &[u8]) -> [u8; 32] {
    let mut padded = msg.to_vec();
    padded.extend(padding(msg.len()));
    let state = midstate_native(&padded);
    words_to_bytes(&state)
}

/// Big-endian serialisation of a hash state.
pub fn words_to_bytes(words: &[u32; 8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (chunk, w) in out.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&w.to_be_bytes());
    }
    out
}

/// Big-endian parse of a digest into words.
pub fn bytes_to_words(bytes: &[u8; 32]) -> [u32; 8] {
    let mut out = [0u32; 8];
    for (w, chunk) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *w = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    out
}

// ---------------------------------------------------------------------------------------
// Words
// ---------------------------------------------------------------------------------------

/// A 32-bit word or an unreduced sum of words: `lc` has integer value `val` ≤ `max`.
/// `bits` (least significant first) is present when the word is reduced and decomposed.
/// `addends` keeps the two operands of a two-word sum ([`Word::sum2`]), which
/// [`Word::reduce`] adds bit by bit when both have bits.
#[derive(Clone, Debug)]
pub struct Word {
    lc: Lc,
    val: u64,
    max: u64,
    bits: Option<Vec<Bit>>,
    addends: Option<Box<[Word; 2]>>,
}

impl Word {
    /// A constant word (its bound is its value, so constants widen no sum).
    pub fn constant(x: u32) -> Word {
        let mut word = Word::from_bits((0..32).map(|i| Bit::Const((x >> i) & 1 == 1)).collect());
        word.max = u64::from(x);
        word
    }

    /// A word from its 32 bits, least significant first.
    pub fn from_bits(bits: Vec<Bit>) -> Word {
        debug_assert_eq!(bits.len(), 32);
        let val = bits
            .iter()
            .enumerate()
            .map(|(i, b)| u64::from(b.value()) << i)
            .sum();
        Word {
            lc: pack(&bits),
            val,
            max: u64::from(u32::MAX),
            bits: Some(bits),
            addends: None,
        }
    }

    /// A word from 32 bits given most significant first (message order).
    pub fn from_be_bits(bits: &[Bit]) -> Word {
        Word::from_bits(bits.iter().rev().cloned().collect())
    }

    /// A word held by a linear combination the caller guarantees to be below 2^32
    /// (e.g. a public input the verifier builds itself).
    pub fn from_lc(lc: Lc, val: u32) -> Word {
        Word::packed(lc, u64::from(val), u64::from(u32::MAX))
    }

    /// A value known only as a linear combination, with its bound.
    fn packed(lc: Lc, val: u64, max: u64) -> Word {
        Word {
            lc,
            val,
            max,
            bits: None,
            addends: None,
        }
    }

    /// The word's linear combination.
    pub fn lc(&self) -> &Lc {
        &self.lc
    }

    /// Its integer value in the current assignment (may exceed 2^32 if unreduced).
    pub fn value(&self) -> u64 {
        self.val
    }

    /// Sum of words without reduction.
    pub fn sum(words: &[&Word]) -> Word {
        let lc = combination(words.iter().map(|w| (Fr::one(), &w.lc)));
        let val = words.iter().map(|w| w.val).sum();
        let max = words.iter().map(|w| w.max).sum();
        Word::packed(lc, val, max)
    }

    /// x + y without reduction, remembering the two operands: if both have bits, a later
    /// [`Word::reduce`] costs 32 constraints (a carry chain) instead of 33.
    pub fn sum2(x: &Word, y: &Word) -> Word {
        let mut word = Word::sum(&[x, y]);
        word.addends = Some(Box::new([x.clone(), y.clone()]));
        word
    }

    /// `m·2^32 − self` for the least m that keeps it positive: congruent to −self
    /// modulo 2^32 and never negative, so it can enter a sum that is reduced later.
    fn negated(&self) -> Word {
        let m = ((self.max >> 32) + 1) << 32;
        Word::packed(const_lc(Fr::from(m)) - &self.lc, m - self.val, m)
    }

    /// Bits a reduction of this sum takes: 32 and the carry.
    fn reduction_width(&self) -> u32 {
        32 + bit_len(self.max >> 32)
    }

    /// The word reduced modulo 2^32 with its bits: one decomposition of 32 + carry bits,
    /// a 32-constraint carry chain for a sum of two words with bits, or nothing if it
    /// already has bits.
    pub fn reduce(&self, cs: &ConstraintSystemRef<Fr>) -> Result<Word, SynthesisError> {
        if self.bits.is_some() {
            return Ok(self.clone());
        }
        if self.lc.iter().all(|(_, v)| *v == Variable::One) {
            return Ok(Word::constant(self.val as u32));
        }
        if let Some([x, y]) = self.addends.as_deref() {
            if let (Some(xb), Some(yb)) = (&x.bits, &y.bits) {
                return Ok(Word::from_bits(add_bits(cs, xb, yb)?));
            }
        }
        let bits = decompose(cs, &self.lc, self.val, self.reduction_width())?;
        Ok(Word::from_bits(bits[..32].to_vec()))
    }

    fn bits(&self) -> &[Bit] {
        self.bits
            .as_deref()
            .expect("word reduced before bit access")
    }

    fn rotr(&self, n: usize) -> Vec<Bit> {
        let b = self.bits();
        (0..32).map(|i| b[(i + n) % 32].clone()).collect()
    }

    fn shr(&self, n: usize) -> Vec<Bit> {
        let b = self.bits();
        (0..32)
            .map(|i| b.get(i + n).cloned().unwrap_or(Bit::Const(false)))
            .collect()
    }
}

/// Number of bits needed to write `x`.
fn bit_len(x: u64) -> u32 {
    64 - x.leading_zeros()
}

/// Accumulates weighted lanes into a packed word. The terms are kept unsorted until the
/// word is taken ([`push_scaled`]).
#[derive(Default)]
struct Lanes {
    terms: Lc,
    val: u64,
}

impl Lanes {
    fn add_bit(&mut self, weight: u32, bit: &Bit) {
        bit.push_scaled_to(&mut self.terms, pow2(weight));
        self.val += u64::from(bit.value()) << weight;
    }

    fn add(&mut self, lc: &Lc, weight: u32, val: u64) {
        push_scaled(&mut self.terms, pow2(weight), lc);
        self.val += val;
    }

    fn into_lc(mut self) -> Lc {
        self.terms.compactify();
        self.terms
    }

    fn into_word(self, max: u64) -> Word {
        let val = self.val;
        Word::packed(self.into_lc(), val, max)
    }
}

/// Σ0(a) = ROTR2 ⊕ ROTR13 ⊕ ROTR22: one parity constraint per lane.
fn big_sigma0(cs: &ConstraintSystemRef<Fr>, a: &Word) -> Result<Word, SynthesisError> {
    let (x, y, z) = (a.rotr(2), a.rotr(13), a.rotr(22));
    let bits = (0..32)
        .map(|i| xor3(cs, &x[i], &y[i], &z[i]))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Word::from_bits(bits))
}

/// Σ1(e) = ROTR6 ⊕ ROTR11 ⊕ ROTR25 with its top lane left unreduced (31 constraints).
///
/// **Truncated top lane.** Lane 31's three inputs are summed, not XORed: s₃₁ ∈ {0..3}
/// equals parity + 2·maj, so the word's value is Σ1 + 2^32·maj₃₁ ≡ Σ1 (mod 2^32). Σ1 only
/// enters the e sum, which is reduced modulo 2^32 anyway; the sum's bound (and so its
/// carry width) accounts for the extra 2^32, which costs no extra carry bit there.
fn big_sigma1(cs: &ConstraintSystemRef<Fr>, e: &Word) -> Result<Word, SynthesisError> {
    let (x, y, z) = (e.rotr(6), e.rotr(11), e.rotr(25));
    let mut lanes = Lanes::default();
    for i in 0..31 {
        lanes.add_bit(i as u32, &xor3(cs, &x[i], &y[i], &z[i])?);
    }
    for top in [&x[31], &y[31], &z[31]] {
        lanes.add_bit(31, top);
    }
    let top_max = x[31].max() + y[31].max() + z[31].max();
    Ok(lanes.into_word((1 << 31) - 1 + (top_max << 31)))
}

/// Bound of σ0(w15) + σ1(w2) as one packed word.
const SIGMAS_MAX: u64 = 2 * u32::MAX as u64;

/// σ0(w15) + σ1(w2) of one schedule step as packed lanes. Lanes with three inputs take
/// one parity constraint; the lanes where SHR shifts in a zero are two-input XORs,
/// packed two per constraint by [`xor2_pair`] (σ0 has 3 of them, σ1 has 10). The 13th
/// is returned unpaired, for [`schedule_pair`] to pair with the next step's.
fn small_sigmas(
    cs: &ConstraintSystemRef<Fr>,
    w15: &Word,
    w2: &Word,
) -> Result<(Lanes, Option<Xor2Lane>), SynthesisError> {
    let inputs = [
        (w15.rotr(7), w15.rotr(18), w15.shr(3)),
        (w2.rotr(17), w2.rotr(19), w2.shr(10)),
    ];
    let mut lanes = Lanes::default();
    let mut waiting: Option<Xor2Lane> = None;
    for (x, y, z) in &inputs {
        for i in 0..32 {
            let two_input = matches!(z[i], Bit::Const(false)) && x[i].is_var() && y[i].is_var();
            if !two_input {
                lanes.add_bit(i as u32, &xor3(cs, &x[i], &y[i], &z[i])?);
                continue;
            }
            let lane = Xor2Lane {
                weight: i as u32,
                x: x[i].clone(),
                y: y[i].clone(),
            };
            match waiting.take() {
                None => waiting = Some(lane),
                Some(first) => {
                    let (lc, val) = xor2_pair(cs, &first, &lane)?;
                    lanes.add(&lc, 0, val);
                }
            }
        }
    }
    Ok((lanes, waiting))
}

/// Adds a lone two-input XOR lane to `lanes` (one constraint).
fn add_xor2(
    cs: &ConstraintSystemRef<Fr>,
    lanes: &mut Lanes,
    lane: Option<Xor2Lane>,
) -> Result<(), SynthesisError> {
    if let Some(lane) = lane {
        lanes.add_bit(lane.weight, &xor(cs, &lane.x, &lane.y)?);
    }
    Ok(())
}

/// W_t = σ1(W_{t−2}) + W_{t−7} + σ0(W_{t−15}) + W_{t−16}, unreduced.
fn schedule_sum(
    cs: &ConstraintSystemRef<Fr>,
    w: &[Word],
    t: usize,
) -> Result<Word, SynthesisError> {
    let (mut lanes, lone) = small_sigmas(cs, &w[t - 15], &w[t - 2])?;
    add_xor2(cs, &mut lanes, lone)?;
    Ok(Word::sum(&[
        &lanes.into_word(SIGMAS_MAX),
        &w[t - 7],
        &w[t - 16],
    ]))
}

/// W_t and W_{t+1} reduced by one fused sum S_t + λ·S_{t+1} ([`close_pair`]), so that
/// the unpaired two-input lane of each step shares one constraint
/// ([`xor2_pair_across`]): 91 constraints per step instead of 92. W_{t+1} reads
/// W_{t−1}, W_{t−6}, W_{t−14} and W_{t−15}, never W_t, so both are known together.
fn schedule_pair(
    cs: &ConstraintSystemRef<Fr>,
    w: &[Word],
    t: usize,
) -> Result<[Word; 2], SynthesisError> {
    let (mut lanes0, lone0) = small_sigmas(cs, &w[t - 15], &w[t - 2])?;
    let (mut lanes1, lone1) = small_sigmas(cs, &w[t - 14], &w[t - 1])?;
    let mut cross = Lc::zero();
    match (lone0, lone1) {
        (Some(lo), Some(hi)) => {
            let (lc, [v0, v1]) = xor2_pair_across(cs, &lo, &hi)?;
            cross = lc;
            lanes0.val += v0;
            lanes1.val += v1;
        }
        (lo, hi) => {
            add_xor2(cs, &mut lanes0, lo)?;
            add_xor2(cs, &mut lanes1, hi)?;
        }
    }
    let s0 = Word::sum(&[&lanes0.into_word(SIGMAS_MAX), &w[t - 7], &w[t - 16]]);
    let s1 = Word::sum(&[&lanes1.into_word(SIGMAS_MAX), &w[t - 6], &w[t - 15]]);
    let first = alloc_round_word(cs, s0.val, s0.max)?;
    let n = s1.reduction_width();
    let fused = combination([
        (Fr::one(), &s0.lc),
        (pow2(PAIR_SHIFT), &s1.lc),
        (Fr::one(), &cross),
    ]);
    let bits = close_pair(cs, fused, &first.all_bits, s1.val, n)?;
    Ok([first.word, Word::from_bits(bits[..32].to_vec())])
}

/// Hash state words as the gadget carries them between blocks.
pub type State = [Word; 8];

/// The IV as constant words.
pub fn iv_state() -> State {
    IV.map(Word::constant)
}

/// A public hash state (e.g. the midstate): a, b, c, e, f, g are decomposed (192
/// constraints); d and h are used packed.
pub fn state_from_lcs(
    cs: &ConstraintSystemRef<Fr>,
    lcs: [Lc; 8],
    vals: [u32; 8],
) -> Result<State, SynthesisError> {
    let mut out = Vec::with_capacity(8);
    for (i, (lc, v)) in lcs.into_iter().zip(vals).enumerate() {
        let w = Word::from_lc(lc, v);
        out.push(if i == 3 || i == 7 { w } else { w.reduce(cs)? });
    }
    Ok(out.try_into().expect("eight words"))
}

/// Message schedule W₀…W₆₃. W_t keeps its bits while some σ still reads it (t ≤ 61):
/// W₁₆…W₆₁ are reduced two at a time ([`schedule_pair`]); W₆₂ and W₆₃ stay unreduced
/// sums (they only enter rounds 62 and 63).
fn message_schedule(
    cs: &ConstraintSystemRef<Fr>,
    block: &[Bit],
) -> Result<Vec<Word>, SynthesisError> {
    let mut w: Vec<Word> = block.chunks_exact(32).map(Word::from_be_bits).collect();
    for t in (16..62).step_by(2) {
        let pair = schedule_pair(cs, &w, t)?;
        w.extend(pair);
    }
    for t in 62..64 {
        let sum = schedule_sum(cs, &w, t)?;
        w.push(sum);
    }
    Ok(w)
}

/// The 32 bits of a reduced round sum and the linear combination of all its bits
/// (word and carry), allocated before the rest of its round pair is known.
struct Allocated {
    word: Word,
    all_bits: Lc,
}

fn alloc_round_word(
    cs: &ConstraintSystemRef<Fr>,
    val: u64,
    max: u64,
) -> Result<Allocated, SynthesisError> {
    let n = 32 + bit_len(max >> 32);
    assert!(n <= MAX_PAIR_BITS, "round sum too wide");
    let bits = alloc_bits(cs, val, n)?;
    Ok(Allocated {
        all_bits: pack(&bits),
        word: Word::from_bits(bits[..32].to_vec()),
    })
}

/// The a and e registers over the 64 rounds: `a[t + 2]` is A_t (A₀ = a, A₋₁ = b,
/// A₋₂ = c), and the same for e. Round t reads d = A_{t−3} and h = E_{t−3}, which for
/// t = 0 are the state's d and h.
struct Registers {
    a: Vec<Word>,
    e: Vec<Word>,
    d0: Word,
    h0: Word,
}

/// What one round reads: (a, b, c), (e, f, g), d, h.
struct RoundInputs {
    abc: [Word; 3],
    efg: [Word; 3],
    d: Word,
    h: Word,
}

impl Registers {
    fn new(cs: &ConstraintSystemRef<Fr>, state: &State) -> Result<Registers, SynthesisError> {
        Ok(Registers {
            a: vec![
                state[2].reduce(cs)?,
                state[1].reduce(cs)?,
                state[0].reduce(cs)?,
            ],
            e: vec![
                state[6].reduce(cs)?,
                state[5].reduce(cs)?,
                state[4].reduce(cs)?,
            ],
            d0: state[3].clone(),
            h0: state[7].clone(),
        })
    }

    fn inputs(&self, t: usize) -> RoundInputs {
        let (d, h) = if t == 0 {
            (self.d0.clone(), self.h0.clone())
        } else {
            (self.a[t - 1].clone(), self.e[t - 1].clone())
        };
        RoundInputs {
            abc: [
                self.a[t + 2].clone(),
                self.a[t + 1].clone(),
                self.a[t].clone(),
            ],
            efg: [
                self.e[t + 2].clone(),
                self.e[t + 1].clone(),
                self.e[t].clone(),
            ],
            d,
            h,
        }
    }

    /// Rounds t and t + 1 together: Ch and Maj of both rounds in one constraint per lane
    /// ([`ch_pair`], [`maj_pair`]), and each register's two new values reduced by one
    /// fused sum ([`close_pair`]) that separates the packed rounds again.
    ///
    /// With `feed` = (H_a, H_e) (the last pair, rounds 62 and 63) the second round's sums
    /// also add the block's input words: its "new a and e" are then the next state's
    /// a = H_a + A₆₄ and e = H_e + E₆₄, reduced by the pair's own decomposition instead of
    /// a second one after the block. The a sum reads E' − H_e for E₆₄ (mod 2^32).
    fn round_pair(
        &mut self,
        cs: &ConstraintSystemRef<Fr>,
        t: usize,
        w: &[Word],
        feed: Option<[&Word; 2]>,
    ) -> Result<(), SynthesisError> {
        let lam = pow2(PAIR_SHIFT);
        let first = self.inputs(t);
        let [a, b, c] = &first.abc;
        let [e, f, g] = &first.efg;
        // Round t: everything but Ch and Maj, whose values enter natively for now.
        let e_lin0 = Word::sum(&[
            &first.d,
            &first.h,
            &big_sigma1(cs, e)?,
            &Word::constant(K[t]),
            &w[t],
        ]);
        let ch0 = native_lanes(|i| ch_native(e, f, g, i));
        let e1 = alloc_round_word(cs, e_lin0.val + ch0, e_lin0.max + u64::from(u32::MAX))?;
        let a_lin0 = Word::sum(&[&e1.word, &big_sigma0(cs, a)?, &first.d.negated()]);
        let maj0 = native_lanes(|i| maj_native(a, b, c, i));
        let a1 = alloc_round_word(cs, a_lin0.val + maj0, a_lin0.max + u64::from(u32::MAX))?;

        // Round t + 1 reads (A_{t+1}, a, b), (E_{t+1}, e, f), d = c and h = g.
        let (a_next, e_next) = (&a1.word, &e1.word);
        let mut ch_lanes = Lanes::default();
        let mut maj_lanes = Lanes::default();
        for i in 0..32 {
            let (lc, _) = ch_pair(
                cs,
                &e_next.bits()[i],
                &e.bits()[i],
                &f.bits()[i],
                &g.bits()[i],
            )?;
            ch_lanes.add(&lc, i as u32, 0);
            let (lc, _) = maj_pair(
                cs,
                &a_next.bits()[i],
                &a.bits()[i],
                &b.bits()[i],
                &c.bits()[i],
            )?;
            maj_lanes.add(&lc, i as u32, 0);
        }
        let mut e_terms = vec![
            c.clone(),
            g.clone(),
            big_sigma1(cs, e_next)?,
            Word::constant(K[t + 1]),
            w[t + 1].clone(),
        ];
        let mut a_extra = Vec::new();
        if let Some([h_a, h_e]) = feed {
            e_terms.push(h_e.clone());
            a_extra = vec![h_a.clone(), h_e.negated()];
        }
        let e_lin1 = Word::sum(&e_terms.iter().collect::<Vec<_>>());
        let ch1 = native_lanes(|i| ch_native(e_next, e, f, i));
        let fused_e = combination([
            (Fr::one(), &e_lin0.lc),
            (lam, &e_lin1.lc),
            (Fr::one(), &ch_lanes.into_lc()),
        ]);
        let e2 = close_round_pair(cs, fused_e, &e1, e_lin1.val + ch1, e_lin1.max)?;

        let mut a_terms = vec![e2.clone(), big_sigma0(cs, a_next)?, c.negated()];
        a_terms.extend(a_extra);
        let a_lin1 = Word::sum(&a_terms.iter().collect::<Vec<_>>());
        let maj1 = native_lanes(|i| maj_native(a_next, a, b, i));
        let fused_a = combination([
            (Fr::one(), &a_lin0.lc),
            (lam, &a_lin1.lc),
            (Fr::one(), &maj_lanes.into_lc()),
        ]);
        let a2 = close_round_pair(cs, fused_a, &a1, a_lin1.val + maj1, a_lin1.max)?;

        self.a.extend([a1.word, a2]);
        self.e.extend([e1.word, e2]);
        Ok(())
    }

    /// The block's output H + v after the last pair (which already added H_a and H_e):
    /// b, c, f, g as two-word sums of words with bits ([`Word::sum2`]), d and h packed.
    fn output(&self) -> State {
        let (a, e) = (&self.a, &self.e);
        [
            a[66].clone(),
            Word::sum2(&a[1], &a[65]),
            Word::sum2(&a[0], &a[64]),
            Word::sum(&[&self.d0, &a[63]]),
            e[66].clone(),
            Word::sum2(&e[1], &e[65]),
            Word::sum2(&e[0], &e[64]),
            Word::sum(&[&self.h0, &e[63]]),
        ]
    }
}

/// The second round of a pair: `fused` is S_t + λ·S_{t+1} (S_{t+1} without its packed
/// lane, whose value is in `val` and bound is one word), reduced against the first
/// round's allocated bits.
fn close_round_pair(
    cs: &ConstraintSystemRef<Fr>,
    fused: Lc,
    first: &Allocated,
    val: u64,
    lin_max: u64,
) -> Result<Word, SynthesisError> {
    let n = 32 + bit_len((lin_max + u64::from(u32::MAX)) >> 32);
    let bits = close_pair(cs, fused, &first.all_bits, val, n)?;
    Ok(Word::from_bits(bits[..32].to_vec()))
}

fn native_lanes(lane: impl Fn(usize) -> bool) -> u64 {
    (0..32).map(|i| u64::from(lane(i)) << i).sum()
}

fn ch_native(e: &Word, f: &Word, g: &Word, i: usize) -> bool {
    if e.bits()[i].value() {
        f.bits()[i].value()
    } else {
        g.bits()[i].value()
    }
}

fn maj_native(a: &Word, b: &Word, c: &Word, i: usize) -> bool {
    let count = [a, b, c].iter().filter(|w| w.bits()[i].value()).count();
    count >= 2
}

/// One compression of a 512-bit block (message order: bytes in order, each most
/// significant bit first) into `state`. Returns the eight output words H + v: a and e
/// reduced (the last round pair adds H into its own sums), the others unreduced; feed
/// them to [`chain`] for another block or to [`enforce_digest`] after the last one.
///
/// All 64 rounds run in pairs ([`Registers::round_pair`]).
pub fn compress(
    cs: &ConstraintSystemRef<Fr>,
    state: &State,
    block: &[Bit],
) -> Result<State, SynthesisError> {
    assert_eq!(block.len(), 512, "one 64-byte block");
    let w = message_schedule(cs, block)?;
    let mut registers = Registers::new(cs, state)?;
    for t in (0..62).step_by(2) {
        registers.round_pair(cs, t, &w, None)?;
    }
    let (h_a, h_e) = (registers.a[2].clone(), registers.e[2].clone());
    registers.round_pair(cs, 62, &w, Some([&h_a, &h_e]))?;
    Ok(registers.output())
}

/// Reduces the output of [`compress`] to a state for the next block: a and e arrive
/// reduced from the last round pair, b, c, f, g take a 32-constraint carry chain each
/// ([`Word::sum2`]), and d and h stay packed (lazy) unless their bound grows large (each
/// chained block widens them by one word).
pub fn chain(cs: &ConstraintSystemRef<Fr>, out: &State) -> Result<State, SynthesisError> {
    let mut next = Vec::with_capacity(8);
    for (i, w) in out.iter().enumerate() {
        let lazy = (i == 3 || i == 7) && w.max < (1u64 << 36);
        next.push(if lazy { w.clone() } else { w.reduce(cs)? });
    }
    Ok(next.try_into().expect("eight words"))
}

/// Enforces `out ≡ digest (mod 2^32)` word by word, where `digest[i]` is a linear
/// combination (a public input) with value `vals[i]` below 2^32. Costs the few carry bits
/// of each word, not a decomposition.
pub fn enforce_digest(
    cs: &ConstraintSystemRef<Fr>,
    out: &State,
    digest: &[Lc; 8],
    vals: &[u32; 8],
) -> Result<(), SynthesisError> {
    let inv = pow2(32).inverse().expect("2 is invertible");
    for ((w, d), dv) in out.iter().zip(digest).zip(vals) {
        let carry_lc = (w.lc.clone() - d) * inv;
        let carry_val = w.val.saturating_sub(u64::from(*dv)) >> 32;
        let n = bit_len(w.max >> 32).max(1);
        decompose(cs, &carry_lc, carry_val, n)?;
    }
    Ok(())
}

/// Bits of `msg ‖ padding(total_len)` after the first `offset` bytes: `msg_bits` are the
/// bits of message bytes `offset..total_len`; padding bits are constants.
pub fn pad_bits(msg_bits: Vec<Bit>, total_len: usize) -> Vec<Bit> {
    let mut bits = msg_bits;
    for byte in padding(total_len) {
        bits.extend(Bit::const_byte(byte));
    }
    bits
}

/// SHA-256 of a message given as bits (message order), from the IV; returns the
/// unreduced final state for [`enforce_digest`].
pub fn sha256(cs: &ConstraintSystemRef<Fr>, msg_bits: &[Bit]) -> Result<State, SynthesisError> {
    assert_eq!(msg_bits.len() % 8, 0);
    let padded = pad_bits(msg_bits.to_vec(), msg_bits.len() / 8);
    sha256_from(cs, iv_state(), &padded)
}

/// Compresses whole padded blocks starting from `state`.
pub fn sha256_from(
    cs: &ConstraintSystemRef<Fr>,
    state: State,
    padded: &[Bit],
) -> Result<State, SynthesisError> {
    assert_eq!(padded.len() % 512, 0);
    let mut state = state;
    let mut out = None;
    for (i, block) in padded.chunks_exact(512).enumerate() {
        if i > 0 {
            state = chain(cs, out.as_ref().expect("previous block"))?;
        }
        out = Some(compress(cs, &state, block)?);
    }
    Ok(out.unwrap_or(state))
}

// ---------------------------------------------------------------------------------------
// Constraint counts
// ---------------------------------------------------------------------------------------

fn witness_message(cs: &ConstraintSystemRef<Fr>, len: usize) -> Result<Vec<Bit>, SynthesisError> {
    let mut bits = Vec::with_capacity(len * 8);
    for i in 0..len {
        bits.extend(Bit::alloc_byte(cs, i as u8)?);
    }
    Ok(bits)
}

fn ours_for(len: usize) -> Result<usize, SynthesisError> {
    let cs = ark_relations::r1cs::ConstraintSystem::<Fr>::new_ref();
    let bits = witness_message(&cs, len)?;
    let out = sha256(&cs, &bits)?;
    let vals: [u32; 8] = core::array::from_fn(|i| out[i].val as u32);
    let digest: [Lc; 8] = core::array::from_fn(|i| const_lc(Fr::from(vals[i])));
    enforce_digest(&cs, &out, &digest, &vals)?;
    Ok(cs.num_constraints())
}

fn baseline_for(len: usize) -> Result<usize, SynthesisError> {
    use ark_crypto_primitives::crh::sha256::constraints::Sha256Gadget;
    use ark_r1cs_std::uint8::UInt8;
    let cs = ark_relations::r1cs::ConstraintSystem::<Fr>::new_ref();
    let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
    let vars = UInt8::new_witness_vec(cs.clone(), &data)?;
    Sha256Gadget::digest(&vars)?;
    Ok(cs.num_constraints())
}

/// Constraints one more 64-byte block costs with this gadget: the difference between
/// hashing 119 and 55 witness bytes (two blocks versus one). It includes the 512
/// booleanity constraints of the block's witness bits and the chaining reduction, like
/// [`baseline_constraints_per_compression`].
pub fn constraints_per_compression() -> Result<usize, SynthesisError> {
    Ok(ours_for(119)? - ours_for(55)?)
}

/// [`constraints_per_compression`] counted as the public records count: without the
/// block's message-bit booleanity constraints (zk.golf's 15,168 and Clean's 17,824 take
/// the message as bits their caller pins; see the module doc). The booleanity cost is
/// measured, not assumed: the constraints 64 witness bytes take.
pub fn constraints_per_compression_as_the_records_count() -> Result<usize, SynthesisError> {
    let cs = ark_relations::r1cs::ConstraintSystem::<Fr>::new_ref();
    witness_message(&cs, 64)?;
    Ok(constraints_per_compression()? - cs.num_constraints())
}

/// The same difference for ark-crypto-primitives' `Sha256Gadget`.
pub fn baseline_constraints_per_compression() -> Result<usize, SynthesisError> {
    Ok(baseline_for(119)? - baseline_for(55)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ark_ff::{One, PrimeField, Zero};
    use ark_relations::r1cs::ConstraintSystem;
    use rand::rngs::StdRng;
    use rand::{Rng, RngCore, SeedableRng};
    use sha2::{Digest, Sha256};

    /// Builds a CS hashing `msg` (witness bits) and checking the digest against `expected`
    /// as public inputs.
    fn hash_cs(msg: &[u8], expected: &[u8; 32]) -> ConstraintSystemRef<Fr> {
        let cs = ConstraintSystem::<Fr>::new_ref();
        let words = bytes_to_words(expected);
        let digest: [Lc; 8] = core::array::from_fn(|i| {
            Lc::from(cs.new_input_variable(|| Ok(Fr::from(words[i]))).unwrap())
        });
        let mut bits = Vec::new();
        for b in msg {
            bits.extend(Bit::alloc_byte(&cs, *b).unwrap());
        }
        let out = sha256(&cs, &bits).unwrap();
        enforce_digest(&cs, &out, &digest, &words).unwrap();
        cs
    }

    #[test]
    fn native_matches_sha2_every_length() {
        let mut rng = StdRng::seed_from_u64(1);
        for len in 0..=300 {
            let mut msg = vec![0u8; len];
            rng.fill_bytes(&mut msg);
            assert_eq!(sha256_native(&msg), <[u8; 32]>::from(Sha256::digest(&msg)));
        }
    }

    #[test]
    fn gadget_matches_sha2_every_length_0_to_300() {
        let mut rng = StdRng::seed_from_u64(2);
        // Release builds run every length; unoptimised debug builds (about a second per
        // block) run the block-boundary lengths and every ninth one.
        let lengths: Vec<usize> = if cfg!(debug_assertions) {
            (0..=300)
                .filter(|l| l % 9 == 0 || [55, 56, 63, 64, 119, 120, 127, 128].contains(l))
                .collect()
        } else {
            (0..=300).collect()
        };
        for len in lengths {
            let mut msg = vec![0u8; len];
            rng.fill_bytes(&mut msg);
            let expected: [u8; 32] = Sha256::digest(&msg).into();
            let cs = hash_cs(&msg, &expected);
            assert!(cs.is_satisfied().unwrap(), "length {len}");
            // The same witness against a digest one bit off is unsatisfiable.
            let word = rng.gen_range(0..8);
            let flip = Fr::from(1u64 << rng.gen_range(0..32));
            let mut inner = cs.borrow_mut().unwrap();
            let old = inner.instance_assignment[1 + word];
            let flipped = if (old.into_bigint().as_ref()[0] & flip.into_bigint().as_ref()[0]) != 0 {
                old - flip
            } else {
                old + flip
            };
            inner.instance_assignment[1 + word] = flipped;
            drop(inner);
            assert!(!cs.is_satisfied().unwrap(), "length {len}");
        }
    }

    #[test]
    fn gadget_nist_vectors() {
        let vectors: [(&[u8], &str); 4] = [
            (b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
            (b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            (
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
                "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
            ),
            (
                b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
                "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1",
            ),
        ];
        for (msg, hex_digest) in vectors {
            let expected: [u8; 32] = hex::decode(hex_digest).unwrap().try_into().unwrap();
            assert_eq!(sha256_native(msg), expected);
            assert!(hash_cs(msg, &expected).is_satisfied().unwrap());
        }
    }

    #[test]
    fn any_wrong_witness_value_is_rejected() {
        let mut rng = StdRng::seed_from_u64(3);
        let msg: Vec<u8> = (0..70).map(|_| rng.gen()).collect();
        let expected: [u8; 32] = Sha256::digest(&msg).into();
        let cs = hash_cs(&msg, &expected);
        assert!(cs.is_satisfied().unwrap());
        let n = cs.num_witness_variables();
        for _ in 0..300 {
            let i = rng.gen_range(0..n);
            let mut inner = cs.borrow_mut().unwrap();
            let old = inner.witness_assignment[i];
            // Flip a bit (0 <-> 1) or shift any other value by one.
            inner.witness_assignment[i] = if old.is_zero() || old.is_one() {
                Fr::one() - old
            } else {
                old + Fr::one()
            };
            drop(inner);
            assert!(!cs.is_satisfied().unwrap(), "witness {i} changed unnoticed");
            cs.borrow_mut().unwrap().witness_assignment[i] = old;
        }
        assert!(cs.is_satisfied().unwrap());
    }

    #[test]
    fn wrong_message_bit_gives_unsatisfiable_system() {
        // A prover that hashes a message differing in one bit cannot meet the digest.
        let mut rng = StdRng::seed_from_u64(4);
        for len in [0usize, 1, 55, 56, 64, 100] {
            let msg: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let expected: [u8; 32] = Sha256::digest(&msg).into();
            if len > 0 {
                let mut other = msg.clone();
                other[rng.gen_range(0..len)] ^= 1 << rng.gen_range(0..8);
                assert!(!hash_cs(&other, &expected).is_satisfied().unwrap());
            }
        }
    }

    #[test]
    fn constraint_counts() {
        let ours = constraints_per_compression().unwrap();
        let baseline = baseline_constraints_per_compression().unwrap();
        println!("zk-constraints-per-compression {ours}");
        println!("zk-baseline-constraints-per-compression {baseline}");
        assert!(
            ours < baseline * 2 / 3,
            "ours {ours} vs baseline {baseline}"
        );
        // Issue 20's floor: Clean's 17,824 per compression; and no regression from the
        // figure the module documentation accounts for.
        assert!(ours <= 17_824, "ours {ours}");
        assert!(
            ours <= 15_463,
            "ours {ours}: more than the documented accounting"
        );
        // As the records count (no message booleanity): 512 fewer, below zk.golf's 15,168.
        let records = constraints_per_compression_as_the_records_count().unwrap();
        assert_eq!(records, ours - 512);
        assert!(records < 15_168, "{records}");
    }

    /// Two chained compressions from a public state, checked against the reference and
    /// against a digest one off.
    fn two_blocks_from_state(state: [u32; 8], blocks: [[u8; 64]; 2]) {
        let mut expected = state;
        for block in &blocks {
            compress_native(&mut expected, block);
        }
        let cs = ConstraintSystem::<Fr>::new_ref();
        let lcs: [Lc; 8] = core::array::from_fn(|i| {
            Lc::from(cs.new_input_variable(|| Ok(Fr::from(state[i]))).unwrap())
        });
        let mut current = state_from_lcs(&cs, lcs, state).unwrap();
        let mut out = None;
        for (i, block) in blocks.iter().enumerate() {
            if i > 0 {
                current = chain(&cs, out.as_ref().unwrap()).unwrap();
            }
            let mut bits = Vec::new();
            for b in block {
                bits.extend(Bit::alloc_byte(&cs, *b).unwrap());
            }
            out = Some(compress(&cs, &current, &bits).unwrap());
        }
        let out = out.unwrap();
        for (w, e) in out.iter().zip(expected) {
            assert_eq!(w.value() as u32, e, "state {state:x?}");
        }
        let digest: [Lc; 8] = core::array::from_fn(|i| {
            Lc::from(cs.new_input_variable(|| Ok(Fr::from(expected[i]))).unwrap())
        });
        enforce_digest(&cs, &out, &digest, &expected).unwrap();
        assert!(cs.is_satisfied().unwrap(), "state {state:x?}");
        for word in 0..8 {
            let index = 9 + word;
            let old = cs.borrow().unwrap().instance_assignment[index];
            cs.borrow_mut().unwrap().instance_assignment[index] = old + Fr::one();
            assert!(!cs.is_satisfied().unwrap(), "digest word {word} off by one");
            cs.borrow_mut().unwrap().instance_assignment[index] = old;
        }
    }

    #[test]
    fn edge_case_states_and_blocks_match_native() {
        // All-zero and all-one states and blocks: with all-one words every carry chain of
        // the feed-forward (H + v) and of the sums ripples through every bit position;
        // 0x8000_0000 / 0x7fff_ffff words put a carry into or out of the top bit only.
        let mut rng = StdRng::seed_from_u64(6);
        let states = [
            [0u32; 8],
            [u32::MAX; 8],
            [0x8000_0000; 8],
            [0x7fff_ffff; 8],
            IV,
            core::array::from_fn(|_| rng.gen()),
        ];
        let words = |w: u32| -> [u8; 64] { core::array::from_fn(|i| w.to_be_bytes()[i % 4]) };
        let blocks = [
            words(0),
            words(u32::MAX),
            words(0x8000_0000),
            words(0x7fff_ffff),
            core::array::from_fn(|_| rng.gen()),
        ];
        for (i, state) in states.iter().enumerate() {
            for (j, first) in blocks.iter().enumerate() {
                let second = blocks[(i + j + 1) % blocks.len()];
                two_blocks_from_state(*state, [*first, second]);
            }
        }
    }

    #[test]
    fn compression_from_a_public_state_matches_native() {
        // Exercises the lazy d and h of a public midstate (round 0's fused sums and the
        // negated d offset) against the reference, and rejects a wrong state word.
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..2 {
            let state: [u32; 8] = core::array::from_fn(|_| rng.gen());
            let block: [u8; 64] = core::array::from_fn(|_| rng.gen());
            let mut expected = state;
            compress_native(&mut expected, &block);
            let cs = ConstraintSystem::<Fr>::new_ref();
            let lcs: [Lc; 8] = core::array::from_fn(|i| {
                Lc::from(cs.new_input_variable(|| Ok(Fr::from(state[i]))).unwrap())
            });
            let start = state_from_lcs(&cs, lcs, state).unwrap();
            let mut bits = Vec::new();
            for b in block {
                bits.extend(Bit::alloc_byte(&cs, b).unwrap());
            }
            let out = compress(&cs, &start, &bits).unwrap();
            for (w, e) in out.iter().zip(expected) {
                assert_eq!(w.value() as u32, e);
            }
            let digest: [Lc; 8] = core::array::from_fn(|i| const_lc(Fr::from(expected[i])));
            enforce_digest(&cs, &out, &digest, &expected).unwrap();
            assert!(cs.is_satisfied().unwrap());
            cs.borrow_mut().unwrap().instance_assignment[4] += Fr::from(1u64);
            assert!(!cs.is_satisfied().unwrap());
        }
    }
}
