//! `dstore-bench`: dstore's benchmarks, one subcommand each. Every subcommand prints one
//! `figure-name: value` line per figure.
fn main() {}
