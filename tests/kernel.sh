# shellcheck shell=bash
# The kernel side of the QEMU test guests, shared by tests/vdut/build.sh and
# tests/image/build.sh (sourced, after `set -euo pipefail` and a `die` function):
#   kernel_pick        sets KVER: $KVER if given, else the newest /boot/vmlinuz-* with modules
#   busybox_find       sets busybox: busybox-static's binary
#   busybox_tree DIR   a root skeleton with busybox and a link per applet
#   modules_copy DIR MOD...  MOD and their dependencies, decompressed (busybox insmod cannot
#                      unpack), into DIR/lib/modules, their load order in DIR/lib/modules/order
#   cpio_gz DIR OUT    DIR as a newc initramfs (sorted, owned by root), gzipped
# Everything here comes from this machine's own packages; nothing is downloaded.

kernel_pick() {
  if [ -z "${KVER:-}" ]; then
    local k
    for k in $(ls -1 /boot/vmlinuz-* 2>/dev/null | sed 's|/boot/vmlinuz-||' | sort -V -r); do
      [ -d "/lib/modules/$k" ] && { KVER=$k; break; }
    done
  fi
  [ -n "${KVER:-}" ] && [ -r "/boot/vmlinuz-$KVER" ] || die "no readable /boot/vmlinuz-* with modules; install linux-image-amd64"
}

busybox_find() {
  busybox=$(command -v busybox)
  file -L "$busybox" 2>/dev/null | grep -q 'statically linked' || [ -x /bin/busybox ] || die "busybox-static is missing"
}

busybox_tree() {
  local applet
  mkdir -p "$1"/{bin,sbin,dev,proc,sys,tmp,run,etc,root,mnt}
  cp "$busybox" "$1/bin/busybox"
  for applet in $("$1/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$1/bin/$applet"
  done
}

modules_copy() {
  local dir=$1/lib/modules mod kind path name
  shift
  mkdir -p "$dir"
  : >"$dir/order"
  for mod in "$@"; do
    modprobe -S "$KVER" --show-depends "$mod" | while read -r kind path _; do
      [ "$kind" = insmod ] || continue
      name=$(basename "$path"); name=${name%.xz}; name=${name%.zst}; name=${name%.gz}
      grep -qx "$name" "$dir/order" && continue
      case "$path" in
        *.xz) xz -dc "$path" ;; *.zst) zstd -qdc "$path" ;; *.gz) gzip -dc "$path" ;; *) cat "$path" ;;
      esac >"$dir/$name"
      echo "$name" >>"$dir/order"
    done
  done
}

cpio_gz() {
  (cd "$1" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0) | gzip -6 >"$2"
}
