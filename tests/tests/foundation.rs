//! Foundation: dstore-plugin in front of a real regtest bitcoind, driven by bitcoin-cli and
//! raw HTTP, and the plugin's own wallet.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use base64::Engine;
use dstore_tests::node::btc_to_sat;
use dstore_tests::{BitcoinNode, PluginProcess};
use serde_json::{json, Value};

/// A raw HTTP/1.1 exchange: (status, body).
fn http_post(port: u16, headers: &[(&str, String)], body: &[u8]) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut request = format!(
        "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    // A server may refuse a huge body before reading it all; that is not a test failure.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    parse_http_response(&response)
}

fn parse_http_response(response: &[u8]) -> (u16, Vec<u8>) {
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP header end");
    let head = String::from_utf8_lossy(&response[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("HTTP status");
    (status, response[split + 4..].to_vec())
}

fn basic(credentials: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials.trim())
    )
}

fn authed(plugin: &PluginProcess) -> Vec<(&'static str, String)> {
    vec![
        ("Authorization", basic(&plugin.credentials())),
        ("Content-Type", "application/json".to_string()),
    ]
}

fn json_body(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "bitcoin-cli failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("utf8")
}

#[test]
fn foundation_cli_output_is_byte_identical_through_the_plugin() {
    let node = BitcoinNode::start();
    node.mine(3);
    let plugin = PluginProcess::start(&node);

    let direct = stdout(&node.cli(&["getblockcount"]));
    assert_eq!(direct.trim(), "3");
    assert_eq!(stdout(&plugin.cli(&["getblockcount"])), direct);

    let hash = stdout(&node.cli(&["getblockhash", "0"]));
    assert_eq!(stdout(&plugin.cli(&["getblockhash", "0"])), hash);

    for verbosity in ["0", "1", "2"] {
        let direct = node.cli(&["getblock", hash.trim(), verbosity]);
        let proxied = plugin.cli(&["getblock", hash.trim(), verbosity]);
        assert_eq!(stdout(&proxied).as_bytes(), stdout(&direct).as_bytes());
    }
}

#[test]
fn foundation_unknown_method_gives_bitcoinds_error() {
    let node = BitcoinNode::start();
    let plugin = PluginProcess::start(&node);
    let direct = node.cli(&["nosuchmethod"]);
    let proxied = plugin.cli(&["nosuchmethod"]);
    assert_eq!(
        direct.status.code(),
        Some(89),
        "-32601 maps to exit code 89"
    );
    assert_eq!(proxied.status.code(), Some(89));
    assert_eq!(proxied.stderr, direct.stderr);
    assert_eq!(
        plugin.call("nosuchmethod", json!([])).unwrap_err().code,
        -32601
    );
    // An unknown dstore- method is answered by the plugin with the same code.
    let unknown = plugin.cli(&["dstore-nosuchmethod"]);
    assert_eq!(unknown.status.code(), Some(89));
}

#[test]
fn foundation_requests_without_valid_auth_get_401() {
    let node = BitcoinNode::start();
    let plugin = PluginProcess::start(&node);
    let body = br#"{"method":"getblockcount","params":[],"id":1}"#;

    let (status, _) = http_post(plugin.rpc_port, &[], body);
    assert_eq!(status, 401, "no Authorization header");
    let wrong = vec![("Authorization", basic("__cookie__:00"))];
    let (status, _) = http_post(plugin.rpc_port, &wrong, body);
    assert_eq!(status, 401, "wrong password");
    let (status, _) = http_post(
        plugin.rpc_port,
        &[("Authorization", "Bearer x".into())],
        body,
    );
    assert_eq!(status, 401, "not Basic auth");

    let bad_cookie = plugin.datadir().join("wrong.cookie");
    std::fs::write(&bad_cookie, "__cookie__:deadbeef").unwrap();
    let output = std::process::Command::new(dstore_tests::bins::bitcoin_cli())
        .arg("-regtest")
        .arg(format!("-rpcport={}", plugin.rpc_port))
        .arg(format!("-rpccookiefile={}", bad_cookie.display()))
        .arg("getblockcount")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Authorization failed"), "{stderr}");
    // The plugin is still serving.
    assert_eq!(plugin.call_ok("getblockcount", json!([])), json!(0));
}

