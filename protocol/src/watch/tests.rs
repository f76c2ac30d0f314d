//! Unit tests of the watch engine on real contract transactions (no node).

use super::*;
use crate::contract::tests::{parties, tx1_outpoint, Parties};
use crate::contract::RefundDestination;
use crate::nonce_reuse::farmer_sign_tx2;
use bitcoin::blockdata::block::{Header, Version as BlockVersion};
use bitcoin::hashes::Hash;
use bitcoin::{Amount, BlockHash, CompactTarget, TxMerkleNode};
use rand::rngs::StdRng;
use rand::SeedableRng;

const FEE: Amount = Amount::from_sat(1_000);

/// One renter contract's TX2 and pre-signed refunds (shared with `recovery_tests`).
pub(super) struct Setup {
    pub(super) p: Parties,
    pub(super) tx2: Transaction,
    pub(super) tx1_refund: Transaction,
    pub(super) tx2_refund: Transaction,
}

pub(super) fn setup() -> Setup {
    let p = parties(61);
    let c = &p.contract;
    let unsigned = c
        .unsigned_tx2(tx1_outpoint(), Amount::from_sat(2_000))
        .unwrap();
    let sig_r = c.renter_sign_tx2(&unsigned, &p.r).unwrap();
    let tx2 = farmer_sign_tx2(&mut StdRng::seed_from_u64(5), c, &unsigned, &p.f, &sig_r)
        .unwrap()
        .tx;
    let destination = RefundDestination::p2wpkh_of(&p.r);
    let tx1_refund = c
        .tx1_refund(tx1_outpoint(), &p.r, &destination, FEE)
        .unwrap();
    let tx2_outpoint = OutPoint {
        txid: tx2.compute_txid(),
        vout: 0,
    };
    let value = c.tx2_value(Amount::from_sat(2_000)).unwrap();
    let tx2_refund = c
        .tx2_refund(tx2_outpoint, value, &p.r2, &destination, FEE)
        .unwrap();
    Setup {
        p,
        tx2,
        tx1_refund,
        tx2_refund,
    }
}

pub(super) fn renter_registration(s: &Setup) -> Registration {
    let c = &s.p.contract;
    Registration {
        id: [9; 32],
        role: WatchRole::Renter,
        extract: Some(ExtractSpec {
            tx1_outpoint: tx1_outpoint(),
            farmer_key: c.farmer_key,
            contract_id: c.contract_id,
            tx1_script_pubkey: c.tx1_script_pubkey().unwrap(),
        }),
        transactions: vec![
            Presigned::new("tx1-refund", s.tx1_refund.clone()),
            Presigned::new("tx2-refund", s.tx2_refund.clone()),
        ],
        watch_txids: vec![s.tx2.compute_txid()],
        rescan_from_height: None,
        auditor: None,
    }
}

/// The state of watch `id`'s pre-signed transaction `name` at `tip`.
pub(super) fn named_state(engine: &Engine, id: &WatchId, name: &str, tip: u32) -> TxState {
    let watch = engine.get(id).unwrap();
    let p = watch
        .registration
        .transactions
        .iter()
        .find(|p| p.name == name)
        .unwrap();
    watch.state_of(p, tip)
}

