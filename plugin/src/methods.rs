//! The `dstore-*` RPC methods: their table (names, parameters, help) and their handlers.
//!
//! Parameters arrive positionally or by name, and — because bitcoin-cli only knows how to
//! convert arguments of bitcoind's own methods — often as strings ("0.5" for an amount),
//! so every numeric parameter also accepts its decimal string.

use std::sync::Arc;

use bdk_wallet::bitcoin::{Amount, Denomination, FeeRate};
use serde_json::{json, Value};

use crate::app::App;
use crate::contracts;
use crate::jsonrpc::{code, RpcError};
use crate::wallet::{PluginWallet, Unspent, WalletError};

/// One parameter of a method.
#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    pub name: &'static str,
    pub required: bool,
    pub description: &'static str,
}

/// One `dstore-*` method.
#[derive(Debug, Clone, Copy)]
pub struct MethodSpec {
    pub name: &'static str,
    pub params: &'static [ParamSpec],
    pub description: &'static str,
}

impl MethodSpec {
    /// `name required [optional]`, as bitcoind's help lists a method.
    pub fn usage(&self) -> String {
        let mut usage = self.name.to_string();
        for p in self.params {
            if p.required {
                usage.push_str(&format!(" \"{}\"", p.name));
            } else {
                usage.push_str(&format!(" ( \"{}\" )", p.name));
            }
        }
        usage
    }

    /// The full help text for `help <method>`.
    pub fn help(&self) -> String {
        let mut text = format!("{}\n\n{}\n", self.usage(), self.description);
        if !self.params.is_empty() {
            text.push_str("\nArguments:\n");
            for (i, p) in self.params.iter().enumerate() {
                let need = if p.required { "required" } else { "optional" };
                text.push_str(&format!(
                    "{}. {} ({need}) {}\n",
                    i + 1,
                    p.name,
                    p.description
                ));
            }
        }
        text
    }
}

const fn param(name: &'static str, required: bool, description: &'static str) -> ParamSpec {
    ParamSpec {
        name,
        required,
        description,
    }
}

