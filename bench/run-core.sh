#!/usr/bin/env bash
# Core benchmark of Bulkhead: builds the release binary, starts `bulkhead serve`
# on a fresh data directory and a free port, runs `bulkhead bench` for the
# healthz, read, write and mixed scenarios (RUNS times each, interleaved),
# samples the server's memory during the read runs, prints a table of medians
# and stops the server. See bench/README.md.
#
# Settings (environment variables, all optional):
#   RUNS=3 TENANTS=1000 RECORDS=10 CONNECTIONS=64 DURATION=10 WARMUP=2
#   SCENARIOS="healthz read write mixed"   which scenarios, in this order
#   EXTRA_ARGS=""        more `bulkhead bench` flags, e.g. "--rate 5000"
#   PORT=                port to serve on (default: a free one)
#   OUT=target/bench/core-<date>   where results go
#   BIN=target/release/bulkhead    binary to use; SKIP_BUILD=1 to not build
#   KEEP_DATA=1          keep the server's data directory
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-3}
TENANTS=${TENANTS:-1000}
RECORDS=${RECORDS:-10}
CONNECTIONS=${CONNECTIONS:-64}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
SCENARIOS=${SCENARIOS:-"healthz read write mixed"}
EXTRA_ARGS=${EXTRA_ARGS:-}
BIN=${BIN:-$root/target/release/bulkhead}
OUT=${OUT:-$root/target/bench/core-$(date +%Y%m%d-%H%M%S)}

die() { echo "run-core: $*" >&2; exit 1; }
note() { echo "run-core: $*" >&2; }

for tool in curl jq awk; do
    command -v "$tool" >/dev/null || die "\`$tool\` is needed but not installed"
done

if [[ -z ${SKIP_BUILD:-} ]]; then
    note "building the release binary"
    cargo build --release -p bulkhead --manifest-path "$root/Cargo.toml"
fi
[[ -x $BIN ]] || die "no binary at $BIN"

free_port() {
    if command -v python3 >/dev/null; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
    else
        echo 18700
    fi
}
PORT=${PORT:-$(free_port)}

mkdir -p "$OUT"
data=$(mktemp -d "${TMPDIR:-/tmp}/bulkhead-bench.XXXXXX")
BULKHEAD_ADMIN_TOKEN=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
BULKHEAD_URL=http://127.0.0.1:$PORT
export BULKHEAD_ADMIN_TOKEN BULKHEAD_URL

