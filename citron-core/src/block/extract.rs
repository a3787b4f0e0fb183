//! Unpacking tarballs and container image layers into a directory tree, when the archive is
//! hostile.
//!
//! A job's tarball or image comes from whoever wrote the job (or controls the registry it names),
//! and the tree is built inside citron's data directory, next to every other job's prepared base
//! disk. So every name is resolved beneath the tree's root directory handle ([`cap_std::fs::Dir`]:
//! `openat2(RESOLVE_BENEATH)` where the kernel has it, a component-by-component walk with
//! `O_NOFOLLOW` otherwise), never by joining strings, and the last component of an entry is acted
//! on through its parent's handle without following it. What that means for each kind of entry:
//!
//! - Names with a `..` component or an absolute name: the archive is refused, naming the entry.
//!   (`./` prefixes are fine.)
//! - Symlinks are created with any target: a target is data inside the image. A later entry
//!   whose directory is reached through a symlink is written there only if the symlink stays
//!   beneath the root (relative, no `..` out of it); an absolute symlink or one leading out on the
//!   way is refused. An entry never writes through a symlink at its own name: whatever is there
//!   (file, symlink, directory) is removed first and the new file created with `O_EXCL`.
//! - Hard links must name a file beneath the root (same rules as entry names).
//! - Whiteouts (layers only): `.wh.NAME` removes NAME from its directory, `.wh..wh..opq` empties
//!   the directory; `.wh.`, `.wh..` and `.wh...` (hiding nothing, `.` or `..`) are refused.
//! - Device nodes and FIFOs are skipped with a warning, as rootless container runtimes do: citron
//!   does not run as root and such a node is inert inside a disk image anyway.
//! - Bytes written are bounded by `limits.unpack_max_bytes` and the filesystem's size, entries by
//!   `limits.unpack_max_entries`, both counted as the archive is read. GNU long names and PAX
//!   headers are read by this module with a bound (the `tar` crate would read them whole), and
//!   GNU sparse entries and PAX size overrides are refused rather than misread.
//!
//! The tree's root is created `0700` so that nothing in it (a setuid file is data here too) is
//! reachable by other local users while it is built; [`Tree::finish`] gives it the archive's mode.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use cap_fs_ext::DirExt as _;
use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt, Permissions};

use crate::artifact::{Progress, ProgressReader};

/// How much one tree may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// `limits.unpack_max_bytes`.
    pub max_bytes: u64,
    /// `limits.unpack_max_entries`.
    pub max_entries: u64,
    /// The filesystem's declared size (0: none declared, the tree decides it).
    pub fs_size: u64,
}

impl UnpackLimits {
    /// From the lab's limits, for a filesystem of `fs_size` bytes (0: not declared).
    pub fn new(limits: &crate::limits::Limits, fs_size: u64) -> UnpackLimits {
        UnpackLimits { max_bytes: limits.unpack_max_bytes.bytes(), max_entries: limits.unpack_max_entries, fs_size }
    }

    fn byte_bound(&self) -> (u64, String) {
        if self.fs_size > 0 && self.fs_size < self.max_bytes {
            (self.fs_size, format!("the filesystem's `size: {}`", crate::limits::Size(self.fs_size)))
        } else {
            (self.max_bytes, format!("limits.unpack_max_bytes = {} in the lab file", crate::limits::Size(self.max_bytes)))
        }
    }
}

