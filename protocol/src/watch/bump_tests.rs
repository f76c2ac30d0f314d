//! Unit tests of [`Bump`] ladders: a replacement waits until the version it replaces was
//! accepted and stayed unconfirmed long enough, then outranks it; a confirmation of any
//! version supersedes the others; registrations with bad bumps are refused.

use super::*;
use bitcoin::hashes::Hash;
use bitcoin::transaction::Version;
use bitcoin::{Amount, FeeRate, ScriptBuf, Sequence, TxIn, TxOut};

const ID: [u8; 32] = [5; 32];
const PARENT: u32 = 200;

fn refund(value: u64) -> Transaction {
    Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(Txid::from_byte_array([0x22; 32]), 0),
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness: Default::default(),
        }],
        output: vec![TxOut {
            value: Amount::from_sat(value),
            script_pubkey: ScriptBuf::new_op_return([1u8; 4]),
        }],
    }
}

fn ladder() -> Registration {
    Registration {
        id: ID,
        role: WatchRole::Renter,
        extract: None,
        transactions: vec![
            Presigned::new("tx1-refund", refund(99_000)),
            Presigned::new("tx1-refund-bump1", refund(98_000)).bumping("tx1-refund", 3),
            Presigned::new("tx1-refund-bump2", refund(96_000)).bumping("tx1-refund-bump1", 3),
        ],
        watch_txids: Vec::new(),
        rescan_from_height: None,
        auditor: None,
    }
}

fn names(watch: &Watch, tip: u32) -> Vec<String> {
    watch.due(tip).into_iter().map(|p| p.name.clone()).collect()
}

#[test]
fn each_level_waits_for_the_previous_one_to_be_stuck() {
    let mut w = Watch::new(ladder());
    w.note_sighting(Txid::from_byte_array([0x22; 32]), Some(PARENT));
    assert_eq!(names(&w, 300), ["tx1-refund"], "only the base at first");
    w.record_broadcast("tx1-refund", 300, None);
    assert_eq!(
        w.state_of(&w.registration.transactions[1], 301),
        TxState::Waiting { height: Some(303) }
    );
    assert_eq!(
        names(&w, 302),
        ["tx1-refund"],
        "rebroadcast while not stuck"
    );
    assert_eq!(
        names(&w, 303),
        ["tx1-refund-bump1"],
        "stuck: the bump replaces it"
    );
    w.record_broadcast("tx1-refund-bump1", 303, None);
    assert!(names(&w, 304).contains(&"tx1-refund-bump1".to_string()));
    assert!(!names(&w, 304).contains(&"tx1-refund".to_string()));
    assert_eq!(names(&w, 306), ["tx1-refund-bump2"]);
    assert_eq!(w.next_check(303), Some(304));
}

#[test]
fn a_refused_bump_lets_the_previous_version_go_out_again() {
    let mut w = Watch::new(ladder());
    w.note_sighting(Txid::from_byte_array([0x22; 32]), Some(PARENT));
    w.record_broadcast("tx1-refund", 300, None);
    w.record_broadcast("tx1-refund-bump1", 303, Some("insufficient fee".into()));
    let due = names(&w, 304);
    assert!(due.contains(&"tx1-refund".to_string()), "{due:?}");
}

#[test]
fn a_confirmed_version_supersedes_the_others() {
    let mut w = Watch::new(ladder());
    w.note_sighting(Txid::from_byte_array([0x22; 32]), Some(PARENT));
    w.record_broadcast("tx1-refund", 300, None);
    w.record_broadcast("tx1-refund-bump1", 303, None);
    let bump1 = refund(98_000);
    assert!(w.observe(&bump1, Some(304)));
    let by = bump1.compute_txid();
    let states: Vec<TxState> = w
        .registration
        .transactions
        .iter()
        .map(|p| w.state_of(p, 304))
        .collect();
    assert_eq!(
        states,
        [
            TxState::Superseded { by },
            TxState::Confirmed { depth: 1 },
            TxState::Superseded { by },
        ]
    );
    assert!(names(&w, 304).is_empty());
    assert!(w.settled(304 + BURIED_DEPTH));
}

#[test]
fn bad_bumps_are_refused_and_old_registrations_parse() {
    let mut r = ladder();
    r.transactions[1].bump.as_mut().unwrap().after_blocks = 0;
    assert!(r.check().is_err(), "waits at least a block");
    let mut r = ladder();
    r.transactions[1].bump.as_mut().unwrap().replaces = "tx1-refund-bump2".into();
    assert!(r.check().is_err(), "replaces an earlier transaction");
    let mut r = ladder();
    r.transactions[1].tx.input[0].previous_output.vout = 1;
    assert!(r.check().is_err(), "same inputs");
    let mut value = serde_json::to_value(ladder()).unwrap();
    value["transactions"][0]
        .as_object_mut()
        .unwrap()
        .remove("bump");
    assert!(Registration::from_json(&value).is_ok());
    let mut on_record = ladder();
    let mut other = ladder();
    other.transactions[2].bump.as_mut().unwrap().after_blocks = 1;
    assert!(
        on_record.merge(&other).is_err(),
        "a bump is part of the record"
    );
}

#[test]
fn the_fee_ladder_rises_by_at_least_the_incremental_fee_and_stays_below_half() {
    let rate = |sat_vb| FeeRate::from_sat_per_vb_u32(sat_vb);
    let base = Amount::from_sat(1_000);
    let value = Amount::from_sat(100_000);
    let fees = fee_ladder(base, rate(2), rate(1), 300, value);
    assert_eq!(fees, [1_300, 2_400, 4_800].map(Amount::from_sat));
    let high = fee_ladder(base, rate(100), rate(1), 300, value);
    assert_eq!(
        high,
        [50_000].map(Amount::from_sat),
        "capped at half the value"
    );
    assert!(fee_ladder(base, rate(1), rate(1), 300, Amount::from_sat(2_000)).is_empty());
}
