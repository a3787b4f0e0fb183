//! HTTP/1.1 backend: GET and HEAD of a DUT's namespace, and PUT of its uploads (under
//! `_citron/results/`, streamed to [`Catalog::write`](citron_core::serve::Catalog::write),
//! which decides where they go and how large they may be), over hyper.
//!
//! Every request is answered by asking the [`Catalog`] "this source address wants this path"; the
//! backend only speaks HTTP: percent-decoding, conditional requests (`ETag` = the artifact's sha256,
//! `If-None-Match` → 304), single byte ranges (206 / 416; several ranges get the whole file, which
//! RFC 9110 §14.2 allows), `Content-Type` by extension, and the one mapping from
//! [`ServeError`](citron_core::serve::ServeError) to a status code, [`status`].
//!
//! A GET answered with 304 counts as a read for `access_count` (the content was asked for);
//! HEAD never does, nor does a 416: a GET with a `Range` header is first looked up without
//! reading (as a HEAD, but not logged), and opened for reading only if the range is satisfiable,
//! so an out-of-range request cannot spend a read-once secret; a 416 is logged as a refusal.
//!
//! Large files are streamed in chunks of up to 1 MiB, read without blocking when the page cache
//! holds them and on the blocking pool otherwise (see `body.rs`), so a transfer never holds more
//! than a chunk or two and never the whole file.
//!
//! Keep-alive connections idle for [`PARK_AFTER`] are *parked*: hyper's per-connection buffers
//! are dropped and only the socket is kept until the client sends again, so thousands of idle
//! DUT connections cost little; parked connections close after `limits.idle_timeout`.
//!
//! Connections are accepted by the shared loop in `listen` (caps per listener and per peer,
//! backoff on `EMFILE`, drain on shutdown).
//!
//! # Cancel safety
//! Dropping the future returned by [`serve`] stops accepting and aborts every connection task at
//! once (their transfers end as "aborted" in the access log). Completing `shutdown` instead stops
//! accepting, closes idle keep-alive connections and lets requests in flight finish for up to
//! [`SHUTDOWN_GRACE`]; connections still transferring then are cut the same way, so `serve`
//! returns within the grace period and leaves no task behind.

mod body;
mod rewind;
pub(crate) mod service;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use citron_core::serve::Catalog;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub use service::{content_type, percent_decode, status};

/// How long a keep-alive connection stays idle before its HTTP state is dropped (see
/// [`serve`]'s connections: the socket stays open, the buffers go).
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// How long requests in flight may take to finish after shutdown was asked for.
pub const SHUTDOWN_GRACE: Duration = crate::listen::SHUTDOWN_GRACE;

/// Serves HTTP GET and HEAD on `listener` until `shutdown` completes.
///
/// The DUT is the connection's source address; `Host` (or the listener's own address) becomes
/// the `base_url` generated files such as `boot.ipxe` point back at. The catalog's
/// [`limits`](Catalog::limits) cap connections (`connections`, `connections_per_peer`) and time
/// out request heads (`header_timeout`) and idle keep-alive connections (`idle_timeout`).
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
    let limits = catalog.limits();
    let builder = Arc::new(builder(&limits));
    let idle = limits.idle_timeout.non_zero();
    crate::listen::serve("http", listener, crate::listen::Caps::from_limits(&limits), shutdown, move |stream, peer, stop| {
        let _ = stream.set_nodelay(true);
        let svc = service::Handler::new(catalog.clone(), peer, local);
        let builder = builder.clone();
        async move {
            let activity = svc.activity.clone();
            if let Err(e) = connection(stream, svc, activity, &builder, idle, stop).await {
                tracing::debug!(%peer, error = %e, "http: connection ended with an error");
            }
        }
    })
    .await
}

/// Serves any hyper service on `listener` with everything [`serve`] gives its connections: the
/// shared accept loop (`limits.connections`, `connections_per_peer`, backoff, drain on
/// `shutdown`), `header_timeout`, keep-alive parking and `idle_timeout`. `make(peer, local)`
/// builds the service of one connection (`local`: the address it reached). The lab API serves
/// its router this way, so that it is bounded exactly as the DUTs' HTTP is.
///
/// ```no_run
/// # async fn f(limits: citron_core::limits::Limits) -> std::io::Result<()> {
/// use std::convert::Infallible;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let hello = hyper::service::service_fn(|_req| async {
///     Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from("hi\n"))))
/// });
/// citron_protocols::http::serve_service("hello", listener, &limits, std::future::pending(), move |_peer, _local| hello.clone()).await
/// # }
/// ```
pub async fn serve_service<M, S, B>(
    what: &'static str,
    listener: TcpListener,
    limits: &citron_core::limits::Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    make: M,
) -> io::Result<()>
where
    M: Fn(SocketAddr, SocketAddr) -> S + Send + 'static,
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>> + Clone + Unpin + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = Arc::new(builder(limits));
    let idle = limits.idle_timeout.non_zero();
    crate::listen::serve(what, listener, crate::listen::Caps::from_limits(limits), shutdown, move |stream, peer, stop| {
        let local = stream.local_addr().unwrap_or(peer);
        let activity = Arc::new(service::Activity::default());
        let svc = Counted { inner: make(peer, local), activity: activity.clone() };
        let builder = builder.clone();
        async move {
            if let Err(e) = connection(stream, svc, activity, &builder, idle, stop).await {
                tracing::debug!(%peer, error = %e, "{what}: connection ended with an error");
            }
        }
    })
    .await
}

