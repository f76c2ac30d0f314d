//! `market`: what following the farmer market costs a renter.
//!
//! Figures (required names first):
//!
//! * `market-scan-blocks-per-s`: one real regtest block of `--block-txs` (2,000)
//!   transactions fetched with `getblock <hash> 0` from bitcoind, hex-decoded, parsed and
//!   scanned with the plugin's `market::scanner::scan_block` against a market of
//!   `--farmers` (10,000) announced farmers. One over the median of `--runs` (20).
//! * `market-scan-ratio`: that rate over the rate of `getblock <hash> 0` alone, timed in the
//!   same run, interleaved (goal: at least 0.5).
//! * `market-ram-bytes-per-farmer`: heap bytes live after building the market's in-memory
//!   state for `--farmers` farmers (announcement, bond, identity index and a signed advert
//!   each) minus before, over the number of farmers, from the counting global allocator.
//! * Extras: `market-getblock-ms`, `market-scan-ms` (getblock + decode + scan),
//!   `market-scan-only-ms` (scan_block alone on the parsed block), `market-decode-ms` (hex
//!   decode and parse of getblock's reply alone), `market-block-bytes`.
//!
//! The block is real and valid: its transactions are built here and mined with
//! `generateblock`: P2WPKH spends of coinbases, five announcements (a real bond output and
//! its `DSA` OP_RETURN) and ten lease records (three P2WSH outputs and a `DSL` record
//! signed by an announced farmer), each special one after its own funding transaction.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context};
use bitcoin::absolute::LockTime;
use bitcoin::consensus::encode::serialize_hex;
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{Keypair, Message, SecretKey, SECP256K1};
use bitcoin::sighash::SighashCache;
use bitcoin::transaction::Version;
use bitcoin::{
    Amount, Block, CompressedPublicKey, EcdsaSighashType, OutPoint, ScriptBuf, Sequence,
    Transaction, TxIn, TxOut, Txid, WPubkeyHash, WScriptHash, Witness,
};
use clap::Args;
use dstore_plugin::market::scanner::{parse_block, scan_block, ScanSettings};
use dstore_plugin::market::store::{AnnouncementRec, BondRec, Key, MarketState, Record};
use dstore_protocol::market::advert::{sign_advert, Advert};
use dstore_protocol::market::announce::Announcement;
use dstore_protocol::market::bond::bond_script_pubkey;
use dstore_protocol::market::lease::sign_lease;
use dstore_tests::funding::Funder;
use dstore_tests::BitcoinNode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::measure::{figure, load_average};

/// Options of `dstore-bench market`.
#[derive(Debug, Args)]
pub struct MarketArgs {
    /// Transactions in the scanned block, coinbase included.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(100..))]
    block_txs: u32,
    /// Farmers announced in the market the block is scanned against (and of the RAM figure).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(10..))]
    farmers: u32,
    /// Timed repetitions; each time figure is the median.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
}

const ANNOUNCEMENTS: usize = 5;
const LEASES: usize = 10;
const LEASED_OUTPUTS: usize = 3;
const BOND_SAT: u64 = 50_000;
const BOND_LOCKTIME: u32 = 10_000;
const SPECIAL_FUNDING_SAT: u64 = 200_000;
const FEE_SAT: u64 = 2_000;

/// `dstore-bench market`.
pub fn run(args: &MarketArgs) -> anyhow::Result<()> {
    crate::watchtower::start_counting();
    eprintln!(
        "market: {}, load average {}, cpu {}",
        if cfg!(debug_assertions) {
            "dev build (optimised, but with debug assertions): report the figures of --release"
        } else {
            "release build"
        },
        load_average(),
        crate::measure::cpu_summary(&["sse4_2", "avx", "avx2", "avx512f", "sha_ni", "bmi2"])
    );
    let mut rng = StdRng::seed_from_u64(0x3a_4b);
    let lessors: Vec<Keypair> = (0..LEASES).map(|_| keypair(&mut rng)).collect();
    let (state, ram) = measured_state(&mut rng, args.farmers, &lessors);
    figure("market-ram-bytes-per-farmer", ram);
    scan_figures(args, &mut rng, &state, &lessors)?;
    eprintln!("market: done, load average {}", load_average());
    Ok(())
}

fn keypair(rng: &mut StdRng) -> Keypair {
    Keypair::from_secret_key(SECP256K1, &SecretKey::new(rng))
}

