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
use std::path::{Path, PathBuf};

use citron_core::datadir::DataDirError;
use citron_core::diag::FileError;
use citron_core::gateway::GatewayError;
use citron_core::job::JobErrors;
use citron_core::lab::LabErrors as CoreLabError;
use citron_core::namespace::RegistryError;
use citron_lab::state::{OpenError, StateError};
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
    :class:`citron.ErrorDetail` with ``file``, ``line``, ``column``, ``field`` and
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

    ``errors`` lists every problem, each a :class:`citron.ErrorDetail` as for
    :class:`JobError`: for a lab file, its ``file:line:col``; for a lab built in code
    (``Lab.add_dut``, ``Server.add_dut``), the Python line that made the call, so that the
    position points at what to change either way.

    >>> import citron
    >>> try:
    ...     citron.Lab.from_yaml("duts:\\n  - id: a\\n    ip: [nope]\\n", filename="lab.yaml")
    ... except citron.LabError as e:
    ...     d = e.errors[0]
    ...     print(d.file, d.line, d.column)
    lab.yaml 3 10
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

    def __init__(self, message, errors=()):
        super().__init__(message)
        self.errors = list(errors)


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
    """Artifacts could not be fetched (network, HTTP status, missing file) or their content does
    not have the job's sha256. Raised when a server loads the job; the previous job stays.

    ``errors`` lists every failed fetch of the job (not only the first), each a
    :class:`citron.ErrorDetail` at the ``url:`` or ``file:`` that names it, as
    :class:`JobError` has them; empty for a job built in code.

    >>> import citron
    >>> job = "deployment:\\n  start:\\n    kernel: {url: 'http://127.0.0.1:9/vmlinuz'}\\n"
    >>> with citron.Server(http=None, tftp=None) as srv:   # nothing listens on port 9
    ...     try:
    ...         srv.set_job("dut1", job)
    ...     except citron.FetchError as e:
    ...         d = e.errors[0]
    ...         print(d.line, d.column, d.field, "http://127.0.0.1:9/vmlinuz" in d.message)
    3 19 deployment.start.kernel.url True
    """
    __module__ = "citron"

    def __init__(self, message, errors=()):
        super().__init__(message)
        self.errors = list(errors)


class ApiError(CitronError):
    """A remote citron refused a request (:class:`citron.Client`): ``status`` is the HTTP
    status, ``message`` the server's words (which say what to do); ``str()`` shows both.
    Subclasses: :class:`AuthError` (401, 403), :class:`NotFoundError` (404),
    :class:`ConflictError` (409).

    >>> import citron
    >>> e = citron.ApiError(413, "the file is larger than 16 bytes")
    >>> e.status, str(e)
    (413, '413: the file is larger than 16 bytes')
    """
    __module__ = "citron"

    def __init__(self, status, message):
        super().__init__("%s: %s" % (status, message))
        self.status = status
        self.message = message


class AuthError(ApiError, PermissionError):
    """The token was refused (401: none, expired, revoked, not citron's) or may not do this
    (403: another scope, job, run or tenant). Also a ``PermissionError``.

    >>> import citron
    >>> lab = citron.Lab.from_yaml("api_token: admin-secret\\n")
    >>> with citron.Server(lab, http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv:
    ...     try:
    ...         srv.client(token="wrong").results.open_run("build")
    ...     except citron.AuthError as e:
    ...         print(e.status, isinstance(e, PermissionError))
    401 True
    """
    __module__ = "citron"

    def __str__(self):
        return Exception.__str__(self)


class NotFoundError(ApiError, LookupError):
    """No such job, run, file or token, or none this token may see (404).

    >>> import citron
    >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    ...     try:
    ...         c.results.latest("never-ran")
    ...     except citron.NotFoundError as e:
    ...         print(e.status)
    404
    """
    __module__ = "citron"


class ConflictError(ApiError):
    """The request clashes with what is there (409): other content at a path of the run, a
    finished run, a tenant that exists.

    >>> import citron
    >>> with citron.Server(http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    ...     run = c.results.open_run("build"); _ = run.finish()
    ...     try:
    ...         run.upload("late.txt", b"too late")
    ...     except citron.ConflictError as e:
    ...         print(e.status)
    409
    """
    __module__ = "citron"


