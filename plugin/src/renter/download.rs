//! `dstore-download`, renter side: one function per step of PROTOCOL.md 3.3, run by
//! [`Renter::advance`] from the download's stored phase. A new download and one resumed
//! after a crash take the same path. Each step stores the next phase before anything
//! irreversible (TX1's broadcast, sig_R, TX3's signature), and a step run again sends the
//! same bytes as before: the stored TX1, signatures that are deterministic, and the message
//! the farmer already answered gets its stored reply (see `conversation`). So a resumed
//! download never funds a second TX1 and never sends a second, different signature.

use std::path::Path;

use bitcoin::secp256k1::SECP256K1;
use bitcoin::{OutPoint, Transaction};
use dstore_protocol::contract::{txid_from_digest, DownloadContract};
use dstore_protocol::keys::{commit_key, verify_reveal, Role};
use dstore_protocol::market::lease::{contract_tag, verify_lease, LeaseRecord};
use dstore_protocol::messages::{
    Claimed, DownloadOffer, DownloadRequest, FarmerReveal, ProofReady, RenterReveal, Tx1Funded,
    Tx2RenterSig, Tx2Statement, Tx2Unsigned, Tx3RenterSig,
};
use dstore_protocol::seal::{check_sealed_copy, verify_transcript};
use dstore_protocol::zk::{self, Statement};
use rand::RngCore;
use serde_json::{json, Value};

use super::records::{DownloadPhase, RentedContract, RentedDownload};
use super::{
    current, farmer_fault, internal, Renter, RenterError, MAX_TX2_FEE, MIN_T1_MARGIN_AT_FUNDING,
    QUICK_CALL, SLOW_CALL,
};
use crate::progress::reporter;

impl Renter {
    /// Runs the latest download of `record` from its stored phase up to TX3's signature
    /// (the driver then waits for TX2): the one path for a new and a resumed download.
    pub(super) async fn advance(&self, record: &mut RentedContract) -> Result<(), RenterError> {
        loop {
            match current(record).phase {
                DownloadPhase::Offered => {
                    let offer = self.request_offer(record).await?;
                    self.exchange_reveals(record, &offer).await?;
                }
                DownloadPhase::Fetching => {
                    self.fetch_sealed_copy(record).await?;
                    self.fund_tx1(record).await?;
                }
                DownloadPhase::Tx1Funded => {
                    self.broadcast_tx1(record).await?;
                    self.check_tx2(record).await?;
                }
                DownloadPhase::Tx2Signed => {
                    let statement = self.send_tx2_signature(record).await?;
                    let proof = self.prove(record, &statement).await?;
                    self.sign_tx3(record, &statement, &proof)?;
                }
                DownloadPhase::Tx3Signed => return self.send_tx3_signature(record).await,
                DownloadPhase::LnRequested
                | DownloadPhase::LnFetching
                | DownloadPhase::LnPaying
                | DownloadPhase::LnPaid => return self.advance_ln(record).await,
                DownloadPhase::Done
                | DownloadPhase::Fraud
                | DownloadPhase::Refunded
                | DownloadPhase::Failed => return Ok(()),
            }
        }
    }

    /// Adds a new download of `record`'s file for `output`, in phase `offered`: fresh
    /// download keys R and R2 and the commitment to R. Returns its id.
    pub(super) async fn begin_download(
        &self,
        record: &mut RentedContract,
        output: &Path,
    ) -> Result<[u8; 32], RenterError> {
        self.add_download(record, output, DownloadPhase::Offered, None)
            .await
    }

