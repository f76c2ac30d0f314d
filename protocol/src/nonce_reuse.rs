//! The farmer's deliberate nonce reuse on TX2 (PROTOCOL.md 3.3 step 3) and the fixed-layout TX2 template it yields.
//!
//! The farmer signs TX2's legacy sighash z with f (for F) and with f + c (for F̃) under one
//! nonce k: r = x(k·G) mod n, s = k⁻¹(z + r·d) mod n, normalised to low S. k is drawn from
//! the caller's RNG and redrawn until r and both s values have their top byte in
//! 0x01..=0x7f, so each DER integer is exactly 32 bytes, every signature is 71 bytes with
//! its sighash byte, and serialized TX2 has the same layout for every contract of a shape.
//! Both signatures are checked with libsecp256k1 before they are returned.
//!
//! The [`Tx2Template`] gives the serialized TX2, the byte ranges of both r and both s
//! fields in it, D = SHA256(TX2) and txid = SHA256(D). The ranges are found in the signed
//! transaction, so they follow the contract's key order: with R first (`OP_0 sig_R sig_F
//! sig_F̃ redeem`, [`crate::contract::Tx1KeyOrder`]) s1 starts at byte 156 of a 462-byte
//! TX2, in its third 64-byte block; with the old F-first order it started at byte 84.

use std::ops::Range;

use bitcoin::secp256k1::{ecdsa, Message, SecretKey, SECP256K1};
use bitcoin::{consensus, Transaction, Txid, VarInt};
use k256::elliptic_curve::ops::Reduce;
use k256::elliptic_curve::point::AffineCoordinates;
use k256::elliptic_curve::scalar::IsHigh;
use k256::elliptic_curve::{Field, PrimeField};
use k256::{FieldBytes, ProjectivePoint, Scalar, U256};
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::contract::{twin_secret, txid_from_digest, ContractError, DownloadContract};
use crate::hashing::sha256;

/// Nonces tried before giving up (each succeeds with probability about one half).
const MAX_NONCE_ATTEMPTS: usize = 256;

/// Why reused-nonce signing failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NonceReuseError {
    #[error(transparent)]
    Contract(#[from] ContractError),
    #[error("the secret key is not the contract's download key F")]
    WrongKey,
    #[error("no fixed-width nonce found in {MAX_NONCE_ATTEMPTS} attempts")]
    GrindingFailed,
    #[error("a produced signature does not verify")]
    SignatureInvalid,
    #[error("signed TX2 does not have the expected layout")]
    TemplateMismatch,
}

/// Converts a secp256k1 secret key to a k256 scalar.
pub(crate) fn to_scalar(secret: &SecretKey) -> Option<Scalar> {
    Option::from(Scalar::from_repr(FieldBytes::from(secret.secret_bytes())))
}

/// True when a 32-byte big-endian integer DER-encodes in exactly 32 bytes.
fn is_fixed_width(bytes: &[u8]) -> bool {
    (0x01..=0x7f).contains(&bytes[0])
}

/// Signs `digest` with every key in `keys` under one fresh nonce, ground until r and all s
/// values are fixed-width (see module doc). Returns the signatures in key order.
pub fn sign_with_one_nonce(
    rng: &mut (impl RngCore + CryptoRng),
    digest: &[u8; 32],
    keys: &[&SecretKey],
) -> Result<Vec<ecdsa::Signature>, NonceReuseError> {
    let scalars: Vec<Scalar> = keys
        .iter()
        .map(|k| to_scalar(k).ok_or(NonceReuseError::WrongKey))
        .collect::<Result<_, _>>()?;
    let z = <Scalar as Reduce<U256>>::reduce_bytes(&FieldBytes::from(*digest));
    for _ in 0..MAX_NONCE_ATTEMPTS {
        if let Some(signatures) = try_nonce(Scalar::random(&mut *rng), &z, &scalars) {
            verify_all(digest, keys, &signatures)?;
            return Ok(signatures);
        }
    }
    Err(NonceReuseError::GrindingFailed)
}

