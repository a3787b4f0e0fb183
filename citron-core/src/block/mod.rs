//! Block storage for NBD: disks prepared once per job and shared read-only, with a copy-on-write
//! overlay per DUT so that a reset is dropping a file, not copying a disk.

use std::io;

/// A disk as one DUT sees it. Offsets and lengths are checked by the caller against
/// [`size`](BlockDevice::size) before any method is called (the core checks, the device trusts).
pub trait BlockDevice: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Writes are refused.
    fn readonly(&self) -> bool;
    /// Fills `buf` from `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes `buf` at `offset`; with `fua` it is durable before this returns.
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()>;
    /// Makes `len` bytes at `offset` read as zeroes.
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> io::Result<()>;
    /// The DUT no longer needs these bytes; they may read back as anything (zeroes here).
    fn trim(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Makes every acknowledged write durable.
    fn flush(&self) -> io::Result<()>;
}
