//! `datapath`: throughput of the data path (AES-256-GCM encryption + segment Merkle
//! commitment, `dstore_protocol::datapath`) against `openssl dgst -sha256` over the same
//! file in the same run, and the peak RSS of the encrypt step.
//!
//! Figures:
//!
//! * `datapath-encrypt-merkle-mib-s`: plaintext MiB/s of `encrypt_and_commit_parallel`
//!   reading the file and writing the ciphertext to `std::io::sink()`. Writing the
//!   ciphertext to disk is deliberately excluded; reading the plaintext is included.
//!   Timed inside the worker process, around the library call only.
//! * `datapath-openssl-sha256-mib-s`: MiB/s of `openssl dgst -sha256 <file>`, timed
//!   wall-clock around the subprocess (so including its few ms of start-up).
//! * `datapath-ratio`: the first over the second (the goal is at least 0.8).
//! * `datapath-sha256-impl`, `datapath-aes-impl`: the Merkle-leaf SHA-256 and AES-256-GCM
//!   implementations the worker ran (`dstore_protocol::cpu`: chosen by CPU feature unless
//!   `--sha256-impl` / `--aes-impl` force another supported one, e.g. `--sha256-impl avx2-x8`
//!   to measure what a CPU without SHA-NI or AVX-512 runs). With
//!   `--openssl-ia32cap :~0x20000000` openssl runs with SHA-NI masked, so both sides of the
//!   ratio are measured without SHA-NI.
//! * `datapath-peak-rss-mib`: peak RSS of the encrypt step. It runs in a child process
//!   (this binary re-invoked with the hidden `datapath-encrypt-worker` subcommand), which
//!   reads its own VmHWM from /proc/self/status right after the timed call and reports it,
//!   so the figure is the encrypting process's own peak, binary and libraries included,
//!   and not the parent's (which generated the file).
//!
//! The file is a fresh ChaCha stream (`StdRng`), written once and fsynced (so no
//! writeback runs during the timings), then read once to warm the page cache: both
//! measurements then read it from memory. The worker also checks, untimed, that the serial
//! and parallel paths give the same commitment on the file's first few MiB.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Args;
use dstore_protocol::cpu::{force_for_benchmark, AesGcmImpl, DataPathImpl, Sha256Impl};
use dstore_protocol::datapath::{ciphertext_len, encrypt_and_commit, encrypt_and_commit_parallel};

use crate::measure::{
    cpu_summary, figure, kib_to_mib, load_average, mib_per_s, peak_rss_kib, time_command, Report,
    MIB,
};

/// CPU flags that decide the data path's implementations and openssl's.
const DATAPATH_CPU_FLAGS: [&str; 8] = [
    "sha_ni",
    "aes",
    "pclmulqdq",
    "avx",
    "avx2",
    "avx512f",
    "vaes",
    "vpclmulqdq",
];

/// Options of `dstore-bench datapath`.
#[derive(Debug, Args)]
pub struct DatapathArgs {
    /// Size of the benchmark file in MiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    size_mib: u64,
    /// Directory in which to create the temporary benchmark file [default: a fresh
    /// temporary directory under the system temp dir].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Timed runs of each side, alternating; each figure is the best run (peak RSS: the
    /// highest).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    #[command(flatten)]
    force: ForcedImpl,
    /// Value of OPENSSL_ia32cap for the openssl run, e.g. `:~0x20000000` to mask SHA-NI
    /// (check with `openssl speed -evp sha256`) [default: unset].
    #[arg(long)]
    openssl_ia32cap: Option<String>,
}

/// Forced implementation choices (benchmark only; production code chooses by CPU).
#[derive(Debug, Clone, Args)]
pub struct ForcedImpl {
    /// Merkle-leaf SHA-256: avx512-x16, sha-ni, avx2-x8, ring or scalar [default: chosen
    /// by CPU feature].
    #[arg(long)]
    sha256_impl: Option<Sha256Impl>,
    /// AES-256-GCM: ring or rustcrypto [default: chosen by CPU feature].
    #[arg(long)]
    aes_impl: Option<AesGcmImpl>,
}

impl ForcedImpl {
    /// The choice these options make on this CPU.
    fn choice(&self) -> DataPathImpl {
        let detected = DataPathImpl::detected();
        DataPathImpl {
            sha256: self.sha256_impl.unwrap_or(detected.sha256),
            aes_gcm: self.aes_impl.unwrap_or(detected.aes_gcm),
        }
    }

    /// The same options as command-line arguments, for the worker.
    fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(sha256) = self.sha256_impl {
            args.extend(["--sha256-impl".to_owned(), sha256.name().to_owned()]);
        }
        if let Some(aes) = self.aes_impl {
            args.extend(["--aes-impl".to_owned(), aes.name().to_owned()]);
        }
        args
    }
}

/// Arguments of the hidden `datapath-encrypt-worker` subcommand.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The plaintext file to encrypt.
    path: PathBuf,
    #[command(flatten)]
    force: ForcedImpl,
}

