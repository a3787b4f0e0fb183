//! The exception hierarchy and the one place where Rust errors become Python exceptions.
//!
//! Python code wants to catch by meaning (`except citron.JobError`, `except KeyError`), so every
//! exception is a [`CitronError`](ERRORS_PY) *and* the builtin it behaves like: `JobError` is a
//! `ValueError`, `UnknownDutError` a `KeyError`, `ServerError` an `OSError`. pyo3 classes have a
//! single base, so the classes are defined by a few lines of Python executed when the module
//! loads; the Rust side keeps handles to them.
//!
//! [`Error`] gathers what the bindings can fail with, and `impl From<Error> for PyErr` is the
//! single mapping from a Rust error to an exception class (as polars' `PyPolarsErr`): the message
//! is the Rust error's `Display`, unchanged, so the CLI and Python say the same thing.

use std::ffi::CStr;

use citron_core::gateway::GatewayError;
use citron_core::job::{JobError as CoreJobError, JobErrors};
use citron_core::lab::LabErrors as CoreLabError;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyList, PyType};

/// The classes, with their docstrings: the `_citron.pyi` stubs mirror this.
const ERRORS_PY: &CStr = cr#"
class CitronError(Exception):
    """Base class of every error citron raises.

    >>> import citron
    >>> issubclass(citron.JobError, citron.CitronError)
    True
    """
    __module__ = "citron"


class JobError(CitronError, ValueError):
    """A job description is invalid.

    ``errors`` lists every problem found (not only the first), each a
    :class:`citron.JobErrorDetail` with ``file``, ``line``, ``column``, ``field`` and
    ``message``; ``str()`` shows them as ``file:line:col: field: message`` lines.

    >>> import citron
    >>> try:
    ...     citron.JobDescription.from_yaml("deployment: [", filename="job.yaml")
    ... except citron.JobError as e:
    ...     print(e.errors[0].file)
    job.yaml
    """
    __module__ = "citron"

    def __init__(self, message, errors=()):
        super().__init__(message)
        self.errors = list(errors)


class LabError(CitronError, ValueError):
    """A lab description (DUTs, variables, roots) is invalid or inconsistent.

    >>> import citron
    >>> lab = citron.Lab()
    >>> lab.add_dut("a", ip=["127.0.0.9"])
    >>> try:
    ...     lab.add_dut("b", ip=["127.0.0.9"])
    ... except citron.LabError as e:
    ...     print("taken")
    taken
    """
    __module__ = "citron"


class UnknownDutError(CitronError, KeyError):
    """No DUT has this id (also a ``KeyError``).

    >>> import citron
    >>> try:
    ...     citron.JobDescription.from_yaml("deployment: {start: {}}").render(dut="nope")
    ... except KeyError:
    ...     print("unknown")
    unknown
    """
    __module__ = "citron"

    def __str__(self):
        # KeyError quotes its argument; the message is a sentence.
        return Exception.__str__(self)


class FetchError(CitronError):
    """An artifact could not be fetched (network, HTTP status, missing file) or its content does
    not have the job's sha256. Raised when a server loads the job; the previous job stays.

    >>> import citron
    >>> job = "deployment:\\n  start:\\n    kernel: {url: 'http://127.0.0.1:9/vmlinuz'}\\n"
    >>> with citron.Server(http=None, tftp=None) as srv:   # nothing listens on port 9
    ...     try:
    ...         srv.set_job("dut1", job)
    ...     except citron.FetchError as e:
    ...         print(str(e).startswith("http://127.0.0.1:9/vmlinuz: "))
    True
    """
    __module__ = "citron"


class ServerError(CitronError, OSError):
    """A server could not start (an address that cannot be bound, bad arguments) or its data
    directory is unusable.

    >>> import citron, socket
    >>> taken = socket.socket(); taken.bind(("127.0.0.1", 0)); taken.listen()
    >>> try:
    ...     citron.Server(http="127.0.0.1:%d" % taken.getsockname()[1], tftp=None)
    ... except citron.ServerError as e:
    ...     print(str(e).startswith("cannot listen for http"))
    True
    >>> taken.close()
    """
    __module__ = "citron"
