//! The farmer's side of the market (issue 17): `dstore-announce` puts the fidelity bond and
//! the announcement on the chain, `dstore-unbond` spends the bond only after its locktime,
//! `/dstore/v1/info` carries a signed advert, and the evidence board takes only verified
//! fraud proofs, once each, within its size and rate limits. Real bitcoind, real plugins.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bitcoin::secp256k1::XOnlyPublicKey;
use bitcoin::{consensus, Transaction};
use dstore_protocol::market::advert::SignedAdvert;
use dstore_protocol::market::announce::{parse_announcement, Announcement};
use dstore_protocol::market::bond::bond_script_pubkey;
use dstore_protocol::market::evidence::{check_evidence, MAX_EVIDENCE_BYTES};
use dstore_tests::market::{Faults, Market};
use dstore_tests::parties::seeded_bytes;
use dstore_tests::{ports, wait_until, BitcoinNode, PluginProcess};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

fn crs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-crs")
}

/// Gives the farmer's wallet one mature coinbase.
fn fund_farmer(m: &Market) {
    let address = m.farmer().call_ok("dstore-getnewaddress", json!([]));
    m.node.mine_to(1, address.as_str().unwrap());
    m.node.mine(100);
}

fn mempool(node: &BitcoinNode) -> Vec<Value> {
    node.rpc_ok("getrawmempool", json!([]))
        .as_array()
        .unwrap()
        .clone()
}

fn raw_tx(node: &BitcoinNode, txid: &str) -> Transaction {
    let hex = node.rpc_ok("getrawtransaction", json!([txid]));
    consensus::encode::deserialize_hex(hex.as_str().unwrap()).unwrap()
}

fn info(peer_url: &str) -> Value {
    reqwest::blocking::get(format!("{peer_url}/dstore/v1/info"))
        .unwrap()
        .json()
        .unwrap()
}

fn mine_to_height(node: &BitcoinNode, height: u64) {
    let now = node.block_count();
    if height > now {
        node.mine((height - now) as u32);
    }
}

#[test]
fn market_board_announce_puts_bond_and_record_on_chain_and_unbond_waits_for_l() {
    let m = Market::start(&crs_dir(), Faults::default());
    fund_farmer(&m);
    let farmer = m.farmer();
    let tip = m.node.block_count();
    let lock = tip + 10;

    // Bad input: clear errors (-8), nothing sent.
    for params in [
        json!([
            format!("http://{}.example:1", "x".repeat(40)),
            "0.001",
            lock
        ]),
        json!(["ftp://farmer.example", "0.001", lock]),
        json!([m.peer_url, "0", lock]),
        json!([m.peer_url, "-1", lock]),
        json!([m.peer_url, "0.001", 0]),
        json!([m.peer_url, "0.001", "soon"]),
        json!([m.peer_url, "0.001", 4_000_000_000u64]),
    ] {
        let err = farmer.call("dstore-announce", params.clone()).unwrap_err();
        assert_eq!(err.code, -8, "{params}: {err}");
    }
    assert!(mempool(&m.node).is_empty(), "nothing was broadcast");
    let err = m
        .renter()
        .call("dstore-announce", json!([m.peer_url, "0.001", lock]))
        .unwrap_err();
    assert!(err.message.contains("farmer role"), "{err}");

    // The announcement: bond at 0, the DSA record at 1.
    let reply = farmer.call_ok("dstore-announce", json!([m.peer_url, "0.001", lock]));
    let txid = reply["txid"].as_str().unwrap().to_string();
    assert_eq!(reply["bond_outpoint"], format!("{txid}:0"));
    assert_eq!(reply["locktime"], lock);
    assert_eq!(reply["peer_url"], m.peer_url.as_str());
    let identity: XOnlyPublicKey = reply["identity"].as_str().unwrap().parse().unwrap();
    m.node.wait_for_tx(&txid, WAIT);
    let tx = raw_tx(&m.node, &txid);
    let bond_script = bond_script_pubkey(&identity, lock as u32).unwrap();
    assert_eq!(tx.output[0].script_pubkey, bond_script);
    assert_eq!(tx.output[0].value.to_sat(), 100_000);
    let record = Announcement {
        identity,
        locktime: lock as u32,
        bond_vout: 0,
        peer_url: m.peer_url.clone(),
    };
    assert_eq!(tx.output[1].script_pubkey, record.script().unwrap());
    let parsed = parse_announcement(&tx).unwrap().unwrap();
    assert_eq!(parsed.announcement, record);
    assert_eq!(parsed.bond.to_string(), format!("{txid}:0"));
    m.node.mine(1);
    assert_eq!(m.node.confirmations(&txid), 1);

    // The signed advert in /dstore/v1/info verifies and names the announced URL.
    let info = info(&m.peer_url);
    assert!(info["price_per_download_sat"].is_u64() && info["max_file_bytes"].is_u64());
    let advert: SignedAdvert = serde_json::from_value(info["advert"].clone()).unwrap();
    advert.verify().unwrap();
    assert_eq!(advert.advert.identity, identity);
    assert_eq!(advert.advert.peer_url, m.peer_url);
    assert_eq!(advert.advert.network, "regtest");
    assert!(advert.advert.free_bytes > 0, "{info}");

    // Before L: refused, saying until when; nothing sent.
    let err = farmer.call("dstore-unbond", json!([])).unwrap_err();
    assert!(
        err.message.contains(&format!("block height {lock}")),
        "{err}"
    );
    assert!(mempool(&m.node).is_empty());
    let err = farmer
        .call("dstore-unbond", json!([null, "not-an-address"]))
        .unwrap_err();
    assert_eq!(err.code, -5, "{err}");

    // At L the spend is final in the next block.
    mine_to_height(&m.node, lock);
    let spent = farmer.call_ok("dstore-unbond", json!([]));
    assert_eq!(spent["bond_outpoint"], format!("{txid}:0"));
    let unbond_txid = spent["txid"].as_str().unwrap().to_string();
    let unbond = raw_tx(&m.node, &unbond_txid);
    assert_eq!(
        unbond.input[0].previous_output.to_string(),
        format!("{txid}:0")
    );
    assert_eq!(unbond.lock_time.to_consensus_u32(), lock as u32);
    let amount = spent["amount_btc"].as_f64().unwrap();
    assert!(amount > 0.0009 && amount < 0.001, "{spent}");
    m.node.mine(1);
    assert_eq!(m.node.confirmations(&unbond_txid), 1);
    let err = farmer.call("dstore-unbond", json!([])).unwrap_err();
    assert!(err.message.contains("no unspent bond"), "{err}");

    // A time-locked bond under a new URL: the advert follows the latest announcement, and
    // the unbond is refused until the median time past passes L.
    let now = m.node.rpc_ok("getblockchaininfo", json!([]))["mediantime"]
        .as_u64()
        .unwrap();
    let time_lock = now + 86_400;
    let url = "https://farmer.example";
    let reply = farmer.call_ok("dstore-announce", json!([url, 0.0005, time_lock]));
    let outpoint = reply["bond_outpoint"].as_str().unwrap().to_string();
    m.node.wait_for_tx(reply["txid"].as_str().unwrap(), WAIT);
    let err = farmer.call("dstore-unbond", json!([outpoint])).unwrap_err();
    assert!(
        err.message.contains(&format!("unix time {time_lock}")),
        "{err}"
    );
    let advert: SignedAdvert = serde_json::from_value(info_of(&m)["advert"].clone()).unwrap();
    advert.verify().unwrap();
    assert_eq!(advert.advert.peer_url, url);
}

