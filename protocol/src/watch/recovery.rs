//! What a tower learns without the blocks (PROTOCOL.md 6): after it was away longer than
//! a pruned node keeps blocks, the shell asks bitcoind's UTXO set and mempool about every
//! watched outpoint instead of replaying blocks. An unspent outpoint tells when its
//! transaction confirmed ([`Engine::note_confirmed`]); one gone from the UTXO set whose
//! transaction is known confirmed was spent in a block the node no longer has, by a
//! transaction nobody can show the tower ([`Engine::note_unseen_spend`]). A pre-signed
//! transaction spending such an outpoint can never be valid again: it is
//! [`TxState::SpentUnseen`] and never broadcast, and a key that only that spender
//! could reveal stays unknown ([`Watch::extract_note`] says so). A spend the tower
//! later does see (in a block still available) takes precedence.

use std::collections::BTreeSet;

use bitcoin::{OutPoint, Transaction, Txid};
use serde::{Deserialize, Serialize};

use super::index::{outpoint_key, txid_key, Key};
use super::{Engine, Watch, WatchId};

/// A watched outpoint spent while the tower was away, in a block below `below_height`
/// that the node has pruned: the spender is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnseenSpend {
    pub outpoint: OutPoint,
    pub below_height: u32,
}

impl Watch {
    /// Records `txid` confirmed at `height`, learnt without its block (from the depth of
    /// one of its unspent outputs). True if anything changed.
    pub fn note_confirmed(&mut self, txid: Txid, height: u32) -> bool {
        self.indexes().txids.contains(&txid) && self.note_sighting(txid, Some(height))
    }

    /// Records that `outpoint` was spent below `below_height` by a transaction the tower
    /// cannot see. Nothing changes if a confirmed spend of it is known already.
    pub fn note_unseen_spend(&mut self, outpoint: OutPoint, below_height: u32) -> bool {
        let known = self.spend_of(&outpoint).is_some_and(|s| s.height.is_some());
        if known || self.unseen_spend_of(&outpoint).is_some() {
            return false;
        }
        self.unseen_spends.push(UnseenSpend {
            outpoint,
            below_height,
        });
        let tx1 = self.registration.extract.as_ref().map(|e| e.tx1_outpoint);
        if tx1 == Some(outpoint) && self.key.is_none() {
            self.extract_note = Some(format!(
                "TX1's output was spent below height {below_height} while the tower was away, \
                 in a block the pruned node no longer has: the spender is unknown, so f \
                 cannot be extracted from it"
            ));
        }
        true
    }

    pub fn unseen_spend_of(&self, outpoint: &OutPoint) -> Option<&UnseenSpend> {
        self.unseen_spends.iter().find(|u| u.outpoint == *outpoint)
    }

    /// The unseen spend of one of `tx`'s inputs, unless the spender is known after all.
    pub(super) fn unseen_spend_of_inputs(&self, tx: &Transaction) -> Option<&UnseenSpend> {
        tx.input
            .iter()
            .map(|i| &i.previous_output)
            .filter(|o| self.spend_of(o).is_none_or(|s| s.height.is_none()))
            .find_map(|o| self.unseen_spend_of(o))
    }
}

impl Engine {
    /// Every outpoint some resident watch cares about.
    pub fn watched_outpoints(&self) -> BTreeSet<OutPoint> {
        self.watches()
            .flat_map(|(_, w)| w.watched_outpoints())
            .collect()
    }

    /// The stored watches to page in before asking about `outpoints`: those watching
    /// one of them or its transaction (what [`confirmed_spend`](Self::confirmed_spend),
    /// [`confirmed_height`](Self::confirmed_height) and
    /// [`presigned_spenders`](Self::presigned_spenders) consult).
    pub fn wanted_for_outpoints<'a>(
        &self,
        outpoints: impl IntoIterator<Item = &'a OutPoint>,
    ) -> BTreeSet<WatchId> {
        outpoints
            .into_iter()
            .flat_map(|o| {
                let ids = self.ids_under(outpoint_key(o));
                ids.chain(self.ids_under(txid_key(&o.txid)))
                    .collect::<Vec<_>>()
            })
            .filter(|id| self.get(id).is_none())
            .collect()
    }

    /// The resident watches the index names under `key`.
    fn resident_under(&self, key: Key) -> Vec<WatchId> {
        self.ids_under(key)
            .filter(|id| self.get(id).is_some())
            .collect()
    }

    /// The height at which some watch saw `txid` confirmed.
    pub fn confirmed_height(&self, txid: &Txid) -> Option<u32> {
        self.resident_under(txid_key(txid))
            .iter()
            .filter_map(|id| self.get(id)?.sighting(txid)?)
            .max()
    }

    /// The confirmed spend of `outpoint` some watch knows: (spender, height).
    pub fn confirmed_spend(&self, outpoint: &OutPoint) -> Option<(Txid, u32)> {
        self.resident_under(outpoint_key(outpoint))
            .iter()
            .filter_map(|id| self.get(id)?.spend_of(outpoint))
            .find_map(|s| Some((s.spender, s.height?)))
    }

    /// The pre-signed transactions of every watch that spend `outpoint`, once each.
    pub fn presigned_spenders(&self, outpoint: &OutPoint) -> Vec<Transaction> {
        let mut seen = BTreeSet::new();
        let ids = self.resident_under(outpoint_key(outpoint));
        ids.iter()
            .filter_map(|id| self.get(id))
            .flat_map(|w| w.registration.transactions.iter())
            .filter(|p| p.tx.input.iter().any(|i| i.previous_output == *outpoint))
            .filter(|p| seen.insert(p.tx.compute_txid()))
            .map(|p| p.tx.clone())
            .collect()
    }

    /// Records `txid` confirmed at `height` for every watch that cares; returns those
    /// that changed.
    pub fn note_confirmed(&mut self, txid: Txid, height: u32) -> BTreeSet<WatchId> {
        let ids = self.resident_under(txid_key(&txid));
        self.mark(ids, |w| w.note_confirmed(txid, height))
    }

    /// Records an unseen spend of `outpoint` (see [`Watch::note_unseen_spend`]) for every
    /// watch that cares; returns those that changed.
    pub fn note_unseen_spend(&mut self, outpoint: OutPoint, below: u32) -> BTreeSet<WatchId> {
        let ids = self.resident_under(outpoint_key(&outpoint));
        self.mark(ids, |w| w.note_unseen_spend(outpoint, below))
    }

    fn mark(
        &mut self,
        ids: Vec<WatchId>,
        mut change: impl FnMut(&mut Watch) -> bool,
    ) -> BTreeSet<WatchId> {
        let changed: BTreeSet<WatchId> = ids
            .into_iter()
            .filter(|id| self.watch_mut_quiet(id).is_some_and(&mut change))
            .collect();
        self.mark_dirty(&changed);
        changed
    }
}
