//! `shards`: a file erasure-coded into N shards (any K rebuild it) stored with N farmer
//! dstore-plugins over loopback on regtest, and bought back (issue 18).
//!
//! Figures:
//!
//! * `shards-encode-mib-s`: plaintext MiB/s of `erasure::encrypt_and_shard` (encrypt,
//!   Merkle of C, Reed-Solomon encoding into N shards) reading the file and writing the N
//!   shards to `std::io::sink()`; best of `--runs`.
//! * `shards-single-encrypt-merkle-mib-s`: the single-contract path on the same file in the
//!   same run, `datapath::encrypt_and_commit_parallel` into one sink (what
//!   `encrypt_and_shard` runs before its encoder); best of `--runs`, alternating with the
//!   former.
//! * `shards-encode-ratio`: the first over the second (the goal is at least 0.7).
//! * `shards-upload-mib-s`: plaintext MiB/s of a sharded `dstore-open` of the file (wall
//!   time of the call: encrypt + encode into staged shards, then the N shard contracts'
//!   key exchanges, encryptions, uploads and receipts, in parallel).
//! * `shards-download-mib-s`: plaintext MiB/s of `dstore-download <file_id>`, driven to
//!   its end as a user would (K shard downloads, each a mode-L chain whose TX1 needs a
//!   block, which the bench mines as soon as the renter waits for it; then decode,
//!   decrypt and root_C check); the output is checked against the file (SHA-256).
//! * `shards-peak-rss-mib`: the renter plugin's peak RSS (VmHWM of its /proc status) over
//!   the measured upload and download. The renter is restarted after the unmeasured
//!   warm-up, so the CRS generation of the first download is not in it. The goal
//!   is under 256 MiB whatever the file size.
//! * `shards-renter-idle-rss-mib`, `shards-upload-peak-rss-mib`: the renter's VmHWM right
//!   after its restart and after the upload (the part of the peak that is not the file's).
//! * `shards-upload-s`, `shards-download-s`: the wall times behind the MiB/s figures.
//!
//! The renter makes its Groth16 CRS once per TX2 shape; it is cached under the system temp
//! dir (`dstore-bench-crs`, shared with `transfer`). A round trip of a small sharded file
//! first, unmeasured, keeps that one-time cost out of every figure.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context};
use clap::Args;
use dstore_protocol::datapath::encrypt_and_commit_parallel;
use dstore_protocol::erasure::{encrypt_and_shard, shard_len, ShardParams};
use dstore_tests::shard_fixture::{file_id_of, ShardFarmerSpec, ShardNet};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::measure::{figure, kib_to_mib, load_average, mib_per_s, write_random_bytes, MIB};

/// Options of `dstore-bench shards`.
#[derive(Debug, Args)]
pub struct ShardsArgs {
    /// Size of the file in MiB.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=2048))]
    mib: u64,
    /// Shards N (one farmer plugin each).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(1..=32))]
    shards: u64,
    /// Shards needed K to rebuild the file.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=32))]
    needed: u64,
    /// Timed runs of each encode figure, alternating; each figure is the best run.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
}

/// Size of the unmeasured warm-up round trip.
const WARM_UP_BYTES: u64 = MIB;

