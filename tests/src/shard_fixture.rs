//! A regtest network for the `shard_` tests and the `shards` bench (issue 18): one
//! bitcoind, one funded renter dstore-plugin and several farmer dstore-plugins, each with
//! its own peer endpoint and storage directory; farmers and the renter can be killed and
//! started again on their datadirs. It drives sharded opens, downloads and repairs as a
//! user would, mining a block whenever a shard download waits for TX1's confirmations.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tempfile::TempDir;

use crate::{wait_until, BitcoinNode, PluginProcess, RpcError};

/// How long a sharded download or repair may take before a test gives up.
pub const SHARD_WAIT: Duration = Duration::from_secs(900);
/// Coinbases the renter's wallet gets: parallel shard downloads and repairs each fund a
/// TX1, and each TX1 spends a confirmed coin of its own.
const RENTER_COINBASES: u32 = 12;
/// `wait_seconds` of the repeated `dstore-download`/`dstore-repair` calls: the plugin
/// answers as soon as the outcome is known, or after this long with the running state.
const POLL_WAIT_SECONDS: u64 = 1;

/// One farmer's setup.
#[derive(Default, Clone)]
pub struct ShardFarmerSpec {
    /// `--dev-fault` (e.g. `seal-wrong-data`).
    pub fault: Option<&'static str>,
}

/// A farmer plugin of the network: its process (None while killed), datadir, flags and
/// peer endpoint.
pub struct ShardFarmer {
    process: Option<PluginProcess>,
    pub datadir: PathBuf,
    pub storage: PathBuf,
    pub peer_url: String,
    args: Vec<String>,
}

impl ShardFarmer {
    pub fn plugin(&self) -> &PluginProcess {
        self.process.as_ref().expect("the farmer is running")
    }

    pub fn running(&self) -> bool {
        self.process.is_some()
    }
}

pub struct ShardNet {
    pub node: BitcoinNode,
    pub farmers: Vec<ShardFarmer>,
    renter: Option<PluginProcess>,
    renter_datadir: PathBuf,
    renter_args: Vec<String>,
    /// Holds the datadirs and test files.
    pub dir: TempDir,
}

impl ShardNet {
    /// Starts the node, one farmer per spec (accepting files up to `max_file_bytes`) and
    /// the renter, whose wallet gets [`RENTER_COINBASES`] mature coinbases. `crs_dir` is
    /// shared by every test of a run so the CRS is generated once.
    pub fn start(crs_dir: &Path, farmers: &[ShardFarmerSpec], max_file_bytes: u64) -> ShardNet {
        let dir = tempfile::Builder::new()
            .prefix("dstore-shard-")
            .tempdir()
            .expect("temp dir");
        let node = BitcoinNode::start();
        let crs = format!("--crs-cache-dir={}", crs_dir.display());
        let farmers = farmers
            .iter()
            .enumerate()
            .map(|(i, spec)| start_farmer(&node, dir.path(), i, spec, &crs, max_file_bytes))
            .collect();
        let renter_datadir = dir.path().join("renter");
        let renter_args = vec![crs];
        let renter = start_plugin(&node, &renter_datadir, &renter_args);
        let address = renter.call_ok("dstore-getnewaddress", json!([]));
        node.mine_to(RENTER_COINBASES, address.as_str().expect("address"));
        node.mine(100);
        ShardNet {
            node,
            farmers,
            renter: Some(renter),
            renter_datadir,
            renter_args,
            dir,
        }
    }

    pub fn renter(&self) -> &PluginProcess {
        self.renter.as_ref().expect("the renter is running")
    }

    pub fn farmer(&self, i: usize) -> &PluginProcess {
        self.farmers[i].plugin()
    }

    /// Farmer `i`'s peer URL.
    pub fn url(&self, i: usize) -> &str {
        &self.farmers[i].peer_url
    }

    /// The peer URLs of `farmers`, comma-separated (the first parameter of a sharded
    /// `dstore-open`).
    pub fn urls(&self, farmers: &[usize]) -> String {
        farmers
            .iter()
            .map(|&i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the farmer whose peer URL is `url`.
    pub fn farmer_at(&self, url: &str) -> usize {
        let url = url.trim_end_matches('/');
        self.farmers
            .iter()
            .position(|f| f.peer_url == url)
            .unwrap_or_else(|| panic!("no farmer at {url}"))
    }

    /// Writes `data` to a file in the network's directory.
    pub fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, data).expect("write test file");
        path
    }

