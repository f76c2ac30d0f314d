//! `dstore-open … shards=N needed=K`: checks every parameter before anything is created,
//! stores the file record (with each shard's farmer and contract id) before any network
//! step, encrypts and erasure-codes the file into N staged shard files, then opens the N
//! shard contracts in parallel (bounded), each an ordinary resumable `Renter::open_as`.
//! After a restart, unfinished file opens go on in the background.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bitcoin::Amount;
use dstore_protocol::datapath::ciphertext_len;
use dstore_protocol::erasure::{shard_len, ErasureError, ShardParams};
use rand::RngCore;
use serde_json::Value;
use tokio::sync::Semaphore;

use super::record::{FilePhase, FileRecord, ShardSlot, ShardState};
use super::{codec, internal, FileError, Files, CONCURRENCY};
use crate::renter::normalise_url;
use crate::renter::records::AuditRequest;

/// Where the shards go: listed farmers (one per shard) or the market's best.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Farmers {
    Listed(Vec<String>),
    Auto,
}

impl Farmers {
    /// `auto`, or a comma-separated list of farmer peer URLs.
    pub fn parse(text: &str) -> Farmers {
        if text.trim() == "auto" {
            return Farmers::Auto;
        }
        Farmers::Listed(text.split(',').map(|u| u.trim().to_string()).collect())
    }
}

/// What `dstore-open` asked for, when it asked for shards.
#[derive(Debug, Clone)]
pub struct OpenFile {
    pub farmers: Farmers,
    pub file: PathBuf,
    pub shards: u64,
    pub needed: Option<u64>,
    pub price: Option<Amount>,
    pub audits: Option<AuditRequest>,
}

/// `shards=N needed=K` as erasure parameters; a bad pair is a parameter error.
pub fn shard_params(shards: u64, needed: Option<u64>) -> Result<ShardParams, FileError> {
    let needed =
        needed.ok_or_else(|| FileError::Invalid("needed (K) is required with shards".into()))?;
    ShardParams::new(shards, needed).map_err(|e| match e {
        ErasureError::Params(p) => FileError::Invalid(p.to_string()),
        other => FileError::Erasure(other),
    })
}

/// The listed farmer URLs, normalised: exactly `n`, no two the same.
pub fn listed_farmers(urls: &[String], n: usize) -> Result<Vec<String>, FileError> {
    let mut out: Vec<String> = Vec::with_capacity(urls.len());
    for url in urls {
        let url = normalise_url(url).map_err(|e| FileError::Invalid(e.to_string()))?;
        if out.contains(&url) {
            return Err(FileError::Invalid(format!(
                "duplicate farmer {url}: each shard needs its own farmer"
            )));
        }
        out.push(url);
    }
    if out.len() != n {
        return Err(FileError::Invalid(format!(
            "{} farmer URLs for shards={n}: list exactly one farmer per shard",
            out.len()
        )));
    }
    Ok(out)
}

impl Files {
    /// `dstore-open` with shards: every check first (nothing is created on bad input),
    /// then the file record, then the open itself. Returns the file's JSON once every
    /// shard was tried; an error names the shards that failed.
    pub async fn open(self: &Arc<Self>, request: OpenFile) -> Result<Value, FileError> {
        let params = shard_params(request.shards, request.needed)?;
        if let Some(audits) = &request.audits {
            audits
                .check()
                .map_err(|e| FileError::Invalid(e.to_string()))?;
        }
        let size = file_size(&request.file)?;
        let c_len =
            ciphertext_len(size).ok_or_else(|| FileError::Invalid("file too large".into()))?;
        let urls = match &request.farmers {
            Farmers::Listed(urls) => listed_farmers(urls, params.shards())?,
            Farmers::Auto => {
                self.auto_farmers(shard_len(c_len, params), params.shards(), Vec::new())
                    .await?
            }
        };
        let record = new_record(&request, params, size, urls);
        self.store(&record)?;
        tracing::info!(file = %hex::encode(record.file_id), shards = params.shards(), needed = params.needed(), "file open: record stored");
        // A task of its own: a caller that goes away does not cancel the shard opens.
        let record = tokio::spawn(self.clone().drive_open(record.file_id))
            .await
            .map_err(internal)??;
        let failed: Vec<String> = record
            .shards
            .iter()
            .filter(|s| s.state != ShardState::Stored)
            .map(|s| format!("shard {} ({})", s.index, s.error.as_deref().unwrap_or("?")))
            .collect();
        if !failed.is_empty() {
            return Err(FileError::TooFewShards(format!(
                "file {}: {} not stored (dstore-status shows the file, dstore-repair places the missing shards elsewhere)",
                hex::encode(record.file_id),
                failed.join(", ")
            )));
        }
        Ok(super::status::open_json(&record))
    }

