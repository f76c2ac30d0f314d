//! The farmer's half of a download (PROTOCOL.md 3.3), one function per step. Each step
//! runs only from the stored phase before it ([`FarmedContract::download_in`]) and
//! returns the record in the next phase, which the exchange stores before replying:
//!
//! | renter message            | from phase    | step                           | to phase       |
//! |---------------------------|---------------|--------------------------------|----------------|
//! | `download_request`        | not in flight | [`Farmer::offer_download`]     | `offered`      |
//! | `renter_reveal`           | `offered`     | [`Farmer::reveal_and_seal`]    | `revealed`     |
//! | `tx1_funded`              | `revealed`    | [`Farmer::check_tx1`]          | `tx2_offered`  |
//! | `tx2_renter_sig`          | `tx2_offered` | [`Farmer::sign_tx2`]           | `tx2_signed`   |
//! | CRS upload, `crs_offer`   | `tx2_signed`  | [`super::crs`] (check, prove)  | `proved`       |
//! | `tx3_renter_sig`          | `proved`      | [`Farmer::take_tx3_signature`] | `awaiting_tx1` |
//!
//! From `awaiting_tx1` the claim watcher ([`super::claim`]) decides when TX2 and TX3 go
//! out. TX1 and the TX3 signature are refused once the tip reached T1 minus
//! `--tx2-broadcast-margin-blocks`: the download is then abandoned and f stays secret.

use bitcoin::secp256k1::SECP256K1;
use bitcoin::{Amount, OutPoint, Transaction};
use dstore_protocol::contract::DownloadContract;
use dstore_protocol::keys::{commit_key, verify_reveal, Role};
use dstore_protocol::market::lease::{check_lease_in, sign_lease, LeaseRecord};
use dstore_protocol::messages::{
    Claimed, DownloadOffer, DownloadRequest, FarmerReveal, RenterReveal, Tx1Funded, Tx2RenterSig,
    Tx2Statement, Tx2Unsigned, Tx3RenterSig,
};
use dstore_protocol::nonce_reuse::farmer_sign_tx2;
use dstore_protocol::zk::Statement;
use serde_json::json;

use super::records::{FarmedContract, FarmedDownload, FarmerPhase};
use super::{internal, Farmer, FarmerError, Step, PAYOUT_DELAY, REFUND_MARGIN, TX2_FEE, TX3_FEE};

impl Farmer {
    /// Step 0: offers a download of a stored file: F committed, F2, the price and T1.
    pub(super) async fn offer_download(
        &self,
        mut record: FarmedContract,
        request: DownloadRequest,
    ) -> Result<Step<DownloadOffer>, FarmerError> {
        if record.receipt.is_none() {
            return Err(FarmerError::WrongPhase(
                "nothing is stored for this contract yet",
            ));
        }
        if record.download.as_ref().is_some_and(|d| d.in_flight()) {
            return Err(FarmerError::WrongPhase(
                "another download of this contract is in flight",
            ));
        }
        let key_index = self.db.next_key_index().map_err(internal)?;
        let f = self.secret(Role::Download, key_index)?;
        let f2 = self.secret(Role::Tx2, key_index)?;
        let (commitment, reveal) = commit_key(&mut rand::thread_rng(), &f, &record.contract_id);
        let offer = DownloadOffer {
            download_id: request.download_id,
            farmer_commitment: commitment,
            farmer_tx2_key: f2.public_key(SECP256K1),
            price: record.price,
            refund_height: self.tip().await?.saturating_add(REFUND_MARGIN),
            payout_delay: PAYOUT_DELAY,
            min_tx1_confirmations: self.config.min_tx1_confirmations,
        };
        record.download = Some(FarmedDownload::offered(key_index, &request, &offer, reveal));
        Ok(Step {
            record,
            reply: offer,
        })
    }

