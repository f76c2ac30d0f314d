//! The renter's watchtower: each funded download is registered with the refunds it can
//! have so far (TX1's after T1, TX2's after Δ, each with its fee-bump ladder) and f's
//! extraction from whatever spends TX1:0; TX2 is taken from the tower when it saw it first.

use std::sync::Arc;

use bitcoin::{Amount, FeeRate, OutPoint, Transaction, Txid};
use dstore_protocol::contract::RefundDestination;
use dstore_protocol::keys::Role;
use dstore_protocol::watch::{ExtractSpec, Registration, WatchRole};
use serde_json::{json, Value};

use super::records::{DownloadPhase, RentedContract, RentedDownload, TowerRecord};
use super::{
    current, internal, merge, refund_fees, Renter, RenterError, REFUND_FEE, TX1_REFUND_NAME,
    TX2_REFUND_NAME,
};

impl Renter {
    /// Hands download `index` of `record` to the watchtower, if one is configured: signs
    /// the refunds it lacks (TX1's once TX1 is funded, TX2's once TX2's txid is known),
    /// stores them, then (re-)registers. Only a failure to store is an error: a tower that
    /// is down or refuses is logged and recorded, and the registration is sent again at
    /// the next start (and by the next `dstore-download` of a paid download), so the
    /// download itself never stalls on its tower.
    pub(super) async fn sync_tower(
        &self,
        record: &mut RentedContract,
        index: usize,
    ) -> Result<(), RenterError> {
        let Some(tower) = self.tower.clone() else {
            return Ok(());
        };
        let price = record.price;
        let d = &mut record.downloads[index];
        let download = hex::encode(d.download_id);
        let estimate = self.refund_fee_rate().await;
        let changed = match self.tower_refunds(d, price, estimate) {
            Ok(changed) => changed,
            Err(e) => {
                tracing::warn!(%download, "cannot sign the refunds for the watchtower: {e}");
                return Ok(());
            }
        };
        if changed {
            // The refunds are on disk before the tower sees them, so every retry sends
            // the same bytes.
            self.store(record)?;
        }
        let d = &record.downloads[index];
        let Some(registration) = tower_registration(record.contract_id, d)? else {
            return Ok(());
        };
        let outcome = tower.register(&registration).await;
        let height = match &outcome {
            Ok(_) => self.tip().await.ok(),
            Err(_) => None,
        };
        let Some(t) = record.downloads[index].watchtower.as_mut() else {
            return Ok(());
        };
        match outcome {
            Ok(verdict) => {
                tracing::info!(%download, tower = %tower.url(), %verdict, refunds = registration.transactions.len(), "registered with the watchtower");
                t.registered = true;
                t.registered_height = height.or(t.registered_height);
                t.last_error = None;
            }
            Err(e) => {
                tracing::warn!(%download, "watchtower registration failed ({e}); it is retried at the next start");
                t.registered = false;
                t.last_error = Some(e.to_string());
            }
        }
        self.store(record)
    }

    /// Signs the refunds download `d` can have now and the tower does not hold yet;
    /// returns whether anything was added. TX1's refund pays a fresh wallet script, and
    /// TX2's pays the same one. Each comes with its fee-bump levels, from `estimate`.
    fn tower_refunds(
        &self,
        d: &mut RentedDownload,
        price: Amount,
        estimate: FeeRate,
    ) -> Result<bool, RenterError> {
        let (Some(contract), Some(tx1_outpoint)) = (d.contract, d.tx1_outpoint) else {
            return Ok(false);
        };
        let mut changed = false;
        if d.watchtower.is_none() {
            let r = self.secret(Role::Download, d.key_index)?;
            let destination = RefundDestination::wallet_script(self.wallet.new_script()?);
            let sign = |fee| contract.tx1_refund(tx1_outpoint, &r, &destination, fee);
            let tx1_refund = sign(REFUND_FEE).map_err(internal)?;
            let tx1_refund_bumps =
                refund_fees::sign_ladder(&tx1_refund, contract.price, estimate, sign)
                    .map_err(internal)?;
            d.watchtower = Some(TowerRecord {
                tx1_refund,
                tx2_refund: None,
                registered: false,
                registered_height: None,
                last_error: None,
                tx2_from_tower: false,
                tx1_refund_bumps,
                tx2_refund_bumps: Vec::new(),
            });
            changed = true;
        }
        let t = d.watchtower.as_mut().expect("set above");
        if let (None, Some(tx2_txid), Some(unsigned)) = (&t.tx2_refund, d.tx2_txid, &d.unsigned_tx2)
        {
            let tx2_fee = price
                .checked_sub(unsigned.output[0].value)
                .ok_or_else(|| internal("TX2 pays more than the price"))?;
            let value = contract.tx2_value(tx2_fee).map_err(internal)?;
            let r2 = self.secret(Role::Tx2, d.key_index)?;
            let destination =
                RefundDestination::wallet_script(t.tx1_refund.output[0].script_pubkey.clone());
            let tx2_outpoint = OutPoint {
                txid: tx2_txid,
                vout: 0,
            };
            let sign = |fee| contract.tx2_refund(tx2_outpoint, value, &r2, &destination, fee);
            let tx2_refund = sign(REFUND_FEE).map_err(internal)?;
            t.tx2_refund_bumps =
                refund_fees::sign_ladder(&tx2_refund, value, estimate, sign).map_err(internal)?;
            t.tx2_refund = Some(tx2_refund);
            t.registered = false;
            changed = true;
        }
        Ok(changed)
    }

