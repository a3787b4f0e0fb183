"""Type stubs of the native module ``citron._citron`` (checked by ``mypy.stubtest``)."""

from datetime import timedelta
from types import TracebackType
from typing import Any, Awaitable, BinaryIO, Dict, Iterator, List, Literal, Mapping, Optional, Sequence, Tuple, Type, Union, final, overload

from citron._types import AccessRecord, ArtifactDict, DutInfo, ErrorDetailDict, ResolvedJobDict, StrPath

__version__: str
__all__ = [
    "AccessesIter",
    "AllocatedDut",
    "ApiError",
    "Artifact",
    "AsyncAccessesIter",
    "AsyncClient",
    "AsyncDuts",
    "AsyncEvents",
    "AsyncLatest",
    "AsyncOpenRun",
    "AsyncPool",
    "AsyncReservationsIter",
    "AsyncReserve",
    "AsyncResults",
    "AsyncRunsIter",
    "AsyncTenants",
    "AsyncTokens",
    "AsyncWatch",
    "AuthError",
    "CitronError",
    "Client",
    "ConflictError",
    "Dut",
    "DutJob",
    "Duts",
    "ErrorDetail",
    "Event",
    "Events",
    "FetchError",
    "HashHit",
    "JobDescription",
    "JobError",
    "JobErrorDetail",
    "Lab",
    "LabError",
    "Latest",
    "NotFoundError",
    "OpenRun",
    "Pool",
    "PoolDut",
    "Reservation",
    "ReservationTimeout",
    "ReservationsIter",
    "Reserve",
    "ResolvedJob",
    "ResultFile",
    "Results",
    "Retention",
    "Run",
    "RunsIter",
    "Server",
    "ServerError",
    "StateVersion",
    "Tenant",
    "Tenants",
    "Token",
    "Tokens",
    "UnknownDutError",
    "UnreachableError",
    "Version",
    "Watch",
    "__version__",
]

class CitronError(Exception):
    """Base class of every error citron raises."""

class JobError(CitronError, ValueError):
    """A job description is invalid; ``errors`` lists every problem with its position."""

    errors: List[ErrorDetail]
    def __init__(self, message: str, errors: Sequence[ErrorDetail] = ...) -> None: ...

class LabError(CitronError, ValueError):
    """A lab description is invalid or inconsistent; ``errors`` lists every problem with its
    position (in the lab file, or the Python call for a lab built in code)."""

    errors: List[ErrorDetail]
    def __init__(self, message: str, errors: Sequence[ErrorDetail] = ...) -> None: ...

class UnknownDutError(CitronError, KeyError):
    """No DUT has this id."""

class FetchError(CitronError):
    """Artifacts could not be fetched or did not match their sha256; ``errors`` has each failure at its ``url:``."""

    errors: List[ErrorDetail]
    def __init__(self, message: str, errors: Sequence[ErrorDetail] = ...) -> None: ...

class ServerError(CitronError, OSError):
    """A server could not start, bind or stop, or its data directory is unusable."""

class ApiError(CitronError):
    """A remote citron refused a request: ``status`` (HTTP) and ``message`` (the server's)."""

    status: int
    message: str
    def __init__(self, status: int, message: str) -> None: ...

class AuthError(ApiError, PermissionError):
    """The token was refused (401) or may not do this (403)."""

class NotFoundError(ApiError, LookupError):
    """No such job, run, file or token, or none the token may see (404)."""

class ConflictError(ApiError):
    """Other content at the path, a finished run, an existing tenant (409)."""

class UnreachableError(CitronError, ConnectionError):
    """The server could not be reached, or the connection broke."""

class ReservationTimeout(CitronError, TimeoutError):
    """``Client.reserve`` was not allocated in time; the request was withdrawn."""

    reservation: Optional[int]
    def __init__(self, message: str, reservation: Optional[int] = None) -> None: ...

@final
class ErrorDetail:
    """One problem in a job or lab description, with its position."""

    @property
    def file(self) -> str: ...
    @property
    def line(self) -> int: ...
    @property
    def column(self) -> int: ...
    @property
    def field(self) -> str: ...
    @property
    def message(self) -> str: ...
    def to_dict(self) -> ErrorDetailDict: ...

JobErrorDetail = ErrorDetail

