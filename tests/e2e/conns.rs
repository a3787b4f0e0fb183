//! Hostile networks against the real binary (issue 12, items 3, 7 and 9): connection caps per
//! peer, header and idle timeouts, the API's Host / Content-Type / token rules, and the bounded,
//! paginated access log. Raw sockets where a well-behaved client cannot misbehave.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use citron_tests::{curl, require_tool, Citron};

/// A TCP connection to `to` from `from` (a 127.0.0.x address), blocking.
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let c = s.connect(to).await.unwrap();
        let c = c.into_std().unwrap();
        c.set_nonblocking(false).unwrap();
        c
    })
}

/// Raises this test process's own descriptor limit (it holds hundreds of sockets).
fn raise_own_nofile() {
    let _ = citron_protocols::listen::raise_nofile_limit();
}

/// Whether the server closed `s` within `within`: `Some(bytes read before EOF)`, or `None` if
/// it is still open then.
fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        s.set_read_timeout(Some(left.min(Duration::from_millis(500)))).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            // A reset is a close too.
            Err(_) => return Some(got),
        }
    }
}

/// Reads one HTTP response (head and a `Content-Length` body) from a keep-alive connection.
fn read_response(s: &mut TcpStream) -> (u16, Vec<u8>) {
    let r = read_reply(s);
    (r.status, r.body.into_bytes())
}

/// One HTTP/1.1 response (with a `Content-Length`) read from `s`, as the API helpers see it.
fn read_reply(s: &mut TcpStream) -> citron_tests::api::Reply {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let mut b = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut b).expect("a response");
        assert!(n > 0, "closed before a response: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&b[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    let len: usize = head.lines().find_map(|l| l.strip_prefix("content-length:")).map(|v| v.trim().parse().unwrap()).unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut b).unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&b[..n]);
    }
    let headers = head.lines().skip(1).filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().into(), v.trim().into())).collect();
    citron_tests::api::Reply { status, headers, body: String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned() }
}

fn lab_with(dir: &std::path::Path, extra: &str) -> String {
    std::fs::write(dir.join("hello.txt"), "hello dut1\n").unwrap();
    std::fs::write(
        dir.join("job.yaml"),
        "deployment:\n  start:\n    storage:\n      http:\n        - path: /hello.txt\n          data: \"hello dut1\"\n",
    )
    .unwrap();
    let lab = dir.join("lab.yaml");
    std::fs::write(&lab, format!("duts:\n  - id: dut1\n    ip: [\"127.0.0.2\"]\n{extra}")).unwrap();
    lab.display().to_string()
}

