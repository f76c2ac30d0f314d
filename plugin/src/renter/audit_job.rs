//! The audit setup's background job. Once TX_A (with the stake) is broadcast the rest of
//! the setup (the wait for TX_A's confirmations, tens of minutes on mainnet, then the toss,
//! the openings and the swap) runs in a task that holds the contract's lock and outlives
//! the `dstore-open` call: the call returns once only the chain is awaited (or after its
//! `wait_seconds`), a client that goes away cancels nothing, and after a restart the same
//! job finishes the setup from its stored phase.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

use serde_json::{json, Value};
use tokio::sync::Notify;

use super::records::{RentedAuditPhase, RentedContract};
use super::{Renter, RenterError};

/// One running audit setup, shared by its task and the `dstore-open` calls waiting for it.
#[derive(Default)]
pub struct AuditJob {
    /// Only the chain is awaited now (TX_A's confirmations).
    waiting: Mutex<bool>,
    changed: Notify,
}

impl AuditJob {
    fn waiting(&self) -> bool {
        *self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_waiting(&self, waiting: bool) {
        *self.waiting.lock().unwrap_or_else(|e| e.into_inner()) = waiting;
        self.changed.notify_waiters();
    }
}

/// The running audit setups by contract id, and the renter they run on.
#[derive(Default)]
pub struct AuditJobs {
    running: Mutex<HashMap<[u8; 32], Arc<AuditJob>>>,
    /// Set once the renter is shared ([`Renter::bind_audit_jobs`]): a job's task needs it.
    renter: OnceLock<Weak<Renter>>,
}

impl AuditJobs {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<[u8; 32], Arc<AuditJob>>) -> T) -> T {
        f(&mut self.running.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn get(&self, id: &[u8; 32]) -> Option<Arc<AuditJob>> {
        self.with(|running| running.get(id).cloned())
    }
}

impl Renter {
    /// Lets the renter start audit jobs (called once at start, on the shared renter).
    pub(super) fn bind_audit_jobs(self: &Arc<Self>) {
        let _ = self.audit_jobs.renter.set(Arc::downgrade(self));
    }

    /// Starts (unless it runs) the background job that finishes contract `id`'s audit
    /// setup. Without a bound renter the setup resumes at the next start instead.
    pub(super) fn start_audit_job(&self, id: &[u8; 32]) {
        match self.audit_jobs.renter.get().and_then(Weak::upgrade) {
            Some(renter) => {
                renter.spawn_audit_job(*id);
            }
            None => {
                tracing::warn!(contract = %hex::encode(id), "no audit job runner: the audit setup resumes at the next start")
            }
        }
    }

    /// The running job of contract `id`, or a new one.
    pub(super) fn spawn_audit_job(self: &Arc<Self>, id: [u8; 32]) -> Arc<AuditJob> {
        self.audit_jobs.with(|running| {
            if let Some(job) = running.get(&id) {
                return job.clone();
            }
            let job = Arc::new(AuditJob::default());
            running.insert(id, job.clone());
            tokio::spawn(self.clone().run_audit_job(id, job.clone()));
            job
        })
    }

    /// The job's task: under the contract's lock, the setup from its stored phase to its
    /// end; then the calls waiting for it learn the outcome from the stored record.
    async fn run_audit_job(self: Arc<Self>, id: [u8; 32], job: Arc<AuditJob>) {
        {
            let _guard = self.locks.lock(&id).await;
            match self.load(&id) {
                Ok(Some(mut record)) => {
                    self.resume_audits(&mut record).await;
                    self.discard_staged(&record);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(contract = %hex::encode(id), "cannot load the audit setup: {e}")
                }
            }
            self.audit_jobs.with(|running| running.remove(&id));
        }
        job.set_waiting(false);
    }

    /// Tells the `dstore-open` calls waiting for contract `id`'s setup whether only the
    /// chain is awaited now.
    pub(super) fn set_audit_waiting(&self, id: &[u8; 32], waiting: bool) {
        if let Some(job) = self.audit_jobs.get(id) {
            job.set_waiting(waiting);
        }
    }

    /// `dstore-open`'s reply for contract `id` once its upload is done: the id when its
    /// audit setup is complete (or it has none), the setup's error when it failed, and a
    /// `waiting`/`running` object when it goes on in the background: at once when only
    /// the chain is awaited (`deadline` `None`), else at `deadline`.
    pub async fn await_audit_setup(
        &self,
        id: &[u8; 32],
        deadline: Option<Instant>,
    ) -> Result<Value, RenterError> {
        loop {
            let job = self.audit_jobs.get(id);
            let changed = job.as_deref().map(|j| j.changed.notified());
            let record = self.existing(id)?;
            let Some(audit) = record.audit.as_ref() else {
                return Ok(json!(hex::encode(id)));
            };
            match audit.phase {
                // Complete once the towers (and the auditor) hold the candidates, or once
                // the job gave up registering them (retried at the next start).
                RentedAuditPhase::Complete if audit.candidates_registered || job.is_none() => {
                    return Ok(json!(hex::encode(id)))
                }
                RentedAuditPhase::Failed => {
                    return Err(RenterError::Earlier(
                        audit
                            .error
                            .clone()
                            .unwrap_or_else(|| "the audit setup failed".to_string()),
                    ))
                }
                _ => {}
            }
            let (Some(job), Some(changed)) = (job.as_deref(), changed) else {
                // Nothing runs it now (it resumes at the next start).
                return Ok(pending_reply(&record, false));
            };
            let waiting = job.waiting();
            let now = Instant::now();
            if deadline.map_or(waiting, |d| now >= d) {
                return Ok(pending_reply(&record, waiting));
            }
            match deadline {
                Some(d) => {
                    let _ = tokio::time::timeout(d.saturating_duration_since(now), changed).await;
                }
                None => changed.await,
            }
        }
    }
}

/// What a `dstore-open` call says while the audit setup goes on in the background.
fn pending_reply(record: &RentedContract, waiting: bool) -> Value {
    let audit = record.audit.as_ref();
    json!({
        "status": if waiting { "waiting" } else { "running" },
        "contract_id": hex::encode(record.contract_id),
        "phase": audit.map(|a| a.phase),
        "waiting_for": audit.and_then(|a| a.waiting_for.clone()),
        "funding_txid": audit.and_then(|a| a.funding_tx.as_ref()).map(|tx| tx.compute_txid()),
        "stake_sat": audit.and_then(|a| a.proposal.as_ref()).map(|p| p.terms.stake.to_sat()),
        "message": "the audit setup goes on in the background (also after a restart): dstore-status shows it",
    })
}
