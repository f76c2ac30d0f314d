//! The download contract's transactions (PROTOCOL.md 3.2): miniscript descriptors, TX2/TX3 builders, sighashes, and the renter's refunds.
//!
//! Every script comes from a miniscript descriptor that passes miniscript's sanity check:
//!
//! * TX1:0, legacy P2SH: `sh(or_d(multi(3,R,F,F̃),and_v(v:pk(R),after(T1))))`
//! * TX2:0, P2WSH:       `wsh(or_d(multi(2,R2,F2),and_v(v:pk(R2),older(Δ))))`
//!
//! with the public twin key F̃ = F + c·G, c = tagged_hash("dstore/twin", F ‖ contract id).
//!
//! Key order in TX1:0's multisig ([`Tx1KeyOrder`]): R first, so TX2's scriptSig is
//! `OP_0 sig_R sig_F sig_F̃ redeem` and the hidden s fields start after R's public
//! signature, where the proof's midstate covers one more 64-byte block (PROTOCOL.md 3.2,
//! 3.4). Contracts stored before that change carry no order and read back as
//! [`Tx1KeyOrder::FarmerFirst`] (`multi(3,F,F̃,R)`), the script they were funded to, so
//! they still claim and refund.
//!
//! Transaction choices:
//! * TX2: version 2, nLockTime 0, input sequence 0xFFFFFFFF (final). TX2 is never replaced:
//!   any change to it changes its txid and voids the renter's TX3 signature, so it is
//!   fee-bumped only by CPFP through TX3. Its only input is TX1:0, spent through the
//!   3-of-3 branch, and it has exactly one output.
//! * TX3: version 2, nLockTime 0, sequence 0xFFFFFFFF, one input (TX2:0 via 2-of-2), one
//!   output to the farmer's payout script.
//! * TX1 refund: nLockTime = T1, sequence 0xFFFFFFFE (locktime enforced, no RBF signal).
//! * TX2 refund: version 2, sequence = Δ (BIP68 relative height), nLockTime 0.
//!
//! Refund destination: a [`RefundDestination`] can only be made from a secret key the caller
//! holds (it becomes that key's P2WPKH), so a refund built here can only pay a script the
//! renter can spend; there is no constructor from an arbitrary script or address.

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;

use bitcoin::absolute::LockTime;
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{ecdsa, Message, PublicKey, Scalar, SecretKey, SECP256K1};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::transaction::Version;
use bitcoin::{
    Amount, CompressedPublicKey, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid,
    Witness,
};
use miniscript::descriptor::{ShInner, WshInner};
use miniscript::{AnalysisError, Descriptor, ExtParams, Miniscript, ScriptContext, Terminal};
use serde::{Deserialize, Serialize};

use crate::hashing::{sha256, tagged_hash};

/// A descriptor over plain (definite) public keys.
pub type KeyDescriptor = Descriptor<bitcoin::PublicKey>;

/// Why a contract script or transaction could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    #[error("miniscript rejected the descriptor: {0}")]
    Miniscript(String),
    #[error("twin tweak is not a valid scalar")]
    BadTwinTweak,
    #[error("T1 {0} is not a block height")]
    BadRefundHeight(u32),
    #[error("fee {fee} leaves less than the dust limit of {input}")]
    FeeTooHigh { fee: Amount, input: Amount },
    #[error("the secret key does not belong to the expected public key")]
    WrongKey,
    #[error("the transaction is not a {0}")]
    WrongShape(&'static str),
    #[error("sighash computation failed")]
    Sighash,
    #[error("signature does not verify")]
    BadSignature,
    #[error("no fixed-width signature found")]
    GrindingFailed,
    #[error("TX1 input {0} does not spend a segwit output, so TX1's txid could be malleated")]
    NonSegwitFunding(usize),
    #[error("TX1 output {0} does not pay the contract's TX1:0 script and price")]
    Tx1OutputMismatch(u32),
    #[error("the renter's TX2 signature is not fixed-width (70-byte DER), so TX2 would not have the contract's layout")]
    NotFixedWidth,
}

pub(crate) fn miniscript_err(e: impl std::fmt::Display) -> ContractError {
    ContractError::Miniscript(e.to_string())
}

/// c = tagged_hash("dstore/twin", F ‖ contract id) as a 32-byte big-endian number.
pub fn twin_tweak_bytes(farmer_key: &PublicKey, contract_id: &[u8; 32]) -> [u8; 32] {
    tagged_hash("dstore/twin", &[&farmer_key.serialize(), contract_id])
}

/// The twin tweak c as a scalar.
pub fn twin_tweak(farmer_key: &PublicKey, contract_id: &[u8; 32]) -> Result<Scalar, ContractError> {
    Scalar::from_be_bytes(twin_tweak_bytes(farmer_key, contract_id))
        .map_err(|_| ContractError::BadTwinTweak)
}

/// F̃ = F + c·G.
pub fn twin_key(
    farmer_key: &PublicKey,
    contract_id: &[u8; 32],
) -> Result<PublicKey, ContractError> {
    let tweak = twin_tweak(farmer_key, contract_id)?;
    farmer_key
        .add_exp_tweak(SECP256K1, &tweak)
        .map_err(|_| ContractError::BadTwinTweak)
}

/// The twin private key f + c.
pub fn twin_secret(
    farmer_secret: &SecretKey,
    contract_id: &[u8; 32],
) -> Result<SecretKey, ContractError> {
    let tweak = twin_tweak(&farmer_secret.public_key(SECP256K1), contract_id)?;
    farmer_secret
        .add_tweak(&tweak)
        .map_err(|_| ContractError::BadTwinTweak)
}

