#!/usr/bin/env bash
# citron's TFTP backend against tftpd-hpa and atftpd, on loopback, in one run.
#
#   benches/tftp.sh            # as root (tftpd-hpa and atftpd are told to run as root)
#
# Serves the same 64 MiB file from citron (`citron serve`, release build), tftpd-hpa
# (in.tftpd) and atftpd, downloads it with curl at blksize 512, 1468 and 8192 (citron vs
# tftpd-hpa, same options) and with atftp --option "windowsize 16" (citron vs atftpd), then runs
# 200 concurrent 4 MiB downloads against citron and tftpd-hpa. Every download is checked by
# sha256. Prints MB/s (10^6 bytes/s, median of $REPS runs alternating citron and the peer) and
# citron's ratio to the peer. On a shared machine, `nice -n -10 benches/tftp.sh` cuts the noise.
# Env: REPS (3), SIZE_MB (64), CONC (200), PORT_BASE (17069).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPS=${REPS:-3}
SIZE_MB=${SIZE_MB:-64}
CONC=${CONC:-200}
PORT_BASE=${PORT_BASE:-17069}
CITRON_PORT=$PORT_BASE
HPA_PORT=$((PORT_BASE + 1))
ATFTPD_PORT=$((PORT_BASE + 2))
ATFTPD=${ATFTPD:-/opt/citron-peers/atftpd/usr/sbin/atftpd}

for t in curl atftp in.tftpd sha256sum xargs; do
    command -v "$t" >/dev/null || { echo "missing $t: run scripts/setup-debian.sh --bench" >&2; exit 2; }
done
[ -x "$ATFTPD" ] || { echo "missing $ATFTPD: run scripts/setup-debian.sh --bench" >&2; exit 2; }

