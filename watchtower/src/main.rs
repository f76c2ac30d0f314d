//! `dstore-watchtower`: parse the configuration, start logging, run the service.

use std::process::ExitCode;

use dstore_daemon::config::ConfigError;
use dstore_watchtower::config::Config;
use dstore_watchtower::service;

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(ConfigError::Invalid(e)) => e.exit(),
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::FAILURE;
        }
    };
    dstore_daemon::logging::init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(service::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}
