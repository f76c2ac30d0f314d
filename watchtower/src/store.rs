//! The watchtower's durable state in RocksDB: one JSON record per watch (registration,
//! extracted key, chain sightings, broadcast intents) and the last processed block. Every
//! write is one synced batch, so a watch and the tip it was brought to move together.
//!
//! An auditor watch's secrets (the candidates' segment indices and salts) never reach the
//! database in clear: the record holds the watch with an empty `secrets` list and, beside
//! it, the secrets sealed with the auditor key ([`crate::secrets`]); loading puts them
//! back. Records are `{"watch": …, "sealed_secrets": null | {"nonce", "ciphertext"}}`;
//! records of earlier versions (the bare watch) still load.

use std::path::Path;

use bitcoin::BlockHash;
use dstore_protocol::audit::candidates::CandidateSecret;
use dstore_protocol::watch::{Watch, WatchId};
use rocksdb::{Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use crate::secrets::{Sealed, SecretBox, SecretsError};

const WATCH_PREFIX: &str = "watch/";
const TIP_KEY: &str = "meta/tip";

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
        Ok(Store {
            db: DB::open(&options, dir)?,
            secrets,
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
            found.push(self.decode_watch(&String::from_utf8_lossy(&key), &value)?);
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
            batch.put(watch_key(&watch.registration.id), self.encode_watch(watch)?);
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
            store.save([&watch], None).unwrap();
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

    #[test]
    fn records_of_earlier_versions_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("db"),
            SecretBox::new(&dir.path().join("k")),
        )
        .unwrap();
        let mut watch = auditor_watch();
        watch.registration.auditor = None;
        watch.audit = None;
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
}