/// Every `dstore-*` method this plugin serves.
pub const METHODS: &[MethodSpec] = &[
    MethodSpec {
        name: "dstore-getinfo",
        params: &[],
        description: "Returns the plugin's version, network, bitcoind's block height, the wallet balance (BTC) and the enabled roles.",
    },
    MethodSpec {
        name: "dstore-help",
        params: &[param("command", false, "the dstore method to describe")],
        description: "Lists the dstore methods, or describes one.",
    },
    MethodSpec {
        name: "dstore-getnewaddress",
        params: &[],
        description: "Returns a new receive address (P2WPKH) of the plugin's wallet.",
    },
    MethodSpec {
        name: "dstore-getbalance",
        params: &[],
        description: "Returns the wallet's spendable balance in BTC: confirmed mature coins plus its own unconfirmed change.",
    },
    MethodSpec {
        name: "dstore-listunspent",
        params: &[],
        description: "Lists the wallet's unspent outputs, confirmed or not.",
    },
    MethodSpec {
        name: "dstore-send",
        params: &[
            param("address", true, "the address to pay"),
            param("amount_btc", true, "the amount in BTC"),
            param("fee_rate", false, "fee rate in sat/vB (default: bitcoind's estimate)"),
        ],
        description: "Pays an amount from the plugin's wallet and returns the txid.",
    },
    MethodSpec {
        name: "dstore-open",
        params: &[
            param("farmer_peer_url", true, "the farmer's peer endpoint, http://host:port"),
            param("file_path", true, "the file to store (read by the plugin)"),
            param("download_price_sat", false, "price of each download in satoshis (default: the farmer's price)"),
            param("audits", false, "number of paid storage audits N (default 0: no audit contract)"),
            param("audit_period_blocks", false, "blocks between audits P (default 144)"),
            param("audit_amount_sat", false, "satoshis paid to the farmer per passed audit A (default 10000)"),
            param("wait_seconds", false, "with audits: wait up to this many seconds for the audit setup to end (default: return once it only waits for TX_A's confirmations)"),
            param("shards", false, "N: store the file as N erasure-coded shards, each an ordinary contract with its own farmer (at most 32; farmer_peer_url then lists N comma-separated farmers, or auto)"),
            param("needed", false, "K: shards needed to read the file back (1 to N; required with shards)"),
        ],
        description: "Stores a file with a farmer: key exchange, encryption, resumable upload and the farmer's signed receipt. With audits > 0 it also sets up, signs and funds (TX_A from the wallet) the audit contract: the farmer is paid A for each passed audit, one every P blocks, and the renter gets the rest back if an audit fails. TX_A also pays the farmer a stake (A/8 rounded up, at least 330 sat: the farmer's in every case, a set-up fee) and must have the farmer's confirmations before the coin toss; that part of the setup goes on in the background (also after a restart). Returns the contract id once done; with audits, once the setup only waits for TX_A's confirmations it returns {status: \"waiting\", contract_id, phase, waiting_for, funding_txid, stake_sat}, or after wait_seconds {status: \"running\" or \"waiting\", ...}. Errors before TX_A is broadcast are returned and move no money. dstore-status shows progress meanwhile (audits.phase, audits.waiting_for, audits.stake_sat, audits.error). With shards=N needed=K the file is encrypted once, cut into N Reed-Solomon shards of which any K rebuild it, and each shard is stored as its own contract (N farmers, opened in parallel, resumed after a restart); it returns {file_id, needed, total, shards: [{index, farmer, contract_id, state}]}.",
    },
    MethodSpec {
        name: "dstore-download",
        params: &[
            param("contract_id", true, "the contract id dstore-open returned"),
            param("output_path", true, "where to write the file (written only if it checks out)"),
            param("wait_seconds", false, "wait up to this many seconds for the download to finish (default: return once it only waits for the chain)"),
            param("mode", false, "how the download is paid: ln (mode N, over Lightning), chain (mode L) or auto (default: ln when both sides have Lightning and the price looks routable, else chain)"),
        ],
        description: "Buys one download through the mode-L chain (TX1 from the plugin wallet, TX2, Groth16 proof, TX3), then unseals, decrypts and checks the file against root_C. The download runs in the background: once it only waits for the chain (TX1's confirmations, then the farmer's TX2) the call returns {status: \"waiting\", download_id, phase, waiting_for}, or after wait_seconds {status: \"running\" or \"waiting\", ...}; it goes on by itself, also after a restart, and dstore-status shows it. Calling dstore-download again on the contract then waits for that download (up to wait_seconds) or returns its outcome, without paying twice; once its outcome was returned, the next call buys a new download. A finished download returns {status: \"done\", output, bytes, tx1, tx2, tx3}. Given a file id (dstore-open with shards) it downloads K shards in parallel, each through its own mode-L chain (a shard whose download fails is replaced by another), decodes and decrypts them and checks C's root before the output is written; same reply shapes, with the shards used. With mode ln (or auto when this plugin has Lightning, the farmer advertises a node and the price looks routable) a contract's download is paid over Lightning instead (mode N): the sealed copy is checked against root_E and the invoice against the farmer's signed transcript before paying, no transaction goes on the chain, and it returns {status: \"done\", mode: \"ln\", output, bytes, payment_hash, fee_msat, price_msat}; a payment still pending after the wait returns {status: \"waiting\", waiting_for: \"lightning payment\"}; a failed payment ends the download as failed with nothing paid (dstore-status says why). Mode-L replies carry mode: \"chain\".",
    },
    MethodSpec {
        name: "dstore-repair",
        params: &[
            param("file_id", true, "a file id dstore-open returned (shards=N)"),
            param("farmer_urls", false, "comma-separated peer URLs of new farmers for the lost shards, or auto (default: auto)"),
            param("wait_seconds", false, "wait up to this many seconds (default: return once it only waits for the chain)"),
        ],
        description: "Checks every shard of a file (farmer reachable, not burned, no failed audit) and downloads every shard that looks healthy (paid; a farmer that lost its copy shows up here), rebuilds the unhealthy shards from K of them and stores them with new farmers (none already holding a shard of the file); the file record moves to the new contracts. Runs in the background like dstore-download (status running/waiting; call again to wait for it); finished: {status: \"done\", repaired: [{index, old_farmer, old_contract_id, reason, farmer, contract_id}], healthy, total}.",
    },
    MethodSpec {
        name: "dstore-status",
        params: &[param("contract_id", true, "a contract id")],
        description: "Shows a contract: phase, bytes done and total of the running operation, downloads and their transactions. Given a file id (dstore-open with shards), shows the file and each shard's health: farmer, contract phase, last audit, reachable, burned.",
    },
    MethodSpec {
        name: "dstore-list",
        params: &[],
        description: "Lists the contracts this plugin rents and (as a farmer) stores, then the files stored as shards (kind \"file\"); a shard's contract names its file_id and shard index.",
    },
    MethodSpec {
        name: "dstore-refund",
        params: &[param("contract_id", true, "a contract id")],
        description: "Broadcasts whatever refund of a stuck download is due now (TX1 after T1, TX2 after Δ), or says when it will be.",
    },
    MethodSpec {
        name: "dstore-verify-fraud",
        params: &[param("file", true, "a fraud proof file written by dstore-download")],
        description: "Checks a fraud proof: the farmer signed a receipt for C and a sealed copy E that does not unseal to C.",
    },
    MethodSpec {
        name: "dstore-announce",
        params: &[
            param("peer_url", true, "the farmer's peer endpoint to announce, http(s)://host:port (at most 39 bytes)"),
            param("bond_amount_btc", true, "the fidelity bond, in BTC, locked until bond_locktime"),
            param("bond_locktime", true, "nLockTime of the bond: a block height (below 500000000) or a unix time"),
        ],
        description: "Farmer: announces this farmer on the chain with one transaction from the wallet: a fidelity bond wsh(and_v(v:pk(B),after(L))) with B derived from the identity key, and an OP_RETURN naming the identity and the peer URL. A later announcement supersedes; spending the bond withdraws it.",
    },
    MethodSpec {
        name: "dstore-unbond",
        params: &[
            param("bond_outpoint", false, "txid:vout of the bond (default: the only unspent one)"),
            param("address", false, "where to send the coins (default: a new wallet address)"),
        ],
        description: "Farmer: spends a fidelity bond of this farmer once its locktime has passed, which withdraws the announcement it backs.",
    },
    MethodSpec {
        name: "dstore-farmers",
        params: &[param("sort", false, "score (default), price or bond")],
        description: "Lists the farmers the market scanner found on the chain: bond and its value, URL, signed advert, audits passed and failed, downloads served and refunded, burned (a verified fraud proof), and the score dstore-open auto ranks them by.",
    },
    MethodSpec {
        name: "dstore-publish-fraud",
        params: &[
            param("file", true, "a fraud proof file written by dstore-download"),
            param("farmer_urls", false, "comma-separated peer URLs to post it to (default: every farmer the market knows)"),
        ],
        description: "Verifies a fraud proof and posts it to farmers' evidence boards (POST /dstore/v1/evidence); the accused farmer is marked burned.",
    },
    MethodSpec {
        name: "dstore-ln-getinfo",
        params: &[],
        description: "Lightning (--lightning): the embedded node's id, peer addresses, network, the block its wallet is synced to, its channels (all and usable) and its balances: on-chain (onchain_sat, spendable_onchain_sat) and in channels (lightning_sat).",
    },
    MethodSpec {
        name: "dstore-ln-newaddress",
        params: &[],
        description: "Lightning: a new address of the embedded node's own on-chain wallet (it funds channels; separate from the plugin wallet). Returns {address}.",
    },
    MethodSpec {
        name: "dstore-ln-connect",
        params: &[param("peer", true, "the peer as node_id@host:port")],
        description: "Lightning: connects the embedded node to a peer (and reconnects after restarts).",
    },
    MethodSpec {
        name: "dstore-ln-openchannel",
        params: &[
            param("node_id", true, "the peer's node id, or node_id@host:port to connect first"),
            param("amount_sat", true, "the channel's capacity in satoshis, from the Lightning wallet"),
            param("push_sat", false, "satoshis given to the peer at opening (default 0)"),
            param("announce", false, "true: an announced (public) channel that the peer and this node forward payments over; default false, a private channel (enough for paying a farmer directly)"),
        ],
        description: "Lightning: opens a channel from the embedded node's on-chain wallet (which also keeps a 25000 sat anchor reserve; so must the peer's, if it is an LDK node). Returns {channel_id, user_channel_id, funding_txid} once the funding transaction is broadcast; the channel is usable after 6 confirmations (dstore-ln-listchannels: is_usable).",
    },
    MethodSpec {
        name: "dstore-ln-listchannels",
        params: &[],
        description: "Lightning: the embedded node's channels: [{channel_id, user_channel_id, counterparty_node_id, capacity_sat, outbound_msat, inbound_msat, is_channel_ready, is_usable, funding_txid}].",
    },
    MethodSpec {
        name: "dstore-ln-closechannel",
        params: &[param("channel_id", true, "the channel id (hex) or user channel id from dstore-ln-listchannels")],
        description: "Lightning: closes a channel cooperatively; the funds return to the Lightning wallet once the closing transaction confirms.",
    },
    MethodSpec {
        name: "dstore-stop",
        params: &[],
        description: "Stops dstore-plugin (bitcoind keeps running; `stop` is forwarded to bitcoind).",
    },
];

