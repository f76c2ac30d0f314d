//! What callers see of files: the `dstore-open` reply, the file entries of `dstore-list`
//! (and the `file_id`/`shard` fields of shard contracts), and `dstore-status <file_id>`
//! with each shard's health (farmer, contract phase, last audit, reachable, burned, and
//! the last free Merkle probe of the shard: `healthy` requires a passing one).

use std::collections::HashMap;
use std::time::Duration;

use dstore_protocol::merkle::MerkleCommitment;
use serde_json::{json, Value};

use super::probe::{self, ProbeOutcome, ProbeRecord, Tip};
use super::record::{FileRecord, ShardSlot, ShardState};
use super::{FileError, Files};
use crate::market::table::Sort;
use crate::renter::records::{RentedContract, StoragePhase};

/// How long a farmer gets to answer the reachability check.
const REACH_TIMEOUT: Duration = Duration::from_secs(5);

/// One shard's health.
#[derive(Debug, Clone)]
pub struct Health {
    pub index: u8,
    pub healthy: bool,
    /// Why not, when not healthy.
    pub reason: Option<String>,
    pub reachable: bool,
    pub burned: bool,
    pub contract_phase: Option<StoragePhase>,
    pub farmer_identity: Option<String>,
    pub last_audit: Option<Value>,
    /// This check's Merkle probe, when one ran.
    pub probe: Option<ProbeOutcome>,
    /// The shard's last probe (this check's, else an earlier one).
    pub last_probe: Option<ProbeRecord>,
}

/// `dstore-open`'s reply for a sharded file.
pub fn open_json(record: &FileRecord) -> Value {
    json!({
        "file_id": hex::encode(record.file_id),
        "needed": record.needed,
        "total": record.shards_total,
        "plaintext_length": record.plaintext_length,
        "ciphertext_length": record.ciphertext_length,
        "shards": record.shards.iter().map(slot_json).collect::<Vec<_>>(),
    })
}

fn slot_json(slot: &ShardSlot) -> Value {
    json!({
        "index": slot.index,
        "farmer": slot.farmer_url,
        "contract_id": hex::encode(slot.contract_id),
        "state": slot.state,
    })
}

/// A file's entry in `dstore-list`.
pub fn list_json(record: &FileRecord) -> Value {
    json!({
        "file_id": hex::encode(record.file_id),
        "role": "renter",
        "kind": "file",
        "phase": record.phase,
        "source": record.source,
        "plaintext_length": record.plaintext_length,
        "needed": record.needed,
        "total": record.shards_total,
        "shards": record.shards.iter().map(slot_json).collect::<Vec<_>>(),
    })
}

/// Shard contracts by contract id: (file id, shard index).
pub type ShardContracts = HashMap<[u8; 32], ([u8; 32], u8)>;

/// The shard contracts of `files`.
pub fn shard_contracts(files: &[FileRecord]) -> ShardContracts {
    files
        .iter()
        .flat_map(|f| {
            f.shards
                .iter()
                .map(move |s| (s.contract_id, (f.file_id, s.index)))
        })
        .collect()
}

impl Files {
    /// `dstore-list`'s file entries, and the shard contracts to annotate.
    pub fn list_entries(&self) -> Result<(Vec<Value>, ShardContracts), FileError> {
        let files = self.list()?;
        Ok((
            files.iter().map(list_json).collect(),
            shard_contracts(&files),
        ))
    }

