//! One TX1 for several downloads (issue 18): a file download first runs each of its K
//! shard downloads up to the point where TX1 is due ([`Renter::prepare_download`]: offer,
//! reveals, the farmer's lease record, the sealed copy fetched and checked, nothing paid),
//! then funds them together ([`Renter::fund_together`]): one TX1 whose outputs are, for
//! each download in order, its contract output and, right after it, its farmer's lease
//! record when it needs one; the change comes last. TX1, each download's outpoint and phase
//! `tx1_funded` go into every download record in one atomic write before anything else;
//! then every download's TX1 refund goes to the watchtower, then TX1 is broadcast once.
//! Each download then goes on through the ordinary driver from `tx1_funded` (it finds TX1
//! out already). A download that cannot be funded (its farmer went away, its T1 is too
//! close) is left out and fails with nothing paid.
//!
//! A shared TX1 that a crash kept from leaving is broadcast by whichever of its downloads
//! resumes first (see `broadcast_tx1`): one at a time ([`SharedTx1Lock`]) and only while
//! the earliest T1 of all the downloads it pays is far enough ahead, so either every
//! download of the group goes on or none does.

use std::path::Path;

use bitcoin::{OutPoint, Transaction, TxOut};

use super::download::check_t1_margin;
use super::records::{DownloadPhase, RentedContract, RentedDownload, StoragePhase};
use super::{current, internal, Renter, RenterError};
use crate::db;

/// Serialises the broadcast decision of shared TX1s (margin check, then broadcast), so
/// two downloads of one TX1 resuming together cannot decide differently.
#[derive(Default)]
pub struct SharedTx1Lock(tokio::sync::Mutex<()>);

impl SharedTx1Lock {
    pub(super) async fn hold(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.0.lock().await
    }
}

/// Where preparing a contract's download left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepared {
    /// A new download waits, its sealed copy checked, for TX1.
    Ready { download_id: [u8; 32] },
    /// The contract's latest download has money locked, an outcome to report, or a job
    /// running: the ordinary driver takes it from there.
    Driver,
}

impl Renter {
    /// Runs a new download of contract `id` for `output` up to the point where TX1 is
    /// due. A step that fails marks the download failed (nothing was paid).
    pub async fn prepare_download(
        &self,
        id: &[u8; 32],
        output: &Path,
    ) -> Result<Prepared, RenterError> {
        let output = super::unseal::absolute(output)?;
        if self.jobs.running(id) {
            return Ok(Prepared::Driver);
        }
        let _guard = self.locks.lock(id).await;
        let mut record = self.existing(id)?;
        if record.phase != StoragePhase::Stored {
            return Err(RenterError::Invalid("the file is not stored yet".into()));
        }
        if !super::driver::starts_new(&record)? {
            return Ok(Prepared::Driver);
        }
        let download_id = self.begin_download(&mut record, &output).await?;
        let prepared = self.advance_to_funding(&mut record).await;
        self.progress.finish(&hex::encode(id));
        if let Err(e) = prepared {
            self.fail_unfunded(&mut record, &e);
            return Err(e);
        }
        Ok(Prepared::Ready { download_id })
    }

    /// Funds the prepared downloads `group` (contract id, download id) from one TX1 and
    /// broadcasts it; for each, in order, its TX1 outpoint or why it was left out (then it
    /// failed with nothing paid).
    pub async fn fund_together(
        &self,
        group: &[([u8; 32], [u8; 32])],
    ) -> Vec<Result<OutPoint, String>> {
        let mut ids: Vec<[u8; 32]> = group.iter().map(|(id, _)| *id).collect();
        ids.sort();
        ids.dedup();
        let mut guards = Vec::with_capacity(ids.len());
        for id in &ids {
            guards.push(self.locks.lock(id).await);
        }
        let tip = match self.tip().await {
            Ok(tip) => tip,
            Err(e) => return group.iter().map(|_| Err(e.to_string())).collect(),
        };
        let mut outcomes: Vec<Result<OutPoint, String>> = group
            .iter()
            .map(|_| Err("left out of the shared TX1".to_string()))
            .collect();
        let mut members: Vec<(usize, RentedContract)> = Vec::new();
        for (position, (id, download_id)) in group.iter().enumerate() {
            match self.fundable(id, download_id, tip) {
                Ok(record) => members.push((position, record)),
                Err(e) => outcomes[position] = Err(e.to_string()),
            }
        }
        if members.is_empty() {
            return outcomes;
        }
        match self.fund_members(&mut members).await {
            Ok(outpoints) => {
                for ((position, _), outpoint) in members.iter().zip(outpoints) {
                    outcomes[*position] = Ok(outpoint);
                }
            }
            Err(e) => {
                let why = format!("TX1 could not be funded, nothing was paid: {e}");
                for (position, record) in members.iter_mut() {
                    self.fail_unfunded(record, &why);
                    outcomes[*position] = Err(why.clone());
                }
            }
        }
        drop(guards);
        outcomes
    }