/// 300 silent connections from a non-DUT address to NBD and to the API, with citron's
/// descriptor limit at 256 (soft and hard, so raising it gains nothing): the per-peer cap
/// refuses that peer only, once logged per listener, and the DUT is still served over HTTP.
/// Before the caps, NBD accepted every connection until `accept` failed with EMFILE, for HTTP too.
#[test]
fn one_peer_cannot_use_up_descriptors() {
    if !require_tool("curl") {
        return;
    }
    raise_own_nofile();
    let dir = tempfile::tempdir().unwrap();
    let lab = lab_with(dir.path(), "limits:\n  connections_per_peer: 16\n");
    let job = format!("dut1={}", dir.path().join("job.yaml").display());
    let c = Citron::start_with(&["--lab", &lab, "--job", &job, "--tftp", "off"], |cmd| {
        // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child before exec.
        unsafe {
            cmd.pre_exec(|| {
                let l = libc::rlimit { rlim_cur: 256, rlim_max: 256 };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    })
    .unwrap_or_else(|f| panic!("citron did not start: {}", f.stderr));
    let (nbd, api) = (c.nbd.unwrap(), c.api.unwrap());
    let mut held = Vec::new();
    for to in [nbd, api] {
        let mut socks: Vec<TcpStream> = (0..300).map(|_| connect_from("127.0.0.9", to)).collect();
        // Refused ones are closed at once; the accepted ones (16) stay open, silent.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut open = socks.len();
        while open > 16 && Instant::now() < deadline {
            open = 0;
            for s in &mut socks {
                s.set_nonblocking(true).unwrap();
                let mut b = [0u8; 256];
                match s.read(&mut b) {
                    Ok(0) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                    // Data (the NBD greeting) or nothing yet: still open.
                    _ => open += 1,
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(open, 16, "connections from 127.0.0.9 to {to} left open");
        held.extend(socks);
    }
    // The DUT is served over HTTP all along.
    let o = curl(&["--interface", "127.0.0.2", "--max-time", "10", "-sS", &c.http_url("/hello.txt")]);
    assert_eq!(o.stdout, "hello dut1", "{}", o.stderr);
    // And another peer still reaches the API.
    let r = c.api("GET", "/api/v1/duts", &["--max-time", "10"]);
    assert_eq!(r.status, 200, "{r:?}");
    let log = c.stderr_so_far();
    for l in ["nbd", "api"] {
        let n = log.lines().filter(|x| x.contains(&format!("{l}: per-peer connection cap reached"))).count();
        assert_eq!(n, 1, "{l}: one log line for 284 refusals:\n{log}");
    }
    assert!(!log.contains("accept failed"), "{log}");
    assert!(log.lines().any(|l| l.contains("RLIMIT_NOFILE") && l.contains("256")), "the descriptor limit is logged:\n{log}");
    drop(held);
}

/// A request head sent in part is closed after `limits.header_timeout` (on HTTP and the API),
/// and an idle keep-alive connection after `limits.idle_timeout`.
#[test]
fn half_sent_headers_and_idle_keep_alives_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let lab = lab_with(dir.path(), "limits:\n  header_timeout: 1s\n  idle_timeout: 2s\n");
    let job = format!("dut1={}", dir.path().join("job.yaml").display());
    let c = Citron::start(&["--lab", &lab, "--job", &job, "--tftp", "off", "--nbd", "off"]);
    let (http, api) = (c.http.unwrap(), c.api.unwrap());
    for to in [http, api] {
        let mut s = connect_from("127.0.0.2", to);
        s.write_all(b"GET /hello.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").unwrap();
        assert!(closed_within(&mut s, Duration::from_secs(15)).is_some(), "{to}: a half-sent head stays open");
    }
    for (to, path) in [(http, "/hello.txt"), (api, "/api/v1/duts")] {
        let mut s = connect_from("127.0.0.2", to);
        // The API's answers are checked against its OpenAPI document as every other one.
        let mut get = || {
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {to}\r\n\r\n").as_bytes()).unwrap();
            let r = read_reply(&mut s);
            if to == api {
                citron_tests::api::check("GET", path, &r);
            }
            r.status
        };
        assert_eq!(get(), 200, "{to}");
        // Still usable right after (keep-alive)...
        assert_eq!(get(), 200, "{to}");
        // ...and closed once idle.
        assert_eq!(closed_within(&mut s, Duration::from_secs(15)), Some(vec![]), "{to}: an idle keep-alive stays open");
    }
}

/// A web page cannot drive the API: a cross-site `text/plain` POST (what a browser sends
/// without asking) is 415 and ends nothing, a form POST too; a `Host` that is not the API's
/// (DNS rebinding) is 421; JSON and YAML bodies work with their types.
#[test]
fn api_refuses_cross_site_requests() {
    if !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lab = lab_with(dir.path(), "");
    let job = format!("dut1={}", dir.path().join("job.yaml").display());
    let c = Citron::start(&["--lab", &lab, "--job", &job, "--tftp", "off", "--nbd", "off"]);
    let ev = "/api/v1/duts/dut1/events";
    let end = r#"{"event": "job_end"}"#;
    let evil = ["-H", "Origin: http://evil.example", "--data-binary", end];
    let status = |method: &str, path: &str, args: &[&str]| c.api(method, path, args).status;
    assert_eq!(status("POST", ev, &[&evil[..], &["-H", "Content-Type: text/plain"]].concat()), 415);
    assert_eq!(status("POST", ev, &[&evil[..], &["-H", "Content-Type: application/x-www-form-urlencoded"]].concat()), 415);
    assert_eq!(status("POST", ev, &evil), 415, "curl -d's default type");
    // The job is still there.
    assert_eq!(curl(&["--interface", "127.0.0.2", "-sS", &c.http_url("/hello.txt")]).stdout, "hello dut1");
    // DNS rebinding: the page's own name in Host.
    for host in ["evil.example", "evil.example:80", "127.0.0.1:1"] {
        assert_eq!(status("GET", "/api/v1/duts", &["-H", &format!("Host: {host}")]), 421, "{host}");
    }
    for host in ["localhost", &c.api.unwrap().to_string()] {
        assert_eq!(status("GET", "/api/v1/duts", &["-H", &format!("Host: {host}")]), 200, "{host}");
    }
    // The right types work.
    let yaml = "deployment:\n  start:\n    storage:\n      http:\n        - {path: /y.txt, data: y}\n";
    for ty in ["application/yaml", "application/x-yaml", "text/yaml; charset=utf-8"] {
        let h = format!("Content-Type: {ty}");
        assert_eq!(status("PUT", "/api/v1/duts/dut1/job", &["-H", &h, "--data-binary", yaml]), 200, "{ty}");
    }
    assert_eq!(status("PUT", "/api/v1/duts/dut1/job", &["-H", "Content-Type: text/plain", "--data-binary", yaml]), 415);
    assert_eq!(status("POST", ev, &["-H", "Content-Type: application/json", "--data-binary", end]), 204);
    assert_eq!(curl(&["--interface", "127.0.0.2", "-s", "-o", "/dev/null", "-w", "%{http_code}", &c.http_url("/y.txt")]).stdout, "404");
    drop(c);
    // A name the lab lists (a reverse proxy, a DNS name for the lab host) is the API's too.
    let lab = lab_with(dir.path(), "api_hosts: [citron.lab.example]\n");
    let c = Citron::start(&["--lab", &lab, "--tftp", "off", "--nbd", "off", "--http", "off"]);
    for (host, want) in [("citron.lab.example:8443", 200), ("citron.lab.example", 200), ("other.lab.example", 421)] {
        assert_eq!(c.api("GET", "/api/v1/duts", &["-H", &format!("Host: {host}")]).status, want, "{host}");
    }
}

/// The token can come from `api_token_file` (relative to the lab file) or `$CITRON_API_TOKEN`;
/// two sources at once are refused at start with a message naming them.
#[test]
fn api_token_from_a_file_or_the_environment() {
    if !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let plain = lab_with(dir.path(), "");
    let c = Citron::start_with(&["--lab", plain.as_str(), "--tftp", "off", "--nbd", "off", "--http", "off"], |cmd| {
        cmd.env("CITRON_API_TOKEN", "from-env");
    })
    .unwrap_or_else(|f| panic!("{}", f.stderr));
    let status = |args: &[&str]| c.api("GET", "/api/v1/duts", args).status;
    assert_eq!(status(&[]), 401, "$CITRON_API_TOKEN is required");
    assert_eq!(status(&["-H", "Authorization: Bearer from-env"]), 200);
    drop(c);
    std::fs::write(dir.path().join("token"), "t0k3n-in-a-file\n").unwrap();
    let lab = lab_with(dir.path(), "api_token_file: token\n");
    let args = ["--lab", lab.as_str(), "--tftp", "off", "--nbd", "off", "--http", "off"];
    let c = Citron::start_with(&args, |cmd| {
        cmd.env_remove("CITRON_API_TOKEN");
    })
    .unwrap_or_else(|f| panic!("{}", f.stderr));
    let status = |args: &[&str]| c.api("GET", "/api/v1/duts", args).status;
    assert_eq!(status(&[]), 401);
    assert_eq!(status(&["-H", "Authorization: Bearer t0k3n-in-a-fil"]), 401);
    assert_eq!(status(&["-H", "Authorization: Bearer t0k3n-in-a-file"]), 200);
    drop(c);
    let f = Citron::start_with(&args, |cmd| {
        cmd.env("CITRON_API_TOKEN", "from-env");
    })
    .err()
    .expect("two token sources are refused");
    assert!(f.stderr.contains("api_token_file") && f.stderr.contains("CITRON_API_TOKEN"), "{}", f.stderr);
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").trim().parse().unwrap()
}

/// 1000 GETs with 60 KB paths: citron's memory and the `/accesses` answer stay bounded (paths
/// cut, the log bounded in bytes per DUT), and following the `next` links walks every record
/// kept exactly once, in order. Before, this added 58 MiB of RSS and a 60 MB answer.
#[test]
fn access_log_is_bounded_and_paginated() {
    if !require_tool("curl") {
        return;
    }
    let c = Citron::start(&["--tftp", "off", "--nbd", "off"]);
    let http = c.http.unwrap();
    let before = rss_kib(c.pid());
    let mut s = connect_from("127.0.0.2", http);
    for i in 0..1000 {
        let path = format!("/{i}/{}", "a".repeat(60_000));
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).unwrap();
        // Too long to be a path (400), but logged as a refusal all the same.
        assert_eq!(read_response(&mut s).0, 400);
    }
    let grown = rss_kib(c.pid()).saturating_sub(before);
    assert!(grown < 16 * 1024, "RSS grew by {grown} KiB");
    // Every page, following the Link headers.
    let mut url = "/api/v1/duts/dut1/accesses?limit=97".to_string();
    let (mut seqs, mut bytes, mut pages) = (Vec::new(), 0usize, 0);
    loop {
        pages += 1;
        assert!(pages < 200, "pagination does not end");
        let o = c.api("GET", &url, &[]);
        bytes += o.body.len();
        let page = o.json();
        for r in page.as_array().unwrap() {
            seqs.push(r["seq"].as_u64().unwrap());
            let p = r["path"].as_str().unwrap();
            assert!(p.len() <= 600 && p.ends_with("more bytes]"), "{p}");
        }
        let next = o.header("link").map(|l| l.trim_start_matches('<').split('>').next().unwrap().to_string());
        if let Some(l) = o.header("link") {
            assert!(l.ends_with("; rel=\"next\""), "{l}");
        }
        match next {
            Some(n) => url = n,
            None => break,
        }
    }
    assert!(bytes < 4 << 20, "/accesses answered {bytes} bytes");
    assert!(seqs.len() > 100, "{} records kept", seqs.len());
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "each record once, in order");
    // The default page holds them all (they fit the byte bound); the walk saw the same.
    let all = c.api("GET", "/api/v1/duts/dut1/accesses", &[]).json();
    let all: Vec<u64> = all.as_array().unwrap().iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, all);
    let last = c.api("GET", &format!("/api/v1/duts/dut1/accesses?after={}", seqs[seqs.len() - 2]), &[]).json();
    assert!(last[0]["path"].as_str().unwrap().starts_with("/999/"), "the newest record is kept: {last}");
}
