#!/usr/bin/env bash
# Bulkhead over HTTP on PostgreSQL vs. pgbench running the equivalent SQL, side by side in one
# run, on one database: point reads and writes. See bench/README.md, "pg-compare.sh".
#
#   1. creates a fresh database bulkhead_bench_<tag> and starts `bulkhead serve` on it;
#   2. seeds TENANTS x RECORDS records through Bulkhead (`bulkhead bench read` setup, over HTTP);
#   3. creates pgb_records (the shape and row-level security policy of Bulkhead's `records`)
#      in the same database, filled with TENANTS x RECORDS rows of the same average size, and
#      two login roles: pgb_app_<tag> (subject to RLS) and pgb_plain_<tag> (BYPASSRLS);
#   4. runs, RUNS times, interleaved (round 1 of every test, then round 2, ...):
#        read:  pgbench read_rls, bulkhead bench read, pgbench read_plain, pgbench read_rls_pipeline
#        write: pgbench write_rls, bulkhead bench write, pgbench write_plain, pgbench write_rls_pipeline
#      sampling during each run the CPU time of the server, the load generator and the
#      database's backends;
#   5. prints medians and the ratios Bulkhead / pgbench, stops the server, drops the database
#      and the two roles. Everything goes to OUT.
#
# Settings (environment variables, all optional):
#   RUNS=3 DURATION=10 WARMUP=2       rounds; measured seconds per run; Bulkhead warmup seconds
#   TENANTS=1000 RECORDS=1000         data size (seeded once, on both sides)
#   POOL_SIZE=16                      Bulkhead's PostgreSQL pool (BULKHEAD_STORAGE__POOL_SIZE)
#   CLIENTS=$POOL_SIZE                pgbench clients (-c); -j is JOBS=2
#   CONNECTIONS=64                    `bulkhead bench` HTTP connections
#   SETUP_CONCURRENCY=32              `bulkhead bench --setup-concurrency`
#   PIPELINE=1                        also run the pipelined pgbench scripts (0: skip them)
#   AUDIT=0                           Bulkhead's audit logs (0: off, the storage path alone, as
#                                     pgbench measures it; 1: on — every read then commits an
#                                     audit entry durably; see BENCHMARKS.md, "Audit")
#   PERF=1                            after the rounds, one extra (unmeasured) Bulkhead read
#                                     run under `perf record` (system-wide, then the server)
#   PGHOST=127.0.0.1 PGPORT=5432 PGUSER=postgres   a superuser, trust authentication
#   BIN=target/release/bulkhead       built with `cargo build --release -p bulkhead` only if
#                                     missing (SKIP_BUILD=1: never build)
#   OUT=target/bench/pg-<date>        where results go; KEEP_DB=1 keeps the database
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
here=$root/bench/pgbench
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
TENANTS=${TENANTS:-1000}
RECORDS=${RECORDS:-1000}
POOL_SIZE=${POOL_SIZE:-16}
CLIENTS=${CLIENTS:-$POOL_SIZE}
JOBS=${JOBS:-2}
CONNECTIONS=${CONNECTIONS:-64}
SETUP_CONCURRENCY=${SETUP_CONCURRENCY:-32}
PIPELINE=${PIPELINE:-1}
PERF=${PERF:-0}
AUDIT=${AUDIT:-0}
PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
PGUSER=${PGUSER:-postgres}
BIN=${BIN:-$root/target/release/bulkhead}
stamp=$(date +%Y%m%d-%H%M%S)
OUT=${OUT:-$root/target/bench/pg-$stamp}
tag=$(date +%Y%m%d%H%M%S)_$$
DB=bulkhead_bench_$tag
APP_ROLE=pgb_app_$tag
PLAIN_ROLE=pgb_plain_$tag
export PGHOST PGPORT

die() { echo "pg-compare: $*" >&2; exit 1; }
note() { echo "pg-compare: $*" >&2; }

# ---- tools ------------------------------------------------------------------------------------

for tool in psql curl jq python3; do
    command -v "$tool" >/dev/null || die "\`$tool\` is needed but not installed"