    /// `dstore-status <file_id>`.
    pub async fn status(&self, file_id: &[u8; 32]) -> Result<Value, FileError> {
        let record = self.existing(file_id)?;
        let health = self.health(&record).await;
        let healthy = health.iter().filter(|h| h.healthy).count();
        let shards: Vec<Value> = record
            .shards
            .iter()
            .zip(&health)
            .map(|(slot, h)| {
                let mut value = slot_json(slot);
                crate::contracts::merge(
                    &mut value,
                    json!({
                        "farmer_identity": h.farmer_identity,
                        "contract_phase": h.contract_phase,
                        "reachable": h.reachable,
                        "burned": h.burned,
                        "last_audit": h.last_audit,
                        "last_probe": h.last_probe,
                        "healthy": h.healthy,
                        "reason": h.reason,
                        "error": slot.error,
                        "suspect": slot.suspect,
                    }),
                );
                value
            })
            .collect();
        let job = self
            .jobs
            .get(file_id)
            .map(|j| j.running_json(file_id, |_| None));
        Ok(json!({
            "file_id": hex::encode(file_id),
            "role": "renter",
            "kind": "file",
            "phase": record.phase,
            "source": record.source,
            "needed": record.needed,
            "total": record.shards_total,
            "healthy": healthy,
            "plaintext_length": record.plaintext_length,
            "ciphertext_length": record.ciphertext_length,
            "root_c": record.root_c.map(hex::encode),
            "shards": shards,
            "replaced": record.replaced.iter().map(|r| json!({
                "index": r.index,
                "farmer": r.farmer_url,
                "contract_id": hex::encode(r.contract_id),
                "reason": r.reason,
            })).collect::<Vec<_>>(),
            "job": job,
        }))
    }

    /// Each shard's health, in shard order, probing each stored shard at the current tip
    /// (when the tip cannot be read, no shard is probed and none counts as healthy).
    pub async fn health(&self, record: &FileRecord) -> Vec<Health> {
        let tip = self.tip().await;
        if let Err(e) = &tip {
            tracing::warn!(file = %hex::encode(record.file_id), "shard probes skipped: {e}");
        }
        self.health_at(record, tip.map_err(|e| e.to_string())).await
    }

    /// Each shard's health with its probe drawn from `tip`: its contract is stored, its
    /// farmer is not burned, failed no audit, answers and proves (Merkle probe) it holds
    /// the shard, and no download of it failed. The probes are recorded as `last_probe`.
    pub(super) async fn health_at(
        &self,
        record: &FileRecord,
        tip: Result<Tip, String>,
    ) -> Vec<Health> {
        let market = self.market.clone();
        let rows = tokio::task::spawn_blocking(move || market.table(Sort::Score).farmers)
            .await
            .unwrap_or_default();
        let contracts: Vec<Option<RentedContract>> = record
            .shards
            .iter()
            .map(|s| self.renter.load(&s.contract_id).ok().flatten())
            .collect();
        let reach = self
            .check_farmers(record, &contracts, tip.as_ref().ok().copied())
            .await;
        let probed = self.record_probes(record, &reach, tip.as_ref().ok().copied());
        let mut out = Vec::with_capacity(record.shards.len());
        for (slot, contract) in record.shards.iter().zip(&contracts) {
            let identity = contract.as_ref().map(|c| c.farmer.to_string());
            let row = identity
                .as_ref()
                .and_then(|id| rows.iter().find(|r| &r.identity == id));
            let burned = row.is_some_and(|r| r.burned);
            let audits_failed = row.map_or(0, |r| r.audits_failed);
            let last_audit = match contract {
                Some(c) => self.renter.audit_status(c).await,
                None => None,
            };
            let reached = reach.get(&slot.index);
            let is_reachable = reached.is_some_and(|r| r.reachable);
            let probe = reached.and_then(|r| r.probe.clone());
            let contract_phase = contract.as_ref().map(|c| c.phase);
            let reason = if slot.state != ShardState::Stored {
                Some(format!(
                    "shard is {}",
                    json!(slot.state).as_str().unwrap_or("?")
                ))
            } else if contract_phase != Some(StoragePhase::Stored) {
                Some("its contract is not stored".to_string())
            } else if burned {
                Some("its farmer is burned (verified fraud proof)".to_string())
            } else if audits_failed > 0 {
                Some(format!("its farmer failed {audits_failed} audit(s)"))
            } else {
                probe_reason(probe.as_ref(), &tip).or_else(|| slot.suspect.clone())
            };
            let last_probe = probed
                .get(&slot.index)
                .cloned()
                .or_else(|| slot.last_probe.clone());
            out.push(Health {
                index: slot.index,
                healthy: reason.is_none(),
                reason,
                reachable: is_reachable,
                burned,
                contract_phase,
                farmer_identity: identity,
                last_audit,
                probe,
                last_probe,
            });
        }
        out
    }

