//! The download driver. Each `dstore-download` runs as a background job that is driven by
//! the download's stored phase: a new download, like a funded one resumed after a restart
//! (or by the next call), runs the steps of [`Renter::advance`] from that phase up to TX3's
//! signature, then waits, holding no lock, for TX1's confirmations and TX2 (tens of minutes
//! on mainnet), then extracts f and finishes. The
//! call returns once the wait begins (or after `wait_seconds`); a second call joins the
//! running job instead of paying twice, and an outcome no call received is returned by the
//! next call.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bitcoin::consensus::encode::deserialize_hex;
use bitcoin::{OutPoint, Transaction, Txid};
use dstore_protocol::keys::Role;
use serde_json::{json, Value};
use tokio::sync::Notify;

use super::ln_download::{DownloadMode, LN_PAYMENT_WAIT, LN_WAITING};
use super::records::{DownloadPhase, RentedContract, RentedDownload, StoragePhase};
use super::{internal, Renter, RenterError};
use crate::ln::PaymentOutcome;

/// How often a waiting download asks bitcoind for TX2 (mempool and new blocks).
const POLL: Duration = Duration::from_millis(500);
/// While waiting for TX2, the watchtower is asked every this many polls.
const TOWER_POLL_EVERY: u32 = 10;

/// What a finished job returned (shared by every call that waited for it).
pub type Outcome = Result<Value, Arc<RenterError>>;

/// One running download job, shared by its task and the calls waiting for it.
#[derive(Default)]
pub struct Job {
    state: Mutex<JobState>,
    changed: Notify,
}

#[derive(Default)]
struct JobState {
    download_id: Option<[u8; 32]>,
    /// Only the chain is awaited now (TX1's confirmations, TX2).
    waiting: bool,
    outcome: Option<Outcome>,
    /// `dstore-download` calls waiting for this job right now.
    waiters: usize,
}

impl Job {
    fn with<T>(&self, f: impl FnOnce(&mut JobState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn update(&self, f: impl FnOnce(&mut JobState)) {
        self.with(f);
        self.changed.notify_waiters();
    }

    pub(super) fn set_download(&self, id: [u8; 32]) {
        self.update(|s| s.download_id = Some(id));
    }

    fn download_id(&self) -> Option<[u8; 32]> {
        self.with(|s| s.download_id)
    }

    /// Resolves once the job has ended.
    async fn ended(&self) {
        loop {
            let changed = self.changed.notified();
            if self.with(|s| s.outcome.is_some()) {
                return;
            }
            changed.await;
        }
    }

    /// Ends the job; returns whether a call was waiting to receive the outcome.
    fn finish(&self, outcome: Outcome) -> bool {
        let delivered = self.with(|s| {
            s.outcome = Some(outcome);
            s.waiters > 0
        });
        self.changed.notify_waiters();
        delivered
    }
}

/// The running download jobs, by contract id.
#[derive(Default)]
pub struct Jobs {
    running: Mutex<HashMap<[u8; 32], Arc<Job>>>,
    /// Held while a download decides whether its TX1, shared with other downloads, goes out.
    pub(super) shared_tx1: super::tx1_group::SharedTx1Lock,
}

impl Jobs {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<[u8; 32], Arc<Job>>) -> T) -> T {
        f(&mut self.running.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether contract `id` has a download job running.
    pub(super) fn running(&self, id: &[u8; 32]) -> bool {
        self.with(|running| running.contains_key(id))
    }
}

/// One call's place among a job's waiters.
struct Waiter<'a> {
    job: &'a Job,
    /// The call took its reply (and left the count then).
    left: bool,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if !self.left {
            self.job.with(|s| s.waiters -= 1);
        }
    }
}

/// Where a call leaves a job it waits for.
enum Reply {
    Finished(Outcome),
    Running {
        download_id: Option<[u8; 32]>,
        waiting: bool,
    },
}

/// What a job does first, by the contract's latest download.
enum Start {
    /// Buy a new download.
    New,
    /// The latest download has money in TX1 (or is paid): go on from its stored phase.
    Resume,
    /// The latest download finished in the background: return its outcome.
    Report,
}

impl Renter {
    /// `dstore-download`: starts contract `id`'s download job, or joins the running one
    /// (which then keeps its own output path), and waits until it finishes, until it
    /// only waits for the chain (when `wait` is `None`), or for `wait`.
    pub async fn download(
        self: &Arc<Self>,
        id: &[u8; 32],
        output: &std::path::Path,
        wait: Option<Duration>,
    ) -> Outcome {
        self.download_in_mode(id, output, wait, DownloadMode::Chain)
            .await
    }

