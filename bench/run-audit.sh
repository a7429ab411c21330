#!/usr/bin/env bash
# Audit benchmark of Bulkhead (issue 6): the core read and write scenarios with auditing on
# and off, side by side in one run, then `bulkhead audit verify --bench` over the audited
# server's logs against raw SHA-256 over the same bytes.
#
# Two data sets are verified: the audited server's own logs after the read/write runs (many
# short logs: every run creates its own tenants, so each log holds ~70 entries and a
# signature or two), and a "long logs" set made by a third server, audited, under the read
# scenario with few tenants for VERIFY_DURATION seconds (logs of tens of thousands of entries,
# one checkpoint per log per `audit.checkpoint_log_seconds`), the shape of a server that has
# been running for a while. Each verification prints its own raw SHA-256 figure, measured in
# the same command run.
#
# It starts two throw-away `bulkhead serve` processes on the embedded storage, one with the
# defaults (auditing on) and one with BULKHEAD_AUDIT__ENABLED=false, and runs
# `bulkhead bench <scenario>` against each in turn, alternating which goes first, RUNS times.
# Only one server is loaded at a time. Prints medians and the on/off ratios.
#
# Settings (environment variables, all optional):
#   RUNS=3 TENANTS=1000 RECORDS=10 CONNECTIONS=64 DURATION=10 WARMUP=2
#   SCENARIOS="read write"
#   VERIFY_TENANTS=20 VERIFY_DURATION=30   the long-logs data set
#   OUT=target/bench/audit-<date>   where results go
#   BIN=target/release/bulkhead     binary to use; SKIP_BUILD=1 to not build
#   KEEP=DIR                        keep the data directories in DIR
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-3}
TENANTS=${TENANTS:-1000}
RECORDS=${RECORDS:-10}
CONNECTIONS=${CONNECTIONS:-64}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
SCENARIOS=${SCENARIOS:-"read write"}
VERIFY_TENANTS=${VERIFY_TENANTS:-20}
VERIFY_DURATION=${VERIFY_DURATION:-30}
BIN=${BIN:-$root/target/release/bulkhead}
OUT=${OUT:-$root/target/bench/audit-$(date +%Y%m%d-%H%M%S)}

die() { echo "run-audit: $*" >&2; exit 1; }
note() { echo "run-audit: $*" >&2; }

for tool in curl jq awk python3; do
    command -v "$tool" >/dev/null || die "\`$tool\` is needed but not installed"
done
if [[ -z ${SKIP_BUILD:-} ]]; then
    note "building the release binary"
    cargo build --release -p bulkhead --manifest-path "$root/Cargo.toml"
fi
[[ -x $BIN ]] || die "no binary at $BIN"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

