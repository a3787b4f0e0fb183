#!/usr/bin/env bash
# Does the state store slow serving? (issue 14; access lines: issue 18.) One run, four citrons
# serving the same job from the same files on loopback, measured interleaved:
#
#   memory    the lab in memory only (citron-lab's `serve_in_memory` example: no state store)
#   sqlite    `citron serve`, its SQLite state in --data (the default)
#   postgres  `citron serve --state postgres://…` (a PostgreSQL this script starts and stops)
#   quiet     as sqlite, with RUST_LOG=info,citron::access=off (no access lines)
#
# The first three run with RUST_LOG=info (one access line per request, stderr to a file).
#
#   benches/state-ab.sh                    # builds the release binaries first
#   ROUNDS=3 DURATION=10 benches/state-ab.sh
#   CITRON_BIN=… MEMORY_BIN=… benches/state-ab.sh
#
# Measures (every download checked by sha256 once, before the rounds):
#   http 1 KiB wrk req/s      wrk -t2 -c64 on a 1 KiB file
#   http 4 MiB wrk req/s, MB/s  wrk -t2 -c64 on a 4 MiB file
#   http BIG MiB curl MB/s    one curl download of a $BIG_MB MiB file, median of $CURLS
#   tftp blksize 1468/8192 MB/s  one curl download of a $TFTP_MB MiB file, median of $CURLS
#   tftp N x 1 MiB MB/s       $CONC concurrent curl downloads (blksize 1468), all bytes / wall time
#
# The machine is shared (2 CPUs, other builds), so every measure runs on the four servers one
# after the other before the next measure, and each round starts with the next server
# (round 1: memory sqlite postgres quiet; round 2: sqlite postgres quiet memory; …): background
# load then hits all four alike. Prints every figure, then per measure the median of the rounds
# and their spread (min–max), and each ratio as the median of the per-round ratios (servers
# measured seconds apart) with its min–max. RAW=FILE keeps the raw figures (TSV).
# Needs: wrk, curl, python3, PostgreSQL's initdb and pg_ctl (scripts/setup-debian.sh --bench).
# Loopback only; every loop is bounded. Not run in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
BIG_MB=${BIG_MB:-256}
TFTP_MB=${TFTP_MB:-32}
CURLS=${CURLS:-3}
CONC=${CONC:-32}
DL_TIMEOUT=${DL_TIMEOUT:-120}
CONFIGS=(memory sqlite postgres quiet)

for t in wrk curl python3 sha256sum xargs; do
  command -v "$t" >/dev/null || { echo "state-ab.sh: $t is missing; run scripts/setup-debian.sh --bench" >&2; exit 2; }
done
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$PGBIN/initdb" ] || PGBIN=$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")
[ -x "$PGBIN/initdb" ] && [ -x "$PGBIN/pg_ctl" ] || { echo "state-ab.sh: PostgreSQL (initdb, pg_ctl) is missing; run scripts/setup-debian.sh" >&2; exit 2; }

if [ -z "${CITRON_BIN:-}" ]; then
  cargo build --release --locked -p citron-cli >&2
  CITRON_BIN=target/release/citron
fi
if [ -z "${MEMORY_BIN:-}" ]; then
  cargo build --release --locked -p citron-lab --example serve_in_memory >&2
  MEMORY_BIN=target/release/examples/serve_in_memory
fi

tmp=$(mktemp -d /tmp/citron-state-ab.XXXXXX)
chmod 755 "$tmp"
pids=()
PGPID=
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "$PGPID" ]; then
    kill -INT "$PGPID" 2>/dev/null || true # fast shutdown
    for _ in $(seq 100); do kill -0 "$PGPID" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# PostgreSQL refuses to run as root: as `nobody` then.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u nobody -- "$@"; else "$@"; fi; }

echo "== files and PostgreSQL in $tmp" >&2
mkdir -p "$tmp/www"
head -c 1K /dev/urandom >"$tmp/www/1k.bin"
head -c 4M /dev/urandom >"$tmp/www/4m.bin"
head -c "${BIG_MB}M" /dev/urandom >"$tmp/www/big.bin"
head -c "${TFTP_MB}M" /dev/urandom >"$tmp/www/tftp.bin"
head -c 1M /dev/urandom >"$tmp/www/small.bin"
cat >"$tmp/www/job.yaml" <<EOF
deployment:
  start:
    storage:
      http:
        - { path: /1k.bin, file: 1k.bin }
        - { path: /4m.bin, file: 4m.bin }
        - { path: /big.bin, file: big.bin }
      tftp:
        - { path: /tftp.bin, file: tftp.bin }
        - { path: /small.bin, file: small.bin }
