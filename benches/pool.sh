#!/usr/bin/env bash
# Pool benchmark (issue 16): reservations per second, and the time from a DUT's release to its
# next allocation, with and without a health job. Bare-metal DUTs with trivial power commands
# (`true`), so that what is measured is the pool (state store, queue, worker), not a BMC.
#
#   benches/pool.sh                     # builds citron in release mode first
#   N=400 CONC=8 RUNS=10 benches/pool.sh
#
# Measures, on 127.0.0.1, one citron (SQLite state store in a temporary --data):
#   - reservations per second: N cycles of `POST /api/v1/reservations` (one DUT, allocated in
#     the answer, or long-polled until it is) then `DELETE`, one client, then CONC clients at
#     once, over DUTS DUTs (each cycle leaves its DUT recycling: powered off by the worker
#     before it can be given again);
#   - release → next allocation, RUNS times: every DUT of a tag held, one request waiting;
#     the holder releases; the time until the waiting request's long poll answers `allocated`:
#       - without a health job (the worker powers the DUT off and frees it);
#       - with a health job (the DUT is power-cycled with the job; this script plays the DUT:
#         it polls `health.env` from the DUT's source address until the job is served, then
#         finishes the job's run with `success` using the run's `{{ upload_token }}`).
# Prints median, min and max. There is no peer run here: Duffy (the anchor) needs PostgreSQL,
# Redis and Ansible playbooks to run at all and has no queue (it answers 422 when no node is
# free), so the figures are absolute. Needs curl and python3. Not run in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-200}
CONC=${CONC:-8}
DUTS=${DUTS:-10}
RUNS=${RUNS:-5}
ADMIN=bench-admin-token

for t in curl python3; do
  command -v "$t" >/dev/null || { echo "pool.sh: $t is missing" >&2; exit 2; }
done
if [ -z "${CITRON_BIN:-}" ]; then
  cargo build --release --locked -p citron-cli >&2
  CITRON_BIN=target/release/citron
fi

tmp=$(mktemp -d /tmp/citron-pool-bench.XXXXXX)
cpid=""
cleanup() {
  [ -n "$cpid" ] && kill "$cpid" 2>/dev/null || true
  sleep 0.3
  rm -rf "$tmp"
}
trap cleanup EXIT

{
  echo "duts:"
  for i in $(seq 1 "$DUTS"); do
    printf '  - id: p%d\n    ip: ["127.0.3.%d"]\n    tags: [plain]\n    power: {on: "true", off: "true"}\n' "$i" "$i"
  done
  printf '  - id: h1\n    ip: ["127.0.3.200"]\n    tags: [health]\n    power: {on: "true", off: "true"}\n'
  echo "pool:"
  echo "  health_jobs: {health: health.yaml}"
  echo "limits: { connections_per_peer: 4096 }"
} > "$tmp/lab.yaml"
cat > "$tmp/health.yaml" <<'EOF2'
name: health
results:
  platform: bench
deployment:
  start:
    storage:
      http:
        - path: /health.env
          data: "{{ upload_token }} {{ run_id }}"
EOF2

CITRON_API_TOKEN=$ADMIN RUST_LOG=warn "$CITRON_BIN" serve --lab "$tmp/lab.yaml" --data "$tmp/citron-data" \
  --http 127.0.0.1:0 --tftp off --nbd off --api 127.0.0.1:0 >"$tmp/citron.out" 2>"$tmp/citron.err" &
cpid=$!
for _ in $(seq 600); do grep -q listening "$tmp/citron.out" 2>/dev/null && break; sleep 0.1; done
grep -q listening "$tmp/citron.out" || { echo "citron did not start:" >&2; cat "$tmp/citron.err" >&2; exit 1; }
API=$(sed -n 's/.*api=\([^ ]*\).*/\1/p' "$tmp/citron.out")
HTTP=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$tmp/citron.out")

API=$API HTTP=$HTTP ADMIN=$ADMIN N=$N CONC=$CONC DUTS=$DUTS RUNS=$RUNS python3 - <<'PY'
import http.client, json, os, statistics, threading, time

API, HTTP, ADMIN = os.environ["API"], os.environ["HTTP"], os.environ["ADMIN"]
N, CONC, DUTS, RUNS = (int(os.environ[k]) for k in ("N", "CONC", "DUTS", "RUNS"))

def conn(addr, source=None):
    h, p = addr.rsplit(":", 1)
    return http.client.HTTPConnection(h, int(p), timeout=60, source_address=(source, 0) if source else None)

