//! `client.results`: runs, uploads, `latest`, files, consoles, blobs, by-hash, retention (the
//! `runs` and `watch` iterators are in `runs.rs`).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use citron_client::{EventQuery, Select, Status, Upload};
use futures::StreamExt as _;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes};
use sha2::{Digest as _, Sha256};

use super::runs::{RunsIter, Watch};
use super::types::{Found, HashHit, ResultFile, Retention, Run};
use super::{exclusive, seconds, Conn};
use parking_lot::Mutex;

/// How much of a Python file object one read brings.
const CHUNK: usize = 1 << 20;
/// Runs one page of `runs()` brings.
pub(crate) const PAGE: u32 = 100;
/// How much `Latest.read()` accepts unless told otherwise.
pub(crate) const READ_MAX: u64 = 64 << 20;

/// `run=`: an id or a `Run`.
#[derive(FromPyObject)]
pub(crate) enum RunArg<'py> {
    Run(PyRef<'py, Run>),
    Id(i64),
}

impl RunArg<'_> {
    pub(crate) fn id(&self) -> i64 {
        match self {
            RunArg::Run(r) => r.id,
            RunArg::Id(i) => *i,
        }
    }
}

/// What to upload: bytes, a local path, or a binary file object.
#[derive(FromPyObject)]
pub(crate) enum Data<'py> {
    Bytes(Bound<'py, PyBytes>),
    ByteArray(Bound<'py, PyByteArray>),
    Path(PathBuf),
    File(Bound<'py, PyAny>),
}

pub(crate) fn status_of(s: &str) -> PyResult<Status> {
    match Status::parse(s) {
        Some(Status::Running) | None => {
            Err(PyValueError::new_err(format!("status {s:?}: a run finishes with success, failure or unknown")))
        }
        Some(s) => Ok(s),
    }
}

/// Uploads a Python file object: one pass for its SHA-256 (then back to where it was), one to
/// send it through a bounded channel, so memory stays a few chunks whatever its size. A file
/// that cannot seek is read whole first.
fn upload_file_object(conn: &Conn, py: Python<'_>, job: &str, run: i64, path: &str, f: &Bound<'_, PyAny>) -> PyResult<ResultFile> {
    let read = |f: &Bound<'_, PyAny>| -> PyResult<Vec<u8>> { f.call_method1("read", (CHUNK,))?.extract() };
    let seekable = f.call_method0("seekable").and_then(|v| v.extract::<bool>()).unwrap_or(false);
    if !seekable {
        let mut all = Vec::new();
        loop {
            let c = read(f)?;
            if c.is_empty() {
                break;
            }
            all.extend_from_slice(&c);
        }
        let up = conn.client.upload(job, run, path, Upload::Bytes(Bytes::from(all)));
        return Ok(conn.block(py, up)?.into());
    }
    let start = f.call_method0("tell")?;
    let (mut h, mut len) = (Sha256::new(), 0u64);
    loop {
        let c = read(f)?;
        if c.is_empty() {
            break;
        }
        len += c.len() as u64;
        h.update(&c);
    }
    f.call_method1("seek", (start,))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(2);
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) }).boxed();
    let rt = conn.rt()?;
    let (client, job_s, path_s) = (conn.client.clone(), job.to_string(), path.to_string());
    let what = Upload::Stream { sha256: hex::encode(h.finalize()), len, stream };
    let task = rt.spawn(async move { client.upload(&job_s, run, &path_s, what).await });
    let mut failed = None;
    loop {
        let c = match read(f) {
            Ok(c) => c,
            Err(e) => {
                // The body fails, so the server keeps nothing; the Python error is the one raised.
                let _ = py.detach(|| tx.blocking_send(Err(std::io::Error::other("the file could not be read"))));
                failed = Some(e);
                break;
            }
        };
        if c.is_empty() {
            break;
        }
        // An error here means the upload ended already: its own error says why.
        if py.detach(|| tx.blocking_send(Ok(Bytes::from(c)))).is_err() {
            break;
        }
    }
    drop(tx);
    let out = conn.block(py, async move {
        task.await.unwrap_or_else(|e| Err(citron_client::ClientError::Protocol(format!("the upload task failed: {e}"))))
    });
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(out?.into())
}

