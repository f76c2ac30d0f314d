//! Download-time sealing of the ciphertext under the joint key (PROTOCOL.md 3.1), unsealing, and publicly checkable fraud proofs.
//!
//! **Sealing.** The farmer draws ρ, publishes A = ρ·G and streams
//! E = C ⊕ ChaCha20(seal key, nonce 0) with seal key = SHA256("dstore/seal" ‖ x(ρ·J)),
//! J = R + F. It signs (BIP340, identity key) a [`SealTranscript`] over
//! `tagged_hash("dstore/seal-transcript", contract id ‖ download id ‖ R ‖ F ‖ A ‖ root_E ‖ length)`.
//! R and F are signed so that a later fraud proof cannot swap in other keys. The renter
//! checks the transcript against the storage receipt (same farmer, contract, length) and E
//! against root_E before paying. After TX2 reveals f, j = r + f and ρ·J = j·A, so the
//! renter (and only someone holding both r and f) can unseal. ChaCha20's 32-bit block
//! counter limits one sealed copy to 256 GiB; longer data fails cleanly.
//!
//! **Fraud proof design.** The fraud is "the farmer-signed (A, root_E) unseals, at some
//! segment i, to bytes whose leaf hash is not leaf i of the farmer-signed root_C". A checker
//! needs the expected leaf i, which is in no farmer message, so the renter must hold C's
//! leaf list (the C tree, 32 bytes per 4 KiB = 0.8% of C): it keeps it from upload
//! (`datapath::encrypt_and_build_tree`) or fetches it at download time and checks it
//! against root_C. The proof ([`FraudProof`]) contains:
//!
//! * the storage receipt (farmer signs contract id, root_C, length) and the seal transcript
//!   (same farmer key, same contract id and length; signs R, F, A, root_E);
//! * segment i of E with its Merkle path to root_E;
//! * leaf i of the C tree with its Merkle path to root_C;
//! * the renter's secret r and the on-chain TX2 (with the input index spending TX1:0).
//!
//! [`verify_fraud_proof`] checks both signatures, both paths, extracts f from TX2 (which
//! must yield f·G = F for the signed F), checks r·G = R, unseals segment i with j = r + f at
//! keystream offset i·4096, and accepts only if its leaf hash differs from leaf i of root_C.
//! Soundness: for an honest farmer E_i ⊕ keystream_i = C_i, whose leaf is the one under
//! root_C at index i (Merkle paths bind the index), so no proof exists without breaking
//! SHA-256 or the signatures. Publishing r is harmless once TX1:0 has been spent by TX2.

use std::io::{self, Read, Write};

use bitcoin::secp256k1::{
    schnorr, Keypair, Message, PublicKey, Scalar, SecretKey, XOnlyPublicKey, SECP256K1,
};
use bitcoin::Transaction;
use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use chacha20::ChaCha20;
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::extract::{extract_farmer_key, ExtractError};
use crate::hashing::{sha256, tagged_hash};
use crate::keys::{joint_public_key, joint_secret_key, KeyError};
use crate::merkle::{
    leaf_hash, verify_leaf, verify_proof, Hash32, MerkleBuilder, MerkleCommitment, MerkleError,
    MerkleProof, MerkleTree, SEGMENT_SIZE,
};
use crate::receipt::{ReceiptError, StorageReceipt};

const STREAM_BUFFER: usize = 64 * 1024;

/// Why sealing, checking or unsealing failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("point multiplication failed")]
    BadPoint,
    #[error("the data exceeds ChaCha20's keystream")]
    KeystreamExhausted,
    #[error("the transcript is signed by a different farmer")]
    WrongFarmer,
    #[error("the transcript signature does not verify")]
    BadSignature,
    #[error("the transcript is for another contract, download or key pair")]
    ContextMismatch,
    #[error(transparent)]
    Receipt(#[from] ReceiptError),
    #[error("transcript length {transcript} differs from {expected}")]
    LengthMismatch { transcript: u64, expected: u64 },
    #[error("the sealed copy does not match root_E")]
    RootMismatch,
    #[error(transparent)]
    Merkle(#[from] MerkleError),
}

/// Who and what a sealed download is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealContext {
    pub contract_id: [u8; 32],
    pub download_id: [u8; 32],
    /// R: the renter's download key.
    pub renter_key: PublicKey,
    /// F: the farmer's download key.
    pub farmer_key: PublicKey,
}

