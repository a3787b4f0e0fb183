//! What the API answers, as Python classes: `Run`, `ResultFile`, `HashHit`, `Token`,
//! `Tenant`, `Event`, and the pool's `Reservation`, `AllocatedDut`, `PoolDut`.
//!
//! They are pyo3 classes made from the API's own Rust types (`citron_lab::results::Run`, the
//! feed's `FeedEvent`, `citron_lab::pool::Reservation`), not dataclasses written again in Python: one definition is what the
//! server sends, what the remote `citron.Client` parses and what the in-process
//! `citron.Server` hands out (its `client()` speaks to its own API), so a field cannot exist in
//! one and be missing in the other.

use pyo3::prelude::*;

/// One file of a run.
///
/// ``path`` (in the run), ``sha256`` (hex: the blob's name), ``size`` (bytes), ``tokened``
/// (uploaded with a token; False: by a DUT's source address, which UDP lets anyone forge) and
/// ``uploaded_at`` (Unix seconds).
///
/// >>> import citron
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
/// ...     with c.results.open_run("build") as run:
/// ...         f = run.upload("notes.txt", b"hi")
/// ...     print(f.path, f.size, f.sha256[:8], f.tokened)
/// notes.txt 2 8f434346 True
#[pyclass(frozen, get_all, eq, module = "citron")]
#[derive(Debug, Clone, PartialEq)]
pub struct ResultFile {
    /// Its path in the run.
    pub path: String,
    /// SHA-256, hex.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
    /// Uploaded with a token.
    pub tokened: bool,
    /// When, Unix seconds.
    pub uploaded_at: f64,
}

impl From<citron_client::ResultFile> for ResultFile {
    fn from(f: citron_client::ResultFile) -> Self {
        ResultFile { path: f.path, sha256: f.sha256, size: f.size, tokened: f.tokened, uploaded_at: f.uploaded_at }
    }
}

#[pymethods]
impl ResultFile {
    fn __repr__(&self) -> String {
        format!("ResultFile(path={:?}, sha256={:?}, size={}, tokened={})", self.path, self.sha256, self.size, py_bool(self.tokened))
    }
}

/// One run of a job: ``id``, ``job``, ``revision``, ``platform``, ``dut`` (for a run a DUT's
/// job opened), ``status`` (``"running"``, ``"success"``, ``"failure"``, ``"unknown"``),
/// ``started_at`` and ``finished_at`` (Unix seconds), and ``files`` (a list of
/// :class:`ResultFile` when one run was asked for, None in lists of runs).
///
/// >>> import citron
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
/// ...     with c.results.open_run("build", revision="v1") as run:
/// ...         _ = run.upload("notes.txt", b"hi")
/// ...     r = c.results.latest("build")
/// ...     print(r.job, r.revision, r.status, [f.path for f in r.files or []])
/// build v1 success ['notes.txt']
#[pyclass(frozen, get_all, eq, module = "citron")]
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Its id.
    pub id: i64,
    /// The job.
    pub job: String,
    /// What was built or tested.
    pub revision: Option<String>,
    /// What it ran on.
    pub platform: Option<String>,
    /// The DUT.
    pub dut: Option<String>,
    /// How it stands.
    pub status: String,
    /// Unix seconds.
    pub started_at: f64,
    /// Unix seconds.
    pub finished_at: Option<f64>,
    /// Its files.
    pub files: Option<Vec<ResultFile>>,
}

impl From<citron_client::Run> for Run {
    fn from(r: citron_client::Run) -> Self {
        Run {
            id: r.id,
            job: r.job,
            revision: r.revision,
            platform: r.platform,
            dut: r.dut,
            status: r.status.name().to_string(),
            started_at: r.started_at,
            finished_at: r.finished_at,
            files: r.files.map(|f| f.into_iter().map(ResultFile::from).collect()),
        }
    }
}

#[pymethods]
impl Run {
    /// The file at ``path``, or None.
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     with c.results.open_run("build") as run:
    /// ...         _ = run.upload("a", b"1")
    /// ...     r = c.results.run("build", run.id)
    /// ...     print(r.file("a").size, r.file("b"))
    /// 1 None
    fn file(&self, path: &str) -> Option<ResultFile> {
        self.files.as_ref()?.iter().find(|f| f.path == path).cloned()
    }

