//! Prepared disk bases in the shared store (issue 14 §4): two gateways on one PostgreSQL and
//! one S3 bucket (moto's server); gateway A builds a tarball's ext4 base for its DUT and leaves
//! it in the bucket under `bases/`, gateway B, loading the same job for its own DUT, downloads
//! it instead of building it (B's log says so, and it never logs a base of its own left there),
//! keeps it sparse, and both DUTs read the same bytes over NBD (`nbdcopy`). The tarball has a
//! `sha256:`, so B takes it from the bucket's `inputs/` too: the origin is asked once, by A.

use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use citron_tests::{require_tool, run, Citron};

use super::nbd::{have_libnbd_python, Relay};
use super::shared_store::Moto;

/// A tarball of a few files, with a block of non-zero bytes so the base is not all zeroes.
fn tarball() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [("etc/hostname", b"dut\n".to_vec()), ("usr/lib/blob.bin", (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect())]
    {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

/// A loopback HTTP origin serving `body` at every path; counts the requests it answered.
fn origin(body: Vec<u8>) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let asked = Arc::new(AtomicUsize::new(0));
    let count = asked.clone();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut s, &mut buf);
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(&body));
        }
    });
    (port, asked)
}

/// Waits up to 30 s for `line` in the gateway's log.
fn wait_log(c: &Citron, line: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = c.stderr_so_far();
        if log.contains(line) {
            return log;
        }
        assert!(Instant::now() < deadline, "the gateway never logged {line:?}:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The export `root` as DUT `src` reads it, copied with nbdcopy.
fn copy_export(dir: &Path, c: &Citron, src: &str) -> Vec<u8> {
    let relay = Relay::start(dir, c, src);
    let out = dir.join(format!("copy-{src}.img"));
    let o = run("nbdcopy", &[&relay.uri("root"), out.to_str().unwrap()], None, Duration::from_secs(60));
    assert_eq!(o.code, 0, "nbdcopy: {}{}", o.stdout, o.stderr);
    std::fs::read(&out).unwrap()
}

#[test]
fn a_base_prepared_by_one_gateway_is_downloaded_by_another() {
    if !require_tool("curl") || !require_tool("nbdcopy") || !require_tool("mkfs.ext4") || !have_libnbd_python() {
        return;
    }
    let Some(pg) = super::state_pg::Postgres::start() else { return };
    let Some(moto) = Moto::start() else { return };
    assert_eq!(moto.curl(&["-X", "PUT", &moto.url("lab-bucket")]).code, 0, "create the bucket");
    let dir = tempfile::tempdir().unwrap();
    let tar = tarball();
    let sha = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(&tar))
    };
    let (port, asked) = origin(tar.clone());
    let lab = dir.path().join("lab.yaml");
    let text = format!(
        "duts:\n  - id: dut1\n    ip: [\"127.0.0.2\"]\n    gateway: a\n  - id: dut2\n    ip: [\"127.0.0.3\"]\n    gateway: b\nstore:\n  url: s3://lab-bucket/rack\n  endpoint: {}\n  region: us-east-1\n",
        moto.endpoint
    );
    std::fs::write(&lab, text).unwrap();
    let gateway = |name: &str| {
        let data = dir.path().join(name);
        let args =
            ["--gateway", name, "--lab", lab.to_str().unwrap(), "--state", &pg.url, "--data", data.to_str().unwrap(), "--tftp", "off"];
        Citron::start_with(&args, |c| {
            c.env("AWS_ACCESS_KEY_ID", "testing")
                .env("AWS_SECRET_ACCESS_KEY", "testing")
                .env_remove("AWS_ENDPOINT_URL")
                .env("RUST_LOG", "info");
        })
        .unwrap_or_else(|f| panic!("gateway {name} did not start: {}", f.stderr))
    };
    let job = format!(
        "deployment:\n  start:\n    storage:\n      nbd:\n        - name: root\n          filesystem: {{ type: ext4, size: 64M, data: {{ url: \"http://127.0.0.1:{port}/root.tar\", sha256: {sha} }} }}\n"
    );

    // A builds the base and leaves it in the bucket, under bases/ (not inputs/ nor results/).
    let (a, b) = (gateway("a"), gateway("b"));
    let started = Instant::now();
    let (code, body) = a.put_job("dut1", &job);
    assert_eq!(code, 200, "{body}");
    let built = started.elapsed();
    wait_log(&a, "prepared disk base left in the shared store");
    let listing = moto.curl(&[&moto.url("lab-bucket?list-type=2&prefix=rack/bases/")]).stdout;
    assert_eq!(listing.matches(".zst</Key>").count(), 1, "{listing}");
    assert_eq!(listing.matches(".json</Key>").count(), 1, "{listing}");

    // B, for its own DUT, downloads it instead of building it.
    let started = Instant::now();
    let (code, body) = b.put_job("dut2", &job);
    assert_eq!(code, 200, "{body}");
    let downloaded = started.elapsed();
    let log = wait_log(&b, "prepared disk base taken from the shared store");
    assert!(!log.contains("prepared disk base left in the shared store"), "B built a base of its own:\n{log}");
    assert_eq!(asked.load(Ordering::SeqCst), 1, "the origin was asked by A only (B took the tarball from the bucket)");
    eprintln!("job load with the base built: {built:?}; with the base downloaded: {downloaded:?}");

    // Sparse on B as on A: a 64 MiB ext4 holding 300 KB of files.
    let bases: Vec<_> = std::fs::read_dir(dir.path().join("b/disks/bases"))
        .expect("B's bases")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "img"))
        .collect();
    assert_eq!(bases.len(), 1, "B's bases: {bases:?}");
    let m = std::fs::metadata(&bases[0]).unwrap();
    assert_eq!(m.len(), 64 << 20);
    assert!(m.blocks() * 512 < 16 << 20, "B's base is sparse: {} bytes allocated", m.blocks() * 512);

    // Both DUTs read the same disk.
    let from_a = copy_export(dir.path(), &a, "127.0.0.2");
    let from_b = copy_export(dir.path(), &b, "127.0.0.3");
    assert_eq!(from_a.len(), 64 << 20);
    assert!(from_a == from_b, "A's and B's exports differ");
}
