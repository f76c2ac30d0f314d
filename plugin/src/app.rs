//! The plugin's shared state: configuration, the bitcoind client, the wallet, the metadata
//! store, the renter role, the farmer role when enabled, and shutdown.

use std::sync::Arc;

use dstore_daemon::jsonrpc::RpcError;
use dstore_daemon::server::Backend;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::bitcoind::Bitcoind;
use crate::config::Config;
use crate::farmer::Farmer;
use crate::market::Market;
use crate::renter::Renter;
use crate::wallet::PluginWallet;

pub struct App {
    pub config: Config,
    pub bitcoind: Arc<Bitcoind>,
    pub wallet: Arc<PluginWallet>,
    pub renter: Arc<Renter>,
    pub farmer: Option<Arc<Farmer>>,
    /// The farmer market: chain scanner records, adverts, evidence (every role).
    pub market: Arc<Market>,
    /// Files stored as erasure-coded shards across several farmers.
    pub files: Arc<crate::shards::Files>,
    /// The Lightning node paying or selling mode-N downloads (`--lightning`, or lightningd).
    pub lightning: Option<crate::ln::Lightning>,
    shutdown: watch::Sender<bool>,
}

impl App {
    pub fn new(
        config: Config,
        bitcoind: Arc<Bitcoind>,
        wallet: Arc<PluginWallet>,
        renter: Arc<Renter>,
        farmer: Option<Arc<Farmer>>,
        market: Arc<Market>,
    ) -> Self {
        App {
            config,
            bitcoind,
            wallet,
            files: Arc::new(crate::shards::Files::new(renter.clone(), market.clone())),
            renter,
            farmer,
            market,
            lightning: None,
            shutdown: watch::channel(false).0,
        }
    }

    /// The plugin's Lightning node (None: no Lightning, mode L only).
    pub fn with_lightning(mut self, lightning: Option<crate::ln::Lightning>) -> Self {
        self.lightning = lightning;
        self
    }

    /// The roles this plugin plays. The renter role (client side) is always on.
    pub fn roles(&self) -> Value {
        if self.farmer.is_some() {
            json!(["renter", "farmer"])
        } else {
            json!(["renter"])
        }
    }

    /// Asks the server to stop after answering the current requests.
    pub fn request_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Resolves once a shutdown has been requested.
    pub async fn shutdown_requested(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// The JSON-RPC server answers `dstore-*` and `help` here and forwards the rest to bitcoind.
impl Backend for App {
    fn is_local(&self, method: &str) -> bool {
        crate::methods::is_local(method)
    }

    async fn dispatch(self: &Arc<Self>, method: &str, params: &Value) -> Result<Value, RpcError> {
        crate::methods::dispatch(self, method, params).await
    }

    fn bitcoind(&self) -> &Bitcoind {
        &self.bitcoind
    }

    async fn shutdown_requested(&self) {
        App::shutdown_requested(self).await
    }
}