pub(super) fn block(txs: Vec<Transaction>) -> Block {
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

fn states(engine: &Engine, tip: u32) -> Vec<TxState> {
    let watch = engine.get(&[9; 32]).unwrap();
    watch
        .registration
        .transactions
        .iter()
        .map(|p| watch.state_of(p, tip))
        .collect()
}

#[test]
fn tx2_in_the_mempool_yields_f_once() {
    let s = setup();
    let mut engine = Engine::new();
    assert_eq!(
        engine.register(renter_registration(&s)).unwrap(),
        Merge::Registered
    );
    let changed = engine.observe(&s.tx2, None);
    assert_eq!(changed.len(), 1);
    let key = engine.get(&[9; 32]).unwrap().key.clone().unwrap();
    assert_eq!(key.secret, s.p.f);
    // Seeing it again, or unconfirmed after confirmed, changes nothing.
    assert!(engine.observe(&s.tx2, None).is_empty());
    assert_eq!(
        engine.connect_block(&block(vec![s.tx2.clone()]), 300).len(),
        1
    );
    assert!(engine.observe(&s.tx2, None).is_empty());
}

#[test]
fn the_tx1_refund_is_due_at_t1_and_superseded_by_tx2() {
    let s = setup();
    let t1 = s.p.contract.refund_height;
    let mut engine = Engine::new();
    engine.register(renter_registration(&s)).unwrap();
    assert_eq!(
        states(&engine, t1 - 1)[0],
        TxState::Waiting { height: Some(t1) }
    );
    assert_eq!(states(&engine, t1)[0], TxState::Due);
    assert_eq!(engine.due(t1).len(), 1);
    let watch = engine.watch_mut(&[9; 32]).unwrap();
    watch.record_intent("tx1-refund", t1);
    watch.record_broadcast("tx1-refund", t1, None);
    assert_eq!(states(&engine, t1)[0], TxState::Broadcast);
    // Rebroadcast every block until confirmed, then left alone once buried.
    assert_eq!(states(&engine, t1 + 1)[0], TxState::Due);
    engine.connect_block(&block(vec![s.tx1_refund.clone()]), t1 + 1);
    assert_eq!(states(&engine, t1 + 1)[0], TxState::Confirmed { depth: 1 });
    assert_eq!(states(&engine, t1 + 6)[0], TxState::Buried);
    // A reorg that removes it makes it due again.
    engine.disconnect_block(&block(vec![s.tx1_refund.clone()]), t1 + 1);
    assert_eq!(states(&engine, t1 + 6)[0], TxState::Due);
    // TX2 confirmed on TX1's output supersedes the TX1 refund.
    engine.connect_block(&block(vec![s.tx2.clone()]), t1 + 2);
    assert_eq!(
        states(&engine, t1 + 6)[0],
        TxState::Superseded {
            by: s.tx2.compute_txid()
        }
    );
}

#[test]
fn the_tx2_refund_waits_delta_blocks_after_tx2_confirms() {
    let s = setup();
    let delta = u32::from(s.p.contract.payout_delay);
    let mut engine = Engine::new();
    engine.register(renter_registration(&s)).unwrap();
    engine.observe(&s.tx2, None);
    assert_eq!(states(&engine, 1000)[1], TxState::Waiting { height: None });
    engine.connect_block(&block(vec![s.tx2.clone()]), 1000);
    // Valid in block 1000 + Δ, i.e. at tip 1000 + Δ − 1.
    let due_tip = 1000 + delta - 1;
    assert_eq!(
        states(&engine, due_tip - 1)[1],
        TxState::Waiting {
            height: Some(due_tip)
        }
    );
    assert_eq!(states(&engine, due_tip)[1], TxState::Due);
    // A reorg of TX2 puts the refund back to waiting; the key stays.
    engine.disconnect_block(&block(vec![s.tx2.clone()]), 1000);
    assert_eq!(
        states(&engine, due_tip)[1],
        TxState::Waiting { height: None }
    );
    assert!(engine.get(&[9; 32]).unwrap().key.is_some());
}

#[test]
fn forgetting_and_reregistering_reindexes() {
    let s = setup();
    let mut engine = Engine::new();
    engine.register(renter_registration(&s)).unwrap();
    assert_eq!(
        engine.register(renter_registration(&s)).unwrap(),
        Merge::Unchanged
    );
    assert!(engine.forget(&[9; 32]).is_some());
    assert!(engine.observe(&s.tx2, None).is_empty());
    assert!(engine.index.is_empty() && engine.resident.is_empty());
}

#[test]
fn a_refund_spending_tx1_yields_no_key_and_no_panic() {
    let s = setup();
    let mut engine = Engine::new();
    engine.register(renter_registration(&s)).unwrap();
    engine.observe(&s.tx1_refund, None);
    let watch = engine.get(&[9; 32]).unwrap();
    assert!(watch.key.is_none());
    assert!(watch.extract_note.is_some());
}

#[test]
fn a_transaction_paying_the_tower_is_bumped_after_three_blocks_stuck() {
    let s = setup();
    let key = SecretKey::from_slice(&[3; 32]).unwrap();
    let own = cpfp::own_script(&key);
    let mut claim = s.tx1_refund.clone();
    claim.output[0].script_pubkey = own.clone();
    let mut registration = renter_registration(&s);
    registration.transactions = vec![Presigned::new("claim", claim)];
    let mut engine = Engine::new();
    engine.register(registration).unwrap();
    let t1 = s.p.contract.refund_height;
    let watch = engine.watch_mut(&[9; 32]).unwrap();
    watch.record_broadcast("claim", t1, Some("rejected".into()));
    assert!(watch.stuck(t1 + 5, &own).is_empty(), "never accepted");
    watch.record_broadcast("claim", t1 + 1, None);
    assert!(watch.stuck(t1 + 3, &own).is_empty());
    assert_eq!(watch.stuck(t1 + 4, &own).len(), 1);
    let other = cpfp::own_script(&SecretKey::from_slice(&[4; 32]).unwrap());
    assert!(
        watch.stuck(t1 + 4, &other).is_empty(),
        "no output the tower can spend"
    );
    watch.record_bump("claim", t1 + 4, s.tx2.compute_txid());
    assert!(watch.stuck(t1 + 5, &own).is_empty());
    assert_eq!(
        watch.stuck(t1 + 7, &own).len(),
        1,
        "still stuck: bumped again"
    );
}
