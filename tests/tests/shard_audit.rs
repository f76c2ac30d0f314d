//! Issue 18 with audits: every shard of a file is an ordinary contract, so `audits` on a
//! sharded `dstore-open` gives each shard its own audit contract (its own TX_A, stake and
//! candidates), set up in parallel from one wallet without two TX_A spending one coin.

use std::collections::HashSet;
use std::path::PathBuf;

use bitcoin::{Amount, TxOut};
use dstore_plugin::config::BitcoindAuth;
use dstore_plugin::wallet::{PluginWallet, RpcTarget};
use dstore_protocol::network::Network;
use dstore_tests::market::finish_audit_setup;
use dstore_tests::node::BitcoinNode;
use dstore_tests::parties::seeded_bytes;
use dstore_tests::shard_fixture::{field, open_params, shards_of, ShardFarmerSpec, ShardNet};
use serde_json::json;

/// The e2e tests' CRS cache (the renter makes no download here, but shares the path).
fn crs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-crs")
}

#[test]
fn shard_with_audits_each_shard_sets_up_its_own_audit_contract() {
    let net = ShardNet::start(&crs_dir(), &vec![ShardFarmerSpec::default(); 3], 80 << 20);
    let data = seeded_bytes(0x5a, 700_000);
    let file = net.file("audited.bin", &data);
    let mut params = open_params(&net.urls(&[0, 1, 2]), &file, 3, 2);
    params["audits"] = json!(2);
    params["audit_period_blocks"] = json!(12);
    params["audit_amount_sat"] = json!(20_000);
    let reply = net.renter().call_ok("dstore-open", params);
    let shards = shards_of(&reply);
    assert_eq!(shards.len(), 3, "{reply}");
    let mut funding = HashSet::new();
    let mut spent = HashSet::new();
    for shard in &shards {
        let contract = field(shard, "contract_id");
        let id = finish_audit_setup(&net.node, json!({ "contract_id": contract }), |id| {
            net.status(id)
        })
        .unwrap_or_else(|e| panic!("shard {shard}: the audit setup failed: {e}"));
        let audits = net.status(&id)["audits"].clone();
        assert_eq!(audits["phase"], "complete", "{audits}");
        assert_eq!(audits["audits"], 2, "{audits}");
        assert_eq!(audits["swapped"], 2 * 8, "{audits}");
        assert!(audits["stake_sat"].as_u64() >= Some(20_000 / 8), "{audits}");
        let txid = audits["funding_txid"].as_str().expect("TX_A").to_string();
        assert!(net.node.confirmations(&txid) >= 1, "TX_A {txid} is mined");
        let tx_a = net
            .node
            .rpc_ok("getrawtransaction", json!([txid.clone(), true]));
        for input in tx_a["vin"].as_array().expect("inputs") {
            let coin = format!("{}:{}", input["txid"], input["vout"]);
            assert!(spent.insert(coin.clone()), "two TX_A spend {coin}");
        }
        funding.insert(txid);
    }
    assert_eq!(funding.len(), 3, "one TX_A per shard contract");
}

/// Shard contracts build their TX_A (and shard downloads their TX1) at the same time, and
/// a TX_A is stored and sent to the farmer before it is broadcast: until then bitcoind
/// still shows its coins unspent. The wallet keeps them out of every other build.
#[test]
fn shard_parallel_builds_from_one_wallet_never_spend_one_coin_twice() {
    let node = BitcoinNode::start();
    let dir = tempfile::tempdir().unwrap();
    let rpc = RpcTarget {
        url: node.rpc_url(),
        auth: BitcoindAuth::Cookie(node.cookie_path()),
    };
    let wallet = PluginWallet::open(dir.path(), Network::Regtest, rpc).expect("wallet");
    let address = wallet.new_address().expect("address").to_string();
    node.mine_to(3, &address);
    node.mine(100);
    let pay = || {
        vec![TxOut {
            value: Amount::from_sat(1_000_000),
            script_pubkey: BitcoinNode::burn_address().script_pubkey(),
        }]
    };
    let built: Vec<_> = (0..3)
        .map(|_| wallet.fund_outputs(&pay(), None).expect("build"))
        .collect();
    let mut coins = HashSet::new();
    for funded in &built {
        for input in &funded.tx.input {
            assert!(
                coins.insert(input.previous_output),
                "two unbroadcast builds spend {}",
                input.previous_output
            );
        }
    }
    for funded in &built {
        wallet
            .broadcast(&funded.tx)
            .expect("each build is accepted");
    }
    node.mine(1);
    for funded in &built {
        let txid = funded.tx.compute_txid().to_string();
        assert_eq!(node.confirmations(&txid), 1, "{txid} is mined");
    }
}
