//! Protocol core on a real regtest bitcoind: the mode-L download chain (TX1 → TX2 → TX3)
//! with the reused-nonce key reveal, the two [fix]es (legacy P2SH TX1, twin key), the
//! refunds, sealing and fraud proofs, and hostile transactions. Both roles run in-process;
//! every transaction counts only once bitcoind accepts or mines it.

use std::str::FromStr;
use std::time::Duration;

use bitcoin::hashes::Hash;
use bitcoin::script::{Builder, PushBytesBuf};
use bitcoin::secp256k1::{Message, SecretKey, SECP256K1};
use bitcoin::sighash::SighashCache;
use bitcoin::{opcodes, EcdsaSighashType, OutPoint, ScriptBuf, Transaction, TxOut};
use dstore_protocol::contract::{twin_secret, twin_tweak_bytes, DownloadContract, Tx1KeyOrder};
use dstore_protocol::datapath::decrypt_stream;
use dstore_protocol::extract::{extract_farmer_key, extract_from_signatures};
use dstore_protocol::keys::joint_secret_key;
use dstore_protocol::nonce_reuse::sign_with_one_nonce;
use dstore_protocol::seal::{
    build_fraud_proof, check_sealed_copy, find_bad_segment, unseal, verify_fraud_proof,
    verify_transcript, FraudError, FraudEvidence,
};
use dstore_tests::funding::{broadcast, fetch_tx, fetch_tx_from_block, mempool_verdicts, Funder};
use dstore_tests::parties::{random_bytes, start, Parties, PRICE, REFUND_FEE, TX2_FEE, TX3_FEE};
use dstore_tests::BitcoinNode;
use miniscript::Descriptor;
use rand::rngs::StdRng;
use rand::SeedableRng;

/// The whole download: upload, seal, TX1 mined, TX2 + TX3 accepted and mined, f extracted
/// from the mempool copy and from the block, E unsealed, C decrypted, bytes compared.
fn download_round_trip(size: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let node = BitcoinNode::start();
    let mut funder = Funder::new(&node, 1);
    let p = Parties::new(&node, &mut rng, 144, 12);
    let plaintext = random_bytes(&mut rng, size);
    let (c, c_tree, receipt) = p.upload(&plaintext);
    let (transcript, e, _) = p.seal(&mut rng, &c);
    let farmer = p.farmer_identity.x_only_public_key().0;
    verify_transcript(&transcript, &farmer, &transcript.context, &receipt).unwrap();

    // The renter pays only now that E is checked, from segwit inputs only.
    let (tx1, prevouts) = funder.build_with_prevouts(p.contract.tx1_output().unwrap());
    p.contract
        .check_tx1(&tx1, 0, &prevouts)
        .expect("TX1 pays the contract from segwit");
    let tx1_id = broadcast(&node, &tx1).expect("TX1 accepted");
    node.mine(1);
    assert_eq!(node.confirmations(&tx1_id), 1, "TX1 is mined");
    let tx1_outpoint = OutPoint {
        txid: tx1.compute_txid(),
        vout: 0,
    };
    let template = p.tx2(&mut rng, tx1_outpoint);
    let tx3 = p.tx3(&template.digest);
    assert_eq!(
        mempool_verdicts(&node, &[&template.tx, &tx3]),
        vec![None, None],
        "bitcoind accepts TX2 and TX3 as a package"
    );
    let tx2_id = broadcast(&node, &template.tx).expect("TX2 accepted");
    let seen = fetch_tx(&node, &tx2_id);
    assert_eq!(p.extract(&seen).expect("f from the mempool copy"), p.f);
    let tx3_id = broadcast(&node, &tx3).expect("TX3 accepted");
    node.mine(1);
    assert_eq!(node.confirmations(&tx2_id), 1);
    assert_eq!(node.confirmations(&tx3_id), 1);
    let paid = &fetch_tx(&node, &tx3_id).output[0];
    assert_eq!(paid.script_pubkey, p.farmer_payout(), "TX3 pays the farmer");
    let mined = fetch_tx_from_block(&node, &tx2_id);
    assert_signature_order(&p.contract, &mined, "R, F, F̃");
    let f = p.extract(&mined).expect("f from the block");
    assert_eq!(f, p.f);

    let j = joint_secret_key(&p.r, &f).unwrap();
    assert_eq!(
        find_bad_segment(&j, &transcript.ephemeral, &e[..], &c_tree).unwrap(),
        None
    );
    let mut unsealed = Vec::with_capacity(c.len());
    unseal(&j, &transcript.ephemeral, &e[..], &mut unsealed).unwrap();
    assert!(unsealed == c, "unsealed E is C");
    let mut recovered = Vec::with_capacity(size);
    decrypt_stream(
        &p.file_key,
        &p.contract.contract_id,
        &unsealed[..],
        &mut recovered,
    )
    .unwrap();
    assert!(
        recovered == plaintext,
        "decrypted file is byte-identical ({size} bytes)"
    );
}

