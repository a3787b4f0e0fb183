//! `client.duts` (DUTs, their jobs, events and access logs) and what the lab says of itself
//! (`Version`), with their answer classes `Dut`, `DutJob`, `Version`, `StateVersion`.

use std::collections::VecDeque;
use std::sync::Arc;

use citron_client::NewDut;
use parking_lot::Mutex;
use pyo3::prelude::*;

use super::{exclusive, Conn};

/// Records one page of `accesses()` brings.
pub(crate) const PAGE: u32 = 1000;

/// A DUT as a remote lab knows it (``client.duts``): ``id``, ``machine_id``, ``mac``,
/// ``serial``, ``ip`` (its source addresses), ``tags``, ``job`` (its job's origin, None
/// without one), ``gateway`` (the gateway that serves it) and ``online`` (whether that gateway
/// heartbeats).
///
/// >>> import citron
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
/// ...     d = c.duts.get("dut1")
/// ...     print(d.id, d.ip, d.job, d.online)
/// dut1 ['127.0.0.2'] None True
#[pyclass(frozen, get_all, eq, module = "citron")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dut {
    /// Its id.
    pub id: String,
    /// Its machine id.
    pub machine_id: String,
    /// Its MAC address.
    pub mac: Option<String>,
    /// Its serial.
    pub serial: Option<String>,
    /// Its addresses.
    pub ip: Vec<String>,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its job's origin.
    pub job: Option<String>,
    /// Its gateway.
    pub gateway: Option<String>,
    /// Whether its gateway is online.
    pub online: bool,
}

impl From<citron_client::DutInfo> for Dut {
    fn from(d: citron_client::DutInfo) -> Self {
        Dut {
            id: d.id,
            machine_id: d.machine_id,
            mac: d.mac,
            serial: d.serial,
            ip: d.ip,
            tags: d.tags,
            job: d.job,
            gateway: d.gateway,
            online: d.online,
        }
    }
}

#[pymethods]
impl Dut {
    fn __repr__(&self) -> String {
        format!("Dut(id={:?}, ip={:?}, job={:?})", self.id, self.ip, self.job)
    }
}

/// A DUT's job as it was set (``client.duts.job``): ``yaml`` (None for a job given as parsed
/// code), ``origin`` (``api:<dut>``, the job file, or a tool's name) and ``set_at`` (Unix
/// seconds).
///
/// >>> import citron
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
/// ...     _ = c.duts.set_job("dut1", "deployment: {start: {kernel: {data: k}}}")
/// ...     j = c.duts.job("dut1")
/// ...     print(j.origin, j.yaml, j.set_at > 0)
/// api:dut1 deployment: {start: {kernel: {data: k}}} True
#[pyclass(frozen, get_all, eq, module = "citron")]
#[derive(Debug, Clone, PartialEq)]
pub struct DutJob {
    /// The YAML as set.
    pub yaml: Option<String>,
    /// Where it came from.
    pub origin: String,
    /// When it was set, Unix seconds.
    pub set_at: f64,
}

#[pymethods]
impl DutJob {
    fn __repr__(&self) -> String {
        format!("DutJob(origin={:?}, set_at={})", self.origin, self.set_at)
    }
}

/// The lab's state store: ``engine`` (``"sqlite"``, ``"postgres"``) and ``schema_version``
/// (the newest migration applied).
///
/// >>> import citron, tempfile
/// >>> with tempfile.TemporaryDirectory() as d:
/// ...     with citron.Server(None, d, http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
/// ...         s = c.version().state
/// ...         print(s.engine if s else None, s.schema_version > 0 if s else None)
/// sqlite True
#[pyclass(frozen, get_all, eq, module = "citron")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateVersion {
    /// `sqlite` or `postgres`.
    pub engine: String,
    /// The newest migration applied.
    pub schema_version: i64,
}

/// citron's ``version`` and its ``state`` store's (:class:`StateVersion`; None when the lab
/// keeps its state in memory only): :meth:`Client.version`.
///
/// >>> import citron
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
/// ...     v = c.version()
/// ...     print(v.version == citron.__version__, v.state.engine if v.state else None)
/// True sqlite
#[pyclass(frozen, get_all, eq, module = "citron")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// citron's version.
    pub version: String,
    /// The state store's.
    pub state: Option<StateVersion>,
}

