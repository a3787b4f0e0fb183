//! `citron.Client`: a remote citron's API from Python, every route of it (results, the pool,
//! DUTs and jobs, tenants, tokens, the event feed, the lab's version, health and metrics), on
//! the shared Rust client `citron_client`.
//!
//! The object owns a small tokio runtime and one connection pool; every call releases the GIL
//! while it waits and gives way to Ctrl-C. `close()` (or the end of a `with` block) drops both.
//!
//! - `results.rs`: `client.results` (`Results`, `OpenRun`, `Latest`); `runs.rs`: the `runs`
//!   and `watch` iterators.
//! - `lab.rs`: `client.duts` (`Duts`, the `accesses` iterator) and the lab's own answers
//!   (`Dut`, `DutJob`, `Version`).
//! - `pool.rs`: `client.pool` (`Pool`, the `list` iterator) and `client.reserve(...)`
//!   (`Reserve`, DUTs held for a `with` block).
//! - `types.rs`: what the API answers (`Run`, `ResultFile`, `HashHit`, `Token`, `Tenant`,
//!   `Event`, `Reservation`, `AllocatedDut`, `PoolDut`), shared with the in-process
//!   `citron.Server`.

pub(crate) mod lab;
pub(crate) mod pool;
pub(crate) mod results;
pub(crate) mod runs;
pub(crate) mod types;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use citron_client::{duration_text, EventQuery, NewToken, TokenSubset};
use parking_lot::Mutex;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use tokio::runtime::Runtime;

use crate::errors::Error;
use crate::server::interruptible;
use types::{Event, Tenant, Token};

/// The environment variable naming the server when `url` is not given.
const SERVER_ENV: &str = "CITRON_SERVER";
/// The environment variable holding the token when neither `token` nor `token_file` is given.
const TOKEN_ENV: &str = "CITRON_TOKEN";

/// The connection every object of one client shares: the Rust client and the runtime it runs
/// on (None once closed).
pub(crate) struct Conn {
    pub(crate) client: citron_client::Client,
    rt: Mutex<Option<Arc<Runtime>>>,
}

impl Conn {
    pub(crate) fn rt(&self) -> Result<Arc<Runtime>, Error> {
        self.rt.lock().clone().ok_or_else(|| Error::Closed)
    }

    /// Runs `fut` with the GIL released, Ctrl-C interrupting it; its error becomes the
    /// matching exception.
    pub(crate) fn block<T: Send>(
        &self,
        py: Python<'_>,
        fut: impl Future<Output = Result<T, citron_client::ClientError>> + Send,
    ) -> PyResult<T> {
        let rt = self.rt()?;
        Ok(interruptible(py, &rt, fut)?.map_err(Error::Client)?)
    }

    fn close(&self) {
        if let Some(rt) = self.rt.lock().take() {
            // The last holder shuts it down; readers in flight keep theirs until they return.
            if let Ok(rt) = Arc::try_unwrap(rt) {
                rt.shutdown_background();
            }
        }
    }
}

/// A Python float of seconds as a `Duration` (positive and finite).
pub(crate) fn seconds(what: &str, s: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| PyValueError::new_err(format!("{what} must be a positive number of seconds, not {s}")))
}

/// The server and token of a client: `url` or `$CITRON_SERVER`; `token`, else `token_file`'s
/// content, else `$CITRON_TOKEN`.
pub(crate) fn settings(url: Option<String>, token: Option<String>, token_file: Option<PathBuf>) -> PyResult<(String, Option<String>)> {
    let url = match url.or_else(|| std::env::var(SERVER_ENV).ok().filter(|s| !s.is_empty())) {
        Some(u) => u,
        None => return Err(PyValueError::new_err(format!("no server: give Client(url) or set ${SERVER_ENV}"))),
    };
    let token = match (token, token_file) {
        (Some(_), Some(_)) => return Err(PyValueError::new_err("give token or token_file, not both")),
        (Some(t), None) => Some(t.trim().to_string()),
        (None, Some(f)) => Some(citron_client::Client::token_from_file(&f).map_err(Error::Client)?),
        (None, None) => std::env::var(TOKEN_ENV).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()),
    };
    Ok((url, token))
}

