//! `citron.AsyncClient`: the same surface as `citron.Client`, for asyncio.
//!
//! A real bridge, not threads: each call is the shared Rust client's future, run on
//! pyo3-async-runtimes' tokio runtime and handed to the running asyncio loop as an awaitable
//! (`future_into_py`). Nothing blocks the loop and no thread waits per call; cancelling the
//! asyncio task drops the Rust future, which closes its request. Answers are the classes of
//! the blocking client (`Run`, `Reservation`…); the objects that hold the connection have
//! `Async` twins (`AsyncResults`, `AsyncOpenRun`, `AsyncPool`…) whose methods are coroutines,
//! with `async with` and `async for` where the blocking ones have `with` and `for`.
//!
//! - `results.rs`: `AsyncResults`, `AsyncOpenRun`, `AsyncLatest`; `runs.rs`: the `runs` and
//!   `watch` async iterators.
//! - `pool.rs`: `AsyncPool`, its `list` async iterator, `AsyncReserve` (`async with
//!   client.reserve(...)`).
//! - `lab.rs`: `AsyncDuts` and its `accesses` async iterator.

pub(crate) mod lab;
pub(crate) mod pool;
pub(crate) mod results;
pub(crate) mod runs;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use citron_client::{duration_text, ClientError, EventQuery, NewToken, TokenSubset};
use pyo3::exceptions::{PyStopAsyncIteration, PyValueError};
use pyo3::prelude::*;

use crate::client::types::{Event, Tenant};
use crate::client::{next_within, seconds, token, TokenArg};
use crate::errors::Error;

/// What every object of one async client shares: the Rust client, and whether it was closed.
pub(crate) struct AConn {
    client: citron_client::Client,
    closed: AtomicBool,
}

impl AConn {
    /// The client, or the error of a closed one.
    pub(crate) fn client(&self) -> PyResult<citron_client::Client> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(Error::Closed.into());
        }
        Ok(self.client.clone())
    }
}

/// `fut` as a Python awaitable; its error becomes the matching exception.
pub(crate) fn awaitable<'py, T>(
    py: Python<'py>,
    fut: impl Future<Output = Result<T, ClientError>> + Send + 'static,
) -> PyResult<Bound<'py, PyAny>>
where
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    pyo3_async_runtimes::tokio::future_into_py(py, async move { fut.await.map_err(|e| PyErr::from(Error::Client(e))) })
}

/// `fut` (already in Python terms) as a Python awaitable.
pub(crate) fn awaitable_py<'py, T>(py: Python<'py>, fut: impl Future<Output = PyResult<T>> + Send + 'static) -> PyResult<Bound<'py, PyAny>>
where
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    pyo3_async_runtimes::tokio::future_into_py(py, fut)
}

/// The end of an async iterator.
pub(crate) fn stop() -> PyErr {
    PyStopAsyncIteration::new_err(())
}

/// The asyncio client of a remote citron's API: ``AsyncClient(url=None, token=None, *,
/// token_file=None, timeout=60.0)``, the arguments of :class:`Client`.
///
/// The same surface as :class:`Client`, with coroutines: ``await client.pool.request()``,
/// ``async with client.reserve(...) as duts:``, ``async for ev in client.events()``,
/// ``async with await client.results.open_run("build") as run:``. Use it as an async context
/// manager, or call :meth:`close`.
///
/// >>> import asyncio, citron
/// >>> async def main(url: str) -> None:
/// ...     async with citron.AsyncClient(url) as c:
/// ...         async with await c.results.open_run("build") as run:
/// ...             _ = await run.upload("a.txt", b"abc")
/// ...         print((await c.results.latest("build")).status, await c.results.read_latest("build", "a.txt"))
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as sync:
/// ...     asyncio.run(main(sync.url))
/// success b'abc'
#[pyclass(frozen, module = "citron")]
pub struct AsyncClient {
    conn: Arc<AConn>,
}

