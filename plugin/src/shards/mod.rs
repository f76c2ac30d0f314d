//! Files that outlive a farmer (issue 18): a file is encrypted once into C, C is cut into
//! N erasure-coded shards (any K rebuild it, `dstore_protocol::erasure`), and each shard is
//! stored as an ordinary rented contract with its own farmer. This module keeps the file
//! record that ties the shard contracts together and runs the file-level operations:
//! [`open`] (`dstore-open … shards=N needed=K`, parallel and resumable), [`status`]
//! (`dstore-list`, `dstore-status <file_id>`, shard health), [`download`]
//! (`dstore-download <file_id>`: K shards through the ordinary download driver, failover,
//! decode, decrypt, root_C check) and [`repair`] (`dstore-repair <file_id>`).

pub mod codec;
pub mod download;
pub mod jobs;
pub mod open;
pub mod probe;
pub mod record;
pub mod repair;
pub mod status;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use dstore_protocol::erasure::{ErasureError, ShardParams};

use crate::db;
use crate::jsonrpc::{code, RpcError};
use crate::market::Market;
use crate::renter::{Renter, RenterError};
use record::FileRecord;

/// Shard contracts opened (or downloaded) at the same time, per file.
pub const CONCURRENCY: usize = 4;

/// Why a file operation failed. Each maps to one JSON-RPC error.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Bad input: nothing was created.
    #[error("invalid parameter: {0}")]
    Invalid(String),
    #[error("unknown file {0}")]
    UnknownFile(String),
    /// A shard contract's operation failed.
    #[error("shard {index}: {source}")]
    Shard {
        index: u8,
        #[source]
        source: RenterError,
    },
    #[error("{0}")]
    Renter(#[from] RenterError),
    #[error("erasure coding: {0}")]
    Erasure(#[from] ErasureError),
    /// Fewer than K shards could be used.
    #[error("{0}")]
    TooFewShards(String),
    /// Another operation (download or repair) of this file is running.
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Rpc(RpcError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl FileError {
    /// The JSON-RPC error a caller sees.
    pub fn to_rpc(&self) -> RpcError {
        let code = match self {
            FileError::Invalid(_) => code::INVALID_PARAMETER,
            FileError::UnknownFile(_) => code::INVALID_ADDRESS_OR_KEY,
            FileError::Shard { source, .. } | FileError::Renter(source) => {
                return RpcError::new(crate::contracts::rpc_error(source).code, self.to_string())
            }
            FileError::Rpc(e) => return e.clone(),
            FileError::Internal(_) => code::INTERNAL_ERROR,
            _ => code::MISC_ERROR,
        };
        RpcError::new(code, self.to_string())
    }
}

pub(crate) fn internal(e: impl std::fmt::Display) -> FileError {
    FileError::Internal(e.to_string())
}

/// The file layer's state: the renter whose contracts hold the shards, the market (for
/// `auto` and shard health), and the file jobs running in the background.
pub struct Files {
    renter: Arc<Renter>,
    market: Arc<Market>,
    /// Serialises read-modify-write of file records (several shard tasks update one).
    records: Mutex<()>,
    jobs: jobs::FileJobs,
}

impl Files {
    pub fn new(renter: Arc<Renter>, market: Arc<Market>) -> Files {
        Files {
            renter,
            market,
            records: Mutex::new(()),
            jobs: Default::default(),
        }
    }

    pub fn load(&self, file_id: &[u8; 32]) -> Result<Option<FileRecord>, FileError> {
        self.renter
            .db()
            .get(&db::key(db::prefix::FILES, file_id))
            .map_err(internal)
    }

    pub fn existing(&self, file_id: &[u8; 32]) -> Result<FileRecord, FileError> {
        self.load(file_id)?
            .ok_or_else(|| FileError::UnknownFile(hex::encode(file_id)))
    }

    fn store(&self, record: &FileRecord) -> Result<(), FileError> {
        self.renter
            .db()
            .put(&db::key(db::prefix::FILES, &record.file_id), record)
            .map_err(internal)
    }

    /// Loads file `file_id`, applies `change` and stores it (synced), atomically with
    /// respect to the other tasks of this process.
    pub fn update(
        &self,
        file_id: &[u8; 32],
        change: impl FnOnce(&mut FileRecord),
    ) -> Result<FileRecord, FileError> {
        let _guard = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let mut record = self.existing(file_id)?;
        change(&mut record);
        self.store(&record)?;
        Ok(record)
    }

    pub fn list(&self) -> Result<Vec<FileRecord>, FileError> {
        Ok(self
            .renter
            .db()
            .scan::<FileRecord>(db::prefix::FILES)
            .map_err(internal)?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    /// The file's staging directory (shard files while they are opened or downloaded).
    fn file_dir(&self, file_id: &[u8; 32]) -> PathBuf {
        self.renter
            .work_dir()
            .join("files")
            .join(hex::encode(file_id))
    }

    /// Where shard `index` of the file is staged for its open.
    fn staged_shard(&self, file_id: &[u8; 32], index: u8) -> PathBuf {
        self.file_dir(file_id).join(format!("{index}.shard"))
    }

    /// Where shard `index` of the file is written by a download.
    fn fetched_shard(&self, file_id: &[u8; 32], index: u8) -> PathBuf {
        self.file_dir(file_id).join(format!("{index}.fetched"))
    }
}

/// The erasure parameters of a stored file.
pub fn params_of(record: &FileRecord) -> Result<ShardParams, FileError> {
    ShardParams::new(record.shards_total.into(), record.needed.into()).map_err(FileError::from)
}

/// 64 hex digits as an id, or a clear error.
pub fn parse_id(text: &str, what: &str) -> Result<[u8; 32], FileError> {
    let mut id = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut id)
        .map_err(|_| FileError::Invalid(format!("{what} must be 64 hex digits")))?;
    Ok(id)
}
