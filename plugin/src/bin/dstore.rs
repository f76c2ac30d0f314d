//! `dstore`: a command-line client for dstore-plugin. It reads the plugin's cookie, calls
//! the same JSON-RPC methods bitcoin-cli would, and shows progress bars while `open` and
//! `download` run.
//!
//! `dstore open <farmer_peer_url> <file> [price_sat] [audits] [audit_period_blocks] [audit_amount_sat]`,
//! `dstore download <id> <out> [wait_seconds]` (without wait_seconds it follows the
//! download through its wait for TX1's confirmations and TX2 until it is done),
//! `dstore status <id>`, `dstore list`, `dstore refund <id>`, `dstore verify-fraud <file>`,
//! the market's `dstore announce <peer_url> <bond_btc> <locktime>`, `dstore unbond
//! [outpoint] [address]`, `dstore farmers [sort]`, `dstore publish-fraud <file> [urls]`,
//! or any other method name with its arguments (`dstore getinfo`, `dstore getblockcount`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "dstore",
    version,
    about = "Command-line client for dstore-plugin"
)]
struct Cli {
    /// dstore-plugin's data directory (default: $HOME/.dstore)
    #[arg(long, value_name = "DIR")]
    datadir: Option<PathBuf>,
    /// Network (default: regtest)
    #[arg(long, default_value = "regtest")]
    network: String,
    /// dstore-plugin's RPC host
    #[arg(long, default_value = "127.0.0.1")]
    rpc_host: String,
    /// dstore-plugin's RPC port (default: the network's plugin port)
    #[arg(long)]
    rpc_port: Option<u16>,
    /// No progress bars
    #[arg(long)]
    quiet: bool,
    /// The method (with or without the `dstore-` prefix) and its arguments
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

struct Client {
    http: reqwest::blocking::Client,
    url: String,
    auth: String,
}

impl Client {
    fn call(&self, method: &str, params: &[Value]) -> Result<Value, String> {
        let body = json!({"jsonrpc": "1.0", "id": "dstore", "method": method, "params": params});
        let reply: Value = self
            .http
            .post(&self.url)
            .header("authorization", &self.auth)
            .json(&body)
            .send()
            .and_then(|r| r.json())
            .map_err(|e| format!("cannot reach dstore-plugin at {}: {e}", self.url))?;
        match &reply["error"] {
            Value::Null => Ok(reply["result"].clone()),
            error => Err(format!(
                "error code: {}\nerror message:\n{}",
                error["code"],
                error["message"].as_str().unwrap_or("")
            )),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    let client = connect(cli)?;
    let (name, rest) = cli.command.split_first().ok_or("no method given")?;
    let method = method_name(name);
    let params = params_for(&method, rest)?;
    let result = match method.as_str() {
        "dstore-download" if params.len() < 3 => follow_download(&client, params, cli.quiet)?,
        "dstore-open" | "dstore-download" if !cli.quiet => with_progress(&client, &method, params)?,
        _ => client.call(&method, &params)?,
    };
    match result {
        Value::String(text) => println!("{text}"),
        other => println!(
            "{}",
            serde_json::to_string_pretty(&other).unwrap_or_default()
        ),
    }
    Ok(())
}

fn connect(cli: &Cli) -> Result<Client, String> {
    let datadir = match &cli.datadir {
        Some(dir) => dir.clone(),
        None => PathBuf::from(std::env::var_os("HOME").ok_or("$HOME is not set")?).join(".dstore"),
    };
    let network: dstore_protocol::network::Network = cli
        .network
        .parse()
        .map_err(|_| format!("unknown network {}", cli.network))?;
    let cookie_path = datadir.join(network.name()).join(".cookie");
    let cookie = std::fs::read_to_string(&cookie_path).map_err(|e| {
        format!(
            "cannot read {} ({e}): is dstore-plugin running?",
            cookie_path.display()
        )
    })?;
    use base64::Engine;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(cookie.trim())
    );
    let port = cli.rpc_port.unwrap_or(network.default_plugin_rpc_port());
    let http = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(Client {
        http,
        url: format!("http://{}:{port}/", cli.rpc_host),
        auth,
    })
}

fn method_name(name: &str) -> String {
    if name.starts_with("dstore-") || !is_dstore_command(name) {
        name.to_string()
    } else {
        format!("dstore-{name}")
    }
}

fn is_dstore_command(name: &str) -> bool {
    [
        "open",
        "download",
        "status",
        "list",
        "refund",
        "verify-fraud",
        "getinfo",
        "help",
        "getnewaddress",
        "getbalance",
        "listunspent",
        "send",
        "stop",
        "announce",
        "unbond",
        "farmers",
        "publish-fraud",
    ]
    .contains(&name)
}

/// Arguments as bitcoin-cli passes them: JSON where they parse, strings otherwise. File
/// paths become absolute, since the plugin resolves them in its own directory.
fn params_for(method: &str, args: &[String]) -> Result<Vec<Value>, String> {
    let path_at: &[usize] = match method {
        "dstore-open" => &[1],
        "dstore-download" => &[1],
        "dstore-verify-fraud" => &[0],
        "dstore-publish-fraud" => &[0],
        _ => &[],
    };
    args.iter()
        .enumerate()
        .map(|(i, arg)| {
            if path_at.contains(&i) {
                return absolute(arg).map(|p| json!(p));
            }
            if method.starts_with("dstore-") && i == 0 {
                return Ok(json!(arg));
            }
            Ok(serde_json::from_str(arg).unwrap_or_else(|_| json!(arg)))
        })
        .collect()
}

fn absolute(path: &str) -> Result<String, String> {
    std::path::absolute(Path::new(path))
        .map(|p| p.display().to_string())
        .map_err(|e| format!("{path}: {e}"))
}

/// How long each repeated `dstore-download` call waits for the background download.
const FOLLOW_WAIT_SECONDS: u64 = 600;

/// `dstore download <id> <out>`: the download goes on in the background once it waits
/// for TX1's confirmations and TX2 (tens of minutes on mainnet), so this calls
/// `dstore-download` again, each time waiting up to [`FOLLOW_WAIT_SECONDS`], until it
/// returns the outcome; the progress bar shows the phase throughout.
fn follow_download(client: &Client, mut params: Vec<Value>, quiet: bool) -> Result<Value, String> {
    loop {
        let result = if quiet {
            client.call("dstore-download", &params)?
        } else {
            with_progress(client, "dstore-download", params.clone())?
        };
        if !matches!(result["status"].as_str(), Some("waiting" | "running")) {
            return Ok(result);
        }
        if params.len() < 3 {
            params.push(json!(FOLLOW_WAIT_SECONDS));
        }
    }
}

/// Runs a long call on a thread while a progress bar follows `dstore-status`.
fn with_progress(client: &Client, method: &str, params: Vec<Value>) -> Result<Value, String> {
    let (tx, rx) = mpsc::channel();
    let call = Client {
        http: client.http.clone(),
        url: client.url.clone(),
        auth: client.auth.clone(),
    };
    let (m, p) = (method.to_string(), params.clone());
    std::thread::spawn(move || {
        let _ = tx.send(call.call(&m, &p));
    });
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>16} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec})",
        )
        .map_err(|e| e.to_string())?
        .progress_chars("=> "),
    );
    let mut phase = String::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(result) => {
                bar.finish_and_clear();
                return result;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err("the call failed".into()),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Some(status) = current_status(client, method, &params) {
            let now = status["phase"].as_str().unwrap_or("").to_string();
            if now != phase {
                bar.set_position(0);
                bar.set_message(now.clone());
                phase = now;
            }
            bar.set_length(status["bytes_total"].as_u64().unwrap_or(0));
            bar.set_position(status["bytes_done"].as_u64().unwrap_or(0));
        }
    }
}

/// The running operation's status: by contract id for a download, by source file (its id
/// is not known yet) for an open.
fn current_status(client: &Client, method: &str, params: &[Value]) -> Option<Value> {
    if method == "dstore-download" {
        return client.call("dstore-status", &params[..1]).ok();
    }
    let source = params.get(1)?.as_str()?;
    let list = client.call("dstore-list", &[]).ok()?;
    list.as_array()?
        .iter()
        .find(|c| c["running"] == json!(true) && c["source"] == json!(source))
        .cloned()
}
