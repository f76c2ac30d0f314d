//! End to end (issue 5): a renter dstore-plugin and a farmer dstore-plugin on one regtest
//! bitcoind store a file and sell its download through the mode-L chain, driven by
//! bitcoin-cli. Misbehaving parties are real plugin processes started with a hidden
//! `--dev-fault`; the other side's checks have to catch them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bitcoin::secp256k1::{Keypair, SecretKey, SECP256K1};
use bitcoin::Amount;
use dstore_protocol::messages::{OpenRequest, UploadDone};
use dstore_protocol::peer;
use dstore_tests::market::{Faults, Market, TEST_PRICE_SAT};
use dstore_tests::parties::seeded_bytes;
use serde_json::{json, Value};

pub(crate) fn crs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-crs")
}

pub(crate) fn status(m: &Market, id: &str) -> Value {
    m.renter().call_ok("dstore-status", json!([id]))
}

pub(crate) fn farmer_status(m: &Market, id: &str) -> Value {
    m.farmer().call_ok("dstore-status", json!([id]))
}

/// Mines until the chain reaches `height`.
fn mine_to_height(m: &Market, height: u64) {
    let now = m.node.block_count();
    if height > now {
        m.node.mine((height - now) as u32);
    }
}

/// `dstore-refund` says "waiting" until T1, then broadcasts; the refund is mined and pays
/// the renter's wallet.
fn refund_after_t1(m: &Market, id: &str) -> Value {
    let early = m.renter().call_ok("dstore-refund", json!([id]));
    assert_eq!(early["status"], "waiting", "{early}");
    let t1 = early["refund_height"].as_u64().expect("refund height");
    mine_to_height(m, t1);
    let refund = m.renter().call_ok("dstore-refund", json!([id]));
    assert_eq!(refund["status"], "broadcast", "{refund}");
    let txid = refund["txid"].as_str().unwrap().to_string();
    m.node.mine(1);
    assert_eq!(m.node.confirmations(&txid), 1, "the refund is mined");
    let again = m.renter().call_ok("dstore-refund", json!([id]));
    assert_eq!(again["status"], "nothing", "{again}");
    refund
}

/// The `checked-*.crs` files (CRSs the farmer checked and accepted) in `dir`.
fn checked_crs_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    name.starts_with("checked-") && name.ends_with(".crs")
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn e2e_bitcoin_cli_round_trips_every_size_and_pays_the_farmer() {
    // The farmer gets a CRS cache of its own, new in every run, so its full check of the
    // renter's CRS (and the accept path after it) runs every time; the renter keeps the
    // shared cache, so no CRS is generated again.
    let farmer_crs = tempfile::Builder::new()
        .prefix("dstore-farmer-crs-")
        .tempdir()
        .expect("temp dir");
    let m = Market::start_custom(
        &crs_dir(),
        Faults::default(),
        80 << 20,
        &[format!("--crs-cache-dir={}", farmer_crs.path().display())],
    );
    assert!(checked_crs_files(farmer_crs.path()).is_empty());
    let start_farmer_balance = m.farmer_balance_sat();
    let sizes = [0usize, 1, 4096, 5 * 1024 * 1024 + 3, 64 * 1024 * 1024];
    let mut paid = 0u64;
    for (i, size) in sizes.into_iter().enumerate() {
        let data = seeded_bytes(i as u64, size);
        let input = m.file(&format!("in-{size}"), &data);
        let id = m.open(&input).expect("dstore-open");
        assert_eq!(id.len(), 64, "a contract id: {id}");
        let s = status(&m, &id);
        assert_eq!(s["bytes_done"], s["bytes_total"], "{s}");
        assert_eq!(farmer_status(&m, &id)["phase"], "stored");

        let output = m.dir.path().join(format!("out-{size}"));
        let result = m.download(&id, &output).expect("dstore-download");
        assert_eq!(
            std::fs::read(&output).expect("output written"),
            data,
            "size {size}"
        );
        assert_eq!(
            checked_crs_files(farmer_crs.path()).len(),
            1,
            "the farmer checked the renter's CRS and kept it (size {size})"
        );
        // The farmer broadcast TX2 and TX3; once mined, the payout is in its wallet.
        let tx3 = result["tx3"].as_str().expect("tx3").to_string();
        m.node.mine(1);
        assert_eq!(m.node.confirmations(&tx3), 1, "TX3 is mined");
        assert_eq!(
            m.node.confirmations(result["tx2"].as_str().unwrap()),
            1,
            "TX2 is mined"
        );
        let farmer = farmer_status(&m, &id);
        let payouts = farmer["payouts"].as_array().expect("payouts");
        assert_eq!(payouts.len(), 1, "{farmer}");
        assert_eq!(payouts[0]["tx3"], tx3.as_str());
        paid += payouts[0]["amount_sat"].as_u64().unwrap();
        assert_eq!(
            m.farmer_balance_sat(),
            start_farmer_balance + paid,
            "the payout is mined to the farmer's wallet"
        );
        assert!(payouts[0]["amount_sat"].as_u64().unwrap() < TEST_PRICE_SAT);
    }
    let listed = m.renter().call_ok("dstore-list", json!([]));
    assert_eq!(listed.as_array().unwrap().len(), sizes.len());
}

