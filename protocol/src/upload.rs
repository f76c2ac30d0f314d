//! The farmer's side of an upload (PROTOCOL.md 1.3, 7): ciphertext arrives in chunks at
//! explicit offsets, is hashed into root_C as it arrives, may resume after a broken
//! connection from the byte count the farmer reports, and can never exceed the length the
//! offer agreed. The shell stores each accepted chunk and the [`UploadCheckpoint`] together,
//! so a restart resumes without re-reading the stored bytes.

use serde::{Deserialize, Serialize};

use crate::merkle::{Hash32, MerkleBuilder, MerkleCheckpoint, MerkleCommitment, MerkleError};

/// Why a chunk or the final claim was refused. A refusal changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    #[error("chunk starts at byte {got}, but {expected} bytes are stored: resume from there")]
    WrongOffset { expected: u64, got: u64 },
    #[error("upload would reach {would} bytes, past the {limit} agreed")]
    PastOffer { would: u64, limit: u64 },
    #[error("upload incomplete: {received} of {expected} bytes")]
    Incomplete { received: u64, expected: u64 },
    #[error("the renter's root_C or length does not match the stored bytes")]
    RootMismatch,
    #[error(transparent)]
    Checkpoint(#[from] MerkleError),
}

/// Everything needed to resume an upload: the agreed length and the hash state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadCheckpoint {
    pub expected_length: u64,
    pub merkle: MerkleCheckpoint,
}

/// An upload in progress on the farmer's side.
#[derive(Debug, Clone)]
pub struct UploadReceiver {
    expected_length: u64,
    builder: MerkleBuilder,
}

impl UploadReceiver {
    /// A fresh upload of exactly `expected_length` bytes.
    pub fn new(expected_length: u64) -> UploadReceiver {
        UploadReceiver {
            expected_length,
            builder: MerkleBuilder::new(),
        }
    }

    /// Resumes from a stored checkpoint (checked for consistency).
    pub fn resume(checkpoint: UploadCheckpoint) -> Result<UploadReceiver, UploadError> {
        if checkpoint.merkle.length > checkpoint.expected_length {
            return Err(UploadError::Checkpoint(MerkleError::BadCheckpoint));
        }
        Ok(UploadReceiver {
            expected_length: checkpoint.expected_length,
            builder: MerkleBuilder::resume(checkpoint.merkle)?,
        })
    }

    /// Bytes received so far: where the next chunk must start.
    pub fn received(&self) -> u64 {
        self.builder.length()
    }

    /// The agreed length.
    pub fn expected_length(&self) -> u64 {
        self.expected_length
    }

    /// Checks a chunk without taking it: it must start where the stored bytes end and
    /// must not go past the agreed length.
    pub fn check_chunk(&self, offset: u64, len: usize) -> Result<(), UploadError> {
        let expected = self.received();
        if offset != expected {
            return Err(UploadError::WrongOffset {
                expected,
                got: offset,
            });
        }
        let would = expected.saturating_add(len as u64);
        if would > self.expected_length {
            return Err(UploadError::PastOffer {
                would,
                limit: self.expected_length,
            });
        }
        Ok(())
    }

    /// Takes a chunk (after [`UploadReceiver::check_chunk`]'s checks).
    pub fn accept(&mut self, offset: u64, chunk: &[u8]) -> Result<(), UploadError> {
        self.check_chunk(offset, chunk.len())?;
        self.builder.update(chunk);
        Ok(())
    }

    /// Takes a chunk whose [`crate::merkle::part_leaves`] the caller computed from these
    /// bytes (to check the part's signed digest), without hashing it again. Same checks
    /// as [`UploadReceiver::accept`]; a refusal changes nothing.
    pub fn accept_part(
        &mut self,
        offset: u64,
        chunk: &[u8],
        leaves: &[Hash32],
    ) -> Result<(), UploadError> {
        self.check_chunk(offset, chunk.len())?;
        self.builder.push_part(chunk, leaves)?;
        Ok(())
    }

    /// The state to store with the bytes accepted so far.
    pub fn checkpoint(&self) -> UploadCheckpoint {
        UploadCheckpoint {
            expected_length: self.expected_length,
            merkle: self.builder.checkpoint(),
        }
    }

