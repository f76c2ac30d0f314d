//! `audit`: what auditing costs. Off-chain Merkle audits
//! (`dstore_protocol::audit::merkle_audit`): the size of a farmer's answer, the auditor's
//! verification time, and the farmer's time to answer by streaming the file (and from a
//! stored leaf file) against a plain sequential read of the same file in the same run;
//! and the renter's time to generate the salted candidates of the paid audits
//! (`dstore_protocol::audit::candidates`).
//!
//! Figures (`<size>` is `1gib` for the default `--size-mib 1024`, `64gib` for the default
//! `--large-gib 64`):
//!
//! * `audit-merkle-proof-bytes-<size>`: bytes of the farmer's whole answer to a challenge
//!   of `--k` (16) segments, serialized as compact JSON (`MerkleAnswer`: contract id,
//!   block hash, and per item the index, the segment in hex and its `MerkleProof`), i.e.
//!   what travels over HTTP. `audit-merkle-path-bytes-<size>` is the proofs' hashes alone,
//!   32 bytes each.
//! * `audit-merkle-verify-us`: `verify_answer` on the `<size>` answer (challenge derivation
//!   included), median of `--verify-runs` (1001). Baseline in the same run:
//!   `audit-merkle-verify-leaves-us`, hashing the k segments into their leaves only (the
//!   part no verifier can skip), median of as many runs; `audit-merkle-verify-ratio` is
//!   the first over the second.
//! * `audit-read-s-<size>`: the baseline, reading the file sequentially (1 MiB reads, into
//!   nothing). `audit-merkle-answer-s-<size>`: `AnswerBuilder::for_challenge` fed the
//!   file by the same reads, then `finish` (one pass: leaf hashes, subtree hashes, the
//!   challenged segments and paths). `audit-merkle-answer-ratio-<size>`: answer over read.
//!   For the 1 GiB file these are medians of `--runs` (3) alternating runs, and
//!   `audit-sha256-s-1gib` adds a second baseline, SHA-256 of the file by the same reads.
//! * `audit-merkle-answer-leaffile-s-<size>`: answering from a stored leaf file (the 32-byte
//!   leaf hashes in order, 1/128 of the data; written untimed beforehand): reading it,
//!   `push_leaf` for each, `read_exact_at` of the k segments, `finish`.
//!   `audit-merkle-answer-leaffile-ratio-<size>` is over the same read baseline.
//! * `audit-peak-rss-mib-<size>`: this process's peak RSS (VmHWM) after the `<size>` figures;
//!   equal figures for 1 GiB and 64 GiB show that answering does not grow with the file.
//! * `audit-candidates-s`: generating the candidates of `--audits` (52) audits of 2·`--m`
//!   (16) candidates each, 832 in all, over the 1 GiB file: `choose_secrets`, then for
//!   each candidate `read_exact_at` of its segment and `candidate` (x = SHA256("dstore/audit"
//!   ‖ salt ‖ segment), H = HASH160(x)). Median of `--candidate-runs` (21), each with fresh
//!   secrets. `audit-candidates-hash-share`: the fraction of that time spent in
//!   `candidate` (summed over all runs), the rest being mostly the segment reads.
//!   `audit-candidates-count` is the number of candidates per run.
//!
//! The 1 GiB file is a fresh ChaCha stream, fsynced, then read once to warm the page
//! cache, so every measurement on it reads from memory (the candidates' random reads
//! too: a cold disk would make them seek-bound). The 64 GiB file is sparse (`set_len` in the
//! temporary directory), so its reads are the kernel's zero fill at memory speed, not a
//! disk's: on a real disk the read baseline, and with it the streaming answer, would be
//! bounded by the disk. Every answer is checked, untimed, with `verify_answer` against the
//! root folded from the leaf file (and, for the 1 GiB file, against `MerkleBuilder`'s root),
//! and the streaming and leaf-file answers must be equal.

