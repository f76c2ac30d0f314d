//! Signed peer messages between renter and farmer (PROTOCOL.md 7): versioned JSON
//! envelopes, each signed by the sender's identity key over the protocol version, the
//! contract id, the sender's sequence number, the message kind and the exact body bytes,
//! so that a message cannot be moved to another contract, altered, replayed or reordered
//! without the receiver noticing.
//!
//! Opening an envelope ([`open`]) checks everything that needs no state and returns the
//! body with its sequence number; [`SequenceGuard::next`] then says whether that number is
//! the one expected and gives the guard to store *together with* the state change the
//! message causes. A rejected message therefore changes nothing: the caller stores the
//! new guard only when it commits the message's effect.
//!
//! The body is carried as raw JSON and the signature covers those exact bytes, so no
//! canonical re-serialisation is needed and unknown or duplicated fields cannot be
//! smuggled past the signature.

use bitcoin::secp256k1::{schnorr, Keypair, Message, XOnlyPublicKey, SECP256K1};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::hashing::tagged_hash;

/// The peer protocol version this library speaks.
pub const PEER_PROTOCOL_VERSION: u16 = 1;

/// Largest envelope accepted (bulk data travels as streams, never in envelopes). The
/// largest message is the farmer's refund signatures of a 52-audit contract (~2 MB).
pub const MAX_ENVELOPE_BYTES: usize = 4 << 20;

/// Why a peer message was refused. Each maps to one clear error for the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("message of {0} bytes exceeds the {MAX_ENVELOPE_BYTES}-byte limit")]
    Oversized(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("unsupported peer protocol version {0} (this node speaks {PEER_PROTOCOL_VERSION})")]
    UnsupportedVersion(u16),
    #[error("expected a {expected} message, got {got}")]
    WrongKind { expected: &'static str, got: String },
    #[error("message is for another contract")]
    WrongContract,
    #[error("message is signed by an unexpected key")]
    WrongSender,
    #[error("message signature does not verify")]
    BadSignature,
    #[error("message {got} was already processed (next expected: {expected})")]
    Replayed { expected: u64, got: u64 },
    #[error("message {got} arrived out of order (next expected: {expected})")]
    OutOfOrder { expected: u64, got: u64 },
}

/// A message body: any serde type with a fixed kind name.
pub trait PeerMessage: Serialize + DeserializeOwned {
    /// The message kind, part of what is signed.
    const KIND: &'static str;
}

/// The envelope as it travels.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    version: u16,
    #[serde(with = "hex::serde")]
    contract_id: [u8; 32],
    seq: u64,
    sender: XOnlyPublicKey,
    kind: &'a str,
    #[serde(borrow)]
    body: &'a RawValue,
    signature: schnorr::Signature,
}

/// What the receiver expects of an envelope before looking at its body.
#[derive(Debug, Clone, Copy)]
pub struct Expected {
    pub contract_id: [u8; 32],
    /// The sender's identity key, or `None` for a first contact whose key the message
    /// itself introduces (the signature still has to verify under it).
    pub sender: Option<XOnlyPublicKey>,
}

/// A verified message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened<B> {
    pub sender: XOnlyPublicKey,
    pub seq: u64,
    pub body: B,
}

fn digest(
    version: u16,
    contract_id: &[u8; 32],
    seq: u64,
    sender: &XOnlyPublicKey,
    kind: &str,
    body: &[u8],
) -> Message {
    let kind_len = u32::try_from(kind.len()).unwrap_or(u32::MAX).to_be_bytes();
    Message::from_digest(tagged_hash(
        "dstore/peer",
        &[
            &version.to_be_bytes(),
            contract_id,
            &seq.to_be_bytes(),
            &sender.serialize(),
            &kind_len,
            kind.as_bytes(),
            body,
        ],
    ))
}

/// Signs `body` as message number `seq` of `identity` for `contract_id`; returns the
/// envelope's JSON bytes.
pub fn sign<B: PeerMessage>(
    identity: &Keypair,
    contract_id: [u8; 32],
    seq: u64,
    body: &B,
) -> Result<Vec<u8>, PeerError> {
    let body = serde_json::to_string(body).map_err(|e| PeerError::Malformed(e.to_string()))?;
    let raw = RawValue::from_string(body).map_err(|e| PeerError::Malformed(e.to_string()))?;
    let sender = identity.x_only_public_key().0;
    let message = digest(
        PEER_PROTOCOL_VERSION,
        &contract_id,
        seq,
        &sender,
        B::KIND,
        raw.get().as_bytes(),
    );
    let wire = Wire {
        version: PEER_PROTOCOL_VERSION,
        contract_id,
        seq,
        sender,
        kind: B::KIND,
        body: &raw,
        signature: SECP256K1.sign_schnorr_no_aux_rand(&message, identity),
    };
    let bytes = serde_json::to_vec(&wire).map_err(|e| PeerError::Malformed(e.to_string()))?;
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return Err(PeerError::Oversized(bytes.len()));
    }
    Ok(bytes)
}

