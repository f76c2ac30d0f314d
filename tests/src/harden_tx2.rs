//! Harness for the TX2 broadcast rule tests (issue 15, item 1): a real renter plugin runs
//! the download against a real farmer plugin, then misbehaves on the chain the way a
//! hostile renter could: it double-spends its own unconfirmed TX1 with the keys of its
//! wallet (derived here from its seed file), or lets TX1 sit unmined. The helpers read
//! the farmer's and the renter's `dstore-status` and scan the chain for any spend of TX1.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::Duration;

use bitcoin::bip32::{DerivationPath, Xpriv};
use bitcoin::consensus::encode::{deserialize_hex, serialize_hex};
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{Message, SecretKey, SECP256K1};
use bitcoin::sighash::SighashCache;
use bitcoin::transaction::Version;
use bitcoin::{
    absolute::LockTime, Amount, CompressedPublicKey, EcdsaSighashType, OutPoint, ScriptBuf,
    Sequence, Transaction, TxIn, TxOut, Txid, Witness,
};
use serde_json::{json, Value};

use crate::market::Market;
use crate::{bins, wait_until, BitcoinNode};

/// How long a test waits for the farmer to act on a block.
pub const FARMER_WAIT: Duration = Duration::from_secs(60);

/// How long a download may take to reach TX1 or the TX3 signature (the first run of the
/// test binary generates the CRS for TX2's shape).
pub const DOWNLOAD_WAIT: Duration = Duration::from_secs(900);

/// Fee of the renter's double-spend of TX1 (well above TX1's, as full-RBF requires).
const DOUBLE_SPEND_FEE: Amount = Amount::from_sat(50_000);

