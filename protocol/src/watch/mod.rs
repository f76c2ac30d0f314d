//! The watchtower's decision core (PROTOCOL.md 6), with no I/O: which registered contract a
//! transaction or block touches, the key f a TX2 reveals, and which pre-signed refund or
//! claim is due (or due again) at a given tip. The `dstore-watchtower` service feeds it
//! ZMQ and RPC data, persists each [`Watch`] and performs the broadcasts it asks for.
//!
//! Chain facts are recorded per watch as (txid → height) and (outpoint → spender, height),
//! with `None` for "seen unconfirmed". Observing the same transaction twice changes
//! nothing, a mempool sighting never downgrades a confirmation, and disconnecting a block
//! downgrades exactly what it confirmed, so replaying any stretch of the chain after a
//! crash, a missed notification or a reorg converges on the same state.

pub mod registration;

use std::collections::{BTreeSet, HashMap};

use bitcoin::absolute::LockTime;
use bitcoin::relative;
use bitcoin::secp256k1::SecretKey;
use bitcoin::{Block, OutPoint, Transaction, Txid};
use serde::{Deserialize, Serialize};

use crate::extract::extract_farmer_key;
pub use registration::{ExtractSpec, Merge, Presigned, Registration, RegistrationError, WatchRole};

/// Confirmations after which a broadcast transaction is left alone.
pub const BURIED_DEPTH: u32 = 6;

/// A watch's id (the download id the plugin registered it under).
pub type WatchId = [u8; 32];

/// f, recovered from the TX2 that spent TX1's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtractedKey {
    pub secret: SecretKey,
    #[serde(with = "registration::tx_hex")]
    pub tx2: Transaction,
}

/// Where a watched transaction was seen: a block height, or `None` for the mempool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sighting {
    pub txid: Txid,
    pub height: Option<u32>,
}

/// The transaction that spent a watched outpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spend {
    pub outpoint: OutPoint,
    pub spender: Txid,
    pub height: Option<u32>,
}

/// What the tower did with one pre-signed transaction (write-ahead bookkeeping).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempts {
    pub name: String,
    /// Tip height at which a broadcast was last intended (stored before broadcasting).
    pub intent_height: Option<u32>,
    /// Tip height of the last broadcast bitcoind answered, and how many there were.
    pub last_broadcast_height: Option<u32>,
    pub broadcasts: u32,
    /// bitcoind's last rejection, if the last try was rejected.
    pub last_error: Option<String>,
}

/// One registered contract and everything the tower has learnt about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    pub registration: Registration,
    pub key: Option<ExtractedKey>,
    /// Why the last spend of TX1's output yielded no key (a refund spends it too).
    pub extract_note: Option<String>,
    pub seen: Vec<Sighting>,
    pub spends: Vec<Spend>,
    pub attempts: Vec<Attempts>,
}

/// Where one pre-signed transaction stands at a tip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TxState {
    /// Not valid yet; `height` is the first tip at which it will be, when known.
    Waiting {
        height: Option<u32>,
    },
    /// Valid now: broadcast it (again).
    Due,
    /// Broadcast at this tip already.
    Broadcast,
    Confirmed {
        depth: u32,
    },
    Buried,
    /// Another transaction confirmed spending one of its inputs.
    Superseded {
        by: Txid,
    },
}

/// A broadcast the engine asks the shell to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueBroadcast {
    pub id: WatchId,
    pub name: String,
    pub tx: Transaction,
}

impl Watch {
    pub fn new(registration: Registration) -> Self {
        Watch {
            registration,
            key: None,
            extract_note: None,
            seen: Vec::new(),
            spends: Vec::new(),
            attempts: Vec::new(),
        }
    }

    /// Every txid whose confirmation matters: TX1, the pre-signed transactions and their
    /// parents, and the extra txids the plugin named.
    pub fn watched_txids(&self) -> BTreeSet<Txid> {
        let r = &self.registration;
        let mut txids: BTreeSet<Txid> = r.watch_txids.iter().copied().collect();
        txids.extend(r.extract.iter().map(|e| e.tx1_outpoint.txid));
        for p in &r.transactions {
            txids.insert(p.tx.compute_txid());
            txids.extend(p.tx.input.iter().map(|i| i.previous_output.txid));
        }
        txids
    }

