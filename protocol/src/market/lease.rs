//! Lease records (issue 17): the farmer's signed OP_RETURN in TX_A (or, for a contract
//! without audits, its first TX1) that lets anyone with a full node attribute what happens
//! to the contract's outputs to the farmer's identity I.
//!
//! **Layout** (exactly [`LEASE_RECORD_BYTES`] = 80 bytes of OP_RETURN data, one push):
//! `b"DSL" ‖ 0x01 ‖ I[..4] ‖ contract_tag (8) ‖ BIP340 signature (64)`, with
//! `contract_tag = tagged_hash("dstore/lease-tag", contract_id)[..8]`.
//!
//! **Leased outputs.** The outputs of the transaction *before* the record: TX_A's
//! O_0..O_{N−1} with the record at index N, or TX1's output 0 with the record at index 1.
//! The signature is BIP340 by I, without aux randomness (deterministic), over
//! `tagged_hash("dstore/lease", I ‖ contract_tag ‖ u32-LE count ‖ consensus bytes of each
//! leased TxOut)`, so it binds the farmer to exactly these values and scripts.
//!
//! **What a chain observer learns** from a record alone: that *some* farmer whose identity
//! starts with these 4 bytes leased the outputs before it, and an 8-byte tag that links the
//! records of one contract (TX_A and nothing else, or one TX1) without revealing the
//! contract id. With a candidate identity in hand (from the farmers' announcements) the
//! observer checks the signature and learns that this farmer agreed to these outputs. It
//! does not learn the file, its size, the renter's identity, or the contract id.
//!
//! **Counting** (see [`super::outcome`] for the witness shapes): a record only says which
//! outputs to follow. Audits passed, audits failed, downloads served and downloads refunded
//! are counted from the spends of those outputs:
//! * audit passed: a candidate A_ij (a 2-of-2 spend of O_i) whose output is then spent
//!   through the hash160 branch (the farmer's claim with x_ij);
//! * audit failed: a candidate's output spent through older(W) (the reclaim or RF_ij), or
//!   a refund RF_i, recognised by its 2-of-2 spend of the later O_{i+1} (RF_i takes O_i
//!   itself through the renter's own branch); the other O_k a refund sweeps are not
//!   counted again, and a spend through the renter's own branch alone counts nothing;
//! * download served: TX2 (the 3-of-3 spend of TX1:0) whose output 0 is then spent by TX3
//!   through the 2-of-2 branch;
//! * download refunded: TX1:0 spent through its after(T1) refund branch, counted at most
//!   once per contract tag and only if no served download exists for that tag
//!   ([`super::outcome::downloads_refunded`]).
//!
//! **Why a copy of a record cannot smear a farmer.** Anyone can copy the 80 bytes into
//! another transaction. The signature only verifies over the very same leased outputs
//! (values and scripts), so the copy must pay the contract's own scripts again, and the
//! resulting outpoints are new ones that the farmer never signed anything for:
//! * O_i's 2-of-2 branch needs Fa's signature on a spend of *that* outpoint, so a copied
//!   O_i can produce neither a candidate nor an RF_i; its only other path is the renter's
//!   after(T_i + W) branch, which counts nothing. No candidate means no candidate output,
//!   so no reclaim or RF_ij can be counted either.
//! * A copied TX1:0 can only be refunded (TX2 needs F's two signatures), and only by R,
//!   the renter of that very download. Refunds count at most once per contract tag and
//!   never when the tag has a served download, so the renter who leased from the farmer
//!   can add one refund to a contract that it never let be served, which it could do with
//!   the real TX1 anyway, by funding it and letting T1 pass. A third party who copies the
//!   record just locks its own coins in a script it cannot spend.
//!
//! What remains (documented, not fixable without the farmer's live consent): the renter
//! holds the farmer's pre-signed RF_i and the salts, so a renter who stops auditing makes
//! one failure per contract at the cost of a real, farmer-accepted contract and its fees
//! (a refund ends the contract: it spends every later O_k).

