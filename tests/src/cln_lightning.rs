//! The Lightning half of the lightningd stand-in: a REAL ldk-node in the test process, and lightningd's `getinfo`, `invoice`, `listinvoices`, `pay`, `xpay`, `listpays` and `listpeerchannels` answered with it.
//!
//! The answers follow lightningd's documentation (doc/schemas/*.json of Core Lightning
//! 24.11): parameters by name or by position in lightningd's order, unknown or missing
//! parameters refused with -32602, amounts as numbers of msat or strings "Nmsat"/"Nsat",
//! lightningd's field names and error codes (900 duplicate label, 901 preimage already
//! used, 205 no route, 207 invoice expired, 210 payment failed). `pay` and `xpay` block
//! until the payment is final, as lightningd's do, and return the real preimage the payee
//! revealed over the channel. An invoice with a chosen `preimage` is settled only with it:
//! the node registers the hash ([`receive_for_hash`](ldk_node::payment::Bolt11Payment::receive_for_hash))
//! and claims the HTLC with the stored preimage when it arrives.

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bitcoin::hashes::{sha256, Hash};
use ldk_node::lightning::ln::msgs::SocketAddress;
use ldk_node::lightning_invoice::{Bolt11Invoice, Bolt11InvoiceDescription, Description};
use ldk_node::lightning_types::payment::{PaymentHash, PaymentPreimage};
use ldk_node::{Builder, Event, Node, NodeError};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::node::BitcoinNode;
use crate::{ports, wait_until};

/// How long LDK (polling bitcoind) may take to see a block or a transaction.
pub const LN_SYNC: Duration = Duration::from_secs(120);
/// The longest a `pay`/`xpay` call waits for its payment to become final.
const PAY_WAIT: Duration = Duration::from_secs(300);
/// How often the event pump looks at LDK's queue when it is empty.
const EVENT_POLL: Duration = Duration::from_millis(20);

/// lightningd's JSON-RPC error codes used here.
pub mod codes {
    pub const INVALID_PARAMS: i64 = -32602;
    pub const PAY_IN_PROGRESS: i64 = 200;
    pub const PAY_ROUTE_NOT_FOUND: i64 = 205;
    pub const PAY_INVOICE_EXPIRED: i64 = 207;
    pub const PAY_STOPPED_RETRYING: i64 = 210;
    pub const INVOICE_LABEL_ALREADY_EXISTS: i64 = 900;
    pub const INVOICE_PREIMAGE_ALREADY_EXISTS: i64 = 901;
}

type RpcResult = Result<Value, Value>;

