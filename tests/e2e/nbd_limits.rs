//! The NBD limits of the real binary (issue 12, items 2 and 8), attacked as a hostile job or a
//! hostile client would: absurd disk sizes, reads whose replies are never collected, silent
//! connections, one DUT opening connection after connection. Raw-socket Python speaks the
//! protocol where a well-behaved client would not misbehave; libnbd checks that large reads sent
//! in pieces still read right.

use std::time::{Duration, Instant};

use citron_tests::{require_tool, run, strict, Citron, Out};

/// The system Python (it has python3-libnbd; a pyenv shim on PATH may not).
const PY: &str = "/usr/bin/python3";

const LAB: &str = "duts:\n  - id: dut1\n    ip: [\"127.0.0.2\"]\n  - id: dut2\n    ip: [\"127.0.0.3\"]\n";

/// Python: the client side of the fixed-newstyle handshake over a socket bound to a DUT's
/// address.
const NBD_PY: &str = r#"
import socket, struct, sys, time
IHAVEOPT = 0x49484156454F5054
def exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("closed after %d of %d bytes" % (len(b), n))
        b += c
    return b
def connect(src, port):
    s = socket.socket()
    s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    exact(s, 18)
    s.sendall(struct.pack(">I", 3))  # fixed newstyle, no zeroes
    return s
def option(s, opt, data=b""):
    s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)
    while True:
        h = exact(s, 20)
        kind, ln = struct.unpack(">II", h[12:20])
        body = exact(s, ln)
        if kind == 1 or kind & 0x80000000:
            return kind, body
def go(s, name, structured=False):
    if structured:
        assert option(s, 8)[0] == 1
    data = struct.pack(">I", len(name)) + name.encode() + struct.pack(">H", 0)
    return option(s, 7, data)
def read_request(s, cookie, offset, length):
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, cookie, offset, length))
def rss_kib(pid):
    for l in open("/proc/%d/status" % pid):
        if l.startswith("VmRSS:"):
            return int(l.split()[1])
def settled_rss(pid, seconds=3.0):
    # The largest RSS seen while it settles (bounded in time, no timing assertion).
    end, top = time.time() + seconds, 0
    while time.time() < end:
        top = max(top, rss_kib(pid))
        time.sleep(0.1)
    return top
"#;

fn py(script: &str, args: &[&str]) -> Out {
    let code = format!("{NBD_PY}\n{script}");
    let mut a = vec!["-c", code.as_str()];
    a.extend_from_slice(args);
    run(PY, &a, None, Duration::from_secs(60))
}

fn have_python() -> bool {
    require_tool(PY)
}

fn have_libnbd_python() -> bool {
    let ok = run(PY, &["-c", "import nbd"], None, Duration::from_secs(20)).code == 0;
    if !ok {
        assert!(!strict(), "python3-libnbd is missing and CITRON_E2E_STRICT=1; run scripts/setup-debian.sh");
        eprintln!("skipping: python3-libnbd is not installed");
    }
    ok
}

