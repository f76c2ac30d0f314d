//! dstore-watchtower's configuration: defaults < `<datadir>/watchtower.conf` < flags, in
//! the same `key=value` conf format as dstore-plugin's ([`dstore_daemon::config`]).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;
use dstore_daemon::config::{parse_layered, BitcoindArgs, BitcoindAuth, ConfigError};
use dstore_protocol::network::Network;

use crate::auditor::AuditorSettings;

pub const CONF_FILE_NAME: &str = "watchtower.conf";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "dstore-watchtower",
    version,
    about = "dstore watchtower: enforces dstore contracts while the plugins are offline",
    args_override_self = true
)]
pub struct Args {
    /// Data directory (default: $HOME/.dstore-watchtower)
    #[arg(long, value_name = "DIR")]
    pub datadir: Option<PathBuf>,

    /// Bitcoin network: regtest, signet, testnet or mainnet (default: regtest)
    #[arg(long)]
    pub network: Option<Network>,

    #[command(flatten)]
    pub bitcoind: BitcoindArgs,

    /// bitcoind's -zmqpubrawtx endpoint (tcp://host:port)
    #[arg(long, value_name = "URL")]
    pub zmq_rawtx: Option<String>,

    /// bitcoind's -zmqpubrawblock endpoint (tcp://host:port)
    #[arg(long, value_name = "URL")]
    pub zmq_rawblock: Option<String>,

    /// bitcoind's -zmqpubsequence endpoint (tcp://host:port)
    #[arg(long, value_name = "URL")]
    pub zmq_sequence: Option<String>,

    /// Port of the watchtower's JSON-RPC server (default 18460)
    #[arg(long, value_name = "N")]
    pub rpc_port: Option<u16>,

    /// Address the JSON-RPC server binds to (default 127.0.0.1)
    #[arg(long, value_name = "ADDR")]
    pub rpc_bind: Option<IpAddr>,

    /// Serve Prometheus metrics at http://<ADDR:PORT>/metrics (off by default)
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_bind: Option<SocketAddr>,

    /// Seconds between RPC reconciliations when no notification arrives (default 5)
    #[arg(long, value_name = "N")]
    pub poll_seconds: Option<u64>,

    /// Challenge the farmer of every contract this tower audits to an off-chain Merkle
    /// audit every N blocks (default 0: off)
    #[arg(long, value_name = "N")]
    pub merkle_audit_every: Option<u32>,

    /// Segments per off-chain Merkle audit, 1 to 256 (default 16)
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub merkle_audit_k: Option<u32>,

    /// Due contracts loaded into memory at a time while the tower acts (default 1000).
    /// After a long outage every contract may be due at once; they are then handled a
    /// batch at a time, so memory stays bounded.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub act_batch: Option<u64>,

    /// Test-only misbehaviour, for the functional tests. Exists only in builds with the
    /// `dev-fault` Cargo feature (the tests' build), never in a release.
    #[cfg(feature = "dev-fault")]
    #[arg(long, hide = true, value_name = "NAME")]
    pub dev_fault: Option<DevFault>,
}

/// Faults the functional tests make a real tower process commit. Hidden from `--help`,
/// and compiled only with the `dev-fault` Cargo feature: test faults are not in the
/// product.
#[cfg(feature = "dev-fault")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DevFault {
    /// Pauses 20 ms after each compaction, so a test can kill -9 the tower in the middle
    /// of compacting many contracts.
    SlowCompaction,
}

/// Without the `dev-fault` feature there are no faults: `Option<DevFault>` is always `None`.
#[cfg(not(feature = "dev-fault"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevFault {}

/// Whether the test-only fault `$fault` (a [`DevFault`] variant) is set in `$setting` (an
/// `Option<DevFault>`); always false in builds without the `dev-fault` feature, where the
/// variant names do not exist.
#[macro_export]
macro_rules! dev_fault {
    ($setting:expr, $fault:ident) => {{
        #[cfg(feature = "dev-fault")]
        let on = $setting == Some($crate::config::DevFault::$fault);
        #[cfg(not(feature = "dev-fault"))]
        let on = {
            let _: &Option<$crate::config::DevFault> = &$setting;
            false
        };
        on
    }};
}

/// Default segments per Merkle audit.
pub const DEFAULT_MERKLE_AUDIT_K: u32 = 16;

/// Default number of due contracts loaded at a time while acting.
pub const DEFAULT_ACT_BATCH: usize = 1_000;

/// Default JSON-RPC port of the watchtower.
pub const DEFAULT_RPC_PORT: u16 = 18460;

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub datadir: PathBuf,
    pub network: Network,
    pub bitcoind_rpc_url: String,
    pub bitcoind_auth: BitcoindAuth,
    /// The distinct ZMQ endpoints to subscribe to, with the topics each should carry.
    pub zmq_endpoints: Vec<String>,
    pub rpc_bind: IpAddr,
    pub rpc_port: u16,
    pub metrics_bind: Option<SocketAddr>,
    pub poll_seconds: u64,
    pub auditor: AuditorSettings,
    /// Due contracts loaded at a time while acting (`--act-batch`).
    pub act_batch: usize,
    /// A test-only fault (`--dev-fault`, builds with the `dev-fault` feature only).
    pub dev_fault: Option<DevFault>,
}