fn upload(conn: &Conn, py: Python<'_>, job: &str, run: i64, path: &str, data: Data<'_>) -> PyResult<ResultFile> {
    let what = match data {
        Data::Bytes(b) => Upload::Bytes(Bytes::copy_from_slice(b.as_bytes())),
        Data::ByteArray(b) => Upload::Bytes(Bytes::from(b.to_vec())),
        Data::Path(p) => Upload::File(p),
        Data::File(f) => return upload_file_object(conn, py, job, run, path, &f),
    };
    Ok(conn.block(py, conn.client.upload(job, run, path, what))?.into())
}

/// ``client.results``: runs of jobs, their files, and reading them back.
///
/// ``data`` of an upload is the content (``bytes``), a local file's path (``str`` or
/// ``os.PathLike``, streamed from disk) or a binary file object (read in chunks); its SHA-256
/// travels as ``X-Checksum-SHA256``, so the server keeps nothing that differs.
///
/// >>> import citron, io, pathlib, tempfile
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
/// ...     run = c.results.open_run("build", revision="r1", platform="x86_64")
/// ...     _ = c.results.upload("build", run.id, "a.txt", b"from bytes")
/// ...     _ = c.results.upload("build", run.id, "b.txt", io.BytesIO(b"from a file object"))
/// ...     with tempfile.TemporaryDirectory() as d:
/// ...         p = pathlib.Path(d, "c.txt"); _ = p.write_bytes(b"from disk")
/// ...         _ = c.results.upload("build", run.id, "c.txt", p)
/// ...     done = c.results.finish("build", run.id)
/// ...     print(done.status, [f.size for f in c.results.latest("build").files or []])
/// success [10, 18, 9]
#[pyclass(frozen, module = "citron")]
pub struct Results {
    pub(crate) conn: Arc<Conn>,
}

#[pymethods]
impl Results {
    /// Opens a run of ``job`` (an ``upload`` token for it): an :class:`OpenRun`, which as a
    /// context manager finishes the run with ``"success"``, or ``"failure"`` when the block
    /// raises.
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     try:
    /// ...         with c.results.open_run("build") as run:
    /// ...             raise RuntimeError("the test failed")
    /// ...     except RuntimeError:
    /// ...         pass
    /// ...     print(c.results.run("build", run.id).status)
    /// failure
    #[pyo3(signature = (job, revision = None, platform = None))]
    fn open_run(&self, py: Python<'_>, job: &str, revision: Option<&str>, platform: Option<&str>) -> PyResult<OpenRun> {
        let run: Run = self.conn.block(py, self.conn.client.open_run(job, revision, platform))?.into();
        Ok(OpenRun { conn: self.conn.clone(), job: job.to_string(), opened: run, console: Mutex::new(0), finished: Mutex::new(None) })
    }

    /// Uploads ``data`` as ``path`` into the open run ``run`` (an id or a :class:`Run`) of
    /// ``job``. The same content again is fine; other content raises :class:`ConflictError`.
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     run = c.results.open_run("build")
    /// ...     _ = c.results.upload("build", run.run, "a", b"1")
    /// ...     _ = c.results.upload("build", run.id, "a", b"1")     # the same again: fine
    /// ...     try:
    /// ...         c.results.upload("build", run.id, "a", b"2")
    /// ...     except citron.ConflictError as e:
    /// ...         print(e.status)
    /// 409
    fn upload(&self, py: Python<'_>, job: &str, run: RunArg<'_>, path: &str, data: Data<'_>) -> PyResult<ResultFile> {
        upload(&self.conn, py, job, run.id(), path, data)
    }

