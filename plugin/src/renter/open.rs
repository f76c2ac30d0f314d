//! `dstore-open`: the terms, encryption into the staged C (and C's Merkle leaves), the
//! resumable upload, the receipt and its storage term; after a restart, the uploads (and
//! audit setups) a crash interrupted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bitcoin::Amount;
use dstore_protocol::datapath::{ciphertext_len, encrypt_and_build_tree};
use dstore_protocol::merkle::{MerkleCommitment, MerkleTree};
use dstore_protocol::messages::{check_storage_expiry, OpenAccepted, OpenRequest, UploadDone};
use dstore_protocol::receipt::StorageReceipt;
use rand::RngCore;

use super::records::{self, RentedContract, StoragePhase};
use super::{farmer_fault, internal, Renter, RenterError, QUICK_CALL, SLOW_CALL};
use crate::progress::reporter;
use crate::wire::{PeerCallError, PeerClient, BODY_MISMATCH};

/// How often a broken upload is resumed before `dstore-open` gives up.
const UPLOAD_ATTEMPTS: u32 = 5;
/// With audits, the storage term must outlast the last audit's claim window by this many
/// blocks (the audits are proposed after the upload, at a later tip).
const AUDIT_EXPIRY_MARGIN: u32 = 144;

impl Renter {
    /// Stores `file` with the farmer at `farmer_url`; returns the contract id.
    pub async fn open(
        &self,
        farmer_url: &str,
        file: &Path,
        price: Option<Amount>,
        audits: Option<records::AuditRequest>,
    ) -> Result<[u8; 32], RenterError> {
        let mut contract_id = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut contract_id);
        self.open_as(contract_id, farmer_url, file, price, audits)
            .await
    }

    /// [`Renter::open`] under a contract id chosen (and stored) by the caller, so that a
    /// crash before the contract's own record exists still resumes the same contract; a
    /// contract `contract_id` that already exists is finished instead of opened again.
    pub async fn open_as(
        &self,
        contract_id: [u8; 32],
        farmer_url: &str,
        file: &Path,
        price: Option<Amount>,
        audits: Option<records::AuditRequest>,
    ) -> Result<[u8; 32], RenterError> {
        if let Some(outcome) = self.finish_existing(&contract_id).await {
            return outcome.map(|()| contract_id);
        }
        if let Some(request) = &audits {
            request.check()?;
        }
        let meta = std::fs::metadata(file)
            .map_err(|e| RenterError::Invalid(format!("{}: {e}", file.display())))?;
        if !meta.is_file() {
            return Err(RenterError::Invalid(format!(
                "{} is not a file",
                file.display()
            )));
        }
        let farmer_url = normalise_url(farmer_url)?;
        let info = PeerClient::new(&farmer_url, self.identity).info().await?;
        let price = price.unwrap_or(Amount::from_sat(info.price_per_download_sat));
        let length = ciphertext_len(meta.len())
            .ok_or_else(|| RenterError::Invalid("file too large".into()))?;
        if length > info.max_file_bytes {
            return Err(RenterError::Invalid(format!(
                "the encrypted file is {length} bytes; this farmer stores at most {}",
                info.max_file_bytes
            )));
        }
        let mut file_key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut file_key);
        let mut record = RentedContract {
            contract_id,
            farmer_url,
            farmer: info.identity,
            file_key,
            source: file.display().to_string(),
            plaintext_length: meta.len(),
            ciphertext_length: length,
            root_c: None,
            price,
            phase: StoragePhase::Encrypting,
            receipt: None,
            outbound: 0,
            inbound: Default::default(),
            downloads: Vec::new(),
            requested_audits: audits,
            audit: None,
            accepted_expiry: None,
            last_reply: None,
        };
        let id_hex = hex::encode(contract_id);
        let _guard = self.locks.lock(&contract_id).await;
        let mut outcome = self.run_open(&mut record).await;
        if outcome.is_ok() {
            outcome = self.open_audits(&mut record).await;
        }
        self.discard_staged(&record);
        self.progress.finish(&id_hex);
        outcome.map(|()| contract_id)
    }

    /// Finishes contract `id` if its record exists already (`None` if it does not): a
    /// stored one is done, a refused one fails, an interrupted one resumes its upload.
    async fn finish_existing(&self, id: &[u8; 32]) -> Option<Result<(), RenterError>> {
        let _guard = self.locks.lock(id).await;
        let mut record = match self.load(id) {
            Ok(record) => record?,
            Err(e) => return Some(Err(e)),
        };
        let mut outcome = match record.phase {
            StoragePhase::Stored => return Some(Ok(())),
            StoragePhase::Refused => {
                return Some(Err(RenterError::Farmer(
                    "the farmer's storage term was refused".into(),
                )))
            }
            _ => self.finish_open(&mut record).await,
        };
        if outcome.is_ok() {
            outcome = self.open_audits(&mut record).await;
        }
        self.discard_staged(&record);
        self.progress.finish(&hex::encode(id));
        Some(outcome)
    }

    /// Plans the audit contract and sets it up until TX_A (with the stake) is broadcast: a
    /// failure before that marks the audits failed (no money moved) and is returned. Once
    /// TX_A is broadcast the rest of the setup (TX_A's confirmations, the toss, the swap)
    /// goes on in a background job (`super::audit_job`); `Renter::await_audit_setup`
    /// waits for it.
    async fn open_audits(&self, record: &mut RentedContract) -> Result<(), RenterError> {
        use records::RentedAuditPhase::{Complete, Failed, Funded};
        let Some(request) = record.requested_audits else {
            return Ok(());
        };
        self.progress
            .phase(&hex::encode(record.contract_id), "audit setup", 0);
        if record.audit.is_none() {
            self.plan_audits(record, request).await?;
        }
        let outcome = self.setup_audits(record, Funded).await;
        if let (Err(e), Some(audit)) = (&outcome, record.audit.as_mut()) {
            audit.error = Some(e.to_string());
            if audit.phase < Funded {
                audit.phase = Failed;
                // TX_A never left: its coins go back to the wallet's other builds.
                if let Some(tx) = audit.funding_tx.clone() {
                    let wallet = self.wallet.clone();
                    let _ = tokio::task::spawn_blocking(move || wallet.release(&tx)).await;
                }
            }
            self.store(record)?;
        }
        let money_moved = record
            .audit
            .as_ref()
            .is_some_and(|a| a.phase >= Funded && a.phase < Complete);
        if money_moved {
            self.start_audit_job(&record.contract_id);
            return Ok(());
        }
        outcome
    }

    /// The staged copy of C is kept until the upload is done and the audit candidates are
    /// chosen from it.
    pub(super) fn discard_staged(&self, record: &RentedContract) {
        if record.phase == StoragePhase::Refused {
            let _ = std::fs::remove_file(self.staged_c(&record.contract_id));
            return;
        }
        if record.phase != StoragePhase::Stored {
            return;
        }
        // Before TX_A is broadcast a resumed setup may still need it; after, never.
        let pending = record
            .audit
            .as_ref()
            .is_some_and(|a| a.phase < records::RentedAuditPhase::Funded);
        if !pending {
            let _ = std::fs::remove_file(self.staged_c(&record.contract_id));
        }
    }

    async fn run_open(&self, record: &mut RentedContract) -> Result<(), RenterError> {
        // Terms first: a farmer that refuses costs no encryption pass.
        let accepted: OpenAccepted = self
            .exchange(
                record,
                &OpenRequest {
                    file_length: record.ciphertext_length,
                    download_price: record.price,
                },
                QUICK_CALL,
            )
            .await?;
        if accepted.file_length != record.ciphertext_length {
            return Err(farmer_fault("it accepted a different length"));
        }
        self.check_term(record, accepted.expiry_height).await?;
        record.accepted_expiry = Some(accepted.expiry_height);
        self.store(record)?;
        self.finish_open(record).await
    }

    /// The farmer's storage expiry must leave `--min-storage-blocks` above the tip and,
    /// with audits, outlast the last audit's claim window (T_i + W) by a margin. A short
    /// term ends the contract here: marked refused and stored, before any upload or
    /// payment.
    async fn check_term(
        &self,
        record: &mut RentedContract,
        expiry: u32,
    ) -> Result<(), RenterError> {
        let tip = self.tip().await?;
        let audits = record.requested_audits.map_or(0, |r| {
            r.audits
                .saturating_mul(r.period)
                .saturating_add(u32::from(r.claim_window()))
                .saturating_add(AUDIT_EXPIRY_MARGIN)
        });
        let min_blocks = self.min_storage_blocks.max(audits);
        let mut outcome = check_storage_expiry(expiry, tip, min_blocks).map_err(farmer_fault);
        if outcome.is_ok() && record.accepted_expiry.is_some_and(|agreed| expiry < agreed) {
            outcome = Err(farmer_fault(format!(
                "the receipt's expiry {expiry} is before the {} it accepted",
                record.accepted_expiry.unwrap_or_default()
            )));
        }
        if let Err(e) = &outcome {
            tracing::warn!(contract = %hex::encode(record.contract_id), "storage term refused: {e}");
            record.phase = StoragePhase::Refused;
            self.store(record)?;
        }
        outcome
    }

    /// Encrypts (unless done), uploads (from where the farmer stands) and checks the
    /// receipt: the part of `dstore-open` that a restart resumes.
    async fn finish_open(&self, record: &mut RentedContract) -> Result<(), RenterError> {
        let id = record.contract_id;
        let id_hex = hex::encode(id);
        if record.phase == StoragePhase::Encrypting {
            self.progress
                .phase(&id_hex, "encrypting", record.plaintext_length);
            let tree = self.encrypt(record, Path::new(&record.source)).await?;
            if tree.length() != record.ciphertext_length {
                return Err(RenterError::Invalid(
                    "the file changed while it was read".into(),
                ));
            }
            record.root_c = Some(tree.root());
            record.phase = StoragePhase::Uploading;
            self.store(record)?;
        }
        let stored = MerkleCommitment {
            root: record.root_c.ok_or_else(|| internal("no root_C"))?,
            length: record.ciphertext_length,
        };
        self.upload(record).await?;
        self.progress
            .phase(&id_hex, "receipt", record.ciphertext_length);
        let done = UploadDone {
            root_c: stored.root,
            length: stored.length,
        };
        let receipt: StorageReceipt = self.exchange(record, &done, SLOW_CALL).await?;
        receipt
            .verify(&record.farmer)
            .map_err(|e| farmer_fault(format!("receipt: {e}")))?;
        if receipt.contract_id != id || receipt.commitment() != stored {
            return Err(farmer_fault("the receipt is for other data"));
        }
        self.check_term(record, receipt.expiry_height).await?;
        record.receipt = Some(receipt);
        record.phase = StoragePhase::Stored;
        self.store(record)?;
        tracing::info!(contract = %id_hex, bytes = record.ciphertext_length, "file stored");
        Ok(())
    }

    /// After a restart: finishes every upload a crash interrupted, in the background.
    pub fn resume_uploads(self: &Arc<Self>) -> Result<(), RenterError> {
        self.bind_audit_jobs();
        for record in self.list()? {
            if record.phase == StoragePhase::Refused {
                continue;
            }
            if record.phase == StoragePhase::Stored {
                if record.audit.is_some() {
                    self.resume_audit_in_background(record.contract_id);
                }
                continue;
            }
            let renter = self.clone();
            tokio::spawn(async move {
                let id = record.contract_id;
                let _guard = renter.locks.lock(&id).await;
                let Ok(Some(mut record)) = renter.load(&id) else {
                    return;
                };
                if record.phase == StoragePhase::Stored {
                    return; // finished meanwhile (a file's shard open resumed it)
                }
                tracing::info!(contract = %hex::encode(id), "resuming an interrupted upload");
                let mut outcome = renter.finish_open(&mut record).await;
                if outcome.is_ok() {
                    outcome = renter.open_audits(&mut record).await;
                }
                if let Err(e) = outcome {
                    tracing::warn!(contract = %hex::encode(id), "resumed upload failed: {e}");
                }
                renter.discard_staged(&record);
                renter.progress.finish(&hex::encode(id));
            });
        }
        Ok(())
    }

    fn resume_audit_in_background(self: &Arc<Self>, id: [u8; 32]) {
        self.spawn_audit_job(id);
    }

    pub(super) fn staged_c(&self, id: &[u8; 32]) -> PathBuf {
        self.work_dir.join(format!("{}.c", hex::encode(id)))
    }

    pub(super) fn leaves_path(&self, id: &[u8; 32]) -> PathBuf {
        self.work_dir.join(format!("{}.leaves", hex::encode(id)))
    }

    /// Encrypts the file into the staged C and keeps C's Merkle leaves (for fraud proofs).
    async fn encrypt(
        &self,
        record: &RentedContract,
        file: &Path,
    ) -> Result<MerkleTree, RenterError> {
        let (key, id) = (record.file_key, record.contract_id);
        let (source, staged, leaves) = (
            file.to_path_buf(),
            self.staged_c(&id),
            self.leaves_path(&id),
        );
        tokio::task::spawn_blocking(move || {
            let input = std::io::BufReader::new(std::fs::File::open(&source)?);
            let output = std::io::BufWriter::new(std::fs::File::create(&staged)?);
            let tree = encrypt_and_build_tree(&key, &id, input, output)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let bytes: Vec<u8> = tree.leaves().iter().flatten().copied().collect();
            crate::files::write_atomically(&leaves, &bytes)?;
            Ok::<_, std::io::Error>(tree)
        })
        .await
        .map_err(internal)?
        .map_err(|e| RenterError::Invalid(format!("cannot encrypt {}: {e}", file.display())))
    }

    /// Streams the staged C, resuming from the farmer's count after a broken connection.
    async fn upload(&self, record: &RentedContract) -> Result<(), RenterError> {
        let id = record.contract_id;
        let id_hex = hex::encode(id);
        let client = self.client(record);
        self.progress
            .phase(&id_hex, "uploading", record.ciphertext_length);
        let mut last_error = None;
        for attempt in 0..UPLOAD_ATTEMPTS {
            let status = match client.upload_status(&id).await {
                Ok(status) => status,
                Err(e) => {
                    last_error = Some(e);
                    tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
                    continue;
                }
            };
            if status.received == record.ciphertext_length {
                return Ok(());
            }
            let sent = client
                .upload_from(
                    &id,
                    &self.staged_c(&id),
                    status.received,
                    reporter(&self.progress, &id_hex),
                )
                .await;
            match sent {
                Ok(status) if status.received == record.ciphertext_length => return Ok(()),
                Ok(_) => {}
                // A part altered on the way (its bytes do not match the signed hash):
                // nothing of it was stored, so it is simply sent again.
                Err(PeerCallError::Refused(e)) if e.code == BODY_MISMATCH => {
                    last_error = Some(PeerCallError::Refused(e));
                }
                Err(PeerCallError::Refused(e)) => return Err(PeerCallError::Refused(e).into()),
                Err(e) => last_error = Some(e),
            }
            tracing::info!(contract = %id_hex, "upload interrupted; resuming");
            tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
        }
        Err(last_error
            .map(RenterError::from)
            .unwrap_or_else(|| RenterError::Farmer("the upload never completed".into())))
    }
}

/// `host:port` or `http://host:port`; anything else is refused.
pub(crate) fn normalise_url(url: &str) -> Result<String, RenterError> {
    let with_scheme = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let parsed = reqwest::Url::parse(&with_scheme)
        .map_err(|e| RenterError::Invalid(format!("farmer_peer_url {url}: {e}")))?;
    if parsed.scheme() != "http" && parsed.scheme() != "https" || parsed.host().is_none() {
        return Err(RenterError::Invalid(format!(
            "farmer_peer_url {url}: expected http://host:port"
        )));
    }
    Ok(with_scheme.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn farmer_urls_are_http_host_port() {
        assert_eq!(
            normalise_url("127.0.0.1:9737").unwrap(),
            "http://127.0.0.1:9737"
        );
        assert_eq!(
            normalise_url("http://farmer.example:9737/").unwrap(),
            "http://farmer.example:9737"
        );
        assert!(normalise_url("ftp://x:1").is_err());
        assert!(normalise_url("http://").is_err());
        assert!(normalise_url("").is_err());
    }
}