/// TX2's scriptSig is `OP_0 sig sig sig redeem` with the signatures in TX1:0's key order
/// (`order` names it), each valid for its key over TX2's legacy sighash.
fn assert_signature_order(contract: &DownloadContract, tx2: &Transaction, order: &str) {
    let pushes: Vec<Vec<u8>> = tx2.input[0]
        .script_sig
        .instructions()
        .map(|i| i.unwrap().push_bytes().unwrap().as_bytes().to_vec())
        .collect();
    let redeem = contract.tx1_redeem_script().unwrap();
    assert_eq!(pushes.len(), 5, "OP_0, three signatures, redeem script");
    assert!(pushes[0].is_empty());
    assert_eq!(pushes[4], redeem.to_bytes());
    let z = SighashCache::new(tx2)
        .legacy_signature_hash(0, &redeem, EcdsaSighashType::All.to_u32())
        .unwrap();
    let message = Message::from_digest(z.to_byte_array());
    let (r, f, twin) = (
        contract.renter_key,
        contract.farmer_key,
        contract.twin_key().unwrap(),
    );
    let keys = match contract.tx1_key_order {
        Tx1KeyOrder::RenterFirst => [r, f, twin],
        Tx1KeyOrder::FarmerFirst => [f, twin, r],
    };
    for (push, key) in pushes[1..4].iter().zip(keys) {
        let sig = bitcoin::ecdsa::Signature::from_slice(push).unwrap();
        assert!(
            SECP256K1
                .verify_ecdsa(&message, &sig.signature, &key)
                .is_ok(),
            "signatures in the order {order}"
        );
    }
}

#[test]
fn protocol_happy_path_1_mib() {
    download_round_trip(1 << 20, 1);
}

#[test]
fn protocol_happy_path_size_not_a_multiple_of_4096() {
    download_round_trip((1 << 20) + 4_321, 2);
}

#[test]
fn protocol_happy_path_64_mib() {
    download_round_trip(64 << 20, 3);
}