    /// Every outpoint whose spend matters: TX1's output and the pre-signed inputs.
    pub fn watched_outpoints(&self) -> BTreeSet<OutPoint> {
        let r = &self.registration;
        let mut outpoints: BTreeSet<OutPoint> = r.extract.iter().map(|e| e.tx1_outpoint).collect();
        for p in &r.transactions {
            outpoints.extend(p.tx.input.iter().map(|i| i.previous_output));
        }
        outpoints
    }

    /// The height at which `txid` confirmed, `Some(None)` if only seen unconfirmed.
    pub fn sighting(&self, txid: &Txid) -> Option<Option<u32>> {
        self.seen.iter().find(|s| s.txid == *txid).map(|s| s.height)
    }

    pub fn spend_of(&self, outpoint: &OutPoint) -> Option<&Spend> {
        self.spends.iter().find(|s| s.outpoint == *outpoint)
    }

    pub fn attempts_of(&self, name: &str) -> Option<&Attempts> {
        self.attempts.iter().find(|a| a.name == name)
    }

    fn attempts_mut(&mut self, name: &str) -> &mut Attempts {
        if let Some(i) = self.attempts.iter().position(|a| a.name == name) {
            return &mut self.attempts[i];
        }
        self.attempts.push(Attempts {
            name: name.to_string(),
            ..Attempts::default()
        });
        self.attempts.last_mut().expect("just pushed")
    }

    /// Records `tx` seen at `height` (`None`: unconfirmed). True if anything changed.
    pub fn observe(&mut self, tx: &Transaction, height: Option<u32>) -> bool {
        let txid = tx.compute_txid();
        let mut changed = false;
        if self.watched_txids().contains(&txid) {
            changed |= self.note_sighting(txid, height);
        }
        let outpoints = self.watched_outpoints();
        for (index, input) in tx.input.iter().enumerate() {
            if !outpoints.contains(&input.previous_output) {
                continue;
            }
            changed |= self.note_spend(input.previous_output, txid, height);
            changed |= self.try_extract(tx, index);
        }
        changed
    }

    fn note_sighting(&mut self, txid: Txid, height: Option<u32>) -> bool {
        match self.seen.iter_mut().find(|s| s.txid == txid) {
            None => self.seen.push(Sighting { txid, height }),
            Some(s) if height.is_some() && s.height != height => s.height = height,
            Some(_) => return false,
        }
        true
    }

    fn note_spend(&mut self, outpoint: OutPoint, spender: Txid, height: Option<u32>) -> bool {
        let spend = Spend {
            outpoint,
            spender,
            height,
        };
        match self.spends.iter_mut().find(|s| s.outpoint == outpoint) {
            None => self.spends.push(spend),
            // A confirmed spend is replaced only by another confirmed one (after a reorg
            // the disconnect has already downgraded it).
            Some(s) if *s == spend || (s.height.is_some() && height.is_none()) => return false,
            Some(s) => *s = spend,
        }
        true
    }

    fn try_extract(&mut self, tx: &Transaction, input: usize) -> bool {
        let Some(spec) = &self.registration.extract else {
            return false;
        };
        if self.key.is_some() || tx.input[input].previous_output != spec.tx1_outpoint {
            return false;
        }
        match extract_farmer_key(
            tx,
            input,
            &spec.farmer_key,
            &spec.contract_id,
            Some(&spec.tx1_script_pubkey),
        ) {
            Ok(secret) => {
                self.key = Some(ExtractedKey {
                    secret,
                    tx2: tx.clone(),
                });
                self.extract_note = None;
            }
            Err(e) => self.extract_note = Some(format!("{}: {e}", tx.compute_txid())),
        }
        true
    }

    /// Undoes what a disconnected block at `height` confirmed: its transactions are
    /// unconfirmed again. A key once extracted stays (it is public).
    pub fn disconnect(&mut self, txids: &BTreeSet<Txid>, height: u32) -> bool {
        let mut changed = false;
        for s in self.seen.iter_mut() {
            if s.height == Some(height) && txids.contains(&s.txid) {
                s.height = None;
                changed = true;
            }
        }
        for s in self.spends.iter_mut() {
            if s.height == Some(height) && txids.contains(&s.spender) {
                s.height = None;
                changed = true;
            }
        }
        changed
    }