#[test]
fn e2e_farmer_disappears_after_tx1_then_refund_after_t1() {
    let mut m = Market::start(
        &crs_dir(),
        Faults {
            farmer: Some("exit-after-tx1"),
            ..Faults::default()
        },
    );
    let before = m.renter_balance_sat();
    let input = m.file("in", &seeded_bytes(7, 10_000));
    let id = m.open(&input).expect("dstore-open");
    let output = m.dir.path().join("out");
    let err = m.download(&id, &output).unwrap_err();
    assert!(err.contains("farmer"), "a clear error: {err}");
    assert!(!output.exists(), "nothing is written");
    m.kill_farmer();
    let s = status(&m, &id);
    assert_eq!(s["downloads"][0]["phase"], "tx1_funded", "{s}");
    let locked = before - m.renter_balance_sat();
    assert!(locked >= TEST_PRICE_SAT, "TX1 locked the price: {locked}");
    let refund = refund_after_t1(&m, &id);
    assert_eq!(refund["amount_sat"], TEST_PRICE_SAT - 1_000);
    let lost = before - m.renter_balance_sat();
    assert!(lost < 5_000, "only fees are lost: {lost}");
}

#[test]
fn e2e_farmer_never_broadcasts_tx2_then_refund_after_t1() {
    let m = Market::start(
        &crs_dir(),
        Faults {
            farmer: Some("withhold-tx2"),
            ..Faults::default()
        },
    );
    let input = m.file("in", &seeded_bytes(8, 5_000));
    let id = m.open(&input).expect("dstore-open");
    let output = m.dir.path().join("out");
    // The paid download waits for TX2 in the background.
    let waiting = m.download_started(&id, &output).expect("dstore-download");
    assert_eq!(waiting["status"], "waiting", "{waiting}");
    assert!(!output.exists());
    let s = status(&m, &id);
    assert_eq!(s["downloads"][0]["phase"], "tx3_signed", "{s}");
    let tx2 = s["downloads"][0]["tx2"].as_str().unwrap().to_string();
    refund_after_t1(&m, &id);
    assert!(
        m.node.rpc("getrawtransaction", json!([tx2])).is_err(),
        "TX2 never appeared"
    );
    // At T1 the background download gave up, pointing at dstore-refund.
    let err = dstore_tests::wait_until("the download to give up", Duration::from_secs(60), || {
        status(&m, &id)["downloads"][0]["error"]
            .as_str()
            .map(str::to_string)
    });
    assert!(
        err.contains("TX2") && err.contains("dstore-refund"),
        "{err}"
    );
}

