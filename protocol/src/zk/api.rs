//! Setup, proving, verification and compressed (de)serialisation of the reused-nonce proof.
//!
//! Renter: [`setup`] once per [`Shape`], then [`verify`] per contract. Farmer:
//! [`crate::zk::check_crs`] once per CRS (both sides cache it under [`crs_hash`]), then
//! [`prove`] per contract. Deserialisers pre-scan every length prefix against the bytes
//! actually present before handing them to ark-serialize (whose `Vec` decoder would
//! otherwise reserve whatever a hostile prefix asks for), and decode points with
//! validation: off-curve, out-of-subgroup, non-canonical or trailing bytes are errors. A
//! CRS's ~10⁶ points are decompressed on every core ([`decode_crs`]); the farmer's
//! [`crate::zk::check_crs`] checks the B query's G2 points for the subgroup in a batch.

use std::ops::Range;

use ark_bn254::{Bn254, Fq, Fq2, Fr, G1Projective, G2Projective};
use ark_ec::short_weierstrass::{Affine, SWCurveConfig, SWFlags};
use ark_ec::PrimeGroup;
use ark_ff::{BigInt, BitIteratorBE, Field, MontFp, Zero};
use ark_groth16::r1cs_to_qap::{LibsnarkReduction, R1CSToQAP};
use ark_groth16::{prepare_verifying_key, Groth16, Proof, ProvingKey, VerifyingKey};
use ark_relations::r1cs::{
    ConstraintSynthesizer, ConstraintSystem, OptimizationGoal, SynthesisMode,
};
use ark_serialize::{
    CanonicalDeserialize, CanonicalDeserializeWithFlags, CanonicalSerialize, Valid,
};
use ark_std::UniformRand;
use rand::{CryptoRng, RngCore};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::circuit::{PublicValues, Shape, TxCircuit};
use super::prover;
use super::qap::MixedRadixReduction;
use super::sha256_gadget::sha256_native;
use super::ZkError;
use crate::hashing::sha256;
use crate::nonce_reuse::Tx2Template;

/// The CRS the renter makes: a Groth16 proving key (it contains the verifying key).
pub type Crs = ProvingKey<Bn254>;
/// A Groth16 proof.
pub type ZkProof = Proof<Bn254>;

/// What the proof is about, known to both parties: the shape, TX2 with its s fields
/// zeroed, r and D.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    pub shape: Shape,
    pub template: Vec<u8>,
    pub r: [u8; 32],
    pub digest: [u8; 32],
}

impl Statement {
    /// Farmer side: the statement of a signed TX2 and its two hidden s values.
    pub fn of(tx2: &Tx2Template) -> Result<(Statement, [u8; 32], [u8; 32]), ZkError> {
        let shape = Shape::of(tx2)?;
        let field = |range: std::ops::Range<usize>| -> [u8; 32] {
            tx2.bytes[range].try_into().expect("32-byte field")
        };
        let (s1, s2) = (field(tx2.farmer_s.clone()), field(tx2.twin_s.clone()));
        let mut template = tx2.bytes.clone();
        template[tx2.farmer_s.clone()].fill(0);
        template[tx2.twin_s.clone()].fill(0);
        let statement = Statement {
            shape,
            template,
            r: field(tx2.farmer_r.clone()),
            digest: tx2.digest,
        };
        Ok((statement, s1, s2))
    }

    /// Renter: the statement is about the TX2 it signed. Its shape and every public byte
    /// equal the template the renter builds from the unsigned TX2, its own sig_R and the
    /// revealed r, so a verified proof binds D to a transaction that spends TX1 exactly as
    /// the renter agreed and whose broadcast reveals f. Without this check a farmer could
    /// prove a statement about some other transaction that reuses a nonce.
    pub fn check_against(
        &self,
        contract: &crate::contract::DownloadContract,
        unsigned_tx2: &bitcoin::Transaction,
        renter_sig: &bitcoin::ecdsa::Signature,
    ) -> Result<(), ZkError> {
        let expected =
            crate::nonce_reuse::expected_template(contract, unsigned_tx2, renter_sig, &self.r)
                .map_err(|_| ZkError::BadStatement)?;
        let (wanted, _, _) = Statement::of(&expected)?;
        if wanted.shape != self.shape || wanted.template != self.template {
            return Err(ZkError::BadStatement);
        }
        Ok(())
    }

    /// The public values (checks the template against the shape and r).
    pub fn public_values(&self) -> Result<PublicValues, ZkError> {
        PublicValues::new(&self.shape, &self.template, &self.r, &self.digest)
    }

    /// The public-input vector in circuit order.
    pub fn public_inputs(&self) -> Result<Vec<Fr>, ZkError> {
        Ok(self.public_values()?.to_field_elements())
    }

    /// The full TX2 with `s1`, `s2` put back.
    fn with_s(&self, s1: &[u8; 32], s2: &[u8; 32]) -> Vec<u8> {
        let mut bytes = self.template.clone();
        bytes[Shape::range(self.shape.farmer_s)].copy_from_slice(s1);
        bytes[Shape::range(self.shape.twin_s)].copy_from_slice(s2);
        bytes
    }
}

/// Renter: generates the CRS for `shape`, over the standard generators of G1 and G2 (the
/// farmer's pairing checks in [`crate::zk::check_crs`] are against those generators) and
/// the circuit's smallest QAP domain ([`MixedRadixReduction`]).
pub fn setup(shape: &Shape, rng: &mut (impl RngCore + CryptoRng)) -> Result<Crs, ZkError> {
    setup_with::<MixedRadixReduction>(TxCircuit::blank(shape)?, rng)
}

