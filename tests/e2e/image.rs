//! Image boot tests: `citron boot-test --image` boots whole disk images (tests/image/build.sh:
//! a real MBR and SYSLINUX, or GRUB on an ESP, a kernel, an initramfs and an ext4 root) with
//! citron's NBD export as the disk, and says why a broken one fails. Every image's sha256 is
//! checked after its boot: the image file is never written.
//!
//! Boots run one at a time (`qemu_lock`) under TCG: about 15 s of one core each. Broken
//! variants boot under BIOS only; the one UEFI boot is in the matrix test. Two of the boots
//! also upload their outcome (`--results-job`) to a real `citron serve`'s results store: a
//! pass and a failure, each read back with `citron results` and curl.

use std::path::{Path, PathBuf};
use std::process::Command;

use citron_tests::{citron_bin, qemu_lock, require_tool, strict, workspace_root, Citron};
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

/// A results store for `--results-job`: a `citron serve` (API only) and a tenant's token in a
/// file, as CI would hold them.
struct Results {
    server: Citron,
    url: String,
    token: tempfile::NamedTempFile,
}

impl Results {
    fn start() -> Results {
        const ADMIN: &str = "admin-s3cret";
        let server = Citron::start_with(&["--http", "off", "--tftp", "off", "--nbd", "off"], |c| {
            c.env("CITRON_API_TOKEN", ADMIN);
        })
        .unwrap_or_else(|f| panic!("citron did not start: {}", f.stderr));
        let auth = format!("Authorization: Bearer {ADMIN}");
        let r = server.api(
            "POST",
            "/api/v1/tenants",
            &["-H", &auth, "-H", "Content-Type: application/json", "--data-binary", r#"{"name":"ci"}"#],
        );
        assert_eq!(r.status, 201, "{r:?}");
        let token = tempfile::NamedTempFile::new().expect("a temporary file");
        std::fs::write(token.path(), r.json()["token"].as_str().expect("a token")).expect("write the token");
        let url = format!("http://{}", server.api.expect("the API"));
        Results { server, url, token }
    }

    /// `--results-job JOB` and where the store is.
    fn args(&self, job: &str) -> Vec<String> {
        let token = self.token.path().display().to_string();
        ["--results-job", job, "--server", &self.url, "--token-file", &token].map(String::from).to_vec()
    }

    /// `citron results ARGS` against the store; its stdout as JSON.
    fn cli(&self, args: &[&str]) -> serde_json::Value {
        let out = Command::new(citron_bin())
            .arg("results")
            .args(args)
            .args(["--server", &self.url, "--token-file"])
            .arg(self.token.path())
            .output()
            .expect("run citron results");
        assert!(out.status.success(), "citron results {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("JSON")
    }

    /// The run's console, with curl.
    fn console(&self, job: &str, run: i64) -> String {
        let token = std::fs::read_to_string(self.token.path()).expect("the token");
        let r = self.server.api(
            "GET",
            &format!("/api/v1/results/{job}/runs/{run}/console"),
            &["-H", &format!("Authorization: Bearer {token}")],
        );
        assert_eq!(r.status, 200, "{r:?}");
        r.body
    }

    /// The run's `boot-test.json`, downloaded and checked by `citron results latest -o`.
    fn boot_test_json(&self, job: &str, status: &str) -> serde_json::Value {
        let out = tempfile::NamedTempFile::new().expect("a temporary file");
        let o = out.path().to_str().expect("utf-8");
        let sha = Command::new(citron_bin())
            .args(["results", "latest", job, "--file", "boot-test.json", "-o", o, "--server", &self.url, "--token-file"])
            .arg(self.token.path())
            .output()
            .expect("run citron results latest");
        // `latest` picks successful runs: a failed one is read through its run instead.
        if status == "success" {
            assert!(sha.status.success(), "{}", String::from_utf8_lossy(&sha.stderr));
            return serde_json::from_slice(&std::fs::read(out.path()).expect("the file")).expect("JSON");
        }
        assert!(!sha.status.success(), "a failed run is no latest success");
        let runs = self.cli(&["runs", job]);
        let run = runs[0]["id"].as_i64().expect("a run id");
        let token = std::fs::read_to_string(self.token.path()).expect("the token");
        let auth = format!("Authorization: Bearer {token}");
        let url = format!("{}/api/v1/results/{job}/runs/{run}/files/boot-test.json", self.url);
        let got = citron_tests::curl(&["-fL", "-H", &auth, &url]);
        assert_eq!(got.code, 0, "{}", got.stderr);
        serde_json::from_str(&got.stdout).expect("JSON")
    }

    /// The job's only run: its status, platform, revision and files are what the boot was.
    fn only_run(&self, job: &str, status: &str, platform: &str) -> i64 {
        let runs = self.cli(&["runs", job]);
        assert_eq!(runs.as_array().map(Vec::len), Some(1), "one run per image and firmware: {runs}");
        let run = &runs[0];
        assert_eq!((run["status"].as_str(), run["platform"].as_str()), (Some(status), Some(platform)), "{run}");
        run["id"].as_i64().expect("a run id")
    }
}

#[test]
fn a_qcow2_bios_image_boots_to_userspace_from_nbd_and_phones_home() {
    if !have_tools() {
        return;
    }
    let _one = qemu_lock();
    let store = Results::start();
    let mut args = vec!["--ready", "phone-home", "--image-format", "qcow2", "--revision", "r1", "--platform", "x86_64"];
    let up = store.args("image-bios");
    args.extend(up.iter().map(String::as_str));
    let r = boot_image("bios.qcow2", &args);
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

    // The outcome is a run of the results store: success, its timings, JUnit and console.
    assert!(r.stderr.contains("bios-bios: results: run 1 of image-bios (success)"), "{}", r.stderr);
    let run = store.only_run("image-bios", "success", "x86_64/bios");
    let latest = store.cli(&["latest", "image-bios", "--platform", "x86_64/bios"]);
    assert_eq!((latest["id"].as_i64(), latest["revision"].as_str()), (Some(run), Some("r1")), "{latest}");
    let files: Vec<&str> = latest["files"].as_array().expect("files").iter().filter_map(|f| f["path"].as_str()).collect();
    assert_eq!(files, ["boot-test.json", "junit.xml"], "{latest}");
    let uploaded = store.boot_test_json("image-bios", "success");
    assert_eq!(uploaded["result"].as_str(), Some("pass"), "{uploaded}");
    assert_eq!(uploaded["stages"], first["stages"], "the run's timings are the boot's");
    assert_eq!(store.console("image-bios", run), log, "the run's console is the console log");
}

/// A broken image fails with `reason` and the console line that showed it, not by timeout.
fn fails_with(name: &str, reason: &str, line: &str) {
    fails_with_results(name, reason, line, None);
}

/// [`fails_with`], uploading the outcome to `results` when given and checking the failed run.
fn fails_with_results(name: &str, reason: &str, line: &str, results: Option<&Results>) {
    if !have_tools() {
        return;
    }
    let _one = qemu_lock();
    let up = results.map(|r| r.args("image-broken")).unwrap_or_default();
    let r = boot_image(name, &up.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.out.status.code(), Some(1), "{}", r.last_stderr_line());
    let last = r.last_stderr_line();
    assert!(last.contains("FAIL") && last.contains(&format!("{reason}: ")) && last.contains(line), "{last}");
    assert!(!last.contains("timeout"), "{last}");
    let Some(results) = results else { return };
    // The failed run: its status, its reason and line, the console that showed it.
    let run = results.only_run("image-broken", "failure", "bios");
    let uploaded = results.boot_test_json("image-broken", "failure");
    assert_eq!((uploaded["result"].as_str(), uploaded["reason"].as_str()), (Some("fail"), Some(reason)), "{uploaded}");
    assert!(uploaded["line"].as_str().is_some_and(|l| l.contains(line)), "{uploaded}");
    assert!(results.console("image-broken", run).contains(line));
}

#[test]
fn an_image_without_a_bootloader_fails_with_its_reason() {
    fails_with("broken-nobootloader.img", "no bootloader", "Boot failed: not a bootable disk");
}

#[test]
fn an_image_whose_kernel_panics_fails_with_its_reason() {
    if !have_tools() {
        return;
    }
    fails_with_results("broken-panic.img", "kernel panic", "VFS: Unable to mount root fs", Some(&Results::start()));
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