use std::fs::File;
use std::hint::black_box;
use std::io::{self, BufWriter, ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Args;
use dstore_protocol::audit::candidates::{candidate, choose_secrets};
use dstore_protocol::audit::merkle_audit::{verify_answer, AnswerBuilder, MerkleAnswer};
use dstore_protocol::merkle::{
    commit_root, empty_tree_hash, leaf_hash, node_hash, segment_count, segment_len, Hash32,
    MerkleBuilder, SEGMENT_SIZE,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use sha2::{Digest, Sha256};

use crate::measure::{figure, kib_to_mib, load_average, peak_rss_kib, MIB};

/// Bytes in a GiB.
const GIB: u64 = 1 << 30;

/// Bytes per sequential read: a multiple of the segment and of a leaf hash.
const CHUNK: usize = MIB as usize;

/// Options of `dstore-bench audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Size of the random benchmark file in MiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    size_mib: u64,
    /// Size of the sparse large file in GiB (0: skip the large-file figures).
    #[arg(long, default_value_t = 64)]
    large_gib: u64,
    /// Segments per Merkle challenge.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    k: u16,
    /// Paid audits whose candidates are generated.
    #[arg(long, default_value_t = 52, value_parser = clap::value_parser!(u32).range(1..))]
    audits: u32,
    /// Candidates opened per audit (each audit has 2m candidates).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    m: u32,
    /// Alternating timed runs of the 1 GiB read and answer figures (medians).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Timed runs of the verification figures (medians).
    #[arg(long, default_value_t = 1001, value_parser = clap::value_parser!(u32).range(1..))]
    verify_runs: u32,
    /// Timed runs of the candidate generation (median).
    #[arg(long, default_value_t = 21, value_parser = clap::value_parser!(u32).range(1..))]
    candidate_runs: u32,
    /// Directory in which to create the temporary files [default: a fresh temporary
    /// directory under the system temp dir].
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// A data file with its stored leaf hashes and committed root.
struct Prepared {
    data: PathBuf,
    leaves: PathBuf,
    length: u64,
    root: Hash32,
    label: String,
}

/// The challenge every answer responds to.
struct Challenge {
    contract_id: [u8; 32],
    block_hash: [u8; 32],
    k: usize,
}

/// `dstore-bench audit`.
pub fn run(args: &AuditArgs) -> anyhow::Result<()> {
    eprintln!(
        "audit: {}, load average {}",
        if cfg!(debug_assertions) {
            "dev build (optimised, but with debug assertions): report the figures of --release"
        } else {
            "release build"
        },
        load_average()
    );
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("dstore-bench-audit-")
        .tempdir_in(&base)
        .with_context(|| format!("creating a temporary directory in {}", base.display()))?;
    let challenge = Challenge {
        contract_id: rand::random(),
        block_hash: rand::random(),
        k: usize::from(args.k),
    };

    let small = prepare_random(tmp.path(), args.size_mib)?;
    let answer = small_file_figures(args, &small, &challenge)?;
    verify_figures(args, &small, &challenge, &answer)?;
    candidate_figures(args, &small)?;
    rss_figure(&small.label)?;
    remove(&small)?;

    if args.large_gib > 0 {
        let large = prepare_sparse(tmp.path(), args.large_gib)?;
        large_file_figures(&large, &challenge)?;
        rss_figure(&large.label)?;
        remove(&large)?;
    }
    tmp.close().context("removing the temporary directory")?;
    Ok(())
}

/// Writes the random file, warms the page cache, and stores its leaf file.
fn prepare_random(dir: &Path, size_mib: u64) -> anyhow::Result<Prepared> {
    let length = size_mib
        .checked_mul(MIB)
        .context("--size-mib is too large")?;
    let data = dir.join("random.bin");
    let start = Instant::now();
    crate::measure::write_random_bytes(&data, length)?;
    eprintln!(
        "audit: wrote {size_mib} MiB of random bytes in {:.2} s (fsynced)",
        start.elapsed().as_secs_f64()
    );
    let warm = read_baseline(&data)?;
    eprintln!(
        "audit: warmed the page cache in {:.2} s",
        warm.as_secs_f64()
    );
    let prepared = prepare_leaves(data, length, "random")?;
    let mut builder = MerkleBuilder::new();
    stream_file(&prepared.data, |chunk| builder.update(chunk))?;
    ensure!(
        builder.finish().root == prepared.root,
        "the root folded from the leaf file differs from MerkleBuilder's"
    );
    Ok(prepared)
}

/// Creates the sparse file of `gib` GiB and stores its leaf file.
fn prepare_sparse(dir: &Path, gib: u64) -> anyhow::Result<Prepared> {
    let length = gib.checked_mul(GIB).context("--large-gib is too large")?;
    let data = dir.join("sparse.bin");
    File::create(&data)
        .and_then(|f| f.set_len(length))
        .with_context(|| format!("creating the sparse file {}", data.display()))?;
    prepare_leaves(data, length, "sparse")
}

/// Writes the leaf file next to `data` (untimed setup) and returns both with the root.
fn prepare_leaves(data: PathBuf, length: u64, name: &str) -> anyhow::Result<Prepared> {
    let leaves = data.with_file_name(format!("{name}.leaves"));
    let start = Instant::now();
    let root = write_leaf_file(&data, &leaves, length)?;
    eprintln!(
        "audit: wrote the leaf file of {} ({} segments) in {:.2} s, root {}",
        data.display(),
        segment_count(length),
        start.elapsed().as_secs_f64(),
        hex::encode(root)
    );
    Ok(Prepared {
        data,
        leaves,
        length,
        root,
        label: size_label(length),
    })
}

/// `1gib`, `64gib`, or `<n>mib` for sizes that are not whole GiB.
fn size_label(length: u64) -> String {
    if length.is_multiple_of(GIB) {
        format!("{}gib", length / GIB)
    } else {
        format!("{}mib", length / MIB)
    }
}

/// Hashes `data` segment by segment into `leaves` and returns the committed root.
fn write_leaf_file(data: &Path, leaves: &Path, length: u64) -> anyhow::Result<Hash32> {
    let file = File::create(leaves).with_context(|| format!("creating {}", leaves.display()))?;
    let mut out = BufWriter::with_capacity(CHUNK, file);
    let mut fold = LeafFold::default();
    let mut failure = Ok(());
    let read = stream_file(data, |chunk| {
        for segment in chunk.chunks(SEGMENT_SIZE) {
            let leaf = leaf_hash(segment).expect("chunks are cut at SEGMENT_SIZE");
            fold.push(leaf);
            if failure.is_ok() {
                failure = out.write_all(&leaf);
            }
        }
    })?;
    failure.with_context(|| format!("writing {}", leaves.display()))?;
    ensure!(read == length, "read {read} bytes of {}", data.display());
    out.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .with_context(|| format!("finishing {}", leaves.display()))?;
    Ok(fold.root(length))
}

/// A Merkle stack over leaf hashes: the committed root without holding the leaves.
#[derive(Default)]
struct LeafFold {
    stack: Vec<(Hash32, u64)>,
}

impl LeafFold {
    fn push(&mut self, leaf: Hash32) {
        let mut node = (leaf, 1u64);
        while let Some(&(left, size)) = self.stack.last() {
            if size != node.1 {
                break;
            }
            self.stack.pop();
            node = (node_hash(&left, &node.0), size * 2);
        }
        self.stack.push(node);
    }

    fn root(self, length: u64) -> Hash32 {
        let tree = self
            .stack
            .iter()
            .rev()
            .map(|(hash, _)| *hash)
            .reduce(|right, left| node_hash(&left, &right))
            .unwrap_or_else(empty_tree_hash);
        commit_root(&tree, length)
    }
}

/// Reads `path` sequentially in full [`CHUNK`]-byte pieces (the last may be shorter),
/// handing each to `consume`; returns the bytes read.
fn stream_file(path: &Path, mut consume: impl FnMut(&[u8])) -> anyhow::Result<u64> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buffer = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let filled =
            fill(&mut file, &mut buffer).with_context(|| format!("reading {}", path.display()))?;
        if filled == 0 {
            return Ok(total);
        }
        consume(&buffer[..filled]);
        total += filled as u64;
    }
}

