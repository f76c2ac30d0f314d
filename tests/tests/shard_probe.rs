//! Issue 18, free shard probes: `dstore-status <file_id>` and `dstore-repair` find a farmer
//! that lost its shard with an off-chain Merkle probe (no payment), and the repair pays for
//! exactly K healthy shards' downloads, failing over to another healthy shard when one
//! download fails (here: a farmer that passes the probe but seals wrong data).

use std::path::PathBuf;

use dstore_tests::parties::seeded_bytes;
use dstore_tests::shard_fixture::{field, file_id_of, shards_of, ShardFarmerSpec, ShardNet};
use serde_json::Value;

/// The farmers accept shard contracts up to this size.
const MAX_FILE_BYTES: u64 = 80 << 20;

/// The e2e tests' CRS cache: the same TX2 shape, so the renter's CRS is generated once.
fn crs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-crs")
}

/// Shard `index` of a file status or repair reply.
fn shard(value: &Value, index: u64) -> Value {
    shards_of(value)
        .into_iter()
        .find(|s| s["index"] == index)
        .unwrap_or_else(|| panic!("no shard {index} in {value}"))
}

/// The `index` fields of the entries of `value[key]`, sorted.
fn indexes(value: &Value, key: &str) -> Vec<u64> {
    let mut out: Vec<u64> = value[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} list: {value}"))
        .iter()
        .filter_map(|e| e["index"].as_u64())
        .collect();
    out.sort();
    out
}

#[test]
fn shard_probe_finds_a_lost_shard_for_free_and_repair_pays_for_exactly_k_downloads() {
    // Farmers 0..4 hold the shards (farmer 0 seals wrong data but stores its shard
    // intact, so its probe passes); farmers 4 and 5 are spares.
    let mut specs = vec![ShardFarmerSpec::default(); 6];
    specs[0].fault = Some("seal-wrong-data");
    let net = ShardNet::start(&crs_dir(), &specs, MAX_FILE_BYTES);
    let data = seeded_bytes(185, 700_001);
    let input = net.file("in", &data);
    let reply = net.open_on(&[0, 1, 2, 3], &input, 2);
    let file_id = file_id_of(&reply);

    // Every shard is held: the repair probes, finds nothing to do and buys nothing.
    let idle = net
        .repair(&file_id, None)
        .unwrap_or_else(|e| panic!("dstore-repair {file_id}: {e}"));
    assert_eq!(idle["repaired"].as_array().map(Vec::len), Some(0), "{idle}");
    assert_eq!(
        idle["downloads"].as_array().map(Vec::len),
        Some(0),
        "{idle}"
    );
    assert!(
        idle["probes"]
            .as_array()
            .is_some_and(|p| p.len() == 4 && p.iter().all(|p| p["ok"] == true)),
        "{idle}"
    );

    // Farmer 3 loses its copy: it still answers /info, but its probe fails.
    let lost = field(&shard(&reply, 3), "contract_id");
    std::fs::remove_file(net.blob_path(3, &lost)).expect("delete the blob");
    let status = net.status(&file_id);
    assert_eq!(status["healthy"], 3, "{status}");
    let gone = shard(&status, 3);
    assert_eq!(gone["healthy"], false, "{status}");
    assert_eq!(gone["reachable"], true, "{status}");
    assert_eq!(gone["last_probe"]["ok"], false, "{status}");
    assert_eq!(gone["last_probe"]["unreachable"], false, "{status}");
    assert!(gone["last_probe"]["height"].is_u64(), "{status}");
    for i in 0..3 {
        assert_eq!(shard(&status, i)["last_probe"]["ok"], true, "{status}");
    }

    // The repair pays for K = 2 downloads: shard 0's (a lie, caught) is replaced by
    // shard 2's; shards 0 and 3 are rebuilt and move to the spares.
    let spares = net.urls(&[4, 5]);
    let repaired = net
        .repair(&file_id, Some(&spares))
        .unwrap_or_else(|e| panic!("dstore-repair {file_id}: {e}"));
    assert_eq!(indexes(&repaired, "downloads"), vec![1, 2], "{repaired}");
    let failures = repaired["download_failures"].as_array().expect("failures");
    assert!(
        failures.len() == 1
            && failures[0]
                .as_str()
                .is_some_and(|f| f.starts_with("shard 0")),
        "{repaired}"
    );
    assert_eq!(indexes(&repaired, "repaired"), vec![0, 3], "{repaired}");
    assert_eq!(repaired["healthy"], 4, "{repaired}");

    // The new shards pass their probes; the file comes back from them.
    let status = net.status(&file_id);
    assert_eq!(status["healthy"], 4, "{status}");
    for s in shards_of(&status) {
        assert_eq!(s["last_probe"]["ok"], true, "{status}");
    }
    let out = net.dir.path().join("out");
    let done = net
        .download(&file_id, &out)
        .unwrap_or_else(|e| panic!("dstore-download {file_id}: {e}"));
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(std::fs::read(&out).expect("output"), data);
}