use bitcoin::consensus::Encodable;
use bitcoin::opcodes::all::OP_RETURN;
use bitcoin::script::{Instruction, PushBytesBuf};
use bitcoin::secp256k1::{schnorr, Keypair, Message, XOnlyPublicKey, SECP256K1};
use bitcoin::{Amount, OutPoint, ScriptBuf, Transaction, TxOut};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::outcome::LeaseOutput;
use super::MarketError;
use crate::hashing::tagged_hash;

/// The record's first three bytes.
pub const LEASE_MAGIC: [u8; 3] = *b"DSL";
/// The layout version this module writes and reads.
pub const LEASE_VERSION: u8 = 1;
/// The size of a record's OP_RETURN data.
pub const LEASE_RECORD_BYTES: usize = 80;

/// One lease record: the identity prefix, the contract tag and the farmer's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRecord {
    pub identity_prefix: [u8; 4],
    pub contract_tag: [u8; 8],
    pub signature: schnorr::Signature,
}

/// `tagged_hash("dstore/lease-tag", contract_id)[..8]`: links a contract's records without
/// revealing its id.
pub fn contract_tag(contract_id: &[u8; 32]) -> [u8; 8] {
    let hash = tagged_hash("dstore/lease-tag", &[contract_id]);
    hash[..8].try_into().expect("8 of 32 bytes")
}

/// The message the farmer signs: `tagged_hash("dstore/lease", I ‖ tag ‖ u32-LE count ‖
/// consensus bytes of each leased output)`.
pub fn lease_digest(identity: &XOnlyPublicKey, tag: &[u8; 8], leased: &[TxOut]) -> [u8; 32] {
    let count = u32::try_from(leased.len())
        .unwrap_or(u32::MAX)
        .to_le_bytes();
    let mut outputs = Vec::with_capacity(leased.len() * 43);
    for output in leased {
        output
            .consensus_encode(&mut outputs)
            .expect("writing to a Vec cannot fail");
    }
    tagged_hash(
        "dstore/lease",
        &[&identity.serialize(), tag, &count, &outputs],
    )
}

/// The farmer's record for `leased`, the outputs before the record in the funding
/// transaction of contract `contract_id`.
pub fn sign_lease(identity: &Keypair, contract_id: &[u8; 32], leased: &[TxOut]) -> LeaseRecord {
    let (xonly, _) = identity.x_only_public_key();
    let tag = contract_tag(contract_id);
    let message = Message::from_digest(lease_digest(&xonly, &tag, leased));
    LeaseRecord {
        identity_prefix: identity_prefix(&xonly),
        contract_tag: tag,
        signature: SECP256K1.sign_schnorr_no_aux_rand(&message, identity),
    }
}

/// The first four bytes of an identity, as a record carries them.
pub fn identity_prefix(identity: &XOnlyPublicKey) -> [u8; 4] {
    identity.serialize()[..4].try_into().expect("4 of 32 bytes")
}

impl LeaseRecord {
    /// The 80 data bytes.
    pub fn to_bytes(&self) -> [u8; LEASE_RECORD_BYTES] {
        let mut bytes = [0u8; LEASE_RECORD_BYTES];
        bytes[..3].copy_from_slice(&LEASE_MAGIC);
        bytes[3] = LEASE_VERSION;
        bytes[4..8].copy_from_slice(&self.identity_prefix);
        bytes[8..16].copy_from_slice(&self.contract_tag);
        bytes[16..].copy_from_slice(self.signature.as_ref());
        bytes
    }

