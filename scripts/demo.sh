#!/usr/bin/env bash
# dstore demo on regtest, end to end, with one command.
#
# Starts a regtest bitcoind, a watchtower, a farmer dstore-plugin and a renter dstore-plugin
# registered with the tower, funds the
# renter, stores a 16 MiB file with the farmer (dstore-open), buys it back through the
# paid mode-L chain (dstore-download: TX1, TX2, Groth16 proof, TX3), compares checksums
# and prints every txid and the farmer's payout. Everything is driven with plain
# bitcoin-cli, runs in a temporary directory on loopback ports, and is stopped at the
# end. Last (scripts/demo-ln.sh) both plugins' embedded Lightning nodes open a channel and
# the renter buys the file back over it (mode N, nothing on-chain), and both downloads'
# costs are printed. The last line is "demo: OK" only when the downloaded files match the original.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }
die() { echo "demo: FAILED: $*" >&2; exit 1; }
json() { python3 -c "import json,sys; v=json.load(sys.stdin); print(eval(sys.argv[1], {'v': v}))" "$1"; }

SIZE_MIB="${DSTORE_DEMO_MIB:-16}"
# The renter's Groth16 CRS (made once per TX2 shape) and the farmer's record of having
# checked it are kept between runs, like Bitcoin Core's build.
CRS_DIR="${DSTORE_CRS_DIR:-$HOME/.cache/dstore/crs}"

step "1. Bitcoin Core (built from the libbitcoinkernel-sys crate's source, cached)"
BIN="$(scripts/install-bitcoind.sh | tail -n 1)"
"$BIN/bitcoind" -version | head -n 1

step "Building dstore"
scripts/install-build-deps.sh
cargo build --quiet --bins
PLUGIN="$PWD/target/debug/dstore-plugin"
TOWER="$PWD/target/debug/dstore-watchtower"

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NODE_RPC="$(free_port)"; NODE_P2P="$(free_port)"
FARMER_RPC="$(free_port)"; RENTER_RPC="$(free_port)"; PEER="$(free_port)"
FARMER_LN="$(free_port)"; RENTER_LN="$(free_port)"
ZMQ_TX="$(free_port)"; ZMQ_BLOCK="$(free_port)"; ZMQ_SEQ="$(free_port)"; TOWER_RPC="$(free_port)"

step "1. Starting regtest bitcoind (RPC port $NODE_RPC, ZMQ on)"
mkdir -p "$WORK/bitcoind"
"$BIN/bitcoind" -regtest -datadir="$WORK/bitcoind" -port="$NODE_P2P" -rpcport="$NODE_RPC" \
  -rpcbind=127.0.0.1 -rpcallowip=127.0.0.1 -listen=0 -dnsseed=0 -txindex=1 -printtoconsole=0 \
  -zmqpubrawtx="tcp://127.0.0.1:$ZMQ_TX" -zmqpubrawblock="tcp://127.0.0.1:$ZMQ_BLOCK" \
  -zmqpubsequence="tcp://127.0.0.1:$ZMQ_SEQ" &
PIDS+=($!)
NODE_CLI=("$BIN/bitcoin-cli" -regtest -datadir="$WORK/bitcoind" -rpcport="$NODE_RPC")
"${NODE_CLI[@]}" -rpcwait -rpcwaittimeout=60 getblockcount >/dev/null || die "bitcoind did not start"
# One block ends regtest's initial block download (the watchtower refuses to run during it).
"${NODE_CLI[@]}" generatetodescriptor 1 "raw(51)" >/dev/null

step "1. Starting the renter's dstore-watchtower (RPC $TOWER_RPC, subscribed to bitcoind's ZMQ)"
"$TOWER" --datadir="$WORK/tower" --network=regtest \
  --bitcoind-rpc-url="http://127.0.0.1:$NODE_RPC" --bitcoind-cookie="$WORK/bitcoind/regtest/.cookie" \
  --zmq-rawtx="tcp://127.0.0.1:$ZMQ_TX" --zmq-rawblock="tcp://127.0.0.1:$ZMQ_BLOCK" \
  --zmq-sequence="tcp://127.0.0.1:$ZMQ_SEQ" --rpc-port="$TOWER_RPC" --merkle-audit-every=2 \
  2>"$WORK/tower.log" &
