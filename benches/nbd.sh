#!/usr/bin/env bash
# NBD benchmark: citron vs qemu-nbd vs nbdkit (file plugin) serving the same 1 GiB image, read-only.
#   sequential read with nbdcopy (defaults: 4 connections) and with -C 1 --synchronous,
#   4 KiB random reads with fio's nbd engine, and the RSS of 256 idle connections.
# Not run in CI. Usage: benches/nbd.sh [SIZE_MIB]   (needs libnbd-bin, nbdkit, qemu-utils, fio)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/bin:/bin:/usr/sbin:/sbin:$PATH"
size_mib=${1:-1024}
runs=${RUNS:-3}

cargo build --release -q -p citron-protocols --example nbd_serve
bin=target/release/examples/nbd_serve
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

img=$work/disk.img
head -c $((size_mib << 20)) /dev/urandom > "$img"

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do nbdinfo --size "nbd://127.0.0.1:$1/disk" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "server on $1 did not start" >&2; exit 1; }

# citron (release build of the example server: one DUT at 127.0.0.1, image disk, read-only)
"$bin" "$work/citron-data" 0 disk "image:$img" job_start ro > "$work/citron.out" &
pids+=($!); citron_pid=$!
for _ in $(seq 600); do grep -q listening "$work/citron.out" 2>/dev/null && break; sleep 0.1; done
citron_port=$(sed -n 's/.*127.0.0.1:\([0-9]*\).*/\1/p' "$work/citron.out")
# qemu-nbd
qemu_port=$(free_port)
qemu-nbd -r -f raw -x disk -b 127.0.0.1 -p "$qemu_port" --shared=300 --persistent "$img" &
pids+=($!); qemu_pid=$!
# nbdkit
nbdkit_port=$(free_port)
nbdkit -f -r -i 127.0.0.1 -p "$nbdkit_port" file "$img" &
pids+=($!); nbdkit_pid=$!
for p in "$citron_port" "$qemu_port" "$nbdkit_port"; do wait_port "$p"; done
cat "$img" > /dev/null  # page cache warm for everyone

declare -A port=([citron]=$citron_port [qemu-nbd]=$qemu_port [nbdkit]=$nbdkit_port)
declare -A pid=([citron]=$citron_pid [qemu-nbd]=$qemu_pid [nbdkit]=$nbdkit_pid)
servers=(citron qemu-nbd nbdkit)

# best of $runs, MB/s
seq_read() { # server, extra nbdcopy args...
  local s=$1; shift; local best=0
  for _ in $(seq "$runs"); do
    local t0 t1; t0=$(date +%s.%N)
    nbdcopy "$@" "nbd://127.0.0.1:${port[$s]}/disk" null:
    t1=$(date +%s.%N)
    best=$(/usr/bin/python3 -c "print(max($best, $size_mib*1048576/1e6/($t1-$t0)))")
  done
  printf '%.0f' "$best"
}
rand_read() { # server -> IOPS
  fio --name=rr --ioengine=nbd --uri="nbd://127.0.0.1:${port[$1]}/disk" --rw=randread --bs=4k --iodepth=16 \
      --size="${size_mib}M" --runtime=10 --time_based --output-format=json 2>/dev/null | sed -n "/^{/,\$p" |
    /usr/bin/python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["read"]["iops"]))'
}
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
idle_bytes() { # server -> bytes of RSS per idle connection (256 after NBD_OPT_GO)
  local before after
  before=$(rss_kib "${pid[$1]}")
  /usr/bin/python3 - "${port[$1]}" "$work/$1.idle" <<'PY' &
import socket, struct, sys, time
port = int(sys.argv[1]); conns = []
def exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b)); assert c; b += c
    return b
for _ in range(256):
    s = socket.create_connection(("127.0.0.1", port)); exact(s, 18); s.sendall(struct.pack(">I", 3))
    name = b"disk"; data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
    s.sendall(struct.pack(">QII", 0x49484156454F5054, 7, len(data)) + data)
    while True:
        h = exact(s, 20); kind, ln = struct.unpack(">II", h[12:20]); exact(s, ln)
        if kind == 1 or kind & 0x80000000: break
    assert kind == 1, hex(kind)
    conns.append(s)
open(sys.argv[2], "w").write("up")
time.sleep(3)
PY
  local py=$!
  for _ in $(seq 200); do [ -e "$work/$1.idle" ] && break; sleep 0.1; done
  sleep 1; after=$(rss_kib "${pid[$1]}"); wait "$py"
  echo $(( (after - before) * 1024 / 256 ))
}

declare -A seq4 seq1 rand idle
for s in "${servers[@]}"; do
  seq4[$s]=$(seq_read "$s")
  seq1[$s]=$(seq_read "$s" -C 1 --synchronous)
  rand[$s]=$(rand_read "$s")
  idle[$s]=$(idle_bytes "$s")
done

ratio() { /usr/bin/python3 -c "print(f'{$1/$2:.2f}x')"; }
echo
echo "NBD, ${size_mib} MiB image, page cache warm, $(nproc) cores, best of $runs (fio: 10 s)"
printf '%-10s %16s %24s %16s %16s\n' server "nbdcopy MB/s" "nbdcopy -C1 sync MB/s" "4k rand IOPS" "idle B/conn"
for s in "${servers[@]}"; do
  printf '%-10s %16s %24s %16s %16s\n' "$s" "${seq4[$s]}" "${seq1[$s]}" "${rand[$s]}" "${idle[$s]}"
done
for peer in nbdkit qemu-nbd; do
  echo "citron/$peer: nbdcopy $(ratio "${seq4[citron]}" "${seq4[$peer]}"), -C1 sync $(ratio "${seq1[citron]}" "${seq1[$peer]}"), rand $(ratio "${rand[citron]}" "${rand[$peer]}")"
done
