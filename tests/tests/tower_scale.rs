//! dstore-watchtower at scale (issue 21), on a pruned bitcoind (`-prune=1 -fastprune`,
//! pruned by hand with `pruneblockchain`): a tower down for longer than the node keeps
//! blocks recovers its contracts' state from the UTXO set and the mempool instead of the
//! blocks it can no longer fetch, still fires a due refund, and never fires one whose
//! input was spent while it was away.

use std::time::Duration;

use bitcoin::{OutPoint, Transaction, TxOut};
use dstore_tests::funding::{broadcast, Funder};
use dstore_tests::parties::Parties;
use dstore_tests::{wait_until, BitcoinNode, TowerProcess};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::tower::Contract;
use serde_json::{json, Value};

/// Manual pruning (`pruneblockchain`) with small block files, so that a regtest chain of
/// a few hundred blocks can lose its first file.
const PRUNED: &[&str] = &["-prune=1", "-fastprune"];

/// A funded download contract (`tower.rs`'s fixture) whose TX1 confirmed at `tx1_height`.
struct Pruned {
    contract: Contract,
    tx1_height: u32,
}

impl Pruned {
    /// TX1's refund opens `t1_ahead` blocks above the tip, TX2's Δ blocks after TX2.
    fn new(
        node: &BitcoinNode,
        funder: &mut Funder,
        rng: &mut StdRng,
        t1_ahead: u32,
        delta: u16,
    ) -> Self {
        let parties = Parties::new(node, rng, t1_ahead, delta);
        let (tx1_outpoint, tx1_height) = fund(node, funder, parties.contract.tx1_output().unwrap());
        Pruned {
            contract: Contract::on_tx1(parties, rng, tx1_outpoint),
            tx1_height,
        }
    }

    /// What the renter's plugin registers, looking back from TX1's block as it does.
    fn renter_registration(&self) -> Value {
        self.contract
            .renter_registration_from(Some(self.tx1_height))
    }
}

/// Broadcasts and mines a transaction paying `output`; a pruned node has no -txindex, so
/// its confirmation is read from the UTXO set. Returns the paid outpoint and its height.
fn fund(node: &BitcoinNode, funder: &mut Funder, output: TxOut) -> (OutPoint, u32) {
    let tx = funder.build(output);
    broadcast(node, &tx).expect("funding transaction accepted");
    node.mine(1);
    let outpoint = OutPoint::new(tx.compute_txid(), 0);
    assert_eq!(utxo_confirmations(node, &outpoint), Some(1));
    (outpoint, node.block_count() as u32)
}

/// Confirmations of an unspent output in the chain, `None` if spent or unknown.
fn utxo_confirmations(node: &BitcoinNode, outpoint: &OutPoint) -> Option<u64> {
    let coin = node.rpc_ok(
        "gettxout",
        json!([outpoint.txid.to_string(), outpoint.vout, false]),
    );
    coin["confirmations"].as_u64()
}

fn in_mempool(node: &BitcoinNode, tx: &Transaction) -> bool {
    node.rpc("getmempoolentry", json!([tx.compute_txid().to_string()]))
        .is_ok()
}

fn prune_height(node: &BitcoinNode) -> u64 {
    node.rpc_ok("getblockchaininfo", json!([]))["pruneheight"]
        .as_u64()
        .expect("a pruned node reports its prune height")
}

/// Mines and prunes until the node no longer has the block after `height` (bitcoind keeps
/// the last 288 blocks and prunes whole block files); returns the new prune height.
fn prune_past(node: &BitcoinNode, height: u64) -> u64 {
    for _ in 0..30 {
        node.mine(100);
        // Refused while the chain is shorter than regtest's prune-after height (100 with
        // -fastprune): the next round mines more.
        let _ = node.rpc("pruneblockchain", json!([node.block_count()]));
        let pruned_below = prune_height(node);
        if pruned_below > height + 1 {
            return pruned_below;
        }
    }
    panic!("the node did not prune past height {height}");
}

fn tx_state(tower: &TowerProcess, id: &str, name: &str) -> Value {
    tower.tx(id, name)
}

/// A renter's contract registered with a tower on a pruned node, the tower stopped, and
/// the chain mined and pruned past the tower's last block while it was down.
fn tower_down_past_the_prune_depth(
    seed: u64,
    while_down: impl FnOnce(&BitcoinNode, &Contract),
) -> (BitcoinNode, Contract, TowerProcess, u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let node = BitcoinNode::start_with(PRUNED);
    let mut funder = Funder::new(&node, 2);
    let pruned = Pruned::new(&node, &mut funder, &mut rng, 30, 5);
    let mut tower = TowerProcess::start_with(&node, &["--poll-seconds=1"]);
    let reply = tower.call_ok("tower-register", json!([pruned.renter_registration()]));
    let contract = pruned.contract;
    assert_eq!(reply["result"], "registered");
    let last = node.block_count();
    tower.wait_for_tip(last);
    tower.stop().expect("the tower was running");
    while_down(&node, &contract);
    let pruned_below = prune_past(&node, last);
    let gone = node.rpc(
        "getblock",
        json!([node.rpc_ok("getblockhash", json!([last + 1]))]),
    );
    assert!(gone.is_err(), "the block after the tower's tip is pruned");
    (node, contract, tower, pruned_below)
}

