#!/bin/bash
# Multi-host rehearsal: every service in its own network namespace with its own address (as pods
# would be), joined by a bridge that lives in a "switch" namespace, so nothing touches the host's
# network. From a client namespace: ingest the corpus through the router, ask a question, then
# kill -9 the decoder that is answering a long question and check the answer still arrives
# complete from the other decoder.
# Usage: netns_rehearsal.sh <repo root> <bin dir>. Needs root (ip netns); exit 77 = skipped.
set -euo pipefail
ROOT="$1"
BIN="$2"
if [ "$(id -u)" -ne 0 ] || ! command -v ip >/dev/null; then
  echo "SKIPPED: needs root and iproute2 (ip netns) to build the namespaces"
  exit 77
fi
TAG="rs$$"
NET=10.77.$(($$ % 200 + 20))
TMP=$(mktemp -d)
HOSTS=(sw idx dec0 dec1 router client)
declare -A ADDR=([idx]=$NET.2 [dec0]=$NET.3 [dec1]=$NET.4 [router]=$NET.5 [client]=$NET.6)
PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for h in "${HOSTS[@]}"; do ip netns del "$TAG-$h" 2>/dev/null || true; done
  if [ "${KEEP:-0}" = 1 ]; then echo "logs in $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

if ! ip netns add "$TAG-sw" 2>/dev/null; then
  echo "SKIPPED: cannot create network namespaces here"
  exit 77
fi
ip -n "$TAG-sw" link add br0 type bridge
ip -n "$TAG-sw" link set br0 up
for h in idx dec0 dec1 router client; do
  ip netns add "$TAG-$h"
  ip link add "$TAG-$h" type veth peer name eth0 netns "$TAG-$h"
  ip link set "$TAG-$h" netns "$TAG-sw"
  ip -n "$TAG-sw" link set "$TAG-$h" master br0 up
  ip -n "$TAG-$h" addr add "${ADDR[$h]}/24" dev eth0
  ip -n "$TAG-$h" link set eth0 up
  ip -n "$TAG-$h" link set lo up
done

in_ns() { local h="$1"; shift; ip netns exec "$TAG-$h" "$@"; }

start() {  # start <host> <binary> <port> <metrics port> args...
  local h="$1" bin="$2" port="$3" mport="$4"
  shift 4
  ip netns exec "$TAG-$h" "$BIN/$bin" --host "${ADDR[$h]}" --port "$port" --metrics-port "$mport" \
    --ready-file "$TMP/$h.ready" "$@" >"$TMP/$h.log" 2>&1 &
  PIDS+=($!)
  eval "PID_$h=$!"
  disown $!
  for _ in $(seq 1 300); do
    [ -s "$TMP/$h.ready" ] && return 0
    sleep 0.1
  done
  echo "FAIL: $h did not start"; cat "$TMP/$h.log"; exit 1
}

"$BIN/make-tiny-model" --out "$TMP/model" --corpus "$ROOT/data/corpus/passages.jsonl" >/dev/null
start idx ragserve-index 50052 9092 --data-dir "$TMP/index"
start dec0 ragserve-decoder 50055 9095 --model "$TMP/model" --worker-id dec0
start dec1 ragserve-decoder 50055 9095 --model "$TMP/model" --worker-id dec1
start router ragserve-router 50051 9091 --index-addr "${ADDR[idx]}:50052" \
  --decoders "${ADDR[dec0]}:50055,${ADDR[dec1]}:50055" --poll-interval 0.2

RAGCTL=(in_ns client "$BIN/ragctl" --addr "${ADDR[router]}:50051")
"${RAGCTL[@]}" ingest "$ROOT/data/corpus/passages.jsonl" --collection docs --create
OUT=$("${RAGCTL[@]}" query "How long is the Nawerk River in kilometres?" --collection docs \
  --max-tokens 32 --ignore-eos)
echo "$OUT" | head -8
echo "$OUT" | grep -q "\[p0006\]" || { echo "FAIL: passage p0006 not retrieved across hosts"; exit 1; }
echo "$OUT" | grep -q "generated 32" || { echo "FAIL: answer not complete"; exit 1; }

# Failover across hosts: kill -9 the decoder that is answering.
"${RAGCTL[@]}" query "Tell me about the Nawerk River" --collection docs --max-tokens 1500 \
  --ignore-eos --no-passages >"$TMP/long.out" 2>&1 &
QPID=$!
killed=""
for _ in $(seq 1 200); do
  for d in dec0 dec1; do
    if in_ns client "$BIN/ragctl" --addr "${ADDR[$d]}:50055" load 2>/dev/null | grep -q "active 1/"; then
      pid_var="PID_$d"
      kill -KILL "${!pid_var}"
      killed=$d
      break 2
    fi
  done
  sleep 0.02
done
[ -n "$killed" ] || { echo "FAIL: never saw a decoder generating"; exit 1; }
wait $QPID || { echo "FAIL: query failed after killing $killed"; cat "$TMP/long.out"; exit 1; }
tail -3 "$TMP/long.out"
grep -q "generated 1500" "$TMP/long.out" || { echo "FAIL: answer incomplete after failover"; exit 1; }
grep -q "retries 1" "$TMP/long.out" || { echo "FAIL: expected one failover"; exit 1; }
echo "PASS: multi-host cluster answered across namespaces; $killed killed mid-answer, answer complete"