/// [fix] SegWit: with a P2WSH TX1 output the farmer re-signs TX2 with fresh nonces, keeps
/// the txid the renter's TX3 signature commits to, and is paid without revealing f. With
/// the legacy P2SH output the same move changes the txid and bitcoind rejects TX3.
#[test]
fn protocol_segwit_tx1_lets_farmer_resign_p2sh_does_not() {
    let (mut rng, node, mut funder, p) = start(4, 2, 144, 12);

    // The attack on the seed's SegWit design.
    let wsh = p.contract.tx1_descriptor_wsh().unwrap();
    let wsh_out = TxOut {
        value: PRICE,
        script_pubkey: wsh.script_pubkey(),
    };
    let (_, wsh_outpoint) = funder.fund(&node, wsh_out);
    let unsigned = p.contract.unsigned_tx2(wsh_outpoint, TX2_FEE).unwrap();
    let script = wsh.explicit_script().unwrap();
    let z = SighashCache::new(&unsigned)
        .p2wsh_signature_hash(0, &script, PRICE, EcdsaSighashType::All)
        .unwrap()
        .to_byte_array();
    let message = Message::from_digest(z);
    let twin = twin_secret(&p.f, &p.contract.contract_id).unwrap();
    let sig_r = bitcoin::ecdsa::Signature::sighash_all(SECP256K1.sign_ecdsa(&message, &p.r));
    let satisfy = |farmer: bitcoin::secp256k1::ecdsa::Signature,
                   twin_sig: bitcoin::secp256k1::ecdsa::Signature| {
        let sigs = std::collections::HashMap::from([
            (
                bitcoin::PublicKey::new(p.contract.farmer_key),
                bitcoin::ecdsa::Signature::sighash_all(farmer),
            ),
            (
                bitcoin::PublicKey::new(p.contract.twin_key().unwrap()),
                bitcoin::ecdsa::Signature::sighash_all(twin_sig),
            ),
            (bitcoin::PublicKey::new(p.contract.renter_key), sig_r),
        ]);
        let mut tx = unsigned.clone();
        wsh.satisfy(&mut tx.input[0], &sigs).unwrap();
        tx
    };
    let reused = sign_with_one_nonce(&mut rng, &z, &[&p.f, &twin]).unwrap();
    let leaking = satisfy(reused[0], reused[1]);
    let fresh = [
        SECP256K1.sign_ecdsa(&message, &p.f),
        SECP256K1.sign_ecdsa(&message, &twin),
    ];
    let resigned = satisfy(fresh[0], fresh[1]);
    assert_eq!(
        leaking.compute_txid(),
        resigned.compute_txid(),
        "witness is not in the txid"
    );
    // The renter signs TX3 for the txid it was shown; the farmer ships the re-signed TX2.
    let value = p.contract.tx2_value(TX2_FEE).unwrap();
    let tx3_unsigned = p
        .contract
        .unsigned_tx3(leaking.compute_txid(), value, TX3_FEE, p.farmer_payout())
        .unwrap();
    let tx3 = p
        .contract
        .finalize_tx3(
            &tx3_unsigned,
            p.contract.sign_tx3(&tx3_unsigned, value, &p.r2).unwrap(),
            p.contract.sign_tx3(&tx3_unsigned, value, &p.f2).unwrap(),
        )
        .unwrap();
    assert_eq!(
        mempool_verdicts(&node, &[&resigned, &tx3]),
        vec![None, None]
    );
    let resigned_id = broadcast(&node, &resigned).unwrap();
    let tx3_id = broadcast(&node, &tx3).unwrap();
    node.mine(1);
    assert_eq!(node.confirmations(&tx3_id), 1, "the farmer is paid");
    let mined = fetch_tx_from_block(&node, &resigned_id);
    let witness_sig = |i: usize| {
        bitcoin::ecdsa::Signature::from_slice(&mined.input[0].witness.to_vec()[i])
            .unwrap()
            .signature
    };
    let tweak = twin_tweak_bytes(&p.contract.farmer_key, &p.contract.contract_id);
    assert!(
        extract_from_signatures(
            &z,
            &witness_sig(1),
            &witness_sig(2),
            &tweak,
            &p.contract.farmer_key
        )
        .is_err(),
        "the attack works on SegWit: paid, and f stays secret"
    );

    // The legacy P2SH output of the design.
    let (_, tx1_outpoint) = funder.fund(&node, p.contract.tx1_output().unwrap());
    let template = p.tx2(&mut rng, tx1_outpoint);
    let tx3 = p.tx3(&template.digest);
    let resigned = p.tx2_with_fresh_nonces(tx1_outpoint);
    assert_ne!(
        resigned.compute_txid(),
        template.txid,
        "legacy txid commits to the signatures"
    );
    assert_eq!(
        mempool_verdicts(&node, &[&resigned]),
        vec![None],
        "re-signed TX2 is valid"
    );
    let resigned_id = broadcast(&node, &resigned).unwrap();
    let err = broadcast(&node, &tx3).unwrap_err();
    assert!(
        err.contains("missing") || err.contains("inputs"),
        "TX3 is orphaned: {err}"
    );
    node.mine(1);
    assert_eq!(node.confirmations(&resigned_id), 1);
    // The farmer gained nothing: the money sits in TX2:0, and the renter takes it back.
    node.mine(u32::from(p.contract.payout_delay));
    let refund = p
        .contract
        .tx2_refund(
            OutPoint {
                txid: resigned.compute_txid(),
                vout: 0,
            },
            value,
            &p.r2,
            &p.renter_refund_destination(),
            REFUND_FEE,
        )
        .unwrap();
    broadcast(&node, &refund).expect("renter refunds the re-signed TX2's output");
}

