//! dstore-watchtower running the audit contract (PROTOCOL.md 5) against a real regtest
//! bitcoind: a real `dstore-watchtower` process, the contract set up in-process with the
//! protocol API (`dstore_tests::audit_fixture`), and the farmer's peer endpoints served by
//! a small HTTP server that claims honestly through bitcoind (or cannot).
//!
//! * the towers broadcast exactly the beacon's candidate at T_i, the auditor releases its
//!   salt once it confirms, and the farmer's claim pays it;
//! * a farmer that lost the data cannot claim; after W the tower's RF_ij refunds;
//! * a farmer unreachable for a whole claim window fails its Merkle audit, which withholds
//!   the later candidates; RF_i refunds;
//! * Merkle audits are recorded as passed for an honest farmer and failed for a wrong
//!   answer;
//! * a kill -9 between the candidate's confirmation and the release loses nothing;
//! * the salts never reach the tower's files in clear, and auditor.key is private;
//! * bad registrations are refused and change nothing.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use bitcoin::{ScriptBuf, Transaction, TxIn, TxOut, Txid};
use dstore_protocol::audit::book::RefundId;
use dstore_protocol::watch::{Presigned, Registration};
use dstore_tests::audit_fixture::{AuditContract, FarmerMode, FarmerServer, WINDOW};
use dstore_tests::funding::{fetch_tx, Funder};
use dstore_tests::{ports, wait_until, BitcoinNode, TowerProcess};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

fn setup(seed: u64, coins: u32) -> (StdRng, BitcoinNode, Funder) {
    let node = BitcoinNode::start();
    let funder = Funder::new(&node, coins);
    (StdRng::seed_from_u64(seed), node, funder)
}

fn tower(node: &BitcoinNode, extra: &[&str]) -> TowerProcess {
    let mut flags = vec!["--poll-seconds=1"];
    flags.extend_from_slice(extra);
    TowerProcess::start_with(node, &flags)
}

fn register(tower: &TowerProcess, registration: &Registration) -> String {
    let value = serde_json::to_value(registration).unwrap();
    let reply = tower.call_ok("tower-register", json!([value]));
    reply["result"].as_str().unwrap().to_string()
}

fn register_err(tower: &TowerProcess, registration: &Value) -> String {
    match tower.call("tower-register", json!([registration])) {
        Ok(reply) => panic!("registration accepted: {reply}"),
        Err(e) => {
            assert_eq!(e.code, -8, "{e}");
            e.message
        }
    }
}

fn in_mempool(node: &BitcoinNode, txid: &Txid) -> bool {
    node.rpc("getmempoolentry", json!([txid.to_string()]))
        .is_ok()
}

fn confirmations(node: &BitcoinNode, txid: &Txid) -> u64 {
    node.rpc("getrawtransaction", json!([txid.to_string(), true]))
        .ok()
        .and_then(|t| t["confirmations"].as_u64())
        .unwrap_or(0)
}

/// Mines one block and waits until every tower has processed it.
fn mine_one(node: &BitcoinNode, towers: &[&TowerProcess]) {
    node.mine(1);
    for tower in towers {
        tower.wait_for_tip(node.block_count());
    }
}

/// Mines block by block until the tip is `height`.
fn mine_to(node: &BitcoinNode, towers: &[&TowerProcess], height: u32) {
    while (node.block_count() as u32) < height {
        mine_one(node, towers);
    }
}

/// Mines block by block (at most `max`) until `txid`, which a tower broadcasts, is
/// confirmed. A tower broadcasts what is due at a tip while it processes that block, so
/// once every tower's tip is the node's, whatever is due there is in the mempool.
fn mine_until_confirmed(node: &BitcoinNode, towers: &[&TowerProcess], txid: &Txid, max: u32) {
    for _ in 0..max {
        mine_one(node, towers);
        if confirmations(node, txid) > 0 {
            return;
        }
    }
    panic!("{txid} not confirmed within {max} blocks");
}

