#!/usr/bin/env bash
# Image boot benchmark: TCG time to userspace of the test images (tests/image/build.sh) booted
# over NBD from citron (`citron boot-test --image`) beside QEMU booting the same image from a
# local file (`snapshot=on`, so it is not written either), with the same QEMU command line
# otherwise. The ratio is citron's cost. Runs alternate (citron, local, citron, …) so both see
# the same background load.
# Not run in CI. Usage: RUNS=3 benches/image-boot.sh [bios|uefi]   (needs scripts/setup-debian.sh --qemu)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/bin:/bin:/usr/sbin:/sbin:$PATH"
fw=${1:-bios}
runs=${RUNS:-3}

if [ -z "${CITRON_BIN:-}" ]; then
  cargo build --release -q -p citron-cli
  CITRON_BIN=target/release/citron
fi
img=$(tests/image/build.sh)/$fw.img
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ready='Reached target .*Multi-User System'

# QEMU from the local file: seconds from start to the userspace line.
local_boot() {
  local extra=()
  if [ "$fw" = uefi ]; then
    cp /usr/share/OVMF/OVMF_VARS_4M.fd "$work/vars.fd"
    extra=(-drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd
           -drive "if=pflash,format=raw,unit=1,file=$work/vars.fd")
  fi
  local start end
  start=$(date +%s.%N)
  qemu-system-x86_64 -accel tcg -m 512 -smp 1 -no-reboot -nographic -vga none -serial stdio -monitor none "${extra[@]}" \
    -drive "file=$img,format=raw,if=none,id=disk0,snapshot=on" -device virtio-blk-pci,drive=disk0,bootindex=0 \
    -netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile= </dev/null 2>/dev/null > "$work/local.console" &
  local qpid=$!
  timeout 300 bash -c "tail -n +1 -f '$work/local.console' | grep -q -m1 -E '$ready'"
  end=$(date +%s.%N)
  kill "$qpid" 2>/dev/null || true; wait "$qpid" 2>/dev/null || true
  echo "$end - $start" | bc
}

# citron boot-test: the time to userspace it measured itself (QEMU start to the same line).
citron_boot() {
  RUST_LOG=warn "$CITRON_BIN" boot-test --accel tcg --image "$fw:$img" --log-dir "$work" --timeout 300s >/dev/null 2>"$work/bt.err" \
    || { cat "$work/bt.err" >&2; exit 1; }
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["ready_at"])' "$work/boot-test-results.json"
}

echo "image: $img ($fw), $runs runs each, TCG"
c_all=(); l_all=()
for i in $(seq "$runs"); do
  c=$(citron_boot); l=$(local_boot)
  c_all+=("$c"); l_all+=("$l")
  printf 'run %d: citron over NBD %.2f s, local file %.2f s\n' "$i" "$c" "$l"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
cm=$(median "${c_all[@]}"); lm=$(median "${l_all[@]}")
printf 'median: citron %.2f s, local %.2f s, ratio %.2f\n' "$cm" "$lm" "$(echo "$cm / $lm" | bc -l)"
