//! The farmer's check of a renter-made Groth16 CRS before it proves anything (PROTOCOL.md 3.5).
//!
//! The renter generates the CRS and is also the party that wants s1, s2 (they give f).
//! Campanelli–Gennaro–Goldfeder–Nizzardo (CCS 2017) show that a malformed CRS can make a
//! proof leak its witness. [`check_crs`] takes the CRS as received (bytes) and fails with
//! the one error [`CrsRejected`] whatever is wrong, so the failure itself says nothing
//! about which check tripped.
//!
//! | check | attack it defeats |
//! |---|---|
//! | length prefixes pre-scanned before any allocation | memory exhaustion by hostile length prefixes |
//! | every coordinate canonical (below p), every G1 point on the curve (BN254's G1 has cofactor 1: on the curve is in the group) | off-curve G1 points (invalid-curve attacks: the prover's scalar multiplications on a point of another curve reveal scalars modulo that curve's small orders); non-canonical encodings |
//! | every G2 point on the twist E′; β₂, γ₂, δ₂ also checked one by one for the order-r subgroup | points of another curve; a verifying key whose G2 elements have small-order components |
//! | batched subgroup check of the B query's G2 points: [r]·Σᵢρᵢ[Bᵢ]₂ = 0 for k = 10 independent vectors of 13-bit ρᵢ (see below) | B₂ entries on E′ outside G2: small-subgroup attacks through the prover's Σwᵢ[Bᵢ]₂, which would carry the witness modulo 10069, 5864401, … in B; each bad point slips through with probability at most 2⁻¹³⁰ |
//! | the farmer compiles the agreed circuit itself; every query vector has the length the circuit dictates, `gamma_abc` has one entry per public input | a key for another circuit or another shape (e.g. one where s1 is wired to a public input, or with fewer constraints) |
//! | α, β, γ, δ (both groups where present) are not the identity | δ = 0 removes the prover's blinding `rδ`, `sδ`: A and B become deterministic linear functions of the witness; β = 0 or α = 0 degenerate the key similarly |
//! | e([β]₁,g₂)=e(g₁,[β]₂), e([δ]₁,g₂)=e(g₁,[δ]₂) | G1/G2 halves that encode different trapdoors, which break the blinding of C (sA + rB − rsδ) |
//! | zero pattern of A, B (G1 and G2) and L queries matches the compiled matrices | queries that put a value where the circuit has none (a witness variable that the circuit never multiplies made to show up in A or B) |
//! | batched e(Σρᵢ[Bᵢ]₁,g₂)=e(g₁,Σρᵢ[Bᵢ]₂), random ρ | B₁ and B₂ queries that differ for some variable, so C's `rB₁` term no longer matches B |
//! | batched e(Σρᵢ[Lᵢ]₁,[δ]₂)=e(Σρᵢ[Aᵢ]₁,[β]₂)·e([α]₁,Σρᵢ[Bᵢ]₂) over the variables the circuit never puts in C, and the same with γ for the public inputs | L and γ-abc entries not of the form (βaᵢ+αbᵢ)/δ (resp. /γ): tampered witness or input coefficients |
//! | [`crate::zk::prove`] verifies its own proof with the CRS's verifying key before sending | everything else that would make the proof depend on the witness beyond the statement: see below |
//!
//! Why the last line matters. With δ₁, δ₂ not the identity, the prover's A = α + Σaᵢwᵢ + rδ
//! and B = β + Σbᵢwᵢ + sδ are uniform and independent for fresh r, s, whatever the query
//! vectors contain. If the proof verifies, C is the unique point with
//! e(C,δ₂) = e(A,B)/(e(α,β)·e(IC,γ)). So a proof that passes the self-check is distributed
//! as a function of the public statement alone, however the rest of the CRS was made:
//! it cannot carry s1 or s2.
//!
//! The batched G2 subgroup check. BN254's G2 is the order-r subgroup of the sextic twist
//! E′(F_p²), which has r·h points, h = 2p − r = 10069 · 5864401 · 1875725156269 · L with L a
//! 177-bit prime. r is prime and does not divide h, so E′ = G2 ⊕ H with |H| = h, and a point
//! of E′ is in G2 exactly when its H component is zero, i.e. when [r]P = 0. ark checks that
//! one point at a time (ψ(P) = [6x²]P, a 128-bit scalar multiplication per point), which
//! for the 10⁵ to 2·10⁵ points of the B query was most of the old check. Instead the
//! farmer decodes every G2 point on E′ only, draws k = [`SUBGROUP_COMBINATIONS`] independent
//! vectors ρ⁽ʲ⁾ of integers uniform in [0, 2¹³) and requires [r]·Σᵢρᵢ⁽ʲ⁾Pᵢ = 0 for every j.
//!
//! Soundness. Honest points pass (G2 is a group). Let P₁ = Q₁ + T₁ with Q₁ ∈ G2 and T₁ ∈ H,
//! T₁ ≠ 0, and let q be a prime factor of the order of T₁; q divides h, so q ≥ 10069 > 2¹³.
//! Fix every ρᵢ but ρ₁. The combination is in G2 iff its H component ΣᵢρᵢTᵢ is zero, i.e.
//! iff ρ₁T₁ = −Σᵢ₌₂ρᵢTᵢ. The integers ρ₁ that satisfy this are none or one residue class
//! modulo ord(T₁), hence lie in one class modulo q, and an interval of 2¹³ < q integers
//! meets a class modulo q at most once: one combination misses P₁ with probability at most
//! 2⁻¹³. The k vectors are independent and drawn after the renter committed to its bytes,
//! so all k miss with probability at most 2^(−13k) = 2⁻¹³⁰, for any number of bad points
//! (the argument needs one). The test `cofactor_has_no_divisor_up_to_2_13` checks the
//! premise on ark's cofactor.
//!
//! Why not the usual single combination with 128-bit ρ. Its failure probability is
//! 1/q + 2⁻¹²⁸ for a component of prime order q whatever the width of ρ: ρ₁ only matters
//! modulo q. A point whose H component has order 10069 would pass once in ~10⁴ tries, and
//! one group element says at most log₂ q ≈ 13.3 bits about such a component, so ~10
//! combinations are unavoidable; 13 bits is the widest ρ for which each combination gives
//! the full 2⁻¹³ against every factor of h, and narrow ρ keep each combination to one
//! mixed addition per point (2¹³ buckets, no doublings). The combinations use plain group
//! additions with integer coefficients and [r]· is double-and-add (no GLV endomorphism,
//! which acts as a scalar only on G2), so the algebra holds for every point of E′. The
//! combinations, the decoding (square roots by a sliding window, two exponentiations per
//! G2 point instead of ark's three: [`crate::zk::api`]) and ark's MSMs run on every core
//! (rayon), and one G2 MSM over the B query serves both batched pairing equations.
//!
//! What stays open. Without powers of tau in both groups the farmer cannot check that A, B
//! and H are evaluations of the circuit's polynomials at one τ, nor the L entries of
//! variables that appear in C. A renter can therefore craft a CRS for which honest
//! proofs verify for some witnesses and not others: the farmer's abort is then a
//! selective-failure channel of about one bit per attempt. The rule that closes it in
//! the protocol: a farmer whose check or self-verification fails never proves the same
//! TX2 signatures again (it re-signs TX2 with a fresh nonce for any new CRS). A full
//! check (Fuchsbauer 2018, Abdolmaleki et al. 2017) needs the renter to publish the powers
//! of tau [τⁱ]₁, [τⁱ]₂ so each query element can be checked against the circuit; a
//! two-party setup (the farmer contributes a δ-update) would also close it. Neither is
//! implemented here.

