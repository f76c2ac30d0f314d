//! Issue 15, items 3, 4 and 6: the audit contract against a hostile renter and an
//! unreliable network, with real regtest bitcoind, real dstore-plugin farmer and renter,
//! and real dstore-watchtower towers and auditors.
//!
//! * a salt release for a candidate that never confirmed (the renter knows every salt) no
//!   longer blocks the genuine release of the confirmed one: the farmer is still paid;
//! * a farmer down for a few blocks across a Merkle audit is not failed: it is retried
//!   with back-off and keeps being paid;
//! * a claim window or fee below the farmer's floor is refused with a clear error;
//! * a planted candidate raced against the beacon's choice, which the farmer's tower
//!   publishes first, cannot replace it: the farmer is paid.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bitcoin::consensus::encode::serialize_hex;
use dstore_protocol::watch::{Registration, WatchRole};
use dstore_tests::audit_fixture::{AuditContract, FarmerMode, FarmerServer};
use dstore_tests::funding::Funder;
use dstore_tests::harden_audit::{
    confirmations, in_mempool, mine_one, mine_to, post_reveal, propose_audit, wait_for,
    wait_for_one_in_mempool, RenterSecrets,
};
use dstore_tests::market::{tower_flags, Faults, Market};
use dstore_tests::parties::seeded_bytes;
use dstore_tests::{wait_until, BitcoinNode, TowerProcess};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};

/// P = 8 gives W = 6, the farmers' default least claim window.
const PERIOD: u32 = 8;
const AMOUNT_SAT: u64 = 20_000;
const WAIT: Duration = Duration::from_secs(60);

fn crs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-crs")
}

fn open_with_audits(m: &Market, file: &Path, audits: u32, period: u32) -> Result<String, String> {
    m.open_with_audits(file, audits, period, AMOUNT_SAT)
}

fn heights(m: &Market, id: &str) -> Vec<u64> {
    let s = m.renter().call_ok("dstore-status", json!([id]));
    s["audits"]["heights"]
        .as_array()
        .unwrap_or_else(|| panic!("no audit heights in {s}"))
        .iter()
        .map(|h| h.as_u64().expect("height"))
        .collect()
}