    /// Parses the 80 data bytes (magic, version and size checked).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MarketError> {
        if bytes.len() != LEASE_RECORD_BYTES {
            return Err(MarketError::Unparseable(format!(
                "a lease record is {LEASE_RECORD_BYTES} bytes, not {}",
                bytes.len()
            )));
        }
        if bytes[..3] != LEASE_MAGIC {
            return Err(MarketError::Unparseable("not a lease record".into()));
        }
        if bytes[3] != LEASE_VERSION {
            return Err(MarketError::Unparseable(format!(
                "lease record version {} is unknown",
                bytes[3]
            )));
        }
        let signature = schnorr::Signature::from_slice(&bytes[16..])
            .map_err(|e| MarketError::Unparseable(format!("lease signature: {e}")))?;
        Ok(LeaseRecord {
            identity_prefix: bytes[4..8].try_into().expect("4 bytes"),
            contract_tag: bytes[8..16].try_into().expect("8 bytes"),
            signature,
        })
    }

    /// The OP_RETURN script carrying the record (one 80-byte push).
    pub fn script(&self) -> ScriptBuf {
        let data = PushBytesBuf::try_from(self.to_bytes().to_vec()).expect("80 bytes push");
        ScriptBuf::new_op_return(data)
    }

    /// The zero-value output carrying the record.
    pub fn txout(&self) -> TxOut {
        TxOut {
            value: Amount::ZERO,
            script_pubkey: self.script(),
        }
    }

    /// The record as 160 hex digits (its serde form: how messages and records carry it).
    pub fn to_hex(&self) -> String {
        hex::encode(self.to_bytes())
    }

    /// Whether `identity` starts with this record's prefix (a cheap filter before
    /// [`verify_lease`]).
    pub fn may_be_from(&self, identity: &XOnlyPublicKey) -> bool {
        identity_prefix(identity) == self.identity_prefix
    }
}

impl Serialize for LeaseRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for LeaseRecord {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let bytes = hex::decode(text).map_err(serde::de::Error::custom)?;
        LeaseRecord::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

/// The data of `script` if it is an OP_RETURN whose single push starts with `b"DSL"`.
fn lease_payload(script: &ScriptBuf) -> Option<Vec<u8>> {
    let mut instructions = script.instructions();
    match instructions.next() {
        Some(Ok(Instruction::Op(op))) if op == OP_RETURN => {}
        _ => return None,
    }
    let data = match instructions.next() {
        Some(Ok(Instruction::PushBytes(push))) => push.as_bytes().to_vec(),
        _ => return None,
    };
    data.starts_with(&LEASE_MAGIC).then_some(data)
}

/// Every lease record of `tx` with its output index, in output order: a TX_A or a TX1
/// paying one contract carries one, a TX1 shared by several shard downloads one per farmer
/// that asked for one. A push that starts with `b"DSL"` but is not a well-formed record is
/// an `Err` entry; OP_RETURNs without the magic are not records.
pub fn parse_leases(tx: &Transaction) -> Vec<Result<(usize, LeaseRecord), MarketError>> {
    tx.output
        .iter()
        .enumerate()
        .filter_map(|(vout, output)| {
            let data = lease_payload(&output.script_pubkey)?;
            Some(LeaseRecord::from_bytes(&data).map(|record| (vout, record)))
        })
        .collect()
}

/// The index of the first output a record at `vout` leases. A TX1 contract output (P2SH)
/// right before the record is leased alone: in a shared TX1 each farmer's record follows
/// its own contract output. Otherwise (TX_A's O_0..O_{N−1}) every output before it.
pub fn leased_start(tx: &Transaction, vout: usize) -> usize {
    match vout.checked_sub(1).and_then(|i| tx.output.get(i)) {
        Some(before) if before.script_pubkey.is_p2sh() => vout - 1,
        _ => 0,
    }
}

/// The outputs a record at `vout` leases (see [`leased_start`]).
pub fn leased_by(tx: &Transaction, vout: usize) -> &[TxOut] {
    tx.output
        .get(leased_start(tx, vout)..vout)
        .unwrap_or_default()
}

/// Checks that `record` is `identity`'s signature over `leased`.
pub fn verify_lease(
    record: &LeaseRecord,
    identity: &XOnlyPublicKey,
    leased: &[TxOut],
) -> Result<(), MarketError> {
    if !record.may_be_from(identity) {
        return Err(MarketError::LeaseIdentityMismatch);
    }
    let message = Message::from_digest(lease_digest(identity, &record.contract_tag, leased));
    SECP256K1
        .verify_schnorr(&record.signature, &message, identity)
        .map_err(|_| MarketError::BadSignature)
}

/// Which of `identities` signed `tx`'s lease record at `vout` (the first that verifies).
pub fn find_lessor<'a>(
    tx: &Transaction,
    vout: usize,
    record: &LeaseRecord,
    identities: impl IntoIterator<Item = &'a XOnlyPublicKey>,
) -> Option<XOnlyPublicKey> {
    if vout > tx.output.len() {
        return None;
    }
    let leased = leased_by(tx, vout);
    identities
        .into_iter()
        .find(|identity| verify_lease(record, identity, leased).is_ok())
        .copied()
}

