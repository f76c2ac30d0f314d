//! The farmer's floor on audit terms (issue 15, item 6): a claim window long enough to
//! claim in, and fee rates on the candidates and refunds high enough that a renter cannot
//! let a low-fee candidate miss its window. Fee rates are computed from each
//! transaction's largest satisfied size (miniscript's satisfaction weight).

use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{SecretKey, SECP256K1};
use bitcoin::{Txid, Weight};

use super::messages::ProposedTerms;
use super::transactions::{AuditTerms, AuditTx, AuditTxError, RefundPayout};

/// Default least claim window W (blocks) a farmer accepts.
pub const DEFAULT_MIN_CLAIM_WINDOW: u16 = 6;
/// Default least fee rate (sat/vB) of every candidate and refund.
pub const DEFAULT_MIN_FEE_RATE_SAT_VB: u64 = 2;

/// What a farmer requires of proposed audit terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditPolicy {
    /// Least W in blocks.
    pub min_claim_window: u16,
    /// Least fee rate of candidates and refunds, sat/vB.
    pub min_fee_rate_sat_vb: u64,
}

impl Default for AuditPolicy {
    fn default() -> Self {
        AuditPolicy {
            min_claim_window: DEFAULT_MIN_CLAIM_WINDOW,
            min_fee_rate_sat_vb: DEFAULT_MIN_FEE_RATE_SAT_VB,
        }
    }
}

/// Why terms fall below the policy.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("the claim window W = {window} blocks is below this farmer's minimum of {min} blocks (W must also stay below the audit period)")]
    ClaimWindow { window: u16, min: u16 },
    #[error("the {what} fee of {fee} sat over {vsize} vB is {rate:.2} sat/vB, below this farmer's minimum of {min} sat/vB")]
    FeeRate {
        what: &'static str,
        fee: u64,
        vsize: u64,
        rate: f64,
        min: u64,
    },
    #[error(transparent)]
    Terms(#[from] AuditTxError),
}

impl AuditPolicy {
    /// Checks `terms` (with any valid keys) and the renter's refund scripts against the
    /// policy: W, then the candidate's fee rate, then the largest refund's (with its anchor).
    pub fn check(&self, terms: &AuditTerms, payout: RefundPayout) -> Result<(), PolicyError> {
        if terms.claim_window < self.min_claim_window {
            return Err(PolicyError::ClaimWindow {
                window: terms.claim_window,
                min: self.min_claim_window,
            });
        }
        self.check_rate(
            "candidate",
            terms.candidate_fee.to_sat(),
            candidate_vsize(terms)?,
        )?;
        self.check_rate(
            "refund",
            terms.refund_fee.to_sat(),
            largest_refund_vsize(terms, payout)?,
        )
    }

    /// Checks proposed terms before the farmer has chosen its keys: two fixed placeholder
    /// keys (never the renter's) stand in for Fa and Fc, which changes no size.
    pub fn check_proposed(
        &self,
        proposed: &ProposedTerms,
        contract_id: [u8; 32],
        payout: RefundPayout,
    ) -> Result<(), PolicyError> {
        let renter = [proposed.renter_funding_key, proposed.renter_claim_key];
        let mut placeholders = (1u8..=4)
            .filter_map(|b| SecretKey::from_slice(&[b; 32]).ok())
            .map(|k| k.public_key(SECP256K1))
            .filter(|k| !renter.contains(k));
        let (Some(fa), Some(fc)) = (placeholders.next(), placeholders.next()) else {
            return Err(AuditTxError::BadTerms("no placeholder key").into());
        };
        let terms = proposed.with_farmer(contract_id, fa, fc);
        terms.check()?;
        self.check(&terms, payout)
    }

    fn check_rate(&self, what: &'static str, fee: u64, vsize: u64) -> Result<(), PolicyError> {
        if fee < self.min_fee_rate_sat_vb.saturating_mul(vsize) {
            return Err(PolicyError::FeeRate {
                what,
                fee,
                vsize,
                rate: fee as f64 / vsize.max(1) as f64,
                min: self.min_fee_rate_sat_vb,
            });
        }
        Ok(())
    }
}

