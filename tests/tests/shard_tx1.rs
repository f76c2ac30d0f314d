//! Issue 18's last piece: one TX1 funds the K shard downloads of a file download (one
//! contract output per farmer), each farmer is then paid through its own TX2/TX3; a farmer
//! gone after that TX1 is refunded through its own output after T1 while the file job
//! takes another shard; a renter killed between storing the shared TX1 and broadcasting
//! it finishes after its restart with that same TX1, each farmer paid once.

use std::collections::HashSet;
use std::path::PathBuf;

use dstore_tests::parties::seeded_bytes;
use dstore_tests::shard_fixture::{
    field, file_id_of, shards_of, ShardFarmerSpec, ShardNet, SHARD_WAIT,
};
use dstore_tests::wait_until;
use serde_json::{json, Value};

/// The farmers accept shard contracts up to this size.
const MAX_FILE_BYTES: u64 = 80 << 20;

/// The e2e tests' CRS cache: the same TX2 shape, so the renter's CRS is generated once.
fn crs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-crs")
}

fn honest(n: usize) -> Vec<ShardFarmerSpec> {
    vec![ShardFarmerSpec::default(); n]
}

/// The contract id of shard `index` in an open reply.
fn contract_of(value: &Value, index: u64) -> String {
    let shard = shards_of(value)
        .into_iter()
        .find(|s| s["index"] == index)
        .unwrap_or_else(|| panic!("no shard {index} in {value}"));
    field(&shard, "contract_id")
}

/// The file download driven to its end, checked byte-exact; its reply.
fn download_exact(net: &ShardNet, file_id: &str, data: &[u8]) -> Value {
    let out = net.dir.path().join("out");
    let reply = net
        .download(file_id, &out)
        .unwrap_or_else(|e| panic!("dstore-download {file_id}: {e}"));
    assert_eq!(reply["status"], "done", "{reply}");
    let got = std::fs::read(&out).expect("the output is written");
    assert!(
        got == data,
        "the file comes back byte-exact ({} bytes)",
        got.len()
    );
    reply
}

/// The decoded transaction `txid` (the test node keeps a txindex).
fn decoded(net: &ShardNet, txid: &str) -> Value {
    net.node.rpc_ok("getrawtransaction", json!([txid, true]))
}

/// The outpoint (txid, vout) the first input of `txid` spends.
fn spent_by(net: &ShardNet, txid: &str) -> (String, u64) {
    let tx = decoded(net, txid);
    let input = &tx["vin"][0];
    (field(input, "txid"), input["vout"].as_u64().expect("vout"))
}

/// Checks that the farmer holding `contract` was paid once, by the TX2/TX3 in `shard`.
fn paid_once(net: &ShardNet, farmer: usize, shard: &Value) {
    let contract = field(shard, "contract_id");
    let status = net
        .farmer(farmer)
        .call_ok("dstore-status", json!([contract]));
    let payouts = status["payouts"].as_array().expect("payouts");
    assert_eq!(payouts.len(), 1, "farmer {farmer} paid once: {status}");
    assert_eq!(payouts[0]["tx2"], shard["tx2"], "{status}");
    assert_eq!(payouts[0]["tx3"], shard["tx3"], "{status}");
}

/// Mines until the chain reaches `height`.
fn mine_to(net: &ShardNet, height: u64) {
    let tip = net.node.block_count();
    if height > tip {
        net.node.mine((height - tip) as u32);
    }
}

