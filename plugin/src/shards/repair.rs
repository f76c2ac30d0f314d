//! `dstore-repair <file_id> [farmer_urls|auto]`: every shard is checked for free (its
//! farmer is not burned, failed no audit, and answers a Merkle probe of the shard drawn
//! from the tip: a farmer that lost its copy cannot, `shards::probe`); if some shard is
//! unhealthy, exactly K healthy shards are downloaded (paid, through the ordinary driver;
//! a shard whose download fails is counted bad too and another healthy one takes its
//! place), the bad shards are rebuilt from them and opened with new farmers (none already
//! holding a shard of the file).
//! The file record moves to the new contracts, the old ones are kept under `replaced`.
//! It runs in the background like a download (it waits for the chain).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dstore_protocol::erasure::shard_len;
use rand::RngCore;
use serde_json::{json, Value};

use super::download::Fetched;
use super::jobs::FileJob;
use super::open::{listed_farmers, Farmers};
use super::record::{FilePhase, FileRecord, JobRequest, ReplacedShard, ShardState};
use super::status::Health;
use super::{codec, internal, FileError, Files};

impl Files {
    /// `dstore-repair`: starts the file's repair job or joins the running one (a repeated
    /// call with the same parameters waits for it), and waits as a download does.
    pub async fn repair(
        self: &Arc<Self>,
        file_id: &[u8; 32],
        farmers: Option<Farmers>,
        wait: Option<Duration>,
    ) -> Result<Value, FileError> {
        let record = self.existing(file_id)?;
        // A repeated call joins the running repair: its farmers may hold a shard by now.
        let joining = self.jobs.get(file_id).is_some();
        if let (Some(Farmers::Listed(urls)), false) = (&farmers, joining) {
            check_new_farmers(&record, urls)?;
        }
        if record.root_c.is_none() {
            return Err(FileError::Invalid("the file is not encoded yet".into()));
        }
        self.run_job(file_id, JobRequest::Repair { farmers }, wait)
            .await
    }

    /// The job's work: probe every shard (free), pay for exactly K healthy shards'
    /// downloads (another healthy shard takes the place of one whose download fails),
    /// rebuild the bad ones, re-place them.
    pub(super) async fn repair_file(
        self: &Arc<Self>,
        job: &Arc<FileJob>,
        file_id: &[u8; 32],
        farmers: Option<Farmers>,
    ) -> Result<Value, FileError> {
        let record = self.existing(file_id)?;
        let tip = self.tip().await?;
        let health = self.health_at(&record, Ok(tip)).await;
        let probes = probes_json(&record, &health);
        let mut bad: Vec<(u8, String)> = health
            .iter()
            .filter(|h| !h.healthy)
            .map(|h| (h.index, h.reason.clone().unwrap_or_default()))
            .collect();
        if bad.is_empty() {
            return self.repair_json(file_id, Vec::new(), None, probes);
        }
        // No download is bought unless new farmers can take the bad shards.
        self.new_farmers(&record, farmers.clone(), bad.len())
            .await?;
        let fetched = self.fetch_healthy(job, &record, &health, &mut bad).await?;
        let urls = self.new_farmers(&record, farmers, bad.len()).await;
        let urls = match urls {
            Ok(urls) => urls,
            Err(e) => {
                self.discard_fetched(&record, &fetched);
                return Err(e);
            }
        };
        let rebuilt = self.rebuild(&record, &fetched, &bad).await;
        self.discard_fetched(&record, &fetched);
        rebuilt?;
        let moved = self.move_shards(file_id, &bad, urls)?;
        self.clone().drive_open(*file_id).await?;
        self.repair_json(file_id, moved, Some(&fetched), probes)
    }

    /// Pays for exactly K of the healthy shards' downloads (K at a time; a shard whose
    /// download fails joins `bad` and the next healthy shard is bought instead).
    async fn fetch_healthy(
        self: &Arc<Self>,
        job: &Arc<FileJob>,
        record: &FileRecord,
        health: &[Health],
        bad: &mut Vec<(u8, String)>,
    ) -> Result<Fetched, FileError> {
        let needed = usize::from(record.needed);
        let good: Vec<u8> = health
            .iter()
            .filter(|h| h.healthy)
            .map(|h| h.index)
            .collect();
        let fetched = self.fetch_shards(job, record, good, needed, needed).await;
        for (index, error) in &fetched.failed {
            tracing::info!(shard = index, "repair: shard download failed: {error}");
            bad.push((*index, format!("its download failed: {error}")));
        }
        bad.sort();
        if fetched.done.len() < needed {
            self.discard_fetched(record, &fetched);
            return Err(FileError::TooFewShards(format!(
                "only {} healthy shards could be downloaded, {needed} are needed to rebuild: {}",
                fetched.done.len(),
                fetched.failures.join("; ")
            )));
        }
        Ok(fetched)
    }

    /// Regenerates the `bad` shards into their staged files from the fetched ones.
    async fn rebuild(
        &self,
        record: &FileRecord,
        fetched: &Fetched,
        bad: &[(u8, String)],
    ) -> Result<(), FileError> {
        let params = super::params_of(record)?;
        let c_len = super::download::commitment(record)?.length;
        let sources = self.fetched_paths(record, fetched);
        let wanted: Vec<usize> = bad.iter().map(|(i, _)| usize::from(*i)).collect();
        let outputs: Vec<PathBuf> = bad
            .iter()
            .map(|(i, _)| self.staged_shard(&record.file_id, *i))
            .collect();
        tokio::task::spawn_blocking(move || {
            codec::rebuild_files(params, c_len, &sources, &wanted, &outputs)
        })
        .await
        .map_err(internal)?
    }

