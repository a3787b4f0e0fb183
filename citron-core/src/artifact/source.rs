//! Where artifact bytes come from: the [`ArtifactSource`] trait, the [`Sink`] sources write into,
//! and the sources that need no network (inline data, local files).

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::progress::Progress;
use crate::digest::{Digest, Hasher};

/// How to reach the S3-compatible store `s3://bucket/key` URLs name (lab file `s3:`).
///
/// Fields left out fall back to the usual `AWS_*` environment variables (`AWS_ENDPOINT_URL`,
/// `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`). Requests use path-style
/// addressing (`endpoint/bucket/key`), which MinIO, moto and Ceph accept without DNS tricks; an
/// `http://` endpoint is allowed because the lab admin wrote it down explicitly.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL (`http://127.0.0.1:9000` for MinIO); AWS when absent.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Region name; `us-east-1` when absent here and in the environment.
    #[serde(default)]
    pub region: Option<String>,
    /// Access key id.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Secret access key.
    #[serde(default)]
    pub secret_access_key: Option<String>,
}

/// The secret key never appears in `Debug` output (lab dumps, panics, `tracing` fields).
impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint.as_deref().map(super::redact_str))
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Why an artifact could not be fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The content's digest is not the one the job gave.
    #[error("{source_name}: sha256 mismatch: the job says {expected}, the content is {actual}; fix the job's sha256 or the artifact")]
    DigestMismatch {
        /// Which source.
        source_name: String,
        /// What the job said.
        expected: crate::Digest,
        /// What arrived.
        actual: crate::Digest,
    },
    /// The server answered with an error status.
    #[error("{url}: the server answered {status}{}; {}", status_reason(.status), status_hint(.status))]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// Could not reach or talk to the server.
    #[error("{url}: {message}")]
    Network {
        /// The URL.
        url: String,
        /// What went wrong and what to check.
        message: String,
    },
    /// A local file could not be read.
    #[error("{path}: {source}; check that the file exists and citron may read it", path = .path.display())]
    File {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// No fetcher given to the cache handles the URL's scheme.
    #[error("{url}: unsupported URL scheme; {}", scheme_hint(.handled))]
    UnsupportedScheme {
        /// The URL, redacted.
        url: String,
        /// The schemes the cache's [`Fetchers`](super::Fetchers) handle.
        handled: Vec<String>,
    },
    /// The URL has the right scheme but cannot name an artifact.
    #[error("{url}: {message}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// The cache could not store the artifact.
    #[error("cache: {0}; check the data directory's free space and permissions")]
    Cache(std::io::Error),
    /// A `result:` source names no file the lab's results have (no such job, run or file, or
    /// only an untokened one), or the lab keeps no results.
    #[error("{what}: {message}")]
    Result {
        /// The source (`result JOB/PATH of …`).
        what: String,
        /// Why, and what to do.
        message: String,
    },
    /// The artifact is larger than the whole cache.
    #[error("{source_name}: {size} bytes do not fit in the cache ({max} bytes); raise cache.max_size in the lab file")]
    TooLarge {
        /// Which source.
        source_name: String,
        /// Its size (or the bytes received when the download was stopped).
        size: u64,
        /// The cache's limit.
        max: u64,
    },
    /// The artifact fits the cache, but artifacts of active jobs and downloads in progress fill it.
    #[error("{source_name}: {size} more bytes do not fit in the cache ({max} bytes, {pinned} of them held by active jobs and downloads in progress); raise cache.max_size, clear jobs that are done or load this job later")]
    CacheFull {
        /// Which source.
        source_name: String,
        /// The artifact's size.
        size: u64,
        /// Bytes held by entries that cannot be evicted now and by other downloads.
        pinned: u64,
        /// The cache's limit.
        max: u64,
    },
    /// The source sent more bytes than it announced.
    #[error("{source_name}: the source sent more than the {announced} bytes it announced; check the server, then load the job again")]
    LongerThanAnnounced {
        /// Which source.
        source_name: String,
        /// The size it announced.
        announced: u64,
    },
    /// The disk holding the cache is full (or the data directory's quota is used up).
    #[error("{source_name}: the disk holding the cache is full after {written} bytes of this artifact; free space in the data directory or lower cache.max_size to fit it")]
    DiskFull {
        /// Which source.
        source_name: String,
        /// Bytes of it written when the disk filled.
        written: u64,
    },
}

/// An I/O error of the cache's own files while storing `source_name`: a full disk is named as
/// such (it is this artifact's load that fails, nothing already cached is touched).
pub(crate) fn disk_error(source_name: &str, written: u64, e: std::io::Error) -> FetchError {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => FetchError::DiskFull { source_name: source_name.to_string(), written },
        _ => FetchError::Cache(e),
    }
}

/// Where a download's bytes are accounted against the cache's cap: asked for the size the
/// source announces and for the bytes written as they grow; an error stops the download.
pub(crate) trait Budget: Send {
    /// Holds `total` bytes (a no-op when that many are held already).
    fn reserve(&mut self, total: u64) -> Result<(), FetchError>;
}