#[test]
fn foundation_jsonrpc_1_0_2_0_and_batches_over_raw_http() {
    let node = BitcoinNode::start();
    node.mine(1);
    let plugin = PluginProcess::start(&node);
    let headers = authed(&plugin);

    // JSON-RPC 1.0: no jsonrpc member, both result and error in the reply.
    let (status, body) = http_post(
        plugin.rpc_port,
        &headers,
        br#"{"method":"getblockcount","params":[],"id":"a"}"#,
    );
    assert_eq!(status, 200);
    assert_eq!(
        json_body(&body),
        json!({"result": 1, "error": null, "id": "a"})
    );
    let (status, body) = http_post(
        plugin.rpc_port,
        &headers,
        br#"{"method":"dstore-help","params":["dstore-send"],"id":2}"#,
    );
    assert_eq!(status, 200);
    let reply = json_body(&body);
    assert!(reply["result"].as_str().unwrap().starts_with("dstore-send"));
    assert_eq!(reply["error"], Value::Null);

    // A 1.0 error travels as an HTTP error, as bitcoind does it.
    let (status, body) = http_post(
        plugin.rpc_port,
        &headers,
        br#"{"method":"dstore-nosuch","params":[],"id":3}"#,
    );
    assert_eq!(status, 404);
    assert_eq!(json_body(&body)["error"]["code"], json!(-32601));

    // JSON-RPC 2.0: HTTP 200 even for errors, the null member omitted.
    let (status, body) = http_post(
        plugin.rpc_port,
        &headers,
        br#"{"jsonrpc":"2.0","method":"dstore-nosuch","id":4}"#,
    );
    assert_eq!(status, 200);
    let reply = json_body(&body);
    assert_eq!(reply["jsonrpc"], json!("2.0"));
    assert!(reply.get("result").is_none());
    assert_eq!(reply["error"]["code"], json!(-32601));
    let (status, body) = http_post(
        plugin.rpc_port,
        &headers,
        br#"{"jsonrpc":"2.0","method":"getblockcount","id":5}"#,
    );
    assert_eq!(
        (status, json_body(&body)),
        (200, json!({"jsonrpc": "2.0", "result": 1, "id": 5}))
    );

    // A 2.0 notification gets no reply at all.
    let (status, body) = http_post(
        plugin.rpc_port,
        &headers,
        br#"{"jsonrpc":"2.0","method":"dstore-getinfo"}"#,
    );
    assert_eq!((status, body.len()), (204, 0));

    // A batch mixing bitcoind and dstore methods, a notification and an invalid element.
    let batch = json!([
        {"method": "getblockcount", "id": 1},
        {"jsonrpc": "2.0", "method": "dstore-help", "params": ["dstore-getinfo"], "id": 2},
        {"jsonrpc": "2.0", "method": "getblockcount"},
        {"jsonrpc": "2.0", "method": "getblockhash", "params": [0], "id": 3},
        {"id": 4},
        {"method": "dstore-nosuch", "id": 5}
    ]);
    let (status, body) = http_post(plugin.rpc_port, &headers, batch.to_string().as_bytes());
    assert_eq!(status, 200);
    let replies = json_body(&body);
    let replies = replies.as_array().expect("batch reply is an array");
    assert_eq!(
        replies.len(),
        5,
        "the notification gets no entry: {replies:?}"
    );
    assert_eq!(replies[0], json!({"result": 1, "error": null, "id": 1}));
    assert!(replies[1]["result"]
        .as_str()
        .unwrap()
        .starts_with("dstore-getinfo"));
    assert_eq!(replies[2]["result"].as_str().unwrap().len(), 64);
    assert_eq!(replies[3]["error"]["code"], json!(-32600));
    assert_eq!(replies[4]["error"]["code"], json!(-32601));
    assert_eq!(replies[4]["id"], json!(5));

    // bitcoin-cli's own batch (-getinfo) works through the plugin.
    let output = plugin.cli(&["-getinfo"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("Blocks: 1"));
}

#[test]
fn foundation_malformed_oversized_and_mistyped_requests_get_clear_errors() {
    let node = BitcoinNode::start();
    let plugin = PluginProcess::start(&node);
    let headers = authed(&plugin);

    let (status, body) = http_post(plugin.rpc_port, &headers, b"{\"method\": getblockcount");
    assert_eq!(status, 500, "bitcoind's status for a parse error");
    assert_eq!(json_body(&body)["error"]["code"], json!(-32700));

    let (status, body) = http_post(plugin.rpc_port, &headers, b"42");
    assert_eq!(status, 500);
    assert_eq!(json_body(&body)["error"]["code"], json!(-32700));

    let huge = vec![b' '; 33 * 1024 * 1024];
    let (status, body) = http_post(plugin.rpc_port, &headers, &huge);
    assert_eq!(status, 413);
    assert!(String::from_utf8_lossy(&body).contains("larger than"));

    let form = vec![
        headers[0].clone(),
        (
            "Content-Type",
            "application/x-www-form-urlencoded".to_string(),
        ),
    ];
    let (status, body) = http_post(plugin.rpc_port, &form, br#"{"method":"getblockcount"}"#);
    assert_eq!(status, 415);
    assert!(String::from_utf8_lossy(&body).contains("Content-Type"));

    // bitcoind's documented curl usage (text/plain) is accepted.
    let text = vec![
        headers[0].clone(),
        ("Content-Type", "text/plain;".to_string()),
    ];
    let (status, _) = http_post(
        plugin.rpc_port,
        &text,
        br#"{"method":"getblockcount","id":1}"#,
    );
    assert_eq!(status, 200);

    // Bad parameters to dstore methods are errors with bitcoind's codes.
    let err = plugin
        .call("dstore-send", json!(["notanaddress", "1"]))
        .unwrap_err();
    assert_eq!(err.code, -5, "{err}");
    let err = plugin.call("dstore-send", json!(["x"])).unwrap_err();
    assert_eq!(err.code, -1, "usage error: {err}");
    let err = plugin.call(
        "dstore-send",
        json!({"address": "x", "amount_btc": 1, "bogus": 1}),
    );
    assert_eq!(err.unwrap_err().code, -8);

    // After all that the plugin still serves.
    assert_eq!(plugin.call_ok("getblockcount", json!([])), json!(0));
}

#[test]
fn foundation_getinfo_help_and_cookie_lifecycle() {
    let node = BitcoinNode::start();
    node.mine(2);
    let plugin = PluginProcess::start(&node);

    let info = plugin.call_ok("dstore-getinfo", json!([]));
    assert_eq!(info["network"], json!("regtest"));
    assert_eq!(info["blocks"], json!(2));
    assert_eq!(info["balance"], json!(0.0));
    assert_eq!(info["roles"], json!(["renter"]));
    assert_eq!(info["version"], json!(env!("CARGO_PKG_VERSION")));

    let help = stdout(&plugin.cli(&["help"]));
    assert!(
        help.contains("getblockcount"),
        "bitcoind's methods are listed"
    );
    assert!(help.contains("== Dstore =="));
    for method in [
        "dstore-getinfo",
        "dstore-getnewaddress",
        "dstore-send",
        "dstore-help",
    ] {
        assert!(help.contains(method), "{method} missing from help");
    }
    let one = stdout(&plugin.cli(&["help", "dstore-send"]));
    assert!(one.contains("amount_btc"));
    let core_help = stdout(&plugin.cli(&["help", "getblockcount"]));
    assert_eq!(core_help, stdout(&node.cli(&["help", "getblockcount"])));

    let cookie = plugin.cookie_path();
    let mode = std::fs::metadata(&cookie).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "cookie is private");
    let seed = plugin.datadir().join("regtest").join("seed");
    let mode = std::fs::metadata(&seed).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "seed is private");
    let status = plugin.stop();
    assert!(status.success(), "clean exit: {status}");
    assert!(!cookie.exists(), "cookie deleted on clean exit");
}

