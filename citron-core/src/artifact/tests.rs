//! Cache and source tests: real HTTP servers on 127.0.0.1 (started here), moto's S3 server when
//! installed, and the files the cache leaves on disk.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use super::*;
use crate::digest::Digest;
use crate::job::Source;

pub(super) const KERNEL: &[u8] = b"not really a kernel, but bytes all the same\n";

pub(super) fn open(dir: &Path, max_bytes: u64) -> Cache {
    Cache::open(dir, CacheConfig { max_bytes }, S3Config::default()).unwrap()
}

pub(super) fn data(b: &[u8]) -> Source {
    Source::Data(Bytes::copy_from_slice(b))
}

pub(super) fn url(s: &str) -> Source {
    Source::Url(s.parse().unwrap())
}

/// Every file under the cache directory (`sha256/` and `tmp/`), sorted.
pub(super) fn files(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for sub in ["sha256", "tmp"] {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            for e in rd {
                v.push(format!("{sub}/{}", e.unwrap().file_name().to_string_lossy()));
            }
        }
    }
    v.sort();
    v
}

/// A loopback port nothing listens on.
pub(super) fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn big_body() -> Vec<u8> {
    (0..3u32 << 20).map(|i| (i % 251) as u8).collect()
}

/// A small HTTP server on 127.0.0.1 counting requests per path.
pub(super) struct TestServer {
    addr: SocketAddr,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl TestServer {
    pub(super) async fn start() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let h = hits.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let h = h.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let h = h.clone();
                        async move { Ok::<_, Infallible>(route(req, h).await) }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(sock), svc).await;
                });
            }
        });
        TestServer { addr, hits }
    }

    pub(super) fn url(&self, path: &str) -> Source {
        url(&format!("http://{}{path}", self.addr))
    }

    pub(super) fn count(&self, path: &str) -> usize {
        self.hits.lock().get(path).copied().unwrap_or(0)
    }
}

async fn route(req: Request<Incoming>, hits: Arc<Mutex<HashMap<String, usize>>>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    *hits.lock().entry(path.clone()).or_default() += 1;
    let ok = |b: Vec<u8>| Response::new(Full::new(Bytes::from(b)));
    match path.as_str() {
        "/kernel" | "/other-name-same-bytes" => ok(KERNEL.to_vec()),
        "/slow" => {
            // Keeps the download open long enough that concurrent callers overlap.
            tokio::time::sleep(Duration::from_millis(300)).await;
            ok(b"slow bytes".to_vec())
        }
        "/big" => ok(big_body()),
        "/slow-missing" => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut r = Response::new(Full::new(Bytes::from_static(b"gone\n")));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
        _ => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"no such file\n")));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    }
}

#[tokio::test]
async fn artifact_data_is_stored_under_its_sha256_then_hit() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 20);
    let a = cache.get(&data(KERNEL), None).await.unwrap();
    assert!(a.was_fetched());
    assert_eq!(a.digest, Digest::of(KERNEL));
    assert_eq!(a.path, dir.path().join("sha256").join(Digest::of(KERNEL).hex()));
    assert_eq!(std::fs::read(&a.path).unwrap(), KERNEL);
    let b = cache.get(&data(KERNEL), None).await.unwrap();
    assert!(!b.was_fetched());
    assert_eq!(files(dir.path()), vec![format!("sha256/{}", Digest::of(KERNEL).hex())]);
    let s = cache.stats();
    assert_eq!((s.entries, s.bytes, s.hits, s.fetches), (1, KERNEL.len() as u64, 1, 1));
}

