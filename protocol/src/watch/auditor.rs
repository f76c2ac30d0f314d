//! The auditor's part of a watch (PROTOCOL.md 5), with no I/O: which confirmed candidates'
//! salts are due for release to the farmer, the off-chain Merkle audit record, and the
//! per-audit report a tower shows.
//!
//! A watch whose registration carries an [`AuditorSpec`] gets an [`AuditState`]: the txid
//! of every kept candidate A_ij (computed from the book: all inputs are segwit, so the
//! unsigned candidate has the signed one's txid), so the watch follows the candidates,
//! their outputs and TX_A's outputs O_i even when the registration holds no transaction
//! (a third-party auditor). A spend of a candidate's output that reveals its preimage x is
//! recorded as a claim.
//!
//! Releases follow the tower's write-ahead rule: the attempt is recorded (and stored by the
//! shell) before the request leaves, its answer after. A release is due only for a
//! candidate confirmed on the chain the tower follows, until the farmer accepts it or the
//! candidate's output is spent.

use bitcoin::hashes::{hash160, Hash};
use bitcoin::{BlockHash, OutPoint, Transaction, Txid};
use serde::{Deserialize, Serialize};

use super::{lock_height, Watch};
use crate::audit::book::AuditBook;
use crate::audit::transactions::AuditTxError;
use crate::audit::wire::RevealRequest;
use crate::watch::registration::AuditorSpec;

/// Merkle audit records kept per watch (the oldest are dropped).
pub const MAX_MERKLE_RECORDS: usize = 100;

/// Longest error text kept in a record.
const MAX_ERROR_LEN: usize = 300;

/// The auditor's bookkeeping for one contract (persisted with the watch; no secret in it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditState {
    /// Per audit i, the txid of each kept candidate j.
    pub candidates: Vec<Vec<Txid>>,
    /// Transactions seen spending a candidate's output with its preimage x (claims).
    #[serde(default)]
    pub claims: Vec<Txid>,
    /// One record per candidate whose salt release was attempted.
    #[serde(default)]
    pub releases: Vec<Release>,
    /// The latest off-chain Merkle audits, oldest first (at most [`MAX_MERKLE_RECORDS`]).
    #[serde(default)]
    pub merkle: Vec<MerkleRecord>,
    /// The first failed Merkle audit: from then on the audits still ahead are withheld.
    #[serde(default)]
    pub failure: Option<MerkleRecord>,
    /// Height of the first Merkle audit of the current run of tries that could not reach
    /// the farmer (cleared by any answer).
    #[serde(default)]
    pub unreachable_since: Option<u32>,
    /// Tries in that run (the back-off doubles with each).
    #[serde(default)]
    pub unreachable_tries: u32,
    /// Every Merkle audit that could not reach the farmer, over the watch's life.
    #[serde(default)]
    pub unreachable_total: u32,
}

/// The salt release of one confirmed candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub audit: u32,
    pub candidate: u32,
    pub candidate_txid: Txid,
    /// Requests sent (each recorded before it left).
    pub attempts: u32,
    /// Tip height of the last request.
    pub last_attempt_height: Option<u32>,
    /// Tip height at which the farmer accepted the release (HTTP 200).
    pub released_height: Option<u32>,
    /// The claim the farmer says it broadcast.
    pub claim_txid: Option<Txid>,
    /// Why the last request failed, if it did.
    pub last_error: Option<String>,
}

/// One off-chain Merkle audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerkleRecord {
    /// The tip (and its hash) the challenge was drawn from.
    pub height: u32,
    pub block_hash: BlockHash,
    /// Segments challenged.
    pub k: u32,
    pub ok: bool,
    pub error: Option<String>,
    /// The farmer could not be reached or did not answer in time: not a failure by
    /// itself, retried with back-off (a failure only after a whole claim window of it).
    #[serde(default)]
    pub unreachable: bool,
}

/// A release the shell should send now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseDue {
    pub audit: u32,
    pub candidate: u32,
    pub candidate_txid: Txid,
}

