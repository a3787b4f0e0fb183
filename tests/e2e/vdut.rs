//! The virtual DUT: `citron boot-test` boots QEMU guests from an in-process citron, and the
//! guests (tests/vdut/init) print what they fetched. Every check here is on what a real guest
//! kernel and real clients inside it (iPXE, busybox wget and tftp, nbd-client, ext4) saw.
//!
//! Boots are slow under TCG (about 15 s of one core each), so the tests in this module take a
//! lock and run one at a time; only the two-DUT test boots two guests at once.

use std::path::PathBuf;
use std::sync::MutexGuard;

use citron_tests::{require_tool, workspace_root};

use crate::qemu::{self, Run};

/// One boot-test at a time (the machine has 2 cores), image boots included.
fn serial() -> MutexGuard<'static, ()> {
    citron_tests::qemu_lock()
}

/// The tools a boot needs; `false` (skip) when one is missing, unless strict.
fn have_qemu() -> bool {
    ["qemu-system-x86_64", "busybox", "nbd-client", "cpio", "modprobe"].iter().all(|t| require_tool(t))
}

/// The guest's kernel, initramfs and tarballs (tests/vdut/build.sh).
fn kit() -> PathBuf {
    qemu::kit("tests/vdut/build.sh")
}

/// The `VDUT: ` lines of one DUT (all of them without a prefix), marker removed.
fn vdut(r: &Run, prefix: &str) -> Vec<String> {
    r.stdout.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.split_once("VDUT: ").map(|(_, r)| r.to_string())).collect()
}

/// `citron boot-test` with the vdut lab.
fn boot_test(args: &[&str]) -> Run {
    qemu::boot_test(
        |c| {
            c.arg("--lab").arg(workspace_root().join("tests/vdut/lab.yaml"));
        },
        args,
    )
}

fn job(name: &str) -> String {
    workspace_root().join("tests/vdut").join(name).display().to_string()
}

/// Splits a DUT's lines into boots (each begins with `start`).
fn boots(lines: &[String]) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    for l in lines {
        if l.starts_with("start ") || out.is_empty() {
            out.push(Vec::new());
        }
        out.last_mut().expect("pushed").push(l.clone());
    }
    out
}

/// The one line of `boot` that starts with `step ` (exactly one expected).
fn step<'a>(boot: &'a [String], step: &str) -> &'a str {
    let want = format!("{step} ");
    let found: Vec<&String> = boot.iter().filter(|l| l.starts_with(&want)).collect();
    assert_eq!(found.len(), 1, "expected one `{step}` line in {boot:#?}");
    &found[0][want.len()..]
}

#[test]
fn full_job_boots_twice_over_http_and_sees_every_artifact_kind() {
    if !have_qemu() {
        return;
    }
    let _one = serial();
    kit();
    let r = boot_test(&["--job", &job("job-full.yaml"), "--dut", "vdut1", "--boots", "2", "--expect", "VDUT: done", "--timeout", "60s"]);
    assert_eq!(r.code(), Some(0), "{}", r.last_stderr_line());
    assert!(r.last_stderr_line().contains("PASS"), "{}", r.last_stderr_line());
    let b = boots(&vdut(&r, ""));
    assert_eq!(b.len(), 2, "two boots: {b:#?}");
    for (i, boot) in b.iter().enumerate() {
        let n = i + 1;
        // The `continue` deployment's cmdline is used from the second boot event on.
        assert!(step(boot, "start").starts_with(&format!("mid=vdut1 boot={n} ")), "{boot:#?}");
        assert!(step(boot, "net").starts_with("OK"), "{boot:#?}");
        // access_count: 1, reset by each boot event: the first read of every boot succeeds,
        // the second is refused.
        assert_eq!(step(boot, "http-read-1"), "OK secret of vdut1");
        let second = step(boot, "http-read-2");
        assert!(second.starts_with("FAIL") && !second.contains("secret of"), "second read: {second}");
        assert_eq!(step(boot, "http-get /job/hello.txt"), "OK hello over http");
        assert_eq!(step(boot, "tftp"), "OK tftp config of vdut1");
        // ext4 from a tarball over NBD, mounted by the guest kernel; reset_on: job_start keeps
        // the first boot's write.
        assert_eq!(step(boot, "fs"), "OK rootfs of job full");
        let expected_boots = (1..=n).map(|k| format!("boot {k}")).collect::<Vec<_>>().join(" ");
        assert_eq!(step(boot, "fs-boots"), expected_boots);
        // raw, reset_on: boot: every boot finds it zeroed, whatever the previous one wrote.
        assert_eq!(step(boot, "scratch-before"), "ZERO", "boot {n}");
        assert_eq!(step(boot, "scratch-after"), format!("written by vdut1 in boot {n}"));
        assert!(step(boot, "done").starts_with("mid=vdut1"));
    }
}

