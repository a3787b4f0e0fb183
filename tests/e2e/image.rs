//! Image boot tests: `citron boot-test --image` boots whole disk images (tests/image/build.sh:
//! a real MBR and SYSLINUX, or GRUB on an ESP, a kernel, an initramfs and an ext4 root) with
//! citron's NBD export as the disk, and says why a broken one fails. Every image's sha256 is
//! checked after its boot: the image file is never written.
//!
//! Boots run one at a time (`qemu_lock`) under TCG: about 15 s of one core each. Broken
//! variants boot under BIOS only; the one UEFI boot is in the matrix test.

use std::path::{Path, PathBuf};
use std::process::Command;

use citron_tests::{qemu_lock, require_tool, strict, workspace_root};
use sha2::Digest as _;

use crate::qemu::{self, Run};

/// Everything the kit and a boot need; `false` (skip) when one is missing, unless strict.
fn have_tools() -> bool {
    [
        "qemu-system-x86_64",
        "qemu-img",
        "busybox",
        "cpio",
        "modprobe",
        "mkfs.vfat",
        "mcopy",
        "syslinux",
        "sfdisk",
        "mke2fs",
        "grub-mkstandalone",
    ]
    .iter()
    .all(|t| require_tool(t))
}

/// The images (tests/image/build.sh).
fn kit() -> PathBuf {
    qemu::kit("tests/image/build.sh")
}

fn sha256(p: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(p).expect("read the image")))
}

/// `citron boot-test` under TCG.
fn boot_test(args: &[&str]) -> Run {
    qemu::boot_test(
        |c| {
            c.args(["--accel", "tcg", "--timeout", "180s"]).env("RUST_LOG", "warn");
        },
        args,
    )
}

/// Boots `image` (BIOS) and returns the run, checking that the image was not written.
fn boot_image(name: &str, extra: &[&str]) -> Run {
    let image = kit().join(name);
    let before = sha256(&image);
    let mut args = vec!["--image", image.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    let r = boot_test(&args);
    assert_eq!(sha256(&image), before, "{name} was written by its boot");
    r
}

#[test]
fn a_qcow2_bios_image_boots_to_userspace_from_nbd_and_phones_home() {
    if !have_tools() {
        return;
    }
    let _one = qemu_lock();
    let r = boot_image("bios.qcow2", &["--ready", "phone-home", "--image-format", "qcow2"]);
    assert_eq!(r.out.status.code(), Some(0), "{}", r.last_stderr_line());
    assert!(r.last_stderr_line().contains("PASS") && r.last_stderr_line().contains("phoned home"), "{}", r.last_stderr_line());
    // The real bootloader ran from the disk citron served, then the kernel, then the real root.
    // (The guest's own "Finished citron-ready.service" may never show: the run ends as soon as
    // citron served the phone-home, which is the point.)
    for line in ["SYSLINUX 6", "Linux version", "Welcome to Citron Test Linux!"] {
        assert!(r.stdout.contains(line), "the console never showed {line:?}");
    }
    assert!(r.stderr.contains("citron served _citron/ready"), "{}", r.stderr);
    // Stage timings from the console and from citron's view of the disk.
    let stages = r.stderr.lines().find(|l| l.contains("bios-bios: stages: ")).expect("a stages line");
    for s in ["firmware ", "bootloader ", "kernel ", "userspace "] {
        assert!(stages.contains(s), "{stages}");
    }
    let disk = r.stderr.lines().find(|l| l.contains("bios-bios: citron: NBD connected at")).expect("citron's disk line");
    assert!(disk.contains("first read at") && disk.contains("read by the kernel stage"), "{disk}");
    // The outputs: the job the boot-test wrote, the results, the console log with citron's
    // access log (the disk and the phone-home were read from citron).
    let job = std::fs::read_to_string(r.logs.path().join("boot-test-bios-bios.job.yaml")).expect("the job");
    assert!(job.contains("- name: disk") && job.contains("reset_on: boot") && job.contains("bios.qcow2"), "{job}");
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(r.logs.path().join("boot-test-results.json")).expect("results")).expect("JSON");
    let first = &results[0];
    assert_eq!((first["dut"].as_str(), first["result"].as_str()), (Some("bios-bios"), Some("pass")), "{results}");
    assert!(first["stages"]["kernel"].as_f64().is_some_and(|s| s > 0.0), "{results}");
    assert!(first["nbd"]["bytes"].as_u64().is_some_and(|b| b > 10 << 20), "the kernel and initramfs came over NBD: {results}");
    let log = std::fs::read_to_string(r.logs.path().join("boot-test-bios-bios.log")).expect("the console log");
    assert!(log.contains("=== citron: http /_citron/ready"), "{log}");
    assert!(log.contains("=== citron: nbd disk"), "{log}");
}

/// A broken image fails with `reason` and the console line that showed it, not by timeout.
fn fails_with(name: &str, reason: &str, line: &str) {
    if !have_tools() {
        return;
    }
    let _one = qemu_lock();
    let r = boot_image(name, &[]);
    assert_eq!(r.out.status.code(), Some(1), "{}", r.last_stderr_line());
    let last = r.last_stderr_line();
    assert!(last.contains("FAIL") && last.contains(&format!("{reason}: ")) && last.contains(line), "{last}");
    assert!(!last.contains("timeout"), "{last}");
}