/// The market state of `farmers` farmers (plus the lease signers), and its heap bytes per
/// farmer.
fn measured_state(rng: &mut StdRng, farmers: u32, lessors: &[Keypair]) -> (MarketState, i64) {
    let before = crate::watchtower::live_heap_bytes();
    let mut state = MarketState::default();
    let keys: Vec<Keypair> = (0..farmers)
        .map(|_| keypair(rng))
        .chain(lessors.iter().copied())
        .collect();
    let mut changes = Vec::with_capacity(keys.len() * 2);
    for (i, key) in keys.iter().enumerate() {
        let identity = key.x_only_public_key().0;
        let bond = OutPoint::new(Txid::from_byte_array(rng.gen()), 0);
        let url = format!("https://farmer{i}.example.net:9737");
        changes.push((
            Key::Announcement(bond.txid),
            Some(Record::Announcement(AnnouncementRec {
                identity,
                peer_url: url.clone(),
                locktime: BOND_LOCKTIME,
                bond,
                height: 1 + i as u32 / 100,
                tx_index: 1,
            })),
        ));
        changes.push((
            Key::Bond(bond),
            Some(Record::Bond(BondRec {
                identity,
                value_sat: BOND_SAT + i as u64,
                locktime: BOND_LOCKTIME,
                confirmed_height: 1 + i as u32 / 100,
                confirmed_time: 1_700_000_000,
                spent_height: None,
            })),
        ));
        let advert = Advert {
            identity,
            network: "regtest".into(),
            peer_url: url,
            version: env!("CARGO_PKG_VERSION").into(),
            price_per_download_sat: 1_000 + i as u64,
            max_file_bytes: 4 << 30,
            free_bytes: 1 << 40,
            audits: true,
            min_claim_window_blocks: 6,
            issued_at: 1_700_000_000,
            lightning: None,
        };
        state.adverts.insert(identity, sign_advert(key, advert));
    }
    state.apply(&changes);
    drop(changes);
    drop(keys);
    let after = crate::watchtower::live_heap_bytes();
    let per_farmer = (after - before) as i64 / (i64::from(farmers) + lessors.len() as i64);
    (state, per_farmer)
}

/// A P2WPKH key the bench holds coins of.
struct Wallet {
    secret: SecretKey,
    public: CompressedPublicKey,
}

impl Wallet {
    fn new(rng: &mut StdRng) -> Self {
        let secret = SecretKey::new(rng);
        Wallet {
            secret,
            public: CompressedPublicKey(secret.public_key(SECP256K1)),
        }
    }

    fn script(&self) -> ScriptBuf {
        ScriptBuf::new_p2wpkh(&self.public.wpubkey_hash())
    }

    /// Spends `coin` (an output to this key) into `outputs` plus change to itself.
    fn spend(&self, coin: (OutPoint, TxOut), mut outputs: Vec<TxOut>) -> Transaction {
        let paid: u64 = outputs.iter().map(|o| o.value.to_sat()).sum();
        outputs.push(TxOut {
            value: Amount::from_sat(coin.1.value.to_sat() - paid - FEE_SAT),
            script_pubkey: self.script(),
        });
        let mut tx = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn {
                previous_output: coin.0,
                script_sig: ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::new(),
            }],
            output: outputs,
        };
        let sighash = SighashCache::new(&tx)
            .p2wpkh_signature_hash(
                0,
                &coin.1.script_pubkey,
                coin.1.value,
                EcdsaSighashType::All,
            )
            .expect("sighash");
        let signature = bitcoin::ecdsa::Signature::sighash_all(
            SECP256K1.sign_ecdsa(&Message::from_digest(sighash.to_byte_array()), &self.secret),
        );
        tx.input[0].witness = Witness::p2wpkh(&signature, &self.public.0);
        tx
    }
}

/// The special transactions: each after the funder's transaction that pays its coin.
fn special_transactions(
    rng: &mut StdRng,
    funder: &mut Funder,
    lessors: &[Keypair],
) -> anyhow::Result<Vec<Transaction>> {
    let wallet = Wallet::new(rng);
    let mut txs = Vec::new();
    let mut fund = |txs: &mut Vec<Transaction>| {
        let funding = funder.build(TxOut {
            value: Amount::from_sat(SPECIAL_FUNDING_SAT),
            script_pubkey: wallet.script(),
        });
        let coin = (
            OutPoint::new(funding.compute_txid(), 0),
            funding.output[0].clone(),
        );
        txs.push(funding);
        coin
    };
    for i in 0..ANNOUNCEMENTS {
        let identity = keypair(rng).x_only_public_key().0;
        let announcement = Announcement {
            identity,
            locktime: BOND_LOCKTIME,
            bond_vout: 0,
            peer_url: format!("http://10.0.0.{i}:9737"),
        };
        let bond = TxOut {
            value: Amount::from_sat(BOND_SAT),
            script_pubkey: bond_script_pubkey(&identity, BOND_LOCKTIME)?,
        };
        let record = TxOut {
            value: Amount::ZERO,
            script_pubkey: announcement.script()?,
        };
        let coin = fund(&mut txs);
        txs.push(wallet.spend(coin, vec![bond, record]));
    }
    for lessor in lessors {
        let leased: Vec<TxOut> = (0..LEASED_OUTPUTS)
            .map(|_| TxOut {
                value: Amount::from_sat(10_000),
                script_pubkey: ScriptBuf::new_p2wsh(&WScriptHash::from_byte_array(rng.gen())),
            })
            .collect();
        let contract_id: [u8; 32] = rng.gen();
        let record = sign_lease(lessor, &contract_id, &leased);
        let mut outputs = leased;
        outputs.push(TxOut {
            value: Amount::ZERO,
            script_pubkey: record.script(),
        });
        let coin = fund(&mut txs);
        txs.push(wallet.spend(coin, outputs));
    }
    Ok(txs)
}

