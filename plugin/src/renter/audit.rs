//! The renter's half of the audit contract (PROTOCOL.md 5): choosing salted candidates over the staged ciphertext, TX_A from the wallet with the farmer's stake, the farmer's RF_i signatures checked and handed to the watchtower before TX_A is broadcast, the wait for TX_A's confirmations, the coin toss, the openings and the RF_ij, the candidate swap, and the auditor's registration (the renter's own tower, or `--auditor-url`).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use bitcoin::secp256k1::SECP256K1;
use bitcoin::{Amount, Transaction, Witness};
use dstore_protocol::audit::book::{AuditBook, KeptLock, RefundId};
use dstore_protocol::audit::candidates::{self, Candidate, CandidateSecret};
use dstore_protocol::audit::coin_toss;
use dstore_protocol::audit::messages::{
    AuditAccepted, AuditFunding, AuditOpenings, AuditProposal, AuditRefundSignatures, AuditSwap,
    AuditSwapReply, AuditToss, AuditTossReveal, ProposedTerms,
};
use dstore_protocol::audit::opening;
use dstore_protocol::audit::stake::{check_stake_script, required_stake, stake_output};
use dstore_protocol::audit::swap::RenterSwap;
use dstore_protocol::audit::transactions::AuditTerms;
use dstore_protocol::audit::transactions::{SigningKeys, REFUND_ANCHOR_VALUE};
use dstore_protocol::keys::Role;
use dstore_protocol::merkle::{segment_count, SEGMENT_SIZE};
use dstore_protocol::watch::registration::AuditorSpec;
use dstore_protocol::watch::{Presigned, Registration, WatchRole};
use rand::RngCore;
use serde_json::{json, Value};

use super::download::check_farmer_lease;
use super::records::{AuditRequest, RentedAudit, RentedAuditPhase, RentedContract};
use super::{farmer_fault, internal, Renter, RenterError, QUICK_CALL};
use crate::farmer::error::NOT_CONFIRMED;
use crate::wire::PeerCallError;

/// Candidates kept per audit (m); the renter proposes 2m and the toss opens m.
pub const KEPT_PER_AUDIT: usize = 8;
/// Fee of each candidate A_ij.
pub const CANDIDATE_FEE: Amount = Amount::from_sat(1_000);
/// Fee of the renter's reclaim of an unclaimed candidate.
pub const RECLAIM_FEE: Amount = Amount::from_sat(1_000);
/// Least value of a refund's output to the renter (P2TR's dust limit, P2WPKH's is lower).
const REFUND_DUST: Amount = Amount::from_sat(330);
/// Smallest audit amount: it must pay a candidate and a claim and leave more than dust.
pub const MIN_AUDIT_AMOUNT: Amount = Amount::from_sat(5_000);
/// Bounds on the audit period P (blocks).
pub const MIN_AUDIT_PERIOD: u32 = 3;
pub const MAX_AUDIT_PERIOD: u32 = 52_560;
/// Most audits per contract (the farmer enforces the same bound).
pub const MAX_AUDITS: u32 = 52;
/// How often the setup asks bitcoind about TX_A's confirmations.
const STAKE_POLL: std::time::Duration = std::time::Duration::from_millis(500);
/// Back-off of a setup step the farmer (or bitcoind, or the tower) could not take yet.
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_secs(1);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(10);

impl AuditRequest {
    /// Checks what `dstore-open` was asked for.
    pub fn check(&self) -> Result<(), RenterError> {
        let bad = |why: String| Err(RenterError::Invalid(why));
        if self.audits == 0 || self.audits > MAX_AUDITS {
            return bad(format!("audits must be 1 to {MAX_AUDITS}"));
        }
        if !(MIN_AUDIT_PERIOD..=MAX_AUDIT_PERIOD).contains(&self.period) {
            return bad(format!(
                "audit_period_blocks must be {MIN_AUDIT_PERIOD} to {MAX_AUDIT_PERIOD}"
            ));
        }
        if self.amount < MIN_AUDIT_AMOUNT {
            return bad(format!(
                "audit_amount_sat must be at least {}",
                MIN_AUDIT_AMOUNT.to_sat()
            ));
        }
        let least = self.least_amount();
        if self.amount < least {
            return bad(format!(
                "audit_amount_sat must be at least {} for {} audits: the last refund pays the candidate's fee, its own fee and the tower's fee-bump anchor from one audit amount",
                least.to_sat(),
                self.audits
            ));
        }
        Ok(())
    }

    /// The least audit amount whose last refund still leaves the renter more than dust.
    fn least_amount(&self) -> Amount {
        CANDIDATE_FEE + self.refund_fee() + REFUND_ANCHOR_VALUE + REFUND_DUST
    }