    /// Completes the upload: every agreed byte arrived and the renter's claimed root_C
    /// and length match what was hashed. Returns the commitment the receipt signs.
    pub fn finish(&self, root_c: &Hash32, length: u64) -> Result<MerkleCommitment, UploadError> {
        if self.received() != self.expected_length {
            return Err(UploadError::Incomplete {
                received: self.received(),
                expected: self.expected_length,
            });
        }
        let commitment = self.builder.clone().finish();
        if &commitment.root != root_c || commitment.length != length {
            return Err(UploadError::RootMismatch);
        }
        Ok(commitment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::SEGMENT_SIZE;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + 7) as u8).collect()
    }

    fn commitment_of(bytes: &[u8]) -> MerkleCommitment {
        let mut b = MerkleBuilder::new();
        b.update(bytes);
        b.finish()
    }

    #[test]
    fn chunks_in_order_give_the_renters_root() {
        for len in [0usize, 1, 4096, 3 * SEGMENT_SIZE + 17] {
            let bytes = data(len);
            let want = commitment_of(&bytes);
            let mut up = UploadReceiver::new(len as u64);
            let mut offset = 0u64;
            for chunk in bytes.chunks(1000) {
                up.accept(offset, chunk).unwrap();
                offset += chunk.len() as u64;
            }
            assert_eq!(up.finish(&want.root, want.length), Ok(want), "len {len}");
        }
    }

    #[test]
    fn parts_taken_by_their_leaves_give_the_renters_root_and_refusals_change_nothing() {
        use crate::merkle::part_leaves;
        let bytes = data(9 * SEGMENT_SIZE + 77);
        let want = commitment_of(&bytes);
        let mut up = UploadReceiver::new(bytes.len() as u64);
        let (first, rest) = bytes.split_at(4 * SEGMENT_SIZE);
        up.accept_part(0, first, &part_leaves(first)).unwrap();
        let before = up.checkpoint();
        // A replay, a gap and leaves of another length are refused without change.
        assert!(matches!(
            up.accept_part(0, first, &part_leaves(first)),
            Err(UploadError::WrongOffset { .. })
        ));
        assert!(up.accept_part(5000, rest, &part_leaves(rest)).is_err());
        assert!(up.accept_part(first.len() as u64, rest, &[]).is_err());
        assert_eq!(up.checkpoint(), before);
        up.accept_part(first.len() as u64, rest, &part_leaves(rest))
            .unwrap();
        assert_eq!(up.finish(&want.root, want.length), Ok(want));
    }

    #[test]
    fn broken_upload_resumes_from_a_stored_checkpoint() {
        let bytes = data(2 * SEGMENT_SIZE + 999);
        let want = commitment_of(&bytes);
        let mut up = UploadReceiver::new(bytes.len() as u64);
        up.accept(0, &bytes[..5000]).unwrap();
        let stored = serde_json::to_vec(&up.checkpoint()).unwrap();
        drop(up);
        let mut up = UploadReceiver::resume(serde_json::from_slice(&stored).unwrap()).unwrap();
        assert_eq!(up.received(), 5000);
        up.accept(5000, &bytes[5000..]).unwrap();
        assert_eq!(up.finish(&want.root, want.length), Ok(want));
    }

    #[test]
    fn wrong_offsets_overruns_and_wrong_roots_are_refused_without_change() {
        let bytes = data(10_000);
        let want = commitment_of(&bytes);
        let mut up = UploadReceiver::new(10_000);
        up.accept(0, &bytes[..4000]).unwrap();
        let before = up.checkpoint();
        assert_eq!(
            up.accept(0, &bytes[..10]),
            Err(UploadError::WrongOffset {
                expected: 4000,
                got: 0
            }),
            "replayed chunk"
        );
        assert!(matches!(
            up.accept(4100, &bytes[4100..4200]),
            Err(UploadError::WrongOffset { .. })
        ));
        assert_eq!(
            up.accept(4000, &[0u8; 6001]),
            Err(UploadError::PastOffer {
                would: 10_001,
                limit: 10_000
            })
        );
        assert_eq!(
            up.finish(&want.root, want.length),
            Err(UploadError::Incomplete {
                received: 4000,
                expected: 10_000
            })
        );
        assert_eq!(up.checkpoint(), before, "refusals change nothing");
        up.accept(4000, &bytes[4000..]).unwrap();
        let mut wrong = want.root;
        wrong[0] ^= 1;
        assert_eq!(
            up.finish(&wrong, want.length),
            Err(UploadError::RootMismatch)
        );
        assert_eq!(up.finish(&want.root, 9_999), Err(UploadError::RootMismatch));
        assert_eq!(up.finish(&want.root, want.length), Ok(want));
        // A checkpoint claiming more than the offer is refused.
        let mut cp = up.checkpoint();
        cp.expected_length = 10;
        assert!(UploadReceiver::resume(cp).is_err());
    }
}