/// Mines the 2,000-transaction block and returns its hash.
fn mine_block(
    args: &MarketArgs,
    node: &BitcoinNode,
    rng: &mut StdRng,
    lessors: &[Keypair],
) -> anyhow::Result<String> {
    let fillers = args.block_txs as usize - 1 - 2 * (ANNOUNCEMENTS + LEASES);
    let coins = (fillers + ANNOUNCEMENTS + LEASES) as u32;
    eprintln!(
        "market: mining {} blocks for {coins} coinbases…",
        coins + 99
    );
    let mut funder = Funder::new(node, coins);
    let mut txs = special_transactions(rng, &mut funder, lessors)?;
    for _ in 0..fillers {
        txs.push(funder.build(TxOut {
            value: Amount::from_sat(rng.gen_range(1_000..100_000)),
            script_pubkey: ScriptBuf::new_p2wpkh(&WPubkeyHash::from_byte_array(rng.gen())),
        }));
    }
    let raw: Vec<String> = txs.iter().map(serialize_hex).collect();
    let address = BitcoinNode::burn_address().to_string();
    let mined = node
        .rpc("generateblock", json!([address, raw]))
        .map_err(|e| anyhow!("generateblock: {e}"))?;
    mined["hash"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("generateblock returned {mined}"))
}

fn getblock(node: &BitcoinNode, hash: &str) -> anyhow::Result<serde_json::Value> {
    node.rpc("getblock", json!([hash, 0]))
        .map_err(|e| anyhow!("getblock: {e}"))
}

fn scan_figures(
    args: &MarketArgs,
    rng: &mut StdRng,
    state: &MarketState,
    lessors: &[Keypair],
) -> anyhow::Result<()> {
    eprintln!("market: starting regtest bitcoind…");
    let node = BitcoinNode::start();
    let hash = mine_block(args, &node, rng, lessors)?;
    let height = node.block_count() as u32;
    let settings = ScanSettings {
        min_bond_sat: 10_000,
    };
    let block: Block = parse_block(&getblock(&node, &hash)?).context("parsing the block")?;
    ensure!(
        block.txdata.len() == args.block_txs as usize,
        "the block has {} transactions, not {}",
        block.txdata.len(),
        args.block_txs
    );
    check_scan(&scan_block(state, &block, height, &settings))?;
    let raw = getblock(&node, &hash)?;
    let (mut get, mut ours, mut only, mut decode) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let start = Instant::now();
        black_box(getblock(&node, &hash)?);
        get.push(start.elapsed());

        let start = Instant::now();
        let parsed = parse_block(&getblock(&node, &hash)?).context("parsing the block")?;
        black_box(scan_block(state, &parsed, height, &settings));
        ours.push(start.elapsed());

        let start = Instant::now();
        black_box(scan_block(state, &block, height, &settings));
        only.push(start.elapsed());

        let start = Instant::now();
        black_box(parse_block(&raw).context("parsing the block")?);
        decode.push(start.elapsed());
    }
    let (get, ours, only, decode) = (median(&get), median(&ours), median(&only), median(&decode));
    figure(
        "market-scan-blocks-per-s",
        format!("{:.1}", 1.0 / ours.as_secs_f64()),
    );
    figure(
        "market-scan-ratio",
        format!("{:.3}", get.as_secs_f64() / ours.as_secs_f64()),
    );
    figure("market-getblock-ms", ms(get));
    figure("market-scan-ms", ms(ours));
    figure("market-scan-only-ms", ms(only));
    figure("market-decode-ms", ms(decode));
    figure(
        "market-block-bytes",
        bitcoin::consensus::serialize(&block).len(),
    );
    Ok(())
}

/// The scan found the five announcements and attributed the ten lease records.
fn check_scan(delta: &dstore_plugin::market::store::BlockDelta) -> anyhow::Result<()> {
    let announcements = delta
        .changes
        .iter()
        .filter(|(k, _)| matches!(k, Key::Announcement(_)))
        .count();
    let attributed = delta
        .changes
        .iter()
        .filter(|(_, r)| matches!(r, Some(Record::Lease(l)) if l.identity.is_some()))
        .count();
    ensure!(
        announcements == ANNOUNCEMENTS && attributed == LEASES,
        "scan found {announcements} announcements and {attributed} attributed leases"
    );
    Ok(())
}

fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}
