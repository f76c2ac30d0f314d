//! The embedded LDK node (`--lightning`): built on the plugin's runtime, chain data from the same bitcoind over RPC, data under `<datadir>/<network>/ln`.
//!
//! One task owns LDK's event queue: it claims an incoming payment with the preimage the
//! farmer stored before it made the invoice, and wakes whoever waits on a payment.
//! ldk-node's methods that may block (they `block_on` LDK's runtime or write its store)
//! run on tokio's blocking pool.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bitcoin::hashes::Hash;
use bitcoin::secp256k1::PublicKey;
use ldk_node::lightning::ln::channelmanager::PaymentId;
use ldk_node::lightning::ln::msgs::SocketAddress;
use ldk_node::lightning_invoice::{Bolt11Invoice, Bolt11InvoiceDescription, Description};
use ldk_node::lightning_types::payment::{PaymentHash, PaymentPreimage};
use ldk_node::payment::{PaymentDirection, PaymentKind, PaymentStatus};
use ldk_node::{ChannelDetails, Event, Node, NodeError, UserChannelId};
use tokio::sync::{watch, Notify};

use super::{with_fee_margin, LnError, LnInfo, LnPeerInfo, PaymentOutcome};

/// How often a payment waiter looks again even without an event.
const PAYMENT_POLL: Duration = Duration::from_millis(250);
/// The alias every embedded node announces (with its listening address) once it has an
/// announced channel.
const NODE_ALIAS: &str = "dstore";

/// How long `open_channel` waits for the funding transaction to exist.
const FUNDING_WAIT: Duration = Duration::from_secs(30);

/// Everything the embedded node needs to start.
#[derive(Debug, Clone)]
pub struct LdkSettings {
    /// `<datadir>/<network>/ln`.
    pub dir: PathBuf,
    pub network: bitcoin::Network,
    pub listen: SocketAddr,
    pub rpc_host: String,
    pub rpc_port: u16,
    pub rpc_user: String,
    pub rpc_password: String,
    /// Dev fault `LnNeverSettle`: never claim an incoming payment.
    pub never_settle: bool,
}

/// A channel as `dstore-ln-listchannels` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChannelView {
    pub channel_id: String,
    pub user_channel_id: String,
    pub counterparty_node_id: String,
    pub capacity_sat: u64,
    pub outbound_msat: u64,
    pub inbound_msat: u64,
    pub is_channel_ready: bool,
    pub is_usable: bool,
    pub funding_txid: Option<String>,
}

impl From<&ChannelDetails> for ChannelView {
    fn from(c: &ChannelDetails) -> Self {
        ChannelView {
            channel_id: hex::encode(c.channel_id.0),
            user_channel_id: c.user_channel_id.0.to_string(),
            counterparty_node_id: c.counterparty_node_id.to_string(),
            capacity_sat: c.channel_value_sats,
            outbound_msat: c.outbound_capacity_msat,
            inbound_msat: c.inbound_capacity_msat,
            is_channel_ready: c.is_channel_ready,
            is_usable: c.is_usable,
            funding_txid: c.funding_txo.map(|o| o.txid.to_string()),
        }
    }
}

/// A channel being opened: its ids once LDK knows the funding transaction.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OpenedChannel {
    pub channel_id: String,
    pub user_channel_id: String,
    pub funding_txid: Option<String>,
}

/// The node's balances, in satoshis.
#[derive(Debug, Clone, Copy)]
pub struct Balances {
    pub onchain_sat: u64,
    pub spendable_onchain_sat: u64,
    pub lightning_sat: u64,
}

/// The embedded LDK node.
pub struct LdkNode {
    node: Arc<Node>,
    preimages: PreimageStore,
    never_settle: bool,
    /// Why a payment failed, as its PaymentFailed event said (LDK's store keeps no reason).
    failures: Mutex<HashMap<[u8; 32], String>>,
    /// Woken on every payment outcome.
    payment_events: Notify,
    stop: watch::Sender<bool>,
}

