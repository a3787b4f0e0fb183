//! Unit tests of the pure parts: console lines and verdicts, the QEMU command line, the choice
//! of DUTs.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use citron_core::lab::LabConfig;
use regex::Regex;

use super::catalogue::{Catalogue, Stage};
use super::console::{clean, LineSplitter};
use super::image::{image_targets, split_firmware, Firmware, ImageRun, ImageSource};
use super::plan::pick_targets;
use super::qemu::{qemu_args, retry_with_tcg, Accel, Medium, QemuSpec};
use super::report::{junit, summary_table, DiskTimes, RunReport};
use super::watch::{Failure, Ready, Seen, Watch};
use super::BootTestError;

fn watch(ready: Ready) -> Watch {
    Watch::new(ready, Arc::new(Catalogue::new(vec![])))
}

const T: Duration = Duration::from_secs(1);

#[test]
fn lines_are_split_and_cleaned() {
    let mut s = LineSplitter::default();
    assert_eq!(s.feed(b"Booting from ROM..\x1bc\x1b[?7l\x1b[2JVDUT: st"), Vec::<String>::new());
    assert_eq!(s.feed(b"art\r\nnext"), vec!["Booting from ROM..VDUT: start".to_string()]);
    assert_eq!(s.partial(), "next");
    assert_eq!(s.finish().as_deref(), Some("next"));
    assert_eq!(s.finish(), None);
    assert_eq!(clean(b"a\xffb\x07\tc  "), "a\u{fffd}b\tc");
}

#[test]
fn watch_reports_pattern_panic_and_nothing_to_boot() {
    let mut w = watch(Ready::Pattern(Regex::new("VDUT: done").unwrap()));
    assert_eq!(w.line("VDUT: start", T), Seen::Nothing);
    assert_eq!(w.line("xx VDUT: done mid=dut1", T), Seen::Matched);
    assert_eq!(w.line("VDUT: done again", T), Seen::Nothing, "a pattern counts once");
    assert_eq!(w.at_exit(true, "exit status: 0", T), Ok(()));

    let mut w = watch(Ready::Pattern(Regex::new("login:").unwrap()));
    assert!(
        matches!(w.line("[    1.2] Kernel panic - not syncing: VFS: Unable to mount root fs", T), Seen::Failed(Failure::Console { reason: "kernel panic", line }) if line.contains("VFS"))
    );

    let mut w = watch(Ready::PowerOff);
    w.line("http://10.0.2.2:1/boot.ipxe... Connection refused (https://ipxe.org/4c0a6035)", T);
    match w.line("No bootable device.", T) {
        Seen::Failed(Failure::NothingToBoot(Some(e))) => assert!(e.contains("Connection refused")),
        other => panic!("{other:?}"),
    }
    assert_eq!(w.at_exit(true, "exit status: 0", T), Ok(()), "no pattern: a clean power-off passes");
    assert!(w.at_exit(false, "exit status: 1", T).is_err());

    let mut w = watch(Ready::Pattern(Regex::new("never").unwrap()));
    let e = w.at_exit(true, "exit status: 0", T).unwrap_err();
    assert_eq!(e.to_string(), "pattern never seen: QEMU exited (exit status: 0) before /never/ appeared");
}

#[test]
fn prompts_without_newline_match() {
    let mut w = watch(Ready::Pattern(Regex::new("login: $").unwrap()));
    assert!(w.partial("debian login: ", T));
    assert!(!w.partial("debian login: ", T), "only once");
    let mut w = watch(Ready::Userspace);
    assert!(w.partial("citron-test login:", T), "a login prompt is userspace");
}