@final
class Artifact:
    """One thing a DUT may fetch."""

    @property
    def step(self) -> Literal["start", "continue"]: ...
    @property
    def kind(self) -> Literal["file", "kernel", "initramfs", "disk"]: ...
    @property
    def protocol(self) -> Literal["http", "tftp", "boot", "nbd"]: ...
    @property
    def path(self) -> str: ...
    @property
    def source(self) -> Literal["data", "file", "url", "filesystem", "raw"]: ...
    @property
    def url(self) -> Optional[str]: ...
    @property
    def size(self) -> Optional[int]: ...
    @property
    def sha256(self) -> Optional[str]: ...
    @property
    def access_count(self) -> Optional[int]: ...
    @property
    def expiration(self) -> Optional[timedelta]: ...
    @property
    def readonly(self) -> Optional[bool]: ...
    @property
    def reset_on(self) -> Optional[Literal["boot", "job_start", "never"]]: ...
    @property
    def shared(self) -> Optional[bool]: ...
    def to_dict(self) -> ArtifactDict: ...

@final
class ResolvedJob:
    """A job rendered for one DUT."""

    @property
    def origin(self) -> str: ...
    @property
    def cmdline(self) -> Optional[str]: ...
    @property
    def continue_cmdline(self) -> Optional[str]: ...
    @property
    def artifacts(self) -> List[Artifact]: ...
    def to_dict(self) -> ResolvedJobDict: ...

@final
class JobDescription:
    """A parsed job description."""

    @staticmethod
    def from_yaml(
        text: str,
        filename: Optional[str] = None,
        *,
        lab: Union[Lab, Server, None] = None,
        dut: Optional[str] = None,
    ) -> JobDescription: ...
    @staticmethod
    def from_file(path: StrPath, *, lab: Union[Lab, Server, None] = None, dut: Optional[str] = None) -> JobDescription: ...
    @property
    def filename(self) -> str: ...
    def validate(self, lab: Union[Lab, Server, None] = None, dut: Optional[str] = None) -> None: ...
    def render(self, dut: str, lab: Union[Lab, Server, None] = None) -> ResolvedJob: ...

@final
class Lab:
    """A lab's DUTs, template variables and ``file:`` roots."""

    def __new__(
        cls,
        variables: Optional[Mapping[str, str]] = None,
        artifact_roots: Optional[Sequence[StrPath]] = None,
    ) -> Lab: ...
    @staticmethod
    def default() -> Lab: ...
    @staticmethod
    def from_yaml(text: str, filename: Optional[str] = None) -> Lab: ...
    @staticmethod
    def from_file(path: StrPath) -> Lab: ...
    def add_dut(
        self,
        id: str,
        ip: Sequence[str] = ...,
        mac: Optional[str] = None,
        tags: Sequence[str] = ...,
        machine_id: Optional[str] = None,
        serial: Optional[str] = None,
    ) -> None: ...
    @property
    def duts(self) -> List[DutInfo]: ...
    @property
    def variables(self) -> Dict[str, str]: ...
    @property
    def artifact_roots(self) -> List[str]: ...

@final
class Server:
    """A running citron: gateway plus HTTP/TFTP/NBD backends, in this process."""

    def __new__(
        cls,
        lab: Union[Lab, StrPath, None] = None,
        data_dir: Optional[StrPath] = None,
        *,
        http: Optional[str] = "127.0.0.1:0",
        tftp: Optional[str] = "127.0.0.1:0",
        nbd: Optional[str] = "127.0.0.1:0",
        api: Optional[str] = None,
        advertise: Optional[str] = None,
        state: Optional[str] = None,
    ) -> Server: ...
    @property
    def http_address(self) -> Optional[Tuple[str, int]]: ...
    @property
    def tftp_address(self) -> Optional[Tuple[str, int]]: ...
    @property
    def nbd_address(self) -> Optional[Tuple[str, int]]: ...
    @property
    def api_address(self) -> Optional[Tuple[str, int]]: ...
    @property
    def http_url(self) -> Optional[str]: ...
    @property
    def data_dir(self) -> str: ...
    @property
    def running(self) -> bool: ...
    def duts(self) -> List[DutInfo]: ...
    def add_dut(
        self,
        id: str,
        ip: Sequence[str] = ...,
        mac: Optional[str] = None,
        tags: Sequence[str] = ...,
        machine_id: Optional[str] = None,
        serial: Optional[str] = None,
    ) -> None: ...
    def remove_dut(self, id: str) -> None: ...
    def set_job(self, dut: str, job: Union[JobDescription, str], filename: Optional[str] = None) -> ResolvedJob: ...
    def job(self, dut: str) -> Optional[ResolvedJob]: ...
    def clear_job(self, dut: str) -> bool: ...
    def event(self, dut: str, event: Literal["boot", "job_start", "job_end"] = "boot") -> None: ...
    def accesses(self, dut: str, after: int = 0, limit: Optional[int] = None) -> List[AccessRecord]: ...
    def metrics(self) -> str: ...
    def client(self, token: Optional[str] = None, timeout: float = 60.0) -> Client: ...
    def async_client(self, token: Optional[str] = None, timeout: float = 60.0) -> AsyncClient: ...
    def stop(self) -> None: ...
    def __enter__(self) -> Server: ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]] = None,
        exc: Optional[BaseException] = None,
        tb: Optional[TracebackType] = None,
    ) -> Literal[False]: ...

