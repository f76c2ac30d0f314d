//! Fee levels of the renter's refunds (issue 15): the refunds need the renter's key alone,
//! so next to each 1,000-sat base refund the renter signs a ladder of replacements at
//! higher fees (from `estimatesmartfee` at set-up, see [`fee_ladder`]) and hands them to
//! its watchtower, which broadcasts the next level when the previous one is stuck; and
//! `dstore-refund` pays at least the current estimate when the renter broadcasts itself.

use bitcoin::{Amount, FeeRate, Transaction};
use dstore_protocol::contract::ContractError;
use dstore_protocol::watch::{fee_ladder, Presigned, REFUND_BUMP_BLOCKS};

use super::{Renter, REFUND_FEE};

/// Confirmation target of the estimates the refunds' fees are derived from.
const REFUND_TARGET_BLOCKS: u16 = 2;

/// bitcoind's default incremental relay fee (the least a replacement must add per vbyte).
const INCREMENTAL_RELAY: FeeRate = FeeRate::from_sat_per_kwu(250);

impl Renter {
    /// bitcoind's estimate for a refund; the minimum relay rate when it has none.
    pub(super) async fn refund_fee_rate(&self) -> FeeRate {
        let wallet = self.wallet.clone();
        let estimate = tokio::task::spawn_blocking(move || {
            wallet.estimate_fee_rate_within(REFUND_TARGET_BLOCKS)
        })
        .await;
        match estimate {
            Ok(Ok(rate)) => rate,
            Ok(Err(e)) => {
                tracing::warn!("no fee estimate for the refunds ({e}); using 1 sat/vB");
                FeeRate::BROADCAST_MIN
            }
            Err(e) => {
                tracing::warn!("fee estimate task failed ({e}); using 1 sat/vB");
                FeeRate::BROADCAST_MIN
            }
        }
    }
}

/// The bump levels of refund `base` (signed at [`REFUND_FEE`], moving `value`), signed
/// by `sign(fee)`.
pub(super) fn sign_ladder(
    base: &Transaction,
    value: Amount,
    estimate: FeeRate,
    sign: impl Fn(Amount) -> Result<Transaction, ContractError>,
) -> Result<Vec<Transaction>, ContractError> {
    let vsize = base.vsize() as u64;
    fee_ladder(REFUND_FEE, estimate, INCREMENTAL_RELAY, vsize, value)
        .into_iter()
        .map(sign)
        .collect()
}

/// The fee of a refund the renter broadcasts itself: the base fee, or the estimate for a
/// transaction of `base`'s size if that is more, never more than half of `value`.
pub(super) fn own_refund_fee(base: &Transaction, value: Amount, estimate: FeeRate) -> Amount {
    let estimated = estimate
        .fee_vb(base.vsize() as u64)
        .unwrap_or(Amount::MAX_MONEY);
    estimated.min(value / 2).max(REFUND_FEE)
}

/// The registration entries of a refund named `name` and its bump levels, each replacing
/// the one before it once that one is stuck for [`REFUND_BUMP_BLOCKS`] blocks.
pub(super) fn with_bumps(name: &str, base: &Transaction, bumps: &[Transaction]) -> Vec<Presigned> {
    let mut entries = vec![Presigned::new(name, base.clone())];
    for (level, tx) in bumps.iter().enumerate() {
        let replaces = entries.last().expect("the base").name.clone();
        let entry = Presigned::new(format!("{name}-bump{}", level + 1), tx.clone())
            .bumping(replaces, REFUND_BUMP_BLOCKS);
        entries.push(entry);
    }
    entries
}

/// The held version (base or bump) to broadcast for a target fee `want`: the cheapest
/// that pays at least `want`, else the dearest.
pub(super) fn pick_version(
    versions: &[Transaction],
    input_value: Amount,
    want: Amount,
) -> Transaction {
    let fee = |tx: &Transaction| input_value - tx.output[0].value;
    versions
        .iter()
        .find(|tx| fee(tx) >= want)
        .or(versions.last())
        .expect("at least the base")
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::absolute::LockTime;
    use bitcoin::transaction::Version;
    use bitcoin::{ScriptBuf, TxIn, TxOut};

    const VALUE: Amount = Amount::from_sat(100_000);

    fn refund(fee: Amount) -> Transaction {
        Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn::default()],
            output: vec![TxOut {
                value: VALUE - fee,
                script_pubkey: ScriptBuf::new_op_return([1u8; 4]),
            }],
        }
    }

    #[test]
    fn the_ladder_chains_bumps_with_rising_fees() {
        let base = refund(REFUND_FEE);
        let rate = FeeRate::from_sat_per_vb_u32(50);
        let bumps = sign_ladder(&base, VALUE, rate, |fee| Ok(refund(fee))).unwrap();
        let fees: Vec<Amount> = bumps.iter().map(|t| VALUE - t.output[0].value).collect();
        assert!(!fees.is_empty() && fees.windows(2).all(|w| w[0] < w[1]));
        assert!(fees[0] > REFUND_FEE && *fees.last().unwrap() <= VALUE / 2);
        let entries = with_bumps("tx1-refund", &base, &bumps);
        let names: Vec<&str> = entries.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names[..2], ["tx1-refund", "tx1-refund-bump1"]);
        assert!(entries[0].bump.is_none());
        for pair in entries.windows(2) {
            let bump = pair[1].bump.as_ref().unwrap();
            assert_eq!(
                (bump.replaces.as_str(), bump.after_blocks),
                (pair[0].name.as_str(), REFUND_BUMP_BLOCKS)
            );
        }
    }

    #[test]
    fn an_own_refund_pays_at_least_the_estimate() {
        let base = refund(REFUND_FEE);
        let low = own_refund_fee(&base, VALUE, FeeRate::from_sat_per_vb_u32(1));
        assert_eq!(low, REFUND_FEE);
        let high = own_refund_fee(&base, VALUE, FeeRate::from_sat_per_vb_u32(200));
        assert_eq!(
            high,
            FeeRate::from_sat_per_vb_u32(200)
                .fee_vb(base.vsize() as u64)
                .unwrap()
        );
        let capped = own_refund_fee(&base, VALUE, FeeRate::from_sat_per_vb_u32(100_000));
        assert_eq!(capped, VALUE / 2);
        let versions = [
            refund(REFUND_FEE),
            refund(Amount::from_sat(3_000)),
            refund(Amount::from_sat(9_000)),
        ];
        let fee = |t: &Transaction| VALUE - t.output[0].value;
        assert_eq!(fee(&pick_version(&versions, VALUE, REFUND_FEE)), REFUND_FEE);
        assert_eq!(
            fee(&pick_version(&versions, VALUE, Amount::from_sat(2_000))).to_sat(),
            3_000
        );
        assert_eq!(
            fee(&pick_version(&versions, VALUE, Amount::from_sat(20_000))).to_sat(),
            9_000
        );
    }
}
