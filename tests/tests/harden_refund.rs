//! Issue 15, item 5: refunds follow the transaction that is really on the chain. A farmer
//! spends TX1 with a TX2' it re-signed under fresh nonces (valid, reveals nothing, pays
//! it nothing, and has another txid than the TX2 the renter expects); the renter's
//! `dstore-refund` finds the real spender and refunds TX2':0 after Δ, and the renter's
//! watchtower reports the unexpected spend.

use std::path::PathBuf;
use std::time::Duration;

use bitcoin::consensus::encode::serialize_hex;
use dstore_tests::harden_refund::tx2_with_fresh_nonces;
use dstore_tests::market::{Faults, Market};
use dstore_tests::wait_until;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde_json::{json, Value};

fn crs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-crs")
}

/// Δ of the farmer plugin's offers (dstore_plugin::farmer::PAYOUT_DELAY).
const DELTA: u32 = dstore_plugin::farmer::PAYOUT_DELAY as u32;

fn refund(m: &Market, id: &str) -> Value {
    m.renter().call_ok("dstore-refund", json!([id]))
}

#[test]
fn harden_tx2_with_fresh_nonces_is_refunded() {
    let (mut m, _farmer_tower, renter_tower) = Market::with_towers(
        &crs_dir(),
        Faults {
            farmer: Some("withhold-tx2"),
            ..Faults::default()
        },
        &[],
        &[],
    );
    let mut data = vec![0u8; 20_000];
    StdRng::seed_from_u64(151).fill_bytes(&mut data);
    let input = m.file("in", &data);
    let id = m.open(&input).expect("dstore-open");
    let output = m.dir.path().join("out");
    let waiting = m.download_started(&id, &output).expect("dstore-download");
    assert_eq!(waiting["status"], "waiting", "{waiting}");
    let s = m.renter().call_ok("dstore-status", json!([id]));
    let d = &s["downloads"][0];
    assert_eq!(d["phase"], "tx3_signed", "{s}");
    let download_id = d["download_id"].as_str().unwrap().to_string();
    let expected_tx2 = d["tx2"].as_str().unwrap().to_string();
    m.node.mine(1);

    // The farmer spends TX1 with TX2' instead of the agreed TX2.
    let farmer_dir = m.dir.path().join("farmer");
    m.kill_farmer();
    let id_bytes: [u8; 32] = hex::decode(&id).unwrap().try_into().unwrap();
    let tx2_prime = tx2_with_fresh_nonces(&farmer_dir, &id_bytes);
    let tx2_prime_txid = tx2_prime.compute_txid().to_string();
    assert_ne!(tx2_prime_txid, expected_tx2, "TX2' has another txid");
    m.node
        .rpc("sendrawtransaction", json!([serialize_hex(&tx2_prime)]))
        .expect("bitcoind accepts TX2'");
    m.node.mine(1);
    assert_eq!(m.node.confirmations(&tx2_prime_txid), 1);

    // The renter's tower reports the spend by a transaction it was not told to expect,
    // and extracts no key from it (TX2' reveals nothing).
    let watch = wait_until("the tower to see TX2'", Duration::from_secs(60), || {
        let watch = renter_tower.status(&download_id);
        (watch["unexpected_spends"][0]["spender"] == tx2_prime_txid.as_str()).then_some(watch)
    });
    assert!(watch["key"].is_null(), "{watch}");

    // Before Δ the refund of TX2':0 is not due yet; then it is broadcast and mined.
    let early = refund(&m, &id);
    assert_eq!(early["status"], "waiting", "{early}");
    m.node.mine(DELTA - 1);
    let before = m.renter_balance_sat();
    let refunded = refund(&m, &id);
    assert_eq!(refunded["status"], "broadcast", "{refunded}");
    assert_eq!(
        refunded["unexpected_tx2"],
        tx2_prime_txid.as_str(),
        "{refunded}"
    );
    let txid = refunded["txid"].as_str().unwrap().to_string();
    m.node.mine(1);
    assert_eq!(
        m.node.confirmations(&txid),
        1,
        "the refund of TX2':0 is mined"
    );
    let raw = m.node.rpc_ok("getrawtransaction", json!([txid, true]));
    assert_eq!(raw["vin"][0]["txid"], tx2_prime_txid.as_str(), "{raw}");
    let amount = refunded["amount_sat"].as_u64().unwrap();
    wait_until(
        "the renter's wallet to hold the refund",
        Duration::from_secs(60),
        || (m.renter_balance_sat() >= before + amount).then_some(()),
    );
    let again = refund(&m, &id);
    assert_eq!(again["status"], "nothing", "{again}");
}