impl From<citron_client::Version> for Version {
    fn from(v: citron_client::Version) -> Self {
        Version { version: v.version, state: v.state.map(|s| StateVersion { engine: s.engine, schema_version: s.schema_version }) }
    }
}

/// ``client.duts``: the lab's DUTs, their jobs, events and access logs. Adding and removing
/// DUTs is the administrator's; a reservation's token (``Reservation.token``) sets jobs,
/// sends events and reads access logs of its own DUTs.
///
/// >>> import citron
/// >>> job = "deployment:\n  start:\n    storage:\n      http:\n        - {path: /hello.txt, data: hi}\n"
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
/// ...     d = c.duts.add("d9", ip=["127.0.0.9"], tags=["spare"])
/// ...     print(c.duts.set_job("d9", job).job, c.duts.job("d9").origin)
/// ...     c.duts.event("d9", "boot")
/// ...     c.duts.clear_job("d9"); c.duts.remove("d9")
/// ...     print([d.id for d in c.duts.list()])
/// api:d9 api:d9
/// ['dut1', 'dut2']
#[pyclass(frozen, module = "citron")]
pub struct Duts {
    pub(crate) conn: Arc<Conn>,
}

#[pymethods]
impl Duts {
    /// Every DUT of the lab (of every gateway): a list of :class:`Dut`.
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     print([(d.id, d.ip) for d in c.duts.list()])
    /// [('dut1', ['127.0.0.2']), ('dut2', ['127.0.0.3'])]
    fn list(&self, py: Python<'_>) -> PyResult<Vec<Dut>> {
        Ok(self.conn.block(py, self.conn.client.duts())?.into_iter().map(Dut::from).collect())
    }

    /// DUT ``id`` (:class:`NotFoundError` when there is none).
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     print(c.duts.get("dut2").machine_id)
    /// dut2
    fn get(&self, py: Python<'_>, id: &str) -> PyResult<Dut> {
        Ok(self.conn.block(py, self.conn.client.dut(id))?.into())
    }

    /// Adds DUT ``id`` to the gateway asked, with its source addresses ``ip``
    /// (:class:`ConflictError` when the id or an address is taken).
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     print(c.duts.add("d9", ip=["127.0.0.9"], mac="52:54:00:00:00:09").mac)
    /// 52:54:00:00:00:09
    #[pyo3(signature = (id, *, ip = Vec::new(), mac = None, serial = None, tags = Vec::new(), machine_id = None))]
    #[allow(clippy::too_many_arguments)] // the lab file's keys, as Python keywords
    fn add(
        &self,
        py: Python<'_>,
        id: String,
        ip: Vec<String>,
        mac: Option<String>,
        serial: Option<String>,
        tags: Vec<String>,
        machine_id: Option<String>,
    ) -> PyResult<Dut> {
        let d = NewDut { id, machine_id, mac, serial, ip, tags };
        Ok(self.conn.block(py, self.conn.client.add_dut(&d))?.into())
    }

    /// Removes DUT ``id`` and its job.
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     c.duts.remove("dut2")
    /// ...     print([d.id for d in c.duts.list()])
    /// ['dut1']
    fn remove(&self, py: Python<'_>, id: &str) -> PyResult<()> {
        self.conn.block(py, self.conn.client.remove_dut(id))
    }

    /// DUT ``id``'s job as it was set: a :class:`DutJob` (:class:`NotFoundError` when it has
    /// none).
    ///
    /// >>> job = "deployment:\n  start:\n    storage:\n      http:\n        - {path: /hi.txt, data: hi}\n"
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     _ = c.duts.set_job("dut1", job)
    /// ...     print(c.duts.job("dut1").yaml == job)
    /// True
    fn job(&self, py: Python<'_>, id: &str) -> PyResult<DutJob> {
        let j = self.conn.block(py, self.conn.client.job(id))?;
        Ok(DutJob { yaml: j.yaml, origin: j.origin, set_at: j.set_at })
    }

