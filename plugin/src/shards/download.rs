//! `dstore-download <file_id> <out>`: K shards downloaded in parallel, each an ordinary
//! paid mode-L download of its contract through the download driver (root checks, fraud
//! proofs and refunds as for any contract). The K first shard downloads are run up to the
//! point where TX1 is due and funded together from one TX1, one output per farmer
//! (`crate::renter` `tx1_group`); a shard whose download fails is marked suspect and
//! another shard takes its place with a TX1 of its own. Then the K shards are decoded into
//! C, C is decrypted with K_f and checked against root_C, and the output is renamed into
//! place only then.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dstore_protocol::merkle::MerkleCommitment;
use serde_json::{json, Value};

use crate::renter::Prepared;

use super::jobs::{FileJob, ShardRun};
use super::probe::ProbeOutcome;
use super::record::{FileRecord, JobRequest, ShardSlot, ShardState};
use super::{codec, internal, FileError, Files};

/// How long one call into the download driver waits before it is asked again.
const DRIVER_WAIT: Duration = Duration::from_secs(600);
/// Times a shard's download is bought again when the driver reports an older download.
const STALE_REPORTS: usize = 3;

/// What the shard downloads of a job gave: the shards fetched (with the driver's reply)
/// and why the others failed.
pub struct Fetched {
    pub done: Vec<(u8, Value)>,
    pub failures: Vec<String>,
    /// The shards whose download failed, with why.
    pub failed: Vec<(u8, String)>,
}

impl Files {
    /// `dstore-download <file_id> <out> [wait_seconds]`: starts the file's download job or
    /// joins the running one, and waits as a contract download does.
    pub async fn download(
        self: &Arc<Self>,
        file_id: &[u8; 32],
        output: &Path,
        wait: Option<Duration>,
    ) -> Result<Value, FileError> {
        let output = absolute(output)?;
        let record = self.existing(file_id)?;
        if record.root_c.is_none() {
            return Err(FileError::Invalid("the file is not encoded yet".into()));
        }
        self.run_job(file_id, JobRequest::Download { output }, wait)
            .await
    }

    /// The job's work: K shards, then decode, decrypt, check, rename.
    pub(super) async fn download_file(
        self: &Arc<Self>,
        job: &Arc<FileJob>,
        file_id: &[u8; 32],
        output: &Path,
    ) -> Result<Value, FileError> {
        let record = self.existing(file_id)?;
        let needed = usize::from(record.needed);
        let order = self.download_order(&record).await;
        let fetched = self
            .fetch_shards_with(job, &record, order, needed, needed, true)
            .await;
        if fetched.done.len() < needed {
            return Err(FileError::TooFewShards(format!(
                "only {} of the {needed} shards needed could be downloaded: {}",
                fetched.done.len(),
                fetched.failures.join("; ")
            )));
        }
        let bytes = self.decode(&record, &fetched, output).await?;
        tracing::info!(file = %hex::encode(file_id), bytes, "file download complete");
        Ok(json!({
            "file_id": hex::encode(file_id),
            "status": "done",
            "output": output.display().to_string(),
            "bytes": bytes,
            "shards_used": fetched.done.iter().map(|(i, _)| i).collect::<Vec<_>>(),
            "shards": fetched.done.iter().map(|(i, reply)| json!({
                "index": i,
                "contract_id": reply["contract_id"],
                "price_sat": reply["price_sat"],
                "tx1": reply["tx1"],
                "tx1_txid": reply["tx1"],
                "tx1_vout": reply["tx1_vout"],
                "tx2": reply["tx2"],
                "tx3": reply["tx3"],
            })).collect::<Vec<_>>(),
            "tx1_txids": tx1_txids(&fetched),
            "failures": fetched.failures,
        }))
    }

    /// Decodes C from the fetched shards, decrypts and checks it into `output`; the
    /// fetched shard files are removed either way.
    pub(super) async fn decode(
        &self,
        record: &FileRecord,
        fetched: &Fetched,
        output: &Path,
    ) -> Result<u64, FileError> {
        let params = super::params_of(record)?;
        let commitment = commitment(record)?;
        let paths = self.fetched_paths(record, fetched);
        let (key, id, out) = (record.file_key, record.file_id, output.to_path_buf());
        let cleanup = paths.clone();
        let decoded = tokio::task::spawn_blocking(move || {
            codec::decode_file(&key, &id, params, &commitment, &paths, &out)
        })
        .await
        .map_err(internal)?;
        for path in cleanup.into_iter().flatten() {
            let _ = std::fs::remove_file(path);
        }
        decoded
    }

    /// N entries: the fetched shard file of each shard fetched, else `None`.
    pub(super) fn fetched_paths(
        &self,
        record: &FileRecord,
        fetched: &Fetched,
    ) -> Vec<Option<PathBuf>> {
        (0..record.shards_total)
            .map(|i| {
                fetched
                    .done
                    .iter()
                    .any(|(d, _)| *d == i)
                    .then(|| self.fetched_shard(&record.file_id, i))
            })
            .collect()
    }