fn wait_until_or_none<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn audit_row(tower: &TowerProcess, c: &AuditContract, audit: u32) -> Value {
    tower.audits(&c.id_hex())["audits"][audit as usize].clone()
}

/// Waits until audit `audit` of `c` shows `outcome` on `tower`.
fn wait_for_outcome(tower: &TowerProcess, c: &AuditContract, audit: u32, outcome: &str) -> Value {
    wait_until(&format!("audit {audit} {outcome}"), WAIT, || {
        let row = audit_row(tower, c, audit);
        (row["outcome"] == outcome).then_some(row)
    })
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Waits until the beacon's candidate of `audit` is in the mempool at T_i and checks that
/// no tower broadcast any other member; returns j.
fn beacon_candidate_goes_out(
    node: &BitcoinNode,
    towers: &[&TowerProcess],
    c: &AuditContract,
    audit: u32,
) -> u32 {
    let t = c.terms().audit_height(audit);
    mine_to(node, towers, t - 1);
    for j in 0..c.kept() {
        assert!(!in_mempool(node, &c.candidate_txid(audit, j)), "before T_i");
    }
    mine_one(node, towers);
    let j = c.beacon(node, audit);
    let chosen = c.candidate_txid(audit, j);
    wait_until("the beacon's candidate in the mempool", WAIT, || {
        in_mempool(node, &chosen).then_some(())
    });
    for tower in towers {
        for k in (0..c.kept()).filter(|k| *k != j) {
            let other = tower.tx(&c.id_hex(), &format!("audit-{audit}-candidate-{k}"));
            assert_eq!(other["status"]["state"], "alternative", "{other}");
            assert_eq!(other["status"]["chosen"], chosen.to_string());
            assert_eq!(other["broadcasts"], 0, "{other}");
        }
        assert_eq!(audit_row(tower, c, audit)["beacon"], j);
    }
    j
}

#[test]
fn audit_tower_broadcasts_the_beacon_candidate_releases_its_salt_and_the_farmer_is_paid() {
    let (mut rng, node, mut funder) = setup(701, 1);
    let c = AuditContract::new(&node, &mut funder, &mut rng, 2, 3, 8);
    let farmer = FarmerServer::start(&node, c.farmer_side(), FarmerMode::Honest);
    let renter_tower = tower(&node, &[]);
    let farmer_tower = tower(&node, &[]);
    let renter = c.renter_registration(Some(&farmer.url));
    assert_eq!(register(&renter_tower, &renter), "registered");
    assert_eq!(register(&renter_tower, &renter), "unchanged");
    assert_eq!(
        register(&farmer_tower, &c.farmer_registration()),
        "registered"
    );
    let towers = [&renter_tower, &farmer_tower];
    for audit in 0..2 {
        let j = beacon_candidate_goes_out(&node, &towers, &c, audit);
        assert!(
            farmer.claims().len() == audit as usize,
            "no release before it confirms"
        );
        mine_one(&node, &towers);
        let (_, claimed, claim_txid) = wait_until("the farmer's claim", WAIT, || {
            farmer.claims().get(audit as usize).copied()
        });
        assert_eq!(claimed, j);
        assert!(in_mempool(&node, &claim_txid));
        // The farmer's plugin hands the claim to its tower (a merge).
        let claim = Registration {
            transactions: vec![Presigned::new(
                format!("audit-{audit}-claim-{j}"),
                fetch_tx(&node, &claim_txid.to_string()),
            )],
            ..c.farmer_registration()
        };
        assert_eq!(register(&farmer_tower, &claim), "updated");
        mine_one(&node, &towers);
        let row = wait_for_outcome(&renter_tower, &c, audit, "paid");
        assert_eq!(row["settled_by"], claim_txid.to_string(), "{row}");
        assert_eq!(row["candidate"]["j"], j);
        assert_eq!(row["release"]["claim_txid"], claim_txid.to_string());
        assert_eq!(row["release"]["attempts"], 1, "{row}");
        assert!(row["release"]["released_height"].is_u64());
        wait_for_outcome(&farmer_tower, &c, audit, "paid");
    }
    assert_eq!(farmer.reveals(), 2, "one release per confirmed candidate");
    // Nothing of the renter's refunds could take the farmer's money back.
    let status = renter_tower.status(&c.id_hex());
    for tx in status["transactions"].as_array().unwrap() {
        if tx["name"].as_str().unwrap().contains("refund") {
            assert_eq!(tx["broadcasts"], 0, "{tx}");
        }
    }
    assert_eq!(status["audits"]["auditor"], true);
    assert_eq!(status["audits"]["audits_failed"], false);
}

#[test]
fn audit_tower_refunds_through_rf_ij_when_the_farmer_cannot_answer() {
    let (mut rng, node, mut funder) = setup(702, 1);
    let c = AuditContract::new(&node, &mut funder, &mut rng, 2, 2, 6);
    let farmer = FarmerServer::start(&node, c.farmer_side(), FarmerMode::DataLost);
    let renter_tower = tower(&node, &[]);
    register(&renter_tower, &c.renter_registration(Some(&farmer.url)));
    let towers = [&renter_tower];
    let j = beacon_candidate_goes_out(&node, &towers, &c, 0);
    mine_one(&node, &towers);
    // The first release's answer is recorded before more blocks come, so the next block
    // retries it (a release in flight is not sent again).
    wait_until("the first release's answer", WAIT, || {
        let release = &audit_row(&renter_tower, &c, 0)["release"];
        release["last_error"].is_string().then_some(())
    });
    assert!(farmer.reveals() >= 1);
    let rf = c.refund(RefundId::AfterCandidate(0, j)).compute_txid();
    mine_until_confirmed(&node, &towers, &rf, u32::from(WINDOW) + 3);
    let row = wait_for_outcome(&renter_tower, &c, 0, "refunded");
    assert_eq!(row["settled_by"], rf.to_string(), "{row}");
    let release = &row["release"];
    assert!(
        release["attempts"].as_u64().unwrap() >= 2,
        "retried every block: {row}"
    );
    assert!(release["released_height"].is_null());
    let error = release["last_error"].as_str().unwrap();
    assert!(error.contains("500") && error.contains("gone"), "{error}");
    assert!(farmer.claims().is_empty());
    // RF_0j also took O_1 back; the reclaim was never needed.
    let next = wait_for_outcome(&renter_tower, &c, 1, "refunded");
    assert_eq!(next["settled_by"], rf.to_string());
    let reclaim = renter_tower.tx(&c.id_hex(), &format!("audit-0-reclaim-{j}"));
    assert_eq!(reclaim["broadcasts"], 0, "{reclaim}");
    // The release stops once the output is spent: the tower has acted on the next block
    // (releases are recorded before they are sent, under the lock that block's processing
    // holds), and it tried no release there.
    let attempts = release["attempts"].clone();
    mine_one(&node, &towers);
    let status = renter_tower.status(&c.id_hex());
    assert_eq!(status["tip_height"], node.block_count(), "{status}");
    let after = &status["audits"]["audits"][0]["release"];
    assert_eq!(after["attempts"], attempts, "{after}");
    assert!(
        after["last_attempt_height"].as_u64() < Some(node.block_count()),
        "{after}"
    );
}

#[test]
fn audit_tower_withholds_candidates_after_a_failed_merkle_audit_and_rf_i_refunds() {
    let (mut rng, node, mut funder) = setup(703, 1);
    let c = AuditContract::new(&node, &mut funder, &mut rng, 2, 2, 7);
    let nobody = format!("http://127.0.0.1:{}", ports::free_ports(1)[0]);
    let renter_tower = tower(&node, &["--merkle-audit-every=2"]);
    register(&renter_tower, &c.renter_registration(Some(&nobody)));
    // An unreachable farmer is retried with back-off; it fails once it has been
    // unreachable for a whole claim window W (issue 15, item 4).
    let towers = [&renter_tower];
    let mut audits = Value::Null;
    for _ in 0..=(2 * u32::from(WINDOW)) {
        mine_one(&node, &towers);
        let failed = wait_until_or_none(Duration::from_secs(5), || {
            let a = renter_tower.audits(&c.id_hex());
            (a["audits_failed"] == true).then_some(a)
        });
        if let Some(a) = failed {
            audits = a;
            break;
        }
    }
    assert_eq!(
        audits["audits_failed"], true,
        "the failed Merkle audit: {audits}"
    );
    let error = audits["failure"]["error"].as_str().unwrap();
    assert!(error.contains("cannot reach the farmer"), "{error}");
    assert!(error.contains("whole claim window"), "{error}");
    assert_eq!(audits["audits"][0]["withheld"], true, "{audits}");
    let t0 = c.terms().audit_height(0);
    let rf0 = c.refund(RefundId::Unraced(0)).compute_txid();
    mine_to(&node, &towers, t0 + u32::from(WINDOW) - 1);
    mine_until_confirmed(&node, &towers, &rf0, 3);
    for audit in 0..2 {
        let row = wait_for_outcome(&renter_tower, &c, audit, "refunded");
        assert_eq!(row["settled_by"], rf0.to_string());
        assert!(row["candidate"].is_null(), "{row}");
        for j in 0..c.kept() {
            let tx = renter_tower.tx(&c.id_hex(), &format!("audit-{audit}-candidate-{j}"));
            assert_eq!(tx["broadcasts"], 0, "{tx}");
            assert_eq!(tx["status"]["state"], "superseded", "{tx}");
            assert!(confirmations(&node, &c.candidate_txid(audit, j)) == 0);
        }
    }
    let audits = renter_tower.audits(&c.id_hex());
    assert!(
        audits["merkle"]["unreachable"].as_u64().unwrap() >= 2,
        "kept auditing: {audits}"
    );
}

#[test]
fn audit_tower_records_merkle_audits_passed_for_an_honest_farmer_and_failed_for_a_wrong_answer() {
    let (mut rng, node, mut funder) = setup(704, 2);
    let honest = AuditContract::new(&node, &mut funder, &mut rng, 1, 2, 40);
    let liar = AuditContract::new(&node, &mut funder, &mut rng, 1, 2, 40);
    let good = FarmerServer::start(&node, honest.farmer_side(), FarmerMode::Honest);
    let bad = FarmerServer::start(&node, liar.farmer_side(), FarmerMode::WrongMerkle);
    let tower = tower(&node, &["--merkle-audit-every=2", "--merkle-audit-k=4"]);
    register(&tower, &honest.renter_registration(Some(&good.url)));
    register(&tower, &liar.renter_registration(Some(&bad.url)));
    let records = |c: &AuditContract, n: usize| {
        wait_until("Merkle audit records", WAIT, || {
            let audits = tower.audits(&c.id_hex());
            let records = audits["merkle"]["records"].as_array()?.clone();
            (records.len() >= n).then_some((audits, records))
        })
    };
    // One at registration, then one every 2 blocks (never two at once for a contract).
    for round in 1..=3 {
        records(&honest, round);
        records(&liar, round);
        mine_one(&node, &[&tower]);
        mine_one(&node, &[&tower]);
    }
    let (audits, passed) = records(&honest, 3);
    assert_eq!(audits["audits_failed"], false, "{audits}");
    for record in &passed {
        assert_eq!(record["ok"], true, "{record}");
        assert_eq!(record["k"], 4);
        let hash = node.rpc_ok("getblockhash", json!([record["height"]]));
        assert_eq!(
            record["block_hash"], hash,
            "challenged with that block's hash"
        );
    }
    let heights: Vec<u64> = passed
        .iter()
        .map(|r| r["height"].as_u64().unwrap())
        .collect();
    assert!(
        heights.windows(2).all(|w| w[1] >= w[0] + 2),
        "every 2 blocks: {heights:?}"
    );
    let asked = good.merkle_requests();
    assert!(asked
        .iter()
        .all(|r| r.contract_id == honest.contract_id() && r.k == 4));
    let (audits, failed) = records(&liar, 1);
    assert_eq!(failed[0]["ok"], false);
    let error = failed[0]["error"].as_str().unwrap();
    assert!(error.contains("does not verify"), "{error}");
    assert_eq!(audits["audits_failed"], true);
    assert_eq!(audits["audits"][0]["outcome"], "withheld", "{audits}");
    let list = tower.call_ok("tower-list", json!([]));
    let failed_flags: Vec<bool> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["audits_failed"].as_bool().unwrap())
        .collect();
    assert_eq!(failed_flags.iter().filter(|f| **f).count(), 1, "{list}");
}