/// One grinding attempt: None if k gives a zero or non-fixed-width value.
fn try_nonce(k: Scalar, z: &Scalar, keys: &[Scalar]) -> Option<Vec<ecdsa::Signature>> {
    let k_inv: Scalar = Option::from(k.invert())?;
    let point = (ProjectivePoint::GENERATOR * k).to_affine();
    let r = <Scalar as Reduce<U256>>::reduce_bytes(&point.x());
    let r_bytes: [u8; 32] = r.to_bytes().into();
    if !is_fixed_width(&r_bytes) {
        return None;
    }
    keys.iter()
        .map(|d| signature_with(&k_inv, &r, &r_bytes, z, d))
        .collect()
}

fn signature_with(
    k_inv: &Scalar,
    r: &Scalar,
    r_bytes: &[u8; 32],
    z: &Scalar,
    d: &Scalar,
) -> Option<ecdsa::Signature> {
    let mut s = *k_inv * (*z + *r * *d);
    if bool::from(s.is_high()) {
        s = -s;
    }
    let s_bytes: [u8; 32] = s.to_bytes().into();
    if !is_fixed_width(&s_bytes) {
        return None;
    }
    let mut compact = [0u8; 64];
    compact[..32].copy_from_slice(r_bytes);
    compact[32..].copy_from_slice(&s_bytes);
    ecdsa::Signature::from_compact(&compact).ok()
}

fn verify_all(
    digest: &[u8; 32],
    keys: &[&SecretKey],
    signatures: &[ecdsa::Signature],
) -> Result<(), NonceReuseError> {
    let message = Message::from_digest(*digest);
    for (key, signature) in keys.iter().zip(signatures) {
        SECP256K1
            .verify_ecdsa(&message, signature, &key.public_key(SECP256K1))
            .map_err(|_| NonceReuseError::SignatureInvalid)?;
    }
    Ok(())
}

/// The signed TX2 with the positions the Groth16 statement hides or pins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tx2Template {
    pub tx: Transaction,
    /// Serialized TX2 (legacy serialization; TX2 has no witness).
    pub bytes: Vec<u8>,
    /// r of the signature for F.
    pub farmer_r: Range<usize>,
    /// s1: s of the signature for F (hidden).
    pub farmer_s: Range<usize>,
    /// r of the signature for F̃ (same value as `farmer_r`).
    pub twin_r: Range<usize>,
    /// s2: s of the signature for F̃ (hidden).
    pub twin_s: Range<usize>,
    /// D = SHA256(bytes), single SHA-256.
    pub digest: [u8; 32],
    /// txid = SHA256(D).
    pub txid: Txid,
}

/// Farmer step 3: signs unsigned TX2 with f and f + c under one nonce, adds the renter's
/// sig_R, and returns the template.
pub fn farmer_sign_tx2(
    rng: &mut (impl RngCore + CryptoRng),
    contract: &DownloadContract,
    unsigned_tx2: &Transaction,
    farmer_secret: &SecretKey,
    renter_sig: &bitcoin::ecdsa::Signature,
) -> Result<Tx2Template, NonceReuseError> {
    if farmer_secret.public_key(SECP256K1) != contract.farmer_key {
        return Err(NonceReuseError::WrongKey);
    }
    contract.verify_renter_tx2_signature(unsigned_tx2, renter_sig)?;
    let z = contract.tx2_sighash(unsigned_tx2)?;
    let twin = twin_secret(farmer_secret, &contract.contract_id)?;
    let signatures = sign_with_one_nonce(rng, &z, &[farmer_secret, &twin])?;
    let [farmer_sig, twin_sig] = signatures[..] else {
        return Err(NonceReuseError::SignatureInvalid);
    };
    let signed = contract.finalize_tx2(unsigned_tx2, farmer_sig, twin_sig, *renter_sig)?;
    template_of(signed, &farmer_sig, &twin_sig)
}