/// A service whose requests and response bodies are reported to the connection's
/// [`Activity`](service::Activity), so that an idle connection can be parked.
#[derive(Clone)]
struct Counted<S> {
    inner: S,
    activity: Arc<service::Activity>,
}

impl<S, B> hyper::service::Service<http::Request<hyper::body::Incoming>> for Counted<S>
where
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    B: Send + 'static,
    S::Error: 'static,
{
    type Response = http::Response<service::Tracked<B>>;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        self.activity.begin();
        let fut = self.inner.call(req);
        let activity = self.activity.clone();
        // A failed service ends the connection, and its activity with it.
        Box::pin(async move { Ok(fut.await?.map(|b| service::Tracked::new(b, activity))) })
    }
}

/// The hyper settings of citron's HTTP listeners (HTTP and the lab API): keep-alive, no half
/// close, bounded buffers, and `limits.header_timeout` to send a request head once one began.
pub(crate) fn builder(limits: &citron_core::limits::Limits) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.keep_alive(true).half_close(false).max_buf_size(64 * 1024).timer(hyper_util::rt::TokioTimer::new());
    // Without a value hyper would apply its own default once a timer is set.
    b.header_read_timeout(limits.header_timeout.non_zero());
    b
}

/// One client connection. hyper serves it while requests come; once it has been idle for
/// [`PARK_AFTER`], hyper is asked to stop (it does so at once when idle, with nothing sent) and
/// hands the socket back: a parked connection keeps no buffers, only the socket, until the
/// client sends again. Bytes hyper had already read are replayed to the next hyper connection.
///
/// Shared by HTTP and the lab API: `activity` is what `svc` reports its requests to, `idle`
/// (`limits.idle_timeout`, `None` for never) how long a parked connection may wait for its next
/// request. hyper's header timeout runs from the first byte of a request head, since a parked
/// connection has no hyper state.
pub(crate) async fn connection<S, B>(
    stream: TcpStream,
    svc: S,
    activity: Arc<service::Activity>,
    builder: &http1::Builder,
    idle: Option<Duration>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), hyper::Error>
where
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>> + Clone + Unpin,
    S::Future: Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut io = rewind::Rewind::new(Bytes::new(), stream);
    loop {
        if !io.has_buffered() {
            // Parked: wait for the next request without any HTTP state.
            tokio::select! {
                r = io.get_ref().readable() => if r.is_err() { return Ok(()) },
                _ = async { match idle { Some(d) => tokio::time::sleep(d).await, None => std::future::pending().await } } => {
                    tracing::debug!("http: idle connection closed (limits.idle_timeout)");
                    return Ok(())
                }
                _ = stop.wait_for(|s| *s) => return Ok(()),
            }
        }
        let mut conn = builder.serve_connection(TokioIo::new(io), svc.clone());
        let (mut parking, mut stopping) = (false, false);
        let mut seen = activity.requests();
        loop {
            enum Ev {
                Done(Result<(), hyper::Error>),
                Tick,
                Stop,
            }
            let ev = tokio::select! {
                r = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => Ev::Done(r),
                _ = tokio::time::sleep(PARK_AFTER), if !parking && !stopping => Ev::Tick,
                _ = async { let _ = stop.wait_for(|s| *s).await; }, if !stopping => Ev::Stop,
            };
            match ev {
                Ev::Done(r) => {
                    r?;
                    break;
                }
                Ev::Tick => {
                    let now = activity.requests();
                    if now == seen && !activity.busy() {
                        parking = true;
                        std::pin::Pin::new(&mut conn).graceful_shutdown();
                    }
                    seen = now;
                }
                Ev::Stop => {
                    // Shutdown: finish what is in flight, then close.
                    stopping = true;
                    std::pin::Pin::new(&mut conn).graceful_shutdown();
                }
            }
        }
        if !parking || stopping {
            // The client closed, hyper ended the connection (errors, `Connection: close`), or
            // the server is stopping.
            return Ok(());
        }
        tracing::trace!("http: idle connection parked");
        let parts = conn.into_parts();
        release_freed_memory();
        let (old, unread) = parts.io.into_inner().into_parts();
        let mut pre = parts.read_buf.to_vec();
        pre.extend_from_slice(&unread);
        io = rewind::Rewind::new(Bytes::from(pre), old);
    }
}

/// Hands the pages of freed buffers back to the system a second after connections parked (once
/// per burst): glibc keeps freed memory for reuse, so without this a lab's RSS would stay at
/// its busiest point however many connections sit idle.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::sync::atomic::{AtomicBool, Ordering};
        static SCHEDULED: AtomicBool = AtomicBool::new(false);
        if !SCHEDULED.swap(true, Ordering::AcqRel) {
            tokio::spawn(async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                SCHEDULED.store(false, Ordering::Release);
                // SAFETY: malloc_trim has no preconditions; it only returns free memory.
                let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
            });
        }
    }
}

/// `addr` as it goes into a URL (`[::1]:80` for IPv6).
pub(crate) fn url_authority(addr: SocketAddr) -> String {
    addr.to_string()
}
