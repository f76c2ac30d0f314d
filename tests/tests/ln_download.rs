//! Mode N (issue 19, PROTOCOL.md 4b): downloads paid over Lightning between real
//! dstore-plugins, each with an embedded LDK node (`--lightning`) on one regtest bitcoind.
//! The renter checks E against root_E and the invoice against the farmer's signed
//! transcript before paying; the settled payment hands it x; it unseals, checks root_C and
//! only then writes the output. Misbehaving farmers (and a renter killed right after paying)
//! are real plugin processes started with a hidden `--dev-fault`.

use std::path::PathBuf;
use std::time::Duration;

use dstore_tests::ln::{
    channel, free_port, ln_flags, open_announced_channel, open_channel, peer_uri, start_ln_plugin,
    wait_graph_channels, wait_ln_synced,
};
use dstore_tests::market::{Faults, Market, TEST_PRICE_SAT};
use dstore_tests::parties::seeded_bytes;
use dstore_tests::wait_until;
use serde_json::{json, Value};

/// The renter → farmer channel's capacity (the price is 20 000 sat).
const CAPACITY_SAT: u64 = 300_000;
/// What one download costs over Lightning, in millisatoshis.
const PRICE_MSAT: u64 = TEST_PRICE_SAT * 1_000;
/// The routed test's channels: LDK's router uses at most a quarter of a route hint's
/// largest HTLC (10 % of the channel by default), so the farmer's channel must be over 40
/// times the price.
const ROUTED_CAPACITY_SAT: u64 = 1_000_000;
/// How long one `dstore-download` call may wait for its outcome.
const CALL_WAIT_SECONDS: u64 = 240;

fn crs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-crs")
}

/// A market whose renter and farmer both run a Lightning node, with a direct channel
/// renter → farmer (none when `direct` is false).
struct LnMarket {
    m: Market,
    channel: Option<String>,
}

impl LnMarket {
    fn start(faults: Faults, direct: bool) -> LnMarket {
        let (farmer_port, renter_port) = (free_port(), free_port());
        let m = Market::start_around(&crs_dir(), faults, 80 << 20, |_| {
            (ln_flags(farmer_port), ln_flags(renter_port))
        });
        let channel =
            direct.then(|| open_channel(&m.node, m.renter(), m.farmer(), CAPACITY_SAT, 0));
        LnMarket { m, channel }
    }

    /// The renter's spendable balance in its channel to the farmer, in msat.
    fn renter_outbound_msat(&self) -> u64 {
        let id = self.channel.as_deref().expect("a direct channel");
        channel(self.m.renter(), id).expect("the channel")["outbound_msat"]
            .as_u64()
            .expect("outbound_msat")
    }

    /// A stored file of `size` bytes; returns its contract id and data.
    fn stored_file(&self, seed: u64, size: usize) -> (String, Vec<u8>) {
        let data = seeded_bytes(seed, size);
        let input = self.m.file(&format!("in-{seed}"), &data);
        (self.m.open(&input).expect("dstore-open"), data)
    }

    /// One `dstore-download <id> <out> <wait> [mode]` call.
    fn download(
        &self,
        id: &str,
        output: &std::path::Path,
        mode: Option<&str>,
    ) -> Result<Value, String> {
        let mut params = vec![
            json!(id),
            json!(output.to_str().unwrap()),
            json!(CALL_WAIT_SECONDS),
        ];
        params.extend(mode.map(|m| json!(m)));
        self.m
            .renter()
            .call("dstore-download", Value::Array(params))
            .map_err(|e| e.message)
    }

    fn status(&self, id: &str) -> Value {
        self.m.renter().call_ok("dstore-status", json!([id]))
    }

    fn mempool(&self) -> Value {
        self.m.node.rpc_ok("getrawmempool", json!([]))
    }
}

fn ln_list(plugin: &dstore_tests::PluginProcess) -> Value {
    plugin.call_ok("dstore-ln-listchannels", json!([]))
}

/// The latest download of a renter's `dstore-status`.
fn latest(status: &Value) -> &Value {
    status["downloads"]
        .as_array()
        .and_then(|d| d.last())
        .expect("a download")
}

