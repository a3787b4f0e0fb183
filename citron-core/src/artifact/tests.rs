//! Cache and source tests that need no network: inline data, local files, eviction, the sink,
//! and the files the cache leaves on disk. Downloads over HTTP and S3 are tested in
//! `citron-fetch`, with real servers.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use super::*;
use crate::digest::Digest;
use crate::job::Source;

const KERNEL: &[u8] = b"not really a kernel, but bytes all the same\n";

fn open(dir: &Path, max_bytes: u64) -> Cache {
    Cache::open(dir, CacheConfig { max_bytes }, Arc::new(NoNetwork)).unwrap()
}

fn data(b: &[u8]) -> Source {
    Source::Data(Bytes::copy_from_slice(b))
}

/// Every file under the cache directory (`sha256/` and `tmp/`), sorted.
fn files(dir: &Path) -> Vec<String> {
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

#[tokio::test]
async fn a_changed_local_file_is_read_again_even_with_the_old_digest() {
    let dir = tempfile::tempdir().unwrap();
    let src_dir = tempfile::tempdir().unwrap();
    let f = src_dir.path().join("secret");
    std::fs::write(&f, b"what the file held yesterday").unwrap();
    let cache = open(dir.path(), 1 << 20);
    let old = cache.get(&Source::File(f.clone()), None).await.unwrap().digest;
    assert!(!cache.get(&Source::File(f.clone()), Some(old)).await.unwrap().was_fetched());
    // The file now holds something else: its old content is not this path's any more.
    std::fs::write(&f, b"what it holds today, longer").unwrap();
    let e = cache.get(&Source::File(f.clone()), Some(old)).await.unwrap_err();
    assert!(matches!(e, FetchError::DigestMismatch { .. }), "{e}");
}

#[tokio::test]
async fn a_sink_refuses_more_than_announced_and_names_a_full_disk() {
    let mut out = Vec::new();
    let mut sink = Sink::new(&mut out, "http://h/x");
    sink.set_total(Some(4)).unwrap();
    sink.write(b"1234").await.unwrap();
    let e = sink.write(b"5").await.unwrap_err();
    assert!(matches!(e, FetchError::LongerThanAnnounced { announced: 4, .. }), "{e}");
    // A writer answering as a full file system does (ENOSPC).
    struct Full;
    impl tokio::io::AsyncWrite for Full {
        fn poll_write(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>, _: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
            std::task::Poll::Ready(Err(std::io::Error::from_raw_os_error(libc::ENOSPC)))
        }
        fn poll_flush(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }
    let mut full = Full;
    let mut sink = Sink::new(&mut full, "http://h/kernel");
    let e = sink.write(b"bytes").await.unwrap_err();
    assert!(matches!(e, FetchError::DiskFull { .. }), "{e}");
    assert!(e.to_string().contains("http://h/kernel") && e.to_string().contains("disk holding the cache is full"), "{e}");
}

#[tokio::test]
async fn a_url_no_fetcher_handles_is_refused_naming_the_handled_schemes() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 20);
    let e = cache.get(&Source::Url("https://u:p@example.com/kernel".parse().unwrap()), None).await.unwrap_err();
    assert!(matches!(&e, FetchError::UnsupportedScheme { handled, .. } if handled.is_empty()), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("without fetchers") && msg.contains("https://***@example.com/kernel") && !msg.contains("u:p"), "{msg}");
    assert!(files(dir.path()).is_empty());
}

#[tokio::test]
async fn a_gateway_without_fetchers_refuses_urls_and_containers_clearly() {
    use crate::job::{JobDescription, Origin};
    let dir = tempfile::tempdir().unwrap();
    let gw = crate::Gateway::new(crate::lab::LabConfig::default_lab(), dir.path()).unwrap();
    let url_job = "deployment:\n  start:\n    storage:\n      http:\n        - path: /k\n          url: http://127.0.0.1:1/k\n";
    let job = JobDescription::parse(url_job, Origin::named("job.yaml")).unwrap();
    let e = gw.set_job(&"dut1".into(), &job).await.unwrap_err().to_string();
    assert!(e.contains("http://127.0.0.1:1/k") && e.contains("without fetchers"), "{e}");
    let container_job = "deployment:\n  start:\n    storage:\n      nbd:\n        - name: root\n          filesystem:\n            type: ext4\n            size: 16M\n            container: docker://127.0.0.1:1/x:y\n";
    let job = JobDescription::parse(container_job, Origin::named("job.yaml")).unwrap();
    let e = gw.set_job(&"dut1".into(), &job).await.unwrap_err().to_string();
    assert!(e.contains("docker://127.0.0.1:1/x:y") && e.contains("without a container registry client"), "{e}");
}
