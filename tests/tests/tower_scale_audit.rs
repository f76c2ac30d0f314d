//! dstore-watchtower's bounded storage for audit contracts (issue 21): an audit contract
//! whose audits ended on the chain and whose last fact is buried 100 blocks deep is
//! compacted like a plain one; its summary keeps what `tower-status` (the `audits`
//! section, the audit report), `tower-list` and a restart show, its transactions are gone
//! from the database; and a kill -9 in the middle of compacting many audit contracts loses
//! none of them.

use std::collections::BTreeSet;
use std::time::Duration;

use bitcoin::Txid;
use dstore_protocol::watch::{Registration, COMPACT_DEPTH};
use dstore_tests::audit_fixture::{AuditContract, FarmerMode, FarmerServer};
use dstore_tests::funding::Funder;
use dstore_tests::{wait_until, BitcoinNode, TowerProcess};
use dstore_watchtower::secrets::{SecretBox, KEY_FILE};
use dstore_watchtower::store::Store;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);
/// Watches of the same ended contract under other ids, in the kill -9 test.
const CLONES: usize = 150;
/// Compactions the first tower process logs before it is killed.
const KILL_AFTER: usize = 5;

fn register(tower: &TowerProcess, registration: &Registration) {
    let value = serde_json::to_value(registration).unwrap();
    tower.call_ok("tower-register", json!([value]));
}

fn mine_one(node: &BitcoinNode, tower: &TowerProcess) {
    node.mine(1);
    tower.wait_for_tip(node.block_count());
}

fn mine_to(node: &BitcoinNode, tower: &TowerProcess, height: u64) {
    while node.block_count() < height {
        mine_one(node, tower);
    }
}

fn in_mempool(node: &BitcoinNode, txid: &Txid) -> bool {
    node.rpc("getmempoolentry", json!([txid.to_string()]))
        .is_ok()
}

fn info(tower: &TowerProcess) -> Value {
    tower.call_ok("tower-getinfo", json!([]))
}

fn compacted_in_log(tower: &TowerProcess) -> usize {
    tower.log().matches("compacted to its summary").count()
}

fn list_row(tower: &TowerProcess, id: &str) -> Value {
    let list = tower.call_ok("tower-list", json!([]));
    let rows = list.as_array().unwrap();
    rows.iter()
        .find(|r| r["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} not listed: {list}"))
}

/// The tower's store, opened after the tower stopped (RocksDB allows one process).
fn open_store(tower: &TowerProcess) -> Store {
    let dir = tower.datadir().join("regtest");
    Store::open(&dir.join("db"), SecretBox::new(&dir.join(KEY_FILE))).expect("the tower's store")
}

/// Runs the one audit of `c` to its end on `tower` (the auditor): the beacon's candidate
/// goes out at T_0 and confirms, the tower releases its salt, the farmer's claim confirms.
/// Returns the claim's height.
fn pay_the_audit(
    node: &BitcoinNode,
    tower: &TowerProcess,
    c: &AuditContract,
    farmer: &FarmerServer,
) -> u64 {
    mine_to(node, tower, u64::from(c.terms().audit_height(0)));
    let chosen = c.candidate_txid(0, c.beacon(node, 0));
    wait_until("the beacon's candidate in the mempool", WAIT, || {
        in_mempool(node, &chosen).then_some(())
    });
    mine_one(node, tower);
    let (_, _, claim) = wait_until("the farmer's claim", WAIT, || {
        farmer.claims().first().copied()
    });
    assert!(in_mempool(node, &claim));
    mine_one(node, tower);
    wait_until("the audit paid", WAIT, || {
        (tower.audits(&c.id_hex())["audits"][0]["outcome"] == "paid").then_some(())
    });
    node.block_count()
}

/// `audits` without the Merkle records (a compacted contract keeps their counts only).
fn without_merkle_records(audits: &Value) -> Value {
    let mut audits = audits.clone();
    audits["merkle"]["records"] = json!([]);
    audits
}

fn transaction_outcomes(status: &Value) -> Vec<(Value, Value, Value)> {
    let txs = status["transactions"].as_array().unwrap();
    txs.iter()
        .map(|t| (t["name"].clone(), t["txid"].clone(), t["status"].clone()))
        .collect()
}

