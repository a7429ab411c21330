#!/usr/bin/env bash
# Restarts PostgreSQL under a running Bulkhead and checks that nothing acknowledged is lost.
#
# Run by CI after the build, outside the parallel test suite (it restarts the whole cluster):
#
#   cargo build -p bulkhead && scripts/pg-restart-check.sh
#
# What it does: creates a fresh database, starts `bulkhead serve` on it, creates a tenant, a
# token and a collection, then runs WRITERS concurrent writers (a Python script, standard library
# only) that record every acknowledged (201) record id. BEFORE seconds in, it restarts the
# PostgreSQL cluster (`pg_ctlcluster --skip-systemctl-redirect <version> <cluster> restart`) and
# keeps writing for AFTER seconds once the cluster is back. Then it checks that
#
#   - every failed request failed with 503 `application/problem+json` (no 500, no connection
#     error, no request hanging beyond the request timeout);
#   - writes succeed again after the restart, with the same Bulkhead process (not restarted);
#   - every acknowledged id reads back (200, with the data that was written).
#
# It prints the counts and exits non-zero on any lost acknowledged write, any failure that is not
# a 503, or no recovery. The database is dropped at the end, whatever happened.
#
# Environment (all optional):
#   BULKHEAD_BIN                  the binary (default: $CARGO_TARGET_DIR/debug/bulkhead, else
#                                 target/debug/bulkhead; this script builds nothing)
#   BULKHEAD_TEST_DATABASE_URL    admin URL, URL form (default:
#                                 postgres://postgres@127.0.0.1:5432/postgres)
#   PG_VERSION, PG_CLUSTER        the cluster to restart (default: the newest in
#                                 /etc/postgresql, `main`)
#   WRITERS, BEFORE, AFTER        writers (8), seconds before the restart (3), seconds of writing
#                                 after the cluster is back (5)
#   REQUEST_TIMEOUT               Bulkhead's request timeout in seconds (10)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BULKHEAD_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/bulkhead}
ADMIN_URL=${BULKHEAD_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PG_VERSION=${PG_VERSION:-$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)}
PG_CLUSTER=${PG_CLUSTER:-main}
WRITERS=${WRITERS:-8}
BEFORE=${BEFORE:-3}
AFTER=${AFTER:-5}
REQUEST_TIMEOUT=${REQUEST_TIMEOUT:-10}

say() { printf 'pg-restart-check: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

[[ -x $BIN ]] || die "no binary at $BIN: build it first (cargo build -p bulkhead)"
[[ -n $PG_VERSION ]] || die "no cluster found in /etc/postgresql: set PG_VERSION"
for tool in psql curl python3 pg_ctlcluster; do
    command -v "$tool" >/dev/null || die "\`$tool\` is required"
done

DB=bulkhead_restart_$(python3 -c 'import uuid; print(uuid.uuid4().hex)')
DB_URL=$(python3 -c '
import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1])
if not p.scheme.startswith("postgres"):
    sys.exit("BULKHEAD_TEST_DATABASE_URL must be a postgres:// URL")
print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' "$ADMIN_URL" "$DB")
WORK=$(mktemp -d)
SERVER_PID=