/// txid = SHA256(D) where D = SHA256(serialized TX2): what the renter learns before TX2.
pub fn txid_from_digest(digest: &[u8; 32]) -> Txid {
    Txid::from_byte_array(sha256(&[digest]))
}

/// A script the renter controls, the only place refunds can pay to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundDestination {
    script_pubkey: ScriptBuf,
}

impl RefundDestination {
    /// P2WPKH of a key whose secret the caller proves it holds by passing it.
    pub fn p2wpkh_of(renter_secret: &SecretKey) -> Self {
        let key = CompressedPublicKey(renter_secret.public_key(SECP256K1));
        RefundDestination {
            script_pubkey: ScriptBuf::new_p2wpkh(&key.wpubkey_hash()),
        }
    }

    /// A script of the caller's own wallet (the caller vouches that it controls it).
    pub fn wallet_script(script_pubkey: ScriptBuf) -> Self {
        RefundDestination { script_pubkey }
    }

    /// The destination scriptPubKey.
    pub fn script_pubkey(&self) -> &ScriptBuf {
        &self.script_pubkey
    }
}

/// The order of the three keys in TX1:0's `multi(3,…)`, which is also the order of the
/// signatures in TX2's scriptSig (CHECKMULTISIG takes them in key order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tx1KeyOrder {
    /// `multi(3,R,F,F̃)`: every new contract. R's signature is public (the renter made
    /// it), so putting it first moves the hidden s fields 72 bytes later in TX2.
    RenterFirst,
    /// `multi(3,F,F̃,R)`: contracts agreed before R-first. Only read back from records
    /// stored without a key order, never chosen for a new contract.
    FarmerFirst,
}

impl Tx1KeyOrder {
    /// The order of a stored contract that has no `tx1_key_order` field: it was agreed
    /// (and TX1 possibly funded) before R-first, so its script is `multi(3,F,F̃,R)`.
    pub fn of_records_without_one() -> Tx1KeyOrder {
        Tx1KeyOrder::FarmerFirst
    }

    /// R, F, F̃ in this order's multisig order.
    fn arrange<T>(self, renter: T, farmer: T, twin: T) -> [T; 3] {
        match self {
            Tx1KeyOrder::RenterFirst => [renter, farmer, twin],
            Tx1KeyOrder::FarmerFirst => [farmer, twin, renter],
        }
    }
}

/// Public parameters of one download contract, agreed after the key exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadContract {
    pub contract_id: [u8; 32],
    /// F: the farmer's download key, whose secret TX2 reveals.
    pub farmer_key: PublicKey,
    /// R: the renter's download key.
    pub renter_key: PublicKey,
    /// R2: the renter's key on TX2's output.
    pub renter_tx2_key: PublicKey,
    /// F2: the farmer's key on TX2's output.
    pub farmer_tx2_key: PublicKey,
    /// T1: block height after which the renter can take TX1:0 back.
    pub refund_height: u32,
    /// Δ: blocks after TX2 confirms after which the renter can take TX2:0 back.
    pub payout_delay: u16,
    /// The download price: TX1:0's value.
    pub price: Amount,
    /// The key order of TX1:0's multisig: [`Tx1KeyOrder::RenterFirst`] for every new
    /// contract; records stored without it read back as [`Tx1KeyOrder::FarmerFirst`].
    #[serde(default = "Tx1KeyOrder::of_records_without_one")]
    pub tx1_key_order: Tx1KeyOrder,
}

pub(crate) fn bkey(key: &PublicKey) -> bitcoin::PublicKey {
    bitcoin::PublicKey::new(*key)
}

/// Parses a contract descriptor and runs miniscript's sanity analysis on it.
///
/// Miniscript's stock check also refuses a key that appears in two *different* branches,
/// which PROTOCOL.md's descriptors do on purpose (R in both branches of TX1:0, R2 in both
/// of TX2:0). That reuse is safe here: the other branch is a timelock branch that the
/// multisig-spending transactions (TX2, TX3: nLockTime 0, final sequences) can never
/// satisfy, so a signature cannot be moved between branches. Every other sanity rule is
/// kept, and a key repeated inside one multisig (the seed's `multi(3,F,F,R)`) is refused.
pub(crate) fn sanity_checked(text: &str) -> Result<KeyDescriptor, ContractError> {
    let descriptor = KeyDescriptor::from_str(text).map_err(miniscript_err)?;
    match &descriptor {
        Descriptor::Sh(sh) => match sh.as_inner() {
            ShInner::Ms(ms) => check_miniscript(ms)?,
            _ => return Err(ContractError::Miniscript("not a sh(miniscript)".into())),
        },
        Descriptor::Wsh(wsh) => match wsh.as_inner() {
            WshInner::Ms(ms) => check_miniscript(ms)?,
            _ => return Err(ContractError::Miniscript("not a wsh(miniscript)".into())),
        },
        _ => return Err(ContractError::Miniscript("not a sh/wsh descriptor".into())),
    }
    Ok(descriptor)
}

/// Miniscript's sanity rules, with a key allowed in two branches but not twice in a multisig.
fn check_miniscript<Ctx: ScriptContext>(
    ms: &Miniscript<bitcoin::PublicKey, Ctx>,
) -> Result<(), ContractError> {
    ms.ext_check(&ExtParams::sane().repeated_pk())
        .map_err(miniscript_err)?;
    let repeated_in_multisig = ms.iter().any(|node| match &node.node {
        Terminal::Multi(thresh) => {
            thresh.data().iter().collect::<BTreeSet<_>>().len() != thresh.n()
        }
        _ => false,
    });
    if repeated_in_multisig {
        return Err(miniscript_err(AnalysisError::RepeatedPubkeys));
    }
    Ok(())
}