/// The txid of every kept candidate, per audit.
pub fn candidate_txids(book: &AuditBook) -> Result<Vec<Vec<Txid>>, AuditTxError> {
    let m = book.kept_per_audit() as u32;
    (0..book.terms.audits)
        .map(|i| {
            (0..m)
                .map(|j| Ok(book.candidate(i, j)?.tx.compute_txid()))
                .collect()
        })
        .collect()
}

/// Cuts an error text to a bounded length for a record.
pub fn short_error(text: impl Into<String>) -> String {
    let mut text: String = text.into();
    if text.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

impl AuditState {
    /// The bookkeeping for `spec` (whose book [`AuditorSpec::check`] accepted).
    pub fn new(spec: &AuditorSpec) -> Self {
        AuditState {
            candidates: candidate_txids(&spec.book).unwrap_or_default(),
            ..AuditState::default()
        }
    }

    /// (audit, j) of candidate `txid`.
    pub fn position(&self, txid: &Txid) -> Option<(u32, u32)> {
        self.candidates.iter().enumerate().find_map(|(i, txids)| {
            let j = txids.iter().position(|t| t == txid)?;
            Some((i as u32, j as u32))
        })
    }

    /// Output 0 of every candidate.
    pub fn candidate_outpoints(&self) -> impl Iterator<Item = OutPoint> + '_ {
        self.candidates
            .iter()
            .flatten()
            .map(|txid| OutPoint::new(*txid, 0))
    }

    fn release(&self, audit: u32, candidate: u32) -> Option<&Release> {
        self.releases
            .iter()
            .find(|r| r.audit == audit && r.candidate == candidate)
    }

    fn release_mut(&mut self, audit: u32, candidate: u32, txid: Txid) -> &mut Release {
        if let Some(i) = self
            .releases
            .iter()
            .position(|r| r.audit == audit && r.candidate == candidate)
        {
            return &mut self.releases[i];
        }
        self.releases.push(Release {
            audit,
            candidate,
            candidate_txid: txid,
            attempts: 0,
            last_attempt_height: None,
            released_height: None,
            claim_txid: None,
            last_error: None,
        });
        self.releases.last_mut().expect("just pushed")
    }
}

impl Watch {
    /// Records `tx` as a claim if its input `index` spends a candidate's output with the
    /// candidate's preimage in its witness. True if new.
    pub(super) fn note_claim(&mut self, tx: &Transaction, index: usize) -> bool {
        let (Some(audit), Some(spec)) = (&mut self.audit, &self.registration.auditor) else {
            return false;
        };
        let input = &tx.input[index];
        if input.previous_output.vout != 0 {
            return false;
        }
        let Some((i, j)) = audit.position(&input.previous_output.txid) else {
            return false;
        };
        let Ok(lock) = spec.book.lock(i, j) else {
            return false;
        };
        let reveals = input
            .witness
            .iter()
            .any(|item| item.len() == 32 && hash160::Hash::hash(item).to_byte_array() == lock);
        let txid = tx.compute_txid();
        if !reveals || audit.claims.contains(&txid) {
            return false;
        }
        audit.claims.push(txid);
        true
    }

    /// Candidates of this auditor watch confirmed on the chain whose salt the farmer has
    /// not accepted yet and whose output is unspent: their releases are due. After a
    /// failed Merkle audit no salt of a later audit is released (PROTOCOL.md 5: a failure
    /// ends the contract early), so a candidate the farmer races in itself falls to the
    /// renter's RF_ij after W.
    pub fn releases_due(&self) -> Vec<ReleaseDue> {
        let Some(audit) = &self.audit else {
            return Vec::new();
        };
        let terms = self.registration.auditor.as_ref().map(|s| s.book.terms);
        let mut due = Vec::new();
        for (i, txids) in audit.candidates.iter().enumerate() {
            let ended = terms.is_some_and(|t| self.withheld(t.audit_height(i as u32)));
            if ended {
                continue;
            }
            for (j, txid) in txids.iter().enumerate() {
                let (i, j) = (i as u32, j as u32);
                let confirmed = matches!(self.sighting(txid), Some(Some(_)));
                let released = audit
                    .release(i, j)
                    .is_some_and(|r| r.released_height.is_some());
                let spent = self.spend_of(&OutPoint::new(*txid, 0)).is_some();
                if confirmed && !released && !spent {
                    due.push(ReleaseDue {
                        audit: i,
                        candidate: j,
                        candidate_txid: *txid,
                    });
                }
            }
        }
        due
    }

