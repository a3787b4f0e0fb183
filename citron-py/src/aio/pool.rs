//! `client.pool` and `async with client.reserve(...)` of an `AsyncClient`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use pyo3::prelude::*;

use super::{awaitable, awaitable_py, stop, AConn};
use crate::client::pool::{timeout_error, Ask, ResArg, PAGE};
use crate::client::seconds;
use crate::client::types::{PoolDut, Reservation};
use crate::errors::Error;

/// ``client.pool`` of an :class:`AsyncClient`: the methods of :class:`Pool`, as coroutines.
///
/// >>> import asyncio, citron
/// >>> async def main(url: str) -> None:
/// ...     async with citron.AsyncClient(url) as c:
/// ...         r = await c.pool.request(tags=["x"])
/// ...         print(r.state, [d.id for d in r], (await c.pool.release(r)).state)
/// ...         async with c.reserve(tags=["x"], wait=10.0) as duts:
/// ...             print([d.id for d in duts], [x.state async for x in c.pool.list()])
/// >>> lab = citron.Lab.from_yaml("duts:\n  - {id: d1, ip: [127.0.0.21], tags: [x]}\n")
/// >>> with citron.Server(lab, http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as sync:
/// ...     asyncio.run(main(sync.url))
/// allocated ['d1'] released
/// ['d1'] ['released', 'allocated']
#[pyclass(frozen, module = "citron")]
pub struct AsyncPool {
    pub(crate) conn: Arc<AConn>,
}

