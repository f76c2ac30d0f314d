//! The reused-nonce statement of PROTOCOL.md 3.4 as an R1CS circuit, one per TX2 shape.
//!
//! Public inputs, in this order (all BN254 scalars):
//! 1. the SHA-256 midstate after the whole 64-byte blocks before s1 (8 words);
//! 2. D = SHA256(TX2) (8 big-endian words);
//! 3. r, packed 31 bytes per element (2 elements);
//! 4. the template: every byte of TX2 from the first compressed block on, except the two
//!    32-byte s fields, packed 31 bytes per element (big-endian within an element).
//!
//! The bytes before the first compressed block enter through the midstate, which the
//! verifier computes itself from the template (see [`PublicValues::new`]), together with
//! the check that both r fields of the template equal r.
//!
//! Witness: s1 and s2 (bit-decomposed). Constraints: the message fed to SHA-256 from the
//! midstate is the template with r's bits at both r positions and the witness bits at the
//! s positions; every template byte equals its public element; SHA-256 from the midstate
//! over the remaining bytes with standard padding (using the total length) equals D.

use std::ops::Range;

use ark_bn254::Fr;
use ark_ff::{One, Zero};
use ark_relations::r1cs::{
    ConstraintSynthesizer, ConstraintSystemRef, LinearCombination, SynthesisError, Variable,
};
use serde::{Deserialize, Serialize};

use super::sha256_gadget::{self as gadget, Bit};
use super::ZkError;
use crate::nonce_reuse::Tx2Template;

/// Largest TX2 a shape may describe (bounds the circuit a hostile shape can ask for).
pub const MAX_TX_LEN: usize = 2048;

/// Bytes per packed public field element.
pub const BYTES_PER_ELEMENT: usize = 31;

/// Version of the constraint system a shape stands for. Bump it whenever synthesis
/// or the TX2 layout changes (2: the round-pair SHA-256 gadget; 3: R-first TX1 multisig,
/// s1 two blocks into TX2 instead of one; 4: SHA-256 schedule steps reduced in pairs, the
/// last round pair adding the block's input words, carry-chain chaining, and this
/// release's CRS shape change), so a CRS cached for an older circuit is never
/// taken for the current one ([`Shape::crs_cache_key`]): its file name differs, so it is
/// never opened, and a peer's CRS for another circuit fails the farmer's check.
pub const CIRCUIT_VERSION: u32 = 4;

/// The layout a circuit is specialised to: total length and the offsets of the two r and
/// two s fields (32 bytes each). Contracts with equal shapes share a CRS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shape {
    pub len: usize,
    pub farmer_r: usize,
    pub farmer_s: usize,
    pub twin_r: usize,
    pub twin_s: usize,
}

impl Shape {
    /// The shape of a signed TX2 template.
    pub fn of(template: &Tx2Template) -> Result<Shape, ZkError> {
        let ranges = [
            &template.farmer_r,
            &template.farmer_s,
            &template.twin_r,
            &template.twin_s,
        ];
        if ranges.iter().any(|r| r.len() != 32) {
            return Err(ZkError::BadShape);
        }
        let shape = Shape {
            len: template.bytes.len(),
            farmer_r: template.farmer_r.start,
            farmer_s: template.farmer_s.start,
            twin_r: template.twin_r.start,
            twin_s: template.twin_s.start,
        };
        shape.validate()?;
        Ok(shape)
    }

    /// Fields lie inside the transaction, do not overlap, s1 precedes s2, and the length
    /// is bounded.
    pub fn validate(&self) -> Result<(), ZkError> {
        if self.len > MAX_TX_LEN {
            return Err(ZkError::BadShape);
        }
        let mut fields = [self.farmer_r, self.farmer_s, self.twin_r, self.twin_s];
        if fields
            .iter()
            .any(|&o| o.checked_add(32).is_none_or(|end| end > self.len))
        {
            return Err(ZkError::BadShape);
        }
        if self.farmer_s + 32 > self.twin_s {
            return Err(ZkError::BadShape);
        }
        fields.sort_unstable();
        if fields.windows(2).any(|w| w[0] + 32 > w[1]) {
            return Err(ZkError::BadShape);
        }
        Ok(())
    }

    pub(crate) fn range(start: usize) -> Range<usize> {
        start..start + 32
    }

    /// Length of the prefix covered by the midstate: whole blocks before s1.
    pub fn prefix_len(&self) -> usize {
        self.farmer_s / 64 * 64
    }

    fn is_hidden(&self, p: usize) -> bool {
        Shape::range(self.farmer_s).contains(&p) || Shape::range(self.twin_s).contains(&p)
    }

