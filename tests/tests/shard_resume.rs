//! Issue 18: a file download survives a kill -9 of the renter. The restarted renter runs
//! the interrupted download again by itself, every shard is bought once, and the outcome
//! waits in the file record for the next call.

use std::collections::HashSet;
use std::path::PathBuf;

use dstore_tests::parties::seeded_bytes;
use dstore_tests::shard_fixture::{
    field, file_id_of, shards_of, ShardFarmerSpec, ShardNet, SHARD_WAIT,
};
use dstore_tests::wait_until;
use serde_json::json;

/// The farmers accept shard contracts up to this size.
const MAX_FILE_BYTES: u64 = 8 << 20;

/// The e2e tests' CRS cache: the same TX2 shape, so the renter's CRS is generated once.
fn crs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-crs")
}

#[test]
fn shard_download_killed_mid_way_resumes_by_itself_and_buys_each_shard_once() {
    let mut net = ShardNet::start(
        &crs_dir(),
        &vec![ShardFarmerSpec::default(); 3],
        MAX_FILE_BYTES,
    );
    let data = seeded_bytes(186, 600_003);
    let input = net.file("in", &data);
    let opened = net.open_on(&[0, 1, 2], &input, 2);
    let file_id = file_id_of(&opened);
    let out = net.dir.path().join("out");
    let out_text = out.to_str().expect("utf-8 path");

    // The call returns once its shard downloads only wait for TX1's confirmations.
    let first = net
        .renter()
        .call_ok("dstore-download", json!([file_id, out_text]));
    assert_eq!(first["status"], "waiting", "{first}");
    net.kill_renter();
    net.start_renter();

    // Nobody calls dstore-download again: the restarted renter runs the job by itself.
    let mut mined_for = HashSet::new();
    wait_until(
        "the resumed file download to write the file",
        SHARD_WAIT,
        || {
            if out.exists() {
                return Some(());
            }
            net.mine_for_new_tx1_waits(&mut mined_for);
            None
        },
    );
    assert_eq!(std::fs::read(&out).expect("output"), data);

    // The outcome no call received is the next call's, from the file record.
    let done = net
        .renter()
        .call_ok("dstore-download", json!([file_id, out_text]));
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["bytes"], data.len(), "{done}");

    // Each shard was bought at most once, and exactly K were bought.
    let used: Vec<String> = done["shards_used"]
        .as_array()
        .expect("shards_used")
        .iter()
        .map(|i| {
            field(
                &shards_of(&opened)[i.as_u64().expect("index") as usize],
                "contract_id",
            )
        })
        .collect();
    assert_eq!(used.len(), 2, "{done}");
    for shard in shards_of(&opened) {
        let contract = field(&shard, "contract_id");
        let status = net.renter().call_ok("dstore-status", json!([contract]));
        let bought = usize::from(used.contains(&contract));
        assert_eq!(
            status["downloads"].as_array().map(Vec::len),
            Some(bought),
            "shard contract {contract}: {status}"
        );
    }
}