#[test]
fn e2e_tx2_broadcast_late_finishes_the_paid_download_without_paying_twice() {
    let mut m = Market::start(
        &crs_dir(),
        Faults {
            farmer: Some("withhold-tx2"),
            ..Faults::default()
        },
    );
    let data = seeded_bytes(16, 70_000);
    let input = m.file("in", &data);
    let id = m.open(&input).expect("dstore-open");
    let output = m.dir.path().join("out");
    let waiting = m.download_started(&id, &output).expect("dstore-download");
    assert_eq!(waiting["status"], "waiting", "{waiting}");
    let paid = m.renter_balance_sat();
    // The farmer restarts (as after a crash between storing and broadcasting its claim)
    // and broadcasts TX2 and TX3 then; the renter's next dstore-download waits for the
    // download it paid for, which finishes in the background.
    m.kill_farmer();
    m.start_farmer();
    let result = m
        .download(&id, &output)
        .expect("the paid download finishes");
    assert!(std::fs::read(&output).unwrap() == data);
    let s = status(&m, &id);
    assert_eq!(
        s["downloads"].as_array().unwrap().len(),
        1,
        "no second download: {s}"
    );
    assert_eq!(s["downloads"][0]["phase"], "done");
    assert_eq!(m.renter_balance_sat(), paid, "nothing paid twice");
    m.node.mine(1);
    let tx3 = farmer_status(&m, &id)["payouts"][0]["tx3"]
        .as_str()
        .expect("the farmer recorded its payout")
        .to_string();
    assert_eq!(m.node.confirmations(&tx3), 1);
    assert_eq!(m.node.confirmations(result["tx2"].as_str().unwrap()), 1);
}

#[test]
fn e2e_farmer_that_never_claims_lets_the_renter_refund_tx2_after_delta() {
    let m = Market::start(
        &crs_dir(),
        Faults {
            farmer: Some("withhold-tx3"),
            ..Faults::default()
        },
    );
    let data = seeded_bytes(17, 9_000);
    let input = m.file("in", &data);
    let id = m.open(&input).expect("dstore-open");
    let before = m.renter_balance_sat();
    let output = m.dir.path().join("out");
    // TX2 alone reveals f: the renter gets its file.
    m.download(&id, &output)
        .expect("the download completes on TX2 alone");
    assert!(std::fs::read(&output).unwrap() == data);
    // The farmer never claims TX2:0, so after Δ blocks it goes back to the renter.
    m.node.mine(1);
    let early = m.renter().call_ok("dstore-refund", json!([id]));
    assert_eq!(early["status"], "waiting", "{early}");
    assert!(
        early["message"].as_str().unwrap().contains("TX2 refund"),
        "{early}"
    );
    mine_to_height(&m, early["refund_height"].as_u64().unwrap());
    let refund = m.renter().call_ok("dstore-refund", json!([id]));
    assert_eq!(refund["status"], "broadcast", "{refund}");
    m.node.mine(1);
    assert_eq!(m.node.confirmations(refund["txid"].as_str().unwrap()), 1);
    let lost = before - m.renter_balance_sat();
    assert!(lost < 5_000, "only fees are lost: {lost}");
    let again = m.renter().call_ok("dstore-refund", json!([id]));
    assert_eq!(again["status"], "nothing", "{again}");
}

#[test]
fn e2e_lying_farmer_fails_root_e_before_any_payment() {
    let m = Market::start(
        &crs_dir(),
        Faults {
            farmer: Some("flip-sealed-byte"),
            ..Faults::default()
        },
    );
    let input = m.file("in", &seeded_bytes(9, 100_000));
    let id = m.open(&input).expect("dstore-open");
    let before = m.renter_balance_sat();
    let output = m.dir.path().join("out");
    let err = m.download(&id, &output).unwrap_err();
    assert!(
        err.contains("root_E") && err.contains("nothing was paid"),
        "{err}"
    );
    assert!(!output.exists());
    let s = status(&m, &id);
    assert_eq!(s["downloads"][0]["phase"], "failed", "{s}");
    assert_eq!(s["downloads"][0]["tx1"], Value::Null, "no TX1");
    assert_eq!(m.renter_balance_sat(), before, "no money moved");
}