    /// Where pre-signed transaction `p` stands when the chain tip is `tip`.
    pub fn state_of(&self, p: &Presigned, tip: u32) -> TxState {
        let txid = p.tx.compute_txid();
        if let Some(Some(height)) = self.sighting(&txid) {
            let depth = tip.saturating_sub(height) + 1;
            return if depth >= BURIED_DEPTH {
                TxState::Buried
            } else {
                TxState::Confirmed { depth }
            };
        }
        for input in &p.tx.input {
            if let Some(s) = self.spend_of(&input.previous_output) {
                if s.spender != txid && s.height.is_some() {
                    return TxState::Superseded { by: s.spender };
                }
            }
        }
        match self.valid_from(&p.tx) {
            Some(height) if height <= tip + 1 => {}
            other => {
                return TxState::Waiting {
                    height: other.map(|h| h - 1),
                }
            }
        }
        let attempts = self.attempts_of(&p.name);
        if attempts.and_then(|a| a.last_broadcast_height) == Some(tip) {
            return TxState::Broadcast;
        }
        TxState::Due
    }

    /// The first block height `tx` may be mined in, as far as its timelocks and its
    /// parents' confirmations tell; `None` while a CSV parent is unconfirmed.
    fn valid_from(&self, tx: &Transaction) -> Option<u32> {
        let mut from = 0u32;
        let locktime_enforced = tx
            .input
            .iter()
            .any(|i| i.sequence.enables_absolute_lock_time());
        if let (true, LockTime::Blocks(height)) = (locktime_enforced, tx.lock_time) {
            from = from.max(height.to_consensus_u32() + 1);
        }
        if tx.version.0 < 2 {
            return Some(from);
        }
        for input in &tx.input {
            match input.sequence.to_relative_lock_time() {
                Some(relative::LockTime::Blocks(blocks)) if blocks.value() > 0 => {
                    let parent = self.sighting(&input.previous_output.txid)??;
                    from = from.max(parent + u32::from(blocks.value()));
                }
                // Time-based relative locks are never used by dstore; bitcoind decides.
                _ => {}
            }
        }
        Some(from)
    }

    /// The pre-signed transactions due at `tip`.
    pub fn due(&self, tip: u32) -> Vec<&Presigned> {
        self.registration
            .transactions
            .iter()
            .filter(|p| self.state_of(p, tip) == TxState::Due)
            .collect()
    }

    /// Records the intent to broadcast `name` at `tip`: stored before the broadcast.
    pub fn record_intent(&mut self, name: &str, tip: u32) {
        self.attempts_mut(name).intent_height = Some(tip);
    }

    /// Records bitcoind's answer to the broadcast of `name` at `tip`.
    pub fn record_broadcast(&mut self, name: &str, tip: u32, rejection: Option<String>) {
        let attempts = self.attempts_mut(name);
        attempts.last_broadcast_height = Some(tip);
        attempts.broadcasts += 1;
        attempts.last_error = rejection;
    }

    /// True once nothing is left to do: every pre-signed transaction buried or superseded
    /// and, for a renter, the key found or TX1's output spent otherwise.
    pub fn settled(&self, tip: u32) -> bool {
        self.registration.transactions.iter().all(|p| {
            matches!(
                self.state_of(p, tip),
                TxState::Buried | TxState::Superseded { .. }
            )
        })
    }
}

/// Every registered watch, indexed by the txids and outpoints it cares about.
#[derive(Debug, Default)]
pub struct Engine {
    watches: HashMap<WatchId, Watch>,
    by_txid: HashMap<Txid, Vec<WatchId>>,
    by_outpoint: HashMap<OutPoint, Vec<WatchId>>,
}

impl Engine {
    pub fn new() -> Self {
        Engine::default()
    }

    pub fn len(&self) -> usize {
        self.watches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.watches.is_empty()
    }

    pub fn get(&self, id: &WatchId) -> Option<&Watch> {
        self.watches.get(id)
    }

    pub fn watches(&self) -> impl Iterator<Item = (&WatchId, &Watch)> {
        self.watches.iter()
    }