    /// The shards worth trying, best first: healthy ones, then stored ones whose farmer
    /// did not answer (it may be back), last the ones whose probe failed; never a shard
    /// that is not stored.
    async fn download_order(&self, record: &FileRecord) -> Vec<u8> {
        let health = self.health(record).await;
        let mut order: Vec<(u8, u8)> = health
            .iter()
            .filter(|h| {
                record
                    .slot(h.index)
                    .is_some_and(|s| s.state == ShardState::Stored)
                    && !h.burned
            })
            .map(|h| {
                let lost = matches!(h.probe, Some(ProbeOutcome::Lost(_)));
                let rank = match (h.healthy, h.reachable) {
                    (true, _) => 0,
                    _ if lost => 3,
                    (false, true) => 1,
                    (false, false) => 2,
                };
                (rank, h.index)
            })
            .collect();
        order.sort();
        order.into_iter().map(|(_, i)| i).collect()
    }

    /// Downloads shards in `order`, `in_flight` at a time, until `want` are fetched: a
    /// failed shard is marked suspect and the next in `order` takes its place. Each shard
    /// download funds its own TX1.
    pub(super) async fn fetch_shards(
        self: &Arc<Self>,
        job: &Arc<FileJob>,
        record: &FileRecord,
        order: Vec<u8>,
        want: usize,
        in_flight: usize,
    ) -> Fetched {
        self.fetch_shards_with(job, record, order, want, in_flight, false)
            .await
    }

    /// Like [`Files::fetch_shards`]; with `share_tx1` the first downloads are funded from
    /// one TX1 ([`Files::fund_first_together`]), and a replacement funds its own.
    async fn fetch_shards_with(
        self: &Arc<Self>,
        job: &Arc<FileJob>,
        record: &FileRecord,
        order: Vec<u8>,
        want: usize,
        in_flight: usize,
        share_tx1: bool,
    ) -> Fetched {
        let mut queue = order.into_iter().filter_map(|i| record.slot(i).cloned());
        let mut tasks = tokio::task::JoinSet::new();
        let spawn = |tasks: &mut tokio::task::JoinSet<_>, slot: ShardSlot| {
            let (files, job, file_id) = (self.clone(), job.clone(), record.file_id);
            tasks.spawn(async move {
                let outcome = files.fetch_shard(&job, &file_id, &slot).await;
                (slot, outcome)
            });
        };
        let first: Vec<ShardSlot> = queue.by_ref().take(in_flight.max(1)).collect();
        let mut unfunded = if share_tx1 {
            self.fund_first_together(job, record, &first).await
        } else {
            HashMap::new()
        };
        for slot in first {
            match unfunded.remove(&slot.index) {
                Some(error) => {
                    job.shard(
                        slot.index,
                        slot.contract_id,
                        ShardRun::Failed(error.clone()),
                    );
                    tasks.spawn(async move { (slot, Err(error)) });
                }
                None => spawn(&mut tasks, slot),
            }
        }
        let mut fetched = Fetched {
            done: Vec::new(),
            failures: Vec::new(),
            failed: Vec::new(),
        };
        while let Some(joined) = tasks.join_next().await {
            let Ok((slot, outcome)) = joined else {
                continue;
            };
            let suspect = outcome.as_ref().err().cloned();
            let _ = self.update(&record.file_id, |r| {
                if let Some(s) = r.slot_mut(slot.index) {
                    if s.contract_id == slot.contract_id {
                        s.suspect = suspect
                            .clone()
                            .map(|e| format!("its last download failed: {e}"));
                    }
                }
            });
            match outcome {
                Ok(reply) => fetched.done.push((slot.index, reply)),
                Err(e) => {
                    tracing::warn!(file = %hex::encode(record.file_id), shard = slot.index, "shard download failed: {e}");
                    fetched.failures.push(format!("shard {}: {e}", slot.index));
                    fetched.failed.push((slot.index, e));
                    if fetched.done.len() + tasks.len() < want {
                        if let Some(next) = queue.next() {
                            spawn(&mut tasks, next);
                        }
                    }
                }
            }
            if fetched.done.len() >= want {
                break;
            }
        }
        fetched.done.sort_by_key(|(i, _)| *i);
        fetched
    }

