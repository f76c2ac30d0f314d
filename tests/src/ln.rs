//! Lightning helpers for the functional tests: plugins with an embedded LDK node (`--lightning`), their funding, channels between them.
//!
//! Every helper drives the plugins through their `dstore-ln-*` methods and waits on state
//! (balances, channel flags), never on a sleep.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::node::BitcoinNode;
use crate::plugin::PluginProcess;
use crate::{ports, wait_until};

/// LDK keeps this much on-chain per anchor channel (its default `per_channel_reserve_sats`),
/// the opener for its channels and an LDK acceptor before it takes one.
pub const ANCHOR_RESERVE_SAT: u64 = 25_000;
/// Room for the funding transaction's fee on top of the capacity and the reserve.
const FUNDING_FEE_ROOM_SAT: u64 = 10_000;
/// How long LDK (polling bitcoind every 2 s) may take to see a block or a transaction.
const LN_SYNC: Duration = Duration::from_secs(120);

/// `["--lightning", "--ln-listen=127.0.0.1:<port>"]`.
pub fn ln_flags(port: u16) -> Vec<String> {
    vec![
        "--lightning".to_string(),
        format!("--ln-listen=127.0.0.1:{port}"),
    ]
}

/// Starts a plugin in `datadir` with an embedded Lightning node on a free port, plus `extra`.
pub fn start_ln_plugin(node: &BitcoinNode, datadir: &Path, extra: &[String]) -> PluginProcess {
    let mut args = ln_flags(free_port());
    args.extend(extra.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    PluginProcess::start_in(node, datadir, &args)
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    ports::free_ports(1)[0]
}

/// `dstore-ln-getinfo`.
pub fn ln_info(plugin: &PluginProcess) -> Value {
    plugin.call_ok("dstore-ln-getinfo", json!([]))
}

/// The plugin's Lightning node id (hex).
pub fn node_id(plugin: &PluginProcess) -> String {
    ln_info(plugin)["node_id"]
        .as_str()
        .expect("node_id")
        .to_string()
}

/// `node_id@host:port` of the plugin's Lightning node.
pub fn peer_uri(plugin: &PluginProcess) -> String {
    let info = ln_info(plugin);
    format!(
        "{}@{}",
        info["node_id"].as_str().expect("node_id"),
        info["addresses"][0].as_str().expect("a listening address")
    )
}

/// The Lightning wallet's spendable on-chain balance (sat).
pub fn spendable_onchain_sat(plugin: &PluginProcess) -> u64 {
    ln_info(plugin)["spendable_onchain_sat"]
        .as_u64()
        .expect("spendable_onchain_sat")
}

/// Waits until the plugin's Lightning node has synced to bitcoind's tip.
pub fn wait_ln_synced(node: &BitcoinNode, plugin: &PluginProcess) {
    let tip = node.block_count();
    wait_until("the Lightning node to reach the tip", LN_SYNC, || {
        (ln_info(plugin)["block_height"].as_u64()? >= tip).then_some(())
    });
}

/// Pays `sat` to the plugin's Lightning wallet: from the plugin wallet (funded with a
/// mined coinbase first if short), one confirmation, then waits until LDK can spend it.
pub fn fund_ln_wallet(node: &BitcoinNode, plugin: &PluginProcess, sat: u64) {
    let before = spendable_onchain_sat(plugin);
    fund_plugin_wallet(node, plugin, sat + FUNDING_FEE_ROOM_SAT);
    let address = plugin.call_ok("dstore-ln-newaddress", json!([]))["address"]
        .as_str()
        .expect("address")
        .to_string();
    let txid = plugin.call_ok("dstore-send", json!([address, sat_to_btc(sat)]));
    node.wait_for_tx(txid.as_str().expect("txid"), Duration::from_secs(30));
    node.mine(1);
    wait_until("the Lightning wallet's funds", LN_SYNC, || {
        (spendable_onchain_sat(plugin) >= before + sat).then_some(())
    });
}

/// Mines a coinbase to the plugin wallet (and 100 blocks to mature it) unless it already
/// holds `sat`.
fn fund_plugin_wallet(node: &BitcoinNode, plugin: &PluginProcess, sat: u64) {
    let balance = crate::node::btc_to_sat(&plugin.call_ok("dstore-getbalance", json!([])));
    if balance >= sat {
        return;
    }
    let address = plugin.call_ok("dstore-getnewaddress", json!([]));
    node.mine_to(1, address.as_str().expect("address"));
    node.mine(100);
    wait_until("the plugin wallet's coinbase", LN_SYNC, || {
        let balance = crate::node::btc_to_sat(&plugin.call_ok("dstore-getbalance", json!([])));
        (balance >= sat).then_some(())
    });
}

/// Opens a channel `payer` → `payee` of `capacity_sat`, pushing `push_sat` to the payee:
/// tops up both Lightning wallets when short (the capacity plus the anchor reserve for
/// the payer, the reserve for an LDK payee), connects, opens, mines 6 blocks and waits
/// until both sides see it usable. Returns the channel id (hex).
pub fn open_channel(
    node: &BitcoinNode,
    payer: &PluginProcess,
    payee: &PluginProcess,
    capacity_sat: u64,
    push_sat: u64,
) -> String {
    open_channel_with(node, payer, payee, capacity_sat, push_sat, false)
}

/// Like [`open_channel`], but an announced channel, which LDK forwards payments into: the
/// hop a router uses towards the farmer. Others learn it by gossip ([`wait_graph_channels`]).
pub fn open_announced_channel(
    node: &BitcoinNode,
    payer: &PluginProcess,
    payee: &PluginProcess,
    capacity_sat: u64,
) -> String {
    open_channel_with(node, payer, payee, capacity_sat, 0, true)
}

/// Waits until `plugin`'s Lightning node knows at least `count` announced channels.
pub fn wait_graph_channels(plugin: &PluginProcess, count: u64) {
    wait_until(
        &format!("{count} announced channels in the graph"),
        LN_SYNC,
        || (ln_info(plugin)["graph_channels"].as_u64()? >= count).then_some(()),
    );
}

fn open_channel_with(
    node: &BitcoinNode,
    payer: &PluginProcess,
    payee: &PluginProcess,
    capacity_sat: u64,
    push_sat: u64,
    announce: bool,
) -> String {
    let payer_needs = capacity_sat + ANCHOR_RESERVE_SAT + FUNDING_FEE_ROOM_SAT;
    let payer_has = spendable_onchain_sat(payer);
    if payer_has < payer_needs {
        fund_ln_wallet(node, payer, payer_needs - payer_has);
    }
    let payee_has = spendable_onchain_sat(payee);
    if payee_has < ANCHOR_RESERVE_SAT {
        fund_ln_wallet(node, payee, 2 * ANCHOR_RESERVE_SAT);
    }
    payer.call_ok("dstore-ln-connect", json!([peer_uri(payee)]));
    let opened = payer.call_ok(
        "dstore-ln-openchannel",
        json!([node_id(payee), capacity_sat, push_sat, announce]),
    );
    let channel_id = opened["channel_id"]
        .as_str()
        .expect("channel_id")
        .to_string();
    let funding = opened["funding_txid"]
        .as_str()
        .expect("funding_txid")
        .to_string();
    node.wait_for_tx(&funding, Duration::from_secs(30));
    node.mine(6);
    wait_usable(payer, &channel_id);
    wait_usable(payee, &channel_id);
    channel_id
}

/// The channel as `dstore-ln-listchannels` shows it, if listed.
pub fn channel(plugin: &PluginProcess, channel_id: &str) -> Option<Value> {
    plugin
        .call_ok("dstore-ln-listchannels", json!([]))
        .as_array()
        .expect("channel list")
        .iter()
        .find(|c| c["channel_id"] == channel_id)
        .cloned()
}

/// Waits until the plugin lists the channel as usable.
pub fn wait_usable(plugin: &PluginProcess, channel_id: &str) {
    wait_until(&format!("channel {channel_id} usable"), LN_SYNC, || {
        let c = channel(plugin, channel_id)?;
        (c["is_usable"] == true).then_some(())
    });
}

/// Satoshis as a BTC amount string ("0.00100000").
pub fn sat_to_btc(sat: u64) -> String {
    format!("{}.{:08}", sat / 100_000_000, sat % 100_000_000)
}
