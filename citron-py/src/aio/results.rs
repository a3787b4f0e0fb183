//! `client.results` of an `AsyncClient`: the coroutines of `Results`, `OpenRun` and `Latest`
//! (the `runs` and `watch` async iterators are in `runs.rs`).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use citron_client::{EventQuery, Select, Upload};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::runs::{AsyncRunsIter, AsyncWatch};
use super::{awaitable, awaitable_py, AConn};
use crate::client::results::{status_of, Data, RunArg, READ_MAX};
use crate::client::seconds;
use crate::client::types::{Found, HashHit, ResultFile, Retention, Run};
use crate::errors::Error;

/// What an async upload sends. A binary file object is read whole when the call is made (its
/// reads are blocking Python calls, which must not run inside the event loop's awaits): give
/// a path to stream a large file from disk.
fn upload_of(data: Data<'_>) -> PyResult<Upload> {
    Ok(match data {
        Data::Bytes(b) => Upload::Bytes(Bytes::copy_from_slice(b.as_bytes())),
        Data::ByteArray(b) => Upload::Bytes(Bytes::from(b.to_vec())),
        Data::Path(p) => Upload::File(p),
        Data::File(f) => {
            let all: Vec<u8> = f.call_method0("read")?.extract()?;
            Upload::Bytes(Bytes::from(all))
        }
    })
}

fn bytes_of(b: Bytes) -> Py<PyBytes> {
    Python::attach(|py| PyBytes::new(py, &b).unbind())
}

/// ``client.results`` of an :class:`AsyncClient`: the methods of :class:`Results`, as
/// coroutines.
///
/// >>> import asyncio, citron
/// >>> async def main(c: citron.AsyncClient) -> None:
/// ...     async with await c.results.open_run("build") as run:
/// ...         _ = await run.upload("a", b"abc")
/// ...     print(await c.results.read_latest("build", "a"))
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
/// ...     asyncio.run(main(srv.async_client()))
/// b'abc'
#[pyclass(frozen, module = "citron")]
pub struct AsyncResults {
    pub(crate) conn: Arc<AConn>,
}

