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
//!
//! **Groups** (an audit's candidates, PROTOCOL.md 5): of the pre-signed transactions that
//! share a group only one is ever broadcast. A member seen on the chain or in the mempool
//! is the one (a confirmed one first); otherwise it is the beacon's choice, member
//! j = `beacon_candidate(registration id, hash of block T − 1, members)` in registration
//! order, where T is the group's nLockTime. The engine remembers the hashes of recent
//! blocks and hands each watch the hashes its groups need ([`Watch::beacon_hashes`],
//! persisted with it); a hash older than the engine's memory (a tower started late) is
//! asked of the shell ([`Engine::missing_block_hashes`], [`Engine::note_block_hash`]).
//! A member's confirmation that a reorg undoes is forgotten, not downgraded to "in the
//! mempool", so the group falls back to the beacon's choice. A group whose T lies above
//! [`Watch::groups_withheld_above`] is not broadcast at all (the auditor's Merkle audit
//! failed: the renter lets RF_i take the money back).
//!
//! **Fallbacks**: of due transactions spending a common outpoint, only the first in
//! registration order is broadcast, until bitcoind refuses it (RF_ij before the plain
//! reclaim of the same candidate output).

pub mod auditor;
pub mod bump;
pub mod compaction;
pub mod cpfp;
mod groups;
mod hold;
pub mod index;
mod recovery;
pub mod registration;
mod unexpected;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bitcoin::absolute::LockTime;
use bitcoin::relative;
use bitcoin::secp256k1::SecretKey;
use bitcoin::{Block, BlockHash, OutPoint, Transaction, Txid};
use serde::{Deserialize, Serialize};

use crate::extract::extract_farmer_key;
pub use auditor::AuditState;
pub use bump::{fee_ladder, Bump, REFUND_BUMP_BLOCKS};
pub use compaction::{Outcome, WatchSummary, COMPACT_DEPTH};
use groups::Derived;
pub use groups::{lock_height, BeaconHash, GroupChoice};
pub use index::{outpoint_key, txid_key, IndexRecord, Key, Slot, WatchIndex};
pub use recovery::UnseenSpend;
pub use registration::{
    AuditorSpec, ExtractSpec, Hold, Merge, Presigned, Registration, RegistrationError, WatchRole,
};

/// Confirmations after which a broadcast transaction is left alone.
pub const BURIED_DEPTH: u32 = 6;

/// Blocks a broadcast transaction may sit unconfirmed before the tower bumps it (again).
pub const STUCK_BLOCKS: u32 = 3;

/// How many of the latest block hashes the engine remembers for groups registered after
/// their beacon block was connected.
pub const RECENT_BLOCK_HASHES: u32 = 144;

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
    /// Tip height of the first broadcast bitcoind accepted.
    #[serde(default)]
    pub first_accepted_height: Option<u32>,
    /// CPFP bumps made (intent stored before each), the last one's tip and child.
    #[serde(default)]
    pub bumps: u32,
    #[serde(default)]
    pub last_bump_height: Option<u32>,
    #[serde(default)]
    pub last_bump_txid: Option<Txid>,
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
    /// The hashes of the blocks T − 1 of this watch's groups, once connected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub beacon_hashes: Vec<BeaconHash>,
    /// Groups whose nLockTime is above this height are not broadcast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups_withheld_above: Option<u32>,
    /// The auditor's bookkeeping, when the registration carries an [`AuditorSpec`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<Box<AuditState>>,
    /// Watched outpoints spent while the tower was away, in blocks a pruned node no longer
    /// has, by transactions it never saw ([`recovery`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unseen_spends: Vec<UnseenSpend>,
    /// Indexes over the registration, built on first use.
    #[serde(skip)]
    derived: Derived,
}

