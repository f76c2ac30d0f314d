//! Off-chain DStore Merkle audits (PROTOCOL.md 5): challenges from a block hash, the farmer's answer, its verification.
