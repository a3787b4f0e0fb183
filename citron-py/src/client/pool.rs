//! `client.pool` and `client.reserve(...)`: the DUT pool's reservations and DUTs.
//!
//! Durations are Python floats of seconds; the REST API's `30s` strings are made here
//! (`citron_client::duration_text`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use citron_client::{duration_text, Request};
use parking_lot::Mutex;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::types::{PoolDut, Reservation};
use super::{seconds, Conn};
use crate::errors::classes;

/// Reservations one page of `list()` brings.
pub(crate) const PAGE: u32 = 100;

/// `id`: a reservation's id or the `Reservation` itself.
#[derive(FromPyObject)]
pub(crate) enum ResArg<'py> {
    Reservation(PyRef<'py, Reservation>),
    Id(i64),
}

impl ResArg<'_> {
    pub(crate) fn id(&self) -> i64 {
        match self {
            ResArg::Reservation(r) => r.id,
            ResArg::Id(i) => *i,
        }
    }
}

/// What a request asks for, from the Python arguments.
#[derive(Debug, Clone)]
pub(crate) struct Ask {
    pub(crate) tags: Vec<String>,
    pub(crate) kind: Option<String>,
    pub(crate) arch: Option<String>,
    pub(crate) model: Option<String>,
    pub(crate) count: u32,
    pub(crate) lifetime: Option<f64>,
    pub(crate) priority: i64,
    pub(crate) job: Option<String>,
}

impl Ask {
    /// The API's request body (a bad `kind` or `lifetime` is a `ValueError`).
    pub(crate) fn request(self) -> PyResult<Request> {
        let kind = match self.kind {
            Some(k) => Some(
                serde_json::from_value(serde_json::Value::String(k.clone()))
                    .map_err(|_| PyValueError::new_err(format!("kind {k:?}: use \"baremetal\" or \"vm\"")))?,
            ),
            None => None,
        };
        let lifetime = self.lifetime.map(|l| seconds("lifetime", l).map(duration_text)).transpose()?;
        Ok(Request {
            tags: self.tags,
            kind,
            arch: self.arch,
            model: self.model,
            count: self.count,
            lifetime,
            priority: self.priority,
            job: self.job,
        })
    }
}

/// The error `reserve()` raises when the pool did not allocate in time.
pub(crate) fn timeout_error(py: Python<'_>, id: i64, wait: Duration) -> PyErr {
    let msg = format!(
        "reservation {id} was not allocated within {}s: the pool has no free DUTs that match; the request was withdrawn",
        wait.as_secs_f64()
    );
    match classes(py).and_then(|c| c.reservation_timeout.bind(py).call1((msg, id))) {
        Ok(v) => PyErr::from_value(v),
        Err(e) => e,
    }
}

/// ``client.pool``: reservations (a ``reserve``-scope token; each tenant sees its own) and
/// the pool's DUTs (the administrator's).
///
/// A request that cannot be met yet waits in the pool's queue (``state == "waiting"``);
/// :meth:`get` with ``wait`` long-polls until it is allocated. :meth:`Client.reserve` does
/// all of it in a ``with`` block and releases at its end.
///
/// >>> import citron
/// >>> lab = citron.Lab.from_yaml("duts:\n  - {id: d1, ip: [127.0.0.21], tags: [x]}\n")
/// >>> with citron.Server(lab, http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
/// ...     first = c.pool.request(tags=["x"])
/// ...     second = c.pool.request(tags=["x"])          # the only DUT is taken: it waits
/// ...     print(first.state, second.state)
/// ...     _ = c.pool.release(first)
/// ...     print(c.pool.get(second, wait=10.0).state, [r.id for r in c.pool.list()] == [first.id, second.id])
/// allocated waiting
/// allocated True
#[pyclass(frozen, module = "citron")]
pub struct Pool {
    pub(crate) conn: Arc<Conn>,
}