    /// The request releasing `due`'s secret, if it is still due.
    pub fn reveal_request(&self, due: &ReleaseDue) -> Option<RevealRequest> {
        let spec = self.registration.auditor.as_ref()?;
        if !self.releases_due().contains(due) {
            return None;
        }
        let secret = *spec
            .secrets
            .get(due.audit as usize)?
            .get(due.candidate as usize)?;
        Some(RevealRequest {
            contract_id: spec.book.terms.contract_id,
            audit: due.audit,
            candidate: due.candidate,
            candidate_txid: due.candidate_txid,
            secret,
        })
    }

    /// Records a release request about to be sent at `tip` (before sending it).
    pub fn record_release_attempt(&mut self, due: &ReleaseDue, tip: u32) {
        if let Some(audit) = &mut self.audit {
            let release = audit.release_mut(due.audit, due.candidate, due.candidate_txid);
            release.attempts += 1;
            release.last_attempt_height = Some(tip);
        }
    }

    /// Records the farmer's answer to a release sent at `tip`: the claim's txid, or why it
    /// failed.
    pub fn record_release_outcome(
        &mut self,
        due: &ReleaseDue,
        tip: u32,
        outcome: Result<Txid, String>,
    ) {
        if let Some(audit) = &mut self.audit {
            let release = audit.release_mut(due.audit, due.candidate, due.candidate_txid);
            match outcome {
                Ok(claim) => {
                    release.released_height = Some(tip);
                    release.claim_txid = Some(claim);
                    release.last_error = None;
                }
                Err(e) => release.last_error = Some(short_error(e)),
            }
        }
    }

    /// Whether an off-chain Merkle audit is due at `tip` with one every `every` blocks:
    /// an auditor watch whose audits are not all over (and the last one's refund height
    /// not passed), last audited `every` or more blocks ago (or never). While the farmer
    /// is unreachable it is tried again sooner: 1, 2, 4, … blocks after the last try (at
    /// most `every`).
    pub fn merkle_audit_due(&self, tip: u32, every: u32) -> bool {
        let (Some(audit), Some(spec)) = (&self.audit, &self.registration.auditor) else {
            return false;
        };
        let terms = &spec.book.terms;
        if every == 0 || tip > terms.refund_height(terms.audits - 1) || self.audits_over() {
            return false;
        }
        let wait = match audit.unreachable_since {
            Some(_) => unreachable_backoff(audit.unreachable_tries, every),
            None => every,
        };
        audit
            .merkle
            .last()
            .is_none_or(|last| tip >= last.height.saturating_add(wait))
    }

    /// The first tip above `tip` at which [`merkle_audit_due`](Self::merkle_audit_due)
    /// may hold with one audit every `every` blocks (the tower wakes the watch there);
    /// `None` once no Merkle audit is ahead. While one is due (in flight, or not answered
    /// yet) that is the next block.
    pub fn next_merkle_audit(&self, tip: u32, every: u32) -> Option<u32> {
        let (Some(audit), Some(spec)) = (&self.audit, &self.registration.auditor) else {
            return None;
        };
        let terms = &spec.book.terms;
        let last = terms.refund_height(terms.audits - 1);
        if every == 0 || tip >= last || self.audits_over() {
            return None;
        }
        let wait = match audit.unreachable_since {
            Some(_) => unreachable_backoff(audit.unreachable_tries, every),
            None => every,
        };
        let next = audit
            .merkle
            .last()
            .map_or(tip + 1, |l| l.height.saturating_add(wait))
            .max(tip + 1);
        (next <= last).then_some(next)
    }

