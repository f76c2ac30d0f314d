//! Issue 15: a renter's refund stuck at its fixed 1,000-sat fee is fee-bumped. The renter
//! signs its TX1 refund again at rising fees (the ladder of `dstore_protocol::watch::
//! fee_ladder`) and registers each level as a `Bump` of the one before; its watchtower
//! broadcasts the base refund at T1 and, once that sat unconfirmed for
//! `REFUND_BUMP_BLOCKS` blocks, the next level, which replaces it (full RBF) and confirms.

use std::time::Duration;

use bitcoin::{Amount, FeeRate, Transaction};
use dstore_protocol::watch::{
    fee_ladder, ExtractSpec, Presigned, Registration, WatchRole, REFUND_BUMP_BLOCKS,
};
use dstore_tests::funding::Funder;
use dstore_tests::parties::{Parties, PRICE, REFUND_FEE};
use dstore_tests::{wait_until, BitcoinNode, TowerProcess};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::json;

/// TX1's refund opens this many blocks above the tip at set-up.
const T1_AHEAD: u32 = 4;
/// The fee rate the renter's `estimatesmartfee` gave at set-up (sat/vB).
const ESTIMATE_SAT_VB: u32 = 5;

fn in_mempool(node: &BitcoinNode, tx: &Transaction) -> bool {
    node.rpc("getmempoolentry", json!([tx.compute_txid().to_string()]))
        .is_ok()
}

fn fee(tx: &Transaction) -> Amount {
    PRICE - tx.output[0].value
}

#[test]
fn harden_stuck_refund_is_fee_bumped() {
    let mut rng = StdRng::seed_from_u64(1515);
    let node = BitcoinNode::start();
    let mut funder = Funder::new(&node, 1);
    let parties = Parties::new(&node, &mut rng, T1_AHEAD, 10);
    let c = &parties.contract;
    let (_, tx1_outpoint) = funder.fund(&node, c.tx1_output().unwrap());
    let destination = parties.renter_refund_destination();
    let sign = |fee| {
        c.tx1_refund(tx1_outpoint, &parties.r, &destination, fee)
            .unwrap()
    };
    let base = sign(REFUND_FEE);
    let estimate = FeeRate::from_sat_per_vb_u32(ESTIMATE_SAT_VB);
    let incremental = FeeRate::from_sat_per_vb_u32(1);
    let levels = fee_ladder(
        REFUND_FEE,
        estimate,
        incremental,
        base.vsize() as u64,
        PRICE,
    );
    assert!(!levels.is_empty(), "a ladder above the base fee");
    let bumps: Vec<Transaction> = levels.into_iter().map(sign).collect();
    let mut transactions = vec![Presigned::new("tx1-refund", base.clone())];
    for (i, tx) in bumps.iter().enumerate() {
        let replaces = transactions.last().unwrap().name.clone();
        transactions.push(
            Presigned::new(format!("tx1-refund-bump{}", i + 1), tx.clone())
                .bumping(replaces, REFUND_BUMP_BLOCKS),
        );
    }
    let id = [0x15; 32];
    let registration = Registration {
        id,
        role: WatchRole::Renter,
        extract: Some(ExtractSpec {
            tx1_outpoint,
            farmer_key: c.farmer_key,
            contract_id: c.contract_id,
            tx1_script_pubkey: c.tx1_script_pubkey().unwrap(),
        }),
        transactions,
        watch_txids: vec![],
        rescan_from_height: None,
        auditor: None,
    };
    let tower = TowerProcess::start_with(&node, &["--poll-seconds=1"]);
    tower.call_ok(
        "tower-register",
        json!([serde_json::to_value(&registration).unwrap()]),
    );

    // T1 passes: the tower broadcasts the base refund.
    while node.block_count() < u64::from(c.refund_height) {
        node.mine(1);
    }
    tower.wait_for_tip(node.block_count());
    wait_until(
        "the base refund in the mempool",
        Duration::from_secs(30),
        || in_mempool(&node, &base).then_some(()),
    );
    // Miners ignore it (its fee counts as zero for them): the 1,000 sat are too little.
    let base_txid = base.compute_txid().to_string();
    node.rpc_ok("prioritisetransaction", json!([base_txid, 0, -1000]));

    // After REFUND_BUMP_BLOCKS blocks unconfirmed the tower replaces it with bump 1.
    let bump1 = &bumps[0];
    for _ in 0..REFUND_BUMP_BLOCKS {
        node.mine(1);
        tower.wait_for_tip(node.block_count());
    }
    let unspent_on_chain = node.rpc_ok(
        "gettxout",
        json!([tx1_outpoint.txid.to_string(), tx1_outpoint.vout, false]),
    );
    assert!(!unspent_on_chain.is_null(), "the base refund is stuck");
    wait_until(
        "the bumped refund in the mempool",
        Duration::from_secs(30),
        || in_mempool(&node, bump1).then_some(()),
    );
    assert!(
        !in_mempool(&node, &base),
        "the bump replaced the base refund"
    );
    assert_eq!(
        bump1.input[0].previous_output, base.input[0].previous_output,
        "both spend TX1:0"
    );
    assert!(fee(bump1) > fee(&base), "the replacement pays more");

    node.mine(1);
    let bump1_txid = bump1.compute_txid().to_string();
    assert_eq!(
        node.confirmations(&bump1_txid),
        1,
        "the bumped refund confirmed"
    );
    let paid = node.rpc_ok("getrawtransaction", json!([bump1_txid, true]));
    let output = &paid["vout"][0];
    assert_eq!(
        output["scriptPubKey"]["hex"].as_str().unwrap(),
        hex::encode(destination.script_pubkey().as_bytes()),
        "it pays the renter"
    );
    assert_eq!(
        dstore_tests::node::btc_to_sat(&output["value"]),
        (PRICE - fee(bump1)).to_sat()
    );
    tower.wait_for_tip(node.block_count());
    let id = hex::encode(id);
    wait_until(
        "the tower sees the bump confirmed",
        Duration::from_secs(30),
        || (tower.tx(&id, "tx1-refund-bump1")["status"]["state"] == "confirmed").then_some(()),
    );
    assert_eq!(tower.tx(&id, "tx1-refund")["status"]["state"], "superseded");
}
