//! `dstore-watchtower`: the always-on enforcement service. Only a skeleton so far: it
//! parses its command line and says plainly that enforcement does not exist yet.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "dstore-watchtower",
    version,
    about = "dstore watchtower (not implemented yet)"
)]
struct Args {
    /// Data directory
    #[arg(long, value_name = "DIR")]
    datadir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let _args = Args::parse();
    eprintln!("dstore-watchtower: contract enforcement is not implemented yet; nothing is watched");
    ExitCode::FAILURE
}
