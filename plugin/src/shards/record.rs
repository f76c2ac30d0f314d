//! What the renter stores per sharded file: the file key K_f (secret), the erasure
//! parameters, C's length and root, and per shard its farmer, contract id and state, plus
//! the shards a repair replaced. Written before any network step.

use std::path::PathBuf;

use bitcoin::Amount;
use dstore_protocol::merkle::Hash32;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::jobs::JobKind;
use super::open::Farmers;
use super::probe::ProbeRecord;
use crate::renter::records::AuditRequest;

/// Where a file's open stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilePhase {
    /// Encrypting and erasure-coding the file into the staged shard files.
    Encoding,
    /// Opening the shard contracts.
    Opening,
    /// Every shard was tried; each shard's own state says how it went.
    Stored,
}

/// Where one shard stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardState {
    /// Not started: no contract record exists yet.
    Pending,
    /// Its contract's open has started (it resumes through the contract's own record).
    Opening,
    /// The farmer's receipt for the shard is stored.
    Stored,
    /// Its open failed; `dstore-repair` places it elsewhere.
    Failed,
}

/// One shard of a file: an ordinary rented contract.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardSlot {
    pub index: u8,
    pub farmer_url: String,
    /// Chosen and stored before the shard's open starts.
    #[serde(with = "hex::serde")]
    pub contract_id: [u8; 32],
    pub state: ShardState,
    #[serde(default)]
    pub error: Option<String>,
    /// Why the shard is believed lost (a download of it failed); cleared by a download
    /// that works, and the shard is replaced by `dstore-repair`.
    #[serde(default)]
    pub suspect: Option<String>,
    /// The last Merkle probe of the shard's contract (`shards::probe`), if any ran.
    #[serde(default)]
    pub last_probe: Option<ProbeRecord>,
}

/// A shard contract a repair moved away from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplacedShard {
    pub index: u8,
    pub farmer_url: String,
    #[serde(with = "hex::serde")]
    pub contract_id: [u8; 32],
    pub reason: String,
}

/// What a file job was asked, stored so that a restart runs it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobRequest {
    Download { output: PathBuf },
    Repair { farmers: Option<Farmers> },
}

impl JobRequest {
    pub fn kind(&self) -> JobKind {
        match self {
            JobRequest::Download { .. } => JobKind::Download,
            JobRequest::Repair { .. } => JobKind::Repair,
        }
    }
}

/// How a file job ended, kept until a call collects it (across restarts too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredOutcome {
    Done(Value),
    Failed { code: i64, message: String },
}

/// The file's job: written before its work starts, its outcome written when it ends, and
/// removed once a call has returned that outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredJob {
    pub request: JobRequest,
    #[serde(default)]
    pub outcome: Option<StoredOutcome>,
}

/// One file stored as N erasure-coded shards.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileRecord {
    #[serde(with = "hex::serde")]
    pub file_id: [u8; 32],
    /// K_f: the file key. Secret; never logged.
    #[serde(with = "hex::serde")]
    pub file_key: [u8; 32],
    /// N: shards in all.
    pub shards_total: u8,
    /// K: shards needed to read the file.
    pub needed: u8,
    pub source: String,
    pub plaintext_length: u64,
    /// C's length (known once encoded).
    pub ciphertext_length: Option<u64>,
    pub root_c: Option<Hash32>,
    pub phase: FilePhase,
    #[serde(with = "bitcoin::amount::serde::as_sat::opt", default)]
    pub price: Option<Amount>,
    #[serde(default)]
    pub audits: Option<AuditRequest>,
    pub shards: Vec<ShardSlot>,
    #[serde(default)]
    pub replaced: Vec<ReplacedShard>,
    /// The download or repair running (or ended and not yet collected), if any.
    #[serde(default)]
    pub job: Option<StoredJob>,
}

impl FileRecord {
    /// The shard at `index`.
    pub fn slot(&self, index: u8) -> Option<&ShardSlot> {
        self.shards.iter().find(|s| s.index == index)
    }

    pub fn slot_mut(&mut self, index: u8) -> Option<&mut ShardSlot> {
        self.shards.iter_mut().find(|s| s.index == index)
    }

    /// The shard held under contract `id`, if any.
    pub fn shard_of(&self, id: &[u8; 32]) -> Option<u8> {
        self.shards
            .iter()
            .find(|s| s.contract_id == *id)
            .map(|s| s.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_record_round_trips_through_json() {
        let record = FileRecord {
            file_id: [1; 32],
            file_key: [2; 32],
            shards_total: 3,
            needed: 2,
            source: "/tmp/x".into(),
            plaintext_length: 10,
            ciphertext_length: None,
            root_c: None,
            phase: FilePhase::Encoding,
            price: Some(Amount::from_sat(1000)),
            audits: None,
            shards: vec![ShardSlot {
                index: 0,
                farmer_url: "http://a:1".into(),
                contract_id: [3; 32],
                state: ShardState::Pending,
                error: None,
                suspect: None,
                last_probe: None,
            }],
            replaced: Vec::new(),
            job: Some(StoredJob {
                request: JobRequest::Repair {
                    farmers: Some(Farmers::Auto),
                },
                outcome: Some(StoredOutcome::Failed {
                    code: -1,
                    message: "m".into(),
                }),
            }),
        };
        let json = serde_json::to_string(&record).unwrap();
        let back: FileRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back.shard_of(&[3; 32]), Some(0));
        assert_eq!(back.price, Some(Amount::from_sat(1000)));
        assert!(back.slot(1).is_none());
        assert_eq!(back.job, record.job);
    }
}