/// Groth16 key generation for any circuit with ark's stock reduction (power-of-two
/// domain): the benchmark's baseline ([`crate::zk::baseline`]).
pub(crate) fn setup_circuit(
    circuit: impl ConstraintSynthesizer<Fr>,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Crs, ZkError> {
    setup_with::<LibsnarkReduction>(circuit, rng)
}

/// Groth16 key generation over reduction `Q`: fresh α, β, γ, δ, standard generators.
pub(crate) fn setup_with<Q: R1CSToQAP>(
    circuit: impl ConstraintSynthesizer<Fr>,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Crs, ZkError> {
    let [alpha, beta, gamma, delta] = [(); 4].map(|_| Fr::rand(rng));
    Ok(Groth16::<Bn254, Q>::generate_parameters_with_qap(
        circuit,
        alpha,
        beta,
        gamma,
        delta,
        G1Projective::generator(),
        G2Projective::generator(),
        rng,
    )?)
}

/// Compiles the circuit of `shape` in setup mode (no assignment), finalised.
pub(crate) fn compile(
    shape: &Shape,
) -> Result<ark_relations::r1cs::ConstraintSystemRef<Fr>, ZkError> {
    let cs = ConstraintSystem::<Fr>::new_ref();
    cs.set_optimization_goal(OptimizationGoal::Constraints);
    cs.set_mode(SynthesisMode::Setup);
    TxCircuit::blank(shape)?.generate_constraints(cs.clone())?;
    cs.finalize();
    Ok(cs)
}

/// Number of R1CS constraints of the circuit for `shape`.
pub fn num_constraints(shape: &Shape) -> Result<usize, ZkError> {
    Ok(compile(shape)?.num_constraints())
}

/// Farmer: proves that the TX2 behind `statement.digest`, with the hidden `s1` and `s2`,
/// is the statement's template with r at both r fields. The proof is checked against the
/// CRS's verifying key before it is returned.
pub fn prove(
    crs: &Crs,
    statement: &Statement,
    s1: &[u8; 32],
    s2: &[u8; 32],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<ZkProof, ZkError> {
    let public = statement.public_values()?;
    let bytes = statement.with_s(s1, s2);
    if sha256_native(&bytes) != statement.digest {
        return Err(ZkError::Unsatisfied);
    }
    let inputs = public.to_field_elements();
    let circuit = TxCircuit {
        shape: statement.shape,
        public,
        bytes,
        r: statement.r,
    };
    let proof = prove_circuit(crs, circuit, rng)?;
    verify_inputs(&crs.vk, &inputs, &proof)?;
    Ok(proof)
}

/// Farmer convenience: statement and proof straight from the signed TX2.
pub fn prove_tx2(
    crs: &Crs,
    tx2: &Tx2Template,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<(Statement, ZkProof), ZkError> {
    let (statement, s1, s2) = Statement::of(tx2)?;
    let proof = prove(crs, &statement, &s1, &s2, rng)?;
    Ok((statement, proof))
}

/// Groth16 proof of an arbitrary assignment, refusing unsatisfied ones: the shape's
/// circuit compiled once per process, one witness-only synthesis, the satisfaction check
/// inside the witness map ([`super::prover`]).
pub(crate) fn prove_circuit(
    crs: &Crs,
    circuit: TxCircuit,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<ZkProof, ZkError> {
    let r1cs = prover::compiled(&circuit.shape)?;
    let z = prover::assignment(circuit)?;
    let (r, s) = (Fr::rand(rng), Fr::rand(rng));
    prover::prove_with(crs, &r1cs, &z, r, s)
}

/// ark-groth16's prover over a synthesised constraint system, satisfied or not (tests
/// use it to play a cheating prover).
#[cfg(test)]
pub(crate) fn prove_assignment(
    crs: &Crs,
    cs: ark_relations::r1cs::ConstraintSystemRef<Fr>,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<ZkProof, ZkError> {
    cs.finalize();
    let matrices = cs.to_matrices().ok_or(ZkError::Unsatisfied)?;
    let (num_inputs, num_constraints) = (cs.num_instance_variables(), cs.num_constraints());
    let full: Vec<Fr> = {
        let inner = cs.borrow().ok_or(ZkError::Unsatisfied)?;
        [
            inner.instance_assignment.as_slice(),
            inner.witness_assignment.as_slice(),
        ]
        .concat()
    };
    if crs.a_query.len() != full.len() || crs.vk.gamma_abc_g1.len() != num_inputs {
        return Err(ZkError::Groth16("CRS is for another circuit".into()));
    }
    let (r, s) = (Fr::rand(rng), Fr::rand(rng));
    Ok(
        Groth16::<Bn254, MixedRadixReduction>::create_proof_with_reduction_and_matrices(
            crs,
            r,
            s,
            &matrices,
            num_inputs,
            num_constraints,
            &full,
        )?,
    )
}

/// Renter: verifies `proof` for `statement` (public inputs are rebuilt natively from it).
pub fn verify(
    vk: &VerifyingKey<Bn254>,
    statement: &Statement,
    proof: &ZkProof,
) -> Result<(), ZkError> {
    verify_inputs(vk, &statement.public_inputs()?, proof)
}

/// Verifies against an explicit public-input vector.
pub fn verify_inputs(
    vk: &VerifyingKey<Bn254>,
    inputs: &[Fr],
    proof: &ZkProof,
) -> Result<(), ZkError> {
    if inputs.len() + 1 != vk.gamma_abc_g1.len() {
        return Err(ZkError::InvalidProof);
    }
    let pvk = prepare_verifying_key(vk);
    match Groth16::<Bn254>::verify_proof(&pvk, proof, inputs) {
        Ok(true) => Ok(()),
        _ => Err(ZkError::InvalidProof),
    }
}

// ---------------------------------------------------------------------------------------
// Serialisation
// ---------------------------------------------------------------------------------------

/// Compressed sizes of the items in ark-serialize's layout.
#[derive(Clone, Copy)]
enum Item {
    G1,
    G2,
    VecG1,
    VecG2,
    VecFr,
}

const G1_LEN: usize = 32;
const G2_LEN: usize = 64;
const FR_LEN: usize = 32;

impl Item {
    /// Bytes of one point or field element (of a vector's elements).
    fn element_len(self) -> usize {
        match self {
            Item::G1 | Item::VecG1 => G1_LEN,
            Item::G2 | Item::VecG2 => G2_LEN,
            Item::VecFr => FR_LEN,
        }
    }
}

const PROVING_KEY_LAYOUT: [Item; 12] = [
    Item::G1,    // vk.alpha_g1
    Item::G2,    // vk.beta_g2
    Item::G2,    // vk.gamma_g2
    Item::G2,    // vk.delta_g2
    Item::VecG1, // vk.gamma_abc_g1
    Item::G1,    // beta_g1
    Item::G1,    // delta_g1
    Item::VecG1, // a_query
    Item::VecG1, // b_g1_query
    Item::VecG2, // b_g2_query
    Item::VecG1, // h_query
    Item::VecG1, // l_query
];
const VERIFYING_KEY_LAYOUT: [Item; 5] = [Item::G1, Item::G2, Item::G2, Item::G2, Item::VecG1];
const PROOF_LAYOUT: [Item; 3] = [Item::G1, Item::G2, Item::G1];

/// Checks that `bytes` is exactly the concatenation of `layout`, with every vector's
/// length prefix backed by bytes that are present, and returns where each item's points
/// (or elements) are: a vector's range starts after its length prefix.
fn scan(bytes: &[u8], layout: &[Item]) -> Result<Vec<Range<usize>>, ZkError> {
    let mut pos = 0usize;
    let mut take = |n: usize| -> Result<Range<usize>, ZkError> {
        let end = pos.checked_add(n).ok_or(ZkError::Decode)?;
        if end > bytes.len() {
            return Err(ZkError::Decode);
        }
        let range = pos..end;
        pos = end;
        Ok(range)
    };
    let mut items = Vec::with_capacity(layout.len());
    for &item in layout {
        let range = match item {
            Item::G1 | Item::G2 => take(item.element_len())?,
            Item::VecG1 | Item::VecG2 | Item::VecFr => {
                let prefix = &bytes[take(8)?];
                let len = u64::from_le_bytes(prefix.try_into().expect("8 bytes"));
                let len = usize::try_from(len).map_err(|_| ZkError::Decode)?;
                take(len.checked_mul(item.element_len()).ok_or(ZkError::Decode)?)?
            }
        };
        items.push(range);
    }
    if pos != bytes.len() {
        return Err(ZkError::Decode);
    }
    Ok(items)
}

/// Indices of a CRS's items in [`crs_items`] (the order of ark's `ProvingKey` fields).
pub(crate) mod crs_item {
    pub const ALPHA_G1: usize = 0;
    pub const BETA_G2: usize = 1;
    pub const GAMMA_G2: usize = 2;
    pub const DELTA_G2: usize = 3;
    pub const GAMMA_ABC_G1: usize = 4;
    pub const BETA_G1: usize = 5;
    pub const DELTA_G1: usize = 6;
    pub const A_QUERY: usize = 7;
    pub const B_G1_QUERY: usize = 8;
    pub const B_G2_QUERY: usize = 9;
    pub const H_QUERY: usize = 10;
    pub const L_QUERY: usize = 11;
}

/// Where each item of a compressed CRS is (see [`crs_item`]), length prefixes checked.
pub(crate) fn crs_items(bytes: &[u8]) -> Result<Vec<Range<usize>>, ZkError> {
    scan(bytes, &PROVING_KEY_LAYOUT)
}

/// How much [`decode_crs`] checks of a G2 point of the B query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PointCheck {
    /// On the curve and in the order-r subgroup (ark's per-point check).
    Full,
    /// On the curve only: the caller checks the subgroup in a batch
    /// ([`crate::zk::check_crs`]).
    OnCurve,
}

/// (p + 1)/4 for BN254's base field (p ≡ 3 mod 4): a^((p+1)/4) is a square root of a
/// whenever a has one.
const P_PLUS_ONE_OVER_FOUR: BigInt<4> =
    ark_ff::BigInt!("5472060717959818805561601436314318772174077789324455915672259473661306552146");
/// 1/2 in BN254's base field.
const HALF: Fq =
    MontFp!("10944121435919637611123202872628637544348155578648911831344518947322613104292");

/// base^exp for a public exponent with a 5-bit sliding window: ~45 multiplications
/// besides the squarings for a 254-bit exponent, against ~127 for ark's square-and-multiply
/// (decompressing points is most of decoding a CRS).
fn pow_window<F: Field>(base: F, exp: &[u64]) -> F {
    let square = base.square();
    let mut odd_powers = [base; 16];
    for k in 1..odd_powers.len() {
        odd_powers[k] = odd_powers[k - 1] * square;
    }
    let bits: Vec<bool> = BitIteratorBE::without_leading_zeros(exp).collect();
    let mut acc = F::one();
    let mut i = 0;
    while i < bits.len() {
        if !bits[i] {
            acc.square_in_place();
            i += 1;
            continue;
        }
        let mut end = (i + 5).min(bits.len());
        while !bits[end - 1] {
            end -= 1;
        }
        let mut window = 0usize;
        for &bit in &bits[i..end] {
            acc.square_in_place();
            window = window << 1 | usize::from(bit);
        }
        acc *= odd_powers[window >> 1];
        i = end;
    }
    acc
}

/// Square roots for point decompression, faster than ark's and checked by squaring.
trait FastSqrt: Field {
    fn fast_sqrt(self) -> Option<Self>;
}

impl FastSqrt for Fq {
    fn fast_sqrt(self) -> Option<Fq> {
        let root = pow_window(self, P_PLUS_ONE_OVER_FOUR.as_ref());
        (root.square() == self).then_some(root)
    }
}

impl FastSqrt for Fq2 {
    /// The complex method (ePrint 2012/685, algorithm 8) for F_p[u]/(u² + 1) with two
    /// exponentiations instead of ark's three: for a = c0 + c1·u, s = √(c0² + c1²) and
    /// δ = (c0 + s)/2, t = δ^((p+1)/4) has t² = δ (root t + c1/(2t)·u) or, δ being a
    /// non-residue, t² = −δ (root c1/(2t) + t·u), because δ·(c0 − s)/2 = −c1²/4. Other
    /// cases (c1 = 0, δ = 0) go to ark's square root.
    fn fast_sqrt(self) -> Option<Fq2> {
        let (c0, c1) = (self.c0, self.c1);
        if c1.is_zero() {
            return self.sqrt();
        }
        let s = (c0.square() + c1.square()).fast_sqrt()?;
        let delta = (c0 + s) * HALF;
        let t = pow_window(delta, P_PLUS_ONE_OVER_FOUR.as_ref());
        let Some(t_inv) = t.inverse() else {
            return self.sqrt();
        };
        let other = c1 * HALF * t_inv;
        let root = if t.square() == delta {
            Fq2::new(t, other)
        } else {
            Fq2::new(other, t)
        };
        (root.square() == self).then_some(root)
    }
}

/// Decompresses one point exactly as ark-serialize does (canonical coordinates, the
/// infinity and sign flags, the smaller of ±y for a positive flag), without its checks.
fn decompress<P: SWCurveConfig>(bytes: &[u8]) -> Result<Affine<P>, ZkError>
where
    P::BaseField: FastSqrt,
{
    let (x, flags): (P::BaseField, SWFlags) =
        CanonicalDeserializeWithFlags::deserialize_with_flags(bytes)?;
    if flags.is_infinity() {
        return Ok(Affine::<P>::identity());
    }
    let y = (P::add_b(x.square() * x) + P::mul_by_a(x))
        .fast_sqrt()
        .ok_or(ZkError::Decode)?;
    let neg_y = -y;
    let (smaller, larger) = if y < neg_y { (y, neg_y) } else { (neg_y, y) };
    let y = if flags.is_positive() == Some(true) {
        smaller
    } else {
        larger
    };
    Ok(Affine::new_unchecked(x, y))
}

/// One compressed point, decoded (canonical coordinates, a y exists) and checked.
fn decode_point<P: SWCurveConfig>(bytes: &[u8], check: PointCheck) -> Result<Affine<P>, ZkError>
where
    P::BaseField: FastSqrt,
{
    let point = decompress::<P>(bytes)?;
    let valid = match check {
        PointCheck::Full => point.check().is_ok(),
        PointCheck::OnCurve => point.is_on_curve(),
    };
    valid.then_some(point).ok_or(ZkError::Decode)
}

/// Back-to-back compressed points of `len` bytes each, decoded and checked on every core.
fn decode_points<P: SWCurveConfig>(
    bytes: &[u8],
    len: usize,
    check: PointCheck,
) -> Result<Vec<Affine<P>>, ZkError>
where
    P::BaseField: FastSqrt,
{
    bytes
        .par_chunks(len)
        .map(|point| decode_point(point, check))
        .collect()
}

/// Decodes a compressed CRS on every core. Every coordinate must be canonical and every
/// point on its curve (in G1, whose cofactor is 1, that is the whole check); the G2 points
/// of the verifying key get ark's subgroup check, and those of the B query the check
/// `b_g2` says.
pub(crate) fn decode_crs(bytes: &[u8], b_g2: PointCheck) -> Result<Crs, ZkError> {
    use ark_bn254::{g1, g2};
    use crs_item::*;
    let items = crs_items(bytes)?;
    let at = |item: usize| &bytes[items[item].clone()];
    let g1_point = |item| decode_point::<g1::Config>(at(item), PointCheck::Full);
    let g2_point = |item| decode_point::<g2::Config>(at(item), PointCheck::Full);
    let g1_points = |item| decode_points::<g1::Config>(at(item), G1_LEN, PointCheck::Full);
    Ok(Crs {
        vk: VerifyingKey {
            alpha_g1: g1_point(ALPHA_G1)?,
            beta_g2: g2_point(BETA_G2)?,
            gamma_g2: g2_point(GAMMA_G2)?,
            delta_g2: g2_point(DELTA_G2)?,
            gamma_abc_g1: g1_points(GAMMA_ABC_G1)?,
        },
        beta_g1: g1_point(BETA_G1)?,
        delta_g1: g1_point(DELTA_G1)?,
        a_query: g1_points(A_QUERY)?,
        b_g1_query: g1_points(B_G1_QUERY)?,
        b_g2_query: decode_points::<g2::Config>(at(B_G2_QUERY), G2_LEN, b_g2)?,
        h_query: g1_points(H_QUERY)?,
        l_query: g1_points(L_QUERY)?,
    })
}

fn decode<T: CanonicalDeserialize>(bytes: &[u8], layout: &[Item]) -> Result<T, ZkError> {
    scan(bytes, layout)?;
    let mut reader = bytes;
    let value = T::deserialize_compressed(&mut reader)?;
    if !reader.is_empty() {
        return Err(ZkError::Decode);
    }
    Ok(value)
}

fn encode(value: &impl CanonicalSerialize) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.compressed_size());
    value
        .serialize_compressed(&mut out)
        .expect("writing to a Vec cannot fail");
    out
}

/// Compressed CRS bytes.
pub fn serialize_crs(crs: &Crs) -> Vec<u8> {
    encode(crs)
}

/// Decodes a CRS, validating every point (curve and subgroup, each G2 point on its own),
/// on every core. [`crate::zk::check_crs`] is faster: it checks the G2 subgroup in a batch
/// with the caller's randomness.
pub fn deserialize_crs(bytes: &[u8]) -> Result<Crs, ZkError> {
    decode_crs(bytes, PointCheck::Full)
}

/// Uncompressed CRS bytes for a node's own cache: a CRS it generated itself, or one it
/// already checked with [`crate::zk::check_crs`]. Never for bytes from a peer.
pub fn serialize_trusted_crs(crs: &Crs) -> Vec<u8> {
    let mut out = Vec::new();
    crs.serialize_uncompressed(&mut out)
        .expect("writing to a Vec cannot fail");
    out
}

/// Reads back [`serialize_trusted_crs`] output without re-validating the points (a
/// peer's CRS is decompressed and validated, which takes seconds).
pub fn deserialize_trusted_crs(bytes: &[u8]) -> Result<Crs, ZkError> {
    Ok(Crs::deserialize_uncompressed_unchecked(bytes)?)
}

/// Compressed verifying-key bytes.
pub fn serialize_vk(vk: &VerifyingKey<Bn254>) -> Vec<u8> {
    encode(vk)
}

/// Decodes a verifying key, validating every point.
pub fn deserialize_vk(bytes: &[u8]) -> Result<VerifyingKey<Bn254>, ZkError> {
    decode(bytes, &VERIFYING_KEY_LAYOUT)
}

/// Compressed proof bytes (128 bytes).
pub fn serialize_proof(proof: &ZkProof) -> Vec<u8> {
    encode(proof)
}

/// Decodes a proof, validating its three points.
pub fn deserialize_proof(bytes: &[u8]) -> Result<ZkProof, ZkError> {
    decode(bytes, &PROOF_LAYOUT)
}

/// Compressed public-input bytes.
pub fn serialize_public_inputs(inputs: &[Fr]) -> Vec<u8> {
    encode(&inputs.to_vec())
}

/// Decodes a public-input vector (canonical field elements only).
pub fn deserialize_public_inputs(bytes: &[u8]) -> Result<Vec<Fr>, ZkError> {
    decode(bytes, &[Item::VecFr])
}

/// The cache key of a CRS: SHA-256 of its compressed serialisation.
pub fn crs_hash(crs: &Crs) -> [u8; 32] {
    sha256(&[&serialize_crs(crs)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zk::check_crs;
    use crate::zk::circuit::tests::satisfied;
    use crate::zk::fixtures::{real_tx2, toy_crs, toy_statement};
    use ark_relations::r1cs::ConstraintSystemRef;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::time::Instant;

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// Neither s nor any 8-byte window of it (in either byte order) is in `bytes`.
    fn leaks(bytes: &[u8], s: &[u8; 32]) -> bool {
        let reversed: Vec<u8> = s.iter().rev().copied().collect();
        s.windows(8)
            .chain(reversed.windows(8))
            .any(|w| contains(bytes, w))
    }

    /// A cheating prover: synthesises `circuit` whatever it satisfies, proves it anyway.
    fn forced_proof(crs: &Crs, circuit: TxCircuit) -> ZkProof {
        let cs: ConstraintSystemRef<Fr> = ConstraintSystem::<Fr>::new_ref();
        cs.set_optimization_goal(OptimizationGoal::Constraints);
        circuit.generate_constraints(cs.clone()).unwrap();
        assert!(!cs.is_satisfied().unwrap());
        prove_assignment(crs, cs, &mut StdRng::seed_from_u64(5)).unwrap()
    }

    #[test]
    fn toy_setup_check_prove_verify() {
        let (shape, crs) = toy_crs();
        let mut rng = StdRng::seed_from_u64(1);
        let crs_bytes = serialize_crs(crs);
        let checked = check_crs(shape, &crs_bytes, &mut rng).unwrap();
        assert_eq!(crs_hash(&checked), crs_hash(crs));
        let (statement, s1, s2) = toy_statement(9);
        let proof = prove(&checked, &statement, &s1, &s2, &mut rng).unwrap();
        let bytes = serialize_proof(&proof);
        assert_eq!(bytes.len(), 128);
        verify(&crs.vk, &statement, &deserialize_proof(&bytes).unwrap()).unwrap();
        let inputs = statement.public_inputs().unwrap();
        assert_eq!(inputs.len(), shape.num_public_inputs());
        let decoded = deserialize_public_inputs(&serialize_public_inputs(&inputs)).unwrap();
        verify_inputs(
            &deserialize_vk(&serialize_vk(&crs.vk)).unwrap(),
            &decoded,
            &proof,
        )
        .unwrap();
        // Zero knowledge in practice: s1, s2 appear neither in the proof nor in the
        // public inputs (bytes or field elements).
        let public_bytes = serialize_public_inputs(&inputs);
        for s in [&s1, &s2] {
            assert!(!leaks(&bytes, s));
            assert!(!leaks(&public_bytes, s));
            assert!(!inputs.contains(&crate::zk::circuit::pack_bytes(&s[..31])));
        }
        // The proof is for this statement only.
        let (other, _, _) = toy_statement(10);
        assert_eq!(verify(&crs.vk, &other, &proof), Err(ZkError::InvalidProof));
    }

    #[test]
    fn toy_soundness_no_verifying_proof() {
        let (shape, crs) = toy_crs();
        let mut rng = StdRng::seed_from_u64(2);
        let (statement, s1, s2) = toy_statement(11);
        let bytes = statement.with_s(&s1, &s2);
        let honest = TxCircuit {
            shape: *shape,
            public: statement.public_values().unwrap(),
            bytes: bytes.clone(),
            r: statement.r,
        };
        assert!(satisfied(honest.clone()));

        // D that does not match the bytes.
        let mut wrong_d = statement.clone();
        wrong_d.digest[0] ^= 1;
        assert_eq!(
            prove(crs, &wrong_d, &s1, &s2, &mut rng),
            Err(ZkError::Unsatisfied)
        );
        let mut c = honest.clone();
        c.public = wrong_d.public_values().unwrap();
        let proof = forced_proof(crs, c);
        assert_eq!(
            verify(&crs.vk, &wrong_d, &proof),
            Err(ZkError::InvalidProof)
        );

        // A TX2 whose two r fields differ: refused natively, and a prover that hashes the
        // differing bytes cannot satisfy the circuit.
        let mut forged = bytes.clone();
        forged[shape.twin_r] ^= 0x40;
        let mut forged_statement = statement.clone();
        forged_statement.template[shape.twin_r] ^= 0x40;
        forged_statement.digest = sha256_native(&forged);
        assert_eq!(
            prove(crs, &forged_statement, &s1, &s2, &mut rng),
            Err(ZkError::BadStatement)
        );
        let mut c = honest.clone();
        c.public.digest = crate::zk::sha256_gadget::bytes_to_words(&forged_statement.digest);
        c.bytes = forged;
        let proof = forced_proof(crs, c);
        // Public inputs: the honest template (r at both fields) with the forged D.
        let mut inputs = statement.public_inputs().unwrap();
        for (i, w) in crate::zk::sha256_gadget::bytes_to_words(&forged_statement.digest)
            .iter()
            .enumerate()
        {
            inputs[8 + i] = Fr::from(*w);
        }
        assert_eq!(
            verify_inputs(&crs.vk, &inputs, &proof),
            Err(ZkError::InvalidProof)
        );

        // Template bytes changed anywhere (prefix, public part, r field): the real witness
        // no longer fits.
        for p in [0usize, 39, 64, 72, 110, 120, 179] {
            let mut changed = statement.clone();
            changed.template[p] ^= 0x02;
            let in_r = |start: usize| start <= p && p < start + 32;
            if in_r(shape.farmer_r) || in_r(shape.twin_r) {
                assert!(changed.public_values().is_err());
                continue;
            }
            assert_eq!(
                prove(crs, &changed, &s1, &s2, &mut rng),
                Err(ZkError::Unsatisfied),
                "byte {p}"
            );
            let mut c = honest.clone();
            c.public = changed.public_values().unwrap();
            assert!(!satisfied(c.clone()), "byte {p}");
            if p == 110 {
                let proof = forced_proof(crs, c);
                assert_eq!(
                    verify(&crs.vk, &changed, &proof),
                    Err(ZkError::InvalidProof)
                );
            }
        }
    }

    #[test]
    fn renter_accepts_only_the_statement_about_its_tx2() {
        let (p, tx2) = crate::nonce_reuse::tests::signed_template(50);
        let (statement, _, _) = Statement::of(&tx2).unwrap();
        let mut unsigned = tx2.tx.clone();
        unsigned.input[0].script_sig = bitcoin::ScriptBuf::new();
        let sig_r = p.contract.renter_sign_tx2(&unsigned, &p.r).unwrap();
        statement
            .check_against(&p.contract, &unsigned, &sig_r)
            .unwrap();
        // Any changed public byte, another r, another shape, or another TX2 is refused.
        for at in [
            0usize,
            10,
            100,
            statement.shape.twin_r + 3,
            statement.shape.len - 1,
        ] {
            let mut bad = statement.clone();
            bad.template[at] ^= 1;
            assert_eq!(
                bad.check_against(&p.contract, &unsigned, &sig_r),
                Err(ZkError::BadStatement),
                "byte {at}"
            );
        }
        let mut bad = statement.clone();
        bad.r[5] ^= 1;
        assert!(bad.check_against(&p.contract, &unsigned, &sig_r).is_err());
        let mut bad = statement.clone();
        bad.shape.twin_s += 1;
        assert!(bad.check_against(&p.contract, &unsigned, &sig_r).is_err());
        let (_, other) = crate::nonce_reuse::tests::signed_template(51);
        let (other_statement, _, _) = Statement::of(&other).unwrap();
        assert!(other_statement
            .check_against(&p.contract, &unsigned, &sig_r)
            .is_err());
    }

    #[test]
    fn real_tx2_statement_and_circuit() {
        let tx2 = real_tx2(40);
        let (statement, s1, s2) = Statement::of(&tx2).unwrap();
        let shape = statement.shape;
        println!(
            "TX2 {} bytes, s1 at {}, s2 at {}, prefix {} bytes, {} compressions, {} public inputs",
            shape.len,
            shape.farmer_s,
            shape.twin_s,
            shape.prefix_len(),
            shape.compressions(),
            shape.num_public_inputs()
        );
        // Same shape across contracts.
        assert_eq!(Statement::of(&real_tx2(41)).unwrap().0.shape, shape);
        let n = num_constraints(&shape).unwrap();
        println!("zk-constraints-real-tx2 {n}");
        let circuit = TxCircuit {
            shape,
            public: statement.public_values().unwrap(),
            bytes: tx2.bytes.clone(),
            r: statement.r,
        };
        assert!(satisfied(circuit.clone()));
        // The twin r field changed: refused.
        let mut bad = statement.clone();
        bad.template[tx2.twin_r.start] ^= 1;
        assert_eq!(bad.public_values(), Err(ZkError::BadStatement));
        // A hidden byte changed: the hash no longer matches D.
        let mut c = circuit;
        c.bytes[tx2.farmer_s.start + 3] ^= 1;
        assert!(!satisfied(c));
        let _ = (s1, s2);
    }

    /// Full-size setup, check, prove and verify on a real TX2 (in every build: the dev
    /// profile optimises this crate and the arkworks crates).
    #[test]
    fn real_tx2_setup_check_prove_verify() {
        let tx2 = real_tx2(42);
        let (statement, s1, s2) = Statement::of(&tx2).unwrap();
        let shape = statement.shape;
        let mut rng = StdRng::seed_from_u64(3);
        let t = Instant::now();
        let crs = setup(&shape, &mut rng).unwrap();
        println!("zk-setup-seconds {:.2}", t.elapsed().as_secs_f64());
        let bytes = serialize_crs(&crs);
        println!("zk-crs-bytes {}", bytes.len());
        let t = Instant::now();
        let crs = check_crs(&shape, &bytes, &mut rng).unwrap();
        println!("zk-check-crs-seconds {:.2}", t.elapsed().as_secs_f64());
        let t = Instant::now();
        let proof = prove(&crs, &statement, &s1, &s2, &mut rng).unwrap();
        println!("zk-prove-seconds {:.2}", t.elapsed().as_secs_f64());
        let t = Instant::now();
        verify(&crs.vk, &statement, &proof).unwrap();
        println!("zk-verify-seconds {:.3}", t.elapsed().as_secs_f64());
        let proof_bytes = serialize_proof(&proof);
        let inputs = serialize_public_inputs(&statement.public_inputs().unwrap());
        for s in [&s1, &s2] {
            assert!(!leaks(&proof_bytes, s));
            assert!(!leaks(&inputs, s));
        }
        // Another contract of the same shape reuses the CRS.
        let tx2b = real_tx2(43);
        let (statement_b, proof_b) = prove_tx2(&crs, &tx2b, &mut rng).unwrap();
        verify(&crs.vk, &statement_b, &proof_b).unwrap();
        assert!(verify(&crs.vk, &statement, &proof_b).is_err());
        // Soundness at full size: D off by one bit, twin r changed, a template byte changed.
        let mut wrong_d = statement.clone();
        wrong_d.digest[31] ^= 1;
        assert!(prove(&crs, &wrong_d, &s1, &s2, &mut rng).is_err());
        let mut c = TxCircuit {
            shape,
            public: wrong_d.public_values().unwrap(),
            bytes: tx2.bytes.clone(),
            r: statement.r,
        };
        let proof = forced_proof(&crs, c.clone());
        assert!(verify(&crs.vk, &wrong_d, &proof).is_err());
        let mut changed = statement.clone();
        changed.template[shape.len - 5] ^= 1;
        c.public = changed.public_values().unwrap();
        let proof = forced_proof(&crs, c);
        assert!(verify(&crs.vk, &changed, &proof).is_err());
        let mut forged = statement.clone();
        forged.template[tx2.twin_r.start + 7] ^= 1;
        assert!(prove(&crs, &forged, &s1, &s2, &mut rng).is_err());
    }

    #[test]
    fn truncated_and_corrupted_encodings_are_errors() {
        let (_, crs) = toy_crs();
        let (statement, s1, s2) = toy_statement(12);
        let proof = prove(crs, &statement, &s1, &s2, &mut StdRng::seed_from_u64(4)).unwrap();
        let proof_bytes = serialize_proof(&proof);
        let vk_bytes = serialize_vk(&crs.vk);
        let inputs = serialize_public_inputs(&statement.public_inputs().unwrap());
        for len in 0..proof_bytes.len() {
            assert!(deserialize_proof(&proof_bytes[..len]).is_err());
        }
        for len in 0..vk_bytes.len() {
            assert!(deserialize_vk(&vk_bytes[..len]).is_err());
        }
        for len in 0..inputs.len() {
            assert!(deserialize_public_inputs(&inputs[..len]).is_err());
        }
        let crs_bytes = serialize_crs(crs);
        for len in (0..crs_bytes.len()).step_by(crs_bytes.len() / 97) {
            assert!(deserialize_crs(&crs_bytes[..len]).is_err());
        }
        // Trailing bytes.
        let mut long = proof_bytes.clone();
        long.push(0);
        assert!(deserialize_proof(&long).is_err());
        // Hostile length prefixes (no huge allocation, no panic).
        let mut huge = inputs.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(deserialize_public_inputs(&huge).is_err());
        let mut huge = vk_bytes.clone();
        let off = 32 + 3 * 64;
        huge[off..off + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(deserialize_vk(&huge).is_err());
        // A non-canonical field element (the modulus itself).
        let mut bad = inputs.clone();
        let modulus = <Fr as ark_ff::PrimeField>::MODULUS;
        let mut m_bytes = Vec::new();
        modulus.serialize_compressed(&mut m_bytes).unwrap();
        bad[8..40].copy_from_slice(&m_bytes);
        assert!(deserialize_public_inputs(&bad).is_err());
        // Statement with the wrong number of public inputs.
        let mut short = statement.public_inputs().unwrap();
        short.pop();
        assert_eq!(
            verify_inputs(&crs.vk, &short, &proof),
            Err(ZkError::InvalidProof)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = deserialize_proof(&bytes);
            let _ = deserialize_vk(&bytes);
            let _ = deserialize_public_inputs(&bytes);
            let _ = deserialize_crs(&bytes);
        }

        #[test]
        fn corrupted_proofs_fail_or_decode(index in 0usize..128, mask in 1u8..=255) {
            let (_, crs) = toy_crs();
            let proof = cached_proof();
            let mut bytes = serialize_proof(&proof.1);
            bytes[index] ^= mask;
            // Either an error or a decodable proof that no longer verifies.
            if let Ok(p) = deserialize_proof(&bytes) {
                prop_assert!(verify(&crs.vk, &proof.0, &p).is_err());
            }
        }

        #[test]
        fn corrupted_public_inputs_fail_or_reject(index in 0usize..200, mask in 1u8..=255) {
            let (_, crs) = toy_crs();
            let proof = cached_proof();
            let mut bytes = serialize_public_inputs(&proof.0.public_inputs().unwrap());
            let index = index % bytes.len();
            bytes[index] ^= mask;
            if let Ok(inputs) = deserialize_public_inputs(&bytes) {
                prop_assert!(verify_inputs(&crs.vk, &inputs, &proof.1).is_err());
            }
        }
    }

    /// ark's own decompression (no checks), the reference for [`decompress`].
    fn ark_decompress<P: SWCurveConfig>(bytes: &[u8]) -> Option<Affine<P>> {
        Affine::<P>::deserialize_with_mode(
            bytes,
            ark_serialize::Compress::Yes,
            ark_serialize::Validate::No,
        )
        .ok()
    }

    #[test]
    fn fast_decompression_matches_ark() {
        use ark_bn254::{g1, g2, G1Affine, G2Affine};
        use ark_ec::AffineRepr;
        use ark_ff::{AdditiveGroup, One};
        use rand::RngCore;
        let mut rng = StdRng::seed_from_u64(30);
        assert_eq!(
            <ark_bn254::Fq2Config as ark_ff::Fp2Config>::NONRESIDUE,
            -Fq::one()
        );
        let mut p_plus_one = <Fq as ark_ff::PrimeField>::MODULUS;
        ark_ff::BigInteger::add_with_carry(&mut p_plus_one, &BigInt::from(1u64));
        assert_eq!(p_plus_one, P_PLUS_ONE_OVER_FOUR << 2);
        assert_eq!(HALF.double(), Fq::one());
        // Honest points (both signs), the identity, and random bytes (mostly no point,
        // non-canonical or bad flags).
        for _ in 0..300 {
            for point in [
                G1Affine::rand(&mut rng),
                -G1Affine::rand(&mut rng),
                G1Affine::zero(),
            ] {
                let bytes = encode(&point);
                assert_eq!(decompress::<g1::Config>(&bytes).ok(), Some(point));
            }
            for point in [
                G2Affine::rand(&mut rng),
                -G2Affine::rand(&mut rng),
                G2Affine::zero(),
            ] {
                let bytes = encode(&point);
                assert_eq!(decompress::<g2::Config>(&bytes).ok(), Some(point));
            }
        }
        for _ in 0..3000 {
            let mut bytes = [0u8; 64];
            rng.fill_bytes(&mut bytes);
            bytes[31] &= if rng.gen() { 0xff } else { 0x3f };
            bytes[63] &= if rng.gen() { 0xff } else { 0x3f };
            assert_eq!(
                decompress::<g1::Config>(&bytes[..32]).ok(),
                ark_decompress::<g1::Config>(&bytes[..32])
            );
            assert_eq!(
                decompress::<g2::Config>(&bytes).ok(),
                ark_decompress::<g2::Config>(&bytes)
            );
        }
        // Square roots: squares (including c1 = 0 and zero) and non-squares.
        for _ in 0..500 {
            let a = Fq2::rand(&mut rng);
            for b in [
                a,
                Fq2::new(a.c0, Fq::zero()),
                Fq2::new(Fq::zero(), a.c1),
                Fq2::zero(),
            ] {
                let root = b.square().fast_sqrt().unwrap();
                assert_eq!(root.square(), b.square());
                assert_eq!(b.fast_sqrt().is_some(), b.sqrt().is_some());
            }
            let x = Fq::rand(&mut rng);
            assert_eq!(x.fast_sqrt().is_some(), x.sqrt().is_some());
            assert_eq!(x.square().fast_sqrt().unwrap().square(), x.square());
        }
    }

    fn cached_proof() -> &'static (Statement, ZkProof) {
        static PROOF: std::sync::OnceLock<(Statement, ZkProof)> = std::sync::OnceLock::new();
        PROOF.get_or_init(|| {
            let (_, crs) = toy_crs();
            let (statement, s1, s2) = toy_statement(13);
            let proof = prove(crs, &statement, &s1, &s2, &mut StdRng::seed_from_u64(6)).unwrap();
            (statement, proof)
        })
    }
}
