//! Storing a file: the renter's open request (terms checked, expiry fixed), the upload in
//! parts (each checked against the offer and its signed digest, flushed, then recorded
//! with the new hash state, so an interrupted upload resumes), and the signed storage
//! receipt.
//!
//! Several parts may be in flight ([`crate::wire::UPLOAD_WINDOW`]): each is hashed (its
//! Merkle leaves, which give both its digest and its share of root_C, one pass over its
//! bytes) as soon as it arrived, on a blocking thread, while the part before it is still
//! being written and synced; then it waits for its turn, the stored count reaching its
//! offset. A part is answered only once it is synced and recorded.

use std::time::Duration;

use dstore_protocol::merkle::{part_digest, part_leaves, Hash32};
use dstore_protocol::messages::{OpenAccepted, OpenRequest, UploadDone};
use dstore_protocol::peer::Opened;
use dstore_protocol::receipt::StorageReceipt;
use dstore_protocol::upload::{UploadError, UploadReceiver};

use super::records::FarmedContract;
use super::{internal, Farmer, FarmerError, Step, STORAGE_TERM};

impl Farmer {
    pub(super) async fn on_open(
        &self,
        contract_id: [u8; 32],
        opened: &Opened<OpenRequest>,
    ) -> Result<Step<OpenAccepted>, FarmerError> {
        let request = &opened.body;
        request.check(self.config.max_file_bytes, self.config.price_per_download)?;
        let expiry_height = self.tip().await?.saturating_add(STORAGE_TERM);
        let record = FarmedContract::new(contract_id, opened.sender, request, expiry_height);
        // A leftover staging file of an earlier, refused attempt must not count.
        let _ = self.blobs.truncate_staged(&contract_id, 0);
        Ok(Step {
            record,
            reply: OpenAccepted {
                file_length: request.file_length,
                expiry_height,
            },
        })
    }

    /// Bytes received and expected for an upload (for resuming).
    pub fn upload_status(&self, id: &[u8; 32]) -> Result<(u64, u64), FarmerError> {
        let record = self.existing(id)?;
        Ok((record.upload.merkle.length, record.file_length))
    }

    /// Appends one part of upload bytes at `offset`: its Merkle leaves are hashed first
    /// (checked against `signed`, the digest its renter signed), then it waits until the
    /// parts before it are stored (at most [`UPLOAD_AHEAD`] bytes ahead, for at most
    /// [`TURN_WAIT`]), then it is checked against the offer, flushed to disk and recorded
    /// with the new hash state. A part that fails a check changes nothing; a replayed one
    /// (below the stored count) is refused at once.
    pub async fn append_upload(
        &self,
        id: &[u8; 32],
        offset: u64,
        data: bytes::Bytes,
        signed: [u8; 32],
    ) -> Result<u64, FarmerError> {
        let part = data.clone();
        let leaves = tokio::task::spawn_blocking(move || part_leaves(&part))
            .await
            .map_err(internal)?;
        if part_digest(data.len() as u64, &leaves) != signed {
            return Err(FarmerError::BodyMismatch);
        }
        let deadline = tokio::time::Instant::now() + TURN_WAIT;
        loop {
            let stored = UPLOAD_STORED.notified();
            tokio::pin!(stored);
            stored.as_mut().enable();
            if let Some(received) = self.append_in_turn(id, offset, &data, &leaves).await? {
                UPLOAD_STORED.notify_waiters();
                self.hold_answer_if_faulty(id, received).await?;
                return Ok(received);
            }
            if tokio::time::timeout_at(deadline, stored).await.is_err() {
                let (received, _) = self.upload_status(id)?;
                return Err(UploadError::WrongOffset {
                    expected: received,
                    got: offset,
                }
                .into());
            }
        }
    }

