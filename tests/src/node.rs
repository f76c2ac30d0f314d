//! A regtest bitcoind for one test: its own datadir, loopback ports, ZMQ and txindex.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::str::FromStr;
use std::time::Duration;

use base64::Engine;
use bitcoin::{Address, Network, ScriptBuf};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::{bins, ports, tail, wait_until, RpcError};

/// A running regtest bitcoind, stopped on drop.
pub struct BitcoinNode {
    child: Child,
    datadir: TempDir,
    /// Flags after the standard ones (e.g. `-prune=1`), kept for [`resume`](Self::resume).
    extra_args: Vec<String>,
    pub rpc_port: u16,
    pub p2p_port: u16,
    pub zmq_rawtx: String,
    pub zmq_rawblock: String,
    pub zmq_sequence: String,
    http: reqwest::blocking::Client,
}

impl BitcoinNode {
    /// Starts a fresh node and waits until its RPC answers.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a fresh node with extra flags after the standard ones. A pruning node
    /// (`-prune=…`) runs without `-txindex`, which bitcoind refuses to combine with it.
    pub fn start_with(extra: &[&str]) -> Self {
        let extra_args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let ports = ports::free_ports(5);
        let datadir = tempfile::Builder::new()
            .prefix("dstore-bitcoind-")
            .tempdir()
            .expect("temp datadir");
        let zmq = |port: u16| format!("tcp://127.0.0.1:{port}");
        let (p2p_port, rpc_port) = (ports[0], ports[1]);
        let (zmq_rawtx, zmq_rawblock, zmq_sequence) = (zmq(ports[2]), zmq(ports[3]), zmq(ports[4]));
        let child = spawn_bitcoind(
            datadir.path(),
            p2p_port,
            rpc_port,
            [&zmq_rawtx, &zmq_rawblock, &zmq_sequence],
            &extra_args,
        );
        let mut node = BitcoinNode {
            child,
            datadir,
            extra_args,
            rpc_port,
            p2p_port,
            zmq_rawtx,
            zmq_rawblock,
            zmq_sequence,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("http client"),
        };
        node.wait_ready();
        node
    }

    /// Stops bitcoind (RPC `stop`) and waits for it to exit; [`resume`](Self::resume)
    /// starts it again on the same datadir and ports.
    pub fn pause(&mut self) {
        let _ = self.rpc("stop", json!([]));
        let child = &mut self.child;
        wait_until("bitcoind exit", Duration::from_secs(60), || {
            child.try_wait().ok().flatten()
        });
    }

    /// Starts bitcoind again after [`pause`](Self::pause).
    pub fn resume(&mut self) {
        self.child = spawn_bitcoind(
            self.datadir.path(),
            self.p2p_port,
            self.rpc_port,
            [&self.zmq_rawtx, &self.zmq_rawblock, &self.zmq_sequence],
            &self.extra_args,
        );
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let (cookie, url) = (self.cookie_path(), self.rpc_url());
        let (child, http) = (&mut self.child, &self.http);
        wait_until("bitcoind RPC", Duration::from_secs(60), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("bitcoind exited during start-up: {status}");
            }
            let credentials = std::fs::read_to_string(&cookie).ok()?;
            rpc_call(http, &url, &credentials, "getblockchaininfo", json!([])).ok()
        });
    }

    pub fn datadir(&self) -> &Path {
        self.datadir.path()
    }

    pub fn cookie_path(&self) -> PathBuf {
        self.datadir.path().join("regtest").join(".cookie")
    }

    pub fn rpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.rpc_port)
    }

    /// Calls a bitcoind RPC method.
    pub fn rpc(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let credentials = std::fs::read_to_string(self.cookie_path()).map_err(|e| RpcError {
            code: -1,
            message: format!("cookie: {e}"),
        })?;
        rpc_call(&self.http, &self.rpc_url(), &credentials, method, params)
    }

    /// Like [`rpc`](Self::rpc) but panics on error.
    pub fn rpc_ok(&self, method: &str, params: Value) -> Value {
        self.rpc(method, params.clone())
            .unwrap_or_else(|e| panic!("{method} {params}: {e}"))
    }

    /// An address nobody can spend from (P2WSH of OP_TRUE is spendable by anyone, but no
    /// test does): a place to mine blocks to without a wallet.
    pub fn burn_address() -> Address {
        let script = ScriptBuf::from_bytes(vec![0x51]);
        Address::p2wsh(&script, Network::Regtest)
    }

    /// Mines `n` blocks paying to `address`; returns their hashes.
    pub fn mine_to(&self, n: u32, address: &str) -> Vec<String> {
        let hashes = self.rpc_ok("generatetoaddress", json!([n, address]));
        serde_json::from_value(hashes).expect("block hashes")
    }

    /// Mines `n` blocks to the burn address.
    pub fn mine(&self, n: u32) -> Vec<String> {
        self.mine_to(n, &Self::burn_address().to_string())
    }

    pub fn block_count(&self) -> u64 {
        self.rpc_ok("getblockcount", json!([]))
            .as_u64()
            .expect("height")
    }

    /// Waits until `txid` is known to the node (mempool or chain); returns its verbose form.
    pub fn wait_for_tx(&self, txid: &str, timeout: Duration) -> Value {
        wait_until(&format!("transaction {txid}"), timeout, || {
            self.rpc("getrawtransaction", json!([txid, true])).ok()
        })
    }

    /// Confirmations of `txid` (0 while in the mempool).
    pub fn confirmations(&self, txid: &str) -> u64 {
        let tx = self.rpc_ok("getrawtransaction", json!([txid, true]));
        tx.get("confirmations").and_then(Value::as_u64).unwrap_or(0)
    }

    /// Runs bitcoin-cli against this node with `args` after the connection flags.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bins::bitcoin_cli())
            .arg("-regtest")
            .arg(format!("-datadir={}", self.datadir().display()))
            .arg(format!("-rpcport={}", self.rpc_port))
            .args(args)
            .output()
            .expect("run bitcoin-cli")
    }

    pub fn debug_log(&self) -> PathBuf {
        self.datadir.path().join("regtest").join("debug.log")
    }
}

