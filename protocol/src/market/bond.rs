//! Fidelity bonds: the bond key derived from a farmer's identity, the timelocked bond output
//! `wsh(and_v(v:pk(B),after(L)))`, the farmer's unbond spend, and JoinMarket's bond value.
//!
//! Key link: `t = tagged_hash("dstore/bond", I_xonly)` read as a scalar, `B = lift_x(I) + t·G`
//! (lift_x: the even-y point of BIP340). Anyone holding I and L recomputes the bond script,
//! so an announcement cannot claim someone else's coins; the farmer spends B with
//! `(i negated if I's full key has odd y) + t`.
//!
//! L is an nLockTime value: below 500,000,000 a block height, otherwise a unix time.

use std::collections::HashMap;
use std::str::FromStr;

use bitcoin::absolute::LockTime;
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{
    Keypair, Message, Parity, PublicKey, Scalar, SecretKey, XOnlyPublicKey, SECP256K1,
};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::transaction::Version;
use bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness};
use miniscript::Descriptor;

use super::MarketError;
use crate::hashing::tagged_hash;

/// JoinMarket's interest rate r for timelocked fidelity bonds: 1.5 % a year.
pub const BOND_INTEREST_RATE: f64 = 0.015;

/// JoinMarket's exponent on a bond's value when choosing among makers (its
/// `bond_value_exponent`); score.rs raises [`bond_value`] to it.
pub const BOND_VALUE_EXPONENT: f64 = 1.3;

/// Seconds in a Gregorian year, JoinMarket's year length.
pub const SECONDS_PER_YEAR: f64 = 60.0 * 60.0 * 24.0 * 365.2425;

/// Seconds per block assumed when a height locktime is converted to a time.
pub const SECONDS_PER_BLOCK: u64 = 600;

/// nLockTime values at or above this are unix times, below it block heights.
pub const LOCKTIME_THRESHOLD: u32 = 500_000_000;

/// t = tagged_hash("dstore/bond", I) as a scalar.
fn bond_tweak(identity: &XOnlyPublicKey) -> Result<Scalar, MarketError> {
    let hash = tagged_hash("dstore/bond", &[&identity.serialize()]);
    Scalar::from_be_bytes(hash).map_err(|e| MarketError::BondKey(e.to_string()))
}

/// B = lift_x(I) + t·G: the bond key anyone can derive from a farmer's identity.
pub fn bond_public_key(identity: &XOnlyPublicKey) -> Result<PublicKey, MarketError> {
    let even = PublicKey::from_x_only_public_key(*identity, Parity::Even);
    even.add_exp_tweak(SECP256K1, &bond_tweak(identity)?)
        .map_err(|e| MarketError::BondKey(e.to_string()))
}

/// The secret key of B: the identity secret (negated when its full key has odd y) plus t.
pub fn bond_secret_key(identity: &Keypair) -> Result<SecretKey, MarketError> {
    let (xonly, parity) = identity.x_only_public_key();
    let secret = match parity {
        Parity::Even => identity.secret_key(),
        Parity::Odd => identity.secret_key().negate(),
    };
    secret
        .add_tweak(&bond_tweak(&xonly)?)
        .map_err(|e| MarketError::BondKey(e.to_string()))
}

/// Refuses a locktime that `after(L)` cannot express (0, or 2^31 and above).
fn check_locktime(locktime: u32) -> Result<(), MarketError> {
    if locktime == 0 || locktime >= 0x8000_0000 {
        return Err(MarketError::BadLocktime(locktime));
    }
    Ok(())
}

/// The bond output's descriptor `wsh(and_v(v:pk(B),after(L)))`, sanity-checked by miniscript.
pub fn bond_descriptor(
    identity: &XOnlyPublicKey,
    locktime: u32,
) -> Result<Descriptor<PublicKey>, MarketError> {
    check_locktime(locktime)?;
    let key = bond_public_key(identity)?;
    let text = format!("wsh(and_v(v:pk({key}),after({locktime})))");
    let descriptor = Descriptor::<PublicKey>::from_str(&text)
        .map_err(|e| MarketError::Miniscript(e.to_string()))?;
    descriptor
        .sanity_check()
        .map_err(|e| MarketError::Miniscript(e.to_string()))?;
    Ok(descriptor)
}