/// The largest virtual size of a signed candidate A_0j.
pub fn candidate_vsize(terms: &AuditTerms) -> Result<u64, AuditTxError> {
    let atx = terms.unsigned_candidate(Txid::all_zeros(), 0, &[0; 20])?;
    signed_vsize(terms, &atx)
}

/// The largest virtual size of a signed refund: RF_0, which gathers every O_i (RF_0j
/// swaps O_0 for a candidate's smaller output).
pub fn largest_refund_vsize(terms: &AuditTerms, payout: RefundPayout) -> Result<u64, AuditTxError> {
    let unraced = terms.unsigned_refund_unraced(Txid::all_zeros(), 0, payout)?;
    let after = terms.unsigned_refund_after_candidate(
        Txid::all_zeros(),
        0,
        Txid::all_zeros(),
        &[0; 20],
        payout,
    )?;
    Ok(signed_vsize(terms, &unraced)?.max(signed_vsize(terms, &after)?))
}

/// vsize of `atx` with every input satisfied at its descriptor's largest witness.
fn signed_vsize(terms: &AuditTerms, atx: &AuditTx) -> Result<u64, AuditTxError> {
    let mut weight = atx.tx.weight() + Weight::from_wu(2);
    for spent in &atx.spends {
        let descriptor = terms.spent_descriptor(spent)?;
        let satisfaction = descriptor
            .max_weight_to_satisfy()
            .map_err(|_| AuditTxError::BadTerms("a script has no bounded satisfaction"))?;
        weight += satisfaction;
    }
    Ok(weight.to_vbytes_ceil())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::{Amount, ScriptBuf};

    fn terms(window: u16, audits: u32, candidate_fee: u64, refund_fee: u64) -> AuditTerms {
        let key = |b: u8| {
            SecretKey::from_slice(&[b; 32])
                .unwrap()
                .public_key(SECP256K1)
        };
        AuditTerms {
            contract_id: [1; 32],
            renter_funding_key: key(7),
            farmer_funding_key: key(8),
            renter_claim_key: key(9),
            farmer_claim_key: key(10),
            first_audit_height: 200,
            period: 14,
            claim_window: window,
            audits,
            amount: Amount::from_sat(20_000),
            candidate_fee: Amount::from_sat(candidate_fee),
            refund_fee: Amount::from_sat(refund_fee),
        }
    }

    fn p2wpkh() -> ScriptBuf {
        ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::all_zeros())
    }

    #[test]
    fn sizes_are_plausible_and_grow_with_the_refund() {
        let one = terms(7, 1, 1_000, 1_400);
        let many = terms(7, 10, 1_000, 5_000);
        let c = candidate_vsize(&one).unwrap();
        assert!((130..200).contains(&c), "candidate {c} vB");
        let dest = p2wpkh();
        let r1 = largest_refund_vsize(&one, RefundPayout::plain(&dest)).unwrap();
        let r10 = largest_refund_vsize(&many, RefundPayout::plain(&dest)).unwrap();
        assert!(r10 > 8 * (r1 - 42), "{r1} {r10}");
        let anchored = RefundPayout {
            destination: &dest,
            anchor: Some(&dest),
        };
        assert_eq!(largest_refund_vsize(&one, anchored).unwrap(), r1 + 31);
    }

    #[test]
    fn the_policy_refuses_short_windows_and_cheap_transactions() {
        let policy = AuditPolicy::default();
        let dest = p2wpkh();
        let plain = RefundPayout::plain(&dest);
        let anchored = RefundPayout {
            destination: &dest,
            anchor: Some(&dest),
        };
        // The plugin renter's own terms pass (fees 1000 and 1000 + 400·N), anchored too.
        for n in [1, 4, 52] {
            let t = terms(7, n, 1_000, 1_000 + 400 * u64::from(n));
            policy.check(&t, plain).unwrap();
            policy.check(&t, anchored).unwrap();
        }
        assert!(matches!(
            policy.check(&terms(3, 1, 1_000, 1_400), plain),
            Err(PolicyError::ClaimWindow { window: 3, min: 6 })
        ));
        let err = policy.check(&terms(7, 1, 150, 1_400), plain).unwrap_err();
        assert!(err.to_string().contains("candidate fee"), "{err}");
        let err = policy
            .check(&terms(7, 10, 1_000, 1_000), plain)
            .unwrap_err();
        assert!(err.to_string().contains("refund fee"), "{err}");
    }
}