/// [fix] Repeated key: the seed's multi(3,F,F,R) is refused by miniscript; built by hand,
/// both signatures under one nonce and SIGHASH_ALL are byte-identical, bitcoind accepts the
/// spend, and nothing can be extracted. With the twin key F̃ the same reveal yields f.
#[test]
fn protocol_repeated_key_leaks_nothing_twin_key_does() {
    let (mut rng, node, mut funder, p) = start(5, 2, 144, 12);
    let (fk, rk) = (p.contract.farmer_key, p.contract.renter_key);
    let refused =
        Descriptor::<bitcoin::PublicKey>::from_str(&format!("sh(multi(3,{fk},{fk},{rk}))"))
            .and_then(|d| d.sanity_check().map(|_| d));
    assert!(refused.is_err(), "miniscript refuses a repeated key");

    // The seed's script, by hand (test-only: the product builds scripts from miniscript).
    let redeem = Builder::new()
        .push_opcode(opcodes::all::OP_PUSHNUM_3)
        .push_slice(fk.serialize())
        .push_slice(fk.serialize())
        .push_slice(rk.serialize())
        .push_opcode(opcodes::all::OP_PUSHNUM_3)
        .push_opcode(opcodes::all::OP_CHECKMULTISIG)
        .into_script();
    let out = TxOut {
        value: PRICE,
        script_pubkey: ScriptBuf::new_p2sh(&redeem.script_hash()),
    };
    let (_, outpoint) = funder.fund(&node, out);
    let mut spend = p.contract.unsigned_tx2(outpoint, TX2_FEE).unwrap();
    let z = SighashCache::new(&spend)
        .legacy_signature_hash(0, &redeem, EcdsaSighashType::All.to_u32())
        .unwrap()
        .to_byte_array();
    let sigs = sign_with_one_nonce(&mut rng, &z, &[&p.f, &p.f]).unwrap();
    assert_eq!(
        sigs[0].serialize_der(),
        sigs[1].serialize_der(),
        "identical signatures"
    );
    let sig_r = SECP256K1.sign_ecdsa(&Message::from_digest(z), &p.r);
    let push = |sig: &bitcoin::secp256k1::ecdsa::Signature| {
        PushBytesBuf::try_from(bitcoin::ecdsa::Signature::sighash_all(*sig).to_vec()).unwrap()
    };
    spend.input[0].script_sig = Builder::new()
        .push_opcode(opcodes::OP_0)
        .push_slice(push(&sigs[0]))
        .push_slice(push(&sigs[1]))
        .push_slice(push(&sig_r))
        .push_slice(PushBytesBuf::try_from(redeem.to_bytes()).unwrap())
        .into_script();
    let spend_id = broadcast(&node, &spend).expect("consensus-valid spend");
    node.mine(1);
    let mined = fetch_tx_from_block(&node, &spend_id);
    let id = &p.contract.contract_id;
    assert!(
        extract_farmer_key(&mined, 0, &fk, id, None).is_err(),
        "nothing leaks"
    );
    assert!(extract_from_signatures(&z, &sigs[0], &sigs[1], &[0; 32], &fk).is_err());

    // With the twin key, the mined TX2 reveals f.
    let (_, tx1_outpoint) = funder.fund(&node, p.contract.tx1_output().unwrap());
    let template = p.tx2(&mut rng, tx1_outpoint);
    let tx2_id = broadcast(&node, &template.tx).unwrap();
    node.mine(1);
    assert_eq!(
        p.extract(&fetch_tx_from_block(&node, &tx2_id)).unwrap(),
        p.f
    );
}

