//! The Groth16 reused-nonce proof (PROTOCOL.md 3.4, 3.5) about real TX2s on a regtest
//! chain: the renter's CRS and the farmer's check of it, the farmer's proof and the
//! renter's verification, TX3 signed for txid = SHA256(D) and mined after TX2; soundness,
//! zero knowledge, subverted CRSs and hostile encodings.
//!
//! The CRS for the real TX2 shape is generated once per run and shared through
//! [`dstore_tests::crs_cache`]; between the parties it always travels compressed and is
//! decoded and checked by the farmer's `check_crs`.

use std::path::PathBuf;

use ark_bn254::{Fq2, Fr, G1Affine, G2Affine};
use ark_ec::short_weierstrass::Affine;
use ark_ec::{AffineRepr, CurveGroup};
use ark_ff::{PrimeField, UniformRand};
use ark_serialize::CanonicalSerialize;
use bitcoin::consensus::serialize;
use bitcoin::OutPoint;
use dstore_protocol::contract::txid_from_digest;
use dstore_protocol::nonce_reuse::Tx2Template;
use dstore_protocol::zk::api::{deserialize_vk, serialize_vk};
use dstore_protocol::zk::circuit::pack_bytes;
use dstore_protocol::zk::{
    check_crs, crs_hash, deserialize_proof, deserialize_public_inputs, prove, serialize_crs,
    serialize_proof, serialize_public_inputs, verify, Crs, CrsChecker, CrsRejected, Shape,
    Statement, ZkError, ZkProof,
};
use dstore_tests::crs_cache::crs_for;
use dstore_tests::funding::{broadcast, fetch_tx, fetch_tx_from_block, mempool_verdicts, Funder};
use dstore_tests::parties::{start, Parties};
use dstore_tests::BitcoinNode;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

fn crs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("zk-crs")
}

/// A regtest chain up to the proof: TX1 mined, TX2 signed by the renter and by the farmer
/// under one nonce (not broadcast).
struct Chain {
    rng: StdRng,
    node: BitcoinNode,
    _funder: Funder,
    parties: Parties,
    tx1_outpoint: OutPoint,
    tx2: Tx2Template,
}

fn chain(seed: u64) -> Chain {
    let (mut rng, node, mut funder, parties) = start(seed, 1, 144, 12);
    let (tx1, prevouts) = funder.build_with_prevouts(parties.contract.tx1_output().unwrap());
    parties.contract.check_tx1(&tx1, 0, &prevouts).unwrap();
    broadcast(&node, &tx1).expect("TX1 accepted");
    node.mine(1);
    let tx1_outpoint = OutPoint {
        txid: tx1.compute_txid(),
        vout: 0,
    };
    let tx2 = parties.tx2(&mut rng, tx1_outpoint);
    Chain {
        rng,
        node,
        _funder: funder,
        parties,
        tx1_outpoint,
        tx2,
    }
}

/// The farmer's statement with its hidden s values, and an honest proof under the shared
/// CRS (the prover verifies its own proof before returning it).
fn honest_proof(c: &mut Chain) -> (Statement, [u8; 32], [u8; 32], Crs, ZkProof) {
    let (statement, s1, s2) = Statement::of(&c.tx2).unwrap();
    let crs = crs_for(&crs_dir(), &statement.shape);
    let proof = prove(&crs, &statement, &s1, &s2, &mut c.rng).expect("honest proof");
    (statement, s1, s2, crs, proof)
}

