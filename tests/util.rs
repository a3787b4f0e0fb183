//! Helpers for the end-to-end tests: find the `citron` binary, start it, find real clients.
//!
//! ```no_run
//! use citron_tests::{require_tool, Citron};
//! if !require_tool("curl") { return; }
//! let c = Citron::start(&[]);
//! let out = std::process::Command::new("curl").arg(c.http_url("/boot.ipxe")).output().unwrap();
//! ```

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub mod api;
pub mod registry;

/// How long `citron serve` may take to print its listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// One QEMU boot test at a time, across modules (the machine has 2 cores; TCG boots take one
/// each): `vdut` and `image` tests hold it while they boot.
pub fn qemu_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether failing instead of skipping is asked for (CI).
pub fn strict() -> bool {
    std::env::var("CITRON_E2E_STRICT").is_ok_and(|v| v == "1")
}

/// `true` if `tool` is on PATH. Otherwise prints why the test is skipped and returns `false`,
/// or panics when `CITRON_E2E_STRICT=1` (a skipped test must not pass in CI).
pub fn require_tool(tool: &str) -> bool {
    let found = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| is_executable(&d.join(tool)))).unwrap_or(false);
    if found {
        return true;
    }
    let msg = format!("{tool} is not installed (scripts/setup-debian.sh installs it)");
    if strict() {
        panic!("{msg}; CITRON_E2E_STRICT=1 forbids skipping");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The `citron` binary of the same target directory as this test executable
/// (`target/<profile>/deps/e2e-…` → `target/<profile>/citron`).
pub fn citron_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CITRON_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test executable has a path");
    let mut dir = exe.parent().expect("the test executable is in a directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("citron");
    assert!(
        bin.exists(),
        "{} does not exist: build it first with `cargo build -p citron-cli` (same profile as the tests), or set CITRON_BIN",
        bin.display()
    );
    bin
}

/// The workspace root (for examples/ and tests/data/).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the workspace").to_path_buf()
}

/// A running `citron serve`, killed when dropped.
pub struct Citron {
    child: Child,
    /// HTTP address, if enabled.
    pub http: Option<SocketAddr>,
    /// TFTP address, if enabled.
    pub tftp: Option<SocketAddr>,
    /// NBD address, if enabled.
    pub nbd: Option<SocketAddr>,
    /// API address, if enabled.
    pub api: Option<SocketAddr>,
    stderr: mpsc::Receiver<String>,
    line: mpsc::Receiver<String>,
    /// Its data directory (a temporary one unless `--data` was given).
    pub data: tempfile::TempDir,
    /// The `--data` it runs with (`data/state` unless given).
    pub state: PathBuf,
    exited: Option<std::process::ExitStatus>,
}

/// The outcome of starting `citron serve` that did not print its listening line.
#[derive(Debug)]
pub struct StartFailure {
    /// The exit status, if it exited.
    pub status: Option<std::process::ExitStatus>,
    /// What it printed on stderr.
    pub stderr: String,
}

impl Citron {
    /// Starts `citron serve` with every backend on `127.0.0.1:0` and a temporary data directory,
    /// plus `args` (which may override the addresses); panics if it does not come up.
    pub fn start(args: &[&str]) -> Citron {
        match Self::try_start(args) {
            Ok(c) => c,
            Err(f) => panic!("citron serve did not start ({:?}):\n{}", f.status, f.stderr),
        }
    }

    /// Like [`start`](Self::start), but returns what went wrong instead of panicking.
    pub fn try_start(args: &[&str]) -> Result<Citron, StartFailure> {
        Self::start_with(args, |_| {})
    }

    /// Starts `citron serve` as [`start`](Self::start) does but returns at once, before it
    /// printed its listening line (the addresses are not known yet: see
    /// [`wait_listening`](Self::wait_listening)). For start-up itself, e.g. a long `--job`.
    pub fn spawn(args: &[&str]) -> Citron {
        Self::spawn_with(args, |_| {})
    }

    /// [`start`](Self::start) with `tweak` applied to the command first (environment, limits).
    pub fn start_with(args: &[&str], tweak: impl FnOnce(&mut Command)) -> Result<Citron, StartFailure> {
        let mut c = Self::spawn_with(args, tweak);
        match c.wait_listening(START_TIMEOUT) {
            true => Ok(c),
            false => {
                let _ = c.child.kill();
                let status = c.child.wait().ok();
                let mut stderr = String::new();
                while let Ok(l) = c.stderr.recv_timeout(Duration::from_secs(2)) {
                    stderr.push_str(&l);
                }
                Err(StartFailure { status, stderr })
            }
        }
    }

