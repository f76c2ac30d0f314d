//! The benchmark baseline: the reused-nonce statement proven with ark-crypto-primitives'
//! `Sha256Gadget` in place of ours, so `dstore-bench zk` can measure both in one run.
//!
//! The statement is the one of [`super::circuit`] with one difference forced by the
//! library: `Sha256Gadget` cannot start from a midstate, so the whole blocks before s1
//! are hashed from the IV as constant bytes (the library folds constant rounds away at
//! no constraint cost). That bakes the prefix into the circuit, so a baseline key is for
//! one template rather than one shape, and it is slightly kinder to the baseline than a
//! public midstate would be. Everything else is alike: r as witness bytes tied to two
//! public elements and placed at both r fields, s1 and s2 as witness bytes, every other
//! byte a witness tied to the packed public template, and the digest tied to 8 public
//! words. Not used by the protocol.

use ark_bn254::{Bn254, Fr};
use ark_crypto_primitives::crh::sha256::constraints::Sha256Gadget;
use ark_groth16::{prepare_verifying_key, Groth16, ProvingKey};
use ark_r1cs_std::alloc::AllocVar;
use ark_r1cs_std::boolean::Boolean;
use ark_r1cs_std::convert::ToBitsGadget;
use ark_r1cs_std::uint8::UInt8;
use ark_relations::r1cs::{
    ConstraintSynthesizer, ConstraintSystem, ConstraintSystemRef, OptimizationGoal, SynthesisError,
    SynthesisMode, Variable,
};
use ark_std::UniformRand;
use rand::{CryptoRng, RngCore};

use super::api::{setup_circuit, Statement, ZkProof};
use super::circuit::{enforce_packing_lcs, Shape, BYTES_PER_ELEMENT};
use super::prover::{assignment, prove_with, CompiledR1cs};
use super::ZkError;

/// The baseline circuit for one statement (`bytes` is the full TX2 the prover assigns).
#[derive(Debug, Clone)]
pub struct BaselineCircuit {
    statement: Statement,
    bytes: Vec<u8>,
}

impl BaselineCircuit {
    /// The circuit for `statement` with the hidden values `s1`, `s2`.
    pub fn new(statement: &Statement, s1: &[u8; 32], s2: &[u8; 32]) -> BaselineCircuit {
        let mut bytes = statement.template.clone();
        bytes[Shape::range(statement.shape.farmer_s)].copy_from_slice(s1);
        bytes[Shape::range(statement.shape.twin_s)].copy_from_slice(s2);
        BaselineCircuit {
            statement: statement.clone(),
            bytes,
        }
    }

    /// Public inputs in circuit order: D's 8 words, r's 2 elements, the template elements.
    pub fn public_inputs(statement: &Statement) -> Result<Vec<Fr>, ZkError> {
        let values = statement.public_values()?;
        let mut out: Vec<Fr> = values.digest.iter().map(|w| Fr::from(*w)).collect();
        out.extend(values.r);
        out.extend(values.template);
        Ok(out)
    }
}

/// Enforces that big-endian `bits` pack to `target`.
fn enforce_packing(
    cs: &ConstraintSystemRef<Fr>,
    bits: &[Boolean<Fr>],
    target: Variable,
) -> Result<(), SynthesisError> {
    enforce_packing_lcs(cs, bits.iter().map(Boolean::lc), target)
}

/// Big-endian bits of bytes (most significant bit of the first byte first).
fn be_bits(bytes: &[UInt8<Fr>]) -> Result<Vec<Boolean<Fr>>, SynthesisError> {
    let mut out = Vec::with_capacity(bytes.len() * 8);
    for byte in bytes {
        let mut bits = byte.to_bits_le()?;
        bits.reverse();
        out.extend(bits);
    }
    Ok(out)
}

impl ConstraintSynthesizer<Fr> for BaselineCircuit {
    fn generate_constraints(self, cs: ConstraintSystemRef<Fr>) -> Result<(), SynthesisError> {
        let statement = &self.statement;
        let shape = statement.shape;
        let inputs = Self::public_inputs(statement).map_err(|_| SynthesisError::Unsatisfiable)?;
        let vars: Vec<Variable> = inputs
            .iter()
            .map(|v| cs.new_input_variable(|| Ok(*v)))
            .collect::<Result<_, _>>()?;
        let (digest_vars, rest) = vars.split_at(8);
        let (r_vars, template_vars) = rest.split_at(2);

        let r = UInt8::new_witness_vec(cs.clone(), &statement.r)?;
        let r_bits = be_bits(&r)?;
        enforce_packing(&cs, &r_bits[..248], r_vars[0])?;
        enforce_packing(&cs, &r_bits[248..], r_vars[1])?;

        let mut message = Vec::with_capacity(shape.len);
        let mut public = Vec::new();
        for p in 0..shape.len {
            let in_r = [shape.farmer_r, shape.twin_r]
                .into_iter()
                .find(|&start| Shape::range(start).contains(&p));
            let byte = if p < shape.prefix_len() {
                UInt8::constant(statement.template[p])
            } else if let Some(start) = in_r {
                r[p - start].clone()
            } else {
                UInt8::new_witness(cs.clone(), || Ok(self.bytes[p]))?
            };
            let hidden = Shape::range(shape.farmer_s).contains(&p)
                || Shape::range(shape.twin_s).contains(&p);
            if p >= shape.prefix_len() && !hidden {
                public.push(byte.clone());
            }
            message.push(byte);
        }
        let public_bits = be_bits(&public)?;
        for (chunk, target) in public_bits.chunks(BYTES_PER_ELEMENT * 8).zip(template_vars) {
            enforce_packing(&cs, chunk, *target)?;
        }

        let digest = Sha256Gadget::digest(&message)?;
        let digest_bits = be_bits(&digest.0)?;
        for (chunk, target) in digest_bits.chunks(32).zip(digest_vars) {
            enforce_packing(&cs, chunk, *target)?;
        }
        Ok(())
    }
}