#[test]
fn qemu_command_line_boots_from_the_network() {
    let a = qemu_args(&QemuSpec {
        accel: Accel::Tcg,
        memory_mib: 512,
        medium: Medium::Network { bootfile: "tftp://10.0.2.2:6969/boot.ipxe".into() },
        mac: Some("52:54:00:00:00:01".into()),
    });
    let s = a.join(" ");
    assert!(s.starts_with("-accel tcg -m 512"), "{s}");
    assert!(s.contains("-netdev user,id=n0,bootfile=tftp://10.0.2.2:6969/boot.ipxe"), "{s}");
    assert!(s.contains("-device virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01"), "{s}");
    assert!(s.contains("-vga none") && s.contains("-no-reboot") && s.ends_with("-boot n"), "{s}");
    let a = qemu_args(&QemuSpec {
        accel: Accel::Kvm,
        memory_mib: 256,
        medium: Medium::Network { bootfile: "x".into() },
        mac: Some("bad".into()),
    });
    assert!(a.join(" ").contains("-device virtio-net-pci,netdev=n0 "), "an invalid MAC is left out");
}

#[test]
fn targets_take_over_the_address_the_server_sees() {
    let mut lab = LabConfig::default_lab();
    lab.duts[1].ip.push("127.0.0.1".parse().unwrap());
    let t = pick_targets(&mut lab, &[PathBuf::from("j.yaml")], &[], false).unwrap();
    assert_eq!(t[0].id.0, "dut1");
    assert_eq!(lab.duts[0].ip, vec!["127.0.0.1".parse::<IpAddr>().unwrap()]);
    assert_eq!(lab.duts[1].ip, vec!["127.0.0.3".parse::<IpAddr>().unwrap()], "nobody else keeps 127.0.0.1");

    let mut lab = LabConfig::default_lab();
    let t = pick_targets(&mut lab, &["a.yaml".into(), "b.yaml".into()], &["dut2".into(), "dut1".into()], true).unwrap();
    assert_eq!(t[0].addr.to_string(), "198.18.77.11");
    assert_eq!(lab.duts.iter().find(|d| d.id.0 == "dut1").unwrap().ip[0].to_string(), "198.18.77.12");

    let mut lab = LabConfig::default_lab();
    assert!(matches!(pick_targets(&mut lab, &["a.yaml".into(), "b.yaml".into()], &["dut1".into()], true), Err(BootTestError::Usage(_))));
    assert!(
        matches!(pick_targets(&mut lab, &["a.yaml".into()], &["nope".into()], false), Err(BootTestError::Usage(m)) if m.contains("dut1"))
    );
}

#[test]
fn failures_read_as_one_line() {
    let f = Failure::Timeout { after: Duration::from_secs(120), awaited: Some("/VDUT: done/".into()) };
    assert_eq!(f.to_string(), "timeout: /VDUT: done/ not seen within 120s");
    assert!(!Failure::NothingToBoot(None).to_string().contains('\n'));
}

#[test]
fn auto_falls_back_to_tcg_only_when_kvm_failed_early() {
    let exited = Failure::Exited { status: "exit status: 1".into(), awaited: None };
    let early = Duration::from_secs(1);
    assert!(retry_with_tcg(Accel::Auto, Accel::Kvm, &Failure::Kvm, Duration::from_secs(60)));
    assert!(retry_with_tcg(Accel::Auto, Accel::Kvm, &exited, early));
    assert!(!retry_with_tcg(Accel::Auto, Accel::Kvm, &exited, Duration::from_secs(60)), "a late exit is the guest's");
    assert!(!retry_with_tcg(Accel::Kvm, Accel::Kvm, &Failure::Kvm, early), "--accel kvm was asked for");
    assert!(!retry_with_tcg(Accel::Auto, Accel::Tcg, &exited, early), "TCG has nothing to fall back to");
    assert!(!retry_with_tcg(Accel::Auto, Accel::Kvm, &Failure::Console { reason: "kernel panic", line: "x".into() }, early));
}