impl AsyncClient {
    /// A client of `url` with `token` (used by `Server.async_client()`).
    pub(crate) fn open(url: &str, token: Option<String>, timeout: Duration) -> PyResult<AsyncClient> {
        let client = citron_client::Client::with_read_timeout(url, token, timeout).map_err(Error::Client)?;
        Ok(AsyncClient { conn: Arc::new(AConn { client, closed: AtomicBool::new(false) }) })
    }
}

#[pymethods]
impl AsyncClient {
    #[new]
    #[pyo3(signature = (url = None, token = None, *, token_file = None, timeout = 60.0))]
    fn new(url: Option<String>, token: Option<String>, token_file: Option<PathBuf>, timeout: f64) -> PyResult<AsyncClient> {
        let (url, token) = crate::client::settings(url, token, token_file)?;
        AsyncClient::open(&url, token, seconds("timeout", timeout)?)
    }

    /// The server's address.
    #[getter]
    fn url(&self) -> String {
        self.conn.client.server().to_string()
    }

    /// Runs, files, ``latest``, by-hash and ``watch``: see :class:`AsyncResults`.
    #[getter]
    fn results(&self) -> results::AsyncResults {
        results::AsyncResults { conn: self.conn.clone() }
    }

    /// The DUT pool: see :class:`AsyncPool`.
    #[getter]
    fn pool(&self) -> pool::AsyncPool {
        pool::AsyncPool { conn: self.conn.clone() }
    }

    /// The lab's DUTs: see :class:`AsyncDuts`.
    #[getter]
    fn duts(&self) -> lab::AsyncDuts {
        lab::AsyncDuts { conn: self.conn.clone() }
    }

    /// Adding tenants: see :class:`AsyncTenants`.
    #[getter]
    fn tenants(&self) -> AsyncTenants {
        AsyncTenants { conn: self.conn.clone() }
    }

    /// Minting, narrowing and revoking tokens: see :class:`AsyncTokens`.
    #[getter]
    fn tokens(&self) -> AsyncTokens {
        AsyncTokens { conn: self.conn.clone() }
    }