#[test]
fn audit_tower_releases_after_a_kill_9_between_confirmation_and_release() {
    let (mut rng, node, mut funder) = setup(705, 1);
    let c = AuditContract::new(&node, &mut funder, &mut rng, 1, 2, 6);
    let farmer = FarmerServer::start(&node, c.farmer_side(), FarmerMode::Honest);
    let mut renter_tower = tower(&node, &[]);
    register(&renter_tower, &c.renter_registration(Some(&farmer.url)));
    let j = beacon_candidate_goes_out(&node, &[&renter_tower], &c, 0);
    renter_tower.kill9();
    // The candidate confirms (and one more block passes) while the tower is down.
    node.mine(2);
    assert_eq!(confirmations(&node, &c.candidate_txid(0, j)), 2);
    assert_eq!(farmer.reveals(), 0);
    renter_tower.restart();
    let (_, claimed, claim) = wait_until("the release after the restart", WAIT, || {
        farmer.claims().first().copied()
    });
    assert_eq!(claimed, j);
    mine_one(&node, &[&renter_tower]);
    let row = wait_for_outcome(&renter_tower, &c, 0, "paid");
    assert_eq!(row["settled_by"], claim.to_string());
    // And once more, right after the release was recorded: nothing is sent again (the
    // tower records a release before sending it, while it processes the block).
    renter_tower.kill9();
    renter_tower.restart();
    mine_one(&node, &[&renter_tower]);
    let row = audit_row(&renter_tower, &c, 0);
    assert_eq!(row["outcome"], "paid");
    assert_eq!(row["release"]["attempts"], 1, "{row}");
    assert_eq!(farmer.reveals(), 1);
}