    fn __repr__(&self) -> String {
        format!("Run(id={}, job={:?}, revision={}, status={:?})", self.id, self.job, py_opt(&self.revision), self.status)
    }
}

/// What :meth:`Results.find` answers (replay by revision): the input ``key`` job ``job``
/// would have on DUT ``dut`` for ``revision`` now, ``run`` (the newest successful run with that
/// key, with its files: replay it; None: run the test), ``flaky`` (runs with this key ended
/// both in success and in failure) and ``runs`` (their ids, newest first).
///
/// >>> import citron
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
/// ...     try:
/// ...         c.results.find("never-ran")
/// ...     except citron.NotFoundError as e:
/// ...         print(e.status)
/// 404
#[pyclass(frozen, get_all, eq, module = "citron")]
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// The job.
    pub job: String,
    /// The DUT the key was computed for.
    pub dut: String,
    /// The revision it was computed for.
    pub revision: Option<String>,
    /// The input key (SHA-256, hex).
    pub key: String,
    /// The newest successful run with this key, or None.
    pub run: Option<Run>,
    /// Runs with this key ended both in success and in failure.
    pub flaky: bool,
    /// The finished runs with this key, newest first.
    pub runs: Vec<i64>,
}

impl From<citron_client::Found> for Found {
    fn from(f: citron_client::Found) -> Self {
        Found { job: f.job, dut: f.dut, revision: f.revision, key: f.key, run: f.run.map(Run::from), flaky: f.flaky, runs: f.runs }
    }
}

#[pymethods]
impl Found {
    fn __repr__(&self) -> String {
        let run = self.run.as_ref().map_or("None".to_string(), |r| r.id.to_string());
        format!("Found(job={:?}, dut={:?}, key={:?}, run={run}, flaky={})", self.job, self.dut, self.key, py_bool(self.flaky))
    }
}

/// A file with the digest asked for (``Results.find_by_hash``): ``job``, ``run``, ``path``.
///
/// >>> import citron, hashlib
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
/// ...     with c.results.open_run("build") as run:
/// ...         _ = run.upload("out/a.bin", b"abc")
/// ...     [(h.job, h.path) for h in c.results.find_by_hash(hashlib.sha256(b"abc").hexdigest())]
/// [('build', 'out/a.bin')]
#[pyclass(frozen, get_all, eq, module = "citron")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashHit {
    /// The job.
    pub job: String,
    /// The run's id.
    pub run: i64,
    /// The file's path in the run.
    pub path: String,
}

#[pymethods]
impl HashHit {
    fn __repr__(&self) -> String {
        format!("HashHit(job={:?}, run={}, path={:?})", self.job, self.run, self.path)
    }
}

/// A token just minted: ``token`` (the bearer secret), ``id`` (what ``tokens.revoke`` takes)
/// and ``expires_at`` (Unix seconds).
///
/// >>> import citron
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
/// ...     t = c.tokens.mint(["read"], "build", ttl=600.0)
/// ...     print(len(t.id) > 0, "token" not in repr(t))
/// True True
#[pyclass(frozen, get_all, eq, module = "citron")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The bearer token.
    pub token: String,
    /// Its id.
    pub id: String,
    /// Unix seconds.
    pub expires_at: u64,
}

#[pymethods]
impl Token {
    fn __repr__(&self) -> String {
        // The secret stays out of logs and tracebacks.
        format!("Token(id={:?}, expires_at={})", self.id, self.expires_at)
    }
}

/// A tenant just added, with its first token (every scope but ``admin``): ``name``,
/// ``token``, ``id``, ``expires_at``.
///
/// >>> import citron
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
/// ...     print(c.tenants.create("ci").name)
/// ci
#[pyclass(frozen, get_all, eq, module = "citron")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Its name.
    pub name: String,
    /// The bearer token.
    pub token: String,
    /// The token's id.
    pub id: String,
    /// Unix seconds.
    pub expires_at: u64,
}

#[pymethods]
impl Tenant {
    fn __repr__(&self) -> String {
        format!("Tenant(name={:?}, id={:?}, expires_at={})", self.name, self.id, self.expires_at)
    }
}