    /// Contract `id` (its lock held) if its latest download is still `download_id`, ready
    /// for TX1 and far enough from T1; else the download fails with nothing paid.
    fn fundable(
        &self,
        id: &[u8; 32],
        download_id: &[u8; 32],
        tip: u32,
    ) -> Result<RentedContract, RenterError> {
        let mut record = self.existing(id)?;
        let Some(d) = record.downloads.last() else {
            return Err(internal("no download"));
        };
        if d.download_id != *download_id || d.phase != DownloadPhase::Fetching {
            return Err(RenterError::Invalid(format!(
                "download {} was superseded before TX1",
                hex::encode(download_id)
            )));
        }
        let contract = d.contract.ok_or_else(|| internal("no contract"))?;
        if let Err(e) = check_t1_margin(contract.refund_height, tip) {
            self.fail_unfunded(&mut record, &e);
            return Err(e);
        }
        Ok(record)
    }

    /// Builds and checks the shared TX1, stores it into every member's download (one
    /// atomic write), hands every TX1 refund to the watchtower, then broadcasts TX1. Once
    /// TX1 is stored the members are funded: a tower or broadcast failure is only logged
    /// (each download's driver registers and broadcasts again as it goes on).
    async fn fund_members(
        &self,
        members: &mut [(usize, RentedContract)],
    ) -> Result<Vec<OutPoint>, RenterError> {
        let (outputs, vouts) = self.shared_outputs(members)?;
        let wallet = self.wallet.clone();
        let funded = tokio::task::spawn_blocking(move || wallet.fund_outputs(&outputs, None))
            .await
            .map_err(internal)??;
        let tx1 = funded.tx;
        let checked = members
            .iter()
            .zip(&vouts)
            .try_for_each(|((_, record), vout)| {
                let contract = latest(record)?
                    .contract
                    .ok_or_else(|| internal("no contract"))?;
                contract
                    .check_tx1(&tx1, *vout, &funded.prevouts)
                    .map_err(internal)
            });
        if let Err(e) = checked.and_then(|_| self.store_shared(members, &tx1, &vouts)) {
            self.wallet.release(&tx1);
            return Err(e);
        }
        let txid = tx1.compute_txid();
        tracing::info!(%txid, downloads = members.len(), "one TX1 funds several downloads: stored, not broadcast yet");
        self.stall_if(crate::dev_fault!(self.dev_fault, StallAtTx1Funded))
            .await;
        for (_, record) in members.iter_mut() {
            let last = record.downloads.len() - 1;
            if let Err(e) = self.sync_tower(record, last).await {
                tracing::warn!(contract = %hex::encode(record.contract_id), "watchtower: {e}");
            }
        }
        let wallet = self.wallet.clone();
        let sent = tx1.clone();
        match tokio::task::spawn_blocking(move || wallet.broadcast(&sent)).await {
            Ok(Ok(_)) => tracing::info!(%txid, "the shared TX1 is broadcast"),
            Ok(Err(e)) => {
                tracing::warn!(%txid, "the shared TX1's broadcast failed ({e}); each download tries again")
            }
            Err(e) => {
                tracing::warn!(%txid, "the shared TX1's broadcast failed ({e}); each download tries again")
            }
        }
        Ok(vouts
            .into_iter()
            .map(|vout| OutPoint { txid, vout })
            .collect())
    }

