//! Two `citron serve` gateways sharing one S3 bucket (moto's server, started here) as the lab's
//! artifact store (`store:` in the lab file): what one fetched from the origin the other serves
//! without asking the origin again (a loopback origin started here counts its requests), and a
//! corrupted object in the bucket is refused by digest and fetched from the origin again.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use citron_core::Digest;
use citron_tests::{curl, require_tool, Citron, START_TIMEOUT};

const KERNEL: &[u8] = b"a kernel fetched once for the whole lab\n";

/// moto's S3 server on a free loopback port, killed (by its PID) when dropped.
pub(super) struct Moto {
    child: Child,
    pub(super) endpoint: String,
}

/// `moto_server` on PATH, or in the venv scripts/setup-python.sh falls back to.
fn moto_program() -> Option<PathBuf> {
    let venv = std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share/citron-venv/bin/moto_server"));
    if let Some(v) = venv.filter(|v| v.is_file()) {
        return Some(v);
    }
    require_tool("moto_server").then(|| PathBuf::from("moto_server"))
}

impl Moto {
    pub(super) fn start() -> Option<Moto> {
        let program = moto_program()?;
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let endpoint = format!("http://127.0.0.1:{port}");
        let moto = Moto { child, endpoint };
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        while curl(&["-o", "/dev/null", &format!("{}/moto-api/", moto.endpoint)]).code != 0 {
            assert!(std::time::Instant::now() < deadline, "moto_server did not answer on {}", moto.endpoint);
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(moto)
    }

    pub(super) fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.endpoint)
    }

    /// curl with `args`, signed as an S3 client (moto keeps objects private).
    pub(super) fn curl(&self, args: &[&str]) -> citron_tests::Out {
        let mut a = vec!["-f", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", "testing:testing"];
        a.extend_from_slice(args);
        curl(&a)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback HTTP origin serving `KERNEL` at every path, counting the requests it answers.
struct Origin {
    port: u16,
    hits: Arc<AtomicUsize>,
}

impl Origin {
    fn start() -> Origin {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                // The request head, up to its empty line.
                while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                h.fetch_add(1, Ordering::SeqCst);
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", KERNEL.len());
                let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(KERNEL));
            }
        });
        Origin { port, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// What a curl that must succeed printed.
fn curl_ok(o: citron_tests::Out) -> String {
    assert_eq!(o.code, 0, "curl failed: {}", o.stderr);
    o.stdout
}

fn get_as(ip: &str, url: &str) -> (u16, String) {
    let o = curl(&["--interface", ip, "-w", "\n%{http_code}", url]);
    let (b, code) = o.stdout.rsplit_once('\n').unwrap_or(("", &o.stdout));
    (code.trim().parse().unwrap_or(0), b.to_string())
}

/// A gateway of the lab: its own data directory (and SQLite state), the shared bucket's
/// credentials in its environment, as object_store reads them.
fn gateway(lab: &Path, data: &Path) -> Citron {
    let args = ["--lab", lab.to_str().unwrap(), "--data", data.to_str().unwrap(), "--tftp", "off", "--nbd", "off"];
    Citron::start_with(&args, |c| {
        c.env("AWS_ACCESS_KEY_ID", "testing").env("AWS_SECRET_ACCESS_KEY", "testing").env_remove("AWS_ENDPOINT_URL");
    })
    .unwrap_or_else(|f| panic!("citron serve did not start ({:?}):\n{}", f.status, f.stderr))
}

#[test]
fn an_artifact_fetched_by_one_gateway_is_served_by_another_without_a_second_origin_fetch() {
    if !require_tool("curl") {
        return;
    }
    let Some(moto) = Moto::start() else { return };
    assert_eq!(moto.curl(&["-X", "PUT", &moto.url("lab-cache")]).code, 0, "create the bucket");
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let lab = dir.path().join("lab.yaml");
    let lab_text = format!(
        "duts:\n  - id: dut1\n    ip: [127.0.0.2]\nstore:\n  url: s3://lab-cache/rack\n  endpoint: {}\n  region: us-east-1\n",
        moto.endpoint
    );
    std::fs::write(&lab, lab_text).unwrap();
    let d = Digest::of(KERNEL);
    let job = format!(
        "deployment:\n  start:\n    storage:\n      http:\n        - path: /kernel\n          url: http://127.0.0.1:{}/kernel\n          sha256: {}\n",
        origin.port,
        d.hex()
    );
    let kernel = String::from_utf8(KERNEL.to_vec()).unwrap();

    // Gateway A fetches from the origin, serves it, and leaves it in the bucket.
    let a = gateway(&lab, &dir.path().join("a"));
    let (code, body) = a.put_job("dut1", &job);
    assert_eq!(code, 200, "{body}");
    assert_eq!(origin.hits(), 1);
    assert_eq!(get_as("127.0.0.2", &a.http_url("/kernel")), (200, kernel.clone()));

    // Gateway B (another data directory): the same job is served with no second origin fetch.
    let b = gateway(&lab, &dir.path().join("b"));
    let (code, body) = b.put_job("dut1", &job);
    assert_eq!(code, 200, "{body}");
    assert_eq!(get_as("127.0.0.2", &b.http_url("/kernel")), (200, kernel.clone()));
    assert_eq!(origin.hits(), 1, "B took the artifact from the shared store");

    // The bucket's copy corrupted behind the lab's back: refused by digest, the origin is asked
    // again by the next gateway, which serves the right bytes and repairs the copy.
    let object = moto.url(&format!("lab-cache/rack/inputs/sha256/{}", d.hex()));
    let mut bad = KERNEL.to_vec();
    bad[0] ^= 1;
    let bad_file = dir.path().join("bad");
    std::fs::write(&bad_file, &bad).unwrap();
    assert_eq!(curl_ok(moto.curl(&["-T", bad_file.to_str().unwrap(), &object])), "");
    assert_eq!(curl_ok(moto.curl(&[&object])).as_bytes(), bad, "the bucket now holds the corrupted copy");
    let c = gateway(&lab, &dir.path().join("c"));
    let (code, body) = c.put_job("dut1", &job);
    assert_eq!(code, 200, "{body}");
    assert_eq!(get_as("127.0.0.2", &c.http_url("/kernel")), (200, kernel.clone()));
    assert_eq!(origin.hits(), 2, "the corrupted copy was refused and the origin fetched");
    assert_eq!(curl_ok(moto.curl(&[&object])).as_bytes(), KERNEL, "the bucket's copy was replaced");
}
