//! Core Lightning plugin mode: when lightningd starts `dstore-plugin` (it sets
//! `LIGHTNINGD_PLUGIN=1`), the same daemon runs as a plugin built on `cln-plugin`.
//!
//! - Options (`dstore-*`, see [`options`]) become the same flag list the bitcoind mode
//!   parses, with lightningd's network and bitcoind connection as defaults, and go through
//!   [`Config::from_args`]; [`daemon::start`] then builds the same app, without the
//!   bitcoind-dialect RPC port (lightningd carries the methods).
//! - Every `dstore-*` method of [`METHODS`] is registered with its description and usage
//!   and runs through [`methods::dispatch`], so results and errors are the bitcoind mode's.
//!   `dstore-discover` and `dstore-peers` use Lightning peers to find farmers
//!   ([`discovery`]).
//! - Mode-N downloads (PROTOCOL.md 4b) pay and sell through lightningd itself
//!   ([`crate::ln::cln`]: `invoice` with a preimage, `xpay`/`pay`, `listpays`); no embedded
//!   LDK node runs in this mode.
//! - Logs go to lightningd as `log` notifications (cln-plugin's tracing subscriber); the
//!   stderr logger is not started. [`io`] keeps stdout to protocol messages only and
//!   answers malformed input itself.
//! - If bitcoind is unreachable or on another network (or anything else stops start-up),
//!   `init` is answered with `disable` and the reason.

pub mod discovery;
pub mod io;
pub mod options;

use std::collections::HashSet;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use cln_plugin::{anyhow, Builder, ConfiguredPlugin, Error, Plugin, RpcMethodBuilder};
use serde_json::{json, Value};

use crate::config::{Config, LightningSetting};
use crate::daemon;
use crate::methods::{self, MethodSpec, METHODS};
use discovery::State;
use options::{Given, LightningdBitcoin, INT_OPTIONS, STRING_OPTIONS};

/// lightningd sets this in a plugin's environment.
pub const ENV_VAR: &str = "LIGHTNINGD_PLUGIN";

/// Methods only the Core Lightning mode has.
const DISCOVER_DESCRIPTION: &str = "Asks a connected Lightning peer (custom message 0xD5A1) whether it is a dstore farmer, and returns its peer URL and identity.";
const PEERS_DESCRIPTION: &str =
    "Lists what Lightning peers answered to dstore-discover (farmer or not, peer URL, identity).";

/// True when lightningd started this process as a plugin.
pub fn is_plugin_mode() -> bool {
    std::env::var_os(ENV_VAR).is_some()
}