"#;

/// Handles to the classes defined by [`ERRORS_PY`].
pub(crate) struct Classes {
    pub citron: Py<PyType>,
    pub job: Py<PyType>,
    pub lab: Py<PyType>,
    pub unknown_dut: Py<PyType>,
    pub fetch: Py<PyType>,
    pub server: Py<PyType>,
}

static CLASSES: PyOnceLock<Classes> = PyOnceLock::new();

/// The exception classes, created on first use.
pub(crate) fn classes(py: Python<'_>) -> PyResult<&'static Classes> {
    CLASSES.get_or_try_init(py, || {
        let m = PyModule::from_code(py, ERRORS_PY, c"citron/_errors.py", c"citron._errors")?;
        let get = |name: &str| -> PyResult<Py<PyType>> { Ok(m.getattr(name)?.cast_into::<PyType>()?.unbind()) };
        Ok::<_, PyErr>(Classes {
            citron: get("CitronError")?,
            job: get("JobError")?,
            lab: get("LabError")?,
            unknown_dut: get("UnknownDutError")?,
            fetch: get("FetchError")?,
            server: get("ServerError")?,
        })
    })
}

/// One problem in a job description, with its position.
///
/// ``str()`` gives ``file:line:col: field: message``, the form the CLI prints.
///
/// >>> import citron
/// >>> try:
/// ...     citron.JobDescription.from_yaml("deployment:\n  start:\n    colour: red\n", filename="j.yaml")
/// ... except citron.JobError as e:
/// ...     d = e.errors[0]
/// ...     print(d.line, d.column, d.field)
/// 3 5 deployment.start.colour
#[pyclass(frozen, get_all, eq, module = "citron")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobErrorDetail {
    /// The job's file name (or the name given to `from_yaml`).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The field path, e.g. `deployment.start.storage.http[2].url` (empty for the whole document).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl From<&CoreJobError> for JobErrorDetail {
    fn from(e: &CoreJobError) -> Self {
        JobErrorDetail { file: e.file.clone(), line: e.line, column: e.column, field: e.field.clone(), message: e.message.clone() }
    }
}

#[pymethods]
impl JobErrorDetail {
    /// `file:line:col: field: message`, exactly as `citron validate` prints it.
    fn __str__(&self) -> String {
        CoreJobError {
            file: self.file.clone(),
            line: self.line,
            column: self.column,
            field: self.field.clone(),
            message: self.message.clone(),
        }
        .to_string()
    }

    fn __repr__(&self) -> String {
        format!(
            "JobErrorDetail(file={:?}, line={}, column={}, field={:?}, message={:?})",
            self.file, self.line, self.column, self.field, self.message
        )
    }

    /// The detail as a plain dict (`file`, `line`, `column`, `field`, `message`), e.g. for JSON.
    ///
    /// >>> import citron
    /// >>> try:
    /// ...     citron.JobDescription.from_yaml("deployment:\n  start:\n    colour: red\n", filename="j.yaml")
    /// ... except citron.JobError as e:
    /// ...     print(sorted(e.errors[0].to_dict()))
    /// ['column', 'field', 'file', 'line', 'message']
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        let d = pyo3::types::PyDict::new(py);
        d.set_item("file", &self.file)?;
        d.set_item("line", self.line)?;
        d.set_item("column", self.column)?;
        d.set_item("field", &self.field)?;
        d.set_item("message", &self.message)?;
        Ok(d)
    }
}