/// One event of the lab's feed: ``seq`` (its position, the same on every gateway: what
/// ``Last-Event-ID`` resumes after), ``time`` (Unix seconds), ``type`` (``run_finished``,
/// ``job_set``, ``boot``…), ``dut``, ``job``, ``actor``, ``gateway`` and ``detail`` (a dict,
/// or None).
///
/// >>> import citron
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
/// ...     with c.results.open_run("build") as run:
/// ...         pass
/// ...     ev = next(iter(c.events("build", type="run_finished", timeout=10.0)))
/// ...     print(ev.type, ev.job, ev.detail["run"] == run.id, ev.detail["status"])
/// run_finished build True success
#[pyclass(frozen, eq, module = "citron")]
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Its position in the feed: increasing, never reused, the same on every gateway.
    #[pyo3(get)]
    seq: u64,
    /// When it happened, Unix seconds.
    #[pyo3(get)]
    time: f64,
    /// What happened (`run_finished`, `job_set`, `boot`…).
    #[pyo3(get, name = "type")]
    kind: String,
    /// The DUT, if it is about one.
    #[pyo3(get)]
    dut: Option<String>,
    /// The job, if it is about one.
    #[pyo3(get)]
    job: Option<String>,
    /// Who did it.
    #[pyo3(get)]
    actor: Option<String>,
    /// The gateway that recorded it.
    #[pyo3(get)]
    gateway: Option<String>,
    /// The detail as JSON text (made a dict on each read).
    detail: Option<String>,
}

impl From<citron_client::FeedEvent> for Event {
    fn from(e: citron_client::FeedEvent) -> Self {
        Event {
            seq: e.seq,
            time: e.time,
            kind: e.kind,
            dut: e.dut,
            job: e.job,
            actor: e.actor,
            gateway: e.gateway,
            detail: e.detail.map(|d| d.to_string()),
        }
    }
}

#[pymethods]
impl Event {
    /// What else the event says, as a dict (a new one on each read), or None.
    #[getter]
    fn detail<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.detail.as_ref().map(|d| py.import("json")?.call_method1("loads", (d,))).transpose()
    }

    fn __repr__(&self) -> String {
        format!("Event(seq={}, type={:?}, job={})", self.seq, self.kind, py_opt(&self.job))
    }
}

fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

fn py_opt(s: &Option<String>) -> String {
    s.as_ref().map(|s| format!("{s:?}")).unwrap_or_else(|| "None".into())
}

/// One DUT of an allocated reservation: ``id``, ``kind`` (``"baremetal"`` or ``"vm"``),
/// ``arch``, ``model``, ``tags``, ``mac``, ``ip`` (its addresses), ``gateway`` (the gateway
/// that serves it), and where its job is set (``job_url``), its access log (``accesses_url``)
/// and its events (``events_url``) are read, with the reservation's token.
///
/// >>> import citron
/// >>> lab = citron.Lab.from_yaml("duts:\n  - {id: d1, ip: [127.0.0.21], arch: x86_64, tags: [x]}\n")
/// >>> with citron.Server(lab, http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
/// ...     with c.reserve(tags=["x"], wait=10.0) as duts:
/// ...         d = duts[0]
/// ...         print(d.id, d.kind, d.arch, d.ip, d.job_url)
/// d1 baremetal x86_64 ['127.0.0.21'] /api/v1/duts/d1/job
#[pyclass(frozen, get_all, eq, module = "citron")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocatedDut {
    /// Its id.
    pub id: String,
    /// `baremetal` or `vm`.
    pub kind: String,
    /// Its architecture.
    pub arch: Option<String>,
    /// Its model.
    pub model: Option<String>,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its MAC address.
    pub mac: Option<String>,
    /// Its addresses.
    pub ip: Vec<String>,
    /// The gateway that serves it.
    pub gateway: Option<String>,
    /// Where its job is set.
    pub job_url: String,
    /// Where its access log is read.
    pub accesses_url: String,
    /// Where its events are read.
    pub events_url: String,
}