#[test]
fn tower_scale_settled_audit_contract_is_compacted_and_keeps_its_audit_report() {
    let mut rng = StdRng::seed_from_u64(2111);
    let node = BitcoinNode::start();
    let mut funder = Funder::new(&node, 1);
    let c = AuditContract::new(&node, &mut funder, &mut rng, 1, 2, 6);
    let farmer = FarmerServer::start(&node, c.farmer_side(), FarmerMode::Honest);
    let mut tower =
        TowerProcess::start_with(&node, &["--poll-seconds=1", "--merkle-audit-every=2"]);
    register(&tower, &c.renter_registration(Some(&farmer.url)));
    let id = c.id_hex();
    let claimed = pay_the_audit(&node, &tower, &c, &farmer);
    mine_to(&node, &tower, claimed + 10);
    let before = tower.status(&id);
    let row_before = list_row(&tower, &id);
    assert_eq!(before["compacted"], false);
    assert_eq!(before["settled"], true, "{before}");
    assert!(before["audits"]["merkle"]["passed"].as_u64().unwrap() >= 1);
    assert_eq!(row_before["auditor"], true);

    // One block short of the depth it stays whole; at the depth it is compacted.
    mine_to(&node, &tower, claimed + u64::from(COMPACT_DEPTH) - 1);
    assert_eq!(tower.status(&id)["compacted"], false);
    mine_one(&node, &tower);
    let after = wait_until("the audit contract compacted", WAIT, || {
        let status = tower.status(&id);
        (status["compacted"] == true).then_some(status)
    });
    let shows_the_same = |after: &Value, row: &Value| {
        assert_eq!(after["audits"], without_merkle_records(&before["audits"]));
        assert_eq!(after["audits"]["audits"][0]["outcome"], "paid");
        assert_eq!(transaction_outcomes(after), transaction_outcomes(&before));
        assert_eq!(
            (&after["key"], &after["settled"]),
            (&before["key"], &json!(true))
        );
        for field in [
            "id",
            "role",
            "key_extracted",
            "transactions",
            "settled",
            "auditor",
        ] {
            assert_eq!(row[field], row_before[field], "{field}: {row}");
        }
        assert_eq!(row["audits_failed"], row_before["audits_failed"]);
        assert_eq!(row["compacted"], true);
    };
    shows_the_same(&after, &list_row(&tower, &id));
    let info = info(&tower);
    assert_eq!(
        (&info["compacted"], &info["contracts"]),
        (&json!(1), &json!(0))
    );

    // Its transactions and history are gone from the database; the summary stays.
    tower.stop();
    {
        let store = open_store(&tower);
        let key = c.contract_id();
        assert_eq!(store.load(&key).unwrap(), None);
        assert!(store.watches().unwrap().is_empty());
        assert!(store.index_records().unwrap().is_empty());
        let summary = store.summary(&key).unwrap().expect("the summary");
        assert!(summary.auditor && summary.audits.is_some());
    }
    tower.restart();
    shows_the_same(&tower.status(&id), &list_row(&tower, &id));
}

#[test]
fn tower_scale_audit_contracts_survive_kill_9_during_compaction() {
    let mut rng = StdRng::seed_from_u64(2112);
    let node = BitcoinNode::start();
    let mut funder = Funder::new(&node, 1);
    let c = AuditContract::new(&node, &mut funder, &mut rng, 1, 2, 6);
    let farmer = FarmerServer::start(&node, c.farmer_side(), FarmerMode::Honest);
    let mut tower =
        TowerProcess::start_with(&node, &["--poll-seconds=1", "--dev-fault=slow-compaction"]);
    register(&tower, &c.renter_registration(Some(&farmer.url)));
    let claimed = pay_the_audit(&node, &tower, &c, &farmer);
    // More audit contracts ending together: the same candidates, refunds and claim
    // watched under other ids (groups, no auditor), learnt by looking back from T_0.
    let t0 = c.terms().audit_height(0);
    let clones: Vec<Value> = (0..CLONES)
        .map(|_| {
            let registration = Registration {
                id: rng.gen(),
                rescan_from_height: Some(t0),
                ..c.renter_registration(None)
            };
            serde_json::to_value(registration).unwrap()
        })
        .collect();
    for chunk in clones.chunks(50) {
        tower.call_ok("tower-register-many", json!([chunk]));
    }
    let mut ids: Vec<String> = clones
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    ids.push(c.id_hex());
    for id in &ids {
        let status = tower.status(id);
        assert_eq!(status["audits"]["audits"][0]["outcome"], "paid", "{status}");
    }
    mine_to(&node, &tower, claimed + u64::from(COMPACT_DEPTH) - 1);
    assert_eq!(info(&tower)["compacted"], 0);
    node.mine(1);

    // Killed in the middle of compacting them.
    wait_until("compactions under way", WAIT, || {
        (compacted_in_log(&tower) >= KILL_AFTER).then_some(())
    });
    tower.kill9();
    let before_kill = compacted_in_log(&tower);
    assert!(
        before_kill < ids.len(),
        "killed mid-way: {before_kill} compacted"
    );

    // Restarted without the fault, it finishes; nothing is lost or duplicated.
    tower.set_extra(&["--poll-seconds=1"]);
    tower.restart();
    wait_until("every audit contract compacted", WAIT, || {
        (info(&tower)["compacted"] == ids.len()).then_some(())
    });
    assert_eq!(info(&tower)["contracts"], 0);
    let list = tower.call_ok("tower-list", json!([]));
    let rows = list.as_array().unwrap();
    let listed: BTreeSet<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!((rows.len(), listed.len()), (ids.len(), ids.len()));
    for id in &ids {
        assert!(listed.contains(id.as_str()), "{id} lost");
        let status = tower.status(id);
        assert_eq!(status["compacted"], true, "{status}");
        assert_eq!(status["audits"]["audits"][0]["outcome"], "paid", "{status}");
    }
    assert_eq!(list_row(&tower, &c.id_hex())["auditor"], true);
}
