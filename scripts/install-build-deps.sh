#!/usr/bin/env bash
# Installs the Debian packages dstore's own build needs beyond a Rust toolchain:
# libclang (bindgen, for the rocksdb crate's C++ bindings), a C++ compiler, and OpenSSL's
# headers (TLS for the S3 object-store client), and libzmq (the watchtower's bitcoind ZMQ
# subscription).
set -euo pipefail

log() { echo "install-build-deps: $*" >&2; }

missing=()
for pkg in libclang-dev g++ libssl-dev pkg-config libzmq3-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
# Any libclang-NN-dev will do for bindgen.
if ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1; then
  missing=("${missing[@]/libclang-dev/}")
fi
packages=()
for pkg in "${missing[@]}"; do [ -n "$pkg" ] && packages+=("$pkg"); done
[ ${#packages[@]} -eq 0 ] && exit 0
log "installing: ${packages[*]}"
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
$sudo apt-get update -qq || { log "apt-get update failed"; exit 1; }
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null \
  || { log "apt-get install ${packages[*]} failed"; exit 1; }