/// Refunds wait for their timelocks and pay only where the renter's signature says.
#[test]
fn protocol_refunds_wait_for_timelocks_and_pay_only_the_renter() {
    let (mut rng, node, mut funder, p) = start(6, 2, 20, 5);
    let dest = p.renter_refund_destination();
    let (_, tx1_outpoint) = funder.fund(&node, p.contract.tx1_output().unwrap());

    // TX1:0 through after(T1).
    let refund = p
        .contract
        .tx1_refund(tx1_outpoint, &p.r, &dest, REFUND_FEE)
        .unwrap();
    assert_eq!(
        p.contract.tx1_refund(tx1_outpoint, &p.f, &dest, REFUND_FEE),
        Err(dstore_protocol::contract::ContractError::WrongKey),
        "only the renter's key signs a refund"
    );
    let t1 = u64::from(p.contract.refund_height);
    node.mine((t1 - 1 - node.block_count()) as u32);
    let verdict = mempool_verdicts(&node, &[&refund]).remove(0);
    assert_eq!(verdict.as_deref(), Some("non-final"), "one block before T1");
    node.mine(1);
    let mut redirected = refund.clone();
    redirected.output[0].script_pubkey = p.farmer_payout();
    let verdict = mempool_verdicts(&node, &[&redirected]).remove(0).unwrap();
    assert!(
        verdict.contains("script-verify"),
        "R's signature binds the payee: {verdict}"
    );
    let refund_id = broadcast(&node, &refund).expect("refund accepted at T1");
    node.mine(1);
    assert_eq!(node.confirmations(&refund_id), 1);
    assert_eq!(
        fetch_tx(&node, &refund_id).output[0].script_pubkey,
        *dest.script_pubkey()
    );

    // TX2:0 through older(Δ).
    let (_, tx1_outpoint) = funder.fund(&node, p.contract.tx1_output().unwrap());
    let template = p.tx2(&mut rng, tx1_outpoint);
    let tx2_id = broadcast(&node, &template.tx).unwrap();
    node.mine(1);
    let value = p.contract.tx2_value(TX2_FEE).unwrap();
    let tx2_outpoint = OutPoint {
        txid: template.txid,
        vout: 0,
    };
    assert_eq!(
        p.contract
            .tx2_refund(tx2_outpoint, value, &p.f2, &dest, REFUND_FEE),
        Err(dstore_protocol::contract::ContractError::WrongKey)
    );
    let refund = p
        .contract
        .tx2_refund(tx2_outpoint, value, &p.r2, &dest, REFUND_FEE)
        .unwrap();
    let delta = u32::from(p.contract.payout_delay);
    node.mine(delta - 2);
    let verdict = mempool_verdicts(&node, &[&refund]).remove(0);
    assert_eq!(
        verdict.as_deref(),
        Some("non-BIP68-final"),
        "one block before Δ"
    );
    node.mine(1);
    let mut redirected = refund.clone();
    redirected.output[0].script_pubkey = p.farmer_payout();
    assert!(mempool_verdicts(&node, &[&redirected]).remove(0).is_some());
    let refund_id = broadcast(&node, &refund).expect("TX2 refund accepted after Δ");
    node.mine(1);
    assert_eq!(node.confirmations(&refund_id), 1);
    assert_eq!(node.confirmations(&tx2_id), delta as u64 + 1);
}

