//! `dstore-download` in mode N (PROTOCOL.md 4b), renter side. Each step stores its phase
//! before it acts, and the driver ([`super::driver`]) runs the download from the stored
//! phase, also after a restart:
//!
//! | phase          | step                                                                  |
//! |----------------|-----------------------------------------------------------------------|
//! | `ln_requested` | `ln_download_request` → the farmer's signed transcript and invoice, checked against the receipt and the agreed price |
//! | `ln_fetching`  | E fetched and checked against root_E; the invoice checked against the transcript (hash, amount, network, payee, expiry): a bad one is refused before paying |
//! | `ln_paying`    | H stored, then the invoice paid; after a restart the node is asked for the payment's outcome instead of paying again |
//! | `ln_paid`      | x (SHA256(x) = H) stored; E unsealed, C' checked against root_C, decrypted to the output, or a mode-N fraud proof stored |

use std::io::{Read, Write};
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bitcoin::secp256k1::PublicKey;
use dstore_protocol::ln::{check_invoice, check_ln_sealed_copy, unseal_ln, verify_ln_transcript};
use serde_json::{json, Value};

use super::records::{DownloadPhase, RentedContract, RentedDownload, RentedLn};

use super::{current, farmer_fault, internal, Renter, RenterError, SLOW_CALL};
use crate::farmer::ln_download::{price_msat, LnDownloadRequest, LnOffer};
use crate::ln::{Lightning, PaymentOutcome};

/// How `dstore-download` pays: over Lightning (mode N), on the chain (mode L), or over
/// Lightning when both sides have it and the payment looks routable (auto).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownloadMode {
    Ln,
    Chain,
    Auto,
}

impl FromStr for DownloadMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "ln" => Ok(DownloadMode::Ln),
            "chain" => Ok(DownloadMode::Chain),
            "auto" => Ok(DownloadMode::Auto),
            other => Err(format!(
                "mode must be ln, chain or auto, not '{}'",
                other.chars().take(20).collect::<String>()
            )),
        }
    }
}

/// How long a download call waits for the payment's outcome before it reports the
/// download as waiting (it goes on in the background).
pub(super) const LN_PAYMENT_WAIT: Duration = Duration::from_secs(20);

/// What the progress tracker shows while the payment is in flight ("waiting for …").
pub(super) const LN_WAITING: &str = "waiting for lightning payment";

fn ln_error(e: crate::ln::LnError) -> RenterError {
    RenterError::Lightning(format!("the Lightning node: {e}"))
}

impl Renter {
    /// This plugin's Lightning node, or the error a mode-N step gets without one.
    pub(super) fn ln_node(&self) -> Result<&Lightning, RenterError> {
        self.lightning.as_ref().ok_or_else(|| {
            RenterError::Invalid(
                "Lightning is not enabled on this plugin (start it with --lightning): use mode chain"
                    .into(),
            )
        })
    }

    /// For a new download of `record` in `mode`: the farmer's Lightning node when the
    /// download goes over Lightning, `None` for mode L. An explicit `ln` that cannot be
    /// done is an error (nothing is stored); `auto` falls back to the chain.
    pub(super) async fn ln_payee(
        &self,
        record: &RentedContract,
        mode: DownloadMode,
    ) -> Result<Option<PublicKey>, RenterError> {
        match mode {
            DownloadMode::Chain => Ok(None),
            DownloadMode::Ln => {
                self.ln_node()?;
                let node = self.farmer_ln_node(record).await?.ok_or_else(|| {
                    RenterError::Invalid(
                        "the farmer advertises no Lightning node: use mode chain".into(),
                    )
                })?;
                Ok(Some(node))
            }
            DownloadMode::Auto => Ok(self.auto_payee(record).await),
        }
    }

