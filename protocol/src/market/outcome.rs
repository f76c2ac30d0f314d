//! Outcomes of leased outputs (issue 17): what a spend of an output a lease record names
//! (or of one that follows from it) says about the farmer, read from the spend alone.
//!
//! Consensus has already checked every signature and hash, and the spent script is the one
//! the farmer signed in the lease record, so the *shape* of the satisfaction tells which
//! branch was taken. Shapes (witness items in order, last = the witness script; "" = the
//! empty push miniscript uses to dissatisfy):
//!
//! | output (script)                                               | spend                   | shape                                  |
//! |---------------------------------------------------------------|-------------------------|----------------------------------------|
//! | O_i `wsh(or_d(multi(2,Ra,Fa),and_v(v:pk(Ra),after(T_i+W))))`   | 2-of-2: A_ij, later O_k | `["", sig_Ra, sig_Fa, script]`         |
//! |                                                               | renter alone (RF_i's O_i)| `[sig_Ra, "", "", "", script]`         |
//! | A_ij:0 `wsh(andor(pk(Fc),hash160(H),and_v(v:pk(Rc),older(W))))`| farmer's claim          | `[x (32 bytes), sig_Fc, script]`       |
//! |                                                               | reclaim / RF_ij         | `[sig_Rc, "", script]`                 |
//! | TX1:0 `sh(or_d(multi(3,R,F,F̃),and_v(v:pk(R),after(T1))))`    | TX2 (scriptSig)         | `[OP_0, sig_R, sig_F, sig_F̃, redeem]` |
//! |                                                               | refund after T1         | `[sig_R, OP_0, OP_0, OP_0, OP_0, redeem]` |
//! | TX2:0 `wsh(or_d(multi(2,R2,F2),and_v(v:pk(R2),older(Δ))))`     | TX3                     | `["", sig_R2, sig_F2, script]`         |
//! |                                                               | TX2 refund after Δ      | `[sig_R2, "", "", "", script]`         |
//!
//! TX1:0 of a contract agreed before R-first is `multi(3,F,F̃,R)` and its TX2 carries
//! `[OP_0, sig_F, sig_F̃, sig_R, redeem]`: the same shape, classified the same way.
//!
//! The or_d satisfactions come from miniscript: `or_d(X,Z)` is satisfied by sat(X) or by
//! sat(Z) ‖ dissat(X), and multi(k,…)'s dissatisfaction is k+1 empty pushes; `andor(X,Y,Z)`
//! by sat(Y) ‖ sat(X) or sat(Z) ‖ dissat(X) (see `audit::transactions` and `contract`,
//! whose signing code produces exactly these; the unit tests classify their real output).
//!
//! Which branch miniscript's satisfier picks is part of the shape: it takes the cheapest
//! satisfaction the spending transaction's timelocks allow. RF_i (nLockTime T_i+W) therefore
//! spends its first input O_i through the renter's after(T_i+W) branch (one signature is
//! cheaper than two) and every later O_k (k > i, after(T_k+W) not yet reached) through the
//! 2-of-2. The farmer signs O inputs only of candidates and refunds, all SIGHASH_ALL, so a
//! 2-of-2 spend of O_k is exactly one of:
//! * a candidate A_ij: the only input, output 0 a P2WSH: followed as
//!   [`LeaseOutput::Candidate`] (it counts once its output is spent);
//! * RF_i: input 0 is O_i through the renter's branch and O_{i+1} is input 1: **audit i
//!   failed**, counted on input 1 only (inputs 2.. are [`SpendOutcome::SweptByRefund`]);
//! * RF_ij: input 0 is the candidate's output through older(W) (the failure is counted
//!   there), every O_k input is [`SpendOutcome::SweptByRefund`].
//!
//! A spend of O_i through the renter's branch alone ([`SpendOutcome::RenterAlone`]) counts
//! nothing: the renter may take O_i that way after T_i+W whatever the farmer did, so it
//! shows nothing about the farmer. In particular RF_{N−1} (the last audit, unraced: a single
//! O_{N−1} input) is not counted.
//!
//! The counting rules and why a copied record cannot smear a farmer are in
//! [`super::lease`]'s module doc.

use bitcoin::script::Instruction;
use bitcoin::{OutPoint, Transaction};
use serde::{Deserialize, Serialize};

/// What a followed output is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LeaseOutput {
    /// O_i of TX_A (i = its output index).
    AuditFunding { audit: u32 },
    /// Output 0 of a candidate A_ij of audit i.
    Candidate { audit: u32 },
    /// TX1:0 of a contract's first download.
    DownloadFunding,
    /// TX2:0.
    Tx2,
}

