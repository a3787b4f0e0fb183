//! What a lab admin runs citron with: access lines in JSON, the start-up window (a DUT asking
//! while its job loads gets the file; readiness after, health from the start), systemd's
//! READY=1, environment variables and host names for the flags, shell completions and the man
//! page.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use citron_tests::{citron_bin, curl, require_tool, run, workspace_root, Citron};

/// Serves `body` once to the first request, but only after `release` says so; `got` says when
/// the request arrived. A job fetching from it stays "loading" until the test releases it.
fn gated_origin(body: &'static [u8]) -> (std::net::SocketAddr, mpsc::Receiver<()>, mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (got_tx, got_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut req = Vec::new();
        let mut b = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(0) | Err(_) => return,
                Ok(n) => req.extend_from_slice(&b[..n]),
            }
        }
        let _ = got_tx.send(());
        // Bounded: the test releases it within seconds, or has failed.
        let _ = release_rx.recv_timeout(Duration::from_secs(60));
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(body);
    });
    (addr, got_rx, release_tx, t)
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn write_job(dir: &Path, yaml: &str) -> String {
    let p = dir.join("job.yaml");
    std::fs::write(&p, yaml).unwrap();
    p.display().to_string()
}

/// The start-up window: while `--job` is still fetching, the API answers `/health` (200) and
/// `/ready` (503), and a TFTP request from the DUT waits for the job and gets the file instead
/// of "file not found"; once loaded, `/ready` is 200.
#[test]
fn a_tftp_request_sent_while_the_job_loads_gets_the_file() {
    if !require_tool("curl") {
        return;
    }
    let (origin, got, release, server) = gated_origin(b"kernel bytes\n");
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(
        dir.path(),
        &format!("deployment:\n  start:\n    storage:\n      tftp:\n        - path: vmlinuz\n          url: http://{origin}/vmlinuz\n"),
    );
    let (tftp, api) = (free_udp_port(), free_tcp_port());
    let (tftp_addr, api_addr) = (format!("127.0.0.1:{tftp}"), format!("127.0.0.1:{api}"));
    let mut c = Citron::spawn(&["--tftp", &tftp_addr, "--api", &api_addr, "--nbd", "off", "--job", &format!("dut1={job}")]);
    got.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("citron never fetched the job's file: {}", c.stderr_so_far()));
    let ready = curl(&["-w", "\n%{http_code}", &format!("http://{api_addr}/api/v1/ready")]);
    assert!(ready.stdout.ends_with("\n503") && ready.stdout.contains("\"starting\""), "{}", ready.stdout);
    let health = curl(&["-w", "\n%{http_code}", &format!("http://{api_addr}/api/v1/health")]);
    assert!(health.stdout.ends_with("\n200"), "{}", health.stdout);
    // The DUT (127.0.0.2) asks now, while the job is still loading.
    let out = dir.path().join("vmlinuz");
    let client = Command::new("curl")
        .args(["-sS", "--max-time", "60", "--interface", "127.0.0.2", "-o", out.to_str().unwrap()])
        .arg(format!("tftp://{tftp_addr}/vmlinuz"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Give the request time to reach citron before the job can finish (if it arrived later,
    // the test would prove less, never fail wrongly).
    std::thread::sleep(Duration::from_millis(500));
    release.send(()).unwrap();
    let o = client.wait_with_output().unwrap();
    assert!(o.status.success(), "curl: {}\n{}", String::from_utf8_lossy(&o.stderr), c.stderr_so_far());
    assert_eq!(std::fs::read(&out).unwrap(), b"kernel bytes\n");
    assert!(c.wait_listening(Duration::from_secs(60)), "{}", c.stderr_so_far());
    let ready = curl(&["-w", "\n%{http_code}", &format!("http://{api_addr}/api/v1/ready")]);
    assert!(ready.stdout.ends_with("\n200") && ready.stdout.contains("\"ok\""), "{}", ready.stdout);
    server.join().unwrap();
}

/// `--log-format json`: every request is one JSON line with who, what, outcome, bytes and time,
/// whatever the protocol, refusals included.
#[test]
fn each_request_is_one_json_access_line() {
    if !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(
        dir.path(),
        "deployment:\n  start:\n    storage:\n      http:\n        - path: hello.txt\n          data: hello\n      tftp:\n        - path: boot.bin\n          data: boot\n",
    );
    let mut c = Citron::start(&["--log-format", "json", "--nbd", "off", "--job", &format!("dut1={job}")]);
    assert_eq!(curl(&["--interface", "127.0.0.2", &c.http_url("/hello.txt")]).stdout, "hello");
    assert_eq!(curl(&["--interface", "127.0.0.2", "-o", "/dev/null", "-w", "%{http_code}", &c.http_url("/nope")]).stdout, "404");
    // A peer that is no DUT: the lab's most common mistake, said at info.
    assert_eq!(curl(&["-o", "/dev/null", "-w", "%{http_code}", &c.http_url("/hello.txt")]).stdout, "404");
    let tftp = curl(&["--interface", "127.0.0.2", &format!("tftp://{}/boot.bin", c.tftp.unwrap())]);
    assert_eq!(tftp.stdout, "boot", "{}", tftp.stderr);
    assert_eq!(curl(&["-o", "/dev/null", "-w", "%{http_code}", &format!("http://{}/api/v1/version", c.api.unwrap())]).stdout, "200");
    c.signal("TERM");
    assert!(c.wait_exit(Duration::from_secs(30)).is_some());
    let log = c.stderr_to_end(Duration::from_secs(10));
    let lines: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {l:?}"))).collect();
    let access: Vec<&serde_json::Value> = lines.iter().filter(|v| v["target"] == "citron::access").collect();
    let find = |protocol: &str, path: &str, outcome: &str| {
        access
            .iter()
            .find(|v| v["protocol"] == protocol && v["path"] == path && v["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no {protocol} {path} {outcome} line in:\n{log}"))
    };
    let served = find("http", "/hello.txt", "served");
    assert_eq!(
        (&served["peer"], &served["dut"], &served["bytes"], &served["level"]),
        (&"127.0.0.2".into(), &"dut1".into(), &5.into(), &"INFO".into())
    );
    assert!(served["duration_ms"].as_f64().is_some(), "{served}");
    assert!(find("http", "/nope", "refused")["reason"].as_str().unwrap().contains("nope"), "{log}");
    let stranger = find("http", "/hello.txt", "refused");
    assert_eq!((&stranger["peer"], stranger.get("dut")), (&"127.0.0.1".into(), None), "{stranger}");
    assert_eq!(find("tftp", "boot.bin", "served")["bytes"], 4, "{log}");
    assert_eq!(find("api", "/api/v1/version", "served")["status"], 200, "{log}");
    // One line per request: the served HTTP read is not logged twice.
    assert_eq!(access.iter().filter(|v| v["path"] == "/hello.txt" && v["outcome"] == "served").count(), 1, "{log}");
    assert!(!log.contains("\u{1b}["), "no colour codes off a terminal");
}

/// `Type=notify`: citron tells $NOTIFY_SOCKET READY=1 once its jobs are loaded.
#[test]
fn serve_sends_ready_to_the_notify_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let job = write_job(dir.path(), "deployment:\n  start:\n    storage:\n      http:\n        - path: a\n          data: a\n");
    let mut c = Citron::spawn_with(&["--tftp", "off", "--nbd", "off", "--job", &format!("dut1={job}")], |cmd| {
        cmd.env("NOTIFY_SOCKET", &sock_path);
    });
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).unwrap_or_else(|e| panic!("no notification ({e}): {}", c.stderr_so_far()));
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    // READY=1 comes once the listening line (jobs loaded) is out.
    assert!(c.wait_listening(Duration::from_secs(10)));
    c.signal("TERM");
    let n = sock.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "STOPPING=1"));
    assert!(c.wait_exit(Duration::from_secs(30)).is_some_and(|s| s.success()));
}