impl LdkNode {
    /// Builds and starts the node and its event task. Must run inside the plugin's
    /// (multi-threaded) tokio runtime, which LDK then shares.
    pub async fn start(settings: LdkSettings) -> Result<Arc<Self>, LnError> {
        prepare_dir(&settings.dir)?;
        let preimages = PreimageStore::open(&settings.dir.join("preimages"))?;
        let handle = tokio::runtime::Handle::current();
        let build = settings.clone();
        let node = tokio::task::spawn_blocking(move || build_node(&build, handle))
            .await
            .map_err(|e| LnError::Node(format!("LDK start-up task failed: {e}")))??;
        restrict(&settings.dir.join("keys_seed"), 0o600)?;
        let node = Arc::new(LdkNode {
            node,
            preimages,
            never_settle: settings.never_settle,
            failures: Mutex::new(HashMap::new()),
            payment_events: Notify::new(),
            stop: watch::channel(false).0,
        });
        tracing::info!(
            node_id = %node.node.node_id(),
            listen = %settings.listen,
            "Lightning node (LDK) started"
        );
        if node.never_settle {
            tracing::warn!("dev fault: this Lightning node never settles incoming payments");
        }
        tokio::spawn(node.clone().handle_events());
        Ok(node)
    }

    /// Stops the event task and the node (LDK persists everything first).
    pub async fn stop(self: Arc<Self>) {
        self.stop.send_replace(true);
        let node = self.node.clone();
        match tokio::task::spawn_blocking(move || node.stop()).await {
            Ok(Ok(())) => tracing::info!("Lightning node (LDK) stopped"),
            Ok(Err(e)) => tracing::warn!("stopping the Lightning node: {e}"),
            Err(e) => tracing::warn!("stopping the Lightning node: {e}"),
        }
    }

    pub fn node_id(&self) -> PublicKey {
        self.node.node_id()
    }

    pub fn info(&self) -> LnInfo {
        LnInfo {
            node_id: self.node.node_id(),
            addresses: self
                .node
                .listening_addresses()
                .unwrap_or_default()
                .iter()
                .map(|a| a.to_string())
                .collect(),
        }
    }

    pub fn advertised(&self) -> Option<LnPeerInfo> {
        let info = self.info();
        info.addresses.into_iter().next().map(|address| LnPeerInfo {
            node_id: info.node_id,
            address,
        })
    }

    /// The block LDK's Lightning wallet is synced to.
    pub fn block_height(&self) -> u32 {
        self.node.status().current_best_block.height
    }

    /// How many announced channels the node's network graph knows (learned by gossip).
    pub fn graph_channels(&self) -> usize {
        self.node.network_graph().list_channels().len()
    }

    pub async fn balances(self: &Arc<Self>) -> Result<Balances, LnError> {
        let node = self.node.clone();
        let b = blocking(move || Ok(node.list_balances())).await?;
        Ok(Balances {
            onchain_sat: b.total_onchain_balance_sats,
            spendable_onchain_sat: b.spendable_onchain_balance_sats,
            lightning_sat: b.total_lightning_balance_sats,
        })
    }

    /// Persists the preimage, then registers an invoice for its hash.
    pub async fn invoice(
        self: Arc<Self>,
        preimage: [u8; 32],
        amount_msat: u64,
        description: &str,
        expiry_secs: u32,
    ) -> Result<String, LnError> {
        let hash = super::payment_hash_of(&preimage);
        let description = Description::new(description.to_string())
            .map_err(|e| LnError::InvalidParameter(format!("invoice description: {e}")))?;
        let store = self.preimages.clone();
        let node = self.node.clone();
        let invoice = blocking(move || {
            store.put(&hash, &preimage)?;
            node.bolt11_payment()
                .receive_for_hash(
                    amount_msat,
                    &Bolt11InvoiceDescription::Direct(description),
                    expiry_secs,
                    PaymentHash(hash),
                )
                .map_err(node_error)
        })
        .await?;
        tracing::info!(payment_hash = %hex::encode(hash), amount_msat, "invoice created");
        Ok(invoice.to_string())
    }

