//! dstore-watchtower: enforces dstore contracts while the plugins are offline
//! (PROTOCOL.md 6). The decisions live in `dstore_protocol::watch`; this crate is the I/O
//! shell: ZMQ and RPC chain following, RocksDB persistence, broadcasts, its own RPC.

pub mod auditor;
pub mod config;
pub mod metrics;
pub mod report;
pub mod rpc;
pub mod secrets;
pub mod service;
pub mod store;
pub mod tower;
pub mod wallet;
pub mod zmq_feed;
