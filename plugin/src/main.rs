//! `dstore-plugin`: parse the configuration, start logging, run the daemon; or, when
//! lightningd starts it (`LIGHTNINGD_PLUGIN=1`), run as a Core Lightning plugin.

use std::process::ExitCode;

use dstore_daemon::config::ConfigError as DaemonConfigError;
use dstore_plugin::config::{Config, ConfigError};
use dstore_plugin::daemon;

fn main() -> ExitCode {
    if dstore_plugin::cln::is_plugin_mode() {
        // stdout is lightningd's protocol channel: no stderr logger, no other output.
        return dstore_plugin::cln::main();
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        // clap formats --help, --version and usage errors itself.
        Err(ConfigError::Daemon(DaemonConfigError::Invalid(e))) => e.exit(),
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::FAILURE;
        }
    };
    dstore_plugin::logging::init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}