class UnreachableError(CitronError, ConnectionError):
    """The server could not be reached, or the connection broke (also a ``ConnectionError``).

    >>> import citron
    >>> try:
    ...     citron.Client("http://127.0.0.1:9").results.run("build", 1)   # nothing listens on 9
    ... except ConnectionError as e:
    ...     print(type(e).__name__)
    UnreachableError
    """
    __module__ = "citron"

    def __str__(self):
        return Exception.__str__(self)


class ReservationTimeout(CitronError, TimeoutError):
    """``Client.reserve`` waited as long as it was told and the pool had not allocated the
    DUTs: the request was withdrawn (so it takes no DUTs later). ``reservation`` is its id.
    Also a ``TimeoutError``.

    >>> import citron
    >>> lab = citron.Lab.from_yaml("duts:\\n  - {id: d1, ip: [127.0.0.21]}\\n")
    >>> with citron.Server(lab, http=None, tftp=None, nbd=None, api="127.0.0.1:0") as srv, srv.client() as c:
    ...     with c.reserve():
    ...         try:
    ...             with c.reserve(wait=1.0):
    ...                 pass
    ...         except TimeoutError as e:
    ...             print(type(e).__name__, c.pool.get(e.reservation).state)
    ReservationTimeout released
    """
    __module__ = "citron"

    def __init__(self, message, reservation=None):
        super().__init__(message)
        self.reservation = reservation

    def __str__(self):
        return Exception.__str__(self)


class ServerError(CitronError, OSError):
    """A server could not start (an address that cannot be bound, bad arguments) or its data
    directory is unusable. When the system said why, ``errno`` and ``strerror`` are set as on
    any ``OSError`` (``errno.EADDRINUSE`` for a port in use), and ``filename`` for a data
    directory; ``str()`` is citron's message, which says what to do.

    >>> import citron, errno, socket
    >>> taken = socket.socket(); taken.bind(("127.0.0.1", 0)); taken.listen()
    >>> try:
    ...     citron.Server(http="127.0.0.1:%d" % taken.getsockname()[1], tftp=None)
    ... except citron.ServerError as e:
    ...     print(str(e).startswith("cannot listen for http"), e.errno == errno.EADDRINUSE)
    True True
    >>> taken.close()
    """
    __module__ = "citron"

    def __str__(self):
        # OSError would print "[Errno N] strerror" once errno is set; citron's message says more.
        return Exception.__str__(self)
"#;

/// Handles to the classes defined by [`ERRORS_PY`].
pub(crate) struct Classes {
    pub citron: Py<PyType>,
    pub job: Py<PyType>,
    pub lab: Py<PyType>,
    pub unknown_dut: Py<PyType>,
    pub fetch: Py<PyType>,
    pub server: Py<PyType>,
    pub api: Py<PyType>,
    pub auth: Py<PyType>,
    pub not_found: Py<PyType>,
    pub conflict: Py<PyType>,
    pub unreachable: Py<PyType>,
    pub reservation_timeout: Py<PyType>,
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
            api: get("ApiError")?,
            auth: get("AuthError")?,
            not_found: get("NotFoundError")?,
            conflict: get("ConflictError")?,
            unreachable: get("UnreachableError")?,
            reservation_timeout: get("ReservationTimeout")?,
        })
    })
}