#[test]
fn zk_regtest_farmer_proves_renter_verifies_and_tx3_spends_mined_tx2() {
    let mut c = chain(41);
    // Farmer: the statement about its signed TX2; s1, s2 stay with it.
    let (statement, s1, s2) = Statement::of(&c.tx2).unwrap();
    assert_eq!(statement.shape, Shape::of(&c.tx2).unwrap());

    // Renter: one CRS per shape, sent compressed, cached under its hash.
    let crs = crs_for(&crs_dir(), &statement.shape);
    let crs_bytes = serialize_crs(&crs);
    // Farmer: decodes and checks it before proving anything with it.
    let checked = check_crs(&statement.shape, &crs_bytes, &mut c.rng).expect("honest CRS");
    assert_eq!(
        crs_hash(&checked),
        crs_hash(&crs),
        "both cache it under one hash"
    );
    let proof_bytes = serialize_proof(&prove(&checked, &statement, &s1, &s2, &mut c.rng).unwrap());
    assert_eq!(proof_bytes.len(), 128, "a compressed BN254 Groth16 proof");

    // Renter: the statement is about the TX2 it signed (its unsigned TX2, its sig_R and
    // the revealed r give every public byte); then it verifies, and signs TX3 for the
    // txid that D commits to.
    let mut unsigned = c.tx2.tx.clone();
    unsigned.input[0].script_sig = bitcoin::ScriptBuf::new();
    let sig_r = c
        .parties
        .contract
        .renter_sign_tx2(&unsigned, &c.parties.r)
        .unwrap();
    statement
        .check_against(&c.parties.contract, &unsigned, &sig_r)
        .expect("the statement is about the renter's TX2");
    let proof = deserialize_proof(&proof_bytes).unwrap();
    verify(&crs.vk, &statement, &proof).expect("the proof verifies");
    let txid = txid_from_digest(&statement.digest);
    assert_eq!(txid, c.tx2.tx.compute_txid(), "txid = SHA256(D)");
    let tx3 = c.parties.tx3(&statement.digest);
    assert_eq!(tx3.input[0].previous_output.txid, txid);

    // TX3 cannot go anywhere before TX2; once TX2 is mined it spends it.
    let early = broadcast(&c.node, &tx3).unwrap_err();
    assert!(
        early.contains("missing") || early.contains("inputs"),
        "{early}"
    );
    let tx2_id = broadcast(&c.node, &c.tx2.tx).expect("TX2 accepted");
    c.node.mine(1);
    assert_eq!(c.node.confirmations(&tx2_id), 1, "TX2 is mined");
    let tx3_id = broadcast(&c.node, &tx3).expect("TX3 accepted");
    c.node.mine(1);
    assert_eq!(c.node.confirmations(&tx3_id), 1, "TX3 is mined");
    let paid = &fetch_tx(&c.node, &tx3_id).output[0];
    assert_eq!(
        paid.script_pubkey,
        c.parties.farmer_payout(),
        "the farmer is paid"
    );
    // And the renter gets f from the mined TX2.
    let mined = fetch_tx_from_block(&c.node, &tx2_id);
    assert_eq!(c.parties.extract(&mined).unwrap(), c.parties.f);
}

#[test]
fn zk_soundness_differing_r_wrong_digest_and_changed_bytes_give_no_verifying_proof() {
    let mut c = chain(42);
    let (statement, s1, s2, crs, proof) = honest_proof(&mut c);
    let shape = statement.shape;

    // A TX2 whose two r fields differ: signed with a fresh nonce per key. bitcoind takes
    // it, but it reveals nothing, and the farmer cannot prove it reuses a nonce.
    let fresh = c.parties.tx2_with_fresh_nonces(c.tx1_outpoint);
    assert_eq!(mempool_verdicts(&c.node, &[&fresh]), vec![None]);
    let fresh_bytes = serialize(&fresh);
    assert_eq!(
        fresh_bytes.len(),
        shape.len,
        "low-R: same layout as the template"
    );
    let field = |at: usize| -> [u8; 32] { fresh_bytes[at..at + 32].try_into().unwrap() };
    assert_ne!(field(shape.farmer_r), field(shape.twin_r));
    let digest = dstore_protocol::hashing::sha256(&[&fresh_bytes]);
    let mut template = fresh_bytes.clone();
    template[shape.farmer_s..shape.farmer_s + 32].fill(0);
    template[shape.twin_s..shape.twin_s + 32].fill(0);
    let honest_layout = Statement {
        shape,
        template: template.clone(),
        r: field(shape.farmer_r),
        digest,
    };
    assert_eq!(
        honest_layout.public_inputs(),
        Err(ZkError::BadStatement),
        "the statement itself says the r fields differ"
    );
    let (fs1, fs2) = (field(shape.farmer_s), field(shape.twin_s));
    assert!(prove(&crs, &honest_layout, &fs1, &fs2, &mut c.rng).is_err());
    // Lying about the twin r field: the bytes no longer hash to D.
    let mut lying = honest_layout.clone();
    lying.template[shape.twin_r..shape.twin_r + 32].copy_from_slice(&lying.r);
    assert_eq!(
        prove(&crs, &lying, &fs1, &fs2, &mut c.rng),
        Err(ZkError::Unsatisfied)
    );
    assert!(verify(&crs.vk, &lying, &proof).is_err());

    // A D that does not match the bytes.
    let mut wrong_d = statement.clone();
    wrong_d.digest[0] ^= 0x80;
    assert_eq!(
        prove(&crs, &wrong_d, &s1, &s2, &mut c.rng),
        Err(ZkError::Unsatisfied)
    );
    assert!(verify(&crs.vk, &wrong_d, &proof).is_err());

    // Template bytes changed anywhere (prefix, r fields, the rest): no proof.
    let hidden = |p: usize| {
        (shape.farmer_s..shape.farmer_s + 32).contains(&p)
            || (shape.twin_s..shape.twin_s + 32).contains(&p)
    };
    let mut checked = 0;
    for p in (0..shape.len).filter(|&p| !hidden(p)) {
        let mut changed = statement.clone();
        changed.template[p] ^= 1 << (p % 8);
        assert!(
            prove(&crs, &changed, &s1, &s2, &mut c.rng).is_err(),
            "byte {p}"
        );
        assert!(verify(&crs.vk, &changed, &proof).is_err(), "byte {p}");
        checked += 1;
    }
    assert_eq!(checked, shape.len - 64);
    verify(&crs.vk, &statement, &proof).expect("the honest statement still verifies");
}