/// Constraints of the baseline circuit for `statement`.
pub fn num_constraints(statement: &Statement) -> Result<usize, ZkError> {
    let cs = ConstraintSystem::<Fr>::new_ref();
    cs.set_optimization_goal(OptimizationGoal::Constraints);
    cs.set_mode(SynthesisMode::Setup);
    BaselineCircuit::new(statement, &[0; 32], &[0; 32]).generate_constraints(cs.clone())?;
    cs.finalize();
    Ok(cs.num_constraints())
}

/// Baseline key generation, with the same generators and trapdoor sampling as
/// [`super::setup`].
pub fn setup(
    statement: &Statement,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<ProvingKey<Bn254>, ZkError> {
    setup_circuit(BaselineCircuit::new(statement, &[0; 32], &[0; 32]), rng)
}

/// Baseline proof; refuses an unsatisfied witness, like [`super::prove`].
pub fn prove(
    pk: &ProvingKey<Bn254>,
    statement: &Statement,
    s1: &[u8; 32],
    s2: &[u8; 32],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<ZkProof, ZkError> {
    let circuit = BaselineCircuit::new(statement, s1, s2);
    let cs = ConstraintSystem::<Fr>::new_ref();
    circuit.clone().generate_constraints(cs.clone())?;
    if !cs.is_satisfied()? {
        return Err(ZkError::Unsatisfied);
    }
    Ok(Groth16::<Bn254>::create_random_proof_with_reduction(
        circuit, pk, rng,
    )?)
}

/// The baseline circuit of one statement compiled for our prover ([`super::prover`]): the
/// benchmark's same-prover comparison, which separates the gadget's share of the speed-up
/// from the prover's.
pub struct CompiledBaseline(CompiledR1cs);

/// Compiles the baseline circuit of `statement` for [`prove_with_our_prover`].
pub fn compile_for_our_prover(statement: &Statement) -> Result<CompiledBaseline, ZkError> {
    CompiledR1cs::of(BaselineCircuit::new(statement, &[0; 32], &[0; 32])).map(CompiledBaseline)
}

/// A baseline proof made by our prover (one witness-only synthesis, the satisfaction
/// check in the witness map, our MSMs); it verifies like [`prove`]'s.
pub fn prove_with_our_prover(
    pk: &ProvingKey<Bn254>,
    compiled: &CompiledBaseline,
    statement: &Statement,
    s1: &[u8; 32],
    s2: &[u8; 32],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<ZkProof, ZkError> {
    let z = assignment(BaselineCircuit::new(statement, s1, s2))?;
    let (r, s) = (Fr::rand(rng), Fr::rand(rng));
    prove_with(pk, &compiled.0, &z, r, s)
}

/// Baseline verification.
pub fn verify(
    pk: &ProvingKey<Bn254>,
    statement: &Statement,
    proof: &ZkProof,
) -> Result<(), ZkError> {
    let inputs = BaselineCircuit::public_inputs(statement)?;
    let pvk = prepare_verifying_key(&pk.vk);
    match Groth16::<Bn254>::verify_proof(&pvk, proof, &inputs) {
        Ok(true) => Ok(()),
        _ => Err(ZkError::InvalidProof),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zk::fixtures::toy_statement;
    use rand::SeedableRng;

    #[test]
    fn baseline_accepts_the_honest_witness_only() {
        let (statement, s1, s2) = toy_statement(4);
        let sat = |s1: &[u8; 32]| {
            let cs = ConstraintSystem::<Fr>::new_ref();
            BaselineCircuit::new(&statement, s1, &s2)
                .generate_constraints(cs.clone())
                .unwrap();
            cs.is_satisfied().unwrap()
        };
        assert!(sat(&s1));
        let mut wrong = s1;
        wrong[7] ^= 4;
        assert!(!sat(&wrong));
    }

    #[test]
    fn our_prover_proves_the_baseline_statement() {
        let (statement, s1, s2) = toy_statement(5);
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let pk = setup(&statement, &mut rng).unwrap();
        let compiled = compile_for_our_prover(&statement).unwrap();
        let proof = prove_with_our_prover(&pk, &compiled, &statement, &s1, &s2, &mut rng).unwrap();
        verify(&pk, &statement, &proof).unwrap();
        let mut wrong = s1;
        wrong[0] ^= 1;
        assert_eq!(
            prove_with_our_prover(&pk, &compiled, &statement, &wrong, &s2, &mut rng),
            Err(ZkError::Unsatisfied)
        );
    }
}
