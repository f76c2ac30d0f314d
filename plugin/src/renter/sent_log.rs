//! The renter's log of the upload parts that may have left the machine: a part's digest
//! (the one its PUT signs, over its Merkle leaves) is written (and synced) before the part
//! is sent, so a resumed encrypting pass can prove it
//! re-derives the very same ciphertext before sending anything again.
//!
//! Why: chunk i of C is AES-GCM under a nonce fixed by (contract id, i). If the source file
//! changed between a crash and the resume, re-encrypting it would put a different
//! plaintext under a nonce a farmer may already hold ciphertext for (even a part it never
//! acknowledged), which leaks the XOR of the two plaintexts and GHASH's key. With this log
//! a changed file stops the pass at the first part that differs, and nothing is sent.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

/// Bytes of one record: the part's offset (u64 big-endian) and its digest
/// ([`dstore_protocol::merkle::part_digest`]).
const RECORD: usize = 8 + 32;

/// Why a part may not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SentLogError {
    #[error("the file changed since its upload started (the part at byte {offset} differs from what was already sent); restore it or store it under a new contract")]
    Changed { offset: u64 },
    #[error("cannot record the upload part: {0}")]
    Io(#[from] io::Error),
}

/// The parts already (possibly) sent for one contract, by offset.
pub struct SentLog {
    file: File,
    sent: HashMap<u64, [u8; 32]>,
}

impl SentLog {
    /// Opens (or creates) the log at `path` and reads what it holds. A torn last record
    /// (a crash while it was written, before its part was sent) is ignored.
    pub fn open(path: &Path) -> io::Result<SentLog> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let sent = bytes
            .chunks_exact(RECORD)
            .map(|record| {
                let offset = u64::from_be_bytes(record[..8].try_into().expect("8 bytes"));
                let hash: [u8; 32] = record[8..].try_into().expect("32 bytes");
                (offset, hash)
            })
            .collect();
        if bytes.len() % RECORD != 0 {
            file.set_len((bytes.len() - bytes.len() % RECORD) as u64)?;
        }
        Ok(SentLog { file, sent })
    }

    /// Checks the part at `offset`, by its `digest`, against what was sent before. A part
    /// never sent is recorded (synced) first when `recording`; the caller sends it only
    /// after `Ok`.
    pub fn admit(
        &mut self,
        offset: u64,
        digest: &[u8; 32],
        recording: bool,
    ) -> Result<(), SentLogError> {
        match self.sent.get(&offset) {
            Some(sent) if sent == digest => Ok(()),
            Some(_) => Err(SentLogError::Changed { offset }),
            None if recording => self.record(offset, *digest),
            None => Ok(()),
        }
    }

    fn record(&mut self, offset: u64, hash: [u8; 32]) -> Result<(), SentLogError> {
        let mut record = [0u8; RECORD];
        record[..8].copy_from_slice(&offset.to_be_bytes());
        record[8..].copy_from_slice(&hash);
        self.file.write_all(&record)?;
        self.file.sync_data()?;
        self.sent.insert(offset, hash);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(part: &[u8]) -> [u8; 32] {
        dstore_protocol::hashing::sha256(&[part])
    }

    #[test]
    fn the_same_parts_pass_again_and_a_changed_part_is_refused_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sent");
        let mut log = SentLog::open(&path).unwrap();
        log.admit(0, &d(b"first part"), true).unwrap();
        log.admit(10, &d(b"second part"), true).unwrap();
        drop(log);

        let mut log = SentLog::open(&path).unwrap();
        log.admit(0, &d(b"first part"), true).unwrap();
        log.admit(10, &d(b"second part"), false).unwrap();
        assert!(matches!(
            log.admit(10, &d(b"second PART"), true),
            Err(SentLogError::Changed { offset: 10 })
        ));
        // A part beyond what was sent is new: recorded, then allowed.
        log.admit(21, &d(b"third part"), true).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 3 * RECORD as u64);
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_its_part_counts_as_never_sent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sent");
        SentLog::open(&path)
            .unwrap()
            .admit(0, &d(b"part"), true)
            .unwrap();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[1, 2, 3]).unwrap();
        drop(file);
        let mut log = SentLog::open(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), RECORD as u64);
        log.admit(0, &d(b"part"), true).unwrap();
        log.admit(4, &d(b"anything"), true).unwrap();
    }
}
