//! Bit-lane gadgets of the SHA-256 circuit: one rank-1 constraint per lane or per pair of
//! lanes, each pinned by its own algebra (the soundness argument is next to each gadget).
//!
//! A lane's inputs are [`Bit`]s: constants, or linear combinations every satisfying
//! assignment makes 0 or 1 (a booleanity constraint, or a gadget below whose output is
//! uniquely determined by boolean inputs). The gadgets fold constants away for free.
//!
//! | gadget | computes | constraints | why a wrong witness fails |
//! |---|---|---|---|
//! | [`xor3`] | x ⊕ y ⊕ z | 1 | linear in the output with a never-zero coefficient |
//! | [`maj3`] | maj(x, y, z) | 1 | `(x + y + z − parity)/2`, the parity is pinned |
//! | [`ch_pair`] | Ch of two rounds, packed | 1 | linear in the output, nonzero coefficient |
//! | [`maj_pair`] | Maj of two rounds, packed | 1 | two roots; the false one is 2^100 off and no range check absorbs it |
//! | [`xor2_pair`], [`xor2_pair_across`] | two two-input XOR lanes (one word, or two fused words) | 1 | linear in the output, nonzero coefficient |
//! | [`add_bits`] | x + y mod 2^n of two bit words | n | each lane's carry is the previous lane's majority, pinned by its parity wire |
//! | [`alloc_bits`] + [`close_pair`] | two rounds' sums reduced mod 2^32 | one per bit | both rounds' residues are below λ/2 = 2^39 |

use ark_bn254::Fr;
use ark_ff::{AdditiveGroup, Field, MontFp, One, Zero};
use ark_relations::r1cs::{ConstraintSystemRef, LinearCombination, SynthesisError, Variable};
use std::sync::OnceLock;

pub(super) type Lc = LinearCombination<Fr>;

/// log₂ λ: the second round of a round pair sits at weight λ = 2^40 in packed lanes and
/// fused sums. Every per-round residue is below 2^38 < λ/2.
pub(super) const PAIR_SHIFT: u32 = 40;

/// log₂ Ω: the spurious root of a packed Maj lane is Ω = 2^100 away from the honest one.
const MAJ_FAR: u32 = 100;

/// Widest per-round decomposition a fused pair accepts (32 bits and up to 6 carry bits),
/// so that a round's residue stays below λ/2.
pub(super) const MAX_PAIR_BITS: u32 = 38;

// The integer bounds the soundness arguments use: a round's residue is below λ/2, a
// fused sum below 2^79, the Maj offset Ω above it, and Ω·2^33 far below the field order.
const _: () = assert!(MAX_PAIR_BITS + 1 < PAIR_SHIFT);
const _: () = assert!(PAIR_SHIFT + MAX_PAIR_BITS < 79 && MAJ_FAR > 80);
const _: () = assert!(MAJ_FAR + 33 < 253);

pub(super) fn one_lc() -> Lc {
    Lc::from((Fr::one(), Variable::One))
}

pub(super) fn const_lc(c: Fr) -> Lc {
    if c.is_zero() {
        Lc::zero()
    } else {
        Lc::from((c, Variable::One))
    }
}

/// Exponents the tables of powers of two cover (the gadget's weights stay below 2^101).
const POW2_TABLE: usize = 128;

/// 2^i. The gadget weights every lane by a power of two, so the common ones come from a
/// table built once rather than a square-and-multiply per lane.
pub(super) fn pow2(i: u32) -> Fr {
    static POWERS: OnceLock<Vec<Fr>> = OnceLock::new();
    let powers = POWERS.get_or_init(|| {
        std::iter::successors(Some(Fr::one()), |p| Some(p.double()))
            .take(POW2_TABLE)
            .collect()
    });
    match powers.get(i as usize) {
        Some(p) => *p,
        None => Fr::from(2u64).pow([u64::from(i)]),
    }
}

/// 2^−i, from a table like [`pow2`]'s (a field inversion costs as much as a lane).
pub(super) fn inv_pow2(i: u32) -> Fr {
    static INVERSES: OnceLock<Vec<Fr>> = OnceLock::new();
    let inverses = INVERSES.get_or_init(|| {
        let half = Fr::from(2u64).inverse().expect("2 is invertible");
        std::iter::successors(Some(Fr::one()), |p| Some(*p * half))
            .take(POW2_TABLE)
            .collect()
    });
    match inverses.get(i as usize) {
        Some(p) => *p,
        None => pow2(i).inverse().expect("2 is invertible"),
    }
}

/// 2^m for a signed m.
fn signed_pow2(m: i32) -> Fr {
    if m >= 0 {
        pow2(m.unsigned_abs())
    } else {
        inv_pow2(m.unsigned_abs())
    }
}

/// σ with σ² = −2^m (m may be negative), the one `Field::sqrt` gives (so the
/// constraints do not depend on the table), computed once per m: a square root costs a
/// few hundred multiplications.
fn sqrt_of_minus_pow2(m: i32) -> Fr {
    const SPAN: i32 = POW2_TABLE as i32;
    static ROOTS: [OnceLock<Fr>; 2 * POW2_TABLE] = [const { OnceLock::new() }; 2 * POW2_TABLE];
    let root = || {
        (-signed_pow2(m))
            .sqrt()
            .expect("−2^m is a square in BN254's scalar field")
    };
    match usize::try_from(m + SPAN).ok().and_then(|i| ROOTS.get(i)) {
        Some(cell) => *cell.get_or_init(root),
        None => root(),
    }
}

/// A boolean as a field element, without `Fr::from`'s Montgomery conversion.
pub(super) fn field_bit(b: bool) -> Fr {
    if b {
        Fr::one()
    } else {
        Fr::zero()
    }
}

// Small constants as compile-time field elements (no Montgomery conversion per lane).
const TWO: Fr = MontFp!("2");
const THREE: Fr = MontFp!("3");
const FOUR: Fr = MontFp!("4");

fn lambda() -> Fr {
    pow2(PAIR_SHIFT)
}

