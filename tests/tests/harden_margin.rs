//! Issue 15, item 1 (the late messages): a renter's message that reaches the farmer only
//! once the tip is within `--tx2-broadcast-margin-blocks` of T1 gets nothing. A real
//! renter plugin runs the download against a real farmer plugin through a gate that holds
//! one of its messages (the TX3 signature, or TX1's funding) while the test mines up to
//! T1 minus the margin; then the gate lets it through. The farmer refuses it with a clear
//! error and abandons the download: TX2 is never signed or never broadcast, so nothing
//! spends TX1 and f never appears, in the mempool or on the chain.

use std::path::PathBuf;

use dstore_protocol::messages::{Tx1Funded, Tx3RenterSig};
use dstore_protocol::peer::PeerMessage;
use dstore_tests::harden_download::{message_path, SealedGate};
use dstore_tests::harden_tx2::{
    finish, known, renter_download, renter_tx1, spends_of, start_download, wait_for_phase,
    DOWNLOAD_WAIT,
};
use dstore_tests::market::{Faults, Market};
use dstore_tests::parties;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};

/// The farmer's `--tx2-broadcast-margin-blocks` in these tests (the default, set here).
const MARGIN: u64 = 36;

/// The e2e tests' CRS cache: the same TX2 shape, so the renter's CRS is generated once.
fn crs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-crs")
}

/// A market whose renter reaches the farmer only through a gate holding the message `kind`;
/// returns it, the gate and the contract id of a stored file.
fn gated_market(kind: &str, seed: u64) -> (Market, SealedGate, String) {
    let margin = format!("--tx2-broadcast-margin-blocks={MARGIN}");
    let m = Market::start_custom(&crs_dir(), Faults::default(), 80 << 20, &[margin]);
    let gate = SealedGate::holding(&m.peer_url, message_path(kind));
    let data = parties::random_bytes(&mut StdRng::seed_from_u64(seed), 6_000);
    let input = m.file("in", &data);
    let id = m
        .renter_cli(&["dstore-open", &gate.url, input.to_str().unwrap()])
        .expect("dstore-open through the gate");
    (m, gate, id)
}

fn farmer_status(m: &Market, id: &str) -> Value {
    m.farmer().call_ok("dstore-status", json!([id]))
}

/// Mines up to T1 minus the margin, the first height at which TX2 may never go out.
fn mine_to_abandon_height(m: &Market, id: &str) -> u64 {
    let t1 = renter_download(m, id)["refund_height"]
        .as_u64()
        .expect("T1 is known once the offer arrived");
    let abandon = t1 - MARGIN;
    let tip = m.node.block_count();
    assert!(tip < abandon, "the offer left room before the margin");
    m.node.mine((abandon - tip) as u32);
    abandon
}

/// The farmer refused the late message with the abandon error and kept nothing to claim.
fn assert_abandoned(m: &Market, id: &str, abandon: u64) {
    let s = wait_for_phase(m, id, "abandoned");
    assert_eq!(s["payouts"], json!([]), "nothing claimed: {s}");
    let refused = format!(
        "the tip reached height {abandon}, too close to T1 for TX2: the farmer abandons this download"
    );
    assert!(
        m.farmer().log().contains(&refused),
        "the clear error: {refused}"
    );
}

#[test]
fn harden_tx3_signature_after_the_margin_gets_nothing() {
    let (m, gate, id) = gated_market(Tx3RenterSig::KIND, 161);
    let from_height = m.node.block_count();
    let download = start_download(&m, &id, &m.dir.path().join("out"));
    // The farmer proved; the renter's TX3 signature is on its way, held at the gate.
    gate.wait_held(DOWNLOAD_WAIT);
    let s = farmer_status(&m, &id);
    assert_eq!(s["phase"], "download proved", "{s}");
    let tx1 = renter_tx1(&m, &id);
    let tx2 = renter_download(&m, &id)["tx2"]
        .as_str()
        .expect("the renter knows TX2's txid from D")
        .to_string();
    // TX1 confirms deeply meanwhile: only the margin below T1 stands in the way.
    let abandon = mine_to_abandon_height(&m, &id);
    assert!(m.node.confirmations(&tx1.compute_txid().to_string()) >= 1);
    gate.open();
    assert_abandoned(&m, &id, abandon);
    finish(download);
    // Nothing ever spends TX1: the signed TX2 (which reveals f) is gone for good, so no
    // later block brings it out either.
    m.node.mine(2);
    assert!(spends_of(&m.node, &tx1, from_height).is_empty());
    assert!(!known(&m.node, &tx2), "f never appears");
    assert_eq!(farmer_status(&m, &id)["phase"], "download abandoned");
}

#[test]
fn harden_tx1_funded_after_the_margin_gets_nothing() {
    let (m, gate, id) = gated_market(Tx1Funded::KIND, 162);
    let from_height = m.node.block_count();
    let download = start_download(&m, &id, &m.dir.path().join("out"));
    // The renter broadcast TX1; its message that TX1 is funded is held at the gate.
    gate.wait_held(DOWNLOAD_WAIT);
    let s = farmer_status(&m, &id);
    assert_eq!(s["phase"], "download revealed", "{s}");
    let tx1 = renter_tx1(&m, &id);
    let abandon = mine_to_abandon_height(&m, &id);
    gate.open();
    assert_abandoned(&m, &id, abandon);
    finish(download);
    // No TX2 was ever built or signed for this TX1, so nothing spends it.
    let d = renter_download(&m, &id);
    assert!(d["tx2"].is_null(), "the farmer never sent TX2: {d}");
    m.node.mine(2);
    assert!(spends_of(&m.node, &tx1, from_height).is_empty());
    assert_eq!(farmer_status(&m, &id)["phase"], "download abandoned");
}