#[pymethods]
impl AsyncPool {
    /// :meth:`Pool.request`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     print((await c.pool.request(tags=["x"])).state)
    /// >>> with citron.Server(citron.Lab.from_yaml("duts:\n  - {id: d1, ip: [127.0.0.21], tags: [x]}\n"), http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// allocated
    #[pyo3(signature = (tags = Vec::new(), *, kind = None, arch = None, model = None, count = 1, lifetime = None, priority = 0, job = None))]
    #[allow(clippy::too_many_arguments)] // the REST body's fields, as Python keywords
    fn request<'py>(
        &self,
        py: Python<'py>,
        tags: Vec<String>,
        kind: Option<String>,
        arch: Option<String>,
        model: Option<String>,
        count: u32,
        lifetime: Option<f64>,
        priority: i64,
        job: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let req = Ask { tags, kind, arch, model, count, lifetime, priority, job }.request()?;
        let c = self.conn.client()?;
        awaitable(py, async move { c.request_reservation(&req).await.map(Reservation::from) })
    }

    /// :meth:`Pool.get`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     r = await c.pool.request()
    /// ...     print((await c.pool.get(r.id, wait=1.0)).state)
    /// >>> with citron.Server(citron.Lab.from_yaml("duts:\n  - {id: d1, ip: [127.0.0.21], tags: [x]}\n"), http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// allocated
    #[pyo3(signature = (id, *, wait = None))]
    fn get<'py>(&self, py: Python<'py>, id: ResArg<'_>, wait: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
        let (c, id) = (self.conn.client()?, id.id());
        let wait = wait.map(|w| seconds("wait", w)).transpose()?;
        awaitable(py, async move {
            let r = c.reservation(id, None).await?;
            let r = match wait {
                Some(w) => c.wait_reservation(r, w).await?,
                None => r,
            };
            Ok(Reservation::from(r))
        })
    }

    /// :meth:`Pool.list`, as an async iterator.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     _ = await c.pool.request(); _ = await c.pool.request()
    /// ...     print([r.state async for r in c.pool.list()])
    /// >>> with citron.Server(citron.Lab.from_yaml("duts:\n  - {id: d1, ip: [127.0.0.21], tags: [x]}\n"), http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// ['allocated', 'waiting']
    #[pyo3(signature = (state = None))]
    fn list(&self, state: Option<String>) -> AsyncReservationsIter {
        AsyncReservationsIter { conn: self.conn.clone(), state, buf: Arc::new(tokio::sync::Mutex::new((VecDeque::new(), Some(0)))) }
    }

    /// :meth:`Pool.release`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     print((await c.pool.release(await c.pool.request())).state)
    /// >>> with citron.Server(citron.Lab.from_yaml("duts:\n  - {id: d1, ip: [127.0.0.21], tags: [x]}\n"), http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// released
    fn release<'py>(&self, py: Python<'py>, id: ResArg<'_>) -> PyResult<Bound<'py, PyAny>> {
        let (c, id) = (self.conn.client()?, id.id());
        awaitable(py, async move { c.release(id).await.map(Reservation::from) })
    }

    /// :meth:`Pool.fail`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     print((await c.pool.fail(await c.pool.request(), keep=60.0)).state)
    /// >>> with citron.Server(citron.Lab.from_yaml("duts:\n  - {id: d1, ip: [127.0.0.21], tags: [x]}\n"), http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// failed
    #[pyo3(signature = (id, *, keep = None))]
    fn fail<'py>(&self, py: Python<'py>, id: ResArg<'_>, keep: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
        let keep = keep.map(|k| seconds("keep", k)).transpose()?;
        let (c, id) = (self.conn.client()?, id.id());
        awaitable(py, async move { c.fail(id, keep).await.map(Reservation::from) })
    }

    /// :meth:`Pool.extend`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     print((await c.pool.extend(await c.pool.request(lifetime=60.0), 120.0)).lifetime)
    /// >>> with citron.Server(citron.Lab.from_yaml("duts:\n  - {id: d1, ip: [127.0.0.21], tags: [x]}\n"), http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// 120.0
    fn extend<'py>(&self, py: Python<'py>, id: ResArg<'_>, lifetime: f64) -> PyResult<Bound<'py, PyAny>> {
        let l = seconds("lifetime", lifetime)?;
        let (c, id) = (self.conn.client()?, id.id());
        awaitable(py, async move { c.extend(id, l).await.map(Reservation::from) })
    }

    /// :meth:`Pool.duts`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     print([(d.id, d.state) for d in await c.pool.duts()])
    /// >>> with citron.Server(citron.Lab.from_yaml("duts:\n  - {id: d1, ip: [127.0.0.21], tags: [x]}\n"), http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// [('d1', 'free')]
    fn duts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let c = self.conn.client()?;
        awaitable(py, async move { Ok(c.pool_duts().await?.into_iter().map(PoolDut::from).collect::<Vec<_>>()) })
    }

    /// :meth:`Pool.enable`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     _ = await c.pool.disable("d1")
    /// ...     print((await c.pool.enable("d1")).state)
    /// >>> with citron.Server(citron.Lab.from_yaml("duts:\n  - {id: d1, ip: [127.0.0.21], tags: [x]}\n"), http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// free
    fn enable<'py>(&self, py: Python<'py>, dut: String) -> PyResult<Bound<'py, PyAny>> {
        let c = self.conn.client()?;
        awaitable(py, async move { c.set_pool_dut(&dut, true).await.map(PoolDut::from) })
    }

    /// :meth:`Pool.disable`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     print((await c.pool.disable("d1")).state)
    /// >>> with citron.Server(citron.Lab.from_yaml("duts:\n  - {id: d1, ip: [127.0.0.21], tags: [x]}\n"), http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// disabled
    fn disable<'py>(&self, py: Python<'py>, dut: String) -> PyResult<Bound<'py, PyAny>> {
        let c = self.conn.client()?;
        awaitable(py, async move { c.set_pool_dut(&dut, false).await.map(PoolDut::from) })
    }
}

/// The caller's reservations, a page at a time, as an async iterator (:meth:`AsyncPool.list`).
///
/// >>> import asyncio, citron
/// >>> async def main(c: citron.AsyncClient) -> None:
/// ...     _ = await c.pool.request()
/// ...     print([r.state async for r in c.pool.list("allocated")])
/// >>> with citron.Server(citron.Lab.from_yaml("duts:\n  - {id: d1, ip: [127.0.0.21], tags: [x]}\n"), http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
/// ...     asyncio.run(main(srv.async_client()))
/// ['allocated']
#[pyclass(frozen, module = "citron")]
pub struct AsyncReservationsIter {
    conn: Arc<AConn>,
    state: Option<String>,
    buf: Arc<tokio::sync::Mutex<(VecDeque<Reservation>, Option<i64>)>>,
}

