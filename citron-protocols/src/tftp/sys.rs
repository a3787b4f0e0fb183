//! The per-packet system calls of a transfer: its socket and its file reads.
//!
//! A lockstep transfer costs one ACK → DATA turnaround per block, so every system call and every
//! wake-up on that path shows in the throughput (see BENCHMARKS.md). Compared with a
//! `tokio::net::UdpSocket`:
//! - the socket is registered for **readability only**: a tokio socket also asks for
//!   writability, and since every UDP send frees send-buffer space the kernel then reports the
//!   socket writable after each DATA, which costs the runtime an extra `epoll_wait` per block;
//! - one `recvmmsg` both receives the ACK and tells whether another datagram is queued (it asks
//!   for two without waiting); when none is, the readiness is cleared right away instead of being
//!   found out by a `recv` failing with `EAGAIN` after the next send;
//! - a send is one `send` on the connected socket, a window of several blocks one `sendmmsg`;
//!   only when the send buffer is full is a second, writability-only registration made to wait
//!   on.
//!
//! File reads go through `Artifact::read_cached` (`preadv2(RWF_NOWAIT)`, shared with the HTTP
//! backend), which copies the bytes only if they are in the page cache, so a warm artifact is
//! read inline with no blocking-pool hand-off.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Bytes per receive slot; larger datagrams are truncated (a client sends only ACKs and ERRORs,
/// whose messages are short).
const SLOT: usize = 2048;

/// A transfer's own UDP socket (its transfer ID), connected to the client.
pub(super) struct TransferSocket {
    fd: AsyncFd<std::net::UdpSocket>,
    /// Two receive slots: a datagram received with the previous one waits in slot 1.
    bufs: Box<[[u8; SLOT]; 2]>,
    /// Length of the datagram waiting in slot 1.
    queued: Option<usize>,
}

impl TransferSocket {
    /// Binds an ephemeral port on `ip` and connects it to `peer`, so that the kernel drops
    /// datagrams from any other address or port.
    pub(super) fn open(ip: IpAddr, peer: SocketAddr) -> io::Result<TransferSocket> {
        let sock = std::net::UdpSocket::bind((ip, 0))?;
        sock.connect(peer)?;
        sock.set_nonblocking(true)?;
        Ok(TransferSocket {
            // SAFETY: the `UdpSocket` owns its descriptor, which stays open and the same until
            // the `AsyncFd` (its owner) drops it.
            fd: unsafe { AsyncFd::register_with_interest(sock, Interest::READABLE | Interest::ERROR)? },
            bufs: Box::new([[0; SLOT]; 2]),
            queued: None,
        })
    }