fn rpc_err(code: i64, message: impl Into<String>) -> Value {
    json!({"code": code, "message": message.into()})
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// One invoice lightningd holds.
#[derive(Debug, Clone)]
struct InvoiceRecord {
    label: String,
    bolt11: String,
    hash: [u8; 32],
    preimage: [u8; 32],
    amount_msat: Option<u64>,
    description: String,
    expires_at: u64,
    created_index: u64,
    paid: Option<(u64, u64)>, // (paid_at, amount_received_msat)
}

/// One outgoing payment (pay or xpay).
#[derive(Debug, Clone)]
struct PayRecord {
    bolt11: String,
    destination: String,
    amount_msat: u64,
    created_at: u64,
    created_index: u64,
    /// None while pending.
    outcome: Option<Result<PaidRecord, String>>,
}

#[derive(Debug, Clone)]
struct PaidRecord {
    preimage: [u8; 32],
    fee_msat: u64,
    completed_at: u64,
}

#[derive(Default)]
struct Books {
    invoices: Vec<InvoiceRecord>,
    pays: HashMap<[u8; 32], PayRecord>,
    next_index: u64,
}

/// A real LDK node that a fake lightningd answers Lightning calls with.
pub struct LightningdNode {
    pub node: Arc<Node>,
    pub listen: SocketAddress,
    books: Arc<(Mutex<Books>, Condvar)>,
    stop: Arc<AtomicBool>,
    pump: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub dir: PathBuf,
    _dir: TempDir,
}

impl LightningdNode {
    /// Builds and starts an LDK node on a free loopback port, chain source `bitcoind`'s RPC
    /// (cookie), and its event pump.
    pub fn start(bitcoind: &BitcoinNode) -> Arc<Self> {
        let dir = tempfile::Builder::new()
            .prefix("dstore-cln-ldk-")
            .tempdir()
            .expect("ldk dir");
        let path = dir.path().to_path_buf();
        let port = ports::free_ports(1)[0];
        let listen = SocketAddress::from_str(&format!("127.0.0.1:{port}")).expect("address");
        let cookie = std::fs::read_to_string(bitcoind.cookie_path()).expect("bitcoind cookie");
        let (user, password) = cookie.trim().split_once(':').expect("cookie user:password");
        let mut builder = Builder::new();
        builder
            .set_network(bitcoin::Network::Regtest)
            .set_storage_dir_path(path.display().to_string())
            .set_filesystem_logger(
                Some(path.join("ldk_node.log").display().to_string()),
                Some(ldk_node::logger::LogLevel::Debug),
            )
            .set_chain_source_bitcoind_rpc(
                "127.0.0.1".into(),
                bitcoind.rpc_port,
                user.into(),
                password.into(),
            );
        builder
            .set_listening_addresses(vec![listen.clone()])
            .expect("listening address");
        let node = Arc::new(builder.build().expect("build the LDK node"));
        node.start().expect("start the LDK node");
        let ln = Arc::new(LightningdNode {
            node,
            listen,
            books: Arc::default(),
            stop: Arc::default(),
            pump: Mutex::new(None),
            dir: path,
            _dir: dir,
        });
        let pump = ln.spawn_event_pump();
        *ln.pump.lock().unwrap() = Some(pump);
        ln
    }

    /// `node_id@host:port`.
    pub fn uri(&self) -> String {
        format!("{}@{}", self.node.node_id(), self.listen)
    }

    /// Stops the event pump and the node.
    pub fn stop(&self) {
        if self.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(pump) = self.pump.lock().unwrap().take() {
            let _ = pump.join();
        }
        let _ = self.node.stop();
    }

    /// The last lines of LDK's own log (for failure reports).
    pub fn log_tail(&self, lines: usize) -> String {
        crate::tail(&self.dir.join("ldk_node.log"), lines)
    }

    fn spawn_event_pump(self: &Arc<Self>) -> std::thread::JoinHandle<()> {
        let (node, books, stop) = (self.node.clone(), self.books.clone(), self.stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match node.next_event() {
                    Some(event) => {
                        on_event(&node, &books, &event);
                        let _ = node.event_handled();
                        books.1.notify_all();
                    }
                    None => std::thread::sleep(EVENT_POLL),
                }
            }
        })
    }

    /// Mines a coinbase to the node's wallet, matures it and waits until LDK can spend it.
    pub fn fund(&self, bitcoind: &BitcoinNode) {
        let address = self
            .node
            .onchain_payment()
            .new_address()
            .expect("LDK address");
        bitcoind.mine_to(1, &address.to_string());
        bitcoind.mine(100);
        wait_until("the LDK wallet's coinbase", LN_SYNC, || {
            (self.node.list_balances().spendable_onchain_balance_sats > 0).then_some(())
        });
    }

    /// Waits until LDK has synced to bitcoind's tip.
    pub fn wait_synced(&self, bitcoind: &BitcoinNode) {
        let tip = bitcoind.block_count();
        wait_until("LDK to reach the tip", LN_SYNC, || {
            (u64::from(self.node.status().current_best_block.height) >= tip).then_some(())
        });
    }

    /// Opens a channel to `peer` (`node_id@host:port`) of `capacity_sat`, pushing
    /// `push_msat`; mines 6 blocks and waits until the channel is usable here. Returns the
    /// channel id (hex).
    pub fn open_channel(
        &self,
        bitcoind: &BitcoinNode,
        peer: &str,
        capacity_sat: u64,
        push_msat: u64,
    ) -> String {
        let (id, address) = peer.split_once('@').expect("node_id@host:port");
        let id = bitcoin::secp256k1::PublicKey::from_str(id).expect("node id");
        let address = SocketAddress::from_str(address).expect("peer address");
        self.node
            .connect(id, address.clone(), true)
            .expect("connect to the peer");
        let user_channel_id = self
            .node
            .open_channel(id, address, capacity_sat, Some(push_msat), None)
            .expect("open the channel");
        let funding = wait_until("the channel's funding transaction", LN_SYNC, || {
            self.node
                .list_channels()
                .into_iter()
                .find(|c| c.user_channel_id == user_channel_id)?
                .funding_txo
        });
        bitcoind.wait_for_tx(&funding.txid.to_string(), Duration::from_secs(30));
        bitcoind.mine(6);
        wait_until("the channel to be usable", LN_SYNC, || {
            let c = self
                .node
                .list_channels()
                .into_iter()
                .find(|c| c.user_channel_id == user_channel_id)?;
            c.is_usable.then(|| hex::encode(c.channel_id.0))
        })
    }

    /// Waits until a channel with `channel_id` is usable on this side too.
    pub fn wait_usable(&self, channel_id: &str) {
        wait_until(&format!("channel {channel_id} usable"), LN_SYNC, || {
            self.node
                .list_channels()
                .iter()
                .any(|c| hex::encode(c.channel_id.0) == channel_id && c.is_usable)
                .then_some(())
        });
    }

    /// Outbound Lightning (BOLT11) payments this node made, any status, as LDK's store
    /// lists them (on-chain sends such as channel funding are not counted).
    pub fn outbound_payment_count(&self) -> usize {
        use ldk_node::payment::{PaymentDirection, PaymentKind};
        self.node
            .list_payments_with_filter(|p| {
                p.direction == PaymentDirection::Outbound
                    && matches!(p.kind, PaymentKind::Bolt11 { .. })
            })
            .len()
    }

    /// Answers a lightningd method backed by this node; None for methods it does not know.
    pub fn answer(&self, method: &str, params: &Value) -> Option<RpcResult> {
        let result = match method {
            "getinfo" => Params::parse(params, &[], 0).map(|_| self.getinfo()),
            "invoice" => self.invoice(params),
            "listinvoices" => self.listinvoices(params),
            "pay" => self.pay(params, PayFlavour::Pay),
            "xpay" => self.pay(params, PayFlavour::Xpay),
            "listpays" => self.listpays(params),
            "listpeerchannels" => self.listpeerchannels(params),
            _ => return None,
        };
        Some(result.and_then(|r| r))
    }

    fn getinfo(&self) -> RpcResult {
        let channels = self.node.list_channels();
        let peers = self.node.list_peers();
        let (host, port) = host_port(&self.listen);
        Ok(json!({
            "id": self.node.node_id().to_string(),
            "alias": "dstore-harness-ldk",
            "color": "02eec7",
            "num_peers": peers.iter().filter(|p| p.is_connected).count(),
            "num_pending_channels": channels.iter().filter(|c| !c.is_channel_ready).count(),
            "num_active_channels": channels.iter().filter(|c| c.is_usable).count(),
            "num_inactive_channels": channels.iter().filter(|c| c.is_channel_ready && !c.is_usable).count(),
            "address": [],
            "binding": [{"type": "ipv4", "address": host, "port": port}],
            "version": "v24.11",
            "blockheight": self.node.status().current_best_block.height,
            "network": "regtest",
            "fees_collected_msat": 0,
            "lightning-dir": self.dir.display().to_string(),
            "our_features": {"init": "08a0000a0a69a2", "node": "88a0000a0a69a2", "channel": "", "invoice": "02000002024100"}
        }))
    }

    /// `invoice amount_msat label description [expiry] [fallbacks] [preimage]
    /// [exposeprivatechannels] [cltv] [deschashonly]`.
    fn invoice(&self, params: &Value) -> Result<RpcResult, Value> {
        let p = Params::parse(
            params,
            &[
                "amount_msat",
                "label",
                "description",
                "expiry",
                "fallbacks",
                "preimage",
                "exposeprivatechannels",
                "cltv",
                "deschashonly",
            ],
            3,
        )?;
        let amount_msat = match p.required("amount_msat")? {
            Value::String(s) if s == "any" => None,
            other => Some(parse_msat("amount_msat", other)?),
        };
        let label = match p.required("label")? {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => return Err(invalid("label", other, "a string or number")),
        };
        let description = p.string("description")?.expect("required");
        let expiry = p.u64("expiry")?.unwrap_or(604_800);
        let preimage = match p.string("preimage")? {
            Some(hex_text) => hex::decode(&hex_text)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| invalid("preimage", &json!(hex_text), "32 bytes of hex"))?,
            None => rand::random(),
        };
        let hash = sha256::Hash::hash(&preimage).to_byte_array();
        let books = self.books.0.lock().unwrap();
        if books.invoices.iter().any(|i| i.label == label) {
            return Ok(Err(rpc_err(
                codes::INVOICE_LABEL_ALREADY_EXISTS,
                format!("Duplicate label '{label}'"),
            )));
        }
        if books.invoices.iter().any(|i| i.hash == hash) {
            return Ok(Err(rpc_err(
                codes::INVOICE_PREIMAGE_ALREADY_EXISTS,
                "preimage already used",
            )));
        }
        drop(books);
        let desc = Bolt11InvoiceDescription::Direct(
            Description::new(description.clone()).map_err(|e| invalid_text("description", e))?,
        );
        let expiry_u32 = u32::try_from(expiry).map_err(|e| invalid_text("expiry", e))?;
        let payments = self.node.bolt11_payment();
        let made = match amount_msat {
            Some(msat) => payments.receive_for_hash(msat, &desc, expiry_u32, PaymentHash(hash)),
            None => payments.receive_variable_amount_for_hash(&desc, expiry_u32, PaymentHash(hash)),
        };
        let invoice = match made {
            Ok(invoice) => invoice,
            Err(e) => return Ok(Err(rpc_err(-1, format!("cannot make the invoice: {e}")))),
        };
        let mut books = self.books.0.lock().unwrap();
        books.next_index += 1;
        let record = InvoiceRecord {
            label,
            bolt11: invoice.to_string(),
            hash,
            preimage,
            amount_msat,
            description,
            expires_at: invoice.expires_at().map_or(u64::MAX, |d| d.as_secs()),
            created_index: books.next_index,
            paid: None,
        };
        books.invoices.push(record.clone());
        Ok(Ok(json!({
            "payment_hash": hex::encode(hash),
            "expires_at": record.expires_at,
            "bolt11": record.bolt11,
            "payment_secret": hex::encode(invoice.payment_secret().0),
            "created_index": record.created_index,
        })))
    }

    /// `listinvoices [label] [invstring] [payment_hash] [offer_id] [index] [start] [limit]`.
    fn listinvoices(&self, params: &Value) -> Result<RpcResult, Value> {
        let p = Params::parse(
            params,
            &[
                "label",
                "invstring",
                "payment_hash",
                "offer_id",
                "index",
                "start",
                "limit",
            ],
            0,
        )?;
        let label = p.get("label").map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        let invstring = p.string("invstring")?;
        let hash = p.string("payment_hash")?;
        let books = self.books.0.lock().unwrap();
        let now = now_secs();
        let invoices: Vec<Value> = books
            .invoices
            .iter()
            .filter(|i| label.as_ref().is_none_or(|l| *l == i.label))
            .filter(|i| invstring.as_ref().is_none_or(|s| *s == i.bolt11))
            .filter(|i| hash.as_ref().is_none_or(|h| *h == hex::encode(i.hash)))
            .map(|i| {
                let status = match (i.paid, i.expires_at <= now) {
                    (Some(_), _) => "paid",
                    (None, true) => "expired",
                    (None, false) => "unpaid",
                };
                let mut v = json!({
                    "label": i.label,
                    "bolt11": i.bolt11,
                    "payment_hash": hex::encode(i.hash),
                    "status": status,
                    "description": i.description,
                    "expires_at": i.expires_at,
                    "created_index": i.created_index,
                });
                if let Some(msat) = i.amount_msat {
                    v["amount_msat"] = json!(msat);
                }
                if let Some((paid_at, received)) = i.paid {
                    v["paid_at"] = json!(paid_at);
                    v["amount_received_msat"] = json!(received);
                    v["payment_preimage"] = json!(hex::encode(i.preimage));
                }
                v
            })
            .collect();
        Ok(Ok(json!({ "invoices": invoices })))
    }

    /// `pay bolt11 [amount_msat] [label] [riskfactor] [maxfeepercent] [retry_for] [maxdelay]
    /// [exemptfee] [localinvreqid] [exclude] [maxfee] [description] [partial_msat]` and
    /// `xpay invstring [amount_msat] [maxfee] [layers] [retry_for] [partial_msat] [maxdelay]
    /// [payer_note]`: both block until the payment is final.
    fn pay(&self, params: &Value, flavour: PayFlavour) -> Result<RpcResult, Value> {
        let p = Params::parse(params, flavour.names(), 1)?;
        let bolt11 = p.string(flavour.invoice_param())?.expect("required");
        let amount = p
            .get("amount_msat")
            .map(|v| parse_msat("amount_msat", v))
            .transpose()?;
        let invoice = Bolt11Invoice::from_str(bolt11.trim())
            .map_err(|e| rpc_err(codes::INVALID_PARAMS, format!("Invalid bolt11: {e}")))?;
        let hash = invoice.payment_hash().to_byte_array();
        let amount_msat = match (invoice.amount_milli_satoshis(), amount) {
            (Some(_), Some(_)) => {
                return Err(rpc_err(
                    codes::INVALID_PARAMS,
                    "amount_msat parameter unnecessary",
                ))
            }
            (None, None) => {
                return Err(rpc_err(
                    codes::INVALID_PARAMS,
                    "amount_msat parameter required",
                ))
            }
            (Some(msat), None) | (None, Some(msat)) => msat,
        };
        if invoice.would_expire(Duration::from_secs(now_secs())) {
            return Ok(Err(rpc_err(codes::PAY_INVOICE_EXPIRED, "Invoice expired")));
        }
        if let Some(done) = self.finished_pay(&hash) {
            return Ok(flavour.reply(&hash, &done));
        }
        self.start_pay(&invoice, &bolt11, hash, amount_msat, amount)?;
        let record = self.wait_final(&hash);
        Ok(flavour.reply(&hash, &record))
    }

    /// A payment for `hash` that already completed (a second pay returns its result).
    fn finished_pay(&self, hash: &[u8; 32]) -> Option<PayRecord> {
        let books = self.books.0.lock().unwrap();
        books
            .pays
            .get(hash)
            .filter(|r| matches!(r.outcome, Some(Ok(_))))
            .cloned()
    }

    fn start_pay(
        &self,
        invoice: &Bolt11Invoice,
        bolt11: &str,
        hash: [u8; 32],
        amount_msat: u64,
        amount_param: Option<u64>,
    ) -> Result<(), Value> {
        {
            let mut books = self.books.0.lock().unwrap();
            if books.pays.get(&hash).is_some_and(|r| r.outcome.is_none()) {
                return Err(rpc_err(
                    codes::PAY_IN_PROGRESS,
                    "Payment is still in progress",
                ));
            }
            books.next_index += 1;
            let record = PayRecord {
                bolt11: bolt11.to_string(),
                destination: invoice.get_payee_pub_key().to_string(),
                amount_msat,
                created_at: now_secs(),
                created_index: books.next_index,
                outcome: None,
            };
            books.pays.insert(hash, record);
        }
        let payments = self.node.bolt11_payment();
        let sent = match amount_param {
            Some(msat) => payments.send_using_amount(invoice, msat, None),
            None => payments.send(invoice, None),
        };
        if let Err(e) = sent {
            let code = match e {
                NodeError::PaymentSendingFailed => codes::PAY_ROUTE_NOT_FOUND,
                _ => codes::PAY_STOPPED_RETRYING,
            };
            let mut books = self.books.0.lock().unwrap();
            let message = format!("Ran out of routes to try: {e}");
            if let Some(r) = books.pays.get_mut(&hash) {
                r.outcome = Some(Err(message.clone()));
            }
            return Err(rpc_err(code, message));
        }
        Ok(())
    }

    fn wait_final(&self, hash: &[u8; 32]) -> PayRecord {
        let (lock, cvar) = &*self.books;
        let deadline = Instant::now() + PAY_WAIT;
        let mut books = lock.lock().unwrap();
        loop {
            let record = books.pays.get(hash).cloned().expect("recorded");
            let now = Instant::now();
            if record.outcome.is_some() || now >= deadline {
                return record;
            }
            books = cvar.wait_timeout(books, deadline - now).unwrap().0;
        }
    }

    /// `listpays [bolt11] [payment_hash] [status] [index] [start] [limit]`.
    fn listpays(&self, params: &Value) -> Result<RpcResult, Value> {
        let p = Params::parse(
            params,
            &[
                "bolt11",
                "payment_hash",
                "status",
                "index",
                "start",
                "limit",
            ],
            0,
        )?;
        let bolt11 = p.string("bolt11")?;
        let hash = p.string("payment_hash")?;
        let status = p.string("status")?;
        if let Some(s) = &status {
            if !["pending", "complete", "failed"].contains(&s.as_str()) {
                return Err(invalid("status", &json!(s), "pending, complete or failed"));
            }
        }
        let books = self.books.0.lock().unwrap();
        let mut pays: Vec<(&[u8; 32], &PayRecord)> = books.pays.iter().collect();
        pays.sort_by_key(|(_, r)| r.created_index);
        let listed: Vec<Value> = pays
            .into_iter()
            .filter(|(_, r)| bolt11.as_ref().is_none_or(|b| b.trim() == r.bolt11.trim()))
            .filter(|(h, _)| hash.as_ref().is_none_or(|x| *x == hex::encode(h)))
            .map(|(h, r)| listpays_entry(h, r))
            .filter(|v| status.as_ref().is_none_or(|s| v["status"] == s.as_str()))
            .collect();
        Ok(Ok(json!({ "pays": listed })))
    }

    /// `listpeerchannels [id] [short_channel_id] [channel_id]`.
    fn listpeerchannels(&self, params: &Value) -> Result<RpcResult, Value> {
        let p = Params::parse(params, &["id", "short_channel_id", "channel_id"], 0)?;
        let id = p.string("id")?;
        let connected: Vec<_> = self
            .node
            .list_peers()
            .into_iter()
            .filter(|p| p.is_connected)
            .map(|p| p.node_id)
            .collect();
        let channels: Vec<Value> = self
            .node
            .list_channels()
            .iter()
            .filter(|c| id.as_ref().is_none_or(|i| *i == c.counterparty_node_id.to_string()))
            .map(|c| {
                let mut v = json!({
                    "peer_id": c.counterparty_node_id.to_string(),
                    "peer_connected": connected.contains(&c.counterparty_node_id),
                    "state": if c.is_channel_ready { "CHANNELD_NORMAL" } else { "CHANNELD_AWAITING_LOCKIN" },
                    "opener": if c.is_outbound { "local" } else { "remote" },
                    "features": ["option_static_remotekey", "option_anchors"],
                    "channel_id": hex::encode(c.channel_id.0),
                    "private": !c.is_announced,
                    "total_msat": c.channel_value_sats * 1000,
                    "spendable_msat": c.next_outbound_htlc_limit_msat,
                    "receivable_msat": c.inbound_capacity_msat,
                    "to_us_msat": c.outbound_capacity_msat,
                });
                if let Some(scid) = c.short_channel_id {
                    v["short_channel_id"] = json!(format!(
                        "{}x{}x{}",
                        scid >> 40,
                        (scid >> 16) & 0xff_ffff,
                        scid & 0xffff
                    ));
                }
                if let Some(txo) = c.funding_txo {
                    v["funding_txid"] = json!(txo.txid.to_string());
                    v["funding_outnum"] = json!(txo.vout);
                }
                v
            })
            .collect();
        Ok(Ok(json!({ "channels": channels })))
    }
}

