//! The farmer's claim, TX2 then TX3, held back until it is safe (PROTOCOL.md 3.3). TX2
//! reveals f, so it leaves this process only once TX1 has `--min-tx1-confirmations` and
//! while the tip is more than `--tx2-broadcast-margin-blocks` below T1: a renter that
//! could still double-spend TX1, or refund it at T1, must never see f. Past that height
//! the download is abandoned for good and f stays secret. The claims on hold are
//! re-checked at every new block (a reorg that unconfirms TX1 puts one back on hold),
//! and after a restart.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bitcoin::{OutPoint, Transaction, Txid};
use dstore_protocol::messages::{ClaimPending, Claimed};
use dstore_protocol::watch::{Hold, Presigned, Registration, WatchRole};
use serde_json::json;

use super::records::{ClaimCheck, FarmedContract, FarmedDownload, FarmerPhase, Payout};
use super::{internal, Farmer, FarmerError, REFUND_MARGIN};

/// How often the farmer looks for a new block while claims are on hold.
pub const CLAIM_POLL: Duration = Duration::from_secs(1);

/// What the broadcast rule says about one stored claim at the current tip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// TX2 (and TX3) broadcast, or already out.
    Claimed,
    /// TX1 is not deep enough yet: the claim stays on hold.
    Pending(ClaimPending),
    /// The tip reached T1 minus the margin before TX2 went out: never broadcast.
    Abandoned { height: u32 },
}

impl Farmer {
    /// The hand-over of a download whose TX2 and TX3 are both signed (phase
    /// `awaiting_tx1` in `record`, not stored yet): both are stored before either leaves
    /// this process, the watchtower gets them, and TX2 goes out now only if TX1 is deep
    /// enough; otherwise the claim watcher broadcasts it at a later block, or abandons it.
    pub(super) async fn hand_over_claim(
        &self,
        record: &mut FarmedContract,
    ) -> Result<Claimed, FarmerError> {
        let download = record
            .download
            .as_ref()
            .ok_or(FarmerError::WrongPhase("no download"))?;
        let (Some(template), Some(tx3)) = (&download.template, &download.tx3) else {
            return Err(FarmerError::WrongPhase("no stored claim"));
        };
        let mut claimed = Claimed {
            tx2: template.txid,
            tx3: tx3.compute_txid(),
            pending: None,
        };
        self.store(record)?;
        if crate::dev_fault!(self.config.dev_fault, WithholdTx2) {
            tracing::warn!("dev fault withhold-tx2: keeping TX2 to itself");
            return Err(FarmerError::Internal("TX2 withheld".into()));
        }
        // The tower holds the claim, under the same broadcast rule, before it leaves this
        // process: should the farmer die now, the tower still gets TX2 and TX3 mined.
        if !crate::dev_fault!(self.config.dev_fault, WithholdTx3) {
            self.register_claim(record).await;
        }
        match self.advance_claim(record).await {
            Ok(ClaimOutcome::Claimed) => {}
            Ok(ClaimOutcome::Pending(pending)) => {
                tracing::info!(contract = %hex::encode(record.contract_id), confirmations = pending.tx1_confirmations, needed = pending.min_tx1_confirmations, "claim stored; TX2 waits for TX1's confirmations");
                claimed.pending = Some(pending);
            }
            Ok(ClaimOutcome::Abandoned { height }) => return Err(FarmerError::Abandoned(height)),
            Err(e) if crate::dev_fault!(self.config.dev_fault, WithholdTx3) => return Err(e),
            Err(e) => {
                tracing::warn!("claim not broadcast yet ({e}); retried at the next block");
                let download = record.download.as_ref().expect("checked above");
                claimed.pending = Some(ClaimPending {
                    tx1_confirmations: 0,
                    min_tx1_confirmations: self.config.min_tx1_confirmations,
                    abandon_height: self.abandon_height(download),
                });
            }
        }
        Ok(claimed)
    }

    /// Hands the current download's claim (TX2 and TX3, both fully signed) to the
    /// watchtower, if one is configured. A failure is logged, never fatal: the farmer
    /// broadcasts the claim itself anyway, and the registration is retried at the next start.
    pub(super) async fn register_claim(&self, record: &mut FarmedContract) {
        let Some(tower) = &self.config.tower else {
            return;
        };
        let Some(download) = record.download.as_mut() else {
            return;
        };
        // TX2 only once TX1 is deep enough and never at or after the abandon height.
        let hold = Hold {
            min_parent_confirmations: self.config.min_tx1_confirmations,
            never_from_height: Some(self.abandon_height(download)),
        };
        let (Some(template), Some(tx3)) = (&download.template, &download.tx3) else {
            return;
        };
        let registration = Registration {
            id: download.download_id,
            role: WatchRole::Farmer,
            extract: None,
            transactions: vec![
                Presigned::new("tx2", template.tx.clone()).held(hold),
                Presigned::new("tx3", tx3.clone()),
            ],
            watch_txids: Vec::new(),
            // The tip when the download was offered: the same on every retry, and early
            // enough that the tower sees a TX2 or TX3 already mined.
            rescan_from_height: Some(download.refund_height.saturating_sub(REFUND_MARGIN)),
            auditor: None,
        };
        let id = hex::encode(download.download_id);
        match tower.register(&registration).await {
            Ok(verdict) => {
                tracing::info!(download = %id, tower = %tower.url(), %verdict, "claim registered with the watchtower");
                download.tower_registered = true;
            }
            Err(e) => {
                tracing::warn!(download = %id, "watchtower registration of the claim failed ({e}); it is retried at the next start")
            }
        }
    }