PIDS+=($!)
for _ in $(seq 1 100); do [ -f "$WORK/tower/regtest/.cookie" ] && break; sleep 0.2; done
[ -f "$WORK/tower/regtest/.cookie" ] || { cat "$WORK/tower.log" >&2; die "the watchtower did not start"; }
TOWER_CLI=("$BIN/bitcoin-cli" -regtest -rpcport="$TOWER_RPC" -rpccookiefile="$WORK/tower/regtest/.cookie")
"${TOWER_CLI[@]}" tower-getinfo

start_plugin() { # name rpc_port extra flags...
  local name="$1" port="$2"; shift 2
  "$PLUGIN" --datadir="$WORK/$name" --network=regtest \
    --bitcoind-rpc-url="http://127.0.0.1:$NODE_RPC" \
    --bitcoind-cookie="$WORK/bitcoind/regtest/.cookie" \
    --rpc-port="$port" --crs-cache-dir="$CRS_DIR" "$@" 2>"$WORK/$name.log" &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 1 300); do
    [ -f "$WORK/$name/regtest/.cookie" ] && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$WORK/$name.log" >&2; die "$name plugin exited"; }
    sleep 0.2
  done
  die "$name plugin did not start"
}

step "1. Starting the farmer plugin (RPC $FARMER_RPC, peer endpoint 127.0.0.1:$PEER)"
start_plugin farmer "$FARMER_RPC" --farmer --peer-bind="127.0.0.1:$PEER" \
  --storage-dir="$WORK/farmer-storage" --price-per-download-sat=50000 --max-file-bytes=1073741824 \
  --lightning --ln-listen="127.0.0.1:$FARMER_LN"
FARMER=("$BIN/bitcoin-cli" -regtest -rpcport="$FARMER_RPC" -rpccookiefile="$WORK/farmer/regtest/.cookie")
"${FARMER[@]}" dstore-getinfo

step "1. Starting the renter plugin (RPC $RENTER_RPC)"
start_plugin renter "$RENTER_RPC" --watchtower-url="http://127.0.0.1:$TOWER_RPC" \
  --watchtower-cookie="$WORK/tower/regtest/.cookie" --lightning --ln-listen="127.0.0.1:$RENTER_LN"
RENTER=("$BIN/bitcoin-cli" -regtest -rpcport="$RENTER_RPC" -rpccookiefile="$WORK/renter/regtest/.cookie")
echo "talk to them with: bitcoin-cli -regtest -rpcport=<port> -rpccookiefile=<datadir>/regtest/.cookie <method>"

step "2. Funding the renter: mine 101 blocks to its wallet (a coinbase is spendable 100 deep)"
ADDR="$("${RENTER[@]}" dstore-getnewaddress)"
"${NODE_CLI[@]}" generatetoaddress 101 "$ADDR" >/dev/null
echo "renter wallet: $("${RENTER[@]}" dstore-getbalance) BTC"
FARMER_BEFORE="$("${FARMER[@]}" dstore-getbalance)"

step "3. dstore-open: a ${SIZE_MIB} MiB sample file, encrypted and uploaded to the farmer"
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom >"$WORK/sample.bin"
START=$(date +%s)
ID="$("${RENTER[@]}" dstore-open "http://127.0.0.1:$PEER" "$WORK/sample.bin")"
echo "contract id: $ID ($(( $(date +%s) - START )) s)"
"${RENTER[@]}" dstore-status "$ID" \
  | json '"renter: %s, %s/%s bytes, root_C %s" % (v["phase"], v["bytes_done"], v["bytes_total"], v["root_c"])'
"${FARMER[@]}" dstore-status "$ID" \
  | json '"farmer: %s, %s bytes, stores it until height %s" % (v["phase"], v["bytes_done"], v["expiry_height"])'

