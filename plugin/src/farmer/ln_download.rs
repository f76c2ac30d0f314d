//! The farmer's half of a mode-N download (PROTOCOL.md 4b): on `ln_download_request` it
//! draws a fresh x, seals the stored file under a key derived from x, stores x and the
//! signed transcript (phase `ln_invoiced`) BEFORE the Lightning node makes an invoice for
//! the price whose payment hash is SHA256(x), stores the invoice (phase `ln_offered`) and
//! replies `ln_offer`. The node settles the payment, revealing x, only when the renter pays.
//! A request repeated for the same download id gets the same offer: no second x.

use dstore_protocol::ln::{seal_ln, LnTranscript};
use dstore_protocol::peer::PeerMessage;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::records::{FarmedContract, FarmedLnDownload, FarmedLnPhase};
use super::seal::flip_first_byte;
use super::{internal, Farmer, FarmerError, Step};

/// How long the farmer's invoice stays payable (the renter fetches and checks E first).
pub const INVOICE_EXPIRY_SECS: u32 = 3_600;

/// Renter → farmer: start mode-N download `download_id` of the stored file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LnDownloadRequest {
    #[serde(with = "hex::serde")]
    pub download_id: [u8; 32],
}

impl PeerMessage for LnDownloadRequest {
    const KIND: &'static str = "ln_download_request";
}

/// Farmer → renter: the signed transcript of E (root_E, H, price) and a BOLT11 invoice
/// whose payment hash is H.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LnOffer {
    pub transcript: LnTranscript,
    pub invoice: String,
}

impl PeerMessage for LnOffer {
    const KIND: &'static str = "ln_offer";
}

/// How many mode-N downloads a contract's record remembers; older entries are dropped (an
/// unpaid invoice of theirs stays payable: the Lightning node keeps its preimage).
pub const MAX_LN_DOWNLOADS_KEPT: usize = 16;

/// Appends `new` to a record's mode-N downloads, which then keep only the latest
/// [`MAX_LN_DOWNLOADS_KEPT`]; returns the earlier downloads' ids, whose sealed copies are no
/// longer served (the renter only ever fetches the current one), so a renter asking again
/// and again leaves one sealed copy on disk, not one per request.
fn supersede_earlier(
    downloads: &mut Vec<FarmedLnDownload>,
    new: FarmedLnDownload,
) -> Vec<[u8; 32]> {
    let superseded = downloads.iter().map(|d| d.download_id).collect();
    downloads.push(new);
    let excess = downloads.len().saturating_sub(MAX_LN_DOWNLOADS_KEPT);
    downloads.drain(..excess);
    superseded
}

/// A price in satoshis as millisatoshis.
pub fn price_msat(price: bitcoin::Amount) -> u64 {
    price.to_sat().saturating_mul(1_000)
}

impl Farmer {
    /// `ln_download_request`: the offer of download `request.download_id`, made once.
    pub(super) async fn offer_ln_download(
        &self,
        mut record: FarmedContract,
        request: LnDownloadRequest,
    ) -> Result<Step<LnOffer>, FarmerError> {
        let Some(ln) = self.lightning.clone() else {
            return Err(FarmerError::Invalid(
                "this farmer has no Lightning node: mode N is off (use a mode-L download)".into(),
            ));
        };
        if record.receipt.is_none() {
            return Err(FarmerError::WrongPhase(
                "nothing is stored for this contract yet",
            ));
        }
        let known = record
            .ln_downloads
            .iter()
            .position(|d| d.download_id == request.download_id);
        let index = match known {
            Some(index) => index,
            None => {
                let sealed = self.seal_ln_copy(&record, &request.download_id).await?;
                let superseded = supersede_earlier(&mut record.ln_downloads, sealed);
                // x and the transcript are stored before any invoice for H exists.
                self.store(&record)?;
                for download_id in superseded {
                    let _ = std::fs::remove_file(self.sealed_path(&download_id));
                }
                record.ln_downloads.len() - 1
            }
        };
        if record.ln_downloads[index].invoice.is_none() {
            let invoice = self.ln_invoice(&ln, &record, index).await?;
            let download = &mut record.ln_downloads[index];
            download.invoice = Some(invoice);
            download.phase = FarmedLnPhase::LnOffered;
        }
        let download = &record.ln_downloads[index];
        let reply = LnOffer {
            transcript: download.transcript,
            invoice: download.invoice.clone().unwrap_or_default(),
        };
        tracing::info!(
            contract = %hex::encode(record.contract_id),
            download = %hex::encode(request.download_id),
            "mode-N download offered"
        );
        Ok(Step { record, reply })
    }

