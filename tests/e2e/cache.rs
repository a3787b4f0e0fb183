//! The artifact cache of the real binary against hostile jobs, with curl: a digest alone reads
//! no other job's content, and downloads run with bounded concurrency (a python3 http.server
//! started here, by PID, counts the requests it serves at once).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use citron_core::Digest;
use citron_tests::{curl, require_tool, Citron};

fn get_as(ip: &str, url: &str) -> (u16, String) {
    let o = curl(&["--interface", ip, "-w", "\n%{http_code}", url]);
    let (b, code) = o.stdout.rsplit_once('\n').unwrap_or(("", &o.stdout));
    (code.trim().parse().unwrap_or(0), b.to_string())
}

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn job(path: &str, source: &str, sha256: Option<&Digest>) -> String {
    let mut j = format!("deployment:\n  start:\n    storage:\n      http:\n        - path: {path}\n          {source}\n");
    if let Some(d) = sha256 {
        j.push_str(&format!("          sha256: {}\n", d.hex()));
    }
    j
}

/// Job A (dut1, 127.0.0.2) holds an inline secret; job B (dut2, 127.0.0.3) names A's sha256
/// with a URL on a closed port. B's load must fail (the URL is fetched, not the cache read) and
/// B's DUT must not get A's bytes. Before the fix, B's load succeeded and its DUT read A's secret.
#[test]
fn a_digest_alone_does_not_read_another_jobs_inline_secret() {
    if !require_tool("curl") {
        return;
    }
    let c = Citron::start(&["--tftp", "off", "--nbd", "off"]);
    let secret = "job A's inline secret: 7f3c-not-for-dut2";
    let d = Digest::of(secret.as_bytes());
    let (code, body) = c.put_job("dut1", &job("/secret", &format!("data: \"{secret}\""), None));
    assert_eq!(code, 200, "{body}");
    assert_eq!(get_as("127.0.0.2", &c.http_url("/secret")), (200, secret.to_string()));

    let port = closed_port();
    let b = job("/secret", &format!("url: http://127.0.0.1:{port}/x"), Some(&d));
    let (code, body) = c.put_job("dut2", &b);
    assert_eq!(code, 502, "B's load must fail, not hit A's cache entry: {body}");
    assert!(body.contains("connection refused") && body.contains(&format!("127.0.0.1:{port}")), "a clear error: {body}");
    let (code, body) = get_as("127.0.0.3", &c.http_url("/secret"));
    assert_ne!(code, 200);
    assert!(!body.contains("7f3c"), "dut2 got A's secret: {body}");
    // A still has its file.
    assert_eq!(get_as("127.0.0.2", &c.http_url("/secret")), (200, secret.to_string()));
}

/// The same with a `file:` secret: job A is the admin's (`serve --job`, its directory is an
/// allowed root); job B comes through the API, whose roots do not include that directory.
/// Neither the path (refused at render) nor A's digest with a dead URL gets B the file.
#[test]
fn a_digest_alone_does_not_read_a_file_outside_the_jobs_roots() {
    if !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = "a key only the admin's job may read\n";
    let d = Digest::of(secret.as_bytes());
    std::fs::write(dir.path().join("key.pem"), secret).unwrap();
    let job_a = dir.path().join("job-a.yaml");
    std::fs::write(&job_a, job("/key.pem", "file: key.pem", None)).unwrap();
    let arg = format!("dut1={}", job_a.display());
    let c = Citron::start(&["--tftp", "off", "--nbd", "off", "--job", &arg]);
    assert_eq!(get_as("127.0.0.2", &c.http_url("/key.pem")), (200, secret.to_string()));

    let path = std::fs::canonicalize(dir.path().join("key.pem")).unwrap();
    let (code, body) = c.put_job("dut2", &job("/key.pem", &format!("file: {}", path.display()), Some(&d)));
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("outside the allowed artifact roots"), "{body}");
    let b = job("/key.pem", &format!("url: http://127.0.0.1:{}/key.pem", closed_port()), Some(&d));
    let (code, body) = c.put_job("dut2", &b);
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("connection refused"), "{body}");
    let (code, body) = get_as("127.0.0.3", &c.http_url("/key.pem"));
    assert!(code != 200 && !body.contains("admin's job"), "dut2 got A's file: {code} {body}");
}

