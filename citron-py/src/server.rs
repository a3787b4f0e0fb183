//! `citron.Server`: a lab's gateway and its protocol backends, running inside the Python process.
//!
//! The object owns a tokio runtime; every call that may wait (loading a job fetches its artifacts,
//! stopping waits for the backends) releases the GIL, so Python threads — including a test's own
//! HTTP or TFTP client — keep running meanwhile.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use citron_core::job::RenderContext;
use citron_core::lab::LabConfig;
use citron_core::lifetime::Event;
use citron_core::namespace::{Dut, DutId};
use citron_core::Gateway;
use parking_lot::Mutex;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use tokio::runtime::Runtime;

use crate::errors::Error;
use crate::job::{JobDescription, ResolvedJob};
use crate::lab::{dut_dict, make_dut, Lab};
use citron_lab::server::{RunningServer, ServerBuilder};

/// A running citron: the lab's DUTs and jobs, and its HTTP, TFTP and NBD servers listening on
/// the given addresses. Port 0 picks a free port; the ``*_address`` properties tell which.
///
/// Use it as a context manager so that the servers stop (and free their ports) when the block
/// ends; :meth:`stop` does the same explicitly. Without ``data_dir``, the cache lives in a
/// temporary directory removed with the object.
///
/// >>> import citron, http.client
/// >>> with citron.Server(tftp=None) as srv:
/// ...     _ = srv.set_job("dut1", "deployment:\n  start:\n    storage:\n      http:\n"
/// ...                     "        - {path: /hello.txt, data: hi}\n")
/// ...     host, port = srv.http_address
/// ...     c = http.client.HTTPConnection(host, port, source_address=("127.0.0.2", 0))
/// ...     c.request("GET", "/hello.txt")
/// ...     r = c.getresponse()
/// ...     print(r.status, r.read())
/// ...     c.close()
/// 200 b'hi'
///
/// ``Server(lab=None, data_dir=None, *, http="127.0.0.1:0", tftp="127.0.0.1:0",
/// nbd="127.0.0.1:0", api=None, advertise=None, state=None)`` creates the gateway for ``lab`` (a
/// :class:`Lab`, a lab file path, or None for the default lab) with its state under
/// ``data_dir``, and starts the backends: ``http``, ``tftp``, ``nbd`` and ``api`` (the lab's
/// HTTP/JSON control API) are ``"host:port"`` (port 0 picks one) or None to leave them off.
/// ``advertise`` is the IP address DUTs reach this machine at when listening on a wildcard
/// address (it fills ``{{ http_artifact_base }}``…). ``state`` is where the lab's state (DUTs
/// added, jobs set, counted reads, the access log) is kept: None for SQLite in ``data_dir``,
/// or ``"postgres://…"``; a Server started again on the same state serves what it served.
/// Raises :class:`citron.ServerError` if an address cannot be bound.
///
/// >>> import citron
/// >>> srv = citron.Server(lab=citron.Lab.default(), http="127.0.0.1:0", tftp=None)
/// >>> srv.http_address[1] > 0, srv.tftp_address
/// (True, None)
/// >>> srv.stop()
#[pyclass(frozen, module = "citron")]
pub struct Server {
    gateway: Gateway,
    /// Always `Some` until `Drop` takes it.
    rt: Option<Runtime>,
    running: Mutex<Option<RunningServer>>,
    bound: BoundAddrs,
    data_dir: PathBuf,
    /// The temporary data directory, removed on drop (after the runtime is gone).
    tmp: Option<tempfile::TempDir>,
}

/// The addresses the backends were bound to (port 0 resolved), kept after `stop()`.
#[derive(Debug, Clone, Copy, Default)]
struct BoundAddrs {
    http: Option<SocketAddr>,
    tftp: Option<SocketAddr>,
    nbd: Option<SocketAddr>,
    api: Option<SocketAddr>,
}

/// `lab=` for a server: a `Lab`, a lab file path, or None (the default lab).
#[derive(FromPyObject)]
enum LabArg<'py> {
    Lab(PyRef<'py, Lab>),
    Path(PathBuf),
}

/// `job=` for `set_job`: a parsed description or YAML text.
#[derive(FromPyObject)]
enum JobArg<'py> {
    Job(PyRef<'py, JobDescription>),
    Text(String),
}

