//! A regtest market for the end-to-end tests: one bitcoind, a farmer dstore-plugin (with
//! `--farmer` and its peer endpoint) and a funded renter dstore-plugin, driven through
//! bitcoin-cli exactly as a user would.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::node::btc_to_sat;
use crate::{ports, wait_until, BitcoinNode, PluginProcess, TowerProcess};

/// The price the farmer asks per download in the tests (satoshis).
pub const TEST_PRICE_SAT: u64 = 20_000;

/// Optional misbehaviour for either plugin (`--dev-fault`).
#[derive(Default, Clone, Copy)]
pub struct Faults {
    pub farmer: Option<&'static str>,
    pub renter: Option<&'static str>,
}

pub struct Market {
    pub node: BitcoinNode,
    farmer: Option<PluginProcess>,
    renter: Option<PluginProcess>,
    pub peer_url: String,
    farmer_args: Vec<String>,
    renter_args: Vec<String>,
    /// Renter flags kept across [`Market::start_renter`] (unlike its fault).
    renter_extra: Vec<String>,
    /// Environment variables the farmer process gets (kept across restarts).
    farmer_env: Vec<(String, String)>,
    /// Holds both datadirs and the test files.
    pub dir: TempDir,
}

impl Market {
    /// Starts the node and both plugins; the renter's wallet gets 50 BTC of mature coins.
    /// `crs_dir` is shared by every test of a run so the CRS is generated once.
    pub fn start(crs_dir: &Path, faults: Faults) -> Market {
        Self::start_with(crs_dir, faults, 80 << 20)
    }

    /// Like [`Market::start`], with the farmer accepting files up to `max_file_bytes`.
    pub fn start_with(crs_dir: &Path, faults: Faults, max_file_bytes: u64) -> Market {
        Self::start_custom(crs_dir, faults, max_file_bytes, &[])
    }

    /// Like [`Market::start_with`], with extra farmer flags.
    pub fn start_custom(
        crs_dir: &Path,
        faults: Faults,
        max_file_bytes: u64,
        farmer_extra: &[String],
    ) -> Market {
        Self::start_around(crs_dir, faults, max_file_bytes, |_| {
            (farmer_extra.to_vec(), Vec::new())
        })
    }

    /// Like [`Market::start_custom`], with environment variables for the farmer process
    /// only (e.g. an object store's `AWS_*` settings); it keeps them across restarts.
    pub fn start_with_farmer_env(
        crs_dir: &Path,
        faults: Faults,
        max_file_bytes: u64,
        farmer_extra: &[String],
        farmer_env: &[(&str, &str)],
    ) -> Market {
        let env = farmer_env
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        Self::launch(crs_dir, faults, max_file_bytes, env, |_| {
            (farmer_extra.to_vec(), Vec::new())
        })
    }

    /// Like [`Market::start_with`], with extra flags for both plugins chosen once the node
    /// runs (e.g. watchtowers attached to it): `extra(&node)` returns the farmer's and the
    /// renter's. Both keep them across restarts.
    pub fn start_around(
        crs_dir: &Path,
        faults: Faults,
        max_file_bytes: u64,
        extra: impl FnOnce(&BitcoinNode) -> (Vec<String>, Vec<String>),
    ) -> Market {
        Self::launch(crs_dir, faults, max_file_bytes, Vec::new(), extra)
    }

