//! The runs of a job as async iterators: page by page (`AsyncRunsIter`) and as they finish
//! (`AsyncWatch`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;

use super::{awaitable_py, stop, AConn};
use crate::client::results::PAGE;
use crate::client::runs::next_run;
use crate::client::types::Run;
use crate::errors::Error;

/// A job's runs, a page at a time, as an async iterator (:meth:`AsyncResults.runs`).
///
/// >>> import asyncio, citron
/// >>> async def main(c: citron.AsyncClient) -> None:
/// ...     _ = await (await c.results.open_run("build")).finish()
/// ...     print([r.status async for r in c.results.runs("build")])
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
/// ...     asyncio.run(main(srv.async_client()))
/// ['success']
#[pyclass(frozen, module = "citron")]
pub struct AsyncRunsIter {
    pub(crate) conn: Arc<AConn>,
    pub(crate) job: String,
    pub(crate) revision: Option<String>,
    /// The page being read, and where the next starts (None: no more).
    pub(crate) state: Arc<tokio::sync::Mutex<(VecDeque<Run>, Option<i64>)>>,
}

#[pymethods]
impl AsyncRunsIter {
    fn __aiter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (c, job, revision, state) = (self.conn.client()?, self.job.clone(), self.revision.clone(), self.state.clone());
        awaitable_py(py, async move {
            let mut s = state.lock().await;
            let (buf, after) = &mut *s;
            if buf.is_empty() {
                if let Some(a) = *after {
                    let page = c.runs(&job, revision.as_deref(), a, PAGE).await.map_err(Error::Client)?;
                    *after = page.next;
                    buf.extend(page.runs.into_iter().map(Run::from));
                }
            }
            buf.pop_front().ok_or_else(stop)
        })
    }
}

/// A job's runs as they finish, as an async iterator (:meth:`AsyncResults.watch`).
///
/// >>> import asyncio, citron
/// >>> async def main(c: citron.AsyncClient) -> None:
/// ...     _ = await (await c.results.open_run("build")).finish("failure")
/// ...     print([r.status async for r in c.results.watch("build", status=None, timeout=1.0)])
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
/// ...     asyncio.run(main(srv.async_client()))
/// ['failure']
#[pyclass(frozen, module = "citron")]
pub struct AsyncWatch {
    pub(crate) conn: Arc<AConn>,
    pub(crate) job: String,
    pub(crate) status: Option<String>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) state: Arc<tokio::sync::Mutex<(citron_client::Events, VecDeque<i64>)>>,
}

#[pymethods]
impl AsyncWatch {
    fn __aiter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (c, job, status, timeout, state) =
            (self.conn.client()?, self.job.clone(), self.status.clone(), self.timeout, self.state.clone());
        awaitable_py(py, async move {
            let mut s = state.lock().await;
            let (reader, seen) = &mut *s;
            match next_run(&c, reader, seen, &job, status.as_deref(), timeout).await.map_err(Error::Client)? {
                Some(r) => Ok(Run::from(r)),
                None => Err(stop()),
            }
        })
    }
}
