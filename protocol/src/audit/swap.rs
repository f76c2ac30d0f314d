//! The candidate signature swap (PROTOCOL.md 5, seed "keep swapping signatures"): one candidate at a time, farmer first, each received signature verified before the next is sent.
//!
//! The farmer's refund signatures (see [`super::book`]) are exchanged before TX_A is
//! funded, so a party that stops anywhere in this swap leaves the other safe: the renter
//! holds RF_0, which returns every output after T_0 + W, and the farmer holds every
//! candidate it got the renter's signature on (each one claimable if it confirms).
//!
//! Both sides are plain state machines; the plugin persists them between messages.

use bitcoin::secp256k1::ecdsa;
use bitcoin::Transaction;
use serde::{Deserialize, Serialize};

use super::book::AuditBook;
use super::transactions::{AuditTxError, Signer, SigningKeys};

/// Why a swap step was refused. A refused step changes no state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwapError {
    #[error("expected the signature of swap step {expected}, got step {got}")]
    OutOfOrder { expected: usize, got: usize },
    #[error("the swap is complete")]
    Complete,
    #[error("waiting for the other side's signature on step {0}")]
    Waiting(usize),
    #[error(transparent)]
    Transaction(#[from] AuditTxError),
}

/// One candidate's signatures, once both are known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwappedSignatures {
    pub renter: ecdsa::Signature,
    pub farmer: ecdsa::Signature,
}

/// The renter's side: receives the farmer's signature on step k, answers with its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenterSwap {
    /// Completed steps, in [`AuditBook::swap_order`] order.
    pub done: Vec<SwappedSignatures>,
}

/// The farmer's side: sends its signature on step k, waits for the renter's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FarmerSwap {
    pub done: Vec<SwappedSignatures>,
    /// The farmer's signature on the step in flight.
    pub in_flight: Option<ecdsa::Signature>,
}

fn step_signature(
    book: &AuditBook,
    step: usize,
    signer: Signer,
    keys: &SigningKeys,
) -> Result<ecdsa::Signature, SwapError> {
    let (audit, j) = *book.swap_order().get(step).ok_or(SwapError::Complete)?;
    let sigs = book.terms.sign(&book.candidate(audit, j)?, signer, keys)?;
    Ok(sigs[0])
}

fn check_step_signature(
    book: &AuditBook,
    step: usize,
    signer: Signer,
    signature: &ecdsa::Signature,
) -> Result<(), SwapError> {
    let (audit, j) = *book.swap_order().get(step).ok_or(SwapError::Complete)?;
    book.terms
        .verify(&book.candidate(audit, j)?, signer, &[*signature])?;
    Ok(())
}

fn signed_candidates(book: &AuditBook, done: &[SwappedSignatures]) -> Vec<SignedCandidate> {
    book.swap_order()
        .into_iter()
        .zip(done)
        .filter_map(|((audit, j), sigs)| {
            let atx = book.candidate(audit, j).ok()?;
            let tx = book
                .terms
                .finalize(&atx, &[sigs.renter], &[sigs.farmer])
                .ok()?;
            Some(SignedCandidate { audit, j, tx })
        })
        .collect()
}

/// A fully signed candidate A_ij.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCandidate {
    pub audit: u32,
    pub j: u32,
    pub tx: Transaction,
}

impl RenterSwap {
    pub fn new() -> Self {
        RenterSwap { done: Vec::new() }
    }

    /// The step whose farmer signature is expected next, or None when complete.
    pub fn expecting(&self, book: &AuditBook) -> Option<usize> {
        (self.done.len() < book.swap_order().len()).then_some(self.done.len())
    }

    /// Verifies the farmer's signature on `step` and returns the renter's signature on the
    /// same candidate, recording both.
    pub fn receive(
        &mut self,
        book: &AuditBook,
        keys: &SigningKeys,
        step: usize,
        farmer: ecdsa::Signature,
    ) -> Result<ecdsa::Signature, SwapError> {
        let expected = self.expecting(book).ok_or(SwapError::Complete)?;
        if step != expected {
            return Err(SwapError::OutOfOrder {
                expected,
                got: step,
            });
        }
        check_step_signature(book, step, Signer::Farmer, &farmer)?;
        let renter = step_signature(book, step, Signer::Renter, keys)?;
        self.done.push(SwappedSignatures { renter, farmer });
        Ok(renter)
    }

    /// Every candidate both signatures are known for.
    pub fn signed_candidates(&self, book: &AuditBook) -> Vec<SignedCandidate> {
        signed_candidates(book, &self.done)
    }
}

impl Default for RenterSwap {
    fn default() -> Self {
        Self::new()
    }
}

impl FarmerSwap {
    pub fn new() -> Self {
        FarmerSwap {
            done: Vec::new(),
            in_flight: None,
        }
    }

    /// The farmer's signature on the next step (the same one again until the renter's
    /// answer arrives, so a lost message can be resent).
    pub fn next(
        &mut self,
        book: &AuditBook,
        keys: &SigningKeys,
    ) -> Result<(usize, ecdsa::Signature), SwapError> {
        let step = self.done.len();
        if step >= book.swap_order().len() {
            return Err(SwapError::Complete);
        }
        let signature = match self.in_flight {
            Some(signature) => signature,
            None => step_signature(book, step, Signer::Farmer, keys)?,
        };
        self.in_flight = Some(signature);
        Ok((step, signature))
    }

    /// Verifies the renter's signature on the step in flight and records it.
    pub fn receive(
        &mut self,
        book: &AuditBook,
        step: usize,
        renter: ecdsa::Signature,
    ) -> Result<(), SwapError> {
        let expected = self.done.len();
        let farmer = self.in_flight.ok_or(SwapError::Waiting(expected))?;
        if step != expected {
            return Err(SwapError::OutOfOrder {
                expected,
                got: step,
            });
        }
        check_step_signature(book, step, Signer::Renter, &renter)?;
        self.done.push(SwappedSignatures { renter, farmer });
        self.in_flight = None;
        Ok(())
    }

    /// Whether every candidate is signed by both.
    pub fn complete(&self, book: &AuditBook) -> bool {
        self.done.len() == book.swap_order().len()
    }

    /// Every candidate both signatures are known for.
    pub fn signed_candidates(&self, book: &AuditBook) -> Vec<SignedCandidate> {
        signed_candidates(book, &self.done)
    }
}

impl Default for FarmerSwap {
    fn default() -> Self {
        Self::new()
    }
}
