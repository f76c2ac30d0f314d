//! A dstore-watchtower process attached to a test's regtest node (ZMQ and RPC), which a
//! test can kill -9 and restart on the same datadir.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::node::{rpc_call, BitcoinNode};
use crate::{bins, ports, tail, wait_until, RpcError};

pub fn dstore_watchtower() -> PathBuf {
    bins::dstore_binary("dstore-watchtower", "dstore-watchtower")
}

/// A running dstore-watchtower; killed on drop if still running. The datadir outlives
/// kills and restarts.
pub struct TowerProcess {
    child: Option<Child>,
    datadir: TempDir,
    pub rpc_port: u16,
    /// Flags after the standard ones (e.g. other ZMQ endpoints).
    extra: Vec<String>,
    zmq: [String; 3],
    bitcoind: (String, PathBuf),
    http: reqwest::blocking::Client,
}

impl TowerProcess {
    /// Starts a tower subscribed to `node`'s ZMQ endpoints.
    pub fn start(node: &BitcoinNode) -> Self {
        Self::start_with(node, &[])
    }

    /// Starts a tower with extra flags (later flags override earlier ones).
    pub fn start_with(node: &BitcoinNode, extra: &[&str]) -> Self {
        let datadir = tempfile::Builder::new()
            .prefix("dstore-tower-")
            .tempdir()
            .expect("temp datadir");
        let mut tower = TowerProcess {
            child: None,
            datadir,
            rpc_port: ports::free_ports(1)[0],
            extra: extra.iter().map(|s| s.to_string()).collect(),
            zmq: [
                node.zmq_rawtx.clone(),
                node.zmq_rawblock.clone(),
                node.zmq_sequence.clone(),
            ],
            bitcoind: (node.rpc_url(), node.cookie_path()),
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("http client"),
        };
        tower.restart();
        tower
    }

    /// The command line the tower runs with.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(dstore_watchtower());
        cmd.arg(format!("--datadir={}", self.datadir.path().display()))
            .arg("--network=regtest")
            .arg(format!("--bitcoind-rpc-url={}", self.bitcoind.0))
            .arg(format!("--bitcoind-cookie={}", self.bitcoind.1.display()))
            .arg(format!("--zmq-rawtx={}", self.zmq[0]))
            .arg(format!("--zmq-rawblock={}", self.zmq[1]))
            .arg(format!("--zmq-sequence={}", self.zmq[2]))
            .arg(format!("--rpc-port={}", self.rpc_port))
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd
    }

    /// Replaces the extra flags the next [`restart`](Self::restart) runs with.
    pub fn set_extra(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
    }

    /// (Re)starts the process on the same datadir and waits for its RPC.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the tower is already running");
        let _ = std::fs::remove_file(self.cookie_path());
        let child = self
            .command()
            .stderr(log_file(self.datadir.path()))
            .spawn()
            .expect("spawn dstore-watchtower");
        self.child = Some(child);
        let (cookie, log) = (self.cookie_path(), self.log_path());
        let child = self.child.as_mut().expect("just spawned");
        wait_until(
            "dstore-watchtower start-up",
            Duration::from_secs(60),
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "dstore-watchtower exited during start-up: {status}\n{}",
                        tail(&log, 40)
                    );
                }
                cookie.is_file().then_some(())
            },
        );
    }

    /// SIGKILL, then wait for the exit.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `stop` over RPC, then wait for the exit.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let _ = self.call("stop", json!([]));
        let mut child = self.child.take()?;
        Some(wait_until(
            "dstore-watchtower exit",
            Duration::from_secs(30),
            || child.try_wait().ok().flatten(),
        ))
    }

    /// True while the process is alive.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn datadir(&self) -> &Path {
        self.datadir.path()
    }

    pub fn cookie_path(&self) -> PathBuf {
        self.datadir.path().join("regtest").join(".cookie")
    }

    pub fn log_path(&self) -> PathBuf {
        self.datadir.path().join("watchtower.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn rpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.rpc_port)
    }

    pub fn credentials(&self) -> String {
        std::fs::read_to_string(self.cookie_path()).expect("tower cookie")
    }

    pub fn call(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let credentials = std::fs::read_to_string(self.cookie_path()).map_err(|e| RpcError {
            code: -1,
            message: format!("cookie: {e}"),
        })?;
        rpc_call(&self.http, &self.rpc_url(), &credentials, method, params)
    }

    pub fn call_ok(&self, method: &str, params: Value) -> Value {
        self.call(method, params.clone())
            .unwrap_or_else(|e| panic!("{method} {params}: {e}\n{}", tail(&self.log_path(), 30)))
    }

    /// `tower-status` of watch `id` (64 hex).
    pub fn status(&self, id: &str) -> Value {
        self.call_ok("tower-status", json!([id]))
    }

    /// The `audits` section of `tower-status` of watch `id`.
    pub fn audits(&self, id: &str) -> Value {
        self.status(id)["audits"].clone()
    }

    /// The `tower-status` entry of transaction `name` of watch `id`.
    pub fn tx(&self, id: &str, name: &str) -> Value {
        let status = self.status(id);
        status["transactions"]
            .as_array()
            .and_then(|txs| txs.iter().find(|t| t["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no transaction {name} in {status}"))
    }

    /// Waits until the tower's processed tip reaches `height`.
    pub fn wait_for_tip(&self, height: u64) {
        wait_until(
            &format!("tower tip {height}"),
            Duration::from_secs(60),
            || {
                let info = self.call("tower-getinfo", json!([])).ok()?;
                (info["tip_height"].as_u64()? >= height).then_some(())
            },
        );
    }

    /// Waits until each salt release this tower sent for contract `id` has an answer
    /// recorded: the claim's txid (the farmer broadcasts its claim before it answers) or
    /// the farmer's error. A tower records a release before sending it, while it processes
    /// the block, so once its tip is the node's no release of that block is missed; towers
    /// that are not the auditor, or do not watch `id`, send none.
    pub fn wait_for_release_answers(&self, id: &str) {
        wait_until(
            "the farmer's answers to the salt releases",
            Duration::from_secs(60),
            || {
                let Ok(status) = self.call("tower-status", json!([id])) else {
                    return Some(());
                };
                let audits = status["audits"]["audits"].as_array().cloned();
                let answered = |audit: &Value| {
                    let release = &audit["release"];
                    release.is_null()
                        || !release["released_height"].is_null()
                        || !release["last_error"].is_null()
                };
                audits
                    .unwrap_or_default()
                    .iter()
                    .all(answered)
                    .then_some(())
            },
        );
    }
}

impl Drop for TowerProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- dstore-watchtower log (tail) -----\n{}\n-----",
                tail(&self.log_path(), 60)
            );
        }
        self.kill9();
    }
}

fn log_file(datadir: &Path) -> File {
    File::options()
        .create(true)
        .append(true)
        .open(datadir.join("watchtower.log"))
        .expect("tower log file")
}
