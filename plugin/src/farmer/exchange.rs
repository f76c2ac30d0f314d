//! The farmer's side of the peer exchange: each envelope is opened and checked (signature,
//! contract, sequence number) under the contract's lock, handed to the step of its kind,
//! and the step's new record is stored with the signed reply before the reply leaves. An
//! exact repeat of the last message gets the stored reply again.

use dstore_protocol::audit::messages::{
    AuditFunding, AuditOpenings, AuditProposal, AuditSwap, AuditToss,
};
use dstore_protocol::hashing::sha256;
use dstore_protocol::messages::{
    CrsOffer, DownloadRequest, OpenRequest, RenterReveal, ResyncHint, Tx1Funded, Tx2RenterSig,
    Tx3RenterSig, UploadDone,
};
use dstore_protocol::peer::{self, Expected, Opened, PeerMessage, SequenceGuard};

use super::ln_download::LnDownloadRequest;
use super::records::FarmedContract;
use super::{internal, Farmer, FarmerError, Step};

impl Farmer {
    /// Handles one envelope posted to `/dstore/v1/msg/<kind>`; returns the signed reply.
    pub async fn handle_message(&self, kind: &str, bytes: &[u8]) -> Result<Vec<u8>, FarmerError> {
        let (contract_id, _) = peer::peek(bytes)?;
        let _guard = self.locks.lock(&contract_id).await;
        let record = self.load(&contract_id)?;
        if let Some(reply) = record.as_ref().and_then(|r| r.repeat_reply(bytes)) {
            return Ok(reply);
        }
        match kind {
            OpenRequest::KIND => {
                if record.is_some() {
                    return Err(FarmerError::ContractExists(hex::encode(contract_id)));
                }
                let opened = open_first::<OpenRequest>(bytes, contract_id)?;
                let step = self.on_open(contract_id, &opened).await?;
                self.commit(step, opened.seq, bytes)
            }
            _ => {
                let record =
                    record.ok_or_else(|| FarmerError::UnknownContract(hex::encode(contract_id)))?;
                self.dispatch(kind, record, bytes).await
            }
        }
    }

    /// Opens the envelope as a message of `kind` and runs its step. A download's steps
    /// (see [`super::download`]) each run only from the stored phase before them.
    async fn dispatch(
        &self,
        kind: &str,
        record: FarmedContract,
        bytes: &[u8],
    ) -> Result<Vec<u8>, FarmerError> {
        macro_rules! step {
            ($ty:ty, $handler:ident) => {{
                let opened = record.open::<$ty>(bytes)?;
                let seq = opened.seq;
                let step = self.$handler(record, opened.body).await?;
                self.commit(step, seq, bytes)
            }};
        }
        match kind {
            UploadDone::KIND => step!(UploadDone, on_upload_done),
            DownloadRequest::KIND => step!(DownloadRequest, offer_download),
            RenterReveal::KIND => step!(RenterReveal, reveal_and_seal),
            Tx1Funded::KIND => step!(Tx1Funded, check_tx1),
            Tx2RenterSig::KIND => step!(Tx2RenterSig, sign_tx2),
            CrsOffer::KIND => step!(CrsOffer, prove_under_crs),
            Tx3RenterSig::KIND => step!(Tx3RenterSig, take_tx3_signature),
            AuditProposal::KIND => step!(AuditProposal, on_audit_proposal),
            AuditFunding::KIND => step!(AuditFunding, on_audit_funding),
            AuditToss::KIND => step!(AuditToss, on_audit_toss),
            AuditOpenings::KIND => step!(AuditOpenings, on_audit_openings),
            AuditSwap::KIND => step!(AuditSwap, on_audit_swap),
            LnDownloadRequest::KIND => step!(LnDownloadRequest, offer_ln_download),
            other => Err(FarmerError::Invalid(format!(
                "unknown message kind {}",
                other.chars().take(40).collect::<String>()
            ))),
        }
    }

    /// Stores the step's record with the advanced sequence numbers and the signed reply.
    fn commit<R: PeerMessage>(
        &self,
        step: Step<R>,
        seq: u64,
        request: &[u8],
    ) -> Result<Vec<u8>, FarmerError> {
        let mut record = step.record;
        record.inbound = SequenceGuard { next: seq + 1 };
        let reply = peer::sign(
            &self.identity,
            record.contract_id,
            record.outbound,
            &step.reply,
        )?;
        record.outbound += 1;
        record.last_request = Some(sha256(&[request]));
        record.last_reply = Some(reply.clone());
        self.store(&record)?;
        Ok(reply)
    }

    /// The farmer's signed [`ResyncHint`] for `refused`, an envelope of this contract's
    /// renter refused for its sequence number: the renter may believe `next_seq` only
    /// because it is signed, and only for that very envelope.
    pub fn resync_hint(&self, refused: &[u8], next_seq: u64) -> Result<String, FarmerError> {
        let (contract_id, _) = peer::peek(refused)?;
        let hint = ResyncHint {
            next_seq,
            refused: sha256(&[refused]),
        };
        let bytes = peer::sign(&self.identity, contract_id, next_seq, &hint)?;
        String::from_utf8(bytes).map_err(internal)
    }

    /// The renter key a bulk request for contract `id` must be signed by.
    pub fn renter_of(
        &self,
        id: &[u8; 32],
    ) -> Result<bitcoin::secp256k1::XOnlyPublicKey, FarmerError> {
        Ok(self.existing(id)?.renter)
    }
}

/// Opens a first-contact envelope: the sender's key is whatever signed it.
fn open_first<B: PeerMessage>(
    bytes: &[u8],
    contract_id: [u8; 32],
) -> Result<Opened<B>, FarmerError> {
    let opened = peer::open::<B>(
        bytes,
        &Expected {
            contract_id,
            sender: None,
        },
    )?;
    SequenceGuard::default().next(opened.seq)?;
    Ok(opened)
}

impl FarmedContract {
    /// Opens an envelope from this contract's renter and checks its sequence number.
    fn open<B: PeerMessage>(&self, bytes: &[u8]) -> Result<Opened<B>, FarmerError> {
        let opened = peer::open::<B>(
            bytes,
            &Expected {
                contract_id: self.contract_id,
                sender: Some(self.renter),
            },
        )?;
        self.inbound.next(opened.seq)?;
        Ok(opened)
    }

    /// The stored reply, if `request` repeats the last message exactly.
    fn repeat_reply(&self, request: &[u8]) -> Option<Vec<u8>> {
        (self.last_request == Some(sha256(&[request])))
            .then(|| self.last_reply.clone())
            .flatten()
    }
}
