//! The farmer's Groth16 prover: the same proof as ark-groth16's
//! `create_proof_with_reduction_and_matrices` with the reduction the CRS was made with
//! ([`MixedRadixReduction`] for ours, ark's `LibsnarkReduction` for the benchmark's
//! baseline key), with less work per proof.
//!
//! * The QAP domain is the CRS's: its H query has one point fewer than the domain, which
//!   must be ours for the circuit (2^a·3^b, [`super::qap`]) or ark's power of two.
//! * The constraint matrices depend only on the circuit's shape: [`CompiledR1cs`] compiles
//!   them once (setup mode, the mode the CRS was made in) into a compact sparse form, and
//!   [`compiled`] keeps the last few shapes for the process (the farmer's CRS check
//!   compiles the same circuit, so the first proof after a check finds it ready).
//! * Each proof synthesises the circuit once, in witness-only mode (no linear
//!   combinations stored, nothing inlined).
//! * The satisfaction check is part of the witness map: the A, B, C rows are evaluated
//!   once, each constraint's a·b = c is checked there, and the same evaluations go into
//!   the FFTs. A witness that fails any constraint is refused before any group operation.
//! * The multi-scalar multiplications skip zeros and identities and sum unit scalars
//!   directly ([`super::msm`]); those over the witness run beside H's FFTs and MSM.

use std::sync::{Arc, Mutex};

use ark_bn254::{Bn254, Fr, G1Projective, G2Projective};
use ark_ec::CurveGroup;
use ark_ff::{One, PrimeField, Zero};
use ark_groth16::Proof;
use ark_relations::r1cs::{
    ConstraintMatrices, ConstraintSynthesizer, ConstraintSystem, OptimizationGoal, SynthesisMode,
};
use rayon::prelude::*;

use super::api::{compile, Crs};
use super::circuit::Shape;
use super::msm::msm;
#[cfg(doc)]
use super::qap::MixedRadixReduction;
use super::qap::{domain_size, QapDomain};
use super::ZkError;

/// One of A, B, C in compressed sparse rows; coefficients index a shared table.
struct SparseMatrix {
    row_starts: Vec<u32>,
    columns: Vec<u32>,
    coefficients: Vec<u32>,
}

/// Index of 1 and of −1 in a coefficient table.
const ONE: u32 = 0;
const MINUS_ONE: u32 = 1;

/// A circuit's R1CS, compiled once: sizes, the three matrices and their coefficients.
pub(crate) struct CompiledR1cs {
    num_inputs: usize,
    num_variables: usize,
    num_constraints: usize,
    table: Vec<Fr>,
    a: SparseMatrix,
    b: SparseMatrix,
    c: SparseMatrix,
}

impl CompiledR1cs {
    /// Compiles `circuit` in setup mode (its assignment is ignored).
    pub(crate) fn of(circuit: impl ConstraintSynthesizer<Fr>) -> Result<CompiledR1cs, ZkError> {
        let cs = ConstraintSystem::<Fr>::new_ref();
        cs.set_optimization_goal(OptimizationGoal::Constraints);
        cs.set_mode(SynthesisMode::Setup);
        circuit.generate_constraints(cs.clone())?;
        cs.finalize();
        let matrices = cs.to_matrices().ok_or(ZkError::BadShape)?;
        Ok(CompiledR1cs::from_matrices(&matrices))
    }

    fn from_matrices(m: &ConstraintMatrices<Fr>) -> CompiledR1cs {
        let mut table = vec![Fr::one(), -Fr::one()];
        let mut index = std::collections::HashMap::new();
        index.insert(Fr::one(), ONE);
        index.insert(-Fr::one(), MINUS_ONE);
        let mut sparse = |rows: &[Vec<(Fr, usize)>]| {
            let mut out = SparseMatrix {
                row_starts: Vec::with_capacity(rows.len() + 1),
                columns: Vec::new(),
                coefficients: Vec::new(),
            };
            for row in rows {
                out.row_starts.push(out.columns.len() as u32);
                for (coefficient, column) in row {
                    let id = *index.entry(*coefficient).or_insert_with(|| {
                        table.push(*coefficient);
                        table.len() as u32 - 1
                    });
                    out.columns.push(*column as u32);
                    out.coefficients.push(id);
                }
            }
            out.row_starts.push(out.columns.len() as u32);
            out
        };
        let (a, b, c) = (sparse(&m.a), sparse(&m.b), sparse(&m.c));
        CompiledR1cs {
            num_inputs: m.num_instance_variables,
            num_variables: m.num_instance_variables + m.num_witness_variables,
            num_constraints: m.num_constraints,
            table,
            a,
            b,
            c,
        }
    }

