//! Unit tests of the pure parts: console lines and verdicts, the QEMU command line, the choice
//! of DUTs.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use citron_core::lab::LabConfig;
use regex::Regex;

use super::console::{clean, Failure, LineSplitter, Seen, Watch};
use super::plan::pick_targets;
use super::qemu::{qemu_args, retry_with_tcg, Accel, QemuSpec};
use super::BootTestError;

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
    let mut w = Watch::new(Some(Regex::new("VDUT: done").unwrap()));
    assert_eq!(w.line("VDUT: start"), Seen::Nothing);
    assert_eq!(w.line("xx VDUT: done mid=dut1"), Seen::Matched);
    assert_eq!(w.line("VDUT: done again"), Seen::Nothing, "a pattern counts once");
    assert_eq!(w.at_exit(true, "exit status: 0"), Ok(()));

    let mut w = Watch::new(Some(Regex::new("login:").unwrap()));
    assert!(
        matches!(w.line("[    1.2] Kernel panic - not syncing: VFS: Unable to mount root fs"), Seen::Failed(Failure::Panic(l)) if l.contains("VFS"))
    );

    let mut w = Watch::new(None);
    w.line("http://10.0.2.2:1/boot.ipxe... Connection refused (https://ipxe.org/4c0a6035)");
    match w.line("No bootable device.") {
        Seen::Failed(Failure::NothingToBoot(Some(e))) => assert!(e.contains("Connection refused")),
        other => panic!("{other:?}"),
    }
    assert_eq!(w.at_exit(true, "exit status: 0"), Ok(()), "no pattern: a clean power-off passes");
    assert!(w.at_exit(false, "exit status: 1").is_err());

    let w = Watch::new(Some(Regex::new("never").unwrap()));
    let e = w.at_exit(true, "exit status: 0").unwrap_err();
    assert_eq!(e.to_string(), "pattern never seen: QEMU exited (exit status: 0) before /never/ appeared");
}

#[test]
fn prompts_without_newline_match() {
    let mut w = Watch::new(Some(Regex::new("login: $").unwrap()));
    assert!(w.partial("debian login: "));
    assert!(!w.partial("debian login: "), "only once");
}

#[test]
fn qemu_command_line_boots_from_the_network() {
    let a = qemu_args(&QemuSpec {
        accel: Accel::Tcg,
        memory_mib: 512,
        bootfile: "tftp://10.0.2.2:6969/boot.ipxe".into(),
        mac: Some("52:54:00:00:00:01".into()),
    });
    let s = a.join(" ");
    assert!(s.starts_with("-accel tcg -m 512"), "{s}");
    assert!(s.contains("-netdev user,id=n0,bootfile=tftp://10.0.2.2:6969/boot.ipxe"), "{s}");
    assert!(s.contains("-device virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01"), "{s}");
    assert!(s.contains("-vga none") && s.contains("-no-reboot") && s.ends_with("-boot n"), "{s}");
    let a = qemu_args(&QemuSpec { accel: Accel::Kvm, memory_mib: 256, bootfile: "x".into(), mac: Some("bad".into()) });
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
    let f = Failure::Timeout { after: Duration::from_secs(120), pattern: Some("VDUT: done".into()) };
    assert_eq!(f.to_string(), "timeout: /VDUT: done/ not seen within 120s");
    assert!(!Failure::NothingToBoot(None).to_string().contains('\n'));
}

#[test]
fn auto_falls_back_to_tcg_only_when_kvm_failed_early() {
    let exited = Failure::Exited { status: "exit status: 1".into(), pattern: None };
    let early = Duration::from_secs(1);
    assert!(retry_with_tcg(Accel::Auto, Accel::Kvm, &Failure::Kvm, Duration::from_secs(60)));
    assert!(retry_with_tcg(Accel::Auto, Accel::Kvm, &exited, early));
    assert!(!retry_with_tcg(Accel::Auto, Accel::Kvm, &exited, Duration::from_secs(60)), "a late exit is the guest's");
    assert!(!retry_with_tcg(Accel::Kvm, Accel::Kvm, &Failure::Kvm, early), "--accel kvm was asked for");
    assert!(!retry_with_tcg(Accel::Auto, Accel::Tcg, &exited, early), "TCG has nothing to fall back to");
    assert!(!retry_with_tcg(Accel::Auto, Accel::Kvm, &Failure::Panic("x".into()), early));
}
