#!/usr/bin/env bash
# Builds whole-disk test images for `citron boot-test --image` from this machine's own Debian
# packages (nothing is downloaded) and without mounting anything (no loop device, no root mount):
# partitions are made as files (mkfs.vfat + mtools, mke2fs -d) and put together with sfdisk + dd.
#
#   bios.img                 MBR (syslinux mbr.bin) + FAT boot partition with SYSLINUX, the kernel and
#                            an initramfs; ext4 root partition (LABEL=citron-root) whose /sbin/init
#                            prints systemd-like lines ("Reached target … Multi-User System").
#   bios.qcow2               bios.img as qcow2 (citron converts it once, as a base for the overlay).
#   uefi.img                 the same root; the boot partition is an ESP (type EF) with GRUB
#                            (grub-mkstandalone, EFI/BOOT/BOOTX64.EFI) instead of SYSLINUX.
#   broken-nobootloader.img  partitions, but no boot sector (no code, no signature) and no bootloader.
#   broken-panic.img         SYSLINUX boots the kernel without its initramfs: "VFS: Unable to mount
#                            root fs" and a kernel panic.
#   broken-noroot.img        no root partition: the initramfs gives up waiting for it and drops to
#                            a shell, as initramfs-tools does.
#   broken-emergency.img     the root's init fails to mount a filesystem and enters emergency mode,
#                            as systemd does.
#
# The root's init phones home when QEMU passes the URL as an SMBIOS type 11 string
# `io.systemd.credential:citron.ready_url=URL` (the systemd VM interface for credentials): it
# brings eth0 up and GETs the URL. Then it waits at a login prompt, like a real system.
#
# Usage: tests/image/build.sh [OUT_DIR]   (default: <repo>/target/image; env KVER picks a kernel)
# Prints OUT_DIR. Skips the work when its inputs have not changed since the last build.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:-$repo/target/image}

die() { echo "build.sh: $*" >&2; exit 1; }
for t in busybox cpio gzip modprobe mkfs.vfat mcopy mmd syslinux sfdisk mke2fs grub-mkstandalone qemu-img; do
  command -v "$t" >/dev/null || die "$t is missing; run scripts/setup-debian.sh --qemu"
done
mbr=/usr/lib/syslinux/mbr/mbr.bin
[ -r "$mbr" ] || mbr=/usr/lib/SYSLINUX/mbr.bin
[ -r "$mbr" ] || die "syslinux's mbr.bin is missing; install syslinux-common"
[ -d /usr/lib/grub/x86_64-efi ] || die "GRUB's EFI modules are missing; install grub-efi-amd64-bin"
# shellcheck source=../kernel.sh
. "$here/../kernel.sh"
busybox_find
kernel_pick

stamp=$( { echo "v3 $KVER"; sha256sum "$0" "$here/../kernel.sh" "/boot/vmlinuz-$KVER" "$busybox" "$mbr"; } | sha256sum | cut -c1-16)
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp" ]; then echo "$out"; exit 0; fi

mkdir -p "$out"
work=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --- The initramfs: load the disk, filesystem and network drivers, find the root by label, switch.
ird=$work/initramfs
busybox_tree "$ird"
modules_copy "$ird" virtio_blk ext4 virtio_net
cat > "$ird/init" <<'INIT'
#!/bin/sh
# Wording of the messages as initramfs-tools prints them, so that citron's catalogue sees the
# real thing.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "Loading, please wait..."
while read -r m; do insmod "/lib/modules/$m" 2>/dev/null; done < /lib/modules/order
root=
i=0
while [ $i -lt 15 ]; do
  root=$(findfs LABEL=citron-root 2>/dev/null) && break
  sleep 0.2; i=$((i + 1))
done
if [ -z "$root" ]; then
  echo "Gave up waiting for root file system device.  Common problems:"
  echo " - Boot args (cat /proc/cmdline)"
  echo " - Missing modules (cat /proc/modules; ls /dev)"
  echo "ALERT!  LABEL=citron-root does not exist.  Dropping to a shell!"
  exec sh
