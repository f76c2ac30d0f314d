//! Per-contract keys: BIP32 derivation, commit-then-reveal exchange with proof of possession, and the joint key J = R + F (PROTOCOL.md 2).
//!
//! Derivation path: `m/1337'/role'/contract_index'`, all hardened, with the role numbers
//! of [`Role`]. The identity key uses contract index 0. A download key is used for exactly
//! one contract, because the download protocol publishes its private key.
//!
//! Exchange: each side first sends `SHA256("dstore/commit" ‖ pubkey(33) ‖ nonce(32))`, and
//! only after holding the other side's commitment sends its [`KeyReveal`]: the pubkey, the
//! nonce, and an ECDSA signature by that key over
//! `tagged_hash("dstore/pop", contract_id ‖ pubkey)` (proof of possession). Together they
//! stop the rogue-key attack (choosing F = X − R after seeing R).

use bitcoin::bip32::{ChildNumber, Xpriv};
use bitcoin::secp256k1::{ecdsa, Message, PublicKey, Scalar, SecretKey, SECP256K1};
use bitcoin::NetworkKind;
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::hashing::{sha256, tagged_hash};

/// BIP32 purpose index of every dstore key.
pub const PURPOSE: u32 = 1337;

/// What a derived key is for; the value is the second (hardened) path index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Long-term identity key that signs receipts, transcripts and peer messages.
    Identity = 0,
    /// The download key: F for a farmer, R for a renter (TX1's multisig).
    Download = 1,
    /// The TX2 output key: F2 for a farmer, R2 for a renter.
    Tx2 = 2,
    /// Destination of payouts and refunds.
    Payout = 3,
    /// Audit contract keys (Ra/Fa, Rc/Fc).
    Audit = 4,
}

/// Why key derivation or a key exchange step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("bip32 derivation failed: {0}")]
    Bip32(String),
    #[error("contract index {0} is not below 2^31")]
    IndexTooLarge(u32),
    #[error("revealed key and nonce do not match the commitment")]
    CommitmentMismatch,
    #[error("proof of possession does not verify")]
    BadProofOfPossession,
    #[error("keys sum to the point at infinity")]
    DegenerateSum,
}

impl From<bitcoin::bip32::Error> for KeyError {
    fn from(e: bitcoin::bip32::Error) -> Self {
        KeyError::Bip32(e.to_string())
    }
}

/// Derives the private key for `role` and `contract_index` from a wallet seed.
pub fn derive_key(seed: &[u8], role: Role, contract_index: u32) -> Result<SecretKey, KeyError> {
    let hardened =
        |i: u32| ChildNumber::from_hardened_idx(i).map_err(|_| KeyError::IndexTooLarge(i));
    let path = [
        hardened(PURPOSE)?,
        hardened(role as u32)?,
        hardened(contract_index)?,
    ];
    let master = Xpriv::new_master(NetworkKind::Main, seed)?;
    Ok(master.derive_priv(SECP256K1, &path)?.private_key)
}

/// The party's identity key pair (role 0, index 0).
pub fn identity_keypair(seed: &[u8]) -> Result<bitcoin::secp256k1::Keypair, KeyError> {
    let secret = derive_key(seed, Role::Identity, 0)?;
    Ok(bitcoin::secp256k1::Keypair::from_secret_key(
        SECP256K1, &secret,
    ))
}

/// A key commitment: SHA256("dstore/commit" ‖ pubkey ‖ nonce).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyCommitment(pub [u8; 32]);

/// The opening of a [`KeyCommitment`], with a proof of possession of the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyReveal {
    pub pubkey: PublicKey,
    pub nonce: [u8; 32],
    pub proof_of_possession: ecdsa::Signature,
}

/// The commitment to `pubkey` under `nonce`.
pub fn commitment_of(pubkey: &PublicKey, nonce: &[u8; 32]) -> KeyCommitment {
    KeyCommitment(sha256(&[b"dstore/commit", &pubkey.serialize(), nonce]))
}

/// The message a proof of possession signs.
pub fn proof_of_possession_message(contract_id: &[u8; 32], pubkey: &PublicKey) -> Message {
    Message::from_digest(tagged_hash(
        "dstore/pop",
        &[contract_id, &pubkey.serialize()],
    ))
}

/// Makes the commitment to send now and the reveal to send once the peer's commitment is in.
pub fn commit_key(
    rng: &mut (impl RngCore + CryptoRng),
    secret: &SecretKey,
    contract_id: &[u8; 32],
) -> (KeyCommitment, KeyReveal) {
    let pubkey = secret.public_key(SECP256K1);
    let mut nonce = [0u8; 32];
    rng.fill_bytes(&mut nonce);
    let proof_of_possession =
        SECP256K1.sign_ecdsa(&proof_of_possession_message(contract_id, &pubkey), secret);
    (
        commitment_of(&pubkey, &nonce),
        KeyReveal {
            pubkey,
            nonce,
            proof_of_possession,
        },
    )
}

