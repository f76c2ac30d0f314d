#!/usr/bin/env bash
# dstore demo on regtest, end to end, with one command.
#
# For now (foundation): starts a regtest bitcoind and a dstore-plugin in front of it,
# funds the plugin's wallet by mining through the plugin, and talks to both with plain
# bitcoin-cli. Everything runs in a temporary directory on loopback ports and is stopped
# at the end. The last line is "demo: OK" only when every step did what it should.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }
die() { echo "demo: FAILED: $*" >&2; exit 1; }

step "Bitcoin Core (built from the libbitcoinkernel-sys crate's source, cached)"
BIN="$(scripts/install-bitcoind.sh | tail -n 1)"
"$BIN/bitcoind" -version | head -n 1

step "Building dstore"
cargo build --quiet --bins
PLUGIN="$PWD/target/debug/dstore-plugin"

WORK="$(mktemp -d)"
BITCOIND_PID=""
PLUGIN_PID=""
cleanup() {
  [ -n "$PLUGIN_PID" ] && kill "$PLUGIN_PID" 2>/dev/null && wait "$PLUGIN_PID" 2>/dev/null
  [ -n "$BITCOIND_PID" ] && kill "$BITCOIND_PID" 2>/dev/null && wait "$BITCOIND_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NODE_RPC="$(free_port)"; NODE_P2P="$(free_port)"; PLUGIN_RPC="$(free_port)"
ZMQ_TX="$(free_port)"; ZMQ_BLOCK="$(free_port)"; ZMQ_SEQ="$(free_port)"

step "Starting regtest bitcoind (RPC port $NODE_RPC, ZMQ on)"
mkdir -p "$WORK/bitcoind"
"$BIN/bitcoind" -regtest -datadir="$WORK/bitcoind" -port="$NODE_P2P" -rpcport="$NODE_RPC" \
  -rpcbind=127.0.0.1 -rpcallowip=127.0.0.1 -listen=0 -dnsseed=0 -txindex=1 -printtoconsole=0 \
  -zmqpubrawtx="tcp://127.0.0.1:$ZMQ_TX" -zmqpubrawblock="tcp://127.0.0.1:$ZMQ_BLOCK" \
  -zmqpubsequence="tcp://127.0.0.1:$ZMQ_SEQ" &
BITCOIND_PID=$!
NODE_CLI=("$BIN/bitcoin-cli" -regtest -datadir="$WORK/bitcoind" -rpcport="$NODE_RPC")
"${NODE_CLI[@]}" -rpcwait -rpcwaittimeout=60 getblockcount >/dev/null || die "bitcoind did not start"

step "Starting dstore-plugin (RPC port $PLUGIN_RPC)"
"$PLUGIN" --datadir="$WORK/plugin" --network=regtest \
  --bitcoind-rpc-url="http://127.0.0.1:$NODE_RPC" \
  --bitcoind-cookie="$WORK/bitcoind/regtest/.cookie" \
  --rpc-port="$PLUGIN_RPC" 2>"$WORK/plugin.log" &
PLUGIN_PID=$!
for _ in $(seq 1 100); do
  [ -f "$WORK/plugin/regtest/.cookie" ] && break
  kill -0 "$PLUGIN_PID" 2>/dev/null || { cat "$WORK/plugin.log" >&2; die "dstore-plugin exited"; }
  sleep 0.2
done
[ -f "$WORK/plugin/regtest/.cookie" ] || die "dstore-plugin did not start"
CLI=("$BIN/bitcoin-cli" -regtest -rpcport="$PLUGIN_RPC" -rpccookiefile="$WORK/plugin/regtest/.cookie")
echo "talk to it with: bitcoin-cli -regtest -rpcport=$PLUGIN_RPC -rpccookiefile=<datadir>/regtest/.cookie <method>"

step "bitcoind's own methods pass through the plugin"
echo "getblockcount via bitcoind: $("${NODE_CLI[@]}" getblockcount)"
echo "getblockcount via plugin:   $("${CLI[@]}" getblockcount)"

step "Funding the plugin's wallet: mine 100 blocks to its address (a coinbase is spendable 100 deep)"
ADDR="$("${CLI[@]}" dstore-getnewaddress)"
echo "wallet address: $ADDR"
"${CLI[@]}" generatetoaddress 100 "$ADDR" >/dev/null
BALANCE="$("${CLI[@]}" dstore-getbalance)"
echo "wallet balance: $BALANCE BTC"

step "Paying 1 BTC from the plugin's wallet and mining it"
DEST="$("${CLI[@]}" dstore-getnewaddress)"
TXID="$("${CLI[@]}" dstore-send "$DEST" 1)"
echo "txid: $TXID"
"${CLI[@]}" generatetoaddress 1 "$ADDR" >/dev/null
CONFS="$("${CLI[@]}" getrawtransaction "$TXID" true | python3 -c 'import json,sys; print(json.load(sys.stdin).get("confirmations",0))')"
echo "confirmations: $CONFS"

step "dstore-getinfo"
"${CLI[@]}" dstore-getinfo | tee "$WORK/getinfo.json"

python3 - "$WORK/getinfo.json" "$BALANCE" "$CONFS" <<'PY' || die "unexpected results"
import json, sys
info = json.load(open(sys.argv[1]))
assert info["network"] == "regtest", info
assert info["blocks"] == 101, info
assert float(sys.argv[2]) == 50.0, sys.argv[2]
assert int(sys.argv[3]) == 1, sys.argv[3]
PY
echo
echo "demo: OK"
