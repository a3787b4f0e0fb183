//! What the QEMU boot tests (`vdut`, `image`) share: the boot files their build scripts make,
//! a `citron boot-test` run with its console logs, and the checks around network namespaces.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use citron_tests::{citron_bin, require_tool, strict, workspace_root};

/// The output directory of `script` (a build script under tests/, run from the workspace
/// root), built once per test run; the script itself skips the work when its inputs have not
/// changed since the last run.
pub fn kit(script: &'static str) -> PathBuf {
    static BUILT: Mutex<Option<HashMap<&'static str, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    built
        .get_or_insert_with(HashMap::new)
        .entry(script)
        .or_insert_with(|| {
            let out = Command::new(workspace_root().join(script)).output().unwrap_or_else(|e| panic!("run {script}: {e}"));
            assert!(out.status.success(), "{script} failed:\n{}", String::from_utf8_lossy(&out.stderr));
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        })
        .clone()
}

/// A finished `citron boot-test`.
pub struct Run {
    pub out: Output,
    pub stdout: String,
    pub stderr: String,
    /// Where the console logs, the results and the JUnit file went.
    pub logs: tempfile::TempDir,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.out.status.code()
    }

    /// The verdict line (`PASS …` / `FAIL …`) or the error.
    pub fn last_stderr_line(&self) -> &str {
        self.stderr.lines().last().unwrap_or("")
    }
}

/// `citron boot-test --log-dir TMP [what setup adds] ARGS…` from the workspace root, stdin
/// closed; its output is printed for the test's log.
pub fn boot_test(setup: impl FnOnce(&mut Command), args: &[&str]) -> Run {
    let logs = tempfile::tempdir().expect("a temporary directory");
    let mut cmd = Command::new(citron_bin());
    cmd.arg("boot-test").arg("--log-dir").arg(logs.path());
    setup(&mut cmd);
    let out = cmd.args(args).current_dir(workspace_root()).stdin(Stdio::null()).output().expect("run citron boot-test");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("--- citron boot-test {args:?}: {:?}\n{stdout}\n--- stderr\n{stderr}", out.status);
    Run { out, stdout, stderr, logs }
}

/// Whether this test can make network namespaces (`ip`, and root); `false` (skip, with the
/// reason printed) when not, unless strict.
pub fn can_make_namespaces() -> bool {
    if !require_tool("ip") {
        return false;
    }
    let uid = Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.as_deref().ok() != Some("0") {
        let msg = "network namespaces need root";
        assert!(!strict(), "{msg}; CITRON_E2E_STRICT=1 forbids skipping");
        eprintln!("SKIPPED: {msg}");
        return false;
    }
    true
}

/// Asserts that `citron boot-test` removed every network namespace it made.
pub fn assert_no_namespace_left() {
    let left = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(!left.lines().any(|l| l.starts_with("citron-bt-")), "namespaces left behind: {left}");
}