#[pymethods]
impl AsyncResults {
    /// :meth:`Results.open_run`, awaited: an :class:`AsyncOpenRun` (``async with``).
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     async with await c.results.open_run("build", revision="r1") as run:
    /// ...         _ = await run.upload("a", b"1")
    /// ...     print(run.finished.status if run.finished else None)
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// success
    #[pyo3(signature = (job, revision = None, platform = None))]
    fn open_run<'py>(
        &self,
        py: Python<'py>,
        job: String,
        revision: Option<String>,
        platform: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let c = self.conn.client()?;
        let conn = self.conn.clone();
        awaitable(py, async move {
            let run: Run = c.open_run(&job, revision.as_deref(), platform.as_deref()).await?.into();
            Ok(AsyncOpenRun { conn, job, opened: run, state: Arc::new(tokio::sync::Mutex::new((0, None))) })
        })
    }

    /// :meth:`Results.upload`, awaited (a file object is read whole first: give a path to
    /// stream a large file).
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     run = await c.results.open_run("build")
    /// ...     print((await c.results.upload("build", run.id, "a.txt", b"abc")).size)
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// 3
    fn upload<'py>(&self, py: Python<'py>, job: String, run: RunArg<'_>, path: String, data: Data<'_>) -> PyResult<Bound<'py, PyAny>> {
        let (c, run, what) = (self.conn.client()?, run.id(), upload_of(data)?);
        awaitable(py, async move { c.upload(&job, run, &path, what).await.map(ResultFile::from) })
    }

    /// :meth:`Results.finish`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     run = await c.results.open_run("build")
    /// ...     print((await c.results.finish("build", run.id, "failure")).status)
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// failure
    #[pyo3(signature = (job, run, status = "success"))]
    fn finish<'py>(&self, py: Python<'py>, job: String, run: RunArg<'_>, status: &str) -> PyResult<Bound<'py, PyAny>> {
        let (c, run, s) = (self.conn.client()?, run.id(), status_of(status)?);
        awaitable(py, async move { c.finish(&job, run, s).await.map(Run::from) })
    }

    /// :meth:`Results.run`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     run = await c.results.open_run("build", revision="r7")
    /// ...     print((await c.results.run("build", run.id)).revision)
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// r7
    fn run<'py>(&self, py: Python<'py>, job: String, run: i64) -> PyResult<Bound<'py, PyAny>> {
        let c = self.conn.client()?;
        awaitable(py, async move { c.run(&job, run).await.map(Run::from) })
    }

    /// :meth:`Results.run_by_id`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     run = await c.results.open_run("build")
    /// ...     print((await c.results.run_by_id(run.id)).job)
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// build
    fn run_by_id<'py>(&self, py: Python<'py>, run: i64) -> PyResult<Bound<'py, PyAny>> {
        let c = self.conn.client()?;
        awaitable(py, async move { c.run_by_id(run).await.map(Run::from) })
    }

    /// :meth:`Results.find`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     try:
    /// ...         await c.results.find("never-ran")
    /// ...     except citron.NotFoundError as e:
    /// ...         print(e.status)
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// 404
    #[pyo3(signature = (job, revision = None, dut = None))]
    fn find<'py>(&self, py: Python<'py>, job: String, revision: Option<String>, dut: Option<String>) -> PyResult<Bound<'py, PyAny>> {
        let c = self.conn.client()?;
        awaitable(py, async move { c.find(&job, revision.as_deref(), dut.as_deref()).await.map(Found::from) })
    }

    /// :meth:`Results.latest`, awaited: the :class:`Run`, or with ``path`` an
    /// :class:`AsyncLatest`.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     async with await c.results.open_run("build") as run:
    /// ...         _ = await run.upload("a", b"abc")
    /// ...     latest = await c.results.latest("build", "a")
    /// ...     print((await c.results.latest("build")).id == run.id, await latest.read())
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// True b'abc'
    #[pyo3(signature = (job, path = None, *, platform = None, status = None))]
    fn latest<'py>(
        &self,
        py: Python<'py>,
        job: String,
        path: Option<String>,
        platform: Option<String>,
        status: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (c, conn, sel) = (self.conn.client()?, self.conn.clone(), Select { platform, status });
        awaitable_py(py, async move {
            let out = match path {
                None => {
                    let r = Run::from(c.latest_run(&job, &sel).await.map_err(Error::Client)?);
                    Python::attach(|py| Ok::<_, PyErr>(Bound::new(py, r)?.into_any().unbind()))?
                }
                Some(p) => {
                    let l = c.latest_file(&job, &p, &sel).await.map_err(Error::Client)?;
                    Python::attach(|py| Ok::<_, PyErr>(Bound::new(py, AsyncLatest { conn, inner: l })?.into_any().unbind()))?
                }
            };
            Ok(out)
        })
    }

    /// :meth:`Results.read_latest`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     async with await c.results.open_run("build") as run:
    /// ...         _ = await run.upload("a", b"abc")
    /// ...     print(await c.results.read_latest("build", "a", max_bytes=3))
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// b'abc'
    #[pyo3(signature = (job, path, *, platform = None, status = None, max_bytes = READ_MAX))]
    fn read_latest<'py>(
        &self,
        py: Python<'py>,
        job: String,
        path: String,
        platform: Option<String>,
        status: Option<String>,
        max_bytes: u64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (c, sel) = (self.conn.client()?, Select { platform, status });
        awaitable(py, async move { c.read_latest(&job, &path, &sel, max_bytes).await.map(bytes_of) })
    }

    /// :meth:`Results.file`, awaited: an :class:`AsyncLatest`.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     async with await c.results.open_run("build") as run:
    /// ...         _ = await run.upload("a", b"abc")
    /// ...     print(await (await c.results.file("build", run.id, "a")).read())
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// b'abc'
    fn file<'py>(&self, py: Python<'py>, job: String, run: RunArg<'_>, path: String) -> PyResult<Bound<'py, PyAny>> {
        let (c, conn, run) = (self.conn.client()?, self.conn.clone(), run.id());
        awaitable(py, async move { c.run_file(&job, run, &path).await.map(|inner| AsyncLatest { conn, inner }) })
    }

    /// :meth:`Results.blob`, awaited: an :class:`AsyncLatest`.
    ///
    /// >>> import asyncio, citron, hashlib
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     async with await c.results.open_run("build") as run:
    /// ...         _ = await run.upload("a", b"abc")
    /// ...     print(await (await c.results.blob(hashlib.sha256(b"abc").hexdigest())).read())
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// b'abc'
    fn blob<'py>(&self, py: Python<'py>, sha256: String) -> PyResult<Bound<'py, PyAny>> {
        let (c, conn) = (self.conn.client()?, self.conn.clone());
        awaitable(py, async move { c.blob_of(&sha256).await.map(|inner| AsyncLatest { conn, inner }) })
    }

    /// :meth:`Results.console`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     async with await c.results.open_run("build") as run:
    /// ...         _ = await run.console("booting\n")
    /// ...     print(await c.results.console("build", run.id))
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// b'booting\n'
    #[pyo3(signature = (job, run, *, max_bytes = READ_MAX))]
    fn console<'py>(&self, py: Python<'py>, job: String, run: RunArg<'_>, max_bytes: u64) -> PyResult<Bound<'py, PyAny>> {
        let (c, run) = (self.conn.client()?, run.id());
        awaitable(py, async move { c.console(&job, run, max_bytes).await.map(bytes_of) })
    }

    /// :meth:`Results.retention`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     _ = await (await c.results.open_run("build")).finish()
    /// ...     print(await c.results.retention("build"))
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// Retention(keep_last=None, ttl=None)
    fn retention<'py>(&self, py: Python<'py>, job: String) -> PyResult<Bound<'py, PyAny>> {
        let c = self.conn.client()?;
        awaitable(py, async move { c.retention(&job).await.map(Retention::from) })
    }

    /// :meth:`Results.set_retention`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     _ = await (await c.results.open_run("build")).finish()
    /// ...     print(await c.results.set_retention("build", keep_last=2))
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// Retention(keep_last=2, ttl=None)
    #[pyo3(signature = (job, *, keep_last = None, ttl = None))]
    fn set_retention<'py>(&self, py: Python<'py>, job: String, keep_last: Option<u64>, ttl: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
        let ttl = ttl.map(|t| seconds("ttl", t)).transpose()?;
        let c = self.conn.client()?;
        awaitable(py, async move { c.set_retention(&job, keep_last, ttl).await.map(Retention::from) })
    }

    /// :meth:`Results.find_by_hash`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     print(await c.results.find_by_hash("00" * 32))
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// []
    fn find_by_hash<'py>(&self, py: Python<'py>, sha256: String) -> PyResult<Bound<'py, PyAny>> {
        let c = self.conn.client()?;
        awaitable(py, async move {
            let hits = c.by_hash(&sha256).await?;
            Ok(hits.into_iter().map(|h| HashHit { job: h.job, run: h.run, path: h.path }).collect::<Vec<_>>())
        })
    }

    /// :meth:`Results.runs`, as an async iterator.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     for rev in ["r1", "r2"]:
    /// ...         _ = await (await c.results.open_run("build", revision=rev)).finish()
    /// ...     print([r.revision async for r in c.results.runs("build")])
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// ['r1', 'r2']
    #[pyo3(signature = (job, revision = None))]
    fn runs(&self, job: String, revision: Option<String>) -> AsyncRunsIter {
        AsyncRunsIter { conn: self.conn.clone(), job, revision, state: Arc::new(tokio::sync::Mutex::new((VecDeque::new(), Some(0)))) }
    }

    /// :meth:`Results.watch`, as an async iterator.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     _ = await (await c.results.open_run("build", revision="r1")).finish()
    /// ...     print([r.revision async for r in c.results.watch("build", timeout=1.0)])
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// ['r1']
    #[pyo3(signature = (job, *, status = Some("success".to_string()), after = 0, timeout = None))]
    fn watch(&self, job: String, status: Option<String>, after: u64, timeout: Option<f64>) -> PyResult<AsyncWatch> {
        let timeout = timeout.map(|t| seconds("timeout", t)).transpose()?;
        let query = EventQuery { job: Some(job.clone()), kind: Some("run_finished".into()), ..EventQuery::default() };
        let reader = self.conn.client()?.events(query, after);
        Ok(AsyncWatch {
            conn: self.conn.clone(),
            job,
            status,
            timeout,
            state: Arc::new(tokio::sync::Mutex::new((reader, VecDeque::new()))),
        })
    }
}

