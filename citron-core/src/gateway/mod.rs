//! The gateway: the lab's DUTs, their active jobs and the cache, answering backends' requests.
//!
//! It is the one [`Catalog`] implementation: backends hold it as `Arc<dyn Catalog>`, the control
//! API, the CLI and the Python bindings call its methods to add DUTs, set jobs and send events.
//!
//! # Generated files
//! For every DUT with a job the gateway also serves the boot files of [`crate::bootfiles`]
//! (`boot.ipxe`, `boot/<machine_id>/kernel`, ...), whose names and contents are decided there.
//! **A file the job defines at one of these paths wins** and the override is logged.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use parking_lot::RwLock;

use crate::access::{AccessLog, AccessRecord, AccessTicket};
use crate::artifact::{Cache, CachedArtifact, FetchError};
use crate::block::{DiskError, DiskStore};
use crate::bootfiles::{self, BootStep, Generated};
use crate::datadir::{DataDir, DataDirError};
use crate::digest::Digest;
use crate::job::{FileSpec, JobDescription, JobErrors, Origin, RenderContext, ResolvedJob, Step};
use crate::lab::LabConfig;
use crate::lifetime::{Event, Policies};
use crate::namespace::{normalize, Dut, DutId, DutRegistry, RegistryError};
use crate::serve::{Artifact, Catalog, Content, Export, ExportInfo, FileRequest, Intent, Protocol, ServeError, Space};

/// How DUTs reach citron's servers; fills `http_artifact_base` and friends.
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    /// `http://host:port` as DUTs see the HTTP server.
    pub http: Option<String>,
    /// `tftp://host:port` as DUTs see the TFTP server.
    pub tftp: Option<String>,
    /// NBD host as DUTs see it.
    pub nbd_host: Option<String>,
    /// NBD port.
    pub nbd_port: Option<u16>,
}

