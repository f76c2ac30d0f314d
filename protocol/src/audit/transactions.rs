//! The audit contract's transactions (PROTOCOL.md 5): TX_A's outputs O_i, candidates A_ij, the farmer's claim, the renter's reclaim and the refunds RF.
//!
//! Scripts, all P2WSH and all sanity-checked by miniscript:
//!
//! * O_i:   `wsh(or_d(multi(2,Ra,Fa),and_v(v:pk(Ra),after(T_i+W))))` (PROTOCOL.md verbatim)
//! * A_ij:0 compiled by miniscript from the policy
//!   `or(and(pk(Fc),hash160(H_ij)),and(pk(Rc),older(W)))`, which gives
//!   `wsh(andor(pk(Fc),hash160(H_ij),and_v(v:pk(Rc),older(W))))`. PROTOCOL.md writes this
//!   output as `or_d(and_v(v:pk(Fc),hash160(H)),…)`, but that is not well-typed miniscript
//!   (or_d needs a dissatisfiable left child, and `and_v` never is); the compiled form has
//!   the same two spending paths.
//!
//! T_i = T_0 + i·P for audit i = 0..N−1, with the claim window W < P, so a refund at
//! T_i + W is mined before any candidate of audit i+1 can be.
//!
//! Transactions (all version 2, SIGHASH_ALL, every input a P2WSH spend so no txid can be
//! malleated):
//! * A_ij: O_i → A_ij:0 (A − candidate fee), nLockTime T_i.
//! * claim: A_ij:0 by Fc + x, to the farmer.
//! * reclaim: A_ij:0 by Rc after older(W), to the renter.
//! * RF_i ("nobody raced audit i"): O_i … O_{N−1}, nLockTime T_i + W, to the renter.
//! * RF_ij ("candidate j of audit i confirmed and went unclaimed"): A_ij:0 after older(W)
//!   plus O_{i+1} … O_{N−1}, nLockTime T_i + W, to the renter. This is the seed's "double
//!   spend this audit transaction and all future audit outputs": spending A_ij:0 makes it
//!   valid only while the farmer has not claimed, so an honest farmer's later payments
//!   cannot be refunded away. RF_i as the issue words it (spending O_i) cannot be mined
//!   once a candidate has spent O_i, hence the two shapes.
//!
//! The farmer signs the O_k inputs of every RF before TX_A is funded; the renter needs no
//! one's signature for its reclaim.
//!
//! **Fee bumping.** With a refund anchor (a script of the renter's own watchtower, agreed in
//! the book), every RF and reclaim carries a second output of [`REFUND_ANCHOR_VALUE`] to it,
//! taken from the renter's refund: the tower spends it in a CPFP child whenever the refund
//! sits unconfirmed, with no one else's signature and while the plugin is down. Only the
//! tower's key spends the anchor, so neither the farmer nor a third party can hang a
//! descendant on a refund to pin it (an anyone-can-spend anchor could be pinned).

use std::collections::HashMap;

use bitcoin::absolute::LockTime;
use bitcoin::hashes::{hash160, Hash};
use bitcoin::secp256k1::{ecdsa, Message, PublicKey, SecretKey, SECP256K1};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::transaction::Version;
use bitcoin::{relative, Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxOut, Txid};
use miniscript::{Preimage32, Satisfier};
use serde::{Deserialize, Serialize};

use super::candidates::Lock;
use crate::contract::{
    bkey, fixed_sighash_all, miniscript_err, require_key, sanity_checked, unsigned_input,
    ContractError, KeyDescriptor,
};

/// Most audits one contract may have.
pub const MAX_AUDITS: u32 = 1000;
/// Heights at or above this are timestamps to nLockTime.
const LOCKTIME_THRESHOLD: u32 = 500_000_000;
/// Value of a refund's anchor output (not dust for P2WPKH, P2WSH or P2TR).
pub const REFUND_ANCHOR_VALUE: Amount = Amount::from_sat(330);