/// A client of a remote citron's API: ``Client(url=None, token=None, *, token_file=None,
/// timeout=60.0)``.
///
/// ``url`` is the API's address (``http://host:port``; ``$CITRON_SERVER`` when None); the
/// token is ``token``, else the content of ``token_file``, else ``$CITRON_TOKEN`` (the lab's
/// ``api_token`` or one it minted). ``timeout`` is how long, in seconds, the server may stay
/// silent in an answer. Use it as a context manager, or call :meth:`close`, to close its
/// connections.
///
/// ``results`` uploads and reads results, ``tenants`` and ``tokens`` hand out access (the
/// administrator's calls), :meth:`events` reads the lab's event feed. Refusals raise
/// :class:`ApiError` with ``status`` and ``message`` (:class:`AuthError` for 401/403,
/// :class:`NotFoundError` for 404, :class:`ConflictError` for 409); a server that cannot be
/// reached raises :class:`UnreachableError`; a download that does not match its digest
/// :class:`FetchError`.
///
/// >>> import citron
/// >>> with citron.Client("http://127.0.0.1:9", token="t") as c:   # nothing listens on port 9
/// ...     try:
/// ...         c.results.find_by_hash("00" * 32)
/// ...     except citron.UnreachableError:
/// ...         print("unreachable")
/// unreachable
#[pyclass(frozen, module = "citron")]
pub struct Client {
    conn: Arc<Conn>,
}

