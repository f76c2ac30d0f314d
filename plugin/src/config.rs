//! dstore-plugin's configuration: defaults < `<datadir>/dstore.conf` < command-line flags.
//!
//! The conf file format, its layering under the flags and the bitcoind connection flags
//! are every dstore daemon's ([`dstore_daemon::config`]); the renter, farmer and tower
//! settings are the plugin's own.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;
use dstore_daemon::config::{home, parse_layered, ConfigError as DaemonConfigError};
pub use dstore_daemon::config::{BitcoindArgs, BitcoindAuth};
use dstore_protocol::network::Network;

use crate::tower_client::TowerSettings;

/// The conf file's name inside the datadir.
pub const CONF_FILE_NAME: &str = "dstore.conf";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "dstore-plugin",
    version,
    about = "dstore: paid, trust-minimised storage settled on Bitcoin (JSON-RPC daemon in front of bitcoind)",
    args_override_self = true
)]
pub struct Args {
    /// Data directory (default: $HOME/.dstore)
    #[arg(long, value_name = "DIR")]
    pub datadir: Option<PathBuf>,

    /// Bitcoin network: regtest, signet, testnet or mainnet (default: regtest)
    #[arg(long)]
    pub network: Option<Network>,

    #[command(flatten)]
    pub bitcoind: BitcoindArgs,

    /// Port of dstore-plugin's own JSON-RPC server (default 18450 on regtest)
    #[arg(long, value_name = "N")]
    pub rpc_port: Option<u16>,

    /// Address the JSON-RPC server binds to (default 127.0.0.1)
    #[arg(long, value_name = "ADDR")]
    pub rpc_bind: Option<IpAddr>,

    /// Also play the farmer role: store files and sell downloads (`farmer=1` in dstore.conf)
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub farmer: Option<bool>,

    /// Farmer: the peer endpoint renters connect to (default 127.0.0.1:9737)
    #[arg(long, value_name = "ADDR:PORT")]
    pub peer_bind: Option<SocketAddr>,

    /// Farmer: where stored files live (default <datadir>/<network>/storage)
    #[arg(long, value_name = "DIR")]
    pub storage_dir: Option<PathBuf>,

    /// Farmer: keep stored files in this object store instead of --storage-dir
    /// (`s3://bucket/prefix`; endpoint and keys from the AWS_* environment variables)
    #[arg(long, value_name = "URL")]
    pub storage_url: Option<String>,

    /// Farmer: the least it sells one download for, in satoshis (default 100000)
    #[arg(long, value_name = "N")]
    pub price_per_download_sat: Option<u64>,

    /// Farmer: the largest (encrypted) file it accepts, in bytes (default 4 GiB)
    #[arg(long, value_name = "N")]
    pub max_file_bytes: Option<u64>,

    /// Farmer: the least claim window W, in blocks, it accepts in audit terms (default 6)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub min_audit_claim_window_blocks: Option<u16>,

    /// Farmer: the least fee rate, in sat/vB, of audit candidates and refunds (default 2)
    #[arg(long, value_name = "N")]
    pub min_audit_fee_rate_sat_vb: Option<u64>,

    /// Farmer: confirmations TX1 needs before the farmer broadcasts TX2, which reveals f
    /// (default 1 on regtest, signet and testnet, 3 on mainnet; at least 1)
    #[arg(long, value_name = "N")]
    pub min_tx1_confirmations: Option<u32>,

    /// Farmer: TX2 goes out only while the tip is more than N blocks below T1; past that
    /// the download is abandoned and f stays secret (default 36)
    #[arg(long, value_name = "N")]
    pub tx2_broadcast_margin_blocks: Option<u32>,

    /// Farmer: the peer URL its signed advert names (default: the URL of its latest
    /// dstore-announce, else http://<peer-bind>)
    #[arg(long, value_name = "URL")]
    pub peer_url: Option<String>,

    /// Farmer: evidence board POSTs accepted per minute, from everyone together (default 30)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub evidence_rate_per_min: Option<u32>,

    /// Farmer: the most fraud proofs its evidence board keeps (default 10000)
    #[arg(long, value_name = "N")]
    pub evidence_max_items: Option<u64>,

    /// Test-only misbehaviour, for the functional tests' attack scenarios. Exists only in
    /// builds with the `dev-fault` Cargo feature (the tests' build), never in a release.
    #[cfg(feature = "dev-fault")]
    #[arg(long, hide = true, value_name = "NAME")]
    pub dev_fault: Option<DevFault>,

    /// Where CRSs are cached: the renter's own, the farmer's checked ones (default <datadir>/<network>/crs)
    #[arg(long, value_name = "DIR")]
    pub crs_cache_dir: Option<PathBuf>,

