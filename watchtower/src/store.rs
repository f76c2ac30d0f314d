//! The watchtower's durable state in RocksDB: one JSON record per watch (registration,
//! extracted key, chain sightings, broadcast intents) and the last processed block. Every
//! write is one synced batch, so a watch and the tip it was brought to move together.

use std::path::Path;

use bitcoin::BlockHash;
use dstore_protocol::watch::{Watch, WatchId};
use rocksdb::{Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

const WATCH_PREFIX: &str = "watch/";
const TIP_KEY: &str = "meta/tip";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("watchtower database: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("watchtower record {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
}

/// The last block the tower processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tip {
    pub height: u32,
    pub hash: BlockHash,
}

pub struct Store {
    db: DB,
}

fn watch_key(id: &WatchId) -> String {
    format!("{WATCH_PREFIX}{}", hex::encode(id))
}

fn synced() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    options
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.set_keep_log_file_num(2);
        Ok(Store {
            db: DB::open(&options, dir)?,
        })
    }

    pub fn tip(&self) -> Result<Option<Tip>, StoreError> {
        self.get(TIP_KEY)
    }

    /// Every stored watch.
    pub fn watches(&self) -> Result<Vec<Watch>, StoreError> {
        let mut found = Vec::new();
        let mode = IteratorMode::From(WATCH_PREFIX.as_bytes(), Direction::Forward);
        for item in self.db.iterator(mode) {
            let (key, value) = item?;
            if !key.starts_with(WATCH_PREFIX.as_bytes()) {
                break;
            }
            found.push(decode(&String::from_utf8_lossy(&key), &value)?);
        }
        Ok(found)
    }

    /// Writes `watches` and, if given, the new tip, in one synced batch.
    pub fn save<'a>(
        &self,
        watches: impl IntoIterator<Item = &'a Watch>,
        tip: Option<Tip>,
    ) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for watch in watches {
            batch.put(watch_key(&watch.registration.id), encode(watch));
        }
        if let Some(tip) = tip {
            batch.put(TIP_KEY, encode(&tip));
        }
        self.db.write_opt(batch, &synced())?;
        Ok(())
    }

    pub fn forget(&self, id: &WatchId) -> Result<(), StoreError> {
        self.db.delete_opt(watch_key(id), &synced())?;
        Ok(())
    }

    fn get<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<Option<T>, StoreError> {
        match self.db.get(key)? {
            None => Ok(None),
            Some(bytes) => decode(key, &bytes).map(Some),
        }
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("watch records always serialise")
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}
