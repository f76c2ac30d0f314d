//! The farmer market on the chain (issue 17): fidelity-bond announcements, lease records,
//! signed adverts, fraud evidence and the score a renter ranks farmers by. Pure formats and
//! arithmetic; the plugin's scanner feeds it blocks.

pub mod advert;
pub mod announce;
pub mod bond;
pub mod evidence;
pub mod lease;
pub mod outcome;
pub mod score;

/// Why a market format, key or transaction was refused. Owner A's variants first, owner B's
/// (lease records, outcomes) after them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarketError {
    /// The tweak t = tagged_hash("dstore/bond", I) gave no valid key (negligible odds).
    #[error("bond key derivation failed: {0}")]
    BondKey(String),
    /// The bond locktime is not a usable `after(L)` value (0 or >= 2^31).
    #[error("bond locktime {0} is not a valid absolute locktime (1..2^31)")]
    BadLocktime(u32),
    #[error("miniscript rejected the bond descriptor: {0}")]
    Miniscript(String),
    /// The unbond fee is not below the bond's value, or what is left is dust.
    #[error("fee {fee_sat} sat leaves no spendable output from a {value_sat} sat bond")]
    FeeTooHigh { value_sat: u64, fee_sat: u64 },
    #[error("computing the sighash failed")]
    Sighash,
    /// The bytes are not a market payload of the expected layout.
    #[error("unparseable market payload: {0}")]
    Unparseable(String),
    /// A peer URL that the announcement/advert rules do not allow.
    #[error("peer url not allowed: {0}")]
    BadUrl(String),
    /// An announcement's bond_vout names no output of its transaction.
    #[error("bond output index {vout} is out of range (transaction has {outputs} outputs)")]
    BondVoutOutOfRange { vout: u8, outputs: usize },
    /// The named bond output does not pay to the bond script of (identity, locktime).
    #[error("the bond output is not the bond script of the announced identity and locktime")]
    KeyMismatch,
    /// A signature (advert, lease record) does not verify under the named identity.
    #[error("signature does not verify under the farmer's identity")]
    BadSignature,
    /// An advert or a piece of evidence larger than its cap.
    #[error("{what} is {size} bytes, more than the {max} allowed")]
    TooLarge {
        what: &'static str,
        size: usize,
        max: usize,
    },
    /// A well-formed fraud proof that does not prove fraud.
    #[error("not a valid fraud proof: {0}")]
    NotFraud(String),
    // Owner B (lease records).
    /// The funding transaction has no lease record right after its leased outputs.
    #[error("no lease record at output {0} (right after the leased outputs)")]
    MissingLease(usize),
    /// The lease record's contract tag is not the tag of this contract.
    #[error("the lease record is for another contract")]
    LeaseForAnotherContract,
    /// The lease record's identity prefix is not the named farmer's.
    #[error("the lease record names another farmer's identity")]
    LeaseIdentityMismatch,
}
