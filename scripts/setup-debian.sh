#!/usr/bin/env bash
# Installs what citron's tests and benchmarks need on a fresh Debian 12 machine.
# Idempotent: every step checks first, so running it twice costs seconds.
# Usage: scripts/setup-debian.sh [--qemu] [--bench]
set -euo pipefail

want_qemu=0; want_bench=0
for a in "$@"; do
  case "$a" in
    --qemu) want_qemu=1 ;;
    --bench) want_bench=1 ;;
    *) echo "usage: $0 [--qemu] [--bench]" >&2; exit 2 ;;
  esac
done

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
export DEBIAN_FRONTEND=noninteractive

pkgs=(curl tftp-hpa atftp libnbd-bin python3-libnbd nbdkit qemu-utils e2fsprogs docker-registry iproute2 python3-venv xz-utils zstd postgresql sqlite3 openssl systemd)
[ "$want_bench" = 1 ] && pkgs+=(nginx-light wrk tftpd-hpa fio)
qemu_pkgs=(qemu-system-x86 qemu-system-common qemu-block-extra ipxe-qemu linux-image-amd64 busybox-static cpio nbd-client kmod)
# Image boot tests (tests/image/build.sh, tests/e2e/image.rs): UEFI firmware, the bootloaders,
# FAT and partition tools that work on image files, and xmllint for the JUnit schema.
qemu_pkgs+=(ovmf syslinux syslinux-common mtools dosfstools grub-efi-amd64-bin grub-common fdisk libxml2-utils)

missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
qemu_missing=()
if [ "$want_qemu" = 1 ]; then
  for p in "${qemu_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || qemu_missing+=("$p"); done
fi

if [ ${#missing[@]} -gt 0 ] || [ ${#qemu_missing[@]} -gt 0 ]; then
  if [ ${#qemu_missing[@]} -gt 0 ] && [ ! -f /etc/apt/sources.list.d/backports.list ]; then
    # qemu-utils on this image comes from bookworm-backports; the system emulator must match it.
    uri=$(sed -n 's/^URIs: //p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
    [ -n "$uri" ] || uri=http://deb.debian.org/debian
    echo "deb $uri bookworm-backports main" | sudo_ tee /etc/apt/sources.list.d/backports.list >/dev/null
  fi
  sudo_ apt-get update -qq
  # The benchmark peers (nginx, tftpd-hpa) must not start as system services when installed:
  # Debian's policy-rc.d hook (exit 101: "action forbidden") keeps their postinst from starting
  # them, so there is nothing to stop afterwards and no nginx of anyone else is touched.
  policy=/usr/sbin/policy-rc.d
  if [ "$want_bench" = 1 ] && [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | sudo_ tee "$policy" >/dev/null
    sudo_ chmod 755 "$policy"
    trap 'sudo_ rm -f "$policy"' EXIT
  fi
  [ ${#missing[@]} -gt 0 ] && sudo_ apt-get install -y -qq --no-install-recommends "${missing[@]}"
  [ ${#qemu_missing[@]} -gt 0 ] && sudo_ apt-get install -y -qq --no-install-recommends -t bookworm-backports "${qemu_missing[@]}"
fi
# atftpd conflicts with tftpd-hpa as a package; the benchmark only needs its binary, so it is
# unpacked (not installed) under /opt/citron-peers.
if [ "$want_bench" = 1 ] && [ ! -x /opt/citron-peers/atftpd/usr/sbin/atftpd ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download atftpd >/dev/null 2>&1 || { sudo_ apt-get update -qq && apt-get download atftpd; })
  sudo_ mkdir -p /opt/citron-peers/atftpd
  sudo_ dpkg -x "$tmp"/atftpd_*.deb /opt/citron-peers/atftpd
  rm -rf "$tmp"
fi
# The benchmarks start their own nginx and tftpd on free ports with their own configuration
# (and stop only those, by pid), so a system nginx or tftpd already running is left alone.
exit 0