/// The process entry in plugin mode.
pub fn main() -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("dstore-plugin: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run());
    // A blocked read of stdin would hold up the runtime's drop.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dstore-plugin: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `name [optional]`, lightningd's usage format.
pub fn usage(spec: &MethodSpec) -> String {
    spec.params
        .iter()
        .map(|p| {
            if p.required {
                p.name.to_string()
            } else {
                format!("[{}]", p.name)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every request method the plugin answers (for [`io`]'s filter).
pub fn request_methods() -> HashSet<String> {
    let mut names: HashSet<String> = METHODS.iter().map(|m| m.name.to_string()).collect();
    for name in [
        "getmanifest",
        "init",
        "custommsg",
        "dstore-discover",
        "dstore-peers",
    ] {
        names.insert(name.to_string());
    }
    names
}

async fn run() -> Result<(), Error> {
    let pipes = io::spawn(tokio::io::stdin(), tokio::io::stdout(), request_methods());
    let mut builder = Builder::new(pipes.input, pipes.output)
        .dynamic()
        .custommessages(vec![discovery::MSG_TYPE]);
    for o in STRING_OPTIONS {
        builder = builder.option(options::string_option(o));
    }
    for o in INT_OPTIONS {
        builder = builder.option(options::int_option(o));
    }
    for spec in METHODS {
        let name = spec.name;
        builder = builder.rpcmethod_from_builder(
            RpcMethodBuilder::new(name, move |p: Plugin<State>, params: Value| {
                dispatch(p, name, params)
            })
            .description(spec.description)
            .usage(&usage(spec)),
        );
    }
    builder = builder
        .rpcmethod_from_builder(
            RpcMethodBuilder::new(
                "dstore-discover",
                |p: Plugin<State>, params: Value| async move {
                    discovery::discover(p.state(), &params)
                        .await
                        .map_err(|(code, message)| rpc_error(code, &message))
                },
            )
            .description(DISCOVER_DESCRIPTION)
            .usage("node_id [timeout_secs]"),
        )
        .rpcmethod_from_builder(
            RpcMethodBuilder::new(
                "dstore-peers",
                |p: Plugin<State>, _params: Value| async move { Ok(discovery::peers(p.state())) },
            )
            .description(PEERS_DESCRIPTION)
            .usage(""),
        )
        .hook("custommsg", discovery::hook)
        .subscribe("shutdown", |p: Plugin<State>, _v: Value| async move {
            tracing::info!("lightningd is shutting down");
            p.state().app.request_shutdown();
            Ok(())
        });

    let Some(configured) = builder.configure().await? else {
        // lightningd --help: it hung up after getmanifest.
        return Ok(());
    };
    let state = match prepare(&configured).await {
        Ok(state) => state,
        Err(reason) => {
            tracing::error!("disabled: {reason}");
            configured.disable(&reason).await?;
            // Let the writer put the reply (and the log line) on stdout before exiting.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return Ok(());
        }
    };
    let app = state.app.clone();
    let plugin = configured.start(state).await?;
    tracing::info!(network = %app.config.network, roles = %app.roles(), "dstore plugin started");
    tokio::select! {
        _ = plugin.join() => tracing::info!("lightningd closed the plugin's stdin"),
        _ = app.shutdown_requested() => {}
    }
    app.request_shutdown();
    // The answer to dstore-stop, and the farmer's open requests, get a moment to finish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

/// Resolves the configuration and starts the daemon's app; the error is the reason
/// given to lightningd when disabling.
async fn prepare(
    configured: &ConfiguredPlugin<State, tokio::io::DuplexStream, tokio::io::DuplexStream>,
) -> Result<State, String> {
    let mut given = Given::new();
    let names = STRING_OPTIONS
        .iter()
        .map(|o| o.name)
        .chain(INT_OPTIONS.iter().map(|o| o.name));
    for name in names {
        if let Some(value) = configured.option_str(name).map_err(|e| e.to_string())? {
            given.insert(name, value);
        }
    }
    let conf = configured.configuration();
    let rpc_path = Path::new(&conf.lightning_dir).join(&conf.rpc_file);
    let bitcoin = match discovery::call(&rpc_path, "listconfigs", json!({})).await {
        Ok(list) => LightningdBitcoin::from_listconfigs(&list),
        Err(e) => {
            tracing::warn!("listconfigs failed, using dstore's bitcoind defaults: {e}");
            LightningdBitcoin::default()
        }
    };
    match discovery::call(&rpc_path, "getinfo", json!({})).await {
        Ok(info) => {
            let node = info["id"].as_str().unwrap_or("?").to_string();
            tracing::info!(%node, "attached to lightningd")
        }
        Err(e) => tracing::warn!("getinfo failed: {e}"),
    }
    let argv = options::flags(&given, &conf.lightning_dir, &conf.network, &bitcoin)?;
    let mut config = Config::from_args(argv).map_err(|e| match e {
        crate::config::ConfigError::Daemon(dstore_daemon::config::ConfigError::Invalid(e)) => e
            .to_string()
            .lines()
            .next()
            .unwrap_or("invalid option")
            .to_string(),
        other => other.to_string(),
    })?;
    // Mode N pays and sells through lightningd itself: no embedded node.
    config.lightning = LightningSetting::Cln {
        rpc_path: rpc_path.clone(),
    };
    let announce_url = match given.get("dstore-peer-url") {
        Some(cln_plugin::options::Value::String(url)) => Some(url.clone()),
        _ => config
            .farmer
            .as_ref()
            .map(|f| format!("http://{}", f.peer_bind)),
    };
    let started = daemon::start(config, false)
        .await
        .map_err(|e| e.to_string())?;
    Ok(State::new(started.app, rpc_path, announce_url))
}

/// Runs a `dstore-*` method exactly as the bitcoind mode does.
async fn dispatch(
    plugin: Plugin<State>,
    name: &'static str,
    params: Value,
) -> Result<Value, Error> {
    let app = plugin.state().app.clone();
    methods::dispatch(&app, name, &params)
        .await
        .map_err(|e| rpc_error(e.code, &e.message))
}

/// A JSON-RPC error in the form cln-plugin turns into the reply's `error` object.
fn rpc_error(code: i64, message: &str) -> Error {
    anyhow!(json!({"code": code, "message": message}).to_string())
}
