//! Issue 20, streaming transfers: the renter encrypts while it uploads, hashes E while it
//! receives it and unseals, checks and decrypts in one pass. These scenarios show the
//! streaming keeps the old guarantees: a farmer whose E goes wrong in the middle of the
//! stream is refused before any money moves and nothing reaches the output, and a renter
//! killed in the middle of a streamed upload resumes it after its restart (the same
//! contract, the farmer's bytes kept) and the file comes back intact. Upload parts travel
//! several at a time: the farmer stores them in offset order and refuses replays.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bitcoin::secp256k1::Keypair;
use dstore_tests::market::{Faults, Market, TEST_PRICE_SAT};
use dstore_tests::parties::seeded_bytes;
use dstore_tests::wait_until;
use serde_json::{json, Value};

use crate::e2e::{call_in_thread, crs_dir, farmer_status, status};

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

/// The renter's contract in its upload phase, with what the farmer has stored of it.
pub(crate) struct Uploading {
    pub id: String,
    pub farmer_done: u64,
    pub total: u64,
}

/// The contract the renter is uploading, if any, and the farmer's count for it.
pub(crate) fn uploading_contract(m: &Market) -> Option<Uploading> {
    let list = m.renter().call_ok("dstore-list", json!([]));
    let c = list
        .as_array()?
        .iter()
        .find(|c| c["phase"] == "uploading")?;
    let id = c["contract_id"].as_str()?.to_string();
    let f = m.farmer().call("dstore-status", json!([id])).ok()?;
    Some(Uploading {
        farmer_done: f["bytes_done"].as_u64()?,
        total: c["bytes_total"].as_u64().unwrap_or(0),
        id,
    })
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
    let opener = call_in_thread(
        &m,
        "dstore-open",
        json!([m.peer_url, input.to_str().unwrap()]),
    );

    // The renter stalls after two streamed parts were stored; the farmer holds those.
    let (id, total) = wait_until(
        "the streamed upload to stall",
        Duration::from_secs(300),
        || {
            let upload = uploading_contract(&m)?;
            (upload.farmer_done >= 8 << 20).then_some((upload.id, upload.total))
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

/// A signed PUT of upload bytes `body` at `offset` of contract `id`, signed for the part
/// `signed_for` (the same bytes, unless the test alters them on the way).
fn put_part(
    m: &Market,
    renter: &Keypair,
    id: &[u8; 32],
    offset: usize,
    body: &[u8],
    signed_for: &[u8],
) -> (u16, Value) {
    use dstore_plugin::wire::{sign_bulk, upload_path, BulkRequest, UploadPart};
    let path = format!("{}?offset={offset}", upload_path(id));
    let digest = UploadPart::new(offset as u64, signed_for.to_vec()).digest;
    let auth = sign_bulk(renter, &BulkRequest::upload_part(&path, digest));
    let response = reqwest::blocking::Client::new()
        .put(format!("{}{path}", m.peer_url))
        .header("x-dstore-auth", auth)
        .body(body.to_vec())
        .timeout(Duration::from_secs(120))
        .send()
        .unwrap();
    let code = response.status().as_u16();
    (code, response.json().unwrap_or(Value::Null))
}

/// The farmer takes a window of parts in flight: a part a little ahead of what it stored
/// waits for the one before it instead of being refused, while a replayed part, a part
/// beyond the window and a part whose bytes differ from its signed digest are refused
/// with a clear error and change nothing.
#[test]
fn e2e_stream_parts_ahead_wait_for_their_turn_and_replays_are_refused() {
    use bitcoin::secp256k1::{SecretKey, SECP256K1};
    use dstore_plugin::wire::{BODY_MISMATCH, UPLOAD_PART, UPLOAD_WINDOW};
    use dstore_protocol::messages::OpenRequest;
    let m = Market::start(&crs_dir(), Faults::default());
    let renter = Keypair::from_secret_key(SECP256K1, &SecretKey::from_slice(&[7; 32]).unwrap());
    let id = [43u8; 32];
    let data = seeded_bytes(203, 2 * UPLOAD_PART + 100);
    let request = OpenRequest {
        file_length: data.len() as u64,
        download_price: bitcoin::Amount::from_sat(TEST_PRICE_SAT),
    };
    let envelope = dstore_protocol::peer::sign(&renter, id, 0, &request).unwrap();
    let (code, body) = m.post_message("open_request", envelope);
    assert_eq!(code, 200, "{body}");
    let stored = || {
        farmer_status(&m, &hex::encode(id))["bytes_done"]
            .as_u64()
            .unwrap()
    };
    let part = |i: usize| &data[i * UPLOAD_PART..((i + 1) * UPLOAD_PART).min(data.len())];

    // Part 1 goes out first; part 0 follows on another connection: both are stored.
    std::thread::scope(|scope| {
        let ahead = scope.spawn(|| put_part(&m, &renter, &id, UPLOAD_PART, part(1), part(1)));
        let (code, body) = put_part(&m, &renter, &id, 0, part(0), part(0));
        assert_eq!(code, 200, "part 0: {body}");
        let (code, body) = ahead.join().unwrap();
        assert_eq!(code, 200, "part 1 waited for part 0: {body}");
        assert_eq!(body["received"], 2 * UPLOAD_PART as u64, "{body}");
    });
    assert_eq!(stored(), 2 * UPLOAD_PART as u64);

    // A replay is refused (resume from the stored count) and changes nothing. The farmer
    // answers before reading the body, so a short one is sent: a 4 MiB body would still be
    // on its way when the farmer closes the connection.
    let (code, body) = put_part(&m, &renter, &id, 0, &[1], &[1]);
    assert_eq!(code, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("resume from there"),
        "{body}"
    );
    // Past the window: refused before its body is read.
    let far = 2 * UPLOAD_PART + (UPLOAD_WINDOW + 1) * UPLOAD_PART;
    let (code, body) = put_part(&m, &renter, &id, far, &[1], &[1]);
    assert!(code == 400 || code == 413, "{code} {body}");
    // Bytes altered on the way: they fail the signed digest and are not stored.
    let mut altered = part(2).to_vec();
    altered[7] ^= 1;
    let (code, body) = put_part(&m, &renter, &id, 2 * UPLOAD_PART, &altered, part(2));
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["code"], BODY_MISMATCH, "{body}");
    assert_eq!(stored(), 2 * UPLOAD_PART as u64, "refusals change nothing");

    // The last part completes the upload.
    let (code, body) = put_part(&m, &renter, &id, 2 * UPLOAD_PART, part(2), part(2));
    assert_eq!(code, 200, "{body}");
    assert_eq!(stored(), data.len() as u64);
}
