//! The audit contract (PROTOCOL.md 5): salted hidden candidates, the coin toss that opens half of them, TX_A and its candidate and refund transactions, the signature swap, the beacon, and off-chain Merkle audits.

pub mod beacon;
pub mod book;
pub mod candidates;
pub mod coin_toss;
pub mod merkle_audit;
pub mod messages;
pub mod opening;
pub mod planted;
pub mod policy;
pub mod stake;
pub mod swap;
#[cfg(test)]
mod tests;
pub mod transactions;
pub mod wire;
