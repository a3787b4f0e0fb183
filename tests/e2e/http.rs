//! The HTTP backend with real curl: DUT namespaces by source address, lifetimes, ranges,
//! conditional requests, traversal attempts and the generated boot script.
//!
//! Each check runs twice: on an in-process server with jobs built in code (`ServerBuilder`, the
//! code `citron serve` runs), which exercises HTTP without depending on the YAML parser, and on
//! the real `citron` binary with YAML jobs (`--job` and `PUT /api/v1/duts/{id}/job`) and the
//! API driven by curl (`binary_*`).

use std::time::Duration;

use bytes::Bytes;
use citron_core::job::{FileSpec, Lifetime, ResolvedJob, Source, Step};
use citron_core::lab::LabConfig;
use citron_core::lifetime::Event;
use citron_core::serve::Space;
use citron_core::Gateway;
use citron_core::{namespace::DutId, Digest};
use citron_lab::server::{RunningServer, ServerBuilder};
use citron_tests::{curl, curl_status, require_tool, workspace_root, Citron};

/// An in-process lab (the default one: dut1 = 127.0.0.2, dut2 = 127.0.0.3) serving HTTP.
struct Lab {
    server: Option<RunningServer>,
    gw: Gateway,
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let gw = citron_fetch::gateway(LabConfig::default_lab(), dir.path()).unwrap();
        let server =
            rt.block_on(ServerBuilder::new(gw.clone()).http(Some("127.0.0.1:0".parse().unwrap())).tftp(None).nbd(None).api(None).start());
        Lab { server: Some(server.unwrap()), gw, rt, _dir: dir }
    }

    fn set(&self, dut: &str, step: Step) {
        let job = ResolvedJob { name: None, results: None, origin: format!("test job for {dut}"), start: step, continue_: None };
        self.rt.block_on(self.gw.set_resolved_job(&DutId::from(dut), job)).unwrap();
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.server.as_ref().unwrap().http_addr().unwrap(), path)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            self.rt.block_on(s.shutdown());
        }
    }
}

fn data(path: &str, bytes: impl Into<Bytes>) -> FileSpec {
    FileSpec { path: path.into(), source: Source::Data(bytes.into()), sha256: None, lifetime: Lifetime::default() }
}

fn http_step(files: Vec<FileSpec>) -> Step {
    Step { files: [(Space::HTTP, files)].into(), ..Step::default() }
}

