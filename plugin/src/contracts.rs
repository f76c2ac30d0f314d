//! The contract RPC methods (`dstore-open`, `dstore-download`, `dstore-status`,
//! `dstore-list`, `dstore-refund`, `dstore-verify-fraud`): parameter checks, the call into
//! the renter or farmer role, and the JSON the caller sees.

use std::path::PathBuf;
use std::sync::Arc;

use bitcoin::Amount;
use serde_json::{json, Value};

use crate::app::App;
use crate::farmer::records::FarmedContract;
use crate::jsonrpc::{code, RpcError};
use crate::methods::Params;
use crate::renter::records::{AuditRequest, RentedContract, StoragePhase, TowerRecord};
use crate::renter::{
    verify_fraud_file, DownloadMode, RenterError, TX1_REFUND_NAME, TX2_REFUND_NAME,
};
use crate::wire::PeerCallError;

fn renter_error(e: RenterError) -> RpcError {
    rpc_error(&e)
}

pub(crate) fn rpc_error(e: &RenterError) -> RpcError {
    let code = match e {
        RenterError::UnknownContract(_) => code::INVALID_ADDRESS_OR_KEY,
        RenterError::Invalid(_) => code::INVALID_PARAMETER,
        RenterError::Peer(PeerCallError::Unreachable { .. }) => code::CLIENT_NOT_CONNECTED,
        RenterError::Wallet(crate::wallet::WalletError::InsufficientFunds(_)) => {
            code::WALLET_INSUFFICIENT_FUNDS
        }
        RenterError::Wallet(_) => code::WALLET_ERROR,
        RenterError::Bitcoind(b) => return b.to_rpc_error(),
        RenterError::Internal(_) => code::INTERNAL_ERROR,
        _ => code::MISC_ERROR,
    };
    RpcError::new(code, e.to_string())
}

fn contract_id(args: &Params<'_>, i: usize) -> Result<[u8; 32], RpcError> {
    let text = args.required_string(i)?;
    let mut id = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut id)
        .map_err(|_| RpcError::new(code::INVALID_PARAMETER, "contract_id must be 64 hex digits"))?;
    Ok(id)
}

pub(crate) async fn open(app: &Arc<App>, args: &Params<'_>) -> Result<Value, RpcError> {
    let started = std::time::Instant::now();
    let url = args.required_string(0)?;
    let file = PathBuf::from(args.required_string(1)?);
    if let Some(request) = shard_request(args, &url, &file)? {
        return app.files.open(request).await.map_err(|e| e.to_rpc());
    }
    if url.trim() == "auto" {
        return open_auto(app, args, &file, started).await;
    }
    let price = download_price(args)?;
    let audits = audit_request(args)?;
    let deadline = open_deadline(args, started)?;
    let id = app
        .renter
        .open(&url, &file, price, audits)
        .await
        .map_err(renter_error)?;
    app.renter
        .await_audit_setup(&id, deadline)
        .await
        .map_err(renter_error)
}

/// `[wait_seconds]` of `dstore-open`: how long, from the call, to wait for an audit
/// setup to end (`None`: return once it only waits for the chain).
fn open_deadline(
    args: &Params<'_>,
    started: std::time::Instant,
) -> Result<Option<std::time::Instant>, RpcError> {
    let Some(text) = args.decimal_text(6)? else {
        return Ok(None);
    };
    let seconds = text.parse::<u32>().map_err(|_| {
        RpcError::new(
            code::TYPE_ERROR,
            format!("wait_seconds must be a whole number of seconds, not '{text}'"),
        )
    })?;
    Ok(Some(
        started + std::time::Duration::from_secs(seconds.into()),
    ))
}