/// What one spend of a followed output shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpendOutcome {
    /// A candidate of audit i was mined; follow `next` as [`LeaseOutput::Candidate`].
    CandidateMined { audit: u32, next: OutPoint },
    /// The farmer claimed a candidate of audit i with its preimage.
    AuditPassed { audit: u32 },
    /// Audit i failed: a candidate reclaimed (or RF_ij) after older(W), or RF_i.
    AuditFailed { audit: u32 },
    /// O_i swept by a refund of an earlier audit (its failure counts once, elsewhere).
    SweptByRefund { audit: u32 },
    /// TX2 was mined; follow `next` as [`LeaseOutput::Tx2`].
    Tx2Mined { next: OutPoint },
    /// TX3 spent TX2:0: the farmer was paid for a download.
    DownloadServed,
    /// TX1:0 came back to the renter after T1: the download was not served.
    DownloadRefunded,
    /// A renter-alone branch the farmer takes no part in (O_i after T_i+W, TX2:0 after
    /// Δ): counts nothing.
    RenterAlone,
    /// A shape none of the contract's transactions has.
    Unrecognised,
}

/// The four counters of a farmer's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Count {
    AuditPassed,
    AuditFailed,
    DownloadServed,
    DownloadRefunded,
}

impl SpendOutcome {
    /// The output to follow next, if any.
    pub fn follow(&self) -> Option<(OutPoint, LeaseOutput)> {
        match *self {
            SpendOutcome::CandidateMined { audit, next } => {
                Some((next, LeaseOutput::Candidate { audit }))
            }
            SpendOutcome::Tx2Mined { next } => Some((next, LeaseOutput::Tx2)),
            _ => None,
        }
    }

    /// The counter this outcome adds one to, if any. A [`Count::DownloadRefunded`] is a
    /// candidate: count it through [`downloads_refunded`].
    pub fn count(&self) -> Option<Count> {
        match self {
            SpendOutcome::AuditPassed { .. } => Some(Count::AuditPassed),
            SpendOutcome::AuditFailed { .. } => Some(Count::AuditFailed),
            SpendOutcome::DownloadServed => Some(Count::DownloadServed),
            SpendOutcome::DownloadRefunded => Some(Count::DownloadRefunded),
            _ => None,
        }
    }
}

/// The refunds that count for one contract tag: at most one, and none once the tag has a
/// served download.
pub fn downloads_refunded(served_for_tag: u64, refunds_for_tag: u64) -> u64 {
    u64::from(served_for_tag == 0 && refunds_for_tag > 0)
}

/// Classifies input `input_index` of `spending_tx`, which spends an output of kind `kind`.
pub fn classify_spend(
    kind: LeaseOutput,
    spending_tx: &Transaction,
    input_index: usize,
) -> SpendOutcome {
    let Some(input) = spending_tx.input.get(input_index) else {
        return SpendOutcome::Unrecognised;
    };
    let witness: Vec<&[u8]> = input.witness.iter().collect();
    match kind {
        LeaseOutput::AuditFunding { audit } => {
            audit_funding_spend(audit, spending_tx, input_index, &witness)
        }
        LeaseOutput::Candidate { audit } => candidate_spend(audit, &witness),
        LeaseOutput::DownloadFunding => tx1_spend(spending_tx, &input.script_sig),
        LeaseOutput::Tx2 => match or_d_multi_branch(&witness, 2) {
            Some(true) => SpendOutcome::DownloadServed,
            Some(false) => SpendOutcome::RenterAlone,
            None => SpendOutcome::Unrecognised,
        },
    }
}

/// Which branch of `or_d(multi(k,…),and_v(v:pk(R),…))` the stack `items` (last = script)
/// satisfies: Some(true) the multisig, Some(false) the renter's key, None neither shape.
fn or_d_multi_branch(items: &[&[u8]], k: usize) -> Option<bool> {
    let (_, stack) = items.split_last()?;
    let multi =
        stack.len() == k + 1 && stack[0].is_empty() && stack[1..].iter().all(|s| !s.is_empty());
    let renter =
        stack.len() == k + 2 && !stack[0].is_empty() && stack[1..].iter().all(|s| s.is_empty());
    match (multi, renter) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    }
}

fn audit_funding_spend(
    audit: u32,
    tx: &Transaction,
    input_index: usize,
    witness: &[&[u8]],
) -> SpendOutcome {
    match or_d_multi_branch(witness, 2) {
        Some(true) => {}
        Some(false) => return SpendOutcome::RenterAlone,
        None => return SpendOutcome::Unrecognised,
    }
    if tx.input.len() == 1 {
        return if tx
            .output
            .first()
            .is_some_and(|o| o.script_pubkey.is_p2wsh())
        {
            SpendOutcome::CandidateMined {
                audit,
                next: OutPoint::new(tx.compute_txid(), 0),
            }
        } else {
            SpendOutcome::Unrecognised
        };
    }
    // A refund the farmer pre-signed: RF_i (input 0 is O_i through the renter's branch)
    // or RF_ij (input 0 is a candidate's output through older(W), counted there).
    let first: Vec<&[u8]> = tx.input[0].witness.iter().collect();
    let rf_i = input_index == 1 && or_d_multi_branch(&first, 2) == Some(false);
    match audit.checked_sub(1) {
        Some(failed) if rf_i => SpendOutcome::AuditFailed { audit: failed },
        _ if input_index == 0 => SpendOutcome::Unrecognised,
        _ => SpendOutcome::SweptByRefund { audit },
    }
}

