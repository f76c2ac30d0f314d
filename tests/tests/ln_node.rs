//! The embedded Lightning node (`--lightning`): the dstore-ln-* methods between two real plugins on regtest (fund, connect, open with push, usable on both sides, cooperative close), clear errors for bad input, and the Lightning API itself (invoice under a stored preimage, pay once, claim) on two in-process LDK nodes.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dstore_plugin::ln::ldk::{LdkNode, LdkSettings};
use dstore_plugin::ln::{payment_hash_of, Lightning, LnError, PaymentOutcome};
use dstore_tests::ln::{
    channel, free_port, ln_info, node_id, open_channel, peer_uri, start_ln_plugin,
};
use dstore_tests::{wait_until, BitcoinNode, PluginProcess};
use ldk_node::tokio;
use serde_json::{json, Value};

const STRANGER: &str = "02eec7245d6b7d2ccb30380bfbe2a3648cd7a942653f5aa340edcea1f283686619";
const LN_SYNC: Duration = Duration::from_secs(120);

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn mempool_len(node: &BitcoinNode) -> usize {
    node.rpc_ok("getrawmempool", json!([]))
        .as_array()
        .expect("mempool")
        .len()
}

#[test]
fn ln_node_channel_opens_with_push_is_usable_on_both_sides_and_closes_cooperatively() {
    let node = BitcoinNode::start();
    let dir = tempfile::tempdir().unwrap();
    let peer_port = free_port();
    let payer = start_ln_plugin(&node, &dir.path().join("payer"), &[]);
    let farmer_flags = [
        "--farmer".to_string(),
        format!("--peer-bind=127.0.0.1:{peer_port}"),
        format!("--storage-dir={}", dir.path().join("storage").display()),
    ];
    let farmer = start_ln_plugin(&node, &dir.path().join("farmer"), &farmer_flags);

    let info = ln_info(&payer);
    assert_eq!(info["network"], "regtest");
    assert_eq!(info["node_id"].as_str().unwrap().len(), 66, "{info}");
    assert_eq!(info["channels"], 0);
    assert!(info["addresses"][0]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    let ln_dir = dir.path().join("payer").join("regtest").join("ln");
    assert_eq!(mode(&ln_dir), 0o700);
    assert_eq!(mode(&ln_dir.join("keys_seed")), 0o600);

    // The farmer advertises its Lightning node on /dstore/v1/info.
    let advertised: Value =
        reqwest::blocking::get(format!("http://127.0.0.1:{peer_port}/dstore/v1/info"))
            .unwrap()
            .json()
            .unwrap();
    assert_eq!(
        advertised["lightning"]["node_id"],
        node_id(&farmer).as_str()
    );
    assert_eq!(
        advertised["lightning"]["address"],
        ln_info(&farmer)["addresses"][0]
    );
    // And in its signed market advert.
    assert_eq!(
        advertised["advert"]["advert"]["lightning"], advertised["lightning"],
        "{advertised}"
    );

    // Unfunded: the open is refused as insufficient funds and nothing is listed.
    payer.call_ok("dstore-ln-connect", json!([peer_uri(&farmer)]));
    let err = payer
        .call(
            "dstore-ln-openchannel",
            json!([node_id(&farmer), 1_000_000]),
        )
        .unwrap_err();
    assert_eq!(err.code, -6, "{err}");
    assert_eq!(
        payer.call_ok("dstore-ln-listchannels", json!([])),
        json!([])
    );

    let channel_id = open_channel(&node, &payer, &farmer, 1_000_000, 100_000);
    let ours = channel(&payer, &channel_id).unwrap();
    let theirs = channel(&farmer, &channel_id).unwrap();
    for c in [&ours, &theirs] {
        assert_eq!(c["capacity_sat"], 1_000_000, "{c}");
        assert_eq!(c["is_channel_ready"], true, "{c}");
        assert_eq!(c["funding_txid"], ours["funding_txid"]);
    }
    assert_eq!(ours["counterparty_node_id"], node_id(&farmer).as_str());
    assert_eq!(theirs["counterparty_node_id"], node_id(&payer).as_str());
    let pushed = theirs["outbound_msat"].as_u64().unwrap();
    assert!(pushed > 0 && pushed <= 100_000_000, "{theirs}");
    assert!(
        ours["outbound_msat"].as_u64().unwrap() > 800_000_000,
        "{ours}"
    );
    assert!(ours["inbound_msat"].as_u64().unwrap() > 0, "{ours}");
    for p in [&payer, &farmer] {
        let info = ln_info(p);
        assert_eq!(
            (info["channels"].clone(), info["usable_channels"].clone()),
            (json!(1), json!(1))
        );
    }

    // Cooperative close: the funds come back on-chain to the payer's Lightning wallet.
    let onchain_before = ln_info(&payer)["onchain_sat"].as_u64().unwrap();
    let closing = payer.call_ok("dstore-ln-closechannel", json!([channel_id]));
    assert_eq!(closing["channel_id"], channel_id.as_str());
    wait_until("the closing transaction", Duration::from_secs(60), || {
        (mempool_len(&node) > 0).then_some(())
    });
    node.mine(1);
    for p in [&payer, &farmer] {
        wait_until("the channel to be gone", LN_SYNC, || {
            channel(p, &channel_id).is_none().then_some(())
        });
    }
    wait_until("the channel's funds back on-chain", LN_SYNC, || {
        let onchain = ln_info(&payer)["onchain_sat"].as_u64()?;
        (onchain > onchain_before + 850_000).then_some(())
    });
    let farmer_before = 2 * dstore_tests::ln::ANCHOR_RESERVE_SAT;
    wait_until(
        "the pushed funds back on the farmer's chain",
        LN_SYNC,
        || {
            let onchain = ln_info(&farmer)["onchain_sat"].as_u64()?;
            (onchain >= farmer_before + 100_000).then_some(())
        },
    );
}

#[test]
fn ln_node_bad_input_and_no_lightning_give_clear_errors() {
    let node = BitcoinNode::start();
    let plain = PluginProcess::start(&node);
    for (method, params) in [
        ("dstore-ln-getinfo", json!([])),
        ("dstore-ln-newaddress", json!([])),
        ("dstore-ln-listchannels", json!([])),
        ("dstore-ln-openchannel", json!([STRANGER, 100_000])),
        ("dstore-ln-closechannel", json!(["00"])),
    ] {
        let err = plain.call(method, params).unwrap_err();
        assert_eq!(err.code, -32601, "{method}: {err}");
        assert!(
            err.message.contains("start with --lightning"),
            "{method}: {err}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let ln = start_ln_plugin(&node, dir.path(), &[]);
    let closed_port = free_port();
    let zero_channel = "00".repeat(32);
    for (method, params, expected) in [
        (
            "dstore-ln-openchannel",
            json!([STRANGER, 100_000]),
            "unknown node id",
        ),
        (
            "dstore-ln-openchannel",
            json!(["zz", 100_000]),
            "invalid node id",
        ),
        (
            "dstore-ln-openchannel",
            json!([format!("{STRANGER}@127.0.0.1:{closed_port}"), "abc"]),
            "invalid amount_sat",
        ),
        ("dstore-ln-openchannel", json!([STRANGER, 0]), "above 0"),
        (
            "dstore-ln-openchannel",
            json!([STRANGER, -5]),
            "invalid amount_sat",
        ),
        (
            "dstore-ln-openchannel",
            json!([STRANGER, 1000, 1000]),
            "push_sat",
        ),
        (
            "dstore-ln-openchannel",
            json!({"node_id": STRANGER, "amount_sat": 1.5}),
            "invalid amount_sat",
        ),
        ("dstore-ln-connect", json!([STRANGER]), "node_id@host:port"),
        (
            "dstore-ln-connect",
            json!([format!("{STRANGER}@nowhere")]),
            "invalid peer address",
        ),
        (
            "dstore-ln-closechannel",
            json!([zero_channel]),
            "unknown channel",
        ),
    ] {
        let err = ln.call(method, params.clone()).unwrap_err();
        assert_eq!(err.code, -8, "{method} {params}: {err}");
        assert!(err.message.contains(expected), "{method} {params}: {err}");
    }
    let err = ln
        .call(
            "dstore-ln-connect",
            json!([format!("{STRANGER}@127.0.0.1:{closed_port}")]),
        )
        .unwrap_err();
    assert_eq!(err.code, -1, "{err}");
    assert!(err.message.contains("cannot connect"), "{err}");
    let err = ln.call("dstore-ln-openchannel", json!([])).unwrap_err();
    assert_eq!(err.code, -1, "usage: {err}");
    // Nothing changed.
    assert_eq!(ln.call_ok("dstore-ln-listchannels", json!([])), json!([]));
    assert_eq!(ln_info(&ln)["channels"], 0);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn settings(node: &BitcoinNode, dir: &Path) -> LdkSettings {
    let cookie = std::fs::read_to_string(node.cookie_path()).unwrap();
    let (user, password) = cookie.trim().split_once(':').unwrap();
    let url = url_port(&node.rpc_url());
    LdkSettings {
        dir: dir.to_path_buf(),
        network: bitcoin::Network::Regtest,
        listen: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        rpc_host: "127.0.0.1".into(),
        rpc_port: url,
        rpc_user: user.into(),
        rpc_password: password.into(),
        never_settle: false,
    }
}

fn url_port(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

/// Waits until the in-process node has a usable channel whose outbound capacity passes `check`.
fn wait_outbound(n: &Arc<LdkNode>, what: &str, check: impl Fn(u64) -> bool) {
    wait_until(what, LN_SYNC, || {
        let c = n.list_channels().into_iter().find(|c| c.is_usable)?;
        check(c.outbound_msat).then_some(())
    });
}

#[test]
fn ln_api_invoice_settles_only_with_the_stored_preimage_and_pays_once() {
    let node = BitcoinNode::start();
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let farmer = rt
        .block_on(LdkNode::start(settings(&node, &dir.path().join("farmer"))))
        .unwrap();
    let renter = rt
        .block_on(LdkNode::start(settings(&node, &dir.path().join("renter"))))
        .unwrap();
    for n in [&farmer, &renter] {
        let address = rt.block_on(n.new_address()).unwrap();
        node.mine_to(1, &address.to_string());
    }
    node.mine(100);
    for n in [&farmer, &renter] {
        wait_until("the coinbase in the Lightning wallet", LN_SYNC, || {
            let b = rt.block_on(n.balances()).ok()?;
            (b.spendable_onchain_sat > 1_000_000).then_some(())
        });
    }
    let farmer_addr = farmer.info().addresses[0].parse().unwrap();
    rt.block_on(renter.connect(farmer.node_id(), farmer_addr))
        .unwrap();
    let farmer_addr = farmer.info().addresses[0].parse().unwrap();
    let opened = rt
        .block_on(renter.open_channel(farmer.node_id(), farmer_addr, 500_000, None, false))
        .unwrap();
    node.wait_for_tx(
        opened.funding_txid.as_deref().unwrap(),
        Duration::from_secs(30),
    );
    node.mine(6);
    wait_outbound(&renter, "the renter's channel usable", |_| true);
    wait_outbound(&farmer, "the farmer's channel usable", |_| true);

    let (ln_farmer, ln_renter) = (
        Lightning::Ldk(farmer.clone()),
        Lightning::Ldk(renter.clone()),
    );
    let price_msat = 20_000_000;
    assert!(rt
        .block_on(ln_renter.can_pay(&farmer.node_id(), price_msat))
        .unwrap());
    assert!(!rt
        .block_on(ln_renter.can_pay(&farmer.node_id(), 600_000_000))
        .unwrap());
    assert!(
        !rt.block_on(ln_farmer.can_pay(&renter.node_id(), price_msat))
            .unwrap(),
        "the farmer has no outbound room"
    );
    assert!(matches!(
        rt.block_on(ln_farmer.invoice([1; 32], 0, "zero", 3600)),
        Err(LnError::InvalidParameter(_))
    ));
    assert!(matches!(
        rt.block_on(ln_renter.pay("lnbcrt1garbage")),
        Err(LnError::InvalidInvoice(_))
    ));

    let preimage = [0x42; 32];
    let hash = payment_hash_of(&preimage);
    let invoice = rt
        .block_on(ln_farmer.invoice(preimage, price_msat, "dstore download test", 3600))
        .unwrap();
    let stored = dir
        .path()
        .join("farmer")
        .join("preimages")
        .join(hex::encode(hash));
    assert_eq!(
        mode(&stored),
        0o600,
        "the preimage is stored privately before the invoice"
    );
    assert_eq!(
        rt.block_on(ln_renter.payment(hash)).unwrap(),
        PaymentOutcome::Unknown
    );
    let before = renter.list_channels()[0].outbound_msat;

    rt.block_on(ln_renter.pay(&invoice)).unwrap();
    let outcome = rt
        .block_on(ln_renter.wait_payment(hash, Duration::from_secs(60)))
        .unwrap();
    match outcome {
        PaymentOutcome::Succeeded {
            preimage: x,
            fee_msat,
        } => {
            assert_eq!(x, preimage, "the renter learns exactly the stored preimage");
            assert_eq!(fee_msat.unwrap_or(0), 0, "a direct channel charges no fee");
        }
        other => panic!("payment did not succeed: {other:?}"),
    }
    wait_outbound(&renter, "the renter's balance to drop by the price", |o| {
        o == before - price_msat
    });

    // A second pay of the same invoice sends nothing.
    rt.block_on(ln_renter.pay(&invoice)).unwrap();
    assert!(matches!(
        rt.block_on(ln_renter.payment(hash)).unwrap(),
        PaymentOutcome::Succeeded { .. }
    ));
    wait_outbound(&renter, "the balance unchanged by the second pay", |o| {
        o == before - price_msat
    });
    assert_eq!(renter.list_channels()[0].outbound_msat, before - price_msat);

    for n in [farmer, renter] {
        rt.block_on(n.stop());
    }
}