/// `dstore-open auto <file> …`: the market's best farmer, then the normal open; the reply
/// names the farmer chosen and why.
async fn open_auto(
    app: &Arc<App>,
    args: &Params<'_>,
    file: &std::path::Path,
    started: std::time::Instant,
) -> Result<Value, RpcError> {
    let (market, path) = (app.market.clone(), file.to_path_buf());
    let choice =
        tokio::task::spawn_blocking(move || crate::market::methods::choose_farmer(&market, &path))
            .await
            .map_err(|e| RpcError::new(code::INTERNAL_ERROR, e.to_string()))??;
    tracing::info!(farmer = %choice.identity, url = %choice.peer_url, score = choice.score, "dstore-open auto: farmer chosen");
    let price = download_price(args)?;
    let audits = audit_request(args)?;
    let deadline = open_deadline(args, started)?;
    let id = app
        .renter
        .open(&choice.peer_url, file, price, audits)
        .await
        .map_err(renter_error)?;
    let mut reply = app
        .renter
        .await_audit_setup(&id, deadline)
        .await
        .map_err(renter_error)?;
    if !reply.is_object() {
        reply = json!({"contract_id": hex::encode(id)});
    }
    reply["farmer"] = choice.to_json();
    Ok(reply)
}

/// The position of `dstore-open`'s parameter `name`.
fn open_param(name: &str) -> usize {
    crate::methods::find("dstore-open")
        .and_then(|m| m.params.iter().position(|p| p.name == name))
        .unwrap_or(usize::MAX)
}

/// `shards=N needed=K`: a sharded open (`None` without `shards`).
fn shard_request(
    args: &Params<'_>,
    url: &str,
    file: &std::path::Path,
) -> Result<Option<crate::shards::open::OpenFile>, RpcError> {
    let count = |name: &str| -> Result<Option<u64>, RpcError> {
        match args.decimal_text(open_param(name))? {
            None => Ok(None),
            Some(text) => text.parse::<u64>().map(Some).map_err(|_| {
                RpcError::new(
                    code::INVALID_PARAMETER,
                    format!("{name} must be a whole number, not '{text}'"),
                )
            }),
        }
    };
    let (shards, needed) = (count("shards")?, count("needed")?);
    let Some(shards) = shards else {
        if needed.is_some() {
            return Err(RpcError::new(
                code::INVALID_PARAMETER,
                "needed (K) is given without shards (N)",
            ));
        }
        return Ok(None);
    };
    Ok(Some(crate::shards::open::OpenFile {
        farmers: crate::shards::open::Farmers::parse(url),
        file: file.to_path_buf(),
        shards,
        needed,
        price: download_price(args)?,
        audits: audit_request(args)?,
    }))
}

/// `[download_price_sat]`: the farmer's price unless given.
fn download_price(args: &Params<'_>) -> Result<Option<Amount>, RpcError> {
    match args.decimal_text(2)? {
        None => Ok(None),
        Some(text) => {
            let sat = text.parse::<u64>().map_err(|_| {
                RpcError::new(
                    code::TYPE_ERROR,
                    format!("download_price_sat must be a whole number of satoshis, not '{text}'"),
                )
            })?;
            Ok(Some(Amount::from_sat(sat)))
        }
    }
}

/// `[audits N] [audit_period_blocks P] [audit_amount_sat A]`: no audits unless N > 0.
fn audit_request(args: &Params<'_>) -> Result<Option<AuditRequest>, RpcError> {
    let whole = |i: usize, name: &str, default: u64| -> Result<u64, RpcError> {
        match args.decimal_text(i)? {
            None => Ok(default),
            Some(text) => text.parse::<u64>().map_err(|_| {
                RpcError::new(
                    code::TYPE_ERROR,
                    format!("{name} must be a whole number, not '{text}'"),
                )
            }),
        }
    };
    let audits = whole(3, "audits", 0)?;
    if audits == 0 {
        return Ok(None);
    }
    let period = whole(4, "audit_period_blocks", DEFAULT_AUDIT_PERIOD)?;
    let amount = whole(5, "audit_amount_sat", DEFAULT_AUDIT_AMOUNT_SAT)?;
    let too_big =
        |name: &str| RpcError::new(code::INVALID_PARAMETER, format!("{name} is too large"));
    Ok(Some(AuditRequest {
        audits: u32::try_from(audits).map_err(|_| too_big("audits"))?,
        period: u32::try_from(period).map_err(|_| too_big("audit_period_blocks"))?,
        amount: Amount::from_sat(amount),
    }))
}

