#!/usr/bin/env bash
# The noisy-neighbour measurement with the flood and the quiet tenant driven by separate
# `bulkhead bench` processes (so that the quiet tenant's latencies are not taken by a runtime
# that is itself busy sending the flood). Each run: a fresh server; the quiet tenant (tier
# enterprise) reads at QUIET_RATE req/s open loop, alone, then while another process floods a
# second tenant (tier free: 20 req/s, burst 40) at FLOOD_RATE req/s open loop.
#
# Settings: RUNS=5 QUIET_RATE=200 FLOOD_RATE=20000 FLOOD_CONNECTIONS=128
#   BIN=target/release/bulkhead OUT=target/bench/noisy-separate-<date>
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-5}
QUIET_RATE=${QUIET_RATE:-200}
FLOOD_RATE=${FLOOD_RATE:-20000}
FLOOD_CONNECTIONS=${FLOOD_CONNECTIONS:-128}
BIN=${BIN:-$root/target/release/bulkhead}
OUT=${OUT:-$root/target/bench/noisy-separate-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
[[ -x $BIN ]] || { echo "no binary at $BIN" >&2; exit 1; }
BULKHEAD_ADMIN_TOKEN=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
export BULKHEAD_ADMIN_TOKEN
spid=
data=
cleanup() { [[ -n $spid ]] && kill "$spid" 2>/dev/null; [[ -n $data ]] && rm -rf "$data"; true; }
trap cleanup EXIT
quiet() {
    "$BIN" bench read --tenants 1 --rate "$QUIET_RATE" --connections 8 --duration 10 --warmup 2 \
        --tier enterprise --json >"$1" 2>/dev/null
}
for i in $(seq "$RUNS"); do
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    data=$(mktemp -d "${TMPDIR:-/tmp}/bulkhead-noisy.XXXXXX")
    "$BIN" serve --listen "127.0.0.1:$port" --data-dir "$data" >"$OUT/server-$i.log" 2>&1 &
    spid=$!
    export BULKHEAD_URL=http://127.0.0.1:$port
    for _ in $(seq 100); do curl -fs "$BULKHEAD_URL/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
    quiet "$OUT/alone-$i.json"
    # The flood's own run fails its error budget (its 429s): that is the point.
    "$BIN" bench read --tenants 1 --rate "$FLOOD_RATE" --connections "$FLOOD_CONNECTIONS" \
        --duration 16 --warmup 0 --tier free --json >"$OUT/flood-$i.json" 2>/dev/null &
    fpid=$!
    sleep 2
    quiet "$OUT/under-$i.json"
    wait "$fpid" || true
    kill "$spid"; wait "$spid" 2>/dev/null || true; spid=
    rm -rf "$data"; data=
    echo "run $i: quiet alone p50/p99/errors $(jq -c '[.latency_ms.p50,.latency_ms.p99,.errors.total]' "$OUT/alone-$i.json")," \
        "under flood $(jq -c '[.latency_ms.p50,.latency_ms.p99,.errors.total]' "$OUT/under-$i.json");" \
        "flood $(jq -c '{ok,status:.errors.by_status,sent_rps:.throughput_rps,missed}' "$OUT/flood-$i.json")"
done
