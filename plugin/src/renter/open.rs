//! `dstore-open`: the terms, encryption into the staged C (and C's Merkle leaves), the
//! resumable upload, the receipt and its storage term; after a restart, the uploads (and
//! audit setups) a crash interrupted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bitcoin::Amount;

use dstore_protocol::datapath::{ciphertext_len, encrypt_stream};
use dstore_protocol::merkle::{part_leaves, MerkleBuilder, MerkleCommitment, MerkleTree};
use dstore_protocol::messages::{check_storage_expiry, OpenAccepted, OpenRequest, UploadDone};
use dstore_protocol::receipt::StorageReceipt;
use rand::RngCore;

use super::records::{self, RentedContract, StoragePhase};
use super::sent_log::SentLog;
use super::{farmer_fault, internal, Renter, RenterError, QUICK_CALL, SLOW_CALL};
use crate::progress::reporter;
use crate::wire::{
    PeerCallError, PeerClient, UploadPart, UploadStatus, BODY_MISMATCH, UPLOAD_PART, UPLOAD_WINDOW,
};

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
            upload_error: None,
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
                .phase(&id_hex, "uploading", record.ciphertext_length);
            let tree = self.encrypt_and_send(record).await?;
            if tree.length() != record.ciphertext_length {
                return Err(RenterError::Invalid(
                    "the file changed while it was read".into(),
                ));
            }
            record.root_c = Some(tree.root());
            record.phase = StoragePhase::Uploading;
            self.store(record)?;
            // From here on only the staged C is sent: nothing is encrypted again.
            let _ = std::fs::remove_file(self.sent_log_path(&id));
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
                if let Err(e) = &outcome {
                    tracing::warn!(contract = %hex::encode(id), "resumed upload failed: {e}");
                }
                renter.note_resume_outcome(&id, outcome.err().map(|e| e.to_string()));
                renter.discard_staged(&record);
                renter.progress.finish(&hex::encode(id));
            });
        }
        Ok(())
    }

    /// Keeps why a resumed upload stopped in its record, where `dstore-status` shows it
    /// (a user restores the file or opens a new contract), or clears it after a success.
    fn note_resume_outcome(&self, id: &[u8; 32], error: Option<String>) {
        let Ok(Some(mut record)) = self.load(id) else {
            return;
        };
        if record.upload_error == error {
            return;
        }
        record.upload_error = error;
        if let Err(e) = self.store(&record) {
            tracing::warn!(contract = %hex::encode(id), "could not record the upload's outcome: {e}");
        }
    }

    fn resume_audit_in_background(self: &Arc<Self>, id: [u8; 32]) {
        self.spawn_audit_job(id);
    }

    pub(super) fn staged_c(&self, id: &[u8; 32]) -> PathBuf {
        self.work_dir.join(format!("{}.c", hex::encode(id)))
    }

    /// The [`SentLog`] of the parts an encrypting pass may have sent.
    fn sent_log_path(&self, id: &[u8; 32]) -> PathBuf {
        self.work_dir.join(format!("{}.sent", hex::encode(id)))
    }

    pub(super) fn leaves_path(&self, id: &[u8; 32]) -> PathBuf {
        self.work_dir.join(format!("{}.leaves", hex::encode(id)))
    }

    /// Encrypts the file into the staged C, keeps C's Merkle leaves (for fraud proofs) and,
    /// in the same pass, sends the ciphertext to the farmer as it is produced, from where
    /// the farmer stands (after a crash mid-upload, the same key and contract id give the
    /// same bytes again). A send that fails only ends the streaming: the pass still
    /// finishes the staged C, from which [`Renter::upload`] then resumes.
    async fn encrypt_and_send(&self, record: &RentedContract) -> Result<MerkleTree, RenterError> {
        let client = self.client(record);
        let from = match client.upload_status(&record.contract_id).await {
            Ok(status) => Some(status.received),
            Err(e) => {
                tracing::info!(contract = %hex::encode(record.contract_id), "farmer unreachable ({e}); encrypting first");
                None
            }
        };
        let (parts_tx, parts_rx) = tokio::sync::mpsc::channel(UPLOAD_PARTS_AHEAD);
        let encrypting = self.encrypt(record, from, parts_tx);
        let sending = self.send_parts(record, parts_rx);
        let (tree, sent) = tokio::join!(encrypting, sending);
        if let Err(e) = sent {
            tracing::info!(contract = %hex::encode(record.contract_id), "streamed upload interrupted ({e}); resuming from the staged copy");
        }
        tree
    }

    /// Sends the parts the encrypting pass hands over, one signed PUT each and up to
    /// [`UPLOAD_WINDOW`] in flight, until the pass ends or a PUT fails (then the receiver
    /// is dropped and the pass sends no more).
    async fn send_parts(
        &self,
        record: &RentedContract,
        parts: tokio::sync::mpsc::Receiver<UploadPart>,
    ) -> Result<(), PeerCallError> {
        use futures::StreamExt;
        let id = record.contract_id;
        let client = self.client(record);
        let id_hex = hex::encode(id);
        // Each PUT owns its client handle (a clone shares the connection pool), so the
        // stream's futures borrow nothing and the task stays Send.
        let puts = futures::stream::unfold(parts, move |mut parts| {
            let client = client.clone();
            async move {
                let part = parts.recv().await?;
                Some((async move { client.put_part(&id, part).await }, parts))
            }
        })
        .buffered(UPLOAD_WINDOW);
        futures::pin_mut!(puts);
        let mut sent_parts = 0u32;
        while let Some(status) = puts.next().await {
            let status = status?;
            self.progress.advance(&id_hex, status.received);
            sent_parts += 1;
            let stall = crate::dev_fault!(self.dev_fault, StallMidUpload)
                && sent_parts == 2
                && status.received < record.ciphertext_length;
            self.stall_if(stall).await;
        }
        Ok(())
    }

    /// Encrypts the file into the staged C on two threads (AES-GCM on one; the staged
    /// file, the parts for `parts` and their leaves, which are also C's Merkle leaves, on
    /// the other) and keeps the leaves.
    async fn encrypt(
        &self,
        record: &RentedContract,
        from: Option<u64>,
        parts_tx: tokio::sync::mpsc::Sender<UploadPart>,
    ) -> Result<MerkleTree, RenterError> {
        let (key, id) = (record.file_key, record.contract_id);
        let source = PathBuf::from(&record.source);
        let (staged, leaves) = (self.staged_c(&id), self.leaves_path(&id));
        let sent_log = self.sent_log_path(&id);
        let shown = source.display().to_string();
        tokio::task::spawn_blocking(move || {
            let input = std::fs::File::open(&source)?;
            let log = SentLog::open(&sent_log)?;
            let parts = PartSink::new(from.unwrap_or(0), log, from.map(|_| parts_tx));
            let output = std::fs::File::create(&staged)?;
            let tree = encrypt_into(&key, &id, input, output, parts)?;
            let bytes: Vec<u8> = tree.leaves().iter().flatten().copied().collect();
            crate::files::write_atomically(&leaves, &bytes)?;
            Ok::<_, std::io::Error>(tree)
        })
        .await
        .map_err(internal)?
        .map_err(|e| RenterError::Invalid(format!("cannot encrypt {shown}: {e}")))
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
                // With several parts in flight, one the farmer took from an earlier,
                // broken attempt moves its count past a part sent again: that refusal
                // only means resuming from the farmer's new count.
                Err(PeerCallError::Refused(e)) => {
                    if !self.farmer_moved(record, &status).await {
                        return Err(PeerCallError::Refused(e).into());
                    }
                    last_error = Some(PeerCallError::Refused(e));
                    continue;
                }
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

impl Renter {
    /// Whether the farmer's upload count is past `before` now.
    async fn farmer_moved(&self, record: &RentedContract, before: &UploadStatus) -> bool {
        let now = self.client(record).upload_status(&record.contract_id).await;
        now.is_ok_and(|now| now.received > before.received)
    }
}

/// Upload parts the encrypting pass may run ahead of the ones in flight.
const UPLOAD_PARTS_AHEAD: usize = 2;

/// Encrypts `input` into `output` with AES-GCM on this thread while a second thread writes
/// `output` and cuts the ciphertext into `parts`, whose leaves build C's Merkle tree.
fn encrypt_into(
    key: &[u8; 32],
    id: &[u8; 32],
    input: std::fs::File,
    output: std::fs::File,
    mut parts: PartSink,
) -> std::io::Result<MerkleTree> {
    let (to_hasher, ciphertext) = crate::pipe::pipe();
    std::thread::scope(|scope| {
        let hasher = scope.spawn(move || {
            let mut output = std::io::BufWriter::with_capacity(crate::pipe::PIPE_BLOCK, output);
            for block in ciphertext.blocks() {
                output.write_all(&block)?;
                parts.push(&block)?;
            }
            output.flush()?;
            parts.finish()
        });
        let mut to_hasher = to_hasher;
        let encrypted = encrypt_stream(key, id, std::io::BufReader::new(input), &mut to_hasher)
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|_| to_hasher.flush());
        drop(to_hasher); // the end of C for the hashing thread
        let tree = hasher
            .join()
            .map_err(|_| std::io::Error::other("the hashing thread panicked"))?;
        // The hashing side's error first: a changed file stops it, which then also breaks
        // the encrypting side's pipe.
        let tree = tree?;
        encrypted?;
        Ok(tree)
    })
}

