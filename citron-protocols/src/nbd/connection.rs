//! One NBD connection: the socket, its buffers, the clock, and the two machines it drives.
//!
//! [`Connection::run`] sends the greeting and feeds arriving bytes to the
//! [negotiation](super::negotiate) until an export is chosen (within `limits.header_timeout`),
//! then to the [transmission](super::transmit) machine, carrying out its commands on the
//! [`Export`] the core opened: warm reads on this task (`read_cached`, no thread hand-off), the
//! rest on the blocking pool, replies written as they complete, in any order (the cookie matches
//! them). One buffer holds what was read from the socket, across both phases; while idle the
//! connection holds none.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use citron_core::limits::Limits;
use citron_core::serve::{Access, BlockError, Catalog, Export, ExportInfo, Protocol};
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::error::{errno, option_reply};
use super::negotiate::{Exports, Negotiation, Progress, Refusal};
use super::slots::{DutSlots, Slot};
use super::transmit::{self, Command, Next, Op, Transmission};
use super::wire::rep;

/// How much a read from the socket asks for at least.
const READ_CHUNK: usize = 64 * 1024;

/// The option reply's text when a DUT has all its connections open.
const TOO_MANY: &str = "too many NBD connections from this DUT (limits.nbd_connections_per_dut); close one first";

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// The lab's limits as one connection applies them.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    /// Bytes of request and reply buffers one connection may hold (`nbd_bytes_in_flight`).
    budget: usize,
    /// Close after this long without a request (`nbd_idle_timeout`, if set).
    idle: Option<Duration>,
    /// Finish the negotiation within this (`header_timeout`).
    negotiation: Duration,
}

impl Bounds {
    fn new(l: &Limits) -> Bounds {
        Bounds {
            budget: usize::try_from(l.nbd_bytes_in_flight.bytes()).unwrap_or(usize::MAX),
            idle: l.nbd_idle_timeout.non_zero(),
            negotiation: l.header_timeout.non_zero().unwrap_or(Duration::MAX),
        }
    }
}

/// The negotiation's questions about exports, answered by the catalog for this peer. Opening
/// takes one of the DUT's connection slots first.
struct CatalogExports<'a> {
    catalog: &'a dyn Catalog,
    peer: IpAddr,
    slots: &'a Arc<DutSlots>,
}

impl CatalogExports<'_> {
    fn refuse(&self, what: &str, name: &str, e: &citron_core::serve::ServeError) -> Refusal {
        // Opening refusals have their access line from the core.
        tracing::debug!(peer = %self.peer, export = %name, error = %e, "{what} refused");
        Refusal { rep: option_reply(e), message: e.to_string() }
    }
}

impl Exports for CatalogExports<'_> {
    type Open = (Export, Slot);

    fn list(&mut self) -> Vec<ExportInfo> {
        self.catalog.exports(self.peer)
    }

    fn describe(&mut self, name: &str) -> Result<ExportInfo, Refusal> {
        self.catalog.describe_export(self.peer, name).map_err(|e| self.refuse("NBD_OPT_INFO", name, &e))
    }

    fn open(&mut self, name: &str) -> Result<(ExportInfo, (Export, Slot)), Refusal> {
        let Some(slot) = self.slots.take(self.peer) else {
            return Err(Refusal { rep: rep::ERR_POLICY, message: TOO_MANY.into() });
        };
        match self.catalog.open_export(self.peer, Protocol::NBD, name) {
            Ok(export) => Ok((export.info().clone(), (export, slot))),
            Err(e) => Err(self.refuse("opening an NBD export", name, &e)),
        }
    }
}

/// What a command started: its reply now, or an I/O that gives it.
enum Started {
    Reply(Vec<u8>),
    Io(JoinHandle<Vec<u8>>),
}

/// One client connection: the socket and the buffers of both phases.
pub(crate) struct Connection {
    stream: TcpStream,
    peer: IpAddr,
    /// Bytes read and not yet consumed.
    input: BytesMut,
    /// Replies not yet written.
    out: Vec<u8>,
}

