//! The farmer's half of the audit contract (PROTOCOL.md 5): accepting the renter's terms, stake and locks, checking TX_A (with the stake) and signing every RF_i, the coin toss once TX_A is confirmed, checking the opened candidates against the stored file (a caught renter's stake is kept), signing every RF_ij, the candidate swap, and later claiming a confirmed candidate when the auditor releases its salt, plus answering off-chain Merkle audits.

use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{SecretKey, SECP256K1};
use bitcoin::Amount;
use dstore_protocol::audit::book::{AuditBook, KeptLock};
use dstore_protocol::audit::candidates::{self, Lock};
use dstore_protocol::audit::coin_toss;
use dstore_protocol::audit::merkle_audit::{AnswerBuilder, MerkleAnswer, MAX_CHALLENGE};
use dstore_protocol::audit::messages::{
    AuditAccepted, AuditFunding, AuditOpenings, AuditProposal, AuditRefundSignatures, AuditSwap,
    AuditSwapReply, AuditToss, AuditTossReveal, MAX_FUNDING_TX_BYTES,
};
use dstore_protocol::audit::opening::{self, check_shape};
use dstore_protocol::audit::stake::{check_stake, check_stake_script, required_stake};
use dstore_protocol::audit::swap::FarmerSwap;
use dstore_protocol::audit::transactions::SigningKeys;
use dstore_protocol::audit::wire::{MerkleRequest, RevealReply, RevealRequest};
use dstore_protocol::keys::Role;
use dstore_protocol::market::lease::{check_lease_in, sign_lease};
use dstore_protocol::merkle::{leaf_hash, segment_count, SEGMENT_SIZE};
use dstore_protocol::watch::{Presigned, Registration, WatchRole};
use rand::RngCore;

use super::records::{AuditClaim, FarmedAudit, FarmedAuditPhase, FarmedContract};
use super::{internal, Farmer, FarmerError, Step};

/// Most audits a contract may have here: enough for a year of weekly audits, and few
/// enough that every refund signature fits one message.
pub const MAX_PLUGIN_AUDITS: u32 = 52;
/// Most candidates per audit (2m).
pub const MAX_PLUGIN_CANDIDATES: usize = 16;
/// The first audit must leave this many blocks for the setup and the swap.
pub const MIN_AUDIT_LEAD: u32 = 3;
/// Fee of the farmer's claim of a candidate.
pub const CLAIM_FEE: Amount = Amount::from_sat(1_000);
/// Read segments in batches of this many bytes when answering a Merkle challenge.
const MERKLE_READ_BATCH: u64 = 4 << 20;

fn invalid(e: impl std::fmt::Display) -> FarmerError {
    FarmerError::Invalid(e.to_string())
}

impl Farmer {
    fn audit_keys(&self, audit: &FarmedAudit) -> Result<(SecretKey, SecretKey), FarmerError> {
        Ok((
            self.secret(Role::Audit, audit.funding_key_index)?,
            self.secret(Role::Audit, audit.claim_key_index)?,
        ))
    }

