//! The `citron` command line: validate (golden error files), render, serve start-up and shutdown.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use citron_tests::{citron_bin, run, workspace_root, Citron};

const T: Duration = Duration::from_secs(60);

/// Every `tests/data/bad/*.yaml` makes `citron validate` exit 1 and print exactly its
/// `*.stderr` golden file.
#[test]
fn validate_matches_golden_errors() {
    let root = workspace_root();
    let bad = root.join("tests/data/bad");
    let mut checked = 0;
    let mut entries: Vec<_> = match std::fs::read_dir(&bad) {
        Ok(d) => d.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
        Err(e) => panic!("cannot list {}: {e}", bad.display()),
    };
    entries.sort();
    let yamls: Vec<_> = entries.iter().filter(|p| p.extension().is_some_and(|e| e == "yaml")).collect();
    for yaml in &yamls {
        let golden = yaml.with_extension("stderr");
        let want =
            std::fs::read_to_string(&golden).unwrap_or_else(|e| panic!("{} has no golden file {}: {e}", yaml.display(), golden.display()));
        let name = yaml.file_name().unwrap().to_str().unwrap();
        // The golden files name the job as they were run: from the workspace root
        // (`tests/data/bad/x.yaml`) or from their own directory (`x.yaml`).
        let rel = format!("tests/data/bad/{name}");
        let o = if want.starts_with(&rel) {
            run(citron_bin(), &["validate", &rel], Some(&root), T)
        } else {
            run(citron_bin(), &["validate", name], Some(&bad), T)
        };
        assert_eq!(o.code, 1, "{name}: exit code; stderr:\n{}", o.stderr);
        assert_eq!(o.stderr.trim_end(), want.trim_end(), "{name}: stderr differs from {}", golden.display());
        checked += 1;
    }
    eprintln!("validate: {checked} golden files checked");
    assert!(checked > 0, "no tests/data/bad/*.yaml was checked");
    assert_eq!(checked, yamls.len());
    // And no golden file is left without its job.
    for golden in entries.iter().filter(|p| p.extension().is_some_and(|e| e == "stderr")) {
        assert!(golden.with_extension("yaml").is_file(), "{} has no job", golden.display());
    }
}

#[test]
fn validate_accepts_the_examples_and_reports_unreadable_files() {
    let root = workspace_root();
    let o = run(citron_bin(), &["validate", "examples/job-hello.yaml", "examples/job-other.yaml"], Some(&root), T);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stderr.is_empty(), "{}", o.stderr);
    let args = ["validate", "--lab", "examples/lab.yaml", "examples/job-hello.yaml", "examples/job-other.yaml", "examples/job-rpi.yaml"];
    let o = run(citron_bin(), &args, Some(&root), T);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = run(citron_bin(), &["validate", "examples/job-hello.yaml", "no/such/job.yaml"], Some(&root), T);
    assert_eq!(o.code, 1);
    assert!(o.stderr.starts_with("no/such/job.yaml:1:1: "), "{}", o.stderr);
    // A lab file that does not parse is a usage error (2), with its position.
    let dir = tempfile::tempdir().unwrap();
    let lab = dir.path().join("lab.yaml");
    std::fs::write(&lab, "duts: []\nbogus: 1\n").unwrap();
    let o = run(citron_bin(), &["validate", "--lab", lab.to_str().unwrap(), "examples/job-hello.yaml"], Some(&root), T);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("lab.yaml:2:1"), "{}", o.stderr);
}

#[test]
fn a_bad_lab_file_prints_every_error_with_its_position() {
    let root = workspace_root();
    let dir = tempfile::tempdir().unwrap();
    let lab = dir.path().join("bad-lab.yaml");
    std::fs::write(&lab, "duts:\n  - id: a\n    ip: [127.0.0.2, nope]\nvariablez: {}\nlimits:\n  idle_timeout: soon\n").unwrap();
    let lab_s = lab.to_str().unwrap();
    let want = [
        format!("{lab_s}:3:21: duts[0].ip: invalid IP address syntax"),
        format!("{lab_s}:4:1: variablez: unknown field `variablez`; did you mean `variables`?"),
        format!("{lab_s}:6:17: limits.idle_timeout: \"soon\" is not a duration"),
    ];
    let o = run(citron_bin(), &["validate", "--lab", lab_s, "examples/job-hello.yaml"], Some(&root), T);
    assert_eq!(o.code, 2, "{}", o.stderr);
    for w in &want {
        assert!(o.stderr.contains(w.as_str()), "missing {w:?} in:\n{}", o.stderr);
    }
    let f = Citron::try_start(&["--lab", lab_s]).err().expect("must not start");
    assert_eq!(f.status.and_then(|s| s.code()), Some(2), "{}", f.stderr);
    for w in &want {
        assert!(f.stderr.contains(w.as_str()), "missing {w:?} in:\n{}", f.stderr);
    }
}

