//! Recovery of the farmer's download key f from any transaction spending a TX1 output (PROTOCOL.md 3.6).
//!
//! The scriptSig of a P2SH spend through `multi(3,R,F,F̃)` (`OP_0 sig_R sig_F sig_F̃
//! redeem`; contracts agreed before R-first: `multi(3,F,F̃,R)`) carries (r, s1) by F and
//! (r, s2) by F̃ = F + c·G over the same legacy sighash z with the same nonce k:
//!
//! ```text
//! s1 = k⁻¹(z + r·f)    s2 = k⁻¹(z + r·(f + c))    ⇒    s2 − s1 = k⁻¹·r·c
//! k  = r·c / (s2 − s1)                               f = (s1·k − z) / r
//! ```
//!
//! Published s values are low-S normalised, i.e. ±s, so the four sign pairs
//! ε1, ε2 ∈ {+1, −1} are tried and only an f with f·G = F is returned. Every push of the
//! scriptSig is tried as a signature and checked against F and F̃ with the sighash its
//! own sighash byte selects (scriptCode = the last push, the redeem script), so the
//! extraction does not depend on push order and reads TX2s of either key order. Garbage
//! never panics and never yields a key.

use bitcoin::hashes::Hash;
use bitcoin::script::Instruction;
use bitcoin::secp256k1::{ecdsa, Message, PublicKey, SecretKey, SECP256K1};
use bitcoin::sighash::SighashCache;
use bitcoin::{Script, ScriptBuf, Transaction};
use k256::elliptic_curve::ops::Reduce;
use k256::elliptic_curve::PrimeField;
use k256::{FieldBytes, Scalar, U256};

use crate::contract::{twin_key, twin_tweak_bytes};

/// Why no key could be extracted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    #[error("the transaction has no input {0}")]
    NoSuchInput(usize),
    #[error("the scriptSig does not parse or has no redeem script push")]
    MalformedScriptSig,
    #[error("the redeem script does not hash to the spent output's script")]
    RedeemScriptMismatch,
    #[error("the twin key of F is not defined")]
    BadTwin,
    #[error("no valid signature by F")]
    NoFarmerSignature,
    #[error("no valid signature by the twin key F̃")]
    NoTwinSignature,
    #[error("the signatures by F and F̃ use different nonces (or different sighashes)")]
    DifferentNonces,
    #[error("no candidate key matches F")]
    NoKey,
}

/// A signature found in the scriptSig with the digest it signs.
#[derive(Clone, Copy)]
struct Candidate {
    signature: ecdsa::Signature,
    digest: [u8; 32],
}

/// Extracts f from input `input` of `tx`, which spends a TX1 output of the contract with
/// farmer key `farmer_key` and id `contract_id`. If `prevout_script` is given, the redeem
/// script must hash to it.
pub fn extract_farmer_key(
    tx: &Transaction,
    input: usize,
    farmer_key: &PublicKey,
    contract_id: &[u8; 32],
    prevout_script: Option<&Script>,
) -> Result<SecretKey, ExtractError> {
    let txin = tx
        .input
        .get(input)
        .ok_or(ExtractError::NoSuchInput(input))?;
    let (pushes, redeem) = split_script_sig(&txin.script_sig)?;
    if prevout_script.is_some_and(|spk| *spk != ScriptBuf::new_p2sh(&redeem.script_hash())) {
        return Err(ExtractError::RedeemScriptMismatch);
    }
    let twin = twin_key(farmer_key, contract_id).map_err(|_| ExtractError::BadTwin)?;
    let candidates: Vec<Candidate> = pushes
        .iter()
        .filter_map(|p| candidate(tx, input, &redeem, p))
        .collect();
    let by_farmer = signed_by(&candidates, farmer_key);
    let by_twin = signed_by(&candidates, &twin);
    if by_farmer.is_empty() {
        return Err(ExtractError::NoFarmerSignature);
    }
    if by_twin.is_empty() {
        return Err(ExtractError::NoTwinSignature);
    }
    let tweak = twin_tweak_bytes(farmer_key, contract_id);
    let mut same_nonce_seen = false;
    for first in &by_farmer {
        for second in &by_twin {
            if first.digest != second.digest || !same_r(&first.signature, &second.signature) {
                continue;
            }
            same_nonce_seen = true;
            if let Ok(key) = extract_from_signatures(
                &first.digest,
                &first.signature,
                &second.signature,
                &tweak,
                farmer_key,
            ) {
                return Ok(key);
            }
        }
    }
    Err(if same_nonce_seen {
        ExtractError::NoKey
    } else {
        ExtractError::DifferentNonces
    })
}

