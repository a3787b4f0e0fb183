//! Disks at the seam: what a block protocol (NBD) is handed, and the one place that decides
//! whether a request may touch the disk.
//!
//! A backend opens an [`Export`] through [`Catalog::open_export`](super::Catalog::open_export)
//! and sends every request through it. The export checks each request before the device sees
//! it (range, write permission, a disk withdrawn under the connection) and answers with a
//! [`BlockError`]; the backend maps that to its protocol in one exhaustive `match` and never
//! checks a range or read-only flag itself, as nbdkit's core does for its plugins.

use std::fmt;
use std::io;
use std::sync::Arc;

use super::AccessTicket;

/// An export a DUT may see, as listed and described before it is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// The name clients ask for.
    pub name: String,
    /// A human description (the job disk's kind).
    pub description: String,
    /// Size in bytes.
    pub size: u64,
    /// Writes are refused.
    pub readonly: bool,
}

/// A disk as one DUT sees it: the storage behind an [`Export`]. It trusts its caller: offsets
/// and lengths are checked by the export against the size it advertised before any method is
/// called (the core checks, the device trusts).
///
/// One value serves every connection of its DUT, concurrently: a write acknowledged on one
/// connection is seen by reads on all of them, and `flush` on any makes all of them durable.
///
/// ```
/// use citron_core::block::{BlockDevice, CowDisk};
/// let dir = tempfile::tempdir().unwrap();
/// let disk = CowDisk::open(dir.path(), None, "raw-8192", 8192).unwrap();
/// disk.write_at(b"citron", 100, true).unwrap();
/// let mut buf = [0u8; 6];
/// disk.read_at(&mut buf, 100).unwrap();
/// assert_eq!(&buf, b"citron");
/// disk.reset().unwrap();
/// disk.read_at(&mut buf, 100).unwrap();
/// assert_eq!(buf, [0u8; 6]);
/// ```
pub trait BlockDevice: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Writes are refused.
    fn readonly(&self) -> bool;
    /// Why this view was withdrawn (its overlay was dropped by a reset or an expiration while a
    /// connection still held it), or `None` while it is the DUT's disk. Checked before every
    /// request, so it must be cheap. Default: never withdrawn.
    fn gone(&self) -> Option<&str> {
        None
    }
    /// Fills `buf` from `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Fills `buf` from `offset` only if that needs no waiting for the disk (everything is in
    /// the page cache): `Ok(false)` when it would wait, and then `buf` is to be filled by
    /// [`read_at`](Self::read_at) on a thread that may block. Lets a backend answer warm reads
    /// without a thread hand-off. Default: always `Ok(false)`.
    fn read_cached(&self, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        let _ = (buf, offset);
        Ok(false)
    }
    /// Writes `buf` at `offset`; with `fua` it is durable before this returns.
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()>;
    /// Makes `len` bytes at `offset` read as zeroes.
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> io::Result<()>;
    /// The DUT no longer needs these bytes; they may read back as anything (zeroes here).
    fn trim(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Makes every acknowledged write durable.
    fn flush(&self) -> io::Result<()>;
}

/// Why a disk request was refused or failed. Exhaustive on purpose, like
/// [`ServeError`](super::ServeError): a block backend maps it in one `match` with no catch-all,
/// so a new variant does not compile until every protocol answers it.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// A read that does not fit in the disk.
    #[error("read of {len} bytes at {offset} is past the end of the disk ({size} bytes)")]
    OutOfRange {
        /// Where the request started.
        offset: u64,
        /// How long it was.
        len: u64,
        /// The disk's size.
        size: u64,
    },
    /// A write (or zeroing, or trim) past the disk's end, or citron's data directory is full.
    #[error("no space: {0}")]
    NoSpace(String),
    /// A write to a read-only disk (the job's `readonly: true`); the message names the export.
    #[error("export {0} is read-only")]
    ReadOnly(String),
    /// The disk was withdrawn under this connection; the message says why and what to do.
    #[error("gone: {0}")]
    Gone(String),
    /// The overlay or base failed.
    #[error("I/O error: {0}")]
    Io(io::Error),
}