#[pymethods]
impl Pool {
    /// Asks for ``count`` DUTs (all or none) with every tag of ``tags``, of ``kind``
    /// (``"baremetal"``, ``"vm"``), ``arch`` and ``model`` when given, held ``lifetime``
    /// seconds once allocated (the pool's default when None), served before lower
    /// ``priority`` (capped by the tenant's maximum), with ``job`` (YAML) set on each DUT
    /// once allocated. Answers at once, ``"waiting"`` or ``"allocated"``; a request the pool
    /// can never meet raises :class:`ApiError` (400) naming the limit.
    ///
    /// >>> import citron
    /// >>> lab = citron.Lab.from_yaml("duts:\n  - {id: d1, ip: [127.0.0.21], tags: [x]}\n")
    /// >>> with citron.Server(lab, http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     try:
    /// ...         c.pool.request(tags=["x"], count=2)
    /// ...     except citron.ApiError as e:
    /// ...         print(e.status)
    /// 400
    #[pyo3(signature = (tags = Vec::new(), *, kind = None, arch = None, model = None, count = 1, lifetime = None, priority = 0, job = None))]
    #[allow(clippy::too_many_arguments)] // the REST body's fields, as Python keywords
    fn request(
        &self,
        py: Python<'_>,
        tags: Vec<String>,
        kind: Option<String>,
        arch: Option<String>,
        model: Option<String>,
        count: u32,
        lifetime: Option<f64>,
        priority: i64,
        job: Option<String>,
    ) -> PyResult<Reservation> {
        let req = Ask { tags, kind, arch, model, count, lifetime, priority, job }.request()?;
        Ok(self.conn.block(py, self.conn.client.request_reservation(&req))?.into())
    }

    /// Reservation ``id`` (its id or the :class:`Reservation`); with ``wait`` (seconds), once
    /// it left ``"waiting"`` or after that long, whichever comes first.
    ///
    /// >>> import citron
    /// >>> lab = citron.Lab.from_yaml("duts:\n  - {id: d1, ip: [127.0.0.21], tags: [x]}\n")
    /// >>> with citron.Server(lab, http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     r = c.pool.request(tags=["x"])
    /// ...     print(c.pool.get(r.id).state, c.pool.get(r, wait=1.0).state)
    /// allocated allocated
    #[pyo3(signature = (id, *, wait = None))]
    fn get(&self, py: Python<'_>, id: ResArg<'_>, wait: Option<f64>) -> PyResult<Reservation> {
        let id = id.id();
        let r = match wait {
            None => self.conn.block(py, self.conn.client.reservation(id, None))?,
            Some(w) => {
                let w = seconds("wait", w)?;
                let c = self.conn.client.clone();
                self.conn.block(py, async move {
                    let r = c.reservation(id, None).await?;
                    c.wait_reservation(r, w).await
                })?
            }
        };
        Ok(r.into())
    }

    /// The caller's reservations (every one for the administrator), oldest first, only those
    /// in ``state`` when given: an iterator that fetches one page at a time.
    ///
    /// >>> import citron
    /// >>> lab = citron.Lab.from_yaml("duts:\n  - {id: d1, ip: [127.0.0.21], tags: [x]}\n")
    /// >>> with citron.Server(lab, http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     ids = [c.pool.request(tags=["x"]).id for _ in range(2)]
    /// ...     print([r.state for r in c.pool.list()], [r.id for r in c.pool.list("waiting")] == ids[1:])
    /// ['allocated', 'waiting'] True
    #[pyo3(signature = (state = None))]
    fn list(&self, state: Option<String>) -> ReservationsIter {
        ReservationsIter { conn: self.conn.clone(), state, buf: Mutex::new((VecDeque::new(), Some(0))) }
    }

    /// Done with reservation ``id``: its DUTs go back to the pool (idempotent: an ended one
    /// is answered as it is).
    ///
    /// >>> import citron
    /// >>> lab = citron.Lab.from_yaml("duts:\n  - {id: d1, ip: [127.0.0.21], tags: [x]}\n")
    /// >>> with citron.Server(lab, http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     r = c.pool.request()
    /// ...     print(c.pool.release(r).state, c.pool.release(r.id).state)
    /// released released
    fn release(&self, py: Python<'_>, id: ResArg<'_>) -> PyResult<Reservation> {
        Ok(self.conn.block(py, self.conn.client.release(id.id()))?.into())
    }