#[test]
fn e2e_farmer_sealing_wrong_data_is_caught_by_a_fraud_proof() {
    let m = Market::start(
        &crs_dir(),
        Faults {
            farmer: Some("seal-wrong-data"),
            ..Faults::default()
        },
    );
    let input = m.file("in", &seeded_bytes(10, 50_000));
    let id = m.open(&input).expect("dstore-open");
    let output = m.dir.path().join("out");
    let err = m.download(&id, &output).unwrap_err();
    assert!(err.contains("fraud proof saved to"), "{err}");
    assert!(!output.exists(), "nothing is written to output_path");
    let s = status(&m, &id);
    assert_eq!(s["downloads"][0]["phase"], "fraud", "{s}");
    let proof = s["downloads"][0]["fraud_proof"]
        .as_str()
        .unwrap()
        .to_string();
    let checked = m
        .renter_cli(&["dstore-verify-fraud", &proof])
        .expect("the fraud proof verifies");
    let checked: Value = serde_json::from_str(&checked).unwrap();
    assert_eq!(checked["valid"], true);
    assert_eq!(checked["contract_id"], id.as_str());
    // A tampered proof does not verify.
    let mut tampered: Value = serde_json::from_slice(&std::fs::read(&proof).unwrap()).unwrap();
    tampered["segment_index"] = json!(tampered["segment_index"].as_u64().unwrap() + 1);
    let bad = m.file("bad-proof.json", tampered.to_string().as_bytes());
    let err = m
        .renter_cli(&["dstore-verify-fraud", bad.to_str().unwrap()])
        .unwrap_err();
    assert!(err.contains("does not hold"), "{err}");
}

#[test]
fn e2e_subverted_crs_makes_the_farmer_abort_before_any_proof() {
    let m = Market::start(
        &crs_dir(),
        Faults {
            renter: Some("subvert-crs"),
            ..Faults::default()
        },
    );
    let input = m.file("in", &seeded_bytes(11, 3_000));
    let id = m.open(&input).expect("dstore-open");
    let output = m.dir.path().join("out");
    let err = m.download(&id, &output).unwrap_err();
    assert!(err.contains("bad CRS"), "{err}");
    let farmer = farmer_status(&m, &id);
    assert_eq!(farmer["phase"], "download aborted", "{farmer}");
    assert!(farmer["payouts"].as_array().unwrap().is_empty());
    // The renter got no proof and no TX2; its TX1 money comes back after T1.
    refund_after_t1(&m, &id);
}

/// A renter identity for hand-made envelopes.
fn identity(seed: u8) -> Keypair {
    Keypair::from_secret_key(SECP256K1, &SecretKey::from_slice(&[seed; 32]).unwrap())
}

fn post(m: &Market, kind: &str, body: Vec<u8>) -> (u16, Value) {
    m.post_message(kind, body)
}