    /// [`Renter::download`], paid as `mode` says when the call buys a new download (a
    /// running or resumed download keeps the mode it began with).
    pub async fn download_in_mode(
        self: &Arc<Self>,
        id: &[u8; 32],
        output: &std::path::Path,
        wait: Option<Duration>,
        mode: DownloadMode,
    ) -> Outcome {
        let output = super::unseal::absolute(output).map_err(Arc::new)?;
        self.existing(id).map_err(Arc::new)?;
        let mut job = self.job(id, Some(output.clone()), mode);
        if self.settled_elsewhere(id, &job) {
            // dstore-refund settled the job's download while it waited for TX2: that wait
            // ends at its next poll. This call is a new download, not that one's outcome.
            job.ended().await;
            job = self.job(id, Some(output), mode);
        }
        match self.await_job(&job, wait).await {
            Reply::Finished(outcome) => outcome,
            Reply::Running {
                download_id,
                waiting,
            } => Ok(self.running_reply(id, download_id, waiting)),
        }
    }

    /// After a restart: every download with money in TX1 (funded, TX2 signed, or paid
    /// and waiting for TX2) goes on in the background from its stored phase.
    pub fn resume_downloads(self: &Arc<Self>) -> Result<(), RenterError> {
        for record in self.list()? {
            let funded = record
                .downloads
                .last()
                .is_some_and(|d| d.phase.money_locked() || d.phase.ln_paying());
            if funded {
                tracing::info!(contract = %hex::encode(record.contract_id), "resuming a funded download in the background");
                self.job(&record.contract_id, None, DownloadMode::Chain);
            }
        }
        Ok(())
    }

    /// Whether `job`'s download was refunded by `dstore-refund` while the job still
    /// waits for TX2 (a finished download's outcome, by contrast, is this call's to take).
    fn settled_elsewhere(&self, id: &[u8; 32], job: &Job) -> bool {
        let Some(download_id) = job.download_id() else {
            return false;
        };
        self.load(id).ok().flatten().is_some_and(|record| {
            record
                .downloads
                .iter()
                .any(|d| d.download_id == download_id && d.phase == DownloadPhase::Refunded)
        })
    }

    /// The running job of contract `id`, or a new one started for `output` (`None`: the
    /// output the paid download recorded).
    fn job(
        self: &Arc<Self>,
        id: &[u8; 32],
        output: Option<PathBuf>,
        mode: DownloadMode,
    ) -> Arc<Job> {
        self.jobs.with(|running| {
            if let Some(job) = running.get(id) {
                return job.clone();
            }
            let job = Arc::new(Job::default());
            running.insert(*id, job.clone());
            tokio::spawn(self.clone().run_job(*id, output, mode, job.clone()));
            job
        })
    }

    /// Waits for `job` as one `dstore-download` call.
    async fn await_job(&self, job: &Job, wait: Option<Duration>) -> Reply {
        let deadline = wait.map(|w| Instant::now() + w);
        job.with(|s| s.waiters += 1);
        // A call dropped while it waits (its client went away) stops counting as a waiter.
        let mut waiter = Waiter { job, left: false };
        loop {
            let changed = job.changed.notified();
            let now = Instant::now();
            let reply = job.with(|s| {
                let reply = match &s.outcome {
                    Some(outcome) => Reply::Finished(outcome.clone()),
                    None if deadline.map_or(s.waiting, |d| now >= d) => Reply::Running {
                        download_id: s.download_id,
                        waiting: s.waiting,
                    },
                    None => return None,
                };
                s.waiters -= 1;
                Some(reply)
            });
            if let Some(reply) = reply {
                waiter.left = true;
                return reply;
            }
            match deadline {
                Some(d) => {
                    let _ = tokio::time::timeout(d.saturating_duration_since(now), changed).await;
                }
                None => changed.await,
            }
        }
    }

    /// What a call that returns before the download finished says.
    fn running_reply(&self, id: &[u8; 32], download_id: Option<[u8; 32]>, waiting: bool) -> Value {
        let step = self
            .progress
            .get(&hex::encode(id))
            .filter(|p| p.running)
            .map(|p| p.phase);
        let d = self.load(id).ok().flatten().and_then(|r| {
            r.downloads
                .into_iter()
                .find(|d| Some(d.download_id) == download_id)
        });
        json!({
            "contract_id": hex::encode(id),
            "download_id": download_id.map(hex::encode),
            "status": if waiting { "waiting" } else { "running" },
            "phase": d.as_ref().map(|d| d.phase),
            "step": step,
            "waiting_for": step.as_deref().and_then(|s| s.strip_prefix("waiting for ")),
            "refund_height": d.as_ref().and_then(|d| d.contract).map(|c| c.refund_height),
            "message": "the download goes on in the background: dstore-status shows it, and dstore-download again waits for it or returns its outcome",
        })
    }