/// Why an archive could not be unpacked. Entry names are shown escaped and cut to 200 chars.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExtractError {
    /// An entry reaches (or would reach) outside the tree.
    #[error("entry `{entry}` {why}; citron refuses archives with entries outside their root: remove that entry")]
    Escape {
        /// The entry's name.
        entry: String,
        /// What is wrong with it.
        why: String,
    },
    /// An entry's directory cannot be reached beneath the root (an absolute symlink, or one
    /// leading out, on the way; or a file where a directory should be).
    #[error("entry `{entry}`: its directory cannot be opened beneath the tree's root ({source}); a symlink on the way that is absolute or leads out of the root is not followed")]
    Parent {
        /// The entry's name.
        entry: String,
        /// The error.
        source: io::Error,
    },
    /// More bytes than allowed.
    #[error("unpacks to more than {limit} bytes, the bound set by {key}; make the archive smaller or raise that bound")]
    TooBig {
        /// The bound.
        limit: u64,
        /// Which setting set it.
        key: String,
    },
    /// More entries than allowed.
    #[error("has more than {limit} entries (limits.unpack_max_entries in the lab file); make the archive smaller or raise the limit")]
    TooMany {
        /// The limit.
        limit: u64,
    },
    /// The archive uses a tar feature citron does not unpack.
    #[error("entry `{entry}`: {what} is not supported; rebuild the archive without it")]
    Unsupported {
        /// The entry's name.
        entry: String,
        /// The feature.
        what: String,
    },
    /// The data directory's filesystem is full.
    #[error("no space left in citron's data directory while unpacking `{entry}`; the lab admin must free space there (or lower limits.unpack_max_bytes)")]
    NoSpace {
        /// The entry being written.
        entry: String,
    },
    /// Creating an entry failed.
    #[error("entry `{entry}`: {source}")]
    Io {
        /// The entry's name.
        entry: String,
        /// The error.
        source: io::Error,
    },
    /// The archive itself is unreadable (truncated, not tar, bad gzip).
    #[error("not a readable tar archive: {0}")]
    Archive(io::Error),
}

fn io_err(entry: &str, e: io::Error) -> ExtractError {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => ExtractError::NoSpace { entry: entry.to_string() },
        _ => ExtractError::Io { entry: entry.to_string(), source: e },
    }
}

/// Longest entry name (Linux's `PATH_MAX`): resolving a name costs a system call per component.
const MAX_NAME: usize = 4096;

/// Longest GNU long name / long link, and PAX header, read into memory.
const MAX_EXTENSION: u64 = 1 << 20;

/// `archive` as a reader, gunzipped if it starts with the gzip magic; how much of the file was
/// read is reported as the progress of unpacking `what` (a bar on a terminal, a log line every
/// few seconds otherwise: a big root filesystem takes minutes).
pub fn open_archive(archive: &Path, what: &str) -> io::Result<Box<dyn Read + Send>> {
    let mut f = std::fs::File::open(archive)?;
    let mut magic = [0u8; 2];
    let gz = f.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    let f = std::fs::File::open(archive)?;
    let len = f.metadata()?.len();
    let f = ProgressReader::new(f, Progress::new(format!("unpacking {what}"), "unpacking", Some(len)), "unpacked");
    Ok(if gz { Box::new(flate2::read::GzDecoder::new(f)) } else { Box::new(f) })
}

/// An entry's header fields that survive into the tree.
#[derive(Debug, Clone, Copy)]
struct Meta {
    mode: Option<u32>,
    mtime: Option<u64>,
}

impl Meta {
    fn mode_or(&self, default: u32) -> u32 {
        self.mode.unwrap_or(default) & 0o7777
    }
}

/// A directory tree being filled from archives, with its budget.
pub struct Tree {
    root: Dir,
    limits: UnpackLimits,
    bytes: u64,
    entries: u64,
    root_mode: Option<u32>,
    /// Directories whose mode would stop citron writing into them, set at the end.
    late_modes: std::collections::BTreeMap<PathBuf, u32>,
}

/// What a finished tree holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// File bytes written.
    pub bytes: u64,
    /// Entries read.
    pub entries: u64,
}

impl Tree {
    /// Creates `path` (it must not exist; mode `0700` until [`finish`](Self::finish)) and opens it.
    pub fn create(path: &Path, limits: UnpackLimits) -> io::Result<Tree> {
        std::fs::DirBuilder::new().mode(0o700).create(path)?;
        Ok(Tree::open(Dir::open_ambient_dir(path, cap_std::ambient_authority())?, limits))
    }