def call(c, token, method, path, body=None):
    headers = {"Authorization": f"Bearer {token}"}
    data = None
    if body is not None:
        data = json.dumps(body)
        headers["Content-Type"] = "application/json"
    c.request(method, path, body=data, headers=headers)
    r = c.getresponse()
    text = r.read()
    return r.status, (json.loads(text) if text else None)

admin = conn(API)
st, t = call(admin, ADMIN, "POST", "/api/v1/tenants", {"name": "bench"})
assert st == 201, (st, t)
TOKEN = t["token"]

def cycle(c, tag="plain"):
    st, r = call(c, TOKEN, "POST", "/api/v1/reservations", {"tags": [tag]})
    assert st == 201, (st, r)
    waited = r["state"] == "waiting"
    while r["state"] == "waiting":
        st, r = call(c, TOKEN, "GET", f"/api/v1/reservations/{r['id']}?wait=30s")
    assert r["state"] == "allocated", r
    st, _ = call(c, TOKEN, "DELETE", f"/api/v1/reservations/{r['id']}")
    assert st == 200
    return waited

def rate(clients, n):
    waited = [0]
    lock = threading.Lock()
    def worker(k):
        c = conn(API)
        w = sum(cycle(c) for _ in range(k))
        with lock:
            waited[0] += w
    per = n // clients
    ts = [threading.Thread(target=worker, args=(per,)) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in ts: t.start()
    for t in ts: t.join()
    dt = time.perf_counter() - t0
    return per * clients / dt, waited[0]

def until_free(tag_prefix):
    for _ in range(600):
        st, duts = call(admin, ADMIN, "GET", "/api/v1/pool/duts")
        if all(d["state"] == "free" for d in duts if d["id"].startswith(tag_prefix)):
            return
        time.sleep(0.05)
    raise SystemExit(f"DUTs {tag_prefix}* never all free: {duts}")

def release_to_allocation(tag, count, play_dut=None):
    c = conn(API)
    until_free(tag[0])
    st, held = call(c, TOKEN, "POST", "/api/v1/reservations", {"tags": [tag], "count": count})
    assert held["state"] == "allocated", held
    st, wait = call(c, TOKEN, "POST", "/api/v1/reservations", {"tags": [tag]})
    assert wait["state"] == "waiting", wait
    t0 = time.perf_counter()
    st, _ = call(c, TOKEN, "DELETE", f"/api/v1/reservations/{held['id']}")
    served = None
    if play_dut:
        served = play_dut(t0)
    poll = conn(API)
    while True:
        st, r = call(poll, TOKEN, "GET", f"/api/v1/reservations/{wait['id']}?wait=30s")
        if r["state"] != "waiting":
            break
    dt = time.perf_counter() - t0
    assert r["state"] == "allocated", r
    call(c, TOKEN, "DELETE", f"/api/v1/reservations/{wait['id']}")
    if play_dut:
        play_dut(time.perf_counter())  # its health job again, before the next run
    return dt, served

def health_dut(t0):
    """The DUT's side: poll its health job's file until served, finish the run."""
    while True:
        h = conn(HTTP, source="127.0.3.200")
        try:
            h.request("GET", "/health.env")
            r = h.getresponse()
            body = r.read().decode()
        finally:
            h.close()
        if r.status == 200:
            break
        time.sleep(0.005)
    served = time.perf_counter() - t0
    token, run = body.split()
    c = conn(API)
    st, _ = call(c, token, "POST", f"/api/v1/results/health/runs/{run}/finish", {"status": "success"})
    assert st == 200, st
    return served

def stats(xs, unit, scale=1.0):
    xs = [x * scale for x in xs]
    return f"median {statistics.median(xs):.1f} {unit} (min {min(xs):.1f}, max {max(xs):.1f}, n={len(xs)})"

print(f"== pool benchmark: {DUTS} DUTs, N={N}, CONC={CONC}, RUNS={RUNS}")
rate(1, 20)  # warm-up
r1 = [rate(1, N) for _ in range(3)]
print(f"reservations/s, 1 client (request + release): {stats([r for r, _ in r1], '/s')}; answered `waiting` first: {[w for _, w in r1]}")
rc = [rate(CONC, N) for _ in range(3)]
print(f"reservations/s, {CONC} clients: {stats([r for r, _ in rc], '/s')}; answered `waiting` first: {[w for _, w in rc]}")
plain = [release_to_allocation("plain", DUTS)[0] for _ in range(RUNS)]
print(f"release -> next allocation, no health job: {stats(plain, 'ms', 1000)}")
hs = [release_to_allocation("health", 1, health_dut) for _ in range(RUNS)]
print(f"release -> next allocation, health job: {stats([d for d, _ in hs], 'ms', 1000)}")
print(f"  of which release -> health job served to the DUT: {stats([s for _, s in hs], 'ms', 1000)}")
PY