fn candidate_spend(audit: u32, witness: &[&[u8]]) -> SpendOutcome {
    match witness {
        [x, sig, _script] if x.len() == 32 && !sig.is_empty() => {
            SpendOutcome::AuditPassed { audit }
        }
        [sig, empty, _script] if !sig.is_empty() && empty.is_empty() => {
            SpendOutcome::AuditFailed { audit }
        }
        _ => SpendOutcome::Unrecognised,
    }
}

fn tx1_spend(tx: &Transaction, script_sig: &bitcoin::ScriptBuf) -> SpendOutcome {
    let pushes: Option<Vec<&[u8]>> = script_sig
        .instructions()
        .map(|i| match i {
            Ok(Instruction::PushBytes(push)) => Some(push.as_bytes()),
            _ => None,
        })
        .collect();
    match pushes.and_then(|p| or_d_multi_branch(&p, 3)) {
        Some(true)
            if tx
                .output
                .first()
                .is_some_and(|o| o.script_pubkey.is_p2wsh()) =>
        {
            SpendOutcome::Tx2Mined {
                next: OutPoint::new(tx.compute_txid(), 0),
            }
        }
        Some(false) => SpendOutcome::DownloadRefunded,
        _ => SpendOutcome::Unrecognised,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::tests::parties;
    use crate::contract::{txid_from_digest, RefundDestination};
    use bitcoin::hashes::Hash;
    use bitcoin::secp256k1::{Message, SECP256K1};
    use bitcoin::{Amount, Txid};

    fn tx1_outpoint() -> OutPoint {
        OutPoint::new(Txid::from_byte_array([4; 32]), 0)
    }

    #[test]
    fn tx2_and_tx3_count_served_and_refunds_count_refunded() {
        let p = parties(21);
        let unsigned = p
            .contract
            .unsigned_tx2(tx1_outpoint(), Amount::from_sat(1_000))
            .unwrap();
        let z = Message::from_digest(p.contract.tx2_sighash(&unsigned).unwrap());
        let twin = crate::contract::twin_secret(&p.f, &p.contract.contract_id).unwrap();
        let sig_r = p.contract.renter_sign_tx2(&unsigned, &p.r).unwrap();
        let tx2 = p
            .contract
            .finalize_tx2(
                &unsigned,
                SECP256K1.sign_ecdsa(&z, &p.f),
                SECP256K1.sign_ecdsa(&z, &twin),
                sig_r,
            )
            .unwrap();
        let next = OutPoint::new(tx2.compute_txid(), 0);
        let outcome = classify_spend(LeaseOutput::DownloadFunding, &tx2, 0);
        assert_eq!(outcome, SpendOutcome::Tx2Mined { next });
        assert_eq!(outcome.follow(), Some((next, LeaseOutput::Tx2)));

        let value = Amount::from_sat(99_000);
        let payout = RefundDestination::p2wpkh_of(&p.f2).script_pubkey().clone();
        let tx3 = p
            .contract
            .unsigned_tx3(
                txid_from_digest(&[5; 32]),
                value,
                Amount::from_sat(700),
                payout,
            )
            .unwrap();
        let (sr, sf) = (
            p.contract.sign_tx3(&tx3, value, &p.r2).unwrap(),
            p.contract.sign_tx3(&tx3, value, &p.f2).unwrap(),
        );
        let tx3 = p.contract.finalize_tx3(&tx3, sr, sf).unwrap();
        let served = classify_spend(LeaseOutput::Tx2, &tx3, 0);
        assert_eq!(served, SpendOutcome::DownloadServed);
        assert_eq!(served.count(), Some(Count::DownloadServed));

        let dest = RefundDestination::p2wpkh_of(&p.r);
        let refund = p
            .contract
            .tx1_refund(tx1_outpoint(), &p.r, &dest, Amount::from_sat(500))
            .unwrap();
        let refunded = classify_spend(LeaseOutput::DownloadFunding, &refund, 0);
        assert_eq!(refunded, SpendOutcome::DownloadRefunded);
        assert_eq!(refunded.count(), Some(Count::DownloadRefunded));

        let dest2 = RefundDestination::p2wpkh_of(&p.r2);
        let tx2_refund = p
            .contract
            .tx2_refund(next, value, &p.r2, &dest2, Amount::from_sat(500))
            .unwrap();
        assert_eq!(
            classify_spend(LeaseOutput::Tx2, &tx2_refund, 0),
            SpendOutcome::RenterAlone
        );
        // A shape that belongs to another output kind is not counted.
        assert_eq!(
            classify_spend(LeaseOutput::Candidate { audit: 0 }, &tx3, 0),
            SpendOutcome::Unrecognised
        );
        assert_eq!(
            classify_spend(LeaseOutput::Tx2, &tx3, 1),
            SpendOutcome::Unrecognised
        );
    }

    #[test]
    fn refunds_count_once_per_tag_and_never_against_a_served_download() {
        assert_eq!(downloads_refunded(0, 0), 0);
        assert_eq!(downloads_refunded(0, 1), 1);
        assert_eq!(downloads_refunded(0, 5), 1);
        assert_eq!(downloads_refunded(1, 5), 0);
    }
}