#[test]
fn help_documents_exit_codes() {
    let o = run(citron_bin(), &["--help"], None, T);
    assert_eq!(o.code, 0);
    assert!(o.stdout.contains("Exit codes:"), "{}", o.stdout);
    for cmd in ["validate", "render", "serve"] {
        let o = run(citron_bin(), &[cmd, "--help"], None, T);
        assert!(o.stdout.contains("Exit codes:"), "{cmd}: {}", o.stdout);
    }
    let o = run(citron_bin(), &["serve", "--http", "nonsense"], None, T);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("--http"), "{}", o.stderr);
}

/// Needs the YAML parser (inline data becomes rows with sizes and digests).
#[test]
fn render_prints_artifacts_and_urls() {
    let root = workspace_root();
    let o = run(citron_bin(), &["render", "examples/job-hello.yaml", "--dut", "dut1"], Some(&root), T);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let s = &o.stdout;
    for want in [
        "PROTOCOL",
        "SHA256",
        "hello.txt",
        "access_count=1",
        "http://127.0.0.1:8080/hello.txt",
        "tftp://127.0.0.1:6969/hello.txt",
        "http://127.0.0.1:8080/boot/dut1/kernel",
        "boot/dut1/boot.ipxe",
        "citron.machine=dut1",
    ] {
        assert!(s.contains(want), "missing {want:?} in:\n{s}");
    }
    let o = run(citron_bin(), &["render", "examples/job-rpi.yaml", "--dut", "rpi1", "--lab", "examples/lab.yaml"], Some(&root), T);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("machine=rpi-kitchen") && o.stdout.contains("deployment.continue"), "{}", o.stdout);
    let o2 = run(citron_bin(), &["render", "examples/job-hello.yaml", "--dut", "nope"], Some(&root), T);
    assert_eq!(o2.code, 2);
    assert!(o2.stderr.contains("dut1, dut2"), "{}", o2.stderr);
}

