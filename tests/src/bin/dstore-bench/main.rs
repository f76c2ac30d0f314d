//! `dstore-bench`: dstore's benchmarks, one subcommand each. Every subcommand prints one
//! `figure-name: value` line per figure on stdout; progress and diagnostics go to stderr.
//!
//! Run with `cargo run --release -p dstore-tests --bin dstore-bench -- <name>`.

mod audit;
mod datapath;
mod lightning;
mod market;
mod measure;
mod shards;
mod transfer;
mod watchtower;
mod zk;

use clap::{Parser, Subcommand};

/// Counts live heap bytes for `watchtower`'s memory figure; counting is off (one relaxed
/// load per allocation) until that subcommand starts.
#[global_allocator]
static ALLOCATOR: watchtower::CountingAlloc = watchtower::CountingAlloc;

/// dstore's benchmarks: each subcommand prints `figure-name: value` lines on stdout.
#[derive(Debug, Parser)]
#[command(name = "dstore-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Encrypt + Merkle throughput against `openssl dgst -sha256` on the same file, and the
    /// peak RSS of the encrypt step.
    Datapath(datapath::DatapathArgs),
    /// Internal: the encrypt step of `datapath`, run in a child process so that its peak
    /// RSS is its own.
    #[command(hide = true)]
    DatapathEncryptWorker(datapath::WorkerArgs),
    /// The Groth16 reused-nonce proof on a real TX2 template: constraints, setup, prove
    /// and verify times, sizes and peak RSS, against ark-crypto-primitives' SHA-256 gadget.
    Zk(zk::ZkArgs),
    /// dstore-open and dstore-download of a 256 MiB file between a renter and a farmer
    /// plugin on regtest over loopback, against nginx serving it to curl, and a 16 MiB
    /// round trip with its proving share.
    Transfer(transfer::TransferArgs),
    /// The watch engine on a 2,000-transaction block with 100,000 registered contracts
    /// against decoding the block, its memory per contract, and TX2-to-key latency of a
    /// real dstore-watchtower on regtest.
    Watchtower(watchtower::WatchtowerArgs),
    /// Off-chain Merkle audits on a 1 GiB and a sparse 64 GiB file: answer size, verify
    /// time, and the farmer's streaming and leaf-file answer times against a plain read of
    /// the same file; and generating 52 paid audits' 832 salted candidates.
    Audit(audit::AuditArgs),
    /// The market scanner on a real 2,000-transaction regtest block against `getblock`
    /// verbosity 0 alone, and the market's memory per farmer.
    Market(market::MarketArgs),
    /// A file erasure-coded into N = 6 shards (any K = 4 rebuild it) stored with six
    /// farmer plugins over loopback on regtest and bought back: encode throughput against
    /// the single-contract path, upload and download MiB/s, the renter's peak RSS.
    Shards(shards::ShardsArgs),
    /// One download bought over Lightning (mode N, a direct channel opened before) against
    /// one through the mode-L chain, same file, same plugins: wall seconds and on-chain vbytes.
    Lightning(lightning::LightningArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Datapath(args) => datapath::run(&args),
        Command::DatapathEncryptWorker(args) => datapath::run_worker(&args),
        Command::Zk(args) => zk::run(&args),
        Command::Transfer(args) => transfer::run(&args),
        Command::Watchtower(args) => watchtower::run(&args),
        Command::Audit(args) => audit::run(&args),
        Command::Market(args) => market::run(&args),
        Command::Shards(args) => shards::run(&args),
        Command::Lightning(args) => lightning::run(&args),
    }
}