    /// Records an off-chain Merkle audit. Only a verified wrong answer is a failure, or a
    /// farmer unreachable at every try for a whole claim window W. The first failure
    /// marks the audits failed and withholds the candidates of every audit after
    /// `record.height`.
    pub fn record_merkle_audit(&mut self, mut record: MerkleRecord) {
        let window = self
            .registration
            .auditor
            .as_ref()
            .map_or(1, |s| u32::from(s.book.terms.claim_window));
        let Some(audit) = &mut self.audit else {
            return;
        };
        record.error = record.error.map(short_error);
        let failed = if record.unreachable && !record.ok {
            let since = *audit.unreachable_since.get_or_insert(record.height);
            audit.unreachable_tries += 1;
            audit.unreachable_total += 1;
            record.height >= since.saturating_add(window)
        } else {
            audit.unreachable_since = None;
            audit.unreachable_tries = 0;
            !record.ok
        };
        if failed && audit.failure.is_none() {
            let mut failure = record.clone();
            if record.unreachable {
                let since = audit.unreachable_since.unwrap_or(record.height);
                failure.error = Some(short_error(format!(
                    "the farmer was unreachable at every try from height {since} on, a whole claim window of {window} blocks: {}",
                    record.error.as_deref().unwrap_or("no answer")
                )));
            }
            audit.failure = Some(failure);
        }
        audit.merkle.push(record);
        let excess = audit.merkle.len().saturating_sub(MAX_MERKLE_RECORDS);
        audit.merkle.drain(..excess);
        if let Some(failure) = &audit.failure {
            let height = failure.height;
            self.withhold_groups_above(height);
        }
    }

    /// The `audits` section of the tower's status, if the watch has audits (an auditor
    /// spec or grouped transactions).
    pub fn audits_report(&self, tip: Option<u32>) -> Option<AuditsReport> {
        let rows = self.audit_rows();
        if rows.is_empty() {
            return None;
        }
        let audits = rows.iter().map(|row| self.audit_report(row, tip)).collect();
        let audit = self.audit.as_ref();
        let records = audit.map(|a| a.merkle.clone()).unwrap_or_default();
        let failure = audit.and_then(|a| a.failure.clone());
        Some(AuditsReport {
            auditor: self.registration.auditor.is_some(),
            farmer_url: self
                .registration
                .auditor
                .as_ref()
                .map(|s| s.farmer_url.clone()),
            audits_failed: failure.is_some(),
            failure,
            withheld_above: self.groups_withheld_above,
            audits,
            merkle: MerkleSummary {
                passed: records.iter().filter(|r| r.ok).count(),
                failed: records.iter().filter(|r| !r.ok && !r.unreachable).count(),
                unreachable: audit.map_or(0, |a| a.unreachable_total),
                unreachable_since: audit.and_then(|a| a.unreachable_since),
                records,
            },
        })
    }

    /// Whether every audit has ended on the chain (paid or refunded).
    pub fn audits_over(&self) -> bool {
        self.audit_rows().iter().all(|row| {
            let candidate = self.seen_candidate(row);
            self.settlement(row, candidate.as_ref()).is_some()
        })
    }

    /// True when the watch has no audits, or every audit ended on the chain and no salt
    /// release is due any more: nothing audit-related can change (compaction may come).
    pub fn audits_settled(&self) -> bool {
        self.audits_over() && self.releases_due().is_empty()
    }

    /// The `audits` section a compacted contract keeps: as at `tip`, without the Merkle
    /// records (their counts stay).
    pub fn final_audits_report(&self, tip: u32) -> Option<AuditsReport> {
        let mut report = self.audits_report(Some(tip))?;
        report.merkle.records = Vec::new();
        Some(report)
    }

    /// The next tip at which the audits need the watch evaluated without a chain event:
    /// a salt release to (re)send, or a group of an audit still running whose beacon
    /// block's hash is missing (the shell looks it up).
    pub(super) fn audit_wake(&self, tip: u32) -> Option<u32> {
        let hash_missing = self
            .beacon_heights()
            .into_iter()
            .any(|h| h <= tip && self.beacon_hash(h).is_none())
            && !self.audits_over();
        (hash_missing || !self.releases_due().is_empty()).then_some(tip + 1)
    }

