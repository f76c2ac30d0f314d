//! Groups of alternative pre-signed transactions (an audit's candidates): which member the
//! tower stands behind (see the parent module's doc), the beacon block hashes the choice
//! needs, and the indexes over a registration that keep these lookups cheap for
//! registrations of a thousand transactions.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::OnceLock;

use bitcoin::absolute::LockTime;
use bitcoin::hashes::Hash;
use bitcoin::{BlockHash, OutPoint, Transaction, Txid};
use serde::{Deserialize, Serialize};

use super::{Presigned, TxState, Watch};
use crate::audit::beacon::beacon_candidate;

/// The hash of the block at `height` (a group's T − 1) on the chain the tower follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeaconHash {
    pub height: u32,
    pub hash: BlockHash,
}

/// Which member of a group the tower stands behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupChoice {
    /// A member seen confirmed (or else in the mempool).
    Seen(Txid),
    /// The beacon's choice (no member seen).
    Beacon(Txid),
    /// The beacon block's hash is not known yet.
    Unknown,
}

/// Lookups over a watch's registration: built on first use, never stored, and dropped
/// whenever the watch is cloned or its audit state attached (the engine merges a
/// registration into a clone), so they cannot go stale.
#[derive(Default)]
pub(super) struct Derived(OnceLock<Box<Indexes>>);

/// See [`Derived`].
pub(super) struct Indexes {
    /// Registered transaction → its position in the registration.
    pub position: HashMap<Txid, usize>,
    /// Group → its members' positions, in registration order.
    pub groups: HashMap<u32, Vec<usize>>,
    /// [`Watch::watched_txids`] and [`Watch::watched_outpoints`].
    pub txids: HashSet<Txid>,
    pub outpoints: HashSet<OutPoint>,
}

impl Clone for Derived {
    fn clone(&self) -> Self {
        Derived::default()
    }
}

impl PartialEq for Derived {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Derived {}

impl std::fmt::Debug for Derived {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Derived")
    }
}

impl Watch {
    pub(super) fn indexes(&self) -> &Indexes {
        self.derived
            .0
            .get_or_init(|| Box::new(self.build_indexes()))
    }

    fn build_indexes(&self) -> Indexes {
        let transactions = &self.registration.transactions;
        let mut groups: HashMap<u32, Vec<usize>> = HashMap::new();
        for (i, p) in transactions.iter().enumerate() {
            if let Some(g) = p.group {
                groups.entry(g).or_default().push(i);
            }
        }
        let position = transactions
            .iter()
            .enumerate()
            .map(|(i, p)| (p.tx.compute_txid(), i))
            .collect();
        Indexes {
            position,
            groups,
            txids: self.watched_txids().into_iter().collect(),
            outpoints: self.watched_outpoints().into_iter().collect(),
        }
    }

    /// The registered transaction with txid `txid`.
    pub fn presigned(&self, txid: &Txid) -> Option<&Presigned> {
        let i = *self.indexes().position.get(txid)?;
        self.registration.transactions.get(i)
    }

    /// The members of `group`, in registration order.
    pub fn members(&self, group: u32) -> Vec<&Presigned> {
        let positions = self.indexes().groups.get(&group);
        positions
            .into_iter()
            .flatten()
            .filter_map(|i| self.registration.transactions.get(*i))
            .collect()
    }

    /// The txids whose confirmation a reorg makes the watch forget: group members and
    /// audit candidates.
    pub(super) fn alternative_txids(&self) -> BTreeSet<Txid> {
        let mut txids: BTreeSet<Txid> = self
            .registration
            .transactions
            .iter()
            .filter(|p| p.group.is_some())
            .map(|p| p.tx.compute_txid())
            .collect();
        if let Some(audit) = &self.audit {
            txids.extend(audit.candidates.iter().flatten());
        }
        txids
    }

    /// T − 1 for every group: the heights whose block hashes pick the groups' members.
    pub fn beacon_heights(&self) -> BTreeSet<u32> {
        self.registration
            .transactions
            .iter()
            .filter(|p| p.group.is_some())
            .filter_map(|p| lock_height(&p.tx).map(|h| h - 1))
            .collect()
    }

    /// The hash of block `height`, if this watch was given it.
    pub fn beacon_hash(&self, height: u32) -> Option<BlockHash> {
        self.beacon_hashes
            .iter()
            .find(|b| b.height == height)
            .map(|b| b.hash)
    }

    /// Records the hash of block `height` if one of the groups needs it; true if new.
    pub fn note_beacon_hash(&mut self, height: u32, hash: BlockHash) -> bool {
        if self.beacon_hash(height) == Some(hash) || !self.beacon_heights().contains(&height) {
            return false;
        }
        self.beacon_hashes.retain(|b| b.height != height);
        self.beacon_hashes.push(BeaconHash { height, hash });
        true
    }

    /// Forgets the hash of block `height` (disconnected); true if it was known.
    pub fn forget_beacon_hash(&mut self, height: u32) -> bool {
        let before = self.beacon_hashes.len();
        self.beacon_hashes.retain(|b| b.height != height);
        self.beacon_hashes.len() != before
    }

    /// The member of `group` the tower stands behind (see the module doc).
    pub fn group_choice(&self, group: u32) -> GroupChoice {
        let members = self.members(group);
        let txids: Vec<Txid> = members.iter().map(|p| p.tx.compute_txid()).collect();
        if let Some(txid) = txids
            .iter()
            .find(|t| matches!(self.sighting(t), Some(Some(_))))
        {
            return GroupChoice::Seen(*txid);
        }
        if let Some(s) = self
            .seen
            .iter()
            .find(|s| s.height.is_none() && txids.contains(&s.txid))
        {
            return GroupChoice::Seen(s.txid);
        }
        let beacon = members
            .first()
            .and_then(|p| lock_height(&p.tx))
            .and_then(|t| self.beacon_hash(t - 1));
        match beacon {
            Some(hash) => {
                let id = &self.registration.id;
                let j = beacon_candidate(id, &hash.to_byte_array(), txids.len());
                GroupChoice::Beacon(txids[j as usize])
            }
            None => GroupChoice::Unknown,
        }
    }

    /// Whether the groups with nLockTime `height` are withheld.
    pub fn withheld(&self, height: u32) -> bool {
        self.groups_withheld_above.is_some_and(|h| height > h)
    }

    /// Withholds every group whose nLockTime is above `height` (keeps the lowest bound).
    pub fn withhold_groups_above(&mut self, height: u32) {
        let bound = self.groups_withheld_above.map_or(height, |h| h.min(height));
        self.groups_withheld_above = Some(bound);
    }

    /// A valid member's state as far as its group decides: `None` if it is the one.
    pub(super) fn group_state(&self, group: u32, txid: &Txid) -> Option<TxState> {
        let height = self.members(group).first().and_then(|p| lock_height(&p.tx));
        if height.is_some_and(|h| self.withheld(h)) {
            return Some(TxState::Withheld);
        }
        match self.group_choice(group) {
            GroupChoice::Seen(chosen) | GroupChoice::Beacon(chosen) if chosen == *txid => None,
            GroupChoice::Seen(chosen) | GroupChoice::Beacon(chosen) => {
                Some(TxState::Alternative { chosen })
            }
            GroupChoice::Unknown => Some(TxState::Waiting { height: None }),
        }
    }
}

/// A transaction's nLockTime as a block height above 0, if it is one.
pub fn lock_height(tx: &Transaction) -> Option<u32> {
    match tx.lock_time {
        LockTime::Blocks(h) if h.to_consensus_u32() > 0 => Some(h.to_consensus_u32()),
        _ => None,
    }
}
