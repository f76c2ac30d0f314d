//! The QAP of our circuits over the smallest FFT domain that holds their rows: 2^k, 3·2^k
//! or 9·2^k points, not only 2^k.
//!
//! BN254's r − 1 = 2^28·3^2·…, so Fr has a multiplicative subgroup of every order
//! 2^a·3^b (a ≤ 28, b ≤ 2). ark-groth16's `LibsnarkReduction` always takes the next power
//! of two: 2^17 = 131,072 points for the 92,343 rows (constraints and inputs) of the real
//! TX2's circuit, where 3·2^15 = 98,304 suffice. With the smaller domain the H query and
//! every FFT of the prover shrink by a quarter.
//!
//! * [`MixedRadixReduction`]: ark-groth16's R1CS-to-QAP interface over ark-poly's
//!   `MixedRadixEvaluationDomain` (size and generator as ark chooses them). ark's key
//!   generator takes its domain size from the reduction (the H query has size − 1
//!   points), so [`crate::zk::setup`] is ark's generator with this reduction; ark's
//!   verifier does not depend on the domain. Its witness map, through ark's own prover, is
//!   the reference our prover is tested against.
//! * [`QapDomain`]: the same domain (same size, same generator ω, so the same order of
//!   constraints on it) with the FFTs the prover uses: radix-3 layers over ark's radix-2
//!   FFT. ark-poly's mixed-radix FFT permutes its input one element at a time, keeps its
//!   radix-2 passes serial within each of its per-core cosets and recomputes every twiddle
//!   by a multiplication: on 3·2^15 points it took as long as ark's radix-2 FFT on 2^17
//!   (212 against 215 ms, ours 136 ms; test `fft_speed`, one run on a loaded box), which
//!   would give the gain back. ark offers no radix-3 step over its fast radix-2 FFT, hence
//!   [`dft`].

use ark_ff::{FftField, Field, PrimeField};
use ark_groth16::r1cs_to_qap::{evaluate_constraint, LibsnarkReduction, R1CSToQAP};
use ark_poly::{
    EvaluationDomain, GeneralEvaluationDomain, MixedRadixEvaluationDomain, Radix2EvaluationDomain,
};
use ark_relations::r1cs::{
    ConstraintMatrices, ConstraintSystemRef, Result as R1csResult, SynthesisError,
};
use rayon::prelude::*;

/// Number of points of the QAP domain for `rows` constraints and inputs: the smallest
/// 2^a·3^b ≥ `rows` that ark-poly's mixed-radix domain offers, or the next power of two
/// for a field without a radix-3 subgroup.
pub fn domain_size<F: FftField>(rows: usize) -> Option<usize> {
    ark_domain::<F>(rows).map(|d| d.size())
}

/// ark-poly's domain of that size (mixed-radix where the field allows it).
fn ark_domain<F: FftField>(rows: usize) -> Option<GeneralEvaluationDomain<F>> {
    if F::SMALL_SUBGROUP_BASE.is_some() {
        MixedRadixEvaluationDomain::new(rows).map(GeneralEvaluationDomain::MixedRadix)
    } else {
        Radix2EvaluationDomain::new(rows).map(GeneralEvaluationDomain::Radix2)
    }
}

/// ark-groth16's `LibsnarkReduction` over the mixed-radix domain (module doc).
pub struct MixedRadixReduction;

impl R1CSToQAP for MixedRadixReduction {
    #[allow(clippy::type_complexity)]
    fn instance_map_with_evaluation<F: PrimeField, D: EvaluationDomain<F>>(
        cs: ConstraintSystemRef<F>,
        t: &F,
    ) -> R1csResult<(Vec<F>, Vec<F>, Vec<F>, F, usize, usize)> {
        let matrices = cs.to_matrices().ok_or(SynthesisError::MissingCS)?;
        let (num_inputs, num_constraints) = (cs.num_instance_variables(), cs.num_constraints());
        let domain = ark_domain::<F>(num_constraints + num_inputs)
            .ok_or(SynthesisError::PolynomialDegreeTooLarge)?;
        // ark's generator draws t outside its own (radix-2) domain; Z(t) = 0 on ours would
        // make every H element the identity.
        let zt = domain.evaluate_vanishing_polynomial(*t);
        if zt.is_zero() {
            return Err(SynthesisError::UnexpectedIdentity);
        }
        let u = domain.evaluate_all_lagrange_coefficients(*t);
        let num_variables = num_inputs + cs.num_witness_variables();
        let (mut a, mut b, mut c) = (
            vec![F::zero(); num_variables],
            vec![F::zero(); num_variables],
            vec![F::zero(); num_variables],
        );
        a[..num_inputs].copy_from_slice(&u[num_constraints..num_constraints + num_inputs]);
        for (i, u_i) in u.iter().enumerate().take(num_constraints) {
            for (m, out) in [
                (&matrices.a, &mut a),
                (&matrices.b, &mut b),
                (&matrices.c, &mut c),
            ] {
                for &(coefficient, index) in &m[i] {
                    out[index] += *u_i * coefficient;
                }
            }
        }
        Ok((a, b, c, zt, num_variables - 1, domain.size()))
    }

