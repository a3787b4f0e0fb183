//! The data directory (`--data`): one gateway owns it at a time, and it starts clean.
//!
//! Two `citron serve` on one data directory would prepare the same disks and evict each other's
//! cache files under their feet, so the first takes an exclusive lock (`flock` on `<data>/lock`,
//! released by the kernel when the process dies, even by `kill -9`) and the second is refused with
//! the holder's PID. Once the lock is held, nothing else can be writing here, so temporary files a
//! crashed run left behind (half-built disk trees and images, overlay metadata being replaced) are
//! removed before anything reads the directory.
//!
//! ```
//! use citron_core::datadir::DataDir;
//! let dir = tempfile::tempdir().unwrap();
//! let held = DataDir::open(dir.path()).unwrap();
//! let again = DataDir::open(dir.path()).unwrap_err();
//! assert!(again.to_string().contains("already used by"), "{again}");
//! drop(held);
//! DataDir::open(dir.path()).unwrap();
//! ```

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why a data directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    /// Another process holds the lock.
    #[error("data directory {path} is already used by another citron (pid {pid}); stop it, or give this one its own --data")]
    Busy {
        /// The directory.
        path: PathBuf,
        /// The holder's PID as it wrote it (`?` when unreadable).
        pid: String,
    },
    /// The directory or its lock file cannot be created or opened.
    #[error("data directory {path}: {source}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// A data directory held by this process; the lock is released when it is dropped.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates (mode 0700: it holds every job's secrets) and locks `path`, then removes the
    /// temporary files a previous run left.
    pub fn open(path: &Path) -> Result<DataDir, DataDirError> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| DataDirError::Io { path: p, source }
        };
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(io(path))?;
        let lock_path = path.join("lock");
        let mut lock =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(&lock_path).map_err(io(&lock_path))?;
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut pid = String::new();
                let _ = lock.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(DataDirError::Busy { path: path.to_path_buf(), pid: if pid.is_empty() { "?".into() } else { pid.into() } });
            }
            return Err(io(&lock_path)(err));
        }
        let write_pid = |f: &mut File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.rewind()?;
            writeln!(f, "{}", std::process::id())
        };
        write_pid(&mut lock).map_err(io(&lock_path))?;
        let removed = remove_leftovers(path);
        if removed > 0 {
            tracing::info!(data = %path.display(), removed, "removed temporary files left by an earlier run");
        }
        Ok(DataDir { path: path.to_path_buf(), _lock: lock })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Removes `*.tmp` files and directories under the data directory (never following symlinks),
/// where every writer in citron builds what it then renames into place; returns how many.
fn remove_leftovers(root: &Path) -> usize {
    /// The layout is shallow (`disks/bases/X.tree.tmp`, `disks/D/N/meta.tmp`); deeper trees are
    /// the insides of disks being built, which go with their `.tmp` parent.
    const MAX_DEPTH: usize = 4;
    fn walk(dir: &Path, depth: usize, removed: &mut usize) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            let p = e.path();
            if e.file_name().to_string_lossy().ends_with(".tmp") {
                let r = if ft.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
                match r {
                    Ok(()) => *removed += 1,
                    Err(err) => tracing::warn!(path = %p.display(), %err, "cannot remove a leftover temporary file"),
                }
            } else if ft.is_dir() && depth < MAX_DEPTH {
                walk(&p, depth + 1, removed);
            }
        }
    }
    let mut removed = 0;
    // The cache cleans its own `tmp/` (it knows which partial downloads it may resume).
    walk(&root.join("disks"), 1, &mut removed);
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_removed_and_the_rest_kept() {
        let t = tempfile::tempdir().unwrap();
        let bases = t.path().join("disks/bases");
        std::fs::create_dir_all(bases.join("abc.tree.1.0.tmp/etc")).unwrap();
        std::fs::write(bases.join("abc.tree.1.0.tmp/etc/passwd"), "x").unwrap();
        std::fs::write(bases.join("abc.img.1.1.tmp"), "x").unwrap();
        std::fs::write(bases.join("abc.img"), "keep").unwrap();
        std::fs::create_dir_all(t.path().join("disks/dut1/root")).unwrap();
        std::fs::write(t.path().join("disks/dut1/root/meta.tmp"), "x").unwrap();
        std::fs::write(t.path().join("disks/dut1/root/meta"), "keep").unwrap();
        let d = DataDir::open(t.path()).unwrap();
        assert!(!bases.join("abc.tree.1.0.tmp").exists());
        assert!(!bases.join("abc.img.1.1.tmp").exists());
        assert!(!t.path().join("disks/dut1/root/meta.tmp").exists());
        assert_eq!(std::fs::read_to_string(bases.join("abc.img")).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(t.path().join("disks/dut1/root/meta")).unwrap(), "keep");
        assert_eq!(d.path(), t.path());
    }

    #[test]
    fn the_second_holder_is_told_who_has_it() {
        let t = tempfile::tempdir().unwrap();
        let _held = DataDir::open(t.path()).unwrap();
        let e = DataDir::open(t.path()).unwrap_err();
        assert!(e.to_string().contains(&format!("pid {}", std::process::id())), "{e}");
    }
}