#[test]
fn audit_tower_keeps_the_salts_encrypted_at_rest() {
    let (mut rng, node, mut funder) = setup(706, 1);
    let c = AuditContract::new(&node, &mut funder, &mut rng, 2, 3, 20);
    let farmer = FarmerServer::start(&node, c.farmer_side(), FarmerMode::Honest);
    let mut renter_tower = tower(&node, &["--merkle-audit-every=1"]);
    register(&renter_tower, &c.renter_registration(Some(&farmer.url)));
    mine_one(&node, &[&renter_tower]);
    wait_until("a Merkle audit", WAIT, || {
        let passed = renter_tower.audits(&c.id_hex())["merkle"]["passed"].as_u64()?;
        (passed >= 1).then_some(())
    });
    let shown = format!(
        "{}{}",
        renter_tower.status(&c.id_hex()),
        renter_tower.call_ok("tower-list", json!([]))
    );
    let salts = c.salts();
    assert_eq!(salts.len(), 6);
    for salt in &salts {
        assert!(
            !shown.contains(&hex::encode(salt)),
            "a salt in tower-status"
        );
    }
    renter_tower.kill9();
    let files = files_under(renter_tower.datadir());
    assert!(files.iter().any(|f| f.ends_with("watchtower.log")));
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        for salt in &salts {
            let hex = hex::encode(salt);
            for needle in [hex.as_bytes(), hex.to_uppercase().as_bytes(), &salt[..]] {
                assert!(
                    !contains(&bytes, needle),
                    "a salt in clear in {}",
                    file.display()
                );
            }
        }
    }
    let key = renter_tower.datadir().join("regtest").join("auditor.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", key.display());
    assert_eq!(std::fs::read_to_string(&key).unwrap().trim().len(), 64);
    // The tower reads them back after the restart (it audits and would release).
    renter_tower.restart();
    assert_eq!(renter_tower.audits(&c.id_hex())["auditor"], true);
}

