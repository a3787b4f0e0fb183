//! The TFTP backend against real clients (tftp-hpa `tftp`, `atftp`, `curl`) over loopback, with
//! the real gateway deciding. Each client downloads files whose sizes hit the edge cases (empty,
//! around one block, a 40 MiB file whose block numbers wrap at blksize 512) and the result is
//! checked byte for byte (sha256).
//!
//! Source addresses: tftp-hpa and atftp cannot choose theirs, so a DUT `local` is registered at
//! 127.0.0.1 next to the default lab's dut1 (127.0.0.2) and dut2 (127.0.0.3), which curl reaches
//! with `--interface`.
//!
//! A client missing from the machine skips its test with a message, or fails it when
//! `CITRON_E2E_STRICT=1`.

mod tftp_util;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use citron_core::access::Outcome as AccessOutcome;
use citron_core::namespace::DutId;
use citron_core::{Digest, Gateway};
use citron_protocols::tftp::{self, Config};
use tftp_util::*;
use tokio::net::UdpSocket;

fn assert_file(path: &Path, want: &Digest, what: &str) {
    let got = std::fs::read(path).unwrap_or_else(|e| panic!("{what}: no output file {}: {e}", path.display()));
    assert_eq!(&Digest::of(&got), want, "{what}: content differs ({} bytes received)", got.len());
}

