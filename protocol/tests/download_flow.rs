//! End-to-end download contract without a node: keys, upload, seal, TX1..TX3, key leak, unseal, decrypt; scripts checked with miniscript's interpreter.

use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{Keypair, SECP256K1};
use bitcoin::sighash::Prevouts;
use bitcoin::{Amount, OutPoint, Transaction, TxOut, Txid};
use dstore_protocol::contract::{txid_from_digest, DownloadContract, RefundDestination};
use dstore_protocol::datapath::{decrypt_stream, encrypt_and_build_tree};
use dstore_protocol::extract::extract_farmer_key;
use dstore_protocol::keys::{commit_key, derive_key, joint_secret_key, verify_reveal, Role};
use dstore_protocol::nonce_reuse::farmer_sign_tx2;
use dstore_protocol::receipt::StorageReceipt;
use dstore_protocol::seal::{
    check_sealed_copy, find_bad_segment, seal, unseal, verify_transcript, SealContext,
};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// Whether miniscript's interpreter accepts input 0 of `tx` spending `prevout`, with
/// signatures checked.
fn spends(tx: &Transaction, prevout: &TxOut) -> bool {
    let input = &tx.input[0];
    let Ok(interpreter) = miniscript::Interpreter::from_txdata(
        &prevout.script_pubkey,
        &input.script_sig,
        &input.witness,
        input.sequence,
        tx.lock_time,
    ) else {
        return false;
    };
    let prevouts = [prevout.clone()];
    let prevouts = Prevouts::All(&prevouts);
    let results: Vec<_> = interpreter.iter(SECP256K1, tx, 0, &prevouts).collect();
    !results.is_empty() && results.iter().all(Result::is_ok)
}

fn assert_spends(tx: &Transaction, prevout: &TxOut) {
    assert!(spends(tx, prevout), "spend rejected: {tx:?}");
}

#[test]
fn full_download_contract() {
    let mut rng = StdRng::seed_from_u64(2024);
    let renter_seed = [1u8; 32];
    let farmer_seed = [2u8; 32];
    let contract_id = [0xc0; 32];

    // 1. Keys: commit, then reveal, then verify.
    let r = derive_key(&renter_seed, Role::Download, 7).unwrap();
    let f = derive_key(&farmer_seed, Role::Download, 7).unwrap();
    let r2 = derive_key(&renter_seed, Role::Tx2, 7).unwrap();
    let f2 = derive_key(&farmer_seed, Role::Tx2, 7).unwrap();
    let (rc, rr) = commit_key(&mut rng, &r, &contract_id);
    let (fc, fr) = commit_key(&mut rng, &f, &contract_id);
    verify_reveal(&rc, &rr, &contract_id).unwrap();
    verify_reveal(&fc, &fr, &contract_id).unwrap();
    let farmer_identity = Keypair::from_secret_key(
        SECP256K1,
        &derive_key(&farmer_seed, Role::Identity, 0).unwrap(),
    );

    // 2. Upload: renter encrypts and keeps the C tree; farmer signs a receipt.
    let plaintext: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let key = [0x4b; 32];
    let mut c = Vec::new();
    let c_tree = encrypt_and_build_tree(&key, &contract_id, &plaintext[..], &mut c).unwrap();
    let receipt = StorageReceipt::sign(&farmer_identity, contract_id, c_tree.commitment(), 10_000);

    // 3. Download: farmer seals, renter checks.
    let context = SealContext {
        contract_id,
        download_id: [1; 32],
        renter_key: rr.pubkey,
        farmer_key: fr.pubkey,
    };
    let mut e = Vec::new();
    let transcript = seal(&mut rng, &context, &farmer_identity, &c[..], &mut e).unwrap();
    verify_transcript(
        &transcript,
        &farmer_identity.x_only_public_key().0,
        &context,
        &receipt,
    )
    .unwrap();
    let e_tree = check_sealed_copy(&transcript, &e[..]).unwrap();
    assert_eq!(e_tree.length(), c.len() as u64);

    // 4. Transactions.
    let contract = DownloadContract {
        contract_id,
        farmer_key: fr.pubkey,
        renter_key: rr.pubkey,
        renter_tx2_key: r2.public_key(SECP256K1),
        farmer_tx2_key: f2.public_key(SECP256K1),
        refund_height: 300,
        payout_delay: 10,
        price: Amount::from_sat(50_000),
        tx1_key_order: dstore_protocol::contract::Tx1KeyOrder::RenterFirst,
    };
    let tx1_out = contract.tx1_output().unwrap();
    let tx1_outpoint = OutPoint {
        txid: Txid::from_byte_array([7; 32]),
        vout: 0,
    };
    let unsigned_tx2 = contract
        .unsigned_tx2(tx1_outpoint, Amount::from_sat(2_000))
        .unwrap();
    let sig_r = contract.renter_sign_tx2(&unsigned_tx2, &r).unwrap();
    let template = farmer_sign_tx2(&mut rng, &contract, &unsigned_tx2, &f, &sig_r).unwrap();
    assert_spends(&template.tx, &tx1_out);

    // Renter learns only D, computes the txid and signs TX3.
    let tx2_txid = txid_from_digest(&template.digest);
    assert_eq!(tx2_txid, template.tx.compute_txid());
    let tx2_value = contract.tx2_value(Amount::from_sat(2_000)).unwrap();
    let payout = RefundDestination::p2wpkh_of(&derive_key(&farmer_seed, Role::Payout, 7).unwrap());
    let tx3 = contract
        .unsigned_tx3(
            tx2_txid,
            tx2_value,
            Amount::from_sat(1_000),
            payout.script_pubkey().clone(),
        )
        .unwrap();
    let renter_tx3_sig = contract.sign_tx3(&tx3, tx2_value, &r2).unwrap();
    let farmer_tx3_sig = contract.sign_tx3(&tx3, tx2_value, &f2).unwrap();
    let tx3 = contract
        .finalize_tx3(&tx3, renter_tx3_sig, farmer_tx3_sig)
        .unwrap();
    assert_spends(&tx3, &template.tx.output[0]);

    // 5. The watchtower sees TX2: extract f, unseal, decrypt.
    let leaked = extract_farmer_key(
        &template.tx,
        0,
        &contract.farmer_key,
        &contract_id,
        Some(&tx1_out.script_pubkey),
    )
    .unwrap();
    assert_eq!(leaked, f);
    let j = joint_secret_key(&r, &leaked).unwrap();
    assert_eq!(
        find_bad_segment(&j, &transcript.ephemeral, &e[..], &c_tree).unwrap(),
        None
    );
    let mut unsealed = Vec::new();
    unseal(&j, &transcript.ephemeral, &e[..], &mut unsealed).unwrap();
    let mut recovered = Vec::new();
    decrypt_stream(&key, &contract_id, &unsealed[..], &mut recovered).unwrap();
    assert_eq!(recovered, plaintext);
}