EOF
# Every client is 127.0.0.1 (wrk cannot pick a source address): the per-peer caps must not count.
cat >"$tmp/lab.yaml" <<EOF
duts:
  - id: bench
    ip: ["127.0.0.1"]
limits: { connections_per_peer: 4096, tftp_transfers_per_dut: $((CONC + 16)) }
EOF

mkdir -p "$tmp/pg"
[ "$(id -u)" = 0 ] && chown nobody "$tmp/pg"
as_pg "$PGBIN/initdb" -D "$tmp/pg/data" -U citron --auth=trust -E UTF8 >"$tmp/pg/initdb.log" 2>&1 ||
  { cat "$tmp/pg/initdb.log" >&2; exit 1; }
PGPORT=$(free_port)
# Default settings (fsync on), as a lab would run it.
as_pg "$PGBIN/pg_ctl" -D "$tmp/pg/data" -o "-p $PGPORT -c listen_addresses=127.0.0.1 -k $tmp/pg" \
  -l "$tmp/pg/log" -w -t 60 start >/dev/null || { cat "$tmp/pg/log" >&2; exit 1; }
PGPID=$(head -n 1 "$tmp/pg/data/postmaster.pid")

declare -A HTTP TFTP
start() { # NAME RUST_LOG CMD...: starts a server, waits for its listening line, notes its addresses
  local name=$1 log=$2 i
  shift 2
  RUST_LOG=$log "$@" --lab "$tmp/lab.yaml" --job "bench=$tmp/www/job.yaml" --data "$tmp/$name-data" \
    --http 127.0.0.1:0 --tftp 127.0.0.1:0 >"$tmp/$name.out" 2>"$tmp/$name.err" &
  pids+=($!)
  for i in $(seq 600); do grep -q listening "$tmp/$name.out" 2>/dev/null && break; sleep 0.1; done
  grep -q listening "$tmp/$name.out" || { echo "$name did not start:" >&2; cat "$tmp/$name.err" >&2; exit 1; }
  HTTP[$name]=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$tmp/$name.out")
  TFTP[$name]=$(sed -n 's/.*tftp=\([^ ]*\).*/\1/p' "$tmp/$name.out")
}
serve=("$CITRON_BIN" serve --nbd off --api off)
start memory info "$MEMORY_BIN"
start sqlite info "${serve[@]}" --gateway bench-sqlite
start postgres info "${serve[@]}" --gateway bench-postgres --state "postgres://citron@127.0.0.1:$PGPORT/postgres"
start quiet info,citron::access=off "${serve[@]}" --gateway bench-quiet