fn parse_listen(what: &str, a: Option<&str>) -> Result<Option<SocketAddr>, Error> {
    match a {
        None => Ok(None),
        Some(s) => s.trim().parse().map(Some).map_err(|_| {
            Error::Server(format!(
                "{what}={s:?} is not a socket address; write host:port like \"127.0.0.1:0\" (port 0 picks a free one) or \"[::1]:8080\", or None to not start it"
            ))
        }),
    }
}

fn addr_tuple<'py>(py: Python<'py>, a: Option<SocketAddr>) -> PyResult<Option<Bound<'py, PyTuple>>> {
    a.map(|a| PyTuple::new(py, [a.ip().to_string().into_pyobject(py)?.into_any(), a.port().into_pyobject(py)?.into_any()])).transpose()
}

/// How often a long call looks for Ctrl-C (`KeyboardInterrupt`) while it waits.
const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// Runs `fut` to completion with the GIL released, but gives up (dropping the future, which
/// cancels it) as soon as a Python signal handler raises, so that Ctrl-C interrupts a job load
/// stuck on a slow download just as it would interrupt Python code.
pub(crate) fn interruptible<F>(py: Python<'_>, rt: &Runtime, fut: F) -> PyResult<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    py.detach(|| {
        rt.block_on(async {
            tokio::pin!(fut);
            let mut tick = tokio::time::interval(SIGNAL_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    out = &mut fut => return Ok(out),
                    _ = tick.tick() => Python::attach(|py| py.check_signals())?,
                }
            }
        })
    })
}

impl Server {
    fn rt(&self) -> Result<&Runtime, Error> {
        self.rt.as_ref().ok_or_else(|| Error::Server("the server is being dropped".into()))
    }

    /// The API's URL and the token a client of it sends: `token`, else the lab's `api_token`.
    fn api_settings(&self, token: Option<String>) -> PyResult<(String, Option<String>)> {
        let Some(api) = self.bound.api else {
            return Err(Error::Server("this server has no API: start it with api=\"127.0.0.1:0\"".into()).into());
        };
        let token = match token {
            Some(t) => Some(t),
            None => {
                let env = std::env::var(citron_core::lab::API_TOKEN_ENV).ok();
                self.gateway.lab().resolve_api_token(env.as_deref()).map_err(|e| Error::Server(e.to_string()))?
            }
        };
        Ok((format!("http://{api}"), token))
    }

    fn known(&self, dut: &str) -> Result<DutId, Error> {
        let id = DutId::from(dut);
        if self.gateway.dut(&id).is_none() {
            return Err(Error::UnknownDut(dut.to_string()));
        }
        Ok(id)
    }

    pub(crate) fn render_context(&self, dut: &str, job_dir: Option<&Path>) -> Result<RenderContext, Error> {
        let id = self.known(dut)?;
        let d = self.gateway.dut(&id).ok_or_else(|| Error::UnknownDut(dut.to_string()))?;
        Ok(self.gateway.render_context(&d, job_dir))
    }

    pub(crate) fn gateway_duts(&self) -> Vec<Dut> {
        self.gateway.duts()
    }
}

