//! Core Lightning plugin mode (issue 8). There is no lightningd binary here, so each test
//! drives the real `dstore-plugin` binary through `dstore_tests::cln_harness`, which
//! behaves as lightningd does on the plugin's stdin/stdout and serves lightningd's RPC
//! socket (`getinfo`, `listconfigs`, `sendcustommsg`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use dstore_tests::cln_harness::{BitcoinSettings, ClnPlugin};
use dstore_tests::parties::seeded_bytes;
use dstore_tests::{ports, BitcoinNode, PluginProcess};
use serde_json::{json, Value};

const PRICE_SAT: u64 = 20_000;
const SHORT: Duration = Duration::from_secs(60);
const LONG: Duration = Duration::from_secs(900);

fn crs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-crs")
}

#[test]
fn cln_manifest_lists_every_method_with_usage_and_typed_described_options() {
    let plugin = ClnPlugin::spawn(BitcoinSettings::default());
    let manifest = plugin.getmanifest();
    let methods = manifest["rpcmethods"].as_array().expect("rpcmethods");
    let mut names: Vec<&str> = methods
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    names.sort();
    let mut expected: Vec<&str> = dstore_plugin::methods::METHODS
        .iter()
        .map(|m| m.name)
        .chain(["dstore-discover", "dstore-peers"])
        .collect();
    expected.sort();
    assert_eq!(names, expected, "{manifest}");
    for m in methods {
        let name = m["name"].as_str().unwrap();
        assert!(!m["description"].as_str().unwrap_or("").is_empty(), "{m}");
        let usage = m["usage"]
            .as_str()
            .unwrap_or_else(|| panic!("no usage: {m}"));
        if let Some(spec) = dstore_plugin::methods::find(name) {
            assert_eq!(usage, dstore_plugin::cln::usage(spec), "{m}");
            for p in spec.params {
                assert!(usage.contains(p.name), "{name}: {usage}");
                assert_eq!(usage.contains(&format!("[{}]", p.name)), !p.required);
            }
        }
    }
    let open = methods.iter().find(|m| m["name"] == "dstore-open").unwrap();
    assert!(open["usage"]
        .as_str()
        .unwrap()
        .starts_with("farmer_peer_url file_path [download_price_sat]"));
    let discover = methods
        .iter()
        .find(|m| m["name"] == "dstore-discover")
        .unwrap();
    assert_eq!(discover["usage"], "node_id [timeout_secs]");

    let options = manifest["options"].as_array().expect("options");
    let mut option_names: Vec<&str> = options
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    option_names.sort();
    for wanted in [
        "dstore-datadir",
        "dstore-network",
        "dstore-bitcoind-rpc-url",
        "dstore-bitcoind-cookie",
        "dstore-role",
        "dstore-peer-bind",
        "dstore-storage-dir",
        "dstore-price-per-download-sat",
        "dstore-watchtower-url",
    ] {
        assert!(
            option_names.contains(&wanted),
            "{wanted} missing: {option_names:?}"
        );
    }
    for o in options {
        assert!(o["name"].as_str().unwrap().starts_with("dstore-"), "{o}");
        assert!(
            ["string", "int"].contains(&o["type"].as_str().unwrap_or("")),
            "{o}"
        );
        assert!(o["description"].as_str().unwrap_or("").len() > 10, "{o}");
    }
    let hooks = manifest["hooks"].as_array().expect("hooks");
    assert_eq!(hooks.len(), 1, "{manifest}");
    assert_eq!(hooks[0]["name"], "custommsg");
    assert!(manifest["subscriptions"]
        .as_array()
        .unwrap()
        .contains(&json!("shutdown")));
    assert_eq!(manifest["custommessages"], json!([0xD5A1]));
    assert_eq!(manifest["dynamic"], true);
    assert_eq!(manifest["nonnumericids"], true);
    plugin.assert_stdout_clean();
    // lightningd --help hangs up after getmanifest: the plugin just exits.
    let status = plugin.close_and_wait(SHORT);
    assert!(status.success(), "{status}");
}

