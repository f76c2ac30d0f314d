//! A regtest farmer market for the `market_` tests (issue 17): one bitcoind, several farmer
//! dstore-plugins (each funded, each with its peer endpoint and `--peer-url`), renters whose
//! market scanner follows the chain quickly, optional watchtowers, and what the scenarios do
//! to the chain: announce, mine, reorganise, restart a renter, send hand-made (forged)
//! transactions, and serve a fake farmer endpoint.

use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bitcoin::secp256k1::{SecretKey, SECP256K1};
use bitcoin::{Amount, CompressedPublicKey, OutPoint, ScriptBuf, Transaction, TxOut};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::funding::broadcast;
use crate::market::{finish_audit_setup, tower_flags, TEST_PRICE_SAT};
use crate::{ports, wait_until, BitcoinNode, PluginProcess, RpcError, TowerProcess};

/// How long a test waits for the scanner, an advert fetch or a board pull.
pub const MARKET_WAIT: Duration = Duration::from_secs(90);
/// The fee every hand-made transaction pays.
const FORGED_FEE: Amount = Amount::from_sat(3_000);

/// One farmer's setup.
#[derive(Default, Clone)]
pub struct FarmerSpec {
    /// `--dev-fault` (e.g. `seal-wrong-data`).
    pub fault: Option<&'static str>,
    /// Registers its contracts with its own dstore-watchtower.
    pub tower: bool,
}

/// One renter's setup.
#[derive(Default, Clone)]
pub struct RenterSpec {
    /// Registers with its own dstore-watchtower, started with these flags (the renter's
    /// tower is the audit salts' holder).
    pub tower: Option<Vec<&'static str>>,
    /// Extra plugin flags (e.g. `--market-min-bond-sat=…`).
    pub extra: Vec<String>,
}

/// A plugin of the market: its process (None while stopped), datadir and flags.
pub struct Member {
    process: Option<PluginProcess>,
    pub datadir: PathBuf,
    args: Vec<String>,
    /// Kept alive as long as the plugin.
    pub tower: Option<TowerProcess>,
}

impl Member {
    pub fn plugin(&self) -> &PluginProcess {
        self.process.as_ref().expect("the plugin is running")
    }

    fn start(&mut self, node: &BitcoinNode) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.process = Some(PluginProcess::start_in(node, &self.datadir, &args));
    }
}

/// A farmer: its plugin, peer URL and identity (x-only hex, from `/dstore/v1/info`).
pub struct Farmer {
    pub member: Member,
    pub peer_url: String,
    pub identity: String,
}

impl Farmer {
    pub fn plugin(&self) -> &PluginProcess {
        self.member.plugin()
    }
}

pub struct MarketNet {
    pub node: BitcoinNode,
    pub farmers: Vec<Farmer>,
    pub renters: Vec<Member>,
    pub forger: Forger,
    /// Holds the datadirs and test files.
    pub dir: TempDir,
}

impl MarketNet {
    /// Starts the node, the farmers and the renters; every plugin's wallet gets one mature
    /// 50 BTC coinbase, and so does the in-process [`Forger`].
    pub fn start(crs_dir: &Path, farmers: &[FarmerSpec], renters: &[RenterSpec]) -> MarketNet {
        let dir = tempfile::Builder::new()
            .prefix("dstore-market-")
            .tempdir()
            .expect("temp dir");
        let node = BitcoinNode::start();
        // A tower refuses to start on a node still in initial block download.
        node.mine(1);
        let crs = format!("--crs-cache-dir={}", crs_dir.display());
        let farmers: Vec<Farmer> = farmers
            .iter()
            .enumerate()
            .map(|(i, spec)| start_farmer(&node, dir.path(), i, spec, &crs))
            .collect();
        let renters: Vec<Member> = renters
            .iter()
            .enumerate()
            .map(|(i, spec)| start_renter(&node, dir.path(), i, spec, &crs))
            .collect();
        for member in farmers.iter().map(|f| &f.member).chain(renters.iter()) {
            let address = member.plugin().call_ok("dstore-getnewaddress", json!([]));
            node.mine_to(1, address.as_str().expect("address"));
        }
        let forger = Forger::new(&node);
        node.mine(100);
        MarketNet {
            node,
            farmers,
            renters,
            forger,
            dir,
        }
    }

    pub fn farmer(&self, i: usize) -> &PluginProcess {
        self.farmers[i].plugin()
    }

    pub fn renter(&self, i: usize) -> &PluginProcess {
        self.renters[i].plugin()
    }

    pub fn tip(&self) -> u64 {
        self.node.block_count()
    }