#[test]
fn foundation_refuses_to_start_without_bitcoind_or_on_another_network() {
    let node = BitcoinNode::start();
    let dir = tempfile::tempdir().unwrap();
    let port = dstore_tests::ports::free_ports(1)[0].to_string();
    let rpc_port = format!("--rpc-port={port}");

    let output = PluginProcess::command(&node, dir.path(), 0, &["--network=signet", &rpc_port])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is on regtest") && stderr.contains("signet"),
        "{stderr}"
    );

    let dead = format!("--bitcoind-rpc-url=http://127.0.0.1:{port}");
    let output = PluginProcess::command(&node, dir.path(), 0, &[&dead, &rpc_port])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unreachable"), "{stderr}");
    assert!(!dir.path().join("regtest").join(".cookie").exists());
}

#[test]
fn foundation_wallet_mines_matures_sends_and_survives_restart() {
    let node = BitcoinNode::start();
    let datadir = tempfile::tempdir().unwrap();
    let plugin = PluginProcess::start_in(&node, datadir.path(), &[]);

    let address = plugin.call_ok("dstore-getnewaddress", json!([]));
    let address = address.as_str().unwrap().to_string();
    assert!(address.starts_with("bcrt1q"), "P2WPKH: {address}");
    // A coinbase may be spent by the next block once it is 100 deep (Core's
    // `spend height - coin height >= 100`): after 99 blocks nothing is spendable.
    node.mine_to(99, &address);
    assert_eq!(
        btc_to_sat(&plugin.call_ok("dstore-getbalance", json!([]))),
        0,
        "immature"
    );
    node.mine(1);
    let balance = btc_to_sat(&plugin.call_ok("dstore-getbalance", json!([])));
    assert_eq!(balance, 50 * 100_000_000, "one coinbase matured");
    let unspent = plugin.call_ok("dstore-listunspent", json!([]));
    assert_eq!(
        unspent.as_array().unwrap().len(),
        99,
        "immature coinbases are listed too"
    );

    // bitcoin-cli passes the amount as a string; the plugin takes it exactly.
    let burn = BitcoinNode::burn_address().to_string();
    let output = plugin.cli(&["dstore-send", &burn, "1.25"]);
    let txid = stdout(&output).trim().to_string();
    assert_eq!(txid.len(), 64);
    node.wait_for_tx(&txid, Duration::from_secs(10));
    node.mine(1);
    assert_eq!(
        node.confirmations(&txid),
        1,
        "dstore-send's transaction is mined"
    );
    let tx = node.rpc_ok("getrawtransaction", json!([txid, true]));
    let paid: u64 = tx["vout"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["scriptPubKey"]["address"] == json!(burn))
        .map(|o| btc_to_sat(&o["value"]))
        .sum();
    assert_eq!(paid, 125_000_000);

    let after_send = btc_to_sat(&plugin.call_ok("dstore-getbalance", json!([])));
    // One more coinbase matured with the extra block; the send cost 1.25 BTC plus a fee.
    let expected_before_fee = 2 * 50 * 100_000_000 - 125_000_000;
    assert!(after_send < expected_before_fee && after_send > expected_before_fee - 100_000);

    let status = plugin.stop();
    assert!(status.success());
    let plugin = PluginProcess::start_in(&node, datadir.path(), &[]);
    let restarted = btc_to_sat(&plugin.call_ok("dstore-getbalance", json!([])));
    assert_eq!(restarted, after_send, "balance survives a restart");
    let err = plugin
        .call("dstore-send", json!([burn, "1000"]))
        .unwrap_err();
    assert_eq!(err.code, -6, "insufficient funds: {err}");
}