    /// With the test-only fault `hold-upload-answers`: once two parts are stored and more
    /// remain, the part just stored is never answered.
    async fn hold_answer_if_faulty(&self, id: &[u8; 32], received: u64) -> Result<(), FarmerError> {
        if !crate::dev_fault!(self.config.dev_fault, HoldUploadAnswers) {
            return Ok(());
        }
        let (_, total) = self.upload_status(id)?;
        if received >= 2 * crate::wire::UPLOAD_PART as u64 && received < total {
            tracing::warn!("dev fault: the farmer stops answering upload parts until it is killed");
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    /// Stores the part at `offset` if it is its turn (the stored count is `offset`):
    /// checked, flushed, recorded; the new count. None while parts before it are missing;
    /// a part below the count or too far ahead of it is refused.
    async fn append_in_turn(
        &self,
        id: &[u8; 32],
        offset: u64,
        data: &bytes::Bytes,
        leaves: &[Hash32],
    ) -> Result<Option<u64>, FarmerError> {
        let _guard = self.locks.lock(id).await;
        let mut record = self.existing(id)?;
        if record.receipt.is_some() {
            return Err(FarmerError::WrongPhase("the upload is already complete"));
        }
        let received_before = record.upload.merkle.length;
        check_ahead(received_before, offset)?;
        if offset != received_before {
            return Ok(None);
        }
        let mut receiver = UploadReceiver::resume(record.upload.clone())?;
        receiver.accept_part(offset, data, leaves)?;
        // The write and its sync run on the blocking pool, so that the runtime's workers
        // keep receiving and hashing the parts in flight meanwhile.
        let (blobs, id_owned, part) = (self.blobs.clone(), *id, data.clone());
        tokio::task::spawn_blocking(move || {
            // The staging file may hold bytes past the last record (a crash mid-append).
            blobs.truncate_staged(&id_owned, received_before)?;
            blobs.append_staged(&id_owned, offset, &part)
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        record.upload = receiver.checkpoint();
        self.store(&record)?;
        Ok(Some(receiver.received()))
    }

    pub(super) async fn on_upload_done(
        &self,
        mut record: FarmedContract,
        done: UploadDone,
    ) -> Result<Step<StorageReceipt>, FarmerError> {
        let receiver = UploadReceiver::resume(record.upload.clone())?;
        let stored = receiver.finish(&done.root_c, done.length)?;
        let id = record.contract_id;
        // A crash after the move into the object store leaves no staging file: the blob
        // is already in place.
        let moved = self.blobs.staged_len(&id).map_err(internal)? == 0
            && self.blobs.size(&id).await.ok() == Some(stored.length);
        if !moved {
            self.blobs
                .truncate_staged(&id, stored.length)
                .map_err(internal)?;
            self.blobs.commit(&id).await.map_err(internal)?;
        }
        let receipt = StorageReceipt::sign(&self.identity, id, stored, record.expiry_height);
        record.receipt = Some(receipt);
        tracing::info!(contract = %hex::encode(id), bytes = stored.length, "upload stored");
        Ok(Step {
            record,
            reply: receipt,
        })
    }
}

/// How far past the stored count a part may start and wait for its turn: the renter's
/// window of parts in flight.
pub(super) const UPLOAD_AHEAD: u64 = (crate::wire::UPLOAD_WINDOW * crate::wire::UPLOAD_PART) as u64;
/// How long a part waits for the parts before it (a renter whose earlier PUT broke sends
/// it again after reading the farmer's count).
const TURN_WAIT: Duration = crate::wire::IDLE_TIMEOUT;

/// Wakes the parts waiting for their turn whenever a part was stored (any contract's:
/// each waiter checks its own).
static UPLOAD_STORED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// A part at `offset` with `received` bytes stored: a replay (below the count) or one
/// more than [`UPLOAD_AHEAD`] bytes ahead is refused.
pub(super) fn check_ahead(received: u64, offset: u64) -> Result<(), UploadError> {
    if offset < received || offset - received > UPLOAD_AHEAD {
        return Err(UploadError::WrongOffset {
            expected: received,
            got: offset,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_wait_only_within_the_window_and_replays_are_refused() {
        let part = crate::wire::UPLOAD_PART as u64;
        assert!(check_ahead(8 * part, 8 * part).is_ok());
        assert!(
            check_ahead(8 * part, 9 * part).is_ok(),
            "the next part waits"
        );
        assert!(check_ahead(8 * part, 8 * part + UPLOAD_AHEAD).is_ok());
        for refused in [0, 7 * part, 8 * part - 1, 8 * part + UPLOAD_AHEAD + 1] {
            assert_eq!(
                check_ahead(8 * part, refused),
                Err(UploadError::WrongOffset {
                    expected: 8 * part,
                    got: refused
                }),
                "{refused}"
            );
        }
    }
}
