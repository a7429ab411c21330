#!/usr/bin/env bash
# `bulkhead audit verify --all --bench` of one or more binaries, side by side.
#
# For each binary, starts an audited server on the embedded storage, fills two data sets with
# `bulkhead bench read` — "long" (LONG_TENANTS tenants for LONG_SECONDS: few long logs) and
# "short" (SHORT_TENANTS tenants for SHORT_SECONDS: many short logs, a checkpoint per log and
# round) — stops it, then runs each binary's verifier on its own sets ROUNDS times,
# interleaved (round 1: every binary, then round 2 …), so a slow spell of the host hits them
# all alike. Each verify measures raw SHA-256 over the same bytes in the same command. Prints
# per set and binary the median seconds and the median ratio to raw SHA-256.
#
#   bench/audit-verify.sh ./bulkhead-before ./bulkhead-after
#
# Results (one JSON per verify run) and the servers' logs go to OUT; KEEP=DIR keeps the data
# sets.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-5}
LONG_TENANTS=${LONG_TENANTS:-20}
LONG_SECONDS=${LONG_SECONDS:-30}
SHORT_TENANTS=${SHORT_TENANTS:-1000}
SHORT_SECONDS=${SHORT_SECONDS:-10}
CONNECTIONS=${CONNECTIONS:-64}
OUT=${OUT:-$root/target/bench/audit-verify-$(date +%Y%m%d-%H%M%S)}

die() { echo "audit-verify: $*" >&2; exit 1; }
note() { echo "audit-verify: $*" >&2; }

(($# >= 1)) || die "usage: $0 BINARY [BINARY …]"
for tool in curl jq python3; do
    command -v "$tool" >/dev/null || die "\`$tool\` is needed but not installed"
done
bins=()
for b in "$@"; do
    [[ -x $b ]] || die "no binary at $b"
    bins+=("$(cd "$(dirname "$b")" && pwd)/$(basename "$b")")
done

mkdir -p "$OUT"
# KEEP=DIR keeps the data sets in DIR (DIR/<binary index>-<set>) for profiling.
if [[ -n ${KEEP:-} ]]; then
    mkdir -p "$KEEP"
    work=$(cd "$KEEP" && pwd)
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/bulkhead-audit-verify.XXXXXX")
fi
ADMIN=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
server=
cleanup() {
    if [[ -n $server ]] && kill -0 "$server" 2>/dev/null; then
        kill -TERM "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    [[ -n ${KEEP:-} ]] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# fill BIN_INDEX SET TENANTS SECONDS
fill() {
    local i=$1 set=$2 tenants=$3 seconds=$4 port
    local bin=${bins[$i]} dir=$work/$i-$set
    port=$(free_port)
    BULKHEAD_ADMIN_TOKEN=$ADMIN "$bin" serve --listen "127.0.0.1:$port" --data-dir "$dir" \
        >"$OUT/server-$i-$set.log" 2>&1 &
    server=$!
    for _ in $(seq 300); do
        curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null || die "the server of $bin did not start"
    note "$(basename "$bin"): filling $set ($tenants tenants, ${seconds}s of reads)"
    BULKHEAD_URL=http://127.0.0.1:$port BULKHEAD_ADMIN_TOKEN=$ADMIN \
        "$bin" bench read --json --connections "$CONNECTIONS" --duration "$seconds" --warmup 1 \
        --tenants "$tenants" --records-per-tenant 10 >"$OUT/fill-$i-$set.json" 2>"$OUT/fill-$i-$set.log" ||
        die "filling failed: $(tail -n 1 "$OUT/fill-$i-$set.log")"
    kill -TERM "$server" && wait "$server" || true
    server=
}

{
    echo "date:     $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit:   $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo none)$(git -C "$root" diff --quiet 2>/dev/null || echo ' (dirty)')"
    echo "host:     $(uname -sr), $(nproc) cores; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "binaries: ${bins[*]}"
    echo "settings: rounds=$ROUNDS long=${LONG_TENANTS}x${LONG_SECONDS}s short=${SHORT_TENANTS}x${SHORT_SECONDS}s"
} | tee "$OUT/machine.txt" >&2

for i in "${!bins[@]}"; do
    fill "$i" long "$LONG_TENANTS" "$LONG_SECONDS"
    fill "$i" short "$SHORT_TENANTS" "$SHORT_SECONDS"
done

for set in long short; do
    for r in $(seq "$ROUNDS"); do
        for i in "${!bins[@]}"; do
            "${bins[$i]}" audit verify --all --data-dir "$work/$i-$set" --bench --json \
                >"$OUT/verify-$set-$i-$r.json" || die "verify failed: $(cat "$OUT/verify-$set-$i-$r.json")"
        done
    done
done

median='sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end'
{
    printf '%-6s %-28s %6s %9s %12s %8s %10s %8s  %s\n' SET BINARY LOGS ENTRIES CHECKPOINTS SECONDS "SHA MB/s" RATIO "ratios per round"
    for set in long short; do
        for i in "${!bins[@]}"; do
            f=("$OUT"/verify-$set-$i-*.json)
            printf '%-6s %-28s %6s %9s %12s %8.3f %10.0f %8.3f  %s\n' "$set" "$(basename "${bins[$i]}")" \
                "$(jq .logs "${f[0]}")" "$(jq .entries "${f[0]}")" "$(jq .checkpoints "${f[0]}")" \
                "$(jq -s "[.[].seconds] | $median" "${f[@]}")" \
                "$(jq -s "[.[].raw_sha256_mb_per_s] | $median" "${f[@]}")" \
                "$(jq -s "[.[].ratio] | $median" "${f[@]}")" \
                "$(jq -r '.ratio * 1000 | round / 1000' "${f[@]}" | tr '\n' ' ')"
        done
    done
    echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/summary.txt"
