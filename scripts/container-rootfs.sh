#!/usr/bin/env bash
# Makes the container image's root filesystem from Debian packages and citron's release build,
# in target/container/ (rootfs/, data/ and the Dockerfile), then builds the image `citron` if a
# container runtime answers (docker or podman). Pulls nothing: the packages come from this
# machine's apt sources, the binary from `cargo build --release`.
# Usage: scripts/container-rootfs.sh        (CITRON_BIN=path skips the cargo build)
set -euo pipefail
cd "$(dirname "$0")/.."

# What citron runs besides itself: the C library, qemu-img (disk images) and mke2fs (filesystems
# made from tarballs), with every package they depend on.
roots=(libc6 libgcc-s1 qemu-utils e2fsprogs)

if [ -z "${CITRON_BIN:-}" ]; then
  cargo build --release --locked -p citron-cli >&2
  CITRON_BIN=target/release/citron
fi
out=target/container
rm -rf "$out"
mkdir -p "$out/rootfs" "$out/data" "$out/debs"
deps=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces --no-enhances \
  "${roots[@]}" | grep -E '^[a-z0-9]' | sed 's/:any$//' | sort -u)
# Virtual packages have no .deb: skip what apt cannot download.
(cd "$out/debs" && for p in $deps; do apt-get download -qq "$p" >/dev/null 2>&1 || true; done)
for d in "$out"/debs/*.deb; do dpkg-deb -x "$d" "$out/rootfs"; done
rm -rf "$out/debs" "$out/rootfs/usr/share/doc" "$out/rootfs/usr/share/man" "$out/rootfs/usr/share/locale"
# Stripped: the release profile keeps line tables (debug = 1), 100+ MB the image does not need.
install -D -s -m 755 "$CITRON_BIN" "$out/rootfs/usr/bin/citron"
# TLS roots for https:// sources, and a default lab (mount your own over it).
install -D -m 644 /etc/ssl/certs/ca-certificates.crt "$out/rootfs/etc/ssl/certs/ca-certificates.crt"
install -D -m 644 examples/lab.yaml "$out/rootfs/etc/citron/lab.yaml"
mkdir -p "$out/rootfs/tmp" && chmod 1777 "$out/rootfs/tmp"
printf 'root:x:0:0::/:/usr/sbin/nologin\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n' > "$out/rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$out/rootfs/etc/group"
cp dist/Dockerfile "$out/Dockerfile"
echo "root filesystem in $out/rootfs ($(du -sh "$out/rootfs" | cut -f1))" >&2

for rt in docker podman; do
  if command -v "$rt" >/dev/null && "$rt" info >/dev/null 2>&1; then
    "$rt" build -t citron "$out"
    exit 0
  fi
done
echo "no container runtime answers: image not built (the build context is $out)" >&2