WORK=$(mktemp -d /tmp/citron-tftp-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "building citron (release)..." >&2
(cd "$ROOT" && cargo build --release -q -p citron-cli)
BIN="$ROOT/target/release/citron"

mkdir -p "$WORK/srv" "$WORK/out" "$WORK/conc"
chmod 755 "$WORK" "$WORK/srv"
head -c "${SIZE_MB}M" /dev/urandom > "$WORK/srv/big.bin"
head -c 4M /dev/urandom > "$WORK/srv/small.bin"
chmod 644 "$WORK/srv/"*
SUM_BIG=$(sha256sum < "$WORK/srv/big.bin" | cut -d' ' -f1)
SUM_SMALL=$(sha256sum < "$WORK/srv/small.bin" | cut -d' ' -f1)

# citron: one DUT at 127.0.0.1 (where the clients send from) whose job serves both files.
cat > "$WORK/lab.yaml" <<YAML
duts:
  - id: bench
    ip: ["127.0.0.1"]
YAML
cat > "$WORK/srv/job.yaml" <<YAML
deployment:
  start:
    storage:
      tftp:
        - path: /big.bin
          file: big.bin
        - path: /small.bin
          file: small.bin
YAML
RUST_LOG=warn "$BIN" serve --lab "$WORK/lab.yaml" --job "bench=$WORK/srv/job.yaml" --data "$WORK/data" \
    --tftp "127.0.0.1:$CITRON_PORT" --http off --nbd off --api off > "$WORK/citron.log" 2>&1 &
PIDS+=($!)
in.tftpd -L -u root -s "$WORK/srv" -a "127.0.0.1:$HPA_PORT" &
PIDS+=($!)
"$ATFTPD" --daemon --no-fork --user root --group root --logfile /dev/null --port "$ATFTPD_PORT" \
    --bind-address 127.0.0.1 "$WORK/srv" &
PIDS+=($!)
for _ in $(seq 300); do grep -q listening "$WORK/citron.log" && break; sleep 0.1; done
grep -q listening "$WORK/citron.log" || { cat "$WORK/citron.log" >&2; exit 1; }
sleep 0.5

# once CMD...: runs CMD (it writes $WORK/out/f), checks the download, prints the seconds it took.
once() {
    rm -f "$WORK/out/f"
    local t0 t1 sum
    t0=$(date +%s.%N)
    "$@" >/dev/null
    t1=$(date +%s.%N)
    sum=$(sha256sum < "$WORK/out/f" | cut -d' ' -f1)
    [ "$sum" = "$SUM_BIG" ] || { echo "corrupt download: $*" >&2; exit 1; }
    awk "BEGIN { print $t1 - $t0 }"
}
median() { sort -g | sed -n "$(( (REPS + 1) / 2 ))p"; }
# pair CITRON_PORT PEER_PORT CMD...: runs CMD against citron then the peer, $REPS times, alternating
# so that both see the same background load; prints the two median times.
pair() {
    local cp=$1 pp=$2 c=() p=()
    shift 2
    for _ in $(seq "$REPS"); do
        c+=("$(once "$@" "$cp")")
        p+=("$(once "$@" "$pp")")
    done
    echo "$(printf '%s\n' "${c[@]}" | median) $(printf '%s\n' "${p[@]}" | median)"
}
mbps() { awk "BEGIN { printf \"%.1f\", $SIZE_MB * 1.048576 / $1 }"; }
ratio() { awk "BEGIN { printf \"%.2f\", $2 / $1 }"; }

# The server's port comes last.
curl_get() { timeout 600 curl -sS --fail --tftp-blksize "$1" -o "$WORK/out/f" "tftp://127.0.0.1:$2/big.bin"; }
atftp_get() {
    local args=("$@") port=${!#}
    timeout 600 atftp -g -r big.bin -l "$WORK/out/f" "${args[@]:0:$#-1}" 127.0.0.1 "$port" 2>/dev/null
}

printf '%-44s %10s %10s %7s\n' "${SIZE_MB} MiB file, loopback" "citron" "peer" "ratio"
for bs in 512 1468 8192; do
    read -r c p < <(pair "$CITRON_PORT" "$HPA_PORT" curl_get "$bs")
    printf '%-44s %10s %10s %7s\n' "curl blksize $bs (peer: tftpd-hpa) MB/s" "$(mbps "$c")" "$(mbps "$p")" "$(ratio "$c" "$p")"
done
for opts in "windowsize 16" "blksize 1468|windowsize 16"; do
    IFS='|' read -ra o <<< "$opts"
    args=()
    for x in "${o[@]}"; do args+=(--option "$x"); done
    read -r c p < <(pair "$CITRON_PORT" "$ATFTPD_PORT" atftp_get "${args[@]}")
    printf '%-44s %10s %10s %7s\n' "atftp ${opts//|/, } (peer: atftpd) MB/s" "$(mbps "$c")" "$(mbps "$p")" "$(ratio "$c" "$p")"
done

# conc PORT: CONC simultaneous 4 MiB downloads (curl, blksize 1468); prints seconds for all.
conc() {
    rm -f "$WORK/conc/"*
    local t0 t1
    t0=$(date +%s.%N)
    seq "$CONC" | timeout 600 xargs -P "$CONC" -I{} curl -sS --fail --tftp-blksize 1468 -o "$WORK/conc/{}" "tftp://127.0.0.1:$1/small.bin"
    t1=$(date +%s.%N)
    local bad=0
    for f in "$WORK/conc/"*; do
        [ "$(sha256sum < "$f" | cut -d' ' -f1)" = "$SUM_SMALL" ] || bad=$((bad + 1))
    done
    local n
    n=$(ls "$WORK/conc" | wc -l)
    [ "$n" = "$CONC" ] && [ "$bad" = 0 ] || { echo "concurrent run: $n files, $bad corrupt" >&2; exit 1; }
    awk "BEGIN { print $t1 - $t0 }"
}
c=$(conc "$CITRON_PORT")
p=$(conc "$HPA_PORT")
printf '%-44s %10.2f %10.2f %7s\n' "$CONC x 4 MiB concurrent, total s (tftpd-hpa)" "$c" "$p" "$(ratio "$c" "$p")"
echo "(ratio = citron speed / peer speed; > 1 means citron is faster)"
