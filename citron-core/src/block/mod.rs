//! Block storage for NBD: disks prepared once per content and shared read-only, with a
//! copy-on-write overlay per DUT so that a reset is dropping a file, not copying a disk.
//!
//! # Layout
//! - [`CowDisk`]: one DUT's view of one disk (base + overlay + bitmap), the [`BlockDevice`]
//!   citron serves. The trait is the seam's ([`crate::serve`]): backends reach a device only
//!   through a checked [`Export`](crate::serve::Export).
//! - [`DiskStore`]: which job offers which disk to whom, each DUT's overlay, and when overlays
//!   go: on the events and expirations that the disk's
//!   [`DiskLifetime`](crate::lifetime::DiskLifetime) names, counted from the times its
//!   [`DiskRecord`] keeps in a [`DiskRecordStore`].
//! - `prepare`: raw, image (qcow2 converted with `qemu-img`) and filesystem (`mkfs.ext4 -d` from
//!   a tarball, or from a container image's layers pulled by `container`) bases, unpacked by
//!   [`extract`] beneath the tree's directory handle.

use std::io;
use std::path::{Path, PathBuf};

mod container;
pub mod extract;
mod overlay;
mod prepare;
mod records;
mod shared_base;
mod store;

pub use container::ImageRegistry;
pub use overlay::{CowDisk, BLOCK};
pub use prepare::BaseImage;
pub use records::{DiskRecord, DiskRecordStore, MemoryDiskRecords};
pub use store::DiskStore;

pub use crate::serve::BlockDevice;

use crate::artifact::FetchError;

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