/// Looks a method up by name.
pub fn find(name: &str) -> Option<&'static MethodSpec> {
    METHODS.iter().find(|m| m.name == name)
}

/// True for the methods the plugin answers itself instead of forwarding to bitcoind.
pub fn is_local(method: &str) -> bool {
    method.starts_with("dstore-") || method == "help"
}

/// Runs a local method.
pub async fn dispatch(app: &Arc<App>, method: &str, params: &Value) -> Result<Value, RpcError> {
    if method == "help" {
        return help(app, params).await;
    }
    let spec =
        find(method).ok_or_else(|| RpcError::new(code::METHOD_NOT_FOUND, "Method not found"))?;
    let args = Params::bind(spec, params)?;
    match spec.name {
        "dstore-getinfo" => getinfo(app).await,
        "dstore-help" => dstore_help(args.string(0)?),
        "dstore-getnewaddress" => {
            with_wallet(app, |w| Ok(json!(w.new_address()?.to_string()))).await
        }
        "dstore-getbalance" => {
            with_wallet(app, |w| Ok(btc(w.balance()?.trusted_spendable()))).await
        }
        "dstore-listunspent" => with_wallet(app, |w| Ok(unspent_json(&w.list_unspent()?))).await,
        "dstore-send" => send(app, &args).await,
        "dstore-open" => contracts::open(app, &args).await,
        "dstore-download" => contracts::download(app, &args).await,
        "dstore-status" => contracts::status(app, &args).await,
        "dstore-list" => contracts::list(app),
        "dstore-refund" => contracts::refund(app, &args).await,
        "dstore-repair" => contracts::repair(app, &args).await,
        "dstore-verify-fraud" => contracts::verify_fraud(&args).await,
        "dstore-announce" => crate::market::announce::announce(app, &args).await,
        "dstore-unbond" => crate::market::announce::unbond(app, &args).await,
        "dstore-farmers" => crate::market::methods::farmers(app, &args).await,
        "dstore-publish-fraud" => crate::market::evidence::publish_fraud(app, &args).await,
        "dstore-ln-getinfo" => crate::ln::methods::getinfo(app).await,
        "dstore-ln-newaddress" => crate::ln::methods::new_address(app).await,
        "dstore-ln-connect" => crate::ln::methods::connect(app, &args).await,
        "dstore-ln-openchannel" => crate::ln::methods::open_channel(app, &args).await,
        "dstore-ln-listchannels" => crate::ln::methods::list_channels(app).await,
        "dstore-ln-closechannel" => crate::ln::methods::close_channel(app, &args).await,
        "dstore-stop" => {
            app.request_shutdown();
            Ok(json!("dstore-plugin stopping"))
        }
        _ => Err(RpcError::new(code::METHOD_NOT_FOUND, "Method not found")),
    }
}

