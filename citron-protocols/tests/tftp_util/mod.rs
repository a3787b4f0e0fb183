//! Helpers shared by the TFTP client tests (`tftp_clients.rs`, `tftp_hostile.rs`): a lab with a
//! DUT at 127.0.0.1 next to the default lab's, the server in-process, clients and raw datagrams.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use citron_core::job::{FileSpec, Lifetime, ResolvedJob, Source, Step};
use citron_core::lab::LabConfig;
use citron_core::namespace::{Dut, DutId};
use citron_core::serve::Catalog;
use citron_core::{Digest, Gateway};
use citron_protocols::tftp::{self, Config};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

/// `true` if `tool` runs; otherwise skips (or panics under `CITRON_E2E_STRICT=1`).
pub fn require_tool(tool: &str) -> bool {
    let ok =
        std::process::Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        if std::env::var("CITRON_E2E_STRICT").as_deref() == Ok("1") {
            panic!("{tool} is required (CITRON_E2E_STRICT=1); install it with scripts/setup-debian.sh");
        }
        eprintln!("SKIP: {tool} not installed");
    }
    ok
}

/// Deterministic pseudo-random bytes (xorshift64*), so every file differs from every other.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(len);
    v
}

pub fn file(path: &str, data: Vec<u8>, access_count: Option<u32>) -> FileSpec {
    FileSpec {
        path: path.into(),
        source: Source::Data(Bytes::from(data)),
        sha256: None,
        lifetime: Lifetime { access_count, expiration: None },
    }
}

pub const SIZES: &[(&str, usize)] = &[("f0", 0), ("f511", 511), ("f512", 512), ("f513", 513), ("f1m", 1 << 20), ("f40m", 40 << 20)];

pub struct Lab {
    pub gw: Gateway,
    _dir: tempfile::TempDir,
}

impl Lab {
    pub async fn new() -> Lab {
        Lab::with_local(|_| {}).await
    }

    /// The default lab plus DUT `local` at 127.0.0.1, which `edit` may give a serial, a MAC...
    pub async fn with_local(edit: impl FnOnce(&mut Dut)) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let mut lab = LabConfig::default_lab();
        let mut local = Dut::new("local", ["127.0.0.1".parse().unwrap()]);
        edit(&mut local);
        lab.duts.push(local);
        let gw = citron_fetch::gateway(lab, dir.path()).unwrap();
        Lab { gw, _dir: dir }
    }

    /// Makes `step` `dut`'s whole job.
    pub async fn step(&self, dut: &str, step: Step) {
        let job = ResolvedJob { name: None, results: None, origin: format!("test-{dut}"), start: step, continue_: None };
        self.gw.set_resolved_job(&DutId::from(dut), job).await.unwrap();
    }

    /// Sets `dut`'s job to boot `kernel` with `initramfs` and `cmdline` (no other files).
    pub async fn boot_job(&self, dut: &str, kernel: Vec<u8>, initramfs: Vec<u8>, cmdline: &str) {
        let step = Step {
            kernel: Some(file("kernel", kernel, None)),
            initramfs: Some(file("initramfs", initramfs, None)),
            cmdline: Some(cmdline.into()),
            ..Step::default()
        };
        self.step(dut, step).await;
    }

    /// Sets `dut`'s job to serve `files` over TFTP.
    pub async fn job(&self, dut: &str, files: Vec<FileSpec>) {
        self.step(dut, Step { files: [(citron_core::serve::Space::TFTP, files)].into(), ..Step::default() }).await;
    }

    /// Loads the size ladder for `dut`, seeded by `seed`; returns (name, sha256).
    pub async fn sized_files(&self, dut: &str, seed: u64) -> Vec<(String, Digest)> {
        let mut files = Vec::new();
        let mut sums = Vec::new();
        for (i, (name, len)) in SIZES.iter().enumerate() {
            let data = content(seed * 100 + i as u64, *len);
            sums.push((name.to_string(), Digest::of(&data)));
            files.push(file(name, data, None));
        }
        self.job(dut, files).await;
        sums
    }

    pub async fn serve(&self, config: Config) -> Server {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let catalog: Arc<dyn Catalog> = Arc::new(self.gw.clone());
        let task = tokio::spawn(tftp::serve_with(socket, catalog, config, async move {
            let _ = rx.await;
        }));
        Server { addr, stop: Some(tx), task }
    }
}

pub struct Server {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

pub async fn run(cmd: &mut tokio::process::Command) -> Output {
    cmd.kill_on_drop(true).stdin(std::process::Stdio::null());
    tokio::time::timeout(Duration::from_secs(300), cmd.output()).await.expect("client did not finish within 300 s").unwrap()
}

/// Sends one datagram from `from` and returns the decoded answer, if one comes within `wait`.
pub async fn exchange(from: &str, to: SocketAddr, datagram: &[u8], wait: Duration) -> Option<tftp::packet::Packet> {
    let sock = UdpSocket::bind((from, 0)).await.unwrap();
    sock.send_to(datagram, to).await.unwrap();
    let mut buf = vec![0u8; 70000];
    match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(tftp::packet::decode(&buf[..n]).expect("the server sent a malformed packet")),
        _ => None,
    }
}

pub fn error_code(p: &Option<tftp::packet::Packet>) -> Option<u16> {
    match p {
        Some(tftp::packet::Packet::Error { code, .. }) => Some(code.0),
        _ => None,
    }
}

pub fn rrq(name: &str, opts: &[(&str, &str)]) -> Vec<u8> {
    let mut v = vec![0, 1];
    for f in [name, "octet"].into_iter().chain(opts.iter().flat_map(|(a, b)| [*a, *b])) {
        v.extend_from_slice(f.as_bytes());
        v.push(0);
    }
    v
}

pub async fn recv(sock: &UdpSocket, buf: &mut [u8], wait_ms: u64) -> Option<(usize, SocketAddr)> {
    match tokio::time::timeout(Duration::from_millis(wait_ms), sock.recv_from(buf)).await {
        Ok(Ok(x)) => Some(x),
        _ => None,
    }
}