fn info_of(m: &Market) -> Value {
    info(&m.peer_url)
}

/// A farmer plugin alone on a node, with a small evidence rate.
fn lone_farmer(node: &BitcoinNode, dir: &Path, rate: u32) -> (PluginProcess, String) {
    let port = ports::free_ports(1)[0];
    let plugin = PluginProcess::start_in(
        node,
        &dir.join("farmer"),
        &[
            "--farmer",
            &format!("--peer-bind=127.0.0.1:{port}"),
            &format!("--storage-dir={}", dir.join("storage").display()),
            &format!("--evidence-rate-per-min={rate}"),
        ],
    );
    (plugin, format!("http://127.0.0.1:{port}"))
}

fn post(url: &str, body: Vec<u8>) -> (u16, Value) {
    let response = reqwest::blocking::Client::new()
        .post(format!("{url}/dstore/v1/evidence"))
        .body(body)
        .send()
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(json!(text)))
}

/// A POST that declares a body of `length` bytes and sends none of it; the reply's status
/// and JSON body (the server answers, then closes).
fn post_declaring(url: &str, length: u64) -> (u16, Value) {
    use std::io::{Read, Write};
    let authority = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(authority).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "POST /dstore/v1/evidence HTTP/1.1\r\nHost: {authority}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(json!(body)))
}

fn board(url: &str) -> Vec<Value> {
    reqwest::blocking::get(format!("{url}/dstore/v1/evidence"))
        .unwrap()
        .json()
        .unwrap()
}