pub(crate) fn fixed_sighash_all(sig: ecdsa::Signature) -> bitcoin::ecdsa::Signature {
    bitcoin::ecdsa::Signature {
        signature: sig,
        sighash_type: EcdsaSighashType::All,
    }
}

/// An ECDSA signature whose r and s both DER-encode in exactly 32 bytes (70-byte DER), so
/// that the transactions carrying it have one fixed layout. RFC 6979 nonces with a
/// counter as extra data, redrawn until both values fit (each try succeeds about half the
/// time).
pub fn sign_fixed_width(
    message: &Message,
    secret: &SecretKey,
) -> Result<ecdsa::Signature, ContractError> {
    for counter in 0u32..256 {
        let mut extra = [0u8; 32];
        extra[..4].copy_from_slice(&counter.to_be_bytes());
        let signature = SECP256K1.sign_ecdsa_with_noncedata(message, secret, &extra);
        if signature.serialize_der().len() == 70 {
            return Ok(signature);
        }
    }
    Err(ContractError::GrindingFailed)
}

fn output_after_fee(
    input: Amount,
    fee: Amount,
    script_pubkey: ScriptBuf,
) -> Result<TxOut, ContractError> {
    let value = input
        .checked_sub(fee)
        .filter(|v| *v >= script_pubkey.minimal_non_dust())
        .ok_or(ContractError::FeeTooHigh { fee, input })?;
    Ok(TxOut {
        value,
        script_pubkey,
    })
}

fn one_in_one_out(
    version: Version,
    lock_time: LockTime,
    input: TxIn,
    output: TxOut,
) -> Transaction {
    Transaction {
        version,
        lock_time,
        input: vec![input],
        output: vec![output],
    }
}

pub(crate) fn unsigned_input(previous_output: OutPoint, sequence: Sequence) -> TxIn {
    TxIn {
        previous_output,
        script_sig: ScriptBuf::new(),
        sequence,
        witness: Witness::new(),
    }
}

pub(crate) fn require_key(secret: &SecretKey, expected: &PublicKey) -> Result<(), ContractError> {
    if secret.public_key(SECP256K1) == *expected {
        Ok(())
    } else {
        Err(ContractError::WrongKey)
    }
}

impl DownloadContract {
    /// The seal context of download `download_id` under this contract's R and F.
    pub fn seal_context(&self, download_id: [u8; 32]) -> crate::seal::SealContext {
        crate::seal::SealContext {
            contract_id: self.contract_id,
            download_id,
            renter_key: self.renter_key,
            farmer_key: self.farmer_key,
        }
    }

    /// The twin tweak c of this contract.
    pub fn twin_tweak(&self) -> Result<Scalar, ContractError> {
        twin_tweak(&self.farmer_key, &self.contract_id)
    }

    /// F̃ of this contract.
    pub fn twin_key(&self) -> Result<PublicKey, ContractError> {
        twin_key(&self.farmer_key, &self.contract_id)
    }

    fn refund_lock_time(&self) -> Result<LockTime, ContractError> {
        LockTime::from_height(self.refund_height)
            .map_err(|_| ContractError::BadRefundHeight(self.refund_height))
    }

    fn tx1_policy(&self) -> Result<String, ContractError> {
        self.refund_lock_time()?;
        let renter = bkey(&self.renter_key);
        let [first, second, third] =
            self.tx1_key_order
                .arrange(renter, bkey(&self.farmer_key), bkey(&self.twin_key()?));
        Ok(format!(
            "or_d(multi(3,{first},{second},{third}),and_v(v:pk({renter}),after({})))",
            self.refund_height
        ))
    }

    /// TX1:0's descriptor, `sh(or_d(multi(3,R,F,F̃),and_v(v:pk(R),after(T1))))` (keys in
    /// [`DownloadContract::tx1_key_order`]).
    pub fn tx1_descriptor(&self) -> Result<KeyDescriptor, ContractError> {
        sanity_checked(&format!("sh({})", self.tx1_policy()?))
    }

    /// The same policy as P2WSH. Not used by the protocol: it exists to demonstrate why
    /// TX1:0 must be legacy (a witness spend's txid does not commit to the signatures).
    pub fn tx1_descriptor_wsh(&self) -> Result<KeyDescriptor, ContractError> {
        sanity_checked(&format!("wsh({})", self.tx1_policy()?))
    }

    /// TX1:0's scriptPubKey (P2SH).
    pub fn tx1_script_pubkey(&self) -> Result<ScriptBuf, ContractError> {
        Ok(self.tx1_descriptor()?.script_pubkey())
    }

    /// TX1:0's redeem script, also the scriptCode of its legacy sighash.
    pub fn tx1_redeem_script(&self) -> Result<ScriptBuf, ContractError> {
        self.tx1_descriptor()?
            .explicit_script()
            .map_err(miniscript_err)
    }

    /// The output the renter's wallet must put at TX1 index 0.
    pub fn tx1_output(&self) -> Result<TxOut, ContractError> {
        Ok(TxOut {
            value: self.price,
            script_pubkey: self.tx1_script_pubkey()?,
        })
    }

    /// Checks TX1 before the renter broadcasts it: output `vout` pays TX1:0's script with
    /// the price, and every input spends a segwit output (P2WPKH, P2WSH, P2TR, …; given in
    /// input order as `prevouts`), so TX1's txid — which TX2 commits to — cannot be
    /// malleated by a third party.
    pub fn check_tx1(
        &self,
        tx1: &Transaction,
        vout: u32,
        prevouts: &[TxOut],
    ) -> Result<(), ContractError> {
        let paid = tx1.output.get(vout as usize);
        if paid != Some(&self.tx1_output()?) {
            return Err(ContractError::Tx1OutputMismatch(vout));
        }
        if prevouts.len() != tx1.input.len() {
            return Err(ContractError::WrongShape("TX1 with one prevout per input"));
        }
        match prevouts
            .iter()
            .position(|p| !p.script_pubkey.is_witness_program())
        {
            Some(index) => Err(ContractError::NonSegwitFunding(index)),
            None => Ok(()),
        }
    }