    /// Finishes run ``run`` of ``job`` with ``status`` (``"success"``, ``"failure"`` or
    /// ``"unknown"``).
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     run = c.results.open_run("build")
    /// ...     print(c.results.finish("build", run.id, "failure").status)
    /// failure
    #[pyo3(signature = (job, run, status = "success"))]
    fn finish(&self, py: Python<'_>, job: &str, run: RunArg<'_>, status: &str) -> PyResult<Run> {
        let s = status_of(status)?;
        Ok(self.conn.block(py, self.conn.client.finish(job, run.id(), s))?.into())
    }

    /// Run ``run`` of ``job``, with its files.
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     run = c.results.open_run("build", revision="r7")
    /// ...     print(c.results.run("build", run.id).revision)
    /// r7
    fn run(&self, py: Python<'_>, job: &str, run: i64) -> PyResult<Run> {
        Ok(self.conn.block(py, self.conn.client.run(job, run))?.into())
    }

    /// Run ``run`` by its id alone, with its files (the id :meth:`Results.find` and the
    /// event feed give).
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     run = c.results.open_run("build", revision="r7")
    /// ...     print(c.results.run_by_id(run.id).job)
    /// build
    fn run_by_id(&self, py: Python<'_>, run: i64) -> PyResult<Run> {
        Ok(self.conn.block(py, self.conn.client.run_by_id(run))?.into())
    }

    /// Replay by revision: the input key ``job`` would have on DUT ``dut`` (default: the DUT
    /// of its newest recorded run) for ``revision`` (default: the job's own) now, and the
    /// newest successful run with that key — a :class:`Found` whose ``run`` is None when the
    /// test must run. :class:`NotFoundError` when no run of the job recorded its job yet.
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     try:
    /// ...         c.results.find("never-ran", revision="v1")
    /// ...     except citron.NotFoundError as e:
    /// ...         print(e.status)
    /// 404
    #[pyo3(signature = (job, revision = None, dut = None))]
    fn find(&self, py: Python<'_>, job: &str, revision: Option<String>, dut: Option<String>) -> PyResult<Found> {
        Ok(self.conn.block(py, self.conn.client.find(job, revision.as_deref(), dut.as_deref()))?.into())
    }

    /// The newest run of ``job`` (successful unless ``status`` says ``"failure"``,
    /// ``"unknown"``, ``"running"`` or ``"any"``; on ``platform`` when given): the
    /// :class:`Run` with its files, or with ``path``, that file's :class:`Latest` (its digest
    /// and blob URL; nothing downloaded yet). :class:`NotFoundError` when there is none.
    ///
    /// >>> import citron, hashlib
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     with c.results.open_run("kernel") as run:
    /// ...         _ = run.upload("bzImage", b"kernel bytes")
    /// ...     latest = c.results.latest("kernel", "bzImage")
    /// ...     print(latest.sha256 == hashlib.sha256(b"kernel bytes").hexdigest(), latest.read())
    /// ...     print(c.results.latest("kernel").id == run.id)
    /// True b'kernel bytes'
    /// True
    #[pyo3(signature = (job, path = None, *, platform = None, status = None))]
    fn latest(
        &self,
        py: Python<'_>,
        job: &str,
        path: Option<&str>,
        platform: Option<String>,
        status: Option<String>,
    ) -> PyResult<Py<PyAny>> {
        let sel = Select { platform, status };
        match path {
            None => Ok(Bound::new(py, Run::from(self.conn.block(py, self.conn.client.latest_run(job, &sel))?))?.into_any().unbind()),
            Some(p) => {
                let l = self.conn.block(py, self.conn.client.latest_file(job, p, &sel))?;
                Ok(Bound::new(py, Latest { conn: self.conn.clone(), inner: l })?.into_any().unbind())
            }
        }
    }

    /// ``job``'s runs, oldest first (of ``revision`` when given): an iterator that fetches
    /// one page at a time.
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     for rev in ["r1", "r2", "r1"]:
    /// ...         _ = c.results.open_run("build", revision=rev).finish()
    /// ...     print([r.revision for r in c.results.runs("build")], len(list(c.results.runs("build", "r1"))))
    /// ['r1', 'r2', 'r1'] 2
    #[pyo3(signature = (job, revision = None))]
    fn runs(&self, job: &str, revision: Option<String>) -> RunsIter {
        RunsIter { conn: self.conn.clone(), job: job.to_string(), revision, buf: VecDeque::new(), after: Some(0) }
    }