impl Drop for LightningdNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- harness LDK log (tail) ---\n{}", self.log_tail(40));
        }
        self.stop();
    }
}

fn host_port(address: &SocketAddress) -> (String, u16) {
    match address {
        SocketAddress::TcpIpV4 { addr, port } => {
            (std::net::Ipv4Addr::from(*addr).to_string(), *port)
        }
        other => {
            let text = other.to_string();
            let (host, port) = text.rsplit_once(':').expect("host:port");
            (host.to_string(), port.parse().expect("port"))
        }
    }
}

fn listpays_entry(hash: &[u8; 32], r: &PayRecord) -> Value {
    let mut v = json!({
        "payment_hash": hex::encode(hash),
        "bolt11": r.bolt11,
        "destination": r.destination,
        "created_at": r.created_at,
        "created_index": r.created_index,
        "amount_msat": r.amount_msat,
        "number_of_parts": 1,
    });
    match &r.outcome {
        None => v["status"] = json!("pending"),
        Some(Ok(paid)) => {
            v["status"] = json!("complete");
            v["preimage"] = json!(hex::encode(paid.preimage));
            v["amount_sent_msat"] = json!(r.amount_msat + paid.fee_msat);
            v["completed_at"] = json!(paid.completed_at);
        }
        Some(Err(_)) => v["status"] = json!("failed"),
    }
    v
}

