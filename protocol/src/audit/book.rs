//! The audit book: the public agreement after the coin toss (terms, TX_A's txid, the refund address and each audit's double-spend set), and every transaction it implies.
//!
//! Candidate j of audit i is the j-th kept lock of audit i. Refunds are listed as
//! [`RefundId`]s: first RF_i for every audit, then RF_ij for every audit and candidate.

use bitcoin::secp256k1::ecdsa;
use bitcoin::{ScriptBuf, Txid};
use serde::{Deserialize, Serialize};

use super::candidates::Lock;
use super::transactions::{
    is_valid_anchor, AuditTerms, AuditTx, AuditTxError, RefundPayout, Signer, SigningKeys,
};

/// Most candidates one audit may keep (m).
pub const MAX_KEPT_PER_AUDIT: usize = 64;

/// Everything both parties agree on before TX_A is broadcast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditBook {
    pub terms: AuditTerms,
    pub funding_txid: Txid,
    /// The renter's refund script.
    pub renter_destination: ScriptBuf,
    /// Per audit, the m locks of its double-spend set.
    pub kept_locks: Vec<Vec<KeptLock>>,
    /// The renter's tower's script: every refund pays it a CPFP anchor (absent: no anchor,
    /// the refunds' fees cannot be bumped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_anchor: Option<ScriptBuf>,
}

/// A lock of the double-spend set (hex in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptLock(#[serde(with = "hex::serde")] pub Lock);

/// One refund of the book.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefundId {
    /// RF_i: no candidate of audit i confirmed.
    Unraced(u32),
    /// RF_ij: candidate j of audit i confirmed and went unclaimed.
    AfterCandidate(u32, u32),
}

impl AuditBook {
    /// Checks the terms and that every audit keeps the same number (1..=64) of locks.
    pub fn check(&self) -> Result<(), AuditTxError> {
        self.terms.check()?;
        if self.kept_locks.len() != self.terms.audits as usize {
            return Err(AuditTxError::BadTerms("one set of locks per audit"));
        }
        let m = self.kept_per_audit();
        if m == 0 || m > MAX_KEPT_PER_AUDIT || self.kept_locks.iter().any(|a| a.len() != m) {
            return Err(AuditTxError::BadTerms(
                "every audit must keep the same number (1 to 64) of candidates",
            ));
        }
        if self
            .refund_anchor
            .as_ref()
            .is_some_and(|a| !is_valid_anchor(a))
        {
            return Err(AuditTxError::BadTerms(
                "the refund anchor must be a P2WPKH, P2WSH or P2TR script",
            ));
        }
        // The smallest refund (the last audit's candidate output alone) must leave the
        // renter more than dust after its fee and the anchor.
        self.refund(RefundId::AfterCandidate(self.terms.audits - 1, 0))?;
        Ok(())
    }