fn half() -> Fr {
    inv_pow2(1)
}

/// Σ cᵢ·lcᵢ. The terms are gathered unsorted and merged once by `compactify`: the same
/// combination (same sorted terms, same coefficients) as a chain of ark's `+`, which
/// would copy the growing sum at every step.
pub(super) fn combination<'a>(parts: impl IntoIterator<Item = (Fr, &'a Lc)>) -> Lc {
    let mut lc = Lc::zero();
    for (c, part) in parts {
        push_scaled(&mut lc, c, part);
    }
    lc.compactify();
    lc
}

/// Appends c·`part` to `lc` unsorted; the caller compactifies before `lc` is used.
pub(super) fn push_scaled(lc: &mut Lc, c: Fr, part: &Lc) {
    lc.0.extend(part.iter().map(|(f, v)| (*f * c, *v)));
}

/// A bit in the circuit: a constant, or an affine combination of variables whose every
/// satisfying assignment is 0 or 1. `val` is its value in the current assignment.
#[derive(Clone, Debug)]
pub enum Bit {
    Const(bool),
    Var { lc: Lc, val: bool },
}

impl Bit {
    /// Value in the current assignment (meaningless in setup mode).
    pub fn value(&self) -> bool {
        match self {
            Bit::Const(b) => *b,
            Bit::Var { val, .. } => *val,
        }
    }

    /// The bit as a linear combination.
    pub fn lc(&self) -> Lc {
        match self {
            Bit::Const(true) => one_lc(),
            Bit::Const(false) => Lc::zero(),
            Bit::Var { lc, .. } => lc.clone(),
        }
    }

    pub(super) fn is_var(&self) -> bool {
        matches!(self, Bit::Var { .. })
    }

    /// Appends c·bit to an unsorted `lc` (see [`push_scaled`]) without copying the bit.
    pub(super) fn push_scaled_to(&self, lc: &mut Lc, c: Fr) {
        match self {
            Bit::Const(true) => lc.0.push((c, Variable::One)),
            Bit::Const(false) => {}
            Bit::Var { lc: own, .. } => push_scaled(lc, c, own),
        }
    }

    /// Largest value the bit can take: 0 for the constant 0, else 1.
    pub(super) fn max(&self) -> u64 {
        u64::from(!matches!(self, Bit::Const(false)))
    }

    fn not(&self) -> Bit {
        match self {
            Bit::Const(b) => Bit::Const(!b),
            Bit::Var { lc, val } => Bit::Var {
                lc: one_lc() - lc,
                val: !val,
            },
        }
    }

    /// A witness bit with its booleanity constraint.
    pub fn alloc(cs: &ConstraintSystemRef<Fr>, val: bool) -> Result<Bit, SynthesisError> {
        let v = cs.new_witness_variable(|| Ok(field_bit(val)))?;
        let lc = Lc::from(v);
        enforce_boolean(cs, &lc)?;
        Ok(Bit::Var { lc, val })
    }

    /// The eight bits of a witness byte, most significant first.
    pub fn alloc_byte(cs: &ConstraintSystemRef<Fr>, byte: u8) -> Result<Vec<Bit>, SynthesisError> {
        (0..8)
            .map(|i| Bit::alloc(cs, (byte >> (7 - i)) & 1 == 1))
            .collect()
    }

    /// The eight constant bits of a byte, most significant first.
    pub fn const_byte(byte: u8) -> Vec<Bit> {
        (0..8)
            .map(|i| Bit::Const((byte >> (7 - i)) & 1 == 1))
            .collect()
    }
}

pub(super) fn enforce_boolean(cs: &ConstraintSystemRef<Fr>, lc: &Lc) -> Result<(), SynthesisError> {
    cs.enforce_constraint(
        lc.clone(),
        lc.clone() - (Fr::one(), Variable::One),
        Lc::zero(),
    )
}

/// x ⊕ y: free with a constant, otherwise `x + y − 2xy` (one constraint).
pub fn xor(cs: &ConstraintSystemRef<Fr>, x: &Bit, y: &Bit) -> Result<Bit, SynthesisError> {
    Ok(match (x, y) {
        (Bit::Const(a), Bit::Const(b)) => Bit::Const(a ^ b),
        (Bit::Const(c), v) | (v, Bit::Const(c)) => {
            if *c {
                v.not()
            } else {
                v.clone()
            }
        }
        (Bit::Var { lc: xl, val: xv }, Bit::Var { lc: yl, val: yv }) => {
            let p = cs.new_witness_variable(|| Ok(field_bit(*xv & *yv)))?;
            cs.enforce_constraint(xl.clone(), yl.clone(), Lc::from(p))?;
            Bit::Var {
                lc: xl + yl - (TWO, p),
                val: xv ^ yv,
            }
        }
    })
}

/// x ⊕ y ⊕ z in one constraint, free when at most one input is a variable.
///
/// **Parity of a count.** With s = x + y + z ∈ {0, 1, 2, 3} (an integer because the inputs
/// are bits), the parity o of s satisfies
///
/// ```text
///     (4·o − 2·s + 1) · (2·s − 3) = −3
/// ```
///
/// (s = 0: (4o + 1)(−3); s = 1: (4o − 1)(−1); s = 2: 4o − 3; s = 3: (4o − 5)·3.)
/// The constraint is linear in o with coefficient 4·(2s − 3) ∈ {±4, ±12}, never zero in
/// the field, so for every input it has exactly one solution o, and that solution is the
/// parity: no other value of the output wire, boolean or not, satisfies it. The output
/// needs no booleanity constraint of its own.
pub fn xor3(
    cs: &ConstraintSystemRef<Fr>,
    x: &Bit,
    y: &Bit,
    z: &Bit,
) -> Result<Bit, SynthesisError> {
    let vars = [x, y, z].iter().filter(|b| b.is_var()).count();
    if vars <= 1 {
        // Constants fold: two XORs with a constant operand are free.
        let mut bits = [x, y, z];
        bits.sort_by_key(|b| b.is_var());
        let u = xor(cs, bits[0], bits[1])?;
        return xor(cs, &u, bits[2]);
    }
    let val = x.value() ^ y.value() ^ z.value();
    let s = x.lc() + &y.lc() + &z.lc();
    let o = cs.new_witness_variable(|| Ok(field_bit(val)))?;
    cs.enforce_constraint(
        Lc::from((FOUR, o)) - &(s.clone() * TWO) + (Fr::one(), Variable::One),
        s * TWO - (THREE, Variable::One),
        const_lc(-THREE),
    )?;
    Ok(Bit::Var { lc: o.into(), val })
}