/// A day of blocks between audits unless `dstore-open` says otherwise.
const DEFAULT_AUDIT_PERIOD: u64 = 144;
/// Paid per passed audit unless `dstore-open` says otherwise.
const DEFAULT_AUDIT_AMOUNT_SAT: u64 = 10_000;

pub(crate) async fn download(app: &Arc<App>, args: &Params<'_>) -> Result<Value, RpcError> {
    let id = contract_id(args, 0)?;
    let output = PathBuf::from(args.required_string(1)?);
    let wait = match args.decimal_text(2)? {
        None => None,
        Some(text) => Some(std::time::Duration::from_secs(
            text.parse::<u32>()
                .map_err(|_| {
                    RpcError::new(
                        code::TYPE_ERROR,
                        format!("wait_seconds must be a whole number of seconds, not '{text}'"),
                    )
                })?
                .into(),
        )),
    };
    let mode = download_mode(args)?;
    if app.files.load(&id).map_err(|e| e.to_rpc())?.is_some() {
        return app
            .files
            .download(&id, &output, wait)
            .await
            .map_err(|e| e.to_rpc());
    }
    app.renter
        .download_in_mode(&id, &output, wait, mode)
        .await
        .map_err(|e| rpc_error(&e))
}

/// `[mode]` of `dstore-download` (its last parameter): ln, chain or auto (the default).
fn download_mode(args: &Params<'_>) -> Result<DownloadMode, RpcError> {
    let position = crate::methods::find("dstore-download")
        .and_then(|m| m.params.iter().position(|p| p.name == "mode"))
        .unwrap_or(usize::MAX);
    match args.string(position)? {
        None => Ok(DownloadMode::Auto),
        Some(text) => text
            .parse()
            .map_err(|e: String| RpcError::new(code::INVALID_PARAMETER, e)),
    }
}

/// `dstore-repair <file_id> [farmer_urls|auto] [wait_seconds]`.
pub(crate) async fn repair(app: &Arc<App>, args: &Params<'_>) -> Result<Value, RpcError> {
    let text = args.required_string(0)?;
    let id = crate::shards::parse_id(&text, "file_id").map_err(|e| e.to_rpc())?;
    let farmers = args
        .string(1)?
        .map(|urls| crate::shards::open::Farmers::parse(&urls));
    let wait = wait_seconds(args, 2)?;
    app.files
        .repair(&id, farmers, wait)
        .await
        .map_err(|e| e.to_rpc())
}

/// `[wait_seconds]` at position `i`.
fn wait_seconds(args: &Params<'_>, i: usize) -> Result<Option<std::time::Duration>, RpcError> {
    match args.decimal_text(i)? {
        None => Ok(None),
        Some(text) => text
            .parse::<u32>()
            .map(|s| Some(std::time::Duration::from_secs(s.into())))
            .map_err(|_| {
                RpcError::new(
                    code::TYPE_ERROR,
                    format!("wait_seconds must be a whole number of seconds, not '{text}'"),
                )
            }),
    }
}

pub(crate) async fn refund(app: &Arc<App>, args: &Params<'_>) -> Result<Value, RpcError> {
    let id = contract_id(args, 0)?;
    app.renter.refund(&id).await.map_err(renter_error)
}

pub(crate) async fn verify_fraud(args: &Params<'_>) -> Result<Value, RpcError> {
    let file = PathBuf::from(args.required_string(0)?);
    tokio::task::spawn_blocking(move || verify_fraud_file(&file))
        .await
        .map_err(|e| RpcError::new(code::INTERNAL_ERROR, e.to_string()))?
        .map_err(renter_error)
}

