//! Core Lightning mode of issue 19: the lightningd stand-in answers `invoice` (with a chosen
//! preimage), `pay`/`xpay`, `listpays`, `listinvoices` and `listpeerchannels` as lightningd
//! documents them, backed by real LDK nodes in the test process over a real channel; the
//! plugin's Core Lightning backend (`dstore_plugin::ln::cln::ClnNode`, cln-rpc's typed
//! requests) drives them; a plugin under the harness uses lightningd as its Lightning node.

use std::sync::Arc;
use std::time::Duration;

use bitcoin::hashes::{sha256, Hash};
use dstore_plugin::ln::cln::ClnNode;
use dstore_plugin::ln::PaymentOutcome;
use dstore_tests::cln_harness::{BitcoinSettings, ClnPlugin, FakeLightningd, LightningdNode};
use dstore_tests::cln_lightning::codes;
use dstore_tests::BitcoinNode;
use serde_json::{json, Value};

const CAPACITY_SAT: u64 = 400_000;
const SHORT: Duration = Duration::from_secs(60);

/// Two funded in-process LDK nodes with a usable channel payer → payee, each behind its
/// own lightningd socket.
struct TwoNodes {
    payer_rpc: FakeLightningd,
    payee_rpc: FakeLightningd,
    payer: Arc<LightningdNode>,
    payee: Arc<LightningdNode>,
    /// Last: dropped after the LDK nodes stop.
    _node: BitcoinNode,
}

fn two_nodes_with_a_channel() -> TwoNodes {
    let node = BitcoinNode::start();
    let payer = LightningdNode::start(&node);
    let payee = LightningdNode::start(&node);
    payer.fund(&node);
    payee.fund(&node);
    let channel = payer.open_channel(&node, &payee.uri(), CAPACITY_SAT, 0);
    payee.wait_usable(&channel);
    let payer_rpc = FakeLightningd::serve(BitcoinSettings::of(&node), payer.clone());
    let payee_rpc = FakeLightningd::serve(BitcoinSettings::of(&node), payee.clone());
    TwoNodes {
        payer_rpc,
        payee_rpc,
        payer,
        payee,
        _node: node,
    }
}

fn hash_hex(preimage: &[u8; 32]) -> String {
    hex::encode(sha256::Hash::hash(preimage).to_byte_array())
}

fn code(error: &Value) -> i64 {
    error["code"].as_i64().unwrap_or_else(|| panic!("{error}"))
}