# The results API's answers are pyo3 classes made from the server's own Rust types (not
# dataclasses written again in Python): one definition is what the server sends, what the
# remote Client parses and what the in-process Server's client() hands out, so the two cannot
# drift. They are frozen: plain data, compared by value.

@final
class ResultFile:
    """One file of a run."""

    @property
    def path(self) -> str: ...
    @property
    def sha256(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def tokened(self) -> bool: ...
    @property
    def uploaded_at(self) -> float: ...

@final
class Run:
    """One run of a job (``files`` only when one run was asked for)."""

    @property
    def id(self) -> int: ...
    @property
    def job(self) -> str: ...
    @property
    def revision(self) -> Optional[str]: ...
    @property
    def platform(self) -> Optional[str]: ...
    @property
    def dut(self) -> Optional[str]: ...
    @property
    def status(self) -> Literal["running", "success", "failure", "unknown"]: ...
    @property
    def started_at(self) -> float: ...
    @property
    def finished_at(self) -> Optional[float]: ...
    @property
    def files(self) -> Optional[List[ResultFile]]: ...
    def file(self, path: str) -> Optional[ResultFile]: ...

@final
class HashHit:
    """A file with the digest asked for."""

    @property
    def job(self) -> str: ...
    @property
    def run(self) -> int: ...
    @property
    def path(self) -> str: ...

@final
class Token:
    """A token just minted (``token`` is the secret; ``repr`` leaves it out)."""

    @property
    def token(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def expires_at(self) -> int: ...

@final
class Tenant:
    """A tenant just added, with its first token."""

    @property
    def name(self) -> str: ...
    @property
    def token(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def expires_at(self) -> int: ...

@final
class Event:
    """One event of the lab's feed."""

    @property
    def seq(self) -> int: ...
    @property
    def time(self) -> float: ...
    @property
    def type(self) -> str: ...
    @property
    def dut(self) -> Optional[str]: ...
    @property
    def job(self) -> Optional[str]: ...
    @property
    def actor(self) -> Optional[str]: ...
    @property
    def gateway(self) -> Optional[str]: ...
    @property
    def detail(self) -> Optional[Dict[str, Any]]: ...

#: What an upload sends: the content, a local file's path, or a binary file object.
_UploadData = Union[bytes, bytearray, StrPath, BinaryIO]

@final
class Client:
    """A remote citron's API (``$CITRON_SERVER`` / ``$CITRON_TOKEN`` by default)."""

    def __new__(
        cls,
        url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        token_file: Optional[StrPath] = None,
        timeout: float = 60.0,
    ) -> Client: ...
    @property
    def url(self) -> str: ...
    @property
    def results(self) -> Results: ...
    @property
    def tenants(self) -> Tenants: ...
    @property
    def tokens(self) -> Tokens: ...
    @property
    def pool(self) -> Pool: ...
    @property
    def duts(self) -> Duts: ...
    def version(self) -> Version: ...
    def health(self) -> bool: ...
    def ready(self) -> bool: ...
    def metrics(self) -> str: ...
    def openapi(self) -> Dict[str, Any]: ...
    def reserve(
        self,
        tags: Sequence[str] = ...,
        *,
        kind: Optional[Literal["baremetal", "vm"]] = None,
        arch: Optional[str] = None,
        model: Optional[str] = None,
        count: int = 1,
        lifetime: Optional[float] = None,
        priority: int = 0,
        job: Optional[str] = None,
        wait: float = 600.0,
    ) -> Reserve: ...
    def events(
        self,
        job: Optional[str] = None,
        *,
        dut: Optional[str] = None,
        type: Optional[str] = None,
        after: int = 0,
        timeout: Optional[float] = None,
    ) -> Events: ...
    def close(self) -> None: ...
    def __enter__(self) -> Client: ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]] = None,
        exc: Optional[BaseException] = None,
        tb: Optional[TracebackType] = None,
    ) -> Literal[False]: ...

