//! A job description after templating, for one DUT: what the rest of citron consumes.
//!
//! Parsing keeps positions for error messages (see `parse`); once a job is rendered for a DUT every
//! template is expanded, every path normalised and every source checked, so these types carry plain
//! values and no positions.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use url::Url;

use crate::digest::Digest;
use crate::serve::Space;

/// A job rendered for one DUT: the `start` deployment and, optionally, the `continue` one.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedJob {
    /// Where the description came from (file name or "api"), for logs.
    pub origin: String,
    /// The job's `name:` (what its runs are filed under).
    pub name: Option<String>,
    /// `results:`: the job sends results back, into a run opened when it starts.
    pub results: Option<ResultsSpec>,
    /// The initial boot.
    pub start: Step,
    /// What later boots of the same job use; fields it leaves out come from `start`.
    pub continue_: Option<Step>,
}

/// A job's `results:`, rendered: what a run of it records, and how large a file it may upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultsSpec {
    /// What is built or tested (a commit, a version); `PUT …/job?revision=` overrides it.
    pub revision: Option<String>,
    /// What it runs on (`arm64`, `rpi4`).
    pub platform: Option<String>,
    /// The largest file one upload may bring, in bytes (`max_size:`, at most the lab's
    /// `limits.results_max`, which is also the default).
    pub max_size: u64,
}

/// One deployment (`deployment.start` or `deployment.continue`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Step {
    /// The kernel to boot (from YAML, its `path` is `kernel`: citron serves it at generated paths).
    pub kernel: Option<FileSpec>,
    /// The initramfs to boot with it (from YAML, its `path` is `initramfs`).
    pub initramfs: Option<FileSpec>,
    /// The kernel command line, list items joined with spaces.
    pub cmdline: Option<String>,
    /// `storage.<space>`: the files of each file space ([`Space::ALL`]), by space; a space the
    /// job leaves empty has no entry.
    pub files: BTreeMap<Space, Vec<FileSpec>>,
    /// Block devices served over NBD.
    pub nbd: Vec<DiskSpec>,
}

/// A file a DUT may read.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSpec {
    /// Normalised path inside the DUT's namespace: relative, `/`-separated, no `.` or `..`.
    pub path: String,
    /// Where the bytes come from.
    pub source: Source,
    /// The digest the bytes must have, if the job gave one.
    pub sha256: Option<Digest>,
    /// How long and how often it may be read.
    pub lifetime: Lifetime,
}

/// Where an artifact's bytes come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Inline `data:` (already templated).
    Data(Bytes),
    /// A local file, absolute, already checked to lie inside an allowed root.
    File(PathBuf),
    /// An `http://`, `https://` or `s3://bucket/key` URL.
    Url(Url),
    /// A file an earlier run uploaded (`result: {job, path}`), from the lab's results.
    Result(ResultRef),
}

/// `result: {job: NAME, path: PATH, run: ID, untokened: true}`: a file of a run of the lab's
/// own job `job` (a DUT's job, or one the administrator's token opened), the newest
/// successful run unless `run` names one. Only a file uploaded with a token unless
/// `untokened` (a DUT's source address can be forged, over UDP above all).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResultRef {
    /// The job's name.
    pub job: String,
    /// The file's path in the run.
    pub path: String,
    /// That run (`None`: the newest successful one when the job is loaded).
    pub run: Option<i64>,
    /// A file a DUT uploaded by its source address will do.
    pub untokened: bool,
}

impl std::fmt::Display for ResultRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.run {
            Some(r) => write!(f, "result {}/{} of run {r}", self.job, self.path),
            None => write!(f, "result {}/{} of the newest successful run", self.job, self.path),
        }
    }
}

/// How long and how often a file may be read (`lifetime:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lifetime {
    /// Reads allowed between resets; `None` is unlimited.
    pub access_count: Option<u32>,
    /// The file disappears this long after the job was loaded.
    pub expiration: Option<Duration>,
}

