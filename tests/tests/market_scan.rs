//! The market scanner on its own (issue 17): a renter's plugin follows the chain to the tip,
//! walks back over a reorg, resumes after a restart, and answers `dstore-farmers` and
//! `dstore-open auto` with clear errors when there is nothing to choose.

use std::time::Duration;

use bitcoin::{Address, Network, ScriptBuf};
use dstore_tests::{wait_until, BitcoinNode, PluginProcess};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);
const MARKET_FLAGS: [&str; 4] = [
    "--market-poll-ms=100",
    "--market-refresh-secs=1",
    "--market-start-height=0",
    "--market-min-bond-sat=10000",
];

/// Waits until the plugin's market table is at the node's tip; returns the table.
fn scanned_to_tip(node: &BitcoinNode, plugin: &PluginProcess) -> Value {
    wait_until("the market scan at the node's tip", WAIT, || {
        let table = plugin.call_ok("dstore-farmers", json!([]));
        (table["height"].as_u64() == Some(node.block_count())).then_some(table)
    })
}

/// Another address to mine to, so blocks mined after an invalidation differ.
fn other_address() -> String {
    Address::p2wsh(&ScriptBuf::from_bytes(vec![0x52]), Network::Regtest).to_string()
}

#[test]
fn market_scan_follows_reorgs_resumes_and_refuses_auto_without_farmers() {
    let node = BitcoinNode::start();
    node.mine(3);
    let dir = tempfile::tempdir().expect("datadir");
    let plugin = PluginProcess::start_in(&node, dir.path(), &MARKET_FLAGS);
    let table = scanned_to_tip(&node, &plugin);
    assert_eq!(table["farmers"], json!([]), "{table}");

    let bad_sort = plugin
        .call("dstore-farmers", json!(["cheapest"]))
        .expect_err("unknown sort");
    assert_eq!(bad_sort.code, -8, "{bad_sort}");

    let file = dir.path().join("file.bin");
    std::fs::write(&file, b"nobody to store this with").expect("file");
    let refused = plugin
        .call("dstore-open", json!(["auto", file.display().to_string()]))
        .expect_err("no farmer to choose");
    assert_eq!(refused.code, -1, "{refused}");
    assert!(refused.message.contains("no farmer to choose"), "{refused}");
    assert_eq!(plugin.call_ok("dstore-list", json!([])), json!([]));

    // A two-block reorg: the scanner walks back to the fork and follows the new branch.
    let hashes = node.mine(2);
    scanned_to_tip(&node, &plugin);
    node.rpc_ok("invalidateblock", json!([hashes[0]]));
    node.mine_to(3, &other_address());
    scanned_to_tip(&node, &plugin);
    wait_until("the reorg in the plugin's log", WAIT, || {
        plugin.log().contains("rolled back").then_some(())
    });

    // Stopped, blocks arrive, started again: it resumes to the new tip.
    plugin.stop();
    node.mine(2);
    let plugin = PluginProcess::start_in(&node, dir.path(), &MARKET_FLAGS);
    let table = scanned_to_tip(&node, &plugin);
    assert_eq!(table["farmers"], json!([]), "{table}");
}
