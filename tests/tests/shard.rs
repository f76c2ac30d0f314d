//! Issue 18: a file erasure-coded into N shards (any K rebuild it), each shard an ordinary
//! contract with its own farmer, on one regtest bitcoind with several farmer plugins. The
//! file comes back byte-exact with farmers gone or lying, `dstore-repair` moves a lost
//! shard to a new farmer, a renter killed mid-upload resumes every shard, and bad
//! parameters create nothing.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dstore_tests::parties::seeded_bytes;
use dstore_tests::shard_fixture::{
    field, file_id_of, open_params, shards_of, ShardFarmerSpec, ShardNet, SHARD_WAIT,
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

/// Checks a sharded open's reply: N shards, indexes 0..N in order, each on the farmer
/// listed at its position, stored, with distinct contracts.
fn check_opened(net: &ShardNet, reply: &Value, farmers: &[usize], needed: u64) {
    assert_eq!(file_id_of(reply).len(), 64, "a file id: {reply}");
    assert_eq!(reply["needed"], needed, "{reply}");
    assert_eq!(reply["total"], farmers.len(), "{reply}");
    let shards = shards_of(reply);
    assert_eq!(shards.len(), farmers.len(), "{reply}");
    let mut contracts: Vec<String> = Vec::new();
    for (i, shard) in shards.iter().enumerate() {
        assert_eq!(shard["index"], i, "{reply}");
        assert_eq!(field(shard, "farmer"), net.url(farmers[i]), "{reply}");
        assert_eq!(shard["state"], "stored", "{reply}");
        contracts.push(field(shard, "contract_id"));
    }
    contracts.sort();
    contracts.dedup();
    assert_eq!(
        contracts.len(),
        farmers.len(),
        "one contract per shard: {reply}"
    );
}

/// The contract id of shard `index` in an open reply or a file status.
fn contract_of(value: &Value, index: usize) -> String {
    let shard = shards_of(value)
        .into_iter()
        .find(|s| s["index"] == index)
        .unwrap_or_else(|| panic!("no shard {index} in {value}"));
    field(&shard, "contract_id")
}

/// Downloads the file and checks it is byte-exact; returns the finished reply.
fn download_exact(net: &ShardNet, file_id: &str, out: &Path, data: &[u8]) -> Value {
    let reply = net
        .download(file_id, out)
        .unwrap_or_else(|e| panic!("dstore-download {file_id}: {e}"));
    assert_eq!(reply["status"], "done", "{reply}");
    assert_eq!(reply["bytes"], data.len(), "{reply}");
    let got = std::fs::read(out).expect("the output is written");
    assert!(
        got == data,
        "the file comes back byte-exact ({} bytes)",
        got.len()
    );
    reply
}

/// The shard indexes a finished download used.
fn used(reply: &Value) -> Vec<u64> {
    reply["shards_used"]
        .as_array()
        .unwrap_or_else(|| panic!("no shards_used in {reply}"))
        .iter()
        .map(|i| i.as_u64().expect("an index"))
        .collect()
}

/// The file's entry in `dstore-list`.
fn file_entry(net: &ShardNet, file_id: &str) -> Value {
    net.list()
        .into_iter()
        .find(|e| e["file_id"] == file_id && e["kind"] == "file")
        .unwrap_or_else(|| panic!("no file entry for {file_id} in dstore-list"))
}

#[test]
fn shard_n3_k2_file_survives_a_killed_farmer() {
    let mut net = ShardNet::start(&crs_dir(), &honest(3), MAX_FILE_BYTES);
    // Ragged: more than one stripe (2 × 256 KiB of C per stripe), the last one partial.
    let data = seeded_bytes(181, 1_300_000);
    let input = net.file("in", &data);

    // Through bitcoin-cli -named, as a user would.
    let cli = net.renter().cli(&[
        "-named",
        "dstore-open",
        &format!("farmer_peer_url={}", net.urls(&[0, 1, 2])),
        &format!("file_path={}", input.display()),
        "shards=3",
        "needed=2",
    ]);
    assert!(
        cli.status.success(),
        "bitcoin-cli -named dstore-open: {}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let reply: Value = serde_json::from_slice(&cli.stdout).expect("dstore-open prints JSON");
    check_opened(&net, &reply, &[0, 1, 2], 2);
    let file_id = file_id_of(&reply);
    assert_eq!(reply["plaintext_length"], data.len(), "{reply}");

    // Each shard is an ordinary contract the farmer stored.
    for i in 0..3 {
        let contract = contract_of(&reply, i);
        let farmer = net.farmer(i).call_ok("dstore-status", json!([contract]));
        assert_eq!(farmer["phase"], "stored", "farmer {i}: {farmer}");
    }
    // dstore-list: the shard contracts name their file; one entry for the file.
    let list = net.list();
    for i in 0..3 {
        let contract = contract_of(&reply, i);
        let entry = list
            .iter()
            .find(|e| e["contract_id"] == contract.as_str())
            .unwrap_or_else(|| panic!("shard contract {contract} listed"));
        assert_eq!(entry["file_id"], file_id.as_str(), "{entry}");
        assert_eq!(entry["shard"], i, "{entry}");
    }
    let entry = file_entry(&net, &file_id);
    assert_eq!(shards_of(&entry).len(), 3, "{entry}");
    // dstore-status <file_id>: three healthy shards.
    let status = net.status(&file_id);
    assert_eq!(status["healthy"], 3, "{status}");
    assert_eq!(status["needed"], 2, "{status}");
    for shard in shards_of(&status) {
        assert_eq!(shard["reachable"], true, "{status}");
        assert_eq!(shard["burned"], false, "{status}");
    }

    // Farmer 1 is gone before the download; the file still comes back.
    net.kill_farmer(1);
    let status = net.status(&file_id);
    let gone = shards_of(&status)
        .into_iter()
        .find(|s| s["index"] == 1)
        .expect("shard 1");
    assert_eq!(gone["reachable"], false, "{status}");
    assert_eq!(status["healthy"], 2, "{status}");
    let out = net.dir.path().join("out");
    let done = download_exact(&net, &file_id, &out, &data);
    let mut shards = used(&done);
    shards.sort();
    assert_eq!(shards, vec![0, 2], "the two reachable shards: {done}");
}

#[test]
fn shard_n5_k3_file_survives_a_gone_farmer_and_a_lying_one() {
    // N − K = 2 shards may fail: farmer 1 is gone and farmer 0 seals data that is not its
    // shard (its fraud is caught after payment by the root checks). Shard 0 is the first
    // one a download picks, so the lie is met and replaced by the spare shard.
    let mut specs = honest(5);
    specs[0].fault = Some("seal-wrong-data");
    let mut net = ShardNet::start(&crs_dir(), &specs, MAX_FILE_BYTES);
    let data = seeded_bytes(182, 2_000_003);
    let input = net.file("in", &data);
    let reply = net.open_on(&[0, 1, 2, 3, 4], &input, 3);
    check_opened(&net, &reply, &[0, 1, 2, 3, 4], 3);
    let file_id = file_id_of(&reply);
    let liar_contract = contract_of(&reply, 0);

    net.kill_farmer(1);
    let out = net.dir.path().join("out");
    let done = download_exact(&net, &file_id, &out, &data);
    let mut shards = used(&done);
    shards.sort();
    assert_eq!(shards, vec![2, 3, 4], "the honest shards: {done}");

    // The liar's shard download ended in a fraud proof that verifies.
    let liar = net.status(&liar_contract);
    let fraud = liar["downloads"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["phase"] == "fraud")
        .unwrap_or_else(|| panic!("a fraud download on the liar's shard: {liar}"));
    let proof = fraud["fraud_proof"].as_str().expect("fraud proof path");
    assert!(Path::new(proof).is_file(), "the fraud proof is saved");
    let checked = net.renter().call_ok("dstore-verify-fraud", json!([proof]));
    assert_eq!(checked["valid"], true, "{checked}");
    assert_eq!(checked["contract_id"], liar_contract.as_str(), "{checked}");
    let status = net.status(&file_id);
    let liar_shard = shards_of(&status)
        .into_iter()
        .find(|s| s["index"] == 0)
        .expect("shard 0");
    assert!(
        liar_shard["healthy"] == false || !liar_shard["suspect"].is_null(),
        "the status flags the lying shard: {status}"
    );

    // A third lost shard is one too many: the download fails and writes nothing.
    std::fs::remove_file(&out).expect("remove the first output");
    net.kill_farmer(2);
    let err = net
        .download(&file_id, &out)
        .expect_err("two honest shards of the three needed");
    assert!(!out.exists(), "nothing is written ({err})");
}

#[test]
fn shard_repair_moves_a_lost_shard_to_a_new_farmer_and_the_download_uses_it() {
    // Farmers 0..3 hold the shards, farmer 3 is the spare.
    let mut net = ShardNet::start(&crs_dir(), &honest(4), MAX_FILE_BYTES);
    let data = seeded_bytes(183, 900_001);
    let input = net.file("in", &data);
    let reply = net.open_on(&[0, 1, 2], &input, 2);
    let file_id = file_id_of(&reply);
    let lost = contract_of(&reply, 0);

    // Farmer 0 loses its copy of shard 0.
    let blob = net.blob_path(0, &lost);
    assert!(blob.is_file(), "farmer 0 stored {}", blob.display());
    std::fs::remove_file(&blob).expect("delete the blob");

    let repaired = net
        .repair(&file_id, Some(net.url(3)))
        .unwrap_or_else(|e| panic!("dstore-repair {file_id}: {e}"));
    assert_eq!(repaired["healthy"], 3, "{repaired}");
    let moved = repaired["repaired"]
        .as_array()
        .unwrap_or_else(|| panic!("no repaired list: {repaired}"));
    assert_eq!(moved.len(), 1, "{repaired}");
    assert_eq!(moved[0]["index"], 0, "{repaired}");
    assert_eq!(moved[0]["old_contract_id"], lost.as_str(), "{repaired}");
    assert_eq!(field(&moved[0], "farmer"), net.url(3), "{repaired}");
    let new_contract = field(&moved[0], "contract_id");
    assert_ne!(new_contract, lost);
    // The lost shard was found by the free Merkle probes: the repair paid for exactly
    // K = 2 shard downloads (one TX1 each), never for the lost one.
    let downloads = repaired["downloads"]
        .as_array()
        .unwrap_or_else(|| panic!("no downloads list: {repaired}"));
    assert_eq!(downloads.len(), 2, "{repaired}");
    let tx1s: HashSet<&str> = downloads.iter().filter_map(|d| d["tx1"].as_str()).collect();
    assert_eq!(tx1s.len(), 2, "one TX1 per paid download: {repaired}");
    assert!(
        downloads.iter().all(|d| d["index"] != 0),
        "the lost shard is not downloaded: {repaired}"
    );
    let probe = &repaired["probes"][0];
    assert_eq!(probe["ok"], false, "shard 0's probe failed: {repaired}");
    assert_eq!(
        probe["unreachable"], false,
        "its farmer answered: {repaired}"
    );

    // The record moved: three healthy shards, shard 0 with farmer 3, the old one replaced.
    let status = net.status(&file_id);
    assert_eq!(status["healthy"], 3, "{status}");
    assert_eq!(contract_of(&status, 0), new_contract, "{status}");
    for shard in shards_of(&status) {
        assert_eq!(shard["healthy"], true, "{status}");
        assert_eq!(shard["last_probe"]["ok"], true, "{status}");
    }
    let replaced = status["replaced"].as_array().expect("replaced list");
    assert!(
        replaced.iter().any(|r| r["contract_id"] == lost.as_str()),
        "{status}"
    );
    let farmer = net
        .farmer(3)
        .call_ok("dstore-status", json!([new_contract]));
    assert_eq!(farmer["phase"], "stored", "{farmer}");

    // With farmer 1 gone too, only shard 2 and the new shard 0 are left: the download
    // has to use the new shard.
    net.kill_farmer(1);
    let out = net.dir.path().join("out");
    let done = download_exact(&net, &file_id, &out, &data);
    let mut shards = used(&done);
    shards.sort();
    assert_eq!(shards, vec![0, 2], "{done}");
    let used_new = done["shards"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| s["contract_id"] == new_contract.as_str());
    assert!(used_new, "the new shard's contract served: {done}");
}

#[test]
fn shard_kill_9_of_the_renter_mid_upload_resumes_every_shard() {
    let mut net = ShardNet::start(&crs_dir(), &honest(3), MAX_FILE_BYTES);
    // Each shard's upload stalls after its second stored part, so the kill lands
    // mid-upload however fast the uploads run (they run side by side).
    net.set_renter_fault(Some("stall-mid-upload"));
    net.stop_renter();
    net.start_renter();
    // 2 × ~32 MiB data shards and one parity shard, several parts each.
    let data = seeded_bytes(184, 64 * 1024 * 1024 + 17);
    let input = net.file("in", &data);
    let opener = call_in_thread(
        &net,
        "dstore-open",
        open_params(&net.urls(&[0, 1, 2]), &input, 3, 2),
    );

    // Several shard contracts are part-way through their uploads.
    let uploading = wait_until(
        "several shard uploads in progress",
        Duration::from_secs(300),
        || {
            let partial: Vec<(String, u64)> = net
                .list()
                .iter()
                .filter(|e| e["file_id"].is_string() && e["contract_id"].is_string())
                .filter_map(|e| {
                    let done = e["bytes_done"].as_u64()?;
                    let total = e["bytes_total"].as_u64()?;
                    (e["phase"] == "uploading" && done > 0 && done < total)
                        .then(|| (field(e, "contract_id"), total))
                })
                .collect();
            (partial.len() >= 2).then_some(partial)
        },
    );
    net.kill_renter();
    let _ = opener.join();
    // The kill interrupted uploads: farmers hold part of a shard and no receipt for it.
    let interrupted: Vec<String> = uploading
        .iter()
        .filter(|(contract, total)| {
            let holder = (0..3)
                .find_map(|i| net.farmer(i).call("dstore-status", json!([contract])).ok())
                .unwrap_or_else(|| panic!("a farmer knows {contract}"));
            holder["phase"] == "uploading" && holder["bytes_done"].as_u64() < Some(*total)
        })
        .map(|(contract, _)| contract.clone())
        .collect();
    assert!(
        !interrupted.is_empty(),
        "the kill landed mid-upload: {uploading:?}"
    );
    eprintln!(
        "{} of {} partial shard uploads were interrupted by the kill",
        interrupted.len(),
        uploading.len()
    );

    // After the restart (without the stall) the file's open resumes by itself: every
    // shard ends stored, on the contracts it had.
    net.set_renter_fault(None);
    net.start_renter();
    let file_id = net
        .list()
        .iter()
        .find(|e| e["kind"] == "file")
        .map(|e| field(e, "file_id"))
        .expect("the file record is kept");
    let status = wait_until("every shard stored", SHARD_WAIT, || {
        let status = net.status(&file_id);
        let shards = shards_of(&status);
        (shards.len() == 3 && shards.iter().all(|s| s["state"] == "stored")).then_some(status)
    });
    for contract in &interrupted {
        assert!(
            shards_of(&status)
                .iter()
                .any(|s| s["contract_id"] == contract.as_str()),
            "the interrupted contract {contract} was resumed: {status}"
        );
    }
    for shard in shards_of(&status) {
        let i = net.farmer_at(&field(&shard, "farmer"));
        let farmer = net
            .farmer(i)
            .call_ok("dstore-status", json!([field(&shard, "contract_id")]));
        assert_eq!(farmer["phase"], "stored", "{farmer}");
    }
    wait_until(
        "the staged shard files to be removed",
        Duration::from_secs(60),
        || (!net.staged_shards_dir(&file_id).exists()).then_some(()),
    );
    let out = net.dir.path().join("out");
    download_exact(&net, &file_id, &out, &data);
}

#[test]
fn shard_bad_parameters_get_clear_errors_and_create_nothing() {
    let net = ShardNet::start(&crs_dir(), &honest(2), MAX_FILE_BYTES);
    let input = net.file("in", &seeded_bytes(185, 10_000));
    let two = net.urls(&[0, 1]);
    let dup = format!("{},{}", net.url(0), net.url(0));
    let many: Vec<String> = (0..33)
        .map(|p| format!("http://127.0.0.1:{}", 40_000 + p))
        .collect();
    let many = many.join(",");
    // (urls, N, K, words the message must contain)
    let cases: [(&str, u64, u64, &[&str]); 6] = [
        (&two, 2, 3, &["needed", "exceeds"]),
        (&many, 33, 2, &["32"]),
        (&two, 2, 0, &["needed"]),
        (&dup, 2, 1, &["duplicate"]),
        (&two, 3, 2, &["3"]),
        (&two, 0, 1, &[]),
    ];
    for (urls, n, k, words) in cases {
        let err = net
            .open_sharded(urls, &input, n, k)
            .expect_err(&format!("N={n} K={k} on {urls} is refused"));
        assert_eq!(err.code, -8, "N={n} K={k}: {err}");
        let message = err.message.to_lowercase();
        for word in words {
            assert!(message.contains(word), "N={n} K={k}: {err}");
        }
    }
    // `needed` without `shards` is refused too.
    let err = net
        .renter()
        .call(
            "dstore-open",
            json!({"farmer_peer_url": two, "file_path": input.to_str().unwrap(), "needed": 1}),
        )
        .expect_err("needed without shards");
    assert_eq!(err.code, -8, "{err}");

    // Nothing was created: no contract, no file, no staged shards, nothing at the farmers.
    assert!(net.list().is_empty(), "{:?}", net.list());
    for i in 0..2 {
        let farmer = net.farmer(i).call_ok("dstore-list", json!([]));
        assert!(
            farmer.as_array().is_some_and(|l| l.is_empty()),
            "farmer {i}: {farmer}"
        );
    }
    let files = net
        .renter()
        .datadir()
        .join("regtest")
        .join("renter")
        .join("files");
    let staged = std::fs::read_dir(&files).map(|d| d.count()).unwrap_or(0);
    assert_eq!(staged, 0, "no staged shards under {}", files.display());
}

/// Runs a renter RPC on a thread (it outlives the renter being killed under it).
fn call_in_thread(
    net: &ShardNet,
    method: &'static str,
    params: Value,
) -> std::thread::JoinHandle<Result<Value, dstore_tests::RpcError>> {
    let url = net.renter().rpc_url();
    let cookie = net.renter().credentials();
    std::thread::spawn(move || {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(900))
            .build()
            .expect("http client");
        dstore_tests::node::rpc_call(&http, &url, &cookie, method, params)
    })
}