    /// One row per audit: from the auditor spec, else from the groups.
    fn audit_rows(&self) -> Vec<AuditRow> {
        if let (Some(audit), Some(spec)) = (&self.audit, &self.registration.auditor) {
            let terms = &spec.book.terms;
            return audit
                .candidates
                .iter()
                .enumerate()
                .map(|(i, txids)| AuditRow {
                    audit: i as u32,
                    height: terms.audit_height(i as u32),
                    funding: OutPoint::new(spec.book.funding_txid, i as u32),
                    candidates: txids.clone(),
                })
                .collect();
        }
        let groups: std::collections::BTreeSet<u32> = self
            .registration
            .transactions
            .iter()
            .filter_map(|p| p.group)
            .collect();
        groups
            .into_iter()
            .filter_map(|g| {
                let members: Vec<_> = self.registration.group_members(g).collect();
                let first = members.first()?;
                Some(AuditRow {
                    audit: g,
                    height: lock_height(&first.tx)?,
                    funding: first.tx.input.first()?.previous_output,
                    candidates: members.iter().map(|p| p.tx.compute_txid()).collect(),
                })
            })
            .collect()
    }

    fn audit_report(&self, row: &AuditRow, tip: Option<u32>) -> AuditReport {
        let candidate = self.seen_candidate(row);
        let release = candidate.as_ref().and_then(|c| {
            self.audit
                .as_ref()
                .and_then(|a| a.release(row.audit, c.j).cloned())
        });
        let settlement = self.settlement(row, candidate.as_ref());
        let withheld = self.withheld(row.height);
        let outcome = match (&settlement, &candidate) {
            (Some((outcome, _)), _) => *outcome,
            (None, Some(_)) => AuditOutcome::Pending,
            (None, None) if withheld => AuditOutcome::Withheld,
            (None, None) if tip.is_none_or(|t| t < row.height) => AuditOutcome::Waiting,
            (None, None) => AuditOutcome::Pending,
        };
        AuditReport {
            audit: row.audit,
            height: row.height,
            beacon: self.beacon_index(row),
            candidate,
            release,
            outcome,
            settled_by: settlement.map(|(_, txid)| txid),
            withheld,
        }
    }

    /// The beacon's pick for this audit, once block T − 1 is known.
    fn beacon_index(&self, row: &AuditRow) -> Option<u32> {
        let hash = self.beacon_hash(row.height.checked_sub(1)?)?;
        let id = &self.registration.id;
        Some(crate::audit::beacon::beacon_candidate(
            id,
            &hash.to_byte_array(),
            row.candidates.len(),
        ))
    }

    /// The candidate of `row` seen: a confirmed one, else one in the mempool.
    fn seen_candidate(&self, row: &AuditRow) -> Option<CandidateReport> {
        let report = |j: usize, height: Option<u32>| CandidateReport {
            j: j as u32,
            txid: row.candidates[j],
            height,
        };
        let confirmed = row
            .candidates
            .iter()
            .enumerate()
            .find_map(|(j, t)| self.sighting(t).flatten().map(|h| report(j, Some(h))));
        confirmed.or_else(|| {
            let first_seen = self
                .seen
                .iter()
                .find(|s| s.height.is_none() && row.candidates.contains(&s.txid))?;
            let j = row.candidates.iter().position(|t| *t == first_seen.txid)?;
            Some(report(j, None))
        })
    }

    /// How the audit ended, if it did: a confirmed spend of the confirmed candidate's
    /// output (a claim: paid; the renter's reclaim or RF_ij: refunded), or a confirmed
    /// spend of O_i by anything but a candidate (a refund RF).
    fn settlement(
        &self,
        row: &AuditRow,
        candidate: Option<&CandidateReport>,
    ) -> Option<(AuditOutcome, Txid)> {
        if let Some(c) = candidate.filter(|c| c.height.is_some()) {
            let spend = self.spend_of(&OutPoint::new(c.txid, 0))?;
            spend.height?;
            return Some((self.classify(row.audit, c.j, &spend.spender), spend.spender));
        }
        let spend = self.spend_of(&row.funding)?;
        spend.height?;
        (!row.candidates.contains(&spend.spender))
            .then_some((AuditOutcome::Refunded, spend.spender))
    }

    /// Whether `spender` of candidate j's output paid the farmer or refunded the renter.
    fn classify(&self, audit: u32, j: u32, spender: &Txid) -> AuditOutcome {
        if let Some(state) = &self.audit {
            if state.claims.contains(spender) {
                return AuditOutcome::Paid;
            }
            // The output's only other path is the renter's (reclaim or RF_ij).
            return AuditOutcome::Refunded;
        }
        let ours = [
            format!("audit-{audit}-refund-after-{j}"),
            format!("audit-{audit}-reclaim-{j}"),
        ];
        let refund = self
            .registration
            .transactions
            .iter()
            .any(|p| ours.contains(&p.name) && p.tx.compute_txid() == *spender);
        if refund {
            AuditOutcome::Refunded
        } else {
            AuditOutcome::Paid
        }
    }
}

