//! The cache against hostile jobs: a digest alone reads nothing, downloads in progress count
//! against the cap, oversized and disk-full downloads fail cleanly, URLs are shown redacted.
//! Real HTTP servers on 127.0.0.1 (started here).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::tests::{closed_port, data, files, open, url, TestServer, KERNEL};
use citron_core::artifact::FetchError;
use citron_core::job::Source;
use citron_core::Digest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_alone_reads_nothing() {
    let srv = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = b"job A's inline secret token";
    let d = Digest::of(secret);
    {
        let cache = open(dir.path(), 1 << 20);
        // Job A's secret is in the cache (and pinned: A is active).
        let held = cache.get(&data(secret), None).await.unwrap();
        // Job B names A's digest with a URL on a closed port: the fetch is tried, and fails.
        let e = cache.get(&url(&format!("http://127.0.0.1:{}/x", closed_port())), Some(d)).await.unwrap_err();
        assert!(matches!(e, FetchError::Network { .. }) && e.to_string().contains("connection refused"), "{e}");
        // With a live URL serving other bytes: fetched, and refused as a mismatch.
        let e = cache.get(&srv.url("/kernel"), Some(d)).await.unwrap_err();
        assert!(matches!(e, FetchError::DigestMismatch { .. }), "{e}");
        // With a local file it may read: read, and refused likewise.
        let own = tempfile::tempdir().unwrap();
        std::fs::write(own.path().join("f"), b"B's own file").unwrap();
        let e = cache.get(&Source::File(own.path().join("f")), Some(d)).await.unwrap_err();
        assert!(matches!(e, FetchError::DigestMismatch { .. }), "{e}");
        drop(held);
    }
    // Nor after a restart (the cache is indexed from disk then).
    let cache = open(dir.path(), 1 << 20);
    assert!(cache.contains(&d));
    let e = cache.get(&url(&format!("http://127.0.0.1:{}/x", closed_port())), Some(d)).await.unwrap_err();
    assert!(matches!(e, FetchError::Network { .. }), "{e}");
    // The URL that produced bytes keeps its hits; another URL with the same bytes fetches them
    // itself once (then the copies are one entry) and has its own hits from then on.
    let k = Digest::of(KERNEL);
    assert!(cache.get(&srv.url("/kernel"), Some(k)).await.unwrap().was_fetched());
    assert!(!cache.get(&srv.url("/kernel"), Some(k)).await.unwrap().was_fetched());
    assert!(cache.get(&srv.url("/other-name-same-bytes"), Some(k)).await.unwrap().was_fetched());
    assert!(!cache.get(&srv.url("/other-name-same-bytes"), Some(k)).await.unwrap().was_fetched());
    assert_eq!((srv.count("/kernel"), srv.count("/other-name-same-bytes")), (2, 1));
    assert_eq!(cache.stats().entries, 2);
}

/// A server sending `len` bytes of `b'x'` (with a Content-Length, or chunked without one):
/// `sent_first` bytes at once, the rest once `release` is notified.
async fn stalling_server(len: usize, sent_first: usize, chunked: bool, release: Arc<tokio::sync::Notify>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let release = release.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = |n: usize| -> Vec<u8> {
                    if !chunked {
                        return vec![b'x'; n];
                    }
                    let mut v = format!("{n:x}\r\n").into_bytes();
                    v.extend(std::iter::repeat_n(b'x', n));
                    v.extend_from_slice(b"\r\n");
                    v
                };
                let head = if chunked {
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_string()
                } else {
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n")
                };
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body(sent_first)).await;
                release.notified().await;
                let _ = s.write_all(&body(len - sent_first)).await;
                if chunked {
                    let _ = s.write_all(b"0\r\n\r\n").await;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    format!("http://{addr}/image")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_in_progress_count_against_the_cache_cap() {
    for chunked in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(open(dir.path(), 1 << 20));
        let release = Arc::new(tokio::sync::Notify::new());
        let (len, first) = (700_000usize, 650_000usize);
        let u = stalling_server(len, first, chunked, release.clone()).await;
        let c = cache.clone();
        let slow = tokio::spawn(async move { c.get(&url(&u), None).await.map(|a| a.len) });
        // Announced (or received) bytes are held while the download runs.
        let want = if chunked { first as u64 } else { len as u64 };
        let mut held = 0;
        for _ in 0..500 {
            held = cache.stats().downloading_bytes;
            if held >= want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(held >= want, "chunked={chunked}: {held} bytes reserved");
        // Another artifact that would overflow the cap together with it is refused, clearly.
        let e = cache.get(&data(&vec![7u8; 400_000]), None).await.unwrap_err();
        assert!(matches!(e, FetchError::CacheFull { .. }), "chunked={chunked}: {e}");
        assert!(e.to_string().contains("downloads in progress"), "{e}");
        release.notify_one();
        assert_eq!(slow.await.unwrap().unwrap(), len as u64);
        let s = cache.stats();
        assert_eq!((s.entries, s.bytes, s.downloading_bytes), (1, len as u64, 0), "chunked={chunked}");
        assert_eq!(files(dir.path()).len(), 1, "no partial file left: {:?}", files(dir.path()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announced_size_over_the_cap_is_refused_before_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 20);
    let release = Arc::new(tokio::sync::Notify::new());
    // Announces 2 MiB, sends 10 bytes and stalls: refused at the header, no waiting.
    let u = stalling_server(2 << 20, 10, false, release).await;
    let e = tokio::time::timeout(Duration::from_secs(10), cache.get(&url(&u), None)).await.unwrap().unwrap_err();
    assert!(matches!(e, FetchError::TooLarge { size, .. } if size == 2 << 20), "{e}");
    assert!(files(dir.path()).is_empty());
    assert_eq!(cache.stats().downloading_bytes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_with_credentials_are_redacted_in_errors_and_logs() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 20);
    let port = closed_port();
    let secret_url = format!("http://alice:pa55word@127.0.0.1:{port}/k?X-Amz-Signature=5ec12e7&X-Amz-Credential=AKIA5EC&token=t0k");
    let e = cache.get(&url(&secret_url), None).await.unwrap_err();
    let msg = e.to_string();
    for s in ["alice", "pa55word", "5ec12e7", "AKIA5EC", "t0k"] {
        assert!(!msg.contains(s), "{s} in {msg}");
    }
    assert!(msg.contains(&format!("http://***@127.0.0.1:{port}/k?***")), "{msg}");
    let e = cache.get(&url("ftp://u:p@h/x?sig=abc"), None).await.unwrap_err();
    assert!(!e.to_string().contains("sig=abc") && !e.to_string().contains("u:p"), "{e}");
}
