//! The seam between the core and the protocol backends.
//!
//! A backend (HTTP, TFTP, NBD, or one added later) holds one `Arc<dyn Catalog>` and asks it, for
//! every request, "this peer wants this name": the catalog identifies the DUT, normalises the
//! path, applies the job's lifetime policies, writes the access log and answers with an
//! [`Artifact`] (a readable, seekable blob with its length and digest) or a [`ServeError`]. The
//! backend passes that decision on in its own protocol and never re-derives policy: nothing in a
//! backend names `LifetimePolicy` or a job.
//!
//! `open` is synchronous: artifacts are fetched into the cache when a job is loaded, so serving
//! never waits for the network. Reads are `pread`s on the cached file; backends run them on a
//! blocking-capable thread when they are large.

use std::fmt;
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;

use crate::access::AccessTicket;
use crate::digest::Digest;
use crate::namespace::PathError;

mod disk;
pub use disk::{Access, BlockDevice, BlockError, Export, ExportInfo};

/// The name of a protocol, for logs, metrics and the access log. Backends define their own; the
/// core needs no list of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Protocol(pub &'static str);

impl Protocol {
    /// HTTP.
    pub const HTTP: Protocol = Protocol("http");
    /// TFTP.
    pub const TFTP: Protocol = Protocol("tftp");
    /// NBD.
    pub const NBD: Protocol = Protocol("nbd");
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Which of a job's file lists a request is answered from (`storage.http` or `storage.tftp`). A new
/// file protocol picks the space whose files it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Space {
    /// `storage.http`.
    Http,
    /// `storage.tftp`.
    Tftp,
}

/// What the reader will do with the artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Read the content: counts against `access_count`.
    Read,
    /// Only look at its size and digest (HTTP HEAD): counts nothing, but is refused where a
    /// read would be (a used-up or expired artifact).
    Stat,
}

/// One request for a file.
#[derive(Debug, Clone)]
pub struct FileRequest<'a> {
    /// The source address of the request: who is asking.
    pub peer: IpAddr,
    /// The protocol asking, for the log.
    pub protocol: Protocol,
    /// Which file list answers.
    pub space: Space,
    /// The path as the client sent it (decoded, not yet normalised).
    pub path: &'a str,
    /// How the DUT reaches this server (`http://10.0.2.2:8080`), for generated files that point
    /// back at citron; `None` makes them use relative names.
    pub base_url: Option<&'a str>,
    /// Content or only metadata.
    pub intent: Intent,
}