impl From<citron_client::AllocatedDut> for AllocatedDut {
    fn from(d: citron_client::AllocatedDut) -> Self {
        let a = d.dut;
        AllocatedDut {
            id: a.id,
            kind: a.kind.name().to_string(),
            arch: a.arch,
            model: a.model,
            tags: a.tags,
            mac: a.mac,
            ip: a.ip.iter().map(ToString::to_string).collect(),
            gateway: a.gateway,
            job_url: d.job_url,
            accesses_url: d.accesses_url,
            events_url: d.events_url,
        }
    }
}

#[pymethods]
impl AllocatedDut {
    fn __repr__(&self) -> String {
        format!("AllocatedDut(id={:?}, kind={:?}, ip={:?})", self.id, self.kind, self.ip)
    }
}

/// A reservation of the DUT pool: ``id``, ``tenant``, ``state`` (``"waiting"``,
/// ``"allocated"``, ``"released"``, ``"expired"``, ``"failed"``), what was asked (``tags``,
/// ``kind``, ``arch``, ``model``, ``count``, ``priority``, ``lifetime`` in seconds), when
/// (``created_at``, ``allocated_at``, ``expires_at``, ``ended_at``, ``keep_until``: Unix
/// seconds), ``duts`` (:class:`AllocatedDut`, once allocated), ``token`` (a ``dut``-scope
/// token on exactly those DUTs while it holds them) and ``reason`` (why it ended).
///
/// It is also the sequence of its DUTs: ``len(r)``, ``r[0]``, ``for dut in r``.
///
/// >>> import citron
/// >>> lab = citron.Lab.from_yaml("duts:\n  - {id: d1, ip: [127.0.0.21], tags: [x]}\n")
/// >>> with citron.Server(lab, http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
/// ...     r = c.pool.request(tags=["x"], lifetime=600.0)
/// ...     print(r.state, r.lifetime, [d.id for d in r], r.token is not None)
/// ...     print(c.pool.release(r).state)
/// allocated 600.0 ['d1'] True
/// released
#[pyclass(frozen, get_all, eq, module = "citron")]
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    /// Its id.
    pub id: i64,
    /// Its tenant (None: the lab's own).
    pub tenant: Option<String>,
    /// Where it stands.
    pub state: String,
    /// Tags asked for.
    pub tags: Vec<String>,
    /// Kind asked for.
    pub kind: Option<String>,
    /// Arch asked for.
    pub arch: Option<String>,
    /// Model asked for.
    pub model: Option<String>,
    /// How many DUTs.
    pub count: u32,
    /// Its place in the queue (after the tenant's cap).
    pub priority: i64,
    /// How long it holds its DUTs once allocated, seconds.
    pub lifetime: f64,
    /// Unix seconds.
    pub created_at: f64,
    /// Unix seconds.
    pub allocated_at: Option<f64>,
    /// Unix seconds.
    pub expires_at: Option<f64>,
    /// Unix seconds.
    pub ended_at: Option<f64>,
    /// Unix seconds.
    pub keep_until: Option<f64>,
    /// Its DUTs.
    pub duts: Vec<AllocatedDut>,
    /// The `dut`-scope token on its DUTs.
    pub token: Option<String>,
    /// Why it ended, or went back to the queue.
    pub reason: Option<String>,
}

impl From<citron_client::Reservation> for Reservation {
    fn from(r: citron_client::Reservation) -> Self {
        Reservation {
            id: r.id,
            tenant: r.tenant,
            state: r.state,
            tags: r.tags,
            kind: r.kind,
            arch: r.arch,
            model: r.model,
            count: r.count,
            priority: r.priority,
            lifetime: r.lifetime as f64,
            created_at: r.created_at,
            allocated_at: r.allocated_at,
            expires_at: r.expires_at,
            ended_at: r.ended_at,
            keep_until: r.keep_until,
            duts: r.duts.into_iter().map(AllocatedDut::from).collect(),
            token: r.token,
            reason: r.reason,
        }
    }
}

#[pymethods]
impl Reservation {
    fn __len__(&self) -> usize {
        self.duts.len()
    }