#[test]
fn tower_scale_pruned_node_tower_down_past_the_prune_depth_still_fires_a_due_refund() {
    let (node, contract, mut tower, pruned_below) =
        tower_down_past_the_prune_depth(2101, |_, _| {});
    let t1 = u64::from(contract.parties.contract.refund_height);
    assert!(
        node.block_count() > t1,
        "the TX1 refund fell due while the tower was down"
    );
    assert!(!in_mempool(&node, &contract.tx1_refund));

    tower.restart();
    wait_until(
        "the TX1 refund in the mempool",
        Duration::from_secs(60),
        || in_mempool(&node, &contract.tx1_refund).then_some(()),
    );
    node.mine(1);
    let refund_output = OutPoint::new(contract.tx1_refund.compute_txid(), 0);
    assert_eq!(utxo_confirmations(&node, &refund_output), Some(1));
    tower.wait_for_tip(node.block_count());
    let refund = tx_state(&tower, &contract.id_hex(), "tx1-refund");
    assert_eq!(refund["status"]["state"], "confirmed", "{refund}");
    assert_eq!(refund["last_error"], Value::Null, "{refund}");

    // TX1:0 was found unspent in the UTXO set; TX2:0 (TX2 never broadcast) is not in it.
    let log = tower.log();
    assert!(
        log.contains("bitcoind has pruned blocks the tower missed"),
        "{log}"
    );
    assert!(
        log.contains("recovered without the pruned blocks: 1 watched outpoints unspent (gettxout)"),
        "{log}"
    );
    assert!(
        log.contains(&format!("replaying the blocks from {pruned_below}")),
        "{log}"
    );
    assert!(log.contains("caught up with bitcoind's tip"), "{log}");
}

#[test]
fn tower_scale_pruned_node_tx1_spent_while_the_tower_was_away_is_never_refunded() {
    // TX2 spends TX1:0 right after the tower stops; its block is pruned before it is back.
    let (node, contract, mut tower, _) = tower_down_past_the_prune_depth(2102, |node, contract| {
        broadcast(node, &contract.tx2).expect("TX2 accepted");
        node.mine(1);
    });
    let tx2_output = OutPoint::new(contract.tx2.compute_txid(), 0);
    assert!(utxo_confirmations(&node, &tx2_output).is_some());

    tower.restart();
    // TX2's depth in the UTXO set starts Δ: the TX2 refund is long due and goes out.
    wait_until(
        "the TX2 refund in the mempool",
        Duration::from_secs(60),
        || in_mempool(&node, &contract.tx2_refund).then_some(()),
    );
    // The TX1 refund, whose input is gone, is never broadcast, block after block.
    for _ in 0..3 {
        node.mine(1);
        tower.wait_for_tip(node.block_count());
    }
    let id = contract.id_hex();
    let refund = tx_state(&tower, &id, "tx1-refund");
    assert_eq!(refund["status"]["state"], "spent_unseen", "{refund}");
    assert_eq!(
        refund["status"]["outpoint"],
        contract.tx1_outpoint.to_string(),
        "{refund}"
    );
    assert_eq!(refund["broadcasts"], 0, "{refund}");
    assert!(!in_mempool(&node, &contract.tx1_refund));
    let tx2_refund = tx_state(&tower, &id, "tx2-refund");
    assert_eq!(tx2_refund["status"]["state"], "confirmed", "{tx2_refund}");

    // f was in TX2's witness, in a pruned block: the tower says it cannot have it.
    let status = tower.status(&id);
    assert_eq!(status["key"], Value::Null, "{status}");
    let note = status["extract_note"].as_str().unwrap_or_default();
    assert!(note.contains("cannot be extracted"), "{status}");
    let log = tower.log();
    assert!(
        log.contains("1 spent by an unknown transaction in a pruned block"),
        "{log}"
    );
    assert!(log.contains("the spender is unknown"), "{log}");
}

#[test]
fn tower_scale_pruned_node_registration_looking_back_into_pruned_blocks_recovers_from_the_utxo_set()
{
    // TX2 confirmed long ago, in a block the node has pruned, when the contract is
    // registered with a look-back from TX1's block.
    let mut rng = StdRng::seed_from_u64(2103);
    let node = BitcoinNode::start_with(PRUNED);
    let mut funder = Funder::new(&node, 2);
    let pruned = Pruned::new(&node, &mut funder, &mut rng, 400, 5);
    let contract = &pruned.contract;
    broadcast(&node, &contract.tx2).expect("TX2 accepted");
    node.mine(1);
    let pruned_below = prune_past(&node, u64::from(pruned.tx1_height));
    let tower = TowerProcess::start_with(&node, &["--poll-seconds=1"]);
    let reply = tower.call_ok("tower-register", json!([pruned.renter_registration()]));
    assert_eq!(reply["result"], "registered");

    // TX2's depth in the UTXO set starts Δ: its refund goes out without TX2's block.
    wait_until(
        "the TX2 refund in the mempool",
        Duration::from_secs(60),
        || in_mempool(&node, &contract.tx2_refund).then_some(()),
    );
    node.mine(1);
    tower.wait_for_tip(node.block_count());
    let refund = tx_state(&tower, &contract.id_hex(), "tx2-refund");
    assert_eq!(refund["status"]["state"], "confirmed", "{refund}");
    let log = tower.log();
    assert!(
        log.contains("the registration asks to look back into pruned blocks"),
        "{log}"
    );
    assert!(
        !log.contains("look-back after registration failed"),
        "pruned_below {pruned_below}: {log}"
    );
}
