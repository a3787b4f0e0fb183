//! `citron.Lab`: the lab description (DUTs, template variables, `file:` roots) as Python sees it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use citron_core::job::RenderContext;
use citron_core::lab::LabConfig;
use citron_core::namespace::{Dut, DutRegistry};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::Error;

/// A lab: its DUTs (who is who, by source address), the template variables its jobs see and the
/// directories `file:` sources may read.
///
/// Build one in code, or read a lab file; :meth:`Lab.default` is the embedded two-DUT lab
/// (``dut1`` at 127.0.0.2, ``dut2`` at 127.0.0.3) that ``citron serve`` uses without ``--lab``.
///
/// >>> import citron
/// >>> lab = citron.Lab(variables={"minio_url": "http://127.0.0.1:9000"})
/// >>> lab.add_dut("board1", ip=["127.0.0.2"], mac="52:54:00:00:00:01", tags=["arm64"])
/// >>> [d["id"] for d in lab.duts]
/// ['board1']
/// >>> lab.variables
/// {'minio_url': 'http://127.0.0.1:9000'}
///
/// ``Lab(variables=None, artifact_roots=None)`` is an empty lab (no DUTs) with these template
/// variables and ``file:`` roots; :meth:`add_dut` adds DUTs.
///
/// >>> citron.Lab(artifact_roots=["/srv/artifacts"]).artifact_roots
/// ['/srv/artifacts']
#[pyclass(module = "citron")]
#[derive(Debug, Clone)]
pub struct Lab {
    pub(crate) config: LabConfig,
}

/// A DUT as a plain dict, the shape `Lab.duts` and `Server.duts()` return.
pub(crate) fn dut_dict<'py>(py: Python<'py>, d: &Dut) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("id", &d.id.0)?;
    out.set_item("machine_id", d.machine_id())?;
    out.set_item("ip", PyList::new(py, d.ip.iter().map(|i| i.to_string()))?)?;
    out.set_item("mac", &d.mac)?;
    out.set_item("serial", &d.serial)?;
    out.set_item("tags", PyList::new(py, &d.tags)?)?;
    Ok(out)
}

/// Builds a [`Dut`] from the keyword arguments `add_dut` takes, with messages naming the argument.
pub(crate) fn make_dut(
    id: &str,
    ip: Vec<String>,
    mac: Option<String>,
    tags: Vec<String>,
    machine_id: Option<String>,
    serial: Option<String>,
) -> Result<Dut, Error> {
    let mut addrs = Vec::with_capacity(ip.len());
    for (i, a) in ip.iter().enumerate() {
        let parsed: IpAddr = a.trim().parse().map_err(|_| Error::LabCall {
            field: format!("ip[{i}]"),
            message: format!("DUT {id:?}: ip {a:?} is not an IP address (write e.g. \"127.0.0.2\" or \"::1\")"),
        })?;
        addrs.push(parsed);
    }
    Ok(Dut { machine_id, mac, serial, tags, ..Dut::new(id, addrs) })
}

impl Lab {
    /// The DUT with this id.
    pub(crate) fn dut(&self, id: &str) -> Result<Dut, Error> {
        self.config.duts.iter().find(|d| d.id.0 == id).cloned().ok_or_else(|| Error::UnknownDut(id.to_string()))
    }
}

/// The render context of a job for `dut` of a lab that is not running, as `citron validate` and
/// `citron render` build it: the endpoints `citron serve` has with its default addresses
/// (`http://127.0.0.1:8080`, ...), then the lab's variables, and the `file:` roots.
pub(crate) fn offline_context(lab: &LabConfig, dut: &Dut, job_dir: Option<&Path>) -> RenderContext {
    RenderContext::for_dut(lab, dut, &citron_lab::server::default_endpoints(), job_dir)
}

#[pymethods]
impl Lab {
    // The constructor's documentation is in the class docstring (Python shows that one).
    #[new]
    #[pyo3(signature = (variables = None, artifact_roots = None))]
    fn new(variables: Option<BTreeMap<String, String>>, artifact_roots: Option<Vec<PathBuf>>) -> Lab {
        Lab {
            config: LabConfig {
                variables: variables.unwrap_or_default(),
                artifact_roots: artifact_roots.unwrap_or_default(),
                ..LabConfig::default()
            },
        }
    }