/// A run being filled (:meth:`AsyncResults.open_run`), as :class:`OpenRun` with coroutines;
/// ``async with`` finishes it when the block ends (``"failure"`` if it raised).
///
/// >>> import asyncio, citron
/// >>> async def main(c: citron.AsyncClient) -> None:
/// ...     try:
/// ...         async with await c.results.open_run("build") as run:
/// ...             raise RuntimeError("the test failed")
/// ...     except RuntimeError:
/// ...         pass
/// ...     print((await c.results.run("build", run.id)).status)
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
/// ...     asyncio.run(main(srv.async_client()))
/// failure
#[pyclass(frozen, module = "citron")]
pub struct AsyncOpenRun {
    conn: Arc<AConn>,
    job: String,
    opened: Run,
    /// The console's length so far, and the run as finished.
    state: Arc<tokio::sync::Mutex<(u64, Option<Run>)>>,
}

impl AsyncOpenRun {
    async fn finish_with(
        c: citron_client::Client,
        job: String,
        id: i64,
        state: Arc<tokio::sync::Mutex<(u64, Option<Run>)>>,
        s: citron_client::Status,
    ) -> PyResult<Run> {
        let run: Run = c.finish(&job, id, s).await.map_err(Error::Client)?.into();
        state.lock().await.1 = Some(run.clone());
        Ok(run)
    }
}

