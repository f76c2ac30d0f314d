//! Process logging for dstore's daemons: `tracing` to stderr, filtered by `RUST_LOG`
//! (default `info`).

/// Installs the stderr subscriber; call once at start-up.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