impl Client {
    /// A client of `url` with `token` (used by `Server.client()`).
    pub(crate) fn open(url: &str, token: Option<String>, timeout: Duration) -> PyResult<Client> {
        let client = citron_client::Client::with_read_timeout(url, token, timeout).map_err(Error::Client)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("citron-client")
            .enable_all()
            .build()
            .map_err(|e| Error::Server(format!("cannot start the tokio runtime: {e}")))?;
        Ok(Client { conn: Arc::new(Conn { client, rt: Mutex::new(Some(Arc::new(rt))) }) })
    }
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (url = None, token = None, *, token_file = None, timeout = 60.0))]
    fn new(url: Option<String>, token: Option<String>, token_file: Option<PathBuf>, timeout: f64) -> PyResult<Client> {
        let (url, token) = settings(url, token, token_file)?;
        Client::open(&url, token, seconds("timeout", timeout)?)
    }

    /// The server's address.
    #[getter]
    fn url(&self) -> String {
        self.conn.client.server().to_string()
    }

    /// Runs, files, ``latest``, by-hash and ``watch``: see :class:`Results`.
    #[getter]
    fn results(&self) -> results::Results {
        results::Results { conn: self.conn.clone() }
    }

    /// The DUT pool: reservations and the pool's DUTs; see :class:`Pool`.
    #[getter]
    fn pool(&self) -> pool::Pool {
        pool::Pool { conn: self.conn.clone() }
    }

    /// DUTs for a ``with`` block: ``with client.reserve(tags=["x86_64"], count=2, wait=600)
    /// as duts:`` asks for ``count`` DUTs (the arguments of :meth:`Pool.request`), waits at
    /// most ``wait`` seconds until they are allocated (:class:`ReservationTimeout` after
    /// that, the request withdrawn), and answers the :class:`Reservation`, which is the
    /// sequence of its DUTs and has the ``token`` that drives them; the reservation is
    /// released when the block ends, also when it raised. See :class:`Reserve`.
    ///
    /// >>> import citron
    /// >>> lab = citron.Lab.from_yaml("duts:\n  - {id: d1, ip: [127.0.0.21], arch: x86_64}\n  - {id: d2, ip: [127.0.0.22], arch: x86_64}\n")
    /// >>> with citron.Server(lab, http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     with c.reserve(arch="x86_64", count=2, wait=600) as duts:
    /// ...         print(len(duts), sorted(d.id for d in duts), duts.state)
    /// ...     print(c.pool.get(duts).state)
    /// 2 ['d1', 'd2'] allocated
    /// released
    #[pyo3(signature = (tags = Vec::new(), *, kind = None, arch = None, model = None, count = 1, lifetime = None, priority = 0, job = None, wait = 600.0))]
    #[allow(clippy::too_many_arguments)] // the REST body's fields, as Python keywords
    fn reserve(
        &self,
        tags: Vec<String>,
        kind: Option<String>,
        arch: Option<String>,
        model: Option<String>,
        count: u32,
        lifetime: Option<f64>,
        priority: i64,
        job: Option<String>,
        wait: f64,
    ) -> PyResult<pool::Reserve> {
        let ask = pool::Ask { tags, kind, arch, model, count, lifetime, priority, job };
        // Checked now, so that a bad argument fails at the call, not at `with`.
        ask.clone().request()?;
        let wait = Duration::try_from_secs_f64(wait)
            .map_err(|_| PyValueError::new_err(format!("wait must be a number of seconds >= 0, not {wait}")))?;
        Ok(pool::Reserve { conn: self.conn.clone(), ask, wait, held: Mutex::new(None) })
    }

    /// The lab's DUTs, their jobs, events and access logs: see :class:`Duts`.
    #[getter]
    fn duts(&self) -> lab::Duts {
        lab::Duts { conn: self.conn.clone() }
    }

    /// citron's version and its state store's: a :class:`Version`.
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     print(c.version().version == citron.__version__)
    /// True
    fn version(&self, py: Python<'_>) -> PyResult<lab::Version> {
        Ok(self.conn.block(py, self.conn.client.version())?.into())
    }

    /// Whether citron answers (``/api/v1/health``, no token needed).
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     print(c.health())
    /// True
    fn health(&self, py: Python<'_>) -> PyResult<bool> {
        self.conn.block(py, self.conn.client.health())
    }

    /// Whether the jobs citron was started with are loaded (``/api/v1/ready``; False before).
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     print(c.ready())
    /// True
    fn ready(&self, py: Python<'_>) -> PyResult<bool> {
        self.conn.block(py, self.conn.client.ready())
    }

    /// The lab's metrics, OpenMetrics text (``/metrics``).
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     print("citron_build_info" in c.metrics())
    /// True
    fn metrics(&self, py: Python<'_>) -> PyResult<String> {
        self.conn.block(py, self.conn.client.metrics())
    }

    /// The API's OpenAPI 3.1 document, as a dict: every route, what it takes and answers.
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     print(c.openapi()["paths"]["/api/v1/reservations"]["post"]["operationId"])
    /// requestDuts
    fn openapi<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let v = self.conn.block(py, self.conn.client.openapi())?;
        py.import("json")?.call_method1("loads", (v.to_string(),))
    }

    /// Adding tenants (administrator only): see :class:`Tenants`.
    #[getter]
    fn tenants(&self) -> Tenants {
        Tenants { conn: self.conn.clone() }
    }

    /// Minting, narrowing and revoking tokens: see :class:`Tokens`.
    #[getter]
    fn tokens(&self) -> Tokens {
        Tokens { conn: self.conn.clone() }
    }

    /// The lab's event feed (the administrator's), oldest first from ``after`` (an event's
    /// ``seq``; 0: every stored event), only ``job``'s, ``dut``'s or of ``type`` when given:
    /// an iterator of :class:`Event` that waits for new events, reconnecting with
    /// ``Last-Event-ID`` after a cut. It ends when ``timeout`` seconds pass without an event
    /// (None: never; Ctrl-C interrupts).
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     with c.results.open_run("build") as run:
    /// ...         pass
    /// ...     print([(e.type, e.job) for e in c.events("build", type="run_finished", timeout=1.0)])
    /// [('run_finished', 'build')]
    #[pyo3(signature = (job = None, *, dut = None, r#type = None, after = 0, timeout = None))]
    fn events(
        &self,
        job: Option<String>,
        dut: Option<String>,
        r#type: Option<String>,
        after: u64,
        timeout: Option<f64>,
    ) -> PyResult<Events> {
        let timeout = timeout.map(|t| seconds("timeout", t)).transpose()?;
        let reader = self.conn.client.events(EventQuery { job, dut, kind: r#type }, after);
        Ok(Events { conn: self.conn.clone(), reader: Mutex::new(reader), timeout })
    }

    /// Closes the connections; later calls raise :class:`CitronError`. Calling it again does
    /// nothing.
    ///
    /// >>> import citron
    /// >>> c = citron.Client("http://127.0.0.1:9")
    /// >>> c.close(); c.close()
    /// >>> try:
    /// ...     c.results.find_by_hash("00" * 32)
    /// ... except citron.CitronError as e:
    /// ...     print(e)
    /// the client is closed
    fn close(&self) {
        self.conn.close();
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (_exc_type = None, _exc = None, _tb = None))]
    fn __exit__(&self, _exc_type: Option<Bound<'_, PyAny>>, _exc: Option<Bound<'_, PyAny>>, _tb: Option<Bound<'_, PyAny>>) -> bool {
        self.close();
        false
    }

    fn __repr__(&self) -> String {
        format!("Client({:?})", self.conn.client.server())
    }
}