/// Every 8-byte window of `secret`, in both byte orders.
fn windows(secret: &[u8; 32]) -> Vec<Vec<u8>> {
    let mut reversed = *secret;
    reversed.reverse();
    [secret, &reversed]
        .iter()
        .flat_map(|s| s.windows(8).map(<[u8]>::to_vec).collect::<Vec<_>>())
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn zk_proof_and_public_inputs_contain_neither_s1_nor_s2() {
    let mut c = chain(43);
    let (statement, s1, s2, crs, proof) = honest_proof(&mut c);
    let proof_bytes = serialize_proof(&proof);
    let inputs = statement.public_inputs().unwrap();
    let input_bytes = serialize_public_inputs(&inputs);
    let statement_json = serde_json::to_vec(&statement).unwrap();
    // The s values are really in TX2 (the chain reveals them once TX2 is broadcast).
    assert!(contains(&c.tx2.bytes, &s1) && contains(&c.tx2.bytes, &s2));
    for s in [&s1, &s2] {
        for window in windows(s) {
            for (what, blob) in [
                ("proof", &proof_bytes),
                ("public inputs", &input_bytes),
                ("template", &statement.template),
                ("statement", &statement_json),
            ] {
                assert!(!contains(blob, &window), "{what} contains part of s");
            }
        }
        // By the public-input list: no element encodes s, packed or whole.
        let encodings = [
            pack_bytes(&s[..31]),
            pack_bytes(&s[1..]),
            Fr::from_be_bytes_mod_order(s),
            Fr::from_le_bytes_mod_order(s),
        ];
        assert!(inputs.iter().all(|x| !encodings.contains(x)));
    }
    assert_eq!(inputs.len(), statement.shape.num_public_inputs());
    verify(&crs.vk, &statement, &proof).unwrap();
}

/// The compressed encoding of a CRS, tampered in memory first (serialisation does not
/// validate, so invalid points reach the farmer as they would from a hostile renter).
fn encode(crs: &Crs) -> Vec<u8> {
    let mut bytes = Vec::new();
    crs.serialize_compressed(&mut bytes).unwrap();
    bytes
}

/// A point on BN254's G2 curve outside its prime-order subgroup.
fn g2_point_outside_subgroup(rng: &mut StdRng) -> G2Affine {
    loop {
        let x = Fq2::rand(rng);
        if let Some(p) = Affine::<ark_bn254::g2::Config>::get_point_from_x_unchecked(x, true) {
            if !p.is_in_correct_subgroup_assuming_on_curve() {
                return p;
            }
        }
    }
}

#[test]
fn zk_farmer_rejects_subverted_crs() {
    let mut c = chain(44);
    let shape = Shape::of(&c.tx2).unwrap();
    let crs = crs_for(&crs_dir(), &shape);
    let g1 = G1Affine::generator();
    // Tamperings that decode fine are checked through CrsChecker::check_decoded, which runs
    // every check of check_crs after decoding: decoding the 21 MB key for each tampering
    // would cost seconds apiece, and the honest key's full byte-level check_crs (decoding
    // included) is in zk_regtest_farmer_proves_renter_verifies_….
    let checker = CrsChecker::new(&shape).unwrap();
    let mut check_rng = StdRng::seed_from_u64(44);
    let mut rejected = |what: &str, bad: &Crs| {
        assert_eq!(
            checker.check_decoded(bad, &mut check_rng),
            Err(CrsRejected),
            "{what} must be rejected"
        );
    };
    assert_eq!(checker.check_decoded(&crs, &mut c.rng), Ok(()), "honest");

    let mut bad = crs.clone();
    bad.delta_g1 = G1Affine::zero();
    bad.vk.delta_g2 = G2Affine::zero();
    rejected("δ = identity", &bad);

    let mut bad = crs.clone();
    bad.beta_g1 = (crs.beta_g1 + g1).into_affine();
    rejected("[β]₁ and [β]₂ that don't match", &bad);

    let mut bad = crs.clone();
    let i = bad.b_g2_query.iter().position(|p| !p.is_zero()).unwrap();
    bad.b_g2_query[i] = (bad.b_g2_query[i] * Fr::from(5u64)).into_affine();
    rejected("B queries that differ between G1 and G2", &bad);

    let mut bad = crs.clone();
    bad.vk.gamma_abc_g1[3] = (bad.vk.gamma_abc_g1[3] + g1).into_affine();
    rejected("a tampered public-input query", &bad);

    let mut bad = crs.clone();
    let zero = bad.b_g1_query.iter().position(|p| p.is_zero()).unwrap();
    bad.b_g1_query[zero] = g1;
    rejected("a B query where the circuit has none", &bad);

    // A key for a different circuit: a smaller TX layout (180 bytes, two compressions),
    // sent as bytes.
    let other_shape = Shape {
        len: 180,
        farmer_r: 40,
        farmer_s: 74,
        twin_r: 112,
        twin_s: 146,
    };
    let other = crs_for(&crs_dir(), &other_shape);
    rejected("a key for a different circuit", &other);
    assert_eq!(
        check_crs(&shape, &serialize_crs(&other), &mut c.rng),
        Err(CrsRejected)
    );

    // A point outside the G2 subgroup never gets past decoding: in the verifying key, and
    // in the other shape's (smaller) key as a B query, checked as bytes.
    let outside = g2_point_outside_subgroup(&mut c.rng);
    let mut bad = crs.clone();
    bad.vk.beta_g2 = outside;
    assert_eq!(
        check_crs(&shape, &encode(&bad), &mut c.rng),
        Err(CrsRejected)
    );
    let mut bad = other.clone();
    let last = bad.b_g2_query.iter().rposition(|p| !p.is_zero()).unwrap();
    bad.b_g2_query[last] = outside;
    assert_eq!(
        check_crs(&other_shape, &encode(&bad), &mut c.rng),
        Err(CrsRejected)
    );
}

/// Flips `mask` into byte `at` of a copy of `bytes`.
fn corrupt(bytes: &[u8], at: usize, mask: u8) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[at] ^= mask;
    out
}