/// `dstore-bench shards`.
pub fn run(args: &ShardsArgs) -> anyhow::Result<()> {
    let params = ShardParams::new(args.shards, args.needed).map_err(|e| anyhow!("bad N/K: {e}"))?;
    eprintln!(
        "shards: {}, load average {}, {}",
        if cfg!(debug_assertions) {
            "dev build, plugins too (optimised, but with debug assertions): report the figures of --release"
        } else {
            "release build"
        },
        load_average(),
        crate::measure::cpu_summary(&[
            "ssse3", "sse4_2", "aes", "avx", "avx2", "avx512f", "sha_ni", "gfni",
        ])
    );
    let bytes = args.mib * MIB;
    let dir = tempfile::Builder::new()
        .prefix("dstore-bench-shards-")
        .tempdir()
        .context("creating the benchmark's temporary directory")?;
    let file = dir.path().join("big.bin");
    write_random_bytes(&file, bytes)?;
    sha256_file(&file)?; // warms the page cache for the encode timings

    let encode = encode_figures(&file, params, args.runs)?;
    let network = network_figures(&file, bytes, params)?;
    eprintln!("shards: done, load average {}", load_average());

    figure(
        "shards-encode-mib-s",
        format!("{:.1}", mib_per_s(bytes, encode.sharded)),
    );
    figure(
        "shards-single-encrypt-merkle-mib-s",
        format!("{:.1}", mib_per_s(bytes, encode.single)),
    );
    figure(
        "shards-encode-ratio",
        format!(
            "{:.3}",
            encode.single.as_secs_f64() / encode.sharded.as_secs_f64()
        ),
    );
    figure(
        "shards-upload-mib-s",
        format!("{:.1}", mib_per_s(bytes, network.upload)),
    );
    figure(
        "shards-download-mib-s",
        format!("{:.1}", mib_per_s(bytes, network.download)),
    );
    figure(
        "shards-peak-rss-mib",
        format!("{:.1}", kib_to_mib(network.peak_rss_kib)),
    );
    figure(
        "shards-renter-idle-rss-mib",
        format!("{:.1}", kib_to_mib(network.idle_rss_kib)),
    );
    figure(
        "shards-upload-peak-rss-mib",
        format!("{:.1}", kib_to_mib(network.upload_rss_kib)),
    );
    figure("shards-upload-s", secs(network.upload));
    figure("shards-download-s", secs(network.download));
    Ok(())
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

// ----- encoding -------------------------------------------------------------------------

/// Best times of the sharded and the single-contract encrypt+Merkle paths.
struct Encode {
    sharded: Duration,
    single: Duration,
}

fn encode_figures(file: &Path, params: ShardParams, runs: u32) -> anyhow::Result<Encode> {
    let mut best = Encode {
        sharded: Duration::MAX,
        single: Duration::MAX,
    };
    for run in 1..=runs {
        let single = time_single(file)?;
        let sharded = time_sharded(file, params)?;
        eprintln!(
            "shards: encode run {run}/{runs}: single {:.3} s, sharded {:.3} s",
            single.as_secs_f64(),
            sharded.as_secs_f64()
        );
        best.single = best.single.min(single);
        best.sharded = best.sharded.min(sharded);
    }
    Ok(best)
}

/// `encrypt_and_commit_parallel` of the file into one sink (the single-contract path).
fn time_single(file: &Path) -> anyhow::Result<Duration> {
    let (key, id) = (random_32(), random_32());
    let start = Instant::now();
    let reader = File::open(file).with_context(|| format!("opening {}", file.display()))?;
    encrypt_and_commit_parallel(&key, &id, reader, io::sink())
        .map_err(|e| anyhow!("encrypt_and_commit_parallel: {e}"))?;
    Ok(start.elapsed())
}

/// `encrypt_and_shard` of the file into N sinks; checks the shard lengths' arithmetic.
fn time_sharded(file: &Path, params: ShardParams) -> anyhow::Result<Duration> {
    let (key, id) = (random_32(), random_32());
    let sinks: Vec<io::Sink> = (0..params.shards()).map(|_| io::sink()).collect();
    let start = Instant::now();
    let reader = File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let sharded = encrypt_and_shard(&key, &id, reader, params, sinks)
        .map_err(|e| anyhow!("encrypt_and_shard: {e}"))?;
    let elapsed = start.elapsed();
    ensure!(
        sharded.writers.len() == params.shards(),
        "encrypt_and_shard returned {} writers for N = {}",
        sharded.writers.len(),
        params.shards()
    );
    Ok(elapsed)
}

fn random_32() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes
}

// ----- upload and download --------------------------------------------------------------

/// What the network part measures.
struct Network {
    upload: Duration,
    download: Duration,
    /// The renter's VmHWM right after its restart, after the upload, after the download.
    idle_rss_kib: u64,
    upload_rss_kib: u64,
    peak_rss_kib: u64,
}