    /// Adds a watch loaded from storage (or replaces one).
    pub fn insert(&mut self, watch: Watch) {
        let id = watch.registration.id;
        self.unindex(&id);
        for txid in watch.watched_txids() {
            self.by_txid.entry(txid).or_default().push(id);
        }
        for outpoint in watch.watched_outpoints() {
            self.by_outpoint.entry(outpoint).or_default().push(id);
        }
        self.watches.insert(id, watch);
    }

    /// Registers or merges `registration`; returns what happened. Nothing changes on error.
    pub fn register(&mut self, registration: Registration) -> Result<Merge, RegistrationError> {
        registration.check()?;
        let Some(existing) = self.watches.get(&registration.id) else {
            self.insert(Watch::new(registration));
            return Ok(Merge::Registered);
        };
        let mut updated = existing.clone();
        let merge = updated.registration.merge(&registration)?;
        if merge == Merge::Updated {
            self.insert(updated);
        }
        Ok(merge)
    }

    pub fn forget(&mut self, id: &WatchId) -> Option<Watch> {
        self.unindex(id);
        self.watches.remove(id)
    }

    fn unindex(&mut self, id: &WatchId) {
        let Some(old) = self.watches.get(id) else {
            return;
        };
        for txid in old.watched_txids() {
            remove_from(&mut self.by_txid, &txid, id);
        }
        for outpoint in old.watched_outpoints() {
            remove_from(&mut self.by_outpoint, &outpoint, id);
        }
    }

    /// The watches `tx` may touch, found through the indexes only.
    fn touched_by(&self, tx: &Transaction, txid: &Txid) -> BTreeSet<WatchId> {
        let mut ids: BTreeSet<WatchId> = BTreeSet::new();
        if let Some(found) = self.by_txid.get(txid) {
            ids.extend(found);
        }
        for input in &tx.input {
            if let Some(found) = self.by_outpoint.get(&input.previous_output) {
                ids.extend(found);
            }
        }
        ids
    }

    /// Records a transaction seen in the mempool (`None`) or a block; returns the watches
    /// that changed.
    pub fn observe(&mut self, tx: &Transaction, height: Option<u32>) -> BTreeSet<WatchId> {
        let txid = tx.compute_txid();
        let mut changed = BTreeSet::new();
        for id in self.touched_by(tx, &txid) {
            if let Some(watch) = self.watches.get_mut(&id) {
                if watch.observe(tx, height) {
                    changed.insert(id);
                }
            }
        }
        changed
    }

    /// Records every transaction of a block connected at `height`.
    pub fn connect_block(&mut self, block: &Block, height: u32) -> BTreeSet<WatchId> {
        let mut changed = BTreeSet::new();
        for tx in &block.txdata {
            changed.extend(self.observe(tx, Some(height)));
        }
        changed
    }

    /// Undoes a block at `height` that left the active chain.
    pub fn disconnect_block(&mut self, block: &Block, height: u32) -> BTreeSet<WatchId> {
        let txids: BTreeSet<Txid> = block.txdata.iter().map(|t| t.compute_txid()).collect();
        let mut ids = BTreeSet::new();
        for tx in &block.txdata {
            ids.extend(self.touched_by(tx, &tx.compute_txid()));
        }
        ids.into_iter()
            .filter(|id| {
                self.watches
                    .get_mut(id)
                    .is_some_and(|w| w.disconnect(&txids, height))
            })
            .collect()
    }

    /// Every broadcast due at `tip`, across all watches.
    pub fn due(&self, tip: u32) -> Vec<DueBroadcast> {
        let mut due = Vec::new();
        for (id, watch) in &self.watches {
            for p in watch.due(tip) {
                due.push(DueBroadcast {
                    id: *id,
                    name: p.name.clone(),
                    tx: p.tx.clone(),
                });
            }
        }
        due.sort_by(|a, b| (a.id, &a.name).cmp(&(b.id, &b.name)));
        due
    }

    pub fn watch_mut(&mut self, id: &WatchId) -> Option<&mut Watch> {
        self.watches.get_mut(id)
    }
}

fn remove_from<K: std::hash::Hash + Eq>(
    index: &mut HashMap<K, Vec<WatchId>>,
    key: &K,
    id: &WatchId,
) {
    if let Some(ids) = index.get_mut(key) {
        ids.retain(|x| x != id);
        if ids.is_empty() {
            index.remove(key);
        }
    }
}

#[cfg(test)]
mod tests;
