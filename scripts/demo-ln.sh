# dstore demo, Lightning part (mode N): sourced at the end of scripts/demo.sh, whose
# renter and farmer run with --lightning. Buys the demo's file back a second time, paid
# over a Lightning channel instead of the mode-L chain, and prints both downloads' costs.
#
# Uses demo.sh's RENTER, FARMER, NODE_CLI, ID, WORK, json, step, die and
# $WORK/download.json and CHAIN_SECONDS (step 4's mode-L download).

LN_CHANNEL_SAT=1000000
wait_for() { # what, seconds, command...: runs the command once a second until it succeeds
  local what="$1" secs="$2"; shift 2
  for _ in $(seq 1 "$secs"); do "$@" && return 0; sleep 1; done
  die "timed out waiting for $what"
}
ln_spendable() { "$@" dstore-ln-getinfo | json 'v["spendable_onchain_sat"]'; }
ln_has_at_least() { [ "$(ln_spendable "${@:2}")" -ge "$1" ]; }
usable() { "$@" dstore-ln-listchannels | json 'any(c["is_usable"] for c in v)' | grep -q True; }
mempool_empty() { [ "$("${NODE_CLI[@]}" getrawmempool | json 'len(v)')" = 0 ]; }

step "11. Lightning: both plugins run an embedded LDK node (chain source: the same bitcoind)"
"${RENTER[@]}" dstore-ln-getinfo | json '"renter node %s at %s" % (v["node_id"], v["addresses"][0])'
"${FARMER[@]}" dstore-ln-getinfo | json '"farmer node %s at %s" % (v["node_id"], v["addresses"][0])'
curl -fsS "http://127.0.0.1:$PEER/dstore/v1/info" \
  | json '"the farmer advertises on /dstore/v1/info: %s" % v["lightning"]'

step "12. Funding both Lightning wallets from the renter wallet and opening a channel renter -> farmer"
echo "(LDK anchor channels keep 25000 sat on-chain on each side for fee bumping)"
"${RENTER[@]}" dstore-send "$("${RENTER[@]}" dstore-ln-newaddress | json 'v["address"]')" 0.011 >/dev/null
"${RENTER[@]}" dstore-send "$("${FARMER[@]}" dstore-ln-newaddress | json 'v["address"]')" 0.0005 >/dev/null
"${NODE_CLI[@]}" generatetodescriptor 1 "raw(51)" >/dev/null
wait_for "the renter's Lightning wallet" 120 ln_has_at_least 1100000 "${RENTER[@]}"
wait_for "the farmer's Lightning wallet" 120 ln_has_at_least 50000 "${FARMER[@]}"
FARMER_LN="$("${FARMER[@]}" dstore-ln-getinfo | json 'v["node_id"] + "@" + v["addresses"][0]')"
"${RENTER[@]}" dstore-ln-connect "$FARMER_LN" >/dev/null
"${RENTER[@]}" dstore-ln-openchannel "$FARMER_LN" "$LN_CHANNEL_SAT" >"$WORK/channel.json"
FUNDING="$(json 'v["funding_txid"]' <"$WORK/channel.json")"
FUNDING_VB="$("${NODE_CLI[@]}" getrawtransaction "$FUNDING" true | json 'v["vsize"]')"
echo "channel $(json 'v["channel_id"]' <"$WORK/channel.json"): funding tx $FUNDING ($FUNDING_VB vB), mining 6 blocks"
"${NODE_CLI[@]}" generatetodescriptor 6 "raw(51)" >/dev/null
wait_for "the channel on the renter's side" 120 usable "${RENTER[@]}"
wait_for "the channel on the farmer's side" 120 usable "${FARMER[@]}"
"${RENTER[@]}" dstore-ln-listchannels \
  | json '"\n".join("renter channel %s: capacity %s sat, outbound %s msat, usable %s" % (c["channel_id"], c["capacity_sat"], c["outbound_msat"], c["is_usable"]) for c in v)'

step "13. dstore-download ... ln: the same file bought back over Lightning (mode N)"
mempool_empty || die "the mempool is not empty before the Lightning download"
HEIGHT_BEFORE="$("${NODE_CLI[@]}" getblockcount)"
START=$(date +%s)
"${RENTER[@]}" dstore-download "$ID" "$WORK/downloaded-ln.bin" 300 ln | tee "$WORK/download-ln.json"
LN_SECONDS=$(( $(date +%s) - START ))
[ "$(json 'v.get("status")' <"$WORK/download-ln.json")" = done ] || die "the Lightning download did not finish"
[ "$(json 'v.get("mode")' <"$WORK/download-ln.json")" = ln ] || die "the download was not paid over Lightning"
C="$(sha256sum <"$WORK/downloaded-ln.bin" | cut -d' ' -f1)"
echo "original:               $A"
echo "downloaded (Lightning): $C"
[ "$A" = "$C" ] || die "the file bought over Lightning differs"
mempool_empty || die "the Lightning download put a transaction in the mempool"
[ "$("${NODE_CLI[@]}" getblockcount)" = "$HEIGHT_BEFORE" ] || die "blocks were needed"
echo "no transaction in the mempool, no block needed: the download took $LN_SECONDS s"

step "14. What each download cost: price, fees and block space"
tx_cost() { # txid -> "vsize fee_sat"
  "${NODE_CLI[@]}" getrawtransaction "$1" 2 | json '"%d %d" % (v["vsize"], round(v.get("fee", 0) * 1e8))'
}
CHAIN_VB=0; CHAIN_FEE=0
for name in tx1 tx2 tx3; do
  read -r vb fee <<<"$(tx_cost "$(json "v[\"$name\"]" <"$WORK/download.json")")"
  CHAIN_VB=$((CHAIN_VB + vb)); CHAIN_FEE=$((CHAIN_FEE + fee))
done
PRICE_SAT="$(( $(json 'v["price_msat"]' <"$WORK/download-ln.json") / 1000 ))"
LN_FEE_MSAT="$(json 'v.get("fee_msat") or 0' <"$WORK/download-ln.json")"
echo "mode L (chain):     price $PRICE_SAT sat + $CHAIN_FEE sat mining fees, 3 transactions, $CHAIN_VB vB on-chain, ${CHAIN_SECONDS:-?} s"
echo "mode N (Lightning): price $PRICE_SAT sat + $LN_FEE_MSAT msat routing fee, 0 transactions, 0 vB on-chain, $LN_SECONDS s"
echo "(the channel's funding transaction, $FUNDING_VB vB, is paid once for every later download)"