/// Which of lightningd's two pay commands.
#[derive(Debug, Clone, Copy)]
enum PayFlavour {
    Pay,
    Xpay,
}

impl PayFlavour {
    fn names(self) -> &'static [&'static str] {
        match self {
            PayFlavour::Pay => &[
                "bolt11",
                "amount_msat",
                "label",
                "riskfactor",
                "maxfeepercent",
                "retry_for",
                "maxdelay",
                "exemptfee",
                "localinvreqid",
                "exclude",
                "maxfee",
                "description",
                "partial_msat",
            ],
            PayFlavour::Xpay => &[
                "invstring",
                "amount_msat",
                "maxfee",
                "layers",
                "retry_for",
                "partial_msat",
                "maxdelay",
                "payer_note",
            ],
        }
    }

    fn invoice_param(self) -> &'static str {
        self.names()[0]
    }

    /// lightningd's reply for a final (or still pending after the wait) payment.
    fn reply(self, hash: &[u8; 32], r: &PayRecord) -> RpcResult {
        match &r.outcome {
            Some(Ok(paid)) => Ok(match self {
                PayFlavour::Pay => json!({
                    "destination": r.destination,
                    "payment_hash": hex::encode(hash),
                    "created_at": r.created_at as f64,
                    "parts": 1,
                    "amount_msat": r.amount_msat,
                    "amount_sent_msat": r.amount_msat + paid.fee_msat,
                    "payment_preimage": hex::encode(paid.preimage),
                    "status": "complete",
                }),
                PayFlavour::Xpay => json!({
                    "payment_preimage": hex::encode(paid.preimage),
                    "failed_parts": 0,
                    "successful_parts": 1,
                    "amount_msat": r.amount_msat,
                    "amount_sent_msat": r.amount_msat + paid.fee_msat,
                }),
            }),
            Some(Err(reason)) => Err(rpc_err(codes::PAY_STOPPED_RETRYING, reason.clone())),
            None => Err(rpc_err(
                codes::PAY_IN_PROGRESS,
                "Payment is still in progress",
            )),
        }
    }
}