done
PGBENCH=${PGBENCH:-$(command -v pgbench || true)}
if [[ -z $PGBENCH ]]; then
    PGBENCH=$(ls -1 /usr/lib/postgresql/*/bin/pgbench 2>/dev/null | sort -V | tail -n 1 || true)
fi
[[ -n $PGBENCH && -x $PGBENCH ]] ||
    die "pgbench not found: apt-get install -y postgresql-contrib (or set PGBENCH=/path/to/pgbench)"
((RECORDS < 1000000)) || die "RECORDS must be below 1000000 (record ids are tenant * 1000000 + n)"
((DURATION >= 3)) || die "DURATION must be at least 3 seconds"
if ((PERF)); then command -v perf >/dev/null || die "PERF=1 needs \`perf\`"; fi

psql_su() { psql -X -q -v ON_ERROR_STOP=1 -U "$PGUSER" "$@"; }
pg_isready -q -h "$PGHOST" -p "$PGPORT" 2>/dev/null ||
    psql_su -d postgres -Atc 'SELECT 1' >/dev/null 2>&1 ||
    die "no PostgreSQL at $PGHOST:$PGPORT (user $PGUSER, trust authentication)"
[[ $(psql_su -d postgres -Atc "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") == t ]] ||
    die "$PGUSER must be a superuser (it creates the database and two roles)"

if [[ ! -x $BIN ]]; then
    [[ -z ${SKIP_BUILD:-} ]] || die "no binary at $BIN (and SKIP_BUILD is set)"
    note "no binary at $BIN: building it (cargo build --release -p bulkhead, a few minutes)"
    cargo build --release -p bulkhead --manifest-path "$root/Cargo.toml"
fi
[[ -x $BIN ]] || die "no binary at $BIN"

mkdir -p "$OUT"
work=$(mktemp -d "${TMPDIR:-/tmp}/bulkhead-pg-compare.XXXXXX")
# Our own copy, so that a concurrent `cargo build` cannot swap the binary between runs.
cp "$BIN" "$work/bulkhead"
bin=$work/bulkhead

# ---- helpers (CPU sampling, summary) -----------------------------------------------------------

cat >"$work/helper.py" <<'PY'
"""pg-compare.sh helper: `sample` measures CPU time over a window; `summary` prints the table."""
import glob, json, os, re, statistics, subprocess, sys, time

TCK = os.sysconf("SC_CLK_TCK")


def ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return int(rest[11]) + int(rest[12])
    except (OSError, IndexError, ValueError):
        return None


def backends(db):
    """PostgreSQL backends connected to `db` (process title `postgres: user db host ...`)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace").split()
        except OSError:
            continue
        # `postgres: [cluster:] user db host(port) state`; Debian adds the cluster name.
        if title[:1] == ["postgres:"] and db in title[2:4]:
            out.append(int(d))
    return out


def machine():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + v[4]  # total, idle + iowait


def xacts(db):
    try:
        r = subprocess.run(
            ["psql", "-X", "-At", "-U", os.environ.get("PGUSER", "postgres"), "-d", db, "-c",
             "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"],
            capture_output=True, text=True, timeout=10)
        return int(r.stdout.strip())
    except Exception:
        return None


def sample(out, db, gen, server, delay, window, trigger_file, trigger_text):
    if trigger_file:
        deadline = time.time() + 3600
        while time.time() < deadline:
            try:
                with open(trigger_file, errors="replace") as f:
                    if trigger_text in f.read():
                        break
            except OSError:
                pass
            if gen and ticks(gen) is None:
                return
            time.sleep(0.1)
    time.sleep(delay)
    pids = backends(db)
    t0 = time.time()
    b0 = {p: ticks(p) for p in pids}
    g0, s0, m0 = ticks(gen) if gen else None, ticks(server) if server else None, machine()
    # Transaction counts come from a psql process, which can take a while on a busy machine:
    # read them just after each CPU snapshot, so that they do not move the window.
    x0 = xacts(db)
    with open("/proc/loadavg") as f:
        load = float(f.read().split()[0])
    time.sleep(max(0.0, t0 + window - time.time()))
    t1 = time.time()
    b1 = {p: ticks(p) for p in pids}
    g1, s1, m1 = ticks(gen) if gen else None, ticks(server) if server else None, machine()
    x1 = xacts(db)
    pg = sum(b1[p] - b0[p] for p in pids if b0[p] is not None and b1[p] is not None)
    res = {
        "window_s": t1 - t0,
        "load1": load,
        "pg_cpu_s": pg / TCK,
        "pg_backends": len(pids),
        "gen_cpu_s": (g1 - g0) / TCK if g0 is not None and g1 is not None else None,
        "server_cpu_s": (s1 - s0) / TCK if s0 is not None and s1 is not None else None,
        "machine_busy": 1 - (m1[1] - m0[1]) / max(1, m1[0] - m0[0]),
        "db_xacts": (x1 - x0) if x0 is not None and x1 is not None else None,
    }
    with open(out, "w") as f:
        json.dump(res, f)


def pgbench_result(path):
    text = open(path, errors="replace").read()
    tps = re.search(r"^tps = ([0-9.]+) \(without initial connection time\)", text, re.M)
    lat = re.search(r"^latency average = ([0-9.]+) ms", text, re.M)
    failed = re.search(r"^number of failed transactions: (\d+)", text, re.M)
    if not tps:
        return None
    return {"rate": float(tps.group(1)), "lat_avg": float(lat.group(1)) if lat else None,
            "p99": None, "errors": int(failed.group(1)) if failed else 0}


def bulkhead_result(path):
    try:
        j = json.load(open(path))
    except Exception:
        return None
    return {"rate": j["throughput_rps"], "lat_avg": j["latency_ms"]["mean"],
            "p99": j["latency_ms"]["p99"], "errors": j["errors"]["total"]}


TESTS = [
    # (key, label, kind)
    ("pgb-read-rls", "read   pgbench RLS tx (4 round trips)", "pgbench"),
    ("bh-read", "read   bulkhead HTTP", "bulkhead"),
    ("pgb-read-plain", "read   pgbench plain (reference)", "pgbench"),
    ("pgb-read-rls-pipe", "read   pgbench RLS tx, pipelined", "pgbench"),
    ("pgb-write-rls", "write  pgbench RLS tx (4 round trips)", "pgbench"),
    ("bh-write", "write  bulkhead HTTP", "bulkhead"),
    ("pgb-write-plain", "write  pgbench plain (reference)", "pgbench"),
    ("pgb-write-rls-pipe", "write  pgbench RLS tx, pipelined", "pgbench"),
]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def summary(out, clients, conns, pool):
    rows, meds = [], {}
    for key, label, kind in TESTS:
        runs = []
        ext = "log" if kind == "pgbench" else "json"
        found = [(int(m.group(1)), os.path.join(out, f)) for f in os.listdir(out)
                 for m in [re.fullmatch(re.escape(key) + r"-(\d+)\." + ext, f)] if m]
        for _, path in sorted(found):
            r = pgbench_result(path) if kind == "pgbench" else bulkhead_result(path)
            if r is None:
                continue
            cpu_path = re.sub(r"\.\w+$", ".cpu.json", path)
            cpu = json.load(open(cpu_path)) if os.path.exists(cpu_path) else {}
            ops = r["rate"] * cpu.get("window_s", 0)
            per = (lambda k: cpu[k] / ops * 1e6 if ops and cpu.get(k) is not None else None)
            r.update(load1=cpu.get("load1"), busy=cpu.get("machine_busy"),
                     us_server=per("server_cpu_s"), us_gen=per("gen_cpu_s"), us_pg=per("pg_cpu_s"),
                     xacts_per_op=(cpu["db_xacts"] / ops if ops and cpu.get("db_xacts") is not None else None))
            runs.append(r)
        if not runs:
            continue
        m = {k: med([r[k] for r in runs]) for k in runs[0]}
        m["errors"] = sum(r["errors"] for r in runs)
        m["n"] = len(runs)
        m["all"] = [r["rate"] for r in runs]
        meds[key] = m
        conc = f"{conns} HTTP / pool {pool}" if kind == "bulkhead" else f"{clients} clients"
        rows.append((label, conc, m))

    lines = []
    head = (f"{'TEST':<38} {'CONCURRENCY':<19} {'N':>2} {'MEDIAN/S':>9} {'RUNS (/S)':<26} "
            f"{'LAT AVG':>8} {'P99':>7} {'ERR':>4} {'SRV US':>7} {'GEN US':>7} {'PG US':>6} {'XACT':>5} {'LOAD':>5}")
    lines.append(head)
    for label, conc, m in rows:
        allr = " ".join(f"{x:.0f}" for x in m["all"])
        lines.append(
            f"{label:<38} {conc:<19} {m['n']:>2} {m['rate']:>9.0f} {allr:<26} "
            f"{fmt(m['lat_avg'], '.3f'):>8} {fmt(m['p99'], '.3f'):>7} {m['errors']:>4} "
            f"{fmt(m['us_server'], '.0f'):>7} {fmt(m['us_gen'], '.0f'):>7} {fmt(m['us_pg'], '.0f'):>6} "
            f"{fmt(m['xacts_per_op'], '.2f'):>5} {fmt(m['load1'], '.1f'):>5}")
    lines.append("")
    lines.append("ratios of medians (Bulkhead HTTP / pgbench):")

    def ratio(a, b, target=None):
        if a not in meds or b not in meds:
            return
        r = meds[a]["rate"] / meds[b]["rate"]
        verdict = ""
        if target is not None:
            verdict = f"   target >= {target:.1f}: {'MET' if r >= target else 'MISSED'}"
        lines.append(f"  {a:<9} / {b:<19} = {r:6.3f}{verdict}")

    ratio("bh-read", "pgb-read-rls", 1.0)
    ratio("bh-write", "pgb-write-rls", 0.8)
    ratio("bh-read", "pgb-read-rls-pipe")
    ratio("bh-write", "pgb-write-rls-pipe")
    ratio("bh-read", "pgb-read-plain")
    ratio("bh-write", "pgb-write-plain")
    lines.append("")
    lines.append("LAT AVG, P99: ms (pgbench reports no percentiles here). SRV/GEN/PG US: CPU microseconds per")
    lines.append("operation of the Bulkhead server, the load generator (bulkhead bench or pgbench) and the")
    lines.append("database's PostgreSQL backends. XACT: database transactions per operation (approximate,")
    lines.append("from pg_stat_database). LOAD: 1-min load average at the start of the window. All medians.")
    print("\n".join(lines))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "sample":
        a = dict(zip(sys.argv[2::2], sys.argv[3::2]))
        sample(a["--out"], a["--db"], int(a.get("--gen") or 0) or None,
               int(a.get("--server") or 0) or None, float(a.get("--delay", 1)),
               float(a["--window"]), a.get("--trigger-file"), a.get("--trigger-text"))
    elif cmd == "summary":
        summary(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
    elif cmd == "free-port":
        import socket
        s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])
PY
helper() { python3 "$work/helper.py" "$@"; }

# ---- cleanup ------------------------------------------------------------------------------------

server_pid=
bg_pids=()
db_created=
roles_created=
cleanup() {
    local status=$?
    for p in "${bg_pids[@]}"; do
        kill "$p" 2>/dev/null || true
    done
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
    if [[ -n $db_created && -z ${KEEP_DB:-} ]]; then
        note "dropping database $DB"
        psql_su -d postgres -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" || note "could not drop $DB"
    elif [[ -n $db_created ]]; then
        note "database kept: $DB (roles $APP_ROLE, $PLAIN_ROLE)"
    fi
    if [[ -n $roles_created && -z ${KEEP_DB:-} ]]; then
        psql_su -d postgres -c "DROP ROLE IF EXISTS \"$APP_ROLE\"" -c "DROP ROLE IF EXISTS \"$PLAIN_ROLE\"" ||
            note "could not drop roles $APP_ROLE, $PLAIN_ROLE"
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- database and server ------------------------------------------------------------------------

psql_su -d postgres -c "CREATE DATABASE \"$DB\""
db_created=1
PORT=${PORT:-$(helper free-port)}
BULKHEAD_URL=http://127.0.0.1:$PORT
BULKHEAD_ADMIN_TOKEN=bh_admin_bench_$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
export BULKHEAD_URL BULKHEAD_ADMIN_TOKEN

note "database $DB; starting bulkhead serve on $BULKHEAD_URL (pool $POOL_SIZE, log in $OUT/server.log)"
BULKHEAD_DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$DB" \
    BULKHEAD_MASTER_KEY=$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n') \
    BULKHEAD_STORAGE__POOL_SIZE=$POOL_SIZE \
    BULKHEAD_AUDIT__ENABLED=$( ((AUDIT)) && echo true || echo false) \
    "$bin" serve --listen "127.0.0.1:$PORT" --data-dir "$work/data" >"$OUT/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 300); do
    curl -fsS "$BULKHEAD_URL/healthz" >/dev/null 2>&1 && break
    kill -0 "$server_pid" 2>/dev/null || { tail -n 20 "$OUT/server.log" >&2; die "the server exited"; }
    sleep 0.1
done
curl -fsS "$BULKHEAD_URL/healthz" >/dev/null || die "the server did not answer /healthz within 30 s"
pg_started=$(psql_su -d postgres -Atc "SELECT pg_postmaster_start_time()")

{
    echo "date:        $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit:      $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo none)$(git -C "$root" diff --quiet 2>/dev/null || echo ' (dirty)')"
    echo "binary:      $BIN ($(date -u -r "$BIN" +%Y-%m-%dT%H:%M:%SZ), sha256 $(sha256sum "$bin" | cut -c1-16))"
    echo "host:        $(uname -sr), $(nproc) cores, $(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "cpu:         $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "postgresql:  $(psql_su -d postgres -Atc 'SHOW server_version') at $PGHOST:$PGPORT, shared_buffers $(psql_su -d postgres -Atc 'SHOW shared_buffers'), synchronous_commit $(psql_su -d postgres -Atc 'SHOW synchronous_commit'), fsync $(psql_su -d postgres -Atc 'SHOW fsync')"
    echo "pgbench:     $("$PGBENCH" --version)"
    echo "settings:    runs=$RUNS duration=${DURATION}s warmup=${WARMUP}s (bulkhead) tenants=$TENANTS records=$RECORDS audit=$AUDIT"
    echo "concurrency: pgbench -c $CLIENTS -j $JOBS; bulkhead bench --connections $CONNECTIONS against a pool of $POOL_SIZE"
    echo "load:        $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min) at start"
} | tee "$OUT/machine.txt" >&2

# ---- data ---------------------------------------------------------------------------------------

note "seeding $TENANTS tenants x $RECORDS records through Bulkhead (HTTP, setup concurrency $SETUP_CONCURRENCY)"
t0=$(date +%s)
"$bin" bench read --json --tenants "$TENANTS" --records-per-tenant "$RECORDS" \
    --setup-concurrency "$SETUP_CONCURRENCY" --connections "$CONNECTIONS" --duration 1 --warmup 0 \
    --save-targets "$OUT/targets.json" >"$OUT/seed.json" 2>"$OUT/seed.log" || { tail -n 5 "$OUT/seed.log" >&2; die "seeding failed"; }
seed_s=$(($(date +%s) - t0))
seeded=$(psql_su -d "$DB" -Atc "SELECT count(*) FROM records")
data_bytes=$(psql_su -d "$DB" -Atc "SELECT coalesce(round(avg(octet_length(data))), 150) FROM records")
note "  seeded in ${seed_s}s: $seeded records, $data_bytes bytes of ciphertext on average"

note "creating pgb_records ($TENANTS x $RECORDS rows of $data_bytes bytes) and roles $APP_ROLE, $PLAIN_ROLE"
t0=$(date +%s)
roles_created=1
psql_su -d "$DB" -v tenants="$TENANTS" -v records="$RECORDS" -v data_bytes="$data_bytes" \
    -v app_role="$APP_ROLE" -v plain_role="$PLAIN_ROLE" -f "$here/setup.sql"
psql_su -d "$DB" -c "VACUUM (ANALYZE) records, record_index, collections, tenants, signing_keys" -c "CHECKPOINT"
note "  done in $(($(date +%s) - t0))s"
{
    echo "seeded:      $seeded Bulkhead records in ${seed_s}s; pgb_records $(psql_su -d "$DB" -Atc 'SELECT count(*) FROM pgb_records') rows; data $data_bytes bytes"
    echo "sizes:       records $(psql_su -d "$DB" -Atc "SELECT pg_size_pretty(pg_total_relation_size('records'))") (+ record_index $(psql_su -d "$DB" -Atc "SELECT pg_size_pretty(pg_total_relation_size('record_index'))")), pgb_records $(psql_su -d "$DB" -Atc "SELECT pg_size_pretty(pg_total_relation_size('pgb_records'))")"
} | tee -a "$OUT/machine.txt" >&2

# The RLS role sees nothing without a tenant, and one tenant's rows with it.
rls_check=$(psql -X -At -U "$APP_ROLE" -d "$DB" \
    -c "SELECT count(*) FROM pgb_records" \
    -c "BEGIN" -c "SELECT set_config('bulkhead.tenant_id', '00000000-0000-7000-8000-000000000001', true)" \
    -c "SELECT count(*) FROM pgb_records" -c "COMMIT" | grep -E '^[0-9]+$' | tr '\n' ' ')
[[ $rls_check == "0 $RECORDS " ]] || die "row-level security check on pgb_records failed: got '$rls_check'"

# ---- runs ---------------------------------------------------------------------------------------

failed=0
restarted=

check_pg() {
    local now
    now=$(psql_su -d postgres -Atc "SELECT pg_postmaster_start_time()" 2>/dev/null || echo unknown)
    if [[ $now != "$pg_started" ]]; then
        note "  WARNING: PostgreSQL restarted during this run (started $now, was $pg_started)"
        echo "$1: PostgreSQL restarted ($now)" >>"$OUT/restarts.txt"
        pg_started=$now
        restarted=1
        return 1
    fi
}

# run_pgbench NAME SCRIPT ROLE ROUND
run_pgbench() {
    local name=$1-$4 script=$2 role=$3 pid status=0
    "$PGBENCH" -n -M prepared -c "$CLIENTS" -j "$JOBS" -T "$DURATION" -U "$role" \
        -D tenants="$TENANTS" -D records="$RECORDS" -D data_bytes="$data_bytes" \
        -f "$here/$script" "$DB" >"$OUT/$name.log" 2>&1 &
    pid=$!
    helper sample --out "$OUT/$name.cpu.json" --db "$DB" --gen "$pid" \
        --delay 1 --window "$((DURATION - 2))" &
    bg_pids+=($!)
    wait "$pid" || status=$?
    wait "${bg_pids[-1]}" 2>/dev/null || true
    if ! check_pg "$name" || ((status != 0)) || ! grep -q '^tps = ' "$OUT/$name.log"; then
        failed=$((failed + 1))
        note "  $name failed (exit $status): $(grep -m1 -iE 'error|fatal' "$OUT/$name.log" || tail -n 1 "$OUT/$name.log")"
        mv "$OUT/$name.log" "$OUT/$name.failed.log"
        return 1
    fi
    note "  $name: $(sed -n 's/^tps = \([0-9]*\).*/\1/p' "$OUT/$name.log") tps, latency avg $(sed -n 's/^latency average = //p' "$OUT/$name.log")"
}

