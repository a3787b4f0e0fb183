#!/usr/bin/env bash
# Builds the virtual DUT's boot files from this machine's own packages (nothing is downloaded):
#   vmlinuz             the newest /boot/vmlinuz-* that has its modules (linux-image-amd64)
#   initramfs.cpio.gz   busybox-static, nbd-client with its shared libraries, the kernel modules
#                       for virtio-net, NBD and ext4 (decompressed), and tests/vdut/init as /init
#   rootfs-*.tar.gz     small tarballs the jobs turn into ext4 disks (a marker.txt each)
# Usage: tests/vdut/build.sh [OUT_DIR]     (default: <repo>/target/vdut; env KVER picks a kernel)
# Prints OUT_DIR. Skips the work when its inputs have not changed since the last build.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# Always <repo>/target/vdut by default (not $CARGO_TARGET_DIR): the jobs in tests/vdut name their
# files relative to themselves, as ../../target/vdut/...
out=${1:-$repo/target/vdut}

die() { echo "build.sh: $*" >&2; exit 1; }
for t in busybox nbd-client cpio gzip modprobe ldd tar; do
  command -v "$t" >/dev/null || die "$t is missing; run scripts/setup-debian.sh --qemu"
done
# shellcheck source=../kernel.sh
. "$here/../kernel.sh"
busybox_find
kernel_pick

# Inputs that decide the output: rebuild only when one changes.
stamp=$( { echo "v2 $KVER"; sha256sum "$here/init" "$0" "$here/../kernel.sh" "/boot/vmlinuz-$KVER" "$busybox" "$(command -v nbd-client)"; } | sha256sum | cut -c1-16)
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp" ]; then echo "$out"; exit 0; fi

mkdir -p "$out"
work=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
busybox_tree "$root"

# nbd-client and every shared library it loads, kept apart in /opt/nbd and run through the
# loader: a libc.so.6 on the default library path would be picked up by the static busybox's
# NSS lookups (wget) and crash it.
nbd=$(command -v nbd-client)
mkdir -p "$root/opt/nbd"
cp "$nbd" "$root/opt/nbd/nbd-client"
loader=
for lib in $(ldd "$nbd" | grep -o '/[^ ]*'); do
  cp -L "$lib" "$root/opt/nbd/"
  case "$lib" in */ld-linux*) loader=$(basename "$lib") ;; esac
done
[ -n "$loader" ] || die "ldd $nbd names no dynamic loader"
printf '#!/bin/sh\nexec /opt/nbd/%s --library-path /opt/nbd /opt/nbd/nbd-client "$@"\n' "$loader" > "$root/sbin/nbd-client"
chmod 755 "$root/sbin/nbd-client"

# Kernel modules in load order (dependencies first).
modules_copy "$root" virtio_net virtio_blk nbd ext4

cp "$here/init" "$root/init"
chmod 755 "$root/init"
cpio_gz "$root" "$work/initramfs.cpio.gz"
cp "/boot/vmlinuz-$KVER" "$work/vmlinuz"

# Tarballs for the jobs' ext4 disks: one per job, each with its own marker.
for name in full a b; do
  mkdir -p "$work/tar-$name"
  echo "rootfs of job $name" > "$work/tar-$name/marker.txt"
  tar -C "$work/tar-$name" --owner=0 --group=0 --mtime=@0 -czf "$work/rootfs-$name.tar.gz" marker.txt
done

for f in vmlinuz initramfs.cpio.gz rootfs-full.tar.gz rootfs-a.tar.gz rootfs-b.tar.gz; do
  mv -f "$work/$f" "$out/$f"
done
echo "$stamp" > "$out/stamp"
echo "$out"