    /// The embedded default lab: ``dut1`` at 127.0.0.2 and ``dut2`` at 127.0.0.3.
    ///
    /// >>> import citron
    /// >>> [(d["id"], d["ip"]) for d in citron.Lab.default().duts]
    /// [('dut1', ['127.0.0.2']), ('dut2', ['127.0.0.3'])]
    #[staticmethod]
    fn default() -> Lab {
        Lab { config: LabConfig::default_lab() }
    }

    /// Parses a lab file's text; ``filename`` is used in error messages. Raises
    /// :class:`citron.LabError` listing every problem, one per line, as
    /// ``file:line:col: key: message``.
    ///
    /// >>> import citron
    /// >>> lab = citron.Lab.from_yaml("duts:\n  - id: rpi\n    ip: [127.0.0.4]\n")
    /// >>> lab.duts[0]["ip"]
    /// ['127.0.0.4']
    #[staticmethod]
    #[pyo3(signature = (text, filename = None))]
    fn from_yaml(text: &str, filename: Option<&str>) -> PyResult<Lab> {
        let config = LabConfig::from_yaml(text, filename.unwrap_or("<lab>")).map_err(Error::from)?;
        check_registry(&config)?;
        Ok(Lab { config })
    }

    /// Reads a lab file; relative ``artifact_roots`` are taken from the file's directory.
    ///
    /// >>> import citron, pathlib, tempfile
    /// >>> p = pathlib.Path(tempfile.mkdtemp()) / "lab.yaml"
    /// >>> _ = p.write_text("duts: [{id: d, ip: [127.0.0.5]}]\n")
    /// >>> citron.Lab.from_file(p).duts[0]["id"]
    /// 'd'
    #[staticmethod]
    fn from_file(path: PathBuf) -> PyResult<Lab> {
        let config = LabConfig::from_file(&path).map_err(Error::from)?;
        check_registry(&config)?;
        Ok(Lab { config })
    }

    /// Adds a DUT. ``ip`` lists the source addresses its requests come from; ``machine_id``
    /// defaults to ``id``. Raises :class:`citron.LabError` for a bad or taken id or address.
    ///
    /// >>> import citron
    /// >>> lab = citron.Lab()
    /// >>> lab.add_dut("vm1", ip=["127.0.0.7"], machine_id="vm-0001")
    /// >>> lab.duts[0]["machine_id"]
    /// 'vm-0001'
    #[pyo3(signature = (id, ip = Vec::new(), mac = None, tags = Vec::new(), machine_id = None, serial = None))]
    fn add_dut(
        &mut self,
        id: &str,
        ip: Vec<String>,
        mac: Option<String>,
        tags: Vec<String>,
        machine_id: Option<String>,
        serial: Option<String>,
    ) -> PyResult<()> {
        let dut = make_dut(id, ip, mac, tags, machine_id, serial)?;
        let mut next = self.config.clone();
        next.duts.push(dut);
        check_registry(&next)?;
        self.config = next;
        Ok(())
    }

    /// The DUTs, each a dict with ``id``, ``machine_id``, ``ip``, ``mac``, ``serial``, ``tags``.
    #[getter]
    fn duts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let l = PyList::empty(py);
        for d in &self.config.duts {
            l.append(dut_dict(py, d)?)?;
        }
        Ok(l)
    }

    /// Template variables every job of the lab may use (besides ``machine_id`` and the
    /// ``*_artifact_base`` ones citron fills).
    #[getter]
    fn variables(&self) -> BTreeMap<String, String> {
        self.config.variables.clone()
    }

    /// Directories ``file:`` sources of jobs may read.
    #[getter]
    fn artifact_roots(&self) -> Vec<String> {
        self.config.artifact_roots.iter().map(|p| p.display().to_string()).collect()
    }

    fn __repr__(&self) -> String {
        let ids: Vec<&str> = self.config.duts.iter().map(|d| d.id.0.as_str()).collect();
        format!("Lab(duts={ids:?}, variables={:?})", self.config.variables)
    }
}

/// Checks ids and addresses as the gateway will (unique, usable), so that errors show up where
/// the lab is built, not when a server starts.
fn check_registry(config: &LabConfig) -> Result<(), Error> {
    let mut r = DutRegistry::default();
    for d in &config.duts {
        r.add(d.clone()).map_err(|e| Error::from(citron_core::gateway::GatewayError::Registry(e)))?;
    }
    Ok(())
}