#[test]
fn ln_download_16_mib_byte_exact_with_no_transaction_on_the_chain() {
    let ln = LnMarket::start(Faults::default(), true);
    let (id, data) = ln.stored_file(1, 16 << 20);
    let before_msat = ln.renter_outbound_msat();
    let (mempool, height) = (ln.mempool(), ln.m.node.block_count());
    assert_eq!(mempool, json!([]), "the channel is open and mined");

    let out = ln.m.dir.path().join("out-ln");
    let done = ln
        .download(&id, &out, Some("ln"))
        .expect("a mode-N download");
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["mode"], "ln", "{done}");
    assert_eq!(done["bytes"], data.len() as u64);
    assert_eq!(done["price_msat"], PRICE_MSAT);
    assert!(std::fs::read(&out).unwrap() == data, "byte-exact");
    assert_eq!(ln.mempool(), mempool, "no transaction went to the mempool");
    assert_eq!(ln.m.node.block_count(), height);
    assert_eq!(
        ln.renter_outbound_msat(),
        before_msat - PRICE_MSAT,
        "the price went over the direct channel, once, with no fee"
    );
    let s = ln.status(&id);
    let d = latest(&s);
    assert_eq!(
        (d["mode"].as_str(), d["phase"].as_str()),
        (Some("ln"), Some("done")),
        "{s}"
    );
    assert_eq!(d["payment_hash"], done["payment_hash"]);
    let farmer = ln.m.farmer().call_ok("dstore-status", json!([id]));
    assert_eq!(
        farmer["ln_downloads"][0]["payment_hash"], done["payment_hash"],
        "{farmer}"
    );

    // Mode auto (the default) picks Lightning: both sides have it and the price routes.
    std::fs::remove_file(&out).unwrap();
    let auto = ln.download(&id, &out, None).expect("a mode-auto download");
    assert_eq!(auto["mode"], "ln", "{auto}");
    assert_ne!(
        auto["payment_hash"], done["payment_hash"],
        "a new x per download"
    );
    assert!(std::fs::read(&out).unwrap() == data);
    assert_eq!(ln.mempool(), mempool);
    assert_eq!(ln.renter_outbound_msat(), before_msat - 2 * PRICE_MSAT);
}