#[test]
fn cln_disable_when_bitcoind_is_down_or_on_another_network() {
    // Nothing listens on lightningd's bitcoin-rpcport.
    let dead_port = ports::free_ports(1)[0];
    let (mut plugin, init) = ClnPlugin::start(
        BitcoinSettings {
            rpcport: Some(dead_port),
            rpcconnect: Some("127.0.0.1".into()),
            rpcuser: Some("user".into()),
            rpcpassword: Some("password".into()),
            ..BitcoinSettings::default()
        },
        json!({}),
    );
    let reason = init["disable"]
        .as_str()
        .unwrap_or_else(|| panic!("not disabled: {init}"));
    assert!(
        reason.contains(&format!("127.0.0.1:{dead_port}")),
        "{reason}"
    );
    assert!(
        !reason.contains("password"),
        "no credentials in the reason: {reason}"
    );
    assert!(plugin.wait_exit(SHORT).success(), "exits cleanly");
    assert_eq!(
        plugin.rpc_calls("listconfigs").len(),
        1,
        "defaults from listconfigs"
    );
    plugin.assert_stdout_clean();

    // bitcoind is up, but on regtest while the plugin is told signet.
    let node = BitcoinNode::start();
    let (mut plugin, init) = ClnPlugin::start(
        BitcoinSettings::default(),
        json!({
            "dstore-network": "signet",
            "dstore-bitcoind-rpc-url": node.rpc_url(),
            "dstore-bitcoind-cookie": node.cookie_path().display().to_string(),
        }),
    );
    let reason = init["disable"]
        .as_str()
        .unwrap_or_else(|| panic!("not disabled: {init}"));
    assert!(
        reason.contains("regtest") && reason.contains("signet"),
        "{reason}"
    );
    assert!(plugin.wait_exit(SHORT).success());
    plugin.assert_stdout_clean();

    // A bad option value is a reason too, not a crash.
    let (mut plugin, init) =
        ClnPlugin::start(BitcoinSettings::of(&node), json!({"dstore-role": "miner"}));
    let reason = init["disable"]
        .as_str()
        .unwrap_or_else(|| panic!("not disabled: {init}"));
    assert!(reason.contains("dstore-role"), "{reason}");
    assert!(plugin.wait_exit(SHORT).success());
    plugin.assert_stdout_clean();
}

