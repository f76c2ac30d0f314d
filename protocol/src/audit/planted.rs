//! What a renter can expect from planting unanswerable locks (issue 15, item 6): the
//! coin toss opens m of the 2m candidates of an audit, so b bad locks all stay hidden with
//! probability C(2m−b, m)/C(2m, m) (1/2 for one); a hidden bad candidate then pays the
//! renter only if it is the one that confirms at T_i. Every candidate of an audit carries
//! the same fee and the same size, so once the beacon's choice is in the mempool no other
//! candidate can replace it (full-RBF needs a higher fee); the farmer's own tower
//! publishes the beacon's choice at T_i. A bad candidate then confirms only when the
//! beacon picks it, or when the renter reaches the miners first.
//!
//! That leaves O/(2m) per planted lock, so the renter stakes (see [`super::stake`]): TX_A
//! pays the farmer at least O/m and must be confirmed before the toss is revealed. A caught
//! renter has lost the stake and must set up again (paying another stake) where an honest
//! one pays once; a hidden one has paid what an honest renter pays. With the stake the
//! expected gain is at most zero ([`gain_with_stake`]).

/// Probability that all `bad` of an audit's `2·kept` locks land in the kept half.
pub fn all_kept_probability(kept: u32, bad: u32) -> f64 {
    if bad > kept {
        return 0.0;
    }
    // C(2m − b, m) / C(2m, m) = Π_{t<b} (m − t) / (2m − t).
    (0..bad)
        .map(|t| f64::from(kept - t) / f64::from(2 * kept - t))
        .product()
}

/// Probability that one of `bad` hidden candidates confirms: the beacon picks one of them
/// (bad/m), or the renter wins the race against the farmer's tower (`race_win`) for the
/// rest.
pub fn bad_confirms_probability(kept: u32, bad: u32, race_win: f64) -> f64 {
    let beacon = f64::from(bad.min(kept)) / f64::from(kept.max(1));
    beacon + (1.0 - beacon) * race_win.clamp(0.0, 1.0)
}

/// The renter's expected gain, in units of what one confirmed bad candidate returns to it
/// (at most the audit's amount and every later one, through RF_ij), from planting `bad`
/// locks in one audit, against a caught attempt that costs it `caught_cost` in the same
/// units (the audit contract is refused; the file must be uploaded again elsewhere).
pub fn expected_gain(kept: u32, bad: u32, race_win: f64, caught_cost: f64) -> f64 {
    let hidden = all_kept_probability(kept, bad);
    hidden * bad_confirms_probability(kept, bad, race_win) - (1.0 - hidden) * caught_cost
}

/// The least cost of a caught attempt (same units) that makes planting `bad` locks not
/// pay in expectation.
pub fn break_even_cost(kept: u32, bad: u32, race_win: f64) -> f64 {
    let hidden = all_kept_probability(kept, bad);
    if hidden >= 1.0 {
        return f64::INFINITY;
    }
    hidden * bad_confirms_probability(kept, bad, race_win) / (1.0 - hidden)
}

/// The renter's expected gain from planting `bad` locks in one audit of `amount`, when a
/// caught attempt forfeits `stake` (both in sat; the result in sat), the farmer's tower
/// publishing the beacon's choice first (`race_win` = 0 in the ideal race).
pub fn gain_with_stake(kept: u32, bad: u32, race_win: f64, amount: u64, stake: u64) -> f64 {
    if amount == 0 {
        return 0.0;
    }
    let caught_cost = stake as f64 / amount as f64;
    expected_gain(kept, bad, race_win, caught_cost) * amount as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_planted_lock_stays_hidden_half_the_time() {
        assert!((all_kept_probability(8, 1) - 0.5).abs() < 1e-12);
        // C(14, 8) / C(16, 8) = 3003 / 12870.
        assert!((all_kept_probability(8, 2) - 3003.0 / 12870.0).abs() < 1e-12);
        assert_eq!(all_kept_probability(8, 9), 0.0);
    }

    #[test]
    fn the_towers_publishing_first_cuts_the_gain_by_m() {
        // Without the beacon's candidate out first the renter always gets its bad
        // candidate confirmed once it is hidden: half the returned value per attempt.
        let unopposed = expected_gain(8, 1, 1.0, 0.0);
        assert!((unopposed - 0.5).abs() < 1e-12);
        // With the farmer's tower first, only the beacon's own pick: 1/(2m).
        let opposed = expected_gain(8, 1, 0.0, 0.0);
        assert!((opposed - 1.0 / 16.0).abs() < 1e-12);
        // Planting more locks only makes it worse for the renter once being caught
        // costs anything: the break-even cost falls as b grows.
        let costs: Vec<f64> = (1..=4).map(|b| break_even_cost(8, b, 0.0)).collect();
        assert!((costs[0] - 1.0 / 8.0).abs() < 1e-12, "{costs:?}");
        assert!(costs.windows(2).all(|w| w[1] < w[0]), "{costs:?}");
        // A caught attempt that costs an eighth of the returned value (one audit of an
        // eight-audit contract) already makes one planted lock not pay.
        assert!(expected_gain(8, 1, 0.0, 1.0 / 8.0) <= 1e-12);
        assert!(expected_gain(8, 2, 0.0, 1.0 / 8.0) < 0.0);
    }

    #[test]
    fn with_the_required_stake_planting_does_not_pay() {
        use super::super::stake::required_stake;
        use bitcoin::Amount;
        for (amount, m) in [(20_000u64, 8u32), (20_001, 8), (50_000, 4), (1_000_000, 32)] {
            let stake = required_stake(Amount::from_sat(amount), m as usize).to_sat();
            for bad in 1..=m {
                let gain = gain_with_stake(m, bad, 0.0, amount, stake);
                assert!(gain <= 1e-9, "m={m} b={bad} O={amount}: {gain} sat");
            }
        }
        // Without the stake one planted lock returns O/(2m) in expectation.
        let free = gain_with_stake(8, 1, 0.0, 20_000, 0);
        assert!((free - 1_250.0).abs() < 1e-9, "{free}");
    }
}