    /// DUTs for an ``async with`` block (:meth:`Client.reserve`'s arguments): allocated on
    /// entry (waiting at most ``wait`` seconds, :class:`ReservationTimeout` after that),
    /// released on exit, also when the block raised.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     async with c.reserve(tags=["x"], wait=10.0) as duts:
    /// ...         print([d.id for d in duts])
    /// ...     print((await c.pool.get(duts.id)).state)
    /// >>> with citron.Server(citron.Lab.from_yaml("duts:\n  - {id: d1, ip: [127.0.0.21], tags: [x]}\n"), http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// ['d1']
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
    ) -> PyResult<pool::AsyncReserve> {
        let ask = crate::client::pool::Ask { tags, kind, arch, model, count, lifetime, priority, job };
        ask.clone().request()?;
        let wait = Duration::try_from_secs_f64(wait)
            .map_err(|_| PyValueError::new_err(format!("wait must be a number of seconds >= 0, not {wait}")))?;
        Ok(pool::AsyncReserve { conn: self.conn.clone(), ask, wait, held: Arc::new(parking_lot::Mutex::new(None)) })
    }

    /// The lab's event feed (:meth:`Client.events`' arguments): an async iterator of
    /// :class:`Event`.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     async with await c.results.open_run("build"):
    /// ...         pass
    /// ...     print([e.type async for e in c.events("build", type="run_finished", timeout=1.0)])
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// ['run_finished']
    #[pyo3(signature = (job = None, *, dut = None, r#type = None, after = 0, timeout = None))]
    fn events(
        &self,
        job: Option<String>,
        dut: Option<String>,
        r#type: Option<String>,
        after: u64,
        timeout: Option<f64>,
    ) -> PyResult<AsyncEvents> {
        let timeout = timeout.map(|t| seconds("timeout", t)).transpose()?;
        let reader = self.conn.client()?.events(EventQuery { job, dut, kind: r#type }, after);
        Ok(AsyncEvents { reader: Arc::new(tokio::sync::Mutex::new(reader)), timeout })
    }

    /// citron's version and its state store's: a :class:`Version`.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     print((await c.version()).version == citron.__version__)
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// True
    fn version<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let c = self.conn.client()?;
        awaitable(py, async move { c.version().await.map(crate::client::lab::Version::from) })
    }

    /// Whether citron answers.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     print(await c.health())
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// True
    fn health<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let c = self.conn.client()?;
        awaitable(py, async move { c.health().await })
    }

    /// Whether the jobs citron was started with are loaded.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     print(await c.ready())
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// True
    fn ready<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let c = self.conn.client()?;
        awaitable(py, async move { c.ready().await })
    }

    /// The lab's metrics, OpenMetrics text.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     print("citron_build_info" in await c.metrics())
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// True
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let c = self.conn.client()?;
        awaitable(py, async move { c.metrics().await })
    }

    /// The API's OpenAPI document, as a dict.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     print((await c.openapi())["info"]["title"])
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// citron lab API
    fn openapi<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let c = self.conn.client()?;
        awaitable_py(py, async move {
            let v = c.openapi().await.map_err(Error::Client)?;
            Python::attach(|py| Ok(py.import("json")?.call_method1("loads", (v.to_string(),))?.unbind()))
        })
    }

    /// Closes the client; later calls raise :class:`CitronError`.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     c.close()
    /// ...     try:
    /// ...         await c.health()
    /// ...     except citron.CitronError as e:
    /// ...         print(e)
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// the client is closed
    fn close(&self) {
        self.conn.closed.store(true, Ordering::Relaxed);
    }

    fn __aenter__<'py>(slf: Py<Self>, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        awaitable_py(py, async move { Ok(slf) })
    }

    #[pyo3(signature = (_exc_type = None, _exc = None, _tb = None))]
    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        _exc_type: Option<Bound<'_, PyAny>>,
        _exc: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.close();
        awaitable_py(py, async move { Ok(false) })
    }

    fn __repr__(&self) -> String {
        format!("AsyncClient({:?})", self.conn.client.server())
    }
}

/// ``client.tenants`` of an :class:`AsyncClient`.
///
/// >>> import asyncio, citron
/// >>> async def main(c: citron.AsyncClient) -> None:
/// ...     print((await c.tenants.create("ci")).name)
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
/// ...     asyncio.run(main(srv.async_client()))
/// ci
#[pyclass(frozen, module = "citron")]
pub struct AsyncTenants {
    conn: Arc<AConn>,
}

#[pymethods]
impl AsyncTenants {
    /// :meth:`Tenants.create`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     t = await c.tenants.create("ci", ttl=3600.0)
    /// ...     print(t.name, t.expires_at > 0)
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// ci True
    #[pyo3(signature = (name, ttl = None))]
    fn create<'py>(&self, py: Python<'py>, name: String, ttl: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
        let ttl = ttl.map(|t| seconds("ttl", t)).transpose()?;
        let c = self.conn.client()?;
        awaitable(py, async move {
            let t = c.add_tenant(&name, ttl).await?;
            Ok(Tenant { name: t.name, token: t.token, id: t.id, expires_at: t.expires_at })
        })
    }
}

/// ``client.tokens`` of an :class:`AsyncClient`.
///
/// >>> import asyncio, citron
/// >>> async def main(c: citron.AsyncClient) -> None:
/// ...     t = await c.tokens.mint(["read"], "build", ttl=60.0)
/// ...     print(t.expires_at > 0)
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
/// ...     asyncio.run(main(srv.async_client()))
/// True
#[pyclass(frozen, module = "citron")]
pub struct AsyncTokens {
    conn: Arc<AConn>,
}