    /// A dstore-watchtower to register every download with (https://[user:password@]host:port,
    /// or http:// on a loopback host only)
    #[arg(long, value_name = "URL")]
    pub watchtower_url: Option<String>,

    /// The watchtower's cookie file, read at each call (default
    /// $HOME/.dstore-watchtower/<network>/.cookie)
    #[arg(long, value_name = "PATH")]
    pub watchtower_cookie: Option<PathBuf>,

    /// A third-party auditor (a dstore-watchtower) that holds the audit salts instead of
    /// the renter's own watchtower (https://[user:password@]host:port, or http:// on a
    /// loopback host only)
    #[arg(long, value_name = "URL")]
    pub auditor_url: Option<String>,

    /// The auditor's cookie file (default $HOME/.dstore-watchtower/<network>/.cookie)
    #[arg(long, value_name = "PATH")]
    pub auditor_cookie: Option<PathBuf>,

    /// Renter: the shortest storage term accepted from a farmer, in blocks past the tip
    /// (default 4320, about 30 days); with audits, the term must also outlast the last
    /// audit's claim window
    #[arg(long, value_name = "N")]
    pub min_storage_blocks: Option<u32>,

    /// Market scanner: the first block height it reads (default 0 on regtest and signet,
    /// else the tip at its first start)
    #[arg(long, value_name = "N")]
    pub market_start_height: Option<u32>,

    /// Market scanner: milliseconds between polls of bitcoind for new blocks (default 1000)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub market_poll_ms: Option<u64>,

    /// Market: seconds between refreshes of the farmers' adverts and evidence boards, which
    /// also follow every new block (default 60)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub market_refresh_secs: Option<u64>,

    /// Market: the smallest fidelity bond, in satoshis, an announcement needs to be listed
    /// (default 10000)
    #[arg(long, value_name = "N")]
    pub market_min_bond_sat: Option<u64>,

    /// Run an embedded Lightning node (LDK) to pay or sell downloads over Lightning (mode N);
    /// its data lives in <datadir>/<network>/ln, its chain source is the same bitcoind
    /// (`lightning=1` in dstore.conf)
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub lightning: Option<bool>,

    /// The embedded Lightning node's peer address (default 127.0.0.1:9735)
    #[arg(long, value_name = "ADDR:PORT")]
    pub ln_listen: Option<SocketAddr>,
}

/// Misbehaviours the functional tests make a real plugin process commit, to show that
/// the other side's checks catch them. Hidden from `--help`, and compiled only with the
/// `dev-fault` Cargo feature: test faults are not in the product.
#[cfg(feature = "dev-fault")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DevFault {
    /// Farmer: the process exits when TX1 is announced (the farmer disappears).
    ExitAfterTx1,
    /// Farmer: stores TX2 and TX3 after the renter's TX3 signature but does not broadcast
    /// them (a restart without the fault re-broadcasts them, as after a crash).
    WithholdTx2,
    /// Farmer: broadcasts TX2 but never TX3 (the renter gets the file, and after Δ its
    /// money back through the TX2 refund).
    WithholdTx3,
    /// Farmer: serves E with one byte flipped (fails root_E before payment).
    FlipSealedByte,
    /// Farmer: seals data that is not C, with an honest transcript of it (fraud after payment).
    SealWrongData,
    /// Renter: sends a subverted CRS (δ = identity).
    SubvertCrs,
    /// Farmer: stops answering the audit swap after half the candidates.
    AuditSwapStopHalf,
    /// Renter: stops the audit swap after half the candidates.
    AuditRenterStopHalf,
    /// Renter: half of each audit's candidate locks hash data that is not in the file.
    AuditBadLocks,
    /// Renter: TX_A pays the farmer a stake one satoshi below the terms' minimum.
    AuditStakeShort,
    /// Renter: sends its toss nonce as soon as TX_A is broadcast, without waiting for the
    /// farmer's confirmations (and keeps asking).
    AuditTossUnconfirmed,
    /// Renter: stalls for good once phase tx1_funded is stored, before TX1 is broadcast
    /// (the test kills it there).
    StallAtTx1Funded,
    /// Renter: stalls for good once phase tx2_signed is stored, before sig_R is sent.
    StallAtTx2Signed,
    /// Farmer's embedded Lightning node: never claims an incoming payment (the HTLC fails
    /// back at LDK's deadline).
    LnNeverSettle,
    /// Renter: funds TX_A (or a first TX1) without the farmer's lease record.
    LeaseOmit,
    /// Renter: funds TX_A (or a first TX1) with a lease record naming another contract.
    LeaseWrongContract,
    /// Farmer, mode N: seals data that is not C, with an honest transcript of it (fraud
    /// after the payment settled).
    LnSealWrongData,
    /// Farmer, mode N: its invoice's payment hash is not the transcript's (the renter
    /// refuses before paying).
    LnWrongInvoiceHash,
    /// Farmer, mode N: its invoice asks one satoshi more than the transcript's price.
    LnWrongInvoiceAmount,
    /// Renter, mode N: stalls for good right after the payment was sent, before its
    /// outcome is stored (the test kills it there).
    StallAfterLnPaid,
    /// Farmer: serves E with one byte flipped in its middle, while it streams (fails
    /// root_E before payment).
    FlipSealedMidStream,
    /// Renter: stalls for good after the second part of a streamed upload was stored,
    /// before the rest is sent (the test kills it there).
    StallMidUpload,
    /// Farmer: stores the upload parts that reach it but stops answering them once two
    /// parts are stored and more remain; the renter's window fills and the upload stalls
    /// mid-file (the test kills the farmer there).
    HoldUploadAnswers,
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

