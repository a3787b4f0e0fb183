//! `client.duts` of an `AsyncClient`.

use std::collections::VecDeque;
use std::sync::Arc;

use citron_client::NewDut;
use pyo3::prelude::*;

use super::{awaitable, awaitable_py, stop, AConn};
use crate::client::lab::{Dut, DutJob, PAGE};
use crate::errors::Error;

/// ``client.duts`` of an :class:`AsyncClient`: the methods of :class:`Duts`, as coroutines.
///
/// >>> import asyncio, citron
/// >>> async def main(url: str) -> None:
/// ...     async with citron.AsyncClient(url) as c:
/// ...         print([d.id for d in await c.duts.list()], (await c.duts.get("dut1")).ip)
/// ...         print([r async for r in c.duts.accesses("dut1")])
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as sync:
/// ...     asyncio.run(main(sync.url))
/// ['dut1', 'dut2'] ['127.0.0.2']
/// []
#[pyclass(frozen, module = "citron")]
pub struct AsyncDuts {
    pub(crate) conn: Arc<AConn>,
}

#[pymethods]
impl AsyncDuts {
    /// :meth:`Duts.list`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     print([d.id for d in await c.duts.list()])
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// ['dut1', 'dut2']
    fn list<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let c = self.conn.client()?;
        awaitable(py, async move { Ok(c.duts().await?.into_iter().map(Dut::from).collect::<Vec<_>>()) })
    }

    /// :meth:`Duts.get`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     print((await c.duts.get("dut1")).ip)
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// ['127.0.0.2']
    fn get<'py>(&self, py: Python<'py>, id: String) -> PyResult<Bound<'py, PyAny>> {
        let c = self.conn.client()?;
        awaitable(py, async move { c.dut(&id).await.map(Dut::from) })
    }

    /// :meth:`Duts.add`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     print((await c.duts.add("d9", ip=["127.0.0.9"])).id)
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// d9
    #[pyo3(signature = (id, *, ip = Vec::new(), mac = None, serial = None, tags = Vec::new(), machine_id = None))]
    #[allow(clippy::too_many_arguments)] // the lab file's keys, as Python keywords
    fn add<'py>(
        &self,
        py: Python<'py>,
        id: String,
        ip: Vec<String>,
        mac: Option<String>,
        serial: Option<String>,
        tags: Vec<String>,
        machine_id: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let d = NewDut { id, machine_id, mac, serial, ip, tags };
        let c = self.conn.client()?;
        awaitable(py, async move { c.add_dut(&d).await.map(Dut::from) })
    }

    /// :meth:`Duts.remove`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     await c.duts.remove("dut2")
    /// ...     print([d.id for d in await c.duts.list()])
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// ['dut1']
    fn remove<'py>(&self, py: Python<'py>, id: String) -> PyResult<Bound<'py, PyAny>> {
        let c = self.conn.client()?;
        awaitable(py, async move { c.remove_dut(&id).await })
    }

    /// :meth:`Duts.job`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     _ = await c.duts.set_job("dut1", "deployment: {start: {kernel: {data: k}}}")
    /// ...     print((await c.duts.job("dut1")).origin)
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// api:dut1
    fn job<'py>(&self, py: Python<'py>, id: String) -> PyResult<Bound<'py, PyAny>> {
        let c = self.conn.client()?;
        awaitable(py, async move { c.job(&id).await.map(|j| DutJob { yaml: j.yaml, origin: j.origin, set_at: j.set_at }) })
    }

    /// :meth:`Duts.set_job`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     print((await c.duts.set_job("dut1", "deployment: {start: {kernel: {data: k}}}")).job)
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// api:dut1
    #[pyo3(signature = (id, job, *, revision = None))]
    fn set_job<'py>(&self, py: Python<'py>, id: String, job: String, revision: Option<String>) -> PyResult<Bound<'py, PyAny>> {
        let c = self.conn.client()?;
        awaitable(py, async move { c.set_job(&id, &job, revision.as_deref()).await.map(Dut::from) })
    }

    /// :meth:`Duts.clear_job`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     _ = await c.duts.set_job("dut1", "deployment: {start: {kernel: {data: k}}}")
    /// ...     await c.duts.clear_job("dut1")
    /// ...     print((await c.duts.get("dut1")).job)
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// None
    fn clear_job<'py>(&self, py: Python<'py>, id: String) -> PyResult<Bound<'py, PyAny>> {
        let c = self.conn.client()?;
        awaitable(py, async move { c.clear_job(&id).await })
    }

    /// :meth:`Duts.event`, awaited.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     await c.duts.event("dut1", "boot")
    /// ...     print([e.type async for e in c.events(dut="dut1", timeout=1.0)])
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// ['boot']
    #[pyo3(signature = (id, event = "boot", *, status = None))]
    fn event<'py>(&self, py: Python<'py>, id: String, event: &str, status: Option<String>) -> PyResult<Bound<'py, PyAny>> {
        let (c, event) = (self.conn.client()?, event.to_string());
        awaitable(py, async move { c.dut_event(&id, &event, status.as_deref()).await })
    }

    /// :meth:`Duts.accesses`, as an async iterator.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     print([r async for r in c.duts.accesses("dut1", after=0)])
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// []
    #[pyo3(signature = (id, after = 0))]
    fn accesses(&self, id: String, after: u64) -> AsyncAccessesIter {
        AsyncAccessesIter { conn: self.conn.clone(), dut: id, state: Arc::new(tokio::sync::Mutex::new((VecDeque::new(), Some(after)))) }
    }
}

/// A DUT's access log, a page at a time, as an async iterator (:meth:`AsyncDuts.accesses`).
///
/// >>> import asyncio, citron
/// >>> async def main(c: citron.AsyncClient) -> None:
/// ...     print([r async for r in c.duts.accesses("dut1")])
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
/// ...     asyncio.run(main(srv.async_client()))
/// []
#[pyclass(frozen, module = "citron")]
pub struct AsyncAccessesIter {
    conn: Arc<AConn>,
    dut: String,
    state: Arc<tokio::sync::Mutex<(VecDeque<serde_json::Value>, Option<u64>)>>,
}

#[pymethods]
impl AsyncAccessesIter {
    fn __aiter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (c, dut, state) = (self.conn.client()?, self.dut.clone(), self.state.clone());
        awaitable_py(py, async move {
            let mut g = state.lock().await;
            let (buf, after) = &mut *g;
            if buf.is_empty() {
                if let Some(a) = *after {
                    let page = c.accesses(&dut, a, PAGE).await.map_err(Error::Client)?;
                    *after = page.next;
                    buf.extend(page.records);
                }
            }
            let r = buf.pop_front().ok_or_else(stop)?;
            Python::attach(|py| Ok(py.import("json")?.call_method1("loads", (r.to_string(),))?.unbind()))
        })
    }
}