    /// W: half the period, raised to a farmer's default least window (6 blocks) where the
    /// period allows; always below the period, so a refund at T_i + W is mined before
    /// audit i+1 can start.
    pub fn claim_window(&self) -> u16 {
        let floor = u32::from(dstore_protocol::audit::policy::DEFAULT_MIN_CLAIM_WINDOW)
            .min(self.period.saturating_sub(1));
        (self.period / 2).max(floor).clamp(1, u32::from(u16::MAX)) as u16
    }

    /// Each refund's fee: it grows with the number of outputs it gathers.
    pub fn refund_fee(&self) -> Amount {
        Amount::from_sat(1_000 + 400 * u64::from(self.audits))
    }
}

impl Renter {
    /// Runs (or resumes) the audit setup of `record` until its phase reaches `until` (or
    /// the setup is complete).
    pub(super) async fn setup_audits(
        &self,
        record: &mut RentedContract,
        until: RentedAuditPhase,
    ) -> Result<(), RenterError> {
        loop {
            let Some(audit) = record.audit.as_ref() else {
                return Ok(());
            };
            if audit.phase >= until {
                return Ok(());
            }
            match audit.phase {
                RentedAuditPhase::Planned => self.propose(record).await?,
                RentedAuditPhase::Proposed => self.send_funding(record).await?,
                RentedAuditPhase::Booked => self.fund(record).await?,
                RentedAuditPhase::Funded => self.toss(record).await?,
                RentedAuditPhase::Tossed => self.open_candidates(record).await?,
                RentedAuditPhase::Swapping => self.swap(record).await?,
                RentedAuditPhase::Complete | RentedAuditPhase::Failed => return Ok(()),
            }
        }
    }