/// The farmer role's settings (present only with `--farmer`).
#[derive(Debug, Clone)]
pub struct FarmerSettings {
    pub peer_bind: SocketAddr,
    pub storage_dir: PathBuf,
    /// An object store URL for the blobs (uploads still stage under `storage_dir`).
    pub storage_url: Option<String>,
    pub price_per_download_sat: u64,
    pub max_file_bytes: u64,
    /// `--min-audit-claim-window-blocks` and `--min-audit-fee-rate-sat-vb`.
    pub audit_policy: dstore_protocol::audit::policy::AuditPolicy,
    /// Confirmations TX1 needs before TX2 is broadcast (`--min-tx1-confirmations`).
    pub min_tx1_confirmations: u32,
    /// TX2 goes out only below T1 minus this many blocks (`--tx2-broadcast-margin-blocks`).
    pub tx2_broadcast_margin_blocks: u32,
    /// Its advert's URL and its evidence board's limits (`--peer-url`, `--evidence-*`).
    pub market: FarmerMarketSettings,
}

/// The farmer's side of the market: the URL its advert names and its evidence board's limits.
#[derive(Debug, Clone)]
pub struct FarmerMarketSettings {
    /// `--peer-url`: the advert names it; without it, the latest announced URL.
    pub peer_url: Option<String>,
    /// `http://<peer-bind>`: the advert's URL when there is neither.
    pub bind_url: String,
    /// `--evidence-rate-per-min`: board POSTs accepted per minute, overall.
    pub evidence_rate_per_min: u32,
    /// `--evidence-max-items`: the most proofs the board keeps.
    pub evidence_max_items: u64,
}

/// Default evidence board POSTs per minute.
pub const DEFAULT_EVIDENCE_RATE_PER_MIN: u32 = 30;
/// Default most proofs an evidence board keeps.
pub const DEFAULT_EVIDENCE_MAX_ITEMS: u64 = 10_000;

/// Default farmer peer port.
pub const DEFAULT_PEER_PORT: u16 = 9737;
/// Default least price per download (satoshis).
pub const DEFAULT_PRICE_SAT: u64 = 100_000;
/// Default largest file a farmer accepts.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 4 << 30;
/// Default margin below T1 under which a farmer no longer broadcasts TX2.
pub const DEFAULT_TX2_BROADCAST_MARGIN_BLOCKS: u32 = 36;

/// Default confirmations TX1 needs before a farmer broadcasts TX2, per network.
pub fn default_min_tx1_confirmations(network: Network) -> u32 {
    if network == Network::Mainnet {
        3
    } else {
        1
    }
}
/// Default shortest storage term a renter accepts (about 30 days of blocks).
pub const DEFAULT_MIN_STORAGE_BLOCKS: u32 = 4_320;

impl FarmerSettings {
    /// TX2 needs TX1 confirmed at least once, and a margin that leaves the download
    /// some blocks between its offer (T1 = tip + REFUND_MARGIN) and the margin.
    fn check(&self) -> Result<(), ConfigError> {
        let refund_margin = crate::farmer::REFUND_MARGIN;
        if self.min_tx1_confirmations == 0 {
            return Err(ConfigError::Farmer(
                "--min-tx1-confirmations must be at least 1 (an unconfirmed TX1 can be taken back)"
                    .into(),
            ));
        }
        if let Some(url) = &self.market.peer_url {
            dstore_protocol::market::announce::check_peer_url(url)
                .map_err(|e| ConfigError::Farmer(format!("--peer-url: {e}")))?;
        }
        if self.min_tx1_confirmations + self.tx2_broadcast_margin_blocks >= refund_margin {
            return Err(ConfigError::Farmer(format!(
                "--min-tx1-confirmations plus --tx2-broadcast-margin-blocks must stay below {refund_margin} (T1 is {refund_margin} blocks above the tip at the offer)"
            )));
        }
        Ok(())
    }
}