mkdir -p "$OUT"
# KEEP=DIR keeps the servers' data directories in DIR (DIR/on, DIR/off, DIR/long) for
# profiling the verifier on them.
if [[ -n ${KEEP:-} ]]; then
    mkdir -p "$KEEP"
    work=$(cd "$KEEP" && pwd)
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/bulkhead-audit-bench.XXXXXX")
fi
ADMIN=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
declare -A port pid
cleanup() {
    for mode in on off long; do
        if [[ -n ${pid[$mode]:-} ]] && kill -0 "${pid[$mode]}" 2>/dev/null; then
            kill -TERM "${pid[$mode]}" 2>/dev/null || true
            wait "${pid[$mode]}" 2>/dev/null || true
        fi
    done
    [[ -n ${KEEP:-} ]] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start() {
    local mode=$1 enabled=$2
    port[$mode]=$(free_port)
    BULKHEAD_ADMIN_TOKEN=$ADMIN BULKHEAD_AUDIT__ENABLED=$enabled \
        "$BIN" serve --listen "127.0.0.1:${port[$mode]}" --data-dir "$work/$mode" \
        >"$OUT/server-$mode.log" 2>&1 &
    pid[$mode]=$!
    for _ in $(seq 300); do
        curl -fsS "http://127.0.0.1:${port[$mode]}/healthz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "the audit-$mode server did not start"
}
start on true
start off false
start long true

{
    echo "date:     $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit:   $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo none)$(git -C "$root" diff --quiet 2>/dev/null || echo ' (dirty)')"
    echo "host:     $(uname -sr), $(nproc) cores; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "settings: runs=$RUNS tenants=$TENANTS records=$RECORDS connections=$CONNECTIONS duration=${DURATION}s warmup=${WARMUP}s"
} | tee "$OUT/machine.txt" >&2

for run in $(seq "$RUNS"); do
    # Alternate which server goes first, so drift on the machine does not favour one.
    if ((run % 2 == 1)); then order="on off"; else order="off on"; fi
    for scenario in $SCENARIOS; do
        for mode in $order; do
            note "run $run/$RUNS: $scenario, audit $mode"
            BULKHEAD_URL=http://127.0.0.1:${port[$mode]} BULKHEAD_ADMIN_TOKEN=$ADMIN \
                "$BIN" bench "$scenario" --json --connections "$CONNECTIONS" --duration "$DURATION" \
                --warmup "$WARMUP" --tenants "$TENANTS" --records-per-tenant "$RECORDS" \
                >"$OUT/$scenario-$mode-$run.json" 2>"$OUT/$scenario-$mode-$run.log" ||
                note "  failed: $(tail -n 1 "$OUT/$scenario-$mode-$run.log")"
            jq -r '"  \(.throughput_rps | floor) req/s, p50 \(.latency_ms.p50) ms, p99 \(.latency_ms.p99) ms, \(.errors.total) errors"' \
                "$OUT/$scenario-$mode-$run.json" >&2 || true
        done
    done
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt" >&2

median='sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end'
{
    printf '%-8s %12s %12s %7s   %s\n' SCENARIO "ON REQ/S" "OFF REQ/S" RATIO "per run (on/off)"
    for scenario in $SCENARIOS; do
        on=$(jq -s "[.[].throughput_rps] | $median | floor" "$OUT/$scenario"-on-*.json)
        off=$(jq -s "[.[].throughput_rps] | $median | floor" "$OUT/$scenario"-off-*.json)
        runs=$(for r in $(seq "$RUNS"); do
            printf '%s/%s ' "$(jq '.throughput_rps | floor' "$OUT/$scenario-on-$r.json")" \
                "$(jq '.throughput_rps | floor' "$OUT/$scenario-off-$r.json")"
        done)
        printf '%-8s %12s %12s %7.3f   %s\n' "$scenario" "$on" "$off" "$(awk -v a="$on" -v b="$off" 'BEGIN { print a / b }')" "$runs"
    done
} | tee "$OUT/summary.txt"

# The long-logs data set (the third server), built while the others are idle.
note "long logs: bench read with $VERIFY_TENANTS tenants for ${VERIFY_DURATION}s (audited)"
BULKHEAD_URL=http://127.0.0.1:${port[long]} BULKHEAD_ADMIN_TOKEN=$ADMIN \
    "$BIN" bench read --json --connections "$CONNECTIONS" --duration "$VERIFY_DURATION" \
    --warmup 1 --tenants "$VERIFY_TENANTS" --records-per-tenant "$RECORDS" \
    >"$OUT/long-fill.json" 2>"$OUT/long-fill.log" || note "  failed: $(tail -n 1 "$OUT/long-fill.log")"

# Stop the audited servers (the last round signs the last checkpoints), verify their logs.
for mode in on long; do
    kill -TERM "${pid[$mode]}" && wait "${pid[$mode]}" || true
    pid[$mode]=
done
for set in on long; do
    note "verifying the $set data set (bulkhead audit verify --all --bench)"
    for r in $(seq "$RUNS"); do
        "$BIN" audit verify --all --data-dir "$work/$set" --bench --json >"$OUT/verify-$set-$r.json"
        jq -r --arg set "$set" '"verify \($set): \(.logs) logs, \(.entries) entries, \(.checkpoints) checkpoints, \(.bytes) bytes in \(.seconds) s: \(.verify_mb_per_s) MB/s; raw SHA-256 \(.raw_sha256_mb_per_s) MB/s (ratio \(.ratio)); per entry \(.raw_sha256_per_entry_mb_per_s) MB/s (ratio \(.ratio_per_entry))"' \
            "$OUT/verify-$set-$r.json" | tee -a "$OUT/summary.txt"
    done
    jq -s -r --arg set "$set" "\"verify \\(\$set) medians: verify \\([.[].verify_mb_per_s] | $median) MB/s, raw SHA-256 \\([.[].raw_sha256_mb_per_s] | $median) MB/s, ratio \\([.[].ratio] | $median), ratio per entry \\([.[].ratio_per_entry] | $median)\"" \
        "$OUT"/verify-$set-*.json | tee -a "$OUT/summary.txt"
done
echo "load average after verifying: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt" >&2
note "results in $OUT"
