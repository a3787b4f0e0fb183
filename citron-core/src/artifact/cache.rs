//! The content-addressed cache.
//!
//! The policy (layout, hits, single flight, eviction) is documented on [`Cache`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::fetchers::Fetchers;
use super::grants::Grants;
use super::shared::{BlobKey, SharedCopy};
use super::source::{ArtifactSource, DataSource, FetchError, FileSource};
use crate::digest::Digest;
use crate::job::Source;

/// Cache settings (lab file `cache:`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// The most bytes the cache keeps; unpinned entries are evicted least recently used first.
    #[serde(default = "default_max")]
    pub max_bytes: u64,
}

fn default_max() -> u64 {
    20 << 30
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig { max_bytes: default_max() }
    }
}

/// Releases one pin when the last clone of a [`CachedArtifact`] goes.
struct Pin {
    digest: Digest,
    cache: Weak<Inner>,
}

impl Drop for Pin {
    fn drop(&mut self) {
        if let Some(c) = self.cache.upgrade() {
            if let Some(e) = c.index.lock().entries.get_mut(&self.digest) {
                e.pins = e.pins.saturating_sub(1);
            }
        }
    }
}

/// An artifact in the cache, pinned (not evictable) while this value or a clone of it lives.
#[derive(Clone)]
pub struct CachedArtifact {
    /// The cached file.
    pub path: PathBuf,
    /// Its size.
    pub len: u64,
    /// Its digest.
    pub digest: Digest,
    fetched: bool,
    _pin: Arc<Pin>,
}

impl std::fmt::Debug for CachedArtifact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedArtifact")
            .field("path", &self.path)
            .field("len", &self.len)
            .field("digest", &self.digest)
            .field("fetched", &self.fetched)
            .finish()
    }
}

impl CachedArtifact {
    /// Whether this `get` downloaded the artifact (a cache miss) rather than finding it in the
    /// cache or joining a download another caller started (a hit).
    pub fn was_fetched(&self) -> bool {
        self.fetched
    }
}

/// Counters and sizes, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct CacheStats {
    /// Artifacts in the cache.
    pub entries: usize,
    /// Their total size.
    pub bytes: u64,
    /// Bytes pinned by live [`CachedArtifact`]s.
    pub pinned_bytes: u64,
    /// `get`s answered without a download of their own.
    pub hits: u64,
    /// Downloads (or file reads) that completed and verified.
    pub fetches: u64,
    /// Bytes reserved by downloads in progress (counted against the cap).
    pub downloading_bytes: u64,
}

pub(super) struct Entry {
    pub(super) len: u64,
    pub(super) used: u64,
    pub(super) pins: usize,
    /// Whether this process has seen the file's bytes hash to its name (files found by `open`
    /// have not, until their first use).
    pub(super) verified: bool,
}

pub(super) struct Index {
    pub(super) entries: HashMap<Digest, Entry>,
    pub(super) total: u64,
    pub(super) tick: u64,
    /// Bytes held by downloads in progress ([`Reservation`]s), counted against the cap.
    pub(super) reserved: u64,
    /// Which network sources may reuse which digest.
    pub(super) grants: Grants,
}

/// What a source name resolved to earlier in this process.
#[derive(Clone, Copy)]
pub(super) struct Known {
    pub(super) digest: Digest,
    /// For local files: size and mtime when read; a change means read again.
    pub(super) stamp: Option<(u64, SystemTime)>,
}

type Flight = Shared<BoxFuture<'static, Result<CachedArtifact, Arc<FetchError>>>>;

pub(super) struct Inner {
    pub(super) dir: PathBuf,
    pub(super) config: CacheConfig,
    fetchers: Arc<dyn Fetchers>,
    pub(super) index: Mutex<Index>,
    flights: Mutex<HashMap<String, Flight>>,
    pub(super) known: Mutex<HashMap<String, Known>>,
    hits: AtomicU64,
    pub(super) fetches: AtomicU64,
    pub(super) tmp_seq: AtomicU64,
    /// Downloads running at once over every job (`limits.downloads_in_flight`).
    pub(super) downloads: tokio::sync::Semaphore,
}

