//! Issue 15, the renter's side of the peer link: what a hostile farmer, or anyone on the
//! plain-HTTP path, can do to a real renter dstore-plugin. Each test runs the attack
//! through a hostile HTTP party on loopback ([`dstore_tests::harden_peer`]) against real
//! plugins on a real regtest bitcoind, and checks that it fails.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bitcoin::secp256k1::{Keypair, SecretKey, SECP256K1};
use dstore_plugin::wire::FarmerInfo;
use dstore_protocol::hashing::sha256;
use dstore_protocol::merkle::MerkleCommitment;
use dstore_protocol::messages::{OpenAccepted, OpenRequest, ResyncHint, UploadDone};
use dstore_protocol::peer::{self, Expected};
use dstore_protocol::receipt::StorageReceipt;
use dstore_tests::harden_peer::{forward, Answer, HostileServer, Request, Seen};
use dstore_tests::market::{Faults, Market};
use dstore_tests::{wait_until, BitcoinNode, PluginProcess};
use serde_json::{json, Value};

fn crs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-crs")
}

fn key(seed: u8) -> Keypair {
    Keypair::from_secret_key(SECP256K1, &SecretKey::from_slice(&[seed; 32]).unwrap())
}

/// What the man in the middle does to the renter's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Forwards everything except the sealed copy (refused, so no download pays).
    Pass,
    /// Answers the download request itself: an unsigned "expect 1000".
    InjectUnsigned,
    /// Answers it with a resynchronisation hint signed by a key that is not the farmer's.
    InjectForged,
    /// Lets the farmer act on the download request but loses its reply.
    DropReply,
    /// Forwards the first upload part with other bytes under the renter's signature.
    TamperFirstPart,
    /// Announces the sealed copy, sends a little of it, then stays silent.
    StallSealed,
}

struct Proxy {
    server: HostileServer,
    mode: Arc<Mutex<Mode>>,
}