    /// Starts paying `bolt11` unless this node already sent (or tried) a payment for its hash.
    pub async fn pay(self: Arc<Self>, bolt11: &str) -> Result<(), LnError> {
        let invoice = Bolt11Invoice::from_str(bolt11.trim())
            .map_err(|e| LnError::InvalidInvoice(e.to_string()))?;
        let hash = *invoice.payment_hash().as_byte_array();
        if self.payment(hash) != PaymentOutcome::Unknown {
            tracing::info!(payment_hash = %hex::encode(hash), "payment already sent; not sending again");
            return Ok(());
        }
        let node = self.node.clone();
        let sent = blocking(move || Ok(node.bolt11_payment().send(&invoice, None))).await?;
        match sent {
            Ok(_) => {
                tracing::info!(payment_hash = %hex::encode(hash), "payment sent");
                Ok(())
            }
            Err(NodeError::DuplicatePayment) => Ok(()),
            Err(NodeError::InvalidInvoice) => {
                Err(LnError::InvalidInvoice("the invoice has no amount".into()))
            }
            Err(NodeError::PaymentSendingFailed) => Err(LnError::Node(
                "payment sending failed (no usable route with enough capacity)".into(),
            )),
            Err(e) => Err(node_error(e)),
        }
    }

    /// What the node knows of our outbound payment with this hash.
    pub fn payment(&self, payment_hash: [u8; 32]) -> PaymentOutcome {
        let Some(details) = self.node.payment(&PaymentId(payment_hash)) else {
            return PaymentOutcome::Unknown;
        };
        if details.direction != PaymentDirection::Outbound {
            return PaymentOutcome::Unknown;
        }
        match details.status {
            PaymentStatus::Pending => PaymentOutcome::Pending,
            PaymentStatus::Succeeded => match details.kind {
                PaymentKind::Bolt11 {
                    preimage: Some(preimage),
                    ..
                } => PaymentOutcome::Succeeded {
                    preimage: preimage.0,
                    fee_msat: details.fee_paid_msat,
                },
                // The store records the preimage with the success; without it, still pending.
                _ => PaymentOutcome::Pending,
            },
            PaymentStatus::Failed => PaymentOutcome::Failed {
                reason: self
                    .failures
                    .lock()
                    .ok()
                    .and_then(|f| f.get(&payment_hash).cloned())
                    .unwrap_or_else(|| "the payment failed".into()),
            },
        }
    }