/// Sealing: r or f alone cannot unseal; a tampered E fails root_E before any payment; a
/// farmer that sealed the wrong data is caught by a fraud proof anyone can check, and an
/// honest farmer's transcript yields none.
#[test]
fn protocol_sealing_needs_both_keys_and_fraud_is_provable() {
    let (mut rng, node, mut funder, p) = start(7, 2, 144, 12);
    let plaintext = random_bytes(&mut rng, 100_000);
    let (c, c_tree, receipt) = p.upload(&plaintext);

    // Transfer integrity: one flipped byte in E is caught before TX1 exists.
    let (honest, e, e_tree) = p.seal(&mut rng, &c);
    let mut tampered = e.clone();
    tampered[5 * 4096 + 17] ^= 1;
    assert!(check_sealed_copy(&honest, &tampered[..]).is_err());

    // Pay for the honest download and learn f from the chain.
    let (_, tx1_outpoint) = funder.fund(&node, p.contract.tx1_output().unwrap());
    let template = p.tx2(&mut rng, tx1_outpoint);
    let tx2_id = broadcast(&node, &template.tx).unwrap();
    node.mine(1);
    let tx2 = fetch_tx_from_block(&node, &tx2_id);
    let f = p.extract(&tx2).unwrap();
    let j = joint_secret_key(&p.r, &f).unwrap();
    for (name, key) in [("r alone", &p.r), ("f alone", &f)] {
        let mut attempt = Vec::new();
        unseal(key, &honest.ephemeral, &e[..], &mut attempt).unwrap();
        assert!(attempt != c, "{name} must not unseal");
        assert!(find_bad_segment(key, &honest.ephemeral, &e[..], &c_tree)
            .unwrap()
            .is_some());
    }
    let evidence = |transcript, sealed_tree, sealed_segment, segment_index| FraudEvidence {
        receipt: &receipt,
        transcript,
        sealed_tree,
        ciphertext_tree: &c_tree,
        segment_index,
        sealed_segment,
        renter_secret: p.r,
        tx2: tx2.clone(),
        tx2_input: 0,
    };
    let first = e[..4096].to_vec();
    assert!(
        matches!(
            build_fraud_proof(evidence(&honest, &e_tree, first, 0u64)),
            Err(FraudError::NoFraud)
        ),
        "an honest farmer yields no fraud proof"
    );

    // A lying farmer seals data with segment 3 altered: E still matches its own root_E, so
    // the renter pays; after the reveal the mismatch with root_C is provable.
    let mut wrong = c.clone();
    wrong[3 * 4096 + 100] ^= 0x80;
    let (lying, bad_e, bad_tree) = p.seal(&mut rng, &wrong);
    let (index, segment) = find_bad_segment(&j, &lying.ephemeral, &bad_e[..], &c_tree)
        .unwrap()
        .expect("the bad segment is found");
    assert_eq!(index, 3);
    let proof = build_fraud_proof(evidence(&lying, &bad_tree, segment, index)).unwrap();
    let json = serde_json::to_string(&proof).unwrap();
    let published: dstore_protocol::seal::FraudProof = serde_json::from_str(&json).unwrap();
    verify_fraud_proof(&published).expect("anyone can verify the fraud");
    let mut forged = published.clone();
    forged.renter_secret = p.f;
    assert!(
        verify_fraud_proof(&forged).is_err(),
        "a wrong r proves nothing"
    );
}

