//! Multi-scalar multiplication for the prover: Σ kᵢ·Pᵢ over short-Weierstrass points.
//!
//! ark's `msm_bigint` treats every scalar as 254 bits and adds into its buckets with
//! Jacobian mixed additions. A Groth16 witness is mostly 0 and 1 (the bits of SHA-256),
//! and the bases of a fixed key include identities, so [`msm`]:
//! * drops zero scalars and identity bases;
//! * sums the bases of unit scalars directly;
//! * runs Pippenger separately over the scalars of at most 64 bits and the wider ones,
//!   each with as many windows as its widest scalar needs (signed digits, 2^(c−1)
//!   buckets per window, windows in parallel);
//! * sums each bucket with affine additions that share one inversion per round
//!   (Montgomery's trick): about 6 field multiplications per addition instead of 11.
//!
//! The result is exactly Σ kᵢ·Pᵢ (tests compare it with ark's MSM).

use ark_ec::short_weierstrass::{Affine, Projective, SWCurveConfig};
use ark_ec::AffineRepr;
use ark_ff::{AdditiveGroup, BigInteger, Field, PrimeField, Zero};
use rayon::prelude::*;

type BigIntOf<P> = <<P as ark_ec::CurveConfig>::ScalarField as PrimeField>::BigInt;

/// Σ `scalars[i]`·`bases[i]` over the common length of both slices.
pub(crate) fn msm<P: SWCurveConfig>(bases: &[Affine<P>], scalars: &[BigIntOf<P>]) -> Projective<P> {
    let n = bases.len().min(scalars.len());
    let classes = classify::<P>(&bases[..n], &scalars[..n]);
    let (ones, (narrow, wide)) = rayon::join(
        || sum_points::<P>(classes.ones.iter().map(|&i| bases[i as usize]).collect()),
        || {
            rayon::join(
                || pippenger::<P>(bases, scalars, &classes.narrow),
                || pippenger::<P>(bases, scalars, &classes.wide),
            )
        },
    );
    ones + narrow + wide
}

/// Indices of the terms that matter, by scalar width.
struct Classes {
    ones: Vec<u32>,
    narrow: Vec<u32>,
    wide: Vec<u32>,
}

fn classify<P: SWCurveConfig>(bases: &[Affine<P>], scalars: &[BigIntOf<P>]) -> Classes {
    let mut classes = Classes {
        ones: Vec::new(),
        narrow: Vec::new(),
        wide: Vec::new(),
    };
    for (i, (base, k)) in bases.iter().zip(scalars).enumerate() {
        if base.is_zero() || k.is_zero() {
            continue;
        }
        let limbs = k.as_ref();
        let target = if limbs[1..].iter().any(|&l| l != 0) {
            &mut classes.wide
        } else if limbs[0] == 1 {
            &mut classes.ones
        } else {
            &mut classes.narrow
        };
        target.push(i as u32);
    }
    classes
}

/// Σ P over `points` (affine), on every core.
fn sum_points<P: SWCurveConfig>(points: Vec<Affine<P>>) -> Projective<P> {
    let chunk = points
        .len()
        .div_ceil(rayon::current_num_threads() * 4)
        .max(1024);
    points
        .par_chunks(chunk)
        .map(|part| {
            let sums = sum_groups::<P>(part.to_vec(), vec![0, part.len()]);
            sums[0].into_group()
        })
        .reduce(Projective::<P>::zero, |a, b| a + b)
}

/// Window width minimising (windows)·(n affine additions + 2^(c−1) Jacobian bucket
/// additions, about 4.5 times as costly each).
fn window_bits(n: usize, num_bits: usize) -> usize {
    (2..=20usize)
        .min_by_key(|&c| {
            let windows = (num_bits + 1).div_ceil(c);
            windows * (n + (9usize << (c - 1)) / 2)
        })
        .expect("non-empty range")
}

/// Signed digit of window `w` (width `c`) of `k`, in [−2^(c−1), 2^(c−1)] (Booth
/// recoding): the window read as a c-bit two's complement number, plus the top bit of the
/// window below. The digits telescope to k when the top window's top bit is zero, i.e.
/// with ⌈(bits + 1)/c⌉ windows.
fn digit(k: &[u64], w: usize, c: usize) -> i64 {
    let bits = |from: usize, count: usize| -> u64 {
        let (limb, shift) = (from / 64, from % 64);
        if limb >= k.len() {
            return 0;
        }
        let mut v = k[limb] >> shift;
        if shift + count > 64 && limb + 1 < k.len() {
            v |= k[limb + 1] << (64 - shift);
        }
        v & ((1u64 << count) - 1)
    };
    let carry = if w == 0 { 0 } else { bits(w * c - 1, 1) as i64 };
    let window = bits(w * c, c) as i64;
    let negative = (window >> (c - 1)) & 1;
    window - (negative << c) + carry
}

