//! dstore-watchtower's bounded storage (issue 21): a contract settled and buried 100
//! blocks deep is compacted to its summary (shown by tower-status and tower-list, its
//! transactions gone from the database, removed by tower-forget), and ten thousand
//! registered contracts survive a kill -9 in the middle of compacting half of them, with
//! nothing lost or duplicated.

use std::collections::BTreeSet;
use std::time::Duration;

use bitcoin::hashes::Hash;
use bitcoin::{Amount, Transaction, TxOut, Txid};
use dstore_protocol::watch::{Registration, WatchRole, COMPACT_DEPTH};
use dstore_tests::funding::{broadcast, Funder};
use dstore_tests::parties::Parties;
use dstore_tests::{wait_until, BitcoinNode, TowerProcess};
use dstore_watchtower::secrets::{SecretBox, KEY_FILE};
use dstore_watchtower::store::Store;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::tower::Contract;

/// Contracts of the kill -9 test, half of which settle.
const CONTRACTS: usize = 10_000;
/// Registrations per `tower-register-many` call.
const BATCH: usize = 1_000;
/// Compactions the first tower process logs before it is killed.
const KILL_AFTER: usize = 200;

fn compacted_in_log(tower: &TowerProcess) -> usize {
    tower.log().matches("compacted to its summary").count()
}

fn info(tower: &TowerProcess) -> Value {
    tower.call_ok("tower-getinfo", json!([]))
}

/// The tower's store, opened after the tower stopped (RocksDB allows one process).
fn open_store(tower: &TowerProcess) -> Store {
    let dir = tower.datadir().join("regtest");
    Store::open(&dir.join("db"), SecretBox::new(&dir.join(KEY_FILE))).expect("the tower's store")
}

#[test]
fn tower_scale_settled_contract_is_compacted_to_its_summary_and_forgotten() {
    let mut rng = StdRng::seed_from_u64(2101);
    let node = BitcoinNode::start();
    let mut funder = Funder::new(&node, 1);
    let parties = Parties::new(&node, &mut rng, 400, 4);
    let (_, tx1_outpoint) = funder.fund(&node, parties.contract.tx1_output().unwrap());
    let contract = Contract::on_tx1(parties, &mut rng, tx1_outpoint);
    let id = contract.id_hex();
    let mut tower = TowerProcess::start_with(&node, &["--poll-seconds=1"]);
    tower.call_ok(
        "tower-register",
        json!([contract.renter_registration_from(None)]),
    );
    // TX2 and TX3 confirm together: f is extracted, both refunds are superseded.
    broadcast(&node, &contract.tx2).unwrap();
    broadcast(&node, &contract.tx3).unwrap();
    node.mine(1);
    let settled_height = node.block_count();
    tower.wait_for_tip(settled_height);
    assert_eq!(tower.status(&id)["compacted"], false);
    node.mine(COMPACT_DEPTH - 1);
    tower.wait_for_tip(node.block_count());
    assert_eq!(
        tower.status(&id)["compacted"],
        false,
        "{} blocks deep is not deep enough",
        COMPACT_DEPTH - 1
    );
    node.mine(1);
    let status = wait_until("the compaction", Duration::from_secs(60), || {
        let status = tower.status(&id);
        (status["compacted"] == true).then_some(status)
    });
    assert_eq!(status["settled"], true);
    assert_eq!(status["settled_height"], settled_height);
    assert_eq!(
        status["key"]["secret"].as_str(),
        Some(hex::encode(contract.parties.f.secret_bytes()).as_str()),
        "the summary keeps f"
    );
    for name in ["tx1-refund", "tx2-refund"] {
        let tx = status["transactions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {status}"));
        assert_eq!(tx["status"]["state"], "superseded", "{status}");
    }
    assert!(status.get("seen").is_none(), "no chain history is kept");
    let list = tower.call_ok("tower-list", json!([]));
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["compacted"], true);
    assert_eq!(list[0]["key_extracted"], true);
    assert_eq!(info(&tower)["compacted"], 1);
    assert_eq!(info(&tower)["contracts"], 0);

    // In the database: the summary only; the watch, its transactions and its index
    // record are gone.
    tower.stop();
    {
        let store = open_store(&tower);
        assert!(store.watches().unwrap().is_empty());
        assert!(store.index_records().unwrap().is_empty());
        let summary = store.summary(&contract.id).unwrap().expect("the summary");
        let text = serde_json::to_string(&summary).unwrap();
        let refund = bitcoin::consensus::encode::serialize_hex(&contract.tx1_refund);
        assert!(!text.contains(&refund), "no transaction in the summary");
    }
    tower.restart();
    assert_eq!(
        tower.status(&id)["compacted"],
        true,
        "it survives a restart"
    );
    tower.call_ok("tower-forget", json!([id]));
    let gone = tower.call("tower-status", json!([id])).unwrap_err();
    assert!(gone.message.contains("no watch"), "{gone:?}");
    assert!(tower
        .call_ok("tower-list", json!([]))
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(info(&tower)["compacted"], 0);
}

