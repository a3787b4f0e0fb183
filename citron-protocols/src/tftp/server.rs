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

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use citron_core::limits::Limits as LabLimits;
use citron_core::namespace::DutId;
use citron_core::serve::{Catalog, FileRequest, Intent, Protocol, Space};
use tokio::net::UdpSocket;
use tokio::task::JoinSet;

use super::admission::{no_larger, Budget, LogOnce, NoSlot, Slot, Slots};
use super::body::{netascii_len, Body, Chunks, Netascii};
use super::error::error_packet;
use super::packet::{self, Clip, DecodeError, ErrorCode, Mode, Packet, Request};
use super::session::{negotiate, Limits, Outcome, Send as Out, Session, Step};
use super::sys::TransferSocket;

/// Server settings. `Config::default()` suits a lab ([`Config::from_limits`] with the default
/// lab limits); tests lower the timeout.
#[derive(Debug, Clone)]
pub struct Config {
    /// Option limits, retransmission timeout and retry bound.
    pub limits: Limits,
    /// Transfers running at once, over every DUT (`limits.tftp_transfers`); further requests
    /// are dropped (the client retries) rather than refused, so a busy server costs a client no
    /// error.
    pub max_transfers: usize,
    /// Transfers running at once for one DUT (`limits.tftp_transfers_per_dut`), so that one DUT,
    /// or anyone sending from a silent DUT's address, cannot take every slot; further requests
    /// from that DUT are dropped like those past `max_transfers`.
    pub transfers_per_dut: usize,
    /// ERROR packets per second answered to sources that are no DUT
    /// (`limits.tftp_unknown_errors_per_sec`); the rest are dropped without a word, so spoofed
    /// requests cannot aim a stream of answers at a victim. Such sources never get a transfer
    /// (so never a retransmission), and each is logged once a minute, not once per packet.
    pub unknown_errors_per_sec: u32,
    /// Longest request field (file name) written to a log line (`limits.logged_path_max`).
    pub logged_field_max: usize,
    /// Bytes per positioned read; a transfer holds up to three such chunks (the one being sent,
    /// the previous one and the next one, read ahead).
    pub prefetch_bytes: usize,
    /// Run the server and all its transfers on a dedicated thread with a single-threaded tokio
    /// runtime rather than on the caller's runtime. Lockstep transfers are bound by wake-up
    /// latency, which one thread that owns every socket keeps lowest (see BENCHMARKS.md).
    pub own_thread: bool,
    /// With `own_thread`: how many such threads the transfers are spread over (each with its
    /// own single-threaded runtime; requests are taken on the first), so that many concurrent
    /// transfers use every CPU while each stays on one thread. 0: one per CPU.
    pub transfer_threads: usize,
}