    /// The first tip height at which this download's TX2 is never broadcast.
    pub(super) fn abandon_height(&self, download: &FarmedDownload) -> u32 {
        download
            .refund_height
            .saturating_sub(self.config.tx2_broadcast_margin_blocks)
    }

    /// Refuses to go on with the current download of `record` once the tip reached its
    /// abandon height: the download is marked abandoned (its signed TX2 dropped) and
    /// nothing else changes.
    pub(super) async fn refuse_if_late(&self, record: &FarmedContract) -> Result<(), FarmerError> {
        let Some(download) = &record.download else {
            return Ok(());
        };
        let height = self.abandon_height(download);
        if self.tip().await? < height {
            return Ok(());
        }
        let mut abandoned = record.clone();
        abandon(&mut abandoned, height);
        self.store(&abandoned)?;
        Err(FarmerError::Abandoned(height))
    }

    /// Applies the broadcast rule to the stored claim of `record` (phase awaiting TX1 or
    /// claiming): broadcasts TX2 then TX3, abandons the download, or leaves it on hold.
    /// Every state is stored before anything is broadcast.
    pub(super) async fn advance_claim(
        &self,
        record: &mut FarmedContract,
    ) -> Result<ClaimOutcome, FarmerError> {
        let download = record
            .download
            .as_ref()
            .ok_or(FarmerError::WrongPhase("no download"))?;
        let (Some(template), Some(tx3)) = (download.template.clone(), download.tx3.clone()) else {
            return Err(FarmerError::WrongPhase("no stored claim"));
        };
        let outpoint = download
            .tx1_outpoint
            .ok_or(FarmerError::WrongPhase("no TX1"))?;
        let height = self.abandon_height(download);
        let out = self
            .claim_visible(&template.txid, &tx3.compute_txid())
            .await?;
        if !out {
            let tip = self.tip().await?;
            if tip >= height {
                abandon(record, height);
                self.store(record)?;
                return Ok(ClaimOutcome::Abandoned { height });
            }
            let confirmations = self.confirmations(&outpoint).await?;
            let needed = self.config.min_tx1_confirmations;
            if confirmations < needed {
                let pending = ClaimPending {
                    tx1_confirmations: confirmations,
                    min_tx1_confirmations: needed,
                    abandon_height: height,
                };
                hold(record);
                if let Some(download) = record.download.as_mut() {
                    download.claim_check = Some(ClaimCheck {
                        height: tip,
                        pending,
                    });
                }
                self.store(record)?;
                return Ok(ClaimOutcome::Pending(pending));
            }
        }
        if out {
            return self.rebroadcast_claim(record, &template.tx, &tx3).await;
        }
        let download = record.download.as_mut().expect("checked above");
        download.phase = FarmerPhase::Claiming;
        self.store(record)?;
        if let Err(e) = self.broadcast(&template.tx).await {
            // TX2 did not leave (TX1 gone again?): f is still secret, back on hold.
            hold(record);
            self.store(record)?;
            return Err(e);
        }
        if crate::dev_fault!(self.config.dev_fault, WithholdTx3) {
            tracing::warn!("dev fault withhold-tx3: broadcasting TX2 only");
            return Err(FarmerError::Internal("TX3 withheld".into()));
        }
        self.broadcast(&tx3).await?;
        mark_claimed(record);
        self.store(record)?;
        Ok(ClaimOutcome::Claimed)
    }

    /// A claim that is out already (a broadcast before a crash, or the tower's): re-sent
    /// best effort (bitcoind refuses a transaction whose inputs a block spent), then
    /// recorded as paid.
    async fn rebroadcast_claim(
        &self,
        record: &mut FarmedContract,
        tx2: &Transaction,
        tx3: &Transaction,
    ) -> Result<ClaimOutcome, FarmerError> {
        let withhold_tx3 = crate::dev_fault!(self.config.dev_fault, WithholdTx3);
        let txs = if withhold_tx3 {
            vec![tx2]
        } else {
            vec![tx2, tx3]
        };
        for tx in txs {
            if let Err(e) = self.broadcast(tx).await {
                tracing::debug!("re-broadcast of a claim already out: {e}");
            }
        }
        if withhold_tx3 {
            return Err(FarmerError::Internal("TX3 withheld".into()));
        }
        mark_claimed(record);
        self.store(record)?;
        Ok(ClaimOutcome::Claimed)
    }

