//! The watchtower's durable state in RocksDB. Per watch: one JSON record (registration,
//! extracted key, chain sightings, broadcast intents) under `watch/<id>` and beside it a
//! compact binary index record under `index/<id>` (its truncated keys, when it must be
//! evaluated next, whether it holds a key: [`IndexRecord`]), from which start-up rebuilds
//! the engine's index without reading the watches. A compacted watch is one JSON
//! [`WatchSummary`] under `summary/<id>`. Plus the last processed block. Every write is one
//! synced batch, so a watch, its index record and the tip it was brought to move
//! together, and a compaction (summary in, watch and index record out) is atomic.
//!
//! An auditor watch's secrets (the candidates' segment indices and salts) never reach the
//! database in clear: the record holds the watch with an empty `secrets` list and, beside
//! it, the secrets sealed with the auditor key ([`crate::secrets`]); loading puts them
//! back. Records are `{"watch": …, "sealed_secrets": null | {"nonce", "ciphertext"}}`;
//! records of earlier versions (the bare watch) still load, and a database written before
//! index records existed gets them at its first opening.
//!
//! The last [`RECENT_WATCHES`] watches loaded or saved are kept decoded ([`Recent`]): a
//! TX2 and the `tower-status` polls that follow it, or a block and the broadcasts it makes
//! due, touch the same watch again within moments. The copy is replaced at each save and
//! dropped at each compaction or forget, after the write succeeded, so it is always what
//! the database holds.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;

use bitcoin::BlockHash;
use dstore_protocol::audit::candidates::CandidateSecret;
use dstore_protocol::watch::{IndexRecord, Watch, WatchId, WatchSummary};
use rocksdb::{Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use crate::secrets::{Sealed, SecretBox, SecretsError};

const WATCH_PREFIX: &str = "watch/";
const INDEX_PREFIX: &str = "index/";
const SUMMARY_PREFIX: &str = "summary/";
const TIP_KEY: &str = "meta/tip";
/// Present once every watch record has its index record.
const INDEXED_KEY: &str = "meta/indexed";
/// The index record's format version (its first byte).
const INDEX_RECORD_VERSION: u8 = 1;
/// Decoded watches kept after their last load or save.
pub const RECENT_WATCHES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("watchtower database: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("watchtower record {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    #[error(transparent)]
    Secrets(#[from] SecretsError),
}

/// The last block the tower processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tip {
    pub height: u32,
    pub hash: BlockHash,
}

pub struct Store {
    db: DB,
    secrets: SecretBox,
    recent: Mutex<Recent>,
}

/// The most recently touched watches, decoded: at most [`RECENT_WATCHES`], the least
/// recently touched dropped first.
#[derive(Default)]
struct Recent {
    watches: HashMap<WatchId, (u64, Watch)>,
    by_age: BTreeMap<u64, WatchId>,
    clock: u64,
}

impl Recent {
    fn get(&mut self, id: &WatchId) -> Option<Watch> {
        let (stamp, watch) = self.watches.get_mut(id)?;
        self.by_age.remove(stamp);
        self.clock += 1;
        *stamp = self.clock;
        self.by_age.insert(self.clock, *id);
        Some(watch.clone())
    }

    fn put(&mut self, watch: Watch) {
        let id = watch.registration.id;
        self.remove(&id);
        self.clock += 1;
        self.by_age.insert(self.clock, id);
        self.watches.insert(id, (self.clock, watch));
        while self.watches.len() > RECENT_WATCHES {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.watches.remove(&oldest);
        }
    }

    fn remove(&mut self, id: &WatchId) {
        if let Some((stamp, _)) = self.watches.remove(id) {
            self.by_age.remove(&stamp);
        }
    }
}

/// A watch record as written.
#[derive(Serialize)]
struct RecordOut<'a> {
    watch: &'a Watch,
    sealed_secrets: Option<Sealed>,
}

/// A watch record as read.
#[derive(Deserialize)]
struct RecordIn {
    watch: Watch,
    #[serde(default)]
    sealed_secrets: Option<Sealed>,
}

fn watch_key(id: &WatchId) -> String {
    format!("{WATCH_PREFIX}{}", hex::encode(id))
}

fn index_key(id: &WatchId) -> String {
    format!("{INDEX_PREFIX}{}", hex::encode(id))
}

fn summary_key(id: &WatchId) -> String {
    format!("{SUMMARY_PREFIX}{}", hex::encode(id))
}

fn synced() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    options
}