/// Where a refund or reclaim pays: the renter's script, and the optional anchor of the
/// renter's tower (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefundPayout<'a> {
    pub destination: &'a ScriptBuf,
    pub anchor: Option<&'a ScriptBuf>,
}

impl<'a> RefundPayout<'a> {
    /// Everything to `destination`, no anchor.
    pub fn plain(destination: &'a ScriptBuf) -> Self {
        RefundPayout {
            destination,
            anchor: None,
        }
    }

    /// The outputs carrying `value` (after the fee): the renter's, then the anchor's.
    fn outputs(&self, value: Amount) -> Result<Vec<TxOut>, AuditTxError> {
        let anchor_value = self.anchor.map_or(Amount::ZERO, |_| REFUND_ANCHOR_VALUE);
        let renter = value
            .checked_sub(anchor_value)
            .filter(|v| *v >= self.destination.minimal_non_dust())
            .ok_or(AuditTxError::BadTerms("the refund fee leaves dust"))?;
        let mut outputs = vec![TxOut {
            value: renter,
            script_pubkey: self.destination.clone(),
        }];
        outputs.extend(self.anchor.map(|script| TxOut {
            value: REFUND_ANCHOR_VALUE,
            script_pubkey: script.clone(),
        }));
        Ok(outputs)
    }
}

/// Whether `script` may be a refund anchor: a P2WPKH, P2WSH or P2TR output.
pub fn is_valid_anchor(script: &ScriptBuf) -> bool {
    script.is_p2wpkh() || script.is_p2wsh() || script.is_p2tr()
}

/// Public terms of one audit contract, agreed during the setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditTerms {
    pub contract_id: [u8; 32],
    /// Ra: the renter's key on TX_A's outputs.
    pub renter_funding_key: PublicKey,
    /// Fa: the farmer's key on TX_A's outputs.
    pub farmer_funding_key: PublicKey,
    /// Rc: the renter's key on the candidates' reclaim path.
    pub renter_claim_key: PublicKey,
    /// Fc: the farmer's key on the candidates' claim path.
    pub farmer_claim_key: PublicKey,
    /// T_0: the height of the first audit.
    pub first_audit_height: u32,
    /// P: blocks between audits.
    pub period: u32,
    /// W: blocks the farmer has to claim a confirmed candidate.
    pub claim_window: u16,
    /// N: number of audits (outputs of TX_A).
    pub audits: u32,
    /// A: the value of each O_i, paid to the farmer per passed audit.
    pub amount: Amount,
    /// Fee of each candidate A_ij.
    pub candidate_fee: Amount,
    /// Fee of each refund RF.
    pub refund_fee: Amount,
}

/// Why audit terms, a transaction or a signature were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditTxError {
    #[error("audit terms: {0}")]
    BadTerms(&'static str),
    #[error("there is no audit {0}")]
    NoSuchAudit(u32),
    #[error(transparent)]
    Contract(#[from] ContractError),
    #[error("TX_A output {0} does not pay O_{0}")]
    FundingOutputMismatch(u32),
    #[error("TX_A input {0} is not a segwit spend, so TX_A's txid could be malleated")]
    NonSegwitFunding(usize),
    #[error("expected {expected} signatures, got {got}")]
    SignatureCount { expected: usize, got: usize },
    #[error("signature for input {0} does not verify")]
    BadSignature(usize),
    #[error("value overflow")]
    Overflow,
}

/// What one input of an audit transaction spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Spent {
    /// O_i of TX_A.
    Funding(u32),
    /// Output 0 of a candidate with this lock.
    Candidate(#[serde(with = "hex::serde")] Lock),
}

/// An unsigned audit transaction with what each of its inputs spends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditTx {
    pub tx: Transaction,
    pub spends: Vec<Spent>,
}