/// How many times `path` was logged as served to `dut`. The client exits after sending its final
/// ACK, which the server may not have processed yet: wait (bounded) for `want`.
async fn served(gw: &Gateway, dut: &str, path: &str, want: usize) -> usize {
    let count = || gw.accesses(&DutId::from(dut)).unwrap().iter().filter(|r| r.path == path && r.outcome == AccessOutcome::Served).count();
    for _ in 0..100 {
        if count() >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_downloads_every_size() {
    if !require_tool("tftp") {
        return;
    }
    let lab = Lab::new().await;
    let sums = lab.sized_files("local", 1).await;
    let srv = lab.serve(Config::default()).await;
    let out = tempfile::tempdir().unwrap();
    for (name, sum) in &sums {
        let dest = out.path().join(name);
        let o = run(tokio::process::Command::new("tftp")
            .args(["-4", "127.0.0.1", &srv.addr.port().to_string(), "-m", "binary", "-c", "get", name])
            .arg(&dest))
        .await;
        assert!(o.status.success(), "tftp get {name}: {o:?}");
        assert_file(&dest, sum, &format!("tftp-hpa {name}"));
        assert_eq!(served(&lab.gw, "local", name, 1).await, 1, "{name} logged as served once");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atftp_with_windowsize_and_blksize_downloads_every_size() {
    if !require_tool("atftp") {
        return;
    }
    let lab = Lab::new().await;
    let sums = lab.sized_files("local", 2).await;
    let srv = lab.serve(Config::default()).await;
    let out = tempfile::tempdir().unwrap();
    // windowsize 8 at the default blksize 512 (the 40 MiB file wraps block numbers), then blksize
    // 1468, then blksize 8192 with windowsize 16 (answered with windowsize 8 to fit the window in
    // the client's socket buffer: `Limits::max_window_bytes`).
    for opts in [
        &["--option", "windowsize 8"][..],
        &["--option", "blksize 1468", "--option", "windowsize 8"][..],
        &["--option", "blksize 8192", "--option", "windowsize 16"][..],
    ] {
        for (name, sum) in &sums {
            let dest = out.path().join(format!("{name}-{}", opts.join("-").replace(' ', "")));
            let o = run(tokio::process::Command::new("atftp")
                .args(["-g", "-r", name, "-l"])
                .arg(&dest)
                .args(opts)
                .args(["127.0.0.1", &srv.addr.port().to_string()]))
            .await;
            assert!(o.status.success(), "atftp {opts:?} {name}: {o:?}");
            assert_file(&dest, sum, &format!("atftp {opts:?} {name}"));
        }
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_downloads_every_size_and_duts_are_isolated() {
    if !require_tool("curl") {
        return;
    }
    let lab = Lab::new().await;
    // The same names for two DUTs, different content.
    let sums2 = lab.sized_files("dut1", 3).await;
    let sums3 = lab.sized_files("dut2", 4).await;
    let srv = lab.serve(Config::default()).await;
    let out = tempfile::tempdir().unwrap();
    for (iface, sums, blksize) in [("127.0.0.2", &sums2, "1468"), ("127.0.0.3", &sums3, "512")] {
        // curl 7.88 fails on every empty TFTP file ("getpeername() failed", exit 71; tftpd-hpa
        // too), so the empty file is left to the tftp-hpa and atftp tests.
        for (name, sum) in sums.iter().filter(|(n, _)| n != "f0") {
            let dest = out.path().join(format!("{name}-{iface}"));
            let o = run(tokio::process::Command::new("curl")
                .args(["-sS", "--fail", "--tftp-blksize", blksize, "--interface", iface, "-o"])
                .arg(&dest)
                .arg(format!("tftp://127.0.0.1:{}/{name}", srv.addr.port())))
            .await;
            assert!(o.status.success(), "curl {iface} {name}: {o:?}");
            assert_file(&dest, sum, &format!("curl from {iface} {name}"));
        }
    }
    assert_ne!(sums2[1].1, sums3[1].1);
    // An address no DUT has: file not found (curl: exit 68, CURLE_TFTP_NOTFOUND).
    let o = run(tokio::process::Command::new("curl")
        .args(["-sS", "--interface", "127.0.0.9", "-o", "/dev/null"])
        .arg(format!("tftp://127.0.0.1:{}/f511", srv.addr.port())))
    .await;
    assert_eq!(o.status.code(), Some(68), "unknown DUT: {o:?}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_netascii_mode() {
    if !require_tool("tftp") {
        return;
    }
    let lab = Lab::new().await;
    // No CR LF pair in the source, so converting to netascii and back is the identity.
    let mut text = Vec::new();
    for i in 0..300 {
        text.extend_from_slice(format!("line {i}\tcolumns\rcarriage\n").as_bytes());
    }
    let sum = Digest::of(&text);
    lab.job("local", vec![file("cmdline.txt", text, None)]).await;
    let srv = lab.serve(Config::default()).await;
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("cmdline.txt");
    let o = run(tokio::process::Command::new("tftp")
        .args(["-4", "127.0.0.1", &srv.addr.port().to_string(), "-m", "netascii", "-c", "get", "cmdline.txt"])
        .arg(&dest))
    .await;
    assert!(o.status.success(), "{o:?}");
    assert_file(&dest, &sum, "netascii");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_count_refuses_the_second_read() {
    if !require_tool("curl") {
        return;
    }
    let lab = Lab::new().await;
    let data = content(9, 3000);
    let sum = Digest::of(&data);
    lab.job("dut1", vec![file("once", data, Some(1))]).await;
    let srv = lab.serve(Config::default()).await;
    let out = tempfile::tempdir().unwrap();
    let url = format!("tftp://127.0.0.1:{}/once", srv.addr.port());
    let dest = out.path().join("once");
    let o = run(tokio::process::Command::new("curl").args(["-sS", "--interface", "127.0.0.2", "-o"]).arg(&dest).arg(&url)).await;
    assert!(o.status.success(), "{o:?}");
    assert_file(&dest, &sum, "first read");
    // Access violation (curl: exit 69, CURLE_TFTP_PERM).
    let o = run(tokio::process::Command::new("curl").args(["-sS", "--interface", "127.0.0.2", "-o", "/dev/null"]).arg(&url)).await;
    assert_eq!(o.status.code(), Some(69), "second read: {o:?}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_and_writes_are_access_violations() {
    let lab = Lab::new().await;
    lab.job("dut1", vec![file("x", b"inside".to_vec(), None)]).await;
    let srv = lab.serve(Config::default()).await;
    let wait = Duration::from_secs(3);
    for name in ["../x", "/../../etc/passwd", "a/../../x"] {
        let p = exchange("127.0.0.2", srv.addr, &rrq(name, &[]), wait).await;
        assert_eq!(error_code(&p), Some(2), "{name}: {p:?}");
    }
    let mut wrq = rrq("x", &[]);
    wrq[1] = 2;
    assert_eq!(error_code(&exchange("127.0.0.2", srv.addr, &wrq, wait).await), Some(2));
    // The same refusals seen by a real client.
    if require_tool("tftp") {
        let out = tempfile::tempdir().unwrap();
        let port = srv.addr.port().to_string();
        let o = run(tokio::process::Command::new("tftp")
            .args(["-4", "127.0.0.1", &port, "-m", "binary", "-c", "get", "/../../etc/passwd"])
            .arg(out.path().join("p")))
        .await;
        let err = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
        assert!(err.contains("Error code 2"), "traversal: {err}");
        let src = out.path().join("up");
        std::fs::write(&src, b"data").unwrap();
        let o = run(tokio::process::Command::new("tftp").args(["-4", "127.0.0.1", &port, "-m", "binary", "-c", "put"]).arg(&src).arg("up"))
            .await;
        let err = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
        assert!(err.contains("Error code 2"), "write: {err}");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn option_negotiation_on_the_wire() {
    let lab = Lab::new().await;
    lab.job("dut1", vec![file("f", content(5, 5000), None)]).await;
    let srv = lab.serve(Config::default()).await;
    let wait = Duration::from_secs(3);
    use tftp::packet::Packet;
    // Only what was asked is acknowledged; unknown options are ignored; big values are lowered.
    let p = exchange("127.0.0.2", srv.addr, &rrq("f", &[("tsize", "0"), ("foo", "bar"), ("blksize", "70000")]), wait).await;
    assert_eq!(p, Some(Packet::Oack { options: vec![("tsize".into(), "5000".into()), ("blksize".into(), "65464".into())] }));
    // No options: DATA 1 straight away, 512 bytes.
    let p = exchange("127.0.0.2", srv.addr, &rrq("f", &[]), wait).await;
    assert!(matches!(p, Some(Packet::Data { block: 1, ref data }) if data.len() == 512), "{p:?}");
    // Absurd values only: no OACK, plain RFC 1350.
    let p = exchange("127.0.0.2", srv.addr, &rrq("f", &[("blksize", "2"), ("windowsize", "0"), ("timeout", "999")]), wait).await;
    assert!(matches!(p, Some(Packet::Data { block: 1, ref data }) if data.len() == 512), "{p:?}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_get_an_error_or_nothing_and_the_server_keeps_serving() {
    let lab = Lab::new().await;
    let data = content(6, 2000);
    let sum = Digest::of(&data);
    lab.job("dut1", vec![file("ok", data, None)]).await;
    let srv = lab.serve(Config::default()).await;
    let junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0, 1],
        b"\0\x01no-nul".to_vec(),
        b"\0\x01f\0octet".to_vec(),
        b"\0\x01f\0weird\0".to_vec(),
        b"\0\x01\0octet\0".to_vec(),
        b"\0\x01ok\0octet\0blksize\0".to_vec(),
        b"\0\x01\xff\xfe\0octet\0".to_vec(),
        b"\0\x09hello".to_vec(),
        b"\0\x05\0\x01error to the server\0".to_vec(),
        b"\0\x04\0\x01".to_vec(),
        b"\0\x03\0\x01data".to_vec(),
        b"\0\x06blksize\x00512\0".to_vec(),
        vec![0xff; 1400],
        vec![0; 65000],
    ];
    for j in &junk {
        let p = exchange("127.0.0.2", srv.addr, j, Duration::from_millis(300)).await;
        assert!(p.is_none() || error_code(&p).is_some(), "{j:?}: answered {p:?}");
        if j.starts_with(&[0, 1]) && j.len() > 2 {
            assert_eq!(error_code(&p), Some(4), "malformed request {j:?} gets 'illegal operation'");
        }
    }
    // Malformed packets inside a transfer are ignored too; then the server still serves.
    if require_tool("curl") {
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("ok");
        let o = run(tokio::process::Command::new("curl")
            .args(["-sS", "--fail", "--interface", "127.0.0.2", "-o"])
            .arg(&dest)
            .arg(format!("tftp://127.0.0.1:{}/ok", srv.addr.port())))
        .await;
        assert!(o.status.success(), "{o:?}");
        assert_file(&dest, &sum, "after junk");
    }
    srv.stop().await;
}

/// A relay between one client and the server that drops every packet for which a seeded
/// xorshift generator says so (about 1 in `one_in`), in both directions.
async fn lossy_relay(server: SocketAddr, seed: u64, one_in: u64) -> (SocketAddr, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let dropped = Arc::new(AtomicU64::new(0));
    let counter = dropped.clone();
    let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // Upstream from dut1's address: the server sees the relay as dut1.
    let back = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let addr = front.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut x = seed | 1;
        let mut drop_it = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let d = x.checked_rem(one_in) == Some(0);
            if d {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            d
        };
        let mut client: Option<SocketAddr> = None;
        let mut server_tid: Option<SocketAddr> = None;
        let (mut a, mut b) = (vec![0u8; 70000], vec![0u8; 70000]);
        loop {
            tokio::select! {
                Ok((n, from)) = front.recv_from(&mut a) => {
                    client = Some(from);
                    let is_request = a[..n].starts_with(&[0, 1]);
                    let to = if is_request { server } else { server_tid.unwrap_or(server) };
                    if !drop_it() {
                        let _ = back.send_to(&a[..n], to).await;
                    }
                }
                Ok((n, from)) = back.recv_from(&mut b) => {
                    server_tid = Some(from);
                    if let (Some(c), false) = (client, drop_it()) {
                        let _ = front.send_to(&b[..n], c).await;
                    }
                }
            }
        }
    });
    (addr, dropped, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_path_still_delivers_whole_files() {
    if !require_tool("tftp") {
        return;
    }
    let lab = Lab::new().await;
    let data = content(7, 200_000);
    let sum = Digest::of(&data);
    lab.job("dut1", vec![file("lossy", data, None)]).await;
    // A short retransmission timeout keeps the test quick; loss recovery is what is tested.
    let mut config = Config::default();
    config.limits.default_timeout = Duration::from_millis(50);
    config.limits.retries = 40;
    let srv = lab.serve(config).await;
    let out = tempfile::tempdir().unwrap();
    for seed in [1u64, 2] {
        let (relay, dropped, task) = lossy_relay(srv.addr, 0x5eed_0000 + seed, 10).await;
        let dest = out.path().join(format!("lossy-{seed}"));
        // tftp-hpa reads commands from stdin: a 1 s client retransmission for a lost request.
        let mut child = tokio::process::Command::new("tftp")
            .args(["-4", "127.0.0.1", &relay.port().to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(format!("mode octet\nrexmt 1\ntimeout 120\nget lossy {}\nquit\n", dest.display()).as_bytes()).await.unwrap();
        drop(stdin);
        let o = tokio::time::timeout(Duration::from_secs(240), child.wait_with_output()).await.expect("tftp under loss hung").unwrap();
        assert!(o.status.success(), "{o:?}");
        assert_file(&dest, &sum, &format!("lossy seed {seed}"));
        assert!(dropped.load(Ordering::Relaxed) > 10, "the relay dropped packets");
        task.abort();
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_acks_are_ignored_and_a_vanished_client_is_cleaned_up() {
    use tftp::packet::Packet;
    let lab = Lab::new().await;
    lab.job("dut1", vec![file("f", content(8, 2000), None)]).await;
    let mut config = Config::default();
    config.limits.default_timeout = Duration::from_millis(200);
    config.limits.retries = 2;
    let srv = lab.serve(config).await;
    let sock = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    sock.send_to(&rrq("f", &[]), srv.addr).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let (n, tid) = recv(&sock, &mut buf, 3000).await.expect("DATA 1");
    assert_ne!(tid, srv.addr, "the transfer runs on its own port");
    assert_eq!(tid.ip(), srv.addr.ip(), "bound to the listening address");
    assert!(matches!(tftp::packet::decode(&buf[..n]), Ok(Packet::Data { block: 1, .. })));
    // ACK 1 brings DATA 2; a duplicate ACK 1 brings nothing (only the timer resends DATA 2).
    sock.send_to(&[0, 4, 0, 1], tid).await.unwrap();
    let (n, _) = recv(&sock, &mut buf, 3000).await.expect("DATA 2");
    assert!(matches!(tftp::packet::decode(&buf[..n]), Ok(Packet::Data { block: 2, .. })));
    sock.send_to(&[0, 4, 0, 1], tid).await.unwrap();
    sock.send_to(&[0, 4, 0, 1], tid).await.unwrap();
    // Then the client vanishes. The server retransmits DATA 2 exactly `retries` times and gives
    // up; had it answered the duplicate ACKs, more copies would arrive.
    let mut retransmits = 0;
    while let Some((n, _)) = recv(&sock, &mut buf, 3000).await {
        assert!(matches!(tftp::packet::decode(&buf[..n]), Ok(Packet::Data { block: 2, .. })));
        retransmits += 1;
    }
    assert_eq!(retransmits, 2);
    let recs = lab.gw.accesses(&DutId::from("dut1")).unwrap();
    assert!(recs.iter().any(|r| r.path == "f" && r.outcome == AccessOutcome::Aborted && r.bytes == 512), "{recs:?}");
    srv.stop().await;
}

/// Downloads `path` from the server at `port` with curl from `iface` at blksize 1024 (what the
/// Raspberry Pi firmware asks for); `Err(exit code)` on failure.
async fn curl_rpi(iface: &str, port: u16, path: &str) -> Result<Vec<u8>, Option<i32>> {
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("f");
    let o = run(tokio::process::Command::new("curl")
        .args(["-sS", "--fail", "--tftp-blksize", "1024", "--interface", iface, "-o"])
        .arg(&dest)
        .arg(format!("tftp://127.0.0.1:{port}/{path}")))
    .await;
    if !o.status.success() {
        return Err(o.status.code());
    }
    Ok(std::fs::read(&dest).unwrap())
}

/// Downloads `path` with tftp-hpa (from 127.0.0.1, octet mode).
async fn tftp_hpa_get(port: u16, path: &str) -> Vec<u8> {
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("f");
    let o = run(tokio::process::Command::new("tftp")
        .args(["-4", "127.0.0.1", &port.to_string(), "-m", "binary", "-c", "get", path])
        .arg(&dest))
    .await;
    assert!(o.status.success(), "tftp get {path}: {o:?}");
    std::fs::read(&dest).unwrap()
}

/// The value of the first `key=value` line of a config.txt.
fn config_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).map(str::trim)
}

/// The first word after `cmd ` on a line of an iPXE script, and the rest of that line.
fn ipxe_line<'a>(script: &'a str, cmd: &str) -> Option<(&'a str, &'a str)> {
    let rest = script.lines().find_map(|l| l.strip_prefix(cmd)?.strip_prefix(' '))?;
    Some(rest.split_once(' ').unwrap_or((rest, "")))
}

/// The generated boot files, fetched as firmware does: a Raspberry Pi-style DUT (serial and MAC
/// set, `machine_id` ≠ id) reads `<serial>/config.txt` with curl at blksize 1024, follows its
/// `kernel=` and `cmdline=` lines; iPXE-style reads of `<mac>/boot.ipxe` (every MAC spelling the
/// gateway accepts) and `boot.ipxe` whose kernel and initrd lines are followed too. Every
/// followed file is compared with the job's source bytes. A second DUT with a job of its own
/// gets nothing through the first one's serial, MAC or machine_id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_boot_files_over_real_clients_with_firmware_prefixes() {
    if !require_tool("curl") || !require_tool("tftp") {
        return;
    }
    const SERIAL: &str = "d9b3f19c";
    const MAC: &str = "dc:a6:32:0a:0b:0c";
    let lab = Lab::with_local(|d| {
        d.serial = Some(SERIAL.into());
        d.mac = Some(MAC.into());
        d.machine_id = Some("rpi4-a".into());
    })
    .await;
    // Sizes that cross blocks and the server's 256 KiB read chunks at blksize 1024 and 512.
    let kernel = content(21, 3 * 1024 * 1024 + 123);
    let initramfs = content(22, 700_001);
    let cmdline = "console=ttyAMA0,115200 root=/dev/nfs ip=dhcp";
    lab.boot_job("local", kernel.clone(), initramfs.clone(), cmdline).await;
    // dut1 (127.0.0.2, MAC 52:54:00:00:00:01) boots something else.
    let other_kernel = content(23, 5000);
    lab.boot_job("dut1", other_kernel.clone(), content(24, 10), "other").await;
    let srv = lab.serve(Config::default()).await;
    let port = srv.addr.port();
    let rpi = "127.0.0.1";

    // Raspberry Pi: <serial>/config.txt, then what it names, under the same prefix.
    let config = curl_rpi(rpi, port, &format!("{SERIAL}/config.txt")).await.expect("curl <serial>/config.txt");
    let config = String::from_utf8(config).unwrap();
    assert_eq!(config_value(&config, "kernel"), Some("boot/rpi4-a/kernel"), "{config}");
    assert!(config.contains("initramfs boot/rpi4-a/initramfs"), "{config}");
    let kpath = config_value(&config, "kernel").unwrap();
    let got = curl_rpi(rpi, port, &format!("{SERIAL}/{kpath}")).await.expect("curl <serial>/kernel");
    assert_eq!(Digest::of(&got), Digest::of(&kernel), "kernel via serial prefix");
    let cpath = config_value(&config, "cmdline").expect("cmdline= line");
    let got = curl_rpi(rpi, port, &format!("{SERIAL}/{cpath}")).await.expect("curl cmdline.txt");
    assert_eq!(String::from_utf8(got).unwrap().trim_end(), cmdline);
    // The same config.txt from tftp-hpa (lockstep at blksize 512), with and without the prefix.
    assert_eq!(String::from_utf8(tftp_hpa_get(port, &format!("{SERIAL}/config.txt")).await).unwrap(), config);
    assert_eq!(String::from_utf8(tftp_hpa_get(port, "config.txt").await).unwrap(), config);
    // The serial prefix is matched without regard to case.
    assert_eq!(curl_rpi(rpi, port, &format!("{}/config.txt", SERIAL.to_uppercase())).await, Ok(config.clone().into_bytes()));

    // iPXE: boot.ipxe and <mac>/boot.ipxe in every spelling; kernel and initrd lines followed.
    let script = String::from_utf8(tftp_hpa_get(port, "boot.ipxe").await).unwrap();
    assert!(script.starts_with("#!ipxe\n"), "{script}");
    let (kurl, kargs) = ipxe_line(&script, "kernel").expect("kernel line");
    assert_eq!(kurl, "/boot/rpi4-a/kernel", "{script}");
    assert_eq!(kargs, cmdline, "{script}");
    let (iurl, _) = ipxe_line(&script, "initrd").expect("initrd line");
    assert_eq!(iurl, "/boot/rpi4-a/initramfs", "{script}");
    assert!(script.lines().any(|l| l == "boot"), "{script}");
    let mac_forms = [MAC.replace(':', "-"), MAC.replace(':', ""), MAC.to_string(), MAC.to_uppercase().replace(':', "-")];
    for m in &mac_forms {
        assert_eq!(curl_rpi(rpi, port, &format!("{m}/boot.ipxe")).await, Ok(script.clone().into_bytes()), "{m}/boot.ipxe");
    }
    // tftp-hpa too (no colon form: tftp-hpa reads `host:file` in a get argument).
    assert_eq!(String::from_utf8(tftp_hpa_get(port, &format!("{}/boot.ipxe", mac_forms[1])).await).unwrap(), script);
    assert_eq!(String::from_utf8(tftp_hpa_get(port, "boot/rpi4-a/boot.ipxe").await).unwrap(), script);
    // The script's paths, as iPXE resolves them against a tftp:// URL.
    let got = tftp_hpa_get(port, kurl).await;
    assert_eq!(Digest::of(&got), Digest::of(&kernel), "kernel via tftp-hpa");
    let got = curl_rpi(rpi, port, kurl.trim_start_matches('/')).await.expect("curl kernel");
    assert_eq!(Digest::of(&got), Digest::of(&kernel), "kernel via curl");
    let got = curl_rpi(rpi, port, &format!("{}{iurl}", mac_forms[0])).await.expect("curl <mac>/initramfs");
    assert_eq!(Digest::of(&got), Digest::of(&initramfs), "initramfs");

    // A prefix naming nobody, or a MAC form the gateway does not accept (pxelinux's "01-"
    // ARP-type prefix): not found (curl: exit 68).
    for bad in ["ffffffff/config.txt".to_string(), format!("01-{}/boot.ipxe", mac_forms[0])] {
        assert_eq!(curl_rpi(rpi, port, &bad).await, Err(Some(68)), "{bad}");
    }

    // dut1 has its own generated files, but none through the first DUT's serial, MAC or
    // machine_id.
    let own = String::from_utf8(curl_rpi("127.0.0.2", port, "boot.ipxe").await.unwrap()).unwrap();
    assert!(own.contains("kernel /boot/dut1/kernel other"), "{own}");
    let got = curl_rpi("127.0.0.2", port, "52-54-00-00-00-01/boot/dut1/kernel").await.expect("dut1's own kernel through its own MAC");
    assert_eq!(Digest::of(&got), Digest::of(&other_kernel));
    for stolen in [
        format!("{SERIAL}/config.txt"),
        format!("{SERIAL}/boot/rpi4-a/kernel"),
        format!("{SERIAL}/boot.ipxe"),
        format!("{}/boot.ipxe", mac_forms[0]),
        "boot/rpi4-a/kernel".to_string(),
    ] {
        assert_eq!(curl_rpi("127.0.0.2", port, &stolen).await, Err(Some(68)), "dut1 asking for {stolen}");
    }

    // The access log names the first DUT's reads as served, under the path the client asked for
    // (<serial>/config.txt: once by curl, once by tftp-hpa).
    assert_eq!(served(&lab.gw, "local", &format!("{SERIAL}/config.txt"), 2).await, 2);
    assert_eq!(served(&lab.gw, "local", kurl, 1).await, 1);
    srv.stop().await;
}

/// A transfer whose last block went out but whose final ACK never arrived is logged as served
/// with every byte (the client almost certainly has the file; see `Outcome::Unconfirmed`), both
/// when the client stays silent and when it has closed its port; one that stops before the last
/// block is sent stays aborted (`duplicate_acks_are_ignored_and_a_vanished_client_is_cleaned_up`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_final_ack_is_logged_as_served() {
    use tftp::packet::Packet;
    let lab = Lab::new().await;
    lab.job("dut1", vec![file("silent", content(10, 1000), None), file("closed", content(11, 1000), None)]).await;
    let mut config = Config::default();
    config.limits.default_timeout = Duration::from_millis(200);
    config.limits.retries = 2;
    let srv = lab.serve(config).await;
    let mut buf = vec![0u8; 2048];
    for name in ["silent", "closed"] {
        let sock = UdpSocket::bind("127.0.0.2:0").await.unwrap();
        sock.send_to(&rrq(name, &[]), srv.addr).await.unwrap();
        let (n, tid) = recv(&sock, &mut buf, 3000).await.expect("DATA 1");
        assert!(matches!(tftp::packet::decode(&buf[..n]), Ok(Packet::Data { block: 1, .. })));
        sock.send_to(&[0, 4, 0, 1], tid).await.unwrap();
        let (n, _) = recv(&sock, &mut buf, 3000).await.expect("DATA 2");
        assert!(matches!(tftp::packet::decode(&buf[..n]), Ok(Packet::Data { block: 2, ref data }) if data.len() == 488));
        if name == "silent" {
            // The last block is resent `retries` times, then the server gives up.
            let mut resent = 0;
            while recv(&sock, &mut buf, 3000).await.is_some() {
                resent += 1;
            }
            assert_eq!(resent, 2);
        } else {
            // The client exits after the last block: the resend meets a closed port.
            drop(sock);
        }
        let logged = || lab.gw.accesses(&DutId::from("dut1")).unwrap().into_iter().filter(|r| r.path == name).collect::<Vec<_>>();
        for _ in 0..100 {
            if !logged().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let recs = logged();
        assert!(matches!(&recs[..], [r] if r.outcome == AccessOutcome::Served && r.bytes == 1000), "{name}: {recs:?}");
    }
    srv.stop().await;
}
