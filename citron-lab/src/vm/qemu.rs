//! QEMU command lines, shared by `citron boot-test` and the pool's VM DUTs.
//!
//! The console is the serial port on stdio: `-vga none` sends the firmware's and the
//! bootloaders' own output there too; `-no-reboot` turns a reboot (a panic with `panic=-1`)
//! into QEMU exiting.

use std::path::PathBuf;

/// The QEMU binary of x86_64 machines.
pub const QEMU: &str = "qemu-system-x86_64";

/// Where QEMU's user-mode network puts the host's loopback for the guest.
pub const SLIRP_HOST: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 2, 2);

/// OVMF's code and variable store: Debian's 4 MiB build first, then the older 2 MiB one.
pub const OVMF: &[(&str, &str)] = &[
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
];

/// The OVMF code and variables template installed here (Debian's `ovmf`), if any.
pub fn ovmf() -> Option<(PathBuf, PathBuf)> {
    OVMF.iter().map(|(c, v)| (PathBuf::from(c), PathBuf::from(v))).find(|(c, v)| c.is_file() && v.is_file())
}

/// Whether /dev/kvm can be opened read-write (KVM is then worth trying).
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

/// The machine: accelerator (`kvm` adds `-cpu host`), memory, CPUs, the console on stdio and
/// no monitor.
///
/// ```
/// let a = citron_lab::vm::qemu::machine_args("tcg", 512, 2).join(" ");
/// assert!(a.starts_with("-accel tcg -m 512 -smp 2 -no-reboot"), "{a}");
/// ```
pub fn machine_args(accel: &str, memory_mib: u64, cpus: u32) -> Vec<String> {
    let mut v: Vec<String> = vec!["-accel".into(), accel.into()];
    if accel == "kvm" {
        v.extend(["-cpu".into(), "host".into()]);
    }
    let (m, c) = (memory_mib.to_string(), cpus.max(1).to_string());
    v.extend(["-m", &m, "-smp", &c, "-no-reboot", "-nographic", "-vga", "none", "-serial", "stdio", "-monitor", "none"].map(String::from));
    v
}

/// The virtio NIC on netdev `n0`, with `mac` when it is a valid one.
pub fn nic(mac: Option<&str>) -> String {
    let mut nic = "virtio-net-pci,netdev=n0".to_string();
    if let Some(mac) = mac.filter(|m| valid_mac(m)) {
        nic.push_str(",mac=");
        nic.push_str(mac);
    }
    nic
}

/// A network boot through iPXE: user-mode network whose DHCP hands out `bootfile`, booted from
/// the NIC's ROM (`-boot n`).
pub fn netboot_args(bootfile: &str, nic: String) -> Vec<String> {
    vec!["-netdev".into(), format!("user,id=n0,bootfile={bootfile}"), "-device".into(), nic, "-boot".into(), "n".into()]
}

/// UEFI firmware: OVMF's code (read-only) and a writable copy of its variable store.
pub fn uefi_args(code: &std::path::Path, vars: &std::path::Path) -> Vec<String> {
    vec![
        "-drive".into(),
        format!("if=pflash,format=raw,unit=0,readonly=on,file={}", code.display()),
        "-drive".into(),
        format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
    ]
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn valid_mac(m: &str) -> bool {
    let parts: Vec<&str> = m.split(':').collect();
    parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines() {
        assert_eq!(machine_args("kvm", 1024, 0)[..6].join(" "), "-accel kvm -cpu host -m 1024");
        assert!(machine_args("kvm", 1024, 0).join(" ").contains("-smp 1 "));
        assert_eq!(nic(Some("52:54:00:00:00:01")), "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01");
        assert_eq!(nic(Some("52:54:00")), "virtio-net-pci,netdev=n0");
        let n = netboot_args("http://10.0.2.2:8080/boot.ipxe", nic(None)).join(" ");
        assert_eq!(n, "-netdev user,id=n0,bootfile=http://10.0.2.2:8080/boot.ipxe -device virtio-net-pci,netdev=n0 -boot n");
    }
}