    /// TX2:0's descriptor, `wsh(or_d(multi(2,R2,F2),and_v(v:pk(R2),older(Δ))))`.
    pub fn tx2_descriptor(&self) -> Result<KeyDescriptor, ContractError> {
        sanity_checked(&format!(
            "wsh(or_d(multi(2,{},{}),and_v(v:pk({}),older({}))))",
            bkey(&self.renter_tx2_key),
            bkey(&self.farmer_tx2_key),
            bkey(&self.renter_tx2_key),
            self.payout_delay
        ))
    }

    /// TX2:0's scriptPubKey (P2WSH).
    pub fn tx2_script_pubkey(&self) -> Result<ScriptBuf, ContractError> {
        Ok(self.tx2_descriptor()?.script_pubkey())
    }

    /// TX2:0's witness script.
    pub fn tx2_witness_script(&self) -> Result<ScriptBuf, ContractError> {
        self.tx2_descriptor()?
            .explicit_script()
            .map_err(miniscript_err)
    }

    /// Unsigned TX2 spending `tx1_outpoint` (worth the price) minus `fee`.
    pub fn unsigned_tx2(
        &self,
        tx1_outpoint: OutPoint,
        fee: Amount,
    ) -> Result<Transaction, ContractError> {
        let output = output_after_fee(self.price, fee, self.tx2_script_pubkey()?)?;
        let input = unsigned_input(tx1_outpoint, Sequence::MAX);
        Ok(one_in_one_out(Version::TWO, LockTime::ZERO, input, output))
    }

    fn check_tx2_shape(&self, tx2: &Transaction) -> Result<(), ContractError> {
        let shaped = tx2.input.len() == 1
            && tx2.output.len() == 1
            && tx2.version == Version::TWO
            && tx2.lock_time == LockTime::ZERO
            && tx2.input[0].sequence == Sequence::MAX
            && tx2.output[0].script_pubkey == self.tx2_script_pubkey()?;
        if shaped {
            Ok(())
        } else {
            Err(ContractError::WrongShape("TX2 of this contract"))
        }
    }

    /// Renter's check before signing the farmer's unsigned TX2 (flow step 2): it is this
    /// contract's TX2, spends exactly `tx1_outpoint`, carries no signatures yet, and pays
    /// a fee of at most `max_fee`. Returns the fee.
    pub fn check_unsigned_tx2(
        &self,
        tx2: &Transaction,
        tx1_outpoint: OutPoint,
        max_fee: Amount,
    ) -> Result<Amount, ContractError> {
        self.check_tx2_shape(tx2)?;
        let input = &tx2.input[0];
        if input.previous_output != tx1_outpoint
            || !input.script_sig.is_empty()
            || !input.witness.is_empty()
        {
            return Err(ContractError::WrongShape("unsigned TX2 spending TX1:0"));
        }
        let fee = self
            .price
            .checked_sub(tx2.output[0].value)
            .ok_or(ContractError::WrongShape("TX2 paying at most TX1's value"))?;
        if fee > max_fee {
            return Err(ContractError::FeeTooHigh {
                fee,
                input: self.price,
            });
        }
        Ok(fee)
    }

    /// z: TX2's legacy SIGHASH_ALL digest with TX1's redeem script as scriptCode.
    pub fn tx2_sighash(&self, tx2: &Transaction) -> Result<[u8; 32], ContractError> {
        self.check_tx2_shape(tx2)?;
        let redeem = self.tx1_redeem_script()?;
        let hash = SighashCache::new(tx2)
            .legacy_signature_hash(0, &redeem, EcdsaSighashType::All.to_u32())
            .map_err(|_| ContractError::Sighash)?;
        Ok(hash.to_byte_array())
    }

    /// The renter's sig_R over TX2 (flow step 2), fixed-width so TX2's layout depends only
    /// on the contract shape.
    pub fn renter_sign_tx2(
        &self,
        tx2: &Transaction,
        renter_secret: &SecretKey,
    ) -> Result<bitcoin::ecdsa::Signature, ContractError> {
        require_key(renter_secret, &self.renter_key)?;
        let message = Message::from_digest(self.tx2_sighash(tx2)?);
        Ok(fixed_sighash_all(sign_fixed_width(
            &message,
            renter_secret,
        )?))
    }

    /// The farmer's check of sig_R before signing TX2 itself. sig_R must be fixed-width:
    /// it precedes both s fields in TX2, so its length would move them.
    pub fn verify_renter_tx2_signature(
        &self,
        tx2: &Transaction,
        signature: &bitcoin::ecdsa::Signature,
    ) -> Result<(), ContractError> {
        if signature.sighash_type != EcdsaSighashType::All {
            return Err(ContractError::BadSignature);
        }
        if signature.signature.serialize_der().len() != 70 {
            return Err(ContractError::NotFixedWidth);
        }
        let message = Message::from_digest(self.tx2_sighash(tx2)?);
        SECP256K1
            .verify_ecdsa(&message, &signature.signature, &self.renter_key)
            .map_err(|_| ContractError::BadSignature)
    }