/// The bond output's scriptPubKey (P2WSH).
pub fn bond_script_pubkey(
    identity: &XOnlyPublicKey,
    locktime: u32,
) -> Result<ScriptBuf, MarketError> {
    Ok(bond_descriptor(identity, locktime)?.script_pubkey())
}

/// The bond's value minus `fee` paid to `destination`, refused when nothing spendable is left.
fn unbond_output(value: Amount, fee: Amount, destination: ScriptBuf) -> Result<TxOut, MarketError> {
    let too_high = MarketError::FeeTooHigh {
        value_sat: value.to_sat(),
        fee_sat: fee.to_sat(),
    };
    let rest = value
        .checked_sub(fee)
        .filter(|v| *v > Amount::ZERO)
        .ok_or(too_high.clone())?;
    if rest < destination.minimal_non_dust() {
        return Err(too_high);
    }
    Ok(TxOut {
        value: rest,
        script_pubkey: destination,
    })
}

/// The farmer's signed spend of its bond after L: version 2, nLockTime L, the bond as the
/// only input (sequence 0xFFFFFFFE), one output of `value − fee` to `destination`.
pub fn unbond_transaction(
    identity: &Keypair,
    bond: OutPoint,
    value: Amount,
    locktime: u32,
    destination: ScriptBuf,
    fee: Amount,
) -> Result<Transaction, MarketError> {
    let descriptor = bond_descriptor(&identity.x_only_public_key().0, locktime)?;
    let lock_time = LockTime::from_consensus(locktime);
    let mut tx = Transaction {
        version: Version::TWO,
        lock_time,
        input: vec![TxIn {
            previous_output: bond,
            script_sig: ScriptBuf::new(),
            sequence: Sequence::ENABLE_LOCKTIME_NO_RBF,
            witness: Witness::new(),
        }],
        output: vec![unbond_output(value, fee, destination)?],
    };
    let witness_script = descriptor
        .explicit_script()
        .map_err(|e| MarketError::Miniscript(e.to_string()))?;
    let sighash = SighashCache::new(&tx)
        .p2wsh_signature_hash(0, &witness_script, value, EcdsaSighashType::All)
        .map_err(|_| MarketError::Sighash)?;
    let secret = bond_secret_key(identity)?;
    let signature = bitcoin::ecdsa::Signature {
        signature: SECP256K1.sign_ecdsa(&Message::from_digest(sighash.to_byte_array()), &secret),
        sighash_type: EcdsaSighashType::All,
    };
    let satisfier = (
        HashMap::from([(secret.public_key(SECP256K1), signature)]),
        lock_time,
    );
    descriptor
        .satisfy(&mut tx.input[0], satisfier)
        .map_err(|e| MarketError::Miniscript(e.to_string()))?;
    Ok(tx)
}

/// The time a locktime falls due: a unix-time locktime as is; a height locktime as the
/// confirming block's time plus 600 s for each block from the confirmation height to L
/// (a height at or below the confirmation height gives the confirmation time).
pub fn locktime_to_time(locktime: u32, confirmation_height: u32, confirmation_time: u64) -> u64 {
    if locktime >= LOCKTIME_THRESHOLD {
        return u64::from(locktime);
    }
    let blocks = u64::from(locktime.saturating_sub(confirmation_height));
    confirmation_time.saturating_add(blocks * SECONDS_PER_BLOCK)
}

