//! Issue 20, a renter killed in the middle of a streamed upload whose file then changes.
//! Each upload part's hash is synced to the renter's `<contract>.sent` log before the part
//! is sent; the resumed encrypting pass re-derives the parts and stops at the first one
//! that differs from the log, so no new plaintext ever goes out under a (key, nonce) the
//! farmer may already hold ciphertext for. A change beyond every logged part is new data:
//! the resumed upload sends it and the contract stores the file as it is now.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dstore_plugin::wire::UPLOAD_PART;
use dstore_protocol::datapath::{ciphertext_len, CHUNK_SIZE, SEALED_CHUNK_SIZE};
use dstore_tests::market::{Faults, Market};
use dstore_tests::parties::seeded_bytes;
use dstore_tests::wait_until;
use serde_json::json;

use crate::e2e::{call_in_thread, crs_dir, farmer_status, status};
use crate::transfer_stream::uploading_contract;

/// Bytes of one sent-log record: the part's offset (u64 big-endian) and its signed digest.
const SENT_RECORD: usize = 8 + 32;
/// The parts the `stall-mid-upload` renter has acknowledged when it stalls (the PUTs of
/// its window already in flight are stored too).
const PARTS_BEFORE_STALL: u64 = 2;
/// The test files: many more parts than the renter's window and channel hold, so the
/// stalled pass leaves parts logged but never sent, and parts never logged.
const FILE_BYTES: usize = 64 << 20;
/// What the renter refuses a resume with, in the renter's log.
const CHANGED: &str = "the file changed since its upload started";

/// A contract whose streamed upload a killed renter left behind.
struct Interrupted {
    id: String,
    /// The ciphertext offsets in the renter's sent log, ascending.
    logged: Vec<u64>,
    /// The farmer's stored count after the kill.
    held: u64,
}

/// A market whose renter stalls its streamed upload after two stored parts.
fn stalling_market() -> Market {
    Market::start(
        &crs_dir(),
        Faults {
            renter: Some("stall-mid-upload"),
            ..Faults::default()
        },
    )
}

/// Opens `input` with the `stall-mid-upload` renter, waits until the farmer stores the
/// parts sent before the stall and the encrypting pass has logged at least one part more
/// (one the farmer never acknowledged), then kill -9s the renter.
fn stall_and_kill(m: &mut Market, input: &Path) -> Interrupted {
    let opener = call_in_thread(
        m,
        "dstore-open",
        json!([m.peer_url, input.to_str().unwrap()]),
    );
    let stalled = PARTS_BEFORE_STALL * UPLOAD_PART as u64;
    let id = wait_until(
        "the streamed upload to stall",
        Duration::from_secs(300),
        || {
            let upload = uploading_contract(m)?;
            let logged_end = sent_offsets(m, &upload.id).len() as u64 * UPLOAD_PART as u64;
            let done = upload.farmer_done;
            (done >= stalled && logged_end > done).then_some(upload.id)
        },
    );
    m.kill_renter();
    let _ = opener.join();
    let f = farmer_status(m, &id);
    assert_eq!(f["phase"], "uploading", "{f}");
    let held = f["bytes_done"].as_u64().unwrap();
    assert!(
        held >= stalled,
        "the farmer stored the parts before the stall: {f}"
    );
    // After the kill the log is final (a torn last record counts as never sent).
    let logged = sent_offsets(m, &id);
    let expected: Vec<u64> = (0..logged.len() as u64)
        .map(|i| i * UPLOAD_PART as u64)
        .collect();
    assert_eq!(logged, expected, "the pass logs its parts in order");
    Interrupted { id, logged, held }
}

/// The renter's sent log of contract `id` (readable while the renter is dead too).
fn sent_log_path(m: &Market, id: &str) -> PathBuf {
    let work_dir = m.dir.path().join("renter").join("regtest").join("renter");
    work_dir.join(format!("{id}.sent"))
}