    /// The job's task: drives the download, records how it ended, then hands the outcome
    /// to the calls waiting for it. It holds the contract's lock from recording the
    /// outcome until the outcome is marked delivered, so a later call sees either the
    /// running job or the final record.
    async fn run_job(
        self: Arc<Self>,
        id: [u8; 32],
        output: Option<PathBuf>,
        mode: DownloadMode,
        job: Arc<Job>,
    ) {
        let outcome = self.drive(&id, output, mode, &job).await;
        let _guard = self.locks.lock(&id).await;
        let download_id = job.download_id();
        if let Some(download_id) = download_id {
            if let Err(e) = self.record_outcome(&id, &download_id, outcome.as_ref().err()) {
                tracing::warn!(contract = %hex::encode(id), "cannot record the download's outcome: {e}");
            }
        }
        self.progress.finish(&hex::encode(id));
        self.jobs.with(|running| running.remove(&id));
        let delivered = job.finish(outcome.map_err(Arc::new));
        if let (true, Some(download_id)) = (delivered, download_id) {
            if let Err(e) = self.mark_reported(&id, &download_id) {
                tracing::warn!(contract = %hex::encode(id), "cannot record the download's outcome: {e}");
            }
        }
    }

    /// The download's steps, from its stored phase: a new download and a resumed one run
    /// the same [`Renter::advance`] up to TX3's signature, wait for TX2 without the lock,
    /// then extract f and finish.
    async fn drive(
        &self,
        id: &[u8; 32],
        output: Option<PathBuf>,
        mode: DownloadMode,
        job: &Job,
    ) -> Result<Value, RenterError> {
        if let Some(reported) = self.run_to_tx3(id, output, mode, job).await? {
            return Ok(reported);
        }
        if let Some((hash, phase)) = Renter::ln_payment_due(&self.existing(id)?) {
            let outcome = match phase {
                DownloadPhase::LnPaying => self.wait_ln_payment(id, job, hash).await?,
                _ => PaymentOutcome::Pending,
            };
            return self.finish_ln(id, job.download_id(), outcome).await;
        }
        let tx2 = self.wait_for_tx2(id, job).await?;
        self.finish_paid(id, job, tx2).await
    }

    /// Under the contract's lock: starts a new download or picks up the funded one, and
    /// advances it up to TX3's signature. Returns the outcome instead when the latest
    /// download finished in the background and no call received it yet.
    async fn run_to_tx3(
        &self,
        id: &[u8; 32],
        output: Option<PathBuf>,
        mode: DownloadMode,
        job: &Job,
    ) -> Result<Option<Value>, RenterError> {
        let _guard = self.locks.lock(id).await;
        let mut record = self.existing(id)?;
        if record.phase != StoragePhase::Stored {
            return Err(RenterError::Invalid("the file is not stored yet".into()));
        }
        match start(&record)? {
            Start::Report => {
                let d = latest(&record)?.clone();
                job.set_download(d.download_id);
                return report(&record, &d).map(Some);
            }
            Start::Resume => {
                let d = latest(&record)?;
                tracing::info!(download = %hex::encode(d.download_id), phase = ?d.phase, "going on from the stored phase");
                job.set_download(d.download_id);
                if let Some(output) = output {
                    let last = record.downloads.len() - 1;
                    record.downloads[last].output = Some(output.display().to_string());
                    self.store(&record)?;
                }
            }
            Start::New => {
                let output = output.ok_or_else(|| internal("no output path"))?;
                let download_id = match self.ln_payee(&record, mode).await? {
                    Some(payee) => self.begin_ln_download(&mut record, &output, payee).await?,
                    None => self.begin_download(&mut record, &output).await?,
                };
                job.set_download(download_id);
            }
        }
        self.advance(&mut record).await?;
        // The outcome of a paid download is owed to whichever call comes next unless a
        // call is waiting when it ends.
        let last = record.downloads.len() - 1;
        record.downloads[last].unreported = true;
        self.store(&record)?;
        Ok(None)
    }