#[test]
fn ln_download_routes_through_a_third_node() {
    let ln = LnMarket::start(Faults::default(), false);
    let router = start_ln_plugin(&ln.m.node, &ln.m.dir.path().join("router"), &[]);
    let (m, node) = (&ln.m, &ln.m.node);
    let to_router = open_channel(node, m.renter(), &router, ROUTED_CAPACITY_SAT, 0);
    open_announced_channel(node, &router, m.farmer(), ROUTED_CAPACITY_SAT);
    for plugin in [m.renter(), &router, m.farmer()] {
        wait_ln_synced(node, plugin);
    }
    // The renter learns the router → farmer channel by gossip from the router.
    wait_graph_channels(m.renter(), 1);
    let (id, data) = ln.stored_file(2, 100_000);
    let before = channel(m.renter(), &to_router).unwrap()["outbound_msat"]
        .as_u64()
        .unwrap();
    let mempool = ln.mempool();
    let out = m.dir.path().join("out-routed");
    let done = ln.download(&id, &out, Some("ln")).unwrap_or_else(|e| {
        let s = ln.status(&id);
        let invoice = latest(&s)["invoice"].as_str().unwrap_or_default().to_string();
        let hints = invoice
            .parse::<ldk_node::lightning_invoice::Bolt11Invoice>()
            .map(|i| format!("{:?}", i.route_hints()));
        let log = std::fs::read_to_string(m.renter().datadir().join("regtest/ln/ldk_node.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!("a routed mode-N download: {e}\nroute hints: {hints:?}\nrouter: {}\nrenter LDK log: {tail:#?}", ln_list(&router))
    });
    assert_eq!(done["mode"], "ln", "{done}");
    assert!(std::fs::read(&out).unwrap() == data);
    assert_eq!(ln.mempool(), mempool, "no transaction went to the mempool");
    let fee = done["fee_msat"].as_u64().unwrap_or(0);
    let after = channel(m.renter(), &to_router).unwrap()["outbound_msat"]
        .as_u64()
        .unwrap();
    assert_eq!(
        after,
        before - PRICE_MSAT - fee,
        "the price and the router's fee, once"
    );
}

#[test]
fn ln_farmer_that_never_settles_costs_the_renter_nothing() {
    let ln = LnMarket::start(
        Faults {
            farmer: Some("ln-never-settle"),
            ..Faults::default()
        },
        true,
    );
    let (id, _) = ln.stored_file(3, 50_000);
    let before_msat = ln.renter_outbound_msat();
    let out = ln.m.dir.path().join("out-never");
    let params = json!([id, out.to_str().unwrap(), 5, "ln"]);
    let first = ln.m.renter().call_ok("dstore-download", params);
    assert_ne!(first["status"], "done", "{first}");
    // The farmer holds the HTLC; it fails back once the chain nears its expiry.
    let mut mined = 0;
    let failed = loop {
        let s = ln.status(&id);
        if latest(&s)["phase"] == "failed" {
            break s;
        }
        assert!(mined < 400, "the payment never failed back: {s}");
        ln.m.node.mine(10);
        mined += 10;
        wait_ln_synced(&ln.m.node, ln.m.farmer());
        wait_ln_synced(&ln.m.node, ln.m.renter());
    };
    let error = latest(&failed)["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("nothing was paid"), "{failed}");
    assert!(!out.exists(), "nothing is written");
    wait_until("the channel usable again", Duration::from_secs(120), || {
        let c = channel(ln.m.renter(), ln.channel.as_deref().unwrap())?;
        (c["is_usable"] == true).then_some(())
    });
    assert_eq!(
        ln.renter_outbound_msat(),
        before_msat,
        "the renter paid nothing"
    );
    let again = ln.download(&id, &out, Some("ln")).unwrap_err();
    assert!(
        again.contains("nothing was paid"),
        "the outcome is reported: {again}"
    );
}

#[test]
fn ln_farmer_sealing_wrong_data_is_caught_by_a_fraud_proof() {
    let ln = LnMarket::start(
        Faults {
            farmer: Some("ln-seal-wrong-data"),
            ..Faults::default()
        },
        true,
    );
    let (id, _) = ln.stored_file(4, 50_000);
    let before_msat = ln.renter_outbound_msat();
    let out = ln.m.dir.path().join("out-fraud");
    let err = ln.download(&id, &out, Some("ln")).unwrap_err();
    assert!(err.contains("fraud proof saved to"), "{err}");
    assert!(!out.exists(), "nothing is written to output_path");
    assert_eq!(
        ln.renter_outbound_msat(),
        before_msat - PRICE_MSAT,
        "the payment settled"
    );
    let s = ln.status(&id);
    assert_eq!(latest(&s)["phase"], "fraud", "{s}");
    let proof = latest(&s)["fraud_proof"].as_str().unwrap().to_string();
    let checked: Value = serde_json::from_str(
        &ln.m
            .renter_cli(&["dstore-verify-fraud", &proof])
            .expect("the mode-N fraud proof verifies"),
    )
    .unwrap();
    assert_eq!(checked["valid"], true, "{checked}");
    assert_eq!(checked["mode"], "ln");
    assert_eq!(checked["contract_id"], id.as_str());
    // A proof with another x, or another segment, does not hold.
    let mut file: Value = serde_json::from_slice(&std::fs::read(&proof).unwrap()).unwrap();
    file["proof"]["preimage"] = json!(hex::encode([7u8; 32]));
    let bad = ln.m.file("bad-x.json", file.to_string().as_bytes());
    let err =
        ln.m.renter_cli(&["dstore-verify-fraud", bad.to_str().unwrap()])
            .unwrap_err();
    assert!(
        err.contains("does not hold") || err.contains("not a"),
        "{err}"
    );
}

/// A farmer with `fault` (an invoice that disagrees with its transcript): the renter
/// refuses before paying, nothing moves, and the farmer's restart without the fault sells
/// the file.
fn invoice_refused_before_paying(fault: &'static str, seed: u64) {
    let mut ln = LnMarket::start(
        Faults {
            farmer: Some(fault),
            ..Faults::default()
        },
        true,
    );
    let (id, data) = ln.stored_file(seed, 50_000);
    let before_msat = ln.renter_outbound_msat();
    let out = ln.m.dir.path().join("out-refused");
    let err = ln.download(&id, &out, Some("ln")).unwrap_err();
    assert!(err.contains("refused before paying"), "{err}");
    assert!(!out.exists());
    let s = ln.status(&id);
    assert_eq!(latest(&s)["phase"], "failed", "{s}");
    assert_eq!(
        latest(&s)["payment_hash"],
        Value::Null,
        "no payment was begun: {s}"
    );
    assert_eq!(ln.renter_outbound_msat(), before_msat, "nothing was paid");
    ln.m.kill_farmer();
    ln.m.start_farmer();
    // LDK would reconnect by itself within a minute; reconnecting now saves the wait.
    ln.m.renter()
        .call_ok("dstore-ln-connect", json!([peer_uri(ln.m.farmer())]));
    wait_until("the channel usable again", Duration::from_secs(120), || {
        let c = channel(ln.m.renter(), ln.channel.as_deref().unwrap())?;
        (c["is_usable"] == true).then_some(())
    });
    let done = ln
        .download(&id, &out, Some("ln"))
        .expect("an honest farmer's download");
    assert_eq!(done["mode"], "ln");
    assert!(std::fs::read(&out).unwrap() == data);
}

#[test]
fn ln_invoice_with_another_payment_hash_is_refused_before_paying() {
    invoice_refused_before_paying("ln-wrong-invoice-hash", 5);
}

#[test]
fn ln_invoice_with_another_amount_is_refused_before_paying() {
    invoice_refused_before_paying("ln-wrong-invoice-amount", 6);
}

#[test]
fn ln_renter_killed_right_after_paying_finishes_without_paying_again() {
    let mut ln = LnMarket::start(
        Faults {
            renter: Some("stall-after-ln-paid"),
            ..Faults::default()
        },
        true,
    );
    let (id, data) = ln.stored_file(7, 200_000);
    let before_msat = ln.renter_outbound_msat();
    let out = ln.m.dir.path().join("out-killed");
    let params = json!([id, out.to_str().unwrap(), 3, "ln"]);
    let running = ln.m.renter().call_ok("dstore-download", params);
    assert_eq!(running["status"], "running", "{running}");
    wait_until("the payment to settle", Duration::from_secs(120), || {
        (ln.renter_outbound_msat() == before_msat - PRICE_MSAT).then_some(())
    });
    assert_eq!(latest(&ln.status(&id))["phase"], "ln_paying");
    ln.m.kill_renter();
    ln.m.start_renter();
    let done = ln
        .download(&id, &out, Some("ln"))
        .expect("the resumed download");
    assert_eq!(done["status"], "done", "{done}");
    assert!(std::fs::read(&out).unwrap() == data);
    let s = ln.status(&id);
    assert_eq!(
        s["downloads"].as_array().unwrap().len(),
        1,
        "one download: {s}"
    );
    assert_eq!(latest(&s)["phase"], "done");
    assert_eq!(
        ln.renter_outbound_msat(),
        before_msat - PRICE_MSAT,
        "paid once: the restart asked the node instead of paying again"
    );
}

#[test]
fn ln_mode_without_lightning_or_unknown_is_a_clear_error_that_changes_nothing() {
    let m = Market::start(&crs_dir(), Faults::default());
    let input = m.file("in", &seeded_bytes(8, 10_000));
    let id = m.open(&input).expect("dstore-open");
    let out = m.dir.path().join("out");
    let err = m
        .renter()
        .call(
            "dstore-download",
            json!([id, out.to_str().unwrap(), 5, "ln"]),
        )
        .unwrap_err();
    assert!(err.message.contains("Lightning is not enabled"), "{err}");
    let err = m
        .renter()
        .call(
            "dstore-download",
            json!({"contract_id": id, "output_path": out.to_str().unwrap(), "mode": "lightning"}),
        )
        .unwrap_err();
    assert!(err.message.contains("ln, chain or auto"), "{err}");
    let s = m.renter().call_ok("dstore-status", json!([id]));
    assert_eq!(s["downloads"], json!([]), "nothing was stored: {s}");
    assert!(!out.exists());
}
