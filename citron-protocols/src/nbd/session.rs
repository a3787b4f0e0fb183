//! The transmission phase of one connection: requests in, replies out, several in flight.
//!
//! One task per connection. It parses whatever requests have arrived (`wire::parse_request`,
//! incomplete is "wait for more"), checks each (range, read-only, size) before the device sees
//! it, runs the I/O on the blocking pool and writes replies as they complete, in any order (the
//! cookie matches them). While idle the connection holds no buffer: it waits for readability and
//! only then allocates one.
//!
//! # Memory
//! The read and write buffers of the requests in flight, plus replies waiting to be written,
//! stay within `limits.nbd_bytes_in_flight` (one request is always admitted, so a write as
//! large as [`MAX_PAYLOAD`] still works): requests wait in the socket until replies leave. A
//! read larger than the bound is answered in pieces of half of it, each read while the previous
//! one is written, after the requests before it are answered (simple replies cannot interleave).
//! A client that never reads its replies therefore holds at most the bound, whatever it asks.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use citron_core::block::BlockDevice;
use citron_core::limits::Limits;
use citron_core::serve::{Export, ServeError};
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::wire::{self, cflag, cmd, errno};
use super::{nbd_error, MAX_PAYLOAD};

/// Requests of one connection served at once.
const MAX_IN_FLIGHT: usize = 16;
/// How much a read from the socket asks for at least.
const READ_CHUNK: usize = 64 * 1024;

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// The lab's limits as one connection applies them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// Bytes of request and reply buffers one connection may hold (`nbd_bytes_in_flight`).
    budget: usize,
    /// Close after this long without a request (`nbd_idle_timeout`, if set).
    idle: Option<Duration>,
}

impl Bounds {
    pub(crate) fn new(l: &Limits) -> Bounds {
        // At least two 4 KiB pieces, so that a read in pieces always moves.
        let budget = usize::try_from(l.nbd_bytes_in_flight.bytes()).unwrap_or(usize::MAX).max(8192);
        Bounds { budget, idle: l.nbd_idle_timeout.non_zero() }
    }

    /// Reads longer than this are sent in pieces ([`stream_read`]).
    fn piece(&self) -> usize {
        self.budget / 2
    }
}

/// What to do with one request.
enum Step {
    /// Answer now with these bytes.
    Reply(Vec<u8>),
    /// Answer when this I/O finishes.
    Io(JoinHandle<Vec<u8>>),
    /// A read larger than the connection's budget: answer it in pieces ([`stream_read`]).
    LargeRead(wire::Request),
    /// `NBD_CMD_DISC`: finish what is in flight, then close.
    Disconnect,
}

/// The complete reply to a request that failed with `error`.
fn error_reply(structured: bool, cookie: u64, error: u32, message: &str) -> Vec<u8> {
    if structured {
        let mut v = Vec::with_capacity(32 + message.len());
        wire::encode_structured_done(&mut v, cookie, error, message);
        v
    } else {
        let mut v = vec![0u8; wire::SIMPLE_REPLY_LEN];
        wire::put_simple_reply(&mut v, error, cookie);
        v
    }
}

fn done_reply(structured: bool, cookie: u64, result: Result<(), ServeError>) -> Vec<u8> {
    match result {
        Ok(()) => error_reply(structured, cookie, 0, ""),
        Err(e) => error_reply(structured, cookie, nbd_error(&e).errno, &e.to_string()),
    }
}

/// Refuses a request the device must not see: a write to a read-only disk (`NBD_EPERM`), or a
/// range past the end: `NBD_ENOSPC` for WRITE, WRITE_ZEROES and TRIM, `NBD_EINVAL` for READ, as
/// the protocol document asks. Returns the errno and the message.
fn check(dev: &dyn BlockDevice, name: &str, req: &wire::Request, writes: bool) -> Result<(), (u32, String)> {
    if writes && dev.readonly() {
        let e = ServeError::ReadOnly(name.to_string());
        return Err((nbd_error(&e).errno, e.to_string()));
    }
    let size = dev.size();
    if !matches!(req.offset.checked_add(req.len as u64), Some(end) if end <= size) {
        let e = ServeError::OutOfRange { offset: req.offset, len: req.len as u64, size };
        let errno = if writes { errno::ENOSPC } else { nbd_error(&e).errno };
        return Err((errno, e.to_string()));
    }
    Ok(())
}