    /// Adds and stores a new download of `record`'s file for `output` in `phase`, with a
    /// fresh id, key index and commitment to R (mode N keeps them unused) and `ln`, the
    /// mode-N state. Returns its id.
    pub(super) async fn add_download(
        &self,
        record: &mut RentedContract,
        output: &Path,
        phase: DownloadPhase,
        ln: Option<super::records::RentedLn>,
    ) -> Result<[u8; 32], RenterError> {
        let tip = self.tip().await?;
        let key_index = self.db.next_key_index().map_err(internal)?;
        let r = self.secret(Role::Download, key_index)?;
        let mut download_id = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut download_id);
        let (commitment, reveal) = commit_key(&mut rand::thread_rng(), &r, &record.contract_id);
        record.downloads.push(RentedDownload {
            download_id,
            key_index,
            phase,
            renter_commitment: commitment,
            renter_reveal: reveal,
            farmer_commitment: None,
            contract: None,
            transcript: None,
            tx1: None,
            tx1_outpoint: None,
            unsigned_tx2: None,
            tx2_txid: None,
            tx3_txid: None,
            start_height: tip,
            output: Some(output.display().to_string()),
            fraud_proof: None,
            refund_txid: None,
            error: None,
            watchtower: None,
            min_tx1_confirmations: 0,
            unreported: false,
            statement: None,
            tx3: None,
            lease: None,
            ln,
        });
        self.store(record)?;
        Ok(download_id)
    }

    /// Step 1a: the commitments; the farmer's terms are checked.
    async fn request_offer(
        &self,
        record: &mut RentedContract,
    ) -> Result<DownloadOffer, RenterError> {
        self.progress
            .phase(&hex::encode(record.contract_id), "key exchange", 0);
        let d = current(record).clone();
        let r2 = self.secret(Role::Tx2, d.key_index)?;
        let request = DownloadRequest {
            download_id: d.download_id,
            renter_commitment: d.renter_commitment,
            renter_tx2_key: r2.public_key(SECP256K1),
        };
        let offer: DownloadOffer = self.exchange_resync(record, &request, QUICK_CALL).await?;
        offer
            .check(record.price, d.start_height)
            .map_err(farmer_fault)?;
        if offer.download_id != d.download_id {
            return Err(farmer_fault("the offer is for another download"));
        }
        let d = current(record);
        d.farmer_commitment = Some(offer.farmer_commitment);
        d.min_tx1_confirmations = offer.min_tx1_confirmations;
        self.store(record)?;
        Ok(offer)
    }

    /// Step 1b: the reveals; the farmer's key and its signed sealing transcript (A, root_E)
    /// are checked against the receipt. Next: `fetching`.
    async fn exchange_reveals(
        &self,
        record: &mut RentedContract,
        offer: &DownloadOffer,
    ) -> Result<(), RenterError> {
        let id = record.contract_id;
        let receipt = record.receipt.ok_or_else(|| internal("no receipt"))?;
        self.progress
            .phase(&hex::encode(id), "sealing", record.ciphertext_length);
        let d = current(record).clone();
        let reveal = RenterReveal {
            reveal: d.renter_reveal,
        };
        let revealed: FarmerReveal = self.exchange(record, &reveal, SLOW_CALL).await?;
        verify_reveal(&offer.farmer_commitment, &revealed.reveal, &id).map_err(farmer_fault)?;
        let (r, r2) = (
            self.secret(Role::Download, d.key_index)?,
            self.secret(Role::Tx2, d.key_index)?,
        );
        let contract = DownloadContract {
            contract_id: id,
            farmer_key: revealed.reveal.pubkey,
            renter_key: r.public_key(SECP256K1),
            renter_tx2_key: r2.public_key(SECP256K1),
            farmer_tx2_key: offer.farmer_tx2_key,
            refund_height: offer.refund_height,
            payout_delay: offer.payout_delay,
            price: record.price,
            tx1_key_order: dstore_protocol::contract::Tx1KeyOrder::RenterFirst,
        };
        let transcript = revealed.transcript;
        verify_transcript(
            &transcript,
            &record.farmer,
            &contract.seal_context(d.download_id),
            &receipt,
        )
        .map_err(farmer_fault)?;
        if transcript.length != receipt.length {
            return Err(farmer_fault("the sealed copy's length differs from C's"));
        }
        if let Some(lease) = &revealed.lease {
            let leased = [contract.tx1_output().map_err(internal)?];
            check_farmer_lease(record, lease, &leased, "TX1")?;
        }
        let d = current(record);
        d.contract = Some(contract);
        d.transcript = Some(transcript);
        d.lease = revealed.lease;
        d.phase = DownloadPhase::Fetching;
        self.store(record)
    }

    /// Steps 1a to 1c of a new download, up to the point where TX1 is due: for a download
    /// funded together with others ([`super::tx1_group`]).
    pub(super) async fn advance_to_funding(
        &self,
        record: &mut RentedContract,
    ) -> Result<(), RenterError> {
        let offer = self.request_offer(record).await?;
        self.exchange_reveals(record, &offer).await?;
        self.fetch_sealed_copy(record).await
    }

    /// Step 1c (PROTOCOL.md 3.1): E is fetched and checked against root_E before any money
    /// moves.
    async fn fetch_sealed_copy(&self, record: &RentedContract) -> Result<(), RenterError> {
        let d = record
            .downloads
            .last()
            .ok_or_else(|| internal("no download"))?;
        let transcript = d.transcript.ok_or_else(|| internal("no transcript"))?;
        self.fetch_checked_sealed_copy(record, transcript.length, move |sealed| {
            check_sealed_copy(&transcript, sealed)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await
    }

    /// Fetches the latest download's sealed copy E (`length` bytes) into its file and runs
    /// `check` (E against root_E, in either mode) on the bytes as they arrive, on a
    /// blocking thread, so hashing overlaps the transfer; E counts only once both the
    /// transfer and the check succeeded, before any money moves.
    pub(super) async fn fetch_checked_sealed_copy<F>(
        &self,
        record: &RentedContract,
        length: u64,
        check: F,
    ) -> Result<(), RenterError>
    where
        F: FnOnce(crate::pipe::BlockingPipe) -> Result<(), String> + Send + 'static,
    {
        let (id, id_hex) = (record.contract_id, hex::encode(record.contract_id));
        let download_id = record
            .downloads
            .last()
            .ok_or_else(|| internal("no download"))?
            .download_id;
        let sealed = self.sealed_file(&download_id);
        self.progress.phase(&id_hex, "downloading", length);
        let (tap, received) = crate::pipe::BlockingPipe::new();
        let checked = tokio::task::spawn_blocking(move || check(received));
        let fetched = self
            .client(record)
            .fetch_sealed(
                &id,
                &download_id,
                &sealed,
                length,
                reporter(&self.progress, &id_hex),
                tap,
            )
            .await;
        // The tap is closed now (dropped with the fetch): the check has seen the end.
        let checked = checked.await.map_err(internal)?;
        fetched?;
        checked.map_err(|e| {
            farmer_fault(format!(
                "the sealed copy fails root_E ({e}); nothing was paid"
            ))
        })
    }

    /// Step 1d: TX1 from the wallet, only while T1 is far enough ahead, stored (not yet
    /// broadcast). Next: `tx1_funded`.
    async fn fund_tx1(&self, record: &mut RentedContract) -> Result<(), RenterError> {
        self.progress
            .phase(&hex::encode(record.contract_id), "funding TX1", 0);
        let contract = agreed(current(record))?;
        check_t1_margin(contract.refund_height, self.tip().await?)?;
        let tx1_output = contract.tx1_output().map_err(internal)?;
        let lease = current(record)
            .lease
            .and_then(|lease| self.lease_output(lease));
        let wallet = self.wallet.clone();
        let funded = tokio::task::spawn_blocking(move || match lease {
            // The leased TX1:0 at index 0, the farmer's record right after it.
            Some(lease) => wallet.fund_outputs(&[tx1_output, lease], None),
            None => wallet.fund_output(tx1_output, None),
        })
        .await
        .map_err(internal)??;
        contract
            .check_tx1(&funded.tx, funded.vout, &funded.prevouts)
            .map_err(internal)?;
        let d = current(record);
        d.tx1_outpoint = Some(OutPoint {
            txid: funded.tx.compute_txid(),
            vout: funded.vout,
        });
        d.tx1 = Some(funded.tx);
        d.phase = DownloadPhase::Tx1Funded;
        self.store(record)?;
        self.stall_if(crate::dev_fault!(self.dev_fault, StallAtTx1Funded))
            .await;
        Ok(())
    }

    /// Step 1e: the watchtower gets TX1's refund (and watches for TX2) before TX1 exists,
    /// then the stored TX1 is broadcast, unless it is out already. A TX1 that never left
    /// (a crash came first) is broadcast only while T1 is still far enough ahead; else the
    /// download fails with nothing paid. A TX1 that also funds other downloads is decided
    /// by one of them at a time, by the earliest T1 among them, so all go on or none does.
    async fn broadcast_tx1(&self, record: &mut RentedContract) -> Result<(), RenterError> {
        let d = current(record).clone();
        let tx1 = d.tx1.clone().ok_or_else(|| internal("no TX1"))?;
        let shared_t1 = self.earliest_t1_of_shared(&tx1)?;
        let _one_at_a_time = match shared_t1 {
            Some(_) => Some(self.jobs.shared_tx1.hold().await),
            None => None,
        };
        let known = self
            .find_tx(&tx1.compute_txid(), d.start_height)
            .await?
            .is_some();
        if !known {
            let own_t1 = agreed(&d)?.refund_height;
            let t1 = shared_t1.map_or(own_t1, |earliest| earliest.min(own_t1));
            if let Err(e) = check_t1_margin(t1, self.tip().await?) {
                current(record).phase = DownloadPhase::Failed;
                self.store(record)?;
                let (wallet, abandoned) = (self.wallet.clone(), tx1.clone());
                let _ = tokio::task::spawn_blocking(move || wallet.release(&abandoned)).await;
                return Err(e);
            }
        }
        let last = record.downloads.len() - 1;
        self.sync_tower(record, last).await?;
        if !known {
            let wallet = self.wallet.clone();
            tokio::task::spawn_blocking(move || wallet.broadcast(&tx1))
                .await
                .map_err(internal)??;
        }
        Ok(())
    }

    /// Step 2a: TX1 announced; the farmer's unsigned TX2 is checked and stored. Next:
    /// `tx2_signed`.
    async fn check_tx2(&self, record: &mut RentedContract) -> Result<(), RenterError> {
        let d = current(record).clone();
        let contract = agreed(&d)?;
        let outpoint = d.tx1_outpoint.ok_or_else(|| internal("no TX1"))?;
        let funded = Tx1Funded {
            outpoint,
            tx1: d.tx1.clone(),
        };
        let unsigned: Tx2Unsigned = self.exchange(record, &funded, QUICK_CALL).await?;
        contract
            .check_unsigned_tx2(&unsigned.tx, outpoint, MAX_TX2_FEE)
            .map_err(farmer_fault)?;
        let d = current(record);
        d.unsigned_tx2 = Some(unsigned.tx);
        d.phase = DownloadPhase::Tx2Signed;
        self.store(record)?;
        self.stall_if(crate::dev_fault!(self.dev_fault, StallAtTx2Signed))
            .await;
        Ok(())
    }

    /// Steps 2-4: sig_R on the stored TX2 (deterministic: the same bytes when sent again)
    /// for the farmer's statement about its signed TX2 (D, r and the template), checked and
    /// stored.
    async fn send_tx2_signature(
        &self,
        record: &mut RentedContract,
    ) -> Result<Statement, RenterError> {
        let d = current(record).clone();
        let contract = agreed(&d)?;
        let unsigned = d.unsigned_tx2.ok_or_else(|| internal("no TX2"))?;
        let r = self.secret(Role::Download, d.key_index)?;
        let sig_r = contract.renter_sign_tx2(&unsigned, &r).map_err(internal)?;
        if let Some(statement) = d.statement {
            return Ok(statement);
        }
        let signature = Tx2RenterSig {
            signature: sig_r.to_vec(),
        };
        let statement: Tx2Statement = self.exchange(record, &signature, QUICK_CALL).await?;
        let statement = statement.statement;
        statement
            .check_against(&contract, &unsigned, &sig_r)
            .map_err(|e| farmer_fault(format!("the TX2 statement: {e}")))?;
        current(record).statement = Some(statement.clone());
        self.store(record)?;
        Ok(statement)
    }

    /// Steps 5-6a (PROTOCOL.md 3.4, 3.5): the proof under this renter's own CRS, verified.
    async fn prove(
        &self,
        record: &mut RentedContract,
        statement: &Statement,
    ) -> Result<ProofReady, RenterError> {
        self.progress
            .phase(&hex::encode(record.contract_id), "proving", 0);
        let (crs, crs_hash) = self.crs_for(&statement.shape).await?;
        let proof = self.get_proof(record, &crs, crs_hash).await?;
        let (statement, proof_bytes) = (statement.clone(), proof.proof.clone());
        tokio::task::spawn_blocking(move || {
            let proof = zk::deserialize_proof(&proof_bytes)?;
            zk::verify(&crs.vk, &statement, &proof)
        })
        .await
        .map_err(internal)?
        .map_err(|e| farmer_fault(format!("the proof does not verify ({e}); not paying")))?;
        Ok(proof)
    }

    /// Step 6b: TX3 spending txid = SHA256(D), stored unsigned with TX2's txid before its
    /// signature leaves. Next: `tx3_signed`.
    fn sign_tx3(
        &self,
        record: &mut RentedContract,
        statement: &Statement,
        proof: &ProofReady,
    ) -> Result<(), RenterError> {
        let d = current(record).clone();
        let contract = agreed(&d)?;
        let tx2_txid = txid_from_digest(&statement.digest);
        let value = tx2_value(record.price, &contract, &d)?;
        let tx3 = contract
            .unsigned_tx3(tx2_txid, value, proof.tx3_fee, proof.payout_script.clone())
            .map_err(farmer_fault)?;
        let d = current(record);
        d.tx2_txid = Some(tx2_txid);
        d.tx3 = Some(tx3);
        d.phase = DownloadPhase::Tx3Signed;
        self.store(record)
    }

    /// Step 6c: TX2's refund goes to the watchtower, then TX3's signature (deterministic,
    /// from the stored TX3) to the farmer, who may now claim by broadcasting TX2. A
    /// download stored before TX3 was kept (an older version) only waits.
    async fn send_tx3_signature(&self, record: &mut RentedContract) -> Result<(), RenterError> {
        let last = record.downloads.len() - 1;
        self.sync_tower(record, last).await?;
        let d = current(record).clone();
        let (Some(tx3), Some(tx2_txid)) = (d.tx3.clone(), d.tx2_txid) else {
            return Ok(());
        };
        let contract = agreed(&d)?;
        let value = tx2_value(record.price, &contract, &d)?;
        let r2 = self.secret(Role::Tx2, d.key_index)?;
        let sig3 = contract.sign_tx3(&tx3, value, &r2).map_err(internal)?;
        self.progress
            .phase(&hex::encode(record.contract_id), "waiting for TX2", 0);
        let signature = Tx3RenterSig {
            signature: sig3.to_vec(),
        };
        let claimed = self
            .exchange::<_, Claimed>(record, &signature, SLOW_CALL)
            .await;
        match &claimed {
            Ok(c) if c.tx2 == tx2_txid => current(record).tx3_txid = Some(c.tx3),
            Ok(_) => tracing::warn!("the farmer's claim names another TX2"),
            Err(e) => tracing::warn!("no claim from the farmer ({e}); watching the chain"),
        }
        self.store(record)
    }

    /// The output carrying the farmer's lease record, which goes right after the leased
    /// outputs (TX_A's O_0..O_{N−1}, or TX1:0). Test-only faults leave it out or make it
    /// name another contract, for the farmer's check to catch.
    pub(super) fn lease_output(&self, lease: LeaseRecord) -> Option<bitcoin::TxOut> {
        if crate::dev_fault!(self.dev_fault, LeaseOmit) {
            tracing::warn!("dev fault lease-omit: funding without the farmer's lease record");
            return None;
        }
        let mut lease = lease;
        if crate::dev_fault!(self.dev_fault, LeaseWrongContract) {
            tracing::warn!(
                "dev fault lease-wrong-contract: the lease record names another contract"
            );
            lease.contract_tag = contract_tag(&[0xEE; 32]);
        }
        Some(lease.txout())
    }

    /// With a test-only stall fault, waits for ever right here (the test kills the process).
    pub(super) async fn stall_if(&self, stall: bool) {
        if stall {
            tracing::warn!("dev fault: the renter stalls here until it is killed");
            std::future::pending::<()>().await;
        }
    }
}

/// The farmer's lease record for `what` (TX_A or TX1) is its own, for this contract and
/// over exactly the outputs `leased` the renter is about to fund.
pub(super) fn check_farmer_lease(
    record: &RentedContract,
    lease: &LeaseRecord,
    leased: &[bitcoin::TxOut],
    what: &str,
) -> Result<(), RenterError> {
    if lease.contract_tag != contract_tag(&record.contract_id) {
        return Err(farmer_fault(format!(
            "the farmer's lease record for {what} is for another contract"
        )));
    }
    verify_lease(lease, &record.farmer, leased)
        .map_err(|e| farmer_fault(format!("the farmer's lease record for {what}: {e}")))
}

/// The download contract agreed for download `d` (known from phase `fetching` on).
fn agreed(d: &RentedDownload) -> Result<DownloadContract, RenterError> {
    d.contract.ok_or_else(|| internal("no contract"))
}

/// TX2:0's value: the price less the fee of the TX2 download `d` signed.
fn tx2_value(
    price: bitcoin::Amount,
    contract: &DownloadContract,
    d: &RentedDownload,
) -> Result<bitcoin::Amount, RenterError> {
    let unsigned: &Transaction = d.unsigned_tx2.as_ref().ok_or_else(|| internal("no TX2"))?;
    let tx2_fee = price
        .checked_sub(unsigned.output[0].value)
        .ok_or_else(|| internal("TX2 pays more than the price"))?;
    contract.tx2_value(tx2_fee).map_err(internal)
}

/// What `dstore-download` returns for finished download `d` of `record`.
pub(super) fn done_json(record: &RentedContract, d: &RentedDownload) -> Value {
    if let Some(ln) = &d.ln {
        return super::ln_download::ln_done_json(record, d, ln);
    }
    json!({
        "contract_id": hex::encode(record.contract_id),
        "download_id": hex::encode(d.download_id),
        "status": "done",
        "mode": "chain",
        "phase": d.phase,
        "output": d.output,
        "bytes": record.plaintext_length,
        "price_sat": record.price.to_sat(),
        "tx1": d.tx1_outpoint.map(|o| o.txid.to_string()),
        "tx1_vout": d.tx1_outpoint.map(|o| o.vout),
        "tx2": d.tx2_txid.map(|t| t.to_string()),
        "tx3": d.tx3_txid.map(|t| t.to_string()),
    })
}

/// TX1 may be funded at chain height `tip` for a download whose T1 is `refund_height`.
pub(super) fn check_t1_margin(refund_height: u32, tip: u32) -> Result<(), RenterError> {
    let ahead = refund_height.saturating_sub(tip);
    if ahead < MIN_T1_MARGIN_AT_FUNDING {
        return Err(RenterError::TooLate(format!(
            "T1 (height {refund_height}) is only {ahead} blocks above the tip ({tip}); TX1 is funded only at least {MIN_T1_MARGIN_AT_FUNDING} blocks before T1, so nothing was paid: start a new download"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx1_is_funded_only_well_before_t1() {
        assert!(check_t1_margin(1_000 + 144, 1_000).is_ok());
        assert!(check_t1_margin(1_000 + MIN_T1_MARGIN_AT_FUNDING, 1_000).is_ok());
        let late = check_t1_margin(1_000 + MIN_T1_MARGIN_AT_FUNDING - 1, 1_000).unwrap_err();
        assert!(late.to_string().contains("nothing was paid"), "{late}");
        assert!(check_t1_margin(900, 1_000).is_err(), "T1 already passed");
    }
}