    /// A tree rooted at an already open directory.
    pub fn open(root: Dir, limits: UnpackLimits) -> Tree {
        Tree { root, limits, bytes: 0, entries: 0, root_mode: None, late_modes: Default::default() }
    }

    /// Unpacks one archive (plain tar) over the tree; `layer` applies OCI whiteouts. Stops at the
    /// first bad entry: what was unpacked before it stays, and the caller drops the tree.
    pub fn unpack(&mut self, archive: impl Read, layer: bool) -> Result<(), ExtractError> {
        let mut archive = tar::Archive::new(archive);
        let entries = archive.entries().map_err(ExtractError::Archive)?.raw(true);
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax: Option<Vec<u8>> = None;
        for entry in entries {
            let mut entry = entry.map_err(ExtractError::Archive)?;
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                return Err(ExtractError::TooMany { limit: self.limits.max_entries });
            }
            use tar::EntryType as T;
            let kind = entry.header().entry_type();
            let ext = match kind {
                T::GNULongName => Some(&mut long_name),
                T::GNULongLink => Some(&mut long_link),
                T::XHeader => Some(&mut pax),
                _ => None,
            };
            if let Some(slot) = ext {
                let mut v = Vec::new();
                (&mut entry).take(MAX_EXTENSION + 1).read_to_end(&mut v).map_err(ExtractError::Archive)?;
                if v.len() as u64 > MAX_EXTENSION {
                    let entry = shown(&entry.path_bytes());
                    return Err(ExtractError::Unsupported { entry, what: format!("a long name or PAX header over {MAX_EXTENSION} bytes") });
                }
                if kind != T::XHeader {
                    while v.last() == Some(&0) {
                        v.pop();
                    }
                }
                *slot = Some(v);
                continue;
            }
            if kind == T::XGlobalHeader {
                io::copy(&mut (&mut entry).take(MAX_EXTENSION), &mut io::sink()).map_err(ExtractError::Archive)?;
                continue;
            }
            let (mut name, mut link) = (long_name.take(), long_link.take());
            if let Some(p) = pax.take() {
                for ext in tar::PaxExtensions::new(&p) {
                    let ext = ext.map_err(ExtractError::Archive)?;
                    match ext.key_bytes() {
                        b"path" => name = Some(ext.value_bytes().to_vec()),
                        b"linkpath" => link = Some(ext.value_bytes().to_vec()),
                        b"size" if ext.value_bytes() != entry.header().size().unwrap_or(0).to_string().as_bytes() => {
                            let entry = shown(&name.unwrap_or_else(|| entry.path_bytes().into_owned()));
                            return Err(ExtractError::Unsupported { entry, what: "a PAX size override (a file over 8 GiB)".into() });
                        }
                        _ => {}
                    }
                }
            }
            let name = name.unwrap_or_else(|| entry.path_bytes().into_owned());
            let link = link.or_else(|| entry.link_name_bytes().map(|l| l.into_owned()));
            let meta = Meta { mode: entry.header().mode().ok(), mtime: entry.header().mtime().ok() };
            self.entry(&mut entry, kind, meta, &name, link.as_deref(), layer)?;
        }
        if long_name.is_some() || long_link.is_some() || pax.is_some() {
            return Err(ExtractError::Archive(io::Error::other("the archive ends with a header describing a missing entry")));
        }
        Ok(())
    }

    fn entry(
        &mut self,
        data: &mut impl Read,
        kind: tar::EntryType,
        meta: Meta,
        raw: &[u8],
        link: Option<&[u8]>,
        layer: bool,
    ) -> Result<(), ExtractError> {
        use tar::EntryType as T;
        let entry = shown(raw);
        if raw.len() > MAX_NAME {
            return Err(ExtractError::Unsupported { entry, what: format!("a name over {MAX_NAME} bytes") });
        }
        let parts = components(raw).map_err(|why| ExtractError::Escape { entry: entry.clone(), why: why.into() })?;
        let Some((last, dirs)) = parts.split_last() else {
            // The root itself (`./`): only its mode matters.
            if kind == T::Directory {
                self.root_mode = Some(meta.mode_or(0o755));
            }
            return Ok(());
        };
        let dir_path: PathBuf = dirs.iter().collect();
        if layer {
            if let Some(hidden) = last.as_bytes().strip_prefix(b".wh.") {
                return self.whiteout(&entry, &dir_path, hidden);
            }
        }
        let what = match kind {
            T::Regular | T::Continuous | T::Directory | T::Symlink | T::Link => kind,
            T::GNUSparse => return Err(ExtractError::Unsupported { entry, what: "a GNU sparse file".into() }),
            other => {
                tracing::warn!(entry = %entry, kind = ?other, "skipping a device node, FIFO or unknown entry type: citron creates no such node");
                return Ok(());
            }
        };
        let parent = if dirs.is_empty() {
            self.root.try_clone().map_err(|e| io_err(&entry, e))?
        } else {
            self.root
                .create_dir_all(&dir_path)
                .and_then(|_| self.root.open_dir(&dir_path))
                .map_err(|source| ExtractError::Parent { entry: entry.clone(), source })?
        };
        let existing_dir = clear_slot(&parent, last, what == T::Directory).map_err(|e| io_err(&entry, e))?;
        match what {
            T::Directory => {
                if !existing_dir {
                    parent.create_dir(last).map_err(|e| io_err(&entry, e))?;
                }
                let mode = meta.mode_or(0o755);
                // Keep the directory writable while the tree is built; a mode without owner rwx
                // (0555 /proc, say) is set at the end.
                parent.open_dir_nofollow(last).and_then(|d| chmod_dir(&d, mode | 0o700)).map_err(|e| io_err(&entry, e))?;
                if mode & 0o700 != 0o700 {
                    self.late_modes.insert(dir_path.join(last), mode);
                } else {
                    self.late_modes.remove(&dir_path.join(last));
                }
            }
            T::Symlink => {
                let target = link
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| ExtractError::Escape { entry: entry.clone(), why: "is a symlink without a target".into() })?;
                parent.symlink_contents(OsStr::from_bytes(target), last).map_err(|e| io_err(&entry, e))?;
            }
            T::Link => {
                let target = link.unwrap_or_default();
                let tparts = components(target)
                    .map_err(|why| ExtractError::Escape { entry: entry.clone(), why: format!("is a hard link whose target {why}") })?;
                if tparts.is_empty() {
                    return Err(ExtractError::Escape { entry, why: "is a hard link to the root directory".into() });
                }
                let tpath: PathBuf = tparts.iter().collect();
                self.root.hard_link(&tpath, &parent, last).map_err(|e| io_err(&entry, e))?;
            }
            _ => {
                let mode = meta.mode_or(0o644);
                let mut opts = OpenOptions::new();
                opts.write(true).create_new(true).mode(0o600);
                let mut f = parent.open_with(last, &opts).map_err(|e| io_err(&entry, e))?;
                let (bound, key) = self.limits.byte_bound();
                let left = bound.saturating_sub(self.bytes);
                let n = io::copy(&mut data.take(left.saturating_add(1)), &mut f).map_err(|e| match e.raw_os_error() {
                    Some(_) => io_err(&entry, e),
                    None => ExtractError::Archive(e),
                })?;
                self.bytes += n;
                if n > left {
                    return Err(ExtractError::TooBig { limit: bound, key });
                }
                f.set_permissions(perm(mode)).map_err(|e| io_err(&entry, e))?;
                if let Some(t) = meta.mtime {
                    // Best effort: a time the filesystem cannot hold is not worth failing for.
                    let _ = f.into_std().set_modified(UNIX_EPOCH + Duration::from_secs(t));
                }
            }
        }
        Ok(())
    }

    /// `.wh.HIDDEN` in `dir`: removes HIDDEN from `dir`, or empties `dir` for `.wh..wh..opq`.
    fn whiteout(&mut self, entry: &str, dir: &Path, hidden: &[u8]) -> Result<(), ExtractError> {
        let escape = |why: &str| ExtractError::Escape { entry: entry.to_string(), why: why.to_string() };
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(escape(&format!("is a whiteout of `{}`, which is no entry of its directory", String::from_utf8_lossy(hidden))));
        }
        let opaque = hidden == b".wh..opq";
        if hidden.starts_with(b".wh.") && !opaque {
            // aufs bookkeeping (`.wh..wh.plnk`, ...): nothing to apply.
            return Ok(());
        }
        let parent = match self.root.open_dir(if dir.as_os_str().is_empty() { Path::new(".") } else { dir }) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(ExtractError::Parent { entry: entry.to_string(), source }),
        };
        if opaque {
            let names: Vec<_> = parent.entries().map_err(|e| io_err(entry, e))?.filter_map(|e| e.ok().map(|e| e.file_name())).collect();
            for n in names {
                clear_slot(&parent, &n, false).map_err(|e| io_err(entry, e))?;
            }
        } else {
            clear_slot(&parent, OsStr::from_bytes(hidden), false).map_err(|e| io_err(entry, e))?;
        }
        Ok(())
    }

    /// Sets the modes left for the end and the root's; returns what the tree holds.
    pub fn finish(self) -> Result<TreeStats, ExtractError> {
        // The last entry's mode wins; deepest first, so that a parent losing its search bit
        // does not hide its children.
        let mut modes: Vec<(&PathBuf, u32)> = self.late_modes.iter().map(|(p, m)| (p, *m)).collect();
        modes.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (p, mode) in modes {
            if let Some(d) = self.root.open_dir_nofollow_checked(p) {
                chmod_dir(&d, mode).map_err(|e| io_err(&p.to_string_lossy(), e))?;
            }
        }
        chmod_dir(&self.root, self.root_mode.unwrap_or(0o755)).map_err(|e| io_err(".", e))?;
        Ok(TreeStats { bytes: self.bytes, entries: self.entries })
    }
}