    /// The shared TX1's outputs: each member's contract output, then its farmer's lease
    /// record when it has one; and the index of each member's contract output.
    fn shared_outputs(
        &self,
        members: &[(usize, RentedContract)],
    ) -> Result<(Vec<TxOut>, Vec<u32>), RenterError> {
        let mut outputs = Vec::new();
        let mut vouts = Vec::with_capacity(members.len());
        for (_, record) in members {
            let d = latest(record)?;
            let contract = d.contract.ok_or_else(|| internal("no contract"))?;
            vouts.push(u32::try_from(outputs.len()).map_err(internal)?);
            outputs.push(contract.tx1_output().map_err(internal)?);
            if let Some(lease) = d.lease.and_then(|lease| self.lease_output(lease)) {
                outputs.push(lease);
            }
        }
        Ok((outputs, vouts))
    }

    /// TX1, each member's outpoint and phase `tx1_funded`, into every member's record in
    /// one synced write.
    fn store_shared(
        &self,
        members: &mut [(usize, RentedContract)],
        tx1: &Transaction,
        vouts: &[u32],
    ) -> Result<(), RenterError> {
        let txid = tx1.compute_txid();
        let mut batch = db::Batch::default();
        for ((_, record), vout) in members.iter_mut().zip(vouts) {
            let d = current(record);
            d.tx1 = Some(tx1.clone());
            d.tx1_outpoint = Some(OutPoint { txid, vout: *vout });
            d.phase = DownloadPhase::Tx1Funded;
            batch
                .put(&db::key(db::prefix::RENTED, &record.contract_id), &*record)
                .map_err(internal)?;
        }
        self.db.write(batch).map_err(internal)
    }

    /// Records that `record`'s latest download failed before TX1 (nothing was paid). The
    /// file download that ran it receives the error itself, so no later call owes it.
    fn fail_unfunded(&self, record: &mut RentedContract, error: &dyn std::fmt::Display) {
        let d = current(record);
        if matches!(d.phase, DownloadPhase::Offered | DownloadPhase::Fetching) {
            d.phase = DownloadPhase::Failed;
        }
        d.error = Some(error.to_string());
        d.unreported = false;
        if let Err(e) = self.store(record) {
            tracing::warn!(contract = %hex::encode(record.contract_id), "cannot record the failed download: {e}");
        }
    }

    /// The earliest T1 among every download, of any contract, that `tx1` funds (the
    /// margin a shared TX1 is broadcast by), or `None` when `tx1` funds one contract.
    pub(super) fn earliest_t1_of_shared(
        &self,
        tx1: &Transaction,
    ) -> Result<Option<u32>, RenterError> {
        if !pays_several_contracts(tx1) {
            return Ok(None);
        }
        let txid = tx1.compute_txid();
        let paid = |d: &RentedDownload| d.tx1_outpoint.is_some_and(|o| o.txid == txid);
        Ok(self
            .list()?
            .iter()
            .flat_map(|record| record.downloads.iter())
            .filter(|d| paid(d))
            .filter_map(|d| d.contract.map(|c| c.refund_height))
            .min())
    }
}

/// Whether `tx1` has several contract outputs (P2SH; the wallet's change is P2WPKH).
fn pays_several_contracts(tx1: &Transaction) -> bool {
    tx1.output
        .iter()
        .filter(|o| o.script_pubkey.is_p2sh())
        .count()
        > 1
}

fn latest(record: &RentedContract) -> Result<&RentedDownload, RenterError> {
    record
        .downloads
        .last()
        .ok_or_else(|| internal("no download"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash;
    use bitcoin::{Amount, ScriptBuf};

    fn tx_paying(scripts: Vec<ScriptBuf>) -> Transaction {
        Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: bitcoin::absolute::LockTime::ZERO,
            input: vec![],
            output: scripts
                .into_iter()
                .map(|script_pubkey| TxOut {
                    value: Amount::from_sat(10_000),
                    script_pubkey,
                })
                .collect(),
        }
    }

    #[test]
    fn a_tx1_is_shared_when_it_pays_several_contract_outputs() {
        let contract = |i: u8| ScriptBuf::new_p2sh(&bitcoin::ScriptHash::from_byte_array([i; 20]));
        let change = ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_byte_array([9; 20]));
        let lease = ScriptBuf::new_op_return([0xAA; 32]);
        assert!(!pays_several_contracts(&tx_paying(vec![
            contract(1),
            lease.clone(),
            change.clone()
        ])));
        assert!(pays_several_contracts(&tx_paying(vec![
            contract(1),
            lease.clone(),
            contract(2),
            lease,
            change
        ])));
    }
}