    /// Offset into r if byte `p` belongs to an r field.
    fn r_index(&self, p: usize) -> Option<usize> {
        [self.farmer_r, self.twin_r]
            .into_iter()
            .find(|&start| Shape::range(start).contains(&p))
            .map(|start| p - start)
    }

    /// Positions of the public template bytes inside the circuit, in packing order.
    pub fn public_positions(&self) -> impl Iterator<Item = usize> + '_ {
        (self.prefix_len()..self.len).filter(|&p| !self.is_hidden(p))
    }

    /// Number of packed template elements.
    pub fn template_elements(&self) -> usize {
        self.public_positions().count().div_ceil(BYTES_PER_ELEMENT)
    }

    /// Total number of public inputs (without the constant one).
    pub fn num_public_inputs(&self) -> usize {
        8 + 8 + 2 + self.template_elements()
    }

    /// The name of this shape's CRS in a cache: a hash of [`CIRCUIT_VERSION`] and the
    /// shape, so a circuit change gives every shape a new name.
    pub fn crs_cache_key(&self) -> String {
        self.crs_cache_key_of_version(CIRCUIT_VERSION)
    }

    fn crs_cache_key_of_version(&self, version: u32) -> String {
        let shape = serde_json::to_vec(self).expect("a shape serialises");
        hex::encode(crate::hashing::sha256(&[
            b"dstore/crs-cache/v",
            &version.to_be_bytes(),
            &shape,
        ]))
    }

    /// SHA-256 compressions the circuit performs.
    pub fn compressions(&self) -> usize {
        (self.len + 9).div_ceil(64) - self.prefix_len() / 64
    }
}

/// Packs bytes big-endian into one field element (at most 31 bytes).
pub fn pack_bytes(bytes: &[u8]) -> Fr {
    debug_assert!(bytes.len() <= BYTES_PER_ELEMENT);
    let mut acc = Fr::zero();
    let base = Fr::from(256u64);
    for b in bytes {
        acc = acc * base + Fr::from(*b);
    }
    acc
}

/// The public values of one statement, computed natively from the template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicValues {
    pub midstate: [u32; 8],
    pub digest: [u32; 8],
    pub r: [Fr; 2],
    pub template: Vec<Fr>,
}

impl PublicValues {
    /// Computes the public inputs from a template (s bytes are ignored), r and D.
    /// Fails if the template does not fit the shape or an r field differs from r.
    pub fn new(
        shape: &Shape,
        template: &[u8],
        r: &[u8; 32],
        digest: &[u8; 32],
    ) -> Result<PublicValues, ZkError> {
        shape.validate()?;
        if template.len() != shape.len {
            return Err(ZkError::BadStatement);
        }
        for start in [shape.farmer_r, shape.twin_r] {
            if template[Shape::range(start)] != r[..] {
                return Err(ZkError::BadStatement);
            }
        }
        let midstate = gadget::midstate_native(&template[..shape.prefix_len()]);
        let public: Vec<u8> = shape.public_positions().map(|p| template[p]).collect();
        Ok(PublicValues {
            midstate,
            digest: gadget::bytes_to_words(digest),
            r: [pack_bytes(&r[..31]), pack_bytes(&r[31..])],
            template: public.chunks(BYTES_PER_ELEMENT).map(pack_bytes).collect(),
        })
    }

    /// The flat public-input vector in circuit order.
    pub fn to_field_elements(&self) -> Vec<Fr> {
        let mut out: Vec<Fr> = self.midstate.iter().map(|w| Fr::from(*w)).collect();
        out.extend(self.digest.iter().map(|w| Fr::from(*w)));
        out.extend(self.r);
        out.extend(self.template.iter().copied());
        out
    }
}

/// The circuit for one shape. `public` are the claimed public values; `bytes` is the
/// transaction the prover assigns (only its s bytes and non-r template bytes are used as
/// witness; for setup any bytes of the right length do).
#[derive(Debug, Clone)]
pub struct TxCircuit {
    pub shape: Shape,
    pub public: PublicValues,
    pub bytes: Vec<u8>,
    pub r: [u8; 32],
}

impl TxCircuit {
    /// The circuit for setup and CRS checking: zero assignment.
    pub fn blank(shape: &Shape) -> Result<TxCircuit, ZkError> {
        shape.validate()?;
        let bytes = vec![0u8; shape.len];
        let public = PublicValues::new(shape, &bytes, &[0; 32], &[0; 32])?;
        Ok(TxCircuit {
            shape: *shape,
            public,
            bytes,
            r: [0; 32],
        })
    }
}

fn one() -> LinearCombination<Fr> {
    LinearCombination::from((Fr::one(), Variable::One))
}