impl Proxy {
    fn start(upstream: &str) -> Proxy {
        let mode = Arc::new(Mutex::new(Mode::Pass));
        let (upstream, shared) = (upstream.to_string(), mode.clone());
        let tampered = AtomicBool::new(false);
        let server = HostileServer::start(move |req| {
            let mode = *shared.lock().unwrap();
            middle(&upstream, mode, req, &tampered)
        });
        Proxy { server, mode }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// The statuses of the download requests as the proxy answered them.
    fn request_statuses(&self) -> Vec<u16> {
        self.server
            .seen_at("/msg/download_request")
            .iter()
            .map(|s| s.status)
            .collect()
    }
}

fn middle(upstream: &str, mode: Mode, req: &Request, tampered: &AtomicBool) -> Answer {
    let download_request = req.path.ends_with("/msg/download_request");
    let sealed = req.path.contains("/sealed/");
    let upload_part = req.method == "PUT" && req.path.contains("/upload/");
    match mode {
        Mode::InjectUnsigned if download_request => Answer::json(
            400,
            json!({"code": -32600, "message": "message 0 was already processed (next expected: 1000)", "next_seq": 1000})
                .to_string()
                .into_bytes(),
        ),
        Mode::InjectForged if download_request => {
            let (contract_id, seq) = peer::peek(&req.body).expect("an envelope");
            let hint = ResyncHint {
                next_seq: seq + 1,
                refused: sha256(&[&req.body]),
            };
            let signed = peer::sign(&key(66), contract_id, seq + 1, &hint).unwrap();
            let body = json!({
                "code": -32600,
                "message": "out of order",
                "next_seq": seq + 1,
                "resync": String::from_utf8(signed).unwrap(),
            });
            Answer::json(400, body.to_string().into_bytes())
        }
        Mode::DropReply if download_request => {
            let _ = forward(upstream, req, None);
            Answer::json(502, b"bad gateway".to_vec())
        }
        Mode::TamperFirstPart if upload_part && !tampered.swap(true, Ordering::SeqCst) => {
            let other: Vec<u8> = req.body.iter().map(|b| b ^ 0x5a).collect();
            forward(upstream, req, Some(other))
        }
        // Within the announced length (a longer one is refused at once).
        Mode::StallSealed if sealed => Answer::Stall {
            length: 4096,
            first: vec![0; 1000],
        },
        _ if sealed => Answer::json(
            503,
            json!({"code": -1, "message": "the proxy withholds the sealed copy in this test"})
                .to_string()
                .into_bytes(),
        ),
        _ => forward(upstream, req, None),
    }
}

/// Opens `bytes` through `farmer_url`; returns the contract id.
fn open_via(m: &Market, farmer_url: &str, bytes: usize) -> String {
    let data: Vec<u8> = (0..bytes).map(|i| (i * 7 % 251) as u8).collect();
    let input = m.file(&format!("in-{bytes}"), &data);
    m.renter_cli(&["dstore-open", farmer_url, input.to_str().unwrap()])
        .expect("dstore-open through the proxy")
}

/// One dstore-download of `id` that must fail before any payment; returns its error.
fn failed_download(m: &Market, id: &str) -> String {
    let out = m.dir.path().join("out");
    for _ in 0..10 {
        match m
            .renter()
            .call("dstore-download", json!([id, out.to_str().unwrap()]))
        {
            Err(e) => return e.message,
            Ok(v) if v["status"] == "running" => continue,
            Ok(v) => panic!("the download was not stopped: {v}"),
        }
    }
    panic!("the download never ended");
}

fn renter_phase(plugin: &PluginProcess, id: &str) -> Value {
    plugin.call_ok("dstore-status", json!([id]))["phase"].clone()
}

#[test]
fn harden_injected_unsigned_resync_is_ignored() {
    let m = Market::start(&crs_dir(), Faults::default());
    let proxy = Proxy::start(&m.peer_url);
    let id = open_via(&m, &proxy.server.url, 8 * 1024);

    // An unsigned "next_seq" and one signed by another key than the farmer's.
    for attack in [Mode::InjectUnsigned, Mode::InjectForged] {
        proxy.set(attack);
        let err = failed_download(&m, &id);
        assert!(err.contains("refused"), "{attack:?}: {err}");
    }
    assert_eq!(proxy.request_statuses(), vec![400, 400]);

    // The renter's numbers did not move: the farmer takes its next message as is.
    proxy.set(Mode::Pass);
    let err = failed_download(&m, &id);
    assert!(err.contains("withholds"), "{err}");
    assert_eq!(proxy.request_statuses(), vec![400, 400, 200]);

    // The legitimate case still works: the farmer acted on a request whose reply was
    // lost, so it expects one more; its signed hint for the next request resyncs.
    proxy.set(Mode::DropReply);
    failed_download(&m, &id);
    proxy.set(Mode::Pass);
    let err = failed_download(&m, &id);
    assert!(err.contains("withholds"), "{err}");
    let requests = proxy.server.seen_at("/msg/download_request");
    let statuses: Vec<u16> = requests.iter().map(|s| s.status).collect();
    assert_eq!(statuses, vec![400, 400, 200, 502, 400, 200]);
    let hint: Value = serde_json::from_slice(&requests[4].reply).unwrap();
    assert!(
        hint["resync"].is_string(),
        "the farmer signs its hint: {hint}"
    );
}

#[test]
fn harden_plain_http_remote_tower_is_refused() {
    let node = BitcoinNode::start();
    let dir = tempfile::tempdir().unwrap();
    let refused: [&[&str]; 4] = [
        &[
            "--watchtower-url=http://192.0.2.10:18460",
            "--watchtower-cookie=/nonexistent/.cookie",
        ],
        &[
            "--auditor-url=http://tower.example:18460",
            "--auditor-cookie=/nonexistent/.cookie",
        ],
        &["--watchtower-url=http://alice:hunter2@[2001:db8::1]:1"],
        &["--auditor-url=10.1.2.3:18460", "--auditor-cookie=/c"],
    ];
    for (i, flags) in refused.iter().enumerate() {
        let datadir = dir.path().join(format!("refused-{i}"));
        let out = PluginProcess::command(&node, &datadir, 1, flags)
            .output()
            .expect("run dstore-plugin");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} was accepted");
        assert!(
            stderr.contains("https://") && !stderr.contains("hunter2"),
            "{flags:?}: {stderr}"
        );
        assert!(
            !datadir.join("regtest").join(".cookie").exists(),
            "nothing started"
        );
    }
    // The same in dstore.conf.
    let datadir = dir.path().join("conf");
    std::fs::create_dir_all(&datadir).unwrap();
    std::fs::write(
        datadir.join("dstore.conf"),
        "watchtower-url=http://198.51.100.4:18460\nwatchtower-cookie=/c\n",
    )
    .unwrap();
    let out = PluginProcess::command(&node, &datadir, 1, &[])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("https://"));

    // Loopback over http and any host over https are accepted (nothing is contacted at
    // start-up).
    let datadir = dir.path().join("local");
    let plugin = PluginProcess::start_in(
        &node,
        &datadir,
        &[
            "--watchtower-url=http://localhost:1",
            "--watchtower-cookie=/nonexistent/.cookie",
            "--auditor-url=https://127.0.0.1:1",
            "--auditor-cookie=/nonexistent/.cookie",
        ],
    );
    plugin.call_ok("dstore-getinfo", json!([]));
}

/// What the hostile farmer of the expiry test signs.
#[derive(Default)]
struct Terms {
    open_expiry: u32,
    receipt_expiry: u32,
    received: u64,
    expected: u64,
}