    /// Mines `n` blocks to the burn address.
    pub fn mine(&self, n: u32) -> Vec<String> {
        self.node.mine(n)
    }

    /// Mines one block holding no transaction but the coinbase (the mempool stays).
    pub fn mine_empty(&self) -> String {
        let address = BitcoinNode::burn_address().to_string();
        let block = self.node.rpc_ok("generateblock", json!([address, []]));
        block["hash"].as_str().expect("block hash").to_string()
    }

    /// `invalidateblock`: the chain falls back to the block's parent; its transactions
    /// go back to the mempool.
    pub fn invalidate(&self, block_hash: &str) {
        self.node.rpc_ok("invalidateblock", json!([block_hash]));
    }

    /// The block that confirmed `txid`.
    pub fn block_of(&self, txid: &str) -> String {
        let tx = self.node.rpc_ok("getrawtransaction", json!([txid, true]));
        tx["blockhash"]
            .as_str()
            .unwrap_or_else(|| panic!("{txid} is not confirmed: {tx}"))
            .to_string()
    }

    /// `dstore-announce <peer_url> <bond_btc> <locktime>` on farmer `i`, with its own URL.
    pub fn announce(&self, i: usize, bond_btc: f64, locktime: u32) -> Result<Value, RpcError> {
        let url = &self.farmers[i].peer_url;
        self.farmer(i)
            .call("dstore-announce", json!([url, bond_btc, locktime]))
    }

    /// Like [`announce`](Self::announce), and the announcement is in the mempool.
    pub fn announce_ok(&self, i: usize, bond_btc: f64, locktime: u32) -> Value {
        let reply = self
            .announce(i, bond_btc, locktime)
            .unwrap_or_else(|e| panic!("dstore-announce on farmer {i}: {e}"));
        let txid = reply["txid"].as_str().expect("announcement txid");
        self.node.wait_for_tx(txid, MARKET_WAIT);
        reply
    }

    /// `dstore-farmers` on renter `r` once its scanner has reached the node's tip.
    pub fn farmers(&self, r: usize) -> Value {
        self.farmers_when(r, "the scan to reach the tip", |_| true)
    }

    /// `dstore-farmers` on renter `r` once its scanner has reached the node's tip and
    /// `ready(table)` holds (adverts fetched, boards pulled, …).
    pub fn farmers_when(&self, r: usize, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let what = format!("renter {r}: {what}");
        wait_until(&what, MARKET_WAIT, || {
            let tip = self.tip();
            let table = self.renter(r).call("dstore-farmers", json!([])).ok()?;
            (table["height"].as_u64() == Some(tip) && ready(&table)).then_some(table)
        })
    }

    /// Stops renter `r` (`dstore-stop`) and starts it again on the same datadir and flags.
    pub fn restart_renter(&mut self, r: usize) {
        self.stop_renter(r);
        self.start_renter(r);
    }

    /// Stops renter `r` with `dstore-stop` and waits for it to exit.
    pub fn stop_renter(&mut self, r: usize) {
        if let Some(plugin) = self.renters[r].process.take() {
            plugin.stop();
        }
    }

    /// Starts renter `r` again on its datadir and flags.
    pub fn start_renter(&mut self, r: usize) {
        self.renters[r].start(&self.node);
    }

    /// SIGKILLs renter `r` and starts it again on the same datadir and flags.
    pub fn kill_and_restart_renter(&mut self, r: usize) {
        if let Some(plugin) = self.renters[r].process.take() {
            plugin.kill();
        }
        self.renters[r].start(&self.node);
    }

    /// Stops farmer `i` and starts it again on its datadir (same identity) with its peer
    /// endpoint on a new port and `--peer-url` naming it; returns the new URL.
    pub fn move_farmer(&mut self, i: usize) -> String {
        let farmer = &mut self.farmers[i];
        if let Some(plugin) = farmer.member.process.take() {
            plugin.stop();
        }
        let port = ports::free_ports(1)[0];
        let url = format!("http://127.0.0.1:{port}");
        for arg in &mut farmer.member.args {
            if arg.starts_with("--peer-bind=") {
                *arg = format!("--peer-bind=127.0.0.1:{port}");
            } else if arg.starts_with("--peer-url=") {
                *arg = format!("--peer-url={url}");
            }
        }
        farmer.member.start(&self.node);
        assert_eq!(farmer_identity(&url), farmer.identity, "same identity");
        farmer.peer_url = url.clone();
        url
    }