step "4. dstore-download: E checked, TX1 funded, TX2 signed, proof verified, TX3 signed, f extracted"
echo "(the first download on a machine also generates the renter's CRS and the farmer checks it: a minute or two)"
START=$(date +%s)
# dstore-download returns once the download only waits for the chain: the farmer
# broadcasts TX2 (which reveals f) only after TX1 has confirmed. Mine a block whenever
# the renter waits for TX1's confirmations, then ask again for the outcome.
"${RENTER[@]}" dstore-download "$ID" "$WORK/downloaded.bin" | tee "$WORK/download.json"
while [ "$(json 'v.get("status")' <"$WORK/download.json")" != "done" ]; do
  case "$(json 'v.get("status")' <"$WORK/download.json")" in
    waiting|running) ;;
    *) die "the download did not finish" ;;
  esac
  PHASE="$("${RENTER[@]}" dstore-status "$ID" | json 'v["phase"]')"
  case "$PHASE" in
    "waiting for TX1 confirmations"*)
      echo "$PHASE: mining one block"
      "${NODE_CLI[@]}" generatetodescriptor 1 "raw(51)" >/dev/null ;;
  esac
  "${RENTER[@]}" dstore-download "$ID" "$WORK/downloaded.bin" 5 >"$WORK/download.json"
done
cat "$WORK/download.json"
CHAIN_SECONDS=$(( $(date +%s) - START ))
echo "download took $CHAIN_SECONDS s"

step "5. Comparing checksums"
A="$(sha256sum <"$WORK/sample.bin" | cut -d' ' -f1)"
B="$(sha256sum <"$WORK/downloaded.bin" | cut -d' ' -f1)"
echo "original:   $A"
echo "downloaded: $B"
[ "$A" = "$B" ] || die "the downloaded file differs"

step "6. Transactions and the farmer's payout"
TX1="$(json 'v["tx1"]' <"$WORK/download.json")"
TX2="$(json 'v["tx2"]' <"$WORK/download.json")"
TX3="$(json 'v["tx3"]' <"$WORK/download.json")"
echo "mining one block"
"${NODE_CLI[@]}" generatetoaddress 1 "$ADDR" >/dev/null
for name in TX1 TX2 TX3; do
  txid="${!name}"
  confs="$("${NODE_CLI[@]}" getrawtransaction "$txid" true | json 'v.get("confirmations", 0)')"
  echo "$name: $txid (confirmations: $confs)"
  [ "$confs" -ge 1 ] || die "$name is not mined"
done
"${FARMER[@]}" dstore-status "$ID" \
  | json '"farmer payouts: " + ", ".join("%s sat in TX3 %s" % (p["amount_sat"], p["tx3"]) for p in v["payouts"])'
FARMER_AFTER="$("${FARMER[@]}" dstore-getbalance)"
echo "farmer wallet: $FARMER_BEFORE BTC -> $FARMER_AFTER BTC"
python3 -c "import sys; sys.exit(0 if float('$FARMER_AFTER') > float('$FARMER_BEFORE') else 1)" \
  || die "the farmer was not paid"

step "7. The renter's watchtower: it holds this download's refunds and extracted f from TX2"
DL="$(json 'v["download_id"]' <"$WORK/download.json")"
"${TOWER_CLI[@]}" tower-status "$DL" >"$WORK/tower-status.json"
json '"key extracted from TX2 %s: %s" % (v["key"]["tx2_txid"], "yes" if v["key"] else "no")' <"$WORK/tower-status.json"
json '"\n".join("%s %s: %s" % (t["name"], t["txid"], t["status"]["state"]) for t in v["transactions"])' <"$WORK/tower-status.json"
json 'v["key"] is not None' <"$WORK/tower-status.json" | grep -q True || die "the watchtower has no key"

step "8. Audit contract: dstore-open with 3 audits, one every 8 blocks, 20000 sat each"
echo "(the renter's watchtower is the auditor: it holds the salts and runs a Merkle audit every 2 blocks)"
head -c $((1024 * 1024)) /dev/urandom >"$WORK/audited.bin"
OPENED="$("${RENTER[@]}" dstore-open "http://127.0.0.1:$PEER" "$WORK/audited.bin" 50000 3 8 20000)"
case "$OPENED" in
  "{"*) # TX_A (with the renter's stake) is out; the farmer tosses once it is confirmed
    AID="$(printf '%s' "$OPENED" | json 'v["contract_id"]')"
    "${NODE_CLI[@]}" generatetodescriptor 1 "raw(51)" >/dev/null
    PHASE=""
    for _ in $(seq 1 120); do
      PHASE="$("${RENTER[@]}" dstore-status "$AID" | json 'v["audits"]["phase"]')"
      [ "$PHASE" = complete ] || [ "$PHASE" = failed ] && break
      sleep 1
    done
    [ "$PHASE" = complete ] \
      || die "the audit setup did not complete: $("${RENTER[@]}" dstore-status "$AID" | json 'v["audits"]')"
    ;;
  *) AID="$OPENED" ;;