/// A farmer of its own that signs whatever expiry `terms` says and takes any upload.
fn hostile_farmer(identity: Keypair, terms: Arc<Mutex<Terms>>) -> HostileServer {
    HostileServer::start(move |req| {
        let mut t = terms.lock().unwrap();
        let envelope = || {
            let (contract_id, _) = peer::peek(&req.body).unwrap();
            let expected = Expected {
                contract_id,
                sender: None,
            };
            (contract_id, expected)
        };
        if req.path == "/dstore/v1/info" {
            let info = FarmerInfo {
                identity: identity.x_only_public_key().0,
                network: "regtest".into(),
                price_per_download_sat: 20_000,
                max_file_bytes: 1 << 30,
                lightning: None,
            };
            return Answer::json(200, serde_json::to_vec(&info).unwrap());
        }
        if req.path.ends_with("/msg/open_request") {
            let (id, expected) = envelope();
            let open = peer::open::<OpenRequest>(&req.body, &expected).unwrap();
            t.expected = open.body.file_length;
            let accepted = OpenAccepted {
                file_length: open.body.file_length,
                expiry_height: t.open_expiry,
            };
            return Answer::json(200, peer::sign(&identity, id, 0, &accepted).unwrap());
        }
        if req.path.contains("/upload/") {
            if req.method == "PUT" {
                t.received += req.body.len() as u64;
            }
            let status = json!({"received": t.received, "expected": t.expected});
            return Answer::json(200, status.to_string().into_bytes());
        }
        if req.path.ends_with("/msg/upload_done") {
            let (id, expected) = envelope();
            let done = peer::open::<UploadDone>(&req.body, &expected).unwrap().body;
            let stored = MerkleCommitment {
                root: done.root_c,
                length: done.length,
            };
            let receipt = StorageReceipt::sign(&identity, id, stored, t.receipt_expiry);
            return Answer::json(200, peer::sign(&identity, id, 1, &receipt).unwrap());
        }
        Answer::json(404, b"{\"code\":-32601,\"message\":\"no\"}".to_vec())
    })
}

#[test]
fn harden_short_storage_expiry_is_refused() {
    let node = BitcoinNode::start();
    let renter = PluginProcess::start(&node);
    let terms = Arc::new(Mutex::new(Terms::default()));
    let farmer = hostile_farmer(key(77), terms.clone());
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::write(&input, vec![7u8; 20_000]).unwrap();
    let tip = node.block_count() as u32;
    let open = |plugin: &PluginProcess| {
        plugin.call("dstore-open", json!([farmer.url, input.to_str().unwrap()]))
    };
    let refused_contract = |plugin: &PluginProcess| -> String {
        let list = plugin.call_ok("dstore-list", json!([]));
        let last = list.as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["phase"], "refused", "{last}");
        last["contract_id"].as_str().unwrap().to_string()
    };

    // The farmer signs a term that ends next block, then one just under the minimum.
    for expiry in [tip + 1, tip + 4_000] {
        *terms.lock().unwrap() = Terms {
            open_expiry: expiry,
            receipt_expiry: expiry,
            ..Terms::default()
        };
        let err = err_message(open(&renter));
        assert!(err.contains("only until height"), "{err}");
        refused_contract(&renter);
        assert!(
            farmer.seen_at("/upload/").is_empty(),
            "no byte is sent under a short term"
        );
    }

    // A long term in OpenAccepted, a short one in the receipt.
    *terms.lock().unwrap() = Terms {
        open_expiry: tip + 10_000,
        receipt_expiry: tip + 1,
        ..Terms::default()
    };
    let err = err_message(open(&renter));
    assert!(err.contains("only until height"), "{err}");
    let id = refused_contract(&renter);
    let download = renter.call(
        "dstore-download",
        json!([id, dir.path().join("o").to_str().unwrap()]),
    );
    assert!(download.is_err(), "a refused contract cannot be downloaded");
    let list = renter.call_ok("dstore-list", json!([]));
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|c| c["phase"] == "refused"),
        "{list}"
    );

    // --min-storage-blocks sets the minimum: a renter asking for less accepts that term.
    let datadir = dir.path().join("lenient");
    let lenient = PluginProcess::start_in(&node, &datadir, &["--min-storage-blocks=1000"]);
    *terms.lock().unwrap() = Terms {
        open_expiry: tip + 4_000,
        receipt_expiry: tip + 4_000,
        ..Terms::default()
    };
    let id = open(&lenient).expect("a term above --min-storage-blocks is accepted");
    assert_eq!(renter_phase(&lenient, id.as_str().unwrap()), "stored");
}

fn err_message(result: Result<Value, dstore_tests::RpcError>) -> String {
    match result {
        Err(e) => e.message,
        Ok(v) => panic!("the call succeeded: {v}"),
    }
}

