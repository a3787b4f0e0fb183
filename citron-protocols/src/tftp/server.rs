//! The TFTP server: sockets, timers, one tokio task per transfer, shutdown.
//!
//! The listening socket only receives requests. Each accepted read request gets its own task
//! and its own ephemeral UDP socket (RFC 1350 §4: the server's transfer ID), bound to the
//! listening socket's address and connected to the client, so the kernel drops datagrams from
//! any other transfer ID. The task asks the [`Catalog`], then drives a [`Session`] with the
//! packets and timeouts of that socket. Reads are positioned reads on the cached file, done on
//! the blocking pool a window ahead (`Config::prefetch_bytes`), so DATA is sent from memory.
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            max_transfers: 1024,
            prefetch_bytes: 256 * 1024,
            netascii_max_bytes: 64 << 20,
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
                    Ok(pkt) => on_request(&shared, &limit, &mut tasks, pkt, peer),
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
    tracing::info!(%local, "TFTP server stopped");
    Ok(())
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
            tasks.spawn(transfer(shared.clone(), peer, req, permit, guard));
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
/// spans two chunks). The chunk after the one being sent is read on the blocking pool while the
/// transfer waits for ACKs, so DATA rarely waits for the disk or a thread hand-off; the previous
/// chunk is kept for a window restarted across the boundary.
struct Chunks {
    art: Arc<Artifact>,
    size: u64,
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
            prev: None,
            cur: None,
            next: None,
        }
    }

    fn read(&self, k: u64) -> tokio::task::JoinHandle<io::Result<Bytes>> {
        let (a, off, size) = (self.art.clone(), k * self.size, self.size as usize);
        tokio::task::spawn_blocking(move || a.read_chunk(off, size))
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
                    Some((nk, h)) if nk == k => h,
                    other => {
                        if let Some((_, h)) = other {
                            h.abort();
                        }
                        self.read(k)
                    }
                };
                let data = pending.await.map_err(io::Error::other)??;
                self.prev = self.cur.replace((k, data));
            }
        }
        let want_next = (k + 1) * self.size < self.art.len;
        if want_next && !matches!(self.next, Some((nk, _)) if nk == k + 1) {
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
    let sock = match UdpSocket::bind((shared.local_ip, 0)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%peer, error = %e, "cannot open a TFTP transfer socket");
            return;
        }
    };
    if let Err(e) = sock.connect(peer).await {
        tracing::error!(%peer, error = %e, "cannot connect the TFTP transfer socket");
        return;
    }
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
    let mut rbuf = vec![0u8; 2048];
    let mut retransmits = 0u32;
    let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(
        step.wake_at.unwrap_or(started),
    ));
    tokio::pin!(sleep);
    let outcome = loop {
        if step.delivered > 0 {
            art.sent(step.delivered);
        }
        let mut gone = false;
        for s in &step.send {
            let r = match s {
                Out::Packet(p) => {
                    out.clear();
                    packet::encode(p, &mut out);
                    sock.send(&out).await
                }
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
                    out.clear();
                    packet::encode_data(Session::wire_block(*index), &data, &mut out);
                    sock.send(&out).await
                }
            };
            match r {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    gone = true;
                    break;
                }
                // Transient (buffers full): the retransmission timer covers it.
                Err(e) => tracing::debug!(%peer, error = %e, "TFTP send failed"),
            }
        }
        if gone {
            break None;
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
            r = sock.recv(&mut rbuf) => match r {
                Ok(n) => match packet::decode(&rbuf[..n]) {
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
        Some(Outcome::TimedOut) => {
            tracing::warn!(%peer, file = %req.filename, ?elapsed, "TFTP client stopped answering; transfer abandoned")
        }
        Some(Outcome::ClientError { code, message }) => {
            tracing::info!(%peer, file = %req.filename, code = code.0, %message, "TFTP client aborted the transfer")
        }
        None => {
            tracing::info!(%peer, file = %req.filename, ?elapsed, "TFTP client went away (port unreachable)")
        }
    }
}

async fn send_packet(sock: &UdpSocket, out: &mut BytesMut, p: &Packet) {
    out.clear();
    packet::encode(p, out);
    if let Err(e) = sock.send(out).await {
        tracing::debug!(error = %e, "could not send TFTP error");
    }
}
