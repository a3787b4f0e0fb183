//! The TFTP server: sockets, timers, one tokio task per transfer, shutdown.
//!
//! The listening socket only receives requests. Each accepted read request gets its own task
//! and its own ephemeral UDP socket (RFC 1350 §4: the server's transfer ID), bound to the
//! listening socket's address and connected to the client, so the kernel drops datagrams from
//! any other transfer ID. The task asks the [`Catalog`], then drives a [`Session`] with the
//! packets and timeouts of that socket (see `sys` for how the socket keeps system calls per block
//! low). The artifact is read in chunks of `Config::prefetch_bytes`, inline when the bytes are in
//! the page cache (`preadv2(RWF_NOWAIT)`), else on the blocking pool one chunk ahead, so DATA is
//! sent from memory.
//!
//! By default ([`Config::own_thread`]) all of this runs on dedicated threads, each with its own
//! single-threaded tokio runtime, so that HTTP or NBD load on the caller's runtime does not delay
//! the ACK → DATA turnaround that lockstep TFTP clients wait on: one thread takes requests (and
//! transfers), and transfers are spread over one thread per CPU
//! ([`Config::transfer_threads`]), each transfer staying on its thread.
//!
//! # Cancel safety
//! Dropping the future returned by [`serve_with`] (or [`serve`](super::serve)) aborts every
//! transfer: their sockets close, their access-log entries are written as aborted. Completing
//! `shutdown` does the same, then returns `Ok(())`.

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use citron_core::serve::{Artifact, Catalog, Content, FileRequest, Intent, Protocol, Space};
use parking_lot::Mutex;
use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::error::error_packet;
use super::packet::{self, DecodeError, ErrorCode, Mode, Packet, Request};
use super::session::{negotiate, Limits, Outcome, Send as Out, Session, Step, DEFAULT_BLKSIZE};
use super::sys::TransferSocket;

/// Server settings. `Config::default()` suits a lab; tests lower the timeout.
#[derive(Debug, Clone)]
pub struct Config {
    /// Option limits, retransmission timeout and retry bound.
    pub limits: Limits,
    /// Transfers running at once; further requests are dropped (the client retries) rather than
    /// refused, so a busy server costs a client no error.
    pub max_transfers: usize,
    /// Bytes per positioned read; a transfer holds up to three such chunks (the one being sent,
    /// the previous one and the next one, read ahead).
    pub prefetch_bytes: usize,
    /// Largest file sent in netascii mode (converted in memory); larger ones are refused with a
    /// message asking for octet mode.
    pub netascii_max_bytes: u64,
    /// Run the server and all its transfers on a dedicated thread with a single-threaded tokio
    /// runtime rather than on the caller's runtime. Lockstep transfers are bound by wake-up
    /// latency, which one thread that owns every socket keeps lowest (see BENCHMARKS.md).
    pub own_thread: bool,
    /// With `own_thread`: how many such threads the transfers are spread over (each with its
    /// own single-threaded runtime; requests are taken on the first), so that many concurrent
    /// transfers use every CPU while each stays on one thread. 0: one per CPU.
    pub transfer_threads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            max_transfers: 1024,
            prefetch_bytes: 256 * 1024,
            netascii_max_bytes: 64 << 20,
            own_thread: true,
            transfer_threads: 0,
        }
    }
}

struct Shared {
    catalog: Arc<dyn Catalog>,
    config: Config,
    local_ip: IpAddr,
    base_url: Option<String>,
    /// Client transfer IDs with a transfer running: a retransmitted RRQ must not start a second one.
    active: Mutex<HashSet<SocketAddr>>,
}

/// Removes a client TID from `active` when its transfer task ends, however it ends.
struct ActiveGuard {
    shared: Arc<Shared>,
    peer: SocketAddr,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.shared.active.lock().remove(&self.peer);
    }
}