#[test]
fn e2e_bad_input_gets_clear_errors_and_changes_nothing() {
    let m = Market::start(&crs_dir(), Faults::default());
    let renter = identity(5);
    let id = [42u8; 32];
    let open = |len: u64, seq: u64| {
        let request = OpenRequest {
            file_length: len,
            download_price: Amount::from_sat(TEST_PRICE_SAT),
        };
        peer::sign(&renter, id, seq, &request).unwrap()
    };
    // Garbage, oversized and unknown-kind messages.
    let (code, body) = post(&m, "open_request", b"{not json".to_vec());
    assert_eq!(code, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("malformed"),
        "{body}"
    );
    let oversized = dstore_protocol::peer::MAX_ENVELOPE_BYTES + 1;
    let (code, _) = post(&m, "open_request", vec![b' '; oversized]);
    assert_eq!(code, 413);
    let (code, body) = post(&m, "no_such_kind", open(10, 0));
    assert_eq!(code, 404, "{body}");
    // Too large for this farmer; nothing is created.
    let (code, body) = post(&m, "open_request", open(1 << 40, 0));
    assert_eq!(code, 400);
    assert!(
        body["message"].as_str().unwrap().contains("at most"),
        "{body}"
    );
    assert!(m
        .farmer()
        .call("dstore-status", json!([hex::encode(id)]))
        .is_err());
    // Accepted once; the same open again is a retry (same reply); a new one is refused.
    let (code, first) = post(&m, "open_request", open(100, 0));
    assert_eq!(code, 200, "{first}");
    let (_, again) = post(&m, "open_request", open(100, 0));
    assert_eq!(first, again, "an exact retry gets the stored reply");
    let (code, body) = post(&m, "open_request", open(101, 0));
    assert_eq!(code, 400);
    assert!(
        body["message"].as_str().unwrap().contains("already exists"),
        "{body}"
    );
    // Out of order and replayed sequence numbers.
    let done = |seq: u64| {
        peer::sign(
            &renter,
            id,
            seq,
            &UploadDone {
                root_c: [0; 32],
                length: 100,
            },
        )
        .unwrap()
    };
    let (code, body) = post(&m, "upload_done", done(5));
    assert_eq!(code, 400);
    assert!(
        body["message"].as_str().unwrap().contains("out of order"),
        "{body}"
    );
    let (code, body) = post(&m, "upload_done", done(0));
    assert_eq!(code, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("already processed"),
        "{body}"
    );
    // Another key cannot speak for this contract.
    let forged = peer::sign(
        &identity(6),
        id,
        1,
        &UploadDone {
            root_c: [0; 32],
            length: 100,
        },
    )
    .unwrap();
    let (code, body) = post(&m, "upload_done", forged);
    assert_eq!(code, 400);
    assert!(
        body["message"].as_str().unwrap().contains("unexpected key"),
        "{body}"
    );
    // An upload past the offer, or unsigned, is refused before any byte is stored.
    let http = reqwest::blocking::Client::new();
    let path = format!("/dstore/v1/upload/{}?offset=0", hex::encode(id));
    let put = |auth: String, body: Vec<u8>| {
        http.put(format!("{}{path}", m.peer_url))
            .header("x-dstore-auth", auth)
            .body(body)
            .send()
            .unwrap()
    };
    let signed = dstore_plugin_sign(&renter, &path, &[0; 101]);
    let response = put(signed.clone(), vec![0; 101]);
    assert_eq!(response.status().as_u16(), 413);
    let response = put(
        dstore_plugin_sign(&identity(6), &path, &[0; 10]),
        vec![0; 10],
    );
    assert_eq!(response.status().as_u16(), 401);
    let farmer = farmer_status(&m, &hex::encode(id));
    assert_eq!(farmer["bytes_done"], 0, "{farmer}");
    // The upload is not done: claiming it is refused and changes nothing.
    let (code, body) = post(&m, "upload_done", done(1));
    assert_eq!(code, 400);
    assert!(
        body["message"].as_str().unwrap().contains("incomplete"),
        "{body}"
    );
    assert_eq!(farmer_status(&m, &hex::encode(id))["phase"], "uploading");

    // RPC side: unknown contract ids and malformed parameters.
    let unknown = "00".repeat(32);
    for method in ["dstore-status", "dstore-download", "dstore-refund"] {
        let mut params = vec![json!(unknown)];
        if method == "dstore-download" {
            params.push(json!(m.dir.path().join("x").to_str().unwrap()));
        }
        let err = m.renter().call(method, json!(params)).unwrap_err();
        assert_eq!(err.code, -5, "{method}: {err}");
    }
    let err = m.renter().call("dstore-status", json!(["zz"])).unwrap_err();
    assert_eq!(err.code, -8);
    let err = m
        .renter()
        .call("dstore-open", json!([m.peer_url, "/no/such/file"]))
        .unwrap_err();
    assert_eq!(err.code, -8, "{err}");
    let input = m.file("in", b"abc");
    let err = m
        .renter()
        .call(
            "dstore-open",
            json!(["http://127.0.0.1:1", input.to_str().unwrap()]),
        )
        .unwrap_err();
    assert_eq!(err.code, -9, "{err}");
    let err = m
        .renter()
        .call(
            "dstore-open",
            json!([m.peer_url, input.to_str().unwrap(), "lots"]),
        )
        .unwrap_err();
    assert_eq!(err.code, -3, "{err}");
    assert!(
        m.renter()
            .call_ok("dstore-list", json!([]))
            .as_array()
            .unwrap()
            .is_empty(),
        "no failed call left a contract behind"
    );
}