    /// The next datagram from the client, or the error the socket holds (`ConnectionRefused` once
    /// the client's port is closed). Cancel safe: a datagram is only taken from the kernel
    /// in the poll that returns it.
    pub(super) async fn recv(&mut self) -> io::Result<&[u8]> {
        if let Some(n) = self.queued.take() {
            return Ok(&self.bufs[1][..n]);
        }
        loop {
            // ERROR too: an ICMP port unreachable (the client closed its socket) sets only the
            // socket error, which `recvmmsg` then returns as `ConnectionRefused`.
            let mut guard = self.fd.ready(Interest::READABLE | Interest::ERROR).await?;
            match recv2(self.fd.get_ref(), &mut self.bufs) {
                Ok((n, second)) => {
                    match second {
                        Some(m) => self.queued = Some(m),
                        // The queue is empty: wait for the next readiness event rather than
                        // learn it from a failing recv. A datagram that arrived since raises a
                        // new event, so nothing is missed.
                        None if DRAINS => guard.clear_ready(),
                        None => {}
                    }
                    return Ok(&self.bufs[0][..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends one datagram; waits only if the send buffer is full.
    pub(super) async fn send(&self, datagram: &[u8]) -> io::Result<()> {
        self.send_many(datagram, &[datagram.len()]).await
    }

    /// Sends the datagrams that `buf` holds back to back, of lengths `lens`, in as few system
    /// calls as the kernel takes (one `sendmmsg` for a window); waits only if the send buffer is
    /// full. On an error the rest is not sent (the retransmission timer covers it).
    pub(super) async fn send_many(&self, buf: &[u8], lens: &[usize]) -> io::Result<()> {
        let mut done = 0;
        let mut off = 0;
        let mut writable: Option<AsyncFd<std::net::UdpSocket>> = None;
        while done < lens.len() {
            match send_batch(self.fd.get_ref(), &buf[off..], &lens[done..]) {
                Ok(k) => {
                    off += lens[done..done + k].iter().sum::<usize>();
                    done += k;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Rare (a window larger than the send buffer): wait on a duplicate descriptor
                    // registered for writability only, dropped (deregistered) once the window is
                    // out, so that the transfer's own registration never reports writability.
                    let w = match &mut writable {
                        Some(w) => w,
                        None => {
                            let dup = self.fd.get_ref().try_clone()?;
                            // SAFETY: as in `open`; `dup` is a descriptor of its own, owned by
                            // the `AsyncFd`.
                            let fd = unsafe { AsyncFd::register_with_interest(dup, Interest::WRITABLE)? };
                            writable.insert(fd)
                        }
                    };
                    w.writable().await?.clear_ready();
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Sends the first datagrams of `buf` (lengths `lens`, at least one) without waiting; returns
/// how many left (≥ 1), or `WouldBlock`.
#[cfg(target_os = "linux")]
fn send_batch(sock: &std::net::UdpSocket, buf: &[u8], lens: &[usize]) -> io::Result<usize> {
    use rustix::net::{sendmmsg, MMsgHdr, SendAncillaryBuffer, SendFlags};
    use std::io::IoSlice;
    if let [len] = lens {
        let d = buf.get(..*len).ok_or(io::ErrorKind::InvalidInput)?;
        return sock.send(d).map(|_| 1);
    }
    /// Datagrams per call (a window is at most 64 blocks by default).
    const BATCH: usize = 64;
    let n = lens.len().min(BATCH);
    let mut iov = [IoSlice::new(&[]); BATCH];
    let mut off = 0;
    for i in 0..n {
        let Some(d) = buf.get(off..off + lens[i]) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "datagram lengths beyond the buffer"));
        };
        iov[i] = IoSlice::new(d);
        off += d.len();
    }
    // No control data; each header borrows an (empty) ancillary buffer of its own. All on the
    // stack: this runs once per window.
    let mut control: [SendAncillaryBuffer<'_, '_, '_>; BATCH] = std::array::from_fn(|_| SendAncillaryBuffer::default());
    let mut control = control.iter_mut();
    let mut msgs: [MMsgHdr<'_>; BATCH] =
        std::array::from_fn(|i| MMsgHdr::new(std::slice::from_ref(&iov[i]), control.next().expect("BATCH buffers")));
    loop {
        return match sendmmsg(sock, &mut msgs[..n], SendFlags::empty()) {
            Ok(0) => Err(io::ErrorKind::WouldBlock.into()),
            Ok(k) => Ok(k),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => Err(e.into()),
        };
    }
}

#[cfg(not(target_os = "linux"))]
fn send_batch(sock: &std::net::UdpSocket, buf: &[u8], lens: &[usize]) -> io::Result<usize> {
    let d = lens.first().and_then(|n| buf.get(..*n)).ok_or(io::ErrorKind::InvalidInput)?;
    sock.send(d).map(|_| 1)
}

/// Whether [`recv2`] tells that it drained the receive queue.
const DRAINS: bool = cfg!(target_os = "linux");

/// Receives up to two queued datagrams without waiting, into `bufs[0]` and `bufs[1]`: the first
/// one's length and, if there was a second, its length. `WouldBlock` if none was queued.
///
/// Raw libc, unlike `send_batch`: rustix (1.1) has no `recvmmsg`, and nix's needs a
/// `MultiHeaders` that is either allocated per call (this runs once per ACK) or kept, but it
/// holds raw pointers and is not `Send`, which a transfer's future must be.
#[cfg(target_os = "linux")]
fn recv2(sock: &std::net::UdpSocket, bufs: &mut [[u8; SLOT]; 2]) -> io::Result<(usize, Option<usize>)> {
    use std::os::fd::AsRawFd;
    let [a, b] = bufs;
    let mut iov =
        [libc::iovec { iov_base: a.as_mut_ptr().cast(), iov_len: SLOT }, libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: SLOT }];
    // SAFETY: mmsghdr is plain data; all-zero is a valid value (no address, no control data).
    let mut msgs: [libc::mmsghdr; 2] = unsafe { std::mem::zeroed() };
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    loop {
        // SAFETY: each header points at one iovec describing SLOT writable bytes of `bufs`, all
        // of which outlive the call; the descriptor is open while `sock` is borrowed.
        let r = unsafe { libc::recvmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), 2, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let first = msgs[0].msg_len as usize;
        return Ok(match r {
            0 => return Err(io::ErrorKind::WouldBlock.into()),
            1 => (first, None),
            _ => (first, Some(msgs[1].msg_len as usize)),
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn recv2(sock: &std::net::UdpSocket, bufs: &mut [[u8; SLOT]; 2]) -> io::Result<(usize, Option<usize>)> {
    sock.recv(&mut bufs[0]).map(|n| (n, None))
}