/// maj(x, y, z) in one constraint: the majority of three bits is `(x + y + z − parity)/2`,
/// a linear combination of the inputs and the parity wire of [`xor3`], so it is pinned
/// exactly when that wire is.
pub fn maj3(
    cs: &ConstraintSystemRef<Fr>,
    x: &Bit,
    y: &Bit,
    z: &Bit,
) -> Result<Bit, SynthesisError> {
    let val = u8::from(x.value()) + u8::from(y.value()) + u8::from(z.value()) >= 2;
    if [x, y, z].iter().all(|b| !b.is_var()) {
        return Ok(Bit::Const(val));
    }
    let parity = xor3(cs, x, y, z)?;
    let s = x.lc() + &y.lc() + &z.lc();
    Ok(Bit::Var {
        lc: (s - &parity.lc()) * half(),
        val,
    })
}

fn ch_value(e: &Bit, f: &Bit, g: &Bit) -> bool {
    if e.value() {
        f.value()
    } else {
        g.value()
    }
}

fn maj_value(x: &Bit, y: &Bit, z: &Bit) -> bool {
    u8::from(x.value()) + u8::from(y.value()) + u8::from(z.value()) >= 2
}

/// Ch(e, f, g) = g + e·(f − g), one constraint (free when e or both f and g are constant).
pub fn ch(cs: &ConstraintSystemRef<Fr>, e: &Bit, f: &Bit, g: &Bit) -> Result<Bit, SynthesisError> {
    let val = ch_value(e, f, g);
    Ok(match (e, f, g) {
        (Bit::Const(true), _, _) => f.clone(),
        (Bit::Const(false), _, _) => g.clone(),
        (_, Bit::Const(a), Bit::Const(b)) if a == b => Bit::Const(*a),
        (_, Bit::Const(true), Bit::Const(false)) => e.clone(),
        (_, Bit::Const(false), Bit::Const(true)) => e.not(),
        _ => {
            let diff = f.lc() - &g.lc();
            let q_val = if e.value() {
                field_bit(f.value()) - field_bit(g.value())
            } else {
                Fr::zero()
            };
            let q = cs.new_witness_variable(|| Ok(q_val))?;
            cs.enforce_constraint(e.lc(), diff, Lc::from(q))?;
            Bit::Var {
                lc: g.lc() + (Fr::one(), q),
                val,
            }
        }
    })
}

fn ch_is_free(e: &Bit, f: &Bit, g: &Bit) -> bool {
    !e.is_var() || (!f.is_var() && !g.is_var())
}

/// A packed lane: its linear combination and its value (an integer below 2^42, as a field
/// element).
pub(super) type Packed = (Lc, Fr);

/// Ch of two consecutive rounds in one lane: `ch(e, f, g) + λ·ch(u, e, f)`, where round t
/// has (e, f, g) = (E_t, E_{t−1}, E_{t−2}) and round t + 1 has (E_{t+1}, E_t, E_{t−1}), so
/// u = E_{t+1}. One constraint for two rounds.
///
/// **Algebra.** Both Ch values are quadratic: ch(e, f, g) = g + ef − eg and
/// ch(u, e, f) = f + ue − uf. Their packed sum has the quadratic part
/// Q = ef − eg + λ(ue − uf), and on bits x² = x, so squares may be added for free. With
/// them, Q is a product of two linear forms:
///
/// ```text
///     (2e − f − g − λu) · (f − g + λu) = 2Q − f + g − λ²u      (on bits)
/// ```
///
/// so the constraint `(2e − f − g − λu)·(f − g + λu) = 2z − (1 + 2λ)f − g − λ²u` gives
/// z = Q + λf + g, the packed value. It is linear in z with coefficient 2, so z is
/// uniquely determined by the four input bits: every other value of the wire fails.
/// z is consumed only inside a fused round-pair sum ([`close_pair`]), which separates the
/// two rounds again.
pub fn ch_pair(
    cs: &ConstraintSystemRef<Fr>,
    u: &Bit,
    e: &Bit,
    f: &Bit,
    g: &Bit,
) -> Result<Packed, SynthesisError> {
    let lam = lambda();
    let val = field_bit(ch_value(e, f, g)) + lam * field_bit(ch_value(u, e, f));
    if ch_is_free(e, f, g) && ch_is_free(u, e, f) {
        let low = ch(cs, e, f, g)?;
        let high = ch(cs, u, e, f)?;
        return Ok((low.lc() + &(high.lc() * lam), val));
    }
    let z = cs.new_witness_variable(|| Ok(val))?;
    let (u, e, f, g) = (u.lc(), e.lc(), f.lc(), g.lc());
    let left = e * TWO - &f - &g - &(u.clone() * lam);
    let right = f.clone() - &g + &(u.clone() * lam);
    let out = Lc::from((TWO, z)) - &(f * (Fr::one() + lam + lam)) - &g - &(u * (lam * lam));
    cs.enforce_constraint(left, right, out)?;
    Ok((z.into(), val))
}

