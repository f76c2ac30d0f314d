#!/usr/bin/env bash
# Build bitcoind and bitcoin-cli from the Bitcoin Core source vendored by the crates.io
# package libbitcoinkernel-sys (=0.0.21, Bitcoin Core 29.99), with ZMQ and no wallet.
# Installs into ${DSTORE_BITCOIN_DIR:-$HOME/.cache/dstore/bitcoin-core-29.99}/bin,
# skips the build when both binaries are already there, and prints that bin directory
# as its last line of standard output. Nothing of Core's source is committed here.
set -euo pipefail

CRATE_VERSION="0.0.21"
PREFIX="${DSTORE_BITCOIN_DIR:-$HOME/.cache/dstore/bitcoin-core-29.99}"
BIN="$PREFIX/bin"

die() { echo "install-bitcoind: error: $*" >&2; exit 1; }
log() { echo "install-bitcoind: $*" >&2; }

if [ -x "$BIN/bitcoind" ] && [ -x "$BIN/bitcoin-cli" ]; then
  log "already installed in $BIN"
  echo "$BIN"
  exit 0
fi

install_build_deps() {
  local missing=()
  for pkg in cmake g++ pkg-config libboost-dev libevent-dev libzmq3-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing build dependencies: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
}

# Fetch the crate with cargo through a throwaway manifest and print its unpacked path.
fetch_core_source() {
  local work="$1"
  mkdir -p "$work/src"
  cat >"$work/Cargo.toml" <<TOML
[package]
name = "fetch-bitcoin-core"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
libbitcoinkernel-sys = "=$CRATE_VERSION"

[workspace]
TOML
  echo "" >"$work/src/lib.rs"
  (cd "$work" && cargo fetch --quiet) || die "cargo fetch of libbitcoinkernel-sys $CRATE_VERSION failed"
  (cd "$work" && cargo metadata --format-version 1 --quiet) | python3 -c '
import json, os, sys
meta = json.load(sys.stdin)
for p in meta["packages"]:
    if p["name"] == "libbitcoinkernel-sys":
        print(os.path.dirname(p["manifest_path"]))
        break
' || die "could not locate the unpacked crate"
}

# The crate keeps Core's tree under bitcoin/ (older layouts used other names): find the
# directory that holds Core's top-level CMakeLists.txt and src/bitcoind.cpp.
find_core_root() {
  local crate="$1" d
  for d in "$crate" "$crate"/*/ "$crate"/*/*/; do
    d="${d%/}"
    if [ -f "$d/CMakeLists.txt" ] && [ -f "$d/src/bitcoind.cpp" ]; then
      echo "$d"; return 0
    fi
  done
  return 1
}

main() {
  command -v cargo >/dev/null || die "cargo is required"
  command -v python3 >/dev/null || die "python3 is required"
  install_build_deps
  WORK="$(mktemp -d)"
  trap 'rm -rf "$WORK"' EXIT
  local work="$WORK"
  local crate; crate="$(fetch_core_source "$work/fetch")"
  [ -d "$crate" ] || die "crate directory not found"
  local core; core="$(find_core_root "$crate")" || die "no Bitcoin Core tree in $crate"
  log "building Bitcoin Core from $core"
  # Build outside the (read-only by convention) cargo registry.
  cp -a "$core" "$work/core"
  local jobs; jobs="$(nproc 2>/dev/null || echo 2)"
  cmake -S "$work/core" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_DAEMON=ON -DBUILD_CLI=ON -DENABLE_WALLET=OFF -DWITH_ZMQ=ON -DENABLE_IPC=OFF \
    -DWITH_EMBEDDED_ASMAP=OFF -DBUILD_TESTS=OFF -DBUILD_BENCH=OFF -DBUILD_GUI=OFF \
    -DBUILD_TX=OFF -DBUILD_UTIL=OFF -DBUILD_KERNEL_LIB=OFF -DBUILD_FUZZ_BINARY=OFF \
    -DCMAKE_INSTALL_PREFIX="$PREFIX" >"$work/cmake.log" 2>&1 \
    || { tail -n 40 "$work/cmake.log" >&2; die "cmake configure failed"; }
  cmake --build "$work/build" --target bitcoind bitcoin-cli -j "$jobs" >"$work/build.log" 2>&1 \
    || { tail -n 60 "$work/build.log" >&2; die "build failed"; }
  mkdir -p "$BIN"
  local f
  for f in bitcoind bitcoin-cli; do
    local built; built="$(find "$work/build" -type f -name "$f" -perm -u+x | head -n 1)"
    [ -n "$built" ] || die "built $f not found"
    install -m 0755 "$built" "$BIN/$f.tmp" && mv "$BIN/$f.tmp" "$BIN/$f"
  done
  "$BIN/bitcoind" -version | head -n 1 >&2 || die "built bitcoind does not run"
  log "installed into $BIN"
  echo "$BIN"
}

main "$@"