fn dstore_plugin_sign(identity: &Keypair, path: &str, body: &[u8]) -> String {
    let request = dstore_plugin::wire::BulkRequest::new("PUT", path, body, [0; 32]);
    dstore_plugin::wire::sign_bulk(identity, &request)
}

/// Runs a renter RPC on a thread (it outlives a plugin being killed under it).
pub(crate) fn call_in_thread(
    m: &Market,
    method: &'static str,
    params: Value,
) -> std::thread::JoinHandle<Result<Value, dstore_tests::RpcError>> {
    let url = m.renter().rpc_url();
    let cookie = m.renter().credentials();
    std::thread::spawn(move || {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(900))
            .build()
            .unwrap();
        dstore_tests::node::rpc_call(&http, &url, &cookie, method, params)
    })
}

#[test]
fn e2e_kill_9_mid_upload_either_side_then_the_upload_completes() {
    // The farmer dies mid-upload: dstore-open retries and resumes once it is back. Its
    // `hold-upload-answers` fault stops the upload after two stored parts, so the kill
    // lands mid-file however fast the upload runs.
    let mut m = Market::start(
        &crs_dir(),
        Faults {
            farmer: Some("hold-upload-answers"),
            ..Faults::default()
        },
    );
    let data = seeded_bytes(12, 48 * 1024 * 1024);
    let input = m.file("in", &data);
    let opener = call_in_thread(
        &m,
        "dstore-open",
        json!([m.peer_url, input.to_str().unwrap()]),
    );
    let (interrupted, total) = wait_for_two_stored_parts(&m);
    m.kill_farmer();
    // The kill interrupted the upload: the dead farmer holds fewer bytes than the file
    // has, and no blob.
    let staged = farmer_staged_bytes(&m, &interrupted);
    assert!(
        staged < total,
        "the farmer had staged {staged} of {total} bytes"
    );
    assert!(!farmer_blob(&m, &interrupted).exists(), "no blob yet");
    m.start_farmer();
    let id = opener
        .join()
        .unwrap()
        .expect("dstore-open survives a farmer crash");
    let id = id.as_str().unwrap().to_string();
    assert_eq!(id, interrupted);
    assert_eq!(farmer_status(&m, &id)["phase"], "stored");

    // The renter dies mid-upload: after its restart the upload resumes by itself. Its
    // `stall-mid-upload` fault stops it after two stored parts, for the same reason.
    m.kill_renter();
    m.start_renter_with_fault("stall-mid-upload");
    let data2 = seeded_bytes(13, 48 * 1024 * 1024);
    let input2 = m.file("in2", &data2);
    let opener = call_in_thread(
        &m,
        "dstore-open",
        json!([m.peer_url, input2.to_str().unwrap()]),
    );
    let (interrupted, total) = wait_for_two_stored_parts(&m);
    m.kill_renter();
    // The kill interrupted the upload: the farmer has neither all the bytes nor the
    // renter's upload_done.
    let f = farmer_status(&m, &interrupted);
    assert_eq!(f["phase"], "uploading", "{f}");
    assert!(f["bytes_done"].as_u64().unwrap() < total, "{f}");
    let _ = opener.join();
    m.start_renter();
    let list = m.renter().call_ok("dstore-list", json!([]));
    let id2 = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["contract_id"].as_str().unwrap().to_string())
        .find(|c| *c != id)
        .expect("the interrupted contract is kept");
    assert_eq!(id2, interrupted);
    dstore_tests::wait_until("the resumed upload", Duration::from_secs(300), || {
        (status(&m, &id2)["phase"] == "stored").then_some(())
    });
    assert_eq!(farmer_status(&m, &id2)["phase"], "stored");
    // Both files come back intact.
    for (id, data) in [(&id, &data), (&id2, &data2)] {
        let out = m.dir.path().join(format!("out-{id}"));
        m.download(id, &out).expect("dstore-download");
        assert!(std::fs::read(&out).unwrap() == *data, "contract {id}");
    }
}