#[tokio::test]
async fn artifact_digest_mismatch_names_both_digests_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let src_dir = tempfile::tempdir().unwrap();
    let f = src_dir.path().join("kernel");
    std::fs::write(&f, KERNEL).unwrap();
    let cache = open(dir.path(), 1 << 20);
    let wrong = Digest::of(b"something else");
    let e = cache.get(&Source::File(f.clone()), Some(wrong)).await.unwrap_err();
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(matches!(e, FetchError::DigestMismatch { .. }), "{msg}");
    assert!(msg.contains(&wrong.hex()) && msg.contains(&Digest::of(KERNEL).hex()), "{msg}");
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
    // Inline data is checked before anything is written.
    let e = cache.get(&data(KERNEL), Some(wrong)).await.unwrap_err();
    assert!(matches!(e, FetchError::DigestMismatch { .. }), "{e}");
    assert!(files(dir.path()).is_empty());
}

#[tokio::test]
async fn artifact_local_file_is_read_again_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let src_dir = tempfile::tempdir().unwrap();
    let f = src_dir.path().join("initramfs");
    std::fs::write(&f, b"version one").unwrap();
    let cache = open(dir.path(), 1 << 20);
    let src = Source::File(f.clone());
    assert!(cache.get(&src, None).await.unwrap().was_fetched());
    assert!(!cache.get(&src, None).await.unwrap().was_fetched());
    std::fs::write(&f, b"version two, longer").unwrap();
    let a = cache.get(&src, None).await.unwrap();
    assert!(a.was_fetched());
    assert_eq!(std::fs::read(&a.path).unwrap(), b"version two, longer");
    let missing = cache.get(&Source::File(src_dir.path().join("nope")), None).await.unwrap_err();
    assert!(matches!(missing, FetchError::File { .. }), "{missing}");
    assert!(missing.to_string().contains("nope"), "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_url_is_fetched_once_then_hit_and_digest_hits_survive_restart() {
    let srv = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let src = srv.url("/kernel");
    let digest = {
        let cache = open(dir.path(), 1 << 20);
        let a = cache.get(&src, None).await.unwrap();
        assert!(a.was_fetched());
        assert_eq!(std::fs::read(&a.path).unwrap(), KERNEL);
        // Remembered for this process: no second request.
        assert!(!cache.get(&src, None).await.unwrap().was_fetched());
        assert_eq!(srv.count("/kernel"), 1);
        // Another URL with the same bytes is one cache entry.
        let b = cache.get(&srv.url("/other-name-same-bytes"), None).await.unwrap();
        assert_eq!((b.digest, cache.stats().entries), (a.digest, 1));
        a.digest
    };
    // A new process: with the digest it is a hit without a request...
    let cache = open(dir.path(), 1 << 20);
    assert!(!cache.get(&src, Some(digest)).await.unwrap().was_fetched());
    assert_eq!(srv.count("/kernel"), 1);
    // ...without one, the documented policy is to fetch again.
    assert!(cache.get(&src, None).await.unwrap().was_fetched());
    assert_eq!(srv.count("/kernel"), 2);
    cache.forget_source(&src);
    assert!(cache.get(&src, None).await.unwrap().was_fetched());
    assert_eq!(srv.count("/kernel"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_fifty_concurrent_gets_make_one_request() {
    let srv = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(open(dir.path(), 1 << 20));
    let src = srv.url("/slow");
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (c, s) = (cache.clone(), src.clone());
            tokio::spawn(async move { c.get(&s, None).await.map(|a| (a.digest, a.was_fetched())) })
        })
        .collect();
    let mut fetched = 0;
    for t in tasks {
        let (d, f) = t.await.unwrap().unwrap();
        assert_eq!(d, Digest::of(b"slow bytes"));
        fetched += f as usize;
    }
    assert_eq!(srv.count("/slow"), 1);
    assert_eq!(fetched, 1);
    assert_eq!((cache.stats().fetches, cache.stats().hits), (1, 49));
    assert_eq!(files(dir.path()).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_concurrent_gets_with_digest_share_one_request_too() {
    let srv = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(open(dir.path(), 1 << 20));
    let d = Digest::of(b"slow bytes");
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (c, s) = (cache.clone(), srv.url("/slow"));
            tokio::spawn(async move { c.get(&s, Some(d)).await.map(|a| a.digest) })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), d);
    }
    assert_eq!(srv.count("/slow"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_http_404_says_what_to_check_and_leaves_no_file() {
    let srv = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 20);
    let e = cache.get(&srv.url("/missing/vmlinuz"), None).await.unwrap_err();
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(matches!(e, FetchError::Status { status: 404, .. }), "{msg}");
    assert!(msg.contains("/missing/vmlinuz") && msg.contains("404 Not Found") && msg.contains("check the URL"), "{msg}");
    assert!(files(dir.path()).is_empty());
    // Errors are not remembered: the next load asks again.
    let _ = cache.get(&srv.url("/missing/vmlinuz"), None).await.unwrap_err();
    assert_eq!(srv.count("/missing/vmlinuz"), 2);
}

#[tokio::test]
async fn artifact_connection_refused_says_so() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 20);
    let e = cache.get(&url(&format!("http://127.0.0.1:{port}/kernel")), None).await.unwrap_err();
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(matches!(e, FetchError::Network { .. }), "{msg}");
    assert!(msg.contains("connection refused") && msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    assert!(files(dir.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_truncated_download_leaves_no_file() {
    // A server that promises 100000 bytes and hangs up after 10.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n0123456789").await;
            let _ = s.shutdown().await;
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 20);
    let e = cache.get(&url(&format!("http://{addr}/kernel")), None).await.unwrap_err();
    eprintln!("{e}");
    assert!(matches!(e, FetchError::Network { .. }), "{e}");
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_larger_than_the_cache_is_too_large() {
    let srv = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 20);
    let e = cache.get(&srv.url("/big"), None).await.unwrap_err();
    assert!(matches!(e, FetchError::TooLarge { size, max, .. } if size == 3 << 20 && max == 1 << 20), "{e}");
    assert!(e.to_string().contains("cache.max_size"), "{e}");
    let e = cache.get(&data(&vec![7u8; 2 << 20]), None).await.unwrap_err();
    assert!(matches!(e, FetchError::TooLarge { .. }), "{e}");
    assert!(files(dir.path()).is_empty());
    // A big download through a cache that fits it streams correctly.
    let dir2 = tempfile::tempdir().unwrap();
    let cache = open(dir2.path(), 8 << 20);
    let a = cache.get(&srv.url("/big"), Some(Digest::of(&big_body()))).await.unwrap();
    assert_eq!(a.len, 3 << 20);
}

#[tokio::test]
async fn artifact_eviction_is_lru_and_spares_pinned_entries() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 300);
    let (a, b, c, d) = ([b'a'; 100], [b'b'; 100], [b'c'; 100], [b'd'; 100]);
    for x in [&a, &b, &c] {
        drop(cache.get(&data(x), None).await.unwrap());
    }
    // `a` used again: `b` is now the least recently used.
    drop(cache.get(&data(&a), None).await.unwrap());
    let pd = cache.get(&data(&d), None).await.unwrap();
    assert!(!cache.contains(&Digest::of(&b)));
    assert!(!cache.path_of(&Digest::of(&b)).exists());
    for x in [&a, &c, &d] {
        assert!(cache.contains(&Digest::of(x)));
    }
    // Pin `c` (the LRU) and `a`: a new entry must evict the unpinned `d`, although `d` is newer.
    let pc = cache.get(&data(&c), None).await.unwrap();
    let pa = cache.get(&data(&a), None).await.unwrap();
    let pa2 = pa.clone();
    drop(pa);
    drop(pd);
    let e_bytes = [b'e'; 100];
    let pe = cache.get(&data(&e_bytes), None).await.unwrap();
    assert!(!cache.contains(&Digest::of(&d)));
    assert!(cache.contains(&Digest::of(&c)) && cache.contains(&Digest::of(&a)));
    assert_eq!(cache.stats().pinned_bytes, 300);
    // Everything pinned: no room, and the error says why.
    let e = cache.get(&data(&[b'f'; 100]), None).await.unwrap_err();
    assert!(matches!(e, FetchError::CacheFull { pinned: 300, .. }), "{e}");
    assert!(e.to_string().contains("active jobs"), "{e}");
    assert_eq!(files(dir.path()).len(), 3);
    // The clone still pinned `a`; once all go, the LRU of them (`c`) is evicted first.
    drop((pc, pa2, pe));
    assert_eq!(cache.stats().pinned_bytes, 0);
    drop(cache.get(&data(&[b'f'; 100]), None).await.unwrap());
    assert!(!cache.contains(&Digest::of(&c)));
    assert_eq!(cache.stats().bytes, 300);
}

#[tokio::test]
async fn artifact_open_indexes_existing_files_and_removes_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let (d1, d2) = {
        let cache = open(dir.path(), 1 << 20);
        let a = cache.get(&data(b"first"), None).await.unwrap();
        let b = cache.get(&data(b"second"), None).await.unwrap();
        (a.digest, b.digest)
    };
    std::fs::write(dir.path().join("tmp/123-0.part"), b"half a download").unwrap();
    std::fs::write(dir.path().join("sha256/garbage.tmp"), b"x").unwrap();
    // Recency from mtime: make `first` the most recent.
    let f = std::fs::File::options().write(true).open(dir.path().join("sha256").join(d1.hex())).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(60)).unwrap();
    drop(f);
    let cache = open(dir.path(), 1 << 20);
    let s = cache.stats();
    assert_eq!((s.entries, s.bytes), (2, 11));
    assert_eq!(files(dir.path()), {
        let mut v = vec![format!("sha256/{}", d1.hex()), format!("sha256/{}", d2.hex())];
        v.sort();
        v
    });
    // Knowing a digest grants nothing: a URL that never produced `first` (its port is closed)
    // does not get the cached copy.
    let dead = url(&format!("http://127.0.0.1:{}/first", closed_port()));
    let e = cache.get(&dead, Some(d1)).await.unwrap_err();
    assert!(matches!(e, FetchError::Network { .. }), "{e}");
    drop(cache);
    // Reopened with less room: the least recent (`second`) goes.
    let cache = open(dir.path(), 6);
    assert!(cache.contains(&d1) && !cache.contains(&d2));
}