    /// Chooses 2m salted candidates per audit over the staged C and stores them (the
    /// metadata store's files are 0600: the salts are secrets).
    pub(super) async fn plan_audits(
        &self,
        record: &mut RentedContract,
        request: AuditRequest,
    ) -> Result<(), RenterError> {
        request.check()?;
        let staged = self.staged_c(&record.contract_id);
        let length = record.ciphertext_length;
        let bad_locks = crate::dev_fault!(self.dev_fault, AuditBadLocks);
        let audits = request.audits as usize;
        let candidates = tokio::task::spawn_blocking(move || {
            choose_candidates(&staged, length, audits, 2 * KEPT_PER_AUDIT, bad_locks)
        })
        .await
        .map_err(internal)??;
        let funding_key_index = self.db.next_key_index().map_err(internal)?;
        let claim_key_index = self.db.next_key_index().map_err(internal)?;
        let mut renter_nonce = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut renter_nonce);
        record.audit = Some(RentedAudit {
            request,
            funding_key_index,
            claim_key_index,
            candidates,
            renter_nonce,
            destination: self.wallet.new_script()?,
            proposal: None,
            accepted: None,
            seed: None,
            funding_tx: None,
            book: None,
            refund_signatures: None,
            swap: RenterSwap::new(),
            phase: RentedAuditPhase::Planned,
            tower_registered: false,
            candidates_registered: false,
            error: None,
            waiting_for: None,
        });
        self.store(record)
    }

    fn audit_keys(&self, audit: &RentedAudit) -> Result<SigningKeys, RenterError> {
        Ok(SigningKeys {
            funding: self.secret(Role::Audit, audit.funding_key_index)?,
            claim: Some(self.secret(Role::Audit, audit.claim_key_index)?),
        })
    }

    /// The script of our tower's key, which every refund pays a CPFP anchor so the tower
    /// can bump it while the plugin is down; `None` without a tower.
    async fn refund_anchor(&self) -> Result<Option<bitcoin::ScriptBuf>, RenterError> {
        let Some(tower) = &self.tower else {
            tracing::warn!("no --watchtower-url: the audit refunds get no fee-bump anchor");
            return Ok(None);
        };
        let script = tower.wallet_script().await.map_err(|e| {
            RenterError::Invalid(format!(
                "the watchtower did not say where refund anchors go ({e}); no audit was proposed"
            ))
        })?;
        Ok(Some(script))
    }

    /// The terms, the stake (an m-th of one audit's amount, at least 330 sat) and every
    /// lock; the farmer's acceptance names where the stake goes.
    async fn propose(&self, record: &mut RentedContract) -> Result<(), RenterError> {
        let tip = self.tip().await?;
        let refund_anchor = self.refund_anchor().await?;
        let audit = audit_of(record)?;
        let keys = self.audit_keys(audit)?;
        let r = audit.request;
        let proposal = AuditProposal {
            terms: ProposedTerms {
                renter_funding_key: keys.funding.public_key(SECP256K1),
                renter_claim_key: keys
                    .claim
                    .map(|k| k.public_key(SECP256K1))
                    .ok_or_else(|| internal("no claim key"))?,
                first_audit_height: tip + r.period,
                period: r.period,
                claim_window: r.claim_window(),
                audits: r.audits,
                amount: r.amount,
                candidate_fee: CANDIDATE_FEE,
                refund_fee: r.refund_fee(),
                stake: required_stake(r.amount, KEPT_PER_AUDIT),
            },
            renter_destination: audit.destination.clone(),
            locks: audit
                .candidates
                .iter()
                .map(|set| set.iter().map(|c| KeptLock(c.lock)).collect())
                .collect(),
            refund_anchor,
        };
        let accepted: AuditAccepted = self.exchange(record, &proposal, QUICK_CALL).await?;
        check_stake_script(&accepted.stake_script)
            .map_err(|e| farmer_fault(format!("its stake script: {e}")))?;
        let audit = audit_mut(record)?;
        audit.proposal = Some(proposal);
        audit.accepted = Some(accepted);
        audit.phase = RentedAuditPhase::Proposed;
        self.store(record)
    }

    /// TX_A from the wallet (stored before it leaves, not broadcast), sent unsigned; the
    /// farmer's signatures on every RF_i come back and are checked.
    async fn send_funding(&self, record: &mut RentedContract) -> Result<(), RenterError> {
        let contract_id = record.contract_id;
        let audit = audit_of(record)?.clone();
        let (proposal, accepted) = match (&audit.proposal, &audit.accepted) {
            (Some(p), Some(a)) => (p, a),
            _ => return Err(internal("audit setup state is incomplete")),
        };
        let terms = proposal.terms.with_farmer(
            contract_id,
            accepted.farmer_funding_key,
            accepted.farmer_claim_key,
        );
        terms.check().map_err(farmer_fault)?;
        let funding_tx = match audit.funding_tx.clone() {
            Some(tx) => tx,
            None => self.build_tx_a(record, &terms).await?,
        };
        let book = AuditBook::before_toss(
            terms,
            funding_tx.compute_txid(),
            audit.destination.clone(),
            proposal.refund_anchor.clone(),
        );
        let funding = AuditFunding {
            funding_tx: unsigned(&funding_tx),
        };
        let reply: AuditRefundSignatures = self.exchange(record, &funding, QUICK_CALL).await?;
        book.verify_farmer_refund_signatures(&book.unraced_refund_ids(), &reply.signatures)
            .map_err(farmer_fault)?;
        let audit = audit_mut(record)?;
        audit.book = Some(book);
        audit.refund_signatures = Some(reply.signatures);
        audit.phase = RentedAuditPhase::Booked;
        self.store(record)
    }

    /// TX_A: O_0..O_{N−1}, the farmer's lease record, the stake to the farmer's script,
    /// then change; signed by the wallet and stored.
    async fn build_tx_a(
        &self,
        record: &mut RentedContract,
        terms: &AuditTerms,
    ) -> Result<Transaction, RenterError> {
        let audit = audit_of(record)?;
        let (proposal, accepted) = match (&audit.proposal, &audit.accepted) {
            (Some(p), Some(a)) => (p, a),
            _ => return Err(internal("audit setup state is incomplete")),
        };
        let mut outputs = terms.funding_outputs().map_err(internal)?;
        let lease = accepted
            .lease
            .ok_or_else(|| farmer_fault("the farmer sent no lease record for TX_A"))?;
        check_farmer_lease(record, &lease, &outputs, "TX_A")?;
        outputs.extend(self.lease_output(lease));
        let mut stake = proposal.terms.stake;
        if crate::dev_fault!(self.dev_fault, AuditStakeShort) {
            tracing::warn!("dev fault audit-stake-short: TX_A pays the stake less one satoshi");
            stake -= Amount::from_sat(1);
        }
        outputs.push(stake_output(&accepted.stake_script, stake));
        let wallet = self.wallet.clone();
        let funded = tokio::task::spawn_blocking(move || wallet.fund_outputs(&outputs, None))
            .await
            .map_err(internal)??;
        audit_mut(record)?.funding_tx = Some(funded.tx.clone());
        self.store(record)?;
        Ok(funded.tx)
    }

    /// The RF_i go to the watchtower before TX_A is broadcast; then TX_A (money moves:
    /// the O_i, and the stake, which is the farmer's whatever happens next).
    async fn fund(&self, record: &mut RentedContract) -> Result<(), RenterError> {
        self.register_refunds(record, false).await?;
        let tx = audit_of(record)?
            .funding_tx
            .clone()
            .ok_or_else(|| internal("no TX_A"))?;
        let txid = tx.compute_txid();
        let wallet = self.wallet.clone();
        tokio::task::spawn_blocking(move || wallet.broadcast(&tx))
            .await
            .map_err(internal)??;
        let audit = audit_mut(record)?;
        audit.phase = RentedAuditPhase::Funded;
        let needed = audit.accepted.as_ref().map_or(1, |a| a.stake_confirmations);
        audit.waiting_for = Some(format!("TX_A confirmations 0/{needed}"));
        self.store(record)?;
        tracing::info!(contract = %hex::encode(record.contract_id), funding_txid = %txid, "audit contract funded (TX_A broadcast, with the stake)");
        Ok(())
    }

    /// Once TX_A has the farmer's confirmations (or at once, with the test-only fault
    /// `audit-toss-unconfirmed`): our nonce, the farmer's reveal checked, the seed.
    async fn toss(&self, record: &mut RentedContract) -> Result<(), RenterError> {
        if !crate::dev_fault!(self.dev_fault, AuditTossUnconfirmed) {
            self.wait_for_stake(record).await?;
        }
        let audit = audit_of(record)?;
        let toss = AuditToss {
            renter_nonce: audit.renter_nonce,
        };
        let reveal: AuditTossReveal = match self.exchange(record, &toss, QUICK_CALL).await {
            Ok(reveal) => reveal,
            Err(RenterError::Peer(PeerCallError::Refused(e))) if e.code == NOT_CONFIRMED => {
                let text = format!(
                    "{} (the farmer: {})",
                    self.stake_confirmations_text(record).await?,
                    e.message
                );
                self.note_waiting(record, text)?;
                return Err(RenterError::Peer(PeerCallError::Refused(e)));
            }
            Err(e) => return Err(e),
        };
        let contract_id = record.contract_id;
        let audit = audit_mut(record)?;
        let accepted = audit
            .accepted
            .as_ref()
            .ok_or_else(|| internal("no acceptance"))?;
        coin_toss::check_reveal(&accepted.toss_commitment, &reveal.farmer_nonce)
            .map_err(farmer_fault)?;
        let locks = raw_locks(&audit.candidates);
        audit.seed = Some(coin_toss::seed(
            &contract_id,
            &coin_toss::locks_digest(&locks),
            &reveal.farmer_nonce,
            &audit.renter_nonce,
        ));
        audit.phase = RentedAuditPhase::Tossed;
        audit.waiting_for = None;
        self.store(record)?;
        self.set_audit_waiting(&contract_id, false);
        Ok(())
    }

    /// Waits (holding the contract) until our bitcoind shows TX_A with the farmer's
    /// confirmations; `dstore-status` shows "TX_A confirmations k/n" meanwhile. TX_A is
    /// broadcast again at each new block while unconfirmed (a dropped TX_A comes back).
    async fn wait_for_stake(&self, record: &mut RentedContract) -> Result<(), RenterError> {
        let contract_id = record.contract_id;
        let mut seen_tip = None;
        loop {
            let (k, needed) = self.stake_confirmations(record).await?;
            if k >= needed {
                return Ok(());
            }
            let tip = self.tip().await?;
            if seen_tip != Some(tip) {
                seen_tip = Some(tip);
                let first = audit_of(record)?
                    .proposal
                    .as_ref()
                    .map_or(u32::MAX, |p| p.terms.first_audit_height);
                if tip >= first {
                    return Err(RenterError::Wait(format!(
                        "TX_A had {k} of {needed} confirmations when the chain reached the first audit's height {first}"
                    )));
                }
                self.note_waiting(record, format!("TX_A confirmations {k}/{needed}"))?;
                if k == 0 {
                    self.rebroadcast_tx_a(record).await;
                }
            }
            tokio::time::sleep(STAKE_POLL).await;
            tracing::trace!(contract = %hex::encode(contract_id), "waiting for TX_A's confirmations");
        }
    }

    /// TX_A's confirmations in our bitcoind (0 in the mempool or unknown) and how many
    /// the farmer asked for.
    async fn stake_confirmations(
        &self,
        record: &RentedContract,
    ) -> Result<(u32, u32), RenterError> {
        let audit = audit_of(record)?;
        let needed = audit.accepted.as_ref().map_or(1, |a| a.stake_confirmations);
        let txid = audit
            .funding_tx
            .as_ref()
            .map(|tx| tx.compute_txid())
            .ok_or_else(|| internal("no TX_A"))?;
        let found = self
            .bitcoind
            .call("gettxout", json!([txid.to_string(), 0, true]))
            .await?;
        let k = found["confirmations"].as_u64().unwrap_or(0) as u32;
        Ok((k, needed))
    }

    async fn stake_confirmations_text(
        &self,
        record: &RentedContract,
    ) -> Result<String, RenterError> {
        let (k, needed) = self.stake_confirmations(record).await?;
        Ok(format!("TX_A confirmations {k}/{needed}"))
    }

    /// Records what the setup waits for (shown by `dstore-status`) and tells a waiting
    /// `dstore-open` that only the chain is awaited now.
    fn note_waiting(&self, record: &mut RentedContract, text: String) -> Result<(), RenterError> {
        let contract = hex::encode(record.contract_id);
        let audit = audit_mut(record)?;
        if audit.waiting_for.as_deref() != Some(text.as_str()) {
            tracing::info!(%contract, waiting_for = %text, "the audit setup waits for the chain");
            audit.waiting_for = Some(text);
            self.store(record)?;
        }
        self.set_audit_waiting(&record.contract_id, true);
        Ok(())
    }

    async fn rebroadcast_tx_a(&self, record: &RentedContract) {
        let Some(tx) = audit_of(record).ok().and_then(|a| a.funding_tx.clone()) else {
            return;
        };
        let wallet = self.wallet.clone();
        match tokio::task::spawn_blocking(move || wallet.broadcast(&tx)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!("broadcasting TX_A again: {e}"),
            Err(e) => tracing::debug!("broadcasting TX_A again: {e}"),
        }
    }

    /// The tossed half opened; the farmer's signatures on every RF_ij come back, checked
    /// against the completed book, and are stored with the RF_i's.
    async fn open_candidates(&self, record: &mut RentedContract) -> Result<(), RenterError> {
        let audit = audit_of(record)?.clone();
        let seed = audit.seed.ok_or_else(|| internal("no toss"))?;
        let book = audit
            .book
            .clone()
            .ok_or_else(|| internal("no audit book"))?
            .with_kept_locks(opening::kept_locks(&raw_locks(&audit.candidates), &seed))
            .map_err(internal)?;
        let mut signatures = audit
            .refund_signatures
            .clone()
            .ok_or_else(|| internal("no RF_i signatures"))?;
        let openings = AuditOpenings {
            openings: opening::openings(&audit.candidates, &seed),
        };
        let reply: AuditRefundSignatures = self.exchange(record, &openings, QUICK_CALL).await?;
        book.verify_farmer_refund_signatures(&book.after_candidate_refund_ids(), &reply.signatures)
            .map_err(farmer_fault)?;
        signatures.extend(reply.signatures);
        let audit = audit_mut(record)?;
        audit.book = Some(book);
        audit.refund_signatures = Some(signatures);
        audit.tower_registered = false;
        audit.phase = RentedAuditPhase::Swapping;
        self.store(record)
    }

    /// One candidate at a time: the farmer's signature first, checked, then ours.
    async fn swap(&self, record: &mut RentedContract) -> Result<(), RenterError> {
        if !audit_of(record)?.tower_registered {
            // The tower holds every RF_ij and reclaim before any candidate is signed.
            self.register_refunds(record, true)
                .await
                .map_err(|e| RenterError::Wait(e.to_string()))?;
        }
        let audit = audit_of(record)?;
        let book = audit
            .book
            .clone()
            .ok_or_else(|| internal("no audit book"))?;
        let keys = self.audit_keys(audit)?;
        let total = book.swap_order().len();
        let stop_at_half = crate::dev_fault!(self.dev_fault, AuditRenterStopHalf);
        loop {
            let audit = audit_of(record)?;
            let done = audit.swap.done.len();
            let request = AuditSwap {
                step: done as u32,
                renter_signature: done.checked_sub(1).map(|last| audit.swap.done[last].renter),
            };
            let reply: AuditSwapReply = match self.exchange(record, &request, QUICK_CALL).await {
                Ok(reply) => reply,
                Err(e) => {
                    // Whatever is signed by both still goes to the tower to race.
                    self.register_candidates(record).await;
                    return Err(e);
                }
            };
            if stop_at_half && done >= total / 2 {
                self.register_candidates(record).await;
                return Err(RenterError::Invalid(
                    "dev fault: the renter stops swapping halfway".into(),
                ));
            }
            let Some(farmer_signature) = reply.farmer_signature else {
                if done != total {
                    return Err(farmer_fault("it ended the swap early"));
                }
                audit_mut(record)?.phase = RentedAuditPhase::Complete;
                self.store(record)?;
                self.register_candidates(record).await;
                return Ok(());
            };
            if reply.step as usize != done {
                return Err(farmer_fault(format!(
                    "it signed swap step {} instead of {done}",
                    reply.step
                )));
            }
            audit_mut(record)?
                .swap
                .receive(&book, &keys, done, farmer_signature)
                .map_err(farmer_fault)?;
            self.store(record)?;
        }
    }

    /// The renter's tower gets every refund of the stored book: the RF_i before TX_A is
    /// broadcast (failing stops the setup before TX_A leaves), then the RF_ij and reclaims
    /// (`after_toss`, with the auditor's secrets unless `--auditor-url`) before the swap.
    async fn register_refunds(
        &self,
        record: &mut RentedContract,
        after_toss: bool,
    ) -> Result<(), RenterError> {
        let tip = self.tip().await?;
        let audit = audit_of(record)?;
        let auditor = if after_toss && self.auditor.is_none() {
            Some(self.auditor_spec(record, audit)?)
        } else {
            None
        };
        let transactions = self.signed_refunds(audit)?;
        let Some(tower) = self.tower.clone() else {
            tracing::warn!("no --watchtower-url: nobody will broadcast this contract's audits and refunds while the plugin is down");
            return Ok(());
        };
        let registration = Registration {
            id: record.contract_id,
            role: WatchRole::Renter,
            extract: None,
            transactions,
            watch_txids: Vec::new(),
            rescan_from_height: Some(tip),
            auditor,
        };
        tower.register(&registration).await.map_err(|e| {
            RenterError::Invalid(if after_toss {
                format!("the watchtower refused the audit refunds ({e}); no candidate is signed before it holds them")
            } else {
                format!("the watchtower refused the audit refunds ({e}); TX_A was not broadcast")
            })
        })?;
        audit_mut(record)?.tower_registered = true;
        self.store(record)
    }

    fn auditor_spec(
        &self,
        record: &RentedContract,
        audit: &RentedAudit,
    ) -> Result<AuditorSpec, RenterError> {
        let book = audit
            .book
            .clone()
            .ok_or_else(|| internal("no audit book"))?;
        let seed = audit.seed.ok_or_else(|| internal("no toss"))?;
        let secrets: Vec<Vec<CandidateSecret>> = opening::kept(&audit.candidates, &seed)
            .into_iter()
            .map(|set| set.into_iter().map(|c| c.secret).collect())
            .collect();
        Ok(AuditorSpec {
            book,
            secrets,
            farmer_url: record.farmer_url.clone(),
            root_c: record.root_c.ok_or_else(|| internal("no root_C"))?,
            length: record.ciphertext_length,
        })
    }

    /// Every refund, signed by both: per audit, RF_ij and the plain reclaim for each
    /// candidate, then RF_i. Each pays the book's anchor (our tower's key) if it has one:
    /// the tower bumps a stuck one by CPFP from that output.
    fn signed_refunds(&self, audit: &RentedAudit) -> Result<Vec<Presigned>, RenterError> {
        let book = audit
            .book
            .as_ref()
            .ok_or_else(|| internal("no audit book"))?;
        let sigs = audit
            .refund_signatures
            .as_ref()
            .ok_or_else(|| internal("no refund signatures"))?;
        let keys = self.audit_keys(audit)?;
        let ids = book.refund_ids();
        let signed = |id: RefundId| -> Result<Transaction, RenterError> {
            let index = ids
                .iter()
                .position(|x| *x == id)
                .ok_or_else(|| internal("unknown refund"))?;
            book.signed_refund(id, &keys, &sigs[index])
                .map_err(internal)
        };
        let claim_secret = keys.claim.ok_or_else(|| internal("no claim key"))?;
        let mut out = Vec::new();
        for i in 0..book.terms.audits {
            for j in 0..book.kept_per_audit() as u32 {
                out.push(Presigned::new(
                    format!("audit-{i}-refund-after-{j}"),
                    signed(RefundId::AfterCandidate(i, j))?,
                ));
                let reclaim = book
                    .reclaim(i, j, &claim_secret, RECLAIM_FEE)
                    .map_err(internal)?;
                out.push(Presigned::new(format!("audit-{i}-reclaim-{j}"), reclaim));
            }
            out.push(Presigned::new(
                format!("audit-{i}-refund"),
                signed(RefundId::Unraced(i))?,
            ));
        }
        Ok(out)
    }

    /// The candidates signed by both go to the renter's tower (grouped by audit: it
    /// broadcasts the beacon's choice at each T_i), and with `--auditor-url` the auditor
    /// gets its secrets and the same candidates. Failures are logged and retried at start.
    async fn register_candidates(&self, record: &mut RentedContract) {
        let Ok(audit) = audit_of(record) else { return };
        let Some(book) = audit.book.clone() else {
            return;
        };
        let candidates: Vec<Presigned> = audit
            .swap
            .signed_candidates(&book)
            .into_iter()
            .map(|c| Presigned {
                name: format!("audit-{}-candidate-{}", c.audit, c.j),
                tx: c.tx,
                group: Some(c.audit),
                hold: None,
                bump: None,
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        let mut ok = true;
        let base = Registration {
            id: record.contract_id,
            role: WatchRole::Renter,
            extract: None,
            transactions: candidates,
            watch_txids: Vec::new(),
            rescan_from_height: Some(
                book.terms
                    .first_audit_height
                    .saturating_sub(book.terms.period),
            ),
            auditor: None,
        };
        if let Some(tower) = &self.tower {
            if let Err(e) = tower.register(&base).await {
                tracing::warn!(contract = %hex::encode(record.contract_id), "registering the audit candidates failed ({e}); retried at the next start");
                ok = false;
            }
        }
        if let Some(auditor) = &self.auditor {
            let spec = match self.auditor_spec(record, audit) {
                Ok(spec) => spec,
                Err(e) => {
                    tracing::warn!("cannot build the auditor's registration: {e}");
                    return;
                }
            };
            let registration = Registration {
                auditor: Some(spec),
                ..base
            };
            if let Err(e) = auditor.register(&registration).await {
                tracing::warn!(contract = %hex::encode(record.contract_id), "registering with the auditor failed ({e}); retried at the next start");
                ok = false;
            }
        }
        if let Ok(audit) = audit_mut(record) {
            audit.candidates_registered = ok;
        }
        let _ = self.store(record);
    }

    /// Finishes (or resumes after a restart) the audit setup of `record`: before TX_A is
    /// broadcast a failure marks the audits failed (no money moved); after it, a farmer
    /// that is briefly unreachable or not yet convinced TX_A is confirmed is asked again
    /// with back-off until the chain reaches the first audit's height, and anything else
    /// ends the setup failed (the RF_i return the O_i at T_i + W; the stake is the
    /// farmer's). Candidates signed by both go to the tower either way.
    pub(super) async fn finish_audit_setup(
        &self,
        record: &mut RentedContract,
    ) -> Result<(), RenterError> {
        let mut delay = RETRY_FIRST;
        loop {
            let error = match self.setup_audits(record, RentedAuditPhase::Complete).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let error = match self.retry_later(record, error).await {
                Ok(retryable) => {
                    tracing::info!(contract = %hex::encode(record.contract_id), "audit setup: {retryable}; asking again in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                    continue;
                }
                Err(fatal) => fatal,
            };
            tracing::warn!(contract = %hex::encode(record.contract_id), "the audit setup failed: {error}");
            self.register_candidates(record).await;
            let audit = audit_mut(record)?;
            audit.error = Some(error.to_string());
            audit.phase = RentedAuditPhase::Failed;
            audit.waiting_for = None;
            self.store(record)?;
            return Err(error);
        }
    }

    /// `Ok(error)` when `error` is worth asking again: money moved, the farmer (or our
    /// bitcoind, or our tower) is not there yet, and the first audit is still ahead;
    /// `Err` with the error that ends the setup otherwise.
    async fn retry_later(
        &self,
        record: &RentedContract,
        error: RenterError,
    ) -> Result<RenterError, RenterError> {
        let audit = audit_of(record)?;
        let transient = match &error {
            RenterError::Peer(PeerCallError::Refused(e)) => e.code == NOT_CONFIRMED,
            RenterError::Peer(PeerCallError::Unreachable { .. } | PeerCallError::Stalled(_)) => {
                true
            }
            RenterError::Bitcoind(_) | RenterError::Wait(_) => true,
            _ => false,
        };
        if audit.phase < RentedAuditPhase::Funded || !transient {
            return Err(error);
        }
        let first = audit
            .proposal
            .as_ref()
            .map_or(0, |p| p.terms.first_audit_height);
        match self.tip().await {
            Ok(tip) if tip >= first => Err(RenterError::Wait(format!(
                "{error}; the setup stops: the chain reached the first audit's height {first} (the RF_i return the O_i at T_i + W)"
            ))),
            _ => Ok(error),
        }
    }

    /// After a restart (or once TX_A is broadcast): finishes an unfinished setup, and
    /// re-registers candidates the tower may not hold.
    pub(super) async fn resume_audits(&self, record: &mut RentedContract) {
        let Some(audit) = record.audit.as_ref() else {
            return;
        };
        match audit.phase {
            RentedAuditPhase::Complete | RentedAuditPhase::Failed => {
                if !audit.candidates_registered {
                    self.register_candidates(record).await
                }
            }
            _ => {
                let _ = self.finish_audit_setup(record).await;
            }
        }
    }

    /// The `audits` section of `dstore-status`: the terms, the setup, and what the
    /// watchtower (or auditor) reports for each audit.
    pub async fn audit_status(&self, record: &RentedContract) -> Option<Value> {
        let audit = record.audit.as_ref()?;
        let mut value = json!({
            "phase": audit.phase,
            "audits": audit.request.audits,
            "period_blocks": audit.request.period,
            "amount_sat": audit.request.amount.to_sat(),
            "stake_sat": audit.proposal.as_ref().map(|p| p.terms.stake.to_sat()),
            "waiting_for": audit.waiting_for,
            "funding_txid": audit.funding_tx.as_ref().map(|tx| tx.compute_txid()),
            "swapped": audit.swap.done.len(),
            "candidates_registered": audit.candidates_registered,
            "error": audit.error,
        });
        if let Some(book) = &audit.book {
            value["claim_window_blocks"] = json!(book.terms.claim_window);
            value["heights"] = json!((0..book.terms.audits)
                .map(|i| book.terms.audit_height(i))
                .collect::<Vec<_>>());
        }
        let reporter = self.auditor.as_ref().or(self.tower.as_ref());
        if let Some(tower) = reporter {
            value["tower"] = match tower.status_raw(&record.contract_id).await {
                Ok(Some(status)) => status.get("audits").cloned().unwrap_or(Value::Null),
                Ok(None) => json!("not registered"),
                Err(e) => json!(format!("unreachable: {e}")),
            };
        }
        Some(value)
    }
}

/// 2m candidates per audit over the staged ciphertext. With `bad_locks` (a test-only
/// fault) half of each audit's locks hash data that is not in the file.
fn choose_candidates(
    staged: &Path,
    length: u64,
    audits: usize,
    per_audit: usize,
    bad_locks: bool,
) -> Result<Vec<Vec<Candidate>>, RenterError> {
    let count = segment_count(length);
    if count == 0 {
        return Err(RenterError::Invalid(
            "an empty file cannot be audited".into(),
        ));
    }
    let mut file = std::fs::File::open(staged).map_err(|e| {
        internal(format!(
            "the staged ciphertext is gone ({e}); audits must be set up with the upload"
        ))
    })?;
    let mut rng = rand::thread_rng();
    (0..audits)
        .map(|_| {
            candidates::choose_secrets(&mut rng, count, per_audit)
                .into_iter()
                .enumerate()
                .map(|(n, secret)| {
                    let mut segment = read_segment(&mut file, length, secret.segment_index)?;
                    if bad_locks && n % 2 == 0 {
                        segment.iter_mut().for_each(|b| *b ^= 0x5a);
                    }
                    Ok(candidates::candidate(secret, &segment))
                })
                .collect()
        })
        .collect()
}

fn read_segment(file: &mut std::fs::File, length: u64, index: u64) -> Result<Vec<u8>, RenterError> {
    let start = index * SEGMENT_SIZE as u64;
    let len = (length - start).min(SEGMENT_SIZE as u64) as usize;
    let mut segment = vec![0u8; len];
    file.seek(SeekFrom::Start(start)).map_err(internal)?;
    file.read_exact(&mut segment).map_err(internal)?;
    Ok(segment)
}

fn raw_locks(candidates: &[Vec<Candidate>]) -> Vec<Vec<[u8; 20]>> {
    candidates
        .iter()
        .map(|set| set.iter().map(|c| c.lock).collect())
        .collect()
}

/// TX_A without its witnesses: what the farmer needs (outputs and a final txid), without
/// handing it a transaction it could broadcast.
fn unsigned(tx: &Transaction) -> Transaction {
    let mut tx = tx.clone();
    tx.input.iter_mut().for_each(|i| i.witness = Witness::new());
    tx
}

fn audit_of(record: &RentedContract) -> Result<&RentedAudit, RenterError> {
    record
        .audit
        .as_ref()
        .ok_or_else(|| internal("this contract has no audits"))
}

fn audit_mut(record: &mut RentedContract) -> Result<&mut RentedAudit, RenterError> {
    record
        .audit
        .as_mut()
        .ok_or_else(|| internal("this contract has no audits"))
}