@final
class Results:
    """``client.results``: runs, files, ``latest``, by-hash, ``watch``."""

    def open_run(self, job: str, revision: Optional[str] = None, platform: Optional[str] = None) -> OpenRun: ...
    def upload(self, job: str, run: Union[int, Run], path: str, data: _UploadData) -> ResultFile: ...
    def finish(self, job: str, run: Union[int, Run], status: Literal["success", "failure", "unknown"] = "success") -> Run: ...
    def run(self, job: str, run: int) -> Run: ...
    @overload
    def latest(self, job: str, path: None = None, *, platform: Optional[str] = None, status: Optional[str] = None) -> Run: ...
    @overload
    def latest(self, job: str, path: str, *, platform: Optional[str] = None, status: Optional[str] = None) -> Latest: ...
    def runs(self, job: str, revision: Optional[str] = None) -> RunsIter: ...
    def find_by_hash(self, sha256: str) -> List[HashHit]: ...
    def file(self, job: str, run: Union[int, Run], path: str) -> Latest: ...
    def read_latest(
        self, job: str, path: str, *, platform: Optional[str] = None, status: Optional[str] = None, max_bytes: int = ...
    ) -> bytes: ...
    def blob(self, sha256: str) -> Latest: ...
    def console(self, job: str, run: Union[int, Run], *, max_bytes: int = ...) -> bytes: ...
    def retention(self, job: str) -> Retention: ...
    def set_retention(self, job: str, *, keep_last: Optional[int] = None, ttl: Optional[float] = None) -> Retention: ...
    def watch(
        self,
        job: str,
        *,
        status: Optional[str] = ...,  # "success"
        after: int = 0,
        timeout: Optional[float] = None,
    ) -> Watch: ...

@final
class OpenRun:
    """A run being filled; as a context manager, finished on exit (``failure`` if it raised)."""

    @property
    def id(self) -> int: ...
    @property
    def job(self) -> str: ...
    @property
    def run(self) -> Run: ...
    @property
    def finished(self) -> Optional[Run]: ...
    def upload(self, path: str, data: _UploadData) -> ResultFile: ...
    def console(self, text: Union[str, bytes]) -> int: ...
    def finish(self, status: Literal["success", "failure", "unknown"] = "success") -> Run: ...
    def __enter__(self) -> OpenRun: ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]] = None,
        exc: Optional[BaseException] = None,
        tb: Optional[TracebackType] = None,
    ) -> Literal[False]: ...

@final
class Latest:
    """A file of the newest run: its digest and blob, read or downloaded checked."""

    @property
    def sha256(self) -> str: ...
    @property
    def url(self) -> str: ...
    def read(self, max_bytes: int = ...) -> bytes: ...  # 64 MiB
    def download(self, to: StrPath) -> int: ...

@final
class RunsIter:
    """A job's runs, oldest first, a page at a time."""

    def __iter__(self) -> RunsIter: ...
    def __next__(self) -> Run: ...

@final
class Watch:
    """A job's runs as they finish."""

    @property
    def last_event_id(self) -> int: ...
    def __iter__(self) -> Watch: ...
    def __next__(self) -> Run: ...

@final
class Events:
    """The lab's event feed."""

    @property
    def last_event_id(self) -> int: ...
    def __iter__(self) -> Events: ...
    def __next__(self) -> Event: ...

@final
class Tenants:
    """``client.tenants``."""

    def create(self, name: str, ttl: Optional[float] = None) -> Tenant: ...