/// The fully resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub datadir: PathBuf,
    pub network: Network,
    pub bitcoind_rpc_url: String,
    pub bitcoind_auth: BitcoindAuth,
    pub rpc_bind: IpAddr,
    pub rpc_port: u16,
    pub farmer: Option<FarmerSettings>,
    pub crs_cache_dir: PathBuf,
    pub dev_fault: Option<DevFault>,
    /// The watchtower every download is registered with (`--watchtower-url`).
    pub watchtower: Option<TowerSettings>,
    /// The third-party auditor of audit contracts (`--auditor-url`).
    pub auditor: Option<TowerSettings>,
    /// Renter: the shortest storage term accepted (`--min-storage-blocks`).
    pub min_storage_blocks: u32,
    /// The market scanner's settings (`--market-*`).
    pub market: MarketSettings,
    /// The plugin's Lightning node, if any (`--lightning`, or lightningd in CLN mode).
    pub lightning: LightningSetting,
}

/// Default peer port of the embedded Lightning node.
pub const DEFAULT_LN_PORT: u16 = 9735;

/// Which Lightning node the plugin uses for mode N.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LightningSetting {
    /// No Lightning: downloads go through the mode-L chain only.
    Off,
    /// `--lightning`: an embedded LDK node listening on `listen`.
    Ldk { listen: SocketAddr },
    /// Core Lightning plugin mode: lightningd itself, through its RPC socket.
    Cln { rpc_path: PathBuf },
}

/// The market scanner's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarketSettings {
    /// `--market-start-height`; None: the tip at the scanner's first start.
    pub start_height: Option<u32>,
    /// `--market-poll-ms`.
    pub poll_ms: u64,
    /// `--market-refresh-secs`.
    pub refresh_secs: u64,
    /// `--market-min-bond-sat`.
    pub min_bond_sat: u64,
}

/// Default milliseconds between the market scanner's polls.
pub const DEFAULT_MARKET_POLL_MS: u64 = 1_000;
/// Default seconds between advert and evidence board refreshes.
pub const DEFAULT_MARKET_REFRESH_SECS: u64 = 60;
/// Default smallest fidelity bond listed.
pub const DEFAULT_MARKET_MIN_BOND_SAT: u64 = 10_000;

impl MarketSettings {
    fn resolve(args: &Args, network: Network) -> Self {
        let from_genesis = matches!(network, Network::Regtest | Network::Signet);
        MarketSettings {
            start_height: args.market_start_height.or(from_genesis.then_some(0)),
            poll_ms: args.market_poll_ms.unwrap_or(DEFAULT_MARKET_POLL_MS),
            refresh_secs: args
                .market_refresh_secs
                .unwrap_or(DEFAULT_MARKET_REFRESH_SECS),
            min_bond_sat: args
                .market_min_bond_sat
                .unwrap_or(DEFAULT_MARKET_MIN_BOND_SAT),
        }
    }
}

/// A configuration error: one every dstore daemon can meet, or a bad plugin setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Daemon(#[from] DaemonConfigError),
    #[error("{0}")]
    Watchtower(String),
    #[error("invalid farmer setting: {0}")]
    Farmer(String),
}

impl From<clap::Error> for ConfigError {
    fn from(e: clap::Error) -> Self {
        ConfigError::Daemon(DaemonConfigError::Invalid(e))
    }
}