    /// TX1's confirmations on the active chain (0 in the mempool, double-spent or unknown).
    async fn confirmations(&self, outpoint: &OutPoint) -> Result<u32, FarmerError> {
        let found = self
            .bitcoind
            .call(
                "gettxout",
                json!([outpoint.txid.to_string(), outpoint.vout, false]),
            )
            .await
            .map_err(internal)?;
        Ok(found["confirmations"].as_u64().unwrap_or(0) as u32)
    }

    /// TX2 or TX3 is known to bitcoind already (a broadcast before a crash, or the
    /// tower's): f is public, so re-broadcasting protects nothing less.
    async fn claim_visible(&self, tx2: &Txid, tx3: &Txid) -> Result<bool, FarmerError> {
        for txid in [tx2, tx3] {
            let found = self
                .bitcoind
                .call("gettxout", json!([txid.to_string(), 0, true]))
                .await
                .map_err(internal)?;
            if !found.is_null() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Re-applies the rule to every claim on hold (and every claim whose broadcast may
    /// not have happened), each under its contract's lock.
    pub async fn check_claims(&self) -> Result<(), FarmerError> {
        if crate::dev_fault!(self.config.dev_fault, WithholdTx2) {
            return Ok(());
        }
        for record in self.list()? {
            if !record.download.as_ref().is_some_and(claim_stored) {
                continue;
            }
            let id = record.contract_id;
            let _guard = self.locks.lock(&id).await;
            let Some(mut record) = self.load(&id)? else {
                continue;
            };
            if !record.download.as_ref().is_some_and(claim_stored) {
                continue;
            }
            let registered = record.download.as_ref().is_some_and(|d| d.tower_registered);
            if !registered && !crate::dev_fault!(self.config.dev_fault, WithholdTx3) {
                self.register_claim(&mut record).await;
            }
            let contract = hex::encode(id);
            match self.advance_claim(&mut record).await {
                Ok(ClaimOutcome::Pending(p)) => {
                    tracing::debug!(%contract, confirmations = p.tx1_confirmations, needed = p.min_tx1_confirmations, "claim on hold: TX1 not deep enough")
                }
                Ok(outcome) => tracing::info!(%contract, ?outcome, "claim decided"),
                Err(e) => tracing::warn!(%contract, "claim not broadcast yet: {e}"),
            }
        }
        Ok(())
    }

    /// Runs [`Farmer::check_claims`] at every new best block until `shutdown` resolves.
    pub async fn watch_claims(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut last: Option<String> = None;
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(CLAIM_POLL) => {}
            }
            let best = match self.bitcoind.call("getbestblockhash", json!([])).await {
                Ok(hash) => hash.as_str().map(str::to_string),
                Err(e) => {
                    tracing::debug!("claim watcher: bitcoind unreachable ({e})");
                    continue;
                }
            };
            if best.is_none() || best == last {
                continue;
            }
            self.bump_audit_claims().await;
            match self.check_claims().await {
                Ok(()) => last = best,
                Err(e) => tracing::warn!("claim watcher: {e}"),
            }
        }
    }
}

/// The download holds a claim whose broadcast is still to be decided.
fn claim_stored(download: &FarmedDownload) -> bool {
    matches!(
        download.phase,
        FarmerPhase::AwaitingTx1 | FarmerPhase::Claiming
    )
}

/// Back on hold: TX2 has not left this process.
fn hold(record: &mut FarmedContract) {
    if let Some(download) = record.download.as_mut() {
        download.phase = FarmerPhase::AwaitingTx1;
    }
}

/// The download is given up for good: its signed TX2 (which would reveal f) and TX3 are
/// dropped, so nothing can broadcast them any more.
fn abandon(record: &mut FarmedContract, height: u32) {
    if let Some(download) = record.download.as_mut() {
        download.phase = FarmerPhase::Abandoned;
        download.template = None;
        download.tx3 = None;
    }
    tracing::warn!(contract = %hex::encode(record.contract_id), height, "download abandoned: the tip reached T1 minus the margin before TX2 could go out; f stays secret");
}

/// Records a broadcast claim: the download is paid, and its payout is TX3's output.
fn mark_claimed(record: &mut FarmedContract) {
    let Some(download) = record.download.as_mut() else {
        return;
    };
    let (Some(template), Some(tx3)) = (&download.template, &download.tx3) else {
        return;
    };
    let payout = Payout {
        download_id: download.download_id,
        tx2: template.txid,
        tx3: tx3.compute_txid(),
        amount: tx3.output[0].value,
    };
    tracing::info!(tx2 = %payout.tx2, tx3 = %payout.tx3, "download paid: TX2 and TX3 broadcast");
    download.phase = FarmerPhase::Claimed;
    record.payouts.push(payout);
}