@final
class Tokens:
    """``client.tokens``."""

    def mint(
        self,
        scopes: Sequence[str],
        job: str,
        ttl: Optional[float] = None,
        *,
        tenant: Optional[str] = None,
        run: Optional[int] = None,
        dut: Optional[str] = None,
    ) -> Token: ...
    def subset(
        self,
        *,
        scopes: Optional[Sequence[str]] = None,
        job: Optional[str] = None,
        ttl: Optional[float] = None,
        run: Optional[int] = None,
        dut: Optional[str] = None,
    ) -> Token: ...
    def revoke(self, token: Union[str, Token]) -> None: ...

_ReservationState = Literal["waiting", "allocated", "released", "expired", "failed"]

@final
class AllocatedDut:
    """One DUT of an allocated reservation."""

    @property
    def id(self) -> str: ...
    @property
    def kind(self) -> Literal["baremetal", "vm"]: ...
    @property
    def arch(self) -> Optional[str]: ...
    @property
    def model(self) -> Optional[str]: ...
    @property
    def tags(self) -> List[str]: ...
    @property
    def mac(self) -> Optional[str]: ...
    @property
    def ip(self) -> List[str]: ...
    @property
    def gateway(self) -> Optional[str]: ...
    @property
    def job_url(self) -> str: ...
    @property
    def accesses_url(self) -> str: ...
    @property
    def events_url(self) -> str: ...

@final
class Reservation:
    """A reservation of the DUT pool; also the sequence of its DUTs."""

    @property
    def id(self) -> int: ...
    @property
    def tenant(self) -> Optional[str]: ...
    @property
    def state(self) -> _ReservationState: ...
    @property
    def tags(self) -> List[str]: ...
    @property
    def kind(self) -> Optional[str]: ...
    @property
    def arch(self) -> Optional[str]: ...
    @property
    def model(self) -> Optional[str]: ...
    @property
    def count(self) -> int: ...
    @property
    def priority(self) -> int: ...
    @property
    def lifetime(self) -> float: ...
    @property
    def created_at(self) -> float: ...
    @property
    def allocated_at(self) -> Optional[float]: ...
    @property
    def expires_at(self) -> Optional[float]: ...
    @property
    def ended_at(self) -> Optional[float]: ...
    @property
    def keep_until(self) -> Optional[float]: ...
    @property
    def duts(self) -> List[AllocatedDut]: ...
    @property
    def token(self) -> Optional[str]: ...
    @property
    def reason(self) -> Optional[str]: ...
    def __len__(self) -> int: ...
    def __getitem__(self, key: int, /) -> AllocatedDut: ...
    def __iter__(self) -> Iterator[AllocatedDut]: ...

@final
class PoolDut:
    """A DUT of the pool as the administrator sees it."""

    @property
    def id(self) -> str: ...
    @property
    def kind(self) -> Literal["baremetal", "vm"]: ...
    @property
    def arch(self) -> Optional[str]: ...
    @property
    def model(self) -> Optional[str]: ...
    @property
    def tags(self) -> List[str]: ...
    @property
    def mac(self) -> Optional[str]: ...
    @property
    def ip(self) -> List[str]: ...
    @property
    def gateway(self) -> Optional[str]: ...
    @property
    def state(self) -> Literal["free", "starting", "allocated", "recycling", "kept", "quarantined", "disabled"]: ...
    @property
    def reservation(self) -> Optional[int]: ...
    @property
    def uses(self) -> int: ...
    @property
    def reason(self) -> Optional[str]: ...
    @property
    def output(self) -> Optional[str]: ...

_ReservationArg = Union[int, Reservation]

@final
class Pool:
    """``client.pool``: reservations and the pool's DUTs."""

    def request(
        self,
        tags: Sequence[str] = ...,
        *,
        kind: Optional[Literal["baremetal", "vm"]] = None,
        arch: Optional[str] = None,
        model: Optional[str] = None,
        count: int = 1,
        lifetime: Optional[float] = None,
        priority: int = 0,
        job: Optional[str] = None,
    ) -> Reservation: ...
    def get(self, id: _ReservationArg, *, wait: Optional[float] = None) -> Reservation: ...
    def list(self, state: Optional[_ReservationState] = None) -> ReservationsIter: ...
    def release(self, id: _ReservationArg) -> Reservation: ...
    def fail(self, id: _ReservationArg, *, keep: Optional[float] = None) -> Reservation: ...
    def extend(self, id: _ReservationArg, lifetime: float) -> Reservation: ...
    def duts(self) -> List[PoolDut]: ...
    def enable(self, dut: str) -> PoolDut: ...
    def disable(self, dut: str) -> PoolDut: ...