    /// Once TX2 is known: extracts f, unseals and decrypts the job's paid download.
    async fn finish_paid(
        &self,
        id: &[u8; 32],
        job: &Job,
        tx2: Transaction,
    ) -> Result<Value, RenterError> {
        let _guard = self.locks.lock(id).await;
        let mut record = self.existing(id)?;
        let d = latest(&record)?.clone();
        if Some(d.download_id) != job.download_id() || d.phase != DownloadPhase::Tx3Signed {
            return Err(RenterError::Invalid(format!(
                "download {} is {:?} now; not finishing it",
                hex::encode(d.download_id),
                d.phase
            )));
        }
        tracing::info!(contract = %hex::encode(id), "TX2 appeared: finishing the paid download");
        let r = self.secret(Role::Download, d.key_index)?;
        let output = d.output.clone().ok_or_else(|| internal("no output path"))?;
        self.complete(&mut record, &r, tx2, std::path::Path::new(&output))
            .await
    }

    /// Records a failed step on download `download_id` (a download without money locked
    /// becomes failed); a finished download's outcome is owed to the next call.
    fn record_outcome(
        &self,
        id: &[u8; 32],
        download_id: &[u8; 32],
        error: Option<&RenterError>,
    ) -> Result<(), RenterError> {
        let mut record = self.existing(id)?;
        let Some(d) = record
            .downloads
            .iter_mut()
            .find(|d| d.download_id == *download_id)
        else {
            return Ok(());
        };
        if let Some(e) = error {
            if !matches!(e, RenterError::Earlier(_)) {
                d.error = Some(e.to_string());
            }
            // Only a download that moved no money fails; a funded one keeps its phase
            // (dstore-refund, or a later dstore-download, picks it up).
            if matches!(
                d.phase,
                DownloadPhase::Offered
                    | DownloadPhase::Fetching
                    | DownloadPhase::LnRequested
                    | DownloadPhase::LnFetching
            ) {
                d.phase = DownloadPhase::Failed;
            }
        }
        d.unreported = reportable(d.phase);
        self.store(&record)
    }

    fn mark_reported(&self, id: &[u8; 32], download_id: &[u8; 32]) -> Result<(), RenterError> {
        let mut record = self.existing(id)?;
        if let Some(d) = record
            .downloads
            .iter_mut()
            .find(|d| d.download_id == *download_id && d.unreported)
        {
            d.unreported = false;
            self.store(&record)?;
        }
        Ok(())
    }