impl SealContext {
    /// J = R + F.
    pub fn joint_key(&self) -> Result<PublicKey, KeyError> {
        joint_public_key(&self.renter_key, &self.farmer_key)
    }
}

/// The farmer-signed description of one sealed copy E.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealTranscript {
    pub context: SealContext,
    /// A = ρ·G.
    pub ephemeral: PublicKey,
    pub root_e: Hash32,
    pub length: u64,
    /// The farmer's identity key.
    pub farmer: XOnlyPublicKey,
    pub signature: schnorr::Signature,
}

fn transcript_message(
    context: &SealContext,
    ephemeral: &PublicKey,
    sealed: &MerkleCommitment,
) -> Message {
    Message::from_digest(tagged_hash(
        "dstore/seal-transcript",
        &[
            &context.contract_id,
            &context.download_id,
            &context.renter_key.serialize(),
            &context.farmer_key.serialize(),
            &ephemeral.serialize(),
            &sealed.root,
            &sealed.length.to_be_bytes(),
        ],
    ))
}

impl SealTranscript {
    /// root_E and length.
    pub fn sealed_commitment(&self) -> MerkleCommitment {
        MerkleCommitment {
            root: self.root_e,
            length: self.length,
        }
    }

    /// Checks the signature by the transcript's own farmer key.
    pub fn verify_signature(&self) -> Result<(), SealError> {
        let message = transcript_message(&self.context, &self.ephemeral, &self.sealed_commitment());
        SECP256K1
            .verify_schnorr(&self.signature, &message, &self.farmer)
            .map_err(|_| SealError::BadSignature)
    }
}

/// seal key = SHA256("dstore/seal" ‖ x(shared point)).
pub fn seal_key(shared_point: &PublicKey) -> [u8; 32] {
    sha256(&[
        b"dstore/seal",
        &shared_point.x_only_public_key().0.serialize(),
    ])
}

fn keystream_at(key: &[u8; 32], offset: u64) -> Result<ChaCha20, SealError> {
    let mut cipher = ChaCha20::new(key.into(), &[0u8; 12].into());
    cipher
        .try_seek(offset)
        .map_err(|_| SealError::KeystreamExhausted)?;
    Ok(cipher)
}