/// A registration watching one txid only.
fn watching(id: [u8; 32], txid: Txid) -> Value {
    serde_json::to_value(Registration {
        id,
        role: WatchRole::Renter,
        extract: None,
        transactions: vec![],
        watch_txids: vec![txid],
        rescan_from_height: None,
        auditor: None,
    })
    .unwrap()
}

#[test]
fn tower_scale_10000_contracts_survive_kill_9_during_compaction() {
    let mut rng = StdRng::seed_from_u64(2102);
    let node = BitcoinNode::start();
    let mut funder = Funder::new(&node, 1);
    let settling: Transaction = funder.build(TxOut {
        value: Amount::from_sat(50_000),
        script_pubkey: BitcoinNode::burn_address().script_pubkey(),
    });
    let mut tower =
        TowerProcess::start_with(&node, &["--poll-seconds=1", "--dev-fault=slow-compaction"]);
    // Half watch a transaction about to confirm (they settle), half one that never does.
    let ids: Vec<[u8; 32]> = (0..CONTRACTS).map(|_| rng.gen()).collect();
    let settles = |i: usize| i.is_multiple_of(2);
    let registrations: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let txid = if settles(i) {
                settling.compute_txid()
            } else {
                Txid::from_byte_array(rng.gen())
            };
            watching(*id, txid)
        })
        .collect();
    for chunk in registrations.chunks(BATCH) {
        let answer = tower.call_ok("tower-register-many", json!([chunk]));
        assert_eq!(answer.as_array().unwrap().len(), chunk.len());
    }
    assert_eq!(info(&tower)["contracts"], CONTRACTS);
    broadcast(&node, &settling).unwrap();
    node.mine(1);
    tower.wait_for_tip(node.block_count());
    node.mine(COMPACT_DEPTH);

    // Killed in the middle of compacting the 5,000 settled contracts.
    wait_until("compactions under way", Duration::from_secs(120), || {
        (compacted_in_log(&tower) >= KILL_AFTER).then_some(())
    });
    tower.kill9();
    let before_kill = compacted_in_log(&tower);
    assert!(
        before_kill < CONTRACTS / 2,
        "killed mid-way: {before_kill} compacted"
    );

    // Restarted without the fault, it finishes; nothing is lost or duplicated.
    tower.set_extra(&["--poll-seconds=1"]);
    tower.restart();
    let settled = CONTRACTS / 2;
    wait_until(
        "every settled contract compacted",
        Duration::from_secs(300),
        || (info(&tower)["compacted"] == settled).then_some(()),
    );
    let info = info(&tower);
    assert_eq!(info["contracts"], CONTRACTS - settled, "{info}");
    let list = tower.call_ok("tower-list", json!([]));
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), CONTRACTS, "one row per contract");
    let listed: BTreeSet<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(listed.len(), CONTRACTS, "no contract twice");
    let compacted: BTreeSet<String> = rows
        .iter()
        .filter(|r| r["compacted"] == true)
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let id = hex::encode(id);
        assert!(listed.contains(id.as_str()), "{id} lost");
        assert_eq!(compacted.contains(&id), settles(i), "{id}");
    }
    // A live one still watches: its txid is still unseen; a settled one shows its summary.
    assert_eq!(tower.status(&hex::encode(ids[1]))["compacted"], false);
    assert_eq!(tower.status(&hex::encode(ids[0]))["compacted"], true);
}