/// Renter side of step 4: the template the farmer's TX2 must have, built from what the
/// renter knows (the unsigned TX2 it signed, its own sig_R and the revealed r), with
/// placeholder s values. Only the template's non-s bytes and ranges are meaningful; the
/// renter compares them with the farmer's statement before verifying any proof about it.
pub fn expected_template(
    contract: &DownloadContract,
    unsigned_tx2: &Transaction,
    renter_sig: &bitcoin::ecdsa::Signature,
    r: &[u8; 32],
) -> Result<Tx2Template, NonceReuseError> {
    contract.verify_renter_tx2_signature(unsigned_tx2, renter_sig)?;
    if !is_fixed_width(r) {
        return Err(NonceReuseError::TemplateMismatch);
    }
    // Distinct fixed-width placeholder s values, so the two signatures are told apart.
    let placeholder = |fill: u8| -> Result<ecdsa::Signature, NonceReuseError> {
        let mut compact = [fill; 64];
        compact[..32].copy_from_slice(r);
        ecdsa::Signature::from_compact(&compact).map_err(|_| NonceReuseError::TemplateMismatch)
    };
    let (farmer_sig, twin_sig) = (placeholder(0x11)?, placeholder(0x22)?);
    let signed = contract.finalize_tx2(unsigned_tx2, farmer_sig, twin_sig, *renter_sig)?;
    template_of(signed, &farmer_sig, &twin_sig)
}

/// Locates both signatures in the serialized one-input transaction.
fn template_of(
    tx: Transaction,
    farmer_sig: &ecdsa::Signature,
    twin_sig: &ecdsa::Signature,
) -> Result<Tx2Template, NonceReuseError> {
    let bytes = consensus::serialize(&tx);
    let farmer_start = locate_der(&tx, &bytes, farmer_sig)?;
    let twin_start = locate_der(&tx, &bytes, twin_sig)?;
    let digest = sha256(&[&bytes]);
    let txid = txid_from_digest(&digest);
    if txid != tx.compute_txid() {
        return Err(NonceReuseError::TemplateMismatch);
    }
    Ok(Tx2Template {
        farmer_r: farmer_start + 4..farmer_start + 36,
        farmer_s: farmer_start + 38..farmer_start + 70,
        twin_r: twin_start + 4..twin_start + 36,
        twin_s: twin_start + 38..twin_start + 70,
        tx,
        bytes,
        digest,
        txid,
    })
}

