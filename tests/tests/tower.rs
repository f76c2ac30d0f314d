//! dstore-watchtower against a real regtest bitcoind and real ZMQ: key extraction from a
//! TX2 in the mempool, catching up after missed notifications, reorgs, kill -9 at random
//! points of a contract's life, and hostile input on every interface.

use std::time::{Duration, Instant};

use bitcoin::consensus::encode::serialize_hex;
use bitcoin::{OutPoint, Transaction};
use dstore_protocol::watch::{ExtractSpec, Presigned, Registration, WatchRole};
use dstore_tests::funding::{broadcast, Funder};
use dstore_tests::parties::{Parties, REFUND_FEE, TX2_FEE};
use dstore_tests::tower::dstore_watchtower;
use dstore_tests::{ports, wait_until, BitcoinNode, TowerProcess};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::{json, Value};

/// One funded download contract and every transaction of its life (also the fixture of
/// `tower_scale`).
pub(crate) struct Contract {
    pub(crate) parties: Parties,
    pub(crate) id: [u8; 32],
    pub(crate) tx1_outpoint: OutPoint,
    pub(crate) tx2: Transaction,
    pub(crate) tx3: Transaction,
    pub(crate) tx1_refund: Transaction,
    pub(crate) tx2_refund: Transaction,
}

impl Contract {
    /// A contract whose TX1 is confirmed, TX1's refund opens `t1_ahead` blocks above the
    /// tip and TX2's Δ blocks after TX2 confirms.
    fn new(
        node: &BitcoinNode,
        funder: &mut Funder,
        rng: &mut StdRng,
        t1_ahead: u32,
        delta: u16,
    ) -> Self {
        let parties = Parties::new(node, rng, t1_ahead, delta);
        let (_, tx1_outpoint) = funder.fund(node, parties.contract.tx1_output().unwrap());
        Self::on_tx1(parties, rng, tx1_outpoint)
    }

    /// The contract of `parties` whose TX1 output is `tx1_outpoint`.
    pub(crate) fn on_tx1(parties: Parties, rng: &mut StdRng, tx1_outpoint: OutPoint) -> Self {
        let c = &parties.contract;
        let template = parties.tx2(rng, tx1_outpoint);
        let tx3 = parties.tx3(&template.digest);
        let destination = parties.renter_refund_destination();
        let tx1_refund = c
            .tx1_refund(tx1_outpoint, &parties.r, &destination, REFUND_FEE)
            .unwrap();
        let tx2_outpoint = OutPoint {
            txid: template.txid,
            vout: 0,
        };
        let value = c.tx2_value(TX2_FEE).unwrap();
        let tx2_refund = c
            .tx2_refund(tx2_outpoint, value, &parties.r2, &destination, REFUND_FEE)
            .unwrap();
        let mut id = [0u8; 32];
        rng.fill_bytes(&mut id);
        Contract {
            parties,
            id,
            tx1_outpoint,
            tx2: template.tx,
            tx3,
            tx1_refund,
            tx2_refund,
        }
    }

    pub(crate) fn id_hex(&self) -> String {
        hex::encode(self.id)
    }

    /// What the renter's plugin registers: extract f from TX1's spend; refund TX1 after
    /// T1 and TX2's output after Δ.
    fn renter_registration(&self) -> Value {
        self.renter_registration_from(None)
    }

    /// The renter's registration, looking back from `rescan_from_height` if given.
    pub(crate) fn renter_registration_from(&self, rescan_from_height: Option<u32>) -> Value {
        let c = &self.parties.contract;
        serde_json::to_value(Registration {
            id: self.id,
            role: WatchRole::Renter,
            extract: Some(ExtractSpec {
                tx1_outpoint: self.tx1_outpoint,
                farmer_key: c.farmer_key,
                contract_id: c.contract_id,
                tx1_script_pubkey: c.tx1_script_pubkey().unwrap(),
            }),
            transactions: vec![
                presigned("tx1-refund", &self.tx1_refund),
                presigned("tx2-refund", &self.tx2_refund),
            ],
            watch_txids: vec![self.tx2.compute_txid()],
            rescan_from_height,
            auditor: None,
        })
        .unwrap()
    }

