//! `citron.JobDescription` and what rendering one gives: `citron.ResolvedJob` of `citron.Artifact`s.

use std::path::{Path, PathBuf};
use std::time::Duration;

use citron_core::job::listing::Listed;
use citron_core::job::{
    DiskKind, DiskSpec, FileSpec, FsContents, JobDescription as CoreJob, JobError as CoreJobError, JobErrors, Origin, RenderContext,
    ResetOn, ResolvedJob as CoreResolved, Source, Step,
};
use citron_core::namespace::Dut;
use citron_core::Digest;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::Error;
use crate::lab::{offline_context, Lab};
use crate::server::Server;

/// A parsed job description: what one job lets its DUT fetch, and for how long.
///
/// Parsing checks the shape (unknown fields, two sources in one entry, bad paths, …) and raises
/// :class:`citron.JobError` listing every problem with its position; :meth:`validate` and
/// :meth:`render` also check what depends on the DUT and lab (template variables, ``file:``
/// roots).
///
/// >>> import citron
/// >>> job = citron.JobDescription.from_yaml('''
/// ... deployment:
/// ...   start:
/// ...     storage:
/// ...       http:
/// ...         - path: /hello.txt
/// ...           data: "hi {{ machine_id }}"
/// ... ''', filename="hello.yaml")
/// >>> job.filename
/// 'hello.yaml'
/// >>> job.validate()
#[pyclass(frozen, module = "citron")]
#[derive(Debug, Clone)]
pub struct JobDescription {
    pub(crate) inner: CoreJob,
    /// Read from a file by the lab's own code: its directory is an allowed `file:` root, as for
    /// `citron serve --job DUT=FILE`.
    pub(crate) from_file: bool,
}

impl JobDescription {
    /// The directory `file:` sources may also read, for jobs read from a file.
    pub(crate) fn job_dir(&self) -> Option<PathBuf> {
        if self.from_file {
            self.inner.origin().base_dir.clone()
        } else {
            None
        }
    }

    pub(crate) fn parse(text: &str, filename: Option<&str>) -> Result<JobDescription, Error> {
        let origin = Origin::named(filename.unwrap_or("<job>"));
        Ok(JobDescription { inner: CoreJob::parse(text, origin)?, from_file: false })
    }

    /// Parses `text`; with a lab or a DUT to check against, also checks what rendering checks,
    /// and reports the problems of both stages together (as `citron validate` does, with
    /// [`CoreJob::check`]): one round of fixes is enough.
    fn load(
        py: Python<'_>,
        text: &str,
        origin: Origin,
        from_file: bool,
        lab: Option<&LabRef<'_>>,
        dut: Option<&str>,
    ) -> Result<JobDescription, Error> {
        if lab.is_some() || dut.is_some() {
            let job_dir = if from_file { origin.base_dir.clone() } else { None };
            let mut all: Vec<CoreJobError> = Vec::new();
            for ctx in contexts(lab, dut, job_dir.as_deref())? {
                if let Err(JobErrors(errs)) = py.detach(|| CoreJob::check(text, origin.clone(), &ctx)) {
                    merge(&mut all, errs);
                }
            }
            if !all.is_empty() {
                return Err(Error::Job(JobErrors(all)));
            }
        }
        Ok(JobDescription { inner: CoreJob::parse(text, origin)?, from_file })
    }
}

/// Adds the errors of one more DUT's check, each once, keeping document order.
fn merge(all: &mut Vec<CoreJobError>, more: Vec<CoreJobError>) {
    for e in more {
        if !all.contains(&e) {
            all.push(e);
        }
    }
    // Stable: errors at one position keep the order their check gave them.
    all.sort_by_key(|e| (e.line, e.column));
}