    /// Terms and locks: checked, keys derived, toss nonce committed.
    pub(super) async fn on_audit_proposal(
        &self,
        mut record: FarmedContract,
        proposal: AuditProposal,
    ) -> Result<Step<AuditAccepted>, FarmerError> {
        self.check_policy(&record, &proposal)?;
        check_proposed_stake(&proposal)?;
        if record.receipt.is_none() {
            return Err(FarmerError::WrongPhase("the upload is not finished"));
        }
        if record.audit.is_some() {
            return Err(FarmerError::WrongPhase("this contract already has audits"));
        }
        self.check_proposal(&record, &proposal).await?;
        let funding_key_index = self.db_next_key_index()?;
        let claim_key_index = self.db_next_key_index()?;
        let (fa, fc) = (
            self.secret(Role::Audit, funding_key_index)?,
            self.secret(Role::Audit, claim_key_index)?,
        );
        let mut farmer_nonce = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut farmer_nonce);
        let terms = proposal.terms.with_farmer(
            record.contract_id,
            fa.public_key(SECP256K1),
            fc.public_key(SECP256K1),
        );
        let leased = terms.funding_outputs().map_err(invalid)?;
        let stake_script = self.wallet.new_script().map_err(internal)?;
        check_stake_script(&stake_script).map_err(internal)?;
        let reply = AuditAccepted {
            farmer_funding_key: fa.public_key(SECP256K1),
            farmer_claim_key: fc.public_key(SECP256K1),
            toss_commitment: coin_toss::commit(&farmer_nonce),
            lease: Some(sign_lease(&self.identity, &record.contract_id, &leased)),
            stake_script: stake_script.clone(),
            stake_confirmations: self.config.min_tx1_confirmations,
        };
        record.audit = Some(FarmedAudit {
            funding_key_index,
            claim_key_index,
            proposal,
            farmer_nonce,
            seed: None,
            book: None,
            swap: FarmerSwap::new(),
            phase: FarmedAuditPhase::Accepted,
            claims: Vec::new(),
            tower_registered: false,
            stake_script: Some(stake_script),
            funding_tx: None,
            caught: None,
        });
        Ok(Step { record, reply })
    }

    /// The farmer's floor on the terms (`--min-audit-claim-window-blocks`,
    /// `--min-audit-fee-rate-sat-vb`): a window too short to claim in, or a candidate or
    /// refund that may not confirm in time, is refused before anything is stored.
    fn check_policy(
        &self,
        record: &FarmedContract,
        proposal: &AuditProposal,
    ) -> Result<(), FarmerError> {
        self.config
            .audit_policy
            .check_proposed(
                &proposal.terms,
                record.contract_id,
                proposal.refund_payout(),
            )
            .map_err(invalid)
    }

    async fn check_proposal(
        &self,
        record: &FarmedContract,
        proposal: &AuditProposal,
    ) -> Result<(), FarmerError> {
        let t = &proposal.terms;
        if t.audits > MAX_PLUGIN_AUDITS {
            return Err(invalid(format!(
                "at most {MAX_PLUGIN_AUDITS} audits per contract"
            )));
        }
        let locks = raw_locks(&proposal.locks);
        let per_audit = check_shape(&locks).map_err(invalid)?;
        if per_audit > MAX_PLUGIN_CANDIDATES || locks.len() != t.audits as usize {
            return Err(invalid(format!(
                "each audit needs 2 to {MAX_PLUGIN_CANDIDATES} candidates"
            )));
        }
        let tip = self.tip().await?;
        if t.first_audit_height < tip + MIN_AUDIT_LEAD
            || t.first_audit_height > record.expiry_height
        {
            return Err(invalid(format!(
                "the first audit must be between height {} and the storage expiry {}",
                tip + MIN_AUDIT_LEAD,
                record.expiry_height
            )));
        }
        // The farmer's keys are not chosen yet; any valid key checks the rest of the terms.
        t.with_farmer(record.contract_id, t.renter_funding_key, t.renter_claim_key)
            .check()
            .map_err(invalid)?;
        if !proposal.renter_destination.is_p2wpkh() && !proposal.renter_destination.is_p2tr() {
            return Err(invalid("the refund script must be P2WPKH or P2TR"));
        }
        let anchor = proposal.refund_anchor.as_ref();
        if anchor.is_some_and(|a| !dstore_protocol::audit::transactions::is_valid_anchor(a)) {
            return Err(invalid(
                "the refund anchor must be a P2WPKH, P2WSH or P2TR script",
            ));
        }
        Ok(())
    }

    fn db_next_key_index(&self) -> Result<u32, FarmerError> {
        self.db.next_key_index().map_err(internal)
    }

    /// TX_A, unsigned: its outputs (O_0..O_{N−1}, our lease record, the stake) checked,
    /// stored, and every RF_i signed, so the renter can take its money back at T_i + W
    /// whatever we do once TX_A is broadcast. Any failure changes nothing.
    pub(super) async fn on_audit_funding(
        &self,
        mut record: FarmedContract,
        funding: AuditFunding,
    ) -> Result<Step<AuditRefundSignatures>, FarmerError> {
        let contract_id = record.contract_id;
        let audit = audit_in(&mut record, FarmedAuditPhase::Accepted)?.clone();
        let tx = funding.funding_tx;
        if bitcoin::consensus::encode::serialize(&tx).len() > MAX_FUNDING_TX_BYTES {
            return Err(invalid("TX_A is too large"));
        }
        let (fa, fc) = self.audit_keys(&audit)?;
        let terms = audit.proposal.terms.with_farmer(
            contract_id,
            fa.public_key(SECP256K1),
            fc.public_key(SECP256K1),
        );
        terms.check_funding(&tx).map_err(invalid)?;
        self.check_tx_a_lease(&tx, &contract_id, terms.audits)?;
        let stake_script = audit
            .stake_script
            .clone()
            .ok_or_else(|| internal("no stake script stored"))?;
        check_stake(&tx, terms.audits, &stake_script, audit.proposal.terms.stake)
            .map_err(|e| invalid(format!("TX_A's stake: {e}")))?;
        let book = AuditBook::before_toss(
            terms,
            tx.compute_txid(),
            audit.proposal.renter_destination.clone(),
            audit.proposal.refund_anchor.clone(),
        );
        let signatures = book
            .farmer_refund_signatures(&book.unraced_refund_ids(), &signing_keys(fa))
            .map_err(internal)?;
        tracing::info!(contract = %hex::encode(contract_id), funding_txid = %book.funding_txid, stake_sat = audit.proposal.terms.stake.to_sat(), "TX_A checked; every RF_i signed");
        let stored = audit_in(&mut record, FarmedAuditPhase::Accepted)?;
        stored.funding_tx = Some(tx);
        stored.book = Some(book);
        stored.phase = FarmedAuditPhase::Funded;
        Ok(Step {
            record,
            reply: AuditRefundSignatures { signatures },
        })
    }

    /// The renter's nonce: once TX_A (and so the stake) has our confirmations, the toss is
    /// decided; reveal ours. Earlier, a retryable refusal that changes nothing.
    pub(super) async fn on_audit_toss(
        &self,
        mut record: FarmedContract,
        toss: AuditToss,
    ) -> Result<Step<AuditTossReveal>, FarmerError> {
        let contract_id = record.contract_id;
        let funding_txid = audit_in(&mut record, FarmedAuditPhase::Funded)?
            .book
            .as_ref()
            .map(|b| b.funding_txid)
            .ok_or_else(|| internal("funded without a book"))?;
        self.require_stake_confirmed(&funding_txid).await?;
        let audit = audit_in(&mut record, FarmedAuditPhase::Funded)?;
        let locks = raw_locks(&audit.proposal.locks);
        audit.seed = Some(coin_toss::seed(
            &contract_id,
            &coin_toss::locks_digest(&locks),
            &audit.farmer_nonce,
            &toss.renter_nonce,
        ));
        audit.phase = FarmedAuditPhase::Tossed;
        let reply = AuditTossReveal {
            farmer_nonce: audit.farmer_nonce,
        };
        Ok(Step { record, reply })
    }

    /// TX_A's O_0 is unspent with at least `--min-tx1-confirmations` confirmations in our
    /// bitcoind's UTXO set.
    async fn require_stake_confirmed(
        &self,
        funding_txid: &bitcoin::Txid,
    ) -> Result<(), FarmerError> {
        let needed = self.config.min_tx1_confirmations;
        let got = self.output0_confirmations(funding_txid).await?;
        if got < needed.max(1) {
            tracing::info!(funding_txid = %funding_txid, got, needed, "toss refused: TX_A is not confirmed enough");
            return Err(FarmerError::Unconfirmed { got, needed });
        }
        Ok(())
    }

    /// The openings: checked against the stored file; every RF_ij signed. A renter whose
    /// opened candidates fail (a planted lock) is recorded as caught and refused: its
    /// stake is ours and the setup ends here.
    pub(super) async fn on_audit_openings(
        &self,
        mut record: FarmedContract,
        openings: AuditOpenings,
    ) -> Result<Step<AuditRefundSignatures>, FarmerError> {
        let contract_id = record.contract_id;
        let length = record.file_length;
        let audit = audit_in(&mut record, FarmedAuditPhase::Tossed)?.clone();
        if let Some(reason) = &audit.caught {
            return Err(invalid(format!(
                "the renter's audit candidates failed: {reason}"
            )));
        }
        let seed = audit
            .seed
            .ok_or_else(|| internal("tossed without a seed"))?;
        let locks = raw_locks(&audit.proposal.locks);
        if let Some(reason) = self
            .openings_failure(&contract_id, length, &locks, &seed, &openings)
            .await?
        {
            tracing::warn!(contract = %hex::encode(contract_id), %reason, "the renter planted a bad audit lock: caught at the openings; the stake is kept");
            audit_in(&mut record, FarmedAuditPhase::Tossed)?.caught = Some(reason.clone());
            self.store(&record)?;
            return Err(invalid(format!(
                "the renter's audit candidates failed: {reason}"
            )));
        }
        let book = audit
            .book
            .clone()
            .ok_or_else(|| internal("tossed without a book"))?
            .with_kept_locks(opening::kept_locks(&locks, &seed))
            .map_err(invalid)?;
        let (fa, _) = self.audit_keys(&audit)?;
        let signatures = book
            .farmer_refund_signatures(&book.after_candidate_refund_ids(), &signing_keys(fa))
            .map_err(internal)?;
        let stored = audit_in(&mut record, FarmedAuditPhase::Tossed)?;
        stored.book = Some(book);
        stored.phase = FarmedAuditPhase::Swapping;
        Ok(Step {
            record,
            reply: AuditRefundSignatures { signatures },
        })
    }

    /// TX_A carries this farmer's own lease record for the contract at index N, right
    /// after O_0..O_{N−1} (issue 17); anything else is refused before a refund is signed.
    fn check_tx_a_lease(
        &self,
        tx_a: &bitcoin::Transaction,
        contract_id: &[u8; 32],
        audits: u32,
    ) -> Result<(), FarmerError> {
        let (identity, _) = self.identity.x_only_public_key();
        check_lease_in(tx_a, &identity, contract_id, audits as usize).map_err(|e| {
            invalid(format!(
                "TX_A must carry this farmer's lease record at output {audits}: {e}"
            ))
        })
    }

    /// Why the openings fail against the stored file, if they do (`None`: they pass).
    async fn openings_failure(
        &self,
        contract_id: &[u8; 32],
        length: u64,
        locks: &[Vec<Lock>],
        seed: &[u8; 32],
        openings: &AuditOpenings,
    ) -> Result<Option<String>, FarmerError> {
        let mut segments = std::collections::HashMap::new();
        for o in &openings.openings {
            let index = o.secret.segment_index;
            if index >= segment_count(length) || segments.contains_key(&index) {
                continue;
            }
            segments.insert(index, self.read_segment(contract_id, length, index).await?);
        }
        Ok(opening::check_openings(
            locks,
            seed,
            &openings.openings,
            segment_count(length),
            |i| segments.get(&i).cloned().unwrap_or_default(),
        )
        .err()
        .map(|e| e.to_string()))
    }

    /// Segment `index` of the stored file (its real bytes).
    pub(super) async fn read_segment(
        &self,
        contract_id: &[u8; 32],
        length: u64,
        index: u64,
    ) -> Result<Vec<u8>, FarmerError> {
        let start = index * SEGMENT_SIZE as u64;
        let end = (start + SEGMENT_SIZE as u64).min(length);
        let bytes = self
            .blobs
            .read_range(contract_id, start..end)
            .await
            .map_err(internal)?;
        Ok(bytes.to_vec())
    }

    /// One swap step: take the renter's signature on the previous candidate, give ours on
    /// the next.
    pub(super) async fn on_audit_swap(
        &self,
        mut record: FarmedContract,
        request: AuditSwap,
    ) -> Result<Step<AuditSwapReply>, FarmerError> {
        let fault_at_half = crate::dev_fault!(self.config.dev_fault, AuditSwapStopHalf);
        let audit = audit_in(&mut record, FarmedAuditPhase::Swapping)?;
        let fa = self.secret(Role::Audit, audit.funding_key_index)?;
        let book = audit
            .book
            .clone()
            .ok_or_else(|| internal("no audit book"))?;
        let total = book.swap_order().len();
        if let Some(signature) = request.renter_signature {
            let step = request
                .step
                .checked_sub(1)
                .ok_or_else(|| invalid("step 0 carries no signature"))?;
            audit
                .swap
                .receive(&book, step as usize, signature)
                .map_err(invalid)?;
        } else if request.step as usize != audit.swap.done.len() {
            return Err(invalid(format!(
                "swap step {} carries no renter signature; expected step {}",
                request.step,
                audit.swap.done.len()
            )));
        }
        if fault_at_half && audit.swap.done.len() >= total / 2 {
            return Err(invalid("dev fault: the farmer stops swapping halfway"));
        }
        let keys = SigningKeys {
            funding: fa,
            claim: None,
        };
        let reply = match audit.swap.next(&book, &keys) {
            Ok((step, signature)) => AuditSwapReply {
                step: step as u32,
                farmer_signature: Some(signature),
            },
            Err(dstore_protocol::audit::swap::SwapError::Complete) => {
                audit.phase = FarmedAuditPhase::Complete;
                AuditSwapReply {
                    step: total as u32,
                    farmer_signature: None,
                }
            }
            Err(e) => return Err(invalid(e)),
        };
        // Each audit whose candidates are all signed goes to the tower at once, so a
        // renter that stops halfway still leaves the farmer's tower holding what it can race.
        let m = book.kept_per_audit().max(1);
        if request.renter_signature.is_some() && audit.swap.done.len() % m == 0 {
            self.register_audit(&mut record).await;
        }
        Ok(Step { record, reply })
    }

    /// Hands the farmer's tower every candidate that is signed by both (it broadcasts the
    /// beacon's choice at each T_i), and every claim made so far.
    pub(super) async fn register_audit(&self, record: &mut FarmedContract) {
        let Some(tower) = self.config.tower.clone() else {
            return;
        };
        let Some(registration) = audit_registration(record) else {
            return;
        };
        match tower.register(&registration).await {
            Ok(verdict) => {
                tracing::info!(contract = %hex::encode(record.contract_id), %verdict, "audit candidates registered with the watchtower");
                if let Some(audit) = record.audit.as_mut() {
                    audit.tower_registered = true;
                }
            }
            Err(e) => tracing::warn!(
                contract = %hex::encode(record.contract_id),
                "watchtower registration of the audit failed ({e}); retried at the next start"
            ),
        }
    }

    /// The auditor's salt release: acted on only for a candidate confirmed on the chain
    /// (the endpoint is unauthenticated, and the renter knows every salt). x comes from our
    /// own copy of the segment; the claim is keyed by the candidate's txid, supersedes any
    /// claim of another candidate of the same audit (which now conflicts with a confirmed
    /// transaction), and is stored before it is broadcast.
    pub async fn audit_reveal(&self, request: RevealRequest) -> Result<RevealReply, FarmerError> {
        let _guard = self.locks.lock(&request.contract_id).await;
        let mut record = self.existing(&request.contract_id)?;
        if let Some(done) = live_claim(&record, &request.candidate_txid) {
            return Ok(RevealReply {
                claim_txid: done.claim.compute_txid(),
            });
        }
        let audit = record
            .audit
            .as_ref()
            .ok_or(FarmerError::WrongPhase("this contract has no audits"))?;
        let book = audit
            .book
            .clone()
            .ok_or(FarmerError::WrongPhase("the audit setup is not finished"))?;
        let lock = book
            .lock(request.audit, request.candidate)
            .map_err(invalid)?;
        let candidate = book
            .candidate(request.audit, request.candidate)
            .map_err(invalid)?;
        if candidate.tx.compute_txid() != request.candidate_txid {
            return Err(invalid("that is not the txid of this candidate"));
        }
        self.require_confirmed_unspent(&request.candidate_txid)
            .await?;
        let x = self.preimage_from_storage(&record, &lock, &request).await?;
        let (_, fc) = self.audit_keys(audit)?;
        let destination = self.wallet.new_script().map_err(internal)?;
        let claim = book
            .terms
            .claim(
                request.candidate_txid,
                &lock,
                &x,
                &fc,
                &destination,
                CLAIM_FEE,
            )
            .map_err(internal)?;
        let audit = record
            .audit
            .as_mut()
            .ok_or_else(|| internal("audit vanished"))?;
        for stale in audit
            .claims
            .iter_mut()
            .filter(|c| c.audit == request.audit && c.candidate_txid != request.candidate_txid)
        {
            tracing::info!(contract = %hex::encode(request.contract_id), audit = stale.audit, candidate = %stale.candidate_txid, "a claim of an unconfirmed candidate is superseded");
            stale.superseded = true;
        }
        audit.claims.push(AuditClaim {
            audit: request.audit,
            candidate: request.candidate,
            candidate_txid: request.candidate_txid,
            claim: claim.clone(),
            superseded: false,
            broadcast_height: None,
            bumps: Vec::new(),
        });
        self.store(&record)?;
        self.register_audit(&mut record).await;
        self.store(&record)?;
        self.broadcast(&claim).await?;
        self.note_broadcast_height(&mut record, &claim).await;
        tracing::info!(contract = %hex::encode(record.contract_id), audit = request.audit, claim = %claim.compute_txid(), "audit passed: claim broadcast");
        Ok(RevealReply {
            claim_txid: claim.compute_txid(),
        })
    }

    /// Confirmations of `txid`'s output 0 while it is unspent in our bitcoind's UTXO set
    /// (0 when unconfirmed, spent or unknown).
    async fn output0_confirmations(&self, txid: &bitcoin::Txid) -> Result<u32, FarmerError> {
        let found = self
            .bitcoind
            .call("gettxout", serde_json::json!([txid.to_string(), 0, false]))
            .await
            .map_err(internal)?;
        Ok(found["confirmations"].as_u64().unwrap_or(0) as u32)
    }

    /// The candidate's output 0 is in bitcoind's UTXO set, confirmed (not only in the
    /// mempool): a release of any other candidate is refused and changes nothing.
    async fn require_confirmed_unspent(
        &self,
        candidate: &bitcoin::Txid,
    ) -> Result<(), FarmerError> {
        if self.output0_confirmations(candidate).await? == 0 {
            return Err(FarmerError::WrongPhase(
                "that candidate is not confirmed (or its output is already spent)",
            ));
        }
        Ok(())
    }

    async fn preimage_from_storage(
        &self,
        record: &FarmedContract,
        lock: &Lock,
        request: &RevealRequest,
    ) -> Result<[u8; 32], FarmerError> {
        candidates::check_index(&request.secret, segment_count(record.file_length))
            .map_err(invalid)?;
        let segment = self
            .read_segment(
                &record.contract_id,
                record.file_length,
                request.secret.segment_index,
            )
            .await?;
        candidates::check_opening(lock, &request.secret, &segment)
            .map_err(|e| invalid(format!("the release does not open this candidate: {e}")))
    }

    /// Answers an off-chain Merkle challenge from the stored Merkle leaves of the file plus
    /// the k challenged segments read from the blob (each checked against its leaf), so an
    /// answer reads 32 bytes per segment and k segments, not the whole file. The leaves are
    /// computed once, by one pass over the blob, and kept beside the work files.
    pub async fn merkle_answer(&self, request: MerkleRequest) -> Result<MerkleAnswer, FarmerError> {
        if request.k == 0 || request.k as usize > MAX_CHALLENGE {
            return Err(invalid(format!("k must be 1 to {MAX_CHALLENGE}")));
        }
        let record = self.existing(&request.contract_id)?;
        if record.receipt.is_none() {
            return Err(FarmerError::WrongPhase("the upload is not finished"));
        }
        let block_hash = request.block_hash.to_byte_array();
        let mut builder = AnswerBuilder::for_challenge(
            &request.contract_id,
            &block_hash,
            record.file_length,
            request.k as usize,
        )
        .map_err(invalid)?;
        for leaf in self.stored_leaves(&record).await? {
            builder.push_leaf(leaf).map_err(internal)?;
        }
        for index in builder.indices() {
            let segment = self
                .read_segment(&record.contract_id, record.file_length, index)
                .await?;
            builder.add_segment(index, segment).map_err(internal)?;
        }
        builder
            .finish(request.contract_id, block_hash)
            .map_err(internal)
    }

    /// The Merkle leaf hashes of the stored file: read from `<work_dir>/leaves/<id>`, or
    /// computed by one pass over the blob and written there first (atomically).
    async fn stored_leaves(&self, record: &FarmedContract) -> Result<Vec<[u8; 32]>, FarmerError> {
        let path = self.leaves_path(&record.contract_id);
        let count = segment_count(record.file_length) as usize;
        if let Ok(bytes) = tokio::fs::read(&path).await {
            if bytes.len() == count * 32 {
                return Ok(bytes
                    .chunks_exact(32)
                    .map(|c| c.try_into().expect("32-byte chunks"))
                    .collect());
            }
            tracing::warn!(path = %path.display(), "stored Merkle leaves have the wrong size; computing them again");
        }
        let leaves = self.compute_leaves(record).await?;
        let dir = path.parent().ok_or_else(|| internal("leaf path"))?;
        tokio::fs::create_dir_all(dir).await.map_err(internal)?;
        let tmp = path.with_extension("tmp");
        tokio::fs::write(&tmp, leaves.concat())
            .await
            .map_err(internal)?;
        tokio::fs::rename(&tmp, &path).await.map_err(internal)?;
        Ok(leaves)
    }

    fn leaves_path(&self, contract_id: &[u8; 32]) -> std::path::PathBuf {
        self.config
            .work_dir
            .join("leaves")
            .join(hex::encode(contract_id))
    }

    /// One pass over the blob, hashing each segment into its leaf.
    async fn compute_leaves(&self, record: &FarmedContract) -> Result<Vec<[u8; 32]>, FarmerError> {
        let mut leaves = Vec::with_capacity(segment_count(record.file_length) as usize);
        let mut offset = 0;
        while offset < record.file_length {
            let end = (offset + MERKLE_READ_BATCH).min(record.file_length);
            let bytes = self
                .blobs
                .read_range(&record.contract_id, offset..end)
                .await
                .map_err(internal)?;
            for segment in bytes.chunks(SEGMENT_SIZE) {
                leaves.push(leaf_hash(segment).map_err(internal)?);
            }
            offset = end;
        }
        Ok(leaves)
    }

    /// After a restart: re-registers audits the tower does not hold yet and re-sends claims
    /// that may not have been broadcast.
    pub(super) async fn resume_audits(&self, record: &mut FarmedContract) {
        let Some(audit) = record.audit.clone() else {
            return;
        };
        if !audit.tower_registered && audit.phase == FarmedAuditPhase::Complete {
            self.register_audit(record).await;
            let _ = self.store(record);
        }
        for claim in audit.claims.iter().filter(|c| !c.superseded) {
            let bump = claim.bumps.last().map(|b| &b.tx);
            for tx in std::iter::once(&claim.claim).chain(bump) {
                if let Err(e) = self.broadcast(tx).await {
                    tracing::debug!("re-broadcasting an audit claim: {e}");
                }
            }
        }
    }
}