    /// What the farmer's plugin registers: make sure TX2 and TX3 land.
    fn farmer_registration(&self, id: [u8; 32], rescan_from_height: Option<u32>) -> Value {
        serde_json::to_value(Registration {
            id,
            role: WatchRole::Farmer,
            extract: None,
            transactions: vec![presigned("tx2", &self.tx2), presigned("tx3", &self.tx3)],
            watch_txids: vec![],
            rescan_from_height,
            auditor: None,
        })
        .unwrap()
    }

    fn f_hex(&self) -> String {
        hex::encode(self.parties.f.secret_bytes())
    }
}

fn presigned(name: &str, tx: &Transaction) -> Presigned {
    Presigned::new(name, tx.clone())
}

/// A fresh seed for the kill points each run, printed so that a failure can be replayed
/// with `DSTORE_KILL_SEED=<seed>`.
fn kill_seed() -> u64 {
    let seed = std::env::var("DSTORE_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("kill points drawn with DSTORE_KILL_SEED={seed}");
    seed
}

fn setup(seed: u64, coins: u32) -> (StdRng, BitcoinNode, Funder) {
    let rng = StdRng::seed_from_u64(seed);
    let node = BitcoinNode::start();
    let funder = Funder::new(&node, coins);
    (rng, node, funder)
}

fn key_of(tower: &TowerProcess, id: &str) -> Option<String> {
    tower.status(id)["key"]["secret"]
        .as_str()
        .map(str::to_string)
}

fn wait_for_key(tower: &TowerProcess, contract: &Contract) {
    let key = wait_until("the tower's extracted key", Duration::from_secs(60), || {
        key_of(tower, &contract.id_hex())
    });
    assert_eq!(key, contract.f_hex(), "the tower extracted the farmer's f");
}

fn tx_state(tower: &TowerProcess, id: &str, name: &str) -> Value {
    let status = tower.status(id);
    status["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .clone()
}

fn in_mempool(node: &BitcoinNode, tx: &Transaction) -> bool {
    node.rpc("getmempoolentry", json!([tx.compute_txid().to_string()]))
        .is_ok()
}

/// Mines one block at a time until `tx` is confirmed (the tower broadcasts it when due).
fn mine_until_confirmed(
    node: &BitcoinNode,
    tower: &TowerProcess,
    tx: &Transaction,
    max_blocks: u32,
) {
    let txid = tx.compute_txid().to_string();
    for _ in 0..max_blocks {
        if node
            .rpc("getrawtransaction", json!([txid, true]))
            .ok()
            .and_then(|t| t["confirmations"].as_u64())
            .unwrap_or(0)
            > 0
        {
            return;
        }
        if in_mempool(node, tx) {
            node.mine(1);
            continue;
        }
        node.mine(1);
        // The tower reports a tip only after acting on it (it holds its state's lock from
        // connecting the block to broadcasting what became due there).
        tower.wait_for_tip(node.block_count());
    }
    panic!("{txid} was not confirmed within {max_blocks} blocks");
}

#[test]
fn tower_extracts_the_key_from_tx2_in_the_mempool() {
    let (mut rng, node, mut funder) = setup(601, 2);
    let contract = Contract::new(&node, &mut funder, &mut rng, 100, 10);
    let tower = TowerProcess::start(&node);
    let reply = tower.call_ok("tower-register", json!([contract.renter_registration()]));
    assert_eq!(reply["result"], "registered");
    // Registering again is idempotent.
    let again = tower.call_ok("tower-register", json!([contract.renter_registration()]));
    assert_eq!(again["result"], "unchanged");
    assert!(key_of(&tower, &contract.id_hex()).is_none());

    broadcast(&node, &contract.tx2).expect("TX2 accepted");
    let sent = Instant::now();
    let key = wait_until("key", Duration::from_secs(30), || {
        key_of(&tower, &contract.id_hex())
    });
    let latency = sent.elapsed();
    eprintln!("tower_tx2_to_key_ms: {:.1}", latency.as_secs_f64() * 1e3);
    assert_eq!(key, contract.f_hex());
    let status = tower.status(&contract.id_hex());
    assert_eq!(
        status["key"]["tx2_txid"],
        contract.tx2.compute_txid().to_string()
    );
    // The key is stored: it survives a kill -9.
    let mut tower = tower;
    tower.kill9();
    tower.restart();
    assert_eq!(
        key_of(&tower, &contract.id_hex()).as_deref(),
        Some(contract.f_hex().as_str())
    );
}

#[test]
fn tower_catches_up_after_missed_notifications() {
    let (mut rng, node, mut funder) = setup(602, 2);
    let contract = Contract::new(&node, &mut funder, &mut rng, 200, 5);
    let mut tower = TowerProcess::start(&node);
    tower.call_ok("tower-register", json!([contract.renter_registration()]));
    tower.kill9();
    // While the tower is down: TX2 confirms and 10 blocks pass (Δ = 5: its refund is due).
    broadcast(&node, &contract.tx2).unwrap();
    node.mine(11);
    tower.restart();
    wait_for_key(&tower, &contract);
    tower.wait_for_tip(node.block_count());
    wait_until(
        "the TX2 refund in the mempool",
        Duration::from_secs(30),
        || in_mempool(&node, &contract.tx2_refund).then_some(()),
    );
    node.mine(1);
    let txid = contract.tx2_refund.compute_txid().to_string();
    assert_eq!(node.confirmations(&txid), 1);
    tower.wait_for_tip(node.block_count());
    let state = tx_state(&tower, &contract.id_hex(), "tx2-refund");
    assert_eq!(state["status"]["state"], "confirmed", "{state}");
    let tx1_refund = tx_state(&tower, &contract.id_hex(), "tx1-refund");
    assert_eq!(tx1_refund["status"]["state"], "superseded", "{tx1_refund}");
}

#[test]
fn tower_back_from_an_outage_acts_on_every_due_contract_a_batch_at_a_time() {
    let (mut rng, node, mut funder) = setup(612, 6);
    let contracts: Vec<Contract> = (0..3)
        .map(|_| Contract::new(&node, &mut funder, &mut rng, 200, 5))
        .collect();
    // One due contract loaded at a time: each batch's watches leave memory before the next.
    // No periodic reconcile: the one at start-up must act on every batch by itself.
    let mut tower = TowerProcess::start_with(&node, &["--act-batch=1", "--poll-seconds=3600"]);
    for contract in &contracts {
        tower.call_ok("tower-register", json!([contract.renter_registration()]));
    }
    tower.kill9();
    // While the tower is down: every TX2 confirms and their refunds fall due together.
    for contract in &contracts {
        broadcast(&node, &contract.tx2).unwrap();
    }
    node.mine(11);
    tower.restart();
    tower.wait_for_tip(node.block_count());
    wait_until(
        "every TX2 refund in the mempool",
        Duration::from_secs(60),
        || {
            let all = contracts.iter().all(|c| in_mempool(&node, &c.tx2_refund));
            all.then_some(())
        },
    );
    node.mine(1);
    tower.wait_for_tip(node.block_count());
    for contract in &contracts {
        wait_for_key(&tower, contract);
        let state = tx_state(&tower, &contract.id_hex(), "tx2-refund");
        assert_eq!(state["status"]["state"], "confirmed", "{state}");
    }
}

/// Reorgs TX2's block out at `depth`, replaces the chain with empty blocks, then lets TX2
/// be mined again and its refund fall due.
fn reorg_out_tx2(seed: u64, depth: u32) {
    let (mut rng, node, mut funder) = setup(seed, 2);
    let contract = Contract::new(&node, &mut funder, &mut rng, 300, 8);
    let tower = TowerProcess::start_with(&node, &["--poll-seconds=1"]);
    tower.call_ok("tower-register", json!([contract.renter_registration()]));
    broadcast(&node, &contract.tx2).unwrap();
    let tx2_block = node.mine(1)[0].clone();
    node.mine(depth - 1);
    tower.wait_for_tip(node.block_count());
    wait_for_key(&tower, &contract);
    let tx2_txid = contract.tx2.compute_txid().to_string();
    let seen_height = |tower: &TowerProcess| -> Value {
        let status = tower.status(&contract.id_hex());
        status["seen"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["txid"] == tx2_txid.as_str())
            .map(|s| s["height"].clone())
            .unwrap_or(Value::Null)
    };
    let first_height = seen_height(&tower);
    assert!(first_height.is_u64(), "TX2 confirmed for the tower");

    node.rpc_ok("invalidateblock", json!([tx2_block]));
    let address = BitcoinNode::burn_address().to_string();
    for _ in 0..=depth {
        node.rpc_ok("generateblock", json!([address, []]));
    }
    let best = node.rpc_ok("getbestblockhash", json!([]));
    wait_until(
        "the tower on the new chain",
        Duration::from_secs(60),
        || {
            let info = tower.call("tower-getinfo", json!([])).ok()?;
            (info["tip_hash"] == best).then_some(())
        },
    );
    assert_eq!(seen_height(&tower), Value::Null, "TX2 is unconfirmed again");
    assert_eq!(
        key_of(&tower, &contract.id_hex()).as_deref(),
        Some(contract.f_hex().as_str()),
        "the key stays"
    );
    let refund = tx_state(&tower, &contract.id_hex(), "tx2-refund");
    assert_eq!(refund["status"]["state"], "waiting", "{refund}");

    // TX2 comes back from the mempool into a block; the refund then falls due Δ later.
    node.mine(1);
    tower.wait_for_tip(node.block_count());
    assert!(seen_height(&tower).is_u64());
    mine_until_confirmed(&node, &tower, &contract.tx2_refund, 20);
}

#[test]
fn tower_keeps_the_key_through_a_depth_1_reorg() {
    reorg_out_tx2(603, 1);
}

#[test]
fn tower_keeps_the_key_through_a_depth_6_reorg() {
    reorg_out_tx2(604, 6);
}

#[test]
fn tower_rebroadcasts_a_reorged_out_refund() {
    let (mut rng, mut node, mut funder) = setup(605, 2);
    let contract = Contract::new(&node, &mut funder, &mut rng, 3, 8);
    let tower = TowerProcess::start_with(&node, &["--poll-seconds=1"]);
    tower.call_ok("tower-register", json!([contract.renter_registration()]));
    // T1 passes: the tower broadcasts the TX1 refund; it confirms.
    mine_until_confirmed(&node, &tower, &contract.tx1_refund, 10);
    let txid = contract.tx1_refund.compute_txid().to_string();
    let block = node.rpc_ok("getrawtransaction", json!([txid, true]))["blockhash"].clone();
    // The block is reorged out and the refund vanishes from every mempool.
    node.rpc_ok("invalidateblock", json!([block]));
    node.pause();
    let _ = std::fs::remove_file(node.datadir().join("regtest").join("mempool.dat"));
    node.resume();
    assert!(!in_mempool(&node, &contract.tx1_refund));
    let address = BitcoinNode::burn_address().to_string();
    node.rpc_ok("generateblock", json!([address, []]));
    node.rpc_ok("generateblock", json!([address, []]));
    wait_until("the refund rebroadcast", Duration::from_secs(60), || {
        in_mempool(&node, &contract.tx1_refund).then_some(())
    });
    node.mine(1);
    assert_eq!(node.confirmations(&txid), 1);
}

/// One step of a contract's life, acted out against the tower.
type Step<'a> = Box<dyn Fn(&TowerProcess) + 'a>;

#[test]
fn tower_survives_kill_9_at_20_random_points() {
    let (mut rng, node, mut funder) = setup(kill_seed(), 4);
    // A: TX2 appears, TX3 never does: the TX2 refund after Δ. B: no TX2: the TX1 refund
    // after T1. C: the farmer's side: TX2 and TX3 must land.
    let a = Contract::new(&node, &mut funder, &mut rng, 400, 4);
    let b = Contract::new(&node, &mut funder, &mut rng, 12, 4);
    let c = Contract::new(&node, &mut funder, &mut rng, 400, 4);
    let c_id = [0xcc; 32];
    let mut tower = TowerProcess::start_with(&node, &["--poll-seconds=1"]);
    let mut steps: Vec<Step> = vec![
        Box::new(|t: &TowerProcess| {
            t.call_ok("tower-register", json!([a.renter_registration()]));
        }),
        Box::new(|t: &TowerProcess| {
            t.call_ok("tower-register", json!([b.renter_registration()]));
        }),
        Box::new(|t: &TowerProcess| {
            t.call_ok("tower-register", json!([c.farmer_registration(c_id, None)]));
        }),
        Box::new(|_: &TowerProcess| {
            broadcast(&node, &a.tx2).unwrap();
        }),
    ];
    for _ in 0..22 {
        steps.push(Box::new(|_: &TowerProcess| {
            node.mine(1);
        }));
    }
    let mut kill_points: Vec<usize> = (0..steps.len()).collect();
    while kill_points.len() > 20 {
        kill_points.remove(rng.gen_range(0..kill_points.len()));
    }
    for (i, step) in steps.iter().enumerate() {
        step(&tower);
        if kill_points.contains(&i) {
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..300)));
            tower.kill9();
            tower.restart();
        }
    }
    tower.wait_for_tip(node.block_count());
    wait_for_key(&tower, &a);
    for tx in [&a.tx2_refund, &b.tx1_refund, &c.tx2, &c.tx3] {
        mine_until_confirmed(&node, &tower, tx, 10);
    }
    // Nothing bitcoind refused as a conflict of our own making.
    for (id, names) in [
        (a.id_hex(), ["tx1-refund", "tx2-refund"]),
        (b.id_hex(), ["tx1-refund", "tx2-refund"]),
        (hex::encode(c_id), ["tx2", "tx3"]),
    ] {
        for name in names {
            let state = tx_state(&tower, &id, name);
            let error = state["last_error"].as_str().unwrap_or("");
            assert!(!error.contains("conflict"), "{name}: {state}");
        }
    }
}