/// Starts citron with `lab` (LAB plus `extra`) and, if given, `job` for dut1.
fn start(dir: &std::path::Path, extra: &str, job: Option<&str>) -> Citron {
    let lab = dir.join("lab.yaml");
    std::fs::write(&lab, format!("{LAB}{extra}")).unwrap();
    let mut args = vec!["--lab".to_string(), lab.display().to_string()];
    if let Some(j) = job {
        let p = dir.join("job.yaml");
        std::fs::write(&p, j).unwrap();
        args.extend(["--job".to_string(), format!("dut1={}", p.display())]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Citron::start(&args)
}

fn raw_job(size: &str) -> String {
    format!("deployment:\n  start:\n    storage:\n      nbd:\n        - name: disk\n          raw: {{ size: {size} }}\n")
}

fn port(c: &Citron) -> String {
    c.nbd.expect("NBD is on").port().to_string()
}

#[test]
fn oversize_disks_are_refused_at_validation_with_their_position() {
    if !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("huge.yaml");
    std::fs::write(&job, raw_job("16000000T")).unwrap();
    // `citron validate` without a lab: the default limit (4T).
    let o = run(citron_tests::citron_bin(), &["validate", job.to_str().unwrap()], None, Duration::from_secs(30));
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("huge.yaml:6:24: deployment.start.storage.nbd[0].raw.size: a disk of 16000000T is larger"), "{}", o.stderr);
    // A lab's own limit applies to validation too.
    let lab = dir.path().join("lab.yaml");
    std::fs::write(&lab, format!("{LAB}limits:\n  max_disk_size: 1G\n")).unwrap();
    std::fs::write(&job, raw_job("2G")).unwrap();
    let o = run(
        citron_tests::citron_bin(),
        &["validate", "--lab", lab.to_str().unwrap(), job.to_str().unwrap()],
        None,
        Duration::from_secs(30),
    );
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("(1G, `limits.max_disk_size` in the lab file)"), "{}", o.stderr);

    // Through the API: 422 with the position, and the server stays up.
    let c = start(dir.path(), "", None);
    let (code, b) = c.put_job("dut1", &raw_job("16000000T"));
    assert_eq!(code, 422, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    let e = &v["errors"][0];
    assert_eq!((e["line"].as_u64(), e["column"].as_u64()), (Some(6), Some(24)), "{v}");
    assert!(e["message"].as_str().unwrap().contains("max_disk_size"), "{v}");
    let (code, b) = c.put_job("dut1", &raw_job("4T"));
    assert_eq!(code, 200, "{b}");
}

/// A lab that raised `max_disk_size` to the absurd still serves the disk's first NBD_OPT_GO
/// without sizing anything from it (the bitmap index used to be allocated whole and abort the
/// process); a 4 TiB disk written at both ends costs next to nothing.
#[test]
fn huge_disks_cost_no_memory_until_written() {
    if !have_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = start(
        dir.path(),
        "limits:\n  max_disk_size: 16000000T\n",
        Some(&format!("{}        - name: big\n          raw: {{ size: 4T }}\n", raw_job("16000000T"))),
    );
    let script = r#"
pid, port = int(sys.argv[1]), int(sys.argv[2])
before = rss_kib(pid)
# The absurd one: opened or refused, but the server lives.
s = connect("127.0.0.2", port)
kind, body = go(s, "disk")
print("huge:", hex(kind), body[-200:])
s.close()
s = connect("127.0.0.2", port)
kind, _ = go(s, "big")
assert kind == 1, hex(kind)
size = 4 << 40
for cookie, off in enumerate([0, size - 4096, 1 << 40]):
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, cookie, off, 4096) + b"\x5a" * 4096)
    magic, err, ck = struct.unpack(">IIQ", exact(s, 16))
    assert err == 0, err
for cookie, off in enumerate([0, size - 4096, 1 << 40, 1 << 39]):
    read_request(s, cookie, off, 4096)
    magic, err, ck = struct.unpack(">IIQ", exact(s, 16))
    data = exact(s, 4096)
    assert err == 0 and data == (b"\x00" * 4096 if off == 1 << 39 else b"\x5a" * 4096), (off, err)
print("growth_kib", settled_rss(pid, 1.0) - before)
"#;
    let o = py(script, &[&c.pid().to_string(), &port(&c)]);
    assert_eq!(o.code, 0, "{}{}\ncitron: {}", o.stdout, o.stderr, c.stderr_so_far());
    eprintln!("{}", o.stdout);
    let growth: i64 = o.stdout.lines().find_map(|l| l.strip_prefix("growth_kib ")).unwrap().trim().parse().unwrap();
    assert!(growth < 16 * 1024, "RSS grew by {growth} KiB for two huge disks: {}", o.stdout);
    assert!(c.api.is_some());
}

/// Clients that send 32 MiB READs and never read a byte of the replies: each connection holds at
/// most `nbd_bytes_in_flight` (8 MiB by default), simple and structured replies alike.
#[test]
fn uncollected_read_replies_hold_at_most_the_budget() {
    if !have_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path(), "", Some(&raw_job("256M")));
    let script = r#"
pid, port = int(sys.argv[1]), int(sys.argv[2])
before = settled_rss(pid, 0.5)
conns = []
for i in range(4):
    s = connect("127.0.0.2", port)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    kind, _ = go(s, "disk", structured=(i % 2 == 1))
    assert kind == 1, hex(kind)
    for cookie in range(8):
        read_request(s, cookie, cookie * (32 << 20), 32 << 20)
    conns.append(s)
print("growth_kib", settled_rss(pid, 3.0) - before)
"#;
    let o = py(script, &[&c.pid().to_string(), &port(&c)]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    eprintln!("{}", o.stdout);
    let growth: i64 = o.stdout.lines().find_map(|l| l.strip_prefix("growth_kib ")).unwrap().trim().parse().unwrap();
    // 4 connections × 8 MiB budget, and room for the allocator; before: 4 × 8 × 32 MiB.
    assert!(growth < 64 * 1024, "RSS grew by {growth} KiB for 4 connections that never read");
}

/// Reads larger than the budget arrive whole and right through libnbd, with structured replies
/// (several data chunks) and simple ones (one header, the data in pieces); a 32 MiB write too.
#[test]
fn large_reads_in_pieces_read_right() {
    if !have_libnbd_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path(), "limits:\n  nbd_bytes_in_flight: 1M\n", Some(&raw_job("64M")));
    let script = r#"