/// ``client.tenants``: ``create(name, ttl=None)`` (administrator only).
///
/// >>> import citron
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
/// ...     ci = c.tenants.create("ci")
/// ...     with citron.Client(c.url, token=ci.token) as as_ci:
/// ...         print(as_ci.results.open_run("build").run.status)
/// running
#[pyclass(frozen, module = "citron")]
pub struct Tenants {
    conn: Arc<Conn>,
}

#[pymethods]
impl Tenants {
    /// Adds tenant ``name`` and answers it with its first token (every scope but ``admin``,
    /// living ``ttl`` seconds; 90 days when None). Raises :class:`ConflictError` if it exists.
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     _ = c.tenants.create("ci", ttl=3600.0)
    /// ...     try:
    /// ...         c.tenants.create("ci")
    /// ...     except citron.ConflictError as e:
    /// ...         print(e.status)
    /// 409
    #[pyo3(signature = (name, ttl = None))]
    fn create(&self, py: Python<'_>, name: &str, ttl: Option<f64>) -> PyResult<Tenant> {
        let ttl = ttl.map(|t| seconds("ttl", t)).transpose()?;
        let t = self.conn.block(py, self.conn.client.add_tenant(name, ttl))?;
        Ok(Tenant { name: t.name, token: t.token, id: t.id, expires_at: t.expires_at })
    }
}

/// ``client.tokens``: ``mint`` (administrator only), ``subset`` (narrows the client's own
/// token), ``revoke``.
///
/// >>> import citron
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
/// ...     t = c.tokens.mint(["read"], "build", ttl=60.0)
/// ...     c.tokens.revoke(t)
#[pyclass(frozen, module = "citron")]
pub struct Tokens {
    conn: Arc<Conn>,
}

pub(crate) fn token(t: citron_client::Token) -> Token {
    Token { token: t.token, id: t.id, expires_at: t.expires_at }
}

/// `revoke(id)`: an id or the `Token` itself.
#[derive(FromPyObject)]
pub(crate) enum TokenArg<'py> {
    Token(PyRef<'py, Token>),
    Id(String),
}

impl TokenArg<'_> {
    /// The token's id.
    pub(crate) fn id(&self) -> String {
        match self {
            TokenArg::Token(t) => t.id.clone(),
            TokenArg::Id(s) => s.clone(),
        }
    }
}

#[pymethods]
impl Tokens {
    /// Mints a token with ``scopes`` (``"upload"``, ``"read"``, ``"reserve"``, ``"dut"``,
    /// ``"admin"``) for ``job`` (a name, ``prefix*`` or ``*``), living ``ttl`` seconds (an
    /// hour when None); for ``tenant``'s jobs (None: the lab's own), only ``run``, driving the
    /// DUTs ``dut`` matches.
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     t = c.tokens.mint(["upload"], "build-*", ttl=600.0)
    /// ...     with citron.Client(c.url, token=t.token) as ci:
    /// ...         print(ci.results.open_run("build-arm").job)
    /// build-arm
    #[pyo3(signature = (scopes, job, ttl = None, *, tenant = None, run = None, dut = None))]
    #[allow(clippy::too_many_arguments)] // the REST body's fields, as Python keywords
    fn mint(
        &self,
        py: Python<'_>,
        scopes: Vec<String>,
        job: String,
        ttl: Option<f64>,
        tenant: Option<String>,
        run: Option<i64>,
        dut: Option<String>,
    ) -> PyResult<Token> {
        let ttl = ttl.map(|t| seconds("ttl", t).map(duration_text)).transpose()?;
        let nt = NewToken { scopes, job, ttl, tenant, run, dut };
        Ok(token(self.conn.block(py, self.conn.client.mint_token(&nt))?))
    }

