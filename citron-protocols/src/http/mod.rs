//! HTTP/1.1 backend: GET and HEAD of a DUT's namespace, over hyper.
//!
//! Every request is answered by asking the [`Catalog`] "this source address wants this path"; the
//! backend only speaks HTTP: percent-decoding, conditional requests (`ETag` = the artifact's sha256,
//! `If-None-Match` → 304), single byte ranges (206 / 416; several ranges get the whole file, which
//! RFC 9110 §14.2 allows), `Content-Type` by extension, and the one mapping from
//! [`ServeError`](citron_core::serve::ServeError) to a status code, [`status`].
//!
//! A GET answered with 304 counts as a read for `access_count` (the content was asked for);
//! HEAD never does.
//!
//! Large files are streamed in 1 MiB chunks read on the blocking pool, one chunk ahead of the
//! socket, so a transfer never holds more than two chunks and never the whole file.
//!
//! # Cancel safety
//! Dropping the future returned by [`serve`] stops accepting and drops every connection task at
//! once (their transfers end as "aborted" in the access log). Completing `shutdown` instead stops
//! accepting, lets requests in flight finish (for up to [`SHUTDOWN_GRACE`]) and closes idle
//! keep-alive connections.

mod body;
mod service;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use citron_core::serve::Catalog;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

pub use service::{content_type, percent_decode, status};

/// The most connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 16 * 1024;

/// How long a connection may wait for a complete request head: a client that trickles one is
/// dropped, and so is a keep-alive connection idle this long (clients reconnect; nginx's
/// default `keepalive_timeout` is 75 s).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(60);

/// How long requests in flight may take to finish after shutdown was asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves HTTP GET and HEAD on `listener` until `shutdown` completes.
///
/// The DUT is the connection's source address; `Host` (or the listener's own address) becomes
/// the `base_url` generated files such as `boot.ipxe` point back at.
///
/// ```no_run
/// # async fn f(catalog: std::sync::Arc<dyn citron_core::serve::Catalog>) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// citron_protocols::http::serve(listener, catalog, async { let _ = tokio::signal::ctrl_c().await; }).await
/// # }
/// ```
pub async fn serve(
    listener: TcpListener,
    catalog: Arc<dyn Catalog>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection task holds a clone; when the last is dropped, all have finished.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut builder = http1::Builder::new();
    // Bounds both a client that trickles a request head and an idle keep-alive connection.
    builder
        .keep_alive(true)
        .half_close(false)
        .max_buf_size(64 * 1024)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let builder = Arc::new(builder);

    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = limit.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => { backoff = Duration::from_millis(5); x }
                Err(e) => {
                    // EMFILE and friends: wait for connections to close rather than spin.
                    tracing::warn!(error = %e, "http: accept failed; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let svc = service::Handler::new(catalog.clone(), peer, local);
        let builder = builder.clone();
        let mut stop = stop_rx.clone();
        let done = done_tx.clone();
        tokio::spawn(async move {
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let res = tokio::select! {
                r = conn.as_mut() => r,
                _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "http: connection ended with an error");
            }
            drop(permit);
            drop(done);
        });
    }
    let _ = stop_tx.send(true);
    drop(done_tx);
    if tokio::time::timeout(SHUTDOWN_GRACE, done_rx.recv()).await.is_err() {
        tracing::warn!("http: transfers still running {SHUTDOWN_GRACE:?} after shutdown; dropping them");
    }
    Ok(())
}

/// `addr` as it goes into a URL (`[::1]:80` for IPv6).
pub(crate) fn url_authority(addr: SocketAddr) -> String {
    addr.to_string()
}
