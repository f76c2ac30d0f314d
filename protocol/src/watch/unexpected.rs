//! Spends of a renter's TX1:0 that the renter did not expect: neither the TX2 it signed
//! (a watched txid) nor one of its own pre-signed refunds. A farmer that re-signs TX2
//! under fresh nonces (TX2') produces one: it reveals nothing and strands the renter's
//! refund of TX2:0, so the tower reports it and the renter refunds TX2':0 instead.

use super::{Spend, Watch};

impl Watch {
    /// The spends of the registration's TX1:0 by a transaction the renter did not expect,
    /// once the renter has told the tower which TX2 to expect.
    pub fn unexpected_spends(&self) -> Vec<&Spend> {
        let r = &self.registration;
        let Some(spec) = &r.extract else {
            return Vec::new();
        };
        if r.watch_txids.is_empty() {
            return Vec::new();
        }
        self.spends
            .iter()
            .filter(|s| s.outpoint == spec.tx1_outpoint)
            .filter(|s| !r.watch_txids.contains(&s.spender))
            .filter(|s| {
                !r.transactions
                    .iter()
                    .any(|p| p.tx.compute_txid() == s.spender)
            })
            .collect()
    }
}
