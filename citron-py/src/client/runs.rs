//! The runs of a job as iterators: page by page (`RunsIter`, `Results.runs`) and as they
//! finish, from the event feed (`Watch`, `Results.watch`; `next_run` is shared with the
//! asyncio client's).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use citron_client::Status;
use parking_lot::Mutex;
use pyo3::prelude::*;

use super::results::PAGE;
use super::types::Run;
use super::{exclusive, next_within, Conn};

/// How many run ids `watch` remembers, so that a run is yielded once.
const SEEN_MAX: usize = 1024;

/// The runs of a job, page by page (:meth:`Results.runs`).
///
/// >>> import citron
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
/// ...     _ = c.results.open_run("build").finish()
/// ...     print([r.status for r in c.results.runs("build")])
/// ['success']
#[pyclass(module = "citron")]
pub struct RunsIter {
    pub(crate) conn: Arc<Conn>,
    pub(crate) job: String,
    pub(crate) revision: Option<String>,
    pub(crate) buf: VecDeque<Run>,
    /// Where the next page starts (None: no more).
    pub(crate) after: Option<i64>,
}

#[pymethods]
impl RunsIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<Run>> {
        if self.buf.is_empty() {
            let Some(after) = self.after else { return Ok(None) };
            let page = self.conn.block(py, self.conn.client.runs(&self.job, self.revision.as_deref(), after, PAGE))?;
            self.after = page.next;
            self.buf.extend(page.runs.into_iter().map(Run::from));
        }
        Ok(self.buf.pop_front())
    }
}

/// The next run of `job` that finished (with status `want`, when given) after what `reader`
/// read, skipping the runs in `seen` (and remembering it there); None when `timeout` passes.
pub(crate) async fn next_run(
    client: &citron_client::Client,
    reader: &mut citron_client::Events,
    seen: &mut VecDeque<i64>,
    job: &str,
    want: Option<&str>,
    timeout: Option<Duration>,
) -> Result<Option<citron_client::Run>, citron_client::ClientError> {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
        let Some(ev) = next_within(reader, left).await? else { return Ok(None) };
        let Some(id) = ev.detail.as_ref().and_then(|d| d.get("run")).and_then(serde_json::Value::as_i64) else { continue };
        if seen.contains(&id) {
            continue;
        }
        let run = client.run(job, id).await?;
        if run.status == Status::Running || want.is_some_and(|w| w != run.status.name()) {
            continue;
        }
        if seen.len() == SEEN_MAX {
            seen.pop_front();
        }
        seen.push_back(id);
        return Ok(Some(run));
    }
}

/// The runs of a job as they finish (:meth:`Results.watch`).
///
/// >>> import citron, threading
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
/// ...     watch = c.results.watch("build", timeout=10.0)
/// ...     later = threading.Timer(0.2, lambda: c.results.open_run("build", revision="r2").finish())
/// ...     later.start()
/// ...     print(next(watch).revision)
/// ...     later.join()
/// r2
#[pyclass(frozen, module = "citron")]
pub struct Watch {
    pub(crate) conn: Arc<Conn>,
    pub(crate) job: String,
    pub(crate) status: Option<String>,
    pub(crate) timeout: Option<Duration>,
    /// The feed, and the runs yielded lately (a run has several events).
    pub(crate) state: Mutex<(citron_client::Events, VecDeque<i64>)>,
}

#[pymethods]
impl Watch {
    /// The ``seq`` of the last event read: ``watch(after=...)`` goes on from here.
    #[getter]
    fn last_event_id(&self) -> PyResult<u64> {
        Ok(exclusive(&self.state)?.0.last_event_id())
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Run>> {
        let mut state = exclusive(&self.state)?;
        let (reader, seen) = &mut *state;
        let (timeout, job, want) = (self.timeout, self.job.as_str(), self.status.as_deref());
        let client = self.conn.client.clone();
        let found = self.conn.block(py, next_run(&client, reader, seen, job, want, timeout))?;
        Ok(found.map(Run::from))
    }
}