    /// Number of public inputs, the constant one included.
    pub(crate) fn num_inputs(&self) -> usize {
        self.num_inputs
    }

    /// Number of variables, the constant one included.
    pub(crate) fn num_variables(&self) -> usize {
        self.num_variables
    }

    /// Number of constraints.
    pub(crate) fn num_constraints(&self) -> usize {
        self.num_constraints
    }

    /// Which variables have a non-zero coefficient somewhere in A, B and C.
    pub(crate) fn used_variables(&self) -> [Vec<bool>; 3] {
        [&self.a, &self.b, &self.c].map(|m| {
            let mut used = vec![false; self.num_variables];
            for (&column, &k) in m.columns.iter().zip(&m.coefficients) {
                if !self.table[k as usize].is_zero() {
                    used[column as usize] = true;
                }
            }
            used
        })
    }

    /// ⟨row i of `m`, z⟩.
    fn row(&self, m: &SparseMatrix, i: usize, z: &[Fr]) -> Fr {
        let range = m.row_starts[i] as usize..m.row_starts[i + 1] as usize;
        let mut acc = Fr::zero();
        for (&column, &coefficient) in m.columns[range.clone()].iter().zip(&m.coefficients[range]) {
            let value = z[column as usize];
            match coefficient {
                ONE => acc += value,
                MINUS_ONE => acc -= value,
                k => acc += self.table[k as usize] * value,
            }
        }
        acc
    }

    /// Evaluations of A·z, B·z, C·z on the constraints, or an error if some constraint
    /// has a·b ≠ c.
    fn evaluate(&self, z: &[Fr]) -> Result<[Vec<Fr>; 3], ZkError> {
        const ROWS_PER_TASK: usize = 1024;
        let n = self.num_constraints;
        let (mut a, mut b, mut c) = (
            vec![Fr::zero(); n],
            vec![Fr::zero(); n],
            vec![Fr::zero(); n],
        );
        let all_satisfied = a
            .par_chunks_mut(ROWS_PER_TASK)
            .zip(b.par_chunks_mut(ROWS_PER_TASK))
            .zip(c.par_chunks_mut(ROWS_PER_TASK))
            .enumerate()
            .map(|(task, ((a, b), c))| {
                let first = task * ROWS_PER_TASK;
                let mut ok = true;
                for j in 0..a.len() {
                    let i = first + j;
                    a[j] = self.row(&self.a, i, z);
                    b[j] = self.row(&self.b, i, z);
                    c[j] = self.row(&self.c, i, z);
                    ok &= a[j] * b[j] == c[j];
                }
                ok
            })
            .reduce(|| true, |x, y| x && y);
        if !all_satisfied {
            return Err(ZkError::Unsatisfied);
        }
        Ok([a, b, c])
    }

    /// The QAP domain of a CRS whose H query has `h_len` points: ours for this circuit
    /// ([`super::qap`]) or ark's power of two (the baseline's key), nothing else.
    fn domain_for(&self, h_len: usize) -> Option<QapDomain<Fr>> {
        let rows = self.num_constraints + self.num_inputs;
        let size = h_len.checked_add(1)?;
        let ours = domain_size::<Fr>(rows)?;
        if size != ours && size != rows.next_power_of_two() {
            return None;
        }
        QapDomain::of_size(size)
    }

    /// The evaluations of A, B, C on `domain` (the constraints' rows, then the inputs in
    /// A, then zeros), from which [`QapDomain::quotient`] makes H as the reduction the CRS
    /// was made with does; refuses an unsatisfied `z`.
    fn evaluations(&self, z: &[Fr], domain: &QapDomain<Fr>) -> Result<[Vec<Fr>; 3], ZkError> {
        let (ni, nc) = (self.num_inputs, self.num_constraints);
        let size = domain.size();
        let [mut a, mut b, mut c] = self.evaluate(z)?;
        a.resize(size, Fr::zero());
        b.resize(size, Fr::zero());
        c.resize(size, Fr::zero());
        a[nc..nc + ni].copy_from_slice(&z[..ni]);
        Ok([a, b, c])
    }
}