fn network_figures(file: &Path, bytes: u64, params: ShardParams) -> anyhow::Result<Network> {
    let crs_dir = std::env::temp_dir().join("dstore-bench-crs");
    // Each shard contract holds one shard (the farmer encrypts it again: a little more).
    let shard_bytes = shard_len(bytes + bytes / 8 + MIB, params);
    let max_file_bytes = (shard_bytes + 16 * MIB).max(80 * MIB);
    eprintln!(
        "shards: starting bitcoind, {} farmers and the renter (CRS cache {})…",
        params.shards(),
        crs_dir.display()
    );
    let farmers = vec![ShardFarmerSpec::default(); params.shards()];
    let mut net = ShardNet::start(&crs_dir, &farmers, max_file_bytes);
    let all: Vec<usize> = (0..params.shards()).collect();
    let needed = params.needed() as u64;

    eprintln!("shards: warm-up round trip of 1 MiB (CRS generation and check, unmeasured)…");
    let warm = net.dir.path().join("warm.bin");
    write_random_bytes(&warm, WARM_UP_BYTES)?;
    let reply = net.open_on(&all, &warm, needed);
    download_checked(&net, &file_id_of(&reply), &warm)?;
    // A fresh renter process: its peak RSS counts the measured steps only.
    net.stop_renter();
    net.start_renter();
    net.node.mine(1);
    let renter_hwm = || -> anyhow::Result<u64> {
        let pid = net
            .renter_pid()
            .context("finding the renter plugin's process")?;
        peak_rss_kib_of(pid)
    };
    let idle_rss_kib = renter_hwm()?;

    eprintln!("shards: {} MiB sharded upload…", bytes / MIB);
    let start = Instant::now();
    let reply = net.open_on(&all, file, needed);
    let upload = start.elapsed();
    let file_id = file_id_of(&reply);
    eprintln!(
        "shards: dstore-open: {:.2} s, file {file_id}",
        upload.as_secs_f64()
    );
    let upload_rss_kib = renter_hwm()?;

    eprintln!("shards: {} MiB download…", bytes / MIB);
    let download = download_checked(&net, &file_id, file)?;
    let peak_rss_kib = renter_hwm()?;
    Ok(Network {
        upload,
        download,
        idle_rss_kib,
        upload_rss_kib,
        peak_rss_kib,
    })
}

/// Times a download of `file_id` driven to its end, checks it against `original` and
/// removes the output.
fn download_checked(net: &ShardNet, file_id: &str, original: &Path) -> anyhow::Result<Duration> {
    let output: PathBuf = original.with_extension("out");
    let start = Instant::now();
    let reply = net
        .download(file_id, &output)
        .map_err(|e| anyhow!("dstore-download {file_id}: {e}"))?;
    let elapsed = start.elapsed();
    eprintln!(
        "shards: dstore-download: {:.2} s, shards used {}",
        elapsed.as_secs_f64(),
        reply["shards_used"]
    );
    ensure!(
        sha256_file(&output)? == sha256_file(original)?,
        "the downloaded file {} differs from {}",
        output.display(),
        original.display()
    );
    std::fs::remove_file(&output).with_context(|| format!("removing {}", output.display()))?;
    // The next TX1s spend confirmed coins.
    net.node.mine(1);
    Ok(elapsed)
}

/// Peak RSS (VmHWM) of process `pid` in KiB.
fn peak_rss_kib_of(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&path).with_context(|| format!("reading {path} for VmHWM"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .ok_or_else(|| anyhow!("no VmHWM line in {path}"))?;
    line.trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("parsing VmHWM line {line:?}"))
}

/// SHA-256 of a file, streamed.
fn sha256_file(path: &Path) -> anyhow::Result<[u8; 32]> {
    let mut reader =
        BufReader::new(File::open(path).with_context(|| format!("opening {}", path.display()))?);
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; MIB as usize];
    loop {
        let n = reader
            .read(&mut buffer)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.finalize().into())
}