#[test]
fn zk_malformed_proofs_keys_and_inputs_are_errors_not_panics() {
    let mut c = chain(45);
    let (statement, _, _, crs, proof) = honest_proof(&mut c);
    let inputs = statement.public_inputs().unwrap();
    let proof_bytes = serialize_proof(&proof);
    let input_bytes = serialize_public_inputs(&inputs);
    let vk_bytes = serialize_vk(&crs.vk);
    let rng = &mut c.rng;

    // Every truncation, and random corruptions: an error, or a value that fails to verify.
    for len in 0..proof_bytes.len() {
        assert!(
            deserialize_proof(&proof_bytes[..len]).is_err(),
            "proof cut at {len}"
        );
    }
    for _ in 0..300 {
        let bytes = corrupt(
            &proof_bytes,
            rng.gen_range(0..proof_bytes.len()),
            rng.gen_range(1..=255),
        );
        if let Ok(p) = deserialize_proof(&bytes) {
            assert!(verify(&crs.vk, &statement, &p).is_err());
        }
    }
    for len in 0..input_bytes.len() {
        assert!(deserialize_public_inputs(&input_bytes[..len]).is_err());
    }
    for _ in 0..300 {
        let bytes = corrupt(
            &input_bytes,
            rng.gen_range(0..input_bytes.len()),
            rng.gen_range(1..=255),
        );
        if let Ok(xs) = deserialize_public_inputs(&bytes) {
            assert!(
                xs == inputs
                    || dstore_protocol::zk::api::verify_inputs(&crs.vk, &xs, &proof).is_err()
            );
        }
    }
    for len in (0..vk_bytes.len()).step_by(7) {
        assert!(deserialize_vk(&vk_bytes[..len]).is_err(), "vk cut at {len}");
    }
    for _ in 0..200 {
        let bytes = corrupt(
            &vk_bytes,
            rng.gen_range(0..vk_bytes.len()),
            rng.gen_range(1..=255),
        );
        if let Ok(vk) = deserialize_vk(&bytes) {
            assert!(vk == crs.vk || verify(&vk, &statement, &proof).is_err());
        }
    }
    // Keys: hostile length prefixes, garbage and truncations of a real CRS.
    let crs_bytes = serialize_crs(&crs);
    let mut hostile = crs_bytes[..crs_bytes.len().min(4096)].to_vec();
    hostile.extend_from_slice(&u64::MAX.to_le_bytes());
    for bytes in [
        Vec::new(),
        vec![0xff; 64],
        u64::MAX.to_le_bytes().to_vec(),
        hostile,
        crs_bytes[..1000].to_vec(),
        crs_bytes[..crs_bytes.len() / 50].to_vec(),
    ] {
        assert!(check_crs(&statement.shape, &bytes, rng).is_err());
        assert!(dstore_protocol::zk::deserialize_crs(&bytes).is_err());
    }
    for _ in 0..200 {
        let mut garbage = vec![0u8; rng.gen_range(0..512)];
        rng.fill_bytes(&mut garbage);
        assert!(deserialize_proof(&garbage).is_err() || garbage.len() == 128);
        let _ = deserialize_public_inputs(&garbage);
        let _ = deserialize_vk(&garbage);
    }
}
