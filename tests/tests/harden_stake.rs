//! Issue 15, item 6: the renter's stake, against a hostile renter, with real regtest
//! bitcoind, real dstore-plugin farmer and renter, and real dstore-watchtower towers.
//!
//! TX_A pays the farmer a stake of at least ⌈O/m⌉ (`dstore_protocol::audit::stake`), and
//! the farmer reveals its toss nonce only once TX_A is confirmed, so planting unanswerable
//! locks no longer pays (`dstore_protocol::audit::planted::gain_with_stake`):
//! * a renter whose planted locks the toss opens is caught after TX_A confirmed: the stake
//!   is in the farmer's wallet, and the renter's O_i come back through RF_0 at T_0 + W;
//! * a renter that sends its toss before TX_A is confirmed gets no reveal until it is;
//! * a TX_A whose stake is one satoshi short is refused before it is broadcast;
//! * a proposal that states a stake below the terms' minimum is refused at once.

use std::path::PathBuf;
use std::time::Duration;

use bitcoin::Amount;
use dstore_protocol::audit::stake::{required_stake, stake_index};
use dstore_tests::harden_audit::{mine_one, propose_audit};
use dstore_tests::market::{Faults, Market};
use dstore_tests::node::btc_to_sat;
use dstore_tests::parties::seeded_bytes;
use dstore_tests::wait_until;
use serde_json::{json, Value};

/// P = 8 gives W = 6, the farmers' default least claim window; 2 audits of A each, m = 8.
const PERIOD: u32 = 8;
const AMOUNT_SAT: u64 = 20_000;
const AUDITS: u32 = 2;
const WAIT: Duration = Duration::from_secs(60);
/// More than any fee of TX_A or RF_0 (and RF_0's 330-sat anchor) in these tests.
const FEES_BOUND: u64 = 10_000;

fn crs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-crs")
}

fn renter_status(m: &Market, id: &str) -> Value {
    m.renter().call_ok("dstore-status", json!([id]))
}

fn farmer_status(m: &Market, id: &str) -> Value {
    m.farmer().call_ok("dstore-status", json!([id]))
}

/// The one contract the renter lists.
fn only_contract(m: &Market) -> String {
    let list = m.renter().call_ok("dstore-list", json!([]));
    list[0]["contract_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no contract in {list}"))
        .to_string()
}

fn in_mempool(m: &Market, txid: &str) -> bool {
    m.node.rpc("getmempoolentry", json!([txid])).is_ok()
}

#[test]
fn harden_planted_lock_forfeits_the_stake() {
    let (m, farmer_tower, renter_tower) = Market::with_towers(
        &crs_dir(),
        Faults {
            renter: Some("audit-bad-locks"),
            ..Faults::default()
        },
        &[],
        &[],
    );
    let input = m.file("in", &seeded_bytes(161, 100_000));
    let renter_before = m.renter_balance_sat();
    let farmer_before = m.farmer_balance_sat();
    let err = m
        .open_with_audits(&input, AUDITS, PERIOD, AMOUNT_SAT)
        .expect_err("the farmer catches the planted locks");
    assert!(err.contains("candidates fail"), "{err}");
    let id = only_contract(&m);

    // Caught at the openings, after TX_A confirmed: money moved, no candidate signed.
    let s = renter_status(&m, &id);
    let audits = &s["audits"];
    assert_eq!(audits["phase"], "failed", "{s}");
    assert_eq!(audits["swapped"], 0, "{s}");
    let funding = audits["funding_txid"].as_str().expect("TX_A").to_string();
    assert!(m.node.confirmations(&funding) > 0, "TX_A confirmed: {s}");
    let stake = audits["stake_sat"].as_u64().expect("the stake");
    let needed = required_stake(Amount::from_sat(AMOUNT_SAT), 8).to_sat();
    assert!(stake >= needed, "{stake} < {needed}");
    let f = farmer_status(&m, &id);
    assert!(f["audits"]["renter_caught"].is_string(), "{f}");

    // The stake output of TX_A is a coin of the farmer's wallet.
    let vout = u64::from(stake_index(AUDITS));
    let unspent = m.farmer().call_ok("dstore-listunspent", json!([]));
    let coin = unspent
        .as_array()
        .expect("a list")
        .iter()
        .find(|u| u["txid"] == funding.as_str() && u["vout"].as_u64() == Some(vout))
        .unwrap_or_else(|| panic!("no stake coin {funding}:{vout} in {unspent}"))
        .clone();
    assert_eq!(btc_to_sat(&coin["amount"]), stake, "{coin}");
    wait_until("the farmer's balance with the stake", WAIT, || {
        (m.farmer_balance_sat() == farmer_before + stake).then_some(())
    });

    // The renter's tower holds RF_0 (signed before TX_A went out): at T_0 + W it returns
    // every O_i, so the renter has lost the stake and fees only.
    let rf0 = renter_tower.tx(&id, "audit-0-refund");
    let rf0_txid = rf0["txid"].as_str().expect("RF_0's txid").to_string();
    let t0 = s["audits"]["heights"][0].as_u64().expect("T_0");
    let window = s["audits"]["claim_window_blocks"].as_u64().expect("W");
    let towers = [&farmer_tower, &renter_tower];
    while m.node.block_count() < t0 + window {
        mine_one(&m.node, &towers);
    }
    wait_until("RF_0 in the mempool", WAIT, || {
        in_mempool(&m, &rf0_txid).then_some(())
    });
    mine_one(&m.node, &towers);
    assert!(m.node.confirmations(&rf0_txid) > 0, "RF_0 confirmed");
    let renter_after = wait_until("the renter's wallet to see RF_0", WAIT, || {
        let balance = m.renter_balance_sat();
        (balance + stake + FEES_BOUND >= renter_before).then_some(balance)
    });
    let lost = renter_before - renter_after;
    assert!(
        lost >= stake && lost <= stake + FEES_BOUND,
        "the renter lost the stake and fees: {renter_before} → {renter_after}"
    );
}