    /// Where every refund and reclaim of this book pays.
    pub fn refund_payout(&self) -> RefundPayout<'_> {
        RefundPayout {
            destination: &self.renter_destination,
            anchor: self.refund_anchor.as_ref(),
        }
    }

    /// m: candidates kept per audit.
    pub fn kept_per_audit(&self) -> usize {
        self.kept_locks.first().map_or(0, Vec::len)
    }

    /// The lock of candidate j of audit i.
    pub fn lock(&self, audit: u32, j: u32) -> Result<Lock, AuditTxError> {
        self.kept_locks
            .get(audit as usize)
            .and_then(|a| a.get(j as usize))
            .map(|k| k.0)
            .ok_or(AuditTxError::NoSuchAudit(audit))
    }

    /// A_ij, unsigned.
    pub fn candidate(&self, audit: u32, j: u32) -> Result<AuditTx, AuditTxError> {
        self.terms
            .unsigned_candidate(self.funding_txid, audit, &self.lock(audit, j)?)
    }

    /// The refund `id`, unsigned.
    pub fn refund(&self, id: RefundId) -> Result<AuditTx, AuditTxError> {
        match id {
            RefundId::Unraced(audit) => {
                self.terms
                    .unsigned_refund_unraced(self.funding_txid, audit, self.refund_payout())
            }
            RefundId::AfterCandidate(audit, j) => {
                let candidate = self.candidate(audit, j)?;
                self.terms.unsigned_refund_after_candidate(
                    self.funding_txid,
                    audit,
                    candidate.tx.compute_txid(),
                    &self.lock(audit, j)?,
                    self.refund_payout(),
                )
            }
        }
    }

    /// The renter's reclaim of candidate j of audit i after older(W), signed with Rc and
    /// paying [`Self::refund_payout`].
    pub fn reclaim(
        &self,
        audit: u32,
        j: u32,
        renter_claim_secret: &bitcoin::secp256k1::SecretKey,
        fee: bitcoin::Amount,
    ) -> Result<bitcoin::Transaction, AuditTxError> {
        let candidate = self.candidate(audit, j)?.tx.compute_txid();
        let lock = self.lock(audit, j)?;
        let payout = self.refund_payout();
        self.terms
            .reclaim_to(candidate, &lock, renter_claim_secret, payout, fee)
    }

    /// A book before the coin toss: TX_A is known, the double-spend sets are not. Only the
    /// RF_i ([`Self::unraced_refund_ids`]) can be built from it; the toss's kept locks
    /// complete it ([`Self::with_kept_locks`]).
    pub fn before_toss(
        terms: AuditTerms,
        funding_txid: Txid,
        renter_destination: ScriptBuf,
        refund_anchor: Option<ScriptBuf>,
    ) -> Self {
        Self {
            terms,
            funding_txid,
            renter_destination,
            kept_locks: Vec::new(),
            refund_anchor,
        }
    }

    /// This book with the coin toss's double-spend sets, checked.
    pub fn with_kept_locks(mut self, kept_locks: Vec<Vec<KeptLock>>) -> Result<Self, AuditTxError> {
        self.kept_locks = kept_locks;
        self.check()?;
        Ok(self)
    }

    /// Every refund, in signing order: [`Self::unraced_refund_ids`] then
    /// [`Self::after_candidate_refund_ids`].
    pub fn refund_ids(&self) -> Vec<RefundId> {
        let mut ids = self.unraced_refund_ids();
        ids.extend(self.after_candidate_refund_ids());
        ids
    }

    /// RF_i for every audit: signed before TX_A is broadcast.
    pub fn unraced_refund_ids(&self) -> Vec<RefundId> {
        (0..self.terms.audits).map(RefundId::Unraced).collect()
    }

    /// RF_ij for every audit and kept candidate: signed after the openings.
    pub fn after_candidate_refund_ids(&self) -> Vec<RefundId> {
        let m = self.kept_per_audit() as u32;
        (0..self.terms.audits)
            .flat_map(|i| (0..m).map(move |j| RefundId::AfterCandidate(i, j)))
            .collect()
    }

    /// Every candidate (audit, j), in swap order.
    pub fn swap_order(&self) -> Vec<(u32, u32)> {
        let m = self.kept_per_audit() as u32;
        (0..self.terms.audits)
            .flat_map(|i| (0..m).map(move |j| (i, j)))
            .collect()
    }

    /// The farmer's signatures on the O inputs of the refunds `ids`, in that order.
    pub fn farmer_refund_signatures(
        &self,
        ids: &[RefundId],
        farmer: &SigningKeys,
    ) -> Result<Vec<Vec<ecdsa::Signature>>, AuditTxError> {
        ids.iter()
            .map(|id| self.terms.sign(&self.refund(*id)?, Signer::Farmer, farmer))
            .collect()
    }

    /// The renter's check of the farmer's signatures on the refunds `ids`.
    pub fn verify_farmer_refund_signatures(
        &self,
        ids: &[RefundId],
        signatures: &[Vec<ecdsa::Signature>],
    ) -> Result<(), AuditTxError> {
        if ids.len() != signatures.len() {
            return Err(AuditTxError::SignatureCount {
                expected: ids.len(),
                got: signatures.len(),
            });
        }
        for (id, sigs) in ids.iter().zip(signatures) {
            self.terms
                .verify(&self.refund(*id)?, Signer::Farmer, sigs)?;
        }
        Ok(())
    }

    /// The refund `id`, fully signed: the renter signs now, the farmer's signatures come
    /// from the setup.
    pub fn signed_refund(
        &self,
        id: RefundId,
        renter: &SigningKeys,
        farmer_signatures: &[ecdsa::Signature],
    ) -> Result<bitcoin::Transaction, AuditTxError> {
        let atx = self.refund(id)?;
        let renter_signatures = self.terms.sign(&atx, Signer::Renter, renter)?;
        self.terms
            .finalize(&atx, &renter_signatures, farmer_signatures)
    }
}