    /// Writes `data` to a file in the market's directory.
    pub fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, data).expect("write test file");
        path
    }

    /// `dstore-open auto <file>` on renter `r`.
    pub fn open_auto(&self, r: usize, file: &Path) -> Result<Value, RpcError> {
        let path = file.to_str().expect("utf-8 path");
        self.renter(r).call("dstore-open", json!(["auto", path]))
    }

    /// `dstore-open <farmer i's URL> <file> …more` on renter `r`, an audit setup driven to
    /// its end by [`finish_audit_setup`]; the contract id.
    pub fn open_with(&self, r: usize, i: usize, file: &Path, more: &[Value]) -> String {
        let path = file.to_str().expect("utf-8 path");
        let mut params = vec![json!(self.farmers[i].peer_url), json!(path)];
        params.extend(more.iter().cloned());
        let reply = self.renter(r).call_ok("dstore-open", Value::Array(params));
        finish_audit_setup(&self.node, reply, |id| {
            self.renter(r).call_ok("dstore-status", json!([id]))
        })
        .unwrap_or_else(|e| panic!("the audit setup failed: {e}"))
    }

    /// Farmer `i`'s row of a `dstore-farmers` table.
    pub fn row<'a>(&self, table: &'a Value, i: usize) -> Option<&'a Value> {
        row_of(table, &self.farmers[i].identity)
    }
}

/// The row of `identity` (x-only hex) in a `dstore-farmers` table.
pub fn row_of<'a>(table: &'a Value, identity: &str) -> Option<&'a Value> {
    table["farmers"]
        .as_array()?
        .iter()
        .find(|row| row["identity"].as_str() == Some(identity))
}