use ark_bn254::{Bn254, Fr, G1Affine, G1Projective, G2Affine, G2Projective};
use ark_ec::pairing::Pairing;
use ark_ec::{AffineRepr, CurveGroup, VariableBaseMSM};
use ark_ff::{AdditiveGroup, BitIteratorBE, PrimeField, Zero};
use ark_std::UniformRand;
use rand::{CryptoRng, Rng, RngCore};
use rayon::prelude::*;

use super::api::{decode_crs, Crs, PointCheck};
use super::circuit::Shape;
use super::prover::compiled;
use super::qap::domain_size;

/// The CRS was rejected (deliberately one value, whatever failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("CRS rejected")]
pub struct CrsRejected;

/// Farmer: decodes and checks a CRS for `shape` (see the module doc). Returns the
/// decoded CRS on success; cache it under [`crate::zk::crs_hash`]. Compiles the circuit
/// each time: a farmer checking several keys for one shape should keep a [`CrsChecker`].
pub fn check_crs(
    shape: &Shape,
    crs_bytes: &[u8],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Crs, CrsRejected> {
    CrsChecker::new(shape)?.check_bytes(crs_bytes, rng)
}

/// The farmer's own compilation of the circuit for one shape, kept to check any number of
/// keys against it.
pub struct CrsChecker {
    profile: CircuitProfile,
}

impl CrsChecker {
    /// Compiles the agreed circuit of `shape` (a malformed shape is rejected).
    pub fn new(shape: &Shape) -> Result<CrsChecker, CrsRejected> {
        Ok(CrsChecker {
            profile: CircuitProfile::of(shape).ok_or(CrsRejected)?,
        })
    }

    /// Decodes `crs_bytes` (every point on its curve, the B query's G2 points checked for
    /// the subgroup in a batch, see the module doc) and runs every check.
    pub fn check_bytes(
        &self,
        crs_bytes: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Crs, CrsRejected> {
        let crs = decode_crs(crs_bytes, PointCheck::OnCurve).map_err(|_| CrsRejected)?;
        if !g2_points_in_subgroup(&crs.b_g2_query, rng) {
            return Err(CrsRejected);
        }
        self.check_decoded(&crs, rng)?;
        Ok(crs)
    }

    /// Every check after decoding, on a CRS that was decoded with validation already (by
    /// [`crate::zk::deserialize_crs`] or [`CrsChecker::check_bytes`]). Decoding validates
    /// each of the ~10⁶ points of a real key (decompression and the G2 subgroup checks
    /// dominate), so a caller that holds a decoded CRS can re-check it without paying for
    /// that again. Its points are not re-validated: never hand it a CRS built from
    /// unchecked bytes.
    pub fn check_decoded(
        &self,
        crs: &Crs,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(), CrsRejected> {
        check(&self.profile, crs, rng).map_err(|_reason| CrsRejected)
    }
}

/// What the farmer's own compilation of the circuit says a CRS must look like.
pub(crate) struct CircuitProfile {
    n_inst: usize,
    n_vars: usize,
    domain_size: usize,
    in_a: Vec<bool>,
    in_b: Vec<bool>,
    in_c: Vec<bool>,
}

impl CircuitProfile {
    /// Compiles the circuit of `shape` (or takes the process's compilation, which the
    /// prover shares: [`crate::zk::prover::compiled`]) and records which variables its A,
    /// B, C use.
    pub(crate) fn of(shape: &Shape) -> Option<CircuitProfile> {
        let r1cs = compiled(shape).ok()?;
        let n_inst = r1cs.num_inputs();
        let n_vars = r1cs.num_variables();
        let [mut in_a, in_b, in_c] = r1cs.used_variables();
        // Every public input (and the constant) has its own row in the QAP's A.
        in_a[..n_inst].fill(true);
        Some(CircuitProfile {
            n_inst,
            n_vars,
            // The smallest 2^a·3^b domain, the one `setup` uses (super::qap).
            domain_size: domain_size::<Fr>(r1cs.num_constraints() + n_inst)?,
            in_a,
            in_b,
            in_c,
        })
    }
}

/// The checks against a compiled circuit; the reason is for tests only and never leaves
/// this module.
pub(crate) fn check(
    profile: &CircuitProfile,
    crs: &Crs,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<(), &'static str> {
    let CircuitProfile {
        n_inst,
        n_vars,
        domain_size,
        in_a,
        in_b,
        in_c,
    } = profile;
    let (n_inst, n_vars, domain_size) = (*n_inst, *n_vars, *domain_size);
    let vk = &crs.vk;

    // Sizes.
    if vk.gamma_abc_g1.len() != n_inst
        || crs.a_query.len() != n_vars
        || crs.b_g1_query.len() != n_vars
        || crs.b_g2_query.len() != n_vars
        || crs.l_query.len() != n_vars - n_inst
        || crs.h_query.len() != domain_size - 1
    {
        return Err("sizes");
    }

    // Trapdoor elements are not the identity.
    if [vk.alpha_g1, crs.beta_g1, crs.delta_g1]
        .iter()
        .any(|p| p.is_zero())
        || [vk.beta_g2, vk.gamma_g2, vk.delta_g2]
            .iter()
            .any(|p| p.is_zero())
    {
        return Err("identity");
    }

    let g1 = G1Affine::generator();
    let g2 = G2Affine::generator();
    let neg_g1 = -g1;
    // e(β₁, g₂) = e(g₁, β₂) and e(δ₁, g₂) = e(g₁, δ₂).
    if !pairing_product_is_one(&[(crs.beta_g1, g2), (neg_g1, vk.beta_g2)])
        || !pairing_product_is_one(&[(crs.delta_g1, g2), (neg_g1, vk.delta_g2)])
    {
        return Err("beta/delta pairing");
    }

    // Zero patterns.
    for i in 0..n_vars {
        if crs.a_query[i].is_zero() == in_a[i]
            || crs.b_g1_query[i].is_zero() == in_b[i]
            || crs.b_g2_query[i].is_zero() == in_b[i]
        {
            return Err("zero pattern");
        }
    }
    for (j, l) in crs.l_query.iter().enumerate() {
        let i = n_inst + j;
        if l.is_zero() == (in_a[i] || in_b[i] || in_c[i]) {
            return Err("l zero pattern");
        }
    }
    if crs.h_query.iter().any(|h| h.is_zero()) || vk.gamma_abc_g1.iter().any(|p| p.is_zero()) {
        return Err("h/ic identity");
    }

    // One random vector ρ for both batched equations below. Each equation combines its
    // own per-variable errors, so it misses one with probability at most 1/r for uniform ρ
    // whatever the other equation uses; sharing ρ lets the G2 sum over the B query be
    // computed once, split into the variables outside C (σ = ρ there) and those in C.
    let rho: Vec<Fr> = (0..n_vars).map(|_| Fr::rand(rng)).collect();
    let (sigma, rho_in_c): (Vec<Fr>, Vec<Fr>) = rho
        .iter()
        .zip(in_c)
        .map(|(&r, &c)| if c { (Fr::zero(), r) } else { (r, Fr::zero()) })
        .unzip();
    let (Ok(b1), Ok(b2_outside_c), Ok(b2_in_c)) = (
        G1Projective::msm(&crs.b_g1_query, &rho),
        G2Projective::msm(&crs.b_g2_query, &sigma),
        G2Projective::msm(&crs.b_g2_query, &rho_in_c),
    ) else {
        return Err("msm");
    };

    // B in G1 and G2 agree: e(Σρᵢ B1ᵢ, g₂) = e(g₁, Σρᵢ B2ᵢ).
    let b2 = b2_outside_c + b2_in_c;
    if !pairing_product_is_one(&[(b1.into_affine(), g2), (neg_g1, b2.into_affine())]) {
        return Err("b pairing");
    }

    // L and γ-abc entries of variables never in C (σᵢ = 0 on C):
    // e(ΣσL, δ₂)·e(ΣσIC, γ₂) = e(ΣσA, β₂)·e(α₁, ΣσB₂).
    let (Ok(l_sum), Ok(ic_sum), Ok(a_sum)) = (
        G1Projective::msm(&crs.l_query, &sigma[n_inst..]),
        G1Projective::msm(&vk.gamma_abc_g1, &sigma[..n_inst]),
        G1Projective::msm(&crs.a_query, &sigma),
    ) else {
        return Err("msm2");
    };
    let b_sum = b2_outside_c;
    if !pairing_product_is_one(&[
        (l_sum.into_affine(), vk.delta_g2),
        (ic_sum.into_affine(), vk.gamma_g2),
        ((-a_sum).into_affine(), vk.beta_g2),
        (-vk.alpha_g1, b_sum.into_affine()),
    ]) {
        return Err("l/ic pairing");
    }
    Ok(())
}

/// Width of the coefficients of the batched G2 subgroup check: every prime factor of
/// BN254's G2 cofactor exceeds 2¹³ (module doc).
const SUBGROUP_RHO_BITS: u32 = 13;

/// Independent combinations of the batched G2 subgroup check: a point outside G2 passes
/// with probability at most 2^(−13·10) = 2⁻¹³⁰.
pub const SUBGROUP_COMBINATIONS: usize = 10;

/// Whether every point of `points` (each already on the twist E′) is in G2, by
/// [`SUBGROUP_COMBINATIONS`] random combinations with 13-bit coefficients, each multiplied
/// by r (the module doc has the soundness argument). The combinations run in parallel.
pub(crate) fn g2_points_in_subgroup(
    points: &[G2Affine],
    rng: &mut (impl RngCore + CryptoRng),
) -> bool {
    let coefficients: Vec<Vec<u16>> = (0..SUBGROUP_COMBINATIONS)
        .map(|_| {
            (0..points.len())
                .map(|_| rng.gen::<u16>() >> (16 - SUBGROUP_RHO_BITS))
                .collect()
        })
        .collect();
    coefficients
        .par_iter()
        .all(|rho| times_group_order(combination(points, rho)).is_zero())
}

/// Σᵢ ρᵢ·Pᵢ with plain group additions: one mixed addition per point into the bucket of its
/// coefficient, then Σ_c c·bucket_c by running sums.
fn combination(points: &[G2Affine], rho: &[u16]) -> G2Projective {
    let mut buckets = vec![G2Projective::zero(); 1 << SUBGROUP_RHO_BITS];
    for (point, &c) in points.iter().zip(rho) {
        if c != 0 {
            buckets[usize::from(c)] += point;
        }
    }
    let (mut running, mut total) = (G2Projective::zero(), G2Projective::zero());
    for bucket in buckets[1..].iter().rev() {
        running += bucket;
        total += running;
    }
    total
}

/// [r]·P by double-and-add over the bits of r, valid for every point of E′.
fn times_group_order(point: G2Projective) -> G2Projective {
    let mut acc = G2Projective::zero();
    for bit in BitIteratorBE::without_leading_zeros(Fr::MODULUS) {
        acc.double_in_place();
        if bit {
            acc += point;
        }
    }
    acc
}

fn pairing_product_is_one(pairs: &[(G1Affine, G2Affine)]) -> bool {
    let (a, b): (Vec<G1Affine>, Vec<G2Affine>) = pairs.iter().copied().unzip();
    Bn254::multi_pairing(a, b).is_zero()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zk::api::{crs_item, crs_items, deserialize_crs, prove, serialize_crs, setup};
    use crate::zk::circuit::tests::toy_shape;
    use crate::zk::fixtures::{toy_crs, toy_statement};
    use crate::zk::ZkError;
    use ark_bn254::{Fq, Fq2};
    use ark_ec::short_weierstrass::Affine;
    use ark_ec::{CurveConfig, PrimeGroup};
    use ark_ff::BigInt;
    use ark_serialize::{CanonicalDeserialize, CanonicalSerialize};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn profile() -> &'static CircuitProfile {
        static PROFILE: std::sync::OnceLock<CircuitProfile> = std::sync::OnceLock::new();
        PROFILE.get_or_init(|| CircuitProfile::of(&toy_shape()).unwrap())
    }

    /// The in-memory checks (the decoding step is exercised by the byte-level tests).
    fn rejected(crs: &Crs) -> bool {
        check(profile(), crs, &mut StdRng::seed_from_u64(8)).is_err()
    }

    /// Index of a witness variable the circuit never puts in C (a plain bit).
    fn c_free_witness() -> usize {
        let p = profile();
        (p.n_inst..p.n_vars)
            .find(|&i| !p.in_c[i] && p.in_a[i])
            .unwrap()
    }

    #[test]
    fn honest_crs_passes() {
        let (shape, crs) = toy_crs();
        assert_eq!(check(profile(), crs, &mut StdRng::seed_from_u64(1)), Ok(()));
        let bytes = serialize_crs(crs);
        assert_eq!(
            check_crs(shape, &bytes, &mut StdRng::seed_from_u64(1)).unwrap(),
            *crs
        );
    }

    #[test]
    fn identity_delta_is_rejected() {
        let (_, crs) = toy_crs();
        let mut bad = crs.clone();
        bad.delta_g1 = G1Affine::zero();
        bad.vk.delta_g2 = G2Affine::zero();
        assert!(rejected(&bad));
        let (shape, _) = toy_crs();
        assert_eq!(
            check_crs(shape, &serialize_crs(&bad), &mut StdRng::seed_from_u64(9)),
            Err(CrsRejected)
        );
        let mut bad = crs.clone();
        bad.vk.delta_g2 = G2Affine::zero();
        assert!(rejected(&bad));
        for field in 0..3 {
            let mut bad = crs.clone();
            match field {
                0 => bad.vk.alpha_g1 = G1Affine::zero(),
                1 => bad.vk.gamma_g2 = G2Affine::zero(),
                _ => {
                    bad.beta_g1 = G1Affine::zero();
                    bad.vk.beta_g2 = G2Affine::zero();
                }
            }
            assert!(rejected(&bad), "field {field}");
        }
    }

    #[test]
    fn mismatched_beta_or_delta_is_rejected() {
        let (_, crs) = toy_crs();
        let mut bad = crs.clone();
        bad.beta_g1 = (crs.beta_g1 + G1Affine::generator()).into_affine();
        assert!(rejected(&bad));
        let mut bad = crs.clone();
        bad.vk.beta_g2 = (crs.vk.beta_g2 * Fr::from(2u64)).into_affine();
        assert!(rejected(&bad));
        let mut bad = crs.clone();
        bad.delta_g1 = (crs.delta_g1 * Fr::from(3u64)).into_affine();
        assert!(rejected(&bad));
    }

    #[test]
    fn point_outside_subgroup_is_rejected() {
        let (_, crs) = toy_crs();
        let mut rng = StdRng::seed_from_u64(2);
        let point = loop {
            let x = Fq2::rand(&mut rng);
            if let Some(p) = Affine::<ark_bn254::g2::Config>::get_point_from_x_unchecked(x, true) {
                if !p.is_in_correct_subgroup_assuming_on_curve() {
                    break p;
                }
            }
        };
        assert!(point.is_on_curve());
        for target in 0..3 {
            let mut bad = crs.clone();
            match target {
                0 => bad.vk.delta_g2 = point,
                1 => bad.vk.beta_g2 = point,
                _ => {
                    let i = bad.b_g2_query.iter().position(|p| !p.is_zero()).unwrap();
                    bad.b_g2_query[i] = point;
                }
            }
            // Serialisation does not validate; decoding must.
            let mut bytes = Vec::new();
            bad.serialize_compressed(&mut bytes).unwrap();
            let (shape, _) = toy_crs();
            assert_eq!(
                check_crs(shape, &bytes, &mut rng),
                Err(CrsRejected),
                "target {target}"
            );
        }
    }

    #[test]
    fn key_for_another_circuit_is_rejected() {
        let mut other = toy_shape();
        other.len += 1;
        let crs = setup(&other, &mut StdRng::seed_from_u64(3)).unwrap();
        assert!(rejected(&crs));
        // And the other way round: the toy CRS checked against the other shape.
        let (_, toy) = toy_crs();
        assert_eq!(
            check_crs(&other, &serialize_crs(toy), &mut StdRng::seed_from_u64(4)),
            Err(CrsRejected)
        );
    }

    #[test]
    fn tampered_query_vectors_are_rejected() {
        let (_, crs) = toy_crs();
        let g1 = G1Affine::generator();
        let i = c_free_witness();
        let n_inst = crs.vk.gamma_abc_g1.len();
        let bump = |p: &G1Affine| (*p + g1).into_affine();
        for target in 0..7 {
            let mut bad = crs.clone();
            match target {
                0 => bad.b_g1_query[i] = bump(&bad.b_g1_query[i]),
                1 => bad.b_g2_query[i] = (bad.b_g2_query[i] * Fr::from(5u64)).into_affine(),
                2 => bad.l_query[i - n_inst] = bump(&bad.l_query[i - n_inst]),
                3 => bad.a_query[i] = bump(&bad.a_query[i]),
                4 => bad.vk.gamma_abc_g1[1] = bump(&bad.vk.gamma_abc_g1[1]),
                5 => bad.h_query.pop().map(|_| ()).unwrap(),
                _ => {
                    // A value where the circuit has none (variable 0 is never in B).
                    let zero = bad.b_g1_query.iter().position(|p| p.is_zero()).unwrap();
                    bad.b_g1_query[zero] = g1;
                }
            }
            assert!(rejected(&bad), "target {target}");
        }
    }

    #[test]
    fn tampered_h_query_passes_check_but_self_verification_catches_it() {
        // What stays open: H is not checkable without powers of tau. The farmer's
        // self-verification still refuses to send a proof made with it.
        let (shape, crs) = toy_crs();
        let mut bad = crs.clone();
        bad.h_query[0] = (bad.h_query[0] + G1Affine::generator()).into_affine();
        let checked =
            check_crs(shape, &serialize_crs(&bad), &mut StdRng::seed_from_u64(5)).unwrap();
        let (statement, s1, s2) = toy_statement(20);
        assert_eq!(
            prove(
                &checked,
                &statement,
                &s1,
                &s2,
                &mut StdRng::seed_from_u64(6)
            ),
            Err(ZkError::InvalidProof)
        );
    }
    /// The prime factors of BN254's G2 cofactor h: the first three fit in a u64, L has 177
    /// bits.
    const SMALL_FACTORS: [u64; 3] = [10069, 5864401, 1875725156269];
    const LARGE_FACTOR: BigInt<4> =
        ark_ff::BigInt!("197620364512881247228717050342013327560683201906968909");

    fn cofactor() -> &'static [u64] {
        <ark_bn254::g2::Config as CurveConfig>::COFACTOR
    }

    /// `limbs` (little-endian u64 limbs) modulo `d`.
    fn limbs_mod(limbs: &[u64], d: u64) -> u64 {
        limbs.iter().rev().fold(0u64, |rem, &limb| {
            ((u128::from(rem) << 64 | u128::from(limb)) % u128::from(d)) as u64
        })
    }

    /// `limbs` times `m`, exactly (panics on overflow of the four limbs).
    fn limbs_times(limbs: &[u64], m: u64) -> [u64; 4] {
        let mut out = [0u64; 4];
        let mut carry = 0u128;
        for (o, &limb) in out.iter_mut().zip(limbs) {
            let v = u128::from(limb) * u128::from(m) + carry;
            *o = v as u64;
            carry = v >> 64;
        }
        assert_eq!(carry, 0);
        out
    }

    /// A point of the twist E′ that is not cofactor-cleared (almost always outside G2).
    fn point_on_twist(rng: &mut StdRng) -> G2Projective {
        loop {
            let x = Fq2::rand(rng);
            if let Some(p) = Affine::<ark_bn254::g2::Config>::get_point_from_x_unchecked(x, true) {
                return p.into_group();
            }
        }
    }

    /// A point of order exactly `q` (a prime factor of h): [r·h/q]P for a random P of E′.
    fn point_of_order(q_index: usize, rng: &mut StdRng) -> G2Affine {
        loop {
            let mut t = times_group_order(point_on_twist(rng));
            for (i, &f) in SMALL_FACTORS.iter().enumerate() {
                if i != q_index {
                    t = t.mul_bigint([f]);
                }
            }
            if q_index != SMALL_FACTORS.len() {
                t = t.mul_bigint(LARGE_FACTOR);
            }
            if t.is_zero() {
                continue;
            }
            let order_q = match SMALL_FACTORS.get(q_index) {
                Some(&q) => t.mul_bigint([q]),
                None => t.mul_bigint(LARGE_FACTOR),
            };
            assert!(order_q.is_zero());
            return t.into_affine();
        }
    }

    #[test]
    fn cofactor_has_no_divisor_up_to_2_13() {
        // The premise of the batched check's bound: every prime factor of h exceeds 2¹³.
        let h = cofactor();
        for d in 2..=(1u64 << SUBGROUP_RHO_BITS) {
            assert_ne!(limbs_mod(h, d), 0, "{d} divides the G2 cofactor");
        }
        // h is the product of the factors the tests use, and r does not divide it.
        let product = SMALL_FACTORS
            .iter()
            .fold(LARGE_FACTOR.0, |acc, &f| limbs_times(&acc, f));
        assert_eq!(&product[..], h);
        let mut h_bytes = Vec::new();
        for limb in h {
            h_bytes.extend_from_slice(&limb.to_le_bytes());
        }
        assert!(!Fr::from_le_bytes_mod_order(&h_bytes).is_zero());
        // The twist has (a multiple of) r·h points: [h]([r]P) = 0 for a random P.
        let mut rng = StdRng::seed_from_u64(20);
        let p = point_on_twist(&mut rng);
        assert!(!times_group_order(p).is_zero());
        assert!(times_group_order(p).mul_bigint(h).is_zero());
    }

    #[test]
    fn batch_check_passes_g2_and_catches_every_cofactor_component() {
        let (_, crs) = toy_crs();
        let mut rng = StdRng::seed_from_u64(21);
        assert!(g2_points_in_subgroup(&crs.b_g2_query, &mut rng));
        assert!(g2_points_in_subgroup(&[], &mut rng));
        let honest = crs.b_g2_query.iter().position(|p| !p.is_zero()).unwrap();
        for q_index in 0..=SMALL_FACTORS.len() {
            let t = point_of_order(q_index, &mut rng);
            // [r]· sees the component (no GLV shortcut that assumes G2).
            assert!(!times_group_order(t.into_group()).is_zero());
            // Alone, added to an honest point, or at the first and last positions.
            for at in [honest, 0, crs.b_g2_query.len() - 1] {
                let mut points = crs.b_g2_query.clone();
                points[at] = (points[at] + t).into_affine();
                assert!(!points[at].is_in_correct_subgroup_assuming_on_curve());
                for seed in 0..4 {
                    assert!(
                        !g2_points_in_subgroup(&points, &mut StdRng::seed_from_u64(seed)),
                        "factor {q_index} at {at}"
                    );
                }
            }
        }
    }

    /// `crs` serialised with the G2 point `at` of the B query replaced (no validation).
    fn with_b_g2(crs: &Crs, at: usize, point: G2Affine) -> Vec<u8> {
        let mut bad = crs.clone();
        bad.b_g2_query[at] = point;
        serialize_crs(&bad)
    }

    #[test]
    fn small_order_components_in_b_g2_are_rejected_from_bytes() {
        // The hardest case for a random combination: a component of the smallest order,
        // 10069, on an honest point (so every other check would pass).
        let (shape, crs) = toy_crs();
        let mut rng = StdRng::seed_from_u64(22);
        let checker = CrsChecker::new(shape).unwrap();
        let at = c_free_witness();
        for q_index in 0..=SMALL_FACTORS.len() {
            let t = point_of_order(q_index, &mut rng);
            let bytes = with_b_g2(crs, at, (crs.b_g2_query[at] + t).into_affine());
            assert_eq!(
                checker.check_bytes(&bytes, &mut rng),
                Err(CrsRejected),
                "factor {q_index}"
            );
        }
        // The bare point of order 10069, last in the query; the one-by-one decoder refuses
        // it too.
        let last = crs.b_g2_query.len() - 1;
        let bytes = with_b_g2(crs, last, point_of_order(0, &mut rng));
        assert_eq!(checker.check_bytes(&bytes, &mut rng), Err(CrsRejected));
        assert_eq!(deserialize_crs(&bytes), Err(ZkError::Decode));
    }

    /// Replaces the compressed G1 point at `index` of item `item` in `bytes` by `x` with
    /// the flags of the point that was there.
    fn replace_g1_x(bytes: &mut [u8], item: usize, index: usize, x: Fq) {
        let range = crs_items(bytes).unwrap()[item].clone();
        let at = range.start + index * 32;
        let flags = bytes[at + 31] & 0xc0;
        let mut encoded = Vec::new();
        x.serialize_compressed(&mut encoded).unwrap();
        bytes[at..at + 32].copy_from_slice(&encoded);
        bytes[at + 31] |= flags;
    }

    #[test]
    fn g1_points_off_the_curve_and_non_canonical_coordinates_are_rejected() {
        let (shape, crs) = toy_crs();
        let mut rng = StdRng::seed_from_u64(23);
        let honest = serialize_crs(crs);
        // An x with no point above it: x³ + 3 is not a square.
        let off_curve = loop {
            let x = Fq::rand(&mut rng);
            if G1Affine::get_point_from_x_unchecked(x, true).is_none() {
                break x;
            }
        };
        let nonzero = |v: &[G1Affine]| v.iter().position(|p| !p.is_zero()).unwrap();
        let targets = [
            (crs_item::ALPHA_G1, 0),
            (crs_item::GAMMA_ABC_G1, 1),
            (crs_item::BETA_G1, 0),
            (crs_item::A_QUERY, nonzero(&crs.a_query)),
            (crs_item::B_G1_QUERY, nonzero(&crs.b_g1_query)),
            (crs_item::H_QUERY, crs.h_query.len() - 1),
            (crs_item::L_QUERY, nonzero(&crs.l_query)),
        ];
        for (item, index) in targets {
            let mut bytes = honest.clone();
            replace_g1_x(&mut bytes, item, index, off_curve);
            assert_eq!(deserialize_crs(&bytes), Err(ZkError::Decode), "item {item}");
            assert_eq!(
                check_crs(shape, &bytes, &mut rng),
                Err(CrsRejected),
                "item {item}"
            );
            // The modulus p itself as a coordinate (non-canonical).
            let mut bytes = honest.clone();
            let range = crs_items(&bytes).unwrap()[item].clone();
            let at = range.start + index * 32;
            let mut p = Vec::new();
            <Fq as PrimeField>::MODULUS
                .serialize_compressed(&mut p)
                .unwrap();
            bytes[at..at + 32].copy_from_slice(&p);
            assert_eq!(deserialize_crs(&bytes), Err(ZkError::Decode), "item {item}");
            assert_eq!(check_crs(shape, &bytes, &mut rng), Err(CrsRejected));
        }
    }

    #[test]
    fn flipped_coordinate_bits_are_rejected() {
        // A flipped bit of x gives no point, or a different point (on G1: caught by the
        // pairing checks; on G2: almost always outside G2); a flipped sign bit gives −P.
        let (shape, crs) = toy_crs();
        let checker = CrsChecker::new(shape).unwrap();
        let mut rng = StdRng::seed_from_u64(24);
        let honest = serialize_crs(crs);
        let items = crs_items(&honest).unwrap();
        // A variable with B entries (any B change breaks the B pairing check) and one with
        // A and L entries outside C (the L check covers those).
        let p = profile();
        let b = (p.n_inst..p.n_vars).find(|&i| p.in_b[i]).unwrap();
        let i = c_free_witness();
        let b_g1 = items[crs_item::B_G1_QUERY].start + b * 32;
        let b_g2 = items[crs_item::B_G2_QUERY].start + b * 64;
        let a = items[crs_item::A_QUERY].start + i * 32;
        let l = items[crs_item::L_QUERY].start + (i - crs.vk.gamma_abc_g1.len()) * 32;
        let delta_g2 = items[crs_item::DELTA_G2].start;
        let mut flips = vec![(b_g1 + 31, 0x80), (b_g2 + 63, 0x80), (a + 31, 0x80)];
        // Bit 253 is the top bit of the coordinate (254 and 255 are the flags).
        for bit in [0usize, 100, 253] {
            for start in [b_g1, a, l] {
                flips.push((start + bit / 8, 1 << (bit % 8)));
            }
            for start in [b_g2, b_g2 + 32, delta_g2, delta_g2 + 32] {
                flips.push((start + bit / 8, 1 << (bit % 8)));
            }
        }
        for (at, mask) in flips {
            let mut bytes = honest.clone();
            bytes[at] ^= mask;
            assert_eq!(
                checker.check_bytes(&bytes, &mut rng),
                Err(CrsRejected),
                "byte {at} mask {mask:#x}"
            );
        }
    }

    #[test]
    fn parallel_decoding_matches_arks_validating_decoder() {
        let (_, crs) = toy_crs();
        let bytes = serialize_crs(crs);
        let ark = Crs::deserialize_compressed(&bytes[..]).unwrap();
        assert_eq!(ark, *crs);
        assert_eq!(decode_crs(&bytes, PointCheck::OnCurve).unwrap(), ark);
        assert_eq!(deserialize_crs(&bytes).unwrap(), ark);
        // A G2 point outside the subgroup: the full decoder refuses it one by one, the
        // on-curve decoder leaves it to the batch check.
        let mut rng = StdRng::seed_from_u64(25);
        let bytes = with_b_g2(crs, 0, point_of_order(0, &mut rng));
        assert!(Crs::deserialize_compressed(&bytes[..]).is_err());
        assert_eq!(deserialize_crs(&bytes), Err(ZkError::Decode));
        let decoded = decode_crs(&bytes, PointCheck::OnCurve).unwrap();
        assert!(!g2_points_in_subgroup(&decoded.b_g2_query, &mut rng));
    }
}
