//! `lightning`: one download of the same file paid over Lightning (mode N) against one paid through the mode-L chain, between a renter and a farmer plugin with embedded LDK nodes over loopback on regtest.
//!
//! Figures:
//!
//! * `ln-download-s`: wall seconds of `dstore-download <id> <out> 300 ln` (request, seal,
//!   fetch and check of E, invoice check, payment over a direct channel, unseal, decrypt).
//! * `chain-download-s`: wall seconds of `dstore-download <id> <out>` with mode chain,
//!   driven to its end as a user would: each block the renter waits for is mined at once
//!   (on a real network add ~10 minutes per confirmation the farmer asks for).
//! * `ln-speedup`: chain-download-s over ln-download-s.
//! * `ln-onchain-vbytes`: vbytes of the transactions the Lightning download put in the
//!   mempool or in blocks (0: the channel was opened before, once).
//! * `chain-onchain-vbytes`: vbytes of TX1 + TX2 + TX3.
//! * `ln-channel-funding-vbytes`: the channel's funding transaction, paid once for every
//!   later download; `ln-fee-msat`: the Lightning routing fee (0 over a direct channel).
//!
//! A chain download first, unmeasured, makes the renter's CRS and has the farmer check it
//! (cached under `dstore-bench-crs` in the system temp dir), as `transfer` does.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Args;
use dstore_tests::ln::{free_port, ln_flags, open_channel};
use dstore_tests::market::{finish_download, Faults, Market};
use dstore_tests::BitcoinNode;
use serde_json::{json, Value};

use crate::measure::{figure, load_average, write_random_bytes, MIB};

/// Options of `dstore-bench lightning`.
#[derive(Debug, Args)]
pub struct LightningArgs {
    /// Size of the file bought back, in MiB.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=256))]
    size_mib: u64,
}

/// The channel renter → farmer (the test price is 20,000 sat).
const CHANNEL_SAT: u64 = 1_000_000;
/// The farmer's `--max-file-bytes`, above the largest `--size-mib`.
const MAX_FILE_BYTES: u64 = 512 << 20;

/// `dstore-bench lightning`.
pub fn run(args: &LightningArgs) -> anyhow::Result<()> {
    eprintln!("lightning: load average {}", load_average());
    let crs_dir = std::env::temp_dir().join("dstore-bench-crs");
    let market = Market::start_around(&crs_dir, Faults::default(), MAX_FILE_BYTES, |_| {
        (ln_flags(free_port()), ln_flags(free_port()))
    });
    let file = market.dir.path().join("file.bin");
    write_random_bytes(&file, args.size_mib * MIB)?;
    eprintln!("lightning: dstore-open of {} MiB…", args.size_mib);
    let id = market.open(&file).map_err(anyhow::Error::msg)?;

    eprintln!("lightning: warm-up chain download (CRS generation and check, unmeasured)…");
    chain_download(&market, &id, &market.dir.path().join("warm-up.bin"))?;

    eprintln!("lightning: opening a {CHANNEL_SAT} sat channel renter -> farmer…");
    let funding_vb = channel_funding_vbytes(&market)?;

    eprintln!("lightning: measured chain download…");
    let chain_out = market.dir.path().join("chain.bin");
    let started = Instant::now();
    let chain = chain_download(&market, &id, &chain_out)?;
    let chain_s = started.elapsed();
    let chain_vb = chain_vbytes(&market.node, &chain)?;
    ensure_same(&file, &chain_out)?;

    eprintln!("lightning: measured Lightning download…");
    let ln_out = market.dir.path().join("ln.bin");
    let (height, mempool) = (market.node.block_count(), mempool(&market.node));
    let started = Instant::now();
    let ln = ln_download(&market, &id, &ln_out)?;
    let ln_s = started.elapsed();
    ensure_same(&file, &ln_out)?;
    let ln_vb = new_vbytes(&market.node, height, &mempool)?;
    eprintln!("lightning: done, load average {}", load_average());

    figure("ln-download-s", secs(ln_s));
    figure("chain-download-s", secs(chain_s));
    figure(
        "ln-speedup",
        format!("{:.2}", chain_s.as_secs_f64() / ln_s.as_secs_f64()),
    );
    figure("ln-onchain-vbytes", ln_vb);
    figure("chain-onchain-vbytes", chain_vb);
    figure("ln-channel-funding-vbytes", funding_vb);
    figure("ln-fee-msat", ln["fee_msat"].as_u64().unwrap_or(0));
    Ok(())
}