#[pymethods]
impl AsyncOpenRun {
    /// The run's id.
    #[getter]
    fn id(&self) -> i64 {
        self.opened.id
    }

    /// The job.
    #[getter]
    fn job(&self) -> String {
        self.job.clone()
    }

    /// The run as opened.
    #[getter]
    fn run(&self) -> Run {
        self.opened.clone()
    }

    /// The run as finished, or None while it is open (or while it is being finished).
    #[getter]
    fn finished(&self) -> Option<Run> {
        self.state.try_lock().ok().and_then(|s| s.1.clone())
    }

    /// :meth:`OpenRun.upload`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     async with await c.results.open_run("build") as run:
    /// ...         print((await run.upload("d/f.txt", b"x")).path)
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// d/f.txt
    fn upload<'py>(&self, py: Python<'py>, path: String, data: Data<'_>) -> PyResult<Bound<'py, PyAny>> {
        let (c, job, run, what) = (self.conn.client()?, self.job.clone(), self.opened.id, upload_of(data)?);
        awaitable(py, async move { c.upload(&job, run, &path, what).await.map(ResultFile::from) })
    }

    /// :meth:`OpenRun.console`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     async with await c.results.open_run("build") as run:
    /// ...         print(await run.console("a\n"), await run.console(b"b\n"))
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// 2 4
    fn console<'py>(&self, py: Python<'py>, text: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let data: Vec<u8> = match text.extract::<String>() {
            Ok(s) => s.into_bytes(),
            Err(_) => text.extract()?,
        };
        let (c, job, run, state) = (self.conn.client()?, self.job.clone(), self.opened.id, self.state.clone());
        awaitable(py, async move {
            let mut s = state.lock().await;
            let len = c.append_console(&job, run, s.0, Bytes::from(data)).await?;
            s.0 = len;
            Ok(len)
        })
    }

    /// :meth:`OpenRun.finish`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     run = await c.results.open_run("build")
    /// ...     print((await run.finish("unknown")).status, run.finished is not None)
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// unknown True
    #[pyo3(signature = (status = "success"))]
    fn finish<'py>(&self, py: Python<'py>, status: &str) -> PyResult<Bound<'py, PyAny>> {
        let (c, s) = (self.conn.client()?, status_of(status)?);
        awaitable_py(py, Self::finish_with(c, self.job.clone(), self.opened.id, self.state.clone(), s))
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
        let raised = _exc_type.is_some_and(|t| !t.is_none());
        let s = if raised { citron_client::Status::Failure } else { citron_client::Status::Success };
        let (c, job, id, state) = (self.conn.client()?, self.job.clone(), self.opened.id, self.state.clone());
        awaitable_py(py, async move {
            if state.lock().await.1.is_none() {
                let r = Self::finish_with(c, job, id, state, s).await;
                // The block's own exception matters more than a failure to record it.
                if !raised {
                    r?;
                }
            }
            Ok(false)
        })
    }

    fn __repr__(&self) -> String {
        format!("AsyncOpenRun(id={}, job={:?})", self.opened.id, self.job)
    }
}