    fn witness_map_from_matrices<F: PrimeField, D: EvaluationDomain<F>>(
        matrices: &ConstraintMatrices<F>,
        num_inputs: usize,
        num_constraints: usize,
        full_assignment: &[F],
    ) -> R1csResult<Vec<F>> {
        let domain = ark_domain::<F>(num_constraints + num_inputs)
            .ok_or(SynthesisError::PolynomialDegreeTooLarge)?;
        let coset = domain
            .get_coset(F::GENERATOR)
            .ok_or(SynthesisError::UnexpectedIdentity)?;
        let on_coset = |m: &[Vec<(F, usize)>], with_inputs: bool| {
            let mut v = vec![F::zero(); domain.size()];
            v[..num_constraints]
                .par_iter_mut()
                .zip(m)
                .for_each(|(v, row)| *v = evaluate_constraint(row, full_assignment));
            if with_inputs {
                v[num_constraints..num_constraints + num_inputs]
                    .copy_from_slice(&full_assignment[..num_inputs]);
            }
            domain.ifft_in_place(&mut v);
            coset.fft_in_place(&mut v);
            v
        };
        let (mut h, b, c) = (
            on_coset(&matrices.a, true),
            on_coset(&matrices.b, false),
            on_coset(&matrices.c, false),
        );
        let z_inverse = domain
            .evaluate_vanishing_polynomial(F::GENERATOR)
            .inverse()
            .ok_or(SynthesisError::UnexpectedIdentity)?;
        h.par_iter_mut()
            .zip(&b)
            .zip(&c)
            .for_each(|((h, b), c)| *h = (*h * b - c) * z_inverse);
        coset.ifft_in_place(&mut h);
        Ok(h)
    }

    fn h_query_scalars<F: PrimeField, D: EvaluationDomain<F>>(
        max_power: usize,
        t: F,
        zt: F,
        delta_inverse: F,
    ) -> Result<Vec<F>, SynthesisError> {
        // t^i·Z(t)/δ: nothing in it depends on the domain.
        LibsnarkReduction::h_query_scalars::<F, D>(max_power, t, zt, delta_inverse)
    }
}

/// The QAP domain with the prover's FFTs (module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct QapDomain<F: FftField> {
    size: usize,
    group_gen: F,
    group_gen_inv: F,
    size_inv: F,
}

impl<F: FftField> QapDomain<F> {
    /// The domain of `size` points, 2^a·3^b, with ark's generator for that size (the one
    /// both of ark-poly's domain types use); None for any other size.
    pub(crate) fn of_size(size: usize) -> Option<QapDomain<F>> {
        let mut rest = size;
        while rest > 0 && rest.is_multiple_of(3) {
            rest /= 3;
        }
        if !rest.is_power_of_two() {
            return None;
        }
        let group_gen = F::get_root_of_unity(size as u64)?;
        Some(QapDomain {
            size,
            group_gen,
            group_gen_inv: group_gen.inverse()?,
            size_inv: F::from(size as u64).inverse()?,
        })
    }