/// Hostile transactions never panic the parser and never yield a wrong key.
#[test]
fn protocol_bad_transactions_never_yield_a_wrong_key() {
    let (mut rng, node, mut funder, p) = start(8, 1, 144, 12);
    let (_, tx1_outpoint) = funder.fund(&node, p.contract.tx1_output().unwrap());
    let template = p.tx2(&mut rng, tx1_outpoint);
    let tx2_id = broadcast(&node, &template.tx).unwrap();
    node.wait_for_tx(&tx2_id, Duration::from_secs(5));
    let tx2 = fetch_tx(&node, &tx2_id);
    let bytes = bitcoin::consensus::encode::serialize(&tx2);

    for cut in [0, 1, 10, bytes.len() / 2, bytes.len() - 1] {
        assert!(bitcoin::consensus::encode::deserialize::<Transaction>(&bytes[..cut]).is_err());
    }
    let garbage = random_bytes(&mut rng, 400);
    if let Ok(tx) = bitcoin::consensus::encode::deserialize::<Transaction>(&garbage) {
        assert!(p.extract(&tx).is_err());
    }

    // A TX2 with only one farmer signature (F̃'s, push 3 of OP_0 sig_R sig_F sig_F̃, dropped).
    let instructions: Vec<_> = tx2.input[0]
        .script_sig
        .instructions()
        .map(Result::unwrap)
        .collect();
    let mut single = tx2.clone();
    let mut builder = Builder::new();
    for (i, ins) in instructions.iter().enumerate() {
        if i == 3 {
            continue;
        }
        builder = match ins {
            bitcoin::script::Instruction::PushBytes(b) => builder.push_slice(b),
            bitcoin::script::Instruction::Op(op) => builder.push_opcode(*op),
        };
    }
    single.input[0].script_sig = builder.into_script();
    assert!(p.extract(&single).is_err(), "single signature");

    // A wrong F, and a contract id whose twin key does not match.
    let other = SecretKey::new(&mut rng).public_key(SECP256K1);
    let spk = p.contract.tx1_script_pubkey().unwrap();
    let id = &p.contract.contract_id;
    assert!(
        extract_farmer_key(&tx2, 0, &other, id, Some(&spk)).is_err(),
        "wrong F"
    );
    assert!(extract_farmer_key(&tx2, 0, &p.contract.farmer_key, &[9; 32], None).is_err());

    // Signatures whose r values do not match (fresh nonces): an error, not a key.
    let fresh = p.tx2_with_fresh_nonces(tx1_outpoint);
    assert!(p.extract(&fresh).is_err(), "non-matching r");

    // Every single-byte corruption of the real scriptSig: never a wrong key.
    let script = tx2.input[0].script_sig.to_bytes();
    for i in 0..script.len() {
        let mut mutated = tx2.clone();
        let mut s = script.clone();
        s[i] ^= 0x5a;
        mutated.input[0].script_sig = ScriptBuf::from_bytes(s);
        if let Ok(key) = p.extract(&mutated) {
            assert_eq!(key, p.f, "a corrupted scriptSig may only yield the true f");
        }
    }
    assert_eq!(p.extract(&tx2).unwrap(), p.f);
}

/// A contract stored before R-first (its record has no key order) was funded to
/// `multi(3,F,F̃,R)`: read back, it still builds that script, so bitcoind accepts its TX2
/// (signatures F, F̃, R; f extracted from the block) and its refund after T1.
#[test]
fn protocol_contract_stored_before_r_first_still_claims_and_refunds() {
    let (mut rng, node, mut funder, p) = start(9, 2, 20, 5);
    let mut record = serde_json::to_value(p.contract).unwrap();
    record.as_object_mut().unwrap().remove("tx1_key_order");
    let old: DownloadContract = serde_json::from_value(record).unwrap();
    assert_eq!(old.tx1_key_order, Tx1KeyOrder::FarmerFirst);
    assert_ne!(
        old.tx1_script_pubkey().unwrap(),
        p.contract.tx1_script_pubkey().unwrap()
    );
    let p = Parties { contract: old, ..p };

    // The claim: TX2 and TX3 through the old script.
    let (_, tx1_outpoint) = funder.fund(&node, p.contract.tx1_output().unwrap());
    let template = p.tx2(&mut rng, tx1_outpoint);
    let tx3 = p.tx3(&template.digest);
    assert_eq!(
        mempool_verdicts(&node, &[&template.tx, &tx3]),
        vec![None, None]
    );
    let tx2_id = broadcast(&node, &template.tx).expect("TX2 accepted");
    broadcast(&node, &tx3).expect("TX3 accepted");
    node.mine(1);
    let mined = fetch_tx_from_block(&node, &tx2_id);
    assert_signature_order(&p.contract, &mined, "F, F̃, R");
    assert_eq!(p.extract(&mined).expect("f from the block"), p.f);

    // The refund of a second TX1 through after(T1).
    let (_, tx1_outpoint) = funder.fund(&node, p.contract.tx1_output().unwrap());
    let dest = p.renter_refund_destination();
    let refund = p
        .contract
        .tx1_refund(tx1_outpoint, &p.r, &dest, REFUND_FEE)
        .unwrap();
    let t1 = u64::from(p.contract.refund_height);
    node.mine((t1 - node.block_count()) as u32);
    let refund_id = broadcast(&node, &refund).expect("refund accepted at T1");
    node.mine(1);
    assert_eq!(node.confirmations(&refund_id), 1);
}
