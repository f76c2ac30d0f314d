//! Issue 15, item 6: a farmer's audit claim that does not confirm is fee-bumped by a CPFP
//! child from the farmer's own wallet, so it confirms inside the claim window W and the
//! renter's RF_ij (valid only after W) never takes the candidate's output back.
//!
//! The claim is made stuck on the real regtest node with `prioritisetransaction`: its
//! modified fee drops to zero, so the miner leaves it alone, while a child's package pays.

use std::path::PathBuf;
use std::time::Duration;

use dstore_tests::market::{Faults, Market};
use dstore_tests::{wait_until, TowerProcess};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde_json::{json, Value};

/// P = 8 gives W = 6 (the farmer's default least claim window).
const PERIOD: u32 = 8;
const WINDOW: u64 = 6;
const AMOUNT_SAT: u64 = 20_000;
const CANDIDATE_FEE_SAT: u64 = 1_000;
const CLAIM_FEE_SAT: u64 = 1_000;

fn crs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-crs")
}

fn farmer_claims(m: &Market, id: &str) -> Vec<Value> {
    m.farmer().call_ok("dstore-status", json!([id]))["audits"]["claims"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Mines one block and lets both towers act on it.
fn mine_one(m: &Market, towers: &[&TowerProcess]) {
    m.node.mine(1);
    let tip = m.node.block_count();
    for tower in towers {
        tower.wait_for_tip(tip);
    }
}

fn bump_rate(bump: &Value) -> u64 {
    bump["package_sat_vb"].as_u64().expect("package rate")
}

fn in_mempool(m: &Market, txid: &str) -> bool {
    m.node.rpc("getmempoolentry", json!([txid])).is_ok()
}

#[test]
fn harden_stuck_audit_claim_is_cpfp_bumped() {
    let (m, farmer_tower, renter_tower) = Market::with_towers(
        &crs_dir(),
        Faults::default(),
        &[],
        &["--merkle-audit-every=2"],
    );
    let towers = [&farmer_tower, &renter_tower];
    let mut data = vec![0u8; 200_000];
    StdRng::seed_from_u64(150).fill_bytes(&mut data);
    let input = m.file("in", &data);
    let before = m.farmer_balance_sat();
    let id = m
        .open_with_audits(&input, 1, PERIOD, AMOUNT_SAT)
        .expect("dstore-open with one audit");
    let status = m.renter().call_ok("dstore-status", json!([id]));
    let t0 = status["audits"]["heights"][0].as_u64().expect("T_0");
    // TX_A paid the farmer the renter's stake (confirmed before the toss).
    let stake = status["audits"]["stake_sat"].as_u64().expect("the stake");

    // The tower publishes the candidate at T_0; once it confirms the auditor releases
    // its salt and the farmer broadcasts its claim. Nothing is mined meanwhile.
    while m.node.block_count() < t0 + 1 {
        mine_one(&m, &towers);
    }
    let claim = wait_until("the farmer's claim", Duration::from_secs(60), || {
        farmer_claims(&m, &id).into_iter().next()
    });
    let claim_txid = claim["claim_txid"].as_str().unwrap().to_string();
    let candidate = claim["candidate_txid"].as_str().unwrap().to_string();
    wait_until("the claim in the mempool", Duration::from_secs(30), || {
        in_mempool(&m, &claim_txid).then_some(())
    });
    let deadline = m.node.block_count() + WINDOW - 1;
    // The miner sees the claim as paying nothing: alone, it is never mined.
    m.node.rpc_ok(
        "prioritisetransaction",
        json!([claim_txid, 0, -(CLAIM_FEE_SAT as i64)]),
    );

    // Blocks go by without the claim; two blocks after its broadcast the farmer's CPFP
    // child appears.
    let broadcast = wait_until(
        "the claim's broadcast height",
        Duration::from_secs(30),
        || farmer_claims(&m, &id).into_iter().next()?["broadcast_height"].as_u64(),
    );
    while m.node.block_count() < broadcast + 2 {
        mine_one(&m, &towers);
        assert_eq!(
            m.node.confirmations(&claim_txid),
            0,
            "the stuck claim is mined alone"
        );
        assert!(farmer_claims(&m, &id)[0]["bumps"]
            .as_array()
            .is_some_and(|b| b.is_empty()));
    }
    assert!(m.node.block_count() < deadline, "the bump comes inside W");
    let bump = wait_until("the farmer's CPFP child", Duration::from_secs(60), || {
        let c = farmer_claims(&m, &id).into_iter().next()?;
        c["bumps"].as_array().and_then(|b| b.last().cloned())
    });
    let first = bump["txid"].as_str().unwrap().to_string();
    wait_until(
        "the CPFP child in the mempool",
        Duration::from_secs(30),
        || in_mempool(&m, &first).then_some(()),
    );

    // The first child gets stuck too (the miner sees it pay nothing): two blocks later
    // a second child at twice the package rate replaces it.
    let first_fee = bump["fee_sat"].as_i64().expect("child fee");
    m.node
        .rpc_ok("prioritisetransaction", json!([first, 0, -first_fee]));
    let bumped_at = bump["height"].as_u64().expect("bump height");
    while m.node.block_count() < bumped_at + 2 {
        mine_one(&m, &towers);
        assert_eq!(
            m.node.confirmations(&claim_txid),
            0,
            "the stuck package is mined"
        );
    }
    let bump = wait_until("the second CPFP child", Duration::from_secs(60), || {
        let c = farmer_claims(&m, &id).into_iter().next()?;
        let bumps = c["bumps"].as_array()?.clone();
        (bumps.len() == 2).then(|| bumps[1].clone())
    });
    assert_eq!(
        bump["package_sat_vb"].as_u64(),
        Some(2 * bump_rate(&farmer_claims(&m, &id)[0]["bumps"][0])),
        "{bump}"
    );
    let child = bump["txid"].as_str().unwrap().to_string();
    wait_until(
        "the second child in the mempool",
        Duration::from_secs(30),
        || (in_mempool(&m, &child) && !in_mempool(&m, &first)).then_some(()),
    );

    // One block takes the package: claim and child confirm inside W.
    mine_one(&m, &towers);
    assert!(
        m.node.confirmations(&claim_txid) > 0,
        "the bumped claim is mined"
    );
    assert!(m.node.confirmations(&child) > 0, "the CPFP child is mined");
    assert!(
        m.node.block_count() <= deadline,
        "the claim confirmed within W"
    );

    // Past the window the candidate's output stays the farmer's: RF_ij never confirms.
    for _ in 0..WINDOW + 1 {
        mine_one(&m, &towers);
    }
    let spent = m.node.rpc_ok("gettxout", json!([candidate, 0, true]));
    assert!(spent.is_null(), "the candidate's output is spent");
    assert!(
        m.node.confirmations(&claim_txid) > WINDOW,
        "the claim stays confirmed"
    );
    let fee = bump["fee_sat"].as_u64().expect("child fee");
    let paid = AMOUNT_SAT - CANDIDATE_FEE_SAT - CLAIM_FEE_SAT - fee + stake;
    wait_until(
        "the farmer's wallet to see the bumped claim",
        Duration::from_secs(30),
        || (m.farmer_balance_sat() == before + paid).then_some(()),
    );
}
