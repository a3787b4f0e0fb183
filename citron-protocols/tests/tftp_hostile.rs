//! The TFTP backend against hostile peers, over loopback sockets with the real gateway: DUTs
//! holding slots, netascii memory, amplification by ERROR, sources that are no DUT. Raw datagrams
//! where a well-behaved client cannot send the bad input, real clients (curl) for the victims.
//!
//! The default lab's dut1 is 127.0.0.2 and dut2 127.0.0.3; 127.0.0.8 and 127.0.0.9 are no DUT.

mod tftp_util;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use citron_protocols::tftp::packet::{decode, encode, Mode, Packet, Request};
use citron_protocols::tftp::Config;
use tftp_util::*;
use tokio::net::UdpSocket;

/// Every log line of this test binary (all tests share the global subscriber; each test looks
/// only at lines naming its own addresses or bounds every line).
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = buf.clone();
        let make = move || LogWriter(w.clone());
        let _ = tracing_subscriber::fmt().with_ansi(false).with_max_level(tracing::Level::INFO).with_writer(make).try_init();
        buf
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_lines() -> Vec<String> {
    String::from_utf8_lossy(&logs().lock().unwrap()).lines().map(String::from).collect()
}

/// A configuration with short timers, `per_dut` slots per DUT and `global` in all.
fn config(global: usize, per_dut: usize) -> Config {
    let mut c = Config { max_transfers: global, transfers_per_dut: per_dut, ..Config::default() };
    c.limits.default_timeout = Duration::from_millis(300);
    c.limits.retries = 3;
    c
}

fn datagram(p: &Packet) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode(p, &mut b);
    b.to_vec()
}

fn rrq_mode(name: &str, mode: Mode, opts: &[(&str, &str)]) -> Vec<u8> {
    let options = opts.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    datagram(&Packet::Rrq(Request { filename: name.into(), mode, options }))
}

/// Every packet arriving on `sock` until it has been quiet for `quiet`, at most `max` in all.
async fn drain(sock: &UdpSocket, quiet: Duration, max: usize) -> Vec<(Vec<u8>, SocketAddr)> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 70000];
    while got.len() < max {
        match tokio::time::timeout(quiet, sock.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) => got.push((buf[..n].to_vec(), from)),
            _ => break,
        }
    }
    got
}