/// Who signs: the farmer signs only O inputs; the renter signs O inputs with Ra and
/// candidate inputs with Rc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    Renter,
    Farmer,
}

impl AuditTerms {
    /// Checks the terms for internal consistency.
    pub fn check(&self) -> Result<(), AuditTxError> {
        let bad = |why| Err(AuditTxError::BadTerms(why));
        if self.audits == 0 || self.audits > MAX_AUDITS {
            return bad("the number of audits must be between 1 and 1000");
        }
        if self.claim_window == 0 || u32::from(self.claim_window) >= self.period {
            return bad("the claim window must be at least 1 block and shorter than the period");
        }
        let last = self.checked_refund_height(self.audits - 1);
        if self.first_audit_height == 0 || last.is_none_or(|h| h >= LOCKTIME_THRESHOLD) {
            return bad("audit heights must be block heights");
        }
        let value = self.candidate_value()?;
        if value < Amount::from_sat(1_000) || self.refund_fee >= self.amount {
            return bad("fees leave too little of each audit amount");
        }
        Ok(())
    }

    fn checked_refund_height(&self, audit: u32) -> Option<u32> {
        self.period
            .checked_mul(audit)?
            .checked_add(self.first_audit_height)?
            .checked_add(u32::from(self.claim_window))
    }

    fn require_audit(&self, audit: u32) -> Result<(), AuditTxError> {
        if audit < self.audits {
            Ok(())
        } else {
            Err(AuditTxError::NoSuchAudit(audit))
        }
    }

    /// T_i: the first height at which audit i's candidates may be mined is T_i + 1; they
    /// enter the mempool once the tip is at T_i.
    pub fn audit_height(&self, audit: u32) -> u32 {
        self.first_audit_height + audit * self.period
    }

    /// T_i + W: nLockTime of audit i's refunds.
    pub fn refund_height(&self, audit: u32) -> u32 {
        self.audit_height(audit) + u32::from(self.claim_window)
    }

    /// A − candidate fee: the value of every candidate's output.
    pub fn candidate_value(&self) -> Result<Amount, AuditTxError> {
        self.amount
            .checked_sub(self.candidate_fee)
            .ok_or(AuditTxError::BadTerms(
                "the candidate fee exceeds the audit amount",
            ))
    }

    /// O_i's descriptor.
    pub fn funding_descriptor(&self, audit: u32) -> Result<KeyDescriptor, AuditTxError> {
        self.require_audit(audit)?;
        let (ra, fa) = (
            bkey(&self.renter_funding_key),
            bkey(&self.farmer_funding_key),
        );
        let after = self.refund_height(audit);
        Ok(sanity_checked(&format!(
            "wsh(or_d(multi(2,{ra},{fa}),and_v(v:pk({ra}),after({after}))))"
        ))?)
    }

    /// A candidate's output descriptor for `lock` (see the module doc for its derivation).
    pub fn candidate_descriptor(&self, lock: &Lock) -> Result<KeyDescriptor, AuditTxError> {
        let (fc, rc) = (bkey(&self.farmer_claim_key), bkey(&self.renter_claim_key));
        let h = hash160::Hash::from_byte_array(*lock);
        let w = self.claim_window;
        Ok(sanity_checked(&format!(
            "wsh(andor(pk({fc}),hash160({h}),and_v(v:pk({rc}),older({w}))))"
        ))?)
    }

    /// The outputs TX_A must carry at indices 0..N (the renter's wallet adds inputs and
    /// change after them).
    pub fn funding_outputs(&self) -> Result<Vec<TxOut>, AuditTxError> {
        (0..self.audits)
            .map(|i| {
                Ok(TxOut {
                    value: self.amount,
                    script_pubkey: self.funding_descriptor(i)?.script_pubkey(),
                })
            })
            .collect()
    }