fn plan(export: &Export, structured: bool, bounds: Bounds, req: wire::Request, payload: Bytes) -> Step {
    let dev: Arc<dyn BlockDevice> = export.device.clone();
    let name = export.info.name.as_str();
    let cookie = req.cookie;
    let fua = req.flags & cflag::FUA != 0;
    let known = cflag::FUA | cflag::NO_HOLE | cflag::DF;
    if req.flags & !known != 0 {
        return Step::Reply(error_reply(structured, cookie, errno::EINVAL, "unknown command flags"));
    }
    let writes = matches!(req.kind, cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES);
    if matches!(req.kind, cmd::READ | cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES) {
        if let Err((errno, message)) = check(&*dev, name, &req, writes) {
            return Step::Reply(error_reply(structured, cookie, errno, &message));
        }
    }
    let (offset, len) = (req.offset, req.len);
    let blocking = |f: Box<dyn FnOnce() -> Vec<u8> + Send>| Step::Io(tokio::task::spawn_blocking(f));
    match req.kind {
        cmd::READ if len > MAX_PAYLOAD => {
            Step::Reply(error_reply(structured, cookie, errno::EINVAL, "read larger than the maximum block size"))
        }
        cmd::READ if len as usize > bounds.budget => Step::LargeRead(req),
        cmd::READ => {
            export.ticket.add_bytes(len as u64);
            let hdr = if structured { wire::STRUCTURED_READ_LEN } else { wire::SIMPLE_REPLY_LEN };
            let mut v = vec![0u8; hdr + len as usize];
            let head = move |mut v: Vec<u8>| {
                if structured {
                    wire::put_structured_read(&mut v, cookie, offset, len);
                } else {
                    wire::put_simple_reply(&mut v, 0, cookie);
                }
                v
            };
            // Warm data (page cache) is answered on this task: no thread hand-off per request.
            match dev.read_cached(&mut v[hdr..], offset) {
                Ok(true) => Step::Reply(head(v)),
                Err(e) => Step::Reply(done_reply(structured, cookie, Err(e.into()))),
                Ok(false) => blocking(Box::new(move || match dev.read_at(&mut v[hdr..], offset) {
                    Ok(()) => head(v),
                    Err(e) => done_reply(structured, cookie, Err(e.into())),
                })),
            }
        }
        cmd::WRITE => blocking(Box::new(move || done_reply(structured, cookie, dev.write_at(&payload, offset, fua).map_err(Into::into)))),
        cmd::WRITE_ZEROES => {
            blocking(Box::new(move || done_reply(structured, cookie, dev.write_zeroes(offset, len as u64, fua).map_err(Into::into))))
        }
        cmd::TRIM => blocking(Box::new(move || {
            let r = dev.trim(offset, len as u64).and_then(|_| if fua { dev.flush() } else { Ok(()) });
            done_reply(structured, cookie, r.map_err(Into::into))
        })),
        cmd::FLUSH => blocking(Box::new(move || done_reply(structured, cookie, dev.flush().map_err(Into::into)))),
        cmd::DISC => Step::Disconnect,
        other => Step::Reply(error_reply(structured, cookie, errno::EINVAL, &format!("unknown command {other}"))),
    }
}

/// Bytes a request holds while in flight: its read buffer or its write payload.
fn cost(req: &wire::Request) -> usize {
    match req.kind {
        cmd::READ | cmd::WRITE => req.len as usize,
        _ => 0,
    }
}