impl Config {
    /// Resolves the configuration from the process's command line.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_args(std::env::args_os().map(|a| a.to_string_lossy().into_owned()))
    }

    /// Resolves the configuration from an argument list (first item is the program name).
    pub fn from_args(argv: impl IntoIterator<Item = String>) -> Result<Self, ConfigError> {
        let argv: Vec<String> = argv.into_iter().collect();
        let (args, datadir) =
            parse_layered(&argv, |cli: Args| cli.datadir, ".dstore", CONF_FILE_NAME)?;
        Self::resolve(args, datadir)
    }

    fn resolve(args: Args, datadir: PathBuf) -> Result<Self, ConfigError> {
        let network = args.network.unwrap_or(Network::Regtest);
        let market = MarketSettings::resolve(&args, network);
        let (bitcoind_rpc_url, bitcoind_auth) = args.bitcoind.resolve(network)?;
        let network_dir = datadir.join(network.name());
        let farmer = args.farmer.unwrap_or(false).then(|| FarmerSettings {
            peer_bind: args
                .peer_bind
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], DEFAULT_PEER_PORT))),
            storage_dir: args
                .storage_dir
                .clone()
                .unwrap_or_else(|| network_dir.join("storage")),
            storage_url: args.storage_url.clone(),
            price_per_download_sat: args.price_per_download_sat.unwrap_or(DEFAULT_PRICE_SAT),
            max_file_bytes: args.max_file_bytes.unwrap_or(DEFAULT_MAX_FILE_BYTES),
            audit_policy: dstore_protocol::audit::policy::AuditPolicy {
                min_claim_window: args
                    .min_audit_claim_window_blocks
                    .unwrap_or(dstore_protocol::audit::policy::DEFAULT_MIN_CLAIM_WINDOW),
                min_fee_rate_sat_vb: args
                    .min_audit_fee_rate_sat_vb
                    .unwrap_or(dstore_protocol::audit::policy::DEFAULT_MIN_FEE_RATE_SAT_VB),
            },
            min_tx1_confirmations: args
                .min_tx1_confirmations
                .unwrap_or_else(|| default_min_tx1_confirmations(network)),
            tx2_broadcast_margin_blocks: args
                .tx2_broadcast_margin_blocks
                .unwrap_or(DEFAULT_TX2_BROADCAST_MARGIN_BLOCKS),
            market: FarmerMarketSettings {
                peer_url: args.peer_url.clone(),
                bind_url: format!(
                    "http://{}",
                    args.peer_bind
                        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], DEFAULT_PEER_PORT)))
                ),
                evidence_rate_per_min: args
                    .evidence_rate_per_min
                    .unwrap_or(DEFAULT_EVIDENCE_RATE_PER_MIN),
                evidence_max_items: args
                    .evidence_max_items
                    .unwrap_or(DEFAULT_EVIDENCE_MAX_ITEMS),
            },
        });
        if let Some(farmer) = &farmer {
            farmer.check()?;
        }
        let watchtower = tower_settings(args.watchtower_url, args.watchtower_cookie, network)?;
        let auditor = tower_settings(args.auditor_url, args.auditor_cookie, network)
            .map_err(|e| ConfigError::Watchtower(format!("auditor: {e}")))?;
        let lightning = if args.lightning.unwrap_or(false) {
            LightningSetting::Ldk {
                listen: args
                    .ln_listen
                    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], DEFAULT_LN_PORT))),
            }
        } else {
            LightningSetting::Off
        };
        Ok(Config {
            farmer,
            market,
            lightning,
            watchtower,
            auditor,
            min_storage_blocks: args
                .min_storage_blocks
                .unwrap_or(DEFAULT_MIN_STORAGE_BLOCKS),
            #[cfg(feature = "dev-fault")]
            dev_fault: args.dev_fault,
            #[cfg(not(feature = "dev-fault"))]
            dev_fault: None,
            crs_cache_dir: args
                .crs_cache_dir
                .unwrap_or_else(|| network_dir.join("crs")),
            datadir,
            network,
            bitcoind_rpc_url,
            bitcoind_auth,
            rpc_bind: args.rpc_bind.unwrap_or(IpAddr::from([127, 0, 0, 1])),
            rpc_port: args
                .rpc_port
                .unwrap_or_else(|| network.default_plugin_rpc_port()),
        })
    }

    /// `<datadir>/<network>`: the cookie, the seed and the wallet live here.
    pub fn network_dir(&self) -> PathBuf {
        self.datadir.join(self.network.name())
    }

    /// `<datadir>/<network>/ln`: the embedded Lightning node's seed and data.
    pub fn ln_dir(&self) -> PathBuf {
        self.network_dir().join("ln")
    }
}