    /// Reservation ``id`` failed; its DUTs are kept aside ``keep`` seconds for debugging
    /// (None: back to the pool now).
    ///
    /// >>> import citron
    /// >>> lab = citron.Lab.from_yaml("duts:\n  - {id: d1, ip: [127.0.0.21]}\n")
    /// >>> with citron.Server(lab, http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     r = c.pool.fail(c.pool.request(), keep=3600.0)
    /// ...     print(r.state, r.keep_until is not None, [d.state for d in c.pool.duts()])
    /// failed True ['kept']
    #[pyo3(signature = (id, *, keep = None))]
    fn fail(&self, py: Python<'_>, id: ResArg<'_>, keep: Option<f64>) -> PyResult<Reservation> {
        let keep = keep.map(|k| seconds("keep", k)).transpose()?;
        Ok(self.conn.block(py, self.conn.client.fail(id.id(), keep))?.into())
    }

    /// A new ``lifetime`` (seconds, from the allocation) for reservation ``id``, within the
    /// tenant's maximum (:class:`ApiError` 400 beyond it).
    ///
    /// >>> import citron
    /// >>> lab = citron.Lab.from_yaml("duts:\n  - {id: d1, ip: [127.0.0.21]}\n")
    /// >>> with citron.Server(lab, http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     print(c.pool.extend(c.pool.request(lifetime=60.0), 120.0).lifetime)
    /// 120.0
    fn extend(&self, py: Python<'_>, id: ResArg<'_>, lifetime: f64) -> PyResult<Reservation> {
        let l = seconds("lifetime", lifetime)?;
        Ok(self.conn.block(py, self.conn.client.extend(id.id(), l))?.into())
    }

    /// Every DUT of the pool and its state (the administrator's): a list of :class:`PoolDut`.
    ///
    /// >>> import citron
    /// >>> lab = citron.Lab.from_yaml("duts:\n  - {id: d1, ip: [127.0.0.21], tags: [x]}\n")
    /// >>> with citron.Server(lab, http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     _ = c.pool.request()
    /// ...     print([(d.id, d.state, d.uses) for d in c.pool.duts()])
    /// [('d1', 'allocated', 1)]
    fn duts(&self, py: Python<'_>) -> PyResult<Vec<PoolDut>> {
        Ok(self.conn.block(py, self.conn.client.pool_duts())?.into_iter().map(PoolDut::from).collect())
    }

    /// Puts DUT ``dut`` back into the pool (also out of quarantine; the administrator's).
    ///
    /// >>> import citron
    /// >>> lab = citron.Lab.from_yaml("duts:\n  - {id: d1, ip: [127.0.0.21], tags: [x]}\n")
    /// >>> with citron.Server(lab, http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     _ = c.pool.disable("d1")
    /// ...     print(c.pool.enable("d1").state)
    /// free
    fn enable(&self, py: Python<'_>, dut: &str) -> PyResult<PoolDut> {
        Ok(self.conn.block(py, self.conn.client.set_pool_dut(dut, true))?.into())
    }

    /// Takes DUT ``dut`` out of the pool (the administrator's; :class:`ConflictError` while a
    /// reservation holds it).
    ///
    /// >>> import citron
    /// >>> lab = citron.Lab.from_yaml("duts:\n  - {id: d1, ip: [127.0.0.21], tags: [x]}\n")
    /// >>> with citron.Server(lab, http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    /// ...     print(c.pool.disable("d1").state, c.pool.request().state)
    /// disabled waiting
    fn disable(&self, py: Python<'_>, dut: &str) -> PyResult<PoolDut> {
        Ok(self.conn.block(py, self.conn.client.set_pool_dut(dut, false))?.into())
    }
}

