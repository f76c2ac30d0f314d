//! dstore's regtest functional tests in one test binary: one link instead of one per
//! file keeps the build small and fast. Each module is one group of scenarios; the test
//! name prefixes (`e2e_`, `harden_`, `shard_`, …) select a group: `cargo test -p dstore-tests harden_`.

mod audit;
mod audit_chain;
mod audit_tower;
mod cln;
mod cln_market;
mod e2e;
mod foundation;
mod harden_audit;
mod harden_audit_refund_bump;
mod harden_claim_bump;
mod harden_crs;
mod harden_download;
mod harden_margin;
mod harden_peer;
mod harden_refund;
mod harden_refund_bump;
mod harden_resume;
mod harden_stake;
mod harden_tx2;
mod ln_cln;
mod ln_download;
mod ln_node;
mod market;
mod market_board;
mod market_lease;
mod market_scan;
mod protocol;
mod shard;
mod shard_audit;
mod shard_market;
mod shard_probe;
mod shard_resume;
mod shard_tx1;
mod stream_resume;
mod tower;
mod tower_plugin;
mod tower_scale;
mod tower_scale_audit;
mod tower_scale_compact;
mod transfer_stream;
mod zk;
