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
//!
//! # A leaf
//! The seam names nothing of the core's other modules: every type a backend sees is defined here
//! or in its children (the [`Digest`], the page-cache reads, and the bounds backends apply,
//! [`limits`], with the [`units`] they are written in). The core's decisions reach it as values
//! ([`GoneReason`], [`PathError`]) or through a small trait the core implements
//! ([`AccessReport`]). Sibling modules depend on the seam, never the other way, so the seam can
//! become a crate of its own without moving anything else. Disks too: [`BlockDevice`] is defined
//! here, and [`Export`] checks every request before the device sees it.

pub(crate) mod digest;
pub mod limits;
pub(crate) mod nowait;
pub mod units;
mod upload;

pub use upload::{Upload, UploadAnswer, UploadBody, WriteRequest, Written};

use std::fmt;
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use digest::Digest;

/// A DUT's identifier (`id:` in the lab file); also its default `machine_id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct DutId(pub String);

impl fmt::Display for DutId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for DutId {
    fn from(s: &str) -> Self {
        DutId(s.to_string())
    }
}

/// The longest path accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;

/// Why a path is refused (see [`crate::namespace::normalize`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A `..` component.
    #[error("'..' is not allowed in paths")]
    ParentDir,
    /// A NUL or other control character.
    #[error("control characters (NUL, newline, ...) are not allowed in paths")]
    ControlChar,
    /// A backslash (ambiguous between firmware conventions).
    #[error("'\\' is not allowed in paths; use '/'")]
    Backslash,
    /// Nothing left after normalisation.
    #[error("the path is empty")]
    Empty,
    /// Longer than [`MAX_PATH_BYTES`].
    #[error("the path is longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    /// Under a prefix reserved for citron (`namespace::RESERVED_PREFIXES`).
    #[error("paths under '{0}' are reserved for citron")]
    Reserved(&'static str),
}

/// Why an artifact that exists is no longer served ([`ServeError::Gone`]): what the job's
/// lifetime policies decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GoneReason {
    /// `access_count` reads were already served since the last reset.
    #[error("already read {limit} time(s), the job's access_count; a boot event resets it")]
    Exhausted {
        /// The limit.
        limit: u32,
    },
    /// The artifact's expiration passed.
    #[error("expired {0:?} after the job started")]
    Expired(Duration),
}

mod disk;
pub use disk::{Access, BlockDevice, BlockError, Export, ExportInfo};

/// The name of a protocol, for logs, metrics and the access log. Backends define their own; the
/// core needs no list of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

/// A file space: which of a job's file lists (`storage.<name>`) a request is answered from. A
/// name, like [`Protocol`]: usually the protocol's own (`storage.http` for HTTP), but a backend
/// may serve another's (a second HTTP port serving `storage.http`).
///
/// The spaces a job may fill are [`Space::ALL`]: the one list a protocol with its own files
/// extends. From that line on, `storage.<name>:` is accepted in jobs (and an unknown key gets a
/// did-you-mean among them), its files are loaded and served, `citron render` and Python list
/// them, and the generated boot files are offered in it; nothing else in the core names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Space(pub &'static str);

impl Space {
    /// `storage.http`.
    pub const HTTP: Space = Space("http");
    /// `storage.tftp`.
    pub const TFTP: Space = Space("tftp");
    /// Every file space a job may fill, in the order listings show them.
    pub const ALL: &'static [Space] = &[Space::HTTP, Space::TFTP];

    /// The known space called `name`.
    ///
    /// ```
    /// use citron_core::serve::Space;
    /// assert_eq!(Space::named("tftp"), Some(Space::TFTP));
    /// assert_eq!(Space::named("nfs"), None);
    /// ```
    pub fn named(name: &str) -> Option<Space> {
        Space::ALL.iter().copied().find(|s| s.0 == name)
    }
}

impl fmt::Display for Space {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
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
    /// The part of the content asked for, if not all of it: a range that misses the content is
    /// refused by the core ([`ServeError::OutOfRange`]) before anything is used up.
    pub range: Option<RangeRequest<'a>>,
}

/// A byte range as a client wrote it (HTTP `Range: bytes=…`); the core resolves it against the
/// artifact's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// Bytes `first..=last` (`bytes=first-last`, `first <= last`).
    FromTo(u64, u64),
    /// From `first` to the end (`bytes=first-`).
    From(u64),
    /// The last `n` bytes (`bytes=-n`).
    Last(u64),
}

impl ByteRange {
    /// `[start, end)` within content of `len` bytes (a range reaching past the end is cut at
    /// it), or `None` if the range misses the content entirely: unsatisfiable (RFC 9110 §14.1.1).
    ///
    /// ```
    /// use citron_core::serve::ByteRange;
    /// assert_eq!(ByteRange::FromTo(50, 1000).resolve(100), Some((50, 100)));
    /// assert_eq!(ByteRange::Last(10).resolve(100), Some((90, 100)));
    /// assert_eq!(ByteRange::From(100).resolve(100), None);
    /// assert_eq!(ByteRange::Last(0).resolve(100), None);
    /// ```
    pub fn resolve(self, len: u64) -> Option<(u64, u64)> {
        match self {
            ByteRange::Last(0) => None,
            ByteRange::Last(_) if len == 0 => None,
            ByteRange::Last(n) => Some((len.saturating_sub(n), len)),
            ByteRange::From(a) | ByteRange::FromTo(a, _) if a >= len => None,
            ByteRange::From(a) => Some((a, len)),
            ByteRange::FromTo(a, b) => Some((a, b.saturating_add(1).min(len))),
        }
    }

