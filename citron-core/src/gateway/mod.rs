//! The gateway: the [`Catalog`] a lab runs, composed of pieces that each keep one thing.
//!
//! Backends hold it as `Arc<dyn Catalog>`; the control API, the CLI and the Python bindings call
//! its methods to add DUTs, set jobs and send events. It decides nothing of its own: it wires
//!
//! - `duts.rs`: the DUTs and their source addresses ([`DutStore`]),
//! - `jobs.rs`: every DUT's job, recorded ([`JobStore`]) and loaded,
//! - `files.rs`: what a loaded job serves, its own files and the generated boot files of
//!   [`crate::bootfiles`] (**a file the job defines at a generated path wins**, and the override
//!   is logged),
//! - `lifetimes.rs`: the counted reads and last events ([`LifetimeStore`]),
//! - `events.rs`: the DUTs' event history ([`EventLog`]),
//! - `endpoints.rs`: how DUTs reach the servers, and the template variables that say so,
//! - `setting.rs`: how a job becomes a DUT's job (rendered, fetched, recorded, activated),
//! - `runs.rs`: the runs of jobs with `results:` (opened when the job starts, closed at
//!   `job_end`) and the DUTs' uploads into them, kept by the lab's [`RunStore`],
//! - `inputs.rs`: a run's input key and what its DUT read (replay by revision),
//! - the access log ([`AccessLog`] over an [`AccessStore`]), the
//!   artifact [`Cache`] and the NBD [`DiskStore`] (its disks recorded in a [`DiskRecordStore`]).
//!
//! The stores are traits so that a durable lab replaces today's in-memory maps
//! ([`Stores::memory`]) without touching the pieces; [`crate::store`] says when each is called
//! and why they are synchronous. The order that matters is enforced here: a job is recorded
//! before it serves, and a counted read is recorded before [`Catalog::open`] returns it.

mod duts;
mod endpoints;
mod error;
mod events;
mod files;
mod inputs;
mod jobs;
mod lifetimes;
mod loading;
mod runs;
mod setting;

pub use duts::{DutStore, MemoryDuts};
pub use endpoints::{Endpoint, Endpoints, DISK_PROTOCOLS};
pub use error::{FetchFailures, GatewayError};
pub use events::{EventLog, EventRecord, MemoryEvents, MEMORY_EVENTS_PER_DUT};
pub use inputs::{InputKey, RunInputs};
pub use jobs::{JobRecord, JobStore, MemoryJobs};
pub use lifetimes::{resets_counts, FileKey, LifetimeStore, MemoryLifetimes};
pub use loading::{LoadMark, Starting};
pub use runs::{DutRun, ResultFuture, RunFuture, RunStart, RunStore, RESULTS_PREFIX};

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use parking_lot::RwLock;

use crate::access::{AccessLog, AccessRecord, AccessStore, InFlight, MemoryAccess};
use crate::artifact::Cache;
use crate::block::{DiskRecordStore, DiskStore, MemoryDiskRecords};
use crate::datadir::DataDir;
use crate::job::{RenderContext, ResolvedJob};
use crate::lab::LabConfig;
use crate::lifetime::Event;
use crate::namespace::{normalize, Dut, DutId};
use crate::serve::{Artifact, Catalog, Export, ExportInfo, FileRequest, Intent, JobWait, Protocol, ServeError, Upload, WriteRequest};
use crate::timing::{TimingSnapshot, Timings};

use jobs::Jobs;
use loading::Loading;

/// The state stores a gateway keeps its pieces in.
pub struct Stores {
    /// The DUTs.
    pub duts: Box<dyn DutStore>,
    /// The job records.
    pub jobs: Box<dyn JobStore>,
    /// Counted reads and last events.
    pub lifetimes: Box<dyn LifetimeStore>,
    /// The access log's records.
    pub access: Box<dyn AccessStore>,
    /// The event history.
    pub events: Box<dyn EventLog>,
    /// The job disks' records (lifetimes, last use, overlays).
    pub disks: Box<dyn DiskRecordStore>,
}

