//! The farmer's announcement and fidelity bond: `dstore-announce` (one wallet transaction:
//! the bond `wsh(and_v(v:pk(B),after(L)))` at output 0, the `DSA` OP_RETURN at output 1)
//! and `dstore-unbond` (the bond spent back after L). Each bond is recorded in the
//! farmer's RocksDB under `bond/<txid>:<vout>` before its transaction is broadcast.

use std::str::FromStr;
use std::sync::Arc;

use bitcoin::consensus::encode::serialize_hex;
use bitcoin::{Address, Amount, Denomination, OutPoint, ScriptBuf, Transaction, TxOut};
use dstore_protocol::market::announce::Announcement;
use dstore_protocol::market::bond::{bond_script_pubkey, unbond_transaction, LOCKTIME_THRESHOLD};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::advert::unix_now;
use crate::app::App;
use crate::db::Db;
use crate::farmer::Farmer;
use crate::jsonrpc::{code, RpcError};
use crate::methods::Params;
use crate::wallet::WalletError;

/// Bond records, by outpoint.
const BOND_PREFIX: &str = "bond/";

/// A bond this farmer made with `dstore-announce`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BondRecord {
    /// `txid:vout`.
    pub outpoint: String,
    pub value_sat: u64,
    pub locktime: u32,
    pub peer_url: String,
    pub bond_address: String,
    /// Unix seconds of the announcement.
    pub announced_at: u64,
    /// 1 for the farmer's first announcement, then one more each (orders re-announcements).
    pub seq: u64,
    pub tx_hex: String,
    /// The unbond transaction, stored before it is broadcast.
    pub unbond_tx_hex: Option<String>,
    /// Its txid once broadcast: the bond is spent.
    pub spent_by: Option<String>,
}

fn bond_key(outpoint: &str) -> String {
    format!("{BOND_PREFIX}{outpoint}")
}

/// Every bond this farmer announced, oldest first.
pub fn bonds(db: &Db) -> Result<Vec<BondRecord>, crate::db::DbError> {
    let mut list: Vec<BondRecord> = db
        .scan::<BondRecord>(BOND_PREFIX)?
        .into_iter()
        .map(|(_, record)| record)
        .collect();
    list.sort_by_key(|b| b.seq);
    Ok(list)
}

/// The URL of the farmer's latest announcement, if any.
pub fn last_announced_url(db: &Db) -> Option<String> {
    bonds(db).ok()?.pop().map(|b| b.peer_url)
}

fn invalid(message: impl Into<String>) -> RpcError {
    RpcError::new(code::INVALID_PARAMETER, message)
}

fn farmer_of(app: &App, method: &str) -> Result<Arc<Farmer>, RpcError> {
    app.farmer.clone().ok_or_else(|| {
        RpcError::new(
            code::MISC_ERROR,
            format!("{method} needs the farmer role (start dstore-plugin with --farmer)"),
        )
    })
}

fn wallet_error(e: WalletError) -> RpcError {
    let code = match &e {
        WalletError::InsufficientFunds(_) => code::WALLET_INSUFFICIENT_FUNDS,
        _ => code::WALLET_ERROR,
    };
    RpcError::new(code, e.to_string())
}

fn internal(e: impl std::fmt::Display) -> RpcError {
    RpcError::new(code::INTERNAL_ERROR, e.to_string())
}

/// What `dstore-announce` was asked for, checked before the wallet is touched.
struct AnnounceRequest {
    peer_url: String,
    amount: Amount,
    locktime: u32,
}

fn announce_request(args: &Params<'_>) -> Result<AnnounceRequest, RpcError> {
    let peer_url = args.required_string(0)?;
    let amount_text = args.decimal_text(1)?.unwrap_or_default();
    let amount = Amount::from_str_in(&amount_text, Denomination::Bitcoin)
        .map_err(|e| invalid(format!("Invalid bond_amount_btc '{amount_text}': {e}")))?;
    if amount == Amount::ZERO {
        return Err(invalid("bond_amount_btc must be above 0"));
    }
    let locktime_text = args.decimal_text(2)?.unwrap_or_default();
    let locktime: u32 = locktime_text
        .parse()
        .ok()
        .filter(|l| *l > 0)
        .ok_or_else(|| {
            invalid(format!(
                "Invalid bond_locktime '{locktime_text}': a block height (1 to {}) or a unix time",
                LOCKTIME_THRESHOLD - 1
            ))
        })?;
    Ok(AnnounceRequest {
        peer_url,
        amount,
        locktime,
    })
}