@final
class ReservationsIter:
    """The caller's reservations, oldest first, a page at a time."""

    def __iter__(self) -> ReservationsIter: ...
    def __next__(self) -> Reservation: ...

@final
class Reserve:
    """DUTs held for a ``with`` block (``Client.reserve``): allocated on entry, released on exit."""

    @property
    def reservation(self) -> Optional[Reservation]: ...
    def __enter__(self) -> Reservation: ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]] = None,
        exc: Optional[BaseException] = None,
        tb: Optional[TracebackType] = None,
    ) -> Literal[False]: ...

@final
class Retention:
    """A job's retention: the newest ``keep_last`` finished runs and those finished less than
    ``ttl`` seconds ago keep their files."""

    @property
    def keep_last(self) -> Optional[int]: ...
    @property
    def ttl(self) -> Optional[float]: ...

@final
class Dut:
    """A DUT as a remote lab knows it."""

    @property
    def id(self) -> str: ...
    @property
    def machine_id(self) -> str: ...
    @property
    def mac(self) -> Optional[str]: ...
    @property
    def serial(self) -> Optional[str]: ...
    @property
    def ip(self) -> List[str]: ...
    @property
    def tags(self) -> List[str]: ...
    @property
    def job(self) -> Optional[str]: ...
    @property
    def gateway(self) -> Optional[str]: ...
    @property
    def online(self) -> bool: ...

@final
class DutJob:
    """A DUT's job as it was set."""

    @property
    def yaml(self) -> Optional[str]: ...
    @property
    def origin(self) -> str: ...
    @property
    def set_at(self) -> float: ...

@final
class StateVersion:
    """The lab's state store."""

    @property
    def engine(self) -> str: ...
    @property
    def schema_version(self) -> int: ...

@final
class Version:
    """citron's version and its state store's."""

    @property
    def version(self) -> str: ...
    @property
    def state(self) -> Optional[StateVersion]: ...

_DutEvent = Literal["boot", "job_start", "job_end"]
_RunEnd = Literal["success", "failure", "unknown"]

@final
class Duts:
    """``client.duts``: the lab's DUTs, their jobs, events and access logs."""

    def list(self) -> List[Dut]: ...
    def get(self, id: str) -> Dut: ...
    def add(
        self,
        id: str,
        *,
        ip: Sequence[str] = ...,
        mac: Optional[str] = None,
        serial: Optional[str] = None,
        tags: Sequence[str] = ...,
        machine_id: Optional[str] = None,
    ) -> Dut: ...
    def remove(self, id: str) -> None: ...
    def job(self, id: str) -> DutJob: ...
    def set_job(self, id: str, job: str, *, revision: Optional[str] = None) -> Dut: ...
    def clear_job(self, id: str) -> None: ...
    def event(self, id: str, event: _DutEvent = "boot", *, status: Optional[_RunEnd] = None) -> None: ...
    def accesses(self, id: str, after: int = 0) -> AccessesIter: ...

@final
class AccessesIter:
    """A DUT's access log, a page at a time."""

    def __iter__(self) -> AccessesIter: ...
    def __next__(self) -> AccessRecord: ...

# The asyncio client: the same surface, each call an awaitable.

@final
class AsyncClient:
    """The asyncio twin of :class:`Client`."""

    def __new__(
        cls,
        url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        token_file: Optional[StrPath] = None,
        timeout: float = 60.0,
    ) -> AsyncClient: ...
    @property
    def url(self) -> str: ...
    @property
    def results(self) -> AsyncResults: ...
    @property
    def pool(self) -> AsyncPool: ...
    @property
    def duts(self) -> AsyncDuts: ...
    @property
    def tenants(self) -> AsyncTenants: ...
    @property
    def tokens(self) -> AsyncTokens: ...
    def reserve(
        self,
        tags: Sequence[str] = ...,
        *,
        kind: Optional[Literal["baremetal", "vm"]] = None,
        arch: Optional[str] = None,
        model: Optional[str] = None,
        count: int = 1,
        lifetime: Optional[float] = None,
        priority: int = 0,
        job: Optional[str] = None,
        wait: float = 600.0,
    ) -> AsyncReserve: ...
    def events(
        self,
        job: Optional[str] = None,
        *,
        dut: Optional[str] = None,
        type: Optional[str] = None,
        after: int = 0,
        timeout: Optional[float] = None,
    ) -> AsyncEvents: ...
    def version(self) -> Awaitable[Version]: ...
    def health(self) -> Awaitable[bool]: ...
    def ready(self) -> Awaitable[bool]: ...
    def metrics(self) -> Awaitable[str]: ...
    def openapi(self) -> Awaitable[Dict[str, Any]]: ...
    def close(self) -> None: ...
    def __aenter__(self) -> Awaitable[AsyncClient]: ...
    def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]] = None,
        exc: Optional[BaseException] = None,
        tb: Optional[TracebackType] = None,
    ) -> Awaitable[Literal[False]]: ...