/// How many shapes' compiled circuits the process keeps.
const COMPILED_SHAPES_KEPT: usize = 4;

/// The compiled circuits of the last shapes proved or checked.
static CACHE: Mutex<Vec<(Shape, Arc<CompiledR1cs>)>> = Mutex::new(Vec::new());

/// Drops the process's compiled circuits (the next proof or CRS check of each shape
/// compiles it again): frees their memory, and lets a benchmark time a first proof.
pub fn forget_compiled_shapes() {
    CACHE.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// The compiled circuit of `shape`, from the process's cache or compiled now.
pub(crate) fn compiled(shape: &Shape) -> Result<Arc<CompiledR1cs>, ZkError> {
    let lookup = || {
        let cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .iter()
            .find(|(s, _)| s == shape)
            .map(|(_, c)| c.clone())
    };
    if let Some(found) = lookup() {
        return Ok(found);
    }
    let cs = compile(shape)?;
    let matrices = cs.to_matrices().ok_or(ZkError::BadShape)?;
    let fresh = Arc::new(CompiledR1cs::from_matrices(&matrices));
    Ok(remember(&CACHE, *shape, fresh))
}

/// Keeps `compiled` for `shape` and returns it, or the compilation another thread kept
/// for it meanwhile (so every caller shares one).
fn remember(
    cache: &Mutex<Vec<(Shape, Arc<CompiledR1cs>)>>,
    shape: Shape,
    compiled: Arc<CompiledR1cs>,
) -> Arc<CompiledR1cs> {
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, kept)) = cache.iter().find(|(s, _)| *s == shape) {
        return kept.clone();
    }
    if cache.len() == COMPILED_SHAPES_KEPT {
        cache.remove(0);
    }
    cache.push((shape, compiled.clone()));
    compiled
}

/// The full assignment (1, public inputs, witnesses) of `circuit`, synthesised once
/// without building its constraints.
pub(crate) fn assignment(circuit: impl ConstraintSynthesizer<Fr>) -> Result<Vec<Fr>, ZkError> {
    let cs = ConstraintSystem::<Fr>::new_ref();
    cs.set_optimization_goal(OptimizationGoal::Constraints);
    cs.set_mode(SynthesisMode::Prove {
        construct_matrices: false,
    });
    circuit.generate_constraints(cs.clone())?;
    let inner = cs.borrow().ok_or(ZkError::Unsatisfied)?;
    Ok([
        inner.instance_assignment.as_slice(),
        inner.witness_assignment.as_slice(),
    ]
    .concat())
}

