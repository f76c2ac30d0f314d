//! A hostile renter's bit-probing CRS (issue 15, item 2). The renter makes the Groth16 key
//! itself, so it knows β and δ. For a witness variable k it shifts the A-query point by
//! d·G₁ and compensates the L-query point by (dβ/δ)·G₁, so the farmer's `check_crs` pairing
//! e(L_k, δ) = e(A_k, β)·e(α, B_k) still holds. An honest prover's A then gains a_k·d·G₁ and
//! its C gains a_k·(dβ/δ + s·d)·G₁; the verification equation is off by
//! e(G₁, G₂)^(a_k·d·v(τ)), where v(τ) is the witness part of B: the proof verifies iff
//! a_k = 0. Probing a bit of s1 turns the farmer's self-verification into a one-bit oracle
//! (about 512 fresh tries would read out s1, s2 and so f, were the farmer to allow them).

use ark_bn254::{Bn254, Fr, G1Affine, G1Projective, G2Projective};
use ark_ec::{AffineRepr, CurveGroup, PrimeGroup};
use ark_ff::Field;
use ark_groth16::Groth16;
use ark_std::UniformRand;
use dstore_protocol::zk::qap::MixedRadixReduction;
use dstore_protocol::zk::sha256_gadget::sha256_native;
use dstore_protocol::zk::{Crs, Shape, Statement, TxCircuit};
use rand::{CryptoRng, RngCore};

/// A CRS the renter made with trapdoors it keeps.
pub struct HostileCrs {
    pub crs: Crs,
    beta: Fr,
    delta: Fr,
}

impl HostileCrs {
    /// Groth16 key generation for `shape` with trapdoors this renter chose.
    pub fn generate(shape: &Shape, rng: &mut (impl RngCore + CryptoRng)) -> HostileCrs {
        let [alpha, beta, gamma, delta] = [(); 4].map(|_| Fr::rand(rng));
        let circuit = TxCircuit::blank(shape).expect("a valid shape");
        let crs = Groth16::<Bn254, MixedRadixReduction>::generate_parameters_with_qap(
            circuit,
            alpha,
            beta,
            gamma,
            delta,
            G1Projective::generator(),
            G2Projective::generator(),
            rng,
        )
        .expect("key generation");
        HostileCrs { crs, beta, delta }
    }

    /// The CRS with the witness variables `vars` probed: an honest proof under it
    /// verifies iff every one of them is 0.
    pub fn probing(&self, vars: &[usize], rng: &mut (impl RngCore + CryptoRng)) -> Crs {
        let mut crs = self.crs.clone();
        let n_inst = crs.vk.gamma_abc_g1.len();
        let ratio = self.beta * self.delta.inverse().expect("δ ≠ 0");
        let g1 = G1Affine::generator();
        for &k in vars {
            assert!(k >= n_inst, "only witness variables have an L entry");
            let d = Fr::rand(rng);
            crs.a_query[k] = (crs.a_query[k] + g1 * d).into_affine();
            crs.l_query[k - n_inst] = (crs.l_query[k - n_inst] + g1 * (d * ratio)).into_affine();
        }
        crs
    }
}

/// The witness variable of bit `bit` (0 = most significant) of byte `byte` of s1, in the
/// order `TxCircuit` allocates them: the instance, 256 r bits, then 8 bits per byte of
/// the transaction from the midstate prefix on, r bytes excepted.
pub fn s1_bit_variable(crs: &Crs, shape: &Shape, byte: usize, bit: usize) -> usize {
    let in_r = |p: usize| {
        (shape.farmer_r..shape.farmer_r + 32).contains(&p)
            || (shape.twin_r..shape.twin_r + 32).contains(&p)
    };
    let before = (shape.prefix_len()..shape.farmer_s + byte)
        .filter(|&p| !in_r(p))
        .count();
    crs.vk.gamma_abc_g1.len() + 256 + 8 * before + bit
}

/// `statement` with another s1: the same template and r, the digest of the new TX2.
pub fn with_s1(statement: &Statement, s1: &[u8; 32], s2: &[u8; 32]) -> Statement {
    let shape = statement.shape;
    let mut bytes = statement.template.clone();
    bytes[shape.farmer_s..shape.farmer_s + 32].copy_from_slice(s1);
    bytes[shape.twin_s..shape.twin_s + 32].copy_from_slice(s2);
    Statement {
        digest: sha256_native(&bytes),
        ..statement.clone()
    }
}