#[test]
fn refunds_satisfy_their_scripts() {
    let mut rng = StdRng::seed_from_u64(7);
    let keys: Vec<_> = (0..4)
        .map(|_| bitcoin::secp256k1::SecretKey::new(&mut rng))
        .collect();
    let contract = DownloadContract {
        contract_id: [5; 32],
        farmer_key: keys[0].public_key(SECP256K1),
        renter_key: keys[1].public_key(SECP256K1),
        renter_tx2_key: keys[2].public_key(SECP256K1),
        farmer_tx2_key: keys[3].public_key(SECP256K1),
        refund_height: 1_000,
        payout_delay: 6,
        price: Amount::from_sat(20_000),
        tx1_key_order: dstore_protocol::contract::Tx1KeyOrder::RenterFirst,
    };
    let dest = RefundDestination::p2wpkh_of(&keys[1]);
    let tx1_outpoint = OutPoint {
        txid: Txid::from_byte_array([8; 32]),
        vout: 0,
    };
    let refund1 = contract
        .tx1_refund(tx1_outpoint, &keys[1], &dest, Amount::from_sat(500))
        .unwrap();
    assert_spends(&refund1, &contract.tx1_output().unwrap());
    let mut early = refund1.clone();
    early.lock_time = bitcoin::absolute::LockTime::from_height(999).unwrap();
    assert!(
        !spends(&early, &contract.tx1_output().unwrap()),
        "after(T1) must bind"
    );

    let tx2_value = Amount::from_sat(19_000);
    let tx2_out = TxOut {
        value: tx2_value,
        script_pubkey: contract.tx2_script_pubkey().unwrap(),
    };
    let tx2_outpoint = OutPoint {
        txid: Txid::from_byte_array([9; 32]),
        vout: 0,
    };
    let refund2 = contract
        .tx2_refund(
            tx2_outpoint,
            tx2_value,
            &keys[2],
            &dest,
            Amount::from_sat(500),
        )
        .unwrap();
    assert_spends(&refund2, &tx2_out);
    let mut altered = refund2.clone();
    altered.output[0].value = Amount::from_sat(18_000);
    assert!(
        !spends(&altered, &tx2_out),
        "signatures must bind the outputs"
    );
}