impl From<io::Error> for BlockError {
    fn from(e: io::Error) -> BlockError {
        if e.kind() == io::ErrorKind::StorageFull || matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
            return BlockError::NoSpace("citron's data directory is full; the lab admin must free space there".into());
        }
        BlockError::Io(e)
    }
}

/// What a request does to the disk, for [`Export::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads bytes.
    Read,
    /// Changes bytes (write, write zeroes, trim).
    Write,
}

/// A disk opened by one connection: what it is, the checked way to its device, and the
/// connection's access-log entry.
///
/// Every I/O method checks its request first (see [`check`](Export::check)), so a backend passes
/// requests on as they come. Holding an export keeps its access-log entry open: report bytes read
/// with [`sent`](Export::sent) and call [`complete`](Export::complete) on an orderly disconnect;
/// dropping it otherwise logs the connection as aborted.
///
/// ```
/// use std::sync::Arc;
/// use citron_core::access::AccessLog;
/// use citron_core::block::CowDisk;
/// use citron_core::serve::{BlockError, Export, ExportInfo, Protocol};
/// let disk = Arc::new(CowDisk::readonly(None, 4096).unwrap());
/// let info = ExportInfo { name: "d".into(), description: "raw".into(), size: 4096, readonly: true };
/// let ticket = Arc::new(AccessLog::default()).ticket([127, 0, 0, 2].into(), "dut".into(), Protocol::NBD, "d");
/// let export = Export::new(info, disk, ticket);
/// assert!(matches!(export.write(b"x", 0, false), Err(BlockError::ReadOnly(_))));
/// let mut buf = [1u8; 8];
/// assert!(matches!(export.read(&mut buf, 4090), Err(BlockError::OutOfRange { size: 4096, .. })));
/// export.read(&mut buf, 4088).unwrap();
/// assert_eq!(buf, [0u8; 8]);
/// ```
pub struct Export {
    info: ExportInfo,
    device: Arc<dyn BlockDevice>,
    ticket: AccessTicket,
}

impl fmt::Debug for Export {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Export").field("info", &self.info).finish_non_exhaustive()
    }
}

impl Export {
    /// The export `info` describes, served by `device`; `ticket` is the connection's access-log
    /// entry. Called by the catalog, which decided that the DUT may open it.
    pub fn new(info: ExportInfo, device: Arc<dyn BlockDevice>, ticket: AccessTicket) -> Export {
        Export { info, device, ticket }
    }

    /// What it is (name, size, read-only), as the client is told.
    pub fn info(&self) -> &ExportInfo {
        &self.info
    }

    /// Would a request of `len` bytes at `offset` be refused? Every I/O method asks this first;
    /// a backend asks it too before it spends anything on a request (a buffer, a thread, the
    /// header of a reply sent in pieces). In order: a withdrawn disk is [`BlockError::Gone`], a
    /// write to a read-only one [`BlockError::ReadOnly`], a read past the end
    /// [`BlockError::OutOfRange`] and a write past it [`BlockError::NoSpace`] (what NBD's
    /// protocol document asks for).
    pub fn check(&self, access: Access, offset: u64, len: u64) -> Result<(), BlockError> {
        if let Some(why) = self.device.gone() {
            return Err(BlockError::Gone(why.to_string()));
        }
        if access == Access::Write && self.info.readonly {
            return Err(BlockError::ReadOnly(self.info.name.clone()));
        }
        let size = self.info.size;
        if matches!(offset.checked_add(len), Some(end) if end <= size) {
            return Ok(());
        }
        Err(match access {
            Access::Read => BlockError::OutOfRange { offset, len, size },
            Access::Write => {
                BlockError::NoSpace(format!("{len} bytes at {offset} end past the end of export {} ({size} bytes)", self.info.name))
            }
        })
    }