/// Maj of two consecutive rounds in one lane: `maj(a, b, c) + λ·maj(u, a, b)` with
/// (a, b, c) = (A_t, A_{t−1}, A_{t−2}) and u = A_{t+1}. One constraint for two rounds.
///
/// **Algebra.** Maj is cubic, so no constraint linear in the output can produce it.
/// But it is affine on two halves of the cube: if a = b both majorities are a, so the
/// packed value is (1 + λ)a; if a ≠ b they are c and u, so it is c + λu. The constraint
///
/// ```text
///     (z − (1 + λ)a − Ω(a − b)) · (z − c − λu − Ω(1 − a − b)) = 0
/// ```
///
/// has two roots. a − b vanishes exactly when a = b and 1 − a − b exactly when a ≠ b, so
/// one root is the honest packed value and the other is the honest value plus ±Ω plus
/// an error ε with |ε| ≤ λ + 1. Ω = 2^100.
///
/// **Why the spurious root fails.** z enters only the fused A sum of its round pair,
/// with weight 2^j for lane j. Suppose a set of lanes takes the spurious root with signs
/// s_j ∈ {±1}. The fused equation then reads P + Ω·N = 0 in the field, where
/// N = Σ s_j·2^j and P gathers everything else: the two rounds' residues and the
/// ε_j·2^j, all integers bounded by 2^38 + λ·2^38 + 2^32·(λ + 1) < 2^79 in absolute value
/// once every bit is boolean. N ≠ 0 (its lowest nonzero term is ±2^j, which no sum of
/// higher powers of two cancels) and |N| < 2^32, so 2^100 ≤ |Ω·N| < 2^132 and
/// |P + Ω·N| is between 2^99 and 2^133: not zero as an integer and far below the field
/// order, so not zero in the field either. Hence every lane takes the honest root.
pub fn maj_pair(
    cs: &ConstraintSystemRef<Fr>,
    u: &Bit,
    a: &Bit,
    b: &Bit,
    c: &Bit,
) -> Result<Packed, SynthesisError> {
    let lam = lambda();
    let val = field_bit(maj_value(a, b, c)) + lam * field_bit(maj_value(u, a, b));
    if let (Bit::Const(x), Bit::Const(y)) = (a, b) {
        let lc = if x == y {
            const_lc(field_bit(*x) * (Fr::one() + lam))
        } else {
            c.lc() + &(u.lc() * lam)
        };
        return Ok((lc, val));
    }
    let far = pow2(MAJ_FAR);
    let z = cs.new_witness_variable(|| Ok(val))?;
    let (u, a, b, c) = (u.lc(), a.lc(), b.lc(), c.lc());
    let if_equal = a.clone() * (Fr::one() + lam) + &((a.clone() - &b) * far);
    let if_differ = c + &(u * lam) + &((one_lc() - &a - &b) * far);
    cs.enforce_constraint(
        Lc::from(z) - &if_equal,
        Lc::from(z) - &if_differ,
        Lc::zero(),
    )?;
    Ok((z.into(), val))
}

/// A two-input XOR lane of weight 2^`weight`: x ⊕ y with both x and y variables.
pub(super) struct Xor2Lane {
    pub weight: u32,
    pub x: Bit,
    pub y: Bit,
}

/// Two two-input XOR lanes, 2^j·(x ⊕ y) + 2^k·(x' ⊕ y'), in one constraint (two
/// separate XORs cost two products). Returns the packed sum and its integer value.
///
/// **Algebra.** x ⊕ y = X − 2xy with X = x + y, and on bits X² = X + 2xy. Let ρ = 2^(k−j)
/// and σ a square root of −ρ (it exists: the BN254 scalar field has p ≡ 1 mod 8, so −1
/// and 2 are squares). Then (X + σY)(X − σY) = X² + ρY² = X + ρY + 2(xy + ρ·x'y'), and
/// the constraint `(X + σY)·(X − σY) = 2q + X + ρY` pins q = xy + ρ·x'y' (linear in q,
/// coefficient 2: exactly one solution for every input). The lanes' sum is then
/// 2^j·X + 2^k·Y − 2^(j+1)·q. Three lanes would need a rank-3 quadratic form, which no
/// single product of two linear forms gives, so pairs are the limit.
pub(super) fn xor2_pair(
    cs: &ConstraintSystemRef<Fr>,
    first: &Xor2Lane,
    second: &Xor2Lane,
) -> Result<(Lc, u64), SynthesisError> {
    let lc = xor2_products(cs, first, second, second.weight)?;
    let [lo, hi] = [first, second].map(xor2_value);
    Ok((lc, lo + hi))
}

/// Two two-input XOR lanes of two *different* packed words, the first at weight 2^j of
/// the low word and the second at weight 2^k of the high word of a fused pair sum
/// (weight λ·2^k there): the packed value 2^j·(x ⊕ y) + λ·2^k·(x' ⊕ y') in one
/// constraint. Returns it with each lane's own value (2^j·(x ⊕ y), 2^k·(x' ⊕ y')).
///
/// The algebra is [`xor2_pair`]'s with ρ = λ·2^(k−j) = 2^(40+k−j) (so −ρ is again minus
/// a power of two, a square): q = xy + ρ·x'y' is pinned exactly, so the packed value is exactly the two
/// honest lanes, and the fused sum it enters ([`close_pair`]) separates them again like
/// any other term of the two rounds.
pub(super) fn xor2_pair_across(
    cs: &ConstraintSystemRef<Fr>,
    first: &Xor2Lane,
    second: &Xor2Lane,
) -> Result<(Lc, [u64; 2]), SynthesisError> {
    let lc = xor2_products(cs, first, second, PAIR_SHIFT + second.weight)?;
    Ok((lc, [first, second].map(xor2_value)))
}

fn xor2_value(lane: &Xor2Lane) -> u64 {
    u64::from(lane.x.value() ^ lane.y.value()) << lane.weight
}

