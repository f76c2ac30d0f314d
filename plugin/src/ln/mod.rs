//! The plugin's Lightning node: an embedded LDK node (`--lightning`) or lightningd itself (Core Lightning mode), behind one API.
//!
//! Mode N (PROTOCOL.md 4b) needs four things of a node: who it is ([`Lightning::info`]), an
//! invoice settled only by revealing a preimage the farmer drew ([`Lightning::invoice`]),
//! paying an invoice at most once ([`Lightning::pay`]) and what became of that payment
//! ([`Lightning::payment`], [`Lightning::wait_payment`]).

pub mod cln;
pub mod ldk;
pub mod methods;

use std::sync::Arc;
use std::time::Duration;

use bitcoin::hashes::{sha256, Hash};
use bitcoin::secp256k1::PublicKey;
use serde::{Deserialize, Serialize};

/// The message every Lightning method gives when this plugin has no Lightning node.
pub const NOT_ENABLED: &str = "Lightning is not enabled (start with --lightning)";

/// What can go wrong talking to the Lightning node.
#[derive(Debug, thiserror::Error)]
pub enum LnError {
    #[error("{NOT_ENABLED}")]
    NotEnabled,
    /// The node refused or failed (LDK's or lightningd's own error, no secrets in it).
    #[error("Lightning node: {0}")]
    Node(String),
    #[error("invalid invoice: {0}")]
    InvalidInvoice(String),
    /// Bad input from the caller (unknown node id, bad amount, unknown channel …).
    #[error("{0}")]
    InvalidParameter(String),
    #[error("this payment hash was already paid")]
    Duplicate,
    #[error("timed out waiting for the Lightning node")]
    Timeout,
    #[error("not enough funds: {0}")]
    InsufficientFunds(String),
    /// Our own files under the ln directory (the preimage store).
    #[error("Lightning store: {0}")]
    Store(String),
    /// The operation exists only for the embedded node (use lightningd's own commands).
    #[error("{0} is only available with the embedded node (--lightning); in Core Lightning mode use lightningd's own commands")]
    EmbeddedOnly(&'static str),
}

/// Who the node is and where peers reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LnInfo {
    pub node_id: PublicKey,
    /// "host:port" each.
    pub addresses: Vec<String>,
}

/// The farmer's Lightning node as `GET /dstore/v1/info` advertises it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LnPeerInfo {
    pub node_id: PublicKey,
    /// "host:port".
    pub address: String,
}

/// What the node knows of our (outbound) payment with some payment hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentOutcome {
    /// Never sent from this node.
    Unknown,
    Pending,
    Succeeded {
        preimage: [u8; 32],
        fee_msat: Option<u64>,
    },
    Failed {
        reason: String,
    },
}

impl PaymentOutcome {
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            PaymentOutcome::Succeeded { .. } | PaymentOutcome::Failed { .. }
        )
    }
}

/// The plugin's Lightning node, whichever kind.
#[derive(Clone)]
pub enum Lightning {
    Ldk(Arc<ldk::LdkNode>),
    Cln(Arc<cln::ClnNode>),
}

/// SHA256(preimage): the payment hash an invoice for `preimage` carries.
pub fn payment_hash_of(preimage: &[u8; 32]) -> [u8; 32] {
    sha256::Hash::hash(preimage).to_byte_array()
}

impl Lightning {
    pub async fn info(&self) -> Result<LnInfo, LnError> {
        match self {
            Lightning::Ldk(node) => Ok(node.info()),
            Lightning::Cln(node) => node.info().await,
        }
    }

    /// What the farmer's `/dstore/v1/info` advertises (no I/O: LDK knows it, the CLN node
    /// remembers lightningd's getinfo from its start). None when there is no address to give.
    pub fn advertised(&self) -> Option<LnPeerInfo> {
        match self {
            Lightning::Ldk(node) => node.advertised(),
            Lightning::Cln(node) => node.advertised(),
        }
    }

