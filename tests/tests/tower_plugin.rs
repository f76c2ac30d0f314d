//! The plugins and their watchtowers (PROTOCOL.md 6): a renter and a farmer dstore-plugin,
//! each started with `--watchtower-url`/`--watchtower-cookie` of its own dstore-watchtower,
//! register every download automatically. The renter's tower extracts f while the renter
//! is offline, the renter finishes its paid download from the tower's key after a restart,
//! and the farmer's tower sees TX2 and TX3 mined and buried.

use std::path::PathBuf;
use std::time::Duration;

use dstore_tests::market::{Faults, Market};
use dstore_tests::parties::seeded_bytes;
use dstore_tests::{wait_until, TowerProcess};
use serde_json::{json, Value};

/// The e2e tests' CRS cache: the same TX2 shape, so the renter's CRS is generated once.
fn crs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-crs")
}

/// A market whose farmer and renter each register with their own tower.
fn market_with_towers(faults: Faults) -> (Market, TowerProcess, TowerProcess) {
    Market::with_towers(&crs_dir(), faults, &[], &[])
}

fn states(watch: &Value) -> Vec<(String, String)> {
    watch["transactions"]
        .as_array()
        .expect("transactions")
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap_or_default().to_string(),
                t["status"]["state"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

fn state_of(watch: &Value, name: &str) -> String {
    states(watch)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, s)| s)
        .unwrap_or_else(|| panic!("no {name} in {watch}"))
}

#[test]
fn tower_renter_offline_download_finishes_from_tower_key() {
    let (mut m, farmer_tower, renter_tower) = market_with_towers(Faults {
        farmer: Some("withhold-tx2"),
        ..Faults::default()
    });
    let info = m.renter().call_ok("dstore-getinfo", json!([]));
    assert_eq!(info["watchtower"], renter_tower.rpc_url(), "{info}");

    // A paid download whose TX2 the farmer keeps to itself (as if it crashed after
    // storing its claim): the renter signed TX3 and waits for TX2 in the background.
    let data = seeded_bytes(61, 40_000);
    let input = m.file("in", &data);
    let id = m.open(&input).expect("dstore-open");
    let output = m.dir.path().join("out");
    let waiting = m.download_started(&id, &output).expect("dstore-download");
    assert_eq!(waiting["status"], "waiting", "{waiting}");
    assert!(!output.exists());
    let paid = m.renter_balance_sat();
    let s = m.renter().call_ok("dstore-status", json!([id]));
    let d = &s["downloads"][0];
    assert_eq!(d["phase"], "tx3_signed", "{s}");
    assert_eq!(d["watchtower"]["registered"], true, "{s}");
    assert_eq!(
        d["watchtower"]["refunds"],
        json!(["tx1-refund", "tx2-refund"]),
        "{s}"
    );
    let download_id = d["download_id"].as_str().unwrap().to_string();
    let tx1 = d["tx1"].as_str().unwrap().to_string();
    let tx2 = d["tx2"].as_str().unwrap().to_string();

    // The renter's tower holds both refunds, watches TX1:0 for f, and has no key yet.
    let watch = renter_tower.status(&download_id);
    assert_eq!(watch["role"], "renter", "{watch}");
    assert!(watch["key"].is_null(), "{watch}");
    assert_eq!(state_of(&watch, "tx1-refund"), "waiting", "{watch}");
    assert_eq!(state_of(&watch, "tx2-refund"), "waiting", "{watch}");
    // Each refund comes with fee-bump levels, broadcast only once the one before is stuck.
    for name in ["tx1-refund-bump1", "tx2-refund-bump1"] {
        assert_eq!(state_of(&watch, name), "waiting", "{watch}");
    }
    // The withheld claim never reached the farmer's tower either.
    assert!(
        farmer_tower
            .call("tower-status", json!([download_id]))
            .is_err(),
        "the fault withholds the claim from the farmer's tower too"
    );

    // TX1 confirms (the farmer broadcasts TX2 only then). The renter goes offline. The
    // farmer restarts without the fault: it registers its stored claim with its tower and
    // broadcasts TX2 and TX3.
    m.node.mine(1);
    m.kill_renter();
    m.kill_farmer();
    m.start_farmer();
    m.node.wait_for_tx(&tx2, Duration::from_secs(60));
    let fs = m.farmer().call_ok("dstore-status", json!([id]));
    assert_eq!(fs["watchtower"]["registered"], true, "{fs}");
    let claim = farmer_tower.status(&download_id);
    assert_eq!(claim["role"], "farmer", "{claim}");
    assert_eq!(
        states(&claim)
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        ["tx2", "tx3"],
        "{claim}"
    );
    m.node.mine(1);

    // While the renter is down, its tower sees TX2 spend TX1:0 and extracts f.
    let key = wait_until(
        "the renter's tower to extract f",
        Duration::from_secs(60),
        || {
            let watch = renter_tower.status(&download_id);
            (!watch["key"].is_null()).then(|| watch["key"].clone())
        },
    );
    assert_eq!(key["tx2_txid"], tx2, "{key}");
    assert_eq!(key["secret"].as_str().map(str::len), Some(64), "{key}");

    // Back online, the renter finishes the download it paid for from the tower's TX2,
    // without paying again.
    m.start_renter();
    let result = m
        .download(&id, &output)
        .expect("the paid download finishes");
    assert!(
        std::fs::read(&output).unwrap() == data,
        "the file comes back"
    );
    assert_eq!(result["tx2"], tx2, "{result}");
    let s = m.renter().call_ok("dstore-status", json!([id]));
    assert_eq!(s["downloads"].as_array().unwrap().len(), 1, "{s}");
    let d = &s["downloads"][0];
    assert_eq!(d["phase"], "done", "{s}");
    assert_eq!(d["watchtower"]["tx2_from_tower"], true, "{s}");
    assert_eq!(d["watchtower"]["registered"], true, "{s}");
    assert_eq!(m.renter_balance_sat(), paid, "nothing paid twice");

    // The farmer's tower follows its claim until it is buried; the renter's refunds are
    // superseded by TX2 and TX3 and were never broadcast.
    m.node.mine(6);
    let tip = m.node.block_count();
    farmer_tower.wait_for_tip(tip);
    renter_tower.wait_for_tip(tip);
    let claim = farmer_tower.status(&download_id);
    assert_eq!(state_of(&claim, "tx2"), "buried", "{claim}");
    assert_eq!(state_of(&claim, "tx3"), "buried", "{claim}");
    let watch = renter_tower.status(&download_id);
    for name in ["tx1-refund", "tx2-refund"] {
        assert_eq!(state_of(&watch, name), "superseded", "{watch}");
    }
    for t in watch["transactions"].as_array().unwrap() {
        assert_eq!(t["broadcasts"], 0, "no refund was broadcast: {watch}");
    }
    assert_eq!(m.node.confirmations(&tx2), 7);
    assert!(m.node.confirmations(&tx1) >= 7);
    let tx3 = m.farmer().call_ok("dstore-status", json!([id]))["payouts"][0]["tx3"]
        .as_str()
        .expect("the farmer recorded its payout")
        .to_string();
    assert_eq!(m.node.confirmations(&tx3), 7);
}