/// The shared constraint of [`xor2_pair`] and [`xor2_pair_across`]: the second lane sits
/// at field weight high = 2^`high_weight` (2^k, or λ·2^k = 2^(40+k)), the first at 2^j.
/// Returns 2^j·X + high·Y − 2^(j+1)·q.
fn xor2_products(
    cs: &ConstraintSystemRef<Fr>,
    first: &Xor2Lane,
    second: &Xor2Lane,
    high_weight: u32,
) -> Result<Lc, SynthesisError> {
    let j = first.weight;
    let m = high_weight as i32 - j as i32;
    let (rho, sigma, high) = (signed_pow2(m), sqrt_of_minus_pow2(m), pow2(high_weight));
    let big_x = first.x.lc() + &first.y.lc();
    let big_y = second.x.lc() + &second.y.lc();
    let and = |lane: &Xor2Lane| lane.x.value() & lane.y.value();
    let q_val = field_bit(and(first)) + rho * field_bit(and(second));
    let q = cs.new_witness_variable(|| Ok(q_val))?;
    cs.enforce_constraint(
        big_x.clone() + &(big_y.clone() * sigma),
        big_x.clone() - &(big_y.clone() * sigma),
        Lc::from((TWO, q)) + &big_x + &(big_y.clone() * rho),
    )?;
    Ok(big_x * pow2(j) + &(big_y * high) - (pow2(j + 1), q))
}

/// x + y (mod 2^n) of two n-bit words, least significant first, in n constraints
/// (one per output bit; a decomposition of the sum takes n + 1 for the carry).
///
/// **Carry chain.** With c₀ = 0, lane i's output is z_i = x_i ⊕ y_i ⊕ c_i by [`xor3`]
/// (one constraint, pinned when its inputs are bits) and the next carry is the linear
/// combination c_{i+1} = (x_i + y_i + c_i − z_i)/2 = maj(x_i, y_i, c_i), a bit again.
/// By induction every c_i and z_i is the honest bit: no carry needs a wire or a
/// booleanity constraint, and the top carry (2^n's multiple) is simply dropped.
pub(super) fn add_bits(
    cs: &ConstraintSystemRef<Fr>,
    x: &[Bit],
    y: &[Bit],
) -> Result<Vec<Bit>, SynthesisError> {
    assert_eq!(x.len(), y.len(), "operands of one width");
    let mut carry = Bit::Const(false);
    let mut out = Vec::with_capacity(x.len());
    for (xi, yi) in x.iter().zip(y) {
        let z = xor3(cs, xi, yi, &carry)?;
        let val = maj_value(xi, yi, &carry);
        carry = if [xi, yi, &carry].iter().all(|b| !b.is_var()) {
            Bit::Const(val)
        } else {
            let lc = (xi.lc() + &yi.lc() + &carry.lc() - &z.lc()) * half();
            Bit::Var { lc, val }
        };
        out.push(z);
    }
    Ok(out)
}

/// Splits `value_lc` (whose integer value is `val` < 2^n) into n bits, least significant
/// first, in n constraints: bits 0..n−1 are witnesses, the top bit is the remainder
/// `(value − Σ lower bits·2^i)/2^(n−1)`, constrained to be boolean. No separate packing
/// constraint.
pub(super) fn decompose(
    cs: &ConstraintSystemRef<Fr>,
    value_lc: &Lc,
    val: u64,
    n: u32,
) -> Result<Vec<Bit>, SynthesisError> {
    assert!((1..=63).contains(&n), "decomposition width");
    let mut bits = alloc_bits(cs, val, n - 1)?;
    let mut rest = value_lc.clone();
    for (i, bit) in bits.iter().enumerate() {
        bit.push_scaled_to(&mut rest, -pow2(i as u32));
    }
    rest.compactify();
    let top = rest * inv_pow2(n - 1);
    enforce_boolean(cs, &top)?;
    bits.push(Bit::Var {
        lc: top,
        val: (val >> (n - 1)) & 1 == 1,
    });
    Ok(bits)
}

/// The n low bits of `val` as witness bits with booleanity constraints, least
/// significant first.
pub(super) fn alloc_bits(
    cs: &ConstraintSystemRef<Fr>,
    val: u64,
    n: u32,
) -> Result<Vec<Bit>, SynthesisError> {
    (0..n)
        .map(|i| Bit::alloc(cs, (val >> i) & 1 == 1))
        .collect()
}

/// Σ bits_i·2^i.
pub(super) fn pack(bits: &[Bit]) -> Lc {
    let mut lc = Lc::zero();
    for (i, bit) in bits.iter().enumerate() {
        bit.push_scaled_to(&mut lc, pow2(i as u32));
    }
    lc.compactify();
    lc
}