/// A file's blob, as :class:`Latest` with coroutines.
///
/// >>> import asyncio, citron, hashlib
/// >>> async def main(c: citron.AsyncClient) -> None:
/// ...     async with await c.results.open_run("build") as run:
/// ...         _ = await run.upload("a", b"abc")
/// ...     latest = await c.results.latest("build", "a")
/// ...     print(latest.sha256 == hashlib.sha256(b"abc").hexdigest())
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
/// ...     asyncio.run(main(srv.async_client()))
/// True
#[pyclass(frozen, module = "citron")]
pub struct AsyncLatest {
    conn: Arc<AConn>,
    inner: citron_client::Latest,
}

#[pymethods]
impl AsyncLatest {
    /// SHA-256 of the content, hex.
    #[getter]
    fn sha256(&self) -> String {
        self.inner.sha256.clone()
    }

    /// The blob's URL.
    #[getter]
    fn url(&self) -> String {
        self.inner.url.clone()
    }

    /// :meth:`Latest.read`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     async with await c.results.open_run("build") as run:
    /// ...         _ = await run.upload("a", b"abc")
    /// ...     print(await (await c.results.latest("build", "a")).read(max_bytes=3))
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// b'abc'
    #[pyo3(signature = (max_bytes = READ_MAX))]
    fn read<'py>(&self, py: Python<'py>, max_bytes: u64) -> PyResult<Bound<'py, PyAny>> {
        let (c, l) = (self.conn.client()?, self.inner.clone());
        awaitable(py, async move { c.read_blob(&l, max_bytes).await.map(bytes_of) })
    }

    /// :meth:`Latest.download`, awaited.
    ///
    /// >>> import asyncio, citron, pathlib, tempfile
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     async with await c.results.open_run("build") as run:
    /// ...         _ = await run.upload("a", b"abc")
    /// ...     with tempfile.TemporaryDirectory() as d:
    /// ...         print(await (await c.results.latest("build", "a")).download(pathlib.Path(d, "a")))
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// 3
    fn download<'py>(&self, py: Python<'py>, to: PathBuf) -> PyResult<Bound<'py, PyAny>> {
        let (c, l) = (self.conn.client()?, self.inner.clone());
        awaitable(py, async move { c.download_blob(&l, &to).await })
    }

    fn __repr__(&self) -> String {
        format!("AsyncLatest(sha256={:?}, url={:?})", self.inner.sha256, self.inner.url)
    }
}
