//! Harness for dstore's functional tests: real regtest bitcoind nodes, real dstore-plugin
//! processes and real bitcoin-cli, all on loopback ports picked at run time.
//!
//! Every test starts its own node in a temporary datadir and the node is stopped when the
//! test ends. When a test fails (the thread is panicking), each node prints the tail of its
//! debug.log and each plugin its log, so the failure can be read without re-running.

pub mod audit_fixture;
pub mod bins;
pub mod cln_harness;
pub mod cln_lightning;
pub mod crs_cache;
pub mod funding;
pub mod harden_audit;
pub mod harden_audit_refund;
pub mod harden_crs;
pub mod harden_download;
pub mod harden_peer;
pub mod harden_refund;
pub mod harden_tx2;
pub mod ln;
pub mod market;
pub mod market_fixture;
pub mod node;
pub mod parties;
pub mod plugin;
pub mod ports;
pub mod shard_fixture;
pub mod tower;

pub use node::BitcoinNode;
pub use plugin::PluginProcess;
pub use tower::TowerProcess;

/// A JSON-RPC error as a caller receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RPC error {}: {}", self.code, self.message)
    }
}

impl std::error::Error for RpcError {}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `timeout`.
pub fn wait_until<T>(
    what: &str,
    timeout: std::time::Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Last `lines` lines of a text file (for failure reports).
pub fn tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