# run_bulkhead NAME SCENARIO ROUND: on the seeded tenants (all TENANTS x RECORDS records).
run_bulkhead() {
    local name=$1-$3 scenario=$2 pid status=0
    "$bin" bench "$scenario" --json --targets "$OUT/targets.json" \
        --connections "$CONNECTIONS" \
        --duration "$DURATION" --warmup "$WARMUP" >"$OUT/$name.json" 2>"$OUT/$name.log" &
    pid=$!
    helper sample --out "$OUT/$name.cpu.json" --db "$DB" --gen "$pid" --server "$server_pid" \
        --trigger-file "$OUT/$name.log" --trigger-text "saved tenants" \
        --delay "$WARMUP.3" --window "$((DURATION - 1))" &
    bg_pids+=($!)
    wait "$pid" || status=$?
    wait "${bg_pids[-1]}" 2>/dev/null || true
    kill -0 "$server_pid" 2>/dev/null || { tail -n 20 "$OUT/server.log" >&2; die "the server died during $name"; }
    if ! check_pg "$name" || ((status != 0)) || ! jq -e .throughput_rps "$OUT/$name.json" >/dev/null 2>&1; then
        failed=$((failed + 1))
        note "  $name failed (exit $status): $(tail -n 1 "$OUT/$name.log")"
        mv "$OUT/$name.json" "$OUT/$name.failed.json" 2>/dev/null || true
        return 1
    fi
    note "  $name: $(jq -r '"\(.throughput_rps | floor) req/s, p50 \(.latency_ms.p50) ms, p99 \(.latency_ms.p99) ms, \(.errors.total) errors"' "$OUT/$name.json")"
}

