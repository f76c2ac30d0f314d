//! Issue 15, item 2: one CRS per download; a failed proof ends the download. A hostile
//! renter makes its CRS with trapdoors it keeps and probes bits of the farmer's hidden s1
//! with it: the CRS passes the farmer's `check_crs`, but the farmer's honest proof verifies
//! only if the probed bits are 0 (shown in-process first, on a statement of the same
//! shape). Against a real farmer plugin the first failed self-verification aborts the
//! download for good; every later CRS for it, uploaded or offered, is refused, TX2 never
//! leaves the farmer, and so f never leaks.

use std::path::{Path, PathBuf};

use bitcoin::hashes::Hash;
use bitcoin::{OutPoint, Txid};
use dstore_plugin::wire::{crs_path, sign_bulk, BulkRequest, AUTH_HEADER};
use dstore_protocol::keys::identity_keypair;
use dstore_protocol::messages::CrsOffer;
use dstore_protocol::peer::{self, PeerMessage};
use dstore_protocol::zk::{
    check_crs, crs_hash, prove, serialize_crs, serialize_trusted_crs, Shape, Statement, ZkError,
};
use dstore_tests::harden_crs::{s1_bit_variable, with_s1, HostileCrs};
use dstore_tests::market::{Faults, Market};
use dstore_tests::parties::Parties;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde_json::{json, Value};

/// The renter plugin's CRS cache file for `shape` (its "own" CRS, made once per shape).
fn renter_cache_file(dir: &Path, shape: &Shape) -> PathBuf {
    dir.join(format!("renter-{}.crs", shape.crs_cache_key()))
}

/// Bit 0 of s1 is probed alone: with it 0 the proof verifies, with it 1 it does not, and
/// the CRS passes `check_crs` either way.
fn assert_probes_one_bit(
    hostile: &HostileCrs,
    statement: &Statement,
    s1: &[u8; 32],
    s2: &[u8; 32],
    rng: &mut StdRng,
) {
    let shape = statement.shape;
    let k = s1_bit_variable(&hostile.crs, &shape, 0, 0);
    let probe = hostile.probing(&[k], rng);
    check_crs(&shape, &serialize_crs(&probe), rng).expect("the probing CRS passes check_crs");
    let (mut zero, mut one) = (*s1, *s1);
    zero[0] &= 0x7f;
    one[0] |= 0x80;
    let proved =
        |s: &[u8; 32], rng: &mut StdRng| prove(&probe, &with_s1(statement, s, s2), s, s2, rng);
    assert!(proved(&zero, rng).is_ok(), "bit 0 = 0: the proof verifies");
    assert_eq!(
        proved(&one, rng),
        Err(ZkError::InvalidProof),
        "bit 0 = 1: it does not"
    );
}

fn put_crs(
    m: &Market,
    renter: &bitcoin::secp256k1::Keypair,
    id: &[u8; 32],
    download_id: [u8; 32],
    bytes: Vec<u8>,
) -> (u16, Value) {
    let path = crs_path(id);
    let header = sign_bulk(renter, &BulkRequest::new("PUT", &path, &bytes, download_id));
    let response = reqwest::blocking::Client::new()
        .put(format!("{}{path}", m.peer_url))
        .header(AUTH_HEADER, header)
        .body(bytes)
        .send()
        .expect("the farmer answers");
    let code = response.status().as_u16();
    let text = response.text().unwrap_or_default();
    (code, serde_json::from_str(&text).unwrap_or(json!(text)))
}

/// Offers `hash` as the renter, at the sequence number the farmer expects.
fn offer_crs(
    m: &Market,
    renter: &bitcoin::secp256k1::Keypair,
    id: [u8; 32],
    hash: [u8; 32],
) -> (u16, Value) {
    let offer = CrsOffer { crs_hash: hash };
    let (code, body) = m.post_message(CrsOffer::KIND, peer::sign(renter, id, 0, &offer).unwrap());
    match body["next_seq"].as_u64() {
        Some(seq) => m.post_message(CrsOffer::KIND, peer::sign(renter, id, seq, &offer).unwrap()),
        None => (code, body),
    }
}