#[test]
fn cln_bad_input_gets_errors_and_discovery_works_over_custommsg() {
    let node = BitcoinNode::start();
    let (mut plugin, init) = ClnPlugin::start(BitcoinSettings::of(&node), json!({}));
    assert_eq!(init, json!({}), "enabled");
    let info = plugin.call_ok("dstore-getinfo", json!({}), SHORT);
    assert_eq!(info["network"], "regtest");
    assert_eq!(info["roles"], json!(["renter"]));
    // The defaults came from lightningd: its lightning-dir and listconfigs.
    assert!(plugin.lightning_dir.join("dstore/regtest/seed").is_file());
    assert!(!plugin.rpc_calls("getinfo").is_empty());

    // Malformed JSON: a parse error with a null id.
    plugin.send_raw(b"{\"jsonrpc\": \"2.0\", \"id\": \"cln:bad#1\", \"method\": \n\n");
    let reply = plugin.wait_reply(&Value::Null, SHORT);
    assert_eq!(reply["error"]["code"], -32700, "{reply}");
    // Not an object.
    plugin.send_raw(b"[1, 2, 3]\n\n");
    let reply = plugin.wait_reply(&Value::Null, SHORT);
    assert_eq!(reply["error"]["code"], -32600, "{reply}");
    // Unknown method.
    let err = plugin
        .call("dstore-nonsense", json!([]), SHORT)
        .unwrap_err();
    assert_eq!(err["code"], -32601, "{err}");
    let err = plugin.call("getinfo", json!({}), SHORT).unwrap_err();
    assert_eq!(err["code"], -32601, "{err}");
    // Wrong parameter types, positional and named: the bitcoind mode's errors.
    let err = plugin
        .call("dstore-status", json!([123]), SHORT)
        .unwrap_err();
    assert_eq!(err["code"], -3, "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("contract_id"),
        "{err}"
    );
    let err = plugin
        .call(
            "dstore-send",
            json!({"address": "bcrt1q", "amount_btc": [1]}),
            SHORT,
        )
        .unwrap_err();
    assert_eq!(err["code"], -3, "{err}");
    let err = plugin
        .call("dstore-open", json!({"bogus": 1}), SHORT)
        .unwrap_err();
    assert_eq!(err["code"], -8, "{err}");
    let err = plugin
        .call("dstore-download", json!(["only-one"]), SHORT)
        .unwrap_err();
    assert_eq!(err["code"], -1, "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("dstore-download"),
        "usage: {err}"
    );
    let err = plugin.call("dstore-getinfo", json!(7), SHORT);
    assert_eq!(err.unwrap_err()["code"], -32600);
    let err = plugin
        .call("dstore-discover", json!(["not-a-node"]), SHORT)
        .unwrap_err();
    assert_eq!(err["code"], -3, "{err}");
    let err = plugin
        .call("dstore-help", json!(["dstore-nope"]), SHORT)
        .unwrap_err();
    assert_eq!(err["code"], -1, "{err}");

    // Bad custommsg payloads: logged, and lightningd is told to continue.
    let peer = "03".to_string() + &"11".repeat(32);
    for (payload, log) in [
        ("zz", "not hex"),
        ("d5", "no type"),
        ("d5a1", "without a kind byte"),
        ("d5a177", "unknown dstore message kind"),
        (&format!("d5a102{}", hex::encode(b"{not json")), "not JSON"),
        (
            &format!(
                "d5a102{}",
                hex::encode(br#"{"farmer":true,"peer_url":"ftp://x","identity":"00"}"#)
            ),
            "bad peer_url",
        ),
    ] {
        let result = plugin.hook("custommsg", json!({"peer_id": peer, "payload": payload}));
        assert_eq!(result, json!({"result": "continue"}), "{payload}");
        let line = plugin.wait_log(log, SHORT);
        assert_eq!(line["level"], "error", "{line}");
    }
    let result = plugin.hook("custommsg", json!({"payload": 5}));
    assert_eq!(result, json!({"result": "continue"}));
    // Another plugin's message type is left alone.
    let result = plugin.hook("custommsg", json!({"peer_id": peer, "payload": "fff10102"}));
    assert_eq!(result, json!({"result": "continue"}));

    // A discovery request from a peer: a renter answers that it is not a farmer.
    let result = plugin.hook("custommsg", json!({"peer_id": peer, "payload": "d5a101"}));
    assert_eq!(result, json!({"result": "continue"}));
    let sent = dstore_tests::wait_until("the answer", SHORT, || {
        plugin.rpc_calls("sendcustommsg").into_iter().next()
    });
    assert_eq!(sent["node_id"], peer.as_str());
    let msg = hex::decode(sent["msg"].as_str().unwrap()).unwrap();
    assert_eq!(&msg[..3], &[0xD5, 0xA1, 0x02]);
    let body: Value = serde_json::from_slice(&msg[3..]).unwrap();
    assert_eq!(body, json!({"farmer": false, "network": "regtest"}));

    // dstore-discover: the request goes out, the farmer's answer comes back through the
    // hook, and the call returns it.
    let farmer_node = "02".to_string() + &"22".repeat(32);
    let id = json!("cli:dstore-discover#1/cln:dstore-discover#99");
    plugin.send(
        &json!({"jsonrpc": "2.0", "id": id, "method": "dstore-discover",
        "params": {"node_id": farmer_node, "timeout_secs": 30}}),
    );
    dstore_tests::wait_until("the discovery request", SHORT, || {
        plugin
            .rpc_calls("sendcustommsg")
            .into_iter()
            .find(|c| c["node_id"] == farmer_node.as_str() && c["msg"] == "d5a101")
    });
    let identity = "ab".repeat(32);
    let answer = json!({"farmer": true, "network": "regtest", "peer_url": "http://127.0.0.1:9737", "identity": identity});
    let payload = format!("d5a102{}", hex::encode(answer.to_string()));
    let result = plugin.hook(
        "custommsg",
        json!({"peer_id": farmer_node, "payload": payload}),
    );
    assert_eq!(result, json!({"result": "continue"}));
    let reply = plugin.wait_reply(&id, SHORT);
    let learned = &reply["result"];
    assert_eq!(learned["node_id"], farmer_node.as_str(), "{reply}");
    assert_eq!(learned["farmer"], true);
    assert_eq!(learned["peer_url"], "http://127.0.0.1:9737");
    assert_eq!(learned["identity"], identity.as_str());
    let peers = plugin.call_ok("dstore-peers", json!([]), SHORT);
    assert_eq!(peers["peers"].as_array().unwrap().len(), 1, "{peers}");
    // No answer: a clear error after the timeout.
    let silent = "02".to_string() + &"33".repeat(32);
    let err = plugin
        .call("dstore-discover", json!([silent, 1]), SHORT)
        .unwrap_err();
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("no dstore answer"),
        "{err}"
    );

    // Still running and answering; stdout held only protocol messages.
    assert!(plugin.running());
    let info = plugin.call_ok("dstore-getinfo", json!([]), SHORT);
    assert_eq!(info["network"], "regtest");
    plugin.assert_stdout_clean();
    assert!(
        plugin.logs().iter().any(|l| l["level"] == "info"),
        "logs reach lightningd"
    );
    // dstore-stop answers, then the plugin exits.
    let stopped = plugin.call_ok("dstore-stop", json!([]), SHORT);
    assert_eq!(stopped, "dstore-plugin stopping");
    assert!(plugin.wait_exit(SHORT).success());
    plugin.assert_stdout_clean();
}

