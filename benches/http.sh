#!/usr/bin/env bash
# HTTP benchmark: citron against nginx (sendfile on, access_log off) on the same files, in one run.
#
#   benches/http.sh            # builds citron in release mode first
#   DURATION=10 RUNS=3 benches/http.sh
#
# Measures, for both servers on 127.0.0.1 (the bench lab registers 127.0.0.1 as a DUT, since wrk
# cannot pick a source address):
#   - 1 GiB file, one curl: MB/s (best and median of RUNS);
#   - 4 MiB file, one curl: MB/s (best and median of 10*RUNS), and wrk -c 64: req/s and MB/s;
#   - 1 KiB file, wrk -c 64: req/s;
#   - 256 idle keep-alive connections (each after one request) to a freshly started citron:
#     RSS growth per connection (after a warm-up batch of 32), 0.2 s and 3 s after the last.
# Prints every figure and the ratio citron/nginx. Needs: nginx (nginx-light), wrk, curl, python3
# (scripts/setup-debian.sh --bench). Not run in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
IDLE=${IDLE:-256}

for t in nginx wrk curl python3; do
  command -v "$t" >/dev/null || [ -x "/usr/sbin/$t" ] || { echo "http.sh: $t is missing; run scripts/setup-debian.sh --bench" >&2; exit 2; }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

if [ -z "${CITRON_BIN:-}" ]; then
  cargo build --release --locked -p citron-cli >&2
  CITRON_BIN=target/release/citron
fi

tmp=$(mktemp -d /tmp/citron-http-bench.XXXXXX)
chmod 755 "$tmp"   # nginx workers run as an unprivileged user when started by root
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$tmp/nginx.pid" ] && kill "$(cat "$tmp/nginx.pid")" 2>/dev/null || true
  sleep 0.5
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "== preparing files in $tmp" >&2
mkdir -p "$tmp/www"
head -c 1G /dev/urandom > "$tmp/www/1g.bin"
head -c 4M /dev/urandom > "$tmp/www/4m.bin"
head -c 1K /dev/urandom > "$tmp/www/1k.bin"
chmod -R a+rX "$tmp/www"

# --- citron: a lab where 127.0.0.1 is a DUT, a job serving the three files from disk.
cat > "$tmp/lab.yaml" <<EOF
duts:
  - id: bench
    ip: ["127.0.0.1"]
# Every client here is one address (wrk cannot pick one): the per-peer cap must not count.
limits: { connections_per_peer: 4096 }
EOF
cat > "$tmp/www/job.yaml" <<EOF
deployment:
  start:
    storage:
      http:
        - path: /1g.bin
          file: 1g.bin
        - path: /4m.bin
          file: 4m.bin
        - path: /1k.bin
          file: 1k.bin
EOF
"$CITRON_BIN" serve --lab "$tmp/lab.yaml" --job "bench=$tmp/www/job.yaml" --data "$tmp/citron-data" \
  --http 127.0.0.1:0 --tftp off --nbd off --api off >"$tmp/citron.out" 2>"$tmp/citron.err" &
cpid=$!
pids+=("$cpid")
for _ in $(seq 600); do grep -q listening "$tmp/citron.out" 2>/dev/null && break; sleep 0.1; done
grep -q listening "$tmp/citron.out" || { echo "citron did not start:" >&2; cat "$tmp/citron.err" >&2; exit 1; }
CITRON=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$tmp/citron.out")

# --- nginx: its own config, high port, sendfile on, access log off.
NPORT=$(free_port)
mkdir -p "$tmp/nginx"
cat > "$tmp/nginx/nginx.conf" <<EOF
daemon on;
worker_processes auto;
pid $tmp/nginx.pid;
error_log $tmp/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path $tmp/nginx/body;
  proxy_temp_path $tmp/nginx/proxy;
  fastcgi_temp_path $tmp/nginx/fastcgi;
  uwsgi_temp_path $tmp/nginx/uwsgi;
  scgi_temp_path $tmp/nginx/scgi;
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:$NPORT;
    root $tmp/www;
  }
}
EOF
"$NGINX" -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx" 2>/dev/null
NGINX_ADDR=127.0.0.1:$NPORT
for _ in $(seq 50); do curl -sf -o /dev/null "http://$NGINX_ADDR/1k.bin" && break; sleep 0.1; done