#[pymethods]
impl AsyncTokens {
    /// :meth:`Tokens.mint`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     t = await c.tokens.mint(["upload"], "build-*", ttl=600.0)
    /// ...     async with citron.AsyncClient(c.url, token=t.token) as ci:
    /// ...         print((await ci.results.open_run("build-arm")).job)
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// build-arm
    #[pyo3(signature = (scopes, job, ttl = None, *, tenant = None, run = None, dut = None))]
    #[allow(clippy::too_many_arguments)] // the REST body's fields, as Python keywords
    fn mint<'py>(
        &self,
        py: Python<'py>,
        scopes: Vec<String>,
        job: String,
        ttl: Option<f64>,
        tenant: Option<String>,
        run: Option<i64>,
        dut: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let ttl = ttl.map(|t| seconds("ttl", t).map(duration_text)).transpose()?;
        let nt = NewToken { scopes, job, ttl, tenant, run, dut };
        let c = self.conn.client()?;
        awaitable(py, async move { c.mint_token(&nt).await.map(token) })
    }

    /// :meth:`Tokens.subset`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     t = await c.tokens.mint(["read", "upload"], "build", ttl=600.0)
    /// ...     async with citron.AsyncClient(c.url, token=t.token) as ci:
    /// ...         print((await ci.tokens.subset(scopes=["read"])).expires_at <= t.expires_at)
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// True
    #[pyo3(signature = (*, scopes = None, job = None, ttl = None, run = None, dut = None))]
    fn subset<'py>(
        &self,
        py: Python<'py>,
        scopes: Option<Vec<String>>,
        job: Option<String>,
        ttl: Option<f64>,
        run: Option<i64>,
        dut: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let ttl = ttl.map(|t| seconds("ttl", t).map(duration_text)).transpose()?;
        let s = TokenSubset { scopes, job, ttl, run, dut };
        let c = self.conn.client()?;
        awaitable(py, async move { c.subset_token(&s).await.map(token) })
    }

    /// :meth:`Tokens.revoke`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     t = await c.tokens.mint(["upload"], "build")
    /// ...     await c.tokens.revoke(t)
    /// ...     try:
    /// ...         await citron.AsyncClient(c.url, token=t.token).results.open_run("build")
    /// ...     except citron.AuthError as e:
    /// ...         print(e.status)
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// 401
    fn revoke<'py>(&self, py: Python<'py>, token: TokenArg<'_>) -> PyResult<Bound<'py, PyAny>> {
        let id = token.id();
        let c = self.conn.client()?;
        awaitable(py, async move { c.revoke_token(&id).await })
    }
}

/// The lab's event feed as an async iterator (:meth:`AsyncClient.events`).
///
/// >>> import asyncio, citron
/// >>> async def main(c: citron.AsyncClient) -> None:
/// ...     async with await c.results.open_run("build"):
/// ...         pass
/// ...     events = c.events("build", type="run_finished", timeout=1.0)
/// ...     print([e.job async for e in events], events.last_event_id > 0)
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
/// ...     asyncio.run(main(srv.async_client()))
/// ['build'] True
#[pyclass(frozen, module = "citron")]
pub struct AsyncEvents {
    reader: Arc<tokio::sync::Mutex<citron_client::Events>>,
    timeout: Option<Duration>,
}

#[pymethods]
impl AsyncEvents {
    /// The ``seq`` of the last event returned (None while a read is under way).
    #[getter]
    fn last_event_id(&self) -> PyResult<u64> {
        self.reader
            .try_lock()
            .map(|r| r.last_event_id())
            .map_err(|_| pyo3::exceptions::PyRuntimeError::new_err("a read of this iterator is under way"))
    }

    fn __aiter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (reader, timeout) = (self.reader.clone(), self.timeout);
        awaitable_py(py, async move {
            let mut r = reader.lock().await;
            match next_within(&mut r, timeout).await.map_err(Error::Client)? {
                Some(ev) => Ok(Event::from(ev)),
                None => Err(stop()),
            }
        })
    }
}