#[test]
fn ln_cln_harness_invoice_pay_xpay_listpays_named_and_positional() {
    let t = two_nodes_with_a_channel();
    let (payer, payee) = (&t.payer_rpc, &t.payee_rpc);
    let payee_id = t.payee.node.node_id().to_string();

    let info = payee.call("getinfo", json!({})).unwrap();
    assert_eq!(info["id"], payee_id);
    assert_eq!(info["num_active_channels"], 1, "{info}");
    assert_eq!(payee.call("getinfo", json!([])).unwrap()["id"], payee_id);

    let channels = payer.call("listpeerchannels", json!([payee_id])).unwrap()["channels"].clone();
    assert_eq!(channels.as_array().unwrap().len(), 1, "{channels}");
    assert_eq!(channels[0]["state"], "CHANNELD_NORMAL");
    assert_eq!(channels[0]["peer_connected"], true);
    assert!(
        channels[0]["spendable_msat"].as_u64().unwrap() > 1_000_000,
        "{channels}"
    );
    let named = payer
        .call("listpeerchannels", json!({"id": payee_id}))
        .unwrap();
    assert_eq!(
        named["channels"][0]["channel_id"],
        channels[0]["channel_id"]
    );

    // invoice with a chosen preimage, named parameters; paid with xpay, positional.
    let x1 = [0x11u8; 32];
    let invoice = payee
        .call(
            "invoice",
            json!({"amount_msat": 21_000, "label": "named", "description": "dstore x1", "preimage": hex::encode(x1)}),
        )
        .unwrap();
    assert_eq!(invoice["payment_hash"], hash_hex(&x1));
    for field in ["bolt11", "payment_secret", "expires_at", "created_index"] {
        assert!(!invoice[field].is_null(), "{field}: {invoice}");
    }
    let bolt11 = invoice["bolt11"].as_str().unwrap().to_string();
    let paid = payer.call("xpay", json!([bolt11])).unwrap();
    assert_eq!(paid["payment_preimage"], hex::encode(x1), "{paid}");
    assert_eq!(paid["amount_msat"], 21_000);
    assert_eq!(paid["successful_parts"], 1);
    let pays = payer
        .call("listpays", json!({"payment_hash": hash_hex(&x1)}))
        .unwrap()["pays"]
        .clone();
    assert_eq!(pays.as_array().unwrap().len(), 1, "{pays}");
    assert_eq!(pays[0]["status"], "complete");
    assert_eq!(pays[0]["preimage"], hex::encode(x1));
    assert_eq!(pays[0]["destination"], payee_id);
    let by_bolt11 = payer.call("listpays", json!([bolt11])).unwrap();
    assert_eq!(by_bolt11["pays"], pays);
    let received = payee
        .call("listinvoices", json!({"label": "named"}))
        .unwrap()["invoices"][0]
        .clone();
    assert_eq!(received["status"], "paid", "{received}");
    assert_eq!(received["amount_received_msat"], 21_000);

    // Positional invoice (amount as "Nmsat", expiry, no fallbacks, preimage); paid with pay, named.
    let x2 = [0x22u8; 32];
    let invoice = payee
        .call(
            "invoice",
            json!([
                "34000msat",
                "positional",
                "dstore x2",
                3600,
                null,
                hex::encode(x2)
            ]),
        )
        .unwrap();
    assert_eq!(invoice["payment_hash"], hash_hex(&x2));
    let bolt11 = invoice["bolt11"].as_str().unwrap().to_string();
    let paid = payer.call("pay", json!({"bolt11": bolt11})).unwrap();
    assert_eq!(paid["status"], "complete", "{paid}");
    assert_eq!(paid["payment_preimage"], hex::encode(x2));
    assert_eq!(paid["payment_hash"], hash_hex(&x2));
    assert_eq!(paid["destination"], payee_id);
    assert_eq!(paid["amount_msat"], 34_000);
    let complete = payer
        .call("listpays", json!([null, null, "complete"]))
        .unwrap();
    assert_eq!(complete["pays"].as_array().unwrap().len(), 2, "{complete}");
    // Paying a paid invoice again returns its result and sends nothing.
    let again = payer.call("pay", json!([bolt11])).unwrap();
    assert_eq!(again["payment_preimage"], hex::encode(x2));
    assert_eq!(t.payer.outbound_payment_count(), 2);

    // lightningd's refusals.
    let dup = json!({"amount_msat": 1000, "label": "named", "description": "d"});
    assert_eq!(
        code(&payee.call("invoice", dup).unwrap_err()),
        codes::INVOICE_LABEL_ALREADY_EXISTS
    );
    let reused = json!([1000, "other", "d", null, null, hex::encode(x1)]);
    assert_eq!(
        code(&payee.call("invoice", reused).unwrap_err()),
        codes::INVOICE_PREIMAGE_ALREADY_EXISTS
    );
    for bad in [
        json!({"amount_msat": 1000, "label": "x"}),
        json!({"amount_msat": 1000, "label": "x", "description": "d", "colour": 1}),
        json!([1000, "x", "d", 60, null, "not hex"]),
        json!(["lots", "x", "d"]),
    ] {
        assert_eq!(
            code(&payee.call("invoice", bad.clone()).unwrap_err()),
            codes::INVALID_PARAMS,
            "{bad}"
        );
    }
    assert_eq!(
        code(&payer.call("xpay", json!({})).unwrap_err()),
        codes::INVALID_PARAMS
    );
    assert_eq!(
        code(&payer.call("pay", json!(["lnbcrt1garbage"])).unwrap_err()),
        codes::INVALID_PARAMS
    );
}

