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
//! | length prefixes pre-scanned, every point decoded with validation | off-curve and small-subgroup points (invalid-curve attacks that make the prover's scalar multiplications reveal scalars modulo small orders); memory exhaustion by hostile length prefixes |
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
use ark_ff::Zero;
use ark_std::UniformRand;
use rand::{CryptoRng, RngCore};

use super::api::{compile, deserialize_crs, Crs};
use super::circuit::Shape;

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

    /// Decodes `crs_bytes` with full point validation and runs every check.
    pub fn check_bytes(
        &self,
        crs_bytes: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Crs, CrsRejected> {
        let crs = deserialize_crs(crs_bytes).map_err(|_| CrsRejected)?;
        self.check_decoded(&crs, rng)?;
        Ok(crs)
    }

    /// Every check after decoding, on a CRS that was decoded with validation already (by
    /// [`crate::zk::deserialize_crs`] or [`CrsChecker::check_bytes`]). Decoding validates
    /// each of the ~10⁶ points of a real key (the G2 subgroup checks dominate), so a caller
    /// that holds a decoded CRS can re-check it without paying for that again. Its points
    /// are not re-validated: never hand it a CRS built from unchecked bytes.
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
    /// Compiles the circuit of `shape` and records which variables its A, B, C use.
    pub(crate) fn of(shape: &Shape) -> Option<CircuitProfile> {
        let cs = compile(shape).ok()?;
        let m = cs.to_matrices()?;
        let n_inst = cs.num_instance_variables();
        let n_vars = n_inst + cs.num_witness_variables();
        let mut in_a = vec![false; n_vars];
        let mut in_b = vec![false; n_vars];
        let mut in_c = vec![false; n_vars];
        for (rows, used) in [(&m.a, &mut in_a), (&m.b, &mut in_b), (&m.c, &mut in_c)] {
            for row in rows.iter() {
                for (coeff, i) in row {
                    if !coeff.is_zero() {
                        used[*i] = true;
                    }
                }
            }
        }
        // Every public input (and the constant) has its own row in the QAP's A.
        in_a[..n_inst].fill(true);
        Some(CircuitProfile {
            n_inst,
            n_vars,
            // ark-groth16's radix-2 domain over BN254's scalar field.
            domain_size: (cs.num_constraints() + n_inst).next_power_of_two(),
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

    // B in G1 and G2 agree: e(Σρᵢ B1ᵢ, g₂) = e(g₁, Σρᵢ B2ᵢ).
    let rho: Vec<Fr> = (0..n_vars).map(|_| Fr::rand(rng)).collect();
    let (Ok(b1), Ok(b2)) = (
        G1Projective::msm(&crs.b_g1_query, &rho),
        G2Projective::msm(&crs.b_g2_query, &rho),
    ) else {
        return Err("msm");
    };
    if !pairing_product_is_one(&[(b1.into_affine(), g2), (neg_g1, b2.into_affine())]) {
        return Err("b pairing");
    }

    // L and γ-abc entries of variables never in C:
    // e(ΣσL, δ₂)·e(ΣτIC, γ₂) = e(Σσ_iA_i + Στ_jA_j, β₂)·e(α₁, Σσ_iB_i + Στ_jB_j).
    let sigma: Vec<Fr> = (0..n_vars)
        .map(|i| if in_c[i] { Fr::zero() } else { Fr::rand(rng) })
        .collect();
    let (Ok(l_sum), Ok(ic_sum), Ok(a_sum), Ok(b_sum)) = (
        G1Projective::msm(&crs.l_query, &sigma[n_inst..]),
        G1Projective::msm(&vk.gamma_abc_g1, &sigma[..n_inst]),
        G1Projective::msm(&crs.a_query, &sigma),
        G2Projective::msm(&crs.b_g2_query, &sigma),
    ) else {
        return Err("msm2");
    };
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

fn pairing_product_is_one(pairs: &[(G1Affine, G2Affine)]) -> bool {
    let (a, b): (Vec<G1Affine>, Vec<G2Affine>) = pairs.iter().copied().unzip();
    Bn254::multi_pairing(a, b).is_zero()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zk::api::{prove, serialize_crs, setup};
    use crate::zk::circuit::tests::toy_shape;
    use crate::zk::fixtures::{toy_crs, toy_statement};
    use crate::zk::ZkError;
    use ark_bn254::Fq2;
    use ark_ec::short_weierstrass::Affine;
    use ark_serialize::CanonicalSerialize;
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
}