fi
mkdir -p /root
mount -t ext4 "$root" /root || { echo "ALERT!  cannot mount $root.  Dropping to a shell!"; exec sh; }
mount --move /dev /root/dev
umount /proc /sys
exec switch_root /root /sbin/init
INIT
chmod 755 "$ird/init"
cpio_gz "$ird" "$work/initrd.img"

# --- The root filesystem: busybox and an init that talks like systemd.
rootfs() { # $1 = dir, $2 = mode (ok | emergency)
  busybox_tree "$1"
  echo "citron-test" > "$1/etc/hostname"
  cat > "$1/sbin/init" <<'INIT'
#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
ok() { echo "[  OK  ] $*"; }
echo
echo "Welcome to Citron Test Linux!"
echo
ok "Reached target local-fs.target - Local File Systems."
MODE
ok "Reached target network.target - Network."
# The phone-home URL, if QEMU passed one as an SMBIOS type 11 string.
url=$(cat /sys/firmware/dmi/entries/11-*/raw 2>/dev/null | tr '\0' '\n' | sed -n 's/.*io\.systemd\.credential:citron\.ready_url=//p' | head -1)
if [ -n "$url" ]; then
  ip link set lo up
  ip link set eth0 up
  ip addr add 10.0.2.15/24 dev eth0
  ip route add default via 10.0.2.2
  if wget -q -O /dev/null "$url"; then ok "Finished citron-ready.service - Phone home."; else echo "[FAILED] Failed to start citron-ready.service - Phone home."; fi
fi
ok "Reached target multi-user.target - Multi-User System."
echo
printf 'citron-test login: '
exec sleep 1000000
INIT
  if [ "$2" = emergency ]; then
    sed -i 's|^MODE$|echo "[FAILED] Failed to mount data.mount - /data."\necho "[DEPEND] Dependency failed for local-fs.target - Local File Systems."\necho "You are in emergency mode. After logging in, type \\"journalctl -xb\\" to view"\necho "system logs, \\"systemctl reboot\\" to reboot, or \\"exit\\" to continue bootup."\necho "Give root password for maintenance"\nexec sleep 1000000|' "$1/sbin/init"
  else
    sed -i 's|^MODE$||' "$1/sbin/init"
  fi
  chmod 755 "$1/sbin/init"
}
rootfs "$work/root-ok" ok
rootfs "$work/root-emergency" emergency
mke2fs -q -F -t ext4 -L citron-root -E root_owner=0:0 -d "$work/root-ok" "$work/root-ok.ext4" 8M >/dev/null
mke2fs -q -F -t ext4 -L citron-root -E root_owner=0:0 -d "$work/root-emergency" "$work/root-emergency.ext4" 8M >/dev/null

cp "/boot/vmlinuz-$KVER" "$work/vmlinuz"
cmdline="console=ttyS0,115200 panic=-1"