impl Config {
    /// The settings a lab's `limits:` section asks for (`tftp_transfers`,
    /// `tftp_transfers_per_dut`, `tftp_max_timeout`, `tftp_unknown_errors_per_sec`,
    /// `logged_path_max`); the rest as in [`Config::default`].
    pub fn from_limits(l: &LabLimits) -> Config {
        Config {
            limits: Limits { max_timeout: l.tftp_max_timeout.get(), ..Limits::default() },
            max_transfers: l.tftp_transfers,
            transfers_per_dut: l.tftp_transfers_per_dut,
            unknown_errors_per_sec: l.tftp_unknown_errors_per_sec,
            logged_field_max: l.logged_path_max,
            prefetch_bytes: 256 * 1024,
            own_thread: true,
            transfer_threads: 0,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::from_limits(&LabLimits::default())
    }
}

pub(super) struct Shared {
    pub(super) catalog: Arc<dyn Catalog>,
    pub(super) config: Config,
    pub(super) local_ip: IpAddr,
    base_url: Option<String>,
}

/// What the request thread keeps between requests: slots, and the answer budget and log
/// memory for sources that are no DUT.
struct Gate {
    slots: Arc<Slots>,
    unknown: Budget,
    unknown_logged: LogOnce<IpAddr>,
    busy_logged: LogOnce<DutId>,
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
    std::thread::Builder::new().name("citron-tftp".into()).spawn(move || {
        let r = tokio::runtime::Builder::new_current_thread().enable_all().build().and_then(|rt| {
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
    done_rx.await.unwrap_or_else(|_| Err(io::Error::other("the TFTP thread panicked")))
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
    let now = Instant::now();
    let mut gate = Gate {
        slots: Slots::new(config.max_transfers, config.transfers_per_dut),
        unknown: Budget::new(config.unknown_errors_per_sec, now),
        unknown_logged: LogOnce::new(now),
        busy_logged: LogOnce::new(now),
    };
    let shared = Arc::new(Shared { catalog, config, local_ip: local.ip(), base_url });
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
                let reply = on_datagram(&shared, &mut gate, &mut tasks, &workers, &buf[..n], peer);
                // Never more bytes back than came in (a spoofed source is a victim, not a client).
                if let Some(p) = reply.and_then(|p| no_larger(p, n)) {
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

/// One datagram on the listening port: the answer to send back from it, if any.
///
/// A source that is no DUT never gets a transfer: its requests are answered "file not found"
/// (what the catalog would say) within the `unknown_errors_per_sec` budget and dropped past it,
/// and it is logged once per `LOG_PERIOD`, so a flood costs one log line per source.
fn on_datagram(
    shared: &Arc<Shared>,
    gate: &mut Gate,
    tasks: &mut JoinSet<()>,
    workers: &Workers,
    datagram: &[u8],
    peer: SocketAddr,
) -> Option<Packet> {
    let max = shared.config.logged_field_max;
    let decoded = packet::decode(datagram);
    let Some(dut) = shared.catalog.dut_of(peer.ip().to_canonical()) else {
        let now = Instant::now();
        let note = gate.unknown_logged.note(peer.ip(), now);
        if note.quiet_before > 0 {
            tracing::warn!(packets = note.quiet_before, "TFTP packets from sources that are no DUT were not logged in the last minute");
        }
        let answer = match &decoded {
            Ok(Packet::Rrq(_) | Packet::Wrq(_)) => {
                Some(Packet::Error { code: ErrorCode::FILE_NOT_FOUND, message: "file not found".into() })
            }
            Ok(_) => None,
            Err(e) => malformed_answer(datagram, e),
        };
        if note.log {
            let file = match &decoded {
                Ok(Packet::Rrq(r) | Packet::Wrq(r)) => Some(Clip(&r.filename, max)),
                _ => None,
            };
            tracing::info!(%peer, file = file.map(tracing::field::display), len = datagram.len(), "TFTP packet from a source that is no DUT: answered at most {}/s, logged once a minute", shared.config.unknown_errors_per_sec);
        }
        return answer.filter(|_| gate.unknown.allow(now));
    };
    match decoded {
        Ok(pkt) => on_request(shared, gate, tasks, workers, pkt, peer, dut, datagram.len()),
        Err(e) => {
            tracing::warn!(%peer, error = %e, len = datagram.len(), "malformed TFTP request");
            malformed_answer(datagram, &e)
        }
    }
}

/// A datagram that does not decode: answer requests with "illegal operation" so that the client
/// stops waiting; drop anything else (never answer an ERROR or an unknown opcode with an ERROR:
/// two servers could ping-pong). The message is fixed text, never a field of the request.
fn malformed_answer(buf: &[u8], e: &DecodeError) -> Option<Packet> {
    match buf.get(..2) {
        Some([0, 1]) | Some([0, 2]) => Some(Packet::Error { code: ErrorCode::ILLEGAL_OPERATION, message: e.wire_message().into() }),
        _ => None,
    }
}

#[allow(clippy::too_many_arguments)]
fn on_request(
    shared: &Arc<Shared>,
    gate: &mut Gate,
    tasks: &mut JoinSet<()>,
    workers: &Workers,
    pkt: Packet,
    peer: SocketAddr,
    dut: DutId,
    len: usize,
) -> Option<Packet> {
    let max = shared.config.logged_field_max;
    match pkt {
        Packet::Rrq(req) if req.mode == Mode::Mail => {
            tracing::info!(%peer, file = %Clip(&req.filename, max), "mail mode refused");
            Some(Packet::Error { code: ErrorCode::ILLEGAL_OPERATION, message: "mail mode is not supported".into() })
        }
        Packet::Rrq(req) => {
            let slot = match gate.slots.take(peer, dut.clone()) {
                Ok(s) => s,
                Err(NoSlot::Running) => {
                    tracing::debug!(%peer, file = %Clip(&req.filename, max), "retransmitted request for a running transfer ignored");
                    return None;
                }
                Err(why) => {
                    let note = gate.busy_logged.note(dut.clone(), Instant::now());
                    if note.log {
                        let (what, n) = match why {
                            NoSlot::DutFull => ("this DUT's", shared.config.transfers_per_dut),
                            _ => ("the server's", shared.config.max_transfers),
                        };
                        tracing::warn!(%peer, %dut, file = %Clip(&req.filename, max), "{what} {n} TFTP transfer slots are taken; requests dropped (the client retries), logged once a minute");
                    }
                    return None;
                }
            };
            workers.spawn(tasks, transfer(shared.clone(), peer, req, len, slot));
            None
        }
        Packet::Wrq(req) => {
            // An upload into the DUT's run (the core decides whether it takes one).
            let slot = match gate.slots.take(peer, dut.clone()) {
                Ok(s) => s,
                Err(why) => {
                    tracing::debug!(%peer, file = %Clip(&req.filename, max), ?why, "write request without a transfer slot ignored (the client retries)");
                    return None;
                }
            };
            workers.spawn(tasks, super::upload::receive(shared.clone(), peer, req, len, slot));
            None
        }
        other => {
            tracing::debug!(%peer, opcode = opcode(&other), "non-request packet on the TFTP port ignored");
            None
        }
    }
}

fn opcode(p: &Packet) -> &'static str {
    match p {
        Packet::Rrq(_) => "RRQ",
        Packet::Wrq(_) => "WRQ",
        Packet::Data { .. } => "DATA",
        Packet::Ack { .. } => "ACK",
        Packet::Error { .. } => "ERROR",
        Packet::Oack { .. } => "OACK",
    }
}

/// One read transfer, on its own socket; `req_len` is the size of the request datagram (no
/// ERROR sent in answer is larger).
async fn transfer(shared: Arc<Shared>, peer: SocketAddr, req: Request, req_len: usize, _slot: Slot) {
    let mut sock = match TransferSocket::open(shared.local_ip, peer) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%peer, error = %e, "cannot open a TFTP transfer socket");
            return;
        }
    };
    let file = Clip(&req.filename, shared.config.logged_field_max);
    let mut out = BytesMut::new();
    let freq = FileRequest {
        peer: peer.ip().to_canonical(),
        protocol: Protocol::TFTP,
        space: Space::TFTP,
        path: &req.filename,
        base_url: shared.base_url.as_deref(),
        intent: Intent::Read,
        range: None,
    };
    // A DUT whose job is still loading gets its file once it is loaded (its retransmitted
    // requests are ignored meanwhile: this transfer holds the slot).
    if let Some(wait) = shared.catalog.job_loading(freq.peer) {
        wait.await;
    }
    let art = match shared.catalog.open(&freq) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            // The core wrote the access line.
            tracing::debug!(%peer, %file, error = %Clip(&e.to_string(), shared.config.logged_field_max), "TFTP read refused");
            send_error(&sock, &mut out, error_packet(&e), req_len).await;
            return;
        }
    };
    let prefetch = shared.config.prefetch_bytes;
    let len = match req.mode {
        // Converted as it streams; its size takes one pass first (for `tsize` and for where the
        // transfer ends), which reads the file but keeps none of it.
        Mode::Netascii => match netascii_len(art.clone(), prefetch).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(%peer, %file, error = %e, "cannot read artifact");
                send_error(&sock, &mut out, error_packet(&e.into()), req_len).await;
                return;
            }
        },
        Mode::Octet | Mode::Mail => art.len,
    };
    let limits = &shared.config.limits;
    let neg = negotiate(&req, len, limits);
    let mut body = match req.mode {
        Mode::Netascii => Body::Netascii(Netascii::new(art.clone(), prefetch, neg.windowsize as u64 * neg.blksize as u64)),
        Mode::Octet | Mode::Mail => Body::Octet(Chunks::new(art.clone(), prefetch, neg.blksize)),
    };
    tracing::debug!(%peer, %file, len, blksize = neg.blksize, windowsize = neg.windowsize, "TFTP transfer starts");
    let started = Instant::now();
    let (mut session, mut step) = Session::start(neg, len, limits.retries, started);
    let mut retransmits = 0u32;
    let mut lens: Vec<usize> = Vec::new();
    let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(step.wake_at.unwrap_or(started)));
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
                            tracing::error!(%peer, %file, error = %e, "cannot read artifact");
                            send_error(&sock, &mut out, error_packet(&e.into()), req_len).await;
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
                    tracing::debug!(%peer, %file, packets = st.send.len(), "TFTP timeout: retransmitting");
                }
                st
            }
        };
    };
    let elapsed = started.elapsed();
    match outcome {
        Some(Outcome::Complete) => {
            art.complete();
            tracing::debug!(%peer, %file, bytes = len, ?elapsed, retransmits, "TFTP transfer complete");
        }
        // Logged as served: see `Outcome::Unconfirmed`.
        Some(Outcome::Unconfirmed) => {
            art.complete();
            tracing::info!(%peer, %file, bytes = len, ?elapsed, retransmits, "TFTP transfer sent whole; the final ACK never came (logged as served)");
        }
        Some(Outcome::TimedOut) => {
            tracing::warn!(%peer, %file, ?elapsed, "TFTP client stopped answering; transfer abandoned")
        }
        Some(Outcome::ClientError { code, message }) => {
            tracing::info!(%peer, %file, code = code.0, %message, "TFTP client aborted the transfer")
        }
        // The client closed its port after the last block went out: it had everything and its
        // final ACK was lost, as for `Outcome::Unconfirmed`.
        None if session.final_block_sent() => {
            art.sent(session.unacknowledged_bytes());
            art.complete();
            tracing::info!(%peer, %file, bytes = len, ?elapsed, retransmits, "TFTP transfer sent whole; the client closed its port without the final ACK (logged as served)");
        }
        None => {
            tracing::info!(%peer, %file, ?elapsed, "TFTP client went away (port unreachable)")
        }
    }
}

/// Sends ERROR `p`, cut to no more than `req_len` bytes (see `no_larger`).
pub(super) async fn send_error(sock: &TransferSocket, out: &mut BytesMut, p: Packet, req_len: usize) {
    let Some(p) = no_larger(p, req_len) else { return };
    out.clear();
    packet::encode(&p, out);
    if let Err(e) = sock.send(out).await {
        tracing::debug!(error = %e, "could not send TFTP error");
    }
}
