//! CPFP fee bumping of the farmer's audit claims: a claim still in the mempool
//! [`BUMP_AFTER_BLOCKS`] blocks after it was broadcast (or after its last bump) gets a child
//! from the farmer's own wallet that spends the claim's output, at a package fee rate above
//! both `estimatesmartfee` and the claim's own rate, doubled at every further bump up to
//! [`BUMP_MAX_SAT_VB`]. It stops once the claim leaves the mempool (confirmed, or beaten)
//! or is superseded. Each child is stored in the claim record before it is broadcast.

use bitcoin::{Amount, FeeRate, Transaction};
use serde_json::json;

use super::records::{AuditClaim, ClaimBump};
use super::{internal, Farmer, FarmerError};
use crate::wallet::CpfpFees;

/// Blocks a claim may stay unconfirmed (after its broadcast or its last bump) before the
/// farmer bumps it. Two, so that a block templated before the claim reached the mempool
/// never counts; the claim window W is at least 6 blocks by default.
pub const BUMP_AFTER_BLOCKS: u32 = 2;
/// No package is aimed below this rate (sat/vB).
pub const BUMP_FLOOR_SAT_VB: u64 = 2;
/// Nor above this one: at the cap the farmer stops bumping.
pub const BUMP_MAX_SAT_VB: u64 = 200;
/// `estimatesmartfee` target: the claim must confirm within its window.
const ESTIMATE_BLOCKS: u16 = 2;

/// A claim in the mempool, as bitcoind sees it.
struct Unconfirmed {
    fee: Amount,
}

impl Farmer {
    /// Bumps every stuck, live audit claim of every contract (called at each new block).
    pub async fn bump_audit_claims(&self) {
        let records = match self.list() {
            Ok(records) => records,
            Err(e) => return tracing::warn!("claim bumper: {e}"),
        };
        for record in records {
            let live = record
                .audit
                .as_ref()
                .is_some_and(|a| a.claims.iter().any(|c| !c.superseded));
            if !live {
                continue;
            }
            if let Err(e) = self.bump_contract_claims(&record.contract_id).await {
                tracing::warn!(contract = %hex::encode(record.contract_id), "claim bumper: {e}");
            }
        }
    }

    async fn bump_contract_claims(&self, id: &[u8; 32]) -> Result<(), FarmerError> {
        let _guard = self.locks.lock(id).await;
        let mut record = self.existing(id)?;
        let tip = self.tip().await?;
        let count = record.audit.as_ref().map_or(0, |a| a.claims.len());
        for index in 0..count {
            let claim = record.audit.as_ref().expect("counted above").claims[index].clone();
            if claim.superseded {
                continue;
            }
            let Some(pending) = self.in_mempool(&claim.claim).await else {
                continue;
            };
            let since = claim
                .bumps
                .last()
                .map(|b| b.height)
                .or(claim.broadcast_height);
            let Some(since) = since else {
                // Stored before heights were kept: count from now.
                set_claim(&mut record, index, |c| c.broadcast_height = Some(tip));
                self.store(&record)?;
                continue;
            };
            if tip < since + BUMP_AFTER_BLOCKS {
                continue;
            }
            let Some(bump) = self.make_bump(&claim, &pending, tip).await? else {
                continue;
            };
            set_claim(&mut record, index, |c| c.bumps.push(bump.clone()));
            self.store(&record)?;
            self.send_bump(&claim, &bump).await;
        }
        Ok(())
    }

    /// Records the tip seen just after `claim` was broadcast: every block above it was
    /// templated after the claim reached the mempool, bar the very next one.
    pub(super) async fn note_broadcast_height(
        &self,
        record: &mut super::records::FarmedContract,
        claim: &Transaction,
    ) {
        let Ok(tip) = self.tip().await else {
            return;
        };
        let txid = claim.compute_txid();
        if let Some(c) = record
            .audit
            .as_mut()
            .and_then(|a| a.claims.iter_mut().find(|c| c.claim.compute_txid() == txid))
        {
            c.broadcast_height = Some(tip);
        }
        if let Err(e) = self.store(record) {
            tracing::warn!("storing the claim's broadcast height: {e}");
        }
    }