    /// Runs the downloads of `slots` up to TX1 in parallel and funds every one that got
    /// there from one TX1 (broadcast before this returns); the shards that failed before
    /// being funded, with why (nothing was paid for them). A shard whose contract already
    /// has a paid download or a download job running, or whose fetched file is there, is
    /// left to [`Files::fetch_shard`].
    async fn fund_first_together(
        &self,
        job: &FileJob,
        record: &FileRecord,
        slots: &[ShardSlot],
    ) -> HashMap<u8, String> {
        let mut unfunded = HashMap::new();
        if slots.len() < 2 {
            return unfunded;
        }
        let prepared = futures::future::join_all(
            slots
                .iter()
                .map(|slot| self.prepare_shard(job, &record.file_id, slot)),
        )
        .await;
        let mut ready = Vec::new();
        for (slot, outcome) in slots.iter().zip(prepared) {
            match outcome {
                Ok(Prepared::Ready { download_id }) => {
                    ready.push((slot.index, (slot.contract_id, download_id)))
                }
                Ok(Prepared::Driver) => {}
                Err(e) => {
                    unfunded.insert(slot.index, e);
                }
            }
        }
        if ready.is_empty() {
            return unfunded;
        }
        let group: Vec<([u8; 32], [u8; 32])> = ready.iter().map(|(_, ids)| *ids).collect();
        let funded = self.renter.fund_together(&group).await;
        for ((index, _), outcome) in ready.iter().zip(funded) {
            match outcome {
                Ok(outpoint) => {
                    tracing::info!(file = %hex::encode(record.file_id), shard = index, tx1 = %outpoint, "shard download funded")
                }
                Err(e) => {
                    unfunded.insert(*index, e);
                }
            }
        }
        unfunded
    }

    /// Shard `slot`'s download, run up to the point where TX1 is due, into its fetched
    /// file.
    async fn prepare_shard(
        &self,
        job: &FileJob,
        file_id: &[u8; 32],
        slot: &ShardSlot,
    ) -> Result<Prepared, String> {
        let out = self.fetched_shard(file_id, slot.index);
        if out.exists() {
            return Ok(Prepared::Driver);
        }
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        job.shard(slot.index, slot.contract_id, ShardRun::Running);
        self.renter
            .prepare_download(&slot.contract_id, &out)
            .await
            .map_err(|e| e.to_string())
    }

    /// One shard's ordinary download into its fetched file, driven to the end; the
    /// driver's `done` reply.
    async fn fetch_shard(
        &self,
        job: &FileJob,
        file_id: &[u8; 32],
        slot: &ShardSlot,
    ) -> Result<Value, String> {
        let (index, id) = (slot.index, slot.contract_id);
        let out = self.fetched_shard(file_id, index);
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        if out.exists() {
            // Bought and checked by an earlier job that ended before decoding (a crash, too
            // few shards): not bought again. C's root check still covers its bytes.
            job.shard(index, id, ShardRun::Done);
            return Ok(json!({"status": "done", "contract_id": hex::encode(id), "reused": true}));
        }
        job.shard(index, id, ShardRun::Running);
        let outcome = self.drive_shard(job, slot, &out).await;
        match &outcome {
            Ok(_) => job.shard(index, id, ShardRun::Done),
            Err(e) => job.shard(index, id, ShardRun::Failed(e.clone())),
        }
        outcome
    }

    async fn drive_shard(
        &self,
        job: &FileJob,
        slot: &ShardSlot,
        out: &Path,
    ) -> Result<Value, String> {
        let (index, id) = (slot.index, slot.contract_id);
        for _ in 0..STALE_REPORTS {
            let mut reply = self
                .renter
                .download(&id, out, None)
                .await
                .map_err(|e| e.to_string())?;
            while reply["status"] != "done" {
                let run = if reply["status"] == "waiting" {
                    ShardRun::Waiting
                } else {
                    ShardRun::Running
                };
                job.shard(index, id, run);
                reply = self
                    .renter
                    .download(&id, out, Some(DRIVER_WAIT))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let ours = reply["output"].as_str() == Some(&out.display().to_string());
            if ours && out.exists() {
                return Ok(reply);
            }
            // The outcome of an earlier download of this contract, owed to this call:
            // the next call buys a new one.
        }
        Err("the download driver kept reporting earlier downloads".into())
    }
}

/// The distinct TX1s that funded the fetched shards, in shard order.
fn tx1_txids(fetched: &Fetched) -> Vec<Value> {
    let mut txids: Vec<Value> = Vec::new();
    for (_, reply) in &fetched.done {
        if !reply["tx1"].is_null() && !txids.contains(&reply["tx1"]) {
            txids.push(reply["tx1"].clone());
        }
    }
    txids
}

/// C's commitment as the file record holds it.
pub(super) fn commitment(record: &FileRecord) -> Result<MerkleCommitment, FileError> {
    Ok(MerkleCommitment {
        root: record
            .root_c
            .ok_or_else(|| FileError::Invalid("the file is not encoded yet".into()))?,
        length: record
            .ciphertext_length
            .ok_or_else(|| FileError::Invalid("the file is not encoded yet".into()))?,
    })
}

/// `output` as an absolute path; it must name a file.
fn absolute(path: &Path) -> Result<PathBuf, FileError> {
    if path.as_os_str().is_empty() || path.file_name().is_none() {
        return Err(FileError::Invalid("output_path must name a file".into()));
    }
    std::path::absolute(path).map_err(|e| FileError::Invalid(e.to_string()))
}
