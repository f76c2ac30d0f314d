//! Bounded storage (issue 21): a contract that is settled, with every chain fact it
//! recorded confirmed and the newest buried [`COMPACT_DEPTH`] blocks deep, can no longer
//! change. The tower then keeps only its [`WatchSummary`] (who it was, the key f if one
//! was extracted, how each pre-signed transaction ended) and drops its transactions and
//! history. An audit contract (groups or an auditor) is compacted the same way once every
//! audit ended on the chain and no salt release is due; its summary keeps the `audits`
//! section of its status as it stood then ([`Watch::final_audits_report`]), without the
//! Merkle records.

use bitcoin::secp256k1::SecretKey;
use bitcoin::{OutPoint, Txid};
use serde::{Deserialize, Serialize};

use super::auditor::AuditsReport;
use super::{TxState, Watch, WatchId, WatchRole};

/// Blocks above the newest confirmed fact of a settled contract before it is compacted.
pub const COMPACT_DEPTH: u32 = 100;

/// How one pre-signed transaction ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub name: String,
    pub txid: Txid,
    pub status: TxState,
}

/// What is left of a compacted contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchSummary {
    #[serde(with = "hex::serde")]
    pub id: WatchId,
    pub role: WatchRole,
    /// f, when the tower extracted it (the renter may come back for it).
    pub key: Option<SecretKey>,
    pub tx2_txid: Option<Txid>,
    pub outcomes: Vec<Outcome>,
    /// The height of the newest confirmed fact, and the tip it was compacted at.
    pub settled_height: u32,
    pub compacted_height: u32,
    /// The registration carried an auditor spec (this tower released the salts).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auditor: bool,
    /// An audit contract's `audits` section at compaction, without the Merkle records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audits: Option<AuditsReport>,
}

impl Watch {
    /// The newest confirmation among what the watch recorded; `None` if it recorded
    /// nothing confirmed, or anything still unconfirmed (in flux).
    /// A sighting left unconfirmed for good (a transaction whose input another one spent,
    /// confirmed) does not count as in flux.
    fn last_confirmed_height(&self) -> Option<u32> {
        let live = self.seen.iter().filter(|s| !self.dead_sighting(&s.txid));
        let heights = live.map(|s| s.height);
        let heights = heights.chain(self.spends.iter().map(|s| s.height));
        heights
            .collect::<Option<Vec<u32>>>()?
            .into_iter()
            .chain(self.unseen_spends.iter().map(|u| u.below_height))
            .max()
    }

    /// True if `txid`, seen unconfirmed, can no longer confirm: a pre-signed transaction
    /// superseded by a confirmed spend of its input, or an audit candidate whose O_i
    /// another transaction spent (a group's losing member seen in a mempool).
    fn dead_sighting(&self, txid: &Txid) -> bool {
        if self.sighting(txid) != Some(None) {
            return false;
        }
        if let Some(p) = self.presigned(txid) {
            return self.superseded_by(&p.tx, txid, 2).is_some();
        }
        let (Some(audit), Some(spec)) = (&self.audit, &self.registration.auditor) else {
            return false;
        };
        let Some((i, _)) = audit.position(txid) else {
            return false;
        };
        let funding = OutPoint::new(spec.book.funding_txid, i);
        self.spend_of(&funding)
            .is_some_and(|s| s.height.is_some() && s.spender != *txid)
    }

    /// For a renter, f was extracted or TX1's output went another way, for good.
    fn extraction_over(&self) -> bool {
        let Some(spec) = &self.registration.extract else {
            return true;
        };
        let spent = self
            .spend_of(&spec.tx1_outpoint)
            .is_some_and(|s| s.height.is_some());
        self.key.is_some() || spent || self.unseen_spend_of(&spec.tx1_outpoint).is_some()
    }

    /// The tip from which the watch may be compacted, if nothing but depth is missing.
    pub fn compact_height(&self, tip: u32) -> Option<u32> {
        if !self.settled(tip) || !self.extraction_over() || !self.audits_settled() {
            return None;
        }
        Some(self.last_confirmed_height()? + COMPACT_DEPTH)
    }

    /// True once the watch can be replaced by its [`summary`](Self::summary).
    pub fn compactable(&self, tip: u32) -> bool {
        self.compact_height(tip).is_some_and(|h| tip >= h)
    }

    /// The next tip at which the watch must be evaluated: a timelock, a re-broadcast, a
    /// stuck check ([`next_check`](Self::next_check)), an audit duty
    /// ([`audit_wake`](Self::audit_wake)) or its compaction. The Merkle audits' schedule
    /// depends on the tower's setting: [`wake_with_merkle`](Self::wake_with_merkle).
    pub fn wake(&self, tip: u32) -> Option<u32> {
        let compact = self.compact_height(tip).map(|h| h.max(tip + 1));
        [self.next_check(tip), self.audit_wake(tip), compact]
            .into_iter()
            .flatten()
            .min()
    }

    /// [`wake`](Self::wake), or earlier for the next Merkle audit with one every `every`
    /// blocks.
    pub fn wake_with_merkle(&self, tip: u32, every: u32) -> Option<u32> {
        let merkle = self.next_merkle_audit(tip, every);
        self.wake(tip).into_iter().chain(merkle).min()
    }

    /// The one-line summary kept after compaction at `tip`.
    pub fn summary(&self, tip: u32) -> WatchSummary {
        let outcomes = self
            .registration
            .transactions
            .iter()
            .map(|p| Outcome {
                name: p.name.clone(),
                txid: p.tx.compute_txid(),
                status: self.state_of(p, tip),
            })
            .collect();
        WatchSummary {
            id: self.registration.id,
            role: self.registration.role,
            key: self.key.as_ref().map(|k| k.secret),
            tx2_txid: self.key.as_ref().map(|k| k.tx2.compute_txid()),
            outcomes,
            settled_height: self.last_confirmed_height().unwrap_or(tip),
            compacted_height: tip,
            auditor: self.registration.auditor.is_some(),
            audits: self.final_audits_report(tip),
        }
    }
}
