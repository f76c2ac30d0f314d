//! The farmer's Groth16 prover: the same proof as ark-groth16's
//! `create_proof_with_reduction_and_matrices` (LibsnarkReduction, same domain and coset),
//! with less work per proof.
//!
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
//!   directly ([`super::msm`]).

use std::sync::{Arc, Mutex};

use ark_bn254::{Bn254, Fr, G1Projective, G2Projective};
use ark_ec::CurveGroup;
use ark_ff::{FftField, Field, One, PrimeField, Zero};
use ark_groth16::Proof;
use ark_poly::{EvaluationDomain, GeneralEvaluationDomain};
use ark_relations::r1cs::{
    ConstraintMatrices, ConstraintSynthesizer, ConstraintSystem, OptimizationGoal, SynthesisMode,
};
use rayon::prelude::*;

use super::api::{compile, Crs};
use super::circuit::Shape;
use super::msm::msm;
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

    /// The coefficients of H = (A·B − C)/Z over ark-groth16's domain, exactly as its
    /// LibsnarkReduction computes them; refuses an unsatisfied `z`.
    fn witness_map(&self, z: &[Fr]) -> Result<Vec<Fr>, ZkError> {
        let (ni, nc) = (self.num_inputs, self.num_constraints);
        let domain = GeneralEvaluationDomain::<Fr>::new(nc + ni)
            .ok_or(ZkError::Groth16("circuit too large".into()))?;
        let size = domain.size();
        let [mut a, mut b, mut c] = self.evaluate(z)?;
        a.resize(size, Fr::zero());
        b.resize(size, Fr::zero());
        c.resize(size, Fr::zero());
        a[nc..nc + ni].copy_from_slice(&z[..ni]);
        let coset = domain
            .get_coset(Fr::GENERATOR)
            .ok_or(ZkError::Groth16("no coset".into()))?;
        let to_coset = |v: &mut Vec<Fr>| {
            domain.ifft_in_place(v);
            coset.fft_in_place(v);
        };
        rayon::join(
            || to_coset(&mut a),
            || rayon::join(|| to_coset(&mut b), || to_coset(&mut c)),
        );
        let z_inverse = domain
            .evaluate_vanishing_polynomial(Fr::GENERATOR)
            .inverse()
            .ok_or(ZkError::Groth16("vanishing polynomial".into()))?;
        a.par_iter_mut()
            .zip(&b)
            .zip(&c)
            .for_each(|((a, b), c)| *a = (*a * b - c) * z_inverse);
        drop((b, c));
        coset.ifft_in_place(&mut a);
        Ok(a)
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
    remember(&CACHE, *shape, fresh.clone());
    Ok(fresh)
}

fn remember(
    cache: &Mutex<Vec<(Shape, Arc<CompiledR1cs>)>>,
    shape: Shape,
    compiled: Arc<CompiledR1cs>,
) {
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if cache.iter().any(|(s, _)| *s == shape) {
        return;
    }
    if cache.len() == COMPILED_SHAPES_KEPT {
        cache.remove(0);
    }
    cache.push((shape, compiled));
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
    let h = r1cs.witness_map(z)?;
    if crs.h_query.len() + 1 < h.len() {
        return Err(ZkError::Groth16("CRS is for another circuit".into()));
    }
    let h: Vec<_> = h.par_iter().map(|x| x.into_bigint()).collect();
    let z: Vec<_> = z.par_iter().map(|x| x.into_bigint()).collect();
    // [1]ₖ of the constant variable is query[0]; the MSMs run over the rest.
    let ((h_acc, l_acc), (a_acc, (b1_acc, b2_acc))) = rayon::join(
        || rayon::join(|| msm(&crs.h_query, &h), || msm(&crs.l_query, &z[ni..])),
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
    use crate::zk::circuit::TxCircuit;
    use crate::zk::fixtures::{toy_crs, toy_statement};
    use ark_groth16::Groth16;
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

    /// For the same r, s our prover and ark-groth16's give the same proof.
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
            let cs = ConstraintSystem::<Fr>::new_ref();
            cs.set_optimization_goal(OptimizationGoal::Constraints);
            circuit.generate_constraints(cs.clone()).unwrap();
            cs.finalize();
            let m = cs.to_matrices().unwrap();
            let (ni, nc) = (cs.num_instance_variables(), cs.num_constraints());
            let ark = Groth16::<Bn254>::create_proof_with_reduction_and_matrices(
                crs, r, s, &m, ni, nc, &z,
            )
            .unwrap();
            assert_eq!(ours, ark);
        }
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
