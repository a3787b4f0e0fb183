//! `citron serve` with a YAML job holding an NBD disk, driven by libnbd (Python bindings) over
//! sockets pre-bound to each DUT's source address, since libnbd URIs cannot choose one.

use std::time::Duration;

use citron_tests::{run, strict, Citron};

const JOB: &str = "deployment:\n  start:\n    storage:\n      nbd:\n        - name: scratch\n          raw:\n            size: 4M\n          reset_on: boot\n";

/// Connects from `src` to export `scratch`; writes, flushes and reads back, or prints `refused`.
const CLIENT: &str = r#"
import socket, sys, nbd
host, port, src = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket()
s.bind((src, 0))
s.connect((host, port))
h = nbd.NBD()
h.set_export_name("scratch")
try:
    h.connect_socket(s.detach())
except nbd.Error as e:
    print("refused:", e)
    sys.exit(0)
print("size", h.get_size())
h.pwrite(b"e2e!", 1024)
h.flush()
assert h.pread(4, 1024) == b"e2e!"
print("ok")
"#;

fn have_libnbd_python() -> bool {
    let ok = run("/usr/bin/python3", &["-c", "import nbd"], None, Duration::from_secs(20)).code == 0;
    if !ok {
        assert!(!strict(), "python3-libnbd is missing and CITRON_E2E_STRICT=1; run scripts/setup-debian.sh");
        eprintln!("skipping: python3-libnbd is not installed");
    }
    ok
}

#[test]
fn binary_serves_a_yaml_disk_to_its_dut_only() {
    if !have_libnbd_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.yaml");
    std::fs::write(&job, JOB).unwrap();
    let c = Citron::start(&["--job", &format!("dut1={}", job.display())]);
    let nbd = c.nbd.expect("citron serve reports its NBD address");
    let (host, port) = (nbd.ip().to_string(), nbd.port().to_string());
    let client = |src: &str| run("/usr/bin/python3", &["-c", CLIENT, &host, &port, src], None, Duration::from_secs(30));
    let own = client("127.0.0.2");
    assert_eq!(own.code, 0, "{}{}", own.stdout, own.stderr);
    assert!(own.stdout.contains("size 4194304") && own.stdout.contains("ok"), "{}", own.stdout);
    let other = client("127.0.0.3");
    assert_eq!(other.code, 0, "{}{}", other.stdout, other.stderr);
    assert!(other.stdout.contains("refused"), "dut2 opened dut1's disk: {}", other.stdout);
}
