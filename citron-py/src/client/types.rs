//! What the results API answers, as Python classes: `Run`, `ResultFile`, `HashHit`, `Token`,
//! `Tenant`, `Event`.
//!
//! They are pyo3 classes made from the API's own Rust types (`citron_lab::results::Run`, the
//! feed's `FeedEvent`), not dataclasses written again in Python: one definition is what the
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
