//! The renter's half of the signed, numbered conversation with the farmer (one per
//! contract): each message is sent, its reply opened and both sequence numbers advanced and
//! stored; a renter that crashed one message behind resynchronises on a hint the farmer
//! signed.

use std::time::Duration;

use dstore_protocol::peer::PeerMessage;

use super::records::{LastReply, RentedContract};
use super::{farmer_fault, internal, Renter, RenterError};
use crate::wire::PeerCallError;

impl Renter {
    /// Sends the next message of `record`'s conversation and opens the farmer's reply,
    /// advancing both sequence numbers and storing them with the reply. The message that
    /// was the last one answered gets its stored reply instead, so a step re-run after a
    /// crash never sends its message twice.
    pub(super) async fn exchange<Q: PeerMessage, R: PeerMessage>(
        &self,
        record: &mut RentedContract,
        request: &Q,
        timeout: Duration,
    ) -> Result<R, RenterError> {
        let digest = request_digest(request)?;
        if let Some(reply) = answered(record, Q::KIND, &digest) {
            tracing::debug!(kind = Q::KIND, "the farmer answered this message already");
            return serde_json::from_value(reply).map_err(internal);
        }
        let client = self.client(record);
        let mut attempt = 0;
        let opened = loop {
            let sent = client
                .exchange::<Q, R>(
                    record.contract_id,
                    record.outbound,
                    request,
                    record.farmer,
                    timeout,
                )
                .await;
            match sent {
                // The same bytes again: the farmer answers an exact retry with its reply.
                Err(PeerCallError::Unreachable { .. }) if attempt < 2 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                other => break other?,
            }
        };
        record.inbound = record
            .inbound
            .next(opened.seq)
            .map_err(|e| farmer_fault(format!("reply out of sequence: {e}")))?;
        record.last_reply = Some(LastReply {
            seq: record.outbound,
            kind: Q::KIND.to_string(),
            request: digest,
            reply: serde_json::to_value(&opened.body).map_err(internal)?,
        });
        record.outbound += 1;
        // The farmer has acted on this message: record that before anything else.
        self.store(record)?;
        Ok(opened.body)
    }

    /// Starts a new exchange (a download). If this renter crashed after the farmer acted
    /// on its last message but before it recorded the reply, both sequence numbers are
    /// one behind: the farmer says, in a hint it signs for the refused message, which
    /// number it expects, and the conversation resumes from there. Only that one step
    /// forward is accepted, and only when signed by the farmer.
    pub(super) async fn exchange_resync<Q: PeerMessage, R: PeerMessage>(
        &self,
        record: &mut RentedContract,
        request: &Q,
        timeout: Duration,
    ) -> Result<R, RenterError> {
        match self.exchange(record, request, timeout).await {
            // `next_seq` survives only in a refusal the farmer signed for this very
            // message (see `wire::verified_resync`); anything else changes nothing.
            Err(RenterError::Peer(PeerCallError::Refused(e)))
                if e.next_seq.is_some() && e.next_seq == record.outbound.checked_add(1) =>
            {
                tracing::info!(from = record.outbound, to = ?e.next_seq, "resynchronising with the farmer");
                record.outbound = e.next_seq.unwrap_or(record.outbound);
                // The farmer answers each accepted message once, so its own counter
                // stands at the same number.
                record.inbound = dstore_protocol::peer::SequenceGuard {
                    next: record.outbound,
                };
                self.exchange(record, request, timeout).await
            }
            other => other,
        }
    }
}

/// SHA-256 of `request`'s kind and body.
fn request_digest<Q: PeerMessage>(request: &Q) -> Result<[u8; 32], RenterError> {
    let body = serde_json::to_vec(request).map_err(internal)?;
    Ok(dstore_protocol::hashing::sha256(&[
        Q::KIND.as_bytes(),
        &body,
    ]))
}

/// The stored reply to the message of `kind` with body hash `digest`, if it was the last
/// message sent and the farmer answered it.
fn answered(record: &RentedContract, kind: &str, digest: &[u8; 32]) -> Option<serde_json::Value> {
    let last = record.last_reply.as_ref()?;
    answers(last, record.outbound, kind, digest).then(|| last.reply.clone())
}

/// Whether `last` is the reply to the message of `kind` and body hash `digest` sent just
/// before message number `outbound`.
fn answers(last: &LastReply, outbound: u64, kind: &str, digest: &[u8; 32]) -> bool {
    last.seq.checked_add(1) == Some(outbound) && last.kind == kind && last.request == *digest
}

#[cfg(test)]
mod tests {
    use super::*;
    use dstore_protocol::messages::{CrsOffer, Tx1Funded};

    #[test]
    fn only_the_last_answered_message_gets_its_stored_reply() {
        let offer = CrsOffer { crs_hash: [7; 32] };
        let digest = request_digest(&offer).unwrap();
        let last = LastReply {
            seq: 4,
            kind: CrsOffer::KIND.to_string(),
            request: digest,
            reply: serde_json::json!({}),
        };
        assert!(answers(&last, 5, CrsOffer::KIND, &digest));
        assert!(
            !answers(&last, 6, CrsOffer::KIND, &digest),
            "a later message"
        );
        assert!(
            !answers(&last, 4, CrsOffer::KIND, &digest),
            "not yet answered"
        );
        let other = request_digest(&CrsOffer { crs_hash: [8; 32] }).unwrap();
        assert!(!answers(&last, 5, CrsOffer::KIND, &other), "another body");
        assert!(!answers(&last, 5, Tx1Funded::KIND, &digest), "another kind");
        assert_eq!(
            digest,
            request_digest(&offer).unwrap(),
            "the same bytes each time"
        );
    }
}
