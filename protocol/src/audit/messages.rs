//! The renter ↔ farmer messages that set up an audit contract (PROTOCOL.md 5, 7), each a [`PeerMessage`] in a signed envelope of the storage contract's conversation.
//!
//! [`AuditProposal`] (the renter's terms, its stake and every lock) → [`AuditAccepted`]
//! (the farmer's keys, toss commitment, lease record and stake script) → [`AuditFunding`]
//! (TX_A unsigned, with the stake) → [`AuditRefundSignatures`] (the farmer's signatures on
//! every RF_i) → TX_A is broadcast and confirmed → [`AuditToss`] (the renter's nonce; the
//! farmer answers only once TX_A has its confirmations) → [`AuditTossReveal`] (the
//! farmer's nonce) → [`AuditOpenings`] (the tossed half opened) → [`AuditRefundSignatures`]
//! (every RF_ij) → [`AuditSwap`] / [`AuditSwapReply`] once per candidate, farmer's
//! signature first.

use bitcoin::secp256k1::{ecdsa, PublicKey};
use bitcoin::{Amount, ScriptBuf, Transaction};
use serde::{Deserialize, Serialize};

use super::book::KeptLock;
use super::coin_toss::TossCommitment;
use super::opening::Opening;
use super::transactions::AuditTerms;
use crate::peer::PeerMessage;

/// Largest TX_A a farmer looks at.
pub const MAX_FUNDING_TX_BYTES: usize = 100_000;

/// The renter's half of the terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProposedTerms {
    pub renter_funding_key: PublicKey,
    pub renter_claim_key: PublicKey,
    pub first_audit_height: u32,
    pub period: u32,
    pub claim_window: u16,
    pub audits: u32,
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub amount: Amount,
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub candidate_fee: Amount,
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub refund_fee: Amount,
    /// What TX_A pays the farmer at `stake::stake_index` (at least
    /// `stake::required_stake`): the farmer's in every case.
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub stake: Amount,
}

impl ProposedTerms {
    /// The full terms once the farmer's keys are known.
    pub fn with_farmer(
        &self,
        contract_id: [u8; 32],
        farmer_funding_key: PublicKey,
        farmer_claim_key: PublicKey,
    ) -> AuditTerms {
        AuditTerms {
            contract_id,
            renter_funding_key: self.renter_funding_key,
            farmer_funding_key,
            renter_claim_key: self.renter_claim_key,
            farmer_claim_key,
            first_audit_height: self.first_audit_height,
            period: self.period,
            claim_window: self.claim_window,
            audits: self.audits,
            amount: self.amount,
            candidate_fee: self.candidate_fee,
            refund_fee: self.refund_fee,
        }
    }
}

/// Renter → farmer: audit terms, the renter's refund script and all 2m locks per audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditProposal {
    pub terms: ProposedTerms,
    pub renter_destination: ScriptBuf,
    pub locks: Vec<Vec<KeptLock>>,
    /// The renter's tower's script every refund pays a CPFP anchor to (the book's
    /// `refund_anchor`); absent from a renter without a tower.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_anchor: Option<ScriptBuf>,
}

impl AuditProposal {
    /// Where the refunds of this proposal pay.
    pub fn refund_payout(&self) -> super::transactions::RefundPayout<'_> {
        super::transactions::RefundPayout {
            destination: &self.renter_destination,
            anchor: self.refund_anchor.as_ref(),
        }
    }
}

impl PeerMessage for AuditProposal {
    const KIND: &'static str = "audit_proposal";
}

/// Farmer → renter: its keys and its commitment to the toss nonce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditAccepted {
    pub farmer_funding_key: PublicKey,
    pub farmer_claim_key: PublicKey,
    pub toss_commitment: TossCommitment,
    /// The farmer's lease record over TX_A's outputs O_0..O_{N−1} (issue 17): the renter
    /// puts it at TX_A index N, and the farmer refuses a TX_A without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<crate::market::lease::LeaseRecord>,
    /// Where TX_A pays the stake (P2WPKH or P2TR of the farmer's wallet).
    pub stake_script: ScriptBuf,
    /// Confirmations TX_A needs before the farmer reveals its toss nonce.
    pub stake_confirmations: u32,
}

impl PeerMessage for AuditAccepted {
    const KIND: &'static str = "audit_accepted";
}

/// Renter → farmer: TX_A, unsigned (its inputs are the renter's segwit coins, so the txid
/// is final): O_0..O_{N−1}, the lease record, the stake, change. The reply is the farmer's
/// signatures on every RF_i (`AuditBook::unraced_refund_ids`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFunding {
    pub funding_tx: Transaction,
}

impl PeerMessage for AuditFunding {
    const KIND: &'static str = "audit_funding";
}

/// Renter → farmer, once TX_A has the farmer's confirmations: the renter's toss nonce, in
/// the clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditToss {
    #[serde(with = "hex::serde")]
    pub renter_nonce: [u8; 32],
}

impl PeerMessage for AuditToss {
    const KIND: &'static str = "audit_toss";
}

/// Farmer → renter: the committed nonce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditTossReveal {
    #[serde(with = "hex::serde")]
    pub farmer_nonce: [u8; 32],
}

impl PeerMessage for AuditTossReveal {
    const KIND: &'static str = "audit_toss_reveal";
}

/// Renter → farmer: the tossed half opened. The reply is the farmer's signatures on every
/// RF_ij (`AuditBook::after_candidate_refund_ids`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditOpenings {
    pub openings: Vec<Opening>,
}

impl PeerMessage for AuditOpenings {
    const KIND: &'static str = "audit_openings";
}

/// Farmer → renter: its signatures on the O inputs of a list of refunds (RF_i after
/// [`AuditFunding`], RF_ij after [`AuditOpenings`]), in that list's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRefundSignatures {
    pub signatures: Vec<Vec<ecdsa::Signature>>,
}

impl PeerMessage for AuditRefundSignatures {
    const KIND: &'static str = "audit_refund_signatures";
}

/// Renter → farmer: asks for the farmer's signature on swap step `step`, carrying the
/// renter's signature on step `step − 1` (none for step 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSwap {
    pub step: u32,
    pub renter_signature: Option<ecdsa::Signature>,
}

impl PeerMessage for AuditSwap {
    const KIND: &'static str = "audit_swap";
}

/// Farmer → renter: its signature on `step`, or none once every candidate is signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSwapReply {
    pub step: u32,
    pub farmer_signature: Option<ecdsa::Signature>,
}

impl PeerMessage for AuditSwapReply {
    const KIND: &'static str = "audit_swap_reply";
}