sum() { sha256sum | cut -c1-64; }
for c in "${CONFIGS[@]}"; do
  for f in 1k 4m big; do
    [ "$(curl -sf "http://${HTTP[$c]}/$f.bin" | sum)" = "$(sum <"$tmp/www/$f.bin")" ] || { echo "$c serves a wrong $f.bin over HTTP" >&2; exit 1; }
  done
  for f in tftp small; do
    [ "$(curl -sf --max-time "$DL_TIMEOUT" "tftp://${TFTP[$c]}/$f.bin" | sum)" = "$(sum <"$tmp/www/$f.bin")" ] ||
      { echo "$c serves a wrong $f.bin over TFTP" >&2; exit 1; }
  done
done

wrk_run() { # URL: "req/s MB/s"; fails on any error response
  local out
  out=$(wrk -t "$THREADS" -c "$CONNS" -d "${DURATION}s" "$1")
  python3 - "$out" <<'PY'
import re, sys
o = sys.argv[1]
if re.search(r"Non-2xx or 3xx responses: (\d+)", o):
    sys.exit(f"wrk saw error responses:\n{o}")
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", o).group(1))
m = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", o)
mult = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[m.group(2)]
print(f"{rps:.0f} {float(m.group(1)) * mult / 1e6:.1f}")
PY
}
curl_median() { # URL [curl options...]: median MB/s of $CURLS downloads
  local url=$1 v="" one
  shift
  for _ in $(seq "$CURLS"); do
    one=$(curl -sf --max-time "$DL_TIMEOUT" "$@" -o /dev/null -w '%{speed_download}' "$url") || { echo "curl $url failed" >&2; return 1; }
    v+="$one "
  done
  python3 -c 'import statistics, sys; print(f"{statistics.median(float(x) for x in sys.argv[1:]) / 1e6:.1f}")' $v
}
conc_run() { # TFTP_ADDR: MB/s of $CONC concurrent 1 MiB downloads
  local t0 t1
  t0=$(date +%s.%N)
  seq "$CONC" | xargs -P "$CONC" -I{} curl -sf --max-time "$DL_TIMEOUT" --tftp-blksize 1468 -o /dev/null "tftp://$1/small.bin" ||
    { echo "a concurrent TFTP download from $1 failed" >&2; return 1; }
  t1=$(date +%s.%N)
  python3 -c "print(f'{$CONC * 1.048576 / ($t1 - $t0):.1f}')"
}

raw=$tmp/raw.tsv
: >"$raw"
note() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$raw"; echo "  round $1 $2: $3 = $4" >&2; }
MEASURES=(http1k http4m httpbig tftp1468 tftp8192 tftpconc)
one() { # MEASURE ROUND CONFIG; a failed measure stops the run
  local m=$1 r=$2 c=$3 a b
  case $m in
    http1k)
      read -r a _ < <(wrk_run "http://${HTTP[$c]}/1k.bin") || exit 1
      note "$r" "$c" "http 1 KiB wrk -c $CONNS req/s" "$a" ;;
    http4m)
      read -r a b < <(wrk_run "http://${HTTP[$c]}/4m.bin") || exit 1
      note "$r" "$c" "http 4 MiB wrk -c $CONNS req/s" "$a"
      note "$r" "$c" "http 4 MiB wrk -c $CONNS MB/s" "$b" ;;
    httpbig)
      a=$(curl_median "http://${HTTP[$c]}/big.bin") || exit 1
      note "$r" "$c" "http $BIG_MB MiB curl MB/s (median of $CURLS)" "$a" ;;
    tftp1468)
      a=$(curl_median "tftp://${TFTP[$c]}/tftp.bin" --tftp-blksize 1468) || exit 1
      note "$r" "$c" "tftp $TFTP_MB MiB blksize 1468 MB/s (median of $CURLS)" "$a" ;;
    tftp8192)
      a=$(curl_median "tftp://${TFTP[$c]}/tftp.bin" --tftp-blksize 8192) || exit 1
      note "$r" "$c" "tftp $TFTP_MB MiB blksize 8192 MB/s (median of $CURLS)" "$a" ;;
    tftpconc)
      a=$(conc_run "${TFTP[$c]}") || exit 1
      note "$r" "$c" "tftp $CONC x 1 MiB concurrent MB/s" "$a" ;;
  esac
}

echo "== $ROUNDS rounds, $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for r in $(seq "$ROUNDS"); do
  # This round's order: the configurations rotated by r-1.
  order=("${CONFIGS[@]:$(((r - 1) % ${#CONFIGS[@]}))}" "${CONFIGS[@]:0:$(((r - 1) % ${#CONFIGS[@]}))}")
  echo "== round $r: ${order[*]} ($(date -u +%H:%M:%S), load $(cut -d' ' -f1 /proc/loadavg))" >&2
  for m in "${MEASURES[@]}"; do
    for c in "${order[@]}"; do one "$m" "$r" "$c"; done
  done
done
[ -n "${RAW:-}" ] && cp "$raw" "$RAW"

echo
echo "State store A/B: $ROUNDS rounds, $(nproc) CPUs, $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$raw" <<'PY'
import statistics, sys
rows = {}  # measure -> config -> round -> value
for line in open(sys.argv[1]):
    r, c, m, v = line.rstrip("\n").split("\t")
    rows.setdefault(m, {}).setdefault(c, {})[int(r)] = float(v)
def fig(x): return f"{x:.0f}" if x >= 100 else f"{x:.1f}"
def med(d): v = list(d.values()); return f"{fig(statistics.median(v))} ({fig(min(v))}–{fig(max(v))})"
def ratio(a, b):
    rs = [a[r] / b[r] for r in a if r in b and b[r]]
    return f"{statistics.median(rs):.2f} ({min(rs):.2f}–{max(rs):.2f})"
print("| measure | memory | SQLite | PostgreSQL | SQLite, no access lines | SQLite / memory | PostgreSQL / memory | no lines / lines |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for m, d in rows.items():
    print(f"| {m} | {med(d['memory'])} | {med(d['sqlite'])} | {med(d['postgres'])} | {med(d['quiet'])} | "
          f"{ratio(d['sqlite'], d['memory'])} | {ratio(d['postgres'], d['memory'])} | {ratio(d['quiet'], d['sqlite'])} |")
print("\nfigures: median of the rounds (min–max); ratios: median of the per-round ratios (min–max); higher is faster")
PY