fn scheme_hint(handled: &[String]) -> String {
    if handled.is_empty() {
        return "this citron fetches nothing over the network (it was started without fetchers); use data: or file: sources".into();
    }
    format!("use {} or file", handled.join(", "))
}

fn status_reason(status: &u16) -> String {
    http::StatusCode::from_u16(*status).ok().and_then(|s| s.canonical_reason()).map(|r| format!(" {r}")).unwrap_or_default()
}

fn status_hint(status: &u16) -> &'static str {
    match status {
        404 | 410 => "check the URL: the artifact is not (or no longer) there",
        401 | 403 => "the server refuses access; check the URL and, for s3://, the lab file's s3 credentials",
        500..=599 => "the server failed; try again later or ask its administrator",
        _ => "check the URL",
    }
}

impl FetchError {
    /// A copy for every waiter of a shared download (`io::Error` is not `Clone`, so I/O errors
    /// are rebuilt from their kind and message).
    pub(crate) fn duplicate(&self) -> FetchError {
        let io = |e: &std::io::Error| std::io::Error::new(e.kind(), e.to_string());
        match self {
            FetchError::DigestMismatch { source_name, expected, actual } => {
                FetchError::DigestMismatch { source_name: source_name.clone(), expected: *expected, actual: *actual }
            }
            FetchError::Status { url, status } => FetchError::Status { url: url.clone(), status: *status },
            FetchError::Network { url, message } => FetchError::Network { url: url.clone(), message: message.clone() },
            FetchError::File { path, source } => FetchError::File { path: path.clone(), source: io(source) },
            FetchError::UnsupportedScheme { url, handled } => FetchError::UnsupportedScheme { url: url.clone(), handled: handled.clone() },
            FetchError::BadUrl { url, message } => FetchError::BadUrl { url: url.clone(), message: message.clone() },
            FetchError::Cache(e) => FetchError::Cache(io(e)),
            FetchError::Result { what, message } => FetchError::Result { what: what.clone(), message: message.clone() },
            FetchError::TooLarge { source_name, size, max } => {
                FetchError::TooLarge { source_name: source_name.clone(), size: *size, max: *max }
            }
            FetchError::CacheFull { source_name, size, pinned, max } => {
                FetchError::CacheFull { source_name: source_name.clone(), size: *size, pinned: *pinned, max: *max }
            }
            FetchError::LongerThanAnnounced { source_name, announced } => {
                FetchError::LongerThanAnnounced { source_name: source_name.clone(), announced: *announced }
            }
            FetchError::DiskFull { source_name, written } => FetchError::DiskFull { source_name: source_name.clone(), written: *written },
        }
    }
}

/// Where a source writes an artifact's bytes: it hashes them on the way, stops a download that
/// outgrows the cache as early as possible and reports progress ([`PROGRESS_TARGET`](super::PROGRESS_TARGET): bytes so
/// far and the total when known).
///
/// ```
/// use citron_core::artifact::Sink;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let mut out = Vec::new();
/// let mut sink = Sink::new(&mut out, "example");
/// sink.write(b"hel").await.unwrap();
/// sink.write(b"lo").await.unwrap();
/// let (len, digest) = sink.finish();
/// assert_eq!((len, digest), (5, citron_core::Digest::of(b"hello")));
/// assert_eq!(out, b"hello");
/// # });
/// ```
pub struct Sink<'a> {
    out: &'a mut (dyn AsyncWrite + Unpin + Send),
    name: String,
    hasher: Hasher,
    limit: Option<u64>,
    budget: Option<&'a mut dyn Budget>,
    progress: Progress,
}

impl std::fmt::Debug for Sink<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").field("name", &self.name).field("written", &self.progress.done()).finish_non_exhaustive()
    }
}

impl<'a> Sink<'a> {
    /// A sink writing into `out`; `name` identifies the source in logs and errors.
    pub fn new(out: &'a mut (dyn AsyncWrite + Unpin + Send), name: impl Into<String>) -> Sink<'a> {
        let name = name.into();
        Sink { out, progress: Progress::new(name.clone(), "downloading", None), name, hasher: Hasher::new(), limit: None, budget: None }
    }

    /// Refuses more than `max` bytes with [`FetchError::TooLarge`].
    pub fn with_limit(mut self, max: u64) -> Sink<'a> {
        self.limit = Some(max);
        self
    }

    /// Accounts the bytes in `budget` (the cache's reservation) before they are written.
    pub(crate) fn with_budget(mut self, budget: &'a mut dyn Budget) -> Sink<'a> {
        self.budget = Some(budget);
        self
    }

    /// Logs progress every `interval` instead of every [`PROGRESS_INTERVAL`](super::PROGRESS_INTERVAL).
    pub fn with_progress_interval(mut self, interval: Duration) -> Sink<'a> {
        self.progress = self.progress.with_interval(interval);
        self
    }

