//! The farmer market over Core Lightning's custom messages (issue 17): a farmer plugin in
//! CLN mode follows its discovery answer with its signed advert, and a plugin refuses a
//! forged advert or a fake fraud proof from a peer, logging it and changing nothing. Driven
//! through `dstore_tests::cln_harness` (no lightningd binary exists here).

use std::time::Duration;

use dstore_protocol::market::advert::SignedAdvert;
use dstore_tests::cln_harness::{BitcoinSettings, ClnPlugin};
use dstore_tests::{ports, BitcoinNode};
use serde_json::{json, Value};

const SHORT: Duration = Duration::from_secs(60);
/// The dstore custom message type and its kinds (plugin/src/cln/discovery.rs).
const DSTORE_MSG: [u8; 2] = [0xD5, 0xA1];
const KIND_ADVERT: u8 = 0x03;
const KIND_EVIDENCE: u8 = 0x04;

fn message(kind: u8, body: &[u8]) -> String {
    let mut bytes = DSTORE_MSG.to_vec();
    bytes.push(kind);
    bytes.extend_from_slice(body);
    hex::encode(bytes)
}

/// The sent custom messages of `kind`, decoded.
fn sent_of_kind(plugin: &ClnPlugin, kind: u8) -> Vec<Vec<u8>> {
    plugin
        .rpc_calls("sendcustommsg")
        .into_iter()
        .filter_map(|call| hex::decode(call["msg"].as_str()?).ok())
        .filter(|msg| msg.len() > 3 && msg[..2] == DSTORE_MSG && msg[2] == kind)
        .map(|msg| msg[3..].to_vec())
        .collect()
}

#[test]
fn cln_market_discovery_carries_the_signed_advert_and_forgeries_are_refused() {
    let node = BitcoinNode::start();
    let peer_port = ports::free_ports(1)[0];
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let (plugin, init) = ClnPlugin::start(
        BitcoinSettings::of(&node),
        json!({
            "dstore-role": "farmer",
            "dstore-peer-bind": format!("127.0.0.1:{peer_port}"),
            "dstore-peer-url": peer_url,
        }),
    );
    assert_eq!(init, json!({}), "enabled");
    let info: Value = reqwest::blocking::get(format!("{peer_url}/dstore/v1/info"))
        .expect("peer endpoint")
        .json()
        .expect("info JSON");

    // A discovery request gets the answer and then the farmer's signed advert.
    let renter_node = "03".to_string() + &"44".repeat(32);
    let result = plugin.hook(
        "custommsg",
        json!({"peer_id": renter_node, "payload": "d5a101"}),
    );
    assert_eq!(result, json!({"result": "continue"}));
    let body = dstore_tests::wait_until("the advert message", SHORT, || {
        sent_of_kind(&plugin, KIND_ADVERT).into_iter().next()
    });
    let advert: SignedAdvert = serde_json::from_slice(&body).expect("a signed advert");
    advert.verify().expect("the advert verifies");
    assert_eq!(
        advert.advert.identity.to_string(),
        info["identity"].as_str().unwrap()
    );
    assert_eq!(advert.advert.peer_url, peer_url);
    assert_eq!(advert.advert.network, "regtest");

    // The same advert with a better price and the old signature: refused and logged.
    let mut forged = serde_json::to_value(&advert).unwrap();
    forged["advert"]["price_per_download_sat"] = json!(1);
    let forged = serde_json::to_vec(&forged).unwrap();
    let result = plugin.hook(
        "custommsg",
        json!({"peer_id": renter_node, "payload": message(KIND_ADVERT, &forged)}),
    );
    assert_eq!(result, json!({"result": "continue"}));
    let line = plugin.wait_log("advert refused", SHORT);
    assert_eq!(line["level"], "error", "{line}");

    // A fake fraud proof: checked off the hook, refused and logged.
    let result = plugin.hook(
        "custommsg",
        json!({"peer_id": renter_node, "payload": message(KIND_EVIDENCE, b"{\"receipt\":1}")}),
    );
    assert_eq!(result, json!({"result": "continue"}));
    let line = plugin.wait_log("refused evidence", SHORT);
    assert_eq!(line["level"], "error", "{line}");

    // Nothing reached the market: no farmer is listed, nobody is burned.
    let table = plugin.call_ok("dstore-farmers", json!([]), SHORT);
    assert_eq!(table["farmers"], json!([]), "{table}");
    plugin.assert_stdout_clean();
    assert!(plugin.close_and_wait(SHORT).success());
}