    /// Sets DUT ``id``'s job (its YAML), answered once every artifact is fetched;
    /// ``revision`` is what the job's run records as built or tested (a job with
    /// ``results:``). An invalid job raises :class:`ApiError` (422) with every error.
    ///
    /// >>> job = "deployment:\n  start:\n    storage:\n      http:\n        - {path: /hi.txt, data: hi}\n"
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     print(c.duts.set_job("dut1", job).job)
    /// ...     try:
    /// ...         c.duts.set_job("dut1", "deployment: {start: {colour: red}}")
    /// ...     except citron.ApiError as e:
    /// ...         print(e.status)
    /// api:dut1
    /// 422
    #[pyo3(signature = (id, job, *, revision = None))]
    fn set_job(&self, py: Python<'_>, id: &str, job: &str, revision: Option<&str>) -> PyResult<Dut> {
        Ok(self.conn.block(py, self.conn.client.set_job(id, job, revision))?.into())
    }

    /// Drops DUT ``id``'s job (none is fine).
    ///
    /// >>> job = "deployment:\n  start:\n    storage:\n      http:\n        - {path: /hi.txt, data: hi}\n"
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     _ = c.duts.set_job("dut1", job)
    /// ...     c.duts.clear_job("dut1")
    /// ...     print(c.duts.get("dut1").job)
    /// None
    fn clear_job(&self, py: Python<'_>, id: &str) -> PyResult<()> {
        self.conn.block(py, self.conn.client.clear_job(id))
    }

    /// Tells citron ``event`` (``"boot"``, ``"job_start"``, ``"job_end"``) happened to DUT
    /// ``id``: lifetimes reset as its job says; ``job_end`` closes the job's run with
    /// ``status`` (``"success"``, ``"failure"``, ``"unknown"``) and drops the job.
    ///
    /// >>> import citron
    /// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     c.duts.event("dut1", "boot")
    /// ...     print([e.type for e in c.events(dut="dut1", timeout=1.0)])
    /// ['boot']
    #[pyo3(signature = (id, event = "boot", *, status = None))]
    fn event(&self, py: Python<'_>, id: &str, event: &str, status: Option<&str>) -> PyResult<()> {
        self.conn.block(py, self.conn.client.dut_event(id, event, status))
    }

    /// DUT ``id``'s access log from record ``after`` (a ``seq``; 0: the start), oldest first:
    /// an iterator of ``AccessRecord`` dicts (the keys of ``Server.accesses``) that fetches a
    /// page at a time.
    ///
    /// >>> import citron, http.client, time
    /// >>> job = "deployment:\n  start:\n    storage:\n      http:\n        - {path: /hi.txt, data: hi}\n"
    /// >>> with citron.Server(tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     _ = c.duts.set_job("dut1", job)
    /// ...     h = http.client.HTTPConnection(*srv.http_address, source_address=("127.0.0.2", 0))
    /// ...     h.request("GET", "/hi.txt"); _ = h.getresponse().read(); h.close()
    /// ...     for _ in range(200):   # a read is logged once the server lets go of the file
    /// ...         log = list(c.duts.accesses("dut1"))
    /// ...         if log:
    /// ...             break
    /// ...         time.sleep(0.05)
    /// ...     print([(r["path"], r["outcome"]) for r in log])
    /// [('/hi.txt', 'served')]
    #[pyo3(signature = (id, after = 0))]
    fn accesses(&self, id: &str, after: u64) -> AccessesIter {
        AccessesIter { conn: self.conn.clone(), dut: id.to_string(), state: Mutex::new((VecDeque::new(), Some(after))) }
    }
}

/// A DUT's access log, page by page (:meth:`Duts.accesses`).
///
/// >>> import citron
/// >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
/// ...     print(list(c.duts.accesses("dut1")))
/// []
#[pyclass(frozen, module = "citron")]
pub struct AccessesIter {
    conn: Arc<Conn>,
    dut: String,
    /// The page being read, and where the next starts (None: no more).
    state: Mutex<(VecDeque<serde_json::Value>, Option<u64>)>,
}

#[pymethods]
impl AccessesIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let mut guard = exclusive(&self.state)?;
        let (buf, after) = &mut *guard;
        if buf.is_empty() {
            let Some(a) = *after else { return Ok(None) };
            let page = self.conn.block(py, self.conn.client.accesses(&self.dut, a, PAGE))?;
            *after = page.next;
            buf.extend(page.records);
        }
        match buf.pop_front() {
            Some(r) => Ok(Some(py.import("json")?.call_method1("loads", (r.to_string(),))?)),
            None => Ok(None),
        }
    }
}