impl Connection {
    /// Serves `stream` until the client leaves, breaks the protocol, idles out, or `stop`
    /// changes.
    pub(crate) async fn run(
        stream: TcpStream,
        peer: IpAddr,
        catalog: Arc<dyn Catalog>,
        slots: Arc<DutSlots>,
        mut stop: watch::Receiver<bool>,
    ) {
        let bounds = Bounds::new(&catalog.limits());
        // A DUT whose job (and so its disks) is still loading is greeted once it is loaded.
        if let Some(wait) = catalog.job_loading(peer) {
            tokio::select! {
                _ = wait => {}
                _ = stop.changed() => return,
            }
        }
        let mut c = Connection { stream, peer, input: BytesMut::new(), out: Vec::with_capacity(64) };
        // A peer that connects and says nothing (or dribbles) would hold a descriptor forever.
        let negotiated = tokio::select! {
            r = tokio::time::timeout(bounds.negotiation, c.negotiate(&*catalog, &slots)) => match r {
                Ok(r) => r,
                Err(_) => {
                    tracing::debug!(%peer, timeout = ?bounds.negotiation, "NBD negotiation not finished in time (limits.header_timeout); closing");
                    return;
                }
            },
            _ = stop.changed() => return,
        };
        drop(catalog);
        let (export, slot, structured) = match negotiated {
            Ok(Some(n)) => n,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "NBD negotiation ended");
                return;
            }
        };
        tracing::debug!(%peer, export = %export.info().name, structured, "NBD transmission");
        let result = c.transmit(Arc::new(export), Transmission::new(structured, bounds.budget), bounds.idle, &mut stop).await;
        drop(slot);
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "NBD connection ended");
        }
    }

    /// Writes the replies waiting in `out`. The buffer goes with them (a read reply can be as
    /// large as the budget; an idle connection keeps none).
    async fn flush_out(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            self.stream.write_all(&out).await?;
        }
        Ok(())
    }

    /// Runs the negotiation. `Ok(None)`: the client ended it (abort, refused
    /// `NBD_OPT_EXPORT_NAME`); `Err`: I/O error or a client breaking the protocol.
    async fn negotiate(&mut self, catalog: &dyn Catalog, slots: &Arc<DutSlots>) -> io::Result<Option<(Export, Slot, bool)>> {
        let mut machine = Negotiation::start(&mut self.out);
        let mut exports = CatalogExports { catalog, peer: self.peer, slots };
        self.input.reserve(4096);
        loop {
            self.flush_out().await?;
            if self.stream.read_buf(&mut self.input).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            match machine.on_input(&mut self.input, &mut exports, &mut self.out).map_err(invalid)? {
                Progress::More => {}
                Progress::Close => {
                    let _ = self.flush_out().await;
                    return Ok(None);
                }
                Progress::Chosen { export: (export, slot), structured } => {
                    self.flush_out().await?;
                    return Ok(Some((export, slot, structured)));
                }
            }
        }
    }

    /// Serves requests until the client disconnects, stays idle past `idle`, or `stop` changes.
    async fn transmit(
        &mut self,
        export: Arc<Export>,
        mut machine: Transmission,
        idle_after: Option<Duration>,
        stop: &mut watch::Receiver<bool>,
    ) -> io::Result<()> {
        let structured = machine.structured();
        // Each I/O in flight with the bytes it holds.
        let mut in_flight = FuturesUnordered::new();
        let idle = tokio::time::sleep(idle_after.unwrap_or(Duration::MAX));
        tokio::pin!(idle);
        loop {
            loop {
                match machine.next(&mut self.input, &mut self.out).map_err(invalid)? {
                    Next::Wait => break,
                    Next::Flush => self.flush_out().await?,
                    Next::Run(cmd) => {
                        let cost = cmd.cost;
                        match start(&export, structured, cmd) {
                            Started::Reply(v) => {
                                machine.finished(cost);
                                if self.out.is_empty() {
                                    self.out = v;
                                } else {
                                    self.out.extend_from_slice(&v);
                                }
                            }
                            Started::Io(h) => in_flight.push(h.map(move |r| (r, cost))),
                        }
                        // Replies answered on this task go out together: one write for a batch
                        // of warm reads.
                        if self.out.len() >= READ_CHUNK {
                            self.flush_out().await?;
                        }
                    }
                    Next::Stream(cmd) => tokio::select! {
                        r = stream_read(&mut self.stream, &export, structured, machine.piece(), cmd) => r?,
                        _ = stop.changed() => return Ok(()),
                    },
                }
            }
            self.flush_out().await?;
            if machine.done() {
                export.complete();
                return Ok(());
            }
            if self.input.is_empty() && !machine.busy() && self.input.capacity() > 0 {
                self.input = BytesMut::new();
            }
            tokio::select! {
                Some((done, cost)) = in_flight.next(), if !in_flight.is_empty() => {
                    machine.finished(cost);
                    let reply = done.map_err(io::Error::other)?;
                    self.stream.write_all(&reply).await?;
                    if let Some(d) = idle_after {
                        idle.as_mut().reset(tokio::time::Instant::now() + d);
                    }
                }
                r = self.stream.readable(), if machine.wants_input() => {
                    r?;
                    if self.input.capacity() - self.input.len() < 4096 {
                        self.input.reserve(READ_CHUNK);
                    }
                    match self.stream.try_read_buf(&mut self.input) {
                        Ok(0) => {
                            if !self.input.is_empty() {
                                tracing::debug!(bytes = self.input.len(), "NBD client closed mid-request");
                            }
                            self.input.clear();
                            machine.on_eof();
                        }
                        Ok(_) => {
                            if let Some(d) = idle_after {
                                idle.as_mut().reset(tokio::time::Instant::now() + d);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
                // Half a request sent and then silence is idle too.
                _ = &mut idle, if idle_after.is_some() && in_flight.is_empty() => {
                    tracing::info!(peer = %self.peer, export = %export.info().name, timeout = ?idle_after, "NBD connection idle (limits.nbd_idle_timeout); closing");
                    export.complete();
                    return Ok(());
                }
                _ = stop.changed() => return Ok(()),
            }
        }
    }
}

/// Starts `cmd` on the export: refused or warm requests answer at once, the rest run on the
/// blocking pool. The export decides what is allowed; it is asked before any buffer or thread
/// is spent on a request.
fn start(export: &Arc<Export>, structured: bool, cmd: Command) -> Started {
    let Command { op, cookie, offset, len, fua, .. } = cmd;
    let access = match op {
        Op::Read => Some(Access::Read),
        Op::Write(_) | Op::WriteZeroes | Op::Trim => Some(Access::Write),
        // Covers no range; `flush` itself answers for a withdrawn disk.
        Op::Flush => None,
    };
    if let Some(Err(e)) = access.map(|a| export.check(a, offset, len as u64)) {
        return Started::Reply(transmit::done_reply(structured, cookie, Err(e)));
    }
    match op {
        Op::Read => {
            export.sent(len as u64);
            let hdr = transmit::read_header_len(structured);
            let mut v = vec![0u8; hdr + len as usize];
            // Warm data (page cache) is answered on this task: no thread hand-off per request.
            match export.read_cached(&mut v[hdr..], offset) {
                Ok(true) => {
                    transmit::put_read_header(&mut v, structured, cookie, offset, len);
                    Started::Reply(v)
                }
                Err(e) => Started::Reply(transmit::done_reply(structured, cookie, Err(e))),
                Ok(false) => blocking(export, move |export| match export.read(&mut v[hdr..], offset) {
                    Ok(()) => {
                        transmit::put_read_header(&mut v, structured, cookie, offset, len);
                        v
                    }
                    Err(e) => transmit::done_reply(structured, cookie, Err(e)),
                }),
            }
        }
        Op::Write(payload) => blocking(export, move |export| transmit::done_reply(structured, cookie, export.write(&payload, offset, fua))),
        Op::WriteZeroes => {
            blocking(export, move |export| transmit::done_reply(structured, cookie, export.write_zeroes(offset, len as u64, fua)))
        }
        Op::Trim => blocking(export, move |export| transmit::done_reply(structured, cookie, export.trim(offset, len as u64, fua))),
        Op::Flush => blocking(export, move |export| transmit::done_reply(structured, cookie, export.flush())),
    }
}

/// Runs `f` on the export on the blocking pool; its result is the reply.
fn blocking<F>(export: &Arc<Export>, f: F) -> Started
where
    F: FnOnce(&Export) -> Vec<u8> + Send + 'static,
{
    let export = export.clone();
    Started::Io(tokio::task::spawn_blocking(move || f(&export)))
}

/// Answers a read longer than the connection's budget in pieces of `piece` bytes: one piece is
/// read (on the blocking pool) while the one before it is written, so at most two are held.
/// Structured replies send one `OFFSET_DATA` chunk per piece; a simple reply is its header and
/// the pieces back to back, and a failure after its header was sent can only close the
/// connection, as the protocol says. The whole range is checked before anything is sent.
async fn stream_read(stream: &mut TcpStream, export: &Arc<Export>, structured: bool, piece: usize, cmd: Command) -> io::Result<()> {
    let reply = |e: BlockError| {
        let mut v = Vec::with_capacity(32);
        transmit::push_error(&mut v, structured, cmd.cookie, errno(&e), &e.to_string());
        v
    };
    if let Err(e) = export.check(Access::Read, cmd.offset, cmd.len as u64) {
        return stream.write_all(&reply(e)).await;
    }
    export.sent(cmd.len as u64);
    let end = cmd.offset + cmd.len as u64;
    let piece = piece as u64;
    let fill = |offset: u64, hdr: usize| {
        let export = export.clone();
        let len = piece.min(end - offset) as usize;
        tokio::task::spawn_blocking(move || {
            let mut v = vec![0u8; hdr + len];
            export.read(&mut v[hdr..], offset).map(|()| v)
        })
    };
    let hdr = transmit::read_header_len(structured);
    let mut pos = cmd.offset;
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
                    super::wire::put_structured_read_chunk(&mut v, cmd.cookie, at, len as u32, pos == end);
                } else if first {
                    super::wire::put_simple_reply(&mut v, 0, cmd.cookie);
                }
                stream.write_all(&v).await?;
            }
            Err(e) if structured || first => return stream.write_all(&reply(e)).await,
            Err(e) => return Err(io::Error::other(format!("read failed after its reply began ({e}); closing"))),
        }
        first = false;
    }
    Ok(())
}