server_pid=
sampler_pid=
cleanup() {
    if [[ -n $sampler_pid ]]; then
        kill "$sampler_pid" 2>/dev/null || true
        wait "$sampler_pid" 2>/dev/null || true
    fi
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        note "stopping the server (pid $server_pid)"
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if [[ -z ${KEEP_DATA:-} ]]; then
        rm -rf "$data"
    else
        note "data kept in $data"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

note "starting bulkhead serve on 127.0.0.1:$PORT (data in $data, log in $OUT/server.log)"
"$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$data/data" >"$OUT/server.log" 2>&1 &
server_pid=$!

for _ in $(seq 300); do
    curl -fsS "$BULKHEAD_URL/healthz" >/dev/null 2>&1 && break
    kill -0 "$server_pid" 2>/dev/null || { tail -n 20 "$OUT/server.log" >&2; die "the server exited"; }
    sleep 0.1
done
curl -fsS "$BULKHEAD_URL/healthz" >/dev/null || die "the server did not answer /healthz within 30 s"

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$server_pid/status" 2>/dev/null || true; }

# Samples the server's resident memory every 200 ms into $1 until killed.
sample_rss() {
    while kill -0 "$server_pid" 2>/dev/null; do
        rss_kb
        sleep 0.2
    done >"$1"
}

{
    echo "date:        $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit:      $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo none)$(git -C "$root" diff --quiet 2>/dev/null || echo ' (dirty)')"
    echo "host:        $(uname -sr), $(nproc) cores, $(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "cpu:         $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "settings:    runs=$RUNS tenants=$TENANTS records=$RECORDS connections=$CONNECTIONS duration=${DURATION}s warmup=${WARMUP}s ${EXTRA_ARGS}"
    echo "idle rss:    $(( $(rss_kb) / 1024 )) MiB"
} | tee "$OUT/machine.txt" >&2

failed=0
for run in $(seq "$RUNS"); do
    for scenario in $SCENARIOS; do
        args=(bench "$scenario" --json --connections "$CONNECTIONS" --duration "$DURATION" --warmup "$WARMUP")
        if [[ $scenario != healthz ]]; then
            args+=(--tenants "$TENANTS" --records-per-tenant "$RECORDS")
        fi
        # shellcheck disable=SC2206 # EXTRA_ARGS is meant to be split
        args+=($EXTRA_ARGS)
        name=$scenario-$run
        note "run $run/$RUNS: $scenario"
        if [[ $scenario == read ]]; then
            sample_rss "$OUT/$name.rss" &
            sampler_pid=$!
        fi
        status=0
        "$BIN" "${args[@]}" >"$OUT/$name.json" 2>"$OUT/$name.log" || status=$?
        if [[ -n $sampler_pid ]]; then
            kill "$sampler_pid" 2>/dev/null || true
            wait "$sampler_pid" 2>/dev/null || true
            sampler_pid=
        fi
        if ((status != 0)); then
            failed=$((failed + 1))
            note "  failed (exit $status): $(tail -n 1 "$OUT/$name.log")"
        fi
        if jq -e . "$OUT/$name.json" >/dev/null 2>&1; then
            jq -r '"  \(.throughput_rps | floor) req/s, p50 \(.latency_ms.p50) ms, p99 \(.latency_ms.p99) ms, \(.errors.total) errors\(if (.missed // 0) > 0 then ", \(.missed) missed (target rate not reached)" else "" end)"' \
                "$OUT/$name.json" >&2
        else
            rm -f "$OUT/$name.json"
        fi
        kill -0 "$server_pid" 2>/dev/null || { tail -n 20 "$OUT/server.log" >&2; die "the server died during $name"; }
    done
done
note "final rss: $(( $(rss_kb) / 1024 )) MiB"

# Peak RSS of each read run, in MiB.
for f in "$OUT"/read-*.rss; do
    [[ -e $f ]] || continue
    sort -n "$f" | tail -n 1 | awk '{ printf "%.1f\n", $1 / 1024 }' >"${f%.rss}.peak"
done

median='sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end'
summary() {
    printf '%-8s %4s %10s %9s %9s %9s %9s %9s %8s %9s\n' \
        SCENARIO RUNS "REQ/S" "P50 MS" "P90 MS" "P99 MS" "P99.9 MS" "MAX MS" ERRORS "RSS MIB"
    for scenario in $SCENARIOS; do
        files=("$OUT/$scenario"-*.json)
        [[ -e ${files[0]} ]] || { printf '%-8s %4s\n' "$scenario" 0; continue; }
        rss=-
        if [[ $scenario == read ]] && compgen -G "$OUT/read-*.peak" >/dev/null; then
            rss=$(cat "$OUT"/read-*.peak | jq -s "$median")
        fi
        jq -s -r --arg s "$scenario" --arg rss "$rss" "
            def median: $median;
            [\$s, length,
             ([.[].throughput_rps] | median | floor),
             ([.[].latency_ms.p50] | median), ([.[].latency_ms.p90] | median),
             ([.[].latency_ms.p99] | median), ([.[].latency_ms.p99_9] | median),
             ([.[].latency_ms.max] | median),
             ([.[].errors.total] | add), \$rss] | @tsv" "${files[@]}" |
            awk -F'\t' '{
                rss = ($10 == "-" || $10 == "null") ? "-" : sprintf("%.1f", $10)
                printf "%-8s %4s %10s %9.3f %9.3f %9.3f %9.3f %9.3f %8s %9s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, rss
            }'
    done
}

echo
echo "medians of $RUNS runs (errors: sum over runs; rss: peak during read runs)"
summary | tee "$OUT/summary.txt"
echo
note "results in $OUT"
if ((failed > 0)); then
    note "$failed run(s) failed; see the .log files"
    exit 1
fi
