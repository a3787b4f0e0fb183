//! Helpers for the NBD tests: a lab with an in-process server, the example server as a child
//! process, external tools, and a raw client for what real clients cannot send.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use citron_core::job::{DiskKind, DiskSpec, ResetOn, ResolvedJob, Step};
use citron_core::lab::LabConfig;
use citron_core::lifetime::Event;
use citron_core::namespace::Dut;
use citron_core::Gateway;
use citron_protocols::nbd::wire::{self, opt, rep};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// PATH with the system directories first: libnbd's Python module is installed for the system
/// interpreter, not for one a developer may have in front.
pub fn path() -> String {
    format!("/usr/bin:/bin:/usr/sbin:/sbin:{}", std::env::var("PATH").unwrap_or_default())
}

fn strict() -> bool {
    std::env::var("CITRON_E2E_STRICT").is_ok_and(|v| v == "1")
}

fn skip(what: &str) -> bool {
    assert!(!strict(), "{what} is missing and CITRON_E2E_STRICT=1; run scripts/setup-debian.sh");
    eprintln!("skipping: {what} is not installed (scripts/setup-debian.sh installs it)");
    false
}

/// Is `tool` installed? Skips (or fails under CITRON_E2E_STRICT=1) when not.
pub fn have(tool: &str) -> bool {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .env("PATH", path())
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok || skip(tool)
}

/// nbdsh and its Python module.
pub fn have_nbdsh() -> bool {
    let ok = Command::new("nbdsh").args(["-c", "pass"]).env("PATH", path()).output().is_ok_and(|o| o.status.success());
    ok || skip("nbdsh (python3-libnbd)")
}

/// Runs `cmd`, fails the test with its output unless it succeeds; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.env("PATH", path()).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a Python snippet in nbdsh connected to `uri` (`h` is the handle).
pub fn nbdsh(uri: &str, script: &str) -> String {
    run(Command::new("nbdsh").args(["-u", uri, "-c", script]))
}

/// Deterministic, incompressible-looking bytes.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn sha256_file(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

pub fn count_files(p: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten().map(|e| if e.path().is_dir() { count_files(&e.path()) } else { 1 }).sum()
}

pub fn disk(name: &str, kind: DiskKind, reset_on: ResetOn) -> DiskSpec {
    DiskSpec { name: name.into(), readonly: false, kind, reset_on, shared: false, expiration: None }
}

/// A gateway (default lab + DUT `local` at 127.0.0.1 owning `disks`) and an NBD server.
pub struct Lab {
    pub rt: tokio::runtime::Runtime,
    pub gw: Gateway,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Lab {
    pub fn start(disks: Vec<DiskSpec>) -> Lab {
        let tmp = tempfile::tempdir().unwrap();
        let mut lab = Lab::start_in(tmp.path(), disks);
        lab._tmp = Some(tmp);
        lab
    }

    pub fn start_in(dir: &Path, disks: Vec<DiskSpec>) -> Lab {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (gw, addr) = rt.block_on(async {
            let gw = citron_fetch::gateway(LabConfig::default_lab(), dir).unwrap();
            gw.add_dut(Dut::new("local", ["127.0.0.1".parse().unwrap()])).unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(citron_protocols::nbd::serve(listener, Arc::new(gw.clone()), std::future::pending()));
            (gw, addr)
        });
        let lab = Lab { rt, gw, addr, dir: dir.to_path_buf(), _tmp: None };
        lab.set_disks(disks);
        lab
    }

    pub fn set_disks(&self, disks: Vec<DiskSpec>) {
        let job = ResolvedJob {
            name: None,
            results: None,
            origin: "test".into(),
            start: Step { nbd: disks, ..Step::default() },
            continue_: None,
        };
        self.rt.block_on(self.gw.set_resolved_job(&"local".into(), job)).unwrap();
    }

    pub fn uri(&self, name: &str) -> String {
        format!("nbd://{}/{name}", self.addr)
    }

    pub fn event(&self, e: Event) {
        self.gw.event(&"local".into(), e).unwrap();
    }
}

/// The example server as a child process (for kill -9).
pub struct Child {
    child: std::process::Child,
    pub addr: String,
}

pub fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir.join("examples").join(name);
    assert!(p.exists(), "{} missing: cargo test builds examples; run `cargo build -p citron-protocols --examples`", p.display());
    p
}

impl Child {
    pub fn spawn(data: &Path, name: &str, disk: &str, reset: &str) -> Child {
        use std::io::BufRead;
        let mut child = Command::new(example_bin("nbd_serve"))
            .arg(data)
            .args(["0", name, disk, reset])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected {line:?}")).to_string();
        Child { child, addr: format!("{addr}/{name}") }
    }