@final
class AsyncTenants:
    """``client.tenants`` of an :class:`AsyncClient`."""

    def create(self, name: str, ttl: Optional[float] = None) -> Awaitable[Tenant]: ...

@final
class AsyncTokens:
    """``client.tokens`` of an :class:`AsyncClient`."""

    def mint(
        self,
        scopes: Sequence[str],
        job: str,
        ttl: Optional[float] = None,
        *,
        tenant: Optional[str] = None,
        run: Optional[int] = None,
        dut: Optional[str] = None,
    ) -> Awaitable[Token]: ...
    def subset(
        self,
        *,
        scopes: Optional[Sequence[str]] = None,
        job: Optional[str] = None,
        ttl: Optional[float] = None,
        run: Optional[int] = None,
        dut: Optional[str] = None,
    ) -> Awaitable[Token]: ...
    def revoke(self, token: Union[str, Token]) -> Awaitable[None]: ...

@final
class AsyncEvents:
    """The lab's event feed, as an async iterator."""

    @property
    def last_event_id(self) -> int: ...
    def __aiter__(self) -> AsyncEvents: ...
    def __anext__(self) -> Awaitable[Event]: ...

@final
class AsyncResults:
    """``client.results`` of an :class:`AsyncClient`."""

    def open_run(self, job: str, revision: Optional[str] = None, platform: Optional[str] = None) -> Awaitable[AsyncOpenRun]: ...
    def upload(self, job: str, run: Union[int, Run], path: str, data: _UploadData) -> Awaitable[ResultFile]: ...
    def finish(
        self, job: str, run: Union[int, Run], status: Literal["success", "failure", "unknown"] = "success"
    ) -> Awaitable[Run]: ...
    def run(self, job: str, run: int) -> Awaitable[Run]: ...
    @overload
    def latest(
        self, job: str, path: None = None, *, platform: Optional[str] = None, status: Optional[str] = None
    ) -> Awaitable[Run]: ...
    @overload
    def latest(
        self, job: str, path: str, *, platform: Optional[str] = None, status: Optional[str] = None
    ) -> Awaitable[AsyncLatest]: ...
    def read_latest(
        self, job: str, path: str, *, platform: Optional[str] = None, status: Optional[str] = None, max_bytes: int = ...
    ) -> Awaitable[bytes]: ...
    def file(self, job: str, run: Union[int, Run], path: str) -> Awaitable[AsyncLatest]: ...
    def blob(self, sha256: str) -> Awaitable[AsyncLatest]: ...
    def console(self, job: str, run: Union[int, Run], *, max_bytes: int = ...) -> Awaitable[bytes]: ...
    def retention(self, job: str) -> Awaitable[Retention]: ...
    def set_retention(self, job: str, *, keep_last: Optional[int] = None, ttl: Optional[float] = None) -> Awaitable[Retention]: ...
    def find_by_hash(self, sha256: str) -> Awaitable[List[HashHit]]: ...
    def runs(self, job: str, revision: Optional[str] = None) -> AsyncRunsIter: ...
    def watch(
        self,
        job: str,
        *,
        status: Optional[str] = ...,  # "success"
        after: int = 0,
        timeout: Optional[float] = None,
    ) -> AsyncWatch: ...

@final
class AsyncOpenRun:
    """A run being filled; ``async with`` finishes it on exit (``failure`` if it raised)."""

    @property
    def id(self) -> int: ...
    @property
    def job(self) -> str: ...
    @property
    def run(self) -> Run: ...
    @property
    def finished(self) -> Optional[Run]: ...
    def upload(self, path: str, data: _UploadData) -> Awaitable[ResultFile]: ...
    def console(self, text: Union[str, bytes]) -> Awaitable[int]: ...
    def finish(self, status: Literal["success", "failure", "unknown"] = "success") -> Awaitable[Run]: ...
    def __aenter__(self) -> Awaitable[AsyncOpenRun]: ...
    def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]] = None,
        exc: Optional[BaseException] = None,
        tb: Optional[TracebackType] = None,
    ) -> Awaitable[Literal[False]]: ...