/// The bond output and the announcement's OP_RETURN, in that order.
fn announcement_outputs(
    farmer: &Farmer,
    request: &AnnounceRequest,
) -> Result<Vec<TxOut>, RpcError> {
    let identity = farmer.identity().x_only_public_key().0;
    let bond = bond_script_pubkey(&identity, request.locktime)
        .map_err(|e| invalid(format!("Invalid bond_locktime: {e}")))?;
    if request.amount < bond.minimal_non_dust() {
        return Err(invalid(format!(
            "bond_amount_btc {} is below the dust limit",
            request.amount.to_btc()
        )));
    }
    let record = Announcement {
        identity,
        locktime: request.locktime,
        bond_vout: 0,
        peer_url: request.peer_url.clone(),
    }
    .script()
    .map_err(|e| invalid(format!("Invalid peer_url '{}': {e}", request.peer_url)))?;
    Ok(vec![
        TxOut {
            value: request.amount,
            script_pubkey: bond,
        },
        TxOut {
            value: Amount::ZERO,
            script_pubkey: record,
        },
    ])
}

/// `dstore-announce <peer_url> <bond_amount_btc> <bond_locktime>`.
pub(crate) async fn announce(app: &Arc<App>, args: &Params<'_>) -> Result<Value, RpcError> {
    let farmer = farmer_of(app, "dstore-announce")?;
    let request = announce_request(args)?;
    let outputs = announcement_outputs(&farmer, &request)?;
    let wallet = app.wallet.clone();
    let funded = tokio::task::spawn_blocking(move || wallet.fund_outputs(&outputs, None))
        .await
        .map_err(internal)?
        .map_err(wallet_error)?;
    let tx = funded.tx;
    let txid = tx.compute_txid();
    let bond_address =
        Address::from_script(&tx.output[0].script_pubkey, app.config.network.to_bitcoin())
            .map_err(internal)?
            .to_string();
    let seq = bonds(farmer.db())
        .map_err(internal)?
        .last()
        .map_or(1, |b| b.seq + 1);
    let record = BondRecord {
        seq,
        outpoint: format!("{txid}:0"),
        value_sat: request.amount.to_sat(),
        locktime: request.locktime,
        peer_url: request.peer_url.clone(),
        bond_address: bond_address.clone(),
        announced_at: unix_now(),
        tx_hex: serialize_hex(&tx),
        unbond_tx_hex: None,
        spent_by: None,
    };
    farmer
        .db()
        .put(&bond_key(&record.outpoint), &record)
        .map_err(internal)?;
    broadcast(app, tx).await?;
    tracing::info!(%txid, bond_sat = record.value_sat, locktime = record.locktime, url = %record.peer_url, "announced this farmer with a fidelity bond");
    Ok(json!({
        "txid": txid.to_string(),
        "bond_outpoint": record.outpoint,
        "bond_address": bond_address,
        "locktime": record.locktime,
        "identity": farmer.identity().x_only_public_key().0.to_string(),
        "peer_url": record.peer_url,
    }))
}

async fn broadcast(app: &Arc<App>, tx: Transaction) -> Result<bitcoin::Txid, RpcError> {
    let wallet = app.wallet.clone();
    tokio::task::spawn_blocking(move || wallet.broadcast(&tx))
        .await
        .map_err(internal)?
        .map_err(wallet_error)
}