    /// `n` distinct market farmers for shards of `shard_plaintext_len` bytes, none in
    /// `exclude`.
    pub(super) async fn auto_farmers(
        &self,
        shard_plaintext_len: u64,
        n: usize,
        exclude: Vec<String>,
    ) -> Result<Vec<String>, FileError> {
        let market = self.market.clone();
        let choices = tokio::task::spawn_blocking(move || {
            crate::market::methods::choose_farmers(&market, shard_plaintext_len, n, &exclude)
        })
        .await
        .map_err(internal)?
        .map_err(FileError::Rpc)?;
        Ok(choices.into_iter().map(|c| c.peer_url).collect())
    }

    /// Encodes (unless done) and opens every shard not yet stored or failed, at most
    /// [`CONCURRENCY`] at a time; the staged shard files go once every shard is stored.
    pub(super) async fn drive_open(
        self: Arc<Self>,
        file_id: [u8; 32],
    ) -> Result<FileRecord, FileError> {
        let record = self.existing(&file_id)?;
        if record.phase == FilePhase::Encoding {
            self.encode(&record).await?;
        }
        self.open_shards(&file_id).await?;
        let record = self.update(&file_id, |r| r.phase = FilePhase::Stored)?;
        if record.shards.iter().all(|s| s.state == ShardState::Stored) {
            let _ = std::fs::remove_dir_all(self.file_dir(&file_id));
        }
        Ok(record)
    }

    /// Encrypts the file once into C and erasure-codes C into the staged shard files.
    async fn encode(&self, record: &FileRecord) -> Result<(), FileError> {
        let params = super::params_of(record)?;
        let outputs: Vec<PathBuf> = (0..record.shards_total)
            .map(|i| self.staged_shard(&record.file_id, i))
            .collect();
        let (key, id, source) = (
            record.file_key,
            record.file_id,
            PathBuf::from(&record.source),
        );
        let commitment = tokio::task::spawn_blocking(move || {
            codec::encode_file(&key, &id, &source, params, &outputs)
        })
        .await
        .map_err(internal)??;
        self.update(&record.file_id, |r| {
            r.ciphertext_length = Some(commitment.length);
            r.root_c = Some(commitment.root);
            r.phase = FilePhase::Opening;
        })?;
        tracing::info!(file = %hex::encode(record.file_id), bytes = commitment.length, "file encoded into shards");
        Ok(())
    }

    /// Opens the shards that are pending or were interrupted, in parallel (bounded).
    pub(super) async fn open_shards(self: &Arc<Self>, file_id: &[u8; 32]) -> Result<(), FileError> {
        let record = self.existing(file_id)?;
        let permits = Arc::new(Semaphore::new(CONCURRENCY));
        let mut tasks = tokio::task::JoinSet::new();
        for slot in &record.shards {
            if matches!(slot.state, ShardState::Pending | ShardState::Opening) {
                let (files, permits, id, index) =
                    (self.clone(), permits.clone(), *file_id, slot.index);
                tasks.spawn(async move { files.open_shard(id, index, permits).await });
            }
        }
        while let Some(done) = tasks.join_next().await {
            done.map_err(internal)??;
        }
        Ok(())
    }