@final
class AsyncLatest:
    """A file's blob, read or downloaded checked, with coroutines."""

    @property
    def sha256(self) -> str: ...
    @property
    def url(self) -> str: ...
    def read(self, max_bytes: int = ...) -> Awaitable[bytes]: ...
    def download(self, to: StrPath) -> Awaitable[int]: ...

@final
class AsyncRunsIter:
    """A job's runs, oldest first, a page at a time, as an async iterator."""

    def __aiter__(self) -> AsyncRunsIter: ...
    def __anext__(self) -> Awaitable[Run]: ...

@final
class AsyncWatch:
    """A job's runs as they finish, as an async iterator."""

    def __aiter__(self) -> AsyncWatch: ...
    def __anext__(self) -> Awaitable[Run]: ...

@final
class AsyncPool:
    """``client.pool`` of an :class:`AsyncClient`."""

    def request(
        self,
        tags: Sequence[str] = ...,
        *,
        kind: Optional[Literal["baremetal", "vm"]] = None,
        arch: Optional[str] = None,
        model: Optional[str] = None,
        count: int = 1,
        lifetime: Optional[float] = None,
        priority: int = 0,
        job: Optional[str] = None,
    ) -> Awaitable[Reservation]: ...
    def get(self, id: _ReservationArg, *, wait: Optional[float] = None) -> Awaitable[Reservation]: ...
    def list(self, state: Optional[_ReservationState] = None) -> AsyncReservationsIter: ...
    def release(self, id: _ReservationArg) -> Awaitable[Reservation]: ...
    def fail(self, id: _ReservationArg, *, keep: Optional[float] = None) -> Awaitable[Reservation]: ...
    def extend(self, id: _ReservationArg, lifetime: float) -> Awaitable[Reservation]: ...
    def duts(self) -> Awaitable[List[PoolDut]]: ...
    def enable(self, dut: str) -> Awaitable[PoolDut]: ...
    def disable(self, dut: str) -> Awaitable[PoolDut]: ...

@final
class AsyncReservationsIter:
    """The caller's reservations, a page at a time, as an async iterator."""

    def __aiter__(self) -> AsyncReservationsIter: ...
    def __anext__(self) -> Awaitable[Reservation]: ...

@final
class AsyncReserve:
    """DUTs held for an ``async with`` block: allocated on entry, released on exit."""

    @property
    def reservation(self) -> Optional[Reservation]: ...
    def __aenter__(self) -> Awaitable[Reservation]: ...
    def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]] = None,
        exc: Optional[BaseException] = None,
        tb: Optional[TracebackType] = None,
    ) -> Awaitable[Literal[False]]: ...

@final
class AsyncDuts:
    """``client.duts`` of an :class:`AsyncClient`."""

    def list(self) -> Awaitable[List[Dut]]: ...
    def get(self, id: str) -> Awaitable[Dut]: ...
    def add(
        self,
        id: str,
        *,
        ip: Sequence[str] = ...,
        mac: Optional[str] = None,
        serial: Optional[str] = None,
        tags: Sequence[str] = ...,
        machine_id: Optional[str] = None,
    ) -> Awaitable[Dut]: ...
    def remove(self, id: str) -> Awaitable[None]: ...
    def job(self, id: str) -> Awaitable[DutJob]: ...
    def set_job(self, id: str, job: str, *, revision: Optional[str] = None) -> Awaitable[Dut]: ...
    def clear_job(self, id: str) -> Awaitable[None]: ...
    def event(self, id: str, event: _DutEvent = "boot", *, status: Optional[_RunEnd] = None) -> Awaitable[None]: ...
    def accesses(self, id: str, after: int = 0) -> AsyncAccessesIter: ...

@final
class AsyncAccessesIter:
    """A DUT's access log, a page at a time, as an async iterator."""

    def __aiter__(self) -> AsyncAccessesIter: ...
    def __anext__(self) -> Awaitable[AccessRecord]: ...
