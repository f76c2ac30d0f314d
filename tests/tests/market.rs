//! The farmer market end to end (issue 17): three farmer dstore-plugins announce fidelity
//! bonds on one regtest bitcoind, renters' market scanners follow the chain, and what the
//! renters list (`dstore-farmers`) and choose (`dstore-open auto`) is checked against what
//! the chain and the evidence boards say: bond values recomputed with the protocol's own
//! formula, a restart and a reorg, an audit failed on the chain, a fraud proof published to
//! the boards, a withdrawn bond, and forged announcements, adverts and evidence.
//!
//! Every test waits on state: `dstore-farmers` reports the height its scan reached, and the
//! tests wait until it is the node's tip (and, where they need it, until adverts or boards
//! were fetched).

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use bitcoin::script::PushBytesBuf;
use bitcoin::secp256k1::{Keypair, SecretKey, XOnlyPublicKey, SECP256K1};
use bitcoin::{Amount, OutPoint, ScriptBuf, TxOut};
use dstore_protocol::market::advert::{sign_advert, Advert};
use dstore_protocol::market::announce::Announcement;
use dstore_protocol::market::bond::{bond_script_pubkey, bond_value, locktime_to_time};
use dstore_protocol::market::score::{score, FarmerFacts};
use dstore_protocol::seal::FraudProof;
use dstore_tests::market::{finish_download, TEST_PRICE_SAT};
use dstore_tests::market_fixture::{
    contract_id_of, identities, row_of, FakeEndpoint, FarmerSpec, MarketNet, RenterSpec,
    MARKET_WAIT,
};
use dstore_tests::parties::{seeded_bytes, Parties};
use dstore_tests::{wait_until, TowerProcess};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};

fn crs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-crs")
}

fn plain_farmers(n: usize) -> Vec<FarmerSpec> {
    vec![FarmerSpec::default(); n]
}

fn plain_renters(n: usize) -> Vec<RenterSpec> {
    vec![RenterSpec::default(); n]
}

fn btc_to_sat(btc: f64) -> u64 {
    Amount::from_btc(btc).expect("amount").to_sat()
}

/// True when farmer `i`'s row has a bond and a verified advert.
fn listed(net: &MarketNet, table: &Value, i: usize) -> bool {
    net.row(table, i)
        .is_some_and(|row| !row["bond"].is_null() && !row["advert"].is_null())
}

/// Waits until renter `r` lists each farmer of `farmers` with a bond and a verified advert.
fn wait_listed(net: &MarketNet, r: usize, farmers: &[usize]) -> Value {
    net.farmers_when(r, "bonded farmers with verified adverts", |t| {
        farmers.iter().all(|&i| listed(net, t, i))
    })
}