/// Reads until `buffer` is full or the file ends; returns the bytes read.
fn fill(file: &mut File, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The baseline: a plain sequential read of the file.
fn read_baseline(path: &Path) -> anyhow::Result<Duration> {
    let start = Instant::now();
    stream_file(path, |chunk| {
        black_box(chunk);
    })?;
    Ok(start.elapsed())
}

/// The second baseline for the small file: SHA-256 of the whole file.
fn sha256_baseline(path: &Path) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut hasher = Sha256::new();
    stream_file(path, |chunk| hasher.update(chunk))?;
    black_box(hasher.finalize());
    Ok(start.elapsed())
}

/// The farmer answers by streaming the data file through an [`AnswerBuilder`].
fn answer_by_streaming(
    file: &Prepared,
    challenge: &Challenge,
) -> anyhow::Result<(MerkleAnswer, Duration)> {
    let start = Instant::now();
    let mut builder = AnswerBuilder::for_challenge(
        &challenge.contract_id,
        &challenge.block_hash,
        file.length,
        challenge.k,
    )?;
    stream_file(&file.data, |chunk| builder.update(chunk))?;
    let answer = builder.finish(challenge.contract_id, challenge.block_hash)?;
    Ok((answer, start.elapsed()))
}

/// The farmer answers from its leaf file plus reads of the challenged segments.
fn answer_from_leaf_file(
    file: &Prepared,
    challenge: &Challenge,
) -> anyhow::Result<(MerkleAnswer, Duration)> {
    let start = Instant::now();
    let mut builder = AnswerBuilder::for_challenge(
        &challenge.contract_id,
        &challenge.block_hash,
        file.length,
        challenge.k,
    )?;
    let mut failure = Ok(());
    stream_file(&file.leaves, |chunk| {
        for leaf in chunk.chunks_exact(32) {
            let leaf: Hash32 = leaf.try_into().expect("chunks of 32 bytes");
            if failure.is_ok() {
                failure = builder.push_leaf(leaf);
            }
        }
    })?;
    failure?;
    let data =
        File::open(&file.data).with_context(|| format!("opening {}", file.data.display()))?;
    for index in builder.indices() {
        builder.add_segment(index, read_segment(&data, file.length, index)?)?;
    }
    let answer = builder.finish(challenge.contract_id, challenge.block_hash)?;
    Ok((answer, start.elapsed()))
}

