#!/usr/bin/env bash
# Policy benchmark (issue 4): the read scenario with the Cedar policy engine on and off, side
# by side in one run, then the in-process decision micro-benchmark.
#
# Starts two `bulkhead serve` processes on fresh data directories (one with default settings,
# one with BULKHEAD_POLICY__ENABLED=false), runs `bulkhead bench read` against them alternately
# RUNS times, and prints the medians and the on/off throughput ratio. Then runs
# `bulkhead policy bench` (10,000 tenants, each with its own policy set).
#
# Settings (environment variables, all optional):
#   RUNS=3 TENANTS=1000 RECORDS=10 CONNECTIONS=64 DURATION=10 WARMUP=2
#   POLICY_TENANTS=10000 DECISIONS=500000
#   BIN=target/release/bulkhead (SKIP_BUILD=1 to not build)   OUT=target/bench/policy-<date>
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-3}
TENANTS=${TENANTS:-1000}
RECORDS=${RECORDS:-10}
CONNECTIONS=${CONNECTIONS:-64}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
POLICY_TENANTS=${POLICY_TENANTS:-10000}
DECISIONS=${DECISIONS:-500000}
BIN=${BIN:-$root/target/release/bulkhead}
OUT=${OUT:-$root/target/bench/policy-$(date +%Y%m%d-%H%M%S)}

die() { echo "run-policy: $*" >&2; exit 1; }
note() { echo "run-policy: $*" >&2; }
for tool in curl jq python3; do
    command -v "$tool" >/dev/null || die "\`$tool\` is needed but not installed"
done
if [[ -z ${SKIP_BUILD:-} ]]; then
    note "building the release binary"
    cargo build --release -p bulkhead --manifest-path "$root/Cargo.toml"
fi
[[ -x $BIN ]] || die "no binary at $BIN"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
mkdir -p "$OUT"
data=$(mktemp -d "${TMPDIR:-/tmp}/bulkhead-policy-bench.XXXXXX")
BULKHEAD_ADMIN_TOKEN=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
export BULKHEAD_ADMIN_TOKEN
declare -A port pid
cleanup() {
    for mode in on off; do
        if [[ -n ${pid[$mode]:-} ]]; then
            kill -TERM "${pid[$mode]}" 2>/dev/null || true
            wait "${pid[$mode]}" 2>/dev/null || true
        fi
    done
    rm -rf "$data"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for mode in on off; do
    port[$mode]=$(free_port)
    enabled=true
    [[ $mode == off ]] && enabled=false
    # Auditing is off on both: a read's durable audit entry would otherwise bound both servers
    # by group-commit latency and hide the cost measured here (see the audit benchmark).
    BULKHEAD_AUDIT__ENABLED=false BULKHEAD_POLICY__ENABLED=$enabled "$BIN" serve --listen "127.0.0.1:${port[$mode]}" \
        --data-dir "$data/$mode" >"$OUT/server-$mode.log" 2>&1 &
    pid[$mode]=$!
    for _ in $(seq 300); do
        curl -fsS "http://127.0.0.1:${port[$mode]}/healthz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    curl -fsS "http://127.0.0.1:${port[$mode]}/healthz" >/dev/null || die "server ($mode) did not start"
done

{
    echo "date:     $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit:   $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo none)$(git -C "$root" diff --quiet 2>/dev/null || echo ' (dirty)')"
    echo "host:     $(uname -sr), $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "settings: runs=$RUNS tenants=$TENANTS records=$RECORDS connections=$CONNECTIONS duration=${DURATION}s warmup=${WARMUP}s"
} | tee "$OUT/machine.txt" >&2

for run in $(seq "$RUNS"); do
    for mode in on off; do
        note "run $run/$RUNS: read, policies $mode"
        BULKHEAD_URL=http://127.0.0.1:${port[$mode]} "$BIN" bench read --json \
            --tenants "$TENANTS" --records-per-tenant "$RECORDS" --connections "$CONNECTIONS" \
            --duration "$DURATION" --warmup "$WARMUP" >"$OUT/read-$mode-$run.json" 2>"$OUT/read-$mode-$run.log"
        jq -r '"  \(.throughput_rps | floor) req/s, p50 \(.latency_ms.p50) ms, p99 \(.latency_ms.p99) ms, \(.errors.total) errors"' \
            "$OUT/read-$mode-$run.json" >&2
    done
done

median='sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end'
echo
printf '%-12s %10s %9s %9s\n' POLICIES "REQ/S" "P50 MS" "P99 MS" | tee "$OUT/summary.txt"
for mode in on off; do
    jq -s -r --arg m "$mode" "def median: $median; [\$m, ([.[].throughput_rps] | median | floor), ([.[].latency_ms.p50] | median), ([.[].latency_ms.p99] | median)] | @tsv" \
        "$OUT"/read-"$mode"-*.json | awk -F'\t' '{ printf "%-12s %10s %9.3f %9.3f\n", $1, $2, $3, $4 }' | tee -a "$OUT/summary.txt"
done
on=$(jq -s "def median: $median; [.[].throughput_rps] | median" "$OUT"/read-on-*.json)
off=$(jq -s "def median: $median; [.[].throughput_rps] | median" "$OUT"/read-off-*.json)
echo "ratio on/off (median req/s): $(python3 -c "print(f'{$on / $off:.3f}')")" | tee -a "$OUT/summary.txt"
echo
"$BIN" policy bench --tenants "$POLICY_TENANTS" --decisions "$DECISIONS" | tee "$OUT/decision.txt"
note "results in $OUT"