/// Starts `dstore-download` of contract `id` in the background (bitcoin-cli as a child
/// process): the test drives the chain meanwhile. Wait for it with [`finish`].
pub fn start_download(m: &Market, id: &str, output: &Path) -> Child {
    let port = m.renter().rpc_url().rsplit(':').next().unwrap().to_string();
    Command::new(bins::bitcoin_cli())
        .arg("-regtest")
        .arg(format!("-rpcport={port}"))
        .arg(format!(
            "-rpccookiefile={}",
            m.renter().cookie_path().display()
        ))
        .arg("-rpcclienttimeout=0")
        .args(["dstore-download", id, output.to_str().expect("utf-8 path")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run bitcoin-cli dstore-download")
}

/// Ends a background download started by [`start_download`] (its outcome does not matter
/// to these tests: they judge the chain and the farmer).
pub fn finish(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

pub fn farmer_status(m: &Market, id: &str) -> Value {
    m.farmer().call_ok("dstore-status", json!([id]))
}

/// The renter's record of its latest download of contract `id`, once it started one.
pub fn latest_download(m: &Market, id: &str) -> Option<Value> {
    let status = m.renter().call_ok("dstore-status", json!([id]));
    status["downloads"].as_array()?.last().cloned()
}

/// Like [`latest_download`], for a download known to exist.
pub fn renter_download(m: &Market, id: &str) -> Value {
    latest_download(m, id).expect("the renter started a download")
}

/// Waits until the farmer holds the claim of contract `id` back (TX2 and TX3 stored,
/// TX1 not deep enough); returns its status.
pub fn wait_for_hold(m: &Market, id: &str) -> Value {
    wait_until("the farmer holding its claim back", DOWNLOAD_WAIT, || {
        let s = farmer_status(m, id);
        (s["phase"] == "download awaiting_tx1" && s["claim"].is_object()).then_some(s)
    })
}

/// Waits until the farmer checked the broadcast rule at tip `height` or later, with its
/// claim still on hold; returns its status.
pub fn wait_for_check_at(m: &Market, id: &str, height: u64) -> Value {
    wait_until(
        &format!("the farmer's claim check at height {height}"),
        FARMER_WAIT,
        || {
            let s = farmer_status(m, id);
            let checked = s["claim"]["checked_height"].as_u64()?;
            (s["phase"] == "download awaiting_tx1" && checked >= height).then_some(s)
        },
    )
}

/// Waits until the farmer's download of contract `id` is in `phase` (e.g. "abandoned").
pub fn wait_for_phase(m: &Market, id: &str, phase: &str) -> Value {
    let want = format!("download {phase}");
    wait_until(&format!("farmer phase {want}"), FARMER_WAIT, || {
        let s = farmer_status(m, id);
        (s["phase"] == want.as_str()).then_some(s)
    })
}

/// Every transaction that spends an output of `tx1` in the mempool or in a block at
/// `from_height` or above.
pub fn spends_of(node: &BitcoinNode, tx1: &Transaction, from_height: u64) -> Vec<Txid> {
    let txid = tx1.compute_txid();
    let outpoints: Vec<Value> = (0..tx1.output.len())
        .map(|vout| json!({"txid": txid.to_string(), "vout": vout}))
        .collect();
    let mut spends: Vec<Txid> = node
        .rpc_ok("gettxspendingprevout", json!([outpoints]))
        .as_array()
        .expect("gettxspendingprevout array")
        .iter()
        .filter_map(|e| e["spendingtxid"].as_str()?.parse().ok())
        .collect();
    for height in from_height..=node.block_count() {
        let hash = node.rpc_ok("getblockhash", json!([height]));
        let block = node.rpc_ok("getblock", json!([hash, 2]));
        for tx in block["tx"].as_array().expect("block transactions") {
            let spends_tx1 = tx["vin"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|i| i["txid"] == txid.to_string());
            if spends_tx1 {
                spends.push(tx["txid"].as_str().unwrap().parse().unwrap());
            }
        }
    }
    spends
}

/// A transaction by txid from the node (mempool or chain; the test node has txindex).
pub fn transaction(node: &BitcoinNode, txid: &str) -> Transaction {
    let hex = node.rpc_ok("getrawtransaction", json!([txid, false]));
    deserialize_hex(hex.as_str().expect("hex")).expect("transaction")
}

/// True if the node knows `txid` (mempool or chain).
pub fn known(node: &BitcoinNode, txid: &str) -> bool {
    node.rpc("getrawtransaction", json!([txid, false])).is_ok()
}

/// Keeps `txid` in the mempool but out of every block the test mines (a TX1 whose
/// renter lets it sit), or lets it be mined again (`excluded` false).
pub fn exclude_from_blocks(node: &BitcoinNode, txid: &Txid, excluded: bool) {
    let delta: i64 = if excluded { -100_000_000 } else { 100_000_000 };
    node.rpc_ok("prioritisetransaction", json!([txid.to_string(), 0, delta]));
}

/// The renter double-spends its own TX1: every input of TX1, signed with the renter
/// wallet's keys (BIP84 from the seed in `renter_datadir`), paid to the burn address at a
/// higher fee. Returns the replacement's txid once bitcoind accepted it.
pub fn double_spend(node: &BitcoinNode, renter_datadir: &Path, tx1: &Transaction) -> Txid {
    let keys = wallet_keys(renter_datadir);
    let prevouts: Vec<TxOut> = tx1
        .input
        .iter()
        .map(|i| {
            transaction(node, &i.previous_output.txid.to_string()).output
                [i.previous_output.vout as usize]
                .clone()
        })
        .collect();
    let total: Amount = prevouts.iter().map(|o| o.value).sum();
    let mut tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: tx1
            .input
            .iter()
            .map(|i| TxIn {
                previous_output: i.previous_output,
                script_sig: ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::new(),
            })
            .collect(),
        output: vec![TxOut {
            value: total - DOUBLE_SPEND_FEE,
            script_pubkey: BitcoinNode::burn_address().script_pubkey(),
        }],
    };
    let mut witnesses = Vec::new();
    let mut cache = SighashCache::new(&tx);
    for (index, prevout) in prevouts.iter().enumerate() {
        let secret = keys
            .iter()
            .find(|k| p2wpkh(k) == prevout.script_pubkey)
            .unwrap_or_else(|| panic!("no renter key for TX1 input {index}"));
        let sighash = cache
            .p2wpkh_signature_hash(
                index,
                &prevout.script_pubkey,
                prevout.value,
                EcdsaSighashType::All,
            )
            .expect("sighash");
        let signature = bitcoin::ecdsa::Signature::sighash_all(
            SECP256K1.sign_ecdsa(&Message::from_digest(sighash.to_byte_array()), secret),
        );
        witnesses.push(Witness::p2wpkh(&signature, &secret.public_key(SECP256K1)));
    }
    for (input, witness) in tx.input.iter_mut().zip(witnesses) {
        input.witness = witness;
    }
    let txid = node.rpc_ok("sendrawtransaction", json!([serialize_hex(&tx)]));
    txid.as_str().expect("txid").parse().expect("txid")
}

fn p2wpkh(secret: &SecretKey) -> ScriptBuf {
    ScriptBuf::new_p2wpkh(&CompressedPublicKey(secret.public_key(SECP256K1)).wpubkey_hash())
}

/// The first keys of the renter wallet's receive and change chains (its descriptors are
/// `wpkh(<master>/84'/1'/0'/{0,1}/*)` on the test networks).
fn wallet_keys(datadir: &Path) -> Vec<SecretKey> {
    let text = std::fs::read_to_string(datadir.join("regtest").join("seed")).expect("seed");
    let seed = hex::decode(text.trim()).expect("hex seed");
    let master = Xpriv::new_master(bitcoin::Network::Regtest, &seed).expect("master key");
    let mut keys = Vec::new();
    for chain in 0..2 {
        for index in 0..50 {
            let path =
                DerivationPath::from_str(&format!("m/84'/1'/0'/{chain}/{index}")).expect("path");
            keys.push(
                master
                    .derive_priv(SECP256K1, &path)
                    .expect("derive")
                    .private_key,
            );
        }
    }
    keys
}

/// The renter's TX1 of its latest download of contract `id`, once it has one.
pub fn renter_tx1(m: &Market, id: &str) -> Transaction {
    let txid = wait_until("the renter's TX1 broadcast", DOWNLOAD_WAIT, || {
        let txid = latest_download(m, id)?["tx1"].as_str()?.to_string();
        known(&m.node, &txid).then_some(txid)
    });
    transaction(&m.node, &txid)
}

/// The TX1 output TX2 spends: the one that is not the renter's change (it pays the
/// contract's P2SH script).
pub fn contract_outpoint(tx1: &Transaction) -> OutPoint {
    let vout = tx1
        .output
        .iter()
        .position(|o| o.script_pubkey.is_p2sh())
        .expect("TX1 pays the contract's P2SH") as u32;
    OutPoint::new(tx1.compute_txid(), vout)
}