/// Pippenger over the terms `indices` (scalars not 0 or 1).
fn pippenger<P: SWCurveConfig>(
    bases: &[Affine<P>],
    scalars: &[BigIntOf<P>],
    indices: &[u32],
) -> Projective<P> {
    if indices.is_empty() {
        return Projective::<P>::zero();
    }
    let num_bits = indices
        .iter()
        .map(|&i| scalars[i as usize].num_bits() as usize)
        .max()
        .unwrap_or(1);
    let c = window_bits(indices.len(), num_bits);
    let windows = (num_bits + 1).div_ceil(c);
    let sums: Vec<Projective<P>> = (0..windows)
        .into_par_iter()
        .map(|w| window_sum::<P>(bases, scalars, indices, w, c))
        .collect();
    let mut total = Projective::<P>::zero();
    for sum in sums.iter().rev() {
        for _ in 0..c {
            total.double_in_place();
        }
        total += sum;
    }
    total
}

/// Σ digitᵢ·Pᵢ for one window: the points sorted into buckets by |digit| (negated for a
/// negative digit), each bucket summed in affine, then Σ b·bucket_b by running sums.
fn window_sum<P: SWCurveConfig>(
    bases: &[Affine<P>],
    scalars: &[BigIntOf<P>],
    indices: &[u32],
    w: usize,
    c: usize,
) -> Projective<P> {
    let buckets = 1usize << (c - 1);
    let digits: Vec<i64> = indices
        .iter()
        .map(|&i| digit(scalars[i as usize].as_ref(), w, c))
        .collect();
    // Counting sort by bucket (|digit| − 1).
    let mut starts = vec![0usize; buckets + 1];
    for &d in &digits {
        if d != 0 {
            starts[d.unsigned_abs() as usize] += 1;
        }
    }
    for b in 0..buckets {
        starts[b + 1] += starts[b];
    }
    let mut fill = starts.clone();
    let mut points = vec![Affine::<P>::identity(); starts[buckets]];
    for (&i, &d) in indices.iter().zip(&digits) {
        if d == 0 {
            continue;
        }
        let slot = &mut fill[d.unsigned_abs() as usize - 1];
        let base = bases[i as usize];
        points[*slot] = if d < 0 { -base } else { base };
        *slot += 1;
    }
    drop(digits);
    let sums = sum_groups::<P>(points, starts);
    let mut running = Projective::<P>::zero();
    let mut total = Projective::<P>::zero();
    for bucket in sums.iter().rev() {
        running += bucket;
        total += &running;
    }
    total
}

/// The sum of each group of `points` (group g is `starts[g]..starts[g + 1]`), by rounds
/// of pairwise affine additions that share one inversion per round.
fn sum_groups<P: SWCurveConfig>(
    mut points: Vec<Affine<P>>,
    mut starts: Vec<usize>,
) -> Vec<Affine<P>> {
    let groups = starts.len() - 1;
    let mut denominators: Vec<P::BaseField> = Vec::new();
    loop {
        let busy = (0..groups).any(|g| starts[g + 1] - starts[g] > 1);
        if !busy {
            break;
        }
        // Denominators x₂ − x₁ of every pair, inverted together.
        denominators.clear();
        for g in 0..groups {
            let group = &points[starts[g]..starts[g + 1]];
            for pair in group.chunks_exact(2) {
                denominators.push(pair[1].x - pair[0].x);
            }
        }
        batch_invert(&mut denominators);
        let mut next = Vec::with_capacity(points.len() / 2 + groups);
        let mut next_starts = Vec::with_capacity(groups + 1);
        let mut inverse = denominators.iter();
        for g in 0..groups {
            next_starts.push(next.len());
            let group = &points[starts[g]..starts[g + 1]];
            let mut pairs = group.chunks_exact(2);
            for pair in &mut pairs {
                let inv = inverse.next().expect("one denominator per pair");
                let sum = add_affine(pair[0], pair[1], inv);
                if !sum.is_zero() {
                    next.push(sum);
                }
            }
            next.extend_from_slice(pairs.remainder());
        }
        next_starts.push(next.len());
        points = next;
        starts = next_starts;
    }
    (0..groups)
        .map(|g| {
            if starts[g + 1] > starts[g] {
                points[starts[g]]
            } else {
                Affine::<P>::identity()
            }
        })
        .collect()
}