    /// Where the range starts and how long it is, for [`ServeError::OutOfRange`].
    fn offset_and_len(self, size: u64) -> (u64, u64) {
        match self {
            ByteRange::FromTo(a, b) => (a, (b - a).saturating_add(1)),
            ByteRange::From(a) => (a, 0),
            ByteRange::Last(n) => (size.saturating_sub(n), n),
        }
    }
}

/// A range and when it applies, from the request's conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeRequest<'a> {
    /// The bytes asked for.
    pub bytes: ByteRange,
    /// The range applies only to this version of the artifact (HTTP `If-Range`); another version
    /// is answered whole, so the range is not checked against it.
    pub if_version: Option<Digest>,
    /// Versions the client already holds (HTTP `If-None-Match`, which comes before `Range`): it
    /// will be told so rather than sent a part, so the range is not checked against them.
    pub unless_versions: &'a [Digest],
}

impl RangeRequest<'_> {
    /// The core's check, before a read is used up: `Err` when the range applies to the artifact
    /// (`len` bytes, `digest`) and misses it entirely.
    pub fn check(&self, len: u64, digest: &Digest) -> Result<(), ServeError> {
        let applies = self.if_version.is_none_or(|v| v == *digest) && !self.unless_versions.contains(digest);
        if applies && self.bytes.resolve(len).is_none() {
            let (offset, want) = self.bytes.offset_and_len(len);
            return Err(ServeError::OutOfRange { offset, len: want, size: len });
        }
        Ok(())
    }
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
    Gone(#[from] GoneReason),
    /// A range outside the artifact or disk (for a file, one that misses it entirely: HTTP 416).
    #[error("out of range: offset {offset} + {len} bytes is past the end ({size} bytes)")]
    OutOfRange {
        /// Where the request started.
        offset: u64,
        /// How long it was.
        len: u64,
        /// The artifact's size.
        size: u64,
    },
    /// An upload brings more than the DUT's job allows (`results.max_size`).
    #[error("the upload is larger than {max} bytes, the most the job's `results.max_size` allows: nothing was kept")]
    TooLarge {
        /// The bound.
        max: u64,
    },
    /// An upload's path holds other content already: a run's file is never overwritten.
    #[error("{0} has other content already: a run's file is never overwritten; upload under another name")]
    Exists(String),
    /// Where uploads go is full.
    #[error("no space for the upload: {0}")]
    NoSpace(String),
    /// The disk or cache failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// What the core records of one read (or NBD connection): the backend reports bytes and
/// completion, the core writes the access log when the report is dropped. Implemented by the
/// core's access log; a backend only holds it inside an [`AccessTicket`].
pub trait AccessReport: Send + Sync + 'static {
    /// `n` more bytes were delivered (read or written).
    fn add_bytes(&self, n: u64);
    /// The client received everything it asked for.
    fn complete(&self);
}

/// The access-log entry of one read, open while this lives: dropping it writes the entry, as
/// served if [`complete`](Self::complete) was called, else as aborted. Backends therefore cannot
/// forget to log.
pub struct AccessTicket(Box<dyn AccessReport>);

impl AccessTicket {
    /// A ticket reporting to `report`.
    pub fn new(report: impl AccessReport) -> Self {
        AccessTicket(Box::new(report))
    }
    /// Adds delivered bytes.
    pub fn add_bytes(&self, n: u64) {
        self.0.add_bytes(n);
    }
    /// Marks the read as complete.
    pub fn complete(&self) {
        self.0.complete();
    }
}

impl fmt::Debug for AccessTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessTicket").finish_non_exhaustive()
    }
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
            Content::File(f) => nowait::read_cached(f, offset, len.min(self.len.saturating_sub(offset) as usize)),
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
    fn dut_of(&self, peer: IpAddr) -> Option<DutId>;

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

    /// A DUT's upload (HTTP `PUT`, TFTP write request): the core decides where it goes and how
    /// large it may be ([`upload`](self::Upload) says how the bytes move). Default: refused,
    /// as a catalog that takes no writes.
    fn write(&self, req: &WriteRequest<'_>) -> Result<Upload, ServeError> {
        Err(ServeError::Forbidden(format!("{} takes no uploads", req.path)))
    }

    /// The lab's `limits:`, which backends apply to connections (timeouts, caps, buffers).
    /// Default: [`Limits::default`](limits::Limits::default).
    fn limits(&self) -> limits::Limits {
        limits::Limits::default()
    }

    /// `Some` when `peer` is a DUT with no job serving yet whose job is being loaded (a lab
    /// starting, or a job set through the API): backends await it before [`open`](Catalog::open)
    /// and [`open_export`](Catalog::open_export), so that the DUT gets the file its job will
    /// have instead of "not found". The future completes when the load ends (served or failed)
    /// or after `limits.job_wait`, whichever comes first. Called on every request: `None` must
    /// be cheap. Default: `None` (nothing ever loads).
    fn job_loading(&self, peer: IpAddr) -> Option<JobWait> {
        let _ = peer;
        None
    }
}

/// What [`Catalog::job_loading`] returns: completes when the DUT's job serves, failed to load,
/// or the core's bound (`limits.job_wait`) passed.
pub type JobWait = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>;