    /// After a restart: registers again, in the background, every download that still
    /// has money in TX1 or TX2 (the tower answers "unchanged" if it holds it already) and
    /// every one whose last registration failed.
    pub fn resume_watchtower(self: &Arc<Self>) -> Result<(), RenterError> {
        if self.tower.is_none() {
            return Ok(());
        }
        for record in self.list()? {
            let due = |d: &RentedDownload| {
                d.tx1_outpoint.is_some()
                    && (d.phase.money_locked()
                        || d.watchtower.as_ref().is_some_and(|t| !t.registered))
            };
            if !record.downloads.iter().any(due) {
                continue;
            }
            let renter = self.clone();
            tokio::spawn(async move {
                let id = record.contract_id;
                let _guard = renter.locks.lock(&id).await;
                let Ok(Some(mut record)) = renter.load(&id) else {
                    return;
                };
                for index in 0..record.downloads.len() {
                    if !due(&record.downloads[index]) {
                        continue;
                    }
                    if let Err(e) = renter.sync_tower(&mut record, index).await {
                        tracing::warn!(contract = %hex::encode(id), "watchtower re-registration: {e}");
                    }
                }
            });
        }
        Ok(())
    }

    /// TX2 as the current download's watchtower extracted f from it, if it has.
    pub(super) async fn tx2_from_tower(
        &self,
        record: &mut RentedContract,
        txid: &Txid,
    ) -> Result<Option<Transaction>, RenterError> {
        let Some(tower) = &self.tower else {
            return Ok(None);
        };
        let d = current(record);
        let download = hex::encode(d.download_id);
        let status = match tower.status(&d.download_id).await {
            Ok(Some(status)) => status,
            Ok(None) => return Ok(None),
            Err(e) => {
                tracing::warn!(%download, "cannot ask the watchtower for TX2: {e}");
                return Ok(None);
            }
        };
        let Some(key) = status.key else {
            return Ok(None);
        };
        if key.tx2.compute_txid() != *txid {
            tracing::warn!(%download, "the watchtower's TX2 is not the one this renter signed TX3 for; ignored");
            return Ok(None);
        }
        tracing::info!(%download, tx2 = %txid, "TX2 from the watchtower");
        if let Some(t) = d.watchtower.as_mut() {
            t.tx2_from_tower = true;
        }
        self.store(record)?;
        Ok(Some(key.tx2))
    }

    /// The txid of the refund the watchtower holds for download `d` (TX1's, or TX2's when
    /// `tx2` is set), if that refund is in the mempool or the chain: the tower broadcast it.
    pub(super) async fn tower_refund_seen(
        &self,
        d: &RentedDownload,
        tx2: bool,
    ) -> Result<Option<Transaction>, RenterError> {
        let Some(t) = d.watchtower.as_ref() else {
            return Ok(None);
        };
        let versions = if tx2 {
            t.tx2_versions()
        } else {
            t.tx1_versions()
        };
        for tx in versions {
            if self
                .find_tx(&tx.compute_txid(), d.start_height)
                .await?
                .is_some()
            {
                return Ok(Some(tx));
            }
        }
        Ok(None)
    }

    /// Records a refund the watchtower broadcast.
    pub(super) fn refunded_by_tower(
        &self,
        record: &mut RentedContract,
        index: usize,
        tx: &Transaction,
        base: Value,
    ) -> Result<Value, RenterError> {
        let txid = tx.compute_txid();
        let d = &mut record.downloads[index];
        d.refund_txid = Some(txid);
        d.phase = DownloadPhase::Refunded;
        self.store(record)?;
        Ok(merge(
            base,
            json!({
                "status": "broadcast",
                "broadcast_by": "watchtower",
                "txid": txid.to_string(),
                "amount_sat": tx.output[0].value.to_sat(),
            }),
        ))
    }
}

/// The registration download `d` of contract `contract_id` should have at its watchtower:
/// f's extraction from whatever spends TX1:0, the refunds signed so far, TX2's txid once
/// known, and a rescan from the download's start. `None` before the tower has a record.
fn tower_registration(
    contract_id: [u8; 32],
    d: &RentedDownload,
) -> Result<Option<Registration>, RenterError> {
    let (Some(contract), Some(tx1_outpoint), Some(t)) =
        (d.contract, d.tx1_outpoint, d.watchtower.as_ref())
    else {
        return Ok(None);
    };
    let mut transactions =
        refund_fees::with_bumps(TX1_REFUND_NAME, &t.tx1_refund, &t.tx1_refund_bumps);
    if let Some(tx) = &t.tx2_refund {
        transactions.extend(refund_fees::with_bumps(
            TX2_REFUND_NAME,
            tx,
            &t.tx2_refund_bumps,
        ));
    }
    Ok(Some(Registration {
        id: d.download_id,
        role: WatchRole::Renter,
        extract: Some(ExtractSpec {
            tx1_outpoint,
            farmer_key: contract.farmer_key,
            contract_id,
            tx1_script_pubkey: contract.tx1_script_pubkey().map_err(internal)?,
        }),
        transactions,
        watch_txids: d.tx2_txid.into_iter().collect(),
        rescan_from_height: Some(d.start_height),
        auditor: None,
    }))
}