    /// `dstore-open farmer_peer_url=<urls> file_path=<file> shards=N needed=K` (named
    /// parameters, as `bitcoin-cli -named` sends them).
    pub fn open_sharded(
        &self,
        urls: &str,
        file: &Path,
        shards: u64,
        needed: u64,
    ) -> Result<Value, RpcError> {
        self.renter()
            .call("dstore-open", open_params(urls, file, shards, needed))
    }

    /// Like [`open_sharded`](Self::open_sharded) on `farmers`, panicking on error.
    pub fn open_on(&self, farmers: &[usize], file: &Path, needed: u64) -> Value {
        let urls = self.urls(farmers);
        self.open_sharded(&urls, file, farmers.len() as u64, needed)
            .unwrap_or_else(|e| panic!("sharded dstore-open on {urls}: {e}"))
    }

    /// `dstore-status <id>` on the renter (a file id or a contract id).
    pub fn status(&self, id: &str) -> Value {
        self.renter().call_ok("dstore-status", json!([id]))
    }

    /// `dstore-list` on the renter.
    pub fn list(&self) -> Vec<Value> {
        let list = self.renter().call_ok("dstore-list", json!([]));
        list.as_array()
            .unwrap_or_else(|| panic!("dstore-list is an array: {list}"))
            .clone()
    }

    /// `dstore-download <file_id> <out>` driven to its end (see [`drive`]).
    pub fn download(&self, file_id: &str, out: &Path) -> Result<Value, RpcError> {
        let out = out.to_str().expect("utf-8 path");
        self.drive(
            "dstore-download",
            json!([file_id, out]),
            json!([file_id, out, POLL_WAIT_SECONDS]),
        )
    }

    /// `dstore-repair <file_id> [farmer_urls]` driven to its end (see [`drive`]).
    pub fn repair(&self, file_id: &str, urls: Option<&str>) -> Result<Value, RpcError> {
        let first = match urls {
            Some(urls) => json!([file_id, urls]),
            None => json!([file_id]),
        };
        // Calling again joins the running repair.
        let again = json!({"file_id": file_id, "wait_seconds": POLL_WAIT_SECONDS});
        self.drive("dstore-repair", first, again)
    }

    /// Calls `method` with `first`, then, while the reply's status is "running" or
    /// "waiting", mines one block for every renter contract newly seen waiting for TX1
    /// confirmations and calls `method` again with `again` (which waits on the plugin's
    /// side). Returns the final reply or the error the operation ended with.
    pub fn drive(&self, method: &str, first: Value, again: Value) -> Result<Value, RpcError> {
        let mut outcome = self.renter().call(method, first);
        let mut mined_for: HashSet<(String, String)> = HashSet::new();
        wait_until(&format!("{method} to finish"), SHARD_WAIT, || {
            match &outcome {
                Ok(reply) if is_running(reply) => {}
                _ => return Some(()),
            }
            self.mine_for_new_tx1_waits(&mut mined_for);
            outcome = self.renter().call(method, again.clone());
            None
        });
        outcome
    }

