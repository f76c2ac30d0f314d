//! Unit tests of [`Hold`] conditions: a farmer's TX2 waits for TX1's confirmations, goes
//! back on hold when a reorg undoes them, and never goes out at or after its last height.

use super::*;
use crate::contract::tests::parties;
use crate::nonce_reuse::farmer_sign_tx2;
use bitcoin::blockdata::block::{Header, Version as BlockVersion};
use bitcoin::hashes::Hash;
use bitcoin::transaction::Version;
use bitcoin::{Amount, BlockHash, CompactTarget, ScriptBuf, Sequence, TxIn, TxMerkleNode};
use rand::rngs::StdRng;
use rand::SeedableRng;

const ID: [u8; 32] = [4; 32];
/// TX2 may go out only below this tip height.
const LAST: u32 = 464;

struct Claim {
    tx1: Transaction,
    tx2: Transaction,
    tx3: Transaction,
}

fn claim() -> Claim {
    let p = parties(62);
    let c = &p.contract;
    let tx1 = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(Txid::from_byte_array([0x11; 32]), 0),
            script_sig: ScriptBuf::new(),
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            witness: Default::default(),
        }],
        output: vec![c.tx1_output().unwrap()],
    };
    let outpoint = OutPoint::new(tx1.compute_txid(), 0);
    let fee = Amount::from_sat(2_000);
    let unsigned = c.unsigned_tx2(outpoint, fee).unwrap();
    let sig_r = c.renter_sign_tx2(&unsigned, &p.r).unwrap();
    let tx2 = farmer_sign_tx2(&mut StdRng::seed_from_u64(3), c, &unsigned, &p.f, &sig_r)
        .unwrap()
        .tx;
    let value = c.tx2_value(fee).unwrap();
    let tx3 = c
        .unsigned_tx3(
            tx2.compute_txid(),
            value,
            Amount::from_sat(1_000),
            ScriptBuf::new_op_return([7u8; 4]),
        )
        .unwrap();
    Claim { tx1, tx2, tx3 }
}

fn farmer_registration(c: &Claim, min_confirmations: u32) -> Registration {
    let hold = Hold {
        min_parent_confirmations: min_confirmations,
        never_from_height: Some(LAST),
    };
    Registration {
        id: ID,
        role: WatchRole::Farmer,
        extract: None,
        transactions: vec![
            Presigned::new("tx2", c.tx2.clone()).held(hold),
            Presigned::new("tx3", c.tx3.clone()),
        ],
        watch_txids: Vec::new(),
        rescan_from_height: Some(300),
        auditor: None,
    }
}

fn block(txs: Vec<Transaction>) -> Block {
    Block {
        header: Header {
            version: BlockVersion::TWO,
            prev_blockhash: BlockHash::all_zeros(),
            merkle_root: TxMerkleNode::all_zeros(),
            time: 0,
            bits: CompactTarget::from_consensus(0),
            nonce: 0,
        },
        txdata: txs,
    }
}

fn due_names(engine: &mut Engine, tip: u32) -> Vec<String> {
    engine.due(tip).into_iter().map(|d| d.name).collect()
}

fn state(engine: &Engine, name: &str, tip: u32) -> TxState {
    super::tests::named_state(engine, &ID, name, tip)
}

#[test]
fn tx2_waits_for_tx1_confirmations() {
    let c = claim();
    let mut engine = Engine::new();
    engine.register(farmer_registration(&c, 3)).unwrap();
    // TX1 only in the mempool: TX2 is on hold (TX3 is tried, bitcoind refuses it).
    engine.observe(&c.tx1, None);
    assert_eq!(due_names(&mut engine, 400), ["tx3"]);
    assert_eq!(
        state(&engine, "tx2", 400),
        TxState::Waiting { height: None }
    );
    // TX1 confirmed at 401: due at tip 403 (3 confirmations), not before.
    engine.connect_block(&block(vec![c.tx1.clone()]), 401);
    assert_eq!(
        state(&engine, "tx2", 401),
        TxState::Waiting { height: Some(403) }
    );
    assert!(!due_names(&mut engine, 402).contains(&"tx2".to_string()));
    assert_eq!(engine.get(&ID).unwrap().next_check(401), Some(402));
    assert!(due_names(&mut engine, 403).contains(&"tx2".to_string()));
}

