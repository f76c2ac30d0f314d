//! Issue 18 with the market: `dstore-open auto … shards=N needed=K` places the N shards with
//! N distinct farmers the market lists, best score first, and refuses when fewer are listed.

use std::collections::HashSet;
use std::path::PathBuf;

use dstore_tests::market_fixture::{FarmerSpec, MarketNet, RenterSpec};
use dstore_tests::parties::seeded_bytes;
use dstore_tests::shard_fixture::{field, open_params, shards_of};
use serde_json::Value;

fn crs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-crs")
}

/// True when farmer `i`'s row has a bond and a verified advert.
fn listed(net: &MarketNet, table: &Value, i: usize) -> bool {
    net.row(table, i)
        .is_some_and(|row| !row["bond"].is_null() && !row["advert"].is_null())
}

#[test]
fn shard_auto_places_each_shard_with_a_distinct_market_farmer() {
    let net = MarketNet::start(
        &crs_dir(),
        &vec![FarmerSpec::default(); 3],
        &[RenterSpec::default()],
    );
    let lock = net.tip() as u32 + 1_000;
    for (i, bond) in [0.1, 0.3, 0.2].into_iter().enumerate() {
        net.announce_ok(i, bond, lock);
    }
    net.mine(1);
    net.farmers_when(0, "three bonded farmers with verified adverts", |t| {
        (0..3).all(|i| listed(&net, t, i))
    });
    let file = net.file("auto.bin", &seeded_bytes(0x18, 400_000));

    // Four shards need four farmers: the market lists three, so nothing is opened.
    let err = net
        .renter(0)
        .call("dstore-open", open_params("auto", &file, 4, 2))
        .unwrap_err();
    assert_eq!(err.code, -8, "{err}");

    let reply = net
        .renter(0)
        .call_ok("dstore-open", open_params("auto", &file, 3, 2));
    let shards = shards_of(&reply);
    assert_eq!(shards.len(), 3, "{reply}");
    let farmers: HashSet<String> = shards.iter().map(|s| field(s, "farmer")).collect();
    let listed_urls: HashSet<String> = net.farmers.iter().map(|f| f.peer_url.clone()).collect();
    assert_eq!(farmers, listed_urls, "one shard per market farmer: {reply}");
    // Best score first: the biggest bond (farmer 1) holds shard 0.
    assert_eq!(
        field(&shards[0], "farmer"),
        net.farmers[1].peer_url,
        "{reply}"
    );
    assert!(
        shards.iter().all(|s| s["state"] == "stored"),
        "every shard stored: {reply}"
    );
}
