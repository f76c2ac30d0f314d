//! Lease records on the chain (issue 17): a real renter and farmer dstore-plugin on regtest.
//! TX_A of an audit contract carries the farmer's record right after O_0..O_{N−1}; a
//! contract without audits leases its first TX1 only; a renter that funds without the
//! farmer's record (or with one for another contract) is refused by the farmer. The
//! records are read back from bitcoind and checked with dstore-protocol alone, under the
//! identity the farmer's `/dstore/v1/info` names, and the first download's TX2 and TX3 are
//! classified from their witnesses as a chain observer would.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use bitcoin::secp256k1::XOnlyPublicKey;
use bitcoin::{consensus, Transaction};
use dstore_protocol::market::lease::{
    check_lease_in, contract_tag, leased_outputs, parse_leases, verify_lease, LeaseRecord,
};
use dstore_protocol::market::outcome::{classify_spend, LeaseOutput, SpendOutcome};
use dstore_tests::market::{Faults, Market};
use dstore_tests::parties::seeded_bytes;
use serde_json::{json, Value};

const AUDITS: u32 = 2;

fn crs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-crs")
}

/// `dstore-open <peer> <file> <price> <audits> <P> <A>` through bitcoin-cli.
fn open_with_audits(m: &Market, file: &Path) -> Result<String, String> {
    m.open_with_audits(file, AUDITS, 8, 20_000)
}

/// The identity the farmer's `/dstore/v1/info` names.
fn farmer_identity(m: &Market) -> XOnlyPublicKey {
    let info: Value = reqwest::blocking::get(format!("{}/dstore/v1/info", m.peer_url))
        .and_then(|r| r.json())
        .expect("the farmer's info");
    let text = info["identity"].as_str().expect("identity in the info");
    XOnlyPublicKey::from_str(text).expect("an x-only key")
}

/// A transaction from the node (txindex or mempool).
fn raw_tx(m: &Market, txid: &str) -> Transaction {
    let hex = m.node.rpc_ok("getrawtransaction", json!([txid]));
    let bytes = hex::decode(hex.as_str().expect("hex")).expect("hex bytes");
    consensus::deserialize(&bytes).expect("a transaction")
}

fn contract_id(id: &str) -> [u8; 32] {
    hex::decode(id)
        .expect("hex id")
        .try_into()
        .expect("32 bytes")
}

#[test]
fn market_lease_tx_a_carries_the_farmers_record_after_the_audit_outputs() {
    let m = Market::start(&crs_dir(), Faults::default());
    let input = m.file("in", &seeded_bytes(91, 60_000));
    let id = open_with_audits(&m, &input).expect("dstore-open with audits");
    let status = m.renter().call_ok("dstore-status", json!([id]));
    let txid = status["audits"]["funding_txid"]
        .as_str()
        .unwrap_or_else(|| panic!("no TX_A in {status}"))
        .to_string();
    m.node.mine(1);
    assert!(m.node.confirmations(&txid) > 0, "TX_A confirmed");
    let tx_a = raw_tx(&m, &txid);
    let identity = farmer_identity(&m);
    let (vout, record) = only_lease(&tx_a);
    assert_eq!(
        vout, AUDITS as usize,
        "the record sits right after O_0..O_{{N-1}}"
    );
    assert_eq!(record.contract_tag, contract_tag(&contract_id(&id)));
    verify_lease(&record, &identity, &tx_a.output[..vout]).expect("signed by the farmer");
    check_lease_in(&tx_a, &identity, &contract_id(&id), vout).expect("the farmer's check");
    let kinds: Vec<LeaseOutput> = leased_outputs(&tx_a, vout)
        .into_iter()
        .map(|(_, kind)| kind)
        .collect();
    assert_eq!(
        kinds,
        vec![
            LeaseOutput::AuditFunding { audit: 0 },
            LeaseOutput::AuditFunding { audit: 1 }
        ]
    );
    // The renter's stake follows the record (issue 15).
    let stake = status["audits"]["stake_sat"].as_u64().expect("the stake");
    let index = dstore_protocol::audit::stake::stake_index(AUDITS) as usize;
    assert_eq!(
        tx_a.output[index].value.to_sat(),
        stake,
        "the stake at N + 1"
    );
}

