//! Block storage for NBD: disks prepared once per content and shared read-only, with a
//! copy-on-write overlay per DUT so that a reset is dropping a file, not copying a disk.
//!
//! # Layout
//! - [`BlockDevice`]: what a protocol backend reads and writes.
//! - [`CowDisk`]: one DUT's view of one disk (base + overlay + bitmap), the `BlockDevice` citron
//!   serves.
//! - [`DiskStore`]: which job offers which disk to whom, resets on events, expiration.
//! - `prepare`: raw, image (qcow2 converted with `qemu-img`) and filesystem (`mkfs.ext4 -d` from
//!   a tarball, or from a container image's layers pulled by `container`) bases, unpacked by
//!   [`extract`] beneath the tree's directory handle.

use std::io;
use std::path::{Path, PathBuf};

mod container;
pub mod extract;
mod overlay;
mod prepare;
mod store;

pub use container::ImageRegistry;
pub use overlay::{CowDisk, BLOCK};
pub use prepare::BaseImage;
pub use store::DiskStore;

use crate::artifact::FetchError;

/// A disk as one DUT sees it. Offsets and lengths are checked by the caller against
/// [`size`](BlockDevice::size) before any method is called (the core checks, the device trusts).
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

/// Why a job's disk could not be prepared.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiskError {
    /// The image or tarball could not be fetched.
    #[error("{0}")]
    Fetch(#[from] FetchError),
    /// The job asks for something citron does not build.
    #[error("unsupported disk: {0}")]
    Unsupported(String),
    /// An external tool failed or is missing.
    #[error("{tool} failed: {message}; is it installed (qemu-utils, e2fsprogs)?")]
    Tool {
        /// The program.
        tool: String,
        /// Its exit status and error output.
        message: String,
    },
    /// A tarball or an image's layers could not be unpacked: a hostile or oversized archive, or
    /// a full data directory.
    #[error("{what}: {error}")]
    Unpack {
        /// The tarball's source or the `docker://` reference.
        what: String,
        /// What went wrong, naming the entry or the limit.
        #[source]
        error: extract::ExtractError,
    },
    /// A container image could not be pulled or flattened.
    #[error("container {reference}: {message}")]
    Container {
        /// The `docker://` reference.
        reference: String,
        /// What went wrong.
        message: String,
    },
    /// The disk (a qcow2 image's virtual size, or a size given in code) is larger than the lab
    /// allows.
    #[error("{what} is {} bytes, larger than this lab allows ({max} bytes, `limits.max_disk_size` in the lab file); use a smaller disk", .size)]
    TooLarge {
        /// The disk, e.g. `image sha256:…`.
        what: String,
        /// Its size in bytes.
        size: u64,
        /// The lab's limit.
        max: u64,
    },
    /// A disk image citron refuses to convert.
    #[error("image {what}: {message}")]
    BadImage {
        /// The image, `sha256:…`.
        what: String,
        /// What is wrong with it.
        message: String,
    },
    /// The data directory's filesystem is full: this job's disk is not made (nothing else is
    /// touched).
    #[error("no space left in citron's data directory writing {path}; the lab admin must free space there")]
    NoSpace {
        /// The file being written.
        path: PathBuf,
    },
    /// The disk store's files.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

impl DiskError {
    /// The job's tarball or image is at fault (hostile entries, over a limit, not a tar
    /// archive), not citron or the lab: the job's author must fix it.
    pub fn is_content_fault(&self) -> bool {
        use extract::ExtractError as X;
        matches!(
            self,
            DiskError::Unpack {
                error: X::Escape { .. } | X::Parent { .. } | X::TooBig { .. } | X::TooMany { .. } | X::Unsupported { .. } | X::Archive(_),
                ..
            }
        )
    }

    /// citron's data directory is full: the lab admin must free space (HTTP 507, not the job's
    /// fault and not citron's bug).
    pub fn is_no_space(&self) -> bool {
        matches!(self, DiskError::NoSpace { .. } | DiskError::Unpack { error: extract::ExtractError::NoSpace { .. }, .. })
    }

    pub(crate) fn io(path: &Path, source: io::Error) -> DiskError {
        if matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
            return DiskError::NoSpace { path: path.to_path_buf() };
        }
        DiskError::Io { path: path.to_path_buf(), source }
    }
}