esac
"${RENTER[@]}" dstore-status "$AID" >"$WORK/audit-status.json"
json '"contract %s: %s, %s candidate signatures swapped, TX_A %s" % (v["contract_id"], v["audits"]["phase"], v["audits"]["swapped"], v["audits"]["funding_txid"])' <"$WORK/audit-status.json"
json '"audit heights T_i: %s (claim window W = %s blocks)" % (v["audits"]["heights"], v["audits"]["claim_window_blocks"])' <"$WORK/audit-status.json"
T0="$(json 'v["audits"]["heights"][0]' <"$WORK/audit-status.json")"
T1="$(json 'v["audits"]["heights"][1]' <"$WORK/audit-status.json")"
T2="$(json 'v["audits"]["heights"][2]' <"$WORK/audit-status.json")"
W="$(json 'v["audits"]["claim_window_blocks"]' <"$WORK/audit-status.json")"
FARMER_BEFORE="$("${FARMER[@]}" dstore-getbalance)"
mine_to() { # height: one block at a time (to an anyone-can-spend script, so the wallets
  # below change only by the audits), giving the tower and the farmer time to act
  while [ "$("${NODE_CLI[@]}" getblockcount)" -lt "$1" ]; do
    "${NODE_CLI[@]}" generatetodescriptor 1 "raw(51)" >/dev/null
    sleep 1
  done
}
audit_report() {
  "${RENTER[@]}" dstore-status "$AID" >"$WORK/audit-status.json"
  json '"\n".join("audit %s at height %s: %s" % (a.get("audit"), a.get("height"), a.get("outcome")) for a in v["audits"]["tower"]["audits"])' <"$WORK/audit-status.json"
  json '"Merkle audits: %s passed, %s failed" % (v["audits"]["tower"]["merkle"]["passed"], v["audits"]["tower"]["merkle"]["failed"])' <"$WORK/audit-status.json"
}

step "9. Audit 0: at T_0 = $T0 the tower broadcasts the beacon's candidate, releases its salt, the farmer claims"
mine_to "$((T0 + 2))"
for _ in $(seq 1 30); do
  CLAIMS="$("${FARMER[@]}" dstore-status "$AID" | json 'len(v["audits"]["claims"])')"
  [ "$CLAIMS" -ge 1 ] && break; sleep 1
done
[ "$CLAIMS" -ge 1 ] || die "the farmer did not claim audit 0"
"${NODE_CLI[@]}" generatetodescriptor 1 "raw(51)" >/dev/null
"${FARMER[@]}" dstore-status "$AID" \
  | json '"\n".join("farmer claimed audit %s: %s sat in %s" % (c["audit"], c["amount_sat"], c["claim_txid"]) for c in v["audits"]["claims"])'
echo "farmer wallet: $FARMER_BEFORE BTC -> $("${FARMER[@]}" dstore-getbalance) BTC"
audit_report

step "10. The farmer loses the file; audit 1 (T_1 = $T1) cannot be claimed, and after W the renter's refund takes the rest back"
BLOB="$WORK/farmer-storage/objects/blobs/$AID"
[ -f "$BLOB" ] || die "no farmer blob at $BLOB"
head -c "$(stat -c %s "$BLOB")" /dev/zero >"$BLOB.zero" && mv "$BLOB.zero" "$BLOB"
echo "overwrote the farmer's copy with zeros"
mine_to "$((T2 + W + 3))"
audit_report
json 'v["audits"]["tower"]["audits"][1]["outcome"]' <"$WORK/audit-status.json" | grep -q refunded \
  || die "audit 1 was not refunded"
REFUND="$(json 'v["audits"]["tower"]["audits"][1]["settled_by"]' <"$WORK/audit-status.json")"
"${NODE_CLI[@]}" getrawtransaction "$REFUND" true \
  | json '"refund %s (%d confirmations): %.8f BTC back to the renter (audit 1\x27s candidate output and audit 2\x27s output, less the fee)" % (v["txid"], v.get("confirmations", 0), sum(o["value"] for o in v["vout"]))'
. scripts/demo-ln.sh
echo
echo "demo: OK"
