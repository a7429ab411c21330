#!/usr/bin/env bash
# Performance-isolation figures (see docs/limits.md and BENCHMARKS.md):
#   1. limiter cost: `bulkhead bench read` (closed loop) against a server with per-tenant
#      limits on and one with them off (`BULKHEAD_LIMITS__ENABLED=false`), interleaved, RUNS
#      times each (the pair's order alternates); medians, the median of the pair ratios, and
#      the server's CPU time per request (user + system from /proc, whole run incl. setup);
#   2. noisy neighbour: `bulkhead bench noisy-neighbour`, RUNS times, medians;
#   3. limiter memory: `bulkhead bench limiter-memory --tenants 100000`.
# Each server gets a fresh SQLite data directory and a free port.
#
# Settings: PARTS="cost noisy memory" (any of them) RUNS=3 DURATION=10 WARMUP=2 TENANTS=100
#   CONNECTIONS=32
#   QUIET_RATE=200 FLOOD_RATE=20000 FLOOD_CONNECTIONS=128 FLOOD_LIMIT=500
#   BIN=target/release/bulkhead   OUT=target/bench/limits-<date>
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PARTS=${PARTS:-cost noisy memory}
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
TENANTS=${TENANTS:-100}
CONNECTIONS=${CONNECTIONS:-32}
QUIET_RATE=${QUIET_RATE:-200}
FLOOD_RATE=${FLOOD_RATE:-20000}
FLOOD_CONNECTIONS=${FLOOD_CONNECTIONS:-128}
FLOOD_LIMIT=${FLOOD_LIMIT:-500}
BIN=${BIN:-$root/target/release/bulkhead}
OUT=${OUT:-$root/target/bench/limits-$(date +%Y%m%d-%H%M%S)}

die() { echo "limits: $*" >&2; exit 1; }
note() { echo "limits: $*" >&2; }
for tool in curl jq awk python3; do
    command -v "$tool" >/dev/null || die "\`$tool\` is needed but not installed"
done
[[ -x $BIN ]] || die "no binary at $BIN (cargo build --release -p bulkhead)"
mkdir -p "$OUT"

BULKHEAD_ADMIN_TOKEN=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
export BULKHEAD_ADMIN_TOKEN
server_pid=
data=
stop_server() {
    if [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
    [[ -n $data ]] && rm -rf "$data"
    data=
}
trap stop_server EXIT

# start_server <enabled: true|false>
start_server() {
    local port
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    data=$(mktemp -d "${TMPDIR:-/tmp}/bulkhead-limits.XXXXXX")
    BULKHEAD_LIMITS__ENABLED=$1 "$BIN" serve --listen "127.0.0.1:$port" --data-dir "$data" \
        >"$OUT/server.log" 2>&1 &
    server_pid=$!
    export BULKHEAD_URL=http://127.0.0.1:$port
    for _ in $(seq 100); do
        curl -fs "$BULKHEAD_URL/healthz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "the server did not start (see $OUT/server.log)"
}

want() { [[ " $PARTS " == *" $1 "* ]]; }
# cpu_ticks <pid>: user + system clock ticks the process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

if want cost; then
note "1. limiter cost: read throughput with limits on and off, interleaved, $RUNS runs each"
for i in $(seq "$RUNS"); do
    # Alternate which mode goes first, so a drift in the machine's load favours neither.
    if ((i % 2)); then modes="true false"; else modes="false true"; fi
    for mode in $modes; do
        start_server "$mode"
        "$BIN" bench read --tenants "$TENANTS" --connections "$CONNECTIONS" \
            --duration "$DURATION" --warmup "$WARMUP" --json >"$OUT/read-$mode-$i.json"
        ticks=$(cpu_ticks "$server_pid")
        stop_server
        # Server CPU microseconds per measured request (setup and warmup included: the same
        # work in both modes).
        awk -v t="$ticks" -v hz="$TICK" -v n="$(jq .requests "$OUT/read-$mode-$i.json")" \
            'BEGIN {printf "%.2f\n", t / hz * 1e6 / n}' >"$OUT/cpu-$mode-$i.txt"
        note "  run $i, limits $mode: $(jq .throughput_rps "$OUT/read-$mode-$i.json") req/s, $(cat "$OUT/cpu-$mode-$i.txt") us CPU/req, load $(cut -d' ' -f1 /proc/loadavg)"
    done
done
on=$(for f in "$OUT"/read-true-*.json; do jq .throughput_rps "$f"; done | median)
off=$(for f in "$OUT"/read-false-*.json; do jq .throughput_rps "$f"; done | median)
pair=$(for i in $(seq "$RUNS"); do
    awk -v a="$(jq .throughput_rps "$OUT/read-true-$i.json")" -v b="$(jq .throughput_rps "$OUT/read-false-$i.json")" \
        'BEGIN {printf "%.4f\n", a/b}'
done | median)
cpu_on=$(cat "$OUT"/cpu-true-*.txt | median)
cpu_off=$(cat "$OUT"/cpu-false-*.txt | median)
echo "limiter cost: reads/s median with limits on $on, off $off, ratio $(awk -v a="$on" -v b="$off" 'BEGIN {printf "%.3f", a/b}'), median of pair ratios $pair"
echo "limiter cost: server CPU per request median with limits on $cpu_on us, off $cpu_off us, ratio off/on $(awk -v a="$cpu_on" -v b="$cpu_off" 'BEGIN {printf "%.3f", b/a}')"
fi

if want noisy; then
note "2. noisy neighbour, $RUNS runs"
for i in $(seq "$RUNS"); do
    start_server true
    "$BIN" bench noisy-neighbour --quiet-rate "$QUIET_RATE" --flood-rate "$FLOOD_RATE" \
        --flood-connections "$FLOOD_CONNECTIONS" --flood-limit "$FLOOD_LIMIT" \
        --duration "$DURATION" --warmup "$WARMUP" --json >"$OUT/noisy-$i.json" || true
    stop_server
    note "  run $i: $(jq -c '{alone: .quiet_alone.latency_ms.p99, flood: .quiet_under_flood.latency_ms.p99, ratio: .p99_ratio}' "$OUT/noisy-$i.json")"
done
for key in quiet_alone.latency_ms.p50 quiet_alone.latency_ms.p99 quiet_under_flood.latency_ms.p50 \
    quiet_under_flood.latency_ms.p99 p99_ratio flood.offered_rps flood.ok 'flood.by_status["429"]' \
    'quiet_under_flood.by_status | length'; do
    echo "noisy-neighbour $key median: $(for f in "$OUT"/noisy-*.json; do jq ".$key // 0" "$f"; done | median)"
done
fi

if want memory; then
note "3. limiter memory"
"$BIN" bench limiter-memory --tenants 100000 | tee "$OUT/memory.txt"
fi
note "results in $OUT"