    /// Farmer: an invoice for `amount_msat` whose payment hash is SHA256(preimage), settled
    /// (only) by revealing preimage. LDK: the preimage is persisted (0600, under the ln dir)
    /// BEFORE the invoice exists, and claimed when the payment arrives. CLN: `invoice` with
    /// `preimage`.
    pub async fn invoice(
        &self,
        preimage: [u8; 32],
        amount_msat: u64,
        description: &str,
        expiry_secs: u32,
    ) -> Result<String, LnError> {
        if amount_msat == 0 {
            return Err(LnError::InvalidParameter(
                "an invoice needs an amount above 0 msat".into(),
            ));
        }
        match self {
            Lightning::Ldk(node) => {
                node.clone()
                    .invoice(preimage, amount_msat, description, expiry_secs)
                    .await
            }
            Lightning::Cln(node) => {
                node.invoice(preimage, amount_msat, description, expiry_secs)
                    .await
            }
        }
    }

    /// Renter: starts paying; never sends twice for one payment hash (a second call for a
    /// hash already sent is Ok(()) and sends nothing).
    pub async fn pay(&self, bolt11: &str) -> Result<(), LnError> {
        match self {
            Lightning::Ldk(node) => node.clone().pay(bolt11).await,
            Lightning::Cln(node) => node.pay(bolt11).await,
        }
    }

    /// What the node knows of our payment with this hash.
    pub async fn payment(&self, payment_hash: [u8; 32]) -> Result<PaymentOutcome, LnError> {
        match self {
            Lightning::Ldk(node) => Ok(node.payment(payment_hash)),
            Lightning::Cln(node) => node.payment(payment_hash).await,
        }
    }

    /// Waits until the payment Succeeded/Failed or `timeout` passed (then Pending, or
    /// Unknown if it was never sent).
    pub async fn wait_payment(
        &self,
        payment_hash: [u8; 32],
        timeout: Duration,
    ) -> Result<PaymentOutcome, LnError> {
        match self {
            Lightning::Ldk(node) => Ok(node.wait_payment(payment_hash, timeout).await),
            Lightning::Cln(node) => node.wait_payment(payment_hash, timeout).await,
        }
    }

    /// Whether a payment of `amount_msat` to `payee` looks routable now (LDK: a usable
    /// channel with outbound capacity >= amount + 1 %; CLN: listpeerchannels spendable_msat).
    pub async fn can_pay(&self, payee: &PublicKey, amount_msat: u64) -> Result<bool, LnError> {
        match self {
            Lightning::Ldk(node) => Ok(node.can_pay(payee, amount_msat)),
            Lightning::Cln(node) => node.can_pay(payee, amount_msat).await,
        }
    }

    /// The embedded node, for the channel-management methods it alone has.
    pub fn ldk(&self, what: &'static str) -> Result<&Arc<ldk::LdkNode>, LnError> {
        match self {
            Lightning::Ldk(node) => Ok(node),
            Lightning::Cln(_) => Err(LnError::EmbeddedOnly(what)),
        }
    }

    /// Stops the node (LDK: persists and disconnects; CLN: nothing, lightningd runs on).
    pub async fn stop(&self) {
        if let Lightning::Ldk(node) = self {
            node.clone().stop().await;
        }
    }
}

/// `amount + 1 %` (rounded up): the outbound room a payment of `amount_msat` should find.
pub fn with_fee_margin(amount_msat: u64) -> u64 {
    amount_msat.saturating_add(amount_msat.div_ceil(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fee_margin_rounds_up() {
        assert_eq!(with_fee_margin(100_000), 101_000);
        assert_eq!(with_fee_margin(1), 2);
        assert_eq!(with_fee_margin(u64::MAX), u64::MAX);
    }

    #[test]
    fn payment_hash_is_sha256_of_the_preimage() {
        let x = [7u8; 32];
        assert_eq!(
            payment_hash_of(&x).to_vec(),
            sha256::Hash::hash(&x).to_byte_array().to_vec()
        );
    }
}
