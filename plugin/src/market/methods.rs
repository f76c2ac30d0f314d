//! The market's RPC: `dstore-farmers` (the table) and the choice behind `dstore-open auto`.

use std::path::Path;
use std::sync::Arc;

use dstore_protocol::datapath::ciphertext_len;
use serde_json::{json, Value};

use super::table::{FarmerRow, Sort};
use super::Market;
use crate::app::App;
use crate::jsonrpc::{code, RpcError};
use crate::methods::Params;

/// `dstore-farmers ( "sort" )`.
pub(crate) async fn farmers(app: &Arc<App>, args: &Params<'_>) -> Result<Value, RpcError> {
    let sort = match args.string(0)? {
        None => Sort::Score,
        Some(text) => text
            .trim()
            .parse::<Sort>()
            .map_err(|e| RpcError::new(code::INVALID_PARAMETER, e))?,
    };
    let market = app.market.clone();
    let table = tokio::task::spawn_blocking(move || market.table(sort))
        .await
        .map_err(|e| RpcError::new(code::INTERNAL_ERROR, e.to_string()))?;
    serde_json::to_value(table).map_err(|e| RpcError::new(code::INTERNAL_ERROR, e.to_string()))
}

/// The farmer `dstore-open auto` stores with, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub identity: String,
    pub peer_url: String,
    pub score: f64,
    pub why: String,
}

impl Choice {
    pub fn to_json(&self) -> Value {
        json!({
            "identity": self.identity,
            "peer_url": self.peer_url,
            "score": self.score,
            "why": self.why,
        })
    }
}

/// Picks the best-scoring farmer that is not burned, has a live bond of at least
/// `--market-min-bond-sat`, a verified advert for its announced URL, and takes a file of
/// `file`'s size; a clear error (and nothing done) if none does.
pub fn choose_farmer(market: &Market, file: &Path) -> Result<Choice, RpcError> {
    let size = std::fs::metadata(file)
        .map_err(|e| RpcError::new(code::INVALID_PARAMETER, format!("{}: {e}", file.display())))?
        .len();
    let length = ciphertext_len(size)
        .ok_or_else(|| RpcError::new(code::INVALID_PARAMETER, "file too large"))?;
    let table = market.table(Sort::Score);
    let min_bond = market.settings().min_bond_sat;
    let mut skipped = Vec::new();
    for row in &table.farmers {
        match unfit(row, min_bond, length) {
            Some(reason) => skipped.push(format!("{} {reason}", short(&row.identity))),
            None => return Ok(choice(row, &table.farmers, skipped)),
        }
    }
    let detail = if skipped.is_empty() {
        "the market scanner knows no announced farmer".to_string()
    } else {
        skipped.join("; ")
    };
    Err(RpcError::new(
        code::MISC_ERROR,
        format!("no farmer to choose: {detail}"),
    ))
}

/// The `n` best-scoring distinct farmers (by identity and URL) that [`choose_farmer`]
/// would accept for a shard of `shard_plaintext_len` bytes, skipping `exclude` (peer URLs
/// already holding a shard of the file); a clear error (-8, nothing done) if fewer fit.
pub fn choose_farmers(
    market: &Market,
    shard_plaintext_len: u64,
    n: usize,
    exclude: &[String],
) -> Result<Vec<Choice>, RpcError> {
    let length = ciphertext_len(shard_plaintext_len)
        .ok_or_else(|| RpcError::new(code::INVALID_PARAMETER, "file too large"))?;
    let table = market.table(Sort::Score);
    let min_bond = market.settings().min_bond_sat;
    let mut chosen: Vec<Choice> = Vec::new();
    let mut skipped = Vec::new();
    for row in &table.farmers {
        if chosen.len() == n {
            break;
        }
        let url = row.peer_url.clone().unwrap_or_default();
        let taken = exclude.contains(&url)
            || chosen
                .iter()
                .any(|c| c.identity == row.identity || c.peer_url == url);
        match (taken, unfit(row, min_bond, length)) {
            (true, _) => skipped.push(format!("{} holds a shard already", short(&row.identity))),
            (false, Some(reason)) => skipped.push(format!("{} {reason}", short(&row.identity))),
            (false, None) => chosen.push(choice(row, &table.farmers, Vec::new())),
        }
    }
    if chosen.len() < n {
        return Err(RpcError::new(
            code::INVALID_PARAMETER,
            format!(
                "auto needs {n} distinct farmers, the market has {} that fit: {}",
                chosen.len(),
                skipped.join("; ")
            ),
        ));
    }
    Ok(chosen)
}

/// Why `row` cannot be chosen, if it cannot.
fn unfit(row: &FarmerRow, min_bond: u64, length: u64) -> Option<String> {
    if row.burned {
        return Some("is burned (verified fraud proof)".into());
    }
    let Some(bond) = &row.bond else {
        return Some("has no live bond".into());
    };
    if bond.value_sat < min_bond {
        return Some(format!("bond {} sat < {min_bond}", bond.value_sat));
    }
    let (Some(advert), Some(_)) = (&row.advert, &row.peer_url) else {
        return Some(format!(
            "has no verified advert ({})",
            row.advert_error.as_deref().unwrap_or("none")
        ));
    };
    if advert.advert.max_file_bytes < length {
        return Some(format!(
            "stores at most {} bytes (this file is {length} encrypted)",
            advert.advert.max_file_bytes
        ));
    }
    if row.score <= 0.0 {
        return Some("scores 0".into());
    }
    None
}

fn choice(row: &FarmerRow, all: &[FarmerRow], skipped: Vec<String>) -> Choice {
    let mut why = format!(
        "best score of {} listed farmer(s): {}",
        all.len(),
        row.score_explained
    );
    if !skipped.is_empty() {
        why.push_str(&format!("; skipped: {}", skipped.join("; ")));
    }
    Choice {
        identity: row.identity.clone(),
        peer_url: row.peer_url.clone().unwrap_or_default(),
        score: row.score,
        why,
    }
}

fn short(identity: &str) -> &str {
    identity.get(..16).unwrap_or(identity)
}