# --- Boot partitions (FAT, 24 MiB, starting at sector 2048: the hidden-sectors field says so).
boot_fat() { # $1 = file
  rm -f "$1"
  mkfs.vfat -C -h 2048 -n CITRONBOOT "$1" $((24 * 1024)) >/dev/null
  mcopy -i "$1" "$work/vmlinuz" ::/vmlinuz
}
syslinux_part() { # $1 = file, $2 = APPEND line extra ("" = with initrd, "noinitrd" = without)
  boot_fat "$1"
  if [ "$2" = noinitrd ]; then
    printf 'DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nSERIAL 0 115200\nLABEL linux\n  KERNEL /vmlinuz\n  APPEND %s root=/dev/vda2\n' "$cmdline" > "$work/syslinux.cfg"
  else
    mcopy -i "$1" "$work/initrd.img" ::/initrd.img
    printf 'DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nSERIAL 0 115200\nLABEL linux\n  KERNEL /vmlinuz\n  INITRD /initrd.img\n  APPEND %s\n' "$cmdline" > "$work/syslinux.cfg"
  fi
  mcopy -i "$1" "$work/syslinux.cfg" ::/syslinux.cfg
  syslinux --install "$1"
}
esp_part() { # $1 = file
  boot_fat "$1"
  mcopy -i "$1" "$work/initrd.img" ::/initrd.img
  cat > "$work/grub.cfg" <<CFG
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=0
set root=(hd0,msdos1)
linux /vmlinuz $cmdline
initrd /initrd.img
boot
CFG
  grub-mkstandalone -O x86_64-efi -o "$work/BOOTX64.EFI" --locales= --themes= --fonts= \
    --modules="part_msdos fat linux normal serial terminal boot" --install-modules="part_msdos fat linux normal serial terminal boot" \
    "boot/grub/grub.cfg=$work/grub.cfg"
  mmd -i "$1" ::/EFI ::/EFI/BOOT
  mcopy -i "$1" "$work/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
}

# --- A disk: MBR, partition 1 (boot, active) at 1 MiB, partition 2 (root) after it.
disk() { # $1 = out, $2 = boot part file or "", $3 = boot type (c | ef), $4 = root part file or "", $5 = mbr code (yes | no)
  local img=$1 size=$((1024 * 1024)) table="label: dos"$'\n'
  local start=2048
  if [ -n "$2" ]; then
    local n=$(( $(stat -c %s "$2") / 512 ))
    table+="start=$start, size=$n, type=$3, bootable"$'\n'
    start=$((start + n))
  fi
  if [ -n "$4" ]; then
    local n=$(( $(stat -c %s "$4") / 512 ))
    table+="start=$start, size=$n, type=83"$'\n'
    start=$((start + n))
  fi
  rm -f "$img"
  truncate -s $((start * 512)) "$img"
  [ "$5" = yes ] && dd if="$mbr" of="$img" bs=440 count=1 conv=notrunc status=none
  printf '%s' "$table" | sfdisk -q --no-reread --no-tell-kernel "$img" >/dev/null
  start=2048
  if [ -n "$2" ]; then dd if="$2" of="$img" bs=512 seek=$start conv=notrunc,sparse status=none; start=$((start + $(stat -c %s "$2") / 512)); fi
  if [ -n "$4" ]; then dd if="$4" of="$img" bs=512 seek=$start conv=notrunc,sparse status=none; fi
}

syslinux_part "$work/boot-bios.fat" ""
syslinux_part "$work/boot-panic.fat" noinitrd
esp_part "$work/boot-uefi.fat"
# The same FAT without any bootloader: kernel and initramfs only.
boot_fat "$work/boot-none.fat"

disk "$work/bios.img" "$work/boot-bios.fat" c "$work/root-ok.ext4" yes
disk "$work/uefi.img" "$work/boot-uefi.fat" ef "$work/root-ok.ext4" no
disk "$work/broken-nobootloader.img" "$work/boot-none.fat" c "$work/root-ok.ext4" no
# Nothing wrote a boot sector: no code and no 0x55AA signature, so the firmware sees no bootable disk.
dd if=/dev/zero of="$work/broken-nobootloader.img" bs=1 seek=510 count=2 conv=notrunc status=none
disk "$work/broken-panic.img" "$work/boot-panic.fat" c "$work/root-ok.ext4" yes
disk "$work/broken-noroot.img" "$work/boot-bios.fat" c "" yes
disk "$work/broken-emergency.img" "$work/boot-bios.fat" c "$work/root-emergency.ext4" yes

qemu-img convert -q -f raw -O qcow2 "$work/bios.img" "$work/bios.qcow2"
for f in bios.img bios.qcow2 uefi.img broken-nobootloader.img broken-panic.img broken-noroot.img broken-emergency.img; do
  mv -f "$work/$f" "$out/$f"
done
echo "$stamp" > "$out/stamp"
echo "$out"