pub(crate) async fn status(app: &Arc<App>, args: &Params<'_>) -> Result<Value, RpcError> {
    let id = contract_id(args, 0)?;
    if app.files.load(&id).map_err(|e| e.to_rpc())?.is_some() {
        return app.files.status(&id).await.map_err(|e| e.to_rpc());
    }
    if let Some(record) = app.renter.load(&id).map_err(renter_error)? {
        let mut value = rented_json(app, &record, true);
        if let Some(audits) = app.renter.audit_status(&record).await {
            value["audits"] = audits;
        }
        return Ok(value);
    }
    if let Some(farmer) = &app.farmer {
        if let Some(record) = farmer
            .load(&id)
            .map_err(|e| RpcError::new(code::INTERNAL_ERROR, e.to_string()))?
        {
            return Ok(farmed_json(app, &record, true));
        }
    }
    Err(RpcError::new(
        code::INVALID_ADDRESS_OR_KEY,
        format!("unknown contract {}", hex::encode(id)),
    ))
}

pub(crate) fn list(app: &Arc<App>) -> Result<Value, RpcError> {
    let (files, shards) = app.files.list_entries().map_err(|e| e.to_rpc())?;
    let mut out: Vec<Value> = app
        .renter
        .list()
        .map_err(renter_error)?
        .iter()
        .map(|r| {
            let mut value = rented_json(app, r, false);
            if let Some((file_id, index)) = shards.get(&r.contract_id) {
                merge(
                    &mut value,
                    json!({"file_id": hex::encode(file_id), "shard": index}),
                );
            }
            value
        })
        .collect();
    if let Some(farmer) = &app.farmer {
        let farmed = farmer
            .list()
            .map_err(|e| RpcError::new(code::INTERNAL_ERROR, e.to_string()))?;
        out.extend(farmed.iter().map(|r| farmed_json(app, r, false)));
    }
    out.extend(files);
    Ok(Value::Array(out))
}

fn rented_json(app: &App, record: &RentedContract, detail: bool) -> Value {
    let id = hex::encode(record.contract_id);
    let progress = app.renter.progress.get(&id);
    let running = progress.as_ref().is_some_and(|p| p.running);
    let latest = record.downloads.last();
    let phase = match (&progress, latest) {
        (Some(p), _) if p.running => p.phase.clone(),
        (_, Some(d)) if record.phase == StoragePhase::Stored => {
            format!("download {}", json!(d.phase).as_str().unwrap_or("?"))
        }
        _ => json!(record.phase).as_str().unwrap_or("?").to_string(),
    };
    let (done, total) = match &progress {
        Some(p) if p.running => (p.bytes_done, p.bytes_total),
        _ if record.phase == StoragePhase::Stored => {
            (record.ciphertext_length, record.ciphertext_length)
        }
        Some(p) => (p.bytes_done, p.bytes_total),
        None => (0, record.ciphertext_length),
    };
    let mut value = json!({
        "contract_id": id,
        "role": "renter",
        "phase": phase,
        "running": running,
        "bytes_done": done,
        "bytes_total": total,
        "source": record.source,
        "farmer_url": record.farmer_url,
        "price_sat": record.price.to_sat(),
        "downloads": record.downloads.len(),
        "error": record.upload_error,
    });
    if detail {
        let extra = json!({
            "farmer": record.farmer.to_string(),
            "plaintext_length": record.plaintext_length,
            "ciphertext_length": record.ciphertext_length,
            "root_c": record.root_c.map(hex::encode),
            "expiry_height": record.receipt.map(|r| r.expiry_height),
            "downloads": record.downloads.iter().map(|d| json!({
                "download_id": hex::encode(d.download_id),
                "mode": if d.ln.is_some() { "ln" } else { "chain" },
                "phase": d.phase,
                "payment_hash": d.ln.as_ref().and_then(|ln| ln.payment_hash).map(hex::encode),
                "price_msat": d.ln.as_ref().map(|ln| ln.price_msat),
                "fee_msat": d.ln.as_ref().and_then(|ln| ln.fee_msat),
                "invoice": d.ln.as_ref().and_then(|ln| ln.invoice.clone()),
                "tx1": d.tx1_outpoint.map(|o| o.txid.to_string()),
                "tx2": d.tx2_txid.map(|t| t.to_string()),
                "tx3": d.tx3_txid.map(|t| t.to_string()),
                "refund_height": d.contract.map(|c| c.refund_height),
                "refund_txid": d.refund_txid.map(|t| t.to_string()),
                "output": d.output,
                "fraud_proof": d.fraud_proof,
                "error": d.error,
                "watchtower": d.watchtower.as_ref().map(|t| json!({
                    "registered": t.registered,
                    "registered_height": t.registered_height,
                    "refunds": tower_refunds(t),
                    "tx2_from_tower": t.tx2_from_tower,
                    "error": t.last_error,
                })),
            })).collect::<Vec<_>>(),
        });
        merge(&mut value, extra);
    }
    value
}

