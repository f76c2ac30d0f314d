//! Groth16 proof that a hidden TX2 reuses the nonce r (PROTOCOL.md 3.4, 3.5), on BN254.
//!
//! * [`sha256_gadget`]: our SHA-256 R1CS gadget (~15.5k constraints per block versus
//!   ~41.4k for ark-crypto-primitives') and its native reference.
//! * [`circuit`]: the statement for one TX2 shape and its public inputs.
//! * [`api`]: `setup` (renter), `prove` (farmer), `verify` (renter), serialisation.
//! * [`prover`]: the farmer's Groth16 prover (the shape's circuit compiled once, one
//!   witness-only synthesis per proof) over [`msm`], our multi-scalar multiplication.
//! * [`qap`]: the QAP over the smallest 2^a·3^b domain that fits the circuit (3·2^15
//!   instead of 2^17 points for the real TX2), with the prover's FFTs on it.
//! * [`crs_check`]: the farmer's check of a renter-made CRS before proving.
//! * [`baseline`]: the same statement over ark-crypto-primitives' gadget, for the benchmark.

pub mod api;
pub mod baseline;
pub mod circuit;
pub mod crs_check;
mod msm;
pub(crate) mod prover;
pub mod qap;
pub mod sha256_gadget;

pub use api::{
    crs_hash, deserialize_crs, deserialize_proof, deserialize_public_inputs,
    deserialize_trusted_crs, prove, serialize_crs, serialize_proof, serialize_public_inputs,
    serialize_trusted_crs, setup, verify, Crs, Statement, ZkProof,
};
pub use circuit::{PublicValues, Shape, TxCircuit};
pub use crs_check::{check_crs, CrsChecker, CrsRejected};
pub use prover::forget_compiled_shapes;

/// Why a proof could not be set up, made, decoded or checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZkError {
    #[error("the TX2 shape is malformed")]
    BadShape,
    #[error("the statement does not match its shape, r or D")]
    BadStatement,
    #[error("the witness does not satisfy the statement")]
    Unsatisfied,
    #[error("a key, proof or public input failed to decode")]
    Decode,
    #[error("the proof does not verify")]
    InvalidProof,
    #[error("Groth16 failed: {0}")]
    Groth16(String),
}

impl From<ark_relations::r1cs::SynthesisError> for ZkError {
    fn from(e: ark_relations::r1cs::SynthesisError) -> Self {
        ZkError::Groth16(e.to_string())
    }
}

impl From<ark_serialize::SerializationError> for ZkError {
    fn from(_: ark_serialize::SerializationError) -> Self {
        ZkError::Decode
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Shared test material: a real signed TX2 and a cached toy-shape CRS.
    use std::sync::OnceLock;

    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::circuit::tests::{toy, toy_shape};
    use super::sha256_gadget::sha256_native;
    use super::{setup, Crs, Shape, Statement};
    use crate::nonce_reuse::Tx2Template;

    /// A real reused-nonce TX2 (PROTOCOL.md 3.3 step 3).
    pub(crate) fn real_tx2(seed: u64) -> Tx2Template {
        crate::nonce_reuse::tests::signed_template(seed).1
    }

    /// A toy statement (180 bytes, two compressions in the circuit) and its s values.
    pub(crate) fn toy_statement(seed: u8) -> (Statement, [u8; 32], [u8; 32]) {
        let shape = toy_shape();
        let (bytes, r) = toy(shape.len, shape, seed);
        let s1: [u8; 32] = bytes[shape.farmer_s..shape.farmer_s + 32]
            .try_into()
            .unwrap();
        let s2: [u8; 32] = bytes[shape.twin_s..shape.twin_s + 32].try_into().unwrap();
        let mut template = bytes.clone();
        template[shape.farmer_s..shape.farmer_s + 32].fill(0);
        template[shape.twin_s..shape.twin_s + 32].fill(0);
        let statement = Statement {
            shape,
            template,
            r,
            digest: sha256_native(&bytes),
        };
        (statement, s1, s2)
    }

    /// One honest CRS for the toy shape, shared by all tests of the process.
    pub(crate) fn toy_crs() -> &'static (Shape, Crs) {
        static CRS: OnceLock<(Shape, Crs)> = OnceLock::new();
        CRS.get_or_init(|| {
            let shape = toy_shape();
            let crs = setup(&shape, &mut StdRng::seed_from_u64(77)).unwrap();
            (shape, crs)
        })
    }
}
