//! The market's records in the plugin's RocksDB (`market/` keys): what the scanner derived
//! from the chain (announcements, bonds, lease records, followed outputs, outcome events),
//! one undo log and block hash per scanned height, the scanned tip, and the off-chain facts
//! (verified adverts, evidence ids). Each block's changes are one atomic write.

use std::collections::HashMap;
use std::sync::Arc;

use bitcoin::secp256k1::XOnlyPublicKey;
use bitcoin::{BlockHash, OutPoint, TxOut, Txid};
use dstore_protocol::market::advert::SignedAdvert;
use dstore_protocol::market::outcome::{Count, LeaseOutput};
use serde::{Deserialize, Serialize};

use crate::db::{Batch, Db, DbError};

/// The scanned tip: every block up to `height` (whose hash is `hash`) is in the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tip {
    pub height: u32,
    pub hash: BlockHash,
}

/// Which chain record a [`Record`] is, and the key it is stored under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Key {
    /// An announcement, by its transaction.
    Announcement(Txid),
    /// A fidelity bond output.
    Bond(OutPoint),
    /// A lease record, by its OP_RETURN output.
    Lease(OutPoint),
    /// An output of a leased contract whose spend is an outcome.
    Follow(OutPoint),
    /// An outcome, by the input that revealed it.
    Event(OutPoint),
}

impl Key {
    /// The RocksDB key.
    pub fn db_key(&self) -> String {
        let (kind, point) = match self {
            Key::Announcement(txid) => ("ann", OutPoint::new(*txid, 0)),
            Key::Bond(p) => ("bond", *p),
            Key::Lease(p) => ("lease", *p),
            Key::Follow(p) => ("follow", *p),
            Key::Event(p) => ("event", *p),
        };
        format!("{RECORD_PREFIX}{kind}/{point}")
    }
}

/// A confirmed announcement (bond large enough, layout and key link checked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnnouncementRec {
    pub identity: XOnlyPublicKey,
    pub peer_url: String,
    pub locktime: u32,
    pub bond: OutPoint,
    pub height: u32,
    /// Position in its block, to order announcements of one block.
    pub tx_index: u32,
}

/// A fidelity bond output named by an announcement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BondRec {
    pub identity: XOnlyPublicKey,
    pub value_sat: u64,
    pub locktime: u32,
    pub confirmed_height: u32,
    /// The confirming block's header time.
    pub confirmed_time: u64,
    /// Set once the bond is spent: the farmer withdrew it.
    pub spent_height: Option<u32>,
}

/// A lease record (`DSL`): attributed once it verifies under an announced identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseRec {
    pub identity_prefix: [u8; 4],
    pub contract_tag: [u8; 8],
    pub signature: bitcoin::secp256k1::schnorr::Signature,
    /// The leased outputs (the ones before the record), kept to verify later.
    pub leased: Vec<TxOut>,
    /// The farmer, once the record verified under its identity.
    pub identity: Option<XOnlyPublicKey>,
    pub height: u32,
}

/// What a followed output is in its contract (the outcome classifiers' input).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FollowRec {
    /// The lease record the output belongs to.
    pub lease: OutPoint,
    pub kind: LeaseOutput,
}

/// One outcome event, attributed through its lease record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRec {
    pub lease: OutPoint,
    pub count: Count,
    pub height: u32,
}

/// A chain-derived record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Record {
    Announcement(AnnouncementRec),
    Bond(BondRec),
    Lease(LeaseRec),
    Follow(FollowRec),
    Event(EventRec),
}

/// A record with its key, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    key: Key,
    record: Record,
}

/// A record's new value (None: deleted).
pub type Change = (Key, Option<Record>);

/// What one block did: the changes in order, and what each key held before.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BlockDelta {
    pub changes: Vec<Change>,
    pub undo: Vec<Change>,
}

/// One scanned height: its hash and header time, and how to undo it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BlockRec {
    hash: BlockHash,
    time: u64,
    undo: Vec<(Key, Option<Record>)>,
}

/// A piece of evidence the market holds (its proof verified when it came in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceRec {
    #[serde(with = "hex::serde")]
    pub id: [u8; 32],
    pub farmer: XOnlyPublicKey,
    #[serde(with = "hex::serde")]
    pub contract_id: [u8; 32],
}

const RECORD_PREFIX: &str = "market/r/";
const BLOCK_PREFIX: &str = "market/block/";
const TIP_KEY: &str = "market/tip";
const ADVERT_PREFIX: &str = "market/advert/";
const EVIDENCE_PREFIX: &str = "market/evidence/";

fn block_key(height: u32) -> String {
    format!("{BLOCK_PREFIX}{height:010}")
}