#[test]
fn the_catalogue_fails_on_real_console_lines_and_warns_on_failed_units() {
    let c = Catalogue::new(vec![]);
    let fail = |line: &str, kernel: bool| match c.check(line, kernel) {
        Some(super::catalogue::Hit::Fail(reason, _)) => Some(reason),
        _ => None,
    };
    // Lines as the kernel, initramfs-tools, dracut, systemd, GRUB, SYSLINUX, SeaBIOS and OVMF print them.
    let cases = [
        ("[    3.38] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)", "kernel panic"),
        ("[    2.10] Oops: general protection fault, probably for non-canonical address", "kernel Oops"),
        ("[    2.10] BUG: kernel NULL pointer dereference, address: 0000000000000000", "kernel BUG"),
        ("You are in emergency mode. After logging in, type \"journalctl -xb\" to view", "emergency shell"),
        ("Give root password for maintenance", "emergency shell"),
        ("Entering emergency mode. Exit the shell to continue.", "emergency shell"),
        ("You are in rescue mode. After logging in, type \"journalctl -xb\" to view", "rescue shell"),
        ("Gave up waiting for root file system device.  Common problems:", "the initramfs gave up"),
        ("[    9.10] dracut: Refusing to continue", "the initramfs gave up"),
        ("[    1.00] systemd[1]: basic.target: Found ordering cycle on sockets.target/start", "systemd ordering cycle"),
        ("error: file `/boot/vmlinuz-6.1.0-13-amd64' not found.", "bootloader error"),
        ("error: no such partition.", "bootloader error"),
        ("grub rescue> ", "bootloader error"),
        ("Could not find kernel image: vmlinuz", "bootloader error"),
        ("Boot failed: not a bootable disk", "no bootloader"),
        ("BdsDxe: starting Boot0002 \"EFI Internal Shell\" from Fv(7CB8BDC9)/FvFile(7C04A583)", "no bootloader"),
    ];
    for (line, reason) in cases {
        assert_eq!(fail(line, false), Some(reason), "{line}");
    }
    // Bootloader messages count only before the kernel; GRUB's harmless errors never.
    assert_eq!(fail("error: file `/data/x' not found.", true), None);
    assert_eq!(fail("error: no suitable video mode found.", false), None);
    assert_eq!(fail("[    0.2] PCI: Using host bridge windows from ACPI; if necessary, use \"pci=nocrs\" and report a bug", true), None);
    assert_eq!(
        c.check("[FAILED] Failed to start foo.service - Foo.", true),
        Some(super::catalogue::Hit::Warn("a unit failed to start", "[FAILED] Failed to start foo.service - Foo.".into()))
    );
    // --allow: known noise neither fails nor warns.
    let c = Catalogue::new(vec![Regex::new("BUG: known flake").unwrap(), Regex::new("foo.service").unwrap()]);
    assert_eq!(c.check("BUG: known flake in the driver", true), None);
    assert_eq!(c.check("[FAILED] Failed to start foo.service", true), None);
    assert!(c.check("BUG: another one", true).is_some());
}

#[test]
fn userspace_is_the_real_system_not_the_initramfs() {
    let c = Catalogue::new(vec![]);
    assert!(c.userspace("[  OK  ] Reached target multi-user.target - Multi-User System."));
    assert!(c.userspace("[  OK  ] Reached target Graphical Interface."));
    assert!(c.userspace("[   12.3] systemd[1]: Startup finished in 2.1s (kernel) + 3.4s (userspace) = 5.5s."));
    assert!(c.userspace("debian login:"));
    assert!(!c.userspace("[  OK  ] Reached target initrd.target - Initrd Default Target."));
    assert!(!c.userspace("[  OK  ] Reached target local-fs.target - Local File Systems."));
    assert!(!c.userspace("Password for login: root"));
}