/// Decodes and verifies an envelope of kind `B` against `expected`. Checks, in order:
/// size, JSON shape, version, kind, contract, sender, signature, then the body's own shape.
/// Sequence numbers are the caller's business, through [`SequenceGuard`].
pub fn open<B: PeerMessage>(bytes: &[u8], expected: &Expected) -> Result<Opened<B>, PeerError> {
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return Err(PeerError::Oversized(bytes.len()));
    }
    let wire: Wire<'_> =
        serde_json::from_slice(bytes).map_err(|e| PeerError::Malformed(e.to_string()))?;
    if wire.version != PEER_PROTOCOL_VERSION {
        return Err(PeerError::UnsupportedVersion(wire.version));
    }
    if wire.kind != B::KIND {
        return Err(PeerError::WrongKind {
            expected: B::KIND,
            got: wire.kind.chars().take(64).collect(),
        });
    }
    if wire.contract_id != expected.contract_id {
        return Err(PeerError::WrongContract);
    }
    if expected.sender.is_some_and(|key| key != wire.sender) {
        return Err(PeerError::WrongSender);
    }
    let message = digest(
        wire.version,
        &wire.contract_id,
        wire.seq,
        &wire.sender,
        wire.kind,
        wire.body.get().as_bytes(),
    );
    SECP256K1
        .verify_schnorr(&wire.signature, &message, &wire.sender)
        .map_err(|_| PeerError::BadSignature)?;
    let body: B =
        serde_json::from_str(wire.body.get()).map_err(|e| PeerError::Malformed(e.to_string()))?;
    Ok(Opened {
        sender: wire.sender,
        seq: wire.seq,
        body,
    })
}

/// The contract id and sequence number an envelope claims, read before anything is
/// verified, so the receiver can find the state to check it against with [`open`].
pub fn peek(bytes: &[u8]) -> Result<([u8; 32], u64), PeerError> {
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return Err(PeerError::Oversized(bytes.len()));
    }
    let wire: Wire<'_> =
        serde_json::from_slice(bytes).map_err(|e| PeerError::Malformed(e.to_string()))?;
    Ok((wire.contract_id, wire.seq))
}

/// The next sequence number expected from one sender on one contract. Numbers start at 0
/// and go up by one per message; anything else is a replay or out of order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceGuard {
    pub next: u64,
}