    /// Mode auto: the farmer's node when this plugin has Lightning, the farmer advertises
    /// a node and a payment of the price looks routable now.
    async fn auto_payee(&self, record: &RentedContract) -> Option<PublicKey> {
        let ln = self.lightning.as_ref()?;
        let node = match self.farmer_ln_node(record).await {
            Ok(node) => node?,
            Err(e) => {
                tracing::info!(
                    "mode auto: the farmer's info is unavailable ({e}); paying on the chain"
                );
                return None;
            }
        };
        match ln.can_pay(&node, price_msat(record.price)).await {
            Ok(true) => Some(node),
            Ok(false) => {
                tracing::info!(
                    "mode auto: no route for the price to the farmer's node; paying on the chain"
                );
                None
            }
            Err(e) => {
                tracing::info!(
                    "mode auto: cannot ask the Lightning node ({e}); paying on the chain"
                );
                None
            }
        }
    }

    /// The Lightning node id the farmer's `/dstore/v1/info` advertises, if any.
    async fn farmer_ln_node(
        &self,
        record: &RentedContract,
    ) -> Result<Option<PublicKey>, RenterError> {
        let info = self.client(record).info().await?;
        let info = serde_json::to_value(&info).map_err(internal)?;
        let Some(text) = info["lightning"]["node_id"].as_str() else {
            return Ok(None);
        };
        text.parse::<PublicKey>()
            .map(Some)
            .map_err(|e| farmer_fault(format!("its advertised Lightning node id: {e}")))
    }

    /// Adds a new mode-N download of `record`'s file for `output`, paid to `payee`, in
    /// phase `ln_requested`. Returns its id. (The mode-L key fields are filled but unused.)
    pub(super) async fn begin_ln_download(
        &self,
        record: &mut RentedContract,
        output: &Path,
        payee: PublicKey,
    ) -> Result<[u8; 32], RenterError> {
        let ln = RentedLn {
            price_msat: price_msat(record.price),
            payee,
            transcript: None,
            invoice: None,
            payment_hash: None,
            preimage: None,
            fee_msat: None,
        };
        let download_id = self
            .add_download(record, output, DownloadPhase::LnRequested, Some(ln))
            .await?;
        tracing::info!(download = %hex::encode(download_id), "mode-N download begins");
        Ok(download_id)
    }

    /// Runs the latest (mode-N) download of `record` from its stored phase until its
    /// payment is sent (or was sent before a restart); the driver waits for the outcome.
    pub(super) async fn advance_ln(&self, record: &mut RentedContract) -> Result<(), RenterError> {
        loop {
            match current(record).phase {
                DownloadPhase::LnRequested => self.request_ln_offer(record).await?,
                DownloadPhase::LnFetching => {
                    self.fetch_ln_sealed_copy(record).await?;
                    let hash = self.check_ln_invoice(record).await?;
                    return self.send_ln_payment(record, hash).await;
                }
                DownloadPhase::LnPaying => return self.resume_ln_payment(record).await,
                _ => return Ok(()),
            }
        }
    }

    /// Step 2: the farmer's offer; its transcript is checked against the receipt, this
    /// download and the agreed price. Next: `ln_fetching`.
    async fn request_ln_offer(&self, record: &mut RentedContract) -> Result<(), RenterError> {
        let receipt = record.receipt.ok_or_else(|| internal("no receipt"))?;
        self.progress.phase(
            &hex::encode(record.contract_id),
            "sealing",
            record.ciphertext_length,
        );
        let d = current(record).clone();
        let price = ln_state(&d)?.price_msat;
        let request = LnDownloadRequest {
            download_id: d.download_id,
        };
        let offer: LnOffer = self.exchange_resync(record, &request, SLOW_CALL).await?;
        verify_ln_transcript(
            &offer.transcript,
            &record.farmer,
            &record.contract_id,
            &d.download_id,
            &receipt,
            price,
        )
        .map_err(|e| farmer_fault(format!("the mode-N transcript: {e}; nothing was paid")))?;
        let d = current(record);
        let state = ln_state_mut(d)?;
        state.transcript = Some(offer.transcript);
        state.invoice = Some(offer.invoice);
        d.phase = DownloadPhase::LnFetching;
        self.store(record)
    }

