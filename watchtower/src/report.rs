//! The JSON the watchtower's RPC shows for a watch: its transactions' states at the tip,
//! the extracted key (public once TX2 is out, but only shown to authenticated callers),
//! what it has seen on the chain and, for an audit contract, the `audits` section
//! ([`dstore_protocol::watch::auditor::AuditsReport`] documents its shape). The
//! registration itself is never shown: an auditor's salts stay in the tower. A compacted
//! contract shows its summary (`"compacted": true`): the key, how each transaction ended
//! and, for an audit contract, its `audits` section as at compaction (without the Merkle
//! records).

use bitcoin::consensus::encode::serialize_hex;
use dstore_protocol::watch::{TxState, Watch, WatchSummary};
use serde_json::{json, Value};

pub fn summary(watch: &Watch, tip: Option<u32>) -> Value {
    let r = &watch.registration;
    json!({
        "id": hex::encode(r.id),
        "role": r.role,
        "key_extracted": watch.key.is_some(),
        "transactions": r.transactions.len(),
        "settled": tip.is_some_and(|t| watch.settled(t)),
        "auditor": r.auditor.is_some(),
        "audits_failed": watch.audit.as_ref().is_some_and(|a| a.failure.is_some()),
        "compacted": false,
    })
}

/// The `tower-list` row of a compacted contract.
pub fn compacted_summary(summary: &WatchSummary) -> Value {
    json!({
        "id": hex::encode(summary.id),
        "role": summary.role,
        "key_extracted": summary.key.is_some(),
        "transactions": summary.outcomes.len(),
        "settled": true,
        "auditor": summary.auditor,
        "audits_failed": summary.audits.as_ref().is_some_and(|a| a.audits_failed),
        "compacted": true,
    })
}

/// `tower-status` of a compacted contract: the same fields where they still mean
/// something, each transaction's final state, and no chain history.
pub fn compacted_status(summary: &WatchSummary, tip: Option<u32>) -> Value {
    let transactions: Vec<Value> = summary
        .outcomes
        .iter()
        .map(|o| json!({"name": o.name, "txid": o.txid.to_string(), "status": o.status}))
        .collect();
    json!({
        "id": hex::encode(summary.id),
        "role": summary.role,
        "tip_height": tip,
        "key": summary.key.map(|k| json!({
            "secret": hex::encode(k.secret_bytes()),
            "tx2_txid": summary.tx2_txid.map(|t| t.to_string()),
        })),
        "transactions": transactions,
        "settled": true,
        "compacted": true,
        "settled_height": summary.settled_height,
        "compacted_height": summary.compacted_height,
        "audits": summary.audits,
    })
}

pub fn status(watch: &Watch, tip: Option<u32>) -> Value {
    let r = &watch.registration;
    let transactions: Vec<Value> = r
        .transactions
        .iter()
        .map(|p| {
            let attempts = watch.attempts_of(&p.name);
            let state = tip
                .map(|t| watch.state_of(p, t))
                .unwrap_or(TxState::Waiting { height: None });
            json!({
                "name": p.name,
                "txid": p.tx.compute_txid().to_string(),
                "status": state,
                "broadcasts": attempts.map(|a| a.broadcasts).unwrap_or(0),
                "last_broadcast_height": attempts.and_then(|a| a.last_broadcast_height),
                "last_error": attempts.and_then(|a| a.last_error.clone()),
                "bumps": attempts.map(|a| a.bumps).unwrap_or(0),
                "last_bump_txid": attempts.and_then(|a| a.last_bump_txid).map(|t| t.to_string()),
            })
        })
        .collect();
    json!({
        "id": hex::encode(r.id),
        "role": r.role,
        "tip_height": tip,
        "key": watch.key.as_ref().map(|k| json!({
            "secret": hex::encode(k.secret.secret_bytes()),
            "tx2_txid": k.tx2.compute_txid().to_string(),
            "tx2": serialize_hex(&k.tx2),
        })),
        "extract_note": watch.extract_note,
        "transactions": transactions,
        "seen": watch.seen,
        "spends": watch.spends,
        // Spends of TX1:0 by neither the expected TX2 nor a pre-signed refund (a TX2'
        // re-signed under fresh nonces): the renter's dstore-refund refunds its output 0.
        "unexpected_spends": watch.unexpected_spends(),
        "settled": tip.is_some_and(|t| watch.settled(t)),
        "compacted": false,
        "audits": watch.audits_report(tip),
    })
}
