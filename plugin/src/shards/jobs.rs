//! File-level background jobs (a download or a repair of one file): they run in the
//! background because their shard downloads wait for the chain, and have the same
//! `running`/`waiting`/`done` reply shape as a contract download. A call returns once the
//! job ends, once every shard download in flight only waits for the chain (without
//! `wait_seconds`), or after `wait_seconds`; a later call joins the running job, and the
//! outcome no call received is returned by the next call. The job's request and outcome
//! live in the file record, so a restart runs an unfinished job again and still hands its
//! outcome to the next call.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Notify;

use super::record::{JobRequest, StoredJob, StoredOutcome};
use super::FileError;
use crate::jsonrpc::RpcError;

/// What a file job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Download,
    Repair,
}

impl JobKind {
    pub fn name(self) -> &'static str {
        match self {
            JobKind::Download => "download",
            JobKind::Repair => "repair",
        }
    }
}

/// What a finished job returned.
pub type Outcome = Result<Value, RpcError>;

/// Where one shard download of a job stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardRun {
    Running,
    /// Only the chain is awaited (TX1's confirmations, TX2).
    Waiting,
    Done,
    Failed(String),
}

/// One running file job, shared by its task and the calls waiting for it.
pub struct FileJob {
    pub kind: JobKind,
    state: Mutex<JobState>,
    changed: Notify,
}

#[derive(Default)]
struct JobState {
    shards: BTreeMap<u8, ([u8; 32], ShardRun)>,
    outcome: Option<Outcome>,
}

