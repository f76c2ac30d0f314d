#!/usr/bin/env bash
# Runs every dstore test: formatting, unit tests, the regtest functional tests against a
# real bitcoind (built once by scripts/install-bitcoind.sh and cached), and clippy.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "test.sh: $*" >&2; }

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

log "cargo fmt --check"
cargo fmt --all -- --check

log "building (one build for every test binary and the dstore binaries)"
cargo build --workspace --all-targets --locked
cargo build --workspace --bins --locked

# Regtest scenarios spend most of their time waiting on bitcoind, so run more of them at
# once than there are cores.
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

log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "all tests passed"