/// Closes a fused round-pair sum: `fused` has the value S_t + λ·S_{t+1}, `first` is the
/// already allocated decomposition of round t (value S_t, from [`alloc_bits`]) and the
/// second round's n bits come from `(fused − first)/λ` by [`decompose`] (n − 1 witness
/// bits and a boolean remainder). Returns the second round's bits.
///
/// **Soundness.** Let D_t = S_t − first and D_{t+1} = S_{t+1} − second as integers; the
/// constraints say D_t + λ·D_{t+1} = 0 in the field. Every per-round sum and every
/// decomposition is below 2^38 (`MAX_PAIR_BITS`), so |D_t| < 2^38 and the left side is
/// an integer of absolute value below 2^79, far below the field order: it is 0 as an
/// integer. Then D_t ≡ 0 (mod λ) with |D_t| < λ/2 = 2^39 forces D_t = 0, and so
/// D_{t+1} = 0: each round's decomposition is exact, as if reduced separately, at the
/// cost of the bits alone.
pub(super) fn close_pair(
    cs: &ConstraintSystemRef<Fr>,
    fused: Lc,
    first: &Lc,
    val: u64,
    n: u32,
) -> Result<Vec<Bit>, SynthesisError> {
    assert!(n <= MAX_PAIR_BITS, "round-pair sum too wide");
    let rest = (fused - first) * inv_pow2(PAIR_SHIFT);
    decompose(cs, &rest, val, n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ark_relations::r1cs::ConstraintSystem;

    const BITS: [bool; 2] = [false, true];

    fn inputs(cs: &ConstraintSystemRef<Fr>, vals: &[bool]) -> Vec<Bit> {
        vals.iter().map(|v| Bit::alloc(cs, *v).unwrap()).collect()
    }

    /// Index of the single witness variable an output lc consists of.
    fn wire(lc: &Lc) -> usize {
        assert_eq!(lc.0.len(), 1, "a single wire");
        match lc.0[0].1 {
            Variable::Witness(i) => i,
            ref other => panic!("not a witness: {other:?}"),
        }
    }

    fn set(cs: &ConstraintSystemRef<Fr>, i: usize, v: Fr) {
        cs.borrow_mut().unwrap().witness_assignment[i] = v;
    }

    /// The witness index of the product a paired two-input lane allocates (the first wire
    /// after the four input bits).
    fn product_wire(lc: &Lc) -> usize {
        lc.0.iter()
            .find_map(|(_, v)| match v {
                Variable::Witness(i) if *i >= 4 => Some(*i),
                _ => None,
            })
            .expect("product wire")
    }

    fn lc_value(cs: &ConstraintSystemRef<Fr>, lc: &Lc) -> Fr {
        let inner = cs.borrow().unwrap();
        lc.0.iter()
            .map(|(c, v)| {
                *c * match v {
                    Variable::One => Fr::one(),
                    Variable::Witness(i) => inner.witness_assignment[*i],
                    Variable::Instance(i) => inner.instance_assignment[*i],
                    _ => panic!("unexpected variable"),
                }
            })
            .sum()
    }

    /// Values a cheating prover would try on a wire besides the honest one `honest`:
    /// both bits, small integers, halves, and far values.
    fn wrong_candidates(honest: Fr, extra: &[Fr]) -> Vec<Fr> {
        let mut out: Vec<Fr> = [0i64, 1, 2, 3, -1, -2]
            .iter()
            .map(|v| Fr::from(*v))
            .collect();
        out.extend([half(), -half(), Fr::from(3u64) * half(), honest + Fr::one()]);
        out.extend([honest - Fr::one(), honest + lambda(), honest - lambda()]);
        out.extend([Fr::from(0xdead_beefu64).pow([7]), honest * Fr::from(2u64)]);
        out.extend(extra.iter().copied());
        out.retain(|v| *v != honest);
        out
    }

    #[test]
    fn xor3_parity_output_is_the_only_solution() {
        for (x, y, z) in cube3() {
            let cs = ConstraintSystem::<Fr>::new_ref();
            let b = inputs(&cs, &[x, y, z]);
            let before = cs.num_constraints();
            let out = xor3(&cs, &b[0], &b[1], &b[2]).unwrap();
            assert_eq!(cs.num_constraints() - before, 1, "one constraint per lane");
            assert!(cs.is_satisfied().unwrap());
            let honest = Fr::from(x ^ y ^ z);
            let o = wire(&out.lc());
            for wrong in wrong_candidates(honest, &[]) {
                set(&cs, o, wrong);
                assert!(!cs.is_satisfied().unwrap(), "{x}{y}{z}: output {wrong}");
            }
        }
    }

    #[test]
    fn maj3_rejects_every_wrong_parity_wire() {
        for (x, y, z) in cube3() {
            let cs = ConstraintSystem::<Fr>::new_ref();
            let b = inputs(&cs, &[x, y, z]);
            let before = cs.num_constraints();
            let m = maj3(&cs, &b[0], &b[1], &b[2]).unwrap();
            assert_eq!(cs.num_constraints() - before, 1);
            let honest = Fr::from(u8::from(x) + u8::from(y) + u8::from(z) >= 2);
            assert_eq!(lc_value(&cs, &m.lc()), honest);
            // The only free wire is the parity; every other value of it fails, and the
            // one that passes yields the majority.
            let parity_wire = m
                .lc()
                .0
                .iter()
                .find_map(|(_, v)| match v {
                    Variable::Witness(i) if *i >= 3 => Some(*i),
                    _ => None,
                })
                .expect("parity wire");
            let parity = Fr::from(x ^ y ^ z);
            for wrong in wrong_candidates(parity, &[]) {
                set(&cs, parity_wire, wrong);
                assert!(!cs.is_satisfied().unwrap(), "{x}{y}{z}: parity {wrong}");
            }
        }
    }

    #[test]
    fn xor3_and_maj3_fold_constants_for_free() {
        for (x, y, c) in cube3() {
            let cs = ConstraintSystem::<Fr>::new_ref();
            let b = inputs(&cs, &[x]);
            let before = cs.num_constraints();
            let o = xor3(&cs, &b[0], &Bit::Const(y), &Bit::Const(c)).unwrap();
            let m = maj3(&cs, &b[0], &Bit::Const(y), &Bit::Const(c)).unwrap();
            assert_eq!(cs.num_constraints(), before);
            assert_eq!(lc_value(&cs, &o.lc()), Fr::from(x ^ y ^ c));
            let maj = u8::from(x) + u8::from(y) + u8::from(c) >= 2;
            assert_eq!(lc_value(&cs, &m.lc()), Fr::from(maj));
        }
    }

    fn cube3() -> Vec<(bool, bool, bool)> {
        let mut out = Vec::new();
        for x in BITS {
            for y in BITS {
                for z in BITS {
                    out.push((x, y, z));
                }
            }
        }
        out
    }

    fn cube4() -> Vec<[bool; 4]> {
        cube3()
            .into_iter()
            .flat_map(|(a, b, c)| BITS.map(|d| [a, b, c, d]))
            .collect()
    }

    /// Every packing lo + λ·hi of two bits.
    fn packed_bit_pairs() -> Vec<Fr> {
        let mut out = Vec::new();
        for lo in BITS {
            for hi in BITS {
                out.push(Fr::from(lo) + lambda() * Fr::from(hi));
            }
        }
        out
    }

    #[test]
    fn ch_pair_pins_the_packed_value() {
        for [u, e, f, g] in cube4() {
            let cs = ConstraintSystem::<Fr>::new_ref();
            let b = inputs(&cs, &[u, e, f, g]);
            let before = cs.num_constraints();
            let (z, val) = ch_pair(&cs, &b[0], &b[1], &b[2], &b[3]).unwrap();
            assert_eq!(
                cs.num_constraints() - before,
                1,
                "one constraint for two rounds"
            );
            let ch = |e: bool, f: bool, g: bool| if e { f } else { g };
            let honest = Fr::from(ch(e, f, g)) + lambda() * Fr::from(ch(u, e, f));
            assert_eq!(val, honest);
            assert!(cs.is_satisfied().unwrap());
            // Every other packing of two bits (e.g. the two rounds swapped, or one
            // round's Ch replaced by the other choice) and every other value fails.
            let wire = wire(&z);
            for wrong in wrong_candidates(honest, &packed_bit_pairs()) {
                set(&cs, wire, wrong);
                assert!(!cs.is_satisfied().unwrap(), "{u}{e}{f}{g}: z = {wrong}");
            }
        }
    }

    /// A lane of a fused pair sum reduced to one bit per round: `lo` allocated, the high
    /// round's bit the remainder `(z − lo)/λ` (as [`close_pair`] does).
    fn fused_lane(cs: &ConstraintSystemRef<Fr>, z: &Lc, lo_val: bool, hi_val: bool) -> usize {
        let lo = alloc_bits(cs, u64::from(lo_val), 1).unwrap();
        close_pair(cs, z.clone(), &pack(&lo), u64::from(hi_val), 1).unwrap();
        wire(&lo[0].lc())
    }

    #[test]
    fn maj_pair_spurious_root_fails_the_fused_sum() {
        let maj = |x: bool, y: bool, z: bool| u8::from(x) + u8::from(y) + u8::from(z) >= 2;
        for [u, a, b, c] in cube4() {
            let cs = ConstraintSystem::<Fr>::new_ref();
            let bits = inputs(&cs, &[u, a, b, c]);
            let before = cs.num_constraints();
            let (z, val) = maj_pair(&cs, &bits[0], &bits[1], &bits[2], &bits[3]).unwrap();
            assert_eq!(
                cs.num_constraints() - before,
                1,
                "one constraint for two rounds"
            );
            let (lo, hi) = (maj(a, b, c), maj(u, a, b));
            let honest = Fr::from(lo) + lambda() * Fr::from(hi);
            assert_eq!(val, honest);
            let lane = fused_lane(&cs, &z, lo, hi);
            assert!(cs.is_satisfied().unwrap());
            // The lane constraint alone has a second root, ±Ω away.
            let far = pow2(MAJ_FAR);
            let to_field = |v: bool| Fr::from(v);
            let spurious = if a == b {
                to_field(c) + lambda() * to_field(u) + far * (Fr::one() - to_field(a) - to_field(b))
            } else {
                (Fr::one() + lambda()) * to_field(a) + far * (to_field(a) - to_field(b))
            };
            let z_wire = wire(&z);
            for z_val in wrong_candidates(honest, &[packed_bit_pairs(), vec![spurious]].concat()) {
                for lo_guess in BITS {
                    set(&cs, z_wire, z_val);
                    set(&cs, lane, Fr::from(lo_guess));
                    assert!(!cs.is_satisfied().unwrap(), "{u}{a}{b}{c}: z = {z_val}");
                }
            }
            // With the spurious root the lane constraint itself holds; only the fused
            // sum's remainder bit (which would be about Ω/λ) rejects it.
            set(&cs, z_wire, spurious);
            set(&cs, lane, Fr::from(lo));
            let unsatisfied = cs.which_is_unsatisfied().unwrap().expect("rejected");
            assert!(!unsatisfied.is_empty());
        }
    }

    #[test]
    fn xor2_pair_pins_both_products() {
        for (j, k) in [(22u32, 23u32), (29, 31), (31, 0), (5, 30)] {
            for [x, y, x2, y2] in cube4() {
                let cs = ConstraintSystem::<Fr>::new_ref();
                let b = inputs(&cs, &[x, y, x2, y2]);
                let first = Xor2Lane {
                    weight: j,
                    x: b[0].clone(),
                    y: b[1].clone(),
                };
                let second = Xor2Lane {
                    weight: k,
                    x: b[2].clone(),
                    y: b[3].clone(),
                };
                let before = cs.num_constraints();
                let (lc, val) = xor2_pair(&cs, &first, &second).unwrap();
                assert_eq!(
                    cs.num_constraints() - before,
                    1,
                    "one constraint for two lanes"
                );
                let expected = (u64::from(x ^ y) << j) + (u64::from(x2 ^ y2) << k);
                assert_eq!(val, expected);
                assert_eq!(lc_value(&cs, &lc), Fr::from(expected));
                assert!(cs.is_satisfied().unwrap());
                let q = product_wire(&lc);
                let rho = pow2(k) * pow2(j).inverse().unwrap();
                let honest = Fr::from(x & y) + rho * Fr::from(x2 & y2);
                // Every other combination of the two products, and other values, fails.
                let combos = product_combinations(rho);
                let label = format!("({j},{k}) {x}{y}{x2}{y2}");
                assert_only_honest_product(&cs, q, honest, &combos, &label);
            }
        }
    }

    #[test]
    fn xor2_pair_across_pins_both_products() {
        // The second lane sits in the high round of a fused sum (weight λ·2^k).
        for (j, k) in [(31u32, 31u32), (31, 22), (0, 31), (22, 29)] {
            for [x, y, x2, y2] in cube4() {
                let cs = ConstraintSystem::<Fr>::new_ref();
                let b = inputs(&cs, &[x, y, x2, y2]);
                let lane = |weight, x: &Bit, y: &Bit| Xor2Lane {
                    weight,
                    x: x.clone(),
                    y: y.clone(),
                };
                let (first, second) = (lane(j, &b[0], &b[1]), lane(k, &b[2], &b[3]));
                let (lc, vals) = xor2_pair_across(&cs, &first, &second).unwrap();
                assert_eq!(cs.num_constraints(), 5, "four booleanity and one lane pair");
                assert_eq!(vals, [u64::from(x ^ y) << j, u64::from(x2 ^ y2) << k]);
                let packed = Fr::from(vals[0]) + lambda() * Fr::from(vals[1]);
                assert_eq!(lc_value(&cs, &lc), packed);
                assert!(cs.is_satisfied().unwrap());
                let q = product_wire(&lc);
                let rho = lambda() * pow2(k) * pow2(j).inverse().unwrap();
                let honest = Fr::from(x & y) + rho * Fr::from(x2 & y2);
                // Swapped, dropped or doubled products, and the same-word weighting
                // (ρ without λ), all fail.
                let same_word = pow2(k) * pow2(j).inverse().unwrap();
                let mut combos = product_combinations(rho);
                for p in BITS {
                    combos.extend(BITS.map(|p2| Fr::from(p) + same_word * Fr::from(p2)));
                }
                let label = format!("({j},{k}) {x}{y}{x2}{y2}");
                assert_only_honest_product(&cs, q, honest, &combos, &label);
            }
        }
    }

    /// p + ρ·p2 and p2 + ρ·p for every pair of product bits: the values a wrong q could
    /// take by swapping, dropping or doubling the two products under weight ρ.
    fn product_combinations(rho: Fr) -> Vec<Fr> {
        let mut combos = Vec::new();
        for p in BITS {
            for p2 in BITS {
                combos.push(Fr::from(p) + rho * Fr::from(p2));
                combos.push(Fr::from(p2) + rho * Fr::from(p));
            }
        }
        combos
    }

    /// Only the honest value of the product wire `q` satisfies `cs`: every candidate
    /// from [`wrong_candidates`] (with `combos`) fails.
    fn assert_only_honest_product(
        cs: &ConstraintSystemRef<Fr>,
        q: usize,
        honest: Fr,
        combos: &[Fr],
        label: &str,
    ) {
        for wrong in wrong_candidates(honest, combos) {
            set(cs, q, wrong);
            assert!(!cs.is_satisfied().unwrap(), "{label}: q = {wrong}");
        }
    }

    /// Every n-bit word as bits, least significant first.
    fn word_bits(v: u64, n: usize) -> Vec<bool> {
        (0..n).map(|i| (v >> i) & 1 == 1).collect()
    }

    #[test]
    fn add_bits_carry_chain_admits_only_the_sum() {
        // Three-bit words: every pair of operands (as witness bits, and with one operand
        // constant), and every assignment of the three lane wires from values a cheating
        // prover would try (bits, 2, −1, 1/2, the honest value ± 1): only the honest
        // wires satisfy the system, so the outputs are exactly (x + y) mod 8.
        const N: usize = 3;
        for x in 0u64..8 {
            for y in 0u64..8 {
                for const_x in [false, true] {
                    let cs = ConstraintSystem::<Fr>::new_ref();
                    let xb: Vec<Bit> = if const_x {
                        word_bits(x, N).into_iter().map(Bit::Const).collect()
                    } else {
                        inputs(&cs, &word_bits(x, N))
                    };
                    let yb = inputs(&cs, &word_bits(y, N));
                    let before = cs.num_constraints();
                    let z = add_bits(&cs, &xb, &yb).unwrap();
                    let cost = cs.num_constraints() - before;
                    assert!(cost <= N, "at most one constraint per bit, got {cost}");
                    let sum = (x + y) % 8;
                    for (i, bit) in z.iter().enumerate() {
                        assert_eq!(bit.value(), (sum >> i) & 1 == 1);
                        assert_eq!(lc_value(&cs, &bit.lc()), Fr::from((sum >> i) & 1));
                    }
                    assert!(cs.is_satisfied().unwrap());
                    let first = cs.num_witness_variables() - cost;
                    let wires: Vec<usize> = (first..cs.num_witness_variables()).collect();
                    let honest: Vec<Fr> = {
                        let inner = cs.borrow().unwrap();
                        wires.iter().map(|w| inner.witness_assignment[*w]).collect()
                    };
                    let mut options: Vec<Vec<Fr>> = Vec::new();
                    for h in &honest {
                        let mut o = vec![Fr::zero(), Fr::one(), Fr::from(2u64), -Fr::one(), half()];
                        o.extend([*h + Fr::one(), *h - Fr::one(), *h]);
                        o.dedup();
                        options.push(o);
                    }
                    let total: usize = options.iter().map(Vec::len).product();
                    for mut code in 0..total {
                        let mut assignment = Vec::new();
                        for o in &options {
                            assignment.push(o[code % o.len()]);
                            code /= o.len();
                        }
                        for (w, v) in wires.iter().zip(&assignment) {
                            set(&cs, *w, *v);
                        }
                        let exact = assignment == honest;
                        assert_eq!(cs.is_satisfied().unwrap(), exact, "{x}+{y}: {assignment:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn fused_pair_sum_reduces_each_round_exactly() {
        // Two 3-bit round sums S_t, S_{t+1} fused as S_t + λ·S_{t+1}; every assignment of
        // the five free bits (3 of round t, the 2 low bits of round t + 1) other than the
        // exact decompositions leaves the remainder bit non-boolean.
        for s0 in 0u64..8 {
            for s1 in 0u64..8 {
                let cs = ConstraintSystem::<Fr>::new_ref();
                let fused = const_lc(Fr::from(s0) + lambda() * Fr::from(s1));
                let first = alloc_bits(&cs, s0, 3).unwrap();
                let second = close_pair(&cs, fused, &pack(&first), s1, 3).unwrap();
                assert_eq!(cs.num_constraints(), 6, "one constraint per bit");
                assert!(cs.is_satisfied().unwrap());
                let free: Vec<usize> = first
                    .iter()
                    .chain(&second[..2])
                    .map(|b| wire(&b.lc()))
                    .collect();
                for guess in 0u64..32 {
                    for (i, w) in free.iter().enumerate() {
                        set(&cs, *w, Fr::from((guess >> i) & 1));
                    }
                    let exact = guess == s0 | ((s1 & 3) << 3);
                    assert_eq!(cs.is_satisfied().unwrap(), exact, "{s0} {s1} guess {guess}");
                }
            }
        }
    }
}