#[test]
fn stages_are_timed_from_their_markers() {
    let mut w = watch(Ready::Userspace);
    let s = |n: u64| Duration::from_millis(n);
    for (at, line) in [
        (100, "SeaBIOS (version 1.16.3)"),
        (400, "Booting from Hard Disk..."),
        (450, "SYSLINUX 6.04 EDD 20210613 Copyright (C) 1994-2015 H. Peter Anvin et al"),
        (3000, "[    0.000000] Linux version 6.12.95+deb12-amd64 (debian-kernel@lists.debian.org)"),
        (5500, "[    2.63] Run /init as init process"),
        (6000, "Welcome to Citron Test Linux!"),
    ] {
        assert_eq!(w.line(line, s(at)), Seen::Nothing, "{line}");
    }
    assert_eq!(w.line("[  OK  ] Reached target multi-user.target - Multi-User System.", s(7000)), Seen::Matched);
    assert_eq!(
        w.timeline.durations(),
        [(Stage::Firmware, s(400)), (Stage::Bootloader, s(2600)), (Stage::Kernel, s(2500)), (Stage::Userspace, s(1500))]
    );
    // A failure after the kernel: the bootloader's `error:` lines no longer count.
    assert_eq!(w.line("error: file `/x' not found.", s(7100)), Seen::Nothing);
}

#[test]
fn the_phone_home_passes_only_when_asked_for() {
    let mut w = watch(Ready::PhoneHome);
    assert_eq!(w.line("[  OK  ] Reached target multi-user.target - Multi-User System.", T), Seen::Nothing);
    assert!(w.phoned_home(T));
    assert!(!w.phoned_home(T), "once");
    let mut w = watch(Ready::Userspace);
    assert!(!w.phoned_home(T));
    let e = w.at_exit(true, "exit status: 0", T).unwrap_err();
    assert!(e.to_string().contains("userspace"), "{e}");
}

#[test]
fn images_become_dut_jobs_of_their_own() {
    assert_eq!(split_firmware("uefi:a/b.img"), (Some(Firmware::Uefi), "a/b.img"));
    assert_eq!(split_firmware("bios:/x.img"), (Some(Firmware::Bios), "/x.img"));
    assert_eq!(split_firmware("https://h/x.img"), (None, "https://h/x.img"));
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("my disk.img");
    std::fs::write(&raw, vec![0u8; 4096]).unwrap();
    let src = ImageSource::parse(raw.to_str().unwrap(), super::image::ImageFormat::Auto).unwrap();
    assert!(
        matches!(ImageSource::parse(raw.to_str().unwrap(), super::image::ImageFormat::Qcow2), Err(BootTestError::Usage(m)) if m.contains("not a qcow2"))
    );
    assert!(matches!(ImageSource::parse("/nonexistent.img", super::image::ImageFormat::Auto), Err(BootTestError::Usage(_))));
    let url = ImageSource::parse("https://example.org/images/debian.qcow2?sig=x", super::image::ImageFormat::Auto).unwrap();
    assert_eq!(url.short_name(), "debian.qcow2");

    let runs = vec![
        ImageRun { source: src.clone(), firmware: Firmware::Bios },
        ImageRun { source: src.clone(), firmware: Firmware::Uefi },
        ImageRun { source: url, firmware: Firmware::Bios },
    ];
    let job = runs[0].job().unwrap();
    assert!(runs[0].job_yaml().contains("file: \""), "{}", runs[0].job_yaml());
    assert!(runs[2].job_yaml().contains("url: \"https://example.org/images/debian.qcow2?sig=x\""), "{}", runs[2].job_yaml());
    let _ = job;
    let mut lab = LabConfig::default_lab();
    let t = image_targets(&mut lab, runs, true).unwrap();
    let ids: Vec<&str> = t.iter().map(|t| t.id.0.as_str()).collect();
    assert_eq!(ids, ["my-disk-bios", "my-disk-uefi", "debian-bios"]);
    assert_eq!(t[1].addr.to_string(), "198.18.77.12");
    let d = lab.duts.iter().find(|d| d.id.0 == "my-disk-uefi").unwrap();
    assert_eq!(d.ip, vec![t[1].addr]);
}