#[test]
fn harden_bit_probing_crs_gets_one_try() {
    let crs_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let m = Market::start(crs_dir.path(), Faults::default());
    let mut rng = StdRng::seed_from_u64(215);

    // The shape of the farmer's TX2, from an in-process contract of the same form.
    let parties = Parties::new(&m.node, &mut rng, dstore_plugin::farmer::REFUND_MARGIN, 12);
    let outpoint = OutPoint {
        txid: Txid::all_zeros(),
        vout: 0,
    };
    let (statement, s1, s2) = Statement::of(&parties.tx2(&mut rng, outpoint)).unwrap();
    let shape = statement.shape;
    let hostile = HostileCrs::generate(&shape, &mut rng);
    assert_probes_one_bit(&hostile, &statement, &s1, &s2, &mut rng);

    // The renter plugin's own CRS probes all 256 bits of s1: the farmer's proof fails
    // unless s1 = 0.
    let all: Vec<usize> = (0..256)
        .map(|i| s1_bit_variable(&hostile.crs, &shape, i / 8, i % 8))
        .collect();
    let probe = hostile.probing(&all, &mut rng);
    // (That it passes check_crs is seen below in the farmer's log: it is the proof that
    // fails, not the check, which keeps this test to one full-size check per CRS.)
    std::fs::write(
        renter_cache_file(crs_dir.path(), &shape),
        serialize_trusted_crs(&probe),
    )
    .unwrap();

    let mut data = vec![0u8; 4_000];
    rng.fill_bytes(&mut data);
    let id = m.open(&m.file("in", &data)).expect("dstore-open");
    let err = m.download(&id, &m.dir.path().join("out")).unwrap_err();
    assert!(err.contains("bad CRS"), "{err}");
    let farmer = m.farmer().call_ok("dstore-status", json!([id]));
    assert_eq!(farmer["phase"], "download aborted", "{farmer}");
    assert!(
        m.farmer()
            .log()
            .contains("no verifying proof under this CRS"),
        "the CRS passed the check; the proof failed"
    );

    // Every later CRS for this download is refused: uploaded (even an honest-looking one)
    // or offered by hash, and the download stays aborted.
    let s = m.renter().call_ok("dstore-status", json!([id]));
    let d = &s["downloads"][0];
    let download_id: [u8; 32] = hex::decode(d["download_id"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let seed_hex = std::fs::read_to_string(m.dir.path().join("renter/regtest/seed")).unwrap();
    let renter = identity_keypair(&hex::decode(seed_hex.trim()).unwrap()).unwrap();
    let id_bytes: [u8; 32] = hex::decode(&id).unwrap().try_into().unwrap();
    let other = hostile.probing(&all[..1], &mut rng);
    for bytes in [
        serialize_crs(&other),
        serialize_crs(&probe),
        serialize_crs(&hostile.crs),
    ] {
        let (code, body) = put_crs(&m, &renter, &id_bytes, download_id, bytes);
        assert_eq!(code, 400, "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("aborted"),
            "{body}"
        );
    }
    for crs in [&other, &probe, &hostile.crs] {
        let (code, body) = offer_crs(&m, &renter, id_bytes, crs_hash(crs));
        assert_eq!(code, 400, "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("aborted"),
            "{body}"
        );
    }
    let farmer = m.farmer().call_ok("dstore-status", json!([id]));
    assert_eq!(farmer["phase"], "download aborted", "{farmer}");
    assert!(farmer["payouts"].as_array().unwrap().is_empty(), "{farmer}");

    // TX2 never left the farmer: TX1:0 is unspent (no TX2, so no s1, s2, no f).
    let tx1 = d["tx1"].as_str().expect("TX1 was funded").to_string();
    let txid = tx1.split(':').next().unwrap();
    let unspent = m.node.rpc_ok("gettxout", json!([txid, 0, true]));
    assert!(!unspent.is_null(), "TX1:0 is unspent");
}
