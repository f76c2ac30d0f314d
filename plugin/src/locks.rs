//! One async lock per contract id, so that each role handles one step of a contract at a
//! time while different contracts proceed in parallel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// Per-contract locks (an entry per contract seen since start; a few bytes each).
#[derive(Debug, Default)]
pub struct ContractLocks {
    locks: Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
}

impl ContractLocks {
    /// Waits for, and holds until dropped, contract `id`'s lock.
    pub async fn lock(&self, id: &[u8; 32]) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(*id).or_default().clone()
        };
        lock.lock_owned().await
    }
}