#[test]
fn a_disk_boot_attaches_the_nbd_export_and_hands_over_the_phone_home() {
    let spec = QemuSpec {
        accel: Accel::Tcg,
        memory_mib: 512,
        medium: Medium::Disk {
            nbd: "nbd://127.0.0.1:10809/disk".into(),
            firmware: Firmware::Uefi,
            ovmf: Some(("/usr/share/OVMF/OVMF_CODE_4M.fd".into(), "/tmp/vars.fd".into())),
            ready_url: Some("http://10.0.2.2:8080/_citron/ready".into()),
        },
        mac: None,
    };
    let s = qemu_args(&spec).join(" ");
    assert!(s.contains("-drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"), "{s}");
    assert!(s.contains("-drive if=pflash,format=raw,unit=1,file=/tmp/vars.fd"), "{s}");
    assert!(
        s.contains("-drive file=nbd://127.0.0.1:10809/disk,format=raw,if=none,id=disk0 -device virtio-blk-pci,drive=disk0,bootindex=0"),
        "{s}"
    );
    assert!(s.contains("-device virtio-net-pci,netdev=n0,romfile="), "no network boot to fall back to: {s}");
    assert!(s.ends_with("-smbios type=11,value=io.systemd.credential:citron.ready_url=http://10.0.2.2:8080/_citron/ready"), "{s}");
    assert!(!s.contains("-boot n"), "{s}");
}

fn report(id: &str, result: Result<(), Failure>) -> RunReport {
    let mut w = watch(Ready::Userspace);
    w.line("Booting from Hard Disk...", Duration::from_millis(500));
    w.line("[    0.000000] Linux version 6.12", Duration::from_secs(3));
    if result.is_ok() {
        w.line("Run /init as init process", Duration::from_secs(5));
        w.line("Reached target Multi-User System", Duration::from_secs(6));
    }
    let mut disk = DiskTimes { connected: Some(Duration::from_millis(50)), first_read: Some(Duration::from_millis(500)), samples: vec![] };
    disk.sample(Duration::from_secs(1), 512);
    disk.sample(Duration::from_secs(2), 12 << 20);
    RunReport {
        id: id.into(),
        label: format!("{id}.img [bios]"),
        result,
        boots_run: 1,
        timeline: w.timeline.clone(),
        disk,
        warnings: vec![("a unit failed to start", "[FAILED] Failed to start <x> & \"y\"".into())],
        log: format!("/logs/boot-test-{id}.log").into(),
        elapsed: Duration::from_secs(7),
    }
}

#[test]
fn reports_read_as_a_table_and_as_junit() {
    let ok = report("good", Ok(()));
    let bad = report("bad", Err(Failure::Console { reason: "kernel panic", line: "Kernel panic - not syncing: <VFS>".into() }));
    assert_eq!(ok.stages_line(), "firmware 0.5s, bootloader 2.5s, kernel 2.0s, userspace 1.0s");
    assert_eq!(
        ok.disk_line().unwrap(),
        "NBD connected at 0.1s, first read at 0.5s; 12.0 MiB read by the kernel stage; 12.0 MiB read by the userspace stage; 12.0 MiB in all"
    );
    let table = summary_table(&[ok.clone(), bad.clone()]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[1].starts_with("good ") && lines[1].contains(" PASS ") && lines[1].contains("1 warning(s)"), "{table}");
    assert!(
        lines[2].starts_with("bad ")
            && lines[2].contains(" FAIL ")
            && lines[2].ends_with("kernel panic: Kernel panic - not syncing: <VFS>"),
        "{table}"
    );
    assert_eq!(lines[3], "1 passed, 1 failed");
    let xml = String::from_utf8(junit(&[ok, bad], "2026-01-02T03:04:05", "host").unwrap()).unwrap();
    assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"), "{xml}");
    assert!(xml.contains(r#"<testsuite name="citron boot-test" tests="2" failures="1" errors="0" skipped="0" time="7.000" timestamp="2026-01-02T03:04:05" hostname="host">"#), "{xml}");
    assert!(xml.contains(r#"<property name="good.stage.kernel" value="2.000"/>"#), "{xml}");
    assert!(xml.contains(r#"<failure type="kernel panic" message="kernel panic: Kernel panic - not syncing: &lt;VFS&gt;">"#), "{xml}");
    assert!(xml.contains("warning: a unit failed to start: [FAILED] Failed to start &lt;x&gt; &amp; &quot;y&quot;"), "{xml}");
}
