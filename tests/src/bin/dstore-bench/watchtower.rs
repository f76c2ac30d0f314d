//! `watchtower`: what watching costs. The watch engine (`dstore_protocol::watch::Engine`,
//! the decision core of `dstore-watchtower`) with its RocksDB store
//! (`dstore_watchtower::store::Store`, in a temporary directory) processing a block
//! against many registered contracts, measured against decoding the same block; the
//! engine's memory per contract (its compact index: the watches themselves live in
//! RocksDB); the start-up time; the disk bytes per live and per compacted contract; and,
//! on regtest with a real `dstore-watchtower` process, the time from broadcasting a
//! reused-nonce TX2 to the tower holding the farmer's key f.
//!
//! Figures (required names first):
//!
//! * `tower-block-ms`: decoding one `--block-txs` (2,000) transaction block from its
//!   consensus bytes, loading from RocksDB the watches its transactions touch (what
//!   `Engine::touched_in_block` names), `Engine::connect_touched` and
//!   `Engine::actions` on it, with `--contracts` (100,000) renter contracts registered, as
//!   the tower does. The synced write of the changed watches afterwards is not included
//!   (it was not before either: it is the disk's, not the engine's). Median of `--runs`
//!   (20).
//! * `tower-decode-only-block-ms`: the baseline, in the same run and interleaved with the
//!   above: decoding the same bytes and computing every txid. Median of `--runs`.
//! * `tower-block-ratio`: the first over the second (what watching adds to decoding).
//! * `tower-ram-bytes-per-contract`: heap bytes live after registering the contracts (each
//!   stored in RocksDB and evicted, as the tower does) minus before, over the number of
//!   contracts, from a counting global allocator (bytes as requested from the allocator;
//!   malloc's own per-chunk overhead is not included, nor RocksDB's C++ memory, whose
//!   memtable and block cache are bounded and do not grow with the contracts).
//! * `tower-startup-s`: reopening the store and rebuilding the engine from the index
//!   records (`dstore_watchtower::tower::load_engine`, what `dstore-watchtower` does at
//!   start-up), no watch read.
//! * `tower-disk-bytes-per-contract-live` (and `tower-disk-bytes-per-contract`, the same):
//!   the database's files (table files and write-ahead log, after a flush and a full
//!   RocksDB compaction) over the number of contracts; `tower-disk-bytes-per-contract-settled`:
//!   the same after every contract is replaced by its summary (what the tower does
//!   `COMPACT_DEPTH` blocks after a contract settled).
//! * `tower-tx2-to-key-median-ms`, `tower-tx2-to-key-p99-ms`: for each of `--tx2s` (100)
//!   renter contracts on regtest, the wall time from just before `sendrawtransaction` of its
//!   real TX2 until the tower's `tower-status` shows the key (polled every millisecond).
//!   The p99 is the nearest-rank 99th percentile (the 99th of 100 samples).
//! * Extras: `tower-ram-rss-bytes-per-contract` (the same window's growth of VmRSS, which
//!   includes malloc's overhead and fragmentation), `tower-register-us` (mean
//!   registration time, `Engine::register` and the stored write together),
//!   `tower-ram-bytes-per-contract-restarted` (the heap of the engine rebuilt at start-up),
//!   `tower-block-load-ms` (the part of `tower-block-ms` spent loading the touched
//!   watches from RocksDB),
//!   `tower-block-bytes`, `tower-tx2-to-key-min-ms`,
//!   `tower-tx2-to-key-max-ms`, `tower-sendrawtransaction-ms` (median time until
//!   bitcoind's `sendrawtransaction` returns, a part of the latency that is bitcoind's)
//!   and `tower-status-rpc-ms` (median round trip of one `tower-status` poll, the
//!   resolution of the latency figures).
//!
//! The synthetic contracts are real renter registrations: each has its own keys, contract
//! id and TX1 outpoint (random txid), the ExtractSpec the plugin gives, and a real signed
//! "tx1-refund" spending that outpoint. The block has a coinbase and random-looking
//! P2WPKH spends (1 or 2 inputs, 2 outputs, P2WPKH or P2TR); ten of them touch registered
//! contracts: two real reused-nonce TX2s (f is extracted), four of the registered
//! tx1-refunds, and four random spends of registered TX1 outpoints (extraction is tried and
//! fails). The rest spend outpoints nobody watches. Every timed connect does the same work:
//! the ten touched watches are evicted without being written back (outside the timed
//! region), so each repetition loads them as stored before the block, records first
//! sightings and extracts f again, as the first connect of a block does.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeSet;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use bitcoin::absolute::LockTime;
use bitcoin::block::{Header, Version as BlockVersion};
use bitcoin::consensus::encode::{deserialize, serialize, serialize_hex};
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{SecretKey, SECP256K1};
use bitcoin::transaction::Version;
use bitcoin::{
    Amount, Block, BlockHash, CompactTarget, OutPoint, ScriptBuf, Sequence, Transaction, TxIn,
    TxMerkleNode, TxOut, Txid, WPubkeyHash, Witness,
};
use clap::Args;
use dstore_protocol::contract::{DownloadContract, RefundDestination};
use dstore_protocol::nonce_reuse::farmer_sign_tx2;
use dstore_protocol::watch::{
    Engine, ExtractSpec, Presigned, Registration, WatchRole, WatchSummary,
};
use dstore_tests::funding::{broadcast, Funder};
use dstore_tests::parties::{Parties, PRICE, REFUND_FEE, TX2_FEE};
use dstore_tests::{BitcoinNode, TowerProcess};
use dstore_watchtower::secrets::SecretBox;
use dstore_watchtower::store::Store;
use dstore_watchtower::tower::load_engine;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::{json, Value};