/// Handles one LDK event: claims invoices with their stored preimage, records outcomes.
fn on_event(node: &Node, books: &Arc<(Mutex<Books>, Condvar)>, event: &Event) {
    let mut books = books.0.lock().unwrap();
    match event {
        Event::PaymentClaimable {
            payment_hash,
            claimable_amount_msat,
            ..
        } => {
            let invoice = books.invoices.iter_mut().find(|i| i.hash == payment_hash.0);
            let payments = node.bolt11_payment();
            match invoice {
                Some(i) if i.amount_msat.unwrap_or(0) <= *claimable_amount_msat => {
                    let claimed = payments.claim_for_hash(
                        *payment_hash,
                        *claimable_amount_msat,
                        PaymentPreimage(i.preimage),
                    );
                    // lightningd marks an invoice paid when it releases the preimage, before
                    // the payer can learn it.
                    if claimed.is_ok() {
                        i.paid = Some((now_secs(), *claimable_amount_msat));
                    }
                }
                _ => {
                    let _ = payments.fail_for_hash(*payment_hash);
                }
            }
        }
        Event::PaymentReceived {
            payment_hash,
            amount_msat,
            ..
        } => {
            if let Some(i) = books.invoices.iter_mut().find(|i| i.hash == payment_hash.0) {
                i.paid = Some((now_secs(), *amount_msat));
            }
        }
        Event::PaymentSuccessful {
            payment_hash,
            payment_preimage,
            fee_paid_msat,
            ..
        } => {
            if let (Some(r), Some(preimage)) =
                (books.pays.get_mut(&payment_hash.0), payment_preimage)
            {
                r.outcome = Some(Ok(PaidRecord {
                    preimage: preimage.0,
                    fee_msat: fee_paid_msat.unwrap_or(0),
                    completed_at: now_secs(),
                }));
            }
        }
        Event::PaymentFailed {
            payment_hash: Some(hash),
            reason,
            ..
        } => {
            if let Some(r) = books.pays.get_mut(&hash.0) {
                r.outcome = Some(Err(format!(
                    "Ran out of routes to try after 1 attempt: {reason:?}"
                )));
            }
        }
        _ => {}
    }
}