/// A mode-L download, blocks mined whenever the renter waits for TX1's confirmations.
fn chain_download(market: &Market, id: &str, out: &Path) -> anyhow::Result<Value> {
    let call = || download_call(market, id, out, "chain", None);
    let first = call().map_err(anyhow::Error::msg)?;
    let reply = finish_download(
        &market.node,
        first,
        || market.renter().call_ok("dstore-status", json!([id])),
        call,
    )
    .map_err(anyhow::Error::msg)?;
    ensure!(reply["status"] == "done", "chain download: {reply}");
    ensure!(reply["mode"] == "chain", "not a chain download: {reply}");
    Ok(reply)
}

/// A mode-N download (waits up to 300 s per call; no block is mined).
fn ln_download(market: &Market, id: &str, out: &Path) -> anyhow::Result<Value> {
    let mut reply = download_call(market, id, out, "ln", Some(300)).map_err(anyhow::Error::msg)?;
    for _ in 0..3 {
        if reply["status"] != "waiting" && reply["status"] != "running" {
            break;
        }
        reply = download_call(market, id, out, "ln", Some(300)).map_err(anyhow::Error::msg)?;
    }
    ensure!(reply["status"] == "done", "Lightning download: {reply}");
    ensure!(reply["mode"] == "ln", "not a Lightning download: {reply}");
    Ok(reply)
}

fn download_call(
    market: &Market,
    id: &str,
    out: &Path,
    mode: &str,
    wait_seconds: Option<u64>,
) -> Result<Value, String> {
    let mut params = json!({
        "contract_id": id,
        "output_path": out.to_str().expect("utf-8 path"),
        "mode": mode,
    });
    if let Some(wait) = wait_seconds {
        params["wait_seconds"] = json!(wait);
    }
    market
        .renter()
        .call("dstore-download", params)
        .map_err(|e| e.to_string())
}

/// Opens the channel (the helper funds both Lightning wallets) and returns the funding
/// transaction's vbytes.
fn channel_funding_vbytes(market: &Market) -> anyhow::Result<u64> {
    let channel_id = open_channel(
        &market.node,
        market.renter(),
        market.farmer(),
        CHANNEL_SAT,
        0,
    );
    let channel =
        dstore_tests::ln::channel(market.renter(), &channel_id).context("the channel is listed")?;
    let txid = channel["funding_txid"].as_str().context("funding txid")?;
    vsize(&market.node, txid)
}

fn chain_vbytes(node: &BitcoinNode, reply: &Value) -> anyhow::Result<u64> {
    let mut total = 0;
    for name in ["tx1", "tx2", "tx3"] {
        let txid = reply[name]
            .as_str()
            .with_context(|| format!("{name} in {reply}"))?;
        total += vsize(node, txid)?;
    }
    Ok(total)
}

fn vsize(node: &BitcoinNode, txid: &str) -> anyhow::Result<u64> {
    let tx = node
        .rpc("getrawtransaction", json!([txid, true]))
        .map_err(|e| anyhow::anyhow!("{txid}: {e}"))?;
    tx["vsize"].as_u64().context("vsize")
}

fn mempool(node: &BitcoinNode) -> Vec<String> {
    serde_json::from_value(node.rpc_ok("getrawmempool", json!([]))).expect("mempool txids")
}

/// vbytes of every transaction that appeared since: new mempool entries and the
/// non-coinbase transactions of blocks mined above `height`.
fn new_vbytes(node: &BitcoinNode, height: u64, before: &[String]) -> anyhow::Result<u64> {
    let mut total = 0;
    for txid in mempool(node).iter().filter(|t| !before.contains(t)) {
        total += vsize(node, txid)?;
    }
    for h in height + 1..=node.block_count() {
        let hash = node.rpc_ok("getblockhash", json!([h]));
        let block = node.rpc_ok("getblock", json!([hash, 2]));
        let txs = block["tx"].as_array().context("block txs")?;
        total += txs
            .iter()
            .skip(1)
            .map(|t| t["vsize"].as_u64().unwrap_or(0))
            .sum::<u64>();
    }
    Ok(total)
}

fn ensure_same(a: &Path, b: &Path) -> anyhow::Result<()> {
    let (x, y) = (std::fs::read(a)?, std::fs::read(b)?);
    if x != y {
        bail!("{} differs from {}", b.display(), a.display());
    }
    Ok(())
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}