    /// One shard's ordinary open under its stored contract id; its outcome is recorded.
    async fn open_shard(
        &self,
        file_id: [u8; 32],
        index: u8,
        permits: Arc<Semaphore>,
    ) -> Result<(), FileError> {
        let _permit = permits.acquire_owned().await.map_err(internal)?;
        let record = self.update(&file_id, |r| {
            if let Some(slot) = r.slot_mut(index) {
                slot.state = ShardState::Opening;
            }
        })?;
        let slot = record
            .slot(index)
            .cloned()
            .ok_or_else(|| internal("no such shard"))?;
        let staged = self.staged_shard(&file_id, index);
        let outcome = self
            .renter
            .open_as(
                slot.contract_id,
                &slot.farmer_url,
                &staged,
                record.price,
                record.audits,
            )
            .await;
        if let Err(e) = &outcome {
            tracing::warn!(file = %hex::encode(file_id), shard = index, farmer = %slot.farmer_url, "shard open failed: {e}");
        }
        self.update(&file_id, |r| {
            if let Some(slot) = r.slot_mut(index) {
                match &outcome {
                    Ok(_) => {
                        slot.state = ShardState::Stored;
                        slot.error = None;
                    }
                    Err(e) => {
                        slot.state = ShardState::Failed;
                        slot.error = Some(e.to_string());
                    }
                }
            }
        })?;
        Ok(())
    }

    /// After a restart: every file open a crash interrupted goes on in the background
    /// (shards not started start; started ones resume through their contract's record),
    /// and so does every file download or repair that had not ended.
    pub fn resume(self: &Arc<Self>) -> Result<(), FileError> {
        self.resume_jobs()?;
        for record in self.list()? {
            if record.phase == FilePhase::Stored {
                continue;
            }
            let (files, id) = (self.clone(), record.file_id);
            tracing::info!(file = %hex::encode(id), "resuming an interrupted file open");
            tokio::spawn(async move {
                if let Err(e) = files.drive_open(id).await {
                    tracing::warn!(file = %hex::encode(id), "resumed file open failed: {e}");
                }
            });
        }
        Ok(())
    }
}

fn file_size(file: &Path) -> Result<u64, FileError> {
    let meta = std::fs::metadata(file)
        .map_err(|e| FileError::Invalid(format!("{}: {e}", file.display())))?;
    if !meta.is_file() {
        return Err(FileError::Invalid(format!(
            "{} is not a file",
            file.display()
        )));
    }
    Ok(meta.len())
}

/// A new file record: fresh file id and key, and each shard's farmer and contract id.
fn new_record(request: &OpenFile, params: ShardParams, size: u64, urls: Vec<String>) -> FileRecord {
    let mut rng = rand::thread_rng();
    let mut random = || {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        bytes
    };
    let (file_id, file_key) = (random(), random());
    let shards = urls
        .into_iter()
        .enumerate()
        .map(|(i, farmer_url)| ShardSlot {
            index: i as u8,
            farmer_url,
            contract_id: random(),
            state: ShardState::Pending,
            error: None,
            suspect: None,
            last_probe: None,
        })
        .collect();
    FileRecord {
        file_id,
        file_key,
        shards_total: params.shards() as u8,
        needed: params.needed() as u8,
        source: std::path::absolute(&request.file)
            .unwrap_or_else(|_| request.file.clone())
            .display()
            .to_string(),
        plaintext_length: size,
        ciphertext_length: None,
        root_c: None,
        phase: FilePhase::Encoding,
        price: request.price,
        audits: request.audits,
        shards,
        replaced: Vec::new(),
        job: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_shard_parameters_are_refused() {
        assert!(shard_params(3, Some(2)).is_ok());
        for (n, k) in [(3, Some(0)), (3, Some(4)), (33, Some(2)), (3, None)] {
            assert!(
                matches!(shard_params(n, k), Err(FileError::Invalid(_))),
                "{n} {k:?}"
            );
        }
    }

    #[test]
    fn farmer_lists_need_one_distinct_farmer_per_shard() {
        let urls = |s: &str| match Farmers::parse(s) {
            Farmers::Listed(u) => u,
            Farmers::Auto => panic!("auto"),
        };
        assert_eq!(Farmers::parse(" auto "), Farmers::Auto);
        assert_eq!(
            listed_farmers(&urls("127.0.0.1:1, http://127.0.0.1:2/"), 2).unwrap(),
            vec!["http://127.0.0.1:1", "http://127.0.0.1:2"]
        );
        assert!(listed_farmers(&urls("127.0.0.1:1,http://127.0.0.1:1"), 2).is_err());
        assert!(listed_farmers(&urls("127.0.0.1:1"), 2).is_err());
        assert!(listed_farmers(&urls("127.0.0.1:1,"), 2).is_err());
    }
}
