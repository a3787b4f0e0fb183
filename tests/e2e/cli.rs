//! The `citron` command line: validate (golden error files), render, serve start-up and shutdown.

use std::time::Duration;

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
        Err(_) => Vec::new(),
    };
    entries.sort();
    for yaml in entries.iter().filter(|p| p.extension().is_some_and(|e| e == "yaml")) {
        let golden = yaml.with_extension("stderr");
        let Ok(want) = std::fs::read_to_string(&golden) else { continue };
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
    assert_eq!(citron_tests::curl_status(&[&c.api_url("/api/v1/duts")]), 200);
    let status = c.terminate(Duration::from_secs(20)).expect("citron exits after SIGTERM");
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
}