/// Checks a peer's reveal against its earlier commitment and its proof of possession.
pub fn verify_reveal(
    commitment: &KeyCommitment,
    reveal: &KeyReveal,
    contract_id: &[u8; 32],
) -> Result<(), KeyError> {
    if commitment_of(&reveal.pubkey, &reveal.nonce) != *commitment {
        return Err(KeyError::CommitmentMismatch);
    }
    let message = proof_of_possession_message(contract_id, &reveal.pubkey);
    SECP256K1
        .verify_ecdsa(&message, &reveal.proof_of_possession, &reveal.pubkey)
        .map_err(|_| KeyError::BadProofOfPossession)
}

/// J = R + F.
pub fn joint_public_key(renter: &PublicKey, farmer: &PublicKey) -> Result<PublicKey, KeyError> {
    renter.combine(farmer).map_err(|_| KeyError::DegenerateSum)
}

/// j = r + f mod n.
pub fn joint_secret_key(renter: &SecretKey, farmer: &SecretKey) -> Result<SecretKey, KeyError> {
    renter
        .add_tweak(&Scalar::from(*farmer))
        .map_err(|_| KeyError::DegenerateSum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const CONTRACT: [u8; 32] = [3; 32];

    #[test]
    fn derivation_is_deterministic_and_role_separated() {
        let seed = [42u8; 32];
        let a = derive_key(&seed, Role::Download, 5).unwrap();
        assert_eq!(a, derive_key(&seed, Role::Download, 5).unwrap());
        assert_ne!(a, derive_key(&seed, Role::Download, 6).unwrap());
        assert_ne!(a, derive_key(&seed, Role::Tx2, 5).unwrap());
        assert_ne!(a, derive_key(&[43u8; 32], Role::Download, 5).unwrap());
        assert_eq!(
            derive_key(&seed, Role::Download, 1 << 31),
            Err(KeyError::IndexTooLarge(1 << 31))
        );
        identity_keypair(&seed).unwrap();
    }

    #[test]
    fn honest_reveal_verifies() {
        let mut rng = StdRng::seed_from_u64(1);
        let secret = SecretKey::new(&mut rng);
        let (commitment, reveal) = commit_key(&mut rng, &secret, &CONTRACT);
        verify_reveal(&commitment, &reveal, &CONTRACT).unwrap();
        // The proof of possession is bound to the contract.
        assert_eq!(
            verify_reveal(&commitment, &reveal, &[4; 32]),
            Err(KeyError::BadProofOfPossession)
        );
    }

    #[test]
    fn rogue_key_attempts_fail() {
        let mut rng = StdRng::seed_from_u64(2);
        let renter = SecretKey::new(&mut rng);
        let farmer = SecretKey::new(&mut rng);
        let (farmer_commitment, farmer_reveal) = commit_key(&mut rng, &farmer, &CONTRACT);

        // After seeing R, the farmer wants F' = X − R so that J = X. Its commitment was to F.
        let x = SecretKey::new(&mut rng).public_key(SECP256K1);
        let rogue = x
            .combine(&renter.public_key(SECP256K1).negate(SECP256K1))
            .unwrap();
        let swapped = KeyReveal {
            pubkey: rogue,
            ..farmer_reveal
        };
        assert_eq!(
            verify_reveal(&farmer_commitment, &swapped, &CONTRACT),
            Err(KeyError::CommitmentMismatch)
        );

        // Committing to F' directly needs a proof of possession it cannot make.
        let nonce = [9u8; 32];
        let rogue_commitment = commitment_of(&rogue, &nonce);
        let no_pop = KeyReveal {
            pubkey: rogue,
            nonce,
            proof_of_possession: farmer_reveal.proof_of_possession,
        };
        assert_eq!(
            verify_reveal(&rogue_commitment, &no_pop, &CONTRACT),
            Err(KeyError::BadProofOfPossession)
        );
    }

    #[test]
    fn joint_keys_agree() {
        let mut rng = StdRng::seed_from_u64(3);
        let r = SecretKey::new(&mut rng);
        let f = SecretKey::new(&mut rng);
        let j = joint_secret_key(&r, &f).unwrap();
        let big_j = joint_public_key(&r.public_key(SECP256K1), &f.public_key(SECP256K1)).unwrap();
        assert_eq!(j.public_key(SECP256K1), big_j);
        assert_eq!(
            joint_secret_key(&r, &r.negate()),
            Err(KeyError::DegenerateSum)
        );
    }
}