fn farmer_claims(m: &Market, id: &str) -> Vec<Value> {
    m.farmer().call_ok("dstore-status", json!([id]))["audits"]["claims"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn live_claims(m: &Market, id: &str) -> Vec<Value> {
    farmer_claims(m, id)
        .into_iter()
        .filter(|c| c["superseded"] != true)
        .collect()
}

fn txid_of(value: &Value) -> bitcoin::Txid {
    value.as_str().expect("txid").parse().expect("txid")
}

#[test]
fn harden_stale_release_does_not_block_the_claim() {
    let mut auditor = None;
    let mut towers = None;
    let mut m = Market::start_around(&crs_dir(), Faults::default(), 80 << 20, |node| {
        node.mine(1);
        let farmer_tower = TowerProcess::start(node);
        let renter_tower = TowerProcess::start(node);
        let third = TowerProcess::start(node);
        let mut renter_flags = tower_flags(&renter_tower);
        renter_flags.push(format!("--auditor-url={}", third.rpc_url()));
        renter_flags.push(format!(
            "--auditor-cookie={}",
            third.cookie_path().display()
        ));
        let flags = (tower_flags(&farmer_tower), renter_flags);
        towers = Some((farmer_tower, renter_tower));
        auditor = Some(third);
        flags
    });
    let (farmer_tower, renter_tower) = towers.expect("towers");
    let auditor = auditor.expect("auditor");
    let input = m.file("in", &seeded_bytes(151, 100_000));
    let id = open_with_audits(&m, &input, 2, PERIOD).expect("dstore-open with audits");
    let t0 = heights(&m, &id)[0];
    // The renter has given the auditor its salts (it registers them right after the swap).
    wait_until("the auditor's registration", WAIT, || {
        let status = auditor.call("tower-status", json!([id])).ok()?;
        (status["audits"]["auditor"] == true).then_some(())
    });

    // The hostile renter knows every salt.
    m.kill_renter();
    let secrets = RenterSecrets::read(&m.dir.path().join("renter"), &id);
    let kept = secrets.kept[0].len() as u32;
    let txids: Vec<_> = (0..kept).map(|j| secrets.candidate_txid(0, j)).collect();

    let towers = [&farmer_tower, &renter_tower, &auditor];
    mine_to(&m.node, &towers, t0);
    let chosen = wait_for_one_in_mempool(&m.node, &txids) as u32;
    let stale = (chosen + 1) % kept;

    // A release of a kept candidate that did not confirm (and of the beacon's, still in
    // the mempool) is refused and stores nothing.
    for j in [stale, chosen] {
        let (code, body) = post_reveal(&m.peer_url, &secrets.release(0, j));
        assert_eq!(code, 400, "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap_or("")
                .contains("not confirmed"),
            "{body}"
        );
    }
    assert!(farmer_claims(&m, &id).is_empty(), "nothing stored");

    // The beacon's candidate confirms; the stale release again, now of a conflicted
    // candidate, changes nothing, and the auditor's genuine release is acted on.
    mine_one(&m.node, &towers);
    assert!(confirmations(&m.node, &txids[chosen as usize]) > 0);
    let (code, body) = post_reveal(&m.peer_url, &secrets.release(0, stale));
    assert_eq!(code, 400, "{body}");
    let claims = wait_until(
        "the farmer's claim of the confirmed candidate",
        WAIT,
        || {
            let c = live_claims(&m, &id);
            (!c.is_empty()).then_some(c)
        },
    );
    assert_eq!(claims.len(), 1, "{claims:?}");
    assert_eq!(
        txid_of(&claims[0]["candidate_txid"]),
        txids[chosen as usize]
    );
    let claim = txid_of(&claims[0]["claim_txid"]);
    wait_until("the claim in the mempool", WAIT, || {
        in_mempool(&m.node, &claim).then_some(())
    });
    mine_one(&m.node, &towers);
    assert!(confirmations(&m.node, &claim) > 0, "the farmer is paid");
    let row = wait_until("the auditor reports audit 0 paid", WAIT, || {
        let row = auditor.audits(&id)["audits"][0].clone();
        (row["outcome"] == "paid").then_some(row)
    });
    assert_eq!(row["release"]["claim_txid"], claim.to_string(), "{row}");
    // Replaying the genuine release is answered with the same claim.
    let (code, body) = post_reveal(&m.peer_url, &secrets.release(0, chosen));
    assert_eq!(
        (code, body["claim_txid"].clone()),
        (200, json!(claim.to_string()))
    );
}

#[test]
fn harden_farmer_down_for_a_few_blocks_keeps_being_paid() {
    let (mut m, farmer_tower, renter_tower) = Market::with_towers(
        &crs_dir(),
        Faults::default(),
        &[],
        &["--merkle-audit-every=2"],
    );
    let input = m.file("in", &seeded_bytes(152, 300_000));
    let id = open_with_audits(&m, &input, 2, PERIOD).expect("dstore-open with audits");
    let heights = heights(&m, &id);
    let towers = [&farmer_tower, &renter_tower];
    let merkle = |tower: &TowerProcess| tower.audits(&id)["merkle"].clone();

    mine_one(&m.node, &towers);
    wait_until("a first Merkle audit passes", WAIT, || {
        (merkle(&renter_tower)["passed"].as_u64() >= Some(1)).then_some(())
    });

    // The farmer goes down for three blocks: the auditor cannot reach it, retries, and
    // does not call it a failure.
    m.kill_farmer();
    let down_from = m.node.block_count();
    while m.node.block_count() < down_from + 3 {
        mine_one(&m.node, &towers);
    }
    let during = wait_until("an unreachable Merkle try", WAIT, || {
        let v = merkle(&renter_tower);
        (v["unreachable"].as_u64() >= Some(1)).then_some(v)
    });
    assert_eq!(during["failed"], 0, "{during}");
    assert_eq!(renter_tower.audits(&id)["audits_failed"], false);

    // Back up: the next try passes and the run of unreachable tries ends.
    m.start_farmer();
    let passed_before = merkle(&renter_tower)["passed"].as_u64().unwrap_or(0);
    let back = |v: &Value| {
        v["passed"].as_u64().unwrap_or(0) > passed_before && v["unreachable_since"].is_null()
    };
    for _ in 0..6 {
        mine_one(&m.node, &towers);
        let answered = wait_for(Duration::from_secs(10), || {
            let v = merkle(&renter_tower);
            back(&v).then_some(())
        });
        if answered.is_some() {
            break;
        }
    }
    let after = wait_until("a Merkle audit passes again", WAIT, || {
        let v = merkle(&renter_tower);
        back(&v).then_some(v)
    });
    assert_eq!(after["failed"], 0, "{after}");
    let report = renter_tower.audits(&id);
    assert_eq!(report["audits_failed"], false, "{report}");

    // Every audit still pays the farmer.
    for (i, t) in heights.iter().enumerate() {
        mine_to(&m.node, &towers, t + 1);
        let claims = wait_until(&format!("the claim of audit {i}"), WAIT, || {
            let c = live_claims(&m, &id);
            (c.len() > i).then_some(c)
        });
        let claim = txid_of(&claims[i]["claim_txid"]);
        wait_until("the claim in the mempool", WAIT, || {
            (in_mempool(&m.node, &claim) || confirmations(&m.node, &claim) > 0).then_some(())
        });
        mine_one(&m.node, &towers);
        assert!(confirmations(&m.node, &claim) > 0, "audit {i} paid");
        wait_until(&format!("audit {i} reported paid"), WAIT, || {
            (renter_tower.audits(&id)["audits"][i]["outcome"] == "paid").then_some(())
        });
    }
}

/// An open request from a fresh renter identity (no upload), then one audit proposal of
/// 4 audits with these claim window and fees (see [`propose_audit`]).
fn propose(
    m: &Market,
    id: [u8; 32],
    claim_window: u16,
    candidate_fee: u64,
    refund_fee: u64,
) -> (u16, Value) {
    use bitcoin::Amount;
    propose_audit(m, id, |terms| {
        terms.claim_window = claim_window;
        terms.candidate_fee = Amount::from_sat(candidate_fee);
        terms.refund_fee = Amount::from_sat(refund_fee);
    })
}

#[test]
fn harden_low_claim_window_is_refused() {
    let m = Market::start(&crs_dir(), Faults::default());
    // The plugin renter with P = 6 gets W = 5: below the farmer's default of 6.
    let input = m.file("in", &seeded_bytes(153, 20_000));
    let err = open_with_audits(&m, &input, 1, 6).unwrap_err();
    assert!(err.contains("claim window"), "{err}");

    for (n, (w, candidate_fee, refund_fee, needle)) in [
        (
            3,
            1_000,
            3_000,
            "claim window W = 3 blocks is below this farmer's minimum of 6",
        ),
        (6, 100, 3_000, "candidate fee"),
        (6, 1_000, 300, "refund fee"),
        // Acceptable terms get as far as the phase check.
        (6, 1_000, 3_000, "upload is not finished"),
    ]
    .into_iter()
    .enumerate()
    {
        let id = [60 + n as u8; 32];
        let (code, body) = propose(&m, id, w, candidate_fee, refund_fee);
        assert_eq!(code, 400, "{body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{message}");
        let status = m
            .farmer()
            .call_ok("dstore-status", json!([hex::encode(id)]));
        assert!(status["audits"].is_null(), "nothing stored: {status}");
    }
}

#[test]
fn harden_low_fee_proposal_is_refused() {
    let m = Market::start(&crs_dir(), Faults::default());
    let (code, body) = propose(&m, [70; 32], 6, 150, 150);
    assert_eq!(code, 400, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("sat/vB"), "{message}");
    assert!(
        message.contains("below this farmer's minimum of 2 sat/vB"),
        "{message}"
    );
}

#[test]
fn harden_planted_bad_lock_does_not_pay() {
    let node = BitcoinNode::start();
    let mut funder = Funder::new(&node, 1);
    let mut rng = StdRng::seed_from_u64(154);
    let c = AuditContract::new(&node, &mut funder, &mut rng, 1, 4, 8);
    let farmer = FarmerServer::start(&node, c.farmer_side(), FarmerMode::Honest);
    // The farmer's tower holds the candidates; a third-party auditor holds the salts. The
    // hostile renter runs no tower: it only races its planted candidate.
    let farmer_tower = TowerProcess::start_with(&node, &["--poll-seconds=1"]);
    let auditor = TowerProcess::start_with(&node, &["--poll-seconds=1"]);
    let register = |tower: &TowerProcess, r: &Registration| {
        let value = serde_json::to_value(r).unwrap();
        tower.call_ok("tower-register", json!([value]));
    };
    register(&farmer_tower, &c.farmer_registration());
    register(
        &auditor,
        &Registration {
            id: c.contract_id(),
            role: WatchRole::Renter,
            extract: None,
            transactions: vec![],
            watch_txids: vec![],
            rescan_from_height: None,
            auditor: Some(c.auditor_spec(&farmer.url)),
        },
    );
    let towers = [&farmer_tower, &auditor];
    let t0 = u64::from(c.terms().audit_height(0));
    mine_to(&node, &towers, t0 - 1);
    // The renter's planted lock is a kept candidate the beacon did not pick (the beacon
    // picks it with probability 1/m: `dstore_protocol::audit::planted` counts that).
    let beacon = c.beacon(&node, 0);
    let planted = (beacon + 1) % c.kept();
    mine_one(&node, &towers);
    let chosen = c.candidate_txid(0, beacon);
    wait_until(
        "the farmer's tower publishes the beacon's candidate",
        WAIT,
        || in_mempool(&node, &chosen).then_some(()),
    );
    // Same fee, same size: bitcoind will not let the planted candidate replace it.
    let race = node.rpc(
        "sendrawtransaction",
        json!([serialize_hex(c.candidate(0, planted))]),
    );
    let err = race.expect_err("the planted candidate is refused");
    assert!(
        err.message.contains("insufficient fee") || err.message.contains("conflict"),
        "{err}"
    );
    mine_one(&node, &towers);
    assert!(confirmations(&node, &chosen) > 0);
    assert_eq!(confirmations(&node, &c.candidate_txid(0, planted)), 0);
    // The auditor releases the confirmed candidate's salt; the farmer claims and is paid.
    let (_, claimed, claim) = wait_until("the farmer's claim", WAIT, || {
        farmer.claims().first().copied()
    });
    assert_eq!(claimed, beacon);
    wait_until("the claim in the mempool", WAIT, || {
        in_mempool(&node, &claim).then_some(())
    });
    mine_one(&node, &towers);
    assert!(confirmations(&node, &claim) > 0, "the farmer is paid");
    // What is left to the renter: a planted lock pays only when it is hidden by the toss
    // and picked by the beacon, 1/(2m) of what it returns; with the stake TX_A paid the
    // farmer (forfeited when the toss opens the lock) nothing is left.
    let gain = dstore_protocol::audit::planted::expected_gain(c.kept(), 1, 0.0, 0.0);
    assert!((gain - 1.0 / (2.0 * f64::from(c.kept()))).abs() < 1e-12);
    let (amount, stake) = (c.terms().amount.to_sat(), c.stake.to_sat());
    let staked = dstore_protocol::audit::planted::gain_with_stake(c.kept(), 1, 0.0, amount, stake);
    assert!(staked <= 1e-9, "{staked} sat");
}