impl Stores {
    /// Everything in memory (today's lab): lost when citron stops.
    pub fn memory(limits: &crate::limits::Limits) -> Stores {
        Stores {
            duts: Box::new(MemoryDuts::default()),
            jobs: Box::new(MemoryJobs::default()),
            lifetimes: Box::new(MemoryLifetimes::default()),
            access: Box::new(MemoryAccess::new(limits)),
            events: Box::new(MemoryEvents::default()),
            disks: Box::new(MemoryDiskRecords::default()),
        }
    }
}

struct Inner {
    duts: Box<dyn DutStore>,
    jobs: Jobs,
    lifetimes: Box<dyn LifetimeStore>,
    events: Box<dyn EventLog>,
    cache: Cache,
    log: Arc<AccessLog>,
    lab: LabConfig,
    endpoints: RwLock<Endpoints>,
    data_dir: PathBuf,
    disks: DiskStore,
    /// DUTs whose job is being loaded (their requests wait for it).
    loading: Arc<Loading>,
    /// How long loading a job took (fetches and disks included), for `/metrics`.
    load_times: Timings,
    /// Where runs of jobs with `results:` are kept (`None`: such jobs are refused).
    runs: RwLock<Option<Arc<dyn RunStore>>>,
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
/// let req = FileRequest { peer: "127.0.0.2".parse().unwrap(), protocol: Protocol::HTTP, space: Space::HTTP, path: "/hello", base_url: None, intent: Intent::Read, range: None };
/// assert_eq!(gw.open(&req).unwrap().len, 2);
/// assert_eq!(gw.job_record(&"dut1".into()).unwrap().origin.name, "job.yaml");
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
    /// A gateway for `lab`, keeping its state (cache, disks) under `data_dir` and everything else
    /// in memory, that fetches nothing over the network ([`NoNetwork`](crate::artifact::NoNetwork):
    /// `data:` and `file:` sources only). A running lab uses [`with_fetchers`](Self::with_fetchers)
    /// with `citron_fetch::Network` (or `citron_fetch::gateway`, which does both).
    pub fn new(lab: LabConfig, data_dir: &Path) -> Result<Gateway, GatewayError> {
        Self::with_fetchers(lab, data_dir, Arc::new(crate::artifact::NoNetwork))
    }

    /// A gateway for `lab` whose cache fetches URLs and container images with `fetchers`, with
    /// everything but the cache and disks in memory.
    pub fn with_fetchers(lab: LabConfig, data_dir: &Path, fetchers: Arc<dyn crate::artifact::Fetchers>) -> Result<Gateway, GatewayError> {
        let stores = Stores::memory(&lab.limits);
        Self::with_stores(lab, data_dir, fetchers, stores)
    }