/// All pushes of a push-only scriptSig, and the last push as the redeem script.
fn split_script_sig(script_sig: &Script) -> Result<(Vec<Vec<u8>>, ScriptBuf), ExtractError> {
    let mut pushes = Vec::new();
    for instruction in script_sig.instructions() {
        match instruction.map_err(|_| ExtractError::MalformedScriptSig)? {
            Instruction::PushBytes(bytes) => pushes.push(bytes.as_bytes().to_vec()),
            Instruction::Op(_) => return Err(ExtractError::MalformedScriptSig),
        }
    }
    let redeem = pushes.pop().ok_or(ExtractError::MalformedScriptSig)?;
    Ok((pushes, ScriptBuf::from_bytes(redeem)))
}

/// Parses a push as DER signature + sighash byte and computes the digest it would sign.
fn candidate(tx: &Transaction, input: usize, redeem: &Script, push: &[u8]) -> Option<Candidate> {
    let (&sighash_byte, der) = push.split_last()?;
    let signature = ecdsa::Signature::from_der(der).ok()?;
    let digest = SighashCache::new(tx)
        .legacy_signature_hash(input, redeem, u32::from(sighash_byte))
        .ok()?;
    Some(Candidate {
        signature,
        digest: digest.to_byte_array(),
    })
}

fn signed_by(candidates: &[Candidate], key: &PublicKey) -> Vec<Candidate> {
    let verifies = |c: &&Candidate| {
        let mut normalized = c.signature;
        normalized.normalize_s();
        SECP256K1
            .verify_ecdsa(&Message::from_digest(c.digest), &normalized, key)
            .is_ok()
    };
    candidates.iter().filter(verifies).copied().collect()
}

fn same_r(a: &ecdsa::Signature, b: &ecdsa::Signature) -> bool {
    a.serialize_compact()[..32] == b.serialize_compact()[..32]
}

fn scalar(bytes: &[u8]) -> Option<Scalar> {
    let array: [u8; 32] = bytes.try_into().ok()?;
    Option::from(Scalar::from_repr(FieldBytes::from(array)))
}

/// The algebra of the module doc for one signature pair over digest `z`: `first` by F,
/// `second` by F + c·G (`tweak` = c, big-endian). Returns f only if f·G = F.
pub fn extract_from_signatures(
    z: &[u8; 32],
    first: &ecdsa::Signature,
    second: &ecdsa::Signature,
    tweak: &[u8; 32],
    farmer_key: &PublicKey,
) -> Result<SecretKey, ExtractError> {
    let (a, b) = (first.serialize_compact(), second.serialize_compact());
    if a[..32] != b[..32] {
        return Err(ExtractError::DifferentNonces);
    }
    let parsed = (
        scalar(&a[..32]),
        scalar(&a[32..]),
        scalar(&b[32..]),
        scalar(tweak),
    );
    let (Some(r), Some(s1), Some(s2), Some(c)) = parsed else {
        return Err(ExtractError::NoKey);
    };
    let z = <Scalar as Reduce<U256>>::reduce_bytes(&FieldBytes::from(*z));
    let signs = [Scalar::ONE, -Scalar::ONE];
    for e1 in signs {
        for e2 in signs {
            let Some(f) = candidate_key(&r, &(e1 * s1), &(e2 * s2), &c, &z) else {
                continue;
            };
            if let Ok(key) = SecretKey::from_slice(&f.to_bytes()) {
                if key.public_key(SECP256K1) == *farmer_key {
                    return Ok(key);
                }
            }
        }
    }
    Err(ExtractError::NoKey)
}