/// Why a gateway call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// No such DUT.
    #[error("no DUT '{0}'; list them with GET /api/v1/duts or add it to the lab file")]
    UnknownDut(DutId),
    /// The DUT could not be registered.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The job description is invalid.
    #[error("{0}")]
    Job(#[from] JobErrors),
    /// An artifact could not be fetched.
    #[error("{0}")]
    Fetch(#[from] FetchError),
    /// A job's disk could not be prepared.
    #[error("{0}")]
    Disk(#[from] DiskError),
    /// The data directory is held by another citron, or cannot be created.
    #[error(transparent)]
    DataDirLock(#[from] DataDirError),
    /// The data directory is inside an artifact root, so a job's `file:` source could read the
    /// cache and disks of every other job.
    #[error("data directory {data} and artifact root {root} overlap: a job's `file:` source could read the cache and disks of other jobs; put --data outside every `artifact_roots` entry")]
    DataDirInRoot {
        /// The data directory.
        data: PathBuf,
        /// The root that contains it.
        root: PathBuf,
    },
    /// The data directory is unusable.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Refuses a data directory inside (or equal to, or containing) an artifact root.
fn refuse_data_dir_in_roots(data_dir: &Path, roots: &[PathBuf]) -> Result<(), GatewayError> {
    let Ok(data) = data_dir.canonicalize() else { return Ok(()) };
    for root in roots {
        let Ok(r) = root.canonicalize() else { continue };
        if data.starts_with(&r) || r.starts_with(&data) {
            return Err(GatewayError::DataDirInRoot { data: data_dir.to_path_buf(), root: root.clone() });
        }
    }
    Ok(())
}

/// A servable file of a loaded job.
struct Entry {
    content: Content,
    len: u64,
    digest: Digest,
    policies: Policies,
    _pin: Option<CachedArtifact>,
}

/// What one step of a job serves, by space and normalised path.
#[derive(Default)]
struct Files {
    http: HashMap<String, Arc<Entry>>,
    tftp: HashMap<String, Arc<Entry>>,
    kernel: Option<Arc<Entry>>,
    initramfs: Option<Arc<Entry>>,
    cmdline: String,
}

impl Files {
    fn space(&self, s: Space) -> &HashMap<String, Arc<Entry>> {
        match s {
            Space::Http => &self.http,
            Space::Tftp => &self.tftp,
        }
    }
    fn entries(&self) -> impl Iterator<Item = &Arc<Entry>> {
        self.http.values().chain(self.tftp.values()).chain(self.kernel.iter()).chain(self.initramfs.iter())
    }
    /// What the generated boot files say about this step.
    fn boot_step(&self) -> BootStep<'_> {
        BootStep { kernel: self.kernel.is_some(), initramfs: self.initramfs.is_some(), cmdline: &self.cmdline }
    }
}

/// What was set as a DUT's job: its text, where it came from and when it became active
/// (`GET /api/v1/duts/{id}/job`). The rendered job says what is served; this says what was asked.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    /// The YAML as it was set (`None` for a job built in code or given as a parsed description).
    pub yaml: Option<String>,
    /// Where it came from: the job file, `api:<dut>`, or what the caller named it.
    pub origin: Origin,
    /// When it became the DUT's active job (its artifacts fetched).
    pub set_at: SystemTime,
}

struct ActiveJob {
    job: ResolvedJob,
    start: Files,
    cont: Option<Files>,
    boots: AtomicU32,
    record: JobRecord,
}

impl ActiveJob {
    /// `continue` is used from the second boot after the job started.
    fn files(&self) -> &Files {
        match &self.cont {
            Some(c) if self.boots.load(Ordering::SeqCst) >= 2 => c,
            _ => &self.start,
        }
    }
}

struct Inner {
    registry: RwLock<DutRegistry>,
    jobs: RwLock<HashMap<DutId, Arc<ActiveJob>>>,
    cache: Cache,
    log: Arc<AccessLog>,
    lab: LabConfig,
    endpoints: RwLock<Endpoints>,
    data_dir: PathBuf,
    disks: DiskStore,
    /// Held for the gateway's life: no second citron on this data directory.
    _data_lock: DataDir,
}

/// The running state of a lab. Cheap to clone; clones share everything.
///
/// ```
/// use citron_core::{Gateway, lab::LabConfig, job::{JobDescription, Origin}};
/// use citron_core::serve::{Catalog, FileRequest, Intent, Protocol, Space};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let dir = tempfile::tempdir().unwrap();
/// let gw = Gateway::new(LabConfig::default_lab(), dir.path()).unwrap();
/// let job = JobDescription::parse("deployment:\n  start:\n    storage:\n      http:\n        - path: /hello\n          data: hi\n", Origin::named("job.yaml")).unwrap();
/// gw.set_job(&"dut1".into(), &job).await.unwrap();
/// let req = FileRequest { peer: "127.0.0.2".parse().unwrap(), protocol: Protocol::HTTP, space: Space::Http, path: "/hello", base_url: None, intent: Intent::Read };
/// assert_eq!(gw.open(&req).unwrap().len, 2);
/// # });
/// ```
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("data_dir", &self.inner.data_dir).finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway for `lab`, keeping its state (cache, disks) under `data_dir`, that fetches
    /// nothing over the network ([`NoNetwork`](crate::artifact::NoNetwork): `data:` and `file:`
    /// sources only). A running lab uses [`with_fetchers`](Self::with_fetchers) with
    /// `citron_fetch::Network` (or `citron_fetch::gateway`, which does both).
    pub fn new(lab: LabConfig, data_dir: &Path) -> Result<Gateway, GatewayError> {
        Self::with_fetchers(lab, data_dir, Arc::new(crate::artifact::NoNetwork))
    }

    /// A gateway for `lab` whose cache fetches URLs and container images with `fetchers`.
    pub fn with_fetchers(lab: LabConfig, data_dir: &Path, fetchers: Arc<dyn crate::artifact::Fetchers>) -> Result<Gateway, GatewayError> {
        let dd = |source| GatewayError::DataDir { path: data_dir.to_path_buf(), source };
        let data_lock = DataDir::open(data_dir)?;
        refuse_data_dir_in_roots(data_dir, &lab.artifact_roots)?;
        let cache_cfg = lab.cache_config().map_err(|m| dd(std::io::Error::new(std::io::ErrorKind::InvalidInput, m)))?;
        let cache = Cache::open_limited(&data_dir.join("cache"), cache_cfg, fetchers, lab.limits.downloads_in_flight).map_err(dd)?;
        let disks = DiskStore::open(&data_dir.join("disks")).map_err(dd)?;
        let mut registry = DutRegistry::default();
        for d in &lab.duts {
            registry.add(d.clone())?;
        }
        Ok(Gateway {
            inner: Arc::new(Inner {
                registry: RwLock::new(registry),
                jobs: RwLock::new(HashMap::new()),
                cache,
                log: Arc::new(AccessLog::new(&lab.limits)),
                lab,
                endpoints: RwLock::new(Endpoints::default()),
                data_dir: data_dir.to_path_buf(),
                disks,
                _data_lock: data_lock,
            }),
        })
        .inspect(|gw| {
            if tokio::runtime::Handle::try_current().is_ok() {
                gw.spawn_disk_sweeper(DISK_SWEEP_INTERVAL);
            }
        })
    }

    /// Removes the disks whose `expiration` passed with no job asking for them; returns how many.
    pub fn sweep_disks(&self) -> usize {
        self.inner.disks.sweep()
    }

    /// Sweeps expired disks every `every` until the gateway is dropped. [`Gateway::new`] starts
    /// one every 10 minutes when called inside a tokio runtime; tests start faster ones.
    pub fn spawn_disk_sweeper(&self, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let _ = tokio::task::spawn_blocking(move || inner.disks.sweep()).await;
            }
        })
    }

    /// Tells the gateway how DUTs reach the servers (once they are bound).
    pub fn set_endpoints(&self, e: Endpoints) {
        *self.inner.endpoints.write() = e;
    }

    /// The lab configuration.
    pub fn lab(&self) -> &LabConfig {
        &self.inner.lab
    }

    /// The access log and counters.
    pub fn access_log(&self) -> &Arc<AccessLog> {
        &self.inner.log
    }

    /// The artifact cache.
    pub fn cache(&self) -> &Cache {
        &self.inner.cache
    }

    /// All DUTs.
    pub fn duts(&self) -> Vec<Dut> {
        self.inner.registry.read().iter().cloned().collect()
    }

    /// One DUT.
    pub fn dut(&self, id: &DutId) -> Option<Dut> {
        self.inner.registry.read().get(id).cloned()
    }

    /// Adds a DUT.
    pub fn add_dut(&self, dut: Dut) -> Result<(), GatewayError> {
        Ok(self.inner.registry.write().add(dut)?)
    }

    /// Removes a DUT and its job.
    pub fn remove_dut(&self, id: &DutId) -> Result<Dut, GatewayError> {
        let d = self.inner.registry.write().remove(id).ok_or_else(|| GatewayError::UnknownDut(id.clone()))?;
        self.inner.jobs.write().remove(id);
        self.inner.disks.release(id);
        self.inner.log.forget(id);
        Ok(d)
    }

    /// The template variables a job for `dut` sees.
    pub fn variables(&self, dut: &Dut) -> BTreeMap<String, String> {
        let mut v = BTreeMap::new();
        let e = self.inner.endpoints.read().clone();
        v.insert("machine_id".into(), dut.machine_id().to_string());
        v.insert("http_artifact_base".into(), e.http.unwrap_or_default());
        v.insert("tftp_artifact_base".into(), e.tftp.unwrap_or_default());
        v.insert("nbd_host".into(), e.nbd_host.unwrap_or_default());
        v.insert("nbd_port".into(), e.nbd_port.map(|p| p.to_string()).unwrap_or_default());
        for (k, val) in &self.inner.lab.variables {
            v.insert(k.clone(), val.clone());
        }
        v
    }

    /// The render context of a job for `dut`. `job_dir` is the job file's directory, allowed as
    /// a `file:` root for jobs given on the command line.
    pub fn render_context(&self, dut: &Dut, job_dir: Option<&Path>) -> RenderContext {
        let mut roots = self.inner.lab.artifact_roots.clone();
        if let Some(d) = job_dir {
            roots.push(d.to_path_buf());
        }
        RenderContext { vars: self.variables(dut), file_roots: roots, limits: self.inner.lab.limits.clone() }
    }

    /// Renders `job` for `dut`, fetches every artifact into the cache and makes it the DUT's
    /// active job (replacing any other). Counts as a `job_start`.
    pub async fn set_job(&self, id: &DutId, job: &JobDescription) -> Result<(), GatewayError> {
        self.set_job_with_roots(id, job, false).await
    }

    /// [`set_job`](Self::set_job) for a job read from a file given by the lab admin: its own
    /// directory is an allowed `file:` root too.
    pub async fn set_trusted_job(&self, id: &DutId, job: &JobDescription) -> Result<(), GatewayError> {
        self.set_job_with_roots(id, job, true).await
    }

    async fn set_job_with_roots(&self, id: &DutId, job: &JobDescription, trusted: bool) -> Result<(), GatewayError> {
        let dir = if trusted { job.origin().base_dir.clone() } else { None };
        self.render_and_set(id, dir.as_deref(), (None, job.origin().clone()), |ctx| job.render(ctx)).await
    }

    /// [`set_job`](Self::set_job) from YAML text (the lab API): shape and render problems are
    /// reported together ([`JobDescription::check`]); `file:` sources may read only the lab's
    /// `artifact_roots`.
    pub async fn set_job_yaml(&self, id: &DutId, text: &str, origin: Origin) -> Result<(), GatewayError> {
        let asked = (Some(text.to_string()), origin.clone());
        self.render_and_set(id, None, asked, |ctx| JobDescription::check(text, origin, ctx)).await
    }

    /// [`set_trusted_job`](Self::set_trusted_job) from a job file the lab admin gave (`citron
    /// serve --job`), its shape and render problems reported together as by `citron validate`.
    pub async fn set_trusted_job_file(&self, id: &DutId, path: &Path) -> Result<(), GatewayError> {
        let origin = Origin::file(path);
        let dir = origin.base_dir.clone();
        // Read once and kept as set; a file that cannot be read is reported by `check_file`.
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let asked = (Some(text.clone()), origin.clone());
                self.render_and_set(id, dir.as_deref(), asked, |ctx| JobDescription::check(&text, origin, ctx)).await
            }
            Err(_) => self.render_and_set(id, dir.as_deref(), (None, origin), |ctx| JobDescription::check_file(path, ctx)).await,
        }
    }

    /// The one way a job description becomes a DUT's job: rendered by `render` in the DUT's
    /// context (`job_dir` an extra `file:` root), then loaded; `asked` is its YAML (if any) and
    /// origin, for [`job_record`](Self::job_record).
    async fn render_and_set(
        &self,
        id: &DutId,
        job_dir: Option<&Path>,
        asked: (Option<String>, Origin),
        render: impl FnOnce(&RenderContext) -> Result<ResolvedJob, JobErrors>,
    ) -> Result<(), GatewayError> {
        let dut = self.dut(id).ok_or_else(|| GatewayError::UnknownDut(id.clone()))?;
        let resolved = render(&self.render_context(&dut, job_dir))?;
        self.load_job(id, resolved, asked).await
    }

    /// Makes an already rendered job the DUT's active job: fetches its artifacts, replaces any
    /// other job. For tools that build jobs in code rather than YAML.
    pub async fn set_resolved_job(&self, id: &DutId, resolved: ResolvedJob) -> Result<(), GatewayError> {
        let origin = Origin::named(resolved.origin.clone());
        self.load_job(id, resolved, (None, origin)).await
    }

    async fn load_job(&self, id: &DutId, resolved: ResolvedJob, (yaml, origin): (Option<String>, Origin)) -> Result<(), GatewayError> {
        let dut = self.dut(id).ok_or_else(|| GatewayError::UnknownDut(id.clone()))?;
        let now = Instant::now();
        let start = self.load_step(&dut, &resolved.start, now).await?;
        let cont = match &resolved.continue_ {
            Some(c) => Some(self.load_step(&dut, &c.over(&resolved.start), now).await?),
            None => None,
        };
        let disks = match &resolved.continue_ {
            Some(c) => c.over(&resolved.start).nbd,
            None => resolved.start.nbd.clone(),
        };
        self.inner.disks.attach(&self.inner.cache, &self.lab().limits, id, &disks).await?;
        let record = JobRecord { yaml, origin, set_at: SystemTime::now() };
        let active = Arc::new(ActiveJob { job: resolved, start, cont, boots: AtomicU32::new(0), record });
        tracing::info!(dut = %id, job = %active.job.origin, "job loaded");
        self.inner.jobs.write().insert(id.clone(), active);
        Ok(())
    }

    /// Drops the DUT's job: its files disappear from its namespace.
    pub fn clear_job(&self, id: &DutId) -> Result<bool, GatewayError> {
        if self.dut(id).is_none() {
            return Err(GatewayError::UnknownDut(id.clone()));
        }
        self.inner.disks.release(id);
        Ok(self.inner.jobs.write().remove(id).is_some())
    }

    /// The DUT's active job, rendered.
    pub fn job(&self, id: &DutId) -> Option<ResolvedJob> {
        self.inner.jobs.read().get(id).map(|j| j.job.clone())
    }

    /// What was set as the DUT's active job (its YAML, origin and time), or `None` without one.
    pub fn job_record(&self, id: &DutId) -> Option<JobRecord> {
        self.inner.jobs.read().get(id).map(|j| j.record.clone())
    }

    /// A DUT event: resets what the lifetime policies say; `boot` moves a job to its `continue`
    /// deployment from the second boot on; `job_end` unloads the job (as
    /// [`clear_job`](Self::clear_job)), so that its files, secrets included, are not served to
    /// the DUT once the job is over.
    pub fn event(&self, id: &DutId, event: Event) -> Result<(), GatewayError> {
        if self.dut(id).is_none() {
            return Err(GatewayError::UnknownDut(id.clone()));
        }
        let now = Instant::now();
        if let Some(job) = self.inner.jobs.read().get(id).cloned() {
            match event {
                Event::Boot => {
                    job.boots.fetch_add(1, Ordering::SeqCst);
                }
                Event::JobStart => job.boots.store(0, Ordering::SeqCst),
                Event::JobEnd => {}
            }
            for e in job.start.entries().chain(job.cont.iter().flat_map(|c| c.entries())) {
                e.policies.on_event(event, now);
            }
        }
        self.inner.disks.event(id, event);
        tracing::info!(dut = %id, ?event, "event");
        if event == Event::JobEnd && self.clear_job(id)? {
            tracing::info!(dut = %id, "job ended: its files are no longer served");
        }
        Ok(())
    }

    /// The DUT's access log, oldest first.
    pub fn accesses(&self, id: &DutId) -> Result<Vec<AccessRecord>, GatewayError> {
        if self.dut(id).is_none() {
            return Err(GatewayError::UnknownDut(id.clone()));
        }
        Ok(self.inner.log.entries(id))
    }

    /// One page of the DUT's access log: at most `limit` records with a `seq` above `after`.
    pub fn accesses_page(&self, id: &DutId, after: u64, limit: usize) -> Result<Vec<AccessRecord>, GatewayError> {
        if self.dut(id).is_none() {
            return Err(GatewayError::UnknownDut(id.clone()));
        }
        Ok(self.inner.log.page(id, after, limit))
    }

    async fn load_entry(&self, spec: &FileSpec, now: Instant) -> Result<Arc<Entry>, GatewayError> {
        let cached = self.inner.cache.get(&spec.source, spec.sha256).await?;
        let counter = if cached.was_fetched() { &self.inner.log.cache_misses } else { &self.inner.log.cache_hits };
        counter.fetch_add(1, Ordering::Relaxed);
        let file = File::open(&cached.path).map_err(|e| GatewayError::Fetch(FetchError::Cache(e)))?;
        Ok(Arc::new(Entry {
            content: Content::File(Arc::new(file)),
            len: cached.len,
            digest: cached.digest,
            policies: Policies::from_spec(&spec.lifetime, now),
            _pin: Some(cached),
        }))
    }

    async fn load_step(&self, dut: &Dut, step: &Step, now: Instant) -> Result<Files, GatewayError> {
        let mut files = Files { cmdline: step.cmdline.clone().unwrap_or_default(), ..Files::default() };
        // Fetch concurrently, at most `limits.downloads_per_job` at a time (a job listing
        // 20,000 URLs must not open 20,000 connections); the cache makes identical sources one
        // download and bounds the downloads of every job together (`downloads_in_flight`).
        let all: Vec<(Space, &FileSpec)> =
            step.http.iter().map(|f| (Space::Http, f)).chain(step.tftp.iter().map(|f| (Space::Tftp, f))).collect();
        let per_job = self.inner.lab.limits.downloads_per_job.max(1);
        let loaded: Vec<Arc<Entry>> = {
            use futures::{StreamExt as _, TryStreamExt as _};
            // Collected first: a lazy `map` closure in the stream's type trips the `Send` check of
            // the API's spawned futures (higher-ranked lifetimes).
            let loads: Vec<_> = all.iter().map(|(_, f)| self.load_entry(f, now)).collect();
            futures::stream::iter(loads).buffered(per_job).try_collect().await?
        };
        let generated = [Space::Http, Space::Tftp].map(|sp| (sp, bootfiles::generated_names(dut.machine_id(), sp)));
        for ((space, spec), entry) in all.into_iter().zip(loaded) {
            let map = match space {
                Space::Http => &mut files.http,
                Space::Tftp => &mut files.tftp,
            };
            if generated.iter().any(|(sp, names)| *sp == space && names.contains(&spec.path)) {
                tracing::info!(dut = %dut.id, path = %spec.path, "the job's own file replaces citron's generated one");
            }
            map.insert(spec.path.clone(), entry);
        }
        if let Some(k) = &step.kernel {
            files.kernel = Some(self.load_entry(k, now).await?);
        }
        if let Some(i) = &step.initramfs {
            files.initramfs = Some(self.load_entry(i, now).await?);
        }
        Ok(files)
    }

    fn generated(&self, dut: &Dut, files: &Files, space: Space, path: &str, base: Option<&str>) -> Option<Arc<Entry>> {
        let mid = dut.machine_id();
        let text = match bootfiles::lookup(mid, space, path)? {
            Generated::Script => bootfiles::ipxe_script(mid, files.boot_step(), base)?,
            Generated::Kernel => return files.kernel.clone(),
            Generated::Initramfs => return files.initramfs.clone(),
            Generated::Cmdline => bootfiles::cmdline_txt(files.boot_step()),
            Generated::PiConfig => bootfiles::config_txt(mid, files.boot_step())?,
        };
        let b = Bytes::from(text);
        Some(Arc::new(Entry {
            len: b.len() as u64,
            digest: Digest::of(&b),
            content: Content::Memory(b),
            policies: Policies::default(),
            _pin: None,
        }))
    }

    fn find(&self, dut: &Dut, job: &ActiveJob, req: &FileRequest<'_>, path: &str) -> Option<Arc<Entry>> {
        let files = job.files();
        files.space(req.space).get(path).cloned().or_else(|| self.generated(dut, files, req.space, path, req.base_url))
    }
}