/// Byte offset in `bytes` where the DER encoding of `sig` starts inside input 0's scriptSig.
fn locate_der(
    tx: &Transaction,
    bytes: &[u8],
    sig: &ecdsa::Signature,
) -> Result<usize, NonceReuseError> {
    let der = sig.serialize_der();
    if der.len() != 70 || tx.input.len() != 1 {
        return Err(NonceReuseError::TemplateMismatch);
    }
    let script = &tx.input[0].script_sig;
    let script_start = 4 + VarInt(1).size() + 36 + VarInt(script.len() as u64).size();
    let (index, _) = script
        .instruction_indices()
        .filter_map(Result::ok)
        .find(|(_, ins)| {
            ins.push_bytes()
                .is_some_and(|p| p.as_bytes().starts_with(&der))
        })
        .ok_or(NonceReuseError::TemplateMismatch)?;
    let start = script_start + index + 1; // one-byte push opcode for a 71-byte push
    if bytes.get(start..start + 70) != Some(&der[..]) {
        return Err(NonceReuseError::TemplateMismatch);
    }
    Ok(start)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::contract::tests::{parties, tx1_outpoint};
    use bitcoin::Amount;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn reused_nonce_signatures_verify_and_share_r() {
        let mut rng = StdRng::seed_from_u64(10);
        let d1 = SecretKey::new(&mut rng);
        let d2 = SecretKey::new(&mut rng);
        for i in 0..20u8 {
            let z = [i; 32];
            let sigs = sign_with_one_nonce(&mut rng, &z, &[&d1, &d2]).unwrap();
            let (c1, c2) = (sigs[0].serialize_compact(), sigs[1].serialize_compact());
            assert_eq!(c1[..32], c2[..32]);
            assert_eq!(sigs[0].serialize_der().len(), 70);
            assert_eq!(sigs[1].serialize_der().len(), 70);
            let message = Message::from_digest(z);
            SECP256K1
                .verify_ecdsa(&message, &sigs[0], &d1.public_key(SECP256K1))
                .unwrap();
            SECP256K1
                .verify_ecdsa(&message, &sigs[1], &d2.public_key(SECP256K1))
                .unwrap();
        }
    }

    #[test]
    fn same_key_twice_gives_identical_signatures() {
        // The seed's literal design: one key, one nonce, one message -> nothing leaks.
        let mut rng = StdRng::seed_from_u64(11);
        let f = SecretKey::new(&mut rng);
        let sigs = sign_with_one_nonce(&mut rng, &[7; 32], &[&f, &f]).unwrap();
        assert_eq!(sigs[0].serialize_der(), sigs[1].serialize_der());
    }

    pub(crate) fn signed_template(seed: u64) -> (crate::contract::tests::Parties, Tx2Template) {
        let p = parties(seed);
        let mut rng = StdRng::seed_from_u64(seed);
        let tx2 = p
            .contract
            .unsigned_tx2(tx1_outpoint(), Amount::from_sat(1_000))
            .unwrap();
        let sig_r = p.contract.renter_sign_tx2(&tx2, &p.r).unwrap();
        let template = farmer_sign_tx2(&mut rng, &p.contract, &tx2, &p.f, &sig_r).unwrap();
        (p, template)
    }

    #[test]
    fn template_ranges_point_at_signature_fields() {
        for seed in 20..26 {
            let (p, t) = signed_template(seed);
            assert_eq!(t.bytes[t.farmer_r.clone()], t.bytes[t.twin_r.clone()]);
            assert_ne!(t.bytes[t.farmer_s.clone()], t.bytes[t.twin_s.clone()]);
            assert_eq!(
                t.bytes[t.farmer_s.start - 2..t.farmer_s.start],
                [0x02, 0x20]
            );
            assert_eq!(
                t.bytes[t.farmer_r.start - 4..t.farmer_r.start],
                [0x30, 0x44, 0x02, 0x20]
            );
            assert_eq!(t.bytes[t.twin_s.end], 0x01); // SIGHASH_ALL byte
            assert!(t.farmer_s.end <= t.twin_r.start);
            // R-first: sig_R (71 bytes and its push opcode) precedes F's signature, so
            // s1 starts in TX2's third 64-byte block.
            assert_eq!(
                t.bytes[t.farmer_r.start - 77..t.farmer_r.start - 73],
                [71, 0x30, 0x44, 0x02]
            );
            assert_eq!(
                (t.bytes.len(), t.farmer_s.start, t.twin_s.start),
                (462, 156, 228)
            );
            assert_eq!(t.txid, t.tx.compute_txid());
            assert_eq!(t.digest, sha256(&[&t.bytes]));
            // Same shape => same layout across contracts.
            let (_, other) = signed_template(seed + 100);
            assert_eq!(
                (
                    other.bytes.len(),
                    other.farmer_s.clone(),
                    other.twin_s.clone()
                ),
                (t.bytes.len(), t.farmer_s.clone(), t.twin_s.clone())
            );
            // The signatures verify against F and F̃.
            let z = Message::from_digest(
                p.contract
                    .tx2_sighash(
                        &p.contract
                            .unsigned_tx2(tx1_outpoint(), Amount::from_sat(1_000))
                            .unwrap(),
                    )
                    .unwrap(),
            );
            let der =
                |start: usize| ecdsa::Signature::from_der(&t.bytes[start - 4..start + 66]).unwrap();
            SECP256K1
                .verify_ecdsa(&z, &der(t.farmer_r.start), &p.contract.farmer_key)
                .unwrap();
            SECP256K1
                .verify_ecdsa(&z, &der(t.twin_r.start), &p.contract.twin_key().unwrap())
                .unwrap();
        }
    }

    #[test]
    fn farmer_must_use_its_own_key_and_a_valid_renter_signature() {
        let p = parties(30);
        let mut rng = StdRng::seed_from_u64(30);
        let tx2 = p
            .contract
            .unsigned_tx2(tx1_outpoint(), Amount::from_sat(1_000))
            .unwrap();
        let sig_r = p.contract.renter_sign_tx2(&tx2, &p.r).unwrap();
        assert_eq!(
            farmer_sign_tx2(&mut rng, &p.contract, &tx2, &p.r, &sig_r),
            Err(NonceReuseError::WrongKey)
        );
        let mut bad = sig_r;
        bad.signature = SECP256K1.sign_ecdsa(&Message::from_digest([1; 32]), &p.r);
        assert!(farmer_sign_tx2(&mut rng, &p.contract, &tx2, &p.f, &bad).is_err());
    }
}
