//! dstore-plugin: the renter/farmer daemon attached to bitcoind.
//!
//! It serves JSON-RPC in bitcoind's own dialect, answers the `dstore-*` methods itself and
//! forwards every other method to bitcoind. Protocol logic lives in `dstore-protocol`;
//! this crate is the I/O shell around it.

pub mod app;
pub mod cln;
pub mod config;
pub mod contracts;
pub mod daemon;
pub mod db;
pub mod farmer;
pub mod files;
pub mod ln;
pub mod locks;
pub mod market;
pub mod methods;
pub mod pipe;
pub mod progress;
pub mod renter;
pub mod shards;
pub mod storage;
pub mod tower_client;
pub mod wallet;
pub mod wire;

// The daemon plumbing lives in `dstore-daemon`; re-exported so `crate::jsonrpc::…` and
// `dstore_plugin::cookie::…` keep working.
pub use dstore_daemon::{bitcoind, cookie, jsonrpc, logging, server};
