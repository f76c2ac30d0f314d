//! A dstore-plugin process attached to a test's regtest node.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::node::{rpc_call, BitcoinNode};
use crate::{bins, ports, tail, wait_until, RpcError};

/// A running dstore-plugin; killed on drop if still running.
pub struct PluginProcess {
    child: Child,
    datadir: PathBuf,
    /// Owns the datadir when the harness made it.
    _tempdir: Option<TempDir>,
    pub rpc_port: u16,
    http: reqwest::blocking::Client,
}

impl PluginProcess {
    /// The plugin's process id (for reading its CPU time in /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts a plugin with a fresh datadir.
    pub fn start(node: &BitcoinNode) -> Self {
        let tempdir = tempfile::Builder::new()
            .prefix("dstore-plugin-")
            .tempdir()
            .expect("temp datadir");
        let datadir = tempdir.path().to_path_buf();
        let mut plugin = Self::start_in(node, &datadir, &[]);
        plugin._tempdir = Some(tempdir);
        plugin
    }

    /// Starts a plugin in `datadir` (kept by the caller) with extra flags.
    pub fn start_in(node: &BitcoinNode, datadir: &Path, extra: &[&str]) -> Self {
        Self::start_in_with_env(node, datadir, extra, &[])
    }

    /// Like [`start_in`](Self::start_in), with extra environment variables set for the
    /// child process only (the test process's environment is left alone).
    pub fn start_in_with_env(
        node: &BitcoinNode,
        datadir: &Path,
        extra: &[&str],
        env: &[(String, String)],
    ) -> Self {
        let rpc_port = ports::free_ports(1)[0];
        let cookie = datadir.join("regtest").join(".cookie");
        let _ = std::fs::remove_file(&cookie);
        let child = Self::command(node, datadir, rpc_port, extra)
            .envs(env.iter().map(|(key, value)| (key, value)))
            .stdout(Stdio::null())
            .stderr(log_file(datadir))
            .spawn()
            .expect("spawn dstore-plugin");
        let mut plugin = PluginProcess {
            child,
            datadir: datadir.to_path_buf(),
            _tempdir: None,
            rpc_port,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(300))
                .build()
                .expect("http client"),
        };
        plugin.wait_ready();
        plugin
    }

    /// The command line a plugin for `node` runs with (also used to test start-up failures).
    pub fn command(node: &BitcoinNode, datadir: &Path, rpc_port: u16, extra: &[&str]) -> Command {
        let mut cmd = Command::new(bins::dstore_plugin());
        cmd.arg(format!("--datadir={}", datadir.display()))
            .arg("--network=regtest")
            .arg(format!("--bitcoind-rpc-url={}", node.rpc_url()))
            .arg(format!(
                "--bitcoind-cookie={}",
                node.cookie_path().display()
            ))
            .arg(format!("--rpc-port={rpc_port}"))
            .args(extra)
            .stdin(Stdio::null());
        cmd
    }

    fn wait_ready(&mut self) {
        let cookie = self.cookie_path();
        let (child, log) = (&mut self.child, self.datadir.join("plugin.log"));
        wait_until("dstore-plugin start-up", Duration::from_secs(120), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "dstore-plugin exited during start-up: {status}\n{}",
                    tail(&log, 40)
                );
            }
            cookie.is_file().then_some(())
        });
    }

    pub fn datadir(&self) -> &Path {
        &self.datadir
    }

    pub fn cookie_path(&self) -> PathBuf {
        self.datadir.join("regtest").join(".cookie")
    }

    pub fn rpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.rpc_port)
    }

    pub fn credentials(&self) -> String {
        std::fs::read_to_string(self.cookie_path()).expect("plugin cookie")
    }

    /// Calls a method on the plugin (JSON-RPC 1.0, as bitcoin-cli does).
    pub fn call(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        rpc_call(
            &self.http,
            &self.rpc_url(),
            &self.credentials(),
            method,
            params,
        )
    }

    /// Like [`call`](Self::call) but panics on error.
    pub fn call_ok(&self, method: &str, params: Value) -> Value {
        self.call(method, params.clone())
            .unwrap_or_else(|e| panic!("{method} {params}: {e}"))
    }

    /// Runs bitcoin-cli against the plugin's port with its cookie.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bins::bitcoin_cli())
            .arg("-regtest")
            .arg(format!("-rpcport={}", self.rpc_port))
            .arg(format!("-rpccookiefile={}", self.cookie_path().display()))
            .args(args)
            .output()
            .expect("run bitcoin-cli")
    }

    /// Asks the plugin to stop with `dstore-stop` and waits for it to exit.
    pub fn stop(mut self) -> ExitStatus {
        let _ = self.call("dstore-stop", json!([]));
        self.wait_exit(Duration::from_secs(30))
    }

    /// Sends SIGKILL and waits.
    pub fn kill(mut self) -> ExitStatus {
        let _ = self.child.kill();
        self.child.wait().expect("wait for plugin")
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = &mut self.child;
        wait_until("dstore-plugin exit", timeout, || {
            child.try_wait().ok().flatten()
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.datadir.join("plugin.log")).unwrap_or_default()
    }
}

impl Drop for PluginProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- dstore-plugin log (tail) -----\n{}\n-----",
                tail(&self.datadir.join("plugin.log"), 60)
            );
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn log_file(datadir: &Path) -> File {
    std::fs::create_dir_all(datadir).expect("plugin datadir");
    File::options()
        .create(true)
        .append(true)
        .open(datadir.join("plugin.log"))
        .expect("plugin log file")
}