#[test]
fn an_image_without_a_bootloader_fails_with_its_reason() {
    fails_with("broken-nobootloader.img", "no bootloader", "Boot failed: not a bootable disk");
}

#[test]
fn an_image_whose_kernel_panics_fails_with_its_reason() {
    fails_with("broken-panic.img", "kernel panic", "VFS: Unable to mount root fs");
}

#[test]
fn an_image_without_its_root_filesystem_fails_with_its_reason() {
    fails_with("broken-noroot.img", "the initramfs gave up", "Gave up waiting for root file system device");
}

#[test]
fn an_image_whose_init_enters_emergency_mode_fails_with_its_reason() {
    fails_with("broken-emergency.img", "emergency shell", "You are in emergency mode");
}

#[test]
fn a_matrix_boots_bios_and_uefi_in_their_own_namespaces_with_a_junit_report() {
    if !have_tools() || !require_tool("xmllint") {
        return;
    }
    if !Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd").exists() && !Path::new("/usr/share/OVMF/OVMF_CODE.fd").exists() {
        let msg = "OVMF is not installed (scripts/setup-debian.sh --qemu installs ovmf)";
        assert!(!strict(), "{msg}; CITRON_E2E_STRICT=1 forbids skipping");
        eprintln!("SKIPPED: {msg}");
        return;
    }
    if !qemu::can_make_namespaces() {
        return;
    }
    let _one = qemu_lock();
    let (bios, uefi) = (kit().join("bios.img"), kit().join("uefi.img"));
    let before = (sha256(&bios), sha256(&uefi));
    let junit = tempfile::NamedTempFile::new().expect("a temporary file");
    let (b, u) = (format!("bios:{}", bios.display()), format!("uefi:{}", uefi.display()));
    let r = boot_test(&["--image", &b, "--image", &u, "--junit", junit.path().to_str().expect("utf-8")]);
    assert_eq!((sha256(&bios), sha256(&uefi)), before, "an image was written by its boot");
    assert_eq!(r.out.status.code(), Some(0), "{}", r.last_stderr_line());
    // Each its own DUT in its own namespace: QEMU ran inside it and reached citron's bridge.
    for dut in ["bios-bios", "uefi-uefi"] {
        let cmd = r.stderr.lines().find(|l| l.contains(&format!("{dut}: boot 1 of 1: ip netns exec citron-bt-"))).expect("QEMU's command");
        assert!(cmd.contains("nbd://198.18.77.1:"), "{cmd}");
    }
    assert!(
        r.stdout.contains("[uefi-uefi] Welcome to GRUB!") && r.stdout.contains("[bios-bios] SYSLINUX 6"),
        "each booted its own bootloader"
    );
    // The summary table: a header, one row per DUT, the count.
    let table: Vec<&str> = r.stderr.lines().skip_while(|l| !l.ends_with("citron boot-test: summary")).skip(1).take(4).collect();
    assert!(table[0].starts_with("DUT") && table[0].contains("RESULT") && table[0].contains("BOOTLOADER"), "{table:#?}");
    for (row, dut, boots) in [(table[1], "bios-bios", "bios.img [bios]"), (table[2], "uefi-uefi", "uefi.img [uefi]")] {
        let cells: Vec<&str> = row.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
        assert_eq!(&cells[..3], [dut, boots, "PASS"], "{row}");
        assert_eq!(cells.len(), 8, "four stages and the total: {row}");
        assert!(cells[3..].iter().all(|c| c.ends_with('s') && c.trim_end_matches('s').parse::<f64>().is_ok()), "{row}");
    }
    assert_eq!(table[3], "2 passed, 0 failed");
    // The JUnit file is valid against the JUnit schema and has one case per image and firmware.
    let out = Command::new("xmllint")
        .args(["--noout", "--schema"])
        .arg(workspace_root().join("tests/data/junit.xsd"))
        .arg(junit.path())
        .output()
        .expect("run xmllint");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let xml = std::fs::read_to_string(junit.path()).expect("the JUnit file");
    assert_eq!(xml.matches("<testcase ").count(), 2, "{xml}");
    assert!(xml.contains(r#"classname="uefi-uefi" name="uefi.img [uefi]""#) && !xml.contains("<failure"), "{xml}");
    assert!(xml.contains(r#"<property name="uefi-uefi.stage.bootloader""#), "{xml}");
    qemu::assert_no_namespace_left();
}

#[test]
fn an_image_that_is_not_what_image_format_says_is_refused() {
    if !have_tools() {
        return;
    }
    let image = kit().join("bios.img");
    let r = boot_test(&["--image", image.to_str().expect("utf-8"), "--image-format", "qcow2"]);
    assert_eq!(r.out.status.code(), Some(2));
    assert!(r.last_stderr_line().contains("is not a qcow2 image"), "{}", r.last_stderr_line());
}