    /// The farmer's check of TX_A before it signs anything that spends it: outputs 0..N are
    /// O_0..O_{N−1}, and no input carries a scriptSig (the farmer sees TX_A unsigned; a
    /// scriptSig there would be a legacy or wrapped spend whose signature could change the
    /// txid). A malleated TX_A would only hurt the renter, whose refunds would name a txid
    /// that never confirms; the plugin's renter funds TX_A from native segwit coins.
    pub fn check_funding(&self, tx_a: &Transaction) -> Result<(), AuditTxError> {
        for (i, expected) in self.funding_outputs()?.iter().enumerate() {
            if tx_a.output.get(i) != Some(expected) {
                return Err(AuditTxError::FundingOutputMismatch(i as u32));
            }
        }
        match tx_a
            .input
            .iter()
            .position(|input| !input.script_sig.is_empty())
        {
            Some(index) => Err(AuditTxError::NonSegwitFunding(index)),
            None => Ok(()),
        }
    }

    fn funding_outpoint(&self, funding_txid: Txid, audit: u32) -> OutPoint {
        OutPoint::new(funding_txid, audit)
    }

    /// A_ij: spends O_i, nLockTime T_i, pays the candidate script of `lock`.
    pub fn unsigned_candidate(
        &self,
        funding_txid: Txid,
        audit: u32,
        lock: &Lock,
    ) -> Result<AuditTx, AuditTxError> {
        self.require_audit(audit)?;
        let tx = Transaction {
            version: Version::TWO,
            lock_time: height_lock(self.audit_height(audit))?,
            input: vec![unsigned_input(
                self.funding_outpoint(funding_txid, audit),
                Sequence::ENABLE_LOCKTIME_NO_RBF,
            )],
            output: vec![TxOut {
                value: self.candidate_value()?,
                script_pubkey: self.candidate_descriptor(lock)?.script_pubkey(),
            }],
        };
        Ok(AuditTx {
            tx,
            spends: vec![Spent::Funding(audit)],
        })
    }

    /// RF_i: O_i … O_{N−1} back to the renter once T_i + W has passed and no candidate of
    /// audit i spent O_i.
    pub fn unsigned_refund_unraced(
        &self,
        funding_txid: Txid,
        audit: u32,
        payout: RefundPayout,
    ) -> Result<AuditTx, AuditTxError> {
        self.require_audit(audit)?;
        let spends: Vec<Spent> = (audit..self.audits).map(Spent::Funding).collect();
        let inputs = spends
            .iter()
            .map(|s| self.refund_input(funding_txid, funding_txid, s))
            .collect();
        self.refund(audit, inputs, spends, payout)
    }

    /// RF_ij: the unclaimed output of candidate `candidate_txid` (lock `lock`) of audit i
    /// plus O_{i+1} … O_{N−1}, back to the renter.
    pub fn unsigned_refund_after_candidate(
        &self,
        funding_txid: Txid,
        audit: u32,
        candidate_txid: Txid,
        lock: &Lock,
        payout: RefundPayout,
    ) -> Result<AuditTx, AuditTxError> {
        self.require_audit(audit)?;
        let mut spends = vec![Spent::Candidate(*lock)];
        spends.extend((audit + 1..self.audits).map(Spent::Funding));
        let inputs = spends
            .iter()
            .map(|s| self.refund_input(funding_txid, candidate_txid, s))
            .collect();
        self.refund(audit, inputs, spends, payout)
    }

    /// A refund input: a candidate's output after older(W), or an O_k through the
    /// multisig (the refund's nLockTime does the waiting).
    fn refund_input(
        &self,
        funding_txid: Txid,
        candidate_txid: Txid,
        spent: &Spent,
    ) -> bitcoin::TxIn {
        match spent {
            Spent::Candidate(_) => {
                unsigned_input(OutPoint::new(candidate_txid, 0), self.claim_sequence())
            }
            Spent::Funding(k) => unsigned_input(
                self.funding_outpoint(funding_txid, *k),
                Sequence::ENABLE_LOCKTIME_NO_RBF,
            ),
        }
    }