/// The real bytes of segment `index` of `data`.
fn read_segment(data: &File, length: u64, index: u64) -> anyhow::Result<Vec<u8>> {
    let mut segment = vec![0u8; segment_len(length, index)?];
    data.read_exact_at(&mut segment, index * SEGMENT_SIZE as u64)
        .with_context(|| format!("reading segment {index}"))?;
    Ok(segment)
}

/// Checks an answer against the file's root (untimed).
fn check_answer(
    file: &Prepared,
    challenge: &Challenge,
    answer: &MerkleAnswer,
) -> anyhow::Result<()> {
    verify_answer(
        &file.root,
        file.length,
        &challenge.contract_id,
        &challenge.block_hash,
        challenge.k,
        answer,
    )
    .context("the benchmark's own answer does not verify")
}

/// Size figures of an answer: compact JSON, and the path hashes alone.
fn size_figures(label: &str, answer: &MerkleAnswer) -> anyhow::Result<()> {
    let json = serde_json::to_vec(answer).context("serializing the answer")?;
    let path_bytes: usize = answer.items.iter().map(|i| 32 * i.proof.path.len()).sum();
    figure(&format!("audit-merkle-proof-bytes-{label}"), json.len());
    figure(&format!("audit-merkle-path-bytes-{label}"), path_bytes);
    Ok(())
}

/// Read, SHA-256, streaming-answer and leaf-file-answer figures of the small file.
fn small_file_figures(
    args: &AuditArgs,
    file: &Prepared,
    challenge: &Challenge,
) -> anyhow::Result<MerkleAnswer> {
    let (mut reads, mut hashes, mut answers, mut leaf_answers) = (vec![], vec![], vec![], vec![]);
    let mut last = None;
    for run in 1..=args.runs {
        let read = read_baseline(&file.data)?;
        let sha = sha256_baseline(&file.data)?;
        let (answer, streamed) = answer_by_streaming(file, challenge)?;
        let (from_leaves, leafed) = answer_from_leaf_file(file, challenge)?;
        ensure!(
            answer == from_leaves,
            "streaming and leaf-file answers differ"
        );
        check_answer(file, challenge, &answer)?;
        eprintln!(
            "audit: {} run {run}/{}: read {:.3} s, sha256 {:.3} s, answer {:.3} s, \
             leaf-file answer {:.3} s, load average {}",
            file.label,
            args.runs,
            read.as_secs_f64(),
            sha.as_secs_f64(),
            streamed.as_secs_f64(),
            leafed.as_secs_f64(),
            load_average()
        );
        reads.push(read);
        hashes.push(sha);
        answers.push(streamed);
        leaf_answers.push(leafed);
        last = Some(answer);
    }
    let answer = last.context("no runs")?;
    let label = &file.label;
    size_figures(label, &answer)?;
    let read = median(&reads);
    figure(&format!("audit-read-s-{label}"), seconds(read));
    figure(&format!("audit-sha256-s-{label}"), seconds(median(&hashes)));
    answer_figures(label, read, median(&answers), median(&leaf_answers));
    Ok(answer)
}

/// Answer times and their ratios over the read baseline.
fn answer_figures(label: &str, read: Duration, streamed: Duration, leafed: Duration) {
    figure(&format!("audit-merkle-answer-s-{label}"), seconds(streamed));
    figure(
        &format!("audit-merkle-answer-ratio-{label}"),
        format!("{:.2}", ratio(streamed, read)),
    );
    figure(
        &format!("audit-merkle-answer-leaffile-s-{label}"),
        seconds(leafed),
    );
    figure(
        &format!("audit-merkle-answer-leaffile-ratio-{label}"),
        format!("{:.3}", ratio(leafed, read)),
    );
}