    fn launch(
        crs_dir: &Path,
        faults: Faults,
        max_file_bytes: u64,
        farmer_env: Vec<(String, String)>,
        extra: impl FnOnce(&BitcoinNode) -> (Vec<String>, Vec<String>),
    ) -> Market {
        let dir = tempfile::Builder::new()
            .prefix("dstore-e2e-")
            .tempdir()
            .expect("temp dir");
        let node = BitcoinNode::start();
        let (farmer_extra, renter_extra) = extra(&node);
        let peer_port = ports::free_ports(1)[0];
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let crs = format!("--crs-cache-dir={}", crs_dir.display());
        let mut farmer_args = vec![
            "--farmer".to_string(),
            format!("--peer-bind=127.0.0.1:{peer_port}"),
            format!(
                "--storage-dir={}",
                dir.path().join("farmer-storage").display()
            ),
            format!("--price-per-download-sat={TEST_PRICE_SAT}"),
            format!("--max-file-bytes={max_file_bytes}"),
            crs.clone(),
        ];
        farmer_args.extend(farmer_extra.iter().cloned());
        if let Some(fault) = faults.farmer {
            farmer_args.push(format!("--dev-fault={fault}"));
        }
        let farmer =
            start_plugin_with_env(&node, &dir.path().join("farmer"), &farmer_args, &farmer_env);
        let mut renter_args = vec![crs];
        renter_args.extend(renter_extra.iter().cloned());
        if let Some(fault) = faults.renter {
            renter_args.push(format!("--dev-fault={fault}"));
        }
        let renter = start_plugin(&node, &dir.path().join("renter"), &renter_args);
        let address = renter.call_ok("dstore-getnewaddress", json!([]));
        node.mine_to(1, address.as_str().expect("address"));
        node.mine(100);
        Market {
            node,
            farmer: Some(farmer),
            renter: Some(renter),
            peer_url,
            farmer_args,
            renter_args,
            renter_extra,
            farmer_env,
            dir,
        }
    }

    /// A market whose farmer and renter each register with their own dstore-watchtower,
    /// started with `farmer_tower_flags` and `renter_tower_flags`; returns the market, the
    /// farmer's tower and the renter's tower.
    pub fn with_towers(
        crs_dir: &Path,
        faults: Faults,
        farmer_tower_flags: &[&str],
        renter_tower_flags: &[&str],
    ) -> (Market, TowerProcess, TowerProcess) {
        let mut towers = None;
        let m = Market::start_around(crs_dir, faults, 80 << 20, |node| {
            // A tower refuses to start on a node still in initial block download.
            node.mine(1);
            let farmer_tower = TowerProcess::start_with(node, farmer_tower_flags);
            let renter_tower = TowerProcess::start_with(node, renter_tower_flags);
            let args = (tower_flags(&farmer_tower), tower_flags(&renter_tower));
            towers = Some((farmer_tower, renter_tower));
            args
        });
        let (farmer_tower, renter_tower) = towers.expect("towers started");
        (m, farmer_tower, renter_tower)
    }

