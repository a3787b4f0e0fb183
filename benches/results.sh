#!/usr/bin/env bash
# Results benchmark (issue 15): uploads and `latest` lookups, citron against nginx in one run.
#
#   benches/results.sh                 # builds citron in release mode first
#   SIZE=256M RUNS=3 DURATION=10 benches/results.sh
#
# Measures, on 127.0.0.1:
#   - upload throughput of one SIZE file (default 256 MiB, the most this script allows: the
#     machine it was written on has little free disk), single stream, `curl -T`, best and median
#     of RUNS: citron (a run opened, the file PUT with X-Checksum-SHA256, streamed, hashed and
#     written with fsync into its results store, renamed by digest) against nginx's WebDAV PUT
#     (`dav_methods PUT`: the body into a temporary file, renamed; no fsync) and against the
#     disk's own write rate with fsync (`dd conv=fsync`);
#   - `latest` lookups per second, `wrk -c 64` with a read token: `GET
#     /api/v1/results/JOB/latest/files/PATH?status=success` (token verified, revocation checked,
#     the newest successful run found in the state store, a 307 to the blob) against nginx
#     answering a fixed `return 307` (the cost of an HTTP redirect and nothing else: a bound,
#     not a like-for-like peer).
# Prints every figure and the ratio citron/peer. Needs nginx with the DAV module (nginx-light),
# wrk, curl, python3 (scripts/setup-debian.sh --bench). Not run in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE=${SIZE:-256M}
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
ADMIN=bench-admin-token

for t in nginx wrk curl python3; do
  command -v "$t" >/dev/null || [ -x "/usr/sbin/$t" ] || { echo "results.sh: $t is missing; run scripts/setup-debian.sh --bench" >&2; exit 2; }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
bytes=$(numfmt --from=iec "$SIZE")
[ "$bytes" -le $((256 << 20)) ] || { echo "results.sh: SIZE is at most 256M here (disk space)" >&2; exit 2; }

if [ -z "${CITRON_BIN:-}" ]; then
  cargo build --release --locked -p citron-cli >&2
  CITRON_BIN=target/release/citron
fi