/// Every serve flag has an environment variable, and addresses may name a host.
#[test]
fn serve_flags_come_from_the_environment_and_take_host_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(citron_bin())
        .arg("serve")
        .env("CITRON_HTTP", "localhost:0")
        .env("CITRON_TFTP", "off")
        .env("CITRON_NBD", "off")
        .env("CITRON_API", "off")
        .env("CITRON_DATA", dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("citron: listening http=127.0.0.1:") && line.contains("tftp=off nbd=off api=off"), "{line}");
    assert!(dir.path().join("data/cache").is_dir(), "CITRON_DATA was used");
}

/// `citron completions bash` is a script bash loads; `citron man` is a roff man page.
#[test]
fn completions_load_in_bash_and_the_man_page_is_roff() {
    let bin = citron_bin();
    let script = format!("source <('{}' completions bash) && complete -p citron", bin.display());
    let o = run("bash", &["-c", &script], None, Duration::from_secs(30));
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("citron"), "{}", o.stdout);
    let man = run(&bin, &["man"], None, Duration::from_secs(30));
    assert_eq!(man.code, 0, "{}", man.stderr);
    assert!(man.stdout.starts_with(".ie") || man.stdout.contains(".TH citron"), "{}", man.stdout);
    assert!(man.stdout.contains("serve"), "subcommands listed");
}

