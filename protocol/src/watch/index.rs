//! The engine's compact in-RAM index (issue 21): every registered watch under a 4-byte
//! slot, and every watched txid and outpoint under an 8-byte truncated key naming the
//! slots that watch it. Truncation allows false positives (two keys sharing 8 bytes),
//! never false negatives: the shell loads the candidates a transaction names and each
//! watch checks the full txid or outpoint itself. [`IndexRecord`] is what the shell
//! persists per watch so that start-up rebuilds this index and the schedule without
//! reading a single watch.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use bitcoin::hashes::Hash;
use bitcoin::{OutPoint, Txid};

use super::{Watch, WatchId};

/// A watch's place in the index.
pub type Slot = u32;

/// A truncated txid or outpoint.
pub type Key = u64;

/// The key of a watched txid: its first 8 bytes (txids are uniformly distributed).
pub fn txid_key(txid: &Txid) -> Key {
    let bytes = txid.as_byte_array();
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(first)
}

/// The key of a watched outpoint: its txid's key mixed with its output index, so an
/// outpoint and its own transaction's txid do not share a key.
pub fn outpoint_key(outpoint: &OutPoint) -> Key {
    let vout = u64::from(outpoint.vout) + 1;
    txid_key(&outpoint.txid) ^ vout.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Keys are random bits already: hashing them again is wasted work.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
}

type KeyMap<V> = HashMap<Key, V, BuildHasherDefault<KeyHasher>>;

/// What the shell stores per watch to rebuild the index and the schedule at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexRecord {
    pub id: WatchId,
    /// The keys of its watched txids and outpoints ([`Watch::index_keys`]).
    pub keys: Vec<Key>,
    /// The first tip at which time alone may change what is due, or when it may be
    /// compacted; `None` if only a chain event can.
    pub wake: Option<u32>,
    pub key_extracted: bool,
    /// Set by earlier versions, which kept watches with groups or an auditor whole in RAM
    /// and evaluated them at every block; always false now. A record with it set is
    /// evaluated at the first block (its `wake` may not say when it is needed).
    pub pinned: bool,
}

impl IndexRecord {
    /// The record of `watch` evaluated at `tip` (without Merkle audits: see
    /// [`Engine::index_record`](super::Engine::index_record)).
    pub fn of(watch: &Watch, tip: u32) -> Self {
        IndexRecord {
            id: watch.registration.id,
            keys: watch.index_keys(),
            wake: watch.wake(tip),
            key_extracted: watch.key.is_some(),
            pinned: false,
        }
    }
}

impl Watch {
    /// The keys of every watched txid and outpoint, sorted, once each.
    pub fn index_keys(&self) -> Vec<Key> {
        let txids = self.watched_txids();
        let outpoints = self.watched_outpoints();
        let mut keys: Vec<Key> = txids.iter().map(txid_key).collect();
        keys.extend(outpoints.iter().map(outpoint_key));
        keys.sort_unstable();
        keys.dedup();
        keys
    }
}

/// Slots of every registered watch, and the slots under each key.
#[derive(Debug, Default)]
pub struct WatchIndex {
    ids: Vec<Option<WatchId>>,
    free: Vec<Slot>,
    /// The first slot under a key; further ones (a TX1 shared by several downloads, or a
    /// truncation collision) in `more`.
    first: KeyMap<Slot>,
    more: KeyMap<Vec<Slot>>,
}

impl WatchIndex {
    /// Registered watches.
    pub fn len(&self) -> usize {
        self.ids.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The watch in `slot`, if the slot is in use.
    pub fn id(&self, slot: Slot) -> Option<WatchId> {
        self.ids.get(slot as usize).copied().flatten()
    }

    /// Adds watch `id` under `keys`; returns its slot.
    pub fn add(&mut self, id: WatchId, keys: &[Key]) -> Slot {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.ids[slot as usize] = Some(id);
                slot
            }
            None => {
                self.ids.push(Some(id));
                Slot::try_from(self.ids.len() - 1).expect("fewer than 2^32 watches")
            }
        };
        for key in keys {
            match self.first.entry(*key) {
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(slot);
                }
                std::collections::hash_map::Entry::Occupied(_) => {
                    self.more.entry(*key).or_default().push(slot);
                }
            }
        }
        slot
    }

    /// Removes the watch in `slot`, which was added under `keys`.
    pub fn remove(&mut self, slot: Slot, keys: &[Key]) {
        for key in keys {
            self.remove_key(*key, slot);
        }
        if let Some(entry) = self.ids.get_mut(slot as usize) {
            if entry.take().is_some() {
                self.free.push(slot);
            }
        }
    }

    fn remove_key(&mut self, key: Key, slot: Slot) {
        if let Some(more) = self.more.get_mut(&key) {
            if let Some(i) = more.iter().position(|s| *s == slot) {
                more.swap_remove(i);
            } else if self.first.get(&key) == Some(&slot) {
                let promoted = more.pop().expect("`more` entries are never empty");
                self.first.insert(key, promoted);
            }
            if more.is_empty() {
                self.more.remove(&key);
            }
        } else if self.first.get(&key) == Some(&slot) {
            self.first.remove(&key);
        }
    }

    /// The slots under `key` (possibly false positives).
    pub fn slots(&self, key: Key) -> impl Iterator<Item = Slot> + '_ {
        let first = self.first.get(&key).copied();
        let more = self.more.get(&key).into_iter().flatten().copied();
        first.into_iter().chain(more)
    }

    /// The slot of watch `id`, found through one of its keys.
    pub fn find(&self, id: &WatchId, keys: &[Key]) -> Option<Slot> {
        let key = *keys.first()?;
        self.slots(key).find(|s| self.id(*s).as_ref() == Some(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_and_colliding_keys_keep_every_slot_and_removal_promotes_the_next() {
        let mut index = WatchIndex::default();
        let a = index.add([1; 32], &[7, 8]);
        let b = index.add([2; 32], &[7]);
        let c = index.add([3; 32], &[7, 9]);
        assert_eq!(index.slots(7).collect::<Vec<_>>(), vec![a, b, c]);
        index.remove(a, &[7, 8]);
        let mut left: Vec<Slot> = index.slots(7).collect();
        left.sort();
        assert_eq!(left, vec![b, c]);
        assert_eq!(index.slots(8).count(), 0);
        assert_eq!(index.find(&[3; 32], &[9]), Some(c));
        assert_eq!(index.len(), 2);
        // A freed slot is reused, and the stale id is gone.
        assert_eq!(index.id(a), None);
        let d = index.add([4; 32], &[10]);
        assert_eq!(d, a);
        index.remove(b, &[7]);
        index.remove(c, &[7, 9]);
        assert_eq!(index.slots(7).count(), 0);
        assert!(index.more.is_empty() && index.first.len() == 1);
    }

    #[test]
    fn an_outpoint_and_its_transaction_have_different_keys() {
        let txid = Txid::from_byte_array([5; 32]);
        assert_ne!(txid_key(&txid), outpoint_key(&OutPoint::new(txid, 0)));
        assert_ne!(
            outpoint_key(&OutPoint::new(txid, 0)),
            outpoint_key(&OutPoint::new(txid, 1))
        );
    }
}