impl Config {
    /// Reads the flags from the process's command line and the conf file under them.
    pub fn from_env() -> Result<Config, ConfigError> {
        let argv: Vec<String> = std::env::args().collect();
        let (args, datadir) = parse_layered(
            &argv,
            |first: Args| first.datadir,
            ".dstore-watchtower",
            CONF_FILE_NAME,
        )?;
        Config::resolve(args, datadir)
    }

    fn resolve(args: Args, datadir: PathBuf) -> Result<Config, ConfigError> {
        let network = args.network.unwrap_or(Network::Regtest);
        let (bitcoind_rpc_url, bitcoind_auth) = args.bitcoind.resolve(network)?;
        let mut zmq_endpoints = Vec::new();
        for endpoint in [args.zmq_rawtx, args.zmq_rawblock, args.zmq_sequence]
            .into_iter()
            .flatten()
        {
            if !zmq_endpoints.contains(&endpoint) {
                zmq_endpoints.push(endpoint);
            }
        }
        Ok(Config {
            network,
            bitcoind_rpc_url,
            bitcoind_auth,
            zmq_endpoints,
            rpc_bind: args.rpc_bind.unwrap_or(IpAddr::from([127, 0, 0, 1])),
            rpc_port: args.rpc_port.unwrap_or(DEFAULT_RPC_PORT),
            metrics_bind: args.metrics_bind,
            poll_seconds: args.poll_seconds.unwrap_or(5).max(1),
            auditor: AuditorSettings {
                merkle_every: args.merkle_audit_every.unwrap_or(0),
                merkle_k: args.merkle_audit_k.unwrap_or(DEFAULT_MERKLE_AUDIT_K),
            },
            act_batch: args.act_batch.map_or(DEFAULT_ACT_BATCH, |n| {
                usize::try_from(n).unwrap_or(usize::MAX)
            }),
            #[cfg(feature = "dev-fault")]
            dev_fault: args.dev_fault,
            #[cfg(not(feature = "dev-fault"))]
            dev_fault: None,
            datadir,
        })
    }

    /// `<datadir>/<network>`: the cookie and the database live here.
    pub fn network_dir(&self) -> PathBuf {
        self.datadir.join(self.network.name())
    }
}

#[cfg(test)]
mod tests {
    use dstore_daemon::config::layer;

    use super::*;

    fn config(flags: &[&str], conf: &[&str]) -> Result<Config, ConfigError> {
        let argv: Vec<String> = std::iter::once("dstore-watchtower")
            .chain(flags.iter().copied())
            .map(String::from)
            .collect();
        let conf: Vec<String> = conf.iter().map(|s| s.to_string()).collect();
        let args = Args::try_parse_from(layer(&argv, &conf)).map_err(ConfigError::Invalid)?;
        Config::resolve(args, PathBuf::from("/tmp/tower"))
    }

    #[test]
    fn merkle_audit_flags_and_conf() {
        let none = config(&[], &[]).unwrap();
        assert_eq!(none.auditor.merkle_every, 0);
        assert_eq!(none.auditor.merkle_k, DEFAULT_MERKLE_AUDIT_K);
        let conf = config(&[], &["--merkle-audit-every=6"]).unwrap();
        assert_eq!(conf.auditor.merkle_every, 6);
        let flag = config(
            &["--merkle-audit-every=2", "--merkle-audit-k=4"],
            &["--merkle-audit-every=6"],
        )
        .unwrap();
        assert_eq!((flag.auditor.merkle_every, flag.auditor.merkle_k), (2, 4));
        assert!(config(&["--merkle-audit-k=0"], &[]).is_err());
        assert!(config(&["--merkle-audit-k=257"], &[]).is_err());
    }

    #[test]
    fn act_batch_flag_and_conf() {
        assert_eq!(config(&[], &[]).unwrap().act_batch, DEFAULT_ACT_BATCH);
        assert_eq!(config(&[], &["--act-batch=50"]).unwrap().act_batch, 50);
        let flag = config(&["--act-batch=2"], &["--act-batch=50"]).unwrap();
        assert_eq!(flag.act_batch, 2);
        assert!(config(&["--act-batch=0"], &[]).is_err());
    }

    #[cfg(not(feature = "dev-fault"))]
    #[test]
    fn no_dev_fault_flag_without_the_feature() {
        assert!(config(&["--dev-fault=slow-compaction"], &[]).is_err());
        assert_eq!(config(&[], &[]).unwrap().dev_fault, None);
    }

    #[cfg(feature = "dev-fault")]
    #[test]
    fn the_dev_fault_flag_in_test_builds() {
        let config = config(&["--dev-fault=slow-compaction"], &[]).unwrap();
        assert_eq!(config.dev_fault, Some(DevFault::SlowCompaction));
    }
}