async fn getinfo(app: &Arc<App>) -> Result<Value, RpcError> {
    let blocks = app
        .bitcoind
        .call("getblockcount", json!([]))
        .await
        .map_err(|e| e.to_rpc_error())?;
    let balance = with_wallet(app, |w| Ok(btc(w.balance()?.trusted_spendable()))).await?;
    Ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "network": app.config.network.name(),
        "blocks": blocks,
        "balance": balance,
        "roles": app.roles(),
        "watchtower": app.config.watchtower.as_ref().map(|t| t.url.as_str()),
    }))
}

fn dstore_help(command: Option<String>) -> Result<Value, RpcError> {
    match command {
        None => Ok(json!(dstore_section())),
        Some(name) => find(&name).map(|spec| json!(spec.help())).ok_or_else(|| {
            RpcError::new(code::MISC_ERROR, format!("help: unknown command: {name}"))
        }),
    }
}

/// The `== Dstore ==` block appended to bitcoind's `help`.
fn dstore_section() -> String {
    let mut text = String::from("== Dstore ==\n");
    for spec in METHODS {
        text.push_str(&spec.usage());
        text.push('\n');
    }
    text.trim_end().to_string()
}

/// `help` lists bitcoind's methods and then dstore's; `help dstore-x` describes a dstore
/// method; anything else is bitcoind's own help.
async fn help(app: &Arc<App>, params: &Value) -> Result<Value, RpcError> {
    let command = match params {
        Value::Array(items) => items.first().cloned(),
        Value::Object(map) => map.get("command").cloned(),
        _ => None,
    };
    if let Some(Value::String(name)) = &command {
        if name.starts_with("dstore-") {
            return dstore_help(Some(name.clone()));
        }
    }
    let core = app
        .bitcoind
        .call("help", params.clone())
        .await
        .map_err(|e| e.to_rpc_error())?;
    match (command, core) {
        (None, Value::String(text)) => Ok(json!(format!("{text}\n\n{}", dstore_section()))),
        (_, other) => Ok(other),
    }
}