/// Checks that one TX1 paid every shard of `reply` through its own output, spent by that
/// shard's TX2, and that each farmer was paid once; returns that TX1's id.
fn one_tx1_paid_every_shard(net: &ShardNet, reply: &Value) -> String {
    let shards = shards_of(reply);
    let tx1s: HashSet<String> = shards.iter().map(|s| field(s, "tx1_txid")).collect();
    assert_eq!(tx1s.len(), 1, "one TX1 for every shard: {reply}");
    let tx1 = tx1s.into_iter().next().expect("one");
    let mut vouts = HashSet::new();
    for shard in &shards {
        let (spent, vout) = spent_by(net, &field(shard, "tx2"));
        assert_eq!(spent, tx1, "the shard's TX2 spends the shared TX1: {shard}");
        assert_eq!(shard["tx1_vout"], vout, "its own output: {shard}");
        vouts.insert(vout);
        let farmer = net.farmer_at(&farmer_url(net, reply, shard));
        paid_once(net, farmer, shard);
    }
    assert_eq!(vouts.len(), shards.len(), "one output per farmer: {reply}");
    let outputs = decoded(net, &tx1)["vout"]
        .as_array()
        .expect("outputs")
        .clone();
    let contract_outputs = outputs
        .iter()
        .filter(|o| o["scriptPubKey"]["type"] == "scripthash")
        .count();
    assert_eq!(
        contract_outputs,
        shards.len(),
        "TX1 pays exactly these contracts: {outputs:?}"
    );
    tx1
}

/// The peer URL of the farmer holding `shard` (from the file status).
fn farmer_url(net: &ShardNet, reply: &Value, shard: &Value) -> String {
    let status = net.status(&field(reply, "file_id"));
    let slot = shards_of(&status)
        .into_iter()
        .find(|s| s["contract_id"] == shard["contract_id"])
        .unwrap_or_else(|| panic!("shard {shard} in {status}"));
    field(&slot, "farmer")
}

#[test]
fn shard_download_funds_every_shard_from_one_tx1() {
    let net = ShardNet::start(&crs_dir(), &honest(3), MAX_FILE_BYTES);
    let data = seeded_bytes(191, 700_001);
    let input = net.file("in", &data);
    let opened = net.open_on(&[0, 1, 2], &input, 2);
    let file_id = file_id_of(&opened);

    let done = download_exact(&net, &file_id, &data);
    assert_eq!(shards_of(&done).len(), 2, "K = 2 shards: {done}");
    let tx1 = one_tx1_paid_every_shard(&net, &done);
    assert_eq!(done["tx1_txids"], json!([tx1]), "{done}");
    assert!(net.node.confirmations(&tx1) > 0, "TX1 is mined");
}