/// The part offsets in contract `id`'s sent log (whole records only), ascending.
fn sent_offsets(m: &Market, id: &str) -> Vec<u64> {
    let bytes = std::fs::read(sent_log_path(m, id)).unwrap_or_default();
    let mut offsets: Vec<u64> = bytes
        .chunks_exact(SENT_RECORD)
        .map(|record| u64::from_be_bytes(record[..8].try_into().unwrap()))
        .collect();
    offsets.sort_unstable();
    offsets
}

/// A plaintext position whose ciphertext byte lies in the middle of the upload part at
/// ciphertext offset `part` (chunks are sealed as CHUNK_SIZE bytes plus a 16-byte tag; a
/// position in a tag moves to the next chunk's first byte, still inside the part). The
/// chunk's tag changes too, but it follows the byte, so no earlier part changes.
fn plaintext_in_part(part: u64) -> usize {
    let (chunk, sealed) = (CHUNK_SIZE as u64, SEALED_CHUNK_SIZE as u64);
    let at = part + UPLOAD_PART as u64 / 2;
    let (index, within) = (at / sealed, at % sealed);
    let plain = if within < chunk {
        index * chunk + within
    } else {
        (index + 1) * chunk
    };
    usize::try_from(plain).unwrap()
}

/// Restarts the renter (without its fault) and waits until its resumed upload of `id`
/// fails; returns the reason `dstore-status` shows for it.
fn restart_and_wait_for_refusal(m: &mut Market, id: &str) -> String {
    m.start_renter();
    let line = wait_until(
        "the resumed upload to fail",
        Duration::from_secs(300),
        || status(m, id)["error"].as_str().map(str::to_string),
    );
    assert!(line.contains(CHANGED), "{line}");
    // Not a finished contract: still not stored, nothing running, not downloadable.
    let s = status(m, id);
    assert_eq!(s["running"], false, "{s}");
    assert_ne!(s["phase"], "stored", "{s}");
    let out = m.dir.path().join("out-refused");
    let err = m.download(id, &out).unwrap_err();
    assert!(err.contains("not stored"), "{err}");
    line
}

/// A new contract for the file as it is now works: stored, and it comes back byte for byte.
fn store_anew_and_download(m: &Market, input: &Path, data: &[u8]) {
    let id = m.open(input).expect("dstore-open of the changed file");
    assert_eq!(status(m, &id)["phase"], "stored");
    let output = m.dir.path().join("out-new");
    let result = m.download(&id, &output).expect("dstore-download");
    assert_eq!(result["status"], "done", "{result}");
    assert!(
        std::fs::read(&output).unwrap() == data,
        "the file comes back"
    );
}

#[test]
fn e2e_stream_file_changed_in_an_acknowledged_part_is_not_resumed_and_nothing_is_sent() {
    let mut m = stalling_market();
    let mut data = seeded_bytes(211, FILE_BYTES);
    let input = m.file("in", &data);
    let (renter_before, farmer_before) = (m.renter_balance_sat(), m.farmer_balance_sat());
    let Interrupted { id, logged, held } = stall_and_kill(&mut m, &input);

    // A byte of the first part, which the farmer stored and acknowledged, changes.
    assert!(logged.contains(&0), "{logged:?}");
    data[plaintext_in_part(0)] ^= 0x5a;
    std::fs::write(&input, &data).unwrap();

    let line = restart_and_wait_for_refusal(&mut m, &id);
    assert!(line.contains("the part at byte 0 differs"), "{line}");
    // The pass stopped at the first part, before anything was streamed: the log (every
    // part is logged before it is sent) gained no part, and the farmer holds no more than
    // the logged parts (a PUT in flight at the kill may have landed after it).
    let f = farmer_status(&m, &id);
    let logged_end = logged.len() as u64 * UPLOAD_PART as u64;
    let done = f["bytes_done"].as_u64().unwrap();
    assert!((held..=logged_end).contains(&done), "{f}");
    assert_eq!(f["phase"], "uploading", "{f}");
    assert_eq!(sent_offsets(&m, &id), logged, "no new part was logged");
    assert_eq!(m.renter_balance_sat(), renter_before, "no money moved");
    assert_eq!(m.farmer_balance_sat(), farmer_before, "no money moved");

    store_anew_and_download(&m, &input, &data);
    let list = m.renter().call_ok("dstore-list", json!([]));
    assert_eq!(
        list.as_array().unwrap().len(),
        2,
        "the refused one is kept: {list}"
    );
}