#[pymethods]
impl AsyncReservationsIter {
    fn __aiter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (c, state, buf) = (self.conn.client()?, self.state.clone(), self.buf.clone());
        awaitable_py(py, async move {
            let mut g = buf.lock().await;
            let (buf, after) = &mut *g;
            if buf.is_empty() {
                if let Some(a) = *after {
                    let page = c.reservations(state.as_deref(), a, PAGE).await.map_err(Error::Client)?;
                    *after = page.next;
                    buf.extend(page.reservations.into_iter().map(Reservation::from));
                }
            }
            buf.pop_front().ok_or_else(stop)
        })
    }
}

/// ``async with client.reserve(...) as duts:`` (:meth:`AsyncClient.reserve`): as
/// :class:`Reserve`, awaited. Cancelling the task while it waits withdraws the request.
///
/// >>> import asyncio, citron
/// >>> async def main(c: citron.AsyncClient) -> None:
/// ...     async with c.reserve(wait=10.0) as duts:
/// ...         async with c.reserve(wait=1.0):
/// ...             pass
/// >>> with citron.Server(citron.Lab.from_yaml("duts:\n  - {id: d1, ip: [127.0.0.21], tags: [x]}\n"), http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
/// ...     asyncio.run(main(srv.async_client()))
/// Traceback (most recent call last):
/// ...
/// citron.ReservationTimeout: reservation 2 was not allocated within 1s: ...
#[pyclass(frozen, module = "citron")]
pub struct AsyncReserve {
    pub(crate) conn: Arc<AConn>,
    pub(crate) ask: Ask,
    pub(crate) wait: Duration,
    pub(crate) held: Arc<Mutex<Option<Reservation>>>,
}

/// Releases reservation `id` when dropped unless disarmed: a cancelled `__aenter__` (its
/// future dropped mid-wait) must not leave a request in the queue.
struct Withdraw {
    client: Option<citron_client::Client>,
    id: i64,
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let id = self.id;
            // On the bridge's runtime: the dropped future's own task is gone.
            pyo3_async_runtimes::tokio::get_runtime().spawn(async move {
                let _ = c.release(id).await;
            });
        }
    }
}

#[pymethods]
impl AsyncReserve {
    /// The reservation while the block runs (None before it and once released).
    #[getter]
    fn reservation(&self) -> Option<Reservation> {
        self.held.lock().clone()
    }

    fn __aenter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let req = self.ask.clone().request()?;
        let (c, wait, held) = (self.conn.client()?, self.wait, self.held.clone());
        awaitable_py(py, async move {
            // The request runs in a task of its own: cancelled while it is in flight, this
            // future is gone when the answer comes, and the task withdraws what was created.
            let (tx, rx) = tokio::sync::oneshot::channel();
            let asker = c.clone();
            tokio::spawn(async move {
                let answer = asker.request_reservation(&req).await;
                if let Err(Ok(r)) = tx.send(answer) {
                    let _ = asker.release(r.id).await;
                }
            });
            let r = rx
                .await
                .map_err(|_| Error::Client(citron_client::ClientError::Protocol("the request's task ended".into())))?
                .map_err(Error::Client)?;
            let id = r.id;
            let mut guard = Withdraw { client: Some(c.clone()), id };
            let failed: PyErr = match c.wait_reservation(r, wait).await {
                Ok(r) if r.state == "allocated" => {
                    guard.client = None;
                    let r = Reservation::from(r);
                    *held.lock() = Some(r.clone());
                    return Ok(r);
                }
                Ok(r) if r.state == "waiting" => Python::attach(|py| timeout_error(py, id, wait)),
                Ok(r) => Error::Client(citron_client::ClientError::Protocol(format!(
                    "reservation {id} ended before it was allocated: {} ({})",
                    r.state,
                    r.reason.as_deref().unwrap_or("no reason given")
                )))
                .into(),
                Err(e) => Error::Client(e).into(),
            };
            // Withdrawn before the error is raised, so that it takes no DUTs later (the guard
            // stays armed until then: cancelled meanwhile, it withdraws it still).
            let _ = c.release(id).await;
            guard.client = None;
            Err(failed)
        })
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
        let held = self.held.lock().take();
        let c = self.conn.client()?;
        awaitable_py(py, async move {
            if let Some(r) = held {
                let released = c.release(r.id).await;
                // The block's own exception matters more than a failure to release.
                if !raised {
                    released.map_err(Error::Client)?;
                }
            }
            Ok(false)
        })
    }
}
