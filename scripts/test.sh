#!/usr/bin/env bash
# Runs every dstore test: formatting and clippy first (a lint fails fast), then one build,
# the unit tests and the regtest functional tests against a real bitcoind (built once by
# scripts/install-bitcoind.sh and cached). Prints how long each phase took.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "test.sh: $*" >&2; }

PHASES=()
phase_start=$SECONDS
phase() { # phase <name>: closes the running phase under that name
  PHASES+=("$1 $((SECONDS - phase_start))s")
  log "phase $1 took $((SECONDS - phase_start)) s"
  phase_start=$SECONDS
}
report() {
  log "phase times: ${PHASES[*]:-none} (total ${SECONDS} s)"
}
trap report EXIT

BITCOIN_BIN="$(scripts/install-bitcoind.sh | tail -n 1)"
export DSTORE_BITCOIN_DIR="$(dirname "$BITCOIN_BIN")"
log "bitcoind: $("$BITCOIN_BIN/bitcoind" -version | head -n 1)"

scripts/install-build-deps.sh
# A local S3-compatible server for the farmer's S3 storage test (moto's, from PyPI).
if ! command -v moto_server >/dev/null 2>&1; then
  log "installing moto[server] (local S3-compatible server for e2e_farmer_keeps_files_in_an_s3_compatible_store)"
  python3 -m pip install -q 'moto[server]'
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
fi
phase install

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
phase lint

log "building (one build for every test binary and the dstore binaries)"
cargo build --workspace --all-targets --locked
# Last, so target/debug holds the binaries exactly as the harness's own build makes them.
cargo build --workspace --bins --locked
# The test harness finds the dstore binaries built here instead of asking cargo per test.
export DSTORE_BINARIES_BUILT=1
phase build

# Regtest scenarios spend most of their time waiting on bitcoind, so run more of them at
# once than there are cores (.config/nextest.toml caps the proving ones).
THREADS="${DSTORE_TEST_THREADS:-4}"
if cargo nextest --version >/dev/null 2>&1; then
  log "running tests with cargo nextest ($THREADS at a time)"
  cargo nextest run --workspace --locked --no-fail-fast --test-threads "$THREADS"
  # nextest does not run doctests
  cargo test --workspace --locked --doc
else
  log "running tests with cargo test ($THREADS threads per test binary)"
  cargo test --workspace --locked --no-fail-fast -- --test-threads "$THREADS"
fi
phase tests
log "all tests passed"
