//! `dstore-plugin`: parse the configuration, start logging, run the daemon.

use std::process::ExitCode;

use dstore_plugin::config::{Config, ConfigError};
use dstore_plugin::daemon;

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        // clap formats --help, --version and usage errors itself.
        Err(ConfigError::Invalid(e)) => e.exit(),
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
