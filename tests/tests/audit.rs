//! The audit contract end to end (PROTOCOL.md 5): a renter and a farmer dstore-plugin on
//! regtest, each with its own dstore-watchtower (the renter's is the auditor), driven
//! through bitcoin-cli. `dstore-open … audits P A` sets up, swaps and funds the contract;
//! the towers broadcast the beacon's candidate at each T_i, the auditor releases its salt
//! to the farmer's peer endpoint, the farmer claims from its stored file, and a farmer
//! that lost the file stops being paid while RF returns the rest to the renter.
//!
//! The transaction-level attacks (unsalted locks, races at one height, reclaims) run
//! in-process in `audit_chain.rs`; the towers' own behaviour in `audit_tower.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dstore_tests::market::{audit_outcomes, tower_flags, Faults, Market};
use dstore_tests::parties::seeded_bytes;
use dstore_tests::{wait_until, TowerProcess};
use serde_json::{json, Value};

/// Blocks between audits and satoshis per audit in these tests (W = 6, the farmer's
/// default least claim window).
const PERIOD: u32 = 8;
const AMOUNT_SAT: u64 = 20_000;
/// Candidate and claim fees come out of each audit amount.
const CANDIDATE_FEE_SAT: u64 = 1_000;
const CLAIM_FEE_SAT: u64 = 1_000;

fn crs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-crs")
}

/// The renter's tower runs an off-chain Merkle audit every 2 blocks.
fn market(faults: Faults) -> (Market, TowerProcess, TowerProcess) {
    Market::with_towers(&crs_dir(), faults, &[], &["--merkle-audit-every=2"])
}

/// `dstore-open` with `audits` audits of this file's period and amount.
fn open_with_audits(m: &Market, file: &Path, audits: u32) -> Result<String, String> {
    m.open_with_audits(file, audits, PERIOD, AMOUNT_SAT)
}

fn renter_status(m: &Market, id: &str) -> Value {
    m.renter().call_ok("dstore-status", json!([id]))
}

fn farmer_status(m: &Market, id: &str) -> Value {
    m.farmer().call_ok("dstore-status", json!([id]))
}

fn heights(status: &Value) -> Vec<u64> {
    status["audits"]["heights"]
        .as_array()
        .unwrap_or_else(|| panic!("no audit heights in {status}"))
        .iter()
        .map(|h| h.as_u64().expect("height"))
        .collect()
}

/// Mines one block at a time up to `height`. Before the next block, every tower has
/// acted on the last one and every salt release of contract `id` has the farmer's answer
/// recorded, so an honest farmer's claim is in the mempool before RF_ij can compete.
fn mine_to(m: &Market, towers: &[&TowerProcess], id: &str, height: u64) {
    while m.node.block_count() < height {
        m.node.mine(1);
        let tip = m.node.block_count();
        for tower in towers {
            tower.wait_for_tip(tip);
            tower.wait_for_release_answers(id);
        }
    }
}

/// Waits until the renter's status shows its tower's Merkle audits with `check` true
/// (they run over HTTP after the block that starts them).
fn wait_for_merkle(m: &Market, id: &str, check: impl Fn(&Value) -> bool) -> Value {
    wait_until("the tower's Merkle audits", Duration::from_secs(60), || {
        let s = renter_status(m, id);
        check(&s["audits"]["tower"]).then_some(s)
    })
}

