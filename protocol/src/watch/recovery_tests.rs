//! Unit tests of what a tower learns without the blocks (a pruned node): confirmations
//! from the UTXO set, and spends nobody can show it.

use super::tests::{block, renter_registration, setup, Setup};
use super::*;
use crate::contract::tests::tx1_outpoint;
use bitcoin::hashes::Hash;

/// The id `renter_registration` registers under.
const ID: WatchId = [9; 32];

fn engine(s: &Setup) -> Engine {
    let mut engine = Engine::new();
    engine.register(renter_registration(s)).unwrap();
    engine
}

fn state(engine: &Engine, name: &str, tip: u32) -> TxState {
    super::tests::named_state(engine, &ID, name, tip)
}

#[test]
fn the_engine_names_every_watched_outpoint_and_its_presigned_spenders() {
    let s = setup();
    let engine = engine(&s);
    let tx2_outpoint = OutPoint::new(s.tx2.compute_txid(), 0);
    assert_eq!(
        engine.watched_outpoints(),
        BTreeSet::from([tx1_outpoint(), tx2_outpoint])
    );
    assert_eq!(
        engine.presigned_spenders(&tx1_outpoint()),
        vec![s.tx1_refund.clone()]
    );
    assert_eq!(
        engine.presigned_spenders(&tx2_outpoint),
        vec![s.tx2_refund.clone()]
    );
}

#[test]
fn a_confirmation_learnt_from_the_utxo_set_starts_the_tx2_refund_clock() {
    let s = setup();
    let delta = u32::from(s.p.contract.payout_delay);
    let mut engine = engine(&s);
    assert_eq!(
        state(&engine, "tx2-refund", 1000),
        TxState::Waiting { height: None }
    );
    assert_eq!(engine.note_confirmed(s.tx2.compute_txid(), 900).len(), 1);
    assert!(engine.note_confirmed(s.tx2.compute_txid(), 900).is_empty());
    assert_eq!(engine.confirmed_height(&s.tx2.compute_txid()), Some(900));
    assert_eq!(state(&engine, "tx2-refund", 900 + delta - 1), TxState::Due);
    // A txid no watch cares about changes nothing.
    assert!(engine.note_confirmed(Txid::all_zeros(), 900).is_empty());
}

#[test]
fn an_unseen_spend_stops_the_refund_and_says_why_no_key_comes() {
    let s = setup();
    let t1 = s.p.contract.refund_height;
    let mut engine = engine(&s);
    engine.note_confirmed(tx1_outpoint().txid, 100);
    assert_eq!(state(&engine, "tx1-refund", t1 + 10), TxState::Due);
    let changed = engine.note_unseen_spend(tx1_outpoint(), t1 + 5);
    assert_eq!(changed, BTreeSet::from([ID]));
    assert!(engine.note_unseen_spend(tx1_outpoint(), t1 + 5).is_empty());
    assert_eq!(
        state(&engine, "tx1-refund", t1 + 10),
        TxState::SpentUnseen {
            outpoint: tx1_outpoint(),
            below_height: t1 + 5
        }
    );
    assert!(engine.due(t1 + 10).is_empty(), "never broadcast");
    let watch = engine.get(&ID).unwrap();
    assert!(watch
        .extract_note
        .as_deref()
        .unwrap()
        .contains("cannot be extracted"));
    assert_eq!(engine.confirmed_spend(&tx1_outpoint()), None);
}

#[test]
fn a_spend_seen_later_in_an_available_block_takes_precedence() {
    let s = setup();
    let t1 = s.p.contract.refund_height;
    let mut engine = engine(&s);
    engine.note_unseen_spend(tx1_outpoint(), t1 + 5);
    engine.connect_block(&block(vec![s.tx2.clone()]), t1 + 6);
    let tx2 = s.tx2.compute_txid();
    assert_eq!(
        state(&engine, "tx1-refund", t1 + 10),
        TxState::Superseded { by: tx2 }
    );
    assert_eq!(engine.confirmed_spend(&tx1_outpoint()), Some((tx2, t1 + 6)));
    let watch = engine.get(&ID).unwrap();
    assert_eq!(
        watch.key.as_ref().unwrap().secret,
        s.p.f,
        "f from the TX2 seen"
    );
    assert_eq!(watch.extract_note, None);
    // Once a confirmed spend is known, a later unseen one is not recorded.
    assert!(engine.note_unseen_spend(tx1_outpoint(), t1 + 20).is_empty());
}

#[test]
fn an_unseen_spend_survives_storage() {
    let s = setup();
    let mut engine = engine(&s);
    engine.note_unseen_spend(tx1_outpoint(), 500);
    let watch = engine.get(&ID).unwrap();
    let json = serde_json::to_string(watch).unwrap();
    let back: Watch = serde_json::from_str(&json).unwrap();
    assert_eq!(
        back.unseen_spend_of(&tx1_outpoint()),
        watch.unseen_spend_of(&tx1_outpoint())
    );
}