tmp=$(mktemp -d /tmp/citron-results-bench.XXXXXX)
chmod 755 "$tmp"
cpid=""
cleanup() {
  [ -n "$cpid" ] && kill "$cpid" 2>/dev/null || true
  [ -f "$tmp/nginx.pid" ] && kill "$(cat "$tmp/nginx.pid")" 2>/dev/null || true
  sleep 0.5
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "== preparing a $SIZE file in $tmp" >&2
head -c "$bytes" /dev/urandom > "$tmp/upload.bin"
sha=$(sha256sum "$tmp/upload.bin" | cut -c1-64)

# --- citron: API on loopback, the administrator's token from the environment.
cat > "$tmp/lab.yaml" <<EOF
duts:
  - id: bench
    ip: ["127.0.0.2"]
# Every client here is one address: the per-peer cap must not count.
limits: { connections_per_peer: 4096 }
EOF
CITRON_API_TOKEN=$ADMIN "$CITRON_BIN" serve --lab "$tmp/lab.yaml" --data "$tmp/citron-data" \
  --http off --tftp off --nbd off --api 127.0.0.1:0 >"$tmp/citron.out" 2>"$tmp/citron.err" &
cpid=$!
for _ in $(seq 600); do grep -q listening "$tmp/citron.out" 2>/dev/null && break; sleep 0.1; done
grep -q listening "$tmp/citron.out" || { echo "citron did not start:" >&2; cat "$tmp/citron.err" >&2; exit 1; }
API=$(sed -n 's/.*api=\([^ ]*\).*/\1/p' "$tmp/citron.out")
json() { python3 -c "import json,sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }
TOKEN=$(curl -sf -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
  --data-binary '{"name": "bench"}' "http://$API/api/v1/tenants" | json token)

# --- nginx: WebDAV PUT into its own directory, and a fixed redirect.
NPORT=$(free_port)
mkdir -p "$tmp/nginx" "$tmp/dav"
chmod 777 "$tmp/dav"
cat > "$tmp/nginx/nginx.conf" <<EOF
daemon on;
worker_processes auto;
pid $tmp/nginx.pid;
error_log $tmp/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $tmp/dav/.tmp;
  proxy_temp_path $tmp/nginx/proxy;
  fastcgi_temp_path $tmp/nginx/fastcgi;
  uwsgi_temp_path $tmp/nginx/uwsgi;
  scgi_temp_path $tmp/nginx/scgi;
  server {
    listen 127.0.0.1:$NPORT;
    root $tmp/dav;
    client_max_body_size 0;
    location /up/ { dav_methods PUT; create_full_put_path on; }
    location = /latest { return 307 /blob; }
  }
}
EOF
"$NGINX" -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx" 2>/dev/null
NGINX_ADDR=127.0.0.1:$NPORT
for _ in $(seq 50); do [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$NGINX_ADDR/latest")" = 307 ] && break; sleep 0.1; done

# One citron upload: a run opened, the file PUT, the run finished. Prints MB/s of the PUT.
citron_put() {
  local run out
  run=$(curl -sf -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    --data-binary '{"revision": "bench"}' "http://$API/api/v1/results/bench/runs" | json id)
  out=$(curl -s -o /dev/null -w '%{http_code} %{speed_upload}' -T "$tmp/upload.bin" \
    -H "Authorization: Bearer $TOKEN" -H "X-Checksum-SHA256: $sha" \
    "http://$API/api/v1/results/bench/runs/$run/files/upload.bin")
  [ "${out%% *}" = 201 ] || [ "${out%% *}" = 200 ] || { echo "citron answered ${out%% *}" >&2; exit 1; }
  curl -sf -o /dev/null -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    --data-binary '{"status": "success"}' "http://$API/api/v1/results/bench/runs/$run/finish"
  python3 -c "print(${out#* } / 1e6)"
}
nginx_put() {
  local out
  out=$(curl -s -o /dev/null -w '%{http_code} %{speed_upload}' -T "$tmp/upload.bin" "http://$NGINX_ADDR/up/$1.bin")
  [ "${out%% *}" = 201 ] || [ "${out%% *}" = 204 ] || { echo "nginx answered ${out%% *}" >&2; exit 1; }
  rm -f "$tmp/dav/up/$1.bin"
  python3 -c "print(${out#* } / 1e6)"
}
dd_put() {
  local t0 t1
  t0=$(date +%s.%N)
  dd if="$tmp/upload.bin" of="$tmp/dd.bin" bs=8M conv=fsync status=none
  t1=$(date +%s.%N)
  rm -f "$tmp/dd.bin"
  python3 -c "print($bytes / ($t1 - $t0) / 1e6)"
}

echo "== uploads of $SIZE, $RUNS runs each, alternating" >&2
c="" n="" d=""
for i in $(seq "$RUNS"); do
  c+="$(citron_put) "
  n+="$(nginx_put "$i") "
  d+="$(dd_put) "
done
# citron keeps one blob (the same content every run): check it is the file, then drop it.
blob="$tmp/citron-data/results/sha256/${sha:0:2}/$sha"
[ "$(sha256sum "$blob" | cut -c1-64)" = "$sha" ] || { echo "citron's blob is not the file" >&2; exit 1; }

echo "== latest lookups, wrk -c $CONNS -d ${DURATION}s" >&2
wrk_rps() {
  local out
  out=$(wrk -t "$THREADS" -c "$CONNS" -d "${DURATION}s" "$@")
  python3 - "$out" <<'PY'
import re, sys
o = sys.argv[1]
if re.search(r"Non-2xx or 3xx responses: (\d+)", o):
    sys.exit(f"wrk saw error responses:\n{o}")
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", o).group(1))
print(f"{rps:.0f}")
PY
}
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" \
  "http://$API/api/v1/results/bench/latest/files/upload.bin?status=success")" = 307 ] || { echo "latest is not a 307" >&2; exit 1; }
lc=$(wrk_rps -H "Authorization: Bearer $TOKEN" "http://$API/api/v1/results/bench/latest/files/upload.bin?status=success")
ln=$(wrk_rps "http://$NGINX_ADDR/latest")

python3 - "$c" "$n" "$d" "$lc" "$ln" "$SIZE" <<'PY'
import statistics, sys
c, n, d = ([float(v) for v in s.split()] for s in sys.argv[1:4])
lc, ln, size = float(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
print("| measure | citron | peer | citron / peer |")
print("|---|---:|---:|---:|")
print(f"| upload {size}, curl -T, MB/s, best (vs nginx WebDAV PUT) | {max(c):.1f} | {max(n):.1f} | {max(c)/max(n):.2f}x |")
print(f"| upload {size}, curl -T, MB/s, median (vs nginx WebDAV PUT) | {statistics.median(c):.1f} | {statistics.median(n):.1f} | {statistics.median(c)/statistics.median(n):.2f}x |")
print(f"| upload {size}, MB/s, best (vs dd conv=fsync) | {max(c):.1f} | {max(d):.1f} | {max(c)/max(d):.2f}x |")
print(f"| latest lookups, wrk -c 64, req/s (vs nginx return 307) | {lc:.0f} | {ln:.0f} | {lc/ln:.2f}x |")
PY