/// Raw POST to the tower's RPC: (HTTP status, body).
fn post_raw(tower: &TowerProcess, body: String) -> (u16, String) {
    let credentials = tower.credentials();
    let (user, password) = credentials.trim().split_once(':').unwrap();
    let response = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
        .post(tower.rpc_url())
        .basic_auth(user, Some(password))
        .body(body)
        .send()
        .unwrap();
    (
        response.status().as_u16(),
        response.text().unwrap_or_default(),
    )
}

/// A transaction of about `bytes` bytes (one huge OP_RETURN output).
fn heavy_tx(bytes: usize) -> Transaction {
    Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![TxIn::default()],
        output: vec![TxOut {
            value: bitcoin::Amount::ZERO,
            script_pubkey: ScriptBuf::from_bytes(vec![0x6a; bytes]),
        }],
    }
}

#[test]
fn audit_tower_refuses_bad_registrations_and_changes_nothing() {
    let (mut rng, node, mut funder) = setup(707, 1);
    let c = AuditContract::new(&node, &mut funder, &mut rng, 2, 2, 30);
    let tower = tower(&node, &[]);
    let url = "http://127.0.0.1:1";
    let good = serde_json::to_value(c.renter_registration(Some(url))).unwrap();
    let with = |change: &dyn Fn(&mut Value)| {
        let mut bad = good.clone();
        change(&mut bad);
        bad
    };
    let cases: Vec<(Value, &str)> = vec![
        (
            with(&|r| r["auditor"]["secrets"][1] = json!([])),
            "secrets for each",
        ),
        (
            with(&|r| {
                r["auditor"]["secrets"].as_array_mut().unwrap().pop();
            }),
            "secrets for each",
        ),
        (
            with(&|r| r["auditor"]["farmer_url"] = json!("ftp://farmer")),
            "farmer_url",
        ),
        (
            with(&|r| r["auditor"]["secrets"][0][0]["segment_index"] = json!(99)),
            "out of range",
        ),
        (
            with(&|r| r["auditor"]["book"] = json!(5)),
            "invalid registration",
        ),
        (
            with(&|r| r["id"] = json!(hex::encode([7u8; 32]))),
            "contract's id",
        ),
        (
            with(&|r| r["transactions"][1]["group"] = json!(1)),
            "group 1",
        ),
    ];
    for (bad, why) in &cases {
        let message = register_err(&tower, bad);
        assert!(message.contains(why), "{why}: {message}");
    }
    // Oversized: too many transactions, too many bytes, a body over the RPC limit.
    let small = heavy_tx(10);
    let many: Vec<Presigned> = (0..4097)
        .map(|i| Presigned::new(format!("t{i}"), small.clone()))
        .collect();
    let many = serde_json::to_value(Registration {
        transactions: many,
        auditor: None,
        ..c.renter_registration(None)
    })
    .unwrap();
    assert!(register_err(&tower, &many).contains("too many transactions"));
    let heavy = heavy_tx(99_000);
    let heavy: Vec<Presigned> = (0..81)
        .map(|i| Presigned::new(format!("h{i}"), heavy.clone()))
        .collect();
    let heavy = serde_json::to_value(Registration {
        transactions: heavy,
        auditor: None,
        ..c.renter_registration(None)
    })
    .unwrap();
    let message = register_err(&tower, &heavy);
    assert!(
        message.contains("more than the limit of 8000000"),
        "{message}"
    );
    let huge = format!(
        r#"{{"method": "tower-register", "params": ["{}"]}}"#,
        "x".repeat(19 << 20)
    );
    assert_eq!(post_raw(&tower, huge).0, 413);
    assert_eq!(
        tower.call_ok("tower-list", json!([])),
        json!([]),
        "nothing registered"
    );

    // A good one, then a conflicting auditor spec: refused, the record unchanged.
    assert_eq!(
        register(&tower, &c.renter_registration(Some(url))),
        "registered"
    );
    let before = tower.status(&c.id_hex());
    let other = with(&|r| r["auditor"]["farmer_url"] = json!("http://127.0.0.1:2"));
    assert!(register_err(&tower, &other).contains("another auditor spec"));
    let regrouped = with(&|r| r["transactions"][0]["group"] = json!(9));
    assert!(register_err(&tower, &regrouped).contains("conflicts"));
    assert_eq!(tower.status(&c.id_hex())["audits"], before["audits"]);
    assert_eq!(tower.audits(&c.id_hex())["farmer_url"], url);
    let list = tower.call_ok("tower-list", json!([]));
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(
        list[0]["transactions"],
        before["transactions"].as_array().unwrap().len()
    );
}