/// A request's parameters, by name or by position in lightningd's order.
struct Params<'a> {
    values: HashMap<&'static str, &'a Value>,
}

impl<'a> Params<'a> {
    /// Refuses unknown names, surplus positions, a `params` that is neither and a missing
    /// one of the first `required` names (lightningd's required parameters lead).
    fn parse(
        params: &'a Value,
        names: &'static [&'static str],
        required: usize,
    ) -> Result<Self, Value> {
        let mut values = HashMap::new();
        match params {
            Value::Null => {}
            Value::Array(list) => {
                if list.len() > names.len() {
                    return Err(rpc_err(
                        codes::INVALID_PARAMS,
                        format!(
                            "too many parameters: got {}, expected at most {}",
                            list.len(),
                            names.len()
                        ),
                    ));
                }
                for (name, value) in names.iter().zip(list) {
                    if !value.is_null() {
                        values.insert(*name, value);
                    }
                }
            }
            Value::Object(map) => {
                for (key, value) in map {
                    let name = names.iter().find(|n| **n == key).ok_or_else(|| {
                        rpc_err(codes::INVALID_PARAMS, format!("unknown parameter: {key}"))
                    })?;
                    if !value.is_null() {
                        values.insert(*name, value);
                    }
                }
            }
            other => {
                return Err(rpc_err(
                    codes::INVALID_PARAMS,
                    format!("Expected array or object for params, got {other}"),
                ))
            }
        }
        let parsed = Params { values };
        for name in &names[..required] {
            parsed.required(name)?;
        }
        Ok(parsed)
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.values.get(name).copied()
    }

    fn required(&self, name: &str) -> Result<&'a Value, Value> {
        self.get(name).ok_or_else(|| {
            rpc_err(
                codes::INVALID_PARAMS,
                format!("missing required parameter: {name}"),
            )
        })
    }

    fn string(&self, name: &str) -> Result<Option<String>, Value> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(invalid(name, other, "a string")),
        }
    }

    fn u64(&self, name: &str) -> Result<Option<u64>, Value> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .map(Some)
                .ok_or_else(|| invalid(name, v, "an unsigned integer")),
        }
    }
}

