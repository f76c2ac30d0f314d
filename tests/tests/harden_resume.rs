//! Issue 15 (renter side): a download whose renter is killed (`kill -9`) after TX1 is
//! funded, or after the farmer's TX2 is checked and before sig_R leaves, goes on after the
//! restart from its stored phase, through the same steps as an uninterrupted one: the same
//! TX1 (funded once), the same signatures, and the file comes back.
//!
//! The renter runs with a test-only stall fault at that point, so the kill lands exactly
//! there; it restarts without the fault.

use std::path::PathBuf;
use std::time::Duration;

use dstore_tests::market::{Faults, Market, TEST_PRICE_SAT};
use dstore_tests::parties::seeded_bytes;
use dstore_tests::wait_until;
use serde_json::{json, Value};

/// The e2e tests' CRS cache: the same TX2 shape, so the renter's CRS is generated once.
fn crs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-crs")
}

fn status(m: &Market, id: &str) -> Value {
    m.renter().call_ok("dstore-status", json!([id]))
}

fn mempool(m: &Market) -> Vec<String> {
    serde_json::from_value(m.node.rpc_ok("getrawmempool", json!([]))).expect("txids")
}

/// Starts a download (the renter runs with a stall fault), waits until its stored phase is
/// `phase`, and returns TX1's txid then.
fn stall_download_at(m: &Market, id: &str, output: &std::path::Path, phase: &str) -> String {
    let first = m
        .renter()
        .call_ok("dstore-download", json!([id, output.to_str().unwrap(), 1]));
    assert_eq!(first["status"], "running", "{first}");
    let s = wait_until(
        &format!("the download to stall in phase {phase}"),
        Duration::from_secs(300),
        || {
            let s = status(m, id);
            (s["downloads"][0]["phase"] == phase).then_some(s)
        },
    );
    s["downloads"][0]["tx1"]
        .as_str()
        .expect("TX1 is stored")
        .to_string()
}

/// Restarts the killed renter without its fault and drives the download it resumes to its
/// end; checks it is the same download with the same TX1 and the right bytes.
fn finish_resumed(m: &mut Market, id: &str, output: &std::path::Path, tx1: &str, data: &[u8]) {
    m.start_renter();
    let result = m
        .download(id, output)
        .expect("the resumed download finishes");
    assert_eq!(result["status"], "done", "{result}");
    assert_eq!(result["tx1"], tx1, "the same TX1: {result}");
    assert!(
        std::fs::read(output).unwrap() == data,
        "the file comes back"
    );
    let s = status(m, id);
    assert_eq!(
        s["downloads"].as_array().unwrap().len(),
        1,
        "one download: {s}"
    );
    assert_eq!(s["downloads"][0]["phase"], "done", "{s}");
    assert_eq!(m.node.confirmations(tx1), 1, "TX1 is mined once");
}

#[test]
fn harden_download_resumes_after_kill_in_tx1_funded() {
    let mut m = Market::start(
        &crs_dir(),
        Faults {
            renter: Some("stall-at-tx1-funded"),
            ..Faults::default()
        },
    );
    let data = seeded_bytes(171, 25_000);
    let input = m.file("in", &data);
    let id = m.open(&input).expect("dstore-open");
    let output = m.dir.path().join("out");
    let before = m.renter_balance_sat();

    // TX1 is signed and stored, not yet broadcast, when the renter dies.
    let tx1 = stall_download_at(&m, &id, &output, "tx1_funded");
    assert!(mempool(&m).is_empty(), "TX1 is not out yet");
    m.kill_renter();

    finish_resumed(&mut m, &id, &output, &tx1, &data);
    let paid = before - m.renter_balance_sat();
    assert!(
        (TEST_PRICE_SAT..2 * TEST_PRICE_SAT).contains(&paid),
        "the price once, plus fees: {paid}"
    );
}

#[test]
fn harden_download_resumes_after_kill_in_tx2_signed() {
    let mut m = Market::start(
        &crs_dir(),
        Faults {
            renter: Some("stall-at-tx2-signed"),
            ..Faults::default()
        },
    );
    let data = seeded_bytes(172, 18_000);
    let input = m.file("in", &data);
    let id = m.open(&input).expect("dstore-open");
    let output = m.dir.path().join("out");
    let before = m.renter_balance_sat();

    // TX1 is out and the farmer's TX2 checked and stored; sig_R has not left yet.
    let tx1 = stall_download_at(&m, &id, &output, "tx2_signed");
    assert_eq!(mempool(&m), vec![tx1.clone()], "only TX1 is out");
    m.kill_renter();

    finish_resumed(&mut m, &id, &output, &tx1, &data);
    let paid = before - m.renter_balance_sat();
    assert!(
        (TEST_PRICE_SAT..2 * TEST_PRICE_SAT).contains(&paid),
        "the price once, plus fees: {paid}"
    );
}