#[test]
fn market_board_refuses_fake_garbage_oversized_and_floods() {
    let node = BitcoinNode::start();
    let dir = tempfile::tempdir().unwrap();
    let (_farmer, url) = lone_farmer(&node, dir.path(), 6);
    let fake = json!({"receipt": {"farmer": "ab".repeat(32)}, "segment_index": 0});
    let cases: [(Vec<u8>, u16); 3] = [
        (b"{not json".to_vec(), 400),
        (fake.to_string().into_bytes(), 400),
        (Vec::new(), 400),
    ];
    for (body, want) in cases {
        let (status, reply) = post(&url, body);
        assert_eq!(status, want, "{reply}");
        assert!(reply["message"].is_string(), "{reply}");
    }
    // An oversized body is refused from its declared length, unread: the client gets the
    // 413 without sending a byte of it (a client still writing would see a broken pipe).
    let (status, reply) = post_declaring(&url, MAX_EVIDENCE_BYTES as u64 + 1);
    assert_eq!(status, 413, "{reply}");
    assert!(reply["message"].is_string(), "{reply}");
    assert!(board(&url).is_empty(), "nothing stored");
    let (status, _) = {
        let response =
            reqwest::blocking::get(format!("{url}/dstore/v1/evidence/{}", "00".repeat(32)))
                .unwrap();
        (response.status().as_u16(), ())
    };
    assert_eq!(status, 404);

    // Six POSTs a minute overall: four were taken above, two more pass the rate check, the
    // next is refused with 429 and a JSON error.
    let statuses: Vec<u16> = (0..3).map(|_| post(&url, b"{}".to_vec()).0).collect();
    assert_eq!(statuses, [400, 400, 429]);
    let (status, reply) = post(&url, b"{}".to_vec());
    assert_eq!(status, 429);
    assert!(
        reply["message"].as_str().unwrap().contains("per minute"),
        "{reply}"
    );
    assert!(board(&url).is_empty());
}

#[test]
fn market_board_stores_a_real_fraud_proof_once_and_publishes_it() {
    let m = Market::start(
        &crs_dir(),
        Faults {
            farmer: Some("seal-wrong-data"),
            ..Faults::default()
        },
    );
    // Announced, so the renter's market lists it (and then burns it).
    fund_farmer(&m);
    let lock = m.node.block_count() + 1_000;
    let announced = m
        .farmer()
        .call_ok("dstore-announce", json!([m.peer_url, "0.001", lock]));
    m.node
        .wait_for_tx(announced["txid"].as_str().unwrap(), WAIT);
    m.node.mine(1);
    let input = m.file("in", &seeded_bytes(31, 20_000));
    let id = m.open(&input).expect("dstore-open");
    let err = m.download(&id, &m.dir.path().join("out")).unwrap_err();
    assert!(err.contains("fraud proof saved to"), "{err}");
    let status = m.renter().call_ok("dstore-status", json!([id]));
    let proof_path = status["downloads"][0]["fraud_proof"]
        .as_str()
        .unwrap()
        .to_string();
    let bytes = std::fs::read(&proof_path).unwrap();
    let farmer_identity = info_of(&m)["identity"].as_str().unwrap().to_string();

    // Posted as written (pretty or not), then compact: one proof, stored once.
    let (status, first) = post(&m.peer_url, bytes.clone());
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["new"], true);
    assert_eq!(first["farmer"], farmer_identity.as_str());
    assert_eq!(first["contract_id"], id.as_str());
    let compact = serde_json::to_vec(&serde_json::from_slice::<Value>(&bytes).unwrap()).unwrap();
    let (status, again) = post(&m.peer_url, compact);
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["new"], false);
    assert_eq!(again["id"], first["id"]);
    let listed = board(&m.peer_url);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], first["id"]);
    let served = reqwest::blocking::get(format!(
        "{}/dstore/v1/evidence/{}",
        m.peer_url,
        first["id"].as_str().unwrap()
    ))
    .unwrap()
    .bytes()
    .unwrap();
    let checked = check_evidence(&served).unwrap();
    assert_eq!(hex::encode(checked.id), first["id"].as_str().unwrap());

    // dstore-publish-fraud: checked locally, posted to the given boards; a dead one is
    // reported, not fatal.
    let dead = "http://127.0.0.1:1";
    let published = m.renter().call_ok(
        "dstore-publish-fraud",
        json!([proof_path, format!("{},{dead}", m.peer_url)]),
    );
    assert_eq!(published["id"], first["id"]);
    assert_eq!(published["farmer"], farmer_identity.as_str());
    assert_eq!(published["published"], json!([m.peer_url]));
    assert_eq!(published["failed"][0]["url"], dead);
    assert_eq!(board(&m.peer_url).len(), 1, "still stored once");
    let bad = m.file("bad.json", b"{\"not\": \"a proof\"}");
    let err = m
        .renter()
        .call("dstore-publish-fraud", json!([bad.to_str().unwrap()]))
        .unwrap_err();
    assert_eq!(err.code, -8, "{err}");
    // The renter's own market marks the announced farmer burned.
    wait_until(
        "the renter's market to mark the farmer burned",
        WAIT,
        || {
            let table = m.renter().call("dstore-farmers", json!([])).ok()?;
            table["farmers"]
                .as_array()?
                .iter()
                .any(|f| f["identity"] == farmer_identity.as_str() && f["burned"] == true)
                .then_some(())
        },
    );
}
