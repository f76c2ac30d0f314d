//! The always-on service: start-up checks (network, initial block download), the ZMQ
//! feed, the periodic reconciliation that catches whatever ZMQ missed, and the servers.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use dstore_daemon::bitcoind::{Bitcoind, BitcoindError};
use dstore_daemon::cookie::CookieFile;
use dstore_protocol::network::Network;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::secrets::SecretBox;
use crate::store::{Store, StoreError};
use crate::tower::{bump, Tower, TowerError};
use crate::zmq_feed::{self, Notice};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("bitcoind is in initial block download; the watchtower refuses to run until it has synced (try again later)")]
    InitialBlockDownload,
    #[error("bitcoind is on {bitcoind}, the watchtower on {ours}")]
    WrongNetwork { bitcoind: String, ours: String },
    #[error("this is a test build (Cargo feature dev-fault) and refuses to run on mainnet")]
    TestBuildOnMainnet,
    #[error("cannot reach bitcoind at start-up: {0}")]
    Bitcoind(#[from] BitcoindError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tower(#[from] TowerError),
    #[error("cannot subscribe to bitcoind's ZMQ notifications: {0}")]
    Zmq(#[from] zmq::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServiceError {
    let what = what.into();
    move |source| ServiceError::Io { what, source }
}

/// Runs the watchtower until `stop` or a signal.
pub async fn run(config: Config) -> Result<(), ServiceError> {
    // Secrets (cookie, extracted keys in the database) are created private.
    unsafe { libc::umask(0o077) };
    if cfg!(feature = "dev-fault") {
        if config.network == Network::Mainnet {
            return Err(ServiceError::TestBuildOnMainnet);
        }
        tracing::warn!(fault = ?config.dev_fault, "test build: compiled with the dev-fault feature (test-only faults, refuses mainnet)");
    }
    let bitcoind = Arc::new(Bitcoind::new(
        &config.bitcoind_rpc_url,
        config.bitcoind_auth.clone(),
    ));
    check_chain(&bitcoind, config.network).await?;
    let dir = config.network_dir();
    std::fs::create_dir_all(&dir).map_err(io(format!("cannot create {}", dir.display())))?;
    let secrets = SecretBox::new(&dir.join(crate::secrets::KEY_FILE));
    let store = Store::open(&dir.join("db"), secrets)?;
    let wallet =
        crate::wallet::TowerWallet::load_or_create(&dir.join("wallet.key"), config.network)
            .map_err(io("cannot load the tower's wallet key"))?;
    let (tower, mut outcomes) = Tower::open(
        store,
        bitcoind,
        wallet,
        config.auditor,
        config.act_batch,
        config.dev_fault,
    )?;
    let tower = Arc::new(tower);
    tower.reconcile().await?;

    let (shutdown, mut stopping) = watch::channel(false);
    let rpc_addr = std::net::SocketAddr::new(config.rpc_bind, config.rpc_port);
    let listener = TcpListener::bind(rpc_addr)
        .await
        .map_err(io(format!("cannot listen on {rpc_addr}")))?;
    let cookie = Arc::new(
        CookieFile::create(&dir.join(".cookie")).map_err(io("cannot write the RPC cookie"))?,
    );
    tokio::spawn(crate::rpc::serve(
        tower.clone(),
        cookie.clone(),
        listener,
        shutdown.clone(),
    ));
    if let Some(addr) = config.metrics_bind {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(io(format!("cannot listen on {addr}")))?;
        tokio::spawn(crate::metrics::serve(tower.clone(), listener));
    }
    let (sender, mut notices) = mpsc::channel(10_000);
    let stop_zmq = Arc::new(AtomicBool::new(false));
    let zmq_thread = zmq_feed::spawn(config.zmq_endpoints.clone(), sender, stop_zmq.clone())?;
    tracing::info!(rpc = %rpc_addr, zmq = ?config.zmq_endpoints, merkle_audit_every = config.auditor.merkle_every, "dstore-watchtower running");

    let mut poll = tokio::time::interval(Duration::from_secs(config.poll_seconds));
    loop {
        tokio::select! {
            notice = notices.recv() => match notice {
                Some(notice) => handle(&tower, notice).await,
                None => break,
            },
            Some(outcome) = outcomes.recv() => {
                if let Err(e) = tower.on_auditor_outcome(outcome).await {
                    tracing::warn!("cannot record the farmer's answer: {e}");
                }
            }
            _ = poll.tick() => reconcile(&tower).await,
            _ = stopping.wait_for(|s| *s) => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    stop_zmq.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || zmq_thread.join()).await;
    drop(cookie);
    tracing::info!("dstore-watchtower stopped");
    Ok(())
}

async fn check_chain(bitcoind: &Bitcoind, network: Network) -> Result<(), ServiceError> {
    let info = bitcoind.call("getblockchaininfo", json!([])).await?;
    let chain = info["chain"].as_str().unwrap_or("");
    if Network::from_core_chain(chain).ok() != Some(network) {
        return Err(ServiceError::WrongNetwork {
            bitcoind: chain.to_string(),
            ours: network.name().to_string(),
        });
    }
    if info["initialblockdownload"].as_bool().unwrap_or(true) {
        return Err(ServiceError::InitialBlockDownload);
    }
    Ok(())
}

async fn reconcile(tower: &Tower) {
    if let Err(e) = tower.reconcile().await {
        tracing::warn!("reconciliation failed ({e}); retrying at the next notification or poll");
    }
}

async fn handle(tower: &Tower, notice: Notice) {
    bump(&tower.counters.zmq_messages);
    match notice {
        Notice::RawTx(bytes) => {
            if let Err(e) = tower.on_raw_tx(&bytes).await {
                bump(&tower.counters.zmq_malformed);
                tracing::warn!("ignoring a rawtx notification: {e}");
            }
        }
        Notice::Block | Notice::Sequence(b'C') | Notice::Sequence(b'D') => reconcile(tower).await,
        Notice::Sequence(_) => {}
        Notice::Gap {
            topic,
            expected,
            got,
        } => {
            bump(&tower.counters.zmq_gaps);
            tracing::warn!(%topic, expected, got, "ZMQ notifications were missed; reconciling over RPC");
            reconcile(tower).await;
            if let Err(e) = tower.resync_mempool().await {
                tracing::warn!("mempool resync failed: {e}");
            }
        }
        Notice::Malformed(reason) => {
            bump(&tower.counters.zmq_malformed);
            tracing::warn!("ignoring a malformed ZMQ message: {reason}");
        }
    }
}