/// The market's state in memory, mirrored from the store.
#[derive(Debug, Default, Clone)]
pub struct MarketState {
    pub tip: Option<Tip>,
    pub records: HashMap<Key, Record>,
    /// Announced identities by their first 4 bytes (lease records name only those).
    pub identities: HashMap<[u8; 4], Vec<XOnlyPublicKey>>,
    /// How many announcements each identity has (an identity leaves the index at 0).
    announcements: HashMap<XOnlyPublicKey, usize>,
    /// Lease records not yet attributed, by the identity prefix they name.
    pub pending_leases: HashMap<[u8; 4], Vec<Key>>,
    pub adverts: HashMap<XOnlyPublicKey, SignedAdvert>,
    pub evidence: HashMap<[u8; 32], EvidenceRec>,
}

impl MarketState {
    /// Applies changes in order, keeping the indexes up to date.
    pub fn apply(&mut self, changes: &[Change]) {
        for (key, record) in changes {
            let old = match record {
                Some(record) => self.records.insert(*key, record.clone()),
                None => self.records.remove(key),
            };
            if let Some(old) = &old {
                self.unindex(key, old);
            }
            if let Some(new) = record {
                self.index(key, new);
            }
        }
    }

    fn index(&mut self, key: &Key, record: &Record) {
        match record {
            Record::Announcement(a) => {
                let n = self.announcements.entry(a.identity).or_default();
                *n += 1;
                if *n == 1 {
                    self.identities
                        .entry(prefix_of(&a.identity))
                        .or_default()
                        .push(a.identity);
                }
            }
            Record::Lease(l) if l.identity.is_none() => {
                self.pending_leases
                    .entry(l.identity_prefix)
                    .or_default()
                    .push(*key);
            }
            _ => {}
        }
    }

    fn unindex(&mut self, key: &Key, record: &Record) {
        match record {
            Record::Announcement(a) => {
                let n = self.announcements.entry(a.identity).or_default();
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.announcements.remove(&a.identity);
                    remove_from(&mut self.identities, prefix_of(&a.identity), &a.identity);
                }
            }
            Record::Lease(l) if l.identity.is_none() => {
                remove_from(&mut self.pending_leases, l.identity_prefix, key);
            }
            _ => {}
        }
    }
}

fn remove_from<T: PartialEq>(index: &mut HashMap<[u8; 4], Vec<T>>, prefix: [u8; 4], item: &T) {
    if let Some(list) = index.get_mut(&prefix) {
        list.retain(|x| x != item);
        if list.is_empty() {
            index.remove(&prefix);
        }
    }
}

/// The first 4 bytes of an identity (what a lease record names).
pub fn prefix_of(identity: &XOnlyPublicKey) -> [u8; 4] {
    let bytes = identity.serialize();
    [bytes[0], bytes[1], bytes[2], bytes[3]]
}

/// The market's part of the plugin's RocksDB.
pub struct MarketStore {
    db: Arc<Db>,
}

impl MarketStore {
    pub fn new(db: Arc<Db>) -> Self {
        MarketStore { db }
    }

    /// Everything stored, as the in-memory state.
    pub fn load(&self) -> Result<MarketState, DbError> {
        let mut state = MarketState {
            tip: self.db.get(TIP_KEY)?,
            ..MarketState::default()
        };
        let records: Vec<Change> = self
            .db
            .scan::<Stored>(RECORD_PREFIX)?
            .into_iter()
            .map(|(_, stored)| (stored.key, Some(stored.record)))
            .collect();
        state.apply(&records);
        for (_, advert) in self.db.scan::<SignedAdvert>(ADVERT_PREFIX)? {
            state.adverts.insert(advert.advert.identity, advert);
        }
        for (_, evidence) in self.db.scan::<EvidenceRec>(EVIDENCE_PREFIX)? {
            state.evidence.insert(evidence.id, evidence);
        }
        Ok(state)
    }

    /// The hash stored for `height`, if that height was scanned.
    pub fn block_hash(&self, height: u32) -> Result<Option<BlockHash>, DbError> {
        Ok(self.db.get::<BlockRec>(&block_key(height))?.map(|b| b.hash))
    }

    /// Header times of the stored blocks `from..=to` that exist.
    pub fn block_times(&self, from: u32, to: u32) -> Result<Vec<u64>, DbError> {
        let mut times = Vec::new();
        for height in from..=to {
            if let Some(block) = self.db.get::<BlockRec>(&block_key(height))? {
                times.push(block.time);
            }
        }
        Ok(times)
    }

    /// Writes one block's changes, its undo log and the new tip in one atomic write.
    pub fn commit_block(&self, tip: Tip, time: u64, delta: &BlockDelta) -> Result<(), DbError> {
        let mut batch = Batch::default();
        write_changes(&mut batch, &delta.changes)?;
        batch.put(
            &block_key(tip.height),
            &BlockRec {
                hash: tip.hash,
                time,
                undo: delta.undo.clone(),
            },
        )?;
        batch.put(TIP_KEY, &tip)?;
        self.db.write(batch)
    }