/// The farmer's check of a funding transaction (TX_A, or a first TX1) before it goes on:
/// its own valid record for contract `contract_id` sits at index `leased_count`, right after
/// the leased outputs. The caller checks the leased outputs themselves
/// (`AuditTerms::check_funding`, `DownloadContract::tx1_output`).
pub fn check_lease_in(
    tx: &Transaction,
    identity: &XOnlyPublicKey,
    contract_id: &[u8; 32],
    leased_count: usize,
) -> Result<(), MarketError> {
    let output = tx
        .output
        .get(leased_count)
        .ok_or(MarketError::MissingLease(leased_count))?;
    let data =
        lease_payload(&output.script_pubkey).ok_or(MarketError::MissingLease(leased_count))?;
    let record = LeaseRecord::from_bytes(&data)?;
    if record.contract_tag != contract_tag(contract_id) {
        return Err(MarketError::LeaseForAnotherContract);
    }
    verify_lease(&record, identity, &tx.output[..leased_count])
}

/// The outpoints a verified record at `vout` leases ([`leased_by`]), with what each one
/// is: the P2SH output right before the record is a TX1 contract output
/// ([`LeaseOutput::DownloadFunding`]); P2WSH outputs are TX_A's O_i
/// ([`LeaseOutput::AuditFunding`] with i = the output index). Other outputs are not
/// contract outputs and are not followed.
pub fn leased_outputs(tx: &Transaction, vout: usize) -> Vec<(OutPoint, LeaseOutput)> {
    let txid = tx.compute_txid();
    let start = leased_start(tx, vout);
    leased_by(tx, vout)
        .iter()
        .enumerate()
        .map(|(offset, output)| (start + offset, output))
        .filter_map(|(index, output)| {
            let kind = if output.script_pubkey.is_p2sh() {
                LeaseOutput::DownloadFunding
            } else if output.script_pubkey.is_p2wsh() {
                LeaseOutput::AuditFunding {
                    audit: index as u32,
                }
            } else {
                return None;
            };
            Some((OutPoint::new(txid, index as u32), kind))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::absolute::LockTime;
    use bitcoin::secp256k1::SecretKey;
    use bitcoin::transaction::Version;

    fn identity(seed: u8) -> Keypair {
        Keypair::from_secret_key(SECP256K1, &SecretKey::from_slice(&[seed; 32]).unwrap())
    }

    fn outputs(n: u8) -> Vec<TxOut> {
        (0..n)
            .map(|i| TxOut {
                value: Amount::from_sat(10_000 + u64::from(i)),
                script_pubkey: ScriptBuf::new_p2wsh(&bitcoin::WScriptHash::from_byte_array(
                    [i; 32],
                )),
            })
            .collect()
    }

    use bitcoin::hashes::Hash;

    fn tx_with(mut output: Vec<TxOut>, record: &LeaseRecord, change: bool) -> Transaction {
        output.push(record.txout());
        if change {
            output.push(TxOut {
                value: Amount::from_sat(5_000),
                script_pubkey: ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_byte_array(
                    [9; 20],
                )),
            });
        }
        Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![],
            output,
        }
    }

    #[test]
    fn a_record_is_80_bytes_and_round_trips_through_a_transaction() {
        let farmer = identity(7);
        let leased = outputs(3);
        let record = sign_lease(&farmer, &[1; 32], &leased);
        let script = record.script();
        assert_eq!(
            script.len(),
            3 + LEASE_RECORD_BYTES,
            "OP_RETURN OP_PUSHDATA1 80 …: Core's historical 83"
        );
        let tx = tx_with(leased.clone(), &record, true);
        let found = parse_leases(&tx);
        assert_eq!(found.len(), 1);
        let (vout, parsed) = found[0].clone().unwrap();
        assert_eq!((vout, parsed), (3, record));
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(serde_json::from_str::<LeaseRecord>(&json).unwrap(), record);
        let (xonly, _) = farmer.x_only_public_key();
        verify_lease(&parsed, &xonly, &tx.output[..vout]).unwrap();
        check_lease_in(&tx, &xonly, &[1; 32], 3).unwrap();
        assert_eq!(find_lessor(&tx, vout, &parsed, [&xonly]), Some(xonly));
        let kinds: Vec<_> = leased_outputs(&tx, vout)
            .into_iter()
            .map(|(_, k)| k)
            .collect();
        assert_eq!(
            kinds,
            (0..3)
                .map(|audit| LeaseOutput::AuditFunding { audit })
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_shared_tx1_carries_one_record_per_farmer_each_after_its_own_output() {
        let p2sh = |n: u8| TxOut {
            value: Amount::from_sat(10_000 + u64::from(n)),
            script_pubkey: ScriptBuf::new_p2sh(&bitcoin::ScriptHash::from_byte_array([n; 20])),
        };
        let (a, b) = (identity(7), identity(8));
        let (ra, rb) = (
            sign_lease(&a, &[1; 32], &[p2sh(1)]),
            sign_lease(&b, &[2; 32], &[p2sh(2)]),
        );
        let tx = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![],
            output: vec![p2sh(1), ra.txout(), p2sh(2), rb.txout()],
        };
        let found: Vec<_> = parse_leases(&tx).into_iter().map(Result::unwrap).collect();
        assert_eq!(found, vec![(1, ra), (3, rb)]);
        let ((xa, _), (xb, _)) = (a.x_only_public_key(), b.x_only_public_key());
        assert_eq!(find_lessor(&tx, 1, &ra, [&xb, &xa]), Some(xa));
        assert_eq!(find_lessor(&tx, 3, &rb, [&xa, &xb]), Some(xb));
        assert_eq!(
            leased_outputs(&tx, 3),
            vec![(
                OutPoint::new(tx.compute_txid(), 2),
                LeaseOutput::DownloadFunding
            )]
        );
        // The farmer's own check, on TX1 from its contract output on.
        let from_b = Transaction {
            output: tx.output[2..].to_vec(),
            ..tx.clone()
        };
        check_lease_in(&from_b, &xb, &[2; 32], 1).unwrap();
    }

    #[test]
    fn the_signature_binds_identity_contract_and_every_leased_output() {
        let farmer = identity(7);
        let (xonly, _) = farmer.x_only_public_key();
        let leased = outputs(2);
        let record = sign_lease(&farmer, &[1; 32], &leased);
        let mut other = leased.clone();
        other[1].value = Amount::from_sat(1);
        assert_eq!(
            verify_lease(&record, &xonly, &other),
            Err(MarketError::BadSignature)
        );
        assert!(verify_lease(&record, &xonly, &leased[..1]).is_err());
        let (stranger, _) = identity(8).x_only_public_key();
        assert!(verify_lease(&record, &stranger, &leased).is_err());
        let tx = tx_with(leased, &record, false);
        assert_eq!(
            check_lease_in(&tx, &xonly, &[2; 32], 2),
            Err(MarketError::LeaseForAnotherContract)
        );
        assert_eq!(
            check_lease_in(&tx, &xonly, &[1; 32], 1),
            Err(MarketError::MissingLease(1))
        );
        assert_eq!(find_lessor(&tx, 2, &record, [&stranger]), None);
    }

    #[test]
    fn malformed_records_are_errors_and_other_op_returns_are_ignored() {
        let plain = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![],
            output: vec![TxOut {
                value: Amount::ZERO,
                script_pubkey: ScriptBuf::new_op_return([1u8, 2, 3]),
            }],
        };
        assert!(parse_leases(&plain).is_empty());
        let mut short = plain.clone();
        short.output[0].script_pubkey = ScriptBuf::new_op_return(*b"DSL\x01abcd");
        assert!(matches!(
            parse_leases(&short)[..],
            [Err(MarketError::Unparseable(_))]
        ));
        let record = sign_lease(&identity(3), &[4; 32], &[]);
        let mut bytes = record.to_bytes();
        bytes[3] = 2;
        assert!(LeaseRecord::from_bytes(&bytes).is_err());
        assert_eq!(contract_tag(&[4; 32]), record.contract_tag);
        assert_ne!(contract_tag(&[4; 32])[..], [4u8; 8][..]);
    }
}
