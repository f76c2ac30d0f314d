//! Issue 20, streaming transfers: the renter encrypts while it uploads, hashes E while it
//! receives it and unseals, checks and decrypts in one pass. These scenarios show the
//! streaming keeps the old guarantees: a farmer whose E goes wrong in the middle of the
//! stream is refused before any money moves and nothing reaches the output, and a renter
//! killed in the middle of a streamed upload resumes it after its restart (the same
//! contract, the farmer's bytes kept) and the file comes back intact.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dstore_tests::market::{Faults, Market, TEST_PRICE_SAT};
use dstore_tests::parties::seeded_bytes;
use dstore_tests::wait_until;
use serde_json::{json, Value};

use crate::e2e::{crs_dir, farmer_status, status};

/// The hidden file a download decrypts into before it becomes the output.
fn partial_of(output: &Path) -> PathBuf {
    let name = output.file_name().unwrap().to_string_lossy();
    output.with_file_name(format!(".{name}.dstore-partial"))
}

#[test]
fn e2e_stream_farmer_sending_e_wrong_mid_stream_is_refused_before_payment() {
    let mut m = Market::start(
        &crs_dir(),
        Faults {
            farmer: Some("flip-sealed-mid-stream"),
            ..Faults::default()
        },
    );
    // Several MiB, so the flipped byte arrives in the middle of the transfer.
    let data = seeded_bytes(201, 9 << 20);
    let input = m.file("in", &data);
    let id = m.open(&input).expect("dstore-open");
    let before = m.renter_balance_sat();
    let output = m.dir.path().join("out");

    let err = m.download(&id, &output).unwrap_err();
    assert!(
        err.contains("root_E") && err.contains("nothing was paid"),
        "{err}"
    );
    assert!(!output.exists(), "nothing reaches the output");
    assert!(!partial_of(&output).exists(), "no partial output either");
    let s = status(&m, &id);
    assert_eq!(s["downloads"][0]["phase"], "failed", "{s}");
    assert_eq!(s["downloads"][0]["tx1"], Value::Null, "no TX1: {s}");
    assert_eq!(m.renter_balance_sat(), before, "no money moved");

    // The same contract, from the farmer without the fault: the file comes back and the
    // price is paid once.
    m.kill_farmer();
    m.start_farmer();
    let result = m.download(&id, &output).expect("dstore-download");
    assert_eq!(result["status"], "done", "{result}");
    assert!(
        std::fs::read(&output).unwrap() == data,
        "the file comes back"
    );
    let paid = before - m.renter_balance_sat();
    assert!(
        (TEST_PRICE_SAT..2 * TEST_PRICE_SAT).contains(&paid),
        "the price once, plus fees: {paid}"
    );
}

#[test]
fn e2e_stream_renter_killed_mid_upload_resumes_and_loses_nothing() {
    let mut m = Market::start(
        &crs_dir(),
        Faults {
            renter: Some("stall-mid-upload"),
            ..Faults::default()
        },
    );
    let data = seeded_bytes(202, 21 << 20);
    let input = m.file("in", &data);
    let before = m.renter_balance_sat();
    let opener = {
        let (url, cookie) = (m.renter().rpc_url(), m.renter().credentials());
        let params = json!([m.peer_url, input.to_str().unwrap()]);
        std::thread::spawn(move || {
            let http = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(900))
                .build()
                .unwrap();
            dstore_tests::node::rpc_call(&http, &url, &cookie, "dstore-open", params)
        })
    };

    // The renter stalls after two streamed parts were stored; the farmer holds those.
    let (id, total) = wait_until(
        "the streamed upload to stall",
        Duration::from_secs(300),
        || {
            let list = m.renter().call_ok("dstore-list", json!([]));
            let c = list
                .as_array()?
                .iter()
                .find(|c| c["phase"] == "uploading")?;
            let id = c["contract_id"].as_str()?.to_string();
            let f = m.farmer().call("dstore-status", json!([id])).ok()?;
            let done = f["bytes_done"].as_u64()?;
            (done >= 8 << 20).then(|| (id, c["bytes_total"].as_u64().unwrap_or(0)))
        },
    );
    m.kill_renter();
    let _ = opener.join();
    let f = farmer_status(&m, &id);
    assert_eq!(f["phase"], "uploading", "{f}");
    assert!(f["bytes_done"].as_u64().unwrap() < total, "{f}");

    // After the restart the renter resumes the same contract by itself.
    m.start_renter();
    wait_until("the resumed upload", Duration::from_secs(300), || {
        (status(&m, &id)["phase"] == "stored").then_some(())
    });
    assert_eq!(farmer_status(&m, &id)["phase"], "stored");
    let list = m.renter().call_ok("dstore-list", json!([]));
    assert_eq!(list.as_array().unwrap().len(), 1, "one contract: {list}");
    assert_eq!(m.renter_balance_sat(), before, "storing moved no money");

    let output = m.dir.path().join("out");
    let result = m.download(&id, &output).expect("dstore-download");
    assert_eq!(result["status"], "done", "{result}");
    assert!(
        std::fs::read(&output).unwrap() == data,
        "the file comes back"
    );
}