    /// Writes `data` to a file in the market's directory.
    pub fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, data).expect("write test file");
        path
    }

    /// `bitcoin-cli -rpcport=<renter> <args>`; Ok(stdout) or Err(stderr).
    pub fn renter_cli(&self, args: &[&str]) -> Result<String, String> {
        cli_result(self.renter().cli(args))
    }

    /// `dstore-open <peer> <file> <TEST_PRICE_SAT> <audits> <period> <amount_sat>` through
    /// bitcoin-cli: a contract with an audit contract, its setup driven to its end by
    /// [`finish_audit_setup`]; the contract id or the setup's error.
    pub fn open_with_audits(
        &self,
        file: &Path,
        audits: u32,
        period: u32,
        amount_sat: u64,
    ) -> Result<String, String> {
        let reply = self.open_with_audits_started(file, audits, period, amount_sat)?;
        self.finish_audit_setup(reply)
    }

    /// The one `dstore-open` call of [`Market::open_with_audits`]: the contract id, or the
    /// `waiting` object once the setup waits for TX_A's confirmations.
    pub fn open_with_audits_started(
        &self,
        file: &Path,
        audits: u32,
        period: u32,
        amount_sat: u64,
    ) -> Result<Value, String> {
        self.renter_cli(&[
            "dstore-open",
            &self.peer_url,
            file.to_str().expect("utf-8 path"),
            &TEST_PRICE_SAT.to_string(),
            &audits.to_string(),
            &period.to_string(),
            &amount_sat.to_string(),
        ])
        .map(|text| open_reply(&text))
    }

    /// [`finish_audit_setup`] with this market's node and renter.
    pub fn finish_audit_setup(&self, reply: Value) -> Result<String, String> {
        finish_audit_setup(&self.node, reply, |id| {
            self.renter().call_ok("dstore-status", json!([id]))
        })
    }

    /// `dstore-open` through bitcoin-cli; returns the contract id.
    pub fn open(&self, file: &Path) -> Result<String, String> {
        let path = file.to_str().expect("utf-8 path");
        self.renter_cli(&["dstore-open", &self.peer_url, path])
    }

    /// `dstore-download` through bitcoin-cli, driven to its end as a user would (see
    /// [`finish_download`]: blocks are mined while TX1 lacks confirmations); returns the
    /// finished download's JSON result or the error it ended with.
    pub fn download(&self, id: &str, output: &Path) -> Result<Value, String> {
        let first = self.download_started(id, output)?;
        finish_download(
            &self.node,
            first,
            || self.renter().call_ok("dstore-status", json!([id])),
            || self.download_started(id, output),
        )
    }

    /// One `dstore-download` call through bitcoin-cli: the finished result, or the
    /// running download's phase once it waits for the chain.
    pub fn download_started(&self, id: &str, output: &Path) -> Result<Value, String> {
        let out = output.to_str().expect("utf-8 path");
        self.renter_cli(&["dstore-download", id, out])
            .map(|text| serde_json::from_str(&text).expect("dstore-download prints JSON"))
    }

    /// POSTs `body` to the farmer's `/dstore/v1/msg/<kind>`; returns the HTTP status and
    /// the JSON reply (or the text as a JSON string).
    pub fn post_message(&self, kind: &str, body: Vec<u8>) -> (u16, Value) {
        let response = reqwest::blocking::Client::new()
            .post(format!("{}/dstore/v1/msg/{kind}", self.peer_url))
            .body(body)
            .send()
            .expect("farmer answers");
        let code = response.status().as_u16();
        let text = response.text().unwrap_or_default();
        (code, serde_json::from_str(&text).unwrap_or(json!(text)))
    }

    pub fn farmer(&self) -> &PluginProcess {
        self.farmer.as_ref().expect("the farmer is running")
    }

    pub fn renter(&self) -> &PluginProcess {
        self.renter.as_ref().expect("the renter is running")
    }

    pub fn farmer_balance_sat(&self) -> u64 {
        btc_to_sat(&self.farmer().call_ok("dstore-getbalance", json!([])))
    }

    pub fn renter_balance_sat(&self) -> u64 {
        btc_to_sat(&self.renter().call_ok("dstore-getbalance", json!([])))
    }

    /// SIGKILLs the farmer (or waits for it if it already exited).
    pub fn kill_farmer(&mut self) {
        if let Some(farmer) = self.farmer.take() {
            farmer.kill();
        }
    }

    /// Starts the farmer again on its datadir and port, without any fault.
    pub fn start_farmer(&mut self) {
        let args: Vec<String> = self
            .farmer_args
            .iter()
            .filter(|a| !a.starts_with("--dev-fault"))
            .cloned()
            .collect();
        self.farmer = Some(start_plugin_with_env(
            &self.node,
            &self.dir.path().join("farmer"),
            &args,
            &self.farmer_env,
        ));
    }

    pub fn kill_renter(&mut self) {
        if let Some(renter) = self.renter.take() {
            renter.kill();
        }
    }

    /// Starts the renter again on its datadir, without any fault.
    pub fn start_renter(&mut self) {
        self.start_renter_with(None);
    }

    /// Starts the renter again on its datadir with the test-only fault `fault` (until its
    /// next restart).
    pub fn start_renter_with_fault(&mut self, fault: &str) {
        self.start_renter_with(Some(fault));
    }

    fn start_renter_with(&mut self, fault: Option<&str>) {
        let mut args = vec![self.renter_args[0].clone()];
        args.extend(self.renter_extra.iter().cloned());
        args.extend(fault.map(|fault| format!("--dev-fault={fault}")));
        self.renter = Some(start_plugin(
            &self.node,
            &self.dir.path().join("renter"),
            &args,
        ));
    }
}

/// Drives a download that `dstore-download` returned as `first` to its end: while the
/// renter's `dstore-status` says it waits for TX1's confirmations, mines one block (to the
/// burn address) and waits for the status to move; while it waits for TX2, only waits.
/// Once the download no longer runs, `again()` (`dstore-download` once more) returns its
/// outcome. No block is mined once TX1 has its confirmations, so TX2 and TX3 are still
/// unconfirmed when this returns, as after the old blocking call.
pub fn finish_download(
    node: &BitcoinNode,
    first: Value,
    status: impl Fn() -> Value,
    again: impl Fn() -> Result<Value, String>,
) -> Result<Value, String> {
    let mut reply = first;
    while reply["status"] == "waiting" || reply["status"] == "running" {
        mine_while_tx1_confirms(node, &status, || status()["running"] != json!(true));
        reply = again()?;
    }
    Ok(reply)
}