/// The sha256-addressed artifact cache. Share it by reference; downloads it starts hold their
/// own handle. Clones share everything.
///
/// # On disk
/// `<dir>/sha256/<hex>` holds one artifact per digest. Downloads stream into `<dir>/tmp/`, are
/// hashed on the way, fsynced, checked against the job's digest and only then renamed into
/// `sha256/` (same file system, so the rename is atomic): a file under `sha256/` is always
/// complete and correct, and a failed, mismatched or interrupted download leaves nothing.
/// One citron process owns a cache directory: [`Cache::open`] deletes what `tmp/` holds.
///
/// # When a `get` needs no fetch
/// **Knowing a digest grants nothing**: content is stored once per sha256, but a job may use a
/// cached copy only where it could have fetched the same content itself.
/// - A URL with a sha256 that is in the cache *and that this very URL produced before* (see
///   `grants.rs`): a hit without any network, also after a restart (the directory is indexed
///   on open). The same digest under another URL is fetched from that URL (and deduplicated).
/// - The same, when another gateway of the lab produced it (a shared store, [`Fetchers::blobs`]):
///   the store's copy is downloaded instead of the origin, checked against the sha256 and
///   renamed into the cache like any download; a copy that does not match is refused and the
///   origin fetched. Whatever a network source produces is left in the shared store.
/// - Inline data: its digest is computed in memory, so identical data is always a hit.
/// - A local file (with or without sha256): a hit while its size and modification time are
///   those seen when this process last read it; otherwise it is read again (and checked
///   against the sha256). Whether the job may read the path is checked when it is rendered.
/// - A URL without sha256: **the first fetch in this process is remembered** (URL → digest) and
///   later loads of the same URL are hits, even if the server's content has changed since. After
///   citron restarts such URLs are fetched again. Give a `sha256:` to get hits across restarts
///   and to notice changed content; [`Cache::forget_source`] drops one remembered URL.
///
/// # Concurrency
/// Concurrent `get`s of the same source (and expected digest) share one download, which runs
/// as its own task: it completes and is cached even if every caller is cancelled. At most
/// `limits.downloads_in_flight` downloads run at once ([`Cache::open_limited`]); the rest wait.
///
/// # Size
/// The cache keeps at most [`CacheConfig::max_bytes`], **downloads in progress included**: a
/// download reserves its announced size (or its bytes as they arrive) before writing them,
/// evicting the least recently used entries that no [`CachedArtifact`] pins, and fails with
/// [`FetchError::CacheFull`] when active jobs and other downloads hold the rest. Recency
/// survives restarts through the files' modification times, which a hit refreshes.
///
/// # Example
/// ```
/// use std::sync::Arc;
/// use citron_core::artifact::{Cache, CacheConfig, NoNetwork};
/// use citron_core::job::Source;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let dir = tempfile::tempdir().unwrap();
/// // `citron_fetch::Network` instead of `NoNetwork` fetches http(s) and s3 URLs too.
/// let cache = Cache::open(dir.path(), CacheConfig::default(), Arc::new(NoNetwork)).unwrap();
/// let src = Source::Data(bytes::Bytes::from_static(b"hello"));
/// let a = cache.get(&src, None).await.unwrap();
/// assert_eq!(std::fs::read(&a.path).unwrap(), b"hello");
/// assert!(a.was_fetched());
/// assert!(!cache.get(&src, Some(a.digest)).await.unwrap().was_fetched());
/// # });
/// ```
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("dir", &self.inner.dir).field("config", &self.inner.config).finish_non_exhaustive()
    }
}