/// Groth16 proof of the full assignment `z` of `r1cs` with blinding `r`, `s`: the same
/// group elements as ark-groth16's prover. Refuses a `z` that does not satisfy `r1cs`
/// and a key of another size.
pub(crate) fn prove_with(
    crs: &Crs,
    r1cs: &CompiledR1cs,
    z: &[Fr],
    r: Fr,
    s: Fr,
) -> Result<Proof<Bn254>, ZkError> {
    let (ni, nv) = (r1cs.num_inputs, r1cs.num_variables);
    if z.len() != nv
        || crs.a_query.len() != nv
        || crs.b_g1_query.len() != nv
        || crs.b_g2_query.len() != nv
        || crs.l_query.len() != nv - ni
        || crs.vk.gamma_abc_g1.len() != ni
    {
        return Err(ZkError::Groth16("CRS is for another circuit".into()));
    }
    let domain = r1cs
        .domain_for(crs.h_query.len())
        .ok_or(ZkError::Groth16("CRS is for another circuit".into()))?;
    // The satisfaction check comes before any group operation.
    let evaluations = r1cs.evaluations(z, &domain)?;
    let z: Vec<_> = z.par_iter().map(|x| x.into_bigint()).collect();
    // H's FFTs and MSM run beside the MSMs of the witness, which do not need H.
    // [1]ₖ of the constant variable is query[0]; the MSMs run over the rest.
    let h_msm = || {
        let h = domain.quotient(evaluations);
        let h: Vec<_> = h.par_iter().map(|x| x.into_bigint()).collect();
        msm(&crs.h_query, &h)
    };
    let ((h_acc, l_acc), (a_acc, (b1_acc, b2_acc))) = rayon::join(
        || rayon::join(h_msm, || msm(&crs.l_query, &z[ni..])),
        || {
            rayon::join(
                || msm(&crs.a_query[1..], &z[1..]),
                || {
                    rayon::join(
                        || msm(&crs.b_g1_query[1..], &z[1..]),
                        || msm(&crs.b_g2_query[1..], &z[1..]),
                    )
                },
            )
        },
    );
    let vk = &crs.vk;
    let g_a: G1Projective = crs.delta_g1 * r + crs.a_query[0] + a_acc + vk.alpha_g1;
    let g1_b: G1Projective = if r.is_zero() {
        G1Projective::zero()
    } else {
        crs.delta_g1 * s + crs.b_g1_query[0] + b1_acc + crs.beta_g1
    };
    let g2_b: G2Projective = vk.delta_g2 * s + crs.b_g2_query[0] + b2_acc + vk.beta_g2;
    let g_c = g_a * s + g1_b * r - crs.delta_g1 * (r * s) + l_acc + h_acc;
    Ok(Proof {
        a: g_a.into_affine(),
        b: g2_b.into_affine(),
        c: g_c.into_affine(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zk::api::{setup_circuit, setup_with, verify_inputs};
    use crate::zk::circuit::TxCircuit;
    use crate::zk::fixtures::{toy_crs, toy_statement};
    use crate::zk::qap::MixedRadixReduction;
    use ark_ff::Field;
    use ark_groth16::r1cs_to_qap::{LibsnarkReduction, R1CSToQAP};
    use ark_groth16::Groth16;
    use ark_relations::lc;
    use ark_relations::r1cs::Variable;
    use ark_std::UniformRand;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn toy_circuit(seed: u8) -> TxCircuit {
        let (statement, s1, s2) = toy_statement(seed);
        let mut bytes = statement.template.clone();
        let shape = statement.shape;
        bytes[Shape::range(shape.farmer_s)].copy_from_slice(&s1);
        bytes[Shape::range(shape.twin_s)].copy_from_slice(&s2);
        TxCircuit {
            shape,
            public: statement.public_values().unwrap(),
            bytes,
            r: statement.r,
        }
    }

    /// ark-groth16's proof of `circuit` with blinding `r`, `s`, through reduction `Q`.
    fn ark_proof<Q: R1CSToQAP>(
        crs: &Crs,
        circuit: impl ConstraintSynthesizer<Fr>,
        r: Fr,
        s: Fr,
    ) -> Proof<Bn254> {
        let cs = ConstraintSystem::<Fr>::new_ref();
        cs.set_optimization_goal(OptimizationGoal::Constraints);
        circuit.generate_constraints(cs.clone()).unwrap();
        cs.finalize();
        let m = cs.to_matrices().unwrap();
        let (ni, nc) = (cs.num_instance_variables(), cs.num_constraints());
        let z = assignment_of(&cs);
        Groth16::<Bn254, Q>::create_proof_with_reduction_and_matrices(crs, r, s, &m, ni, nc, &z)
            .unwrap()
    }

    fn assignment_of(cs: &ark_relations::r1cs::ConstraintSystemRef<Fr>) -> Vec<Fr> {
        let inner = cs.borrow().unwrap();
        [
            inner.instance_assignment.as_slice(),
            inner.witness_assignment.as_slice(),
        ]
        .concat()
    }

    /// SHA-256 of a compiled R1CS: sizes, the three matrices and the coefficient table.
    fn digest(r1cs: &CompiledR1cs) -> String {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        for size in [r1cs.num_inputs, r1cs.num_variables, r1cs.num_constraints] {
            hasher.update((size as u64).to_le_bytes());
        }
        for m in [&r1cs.a, &r1cs.b, &r1cs.c] {
            for part in [&m.row_starts, &m.columns, &m.coefficients] {
                hasher.update((part.len() as u64).to_le_bytes());
                part.iter().for_each(|x| hasher.update(x.to_le_bytes()));
            }
        }
        for c in &r1cs.table {
            hasher.update(ark_ff::BigInteger::to_bytes_le(&c.into_bigint()));
        }
        hex::encode(hasher.finalize())
    }

    /// The real TX2 statement's R1CS is pinned to its circuit version: cached CRSs are
    /// keyed by the version, so a change of the constraints (even one that keeps their
    /// number, like a reordering of terms) must come with a new `CIRCUIT_VERSION` and a
    /// new digest here, never silently under the old one.
    #[test]
    fn the_r1cs_of_each_circuit_version_is_pinned() {
        use crate::zk::circuit::CIRCUIT_VERSION;
        use crate::zk::fixtures::real_tx2;
        let (statement, _, _) = crate::zk::api::Statement::of(&real_tx2(3)).unwrap();
        let r1cs = compiled(&statement.shape).unwrap();
        assert_eq!(
            (CIRCUIT_VERSION, digest(&r1cs).as_str()),
            (
                4,
                "d9a779b209fdd8c238d6a057340c3e2c0dcb919b6713a6ac4bc863fae7737d1d"
            ),
            "the R1CS changed: bump CIRCUIT_VERSION and pin the new digest"
        );
    }

    /// For the same r, s our prover and ark-groth16's (with our reduction) give the same
    /// proof on the toy circuit (its domain is a power of two).
    #[test]
    fn same_proof_as_ark_groth16() {
        let (shape, crs) = toy_crs();
        let mut rng = StdRng::seed_from_u64(21);
        let r1cs = compiled(shape).unwrap();
        for seed in [1u8, 2] {
            let circuit = toy_circuit(seed);
            let (r, s) = (Fr::rand(&mut rng), Fr::rand(&mut rng));
            let z = assignment(circuit.clone()).unwrap();
            let ours = prove_with(crs, &r1cs, &z, r, s).unwrap();
            let ark = ark_proof::<MixedRadixReduction>(crs, circuit, r, s);
            assert_eq!(ours, ark);
        }
    }

    /// w₀ = x, wᵢ₊₁ = wᵢ², the last one public: `squarings` + 1 constraints, 2 inputs.
    #[derive(Clone)]
    struct Squarings {
        x: Fr,
        squarings: usize,
    }

    impl ConstraintSynthesizer<Fr> for Squarings {
        fn generate_constraints(
            self,
            cs: ark_relations::r1cs::ConstraintSystemRef<Fr>,
        ) -> ark_relations::r1cs::Result<()> {
            let mut value = self.x;
            let mut w = cs.new_witness_variable(|| Ok(value))?;
            for _ in 0..self.squarings {
                let square = value.square();
                let next = cs.new_witness_variable(|| Ok(square))?;
                cs.enforce_constraint(lc!() + w, lc!() + w, lc!() + next)?;
                (w, value) = (next, square);
            }
            let out = cs.new_input_variable(|| Ok(value))?;
            cs.enforce_constraint(lc!() + w, lc!() + Variable::One, lc!() + out)?;
            Ok(())
        }
    }

    /// On 3·2^8 and 9·2^7 domains (radix-3 layers in our FFT) our prover gives
    /// ark-groth16's proof through our reduction, and it verifies.
    #[test]
    fn same_proof_as_ark_groth16_on_radix_3_domains() {
        let mut rng = StdRng::seed_from_u64(24);
        for (squarings, domain) in [(600, 3 << 8), (1100, 9 << 7)] {
            let circuit = Squarings {
                x: Fr::rand(&mut rng),
                squarings,
            };
            let crs = setup_with::<MixedRadixReduction>(circuit.clone(), &mut rng).unwrap();
            assert_eq!(crs.h_query.len() + 1, domain);
            let r1cs = CompiledR1cs::of(circuit.clone()).unwrap();
            let z = assignment(circuit.clone()).unwrap();
            let (r, s) = (Fr::rand(&mut rng), Fr::rand(&mut rng));
            let ours = prove_with(&crs, &r1cs, &z, r, s).unwrap();
            assert_eq!(ours, ark_proof::<MixedRadixReduction>(&crs, circuit, r, s));
            verify_inputs(&crs.vk, &z[1..2], &ours).unwrap();
        }
    }

    /// Under a key made with ark's stock reduction (power-of-two domain, as the
    /// benchmark's baseline key) our prover gives ark's stock proof.
    #[test]
    fn same_proof_as_ark_groth16_on_a_power_of_two_domain() {
        let (shape, _) = toy_crs();
        let mut rng = StdRng::seed_from_u64(23);
        let crs = setup_circuit(TxCircuit::blank(shape).unwrap(), &mut rng).unwrap();
        let r1cs = compiled(shape).unwrap();
        let rows = r1cs.num_constraints + r1cs.num_inputs;
        assert_eq!(crs.h_query.len() + 1, rows.next_power_of_two());
        let circuit = toy_circuit(4);
        let (r, s) = (Fr::rand(&mut rng), Fr::rand(&mut rng));
        let z = assignment(circuit.clone()).unwrap();
        let ours = prove_with(&crs, &r1cs, &z, r, s).unwrap();
        assert_eq!(ours, ark_proof::<LibsnarkReduction>(&crs, circuit, r, s));
    }

    /// A key whose H query fits neither domain of the circuit is refused.
    #[test]
    fn keys_of_other_domains_are_refused() {
        let (shape, crs) = toy_crs();
        let r1cs = compiled(shape).unwrap();
        let z = assignment(toy_circuit(5)).unwrap();
        let mut bad = crs.clone();
        bad.h_query.push(bad.h_query[0]);
        assert!(prove_with(&bad, &r1cs, &z, Fr::one(), Fr::one()).is_err());
        bad.h_query.truncate(crs.h_query.len() - 1);
        assert!(prove_with(&bad, &r1cs, &z, Fr::one(), Fr::one()).is_err());
    }

    /// A witness that breaks any constraint is refused before any group operation.
    #[test]
    fn unsatisfied_assignments_are_refused() {
        let (shape, crs) = toy_crs();
        let r1cs = compiled(shape).unwrap();
        let z = assignment(toy_circuit(3)).unwrap();
        let mut rng = StdRng::seed_from_u64(22);
        for at in [
            r1cs.num_inputs,
            r1cs.num_inputs + 1,
            z.len() / 2,
            z.len() - 1,
        ] {
            let mut bad = z.clone();
            bad[at] += Fr::one();
            assert_eq!(
                prove_with(crs, &r1cs, &bad, Fr::rand(&mut rng), Fr::rand(&mut rng)),
                Err(ZkError::Unsatisfied),
                "variable {at}"
            );
        }
        // A public input changed (the claimed D), the witness kept.
        let mut bad = z.clone();
        bad[9] += Fr::one();
        assert_eq!(
            prove_with(crs, &r1cs, &bad, Fr::one(), Fr::one()),
            Err(ZkError::Unsatisfied)
        );
        assert!(prove_with(crs, &r1cs, &z[1..], Fr::one(), Fr::one()).is_err());
    }

    #[test]
    fn cache_returns_the_same_compilation() {
        let (shape, _) = toy_crs();
        let first = compiled(shape).unwrap();
        let second = compiled(shape).unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(
            first.num_constraints,
            crate::zk::api::num_constraints(shape).unwrap()
        );
    }
}

#[cfg(test)]
mod timing {
    //! Where a proof's time goes on the real TX2 (printed, not asserted):
    //! `cargo test -p dstore-protocol --lib -- --ignored prove_sections --nocapture`
    //! (`assignment_time` for the witness synthesis alone).
    use super::*;
    use crate::zk::api::{setup, Statement};
    use crate::zk::fixtures::real_tx2;
    use ark_std::UniformRand;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::time::Instant;

    /// The real TX2's statement, its two hidden s fields and the circuit that proves it.
    fn real_circuit() -> (Statement, [u8; 32], [u8; 32], crate::zk::TxCircuit) {
        let (statement, s1, s2) = Statement::of(&real_tx2(3)).unwrap();
        let shape = statement.shape;
        let mut bytes = statement.template.clone();
        bytes[Shape::range(shape.farmer_s)].copy_from_slice(&s1);
        bytes[Shape::range(shape.twin_s)].copy_from_slice(&s2);
        let circuit = crate::zk::TxCircuit {
            shape,
            public: statement.public_values().unwrap(),
            bytes,
            r: statement.r,
        };
        (statement, s1, s2, circuit)
    }

    #[test]
    #[ignore]
    fn prove_sections() {
        let (statement, s1, s2, circuit) = real_circuit();
        let shape = statement.shape;
        let mut rng = StdRng::seed_from_u64(3);
        let crs = setup(&shape, &mut rng).unwrap();
        let r1cs = compiled(&shape).unwrap();
        println!(
            "rows {} domain {} variables {}",
            r1cs.num_constraints + r1cs.num_inputs,
            crs.h_query.len() + 1,
            r1cs.num_variables
        );
        for _ in 0..2 {
            let t = Instant::now();
            let z = assignment(circuit.clone()).unwrap();
            println!("assignment {:?}", t.elapsed());
            let t = Instant::now();
            let domain = r1cs.domain_for(crs.h_query.len()).unwrap();
            let h = domain.quotient(r1cs.evaluations(&z, &domain).unwrap());
            println!("witness map {:?}", t.elapsed());
            let t = Instant::now();
            let h: Vec<_> = h.par_iter().map(|x| x.into_bigint()).collect();
            let zb: Vec<_> = z.par_iter().map(|x| x.into_bigint()).collect();
            println!("to bigint {:?}", t.elapsed());
            let t = Instant::now();
            let _ = msm(&crs.h_query, &h);
            println!("msm h {:?}", t.elapsed());
            let t = Instant::now();
            let _ = msm(&crs.l_query, &zb[r1cs.num_inputs..]);
            println!("msm l {:?}", t.elapsed());
            let t = Instant::now();
            let _ = msm(&crs.a_query[1..], &zb[1..]);
            println!("msm a {:?}", t.elapsed());
            let t = Instant::now();
            let _ = msm(&crs.b_g1_query[1..], &zb[1..]);
            println!("msm b1 {:?}", t.elapsed());
            let t = Instant::now();
            let _ = msm(&crs.b_g2_query[1..], &zb[1..]);
            println!("msm b2 {:?}", t.elapsed());
            let t = Instant::now();
            let (r, s) = (Fr::rand(&mut rng), Fr::rand(&mut rng));
            prove_with(&crs, &r1cs, &z, r, s).unwrap();
            println!("prove_with {:?}", t.elapsed());
            let t = Instant::now();
            crate::zk::prove(&crs, &statement, &s1, &s2, &mut rng).unwrap();
            println!("zk::prove {:?}", t.elapsed());
            let t = Instant::now();
            let _ = <G1Projective as ark_ec::VariableBaseMSM>::msm_bigint(&crs.h_query, &h);
            println!("ark msm h {:?}", t.elapsed());
        }
        let old = crate::zk::api::setup_circuit(circuit.clone(), &mut rng).unwrap();
        println!("power-of-two domain {}", old.h_query.len() + 1);
        let z = assignment(circuit.clone()).unwrap();
        for _ in 0..3 {
            for (name, key) in [("ours", &crs), ("2^k", &old)] {
                let t = Instant::now();
                prove_with(key, &r1cs, &z, Fr::one(), Fr::one()).unwrap();
                println!("{name}: prove_with {:?}", t.elapsed());
            }
        }
    }

    /// The witness synthesis alone, repeated (for profiling it).
    #[test]
    #[ignore]
    fn assignment_time() {
        let (_, _, _, circuit) = real_circuit();
        for _ in 0..10 {
            let t = Instant::now();
            let z = assignment(circuit.clone()).unwrap();
            println!("assignment {:?} ({} values)", t.elapsed(), z.len());
        }
    }

    /// `dstore-bench zk`'s prove figures without the benchmark binary: best of 3 of
    /// `zk::prove` and of the baseline's stock ark prover on the real TX2, in one run.
    #[test]
    #[ignore]
    fn prove_ratio_against_baseline() {
        use crate::zk::baseline;
        let (statement, s1, s2) = Statement::of(&real_tx2(3)).unwrap();
        let mut rng = StdRng::seed_from_u64(4);
        let crs = setup(&statement.shape, &mut rng).unwrap();
        let pk = baseline::setup(&statement, &mut rng).unwrap();
        let best = |f: &mut dyn FnMut()| {
            (0..3)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::MAX, f64::min)
        };
        let ours = best(&mut || {
            crate::zk::prove(&crs, &statement, &s1, &s2, &mut rng.clone()).unwrap();
        });
        let base = best(&mut || {
            baseline::prove(&pk, &statement, &s1, &s2, &mut rng.clone()).unwrap();
        });
        println!(
            "domain {} baseline domain {}: ours {ours:.3} s, baseline {base:.3} s, ratio {:.2}",
            crs.h_query.len() + 1,
            pk.h_query.len() + 1,
            base / ours
        );
    }
}