impl SequenceGuard {
    /// The guard after accepting `seq`, or why `seq` is refused. `self` is not changed:
    /// store the returned guard together with the message's effect.
    pub fn next(&self, seq: u64) -> Result<SequenceGuard, PeerError> {
        let expected = self.next;
        match seq.cmp(&expected) {
            std::cmp::Ordering::Less => Err(PeerError::Replayed { expected, got: seq }),
            std::cmp::Ordering::Greater => Err(PeerError::OutOfOrder { expected, got: seq }),
            std::cmp::Ordering::Equal => Ok(SequenceGuard {
                next: expected
                    .checked_add(1)
                    .ok_or(PeerError::OutOfOrder { expected, got: seq })?,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::secp256k1::SecretKey;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Hello {
        size: u64,
        note: String,
    }
    impl PeerMessage for Hello {
        const KIND: &'static str = "hello";
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    struct Bye {}
    impl PeerMessage for Bye {
        const KIND: &'static str = "bye";
    }

    const ID: [u8; 32] = [9; 32];

    fn key(seed: u8) -> Keypair {
        Keypair::from_secret_key(SECP256K1, &SecretKey::from_slice(&[seed; 32]).unwrap())
    }

    fn hello() -> Hello {
        Hello {
            size: 4096,
            note: "hi".into(),
        }
    }

    fn expect(sender: Option<XOnlyPublicKey>) -> Expected {
        Expected {
            contract_id: ID,
            sender,
        }
    }

    #[test]
    fn signed_message_opens() {
        let alice = key(1);
        let bytes = sign(&alice, ID, 0, &hello()).unwrap();
        let opened: Opened<Hello> = open(&bytes, &expect(None)).unwrap();
        assert_eq!(opened.body, hello());
        assert_eq!(opened.seq, 0);
        assert_eq!(opened.sender, alice.x_only_public_key().0);
        let known = expect(Some(alice.x_only_public_key().0));
        assert_eq!(open::<Hello>(&bytes, &known).unwrap(), opened);
    }

    #[test]
    fn moved_altered_or_misaddressed_messages_are_refused() {
        let alice = key(1);
        let bytes = sign(&alice, ID, 3, &hello()).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        let other = Expected {
            contract_id: [8; 32],
            sender: None,
        };
        assert_eq!(open::<Hello>(&bytes, &other), Err(PeerError::WrongContract));
        let bob = expect(Some(key(2).x_only_public_key().0));
        assert_eq!(open::<Hello>(&bytes, &bob), Err(PeerError::WrongSender));
        assert!(matches!(
            open::<Bye>(&bytes, &expect(None)),
            Err(PeerError::WrongKind { .. })
        ));
        let altered = text.replace("4096", "4097");
        assert_eq!(
            open::<Hello>(altered.as_bytes(), &expect(None)),
            Err(PeerError::BadSignature)
        );
        let renumbered = text.replace("\"seq\":3", "\"seq\":4");
        assert_eq!(
            open::<Hello>(renumbered.as_bytes(), &expect(None)),
            Err(PeerError::BadSignature)
        );
        // The contract id moved to another contract (same key) breaks the signature too.
        let moved = text.replace(&hex::encode(ID), &hex::encode([8u8; 32]));
        let moved_expect = Expected {
            contract_id: [8; 32],
            sender: None,
        };
        assert_eq!(
            open::<Hello>(moved.as_bytes(), &moved_expect),
            Err(PeerError::BadSignature)
        );
        // A field added to the body, even a whitespace change, is outside the signature.
        let padded = text.replace("\"size\":4096", "\"size\": 4096");
        assert_eq!(
            open::<Hello>(padded.as_bytes(), &expect(None)),
            Err(PeerError::BadSignature)
        );
        let version = text.replace("\"version\":1", "\"version\":2");
        assert_eq!(
            open::<Hello>(version.as_bytes(), &expect(None)),
            Err(PeerError::UnsupportedVersion(2))
        );
        let extra = text.replacen('{', "{\"extra\":1,", 1);
        assert!(matches!(
            open::<Hello>(extra.as_bytes(), &expect(None)),
            Err(PeerError::Malformed(_))
        ));
    }

    #[test]
    fn oversized_and_garbage_are_malformed() {
        let big = vec![b' '; MAX_ENVELOPE_BYTES + 1];
        assert_eq!(
            open::<Hello>(&big, &expect(None)),
            Err(PeerError::Oversized(MAX_ENVELOPE_BYTES + 1))
        );
        for garbage in [
            &b""[..],
            b"{",
            b"null",
            b"[]",
            b"{\"version\":1}",
            &[0xff; 40],
        ] {
            assert!(matches!(
                open::<Hello>(garbage, &expect(None)),
                Err(PeerError::Malformed(_))
            ));
        }
        let huge = Hello {
            size: 1,
            note: "x".repeat(MAX_ENVELOPE_BYTES),
        };
        assert!(matches!(
            sign(&key(1), ID, 0, &huge),
            Err(PeerError::Oversized(_))
        ));
    }

    #[test]
    fn sequence_guard_refuses_replays_and_reordering_without_changing() {
        let guard = SequenceGuard::default();
        assert_eq!(
            guard.next(1),
            Err(PeerError::OutOfOrder {
                expected: 0,
                got: 1
            })
        );
        assert_eq!(guard, SequenceGuard::default(), "unchanged by a refusal");
        let after0 = guard.next(0).unwrap();
        let after1 = after0.next(1).unwrap();
        assert_eq!(after1.next, 2);
        assert_eq!(
            after1.next(0),
            Err(PeerError::Replayed {
                expected: 2,
                got: 0
            })
        );
        assert_eq!(
            after1.next(1),
            Err(PeerError::Replayed {
                expected: 2,
                got: 1
            })
        );
        let last = SequenceGuard { next: u64::MAX };
        assert!(last.next(u64::MAX).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = open::<Hello>(&bytes, &expect(None));
        }

        #[test]
        fn any_single_byte_change_is_refused(index in 0usize..200, mask in 1u8..=255) {
            let bytes = sign(&key(1), ID, 5, &hello()).unwrap();
            let mut changed = bytes.clone();
            let at = index % changed.len();
            changed[at] ^= mask;
            // Either refused, or (JSON-insignificant change outside the signed parts) the
            // very same message.
            if let Ok(opened) = open::<Hello>(&changed, &expect(None)) {
                prop_assert_eq!(opened, open::<Hello>(&bytes, &expect(None)).unwrap());
            }
        }
    }
}