    /// Step 3: E is fetched and checked against root_E before anything is paid.
    async fn fetch_ln_sealed_copy(&self, record: &RentedContract) -> Result<(), RenterError> {
        let d = record
            .downloads
            .last()
            .ok_or_else(|| internal("no download"))?;
        let transcript = ln_state(d)?
            .transcript
            .ok_or_else(|| internal("no transcript"))?;
        self.fetch_checked_sealed_copy(record, transcript.length, move |sealed| {
            check_ln_sealed_copy(&transcript, sealed)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await
    }

    /// Step 4: the invoice pays exactly the transcript's price to the farmer's node under
    /// the transcript's H, on this network, and has not expired. Returns H.
    async fn check_ln_invoice(&self, record: &RentedContract) -> Result<[u8; 32], RenterError> {
        let d = record
            .downloads
            .last()
            .ok_or_else(|| internal("no download"))?;
        let state = ln_state(d)?;
        let transcript = state.transcript.ok_or_else(|| internal("no transcript"))?;
        let invoice = state
            .invoice
            .as_deref()
            .ok_or_else(|| internal("no invoice"))?;
        let network = self.chain_network().await?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |t| t.as_secs());
        let checked = check_invoice(invoice, &transcript, network, Some(&state.payee), now)
            .map_err(|e| {
                farmer_fault(format!(
                    "the invoice is refused before paying: {e}; nothing was paid"
                ))
            })?;
        Ok(checked.payment_hash)
    }

    /// The network bitcoind runs (what the invoice must be for).
    async fn chain_network(&self) -> Result<bitcoin::Network, RenterError> {
        let info = self.bitcoind.call("getblockchaininfo", json!([])).await?;
        let chain = info["chain"].as_str().unwrap_or_default();
        dstore_protocol::network::Network::from_core_chain(chain)
            .map(|n| n.to_bitcoin())
            .map_err(internal)
    }

    /// Step 5: H is stored with phase `ln_paying` BEFORE the payment leaves; then it is
    /// sent.
    async fn send_ln_payment(
        &self,
        record: &mut RentedContract,
        hash: [u8; 32],
    ) -> Result<(), RenterError> {
        self.ln_node()?;
        let d = current(record);
        ln_state_mut(d)?.payment_hash = Some(hash);
        d.phase = DownloadPhase::LnPaying;
        self.store(record)?;
        self.pay_ln_invoice(record).await
    }

    /// Pays the stored invoice. A payment the node never sent fails the download (nothing
    /// was paid); one it knows of is waited for by the driver.
    async fn pay_ln_invoice(&self, record: &mut RentedContract) -> Result<(), RenterError> {
        let ln = self.ln_node()?.clone();
        let d = current(record).clone();
        let state = ln_state(&d)?;
        let hash = state
            .payment_hash
            .ok_or_else(|| internal("no payment hash"))?;
        let invoice = state
            .invoice
            .clone()
            .ok_or_else(|| internal("no invoice"))?;
        self.progress
            .phase(&hex::encode(record.contract_id), "paying over lightning", 0);
        tracing::info!(payment_hash = %hex::encode(hash), msat = state.price_msat, "paying the farmer's invoice");
        if let Err(e) = ln.pay(&invoice).await {
            match ln.payment(hash).await.map_err(ln_error)? {
                PaymentOutcome::Unknown => {
                    return self.fail_ln(
                        record,
                        format!("the Lightning payment was not sent ({e}); nothing was paid"),
                    )
                }
                PaymentOutcome::Failed { reason } => {
                    return self.fail_ln(
                        record,
                        format!("the Lightning payment failed ({reason}); nothing was paid"),
                    )
                }
                _ => tracing::warn!("pay said {e}, but the node has the payment: waiting for it"),
            }
        }
        self.stall_if(crate::dev_fault!(self.dev_fault, StallAfterLnPaid))
            .await;
        Ok(())
    }

    /// After a restart in `ln_paying`: the node says whether the payment left. Never sent:
    /// pay now; pending or settled: the driver waits for it; failed: nothing was paid.
    async fn resume_ln_payment(&self, record: &mut RentedContract) -> Result<(), RenterError> {
        let d = current(record).clone();
        let hash = ln_state(&d)?
            .payment_hash
            .ok_or_else(|| internal("no payment hash"))?;
        match self.ln_node()?.payment(hash).await.map_err(ln_error)? {
            PaymentOutcome::Unknown => {
                tracing::info!(payment_hash = %hex::encode(hash), "the payment never left: paying now");
                self.pay_ln_invoice(record).await
            }
            PaymentOutcome::Failed { reason } => self.fail_ln(
                record,
                format!("the Lightning payment failed ({reason}); nothing was paid"),
            ),
            PaymentOutcome::Pending | PaymentOutcome::Succeeded { .. } => Ok(()),
        }
    }

    /// Ends the latest download as failed with nothing paid, and says why.
    fn fail_ln(&self, record: &mut RentedContract, why: String) -> Result<(), RenterError> {
        tracing::info!(contract = %hex::encode(record.contract_id), "mode-N download failed: {why}");
        let d = current(record);
        d.phase = DownloadPhase::Failed;
        d.error = Some(why.clone());
        self.store(record)?;
        Err(RenterError::Lightning(why))
    }

    /// The payment hash of `record`'s latest download if it is a mode-N download whose
    /// payment is in flight or settled (what the driver waits for next).
    pub(super) fn ln_payment_due(record: &RentedContract) -> Option<([u8; 32], DownloadPhase)> {
        let d = record.downloads.last()?;
        let hash = d.ln.as_ref()?.payment_hash?;
        d.phase.ln_paying().then_some((hash, d.phase))
    }

    /// Step 6, under the contract's lock, once the payment's outcome is known: settled →
    /// x checked (SHA256(x) = H) and stored (`ln_paid`), E unsealed and checked against
    /// root_C, decrypted to the output; failed → the download failed, nothing was paid.
    pub(super) async fn finish_ln(
        &self,
        id: &[u8; 32],
        download_id: Option<[u8; 32]>,
        outcome: PaymentOutcome,
    ) -> Result<Value, RenterError> {
        let _guard = self.locks.lock(id).await;
        let mut record = self.existing(id)?;
        let d = record
            .downloads
            .last()
            .ok_or_else(|| internal("no download"))?
            .clone();
        if Some(d.download_id) != download_id || !d.phase.ln_paying() {
            return Err(RenterError::Invalid(format!(
                "download {} is {:?} now; not finishing it",
                hex::encode(d.download_id),
                d.phase
            )));
        }
        if d.phase == DownloadPhase::LnPaying {
            self.record_ln_outcome(&mut record, outcome)?;
        }
        self.unseal_ln_download(&mut record).await
    }

    /// Stores a settled payment's x (phase `ln_paid`), or fails the download.
    fn record_ln_outcome(
        &self,
        record: &mut RentedContract,
        outcome: PaymentOutcome,
    ) -> Result<(), RenterError> {
        let (preimage, fee_msat) = match outcome {
            PaymentOutcome::Succeeded { preimage, fee_msat } => (preimage, fee_msat),
            PaymentOutcome::Failed { reason } => {
                return self.fail_ln(
                    record,
                    format!("the Lightning payment failed ({reason}); nothing was paid"),
                )
            }
            other => return Err(internal(format!("no payment outcome yet: {other:?}"))),
        };
        let d = current(record);
        let state = ln_state_mut(d)?;
        if Some(dstore_protocol::hashing::sha256(&[&preimage])) != state.payment_hash {
            return Err(internal(
                "the node's preimage does not hash to the payment hash",
            ));
        }
        state.preimage = Some(preimage);
        state.fee_msat = fee_msat;
        d.phase = DownloadPhase::LnPaid;
        self.store(record)?;
        tracing::info!(contract = %hex::encode(record.contract_id), "the payment settled: x is known");
        Ok(())
    }

    /// Unseals E with x, checks the result against root_C and decrypts it in one pass
    /// (the output appears only after root_C matched); on a mismatch, writes nothing there
    /// and stores a mode-N fraud proof.
    async fn unseal_ln_download(&self, record: &mut RentedContract) -> Result<Value, RenterError> {
        let d = current(record).clone();
        let preimage = ln_state(&d)?
            .preimage
            .ok_or_else(|| internal("no preimage"))?;
        let output = d.output.clone().ok_or_else(|| internal("no output path"))?;
        let output = Path::new(&output);
        self.progress.phase(
            &hex::encode(record.contract_id),
            "decrypting",
            record.ciphertext_length,
        );
        let download_id = d.download_id;
        let unseal_with = move |e: &mut dyn Read, c: &mut dyn Write| {
            unseal_ln(&preimage, &download_id, e, c).map_err(|e| e.to_string())
        };
        let Some(unsealed) = self.unseal_latest(record, output, unseal_with).await? else {
            let proof = self.ln_fraud_proof(record).await?;
            return Err(RenterError::Fraud(proof));
        };
        self.publish_output(record, output, unsealed.decrypt_error)?;
        let _ = std::fs::remove_file(self.sealed_file(&download_id));
        let done = current(record).clone();
        Ok(super::download::done_json(record, &done))
    }
}

/// The mode-N state of download `d`.
pub(super) fn ln_state(d: &RentedDownload) -> Result<&RentedLn, RenterError> {
    d.ln.as_ref()
        .ok_or_else(|| internal("not a mode-N download"))
}

fn ln_state_mut(d: &mut RentedDownload) -> Result<&mut RentedLn, RenterError> {
    d.ln.as_mut()
        .ok_or_else(|| internal("not a mode-N download"))
}

/// What `dstore-download` returns for finished mode-N download `d` of `record`.
pub(super) fn ln_done_json(record: &RentedContract, d: &RentedDownload, ln: &RentedLn) -> Value {
    json!({
        "contract_id": hex::encode(record.contract_id),
        "download_id": hex::encode(d.download_id),
        "status": "done",
        "mode": "ln",
        "phase": d.phase,
        "output": d.output,
        "bytes": record.plaintext_length,
        "payment_hash": ln.payment_hash.map(hex::encode),
        "fee_msat": ln.fee_msat,
        "price_msat": ln.price_msat,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_anything_else_is_refused() {
        assert_eq!("ln".parse(), Ok(DownloadMode::Ln));
        assert_eq!("chain".parse(), Ok(DownloadMode::Chain));
        assert_eq!(" auto ".parse(), Ok(DownloadMode::Auto));
        let err = "lightning".parse::<DownloadMode>().unwrap_err();
        assert!(err.contains("ln, chain or auto"), "{err}");
    }

    #[test]
    fn the_stored_mode_n_state_round_trips_and_hides_x_from_debug() {
        let key = bitcoin::secp256k1::SecretKey::from_slice(&[3; 32]).unwrap();
        let mut state = RentedLn {
            price_msat: 20_000_000,
            payee: key.public_key(bitcoin::secp256k1::SECP256K1),
            transcript: None,
            invoice: Some("lnbcrt1…".into()),
            payment_hash: None,
            preimage: None,
            fee_msat: None,
        };
        let stored = serde_json::to_value(&state).unwrap();
        assert_eq!(stored["payment_hash"], Value::Null);
        state.payment_hash = Some([0xab; 32]);
        state.preimage = Some([0xcd; 32]);
        let stored = serde_json::to_value(&state).unwrap();
        assert_eq!(stored["payment_hash"], hex::encode([0xab; 32]));
        let back: RentedLn = serde_json::from_value(stored).unwrap();
        assert_eq!(back.preimage, Some([0xcd; 32]));
        assert!(
            !format!("{back:?}").contains(&hex::encode([0xcd; 32])),
            "x stays out of logs"
        );
        let old: RentedLn = serde_json::from_value(json!({
            "price_msat": 1, "payee": state.payee,
        }))
        .unwrap();
        assert_eq!((old.payment_hash, old.fee_msat), (None, None));
    }
}
