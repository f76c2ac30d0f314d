//! Issue 15, item 1: the renter never sees f while it can still take TX1 back. A real
//! farmer plugin (and its real watchtower) against a real renter plugin whose chain
//! behaviour turns hostile: it double-spends its unconfirmed TX1 right after its TX3
//! signature, or lets TX1 sit unmined until T1 draws near, or TX1's block is reorged
//! away. Each time no transaction spending TX1 (TX2, which reveals f) ever appears
//! before TX1 is safely confirmed, and never at or after T1 minus the margin.

use std::path::PathBuf;

use dstore_tests::harden_tx2::{
    double_spend, exclude_from_blocks, farmer_status, finish, known, renter_download, renter_tx1,
    spends_of, start_download, wait_for_check_at, wait_for_hold, wait_for_phase, FARMER_WAIT,
};
use dstore_tests::market::{tower_flags, Faults, Market};
use dstore_tests::parties::seeded_bytes;
use dstore_tests::{wait_until, TowerProcess};
use serde_json::json;

/// The e2e tests' CRS cache: the same TX2 shape, so the renter's CRS is generated once.
fn crs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-crs")
}

fn mine_to_height(m: &Market, height: u64) {
    let now = m.node.block_count();
    if height > now {
        m.node.mine((height - now) as u32);
    }
}

#[test]
fn harden_renter_double_spends_unconfirmed_tx1_gets_nothing() {
    let mut m = Market::start(&crs_dir(), Faults::default());
    let input = m.file("in", &seeded_bytes(41, 6_000));
    let id = m.open(&input).expect("dstore-open");
    let from_height = m.node.block_count();
    let download = start_download(&m, &id, &m.dir.path().join("out"));
    // The renter's TX3 signature arrived while TX1 is only in the mempool: the farmer
    // stores TX2 and TX3 and holds them back.
    let held = wait_for_hold(&m, &id);
    assert_eq!(held["claim"]["tx1_confirmations"], 0, "{held}");
    assert_eq!(held["claim"]["min_tx1_confirmations"], 1, "{held}");
    let tx1 = renter_tx1(&m, &id);
    let tx2 = renter_download(&m, &id)["tx2"]
        .as_str()
        .expect("the renter signed TX3 for a TX2")
        .to_string();
    assert!(!known(&m.node, &tx2), "TX2 was not broadcast");
    // The renter takes TX1 back: its inputs go to itself at a higher fee (full-RBF).
    finish(download);
    m.kill_renter();
    let theft = double_spend(&m.node, &m.dir.path().join("renter"), &tx1);
    let tx1_txid = tx1.compute_txid().to_string();
    assert!(
        m.node.rpc("getmempoolentry", json!([tx1_txid])).is_err(),
        "TX1 was replaced"
    );
    for _ in 0..3 {
        m.node.mine(1);
        let s = wait_for_check_at(&m, &id, m.node.block_count());
        assert_eq!(s["claim"]["tx1_confirmations"], 0, "{s}");
        assert!(spends_of(&m.node, &tx1, from_height).is_empty());
        assert!(!known(&m.node, &tx2), "f never leaves the farmer");
    }
    assert_eq!(m.node.confirmations(&theft.to_string()), 3);
    // Past the margin below T1 the farmer gives the download up for good.
    let abandon = held["claim"]["abandon_height"]
        .as_u64()
        .expect("abandon height");
    mine_to_height(&m, abandon);
    let s = wait_for_phase(&m, &id, "abandoned");
    assert_eq!(s["payouts"], json!([]), "nothing claimed: {s}");
    m.node.mine(2);
    assert!(spends_of(&m.node, &tx1, from_height).is_empty());
    assert!(!known(&m.node, &tx2), "f never appears");
}

#[test]
fn harden_renter_stalls_past_margin_farmer_abandons() {
    let m = Market::start(&crs_dir(), Faults::default());
    let input = m.file("in", &seeded_bytes(42, 6_000));
    let id = m.open(&input).expect("dstore-open");
    let from_height = m.node.block_count();
    let download = start_download(&m, &id, &m.dir.path().join("out"));
    // TX1 stays in the mempool, unmined, while the renter stalls.
    let tx1 = renter_tx1(&m, &id);
    let tx1_txid = tx1.compute_txid();
    exclude_from_blocks(&m.node, &tx1_txid, true);
    let held = wait_for_hold(&m, &id);
    let tx2 = renter_download(&m, &id)["tx2"]
        .as_str()
        .expect("TX2's txid")
        .to_string();
    let abandon = held["claim"]["abandon_height"]
        .as_u64()
        .expect("abandon height");
    let t1 = renter_download(&m, &id)["refund_height"]
        .as_u64()
        .expect("T1");
    assert_eq!(abandon, t1 - 36, "the default margin is 36 blocks");
    // Up to the last height TX2 could go out, TX1 never confirms: the claim stays held.
    mine_to_height(&m, abandon - 1);
    let s = wait_for_check_at(&m, &id, abandon - 1);
    assert_eq!(s["claim"]["tx1_confirmations"], 0, "{s}");
    assert_eq!(m.node.confirmations(&tx1_txid.to_string()), 0);
    assert!(!known(&m.node, &tx2));
    // At T1 − margin the farmer abandons: TX2 is never broadcast, f stays secret.
    m.node.mine(1);
    let s = wait_for_phase(&m, &id, "abandoned");
    assert_eq!(s["payouts"], json!([]), "{s}");
    finish(download);
    // Even once TX1 confirms now, nothing spends it: the signed TX2 is gone.
    exclude_from_blocks(&m.node, &tx1_txid, false);
    m.node.mine(3);
    assert_eq!(m.node.confirmations(&tx1_txid.to_string()), 3);
    assert!(spends_of(&m.node, &tx1, from_height).is_empty());
    assert!(!known(&m.node, &tx2), "f never appears");
    assert_eq!(wait_for_phase(&m, &id, "abandoned")["payouts"], json!([]));
}