/// Where one pre-signed transaction stands at a tip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Another member of its group is the one broadcast (seen, or the beacon's choice).
    Alternative {
        chosen: Txid,
    },
    /// Its group is withheld (a failed Merkle audit): never broadcast.
    Withheld,
    /// Its [`Hold`] window closed at `height` before it went out: never broadcast.
    Expired {
        height: u32,
    },
    /// One of its inputs was spent below `below_height` while the tower was away, by a
    /// transaction in a block the (pruned) node no longer has: never broadcast.
    SpentUnseen {
        outpoint: OutPoint,
        below_height: u32,
    },
}

/// A broadcast the engine asks the shell to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueBroadcast {
    pub id: WatchId,
    pub name: String,
    pub tx: Transaction,
}

/// What the shell should do for a watch at a tip.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actions {
    /// Transactions to broadcast (or re-broadcast).
    pub broadcasts: Vec<DueBroadcast>,
    /// Stuck transactions with an output paying the tower: bump them by CPFP.
    pub bumps: Vec<DueBroadcast>,
    /// Settled watches buried [`COMPACT_DEPTH`] deep: replace each by its summary.
    pub compact: Vec<WatchId>,
}

impl Watch {
    pub fn new(registration: Registration) -> Self {
        let mut watch = Watch {
            registration,
            key: None,
            extract_note: None,
            seen: Vec::new(),
            spends: Vec::new(),
            attempts: Vec::new(),
            beacon_hashes: Vec::new(),
            groups_withheld_above: None,
            audit: None,
            unseen_spends: Vec::new(),
            derived: Derived::default(),
        };
        watch.attach_audit();
        watch
    }