/// Until `done()`: mines one block whenever the renter's phase is "waiting for TX1 confirmations k/N" with a k
/// not mined for yet, so TX1 gets exactly the confirmations the farmer waits for.
pub fn mine_while_tx1_confirms(
    node: &BitcoinNode,
    status: impl Fn() -> Value,
    done: impl Fn() -> bool,
) {
    let mut mined_at: Option<String> = None;
    wait_until(
        "the background download to end",
        std::time::Duration::from_secs(600),
        || {
            if done() {
                return Some(());
            }
            let s = status();
            let phase = s["phase"].as_str().unwrap_or("").to_string();
            if phase.starts_with("waiting for TX1 confirmations")
                && mined_at.as_ref() != Some(&phase)
            {
                node.mine(1);
                mined_at = Some(phase);
            }
            None
        },
    );
}

/// A `dstore-open` reply as bitcoin-cli prints it: a JSON object, or the bare contract id.
pub fn open_reply(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// Drives an audited `dstore-open` that returned `reply` to the end of its audit setup, as
/// a user would: a contract id string is the finished setup; a `waiting`/`running` object
/// names the contract, whose renter `status(id)` (`dstore-status`) is then polled. Whenever
/// TX_A (`audits.funding_txid`) is in the mempool one block is mined, so it gets the
/// farmer's confirmation; the setup ends when `audits.phase` is `complete` and the
/// candidates are registered with the towers (`audits.candidates_registered` is not
/// false): Ok(the id); or when it is `failed`: Err(`audits.error`).
pub fn finish_audit_setup(
    node: &BitcoinNode,
    reply: Value,
    status: impl Fn(&str) -> Value,
) -> Result<String, String> {
    if let Some(id) = reply.as_str() {
        return Ok(id.to_string());
    }
    let id = reply["contract_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no contract id in the dstore-open reply {reply}"))
        .to_string();
    wait_until(
        "the audit setup to complete or fail",
        std::time::Duration::from_secs(600),
        || {
            let audits = status(&id)["audits"].clone();
            match audits["phase"].as_str() {
                // Complete once the candidates (and the auditor's salts) are registered too.
                Some("complete") if audits["candidates_registered"] != json!(false) => {
                    return Some(Ok(id.clone()))
                }
                Some("failed") => {
                    let error = audits["error"].as_str().map(str::to_string);
                    return Some(Err(error.unwrap_or_else(|| audits.to_string())));
                }
                _ => {}
            }
            if let Some(txid) = audits["funding_txid"].as_str() {
                if node.rpc("getmempoolentry", json!([txid])).is_ok() {
                    node.mine(1);
                }
            }
            None
        },
    )
}

/// The plugin flags that point it at `tower`.
pub fn tower_flags(tower: &TowerProcess) -> Vec<String> {
    vec![
        format!("--watchtower-url={}", tower.rpc_url()),
        format!("--watchtower-cookie={}", tower.cookie_path().display()),
    ]
}

fn start_plugin(node: &BitcoinNode, datadir: &Path, args: &[String]) -> PluginProcess {
    start_plugin_with_env(node, datadir, args, &[])
}

fn start_plugin_with_env(
    node: &BitcoinNode,
    datadir: &Path,
    args: &[String],
    env: &[(String, String)],
) -> PluginProcess {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    PluginProcess::start_in_with_env(node, datadir, &args, env)
}

fn cli_result(output: Output) -> Result<String, String> {
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

/// The tower's per-audit outcome ("paid", "refunded", …) as a renter's `dstore-status`
/// shows it.
pub fn audit_outcomes(status: &Value) -> Vec<String> {
    status["audits"]["tower"]["audits"]
        .as_array()
        .unwrap_or_else(|| panic!("no tower audit report in {status}"))
        .iter()
        .map(|a| a["outcome"].as_str().unwrap_or("?").to_string())
        .collect()
}