    fn refund(
        &self,
        audit: u32,
        input: Vec<bitcoin::TxIn>,
        spends: Vec<Spent>,
        payout: RefundPayout,
    ) -> Result<AuditTx, AuditTxError> {
        let total = self.spent_total(&spends)?;
        let value = total
            .checked_sub(self.refund_fee)
            .ok_or(AuditTxError::BadTerms("the refund fee leaves dust"))?;
        let tx = Transaction {
            version: Version::TWO,
            lock_time: height_lock(self.refund_height(audit))?,
            input,
            output: payout.outputs(value)?,
        };
        Ok(AuditTx { tx, spends })
    }

    fn spent_total(&self, spends: &[Spent]) -> Result<Amount, AuditTxError> {
        spends.iter().try_fold(Amount::ZERO, |sum, spent| {
            sum.checked_add(self.spent_value(spent)?)
                .ok_or(AuditTxError::Overflow)
        })
    }

    fn spent_value(&self, spent: &Spent) -> Result<Amount, AuditTxError> {
        match spent {
            Spent::Funding(_) => Ok(self.amount),
            Spent::Candidate(_) => self.candidate_value(),
        }
    }

    fn claim_sequence(&self) -> Sequence {
        Sequence::from_height(self.claim_window)
    }

    /// The descriptor of the output `spent` names.
    pub fn spent_descriptor(&self, spent: &Spent) -> Result<KeyDescriptor, AuditTxError> {
        match spent {
            Spent::Funding(audit) => self.funding_descriptor(*audit),
            Spent::Candidate(lock) => self.candidate_descriptor(lock),
        }
    }

    /// The BIP143 sighash of input `index` of `atx`.
    pub fn sighash(&self, atx: &AuditTx, index: usize) -> Result<Message, AuditTxError> {
        let spent = atx.spends.get(index).ok_or(AuditTxError::SignatureCount {
            expected: atx.spends.len(),
            got: index,
        })?;
        let script = self
            .spent_descriptor(spent)?
            .explicit_script()
            .map_err(miniscript_err)?;
        let hash = SighashCache::new(&atx.tx)
            .p2wsh_signature_hash(
                index,
                &script,
                self.spent_value(spent)?,
                EcdsaSighashType::All,
            )
            .map_err(|_| ContractError::Sighash)?;
        Ok(Message::from_digest(hash.to_byte_array()))
    }

    /// The indices of the inputs `signer` signs in `atx`.
    pub fn signed_inputs(&self, atx: &AuditTx, signer: Signer) -> Vec<usize> {
        atx.spends
            .iter()
            .enumerate()
            .filter(|(_, spent)| signer == Signer::Renter || matches!(spent, Spent::Funding(_)))
            .map(|(i, _)| i)
            .collect()
    }

    /// `signer`'s signatures on its inputs of `atx`, in input order. The farmer passes its
    /// funding secret (Fa); the renter passes Ra and Rc.
    pub fn sign(
        &self,
        atx: &AuditTx,
        signer: Signer,
        keys: &SigningKeys,
    ) -> Result<Vec<ecdsa::Signature>, AuditTxError> {
        self.signed_inputs(atx, signer)
            .into_iter()
            .map(|index| {
                let secret = keys.for_spent(&atx.spends[index], self, signer)?;
                Ok(SECP256K1.sign_ecdsa(&self.sighash(atx, index)?, secret))
            })
            .collect()
    }

    /// Checks `signer`'s signatures on its inputs of `atx`.
    pub fn verify(
        &self,
        atx: &AuditTx,
        signer: Signer,
        signatures: &[ecdsa::Signature],
    ) -> Result<(), AuditTxError> {
        let inputs = self.signed_inputs(atx, signer);
        if inputs.len() != signatures.len() {
            return Err(AuditTxError::SignatureCount {
                expected: inputs.len(),
                got: signatures.len(),
            });
        }
        for (index, signature) in inputs.into_iter().zip(signatures) {
            let key = self.signer_key(&atx.spends[index], signer);
            SECP256K1
                .verify_ecdsa(&self.sighash(atx, index)?, signature, &key)
                .map_err(|_| AuditTxError::BadSignature(index))?;
        }
        Ok(())
    }