#[test]
fn boots_over_tftp() {
    if !have_qemu() {
        return;
    }
    let _one = serial();
    kit();
    let r = boot_test(&["--job", &job("job-a.yaml"), "--dut", "vdut2", "--proto", "tftp", "--expect", "VDUT: done", "--timeout", "60s"]);
    assert_eq!(r.code(), Some(0), "{}", r.last_stderr_line());
    let b = boots(&vdut(&r, ""));
    assert_eq!(b.len(), 1);
    assert!(step(&b[0], "start").starts_with("mid=vdut2 boot=1"));
    assert_eq!(step(&b[0], "tftp"), "OK tftp config of job a");
    assert_eq!(step(&b[0], "fs"), "OK rootfs of job a");
}

#[test]
fn two_duts_in_their_own_namespaces_see_only_their_own_jobs() {
    if !have_qemu() || !qemu::can_make_namespaces() {
        return;
    }
    let _one = serial();
    kit();
    let r = boot_test(&[
        "--job",
        &job("job-a.yaml"),
        "--dut",
        "vdut1",
        "--job",
        &job("job-b.yaml"),
        "--dut",
        "vdut2",
        "--netns",
        "--expect",
        "VDUT: done",
        "--timeout",
        "60s",
    ]);
    assert_eq!(r.code(), Some(0), "{}", r.last_stderr_line());
    for (dut, mine, other) in [("vdut1", "a", "b"), ("vdut2", "b", "a")] {
        let lines = vdut(&r, &format!("[{dut}] "));
        let b = boots(&lines);
        assert_eq!(b.len(), 1, "{dut}: {lines:#?}");
        let boot = &b[0];
        assert!(step(boot, "start").starts_with(&format!("mid={dut} ")));
        // Same paths, each its own content: the server told them apart by source address.
        assert_eq!(step(boot, "http-get /job/hello.txt"), format!("OK hello from job {mine}"));
        assert_eq!(step(boot, &format!("http-get /job/only-{mine}.txt")), format!("OK only in job {mine}"));
        let theirs = step(boot, &format!("http-get /job/only-{other}.txt"));
        assert!(theirs.starts_with("FAIL") && theirs.contains("404"), "{dut} must not see job {other}'s file: {theirs}");
        assert_eq!(step(boot, "tftp"), format!("OK tftp config of job {mine}"));
        assert_eq!(step(boot, "fs"), format!("OK rootfs of job {mine}"));
    }
    qemu::assert_no_namespace_left();
}

#[test]
fn a_kernel_panic_fails_with_its_reason() {
    if !have_qemu() {
        return;
    }
    let _one = serial();
    kit();
    let r = boot_test(&["--job", &job("job-panic.yaml"), "--expect", "VDUT: done", "--timeout", "60s"]);
    assert_eq!(r.code(), Some(1));
    let last = r.last_stderr_line();
    assert!(last.contains("FAIL") && last.contains("kernel panic"), "{last}");
}

#[test]
fn a_pattern_never_seen_fails_when_the_guest_powers_off() {
    if !have_qemu() {
        return;
    }
    let _one = serial();
    kit();
    let r = boot_test(&["--job", &job("job-a.yaml"), "--expect", "this line is never printed", "--timeout", "60s"]);
    assert_eq!(r.code(), Some(1));
    let last = r.last_stderr_line();
    assert!(last.contains("pattern never seen") && last.contains("this line is never printed"), "{last}");
    // The guest did boot: the console was streamed.
    assert!(vdut(&r, "").iter().any(|l| l.starts_with("done ")), "{}", r.stdout);
}

#[test]
fn a_timeout_fails_with_its_reason() {
    if !have_qemu() {
        return;
    }
    let _one = serial();
    kit();
    let r = boot_test(&["--job", &job("job-a.yaml"), "--expect", "VDUT: done", "--timeout", "2s"]);
    assert_eq!(r.code(), Some(1));
    let last = r.last_stderr_line();
    assert!(last.contains("timeout") && last.contains("2s"), "{last}");
}

#[test]
fn a_missing_qemu_is_reported_not_skipped() {
    let r = boot_test(&["--job", &job("job-a.yaml"), "--qemu", "/nonexistent/qemu-system-x86_64"]);
    assert_eq!(r.code(), Some(2));
    let last = r.last_stderr_line();
    assert!(last.contains("/nonexistent/qemu-system-x86_64 not found"), "{last}");
}