    /// Starts the auditor's bookkeeping once the registration carries an auditor spec.
    pub fn attach_audit(&mut self) {
        if self.audit.is_none() && self.registration.auditor.is_some() {
            let spec = self.registration.auditor.as_ref();
            self.audit = spec.map(|spec| Box::new(AuditState::new(spec)));
            self.derived = Derived::default();
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
        if let (Some(audit), Some(spec)) = (&self.audit, &r.auditor) {
            txids.extend(audit.candidates.iter().flatten());
            txids.insert(spec.book.funding_txid);
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
        if let (Some(audit), Some(spec)) = (&self.audit, &r.auditor) {
            let funding = spec.book.funding_txid;
            outpoints.extend((0..spec.book.terms.audits).map(|i| OutPoint::new(funding, i)));
            outpoints.extend(audit.candidate_outpoints());
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
        if self.indexes().txids.contains(&txid) {
            changed |= self.note_sighting(txid, height);
        }
        for (index, input) in tx.input.iter().enumerate() {
            if !self.indexes().outpoints.contains(&input.previous_output) {
                continue;
            }
            changed |= self.note_spend(input.previous_output, txid, height);
            changed |= self.try_extract(tx, index);
            changed |= self.note_claim(tx, index);
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
    /// unconfirmed again, except group members and audit candidates, which are forgotten
    /// (their group goes back to the beacon's choice). A key once extracted stays (it is
    /// public).
    pub fn disconnect(&mut self, txids: &BTreeSet<Txid>, height: u32) -> bool {
        let undone = |s: &Sighting| s.height == Some(height) && txids.contains(&s.txid);
        let alternatives = self.alternative_txids();
        let before = self.seen.len();
        self.seen
            .retain(|s| !(undone(s) && alternatives.contains(&s.txid)));
        let mut changed = self.seen.len() != before;
        for s in self.seen.iter_mut() {
            if undone(s) {
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
        if let Some(by) = self.superseded_by(&p.tx, &txid, 2) {
            return TxState::Superseded { by };
        }
        if let Some(u) = self.unseen_spend_of_inputs(&p.tx) {
            return TxState::SpentUnseen {
                outpoint: u.outpoint,
                below_height: u.below_height,
            };
        }
        if let Some(state) = self.hold_state(p, &txid, tip) {
            return state;
        }
        match self.valid_from(&p.tx) {
            Some(height) if height <= tip + 1 => {}
            other => {
                return TxState::Waiting {
                    height: other.map(|h| h - 1),
                }
            }
        }
        if let Some(state) = self.bump_state(p, tip) {
            return state;
        }
        if let Some(state) = p.group.and_then(|g| self.group_state(g, &txid)) {
            return state;
        }
        let attempts = self.attempts_of(&p.name);
        if attempts.and_then(|a| a.last_broadcast_height) == Some(tip) {
            return TxState::Broadcast;
        }
        TxState::Due
    }

    /// The transaction that makes `tx` impossible: a confirmed spend of one of its inputs
    /// by another transaction, or (up to `depth` generations) one that makes a registered
    /// parent impossible (the reclaim of a candidate that lost its group's race).
    fn superseded_by(&self, tx: &Transaction, txid: &Txid, depth: u32) -> Option<Txid> {
        for input in &tx.input {
            if let Some(s) = self.spend_of(&input.previous_output) {
                if s.spender != *txid && s.height.is_some() {
                    return Some(s.spender);
                }
            }
        }
        if depth == 0 {
            return None;
        }
        tx.input.iter().find_map(|input| {
            let parent_txid = input.previous_output.txid;
            let parent = self.presigned(&parent_txid)?;
            if matches!(self.sighting(&parent_txid), Some(Some(_))) {
                return None;
            }
            self.superseded_by(&parent.tx, &parent_txid, depth - 1)
        })
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

    /// The pre-signed transactions due at `tip`. Of those spending a common outpoint only
    /// the first in registration order is due (or broadcast already), until bitcoind
    /// refuses it; then the next one is tried too. A version outranked by its due fee
    /// bump ([`Bump`]) is left out.
    pub fn due(&self, tip: u32) -> Vec<&Presigned> {
        let mut taken: BTreeSet<OutPoint> = BTreeSet::new();
        let mut due = Vec::new();
        let outranked = self.outranked(tip);
        for p in &self.registration.transactions {
            if outranked.contains(&p.name.as_str()) {
                continue;
            }
            let state = self.state_of(p, tip);
            if !matches!(state, TxState::Due | TxState::Broadcast) {
                continue;
            }
            let inputs: Vec<OutPoint> = p.tx.input.iter().map(|i| i.previous_output).collect();
            if inputs.iter().any(|o| taken.contains(o)) {
                continue;
            }
            let refused = self
                .attempts_of(&p.name)
                .is_some_and(|a| a.last_error.is_some());
            if !refused {
                taken.extend(inputs);
            }
            if state == TxState::Due {
                due.push(p);
            }
        }
        due
    }

    /// The next tip above `tip` at which time alone may change what is due: a timelock
    /// opening, a re-broadcast, a stuck check. `None` if only a chain event can.
    pub fn next_check(&self, tip: u32) -> Option<u32> {
        self.registration
            .transactions
            .iter()
            .filter_map(|p| match self.state_of(p, tip) {
                TxState::Due | TxState::Broadcast => Some(tip + 1),
                TxState::Waiting { height: Some(h) } => Some(h.max(tip + 1)),
                // Buried is reached by blocks only; a reorg marks the watch dirty.
                TxState::Confirmed { depth } => Some(tip + (BURIED_DEPTH - depth)),
                _ => None,
            })
            .min()
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
        if rejection.is_none() && attempts.first_accepted_height.is_none() {
            attempts.first_accepted_height = Some(tip);
        }
        attempts.last_error = rejection;
    }

    /// Pre-signed transactions accepted into the mempool at least [`STUCK_BLOCKS`] blocks
    /// ago, still unconfirmed, with an output paying `own_script` (so a child can bump
    /// them), and not bumped in the last [`STUCK_BLOCKS`] blocks.
    pub fn stuck(&self, tip: u32, own_script: &bitcoin::Script) -> Vec<&Presigned> {
        self.registration
            .transactions
            .iter()
            .filter(|p| matches!(self.state_of(p, tip), TxState::Due | TxState::Broadcast))
            .filter(|p| p.tx.output.iter().any(|o| o.script_pubkey == *own_script))
            .filter(|p| {
                let Some(a) = self.attempts_of(&p.name) else {
                    return false;
                };
                let waited = |since: Option<u32>| since.is_some_and(|h| tip >= h + STUCK_BLOCKS);
                waited(a.first_accepted_height)
                    && (a.last_bump_height.is_none() || waited(a.last_bump_height))
            })
            .collect()
    }

    /// Records the intent to bump `name` at `tip` with child `child` (before broadcasting it).
    pub fn record_bump(&mut self, name: &str, tip: u32, child: Txid) {
        let attempts = self.attempts_mut(name);
        attempts.bumps += 1;
        attempts.last_bump_height = Some(tip);
        attempts.last_bump_txid = Some(child);
    }

    /// True once nothing is left to do: every pre-signed transaction buried or superseded
    /// and, for a renter, the key found or TX1's output spent otherwise.
    pub fn settled(&self, tip: u32) -> bool {
        self.registration.transactions.iter().all(|p| {
            matches!(
                self.state_of(p, tip),
                TxState::Buried
                    | TxState::Superseded { .. }
                    | TxState::Expired { .. }
                    | TxState::SpentUnseen { .. }
            )
        })
    }
}

/// Every registered watch in a compact index ([`WatchIndex`]: truncated txid and outpoint
/// keys to slots), and scheduled: a watch is re-evaluated only when a chain event or the
/// shell touched it (`dirty`) or at the next height where a timelock opens, a re-broadcast
/// is due or it may be compacted (`schedule`), so a block costs what it touches, not what
/// is registered.
///
/// Only the index is in RAM for good; a watch itself (an audit contract too) is
/// *resident* only while the shell works on it. Before an operation the shell loads what the engine names
/// ([`wanted_for_block`](Self::wanted_for_block), [`wanted_for_tx`](Self::wanted_for_tx),
/// [`wanted_at`](Self::wanted_at)) and hands each over with [`page_in`](Self::page_in);
/// after it has stored what changed (with its [`IndexRecord`]), it calls
/// [`evict`](Self::evict). Watches handed over with [`insert`](Self::insert) stay resident
/// until then too (the unit tests never evict).
///
/// An audit contract needs no more: its candidates, their outputs and O_i are indexed like
/// any watched txid or outpoint, its timelocks, salt releases and Merkle audits
/// ([`set_merkle_every`](Self::set_merkle_every)) are in its wake height, and a group's
/// beacon hash is handed to it when it is paged in (from the remembered hashes, or asked
/// of the shell: [`missing_block_hashes`](Self::missing_block_hashes)).
#[derive(Debug, Default)]
pub struct Engine {
    index: WatchIndex,
    resident: HashMap<WatchId, Resident>,
    /// Resident watches by the heights whose block hashes pick their groups' members.
    by_beacon: BTreeMap<u32, Vec<WatchId>>,
    /// The last [`RECENT_BLOCK_HASHES`] connected blocks' hashes.
    recent_hashes: BTreeMap<u32, BlockHash>,
    dirty: BTreeSet<Slot>,
    schedule: BTreeMap<u32, Vec<Slot>>,
    keys: usize,
    /// Blocks between an auditor watch's Merkle audits (the tower's setting; 0: none).
    merkle_every: u32,
}

/// A block's transactions that may touch registered watches: (position, watches).
pub type Touched = Vec<(usize, BTreeSet<WatchId>)>;

/// A watch loaded whole, with the slot and keys it is indexed under.
#[derive(Debug)]
struct Resident {
    slot: Slot,
    keys: Vec<Key>,
    watch: Watch,
}

impl Engine {
    pub fn new() -> Self {
        Engine::default()
    }

    /// Wakes auditor watches for a Merkle audit every `every` blocks (0: never).
    pub fn set_merkle_every(&mut self, every: u32) {
        self.merkle_every = every;
    }

    /// Registered watches (resident or not).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// A resident watch.
    pub fn get(&self, id: &WatchId) -> Option<&Watch> {
        self.resident.get(id).map(|r| &r.watch)
    }

    /// The resident watches.
    pub fn watches(&self) -> impl Iterator<Item = (&WatchId, &Watch)> {
        self.resident.iter().map(|(id, r)| (id, &r.watch))
    }

    /// How many watches hold an extracted key.
    pub fn keys(&self) -> usize {
        self.keys
    }

    /// Adds a watch whole (registered now, or a pinned one loaded at start-up), or
    /// replaces a resident one; it is evaluated at the next [`actions`](Self::actions).
    pub fn insert(&mut self, mut watch: Watch) {
        let id = watch.registration.id;
        self.unindex(&id);
        watch.attach_audit();
        let keys = watch.index_keys();
        let slot = self.index.add(id, &keys);
        self.keys += usize::from(watch.key.is_some());
        self.dirty.insert(slot);
        self.note_beacons(&mut watch);
        self.resident.insert(id, Resident { slot, keys, watch });
    }

    /// Adds a watch known only by its stored [`IndexRecord`] (start-up): indexed and
    /// scheduled, not loaded. A record an earlier version wrote for a watch it kept
    /// whole ([`IndexRecord::pinned`]) is due at once.
    pub fn restore(&mut self, record: &IndexRecord) {
        let slot = self.index.add(record.id, &record.keys);
        self.keys += usize::from(record.key_extracted);
        let wake = if record.pinned { Some(0) } else { record.wake };
        if let Some(wake) = wake {
            self.schedule.entry(wake).or_default().push(slot);
        }
    }

    /// Makes a stored watch resident. False if it is not registered (nothing changes).
    pub fn page_in(&mut self, mut watch: Watch) -> bool {
        let id = watch.registration.id;
        if self.resident.contains_key(&id) {
            return true;
        }
        let keys = watch.index_keys();
        let Some(slot) = self.index.find(&id, &keys) else {
            return false;
        };
        watch.attach_audit();
        self.note_beacons(&mut watch);
        self.resident.insert(id, Resident { slot, keys, watch });
        true
    }

    /// Drops every resident watch: the shell has stored them.
    pub fn evict(&mut self) {
        self.resident.clear();
        self.by_beacon.clear();
    }

    /// Files a watch becoming resident under its groups' beacon heights and hands it the
    /// hashes it needs.
    fn note_beacons(&mut self, watch: &mut Watch) {
        let id = watch.registration.id;
        for height in watch.beacon_heights() {
            self.by_beacon.entry(height).or_default().push(id);
        }
        self.fill_beacon_hashes(watch);
    }

    /// Gives `watch` the remembered hashes its groups need. A hash it holds for a height
    /// above the newest remembered block was disconnected while it was stored: forgotten.
    fn fill_beacon_hashes(&self, watch: &mut Watch) {
        let newest = self.recent_hashes.keys().next_back().copied();
        for height in watch.beacon_heights() {
            match self.recent_hashes.get(&height) {
                Some(hash) => {
                    watch.note_beacon_hash(height, *hash);
                }
                None if newest.is_some_and(|n| height > n) => {
                    watch.forget_beacon_hash(height);
                }
                None => {}
            }
        }
    }

    /// What the shell stores beside resident watch `id` evaluated at `tip`.
    pub fn index_record(&self, id: &WatchId, tip: u32) -> Option<IndexRecord> {
        let r = self.resident.get(id)?;
        let mut record = IndexRecord::of(&r.watch, tip);
        record.keys = r.keys.clone();
        record.wake = r.watch.wake_with_merkle(tip, self.merkle_every);
        Some(record)
    }

    /// Registers or merges `registration` (the shell pages in a stored watch of the same
    /// id first); returns what happened. Nothing changes on error.
    pub fn register(&mut self, registration: Registration) -> Result<Merge, RegistrationError> {
        registration.check()?;
        let Some(existing) = self.get(&registration.id) else {
            self.insert(Watch::new(registration));
            return Ok(Merge::Registered);
        };
        let mut updated = existing.clone();
        let merge = updated.registration.merge(&registration)?;
        if merge == Merge::Updated {
            updated.attach_audit();
            self.insert(updated);
        }
        Ok(merge)
    }

    /// Removes resident watch `id` (forgotten or compacted).
    pub fn forget(&mut self, id: &WatchId) -> Option<Watch> {
        self.unindex(id);
        self.resident.remove(id).map(|r| r.watch)
    }

    fn unindex(&mut self, id: &WatchId) {
        let Some(old) = self.resident.get(id) else {
            return;
        };
        self.keys -= usize::from(old.watch.key.is_some());
        self.dirty.remove(&old.slot);
        self.index.remove(old.slot, &old.keys);
        for height in old.watch.beacon_heights() {
            if let Some(ids) = self.by_beacon.get_mut(&height) {
                ids.retain(|x| x != id);
                if ids.is_empty() {
                    self.by_beacon.remove(&height);
                }
            }
        }
    }

    /// Every registered watch the index names under `key` (possibly false positives).
    fn ids_under(&self, key: Key) -> impl Iterator<Item = WatchId> + '_ {
        self.index.slots(key).filter_map(|s| self.index.id(s))
    }

    /// The watches `tx` may touch, found through the index only.
    fn touched_by(&self, tx: &Transaction, txid: &Txid) -> BTreeSet<WatchId> {
        let mut ids: BTreeSet<WatchId> = self.ids_under(txid_key(txid)).collect();
        for input in &tx.input {
            ids.extend(self.ids_under(outpoint_key(&input.previous_output)));
        }
        ids
    }

    /// The stored watches the shell must page in before [`observe`](Self::observe)s `tx`.
    pub fn wanted_for_tx(&self, tx: &Transaction) -> BTreeSet<WatchId> {
        let mut ids = self.touched_by(tx, &tx.compute_txid());
        ids.retain(|id| !self.resident.contains_key(id));
        ids
    }

    /// The stored watches to page in before connecting or disconnecting `block`, whose
    /// transactions' ids are `txids`.
    pub fn wanted_for_block(&self, block: &Block, txids: &[Txid]) -> BTreeSet<WatchId> {
        self.wanted_in(&self.touched_in_block(block, txids))
    }

    /// The transactions of `block` (whose ids are `txids`) that may touch a registered
    /// watch, by position, with those watches: one index lookup per txid and input, done
    /// once for [`wanted_in`](Self::wanted_in) and
    /// [`connect_touched`](Self::connect_touched).
    pub fn touched_in_block(&self, block: &Block, txids: &[Txid]) -> Touched {
        let pairs = block.txdata.iter().zip(txids).enumerate();
        pairs
            .filter_map(|(i, (tx, txid))| {
                let ids = self.touched_by(tx, txid);
                (!ids.is_empty()).then_some((i, ids))
            })
            .collect()
    }

    /// The watches of `touched` that are not resident: the shell pages them in.
    pub fn wanted_in(&self, touched: &Touched) -> BTreeSet<WatchId> {
        let ids = touched.iter().flat_map(|(_, ids)| ids);
        ids.filter(|id| !self.resident.contains_key(*id))
            .copied()
            .collect()
    }

    /// The stored watches to page in before [`actions`](Self::actions) at `tip`.
    pub fn wanted_at(&self, tip: u32) -> BTreeSet<WatchId> {
        let scheduled = self.schedule.range(..=tip).flat_map(|(_, s)| s);
        self.dirty
            .iter()
            .chain(scheduled)
            .filter_map(|slot| self.index.id(*slot))
            .filter(|id| !self.resident.contains_key(id))
            .collect()
    }

    /// Records a transaction seen in the mempool (`None`) or a block; returns the watches
    /// that changed.
    pub fn observe(&mut self, tx: &Transaction, height: Option<u32>) -> BTreeSet<WatchId> {
        self.observe_txid(tx, &tx.compute_txid(), height)
    }

    fn observe_txid(
        &mut self,
        tx: &Transaction,
        txid: &Txid,
        height: Option<u32>,
    ) -> BTreeSet<WatchId> {
        let ids = self.touched_by(tx, txid);
        self.observe_by(tx, &ids, height)
    }

    /// Records `tx` for the watches `ids` it touches.
    fn observe_by(
        &mut self,
        tx: &Transaction,
        ids: &BTreeSet<WatchId>,
        height: Option<u32>,
    ) -> BTreeSet<WatchId> {
        let mut changed = BTreeSet::new();
        for id in ids.iter().copied() {
            if let Some(r) = self.resident.get_mut(&id) {
                let had_key = r.watch.key.is_some();
                if r.watch.observe(tx, height) {
                    self.keys += usize::from(!had_key && r.watch.key.is_some());
                    self.dirty.insert(r.slot);
                    changed.insert(id);
                }
            }
        }
        changed
    }

    /// Records every transaction of a block connected at `height`, and its hash.
    pub fn connect_block(&mut self, block: &Block, height: u32) -> BTreeSet<WatchId> {
        let txids: Vec<Txid> = block.txdata.iter().map(Transaction::compute_txid).collect();
        let touched = self.touched_in_block(block, &txids);
        self.connect_touched(block, &touched, height)
    }

    /// [`connect_block`](Self::connect_block) with the block's transactions that touch
    /// watches found already ([`touched_in_block`](Self::touched_in_block)).
    pub fn connect_touched(
        &mut self,
        block: &Block,
        touched: &Touched,
        height: u32,
    ) -> BTreeSet<WatchId> {
        let hash = block.block_hash();
        self.recent_hashes.split_off(&height);
        self.recent_hashes.insert(height, hash);
        let keep_from = height.saturating_sub(RECENT_BLOCK_HASHES - 1);
        self.recent_hashes = self.recent_hashes.split_off(&keep_from);
        let mut changed = self.note_block_hash(height, hash);
        for (i, ids) in touched {
            changed.extend(self.observe_by(&block.txdata[*i], ids, Some(height)));
        }
        changed
    }

    /// Undoes a block at `height` that left the active chain.
    pub fn disconnect_block(&mut self, block: &Block, height: u32) -> BTreeSet<WatchId> {
        self.recent_hashes.split_off(&height);
        let txids: BTreeSet<Txid> = block.txdata.iter().map(|t| t.compute_txid()).collect();
        let mut ids = BTreeSet::new();
        for tx in &block.txdata {
            ids.extend(self.touched_by(tx, &tx.compute_txid()));
        }
        let mut changed: BTreeSet<WatchId> = ids
            .into_iter()
            .filter(|id| {
                self.resident
                    .get_mut(id)
                    .is_some_and(|r| r.watch.disconnect(&txids, height))
            })
            .collect();
        for id in self.by_beacon.get(&height).cloned().unwrap_or_default() {
            if let Some(r) = self.resident.get_mut(&id) {
                if r.watch.forget_beacon_hash(height) {
                    changed.insert(id);
                }
            }
        }
        self.mark_dirty(&changed);
        changed
    }

    /// A resident watch, without marking it for re-evaluation.
    fn watch_mut_quiet(&mut self, id: &WatchId) -> Option<&mut Watch> {
        self.resident.get_mut(id).map(|r| &mut r.watch)
    }

    fn mark_dirty(&mut self, ids: &BTreeSet<WatchId>) {
        for id in ids {
            if let Some(r) = self.resident.get(id) {
                self.dirty.insert(r.slot);
            }
        }
    }

    /// Heights up to `tip` whose block hash some watch's group needs and was not given
    /// (the block was connected before the watch was registered or the tower started):
    /// the shell looks them up and calls [`note_block_hash`](Self::note_block_hash).
    pub fn missing_block_hashes(&self, tip: u32) -> Vec<u32> {
        self.by_beacon
            .range(..=tip)
            .filter(|(height, ids)| {
                ids.iter().any(|id| {
                    self.get(id)
                        .is_some_and(|w| w.beacon_hash(**height).is_none())
                })
            })
            .map(|(height, _)| *height)
            .collect()
    }

    /// Gives the hash of the active chain's block at `height` to the watches whose groups
    /// need it; returns the watches that changed.
    pub fn note_block_hash(&mut self, height: u32, hash: BlockHash) -> BTreeSet<WatchId> {
        let mut changed = BTreeSet::new();
        for id in self.by_beacon.get(&height).cloned().unwrap_or_default() {
            if let Some(r) = self.resident.get_mut(&id) {
                if r.watch.note_beacon_hash(height, hash) {
                    changed.insert(id);
                }
            }
        }
        self.mark_dirty(&changed);
        changed
    }

    /// Every broadcast due at `tip`, across all watches (scheduled evaluation; see
    /// [`actions`](Self::actions)).
    pub fn due(&mut self, tip: u32) -> Vec<DueBroadcast> {
        self.actions(tip, None).broadcasts
    }

    /// What is due at `tip` among the watches that were touched or scheduled for it;
    /// `own_script` (the tower's key) enables CPFP bumps of stuck transactions paying it.
    /// A touched or scheduled watch that is not resident stays pending (the shell pages
    /// in [`wanted_at`](Self::wanted_at) first).
    pub fn actions(&mut self, tip: u32, own_script: Option<&bitcoin::Script>) -> Actions {
        let mut slots = std::mem::take(&mut self.dirty);
        let later = self.schedule.split_off(&(tip + 1));
        for (_, scheduled) in std::mem::replace(&mut self.schedule, later) {
            slots.extend(scheduled);
        }
        let mut actions = Actions::default();
        for slot in slots {
            let Some(id) = self.index.id(slot) else {
                continue;
            };
            let Some(r) = self.resident.get(&id) else {
                self.dirty.insert(slot);
                continue;
            };
            let watch = &r.watch;
            let make = |p: &Presigned| DueBroadcast {
                id,
                name: p.name.clone(),
                tx: p.tx.clone(),
            };
            actions
                .broadcasts
                .extend(watch.due(tip).into_iter().map(make));
            if let Some(script) = own_script {
                actions
                    .bumps
                    .extend(watch.stuck(tip, script).into_iter().map(make));
            }
            if watch.compactable(tip) {
                actions.compact.push(id);
            }
            if let Some(next) = watch.wake_with_merkle(tip, self.merkle_every) {
                self.schedule.entry(next).or_default().push(slot);
            }
        }
        actions
    }

    /// Gives mutable access to a resident watch's bookkeeping (broadcast and bump
    /// records); it is re-evaluated at the next [`actions`](Self::actions).
    pub fn watch_mut(&mut self, id: &WatchId) -> Option<&mut Watch> {
        let r = self.resident.get_mut(id)?;
        self.dirty.insert(r.slot);
        Some(&mut r.watch)
    }

    /// Records `tx` for watch `id` only (a look-back after its registration).
    pub fn observe_for(&mut self, id: &WatchId, tx: &Transaction, height: Option<u32>) -> bool {
        let Some(r) = self.resident.get_mut(id) else {
            return false;
        };
        let had_key = r.watch.key.is_some();
        let changed = r.watch.observe(tx, height);
        self.keys += usize::from(!had_key && r.watch.key.is_some());
        if changed {
            self.dirty.insert(r.slot);
        }
        changed
    }
}

#[cfg(test)]
mod audit_tests;
#[cfg(test)]
mod bump_tests;
#[cfg(test)]
mod compaction_tests;
#[cfg(test)]
mod hold_tests;
#[cfg(test)]
mod recovery_tests;
#[cfg(test)]
mod tests;
