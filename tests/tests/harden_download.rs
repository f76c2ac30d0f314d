//! Issue 15, item 1 (renter side) and item 8: the download waits for TX1's confirmations
//! and TX2 in the background. `dstore-download` returns once the wait begins; calling it
//! again joins the running download instead of funding a second TX1; a renter killed
//! while it waits finishes the download by itself after its restart; and the renter
//! refuses to fund TX1 once T1 is too close to the tip (nothing is paid).

use std::path::PathBuf;
use std::time::Duration;

use dstore_plugin::renter::MIN_T1_MARGIN_AT_FUNDING;
use dstore_tests::harden_download::SealedGate;
use dstore_tests::market::{Faults, Market};
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

#[test]
fn harden_download_returns_while_waiting_and_does_not_pay_twice() {
    let m = Market::start(&crs_dir(), Faults::default());
    let data = seeded_bytes(151, 30_000);
    let input = m.file("in", &data);
    let id = m.open(&input).expect("dstore-open");
    let output = m.dir.path().join("out");

    // The call returns once the download only waits for the chain.
    let first = m.download_started(&id, &output).expect("dstore-download");
    assert_eq!(first["status"], "waiting", "{first}");
    assert_eq!(first["phase"], "tx3_signed", "{first}");
    assert_eq!(first["waiting_for"], "TX1 confirmations 0/1", "{first}");
    let download_id = first["download_id"]
        .as_str()
        .expect("download id")
        .to_string();
    assert!(!output.exists(), "nothing is written before TX2");
    let s = status(&m, &id);
    assert_eq!(s["running"], true, "{s}");
    assert_eq!(s["phase"], "waiting for TX1 confirmations 0/1", "{s}");
    let tx1 = s["downloads"][0]["tx1"].as_str().expect("TX1").to_string();
    assert_eq!(mempool(&m), vec![tx1.clone()], "only TX1 is out");
    let balance = m.renter_balance_sat();

    // Calling again, with or without a wait, joins the running download: no second TX1.
    let again = m
        .download_started(&id, &output)
        .expect("dstore-download again");
    assert_eq!(again["status"], "waiting", "{again}");
    assert_eq!(again["download_id"], download_id.as_str(), "{again}");
    let waited = m
        .renter()
        .call_ok("dstore-download", json!([id, output.to_str().unwrap(), 1]));
    assert_eq!(waited["status"], "waiting", "{waited}");
    assert_eq!(waited["download_id"], download_id.as_str(), "{waited}");
    assert_eq!(mempool(&m), vec![tx1.clone()], "still only TX1");
    assert_eq!(status(&m, &id)["downloads"].as_array().unwrap().len(), 1);
    assert_eq!(m.renter_balance_sat(), balance, "nothing more was paid");

    // TX1 confirms, the farmer broadcasts TX2, the download finishes in the background.
    let result = m.download(&id, &output).expect("the download finishes");
    assert_eq!(result["status"], "done", "{result}");
    assert_eq!(result["download_id"], download_id.as_str(), "{result}");
    assert_eq!(result["tx1"], tx1.as_str(), "{result}");
    assert!(
        std::fs::read(&output).unwrap() == data,
        "the file comes back"
    );
    let s = status(&m, &id);
    assert_eq!(s["downloads"].as_array().unwrap().len(), 1, "{s}");
    assert_eq!(s["downloads"][0]["phase"], "done", "{s}");
    assert_eq!(
        m.node.confirmations(&tx1),
        1,
        "TX1 has its one confirmation"
    );
    assert_eq!(m.renter_balance_sat(), balance, "paid once");
}

#[test]
fn harden_download_survives_a_restart_while_waiting() {
    let mut m = Market::start(&crs_dir(), Faults::default());
    let data = seeded_bytes(152, 20_000);
    let input = m.file("in", &data);
    let id = m.open(&input).expect("dstore-open");
    let output = m.dir.path().join("out");
    let first = m.download_started(&id, &output).expect("dstore-download");
    assert_eq!(first["status"], "waiting", "{first}");
    let d = &status(&m, &id)["downloads"][0];
    let tx2 = d["tx2"].as_str().expect("TX2's txid").to_string();
    let balance = m.renter_balance_sat();

    // kill -9 while it waits; TX1 confirms and the farmer broadcasts TX2 meanwhile.
    m.kill_renter();
    m.node.mine(1);
    m.node.wait_for_tx(&tx2, Duration::from_secs(60));
    assert!(!output.exists());

    // Restarted, the renter finishes the paid download by itself, with no new call.
    m.start_renter();
    let s = wait_until(
        "the resumed download to finish",
        Duration::from_secs(120),
        || {
            let s = status(&m, &id);
            (s["downloads"][0]["phase"] == "done").then_some(s)
        },
    );
    assert_eq!(s["downloads"].as_array().unwrap().len(), 1, "{s}");
    assert!(
        std::fs::read(&output).unwrap() == data,
        "the file comes back"
    );
    assert_eq!(m.renter_balance_sat(), balance, "nothing paid twice");

    // The next dstore-download returns that outcome instead of buying another download.
    let result = m.download_started(&id, &output).expect("dstore-download");
    assert_eq!(result["status"], "done", "{result}");
    assert_eq!(result["tx2"], tx2.as_str(), "{result}");
    assert_eq!(status(&m, &id)["downloads"].as_array().unwrap().len(), 1);
    assert_eq!(m.renter_balance_sat(), balance, "nothing paid twice");
}

#[test]
fn harden_renter_refuses_to_fund_tx1_too_close_to_t1() {
    let m = Market::start(&crs_dir(), Faults::default());
    let gate = SealedGate::start(&m.peer_url);
    let input = m.file("in", &seeded_bytes(153, 10_000));
    let id = m
        .renter_cli(&["dstore-open", &gate.url, input.to_str().unwrap()])
        .expect("dstore-open through the gate");
    let output = m.dir.path().join("out");
    let balance = m.renter_balance_sat();

    // The offer fixed T1; the renter's fetch of E is held while blocks come in.
    std::thread::scope(|scope| {
        let download = scope.spawn(|| m.download_started(&id, &output));
        gate.wait_held(Duration::from_secs(300));
        let t1 = status(&m, &id)["downloads"][0]["refund_height"]
            .as_u64()
            .expect("T1 is known once the keys are revealed");
        let tip = m.node.block_count();
        let closer = t1 - u64::from(MIN_T1_MARGIN_AT_FUNDING) + 1 - tip;
        m.node.mine(closer as u32);
        gate.open();
        let err = download.join().unwrap().unwrap_err();
        assert!(
            err.contains("T1") && err.contains("nothing was paid"),
            "{err}"
        );
    });
    assert!(!output.exists());
    let s = status(&m, &id);
    assert_eq!(s["downloads"][0]["phase"], "failed", "{s}");
    assert_eq!(s["downloads"][0]["tx1"], Value::Null, "no TX1: {s}");
    assert!(mempool(&m).is_empty(), "nothing was broadcast");
    assert_eq!(m.renter_balance_sat(), balance, "no money moved");

    // With T1 far ahead again (a new offer), the next download goes through.
    let result = m.download(&id, &output).expect("a fresh download");
    assert_eq!(result["status"], "done", "{result}");
}
