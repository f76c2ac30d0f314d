//! Storing a file: the renter's open request (terms checked, expiry fixed), the upload in
//! batches (each checked against the offer, flushed, then recorded with the new hash
//! state, so an interrupted upload resumes), and the signed storage receipt.

use dstore_protocol::hashing::sha256;
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

    /// Appends one part of upload bytes at `offset`: checked against the offer and against
    /// `signed` (the SHA-256 its renter signed) while its Merkle leaves are hashed, on two
    /// threads; then flushed to disk, then recorded with the new hash state. A part that
    /// fails a check changes nothing.
    pub async fn append_upload(
        &self,
        id: &[u8; 32],
        offset: u64,
        data: bytes::Bytes,
        signed: [u8; 32],
    ) -> Result<u64, FarmerError> {
        let _guard = self.locks.lock(id).await;
        let mut record = self.existing(id)?;
        if record.receipt.is_some() {
            return Err(FarmerError::WrongPhase("the upload is already complete"));
        }
        let mut receiver = UploadReceiver::resume(record.upload.clone())?;
        receiver.check_chunk(offset, data.len())?;
        let part = data.clone();
        let (body_ok, receiver) = tokio::task::spawn_blocking(move || {
            std::thread::scope(|scope| {
                let body = scope.spawn(|| sha256(&[&part]) == signed);
                let accepted = receiver.accept(offset, &part).map(|()| receiver);
                (body.join().unwrap_or(false), accepted)
            })
        })
        .await
        .map_err(internal)?;
        if !body_ok {
            return Err(FarmerError::BodyMismatch);
        }
        let receiver = receiver?;
        // The staging file may hold bytes past the last record (a crash mid-append).
        let received_before = record.upload.merkle.length;
        self.blobs
            .truncate_staged(id, received_before)
            .map_err(internal)?;
        self.blobs
            .append_staged(id, offset, &data)
            .map_err(internal)?;
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
