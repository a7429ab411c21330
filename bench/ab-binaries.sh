#!/usr/bin/env bash
# Two builds of Bulkhead side by side on the embedded storage: starts `bulkhead serve` from
# each binary (own data directory, own port), then runs `bulkhead bench SCENARIO` against
# them in PAIRS rounds, alternating which goes first, one server loaded at a time. Prints one
# line per run and the ratio B / A of each pair. For a change whose effect is smaller than the
# host's drift between two separate runs.
#
#   bench/ab-binaries.sh BIN_A BIN_B [SCENARIO=read] [PAIRS=3]
#
# Settings (environment variables, all optional):
#   TENANTS=1000 RECORDS=10 CONNECTIONS=64 DURATION=8 WARMUP=2
#   CLIENT=BIN_B                   the binary whose `bulkhead bench` generates the load
#   SERVER_ENV="K=V ..."           extra environment for both servers
set -euo pipefail

[[ $# -ge 2 ]] || { sed -n '2,15p' "$0" >&2; exit 2; }
A=$1
B=$2
SCENARIO=${3:-read}
PAIRS=${4:-3}
TENANTS=${TENANTS:-1000}
RECORDS=${RECORDS:-10}
CONNECTIONS=${CONNECTIONS:-64}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
CLIENT=${CLIENT:-$B}
SERVER_ENV=${SERVER_ENV:-}

die() { echo "ab-binaries: $*" >&2; exit 1; }
for tool in curl jq python3; do
    command -v "$tool" >/dev/null || die "\`$tool\` is needed but not installed"
done
[[ -x $A && -x $B ]] || die "both binaries must exist and be executable"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
work=$(mktemp -d "${TMPDIR:-/tmp}/bulkhead-ab.XXXXXX")
ADMIN=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
declare -A port pid bin=([a]=$A [b]=$B)
cleanup() {
    for m in a b; do
        [[ -n ${pid[$m]:-} ]] && kill -TERM "${pid[$m]}" 2>/dev/null && wait "${pid[$m]}" 2>/dev/null
    done
    rm -rf "$work"
}
trap cleanup EXIT

for m in a b; do
    port[$m]=$(free_port)
    # shellcheck disable=SC2086 # SERVER_ENV is a list of assignments
    env $SERVER_ENV BULKHEAD_ADMIN_TOKEN="$ADMIN" "${bin[$m]}" serve \
        --listen "127.0.0.1:${port[$m]}" --data-dir "$work/$m" >"$work/$m.log" 2>&1 &
    pid[$m]=$!
done
for m in a b; do
    for _ in $(seq 300); do
        curl -fsS "http://127.0.0.1:${port[$m]}/healthz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    curl -fsS "http://127.0.0.1:${port[$m]}/healthz" >/dev/null || die "server $m did not start: $(tail -n 3 "$work/$m.log")"
done

echo "pair server req/s errors p99_ms"
for i in $(seq "$PAIRS"); do
    order="a b"
    ((i % 2 == 0)) && order="b a"
    declare -A rps=()
    for m in $order; do
        out=$(BULKHEAD_URL=http://127.0.0.1:${port[$m]} BULKHEAD_ADMIN_TOKEN=$ADMIN "$CLIENT" bench "$SCENARIO" \
            --json --connections "$CONNECTIONS" --duration "$DURATION" --warmup "$WARMUP" \
            --tenants "$TENANTS" --records-per-tenant "$RECORDS" 2>"$work/bench.log") ||
            die "bench failed: $(tail -n 3 "$work/bench.log")"
        rps[$m]=$(jq -r '.throughput_rps' <<<"$out")
        echo "$i $m ${rps[$m]} $(jq -r '.errors.total' <<<"$out") $(jq -r '.latency_ms.p99' <<<"$out")"
    done
    echo "$i ratio b/a $(python3 -c "print(round(${rps[b]} / ${rps[a]}, 3))")"
done