    /// Fills `buf` from `offset`; may wait for the disk.
    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        self.check(Access::Read, offset, buf.len() as u64)?;
        Ok(self.device.read_at(buf, offset)?)
    }

    /// Fills `buf` from `offset` only if that needs no waiting (`Ok(false)`: call
    /// [`read`](Export::read) on a thread that may block), so that warm reads are answered
    /// without a thread hand-off.
    pub fn read_cached(&self, buf: &mut [u8], offset: u64) -> Result<bool, BlockError> {
        self.check(Access::Read, offset, buf.len() as u64)?;
        Ok(self.device.read_cached(buf, offset)?)
    }

    /// Writes `buf` at `offset`; with `fua` it is durable before this returns.
    pub fn write(&self, buf: &[u8], offset: u64, fua: bool) -> Result<(), BlockError> {
        self.check(Access::Write, offset, buf.len() as u64)?;
        Ok(self.device.write_at(buf, offset, fua)?)
    }

    /// Makes `len` bytes at `offset` read as zeroes; with `fua` durably.
    pub fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), BlockError> {
        self.check(Access::Write, offset, len)?;
        Ok(self.device.write_zeroes(offset, len, fua)?)
    }

    /// The DUT no longer needs `len` bytes at `offset`; with `fua` the trim is durable.
    pub fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), BlockError> {
        self.check(Access::Write, offset, len)?;
        self.device.trim(offset, len)?;
        if fua {
            self.device.flush()?;
        }
        Ok(())
    }

    /// Makes every acknowledged write durable (on every connection of this DUT to this disk).
    pub fn flush(&self) -> Result<(), BlockError> {
        if let Some(why) = self.device.gone() {
            return Err(BlockError::Gone(why.to_string()));
        }
        Ok(self.device.flush()?)
    }

    /// Records `n` more bytes read by the client, for the access log.
    pub fn sent(&self, n: u64) {
        self.ticket.add_bytes(n);
    }

    /// The client disconnected in order: the access log records the connection as complete.
    pub fn complete(&self) {
        self.ticket.complete();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::AccessLog;
    use crate::block::CowDisk;
    use crate::serve::Protocol;

    fn export(dir: &std::path::Path, readonly: bool) -> (Export, Arc<CowDisk>) {
        let disk = Arc::new(if readonly { CowDisk::readonly(None, 8192).unwrap() } else { CowDisk::open(dir, None, "raw", 8192).unwrap() });
        let info = ExportInfo { name: "d".into(), description: "raw".into(), size: 8192, readonly };
        let ticket = Arc::new(AccessLog::default()).ticket([127, 0, 0, 2].into(), "dut".into(), Protocol::NBD, "d");
        (Export::new(info, disk.clone(), ticket), disk)
    }

    #[test]
    fn every_request_is_checked_before_the_device_sees_it() {
        let dir = tempfile::tempdir().unwrap();
        let (e, disk) = export(dir.path(), false);
        e.write(b"abc", 8189, false).unwrap();
        assert!(matches!(e.write(b"abcd", 8189, false), Err(BlockError::NoSpace(_))));
        assert!(matches!(e.write_zeroes(u64::MAX, 2, false), Err(BlockError::NoSpace(_))), "no overflow");
        assert!(matches!(e.trim(0, 8193, true), Err(BlockError::NoSpace(_))));
        assert!(matches!(e.read(&mut [0u8; 4], 8189), Err(BlockError::OutOfRange { offset: 8189, len: 4, size: 8192 })));
        assert_eq!(disk.written_blocks(), 1, "refused writes touched nothing");
        e.flush().unwrap();
        disk.withdraw("reset for a new job");
        disk.withdraw("a later reason does not replace the first");
        for r in [e.write(b"x", 0, false), e.read(&mut [0u8; 1], 0), e.flush(), e.check(Access::Read, 0, 0)] {
            assert!(matches!(r, Err(BlockError::Gone(ref why)) if why == "reset for a new job"), "{r:?}");
        }
    }

    #[test]
    fn read_only_exports_refuse_changes_but_flush() {
        let dir = tempfile::tempdir().unwrap();
        let (e, _) = export(dir.path(), true);
        assert!(matches!(e.write_zeroes(0, 1, false), Err(BlockError::ReadOnly(ref n)) if n == "d"));
        assert!(matches!(e.trim(0, 1, false), Err(BlockError::ReadOnly(_))));
        assert!(matches!(e.write(b"x", 9000, false), Err(BlockError::ReadOnly(_))), "read-only is said before the range");
        e.flush().unwrap();
        let mut buf = [1u8; 16];
        assert!(e.read_cached(&mut buf, 0).is_ok());
    }
}