#[test]
fn cln_farmer_role_serves_its_peer_endpoint_and_answers_discovery() {
    let node = BitcoinNode::start();
    let peer_port = ports::free_ports(1)[0];
    let (plugin, init) = ClnPlugin::start(
        BitcoinSettings::of(&node),
        json!({
            "dstore-role": "farmer",
            "dstore-peer-bind": format!("127.0.0.1:{peer_port}"),
            "dstore-price-per-download-sat": PRICE_SAT,
        }),
    );
    assert_eq!(init, json!({}), "enabled");
    let info = plugin.call_ok("dstore-getinfo", json!([]), SHORT);
    assert_eq!(info["roles"], json!(["renter", "farmer"]));
    // The HTTP peer endpoint is up, with the configured price.
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let farmer_info: Value = reqwest::blocking::get(format!("{peer_url}/dstore/v1/info"))
        .expect("peer endpoint")
        .json()
        .expect("info JSON");
    assert_eq!(farmer_info["price_per_download_sat"], PRICE_SAT);
    // A discovery request from a Lightning peer gets the peer URL and identity back.
    let renter_node = "03".to_string() + &"44".repeat(32);
    let result = plugin.hook(
        "custommsg",
        json!({"peer_id": renter_node, "payload": "d5a101"}),
    );
    assert_eq!(result, json!({"result": "continue"}));
    let sent = dstore_tests::wait_until("the answer", SHORT, || {
        plugin.rpc_calls("sendcustommsg").into_iter().next()
    });
    assert_eq!(sent["node_id"], renter_node.as_str());
    let msg = hex::decode(sent["msg"].as_str().unwrap()).unwrap();
    assert_eq!(&msg[..3], &[0xD5, 0xA1, 0x02]);
    let body: Value = serde_json::from_slice(&msg[3..]).unwrap();
    assert_eq!(body["farmer"], true, "{body}");
    assert_eq!(body["peer_url"], peer_url.as_str());
    assert_eq!(body["identity"], farmer_info["identity"]);
    plugin.assert_stdout_clean();
    assert!(plugin.close_and_wait(SHORT).success());
}

