//! Issue 15: audit refunds are fee-bumpable. Every RF_i, RF_ij and reclaim carries an anchor
//! output paying the renter's tower's key (agreed in the book, signed by the farmer at
//! set-up); a refund that sits unconfirmed for 3 blocks gets a CPFP child from the tower,
//! with the tower's own coins, while no plugin runs at all.
//!
//! A real regtest audit contract (`dstore_tests::audit_fixture`) and a real
//! `dstore-watchtower`; the farmer never claims (no salt is released), so after W the
//! tower broadcasts RF_ij. The refund is made stuck on the node with
//! `prioritisetransaction`: its modified fee drops to zero, so the miner leaves it alone
//! until a child's package pays.

use std::time::Duration;

use bitcoin::{Amount, OutPoint, TxOut, Txid};
use dstore_protocol::audit::book::RefundId;
use dstore_protocol::audit::transactions::REFUND_ANCHOR_VALUE;
use dstore_tests::audit_fixture::{AuditContract, AMOUNT, CANDIDATE_FEE, REFUND_FEE, WINDOW};
use dstore_tests::funding::{fetch_tx, Funder};
use dstore_tests::harden_audit::{
    confirmations, in_mempool, mine_one, mine_to, wait_for_one_in_mempool,
};
use dstore_tests::harden_audit_refund::{tower_script, AnchoredRefunds};
use dstore_tests::node::btc_to_sat;
use dstore_tests::{wait_until, BitcoinNode, TowerProcess};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);
/// Blocks a refund sits accepted and unconfirmed before the tower bumps it.
const STUCK_BLOCKS: u64 = dstore_protocol::watch::STUCK_BLOCKS as u64;

#[test]
fn harden_stuck_audit_refund_is_bumped() {
    let node = BitcoinNode::start();
    let mut funder = Funder::new(&node, 2);
    let mut rng = StdRng::seed_from_u64(1515);
    let tower = TowerProcess::start_with(&node, &["--poll-seconds=1"]);
    let towers = [&tower];
    // The tower's key is the anchor; its own coins pay for a child beyond the anchor.
    let anchor = tower_script(&tower);
    funder.fund(
        &node,
        TxOut {
            value: Amount::from_sat(200_000),
            script_pubkey: anchor.clone(),
        },
    );
    let c = AuditContract::new(&node, &mut funder, &mut rng, 2, 2, 6);
    let refunds = AnchoredRefunds::new(&c, anchor.clone());
    // Audit 1's candidates stay out of this tower: with P = 6 and W = 3 the bump falls at
    // T_1, where the tower would publish one, and it spends O_1 like RF_0j. Against the
    // refund's prioritised zero fee the node would let it replace RF_0j; with real fees
    // it cannot (it pays 1,000 sat, RF_0j 2,000 plus the child).
    let mut registration = refunds.renter_registration(&c);
    registration.transactions.retain(|p| p.group != Some(1));
    let registration = serde_json::to_value(registration).unwrap();
    tower.call_ok("tower-register", json!([registration]));

    // At T_0 the tower publishes the beacon's candidate; it confirms and nobody claims.
    mine_to(&node, &towers, u64::from(c.terms().audit_height(0)));
    let txids: Vec<Txid> = (0..c.kept()).map(|j| c.candidate_txid(0, j)).collect();
    let j = wait_for_one_in_mempool(&node, &txids) as u32;
    mine_one(&node, &towers);
    assert!(confirmations(&node, &txids[j as usize]) > 0);

    // After W the tower broadcasts RF_0j (the candidate's output and O_1), anchored.
    let rf = refunds.refund(&c, RefundId::AfterCandidate(0, j));
    let rf_txid = rf.compute_txid();
    assert_eq!(rf.output[1].script_pubkey, anchor);
    assert_eq!(rf.output[1].value, REFUND_ANCHOR_VALUE);
    for _ in 0..=WINDOW {
        if in_mempool(&node, &rf_txid) {
            break;
        }
        mine_one(&node, &towers);
    }
    assert!(in_mempool(&node, &rf_txid), "RF_0{j} broadcast after W");
    let name = format!("audit-0-refund-after-{j}");
    let id = c.id_hex();
    // Accepted at this tip (the first broadcast bitcoind took).
    let accepted = tower.tx(&id, &name)["last_broadcast_height"]
        .as_u64()
        .expect("broadcast");
    assert_eq!(accepted, node.block_count());

    // The miner sees the refund as paying nothing: alone, it is never mined.
    node.rpc_ok(
        "prioritisetransaction",
        json!([rf_txid.to_string(), 0, -(REFUND_FEE.to_sat() as i64)]),
    );
    while node.block_count() < accepted + STUCK_BLOCKS {
        assert!(
            tower.tx(&id, &name)["last_bump_txid"].is_null(),
            "no bump before the refund is stuck"
        );
        mine_one(&node, &towers);
        assert_eq!(
            confirmations(&node, &rf_txid),
            0,
            "the stuck refund is mined"
        );
    }

    // Stuck for 3 blocks: the tower's child spends the anchor (and a coin of its own).
    let child: Txid = wait_until("the tower's CPFP child", WAIT, || {
        tower.tx(&id, &name)["last_bump_txid"]
            .as_str()
            .map(|t| t.parse().expect("txid"))
    });
    wait_until("the child in the mempool", WAIT, || {
        in_mempool(&node, &child).then_some(())
    });
    let child_tx = fetch_tx(&node, &child.to_string());
    assert!(
        child_tx
            .input
            .iter()
            .any(|i| i.previous_output == OutPoint::new(rf_txid, 1)),
        "the child spends the refund's anchor"
    );
    assert!(child_tx.output.iter().all(|o| o.script_pubkey == anchor));

    // One block takes the package: the refund and its child confirm.
    mine_one(&node, &towers);
    assert_eq!(
        confirmations(&node, &rf_txid),
        1,
        "the bumped refund is mined"
    );
    assert_eq!(confirmations(&node, &child), 1, "the child is mined");

    // The renter's money is back: the candidate's output and O_1, less the refund's fee
    // and the anchor, at the renter's refund script.
    let out = node.rpc_ok("gettxout", json!([rf_txid.to_string(), 0]));
    let expected = AMOUNT - CANDIDATE_FEE + AMOUNT - REFUND_FEE - REFUND_ANCHOR_VALUE;
    assert_eq!(btc_to_sat(&out["value"]), expected.to_sat(), "{out}");
    assert_eq!(
        out["scriptPubKey"]["hex"],
        hex::encode(c.renter.payout.as_bytes())
    );
    let row = wait_until("audit 0 settled", WAIT, || {
        let row = tower.audits(&id)["audits"][0].clone();
        (row["outcome"] == "refunded").then_some(row)
    });
    assert_eq!(row["settled_by"], rf_txid.to_string(), "{row}");
}
