//! Where the binaries under test are: Bitcoin Core's (built by scripts/install-bitcoind.sh)
//! and dstore's own (built once per test process with cargo, so they are never stale, unless
//! `DSTORE_BINARIES_BUILT` says scripts/test.sh has just built them).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// `$DSTORE_BITCOIN_DIR/bin`, by default `$HOME/.cache/dstore/bitcoin-core-29.99/bin`.
pub fn bitcoin_bin_dir() -> PathBuf {
    let prefix = std::env::var_os("DSTORE_BITCOIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            PathBuf::from(home).join(".cache/dstore/bitcoin-core-29.99")
        });
    prefix.join("bin")
}

fn bitcoin_binary(name: &str) -> PathBuf {
    let path = bitcoin_bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} not found: run scripts/install-bitcoind.sh first (or set DSTORE_BITCOIN_DIR)",
        path.display()
    );
    path
}

pub fn bitcoind() -> PathBuf {
    bitcoin_binary("bitcoind")
}

pub fn bitcoin_cli() -> PathBuf {
    bitcoin_binary("bitcoin-cli")
}

/// The target profile directory this test binary was built into (`target/debug`, …).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path to a dstore binary, built (or found up to date) by cargo on first use.
pub fn dstore_binary(package: &str, bin: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let dir = profile_dir();
    BUILT.get_or_init(|| {
        // scripts/test.sh builds everything once before the tests start.
        if std::env::var_os("DSTORE_BINARIES_BUILT").is_some() {
            return;
        }
        let cargo = option_env!("CARGO").unwrap_or("cargo");
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--workspace", "--bins"]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(
            status.success(),
            "cargo build of the dstore binaries failed"
        );
    });
    let path = dir.join(bin);
    assert!(
        path.is_file(),
        "{} ({package}) was not built",
        path.display()
    );
    path
}

pub fn dstore_plugin() -> PathBuf {
    dstore_binary("dstore-plugin", "dstore-plugin")
}