import nbd, hashlib
port = int(sys.argv[1])
data = bytes((i * 7 + i // 4099) % 251 for i in range(32 << 20))
for structured in (True, False):
    s = socket.socket(); s.bind(("127.0.0.2", 0)); s.connect(("127.0.0.1", port))
    h = nbd.NBD()
    h.set_export_name("disk")
    h.set_request_structured_replies(structured)
    h.connect_socket(s.detach())
    assert h.get_structured_replies_negotiated() == structured
    h.pwrite(data, 4096 + 3)
    h.flush()
    got = h.pread(32 << 20, 4096 + 3)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), structured
    # Several large reads in flight at once, and small ones between them.
    bufs = [nbd.Buffer(5 << 20) for _ in range(4)]
    cookies = [h.aio_pread(b, 4096 + 3 + i * (5 << 20)) for i, b in enumerate(bufs)]
    assert h.pread(10, 4096 + 3) == data[:10]
    for ck in cookies:
        while not h.aio_command_completed(ck):
            h.poll(-1)
    for i, b in enumerate(bufs):
        assert b.to_bytearray() == data[i * (5 << 20):(i + 1) * (5 << 20)], i
    h.shutdown()
print("ok")
"#;
    let o = py(script, &[&port(&c)]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert!(o.stdout.contains("ok"));
}

/// Connections that never finish negotiating are closed after `header_timeout`; transmission
/// connections without requests after `nbd_idle_timeout`.
#[test]
fn silent_connections_are_closed() {
    if !have_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path(), "limits:\n  header_timeout: 1s\n  nbd_idle_timeout: 2s\n", Some(&raw_job("4M")));
    let script = r#"
port = int(sys.argv[1])
def closed_within(s, seconds):
    s.settimeout(seconds)
    try:
        return s.recv(1) == b""
    except socket.timeout:
        return False
    except ConnectionResetError:
        return True
# Silent before the greeting's answer, and silent halfway through an option.
a = socket.socket(); a.bind(("127.0.0.9", 0)); a.connect(("127.0.0.1", port)); exact(a, 18)
b = connect("127.0.0.2", port); b.sendall(struct.pack(">QI", IHAVEOPT, 7))
# Negotiated, then nothing.
d = connect("127.0.0.2", port); assert go(d, "disk")[0] == 1
print("silent", closed_within(a, 20), "half-option", closed_within(b, 20), "idle", closed_within(d, 20))
"#;
    let started = Instant::now();
    let o = py(script, &[&port(&c)]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert!(o.stdout.contains("silent True half-option True idle True"), "{} (after {:?})", o.stdout, started.elapsed());
}

/// A DUT may hold `nbd_connections_per_dut` exports open; more are refused with
/// `NBD_REP_ERR_POLICY` (or closed, for `NBD_OPT_EXPORT_NAME`), logged once; other DUTs and later
/// connections are not affected.
#[test]
fn connections_per_dut_are_capped() {
    if !have_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let job =
        "deployment:\n  start:\n    storage:\n      nbd:\n        - name: disk\n          raw: { size: 4M }\n          shared: true\n";
    let c = start(dir.path(), "limits:\n  nbd_connections_per_dut: 2\n", Some(job));
    let script = r#"
port = int(sys.argv[1])
held = [connect("127.0.0.2", port) for _ in range(2)]
for s in held:
    assert go(s, "disk")[0] == 1
refused = []
for _ in range(5):
    s = connect("127.0.0.2", port)
    kind, msg = go(s, "disk")
    refused.append(hex(kind))
    s.close()
# NBD_OPT_EXPORT_NAME has no error reply: the connection is closed.
s = connect("127.0.0.2", port)
s.sendall(struct.pack(">QII", IHAVEOPT, 1, 4) + b"disk")
s.settimeout(20)
print("export_name_closed", s.recv(1) == b"")
other = connect("127.0.0.3", port)
print("other_dut", hex(go(other, "disk")[0]))
held.pop().close()
time.sleep(0.5)
again = connect("127.0.0.2", port)
print("after_close", hex(go(again, "disk")[0]))
print("refused", " ".join(refused), msg.decode())
"#;
    let o = py(script, &[&port(&c)]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert!(o.stdout.contains("refused 0x80000002 0x80000002 0x80000002 0x80000002 0x80000002 too many NBD connections"), "{}", o.stdout);
    assert!(o.stdout.contains("export_name_closed True"), "{}", o.stdout);
    assert!(o.stdout.contains("other_dut 0x1"), "{}", o.stdout);
    assert!(o.stdout.contains("after_close 0x1"), "{}", o.stdout);
    let log = c.stderr_so_far();
    assert_eq!(log.matches("NBD connections per DUT reached").count(), 1, "logged once per peer:\n{log}");
}