/// Bytes at the start of the file on which the worker cross-checks the serial and parallel
/// paths: more than two chunks, ending inside a segment.
const SELF_CHECK_BYTES: u64 = 3 * MIB + 5000;

/// What the encrypt worker reports.
struct EncryptRun {
    elapsed: Duration,
    peak_rss_kib: u64,
}

/// `dstore-bench datapath`.
pub fn run(args: &DatapathArgs) -> anyhow::Result<()> {
    let (version, _) = time_command(Command::new("openssl").arg("version"))?;
    eprintln!(
        "datapath: {} ({}), load average {}",
        String::from_utf8_lossy(&version.stdout).trim(),
        if cfg!(debug_assertions) {
            "dev build (optimised, but with debug assertions): report the figures of --release"
        } else {
            "release build"
        },
        load_average()
    );
    let choice = args.force.choice();
    if !choice.sha256.is_supported() {
        anyhow::bail!(
            "--sha256-impl {}: not supported by this CPU",
            choice.sha256.name()
        );
    }
    eprintln!("datapath: CPU {}", cpu_summary(&DATAPATH_CPU_FLAGS));
    eprintln!(
        "datapath: data path {choice} ({}); openssl OPENSSL_ia32cap={}",
        if choice == DataPathImpl::detected() {
            "chosen by CPU feature"
        } else {
            "FORCED for this benchmark"
        },
        args.openssl_ia32cap.as_deref().unwrap_or("(unset)")
    );

    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("dstore-bench-datapath-")
        .tempdir_in(&base)
        .with_context(|| format!("creating a temporary directory in {}", base.display()))?;
    let path = tmp.path().join("plaintext.bin");
    let bytes = args
        .size_mib
        .checked_mul(MIB)
        .context("--size-mib is too large")?;

    write_random_file(&path, bytes)?;
    warm_page_cache(&path, bytes)?;

    let mut best_encrypt = Duration::MAX;
    let mut best_openssl = Duration::MAX;
    let mut peak_rss = 0;
    for i in 1..=args.runs {
        let encrypt = run_encrypt_worker(&path, bytes, &args.force)?;
        let openssl = time_openssl(&path, args.openssl_ia32cap.as_deref())?;
        eprintln!(
            "datapath: run {i}/{}: encrypt+merkle {:.1} MiB/s, openssl sha256 {:.1} MiB/s, \
             encrypt peak RSS {:.1} MiB, load average {}",
            args.runs,
            mib_per_s(bytes, encrypt.elapsed),
            mib_per_s(bytes, openssl),
            kib_to_mib(encrypt.peak_rss_kib),
            load_average()
        );
        best_encrypt = best_encrypt.min(encrypt.elapsed);
        best_openssl = best_openssl.min(openssl);
        peak_rss = peak_rss.max(encrypt.peak_rss_kib);
    }
    tmp.close()
        .context("removing the temporary benchmark file")?;

    let encrypt_mib_s = mib_per_s(bytes, best_encrypt);
    let openssl_mib_s = mib_per_s(bytes, best_openssl);
    let ratio = encrypt_mib_s / openssl_mib_s;
    eprintln!(
        "datapath: ratio {ratio:.3} against the issue's goal of 0.8 ({})",
        if ratio >= 0.8 { "met" } else { "NOT met" }
    );
    figure(
        "datapath-encrypt-merkle-mib-s",
        format!("{encrypt_mib_s:.1}"),
    );
    figure(
        "datapath-openssl-sha256-mib-s",
        format!("{openssl_mib_s:.1}"),
    );
    figure("datapath-ratio", format!("{ratio:.3}"));
    figure("datapath-sha256-impl", choice.sha256);
    figure("datapath-aes-impl", choice.aes_gcm);
    figure(
        "datapath-peak-rss-mib",
        format!("{:.1}", kib_to_mib(peak_rss)),
    );
    Ok(())
}