    /// Step 1's start, from phase `offered`: checks the renter's reveal of R, agrees the
    /// download contract, and seals E for the renter to fetch and check before TX1.
    pub(super) async fn reveal_and_seal(
        &self,
        mut record: FarmedContract,
        message: RenterReveal,
    ) -> Result<Step<FarmerReveal>, FarmerError> {
        let id = record.contract_id;
        let download = record.download_in(FarmerPhase::Offered)?;
        verify_reveal(&download.renter_commitment, &message.reveal, &id)
            .map_err(|e| FarmerError::Invalid(format!("renter reveal: {e}")))?;
        let contract = download.contract_with(id, record.price, message.reveal.pubkey);
        let download_id = download.download_id;
        let transcript = self
            .seal_copy(&id, &download_id, contract.seal_context(download_id))
            .await?;
        let lease = self.tx1_lease(&record, &contract)?;
        let download = record.download.as_mut().expect("checked above");
        download.contract = Some(contract);
        download.transcript = Some(transcript);
        download.phase = FarmerPhase::Revealed;
        let reply = FarmerReveal {
            reveal: download.farmer_reveal,
            transcript,
            lease,
        };
        Ok(Step { record, reply })
    }

    /// Steps 1 and 2, from phase `revealed`: TX1 pays the contract, and T1 is still far
    /// enough away; the farmer answers with the unsigned TX2 spending it.
    pub(super) async fn check_tx1(
        &self,
        mut record: FarmedContract,
        message: Tx1Funded,
    ) -> Result<Step<Tx2Unsigned>, FarmerError> {
        let download = record.download_in(FarmerPhase::Revealed)?;
        let contract = download.agreed()?;
        // Too close to T1, TX2 could never go out: refuse before anything is signed.
        self.refuse_if_late(&record).await?;
        if crate::dev_fault!(self.config.dev_fault, ExitAfterTx1) {
            tracing::warn!("dev fault exit-after-tx1: the farmer disappears");
            std::process::exit(1);
        }
        self.check_tx1_output(&message.outpoint, &contract.tx1_output().map_err(internal)?)
            .await?;
        let leased = self.check_tx1_lease(&record, &contract, &message)?;
        let unsigned = contract
            .unsigned_tx2(message.outpoint, TX2_FEE)
            .map_err(internal)?;
        if leased {
            record.leased_tx1 = Some(message.outpoint);
        }
        let download = record.download.as_mut().expect("checked above");
        download.tx1_outpoint = Some(message.outpoint);
        download.unsigned_tx2 = Some(unsigned.clone());
        download.phase = FarmerPhase::Tx2Offered;
        Ok(Step {
            record,
            reply: Tx2Unsigned { tx: unsigned },
        })
    }

    /// The lease record for this download's TX1:0 if it must carry one (issue 17): the
    /// first TX1 of a contract without audits (TX_A carries the record otherwise).
    fn tx1_lease(
        &self,
        record: &FarmedContract,
        contract: &DownloadContract,
    ) -> Result<Option<LeaseRecord>, FarmerError> {
        if !needs_tx1_lease(record) {
            return Ok(None);
        }
        let leased = [contract.tx1_output().map_err(internal)?];
        Ok(Some(sign_lease(
            &self.identity,
            &record.contract_id,
            &leased,
        )))
    }

    /// A TX1 that must carry the lease record has it, this farmer's and for this contract,
    /// right after the contract output at `outpoint.vout` (index 1 after TX1:0 when TX1
    /// funds this download alone; a TX1 funding several downloads has each contract output
    /// followed by its own farmer's record). Returns whether this TX1 is the leased one.
    fn check_tx1_lease(
        &self,
        record: &FarmedContract,
        contract: &DownloadContract,
        message: &Tx1Funded,
    ) -> Result<bool, FarmerError> {
        if !needs_tx1_lease(record) {
            return Ok(false);
        }
        let vout = message.outpoint.vout as usize;
        let refuse = |why: String| {
            FarmerError::Invalid(format!(
                "the first TX1 of a contract without audits must carry this farmer's lease record at output {}, right after the contract output: {why}",
                vout.saturating_add(1)
            ))
        };
        let tx1 = message
            .tx1
            .as_ref()
            .ok_or_else(|| refuse("TX1 itself was not sent".into()))?;
        if tx1.compute_txid() != message.outpoint.txid {
            return Err(refuse(format!(
                "TX1 is not the transaction of {}",
                message.outpoint
            )));
        }
        if tx1.output.get(vout) != Some(&contract.tx1_output().map_err(internal)?) {
            return Err(refuse(format!("output {vout} does not pay the contract")));
        }
        let (identity, _) = self.identity.x_only_public_key();
        check_lease_in(&from_output(tx1, vout), &identity, &record.contract_id, 1)
            .map_err(|e| refuse(e.to_string()))?;
        Ok(true)
    }