#[test]
fn serve_prints_addresses_and_stops_on_sigterm() {
    if !citron_tests::require_tool("curl") {
        return;
    }
    let c = Citron::start(&["--tftp", "off", "--nbd", "off"]);
    assert!(c.http.unwrap().port() != 0 && c.api.unwrap().port() != 0);
    assert!(c.tftp.is_none() && c.nbd.is_none());
    assert_eq!(c.api("GET", "/api/v1/duts", &[]).status, 200);
    let status = c.terminate(Duration::from_secs(20)).expect("citron exits after SIGTERM");
    assert_eq!(status.code(), Some(0));
    let mut c = Citron::start(&["--tftp", "off", "--nbd", "off"]);
    assert_eq!(c.api("GET", "/api/v1/duts", &[]).status, 200);
    c.signal("INT");
    let status = c.wait_exit(Duration::from_secs(20)).expect("citron exits after SIGINT");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn serve_refuses_what_it_cannot_do() {
    // The API beyond loopback without a token.
    let f = Citron::try_start(&["--api", "0.0.0.0:0"]).err().expect("must not start");
    assert_eq!(f.status.and_then(|s| s.code()), Some(2));
    assert!(f.stderr.contains("api_token"), "{}", f.stderr);
    // A --job for a DUT the lab does not have.
    let job = workspace_root().join("examples/job-hello.yaml");
    let f = Citron::try_start(&["--job", &format!("dut9={}", job.display())]).err().expect("must not start");
    assert_eq!(f.status.and_then(|s| s.code()), Some(2));
    assert!(f.stderr.contains("dut9"), "{}", f.stderr);
    // A port already taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let f = Citron::try_start(&["--http", &addr]).err().expect("must not start");
    assert!(f.stderr.contains("cannot listen for http"), "{}", f.stderr);
    // An invalid --job: exit 1 with every error, shape and render alike, as `validate` prints.
    let bad = workspace_root().join("tests/data/bad/shape-and-render.yaml");
    let f = Citron::try_start(&["--job", &format!("dut1={}", bad.display())]).err().expect("must not start");
    assert_eq!(f.status.and_then(|s| s.code()), Some(1), "{}", f.stderr);
    for what in ["unknown template variable `minio_url`", "unknown field `colour`", "outside the allowed artifact roots"] {
        assert!(f.stderr.contains(what), "missing {what:?} in:\n{}", f.stderr);
    }
}

/// A job with `big.bin` (`size` bytes) for dut1, as a `file:` next to it; returns its bytes.
fn big_job(dir: &Path, size: usize) -> (PathBuf, Vec<u8>) {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let big: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(dir.join("big.bin"), &big).unwrap();
    let job = dir.join("job.yaml");
    std::fs::write(&job, "deployment:\n  start:\n    storage:\n      http:\n        - path: /big.bin\n          file: big.bin\n").unwrap();
    (job, big)
}

/// A slow curl from dut1 (127.0.0.2) saving `url` to `out`.
fn slow_curl(url: &str, out: &Path, rate: &str) -> std::process::Child {
    Command::new("curl")
        .args(["-s", "--max-time", "120", "--limit-rate", rate, "--interface", "127.0.0.2", "-o", out.to_str().unwrap(), url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits (bounded) until `path` holds at least one byte.
fn wait_for_bytes(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(path).map_or(0, |m| m.len()) == 0 {
        assert!(Instant::now() < deadline, "{} got no byte", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM while two downloads run: the short one finishes within the grace period (curl gets
/// every byte), the long one is cut when it ends (curl reports a partial transfer); citron exits 0.
#[test]
fn sigterm_lets_transfers_finish_then_cuts_them() {
    if !citron_tests::require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (job, big) = big_job(dir.path(), 64 * 1024 * 1024);
    let mut c = Citron::start(&["--tftp", "off", "--nbd", "off", "--job", &format!("dut1={}", job.display())]);
    let (short_out, long_out) = (dir.path().join("short"), dir.path().join("long"));
    // 8 MiB at 4 MiB/s: about 2 s, well inside the grace period.
    let mut short = Command::new("curl")
        .args(["-s", "--max-time", "120", "--limit-rate", "4M", "--interface", "127.0.0.2", "-r", "0-8388607", "-o"])
        .arg(&short_out)
        .arg(c.http_url("/big.bin"))
        .spawn()
        .unwrap();
    // 64 MiB at 1 MiB/s: longer than the grace period.
    let mut long = slow_curl(&c.http_url("/big.bin"), &long_out, "1M");
    wait_for_bytes(&short_out);
    wait_for_bytes(&long_out);
    c.signal("TERM");
    let s = short.wait().unwrap();
    assert!(s.success(), "the short transfer finished: {s:?}");
    assert_eq!(std::fs::read(&short_out).unwrap(), &big[..8 * 1024 * 1024]);
    let l = long.wait().unwrap();
    assert_eq!(l.code(), Some(18), "the long transfer was cut (curl: partial file)");
    let got = std::fs::read(&long_out).unwrap();
    assert!(got.len() < big.len() && got[..] == big[..got.len()], "{} bytes, a prefix of the file", got.len());
    let st = c.wait_exit(Duration::from_secs(60)).expect("citron exits");
    let log = c.stderr_to_end(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{log}");
    assert!(log.contains("cutting them"), "the cut is logged: {log}");
}

/// SIGTERM while curl follows the event feed: the stream ends when shutdown starts (curl sees
/// its end, exit 0, not a cut), so it does not hold citron for the grace period; citron exits 0.
#[test]
fn sigterm_ends_the_event_streams() {
    if !citron_tests::require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = Citron::start(&["--tftp", "off", "--nbd", "off"]);
    let out = dir.path().join("feed");
    let url = format!("http://{}/api/v1/events?after=now", c.api.unwrap());
    // `after=now`: the stream's first message is the position, so bytes arrive at once.
    let mut curl = Command::new("curl").args(["-sN", "--max-time", "120", "-o"]).arg(&out).arg(&url).spawn().unwrap();
    wait_for_bytes(&out);
    c.signal("TERM");
    let st = c.wait_exit(T).expect("citron exits");
    let log = c.stderr_to_end(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{log}");
    assert!(!log.contains("cutting them"), "nothing was left to cut: {log}");
    let cs = curl.wait().unwrap();
    assert_eq!(cs.code(), Some(0), "curl saw the stream end (18 would be a cut): {log}");
    assert!(std::fs::read_to_string(&out).unwrap().starts_with("id: "), "the feed was followed");
}

/// A second signal stops at once, without waiting for the grace period: exit 130 (SIGINT).
#[test]
fn a_second_signal_exits_at_once() {
    if !citron_tests::require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (job, _) = big_job(dir.path(), 64 * 1024 * 1024);
    let mut c = Citron::start(&["--tftp", "off", "--nbd", "off", "--job", &format!("dut1={}", job.display())]);
    let out = dir.path().join("o");
    let mut long = slow_curl(&c.http_url("/big.bin"), &out, "1M");
    wait_for_bytes(&out);
    c.signal("TERM");
    // Bounded: until citron has seen the first one (it logs it).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut log = String::new();
    while !log.contains("shutting down") {
        assert!(Instant::now() < deadline, "no shutdown line: {log}");
        std::thread::sleep(Duration::from_millis(20));
        log.push_str(&c.stderr_so_far());
    }
    c.signal("INT");
    let st = c.wait_exit(Duration::from_secs(60)).expect("citron exits");
    assert_eq!(st.code(), Some(130), "{log}{}", c.stderr_so_far());
    let l = long.wait().unwrap();
    assert!(!l.success(), "the transfer was cut");
}

/// A slow HTTP server on 127.0.0.1 that answers any request with a `Content-Length` it never
/// reaches, trickling a few bytes at a time; it stops (bounded) when the client goes away.
fn trickle_server() -> (std::net::SocketAddr, std::thread::JoinHandle<bool>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut req = Vec::new();
        let mut b = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(0) | Err(_) => return false,
                Ok(n) => req.extend_from_slice(&b[..n]),
            }
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\nContent-Type: application/octet-stream\r\n\r\n");
        // At most 60 s of trickling; `true` once the client hung up.
        for _ in 0..3000 {
            if s.write_all(&[b'x'; 16 * 1024]).is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    });
    (addr, t)
}

/// SIGINT while a `--job` is still downloading: citron stops (exit 0) without printing its
/// listening line, the download is dropped and no partial file stays in the cache's `tmp/`.
#[test]
fn sigint_during_a_slow_job_download_leaves_no_partial_file() {
    let (addr, server) = trickle_server();
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.yaml");
    std::fs::write(
        &job,
        format!("deployment:\n  start:\n    storage:\n      http:\n        - path: /slow.bin\n          url: http://{addr}/slow.bin\n"),
    )
    .unwrap();
    let mut c = Citron::spawn(&["--tftp", "off", "--nbd", "off", "--job", &format!("dut1={}", job.display())]);
    let tmp = c.state.join("cache/tmp");
    let partial = || -> Vec<(PathBuf, u64)> {
        std::fs::read_dir(&tmp)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| (e.path(), e.metadata().map_or(0, |m| m.len()))).collect())
            .unwrap_or_default()
    };
    // Bounded: until the download has written something to its temporary file.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !partial().iter().any(|(_, n)| *n > 0) {
        assert!(Instant::now() < deadline, "no partial download in {}: {}", tmp.display(), c.stderr_so_far());
        assert!(c.wait_exit(Duration::ZERO).is_none(), "citron exited: {}", c.stderr_so_far());
        std::thread::sleep(Duration::from_millis(20));
    }
    c.signal("INT");
    let st = c.wait_exit(Duration::from_secs(30)).expect("citron exits after SIGINT");
    let log = c.stderr_to_end(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{log}");
    assert!(log.contains("SIGINT during start-up"), "{log}");
    assert!(!c.wait_listening(Duration::from_secs(1)), "it never printed its listening line");
    assert_eq!(partial(), Vec::new(), "partial files left in {}; log:\n{log}", tmp.display());
    assert!(server.join().unwrap(), "the download's connection was closed");
}
