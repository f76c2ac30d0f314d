//! The plugin's metadata store: contracts, receipts and download state as JSON records in
//! RocksDB under `<datadir>/<network>/db`, each write synced to disk before it returns so
//! that state is durable before anything is broadcast or sent to the peer.

use std::path::Path;
use std::sync::Mutex;

use rocksdb::{Direction, IteratorMode, Options, WriteOptions, DB};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Key prefixes: one record kind each.
pub mod prefix {
    /// A contract this node rents (renter role).
    pub const RENTED: &str = "rented/";
    /// A contract this node stores (farmer role).
    pub const FARMED: &str = "farmed/";
    /// A file stored as erasure-coded shards, each an ordinary rented contract.
    pub const FILES: &str = "files/";
    /// Derivation-index counter for per-download keys.
    pub const KEY_INDEX: &str = "meta/key-index";
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("metadata store: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("metadata record {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("metadata store lock poisoned")]
    Poisoned,
}

/// The metadata store.
pub struct Db {
    db: DB,
    /// Serialises read-modify-write of the key-index counter.
    counter: Mutex<()>,
}

impl Db {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Db, DbError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.set_keep_log_file_num(2);
        Ok(Db {
            db: DB::open(&options, dir)?,
            counter: Mutex::new(()),
        })
    }

    fn synced() -> WriteOptions {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        options
    }

    /// The record at `key`, if any.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, DbError> {
        match self.db.get(key.as_bytes())? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| DbError::Corrupt {
                    key: key.to_string(),
                    reason: e.to_string(),
                }),
        }
    }

    /// Writes the record at `key` and syncs it to disk.
    pub fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), DbError> {
        let bytes = serde_json::to_vec(value).map_err(|e| DbError::Corrupt {
            key: key.to_string(),
            reason: e.to_string(),
        })?;
        self.db.put_opt(key.as_bytes(), bytes, &Self::synced())?;
        Ok(())
    }

    /// Every record whose key starts with `prefix`, in key order.
    pub fn scan<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<(String, T)>, DbError> {
        let mut out = Vec::new();
        let mode = IteratorMode::From(prefix.as_bytes(), Direction::Forward);
        for item in self.db.iterator(mode) {
            let (key, value) = item?;
            if !key.starts_with(prefix.as_bytes()) {
                break;
            }
            let key = String::from_utf8_lossy(&key).into_owned();
            let record = serde_json::from_slice(&value).map_err(|e| DbError::Corrupt {
                key: key.clone(),
                reason: e.to_string(),
            })?;
            out.push((key, record));
        }
        Ok(out)
    }

    /// Applies `batch` atomically (all of it or nothing) and syncs it to disk.
    pub fn write(&self, batch: Batch) -> Result<(), DbError> {
        self.db.write_opt(batch.inner, &Self::synced())?;
        Ok(())
    }

    /// Takes the next key-derivation index (never handed out twice, even across crashes).
    pub fn next_key_index(&self) -> Result<u32, DbError> {
        let _guard = self.counter.lock().map_err(|_| DbError::Poisoned)?;
        let next: u32 = self.get(prefix::KEY_INDEX)?.unwrap_or(0);
        self.put(prefix::KEY_INDEX, &(next + 1))?;
        Ok(next)
    }
}

/// Writes and deletes applied together by [`Db::write`].
#[derive(Default)]
pub struct Batch {
    inner: rocksdb::WriteBatch,
}

impl Batch {
    /// Puts the record at `key`.
    pub fn put<T: Serialize>(&mut self, key: &str, value: &T) -> Result<(), DbError> {
        let bytes = serde_json::to_vec(value).map_err(|e| DbError::Corrupt {
            key: key.to_string(),
            reason: e.to_string(),
        })?;
        self.inner.put(key.as_bytes(), bytes);
        Ok(())
    }

    /// Deletes the record at `key`.
    pub fn delete(&mut self, key: &str) {
        self.inner.delete(key.as_bytes());
    }
}

/// The key of a record of kind `prefix` for contract `id`.
pub fn key(prefix: &str, id: &[u8; 32]) -> String {
    format!("{prefix}{}", hex::encode(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_and_scan_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Db::open(dir.path()).unwrap();
            db.put(&key(prefix::RENTED, &[1; 32]), &"a").unwrap();
            db.put(&key(prefix::FARMED, &[2; 32]), &"b").unwrap();
            assert_eq!(db.next_key_index().unwrap(), 0);
            assert_eq!(db.next_key_index().unwrap(), 1);
        }
        let db = Db::open(dir.path()).unwrap();
        let rented: Vec<(String, String)> = db.scan(prefix::RENTED).unwrap();
        assert_eq!(rented.len(), 1);
        assert_eq!(rented[0].1, "a");
        assert_eq!(db.next_key_index().unwrap(), 2);
        assert_eq!(db.get::<String>("missing").unwrap(), None);
    }
}