async fn send(app: &Arc<App>, args: &Params<'_>) -> Result<Value, RpcError> {
    let address = args.required_string(0)?;
    let amount = args.amount_btc(1)?;
    if amount == Amount::ZERO {
        return Err(RpcError::new(code::TYPE_ERROR, "Invalid amount for send"));
    }
    let fee_rate = args.fee_rate(2)?;
    with_wallet(app, move |w| {
        Ok(json!(w.send(&address, amount, fee_rate)?.to_string()))
    })
    .await
}

/// Runs a blocking wallet operation on tokio's blocking pool.
async fn with_wallet<F>(app: &Arc<App>, op: F) -> Result<Value, RpcError>
where
    F: FnOnce(&PluginWallet) -> Result<Value, WalletError> + Send + 'static,
{
    let wallet = app.wallet.clone();
    tokio::task::spawn_blocking(move || op(&wallet))
        .await
        .map_err(|e| RpcError::new(code::INTERNAL_ERROR, format!("wallet task failed: {e}")))?
        .map_err(wallet_error)
}

fn wallet_error(e: WalletError) -> RpcError {
    let code = match &e {
        WalletError::WrongNetwork(_) => code::INVALID_ADDRESS_OR_KEY,
        WalletError::InsufficientFunds(_) => code::WALLET_INSUFFICIENT_FUNDS,
        WalletError::Rpc(_) => code::CLIENT_NOT_CONNECTED,
        _ => code::WALLET_ERROR,
    };
    RpcError::new(code, e.to_string())
}