/// k = r·c / (s2 − s1), f = (s1·k − z) / r; None on a zero denominator.
fn candidate_key(r: &Scalar, s1: &Scalar, s2: &Scalar, c: &Scalar, z: &Scalar) -> Option<Scalar> {
    let denominator_inv: Scalar = Option::from((*s2 - *s1).invert())?;
    let k = *r * *c * denominator_inv;
    let r_inv: Scalar = Option::from(r.invert())?;
    Some((*s1 * k - *z) * r_inv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::tests::{parties, tx1_outpoint};
    use crate::contract::twin_secret;
    use crate::nonce_reuse::sign_with_one_nonce;
    use bitcoin::script::Builder;
    use bitcoin::{consensus, Amount};
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn signed_tx2(seed: u64) -> (crate::contract::tests::Parties, Transaction) {
        let (p, template) = crate::nonce_reuse::tests::signed_template(seed);
        (p, template.tx)
    }

    #[test]
    fn extracts_f_from_signed_tx2() {
        for seed in 40..50 {
            let (p, tx2) = signed_tx2(seed);
            let spk = p.contract.tx1_script_pubkey().unwrap();
            let f = extract_farmer_key(
                &tx2,
                0,
                &p.contract.farmer_key,
                &p.contract.contract_id,
                Some(&spk),
            )
            .unwrap();
            assert_eq!(f, p.f);
        }
    }

    /// A contract agreed before R-first (`multi(3,F,F̃,R)`) still yields f.
    #[test]
    fn extracts_f_from_a_farmer_first_tx2() {
        let mut p = parties(48);
        p.contract.tx1_key_order = crate::contract::Tx1KeyOrder::FarmerFirst;
        let mut rng = StdRng::seed_from_u64(48);
        let unsigned = p
            .contract
            .unsigned_tx2(tx1_outpoint(), Amount::from_sat(1_000))
            .unwrap();
        let sig_r = p.contract.renter_sign_tx2(&unsigned, &p.r).unwrap();
        let template =
            crate::nonce_reuse::farmer_sign_tx2(&mut rng, &p.contract, &unsigned, &p.f, &sig_r)
                .unwrap();
        assert_eq!(template.farmer_s.start, 84, "F's signature comes first");
        let spk = p.contract.tx1_script_pubkey().unwrap();
        let f = extract_farmer_key(
            &template.tx,
            0,
            &p.contract.farmer_key,
            &p.contract.contract_id,
            Some(&spk),
        )
        .unwrap();
        assert_eq!(f, p.f);
    }

    #[test]
    fn all_four_sign_pairs_are_recovered() {
        let mut rng = StdRng::seed_from_u64(51);
        let p = parties(51);
        let twin = twin_secret(&p.f, &p.contract.contract_id).unwrap();
        let tweak = twin_tweak_bytes(&p.contract.farmer_key, &p.contract.contract_id);
        let z = [9u8; 32];
        let sigs = sign_with_one_nonce(&mut rng, &z, &[&p.f, &twin]).unwrap();
        let negate_s = |s: &ecdsa::Signature| {
            let mut c = s.serialize_compact();
            let neg = -scalar(&c[32..]).unwrap();
            c[32..].copy_from_slice(&neg.to_bytes());
            ecdsa::Signature::from_compact(&c).unwrap()
        };
        for (a, b) in [
            (sigs[0], sigs[1]),
            (negate_s(&sigs[0]), sigs[1]),
            (sigs[0], negate_s(&sigs[1])),
            (negate_s(&sigs[0]), negate_s(&sigs[1])),
        ] {
            assert_eq!(
                extract_from_signatures(&z, &a, &b, &tweak, &p.contract.farmer_key).unwrap(),
                p.f
            );
        }
    }

    #[test]
    fn fails_cleanly_on_wrong_inputs() {
        let (p, tx2) = signed_tx2(52);
        let other = parties(53);
        let id = &p.contract.contract_id;
        assert_eq!(
            extract_farmer_key(&tx2, 1, &p.contract.farmer_key, id, None),
            Err(ExtractError::NoSuchInput(1))
        );
        assert_eq!(
            extract_farmer_key(&tx2, 0, &other.contract.farmer_key, id, None),
            Err(ExtractError::NoFarmerSignature)
        );
        let wrong_spk = other.contract.tx1_script_pubkey().unwrap();
        assert_eq!(
            extract_farmer_key(&tx2, 0, &p.contract.farmer_key, id, Some(&wrong_spk)),
            Err(ExtractError::RedeemScriptMismatch)
        );
        // Wrong contract id: the twin key differs, so no F̃ signature is found.
        assert_eq!(
            extract_farmer_key(&tx2, 0, &p.contract.farmer_key, &[0; 32], None),
            Err(ExtractError::NoTwinSignature)
        );
    }

    #[test]
    fn single_signature_or_distinct_nonces_give_no_key() {
        let (p, tx2) = signed_tx2(54);
        let id = p.contract.contract_id;
        let pushes: Vec<Vec<u8>> = split_script_sig(&tx2.input[0].script_sig)
            .map(|(v, r)| {
                let mut v = v;
                v.push(r.into_bytes());
                v
            })
            .unwrap();
        // Drop F̃'s signature (push 3 of OP_0 sig_R sig_F sig_F̃ redeem): a single farmer
        // signature leaks nothing.
        let mut only_one = tx2.clone();
        let mut builder = Builder::new();
        for (i, push) in pushes.iter().enumerate() {
            if i != 3 {
                builder = builder
                    .push_slice(<&bitcoin::script::PushBytes>::try_from(push.as_slice()).unwrap());
            }
        }
        only_one.input[0].script_sig = builder.into_script();
        assert_eq!(
            extract_farmer_key(&only_one, 0, &p.contract.farmer_key, &id, None),
            Err(ExtractError::NoTwinSignature)
        );

        // Honest (distinct) nonces: both signatures valid, nothing to extract.
        let z = p
            .contract
            .tx2_sighash(
                &p.contract
                    .unsigned_tx2(tx1_outpoint(), Amount::from_sat(1_000))
                    .unwrap(),
            )
            .unwrap();
        let twin = twin_secret(&p.f, &id).unwrap();
        let message = Message::from_digest(z);
        let fresh = [
            SECP256K1.sign_ecdsa(&message, &p.f),
            SECP256K1.sign_ecdsa(&message, &twin),
        ];
        let sig_r = p
            .contract
            .renter_sign_tx2(
                &p.contract
                    .unsigned_tx2(tx1_outpoint(), Amount::from_sat(1_000))
                    .unwrap(),
                &p.r,
            )
            .unwrap();
        let unsigned = p
            .contract
            .unsigned_tx2(tx1_outpoint(), Amount::from_sat(1_000))
            .unwrap();
        let honest = p
            .contract
            .finalize_tx2(&unsigned, fresh[0], fresh[1], sig_r)
            .unwrap();
        assert_eq!(
            extract_farmer_key(&honest, 0, &p.contract.farmer_key, &id, None),
            Err(ExtractError::DifferentNonces)
        );
    }

    #[test]
    fn same_key_twice_leaks_nothing() {
        // [fix] demonstration of the seed's literal design: F twice in the multisig, both
        // signing TX2's SIGHASH_ALL digest with one nonce. The two signatures (DER plus
        // sighash byte, as they appear in the scriptSig) are byte-identical, and the
        // extraction algebra (tweak c = 0) finds no key.
        let mut rng = StdRng::seed_from_u64(55);
        let p = parties(55);
        let unsigned = p
            .contract
            .unsigned_tx2(tx1_outpoint(), Amount::from_sat(1_000))
            .unwrap();
        let z = p.contract.tx2_sighash(&unsigned).unwrap();
        let sigs = sign_with_one_nonce(&mut rng, &z, &[&p.f, &p.f]).unwrap();
        let as_pushed = |s: ecdsa::Signature| {
            bitcoin::ecdsa::Signature {
                signature: s,
                sighash_type: bitcoin::EcdsaSighashType::All,
            }
            .to_vec()
        };
        assert_eq!(as_pushed(sigs[0]), as_pushed(sigs[1]));
        assert_eq!(
            extract_from_signatures(&z, &sigs[0], &sigs[1], &[0; 32], &p.contract.farmer_key),
            Err(ExtractError::NoKey)
        );
    }

    #[test]
    fn witness_spend_is_malleable_legacy_is_not() {
        // [fix] demonstration: with TX1:0 as P2WSH the farmer can re-sign TX2 with fresh
        // nonces and keep the txid the renter's TX3 signature commits to.
        let p = parties(56);
        let mut rng = StdRng::seed_from_u64(56);
        let wsh = p.contract.tx1_descriptor_wsh().unwrap();
        let mut tx2 = p
            .contract
            .unsigned_tx2(tx1_outpoint(), Amount::from_sat(1_000))
            .unwrap();
        let script = wsh.explicit_script().unwrap();
        let z = SighashCache::new(&tx2)
            .p2wsh_signature_hash(0, &script, p.contract.price, bitcoin::EcdsaSighashType::All)
            .unwrap()
            .to_byte_array();
        let twin = twin_secret(&p.f, &p.contract.contract_id).unwrap();
        let message = Message::from_digest(z);
        let all = |sig| bitcoin::ecdsa::Signature {
            signature: sig,
            sighash_type: bitcoin::EcdsaSighashType::All,
        };
        let sig_r = all(SECP256K1.sign_ecdsa(&message, &p.r));
        let reused = sign_with_one_nonce(&mut rng, &z, &[&p.f, &twin]).unwrap();
        let fresh = [
            SECP256K1.sign_ecdsa(&message, &p.f),
            SECP256K1.sign_ecdsa(&message, &twin),
        ];
        let mut satisfy = |sigs: [ecdsa::Signature; 2]| {
            let map = std::collections::HashMap::from([
                (bitcoin::PublicKey::new(p.contract.farmer_key), all(sigs[0])),
                (
                    bitcoin::PublicKey::new(p.contract.twin_key().unwrap()),
                    all(sigs[1]),
                ),
                (bitcoin::PublicKey::new(p.contract.renter_key), sig_r),
            ]);
            wsh.satisfy(&mut tx2.input[0], &map).unwrap();
            tx2.clone()
        };
        let leaking = satisfy([reused[0], reused[1]]);
        let resigned = satisfy(fresh);
        assert_eq!(
            leaking.compute_txid(),
            resigned.compute_txid(),
            "segwit txid ignores the signatures"
        );
        let tweak = twin_tweak_bytes(&p.contract.farmer_key, &p.contract.contract_id);
        assert_eq!(
            extract_from_signatures(&z, &fresh[0], &fresh[1], &tweak, &p.contract.farmer_key),
            Err(ExtractError::DifferentNonces)
        );

        // Legacy: the signatures are part of the txid.
        let (_, legacy) = signed_tx2(56);
        let sig_r = p
            .contract
            .renter_sign_tx2(
                &p.contract
                    .unsigned_tx2(tx1_outpoint(), Amount::from_sat(1_000))
                    .unwrap(),
                &p.r,
            )
            .unwrap();
        let unsigned = p
            .contract
            .unsigned_tx2(tx1_outpoint(), Amount::from_sat(1_000))
            .unwrap();
        let legacy_z = Message::from_digest(p.contract.tx2_sighash(&unsigned).unwrap());
        let resigned_legacy = p
            .contract
            .finalize_tx2(
                &unsigned,
                SECP256K1.sign_ecdsa(&legacy_z, &p.f),
                SECP256K1.sign_ecdsa(&legacy_z, &twin),
                sig_r,
            )
            .unwrap();
        assert_ne!(legacy.compute_txid(), resigned_legacy.compute_txid());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_script_sig_never_panics_or_lies(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let (p, mut tx2) = signed_tx2(57);
            tx2.input[0].script_sig = ScriptBuf::from_bytes(bytes);
            if let Ok(f) = extract_farmer_key(&tx2, 0, &p.contract.farmer_key, &p.contract.contract_id, None) {
                prop_assert_eq!(f.public_key(SECP256K1), p.contract.farmer_key);
            }
        }

        #[test]
        fn mutated_tx2_never_panics_or_lies(index in 0usize..460, value in any::<u8>()) {
            let (p, tx2) = signed_tx2(58);
            let mut bytes = consensus::serialize(&tx2);
            if let Some(b) = bytes.get_mut(index) { *b = value; }
            if let Ok(tx) = consensus::deserialize::<Transaction>(&bytes) {
                if let Ok(f) = extract_farmer_key(&tx, 0, &p.contract.farmer_key, &p.contract.contract_id, None) {
                    prop_assert_eq!(f.public_key(SECP256K1), p.contract.farmer_key);
                }
            }
        }

        #[test]
        fn arbitrary_signature_pairs_never_lie(a in any::<[u8; 32]>(), s1 in any::<[u8; 32]>(), s2 in any::<[u8; 32]>(), z in any::<[u8; 32]>(), c in any::<[u8; 32]>()) {
            let p = parties(59);
            let mut c1 = [0u8; 64];
            c1[..32].copy_from_slice(&a);
            c1[32..].copy_from_slice(&s1);
            let mut c2 = c1;
            c2[32..].copy_from_slice(&s2);
            if let (Ok(x), Ok(y)) = (ecdsa::Signature::from_compact(&c1), ecdsa::Signature::from_compact(&c2)) {
                if let Ok(f) = extract_from_signatures(&z, &x, &y, &c, &p.contract.farmer_key) {
                    prop_assert_eq!(f.public_key(SECP256K1), p.contract.farmer_key);
                }
            }
        }
    }
}