    /// Mines one block if some renter contract shows a "waiting for TX1 confirmations k/n"
    /// phase not mined for yet, so each TX1 gets the confirmations its farmer waits for.
    pub fn mine_for_new_tx1_waits(&self, mined_for: &mut HashSet<(String, String)>) {
        let Ok(list) = self.renter().call("dstore-list", json!([])) else {
            return;
        };
        let waits: Vec<(String, String)> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|entry| {
                let phase = entry["phase"].as_str()?;
                let id = entry["contract_id"].as_str()?;
                phase
                    .starts_with("waiting for TX1 confirmations")
                    .then(|| (id.to_string(), phase.to_string()))
            })
            .collect();
        let fresh: Vec<_> = waits
            .into_iter()
            .filter(|w| !mined_for.contains(w))
            .collect();
        if !fresh.is_empty() {
            self.node.mine(1);
            mined_for.extend(fresh);
        }
    }

    /// SIGKILLs farmer `i` (the farmer is gone).
    pub fn kill_farmer(&mut self, i: usize) {
        if let Some(farmer) = self.farmers[i].process.take() {
            farmer.kill();
        }
    }

    /// Starts farmer `i` again on its datadir and port, without its fault.
    pub fn start_farmer(&mut self, i: usize) {
        let farmer = &mut self.farmers[i];
        let args: Vec<String> = farmer
            .args
            .iter()
            .filter(|a| !a.starts_with("--dev-fault"))
            .cloned()
            .collect();
        farmer.process = Some(start_plugin(&self.node, &farmer.datadir, &args));
    }

    /// SIGKILLs the renter.
    pub fn kill_renter(&mut self) {
        if let Some(renter) = self.renter.take() {
            renter.kill();
        }
    }

    /// Stops the renter with `dstore-stop` and waits for it to exit.
    pub fn stop_renter(&mut self) {
        if let Some(renter) = self.renter.take() {
            renter.stop();
        }
    }

    /// Sets the renter's `--dev-fault` (e.g. `stall-at-tx1-funded`) for its next start;
    /// `None` starts it without one.
    pub fn set_renter_fault(&mut self, fault: Option<&str>) {
        self.renter_args.retain(|a| !a.starts_with("--dev-fault"));
        if let Some(fault) = fault {
            self.renter_args.push(format!("--dev-fault={fault}"));
        }
    }

    /// Starts the renter again on its datadir and flags.
    pub fn start_renter(&mut self) {
        self.renter = Some(start_plugin(
            &self.node,
            &self.renter_datadir,
            &self.renter_args,
        ));
    }

    /// The renter process's id (for /proc figures), found by its `--datadir` flag.
    pub fn renter_pid(&self) -> Option<u32> {
        let flag = format!("--datadir={}", self.renter_datadir.display());
        std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .find_map(|entry| {
                let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
                let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
                cmdline
                    .split(|&b| b == 0)
                    .any(|arg| arg == flag.as_bytes())
                    .then_some(pid)
            })
    }

    /// Where farmer `i` keeps the stored blob of `contract_id`.
    pub fn blob_path(&self, i: usize, contract_id: &str) -> PathBuf {
        self.farmers[i]
            .storage
            .join("objects")
            .join("blobs")
            .join(contract_id)
    }

    /// The renter's staging directory of a file's shards.
    pub fn staged_shards_dir(&self, file_id: &str) -> PathBuf {
        self.renter_datadir
            .join("regtest")
            .join("renter")
            .join("files")
            .join(file_id)
    }
}

/// Named parameters of a sharded `dstore-open`.
pub fn open_params(urls: &str, file: &Path, shards: u64, needed: u64) -> Value {
    let mut params = Map::new();
    params.insert("farmer_peer_url".into(), json!(urls));
    params.insert(
        "file_path".into(),
        json!(file.to_str().expect("utf-8 path")),
    );
    params.insert("shards".into(), json!(shards));
    params.insert("needed".into(), json!(needed));
    Value::Object(params)
}

/// Whether a download/repair reply says the operation still runs.
pub fn is_running(reply: &Value) -> bool {
    matches!(reply["status"].as_str(), Some("running" | "waiting"))
}

/// The file id of a sharded `dstore-open` reply.
pub fn file_id_of(reply: &Value) -> String {
    reply["file_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no file_id in {reply}"))
        .to_string()
}

/// The `shards` array of an open reply, a file entry or a file status.
pub fn shards_of(value: &Value) -> Vec<Value> {
    value["shards"]
        .as_array()
        .unwrap_or_else(|| panic!("no shards in {value}"))
        .clone()
}

/// A shard's field as a string.
pub fn field(shard: &Value, name: &str) -> String {
    shard[name]
        .as_str()
        .unwrap_or_else(|| panic!("no {name} in {shard}"))
        .to_string()
}

fn start_farmer(
    node: &BitcoinNode,
    dir: &Path,
    i: usize,
    spec: &ShardFarmerSpec,
    crs: &str,
    max_file_bytes: u64,
) -> ShardFarmer {
    let (peer_url, storage, mut args) =
        crate::market_fixture::farmer_flags(dir, i, max_file_bytes, crs);
    if let Some(fault) = spec.fault {
        args.push(format!("--dev-fault={fault}"));
    }
    let datadir = dir.join(format!("farmer{i}"));
    let process = Some(start_plugin(node, &datadir, &args));
    ShardFarmer {
        process,
        datadir,
        storage,
        peer_url,
        args,
    }
}

fn start_plugin(node: &BitcoinNode, datadir: &Path, args: &[String]) -> PluginProcess {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    PluginProcess::start_in(node, datadir, &args)
}