fn btc(amount: Amount) -> Value {
    json!(amount.to_btc())
}

fn unspent_json(unspent: &[Unspent]) -> Value {
    Value::Array(
        unspent
            .iter()
            .map(|u| {
                json!({
                    "txid": u.output.outpoint.txid.to_string(),
                    "vout": u.output.outpoint.vout,
                    "address": u.address.as_ref().map(|a| a.to_string()),
                    "scriptPubKey": u.output.txout.script_pubkey.to_hex_string(),
                    "amount": u.output.txout.value.to_btc(),
                    "confirmations": u.confirmations,
                    "change": u.output.keychain == bdk_wallet::KeychainKind::Internal,
                })
            })
            .collect(),
    )
}

/// A method's parameters, bound by position or by name to its [`MethodSpec`].
pub(crate) struct Params<'a> {
    spec: &'static MethodSpec,
    values: Vec<Option<&'a Value>>,
}

impl<'a> Params<'a> {
    fn bind(spec: &'static MethodSpec, params: &'a Value) -> Result<Self, RpcError> {
        let values: Vec<Option<&Value>> = match params {
            Value::Array(items) => {
                if items.len() > spec.params.len() {
                    return Err(usage_error(spec));
                }
                (0..spec.params.len()).map(|i| items.get(i)).collect()
            }
            Value::Object(map) => {
                if let Some(unknown) = map
                    .keys()
                    .find(|k| !spec.params.iter().any(|p| p.name == *k))
                {
                    return Err(RpcError::new(
                        code::INVALID_PARAMETER,
                        format!("Unknown named parameter {unknown}"),
                    ));
                }
                spec.params.iter().map(|p| map.get(p.name)).collect()
            }
            _ => return Err(usage_error(spec)),
        };
        let values: Vec<Option<&Value>> = values
            .into_iter()
            .map(|v| v.filter(|v| !v.is_null()))
            .collect();
        if spec
            .params
            .iter()
            .zip(&values)
            .any(|(p, v)| p.required && v.is_none())
        {
            return Err(usage_error(spec));
        }
        Ok(Params { spec, values })
    }