    /// Number of points.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// The coefficients of H = (A·B − C)/Z, Z the domain's vanishing polynomial, from the
    /// evaluations of A, B and C on the domain (each `size` long). H is computed on the
    /// coset F::GENERATOR·domain, where Z is the non-zero constant g^size − 1.
    pub(crate) fn quotient(&self, [mut a, mut b, mut c]: [Vec<F>; 3]) -> Vec<F> {
        let g = F::GENERATOR;
        let to_coset = |v: &mut Vec<F>| {
            dft(v, self.group_gen_inv);
            scale_by_powers(v, g, self.size_inv);
            dft(v, self.group_gen);
        };
        rayon::join(
            || to_coset(&mut a),
            || rayon::join(|| to_coset(&mut b), || to_coset(&mut c)),
        );
        let z_inverse = (g.pow([self.size as u64]) - F::one())
            .inverse()
            .expect("the multiplicative generator is outside every proper subgroup");
        a.par_iter_mut()
            .zip(&b)
            .zip(&c)
            .for_each(|((a, b), c)| *a = (*a * b - c) * z_inverse);
        drop((b, c));
        dft(&mut a, self.group_gen_inv);
        scale_by_powers(&mut a, g.inverse().expect("g ≠ 0"), self.size_inv);
        a
    }
}

/// Elements per task of the element-wise passes.
const CHUNK: usize = 1 << 12;

/// v[i] ← c·g^i·v[i], on every core.
fn scale_by_powers<F: Field>(v: &mut [F], g: F, c: F) {
    v.par_chunks_mut(CHUNK).enumerate().for_each(|(k, part)| {
        let mut factor = c * g.pow([(k * CHUNK) as u64]);
        for x in part {
            *x *= factor;
            factor *= g;
        }
    });
}

/// In-order DFT: v[j] ← Σᵢ v[i]·ω^(ij), for ω of order v.len() = 2^a·3^b. A length
/// divisible by 3 is split into its three residue classes mod 3 (decimation in time), each
/// transformed with ω³, and recombined by radix-3 butterflies; a power of two goes to
/// ark's radix-2 FFT.
pub(crate) fn dft<F: FftField>(v: &mut Vec<F>, omega: F) {
    let n = v.len();
    if !n.is_multiple_of(3) {
        radix2(v, omega);
        return;
    }

    let omega3 = omega.pow([3]);
    let mut parts: [Vec<F>; 3] = [0, 1, 2].map(|k| v.iter().skip(k).step_by(3).copied().collect());
    let [p0, p1, p2] = &mut parts;
    rayon::join(
        || dft(p0, omega3),
        || rayon::join(|| dft(p1, omega3), || dft(p2, omega3)),
    );
    radix3_butterflies(v, &parts, omega);
}

/// out[j + m·k] = E₀[j] + ζ^k·ω^j·E₁[j] + ζ^(2k)·ω^(2j)·E₂[j] for k < 3, with
/// ζ = ω^m a primitive cube root of unity (ζ² = −1 − ζ saves two multiplications).
fn radix3_butterflies<F: FftField>(v: &mut [F], parts: &[Vec<F>; 3], omega: F) {
    let m = parts[0].len();
    let zeta = omega.pow([m as u64]);
    let (o0, rest) = v.split_at_mut(m);
    let (o1, o2) = rest.split_at_mut(m);
    o0.par_chunks_mut(CHUNK)
        .zip(o1.par_chunks_mut(CHUNK))
        .zip(o2.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(k, ((o0, o1), o2))| {
            let start = k * CHUNK;
            let mut w = omega.pow([start as u64]);
            for j in 0..o0.len() {
                let e0 = parts[0][start + j];
                let t1 = parts[1][start + j] * w;
                let t2 = parts[2][start + j] * w.square();
                let d = zeta * (t1 - t2);
                o0[j] = e0 + t1 + t2;
                o1[j] = e0 - t2 + d;
                o2[j] = e0 - t1 - d;
                w *= omega;
            }
        });
}