    /// Puts the three signatures into TX2's scriptSig; miniscript picks the multisig branch
    /// and orders them as the keys: `OP_0 sig_R sig_F sig_F̃ redeem` (R-first).
    pub fn finalize_tx2(
        &self,
        tx2: &Transaction,
        farmer_sig: ecdsa::Signature,
        twin_sig: ecdsa::Signature,
        renter_sig: bitcoin::ecdsa::Signature,
    ) -> Result<Transaction, ContractError> {
        self.check_tx2_shape(tx2)?;
        let signatures: HashMap<bitcoin::PublicKey, bitcoin::ecdsa::Signature> = HashMap::from([
            (bkey(&self.farmer_key), fixed_sighash_all(farmer_sig)),
            (bkey(&self.twin_key()?), fixed_sighash_all(twin_sig)),
            (bkey(&self.renter_key), renter_sig),
        ]);
        let mut signed = tx2.clone();
        self.tx1_descriptor()?
            .satisfy(&mut signed.input[0], &signatures)
            .map_err(miniscript_err)?;
        Ok(signed)
    }

    /// TX2:0's value for a TX2 fee.
    pub fn tx2_value(&self, tx2_fee: Amount) -> Result<Amount, ContractError> {
        output_after_fee(self.price, tx2_fee, self.tx2_script_pubkey()?).map(|o| o.value)
    }

    /// Unsigned TX3 spending `tx2_txid:0` (worth `tx2_value`) to the farmer's payout.
    pub fn unsigned_tx3(
        &self,
        tx2_txid: Txid,
        tx2_value: Amount,
        fee: Amount,
        farmer_payout: ScriptBuf,
    ) -> Result<Transaction, ContractError> {
        let output = output_after_fee(tx2_value, fee, farmer_payout)?;
        let input = unsigned_input(
            OutPoint {
                txid: tx2_txid,
                vout: 0,
            },
            Sequence::MAX,
        );
        Ok(one_in_one_out(Version::TWO, LockTime::ZERO, input, output))
    }

    /// BIP143 SIGHASH_ALL digest of input 0 spending TX2:0 (TX3 or the TX2 refund).
    pub fn tx2_output_sighash(
        &self,
        spend: &Transaction,
        tx2_value: Amount,
    ) -> Result<[u8; 32], ContractError> {
        let witness_script = self.tx2_witness_script()?;
        let hash = SighashCache::new(spend)
            .p2wsh_signature_hash(0, &witness_script, tx2_value, EcdsaSighashType::All)
            .map_err(|_| ContractError::Sighash)?;
        Ok(hash.to_byte_array())
    }

    /// A TX3 signature by R2 or F2.
    pub fn sign_tx3(
        &self,
        tx3: &Transaction,
        tx2_value: Amount,
        secret: &SecretKey,
    ) -> Result<bitcoin::ecdsa::Signature, ContractError> {
        let key = secret.public_key(SECP256K1);
        if key != self.renter_tx2_key && key != self.farmer_tx2_key {
            return Err(ContractError::WrongKey);
        }
        let message = Message::from_digest(self.tx2_output_sighash(tx3, tx2_value)?);
        Ok(fixed_sighash_all(SECP256K1.sign_ecdsa(&message, secret)))
    }

    /// Checks a TX3 signature by `key` (R2 or F2).
    pub fn verify_tx3_signature(
        &self,
        tx3: &Transaction,
        tx2_value: Amount,
        key: &PublicKey,
        signature: &bitcoin::ecdsa::Signature,
    ) -> Result<(), ContractError> {
        let message = Message::from_digest(self.tx2_output_sighash(tx3, tx2_value)?);
        SECP256K1
            .verify_ecdsa(&message, &signature.signature, key)
            .map_err(|_| ContractError::BadSignature)
    }

    /// Puts both signatures into TX3's witness through the 2-of-2 branch.
    pub fn finalize_tx3(
        &self,
        tx3: &Transaction,
        renter_sig: bitcoin::ecdsa::Signature,
        farmer_sig: bitcoin::ecdsa::Signature,
    ) -> Result<Transaction, ContractError> {
        if tx3.input.len() != 1 {
            return Err(ContractError::WrongShape("TX3"));
        }
        let signatures = HashMap::from([
            (bkey(&self.renter_tx2_key), renter_sig),
            (bkey(&self.farmer_tx2_key), farmer_sig),
        ]);
        let mut signed = tx3.clone();
        self.tx2_descriptor()?
            .satisfy(&mut signed.input[0], &signatures)
            .map_err(miniscript_err)?;
        Ok(signed)
    }

    /// The renter's refund of TX1:0 through after(T1), fully signed.
    pub fn tx1_refund(
        &self,
        tx1_outpoint: OutPoint,
        renter_secret: &SecretKey,
        destination: &RefundDestination,
        fee: Amount,
    ) -> Result<Transaction, ContractError> {
        require_key(renter_secret, &self.renter_key)?;
        let lock_time = self.refund_lock_time()?;
        let output = output_after_fee(self.price, fee, destination.script_pubkey.clone())?;
        let input = unsigned_input(tx1_outpoint, Sequence::ENABLE_LOCKTIME_NO_RBF);
        let mut tx = one_in_one_out(Version::TWO, lock_time, input, output);
        let descriptor = self.tx1_descriptor()?;
        let redeem = self.tx1_redeem_script()?;
        let hash = SighashCache::new(&tx)
            .legacy_signature_hash(0, &redeem, EcdsaSighashType::All.to_u32())
            .map_err(|_| ContractError::Sighash)?;
        let sig = SECP256K1.sign_ecdsa(&Message::from_digest(hash.to_byte_array()), renter_secret);
        let satisfier = (
            HashMap::from([(bkey(&self.renter_key), fixed_sighash_all(sig))]),
            lock_time,
        );
        descriptor
            .satisfy(&mut tx.input[0], satisfier)
            .map_err(miniscript_err)?;
        Ok(tx)
    }

