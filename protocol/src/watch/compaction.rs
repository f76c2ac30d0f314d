//! Bounded storage (issue 21): a contract that is settled, with every chain fact it
//! recorded confirmed and the newest buried [`COMPACT_DEPTH`] blocks deep, can no longer
//! change. The tower then keeps only its [`WatchSummary`] (who it was, the key f if one
//! was extracted, how each pre-signed transaction ended) and drops its transactions and
//! history. Watches with groups or an auditor are never compacted (they stay whole).

use bitcoin::secp256k1::SecretKey;
use bitcoin::Txid;
use serde::{Deserialize, Serialize};

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
}

impl Watch {
    /// The newest confirmation among what the watch recorded; `None` if it recorded
    /// nothing confirmed, or anything still unconfirmed (in flux).
    fn last_confirmed_height(&self) -> Option<u32> {
        let heights = self.seen.iter().map(|s| s.height);
        let heights = heights.chain(self.spends.iter().map(|s| s.height));
        heights
            .collect::<Option<Vec<u32>>>()?
            .into_iter()
            .chain(self.unseen_spends.iter().map(|u| u.below_height))
            .max()
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
        if self.pinned() || !self.settled(tip) || !self.extraction_over() {
            return None;
        }
        Some(self.last_confirmed_height()? + COMPACT_DEPTH)
    }

    /// True once the watch can be replaced by its [`summary`](Self::summary).
    pub fn compactable(&self, tip: u32) -> bool {
        self.compact_height(tip).is_some_and(|h| tip >= h)
    }

    /// The next tip at which the watch must be evaluated: a timelock, a re-broadcast, a
    /// stuck check ([`next_check`](Self::next_check)) or its compaction.
    pub fn wake(&self, tip: u32) -> Option<u32> {
        let compact = self.compact_height(tip).map(|h| h.max(tip + 1));
        match (self.next_check(tip), compact) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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
        }
    }
}
