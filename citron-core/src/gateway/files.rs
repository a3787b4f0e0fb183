//! What one deployment step of a job serves: its files by space and path, and the generated boot
//! files of [`crate::bootfiles`], found as a DUT asks for them.
//!
//! An [`Entry`]'s bytes are reachable only through [`Entry::open`], which applies the lifetime
//! policies and records a counted read before handing them out: the order "recorded, then sent"
//! is enforced here, not left to each caller.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::artifact::{Cache, CachedArtifact, FetchError};
use crate::bootfiles::{self, BootStep, Generated};
use crate::digest::Digest;
use crate::job::{FileSpec, Source, Step};
use crate::lifetime::Policies;
use crate::namespace::Dut;
use crate::serve::{Content, Intent, RangeRequest, ServeError, Space};
use crate::store::StoreError;

use super::inputs::artifact_name;
use super::lifetimes::FileKey;
use super::RunStore;

/// A servable file of a loaded job.
pub(super) struct Entry {
    content: Content,
    len: u64,
    digest: Digest,
    policies: Policies,
    /// Set for files with an `access_count`: their reads are recorded in the lifetime store.
    counted: Option<FileKey>,
    /// The job's name for it in a run's inputs (`start/kernel`; `None`: generated).
    input: Option<String>,
    _pin: Option<CachedArtifact>,
}

/// What [`Entry::open`] hands out.
#[derive(Debug)]
pub(super) struct Opened {
    pub content: Content,
    pub len: u64,
    pub digest: Digest,
}

impl Entry {
    /// Bytes generated for one request (boot files): no policy, never counted.
    fn generated(text: String) -> Entry {
        let b = Bytes::from(text);
        Entry {
            len: b.len() as u64,
            digest: Digest::of(&b),
            content: Content::Memory(b),
            policies: Policies::default(),
            counted: None,
            input: None,
            _pin: None,
        }
    }

    /// The job's name for this file in a run's inputs (`None`: a generated file).
    pub(super) fn input_name(&self) -> Option<&str> {
        self.input.as_deref()
    }

    /// The one way to an entry's bytes. In this order: the lifetime policies check (a used-up or
    /// expired file is refused for a look as for a read); a `range` that misses the content is
    /// refused (nothing used up); for a read the policies admit (using up one read); a counted
    /// read is then recorded by `record` — **before** this returns, so that no byte of it can
    /// leave unrecorded (a record that fails refuses the read, and the admission stays used: the
    /// lab fails closed).
    pub(super) fn open(
        &self,
        intent: Intent,
        range: Option<&RangeRequest<'_>>,
        now: Instant,
        record: impl FnOnce(&FileKey) -> Result<(), StoreError>,
    ) -> Result<Opened, ServeError> {
        self.policies.check(now)?;
        if let Some(r) = range {
            r.check(self.len, &self.digest)?;
        }
        if intent == Intent::Read {
            self.policies.admit(now)?;
            if let Some(key) = &self.counted {
                record(key).map_err(|e| ServeError::Io(std::io::Error::other(e)))?;
            }
        }
        Ok(Opened { content: self.content.clone(), len: self.len, digest: self.digest })
    }

    /// Resumes the counted reads stored for this entry before a restart (`reads` asked of the
    /// lifetime store by its key); an uncounted entry has nothing to resume.
    pub(super) fn resume_reads(&self, reads: impl FnOnce(&FileKey) -> u32) {
        if let Some(key) = &self.counted {
            self.policies.resume_reads(reads(key));
        }
    }

    /// Tells the entry's policies of a DUT event.
    pub(super) fn on_event(&self, event: crate::lifetime::Event, now: Instant) {
        self.policies.on_event(event, now);
    }
}

/// The files of one deployment step, by space and normalised path.
#[derive(Default)]
pub(super) struct Files {
    spaces: HashMap<Space, HashMap<String, Arc<Entry>>>,
    kernel: Option<Arc<Entry>>,
    initramfs: Option<Arc<Entry>>,
    cmdline: String,
}

/// Where loaded files are fetched from and their cache hits and misses counted.
pub(super) struct Loader<'a> {
    pub cache: &'a Cache,
    pub hits: &'a AtomicU64,
    pub misses: &'a AtomicU64,
    /// `limits.downloads_per_job`.
    pub per_job: usize,
    /// The lab's results, for `result:` sources.
    pub runs: Option<Arc<dyn RunStore>>,
}