    /// Waits for a final outcome, woken by the event task, looking again every 250 ms.
    pub async fn wait_payment(&self, payment_hash: [u8; 32], timeout: Duration) -> PaymentOutcome {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let woken = self.payment_events.notified();
            let outcome = self.payment(payment_hash);
            if outcome.is_final() || tokio::time::Instant::now() >= deadline {
                return outcome;
            }
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep(PAYMENT_POLL) => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// A usable channel with room for `amount_msat` + 1 % (the payee may sit behind it).
    pub fn can_pay(&self, payee: &PublicKey, amount_msat: u64) -> bool {
        let needed = with_fee_margin(amount_msat);
        let channels = self.node.list_channels();
        let usable = |c: &&ChannelDetails| c.is_usable && c.next_outbound_htlc_limit_msat >= needed;
        let direct = channels
            .iter()
            .filter(|c| c.counterparty_node_id == *payee)
            .any(|c| usable(&c));
        direct || channels.iter().any(|c| usable(&c))
    }

    pub async fn new_address(self: &Arc<Self>) -> Result<bitcoin::Address, LnError> {
        let node = self.node.clone();
        blocking(move || node.onchain_payment().new_address().map_err(node_error)).await
    }

    /// Connects to a peer (remembered across restarts).
    pub async fn connect(
        self: &Arc<Self>,
        node_id: PublicKey,
        address: SocketAddress,
    ) -> Result<(), LnError> {
        if node_id == self.node.node_id() {
            return Err(LnError::InvalidParameter(
                "cannot connect to ourselves".into(),
            ));
        }
        let node = self.node.clone();
        blocking(move || {
            node.connect(node_id, address, true).map_err(|e| match e {
                NodeError::ConnectionFailed => LnError::Node(format!(
                    "cannot connect to {node_id} (unreachable, or not that node)"
                )),
                e => node_error(e),
            })
        })
        .await
    }

    /// The address of a peer we know (connected or remembered).
    pub fn peer_address(&self, node_id: &PublicKey) -> Option<SocketAddress> {
        self.node
            .list_peers()
            .into_iter()
            .find(|p| p.node_id == *node_id)
            .map(|p| p.address)
    }

    /// Opens a channel (announced for forwarding when `announce`) and waits (up to 30 s)
    /// until its funding transaction exists.
    pub async fn open_channel(
        self: &Arc<Self>,
        node_id: PublicKey,
        address: SocketAddress,
        amount_sat: u64,
        push_msat: Option<u64>,
        announce: bool,
    ) -> Result<OpenedChannel, LnError> {
        let node = self.node.clone();
        let user_channel_id = blocking(move || {
            let opened = if announce {
                node.open_announced_channel(node_id, address, amount_sat, push_msat, None)
            } else {
                node.open_channel(node_id, address, amount_sat, push_msat, None)
            };
            opened.map_err(|e| match e {
                    NodeError::InsufficientFunds => LnError::InsufficientFunds(format!(
                        "the Lightning wallet cannot fund {amount_sat} sat plus fees and the anchor reserve (fund it with dstore-ln-newaddress)"
                    )),
                    NodeError::ConnectionFailed => {
                        LnError::Node(format!("cannot connect to {node_id}"))
                    }
                    e => node_error(e),
                })
        })
        .await?;
        tracing::info!(counterparty = %node_id, amount_sat, "channel open started");
        let deadline = tokio::time::Instant::now() + FUNDING_WAIT;
        loop {
            let channel = self.channel_by_user_id(user_channel_id);
            let funded = channel.as_ref().is_some_and(|c| c.funding_txo.is_some());
            if funded || tokio::time::Instant::now() >= deadline {
                return match channel {
                    Some(c) => {
                        let view = ChannelView::from(&c);
                        Ok(OpenedChannel {
                            channel_id: view.channel_id,
                            user_channel_id: view.user_channel_id,
                            funding_txid: view.funding_txid,
                        })
                    }
                    None => Err(LnError::Node(
                        "the peer refused the channel (see its log; an LDK peer needs on-chain funds for the anchor reserve)".into(),
                    )),
                };
            }
            tokio::time::sleep(PAYMENT_POLL).await;
        }
    }

    fn channel_by_user_id(&self, id: UserChannelId) -> Option<ChannelDetails> {
        self.node
            .list_channels()
            .into_iter()
            .find(|c| c.user_channel_id == id)
    }

    pub fn list_channels(&self) -> Vec<ChannelView> {
        self.node
            .list_channels()
            .iter()
            .map(ChannelView::from)
            .collect()
    }

    /// Closes a channel cooperatively, found by its channel id (hex) or user channel id.
    pub async fn close_channel(self: &Arc<Self>, id: &str) -> Result<ChannelView, LnError> {
        let channel = self
            .node
            .list_channels()
            .into_iter()
            .find(|c| hex::encode(c.channel_id.0) == id || c.user_channel_id.0.to_string() == id)
            .ok_or_else(|| LnError::InvalidParameter(format!("unknown channel {id}")))?;
        let view = ChannelView::from(&channel);
        let node = self.node.clone();
        blocking(move || {
            node.close_channel(&channel.user_channel_id, channel.counterparty_node_id)
                .map_err(node_error)
        })
        .await?;
        tracing::info!(channel_id = %view.channel_id, "cooperative close started");
        Ok(view)
    }

    /// Owns LDK's event queue until the node stops.
    async fn handle_events(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        loop {
            let event = tokio::select! {
                event = self.node.next_event_async() => event,
                _ = stop.wait_for(|s| *s) => return,
            };
            let me = self.clone();
            let handled = tokio::task::spawn_blocking(move || {
                me.on_event(&event);
                me.node.event_handled()
            })
            .await;
            match handled {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("LDK event not marked handled: {e}"),
                Err(e) => tracing::error!("LDK event handler failed: {e}"),
            }
        }
    }

    fn on_event(&self, event: &Event) {
        match event {
            Event::PaymentClaimable {
                payment_hash,
                claimable_amount_msat,
                ..
            } => self.claim(payment_hash.0, *claimable_amount_msat),
            Event::PaymentSuccessful {
                payment_hash,
                fee_paid_msat,
                ..
            } => {
                tracing::info!(payment_hash = %hex::encode(payment_hash.0), fee_msat = ?fee_paid_msat, "payment succeeded");
                self.payment_events.notify_waiters();
            }
            Event::PaymentFailed {
                payment_hash,
                reason,
                ..
            } => {
                let reason = reason
                    .map(|r| format!("the payment failed: {r:?}"))
                    .unwrap_or_else(|| "the payment failed".into());
                if let (Some(hash), Ok(mut failures)) = (payment_hash, self.failures.lock()) {
                    failures.insert(hash.0, reason.clone());
                }
                tracing::warn!(payment_hash = ?payment_hash.map(|h| hex::encode(h.0)), %reason, "payment failed");
                self.payment_events.notify_waiters();
            }
            Event::PaymentReceived {
                payment_hash,
                amount_msat,
                ..
            } => {
                tracing::info!(payment_hash = %hex::encode(payment_hash.0), amount_msat, "payment received");
            }
            Event::PaymentForwarded {
                total_fee_earned_msat,
                ..
            } => tracing::info!(fee_msat = ?total_fee_earned_msat, "payment forwarded"),
            Event::ChannelPending {
                channel_id,
                counterparty_node_id,
                funding_txo,
                ..
            } => {
                tracing::info!(channel_id = %hex::encode(channel_id.0), counterparty = %counterparty_node_id, funding_txid = %funding_txo.txid, "channel pending")
            }
            Event::ChannelReady {
                channel_id,
                counterparty_node_id,
                ..
            } => {
                tracing::info!(channel_id = %hex::encode(channel_id.0), counterparty = ?counterparty_node_id, "channel ready")
            }
            Event::ChannelClosed {
                channel_id, reason, ..
            } => {
                tracing::info!(channel_id = %hex::encode(channel_id.0), reason = ?reason, "channel closed")
            }
            other => tracing::debug!(event = ?other, "Lightning event"),
        }
    }

    /// Claims an incoming payment with the stored preimage (LDK checks the amount is at
    /// least the invoice's); an unknown hash is failed back at once.
    fn claim(&self, hash: [u8; 32], amount_msat: u64) {
        let hash_hex = hex::encode(hash);
        match self.preimages.get(&hash) {
            Ok(Some(_)) if self.never_settle => {
                tracing::warn!(payment_hash = %hash_hex, "dev fault: not claiming this payment");
            }
            Ok(Some(preimage)) => {
                match self.node.bolt11_payment().claim_for_hash(
                    PaymentHash(hash),
                    amount_msat,
                    PaymentPreimage(preimage),
                ) {
                    Ok(()) => {
                        tracing::info!(payment_hash = %hash_hex, amount_msat, "claiming payment")
                    }
                    Err(e) => {
                        tracing::warn!(payment_hash = %hash_hex, amount_msat, "cannot claim payment: {e}")
                    }
                }
            }
            Ok(None) => {
                tracing::warn!(payment_hash = %hash_hex, "no preimage for this payment; failing it back");
                if let Err(e) = self.node.bolt11_payment().fail_for_hash(PaymentHash(hash)) {
                    tracing::warn!(payment_hash = %hash_hex, "cannot fail payment back: {e}");
                }
            }
            // Not failed back: LDK fails it when its claim deadline comes.
            Err(e) => {
                tracing::error!(payment_hash = %hash_hex, "cannot read the preimage store: {e}")
            }
        }
    }
}

fn build_node(
    settings: &LdkSettings,
    handle: tokio::runtime::Handle,
) -> Result<Arc<Node>, LnError> {
    let dir = settings.dir.to_string_lossy().into_owned();
    let mut builder = ldk_node::Builder::new();
    builder
        .set_runtime(handle)
        .set_network(settings.network)
        .set_storage_dir_path(dir.clone())
        .set_entropy_seed_path(format!("{dir}/keys_seed"))
        .set_filesystem_logger(
            Some(format!("{dir}/ldk_node.log")),
            Some(ldk_node::logger::LogLevel::Info),
        )
        .set_chain_source_bitcoind_rpc(
            settings.rpc_host.clone(),
            settings.rpc_port,
            settings.rpc_user.clone(),
            settings.rpc_password.clone(),
        );
    builder
        .set_listening_addresses(vec![SocketAddress::from(settings.listen)])
        .map_err(|e| LnError::Node(format!("listening address: {e}")))?;
    // An alias and a listening address let the node forward payments: ldk-node opens
    // (and accepts) announced channels only then, and LDK forwards into announced
    // channels only (it never forwards into a private one unless it is an LSP).
    builder
        .set_node_alias(NODE_ALIAS.to_string())
        .map_err(|e| LnError::Node(format!("node alias: {e}")))?;
    let node = builder
        .build()
        .map_err(|e| LnError::Node(format!("cannot build the LDK node: {e}")))?;
    node.start()
        .map_err(|e| LnError::Node(format!("cannot start the LDK node: {e}")))?;
    Ok(Arc::new(node))
}

/// Runs a blocking ldk-node call on tokio's blocking pool.
async fn blocking<T, F>(op: F) -> Result<T, LnError>
where
    F: FnOnce() -> Result<T, LnError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(op)
        .await
        .map_err(|e| LnError::Node(format!("Lightning task failed: {e}")))?
}