trait OpenNoFollow {
    fn open_dir_nofollow_checked(&self, p: &Path) -> Option<Dir>;
}

impl OpenNoFollow for Dir {
    /// The directory at `p` if it still is one (not replaced by a file or symlink since).
    fn open_dir_nofollow_checked(&self, p: &Path) -> Option<Dir> {
        let parent = match p.parent().filter(|q| !q.as_os_str().is_empty()) {
            Some(q) => self.open_dir(q).ok()?,
            None => self.try_clone().ok()?,
        };
        parent.open_dir_nofollow(p.file_name()?).ok()
    }
}

/// Makes room for a new entry called `name` in `parent`, without following anything there: a
/// directory stays if `keep_dir` (returns `true`), anything else is removed.
fn clear_slot(parent: &Dir, name: &OsStr, keep_dir: bool) -> io::Result<bool> {
    match parent.symlink_metadata(name) {
        Ok(m) if m.is_dir() && keep_dir => Ok(true),
        Ok(m) if m.is_dir() => parent.remove_dir_all(name).map(|_| false),
        Ok(_) => parent.remove_file(name).map(|_| false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The normal components of an archive name: `Err` for an absolute name or a `..` component.
fn components(raw: &[u8]) -> Result<Vec<&OsStr>, &'static str> {
    let mut out = Vec::new();
    for c in Path::new(OsStr::from_bytes(raw)).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err("has a `..` component"),
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path"),
        }
    }
    Ok(out)
}

/// An entry name fit for a message or a log line: escaped, at most 200 characters.
fn shown(raw: &[u8]) -> String {
    let s: String = String::from_utf8_lossy(raw).escape_debug().collect();
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// Sets a directory's mode through a readable handle on it (a [`Dir`] may be an `O_PATH` handle,
/// on which `fchmod` fails).
fn chmod_dir(d: &Dir, mode: u32) -> io::Result<()> {
    d.open(".")?.set_permissions(perm(mode))
}

fn perm(mode: u32) -> Permissions {
    Permissions::from_std(std::fs::Permissions::from_mode(mode & 0o7777))
}

#[cfg(test)]
#[path = "extract_tests.rs"]
mod tests;