pub(super) fn is_digest_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Cache {
    /// Opens (creating) a cache under `dir`: indexes the artifacts already there (size, and mtime
    /// as recency), deletes leftovers of interrupted downloads, and evicts down to `max_bytes`
    /// if the limit shrank. Sources named by URL are made by `fetchers` (see [`Fetchers`]).
    pub fn open(dir: &Path, config: CacheConfig, fetchers: Arc<dyn Fetchers>) -> std::io::Result<Cache> {
        Self::open_limited(dir, config, fetchers, crate::limits::Limits::default().downloads_in_flight)
    }

    /// [`open`](Self::open), running at most `downloads_in_flight` downloads at once (0 counts
    /// as 1).
    pub fn open_limited(
        dir: &Path,
        config: CacheConfig,
        fetchers: Arc<dyn Fetchers>,
        downloads_in_flight: usize,
    ) -> std::io::Result<Cache> {
        let store = dir.join("sha256");
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&store)?;
        std::fs::create_dir_all(&tmp)?;
        for e in std::fs::read_dir(&tmp)? {
            let e = e?;
            tracing::info!(path = %e.path().display(), "removing an interrupted download");
            std::fs::remove_file(e.path())?;
        }
        let mut found = Vec::new();
        for e in std::fs::read_dir(&store)? {
            let e = e?;
            let meta = e.metadata()?;
            let name = e.file_name();
            let digest = name.to_str().filter(|n| is_digest_name(n)).and_then(|n| n.parse::<Digest>().ok());
            match digest {
                Some(d) if meta.is_file() => found.push((meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), d, meta.len())),
                _ if meta.is_file() => {
                    tracing::info!(path = %e.path().display(), "removing a stray file from the cache");
                    std::fs::remove_file(e.path())?;
                }
                _ => tracing::warn!(path = %e.path().display(), "ignoring a non-file in the cache"),
            }
        }
        found.sort();
        let known: std::collections::HashSet<Digest> = found.iter().map(|(_, d, _)| *d).collect();
        let grants = Grants::open(&dir.join("grants"), |d| known.contains(d))?;
        let mut index = Index { entries: HashMap::new(), total: 0, tick: 0, reserved: 0, grants };
        for (_, d, len) in found {
            index.tick += 1;
            index.total += len;
            index.entries.insert(d, Entry { len, used: index.tick, pins: 0, verified: false });
        }
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            config,
            fetchers,
            index: Mutex::new(index),
            flights: Mutex::new(HashMap::new()),
            known: Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
            tmp_seq: AtomicU64::new(0),
            downloads: tokio::sync::Semaphore::new(downloads_in_flight.max(1)),
        });
        {
            let mut idx = inner.index.lock();
            tracing::info!(dir = %dir.display(), entries = idx.entries.len(), bytes = idx.total, "cache opened");
            if idx.total > inner.config.max_bytes {
                let _ = inner.evict(&mut idx, 0);
            }
        }
        Ok(Cache { inner })
    }

    /// The cache's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The settings it was opened with.
    pub fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    /// The fetchers it was opened with; disk preparation pulls container images through their
    /// [`images`](Fetchers::images) client.
    pub fn fetchers(&self) -> &dyn Fetchers {
        &*self.inner.fetchers
    }

    /// Where the artifact with `digest` lives (or would live).
    pub fn path_of(&self, digest: &Digest) -> PathBuf {
        self.inner.path_of(digest)
    }

    /// Whether the cache holds `digest`.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.inner.index.lock().entries.contains_key(digest)
    }

    /// Counters and sizes.
    pub fn stats(&self) -> CacheStats {
        let idx = self.inner.index.lock();
        CacheStats {
            entries: idx.entries.len(),
            bytes: idx.total,
            pinned_bytes: idx.entries.values().filter(|e| e.pins > 0).map(|e| e.len).sum(),
            hits: self.inner.hits.load(Ordering::Relaxed),
            fetches: self.inner.fetches.load(Ordering::Relaxed),
            downloading_bytes: idx.reserved,
        }
    }

    /// Forgets what `source` resolved to in this process, so that its next `get` without a
    /// digest fetches it again. The cached bytes stay until evicted.
    pub fn forget_source(&self, source: &Source) {
        if let Ok(src) = self.source_for(source) {
            self.inner.known.lock().remove(&src.identity());
        }
    }

    /// The [`ArtifactSource`] that fetches `source`: inline data and local files here, URLs
    /// from the fetcher handling their scheme.
    pub fn source_for(&self, source: &Source) -> Result<Arc<dyn ArtifactSource>, FetchError> {
        Ok(match source {
            Source::Data(b) => Arc::new(DataSource::new(b.clone())),
            Source::File(p) => Arc::new(FileSource::new(p.clone())),
            Source::Url(u) if self.inner.fetchers.handles(u) => self.inner.fetchers.source(u)?,
            Source::Url(u) => {
                let handled = self.inner.fetchers.schemes().iter().map(|s| s.to_string()).collect();
                return Err(FetchError::UnsupportedScheme { url: super::redact_url(u), handled });
            }
            // The lab's results resolve these (the gateway's `RunStore`), then `get_verified`.
            Source::Result(r) => {
                return Err(FetchError::Result { what: r.to_string(), message: "only a lab that keeps results can fetch it".into() })
            }
        })
    }

    /// Brings the content `src` gives into the cache, which must have the digest `digest`
    /// (already known: a result's), and pins it; no download when the cache has it.
    pub async fn get_verified(&self, src: Arc<dyn ArtifactSource>, digest: Digest) -> Result<CachedArtifact, FetchError> {
        if let Some(a) = self.hit(digest).await {
            return Ok(a);
        }
        self.get_from(src, Some(digest), None, false).await
    }

    /// Brings `source` into the cache, verifying `expected`, and pins it.
    ///
    /// See [`Cache`] for when this needs no download.
    pub async fn get(&self, source: &Source, expected: Option<Digest>) -> Result<CachedArtifact, FetchError> {
        let mut stamp = None;
        match source {
            Source::Data(b) => {
                // The job holds the bytes: their own digest is the only one they can reach.
                let ds = DataSource::new(b.clone());
                let d = ds.digest();
                if let Some(e) = expected.filter(|e| *e != d) {
                    return Err(FetchError::DigestMismatch { source_name: "inline data".into(), expected: e, actual: d });
                }
                if let Some(a) = self.hit(d).await {
                    return Ok(a);
                }
                return self.get_from(Arc::new(ds), Some(d), None, false).await;
            }
            Source::File(p) => {
                let meta = tokio::fs::metadata(p).await.map_err(|e| FetchError::File { path: p.clone(), source: e })?;
                stamp = Some((meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
            }
            Source::Url(_) | Source::Result(_) => {}
        }
        let src = self.source_for(source)?;
        let identity = src.identity();
        // A URL that produced this digest before may reuse it; a digest alone reaches nothing.
        if let Some(d) = expected.filter(|_| src.reusable()) {
            if self.inner.index.lock().grants.allows(&d, &identity) {
                if let Some(a) = self.hit(d).await {
                    return Ok(a);
                }
            }
        }
        // What this source gave earlier in this process (a local file: while unchanged).
        let known = self.inner.known.lock().get(&identity).copied();
        if let Some(k) = known.filter(|k| k.stamp == stamp && expected.is_none_or(|e| e == k.digest)) {
            if let Some(a) = self.inner.pin(k.digest) {
                self.inner.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(a);
            }
        }
        // Another gateway may have fetched it: the shared store, by digest, under the same rule.
        if let Some(d) = expected.filter(|_| src.reusable()) {
            if let Some(a) = self.shared_copy(&*src, d).await {
                return Ok(a);
            }
        }
        self.get_from(src, expected, stamp, true).await
    }

    /// The shared store's copy of what `src` produced as `digest`, if some gateway recorded
    /// that `src` did (its grant) and the copy's bytes hash to `digest`; `None` (logged) sends
    /// the caller to the origin.
    async fn shared_copy(&self, src: &dyn ArtifactSource, digest: Digest) -> Option<CachedArtifact> {
        let store = self.inner.fetchers.blobs()?;
        let identity = src.identity();
        match store.exists(&BlobKey::grant(&digest, &Grants::id(&identity))).await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::warn!(source = %src.name(), error = %e, "the shared store cannot be asked; fetching from the origin");
                return None;
            }
        }
        let copy = SharedCopy { store, digest, name: src.name(), identity };
        match self.get_from(Arc::new(copy), Some(digest), None, false).await {
            Ok(a) => {
                tracing::info!(source = %src.name(), %digest, "taken from the shared store");
                Some(a)
            }
            Err(e) => {
                tracing::warn!(source = %src.name(), error = %e, "the shared store's copy was refused; fetching from the origin");
                None
            }
        }
    }

    /// Pins `digest` if the cache holds it intact, counting a hit.
    async fn hit(&self, digest: Digest) -> Option<CachedArtifact> {
        self.inner.check_on_disk(digest).await;
        let a = self.inner.pin(digest)?;
        self.inner.hits.fetch_add(1, Ordering::Relaxed);
        Some(a)
    }

    /// Fetches from any [`ArtifactSource`], sharing one download among concurrent callers.
    async fn get_from(
        &self,
        src: Arc<dyn ArtifactSource>,
        expected: Option<Digest>,
        stamp: Option<(u64, SystemTime)>,
        publish: bool,
    ) -> Result<CachedArtifact, FetchError> {
        let key = format!("{}\n{:?}\n{publish}", src.identity(), expected);
        let (flight, leader) = {
            let mut flights = self.inner.flights.lock();
            match flights.get(&key) {
                Some(f) => (f.clone(), false),
                None => {
                    let inner = self.inner.clone();
                    let k = key.clone();
                    // Inserted before the task can finish: the task removes its own key, under
                    // this same lock, so a finished flight never lingers in the map.
                    let task = tokio::spawn(async move {
                        let r = inner.download(src.clone(), expected, stamp).await;
                        if let (Ok(a), true) = (&r, publish) {
                            inner.publish(&*src, a).await;
                        }
                        inner.flights.lock().remove(&k);
                        r.map_err(Arc::new)
                    });
                    let f: Flight = async move {
                        task.await.unwrap_or_else(|e| {
                            Err(Arc::new(FetchError::Cache(std::io::Error::other(format!("the download task failed: {e}")))))
                        })
                    }
                    .boxed()
                    .shared();
                    flights.insert(key, f.clone());
                    (f, true)
                }
            }
        };
        match flight.await {
            Ok(mut a) => {
                a.fetched = leader;
                if !leader {
                    self.inner.hits.fetch_add(1, Ordering::Relaxed);
                }
                Ok(a)
            }
            Err(e) => Err(e.duplicate()),
        }
    }
}