impl FileJob {
    fn new(kind: JobKind) -> FileJob {
        FileJob {
            kind,
            state: Mutex::new(JobState::default()),
            changed: Notify::new(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut JobState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Records where shard `index` (contract `contract_id`) stands.
    pub fn shard(&self, index: u8, contract_id: [u8; 32], run: ShardRun) {
        self.with(|s| s.shards.insert(index, (contract_id, run)));
        self.changed.notify_waiters();
    }

    pub fn finish(&self, outcome: Outcome) {
        self.with(|s| s.outcome = Some(outcome));
        self.changed.notify_waiters();
    }

    /// Every shard download in flight only waits for the chain (and one is in flight).
    fn only_chain(s: &JobState) -> bool {
        let active: Vec<&ShardRun> = s
            .shards
            .values()
            .map(|(_, run)| run)
            .filter(|run| matches!(run, ShardRun::Running | ShardRun::Waiting))
            .collect();
        !active.is_empty() && active.iter().all(|run| **run == ShardRun::Waiting)
    }

    /// The reply of a call that returns before the job ended.
    pub fn running_json(
        &self,
        file_id: &[u8; 32],
        step: impl Fn(&[u8; 32]) -> Option<String>,
    ) -> Value {
        self.with(|s| {
            let waiting = Self::only_chain(s);
            let shards: Vec<Value> = s
                .shards
                .iter()
                .map(|(index, (id, run))| {
                    let (status, error) = match run {
                        ShardRun::Running => ("running", None),
                        ShardRun::Waiting => ("waiting", None),
                        ShardRun::Done => ("done", None),
                        ShardRun::Failed(e) => ("failed", Some(e.clone())),
                    };
                    json!({"index": index, "contract_id": hex::encode(id), "status": status,
                           "step": step(id), "error": error})
                })
                .collect();
            json!({
                "file_id": hex::encode(file_id),
                "kind": self.kind.name(),
                "status": if waiting { "waiting" } else { "running" },
                "shards": shards,
                "message": format!("the file {} goes on in the background: call again to wait for it or to get its outcome", self.kind.name()),
            })
        })
    }
}

/// The running file jobs, by file id.
#[derive(Default)]
pub struct FileJobs {
    running: Mutex<HashMap<[u8; 32], Arc<FileJob>>>,
}

impl FileJobs {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<[u8; 32], Arc<FileJob>>) -> T) -> T {
        f(&mut self.running.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The running job of file `id` if it is of `kind` (another kind is refused), or a
    /// new one handed to `start` (which spawns its task).
    pub fn join_or_start(
        &self,
        id: &[u8; 32],
        kind: JobKind,
        start: impl FnOnce(Arc<FileJob>),
    ) -> Result<Arc<FileJob>, FileError> {
        self.with(|running| {
            if let Some(job) = running.get(id) {
                if job.kind != kind {
                    return Err(FileError::Busy(format!(
                        "a {} of file {} is running; wait for it first",
                        job.kind.name(),
                        hex::encode(id)
                    )));
                }
                return Ok(job.clone());
            }
            let job = Arc::new(FileJob::new(kind));
            running.insert(*id, job.clone());
            start(job.clone());
            Ok(job)
        })
    }

    /// The job of file `id`, if one runs (or ended and was not collected).
    pub fn get(&self, id: &[u8; 32]) -> Option<Arc<FileJob>> {
        self.with(|running| running.get(id).cloned())
    }

    /// Waits for `job` of file `id` as one call: its outcome (then the job is collected:
    /// `true`), or the running reply once only the chain is awaited (`wait` = `None`) or
    /// after `wait`.
    pub async fn wait(
        &self,
        id: &[u8; 32],
        job: &Arc<FileJob>,
        wait: Option<Duration>,
        step: impl Fn(&[u8; 32]) -> Option<String>,
    ) -> (Outcome, bool) {
        let deadline = wait.map(|w| Instant::now() + w);
        loop {
            let changed = job.changed.notified();
            let now = Instant::now();
            let (outcome, only_chain) = job.with(|s| (s.outcome.clone(), FileJob::only_chain(s)));
            if let Some(outcome) = outcome {
                self.with(|running| {
                    if running.get(id).is_some_and(|j| Arc::ptr_eq(j, job)) {
                        running.remove(id);
                    }
                });
                return (outcome, true);
            }
            let due = deadline.map_or(only_chain, |d| now >= d);
            if due {
                return (Ok(job.running_json(id, &step)), false);
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

impl super::Files {
    /// `dstore-download` and `dstore-repair` of a file: returns the outcome of the file's
    /// last job if no call received it yet (even across a restart), else starts the job
    /// `request` asks for (or joins the one running) and waits for it as one call, as a
    /// contract download does.
    pub(super) async fn run_job(
        self: &Arc<Self>,
        file_id: &[u8; 32],
        request: JobRequest,
        wait: Option<Duration>,
    ) -> Result<Value, FileError> {
        if let Some(outcome) = self.take_outcome(file_id, request.kind())? {
            return outcome.map_err(FileError::Rpc);
        }
        let job = self.start_job(file_id, request)?;
        let renter = self.renter.clone();
        let step = move |id: &[u8; 32]| {
            renter
                .progress
                .get(&hex::encode(id))
                .filter(|p| p.running)
                .map(|p| p.phase)
        };
        let (outcome, collected) = self.jobs.wait(file_id, &job, wait, step).await;
        if collected {
            self.update(file_id, |r| r.job = None)?;
        }
        outcome.map_err(FileError::Rpc)
    }

    /// After a restart: every file job that had not ended runs again in the background
    /// (its shard downloads resume through their contracts' own records).
    pub fn resume_jobs(self: &Arc<Self>) -> Result<(), FileError> {
        for record in self.list()? {
            if let Some(StoredJob {
                request,
                outcome: None,
            }) = record.job
            {
                tracing::info!(file = %hex::encode(record.file_id), "resuming an interrupted file {}", request.kind().name());
                self.start_job(&record.file_id, request)?;
            }
        }
        Ok(())
    }

    /// The stored outcome of the file's last `kind` job, removed as it is returned. A
    /// stored outcome of the other kind is dropped: this call asks for something new.
    fn take_outcome(
        &self,
        file_id: &[u8; 32],
        kind: JobKind,
    ) -> Result<Option<Outcome>, FileError> {
        if self.jobs.get(file_id).is_some() {
            return Ok(None);
        }
        let mut taken = None;
        let record = self.existing(file_id)?;
        if let Some(StoredJob {
            request,
            outcome: Some(outcome),
        }) = record.job
        {
            if request.kind() == kind {
                taken = Some(match outcome {
                    StoredOutcome::Done(value) => Ok(value),
                    StoredOutcome::Failed { code, message } => Err(RpcError::new(code, message)),
                });
            }
            self.update(file_id, |r| r.job = None)?;
        }
        Ok(taken)
    }

    /// Starts the job `request` asks for (its request stored before any work), or joins the
    /// one running. Its outcome is stored when it ends.
    fn start_job(
        self: &Arc<Self>,
        file_id: &[u8; 32],
        request: JobRequest,
    ) -> Result<Arc<FileJob>, FileError> {
        let kind = request.kind();
        let (files, id) = (self.clone(), *file_id);
        let mut stored = Ok(());
        let job = self.jobs.join_or_start(file_id, kind, |job| {
            stored = self
                .update(file_id, |r| {
                    r.job = Some(StoredJob {
                        request: request.clone(),
                        outcome: None,
                    })
                })
                .map(|_| ());
            if stored.is_ok() {
                tokio::spawn(async move { files.run_stored(job, id, request).await });
            }
        });
        stored?;
        job
    }

    /// A job's task: its work, then its outcome stored and handed to the waiting calls.
    async fn run_stored(self: Arc<Self>, job: Arc<FileJob>, id: [u8; 32], request: JobRequest) {
        let kind = request.kind();
        let outcome = match request {
            JobRequest::Download { output } => self.download_file(&job, &id, &output).await,
            JobRequest::Repair { farmers } => self.repair_file(&job, &id, farmers).await,
        };
        if let Err(e) = &outcome {
            tracing::warn!(file = %hex::encode(id), "file {} failed: {e}", kind.name());
        }
        let outcome = outcome.map_err(|e| e.to_rpc());
        let stored = match &outcome {
            Ok(value) => StoredOutcome::Done(value.clone()),
            Err(e) => StoredOutcome::Failed {
                code: e.code,
                message: e.message.clone(),
            },
        };
        if let Err(e) = self.update(&id, |r| {
            if let Some(j) = r.job.as_mut() {
                j.outcome = Some(stored);
            }
        }) {
            tracing::warn!(file = %hex::encode(id), "could not store the file {}'s outcome: {e}", kind.name());
        }
        job.finish(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_returns_once_only_the_chain_is_awaited_and_the_next_gets_the_outcome() {
        let jobs = FileJobs::default();
        let id = [1u8; 32];
        let job = jobs.join_or_start(&id, JobKind::Download, |_| {}).unwrap();
        assert!(jobs.join_or_start(&id, JobKind::Repair, |_| {}).is_err());
        job.shard(0, [2; 32], ShardRun::Waiting);
        job.shard(1, [3; 32], ShardRun::Done);
        let (reply, collected) = jobs.wait(&id, &job, None, |_| None).await;
        assert_eq!(reply.unwrap()["status"], "waiting");
        assert!(!collected);
        job.finish(Ok(json!({"status": "done"})));
        let again = jobs
            .join_or_start(&id, JobKind::Download, |_| panic!("new job"))
            .unwrap();
        let (outcome, collected) = jobs.wait(&id, &again, None, |_| None).await;
        assert_eq!(outcome.unwrap()["status"], "done");
        assert!(collected);
        assert!(jobs.get(&id).is_none());
    }
}
