//! The score a renter ranks farmers by, from facts anyone can recompute from the chain and
//! the evidence boards.
//!
//! `score = bond_value^1.3 × success × price_factor`, and 0 when the farmer is burned or has
//! no live bond (bond_value 0):
//! * `bond_value^1.3`: JoinMarket's timelocked bond value raised to its selection exponent
//!   ([`BOND_VALUE_EXPONENT`]), so one big bond beats the same coins split over many
//!   identities (Sybil resistance).
//! * `success = (good + 1) / (good + 2·bad + 2)`, good = audits passed + downloads served,
//!   bad = audits failed + downloads refunded: a Laplace-smoothed success rate (a newcomer
//!   starts at 1/2) in which a failure counts double.
//! * `price_factor = 1 / (1 + price_per_download_sat / REFERENCE_PRICE_SAT)`: cheaper is
//!   better, but price only scales the score; it never outweighs a bond of another order.

use super::bond::BOND_VALUE_EXPONENT;

/// The price at which the price factor halves the score.
pub const REFERENCE_PRICE_SAT: f64 = 1_000.0;

/// What the score is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FarmerFacts {
    /// [`super::bond::bond_value`] of the farmer's largest live bond (0 if none).
    pub bond_value: f64,
    pub audits_passed: u64,
    pub audits_failed: u64,
    pub downloads_served: u64,
    pub downloads_refunded: u64,
    pub price_per_download_sat: u64,
    pub burned: bool,
}

/// The three terms of the score.
struct Terms {
    weighted_bond: f64,
    success: f64,
    price_factor: f64,
}

fn terms(f: &FarmerFacts) -> Terms {
    let good = f.audits_passed.saturating_add(f.downloads_served) as f64;
    let bad = f.audits_failed.saturating_add(f.downloads_refunded) as f64;
    Terms {
        weighted_bond: f.bond_value.max(0.0).powf(BOND_VALUE_EXPONENT),
        success: (good + 1.0) / (good + 2.0 * bad + 2.0),
        price_factor: 1.0 / (1.0 + f.price_per_download_sat as f64 / REFERENCE_PRICE_SAT),
    }
}

/// Why the score is 0, if it is.
fn zero_reason(f: &FarmerFacts) -> Option<&'static str> {
    if f.burned {
        Some("burned by a verified fraud proof")
    } else if !(f.bond_value > 0.0 && f.bond_value.is_finite()) {
        Some("no live bond")
    } else {
        None
    }
}

/// The farmer's score (higher is better); 0 when burned or without a bond.
pub fn score(f: &FarmerFacts) -> f64 {
    if zero_reason(f).is_some() {
        return 0.0;
    }
    let t = terms(f);
    t.weighted_bond * t.success * t.price_factor
}

/// One line naming each term and its value.
pub fn explain(f: &FarmerFacts) -> String {
    if let Some(reason) = zero_reason(f) {
        return format!("score 0: {reason}");
    }
    let t = terms(f);
    format!(
        "score {:.3} = bond_value {:.1}^{} ({:.3}) × success {:.3} ({} passed + {} served vs {} failed + {} refunded, failures count double) × price factor {:.3} ({} sat per download)",
        score(f),
        f.bond_value,
        BOND_VALUE_EXPONENT,
        t.weighted_bond,
        t.success,
        f.audits_passed,
        f.downloads_served,
        f.audits_failed,
        f.downloads_refunded,
        t.price_factor,
        f.price_per_download_sat,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> FarmerFacts {
        FarmerFacts {
            bond_value: 50_000.0,
            audits_passed: 3,
            audits_failed: 1,
            downloads_served: 4,
            downloads_refunded: 1,
            price_per_download_sat: 2_000,
            burned: false,
        }
    }

    #[test]
    fn burned_or_unbonded_farmers_score_zero() {
        let burned = FarmerFacts {
            burned: true,
            ..base()
        };
        assert_eq!(score(&burned), 0.0);
        assert!(explain(&burned).contains("burned"));
        for bond_value in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let unbonded = FarmerFacts {
                bond_value,
                ..base()
            };
            assert_eq!(score(&unbonded), 0.0, "{bond_value}");
            assert!(explain(&unbonded).contains("no live bond"));
        }
        assert!(score(&base()) > 0.0);
    }

    #[test]
    fn score_is_monotone_in_each_input() {
        let s = score(&base());
        assert!(
            score(&FarmerFacts {
                bond_value: 50_001.0,
                ..base()
            }) > s
        );
        assert!(
            score(&FarmerFacts {
                audits_passed: 4,
                ..base()
            }) > s
        );
        assert!(
            score(&FarmerFacts {
                downloads_served: 5,
                ..base()
            }) > s
        );
        assert!(
            score(&FarmerFacts {
                audits_failed: 2,
                ..base()
            }) < s
        );
        assert!(
            score(&FarmerFacts {
                downloads_refunded: 2,
                ..base()
            }) < s
        );
        assert!(
            score(&FarmerFacts {
                price_per_download_sat: 2_001,
                ..base()
            }) < s
        );
        let zero_history = FarmerFacts {
            bond_value: 1.0,
            ..FarmerFacts::default()
        };
        let mut last = 0.0;
        for passed in 0..50 {
            let next = score(&FarmerFacts {
                audits_passed: passed,
                ..zero_history
            });
            assert!(next > last);
            last = next;
        }
    }

    #[test]
    fn a_failure_weighs_more_than_a_success() {
        let newcomer = FarmerFacts {
            bond_value: 10_000.0,
            ..FarmerFacts::default()
        };
        let one_pass = FarmerFacts {
            audits_passed: 1,
            ..newcomer
        };
        let one_fail = FarmerFacts {
            audits_failed: 1,
            ..newcomer
        };
        let gain = score(&one_pass) - score(&newcomer);
        let loss = score(&newcomer) - score(&one_fail);
        assert!(loss > gain, "loss {loss} gain {gain}");
        // One of each leaves a farmer below a newcomer.
        let both = FarmerFacts {
            audits_passed: 1,
            audits_failed: 1,
            ..newcomer
        };
        assert!(score(&both) < score(&newcomer));
    }

    #[test]
    fn the_bond_term_is_superlinear() {
        // Splitting a bond over two identities loses score (JoinMarket's exponent).
        let one = FarmerFacts {
            bond_value: 2_000.0,
            ..FarmerFacts::default()
        };
        let half = FarmerFacts {
            bond_value: 1_000.0,
            ..FarmerFacts::default()
        };
        assert!(score(&one) > 2.0 * score(&half));
    }

    #[test]
    fn hand_computed_score_and_explanation() {
        // 1000^1.3 = 10^3.9 = 7943.28…; success (1+1)/(1+0+2) = 2/3; price 1/(1+1) = 1/2.
        let f = FarmerFacts {
            bond_value: 1_000.0,
            audits_passed: 1,
            price_per_download_sat: 1_000,
            ..FarmerFacts::default()
        };
        let expected = 10f64.powf(3.9) * (2.0 / 3.0) * 0.5;
        assert!((score(&f) - expected).abs() < 1e-6, "{}", score(&f));
        let line = explain(&f);
        assert!(line.contains("bond_value 1000.0^1.3"), "{line}");
        assert!(line.contains("success 0.667"), "{line}");
        assert!(line.contains("price factor 0.500"), "{line}");
        assert!(!line.contains('\n'));
    }
}