fn node_error(e: NodeError) -> LnError {
    match e {
        NodeError::InsufficientFunds => LnError::InsufficientFunds(e.to_string()),
        NodeError::DuplicatePayment => LnError::Duplicate,
        NodeError::InvalidInvoice => LnError::InvalidInvoice(e.to_string()),
        NodeError::InvalidAmount
        | NodeError::InvalidNodeId
        | NodeError::InvalidSocketAddress
        | NodeError::InvalidPublicKey => LnError::InvalidParameter(e.to_string()),
        e => LnError::Node(e.to_string()),
    }
}

fn prepare_dir(dir: &Path) -> Result<(), LnError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| LnError::Store(format!("cannot create {}: {e}", dir.display())))?;
    restrict(dir, 0o700)
}

fn restrict(path: &Path, mode: u32) -> Result<(), LnError> {
    if !path.exists() {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| LnError::Store(format!("cannot restrict {}: {e}", path.display())))
}

/// Preimages the farmer's invoices are settled with: one 0600 file per payment hash,
/// written and synced before the invoice exists.
#[derive(Debug, Clone)]
pub struct PreimageStore {
    dir: PathBuf,
}

impl PreimageStore {
    pub fn open(dir: &Path) -> Result<Self, LnError> {
        prepare_dir(dir)?;
        Ok(PreimageStore {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, hash: &[u8; 32]) -> PathBuf {
        self.dir.join(hex::encode(hash))
    }

    /// Stores `preimage` under its hash durably (temp file, fsync, rename, fsync dir).
    pub fn put(&self, hash: &[u8; 32], preimage: &[u8; 32]) -> Result<(), LnError> {
        if super::payment_hash_of(preimage) != *hash {
            return Err(LnError::InvalidParameter(
                "the preimage does not hash to the payment hash".into(),
            ));
        }
        let err = |e: std::io::Error| LnError::Store(format!("cannot store a preimage: {e}"));
        let tmp = self.dir.join(format!("{}.tmp", hex::encode(hash)));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        file.write_all(hex::encode(preimage).as_bytes())
            .map_err(err)?;
        file.sync_all().map_err(err)?;
        std::fs::rename(&tmp, self.path(hash)).map_err(err)?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err)
    }

    pub fn get(&self, hash: &[u8; 32]) -> Result<Option<[u8; 32]>, LnError> {
        let text = match std::fs::read_to_string(self.path(hash)) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LnError::Store(format!("cannot read a preimage: {e}"))),
        };
        let bytes = hex::decode(text.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .filter(|x| super::payment_hash_of(x) == *hash)
            .ok_or_else(|| LnError::Store("a stored preimage is corrupt".into()))?;
        Ok(Some(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preimage_store_round_trips_privately_and_refuses_a_wrong_hash() {
        let dir = tempfile::tempdir().unwrap();
        let store = PreimageStore::open(&dir.path().join("preimages")).unwrap();
        let x = [9u8; 32];
        let h = super::super::payment_hash_of(&x);
        assert_eq!(store.get(&h).unwrap(), None);
        store.put(&h, &x).unwrap();
        assert_eq!(store.get(&h).unwrap(), Some(x));
        let mode = std::fs::metadata(store.path(&h))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(store.put(&[0u8; 32], &x).is_err());
    }
}