# A run that fails (e.g. PostgreSQL was restarted under it) is repeated once.
run() { "$@" || { note "  repeating it once"; "$@" || true; }; }

tests_read=(pgb-read-rls bh-read pgb-read-plain)
tests_write=(pgb-write-rls bh-write pgb-write-plain)
if ((PIPELINE)); then
    tests_read+=(pgb-read-rls-pipe)
    tests_write+=(pgb-write-rls-pipe)
fi

for round in $(seq "$RUNS"); do
    note "round $round/$RUNS (load $(cut -d' ' -f1-3 /proc/loadavg))"
    for t in "${tests_read[@]}" "${tests_write[@]}"; do
        case $t in
            pgb-read-rls) run run_pgbench "$t" read_rls.sql "$APP_ROLE" "$round" ;;
            pgb-read-rls-pipe) run run_pgbench "$t" read_rls_pipeline.sql "$APP_ROLE" "$round" ;;
            pgb-read-plain) run run_pgbench "$t" read_plain.sql "$PLAIN_ROLE" "$round" ;;
            pgb-write-rls) run run_pgbench "$t" write_rls.sql "$APP_ROLE" "$round" ;;
            pgb-write-rls-pipe) run run_pgbench "$t" write_rls_pipeline.sql "$APP_ROLE" "$round" ;;
            pgb-write-plain) run run_pgbench "$t" write_plain.sql "$PLAIN_ROLE" "$round" ;;
            bh-read) run run_bulkhead "$t" read "$round" ;;
            bh-write) run run_bulkhead "$t" write "$round" ;;
        esac
    done