    fn discard_fetched(&self, record: &FileRecord, fetched: &Fetched) {
        for path in self.fetched_paths(record, fetched).into_iter().flatten() {
            let _ = std::fs::remove_file(path);
        }
    }

    /// `count` new farmers: listed ones (in order) or the market's best; none already
    /// holds a shard of the file.
    async fn new_farmers(
        &self,
        record: &FileRecord,
        farmers: Option<Farmers>,
        count: usize,
    ) -> Result<Vec<String>, FileError> {
        let holders: Vec<String> = record.shards.iter().map(|s| s.farmer_url.clone()).collect();
        match farmers.unwrap_or(Farmers::Auto) {
            Farmers::Auto => {
                let c_len = super::download::commitment(record)?.length;
                let params = super::params_of(record)?;
                self.auto_farmers(shard_len(c_len, params), count, holders)
                    .await
            }
            Farmers::Listed(urls) => {
                let urls = check_new_farmers(record, &urls)?;
                if urls.len() < count {
                    return Err(FileError::Invalid(format!(
                        "{count} shards need new farmers, {} listed",
                        urls.len()
                    )));
                }
                Ok(urls.into_iter().take(count).collect())
            }
        }
    }

    /// Moves each bad shard to its new farmer under a new contract id (stored before the
    /// open starts), keeping the old contract under `replaced`.
    fn move_shards(
        &self,
        file_id: &[u8; 32],
        bad: &[(u8, String)],
        urls: Vec<String>,
    ) -> Result<Vec<Value>, FileError> {
        let mut moved = Vec::new();
        self.update(file_id, |r| {
            for ((index, reason), url) in bad.iter().zip(urls) {
                let Some(slot) = r.slot_mut(*index) else {
                    continue;
                };
                let old = ReplacedShard {
                    index: *index,
                    farmer_url: slot.farmer_url.clone(),
                    contract_id: slot.contract_id,
                    reason: reason.clone(),
                };
                let mut contract_id = [0u8; 32];
                rand::thread_rng().fill_bytes(&mut contract_id);
                slot.farmer_url = url;
                slot.contract_id = contract_id;
                slot.state = ShardState::Pending;
                slot.error = None;
                slot.suspect = None;
                slot.last_probe = None;
                moved.push(json!({
                    "index": index,
                    "old_farmer": old.farmer_url,
                    "old_contract_id": hex::encode(old.contract_id),
                    "reason": old.reason,
                    "farmer": slot.farmer_url,
                    "contract_id": hex::encode(contract_id),
                }));
                r.replaced.push(old);
            }
            r.phase = FilePhase::Opening;
        })?;
        Ok(moved)
    }

    /// The finished reply: what moved, the shards' states, the probes that found the bad
    /// shards, and the shard downloads paid for (`downloads`: exactly K when every healthy
    /// shard's download worked).
    fn repair_json(
        &self,
        file_id: &[u8; 32],
        repaired: Vec<Value>,
        fetched: Option<&Fetched>,
        probes: Vec<Value>,
    ) -> Result<Value, FileError> {
        let record = self.existing(file_id)?;
        let stored = record
            .shards
            .iter()
            .filter(|s| s.state == ShardState::Stored)
            .count();
        let failed: Vec<Value> = record
            .shards
            .iter()
            .filter(|s| s.state != ShardState::Stored)
            .map(|s| json!({"index": s.index, "error": s.error}))
            .collect();
        Ok(json!({
            "file_id": hex::encode(file_id),
            "status": "done",
            "repaired": repaired,
            "healthy": stored,
            "total": record.shards_total,
            "failed": failed,
            "shards": super::status::open_json(&record)["shards"],
            "probes": probes,
            "downloads": fetched.map_or_else(Vec::new, |f| f.done.iter().map(download_json).collect()),
            "download_failures": fetched.map_or_else(Vec::new, |f| f.failures.clone()),
        }))
    }
}

/// One paid shard download, as a file download reports it.
fn download_json((index, reply): &(u8, Value)) -> Value {
    json!({
        "index": index,
        "contract_id": reply["contract_id"],
        "price_sat": reply["price_sat"],
        "tx1": reply["tx1"],
        "tx2": reply["tx2"],
        "tx3": reply["tx3"],
    })
}

/// Each shard's probe of this repair (`null` fields when none ran), with its verdict.
fn probes_json(record: &FileRecord, health: &[Health]) -> Vec<Value> {
    record
        .shards
        .iter()
        .zip(health)
        .map(|(slot, h)| {
            let probe = h.probe.as_ref().and(h.last_probe.as_ref());
            json!({
                "index": slot.index,
                "contract_id": hex::encode(slot.contract_id),
                "height": probe.map(|p| p.height),
                "ok": probe.map(|p| p.ok),
                "unreachable": probe.map(|p| p.unreachable),
                "error": probe.and_then(|p| p.error.clone()),
                "healthy": h.healthy,
                "reason": h.reason,
            })
        })
        .collect()
}

/// Listed farmers for a repair: well-formed, distinct, none already holding a shard.
fn check_new_farmers(record: &FileRecord, urls: &[String]) -> Result<Vec<String>, FileError> {
    let urls = listed_farmers(urls, urls.len())?;
    if let Some(holder) = urls
        .iter()
        .find(|u| record.shards.iter().any(|s| &s.farmer_url == *u))
    {
        return Err(FileError::Invalid(format!(
            "farmer {holder} already holds a shard of this file"
        )));
    }
    Ok(urls)
}
