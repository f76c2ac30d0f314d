//! [`Hold`] conditions of pre-signed transactions (PROTOCOL.md 3.3, 6): a held
//! transaction waits until every input's parent has enough confirmations (a reorg that
//! undoes them puts it back on hold), and expires for good at its `never_from_height`
//! unless it was already seen or accepted. A registered child of an expired transaction
//! expires with it (a farmer's TX3 after its TX2).

use bitcoin::Txid;

use super::{Presigned, TxState, Watch};

impl Watch {
    /// The state a hold imposes on `p` at `tip`, if any (checked after "confirmed" and
    /// "superseded", before the timelocks).
    pub(super) fn hold_state(&self, p: &Presigned, txid: &Txid, tip: u32) -> Option<TxState> {
        if let Some(height) = self.expired_at(p, txid, tip, 1) {
            return Some(TxState::Expired { height });
        }
        let hold = p.hold?;
        if hold.min_parent_confirmations == 0 || self.already_out(&p.name, txid) {
            return None;
        }
        let mut due_at = 0u32;
        for input in &p.tx.input {
            match self.sighting(&input.previous_output.txid) {
                // The tip at which the parent has the confirmations asked for.
                Some(Some(height)) => {
                    due_at = due_at.max(height + hold.min_parent_confirmations - 1)
                }
                _ => return Some(TxState::Waiting { height: None }),
            }
        }
        (due_at > tip).then_some(TxState::Waiting {
            height: Some(due_at),
        })
    }

    /// The height at which `p` (or, up to `depth` generations, a registered parent of it)
    /// expired, if it did by `tip` without having gone out.
    fn expired_at(&self, p: &Presigned, txid: &Txid, tip: u32, depth: u32) -> Option<u32> {
        if self.already_out(&p.name, txid) {
            return None;
        }
        if let Some(height) = p.hold.and_then(|h| h.never_from_height) {
            if tip >= height {
                return Some(height);
            }
        }
        if depth == 0 {
            return None;
        }
        p.tx.input.iter().find_map(|input| {
            let parent_txid = input.previous_output.txid;
            let parent = self.presigned(&parent_txid)?;
            self.expired_at(parent, &parent_txid, tip, depth - 1)
        })
    }

    /// Seen on the chain or in the mempool, or accepted by bitcoind once: whatever it
    /// reveals is public already, so holding it back protects nothing.
    fn already_out(&self, name: &str, txid: &Txid) -> bool {
        self.sighting(txid).is_some()
            || self
                .attempts_of(name)
                .is_some_and(|a| a.first_accepted_height.is_some())
    }
}