fn invalid(name: &str, value: &Value, expected: &str) -> Value {
    rpc_err(
        codes::INVALID_PARAMS,
        format!("{name}: should be {expected}: invalid token '{value}'"),
    )
}

fn invalid_text(name: &str, e: impl std::fmt::Display) -> Value {
    rpc_err(codes::INVALID_PARAMS, format!("{name}: {e}"))
}

/// lightningd's msat amounts: a number (msat) or a string "N", "Nmsat" or "Nsat".
fn parse_msat(name: &str, value: &Value) -> Result<u64, Value> {
    let bad = || invalid(name, value, "a millisatoshi amount");
    match value {
        Value::Number(n) => n.as_u64().ok_or_else(bad),
        Value::String(s) => {
            if let Some(msat) = s.strip_suffix("msat") {
                msat.parse().map_err(|_| bad())
            } else if let Some(sat) = s.strip_suffix("sat") {
                sat.parse::<u64>()
                    .ok()
                    .and_then(|s| s.checked_mul(1000))
                    .ok_or_else(bad)
            } else {
                s.parse().map_err(|_| bad())
            }
        }
        _ => Err(bad()),
    }
}

/// One call to a lightningd JSON-RPC socket (ours or a real one) with raw JSON params, as
/// `lightning-cli` sends it: Ok(result) or Err(error object).
pub fn lightningd_call(socket: &std::path::Path, method: &str, params: Value) -> RpcResult {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).expect("lightning-rpc");
    let request = json!({"jsonrpc": "2.0", "id": format!("cli:{method}#1"), "method": method, "params": params});
    stream
        .write_all(request.to_string().as_bytes())
        .expect("write request");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let n = stream.read(&mut chunk).expect("read reply");
        assert!(n > 0, "lightning-rpc closed without a reply to {method}");
        buf.extend_from_slice(&chunk[..n]);
        if let Ok(reply) = serde_json::from_slice::<Value>(buf.trim_ascii()) {
            assert_eq!(reply["jsonrpc"], "2.0", "{reply}");
            return match (reply.get("result"), reply.get("error")) {
                (Some(result), None) => Ok(result.clone()),
                (None, Some(error)) => Err(error.clone()),
                _ => panic!("malformed reply {reply}"),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_by_name_or_position() {
        let names: &[&str] = &[
            "bolt11",
            "payment_hash",
            "status",
            "index",
            "start",
            "limit",
        ];
        let named = json!({"payment_hash": "ab", "status": "complete"});
        let p = Params::parse(&named, names, 0).unwrap();
        assert_eq!(p.string("payment_hash").unwrap().as_deref(), Some("ab"));
        let positional = json!([null, "ab"]);
        let p = Params::parse(&positional, names, 0).unwrap();
        assert_eq!(p.string("payment_hash").unwrap().as_deref(), Some("ab"));
        assert!(Params::parse(&json!({"nope": 1}), names, 0).is_err());
        assert!(Params::parse(&json!([1, 2, 3, 4, 5, 6, 7]), names, 0).is_err());
        let invoice: &[&str] = &["amount_msat", "label", "description", "expiry"];
        assert!(Params::parse(&json!({"amount_msat": 1, "label": "x"}), invoice, 3).is_err());
        assert!(Params::parse(&json!([1, "x", "d"]), invoice, 3).is_ok());
    }

    #[test]
    fn amounts_as_lightningd_takes_them() {
        assert_eq!(parse_msat("a", &json!(1500)).unwrap(), 1500);
        assert_eq!(parse_msat("a", &json!("1500msat")).unwrap(), 1500);
        assert_eq!(parse_msat("a", &json!("2sat")).unwrap(), 2000);
        assert_eq!(parse_msat("a", &json!("7")).unwrap(), 7);
        assert!(parse_msat("a", &json!("x")).is_err());
        assert!(parse_msat("a", &json!(-1)).is_err());
    }
}