/// Blocks to wait before the next Merkle try after `tries` unreachable ones in a row:
/// 1, 2, 4, … capped at `every`.
pub fn unreachable_backoff(tries: u32, every: u32) -> u32 {
    let doubling = 1u32 << tries.saturating_sub(1).min(16);
    doubling.min(every).max(1)
}

/// What the report needs of one audit.
struct AuditRow {
    audit: u32,
    height: u32,
    /// O_i.
    funding: OutPoint,
    candidates: Vec<Txid>,
}

/// Where one audit stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    /// T_i not reached and no candidate seen.
    Waiting,
    /// A candidate is out (or due): the farmer's claim window runs.
    Pending,
    /// Its candidates are withheld after a failed Merkle audit; RF will refund it.
    Withheld,
    /// The farmer claimed the confirmed candidate's output.
    Paid,
    /// A reclaim or refund returned the money to the renter.
    Refunded,
}

/// The candidate of an audit seen on the chain (`height`) or in the mempool (`null`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidateReport {
    pub j: u32,
    pub txid: Txid,
    pub height: Option<u32>,
}

/// One audit in the tower's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditReport {
    pub audit: u32,
    /// T_i: candidates enter the mempool at this tip and are mined from T_i + 1.
    pub height: u32,
    /// The beacon's choice j, once block T_i − 1 is known to the tower.
    pub beacon: Option<u32>,
    pub candidate: Option<CandidateReport>,
    /// The salt release (auditor only).
    pub release: Option<Release>,
    pub outcome: AuditOutcome,
    /// The confirmed claim or refund that ended the audit.
    pub settled_by: Option<Txid>,
    /// The audit's candidates are withheld (a failed Merkle audit came before T_i).
    pub withheld: bool,
}

/// The Merkle audits of a watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerkleSummary {
    /// Among the kept records: answers that verified, and verified wrong answers.
    pub passed: usize,
    pub failed: usize,
    /// Tries that could not reach the farmer (transport errors, timeouts), ever.
    pub unreachable: u32,
    /// Start of the current run of unreachable tries, if one is running.
    pub unreachable_since: Option<u32>,
    pub records: Vec<MerkleRecord>,
}

/// The `audits` section of `tower-status` for a watch with audits. As JSON:
///
/// ```text
/// {
///   "auditor": true,                      // this tower holds the salts and releases them
///   "farmer_url": "http://…" | null,
///   "audits_failed": false,               // a Merkle audit failed
///   "failure": null | {MerkleRecord},     // the first failed one
///   "withheld_above": null | height,      // candidates of audits with T_i above are withheld
///   "audits": [{
///     "audit": 0, "height": T_i, "beacon": j | null,
///     "candidate": null | {"j": 1, "txid": "…", "height": h | null},
///     "release": null | {"audit": 0, "candidate": 1, "candidate_txid": "…",
///                        "attempts": 1, "last_attempt_height": h,
///                        "released_height": h | null, "claim_txid": "…" | null,
///                        "last_error": "…" | null},
///     "outcome": "waiting" | "pending" | "withheld" | "paid" | "refunded",
///     "settled_by": "txid" | null,        // the confirmed claim or refund
///     "withheld": false
///   }],
///   "merkle": {"passed": 3, "failed": 0, "unreachable": 1, "unreachable_since": null,
///     "records": [{"height": h, "block_hash": "…", "k": 16, "ok": true, "error": null,
///                  "unreachable": false}]}
/// }
/// ```
///
/// A compacted contract keeps this section as it stood at compaction, without the Merkle
/// `records` (history, like its chain sightings): [`Watch::final_audits_report`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditsReport {
    pub auditor: bool,
    pub farmer_url: Option<String>,
    pub audits_failed: bool,
    pub failure: Option<MerkleRecord>,
    pub withheld_above: Option<u32>,
    pub audits: Vec<AuditReport>,
    pub merkle: MerkleSummary,
}