impl Drop for BitcoinNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- bitcoind debug.log (tail) -----\n{}\n-----",
                tail(&self.debug_log(), 80)
            );
        }
        let _ = self.rpc("stop", json!([]));
        let child = &mut self.child;
        let stopped = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !stopped {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn_bitcoind(
    datadir: &Path,
    p2p_port: u16,
    rpc_port: u16,
    zmq: [&String; 3],
    extra: &[String],
) -> Child {
    let pruned = extra.iter().any(|a| a.starts_with("-prune"));
    Command::new(bins::bitcoind())
        .arg("-regtest")
        .arg(format!("-datadir={}", datadir.display()))
        .arg(format!("-port={p2p_port}"))
        .arg(format!("-rpcport={rpc_port}"))
        .args(["-rpcbind=127.0.0.1", "-rpcallowip=127.0.0.1", "-server=1"])
        .args(["-listen=0", "-dnsseed=0", "-fixedseeds=0", "-discover=0"])
        .args((!pruned).then_some("-txindex=1"))
        .args(["-acceptnonstdtxn=0", "-printtoconsole=0"])
        .arg(format!("-zmqpubrawtx={}", zmq[0]))
        .arg(format!("-zmqpubrawblock={}", zmq[1]))
        .arg(format!("-zmqpubsequence={}", zmq[2]))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn bitcoind")
}

/// A JSON-RPC 1.0 call with Basic auth; returns `result` or the error object.
pub fn rpc_call(
    http: &reqwest::blocking::Client,
    url: &str,
    credentials: &str,
    method: &str,
    params: Value,
) -> Result<Value, RpcError> {
    let auth = base64::engine::general_purpose::STANDARD.encode(credentials.trim());
    let body = json!({"jsonrpc": "1.0", "id": "test", "method": method, "params": params});
    let response = http
        .post(url)
        .header("Authorization", format!("Basic {auth}"))
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .map_err(|e| RpcError {
            code: -1,
            message: format!("http: {e}"),
        })?;
    let reply: Value = response.json().map_err(|e| RpcError {
        code: -1,
        message: format!("reply: {e}"),
    })?;
    match reply.get("error") {
        Some(error) if !error.is_null() => Err(RpcError {
            code: error.get("code").and_then(Value::as_i64).unwrap_or(-1),
            message: error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        }),
        _ => Ok(reply.get("result").cloned().unwrap_or(Value::Null)),
    }
}

/// Parses a BTC amount from a JSON number without float rounding surprises.
pub fn btc_to_sat(value: &Value) -> u64 {
    let text = value.to_string();
    bitcoin::Amount::from_str_in(&text, bitcoin::Denomination::Bitcoin)
        .or_else(|_| bitcoin::Amount::from_str(&format!("{text} BTC")))
        .unwrap_or_else(|e| panic!("not a BTC amount: {text}: {e}"))
        .to_sat()
}