for f in 1g.bin 4m.bin 1k.bin; do
  a=$(curl -sf "http://$CITRON/$f" | sha256sum | cut -c1-64)
  b=$(curl -sf "http://$NGINX_ADDR/$f" | sha256sum | cut -c1-64)
  [ "$a" = "$b" ] || { echo "citron and nginx serve different $f" >&2; exit 1; }
done

# Single-stream MB/s of each URL over $3 downloads, alternating between the two servers so that
# both see the same background load. Prints "best1 best2 median1 median2": the best shows what
# each can do, the median what a DUT usually gets on a noisy machine.
curl_pair() {
  local a="" b=""
  for _ in $(seq "$3"); do
    a+="$(curl -s -o /dev/null -w '%{speed_download}' "$1") "
    b+="$(curl -s -o /dev/null -w '%{speed_download}' "$2") "
  done
  python3 - "$a" "$b" <<'PY'
import statistics, sys
a, b = ([float(v) / 1e6 for v in s.split()] for s in sys.argv[1:3])
print(f"{max(a):.1f} {max(b):.1f} {statistics.median(a):.1f} {statistics.median(b):.1f}")
PY
}

# wrk: "req/s MB/s"
wrk_run() {
  local out
  out=$(wrk -t "$THREADS" -c "$CONNS" -d "${DURATION}s" --latency "$1")
  python3 - "$out" <<'PY'
import re, sys
o = sys.argv[1]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", o).group(1))
m = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", o)
mult = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[m.group(2)]
errs = re.search(r"Non-2xx or 3xx responses: (\d+)", o)
if errs:
    sys.exit(f"wrk saw {errs.group(1)} error responses:\n{o}")
print(f"{rps:.0f} {float(m.group(1)) * mult / 1e6:.1f}")
PY
}

ratio() { python3 -c "print(f'{$1/$2:.2f}x')"; }