#[test]
fn a_reorg_of_tx1_puts_tx2_back_on_hold() {
    let c = claim();
    let mut engine = Engine::new();
    engine.register(farmer_registration(&c, 1)).unwrap();
    let tx1_block = block(vec![c.tx1.clone()]);
    engine.connect_block(&tx1_block, 401);
    assert_eq!(state(&engine, "tx2", 401), TxState::Due);
    engine.disconnect_block(&tx1_block, 401);
    assert_eq!(
        state(&engine, "tx2", 400),
        TxState::Waiting { height: None }
    );
    assert!(!due_names(&mut engine, 400).contains(&"tx2".to_string()));
    engine.connect_block(&tx1_block, 402);
    assert!(due_names(&mut engine, 402).contains(&"tx2".to_string()));
}

#[test]
fn tx2_never_goes_out_at_or_after_its_last_height() {
    let c = claim();
    let mut engine = Engine::new();
    engine.register(farmer_registration(&c, 1)).unwrap();
    engine.connect_block(&block(vec![c.tx1.clone()]), 401);
    assert_eq!(state(&engine, "tx2", LAST - 1), TxState::Due);
    for tip in [LAST, LAST + 1, LAST + 50] {
        assert_eq!(
            state(&engine, "tx2", tip),
            TxState::Expired { height: LAST }
        );
        // Its child expires with it; nothing is broadcast; the watch is settled.
        assert_eq!(
            state(&engine, "tx3", tip),
            TxState::Expired { height: LAST }
        );
        assert!(due_names(&mut engine, tip).is_empty());
        assert!(engine.get(&ID).unwrap().settled(tip));
        assert_eq!(engine.get(&ID).unwrap().next_check(tip), None);
    }
}

#[test]
fn a_tx2_already_out_is_not_held_back() {
    let c = claim();
    let mut engine = Engine::new();
    engine.register(farmer_registration(&c, 6)).unwrap();
    // The farmer itself broadcast TX2 (f is public): the tower re-broadcasts it and TX3
    // even past the last height and with TX1 unconfirmed.
    engine.observe(&c.tx2, None);
    assert_eq!(due_names(&mut engine, LAST + 3), ["tx2", "tx3"]);
    engine.connect_block(&block(vec![c.tx1.clone(), c.tx2.clone()]), LAST + 4);
    assert_eq!(
        state(&engine, "tx2", LAST + 4),
        TxState::Confirmed { depth: 1 }
    );
    assert_eq!(due_names(&mut engine, LAST + 4), ["tx3"]);
}

#[test]
fn holds_parse_from_old_json_and_conflict_on_merge() {
    let c = claim();
    let held = farmer_registration(&c, 3);
    let value = serde_json::to_value(&held).unwrap();
    assert_eq!(Registration::from_json(&value).unwrap(), held);
    // A registration without holds (an older plugin) still parses.
    let mut plain = held.clone();
    plain.transactions[0].hold = None;
    let mut value = serde_json::to_value(&plain).unwrap();
    assert!(value["transactions"][0].get("hold").is_none());
    value["transactions"][0]
        .as_object_mut()
        .unwrap()
        .remove("group");
    assert_eq!(Registration::from_json(&value).unwrap(), plain);
    // The hold of a registered transaction cannot be loosened by a later registration.
    let mut on_record = held.clone();
    assert!(matches!(
        on_record.merge(&plain),
        Err(RegistrationError::Conflict { .. })
    ));
    assert_eq!(on_record, held);
}