/// Raw HTTP POST to the tower: (status, body).
fn post(tower: &TowerProcess, auth: Option<&str>, body: &str) -> (u16, Value) {
    let client = reqwest::blocking::Client::new();
    let mut request = client.post(tower.rpc_url()).body(body.to_string());
    if let Some(credentials) = auth {
        request = request.basic_auth(
            credentials.split(':').next().unwrap(),
            credentials.split_once(':').map(|(_, p)| p.trim()),
        );
    }
    let response = request.send().expect("tower answers");
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

#[test]
fn tower_rejects_bad_rpc_and_keeps_running() {
    let (_, node, _) = setup(607, 1);
    let mut tower = TowerProcess::start(&node);
    let credentials = tower.credentials();
    assert_eq!(post(&tower, None, "{}").0, 401);
    assert_eq!(post(&tower, Some("__cookie__:wrong"), "{}").0, 401);
    let auth = Some(credentials.as_str());
    let code = |body: &str| post(&tower, auth, body).1["error"]["code"].as_i64();
    assert_eq!(code("this is not json"), Some(-32700));
    assert_eq!(code(r#"{"method": 5}"#), Some(-32600));
    assert_eq!(
        code(r#"{"method": "tower-nothing", "params": []}"#),
        Some(-32601)
    );
    assert_eq!(
        code(r#"{"method": "tower-register", "params": [1, 2]}"#),
        Some(-32602)
    );
    assert_eq!(
        code(r#"{"method": "tower-register", "params": [{"id": "zz", "role": "renter"}]}"#),
        Some(-8)
    );
    assert_eq!(
        code(
            r#"{"method": "tower-register", "params": [{"id": "00", "role": "renter", "watch_txids": []}]}"#
        ),
        Some(-8)
    );
    assert_eq!(
        code(r#"{"method": "tower-status", "params": [7]}"#),
        Some(-3)
    );
    let unknown = format!(
        r#"{{"method": "tower-status", "params": ["{}"]}}"#,
        "ab".repeat(32)
    );
    assert_eq!(code(&unknown), Some(-8));
    let forget = format!(
        r#"{{"method": "tower-forget", "params": ["{}"]}}"#,
        "ab".repeat(32)
    );
    assert_eq!(code(&forget), Some(-8));
    let huge = format!(
        r#"{{"method": "tower-list", "params": ["{}"]}}"#,
        "x".repeat(2 << 20)
    );
    assert_ne!(post(&tower, auth, &huge).0, 200);
    assert!(tower.running());
    assert_eq!(tower.call_ok("tower-list", json!([])), json!([]));
}

#[test]
fn tower_ignores_malformed_zmq_and_survives_bitcoind_restarts() {
    let (mut rng, mut node, mut funder) = setup(608, 2);
    let contract = Contract::new(&node, &mut funder, &mut rng, 100, 10);
    // A hostile publisher stands in for bitcoind's rawtx endpoint.
    let port = ports::free_ports(2);
    let fake = format!("tcp://127.0.0.1:{}", port[0]);
    let context = zmq::Context::new();
    let publisher = context.socket(zmq::PUB).unwrap();
    publisher.bind(&fake).unwrap();
    let metrics = format!("127.0.0.1:{}", port[1]);
    let mut tower = TowerProcess::start_with(
        &node,
        &[
            &format!("--zmq-rawtx={fake}"),
            &format!("--metrics-bind={metrics}"),
            "--poll-seconds=1",
        ],
    );
    tower.call_ok("tower-register", json!([contract.renter_registration()]));
    let seq = |n: u32| n.to_le_bytes().to_vec();
    let bad: Vec<Vec<Vec<u8>>> = vec![
        vec![b"rawtx".to_vec()],
        vec![b"rawtx".to_vec(), vec![1; 40]],
        vec![b"rawtx".to_vec(), vec![1; 40], vec![0; 3]],
        vec![b"rawtx".to_vec(), vec![0xff; 100], seq(1)],
        vec![b"rawtx".to_vec(), vec![], seq(2)],
        vec![b"rawblock".to_vec(), vec![0; 10], seq(3)],
        vec![b"sequence".to_vec(), vec![0; 5], seq(4)],
        // Not a subscribed topic: ZMQ itself drops it before the tower sees it.
        vec![b"hashtx".to_vec(), vec![0; 32], seq(5)],
        vec![
            b"rawtx".to_vec(),
            serialize_hex(&contract.tx3).into_bytes(),
            seq(6),
            vec![1],
        ],
    ];
    let metric = |name: &str| -> Option<u64> {
        let text = reqwest::blocking::get(format!("http://{metrics}/metrics"))
            .ok()?
            .text()
            .ok()?;
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    // A ZMQ subscriber joins late (the slow-joiner problem): what is published before its
    // subscription has propagated is dropped. So the batch is sent again until the tower
    // has counted at least one whole batch.
    wait_until(
        "malformed ZMQ messages counted",
        Duration::from_secs(30),
        || {
            for parts in &bad {
                publisher.send_multipart(parts.iter(), 0).unwrap();
            }
            (metric("dstore_tower_zmq_malformed_total")? >= bad.len() as u64 - 1).then_some(())
        },
    );
    assert!(tower.running());

    // bitcoind goes away: the tower keeps answering, then follows it when it is back.
    let failures = metric("dstore_tower_reconcile_failures_total").unwrap_or(0);
    node.pause();
    wait_until(
        "the tower to notice that bitcoind is gone",
        Duration::from_secs(60),
        || (metric("dstore_tower_reconcile_failures_total")? > failures).then_some(()),
    );
    assert!(tower.running());
    assert_eq!(
        tower.call_ok("tower-list", json!([]))[0]["id"],
        contract.id_hex()
    );
    node.resume();
    broadcast(&node, &contract.tx2).unwrap();
    node.mine(1);
    // rawtx comes from the fake publisher, so the key comes from the block.
    wait_for_key(&tower, &contract);
    tower.wait_for_tip(node.block_count());
    let _ = tower.stop();
}

#[test]
fn tower_refuses_to_run_during_initial_block_download() {
    let node = BitcoinNode::start(); // a fresh regtest chain is in IBD until a block is mined
    let datadir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(dstore_watchtower())
        .arg(format!("--datadir={}", datadir.path().display()))
        .arg("--network=regtest")
        .arg(format!("--bitcoind-rpc-url={}", node.rpc_url()))
        .arg(format!(
            "--bitcoind-cookie={}",
            node.cookie_path().display()
        ))
        .arg(format!("--zmq-rawtx={}", node.zmq_rawtx))
        .arg(format!("--rpc-port={}", ports::free_ports(1)[0]))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("initial block download"), "{stderr}");
}

#[test]
fn tower_race_between_tx3_and_the_tx2_refund_ends_either_way() {
    let (mut rng, node, mut funder) = setup(609, 3);
    let farmer_wins = Contract::new(&node, &mut funder, &mut rng, 400, 4);
    let renter_wins = Contract::new(&node, &mut funder, &mut rng, 400, 4);
    let renter_tower = TowerProcess::start_with(&node, &["--poll-seconds=1"]);
    let mut farmer_tower = TowerProcess::start_with(&node, &["--poll-seconds=1"]);
    let farmer_id = |c: &Contract| {
        let mut id = c.id;
        id[0] ^= 0xff;
        id
    };
    for c in [&farmer_wins, &renter_wins] {
        renter_tower.call_ok("tower-register", json!([c.renter_registration()]));
    }
    // The farmer's tower pushes TX2 and TX3 at once: TX3 confirms before Δ.
    farmer_tower.call_ok(
        "tower-register",
        json!([farmer_wins.farmer_registration(farmer_id(&farmer_wins), None)]),
    );
    mine_until_confirmed(&node, &farmer_tower, &farmer_wins.tx3, 5);
    // The other contract's TX2 confirms but its farmer's tower is down until after Δ.
    farmer_tower.kill9();
    let before_tx2 = node.block_count() as u32;
    broadcast(&node, &renter_wins.tx2).unwrap();
    mine_until_confirmed(&node, &renter_tower, &renter_wins.tx2_refund, 10);
    farmer_tower.restart();
    // It registers late, asking the tower to look back to before TX2.
    farmer_tower.call_ok(
        "tower-register",
        json!([renter_wins.farmer_registration(farmer_id(&renter_wins), Some(before_tx2))]),
    );
    node.mine(6);
    renter_tower.wait_for_tip(node.block_count());
    farmer_tower.wait_for_tip(node.block_count());

    // Whoever won, both towers agree and neither keeps fighting.
    let renter_refund = tx_state(&renter_tower, &farmer_wins.id_hex(), "tx2-refund");
    assert_eq!(
        renter_refund["status"]["state"], "superseded",
        "{renter_refund}"
    );
    assert_eq!(renter_refund["broadcasts"], 0, "the refund was never due");
    let tx3 = tx_state(&farmer_tower, &hex::encode(farmer_id(&farmer_wins)), "tx3");
    assert_eq!(tx3["status"]["state"], "buried", "{tx3}");
    let lost = tx_state(&farmer_tower, &hex::encode(farmer_id(&renter_wins)), "tx3");
    assert_eq!(lost["status"]["state"], "superseded", "{lost}");
    assert_eq!(
        lost["status"]["by"],
        renter_wins.tx2_refund.compute_txid().to_string()
    );
    let won = tx_state(&renter_tower, &renter_wins.id_hex(), "tx2-refund");
    assert_eq!(won["status"]["state"], "buried", "{won}");
    wait_for_key(&renter_tower, &farmer_wins);
    wait_for_key(&renter_tower, &renter_wins);
}

#[test]
fn tower_bumps_a_stuck_transaction_by_cpfp() {
    let (_, node, mut funder) = setup(610, 1);
    let tower = TowerProcess::start_with(&node, &["--poll-seconds=1"]);
    let info = tower.call_ok("tower-getinfo", json!([]));
    let address: bitcoin::Address<bitcoin::address::NetworkUnchecked> =
        info["wallet_address"].as_str().unwrap().parse().unwrap();
    let own_script = address.assume_checked().script_pubkey();
    // A pre-signed transaction with an output paying the tower's key: CPFP-able.
    let claim = funder.build(bitcoin::TxOut {
        value: bitcoin::Amount::from_sat(100_000),
        script_pubkey: own_script,
    });
    let registration = serde_json::to_value(Registration {
        id: [0x77; 32],
        role: WatchRole::Farmer,
        extract: None,
        transactions: vec![presigned("claim", &claim)],
        watch_txids: vec![],
        rescan_from_height: None,
        auditor: None,
    })
    .unwrap();
    tower.call_ok("tower-register", json!([registration]));
    let txid = claim.compute_txid().to_string();
    wait_until("the claim in the mempool", Duration::from_secs(30), || {
        in_mempool(&node, &claim).then_some(())
    });
    // Miners ignore it (its fee counts as zero for them): it is stuck.
    node.rpc_ok("prioritisetransaction", json!([txid, 0, -1000]));
    for _ in 0..3 {
        node.mine(1);
        tower.wait_for_tip(node.block_count());
    }
    assert_eq!(node.confirmations(&txid), 0, "stuck");
    let child = wait_until("a CPFP child", Duration::from_secs(30), || {
        let state = tx_state(&tower, &hex::encode([0x77; 32]), "claim");
        state["last_bump_txid"].as_str().map(str::to_string)
    });
    node.wait_for_tx(&child, Duration::from_secs(30));
    node.mine(1);
    assert_eq!(
        node.confirmations(&txid),
        1,
        "the child carried the claim into a block"
    );
    assert_eq!(node.confirmations(&child), 1);
}
