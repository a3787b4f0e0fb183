#!/usr/bin/env bash
# citron's TFTP backend against tftpd-hpa and atftpd, on loopback, in one run.
#
#   benches/tftp.sh            # as root (tftpd-hpa and atftpd are told to run as root)
#
# Serves the same 64 MiB file from citron (`citron serve`, release build), tftpd-hpa
# (in.tftpd) and atftpd, downloads it with curl at blksize 512, 1468 and 8192 (citron vs
# tftpd-hpa, same options) and with atftp --option "windowsize 16" at blksize 512, 1468 and 8192
# (citron vs atftpd), then runs 200 concurrent 4 MiB downloads against citron and tftpd-hpa.
# Every download is checked by sha256. Prints MB/s (10^6 bytes/s, median of $REPS runs
# alternating citron and the peer) and citron's ratio to the peer. On a shared machine,
# `nice -n -10 benches/tftp.sh` cuts the noise.
#
# A download that fails (client error, corrupt file, or over $DL_TIMEOUT seconds) is a failure
# of that server at those options: its cell reads FAIL and that server is not tried again at
# those options (atftpd 0.8.0 stalls at blksize 8192 + windowsize 16). The script exits 1 at the
# end if citron failed anywhere, 0 if only a peer did.
# Env: REPS (3), SIZE_MB (64), CONC (200), PORT_BASE (17069), DL_TIMEOUT (120).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPS=${REPS:-3}
SIZE_MB=${SIZE_MB:-64}
CONC=${CONC:-200}
PORT_BASE=${PORT_BASE:-17069}
DL_TIMEOUT=${DL_TIMEOUT:-120}
CITRON_FAILED=0
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

# citron: one DUT at 127.0.0.1 (where the clients send from) whose job serves both files. The
# $CONC concurrent downloads stand for $CONC DUTs but all come from 127.0.0.1, so that one DUT is
# given the slots of many (limits.tftp_transfers_per_dut, 16 by default).
cat > "$WORK/lab.yaml" <<YAML
duts:
  - id: bench
    ip: ["127.0.0.1"]
limits:
  tftp_transfers_per_dut: $((CONC + 16))
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

# once CMD...: runs CMD (it writes $WORK/out/f), checks the download, prints the seconds it took,
# or FAIL (with the reason on stderr) if CMD failed, timed out or the file differs.
once() {
    rm -f "$WORK/out/f"
    local t0 t1 sum rc=0
    t0=$(date +%s.%N)
    "$@" >/dev/null || rc=$?
    t1=$(date +%s.%N)
    if [ "$rc" != 0 ]; then
        [ "$rc" = 124 ] && echo "  timed out after ${DL_TIMEOUT}s: $*" >&2 || echo "  failed (exit $rc): $*" >&2
        echo FAIL
        return
    fi
    [ -f "$WORK/out/f" ] && sum=$(sha256sum < "$WORK/out/f" | cut -d' ' -f1)
    if [ "$sum" != "$SUM_BIG" ]; then
        echo "  corrupt download: $*" >&2
        echo FAIL
        return
    fi
    awk "BEGIN { print $t1 - $t0 }"
}
# med TIMES...: the median, or FAIL if any run failed.
med() {
    case " $* " in *" FAIL "*) echo FAIL; return ;; esac
    printf '%s\n' "$@" | sort -g | sed -n "$(( ($# + 1) / 2 ))p"
}
# pair CITRON_PORT PEER_PORT CMD...: runs CMD against citron then the peer, $REPS times, alternating
# so that both see the same background load; prints the two median times (or FAIL). A server that
# failed once is not tried again at these options.
pair() {
    local cp=$1 pp=$2 c=() p=()
    shift 2
    for _ in $(seq "$REPS"); do
        case " ${c[*]} " in *" FAIL "*) ;; *) c+=("$(once "$@" "$cp")") ;; esac
        case " ${p[*]} " in *" FAIL "*) ;; *) p+=("$(once "$@" "$pp")") ;; esac
    done
    echo "  $* (s): citron ${c[*]} / peer ${p[*]}" >&2
    echo "$(med "${c[@]}") $(med "${p[@]}")"
}
mbps() { [ "$1" = FAIL ] && echo FAIL || awk "BEGIN { printf \"%.1f\", $SIZE_MB * 1.048576 / $1 }"; }
ratio() { [ "$1" = FAIL ] || [ "$2" = FAIL ] && echo - || awk "BEGIN { printf \"%.2f\", $2 / $1 }"; }
# row LABEL CITRON_TIME PEER_TIME
row() {
    [ "$2" = FAIL ] && CITRON_FAILED=1
    printf '%-48s %10s %10s %7s\n' "$1" "$(mbps "$2")" "$(mbps "$3")" "$(ratio "$2" "$3")"
}

# The server's port comes last.
curl_get() { timeout "$DL_TIMEOUT" curl -sS --fail --tftp-blksize "$1" -o "$WORK/out/f" "tftp://127.0.0.1:$2/big.bin"; }
atftp_get() {
    local args=("$@") port=${!#}
    timeout "$DL_TIMEOUT" atftp -g -r big.bin -l "$WORK/out/f" "${args[@]:0:$#-1}" 127.0.0.1 "$port" 2>/dev/null
}

printf '%-48s %10s %10s %7s\n' "${SIZE_MB} MiB file, loopback" "citron" "peer" "ratio"
for bs in 512 1468 8192; do
    read -r c p < <(pair "$CITRON_PORT" "$HPA_PORT" curl_get "$bs")
    row "curl blksize $bs (peer: tftpd-hpa) MB/s" "$c" "$p"
done
for opts in "windowsize 16" "blksize 1468|windowsize 16" "blksize 8192|windowsize 16"; do
    IFS='|' read -ra o <<< "$opts"
    args=()
    for x in "${o[@]}"; do args+=(--option "$x"); done
    read -r c p < <(pair "$CITRON_PORT" "$ATFTPD_PORT" atftp_get "${args[@]}")
    row "atftp ${opts//|/, } (peer: atftpd) MB/s" "$c" "$p"
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
printf '%-48s %10.2f %10.2f %7s\n' "$CONC x 4 MiB concurrent, total s (tftpd-hpa)" "$c" "$p" "$(ratio "$c" "$p")"
echo "(ratio = citron speed / peer speed; > 1 means citron is faster; FAIL: see the messages above)"
[ "$CITRON_FAILED" = 0 ] || { echo "citron failed a download" >&2; exit 1; }