#[test]
fn e2e_kill_9_mid_download_either_side_loses_no_coins() {
    let mut m = Market::start(&crs_dir(), Faults::default());
    let data = seeded_bytes(14, 4 * 1024 * 1024);
    let input = m.file("in", &data);
    let id = m.open(&input).expect("dstore-open");
    let out = m.dir.path().join("out");

    // The renter dies while the farmer proves: after its restart the same download
    // resumes (no second TX1) and completes with the right bytes.
    let downloader = call_in_thread(&m, "dstore-download", json!([id, out.to_str().unwrap()]));
    wait_for_phase(&m, &id, "proving");
    m.kill_renter();
    let _ = downloader.join();
    m.start_renter();
    let first = m.download_started(&id, &out).expect("the resumed download");
    dstore_tests::market::finish_download(
        &m.node,
        first,
        || status(&m, &id),
        || m.download_started(&id, &out),
    )
    .expect("the resumed download finishes");
    assert!(std::fs::read(&out).unwrap() == data);
    let s = status(&m, &id);
    assert_eq!(
        s["downloads"].as_array().unwrap().len(),
        1,
        "one download, one TX1: {s}"
    );
    std::fs::remove_file(&out).unwrap();

    // The farmer dies in the middle of the next download: it fails clearly, the money
    // comes back after T1, and a download after the farmer's restart works.
    let before = m.renter_balance_sat();
    let downloader = call_in_thread(&m, "dstore-download", json!([id, out.to_str().unwrap()]));
    wait_for_phase(&m, &id, "proving");
    m.kill_farmer();
    let err = downloader.join().unwrap().unwrap_err();
    assert!(err.message.contains("farmer"), "{err}");
    assert!(!out.exists());
    m.start_farmer();
    refund_after_t1(&m, &id);
    let lost = before - m.renter_balance_sat();
    assert!(lost < 5_000, "only fees are lost: {lost}");
    m.download(&id, &out).expect("a download after the restart");
    assert!(std::fs::read(&out).unwrap() == data);
}

/// The bytes the farmer has staged of contract `id`'s upload (0 if none).
fn farmer_staged_bytes(m: &Market, id: &str) -> u64 {
    let staging = m.dir.path().join("farmer-storage/staging").join(id);
    std::fs::metadata(staging).map_or(0, |meta| meta.len())
}

/// Where the farmer keeps contract `id`'s blob once the upload is done.
fn farmer_blob(m: &Market, id: &str) -> PathBuf {
    m.dir.path().join("farmer-storage/objects/blobs").join(id)
}

/// Waits until the farmer has stored two parts of a running upload; returns its contract
/// id and size.
fn wait_for_two_stored_parts(m: &Market) -> (String, u64) {
    let two_parts = 2 * dstore_plugin::wire::UPLOAD_PART as u64;
    dstore_tests::wait_until("two stored parts", Duration::from_secs(300), || {
        let upload = crate::transfer_stream::uploading_contract(m)?;
        (upload.farmer_done >= two_parts).then_some((upload.id, upload.total))
    })
}

fn wait_for_phase(m: &Market, id: &str, phase: &str) {
    dstore_tests::wait_until(&format!("phase {phase}"), Duration::from_secs(600), || {
        (status(m, id)["phase"] == phase).then_some(())
    });
}