    /// Tells the sink the size announced by the source (`Content-Length`, object size), for
    /// progress lines and to refuse an oversized artifact before its first byte.
    pub fn set_total(&mut self, total: Option<u64>) -> Result<(), FetchError> {
        if let (Some(t), Some(max)) = (total, self.limit) {
            if t > max {
                return Err(FetchError::TooLarge { source_name: self.name.clone(), size: t, max });
            }
        }
        if let (Some(t), Some(b)) = (total, self.budget.as_mut()) {
            b.reserve(t)?;
        }
        self.progress.set_total(total);
        Ok(())
    }

    /// Appends bytes.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), FetchError> {
        let after = self.progress.done() + chunk.len() as u64;
        if let Some(max) = self.limit {
            if after > max {
                return Err(FetchError::TooLarge { source_name: self.name.clone(), size: after, max });
            }
        }
        if let Some(t) = self.progress.total().filter(|t| after > *t) {
            return Err(FetchError::LongerThanAnnounced { source_name: self.name.clone(), announced: t });
        }
        if let Some(b) = self.budget.as_mut() {
            b.reserve(after)?;
        }
        self.out.write_all(chunk).await.map_err(|e| disk_error(&self.name, self.progress.done(), e))?;
        self.hasher.update(chunk);
        self.progress.advance(chunk.len() as u64);
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.progress.done()
    }

    /// The size the source announced, if any.
    pub fn total(&self) -> Option<u64> {
        self.progress.total()
    }

    /// The byte count and digest of everything written.
    pub fn finish(mut self) -> (u64, Digest) {
        self.progress.finish("downloaded");
        (self.progress.done(), std::mem::take(&mut self.hasher).finish())
    }
}

/// Something that can write an artifact's bytes into a [`Sink`].
///
/// Implementations stream (never hold a whole artifact in memory) and announce the size with
/// [`Sink::set_total`] as soon as they know it. Errors say what the user can do.
#[async_trait]
pub trait ArtifactSource: Send + Sync {
    /// The source as shown in logs and errors: a URL's user info and query are redacted
    /// ([`redact_url`](super::redact_url)).
    fn name(&self) -> String;
    /// A stable identity (the whole URL, the path), to deduplicate concurrent fetches and to
    /// remember what the source gave; never logged. The name by default.
    fn identity(&self) -> String {
        self.name()
    }
    /// Whether content this source gave may later be reused by anyone naming the same
    /// identity and digest without fetching again (network sources: anyone naming the URL could
    /// fetch it through citron). Inline data and local files say no: see `grants.rs`.
    fn reusable(&self) -> bool {
        false
    }
    /// Streams the whole content into `sink`.
    async fn fetch(&self, sink: &mut Sink<'_>) -> Result<(), FetchError>;
}

/// Inline bytes from the job description (`data:`).
#[derive(Debug, Clone)]
pub struct DataSource {
    data: Bytes,
    digest: Digest,
}

impl DataSource {
    /// A source for `data`.
    pub fn new(data: Bytes) -> DataSource {
        DataSource { digest: Digest::of(&data), data }
    }
    /// The digest of the data, known without fetching.
    pub fn digest(&self) -> Digest {
        self.digest
    }
}

#[async_trait]
impl ArtifactSource for DataSource {
    fn name(&self) -> String {
        format!("data:sha256:{}", self.digest)
    }
    async fn fetch(&self, sink: &mut Sink<'_>) -> Result<(), FetchError> {
        sink.set_total(Some(self.data.len() as u64))?;
        sink.write(&self.data).await
    }
}

/// A local file (`file:`), read in chunks.
///
/// An absolute path is taken to be canonical, as [`JobDescription::render`] makes it after
/// checking it against the allowed roots: the file opened must be that very path, so a
/// directory swapped for a symlink between the check and the read is refused.
///
/// [`JobDescription::render`]: crate::job::JobDescription::render
#[derive(Debug, Clone)]
pub struct FileSource {
    path: PathBuf,
}

impl FileSource {
    /// A source for the file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> FileSource {
        FileSource { path: path.into() }
    }
}

#[async_trait]
impl ArtifactSource for FileSource {
    fn name(&self) -> String {
        format!("file:{}", self.path.display())
    }
    async fn fetch(&self, sink: &mut Sink<'_>) -> Result<(), FetchError> {
        let err = |source| FetchError::File { path: self.path.clone(), source };
        let mut f = tokio::fs::File::open(&self.path).await.map_err(err)?;
        // The job was checked against the allowed roots with this path resolved (no symlinks
        // left in it). If a directory on the way was swapped for a symlink since, the file
        // opened is another one: refuse it rather than read outside the roots.
        // (Absolute paths only: `render` gives canonical ones; a relative path was never checked.)
        if let Ok(opened) = std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f))) {
            if self.path.is_absolute() && opened != self.path {
                let msg = format!("the file changed since the job was checked (it now resolves to {})", opened.display());
                return Err(err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, msg)));
            }
        }
        sink.set_total(Some(f.metadata().await.map_err(err)?.len()))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).await.map_err(err)?;
            if n == 0 {
                return Ok(());
            }
            sink.write(&buf[..n]).await?;
        }
    }
}