    fn __getitem__(&self, i: isize) -> PyResult<AllocatedDut> {
        let n = self.duts.len() as isize;
        let at = if i < 0 { i + n } else { i };
        usize::try_from(at)
            .ok()
            .and_then(|at| self.duts.get(at))
            .cloned()
            .ok_or_else(|| pyo3::exceptions::PyIndexError::new_err(format!("the reservation has {n} DUTs, not index {i}")))
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyIterator>> {
        pyo3::types::PyList::new(py, self.duts.clone())?.try_iter()
    }

    fn __repr__(&self) -> String {
        // The token stays out of logs and tracebacks.
        let duts: Vec<&str> = self.duts.iter().map(|d| d.id.as_str()).collect();
        format!("Reservation(id={}, state={:?}, duts={:?})", self.id, self.state, duts)
    }
}

/// A DUT of the pool as the administrator sees it (``client.pool.duts()``): what it is
/// (``id``, ``kind``, ``arch``, ``model``, ``tags``, ``mac``, ``ip``, ``gateway``), its
/// ``state`` (``"free"``, ``"starting"``, ``"allocated"``, ``"recycling"``, ``"kept"``,
/// ``"quarantined"``, ``"disabled"``), the ``reservation`` holding it, ``uses`` (how often it
/// was given), and for a quarantined or disabled one ``reason`` and ``output`` (what its
/// failed power command printed).
///
/// >>> import citron
/// >>> lab = citron.Lab.from_yaml("duts:\n  - {id: d1, ip: [127.0.0.21]}\n")
/// >>> with citron.Server(lab, http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
/// ...     print([(d.id, d.state) for d in c.pool.duts()], c.pool.disable("d1").state)
/// [('d1', 'free')] disabled
#[pyclass(frozen, get_all, eq, module = "citron")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolDut {
    /// Its id.
    pub id: String,
    /// `baremetal` or `vm`.
    pub kind: String,
    /// Its architecture.
    pub arch: Option<String>,
    /// Its model.
    pub model: Option<String>,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its MAC address.
    pub mac: Option<String>,
    /// Its addresses.
    pub ip: Vec<String>,
    /// The gateway that serves it.
    pub gateway: Option<String>,
    /// Its pool state.
    pub state: String,
    /// The reservation holding it.
    pub reservation: Option<i64>,
    /// How often it was given.
    pub uses: i64,
    /// Why it is quarantined or disabled.
    pub reason: Option<String>,
    /// What its failed power command printed.
    pub output: Option<String>,
}

impl From<citron_client::PoolDut> for PoolDut {
    fn from(d: citron_client::PoolDut) -> Self {
        let a = d.dut;
        PoolDut {
            id: a.id,
            kind: a.kind.name().to_string(),
            arch: a.arch,
            model: a.model,
            tags: a.tags,
            mac: a.mac,
            ip: a.ip.iter().map(ToString::to_string).collect(),
            gateway: a.gateway,
            state: d.state,
            reservation: d.reservation,
            uses: d.uses,
            reason: d.reason,
            output: d.output,
        }
    }
}

#[pymethods]
impl PoolDut {
    fn __repr__(&self) -> String {
        format!("PoolDut(id={:?}, state={:?}, uses={})", self.id, self.state, self.uses)
    }
}

/// A job's retention (``client.results.retention``): the files of the newest ``keep_last``
/// finished runs, and of runs finished less than ``ttl`` seconds ago, are kept (None: no
/// such bound).
///
/// >>> import citron
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
/// ...     _ = c.results.open_run("build").finish()
/// ...     print(c.results.set_retention("build", ttl=7 * 86400.0))
/// Retention(keep_last=None, ttl=604800.0)
#[pyclass(frozen, get_all, eq, module = "citron")]
#[derive(Debug, Clone, PartialEq)]
pub struct Retention {
    /// The newest N finished runs keep their files.
    pub keep_last: Option<u64>,
    /// Runs finished less than this many seconds ago keep their files.
    pub ttl: Option<f64>,
}

impl From<citron_client::Retention> for Retention {
    fn from(r: citron_client::Retention) -> Self {
        Retention { keep_last: r.keep_last, ttl: r.ttl_secs.map(|s| s as f64) }
    }
}

#[pymethods]
impl Retention {
    fn __repr__(&self) -> String {
        let keep = self.keep_last.map_or("None".to_string(), |k| k.to_string());
        let ttl = self.ttl.map_or("None".to_string(), |t| format!("{t:?}"));
        format!("Retention(keep_last={keep}, ttl={ttl})")
    }
}