#[tokio::test]
async fn artifact_sink_refuses_announced_and_actual_overflow() {
    let mut out = Vec::new();
    let mut sink = Sink::new(&mut out, "x").with_limit(10);
    assert!(matches!(sink.set_total(Some(11)), Err(FetchError::TooLarge { size: 11, .. })));
    sink.set_total(None).unwrap();
    sink.write(b"0123456789").await.unwrap();
    assert!(matches!(sink.write(b"!").await, Err(FetchError::TooLarge { size: 11, .. })));
    assert_eq!(sink.finish(), (10, Digest::of(b"0123456789")));
}

#[tokio::test]
async fn artifact_unsupported_and_malformed_urls_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 20);
    let e = cache.get(&url("ftp://127.0.0.1/kernel"), None).await.unwrap_err();
    assert!(matches!(e, FetchError::UnsupportedScheme(_)), "{e}");
    let e = cache.get(&url("s3://bucket"), None).await.unwrap_err();
    assert!(matches!(e, FetchError::BadUrl { .. }) && e.to_string().contains("s3://bucket/key"), "{e}");
}

/// Where `tool` is: on PATH, or in the venv scripts/setup-python.sh falls back to. When it is
/// nowhere, skips (prints why) or, with CITRON_E2E_STRICT=1, fails.
fn require_tool(tool: &str) -> Option<std::path::PathBuf> {
    let venv = std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share/citron-venv/bin"));
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(venv)
        .map(|d| d.join(tool))
        .find(|p| p.is_file());
    if found.is_none() {
        if std::env::var("CITRON_E2E_STRICT").as_deref() == Ok("1") {
            panic!("{tool} is required (CITRON_E2E_STRICT=1); install it with scripts/setup-python.sh");
        }
        eprintln!("SKIP: {tool} not found; install it with scripts/setup-python.sh");
    }
    found
}