    /// A token narrower than the client's own: each argument None keeps the token's own;
    /// none may be wider or longer (:class:`AuthError` otherwise).
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     t = c.tokens.mint(["read", "upload"], "build", ttl=600.0)
    /// ...     with citron.Client(c.url, token=t.token) as ci:
    /// ...         narrow = ci.tokens.subset(scopes=["read"], ttl=60.0)
    /// ...         try:
    /// ...             ci.tokens.subset(scopes=["admin"])
    /// ...         except citron.AuthError as e:
    /// ...             print(e.status)
    /// 403
    #[pyo3(signature = (*, scopes = None, job = None, ttl = None, run = None, dut = None))]
    fn subset(
        &self,
        py: Python<'_>,
        scopes: Option<Vec<String>>,
        job: Option<String>,
        ttl: Option<f64>,
        run: Option<i64>,
        dut: Option<String>,
    ) -> PyResult<Token> {
        let ttl = ttl.map(|t| seconds("ttl", t).map(duration_text)).transpose()?;
        let s = TokenSubset { scopes, job, ttl, run, dut };
        Ok(token(self.conn.block(py, self.conn.client.subset_token(&s))?))
    }

    /// Revokes a token (its id, or the :class:`Token`): every gateway refuses it from now on.
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     t = c.tokens.mint(["upload"], "build", ttl=600.0)
    /// ...     c.tokens.revoke(t.id)
    /// ...     try:
    /// ...         citron.Client(c.url, token=t.token).results.open_run("build")
    /// ...     except citron.AuthError as e:
    /// ...         print(e.status, "revoked" in e.message)
    /// 401 True
    fn revoke(&self, py: Python<'_>, token: TokenArg<'_>) -> PyResult<()> {
        self.conn.block(py, self.conn.client.revoke_token(&token.id()))
    }
}

/// An iterator over the lab's event feed (:meth:`Client.events`).
///
/// >>> import citron
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
/// ...     first = c.results.open_run("build"); _ = first.finish()
/// ...     events = c.events("build", type="run_finished", timeout=1.0)
/// ...     seen = next(events)
/// ...     second = c.results.open_run("build"); _ = second.finish()
/// ...     # Later, elsewhere: go on after the last event seen.
/// ...     rest = c.events("build", type="run_finished", after=events.last_event_id, timeout=1.0)
/// ...     print(seen.detail["run"] == first.id, [e.detail["run"] == second.id for e in rest])
/// True [True]
#[pyclass(frozen, module = "citron")]
pub struct Events {
    conn: Arc<Conn>,
    reader: Mutex<citron_client::Events>,
    timeout: Option<Duration>,
}

/// The lock of an iterator's state; taken by another thread means two threads iterate at
/// once, which is refused rather than waited for (the waiter would hold the GIL the other
/// needs).
pub(crate) fn exclusive<T>(m: &Mutex<T>) -> PyResult<parking_lot::MutexGuard<'_, T>> {
    m.try_lock().ok_or_else(|| pyo3::exceptions::PyRuntimeError::new_err("another thread is reading this iterator"))
}

/// The next item of `reader`, or None when `timeout` passed first.
pub(crate) async fn next_within(
    reader: &mut citron_client::Events,
    timeout: Option<Duration>,
) -> Result<Option<citron_client::FeedEvent>, citron_client::ClientError> {
    match timeout {
        None => reader.next().await.map(Some),
        Some(t) => match tokio::time::timeout(t, reader.next()).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        },
    }
}

#[pymethods]
impl Events {
    /// The ``seq`` of the last event returned: ``Client.events(after=...)`` goes on from here.
    #[getter]
    fn last_event_id(&self) -> PyResult<u64> {
        Ok(exclusive(&self.reader)?.last_event_id())
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Event>> {
        let mut reader = exclusive(&self.reader)?;
        Ok(self.conn.block(py, next_within(&mut reader, self.timeout))?.map(Event::from))
    }
}