/// XORs `reader` with the keystream into `writer`; returns the byte count.
pub(crate) fn xor_stream(
    key: &[u8; 32],
    mut reader: impl Read,
    mut writer: impl Write,
) -> Result<u64, SealError> {
    let mut cipher = keystream_at(key, 0)?;
    let mut buf = vec![0u8; STREAM_BUFFER];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        cipher
            .try_apply_keystream(&mut buf[..n])
            .map_err(|_| SealError::KeystreamExhausted)?;
        writer.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// Bytes XORed per block handed from the keystream thread to the hashing one.
const XOR_BLOCK: usize = 1 << 20;
/// Blocks in flight between them.
const XOR_IN_FLIGHT: usize = 3;

/// XORs `reader` with `key`'s keystream on this thread while a second thread hashes the
/// result into its Merkle commitment and writes it to `writer` (ChaCha20 and SHA-256 on
/// two cores instead of one after the other). Memory: a few 1 MiB blocks.
pub(crate) fn xor_and_commit<W: Write + Send>(
    key: &[u8; 32],
    mut reader: impl Read,
    writer: W,
) -> Result<MerkleCommitment, SealError> {
    std::thread::scope(|scope| {
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(XOR_IN_FLIGHT);
        let (free_tx, free_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(XOR_IN_FLIGHT + 2);
        let hasher = scope.spawn(move || -> io::Result<MerkleCommitment> {
            let (mut writer, mut builder) = (writer, MerkleBuilder::new());
            for block in full_rx {
                builder.update(&block);
                writer.write_all(&block)?;
                let _ = free_tx.try_send(block);
            }
            writer.flush()?;
            Ok(builder.finish())
        });
        let produced = (|| -> Result<(), SealError> {
            let mut cipher = keystream_at(key, 0)?;
            loop {
                let mut block = free_rx.try_recv().unwrap_or_default();
                block.resize(XOR_BLOCK, 0);
                let n = read_full(&mut reader, &mut block)?;
                if n == 0 {
                    return Ok(());
                }
                block.truncate(n);
                cipher
                    .try_apply_keystream(&mut block)
                    .map_err(|_| SealError::KeystreamExhausted)?;
                if full_tx.send(block).is_err() {
                    return Ok(()); // the hashing side failed: its error is returned
                }
            }
        })();
        drop(full_tx);
        let hashed = hasher
            .join()
            .map_err(|_| io::Error::other("the hashing thread panicked"))?;
        produced?;
        Ok(hashed?)
    })
}

/// Reads into `buf` until it is full or the input ends; the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Farmer: seals C from `ciphertext` into `sealed` and signs the transcript (the
/// keystream and the hashing of E on two threads, [`xor_and_commit`]).
pub fn seal(
    rng: &mut (impl RngCore + CryptoRng),
    context: &SealContext,
    identity: &Keypair,
    ciphertext: impl Read,
    sealed: impl Write + Send,
) -> Result<SealTranscript, SealError> {
    let rho = SecretKey::new(rng);
    let ephemeral = rho.public_key(SECP256K1);
    let shared = context
        .joint_key()?
        .mul_tweak(SECP256K1, &Scalar::from(rho))
        .map_err(|_| SealError::BadPoint)?;
    let commitment = xor_and_commit(&seal_key(&shared), ciphertext, sealed)?;
    let signature = SECP256K1.sign_schnorr_no_aux_rand(
        &transcript_message(context, &ephemeral, &commitment),
        identity,
    );
    Ok(SealTranscript {
        context: *context,
        ephemeral,
        root_e: commitment.root,
        length: commitment.length,
        farmer: identity.x_only_public_key().0,
        signature,
    })
}

/// Renter: checks a transcript is by `farmer`, for `context`, and matches the receipt.
pub fn verify_transcript(
    transcript: &SealTranscript,
    farmer: &XOnlyPublicKey,
    context: &SealContext,
    receipt: &StorageReceipt,
) -> Result<(), SealError> {
    if transcript.farmer != *farmer {
        return Err(SealError::WrongFarmer);
    }
    transcript.verify_signature()?;
    if transcript.context != *context || receipt.contract_id != context.contract_id {
        return Err(SealError::ContextMismatch);
    }
    receipt.verify(farmer)?;
    if transcript.length != receipt.length {
        return Err(SealError::LengthMismatch {
            transcript: transcript.length,
            expected: receipt.length,
        });
    }
    Ok(())
}

/// Renter: checks received E against root_E (transfer integrity) and returns E's tree,
/// needed later for a fraud proof.
pub fn check_sealed_copy(
    transcript: &SealTranscript,
    sealed: impl Read,
) -> Result<MerkleTree, SealError> {
    sealed_tree_matching(&transcript.sealed_commitment(), sealed)
}

/// Builds E's tree from `sealed` and checks it against the signed root_E and length.
pub(crate) fn sealed_tree_matching(
    signed: &MerkleCommitment,
    sealed: impl Read,
) -> Result<MerkleTree, SealError> {
    // Whole 1 MiB blocks: a reader handing over a few KiB at a time (a network pipe)
    // would otherwise starve the multi-lane leaf hashing.
    let (mut sealed, mut builder) = (sealed, MerkleBuilder::recording_leaves());
    let mut block = vec![0u8; XOR_BLOCK];
    loop {
        let n = read_full(&mut sealed, &mut block)?;
        if n == 0 {
            break;
        }
        builder.update(&block[..n]);
    }
    let tree = builder.finish_tree()?;
    if tree.commitment() != *signed {
        return Err(SealError::RootMismatch);
    }
    Ok(tree)
}

fn shared_key(joint_secret: &SecretKey, ephemeral: &PublicKey) -> Result<[u8; 32], SealError> {
    let shared = ephemeral
        .mul_tweak(SECP256K1, &Scalar::from(*joint_secret))
        .map_err(|_| SealError::BadPoint)?;
    Ok(seal_key(&shared))
}

/// Renter: unseals E into C with j = r + f; returns the byte count.
pub fn unseal(
    joint_secret: &SecretKey,
    ephemeral: &PublicKey,
    sealed: impl Read,
    ciphertext: impl Write,
) -> Result<u64, SealError> {
    xor_stream(&shared_key(joint_secret, ephemeral)?, sealed, ciphertext)
}

/// Unseals one segment (its real bytes) at index `index`.
pub fn unseal_segment(
    joint_secret: &SecretKey,
    ephemeral: &PublicKey,
    index: u64,
    segment: &[u8],
) -> Result<Vec<u8>, SealError> {
    unseal_segment_with_key(&shared_key(joint_secret, ephemeral)?, index, segment)
}

/// Unseals segment `index` under a seal key (mode L or mode N).
pub(crate) fn unseal_segment_with_key(
    key: &[u8; 32],
    index: u64,
    segment: &[u8],
) -> Result<Vec<u8>, SealError> {
    let offset = index
        .checked_mul(SEGMENT_SIZE as u64)
        .ok_or(SealError::KeystreamExhausted)?;
    let mut cipher = keystream_at(key, offset)?;
    let mut out = segment.to_vec();
    cipher
        .try_apply_keystream(&mut out)
        .map_err(|_| SealError::KeystreamExhausted)?;
    Ok(out)
}

/// Renter: unseals E segment by segment and returns the first index (with its sealed
/// bytes) whose unsealed leaf differs from the C tree, or None if all match.
pub fn find_bad_segment(
    joint_secret: &SecretKey,
    ephemeral: &PublicKey,
    sealed: impl Read,
    ciphertext_tree: &MerkleTree,
) -> Result<Option<(u64, Vec<u8>)>, SealError> {
    let key = shared_key(joint_secret, ephemeral)?;
    find_bad_segment_with_key(&key, sealed, ciphertext_tree)
}

/// [`find_bad_segment`] under a seal key (mode L or mode N).
pub(crate) fn find_bad_segment_with_key(
    key: &[u8; 32],
    mut sealed: impl Read,
    ciphertext_tree: &MerkleTree,
) -> Result<Option<(u64, Vec<u8>)>, SealError> {
    let mut cipher = keystream_at(key, 0)?;
    let mut segment = vec![0u8; SEGMENT_SIZE];
    let mut index = 0u64;
    loop {
        let n = crate::datapath::read_full(&mut sealed, &mut segment)?;
        if n == 0 {
            return Ok(None);
        }
        let sealed_bytes = segment[..n].to_vec();
        cipher
            .try_apply_keystream(&mut segment[..n])
            .map_err(|_| SealError::KeystreamExhausted)?;
        let expected = ciphertext_tree.leaf(index).ok();
        if expected != Some(leaf_hash(&segment[..n])?) {
            return Ok(Some((index, sealed_bytes)));
        }
        index += 1;
    }
}

/// Why a fraud proof was not accepted (or could not be built).
#[derive(Debug, thiserror::Error)]
pub enum FraudError {
    #[error("storage receipt: {0}")]
    Receipt(#[from] ReceiptError),
    #[error("seal transcript: {0}")]
    Transcript(#[from] SealError),
    #[error("receipt and transcript are by different farmers, contracts or lengths")]
    Unrelated,
    #[error("sealed segment is not in root_E: {0}")]
    SealedSegment(MerkleError),
    #[error("expected leaf is not in root_C: {0}")]
    ExpectedLeaf(MerkleError),
    #[error("TX2 does not reveal the farmer's key: {0}")]
    Extract(#[from] ExtractError),
    #[error("the renter secret does not match R")]
    WrongRenterKey,
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("the segment unseals correctly: no fraud")]
    NoFraud,
}

/// Public evidence that a farmer delivered a sealed copy that does not unseal to C.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FraudProof {
    pub receipt: StorageReceipt,
    pub transcript: SealTranscript,
    pub segment_index: u64,
    /// Segment i of E (real bytes, unpadded).
    pub sealed_segment: Vec<u8>,
    pub sealed_proof: MerkleProof,
    /// Leaf i of C's tree.
    pub expected_leaf: Hash32,
    pub expected_proof: MerkleProof,
    pub renter_secret: SecretKey,
    pub tx2: Transaction,
    pub tx2_input: usize,
}

/// Everything a renter holds after a failed unseal, to build a [`FraudProof`].
pub struct FraudEvidence<'a> {
    pub receipt: &'a StorageReceipt,
    pub transcript: &'a SealTranscript,
    pub sealed_tree: &'a MerkleTree,
    pub ciphertext_tree: &'a MerkleTree,
    pub segment_index: u64,
    pub sealed_segment: Vec<u8>,
    pub renter_secret: SecretKey,
    pub tx2: Transaction,
    pub tx2_input: usize,
}

/// Builds a fraud proof and checks it; an honest farmer's data gives `FraudError::NoFraud`.
pub fn build_fraud_proof(evidence: FraudEvidence<'_>) -> Result<FraudProof, FraudError> {
    let i = evidence.segment_index;
    let proof = FraudProof {
        receipt: *evidence.receipt,
        transcript: *evidence.transcript,
        segment_index: i,
        sealed_segment: evidence.sealed_segment,
        sealed_proof: evidence
            .sealed_tree
            .proof(i)
            .map_err(FraudError::SealedSegment)?,
        expected_leaf: evidence
            .ciphertext_tree
            .leaf(i)
            .map_err(FraudError::ExpectedLeaf)?,
        expected_proof: evidence
            .ciphertext_tree
            .proof(i)
            .map_err(FraudError::ExpectedLeaf)?,
        renter_secret: evidence.renter_secret,
        tx2: evidence.tx2,
        tx2_input: evidence.tx2_input,
    };
    verify_fraud_proof(&proof)?;
    Ok(proof)
}

/// Checks a fraud proof without trusting the renter; Ok means the farmer is proven to
/// have delivered a sealed copy that does not unseal to the data it acknowledged.
pub fn verify_fraud_proof(proof: &FraudProof) -> Result<(), FraudError> {
    let (receipt, transcript, i) = (&proof.receipt, &proof.transcript, proof.segment_index);
    receipt.verify_signature()?;
    transcript.verify_signature()?;
    let related = receipt.farmer == transcript.farmer
        && receipt.contract_id == transcript.context.contract_id
        && receipt.length == transcript.length;
    if !related {
        return Err(FraudError::Unrelated);
    }
    verify_proof(
        &transcript.root_e,
        transcript.length,
        i,
        &proof.sealed_segment,
        &proof.sealed_proof,
    )
    .map_err(FraudError::SealedSegment)?;
    verify_leaf(
        &receipt.root_c,
        receipt.length,
        i,
        &proof.expected_leaf,
        &proof.expected_proof,
    )
    .map_err(FraudError::ExpectedLeaf)?;
    let joint = revealed_joint_secret(proof)?;
    let unsealed = unseal_segment(&joint, &transcript.ephemeral, i, &proof.sealed_segment)?;
    if leaf_hash(&unsealed).map_err(FraudError::SealedSegment)? == proof.expected_leaf {
        return Err(FraudError::NoFraud);
    }
    Ok(())
}

/// j = r + f with f extracted from TX2 for the signed F and r checked against the signed R.
fn revealed_joint_secret(proof: &FraudProof) -> Result<SecretKey, FraudError> {
    let context = &proof.transcript.context;
    let f = extract_farmer_key(
        &proof.tx2,
        proof.tx2_input,
        &context.farmer_key,
        &context.contract_id,
        None,
    )?;
    if proof.renter_secret.public_key(SECP256K1) != context.renter_key {
        return Err(FraudError::WrongRenterKey);
    }
    Ok(joint_secret_key(&proof.renter_secret, &f)?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::contract::tests::{parties, tx1_outpoint, Parties};
    use crate::nonce_reuse::farmer_sign_tx2;
    use bitcoin::Amount;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    struct Setup {
        p: Parties,
        identity: Keypair,
        context: SealContext,
        c: Vec<u8>,
        c_tree: MerkleTree,
        receipt: StorageReceipt,
        tx2: Transaction,
    }

    fn setup(seed: u64, len: usize) -> Setup {
        let p = parties(seed);
        let mut rng = StdRng::seed_from_u64(seed);
        let identity = Keypair::from_secret_key(SECP256K1, &SecretKey::new(&mut rng));
        let c: Vec<u8> = (0..len).map(|i| (i * 31 % 256) as u8).collect();
        let c_tree = MerkleTree::from_data(&c);
        let receipt =
            StorageReceipt::sign(&identity, p.contract.contract_id, c_tree.commitment(), 1000);
        let context = SealContext {
            contract_id: p.contract.contract_id,
            download_id: [0xdd; 32],
            renter_key: p.contract.renter_key,
            farmer_key: p.contract.farmer_key,
        };
        let unsigned = p
            .contract
            .unsigned_tx2(tx1_outpoint(), Amount::from_sat(1_000))
            .unwrap();
        let sig_r = p.contract.renter_sign_tx2(&unsigned, &p.r).unwrap();
        let tx2 = farmer_sign_tx2(&mut rng, &p.contract, &unsigned, &p.f, &sig_r)
            .unwrap()
            .tx;
        Setup {
            p,
            identity,
            context,
            c,
            c_tree,
            receipt,
            tx2,
        }
    }

    fn sealed(s: &Setup, data: &[u8], seed: u64) -> (SealTranscript, Vec<u8>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut e = Vec::new();
        let t = seal(&mut rng, &s.context, &s.identity, data, &mut e).unwrap();
        (t, e)
    }

    #[test]
    fn seal_unseal_round_trip() {
        for len in [0, 1, 4096, 10_000, 70_000] {
            let s = setup(60, len);
            let (t, e) = sealed(&s, &s.c, 1);
            assert_eq!(e.len(), len);
            verify_transcript(
                &t,
                &s.identity.x_only_public_key().0,
                &s.context,
                &s.receipt,
            )
            .unwrap();
            check_sealed_copy(&t, &e[..]).unwrap();
            let j = joint_secret_key(&s.p.r, &s.p.f).unwrap();
            let mut c = Vec::new();
            unseal(&j, &t.ephemeral, &e[..], &mut c).unwrap();
            assert_eq!(c, s.c);
            assert_eq!(
                find_bad_segment(&j, &t.ephemeral, &e[..], &s.c_tree).unwrap(),
                None
            );
            if len > 5000 {
                assert_eq!(
                    unseal_segment(&j, &t.ephemeral, 1, &e[4096..8192]).unwrap(),
                    s.c[4096..8192]
                );
            }
        }
    }

    #[test]
    fn one_key_alone_cannot_unseal() {
        let s = setup(61, 9000);
        let (t, e) = sealed(&s, &s.c, 2);
        for wrong in [s.p.r, s.p.f] {
            let mut c = Vec::new();
            unseal(&wrong, &t.ephemeral, &e[..], &mut c).unwrap();
            assert_ne!(c, s.c);
        }
        // The renter cannot reseal to learn the keystream either: a fresh ρ gives another E.
        let (_, e2) = sealed(&s, &s.c, 3);
        assert_ne!(e, e2);
    }

    #[test]
    fn tampered_sealed_copy_is_detected() {
        let s = setup(62, 9000);
        let (t, mut e) = sealed(&s, &s.c, 4);
        e[5000] ^= 1;
        assert!(matches!(
            check_sealed_copy(&t, &e[..]),
            Err(SealError::RootMismatch)
        ));
        let mut forged = t;
        forged.root_e = MerkleTree::from_data(&e).root();
        assert!(matches!(
            forged.verify_signature(),
            Err(SealError::BadSignature)
        ));
    }

    #[test]
    fn transcript_must_match_context_and_receipt() {
        let s = setup(63, 100);
        let (t, _) = sealed(&s, &s.c, 5);
        let farmer = s.identity.x_only_public_key().0;
        let mut other_context = s.context;
        other_context.download_id = [1; 32];
        assert!(matches!(
            verify_transcript(&t, &farmer, &other_context, &s.receipt),
            Err(SealError::ContextMismatch)
        ));
        let (short, _) = sealed(&s, &s.c[..50], 6);
        assert!(matches!(
            verify_transcript(&short, &farmer, &s.context, &s.receipt),
            Err(SealError::LengthMismatch { .. })
        ));
    }

    fn evidence<'a>(
        s: &'a Setup,
        t: &'a SealTranscript,
        e_tree: &'a MerkleTree,
        e: &[u8],
        i: u64,
    ) -> FraudEvidence<'a> {
        let start = i as usize * SEGMENT_SIZE;
        FraudEvidence {
            receipt: &s.receipt,
            transcript: t,
            sealed_tree: e_tree,
            ciphertext_tree: &s.c_tree,
            segment_index: i,
            sealed_segment: e[start..(start + SEGMENT_SIZE).min(e.len())].to_vec(),
            renter_secret: s.p.r,
            tx2: s.tx2.clone(),
            tx2_input: 0,
        }
    }

    /// A genuine fraud proof (the farmer sealed data with segment 1 corrupted) and the
    /// farmer's identity, for tests elsewhere in the crate.
    pub(crate) fn sample_fraud_proof(seed: u64) -> (FraudProof, XOnlyPublicKey) {
        let s = setup(seed, 2 * SEGMENT_SIZE + 10);
        let mut lost = s.c.clone();
        lost[SEGMENT_SIZE + 3] ^= 0x55;
        let (t, e) = sealed(&s, &lost, seed);
        let e_tree = check_sealed_copy(&t, &e[..]).unwrap();
        let j = joint_secret_key(&s.p.r, &s.p.f).unwrap();
        let (i, _) = find_bad_segment(&j, &t.ephemeral, &e[..], &s.c_tree)
            .unwrap()
            .unwrap();
        let proof = build_fraud_proof(evidence(&s, &t, &e_tree, &e, i)).unwrap();
        (proof, s.identity.x_only_public_key().0)
    }

    #[test]
    fn fraud_proof_for_wrong_data_verifies() {
        let s = setup(64, 3 * SEGMENT_SIZE + 100);
        let mut lost = s.c.clone();
        lost[2 * SEGMENT_SIZE + 7] ^= 0xff; // farmer lost/corrupted segment 2
        let (t, e) = sealed(&s, &lost, 7);
        verify_transcript(
            &t,
            &s.identity.x_only_public_key().0,
            &s.context,
            &s.receipt,
        )
        .unwrap();
        let e_tree = check_sealed_copy(&t, &e[..]).unwrap();
        let j = joint_secret_key(&s.p.r, &s.p.f).unwrap();
        let (i, _) = find_bad_segment(&j, &t.ephemeral, &e[..], &s.c_tree)
            .unwrap()
            .unwrap();
        assert_eq!(i, 2);
        let proof = build_fraud_proof(evidence(&s, &t, &e_tree, &e, i)).unwrap();
        verify_fraud_proof(&proof).unwrap();
        // Round trip through JSON, as it would be published.
        let json = serde_json::to_string(&proof).unwrap();
        verify_fraud_proof(&serde_json::from_str(&json).unwrap()).unwrap();
    }

    #[test]
    fn no_fraud_proof_against_an_honest_farmer() {
        let s = setup(65, 3 * SEGMENT_SIZE + 100);
        let (t, e) = sealed(&s, &s.c, 8);
        let e_tree = check_sealed_copy(&t, &e[..]).unwrap();
        for i in 0..4 {
            assert!(matches!(
                build_fraud_proof(evidence(&s, &t, &e_tree, &e, i)),
                Err(FraudError::NoFraud)
            ));
        }
    }

    #[test]
    fn fabricated_fraud_proofs_are_rejected() {
        let s = setup(66, 3 * SEGMENT_SIZE);
        let (t, e) = sealed(&s, &s.c, 9);
        let e_tree = check_sealed_copy(&t, &e[..]).unwrap();
        let mut lost = s.c.clone();
        lost[0] ^= 1;
        let (bad_t, bad_e) = sealed(&s, &lost, 10);
        let bad_tree = check_sealed_copy(&bad_t, &bad_e[..]).unwrap();
        let genuine = build_fraud_proof(evidence(&s, &bad_t, &bad_tree, &bad_e, 0)).unwrap();

        // Altered sealed segment (renter flips a byte of honest E): not under root_E.
        let mut p = build_fraud_proof(evidence(&s, &bad_t, &bad_tree, &bad_e, 0)).unwrap();
        p.transcript = t;
        p.sealed_proof = e_tree.proof(0).unwrap();
        p.sealed_segment = e[..SEGMENT_SIZE].to_vec();
        p.sealed_segment[3] ^= 1;
        assert!(matches!(
            verify_fraud_proof(&p),
            Err(FraudError::SealedSegment(_))
        ));

        // Wrong expected leaf.
        let mut p = genuine.clone();
        p.expected_leaf = [0; 32];
        assert!(matches!(
            verify_fraud_proof(&p),
            Err(FraudError::ExpectedLeaf(_))
        ));

        // Another renter key (unsealing would give garbage).
        let mut p = genuine.clone();
        p.renter_secret = s.p.r2;
        assert!(matches!(
            verify_fraud_proof(&p),
            Err(FraudError::WrongRenterKey)
        ));

        // A TX2 without the key leak.
        let mut p = genuine.clone();
        p.tx2.input[0].script_sig = bitcoin::ScriptBuf::new();
        assert!(matches!(
            verify_fraud_proof(&p),
            Err(FraudError::Extract(_))
        ));

        // Receipt of another farmer.
        let mut p = genuine.clone();
        let other = Keypair::from_secret_key(SECP256K1, &s.p.f2);
        p.receipt =
            StorageReceipt::sign(&other, s.receipt.contract_id, s.c_tree.commitment(), 1000);
        assert!(matches!(verify_fraud_proof(&p), Err(FraudError::Unrelated)));

        // Forged transcript signature.
        let mut p = genuine;
        p.transcript.ephemeral = s.p.contract.farmer_tx2_key;
        assert!(matches!(
            verify_fraud_proof(&p),
            Err(FraudError::Transcript(SealError::BadSignature))
        ));
    }
}
