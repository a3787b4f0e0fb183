//! `citron serve` with a YAML job holding NBD disks, driven by libnbd (Python bindings),
//! `nbdcopy` and `qemu-img` over sockets pre-bound to each DUT's source address, since libnbd
//! URIs (and qemu's) cannot choose one. libnbd scripts get such a socket from `dut_socket`
//! ([`DUT_SOCKET`]); `nbdcopy` and `qemu-img` reach citron through [`Relay`], which opens one
//! `dut_socket` per connection they make.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use citron_tests::{require_tool, run, strict, Citron};

/// The system Python, which has python3-libnbd (a pyenv shim on PATH may not).
const PY: &str = "/usr/bin/python3";

/// How long a helper process may take to say it is ready, or a client to finish.
const WAIT: Duration = Duration::from_secs(60);

/// Python: a TCP connection to citron from a DUT's source address, for `h.connect_socket`.
const DUT_SOCKET: &str = r#"
import socket
def dut_socket(src, host, port):
    s = socket.socket()
    s.bind((src, 0))
    s.connect((host, port))
    return s
"#;

/// A Python script that can call `dut_socket`.
fn py(body: &str) -> String {
    format!("{DUT_SOCKET}\n{body}")
}

const JOB: &str = "deployment:\n  start:\n    storage:\n      nbd:\n        - name: scratch\n          raw:\n            size: 4M\n          reset_on: boot\n";

/// Connects from `src` to export `scratch`; writes, flushes and reads back, or prints `refused`.
const CLIENT: &str = r#"
import sys, nbd
host, port, src = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = dut_socket(src, host, port)
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

pub(super) fn have_libnbd_python() -> bool {
    let ok = run(PY, &["-c", "import nbd"], None, Duration::from_secs(20)).code == 0;
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
    let script = py(CLIENT);
    let client = |src: &str| run(PY, &["-c", &script, &host, &port, src], None, Duration::from_secs(30));
    let own = client("127.0.0.2");
    assert_eq!(own.code, 0, "{}{}", own.stdout, own.stderr);
    assert!(own.stdout.contains("size 4194304") && own.stdout.contains("ok"), "{}", own.stdout);
    let other = client("127.0.0.3");
    assert_eq!(other.code, 0, "{}{}", other.stdout, other.stderr);
    assert!(other.stdout.contains("refused"), "dut2 opened dut1's disk: {}", other.stdout);
}

/// The lab of the tests below (the same DUTs as the embedded default lab, but explicit).
const LAB: &str = "duts:\n  - id: dut1\n    mac: \"52:54:00:00:00:01\"\n    ip: [\"127.0.0.2\"]\n  - id: dut2\n    mac: \"52:54:00:00:00:02\"\n    ip: [\"127.0.0.3\"]\nvariables: {}\n";