/// One problem in a job or lab description, with its position (``JobError.errors`` and
/// ``LabError.errors``; ``citron.JobErrorDetail`` is the same class).
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
pub struct ErrorDetail {
    /// The file's name (or the name given to `from_yaml`; for a lab built in code, the Python
    /// file that made the call).
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

impl From<&FileError> for ErrorDetail {
    fn from(e: &FileError) -> Self {
        ErrorDetail { file: e.file.clone(), line: e.line, column: e.column, field: e.field.clone(), message: e.message.clone() }
    }
}

#[pymethods]
impl ErrorDetail {
    /// `file:line:col: field: message`, exactly as `citron validate` prints it.
    fn __str__(&self) -> String {
        FileError {
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
            "ErrorDetail(file={:?}, line={}, column={}, field={:?}, message={:?})",
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
    /// A lab built in Python is invalid: the argument (`field`) and what is wrong; the position
    /// is the Python caller's, found when the exception is made.
    LabCall {
        /// The argument concerned, e.g. `ip[0]`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No such DUT (id).
    UnknownDut(String),
    /// Bad server arguments, or the runtime could not start.
    Server(String),
    /// A backend could not start (address taken, API without token).
    Start(citron_lab::server::ServerError),
    /// The lab's state or data directory could not be opened.
    Open(OpenError),
    /// A call of `citron.Client` failed.
    Client(citron_client::ClientError),
    /// The client was closed.
    Closed,
}

impl From<OpenError> for Error {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Gateway(g) => Error::Gateway(g),
            e => Error::Open(e),
        }
    }
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

/// Which class an error raises, and what it carries besides its message.
enum Kind {
    Citron,
    Job(Vec<FileError>),
    /// Lab problems with their positions; `None`: a lab built in code, positioned at the caller.
    Lab(Option<Vec<FileError>>, String),
    UnknownDut,
    /// Every failed fetch, positioned (none for a job built in code).
    Fetch(Vec<FileError>),
    /// The OS error behind it, if any (`errno`, `strerror`) and the path concerned.
    Server(Option<i32>, Option<PathBuf>),
    /// A refusal of a remote citron: its status and message.
    Api(u16, String),
    Unreachable,
    /// A bad argument (`ValueError`).
    Value,
    /// A local file (`OSError` of the matching kind, with `filename`).
    Io(std::io::Error, PathBuf),
}

/// The OS error number and path of an I/O failure, for `ServerError.errno` and `.filename`.
fn os_error(e: &std::io::Error, path: Option<&Path>) -> Kind {
    Kind::Server(e.raw_os_error(), path.map(Path::to_path_buf))
}

impl Error {
    fn split(self) -> (Kind, String) {
        match self {
            Error::Gateway(g) => {
                let msg = g.to_string();
                let kind = match g {
                    GatewayError::UnknownDut(_) => Kind::UnknownDut,
                    GatewayError::Registry(r) => Kind::Lab(None, registry_field(&r)),
                    GatewayError::Job(j) => Kind::Job(j.0),
                    GatewayError::Fetch(_) => Kind::Fetch(Vec::new()),
                    GatewayError::Fetches(f) => Kind::Fetch(f.errors.0),
                    GatewayError::DataDir { path, source } => os_error(&source, Some(&path)),
                    GatewayError::DataDirLock(DataDirError::Io { path, source }) => os_error(&source, Some(&path)),
                    GatewayError::DataDirLock(DataDirError::Busy { path, .. }) => Kind::Server(None, Some(path)),
                    // GatewayError is #[non_exhaustive]: a variant added later is still a CitronError.
                    _ => Kind::Citron,
                };
                (kind, msg)
            }
            Error::Job(j) => {
                let msg = j.to_string();
                (Kind::Job(j.0), msg)
            }
            Error::Lab(l) => {
                let msg = l.to_string();
                (Kind::Lab(Some(l.0), String::new()), msg)
            }
            Error::LabCall { field, message } => (Kind::Lab(None, field), message),
            Error::UnknownDut(id) => {
                let msg = GatewayError::UnknownDut(id.as_str().into()).to_string();
                (Kind::UnknownDut, msg)
            }
            Error::Server(m) => (Kind::Server(None, None), m),
            Error::Open(e) => {
                let kind = match &e {
                    OpenError::State(StateError::File { path, source }) => os_error(source, Some(path)),
                    OpenError::State(StateError::Runtime(source)) => os_error(source, None),
                    _ => Kind::Server(None, None),
                };
                (kind, e.to_string())
            }
            Error::Closed => (Kind::Citron, "the client is closed".into()),
            Error::Client(e) => {
                use citron_client::ClientError as C;
                let msg = e.to_string();
                match e {
                    C::Api { status, message } => (Kind::Api(status, message), msg),
                    C::Unreachable { .. } => (Kind::Unreachable, msg),
                    C::Checksum { .. } => (Kind::Fetch(Vec::new()), msg),
                    C::Io { path, source } => (Kind::Io(source, path), msg),
                    C::Usage(_) => (Kind::Value, msg),
                    // Protocol, and any later variant.
                    _ => (Kind::Citron, msg),
                }
            }
            Error::Start(e) => {
                let kind = match &e {
                    citron_lab::server::ServerError::Bind { source, .. } => os_error(source, None),
                    _ => Kind::Server(None, None),
                };
                (kind, e.to_string())
            }
        }
    }

    fn into_pyerr(self, py: Python<'_>) -> PyResult<PyErr> {
        let c = classes(py)?;
        let (kind, msg) = self.split();
        let details = |errors: &[FileError]| -> PyResult<Bound<'_, PyList>> {
            let l = PyList::empty(py);
            for e in errors {
                l.append(Bound::new(py, ErrorDetail::from(e))?)?;
            }
            Ok(l)
        };
        let value = match kind {
            Kind::Job(errors) => c.job.bind(py).call1((msg, details(&errors)?))?,
            Kind::Lab(errors, field) => {
                let errors = match errors {
                    Some(e) => e,
                    None => {
                        let (file, line, column) = caller_position(py);
                        vec![FileError { file, line, column, field, message: msg.clone() }]
                    }
                };
                c.lab.bind(py).call1((msg, details(&errors)?))?
            }
            Kind::Citron => c.citron.bind(py).call1((msg,))?,
            Kind::UnknownDut => c.unknown_dut.bind(py).call1((msg,))?,
            Kind::Api(status, message) => {
                let class = match status {
                    401 | 403 => &c.auth,
                    404 => &c.not_found,
                    409 => &c.conflict,
                    _ => &c.api,
                };
                class.bind(py).call1((status, message))?
            }
            Kind::Unreachable => c.unreachable.bind(py).call1((msg,))?,
            Kind::Value => pyo3::exceptions::PyValueError::new_err(msg).into_value(py).into_bound(py).into_any(),
            Kind::Io(source, path) => {
                let v = PyErr::from(source).into_value(py).into_bound(py).into_any();
                v.setattr("filename", path)?;
                v
            }
            Kind::Fetch(errors) => c.fetch.bind(py).call1((msg, details(&errors)?))?,
            Kind::Server(errno, path) => {
                let v = c.server.bind(py).call1((msg,))?;
                if let Some(n) = errno {
                    // OSError(msg) leaves errno None; set it (and strerror, the OS's words) so
                    // that `e.errno == errno.EADDRINUSE` works; `__str__` keeps citron's message.
                    v.setattr("errno", n)?;
                    v.setattr("strerror", py.import("os")?.call_method1("strerror", (n,))?)?;
                }
                if let Some(p) = path {
                    v.setattr("filename", p)?;
                }
                v
            }
        };
        Ok(PyErr::from_value(value))
    }
}

/// The field a registry refusal is about, for its position.
fn registry_field(e: &RegistryError) -> String {
    match e {
        RegistryError::DuplicateId(_) | RegistryError::BadId(_) => "id".into(),
        RegistryError::DuplicateAddress { .. } => "ip".into(),
        // RegistryError is #[non_exhaustive]: a later refusal is about the DUT as a whole.
        _ => String::new(),
    }
}

/// Where the Python code that called into citron is: the file, line and column of the call, for
/// errors about a lab built in code (which has no file of its own). A native function has no
/// frame, so frame 0 is the caller's. `<python>`, 1, 1 when the interpreter cannot say.
fn caller_position(py: Python<'_>) -> (String, usize, usize) {
    let find = || -> PyResult<(String, usize, usize)> {
        let frame = py.import("sys")?.call_method1("_getframe", (0,))?;
        let code = frame.getattr("f_code")?;
        let file: String = code.getattr("co_filename")?.extract()?;
        let line: usize = frame.getattr("f_lineno")?.extract()?;
        // Python ≥ 3.11: the call's column, from the code's positions table (0-based).
        let column = (|| -> PyResult<usize> {
            let lasti: usize = frame.getattr("f_lasti")?.extract()?;
            let positions = code.call_method0("co_positions")?;
            let pos = positions.try_iter()?.nth(lasti / 2).ok_or_else(|| pyo3::exceptions::PyIndexError::new_err("position"))??;
            let col: Option<usize> = pos.get_item(2)?.extract()?;
            Ok(col.map_or(1, |c| c + 1))
        })()
        .unwrap_or(1);
        Ok((file, line, column))
    };
    find().unwrap_or_else(|_| ("<python>".into(), 1, 1))
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
    m.add("ApiError", c.api.bind(py))?;
    m.add("AuthError", c.auth.bind(py))?;
    m.add("NotFoundError", c.not_found.bind(py))?;
    m.add("ConflictError", c.conflict.bind(py))?;
    m.add("UnreachableError", c.unreachable.bind(py))?;
    m.add("ReservationTimeout", c.reservation_timeout.bind(py))?;
    m.add_class::<ErrorDetail>()?;
    // The name of the class before lab errors had positions too.
    m.add("JobErrorDetail", m.getattr("ErrorDetail")?)?;
    Ok(())
}
