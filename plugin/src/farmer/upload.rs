//! Storing a file: the renter's open request (terms checked, expiry fixed), the upload in
//! batches (each checked against the offer, flushed, then recorded with the new hash
//! state, so an interrupted upload resumes), and the signed storage receipt.

use dstore_protocol::messages::{OpenAccepted, OpenRequest, UploadDone};
use dstore_protocol::peer::Opened;
use dstore_protocol::receipt::StorageReceipt;
use dstore_protocol::upload::UploadReceiver;

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

    /// Appends one batch of upload bytes at `offset`: checked against the offer, flushed
    /// to disk, then recorded with the new hash state.
    pub async fn append_upload(
        &self,
        id: &[u8; 32],
        offset: u64,
        data: &[u8],
    ) -> Result<u64, FarmerError> {
        let _guard = self.locks.lock(id).await;
        let mut record = self.existing(id)?;
        if record.receipt.is_some() {
            return Err(FarmerError::WrongPhase("the upload is already complete"));
        }
        let mut receiver = UploadReceiver::resume(record.upload.clone())?;
        receiver.check_chunk(offset, data.len())?;
        // The staging file may hold bytes past the last record (a crash mid-append).
        self.blobs
            .truncate_staged(id, receiver.received())
            .map_err(internal)?;
        self.blobs
            .append_staged(id, offset, data)
            .map_err(internal)?;
        receiver.accept(offset, data)?;
        record.upload = receiver.checkpoint();
        self.store(&record)?;
        Ok(receiver.received())
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