/// The bond `dstore-unbond` spends: the one named, else the only unspent one.
fn chosen_bond(db: &Db, named: Option<&str>) -> Result<BondRecord, RpcError> {
    let unspent: Vec<BondRecord> = bonds(db)
        .map_err(internal)?
        .into_iter()
        .filter(|b| b.spent_by.is_none())
        .collect();
    if let Some(outpoint) = named {
        OutPoint::from_str(outpoint)
            .map_err(|e| invalid(format!("Invalid bond_outpoint '{outpoint}': {e}")))?;
        return unspent
            .into_iter()
            .find(|b| b.outpoint == outpoint)
            .ok_or_else(|| invalid(format!("no unspent bond {outpoint} of this farmer")));
    }
    match unspent.len() {
        0 => Err(invalid("this farmer has no unspent bond")),
        1 => Ok(unspent.into_iter().next().expect("one bond")),
        _ => Err(invalid(format!(
            "this farmer has {} unspent bonds; name one: {}",
            unspent.len(),
            unspent
                .iter()
                .map(|b| b.outpoint.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Refuses an unbond the chain would not take yet: a height L needs the tip at L or above
/// (the next block is then above L), a time L needs the median time past above L (BIP113).
async fn check_locktime_passed(app: &App, locktime: u32) -> Result<(), RpcError> {
    let info = app
        .bitcoind
        .call("getblockchaininfo", json!([]))
        .await
        .map_err(|e| e.to_rpc_error())?;
    let tip = info["blocks"].as_u64().unwrap_or(0);
    let median_time = info["mediantime"].as_u64().unwrap_or(0);
    if locktime < LOCKTIME_THRESHOLD {
        if tip < u64::from(locktime) {
            return Err(RpcError::new(
                code::MISC_ERROR,
                format!("the bond is locked until block height {locktime}; the tip is at {tip}"),
            ));
        }
    } else if median_time <= u64::from(locktime) {
        return Err(RpcError::new(
            code::MISC_ERROR,
            format!(
                "the bond is locked until unix time {locktime}; the chain's median time past is {median_time}"
            ),
        ));
    }
    Ok(())
}

fn destination_script(app: &App, address: &str) -> Result<ScriptBuf, RpcError> {
    let unchecked = bitcoin::Address::from_str(address).map_err(|e| {
        RpcError::new(
            code::INVALID_ADDRESS_OR_KEY,
            format!("Invalid address '{address}': {e}"),
        )
    })?;
    unchecked
        .require_network(app.config.network.to_bitcoin())
        .map(|a| a.script_pubkey())
        .map_err(|e| {
            RpcError::new(
                code::INVALID_ADDRESS_OR_KEY,
                format!("Invalid address '{address}': {e}"),
            )
        })
}

/// The farmer's signed spend of `bond` to `destination`, paying the wallet's fee-rate
/// estimate for its size.
async fn unbond_tx(
    app: &Arc<App>,
    farmer: &Farmer,
    bond: &BondRecord,
    destination: ScriptBuf,
) -> Result<Transaction, RpcError> {
    let outpoint = OutPoint::from_str(&bond.outpoint).map_err(internal)?;
    let value = Amount::from_sat(bond.value_sat);
    let build = |fee: Amount| {
        unbond_transaction(
            farmer.identity(),
            outpoint,
            value,
            bond.locktime,
            destination.clone(),
            fee,
        )
        .map_err(|e| RpcError::new(code::MISC_ERROR, format!("cannot spend the bond: {e}")))
    };
    let probe = build(Amount::ZERO)?;
    let wallet = app.wallet.clone();
    let rate = tokio::task::spawn_blocking(move || wallet.estimate_fee_rate_within(6))
        .await
        .map_err(internal)?
        .map_err(wallet_error)?;
    // One weight unit per signature byte of slack: an ECDSA signature may be a byte longer.
    let weight = probe.weight().to_wu() + 4;
    let fee = Amount::from_sat((rate.to_sat_per_kwu() * weight).div_ceil(1000));
    build(fee)
}

/// `dstore-unbond ( "bond_outpoint" "address" )`.
pub(crate) async fn unbond(app: &Arc<App>, args: &Params<'_>) -> Result<Value, RpcError> {
    let farmer = farmer_of(app, "dstore-unbond")?;
    let named = args.string(0)?;
    let address = args.string(1)?;
    let mut bond = chosen_bond(farmer.db(), named.as_deref())?;
    let given = address
        .as_deref()
        .map(|a| destination_script(app, a))
        .transpose()?;
    check_locktime_passed(app, bond.locktime).await?;
    // A new wallet address is revealed only once the spend can go out.
    let destination = match given {
        Some(script) => script,
        None => {
            let wallet = app.wallet.clone();
            tokio::task::spawn_blocking(move || wallet.new_script())
                .await
                .map_err(internal)?
                .map_err(wallet_error)?
        }
    };
    let tx = unbond_tx(app, &farmer, &bond, destination.clone()).await?;
    bond.unbond_tx_hex = Some(serialize_hex(&tx));
    farmer
        .db()
        .put(&bond_key(&bond.outpoint), &bond)
        .map_err(internal)?;
    let txid = broadcast(app, tx.clone()).await?;
    bond.spent_by = Some(txid.to_string());
    farmer
        .db()
        .put(&bond_key(&bond.outpoint), &bond)
        .map_err(internal)?;
    let address = Address::from_script(&destination, app.config.network.to_bitcoin())
        .map(|a| a.to_string())
        .unwrap_or_else(|_| destination.to_hex_string());
    tracing::info!(%txid, bond = %bond.outpoint, "spent the fidelity bond");
    Ok(json!({
        "txid": txid.to_string(),
        "bond_outpoint": bond.outpoint,
        "amount_btc": tx.output[0].value.to_btc(),
        "address": address,
    }))
}