/// `lab=` arguments: a lab description, a running server (its addresses fill
/// `http_artifact_base` and friends) or nothing (the default lab).
#[derive(FromPyObject)]
pub(crate) enum LabRef<'py> {
    Lab(PyRef<'py, Lab>),
    Server(PyRef<'py, Server>),
}

/// The render context for `dut` under `lab`, and the DUTs a lab has.
fn context(lab: Option<&LabRef<'_>>, dut: &str, job_dir: Option<&Path>) -> Result<RenderContext, Error> {
    match lab {
        Some(LabRef::Server(s)) => s.render_context(dut, job_dir),
        Some(LabRef::Lab(l)) => Ok(offline_context(&l.config, &l.dut(dut)?, job_dir)),
        None => {
            let l = Lab { config: citron_core::lab::LabConfig::default_lab() };
            Ok(offline_context(&l.config, &l.dut(dut)?, job_dir))
        }
    }
}

fn lab_duts(lab: Option<&LabRef<'_>>) -> Vec<Dut> {
    match lab {
        Some(LabRef::Server(s)) => s.gateway_duts(),
        Some(LabRef::Lab(l)) => l.config.duts.clone(),
        None => citron_core::lab::LabConfig::default_lab().duts,
    }
}

/// The render contexts a job is checked in: `dut`'s, or every DUT's of the lab when `dut` is
/// None (a lab with no DUT yet: a stand-in DUT of the same lab).
fn contexts(lab: Option<&LabRef<'_>>, dut: Option<&str>, job_dir: Option<&Path>) -> Result<Vec<RenderContext>, Error> {
    if let Some(d) = dut {
        return Ok(vec![context(lab, d, job_dir)?]);
    }
    let ids: Vec<String> = lab_duts(lab).into_iter().map(|d| d.id.0).collect();
    if ids.is_empty() {
        let l = match lab {
            Some(LabRef::Lab(l)) => l.config.clone(),
            _ => citron_core::lab::LabConfig::default(),
        };
        return Ok(vec![offline_context(&l, &Dut::new("dut", []), job_dir)]);
    }
    ids.iter().map(|id| context(lab, id, job_dir)).collect()
}

#[pymethods]
impl JobDescription {
    /// Parses a job description from YAML text. ``filename`` is the name error messages use
    /// (default ``<job>``). Raises :class:`citron.JobError`.
    ///
    /// >>> import citron
    /// >>> try:
    /// ...     citron.JobDescription.from_yaml("deployment:\n  start:\n    colour: red\n", filename="j.yaml")
    /// ... except citron.JobError as e:
    /// ...     print(str(e).split(": ")[0])
    /// j.yaml:3:5
    ///
    /// With ``lab`` (a :class:`Lab` or a running :class:`Server`) or ``dut`` (of the default
    /// lab when ``lab`` is None), it also checks what :meth:`validate` checks, for ``dut`` or
    /// every DUT of the lab, and one :class:`citron.JobError` lists the problems of both kinds
    /// in document order, as ``citron validate`` prints them:
    ///
    /// >>> text = "deployment:\n  start:\n    cmdline: console={{ tty }}\n    colour: red\n"
    /// >>> try:
    /// ...     citron.JobDescription.from_yaml(text, filename="j.yaml", lab=citron.Lab.default())
    /// ... except citron.JobError as e:
    /// ...     print([d.field for d in e.errors])
    /// ['deployment.start.cmdline', 'deployment.start.colour']
    #[staticmethod]
    #[pyo3(signature = (text, filename = None, *, lab = None, dut = None))]
    fn from_yaml(
        py: Python<'_>,
        text: &str,
        filename: Option<&str>,
        lab: Option<LabRef<'_>>,
        dut: Option<&str>,
    ) -> PyResult<JobDescription> {
        let origin = Origin::named(filename.unwrap_or("<job>"));
        Ok(JobDescription::load(py, text, origin, false, lab.as_ref(), dut)?)
    }

    /// Reads and parses a job file. Relative ``file:`` sources are taken from the file's
    /// directory, which (as for ``citron serve --job``) is an allowed root for this job.
    ///
    /// >>> import citron, pathlib, tempfile
    /// >>> d = pathlib.Path(tempfile.mkdtemp())
    /// >>> _ = (d / "kernel.bin").write_bytes(b"\x7fELF")
    /// >>> _ = (d / "job.yaml").write_text("deployment:\n  start:\n    kernel: {file: kernel.bin}\n")
    /// >>> job = citron.JobDescription.from_file(d / "job.yaml")
    /// >>> job.render(dut="dut1").artifacts[0].size
    /// 4
    ///
    /// ``lab`` and ``dut`` as for :meth:`from_yaml`: shape and render problems in one
    /// :class:`citron.JobError`, as ``citron validate [--lab LAB] FILE`` reports them.
    #[staticmethod]
    #[pyo3(signature = (path, *, lab = None, dut = None))]
    fn from_file(py: Python<'_>, path: PathBuf, lab: Option<LabRef<'_>>, dut: Option<&str>) -> PyResult<JobDescription> {
        let text = CoreJob::read_text(&path).map_err(Error::from)?;
        Ok(JobDescription::load(py, &text, Origin::file(&path), true, lab.as_ref(), dut)?)
    }

    /// The name errors use: the path for :meth:`from_file`, ``filename`` for :meth:`from_yaml`.
    #[getter]
    fn filename(&self) -> String {
        self.inner.origin().name.clone()
    }

    /// Checks what rendering checks (template variables, URLs, ``file:`` roots) for ``dut`` of
    /// ``lab`` (a :class:`Lab`, a running :class:`Server`, or the default lab), or for every DUT
    /// of the lab when ``dut`` is None. Returns None or raises :class:`citron.JobError` with all
    /// the errors found.
    ///
    /// >>> import citron
    /// >>> job = citron.JobDescription.from_yaml(
    /// ...     "deployment:\n  start:\n    cmdline: console={{ tty }}\n", filename="j.yaml")
    /// >>> try:
    /// ...     job.validate()
    /// ... except citron.JobError as e:
    /// ...     print(e.errors[0].field)
    /// deployment.start.cmdline
    /// >>> job.validate(lab=citron.Lab(variables={"tty": "ttyS0"}), dut=None)
    #[pyo3(signature = (lab = None, dut = None))]
    fn validate(&self, py: Python<'_>, lab: Option<LabRef<'_>>, dut: Option<&str>) -> PyResult<()> {
        let dir = self.job_dir();
        let mut all: Vec<CoreJobError> = Vec::new();
        for ctx in contexts(lab.as_ref(), dut, dir.as_deref())? {
            if let Err(JobErrors(errs)) = py.detach(|| self.inner.validate(&ctx)) {
                merge(&mut all, errs);
            }
        }
        if all.is_empty() {
            Ok(())
        } else {
            Err(Error::Job(JobErrors(all)).into())
        }
    }

    /// Renders the job for ``dut``: templates expanded, paths normalised, sources checked.
    /// Returns a :class:`ResolvedJob` whose ``artifacts`` list what the DUT may fetch. Nothing is
    /// downloaded. With a :class:`Lab` (or none), ``{{ http_artifact_base }}`` and friends are
    /// what ``citron serve`` has on its default addresses, as for ``citron render``; with a
    /// running :class:`Server`, its own. Raises :class:`citron.JobError`, or :class:`citron.UnknownDutError` for a DUT
    /// the lab does not have.
    ///
    /// >>> import citron
    /// >>> job = citron.JobDescription.from_yaml('''
    /// ... deployment:
    /// ...   start:
    /// ...     storage:
    /// ...       http:
    /// ...         - path: /job/secret
    /// ...           data: "for {{ machine_id }}"
    /// ...           lifetime: {access_count: 1}
    /// ... ''')
    /// >>> a = job.render(dut="dut2").artifacts[0]
    /// >>> (a.protocol, a.path, a.source, a.size, a.access_count)
    /// ('http', 'job/secret', 'data', 8, 1)
    #[pyo3(signature = (dut, lab = None))]
    fn render(&self, py: Python<'_>, dut: &str, lab: Option<LabRef<'_>>) -> PyResult<ResolvedJob> {
        let dir = self.job_dir();
        let ctx = context(lab.as_ref(), dut, dir.as_deref())?;
        let machine_id = ctx.vars.get("machine_id").cloned().unwrap_or_else(|| dut.to_string());
        let resolved = py.detach(|| self.inner.render(&ctx)).map_err(Error::from)?;
        Ok(ResolvedJob::from_core(&resolved, &machine_id))
    }

    fn __repr__(&self) -> String {
        format!("JobDescription(filename={:?})", self.inner.origin().name)
    }
}

/// A job rendered for one DUT: its command lines and every artifact it serves.
///
/// >>> import citron
/// >>> r = citron.JobDescription.from_yaml(
/// ...     "deployment:\n  start:\n    cmdline: [console=ttyS0, quiet]\n").render(dut="dut1")
/// >>> r.cmdline
/// 'console=ttyS0 quiet'
/// >>> r.artifacts
/// []
#[pyclass(frozen, get_all, eq, module = "citron")]
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedJob {
    /// Where the description came from.
    pub origin: String,
    /// The kernel command line of the first boot (``deployment.start``), or None.
    pub cmdline: Option<String>,
    /// The command line of later boots (``deployment.continue``, completed from ``start``).
    pub continue_cmdline: Option<String>,
    /// Everything the DUT may fetch: ``start`` artifacts first, then those ``continue`` adds or
    /// replaces.
    pub artifacts: Vec<Artifact>,
}

/// One thing a DUT may fetch: a file over HTTP or TFTP, the boot kernel or initramfs, or an NBD
/// disk. Plain values; ``to_dict()`` gives them as a dict.
///
/// ``protocol`` is ``"http"``, ``"tftp"``, ``"boot"`` (kernel and initramfs, served over both at
/// ``boot/<machine_id>/…``) or ``"nbd"``. ``source`` is ``"data"``, ``"file"``, ``"url"``,
/// ``"filesystem"`` or ``"raw"``; ``url`` is the URL (``file://`` for local files, None for
/// inline data). ``size`` is known for inline data, local files and created disks.
///
/// >>> import citron
/// >>> job = citron.JobDescription.from_yaml(
/// ...     "deployment:\n  start:\n    kernel: {data: abc}\n")
/// >>> k = job.render(dut="dut1").artifacts[0]
/// >>> (k.kind, k.protocol, k.path, k.sha256[:8])
/// ('kernel', 'boot', 'boot/dut1/kernel', 'ba7816bf')
#[pyclass(frozen, get_all, eq, module = "citron")]
#[derive(Debug, Clone, PartialEq)]
pub struct Artifact {
    /// ``"start"`` or ``"continue"``.
    pub step: String,
    /// ``"file"``, ``"kernel"``, ``"initramfs"`` or ``"disk"``.
    pub kind: String,
    /// ``"http"``, ``"tftp"``, ``"boot"`` or ``"nbd"``.
    pub protocol: String,
    /// The normalised path the DUT asks for (the export name for disks).
    pub path: String,
    /// ``"data"``, ``"file"``, ``"url"``, ``"filesystem"`` or ``"raw"``.
    pub source: String,
    /// The source URL (``file://…`` for local files), None for inline data and created disks.
    pub url: Option<String>,
    /// Size in bytes when known before fetching.
    pub size: Option<u64>,
    /// The sha256 the content must have (the job's, or computed for inline data).
    pub sha256: Option<String>,
    /// Reads allowed between resets (None: unlimited).
    pub access_count: Option<u32>,
    /// How long after the job starts the artifact disappears (None: never).
    pub expiration: Option<Duration>,
    /// Disks: writes are refused.
    pub readonly: Option<bool>,
    /// Disks: ``"boot"``, ``"job_start"`` or ``"never"``.
    pub reset_on: Option<String>,
    /// Disks: every DUT of the lab may attach it.
    pub shared: Option<bool>,
}

fn source_fields(s: &Source) -> (String, Option<String>, Option<u64>, Option<Digest>) {
    match s {
        Source::Data(b) => ("data".into(), None, Some(b.len() as u64), Some(Digest::of(b))),
        Source::File(p) => {
            let url = url::Url::from_file_path(p).map(|u| u.to_string()).unwrap_or_else(|_| p.display().to_string());
            ("file".into(), Some(url), std::fs::metadata(p).ok().map(|m| m.len()), None)
        }
        Source::Url(u) => ("url".into(), Some(u.to_string()), None, None),
        Source::Result(r) => ("result".into(), Some(r.to_string()), None, None),
    }
}

fn file_artifact(step: &str, kind: &str, protocol: &str, path: String, f: &FileSpec) -> Artifact {
    let (source, url, size, computed) = source_fields(&f.source);
    Artifact {
        step: step.into(),
        kind: kind.into(),
        protocol: protocol.into(),
        path,
        source,
        url,
        size,
        sha256: f.sha256.or(computed).map(|d| d.hex()),
        access_count: f.lifetime.access_count,
        expiration: f.lifetime.expiration,
        readonly: None,
        reset_on: None,
        shared: None,
    }
}

fn disk_artifact(step: &str, d: &DiskSpec) -> Artifact {
    let (source, url, size, sha) = match &d.kind {
        DiskKind::Image { source, sha256 } => {
            let (s, u, size, computed) = source_fields(source);
            (s, u, size, sha256.or(computed))
        }
        DiskKind::Filesystem { size_bytes, contents, .. } => {
            let url = match contents {
                Some(FsContents::Tarball(src, _)) => source_fields(src).1,
                Some(FsContents::Container(c)) => Some(c.clone()),
                None => None,
            };
            ("filesystem".into(), url, Some(*size_bytes), None)
        }
        DiskKind::Raw { size_bytes } => ("raw".into(), None, Some(*size_bytes), None),
    };
    Artifact {
        step: step.into(),
        kind: "disk".into(),
        protocol: "nbd".into(),
        path: d.name.clone(),
        source,
        url,
        size,
        sha256: sha.map(|d| d.hex()),
        access_count: None,
        expiration: d.expiration,
        readonly: Some(d.readonly),
        reset_on: Some(
            match d.reset_on {
                ResetOn::Boot => "boot",
                ResetOn::JobStart => "job_start",
                ResetOn::Never => "never",
            }
            .into(),
        ),
        shared: Some(d.shared),
    }
}

fn step_artifacts(name: &str, s: &Step, machine_id: &str, out: &mut Vec<Artifact>) {
    for a in citron_core::job::listing::artifacts(s, machine_id) {
        out.push(match a.what {
            Listed::Disk(d) => disk_artifact(name, d),
            Listed::Kernel(f) | Listed::Initramfs(f) | Listed::File(_, f) => file_artifact(name, a.kind(), a.served(), a.path.clone(), f),
        });
    }
}

impl ResolvedJob {
    pub(crate) fn from_core(r: &CoreResolved, machine_id: &str) -> ResolvedJob {
        let mut artifacts = Vec::new();
        step_artifacts("start", &r.start, machine_id, &mut artifacts);
        let mut continue_cmdline = None;
        if let Some(c) = &r.continue_ {
            step_artifacts("continue", c, machine_id, &mut artifacts);
            continue_cmdline = c.over(&r.start).cmdline;
        }
        ResolvedJob { origin: r.origin.clone(), cmdline: r.start.cmdline.clone(), continue_cmdline, artifacts }
    }
}

#[pymethods]
impl Artifact {
    /// The artifact as a plain dict (same keys as the attributes).
    ///
    /// >>> import citron
    /// >>> a = citron.JobDescription.from_yaml(
    /// ...     "deployment:\n  start:\n    kernel: {data: abc}\n").render(dut="dut1").artifacts[0]
    /// >>> a.to_dict()["source"]
    /// 'data'
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("step", &self.step)?;
        d.set_item("kind", &self.kind)?;
        d.set_item("protocol", &self.protocol)?;
        d.set_item("path", &self.path)?;
        d.set_item("source", &self.source)?;
        d.set_item("url", &self.url)?;
        d.set_item("size", self.size)?;
        d.set_item("sha256", &self.sha256)?;
        d.set_item("access_count", self.access_count)?;
        d.set_item("expiration", self.expiration)?;
        d.set_item("readonly", self.readonly)?;
        d.set_item("reset_on", &self.reset_on)?;
        d.set_item("shared", self.shared)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "Artifact(step={:?}, kind={:?}, protocol={:?}, path={:?}, source={:?}, size={:?})",
            self.step, self.kind, self.protocol, self.path, self.source, self.size
        )
    }
}

#[pymethods]
impl ResolvedJob {
    /// The rendered job as plain dicts and lists (``artifacts`` as :meth:`Artifact.to_dict`).
    ///
    /// >>> import citron
    /// >>> citron.JobDescription.from_yaml("deployment: {start: {}}").render(dut="dut1").to_dict()["artifacts"]
    /// []
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("origin", &self.origin)?;
        d.set_item("cmdline", &self.cmdline)?;
        d.set_item("continue_cmdline", &self.continue_cmdline)?;
        let arts = pyo3::types::PyList::empty(py);
        for a in &self.artifacts {
            arts.append(a.to_dict(py)?)?;
        }
        d.set_item("artifacts", arts)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!("ResolvedJob(origin={:?}, cmdline={:?}, artifacts={})", self.origin, self.cmdline, self.artifacts.len())
    }
}