/// Deterministic incompressible-looking bytes.
fn pattern(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn get_from(ip: &str, url: &str) -> citron_tests::Out {
    curl(&["--interface", ip, "-w", "\n%{http_code}", url])
}

/// `(status, body)` of a GET from `ip`.
fn fetch(ip: &str, url: &str) -> (u16, String) {
    let o = get_from(ip, url);
    let (body, code) = o.stdout.rsplit_once('\n').unwrap_or(("", &o.stdout));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn duts_get_their_own_file_at_the_same_path() {
    if !require_tool("curl") {
        return;
    }
    let lab = Lab::new();
    lab.set("dut1", http_step(vec![data("hello.txt", "dut1's file\n"), data("only1.txt", "private to dut1")]));
    lab.set("dut2", http_step(vec![data("hello.txt", "dut2's file\n")]));
    let u = lab.url("/hello.txt");
    for _ in 0..3 {
        assert_eq!(fetch("127.0.0.2", &u), (200, "dut1's file\n".into()));
        assert_eq!(fetch("127.0.0.3", &u), (200, "dut2's file\n".into()));
    }
    // dut2 cannot see dut1's other file, under any spelling.
    for p in ["/only1.txt", "//only1.txt", "/./only1.txt", "/dut1/only1.txt"] {
        assert_eq!(fetch("127.0.0.3", &lab.url(p)).0, 404, "{p}");
    }
    assert_eq!(fetch("127.0.0.2", &lab.url("/only1.txt")), (200, "private to dut1".into()));
    // An address that belongs to no DUT gets nothing.
    assert_eq!(fetch("127.0.0.9", &u).0, 404);
    // The access log saw the refusal of the unknown peer as "unknown".
    assert!(lab.gw.access_log().request_counts().iter().any(|c| c.dut == "unknown"));
}

#[test]
fn access_count_admits_exactly_one_of_fifty_concurrent_reads_until_boot() {
    if !require_tool("curl") {
        return;
    }
    let lab = Lab::new();
    let mut secret = data("job/secret", "MYSECRET_KEY: s3cr3t");
    secret.lifetime.access_count = Some(1);
    lab.set("dut1", http_step(vec![secret]));
    check_read_once(&lab.url("/job/secret"), "MYSECRET_KEY: s3cr3t", &|| lab.gw.event(&DutId::from("dut1"), Event::Boot).unwrap());
}

/// `secret` is dut1's (127.0.0.2) with `access_count: 1`: looking (HEAD) and a refused range
/// (416) use up nothing; of 50 concurrent reads exactly one succeeds; `boot` resets it; a
/// served range counts as a read.
fn check_read_once(secret: &str, content: &str, boot: &dyn Fn()) {
    let u = secret;
    let head = curl(&["--interface", "127.0.0.2", "-I", "-o", "/dev/null", "-w", "%{http_code}", u]);
    assert_eq!(head.stdout.trim(), "200");
    // Out of range: 416, and the read-once secret is still there.
    let o = curl(&["--interface", "127.0.0.2", "-r", "100000-", "-D", "-", "-o", "/dev/null", u]);
    assert!(o.stdout.starts_with("HTTP/1.1 416"), "{}", o.stdout);
    assert!(o.stdout.to_ascii_lowercase().contains(&format!("content-range: bytes */{}", content.len())), "{}", o.stdout);

    let children: Vec<_> = (0..50)
        .map(|_| {
            std::process::Command::new("curl")
                .args(["-s", "--max-time", "30", "--interface", "127.0.0.2", "-o", "/dev/null", "-w", "%{http_code}", u])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let codes: Vec<String> = children.into_iter().map(|c| String::from_utf8(c.wait_with_output().unwrap().stdout).unwrap()).collect();
    let ok = codes.iter().filter(|c| c.as_str() == "200").count();
    let gone = codes.iter().filter(|c| c.as_str() == "410").count();
    assert_eq!((ok, gone), (1, 49), "{codes:?}");

    assert_eq!(fetch("127.0.0.2", u).0, 410);
    boot();
    // A range that is served is a read.
    let o = curl(&["--interface", "127.0.0.2", "-r", "0-3", "-w", "\n%{http_code}", u]);
    assert_eq!(o.stdout, format!("{}\n206", &content[..4]));
    assert_eq!(fetch("127.0.0.2", u).0, 410);
    boot();
    assert_eq!(fetch("127.0.0.2", u), (200, content.into()));
    assert_eq!(fetch("127.0.0.2", u).0, 410);
}

#[test]
fn ranges_etags_and_methods() {
    if !require_tool("curl") {
        return;
    }
    let lab = Lab::new();
    let big = big_file();
    lab.set("dut1", http_step(vec![data("img/big.bin", big.clone()), data("small.txt", "0123456789")]));
    check_ranges_and_etags(&|p| lab.url(p), &big);
    // The access log: every read of the big file ended as served, with its bytes.
    let log = lab.gw.accesses(&DutId::from("dut1")).unwrap();
    assert!(log.iter().any(|r| r.path == "/img/big.bin" && r.bytes == big.len() as u64), "{log:?}");
}

/// Larger than one streaming chunk and than the inline limit, not a multiple of either.
fn big_file() -> Vec<u8> {
    pattern(3 * 1024 * 1024 + 12345)
}

/// dut1 (127.0.0.2) has `big` at `/img/big.bin` and `0123456789` at `/small.txt`.
fn check_ranges_and_etags(url: &dyn Fn(&str) -> String, big: &[u8]) {
    let digest = Digest::of(big);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let outs = out.to_str().unwrap();
    let u = url("/img/big.bin");
    let dl = |extra: &[&str]| -> (u16, Vec<u8>) {
        let _ = std::fs::remove_file(&out);
        let mut a = vec!["--interface", "127.0.0.2", "-o", outs, "-w", "%{http_code}"];
        a.extend_from_slice(extra);
        a.push(&u);
        let o = curl(&a);
        (o.stdout.trim().parse().unwrap_or(0), std::fs::read(&out).unwrap_or_default())
    };

    let same = |got: (u16, Vec<u8>), want: (u16, &[u8]), what: &str| {
        assert!(got.0 == want.0 && got.1 == want.1, "{what}: {} with {} bytes, want {} with {}", got.0, got.1.len(), want.0, want.1.len());
    };
    same(dl(&[]), (200, big), "whole file");
    same(dl(&["-r", "100-199"]), (206, &big[100..200]), "100-199");
    same(dl(&["-r", "1048000-2100000"]), (206, &big[1048000..2100001]), "across chunks");
    same(dl(&["-r", "-10"]), (206, &big[big.len() - 10..]), "suffix");
    same(dl(&["-r", "3000000-"]), (206, &big[3000000..]), "open-ended");
    // Several ranges: the whole file (allowed, and simpler for clients than multipart).
    same(dl(&["-r", "0-1,5-6"]), (200, big), "several ranges");
    let o = curl(&["--interface", "127.0.0.2", "-r", "999999999-", "-D", "-", "-o", "/dev/null", &u]);
    assert!(o.stdout.starts_with("HTTP/1.1 416"), "{}", o.stdout);
    assert!(o.stdout.to_ascii_lowercase().contains(&format!("content-range: bytes */{}", big.len())), "{}", o.stdout);
    let o = curl(&["--interface", "127.0.0.2", "-r", "10-19", "-D", "-", "-o", "/dev/null", &u]);
    assert!(o.stdout.to_ascii_lowercase().contains(&format!("content-range: bytes 10-19/{}", big.len())), "{}", o.stdout);

    // HEAD: the headers of a GET, no body.
    let h = curl(&["--interface", "127.0.0.2", "-I", &u]).stdout.to_ascii_lowercase();
    let etag = format!("\"{}\"", digest);
    assert!(h.contains(&format!("etag: {etag}")), "{h}");
    assert!(h.contains(&format!("content-length: {}", big.len())), "{h}");
    assert!(h.contains("accept-ranges: bytes"), "{h}");
    assert!(h.contains("content-type: application/octet-stream"), "{h}");
    let st = curl(&["--interface", "127.0.0.2", "-I", &url("/small.txt")]).stdout.to_ascii_lowercase();
    assert!(st.contains("content-type: text/plain"), "{st}");

    // If-None-Match with the digest: 304, no body; another tag: the file.
    let inm = format!("If-None-Match: {etag}");
    same(dl(&["-H", &inm]), (304, &[]), "If-None-Match");
    assert_eq!(dl(&["-H", &inm, "-r", "0-9"]).0, 304, "If-None-Match is checked before Range");
    same(dl(&["-H", "If-None-Match: \"0000\""]), (200, big), "another tag");
    // If-Range with a stale tag: the whole file rather than a part of another version.
    same(dl(&["-r", "0-9", "-H", "If-Range: \"stale\""]), (200, big), "stale If-Range");
    same(dl(&["-r", "0-9", "-H", &format!("If-Range: {etag}")]), (206, &big[..10]), "If-Range");

    // Only GET and HEAD, and PUT for uploads (under `_citron/results/` only: a served file is
    // never written).
    for m in ["POST", "DELETE"] {
        let o = curl(&["--interface", "127.0.0.2", "-X", m, "-D", "-", "-o", "/dev/null", &u]);
        assert!(o.stdout.starts_with("HTTP/1.1 405"), "{m}: {}", o.stdout);
        assert!(o.stdout.to_ascii_lowercase().contains("allow: get, head, put"), "{}", o.stdout);
    }
    let o = curl(&["--interface", "127.0.0.2", "-X", "PUT", "-D", "-", "-o", "/dev/null", &u]);
    assert!(o.stdout.starts_with("HTTP/1.1 403"), "PUT: {}", o.stdout);
    // Keep-alive: several URLs on one connection, small and large, ranged or not.
    let two = curl(&["--interface", "127.0.0.2", "-v", &url("/small.txt"), &url("/small.txt")]);
    assert_eq!(two.stdout, "01234567890123456789");
    assert!(two.stderr.contains("Re-using existing connection") || two.stderr.contains("Reusing existing"), "{}", two.stderr);
    let (o1, o2) = (dir.path().join("k1"), dir.path().join("k2"));
    let (o1s, o2s) = (o1.to_str().unwrap(), o2.to_str().unwrap());
    let o = curl(&["--interface", "127.0.0.2", "-v", "-o", o1s, &u, "--next", "--interface", "127.0.0.2", "-r", "5-14", "-o", o2s, &u]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stderr.contains("Re-using existing connection") || o.stderr.contains("Reusing existing"), "{}", o.stderr);
    let (g1, g2) = (std::fs::read(&o1).unwrap(), std::fs::read(&o2).unwrap());
    assert!(g1 == big, "the whole file, then on the same connection a range: {} bytes", g1.len());
    assert!(g2 == big[5..15], "{g2:?}");
}

#[test]
fn traversal_attempts_stay_inside_the_namespace() {
    if !require_tool("curl") {
        return;
    }
    let lab = Lab::new();
    lab.set("dut1", http_step(vec![data("etc/passwd", "the job's own etc/passwd\n"), data("a/b.txt", "b")]));
    lab.set("dut2", http_step(vec![data("secret.txt", "dut2 only")]));
    check_traversal(&|p| lab.url(p));
}

/// dut1 (127.0.0.2) has `etc/passwd` (`the job's own etc/passwd\n`) and `a/b.txt` (`b`);
/// dut2 (127.0.0.3) has `secret.txt` (`dut2 only`).
fn check_traversal(url: &dyn Fn(&str) -> String) {
    for p in [
        "/../../../../etc/passwd",
        "/a/../../secret.txt",
        "/%2e%2e/%2e%2e/etc/shadow",
        "/%2E%2E/secret.txt",
        "/a/%2e%2e/%2e%2e/secret.txt",
        "/..%2f..%2fetc%2fhostname",
        "/a/b.txt%00.png",
        "/%00",
        "/etc/passwd%00",
        "/a%5cb.txt",
        "/%zz",
    ] {
        let (code, body) = fetch_as_is("127.0.0.2", &url(p));
        assert!(code == 400 || code == 404, "{p}: {code}");
        assert!(!body.contains("root:") && !body.contains("dut2 only"), "{p}: {body}");
    }
    // `//etc/passwd` is a name in the namespace: the job's file, never the host's.
    assert_eq!(fetch_as_is("127.0.0.2", &url("//etc/passwd")), (200, "the job's own etc/passwd\n".into()));
    assert_eq!(fetch_as_is("127.0.0.3", &url("//etc/passwd")).0, 404);
    assert_eq!(fetch_as_is("127.0.0.2", &url("/a/./b.txt")), (200, "b".into()));
    assert_eq!(fetch_as_is("127.0.0.3", &url("/secret.txt")), (200, "dut2 only".into()));
}

fn fetch_as_is(ip: &str, url: &str) -> (u16, String) {
    let o = curl(&["--path-as-is", "--interface", ip, "-w", "\n%{http_code}", url]);
    let (body, code) = o.stdout.rsplit_once('\n').unwrap_or(("", &o.stdout));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The URL on a `kernel`/`initrd` line of an iPXE script.
fn ipxe_url(script: &str, cmd: &str) -> String {
    script
        .lines()
        .find_map(|l| l.strip_prefix(cmd).map(|r| r.split_whitespace().next().unwrap_or("").to_string()))
        .unwrap_or_else(|| panic!("no {cmd} line in:\n{script}"))
}

#[test]
fn generated_boot_script_points_at_fetchable_kernel_and_initrd() {
    if !require_tool("curl") {
        return;
    }
    let lab = Lab::new();
    let kernel = pattern(200_000);
    let step = Step {
        kernel: Some(data("unused-k", kernel.clone())),
        initramfs: Some(data("unused-i", "initramfs bytes")),
        cmdline: Some("console=ttyS0 quiet".into()),
        ..Step::default()
    };
    lab.set("dut1", step);
    for p in ["/boot.ipxe", "/boot/dut1/boot.ipxe"] {
        let (code, script) = fetch("127.0.0.2", &lab.url(p));
        assert_eq!(code, 200, "{p}");
        assert!(script.starts_with("#!ipxe\n"), "{script}");
        let k = ipxe_url(&script, "kernel ");
        let i = ipxe_url(&script, "initrd ");
        assert!(k.starts_with(&lab.url("/")), "absolute URLs back at the server: {k}");
        assert!(script.contains("console=ttyS0 quiet"), "{script}");
        let dir = tempfile::tempdir().unwrap();
        let kout = dir.path().join("k");
        let o = curl(&["--interface", "127.0.0.2", "-f", "-o", kout.to_str().unwrap(), &k]);
        assert_eq!(o.code, 0, "{k}: {}", o.stderr);
        assert_eq!(std::fs::read(&kout).unwrap(), kernel);
        assert_eq!(fetch("127.0.0.2", &i), (200, "initramfs bytes".into()));
        assert_eq!(fetch("127.0.0.2", &lab.url("/boot/dut1/cmdline.txt")), (200, "console=ttyS0 quiet\n".into()));
    }
    // The Host header names the server in generated URLs (how the DUT reached it).
    let o = curl(&["--interface", "127.0.0.2", "-H", "Host: ci-gateway:8080", &lab.url("/boot.ipxe")]);
    assert!(o.stdout.contains("kernel http://ci-gateway:8080/boot/dut1/kernel"), "{}", o.stdout);
    // dut2 has no job: no script.
    assert_eq!(fetch("127.0.0.3", &lab.url("/boot.ipxe")).0, 404);
}

#[test]
fn shutdown_finishes_a_transfer_in_flight_and_stops_listening() {
    if !require_tool("curl") {
        return;
    }
    let mut lab = Lab::new();
    let big = pattern(8 * 1024 * 1024);
    lab.set("dut1", http_step(vec![data("big", big.clone())]));
    let u = lab.url("/big");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    // A slow reader keeps the transfer running while the server shuts down.
    let child = std::process::Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "60",
            "--limit-rate",
            "4M",
            "--interface",
            "127.0.0.2",
            "-o",
            out.to_str().unwrap(),
            "-w",
            "%{http_code}",
            &u,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let server = lab.server.take().unwrap();
    lab.rt.block_on(server.shutdown());
    let o = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "200");
    assert_eq!(std::fs::read(&out).unwrap(), big);
    assert_eq!(curl_status(&["--interface", "127.0.0.2", &u]), 0, "nothing listens any more");
}

/// After the grace period a transfer still running is cut, and `shutdown` leaves no
/// connection task behind: the runtime keeps running here, so a task left over would go on
/// sending until curl had the whole file.
#[test]
fn shutdown_cuts_a_transfer_still_running_after_the_grace_period() {
    if !require_tool("curl") {
        return;
    }
    let mut lab = Lab::new();
    let big = pattern(64 * 1024 * 1024);
    lab.set("dut1", http_step(vec![data("big", big.clone())]));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    // 1 MiB/s: a minute for the whole file, far beyond the grace period.
    let mut child = std::process::Command::new("curl")
        .args(["-s", "--max-time", "120", "--limit-rate", "1M", "--interface", "127.0.0.2", "-o", out.to_str().unwrap(), &lab.url("/big")])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&out).map_or(0, |m| m.len()) == 0 {
        assert!(std::time::Instant::now() < deadline, "curl got no byte");
        std::thread::sleep(Duration::from_millis(20));
    }
    let server = lab.server.take().unwrap();
    lab.rt.block_on(server.shutdown());
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(18), "curl: transfer closed with bytes outstanding");
    let got = std::fs::read(&out).unwrap();
    assert!(got.len() < big.len() && got[..] == big[..got.len()], "{} bytes, a prefix", got.len());
    let log = lab.gw.accesses(&DutId::from("dut1")).unwrap();
    assert!(
        log.iter().any(|r| r.path == "/big" && r.outcome == citron_core::access::Outcome::Aborted && r.bytes < big.len() as u64),
        "{log:?}"
    );
}

const JOB1: &str = "deployment:
  start:
    kernel:
      data: dut1 kernel
    initramfs:
      data: dut1 initramfs
    cmdline: [console=ttyS0, 'machine={{ machine_id }}']
    storage:
      http:
        - path: /hello.txt
          data: \"hello from dut1\"
        - path: /job/secret
          data: \"MYSECRET_KEY: dut1\"
          lifetime:
            access_count: 1
";

const JOB2: &str = "deployment:
  start:
    storage:
      http:
        - path: /hello.txt
          data: \"hello from dut2\"
";

/// The real binary with YAML jobs (needs the job parser).
#[test]
fn binary_serves_yaml_jobs_per_dut() {
    if !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (j1, j2) = (dir.path().join("job1.yaml"), dir.path().join("job2.yaml"));
    std::fs::write(&j1, JOB1).unwrap();
    std::fs::write(&j2, JOB2).unwrap();
    let c = Citron::start(&["--job", &format!("dut1={}", j1.display()), "--job", &format!("dut2={}", j2.display())]);
    let u = c.http_url("/hello.txt");
    assert_eq!(fetch("127.0.0.2", &u), (200, "hello from dut1".into()));
    assert_eq!(fetch("127.0.0.3", &u), (200, "hello from dut2".into()));
    assert_eq!(fetch("127.0.0.9", &u).0, 404);
    assert_eq!(fetch("127.0.0.3", &c.http_url("/job/secret")).0, 404);
    let (code, script) = fetch("127.0.0.2", &c.http_url("/boot/dut1/boot.ipxe"));
    assert_eq!(code, 200);
    assert!(script.contains("console=ttyS0 machine=dut1"), "{script}");
    assert_eq!(fetch("127.0.0.2", &ipxe_url(&script, "kernel ")), (200, "dut1 kernel".into()));
    assert_eq!(fetch("127.0.0.2", &ipxe_url(&script, "initrd ")), (200, "dut1 initramfs".into()));
    // The README's example jobs work as they are.
    let ex = workspace_root().join("examples");
    let c2 = Citron::start(&[
        "--job",
        &format!("dut1={}", ex.join("job-hello.yaml").display()),
        "--job",
        &format!("dut2={}", ex.join("job-other.yaml").display()),
    ]);
    assert_eq!(fetch("127.0.0.2", &c2.http_url("/hello.txt")), (200, "hello from dut1's job\n".into()));
    assert_eq!(fetch("127.0.0.3", &c2.http_url("/hello.txt")), (200, "hello from dut2's job\n".into()));
}

/// dut1's and dut2's jobs for the binary: what the in-process tests build in code, as YAML
/// (`big.bin` is a `file:` next to the job).
const BIN_JOB1: &str = "deployment:
  start:
    storage:
      http:
        - path: /job/secret
          data: \"MYSECRET_KEY: s3cr3t\"
          lifetime:
            access_count: 1
        - path: /img/big.bin
          file: big.bin
        - path: /small.txt
          data: \"0123456789\"
        - path: /etc/passwd
          data: |
            the job's own etc/passwd
        - path: /a/b.txt
          data: b
";

const BIN_JOB2: &str = "deployment:
  start:
    storage:
      http:
        - path: /secret.txt
          data: dut2 only
";

/// The real binary on the default lab with [`BIN_JOB1`] given by `--job` and [`BIN_JOB2`]
/// sent with `PUT /api/v1/duts/dut2/job`.
fn binary_lab(big: &[u8]) -> (Citron, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("big.bin"), big).unwrap();
    let j1 = dir.path().join("job1.yaml");
    std::fs::write(&j1, BIN_JOB1).unwrap();
    let c = Citron::start(&["--tftp", "off", "--nbd", "off", "--job", &format!("dut1={}", j1.display())]);
    let (code, body) = c.put_job("dut2", BIN_JOB2);
    assert_eq!(code, 200, "{body}");
    (c, dir)
}

/// [`check_read_once`] on the real binary; the boot event goes through the API, with curl.
#[test]
fn binary_access_count_admits_exactly_one_of_fifty_concurrent_reads_until_boot() {
    if !require_tool("curl") {
        return;
    }
    let (c, _dir) = binary_lab(b"x");
    let boot = || {
        assert_eq!(c.api_json("POST", "/api/v1/duts/dut1/events", Some(r#"{"event": "boot"}"#)).status, 204);
    };
    check_read_once(&c.http_url("/job/secret"), "MYSECRET_KEY: s3cr3t", &boot);
    // dut2 never sees dut1's secret, and the access log shows the 416 spent nothing.
    assert_eq!(fetch("127.0.0.3", &c.http_url("/job/secret")).0, 404);
    let log = c.api("GET", "/api/v1/duts/dut1/accesses", &[]).json();
    let served = log.as_array().unwrap().iter().filter(|r| r["outcome"] == "served" && r["bytes"].as_u64() > Some(0)).count();
    assert_eq!(served, 3, "one of the fifty, the range, the read after the second boot: {log}");
    // One record per request: HEAD, the 416 (a refusal, not a read), 50 concurrent GETs, the
    // GET after them, the range and the GET after it, the last two GETs.
    let records = log.as_array().unwrap();
    assert_eq!(records.len(), 1 + 1 + 50 + 1 + 2 + 2, "{log}");
    assert_eq!(records[1]["outcome"], "refused", "{}", records[1]);
    assert!(records[1]["reason"].as_str().unwrap().contains("range not satisfiable"), "{}", records[1]);
}

/// [`check_ranges_and_etags`] on the real binary, the big file coming from a `file:` source.
#[test]
fn binary_ranges_etags_and_methods() {
    if !require_tool("curl") {
        return;
    }
    let big = big_file();
    let (c, _dir) = binary_lab(&big);
    check_ranges_and_etags(&|p| c.http_url(p), &big);
    let log = c.api("GET", "/api/v1/duts/dut1/accesses", &[]).json();
    let whole = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["path"] == "/img/big.bin" && r["bytes"].as_u64() == Some(big.len() as u64) && r["outcome"] == "served")
        .count();
    assert!(whole >= 5, "every whole-file read is logged as served with its bytes: {log}");
}

/// [`check_traversal`] on the real binary.
#[test]
fn binary_traversal_attempts_stay_inside_the_namespace() {
    if !require_tool("curl") {
        return;
    }
    let (c, _dir) = binary_lab(b"x");
    check_traversal(&|p| c.http_url(p));
}

/// Reads one HTTP/1.1 response with a Content-Length from `s`; returns (status line, body).
fn read_response(s: &mut std::net::TcpStream, buf: &mut Vec<u8>) -> (String, Vec<u8>) {
    use std::io::Read;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0, "connection closed mid-body");
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            return (head.lines().next().unwrap_or("").to_string(), body);
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed before a response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Idle keep-alive connections drop their HTTP state after `PARK_AFTER` and keep working:
/// a later request, a pipelined pair, and a request head split across the parking all get
/// their answers on the same connection. Raw bytes, since curl cannot pause between requests.
#[test]
fn idle_keep_alive_connections_park_and_resume() {
    use std::io::Write;
    let lab = Lab::new();
    lab.gw.add_dut(citron_core::namespace::Dut::new("local", ["127.0.0.1".parse().unwrap()])).unwrap();
    lab.set("local", http_step(vec![data("small.txt", "0123456789")]));
    let addr = lab.server.as_ref().unwrap().http_addr().unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let req = format!("GET /small.txt HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let mut buf = Vec::new();
    let park = citron_protocols::http::PARK_AFTER * 3;

    s.write_all(req.as_bytes()).unwrap();
    assert_eq!(read_response(&mut s, &mut buf), ("HTTP/1.1 200 OK".into(), b"0123456789".to_vec()));
    std::thread::sleep(park);
    s.write_all(format!("{req}{req}").as_bytes()).unwrap();
    for _ in 0..2 {
        assert_eq!(read_response(&mut s, &mut buf), ("HTTP/1.1 200 OK".into(), b"0123456789".to_vec()));
    }
    std::thread::sleep(park);
    let (a, b) = req.split_at(20);
    s.write_all(a.as_bytes()).unwrap();
    std::thread::sleep(park);
    s.write_all(b.as_bytes()).unwrap();
    let (status, body) = read_response(&mut s, &mut buf);
    assert_eq!((status.as_str(), body.as_slice()), ("HTTP/1.1 200 OK", &b"0123456789"[..]));
    assert!(buf.is_empty());
}

/// Pipelined requests on one connection, read only once all are sent: buffered bodies (small
/// ranges and files), streamed ones (whole files, long ranges) arrive complete and in order,
/// and the connection stays usable once parked. Raw bytes, since curl does not pipeline.
#[test]
fn pipelined_requests_mixing_buffered_and_streamed_bodies_stay_in_order() {
    use std::io::Write;
    let lab = Lab::new();
    lab.gw.add_dut(citron_core::namespace::Dut::new("local", ["127.0.0.1".parse().unwrap()])).unwrap();
    let big = big_file();
    lab.set("local", http_step(vec![data("big.bin", big.clone()), data("small.txt", "0123456789")]));
    let addr = lab.server.as_ref().unwrap().http_addr().unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let get = |path: &str, range: Option<&str>| {
        let r = range.map(|r| format!("Range: bytes={r}\r\n")).unwrap_or_default();
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{r}\r\n")
    };
    let mut reqs = String::new();
    let mut want: Vec<(&str, &[u8])> = Vec::new();
    for i in 0..6u64 {
        let (a, b) = (i * 1000, i * 1000 + 199_999);
        reqs.push_str(&get("/big.bin", Some(&format!("{a}-{b}"))));
        want.push(("HTTP/1.1 206 Partial Content", &big[a as usize..=b as usize]));
        reqs.push_str(&get("/big.bin", None));
        want.push(("HTTP/1.1 200 OK", &big));
        reqs.push_str(&get("/big.bin", Some("1000000-")));
        want.push(("HTTP/1.1 206 Partial Content", &big[1_000_000..]));
        reqs.push_str(&get("/small.txt", None));
        want.push(("HTTP/1.1 200 OK", b"0123456789"));
    }
    s.write_all(reqs.as_bytes()).unwrap();
    let mut buf = Vec::new();
    for (i, (status, body)) in want.iter().enumerate() {
        let (st, got) = read_response(&mut s, &mut buf);
        assert_eq!(&st, status, "response {i}");
        assert!(got == *body, "response {i}: {} bytes, want {}", got.len(), body.len());
    }
    // Still usable, after a pause long enough to park it.
    std::thread::sleep(citron_protocols::http::PARK_AFTER * 3);
    s.write_all(get("/big.bin", None).as_bytes()).unwrap();
    let (st, got) = read_response(&mut s, &mut buf);
    assert_eq!(st, "HTTP/1.1 200 OK");
    assert!(got == big);
    assert!(buf.is_empty());
    let log = lab.gw.accesses(&DutId::from("local")).unwrap();
    let served = log.iter().filter(|r| r.outcome == citron_core::access::Outcome::Served && r.bytes == big.len() as u64).count();
    assert_eq!(served, 7, "every whole-file read is logged with its bytes");
}