/// The bond value the table should show for `bond`, recomputed from the chain with the
/// protocol's formula (the confirming block's time; now = the tip's median time).
fn expected_bond_value(net: &MarketNet, bond: &Value) -> f64 {
    let value_sat = bond["value_sat"].as_u64().expect("value_sat");
    let height = bond["confirmed_height"].as_u64().expect("confirmed_height");
    let locktime = bond["locktime"].as_u64().expect("locktime") as u32;
    let hash = net.node.rpc_ok("getblockhash", json!([height]));
    let header = net.node.rpc_ok("getblockheader", json!([hash]));
    let confirmed = header["time"].as_u64().expect("block time");
    let tip_hash = net.node.rpc_ok("getbestblockhash", json!([]));
    let tip = net.node.rpc_ok("getblockheader", json!([tip_hash]));
    let now = tip["mediantime"].as_u64().expect("median time");
    let due = locktime_to_time(locktime, height as u32, confirmed);
    bond_value(value_sat, confirmed, due, now)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn count(row: &Value, field: &str) -> u64 {
    row[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {row}"))
}

fn score_of(row: &Value) -> f64 {
    row["score"]
        .as_f64()
        .unwrap_or_else(|| panic!("no score in {row}"))
}

/// The score the row should have, recomputed with the protocol's formula from the row's
/// own facts and the bond value recomputed from the chain.
fn expected_score(net: &MarketNet, row: &Value) -> f64 {
    let price = row["advert"]["advert"]["price_per_download_sat"]
        .as_u64()
        .or_else(|| row["advert"]["price_per_download_sat"].as_u64())
        .unwrap_or_else(|| panic!("no advertised price in {row}"));
    score(&FarmerFacts {
        bond_value: expected_bond_value(net, &row["bond"]),
        audits_passed: count(row, "audits_passed"),
        audits_failed: count(row, "audits_failed"),
        downloads_served: count(row, "downloads_served"),
        downloads_refunded: count(row, "downloads_refunded"),
        price_per_download_sat: price,
        burned: row["burned"] == true,
    })
}

/// Checks farmer `i`'s row against its `dstore-announce` reply and the chain.
fn check_bond(net: &MarketNet, table: &Value, i: usize, announced: &Value, bond_btc: f64) {
    let row = net
        .row(table, i)
        .unwrap_or_else(|| panic!("farmer {i} not in {table}"));
    let bond = &row["bond"];
    assert_eq!(bond["value_sat"], btc_to_sat(bond_btc), "farmer {i}: {row}");
    assert_eq!(
        bond["outpoint"], announced["bond_outpoint"],
        "farmer {i}: {row}"
    );
    assert_eq!(bond["locktime"], announced["locktime"], "farmer {i}: {row}");
    let txid = announced["txid"].as_str().expect("txid");
    let block = net.block_of(txid);
    let height = net.node.rpc_ok("getblockheader", json!([block]))["height"].clone();
    assert_eq!(bond["confirmed_height"], height, "farmer {i}: {row}");
    let value = bond["bond_value"].as_f64().expect("bond_value");
    let expected = expected_bond_value(net, bond);
    assert!(expected > 0.0, "farmer {i}: a live bond has a value");
    assert!(
        close(value, expected),
        "farmer {i}: bond_value {value}, expected {expected}"
    );
    assert_eq!(row["peer_url"], net.farmers[i].peer_url.as_str(), "{row}");
    assert_eq!(row["burned"], false, "{row}");
    let (got, want) = (score_of(row), expected_score(net, row));
    assert!(
        close(got, want),
        "farmer {i}: score {got}, expected {want}: {row}"
    );
}

/// What must not change in a farmer's row: everything but the advert's freshness.
fn stable(row: &Value) -> Value {
    json!({
        "identity": row["identity"], "peer_url": row["peer_url"], "bond": row["bond"],
        "audits_passed": row["audits_passed"], "audits_failed": row["audits_failed"],
        "downloads_served": row["downloads_served"],
        "downloads_refunded": row["downloads_refunded"],
        "burned": row["burned"], "evidence": row["evidence"],
        "score": row["score"],
    })
}

fn stable_rows(net: &MarketNet, table: &Value, farmers: &[usize]) -> Vec<Value> {
    farmers
        .iter()
        .map(|&i| stable(net.row(table, i).expect("listed")))
        .collect()
}

/// The farmer `dstore-open auto` chose, as its reply says.
fn chosen(reply: &Value) -> String {
    reply["farmer"]["identity"]
        .as_str()
        .unwrap_or_else(|| panic!("no chosen farmer in {reply}"))
        .to_string()
}

#[test]
fn market_three_farmers_listed_with_bond_values_after_restart_and_reorg() {
    let mut net = MarketNet::start(&crs_dir(), &plain_farmers(3), &plain_renters(1));
    let lock = net.tip() as u32 + 1_000;
    let bonds = [0.1, 0.2, 0.3];
    let a0 = net.announce_ok(0, bonds[0], lock);
    let a1 = net.announce_ok(1, bonds[1], lock + 5);
    net.mine(1);
    // The third announcement gets a block of its own, which the reorg below removes.
    let a2 = net.announce_ok(2, bonds[2], lock + 10);
    let third_block = net.mine(1).remove(0);
    assert_eq!(net.block_of(a2["txid"].as_str().unwrap()), third_block);

    let table = wait_listed(&net, 0, &[0, 1, 2]);
    for (i, announced) in [&a0, &a1, &a2].into_iter().enumerate() {
        check_bond(&net, &table, i, announced, bonds[i]);
    }
    let by_bond = net.renter(0).call_ok("dstore-farmers", json!(["bond"]));
    let order: Vec<String> = (0..3)
        .rev()
        .map(|i| net.farmers[i].identity.clone())
        .collect();
    assert_eq!(identities(&by_bond), order, "largest bond first: {by_bond}");
    assert_eq!(
        identities(&table),
        order,
        "same price: best score = largest bond"
    );

    // A restart resumes the scan (blocks mined while it was down included) and keeps it.
    let before = stable_rows(&net, &table, &[0, 1, 2]);
    net.stop_renter(0);
    net.mine(2);
    net.start_renter(0);
    let table = wait_listed(&net, 0, &[0, 1, 2]);
    assert_eq!(
        stable_rows(&net, &table, &[0, 1, 2]),
        before,
        "same table after a restart"
    );

    // A reorg that removes the third announcement's block (its transaction goes back to
    // the mempool and stays there: the replacement blocks are empty).
    let fork_height = net.node.rpc_ok("getblockheader", json!([third_block]))["height"]
        .as_u64()
        .unwrap();
    let old_tip = net.tip();
    net.invalidate(&third_block);
    while net.tip() <= old_tip {
        net.mine_empty();
    }
    assert!(net.tip() > fork_height);
    let table = net.farmers_when(0, "the reorg to drop farmer 2's bond", |t| {
        net.row(t, 2).is_none_or(|row| row["bond"].is_null())
    });
    if let Some(row) = net.row(&table, 2) {
        assert_eq!(score_of(row), 0.0, "no bond, no score: {row}");
    }
    assert_eq!(
        stable_rows(&net, &table, &[0, 1]),
        before[..2].to_vec(),
        "the others are untouched by the reorg"
    );
    // And it stays dropped across a crash and restart.
    net.kill_and_restart_renter(0);
    let table = net.farmers(0);
    assert!(
        net.row(&table, 2).is_none_or(|row| row["bond"].is_null()),
        "{table}"
    );
}

#[test]
fn market_open_auto_picks_the_highest_bond_and_says_why() {
    let net = MarketNet::start(&crs_dir(), &plain_farmers(3), &plain_renters(1));
    let lock = net.tip() as u32 + 1_000;
    for (i, bond) in [0.1, 0.3, 0.2].into_iter().enumerate() {
        net.announce_ok(i, bond, lock);
    }
    net.mine(1);
    let table = wait_listed(&net, 0, &[0, 1, 2]);
    let best = net.row(&table, 1).unwrap();
    for i in [0, 2] {
        let other = net.row(&table, i).unwrap();
        assert!(score_of(best) > score_of(other), "{best} vs {other}");
    }

    let file = net.file("in", &seeded_bytes(1701, 30_000));
    let reply = net.open_auto(0, &file).expect("dstore-open auto");
    let farmer = &reply["farmer"];
    assert_eq!(chosen(&reply), net.farmers[1].identity, "{reply}");
    assert_eq!(
        farmer["peer_url"],
        net.farmers[1].peer_url.as_str(),
        "{reply}"
    );
    assert!(
        close(farmer["score"].as_f64().unwrap(), score_of(best)),
        "{reply}"
    );
    let why = farmer["why"].as_str().unwrap_or_default();
    assert!(!why.is_empty(), "auto says why: {reply}");
    // The contract is stored with farmer 1, and only there.
    let id = contract_id_of(&reply);
    let stored = |i: usize| {
        let list = net.farmer(i).call_ok("dstore-list", json!([]));
        list.to_string().contains(&id)
    };
    assert!(stored(1), "farmer 1 stores {id}");
    assert!(!stored(0) && !stored(2), "nobody else does");
    let status = net.renter(0).call_ok("dstore-status", json!([id]));
    assert!(
        status.to_string().contains(&net.farmers[1].peer_url),
        "{status}"
    );
}

/// Blocks between audits and satoshis per audit (as in audit.rs).
const PERIOD: u32 = 8;
const AUDIT_AMOUNT_SAT: u64 = 20_000;

/// Mines one block at a time up to `height`; before the next block every tower has acted
/// on the last one and every salt release has the farmer's answer (audit.rs's `mine_to`).
fn mine_audited_to(net: &MarketNet, towers: &[&TowerProcess], id: &str, height: u64) {
    while net.tip() < height {
        net.mine(1);
        let tip = net.tip();
        for tower in towers {
            tower.wait_for_tip(tip);
            tower.wait_for_release_answers(id);
        }
    }
}

fn audit_claims(net: &MarketNet, farmer: usize, id: &str) -> usize {
    let status = net.farmer(farmer).call_ok("dstore-status", json!([id]));
    status["audits"]["claims"].as_array().map_or(0, Vec::len)
}

fn audit_outcomes(net: &MarketNet, r: usize, id: &str) -> Vec<String> {
    dstore_tests::market::audit_outcomes(&net.renter(r).call_ok("dstore-status", json!([id])))
}

/// The outcome counts of a row (what the chain says about the farmer).
fn record(row: &Value) -> [u64; 4] {
    [
        count(row, "audits_passed"),
        count(row, "audits_failed"),
        count(row, "downloads_served"),
        count(row, "downloads_refunded"),
    ]
}

#[test]
fn market_failed_audit_lowers_the_score_from_the_chain_alone() {
    // Farmer 0 (with its tower) gets an audited contract from renter 0 (whose tower holds
    // the salts); farmer 1 has the same bond and no record. Renter 1 never deals with
    // either and only reads the chain.
    let farmers = [
        FarmerSpec {
            tower: true,
            ..FarmerSpec::default()
        },
        FarmerSpec::default(),
    ];
    let renters = [
        RenterSpec {
            tower: Some(vec![]),
            ..RenterSpec::default()
        },
        RenterSpec::default(),
    ];
    let net = MarketNet::start(&crs_dir(), &farmers, &renters);
    let lock = net.tip() as u32 + 1_000;
    net.announce_ok(0, 0.2, lock);
    net.announce_ok(1, 0.2, lock);
    net.mine(1);
    let table = wait_listed(&net, 1, &[0, 1]);
    let fresh = score_of(net.row(&table, 1).unwrap());
    assert!(
        close(score_of(net.row(&table, 0).unwrap()), fresh),
        "{table}"
    );

    let file = net.file("in", &seeded_bytes(1703, 200_000));
    let audits = [
        json!(20_000),
        json!(3),
        json!(PERIOD),
        json!(AUDIT_AMOUNT_SAT),
    ];
    let id = net.open_with(0, 0, &file, &audits);
    let status = net.renter(0).call_ok("dstore-status", json!([id]));
    let heights: Vec<u64> = status["audits"]["heights"]
        .as_array()
        .unwrap_or_else(|| panic!("no audit heights in {status}"))
        .iter()
        .map(|h| h.as_u64().unwrap())
        .collect();
    let renter_tower = net.renters[0].tower.as_ref().expect("renter tower");
    let farmer_tower = net.farmers[0].member.tower.as_ref().expect("farmer tower");
    let towers = [farmer_tower, renter_tower];

    // Audit 0 passes: the farmer's claim is mined, and the chain alone shows it.
    mine_audited_to(&net, &towers, &id, heights[0] + 2);
    wait_until("audit 0's claim", MARKET_WAIT, || {
        (audit_claims(&net, 0, &id) >= 1).then_some(())
    });
    net.mine(1);
    let table = net.farmers_when(1, "farmer 0's passed audit", |t| {
        net.row(t, 0)
            .is_some_and(|row| count(row, "audits_passed") >= 1)
    });
    let passed = net.row(&table, 0).unwrap().clone();
    assert_eq!(count(&passed, "audits_failed"), 0, "{passed}");
    assert!(
        score_of(&passed) > fresh,
        "a passed audit raises the score: {passed}"
    );

    // Then farmer 0 loses the data: audits 1 and 2 fail and the renter's tower refunds.
    let blob = net
        .dir
        .path()
        .join("farmer0-storage/objects/blobs")
        .join(&id);
    let length = std::fs::metadata(&blob).expect("the farmer's blob").len();
    std::fs::write(&blob, vec![0u8; length as usize]).unwrap();
    mine_audited_to(&net, &towers, &id, heights[2] + 6);
    assert_eq!(
        audit_outcomes(&net, 0, &id),
        ["paid", "refunded", "refunded"]
    );
    net.mine(1);

    let failed = |t: &Value| {
        net.row(t, 0)
            .is_some_and(|row| count(row, "audits_failed") >= 1)
    };
    let bystander = net.farmers_when(1, "farmer 0's failed audit", failed);
    let party = net.farmers_when(0, "farmer 0's failed audit", failed);
    let (seen, own) = (net.row(&bystander, 0).unwrap(), net.row(&party, 0).unwrap());
    assert_eq!(
        record(seen),
        record(own),
        "the same record from the chain: {seen} {own}"
    );
    assert!(count(seen, "audits_passed") >= 1, "{seen}");
    assert!(
        score_of(seen) < score_of(&passed),
        "the failure costs score: {seen}"
    );
    assert!(
        score_of(seen) < fresh,
        "below an equal farmer with no record: {seen}"
    );
    assert!(close(score_of(seen), expected_score(&net, seen)), "{seen}");
    assert!(close(score_of(seen), score_of(own)), "{seen} {own}");
}

/// Drives renter `r`'s download of `id` to its end (as `Market::download` does).
fn download(net: &MarketNet, r: usize, id: &str, output: &Path) -> Result<Value, String> {
    let out = output.to_str().expect("utf-8 path");
    let call = || {
        net.renter(r)
            .call("dstore-download", json!([id, out]))
            .map_err(|e| e.message)
    };
    let first = call()?;
    finish_download(
        &net.node,
        first,
        || net.renter(r).call_ok("dstore-status", json!([id])),
        call,
    )
}

#[test]
fn market_fraud_proof_burns_the_farmer_on_every_renter() {
    let farmers = [
        FarmerSpec::default(),
        FarmerSpec::default(),
        FarmerSpec {
            fault: Some("seal-wrong-data"),
            ..FarmerSpec::default()
        },
    ];
    let mut net = MarketNet::start(&crs_dir(), &farmers, &plain_renters(2));
    let lock = net.tip() as u32 + 1_000;
    for (i, bond) in [0.1, 0.2, 0.5].into_iter().enumerate() {
        net.announce_ok(i, bond, lock);
    }
    net.mine(1);
    wait_listed(&net, 0, &[0, 1, 2]);
    wait_listed(&net, 1, &[0, 1, 2]);

    // Renter 0 catches farmer 2 sealing the wrong data.
    let file = net.file("in", &seeded_bytes(1704, 50_000));
    let id = net.open_with(0, 2, &file, &[]);
    let err = download(&net, 0, &id, &net.dir.path().join("out")).unwrap_err();
    assert!(err.contains("fraud proof saved to"), "{err}");
    let status = net.renter(0).call_ok("dstore-status", json!([id]));
    let proof = status["downloads"][0]["fraud_proof"]
        .as_str()
        .unwrap_or_else(|| panic!("no fraud proof in {status}"))
        .to_string();

    let published = net
        .renter(0)
        .call_ok("dstore-publish-fraud", json!([proof]));
    let evidence_id = published["id"].as_str().expect("evidence id").to_string();
    assert_eq!(
        published["farmer"],
        net.farmers[2].identity.as_str(),
        "{published}"
    );
    for farmer in &net.farmers {
        let urls = published["published"].to_string();
        assert!(
            urls.contains(&farmer.peer_url),
            "posted to {}: {published}",
            farmer.peer_url
        );
    }
    assert_eq!(published["failed"], json!([]), "{published}");

    // Every board has it; both renters mark farmer 2 burned (renter 1 from the boards).
    for farmer in &net.farmers {
        let url = format!("{}/dstore/v1/evidence", farmer.peer_url);
        let board: Value = reqwest::blocking::get(&url).unwrap().json().unwrap();
        assert!(board.to_string().contains(&evidence_id), "{url}: {board}");
    }
    for r in [0, 1] {
        let table = net.farmers_when(r, "farmer 2 burned", |t| {
            net.row(t, 2).is_some_and(|row| row["burned"] == true)
        });
        let row = net.row(&table, 2).unwrap();
        assert_eq!(score_of(row), 0.0, "renter {r}: {row}");
        assert!(row["evidence"].to_string().contains(&evidence_id), "{row}");
        for i in [0, 1] {
            assert_eq!(net.row(&table, i).unwrap()["burned"], false, "{table}");
        }
    }
    // The burn outlives a restart (the evidence is stored), and renter 1, which never
    // dealt with farmer 2, no longer picks its larger bond.
    net.restart_renter(1);
    let table = net.farmers(1);
    let row = net.row(&table, 2).expect("farmer 2 listed");
    assert_eq!(row["burned"], true, "after a restart: {row}");
    let file = net.file("in2", &seeded_bytes(1705, 20_000));
    let reply = net.open_auto(1, &file).expect("dstore-open auto");
    assert_eq!(chosen(&reply), net.farmers[1].identity, "{reply}");
}

#[test]
fn market_unbonded_or_withdrawn_farmer_is_not_chosen() {
    // Farmer 0 never announces; farmer 1 has the best bond but a short lock; farmer 2 a
    // small bond (below renter 1's minimum) locked long.
    let strict = RenterSpec {
        extra: vec![format!("--market-min-bond-sat={}", btc_to_sat(0.02))],
        ..RenterSpec::default()
    };
    let net = MarketNet::start(
        &crs_dir(),
        &plain_farmers(3),
        &[RenterSpec::default(), strict],
    );
    let short = net.tip() as u32 + 40;
    net.announce_ok(1, 0.5, short);
    net.announce_ok(2, 0.01, net.tip() as u32 + 1_000);
    net.mine(1);
    let table = wait_listed(&net, 0, &[1, 2]);
    assert!(
        net.row(&table, 0).is_none_or(|row| row["bond"].is_null()),
        "farmer 0 never bonded: {table}"
    );
    let best = score_of(net.row(&table, 1).unwrap());
    assert!(best > score_of(net.row(&table, 2).unwrap()), "{table}");
    let file = net.file("in", &seeded_bytes(1706, 20_000));
    let reply = net.open_auto(0, &file).expect("dstore-open auto");
    assert_eq!(chosen(&reply), net.farmers[1].identity, "{reply}");

    // Before L the bond cannot be spent: a clear error and nothing sent.
    let mempool = |net: &MarketNet| net.node.rpc_ok("getrawmempool", json!([]));
    let early = net.farmer(1).call("dstore-unbond", json!([])).unwrap_err();
    assert!(
        early.message.contains(&short.to_string()),
        "says when: {early}"
    );
    assert_eq!(mempool(&net), json!([]), "nothing sent before L");

    // After L farmer 1 withdraws; both renters stop choosing it.
    while net.tip() < u64::from(short) {
        net.mine(1);
    }
    let unbond = net.farmer(1).call_ok("dstore-unbond", json!([]));
    let txid = unbond["txid"]
        .as_str()
        .unwrap_or_else(|| panic!("no txid in {unbond}"));
    net.node.wait_for_tx(txid, MARKET_WAIT);
    net.mine(1);
    let withdrawn = |t: &Value| {
        net.row(t, 1)
            .is_none_or(|row| row["bond"].is_null() || row["score"].as_f64() == Some(0.0))
    };
    let table = net.farmers_when(0, "farmer 1's bond withdrawn", withdrawn);
    if let Some(row) = net.row(&table, 1) {
        assert_eq!(score_of(row), 0.0, "{row}");
    }
    let file = net.file("in2", &seeded_bytes(1707, 20_000));
    let reply = net.open_auto(0, &file).expect("dstore-open auto");
    assert_eq!(chosen(&reply), net.farmers[2].identity, "{reply}");

    // Renter 1 (minimum bond 0.02 BTC) has no candidate left: a clear error, no contract.
    net.farmers_when(1, "farmer 1's bond withdrawn", withdrawn);
    let err = net.open_auto(1, &file).unwrap_err();
    assert!(!err.message.is_empty(), "{err}");
    assert_eq!(net.renter(1).call_ok("dstore-list", json!([])), json!([]));
}

/// An OP_RETURN output carrying `payload`.
fn op_return(payload: &[u8]) -> TxOut {
    let push = PushBytesBuf::try_from(payload.to_vec()).expect("at most 80 bytes");
    TxOut {
        value: Amount::ZERO,
        script_pubkey: ScriptBuf::new_op_return(push),
    }
}

fn keypair(seed: u8) -> Keypair {
    Keypair::from_secret_key(SECP256K1, &SecretKey::from_slice(&[seed; 32]).unwrap())
}

/// An announcement of `identity` at `url` whose bond (output 0) is `bond`.
fn announcement_outputs(identity: XOnlyPublicKey, lock: u32, url: &str, bond: TxOut) -> Vec<TxOut> {
    let announcement = Announcement {
        identity,
        locktime: lock,
        bond_vout: 0,
        peer_url: url.to_string(),
    };
    let script = announcement.script().expect("announcement script");
    vec![
        bond,
        TxOut {
            value: Amount::ZERO,
            script_pubkey: script,
        },
    ]
}

fn real_bond(identity: &XOnlyPublicKey, lock: u32, sat: u64) -> TxOut {
    TxOut {
        value: Amount::from_sat(sat),
        script_pubkey: bond_script_pubkey(identity, lock).expect("bond script"),
    }
}

/// A fraud proof that looks like one against `farmer` but proves nothing: an honest
/// seal, with the receipt's farmer field swapped for the accused's key.
fn fake_fraud_proof(net: &MarketNet, farmer: &str) -> FraudProof {
    let mut rng = StdRng::seed_from_u64(1708);
    let parties = Parties::new(&net.node, &mut rng, 100, 10);
    let data = seeded_bytes(1709, 5_000);
    let (c, c_tree, mut receipt) = parties.upload(&data);
    let (transcript, e, e_tree) = parties.seal(&mut rng, &c);
    let length = dstore_protocol::merkle::segment_len(e.len() as u64, 0).unwrap();
    receipt.farmer = XOnlyPublicKey::from_str(farmer).expect("identity");
    FraudProof {
        receipt,
        transcript,
        segment_index: 0,
        sealed_segment: e[..length].to_vec(),
        sealed_proof: e_tree.proof(0).unwrap(),
        expected_leaf: c_tree.leaf(0).unwrap(),
        expected_proof: c_tree.proof(0).unwrap(),
        renter_secret: parties.r,
        tx2: parties.tx2_with_fresh_nonces(OutPoint::null()),
        tx2_input: 0,
    }
}

#[test]
fn market_forged_inputs_change_nothing() {
    let net = MarketNet::start(&crs_dir(), &plain_farmers(2), &plain_renters(1));
    let lock = net.tip() as u32 + 1_000;
    net.announce_ok(0, 0.1, lock);
    net.announce_ok(1, 0.2, lock);
    net.mine(1);
    let table = wait_listed(&net, 0, &[0, 1]);
    let before = stable_rows(&net, &table, &[0, 1]);
    let farmer0 = XOnlyPublicKey::from_str(&net.farmers[0].identity).unwrap();

    // 1. Farmer 0's identity with a 1 BTC "bond" that is not its bond script.
    let mismatch = TxOut {
        value: Amount::from_sat(100_000_000),
        script_pubkey: bond_script_pubkey(&keypair(31).x_only_public_key().0, lock).unwrap(),
    };
    net.forger.send(
        &net.node,
        announcement_outputs(farmer0, lock, "http://127.0.0.1:9/", mismatch),
    );
    // 2. The magic, then garbage.
    let mut garbage = b"DSA".to_vec();
    garbage.extend_from_slice(&[0xee; 40]);
    net.forger.send(&net.node, vec![op_return(&garbage)]);
    // 3. A real bond script, below the minimum (10,000 sat).
    let small = keypair(32).x_only_public_key().0;
    net.forger.send(
        &net.node,
        announcement_outputs(
            small,
            lock,
            "http://127.0.0.1:9/",
            real_bond(&small, lock, 5_000),
        ),
    );
    // 4. A valid, large bond whose URL serves an advert with a broken signature.
    let liar = keypair(33);
    let liar_id = liar.x_only_public_key().0;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let liar_url = format!("http://{}", listener.local_addr().unwrap());
    let mut advert = sign_advert(
        &liar,
        Advert {
            identity: liar_id,
            network: "regtest".into(),
            peer_url: liar_url.clone(),
            version: "0.1.0".into(),
            price_per_download_sat: TEST_PRICE_SAT,
            max_file_bytes: 80 << 20,
            free_bytes: 1 << 30,
            audits: true,
            min_claim_window_blocks: 6,
            issued_at: 1,
            lightning: None,
        },
    );
    advert.advert.price_per_download_sat = 1;
    let info = json!({
        "identity": liar_id.to_string(), "network": "regtest",
        "price_per_download_sat": 1, "max_file_bytes": 80u64 << 20,
        "advert": serde_json::to_value(&advert).unwrap(),
    });
    let fake = FakeEndpoint::serve(
        listener,
        HashMap::from([("/dstore/v1/info".to_string(), info)]),
    );
    net.forger.send(
        &net.node,
        announcement_outputs(
            liar_id,
            lock,
            &liar_url,
            real_bond(&liar_id, lock, btc_to_sat(0.5)),
        ),
    );
    net.mine(1);

    // Once the liar's advert was fetched twice (so the first answer was handled), nothing
    // changed but a row for the liar without a verified advert or URL.
    net.farmers_when(0, "the liar's advert fetched", |_| {
        fake.hits_of("/dstore/v1/info") >= 2
    });
    let table = net.farmers_when(0, "the liar's advert refused", |t| {
        row_of(t, &liar_id.to_string()).is_some_and(|row| !row["advert_error"].is_null())
    });
    assert_eq!(stable_rows(&net, &table, &[0, 1]), before, "{table}");
    assert!(
        row_of(&table, &small.to_string()).is_none(),
        "small bond ignored: {table}"
    );
    let liar_row = row_of(&table, &liar_id.to_string()).unwrap();
    assert!(liar_row["advert"].is_null(), "{liar_row}");
    assert!(
        liar_row["peer_url"].is_null(),
        "unverified URL unused: {liar_row}"
    );
    assert_eq!(identities(&table).len(), 3, "{table}");
    let file = net.file("in", &seeded_bytes(1710, 20_000));
    let reply = net.open_auto(0, &file).expect("dstore-open auto");
    assert_eq!(
        chosen(&reply),
        net.farmers[1].identity,
        "not the liar: {reply}"
    );

    // 5. Fake evidence: garbage and a proof that proves nothing, posted to a board and
    // published by the renter.
    let board = format!("{}/dstore/v1/evidence", net.farmers[0].peer_url);
    let http = reqwest::blocking::Client::new();
    let fake_proof = serde_json::to_vec(&fake_fraud_proof(&net, &net.farmers[0].identity)).unwrap();
    for body in [b"{not json".to_vec(), fake_proof.clone()] {
        let response = http.post(&board).body(body).send().expect("board answers");
        assert_eq!(
            response.status().as_u16(),
            400,
            "{}",
            response.text().unwrap_or_default()
        );
    }
    let listing: Value = http.get(&board).send().unwrap().json().unwrap();
    assert_eq!(listing, json!([]), "nothing stored");
    let path = net.file("fake-proof.json", &fake_proof);
    let err = net
        .renter(0)
        .call("dstore-publish-fraud", json!([path.to_str().unwrap()]))
        .unwrap_err();
    assert!(!err.message.is_empty(), "{err}");
    net.mine(1);
    let table = net.farmers(0);
    assert_eq!(stable_rows(&net, &table, &[0, 1]), before, "{table}");
    let burned: Vec<&Value> = table["farmers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["burned"] == true)
        .collect();
    assert!(burned.is_empty(), "nobody burned: {table}");
}

#[test]
fn market_gifted_bond_with_another_url_neither_redirects_nor_unlists_the_farmer() {
    // Anyone can pay a real bond to farmer 0's bond key and announce it with a URL of
    // their own; there they replay farmer 0's genuine signed advert (which names farmer
    // 0's real URL). The table must keep farmer 0 at its verified URL with its bond.
    let net = MarketNet::start(&crs_dir(), &plain_farmers(2), &plain_renters(1));
    let lock = net.tip() as u32 + 1_000;
    net.announce_ok(0, 0.2, lock);
    net.announce_ok(1, 0.1, lock);
    net.mine(1);
    let table = wait_listed(&net, 0, &[0, 1]);
    let before = stable_rows(&net, &table, &[0, 1]);
    let farmer0 = XOnlyPublicKey::from_str(&net.farmers[0].identity).unwrap();

    let info_url = format!("{}/dstore/v1/info", net.farmers[0].peer_url);
    let genuine: Value = reqwest::blocking::get(&info_url).unwrap().json().unwrap();
    assert!(!genuine["advert"].is_null(), "{genuine}");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let replay_url = format!("http://{}", listener.local_addr().unwrap());
    let replay = FakeEndpoint::serve(
        listener,
        HashMap::from([("/dstore/v1/info".to_string(), genuine)]),
    );
    // The gift is smaller than farmer 0's own bond, so its largest bond stays the same.
    let gift = real_bond(&farmer0, lock, btc_to_sat(0.05));
    net.forger.send(
        &net.node,
        announcement_outputs(farmer0, lock, &replay_url, gift),
    );
    net.mine(1);

    net.farmers_when(0, "the gifted announcement's URL fetched", |_| {
        replay.hits_of("/dstore/v1/info") >= 2
    });
    let table = net.farmers(0);
    assert_eq!(
        stable_rows(&net, &table, &[0, 1]),
        before,
        "farmer 0 keeps its verified URL and bond: {table}"
    );
    let file = net.file("in", &seeded_bytes(1711, 20_000));
    let reply = net.open_auto(0, &file).expect("dstore-open auto");
    assert_eq!(chosen(&reply), net.farmers[0].identity, "{reply}");
    assert_eq!(
        reply["farmer"]["peer_url"],
        net.farmers[0].peer_url.as_str()
    );
}

#[test]
fn market_reannouncement_with_a_new_url_and_a_bigger_bond_supersedes() {
    let mut net = MarketNet::start(&crs_dir(), &plain_farmers(2), &plain_renters(1));
    let lock = net.tip() as u32 + 1_000;
    let first = net.announce_ok(0, 0.1, lock);
    net.announce_ok(1, 0.2, lock);
    net.mine(1);
    let table = wait_listed(&net, 0, &[0, 1]);
    let old_url = net.farmers[0].peer_url.clone();
    assert_eq!(net.row(&table, 0).unwrap()["peer_url"], old_url.as_str());
    let file = net.file("in", &seeded_bytes(1712, 20_000));
    let reply = net.open_auto(0, &file).expect("dstore-open auto");
    assert_eq!(chosen(&reply), net.farmers[1].identity, "{reply}");

    // Farmer 0 moves to a new endpoint and announces it with a bigger bond.
    let new_url = net.move_farmer(0);
    assert_ne!(new_url, old_url);
    let second = net.announce_ok(0, 0.3, lock + 20);
    net.mine(1);
    let table = net.farmers_when(0, "farmer 0 at its new URL", |t| {
        net.row(t, 0)
            .is_some_and(|row| row["peer_url"] == new_url.as_str() && !row["advert"].is_null())
    });
    let row = net.row(&table, 0).unwrap();
    check_bond(&net, &table, 0, &second, 0.3);
    assert_ne!(row["bond"]["outpoint"], first["bond_outpoint"], "{row}");
    assert_eq!(identities(&table)[0], net.farmers[0].identity, "{table}");
    let reply = net.open_auto(0, &file).expect("dstore-open auto");
    assert_eq!(chosen(&reply), net.farmers[0].identity, "{reply}");
    assert_eq!(reply["farmer"]["peer_url"], new_url.as_str(), "{reply}");
}