    fn get(&self, i: usize) -> Option<&'a Value> {
        self.values.get(i).copied().flatten()
    }

    fn name(&self, i: usize) -> &'static str {
        self.spec.params.get(i).map(|p| p.name).unwrap_or("?")
    }

    pub(crate) fn string(&self, i: usize) -> Result<Option<String>, RpcError> {
        match self.get(i) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(type_error(self.name(i), "a string")),
        }
    }

    /// A boolean given as JSON true/false or, as bitcoin-cli sends unknown methods' arguments,
    /// the text "true"/"false" (or "1"/"0").
    pub(crate) fn boolean(&self, i: usize) -> Result<Option<bool>, RpcError> {
        match self.get(i) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if s == "true" || s == "1" => Ok(Some(true)),
            Some(Value::String(s)) if s == "false" || s == "0" => Ok(Some(false)),
            Some(_) => Err(type_error(self.name(i), "true or false")),
        }
    }

    pub(crate) fn required_string(&self, i: usize) -> Result<String, RpcError> {
        self.string(i)?.ok_or_else(|| usage_error(self.spec))
    }

    /// A number or a decimal string, as text (so amounts are parsed exactly).
    pub(crate) fn decimal_text(&self, i: usize) -> Result<Option<String>, RpcError> {
        match self.get(i) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
            Some(_) => Err(type_error(self.name(i), "a number")),
        }
    }

    fn amount_btc(&self, i: usize) -> Result<Amount, RpcError> {
        let text = self
            .decimal_text(i)?
            .ok_or_else(|| usage_error(self.spec))?;
        Amount::from_str_in(&text, Denomination::Bitcoin)
            .map_err(|e| RpcError::new(code::TYPE_ERROR, format!("Invalid amount '{text}': {e}")))
    }

    fn fee_rate(&self, i: usize) -> Result<Option<FeeRate>, RpcError> {
        let Some(text) = self.decimal_text(i)? else {
            return Ok(None);
        };
        let sat_per_vb: f64 = text
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v >= 1.0 && *v <= 100_000.0)
            .ok_or_else(|| {
                RpcError::new(
                    code::INVALID_PARAMETER,
                    format!("Invalid fee_rate '{text}' (sat/vB, 1 to 100000)"),
                )
            })?;
        Ok(Some(FeeRate::from_sat_per_kwu(
            (sat_per_vb * 250.0).round() as u64,
        )))
    }
}

fn usage_error(spec: &MethodSpec) -> RpcError {
    RpcError::new(code::MISC_ERROR, spec.help())
}

fn type_error(name: &str, expected: &str) -> RpcError {
    RpcError::new(code::TYPE_ERROR, format!("{name} must be {expected}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_spec() -> &'static MethodSpec {
        find("dstore-send").unwrap()
    }

    #[test]
    fn every_method_is_dstore_prefixed_and_unique() {
        for (i, m) in METHODS.iter().enumerate() {
            assert!(m.name.starts_with("dstore-"));
            assert!(METHODS[i + 1..].iter().all(|o| o.name != m.name));
        }
    }

    #[test]
    fn usage_marks_optional_params() {
        assert_eq!(
            send_spec().usage(),
            r#"dstore-send "address" "amount_btc" ( "fee_rate" )"#
        );
    }

    #[test]
    fn positional_and_named_params_bind_alike() {
        let positional = json!(["bcrt1q", "0.5"]);
        let named = json!({"address": "bcrt1q", "amount_btc": 0.5});
        for params in [&positional, &named] {
            let p = Params::bind(send_spec(), params).unwrap();
            assert_eq!(p.required_string(0).unwrap(), "bcrt1q");
            assert_eq!(p.amount_btc(1).unwrap(), Amount::from_sat(50_000_000));
            assert_eq!(p.fee_rate(2).unwrap(), None);
        }
    }

    #[test]
    fn bad_params_are_rejected() {
        assert!(
            Params::bind(send_spec(), &json!(["a"])).is_err(),
            "missing amount"
        );
        assert!(
            Params::bind(send_spec(), &json!(["a", 1, 2, 3])).is_err(),
            "too many"
        );
        let err = Params::bind(
            send_spec(),
            &json!({"address": "a", "amount_btc": 1, "x": 1}),
        )
        .err()
        .unwrap();
        assert_eq!(err.code, code::INVALID_PARAMETER);
        let sub_satoshi = json!(["a", "1.123456789"]);
        let p = Params::bind(send_spec(), &sub_satoshi).unwrap();
        assert_eq!(p.amount_btc(1).unwrap_err().code, code::TYPE_ERROR);
        let array_amount = json!(["a", [1]]);
        let p = Params::bind(send_spec(), &array_amount).unwrap();
        assert_eq!(p.amount_btc(1).unwrap_err().code, code::TYPE_ERROR);
        let nan_fee = json!(["a", 1, "nan"]);
        let p = Params::bind(send_spec(), &nan_fee).unwrap();
        assert_eq!(p.fee_rate(2).unwrap_err().code, code::INVALID_PARAMETER);
    }
}