/// Cuts the whole ciphertext into upload parts of [`UPLOAD_PART`] bytes and hashes each
/// once: its leaves go into C's Merkle tree and into the part's signed digest. Checks each
/// part's digest against the [`SentLog`] (recording it there first if it is new) and hands
/// the parts from byte `from` on to the sending task; once that task is gone it only
/// checks. A part that differs from one sent before (the file changed after a crash)
/// stops the pass.
struct PartSink {
    from: u64,
    at: u64,
    part: Vec<u8>,
    log: SentLog,
    tree: MerkleBuilder,
    parts: Option<tokio::sync::mpsc::Sender<UploadPart>>,
}

impl PartSink {
    /// `parts` is None when nothing is streamed (the farmer is unreachable); the parts a
    /// farmer may hold are still checked, since the staged C is what a resume sends.
    fn new(from: u64, log: SentLog, parts: Option<tokio::sync::mpsc::Sender<UploadPart>>) -> Self {
        // The farmer counts whole parts; an unaligned count gets no stream (the resumable
        // upload of the staged C then starts from it).
        let aligned = from.is_multiple_of(UPLOAD_PART as u64);
        PartSink {
            from,
            at: 0,
            part: Vec::with_capacity(UPLOAD_PART),
            log,
            tree: MerkleBuilder::recording_leaves(),
            parts: parts.filter(|_| aligned),
        }
    }