impl Store {
    /// Opens (or creates) the database in `dir`; auditor secrets are sealed with `secrets`.
    pub fn open(dir: &Path, secrets: SecretBox) -> Result<Store, StoreError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.set_keep_log_file_num(2);
        let store = Store {
            db: DB::open(&options, dir)?,
            secrets,
            recent: Mutex::new(Recent::default()),
        };
        store.add_missing_index_records()?;
        Ok(store)
    }

    /// A database of an earlier version has watch records only: each gets its index
    /// record, due at once (the tower evaluates every such watch at its first block).
    fn add_missing_index_records(&self) -> Result<(), StoreError> {
        if self.db.get(INDEXED_KEY)?.is_some() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        let mut count = 0usize;
        self.for_each_watch(|watch| {
            let mut record = IndexRecord::of(&watch, 0);
            record.wake = Some(0);
            batch.put(index_key(&watch.registration.id), encode_index(&record));
            count += 1;
            Ok(())
        })?;
        batch.put(INDEXED_KEY, b"1");
        self.db.write_opt(batch, &synced())?;
        if count > 0 {
            tracing::info!(
                watches = count,
                "index records added to a database of an earlier version"
            );
        }
        Ok(())
    }

    pub fn tip(&self) -> Result<Option<Tip>, StoreError> {
        self.get(TIP_KEY)
    }

    /// Every stored (not compacted) watch, whole: for tests and rare full scans only.
    pub fn watches(&self) -> Result<Vec<Watch>, StoreError> {
        let mut found = Vec::new();
        self.for_each_watch(|watch| {
            found.push(watch);
            Ok(())
        })?;
        Ok(found)
    }

    /// Calls `each` with every stored watch in turn, one in memory at a time.
    pub fn for_each_watch(
        &self,
        mut each: impl FnMut(Watch) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.for_each_under(WATCH_PREFIX, |key, value| {
            each(self.decode_watch(key, value)?)
        })
    }

    /// Up to `limit` stored watches in id order, from the first one after `after` (or
    /// the first of all): a scan in bounded pieces.
    pub fn watches_after(
        &self,
        after: Option<&WatchId>,
        limit: usize,
    ) -> Result<Vec<Watch>, StoreError> {
        let start = after.map_or_else(|| WATCH_PREFIX.to_string(), watch_key);
        let mode = IteratorMode::From(start.as_bytes(), Direction::Forward);
        let mut found = Vec::new();
        for item in self.db.iterator(mode) {
            let (key, value) = item?;
            if !key.starts_with(WATCH_PREFIX.as_bytes()) || found.len() == limit {
                break;
            }
            if *key == *start.as_bytes() && after.is_some() {
                continue;
            }
            found.push(self.decode_watch(&String::from_utf8_lossy(&key), &value)?);
        }
        Ok(found)
    }

    /// Every index record: what start-up reads.
    pub fn index_records(&self) -> Result<Vec<IndexRecord>, StoreError> {
        let mut found = Vec::new();
        self.for_each_under(INDEX_PREFIX, |key, value| {
            found.push(decode_index(key, value)?);
            Ok(())
        })?;
        Ok(found)
    }

    /// Watch `id`, if stored whole (from the recent ones if it is among them).
    pub fn load(&self, id: &WatchId) -> Result<Option<Watch>, StoreError> {
        if let Some(watch) = self.recent().get(id) {
            return Ok(Some(watch));
        }
        let key = watch_key(id);
        let Some(bytes) = self.db.get(&key)? else {
            return Ok(None);
        };
        let watch = self.decode_watch(&key, &bytes)?;
        self.recent().put(watch.clone());
        Ok(Some(watch))
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The summary of compacted watch `id`.
    pub fn summary(&self, id: &WatchId) -> Result<Option<WatchSummary>, StoreError> {
        self.get(&summary_key(id))
    }

    /// Calls `each` with every compacted watch's summary.
    pub fn for_each_summary(
        &self,
        mut each: impl FnMut(WatchSummary) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.for_each_under(SUMMARY_PREFIX, |key, value| each(decode(key, value)?))
    }

    fn for_each_under(
        &self,
        prefix: &str,
        mut each: impl FnMut(&str, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mode = IteratorMode::From(prefix.as_bytes(), Direction::Forward);
        for item in self.db.iterator(mode) {
            let (key, value) = item?;
            if !key.starts_with(prefix.as_bytes()) {
                break;
            }
            each(&String::from_utf8_lossy(&key), &value)?;
        }
        Ok(())
    }

    /// Replaces watch `id` by its summary, in one synced batch.
    pub fn compact(&self, summary: &WatchSummary) -> Result<(), StoreError> {
        self.compact_many([summary])
    }

    /// Replaces each summarised watch by its summary, all in one synced batch.
    pub fn compact_many<'a>(
        &self,
        summaries: impl IntoIterator<Item = &'a WatchSummary>,
    ) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        let mut ids = Vec::new();
        for summary in summaries {
            batch.put(summary_key(&summary.id), encode(summary));
            batch.delete(watch_key(&summary.id));
            batch.delete(index_key(&summary.id));
            ids.push(summary.id);
        }
        self.db.write_opt(batch, &synced())?;
        let mut recent = self.recent();
        ids.iter().for_each(|id| recent.remove(id));
        Ok(())
    }

    /// Bytes of the database's files on disk, after flushing the memtable and compacting
    /// away what deletions left behind (for the benchmark's disk figures).
    pub fn disk_bytes(&self, dir: &Path) -> Result<u64, StoreError> {
        self.db.flush()?;
        self.db.compact_range::<&[u8], &[u8]>(None, None);
        let mut total = 0;
        for entry in std::fs::read_dir(dir).map_err(|e| corrupt(&dir.display().to_string(), e))? {
            let entry = entry.map_err(|e| corrupt(&dir.display().to_string(), e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // Table files and the write-ahead log; not RocksDB's info logs.
            if name.ends_with(".sst") || name.ends_with(".log") && !name.starts_with("LOG") {
                total += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        Ok(total)
    }

    /// Writes `watches` with their index records and, if given, the new tip, in one
    /// synced batch.
    pub fn save<'a>(
        &self,
        watches: impl IntoIterator<Item = (&'a Watch, IndexRecord)>,
        tip: Option<Tip>,
    ) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        let mut written = Vec::new();
        for (watch, record) in watches {
            batch.put(watch_key(&watch.registration.id), self.encode_watch(watch)?);
            batch.put(index_key(&record.id), encode_index(&record));
            written.push(watch);
        }
        if let Some(tip) = tip {
            batch.put(TIP_KEY, encode(&tip));
        }
        self.db.write_opt(batch, &synced())?;
        self.note_saved(&written);
        Ok(())
    }

    /// Keeps the watches just written among the recent ones; a batch larger than that
    /// (a bulk registration) only drops their older copies.
    fn note_saved(&self, written: &[&Watch]) {
        let mut recent = self.recent();
        for watch in written {
            if written.len() <= RECENT_WATCHES {
                recent.put((*watch).clone());
            } else {
                recent.remove(&watch.registration.id);
            }
        }
    }

    /// Removes watch `id` entirely: whole, index record, summary.
    pub fn forget(&self, id: &WatchId) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.delete(watch_key(id));
        batch.delete(index_key(id));
        batch.delete(summary_key(id));
        self.db.write_opt(batch, &synced())?;
        self.recent().remove(id);
        Ok(())
    }

    /// The record of `watch`, its auditor secrets sealed.
    fn encode_watch(&self, watch: &Watch) -> Result<Vec<u8>, StoreError> {
        let secrets = watch.registration.auditor.as_ref().map(|a| &a.secrets);
        let Some(secrets) = secrets.filter(|s| !s.is_empty()) else {
            return Ok(encode(&RecordOut {
                watch,
                sealed_secrets: None,
            }));
        };
        let sealed = self
            .secrets
            .seal(&watch.registration.id, &encode(secrets))?;
        let mut stripped = watch.clone();
        if let Some(auditor) = stripped.registration.auditor.as_mut() {
            auditor.secrets = Vec::new();
        }
        Ok(encode(&RecordOut {
            watch: &stripped,
            sealed_secrets: Some(sealed),
        }))
    }

    /// A watch from its record, its auditor secrets opened.
    fn decode_watch(&self, key: &str, bytes: &[u8]) -> Result<Watch, StoreError> {
        let record = match serde_json::from_slice::<RecordIn>(bytes) {
            Ok(record) => record,
            Err(e) => RecordIn {
                // A record of an earlier version: the bare watch.
                watch: decode(key, bytes).map_err(|_| corrupt(key, e))?,
                sealed_secrets: None,
            },
        };
        let mut watch = record.watch;
        let id = watch.registration.id;
        let Some(auditor) = watch.registration.auditor.as_mut() else {
            return Ok(watch);
        };
        if let Some(sealed) = record.sealed_secrets {
            let plain = self.secrets.open(&id, &sealed)?;
            auditor.secrets = serde_json::from_slice::<Vec<Vec<CandidateSecret>>>(&plain)
                .map_err(|e| corrupt(key, e))?;
        }
        if auditor.secrets.is_empty() {
            return Err(corrupt(key, "the auditor secrets are missing"));
        }
        Ok(watch)
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
    serde_json::from_slice(bytes).map_err(|e| corrupt(key, e))
}

/// An index record: version, flags (bit 0 key extracted, bit 1 pinned, bit 2 wake
/// present), wake (u32 LE), the id, then the 8-byte keys (LE).
fn encode_index(record: &IndexRecord) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(38 + 8 * record.keys.len());
    let flags = u8::from(record.key_extracted)
        | u8::from(record.pinned) << 1
        | u8::from(record.wake.is_some()) << 2;
    bytes.extend_from_slice(&[INDEX_RECORD_VERSION, flags]);
    bytes.extend_from_slice(&record.wake.unwrap_or(0).to_le_bytes());
    bytes.extend_from_slice(&record.id);
    for key in &record.keys {
        bytes.extend_from_slice(&key.to_le_bytes());
    }
    bytes
}

fn decode_index(key: &str, bytes: &[u8]) -> Result<IndexRecord, StoreError> {
    let header = 2 + 4 + 32;
    if bytes.len() < header || !(bytes.len() - header).is_multiple_of(8) {
        return Err(corrupt(key, "an index record of a wrong length"));
    }
    if bytes[0] != INDEX_RECORD_VERSION {
        return Err(corrupt(key, format!("index record version {}", bytes[0])));
    }
    let flags = bytes[1];
    let wake = u32::from_le_bytes(bytes[2..6].try_into().expect("4 bytes"));
    let mut id = [0u8; 32];
    id.copy_from_slice(&bytes[6..header]);
    let keys = bytes[header..]
        .chunks_exact(8)
        .map(|k| u64::from_le_bytes(k.try_into().expect("8 bytes")))
        .collect();
    Ok(IndexRecord {
        id,
        keys,
        wake: (flags & 4 != 0).then_some(wake),
        key_extracted: flags & 1 != 0,
        pinned: flags & 2 != 0,
    })
}

fn corrupt(key: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash;
    use bitcoin::secp256k1::{SecretKey, SECP256K1};
    use bitcoin::{Amount, ScriptBuf, Txid};
    use dstore_protocol::audit::book::{AuditBook, KeptLock};
    use dstore_protocol::audit::transactions::AuditTerms;
    use dstore_protocol::watch::{AuditorSpec, Registration, WatchRole};

    const SALT: [u8; 32] = [0xab; 32];

    fn public(byte: u8) -> bitcoin::secp256k1::PublicKey {
        SecretKey::from_slice(&[byte; 32])
            .unwrap()
            .public_key(SECP256K1)
    }

    fn auditor_watch() -> Watch {
        let terms = AuditTerms {
            contract_id: [4; 32],
            renter_funding_key: public(1),
            farmer_funding_key: public(2),
            renter_claim_key: public(3),
            farmer_claim_key: public(4),
            first_audit_height: 200,
            period: 6,
            claim_window: 3,
            audits: 1,
            amount: Amount::from_sat(50_000),
            candidate_fee: Amount::from_sat(1_000),
            refund_fee: Amount::from_sat(2_000),
        };
        let spec = AuditorSpec {
            book: AuditBook {
                terms,
                funding_txid: Txid::from_byte_array([3; 32]),
                renter_destination: ScriptBuf::new_op_return([]),
                kept_locks: vec![vec![KeptLock([7; 20])]],
                refund_anchor: None,
            },
            secrets: vec![vec![CandidateSecret {
                segment_index: 0,
                salt: SALT,
            }]],
            farmer_url: "http://127.0.0.1:1".into(),
            root_c: [0; 32],
            length: 10,
        };
        Watch::new(Registration {
            id: [4; 32],
            role: WatchRole::Renter,
            extract: None,
            transactions: vec![],
            watch_txids: vec![],
            rescan_from_height: None,
            auditor: Some(spec),
        })
    }

    fn raw_records(store: &Store) -> Vec<u8> {
        let mut all = Vec::new();
        for item in store.db.iterator(IteratorMode::Start) {
            all.extend_from_slice(&item.unwrap().1);
        }
        all
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn auditor_secrets_are_sealed_in_the_database_and_restored_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("auditor.key");
        let watch = auditor_watch();
        {
            let store = Store::open(&dir.path().join("db"), SecretBox::new(&key)).unwrap();
            store
                .save([(&watch, IndexRecord::of(&watch, 0))], None)
                .unwrap();
            let raw = raw_records(&store);
            assert!(!contains(&raw, hex::encode(SALT).as_bytes()));
            assert!(!contains(&raw, &SALT));
            assert!(contains(&raw, b"sealed_secrets"));
            assert_eq!(store.watches().unwrap(), vec![watch.clone()]);
        }
        // Without the key the secrets cannot be read, and nothing pretends otherwise.
        let other = dir.path().join("other.key");
        std::fs::write(&other, hex::encode([9u8; 32])).unwrap();
        let store = Store::open(&dir.path().join("db"), SecretBox::new(&other)).unwrap();
        assert!(matches!(
            store.watches(),
            Err(StoreError::Secrets(SecretsError::Decrypt))
        ));
    }

    /// A renter's watch without audits (what most contracts are).
    fn plain_watch() -> Watch {
        let mut watch = auditor_watch();
        watch.registration.auditor = None;
        watch.audit = None;
        watch
    }

    #[test]
    fn records_of_earlier_versions_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("db"),
            SecretBox::new(&dir.path().join("k")),
        )
        .unwrap();
        let watch = plain_watch();
        store
            .db
            .put(watch_key(&watch.registration.id), encode(&watch))
            .unwrap();
        assert_eq!(store.watches().unwrap(), vec![watch]);
        assert!(
            !dir.path().join("k").exists(),
            "no key made without a secret"
        );
    }

    #[test]
    fn a_database_without_index_records_gets_them_at_its_first_opening() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let mut watch = plain_watch();
        watch.registration.watch_txids = vec![Txid::from_byte_array([8; 32])];
        {
            let store = Store::open(&db, SecretBox::new(&dir.path().join("k"))).unwrap();
            store.db.delete(INDEXED_KEY).unwrap();
            store
                .db
                .put(watch_key(&watch.registration.id), encode(&watch))
                .unwrap();
        }
        let store = Store::open(&db, SecretBox::new(&dir.path().join("k"))).unwrap();
        let records = store.index_records().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].keys, watch.index_keys());
        assert_eq!(records[0].wake, Some(0), "evaluated at the first block");
    }

    #[test]
    fn watches_are_read_in_pieces_and_the_recent_copies_follow_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("db"),
            SecretBox::new(&dir.path().join("k")),
        )
        .unwrap();
        let watches: Vec<Watch> = (0..5u8)
            .map(|i| {
                let mut watch = plain_watch();
                watch.registration.id = [i; 32];
                watch
            })
            .collect();
        let records = watches.iter().map(|w| (w, IndexRecord::of(w, 0)));
        store.save(records, None).unwrap();
        let mut read = Vec::new();
        let mut after = None;
        loop {
            let piece = store.watches_after(after.as_ref(), 2).unwrap();
            let Some(last) = piece.last() else { break };
            assert!(piece.len() <= 2);
            after = Some(last.registration.id);
            read.extend(piece);
        }
        assert_eq!(read, watches, "each once, in id order");
        // A load after a save, a compaction or a forget sees what the database holds.
        let id = watches[1].registration.id;
        assert_eq!(store.load(&id).unwrap().as_ref(), Some(&watches[1]));
        let mut changed = watches[1].clone();
        changed.extract_note = Some("changed".into());
        store
            .save([(&changed, IndexRecord::of(&changed, 0))], None)
            .unwrap();
        assert_eq!(store.load(&id).unwrap(), Some(changed.clone()));
        store.compact(&changed.summary(300)).unwrap();
        assert_eq!(store.load(&id).unwrap(), None);
        let other = watches[2].registration.id;
        assert!(store.load(&other).unwrap().is_some());
        store.forget(&other).unwrap();
        assert_eq!(store.load(&other).unwrap(), None);
        let recent = store.recent();
        assert!(recent.watches.len() <= RECENT_WATCHES);
        assert_eq!(recent.watches.len(), recent.by_age.len());
    }

    #[test]
    fn compaction_swaps_the_watch_for_its_summary_and_forget_removes_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("db"),
            SecretBox::new(&dir.path().join("k")),
        )
        .unwrap();
        let mut watch = plain_watch();
        watch.registration.watch_txids = vec![Txid::from_byte_array([8; 32])];
        let record = IndexRecord::of(&watch, 7);
        store.save([(&watch, record.clone())], None).unwrap();
        assert_eq!(store.index_records().unwrap(), vec![record]);
        let id = watch.registration.id;
        store.compact(&watch.summary(300)).unwrap();
        assert_eq!(store.load(&id).unwrap(), None);
        assert!(store.index_records().unwrap().is_empty());
        assert_eq!(store.summary(&id).unwrap(), Some(watch.summary(300)));
        store.forget(&id).unwrap();
        assert_eq!(store.summary(&id).unwrap(), None);
        assert!(
            raw_records(&store).len() < 4,
            "only the meta records are left"
        );
    }
}
