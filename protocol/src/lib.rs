//! dstore's protocol library: everything deterministic about a storage contract, with no I/O.
//!
//! The plugin and the watchtower are thin shells around this crate. Nothing here touches
//! files, sockets, clocks or async runtimes; callers pass in bytes, readers and writers,
//! keys and randomness. ../shared/PROTOCOL.md is the normative design.
//!
//! Modules, in data-flow order:
//! * [`datapath`]: AES-256-GCM STREAM encryption of the renter's file (PROTOCOL.md 1.1).
//! * [`erasure`]: Reed-Solomon shards of a file's ciphertext across several farmers (issue 18).
//! * [`merkle`]: segment Merkle tree, streaming builder, inclusion proofs (1.2).
//! * [`upload`]: the farmer's resumable, size-limited, root-checked upload receiver (1.3).
//! * [`receipt`]: the farmer's signed storage receipt (1.3).
//! * [`keys`]: BIP32 per-contract keys, commit-then-reveal, joint key (2).
//! * [`seal`]: sealing under the joint key, unsealing, fraud proofs (3.1).
//! * [`ln`]: mode N: sealing under a Lightning preimage, invoice check, fraud proofs (4b).
//! * [`contract`]: TX1/TX2/TX3 and refund descriptors and transactions (3.2).
//! * [`nonce_reuse`]: the farmer's reused-nonce TX2 signatures and template (3.3).
//! * [`extract`]: recovering f from a TX1 spend (3.6).
//! * [`peer`]: signed, versioned, sequenced peer messages (7).
//! * [`messages`]: the renter/farmer message catalogue and term checks (1, 3.3, 7).
//! * [`watch`]: the watchtower's decision core: what a block or transaction touches, due broadcasts (6).
//! * [`audit`]: the audit contract: candidates, coin toss, TX_A/A_ij/RF, swap, beacon, Merkle audits (5).
//! * [`zk`]: the Groth16 reused-nonce proof and the farmer's CRS check (3.4, 3.5).
//! * [`cpu`]: run-time choice of the data path's SHA-256 and AES-GCM implementations (issue 20).
//! * [`hashing`], [`network`]: shared helpers.

pub mod audit;
pub mod contract;
pub mod cpu;
pub mod datapath;
pub mod erasure;
pub mod extract;
pub mod hashing;
pub mod keys;
pub mod ln;
pub mod market;
pub mod merkle;
pub mod messages;
pub mod network;
pub mod nonce_reuse;
pub mod peer;
pub mod receipt;
pub mod seal;
pub mod upload;
pub mod watch;
pub mod zk;