use crate::measure::{figure, load_average};

/// Options of `dstore-bench watchtower`.
#[derive(Debug, Args)]
pub struct WatchtowerArgs {
    /// Contracts registered in the engine for the block and memory figures.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(10..))]
    contracts: u32,
    /// Transactions in the block, coinbase included.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(11..))]
    block_txs: u32,
    /// Timed repetitions of each block figure; each figure is the median.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Renter contracts, hence TX2s, of the regtest latency figures.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    tx2s: u32,
    /// Skip the regtest latency figures (no bitcoind or dstore-watchtower needed).
    #[arg(long)]
    engine_only: bool,
}

/// A global allocator that counts the bytes live on the heap while counting is on.
///
/// It wraps the system allocator and adds one relaxed load per call when off, so the
/// other benchmarks of this binary are not measurably affected. Counting is switched on
/// once, at the start of `watchtower`; memory allocated before and freed after that would
/// be subtracted without having been added, a few kilobytes at most (clap's parse).
pub struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

impl CountingAlloc {
    fn add(bytes: isize) {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_add(bytes, Ordering::Relaxed);
        }
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counter has no
// effect on the memory handed out.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            Self::add(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            Self::add(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) };
        Self::add(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            Self::add(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// Heap bytes live now, as counted since counting started.
fn live_bytes() -> isize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

/// Switches heap counting on (for `market`'s memory figure too).
pub fn start_counting() {
    COUNTING.store(true, Ordering::Relaxed);
}

/// Heap bytes live now, as counted since counting started (for `market`).
pub fn live_heap_bytes() -> isize {
    live_bytes()
}

/// This process's resident set size now, in bytes (`VmRSS` of /proc/self/status).
fn current_rss_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")
        .context("reading /proc/self/status for VmRSS (needs Linux procfs)")?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .ok_or_else(|| anyhow!("no VmRSS line in /proc/self/status"))?;
    let kib: u64 = line
        .trim()
        .strip_suffix("kB")
        .ok_or_else(|| anyhow!("unexpected VmRSS line {line:?}"))?
        .trim()
        .parse()
        .with_context(|| format!("parsing VmRSS line {line:?}"))?;
    Ok(kib * 1024)
}

/// Height of the synthetic block; every contract's refund opens well above it.
const BLOCK_HEIGHT: u32 = 900;
const REFUND_HEIGHT: u32 = 5_000;
/// Δ of every contract.
const PAYOUT_DELAY: u16 = 144;
/// Registered contracts the block touches, by kind.
const BLOCK_TX2S: usize = 2;
const BLOCK_REFUNDS: usize = 4;
const BLOCK_OTHER_SPENDS: usize = 4;
const TOUCHED: usize = BLOCK_TX2S + BLOCK_REFUNDS + BLOCK_OTHER_SPENDS;
/// How long one TX2 may take to reach the tower before the benchmark gives up.
const KEY_TIMEOUT: Duration = Duration::from_secs(30);
/// The latency poll interval.
const POLL: Duration = Duration::from_millis(1);

/// `dstore-bench watchtower`.
pub fn run(args: &WatchtowerArgs) -> anyhow::Result<()> {
    COUNTING.store(true, Ordering::Relaxed);
    eprintln!(
        "watchtower: {}, load average {}",
        if cfg!(debug_assertions) {
            "dev build (optimised, but with debug assertions): report the figures of --release"
        } else {
            "release build"
        },
        load_average()
    );
    engine_figures(args)?;
    if args.engine_only {
        eprintln!("watchtower: --engine-only: no regtest latency figures");
        return Ok(());
    }
    latency_figures(args)?;
    eprintln!("watchtower: done, load average {}", load_average());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The engine: a block against many registrations, and memory per registration.
// ---------------------------------------------------------------------------------------

/// What the block builder needs of one registered contract.
#[derive(Clone, Copy)]
struct Kept {
    contract: DownloadContract,
    f: SecretKey,
    r: SecretKey,
    outpoint: OutPoint,
}

fn random_txid(rng: &mut StdRng) -> Txid {
    Txid::from_byte_array(rng.gen())
}

/// A fresh contract with its own keys (PROTOCOL.md 3.1's four keys and a contract id).
fn random_contract(rng: &mut StdRng) -> (DownloadContract, SecretKey, SecretKey) {
    let [f, r, r2, f2] = [(); 4].map(|_| SecretKey::new(rng));
    let contract = DownloadContract {
        contract_id: rng.gen(),
        farmer_key: f.public_key(SECP256K1),
        renter_key: r.public_key(SECP256K1),
        renter_tx2_key: r2.public_key(SECP256K1),
        farmer_tx2_key: f2.public_key(SECP256K1),
        refund_height: REFUND_HEIGHT,
        payout_delay: PAYOUT_DELAY,
        price: PRICE,
        tx1_key_order: dstore_protocol::contract::Tx1KeyOrder::RenterFirst,
    };
    (contract, f, r)
}

/// The ExtractSpec a renter registers for `contract` funded at `outpoint`.
fn extract_spec(contract: &DownloadContract, outpoint: OutPoint) -> anyhow::Result<ExtractSpec> {
    Ok(ExtractSpec {
        tx1_outpoint: outpoint,
        farmer_key: contract.farmer_key,
        contract_id: contract.contract_id,
        tx1_script_pubkey: contract.tx1_script_pubkey()?,
    })
}

/// A renter's registration: the ExtractSpec and the signed refund of TX1.
fn renter_registration(kept: &Kept) -> anyhow::Result<Registration> {
    let destination = RefundDestination::p2wpkh_of(&kept.r);
    let refund = kept
        .contract
        .tx1_refund(kept.outpoint, &kept.r, &destination, REFUND_FEE)?;
    Ok(Registration {
        id: kept.contract.contract_id,
        role: WatchRole::Renter,
        extract: Some(extract_spec(&kept.contract, kept.outpoint)?),
        transactions: vec![Presigned::new("tx1-refund", refund)],
        watch_txids: vec![],
        rescan_from_height: None,
        auditor: None,
    })
}

/// Contracts registered and stored per write (and evaluated, then evicted, together).
const REGISTER_CHUNK: usize = 1_000;
/// The tip the contracts are registered at.
const REGISTER_TIP: u32 = BLOCK_HEIGHT - 1;

/// The engine with `n` registered contracts stored in RocksDB, the ones the block will
/// touch, and the memory and time registering took.
struct Registered {
    engine: Engine,
    store: Store,
    dir: tempfile::TempDir,
    touched: Vec<Kept>,
    heap_bytes: isize,
    rss_bytes: i64,
    register_time: Duration,
}

fn open_store(dir: &tempfile::TempDir) -> anyhow::Result<Store> {
    let secrets = SecretBox::new(&dir.path().join("auditor.key"));
    Store::open(&dir.path().join("db"), secrets).context("opening the watchtower store")
}

/// What the tower does with registrations: register, evaluate at the tip, store each
/// with its index record, evict.
fn register_chunk(
    engine: &mut Engine,
    store: &Store,
    registrations: Vec<Registration>,
) -> anyhow::Result<()> {
    let mut ids = Vec::with_capacity(registrations.len());
    for registration in registrations {
        ids.push(registration.id);
        engine
            .register(registration)
            .map_err(|e| anyhow!("registering a synthetic contract: {e}"))?;
    }
    engine.actions(REGISTER_TIP, None);
    let stored = ids
        .iter()
        .filter_map(|id| Some((engine.get(id)?, engine.index_record(id, REGISTER_TIP)?)));
    store.save(stored, None)?;
    engine.evict();
    Ok(())
}

fn register_contracts(rng: &mut StdRng, n: u32) -> anyhow::Result<Registered> {
    let n = n as usize;
    let stride = n / TOUCHED;
    let mut touched = Vec::with_capacity(TOUCHED);
    let mut register_time = Duration::ZERO;
    let dir = tempfile::Builder::new()
        .prefix("dstore-bench-tower-")
        .tempdir()?;
    let store = open_store(&dir)?;
    let (heap_before, rss_before) = (live_bytes(), current_rss_bytes()?);
    let mut engine = Engine::new();
    let started = Instant::now();
    let mut chunk = Vec::with_capacity(REGISTER_CHUNK);
    for i in 0..n {
        let (contract, f, r) = random_contract(rng);
        let outpoint = OutPoint {
            txid: random_txid(rng),
            vout: 0,
        };
        let kept = Kept {
            contract,
            f,
            r,
            outpoint,
        };
        chunk.push(renter_registration(&kept)?);
        if i % stride == stride / 2 && touched.len() < TOUCHED {
            touched.push(kept);
        }
        if chunk.len() == REGISTER_CHUNK || i + 1 == n {
            let t = Instant::now();
            register_chunk(&mut engine, &store, std::mem::take(&mut chunk))?;
            register_time += t.elapsed();
        }
        if (i + 1) % 20_000 == 0 {
            eprintln!(
                "watchtower: {} contracts registered and stored ({:.1} s)",
                i + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let heap_bytes = live_bytes() - heap_before;
    let rss_bytes = current_rss_bytes()? as i64 - rss_before as i64;
    ensure!(
        engine.len() == n,
        "{} watches for {n} contracts",
        engine.len()
    );
    ensure!(
        touched.len() == TOUCHED,
        "picked {} contracts",
        touched.len()
    );
    Ok(Registered {
        engine,
        store,
        dir,
        touched,
        heap_bytes,
        rss_bytes,
        register_time,
    })
}

/// A P2WPKH or P2TR output of random value.
fn random_output(rng: &mut StdRng) -> TxOut {
    let script_pubkey = if rng.gen_bool(0.5) {
        ScriptBuf::new_p2wpkh(&WPubkeyHash::from_byte_array(rng.gen()))
    } else {
        let mut bytes = vec![0x51, 0x20];
        bytes.extend_from_slice(&rng.gen::<[u8; 32]>());
        ScriptBuf::from_bytes(bytes)
    };
    TxOut {
        value: Amount::from_sat(rng.gen_range(1_000..100_000_000)),
        script_pubkey,
    }
}

/// A random-looking P2WPKH spend: 1 or 2 inputs (the first spending `first` if given),
/// each with a 71-72 byte signature and a 33-byte key in its witness, and 2 outputs.
fn random_spend(rng: &mut StdRng, first: Option<OutPoint>) -> Transaction {
    let inputs = rng.gen_range(1..=2);
    let input = (0..inputs)
        .map(|i| {
            let previous_output = match (i, first) {
                (0, Some(outpoint)) => outpoint,
                _ => OutPoint {
                    txid: random_txid(rng),
                    vout: rng.gen_range(0..4),
                },
            };
            let mut sig = vec![0u8; rng.gen_range(71..=72)];
            rng.fill_bytes(&mut sig);
            sig[0] = 0x30;
            *sig.last_mut().expect("non-empty") = 0x01;
            let mut key = [0u8; 33];
            rng.fill_bytes(&mut key);
            key[0] = 0x02 | (key[0] & 1);
            TxIn {
                previous_output,
                script_sig: ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::from_slice(&[sig.as_slice(), key.as_slice()]),
            }
        })
        .collect();
    Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input,
        output: vec![random_output(rng), random_output(rng)],
    }
}

fn coinbase(rng: &mut StdRng) -> Transaction {
    let mut script_sig = vec![0x03];
    script_sig.extend_from_slice(&BLOCK_HEIGHT.to_le_bytes()[..3]);
    script_sig.extend_from_slice(&rng.gen::<[u8; 8]>());
    Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            script_sig: ScriptBuf::from_bytes(script_sig),
            sequence: Sequence::MAX,
            witness: Witness::from_slice(&[[0u8; 32]]),
        }],
        output: vec![random_output(rng)],
    }
}

/// The block: a coinbase, then `txs - 1` spends in random order, ten of which touch the
/// `touched` contracts. Also returns the contracts whose f it reveals.
fn build_block(rng: &mut StdRng, txs: u32, touched: &[Kept]) -> anyhow::Result<(Block, Vec<Kept>)> {
    let mut spends: Vec<Transaction> = Vec::with_capacity(txs as usize);
    let mut revealed = Vec::new();
    for (i, kept) in touched.iter().enumerate() {
        let c = &kept.contract;
        let tx = if i < BLOCK_TX2S {
            let unsigned = c.unsigned_tx2(kept.outpoint, TX2_FEE)?;
            let sig_r = c.renter_sign_tx2(&unsigned, &kept.r)?;
            revealed.push(*kept);
            farmer_sign_tx2(rng, c, &unsigned, &kept.f, &sig_r)?.tx
        } else if i < BLOCK_TX2S + BLOCK_REFUNDS {
            renter_registration(kept)?.transactions.remove(0).tx
        } else {
            random_spend(rng, Some(kept.outpoint))
        };
        spends.push(tx);
    }
    while spends.len() + 1 < txs as usize {
        spends.push(random_spend(rng, None));
    }
    // Shuffle, so the touched transactions sit anywhere in the block.
    for i in (1..spends.len()).rev() {
        let j = rng.gen_range(0..=i);
        spends.swap(i, j);
    }
    let mut txdata = vec![coinbase(rng)];
    txdata.extend(spends);
    let mut block = Block {
        header: Header {
            version: BlockVersion::TWO,
            prev_blockhash: BlockHash::from_byte_array(rng.gen()),
            merkle_root: TxMerkleNode::all_zeros(),
            time: 1_700_000_000,
            bits: CompactTarget::from_consensus(0x207f_ffff),
            nonce: rng.gen(),
        },
        txdata,
    };
    block.header.merkle_root = block
        .compute_merkle_root()
        .ok_or_else(|| anyhow!("empty block"))?;
    Ok((block, revealed))
}

/// Median: the mean of the two middle values for an even count.
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

/// Nearest-rank percentile (`p` in 0..=100).
fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// Decodes the block and computes every txid: the baseline.
fn decode_only(bytes: &[u8]) -> anyhow::Result<(Duration, Block, Vec<Txid>)> {
    let start = Instant::now();
    let block: Block = deserialize(bytes).context("decoding the block")?;
    let txids: Vec<Txid> = block.txdata.iter().map(Transaction::compute_txid).collect();
    let took = start.elapsed();
    Ok((took, black_box(block), black_box(txids)))
}

/// Loads the stored watches among `ids` (what the tower's `page_in` does).
fn page_in(engine: &mut Engine, store: &Store, ids: &BTreeSet<[u8; 32]>) -> anyhow::Result<()> {
    for id in ids {
        if let Some(watch) = store.load(id)? {
            engine.page_in(watch);
        }
    }
    Ok(())
}

/// Decodes the block and connects it: what the tower does with a block's bytes.
fn decode_and_connect(
    engine: &mut Engine,
    store: &Store,
    bytes: &[u8],
) -> anyhow::Result<(Duration, Duration, Block, BTreeSet<[u8; 32]>)> {
    let start = Instant::now();
    let block: Block = deserialize(bytes).context("decoding the block")?;
    let txids: Vec<Txid> = block.txdata.iter().map(Transaction::compute_txid).collect();
    let touched = engine.touched_in_block(&block, &txids);
    let wanted = engine.wanted_in(&touched);
    let loading = Instant::now();
    page_in(engine, store, &wanted)?;
    let loading = loading.elapsed();
    let changed = engine.connect_touched(&block, &touched, BLOCK_HEIGHT);
    // What is due now, among the watches the block touched or that were scheduled for
    // this height.
    let wanted = engine.wanted_at(BLOCK_HEIGHT);
    page_in(engine, store, &wanted)?;
    let actions = engine.actions(BLOCK_HEIGHT, None);
    let took = start.elapsed();
    ensure!(
        actions.broadcasts.is_empty(),
        "{} refunds due at height {BLOCK_HEIGHT}",
        actions.broadcasts.len()
    );
    Ok((took, loading, black_box(block), black_box(changed)))
}

fn engine_figures(args: &WatchtowerArgs) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(0x70_3e);
    eprintln!(
        "watchtower: registering {} synthetic renter contracts (real keys and refunds)…",
        args.contracts
    );
    let Registered {
        mut engine,
        store,
        dir,
        touched,
        heap_bytes,
        rss_bytes,
        register_time,
    } = register_contracts(&mut rng, args.contracts)?;
    let n = f64::from(args.contracts);
    let db = dir.path().join("db");
    let live_disk = store.disk_bytes(&db)?;

    let (block, revealed) = build_block(&mut rng, args.block_txs, &touched)?;
    let bytes = serialize(&block);
    let ids: Vec<[u8; 32]> = touched.iter().map(|k| k.contract.contract_id).collect();
    let expected: BTreeSet<[u8; 32]> = ids.iter().copied().collect();
    eprintln!(
        "watchtower: block of {} transactions, {} bytes; {} runs each, interleaved, after one \
         unmeasured warm-up…",
        block.txdata.len(),
        bytes.len(),
        args.runs
    );
    drop(block);

    let (mut decode_times, mut tower_times) = (Vec::new(), Vec::new());
    let mut load_times = Vec::new();
    for run in 0..=args.runs {
        let (took, block, txids) = decode_only(&bytes)?;
        ensure!(txids.len() == block.txdata.len());
        drop((block, txids));
        if run > 0 {
            decode_times.push(took);
        }

        let (took, loading, block, changed) = decode_and_connect(&mut engine, &store, &bytes)?;
        ensure!(
            changed == expected,
            "the block changed {} watches, not the {} it touches",
            changed.len(),
            expected.len()
        );
        for kept in &revealed {
            let id = &kept.contract.contract_id;
            let watch = engine.get(id).ok_or_else(|| anyhow!("watch missing"))?;
            ensure!(
                watch.key.as_ref().map(|k| k.secret) == Some(kept.f),
                "f not extracted from a TX2 in the block"
            );
        }
        drop((block, changed));
        if run > 0 {
            tower_times.push(took);
            load_times.push(loading);
        }
        // Back to the state before the block, outside the timed region, so the next
        // connect loads the watches as stored and records and extracts again.
        engine.evict();
    }
    let decode = median(&decode_times);
    let tower = median(&tower_times);
    drop(engine);

    eprintln!("watchtower: restarting: reopening the store and rebuilding the index…");
    drop(store);
    let heap_before_start = live_bytes();
    let started = Instant::now();
    let store = open_store(&dir)?;
    let engine = load_engine(&store).map_err(|e| anyhow!("rebuilding the engine: {e}"))?;
    let startup = started.elapsed();
    ensure!(
        engine.len() == args.contracts as usize,
        "{} watches after the restart",
        engine.len()
    );
    let restarted_heap = live_bytes() - heap_before_start;
    drop(engine);

    eprintln!("watchtower: compacting every contract to its summary…");
    let settled_disk = compact_all(&store, &db)?;

    figure("tower-block-ms", ms(tower));
    figure("tower-decode-only-block-ms", ms(decode));
    figure("tower-block-load-ms", ms(median(&load_times)));
    figure(
        "tower-block-ratio",
        format!("{:.3}", tower.as_secs_f64() / decode.as_secs_f64()),
    );
    figure(
        "tower-ram-bytes-per-contract",
        format!("{:.1}", heap_bytes as f64 / n),
    );
    figure(
        "tower-ram-rss-bytes-per-contract",
        format!("{:.1}", rss_bytes as f64 / n),
    );
    figure("tower-startup-s", format!("{:.3}", startup.as_secs_f64()));
    figure(
        "tower-ram-bytes-per-contract-restarted",
        format!("{:.1}", restarted_heap as f64 / n),
    );
    let live = format!("{:.1}", live_disk as f64 / n);
    figure("tower-disk-bytes-per-contract", &live);
    figure("tower-disk-bytes-per-contract-live", &live);
    figure(
        "tower-disk-bytes-per-contract-settled",
        format!("{:.1}", settled_disk as f64 / n),
    );
    figure(
        "tower-register-us",
        format!("{:.2}", register_time.as_secs_f64() * 1e6 / n),
    );
    figure("tower-block-bytes", bytes.len());
    Ok(())
}

/// Replaces every stored contract by its summary (as if all had settled), a thousand per
/// write; returns the database's bytes on disk afterwards.
fn compact_all(store: &Store, db: &std::path::Path) -> anyhow::Result<u64> {
    let mut summaries: Vec<WatchSummary> = Vec::with_capacity(REGISTER_CHUNK);
    let all: Vec<[u8; 32]> = store.index_records()?.into_iter().map(|r| r.id).collect();
    for ids in all.chunks(REGISTER_CHUNK) {
        for id in ids {
            let watch = store.load(id)?.ok_or_else(|| anyhow!("watch missing"))?;
            summaries.push(watch.summary(REFUND_HEIGHT + 200));
        }
        store.compact_many(&summaries)?;
        summaries.clear();
    }
    ensure!(
        store.index_records()?.is_empty(),
        "watches left after compaction"
    );
    Ok(store.disk_bytes(db)?)
}

// ---------------------------------------------------------------------------------------
// Regtest: TX2 broadcast to key, through bitcoind's ZMQ and a real dstore-watchtower.
// ---------------------------------------------------------------------------------------

fn latency_figures(args: &WatchtowerArgs) -> anyhow::Result<()> {
    let n = args.tx2s;
    let mut rng = StdRng::seed_from_u64(0x70_3f);
    eprintln!("watchtower: starting regtest bitcoind and funding {n} TX1s…");
    let node = BitcoinNode::start();
    let mut funder = Funder::new(&node, n);
    let parties: Vec<Parties> = (0..n)
        .map(|_| Parties::new(&node, &mut rng, 1_000, PAYOUT_DELAY))
        .collect();
    // One coinbase per TX1, so none of them waits on another's change.
    let mut outpoints = Vec::with_capacity(parties.len());
    for p in &parties {
        let tx1 = funder.build(p.contract.tx1_output()?);
        broadcast(&node, &tx1).map_err(|e| anyhow!("TX1 refused: {e}"))?;
        outpoints.push(OutPoint {
            txid: tx1.compute_txid(),
            vout: 0,
        });
    }
    node.mine(1);
    for outpoint in &outpoints {
        let confirmations = node.confirmations(&outpoint.txid.to_string());
        ensure!(confirmations == 1, "TX1 {} not confirmed", outpoint.txid);
    }

    eprintln!("watchtower: starting dstore-watchtower (builds the workspace binaries if stale)…");
    let tower = TowerProcess::start(&node);
    tower.wait_for_tip(node.block_count());
    for (p, outpoint) in parties.iter().zip(&outpoints) {
        let registration = Registration {
            id: p.contract.contract_id,
            role: WatchRole::Renter,
            extract: Some(extract_spec(&p.contract, *outpoint)?),
            transactions: vec![],
            watch_txids: vec![],
            rescan_from_height: None,
            auditor: None,
        };
        tower
            .call(
                "tower-register",
                json!([serde_json::to_value(&registration)?]),
            )
            .map_err(|e| anyhow!("tower-register: {e}"))?;
    }

    eprintln!("watchtower: {n} TX2s, one at a time, each until the tower has f…");
    let (mut latencies, mut accepted) = (Vec::with_capacity(n as usize), Vec::new());
    for (p, outpoint) in parties.iter().zip(&outpoints) {
        let id = hex::encode(p.contract.contract_id);
        let tx2 = p.tx2(&mut rng, *outpoint).tx;
        let hex_tx2 = serialize_hex(&tx2);
        let start = Instant::now();
        node.rpc("sendrawtransaction", json!([hex_tx2]))
            .map_err(|e| anyhow!("TX2 refused: {e}"))?;
        accepted.push(start.elapsed());
        let status = loop {
            let status = tower_status(&tower, &id)?;
            if !status["key"].is_null() {
                break status;
            }
            if start.elapsed() > KEY_TIMEOUT {
                bail!(
                    "no key from the tower {KEY_TIMEOUT:?} after TX2 {}",
                    tx2.compute_txid()
                );
            }
            std::thread::sleep(POLL);
        };
        latencies.push(start.elapsed());
        ensure!(
            status["key"]["secret"].as_str() == Some(hex::encode(p.f.secret_bytes()).as_str()),
            "the tower extracted a wrong key for {id}"
        );
    }

    let id = hex::encode(parties[0].contract.contract_id);
    let mut polls = Vec::with_capacity(100);
    for _ in 0..100 {
        let start = Instant::now();
        tower_status(&tower, &id)?;
        polls.push(start.elapsed());
    }

    figure("tower-tx2-to-key-median-ms", ms(median(&latencies)));
    figure("tower-tx2-to-key-p99-ms", ms(percentile(&latencies, 99.0)));
    figure("tower-tx2-to-key-min-ms", ms(percentile(&latencies, 0.0)));
    figure("tower-tx2-to-key-max-ms", ms(percentile(&latencies, 100.0)));
    figure("tower-sendrawtransaction-ms", ms(median(&accepted)));
    figure("tower-status-rpc-ms", ms(median(&polls)));
    Ok(())
}

fn tower_status(tower: &TowerProcess, id: &str) -> anyhow::Result<Value> {
    tower
        .call("tower-status", json!([id]))
        .map_err(|e| anyhow!("tower-status {id}: {e}"))
}