    /// The next ciphertext bytes, in order.
    fn push(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let taken = bytes.len().min(UPLOAD_PART - self.part.len());
            self.part.extend_from_slice(&bytes[..taken]);
            bytes = &bytes[taken..];
            if self.part.len() == UPLOAD_PART {
                self.cut()?;
            }
        }
        Ok(())
    }

    /// Sends the last, short part; C's Merkle tree.
    fn finish(mut self) -> std::io::Result<MerkleTree> {
        self.cut()?;
        self.parts = None;
        self.tree
            .finish_tree()
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    fn cut(&mut self) -> std::io::Result<()> {
        if self.part.is_empty() {
            return Ok(());
        }
        let bytes = std::mem::replace(&mut self.part, Vec::with_capacity(UPLOAD_PART));
        let leaves = part_leaves(&bytes);
        self.tree
            .push_part(&bytes, &leaves)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let offset = self.at;
        self.at += bytes.len() as u64;
        let part = UploadPart::with_leaves(offset, bytes, &leaves);
        let sending = offset >= self.from && self.parts.is_some();
        self.log
            .admit(offset, &part.digest, sending)
            .map_err(std::io::Error::other)?;
        if !sending {
            return Ok(());
        }
        let gone = self
            .parts
            .as_ref()
            .is_some_and(|parts| parts.blocking_send(part).is_err());
        if gone {
            self.parts = None;
        }
        Ok(())
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

    /// What one pass gave: the tree (or the error), the staged C and the parts sent.
    type Pass = (std::io::Result<MerkleTree>, Vec<u8>, Vec<(u64, Vec<u8>)>);

    /// Encrypts `plaintext` through a [`PartSink`] streaming from `from` with the sent-log
    /// in `dir`.
    fn encrypting_pass(dir: &Path, plaintext: &[u8], from: u64) -> Pass {
        let (key, id) = ([3u8; 32], [4u8; 32]);
        let (source, staged) = (dir.join("p"), dir.join("c"));
        std::fs::write(&source, plaintext).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let log = SentLog::open(&dir.join("c.sent")).unwrap();
        let sink = PartSink::new(from, log, Some(tx));
        let (input, output) = (
            std::fs::File::open(&source).unwrap(),
            std::fs::File::create(&staged).unwrap(),
        );
        let tree = std::thread::spawn(move || encrypt_into(&key, &id, input, output, sink))
            .join()
            .unwrap();
        let mut sent = Vec::new();
        while let Some(part) = rx.blocking_recv() {
            let UploadPart {
                offset,
                bytes,
                digest,
            } = part;
            let leaves = part_leaves(&bytes);
            let expected = dstore_protocol::merkle::part_digest(bytes.len() as u64, &leaves);
            assert_eq!(digest, expected, "the part's digest is over its own bytes");
            sent.push((offset, bytes.to_vec()));
        }
        (tree, std::fs::read(&staged).unwrap(), sent)
    }

    #[test]
    fn one_encrypting_pass_gives_the_tree_the_staged_c_and_the_parts_from_an_offset() {
        let (key, id) = ([3u8; 32], [4u8; 32]);
        let plaintext: Vec<u8> = (0..9 * (1 << 20) + 5).map(|i| (i % 251) as u8).collect();
        let mut expected = Vec::new();
        encrypt_stream(&key, &id, &plaintext[..], &mut expected).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let from = UPLOAD_PART as u64;
        let (tree, staged, parts) = encrypting_pass(dir.path(), &plaintext, from);
        assert_eq!(
            tree.unwrap().commitment(),
            MerkleTree::from_data(&expected).commitment()
        );
        assert_eq!(staged, expected);
        let mut sent = Vec::new();
        for (offset, part) in parts {
            assert_eq!(offset, from + sent.len() as u64);
            assert!(part.len() <= UPLOAD_PART);
            sent.extend_from_slice(&part);
        }
        assert_eq!(sent, expected[from as usize..]);
    }

    /// The attack: after a crash mid-upload the file is changed, and a resumed pass would
    /// put new plaintext under nonces whose ciphertext the farmer may already hold. The
    /// unchanged file resumes; the changed one is refused before its part is sent.
    #[test]
    fn a_resumed_pass_over_a_changed_file_sends_nothing_under_a_used_nonce() {
        let plaintext: Vec<u8> = (0..3 * UPLOAD_PART + 9).map(|i| (i % 241) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let (first, _, sent) = encrypting_pass(dir.path(), &plaintext, 0);
        first.unwrap();
        assert_eq!(sent.len(), 4);

        // The farmer acknowledged one part; the same file resumes from it.
        let (again, _, resent) = encrypting_pass(dir.path(), &plaintext, UPLOAD_PART as u64);
        again.unwrap();
        assert_eq!(resent.len(), 3);

        let mut changed = plaintext.clone();
        changed[2 * UPLOAD_PART + 1] ^= 1;
        let (refused, _, resent) = encrypting_pass(dir.path(), &changed, UPLOAD_PART as u64);
        let error = refused.unwrap_err().to_string();
        assert!(error.contains("the file changed"), "{error}");
        assert!(
            resent
                .iter()
                .all(|(offset, _)| *offset < 2 * UPLOAD_PART as u64),
            "a changed part was sent"
        );
    }
}