    /// The renter's refund of TX2:0 through older(Δ), fully signed.
    pub fn tx2_refund(
        &self,
        tx2_outpoint: OutPoint,
        tx2_value: Amount,
        renter_tx2_secret: &SecretKey,
        destination: &RefundDestination,
        fee: Amount,
    ) -> Result<Transaction, ContractError> {
        require_key(renter_tx2_secret, &self.renter_tx2_key)?;
        let sequence = Sequence::from_height(self.payout_delay);
        let output = output_after_fee(tx2_value, fee, destination.script_pubkey.clone())?;
        let input = unsigned_input(tx2_outpoint, sequence);
        let mut tx = one_in_one_out(Version::TWO, LockTime::ZERO, input, output);
        let message = Message::from_digest(self.tx2_output_sighash(&tx, tx2_value)?);
        let sig = SECP256K1.sign_ecdsa(&message, renter_tx2_secret);
        let satisfier = (
            HashMap::from([(bkey(&self.renter_tx2_key), fixed_sighash_all(sig))]),
            sequence,
        );
        self.tx2_descriptor()?
            .satisfy(&mut tx.input[0], satisfier)
            .map_err(miniscript_err)?;
        Ok(tx)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// All secrets of a test contract.
    pub(crate) struct Parties {
        pub f: SecretKey,
        pub r: SecretKey,
        pub r2: SecretKey,
        pub f2: SecretKey,
        pub contract: DownloadContract,
    }

    pub(crate) fn parties(seed: u64) -> Parties {
        let mut rng = StdRng::seed_from_u64(seed);
        let [f, r, r2, f2] = [(); 4].map(|_| SecretKey::new(&mut rng));
        let contract = DownloadContract {
            contract_id: [seed as u8; 32],
            farmer_key: f.public_key(SECP256K1),
            renter_key: r.public_key(SECP256K1),
            renter_tx2_key: r2.public_key(SECP256K1),
            farmer_tx2_key: f2.public_key(SECP256K1),
            refund_height: 500,
            payout_delay: 144,
            price: Amount::from_sat(100_000),
            tx1_key_order: Tx1KeyOrder::RenterFirst,
        };
        Parties {
            f,
            r,
            r2,
            f2,
            contract,
        }
    }

    #[test]
    fn renter_checks_the_unsigned_tx2_before_signing() {
        let p = parties(78);
        let max = Amount::from_sat(5_000);
        let tx2 = p
            .contract
            .unsigned_tx2(tx1_outpoint(), Amount::from_sat(1_000))
            .unwrap();
        assert_eq!(
            p.contract.check_unsigned_tx2(&tx2, tx1_outpoint(), max),
            Ok(Amount::from_sat(1_000))
        );
        let other = OutPoint {
            vout: 1,
            ..tx1_outpoint()
        };
        assert!(p.contract.check_unsigned_tx2(&tx2, other, max).is_err());
        let greedy = p
            .contract
            .unsigned_tx2(tx1_outpoint(), Amount::from_sat(9_000))
            .unwrap();
        assert!(matches!(
            p.contract.check_unsigned_tx2(&greedy, tx1_outpoint(), max),
            Err(ContractError::FeeTooHigh { .. })
        ));
        let mut inflated = tx2.clone();
        inflated.output[0].value = p.contract.price + Amount::from_sat(1);
        assert!(p
            .contract
            .check_unsigned_tx2(&inflated, tx1_outpoint(), max)
            .is_err());
        let mut redirected = tx2.clone();
        redirected.output[0].script_pubkey = ScriptBuf::new_op_return([1u8; 4]);
        assert!(p
            .contract
            .check_unsigned_tx2(&redirected, tx1_outpoint(), max)
            .is_err());
        let mut signed = tx2.clone();
        signed.input[0].script_sig = ScriptBuf::from_bytes(vec![0x51]);
        assert!(p
            .contract
            .check_unsigned_tx2(&signed, tx1_outpoint(), max)
            .is_err());
        let mut two = tx2;
        two.output.push(two.output[0].clone());
        assert!(p
            .contract
            .check_unsigned_tx2(&two, tx1_outpoint(), max)
            .is_err());
    }

    #[test]
    fn tx1_must_pay_the_contract_from_segwit_inputs() {
        let p = parties(77);
        let funding = |script_pubkey: ScriptBuf| TxOut {
            value: Amount::from_sat(1_000_000),
            script_pubkey,
        };
        let tx1 = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![unsigned_input(tx1_outpoint(), Sequence::MAX)],
            output: vec![p.contract.tx1_output().unwrap()],
        };
        let segwit = funding(ScriptBuf::new_p2wpkh(
            &CompressedPublicKey(p.contract.renter_key).wpubkey_hash(),
        ));
        let legacy = funding(ScriptBuf::new_p2pkh(
            &bitcoin::PublicKey::new(p.contract.renter_key).pubkey_hash(),
        ));
        assert_eq!(
            p.contract.check_tx1(&tx1, 0, std::slice::from_ref(&segwit)),
            Ok(())
        );
        assert_eq!(
            p.contract.check_tx1(&tx1, 0, &[legacy]),
            Err(ContractError::NonSegwitFunding(0))
        );
        assert_eq!(
            p.contract.check_tx1(&tx1, 1, std::slice::from_ref(&segwit)),
            Err(ContractError::Tx1OutputMismatch(1))
        );
        let mut cheap = tx1.clone();
        cheap.output[0].value = Amount::from_sat(1);
        assert_eq!(
            p.contract.check_tx1(&cheap, 0, &[segwit]),
            Err(ContractError::Tx1OutputMismatch(0))
        );
    }