#[test]
fn harden_oversized_or_redirected_reply_is_refused() {
    let m = Market::start(&crs_dir(), Faults::default());
    let input = m.file("in", &[1u8; 4096]);
    let open = |url: &str| {
        m.renter()
            .call("dstore-open", json!([url, input.to_str().unwrap()]))
            .expect_err("the hostile farmer is refused")
            .message
    };
    let info = serde_json::to_vec(&FarmerInfo {
        identity: key(9).x_only_public_key().0,
        network: "regtest".into(),
        price_per_download_sat: 20_000,
        max_file_bytes: 1 << 30,
        lightning: None,
    })
    .unwrap();

    // A valid reply behind 5 MiB of JSON whitespace (serde_json would take it whole).
    let padded = {
        let mut body = vec![b' '; 5 << 20];
        body.extend_from_slice(&info);
        body
    };
    let bloated = HostileServer::start(move |_| Answer::json(200, padded.clone()));
    let err = open(&bloated.url);
    assert!(err.contains("larger than"), "{err}");

    // A redirect to another server is not followed.
    let target_info = info.clone();
    let target = HostileServer::start(move |_| Answer::json(200, target_info.clone()));
    let location = format!("{}/dstore/v1/info", target.url);
    let redirecting = HostileServer::start(move |_| Answer::Full {
        status: 307,
        headers: vec![("location".into(), location.clone())],
        body: Vec::new(),
    });
    let err = open(&redirecting.url);
    assert!(err.contains("307"), "{err}");
    assert!(
        target.seen().is_empty(),
        "the redirect target was never asked"
    );
    assert!(
        m.renter()
            .call_ok("dstore-list", json!([]))
            .as_array()
            .unwrap()
            .is_empty(),
        "no contract left behind"
    );

    // A farmer that stalls the sealed copy: the renter gives up and releases the
    // contract, and the next call on it goes through.
    let proxy = Proxy::start(&m.peer_url);
    let id = open_via(&m, &proxy.server.url, 8 * 1024);
    proxy.set(Mode::StallSealed);
    let started = std::time::Instant::now();
    let err = failed_download(&m, &id);
    assert!(err.contains("sent nothing"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(240));
    proxy.set(Mode::Pass);
    let err = failed_download(&m, &id);
    assert!(err.contains("withholds"), "{err}");
    assert_eq!(proxy.request_statuses(), vec![200, 200]);
}

#[test]
fn harden_replayed_bulk_auth_with_other_bytes_is_refused() {
    let m = Market::start(&crs_dir(), Faults::default());
    let proxy = Proxy::start(&m.peer_url);
    proxy.set(Mode::TamperFirstPart);
    // Two upload parts; the first goes to the farmer with other bytes under the
    // renter's signature.
    let id = open_via(&m, &proxy.server.url, 6 << 20);
    let parts = proxy.server.seen_at("/upload/");
    let puts: Vec<_> = parts.iter().filter(|s| s.request.method == "PUT").collect();
    assert!(puts.len() >= 3, "{} parts", puts.len());
    // The proxy records answers as they complete, and with parts in flight side by side
    // the tampered one (the first the proxy handled) may be either part. Exactly one PUT
    // is refused as a body mismatch; every offset is stored by another. The renter drops
    // its in-flight PUTs when a part is refused and resends from the farmer's count, so a
    // part still waiting for its turn may arrive twice: the second copy is refused as a
    // replay (nothing is stored twice), never accepted.
    let statuses: Vec<_> = puts
        .iter()
        .map(|s| (s.request.path.clone(), s.status))
        .collect();
    let refusal = |put: &Seen| -> Value { serde_json::from_slice(&put.reply).unwrap() };
    let mismatches: Vec<_> = puts
        .iter()
        .filter(|p| p.status != 200 && refusal(p)["code"] == -41)
        .collect();
    assert_eq!(
        mismatches.len(),
        1,
        "the altered part is refused: {statuses:?}"
    );
    assert_eq!(mismatches[0].status, 400, "{statuses:?}");
    for &put in &puts {
        let stored = puts
            .iter()
            .any(|p| p.request.path == put.request.path && p.status == 200);
        assert!(stored, "every offset stored: {statuses:?}");
        if put.status != 200 && refusal(put)["code"] != -41 {
            assert_eq!(put.status, 400, "{statuses:?}");
            let message = refusal(put)["message"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(
                message.contains("resume from there"),
                "only replays: {message}"
            );
        }
    }
    // The honest resend was stored and the receipt checks out on both sides.
    assert_eq!(renter_phase(m.renter(), &id), "stored");
    wait_until("the farmer's contract", Duration::from_secs(30), || {
        (m.farmer().call_ok("dstore-status", json!([id]))["phase"] == "stored").then_some(())
    });
}