/// Resolves a tower's URL and cookie flags (`--watchtower-*` or `--auditor-*`).
fn tower_settings(
    url: Option<String>,
    cookie: Option<PathBuf>,
    network: Network,
) -> Result<Option<TowerSettings>, ConfigError> {
    match (url, cookie) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(ConfigError::Watchtower(
            "a tower cookie needs the tower's URL".into(),
        )),
        (Some(url), cookie) => TowerSettings::resolve(&url, cookie, || {
            home().ok().map(|h| {
                h.join(".dstore-watchtower")
                    .join(network.name())
                    .join(".cookie")
            })
        })
        .map(Some)
        .map_err(ConfigError::Watchtower),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tower_client::TowerAuth;

    fn argv(items: &[&str]) -> Vec<String> {
        std::iter::once("dstore-plugin")
            .chain(items.iter().copied())
            .map(String::from)
            .collect()
    }

    /// A release build (no `dev-fault` feature) has no `--dev-fault` flag, neither on the
    /// command line nor in dstore.conf.
    #[cfg(not(feature = "dev-fault"))]
    #[test]
    fn no_dev_fault_flag_without_the_feature() {
        let dir = tempfile::tempdir().unwrap();
        let datadir = dir.path().to_str().unwrap();
        let flag = Config::from_args(argv(&["--datadir", datadir, "--dev-fault=subvert-crs"]));
        assert!(
            matches!(
                flag,
                Err(ConfigError::Daemon(DaemonConfigError::Invalid(_)))
            ),
            "{flag:?}"
        );
        std::fs::write(dir.path().join(CONF_FILE_NAME), "dev-fault=subvert-crs\n").unwrap();
        assert!(
            Config::from_args(argv(&["--datadir", datadir, "--bitcoind-cookie", "/c"])).is_err()
        );
    }

    /// A test build (with `dev-fault`) parses the flag; `daemon::start` refuses mainnet.
    #[cfg(feature = "dev-fault")]
    #[test]
    fn test_build_has_the_dev_fault_flag() {
        let dir = tempfile::tempdir().unwrap();
        let datadir = dir.path().to_str().unwrap();
        let config = Config::from_args(argv(&[
            "--datadir",
            datadir,
            "--bitcoind-cookie",
            "/c",
            "--dev-fault",
            "subvert-crs",
        ]));
        assert_eq!(config.unwrap().dev_fault, Some(DevFault::SubvertCrs));
    }

    #[test]
    fn flags_override_conf_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONF_FILE_NAME),
            "# comment\nrpc-port=19000\nbitcoind-rpc-url = http://127.0.0.1:1\n",
        )
        .unwrap();
        let datadir = dir.path().to_str().unwrap();
        let config = Config::from_args(argv(&[
            "--datadir",
            datadir,
            "--rpc-port",
            "19001",
            "--bitcoind-cookie",
            "/c",
        ]))
        .unwrap();
        assert_eq!(config.rpc_port, 19001, "flag wins over conf");
        assert_eq!(
            config.bitcoind_rpc_url, "http://127.0.0.1:1",
            "conf wins over default"
        );
        assert_eq!(config.network, Network::Regtest, "default");
        assert_eq!(config.rpc_bind, IpAddr::from([127, 0, 0, 1]));
    }

    #[test]
    fn farmer_flags_layer_over_conf() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONF_FILE_NAME),
            "farmer=1\nprice-per-download-sat=20000\npeer-bind=127.0.0.1:7000\n",
        )
        .unwrap();
        let datadir = dir.path().to_str().unwrap();
        let base = ["--datadir", datadir, "--bitcoind-cookie", "/c"];
        let config = Config::from_args(argv(&base)).unwrap();
        let farmer = config.farmer.expect("farmer=1 in the conf file");
        assert_eq!(farmer.price_per_download_sat, 20_000);
        assert_eq!(farmer.peer_bind.port(), 7000);
        assert_eq!(farmer.max_file_bytes, DEFAULT_MAX_FILE_BYTES);
        assert_eq!(
            farmer.storage_dir,
            dir.path().join("regtest").join("storage")
        );
        let mut off = base.to_vec();
        off.push("--farmer=0");
        assert!(Config::from_args(argv(&off)).unwrap().farmer.is_none());
        let mut flags = base.to_vec();
        flags.extend(["--farmer", "--max-file-bytes", "4096"]);
        let farmer = Config::from_args(argv(&flags)).unwrap().farmer.unwrap();
        assert_eq!(farmer.max_file_bytes, 4096);
        assert!(Config::from_args(argv(&["--datadir", datadir, "--peer-bind", "nope"])).is_err());
    }

    #[test]
    fn tx2_broadcast_rule_defaults_per_network_and_layers() {
        let dir = tempfile::tempdir().unwrap();
        let datadir = dir.path().to_str().unwrap();
        let farmer = |extra: &[&str]| {
            let mut items = vec!["--datadir", datadir, "--bitcoind-cookie", "/c", "--farmer"];
            items.extend(extra);
            Config::from_args(argv(&items)).map(|c| c.farmer.unwrap())
        };
        let regtest = farmer(&[]).unwrap();
        assert_eq!(regtest.min_tx1_confirmations, 1);
        assert_eq!(regtest.tx2_broadcast_margin_blocks, 36);
        let mainnet = farmer(&["--network", "mainnet"]).unwrap();
        assert_eq!(mainnet.min_tx1_confirmations, 3);
        std::fs::write(
            dir.path().join(CONF_FILE_NAME),
            "min-tx1-confirmations=2\ntx2-broadcast-margin-blocks=20\n",
        )
        .unwrap();
        let conf = farmer(&["--min-tx1-confirmations", "4"]).unwrap();
        assert_eq!(
            (conf.min_tx1_confirmations, conf.tx2_broadcast_margin_blocks),
            (4, 20),
            "flag over conf over default"
        );
        assert!(farmer(&["--min-tx1-confirmations", "0"]).is_err());
        assert!(farmer(&["--tx2-broadcast-margin-blocks", "144"]).is_err());
    }

    #[test]
    fn default_port_follows_network() {
        let dir = tempfile::tempdir().unwrap();
        let datadir = dir.path().to_str().unwrap();
        let config = Config::from_args(argv(&[
            "--datadir",
            datadir,
            "--network",
            "signet",
            "--bitcoind-cookie",
            "/c",
        ]))
        .unwrap();
        assert_eq!(config.rpc_port, 38450);
        assert_eq!(config.bitcoind_rpc_url, "http://127.0.0.1:38332");
    }

    #[test]
    fn bad_conf_lines_and_unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let datadir = dir.path().to_str().unwrap();
        std::fs::write(dir.path().join(CONF_FILE_NAME), "rpc-port\n").unwrap();
        let err = Config::from_args(argv(&["--datadir", datadir])).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Daemon(DaemonConfigError::ConfSyntax { line: 1, .. })
            ),
            "{err}"
        );
        std::fs::write(dir.path().join(CONF_FILE_NAME), "no-such-option=1\n").unwrap();
        assert!(matches!(
            Config::from_args(argv(&["--datadir", datadir])),
            Err(ConfigError::Daemon(DaemonConfigError::Invalid(_)))
        ));
    }

    #[test]
    fn watchtower_flags_layer_over_conf() {
        let dir = tempfile::tempdir().unwrap();
        let datadir = dir.path().to_str().unwrap();
        let base = ["--datadir", datadir, "--bitcoind-cookie", "/c"];
        assert!(Config::from_args(argv(&base)).unwrap().watchtower.is_none());
        std::fs::write(
            dir.path().join(CONF_FILE_NAME),
            "watchtower-url=http://127.0.0.1:18460\nwatchtower-cookie=/tower/regtest/.cookie\n",
        )
        .unwrap();
        let tower = Config::from_args(argv(&base)).unwrap().watchtower.unwrap();
        assert_eq!(tower.url, "http://127.0.0.1:18460");
        assert_eq!(
            tower.auth,
            TowerAuth::Cookie("/tower/regtest/.cookie".into())
        );
        let mut flags = base.to_vec();
        flags.extend([
            "--watchtower-cookie",
            "/other/.cookie",
            "--watchtower-url",
            "127.0.0.1:9",
        ]);
        let tower = Config::from_args(argv(&flags)).unwrap().watchtower.unwrap();
        assert_eq!(tower.url, "http://127.0.0.1:9", "the flag wins");
        assert_eq!(tower.auth, TowerAuth::Cookie("/other/.cookie".into()));
        std::fs::write(dir.path().join(CONF_FILE_NAME), "watchtower-cookie=/c\n").unwrap();
        let err = Config::from_args(argv(&base)).unwrap_err();
        assert!(matches!(err, ConfigError::Watchtower(_)), "{err}");
        let mut flags = base.to_vec();
        flags.extend(["--watchtower-url", "http://u:secret@h:1"]);
        let err = Config::from_args(argv(&flags)).unwrap_err().to_string();
        assert!(err.contains("not both") && !err.contains("secret"), "{err}");
    }

    #[test]
    fn farmer_market_flags_default_and_a_bad_peer_url_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let datadir = dir.path().to_str().unwrap();
        let base = ["--datadir", datadir, "--bitcoind-cookie", "/c", "--farmer"];
        let market = Config::from_args(argv(&base))
            .unwrap()
            .farmer
            .unwrap()
            .market;
        assert_eq!(market.peer_url, None);
        assert_eq!(market.bind_url, "http://127.0.0.1:9737");
        assert_eq!(market.evidence_rate_per_min, DEFAULT_EVIDENCE_RATE_PER_MIN);
        assert_eq!(market.evidence_max_items, DEFAULT_EVIDENCE_MAX_ITEMS);
        let mut flags = base.to_vec();
        flags.extend([
            "--peer-url",
            "https://f.example",
            "--evidence-rate-per-min",
            "5",
        ]);
        let market = Config::from_args(argv(&flags))
            .unwrap()
            .farmer
            .unwrap()
            .market;
        assert_eq!(market.peer_url.as_deref(), Some("https://f.example"));
        assert_eq!(market.evidence_rate_per_min, 5);
        for bad in [
            vec!["--peer-url", "ftp://f.example"],
            vec![
                "--peer-url",
                "http://a-very-long-host-name-for-a-farmer.example:9737",
            ],
            vec!["--evidence-rate-per-min", "0"],
        ] {
            let mut flags = base.to_vec();
            flags.extend(bad.iter().copied());
            assert!(Config::from_args(argv(&flags)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn min_storage_blocks_defaults_to_about_30_days() {
        let dir = tempfile::tempdir().unwrap();
        let datadir = dir.path().to_str().unwrap();
        let base = ["--datadir", datadir, "--bitcoind-cookie", "/c"];
        let config = Config::from_args(argv(&base)).unwrap();
        assert_eq!(config.min_storage_blocks, DEFAULT_MIN_STORAGE_BLOCKS);
        let mut flags = base.to_vec();
        flags.extend(["--min-storage-blocks", "144"]);
        assert_eq!(
            Config::from_args(argv(&flags)).unwrap().min_storage_blocks,
            144
        );
    }

    #[test]
    fn market_flags_layer_over_conf_and_defaults_follow_network() {
        let dir = tempfile::tempdir().unwrap();
        let datadir = dir.path().to_str().unwrap();
        let base = ["--datadir", datadir, "--bitcoind-cookie", "/c"];
        let regtest = Config::from_args(argv(&base)).unwrap().market;
        assert_eq!(regtest.start_height, Some(0));
        assert_eq!(regtest.poll_ms, DEFAULT_MARKET_POLL_MS);
        assert_eq!(regtest.refresh_secs, DEFAULT_MARKET_REFRESH_SECS);
        assert_eq!(regtest.min_bond_sat, DEFAULT_MARKET_MIN_BOND_SAT);
        let mut mainnet = base.to_vec();
        mainnet.extend(["--network", "mainnet"]);
        assert_eq!(
            Config::from_args(argv(&mainnet))
                .unwrap()
                .market
                .start_height,
            None
        );
        std::fs::write(
            dir.path().join(CONF_FILE_NAME),
            "market-start-height=100\nmarket-min-bond-sat=5000\n",
        )
        .unwrap();
        let mut flags = base.to_vec();
        flags.extend(["--market-start-height", "7", "--market-poll-ms", "200"]);
        let market = Config::from_args(argv(&flags)).unwrap().market;
        assert_eq!(
            (market.start_height, market.min_bond_sat, market.poll_ms),
            (Some(7), 5000, 200),
            "flag over conf over default"
        );
        flags.extend(["--market-refresh-secs", "0"]);
        assert!(Config::from_args(argv(&flags)).is_err());
    }

    #[test]
    fn remote_plain_http_towers_are_refused_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let datadir = dir.path().to_str().unwrap();
        for (flag, cookie) in [
            ("--watchtower-url", "--watchtower-cookie"),
            ("--auditor-url", "--auditor-cookie"),
        ] {
            let flags = [
                "--datadir",
                datadir,
                "--bitcoind-cookie",
                "/c",
                flag,
                "http://203.0.113.9:1",
                cookie,
                "/c",
            ];
            let err = Config::from_args(argv(&flags)).unwrap_err().to_string();
            assert!(err.contains("https://"), "{flag}: {err}");
        }
    }

    #[test]
    fn lightning_flags_layer_over_conf() {
        let dir = tempfile::tempdir().unwrap();
        let datadir = dir.path().to_str().unwrap();
        let base = ["--datadir", datadir, "--bitcoind-cookie", "/c"];
        let config = Config::from_args(argv(&base)).unwrap();
        assert_eq!(config.lightning, LightningSetting::Off);
        assert_eq!(config.ln_dir(), dir.path().join("regtest").join("ln"));
        std::fs::write(dir.path().join(CONF_FILE_NAME), "lightning=1\n").unwrap();
        assert_eq!(
            Config::from_args(argv(&base)).unwrap().lightning,
            LightningSetting::Ldk {
                listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_LN_PORT))
            }
        );
        let mut flags = base.to_vec();
        flags.extend(["--ln-listen", "127.0.0.1:19735"]);
        assert_eq!(
            Config::from_args(argv(&flags)).unwrap().lightning,
            LightningSetting::Ldk {
                listen: SocketAddr::from(([127, 0, 0, 1], 19735))
            }
        );
        flags.push("--lightning=0");
        assert_eq!(
            Config::from_args(argv(&flags)).unwrap().lightning,
            LightningSetting::Off
        );
        assert!(Config::from_args(argv(&["--datadir", datadir, "--ln-listen", "x"])).is_err());
    }

    #[test]
    fn half_user_password_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let datadir = dir.path().to_str().unwrap();
        let err = Config::from_args(argv(&["--datadir", datadir, "--bitcoind-rpc-user", "u"]))
            .unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Daemon(DaemonConfigError::HalfUserPass)
        ));
    }
}