#[test]
fn cln_open_and_download_with_named_and_positional_params_pay_the_farmer() {
    let node = BitcoinNode::start();
    let dir = tempfile::Builder::new()
        .prefix("dstore-cln-e2e-")
        .tempdir()
        .expect("temp dir");
    let peer_port = ports::free_ports(1)[0];
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let farmer = PluginProcess::start_in(
        &node,
        &dir.path().join("farmer"),
        &[
            "--farmer",
            &format!("--peer-bind=127.0.0.1:{peer_port}"),
            &format!(
                "--storage-dir={}",
                dir.path().join("farmer-storage").display()
            ),
            &format!("--price-per-download-sat={PRICE_SAT}"),
            &format!("--crs-cache-dir={}", crs_dir().display()),
        ],
    );
    let (renter, init) = ClnPlugin::start(
        BitcoinSettings::of(&node),
        json!({"dstore-crs-cache-dir": crs_dir().display().to_string()}),
    );
    assert_eq!(init, json!({}), "enabled");

    // Fund the renter's wallet through the plugin protocol.
    let address = renter.call_ok("dstore-getnewaddress", json!([]), SHORT);
    node.mine_to(1, address.as_str().expect("address"));
    node.mine(100);
    let balance = renter.call_ok("dstore-getbalance", json!({}), SHORT);
    assert_eq!(balance, json!(50.0), "{balance}");
    let farmer_start = btc_sat(&farmer.call_ok("dstore-getbalance", json!([])));

    let mut paid = 0;
    for (round, named) in [(0u64, true), (1, false)] {
        let data = seeded_bytes(round, 100_000 + round as usize);
        let input = dir.path().join(format!("in-{round}"));
        std::fs::write(&input, &data).unwrap();
        let output = dir.path().join(format!("out-{round}"));
        let input_s = input.display().to_string();
        let output_s = output.display().to_string();
        let open_params = if named {
            json!({"farmer_peer_url": peer_url, "file_path": input_s})
        } else {
            json!([peer_url, input_s])
        };
        let download_params = |id: &str| {
            if named {
                json!({"contract_id": id, "output_path": output_s})
            } else {
                json!([id, output_s])
            }
        };
        let started = Instant::now();
        let id = renter.call_ok("dstore-open", open_params, LONG);
        let id = id.as_str().expect("contract id").to_string();
        assert_eq!(id.len(), 64, "{id}");
        eprintln!("round {round}: dstore-open took {:?}", started.elapsed());
        let status = renter.call_ok("dstore-status", json!([id]), SHORT);
        assert_eq!(status["bytes_done"], status["bytes_total"], "{status}");

        let started = Instant::now();
        let first = renter.call_ok("dstore-download", download_params(&id), LONG);
        // The download goes on in the background while TX1 confirms: mine as a user would.
        let result = dstore_tests::market::finish_download(
            &node,
            first,
            || renter.call_ok("dstore-status", json!([id]), SHORT),
            || {
                renter
                    .call("dstore-download", download_params(&id), LONG)
                    .map_err(|e| e.to_string())
            },
        )
        .expect("dstore-download");
        eprintln!(
            "round {round}: dstore-download took {:?}",
            started.elapsed()
        );
        assert_eq!(std::fs::read(&output).expect("output written"), data);
        let tx3 = result["tx3"].as_str().expect("tx3").to_string();
        node.mine(1);
        assert_eq!(node.confirmations(&tx3), 1, "TX3 is mined");
        assert_eq!(
            node.confirmations(result["tx2"].as_str().unwrap()),
            1,
            "TX2 is mined"
        );
        let farmed = farmer.call_ok("dstore-status", json!([id]));
        let payouts = farmed["payouts"].as_array().expect("payouts");
        assert_eq!(payouts.len(), 1, "{farmed}");
        assert_eq!(payouts[0]["tx3"], tx3.as_str());
        paid += payouts[0]["amount_sat"].as_u64().unwrap();
        assert_eq!(
            btc_sat(&farmer.call_ok("dstore-getbalance", json!([]))),
            farmer_start + paid,
            "the payout is mined to the farmer's wallet"
        );
    }
    let listed = renter.call_ok("dstore-list", json!([]), SHORT);
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    renter.assert_stdout_clean();
    assert!(
        renter.close_and_wait(SHORT).success(),
        "exits when lightningd goes away"
    );
}

fn btc_sat(value: &Value) -> u64 {
    dstore_tests::node::btc_to_sat(value)
}