impl Inner {
    pub(super) fn path_of(&self, digest: &Digest) -> PathBuf {
        self.dir.join("sha256").join(digest.hex())
    }

    /// Leaves what a network source just produced in the shared store, with its grant (the
    /// bytes first: a grant never names a missing object), so that other gateways need not ask
    /// the origin. Replaces a copy there (a corrupted one is how the origin got asked).
    /// Best effort: a failure is logged and costs the other gateways a fetch.
    async fn publish(&self, src: &dyn ArtifactSource, a: &CachedArtifact) {
        let Some(store) = self.fetchers.blobs().filter(|_| src.reusable()) else { return };
        let r = async {
            store.put_file(&BlobKey::input(&a.digest), &a.path).await?;
            store.put_marker(&BlobKey::grant(&a.digest, &Grants::id(&src.identity()))).await
        }
        .await;
        match r {
            Ok(()) => tracing::debug!(source = %src.name(), digest = %a.digest, "left in the shared store"),
            Err(e) => {
                tracing::warn!(source = %src.name(), error = %e, "cannot leave it in the shared store; other gateways will fetch it from its origin")
            }
        }
    }

    /// Hashes a file that was in the cache before this process opened it, once, before its
    /// first use: one changed behind citron's back (disk corruption, a hand edit) is removed,
    /// so it is fetched again rather than served under a digest it does not have.
    async fn check_on_disk(&self, digest: Digest) {
        let unverified = self.index.lock().entries.get(&digest).is_some_and(|e| !e.verified);
        if !unverified {
            return;
        }
        let path = self.path_of(&digest);
        let p = path.clone();
        let actual = tokio::task::spawn_blocking(move || -> std::io::Result<Digest> {
            use std::io::Read as _;
            let mut f = std::fs::File::open(&p)?;
            let mut h = crate::digest::Hasher::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                match f.read(&mut buf)? {
                    0 => return Ok(h.finish()),
                    n => h.update(&buf[..n]),
                }
            }
        })
        .await;
        let mut idx = self.index.lock();
        let Some(e) = idx.entries.get_mut(&digest) else { return };
        match actual {
            Ok(Ok(d)) if d == digest => e.verified = true,
            // Pinned meanwhile by another caller that raced this check: leave it to them.
            _ if e.pins > 0 => {}
            other => {
                let why = match other {
                    Ok(Ok(d)) => format!("its content hashes to {d}"),
                    Ok(Err(err)) => err.to_string(),
                    Err(err) => err.to_string(),
                };
                tracing::warn!(path = %path.display(), %why, "a cached file does not match its name; removing it");
                let len = e.len;
                idx.entries.remove(&digest);
                idx.total -= len;
                idx.grants.remove(&digest);
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// Pins `digest` if the cache holds it (and its file is still there) and marks it used.
    fn pin(self: &Arc<Self>, digest: Digest) -> Option<CachedArtifact> {
        let path = self.path_of(&digest);
        let mut idx = self.index.lock();
        let len = idx.entries.get(&digest)?.len;
        if !path.is_file() {
            tracing::warn!(path = %path.display(), "a cached file disappeared; fetching it again");
            idx.entries.remove(&digest);
            idx.total -= len;
            idx.grants.remove(&digest);
            return None;
        }
        Some(self.pin_locked(&mut idx, digest, path))
    }

    pub(super) fn pin_locked(self: &Arc<Self>, idx: &mut Index, digest: Digest, path: PathBuf) -> CachedArtifact {
        idx.tick += 1;
        let tick = idx.tick;
        let e = idx.entries.get_mut(&digest).expect("pinned entry is indexed");
        e.pins += 1;
        e.used = tick;
        let len = e.len;
        // Recency for the next start; best effort (a read-only cache still works).
        if let Ok(f) = std::fs::File::open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
        CachedArtifact { path, len, digest, fetched: false, _pin: Arc::new(Pin { digest, cache: Arc::downgrade(self) }) }
    }
}