    fn signer_key(&self, spent: &Spent, signer: Signer) -> PublicKey {
        match (spent, signer) {
            (Spent::Funding(_), Signer::Farmer) => self.farmer_funding_key,
            (Spent::Candidate(_), Signer::Farmer) => self.farmer_claim_key,
            (Spent::Funding(_), Signer::Renter) => self.renter_funding_key,
            (Spent::Candidate(_), Signer::Renter) => self.renter_claim_key,
        }
    }

    /// Puts both parties' signatures into `atx`'s witnesses (each already verified by the
    /// caller), choosing each input's spending path with miniscript.
    pub fn finalize(
        &self,
        atx: &AuditTx,
        renter: &[ecdsa::Signature],
        farmer: &[ecdsa::Signature],
    ) -> Result<Transaction, AuditTxError> {
        let mut signatures: Vec<HashMap<bitcoin::PublicKey, bitcoin::ecdsa::Signature>> =
            vec![HashMap::new(); atx.spends.len()];
        for (signer, sigs) in [(Signer::Renter, renter), (Signer::Farmer, farmer)] {
            let inputs = self.signed_inputs(atx, signer);
            if inputs.len() != sigs.len() {
                return Err(AuditTxError::SignatureCount {
                    expected: inputs.len(),
                    got: sigs.len(),
                });
            }
            for (index, sig) in inputs.into_iter().zip(sigs) {
                let key = bkey(&self.signer_key(&atx.spends[index], signer));
                signatures[index].insert(key, fixed_sighash_all(*sig));
            }
        }
        let mut tx = atx.tx.clone();
        for (index, spent) in atx.spends.iter().enumerate() {
            let satisfier = WitnessData {
                signatures: std::mem::take(&mut signatures[index]),
                preimage: None,
                lock_time: tx.lock_time,
                sequence: tx.input[index].sequence,
            };
            self.spent_descriptor(spent)?
                .satisfy(&mut tx.input[index], &satisfier)
                .map_err(miniscript_err)?;
        }
        Ok(tx)
    }

    /// The farmer's claim of a confirmed candidate with x, fully signed by Fc.
    pub fn claim(
        &self,
        candidate_txid: Txid,
        lock: &Lock,
        preimage: &[u8; 32],
        farmer_claim_secret: &SecretKey,
        destination: &ScriptBuf,
        fee: Amount,
    ) -> Result<Transaction, AuditTxError> {
        require_key(farmer_claim_secret, &self.farmer_claim_key)?;
        let input = unsigned_input(
            OutPoint::new(candidate_txid, 0),
            Sequence::ENABLE_RBF_NO_LOCKTIME,
        );
        self.spend_candidate(
            input,
            LockTime::ZERO,
            lock,
            farmer_claim_secret,
            Some(*preimage),
            RefundPayout::plain(destination),
            fee,
        )
    }

    /// The renter's reclaim of an unclaimed candidate after older(W), fully signed by Rc.
    pub fn reclaim(
        &self,
        candidate_txid: Txid,
        lock: &Lock,
        renter_claim_secret: &SecretKey,
        destination: &ScriptBuf,
        fee: Amount,
    ) -> Result<Transaction, AuditTxError> {
        let payout = RefundPayout::plain(destination);
        self.reclaim_to(candidate_txid, lock, renter_claim_secret, payout, fee)
    }

