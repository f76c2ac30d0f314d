//! The farmer's storage receipt (PROTOCOL.md 1.3): a BIP340 signature by its identity key over (contract id, root_C, length, expiry).

use bitcoin::secp256k1::{schnorr, Keypair, Message, XOnlyPublicKey, SECP256K1};
use serde::{Deserialize, Serialize};

use crate::hashing::tagged_hash;
use crate::merkle::{Hash32, MerkleCommitment};

/// A receipt signature that does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    #[error("the receipt is signed by a different farmer")]
    WrongFarmer,
    #[error("the receipt signature does not verify")]
    BadSignature,
}

/// What the farmer signs after receiving C and recomputing its Merkle root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageReceipt {
    pub contract_id: [u8; 32],
    pub root_c: Hash32,
    pub length: u64,
    /// Block height until which the farmer promises to store C.
    pub expiry_height: u32,
    /// The farmer's identity key.
    pub farmer: XOnlyPublicKey,
    pub signature: schnorr::Signature,
}

fn receipt_message(
    contract_id: &[u8; 32],
    root_c: &Hash32,
    length: u64,
    expiry_height: u32,
) -> Message {
    Message::from_digest(tagged_hash(
        "dstore/storage-receipt",
        &[
            contract_id,
            root_c,
            &length.to_be_bytes(),
            &expiry_height.to_be_bytes(),
        ],
    ))
}

impl StorageReceipt {
    /// The farmer signs a receipt for the ciphertext it holds.
    pub fn sign(
        identity: &Keypair,
        contract_id: [u8; 32],
        stored: MerkleCommitment,
        expiry_height: u32,
    ) -> Self {
        let message = receipt_message(&contract_id, &stored.root, stored.length, expiry_height);
        StorageReceipt {
            contract_id,
            root_c: stored.root,
            length: stored.length,
            expiry_height,
            farmer: identity.x_only_public_key().0,
            signature: SECP256K1.sign_schnorr_no_aux_rand(&message, identity),
        }
    }

    /// Checks the signature by the receipt's own farmer key.
    pub fn verify_signature(&self) -> Result<(), ReceiptError> {
        let message = receipt_message(
            &self.contract_id,
            &self.root_c,
            self.length,
            self.expiry_height,
        );
        SECP256K1
            .verify_schnorr(&self.signature, &message, &self.farmer)
            .map_err(|_| ReceiptError::BadSignature)
    }

    /// Checks the receipt is by `farmer` and its signature verifies.
    pub fn verify(&self, farmer: &XOnlyPublicKey) -> Result<(), ReceiptError> {
        if self.farmer != *farmer {
            return Err(ReceiptError::WrongFarmer);
        }
        self.verify_signature()
    }

    /// Root and length as a commitment.
    pub fn commitment(&self) -> MerkleCommitment {
        MerkleCommitment {
            root: self.root_c,
            length: self.length,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::secp256k1::SecretKey;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn receipt_signs_and_binds_fields() {
        let mut rng = StdRng::seed_from_u64(1);
        let identity = Keypair::from_secret_key(SECP256K1, &SecretKey::new(&mut rng));
        let other = Keypair::from_secret_key(SECP256K1, &SecretKey::new(&mut rng));
        let receipt = StorageReceipt::sign(
            &identity,
            [1; 32],
            MerkleCommitment {
                root: [2; 32],
                length: 77,
            },
            900,
        );
        receipt.verify(&identity.x_only_public_key().0).unwrap();
        assert_eq!(
            receipt.verify(&other.x_only_public_key().0),
            Err(ReceiptError::WrongFarmer)
        );
        let mut altered = receipt;
        altered.length = 78;
        assert_eq!(altered.verify_signature(), Err(ReceiptError::BadSignature));
    }
}