    /// TX1's contract output exists (in the mempool or the chain) and pays as agreed.
    async fn check_tx1_output(
        &self,
        outpoint: &OutPoint,
        expected: &bitcoin::TxOut,
    ) -> Result<(), FarmerError> {
        let found = self
            .bitcoind
            .call(
                "gettxout",
                json!([outpoint.txid.to_string(), outpoint.vout, true]),
            )
            .await
            .map_err(internal)?;
        let script = found["scriptPubKey"]["hex"].as_str().unwrap_or_default();
        let value = found["value"]
            .as_f64()
            .and_then(|btc| Amount::from_btc(btc).ok());
        if script != expected.script_pubkey.to_hex_string() || value != Some(expected.value) {
            return Err(FarmerError::Invalid(format!(
                "TX1 output {outpoint} is unknown or does not pay the contract"
            )));
        }
        Ok(())
    }

    /// Steps 3 and 4, from phase `tx2_offered`: signs TX2 with f and f + c under one
    /// nonce (kept secret) and reveals only D and r, as the proof's statement.
    pub(super) async fn sign_tx2(
        &self,
        mut record: FarmedContract,
        message: Tx2RenterSig,
    ) -> Result<Step<Tx2Statement>, FarmerError> {
        let download = record.download_in(FarmerPhase::Tx2Offered)?;
        let contract = download.agreed()?;
        let unsigned = download
            .unsigned_tx2
            .clone()
            .ok_or(FarmerError::WrongPhase("no TX2"))?;
        let sig_r = bitcoin::ecdsa::Signature::from_slice(&message.signature)
            .map_err(|e| FarmerError::Invalid(format!("renter TX2 signature: {e}")))?;
        let f = self.secret(Role::Download, download.key_index)?;
        let template = farmer_sign_tx2(&mut rand::thread_rng(), &contract, &unsigned, &f, &sig_r)
            .map_err(|e| FarmerError::Invalid(format!("renter TX2 signature: {e}")))?;
        let (statement, _, _) = Statement::of(&template).map_err(internal)?;
        let download = record.download.as_mut().expect("checked above");
        download.template = Some(template);
        download.phase = FarmerPhase::Tx2Signed;
        Ok(Step {
            record,
            reply: Tx2Statement { statement },
        })
    }

    /// Steps 6 and 7, from phase `proved`: the renter's TX3 signature completes TX3; unless
    /// the tip already reached T1 minus the margin (then the download is abandoned), TX2
    /// and TX3 are stored and handed to the claim watcher.
    pub(super) async fn take_tx3_signature(
        &self,
        mut record: FarmedContract,
        message: Tx3RenterSig,
    ) -> Result<Step<Claimed>, FarmerError> {
        let download = record.download_in(FarmerPhase::Proved)?;
        let tx3 = self.complete_tx3(download, &message)?;
        // Too close to T1, TX2 could only reveal f late: abandon instead.
        self.refuse_if_late(&record).await?;
        let download = record.download.as_mut().expect("checked above");
        download.tx3 = Some(tx3);
        download.phase = FarmerPhase::AwaitingTx1;
        let reply = self.hand_over_claim(&mut record).await?;
        Ok(Step { record, reply })
    }

    /// TX3, signed by both: the renter's signature is checked against the TX3 this
    /// farmer builds itself (TX2's output to its payout script, less [`TX3_FEE`]).
    fn complete_tx3(
        &self,
        download: &FarmedDownload,
        message: &Tx3RenterSig,
    ) -> Result<Transaction, FarmerError> {
        let contract = download.agreed()?;
        let template = download.signed_tx2()?;
        let payout = download
            .payout_script
            .clone()
            .ok_or(FarmerError::WrongPhase("no payout"))?;
        let value = contract.tx2_value(TX2_FEE).map_err(internal)?;
        let unsigned = contract
            .unsigned_tx3(template.txid, value, TX3_FEE, payout)
            .map_err(internal)?;
        let renter_sig = bitcoin::ecdsa::Signature::from_slice(&message.signature)
            .map_err(|e| FarmerError::Invalid(format!("renter TX3 signature: {e}")))?;
        contract
            .verify_tx3_signature(&unsigned, value, &contract.renter_tx2_key, &renter_sig)
            .map_err(|e| FarmerError::Invalid(format!("renter TX3 signature: {e}")))?;
        let f2 = self.secret(Role::Tx2, download.key_index)?;
        let farmer_sig = contract.sign_tx3(&unsigned, value, &f2).map_err(internal)?;
        contract
            .finalize_tx3(&unsigned, renter_sig, farmer_sig)
            .map_err(internal)
    }