/// The systemd unit is `Type=notify`, hardened, and valid for `systemd-analyze verify` (with
/// its `ExecStart` pointed at the binary under test).
#[test]
fn the_systemd_unit_verifies() {
    if !require_tool("systemd-analyze") {
        return;
    }
    let unit = std::fs::read_to_string(workspace_root().join("dist/citron.service")).unwrap();
    for want in ["Type=notify", "NoNewPrivileges=yes", "ProtectSystem=strict", "DynamicUser=yes", "CITRON_DATA="] {
        assert!(unit.contains(want), "{want} missing from the unit");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("citron.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/citron", &citron_bin().display().to_string())).unwrap();
    let o = run("systemd-analyze", &["verify", "--man=no", path.to_str().unwrap()], None, Duration::from_secs(60));
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert!(!o.stderr.contains("citron.service"), "warnings: {}", o.stderr);
}

/// The Dockerfile passes hadolint; with a container runtime and a release build, the image
/// builds from the Debian-packages root filesystem and runs citron.
#[test]
fn the_dockerfile_lints_and_builds_where_a_runtime_is() {
    if !require_tool("hadolint") {
        return;
    }
    let root = workspace_root();
    let o = run("hadolint", &[root.join("dist/Dockerfile").to_str().unwrap()], None, Duration::from_secs(60));
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    let release = root.join("target/release/citron");
    let answers = |rt: &str| Command::new(rt).arg("info").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    let runtime = ["docker", "podman"].into_iter().find(|rt| answers(rt));
    let (Some(rt), true) = (runtime, release.exists()) else {
        eprintln!("SKIPPED: image build (needs a container runtime and target/release/citron)");
        return;
    };
    let mut cmd = Command::new(root.join("scripts/container-rootfs.sh"));
    let st = cmd.env("CITRON_BIN", &release).status().unwrap();
    assert!(st.success());
    let o = run(rt, &["run", "--rm", "citron", "--version"], None, Duration::from_secs(120));
    assert!(o.code == 0 && o.stdout.starts_with("citron "), "{}{}", o.stdout, o.stderr);
}

/// `citron validate examples/*.yaml` recognises the lab file and checks it as one; `--lab`
/// alone checks a lab file; `-` reads a job from standard input; `--dut` picks the DUT; an
/// unknown template variable gets a did-you-mean.
#[test]
fn validate_tells_lab_files_from_jobs_and_reads_stdin() {
    let root = workspace_root();
    let t = Duration::from_secs(60);
    let o = run(citron_bin(), &["validate", "examples/lab.yaml", "examples/job-hello.yaml"], Some(&root), t);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stderr.contains("examples/lab.yaml: a lab file, not a job") && o.stderr.contains("--lab"), "{}", o.stderr);
    assert!(!o.stderr.contains("unknown field `duts`"), "{}", o.stderr);
    let o = run(citron_bin(), &["validate", "--lab", "examples/lab.yaml"], Some(&root), t);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let dir = tempfile::tempdir().unwrap();
    let bad_lab = dir.path().join("lab.yaml");
    std::fs::write(&bad_lab, "duts:\n  - id: a\n    ipp: [10.0.0.2]\n").unwrap();
    let o = run(citron_bin(), &["validate", "--lab", bad_lab.to_str().unwrap()], None, t);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("lab.yaml:3:5"), "{}", o.stderr);
    let o = run(citron_bin(), &["validate", "--lab", "examples/lab.yaml", "--dut", "nope", "examples/job-hello.yaml"], Some(&root), t);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("dut1, dut2"), "{}", o.stderr);
    let mut child =
        Command::new(citron_bin()).args(["validate", "--dut", "dut2", "-"]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"deployment:\n  start:\n    cmdline: [\"m={{ machine_di }}\"]\n").unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.starts_with("<stdin>:3:") && err.contains("did you mean `machine_id`?"), "{err}");
    assert_eq!(err.lines().count(), 1, "said once: {err}");
}

/// `render --format json`: one JSON document, durations as the job writes them (`12h`, not
/// `43200s`).
#[test]
fn render_json_shows_durations_as_written() {
    let root = workspace_root();
    let args = ["render", "examples/job-rpi.yaml", "--lab", "examples/lab.yaml", "--dut", "rpi1", "--format", "json"];
    let o = run(citron_bin(), &args, Some(&root), Duration::from_secs(60));
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", o.stdout));
    assert_eq!((&v["dut"], &v["machine_id"]), (&"rpi1".into(), &"rpi-kitchen".into()));
    let token = v["steps"][0]["artifacts"].as_array().unwrap().iter().find(|a| a["path"] == "job/token").expect("job/token listed");
    assert_eq!(token["lifetime"]["expiration"], "12h", "{token}");
    assert_eq!(token["url"], "http://127.0.0.1:8080/job/token");
    assert_eq!(v["steps"][1]["step"], "continue");
}