/// Serves requests on `stream` until the client disconnects, stays idle past `bounds.idle`, or
/// `shutdown` changes.
pub(crate) async fn transmission(
    mut stream: TcpStream,
    export: Export,
    structured: bool,
    bounds: Bounds,
    shutdown: &mut watch::Receiver<bool>,
) -> io::Result<()> {
    let mut buf = BytesMut::new();
    // Each I/O in flight with the bytes it holds.
    let mut in_flight = FuturesUnordered::new();
    let mut held = 0usize;
    let mut closing = false;
    // Replies answered on this task, written together once the requests at hand are parsed:
    // one write for a batch of warm reads.
    let mut out: Vec<u8> = Vec::new();
    // A read to send in pieces once everything before it is answered.
    let mut large: Option<wire::Request> = None;
    let idle = tokio::time::sleep(bounds.idle.unwrap_or(Duration::MAX));
    tokio::pin!(idle);
    loop {
        // The budget is spent: read no more requests until replies leave.
        let mut full = false;
        while !closing && large.is_none() && in_flight.len() < MAX_IN_FLIGHT {
            let Some(req) = wire::parse_request(&buf).map_err(invalid)? else {
                break;
            };
            if req.kind == cmd::WRITE && req.len > MAX_PAYLOAD {
                // Its payload cannot be buffered and skipping it would be reading unbounded
                // data for nothing: the protocol allows closing instead.
                return Err(invalid(format!("write of {} bytes exceeds the maximum of {MAX_PAYLOAD}", req.len)));
            }
            let c = if req.kind == cmd::READ && req.len as usize > bounds.budget { 0 } else { cost(&req) };
            if c > 0 && held + out.len() > 0 && held + out.len() + c > bounds.budget {
                if !out.is_empty() {
                    stream.write_all(&std::mem::take(&mut out)).await?;
                    continue;
                }
                // `held > 0`: an I/O in flight will finish and free it.
                full = true;
                break;
            }
            let need = wire::REQUEST_LEN + req.payload_len();
            if buf.len() < need {
                buf.reserve(need - buf.len());
                break;
            }
            let mut frame = buf.split_to(need);
            let payload = frame.split_off(wire::REQUEST_LEN).freeze();
            match plan(&export, structured, bounds, req, payload) {
                Step::Reply(v) if out.is_empty() => out = v,
                Step::Reply(v) => out.extend_from_slice(&v),
                Step::Io(h) => {
                    held += c;
                    in_flight.push(h.map(move |r| (r, c)));
                }
                Step::LargeRead(req) => large = Some(req),
                Step::Disconnect => closing = true,
            }
            if out.len() >= READ_CHUNK {
                stream.write_all(&std::mem::take(&mut out)).await?;
            }
        }
        if !out.is_empty() {
            stream.write_all(&std::mem::take(&mut out)).await?;
        }
        if in_flight.is_empty() {
            if let Some(req) = large.take() {
                tokio::select! {
                    r = stream_read(&mut stream, &export, structured, bounds, req) => r?,
                    _ = shutdown.changed() => return Ok(()),
                }
                continue;
            }
        }
        if closing && in_flight.is_empty() {
            export.ticket.complete();
            return Ok(());
        }
        if buf.is_empty() && in_flight.is_empty() && buf.capacity() > 0 {
            buf = BytesMut::new();
        }
        let reading = !closing && !full && large.is_none() && in_flight.len() < MAX_IN_FLIGHT;
        tokio::select! {
            Some((done, c)) = in_flight.next(), if !in_flight.is_empty() => {
                held -= c;
                let reply = done.map_err(io::Error::other)?;
                stream.write_all(&reply).await?;
                if let Some(d) = bounds.idle {
                    idle.as_mut().reset(tokio::time::Instant::now() + d);
                }
            }
            r = stream.readable(), if reading => {
                r?;
                if buf.capacity() - buf.len() < 4096 {
                    buf.reserve(READ_CHUNK);
                }
                match stream.try_read_buf(&mut buf) {
                    Ok(0) => {
                        if !buf.is_empty() {
                            tracing::debug!(bytes = buf.len(), "NBD client closed mid-request");
                        }
                        buf.clear();
                        closing = true;
                    }
                    Ok(_) => {
                        if let Some(d) = bounds.idle {
                            idle.as_mut().reset(tokio::time::Instant::now() + d);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            // Half a request sent and then silence is idle too.
            _ = &mut idle, if bounds.idle.is_some() && in_flight.is_empty() => {
                tracing::info!(export = %export.info.name, timeout = ?bounds.idle, "NBD connection idle (limits.nbd_idle_timeout); closing");
                export.ticket.complete();
                return Ok(());
            }
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

/// Answers a read longer than the connection's budget in pieces of `bounds.piece()` bytes: one
/// piece is read (on the blocking pool) while the one before it is written, so at most two are
/// held. Structured replies send one `OFFSET_DATA` chunk per piece; a simple reply is its header
/// and the pieces back to back, and a failure after its header was sent can only close the
/// connection, as the protocol says.
async fn stream_read(stream: &mut TcpStream, export: &Export, structured: bool, bounds: Bounds, req: wire::Request) -> io::Result<()> {
    export.ticket.add_bytes(req.len as u64);
    let end = req.offset + req.len as u64;
    let piece = bounds.piece() as u64;
    let fill = |offset: u64, hdr: usize| {
        let dev = export.device.clone();
        let len = piece.min(end - offset) as usize;
        tokio::task::spawn_blocking(move || {
            let mut v = vec![0u8; hdr + len];
            dev.read_at(&mut v[hdr..], offset).map(|()| v)
        })
    };
    let hdr = if structured { wire::STRUCTURED_READ_LEN } else { wire::SIMPLE_REPLY_LEN };
    let mut pos = req.offset;
    let mut next = Some(fill(pos, hdr));
    let mut first = true;
    while let Some(h) = next.take() {
        let r = h.await.map_err(io::Error::other)?;
        let at = pos;
        let len = piece.min(end - at);
        pos += len;
        if pos < end {
            next = Some(fill(pos, if structured { hdr } else { 0 }));
        }
        match r {
            Ok(mut v) => {
                if structured {
                    wire::put_structured_read_chunk(&mut v, req.cookie, at, len as u32, pos == end);
                } else if first {
                    wire::put_simple_reply(&mut v, 0, req.cookie);
                }
                stream.write_all(&v).await?;
            }
            Err(e) if structured || first => {
                let e = ServeError::from(e);
                stream.write_all(&error_reply(structured, req.cookie, nbd_error(&e).errno, &e.to_string())).await?;
                return Ok(());
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("read failed after its reply began ({e}); closing"))),
        }
        first = false;
    }
    Ok(())
}