#[test]
fn e2e_stream_file_changed_in_a_logged_unacknowledged_part_stops_the_resume_before_it() {
    let mut m = stalling_market();
    let mut data = seeded_bytes(212, FILE_BYTES);
    let input = m.file("in", &data);
    let (renter_before, farmer_before) = (m.renter_balance_sat(), m.farmer_balance_sat());
    let Interrupted { id, logged, held } = stall_and_kill(&mut m, &input);

    // The last logged part: its hash was synced before the pass handed it to the sender,
    // but the farmer never acknowledged it (the renter stalled before). The renter cannot
    // know whether such a part left the machine, so it counts as sent.
    let last = *logged.last().unwrap();
    assert!(last >= held, "{logged:?}, farmer at {held}");
    data[plaintext_in_part(last)] ^= 0x5a;
    std::fs::write(&input, &data).unwrap();

    let line = restart_and_wait_for_refusal(&mut m, &id);
    assert!(
        line.contains(&format!("the part at byte {last} differs")),
        "{line}"
    );
    // The resumed pass streams from the farmer's count: the unchanged parts between that
    // count and the changed part derive the very ciphertext logged for them and are sent;
    // the changed part, and everything after it, never is.
    let f = farmer_status(&m, &id);
    assert_eq!(f["bytes_done"], last, "{f}");
    assert_eq!(f["phase"], "uploading", "{f}");
    assert_eq!(sent_offsets(&m, &id), logged, "no new part was logged");
    assert_eq!(m.renter_balance_sat(), renter_before, "no money moved");
    assert_eq!(m.farmer_balance_sat(), farmer_before, "no money moved");

    store_anew_and_download(&m, &input, &data);
}

#[test]
fn e2e_stream_file_changed_beyond_every_logged_part_resumes_and_stores_the_file_as_it_is_now() {
    let mut m = stalling_market();
    let mut data = seeded_bytes(213, FILE_BYTES);
    let input = m.file("in", &data);
    let renter_before = m.renter_balance_sat();
    let Interrupted { id, logged, .. } = stall_and_kill(&mut m, &input);

    // Change the first part beyond the log, and the file's last byte.
    let first_unlogged = *logged.last().unwrap() + UPLOAD_PART as u64;
    let total = ciphertext_len(data.len() as u64).unwrap();
    assert!(first_unlogged < total, "{logged:?} of {total} bytes");
    data[plaintext_in_part(first_unlogged)] ^= 0x5a;
    *data.last_mut().unwrap() ^= 0x5a;
    std::fs::write(&input, &data).unwrap();

    // No part of the change was ever encrypted into a part that may have left the machine:
    // the resumed pass re-derives the logged parts unchanged, logs and sends the new ones,
    // and the contract's root_C is that of the file as it is now.
    m.start_renter();
    wait_until("the resumed upload", Duration::from_secs(300), || {
        (status(&m, &id)["phase"] == "stored").then_some(())
    });
    assert_eq!(farmer_status(&m, &id)["phase"], "stored");
    assert!(!m.renter().log().contains(CHANGED), "no refusal");
    let list = m.renter().call_ok("dstore-list", json!([]));
    assert_eq!(list.as_array().unwrap().len(), 1, "one contract: {list}");
    assert_eq!(
        m.renter_balance_sat(),
        renter_before,
        "storing moved no money"
    );

    // What was stored is what was encrypted in the resumed pass: the changed file.
    let output = m.dir.path().join("out");
    let result = m.download(&id, &output).expect("dstore-download");
    assert_eq!(result["status"], "done", "{result}");
    assert!(
        std::fs::read(&output).unwrap() == data,
        "the file as it is now comes back"
    );
}