    /// The id of contract `id`'s current download (what its sealed copy and CRS requests
    /// are signed for).
    pub fn current_download_id(&self, id: &[u8; 32]) -> Result<[u8; 32], FarmerError> {
        let record = self.existing(id)?;
        if let Some(ln) = record.current_ln_download() {
            return Ok(ln.download_id);
        }
        record
            .download
            .as_ref()
            .map(|d| d.download_id)
            .ok_or(FarmerError::WrongPhase("no download is under way"))
    }
}

/// `tx1` from output `vout` on: the contract output there becomes output 0, so the record
/// right after it is checked as in a TX1 that funds this download alone (leasing exactly
/// that one output).
fn from_output(tx1: &Transaction, vout: usize) -> Transaction {
    Transaction {
        output: tx1.output.get(vout..).unwrap_or_default().to_vec(),
        ..tx1.clone()
    }
}

/// Whether `record`'s next TX1 is the one its lease record goes in: no audits (TX_A would
/// carry it) and no TX1 leased yet.
fn needs_tx1_lease(record: &FarmedContract) -> bool {
    record.audit.is_none() && record.leased_tx1.is_none()
}

impl FarmedContract {
    /// The current download, which must be in `phase`.
    pub(super) fn download_in(&self, phase: FarmerPhase) -> Result<&FarmedDownload, FarmerError> {
        match &self.download {
            Some(d) if d.phase == phase => Ok(d),
            Some(d) if d.phase == FarmerPhase::Aborted => {
                Err(FarmerError::WrongPhase("this download was aborted"))
            }
            Some(d) if d.phase == FarmerPhase::Abandoned => Err(FarmerError::WrongPhase(
                "this download was abandoned (too close to T1 for TX2)",
            )),
            _ => Err(FarmerError::WrongPhase(phase.expected_message())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash;
    use bitcoin::secp256k1::{Keypair, SecretKey};
    use bitcoin::{ScriptBuf, TxOut};

    fn contract_output(seed: u8) -> TxOut {
        TxOut {
            value: Amount::from_sat(50_000 + u64::from(seed)),
            script_pubkey: ScriptBuf::new_p2sh(&bitcoin::ScriptHash::from_byte_array([seed; 20])),
        }
    }

    #[test]
    fn a_shared_tx1_has_each_lease_record_right_after_its_contract_output() {
        let farmers: Vec<Keypair> = [7u8, 8]
            .iter()
            .map(|s| {
                Keypair::from_secret_key(SECP256K1, &SecretKey::from_slice(&[*s; 32]).unwrap())
            })
            .collect();
        let contracts = [[1u8; 32], [2u8; 32]];
        let mut output = Vec::new();
        for (i, farmer) in farmers.iter().enumerate() {
            let paid = contract_output(i as u8);
            output.push(paid.clone());
            output.push(sign_lease(farmer, &contracts[i], &[paid]).txout());
        }
        output.push(contract_output(9));
        let tx1 = Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: bitcoin::absolute::LockTime::ZERO,
            input: vec![],
            output,
        };
        for (i, farmer) in farmers.iter().enumerate() {
            let (identity, _) = farmer.x_only_public_key();
            let vout = 2 * i;
            check_lease_in(&from_output(&tx1, vout), &identity, &contracts[i], 1)
                .unwrap_or_else(|e| panic!("farmer {i}'s record after output {vout}: {e}"));
            let other = 2 * (1 - i);
            assert!(
                check_lease_in(&from_output(&tx1, other), &identity, &contracts[i], 1).is_err(),
                "farmer {i}'s record is not after output {other}"
            );
        }
        // A TX1 for one download keeps today's layout: the record at 1 after TX1:0.
        assert_eq!(from_output(&tx1, 0).output, tx1.output);
    }
}