/// Why a request is refused. Exhaustive on purpose: every backend maps every variant in one
/// function with no catch-all arm, so a new variant does not compile until each protocol answers it.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// No DUT has this source address.
    #[error("no DUT is registered with address {0}")]
    UnknownDut(IpAddr),
    /// The DUT's namespace has no such name.
    #[error("not found: {0}")]
    NotFound(String),
    /// The path is malformed or tries to leave the namespace.
    #[error("bad path: {0}")]
    BadPath(#[from] PathError),
    /// The artifact exists but this DUT may not have it (another DUT's private disk).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The lifetime policy refused: read too often or expired.
    #[error("gone: {0}")]
    Gone(#[from] crate::lifetime::Refusal),
    /// A write to something read-only.
    #[error("read-only: {0}")]
    ReadOnly(String),
    /// A range outside the artifact or disk.
    #[error("out of range: offset {offset} + {len} bytes is past the end ({size} bytes)")]
    OutOfRange {
        /// Where the request started.
        offset: u64,
        /// How long it was.
        len: u64,
        /// The artifact's size.
        size: u64,
    },
    /// The disk or cache failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// Where an artifact's bytes are.
#[derive(Debug, Clone)]
pub enum Content {
    /// In memory (inline data, generated files).
    Memory(Bytes),
    /// A file in the cache, opened once; reads are positioned (`pread`), so one handle serves
    /// any number of concurrent readers.
    File(Arc<File>),
}

/// A file a DUT is allowed to read now, with what a protocol needs to send it.
///
/// Holding it keeps its access-log entry open: report bytes with [`Artifact::sent`], call
/// [`Artifact::complete`] when the client has everything; dropping it earlier logs the read as
/// aborted.
#[derive(Debug)]
pub struct Artifact {
    /// The normalised name it was found under.
    pub name: String,
    /// Size in bytes.
    pub len: u64,
    /// SHA-256 of the content.
    pub digest: Digest,
    /// The bytes.
    pub content: Content,
    /// The access-log entry this read writes when it ends.
    pub ticket: AccessTicket,
}

impl Artifact {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many (0 at the end).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let want = buf.len().min((self.len - offset) as usize);
        match &self.content {
            Content::Memory(b) => {
                let o = offset as usize;
                buf[..want].copy_from_slice(&b[o..o + want]);
                Ok(want)
            }
            Content::File(f) => read_at(f, offset, &mut buf[..want]),
        }
    }

    /// Reads exactly `len` bytes at `offset` into a new buffer (shorter only at the end).
    pub fn read_chunk(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        if let Content::Memory(b) = &self.content {
            let start = offset.min(self.len) as usize;
            let end = (offset.saturating_add(len as u64)).min(self.len) as usize;
            return Ok(b.slice(start..end));
        }
        let len = len.min(self.len.saturating_sub(offset) as usize);
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let n = self.read_at(offset + done as u64, &mut buf[done..])?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "cached file is shorter than recorded"));
            }
            done += n;
        }
        Ok(Bytes::from(buf))
    }

    /// Reads up to `len` bytes at `offset` only if that needs no waiting for the disk (the
    /// bytes are in memory or in the page cache, `preadv2(RWF_NOWAIT)`): `Ok(None)` when it
    /// would wait, so that an async backend reads warm data on its own thread and sends only
    /// cold reads to a blocking pool. May return fewer bytes than asked (part of the range is
    /// cached); an empty buffer only at the end or for `len` 0.
    pub fn read_cached(&self, offset: u64, len: usize) -> io::Result<Option<Bytes>> {
        match &self.content {
            Content::Memory(_) => self.read_chunk(offset, len).map(Some),
            Content::File(f) => crate::nowait::read_cached(f, offset, len.min(self.len.saturating_sub(offset) as usize)),
        }
    }

    /// Records `n` more bytes delivered to the client.
    pub fn sent(&self, n: u64) {
        self.ticket.add_bytes(n);
    }

    /// The client received everything it asked for.
    pub fn complete(&self) {
        self.ticket.complete();
    }
}

#[cfg(unix)]
fn read_at(f: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    f.read_at(buf, offset)
}

/// Everything a protocol backend asks the core.
///
/// Implemented by [`Gateway`](crate::gateway::Gateway); backends take `Arc<dyn Catalog>` so that
/// tests and embedders can substitute their own.
pub trait Catalog: Send + Sync + 'static {
    /// The DUT that has source address `peer`, if any: for a backend's per-DUT bounds (transfer
    /// slots, connections) and to treat sources that are no DUT more warily, before any request
    /// is decided. Uses nothing up and logs nothing.
    fn dut_of(&self, peer: IpAddr) -> Option<crate::namespace::DutId>;

    /// A file read or stat. Called once per request, before any byte is sent. `Err` is the
    /// answer to give (already logged and counted by the core). With [`Intent::Read`] a success
    /// uses up one read of the artifact's `access_count`.
    fn open(&self, req: &FileRequest<'_>) -> Result<Artifact, ServeError>;

    /// The NBD exports `peer` may list: its job's disks and the lab's shared ones. An unknown
    /// peer sees none.
    fn exports(&self, peer: IpAddr) -> Vec<ExportInfo>;

    /// Opens export `name` for `peer`, or refuses (`NotFound` for names it may not know about,
    /// so that a DUT cannot probe another's disk names). The empty name is the default export:
    /// the first of [`exports`](Catalog::exports).
    fn open_export(&self, peer: IpAddr, protocol: Protocol, name: &str) -> Result<Export, ServeError>;

    /// What export `name` is, without opening it (NBD's `NBD_OPT_INFO`: no overlay is made, no
    /// access is logged). Answers exactly as [`open_export`](Catalog::open_export) would decide:
    /// names `peer` may not open are `NotFound`, the empty name is the default export. Default:
    /// the entry of [`exports`](Catalog::exports) with that name, the first one for `""`.
    fn describe_export(&self, peer: IpAddr, name: &str) -> Result<ExportInfo, ServeError> {
        let list = self.exports(peer);
        let found = if name.is_empty() { list.into_iter().next() } else { list.into_iter().find(|e| e.name == name) };
        found.ok_or_else(|| ServeError::NotFound(name.to_string()))
    }

    /// The lab's `limits:`, which backends apply to connections (timeouts, caps, buffers).
    /// Default: [`Limits::default`](crate::limits::Limits::default).
    fn limits(&self) -> crate::limits::Limits {
        crate::limits::Limits::default()
    }
}
