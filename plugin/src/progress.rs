//! Live progress of long renter operations (encrypting, uploading, fetching, proving), as
//! `dstore-status` reports it while `dstore-open` or `dstore-download` is still running.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// One operation's progress.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Progress {
    pub phase: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub running: bool,
}

/// Progress by contract id (hex).
#[derive(Debug, Default)]
pub struct Tracker {
    entries: Mutex<HashMap<String, Progress>>,
}

impl Tracker {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Progress>) -> T) -> T {
        f(&mut self.entries.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Enters a new phase of `total` bytes.
    pub fn phase(&self, id: &str, phase: &str, total: u64) {
        self.with(|map| {
            map.insert(
                id.to_string(),
                Progress {
                    phase: phase.to_string(),
                    bytes_done: 0,
                    bytes_total: total,
                    running: true,
                },
            );
        });
    }

    /// Bytes done so far in the current phase.
    pub fn advance(&self, id: &str, done: u64) {
        self.with(|map| {
            if let Some(p) = map.get_mut(id) {
                p.bytes_done = done;
            }
        });
    }

    /// The operation ended (its record says how).
    pub fn finish(&self, id: &str) {
        self.with(|map| {
            if let Some(p) = map.get_mut(id) {
                p.running = false;
            }
        });
    }

    pub fn get(&self, id: &str) -> Option<Progress> {
        self.with(|map| map.get(id).cloned())
    }
}

/// A callback that reports bytes done for `id`.
pub fn reporter(tracker: &Arc<Tracker>, id: &str) -> impl Fn(u64) + Send + Sync + 'static {
    let (tracker, id) = (tracker.clone(), id.to_string());
    move |done| tracker.advance(&id, done)
}