done

# ---- profile (optional, not measured) -----------------------------------------------------------

if ((PERF)); then
    note "profiling: one more Bulkhead read run, under perf (system-wide 5 s, then the server 5 s)"
    "$bin" bench read --json --targets "$OUT/targets.json" \
        --connections "$CONNECTIONS" \
        --duration 14 --warmup "$WARMUP" >"$OUT/perf-run.json" 2>"$OUT/perf-run.log" &
    perf_gen=$!
    bg_pids+=($perf_gen)
    until grep -q "saved tenants" "$OUT/perf-run.log" 2>/dev/null; do
        kill -0 "$perf_gen" 2>/dev/null || die "the profiled run ended early: $(tail -n 1 "$OUT/perf-run.log")"
        sleep 0.1
    done
    sleep "$WARMUP"
    perf record -q -F 999 -a -g -o "$OUT/perf-all.data" -- sleep 5 2>>"$OUT/perf.log" || true
    perf record -q -F 999 -g -p "$server_pid" -o "$OUT/perf-server.data" -- sleep 5 2>>"$OUT/perf.log" || true
    wait "$perf_gen" || true
    # perf report | head would die of SIGPIPE (and pipefail): report to files, then cut.
    report() { perf report "$@" --no-children --stdio -g none 2>/dev/null | grep -v -e '^#' -e '^$' || true; }
    report -i "$OUT/perf-all.data" --sort comm,dso >"$work/all-comm.txt"
    report -i "$OUT/perf-all.data" --comm postgres --sort symbol >"$work/all-pg.txt"
    report -i "$OUT/perf-server.data" --sort symbol >"$work/server.txt"
    report -i "$OUT/perf-server.data" --sort dso >"$work/server-dso.txt"
    {
        echo "== whole machine during a Bulkhead read run, by thread name and binary"
        echo "   (tokio-rt-worker is both the server and bulkhead bench; see SRV/GEN US in summary.txt)"
        head -n 20 "$work/all-comm.txt"
        echo
        echo "== PostgreSQL processes, top symbols"
        head -n 30 "$work/all-pg.txt"
    } | sed 's/ *$//' >"$OUT/perf-all.txt"
    {
        echo "== the Bulkhead server, by binary"
        head -n 15 "$work/server-dso.txt"
        echo
        echo "== the Bulkhead server, top symbols"
        head -n 60 "$work/server.txt"
    } | sed 's/ *$//' >"$OUT/perf-server.txt"
    note "  profiled run: $(jq -r '"\(.throughput_rps | floor) req/s"' "$OUT/perf-run.json" 2>/dev/null || echo '?'); reports in $OUT/perf-*.txt"
fi

# ---- summary ------------------------------------------------------------------------------------

echo "load:        $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min) at end" | tee -a "$OUT/machine.txt" >&2
echo
{
    echo "Bulkhead HTTP on PostgreSQL vs. pgbench, medians of $RUNS interleaved runs of ${DURATION}s"
    echo "data: $TENANTS tenants x $RECORDS records on both sides ($data_bytes-byte rows); each bulkhead read run"
    echo "Bulkhead reads and writes through the seeded tenants (--targets); both sides read all $TENANTS x $RECORDS rows"
    echo
    helper summary "$OUT" "$CLIENTS" "$CONNECTIONS" "$POOL_SIZE"
    if [[ -n $restarted ]]; then
        echo
        echo "WARNING: PostgreSQL was restarted during the run (see restarts.txt); affected runs were repeated."
    fi
} | tee "$OUT/summary.txt"
echo
note "results in $OUT"
if ((failed > 0)); then
    note "$failed run(s) failed; see the .failed.* files"
fi