    /// File ``path`` of run ``run`` (an id or a :class:`Run`) of ``job``: its
    /// :class:`Latest` (digest and blob URL; nothing downloaded yet).
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     with c.results.open_run("build") as run:
    /// ...         _ = run.upload("a.txt", b"abc")
    /// ...     print(c.results.file("build", run.id, "a.txt").read())
    /// b'abc'
    fn file(&self, py: Python<'_>, job: &str, run: RunArg<'_>, path: &str) -> PyResult<Latest> {
        let l = self.conn.block(py, self.conn.client.run_file(job, run.id(), path))?;
        Ok(Latest { conn: self.conn.clone(), inner: l })
    }

    /// The content of file ``path`` of the newest run (as :meth:`latest` picks it), at most
    /// ``max_bytes``, checked against its digest: :meth:`latest` and :meth:`Latest.read` in
    /// one call.
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     with c.results.open_run("build") as run:
    /// ...         _ = run.upload("a.txt", b"abc")
    /// ...     print(c.results.read_latest("build", "a.txt"))
    /// b'abc'
    #[pyo3(signature = (job, path, *, platform = None, status = None, max_bytes = READ_MAX))]
    fn read_latest<'py>(
        &self,
        py: Python<'py>,
        job: &str,
        path: &str,
        platform: Option<String>,
        status: Option<String>,
        max_bytes: u64,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let sel = Select { platform, status };
        let b = self.conn.block(py, self.conn.client.read_latest(job, path, &sel, max_bytes))?;
        Ok(PyBytes::new(py, &b))
    }

    /// The blob whose SHA-256 is ``sha256`` (hex), if the token may read a file with it: its
    /// :class:`Latest` (:class:`NotFoundError` when there is none).
    ///
    /// >>> import citron, hashlib
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     with c.results.open_run("build") as run:
    /// ...         _ = run.upload("a.txt", b"abc")
    /// ...     print(c.results.blob(hashlib.sha256(b"abc").hexdigest()).read())
    /// b'abc'
    fn blob(&self, py: Python<'_>, sha256: &str) -> PyResult<Latest> {
        let l = self.conn.block(py, self.conn.client.blob_of(sha256))?;
        Ok(Latest { conn: self.conn.clone(), inner: l })
    }

    /// Run ``run``'s console so far (at most ``max_bytes``).
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     with c.results.open_run("build") as run:
    /// ...         _ = run.console("booting\n")
    /// ...     print(c.results.console("build", run.id))
    /// b'booting\n'
    #[pyo3(signature = (job, run, *, max_bytes = READ_MAX))]
    fn console<'py>(&self, py: Python<'py>, job: &str, run: RunArg<'_>, max_bytes: u64) -> PyResult<Bound<'py, PyBytes>> {
        let b = self.conn.block(py, self.conn.client.console(job, run.id(), max_bytes))?;
        Ok(PyBytes::new(py, &b))
    }

    /// ``job``'s retention: a :class:`Retention`.
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     _ = c.results.open_run("build").finish()
    /// ...     print(c.results.retention("build"))
    /// Retention(keep_last=None, ttl=None)
    fn retention(&self, py: Python<'_>, job: &str) -> PyResult<Retention> {
        Ok(self.conn.block(py, self.conn.client.retention(job))?.into())
    }

    /// Sets ``job``'s retention, applied at once: the files of the newest ``keep_last``
    /// finished runs, and of those finished less than ``ttl`` seconds ago, are kept (None: no
    /// such bound).
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     _ = c.results.open_run("build").finish()
    /// ...     r = c.results.set_retention("build", keep_last=5, ttl=86400.0)
    /// ...     print(r.keep_last, r.ttl, c.results.retention("build") == r)
    /// 5 86400.0 True
    #[pyo3(signature = (job, *, keep_last = None, ttl = None))]
    fn set_retention(&self, py: Python<'_>, job: &str, keep_last: Option<u64>, ttl: Option<f64>) -> PyResult<Retention> {
        let ttl = ttl.map(|t| seconds("ttl", t)).transpose()?;
        Ok(self.conn.block(py, self.conn.client.set_retention(job, keep_last, ttl))?.into())
    }

    /// The files whose content has SHA-256 ``sha256`` (hex) that the token may read: a list
    /// of :class:`HashHit`, empty when none.
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     print(c.results.find_by_hash("00" * 32))
    /// []
    fn find_by_hash(&self, py: Python<'_>, sha256: &str) -> PyResult<Vec<HashHit>> {
        let hits = self.conn.block(py, self.conn.client.by_hash(sha256))?;
        Ok(hits.into_iter().map(|h| HashHit { job: h.job, run: h.run, path: h.path }).collect())
    }

    /// Each run of ``job`` as it finishes with ``status`` (``"success"`` by default; None:
    /// however it ended), from the lab's event feed: an iterator of :class:`Run` (with its
    /// files) that waits for the next one. It starts after event ``after`` (0: every stored
    /// event, so runs that finished earlier come first), resumes with ``Last-Event-ID`` after
    /// a cut, and ends when ``timeout`` seconds pass without a run (None: never; Ctrl-C
    /// interrupts). Reading the feed is the administrator's.
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     with c.results.open_run("build", revision="r1") as run:
    /// ...         _ = run.upload("out", b"x")
    /// ...     for r in c.results.watch("build", timeout=1.0):
    /// ...         print(r.revision, r.status, r.file("out") is not None)
    /// r1 success True
    #[pyo3(signature = (job, *, status = Some("success".to_string()), after = 0, timeout = None))]
    fn watch(&self, job: &str, status: Option<String>, after: u64, timeout: Option<f64>) -> PyResult<Watch> {
        let timeout = timeout.map(|t| seconds("timeout", t)).transpose()?;
        // A run is yielded once it is finished: its `run_finished` event (the feed also has
        // `run_opened` and `file_uploaded`, which would yield it early, then again on resume).
        let query = EventQuery { job: Some(job.to_string()), kind: Some("run_finished".into()), ..EventQuery::default() };
        let reader = self.conn.client.events(query, after);
        Ok(Watch { conn: self.conn.clone(), job: job.to_string(), status, timeout, state: Mutex::new((reader, VecDeque::new())) })
    }
}