/// The large sparse file: one run of each.
fn large_file_figures(file: &Prepared, challenge: &Challenge) -> anyhow::Result<()> {
    let read = read_baseline(&file.data)?;
    eprintln!("audit: {}: read in {:.1} s", file.label, read.as_secs_f64());
    let (answer, streamed) = answer_by_streaming(file, challenge)?;
    eprintln!(
        "audit: {}: answered in {:.1} s",
        file.label,
        streamed.as_secs_f64()
    );
    let (from_leaves, leafed) = answer_from_leaf_file(file, challenge)?;
    ensure!(
        answer == from_leaves,
        "streaming and leaf-file answers differ"
    );
    check_answer(file, challenge, &answer)?;
    size_figures(&file.label, &answer)?;
    figure(&format!("audit-read-s-{}", file.label), seconds(read));
    answer_figures(&file.label, read, streamed, leafed);
    Ok(())
}

/// Verification time of `answer` against hashing its segments into leaves.
fn verify_figures(
    args: &AuditArgs,
    file: &Prepared,
    challenge: &Challenge,
    answer: &MerkleAnswer,
) -> anyhow::Result<()> {
    let mut verifies = Vec::new();
    let mut leaves = Vec::new();
    for _ in 0..args.verify_runs {
        let start = Instant::now();
        let verdict = verify_answer(
            &file.root,
            file.length,
            &challenge.contract_id,
            &challenge.block_hash,
            challenge.k,
            black_box(answer),
        );
        verifies.push(start.elapsed());
        verdict.context("the benchmark's own answer does not verify")?;

        let start = Instant::now();
        for item in &black_box(answer).items {
            black_box(leaf_hash(&item.segment)?);
        }
        leaves.push(start.elapsed());
    }
    let (verify, leaf) = (median(&verifies), median(&leaves));
    figure("audit-merkle-verify-us", micros(verify));
    figure("audit-merkle-verify-leaves-us", micros(leaf));
    figure(
        "audit-merkle-verify-ratio",
        format!("{:.2}", ratio(verify, leaf)),
    );
    Ok(())
}

/// Generation time of the paid audits' candidates, and its hashing share.
fn candidate_figures(args: &AuditArgs, file: &Prepared) -> anyhow::Result<()> {
    let count = usize::try_from(u64::from(args.audits) * 2 * u64::from(args.m))
        .context("too many candidates")?;
    let segments = segment_count(file.length);
    let data =
        File::open(&file.data).with_context(|| format!("opening {}", file.data.display()))?;
    let mut rng = StdRng::from_entropy();
    let (mut totals, mut total_all, mut hashing_all) = (Vec::new(), Duration::ZERO, Duration::ZERO);
    for _ in 0..args.candidate_runs {
        let start = Instant::now();
        let mut hashing = Duration::ZERO;
        let secrets = choose_secrets(&mut rng, segments, count);
        let mut candidates = Vec::with_capacity(count);
        for secret in secrets {
            let segment = read_segment(&data, file.length, secret.segment_index)?;
            let hash_start = Instant::now();
            candidates.push(candidate(secret, &segment));
            hashing += hash_start.elapsed();
        }
        let total = start.elapsed();
        black_box(&candidates);
        ensure!(
            candidates.len() == count,
            "made {} candidates",
            candidates.len()
        );
        totals.push(total);
        total_all += total;
        hashing_all += hashing;
    }
    eprintln!(
        "audit: candidates: {count} per run over {} segments, {} runs",
        segments, args.candidate_runs
    );
    figure(
        "audit-candidates-s",
        format!("{:.6}", median(&totals).as_secs_f64()),
    );
    figure(
        "audit-candidates-hash-share",
        format!("{:.3}", ratio(hashing_all, total_all)),
    );
    figure("audit-candidates-count", count);
    Ok(())
}

/// Peak RSS so far, as `audit-peak-rss-mib-<label>`.
fn rss_figure(label: &str) -> anyhow::Result<()> {
    figure(
        &format!("audit-peak-rss-mib-{label}"),
        format!("{:.1}", kib_to_mib(peak_rss_kib()?)),
    );
    Ok(())
}

/// Deletes a prepared file pair.
fn remove(file: &Prepared) -> anyhow::Result<()> {
    for path in [&file.data, &file.leaves] {
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2
    }
}

fn ratio(numerator: Duration, denominator: Duration) -> f64 {
    numerator.as_secs_f64() / denominator.as_secs_f64()
}

fn seconds(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

fn micros(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}