    /// The claim's entry in bitcoind's mempool, if it is there.
    async fn in_mempool(&self, claim: &Transaction) -> Option<Unconfirmed> {
        let entry = self
            .bitcoind
            .call("getmempoolentry", json!([claim.compute_txid().to_string()]))
            .await
            .ok()?;
        let fee = entry["fees"]["base"].as_f64()?;
        Some(Unconfirmed {
            fee: Amount::from_btc(fee).ok()?,
        })
    }

    /// The next child for `claim`, or `None` once the cap is reached.
    async fn make_bump(
        &self,
        claim: &AuditClaim,
        pending: &Unconfirmed,
        tip: u32,
    ) -> Result<Option<ClaimBump>, FarmerError> {
        let parent_rate = pending.fee.to_sat().div_ceil(claim.claim.vsize() as u64);
        let previous = claim.bumps.last();
        let wallet = self.wallet.clone();
        let estimate =
            tokio::task::spawn_blocking(move || wallet.estimate_fee_rate_within(ESTIMATE_BLOCKS))
                .await
                .map_err(internal)?
                .map(|r| r.to_sat_per_vb_ceil())
                .unwrap_or(BUMP_FLOOR_SAT_VB);
        let mut rate = estimate.max(BUMP_FLOOR_SAT_VB).max(parent_rate + 1);
        if let Some(previous) = previous {
            if previous.package_sat_vb >= BUMP_MAX_SAT_VB {
                tracing::warn!(claim = %claim.claim.compute_txid(), "audit claim still unconfirmed at the bump cap");
                return Ok(None);
            }
            rate = rate.max(previous.package_sat_vb * 2);
        }
        let rate = rate.min(BUMP_MAX_SAT_VB);
        let claimed = claim.claim.output.first().map_or(Amount::ZERO, |o| o.value);
        let fees = CpfpFees {
            parent_fee: pending.fee,
            package: FeeRate::from_sat_per_vb(rate).ok_or_else(|| internal("fee rate"))?,
            // A replacement pays for its own relay on top of what it replaces.
            min_fee: previous.map_or(Amount::ZERO, |p| p.fee + Amount::from_sat(200)),
            max_fee: claimed / 2,
        };
        let (wallet, parent) = (self.wallet.clone(), claim.claim.clone());
        let replaces = previous.map(|p| p.txid);
        let (tx, fee) =
            tokio::task::spawn_blocking(move || wallet.cpfp_child(&parent, 0, fees, replaces))
                .await
                .map_err(internal)?
                .map_err(internal)?;
        Ok(Some(ClaimBump {
            txid: tx.compute_txid(),
            package_sat_vb: rate,
            fee,
            height: tip,
            tx,
        }))
    }

    /// Broadcasts a stored child; if bitcoind refuses it, the earlier child (still in the
    /// mempool) is re-sent so the wallet sees it again.
    async fn send_bump(&self, claim: &AuditClaim, bump: &ClaimBump) {
        let claim_txid = claim.claim.compute_txid();
        let wallet = self.wallet.clone();
        let tx = bump.tx.clone();
        let previous = claim.bumps.last().map(|b| b.tx.clone());
        let sent = tokio::task::spawn_blocking(move || {
            let sent = wallet.broadcast(&tx);
            if let (Err(_), Some(previous)) = (&sent, previous) {
                let _ = wallet.broadcast(&previous);
            }
            sent
        })
        .await;
        match sent {
            Ok(Ok(txid)) => {
                tracing::info!(claim = %claim_txid, child = %txid, package_sat_vb = bump.package_sat_vb, fee = %bump.fee, "stuck audit claim bumped (CPFP)")
            }
            Ok(Err(e)) => tracing::warn!(claim = %claim_txid, "CPFP child refused: {e}"),
            Err(e) => tracing::warn!(claim = %claim_txid, "CPFP child: {e}"),
        }
    }
}

fn set_claim(
    record: &mut super::records::FarmedContract,
    index: usize,
    change: impl FnOnce(&mut AuditClaim),
) {
    if let Some(claim) = record.audit.as_mut().and_then(|a| a.claims.get_mut(index)) {
        change(claim);
    }
}