/// dut1 opens as many silent transfers as it can, asking `timeout 255`; dut2 still boots (curl
/// downloads its file), and dut1 was held to its own slots. The OACK does not grant 255 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dut_holding_its_slots_does_not_block_another_dut() {
    if !require_tool("curl") {
        return;
    }
    let lab = Lab::new().await;
    lab.job("dut1", vec![file("f", content(1, 100_000), None)]).await;
    let data = content(2, 30_000);
    let sum = citron_core::Digest::of(&data);
    lab.job("dut2", vec![file("kernel", data, None)]).await;
    // 8 slots in all, 4 per DUT: dut1 asks for 8.
    let mut c = config(8, 4);
    c.limits.default_timeout = Duration::from_secs(1);
    let srv = lab.serve(c).await;
    let mut socks = Vec::new();
    for _ in 0..8 {
        let s = UdpSocket::bind("127.0.0.2:0").await.unwrap();
        s.send_to(&rrq("f", &[("timeout", "255"), ("tsize", "0")]), srv.addr).await.unwrap();
        socks.push(s);
    }
    let mut oacks = 0;
    for s in &socks {
        if let Some((p, _)) = drain(s, Duration::from_millis(500), 1).await.pop() {
            match decode(&p).unwrap() {
                Packet::Oack { options } => {
                    assert!(!options.iter().any(|(k, _)| k == "timeout"), "timeout 255 was granted: {options:?}");
                    oacks += 1;
                }
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(oacks, 4, "dut1 got exactly its 4 slots");
    // dut1's transfers are silent and would be retransmitted for a while; dut2 boots now.
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("kernel");
    let o = run(tokio::process::Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10", "--interface", "127.0.0.3", "-o"])
        .arg(&dest)
        .arg(format!("tftp://127.0.0.1:{}/kernel", srv.addr.port())))
    .await;
    assert!(o.status.success(), "dut2 could not boot while dut1 held its slots: {o:?}");
    assert_eq!(citron_core::Digest::of(&std::fs::read(&dest).unwrap()), sum);
    srv.stop().await;
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A netascii read of a 64 MiB text file runs with memory that does not grow with the file (it
/// used to hold the whole converted file, 128 MiB here, for the transfer's life); its blocks
/// are the netascii of the file, CR LF pairs across block boundaries included, and `tsize` is
/// the converted size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_netascii_read_of_a_large_file_does_not_hold_the_file() {
    let lab = Lab::new().await;
    // 64 MiB of lines ending in CR LF (kept) and in LF alone (made CR LF).
    let line = b"abcdef\r\n".iter().chain(b"abcdefg\n").copied().collect::<Vec<u8>>();
    let text = line.repeat(4 << 20);
    lab.job("dut1", vec![file("big.txt", text, None)]).await;
    let srv = lab.serve(config(16, 4)).await;
    let before = rss_kib();
    let sock = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    sock.send_to(&rrq_mode("big.txt", Mode::Netascii, &[("blksize", "1000"), ("tsize", "0")]), srv.addr).await.unwrap();
    let mut buf = vec![0u8; 70000];
    let (n, tid) = tokio::time::timeout(Duration::from_secs(20), sock.recv_from(&mut buf)).await.expect("OACK").unwrap();
    let Packet::Oack { options } = decode(&buf[..n]).unwrap() else { panic!("{:?}", decode(&buf[..n])) };
    let tsize: u64 = options.iter().find(|(k, _)| k == "tsize").unwrap().1.parse().unwrap();
    // "abcdef\r\n" stays 8 bytes, "abcdefg\n" becomes 9.
    assert_eq!(tsize, (8 + 9) * (4 << 20), "tsize is the converted size");
    let mut got = Vec::new();
    let mut peak = before;
    sock.send_to(&[0, 4, 0, 0], tid).await.unwrap();
    for block in 1..=300u16 {
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf)).await.expect("DATA").unwrap();
        let Packet::Data { block: b, data } = decode(&buf[..n]).unwrap() else { panic!() };
        assert_eq!(b, block);
        got.extend_from_slice(&data);
        sock.send_to(&[0, 4, (block >> 8) as u8, block as u8], tid).await.unwrap();
        peak = peak.max(rss_kib());
    }
    let mut want = Vec::new();
    for _ in 0..(300_000 / 17 + 1) {
        want.extend_from_slice(b"abcdef\r\nabcdefg\r\n");
    }
    assert_eq!(&got[..], &want[..got.len()], "the netascii of the file");
    let grown = peak.saturating_sub(before);
    assert!(grown < 32 << 10, "RSS grew by {grown} KiB during a netascii read of a 64 MiB file");
    // Abort: the client gives up.
    sock.send_to(&datagram(&Packet::Error { code: citron_protocols::tftp::packet::ErrorCode(0), message: "bye".into() }), tid)
        .await
        .unwrap();
    srv.stop().await;
}

/// A malformed RRQ with a huge mode string (control bytes, which Debug form escapes 6-fold)
/// gets an ERROR no larger than the request, from a DUT or not; a small malformed request gets
/// an ERROR no larger than itself; a huge file name is cut in the log. Every log line of the
/// server stays short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_errors_no_larger_than_themselves_and_short_log_lines() {
    logs();
    let lab = Lab::new().await;
    let srv = lab.serve(config(16, 4)).await;
    let mut huge = b"\0\x01f\0".to_vec();
    huge.extend(std::iter::repeat_n(1u8, 8000));
    huge.push(0);
    let mut small = b"\0\x01f\0".to_vec();
    small.extend([1u8, 1, 1, 0]);
    let mut long_name = b"\0\x01".to_vec();
    long_name.extend(std::iter::repeat_n(b'x', 60000));
    long_name.extend(b"\0octet\0");
    for from in ["127.0.0.2", "127.0.0.8"] {
        for req in [&huge, &small, &long_name] {
            let sock = UdpSocket::bind((from, 0)).await.unwrap();
            sock.send_to(req, srv.addr).await.unwrap();
            for (p, _) in drain(&sock, Duration::from_millis(700), 10).await {
                assert!(p.len() <= req.len(), "from {from}: a {}-byte request got a {}-byte answer", req.len(), p.len());
                assert!(p.len() <= 100, "from {from}: a {}-byte answer", p.len());
                assert!(matches!(decode(&p), Ok(Packet::Error { .. })), "{:?}", decode(&p));
            }
        }
    }
    // The known DUT's requests were answered (the huge one and the long name at least).
    let sock = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    sock.send_to(&huge, srv.addr).await.unwrap();
    assert_eq!(drain(&sock, Duration::from_millis(700), 10).await.len(), 1);
    srv.stop().await;
    let lines = log_lines();
    assert!(lines.iter().any(|l| l.contains("malformed")), "the malformed requests were logged");
    let longest = lines.iter().map(|l| l.len()).max().unwrap_or(0);
    assert!(longest < 2048, "a {longest}-byte log line: {}", &lines.iter().max_by_key(|l| l.len()).unwrap()[..300]);
}

/// A source that is no DUT asking for an existing file of dut1 and never acknowledging gets one
/// ERROR and nothing else (no DATA, no retransmission); a burst of its requests is answered at
/// most `unknown_errors_per_sec` a second and logged once, not per packet; DUTs are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_source_gets_no_retransmission_and_rate_limited_errors() {
    logs();
    let lab = Lab::new().await;
    lab.job("dut1", vec![file("f", content(3, 5000), None)]).await;
    let mut c = config(16, 4);
    c.unknown_errors_per_sec = 5;
    let srv = lab.serve(c).await;
    let sock = UdpSocket::bind("127.0.0.9:0").await.unwrap();
    sock.send_to(&rrq("f", &[]), srv.addr).await.unwrap();
    // Retransmissions would come every 300 ms, 3 times.
    let got = drain(&sock, Duration::from_millis(1500), 50).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(matches!(decode(&got[0].0), Ok(Packet::Error { .. })), "{got:?}");
    // A burst of 200 requests, each from a fresh port (as a spoofed flood would be), within
    // well under a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut socks = Vec::new();
    for _ in 0..200 {
        socks.push(UdpSocket::bind("127.0.0.9:0").await.unwrap());
    }
    let started = Instant::now();
    for (i, s) in socks.iter().enumerate() {
        s.send_to(&rrq(&format!("f{i}"), &[]), srv.addr).await.unwrap();
    }
    let sent_in = started.elapsed();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut buf = vec![0u8; 2048];
    let answers = socks.iter().filter(|s| s.try_recv_from(&mut buf).is_ok()).count() as u64;
    let windows = sent_in.as_secs() + 2;
    assert!(answers >= 1 && answers <= 5 * windows, "{answers} answers to 200 requests sent in {sent_in:?}");
    // A DUT is served meanwhile.
    let p = exchange("127.0.0.2", srv.addr, &rrq("f", &[]), Duration::from_secs(3)).await;
    assert!(matches!(p, Some(Packet::Data { block: 1, .. })), "{p:?}");
    srv.stop().await;
    let lines = log_lines().into_iter().filter(|l| l.contains("127.0.0.9")).count();
    assert!(lines <= 2, "{lines} log lines for 127.0.0.9");
}