#[test]
fn harden_reorg_of_tx1_puts_tx2_on_hold() {
    let mut tower = None;
    let mut m = Market::start_around(&crs_dir(), Faults::default(), 80 << 20, |node| {
        // A tower refuses to start on a node still in initial block download.
        node.mine(1);
        let farmer_tower = TowerProcess::start_with(node, &[]);
        let mut flags = tower_flags(&farmer_tower);
        flags.push("--min-tx1-confirmations=2".into());
        tower = Some(farmer_tower);
        (flags, Vec::new())
    });
    let tower = tower.expect("the farmer's tower");
    let input = m.file("in", &seeded_bytes(43, 6_000));
    let id = m.open(&input).expect("dstore-open");
    let download = start_download(&m, &id, &m.dir.path().join("out"));
    let held = wait_for_hold(&m, &id);
    assert_eq!(held["claim"]["min_tx1_confirmations"], 2, "{held}");
    let tx1 = renter_tx1(&m, &id);
    let tx1_txid = tx1.compute_txid().to_string();
    let latest = renter_download(&m, &id);
    let tx2 = latest["tx2"].as_str().expect("TX2's txid").to_string();
    let download_id = latest["download_id"].as_str().unwrap().to_string();
    // The farmer's tower holds the claim, with TX2 on the same hold.
    wait_until("the claim at the farmer's tower", FARMER_WAIT, || {
        (farmer_status(&m, &id)["watchtower"]["registered"] == true).then_some(())
    });
    assert_eq!(tower.tx(&download_id, "tx2")["status"]["state"], "waiting");

    // TX1 mined: one confirmation of two. Then its block is reorged away.
    let block = m.node.mine(1).remove(0);
    let h = m.node.block_count();
    assert_eq!(m.node.confirmations(&tx1_txid), 1);
    let s = wait_for_check_at(&m, &id, h);
    assert_eq!(s["claim"]["tx1_confirmations"], 1, "{s}");
    tower.wait_for_tip(h);
    let tower_tx2 = tower.tx(&download_id, "tx2");
    assert_eq!(tower_tx2["status"]["state"], "waiting", "{tower_tx2}");
    assert_eq!(tower_tx2["status"]["height"], h + 1, "{tower_tx2}");
    m.node.rpc_ok("invalidateblock", json!([block]));
    exclude_from_blocks(&m.node, &tx1.compute_txid(), true);
    m.node.mine(2);
    let tip = m.node.block_count();
    assert_eq!(tip, h + 1);
    assert_eq!(
        m.node.confirmations(&tx1_txid),
        0,
        "TX1 is unconfirmed again"
    );
    // Neither the farmer nor its tower lets TX2 out: both are back on hold.
    let s = wait_for_check_at(&m, &id, tip);
    assert_eq!(s["claim"]["tx1_confirmations"], 0, "{s}");
    wait_until("the tower back on hold", FARMER_WAIT, || {
        let tx = tower.tx(&download_id, "tx2");
        let on_hold = tx["status"]["state"] == "waiting" && tx["status"]["height"].is_null();
        on_hold.then_some(())
    });
    assert_eq!(tower.tx(&download_id, "tx2")["broadcasts"], 0);
    assert!(!known(&m.node, &tx2), "TX2 never left during the reorg");

    // The farmer goes away; the tower alone decides from here, under the same hold.
    finish(download);
    m.kill_farmer();
    exclude_from_blocks(&m.node, &tx1.compute_txid(), false);
    m.node.mine(1);
    tower.wait_for_tip(tip + 1);
    assert_eq!(m.node.confirmations(&tx1_txid), 1);
    let tower_tx2 = tower.tx(&download_id, "tx2");
    assert_eq!(tower_tx2["status"]["state"], "waiting", "{tower_tx2}");
    assert!(!known(&m.node, &tx2), "one confirmation of two: still held");
    m.node.mine(1);
    m.node.wait_for_tx(&tx2, FARMER_WAIT);
    m.node.mine(1);
    assert_eq!(m.node.confirmations(&tx2), 1, "the tower got TX2 mined");
    // Back, the farmer finds its claim out and records the payout.
    m.start_farmer();
    let s = wait_for_phase(&m, &id, "claimed");
    assert_eq!(s["payouts"][0]["tx2"], tx2.as_str(), "{s}");
}