/// A run being filled (:meth:`Results.open_run`): ``id``, ``job``, ``run`` (the :class:`Run`
/// as opened), :meth:`upload`, :meth:`console`, :meth:`finish`. As a context manager it
/// finishes the run when the block ends, ``"failure"`` if it raised, else ``"success"``,
/// unless it was finished already.
///
/// >>> import citron
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
/// ...     with c.results.open_run("build") as run:
/// ...         _ = run.upload("log.txt", b"ok")
/// ...         print(run.finished)
/// ...     print(run.finished.status if run.finished else None)
/// None
/// success
///
/// It is a class of its own, not the :class:`Run` data class, because it holds the client it
/// uploads through; ``Run`` stays plain data, the same for the remote and in-process server.
#[pyclass(frozen, module = "citron")]
pub struct OpenRun {
    conn: Arc<Conn>,
    job: String,
    opened: Run,
    /// The console's length so far: the next append's offset.
    console: Mutex<u64>,
    finished: Mutex<Option<Run>>,
}

#[pymethods]
impl OpenRun {
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

    /// The run as finished, or None while it is open.
    #[getter]
    fn finished(&self) -> Option<Run> {
        self.finished.lock().clone()
    }

    /// Uploads ``data`` as ``path`` (see :class:`Results`).
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     with c.results.open_run("build") as run:
    /// ...         print(run.upload("dir/file.txt", b"content").path)
    /// dir/file.txt
    fn upload(&self, py: Python<'_>, path: &str, data: Data<'_>) -> PyResult<ResultFile> {
        upload(&self.conn, py, &self.job, self.opened.id, path, data)
    }