cleanup() {
    local rc=$?
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    # The cluster may still be coming back if we failed during the restart.
    for _ in $(seq 30); do
        if psql "$ADMIN_URL" -qAt -v ON_ERROR_STOP=1 \
            -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1; then
            break
        fi
        sleep 1
    done
    if [[ $rc -ne 0 && -f $WORK/serve.log ]]; then
        say "last lines of the server log:"
        tail -n 20 "$WORK/serve.log" >&2
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT

psql "$ADMIN_URL" -qAt -v ON_ERROR_STOP=1 -c "CREATE DATABASE $DB" >/dev/null
say "database $DB created; PostgreSQL $PG_VERSION/$PG_CLUSTER will be restarted"

ADMIN_TOKEN=bh_admin_restart_$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
MASTER_KEY=$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')

# `env -u` every inherited BULKHEAD_* setting, so only what is given here applies. Per-tenant
# rate and concurrency limits are off: this check is about durability, and its writers would
# otherwise be throttled as any tenant over its tier would (that is tested in http/limits.rs).
mapfile -t UNSET < <(env | sed -n 's/^\(BULKHEAD_[A-Za-z0-9_]*\)=.*/-u\n\1/p')
env "${UNSET[@]}" \
    BULKHEAD_DATABASE_URL="$DB_URL" \
    BULKHEAD_MASTER_KEY="$MASTER_KEY" \
    BULKHEAD_ADMIN_TOKEN="$ADMIN_TOKEN" \
    BULKHEAD_REQUEST_TIMEOUT_SECONDS="$REQUEST_TIMEOUT" \
    BULKHEAD_LIMITS__ENABLED=false \
    RUST_LOG=info \
    "$BIN" serve --listen 127.0.0.1:0 --log-format json --data-dir "$WORK/data" \
    >/dev/null 2>"$WORK/serve.log" &
SERVER_PID=$!

ADDR=
for _ in $(seq 300); do
    ADDR=$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    try:
        v = json.loads(line)
    except ValueError:
        continue
    if v.get("message") == "bulkhead is listening":
        print(v["addr"])
        break' "$WORK/serve.log")
    [[ -n $ADDR ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || die "bulkhead serve exited: $(tail -n 5 "$WORK/serve.log")"
    sleep 0.1
done
[[ -n $ADDR ]] || die "bulkhead serve did not start listening"
B=http://$ADDR
say "bulkhead (pid $SERVER_PID) listening on $ADDR"

json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
T=$(curl -sf -X POST "$B/v1/tenants" -H "Authorization: Bearer $ADMIN_TOKEN" \
    -H 'Content-Type: application/json' -d '{"name": "restart-check"}' | json '["id"]')
TOKEN=$(curl -sf -X POST "$B/v1/tenants/$T/tokens" -H "Authorization: Bearer $ADMIN_TOKEN" \
    -H 'Content-Type: application/json' \
    -d '{"subject": "writer", "roles": ["member", "admin"], "ttl_seconds": 3600}' | json '["token"]')
curl -sf -X PUT "$B/v1/collections/notes" -H "Authorization: Bearer $TOKEN" \
    -H 'Content-Type: application/json' \
    -d '{"schema": {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}, "indexes": ["title"]}' \
    >/dev/null
say "tenant $T with a collection; $WRITERS writers for ${BEFORE}s, restart, then ${AFTER}s"

cat >"$WORK/check.py" <<'PY'
"""The write loop, the restart and the checks; see scripts/pg-restart-check.sh."""
import http.client
import json
import os
import queue
import subprocess
import sys
import threading
import time

addr, token, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
writers, before, after = int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
request_timeout = float(sys.argv[7])
restart_cmd = sys.argv[8:]
host, port = addr.rsplit(":", 1)
# A request may take the server's request timeout; beyond that (plus slack) it hangs.
client_timeout = request_timeout + 5
RECORDS = "/v1/collections/notes/records"
HEADERS = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}

lock = threading.Lock()
acked = {}  # id -> title
failed_503 = []  # (start, end, problem type)
other = []  # (start, end, what)
last_start = {}  # kind -> monotonic start of the latest request of that outcome
stop = threading.Event()


def request(conn, method, path, body=None):
    """One request on `conn` (a keep-alive connection); returns (status, headers, body)."""
    conn.request(method, path, body=body, headers=HEADERS)
    r = conn.getresponse()
    raw = r.read()
    return r.status, r, raw


def classify(status, resp, raw):
    """`None` if a 503 problem+json, else what is wrong with this failure."""
    ctype = resp.getheader("Content-Type", "")
    try:
        kind = json.loads(raw).get("type", "")
    except ValueError:
        kind = ""
    if status == 503 and ctype.startswith("application/problem+json") and kind.startswith(
        "urn:bulkhead:problem:"
    ):
        return None, kind
    return "HTTP %d %s %s" % (status, ctype, raw[:200].decode("utf-8", "replace")), kind


def writer(w):
    conn = None
    n = 0
    while not stop.is_set():
        title = "w%d-%d" % (w, n)
        n += 1
        body = json.dumps({"data": {"title": title}})
        start = time.monotonic()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, int(port), timeout=client_timeout)
            status, resp, raw = request(conn, "POST", RECORDS, body)
        except Exception as e:  # noqa: BLE001 - every transport failure counts
            end = time.monotonic()
            if conn is not None:
                conn.close()
            conn = None
            with lock:
                other.append((start, end, "%s: %s" % (type(e).__name__, e)))
            continue
        end = time.monotonic()
        if resp.getheader("Connection", "").lower() == "close":
            conn.close()
            conn = None
        with lock:
            if status == 201:
                acked[json.loads(raw)["id"]] = title
                last_start["ok"] = start
            else:
                wrong, kind = classify(status, resp, raw)
                if wrong is None:
                    failed_503.append((start, end, kind))
                else:
                    other.append((start, end, wrong))
    if conn is not None:
        conn.close()


threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(writers)]
t0 = time.monotonic()
for t in threads:
    t.start()
time.sleep(before)
r0 = time.monotonic()
restart = subprocess.run(restart_cmd, capture_output=True, text=True)
r1 = time.monotonic()
if restart.returncode != 0:
    stop.set()
    sys.exit("the restart failed: %s %s" % (restart.stdout, restart.stderr))
acked_before_restart = len(acked)
time.sleep(after)
stop.set()
for t in threads:
    t.join(client_timeout + 5)
hung_writers = sum(t.is_alive() for t in threads)

# The same Bulkhead process is still serving.
try:
    os.kill(pid, 0)
    alive = True