/// ark's in-order radix-2 FFT with root `omega` (any element of order v.len(), a power
/// of two), unscaled.
fn radix2<F: FftField>(v: &mut Vec<F>, omega: F) {
    let n = v.len();
    if n <= 1 {
        return;
    }
    let size_as_field_element = F::from(n as u64);
    let domain = Radix2EvaluationDomain {
        size: n as u64,
        log_size_of_group: n.trailing_zeros(),
        size_as_field_element,
        size_inv: size_as_field_element.inverse().expect("n ≠ 0 in Fr"),
        group_gen: omega,
        group_gen_inv: omega.inverse().expect("ω ≠ 0"),
        offset: F::one(),
        offset_inv: F::one(),
        offset_pow_size: F::one(),
    };
    domain.fft_in_place(v);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ark_bn254::Fr;
    use ark_ff::Zero;
    use ark_std::UniformRand;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn random(n: usize, seed: u64) -> Vec<Fr> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n).map(|_| Fr::rand(&mut rng)).collect()
    }

    #[test]
    fn domain_sizes_are_the_smallest_2a_3b() {
        assert_eq!(domain_size::<Fr>(92_343), Some(3 << 15));
        assert_eq!(domain_size::<Fr>(98_305), Some(1 << 17));
        assert_eq!(domain_size::<Fr>(70_000), Some(9 << 13));
        assert_eq!(domain_size::<Fr>(1 << 16), Some(1 << 16));
        assert!(QapDomain::<Fr>::of_size(5 << 10).is_none());
        assert!(QapDomain::<Fr>::of_size(27 << 10).is_none());
    }

    /// Our DFT equals ark-poly's mixed-radix and radix-2 FFTs on the same domain.
    #[test]
    fn dft_matches_ark() {
        for (size, seed) in [(3 << 10, 1), (9 << 8, 2), (1 << 11, 3), (3, 4), (9, 5)] {
            let domain = QapDomain::<Fr>::of_size(size).unwrap();
            let ark = ark_domain::<Fr>(size).unwrap();
            assert_eq!(ark.size(), size);
            assert_eq!(ark.group_gen(), domain.group_gen);
            let coefficients = random(size, seed);
            let mut ours = coefficients.clone();
            dft(&mut ours, domain.group_gen);
            assert_eq!(ours, ark.fft(&coefficients), "size {size}");
            dft(&mut ours, domain.group_gen_inv);
            ours.iter_mut().for_each(|x| *x *= domain.size_inv);
            assert_eq!(ours, coefficients, "size {size}");
        }
    }

    /// H from our quotient equals the reduction's (ark's FFTs), and A·B − C = H·Z.
    #[test]
    fn quotient_matches_the_reference() {
        let size = 3 << 9;
        let domain = QapDomain::<Fr>::of_size(size).unwrap();
        let ark = ark_domain::<Fr>(size).unwrap();
        // Evaluations of A, B with C = A·B on the domain: H is a polynomial.
        let a = random(size, 7);
        let b = random(size, 8);
        let c: Vec<Fr> = a.iter().zip(&b).map(|(a, b)| *a * b).collect();
        let h = domain.quotient([a.clone(), b.clone(), c.clone()]);
        assert!(h[size - 1].is_zero());
        let x = Fr::from(12_345u64);
        let at_x = |evals: &[Fr]| {
            let coefficients = ark.ifft(evals);
            coefficients
                .iter()
                .rev()
                .fold(Fr::zero(), |acc, k| acc * x + k)
        };
        let h_at_x = h.iter().rev().fold(Fr::zero(), |acc, k| acc * x + k);
        assert_eq!(
            at_x(&a) * at_x(&b) - at_x(&c),
            h_at_x * ark.evaluate_vanishing_polynomial(x)
        );
    }

    /// Timing of our DFT against ark's mixed-radix FFT on 3·2^15 and ark's radix-2 FFT on
    /// 2^17 (printed, not asserted: `cargo test --release -- --ignored fft_speed
    /// --nocapture`).
    #[test]
    #[ignore]
    fn fft_speed() {
        let time = |name: &str, f: &dyn Fn()| {
            let start = std::time::Instant::now();
            for _ in 0..3 {
                f();
            }
            println!("{name}: {:?} per FFT", start.elapsed() / 3);
        };
        let small = random(3 << 15, 9);
        let large = random(1 << 17, 10);
        let ours = QapDomain::<Fr>::of_size(3 << 15).unwrap();
        let mixed = ark_domain::<Fr>(3 << 15).unwrap();
        let radix2 = Radix2EvaluationDomain::<Fr>::new(1 << 17).unwrap();
        time("ours, 3·2^15", &|| {
            let mut v = small.clone();
            dft(&mut v, ours.group_gen);
        });
        time("ark mixed-radix, 3·2^15", &|| {
            mixed.fft(&small);
        });
        time("ark radix-2, 2^17", &|| {
            radix2.fft(&large);
        });
    }
}