/// a + b for non-identity affine points, `inv` being 1/(x_b − x_a) (zero when x_a = x_b,
/// where the sum is a doubling or the identity).
fn add_affine<P: SWCurveConfig>(a: Affine<P>, b: Affine<P>, inv: &P::BaseField) -> Affine<P> {
    if a.x == b.x {
        return (a.into_group() + b).into();
    }
    let lambda = (b.y - a.y) * inv;
    let x = lambda.square() - a.x - b.x;
    let y = lambda * (a.x - x) - a.y;
    Affine::<P>::new_unchecked(x, y)
}

/// Replaces every non-zero element by its inverse (Montgomery's trick, one inversion).
fn batch_invert<F: Field>(v: &mut [F]) {
    let mut prefix = Vec::with_capacity(v.len());
    let mut acc = F::one();
    for x in v.iter() {
        prefix.push(acc);
        if !x.is_zero() {
            acc *= x;
        }
    }
    let mut inv = acc.inverse().expect("a product of non-zero elements");
    for (x, before) in v.iter_mut().zip(prefix).rev() {
        if x.is_zero() {
            continue;
        }
        let next = inv * *x;
        *x = inv * before;
        inv = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ark_bn254::{Fr, G1Affine, G1Projective, G2Affine, G2Projective};
    use ark_ec::{CurveGroup, VariableBaseMSM};
    use ark_std::UniformRand;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Scalars like a witness: zeros, ones, small words, full elements, and −1.
    fn scalars(n: usize, rng: &mut StdRng) -> Vec<Fr> {
        (0..n)
            .map(|_| match rng.gen_range(0..6) {
                0 => Fr::zero(),
                1 => Fr::from(1u64),
                2 => Fr::from(rng.gen::<u32>() as u64),
                3 => Fr::from(rng.gen::<u64>()),
                4 => -Fr::from(1u64),
                _ => Fr::rand(rng),
            })
            .collect()
    }

    #[test]
    fn msm_matches_ark_in_g1_and_g2() {
        let mut rng = StdRng::seed_from_u64(8);
        for n in [0usize, 1, 2, 3, 17, 300, 5000] {
            let k = scalars(n, &mut rng);
            let big: Vec<_> = k.iter().map(|s| s.into_bigint()).collect();
            let mut g1: Vec<G1Affine> = (0..n).map(|_| G1Affine::rand(&mut rng)).collect();
            let mut g2: Vec<G2Affine> = (0..n).map(|_| G2Affine::rand(&mut rng)).collect();
            // Identities, repeated points and opposite points (doublings and cancellations
            // inside a bucket).
            if n > 10 {
                g1[3] = G1Affine::identity();
                g2[3] = G2Affine::identity();
                g1[5] = g1[4];
                g2[5] = g2[4];
                g1[7] = -g1[6];
                g2[7] = -g2[6];
            }
            assert_eq!(
                msm::<ark_bn254::g1::Config>(&g1, &big).into_affine(),
                G1Projective::msm_bigint(&g1, &big).into_affine(),
                "G1, n = {n}"
            );
            assert_eq!(
                msm::<ark_bn254::g2::Config>(&g2, &big).into_affine(),
                G2Projective::msm_bigint(&g2, &big).into_affine(),
                "G2, n = {n}"
            );
        }
    }

    #[test]
    fn equal_points_with_equal_digits_double_and_cancel() {
        let mut rng = StdRng::seed_from_u64(9);
        let p = G1Affine::rand(&mut rng);
        let bases = vec![p, p, p, -p, p, -p];
        for k in [Fr::from(5u64), Fr::rand(&mut rng)] {
            let big = vec![k.into_bigint(); bases.len()];
            let expected = (p.into_group() * k * Fr::from(2u64)).into_affine();
            assert_eq!(
                msm::<ark_bn254::g1::Config>(&bases, &big).into_affine(),
                expected
            );
        }
    }

    #[test]
    fn signed_digits_rebuild_the_scalar() {
        let mut rng = StdRng::seed_from_u64(10);
        for _ in 0..200 {
            let k = Fr::rand(&mut rng).into_bigint();
            for c in [2usize, 5, 13, 16] {
                let windows = (254 + 1usize).div_ceil(c);
                let mut acc = Fr::zero();
                for w in (0..windows).rev() {
                    acc *= Fr::from(1u64 << c);
                    let d = digit(k.as_ref(), w, c);
                    assert!(d.unsigned_abs() <= 1 << (c - 1));
                    acc += if d < 0 {
                        -Fr::from(d.unsigned_abs())
                    } else {
                        Fr::from(d as u64)
                    };
                }
                assert_eq!(acc.into_bigint(), k, "c = {c}");
            }
        }
    }
}