/// A timelocked bond's value in JoinMarket's model, *before* its selection exponent
/// ([`BOND_VALUE_EXPONENT`], applied by score.rs): `V · a` with
///
/// `a = max(0, min(1, e^{r·T} − 1) − min(1, e^{r·max(0, t − L)} − 1))`,
///
/// V the bond's value in satoshis, r = [`BOND_INTEREST_RATE`] a year, T = (L − confirmation)
/// the locked span in years, L the locktime and t now, both in years since the epoch. The
/// first term is the interest forgone by locking; the second decays the value once L has
/// passed, so a bond past its locktime still counts a little while the farmer moves it.
///
/// Sources (written from the formula, not copied): JoinMarket's `docs/fidelity-bonds.md`
/// ("Fidelity bonds", the time-value-of-money valuation of timelocked addresses) and
/// `jmclient/jmclient/wallet.py`, `FidelityBondMixin.calculate_timelocked_fidelity_bond_value`
/// (github.com/JoinMarket-Org/joinmarket-clientserver), which returns `(V·a)^exponent`.
/// All times are unix seconds (use [`locktime_to_time`] for a height locktime).
pub fn bond_value(value_sat: u64, confirmation_time: u64, locktime_time: u64, now: u64) -> f64 {
    let r = BOND_INTEREST_RATE;
    let locked_years = (locktime_time as f64 - confirmation_time as f64) / SECONDS_PER_YEAR;
    let overdue_years = ((now as f64 - locktime_time as f64) / SECONDS_PER_YEAR).max(0.0);
    let forgone = ((r * locked_years).exp() - 1.0).min(1.0);
    let decayed = ((r * overdue_years).exp() - 1.0).min(1.0);
    value_sat as f64 * (forgone - decayed).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::identity_keypair;
    use bitcoin::sighash::Prevouts;
    use bitcoin::Txid;
    use miniscript::Interpreter;

    fn keypair(seed: u8) -> Keypair {
        identity_keypair(&[seed; 32]).unwrap()
    }

    fn destination() -> ScriptBuf {
        ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_byte_array([7; 20]))
    }

    #[test]
    fn bond_secret_matches_bond_public_key_for_both_parities() {
        let mut parities = std::collections::BTreeSet::new();
        for seed in 0..16 {
            let kp = keypair(seed);
            let (xonly, parity) = kp.x_only_public_key();
            parities.insert(parity == Parity::Odd);
            let secret = bond_secret_key(&kp).unwrap();
            assert_eq!(
                secret.public_key(SECP256K1),
                bond_public_key(&xonly).unwrap()
            );
        }
        assert_eq!(parities.len(), 2, "seeds cover odd and even identity keys");
    }

    #[test]
    fn bond_key_differs_per_identity_and_from_the_identity() {
        let a = keypair(1).x_only_public_key().0;
        let b = keypair(2).x_only_public_key().0;
        let bond_a = bond_public_key(&a).unwrap();
        assert_ne!(bond_a, bond_public_key(&b).unwrap());
        assert_ne!(bond_a.x_only_public_key().0, a);
    }

    #[test]
    fn descriptor_has_the_fidelity_bond_shape() {
        let identity = keypair(3).x_only_public_key().0;
        let d = bond_descriptor(&identity, 700_000).unwrap();
        let key = bond_public_key(&identity).unwrap();
        assert_eq!(
            d.to_string().split('#').next().unwrap(),
            format!("wsh(and_v(v:pk({key}),after(700000)))")
        );
        let spk = bond_script_pubkey(&identity, 700_000).unwrap();
        assert!(spk.is_p2wsh());
        assert_ne!(spk, bond_script_pubkey(&identity, 700_001).unwrap());
        // Unix-time locktimes are allowed too.
        bond_script_pubkey(&identity, 1_800_000_000).unwrap();
    }

    #[test]
    fn invalid_locktimes_are_refused() {
        let identity = keypair(4).x_only_public_key().0;
        for bad in [0, 0x8000_0000, u32::MAX] {
            assert_eq!(
                bond_script_pubkey(&identity, bad),
                Err(MarketError::BadLocktime(bad))
            );
        }
    }

    #[test]
    fn unbond_transaction_satisfies_the_bond_script() {
        for (seed, locktime) in [(5u8, 300u32), (6, 1_800_000_000), (9, 500_000_000)] {
            let kp = keypair(seed);
            let value = Amount::from_sat(150_000);
            let bond = OutPoint::new(Txid::from_byte_array([seed; 32]), 0);
            let tx = unbond_transaction(
                &kp,
                bond,
                value,
                locktime,
                destination(),
                Amount::from_sat(500),
            )
            .unwrap();
            assert_eq!(tx.version, Version::TWO);
            assert_eq!(tx.lock_time.to_consensus_u32(), locktime);
            assert_eq!(tx.input.len(), 1);
            assert_eq!(tx.input[0].previous_output, bond);
            assert_eq!(tx.input[0].sequence, Sequence(0xFFFF_FFFE));
            assert_eq!(tx.output.len(), 1);
            assert_eq!(tx.output[0].value, Amount::from_sat(149_500));
            assert_eq!(tx.output[0].script_pubkey, destination());
            assert_eq!(tx.input[0].witness.len(), 2, "[signature, witness script]");

            let spk = bond_script_pubkey(&kp.x_only_public_key().0, locktime).unwrap();
            let prevout = TxOut {
                value,
                script_pubkey: spk.clone(),
            };
            let input = &tx.input[0];
            let interpreter = Interpreter::from_txdata(
                &spk,
                &input.script_sig,
                &input.witness,
                input.sequence,
                tx.lock_time,
            )
            .unwrap();
            let prevouts = [prevout];
            let prevouts = Prevouts::All(&prevouts);
            let satisfied: Vec<_> = interpreter.iter(SECP256K1, &tx, 0, &prevouts).collect();
            assert!(!satisfied.is_empty());
            for step in satisfied {
                step.unwrap();
            }
            // Another value in the sighash breaks the signature.
            let wrong = [TxOut {
                value: Amount::from_sat(150_001),
                script_pubkey: spk.clone(),
            }];
            let wrong = Prevouts::All(&wrong);
            assert!(interpreter
                .iter(SECP256K1, &tx, 0, &wrong)
                .any(|s| s.is_err()));
        }
    }

    #[test]
    fn unbond_refuses_fees_that_leave_nothing_spendable() {
        let kp = keypair(7);
        let bond = OutPoint::new(Txid::from_byte_array([7; 32]), 1);
        let value = Amount::from_sat(10_000);
        for fee in [10_000, 10_001, 9_800] {
            assert_eq!(
                unbond_transaction(&kp, bond, value, 100, destination(), Amount::from_sat(fee)),
                Err(MarketError::FeeTooHigh {
                    value_sat: 10_000,
                    fee_sat: fee
                }),
                "fee {fee}"
            );
        }
        unbond_transaction(
            &kp,
            bond,
            value,
            100,
            destination(),
            Amount::from_sat(9_000),
        )
        .unwrap();
    }

    #[test]
    fn locktime_to_time_for_heights_and_times() {
        assert_eq!(locktime_to_time(200, 150, 1_000_000), 1_000_000 + 50 * 600);
        assert_eq!(locktime_to_time(100, 150, 1_000_000), 1_000_000);
        assert_eq!(
            locktime_to_time(1_700_000_000, 150, 1_000_000),
            1_700_000_000
        );
        assert_eq!(
            locktime_to_time(LOCKTIME_THRESHOLD, 0, 5),
            u64::from(LOCKTIME_THRESHOLD)
        );
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 0.5
    }

    #[test]
    fn bond_value_matches_hand_computed_values() {
        let year = SECONDS_PER_YEAR as u64; // 31,556,952 s
        let coin = 100_000_000;
        // One year locked, valued at confirmation: V·(e^0.015 − 1) = 1e8 · 0.0151130646…
        assert!(close(bond_value(coin, 0, year, 0), 1_511_306.46));
        // Still locked: the value does not depend on "now" before L.
        assert!(close(bond_value(coin, 0, year, year / 2), 1_511_306.46));
        // Half a year past L: 1e8 · ((e^0.015 − 1) − (e^0.0075 − 1)) = 1e8 · 0.0075848693…
        let overdue = bond_value(coin, 0, year, year + year / 2);
        assert!(close(overdue, 758_486.93), "{overdue}");
        // A year past a one-year lock: fully decayed.
        assert!(bond_value(coin, 0, year, 2 * year) < 1.0);
        // A 100-year lock: e^1.5 − 1 > 1 is capped at 1, the value is V itself.
        assert!(close(bond_value(coin, 0, 100 * year, 0), 1e8));
        // A locktime before confirmation is worth nothing; so is an empty bond.
        assert_eq!(bond_value(coin, year, 0, year), 0.0);
        assert_eq!(bond_value(0, 0, year, 0), 0.0);
    }

    #[test]
    fn bond_value_grows_with_value_and_lock_and_decays_after() {
        let year = SECONDS_PER_YEAR as u64;
        assert!(bond_value(2, 0, year, 0) > bond_value(1, 0, year, 0));
        assert!(bond_value(1_000, 0, 2 * year, 0) > bond_value(1_000, 0, year, 0));
        let decay: Vec<f64> = (0..5)
            .map(|q| bond_value(1_000_000, 0, year, year + q * year / 4))
            .collect();
        assert!(decay.windows(2).all(|w| w[1] < w[0]), "{decay:?}");
    }
}