    /// Appends ``text`` (``str``, as UTF-8, or ``bytes``) to the run's console; answers its
    /// length.
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     with c.results.open_run("build") as run:
    /// ...         print(run.console("booting\n"), run.console(b"done\n"))
    /// 8 13
    fn console(&self, py: Python<'_>, text: Bound<'_, PyAny>) -> PyResult<u64> {
        let data: Vec<u8> = match text.extract::<String>() {
            Ok(s) => s.into_bytes(),
            Err(_) => text.extract()?,
        };
        let mut at = exclusive(&self.console)?;
        let len = self.conn.block(py, self.conn.client.append_console(&self.job, self.opened.id, *at, Bytes::from(data)))?;
        *at = len;
        Ok(len)
    }

    /// Finishes the run with ``status`` (``"success"``, ``"failure"``, ``"unknown"``).
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     run = c.results.open_run("build")
    /// ...     print(run.finish("unknown").status)
    /// unknown
    #[pyo3(signature = (status = "success"))]
    fn finish(&self, py: Python<'_>, status: &str) -> PyResult<Run> {
        let s = status_of(status)?;
        let run: Run = self.conn.block(py, self.conn.client.finish(&self.job, self.opened.id, s))?.into();
        *self.finished.lock() = Some(run.clone());
        Ok(run)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (_exc_type = None, _exc = None, _tb = None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: Option<Bound<'_, PyAny>>,
        _exc: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        if self.finished.lock().is_none() {
            let raised = _exc_type.is_some_and(|t| !t.is_none());
            let r = self.finish(py, if raised { "failure" } else { "success" });
            // The block's own exception matters more than a failure to record it.
            if !raised {
                r?;
            }
        }
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!("OpenRun(id={}, job={:?})", self.opened.id, self.job)
    }
}

/// A file of the newest run: ``sha256`` (hex) and ``url`` (its immutable blob), with
/// :meth:`read` and :meth:`download`, both checked against the digest.
///
/// >>> import citron
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
/// ...     with c.results.open_run("build") as run:
/// ...         _ = run.upload("a", b"abc")
/// ...     latest = c.results.latest("build", "a")
/// ...     print(latest.url.endswith("/api/v1/results/blobs/sha256/" + latest.sha256))
/// True
#[pyclass(frozen, module = "citron")]
pub struct Latest {
    conn: Arc<Conn>,
    inner: citron_client::Latest,
}

#[pymethods]
impl Latest {
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

    /// The content (at most ``max_bytes``; ``ValueError`` beyond), checked against
    /// ``sha256`` (:class:`FetchError` if it differs).
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     with c.results.open_run("build") as run:
    /// ...         _ = run.upload("a", b"abc")
    /// ...     print(c.results.latest("build", "a").read(max_bytes=3))
    /// b'abc'
    #[pyo3(signature = (max_bytes = READ_MAX))]
    fn read<'py>(&self, py: Python<'py>, max_bytes: u64) -> PyResult<Bound<'py, PyBytes>> {
        let b = self.conn.block(py, self.conn.client.read_blob(&self.inner, max_bytes))?;
        Ok(PyBytes::new(py, &b))
    }

    /// Downloads the content to ``to`` (a path): written beside it and renamed once checked
    /// against ``sha256``, so ``to`` is the whole right file or untouched. Answers the bytes.
    ///
    /// >>> import citron, pathlib, tempfile
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     with c.results.open_run("build") as run:
    /// ...         _ = run.upload("a", b"abc")
    /// ...     with tempfile.TemporaryDirectory() as d:
    /// ...         n = c.results.latest("build", "a").download(pathlib.Path(d, "a"))
    /// ...         print(n, pathlib.Path(d, "a").read_bytes())
    /// 3 b'abc'
    fn download(&self, py: Python<'_>, to: PathBuf) -> PyResult<u64> {
        self.conn.block(py, self.conn.client.download_blob(&self.inner, &to))
    }

    fn __repr__(&self) -> String {
        format!("Latest(sha256={:?}, url={:?})", self.inner.sha256, self.inner.url)
    }
}