    /// The reclaim paying `payout` (with the tower's anchor, if it has one).
    pub fn reclaim_to(
        &self,
        candidate_txid: Txid,
        lock: &Lock,
        renter_claim_secret: &SecretKey,
        payout: RefundPayout,
        fee: Amount,
    ) -> Result<Transaction, AuditTxError> {
        require_key(renter_claim_secret, &self.renter_claim_key)?;
        let input = unsigned_input(OutPoint::new(candidate_txid, 0), self.claim_sequence());
        self.spend_candidate(
            input,
            LockTime::ZERO,
            lock,
            renter_claim_secret,
            None,
            payout,
            fee,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn spend_candidate(
        &self,
        input: bitcoin::TxIn,
        lock_time: LockTime,
        lock: &Lock,
        secret: &SecretKey,
        preimage: Option<[u8; 32]>,
        payout: RefundPayout,
        fee: Amount,
    ) -> Result<Transaction, AuditTxError> {
        let value = self
            .candidate_value()?
            .checked_sub(fee)
            .ok_or(AuditTxError::BadTerms("the fee leaves dust"))?;
        let output = payout
            .outputs(value)
            .map_err(|_| AuditTxError::BadTerms("the fee leaves dust"))?;
        let atx = AuditTx {
            tx: Transaction {
                version: Version::TWO,
                lock_time,
                input: vec![input],
                output,
            },
            spends: vec![Spent::Candidate(*lock)],
        };
        let signature = SECP256K1.sign_ecdsa(&self.sighash(&atx, 0)?, secret);
        let satisfier = WitnessData {
            signatures: HashMap::from([(
                bkey(&secret.public_key(SECP256K1)),
                fixed_sighash_all(signature),
            )]),
            preimage,
            lock_time,
            sequence: atx.tx.input[0].sequence,
        };
        let mut tx = atx.tx;
        self.candidate_descriptor(lock)?
            .satisfy(&mut tx.input[0], &satisfier)
            .map_err(miniscript_err)?;
        Ok(tx)
    }
}

fn height_lock(height: u32) -> Result<LockTime, AuditTxError> {
    LockTime::from_height(height)
        .map_err(|_| AuditTxError::BadTerms("audit heights must be block heights"))
}

/// The secrets a party signs audit transactions with.
pub struct SigningKeys {
    /// Ra or Fa.
    pub funding: SecretKey,
    /// Rc (the renter's; the farmer signs no candidate input during the swap).
    pub claim: Option<SecretKey>,
}

impl SigningKeys {
    fn for_spent(
        &self,
        spent: &Spent,
        terms: &AuditTerms,
        signer: Signer,
    ) -> Result<&SecretKey, AuditTxError> {
        let secret = match spent {
            Spent::Funding(_) => &self.funding,
            Spent::Candidate(_) => self.claim.as_ref().ok_or(ContractError::WrongKey)?,
        };
        require_key(secret, &terms.signer_key(spent, signer))?;
        Ok(secret)
    }
}

/// Signatures, a preimage and the spending transaction's timelocks, for miniscript's
/// satisfier.
struct WitnessData {
    signatures: HashMap<bitcoin::PublicKey, bitcoin::ecdsa::Signature>,
    preimage: Option<[u8; 32]>,
    lock_time: LockTime,
    sequence: Sequence,
}

impl Satisfier<bitcoin::PublicKey> for WitnessData {
    fn lookup_ecdsa_sig(&self, key: &bitcoin::PublicKey) -> Option<bitcoin::ecdsa::Signature> {
        self.signatures.get(key).copied()
    }

    fn lookup_hash160(&self, hash: &hash160::Hash) -> Option<Preimage32> {
        self.preimage.filter(|x| hash160::Hash::hash(x) == *hash)
    }

    fn check_older(&self, older: relative::LockTime) -> bool {
        Satisfier::<bitcoin::PublicKey>::check_older(&self.sequence, older)
    }

    fn check_after(&self, after: LockTime) -> bool {
        Satisfier::<bitcoin::PublicKey>::check_after(&self.lock_time, after)
    }
}