    /// A gateway for `lab` fetching with `fetchers` over `stores`. The lab file's DUTs are added
    /// to `stores.duts`, which refuses one it already holds (`DuplicateId`): reconciling a durable
    /// store with the lab file is for the durable lab to decide before calling this.
    pub fn with_stores(
        lab: LabConfig,
        data_dir: &Path,
        fetchers: Arc<dyn crate::artifact::Fetchers>,
        stores: Stores,
    ) -> Result<Gateway, GatewayError> {
        let dd = |source| GatewayError::DataDir { path: data_dir.to_path_buf(), source };
        let data_lock = DataDir::open(data_dir)?;
        error::refuse_data_dir_in_roots(data_dir, &lab.artifact_roots)?;
        let cache_cfg = lab.cache_config().map_err(|m| dd(std::io::Error::new(std::io::ErrorKind::InvalidInput, m)))?;
        let cache = Cache::open_limited(&data_dir.join("cache"), cache_cfg, fetchers, lab.limits.downloads_in_flight).map_err(dd)?;
        let disks = DiskStore::open(&data_dir.join("disks"), stores.disks).map_err(dd)?;
        // Disks whose expiration passed while citron was stopped go before anything is served.
        disks.sweep();
        for d in &lab.duts {
            stores.duts.add(d.clone())?;
        }
        Ok(Gateway {
            inner: Arc::new(Inner {
                duts: stores.duts,
                jobs: Jobs::new(stores.jobs),
                lifetimes: stores.lifetimes,
                events: stores.events,
                cache,
                log: Arc::new(AccessLog::with_store(&lab.limits, stores.access)),
                lab,
                endpoints: RwLock::new(Endpoints::default()),
                data_dir: data_dir.to_path_buf(),
                disks,
                loading: Arc::default(),
                load_times: Timings::default(),
                runs: RwLock::new(None),
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

    /// Sweeps expired disks until the gateway is dropped: when the next recorded expiration
    /// falls due (so a disk goes on schedule), when a job releases a disk, and at least every
    /// `every`. [`Gateway::new`] starts one (every 10 minutes at least) when called inside a
    /// tokio runtime.
    pub fn spawn_disk_sweeper(&self, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        let released = self.inner.disks.released();
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let next = tokio::task::spawn_blocking(move || {
                    inner.disks.sweep();
                    inner.disks.next_expiry()
                })
                .await
                .ok()
                .flatten();
                // A disk that could not be removed is not retried more than once a second.
                let wait = next
                    .map(|t| t.duration_since(SystemTime::now()).unwrap_or_default().min(every))
                    .unwrap_or(every)
                    .max(std::time::Duration::from_secs(1));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = released.notified() => {}
                }
            }
        })
    }

    /// Tells the gateway how DUTs reach the servers (once they are bound).
    pub fn set_endpoints(&self, e: Endpoints) {
        *self.inner.endpoints.write() = e;
    }

    /// How DUTs reach the servers (what [`set_endpoints`](Self::set_endpoints) said).
    pub fn endpoints(&self) -> Endpoints {
        self.inner.endpoints.read().clone()
    }

    /// The data directory (`--data`): caches, disks, and what else a lab keeps beside them.
    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
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

    /// Marks `id` as about to be loaded: until the mark is dropped (or its load ends, if that
    /// is later), its requests wait for its job ([`Catalog::job_loading`]). A lab that is
    /// starting marks every DUT it will load before loading the first, since it loads them one
    /// after the other.
    pub fn expect_job(&self, id: &DutId) -> LoadMark {
        self.inner.loading.mark(id)
    }

    /// Marks the lab as starting until the returned guard is dropped: [`ready`](Self::ready)
    /// is `false` meanwhile. `citron serve` holds it while it loads the jobs it was started with.
    pub fn starting(&self) -> Starting {
        self.inner.loading.starting()
    }

    /// Whether the lab has loaded what it was started with (no [`starting`](Self::starting)
    /// guard lives): `GET /api/v1/ready`.
    pub fn ready(&self) -> bool {
        self.inner.loading.ready()
    }

    /// How many DUTs have a job serving.
    pub fn loaded_jobs(&self) -> usize {
        self.inner.jobs.active_count()
    }

    /// How long loading jobs took (fetches and disks included), since start.
    pub fn job_load_times(&self) -> TimingSnapshot {
        self.inner.load_times.snapshot()
    }

    /// All DUTs.
    pub fn duts(&self) -> Vec<Dut> {
        self.inner.duts.list()
    }

    /// One DUT.
    pub fn dut(&self, id: &DutId) -> Option<Dut> {
        self.inner.duts.get(id)
    }

    fn known(&self, id: &DutId) -> Result<Dut, GatewayError> {
        self.dut(id).ok_or_else(|| GatewayError::UnknownDut(id.clone()))
    }

    /// Adds a DUT.
    pub fn add_dut(&self, dut: Dut) -> Result<(), GatewayError> {
        Ok(self.inner.duts.add(dut)?)
    }

    /// Removes a DUT and its job, disks, counters, events and access log.
    pub fn remove_dut(&self, id: &DutId) -> Result<Dut, GatewayError> {
        let d = self.inner.duts.remove(id)?.ok_or_else(|| GatewayError::UnknownDut(id.clone()))?;
        self.close_run_later(self.inner.jobs.active(id));
        self.inner.jobs.clear(id)?;
        self.inner.disks.release(id);
        self.inner.lifetimes.reset(id)?;
        self.inner.events.forget(id);
        self.inner.log.forget(id);
        Ok(d)
    }

    /// The template variables a job for `dut` sees ([`RenderContext::for_dut`]).
    pub fn variables(&self, dut: &Dut) -> BTreeMap<String, String> {
        self.render_context(dut, None).vars
    }

    /// The render context of a job for `dut` ([`RenderContext::for_dut`] with the endpoints the
    /// servers set). `job_dir` is the job file's directory, allowed as a `file:` root for jobs
    /// given on the command line.
    pub fn render_context(&self, dut: &Dut, job_dir: Option<&Path>) -> RenderContext {
        RenderContext::for_dut(&self.inner.lab, dut, &self.inner.endpoints.read(), job_dir)
    }

    /// Drops the DUT's job: its files disappear from its namespace.
    pub fn clear_job(&self, id: &DutId) -> Result<bool, GatewayError> {
        self.known(id)?;
        self.inner.disks.release(id);
        self.close_run_later(self.inner.jobs.active(id));
        Ok(self.inner.jobs.clear(id)?)
    }

    /// The DUT's active job, rendered.
    pub fn job(&self, id: &DutId) -> Option<ResolvedJob> {
        self.inner.jobs.active(id).map(|j| j.job.clone())
    }

    /// The DUT's job as it was set: its YAML, origin and when.
    pub fn job_record(&self, id: &DutId) -> Option<JobRecord> {
        self.inner.jobs.record(id)
    }

    /// A DUT event: resets what the lifetime policies say; `boot` moves a job to its `continue`
    /// deployment from the second boot on; `job_end` unloads the job (as
    /// [`clear_job`](Self::clear_job)), so that its files, secrets included, are not served to
    /// the DUT once the job is over. Recorded in the lifetime store and the event log.
    pub fn event(&self, id: &DutId, event: Event) -> Result<(), GatewayError> {
        self.known(id)?;
        let (now, at) = (Instant::now(), SystemTime::now());
        self.inner.lifetimes.event(id, event, at)?;
        if let Some(job) = self.inner.jobs.active(id) {
            job.on_event(event, now);
        }
        self.inner.disks.event(id, event);
        if let Err(e) = self.inner.events.append(id, EventRecord { time: at, event }) {
            tracing::error!(dut = %id, error = %e, "an event could not be stored");
        }
        tracing::info!(dut = %id, ?event, "event");
        if event == Event::JobEnd && self.clear_job(id)? {
            tracing::info!(dut = %id, "job ended: its files are no longer served");
        }
        Ok(())
    }

    /// The DUT's last `limit` events, oldest first.
    pub fn events(&self, id: &DutId, limit: usize) -> Result<Vec<EventRecord>, GatewayError> {
        self.known(id)?;
        Ok(self.inner.events.recent(id, limit))
    }

    /// When `event` last happened to the DUT.
    pub fn last_event(&self, id: &DutId, event: Event) -> Option<SystemTime> {
        self.inner.lifetimes.last_event(id, event)
    }

    /// The DUT's access log, oldest first.
    pub fn accesses(&self, id: &DutId) -> Result<Vec<AccessRecord>, GatewayError> {
        self.known(id)?;
        Ok(self.inner.log.entries(id))
    }

    /// The DUT's reads still in progress (its NBD connections above all): not in
    /// [`accesses`](Self::accesses) until they end.
    pub fn in_flight(&self, id: &DutId) -> Result<Vec<InFlight>, GatewayError> {
        self.known(id)?;
        Ok(self.inner.log.in_flight(id))
    }

    /// One page of the DUT's access log: at most `limit` records with a `seq` above `after`.
    pub fn accesses_page(&self, id: &DutId, after: u64, limit: usize) -> Result<Vec<AccessRecord>, GatewayError> {
        self.known(id)?;
        Ok(self.inner.log.page(id, after, limit))
    }
}

/// Whether a job being loaded is new (its counts start from zero) or a stored one loaded again
/// (its counts resume from the lifetime store).
#[derive(Clone, Copy)]
enum Load {
    New,
    Resume,
}

/// How often [`Gateway::new`]'s sweeper looks for expired disks.
const DISK_SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

impl Catalog for Gateway {
    fn dut_of(&self, peer: IpAddr) -> Option<DutId> {
        self.inner.duts.by_addr(peer).map(|d| d.id)
    }