/// The renter's stake must be at least an m-th of one audit's amount (and 330 sat): a
/// renter caught planting a lock at the openings then loses more than planting gains.
fn check_proposed_stake(proposal: &AuditProposal) -> Result<(), FarmerError> {
    let t = &proposal.terms;
    let per_audit = check_shape(&raw_locks(&proposal.locks)).map_err(invalid)?;
    let kept = per_audit / 2;
    let needed = required_stake(t.amount, kept);
    if t.stake < needed {
        return Err(invalid(format!(
            "the proposed stake is {} sat; audits of {} sat with {kept} kept candidates each need a stake of at least {} sat",
            t.stake.to_sat(),
            t.amount.to_sat(),
            needed.to_sat()
        )));
    }
    Ok(())
}

/// The farmer's keys for signing refunds and candidates (Fa only).
fn signing_keys(funding: SecretKey) -> SigningKeys {
    SigningKeys {
        funding,
        claim: None,
    }
}

/// The locks of a proposal as plain byte arrays.
fn raw_locks(locks: &[Vec<KeptLock>]) -> Vec<Vec<Lock>> {
    locks
        .iter()
        .map(|a| a.iter().map(|k| k.0).collect())
        .collect()
}

/// The contract's audit state, which must be in `phase`.
fn audit_in(
    record: &mut FarmedContract,
    phase: FarmedAuditPhase,
) -> Result<&mut FarmedAudit, FarmerError> {
    match record.audit.as_mut() {
        Some(audit) if audit.phase == phase => Ok(audit),
        Some(_) => Err(FarmerError::WrongPhase(phase.expected_message())),
        None => Err(FarmerError::WrongPhase("no audit proposal yet")),
    }
}