#[test]
fn audit_tower_as_a_third_party_auditor_releases_for_the_renters_tower() {
    let (mut rng, node, mut funder) = setup(708, 1);
    let c = AuditContract::new(&node, &mut funder, &mut rng, 1, 3, 6);
    let farmer = FarmerServer::start(&node, c.farmer_side(), FarmerMode::Honest);
    // The renter's own tower holds the transactions; the auditor's tower holds the spec and
    // watches the candidates' txids only.
    let renter_tower = tower(&node, &[]);
    let auditor_tower = tower(&node, &["--merkle-audit-every=3"]);
    assert_eq!(
        register(&renter_tower, &c.renter_registration(None)),
        "registered"
    );
    let auditor_only = Registration {
        transactions: vec![],
        watch_txids: (0..c.kept()).map(|j| c.candidate_txid(0, j)).collect(),
        ..c.renter_registration(Some(&farmer.url))
    };
    assert_eq!(register(&auditor_tower, &auditor_only), "registered");
    assert_eq!(renter_tower.audits(&c.id_hex())["auditor"], false);
    let towers = [&renter_tower, &auditor_tower];
    let j = beacon_candidate_goes_out(&node, &[&renter_tower], &c, 0);
    // The auditor's tower learns of the candidate from bitcoind's feed on its own time.
    auditor_tower.wait_for_tip(node.block_count());
    let seen = wait_until("the auditor's tower to see the candidate", WAIT, || {
        let row = audit_row(&auditor_tower, &c, 0);
        row["candidate"]["j"].is_u64().then_some(row)
    });
    assert_eq!(seen["candidate"]["j"], j, "{seen}");
    mine_one(&node, &towers);
    let (_, claimed, claim) = wait_until("the farmer's claim", WAIT, || {
        farmer.claims().first().copied()
    });
    assert_eq!(claimed, j);
    mine_one(&node, &towers);
    for tower in towers {
        let row = wait_for_outcome(tower, &c, 0, "paid");
        assert_eq!(row["settled_by"], claim.to_string(), "{row}");
    }
    let audits = auditor_tower.audits(&c.id_hex());
    assert!(
        audits["merkle"]["passed"].as_u64().unwrap() >= 1,
        "{audits}"
    );
    assert!(audit_row(&renter_tower, &c, 0)["release"].is_null());
}