#[test]
fn harden_toss_waits_for_the_stake_to_confirm() {
    let m = Market::start(
        &crs_dir(),
        Faults {
            renter: Some("audit-toss-unconfirmed"),
            ..Faults::default()
        },
    );
    let input = m.file("in", &seeded_bytes(162, 60_000));
    let reply = m
        .open_with_audits_started(&input, AUDITS, PERIOD, AMOUNT_SAT)
        .expect("TX_A broadcast");
    let id = reply["contract_id"]
        .as_str()
        .unwrap_or_else(|| panic!("not a waiting reply: {reply}"))
        .to_string();
    let funding = renter_status(&m, &id)["audits"]["funding_txid"]
        .as_str()
        .expect("TX_A")
        .to_string();

    // The renter asks for the toss at once; the farmer refuses while TX_A is unconfirmed.
    let s = wait_until("the farmer's refusal of the early toss", WAIT, || {
        let s = renter_status(&m, &id);
        let said = s["audits"]["waiting_for"].as_str().unwrap_or_default();
        said.contains("has 0 of 1 confirmations").then_some(s)
    });
    assert_eq!(s["audits"]["phase"], "funded", "{s}");
    assert!(in_mempool(&m, &funding), "TX_A unconfirmed");
    let f = farmer_status(&m, &id);
    assert_eq!(f["audits"]["phase"], "funded", "no reveal yet: {f}");

    // One block: the farmer reveals and the setup completes.
    let finished = m.finish_audit_setup(reply).expect("the setup completes");
    assert_eq!(finished, id);
    assert_eq!(m.node.confirmations(&funding), 1, "one block was enough");
    let s = renter_status(&m, &id);
    assert_eq!(s["audits"]["phase"], "complete", "{s}");
    assert_eq!(s["audits"]["swapped"], AUDITS * 8, "{s}");
    let f = farmer_status(&m, &id);
    assert_eq!(f["audits"]["phase"], "complete", "{f}");
    assert!(f["audits"]["renter_caught"].is_null(), "{f}");
}

#[test]
fn harden_short_stake_is_refused() {
    let m = Market::start(
        &crs_dir(),
        Faults {
            renter: Some("audit-stake-short"),
            ..Faults::default()
        },
    );
    let input = m.file("in", &seeded_bytes(163, 30_000));
    let before = m.renter_balance_sat();
    let err = m
        .open_with_audits(&input, AUDITS, PERIOD, AMOUNT_SAT)
        .expect_err("the farmer refuses the short stake");
    let needed = required_stake(Amount::from_sat(AMOUNT_SAT), 8).to_sat();
    let expected = format!(
        "the stake is {} sat; these terms need at least {needed} sat",
        needed - 1
    );
    assert!(err.contains(&expected), "{err}");
    let id = only_contract(&m);
    let s = renter_status(&m, &id);
    assert_eq!(s["audits"]["phase"], "failed", "{s}");
    let f = farmer_status(&m, &id);
    assert_eq!(f["audits"]["phase"], "accepted", "nothing stored: {f}");
    assert!(f["audits"]["funding_txid"].is_null(), "{f}");

    // TX_A never reached the mempool, and the renter's coins are all still there.
    assert_eq!(m.node.rpc_ok("getrawmempool", json!([])), json!([]));
    if let Some(txid) = s["audits"]["funding_txid"].as_str() {
        assert!(m.node.rpc("getrawtransaction", json!([txid])).is_err());
    }
    m.node.mine(1);
    assert_eq!(m.renter_balance_sat(), before, "no money moved");
}

#[test]
fn harden_stake_below_the_minimum_is_refused_at_the_proposal() {
    let m = Market::start(&crs_dir(), Faults::default());
    // 4 audits of 20 000 sat with 4 locks each (m = 2) need a stake of 10 000 sat.
    let needed = required_stake(Amount::from_sat(20_000), 2);
    assert_eq!(needed, Amount::from_sat(10_000));
    for (n, (stake, refused)) in [
        (Amount::ZERO, true),
        (needed - Amount::from_sat(1), true),
        (needed, false),
    ]
    .into_iter()
    .enumerate()
    {
        let id = [80 + n as u8; 32];
        let (code, body) = propose_audit(&m, id, |terms| terms.stake = stake);
        assert_eq!(code, 400, "{body}");
        let message = body["message"].as_str().unwrap_or_default();
        if refused {
            assert!(message.contains("stake"), "{stake}: {message}");
            assert!(message.contains("10000"), "{stake}: {message}");
        } else {
            // Acceptable terms get as far as the phase check.
            assert!(message.contains("upload is not finished"), "{message}");
        }
        let status = m
            .farmer()
            .call_ok("dstore-status", json!([hex::encode(id)]));
        assert!(status["audits"].is_null(), "nothing stored: {status}");
    }
}