    pub fn uri(&self) -> String {
        format!("nbd://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A hand-written NBD client: fixed newstyle, simple replies; no zeroes unless asked for.
pub struct Raw {
    pub stream: TcpStream,
    /// `NBD_FLAG_C_NO_ZEROES` was not sent: the `NBD_OPT_EXPORT_NAME` reply has 124 zero bytes.
    pub zeroes: bool,
}

impl Raw {
    /// Connected from `src` (a loopback address), greeting not read.
    pub async fn connect_plain(addr: SocketAddr, src: &str) -> TcpStream {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(src.parse::<IpAddr>().unwrap(), 0)).unwrap();
        let mut s = sock.connect(addr).await.unwrap();
        let mut greet = [0u8; wire::SERVER_GREETING_LEN];
        s.read_exact(&mut greet).await.unwrap();
        assert_eq!(&greet[..16], b"NBDMAGICIHAVEOPT");
        s
    }

    /// Connected from `src`, negotiation started (`NBD_FLAG_C_FIXED_NEWSTYLE | NO_ZEROES`).
    pub async fn connect(addr: SocketAddr, src: &str) -> Raw {
        Raw::connect_with_flags(addr, src, 3).await
    }

    /// Connected from `src`, negotiation started with these client flags.
    pub async fn connect_with_flags(addr: SocketAddr, src: &str, flags: u32) -> Raw {
        let mut stream = Raw::connect_plain(addr, src).await;
        stream.write_all(&flags.to_be_bytes()).await.unwrap();
        Raw { stream, zeroes: flags & wire::CLIENT_NO_ZEROES == 0 }
    }

    /// Sends an option; returns every reply up to the final one.
    pub async fn option(&mut self, option: u32, data: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let mut m = wire::IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&option.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        self.stream.write_all(&m).await.unwrap();
        let mut out = Vec::new();
        loop {
            let mut h = [0u8; 20];
            self.stream.read_exact(&mut h).await.unwrap();
            assert_eq!(u64::from_be_bytes(h[..8].try_into().unwrap()), wire::REPLY_MAGIC);
            let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
            let mut d = vec![0u8; len as usize];
            self.stream.read_exact(&mut d).await.unwrap();
            out.push((kind, d));
            if kind == rep::ACK || kind & 0x8000_0000 != 0 {
                return out;
            }
        }
    }

    /// Export names from `NBD_OPT_LIST`.
    pub async fn list(&mut self) -> Vec<String> {
        let r = self.option(opt::LIST, b"").await;
        assert_eq!(r.last().unwrap().0, rep::ACK);
        r.iter()
            .filter(|(k, _)| *k == rep::SERVER)
            .map(|(_, d)| {
                let n = u32::from_be_bytes(d[..4].try_into().unwrap()) as usize;
                String::from_utf8(d[4..4 + n].to_vec()).unwrap()
            })
            .collect()
    }

    /// `NBD_OPT_GO`; returns the final reply type.
    pub async fn go(&mut self, name: &str) -> u32 {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&0u16.to_be_bytes());
        self.option(opt::GO, &d).await.last().unwrap().0
    }

    /// `NBD_OPT_INFO` asking for `requests` (`NBD_INFO_*`); returns every reply.
    pub async fn info(&mut self, name: &str, requests: &[u16]) -> Vec<(u32, Vec<u8>)> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(requests.len() as u16).to_be_bytes());
        for r in requests {
            d.extend_from_slice(&r.to_be_bytes());
        }
        self.option(opt::INFO, &d).await
    }

    /// `NBD_OPT_EXPORT_NAME`: `Some((export size, transmission flags))` and the connection is in
    /// transmission, or `None`: the server closed the connection, its only way to refuse.
    pub async fn export_name(&mut self, name: &str) -> Option<(u64, u16)> {
        let mut m = wire::IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&opt::EXPORT_NAME.to_be_bytes());
        m.extend_from_slice(&(name.len() as u32).to_be_bytes());
        m.extend_from_slice(name.as_bytes());
        self.stream.write_all(&m).await.unwrap();
        let mut r = vec![0u8; if self.zeroes { 134 } else { 10 }];
        let mut got = 0;
        while got < r.len() {
            match self.stream.read(&mut r[got..]).await {
                Ok(0) => {
                    assert_eq!(got, 0, "the server closed in the middle of its NBD_OPT_EXPORT_NAME reply");
                    return None;
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && got == 0 => return None,
                Err(e) => panic!("NBD_OPT_EXPORT_NAME reply: {e}"),
            }
        }
        assert!(r[10..].iter().all(|&b| b == 0), "the 124 bytes after size and flags must be zero");
        Some((u64::from_be_bytes(r[..8].try_into().unwrap()), u16::from_be_bytes(r[8..10].try_into().unwrap())))
    }

    /// One request; returns (error, data read).
    pub async fn request(&mut self, kind: u16, flags: u16, offset: u64, len: u32, payload: &[u8]) -> (u32, Vec<u8>) {
        let mut m = Vec::new();
        wire::encode_request(&mut m, &wire::Request { flags, kind, cookie: 0x1234, offset, len });
        m.extend_from_slice(payload);
        self.stream.write_all(&m).await.unwrap();
        let mut h = [0u8; wire::SIMPLE_REPLY_LEN];
        self.stream.read_exact(&mut h).await.unwrap();
        assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), wire::SIMPLE_REPLY_MAGIC);
        assert_eq!(u64::from_be_bytes(h[8..16].try_into().unwrap()), 0x1234);
        let e = u32::from_be_bytes(h[4..8].try_into().unwrap());
        let mut data = Vec::new();
        if e == 0 && kind == wire::cmd::READ {
            data = vec![0u8; len as usize];
            self.stream.read_exact(&mut data).await.unwrap();
        }
        (e, data)
    }
}
