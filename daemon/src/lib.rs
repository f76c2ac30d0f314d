//! dstore-daemon: what a dstore daemon needs to sit next to bitcoind, shared by
//! dstore-plugin and dstore-watchtower.
//!
//! It speaks bitcoind's JSON-RPC dialect, calls bitcoind, authenticates clients with a
//! cookie file, layers a `key=value` conf file under the flags, and starts logging. It
//! is plumbing only: it knows nothing of renters, farmers, towers or proofs (that is
//! `dstore-protocol` and the daemons themselves), and it is not a drawer for whatever
//! two crates happen to share.

pub mod bitcoind;
pub mod config;
pub mod cookie;
pub mod jsonrpc;
pub mod logging;
pub mod server;