rss_kib() { # RSS of a process and its children (nginx workers), in KiB
  local total=0 p
  for p in "$@"; do total=$((total + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status"))); done
  echo "$total"
}

idle_per_conn() { # $1 = addr, rest = pids to measure; prints bytes per idle connection
  local addr=$1; shift
  python3 - "$addr" "$IDLE" "$@" <<'PY'
import socket, sys, time
addr, n, pids = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
host, port = addr.rsplit(":", 1)
def rss():
    t = 0
    for p in pids:
        for l in open(f"/proc/{p}/status"):
            if l.startswith("VmRSS"):
                t += int(l.split()[1]) * 1024
    return t
req = f"GET /1k.bin HTTP/1.1\r\nHost: {addr}\r\n\r\n".encode()
def one():
    s = socket.create_connection((host, int(port)))
    s.sendall(req)
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, body = buf.split(b"\r\n\r\n", 1)
    length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
    while len(body) < length:
        body += s.recv(65536)
    return s
# Warm up allocator pools and worker state with a first batch, then measure a second one.
warm = [one() for _ in range(32)]
time.sleep(0.5)
before = rss()
conns = [one() for _ in range(n)]
time.sleep(0.2)
busy = rss()
# citron parks a connection idle for 1-2 s (drops its HTTP buffers, keeps the socket).
time.sleep(3.0)
after = rss()
print(max(0, busy - before) // n, max(0, after - before) // n)
for s in conns + warm:
    s.close()
PY
}

nginx_pids() { echo "$(cat "$tmp/nginx.pid") $(pgrep -P "$(cat "$tmp/nginx.pid")" | tr '\n' ' ')"; }

echo "== 1 GiB, curl ($RUNS each)" >&2
read -r c1g n1g c1gm n1gm < <(curl_pair "http://$CITRON/1g.bin" "http://$NGINX_ADDR/1g.bin" "$RUNS")
echo "== 4 MiB, curl ($((RUNS * 10)) each)" >&2
read -r c4c n4c c4cm n4cm < <(curl_pair "http://$CITRON/4m.bin" "http://$NGINX_ADDR/4m.bin" $((RUNS * 10)))
echo "== 4 MiB, wrk -c $CONNS ${DURATION}s" >&2
read -r c4r c4m < <(wrk_run "http://$CITRON/4m.bin"); read -r n4r n4m < <(wrk_run "http://$NGINX_ADDR/4m.bin")
echo "== 1 KiB, wrk -c $CONNS ${DURATION}s" >&2
read -r c1r _ < <(wrk_run "http://$CITRON/1k.bin"); read -r n1r _ < <(wrk_run "http://$NGINX_ADDR/1k.bin")
echo "== $IDLE idle keep-alive connections (fresh citron)" >&2
# A fresh process, so that heap pages left resident by the wrk runs do not hide the growth.
mkdir -p "$tmp/idle"
cp "$tmp/www/1k.bin" "$tmp/idle/"
printf 'deployment:\n  start:\n    storage:\n      http:\n        - path: /1k.bin\n          file: 1k.bin\n' > "$tmp/idle/job.yaml"
"$CITRON_BIN" serve --lab "$tmp/lab.yaml" --job "bench=$tmp/idle/job.yaml" --data "$tmp/idle-data" \
  --http 127.0.0.1:0 --tftp off --nbd off --api off >"$tmp/idle.out" 2>"$tmp/idle.err" &
ipid=$!
pids+=("$ipid")
for _ in $(seq 100); do grep -q listening "$tmp/idle.out" 2>/dev/null && break; sleep 0.1; done
IDLE_ADDR=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$tmp/idle.out")
# shellcheck disable=SC2046
read -r cidle0 cidle < <(idle_per_conn "$IDLE_ADDR" "$ipid"); read -r nidle0 nidle < <(idle_per_conn "$NGINX_ADDR" $(nginx_pids))

echo
echo "HTTP benchmark: citron vs nginx $("$NGINX" -v 2>&1 | sed 's/.*\///'), $(nproc) CPUs, $(date -u +%Y-%m-%d)"
printf '%-34s %12s %12s %8s\n' "measure" "citron" "nginx" "ratio"
printf '%-34s %12s %12s %8s\n' "1 GiB curl MB/s, best" "$c1g" "$n1g" "$(ratio "$c1g" "$n1g")"
printf '%-34s %12s %12s %8s\n' "1 GiB curl MB/s, median" "$c1gm" "$n1gm" "$(ratio "$c1gm" "$n1gm")"
printf '%-34s %12s %12s %8s\n' "4 MiB curl MB/s, best" "$c4c" "$n4c" "$(ratio "$c4c" "$n4c")"
printf '%-34s %12s %12s %8s\n' "4 MiB curl MB/s, median" "$c4cm" "$n4cm" "$(ratio "$c4cm" "$n4cm")"
printf '%-34s %12s %12s %8s\n' "4 MiB wrk -c $CONNS req/s" "$c4r" "$n4r" "$(ratio "$c4r" "$n4r")"
printf '%-34s %12s %12s %8s\n' "4 MiB wrk -c $CONNS MB/s" "$c4m" "$n4m" "$(ratio "$c4m" "$n4m")"
printf '%-34s %12s %12s %8s\n' "1 KiB wrk -c $CONNS req/s" "$c1r" "$n1r" "$(ratio "$c1r" "$n1r")"
printf '%-34s %12s %12s\n' "keep-alive conn, 0.2 s idle (B RSS)" "$cidle0" "$nidle0"
printf '%-34s %12s %12s\n' "keep-alive conn, 3 s idle (B RSS)" "$cidle" "$nidle"
