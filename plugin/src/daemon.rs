//! Start-up and shutdown of the bitcoind-attached daemon.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dstore_protocol::network::Network;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::app::App;
use crate::bitcoind::{Bitcoind, BitcoindError};
use crate::config::{Config, FarmerSettings, LightningSetting};
use crate::cookie::CookieFile;
use crate::db::Db;
use crate::farmer::{Farmer, FarmerConfig};
use crate::jsonrpc::code;
use crate::ln::ldk::{LdkNode, LdkSettings};
use crate::ln::{Lightning, LnError};
use crate::market::Market;
use crate::renter::Renter;
use crate::server;
use crate::storage::BlobStore;
use crate::tower_client::TowerClient;
use crate::wallet::{PluginWallet, RpcTarget, WalletError};

/// How long to wait for a bitcoind that is still loading (RPC error -28).
const WARMUP_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("this is a test build (Cargo feature dev-fault) and refuses to run on mainnet")]
    TestBuildOnMainnet,
    #[error("{0}")]
    Bitcoind(#[from] BitcoindError),
    #[error("bitcoind at {url} is on {actual}, but dstore-plugin is configured for {expected}")]
    WrongNetwork {
        url: String,
        actual: String,
        expected: Network,
    },
    #[error("bitcoind is still warming up after {0:?}")]
    Warmup(Duration),
    #[error("cannot prepare {path}: {source}")]
    Datadir {
        path: String,
        source: std::io::Error,
    },
    #[error("wallet: {0}")]
    Wallet(#[from] WalletError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot write the cookie file: {0}")]
    Cookie(std::io::Error),
    #[error("metadata store: {0}")]
    Db(#[from] crate::db::DbError),
    #[error("renter role: {0}")]
    Renter(#[from] crate::renter::RenterError),
    #[error("farmer role: {0}")]
    Farmer(#[from] crate::farmer::FarmerError),
    #[error("file layer: {0}")]
    Files(#[from] crate::shards::FileError),
    #[error("market store: {0}")]
    Market(crate::db::DbError),
    #[error("farmer storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("Lightning: {0}")]
    Lightning(#[from] crate::ln::LnError),
}

/// Runs the daemon until `dstore-stop`, SIGINT or SIGTERM.
pub async fn run(config: Config) -> Result<(), StartError> {
    let started = start(config, true).await?;
    let lightning = started.app.lightning.clone();
    if let Some((listener, cookie)) = started.rpc {
        server::serve(started.app, cookie, listener).await;
    }
    if let Some(lightning) = lightning {
        lightning.stop().await;
    }
    tracing::info!("dstore-plugin stopped");
    Ok(())
}

/// A started daemon: the app (farmer endpoint serving, uploads resumed) and, when asked
/// for, the bound JSON-RPC listener with its cookie, not yet serving.
pub struct Started {
    pub app: Arc<App>,
    pub rpc: Option<(TcpListener, Arc<CookieFile>)>,
}

/// Everything [`run`] does before serving JSON-RPC. Without `rpc_server` (Core Lightning
/// plugin mode, where lightningd carries the methods) no RPC port is bound and no cookie
/// is written.
pub async fn start(config: Config, rpc_server: bool) -> Result<Started, StartError> {
    // Everything this process creates (seed, metadata store, K, CRSs) is private to us.
    // SAFETY: umask only changes this process's file-creation mask.
    unsafe {
        libc::umask(0o077);
    }
    if cfg!(feature = "dev-fault") {
        if config.network == Network::Mainnet {
            return Err(StartError::TestBuildOnMainnet);
        }
        tracing::warn!(
            fault = ?config.dev_fault,
            "test build: compiled with the dev-fault feature (test-only faults, refuses mainnet)"
        );
    }
    let bitcoind = Arc::new(Bitcoind::new(
        &config.bitcoind_rpc_url,
        config.bitcoind_auth.clone(),
    ));
    check_bitcoind(&bitcoind, config.network).await?;
    prepare_network_dir(&config)?;
    let wallet = Arc::new(open_wallet(&config).await?);
    let db = Arc::new(Db::open(&config.network_dir().join("db"))?);
    let seed = *wallet.seed();
    let lightning = start_lightning(&config).await?;
    let tower = config
        .watchtower
        .clone()
        .map(|settings| Arc::new(TowerClient::new(settings)));
    if let Some(tower) = &tower {
        tracing::info!(url = %tower.url(), "contracts are registered with a watchtower");
    }
    let renter = Arc::new(
        Renter::new(
            seed,
            db.clone(),
            wallet.clone(),
            bitcoind.clone(),
            &config.network_dir(),
            config.crs_cache_dir.clone(),
            config.dev_fault,
        )?
        .with_watchtower(tower.clone())
        .with_min_storage_blocks(config.min_storage_blocks)
        .with_auditor(
            config
                .auditor
                .clone()
                .map(|settings| Arc::new(TowerClient::new(settings))),
        )
        .with_lightning(lightning.clone()),
    );
    let farmer = match &config.farmer {
        None => None,
        Some(settings) => {
            let (tower, ln) = (tower.clone(), lightning.clone());
            Some(start_farmer(&config, settings, seed, &db, &bitcoind, &wallet, tower, ln).await?)
        }
    };
    let addr = format!("{}:{}", config.rpc_bind, config.rpc_port);
    let listener = if rpc_server {
        Some(
            TcpListener::bind((config.rpc_bind, config.rpc_port))
                .await
                .map_err(|source| StartError::Bind {
                    addr: addr.clone(),
                    source,
                })?,
        )
    } else {
        None
    };
    let peer_listener =
        match &config.farmer {
            None => None,
            Some(settings) => Some(TcpListener::bind(settings.peer_bind).await.map_err(
                |source| StartError::Bind {
                    addr: settings.peer_bind.to_string(),
                    source,
                },
            )?),
        };
    // The cookie appears only once the port is open: its presence means "ready".
    let rpc = match listener {
        Some(listener) => Some((
            listener,
            Arc::new(
                CookieFile::create(&config.network_dir().join(".cookie"))
                    .map_err(StartError::Cookie)?,
            ),
        )),
        None => None,
    };
    if rpc.is_some() {
        tracing::info!(network = %config.network, %addr, "dstore-plugin ready");
    } else {
        tracing::info!(network = %config.network, "dstore-plugin ready (no RPC port)");
    }
    let market = Arc::new(
        Market::open(db.clone(), config.market.clone(), config.network.name())
            .map_err(StartError::Market)?,
    );
    let app = Arc::new(
        App::new(config, bitcoind, wallet, renter, farmer.clone(), market)
            .with_lightning(lightning),
    );
    tokio::spawn(stop_on_signal(app.clone()));
    start_market(&app);
    app.renter.resume_uploads()?;
    app.files.resume()?;
    app.renter.resume_watchtower()?;
    app.renter.resume_downloads()?;
    if let Some(farmer) = &farmer {
        // Claims on hold go out (or are abandoned) as blocks arrive.
        let (farmer, app) = (farmer.clone(), app.clone());
        tokio::spawn(farmer.watch_claims(async move { app.shutdown_requested().await }));
    }
    if let Some((farmer, listener)) = farmer.zip(peer_listener) {
        let app = app.clone();
        tokio::spawn(async move {
            crate::farmer::server::serve(
                farmer,
                listener,
                async move { app.shutdown_requested().await },
            )
            .await
        });
    }
    Ok(Started { app, rpc })
}

/// The Lightning node the configuration asks for: the embedded LDK node (chain source the
/// same bitcoind over RPC) or lightningd.
async fn start_lightning(config: &Config) -> Result<Option<Lightning>, StartError> {
    match &config.lightning {
        LightningSetting::Off => Ok(None),
        LightningSetting::Cln { rpc_path } => Ok(Some(Lightning::Cln(Arc::new(
            crate::ln::cln::ClnNode::start(rpc_path.clone()).await?,
        )))),
        LightningSetting::Ldk { listen } => {
            let (rpc_host, rpc_port) = rpc_host_port(&config.bitcoind_rpc_url)?;
            let (rpc_user, rpc_password) = rpc_credentials(&config.bitcoind_auth)?;
            let settings = LdkSettings {
                dir: config.ln_dir(),
                network: config.network.to_bitcoin(),
                listen: *listen,
                rpc_host,
                rpc_port,
                rpc_user,
                rpc_password,
                never_settle: crate::dev_fault!(config.dev_fault, LnNeverSettle),
            };
            Ok(Some(Lightning::Ldk(LdkNode::start(settings).await?)))
        }
    }
}

/// bitcoind's RPC host and port, from `--bitcoind-rpc-url`.
fn rpc_host_port(url: &str) -> Result<(String, u16), LnError> {
    let parsed = url::Url::parse(url)
        .map_err(|e| LnError::InvalidParameter(format!("bitcoind RPC URL: {e}")))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| LnError::InvalidParameter("bitcoind RPC URL has no host".into()))?;
    let port = parsed
        .port_or_known_default()
        .ok_or_else(|| LnError::InvalidParameter("bitcoind RPC URL has no port".into()))?;
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

/// The user and password LDK's RPC client sends: the cookie's `__cookie__:<password>`, or
/// `--bitcoind-rpc-user`/`--bitcoind-rpc-password`.
fn rpc_credentials(auth: &crate::config::BitcoindAuth) -> Result<(String, String), LnError> {
    match auth {
        crate::config::BitcoindAuth::UserPass { user, password } => {
            Ok((user.clone(), password.clone()))
        }
        crate::config::BitcoindAuth::Cookie(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                LnError::Store(format!(
                    "cannot read bitcoind's cookie {}: {e}",
                    path.display()
                ))
            })?;
            let (user, password) = text.trim().split_once(':').ok_or_else(|| {
                LnError::Store(format!("bitcoind's cookie {} is malformed", path.display()))
            })?;
            Ok((user.to_string(), password.to_string()))
        }
    }
}

/// The market scanner and the advert/evidence refresh, both stopping with the daemon.
fn start_market(app: &Arc<App>) {
    let (market, bitcoind) = (app.market.clone(), app.bitcoind.clone());
    let stop = app.clone();
    tokio::spawn(crate::market::scanner::follow_chain(
        market.clone(),
        bitcoind,
        async move { stop.shutdown_requested().await },
    ));
    let stop = app.clone();
    tokio::spawn(market.refresh_loop(async move { stop.shutdown_requested().await }));
}

#[allow(clippy::too_many_arguments)]
async fn start_farmer(
    config: &Config,
    settings: &FarmerSettings,
    seed: [u8; 32],
    db: &Arc<Db>,
    bitcoind: &Arc<Bitcoind>,
    wallet: &Arc<PluginWallet>,
    tower: Option<Arc<TowerClient>>,
    lightning: Option<Lightning>,
) -> Result<Arc<Farmer>, StartError> {
    let blobs = match &settings.storage_url {
        None => BlobStore::local(&settings.storage_dir)?,
        Some(url) => BlobStore::from_url(url, settings.storage_dir.join("staging"))?,
    };
    let farmer = Farmer::new(
        seed,
        db.clone(),
        blobs,
        bitcoind.clone(),
        wallet.clone(),
        FarmerConfig {
            price_per_download: bitcoin::Amount::from_sat(settings.price_per_download_sat),
            max_file_bytes: settings.max_file_bytes,
            work_dir: config.network_dir().join("farmer"),
            crs_dir: config.crs_cache_dir.clone(),
            network: config.network.name().to_string(),
            dev_fault: config.dev_fault,
            tower,
            audit_policy: settings.audit_policy,
            min_tx1_confirmations: settings.min_tx1_confirmations,
            tx2_broadcast_margin_blocks: settings.tx2_broadcast_margin_blocks,
            market: settings.market.clone(),
        },
    )?
    .with_lightning(lightning);
    farmer.resume().await?;
    tracing::info!(peer = %settings.peer_bind, "farmer role on");
    Ok(Arc::new(farmer))
}

async fn stop_on_signal(app: Arc<App>) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM: {e}");
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    app.request_shutdown();
}

/// Refuses to go on unless bitcoind answers and is on our network.
pub async fn check_bitcoind(bitcoind: &Bitcoind, expected: Network) -> Result<(), StartError> {
    let started = Instant::now();
    let info = loop {
        match bitcoind.call("getblockchaininfo", json!([])).await {
            Err(BitcoindError::Rpc(e)) if e.code == code::IN_WARMUP => {
                if started.elapsed() > WARMUP_WAIT {
                    return Err(StartError::Warmup(WARMUP_WAIT));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => break other?,
        }
    };
    let chain = info.get("chain").and_then(Value::as_str).unwrap_or("");
    match Network::from_core_chain(chain) {
        Ok(actual) if actual == expected => Ok(()),
        _ => Err(StartError::WrongNetwork {
            url: bitcoind.url().to_string(),
            actual: chain.to_string(),
            expected,
        }),
    }
}

fn prepare_network_dir(config: &Config) -> Result<(), StartError> {
    let dir = config.network_dir();
    let err = |source| StartError::Datadir {
        path: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(err)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

async fn open_wallet(config: &Config) -> Result<PluginWallet, StartError> {
    let network_dir = config.network_dir();
    let network = config.network;
    let rpc = RpcTarget {
        url: config.bitcoind_rpc_url.clone(),
        auth: config.bitcoind_auth.clone(),
    };
    let opened = tokio::task::spawn_blocking(move || {
        let wallet = PluginWallet::open(&network_dir, network, rpc)?;
        wallet.sync()?;
        Ok::<_, WalletError>(wallet)
    })
    .await
    .map_err(|e| WalletError::Build(format!("wallet task failed: {e}")))?;
    Ok(opened?)
}

#[cfg(all(test, feature = "dev-fault"))]
mod dev_fault_tests {
    use super::*;

    /// A test build refuses mainnet before it touches bitcoind or the datadir.
    #[tokio::test]
    async fn test_build_refuses_mainnet() {
        let dir = tempfile::tempdir().unwrap();
        let argv = [
            "dstore-plugin",
            "--datadir",
            dir.path().to_str().unwrap(),
            "--bitcoind-cookie",
            "/c",
            "--network",
            "mainnet",
        ];
        let config = Config::from_args(argv.map(String::from)).unwrap();
        let refused = start(config, false).await;
        assert!(matches!(refused, Err(StartError::TestBuildOnMainnet)));
        assert!(!dir.path().join("mainnet").exists());
    }
}