/// Brings `source` into `cache`, checked against `expected`: a `result:` source through the
/// lab's results (`runs`), every other one by the cache itself. Loading a job and computing
/// its input key both fetch this way.
pub(super) async fn fetch(
    cache: &Cache,
    runs: Option<&Arc<dyn RunStore>>,
    source: &Source,
    expected: Option<Digest>,
) -> Result<CachedArtifact, FetchError> {
    let Source::Result(r) = source else { return cache.get(source, expected).await };
    let runs = runs.ok_or_else(|| FetchError::Result {
        what: r.to_string(),
        message: "this lab keeps no results (they need `citron serve`)".into(),
    })?;
    let (digest, src) = runs.result(r).await?;
    if let Some(e) = expected.filter(|e| *e != digest) {
        return Err(FetchError::DigestMismatch { source_name: r.to_string(), expected: e, actual: digest });
    }
    cache.get_verified(src, digest).await
}

impl Loader<'_> {
    async fn entry(&self, spec: &FileSpec, counted: Option<FileKey>, input: String, now: Instant) -> Result<Arc<Entry>, FetchError> {
        let cached = fetch(self.cache, self.runs.as_ref(), &spec.source, spec.sha256).await?;
        let counter = if cached.was_fetched() { self.misses } else { self.hits };
        counter.fetch_add(1, Ordering::Relaxed);
        let file = File::open(&cached.path).map_err(FetchError::Cache)?;
        Ok(Arc::new(Entry {
            content: Content::File(Arc::new(file)),
            len: cached.len,
            digest: cached.digest,
            policies: Policies::from_spec(&spec.lifetime, now),
            counted: spec.lifetime.access_count.and(counted),
            input: Some(input),
            _pin: Some(cached),
        }))
    }

    /// Fetches every file of `step` (named `step_name` in counted-read keys) into the cache. A
    /// failed fetch does not stop the others: every failure is returned, once per source, so
    /// that the job's author fixes them all in one round. Sources in `failed` (already reported
    /// by the `start` step) are not fetched again.
    pub(super) async fn step(
        &self,
        dut: &Dut,
        step_name: &'static str,
        step: &Step,
        now: Instant,
        failed: &[(Source, FetchError)],
    ) -> Result<Files, Vec<(Source, FetchError)>> {
        let mut files = Files { cmdline: step.cmdline.clone().unwrap_or_default(), ..Files::default() };
        // Fetch concurrently, at most `limits.downloads_per_job` at a time (a job listing
        // 20,000 URLs must not open 20,000 connections); the cache makes identical sources one
        // download and bounds the downloads of every job together (`downloads_in_flight`).
        let known_bad = |f: &FileSpec| failed.iter().any(|(s, _)| *s == f.source);
        let all: Vec<(Space, &FileSpec)> =
            step.files.iter().flat_map(|(space, list)| list.iter().map(|f| (*space, f))).filter(|(_, f)| !known_bad(f)).collect();
        let boot: Vec<(&str, &FileSpec)> = [("kernel", &step.kernel), ("initramfs", &step.initramfs)]
            .into_iter()
            .filter_map(|(n, f)| Some((n, f.as_ref()?)))
            .filter(|(_, f)| !known_bad(f))
            .collect();
        let results: Vec<Result<Arc<Entry>, FetchError>> = {
            use futures::StreamExt as _;
            // Collected first: a lazy `map` closure in the stream's type trips the `Send` check of
            // the API's spawned futures (higher-ranked lifetimes).
            let loads: Vec<_> = all
                .iter()
                .map(|(space, f)| {
                    let name = artifact_name(step_name, Some(*space), &f.path);
                    (*f, Some(FileKey { step: step_name, space: *space, path: f.path.clone() }), name)
                })
                .chain(boot.iter().map(|(n, f)| (*f, None, artifact_name(step_name, None, n))))
                .map(|(f, key, name)| self.entry(f, key, name, now))
                .collect();
            futures::stream::iter(loads).buffered(self.per_job.max(1)).collect().await
        };
        let mut errors: Vec<(Source, FetchError)> = Vec::new();
        let mut loaded = Vec::with_capacity(results.len());
        let specs = all.iter().map(|(_, f)| *f).chain(boot.iter().map(|(_, f)| *f));
        for (spec, r) in specs.zip(results) {
            match r {
                Ok(e) => loaded.push(e),
                // One error per source: two entries with one URL failed the same way.
                Err(e) if errors.iter().any(|(s, _)| *s == spec.source) => drop(e),
                Err(e) => errors.push((spec.source.clone(), e)),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut loaded = loaded.into_iter();
        for ((space, spec), entry) in all.into_iter().zip(loaded.by_ref()) {
            if bootfiles::generated_names(dut.machine_id(), space).contains(&spec.path) {
                tracing::info!(dut = %dut.id, path = %spec.path, "the job's own file replaces citron's generated one");
            }
            files.spaces.entry(space).or_default().insert(spec.path.clone(), entry);
        }
        if step.kernel.is_some() {
            files.kernel = loaded.next();
        }
        if step.initramfs.is_some() {
            files.initramfs = loaded.next();
        }
        Ok(files)
    }
}

impl Files {
    /// Every entry with policies (for events).
    pub(super) fn entries(&self) -> impl Iterator<Item = &Arc<Entry>> {
        self.spaces.values().flat_map(|m| m.values()).chain(self.kernel.iter()).chain(self.initramfs.iter())
    }

    /// What the generated boot files say about this step.
    fn boot_step(&self) -> BootStep<'_> {
        BootStep { kernel: self.kernel.is_some(), initramfs: self.initramfs.is_some(), cmdline: &self.cmdline }
    }

    /// The entry `dut` finds at normalised `path` in `space`: the job's own file first, then a
    /// generated one; then the same without a first component naming the DUT (firmware quirk:
    /// Raspberry Pi, some PXE ROMs put the serial or MAC there). `base` is how the DUT reaches
    /// this server, for generated files pointing back at it.
    pub(super) fn find(&self, dut: &Dut, space: Space, path: &str, base: Option<&str>) -> Option<Arc<Entry>> {
        self.find_exact(dut, space, path, base).or_else(|| {
            let (first, rest) = path.split_once('/')?;
            if dut.path_prefixes().iter().any(|p| p.eq_ignore_ascii_case(first)) {
                self.find_exact(dut, space, rest, base)
            } else {
                None
            }
        })
    }

    fn find_exact(&self, dut: &Dut, space: Space, path: &str, base: Option<&str>) -> Option<Arc<Entry>> {
        self.spaces.get(&space).and_then(|m| m.get(path)).cloned().or_else(|| self.generated(dut, space, path, base))
    }

    fn generated(&self, dut: &Dut, space: Space, path: &str, base: Option<&str>) -> Option<Arc<Entry>> {
        let mid = dut.machine_id();
        let text = match bootfiles::lookup(mid, space, path)? {
            Generated::Script => bootfiles::ipxe_script(mid, self.boot_step(), base)?,
            Generated::Kernel => return self.kernel.clone(),
            Generated::Initramfs => return self.initramfs.clone(),
            Generated::Cmdline => bootfiles::cmdline_txt(self.boot_step()),
            Generated::PiConfig => bootfiles::config_txt(mid, self.boot_step())?,
            Generated::Ready => bootfiles::ready_txt(mid),
        };
        Some(Arc::new(Entry::generated(text)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Lifetime, Source};

    async fn load(step: &Step) -> (tempfile::TempDir, Files) {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), Default::default(), Arc::new(crate::artifact::NoNetwork)).unwrap();
        let (hits, misses) = (AtomicU64::new(0), AtomicU64::new(0));
        let loader = Loader { cache: &cache, hits: &hits, misses: &misses, per_job: 2, runs: None };
        let files = loader.step(&Dut::new("dut1", []), "start", step, Instant::now(), &[]).await.unwrap();
        let listed: usize = step.files.values().map(Vec::len).sum();
        assert_eq!(misses.load(Ordering::Relaxed), listed as u64 + step.kernel.is_some() as u64);
        (dir, files)
    }

    fn file(path: &str, data: &str, access_count: Option<u32>) -> FileSpec {
        FileSpec {
            path: path.into(),
            source: Source::Data(Bytes::from(data.to_string())),
            sha256: None,
            lifetime: Lifetime { access_count, expiration: None },
        }
    }

    fn text(e: &Entry, intent: Intent) -> Result<String, ServeError> {
        let o = e.open(intent, None, Instant::now(), |_| Ok(()))?;
        let bytes = match o.content {
            Content::Memory(b) => b.to_vec(),
            Content::File(f) => {
                let mut buf = vec![0; o.len as usize];
                std::os::unix::fs::FileExt::read_exact_at(&*f, &mut buf, 0).unwrap();
                buf
            }
        };
        Ok(String::from_utf8(bytes).unwrap())
    }

    #[tokio::test]
    async fn a_counted_read_is_recorded_before_it_is_handed_out_and_a_failed_record_refuses_it() {
        let step =
            Step { files: [(Space::HTTP, vec![file("once", "secret", Some(2)), file("free", "x", None)])].into(), ..Step::default() };
        let (_d, files) = load(&step).await;
        let dut = Dut::new("dut1", []);
        let once = files.find(&dut, Space::HTTP, "once", None).unwrap();
        let mut recorded = Vec::new();
        once.open(Intent::Read, None, Instant::now(), |k| {
            recorded.push(k.clone());
            Ok(())
        })
        .unwrap();
        assert_eq!(recorded, [FileKey { step: "start", space: Space::HTTP, path: "once".into() }]);
        // A look records nothing; an uncounted file records nothing.
        once.open(Intent::Stat, None, Instant::now(), |_| panic!("a look is not recorded")).unwrap();
        let free = files.find(&dut, Space::HTTP, "free", None).unwrap();
        free.open(Intent::Read, None, Instant::now(), |_| panic!("not counted")).unwrap();
        // The store fails: no bytes.
        let failed = once.open(Intent::Read, None, Instant::now(), |_| Err(StoreError::backend("disk full")));
        assert!(matches!(failed, Err(ServeError::Io(_))));
        // ...and the admission stays used (fail closed): the count of 2 is spent.
        assert!(matches!(text(&once, Intent::Read), Err(ServeError::Gone(_))));
    }

    #[tokio::test]
    async fn a_range_that_misses_is_refused_before_a_read_is_used_up() {
        use crate::serve::ByteRange;
        let (_d, files) = load(&Step { files: [(Space::HTTP, vec![file("once", "secret", Some(1))])].into(), ..Step::default() }).await;
        let once = files.find(&Dut::new("dut1", []), Space::HTTP, "once", None).unwrap();
        let miss = RangeRequest { bytes: ByteRange::From(6), if_version: None, unless_versions: &[] };
        let refused = once.open(Intent::Read, Some(&miss), Instant::now(), |_| panic!("nothing is recorded"));
        assert!(matches!(refused, Err(ServeError::OutOfRange { offset: 6, len: 0, size: 6 })), "{refused:?}");
        // For another version (If-Range) or one the client holds (If-None-Match) it is not checked.
        let digest = Digest::of(b"secret");
        let other = RangeRequest { if_version: Some(Digest::of(b"other")), ..miss };
        let held = [digest];
        let cached = RangeRequest { unless_versions: &held, ..miss };
        for r in [other, cached] {
            once.open(Intent::Stat, Some(&r), Instant::now(), |_| Ok(())).unwrap();
        }
        let fits = RangeRequest { bytes: ByteRange::FromTo(0, 1), ..miss };
        assert_eq!(once.open(Intent::Read, Some(&fits), Instant::now(), |_| Ok(())).unwrap().len, 6, "the read is still there");
    }

    #[tokio::test]
    async fn the_jobs_file_wins_and_firmware_prefixes_are_stripped() {
        let step = Step {
            kernel: Some(file("kernel", "KERNEL", None)),
            cmdline: Some("quiet".into()),
            files: [(Space::HTTP, vec![file("boot/dut1/boot.ipxe", "MINE", None)])].into(),
            ..Step::default()
        };
        let (_d, files) = load(&step).await;
        let mut dut = Dut::new("dut1", []);
        dut.serial = Some("1234ABCD".into());
        let get = |space, path: &str| files.find(&dut, space, path, None).map(|e| text(&e, Intent::Read).unwrap());
        assert_eq!(get(Space::HTTP, "boot/dut1/boot.ipxe").as_deref(), Some("MINE"));
        assert!(get(Space::TFTP, "boot/dut1/boot.ipxe").unwrap().contains("kernel /boot/dut1/kernel quiet"));
        assert_eq!(get(Space::TFTP, "1234abcd/boot/dut1/kernel").as_deref(), Some("KERNEL"));
        assert_eq!(get(Space::TFTP, "ffff/boot/dut1/kernel"), None);
        assert_eq!(get(Space::TFTP, "boot/dut1/cmdline.txt").as_deref(), Some("quiet\n"));
        assert_eq!(get(Space::HTTP, "config.txt"), None);
    }
}