    /// Draws x and seals the stored file of `record` for `download_id` into
    /// [`Farmer::sealed_path`]; the new download, in phase `ln_invoiced`.
    async fn seal_ln_copy(
        &self,
        record: &FarmedContract,
        download_id: &[u8; 32],
    ) -> Result<FarmedLnDownload, FarmerError> {
        let id = record.contract_id;
        let plain_path = self
            .config
            .work_dir
            .join(format!("{}.ln.c", hex::encode(download_id)));
        self.copy_blob(&id, &plain_path).await?;
        if crate::dev_fault!(self.config.dev_fault, LnSealWrongData) {
            tracing::warn!("dev fault ln-seal-wrong-data: sealing data that is not C");
            flip_first_byte(&plain_path).map_err(internal)?;
        }
        let (identity, price, download) = (self.identity, price_msat(record.price), *download_id);
        let (plain, sealed) = (plain_path.clone(), self.sealed_path(download_id));
        let sealed_result = tokio::task::spawn_blocking(move || {
            let input = std::io::BufReader::new(std::fs::File::open(&plain)?);
            let mut output = std::io::BufWriter::new(std::fs::File::create(&sealed)?);
            let made = seal_ln(
                &mut rand::thread_rng(),
                &id,
                &download,
                price,
                &identity,
                input,
                &mut output,
            )
            .map_err(|e| std::io::Error::other(e.to_string()))?;
            let file = output.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            Ok::<_, std::io::Error>(made)
        })
        .await
        .map_err(internal)?;
        let _ = std::fs::remove_file(&plain_path);
        let (preimage, transcript) = sealed_result.map_err(internal)?;
        Ok(FarmedLnDownload {
            download_id: *download_id,
            phase: FarmedLnPhase::LnInvoiced,
            preimage,
            transcript,
            invoice: None,
            chain_download_before: record.download.as_ref().map(|d| d.download_id),
        })
    }

    /// The invoice for download `index` of `record`: the price, payable by revealing x.
    async fn ln_invoice(
        &self,
        ln: &crate::ln::Lightning,
        record: &FarmedContract,
        index: usize,
    ) -> Result<String, FarmerError> {
        let download = &record.ln_downloads[index];
        let mut preimage = download.preimage;
        let mut amount = download.transcript.price_msat;
        if crate::dev_fault!(self.config.dev_fault, LnWrongInvoiceHash) {
            tracing::warn!("dev fault ln-wrong-invoice-hash: invoicing another payment hash");
            rand::thread_rng().fill_bytes(&mut preimage);
        }
        if crate::dev_fault!(self.config.dev_fault, LnWrongInvoiceAmount) {
            tracing::warn!("dev fault ln-wrong-invoice-amount: invoicing one satoshi more");
            amount = amount.saturating_add(1_000);
        }
        let description = format!("dstore download {}", hex::encode(download.download_id));
        ln.invoice(preimage, amount, &description, INVOICE_EXPIRY_SECS)
            .await
            .map_err(|e| internal(format!("the Lightning node made no invoice: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn download(n: u8) -> FarmedLnDownload {
        let identity = bitcoin::secp256k1::Keypair::new(
            bitcoin::secp256k1::SECP256K1,
            &mut rand::thread_rng(),
        );
        let (preimage, transcript) = seal_ln(
            &mut rand::thread_rng(),
            &[1; 32],
            &[n; 32],
            1_000,
            &identity,
            &b"C"[..],
            std::io::sink(),
        )
        .unwrap();
        FarmedLnDownload {
            download_id: [n; 32],
            phase: FarmedLnPhase::LnOffered,
            preimage,
            transcript,
            invoice: None,
            chain_download_before: None,
        }
    }

    #[test]
    fn a_new_request_supersedes_every_earlier_sealed_copy_and_the_list_stays_bounded() {
        let mut downloads = Vec::new();
        assert!(supersede_earlier(&mut downloads, download(0)).is_empty());
        assert_eq!(
            supersede_earlier(&mut downloads, download(1)),
            vec![[0; 32]]
        );
        for n in 2..40u8 {
            let superseded = supersede_earlier(&mut downloads, download(n));
            assert_eq!(superseded.last(), Some(&[n - 1; 32]));
            assert!(downloads.len() <= MAX_LN_DOWNLOADS_KEPT);
        }
        assert_eq!(downloads.len(), MAX_LN_DOWNLOADS_KEPT);
        assert_eq!(downloads.last().unwrap().download_id, [39; 32]);
    }

    #[test]
    fn prices_convert_to_millisatoshis() {
        assert_eq!(price_msat(bitcoin::Amount::from_sat(20_000)), 20_000_000);
        assert_eq!(price_msat(bitcoin::Amount::ZERO), 0);
    }

    #[test]
    fn the_request_kind_is_its_own() {
        assert_eq!(LnDownloadRequest::KIND, "ln_download_request");
        assert_eq!(LnOffer::KIND, "ln_offer");
        let request: LnDownloadRequest =
            serde_json::from_value(serde_json::json!({"download_id": hex::encode([7u8; 32])}))
                .unwrap();
        assert_eq!(request.download_id, [7; 32]);
        assert!(serde_json::from_value::<LnDownloadRequest>(
            serde_json::json!({"download_id": hex::encode([7u8; 32]), "x": 1})
        )
        .is_err());
    }
}
