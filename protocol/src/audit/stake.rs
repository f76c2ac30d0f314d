//! The renter's stake (issue 15, item 6; PROTOCOL.md 5 [fix]): a payment to the farmer
//! inside TX_A that must be confirmed before the farmer reveals its coin-toss nonce, so a
//! renter whose planted lock the toss opens has already paid it.
//!
//! A planted (unanswerable) lock stays hidden with probability 1/2 and then pays the
//! renter one audit's amount O only when the beacon picks it (1/m): O/(2m) in
//! expectation. A caught renter loses the stake and must set up again elsewhere, so a stake
//! of at least O/m makes planting not pay (see [`super::planted`]). The stake is the
//! farmer's in every case: an honest renter pays it as a set-up fee.
//!
//! TX_A's layout: O_0..O_{N−1}, the farmer's lease record at N (issue 17), the stake at
//! N + 1, then the renter's change.

use bitcoin::{Amount, ScriptBuf, Transaction, TxOut};

/// The least stake whatever the terms: above the dust limit of any P2WPKH or P2TR script.
pub const MIN_STAKE: Amount = Amount::from_sat(330);

/// Why a TX_A's stake is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StakeError {
    #[error("TX_A has no stake output at index {0}")]
    Missing(u32),
    #[error("the stake output at index {index} pays another script than the farmer's")]
    WrongScript { index: u32 },
    #[error("the stake is {got} sat; these terms need at least {needed} sat")]
    TooSmall { got: u64, needed: u64 },
    #[error("the farmer's stake script must be P2WPKH or P2TR")]
    BadScript,
}

/// The least stake for audits of `amount` each with `kept` candidates (m) per audit:
/// ⌈amount / m⌉, and at least [`MIN_STAKE`].
pub fn required_stake(amount: Amount, kept: usize) -> Amount {
    let m = kept.max(1) as u64;
    Amount::from_sat(amount.to_sat().div_ceil(m)).max(MIN_STAKE)
}

/// Where the stake sits in a TX_A of `audits` audits.
pub fn stake_index(audits: u32) -> u32 {
    audits + 1
}

/// The stake output the renter puts at [`stake_index`].
pub fn stake_output(farmer_script: &ScriptBuf, stake: Amount) -> TxOut {
    TxOut {
        value: stake,
        script_pubkey: farmer_script.clone(),
    }
}

/// A script the farmer may ask the stake to be paid to.
pub fn check_stake_script(script: &ScriptBuf) -> Result<(), StakeError> {
    if script.is_p2wpkh() || script.is_p2tr() {
        Ok(())
    } else {
        Err(StakeError::BadScript)
    }
}

/// The farmer's check of TX_A: at [`stake_index`] an output of at least `needed` to
/// `farmer_script`.
pub fn check_stake(
    tx_a: &Transaction,
    audits: u32,
    farmer_script: &ScriptBuf,
    needed: Amount,
) -> Result<(), StakeError> {
    let index = stake_index(audits);
    let output = tx_a
        .output
        .get(index as usize)
        .ok_or(StakeError::Missing(index))?;
    if &output.script_pubkey != farmer_script {
        return Err(StakeError::WrongScript { index });
    }
    if output.value < needed {
        return Err(StakeError::TooSmall {
            got: output.value.to_sat(),
            needed: needed.to_sat(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::absolute::LockTime;
    use bitcoin::transaction::Version;

    fn farmer_script() -> ScriptBuf {
        use bitcoin::hashes::Hash;
        ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_byte_array([7; 20]))
    }

    fn tx_with(outputs: Vec<TxOut>) -> Transaction {
        Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: Vec::new(),
            output: outputs,
        }
    }

    fn filler() -> TxOut {
        TxOut {
            value: Amount::from_sat(1_000),
            script_pubkey: ScriptBuf::new(),
        }
    }

    #[test]
    fn the_stake_is_an_mth_of_one_audit_rounded_up_and_above_dust() {
        assert_eq!(
            required_stake(Amount::from_sat(20_000), 8),
            Amount::from_sat(2_500)
        );
        assert_eq!(
            required_stake(Amount::from_sat(20_001), 8),
            Amount::from_sat(2_501)
        );
        assert_eq!(required_stake(Amount::from_sat(1_000), 8), MIN_STAKE);
        assert_eq!(
            required_stake(Amount::from_sat(5_000), 0),
            Amount::from_sat(5_000)
        );
    }

    #[test]
    fn the_farmer_refuses_a_missing_short_or_misdirected_stake() {
        let script = farmer_script();
        let needed = Amount::from_sat(2_500);
        // Two audits: O_0, O_1, the lease, then the stake at index 3.
        let good = tx_with(vec![
            filler(),
            filler(),
            filler(),
            stake_output(&script, needed),
        ]);
        assert_eq!(check_stake(&good, 2, &script, needed), Ok(()));
        let missing = tx_with(vec![filler(), filler(), filler()]);
        assert_eq!(
            check_stake(&missing, 2, &script, needed),
            Err(StakeError::Missing(3))
        );
        let short = tx_with(vec![
            filler(),
            filler(),
            filler(),
            stake_output(&script, Amount::from_sat(2_499)),
        ]);
        assert!(matches!(
            check_stake(&short, 2, &script, needed),
            Err(StakeError::TooSmall {
                got: 2_499,
                needed: 2_500
            })
        ));
        let elsewhere = tx_with(vec![filler(), filler(), filler(), filler()]);
        assert_eq!(
            check_stake(&elsewhere, 2, &script, needed),
            Err(StakeError::WrongScript { index: 3 })
        );
        assert_eq!(check_stake_script(&script), Ok(()));
        assert_eq!(
            check_stake_script(&ScriptBuf::new()),
            Err(StakeError::BadScript)
        );
    }
}