#[pymethods]
impl Server {
    // The constructor's documentation is in the class docstring (Python shows that one).
    #[new]
    #[pyo3(
        signature = (lab = None, data_dir = None, *, http = Some("127.0.0.1:0"), tftp = Some("127.0.0.1:0"), nbd = Some("127.0.0.1:0"), api = None, advertise = None, state = None),
        text_signature = "(lab=None, data_dir=None, *, http='127.0.0.1:0', tftp='127.0.0.1:0', nbd='127.0.0.1:0', api=None, advertise=None, state=None)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        lab: Option<LabArg<'_>>,
        data_dir: Option<PathBuf>,
        http: Option<&str>,
        tftp: Option<&str>,
        nbd: Option<&str>,
        api: Option<&str>,
        advertise: Option<&str>,
        state: Option<&str>,
    ) -> PyResult<Server> {
        let config = match lab {
            None => LabConfig::default_lab(),
            Some(LabArg::Lab(l)) => l.config.clone(),
            Some(LabArg::Path(p)) => LabConfig::from_file(&p).map_err(Error::from)?,
        };
        let http = parse_listen("http", http)?;
        let tftp = parse_listen("tftp", tftp)?;
        let nbd = parse_listen("nbd", nbd)?;
        let api = parse_listen("api", api)?;
        let advertise: Option<IpAddr> = match advertise {
            None => None,
            Some(a) => Some(a.trim().parse().map_err(|_| {
                Error::Server(format!(
                    "advertise={a:?} is not an IP address; write the address DUTs reach this machine at, like \"10.0.2.2\""
                ))
            })?),
        };
        let (data_dir, tmp) = match data_dir {
            Some(d) => (d, None),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("citron-py-")
                    .tempdir()
                    .map_err(|e| Error::Server(format!("cannot create a temporary data directory: {e}")))?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let (gateway, state) = py.detach(|| citron_lab::state::open_gateway(config, &data_dir, state)).map_err(Error::from)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("citron-py")
            .enable_all()
            .build()
            .map_err(|e| Error::Server(format!("cannot start the tokio runtime: {e}")))?;
        // Results (runs, tokens) live in the same state: `client()` reaches them through the API.
        let results = citron_lab::results::Results::open(&state, &data_dir)
            .map_err(|e| Error::Server(format!("cannot open the lab's results in {}: {e}", data_dir.display())))?;
        let builder = ServerBuilder::new(gateway.clone())
            .http(http)
            .tftp(tftp)
            .nbd(nbd)
            .api(api)
            .advertise(advertise)
            .state(Some(state.info()))
            .feed(Some(state.feed().clone()))
            .results(Some(results));
        let running = py.detach(|| rt.block_on(builder.start())).map_err(Error::from)?;
        // Every stored job again (a restart on the same state serves what it served before),
        // once the servers are bound so that templates see the real ports.
        for (id, e) in py.detach(|| rt.block_on(gateway.restore_jobs(&[]))) {
            tracing::error!(dut = %id, error = %e, "its stored job could not be loaded again: it has no job until one is set");
        }
        let bound = BoundAddrs { http: running.http_addr(), tftp: running.tftp_addr(), nbd: running.nbd_addr(), api: running.api_addr() };
        Ok(Server { gateway, rt: Some(rt), running: Mutex::new(Some(running)), bound, data_dir, tmp })
    }

    /// ``(host, port)`` the HTTP server listens on, or None if it was not started.
    #[getter]
    fn http_address<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        addr_tuple(py, self.bound.http)
    }

    /// ``(host, port)`` of the TFTP server (UDP), or None.
    #[getter]
    fn tftp_address<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        addr_tuple(py, self.bound.tftp)
    }

    /// ``(host, port)`` of the NBD server, or None.
    #[getter]
    fn nbd_address<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        addr_tuple(py, self.bound.nbd)
    }

    /// ``(host, port)`` of the lab API (HTTP/JSON), or None.
    #[getter]
    fn api_address<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        addr_tuple(py, self.bound.api)
    }

    /// ``http://host:port`` as jobs see it in ``{{ http_artifact_base }}``, or None (no HTTP
    /// server, or a wildcard address without ``advertise``).
    ///
    /// >>> import citron
    /// >>> with citron.Server(tftp=None) as srv:
    /// ...     srv.http_url.startswith("http://127.0.0.1:")
    /// True
    #[getter]
    fn http_url(&self) -> Option<String> {
        self.bound.http?;
        // The value jobs get: the bound address, or what the lab's variables or `advertise` say.
        let vars = self.gateway.variables(&Dut::new("_", []));
        vars.get("http_artifact_base").filter(|v| !v.is_empty()).cloned()
    }

    /// A :class:`Client` of this server's API (started with ``api=``), with ``token`` or the
    /// lab's ``api_token``: the results, tokens and event feed of this lab, with the same
    /// classes (:class:`Run`, …) as for a remote citron. ``timeout`` as for :class:`Client`.
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     with srv.client() as c:
    /// ...         with c.results.open_run("build", revision="r1") as run:
    /// ...             _ = run.upload("out.txt", b"hello")
    /// ...         print(c.results.latest("build", "out.txt").read())
    /// b'hello'
    #[pyo3(signature = (token = None, timeout = 60.0))]
    fn client(&self, token: Option<String>, timeout: f64) -> PyResult<crate::client::Client> {
        let (url, token) = self.api_settings(token)?;
        crate::client::Client::open(&url, token, crate::client::seconds("timeout", timeout)?)
    }

    /// An :class:`AsyncClient` of this server's API: :meth:`client` for asyncio.
    ///
    /// >>> import asyncio, citron
    /// >>> async def main(c: citron.AsyncClient) -> None:
    /// ...     async with c:
    /// ...         print(await c.health())
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    /// ...     asyncio.run(main(srv.async_client()))
    /// True
    #[pyo3(signature = (token = None, timeout = 60.0))]
    fn async_client(&self, token: Option<String>, timeout: f64) -> PyResult<crate::aio::AsyncClient> {
        let (url, token) = self.api_settings(token)?;
        crate::aio::AsyncClient::open(&url, token, crate::client::seconds("timeout", timeout)?)
    }

    /// Where the cache and disks live.
    #[getter]
    fn data_dir(&self) -> String {
        self.data_dir.display().to_string()
    }

    /// True until :meth:`stop`.
    #[getter]
    fn running(&self) -> bool {
        self.running.lock().is_some()
    }

    /// The DUTs, as dicts (``id``, ``machine_id``, ``ip``, ``mac``, ``serial``, ``tags``).
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None) as srv:
    /// ...     [d["id"] for d in srv.duts()]
    /// ['dut1', 'dut2']
    fn duts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let l = PyList::empty(py);
        for d in self.gateway.duts() {
            l.append(dut_dict(py, &d)?)?;
        }
        Ok(l)
    }

    /// Adds a DUT while running; its requests are recognised by the ``ip`` source addresses.
    /// Raises :class:`citron.LabError` for a taken id or address.
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None) as srv:
    /// ...     srv.add_dut("dut3", ip=["127.0.0.4"], tags=["arm64"])
    /// ...     srv.duts()[-1]["ip"]
    /// ['127.0.0.4']
    #[pyo3(signature = (id, ip = Vec::new(), mac = None, tags = Vec::new(), machine_id = None, serial = None))]
    fn add_dut(
        &self,
        id: &str,
        ip: Vec<String>,
        mac: Option<String>,
        tags: Vec<String>,
        machine_id: Option<String>,
        serial: Option<String>,
    ) -> PyResult<()> {
        let dut = make_dut(id, ip, mac, tags, machine_id, serial)?;
        self.gateway.add_dut(dut).map_err(Error::from)?;
        Ok(())
    }

    /// Removes a DUT and its job. Raises :class:`citron.UnknownDutError`.
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None) as srv:
    /// ...     srv.remove_dut("dut2")
    /// ...     [d["id"] for d in srv.duts()]
    /// ['dut1']
    fn remove_dut(&self, id: &str) -> PyResult<()> {
        self.gateway.remove_dut(&DutId::from(id)).map_err(Error::from)?;
        Ok(())
    }

    /// Loads ``job`` (a :class:`JobDescription`, or YAML text named ``filename`` in errors) as
    /// ``dut``'s job: renders it, fetches every artifact into the cache (the GIL is released
    /// meanwhile) and replaces any previous job; counts as a ``job_start``. Returns what is now
    /// served. Raises :class:`citron.JobError`, :class:`citron.FetchError` or
    /// :class:`citron.UnknownDutError`; Ctrl-C interrupts a slow load (``KeyboardInterrupt``,
    /// the previous job stays).
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None) as srv:
    /// ...     r = srv.set_job("dut1", "deployment:\n  start:\n    kernel: {data: k}\n")
    /// ...     r.artifacts[0].path
    /// 'boot/dut1/kernel'
    #[pyo3(signature = (dut, job, filename = None))]
    fn set_job(&self, py: Python<'_>, dut: &str, job: JobArg<'_>, filename: Option<&str>) -> PyResult<ResolvedJob> {
        let id = self.known(dut)?;
        let job: JobDescription = match job {
            JobArg::Job(j) => j.clone(),
            JobArg::Text(t) => JobDescription::parse(&t, filename)?,
        };
        let rt = self.rt()?;
        let gw = &self.gateway;
        let load = async {
            if job.from_file {
                gw.set_trusted_job(&id, &job.inner).await
            } else {
                gw.set_job(&id, &job.inner).await
            }
        };
        interruptible(py, rt, load)?.map_err(Error::from)?;
        let resolved = self.gateway.job(&id).ok_or_else(|| Error::UnknownDut(dut.to_string()))?;
        let mid = self.gateway.dut(&id).map(|d| d.machine_id().to_string()).unwrap_or_else(|| dut.to_string());
        Ok(ResolvedJob::from_core(&resolved, &mid))
    }

    /// ``dut``'s active job as rendered, or None.
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None) as srv:
    /// ...     srv.job("dut1") is None
    /// True
    fn job(&self, dut: &str) -> PyResult<Option<ResolvedJob>> {
        let id = self.known(dut)?;
        let mid = self.gateway.dut(&id).map(|d| d.machine_id().to_string()).unwrap_or_else(|| dut.to_string());
        Ok(self.gateway.job(&id).map(|r| ResolvedJob::from_core(&r, &mid)))
    }

    /// Drops ``dut``'s job: its files disappear from its namespace. Returns whether it had one.
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None) as srv:
    /// ...     srv.clear_job("dut1")
    /// False
    fn clear_job(&self, dut: &str) -> PyResult<bool> {
        Ok(self.gateway.clear_job(&DutId::from(dut)).map_err(Error::from)?)
    }

    /// Tells citron something happened to ``dut``: ``"boot"`` (resets ``access_count``; from the
    /// second boot the job's ``continue`` deployment is served), ``"job_start"`` or ``"job_end"``.
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None) as srv:
    /// ...     srv.event("dut1", "boot")
    #[pyo3(signature = (dut, event = "boot"))]
    fn event(&self, dut: &str, event: &str) -> PyResult<()> {
        let ev: Event = event.parse().map_err(PyValueError::new_err)?;
        self.gateway.event(&DutId::from(dut), ev).map_err(Error::from)?;
        Ok(())
    }

    /// ``dut``'s access log, oldest first: dicts with ``seq`` (increasing, never reused),
    /// ``time`` (Unix seconds), ``protocol``, ``path`` (cut to ``limits.logged_path_max``),
    /// ``bytes``, ``outcome`` (``"served"``, ``"aborted"``, ``"refused"``) and ``reason`` (why it
    /// was refused, else None): the same keys and values as the records of
    /// ``GET /api/v1/duts/{id}/accesses`` (they are made from the same JSON). With ``after`` and
    /// ``limit``, one page: at most ``limit`` records whose ``seq`` is above ``after``.
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None) as srv:
    /// ...     srv.accesses("dut1")
    /// []
    #[pyo3(signature = (dut, after = 0, limit = None))]
    fn accesses<'py>(&self, py: Python<'py>, dut: &str, after: u64, limit: Option<usize>) -> PyResult<Bound<'py, PyAny>> {
        let recs = self.gateway.accesses_page(&DutId::from(dut), after, limit.unwrap_or(usize::MAX)).map_err(Error::from)?;
        // The REST API's JSON, parsed by Python: one shape for both, by construction.
        let text = serde_json::to_string(&recs).map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
        py.import("json")?.call_method1("loads", (text,))
    }

    /// Every metric of the lab in the OpenMetrics text format, as ``GET /metrics`` answers:
    /// requests, bytes and refusals by protocol and DUT, cache hits and misses.
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None) as srv:
    /// ...     "citron_cache_hits_total" in srv.metrics()
    /// True
    fn metrics(&self) -> String {
        citron_lab::metrics::Metrics::new(&self.gateway).encode()
    }

    /// Stops the backends: they stop accepting, let transfers in flight finish (bounded grace
    /// period) and close their sockets; it waits for that with the GIL released. The ports are
    /// free when it returns. Calling it again does nothing.
    ///
    /// >>> import citron
    /// >>> srv = citron.Server(tftp=None)
    /// >>> srv.stop(); srv.running
    /// False
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        let Some(running) = self.running.lock().take() else {
            return Ok(());
        };
        let rt = self.rt()?;
        py.detach(|| rt.block_on(running.shutdown()));
        Ok(())
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
        self.stop(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let f = |a: Option<SocketAddr>| a.map(|a| format!("'{a}'")).unwrap_or_else(|| "None".into());
        format!(
            "Server(http={}, tftp={}, nbd={}, api={}, running={})",
            f(self.bound.http),
            f(self.bound.tftp),
            f(self.bound.nbd),
            f(self.bound.api),
            if self.running() { "True" } else { "False" }
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Dropping a RunningServer tells its backends to stop, without waiting.
        drop(self.running.get_mut().take());
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        drop(self.tmp.take());
    }
}