    fn limits(&self) -> crate::limits::Limits {
        self.inner.lab.limits.clone()
    }

    fn job_loading(&self, peer: IpAddr) -> Option<JobWait> {
        let loading = &self.inner.loading;
        if loading.idle() {
            return None;
        }
        let dut = self.inner.duts.by_addr(peer)?.id;
        if !loading.is_loading(&dut) || self.inner.jobs.active(&dut).is_some() {
            return None;
        }
        Some(Box::pin(loading.wait(dut, self.inner.lab.limits.job_wait.get())))
    }

    /// Who asks ([`DutStore`]), the path normalised, the DUT's loaded job finds the file
    /// (`files.rs`), and the file opens (`files.rs`' `Entry::open`: policies, then the counted read
    /// recorded in the [`LifetimeStore`]) — every refusal logged on the way.
    fn open(&self, req: &FileRequest<'_>) -> Result<Artifact, ServeError> {
        let log = &self.inner.log;
        let Some(dut) = self.inner.duts.by_addr(req.peer) else {
            log.refuse(req.peer, None, req.protocol, req.path, "unknown DUT");
            return Err(ServeError::UnknownDut(req.peer));
        };
        let refuse = |e: ServeError| {
            log.refuse(req.peer, Some(&dut.id), req.protocol, req.path, &e);
            e
        };
        let path = normalize(req.path).map_err(|e| refuse(e.into()))?;
        let Some(job) = self.inner.jobs.active(&dut.id) else {
            return Err(refuse(ServeError::NotFound(path)));
        };
        let entry = job.files().find(&dut, req.space, &path, req.base_url).ok_or_else(|| refuse(ServeError::NotFound(path.clone())))?;
        let opened = entry
            .open(req.intent, req.range.as_ref(), Instant::now(), |key| self.inner.lifetimes.count_read(&dut.id, key))
            .map_err(|e| match e {
                // The log says what the client was told (HTTP 416).
                e @ ServeError::OutOfRange { .. } => {
                    log.refuse(req.peer, Some(&dut.id), req.protocol, req.path, format!("range not satisfiable: {e}"));
                    e
                }
                e => refuse(e),
            })?;
        if req.intent == Intent::Read {
            if let (Some(inputs), Some(name)) = (&job.inputs, entry.input_name()) {
                inputs.served(name, opened.digest);
            }
        }
        Ok(Artifact {
            name: path,
            len: opened.len,
            digest: opened.digest,
            content: opened.content,
            ticket: log.ticket(req.peer, dut.id.clone(), req.protocol, req.path),
        })
    }

    fn write(&self, req: &WriteRequest<'_>) -> Result<Upload, ServeError> {
        self.upload(req)
    }

    fn exports(&self, peer: IpAddr) -> Vec<ExportInfo> {
        let dut = self.inner.duts.by_addr(peer).map(|d| d.id);
        dut.map(|d| self.inner.disks.exports(&d)).unwrap_or_default()
    }

    fn open_export(&self, peer: IpAddr, protocol: Protocol, name: &str) -> Result<Export, ServeError> {
        let Some(dut) = self.inner.duts.by_addr(peer).map(|d| d.id) else {
            self.inner.log.refuse(peer, None, protocol, name, "unknown DUT");
            return Err(ServeError::UnknownDut(peer));
        };
        match self.inner.disks.open_export(&dut, name) {
            Ok((info, device)) => {
                // The access log names the disk opened, also when the client asked for the default.
                let ticket = self.inner.log.ticket(peer, dut, protocol, &info.name);
                Ok(Export::new(info, device, ticket))
            }
            Err(e) => {
                self.inner.log.refuse(peer, Some(&dut), protocol, name, &e);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests;