/// [`serve`](super::serve) with explicit settings.
pub async fn serve_with(
    socket: UdpSocket,
    catalog: Arc<dyn Catalog>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    if !config.own_thread {
        return run(socket, catalog, config, shutdown).await;
    }
    let socket = socket.into_std()?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("citron-tftp".into())
        .spawn(move || {
            let r = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .and_then(|rt| {
                    rt.block_on(async move {
                        let socket = UdpSocket::from_std(socket)?;
                        // Ends when `stop_tx` is used or dropped (the caller dropped `serve_with`).
                        run(socket, catalog, config, async move {
                            let _ = stop_rx.await;
                        })
                        .await
                    })
                });
            let _ = done_tx.send(r);
        })?;
    let mut done_rx = done_rx;
    tokio::select! {
        r = &mut done_rx => return r.unwrap_or_else(|_| Err(io::Error::other("the TFTP thread panicked"))),
        _ = shutdown => {}
    }
    let _ = stop_tx.send(());
    done_rx
        .await
        .unwrap_or_else(|_| Err(io::Error::other("the TFTP thread panicked")))
}

async fn run(
    socket: UdpSocket,
    catalog: Arc<dyn Catalog>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let local = socket.local_addr()?;
    // No base URL: a TFTP server cannot know the address a client used (behind NAT, e.g. QEMU
    // user networking, 127.0.0.1 is 10.0.2.2 to the guest), so generated scripts use absolute
    // paths, which iPXE resolves against the URL it fetched the script from.
    let base_url: Option<String> = None;
    let limit = Arc::new(Semaphore::new(config.max_transfers.max(1)));
    let shared = Arc::new(Shared {
        catalog,
        config,
        local_ip: local.ip(),
        base_url,
        active: Mutex::new(HashSet::new()),
    });
    let workers = if shared.config.own_thread { Workers::start(shared.config.transfer_threads)? } else { Workers::none() };
    let mut tasks = JoinSet::new();
    let mut buf = vec![0u8; 65536];
    let mut out = BytesMut::new();
    tracing::info!(%local, "TFTP server listening");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            r = socket.recv_from(&mut buf) => {
                let (n, peer) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "TFTP receive failed");
                        continue;
                    }
                };
                let reply = match packet::decode(&buf[..n]) {
                    Ok(pkt) => on_request(&shared, &limit, &mut tasks, &workers, pkt, peer),
                    Err(e) => on_malformed(&buf[..n], e, peer),
                };
                if let Some(p) = reply {
                    out.clear();
                    packet::encode(&p, &mut out);
                    if let Err(e) = socket.send_to(&out, peer).await {
                        tracing::debug!(%peer, error = %e, "could not send error reply");
                    }
                }
            }
        }
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    drop(workers);
    tracing::info!(%local, "TFTP server stopped");
    Ok(())
}