/// What the farmer's tower holds for a contract's audits: every candidate signed by both
/// (grouped by audit) and the claims so far.
fn audit_registration(record: &FarmedContract) -> Option<Registration> {
    let audit = record.audit.as_ref()?;
    let book = audit.book.as_ref()?;
    let mut transactions: Vec<Presigned> = audit
        .swap
        .signed_candidates(book)
        .into_iter()
        .map(|c| Presigned {
            name: format!("audit-{}-candidate-{}", c.audit, c.j),
            tx: c.tx,
            group: Some(c.audit),
            hold: None,
            bump: None,
        })
        .collect();
    transactions.extend(audit.claims.iter().filter(|c| !c.superseded).map(|c| {
        Presigned::new(
            format!("audit-{}-claim-{}", c.audit, c.candidate),
            c.claim.clone(),
        )
    }));
    if transactions.is_empty() {
        return None;
    }
    Some(Registration {
        id: record.contract_id,
        role: WatchRole::Farmer,
        extract: None,
        transactions,
        watch_txids: Vec::new(),
        rescan_from_height: Some(book.terms.first_audit_height.saturating_sub(1)),
        auditor: None,
    })
}

/// A claim that was made (for status output).
pub fn claim_summary(claim: &AuditClaim) -> serde_json::Value {
    serde_json::json!({
        "audit": claim.audit,
        "candidate": claim.candidate,
        "candidate_txid": claim.candidate_txid,
        "claim_txid": claim.claim.compute_txid(),
        "amount_sat": claim.claim.output.first().map(|o| o.value.to_sat()),
        "superseded": claim.superseded,
        "broadcast_height": claim.broadcast_height,
        "bumps": claim.bumps.iter().map(|b| serde_json::json!({
            "txid": b.txid,
            "package_sat_vb": b.package_sat_vb,
            "fee_sat": b.fee.to_sat(),
            "height": b.height,
        })).collect::<Vec<_>>(),
    })
}

/// The claim of candidate `candidate_txid` that still stands, if one was made.
fn live_claim<'a>(
    record: &'a FarmedContract,
    candidate_txid: &bitcoin::Txid,
) -> Option<&'a AuditClaim> {
    record
        .audit
        .as_ref()?
        .claims
        .iter()
        .find(|c| c.candidate_txid == *candidate_txid && !c.superseded)
}