/// moto's S3 server on a free loopback port, killed when dropped.
struct Moto {
    child: tokio::process::Child,
    endpoint: String,
}

impl Moto {
    async fn start(program: &Path) -> Moto {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = tokio::process::Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start moto_server");
        let endpoint = format!("http://127.0.0.1:{port}");
        let client = super::http::client().unwrap();
        for _ in 0..300 {
            if client.get(format!("{endpoint}/moto-api/")).send().await.is_ok() {
                return Moto { child, endpoint };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("moto_server did not answer on {endpoint} within 30 s");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_s3_object_from_moto() {
    let Some(program) = require_tool("moto_server") else {
        return;
    };
    let moto = Moto::start(&program).await;
    let s3 = S3Config {
        endpoint: Some(moto.endpoint.clone()),
        region: Some("us-east-1".into()),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
    };
    // Create the bucket (object_store has no call for it), then upload through object_store.
    let r = super::http::client().unwrap().put(format!("{}/lab-artifacts", moto.endpoint)).send().await.unwrap();
    assert!(r.status().is_success(), "create bucket: {}", r.status());
    let store = super::s3::store_for(&s3, "lab-artifacts").unwrap();
    let body = big_body();
    object_store::ObjectStoreExt::put(&store, &"boards/rpi4/kernel8.img".into(), Bytes::from(body.clone()).into()).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path(), CacheConfig { max_bytes: 16 << 20 }, s3).unwrap();
    let src = url("s3://lab-artifacts/boards/rpi4/kernel8.img");
    let a = cache.get(&src, Some(Digest::of(&body))).await.unwrap();
    assert!(a.was_fetched());
    assert_eq!(std::fs::read(&a.path).unwrap(), body);
    assert!(!cache.get(&src, None).await.unwrap().was_fetched());

    let e = cache.get(&url("s3://lab-artifacts/boards/rpi4/missing.img"), None).await.unwrap_err();
    assert!(matches!(e, FetchError::Status { status: 404, .. }), "{e}");
    assert!(e.to_string().contains("s3://lab-artifacts/boards/rpi4/missing.img"), "{e}");
    let e = cache.get(&url("s3://no-such-bucket/kernel"), None).await.unwrap_err();
    eprintln!("{e}");
    assert!(e.to_string().contains("s3://no-such-bucket/kernel"), "{e}");
    assert_eq!(files(dir.path()).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_gateway_counts_hits_and_misses_and_pins_active_jobs() {
    use crate::job::{FileSpec, Lifetime, ResolvedJob, Step};
    use std::sync::atomic::Ordering;
    let srv = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = crate::Gateway::new(crate::lab::LabConfig::default_lab(), dir.path()).unwrap();
    let spec = |path: &str, source: Source| FileSpec { path: path.into(), source, sha256: None, lifetime: Lifetime::default() };
    let job = ResolvedJob {
        origin: "test".into(),
        start: Step {
            kernel: Some(spec("kernel", srv.url("/kernel"))),
            files: [(crate::serve::Space::HTTP, vec![spec("a", srv.url("/kernel")), spec("b", data(b"inline"))])].into(),
            ..Step::default()
        },
        continue_: None,
    };
    gw.set_resolved_job(&"dut1".into(), job.clone()).await.unwrap();
    let log = gw.access_log();
    let counts = || (log.cache_hits.load(Ordering::Relaxed), log.cache_misses.load(Ordering::Relaxed));
    // Three loads, two downloads: "a" and "b" fetch concurrently, the kernel then hits "a"'s copy.
    assert_eq!(counts(), (1, 2));
    assert_eq!(srv.count("/kernel"), 1);
    assert_eq!(gw.cache().stats().pinned_bytes, (KERNEL.len() + 6) as u64);
    gw.set_resolved_job(&"dut2".into(), job).await.unwrap();
    assert_eq!(counts(), (4, 2));
    assert!(gw.clear_job(&"dut1".into()).unwrap() && gw.clear_job(&"dut2".into()).unwrap());
    assert_eq!(gw.cache().stats().pinned_bytes, 0);
    assert!(log.prometheus().contains("citron_cache_misses_total 2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_cancelled_get_still_completes_the_download_once() {
    let srv = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 20);
    let src = srv.url("/slow");
    // The caller gives up while the server is still sleeping...
    assert!(tokio::time::timeout(Duration::from_millis(50), cache.get(&src, None)).await.is_err());
    // ...the download goes on; the next caller joins it or finds its result.
    let a = cache.get(&src, None).await.unwrap();
    assert_eq!(std::fs::read(&a.path).unwrap(), b"slow bytes");
    assert_eq!(srv.count("/slow"), 1);
    assert_eq!(files(dir.path()).len(), 1);
}

#[tokio::test]
async fn artifact_long_downloads_log_progress() {
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let captured = Captured::default();
    let c = captured.clone();
    let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || c.clone()).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut out = Vec::new();
    let mut sink = Sink::new(&mut out, "http://example/kernel").with_progress_interval(Duration::from_millis(10));
    sink.set_total(Some(300)).unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        sink.write(&[0u8; 100]).await.unwrap();
    }
    sink.finish();
    let log = String::from_utf8(captured.0.lock().clone()).unwrap();
    assert!(log.contains("downloading") && log.contains("bytes=100") && log.contains("total=300"), "{log}");
    assert!(log.contains("downloaded") && log.contains("bytes=300"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_concurrent_gets_share_one_failure() {
    let srv = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(open(dir.path(), 1 << 20));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (c, s) = (cache.clone(), srv.url("/slow-missing"));
            tokio::spawn(async move { c.get(&s, None).await.map(|a| a.digest) })
        })
        .collect();
    for t in tasks {
        let e = t.await.unwrap().unwrap_err();
        assert!(matches!(e, FetchError::Status { status: 404, .. }), "{e}");
    }
    assert_eq!(srv.count("/slow-missing"), 1);
    assert!(files(dir.path()).is_empty());
}

#[tokio::test]
async fn a_cached_file_changed_on_disk_is_fetched_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let digest = {
        let cache = open(dir.path(), 1 << 20);
        let a = cache.get(&data(KERNEL), None).await.unwrap();
        a.digest
    };
    // Behind citron's back, while it is stopped.
    let path = dir.path().join("sha256").join(digest.hex());
    std::fs::write(&path, b"tampered").unwrap();

    let cache = open(dir.path(), 1 << 20);
    let a = cache.get(&data(KERNEL), Some(digest)).await.unwrap();
    assert!(a.was_fetched(), "a file that no longer matches its name is not a cache hit");
    assert_eq!(std::fs::read(&a.path).unwrap(), KERNEL);
    // Once checked, later uses are plain hits.
    drop(a);
    assert!(!cache.get(&data(KERNEL), Some(digest)).await.unwrap().was_fetched());
}

#[tokio::test]
async fn a_file_source_swapped_for_a_symlink_after_the_check_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let root_path = std::fs::canonicalize(root.path()).unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir(root_path.join("job")).unwrap();
    std::fs::write(root_path.join("job/kernel"), b"inside").unwrap();
    std::fs::write(outside.path().join("kernel"), b"outside the root").unwrap();
    // The path as `render` checked it: canonical, inside the root.
    let checked = root_path.join("job/kernel");
    // Then the directory is replaced by a symlink out of the root.
    std::fs::remove_dir_all(root_path.join("job")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root_path.join("job")).unwrap();

    let cache_dir = tempfile::tempdir().unwrap();
    let cache = open(cache_dir.path(), 1 << 20);
    let e = cache.get(&Source::File(checked), None).await.unwrap_err();
    assert!(e.to_string().contains("changed since the job was checked"), "{e}");
    assert_eq!(files(cache_dir.path()), Vec::<String>::new(), "nothing cached");
}