/// The extra transfer threads of `Config::transfer_threads`, each running a single-threaded
/// runtime until dropped. Transfers go to them and to the request thread in turn.
struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    next: std::sync::atomic::AtomicUsize,
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    fn none() -> Workers {
        Workers { handles: Vec::new(), next: Default::default(), stop: Vec::new(), threads: Vec::new() }
    }

    fn start(threads: usize) -> io::Result<Workers> {
        let n = match threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut w = Workers::none();
        // The request thread (this one) is the first; it keeps taking transfers too.
        w.handles.push(tokio::runtime::Handle::current());
        for i in 1..n {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            w.handles.push(rt.handle().clone());
            w.stop.push(tx);
            w.threads.push(std::thread::Builder::new().name(format!("citron-tftp-{i}")).spawn(move || {
                rt.block_on(async move {
                    let _ = rx.await;
                });
            })?);
        }
        Ok(w)
    }

    /// Runs `task` on the next thread in turn (on the caller's runtime without workers).
    fn spawn(&self, tasks: &mut JoinSet<()>, task: impl Future<Output = ()> + Send + 'static) {
        if self.handles.is_empty() {
            tasks.spawn(task);
            return;
        }
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.handles.len();
        tasks.spawn_on(task, &self.handles[i]);
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A datagram that does not decode: answer requests with "illegal operation" so that the client
/// stops waiting; drop anything else (never answer an ERROR or an unknown opcode with an ERROR:
/// two servers could ping-pong).
fn on_malformed(buf: &[u8], e: DecodeError, peer: SocketAddr) -> Option<Packet> {
    tracing::warn!(%peer, error = %e, len = buf.len(), "malformed TFTP request");
    match buf.get(..2) {
        Some([0, 1]) | Some([0, 2]) => Some(Packet::Error {
            code: ErrorCode::ILLEGAL_OPERATION,
            message: e.to_string(),
        }),
        _ => None,
    }
}

fn on_request(
    shared: &Arc<Shared>,
    limit: &Arc<Semaphore>,
    tasks: &mut JoinSet<()>,
    workers: &Workers,
    pkt: Packet,
    peer: SocketAddr,
) -> Option<Packet> {
    match pkt {
        Packet::Rrq(req) if req.mode == Mode::Mail => {
            tracing::info!(%peer, file = %req.filename, "mail mode refused");
            Some(Packet::Error {
                code: ErrorCode::ILLEGAL_OPERATION,
                message: "mail mode is not supported".into(),
            })
        }
        Packet::Rrq(req) => {
            if !shared.active.lock().insert(peer) {
                tracing::debug!(%peer, file = %req.filename, "retransmitted request for a running transfer ignored");
                return None;
            }
            let guard = ActiveGuard {
                shared: shared.clone(),
                peer,
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                tracing::warn!(%peer, file = %req.filename, "too many TFTP transfers; request dropped, the client will retry");
                return None;
            };
            workers.spawn(tasks, transfer(shared.clone(), peer, req, permit, guard));
            None
        }
        Packet::Wrq(req) => {
            tracing::info!(%peer, file = %req.filename, "write request refused");
            Some(Packet::Error {
                code: ErrorCode::ACCESS_VIOLATION,
                message: "citron is read-only: write requests are refused".into(),
            })
        }
        other => {
            tracing::debug!(%peer, packet = ?other, "non-request packet on the TFTP port ignored");
            None
        }
    }
}

/// The bytes a transfer carries.
enum Body {
    /// The artifact itself (octet mode), read in chunks ahead of the transfer.
    Artifact(Chunks),
    /// The whole transfer in memory (netascii after conversion).
    Memory(Bytes),
}

impl Body {
    async fn get(&mut self, off: u64, len: usize) -> io::Result<Bytes> {
        match self {
            Body::Memory(b) => {
                let s = (off as usize).min(b.len());
                Ok(b.slice(s..(s + len).min(b.len())))
            }
            Body::Artifact(c) => c.get(off, len).await,
        }
    }
}

/// An artifact read in aligned chunks of `size` bytes (a multiple of blksize, so a block never
/// spans two chunks). A chunk in the page cache is read inline when it is first needed (one
/// `preadv2(RWF_NOWAIT)` per chunk, no thread hand-off); once a read would have waited for the
/// disk, the transfer is `cold` and the chunk after the one being sent is read on the blocking
/// pool while the transfer waits for ACKs. The previous chunk is kept for a window restarted
/// across the boundary.
struct Chunks {
    art: Arc<Artifact>,
    size: u64,
    cold: bool,
    prev: Option<(u64, Bytes)>,
    cur: Option<(u64, Bytes)>,
    next: Option<(u64, tokio::task::JoinHandle<io::Result<Bytes>>)>,
}

impl Chunks {
    fn new(art: Arc<Artifact>, prefetch: usize, blksize: u16) -> Chunks {
        let bs = blksize.max(1) as u64;
        let size = (prefetch as u64).max(bs) / bs * bs;
        Chunks {
            art,
            size,
            cold: false,
            prev: None,
            cur: None,
            next: None,
        }
    }

    fn read(&self, k: u64) -> tokio::task::JoinHandle<io::Result<Bytes>> {
        let (a, off, size) = (self.art.clone(), k * self.size, self.size as usize);
        tokio::task::spawn_blocking(move || a.read_chunk(off, size))
    }

    /// Chunk `k` if it is all in the page cache.
    fn read_inline(&self, k: u64) -> io::Result<Option<Bytes>> {
        let off = k * self.size;
        let want = self.size.min(self.art.len.saturating_sub(off)) as usize;
        Ok(self.art.read_cached(off, want)?.filter(|b| b.len() == want))
    }

    async fn get(&mut self, off: u64, len: usize) -> io::Result<Bytes> {
        if let Content::Memory(_) = self.art.content {
            return self.art.read_chunk(off, len);
        }
        let k = off / self.size;
        let have = |c: &Option<(u64, Bytes)>| matches!(c, Some((ck, _)) if *ck == k);
        if !have(&self.cur) {
            if have(&self.prev) {
                std::mem::swap(&mut self.prev, &mut self.cur);
            } else {
                let pending = match self.next.take() {
                    Some((nk, h)) if nk == k => Err(h),
                    other => {
                        if let Some((_, h)) = other {
                            h.abort();
                        }
                        match self.read_inline(k)? {
                            Some(b) => Ok(b),
                            None => {
                                self.cold = true;
                                Err(self.read(k))
                            }
                        }
                    }
                };
                let data = match pending {
                    Ok(b) => b,
                    Err(h) => h.await.map_err(io::Error::other)??,
                };
                self.prev = self.cur.replace((k, data));
            }
        }
        let want_next = (k + 1) * self.size < self.art.len;
        if self.cold && want_next && !matches!(self.next, Some((nk, _)) if nk == k + 1) {
            if let Some((_, h)) = self.next.take() {
                h.abort();
            }
            self.next = Some((k + 1, self.read(k + 1)));
        }
        let Some((_, data)) = &self.cur else {
            unreachable!("cur was just filled")
        };
        let s = ((off - k * self.size) as usize).min(data.len());
        Ok(data.slice(s..(s + len).min(data.len())))
    }
}

impl Drop for Chunks {
    fn drop(&mut self) {
        if let Some((_, h)) = self.next.take() {
            h.abort();
        }
    }
}

async fn transfer(
    shared: Arc<Shared>,
    peer: SocketAddr,
    req: Request,
    _permit: OwnedSemaphorePermit,
    _guard: ActiveGuard,
) {
    let mut sock = match TransferSocket::open(shared.local_ip, peer) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%peer, error = %e, "cannot open a TFTP transfer socket");
            return;
        }
    };
    let mut out = BytesMut::new();
    let freq = FileRequest {
        peer: peer.ip().to_canonical(),
        protocol: Protocol::TFTP,
        space: Space::Tftp,
        path: &req.filename,
        base_url: shared.base_url.as_deref(),
        intent: Intent::Read,
    };
    let art = match shared.catalog.open(&freq) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            tracing::info!(%peer, file = %req.filename, error = %e, "TFTP read refused");
            send_packet(&sock, &mut out, &error_packet(&e)).await;
            return;
        }
    };
    let body = match req.mode {
        Mode::Netascii if art.len > shared.config.netascii_max_bytes => {
            tracing::info!(%peer, file = %req.filename, len = art.len, "file too large for netascii mode");
            let message = format!(
                "file too large for netascii mode ({} bytes); use octet mode",
                art.len
            );
            send_packet(
                &sock,
                &mut out,
                &Packet::Error {
                    code: ErrorCode::NOT_DEFINED,
                    message,
                },
            )
            .await;
            return;
        }
        Mode::Netascii => {
            let a = art.clone();
            let r = tokio::task::spawn_blocking(move || a.read_chunk(0, a.len as usize))
                .await
                .map_err(io::Error::other)
                .and_then(|r| r);
            match r {
                Ok(b) => Body::Memory(Bytes::from(packet::to_netascii(&b))),
                Err(e) => {
                    tracing::error!(%peer, file = %req.filename, error = %e, "cannot read artifact");
                    send_packet(&sock, &mut out, &error_packet(&e.into())).await;
                    return;
                }
            }
        }
        Mode::Octet | Mode::Mail => Body::Artifact(Chunks::new(
            art.clone(),
            shared.config.prefetch_bytes,
            DEFAULT_BLKSIZE,
        )),
    };
    let len = match &body {
        Body::Memory(b) => b.len() as u64,
        Body::Artifact { .. } => art.len,
    };
    let limits = &shared.config.limits;
    let neg = negotiate(&req, len, limits);
    let mut body = match body {
        Body::Artifact(c) => Body::Artifact(Chunks::new(
            c.art.clone(),
            shared.config.prefetch_bytes,
            neg.blksize,
        )),
        m => m,
    };
    tracing::debug!(%peer, file = %req.filename, len, blksize = neg.blksize, windowsize = neg.windowsize, "TFTP transfer starts");
    let started = Instant::now();
    let (mut session, mut step) = Session::start(neg, len, limits.retries, started);
    let mut retransmits = 0u32;
    let mut lens: Vec<usize> = Vec::new();
    let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(
        step.wake_at.unwrap_or(started),
    ));
    tokio::pin!(sleep);
    let outcome = loop {
        if step.delivered > 0 {
            art.sent(step.delivered);
        }
        // The step's packets (one in lockstep, a window otherwise) back to back in `out`, then
        // sent in one system call.
        out.clear();
        lens.clear();
        for s in &step.send {
            let start = out.len();
            match s {
                Out::Packet(p) => packet::encode(p, &mut out),
                Out::Data { index } => {
                    let (off, n) = session.block_range(*index);
                    let data = match body.get(off, n).await {
                        Ok(d) => d,
                        Err(e) => {
                            tracing::error!(%peer, file = %req.filename, error = %e, "cannot read artifact");
                            send_packet(&sock, &mut out, &error_packet(&e.into())).await;
                            return;
                        }
                    };
                    packet::encode_data(Session::wire_block(*index), &data, &mut out);
                }
            }
            lens.push(out.len() - start);
        }
        if !lens.is_empty() {
            match sock.send_many(&out, &lens).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break None,
                // Transient: the retransmission timer covers it.
                Err(e) => tracing::debug!(%peer, error = %e, "TFTP send failed"),
            }
        }
        if let Some(o) = step.done.take() {
            break Some(o);
        }
        // Deadlines only move later while the client keeps up, so the timer is moved only when
        // it must fire earlier; firing early is harmless (`on_timeout` before the deadline just
        // returns the real one). This keeps timer-wheel updates off the per-packet path.
        if let Some(w) = step.wake_at {
            let w = tokio::time::Instant::from_std(w);
            if w < sleep.deadline() || sleep.is_elapsed() {
                sleep.as_mut().reset(w);
            }
        }
        step = tokio::select! {
            biased;
            r = sock.recv() => match r {
                Ok(datagram) => match packet::decode(datagram) {
                    Ok(p) => session.on_packet(&p, Instant::now()),
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "malformed packet in a transfer ignored");
                        Step::default()
                    }
                },
                // ICMP port unreachable: the client closed its socket.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break None,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TFTP receive failed");
                    Step::default()
                }
            },
            _ = &mut sleep => {
                let st = session.on_timeout(Instant::now());
                if !st.send.is_empty() {
                    retransmits += 1;
                    tracing::debug!(%peer, file = %req.filename, packets = st.send.len(), "TFTP timeout: retransmitting");
                }
                st
            }
        };
    };
    let elapsed = started.elapsed();
    match outcome {
        Some(Outcome::Complete) => {
            art.complete();
            tracing::info!(%peer, file = %req.filename, bytes = len, ?elapsed, retransmits, "TFTP transfer complete");
        }
        // Logged as served: see `Outcome::Unconfirmed`.
        Some(Outcome::Unconfirmed) => {
            art.complete();
            tracing::info!(%peer, file = %req.filename, bytes = len, ?elapsed, retransmits, "TFTP transfer sent whole; the final ACK never came (logged as served)");
        }
        Some(Outcome::TimedOut) => {
            tracing::warn!(%peer, file = %req.filename, ?elapsed, "TFTP client stopped answering; transfer abandoned")
        }
        Some(Outcome::ClientError { code, message }) => {
            tracing::info!(%peer, file = %req.filename, code = code.0, %message, "TFTP client aborted the transfer")
        }
        // The client closed its port after the last block went out: it had everything and its
        // final ACK was lost, as for `Outcome::Unconfirmed`.
        None if session.final_block_sent() => {
            art.sent(session.unacknowledged_bytes());
            art.complete();
            tracing::info!(%peer, file = %req.filename, bytes = len, ?elapsed, retransmits, "TFTP transfer sent whole; the client closed its port without the final ACK (logged as served)");
        }
        None => {
            tracing::info!(%peer, file = %req.filename, ?elapsed, "TFTP client went away (port unreachable)")
        }
    }
}

async fn send_packet(sock: &TransferSocket, out: &mut BytesMut, p: &Packet) {
    out.clear();
    packet::encode(p, out);
    if let Err(e) = sock.send(out).await {
        tracing::debug!(error = %e, "could not send TFTP error");
    }
}