/// The identities a `dstore-farmers` table lists, in its order.
pub fn identities(table: &Value) -> Vec<String> {
    table["farmers"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|row| row["identity"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The contract id of a `dstore-open` reply (a string, or an object with `contract_id`).
pub fn contract_id_of(reply: &Value) -> String {
    reply
        .as_str()
        .or_else(|| reply["contract_id"].as_str())
        .unwrap_or_else(|| panic!("no contract id in {reply}"))
        .to_string()
}

/// Farmer `i`'s plugin flags on a free loopback port (storage under `dir`, files up to
/// `max_file_bytes`, the test price, the CRS flag `crs`), its peer URL and storage dir.
pub fn farmer_flags(
    dir: &Path,
    i: usize,
    max_file_bytes: u64,
    crs: &str,
) -> (String, PathBuf, Vec<String>) {
    let port = ports::free_ports(1)[0];
    let peer_url = format!("http://127.0.0.1:{port}");
    let storage = dir.join(format!("farmer{i}-storage"));
    let args = vec![
        "--farmer".to_string(),
        format!("--peer-bind=127.0.0.1:{port}"),
        format!("--peer-url={peer_url}"),
        format!("--storage-dir={}", storage.display()),
        format!("--price-per-download-sat={TEST_PRICE_SAT}"),
        format!("--max-file-bytes={max_file_bytes}"),
        crs.to_string(),
    ];
    (peer_url, storage, args)
}

fn start_farmer(node: &BitcoinNode, dir: &Path, i: usize, spec: &FarmerSpec, crs: &str) -> Farmer {
    let (peer_url, _, mut args) = farmer_flags(dir, i, 80 << 20, crs);
    let tower = spec.tower.then(|| TowerProcess::start(node));
    if let Some(tower) = &tower {
        args.extend(tower_flags(tower));
    }
    if let Some(fault) = spec.fault {
        args.push(format!("--dev-fault={fault}"));
    }
    let mut member = Member {
        process: None,
        datadir: dir.join(format!("farmer{i}")),
        args,
        tower,
    };
    member.start(node);
    let identity = farmer_identity(&peer_url);
    Farmer {
        member,
        peer_url,
        identity,
    }
}

fn start_renter(node: &BitcoinNode, dir: &Path, i: usize, spec: &RenterSpec, crs: &str) -> Member {
    let mut args = vec![
        crs.to_string(),
        "--market-start-height=0".to_string(),
        "--market-refresh-secs=1".to_string(),
        "--market-poll-ms=200".to_string(),
    ];
    let tower = spec
        .tower
        .as_ref()
        .map(|flags| TowerProcess::start_with(node, flags));
    if let Some(tower) = &tower {
        args.extend(tower_flags(tower));
    }
    args.extend(spec.extra.iter().cloned());
    let mut member = Member {
        process: None,
        datadir: dir.join(format!("renter{i}")),
        args,
        tower,
    };
    member.start(node);
    member
}

/// The identity a farmer's `/dstore/v1/info` names.
fn farmer_identity(peer_url: &str) -> String {
    let info = wait_until("the farmer's peer endpoint", MARKET_WAIT, || {
        reqwest::blocking::get(format!("{peer_url}/dstore/v1/info"))
            .ok()?
            .json::<Value>()
            .ok()
    });
    info["identity"]
        .as_str()
        .unwrap_or_else(|| panic!("no identity in {info}"))
        .to_string()
}

/// Coins of one in-process key, spent into any outputs a test wants on the chain (forged
/// announcements and the like): what bitcoind's `createrawtransaction` + fund + sign +
/// send would do, with a P2WPKH key the test holds.
pub struct Forger {
    secret: SecretKey,
    coins: Mutex<Vec<(OutPoint, TxOut)>>,
}

impl Forger {
    /// Mines one coinbase to a fresh key (it matures with the blocks mined after it).
    fn new(node: &BitcoinNode) -> Forger {
        let secret = SecretKey::new(&mut rand::thread_rng());
        let forger = Forger {
            secret,
            coins: Mutex::new(Vec::new()),
        };
        let address = bitcoin::Address::from_script(&forger.script(), bitcoin::Network::Regtest)
            .expect("p2wpkh address");
        let hash = node.mine_to(1, &address.to_string()).remove(0);
        let block = node.rpc_ok("getblock", json!([hash, 2]));
        let hex = block["tx"][0]["hex"].as_str().expect("coinbase hex");
        let coinbase: Transaction =
            bitcoin::consensus::encode::deserialize_hex(hex).expect("coinbase");
        let outpoint = OutPoint {
            txid: coinbase.compute_txid(),
            vout: 0,
        };
        forger
            .coins
            .lock()
            .unwrap()
            .push((outpoint, coinbase.output[0].clone()));
        forger
    }

    fn script(&self) -> ScriptBuf {
        let public = CompressedPublicKey(self.secret.public_key(SECP256K1));
        ScriptBuf::new_p2wpkh(&public.wpubkey_hash())
    }

    /// Signs and broadcasts a transaction paying `outputs` (in this order, change last);
    /// returns it (unconfirmed).
    pub fn send(&self, node: &BitcoinNode, outputs: Vec<TxOut>) -> Transaction {
        let tx = self.build(outputs);
        broadcast(node, &tx).unwrap_or_else(|e| panic!("bitcoind refused a forged tx: {e}"));
        tx
    }

    fn build(&self, mut outputs: Vec<TxOut>) -> Transaction {
        let mut coins = self.coins.lock().unwrap();
        let (outpoint, prevout) = coins.pop().expect("the forger has a coin");
        let spent: Amount = outputs.iter().map(|o| o.value).sum();
        let change = prevout
            .value
            .checked_sub(spent + FORGED_FEE)
            .expect("the coin covers the outputs");
        outputs.push(TxOut {
            value: change,
            script_pubkey: self.script(),
        });
        let change_vout = outputs.len() as u32 - 1;
        let tx = crate::funding::signed_p2wpkh_spend(&self.secret, outpoint, &prevout, outputs);
        let change = OutPoint {
            txid: tx.compute_txid(),
            vout: change_vout,
        };
        coins.push((change, tx.output[change_vout as usize].clone()));
        tx
    }
}

/// A fake peer endpoint: answers GETs of the given paths with fixed JSON bodies (200),
/// anything else with 404, until dropped.
pub struct FakeEndpoint {
    pub url: String,
    /// Paths requested so far.
    pub hits: Arc<Mutex<Vec<String>>>,
    address: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeEndpoint {
    /// Serves on `listener` (bound by the caller, so its URL can go into what it serves).
    pub fn serve(listener: TcpListener, routes: HashMap<String, Value>) -> FakeEndpoint {
        let address = listener.local_addr().expect("address");
        let url = format!("http://{address}");
        let hits = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (stopping, log) = (stop.clone(), hits.clone());
        // A blocking accept; drop sets `stop` and connects once to wake it.
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                if let Ok(stream) = stream {
                    answer(stream, &routes, &log);
                }
            }
        });
        FakeEndpoint {
            url,
            address,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    /// How many times `path` was requested.
    pub fn hits_of(&self, path: &str) -> usize {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == path)
            .count()
    }
}

impl Drop for FakeEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.address);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer(stream: TcpStream, routes: &HashMap<String, Value>, hits: &Mutex<Vec<String>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let Some(path) = crate::audit_fixture::read_request(&stream).map(|(path, _)| path) else {
        return;
    };
    hits.lock().unwrap().push(path.clone());
    let (status, body) = match routes.get(&path) {
        Some(body) => (200, body.to_string()),
        None => (404, json!({"code": -5, "message": "not found"}).to_string()),
    };
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        if status == 200 { "OK" } else { "Not Found" },
        body.len()
    );
    let mut stream = stream;
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
    let _ = stream.flush();
}