fn claims(m: &Market, id: &str) -> Vec<Value> {
    farmer_status(m, id)["audits"]["claims"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn wait_for_claims(m: &Market, id: &str, count: usize) -> Vec<Value> {
    wait_until(
        &format!("{count} audit claims"),
        Duration::from_secs(60),
        || {
            let c = claims(m, id);
            (c.len() >= count).then_some(c)
        },
    )
}

fn confirmed(m: &Market, txid: &str) -> bool {
    m.node.confirmations(txid) > 0
}

#[test]
fn audit_honest_farmer_is_paid_for_every_audit() {
    let (m, farmer_tower, renter_tower) = market(Faults::default());
    let data = seeded_bytes(71, 300_000);
    let input = m.file("in", &data);
    let before = m.farmer_balance_sat();
    let id = open_with_audits(&m, &input, 4).expect("dstore-open with audits");
    let s = renter_status(&m, &id);
    assert_eq!(s["audits"]["phase"], "complete", "{s}");
    assert_eq!(s["audits"]["swapped"], 4 * 8, "{s}");
    let funding = s["audits"]["funding_txid"].as_str().unwrap().to_string();
    let heights = heights(&s);
    assert_eq!(heights.len(), 4);
    assert!(confirmed(&m, &funding), "TX_A is mined before the toss");
    // The renter's stake, paid to the farmer's wallet in TX_A: a set-up fee when honest.
    let stake = s["audits"]["stake_sat"].as_u64().expect("the stake");
    assert!(stake >= AMOUNT_SAT.div_ceil(8), "{s}");

    let towers = [&farmer_tower, &renter_tower];
    mine_to(&m, &towers, &id, heights[3] + 2);
    let claims = wait_for_claims(&m, &id, 4);
    m.node.mine(1);
    for claim in &claims {
        let txid = claim["claim_txid"].as_str().unwrap();
        assert!(confirmed(&m, txid), "claim {claim} is mined");
    }
    let audits: Vec<u64> = claims
        .iter()
        .map(|c| c["audit"].as_u64().unwrap())
        .collect();
    assert_eq!(audits, [0, 1, 2, 3]);
    let paid = 4 * (AMOUNT_SAT - CANDIDATE_FEE_SAT - CLAIM_FEE_SAT) + stake;
    wait_until(
        "the farmer's wallet to see its claims",
        Duration::from_secs(30),
        || (m.farmer_balance_sat() == before + paid).then_some(()),
    );

    // The renter's status shows each audit paid, from its tower's report, and the
    // auditor's Merkle audits of the honest farmer all passed.
    mine_to(&m, &towers, &id, heights[3] + 4);
    let s = renter_status(&m, &id);
    assert_eq!(audit_outcomes(&s), ["paid", "paid", "paid", "paid"], "{s}");
    let s = wait_for_merkle(&m, &id, |t| t["merkle"]["passed"].as_u64() > Some(0));
    assert_eq!(s["audits"]["tower"]["merkle"]["failed"], 0, "{s}");
}

#[test]
fn audit_farmer_that_loses_the_file_is_refunded() {
    let (m, farmer_tower, renter_tower) = market(Faults::default());
    let data = seeded_bytes(72, 200_000);
    let input = m.file("in", &data);
    let id = open_with_audits(&m, &input, 3).expect("dstore-open with audits");
    let s = renter_status(&m, &id);
    let heights = heights(&s);
    let towers = [&farmer_tower, &renter_tower];

    // Audit 0 passes and is paid.
    mine_to(&m, &towers, &id, heights[0] + 2);
    wait_for_claims(&m, &id, 1);
    let renter_before = m.renter_balance_sat();

    // Then the farmer drops the data (every byte of its copy is gone; the length stays).
    let blob = m.dir.path().join("farmer-storage/objects/blobs").join(&id);
    let length = std::fs::metadata(&blob).expect("the farmer's blob").len();
    std::fs::write(&blob, vec![0u8; length as usize]).unwrap();

    // Audit 1's candidate confirms but cannot be claimed; after W the renter's tower
    // takes the candidate's output and every later output back (RF_1j).
    mine_to(&m, &towers, &id, heights[2] + 6);
    assert_eq!(claims(&m, &id).len(), 1, "no claim without the data");
    let s = renter_status(&m, &id);
    let outcome = audit_outcomes(&s);
    assert_eq!(outcome[0], "paid", "{s}");
    assert_eq!(outcome[1], "refunded", "{s}");
    assert_eq!(outcome[2], "refunded", "{s}");
    // The renter got (A − candidate fee) + A back, less one refund fee and the 330-sat
    // fee-bump anchor that the refund pays the renter's tower.
    let refund_fee = 1_000 + 400 * 3;
    let anchor = dstore_protocol::audit::transactions::REFUND_ANCHOR_VALUE.to_sat();
    let back = AMOUNT_SAT - CANDIDATE_FEE_SAT + AMOUNT_SAT - refund_fee - anchor;
    wait_until(
        "the renter's wallet to see the refund",
        Duration::from_secs(30),
        || (m.renter_balance_sat() == renter_before + back).then_some(()),
    );
    // The auditor's Merkle audits caught the loss too, and it stopped racing candidates.
    wait_for_merkle(&m, &id, |t| {
        t["merkle"]["failed"].as_u64() > Some(0) && t["audits_failed"] == true
    });
}

/// With the renter's stake (issue 15) the farmer checks the openings only once TX_A is
/// confirmed: a caught renter has paid the stake, and its O_i come back through RF_0 (the
/// whole story, with the farmer's wallet and the refund, is `harden_stake.rs`).
#[test]
fn audit_renter_with_bad_locks_is_caught_before_funds_move() {
    let (m, _farmer_tower, _renter_tower) = market(Faults {
        renter: Some("audit-bad-locks"),
        ..Faults::default()
    });
    let input = m.file("in", &seeded_bytes(73, 100_000));
    let before = m.renter_balance_sat();
    let err = open_with_audits(&m, &input, 3).unwrap_err();
    assert!(err.contains("candidates fail"), "{err}");
    let list = m.renter().call_ok("dstore-list", json!([]));
    let id = list[0]["contract_id"].as_str().unwrap().to_string();
    let s = renter_status(&m, &id);
    assert_eq!(s["audits"]["phase"], "failed", "{s}");
    assert_eq!(s["audits"]["swapped"], 0, "no candidate was signed: {s}");
    let funding = s["audits"]["funding_txid"]
        .as_str()
        .expect("TX_A")
        .to_string();
    assert!(
        confirmed(&m, &funding),
        "caught only after TX_A confirmed: {s}"
    );
    let stake = s["audits"]["stake_sat"].as_u64().expect("the stake");
    let f = farmer_status(&m, &id);
    assert!(f["audits"]["renter_caught"].is_string(), "{f}");
    let spent = before - m.renter_balance_sat();
    assert!(
        spent >= 3 * AMOUNT_SAT + stake,
        "the O_i and the stake left the renter's wallet: {spent}"
    );
}

#[test]
fn audit_farmer_stopping_mid_swap_leaves_the_renter_its_refunds() {
    let (m, farmer_tower, renter_tower) = market(Faults {
        farmer: Some("audit-swap-stop-half"),
        ..Faults::default()
    });
    let input = m.file("in", &seeded_bytes(74, 100_000));
    let before = m.renter_balance_sat();
    let err = open_with_audits(&m, &input, 2).unwrap_err();
    assert!(err.contains("halfway"), "{err}");
    let id = m.renter().call_ok("dstore-list", json!([]))[0]["contract_id"]
        .as_str()
        .unwrap()
        .to_string();
    let s = renter_status(&m, &id);
    // Audit 0's candidates were all swapped; audit 1's none.
    assert_eq!(s["audits"]["swapped"], 8, "{s}");
    let heights = heights(&s);
    let towers = [&farmer_tower, &renter_tower];
    mine_to(&m, &towers, &id, heights[1] + 8);
    // Audit 0 runs as usual (the farmer keeps the file) and is paid; audit 1 never had a
    // candidate, so RF_1 returns its output after T_1 + W.
    wait_for_claims(&m, &id, 1);
    let s = renter_status(&m, &id);
    assert_eq!(audit_outcomes(&s), ["paid", "refunded"], "{s}");
    let stake = s["audits"]["stake_sat"].as_u64().expect("the stake");
    let spent = AMOUNT_SAT + (AMOUNT_SAT - 1_000 - 400 * 2) + stake;
    let fees_bound = 5_000;
    let after = m.renter_balance_sat();
    assert!(
        before - after <= spent + fees_bound,
        "the renter lost only audit 0's payment and fees: {before} → {after}"
    );
}

#[test]
fn audit_renter_stopping_mid_swap_leaves_the_farmer_paid_for_what_it_holds() {
    let (m, farmer_tower, renter_tower) = market(Faults {
        renter: Some("audit-renter-stop-half"),
        ..Faults::default()
    });
    let input = m.file("in", &seeded_bytes(75, 100_000));
    let err = open_with_audits(&m, &input, 2).unwrap_err();
    assert!(err.contains("halfway"), "{err}");
    let id = m.renter().call_ok("dstore-list", json!([]))[0]["contract_id"]
        .as_str()
        .unwrap()
        .to_string();
    let f = farmer_status(&m, &id);
    assert_eq!(f["audits"]["swapped"], 8, "{f}");
    assert_eq!(f["audits"]["watchtower_registered"], true, "{f}");
    let heights = heights(&renter_status(&m, &id));
    let towers = [&farmer_tower, &renter_tower];
    mine_to(&m, &towers, &id, heights[1] + 8);
    let claims = wait_for_claims(&m, &id, 1);
    assert_eq!(claims[0]["audit"], 0);
    let s = renter_status(&m, &id);
    assert_eq!(audit_outcomes(&s), ["paid", "refunded"], "{s}");
}

#[test]
fn audit_bad_input_gets_clear_errors_and_changes_nothing() {
    let (m, _farmer_tower, _renter_tower) = market(Faults::default());
    let input = m.file("in", &seeded_bytes(76, 50_000));
    let path = input.to_str().unwrap();
    // dstore-open refuses bad audit parameters before anything happens.
    for (args, needle) in [
        (vec!["1000", "6", "20000"], "audits must be"),
        (vec!["3", "1", "20000"], "audit_period_blocks must be"),
        (vec!["3", "6", "10"], "audit_amount_sat must be"),
        (vec!["three", "6", "20000"], "whole number"),
    ] {
        let mut cli = vec!["dstore-open", &m.peer_url, path, "20000"];
        cli.extend(args.iter().copied());
        let err = m.renter_cli(&cli).unwrap_err();
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert_eq!(m.renter().call_ok("dstore-list", json!([])), json!([]));

    // The farmer's audit endpoints: garbage, unknown contracts, oversized and wrong
    // releases, out-of-range challenges.
    let id = open_with_audits(&m, &input, 1).expect("a contract to poke at");
    let http = reqwest::blocking::Client::new();
    let post = |path: &str, body: Vec<u8>| {
        let r = http
            .post(format!("{}{path}", m.peer_url))
            .body(body)
            .send()
            .expect("farmer reachable");
        let code = r.status().as_u16();
        (code, r.json::<Value>().unwrap_or(Value::Null))
    };
    let reveal = "/dstore/v1/audit/reveal";
    let merkle = "/dstore/v1/audit/merkle";
    assert_eq!(post(reveal, b"{not json".to_vec()).0, 400);
    assert_eq!(post(reveal, vec![b' '; 10_000]).0, 413);
    let unknown = json!({
        "contract_id": "11".repeat(32), "audit": 0, "candidate": 0,
        "candidate_txid": "22".repeat(32),
        "secret": {"segment_index": 0, "salt": "33".repeat(32)},
    });
    assert_eq!(post(reveal, unknown.to_string().into_bytes()).0, 404);
    let f = farmer_status(&m, &id);
    let wrong_txid = json!({
        "contract_id": id, "audit": 0, "candidate": 0,
        "candidate_txid": "22".repeat(32),
        "secret": {"segment_index": 0, "salt": "33".repeat(32)},
    });
    let (code, body) = post(reveal, wrong_txid.to_string().into_bytes());
    assert_eq!(code, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("txid"), "{body}");
    assert_eq!(
        farmer_status(&m, &id)["audits"],
        f["audits"],
        "nothing changed"
    );
    for k in [0, 100_000] {
        let challenge = json!({"contract_id": id, "block_hash": "44".repeat(32), "k": k});
        assert_eq!(
            post(merkle, challenge.to_string().into_bytes()).0,
            400,
            "k = {k}"
        );
    }
    let challenge = json!({"contract_id": id, "block_hash": "44".repeat(32), "k": 4});
    let (code, answer) = post(merkle, challenge.to_string().into_bytes());
    assert_eq!(code, 200, "{answer}");
    assert_eq!(
        answer["items"].as_array().map(Vec::len),
        Some(4),
        "{answer}"
    );
}

#[test]
fn audit_third_party_auditor_holds_the_salts() {
    let mut auditor = None;
    let mut towers = None;
    let m = Market::start_around(&crs_dir(), Faults::default(), 80 << 20, |node| {
        node.mine(1);
        let farmer_tower = TowerProcess::start(node);
        let renter_tower = TowerProcess::start(node);
        let third = TowerProcess::start_with(node, &["--merkle-audit-every=2"]);
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
    let input = m.file("in", &seeded_bytes(77, 100_000));
    let id = open_with_audits(&m, &input, 2).expect("dstore-open with audits");
    let heights = heights(&renter_status(&m, &id));

    // The renter's own tower holds candidates and refunds but no salts; the auditor holds
    // the salts, and only its status says what it released.
    let own = renter_tower.status(&id);
    assert!(own["audits"]["auditor"] != true, "{own}");
    let third = auditor.status(&id);
    assert_eq!(third["audits"]["auditor"], true, "{third}");

    let towers = [&farmer_tower, &renter_tower, &auditor];
    mine_to(&m, &towers, &id, heights[1] + 2);
    let claims = wait_for_claims(&m, &id, 2);
    assert_eq!(claims.len(), 2);
    let s = renter_status(&m, &id);
    assert_eq!(audit_outcomes(&s), ["paid", "paid"], "{s}");
    wait_for_merkle(&m, &id, |t| t["merkle"]["passed"].as_u64() > Some(0));
}

fn post_message(m: &Market, kind: &str, body: Vec<u8>) -> (u16, Value) {
    m.post_message(kind, body)
}

#[test]
fn audit_setup_messages_out_of_order_are_refused() {
    use bitcoin::secp256k1::{Keypair, SecretKey, SECP256K1};
    use bitcoin::{Amount, ScriptBuf};
    use dstore_protocol::audit::book::KeptLock;
    use dstore_protocol::audit::messages::{
        AuditFunding, AuditProposal, AuditSwap, AuditToss, ProposedTerms,
    };
    use dstore_protocol::audit::stake::required_stake;
    use dstore_protocol::messages::OpenRequest;
    use dstore_protocol::peer;

    let m = Market::start(&crs_dir(), Faults::default());
    let renter = Keypair::from_secret_key(SECP256K1, &SecretKey::from_slice(&[9; 32]).unwrap());
    let id = [43u8; 32];
    let id_hex = hex::encode(id);
    let open = OpenRequest {
        file_length: 100,
        download_price: Amount::from_sat(dstore_tests::market::TEST_PRICE_SAT),
    };
    let (code, body) = post_message(
        &m,
        "open_request",
        peer::sign(&renter, id, 0, &open).unwrap(),
    );
    assert_eq!(code, 200, "{body}");
    let before = farmer_status(&m, &id_hex);

    let key = renter.public_key();
    let proposal = AuditProposal {
        terms: ProposedTerms {
            renter_funding_key: key,
            renter_claim_key: key,
            first_audit_height: 500,
            period: 8,
            claim_window: 6,
            audits: 1,
            amount: Amount::from_sat(20_000),
            candidate_fee: Amount::from_sat(1_000),
            refund_fee: Amount::from_sat(2_000),
            stake: required_stake(Amount::from_sat(20_000), 2),
        },
        renter_destination: ScriptBuf::new(),
        locks: vec![vec![KeptLock([0; 20]); 4]],
        refund_anchor: None,
    };
    let toss = AuditToss {
        renter_nonce: [1; 32],
    };
    let funding = AuditFunding {
        funding_tx: bitcoin::Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: bitcoin::absolute::LockTime::ZERO,
            input: vec![],
            output: vec![],
        },
    };
    let swap = AuditSwap {
        step: 0,
        renter_signature: None,
    };
    for (kind, envelope, needle) in [
        // Audits need the whole file first.
        (
            "audit_proposal",
            peer::sign(&renter, id, 1, &proposal).unwrap(),
            "upload is not finished",
        ),
        // Each later step needs the one before it.
        (
            "audit_funding",
            peer::sign(&renter, id, 1, &funding).unwrap(),
            "no audit proposal",
        ),
        (
            "audit_toss",
            peer::sign(&renter, id, 1, &toss).unwrap(),
            "no audit proposal",
        ),
        (
            "audit_swap",
            peer::sign(&renter, id, 1, &swap).unwrap(),
            "no audit proposal",
        ),
        // A message of one kind posted as another, and garbage.
        (
            "audit_openings",
            peer::sign(&renter, id, 1, &toss).unwrap(),
            "expected a audit_openings message",
        ),
        ("audit_proposal", b"{\"version\":1}".to_vec(), "malformed"),
    ] {
        let (code, body) = post_message(&m, kind, envelope);
        assert_eq!(code, 400, "{kind}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{kind}: {body}");
    }
    assert_eq!(farmer_status(&m, &id_hex), before, "nothing changed");
    assert!(before["audits"].is_null(), "{before}");
}
