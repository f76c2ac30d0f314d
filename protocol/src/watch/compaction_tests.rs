//! Unit tests of the engine's paging (index in RAM, watches handed in by the shell) and of
//! compaction (issue 21).

use bitcoin::hashes::Hash;
use bitcoin::transaction::Version;
use bitcoin::{ScriptBuf, Sequence, TxIn, TxOut, Witness};

use super::tests::{block, renter_registration, setup, Setup};
use super::*;

const ID: WatchId = [9; 32];

/// A transaction spending `outpoint` (the engine never checks signatures): here the
/// farmer's TX3 taking TX2's output.
fn spending(outpoint: OutPoint) -> Transaction {
    Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: outpoint,
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: vec![TxOut {
            value: bitcoin::Amount::from_sat(1_000),
            script_pubkey: ScriptBuf::new_op_return([]),
        }],
    }
}

fn tx3(s: &Setup) -> Transaction {
    spending(OutPoint::new(s.tx2.compute_txid(), 0))
}

/// An engine holding the renter watch as the tower would after a restart: only its index
/// record, evaluated at `tip`; and the stored watch.
fn restarted(s: &Setup, tip: u32) -> (Engine, Watch) {
    let mut engine = Engine::new();
    engine.register(renter_registration(s)).unwrap();
    engine.actions(tip, None);
    let record = engine.index_record(&ID, tip).unwrap();
    let stored = engine.get(&ID).unwrap().clone();
    let mut fresh = Engine::new();
    fresh.restore(&record);
    (fresh, stored)
}

#[test]
fn a_block_names_the_stored_watches_it_touches_and_changes_them_once_paged_in() {
    let s = setup();
    let (mut engine, stored) = restarted(&s, 100);
    assert_eq!(engine.len(), 1);
    assert!(engine.get(&ID).is_none(), "only the index is in RAM");
    let b = block(vec![s.tx2.clone()]);
    let txids: Vec<Txid> = b.txdata.iter().map(Transaction::compute_txid).collect();
    assert_eq!(engine.wanted_for_block(&b, &txids), BTreeSet::from([ID]));
    // Not paged in: nothing is recorded (the shell always pages in first).
    assert!(engine.connect_block(&b, 101).is_empty());
    assert!(engine.page_in(stored));
    assert!(engine.wanted_for_block(&b, &txids).is_empty());
    assert_eq!(engine.connect_block(&b, 102), BTreeSet::from([ID]));
    assert!(engine.get(&ID).unwrap().key.is_some());
    assert_eq!(engine.keys(), 1);
    engine.evict();
    assert!(engine.get(&ID).is_none());
    // A transaction nobody watches names nobody.
    assert!(engine
        .wanted_for_tx(&spending(OutPoint::new(Txid::from_byte_array([3; 32]), 0)))
        .is_empty());
}

#[test]
fn a_restored_watch_is_wanted_when_its_refund_opens() {
    let s = setup();
    let (mut engine, stored) = restarted(&s, 100);
    let opens = stored
        .next_check(100)
        .expect("the TX1 refund has a timelock");
    assert!(engine.wanted_at(opens - 1).is_empty());
    assert_eq!(engine.wanted_at(opens), BTreeSet::from([ID]));
    // Not paged in, it stays pending instead of being dropped.
    assert!(engine.actions(opens, None).broadcasts.is_empty());
    assert_eq!(engine.wanted_at(opens), BTreeSet::from([ID]));
    engine.page_in(stored);
    let due = engine.actions(opens, None).broadcasts;
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].name, "tx1-refund");
}

#[test]
fn a_settled_contract_is_compacted_100_blocks_after_its_last_confirmation() {
    let s = setup();
    let mut engine = Engine::new();
    engine.register(renter_registration(&s)).unwrap();
    let h = 200;
    engine.connect_block(&block(vec![s.tx2.clone()]), h);
    assert!(engine.actions(h, None).compact.is_empty());
    // TX2's output still unspent: the TX2 refund may yet be needed.
    assert_eq!(engine.get(&ID).unwrap().compact_height(h + 500), None);
    let settled = h + 3;
    engine.connect_block(&block(vec![tx3(&s)]), settled);
    engine.actions(settled, None);
    let watch = engine.get(&ID).unwrap();
    assert_eq!(watch.compact_height(settled), Some(settled + COMPACT_DEPTH));
    assert!(!watch.compactable(settled + COMPACT_DEPTH - 1));
    assert_eq!(
        IndexRecord::of(watch, settled).wake,
        Some(settled + COMPACT_DEPTH),
        "a restarted tower wakes it for its compaction"
    );
    assert!(engine
        .actions(settled + COMPACT_DEPTH - 1, None)
        .compact
        .is_empty());
    assert_eq!(
        engine.actions(settled + COMPACT_DEPTH, None).compact,
        vec![ID]
    );
    let summary = engine.get(&ID).unwrap().summary(settled + COMPACT_DEPTH);
    assert_eq!(summary.key, Some(s.p.f));
    assert_eq!(summary.tx2_txid, Some(s.tx2.compute_txid()));
    assert_eq!(summary.settled_height, settled);
    let states: Vec<&TxState> = summary.outcomes.iter().map(|o| &o.status).collect();
    assert!(states
        .iter()
        .all(|s| matches!(s, TxState::Superseded { .. })));
    let json = serde_json::to_string(&summary).unwrap();
    assert_eq!(
        serde_json::from_str::<WatchSummary>(&json).unwrap(),
        summary
    );
    assert!(engine.forget(&ID).is_some());
    assert!(engine.is_empty());
}

#[test]
fn nothing_unconfirmed_or_unextracted_is_ever_compacted() {
    let s = setup();
    let mut engine = Engine::new();
    engine.register(renter_registration(&s)).unwrap();
    // Only in the mempool: in flux.
    engine.observe(&s.tx2, None);
    engine.observe(&tx3(&s), None);
    assert_eq!(engine.get(&ID).unwrap().compact_height(10_000), None);
    // A renter whose TX1 output is unspent still waits for TX2 (or its refund).
    let mut waiting = renter_registration(&s);
    waiting.id = [8; 32];
    waiting.transactions.clear();
    waiting.watch_txids = vec![s.tx2.compute_txid()];
    let watch = Watch::new(waiting);
    assert!(watch.settled(10_000), "no transactions left");
    assert_eq!(watch.compact_height(10_000), None);
}