    /// Waits, holding no lock, until the job's TX2 is in the mempool or a block or the
    /// watchtower has it; gives up once the chain reaches T1 (dstore-refund, or the
    /// tower, takes TX1's money back then). `dstore-status` shows what it waits for.
    async fn wait_for_tx2(&self, id: &[u8; 32], job: &Job) -> Result<Transaction, RenterError> {
        let record = self.existing(id)?;
        let d = latest(&record)?.clone();
        let contract = d.contract.ok_or_else(|| internal("no contract"))?;
        let txid = d.tx2_txid.ok_or_else(|| internal("no TX2 id"))?;
        let tx1 = d.tx1_outpoint.ok_or_else(|| internal("no TX1"))?;
        let id_hex = hex::encode(id);
        let mut next_height = d.start_height;
        let mut shown_at = None;
        let mut poll = 0u32;
        loop {
            // The tower first: it saw TX2 even while this renter was offline.
            if poll.is_multiple_of(TOWER_POLL_EVERY) {
                if let Some(tx) = self.tower_tx2(id, job, &txid).await? {
                    return Ok(tx);
                }
            }
            poll = poll.wrapping_add(1);
            if let Some(tx) = self.find_tx_from(&txid, &mut next_height).await? {
                return Ok(tx);
            }
            let tip = self.tip().await?;
            if tip >= contract.refund_height {
                return Err(RenterError::Wait(format!(
                    "TX2 {txid} did not appear before T1 (height {}); dstore-refund returns TX1's money now",
                    contract.refund_height
                )));
            }
            if shown_at != Some(tip) {
                let text = self.waiting_text(&tx1, d.min_tx1_confirmations).await?;
                self.progress.phase(&id_hex, &text, 0);
                if shown_at.is_none() {
                    job.update(|s| s.waiting = true);
                }
                shown_at = Some(tip);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits, holding no lock, for the outcome of mode-N payment `hash`: after
    /// [`LN_PAYMENT_WAIT`] the calls are told the download waits for the payment (it goes
    /// on in the background until the payment settles or fails back).
    async fn wait_ln_payment(
        &self,
        id: &[u8; 32],
        job: &Job,
        hash: [u8; 32],
    ) -> Result<PaymentOutcome, RenterError> {
        let ln = self.ln_node()?.clone();
        self.progress.phase(&hex::encode(id), LN_WAITING, 0);
        loop {
            let outcome = ln
                .wait_payment(hash, LN_PAYMENT_WAIT)
                .await
                .map_err(|e| RenterError::Lightning(format!("the Lightning node: {e}")))?;
            match outcome {
                PaymentOutcome::Succeeded { .. } | PaymentOutcome::Failed { .. } => {
                    return Ok(outcome)
                }
                PaymentOutcome::Pending | PaymentOutcome::Unknown => {
                    job.update(|s| s.waiting = true)
                }
            }
        }
    }

    /// "waiting for TX1 confirmations k/N" until TX1 has the farmer's N, then "waiting
    /// for TX2".
    async fn waiting_text(&self, tx1: &OutPoint, needed: u32) -> Result<String, RenterError> {
        let found = self
            .bitcoind
            .call("gettxout", json!([tx1.txid.to_string(), tx1.vout, true]))
            .await?;
        let confirmations = found["confirmations"].as_u64().map(|c| c as u32);
        Ok(match confirmations {
            Some(k) if k < needed => format!("waiting for TX1 confirmations {k}/{needed}"),
            _ => "waiting for TX2".to_string(),
        })
    }

    /// TX2 from the watchtower, if it has it (briefly under the contract's lock, since
    /// that records where TX2 came from).
    async fn tower_tx2(
        &self,
        id: &[u8; 32],
        job: &Job,
        txid: &Txid,
    ) -> Result<Option<Transaction>, RenterError> {
        let _guard = self.locks.lock(id).await;
        let mut record = self.existing(id)?;
        if record.downloads.last().map(|d| d.download_id) != job.download_id() {
            return Ok(None);
        }
        self.tx2_from_tower(&mut record, txid).await
    }

    /// Transaction `txid` if it is in the mempool (or bitcoind's txindex), or in a block
    /// at or above `from_height`.
    pub(super) async fn find_tx(
        &self,
        txid: &Txid,
        from_height: u32,
    ) -> Result<Option<Transaction>, RenterError> {
        let mut next = from_height;
        self.find_tx_from(txid, &mut next).await
    }

    /// Like [`Renter::find_tx`], and moves `next_height` past the blocks searched, so a
    /// poll loop searches each block once.
    async fn find_tx_from(
        &self,
        txid: &Txid,
        next_height: &mut u32,
    ) -> Result<Option<Transaction>, RenterError> {
        if let Ok(hex) = self
            .bitcoind
            .call("getrawtransaction", json!([txid.to_string()]))
            .await
        {
            return Ok(hex.as_str().and_then(|h| deserialize_hex(h).ok()));
        }
        // Without -txindex a confirmed transaction is found through its block.
        let tip = self.tip().await?;
        while *next_height <= tip {
            let hash = self
                .bitcoind
                .call("getblockhash", json!([*next_height]))
                .await?;
            if let Ok(hex) = self
                .bitcoind
                .call("getrawtransaction", json!([txid.to_string(), false, hash]))
                .await
            {
                return Ok(hex.as_str().and_then(|h| deserialize_hex(h).ok()));
            }
            *next_height += 1;
        }
        Ok(None)
    }
}

/// What a job on `record` does first.
fn start(record: &RentedContract) -> Result<Start, RenterError> {
    match record.downloads.last() {
        Some(d) if d.phase.money_locked() || d.phase.ln_paying() => return Ok(Start::Resume),
        Some(d) if d.unreported && reportable(d.phase) => return Ok(Start::Report),
        _ => {}
    }
    if let Some(open) = record.downloads.iter().find(|d| d.phase.money_locked()) {
        return Err(RenterError::Invalid(format!(
            "download {} still has money locked in TX1/TX2: use dstore-refund",
            hex::encode(open.download_id)
        )));
    }
    Ok(Start::New)
}

/// Whether a job on `record` would buy a new download (no download has money locked or an
/// outcome still to report).
pub(super) fn starts_new(record: &RentedContract) -> Result<bool, RenterError> {
    Ok(matches!(start(record)?, Start::New))
}

/// A download whose end a later call may still have to learn.
fn reportable(phase: DownloadPhase) -> bool {
    matches!(
        phase,
        DownloadPhase::Done | DownloadPhase::Fraud | DownloadPhase::Failed
    )
}

/// The outcome of finished download `d`, as the call that ran it would have returned it.
fn report(record: &RentedContract, d: &RentedDownload) -> Result<Value, RenterError> {
    match d.phase {
        DownloadPhase::Done => Ok(super::download::done_json(record, d)),
        _ => Err(RenterError::Earlier(d.error.clone().unwrap_or_else(|| {
            format!("download {} failed", hex::encode(d.download_id))
        }))),
    }
}

fn latest(record: &RentedContract) -> Result<&RentedDownload, RenterError> {
    record
        .downloads
        .last()
        .ok_or_else(|| internal("no download"))
}