    pub(crate) fn tx1_outpoint() -> OutPoint {
        OutPoint {
            txid: Txid::from_byte_array([0xab; 32]),
            vout: 0,
        }
    }

    #[test]
    fn descriptors_have_expected_shape() {
        let p = parties(1);
        let tx1 = p.contract.tx1_descriptor().unwrap();
        assert!(tx1.to_string().starts_with("sh(or_d(multi(3,"));
        assert!(p.contract.tx1_script_pubkey().unwrap().is_p2sh());
        assert!(p
            .contract
            .tx1_descriptor_wsh()
            .unwrap()
            .script_pubkey()
            .is_p2wsh());
        assert!(p.contract.tx2_script_pubkey().unwrap().is_p2wsh());
        let redeem = p.contract.tx1_redeem_script().unwrap();
        assert_eq!(
            ScriptBuf::new_p2sh(&redeem.script_hash()),
            p.contract.tx1_script_pubkey().unwrap()
        );
    }

    #[test]
    fn miniscript_refuses_a_repeated_key() {
        // The seed's literal design: F twice in the multisig.
        let p = parties(2);
        let f = bkey(&p.contract.farmer_key);
        let r = bkey(&p.contract.renter_key);
        let text = format!("sh(or_d(multi(3,{f},{f},{r}),and_v(v:pk({r}),after(500))))");
        let parsed = KeyDescriptor::from_str(&text).unwrap();
        let stock = parsed.sanity_check();
        assert!(stock.is_err_and(|e| e.to_string().contains("repeated")));
        let result = sanity_checked(&text);
        assert!(
            matches!(result, Err(ContractError::Miniscript(ref m)) if m.contains("repeated")),
            "{result:?}"
        );
        // With the public twin key F̃ instead, the same check passes.
        p.contract.tx1_descriptor().unwrap();
    }

    #[test]
    fn tx1_multisig_puts_the_renter_first() {
        let p = parties(8);
        let c = &p.contract;
        let (r, f, twin) = (
            bkey(&c.renter_key),
            bkey(&c.farmer_key),
            bkey(&c.twin_key().unwrap()),
        );
        let text = c.tx1_descriptor().unwrap().to_string();
        assert!(
            text.starts_with(&format!("sh(or_d(multi(3,{r},{f},{twin}),")),
            "{text}"
        );
        let legacy = DownloadContract {
            tx1_key_order: Tx1KeyOrder::FarmerFirst,
            ..*c
        };
        let text = legacy.tx1_descriptor().unwrap().to_string();
        assert!(
            text.starts_with(&format!("sh(or_d(multi(3,{f},{twin},{r}),")),
            "{text}"
        );
        assert_ne!(
            legacy.tx1_script_pubkey().unwrap(),
            c.tx1_script_pubkey().unwrap()
        );
    }

    #[test]
    fn stored_contracts_without_a_key_order_keep_their_old_script() {
        let p = parties(9);
        let mut stored = serde_json::to_value(p.contract).unwrap();
        assert_eq!(stored["tx1_key_order"], "renter_first");
        let back: DownloadContract = serde_json::from_value(stored.clone()).unwrap();
        assert_eq!(back, p.contract);
        stored.as_object_mut().unwrap().remove("tx1_key_order");
        let old: DownloadContract = serde_json::from_value(stored).unwrap();
        assert_eq!(old.tx1_key_order, Tx1KeyOrder::FarmerFirst);
        let (f, twin, r) = (
            bkey(&old.farmer_key),
            bkey(&old.twin_key().unwrap()),
            bkey(&old.renter_key),
        );
        let funded = format!("sh(or_d(multi(3,{f},{twin},{r}),and_v(v:pk({r}),after(500))))");
        assert_eq!(
            old.tx1_script_pubkey().unwrap(),
            KeyDescriptor::from_str(&funded).unwrap().script_pubkey(),
            "the script an old TX1 was funded to"
        );
    }

    /// The scriptSig pushes of a finalized TX2: the dummy, three signatures, the redeem script.
    fn tx2_pushes(contract: &DownloadContract, p: &Parties) -> Vec<Vec<u8>> {
        let tx2 = contract
            .unsigned_tx2(tx1_outpoint(), Amount::from_sat(1_000))
            .unwrap();
        let message = Message::from_digest(contract.tx2_sighash(&tx2).unwrap());
        let twin = twin_secret(&p.f, &contract.contract_id).unwrap();
        let sig_r = contract.renter_sign_tx2(&tx2, &p.r).unwrap();
        let signed = contract
            .finalize_tx2(
                &tx2,
                SECP256K1.sign_ecdsa(&message, &p.f),
                SECP256K1.sign_ecdsa(&message, &twin),
                sig_r,
            )
            .unwrap();
        signed.input[0]
            .script_sig
            .instructions()
            .map(|i| i.unwrap().push_bytes().unwrap().as_bytes().to_vec())
            .collect()
    }

    #[test]
    fn tx2_signatures_follow_the_key_order() {
        let p = parties(10);
        let keys = [
            p.contract.renter_key,
            p.contract.farmer_key,
            p.contract.twin_key().unwrap(),
        ];
        for order in [Tx1KeyOrder::RenterFirst, Tx1KeyOrder::FarmerFirst] {
            let contract = DownloadContract {
                tx1_key_order: order,
                ..p.contract
            };
            let pushes = tx2_pushes(&contract, &p);
            assert_eq!(pushes.len(), 5, "OP_0, three signatures, redeem script");
            assert!(pushes[0].is_empty());
            let z = Message::from_digest(
                contract
                    .tx2_sighash(
                        &contract
                            .unsigned_tx2(tx1_outpoint(), Amount::from_sat(1_000))
                            .unwrap(),
                    )
                    .unwrap(),
            );
            let [first, second, third] = order.arrange(keys[0], keys[1], keys[2]);
            for (push, key) in pushes[1..4].iter().zip([first, second, third]) {
                let sig = bitcoin::ecdsa::Signature::from_slice(push).unwrap();
                SECP256K1.verify_ecdsa(&z, &sig.signature, &key).unwrap();
            }
            assert_eq!(pushes[4], contract.tx1_redeem_script().unwrap().to_bytes());
        }
    }

