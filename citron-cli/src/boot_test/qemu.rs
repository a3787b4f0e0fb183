//! The QEMU side: the accelerator (and when `auto` falls back from KVM to TCG), the command
//! line of a network or disk boot, and starting QEMU with its console piped to
//! [`console::verdict`].

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use citron_lab::vm;
use clap::ValueEnum;
use tokio::io::AsyncReadExt as _;
use tokio::sync::{mpsc, oneshot};

use super::console::{self, Console};
use super::image::Firmware;
use super::watch::{Failure, Watch};

/// Where the guest finds the host's loopback under QEMU user networking.
pub(super) const SLIRP_HOST: Ipv4Addr = vm::qemu::SLIRP_HOST;

/// Under `--accel auto`, a QEMU with KVM that fails this early is retried with TCG.
const KVM_PROBE: Duration = Duration::from_secs(5);

/// The QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Accel {
    /// KVM where /dev/kvm opens, TCG otherwise or when KVM fails ("KVM internal error").
    Auto,
    /// Software emulation: slow (about 15 s of one core to a shell) but works everywhere.
    Tcg,
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
}

impl Accel {
    pub(super) fn name(self) -> &'static str {
        match self {
            Accel::Tcg | Accel::Auto => "tcg",
            Accel::Kvm => "kvm",
        }
    }

    /// What `auto` means on this host: KVM when /dev/kvm can be opened read-write.
    pub(super) fn resolve(self) -> Accel {
        match self {
            Accel::Auto if vm::qemu::kvm_usable() => Accel::Kvm,
            Accel::Auto => Accel::Tcg,
            other => other,
        }
    }
}

/// Whether a failed boot is booted again under TCG. KVM was only a guess under `--accel auto`:
/// where /dev/kvm exists but cannot run a guest, QEMU reports "KVM internal error" or aborts at
/// once ("failed to set MSR …"), before the firmware fetched anything.
pub(super) fn retry_with_tcg(asked: Accel, used: Accel, failure: &Failure, elapsed: Duration) -> bool {
    asked == Accel::Auto
        && used == Accel::Kvm
        && match failure {
            Failure::Kvm => true,
            Failure::Exited { .. } => elapsed < KVM_PROBE,
            _ => false,
        }
}

/// What QEMU boots from.
#[derive(Debug, Clone)]
pub(super) enum Medium {
    /// A network boot through iPXE: the DHCP `bootfile` URL.
    Network { bootfile: String },
    /// An NBD disk (`nbd://HOST:PORT/EXPORT`) booted by the firmware; for UEFI, the OVMF code
    /// and this run's copy of its variable store; the phone-home URL handed to the guest.
    Disk { nbd: String, firmware: Firmware, ovmf: Option<(PathBuf, PathBuf)>, ready_url: Option<String> },
}

/// What QEMU is started with.
#[derive(Debug, Clone)]
pub(super) struct QemuSpec {
    pub(super) accel: Accel,
    pub(super) memory_mib: u32,
    pub(super) medium: Medium,
    pub(super) mac: Option<String>,
}

/// The QEMU command line with the console on the serial port. `-vga none` sends the firmware's
/// and bootloaders' own output to the serial port too; `-no-reboot` turns a reboot (a panic
/// with `panic=-1`) into QEMU exiting.
///
/// A network boot boots iPXE from the NIC's ROM (`-boot n`). A disk boot attaches the NBD
/// export as a virtio disk with `bootindex=0`; its NIC has no option ROM (`romfile=`), so a
/// disk that does not boot fails at once instead of falling back to a network boot.
pub(super) fn qemu_args(s: &QemuSpec) -> Vec<String> {
    let nic = vm::qemu::nic(s.mac.as_deref());
    let mut v = vm::qemu::machine_args(s.accel.name(), u64::from(s.memory_mib), 1);
    match &s.medium {
        Medium::Network { bootfile } => v.extend(vm::qemu::netboot_args(bootfile, nic)),
        Medium::Disk { nbd, firmware, ovmf, ready_url } => {
            if let (Firmware::Uefi, Some((code, vars))) = (firmware, ovmf) {
                v.extend(vm::qemu::uefi_args(code, vars));
            }
            v.extend([
                "-drive".into(),
                format!("file={nbd},format=raw,if=none,id=disk0"),
                "-device".into(),
                "virtio-blk-pci,drive=disk0,bootindex=0".into(),
                "-netdev".into(),
                "user,id=n0".into(),
                "-device".into(),
                format!("{nic},romfile="),
            ]);
            if let Some(url) = ready_url {
                v.extend(["-smbios".into(), format!("type=11,value=io.systemd.credential:citron.ready_url={url}")]);
            }
        }
    }
    v
}

/// Boots QEMU once and feeds its console to `watch` until a verdict (see [`console::verdict`]).
pub(super) async fn boot_once(
    argv: &[String],
    console: &Console,
    watch: &mut Watch,
    phone_home: Option<oneshot::Receiver<()>>,
    grace: Duration,
    timeout: Duration,
) -> Result<(), Failure> {
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Failure::Spawn(format!("{}: {e}", argv[0])))?;
    let (tx, rx) = mpsc::channel::<(bool, Vec<u8>)>(64);
    for (is_err, stream) in [
        (false, child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>)),
        (true, child.stderr.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>)),
    ] {
        let Some(mut stream) = stream else { continue };
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send((is_err, buf[..n].to_vec())).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    // Only the readers hold senders now: the channel closes when QEMU's streams end.
    drop(tx);
    console::verdict(&mut child, rx, console, watch, phone_home, grace, timeout).await
}