/// A block device (`storage.nbd[]`).
#[derive(Debug, Clone, PartialEq)]
pub struct DiskSpec {
    /// Export name as NBD clients ask for it.
    pub name: String,
    /// Writes are refused.
    pub readonly: bool,
    /// What the disk is made from.
    pub kind: DiskKind,
    /// When the DUT's writes are thrown away.
    pub reset_on: ResetOn,
    /// Every DUT of the lab may attach it, not only the job's own.
    pub shared: bool,
    /// Remove the prepared disk when no job asked for it in this long.
    pub expiration: Option<Duration>,
}

/// The content of a disk.
#[derive(Debug, Clone, PartialEq)]
pub enum DiskKind {
    /// A disk image (raw, or qcow2 converted on preparation).
    Image {
        /// Where the image comes from.
        source: Source,
        /// Its expected digest.
        sha256: Option<Digest>,
    },
    /// A filesystem created for the job.
    Filesystem {
        /// `ext4` (others as `mkfs.<type>` allows).
        fstype: String,
        /// Size in bytes; 0 (only with a container and no `size:`) means "big enough for the
        /// contents", decided when the disk is prepared.
        size_bytes: u64,
        /// Initial content; empty when `None`.
        contents: Option<FsContents>,
    },
    /// A sparse, zero-filled disk.
    Raw {
        /// Size in bytes.
        size_bytes: u64,
    },
}

/// What a `filesystem:` disk is filled with.
#[derive(Debug, Clone, PartialEq)]
pub enum FsContents {
    /// A tarball (`data: {url: ..., sha256: ...}`), unpacked at the filesystem's root, with its
    /// expected digest (with one, a gateway may take it from the lab's shared store instead of
    /// its origin, as any other source with a `sha256:`).
    Tarball(Source, Option<Digest>),
    /// A container image reference (`container: docker://...`), layers flattened.
    Container(String),
}

/// When a disk's writes are dropped (`reset_on:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResetOn {
    /// At every `boot` event.
    Boot,
    /// At every `job_start` event (and when a new job is set).
    #[default]
    JobStart,
    /// Never: writes persist across jobs (not guaranteed past expiration).
    Never,
}

impl ResetOn {
    /// As the job file spells it (`boot`, `job_start`, `never`).
    pub fn name(self) -> &'static str {
        match self {
            ResetOn::Boot => "boot",
            ResetOn::JobStart => "job_start",
            ResetOn::Never => "never",
        }
    }

    /// The value the job file spells `name`.
    pub fn named(name: &str) -> Option<ResetOn> {
        [ResetOn::Boot, ResetOn::JobStart, ResetOn::Never].into_iter().find(|r| r.name() == name)
    }
}

impl Step {
    /// The files of `space` (none if the job gives none).
    pub fn files_in(&self, space: Space) -> &[FileSpec] {
        self.files.get(&space).map(Vec::as_slice).unwrap_or_default()
    }

    /// `self` with every field it leaves empty taken from `base` (how `continue` extends `start`).
    /// Storage entries are merged by path (name for disks); `self`'s win.
    pub fn over(&self, base: &Step) -> Step {
        fn merge<T: Clone>(top: &[T], base: &[T], key: impl Fn(&T) -> &str) -> Vec<T> {
            let mut out: Vec<T> = top.to_vec();
            for b in base {
                if !top.iter().any(|t| key(t) == key(b)) {
                    out.push(b.clone());
                }
            }
            out
        }
        Step {
            kernel: self.kernel.clone().or_else(|| base.kernel.clone()),
            initramfs: self.initramfs.clone().or_else(|| base.initramfs.clone()),
            cmdline: self.cmdline.clone().or_else(|| base.cmdline.clone()),
            files: Space::ALL
                .iter()
                .map(|s| (*s, merge(self.files_in(*s), base.files_in(*s), |f| &f.path)))
                .filter(|(_, v)| !v.is_empty())
                .collect(),
            nbd: merge(&self.nbd, &base.nbd, |d| &d.name),
        }
    }
}