    /// Asks every shard's farmer, in parallel: a Merkle probe of each stored shard
    /// contract (when `tip` is known), else whether the farmer answers `/info`.
    async fn check_farmers(
        &self,
        record: &FileRecord,
        contracts: &[Option<RentedContract>],
        tip: Option<Tip>,
    ) -> HashMap<u8, Reach> {
        let mut checks = tokio::task::JoinSet::new();
        for (slot, contract) in record.shards.iter().zip(contracts) {
            let client = self.renter.peer(&slot.farmer_url);
            let index = slot.index;
            let target = match (contract, tip) {
                (Some(c), Some(tip)) if slot.state == ShardState::Stored => {
                    probe_target(c).map(|(id, commitment)| (id, commitment, tip))
                }
                _ => None,
            };
            checks.spawn(async move {
                let reach = match target {
                    Some((id, commitment, tip)) => {
                        let outcome = probe::probe(&client, id, commitment, tip).await;
                        Reach {
                            reachable: !matches!(outcome, ProbeOutcome::Unreachable(_)),
                            probe: Some(outcome),
                        }
                    }
                    None => {
                        let answered = tokio::time::timeout(REACH_TIMEOUT, client.info()).await;
                        Reach {
                            reachable: matches!(answered, Ok(Ok(_))),
                            probe: None,
                        }
                    }
                };
                (index, reach)
            });
        }
        let mut reach = HashMap::new();
        while let Some(Ok((index, r))) = checks.join_next().await {
            reach.insert(index, r);
        }
        reach
    }

    /// Stores each probe that ran as its shard's `last_probe` (unless a repair moved the
    /// shard meanwhile) and returns them by shard.
    fn record_probes(
        &self,
        record: &FileRecord,
        reach: &HashMap<u8, Reach>,
        tip: Option<Tip>,
    ) -> HashMap<u8, ProbeRecord> {
        let Some(tip) = tip else {
            return HashMap::new();
        };
        let probed: HashMap<u8, ProbeRecord> = reach
            .iter()
            .filter_map(|(i, r)| Some((*i, ProbeRecord::new(tip, r.probe.as_ref()?))))
            .collect();
        if probed.is_empty() {
            return probed;
        }
        let saved = self.update(&record.file_id, |r| {
            for (slot, before) in r.shards.iter_mut().zip(&record.shards) {
                if slot.contract_id == before.contract_id {
                    if let Some(p) = probed.get(&slot.index) {
                        slot.last_probe = Some(p.clone());
                    }
                }
            }
        });
        if let Err(e) = saved {
            tracing::warn!(file = %hex::encode(record.file_id), "shard probes not recorded: {e}");
        }
        probed
    }
}

/// What a farmer check found.
struct Reach {
    reachable: bool,
    /// The Merkle probe, when one ran.
    probe: Option<ProbeOutcome>,
}

/// The contract id and the commitment a shard contract's probe is checked against, from
/// the renter's own record; none unless the contract is stored with its root.
fn probe_target(contract: &RentedContract) -> Option<([u8; 32], MerkleCommitment)> {
    if contract.phase != StoragePhase::Stored {
        return None;
    }
    let commitment = MerkleCommitment {
        root: contract.root_c?,
        length: contract.ciphertext_length,
    };
    Some((contract.contract_id, commitment))
}

/// Why a stored shard is unhealthy as far as its probe tells: lost, unreachable, or not
/// probed; `None` when the probe passed.
fn probe_reason(probe: Option<&ProbeOutcome>, tip: &Result<Tip, String>) -> Option<String> {
    match (probe, tip) {
        (Some(ProbeOutcome::Passed), _) => None,
        (Some(ProbeOutcome::Lost(e)), _) => Some(e.clone()),
        (Some(ProbeOutcome::Unreachable(e)), _) => Some(format!("its farmer is unreachable: {e}")),
        (None, Err(e)) => Some(format!("the shard could not be probed: {e}")),
        (None, Ok(_)) => Some("the shard could not be probed: its contract has no root".into()),
    }
}
