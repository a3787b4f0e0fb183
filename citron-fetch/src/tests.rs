//! The cache fetching over the network: real HTTP servers on 127.0.0.1 (started here), moto's S3
//! server when installed, and the files the cache leaves on disk.

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

use citron_core::artifact::{Cache, CacheConfig, FetchError, S3Config};
use citron_core::job::Source;
use citron_core::Digest;

use crate::Network;

pub(super) const KERNEL: &[u8] = b"not really a kernel, but bytes all the same\n";

pub(super) fn open(dir: &Path, max_bytes: u64) -> Cache {
    Cache::open(dir, CacheConfig { max_bytes }, Arc::new(Network::new(S3Config::default()))).unwrap()
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
async fn artifact_unsupported_and_malformed_urls_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 20);
    let e = cache.get(&url("ftp://127.0.0.1/kernel"), None).await.unwrap_err();
    assert!(matches!(&e, FetchError::UnsupportedScheme { handled, .. } if handled.iter().any(|s| s == "s3")), "{e}");
    assert!(e.to_string().contains("use http, https, s3 or file"), "{e}");
    let e = cache.get(&url("s3://bucket"), None).await.unwrap_err();
    assert!(matches!(e, FetchError::BadUrl { .. }) && e.to_string().contains("s3://bucket/key"), "{e}");
}

/// Where `tool` is: on PATH, or in the venv scripts/setup-python.sh falls back to. When it is
/// nowhere, skips (prints why) or, with CITRON_E2E_STRICT=1, fails.
pub(super) fn require_tool(tool: &str) -> Option<std::path::PathBuf> {
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
pub(super) struct Moto {
    child: tokio::process::Child,
    pub(super) endpoint: String,
}

impl Moto {
    pub(super) async fn start(program: &Path) -> Moto {
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
        let client = crate::http::client().unwrap();
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
    let r = crate::http::client().unwrap().put(format!("{}/lab-artifacts", moto.endpoint)).send().await.unwrap();
    assert!(r.status().is_success(), "create bucket: {}", r.status());
    let store = crate::s3::store_for(&s3, "lab-artifacts").unwrap();
    let body = big_body();
    object_store::ObjectStoreExt::put(&store, &"boards/rpi4/kernel8.img".into(), Bytes::from(body.clone()).into()).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path(), CacheConfig { max_bytes: 16 << 20 }, Arc::new(Network::new(s3))).unwrap();
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
    use citron_core::job::{FileSpec, Lifetime, ResolvedJob, Step};
    use std::sync::atomic::Ordering;
    let srv = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = crate::gateway(citron_core::lab::LabConfig::default_lab(), dir.path()).unwrap();
    let spec = |path: &str, source: Source| FileSpec { path: path.into(), source, sha256: None, lifetime: Lifetime::default() };
    let job = ResolvedJob {
        name: None,
        results: None,
        origin: "test".into(),
        start: Step {
            kernel: Some(spec("kernel", srv.url("/kernel"))),
            files: [(citron_core::serve::Space::HTTP, vec![spec("a", srv.url("/kernel")), spec("b", data(b"inline"))])].into(),
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