/// The caller's reservations, page by page (:meth:`Pool.list`).
///
/// >>> import citron
/// >>> lab = citron.Lab.from_yaml("duts:\n  - {id: d1, ip: [127.0.0.21], tags: [x]}\n")
/// >>> with citron.Server(lab, http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
/// ...     _ = c.pool.request(); _ = c.pool.request()
/// ...     print([r.state for r in c.pool.list()])
/// ['allocated', 'waiting']
#[pyclass(frozen, module = "citron")]
pub struct ReservationsIter {
    conn: Arc<Conn>,
    state: Option<String>,
    /// The page being read, and where the next starts (None: no more).
    buf: Mutex<(VecDeque<Reservation>, Option<i64>)>,
}

#[pymethods]
impl ReservationsIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Reservation>> {
        let mut guard = super::exclusive(&self.buf)?;
        let (buf, after) = &mut *guard;
        if buf.is_empty() {
            let Some(a) = *after else { return Ok(None) };
            let page = self.conn.block(py, self.conn.client.reservations(self.state.as_deref(), a, PAGE))?;
            *after = page.next;
            buf.extend(page.reservations.into_iter().map(Reservation::from));
        }
        Ok(buf.pop_front())
    }
}

/// ``client.reserve(...)``: DUTs held for a ``with`` block. Entering asks for them and waits
/// (at most ``wait`` seconds) until they are allocated, answering the :class:`Reservation`
/// (the sequence of its DUTs); leaving releases it, also when the block raised. When the
/// wait runs out, the request is withdrawn and :class:`ReservationTimeout` raised.
///
/// >>> import citron
/// >>> lab = citron.Lab.from_yaml("duts:\n  - {id: d1, ip: [127.0.0.21], tags: [x]}\n")
/// >>> with citron.Server(lab, http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
/// ...     with c.reserve(tags=["x"], wait=10.0) as duts:
/// ...         print([d.id for d in duts], c.pool.get(duts.id).state)
/// ...     print(c.pool.get(duts.id).state)
/// ['d1'] allocated
/// released
#[pyclass(frozen, module = "citron")]
pub struct Reserve {
    pub(crate) conn: Arc<Conn>,
    pub(crate) ask: Ask,
    pub(crate) wait: Duration,
    pub(crate) held: Mutex<Option<Reservation>>,
}

#[pymethods]
impl Reserve {
    /// The reservation while the block runs (None before it and once released).
    #[getter]
    fn reservation(&self) -> Option<Reservation> {
        self.held.lock().clone()
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<Reservation> {
        let req = self.ask.clone().request()?;
        let r = self.conn.block(py, self.conn.client.request_reservation(&req))?;
        let id = r.id;
        let c = self.conn.client.clone();
        let waited = self.conn.block(py, c.wait_reservation(r, self.wait));
        let failed = match waited {
            Ok(r) if r.state == "allocated" => {
                let r = Reservation::from(r);
                *self.held.lock() = Some(r.clone());
                return Ok(r);
            }
            Ok(r) if r.state == "waiting" => timeout_error(py, id, self.wait),
            Ok(r) => PyErr::from(crate::errors::Error::Client(citron_client::ClientError::Protocol(format!(
                "reservation {id} ended before it was allocated: {} ({})",
                r.state,
                r.reason.as_deref().unwrap_or("no reason given")
            )))),
            Err(e) => e,
        };
        // Withdrawn, so that it does not take DUTs later for nobody (also after Ctrl-C).
        let _ = self.conn.block(py, self.conn.client.release(id));
        Err(failed)
    }

    #[pyo3(signature = (_exc_type = None, _exc = None, _tb = None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: Option<Bound<'_, PyAny>>,
        _exc: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let held = self.held.lock().take();
        if let Some(r) = held {
            let released = self.conn.block(py, self.conn.client.release(r.id));
            // The block's own exception matters more than a failure to release.
            if _exc_type.is_none_or(|t| t.is_none()) {
                released?;
            }
        }
        Ok(false)
    }

    fn __repr__(&self) -> String {
        match &*self.held.lock() {
            Some(r) => format!("Reserve(held={})", r.id),
            None => "Reserve(held=None)".into(),
        }
    }
}
