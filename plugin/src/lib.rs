//! dstore-plugin: the renter/farmer daemon attached to bitcoind.
//!
//! It serves JSON-RPC in bitcoind's own dialect, answers the `dstore-*` methods itself and
//! forwards every other method to bitcoind. Protocol logic lives in `dstore-protocol`;
//! this crate is the I/O shell around it.

pub mod app;
pub mod bitcoind;
pub mod cln;
pub mod config;
pub mod contracts;
pub mod cookie;
pub mod daemon;
pub mod db;
pub mod farmer;
pub mod jsonrpc;
pub mod locks;
pub mod logging;
pub mod methods;
pub mod progress;
pub mod renter;
pub mod server;
pub mod storage;
pub mod tower_client;
pub mod wallet;
pub mod wire;