except OSError:
    alive = False

# Recovery: successes after the cluster came back, and none failing in the last part.
with lock:
    failures = [(s, e) for s, e, _ in failed_503] + [(s, e) for s, e, _ in other]
last_failure_end = max((e for _, e in failures), default=None)
recovered_after = None if last_failure_end is None else max(0.0, last_failure_end - r1)
recovery_deadline = r1 + after / 2
late_failures = [f for f in failures if f[0] >= recovery_deadline]
succeeded_after = last_start.get("ok", 0) > r1

# Every acknowledged id reads back, with its data; on fresh connections, in parallel.
ids = queue.Queue()
for i in acked.items():
    ids.put(i)
lost = []
unreadable = []


def reader():
    conn = http.client.HTTPConnection(host, int(port), timeout=client_timeout)
    while True:
        try:
            rid, title = ids.get_nowait()
        except queue.Empty:
            break
        try:
            status, _, raw = request(conn, "GET", RECORDS + "/" + rid)
        except Exception as e:  # noqa: BLE001
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=client_timeout)
            with lock:
                unreadable.append((rid, "%s: %s" % (type(e).__name__, e)))
            continue
        if status != 200:
            with lock:
                lost.append((rid, "HTTP %d %s" % (status, raw[:200].decode("utf-8", "replace"))))
        elif json.loads(raw)["data"]["title"] != title:
            with lock:
                lost.append((rid, "wrong data: %s" % raw[:200].decode("utf-8", "replace")))
    conn.close()


readers = [threading.Thread(target=reader) for _ in range(min(writers, 8))]
for t in readers:
    t.start()
for t in readers:
    t.join()

# Stored but not acknowledged: writes that committed although their response was a 503 (the
# connection broke after COMMIT was sent). Allowed; counted for information.
stored = set()
conn = http.client.HTTPConnection(host, int(port), timeout=client_timeout)
path = RECORDS + "?limit=1000"
while True:
    status, _, raw = request(conn, "GET", path)
    if status != 200:
        unreadable.append(("list", "HTTP %d" % status))
        break
    page = json.loads(raw)
    stored.update(i["id"] for i in page["items"])
    if not page.get("next_cursor"):
        break
    path = RECORDS + "?limit=1000&cursor=" + page["next_cursor"]
conn.close()

print("pg-restart-check: results")
print("  writers                       %d" % writers)
print("  restart took                  %.2fs (at %.2fs)" % (r1 - r0, r0 - t0))
print("  acknowledged writes (201)     %d (%d before the restart)" % (len(acked), acked_before_restart))
print("  failed with 503 problem+json  %d %s" % (
    len(failed_503), sorted({k for _, _, k in failed_503})))
print("  other errors                  %d" % len(other))
print("  acknowledged, not read back   %d" % len(lost))
print("  read-back errors              %d" % len(unreadable))
print("  stored, not acknowledged      %d" % len(stored - set(acked)))
print("  acknowledged, not listed      %d" % len(set(acked) - stored))
if recovered_after is not None:
    print("  last failure                  %.2fs after the cluster was back" % recovered_after)
longest = max((e - s for s, e, _ in failed_503), default=0.0)
print("  slowest 503                   %.2fs" % longest)
for s, e, what in other[:10]:
    print("  other error at %.2fs (%.2fs): %s" % (s - t0, e - s, what))
for rid, what in (lost + unreadable)[:10]:
    print("  not read back: %s: %s" % (rid, what))

problems = []
if lost or set(acked) - stored:
    problems.append("acknowledged writes were lost")
if unreadable:
    problems.append("some acknowledged writes could not be read back")
if other:
    problems.append("failures other than 503 problem+json")
if hung_writers:
    problems.append("%d writers hung" % hung_writers)
if not alive:
    problems.append("the Bulkhead process died")
if not succeeded_after:
    problems.append("no write succeeded after the restart")
if late_failures:
    problems.append("%d writes still failed %.1fs after the restart" % (len(late_failures), after / 2))
if not acked_before_restart:
    problems.append("no write succeeded before the restart")
if not failed_503:
    print("  note: no request failed during the restart (nothing was in flight?)")
if problems:
    print("pg-restart-check: FAILED: " + "; ".join(problems))
    sys.exit(1)
print("pg-restart-check: ok")
PY

python3 "$WORK/check.py" "$ADDR" "$TOKEN" "$SERVER_PID" "$WRITERS" "$BEFORE" "$AFTER" \
    "$REQUEST_TIMEOUT" pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" "$PG_CLUSTER" restart

# Bulkhead served through the restart as one process: one start, no exit.
starts=$(grep -c '"bulkhead is listening"' "$WORK/serve.log" || true)
[[ $starts == 1 ]] || die "bulkhead started $starts times"
kill -0 "$SERVER_PID" 2>/dev/null || die "bulkhead is no longer running"