    #[test]
    fn farmer_refuses_a_renter_signature_that_is_not_fixed_width() {
        let p = parties(11);
        let tx2 = p
            .contract
            .unsigned_tx2(tx1_outpoint(), Amount::from_sat(1_000))
            .unwrap();
        let message = Message::from_digest(p.contract.tx2_sighash(&tx2).unwrap());
        let wide = (0u32..)
            .map(|n| {
                let mut extra = [0u8; 32];
                extra[..4].copy_from_slice(&n.to_be_bytes());
                SECP256K1.sign_ecdsa_with_noncedata(&message, &p.r, &extra)
            })
            .find(|sig| sig.serialize_der().len() != 70)
            .unwrap();
        assert_eq!(
            p.contract
                .verify_renter_tx2_signature(&tx2, &fixed_sighash_all(wide)),
            Err(ContractError::NotFixedWidth)
        );
        let fixed = p.contract.renter_sign_tx2(&tx2, &p.r).unwrap();
        assert_eq!(p.contract.verify_renter_tx2_signature(&tx2, &fixed), Ok(()));
    }

    #[test]
    fn twin_key_matches_twin_secret() {
        let p = parties(3);
        let twin = twin_secret(&p.f, &p.contract.contract_id).unwrap();
        assert_eq!(twin.public_key(SECP256K1), p.contract.twin_key().unwrap());
    }

    #[test]
    fn tx2_shape_and_fee() {
        let p = parties(4);
        let tx2 = p
            .contract
            .unsigned_tx2(tx1_outpoint(), Amount::from_sat(1_000))
            .unwrap();
        assert_eq!(tx2.output[0].value, Amount::from_sat(99_000));
        assert_eq!(tx2.input[0].sequence, Sequence::MAX);
        assert!(p
            .contract
            .unsigned_tx2(tx1_outpoint(), Amount::from_sat(99_900))
            .is_err());
        let sig = p.contract.renter_sign_tx2(&tx2, &p.r).unwrap();
        p.contract.verify_renter_tx2_signature(&tx2, &sig).unwrap();
        assert_eq!(
            p.contract.renter_sign_tx2(&tx2, &p.f),
            Err(ContractError::WrongKey)
        );
    }

    #[test]
    fn tx1_refund_uses_timelock_branch_and_pays_renter() {
        let p = parties(5);
        let dest = RefundDestination::p2wpkh_of(&p.r);
        let tx = p
            .contract
            .tx1_refund(tx1_outpoint(), &p.r, &dest, Amount::from_sat(500))
            .unwrap();
        assert_eq!(tx.lock_time, LockTime::from_height(500).unwrap());
        assert_eq!(tx.input[0].sequence, Sequence::ENABLE_LOCKTIME_NO_RBF);
        assert_eq!(&tx.output[0].script_pubkey, dest.script_pubkey());
        // scriptSig: sig_R, four empty pushes dissatisfying multi(3), redeem script.
        let pushes: Vec<_> = tx.input[0]
            .script_sig
            .instructions()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(pushes.len(), 6);
        assert!(p
            .contract
            .tx1_refund(tx1_outpoint(), &p.f, &dest, Amount::from_sat(500))
            .is_err());
    }

    #[test]
    fn tx2_refund_uses_relative_timelock() {
        let p = parties(6);
        let dest = RefundDestination::p2wpkh_of(&p.r2);
        let outpoint = OutPoint {
            txid: Txid::from_byte_array([1; 32]),
            vout: 0,
        };
        let tx = p
            .contract
            .tx2_refund(
                outpoint,
                Amount::from_sat(99_000),
                &p.r2,
                &dest,
                Amount::from_sat(500),
            )
            .unwrap();
        assert_eq!(tx.input[0].sequence, Sequence::from_height(144));
        assert_eq!(tx.version, Version::TWO);
        assert!(!tx.input[0].witness.is_empty());
    }

    #[test]
    fn tx3_signs_and_finalizes() {
        let p = parties(7);
        let value = Amount::from_sat(99_000);
        let payout = RefundDestination::p2wpkh_of(&p.f2).script_pubkey().clone();
        let tx3 = p
            .contract
            .unsigned_tx3(
                txid_from_digest(&[5; 32]),
                value,
                Amount::from_sat(700),
                payout,
            )
            .unwrap();
        let sig_r = p.contract.sign_tx3(&tx3, value, &p.r2).unwrap();
        let sig_f = p.contract.sign_tx3(&tx3, value, &p.f2).unwrap();
        p.contract
            .verify_tx3_signature(&tx3, value, &p.contract.renter_tx2_key, &sig_r)
            .unwrap();
        let signed = p.contract.finalize_tx3(&tx3, sig_r, sig_f).unwrap();
        // Witness: empty dummy, sig R2, sig F2, witness script.
        assert_eq!(signed.input[0].witness.len(), 4);
        assert_eq!(signed.compute_txid(), tx3.compute_txid());
        assert!(p.contract.sign_tx3(&tx3, value, &p.r).is_err());
    }
}