/// Enforces `Σ bits·2^k = target` for big-endian `bits` (at most 248 of them).
fn enforce_packing(
    cs: &ConstraintSystemRef<Fr>,
    bits: &[Bit],
    target: Variable,
) -> Result<(), SynthesisError> {
    enforce_packing_lcs(cs, bits.iter().map(Bit::lc), target)
}

/// The same over bits given as linear combinations, most significant first.
pub(crate) fn enforce_packing_lcs(
    cs: &ConstraintSystemRef<Fr>,
    bits: impl DoubleEndedIterator<Item = LinearCombination<Fr>>,
    target: Variable,
) -> Result<(), SynthesisError> {
    let mut lc = LinearCombination::zero();
    let mut coeff = Fr::one();
    for bit in bits.rev() {
        lc = lc + &(bit * coeff);
        coeff = coeff + coeff;
    }
    cs.enforce_constraint(lc - target, one(), LinearCombination::zero())
}

impl ConstraintSynthesizer<Fr> for TxCircuit {
    fn generate_constraints(self, cs: ConstraintSystemRef<Fr>) -> Result<(), SynthesisError> {
        let shape = self.shape;
        let public = &self.public;
        if self.bytes.len() != shape.len
            || shape.validate().is_err()
            || public.template.len() != shape.template_elements()
        {
            return Err(SynthesisError::Unsatisfiable);
        }
        let input = |v: Fr| cs.new_input_variable(|| Ok(v));
        let midstate: Vec<Variable> = public
            .midstate
            .iter()
            .map(|w| input(Fr::from(*w)))
            .collect::<Result<_, _>>()?;
        let digest: Vec<Variable> = public
            .digest
            .iter()
            .map(|w| input(Fr::from(*w)))
            .collect::<Result<_, _>>()?;
        let r_inputs = [input(public.r[0])?, input(public.r[1])?];
        let template_inputs: Vec<Variable> = public
            .template
            .iter()
            .map(|v| input(*v))
            .collect::<Result<_, _>>()?;

        // r as 256 witness bits tied to its two public elements.
        let mut r_bits = Vec::with_capacity(256);
        for byte in self.r {
            r_bits.extend(Bit::alloc_byte(&cs, byte)?);
        }
        enforce_packing(&cs, &r_bits[..248], r_inputs[0])?;
        enforce_packing(&cs, &r_bits[248..], r_inputs[1])?;

        // Message bits from the first compressed block to the end.
        let mut msg_bits = Vec::with_capacity((shape.len - shape.prefix_len()) * 8);
        let mut public_bits = Vec::new();
        for p in shape.prefix_len()..shape.len {
            let bits = match shape.r_index(p) {
                Some(i) => r_bits[i * 8..i * 8 + 8].to_vec(),
                None => Bit::alloc_byte(&cs, self.bytes[p])?,
            };
            if !shape.is_hidden(p) {
                public_bits.extend(bits.iter().cloned());
            }
            msg_bits.extend(bits);
        }
        for (chunk, target) in public_bits
            .chunks(BYTES_PER_ELEMENT * 8)
            .zip(&template_inputs)
        {
            enforce_packing(&cs, chunk, *target)?;
        }

        let lcs = |vars: &[Variable]| -> [LinearCombination<Fr>; 8] {
            core::array::from_fn(|i| LinearCombination::from(vars[i]))
        };
        let state = gadget::state_from_lcs(&cs, lcs(&midstate), public.midstate)?;
        let padded = gadget::pad_bits(msg_bits, shape.len);
        let out = gadget::sha256_from(&cs, state, &padded)?;
        gadget::enforce_digest(&cs, &out, &lcs(&digest), &public.digest)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ark_relations::r1cs::ConstraintSystem;

    /// A synthetic TX-like byte string with the real layout rules, for small shapes.
    pub(crate) fn toy(len: usize, shape: Shape, seed: u8) -> (Vec<u8>, [u8; 32]) {
        let mut bytes: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        let r = [seed ^ 0x5a; 32];
        bytes[Shape::range(shape.farmer_r)].copy_from_slice(&r);
        bytes[Shape::range(shape.twin_r)].copy_from_slice(&r);
        (bytes, r)
    }

    pub(crate) fn toy_shape() -> Shape {
        Shape {
            len: 180,
            farmer_r: 40,
            farmer_s: 74,
            twin_r: 112,
            twin_s: 146,
        }
    }

    pub(crate) fn circuit_for(shape: &Shape, bytes: &[u8], r: [u8; 32]) -> TxCircuit {
        let digest = gadget::sha256_native(bytes);
        TxCircuit {
            shape: *shape,
            public: PublicValues::new(shape, bytes, &r, &digest).unwrap(),
            bytes: bytes.to_vec(),
            r,
        }
    }

    pub(crate) fn satisfied(circuit: TxCircuit) -> bool {
        let cs = ConstraintSystem::<Fr>::new_ref();
        circuit.generate_constraints(cs.clone()).unwrap();
        cs.is_satisfied().unwrap()
    }

    #[test]
    fn shape_validation() {
        let good = toy_shape();
        good.validate().unwrap();
        let mut overlap = good;
        overlap.twin_r = good.twin_s - 10;
        assert_eq!(overlap.validate(), Err(ZkError::BadShape));
        let mut outside = good;
        outside.twin_s = good.len - 31;
        assert_eq!(outside.validate(), Err(ZkError::BadShape));
        let mut swapped = good;
        swapped.farmer_s = good.twin_s;
        swapped.twin_s = good.farmer_s;
        assert!(swapped.validate().is_err());
        let huge = Shape {
            len: usize::MAX,
            farmer_r: usize::MAX - 3,
            ..good
        };
        assert!(huge.validate().is_err());
    }

    #[test]
    fn honest_toy_assignment_satisfies() {
        let shape = toy_shape();
        let (bytes, r) = toy(shape.len, shape, 1);
        assert_eq!(shape.prefix_len(), 64);
        assert!(satisfied(circuit_for(&shape, &bytes, r)));
    }

    #[test]
    fn toy_soundness() {
        let shape = toy_shape();
        let (bytes, r) = toy(shape.len, shape, 2);
        let honest = circuit_for(&shape, &bytes, r);
        // Wrong D.
        let mut c = honest.clone();
        c.public.digest[3] ^= 1;
        assert!(!satisfied(c));
        // The twin r field differs from r: the prover's real bytes hash to D, but the
        // circuit puts r at both positions.
        let mut forged = bytes.clone();
        forged[shape.twin_r + 5] ^= 0x10;
        let mut c = circuit_for(&shape, &bytes, r);
        c.public.digest = gadget::bytes_to_words(&gadget::sha256_native(&forged));
        c.bytes = forged;
        assert!(!satisfied(c));
        // A template byte changed (inside the circuit and inside the prefix).
        for p in [3usize, 73, 110, 179] {
            let mut c = honest.clone();
            let mut other = bytes.clone();
            other[p] ^= 0x01;
            c.public =
                PublicValues::new(&shape, &other, &r, &gadget::sha256_native(&bytes)).unwrap();
            assert!(!satisfied(c), "byte {p}");
        }
        // Changing a hidden byte changes the hash.
        let mut c = honest.clone();
        c.bytes[shape.twin_s] ^= 0x80;
        assert!(!satisfied(c));
    }

    /// R-first (PROTOCOL.md 3.2): s1 starts at byte 156 of the 462-byte TX2, so the
    /// midstate covers two blocks and the circuit hashes six (F-first: s1 at 84, seven).
    #[test]
    fn real_tx2_hashes_six_blocks() {
        let shape = Shape::of(&crate::zk::fixtures::real_tx2(60)).unwrap();
        assert_eq!((shape.len, shape.farmer_s, shape.twin_s), (462, 156, 228));
        assert_eq!(shape.prefix_len(), 128);
        assert_eq!(shape.compressions(), 6);
        let farmer_first = Shape {
            len: 462,
            farmer_r: 50,
            farmer_s: 84,
            twin_r: 122,
            twin_s: 156,
        };
        assert_eq!(farmer_first.compressions(), 7);
    }

    /// A CRS cached under an older circuit version (or for another shape) has another
    /// name, so the cache never hands it out for the current circuit.
    #[test]
    fn crs_cache_key_names_version_and_shape() {
        let shape = toy_shape();
        assert_eq!(
            shape.crs_cache_key(),
            shape.crs_cache_key_of_version(CIRCUIT_VERSION)
        );
        // Every earlier version names another file; in particular a CRS of the previous
        // release (version 3, the gadget before paired schedule steps) is never reused.
        for old in 1..CIRCUIT_VERSION {
            assert_ne!(shape.crs_cache_key(), shape.crs_cache_key_of_version(old));
        }
        assert_ne!(shape.crs_cache_key(), shape.crs_cache_key_of_version(3));
        let moved = Shape {
            farmer_s: shape.farmer_s + 1,
            ..shape
        };
        assert_ne!(shape.crs_cache_key(), moved.crs_cache_key());
        assert_eq!(shape.crs_cache_key(), toy_shape().crs_cache_key());
    }

    #[test]
    fn public_values_reject_mismatched_r() {
        let shape = toy_shape();
        let (mut bytes, r) = toy(shape.len, shape, 3);
        bytes[shape.twin_r] ^= 1;
        assert_eq!(
            PublicValues::new(&shape, &bytes, &r, &[0; 32]),
            Err(ZkError::BadStatement)
        );
    }
}
