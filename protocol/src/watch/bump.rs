//! Fee-bump ladders of pre-signed transactions a single party signs alone (the renter's
//! refunds, PROTOCOL.md 3.2, 6): next to the base version the party signs replacements of
//! it at higher fees. A [`Bump`] version is due only once the version it replaces went out
//! (bitcoind accepted it) and has stayed unconfirmed for `after_blocks` blocks; from then on
//! it outranks that version. Once any version confirms, the others are superseded.

use bitcoin::{Amount, FeeRate};
use serde::{Deserialize, Serialize};

use super::registration::{Presigned, Registration, RegistrationError};
use super::{TxState, Watch};

/// Blocks a refund may sit unconfirmed before the tower broadcasts its next fee level.
pub const REFUND_BUMP_BLOCKS: u32 = 3;

/// Multiples of the estimate-based fee of the bump levels a renter signs.
pub const LADDER_MULTIPLES: [u64; 3] = [2, 4, 8];

/// Marks a pre-signed transaction as a fee-bumped replacement of another one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bump {
    /// The name of the version this one replaces (registered before it, same inputs).
    pub replaces: String,
    /// Blocks that version must stay unconfirmed after bitcoind accepted it.
    pub after_blocks: u32,
}

/// The fees of the bump levels above `base` for a transaction of `vsize` vbytes moving
/// `value`: `m × estimate × vsize` for each of [`LADDER_MULTIPLES`], each at least the
/// previous fee plus `incremental × vsize` (so a full-RBF replacement is accepted), never
/// more than half of `value`. Levels that cannot rise above the previous one are dropped.
pub fn fee_ladder(
    base: Amount,
    estimate: FeeRate,
    incremental: FeeRate,
    vsize: u64,
    value: Amount,
) -> Vec<Amount> {
    let cap = value / 2;
    let per_vb = |rate: FeeRate| Amount::from_sat(rate.to_sat_per_kwu() * 4 * vsize / 1000);
    let (estimated, step) = (per_vb(estimate), per_vb(incremental).max(Amount::ONE_SAT));
    let mut fees = Vec::new();
    let mut previous = base;
    for m in LADDER_MULTIPLES {
        let fee = (estimated * m).max(previous + step).min(cap);
        if fee < previous + step {
            break;
        }
        fees.push(fee);
        previous = fee;
    }
    fees
}

impl Registration {
    /// Every bump replaces a transaction registered before it with the same inputs.
    pub(super) fn check_bumps(&self) -> Result<(), RegistrationError> {
        for (index, p) in self.transactions.iter().enumerate() {
            let Some(bump) = &p.bump else { continue };
            let bad = |why: &str| RegistrationError::BadTransaction(p.name.clone(), why.into());
            if bump.after_blocks == 0 {
                return Err(bad("a bump waits at least 1 block"));
            }
            let replaced = self.transactions[..index]
                .iter()
                .find(|q| q.name == bump.replaces)
                .ok_or_else(|| bad("a bump replaces a transaction registered before it"))?;
            let inputs = |t: &Presigned| -> Vec<_> {
                t.tx.input.iter().map(|i| i.previous_output).collect()
            };
            if inputs(replaced) != inputs(p) {
                return Err(bad("a bump spends the same inputs as what it replaces"));
            }
        }
        Ok(())
    }
}

impl Watch {
    /// The state a bump imposes on `p` at `tip`: waiting until the version it replaces was
    /// accepted `after_blocks` blocks ago (and is still unconfirmed).
    pub(super) fn bump_state(&self, p: &Presigned, tip: u32) -> Option<TxState> {
        let bump = p.bump.as_ref()?;
        let accepted = self
            .attempts_of(&bump.replaces)
            .and_then(|a| a.first_accepted_height);
        match accepted {
            Some(h) if tip >= h + bump.after_blocks => None,
            Some(h) => Some(TxState::Waiting {
                height: Some(h + bump.after_blocks),
            }),
            None => Some(TxState::Waiting { height: None }),
        }
    }

    /// The names of the versions outranked at `tip` by a bump of theirs that is due (or
    /// broadcast) and not refused by bitcoind: they are not broadcast again.
    pub(super) fn outranked(&self, tip: u32) -> Vec<&str> {
        self.registration
            .transactions
            .iter()
            .filter(|p| p.bump.is_some())
            .filter(|p| matches!(self.state_of(p, tip), TxState::Due | TxState::Broadcast))
            .filter(|p| {
                self.attempts_of(&p.name)
                    .is_none_or(|a| a.last_error.is_none())
            })
            .filter_map(|p| p.bump.as_ref().map(|b| b.replaces.as_str()))
            .collect()
    }
}