/// How often [`Gateway::new`]'s sweeper looks for expired disks.
const DISK_SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

impl Catalog for Gateway {
    fn dut_of(&self, peer: IpAddr) -> Option<DutId> {
        self.inner.registry.read().by_addr(peer).map(|d| d.id.clone())
    }

    fn limits(&self) -> crate::limits::Limits {
        self.inner.lab.limits.clone()
    }

    fn open(&self, req: &FileRequest<'_>) -> Result<Artifact, ServeError> {
        let log = &self.inner.log;
        let Some(dut) = self.inner.registry.read().by_addr(req.peer).cloned() else {
            log.refuse(None, req.protocol, req.path, "unknown DUT");
            return Err(ServeError::UnknownDut(req.peer));
        };
        let refuse = |e: ServeError| {
            log.refuse(Some(&dut.id), req.protocol, req.path, &e);
            e
        };
        let path = normalize(req.path).map_err(|e| refuse(e.into()))?;
        let Some(job) = self.inner.jobs.read().get(&dut.id).cloned() else {
            return Err(refuse(ServeError::NotFound(path)));
        };
        let mut entry = self.find(&dut, &job, req, &path);
        if entry.is_none() {
            // Firmware quirk (Raspberry Pi, some PXE ROMs): a first component naming the DUT.
            if let Some((first, rest)) = path.split_once('/') {
                if dut.path_prefixes().iter().any(|p| p.eq_ignore_ascii_case(first)) {
                    entry = self.find(&dut, &job, req, rest);
                }
            }
        }
        let entry = entry.ok_or_else(|| refuse(ServeError::NotFound(path.clone())))?;
        // A look answers as a read would (410 for a used-up secret), but uses nothing up.
        match req.intent {
            Intent::Read => entry.policies.admit(Instant::now()),
            Intent::Stat => entry.policies.check(Instant::now()),
        }
        .map_err(|e| refuse(e.into()))?;
        Ok(Artifact {
            name: path,
            len: entry.len,
            digest: entry.digest,
            content: entry.content.clone(),
            ticket: AccessTicket::new(log.clone(), dut.id.clone(), req.protocol, req.path),
        })
    }

    fn exports(&self, peer: IpAddr) -> Vec<ExportInfo> {
        let dut = self.inner.registry.read().by_addr(peer).map(|d| d.id.clone());
        dut.map(|d| self.inner.disks.exports(&d)).unwrap_or_default()
    }

    fn open_export(&self, peer: IpAddr, protocol: Protocol, name: &str) -> Result<Export, ServeError> {
        let Some(dut) = self.inner.registry.read().by_addr(peer).map(|d| d.id.clone()) else {
            self.inner.log.refuse(None, protocol, name, "unknown DUT");
            return Err(ServeError::UnknownDut(peer));
        };
        match self.inner.disks.open_export(&dut, name) {
            Ok((info, device)) => {
                // The access log names the disk opened, also when the client asked for the default.
                let ticket = AccessTicket::new(self.inner.log.clone(), dut, protocol, &info.name);
                Ok(Export::new(info, device, ticket))
            }
            Err(e) => {
                self.inner.log.refuse(Some(&dut), protocol, name, &e);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests;