#[test]
fn ln_cln_backend_invoices_pays_once_and_reads_the_outcome() {
    let t = two_nodes_with_a_channel();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let farmer = ClnNode::start(t.payee_rpc.socket.clone()).await.unwrap();
        let renter = ClnNode::start(t.payer_rpc.socket.clone()).await.unwrap();
        let farmer_id = t.payee.node.node_id();
        assert_eq!(farmer.info().await.unwrap().node_id, farmer_id);
        let advertised = farmer
            .advertised()
            .expect("getinfo's binding is advertised");
        assert_eq!(advertised.node_id, farmer_id);
        assert_eq!(advertised.address, t.payee.listen.to_string());

        assert!(renter.can_pay(&farmer_id, 50_000).await.unwrap());
        assert!(!renter
            .can_pay(&farmer_id, CAPACITY_SAT * 1000)
            .await
            .unwrap());

        let x = [0x33u8; 32];
        let hash = sha256::Hash::hash(&x).to_byte_array();
        let bolt11 = farmer
            .invoice(x, 50_000, "dstore download", 600)
            .await
            .unwrap();
        // A farmer restarted between storing x and storing the invoice asks again: same invoice.
        assert_eq!(
            farmer
                .invoice(x, 50_000, "dstore download", 600)
                .await
                .unwrap(),
            bolt11
        );
        assert_eq!(renter.payment(hash).await.unwrap(), PaymentOutcome::Unknown);
        renter.pay(&bolt11).await.unwrap();
        renter.pay(&bolt11).await.unwrap();
        let outcome = renter.wait_payment(hash, SHORT).await.unwrap();
        let PaymentOutcome::Succeeded { preimage, fee_msat } = outcome else {
            panic!("payment not settled: {outcome:?}");
        };
        assert_eq!(preimage, x, "the farmer's chosen preimage came back");
        assert_eq!(fee_msat, Some(0), "direct channel");
        // A fresh backend (a restarted plugin) reads the outcome from listpays and does
        // not pay again.
        let restarted = ClnNode::start(t.payer_rpc.socket.clone()).await.unwrap();
        assert_eq!(restarted.payment(hash).await.unwrap(), outcome);
        restarted.pay(&bolt11).await.unwrap();
        assert_eq!(restarted.wait_payment(hash, SHORT).await.unwrap(), outcome);
    });
    assert_eq!(t.payer.outbound_payment_count(), 1, "paid exactly once");
    let xpays = t
        .payer_rpc
        .rpc_log
        .0
        .lock()
        .unwrap()
        .calls
        .iter()
        .filter(|(m, _)| m == "xpay" || m == "pay")
        .count();
    assert_eq!(xpays, 1, "one xpay for three pay() calls");
}

#[test]
fn ln_cln_plugin_uses_lightningd_as_its_lightning_node() {
    let node = BitcoinNode::start();
    let ln = LightningdNode::start(&node);
    let (plugin, init) =
        ClnPlugin::start_with_lightning(BitcoinSettings::of(&node), json!({}), Some(ln.clone()));
    assert_eq!(init, json!({}), "{init}");
    let info = plugin.call_ok("dstore-ln-getinfo", json!({}), SHORT);
    assert_eq!(info["node_id"], ln.node.node_id().to_string(), "{info}");
    assert_eq!(info["addresses"][0], ln.listen.to_string(), "{info}");
    let info = plugin.call_ok("dstore-ln-getinfo", json!([]), SHORT);
    assert_eq!(info["node_id"], ln.node.node_id().to_string());
    // Channel management is lightningd's own in this mode.
    let err = plugin
        .call("dstore-ln-newaddress", json!([]), SHORT)
        .unwrap_err();
    assert!(
        err["message"]
            .as_str()
            .unwrap_or("")
            .contains("lightningd's own commands"),
        "{err}"
    );
    assert!(!plugin.rpc_calls("getinfo").is_empty());
    plugin.assert_stdout_clean();
}

fn crs_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-crs")
}