/// Writes `bytes` bytes of a ChaCha stream to `path`, 1 MiB at a time, and fsyncs it.
fn write_random_file(path: &Path, bytes: u64) -> anyhow::Result<()> {
    let start = Instant::now();
    crate::measure::write_random_bytes(path, bytes)?;
    eprintln!(
        "datapath: wrote {} MiB of random bytes to {} in {:.2} s (fsynced)",
        bytes / MIB,
        path.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Reads the whole file once so that both measurements read it from the page cache.
fn warm_page_cache(path: &Path, bytes: u64) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let read = io::copy(&mut file, &mut io::sink())
        .with_context(|| format!("reading {}", path.display()))?;
    ensure!(read == bytes, "read {read} bytes back, wrote {bytes}");
    eprintln!(
        "datapath: warmed the page cache: read the file once in {:.2} s ({:.0} MiB/s); \
         both measurements read it from cache",
        start.elapsed().as_secs_f64(),
        mib_per_s(bytes, start.elapsed())
    );
    Ok(())
}

/// Runs the encrypt step in a child process (this binary, `datapath-encrypt-worker`).
fn run_encrypt_worker(path: &Path, bytes: u64, force: &ForcedImpl) -> anyhow::Result<EncryptRun> {
    let exe = std::env::current_exe().context("locating the dstore-bench binary")?;
    let (output, _) = time_command(
        Command::new(exe)
            .arg("datapath-encrypt-worker")
            .arg(path)
            .args(force.to_args())
            .stderr(Stdio::inherit()),
    )
    .context("encrypt worker")?;
    let report = Report::parse(&String::from_utf8_lossy(&output.stdout));
    let plaintext: u64 = report.get("plaintext-bytes")?;
    let ciphertext: u64 = report.get("ciphertext-bytes")?;
    ensure!(
        plaintext == bytes,
        "worker read {plaintext} bytes, the file has {bytes}"
    );
    ensure!(
        Some(ciphertext) == ciphertext_len(bytes),
        "worker committed to {ciphertext} ciphertext bytes, expected {:?}",
        ciphertext_len(bytes)
    );
    eprintln!(
        "datapath: encrypt worker ({}): root {}, self-check {}, RSS {:.1} MiB before the call",
        report.get::<String>("impl")?,
        report.get::<String>("root")?,
        report.get::<String>("self-check")?,
        kib_to_mib(report.get("baseline-rss-kib")?)
    );
    Ok(EncryptRun {
        elapsed: Duration::from_nanos(report.get("elapsed-ns")?),
        peak_rss_kib: report.get("peak-rss-kib")?,
    })
}

/// Times `openssl dgst -sha256 <path>`, with OPENSSL_ia32cap set to `ia32cap` if given.
fn time_openssl(path: &Path, ia32cap: Option<&str>) -> anyhow::Result<Duration> {
    let mut command = Command::new("openssl");
    command.args(["dgst", "-sha256"]).arg(path);
    if let Some(mask) = ia32cap {
        command.env("OPENSSL_ia32cap", mask);
    }
    let (output, elapsed) = time_command(&mut command)?;
    eprintln!(
        "datapath: openssl: {}",
        String::from_utf8_lossy(&output.stdout).trim()
    );
    Ok(elapsed)
}

/// `dstore-bench datapath-encrypt-worker <path>`: encrypts and commits the file with a
/// random key and contract id, ciphertext to a sink, and prints `key: value` lines for
/// the parent: `root`, `plaintext-bytes`, `ciphertext-bytes`, `elapsed-ns`,
/// `baseline-rss-kib`, `peak-rss-kib` (VmHWM right after the timed call), `self-check` and
/// `impl` (the implementations used, forced first if the options say so).
pub fn run_worker(args: &WorkerArgs) -> anyhow::Result<()> {
    force_for_benchmark(args.force.choice()).context("forcing the data path implementation")?;
    let key: [u8; 32] = rand::random();
    let contract_id: [u8; 32] = rand::random();
    let path = &args.path;

    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let plaintext_bytes = file
        .metadata()
        .with_context(|| format!("reading the metadata of {}", path.display()))?
        .len();
    let baseline_rss_kib = peak_rss_kib()?;
    let start = Instant::now();
    let commitment = encrypt_and_commit_parallel(&key, &contract_id, &mut file, io::sink())
        .context("encrypt_and_commit_parallel")?;
    let elapsed = start.elapsed();
    let peak_rss_kib = peak_rss_kib()?;

    // Untimed, after the VmHWM reading so that it cannot raise the figure.
    self_check(&key, &contract_id, path)?;

    println!("root: {}", hex::encode(commitment.root));
    println!("plaintext-bytes: {plaintext_bytes}");
    println!("ciphertext-bytes: {}", commitment.length);
    println!("elapsed-ns: {}", elapsed.as_nanos());
    println!("baseline-rss-kib: {baseline_rss_kib}");
    println!("peak-rss-kib: {peak_rss_kib}");
    println!("self-check: ok");
    println!("impl: {}", DataPathImpl::active());
    Ok(())
}

/// Checks that the serial and parallel paths agree on the file's first
/// [`SELF_CHECK_BYTES`] bytes (or the whole file if shorter).
fn self_check(key: &[u8; 32], contract_id: &[u8; 32], path: &Path) -> anyhow::Result<()> {
    let open = || -> anyhow::Result<_> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Ok(file.take(SELF_CHECK_BYTES))
    };
    let serial = encrypt_and_commit(key, contract_id, open()?, io::sink())
        .context("self-check: encrypt_and_commit")?;
    let parallel = encrypt_and_commit_parallel(key, contract_id, open()?, io::sink())
        .context("self-check: encrypt_and_commit_parallel")?;
    ensure!(
        serial == parallel,
        "self-check failed: serial and parallel commitments differ on the first {} bytes: \
         {serial:?} vs {parallel:?}",
        SELF_CHECK_BYTES
    );
    Ok(())
}