/// Everything the bindings can fail with, before it becomes an exception.
#[derive(Debug)]
pub(crate) enum Error {
    /// A gateway call failed.
    Gateway(GatewayError),
    /// A job description is invalid.
    Job(JobErrors),
    /// A lab file is invalid.
    Lab(CoreLabError),
    /// A lab built in Python is invalid (message only).
    LabMessage(String),
    /// No such DUT (id).
    UnknownDut(String),
    /// Bad server arguments, or the runtime could not start.
    Server(String),
    /// A backend could not start (address taken, API without token).
    Start(citron_lab::server::ServerError),
}

impl From<citron_lab::server::ServerError> for Error {
    fn from(e: citron_lab::server::ServerError) -> Self {
        Error::Start(e)
    }
}

impl From<GatewayError> for Error {
    fn from(e: GatewayError) -> Self {
        Error::Gateway(e)
    }
}

impl From<JobErrors> for Error {
    fn from(e: JobErrors) -> Self {
        Error::Job(e)
    }
}

impl From<CoreLabError> for Error {
    fn from(e: CoreLabError) -> Self {
        Error::Lab(e)
    }
}

/// Which class an error raises, and with what message.
enum Kind {
    Citron,
    Job(JobErrors),
    Lab,
    UnknownDut,
    Fetch,
    Server,
}

impl Error {
    fn split(self) -> (Kind, String) {
        match self {
            Error::Gateway(g) => {
                let msg = g.to_string();
                let kind = match g {
                    GatewayError::UnknownDut(_) => Kind::UnknownDut,
                    GatewayError::Registry(_) => Kind::Lab,
                    GatewayError::Job(j) => Kind::Job(j),
                    GatewayError::Fetch(_) => Kind::Fetch,
                    GatewayError::DataDir { .. } => Kind::Server,
                    // GatewayError is #[non_exhaustive]: a variant added later is still a CitronError.
                    _ => Kind::Citron,
                };
                (kind, msg)
            }
            Error::Job(j) => (Kind::Job(j.clone()), j.to_string()),
            Error::Lab(l) => (Kind::Lab, l.to_string()),
            Error::LabMessage(m) => (Kind::Lab, m),
            Error::UnknownDut(id) => {
                let msg = GatewayError::UnknownDut(id.as_str().into()).to_string();
                (Kind::UnknownDut, msg)
            }
            Error::Server(m) => (Kind::Server, m),
            Error::Start(e) => (Kind::Server, e.to_string()),
        }
    }

    fn into_pyerr(self, py: Python<'_>) -> PyResult<PyErr> {
        let c = classes(py)?;
        let (kind, msg) = self.split();
        let value = match kind {
            Kind::Job(j) => {
                let details = PyList::empty(py);
                for e in &j.0 {
                    details.append(Bound::new(py, JobErrorDetail::from(e))?)?;
                }
                c.job.bind(py).call1((msg, details))?
            }
            Kind::Citron => c.citron.bind(py).call1((msg,))?,
            Kind::Lab => c.lab.bind(py).call1((msg,))?,
            Kind::UnknownDut => c.unknown_dut.bind(py).call1((msg,))?,
            Kind::Fetch => c.fetch.bind(py).call1((msg,))?,
            Kind::Server => c.server.bind(py).call1((msg,))?,
        };
        Ok(PyErr::from_value(value))
    }
}

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        Python::attach(|py| {
            let fallback = format!("{e:?}");
            // Building the exception can only fail if the interpreter is in trouble (memory);
            // raise something rather than nothing.
            e.into_pyerr(py).unwrap_or_else(|inner| PyRuntimeError::new_err(format!("{fallback} ({inner})")))
        })
    }
}

/// Adds the exception classes to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let c = classes(py)?;
    m.add("CitronError", c.citron.bind(py))?;
    m.add("JobError", c.job.bind(py))?;
    m.add("LabError", c.lab.bind(py))?;
    m.add("UnknownDutError", c.unknown_dut.bind(py))?;
    m.add("FetchError", c.fetch.bind(py))?;
    m.add("ServerError", c.server.bind(py))?;
    m.add_class::<JobErrorDetail>()?;
    Ok(())
}