/// A python3 http.server on 127.0.0.1 that holds each request 150 ms and counts how many it
/// serves at once, overall and per first path segment (`/a/…`, `/b/…`); `/stats` answers the
/// maxima. Killed (by PID) when dropped.
struct CountingServer {
    child: Child,
    port: u16,
}

const COUNTING_SERVER: &str = r#"
import http.server, json, sys, threading, time
lock = threading.Lock()
now = {}; peak = {}
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        if self.path == "/stats":
            body = json.dumps(peak).encode()
        else:
            keys = ["all", self.path.split("/")[1]]
            with lock:
                for k in keys:
                    now[k] = now.get(k, 0) + 1
                    peak[k] = max(peak.get(k, 0), now[k])
            time.sleep(0.15)
            with lock:
                for k in keys:
                    now[k] -= 1
            body = self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

impl CountingServer {
    fn start() -> CountingServer {
        let mut child = Command::new("python3")
            .args(["-c", COUNTING_SERVER])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| panic!("the counting server printed {line:?}"));
        CountingServer { child, port }
    }

    fn peaks(&self) -> serde_json::Value {
        let o = curl(&[&format!("http://127.0.0.1:{}/stats", self.port)]);
        serde_json::from_str(&o.stdout).unwrap()
    }
}

impl Drop for CountingServer {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

/// Two jobs of 12 URLs each, loaded at once, with `downloads_per_job: 2` and
/// `downloads_in_flight: 3`: the server never sees more than 3 requests at once, nor more than
/// 2 of one job. Before the bound, each job opened all 12 at once.
#[test]
fn downloads_run_with_bounded_concurrency() {
    if !require_tool("curl") || !require_tool("python3") {
        return;
    }
    let srv = CountingServer::start();
    let dir = tempfile::tempdir().unwrap();
    let lab = dir.path().join("lab.yaml");
    std::fs::write(
        &lab,
        "duts:\n  - {id: dut1, mac: \"52:54:00:00:00:01\", ip: [\"127.0.0.2\"]}\n  - {id: dut2, mac: \"52:54:00:00:00:02\", ip: [\"127.0.0.3\"]}\n\
         limits:\n  downloads_in_flight: 3\n  downloads_per_job: 2\n",
    )
    .unwrap();
    let c = Citron::start(&["--lab", lab.to_str().unwrap(), "--tftp", "off", "--nbd", "off"]);
    let many = |group: &str| {
        let mut j = "deployment:\n  start:\n    storage:\n      http:\n".to_string();
        for i in 0..12 {
            j.push_str(&format!("        - path: /{group}/{i}\n          url: http://127.0.0.1:{}/{group}/{i}\n", srv.port));
        }
        j
    };
    let puts: Vec<_> = [("dut1", "a"), ("dut2", "b")]
        .into_iter()
        .map(|(dut, g)| {
            let (api, body) = (c.api.unwrap(), many(g));
            std::thread::spawn(move || {
                let r = citron_tests::api::call(
                    api,
                    "PUT",
                    &format!("/api/v1/duts/{dut}/job"),
                    &["-H", "Content-Type: application/yaml", "--data-binary", &body],
                );
                (r.status, r.body)
            })
        })
        .collect();
    for p in puts {
        let (code, body) = p.join().unwrap();
        assert_eq!(code, 200, "{body}");
    }
    assert_eq!(get_as("127.0.0.3", &c.http_url("/b/11")), (200, "/b/11".to_string()));
    let peaks = srv.peaks();
    eprintln!("peak concurrent requests: {peaks}");
    assert!(peaks["all"].as_u64().unwrap() <= 3, "{peaks}");
    assert!(peaks["a"].as_u64().unwrap() <= 2 && peaks["b"].as_u64().unwrap() <= 2, "{peaks}");
    assert!(peaks["all"].as_u64().unwrap() >= 2, "downloads do run concurrently: {peaks}");
}