/// A helper process the test talks to through lines on its stdout; it also exits when its
/// stdin closes (so it never outlives a test that panicked), and is killed when dropped.
struct Helper {
    what: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Helper {
    fn spawn(what: &str, script: &str, args: &[&str]) -> Helper {
        let mut child = Command::new(PY)
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: cannot start {PY}: {e}"));
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().expect("piped stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = err.read(&mut buf) {
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Helper { what: what.to_string(), child, lines, stderr }
    }

    /// The next stdout line, which must start with `prefix` and come within [`WAIT`].
    fn expect_line(&self, prefix: &str) -> String {
        match self.lines.recv_timeout(WAIT) {
            Ok(l) if l.starts_with(prefix) => l,
            other => panic!("{}: expected a line `{prefix}…`, got {other:?}; stderr:\n{}", self.what, self.stderr()),
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Python: exit when stdin closes (the test is gone).
const EXIT_WITH_STDIN: &str = r#"
import os, sys, threading
def _watch():
    sys.stdin.buffer.read()
    os._exit(0)
threading.Thread(target=_watch, daemon=True).start()
"#;

/// Listens on unix socket argv[1] and forwards each connection to citron at argv[2]:argv[3]
/// over its own `dut_socket` from argv[4], byte for byte in both directions.
const RELAY: &str = r#"
import socket, sys, threading
path, host, port, src = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
l = socket.socket(socket.AF_UNIX)
l.bind(path)
l.listen(64)
def pump(a, b):
    try:
        while True:
            d = a.recv(1 << 20)
            if not d:
                break
            b.sendall(d)
    except OSError:
        pass
    try:
        b.shutdown(socket.SHUT_WR)
    except OSError:
        pass
def serve(c):
    try:
        u = dut_socket(src, host, port)
    except OSError as e:
        print("relay: cannot connect:", e, file=sys.stderr, flush=True)
        c.close()
        return
    t = threading.Thread(target=pump, args=(u, c), daemon=True)
    t.start()
    pump(c, u)
    t.join()
    c.close()
    u.close()
print("ready", flush=True)
while True:
    c, _ = l.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// A unix socket on which every NBD connection reaches citron from DUT address `src`.
pub(super) struct Relay {
    sock: std::path::PathBuf,
    _helper: Helper,
}

impl Relay {
    pub(super) fn start(dir: &Path, c: &Citron, src: &str) -> Relay {
        let nbd = c.nbd.expect("citron serve reports its NBD address");
        let sock = dir.join(format!("relay-{src}.sock"));
        let script = py(&format!("{EXIT_WITH_STDIN}\n{RELAY}"));
        let args = [sock.to_str().unwrap(), &nbd.ip().to_string(), &nbd.port().to_string(), src];
        let helper = Helper::spawn(&format!("relay from {src}"), &script, &args);
        helper.expect_line("ready");
        Relay { sock, _helper: helper }
    }

    /// The libnbd / qemu URI of `export` through this relay.
    pub(super) fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.sock.display())
    }
}

/// Deterministic bytes that differ from block to block (xorshift64).
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Asserts `got == want` without printing megabytes.
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {i}: got {:#04x}, want {:#04x}", got[i], want[i]);
    }
}

/// What [`WRITER`] and [`READER`] share: argv[1..4] = citron's host, port and the DUT's source
/// address; `disk(name)` is one libnbd handle per export, connected from that address.
const DISKS: &str = r#"
import sys, nbd
host, port, src = sys.argv[1], int(sys.argv[2]), sys.argv[3]
handles = {}
def disk(name):
    if name not in handles:
        h = nbd.NBD()
        h.set_export_name(name)
        h.connect_socket(dut_socket(src, host, port).detach())
        handles[name] = h
    return handles[name]
CHUNK = 256 * 1024
"#;

/// Connects from argv[3] to citron at argv[1]:argv[2] and performs writes `EXPORT,OFFSET,MODE,FILE`
/// (MODE `flush`: write then NBD_CMD_FLUSH; `fua`: the write carries NBD_CMD_FLAG_FUA and no
/// flush follows). Prints `durable` once every write is acknowledged, then keeps its connections
/// open until stdin closes.
const WRITER: &str = r#"
for name in {op.split(",", 1)[0] for op in sys.argv[4:]}:
    h = disk(name)
    assert h.can_flush() and h.can_fua() and not h.is_read_only(), name
for op in sys.argv[4:]:
    name, off, mode, path = op.split(",", 3)
    h, off, data = disk(name), int(off), open(path, "rb").read()
    for i in range(0, len(data), CHUNK):
        h.pwrite(data[i:i + CHUNK], off + i, nbd.CMD_FLAG_FUA if mode == "fua" else 0)
    if mode == "flush":
        h.flush()
print("durable", flush=True)
sys.stdin.buffer.read()
"#;

/// Connects from argv[3] to citron at argv[1]:argv[2] and performs reads `EXPORT,OFFSET,LEN,FILE`.
const READER: &str = r#"
for op in sys.argv[4:]:
    name, off, n, path = op.split(",", 3)
    h, off, n = disk(name), int(off), int(n)
    with open(path, "wb") as f:
        for i in range(0, n, CHUNK):
            f.write(h.pread(min(CHUNK, n - i), off + i))
print("read")
"#;

/// One region of a disk: what a test wrote there (or zeroes) and reads back.
struct Region {
    export: &'static str,
    offset: u64,
    data: Vec<u8>,
}

/// Reads `regions` from citron `c` as DUT `src` (one libnbd connection per export) and returns
/// what each holds.
fn read_regions(c: &Citron, dir: &Path, src: &str, regions: &[Region]) -> Vec<Vec<u8>> {
    let nbd = c.nbd.expect("citron serve reports its NBD address");
    let mut args = vec![nbd.ip().to_string(), nbd.port().to_string(), src.to_string()];
    let files: Vec<_> = (0..regions.len()).map(|i| dir.join(format!("read-{i}.bin"))).collect();
    for (r, f) in regions.iter().zip(&files) {
        args.push(format!("{},{},{},{}", r.export, r.offset, r.data.len(), f.display()));
    }
    let script = py(&format!("{DISKS}{READER}"));
    let mut a: Vec<&str> = vec!["-c", &script];
    a.extend(args.iter().map(String::as_str));
    let o = run(PY, &a, None, WAIT);
    assert!(o.code == 0 && o.stdout.contains("read"), "reader failed ({}):\n{}{}", o.code, o.stdout, o.stderr);
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

fn post_event(c: &Citron, dut: &str, event: &str) {
    let body = format!("{{\"event\": \"{event}\"}}");
    let r = c.api_json("POST", &format!("/api/v1/duts/{dut}/events"), Some(&body));
    assert_eq!(r.status, 204, "POST {dut} {body}: {r:?}");
}

const PERSIST_JOB: &str = "\
deployment:
  start:
    storage:
      nbd:
        - name: keep
          raw:
            size: 64M
          reset_on: never
        - name: scratch
          raw:
            size: 8M
          reset_on: boot
";

/// A write acknowledged after FLUSH or with FUA survives `kill -9` of citron (with the writer's
/// connections still open) and its restart on the same `--data`; `reset_on: never` keeps it
/// across `boot` events too, `reset_on: boot` keeps it across the restart but not across its
/// own DUT's `boot` (another DUT's boot leaves it alone).
#[test]
fn binary_keeps_flushed_writes_across_kill_9_and_resets_on_boot() {
    if !have_libnbd_python() || !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (lab, job, data) = (dir.path().join("lab.yaml"), dir.path().join("job.yaml"), dir.path().join("data"));
    std::fs::write(&lab, LAB).unwrap();
    std::fs::write(&job, PERSIST_JOB).unwrap();
    let (lab, job, data) = (lab.display().to_string(), format!("dut1={}", job.display()), data.display().to_string());
    let args = ["--lab", lab.as_str(), "--job", job.as_str(), "--data", data.as_str()];

    const M: u64 = 1 << 20;
    // Unaligned offsets and lengths: partial blocks at both ends of every write.
    let keep_flushed = Region { export: "keep", offset: 3 * M + 517, data: pattern(1, M as usize + 123) };
    let keep_fua = Region { export: "keep", offset: 40 * M - 7, data: pattern(2, 64 * 1024 + 1) };
    let keep_tail = Region { export: "keep", offset: 64 * M - 100, data: pattern(3, 100) };
    let scratch = Region { export: "scratch", offset: 3 * 4096 + 1, data: pattern(4, 300 * 1024) };
    let zeroes = |export, offset, len: usize| Region { export, offset, data: vec![0; len] };
    let writes = [(&keep_flushed, "flush"), (&keep_fua, "fua"), (&keep_tail, "fua"), (&scratch, "flush")];

    let c = Citron::start(&args);
    let nbd = c.nbd.expect("citron serve reports its NBD address");
    let mut wargs = vec![nbd.ip().to_string(), nbd.port().to_string(), "127.0.0.2".to_string()];
    for (i, (r, mode)) in writes.iter().enumerate() {
        let f = dir.path().join(format!("write-{i}.bin"));
        std::fs::write(&f, &r.data).unwrap();
        wargs.push(format!("{},{},{mode},{}", r.export, r.offset, f.display()));
    }
    let wargs: Vec<&str> = wargs.iter().map(String::as_str).collect();
    let writer = Helper::spawn("writer", &py(&format!("{DISKS}{WRITER}")), &wargs);
    writer.expect_line("durable");
    // Acknowledged and made durable; now citron dies without any chance to clean up, while the
    // writer still holds its connections.
    let k = run("kill", &["-KILL", &c.pid().to_string()], None, Duration::from_secs(10));
    assert_eq!(k.code, 0, "kill -KILL: {}", k.stderr);
    drop(c); // reaps it
    drop(writer);

    let c = Citron::start(&args);
    let expect = [
        keep_flushed,
        keep_fua,
        keep_tail,
        scratch,
        // Never written: the rest of the blocks the writes touched, and a block far away.
        zeroes("keep", 3 * M, 517),
        zeroes("keep", 20 * M, 64 * 1024),
        zeroes("scratch", 3 * 4096, 1),
    ];
    let check = |c: &Citron, when: &str, scratch_reset: bool| {
        let got = read_regions(c, dir.path(), "127.0.0.2", &expect);
        for (i, (g, r)) in got.iter().zip(&expect).enumerate() {
            let what = format!("{when}: region {i} ({} at {}, {} bytes)", r.export, r.offset, r.data.len());
            if scratch_reset && r.export == "scratch" {
                assert_same(g, &vec![0; r.data.len()], &format!("{what}, reset by boot"));
            } else {
                assert_same(g, &r.data, &what);
            }
        }
    };
    check(&c, "after kill -9 and restart", false);
    post_event(&c, "dut2", "boot");
    check(&c, "after dut2's boot", false);
    post_event(&c, "dut1", "boot");
    check(&c, "after dut1's boot", true);
}

/// A job set through the API is loaded again after `kill -9` and restart, and that is not a job
/// start: its `reset_on: job_start` disk keeps the DUT's flushed writes (a new job resets it).
#[test]
fn binary_keeps_a_stored_jobs_disk_writes_across_kill_9() {
    if !have_libnbd_python() || !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (lab, data) = (dir.path().join("lab.yaml"), dir.path().join("data"));
    std::fs::write(&lab, LAB).unwrap();
    let (lab, data) = (lab.display().to_string(), data.display().to_string());
    let args = ["--lab", lab.as_str(), "--data", data.as_str()];
    let job =
        "deployment:\n  start:\n    storage:\n      nbd:\n        - name: root\n          raw: {size: 8M}\n          reset_on: job_start\n";
    let written = Region { export: "root", offset: 4096 + 3, data: pattern(5, 10_000) };
    let c = Citron::start(&args);
    let (code, body) = c.put_job("dut1", job);
    assert_eq!(code, 200, "{body}");
    let nbd = c.nbd.expect("citron serve reports its NBD address");
    let f = dir.path().join("write.bin");
    std::fs::write(&f, &written.data).unwrap();
    let wargs =
        [nbd.ip().to_string(), nbd.port().to_string(), "127.0.0.2".into(), format!("root,{},flush,{}", written.offset, f.display())];
    let wargs: Vec<&str> = wargs.iter().map(String::as_str).collect();
    let writer = Helper::spawn("writer", &py(&format!("{DISKS}{WRITER}")), &wargs);
    writer.expect_line("durable");
    drop(c); // kill -9
    drop(writer);

    let c = Citron::start(&args);
    let got = read_regions(&c, dir.path(), "127.0.0.2", std::slice::from_ref(&written));
    assert_same(&got[0], &written.data, "the stored job's disk after kill -9 and restart");
    let (code, body) = c.put_job("dut1", job);
    assert_eq!(code, 200, "{body}");
    let got = read_regions(&c, dir.path(), "127.0.0.2", std::slice::from_ref(&written));
    assert_same(&got[0], &vec![0; written.data.len()], "a new job is a job start");
}

/// Python: serves directory argv[1] over HTTP on 127.0.0.1 (a free port, printed), logging each
/// request on stderr.
const HTTP_SERVER: &str = r#"
import functools, http.server, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
print("port", srv.server_address[1], flush=True)
srv.serve_forever()
"#;

/// A `url:` disk is fetched over HTTP (through the artifact cache) and exported as the image: a
/// raw one (checked against its `sha256:`) reads back byte for byte with `nbdcopy`, a qcow2 one
/// is served converted, as `qemu-img compare` against the qcow2 file says.
#[test]
fn binary_exports_url_disks_fetched_over_http() {
    if !have_libnbd_python() || !require_tool("nbdcopy") || !require_tool("qemu-img") || !require_tool("sha256sum") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web");
    std::fs::create_dir(&web).unwrap();
    const M: usize = 1 << 20;
    // Two different images with data and holes (so qcow2 has unallocated clusters).
    let image = |seed: u64| {
        let mut v = vec![0u8; 8 * M];
        v[..M].copy_from_slice(&pattern(seed, M));
        v[3 * M + 4096..4 * M].copy_from_slice(&pattern(seed + 1, M - 4096));
        v[8 * M - 512..].copy_from_slice(&pattern(seed + 2, 512));
        v
    };
    let raw = image(10);
    std::fs::write(web.join("golden.raw"), &raw).unwrap();
    let src2 = dir.path().join("other.raw");
    std::fs::write(&src2, image(20)).unwrap();
    let qcow2 = web.join("golden.qcow2");
    let o = run("qemu-img", &["convert", "-f", "raw", "-O", "qcow2", src2.to_str().unwrap(), qcow2.to_str().unwrap()], None, WAIT);
    assert_eq!(o.code, 0, "qemu-img convert: {}", o.stderr);
    assert_eq!(&std::fs::read(&qcow2).unwrap()[..4], b"QFI\xfb", "qemu-img made a qcow2 file");
    let sum = run("sha256sum", &[web.join("golden.raw").to_str().unwrap()], None, WAIT);
    assert_eq!(sum.code, 0, "sha256sum: {}", sum.stderr);
    let sha = sum.stdout.split_whitespace().next().unwrap().to_string();

    let http = Helper::spawn("http server", &format!("{EXIT_WITH_STDIN}\n{HTTP_SERVER}"), &[web.to_str().unwrap()]);
    let port = http.expect_line("port ").trim_start_matches("port ").to_string();
    let job = format!(
        "deployment:\n  start:\n    storage:\n      nbd:\n        - name: golden\n          url: http://127.0.0.1:{port}/golden.raw\n          sha256: {sha}\n          readonly: true\n        - name: converted\n          url: http://127.0.0.1:{port}/golden.qcow2\n          reset_on: boot\n"
    );
    let (lab_path, job_path) = (dir.path().join("lab.yaml"), dir.path().join("job.yaml"));
    std::fs::write(&lab_path, LAB).unwrap();
    std::fs::write(&job_path, &job).unwrap();
    let c = Citron::start(&["--lab", lab_path.to_str().unwrap(), "--job", &format!("dut1={}", job_path.display())]);
    // citron fetched both images from this server (not from anywhere else).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(http.stderr().contains("GET /golden.raw") && http.stderr().contains("GET /golden.qcow2")) {
        assert!(Instant::now() < deadline, "citron did not fetch both images over HTTP; server log:\n{}", http.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }

    let relay = Relay::start(dir.path(), &c, "127.0.0.2");
    let copy = dir.path().join("copy.raw");
    let o = run("nbdcopy", &[&relay.uri("golden"), copy.to_str().unwrap()], None, WAIT);
    assert_eq!(o.code, 0, "nbdcopy {}: {}{}", relay.uri("golden"), o.stdout, o.stderr);
    assert_same(&std::fs::read(&copy).unwrap(), &raw, "nbdcopy of the raw url: disk");

    let compare = |uri: &str| run("qemu-img", &["compare", "-f", "qcow2", "-F", "raw", qcow2.to_str().unwrap(), uri], None, WAIT);
    let same = compare(&relay.uri("converted"));
    assert_eq!(same.code, 0, "qemu-img compare qcow2 vs {}: {}{}", relay.uri("converted"), same.stdout, same.stderr);
    assert!(same.stdout.contains("Images are identical"), "{}", same.stdout);
    // The comparison can fail: the raw disk is another image.
    let differ = compare(&relay.uri("golden"));
    assert_eq!(differ.code, 1, "qemu-img compare qcow2 vs the other disk: {}{}", differ.stdout, differ.stderr);

    // The relay speaks for dut1 only: from dut2's address the disks are not there.
    let relay2 = Relay::start(dir.path(), &c, "127.0.0.3");
    let o = run("nbdcopy", &[&relay2.uri("golden"), dir.path().join("copy2.raw").to_str().unwrap()], None, WAIT);
    assert_ne!(o.code, 0, "dut2 copied dut1's private disk: {}{}", o.stdout, o.stderr);
}