/// Runs the `dstore` client against the renter plugin.
fn dstore_cli(m: &Market, args: &[&str]) -> Result<String, String> {
    let output =
        std::process::Command::new(dstore_tests::bins::dstore_binary("dstore-plugin", "dstore"))
            .arg(format!("--datadir={}", m.renter().datadir().display()))
            .arg(format!("--rpc-port={}", m.renter().rpc_port))
            .args(args)
            .output()
            .expect("run dstore");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

#[test]
fn e2e_dstore_cli_opens_downloads_and_reports() {
    let m = Market::start(&crs_dir(), Faults::default());
    let data = seeded_bytes(15, 3 * 1024 * 1024 + 5);
    let input = m.file("in", &data);
    let id = dstore_cli(&m, &["open", &m.peer_url, input.to_str().unwrap()]).expect("dstore open");
    assert_eq!(id.len(), 64, "{id}");
    let out = m.dir.path().join("out");
    // `dstore download` follows the download through its wait for TX1's confirmation
    // (mined here, as a user's chain would) until it is done.
    let result = std::thread::scope(|scope| {
        let cli = scope.spawn(|| dstore_cli(&m, &["download", &id, out.to_str().unwrap()]));
        dstore_tests::market::mine_while_tx1_confirms(
            &m.node,
            || status(&m, &id),
            || cli.is_finished(),
        );
        cli.join().unwrap()
    })
    .expect("dstore download");
    let result: Value = serde_json::from_str(&result).expect("JSON");
    assert_eq!(result["contract_id"], id.as_str());
    assert!(std::fs::read(&out).unwrap() == data);
    let status: Value = serde_json::from_str(&dstore_cli(&m, &["status", &id]).unwrap()).unwrap();
    assert_eq!(status["downloads"][0]["phase"], "done");
    let list: Value = serde_json::from_str(&dstore_cli(&m, &["list"]).unwrap()).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    // Other methods pass through to bitcoind, and errors come back like bitcoin-cli's.
    assert_eq!(
        dstore_cli(&m, &["getblockcount"]).unwrap(),
        m.node.block_count().to_string()
    );
    let err = dstore_cli(&m, &["status", "nope"]).unwrap_err();
    assert!(err.contains("error code: -8"), "{err}");
}

/// A local S3-compatible server (moto's, installed from PyPI by scripts/test.sh), stopped
/// on drop.
struct S3Server {
    child: std::process::Child,
    endpoint: String,
}

impl S3Server {
    fn start() -> S3Server {
        let port = dstore_tests::ports::free_ports(1)[0];
        let child = std::process::Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server (pip install 'moto[server]') runs");
        let endpoint = format!("http://127.0.0.1:{port}");
        let http = reqwest::blocking::Client::new();
        dstore_tests::wait_until("moto_server to start", Duration::from_secs(60), || {
            http.get(&endpoint).send().ok().map(|_| ())
        });
        S3Server { child, endpoint }
    }

    fn create_bucket(&self, bucket: &str) {
        let response = reqwest::blocking::Client::new()
            .put(format!("{}/{bucket}", self.endpoint))
            .send()
            .unwrap();
        assert!(response.status().is_success(), "{response:?}");
    }

    fn list(&self, bucket: &str) -> String {
        reqwest::blocking::get(format!("{}/{bucket}?list-type=2", self.endpoint))
            .unwrap()
            .text()
            .unwrap()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn e2e_farmer_keeps_files_in_an_s3_compatible_store() {
    let s3 = S3Server::start();
    s3.create_bucket("dstore-blobs");
    // The farmer process gets these (the object store reads the standard AWS_* variables);
    // the test process's own environment is left alone.
    let m = Market::start_with_farmer_env(
        &crs_dir(),
        Faults::default(),
        80 << 20,
        &["--storage-url=s3://dstore-blobs/farm".to_string()],
        &[
            ("AWS_ENDPOINT", s3.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "dstore-test"),
            ("AWS_SECRET_ACCESS_KEY", "dstore-test-secret"),
            ("AWS_REGION", "us-east-1"),
        ],
    );
    let data = seeded_bytes(18, 9 * 1024 * 1024 + 1);
    let input = m.file("in", &data);
    let id = m.open(&input).expect("dstore-open");
    let listing = s3.list("dstore-blobs");
    assert!(
        listing.contains(&format!("farm/blobs/{id}")),
        "the ciphertext is in the bucket: {listing}"
    );
    let local = m.dir.path().join("farmer-storage").join("objects");
    assert!(!local.exists(), "nothing stored on the local disk");
    let out = m.dir.path().join("out");
    m.download(&id, &out)
        .expect("dstore-download from the S3-backed farmer");
    assert!(std::fs::read(&out).unwrap() == data);
}