    /// Undoes the block at the tip in one atomic write; returns the changes that undo it
    /// (to apply to the in-memory state) and the new tip (None below the first scanned block).
    pub fn rollback_tip(&self, tip: Tip) -> Result<(Vec<Change>, Option<Tip>), DbError> {
        let key = block_key(tip.height);
        let block: BlockRec = self.db.get(&key)?.ok_or_else(|| DbError::Corrupt {
            key: key.clone(),
            reason: "no undo log for the scanned tip".into(),
        })?;
        let undo: Vec<Change> = block.undo.into_iter().rev().collect();
        let below = match tip.height.checked_sub(1) {
            Some(h) => self.block_hash(h)?.map(|hash| Tip { height: h, hash }),
            None => None,
        };
        let mut batch = Batch::default();
        write_changes(&mut batch, &undo)?;
        batch.delete(&key);
        match &below {
            Some(t) => batch.put(TIP_KEY, t)?,
            None => batch.delete(TIP_KEY),
        }
        self.db.write(batch)?;
        Ok((undo, below))
    }

    /// Keeps a verified advert.
    pub fn put_advert(&self, advert: &SignedAdvert) -> Result<(), DbError> {
        let key = format!("{ADVERT_PREFIX}{}", advert.advert.identity);
        self.db.put(&key, advert)
    }

    /// Keeps a verified piece of evidence's id and subject.
    pub fn put_evidence(&self, evidence: &EvidenceRec) -> Result<(), DbError> {
        let key = format!("{EVIDENCE_PREFIX}{}", hex::encode(evidence.id));
        self.db.put(&key, evidence)
    }
}

fn write_changes(batch: &mut Batch, changes: &[Change]) -> Result<(), DbError> {
    for (key, record) in changes {
        match record {
            Some(record) => batch.put(
                &key.db_key(),
                &Stored {
                    key: *key,
                    record: record.clone(),
                },
            )?,
            None => batch.delete(&key.db_key()),
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bitcoin::hashes::Hash;

    /// A fixed identity for the market's unit tests.
    pub(crate) fn identity(n: u8) -> XOnlyPublicKey {
        let secp = bitcoin::secp256k1::Secp256k1::new();
        let key = bitcoin::secp256k1::SecretKey::from_slice(&[n; 32]).unwrap();
        key.x_only_public_key(&secp).0
    }

    fn bond(n: u8, height: u32) -> (Key, Record) {
        let point = OutPoint::new(Txid::from_byte_array([n; 32]), 0);
        let record = Record::Bond(BondRec {
            identity: identity(n),
            value_sat: 50_000,
            locktime: 1_000,
            confirmed_height: height,
            confirmed_time: 1_700_000_000,
            spent_height: None,
        });
        (Key::Bond(point), record)
    }

    fn tip(height: u32) -> Tip {
        Tip {
            height,
            hash: BlockHash::from_byte_array([height as u8; 32]),
        }
    }

    /// Two blocks committed, the second rolled back: the store and a reload hold exactly
    /// the first block's records, and the tip is back at the first block.
    #[test]
    fn rollback_restores_the_previous_block_state_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, r1) = bond(1, 10);
        let (k2, r2) = bond(2, 11);
        let mut spent = r1.clone();
        if let Record::Bond(b) = &mut spent {
            b.spent_height = Some(11);
        }
        {
            let store = MarketStore::new(Arc::new(Db::open(dir.path()).unwrap()));
            let first = BlockDelta {
                changes: vec![(k1, Some(r1.clone()))],
                undo: vec![(k1, None)],
            };
            store.commit_block(tip(10), 1, &first).unwrap();
            let second = BlockDelta {
                changes: vec![(k2, Some(r2.clone())), (k1, Some(spent.clone()))],
                undo: vec![(k2, None), (k1, Some(r1.clone()))],
            };
            store.commit_block(tip(11), 2, &second).unwrap();
            let state = store.load().unwrap();
            assert_eq!(state.tip, Some(tip(11)));
            assert_eq!(state.records.get(&k1), Some(&spent));
            assert_eq!(state.records.len(), 2);

            let mut memory = state.clone();
            let (undo, below) = store.rollback_tip(tip(11)).unwrap();
            memory.apply(&undo);
            assert_eq!(below, Some(tip(10)));
            assert_eq!(memory.records.get(&k1), Some(&r1));
            assert!(!memory.records.contains_key(&k2));
        }
        let store = MarketStore::new(Arc::new(Db::open(dir.path()).unwrap()));
        let state = store.load().unwrap();
        assert_eq!(state.tip, Some(tip(10)));
        assert_eq!(state.records.len(), 1);
        assert_eq!(state.records.get(&k1), Some(&r1));
        assert_eq!(store.block_hash(11).unwrap(), None);
        assert_eq!(store.block_hash(10).unwrap(), Some(tip(10).hash));
        let (_, below) = store.rollback_tip(tip(10)).unwrap();
        assert_eq!(below, None);
        assert!(store.load().unwrap().records.is_empty());
    }
}