/// A mode-N download where both plugins run under lightningd (the harness, each backed by
/// its own in-process LDK node, with a channel renter → farmer): the farmer's invoice comes
/// from lightningd's `invoice` with its x, the renter pays with `xpay` and reads x back
/// from lightningd; nothing goes on the chain.
#[test]
fn ln_cln_download_between_two_plugins_under_lightningd() {
    const LONG: Duration = Duration::from_secs(600);
    const PRICE_SAT: u64 = 20_000;
    let node = BitcoinNode::start();
    let (renter_ln, farmer_ln) = (LightningdNode::start(&node), LightningdNode::start(&node));
    renter_ln.fund(&node);
    farmer_ln.fund(&node);
    let channel = renter_ln.open_channel(&node, &farmer_ln.uri(), CAPACITY_SAT, 0);
    farmer_ln.wait_usable(&channel);

    let peer_port = dstore_tests::ports::free_ports(1)[0];
    let crs = crs_dir().display().to_string();
    let (farmer, init) = ClnPlugin::start_with_lightning(
        BitcoinSettings::of(&node),
        json!({
            "dstore-role": "farmer",
            "dstore-peer-bind": format!("127.0.0.1:{peer_port}"),
            "dstore-price-per-download-sat": PRICE_SAT,
            "dstore-crs-cache-dir": crs,
        }),
        Some(farmer_ln.clone()),
    );
    assert_eq!(init, json!({}), "farmer enabled");
    let (renter, init) = ClnPlugin::start_with_lightning(
        BitcoinSettings::of(&node),
        json!({"dstore-crs-cache-dir": crs}),
        Some(renter_ln.clone()),
    );
    assert_eq!(init, json!({}), "renter enabled");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let farmer_info: Value = reqwest::blocking::get(format!("{peer_url}/dstore/v1/info"))
        .expect("peer endpoint")
        .json()
        .expect("info JSON");
    assert_eq!(
        farmer_info["lightning"]["node_id"],
        farmer_ln.node.node_id().to_string(),
        "the farmer advertises lightningd's node: {farmer_info}"
    );
    let address = renter.call_ok("dstore-getnewaddress", json!([]), SHORT);
    node.mine_to(1, address.as_str().expect("address"));
    node.mine(100);
    renter_ln.wait_synced(&node);
    farmer_ln.wait_synced(&node);

    let dir = tempfile::tempdir().unwrap();
    let data = dstore_tests::parties::seeded_bytes(19, 300_000);
    let input = dir.path().join("in");
    std::fs::write(&input, &data).unwrap();
    let id = renter.call_ok(
        "dstore-open",
        json!({"farmer_peer_url": peer_url, "file_path": input.display().to_string()}),
        LONG,
    );
    let id = id.as_str().expect("contract id").to_string();
    let (mempool, height) = (node.rpc_ok("getrawmempool", json!([])), node.block_count());

    let output = dir.path().join("out");
    let done = renter.call_ok(
        "dstore-download",
        json!({"contract_id": id, "output_path": output.display().to_string(), "wait_seconds": 240, "mode": "ln"}),
        LONG,
    );
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["mode"], "ln", "{done}");
    assert_eq!(done["price_msat"], PRICE_SAT * 1000);
    assert!(std::fs::read(&output).unwrap() == data, "byte-exact");
    assert_eq!(
        node.rpc_ok("getrawmempool", json!([])),
        mempool,
        "nothing on the chain"
    );
    assert_eq!(node.block_count(), height);
    // Through lightningd: one invoice with the farmer's x, one xpay, the renter's listpays.
    let invoices = farmer.rpc_calls("invoice");
    assert_eq!(invoices.len(), 1, "{invoices:?}");
    assert!(invoices[0]["preimage"].is_string(), "{invoices:?}");
    assert_eq!(renter.rpc_calls("xpay").len(), 1);
    assert!(!renter.rpc_calls("listpays").is_empty());
    assert_eq!(renter_ln.outbound_payment_count(), 1);
    let hash = done["payment_hash"].as_str().expect("payment_hash");
    let pays = lightningd_pays(&renter, hash);
    assert_eq!(pays[0]["status"], "complete", "{pays}");
    renter.assert_stdout_clean();
    farmer.assert_stdout_clean();
}

/// `listpays` for `hash` on the plugin's lightningd socket.
fn lightningd_pays(plugin: &ClnPlugin, hash: &str) -> Value {
    let socket = plugin.lightning_dir.join("lightning-rpc");
    dstore_tests::cln_harness::lightningd_call(&socket, "listpays", json!({"payment_hash": hash}))
        .expect("listpays")["pays"]
        .clone()
}