    /// [`spawn`](Self::spawn) with `tweak` applied to the command first.
    pub fn spawn_with(args: &[&str], tweak: impl FnOnce(&mut Command)) -> Citron {
        let data = tempfile::tempdir().expect("a temporary directory");
        let mut cmd = Command::new(citron_bin());
        cmd.arg("serve");
        for flag in ["--http", "--tftp", "--nbd", "--api"] {
            if !args.contains(&flag) {
                cmd.args([flag, "127.0.0.1:0"]);
            }
        }
        let state = match args.iter().position(|a| *a == "--data") {
            Some(i) => PathBuf::from(args.get(i + 1).copied().unwrap_or_default()),
            None => {
                let s = data.path().join("state");
                cmd.arg("--data").arg(&s);
                s
            }
        };
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        tweak(&mut cmd);
        let mut child = cmd.spawn().expect("citron can be started");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (line_tx, line_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = line_tx.send(line);
            // Keep draining so citron never blocks on a full pipe.
            let _ = std::io::copy(&mut r, &mut std::io::sink());
        });
        let (err_tx, err_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let _ = err_tx.send(String::from_utf8_lossy(&buf).into_owned());
                    }
                }
            }
        });
        Citron { child, http: None, tftp: None, nbd: None, api: None, stderr: err_rx, line: line_rx, data, state, exited: None }
    }

    /// Waits (at most `timeout`) for the listening line and fills in the addresses; `false` if
    /// citron exited or printed something else first.
    pub fn wait_listening(&mut self, timeout: Duration) -> bool {
        let line = self.line.recv_timeout(timeout).unwrap_or_default();
        let Some(rest) = line.trim().strip_prefix("citron: listening ") else { return false };
        for kv in rest.split_whitespace() {
            let (k, v) = kv.split_once('=').expect("key=value in the listening line");
            let a = if v == "off" { None } else { Some(v.parse().expect("an address in the listening line")) };
            match k {
                "http" => self.http = a,
                "tftp" => self.tftp = a,
                "nbd" => self.nbd = a,
                "api" => self.api = a,
                other => panic!("unknown key {other} in the listening line"),
            }
        }
        true
    }

    /// `http://ADDR/path` of the HTTP server.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.http.expect("HTTP is enabled"), path)
    }

    /// Sends `method path` to the API with curl and `args` (headers, `--data-binary`...), and
    /// returns the answer once [`api::check`] found it matches the OpenAPI document.
    pub fn api(&self, method: &str, path: &str, args: &[&str]) -> api::Reply {
        api::call(self.api.expect("the API is enabled"), method, path, args)
    }

    /// [`api`](Self::api) with a JSON body (`None`: no body).
    pub fn api_json(&self, method: &str, path: &str, body: Option<&str>) -> api::Reply {
        match body {
            Some(b) => self.api(method, path, &["-H", "Content-Type: application/json", "--data-binary", b]),
            None => self.api(method, path, &[]),
        }
    }

    /// PUTs a YAML job for `dut` through the API (curl, `application/yaml`); `(status, body)`.
    pub fn put_job(&self, dut: &str, yaml: &str) -> (u16, String) {
        let r = self.api("PUT", &format!("/api/v1/duts/{dut}/job"), &["-H", "Content-Type: application/yaml", "--data-binary", yaml]);
        (r.status, r.body)
    }

    /// The process id (to send signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (at most `timeout`) for the exit status.
    pub fn terminate(mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.signal("TERM");
        self.wait_exit(timeout)
    }

    /// Sends signal `name` (`INT`, `TERM`, ...) with kill(1).
    pub fn signal(&self, name: &str) {
        let st = Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status();
        assert!(st.is_ok_and(|s| s.success()), "kill -{name} failed");
    }

    /// Waits (at most `timeout`) for citron to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        if self.exited.is_some() {
            return self.exited;
        }
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.exited = Some(s);
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Everything citron logged on stderr, once it has exited (waits, at most `timeout`, for
    /// the pipe to close).
    pub fn stderr_to_end(&self, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        let mut s = String::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(l) => s.push_str(&l),
                Err(_) => return s,
            }
        }
    }

    /// What citron logged on stderr so far.
    pub fn stderr_so_far(&self) -> String {
        let mut s = String::new();
        while let Ok(l) = self.stderr.try_recv() {
            s.push_str(&l);
        }
        s
    }
}

impl Drop for Citron {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Output of a finished command, as text.
#[derive(Debug)]
pub struct Out {
    /// Exit code (`-1` if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `program args…` to completion (killed after `timeout`).
pub fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str], cwd: Option<&Path>, timeout: Duration) -> Out {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let mut child = cmd.spawn().expect("the program can be started");
    let mut so = child.stdout.take().expect("piped");
    let mut se = child.stderr.take().expect("piped");
    let t1 = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t2 = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait works") {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().expect("wait works");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Out {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&t1.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&t2.join().unwrap_or_default()).into_owned(),
    }
}

/// Runs curl with `args` (`-s` is added) and returns its output; 20 s at most.
pub fn curl(args: &[&str]) -> Out {
    let mut a = vec!["-s", "--max-time", "20"];
    a.extend_from_slice(args);
    run("curl", &a, None, Duration::from_secs(30))
}

/// Runs curl with `args`, discards the body and returns the HTTP status (0: no answer).
pub fn curl_status(args: &[&str]) -> u16 {
    let mut a = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    a.extend_from_slice(args);
    let o = curl(&a);
    o.stdout.trim().parse().unwrap_or(0)
}