#[test]
fn market_lease_only_the_first_tx1_of_a_contract_without_audits_is_leased() {
    let m = Market::start(&crs_dir(), Faults::default());
    let data = seeded_bytes(92, 40_000);
    let input = m.file("in", &data);
    let id = m.open(&input).expect("dstore-open");
    let identity = farmer_identity(&m);

    let first = m
        .download(&id, &m.dir.path().join("out1"))
        .expect("first download");
    assert_eq!(std::fs::read(m.dir.path().join("out1")).unwrap(), data);
    let tx1 = raw_tx(&m, first["tx1"].as_str().expect("TX1 txid"));
    let (vout, record) = only_lease(&tx1);
    assert_eq!(vout, 1, "TX1:0 then the record");
    check_lease_in(&tx1, &identity, &contract_id(&id), 1).expect("the farmer's record");
    assert_eq!(
        leased_outputs(&tx1, vout)
            .into_iter()
            .map(|(_, kind)| kind)
            .collect::<Vec<_>>(),
        vec![LeaseOutput::DownloadFunding]
    );
    assert_eq!(record.contract_tag, contract_tag(&contract_id(&id)));

    // What a chain observer makes of the served download.
    let tx2 = raw_tx(&m, first["tx2"].as_str().expect("TX2 txid"));
    let spent = classify_spend(LeaseOutput::DownloadFunding, &tx2, 0);
    assert!(
        matches!(spent, SpendOutcome::Tx2Mined { .. }),
        "TX2 spends TX1:0 through the multisig: {spent:?}"
    );
    if let Some(tx3) = first["tx3"].as_str() {
        let tx3 = raw_tx(&m, tx3);
        assert_eq!(
            classify_spend(LeaseOutput::Tx2, &tx3, 0),
            SpendOutcome::DownloadServed
        );
    }

    let second = m
        .download(&id, &m.dir.path().join("out2"))
        .expect("second download");
    let tx1 = raw_tx(&m, second["tx1"].as_str().expect("TX1 txid"));
    assert!(
        parse_leases(&tx1).is_empty(),
        "the second TX1 carries no record"
    );
}

/// The renter's error from a refused TX_A; the farmer holds no book for it (it signed no
/// refund) and TX_A was never broadcast.
fn refused_open_with_audits(m: &Market, input: &Path) -> String {
    let err = open_with_audits(m, input).expect_err("the farmer refuses TX_A");
    let listed = m.farmer().call_ok("dstore-list", json!([]));
    let farmed: Vec<&Value> = listed
        .as_array()
        .expect("a list")
        .iter()
        .filter(|c| c["role"] == "farmer")
        .collect();
    assert_eq!(farmed.len(), 1, "{listed}");
    let id = farmed[0]["contract_id"].as_str().expect("id");
    let status = m.farmer().call_ok("dstore-status", json!([id]));
    assert_eq!(status["audits"]["phase"], "accepted", "{status}");
    assert!(status["audits"]["funding_txid"].is_null(), "{status}");
    let renter = m.renter().call_ok("dstore-status", json!([id]));
    assert_eq!(renter["audits"]["phase"], "failed", "{renter}");
    assert_eq!(
        m.node.rpc_ok("getrawmempool", json!([])),
        json!([]),
        "nothing broadcast"
    );
    err
}

#[test]
fn market_lease_renter_funding_without_the_record_is_refused() {
    let m = Market::start(
        &crs_dir(),
        Faults {
            renter: Some("lease-omit"),
            ..Faults::default()
        },
    );
    let input = m.file("in", &seeded_bytes(93, 30_000));
    let err = refused_open_with_audits(&m, &input);
    assert!(err.contains("lease record at output 2"), "{err}");

    let id = m.open(&input).expect("dstore-open without audits");
    let err = m
        .download(&id, &m.dir.path().join("out"))
        .expect_err("the farmer refuses the first TX1");
    assert!(err.contains("lease record at output 1"), "{err}");
}

#[test]
fn market_lease_record_for_another_contract_is_refused() {
    let m = Market::start(
        &crs_dir(),
        Faults {
            renter: Some("lease-wrong-contract"),
            ..Faults::default()
        },
    );
    let input = m.file("in", &seeded_bytes(94, 30_000));
    let err = refused_open_with_audits(&m, &input);
    assert!(err.contains("for another contract"), "{err}");

    let id = m.open(&input).expect("dstore-open without audits");
    let err = m
        .download(&id, &m.dir.path().join("out"))
        .expect_err("the farmer refuses the first TX1");
    assert!(err.contains("for another contract"), "{err}");
}

/// The one lease record of `tx` (index and record).
fn only_lease(tx: &Transaction) -> (usize, LeaseRecord) {
    let found = parse_leases(tx);
    assert_eq!(found.len(), 1, "one lease record");
    found[0].clone().expect("well formed")
}
