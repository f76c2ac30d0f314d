//! Child-pays-for-parent bumps (PROTOCOL.md 6): a child spending a stuck pre-signed
//! transaction's output that pays the tower's own P2WPKH key, plus the tower's own coins
//! when that output alone cannot carry the fee, back to the tower's key.

use bitcoin::absolute::LockTime;
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{Message, SecretKey, SECP256K1};
use bitcoin::sighash::SighashCache;
use bitcoin::transaction::Version;
use bitcoin::{
    Amount, CompressedPublicKey, EcdsaSighashType, OutPoint, ScriptBuf, Sequence, Transaction,
    TxIn, TxOut, Witness,
};

/// Virtual size of one P2WPKH input (with a 72-byte signature) and of the child's fixed
/// part with one P2WPKH output, for fee estimates.
const P2WPKH_INPUT_VBYTES: u64 = 68;
const CHILD_BASE_VBYTES: u64 = 11 + 31;
/// Outputs below this are dust for P2WPKH.
const DUST: Amount = Amount::from_sat(294);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpfpError {
    #[error("no output of the parent pays the tower's key")]
    NoOwnOutput,
    #[error("the parent's output and the tower's coins cannot pay a {0} sat fee")]
    InsufficientFunds(u64),
}

/// The tower's P2WPKH script for `key`.
pub fn own_script(key: &SecretKey) -> ScriptBuf {
    let public = CompressedPublicKey(key.public_key(SECP256K1));
    ScriptBuf::new_p2wpkh(&public.wpubkey_hash())
}

/// The first output of `parent` that pays the tower's key.
pub fn own_output(parent: &Transaction, key: &SecretKey) -> Option<u32> {
    let script = own_script(key);
    parent
        .output
        .iter()
        .position(|o| o.script_pubkey == script)
        .map(|i| i as u32)
}

/// A signed child of `parent` lifting the package (parent of `parent_vsize` vbytes) to
/// `feerate_sat_vb`. `coins` are the tower's spare P2WPKH coins, used largest first only
/// as far as needed.
pub fn cpfp_child(
    parent: &Transaction,
    parent_fee: Amount,
    key: &SecretKey,
    coins: &[(OutPoint, TxOut)],
    feerate_sat_vb: u64,
) -> Result<Transaction, CpfpError> {
    let vout = own_output(parent, key).ok_or(CpfpError::NoOwnOutput)?;
    let script = own_script(key);
    let mut inputs = vec![(
        OutPoint {
            txid: parent.compute_txid(),
            vout,
        },
        parent.output[vout as usize].clone(),
    )];
    let mut spare: Vec<&(OutPoint, TxOut)> = coins
        .iter()
        .filter(|(o, t)| t.script_pubkey == script && o.txid != inputs[0].0.txid)
        .collect();
    spare.sort_by_key(|(_, t)| std::cmp::Reverse(t.value));
    let parent_vsize = parent.vsize() as u64;
    loop {
        let child_vsize = CHILD_BASE_VBYTES + P2WPKH_INPUT_VBYTES * inputs.len() as u64;
        let package_fee = feerate_sat_vb * (parent_vsize + child_vsize);
        let fee = Amount::from_sat(
            package_fee
                .saturating_sub(parent_fee.to_sat())
                .max(child_vsize),
        );
        let total: Amount = inputs.iter().map(|(_, t)| t.value).sum();
        if total >= fee + DUST {
            return Ok(sign_child(&inputs, total - fee, script, key));
        }
        if spare.is_empty() {
            return Err(CpfpError::InsufficientFunds(fee.to_sat()));
        }
        inputs.push(spare.remove(0).clone());
    }
}

fn sign_child(
    inputs: &[(OutPoint, TxOut)],
    value: Amount,
    script: ScriptBuf,
    key: &SecretKey,
) -> Transaction {
    let mut tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: inputs
            .iter()
            .map(|(outpoint, _)| TxIn {
                previous_output: *outpoint,
                script_sig: ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::new(),
            })
            .collect(),
        output: vec![TxOut {
            value,
            script_pubkey: script,
        }],
    };
    let public = key.public_key(SECP256K1);
    let mut witnesses = Vec::with_capacity(inputs.len());
    let mut cache = SighashCache::new(&tx);
    for (index, (_, prevout)) in inputs.iter().enumerate() {
        let sighash = cache
            .p2wpkh_signature_hash(
                index,
                &prevout.script_pubkey,
                prevout.value,
                EcdsaSighashType::All,
            )
            .expect("P2WPKH inputs of a well-formed child");
        let signature = bitcoin::ecdsa::Signature::sighash_all(
            SECP256K1.sign_ecdsa(&Message::from_digest(sighash.to_byte_array()), key),
        );
        witnesses.push(Witness::p2wpkh(&signature, &public));
    }
    for (input, witness) in tx.input.iter_mut().zip(witnesses) {
        input.witness = witness;
    }
    tx
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::Txid;

    fn parent(key: &SecretKey, value: u64) -> Transaction {
        Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint {
                    txid: Txid::from_byte_array([1; 32]),
                    vout: 0,
                },
                ..TxIn::default()
            }],
            output: vec![
                TxOut {
                    value: Amount::from_sat(1000),
                    script_pubkey: ScriptBuf::new_op_return([]),
                },
                TxOut {
                    value: Amount::from_sat(value),
                    script_pubkey: own_script(key),
                },
            ],
        }
    }

    #[test]
    fn the_child_spends_the_own_output_and_adds_coins_only_when_needed() {
        let key = SecretKey::from_slice(&[7; 32]).unwrap();
        let p = parent(&key, 100_000);
        let child = cpfp_child(&p, Amount::from_sat(100), &key, &[], 20).unwrap();
        assert_eq!(child.input.len(), 1);
        assert_eq!(child.input[0].previous_output.vout, 1);
        assert!(child.output[0].value < Amount::from_sat(100_000));
        let small = parent(&key, 500);
        assert!(matches!(
            cpfp_child(&small, Amount::ZERO, &key, &[], 20),
            Err(CpfpError::InsufficientFunds(_))
        ));
        let coin = (
            OutPoint {
                txid: Txid::from_byte_array([2; 32]),
                vout: 3,
            },
            TxOut {
                value: Amount::from_sat(50_000),
                script_pubkey: own_script(&key),
            },
        );
        let child = cpfp_child(&small, Amount::ZERO, &key, &[coin], 20).unwrap();
        assert_eq!(child.input.len(), 2);
        let stranger = SecretKey::from_slice(&[8; 32]).unwrap();
        assert_eq!(
            cpfp_child(&p, Amount::ZERO, &stranger, &[], 20),
            Err(CpfpError::NoOwnOutput)
        );
    }
}