/// The names of the refunds a renter's watchtower holds.
fn tower_refunds(t: &TowerRecord) -> Vec<&'static str> {
    let mut names = vec![TX1_REFUND_NAME];
    if t.tx2_refund.is_some() {
        names.push(TX2_REFUND_NAME);
    }
    names
}

fn farmed_json(app: &App, record: &FarmedContract, detail: bool) -> Value {
    let stored = record.receipt.is_some();
    let earned: u64 = record.payouts.iter().map(|p| p.amount.to_sat()).sum();
    let phase = match (&record.download, stored) {
        (_, false) => "uploading".to_string(),
        (Some(d), true) => format!("download {}", json!(d.phase).as_str().unwrap_or("?")),
        (None, true) => "stored".to_string(),
    };
    let mut value = json!({
        "contract_id": hex::encode(record.contract_id),
        "role": "farmer",
        "phase": phase,
        "running": false,
        "bytes_done": record.upload.merkle.length,
        "bytes_total": record.file_length,
        "price_sat": record.price.to_sat(),
        "earned_sat": earned,
    });
    if detail {
        let extra = json!({
            "renter": record.renter.to_string(),
            "expiry_height": record.expiry_height,
            "root_c": record.receipt.map(|r| hex::encode(r.root_c)),
            "payouts": record.payouts.iter().map(|p| json!({
                "download_id": hex::encode(p.download_id),
                "tx2": p.tx2.to_string(),
                "tx3": p.tx3.to_string(),
                "amount_sat": p.amount.to_sat(),
            })).collect::<Vec<_>>(),
            "watchtower": match (&app.config.watchtower, &record.download) {
                (Some(_), Some(d)) => json!({"registered": d.tower_registered}),
                _ => Value::Null,
            },
            // The TX2 broadcast rule's last check while the claim is on hold.
            "claim": record.download.as_ref().and_then(|d| d.claim_check).map(|c| json!({
                "checked_height": c.height,
                "tx1_confirmations": c.pending.tx1_confirmations,
                "min_tx1_confirmations": c.pending.min_tx1_confirmations,
                "abandon_height": c.pending.abandon_height,
            })),
            "audits": record.audit.as_ref().map(|a| json!({
                "phase": a.phase,
                "audits": a.book.as_ref().map(|b| b.terms.audits),
                "heights": a.book.as_ref().map(|b| (0..b.terms.audits).map(|i| b.terms.audit_height(i)).collect::<Vec<_>>()),
                "funding_txid": a.book.as_ref().map(|b| b.funding_txid),
                "swapped": a.swap.done.len(),
                "claims": a.claims.iter().map(crate::farmer::audit::claim_summary).collect::<Vec<_>>(),
                "watchtower_registered": a.tower_registered,
                "stake_sat": a.proposal.terms.stake.to_sat(),
                "renter_caught": a.caught,
            })),
            "ln_downloads": record.ln_downloads.iter().map(|d| json!({
                "download_id": hex::encode(d.download_id),
                "phase": d.phase,
                "payment_hash": hex::encode(d.transcript.payment_hash),
                "price_msat": d.transcript.price_msat,
                "invoiced": d.invoice.is_some(),
            })).collect::<Vec<_>>(),
        });
        merge(&mut value, extra);
    }
    value
}

pub(crate) fn merge(value: &mut Value, extra: Value) {
    if let (Some(v), Value::Object(e)) = (value.as_object_mut(), extra) {
        v.extend(e);
    }
}