#[test]
fn shard_shared_tx1_farmer_gone_after_funding_is_refunded() {
    // Farmer 1 disappears as soon as it learns of TX1 (which is out by then): shards 0
    // and 1 are funded by one TX1, shard 1 fails, shard 2 takes its place.
    let mut specs = honest(3);
    specs[1].fault = Some("exit-after-tx1");
    let mut net = ShardNet::start(&crs_dir(), &specs, MAX_FILE_BYTES);
    let data = seeded_bytes(192, 500_003);
    let input = net.file("in", &data);
    let opened = net.open_on(&[0, 1, 2], &input, 2);
    let file_id = file_id_of(&opened);
    let gone = contract_of(&opened, 1);

    let done = download_exact(&net, &file_id, &data);
    let used: Vec<u64> = shards_of(&done)
        .iter()
        .map(|s| s["index"].as_u64().unwrap())
        .collect();
    assert_eq!(used, vec![0, 2], "shard 2 replaced shard 1: {done}");
    let failures = done["failures"].as_array().expect("failures");
    assert!(
        failures
            .iter()
            .any(|f| f.as_str().is_some_and(|f| f.starts_with("shard 1"))),
        "{done}"
    );
    let shard0 = shards_of(&done)
        .into_iter()
        .find(|s| s["index"] == 0)
        .expect("shard 0");
    let shard2 = shards_of(&done)
        .into_iter()
        .find(|s| s["index"] == 2)
        .expect("shard 2");
    let shared = field(&shard0, "tx1_txid");
    assert_ne!(
        field(&shard2, "tx1_txid"),
        shared,
        "the replacement funds its own TX1: {done}"
    );

    // Shard 1's download was funded by the same TX1 and has its money there now.
    let status = net.status(&gone);
    let d = &status["downloads"][0];
    assert_eq!(d["phase"], "tx1_funded", "{status}");
    assert_eq!(
        d["tx1"],
        shared.as_str(),
        "one TX1 for shards 0 and 1: {status}"
    );
    net.kill_farmer(1);

    // After T1 its own output of the shared TX1 comes back to the renter.
    let early = net.renter().call_ok("dstore-refund", json!([gone]));
    assert_eq!(early["status"], "waiting", "{early}");
    mine_to(
        &net,
        early["refund_height"].as_u64().expect("refund height"),
    );
    let refund = net.renter().call_ok("dstore-refund", json!([gone]));
    assert_eq!(refund["status"], "broadcast", "{refund}");
    let refund_txid = field(&refund, "txid");
    let (spent, vout) = spent_by(&net, &refund_txid);
    assert_eq!(spent, shared, "the refund spends the shared TX1");
    let (_, served) = spent_by(&net, &field(&shard0, "tx2"));
    assert_ne!(vout, served, "not shard 0's output");
    let paid = &decoded(&net, &shared)["vout"][vout as usize];
    assert_eq!(
        paid["scriptPubKey"]["type"], "scripthash",
        "a contract output: {paid}"
    );
    net.node.mine(1);
    assert_eq!(
        net.node.confirmations(&refund_txid),
        1,
        "the refund is mined"
    );
    let again = net.renter().call_ok("dstore-refund", json!([gone]));
    assert_eq!(again["status"], "nothing", "{again}");
    paid_once(&net, 0, &shard0);
}

#[test]
fn shard_shared_tx1_survives_a_renter_kill_9() {
    let mut net = ShardNet::start(&crs_dir(), &honest(3), MAX_FILE_BYTES);
    let data = seeded_bytes(193, 600_007);
    let input = net.file("in", &data);
    let opened = net.open_on(&[0, 1, 2], &input, 2);
    let file_id = file_id_of(&opened);
    let contracts = [contract_of(&opened, 0), contract_of(&opened, 1)];

    // The renter stalls right after storing the shared TX1, before any broadcast.
    net.kill_renter();
    net.set_renter_fault(Some("stall-at-tx1-funded"));
    net.start_renter();
    let out = net.dir.path().join("out");
    let started = net
        .renter()
        .call(
            "dstore-download",
            json!([file_id, out.to_str().unwrap(), 1]),
        )
        .expect("dstore-download starts");
    assert_eq!(started["status"], "running", "{started}");
    let tx1 = wait_until(
        "both shard downloads stored with one TX1",
        SHARD_WAIT,
        || {
            let tx1s: Vec<Option<String>> = contracts
                .iter()
                .map(|c| {
                    let d = &net.status(c)["downloads"][0];
                    (d["phase"] == "tx1_funded").then(|| field(d, "tx1"))
                })
                .collect();
            match tx1s.as_slice() {
                [Some(a), Some(b)] if a == b => Some(a.clone()),
                _ => None,
            }
        },
    );
    assert!(
        net.node.rpc("getrawtransaction", json!([tx1])).is_err(),
        "TX1 was not broadcast before the kill"
    );
    net.kill_renter();

    // After the restart the stored TX1 goes out once and the file downloads.
    net.set_renter_fault(None);
    net.start_renter();
    let done = download_exact(&net, &file_id, &data);
    assert_eq!(
        one_tx1_paid_every_shard(&net, &done),
        tx1,
        "the stored TX1: {done}"
    );
    for contract in &contracts {
        let status = net.status(contract);
        let downloads = status["downloads"].as_array().expect("downloads");
        assert_eq!(downloads.len(), 1, "no second download: {status}");
        assert_eq!(downloads[0]["phase"], "done", "{status}");
    }
}
